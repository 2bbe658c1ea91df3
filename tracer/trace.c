/* trace.c — the reference trace: one full-cache prefill per sample (samples
 * of one length batched through ap_engine_prefill_batch), and its file
 * (safetensors), so a trace can be replayed later without the model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tracer.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void ap_trace_free(ap_trace *tr)
{
    size_t n = (size_t)tr->n_samples * tr->n_layers;
    for (size_t i = 0; i < n; i++) {
        if (tr->attn) free(tr->attn[i]);
        if (tr->q) free(tr->q[i]);
        if (tr->k) free(tr->k[i]);
        if (tr->v) free(tr->v[i]);
        if (tr->o) free(tr->o[i]);
    }
    for (int s = 0; tr->ids && s < tr->n_samples; s++) free(tr->ids[s]);
    free(tr->attn), free(tr->q), free(tr->k), free(tr->v), free(tr->o);
    free(tr->ids), free(tr->len), free(tr->layers);
    memset(tr, 0, sizeof *tr);
}

int ap_trace_layer_index(const ap_trace *tr, int layer)
{
    for (int i = 0; i < tr->n_layers; i++)
        if (tr->layers[i] == layer) return i;
    return -1;
}

/* Allocates the arrays of a trace of these shapes (buffers left NULL). */
static ap_status trace_alloc(ap_trace *tr, int n_samples, int n_layers, ap_error *err)
{
    size_t n = (size_t)n_samples * n_layers;
    tr->n_samples = n_samples;
    tr->n_layers = n_layers;
    tr->layers = calloc((size_t)n_layers, sizeof *tr->layers);
    tr->len = calloc((size_t)n_samples, sizeof *tr->len);
    tr->ids = calloc((size_t)n_samples, sizeof *tr->ids);
    tr->attn = calloc(n, sizeof *tr->attn);
    tr->q = calloc(n, sizeof *tr->q);
    tr->k = calloc(n, sizeof *tr->k);
    tr->v = calloc(n, sizeof *tr->v);
    tr->o = calloc(n, sizeof *tr->o);
    if (!tr->layers || !tr->len || !tr->ids || !tr->attn || !tr->q || !tr->k || !tr->v || !tr->o)
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for the trace");
    return AP_OK;
}

/* Samples per engine call, and the captured bytes such a call may hold (the
 * CUDA backend stages them in device memory). */
enum { TRACE_BATCH = 8 };
#define TRACE_BATCH_BYTES ((size_t)2 << 30)

ap_status ap_trace_run(ap_engine *engine, const ap_model *model, const ap_samples *samples,
                       const int *layers, int n_layers, ap_trace *tr, ap_progress_fn progress,
                       void *progress_ctx, ap_error *err)
{
    memset(tr, 0, sizeof *tr);
    const ap_config *c = &model->config;
    ap_status st = trace_alloc(tr, samples->n, n_layers, err);
    if (st) goto fail;
    tr->n_head = c->n_head;
    tr->head_dim = c->n_embd / c->n_head;
    memcpy(tr->layers, layers, (size_t)n_layers * sizeof *layers);
    snprintf(tr->model_source, sizeof tr->model_source, "%s", model->source);
    snprintf(tr->model_sha256, sizeof tr->model_sha256, "%s", model->sha256);
    tr->model_n_layer = c->n_layer;
    tr->model_vocab = c->vocab_size;
    double t0 = now_s();
    ap_capture caps[TRACE_BATCH];
    const int *batch_ids[TRACE_BATCH];
    for (int s0 = 0; s0 < samples->n;) {
        /* consecutive samples of one length go through the engine together, as
         * many as TRACE_BATCH and TRACE_BATCH_BYTES of captured outputs allow */
        const int T = samples->len[s0];
        const size_t a = (size_t)c->n_head * T * T, qk = (size_t)c->n_head * T * tr->head_dim;
        const size_t sample_bytes = (size_t)n_layers * (a + 4 * qk) * sizeof(float);
        int n_batch = 0;
        while (s0 + n_batch < samples->n && n_batch < TRACE_BATCH && samples->len[s0 + n_batch] == T &&
               (n_batch == 0 || (size_t)(n_batch + 1) * sample_bytes <= TRACE_BATCH_BYTES))
            n_batch++;
        for (int b = 0; b < n_batch; b++) {
            const int s = s0 + b;
            tr->len[s] = T;
            if (!(tr->ids[s] = malloc((size_t)T * sizeof(int)))) goto oom;
            memcpy(tr->ids[s], samples->ids[s], (size_t)T * sizeof(int));
            float **attn = tr->attn + (size_t)s * n_layers, **q = tr->q + (size_t)s * n_layers,
                  **k = tr->k + (size_t)s * n_layers, **v = tr->v + (size_t)s * n_layers,
                  **o = tr->o + (size_t)s * n_layers;
            for (int l = 0; l < n_layers; l++) {
                attn[l] = malloc(a * sizeof(float));
                q[l] = malloc(qk * sizeof(float));
                k[l] = malloc(qk * sizeof(float));
                v[l] = malloc(qk * sizeof(float));
                o[l] = malloc(qk * sizeof(float));
                if (!attn[l] || !q[l] || !k[l] || !v[l] || !o[l]) goto oom;
            }
            caps[b] = (ap_capture){.n_capture = n_layers, .layers = layers, .attn = attn, .q = q, .k = k,
                                   .v = v, .o = o};
            batch_ids[b] = samples->ids[s];
        }
        if ((st = ap_engine_prefill_batch(engine, n_batch, batch_ids, T, caps, err))) goto fail;
        s0 += n_batch;
        if (progress) progress(progress_ctx, "trace", (double)s0 / samples->n);
    }
    tr->seconds = now_s() - t0;
    return AP_OK;
oom:
    st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory for the trace");
fail:
    ap_trace_free(tr);
    return st;
}

