/* policy_gpu.h — the eviction policies of policy.h run on a CUDA device, for
 * the cascade replay: n_stream streams, each capped layer by layer by its own
 * instances of one policy. Built only with the CUDA backend (AP_HAVE_CUDA).
 *
 * The retained sets live on the device in the layout the decode step reads
 * (engine.h, ap_engine_decode_device): one list per (stream, layer, head),
 * list = (stream * n_layer + layer) * n_head + head, positions ascending. The
 * decode step writes its probabilities next to them; observe() then updates
 * every set in one launch, with the host policies' arithmetic in the host
 * policies' order, so that both evict the same positions (docs/policies.md).
 * Sets of a layer-granularity policy are mirrored into each head's list.
 *
 * Everything is caller-owned and freed by ap_policy_gpu_free. */
#ifndef AP_POLICY_GPU_H
#define AP_POLICY_GPU_H

#include "policy.h"

typedef struct ap_policy_gpu ap_policy_gpu;

/* Device buffers shared with the decode step. */
typedef struct {
    const int *off; /* [lists]: where each list's positions and rows start */
    int *cnt;       /* [lists]: retained positions (t excluded) */
    int *pos;       /* positions */
    float *rows;    /* the last step's probabilities, aligned with pos, t last */
    float *q, *k;   /* [n_layer, active streams, n_head * head_dim] of the last step */
} ap_policy_gpu_buffers;

/* stream_param[s] indexes params; stream_len[s] is its number of steps. */
ap_status ap_policy_gpu_create(const ap_policy_params *params, int n_params,
                               const int *stream_param, const int *stream_len, int n_stream,
                               int n_layer, int n_head, int head_dim, ap_policy_gpu **out,
                               ap_error *err);
void ap_policy_gpu_free(ap_policy_gpu *g);

const ap_policy_gpu_buffers *ap_policy_gpu_buffers_of(const ap_policy_gpu *g);
/* First list of a stream: its (layer, head) list is that + layer * n_head + head. */
int ap_policy_gpu_list_base(const ap_policy_gpu *g, int stream);
/* Positions a list of this stream can hold (its positions and rows stride). */
int ap_policy_gpu_capacity(const ap_policy_gpu *g, int stream);

/* Step t for the streams active[0..n_active) (the decode step's order: its
 * q and k of active stream a are row a). Each set observes the step, retains t
 * and evicts as the host policy would. */
ap_status ap_policy_gpu_observe(ap_policy_gpu *g, int t, const int *active, int n_active,
                                ap_error *err);

/* Copies one (stream, layer)'s lists to the host: cnt[n_head]; head h's
 * positions at pos + h * capacity and its last rows at rows + h * capacity
 * (cnt[h] + 1 values, t last). rows may be NULL. */
ap_status ap_policy_gpu_read(ap_policy_gpu *g, int stream, int layer, int *cnt, int *pos,
                             float *rows, ap_error *err);

/* Retained counts of every list: cnt[n_stream * n_layer * n_head]. */
ap_status ap_policy_gpu_counts(ap_policy_gpu *g, int *cnt, ap_error *err);

#endif
