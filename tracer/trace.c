/* trace.c — the reference trace: one full-cache prefill per sample (samples
 * of one length batched through ap_engine_prefill_batch). Its file is
 * trace_file.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/phase.h"
#include "../engine/engine_device.h"
#include "tracer.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A trace's buffer: host memory, or the device's of tr->device. */
static void *buffer_alloc(ap_trace *tr, size_t bytes)
{
    if (!tr->device) return malloc(bytes);
    void *p;
    return ap_engine_device_alloc(tr->device, bytes, &p, NULL) ? NULL : p;
}

static void buffer_free(ap_trace *tr, void *p)
{
    if (tr->device)
        ap_engine_device_free(tr->device, p);
    else
        free(p);
}

void ap_trace_free(ap_trace *tr)
{
    size_t n = (size_t)tr->n_samples * tr->n_layers;
    /* on a device, a sample's tensors are one allocation: the first's */
    for (size_t i = 0; tr->device && tr->attn && i < n; i += (size_t)tr->n_layers) buffer_free(tr, tr->attn[i]);
    for (size_t i = 0; !tr->device && i < n; i++) {
        if (tr->attn) buffer_free(tr, tr->attn[i]);
        if (tr->q) buffer_free(tr, tr->q[i]);
        if (tr->k) buffer_free(tr, tr->k[i]);
        if (tr->v) buffer_free(tr, tr->v[i]);
        if (tr->o) buffer_free(tr, tr->o[i]);
    }
    for (int s = 0; tr->logits && s < tr->n_samples; s++) buffer_free(tr, tr->logits[s]);
    free(tr->logits);
    for (int s = 0; tr->ids && s < tr->n_samples; s++) free(tr->ids[s]);
    free(tr->attn), free(tr->q), free(tr->k), free(tr->v), free(tr->o);
    free(tr->ids), free(tr->len), free(tr->layers);
    free(tr->config_json);
    memset(tr, 0, sizeof *tr);
}

int ap_trace_layer_index(const ap_trace *tr, int layer)
{
    for (int i = 0; i < tr->n_layers; i++)
        if (tr->layers[i] == layer) return i;
    return -1;
}

ap_status ap_trace_alloc(ap_trace *tr, int n_samples, int n_layers, ap_error *err)
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

static ap_status trace_run(ap_engine *engine, const ap_model *model, const ap_samples *samples,
                           const int *layers, int n_layers, int with_logits, ap_trace *tr, ap_engine *device,
                           ap_progress_fn progress, void *progress_ctx, ap_error *err)
{
    memset(tr, 0, sizeof *tr);
    tr->device = device;
    const ap_config *c = &model->config;
    ap_status st = ap_trace_alloc(tr, samples->n, n_layers, err);
    if (st) goto fail;
    if (with_logits && !(tr->logits = calloc((size_t)samples->n, sizeof *tr->logits))) goto oom;
    tr->n_head = c->n_head;
    tr->head_dim = c->n_embd / c->n_head;
    memcpy(tr->layers, layers, (size_t)n_layers * sizeof *layers);
    snprintf(tr->model_source, sizeof tr->model_source, "%s", model->source);
    snprintf(tr->model_sha256, sizeof tr->model_sha256, "%s", model->sha256);
    tr->model_n_layer = c->n_layer;
    tr->model_vocab = c->vocab_size;
    snprintf(tr->model_dtype, sizeof tr->model_dtype, "%s", model->dtype);
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
            if (device && n_layers > 0) { /* one device allocation a sample: cudaMalloc is slow */
                float *block = buffer_alloc(tr, sample_bytes);
                if (!block) goto oom;
                for (int l = 0; l < n_layers; l++, block += a + 4 * qk)
                    attn[l] = block, q[l] = block + a, k[l] = q[l] + qk, v[l] = k[l] + qk, o[l] = v[l] + qk;
            }
            for (int l = 0; !device && l < n_layers; l++) {
                attn[l] = buffer_alloc(tr, a * sizeof(float));
                q[l] = buffer_alloc(tr, qk * sizeof(float));
                k[l] = buffer_alloc(tr, qk * sizeof(float));
                v[l] = buffer_alloc(tr, qk * sizeof(float));
                o[l] = buffer_alloc(tr, qk * sizeof(float));
                if (!attn[l] || !q[l] || !k[l] || !v[l] || !o[l]) goto oom;
            }
            if (with_logits && !(tr->logits[s] = buffer_alloc(tr, (size_t)T * c->vocab_size * sizeof(float))))
                goto oom;
            caps[b] = (ap_capture){.n_capture = n_layers, .layers = layers, .attn = attn, .q = q, .k = k,
                                   .v = v, .o = o, .logits = with_logits ? tr->logits[s] : NULL};
            batch_ids[b] = samples->ids[s];
        }
        ap_phase_mark("trace: buffers");
        if ((st = ap_engine_prefill_batch(engine, n_batch, batch_ids, T, caps, err))) goto fail;
        ap_phase_mark("trace: call");
        s0 += n_batch;
        if (progress) progress(progress_ctx, "trace", (double)s0 / samples->n);
    }
    tr->seconds = now_s() - t0;
    return AP_OK;
oom:
    st = ap_error_set(err, AP_ERR_RUNTIME, "out of %s memory for the trace", device ? "device" : "host");
fail:
    ap_trace_free(tr);
    return st;
}

ap_status ap_trace_run(ap_engine *engine, const ap_model *model, const ap_samples *samples,
                       const int *layers, int n_layers, ap_trace *out, ap_progress_fn progress,
                       void *progress_ctx, ap_error *err)
{
    return trace_run(engine, model, samples, layers, n_layers, 0, out, NULL, progress, progress_ctx, err);
}

ap_status ap_trace_run_device(ap_engine *engine, const ap_model *model, const ap_samples *samples,
                              const int *layers, int n_layers, int with_logits, ap_trace *out,
                              ap_progress_fn progress, void *progress_ctx, ap_error *err)
{
    if (ap_engine_backend(engine) != AP_BACKEND_CUDA)
        return ap_error_set(err, AP_ERR_USAGE, "a trace kept on the device needs a CUDA engine");
    return trace_run(engine, model, samples, layers, n_layers, with_logits, out, engine, progress, progress_ctx,
                     err);
}

