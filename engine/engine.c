/* engine.c — backend selection and argument checks shared by all backends. */
#include "engine_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the backend's warm-up ahead of the model (ap_engine_warm_up) ---- */

static pthread_t warm_up_thread;
static int warm_up_started;

#ifdef AP_HAVE_CUDA
static void *warm_up_cuda(void *unused)
{
    extern void ap_cuda_warm_up(void);
    (void)unused;
    ap_cuda_warm_up();
    return NULL;
}
#endif

void ap_engine_warm_up(ap_backend backend)
{
#ifdef AP_HAVE_CUDA
    if (backend == AP_BACKEND_CUDA && !warm_up_started)
        warm_up_started = pthread_create(&warm_up_thread, NULL, warm_up_cuda, NULL) == 0;
#else
    (void)backend;
#endif
}

void ap_engine_warm_up_wait(void)
{
    if (warm_up_started) pthread_join(warm_up_thread, NULL);
    warm_up_started = 0;
}

ap_status ap_engine_create(const ap_model *model, ap_backend backend, ap_precision precision,
                           ap_engine **out, ap_error *err)
{
    *out = NULL;
    ap_engine_warm_up_wait();
    ap_engine *e = calloc(1, sizeof *e);
    if (!e) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    e->model = model;
    e->backend = backend;
    e->precision = precision;
    ap_status st;
    if (backend == AP_BACKEND_CPU) {
        if (precision != AP_PRECISION_FP32) {
            free(e);
            return ap_error_set(err, AP_ERR_USAGE,
                                "precision %s: the cpu backend computes in fp32 only (tf32 and bf16 "
                                "need a CUDA engine)", precision == AP_PRECISION_TF32 ? "tf32" : "bf16");
        }
        st = ap_cpu_engine_init(e, err);
    } else {
#ifdef AP_HAVE_CUDA
        st = ap_cuda_engine_init(e, err);
#else
        st = ap_error_set(err, AP_ERR_USAGE,
                          "a CUDA engine: this build has no CUDA backend (rebuild where nvcc is "
                          "installed, or use the cpu backend)");
#endif
    }
    if (st) {
        if (e->ops && e->impl) e->ops->free(e); /* a backend that failed half-way */
        free(e);
        return st;
    }
    *out = e;
    return AP_OK;
}

void ap_engine_free(ap_engine *e)
{
    if (!e) return;
    e->ops->free(e);
    free(e);
}

const char *ap_engine_device_name(const ap_engine *e) { return e->device_name; }

ap_status ap_engine_device_alloc(ap_engine *e, size_t bytes, void **out, ap_error *err)
{
    *out = NULL;
    if (!e->ops->device_alloc)
        return ap_error_set(err, AP_ERR_USAGE, "device memory asked of an engine without a device (%s)",
                            e->device_name);
    return e->ops->device_alloc(e, bytes, out, err);
}

void ap_engine_device_free(ap_engine *e, void *p)
{
    if (p && e->ops->device_free) e->ops->device_free(e, p);
}

void ap_engine_device_shared(ap_engine *e, int shared) { e->device_shared = shared; }
const ap_config *ap_engine_config(const ap_engine *e) { return &e->model->config; }

int ap_capture_index(const ap_capture *cap, int layer)
{
    if (!cap) return -1;
    for (int i = 0; i < cap->n_capture; i++)
        if (cap->layers[i] == layer) return i;
    return -1;
}

static ap_status check_capture(const ap_engine *e, const ap_capture *cap, ap_error *err)
{
    if (!cap) return AP_OK;
    for (int i = 0; i < cap->n_capture; i++)
        if (cap->layers[i] < 0 || cap->layers[i] >= e->model->config.n_layer)
            return ap_error_set(err, AP_ERR_USAGE, "layer %d does not exist (the model has 0..%d)",
                                cap->layers[i], e->model->config.n_layer - 1);
    return AP_OK;
}

static ap_status check_ids(const ap_engine *e, const int *ids, int n, ap_error *err)
{
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= e->model->config.vocab_size)
            return ap_error_set(err, AP_ERR_INPUT, "token id %d at index %d is outside 0..%d", ids[i],
                                i, e->model->config.vocab_size - 1);
    return AP_OK;
}

ap_status ap_engine_prefill(ap_engine *e, const int *ids, int T, const ap_capture *cap, ap_error *err)
{
    if (T < 1 || T > e->model->config.n_ctx)
        return ap_error_set(err, AP_ERR_USAGE, "sequence of %d tokens: the model takes 1..%d", T,
                            e->model->config.n_ctx);
    ap_status st;
    if ((st = check_ids(e, ids, T, err)) || (st = check_capture(e, cap, err))) return st;
    return e->ops->prefill(e, ids, T, cap, err);
}

/* Whether two captures ask for the same layers and outputs. */
static int same_request(const ap_capture *a, const ap_capture *b)
{
    if (!a || !b) return a == b;
    if (a->n_capture != b->n_capture || !a->logits != !b->logits ||
        a->logits_last_only != b->logits_last_only)
        return 0;
    for (int i = 0; i < a->n_capture; i++) {
        if (a->layers[i] != b->layers[i]) return 0;
        float **const lists[2][5] = {{a->attn, a->q, a->k, a->v, a->o}, {b->attn, b->q, b->k, b->v, b->o}};
        for (int k = 0; k < 5; k++)
            if (!(lists[0][k] && lists[0][k][i]) != !(lists[1][k] && lists[1][k][i])) return 0;
    }
    return 1;
}

