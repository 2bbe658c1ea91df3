/* replay_internal.h — what replay.c shares with cascade_gpu.c; not public. */
#ifndef AP_REPLAY_INTERNAL_H
#define AP_REPLAY_INTERNAL_H

#include <time.h>

#include "tracer.h"

static inline double replay_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Whether step t's rows are emitted. */
static inline int replay_measured(const ap_replay_opts *o, int t)
{
    return t >= o->warmup && t % o->stride == 0;
}

/* Bytes of the keys and values a policy retains, all heads, fp32. */
static inline double replay_kv_bytes(const ap_policy *pol, int n_head, int head_dim)
{
    double positions = 0;
    for (int h = 0; h < n_head; h++) {
        positions += ap_policy_resident(pol, ap_policy_set_of(pol, h));
    }
    return positions * 2.0 * head_dim * sizeof(float);
}

/* The policy row under a quantised cache (replay_quant.c). */
typedef struct {
    ap_quant quant;
    int T, D;
    float *k_hat, *v_hat; /* [H, T, D]: keys and values as held once quantised */
    float *v_row;         /* [H, T, D]: the values one step attends to, as held then */
} replay_quant;
ap_status replay_quant_open(replay_quant *rq, const ap_quant *quant, const float *k, const float *v, int H, int T,
                            int D, ap_error *err);
void replay_quant_close(replay_quant *rq);
const float *replay_quant_row(replay_quant *rq, int h, int t, const float *q_t, const float *k, const float *v,
                              const int *w, int n_w, float *row);

#ifdef AP_HAVE_CUDA
/* ap_replay_cascade with the policies on the device (sketch/policy_gpu.h);
 * the engine must be a CUDA engine. */
ap_status ap_replay_cascade_gpu(ap_engine *engine, const ap_trace *trace,
                                const ap_policy_params *params, int n_policies,
                                const ap_replay_opts *opts, ap_replay_cost *cost, ap_error *err);

/* eval's next-token metrics on the device (cuda/next_token_gpu.cu): each
 * decode step writes the active streams' logits into ap_next_gpu_logits;
 * enqueued inside the step (t_of: device [n_active], each stream's position),
 * the metrics of every active stream against the full cache — ref[sample]
 * (device [T, vocab], the prefill's logits) at its position, or, with ref
 * NULL, its sample's decoded full stream — go to [stream][t][nll, next_kl,
 * next_top1, full_argmax_rank], read at the end. */
typedef struct ap_next_gpu ap_next_gpu;
ap_status ap_next_gpu_create(int n_streams, const int *const *ids, const int *len, int n_samples, int max_T,
                             int vocab, float *const *ref, ap_next_gpu **out, ap_error *err);
/* The streams that keep everything and are not decoded (keeps: [n * 2] id,
 * sample): their metrics are the prefill's own (needs ref). */
ap_status ap_next_gpu_reference(ap_next_gpu *g, const int *keeps, int n_keeps, ap_error *err);
void ap_next_gpu_free(ap_next_gpu *g);
float *ap_next_gpu_logits(ap_next_gpu *g);
/* meta [n_active * 3]: each active stream's id, sample, and the active index
 * of its sample's full stream; when the active streams change */
ap_status ap_next_gpu_set_active(ap_next_gpu *g, const int *meta, int n_active, ap_error *err);
ap_status ap_next_gpu_enqueue(ap_next_gpu *g, void *stream, const int *t_of, ap_error *err);
/* out [n_streams * max_T * 4] */
ap_status ap_next_gpu_values(ap_next_gpu *g, double *out, ap_error *err);
#endif

#endif