ap_status ap_trace_save(const ap_trace *tr, const char *path, ap_error *err)
{
    const int S = tr->n_samples, L = tr->n_layers, H = tr->n_head, D = tr->head_dim;
    const int n_tensors = S * (1 + 5 * L);
    ap_st_out *out = calloc((size_t)n_tensors, sizeof *out);
    char (*names)[48] = calloc((size_t)n_tensors, sizeof *names);
    if (!out || !names) {
        free(out), free(names);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    }
    int n = 0;
    for (int s = 0; s < S; s++) {
        const int T = tr->len[s];
        snprintf(names[n], sizeof names[n], "ids.%d", s);
        out[n] = (ap_st_out){names[n], AP_DT_I32, 1, {T}, tr->ids[s]};
        n++;
        for (int l = 0; l < L; l++) {
            const size_t i = (size_t)s * L + l;
            const char *kinds[5] = {"attn", "q", "k", "v", "o"};
            const float *data[5] = {tr->attn[i], tr->q[i], tr->k[i], tr->v[i], tr->o[i]};
            for (int kind = 0; kind < 5; kind++) {
                snprintf(names[n], sizeof names[n], "%s.%d.%d", kinds[kind], s, tr->layers[l]);
                out[n] = (ap_st_out){names[n], AP_DT_F32, 3, {H, T, kind ? D : T}, data[kind]};
                n++;
            }
        }
    }
    char layers[1024] = "", shape[64], model_shape[64];
    snprintf(model_shape, sizeof model_shape, "%d,%d", tr->model_n_layer, tr->model_vocab);
    for (int l = 0; l < L; l++) {
        size_t used = strlen(layers);
        snprintf(layers + used, sizeof layers - used, l ? ",%d" : "%d", tr->layers[l]);
    }
    snprintf(shape, sizeof shape, "%d,%d,%d,%d", S, L, H, D);
    const char *keys[] = {"format", "model", "model_sha256", "model_layers_vocab", "layers",
                          "samples_layers_heads_dim", "config"};
    const char *vals[] = {"attnprobe.trace/1", tr->model_source, tr->model_sha256, model_shape,
                          layers, shape, tr->config_json};
    ap_status st = ap_st_write(path, out, n, keys, vals, 7, err);
    free(out);
    free(names);
    return st;
}

