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

#ifdef AP_HAVE_CUDA
/* ap_replay_cascade with the policies on the device (sketch/policy_gpu.h);
 * the engine must be a CUDA engine. */
ap_status ap_replay_cascade_gpu(ap_engine *engine, const ap_trace *trace,
                                const ap_policy_params *params, int n_policies,
                                const ap_replay_opts *opts, ap_replay_cost *cost, ap_error *err);
#endif

#endif
