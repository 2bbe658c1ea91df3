/* engine_device.h — the engine's calls on device memory (CUDA engines), for
 * the code that keeps its state on the GPU: trace buffers that stay there
 * (tracer/trace.c) and the decode step over retained lists that the device
 * policies own (tracer/cascade_gpu.c, sketch/policy_gpu.h); a study that
 * traces on a thread beside its replay (study/study.c). Everyone else
 * uses engine.h alone, whose buffers are host memory. */
#ifndef AP_ENGINE_DEVICE_H
#define AP_ENGINE_DEVICE_H

#include "engine.h"

/* Memory on a CUDA engine's device, so that a prefill's captures can stay
 * there (an ap_capture's buffers may be such memory: the engine then copies
 * device to device). AP_ERR_USAGE on a CPU engine. */
ap_status ap_engine_device_alloc(ap_engine *engine, size_t bytes, void **out, ap_error *err);
void ap_engine_device_free(ap_engine *engine, void *p);

/* While `shared` is set, another thread issues work on the same device (the
 * replay of a study's previous batch, study/study.c). The engine then
 * records no new graph of launches — a recording would make that thread's
 * calls on the default stream fail — and runs them directly; a graph
 * recorded before is still replayed. Nothing changes on a CPU engine. */
void ap_engine_device_shared(ap_engine *engine, int shared);

/* Work a caller adds at the end of a device decode step, after every
 * layer: enqueue(ctx, stream, t_of) enqueues it on `stream` (a cudaStream_t)
 * or on streams forked from it and joined back; t_of is device [n_stream],
 * each stream's position this step. The step's launches are recorded once
 * and replayed while `key` stays the same, so the work must read anything
 * that changes from step to step from the device. */
typedef struct {
    void *ctx;
    ap_status (*enqueue)(void *ctx, void *stream, const int *t_of, ap_error *err);
    long long key;
} ap_step_hook;

/* The same step with the retained lists and the outputs on the device (CUDA
 * engines only), so that a caller whose eviction state lives on the device
 * (sketch/policy_gpu.h) moves nothing through the host but the tokens.
 *
 *   list_base  host [n_stream]: stream s's list of (layer l, head h) is
 *              list_base[s] + l * n_head + h
 *   off, cnt   device [lists]: list i attends to the cnt[i] positions (< t)
 *              pos[off[i] ..] besides t itself; the caller keeps them valid
 *   rows       device: the step's probabilities of list i, aligned with its
 *              positions, at rows[off[i] + x] for x = 0..cnt[i] (the last: t)
 *   q, k       device [n_layer, n_stream, n_embd] of the new position, or NULL
 *   max_cnt    host: no cnt[i] exceeds it (the attention's grid is sized by
 *              it); 0 when unknown (bounded by the streams' lengths)
 *   hook       work run inside the step (see ap_step_hook), or NULL
 *   logits     device [n_stream, vocab] for the step's logits, written
 *              before the hook runs (so that it may read them), or NULL
 * Each stream's position then advances by one. The call returns once the
 * step is queued on the engine's stream (a blocking CUDA stream): the host
 * may prepare the next step meanwhile, and a synchronous copy (cudaMemcpy)
 * or the next call sees the step's results. */
typedef struct {
    int n_stream;
    ap_stream *const *streams;
    const int *tokens;
    const int *list_base;
    const int *off, *cnt, *pos;
    float *rows, *q, *k;
    int max_cnt;
    const ap_step_hook *hook;
    float *logits;  /* device [n_stream, vocab]: the step's next-token logits (before the hook), or NULL */
} ap_device_batch;

ap_status ap_engine_decode_device(ap_engine *engine, const ap_device_batch *batch, ap_error *err);

#endif