/* Reads one float tensor of the expected element count into a new buffer. */
static ap_status read_floats(const ap_st_file *f, const char *name, size_t count, float **dst,
                             ap_error *err)
{
    const ap_st_tensor *t = ap_st_find(f, name);
    if (!t || t->count != count)
        return ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s is missing or has %zu elements (want %zu)",
                            ap_st_path(f), name, t ? t->count : 0, count);
    if (!(*dst = malloc(count * sizeof **dst))) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    return ap_st_read_f32(f, t, *dst, err);
}

ap_status ap_trace_load(const char *path, ap_trace *tr, ap_error *err)
{
    memset(tr, 0, sizeof *tr);
    ap_st_file *f;
    ap_status st = ap_st_open(path, &f, err);
    if (st) return st;
    const char *format = ap_st_metadata(f, "format"), *shape = ap_st_metadata(f, "samples_layers_heads_dim");
    const char *layers = ap_st_metadata(f, "layers");
    int S, L, H, D;
    if (!format || strcmp(format, "attnprobe.trace/1") != 0 || !shape || !layers ||
        sscanf(shape, "%d,%d,%d,%d", &S, &L, &H, &D) != 4 || S < 1 || L < 1 || H < 1 || D < 1 ||
        S > 100000 || L > 256 || H > 256 || D > 65536) {
        ap_st_close(f);
        return ap_error_set(err, AP_ERR_INPUT, "%s: not an attnprobe trace (metadata format "
                            "attnprobe.trace/1 with shapes expected; write one with attnprobe trace "
                            "--save)", path);
    }
    if ((st = trace_alloc(tr, S, L, err))) goto fail;
    tr->n_head = H;
    tr->head_dim = D;
    const char *ms = ap_st_metadata(f, "model_layers_vocab");
    if (!ms || sscanf(ms, "%d,%d", &tr->model_n_layer, &tr->model_vocab) != 2) {
        st = ap_error_set(err, AP_ERR_INPUT, "%s: metadata model_layers_vocab missing", path);
        goto fail;
    }
    const char *p = layers;
    for (int l = 0; l < L; l++) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 255) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: bad layers metadata \"%s\"", path, layers);
            goto fail;
        }
        tr->layers[l] = (int)v;
        p = *end == ',' ? end + 1 : end;
    }
    snprintf(tr->model_source, sizeof tr->model_source, "%s", ap_st_metadata(f, "model") ? ap_st_metadata(f, "model") : "");
    snprintf(tr->model_sha256, sizeof tr->model_sha256, "%s", ap_st_metadata(f, "model_sha256") ? ap_st_metadata(f, "model_sha256") : "");
    snprintf(tr->file_sha256, sizeof tr->file_sha256, "%s", ap_st_sha256(f)); /* hashed once, on open */
    snprintf(tr->config_json, sizeof tr->config_json, "%s", ap_st_metadata(f, "config") ? ap_st_metadata(f, "config") : "");
    for (int s = 0; s < S; s++) {
        char name[48];
        snprintf(name, sizeof name, "ids.%d", s);
        const ap_st_tensor *t = ap_st_find(f, name);
        if (!t || t->ndim != 1 || t->count < 1 || t->count > (1u << 20)) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s missing or not a 1-D list of ids", path, name);
            goto fail;
        }
        const int T = (int)t->count;
        tr->len[s] = T;
        if (!(tr->ids[s] = malloc((size_t)T * sizeof(int)))) goto oom;
        if ((st = ap_st_read_i32(f, t, tr->ids[s], err))) goto fail;
        for (int l = 0; l < L; l++) {
            const size_t i = (size_t)s * L + l;
            const size_t a = (size_t)H * T * T, qk = (size_t)H * T * D;
            float **dst[5] = {&tr->attn[i], &tr->q[i], &tr->k[i], &tr->v[i], &tr->o[i]};
            const char *kinds[5] = {"attn", "q", "k", "v", "o"};
            for (int kind = 0; kind < 5; kind++) {
                snprintf(name, sizeof name, "%s.%d.%d", kinds[kind], s, tr->layers[l]);
                if ((st = read_floats(f, name, kind ? qk : a, dst[kind], err))) goto fail;
            }
        }
    }
    ap_st_close(f);
    return AP_OK;
oom:
    st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
fail:
    ap_st_close(f);
    ap_trace_free(tr);
    return st;
}