ap_status ap_engine_prefill_batch(ap_engine *e, int n_seq, const int *const *ids, int T,
                                  const ap_capture *caps, ap_error *err)
{
    if (n_seq < 1) return ap_error_set(err, AP_ERR_USAGE, "prefill of %d sequences", n_seq);
    if (T < 1 || T > e->model->config.n_ctx)
        return ap_error_set(err, AP_ERR_USAGE, "sequence of %d tokens: the model takes 1..%d", T,
                            e->model->config.n_ctx);
    ap_status st;
    for (int i = 0; i < n_seq; i++) {
        if ((st = check_ids(e, ids[i], T, err)) || (st = check_capture(e, caps ? &caps[i] : NULL, err)))
            return st;
        if (caps && !same_request(&caps[0], &caps[i]))
            return ap_error_set(err, AP_ERR_USAGE,
                                "batched prefill: capture %d asks for other layers or outputs "
                                "than capture 0",
                                i);
    }
    if (e->ops->prefill_batch && n_seq > 1) return e->ops->prefill_batch(e, n_seq, ids, T, caps, err);
    for (int i = 0; i < n_seq; i++)
        if ((st = e->ops->prefill(e, ids[i], T, caps ? &caps[i] : NULL, err))) return st;
    return AP_OK;
}

ap_status ap_stream_create(ap_engine *e, int max_len, ap_stream **out, ap_error *err)
{
    *out = NULL;
    if (max_len < 1 || max_len > e->model->config.n_ctx)
        return ap_error_set(err, AP_ERR_USAGE, "stream length %d: the model takes 1..%d", max_len,
                            e->model->config.n_ctx);
    ap_stream *s = calloc(1, sizeof *s);
    if (!s) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    s->engine = e;
    s->max_len = max_len;
    ap_status st = e->ops->stream_init(e, s, err);
    if (st) {
        free(s);
        return st;
    }
    *out = s;
    return AP_OK;
}

void ap_stream_free(ap_stream *s)
{
    if (!s) return;
    s->engine->ops->stream_free(s);
    free(s);
}

int ap_stream_pos(const ap_stream *s) { return s->pos; }

/* The streams of a decode step: this engine's, with room for one more position. */
static ap_status check_streams(const ap_engine *e, ap_stream *const *streams, int n, ap_error *err)
{
    for (int s = 0; s < n; s++) {
        if (streams[s]->engine != e)
            return ap_error_set(err, AP_ERR_USAGE, "stream %d belongs to another engine", s);
        if (streams[s]->pos >= streams[s]->max_len)
            return ap_error_set(err, AP_ERR_USAGE, "stream %d is full (%d positions)", s,
                                streams[s]->max_len);
    }
    return AP_OK;
}

ap_status ap_engine_decode_step(ap_engine *e, const ap_decode_batch *b, const ap_capture *cap,
                                ap_error *err)
{
    ap_status st;
    if ((st = check_capture(e, cap, err)) || (st = check_ids(e, b->tokens, b->n_stream, err)) ||
        (st = check_streams(e, b->streams, b->n_stream, err)))
        return st;
    const int n_lh = e->model->config.n_layer * e->model->config.n_head;
    for (int s = 0; s < b->n_stream; s++) {
        const ap_stream *str = b->streams[s];
        if (!b->kept || !b->kept[s]) continue;
        for (int lh = 0; lh < n_lh; lh++)
            for (int i = 0; i < b->n_kept[s][lh]; i++) {
                int p = b->kept[s][lh][i];
                if (p < 0 || p >= str->pos)
                    return ap_error_set(err, AP_ERR_USAGE,
                                        "stream %d, layer %d, head %d: kept position %d is not in "
                                        "0..%d",
                                        s, lh / e->model->config.n_head,
                                        lh % e->model->config.n_head, p, str->pos - 1);
            }
    }
    st = e->ops->decode_step(e, b, cap, err);
    if (st) return st;
    for (int s = 0; s < b->n_stream; s++) b->streams[s]->pos++;
    return AP_OK;
}

ap_status ap_engine_decode_device(ap_engine *e, const ap_device_batch *b, ap_error *err)
{
    if (!e->ops->decode_device)
        return ap_error_set(err, AP_ERR_USAGE,
                            "device-resident decoding needs the CUDA backend (this engine: cpu)");
    ap_status st;
    if ((st = check_ids(e, b->tokens, b->n_stream, err)) ||
        (st = check_streams(e, b->streams, b->n_stream, err)) ||
        (st = e->ops->decode_device(e, b, err)))
        return st;
    for (int s = 0; s < b->n_stream; s++) b->streams[s]->pos++;
    return AP_OK;
}

ap_backend ap_engine_backend(const ap_engine *e) { return e->backend; }

void ap_engine_library_versions(ap_library_versions *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->blas, sizeof out->blas, "%s", ap_cpu_blas_config());
    ap_tokenizer_pcre2_version(out->pcre2, sizeof out->pcre2);
#ifdef AP_HAVE_CUDA
    ap_cuda_versions(&out->cuda_runtime, &out->cuda_driver);
#endif
}

int ap_cuda_devices(void)
{
#ifdef AP_HAVE_CUDA
    extern int ap_cuda_device_count(void);
    return ap_cuda_device_count();
#else
    return 0;
#endif
}

ap_status ap_cuda_use_device(int index, ap_error *err)
{
#ifdef AP_HAVE_CUDA
    extern int ap_cuda_select_device(int index);
    if (ap_cuda_select_device(index) == 0) return AP_OK;
#endif
    return ap_error_set(err, AP_ERR_RUNTIME, "CUDA device %d cannot be selected (%d visible)", index, ap_cuda_devices());
}

int ap_cuda_available(void)
{
#ifdef AP_HAVE_CUDA
    extern int ap_cuda_device_count(void);
    return ap_cuda_device_count() > 0;
#else
    return 0;
#endif
}
