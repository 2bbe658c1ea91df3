/* policy_gpu.h — the eviction policies of policy.h run on a CUDA device, for
 * the cascade replay: n_stream streams, each capped layer by layer by its own
 * instances of one policy. Built only with the CUDA backend (AP_HAVE_CUDA).
 *
 * The retained sets live on the device in the layout the decode step reads
 * (engine_device.h, ap_engine_decode_device): one list per (stream, layer, head),
 * list = (stream * n_layer + layer) * n_head + head, positions ascending. The
 * decode step writes its probabilities next to them; the policies' updates,
 * enqueued at the end of that step, then update every set with the host
 * policies' arithmetic in the host policies' order, so that both evict the
 * same positions (docs/policies.md).
 * Sets of a layer-granularity policy are mirrored into each head's list.
 *
 * Everything is caller-owned and freed by ap_policy_gpu_free. */
#ifndef AP_POLICY_GPU_H
#define AP_POLICY_GPU_H

#include "policy.h"

typedef struct ap_policy_gpu ap_policy_gpu;

/* 1 when the device has a kernel for policy `name` (the registry's on_device
 * says the same; tests/test_gpu.c checks). */
int ap_policy_gpu_runs(const char *name);

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
/* Entries a list of the stream holds at most: its retained positions plus t. */
int ap_policy_gpu_capacity(const ap_policy_gpu *g, int stream);
/* 1 when the stream's policy never evicts within its length (`full`, or a
 * budget of at least the length): its cascade is the reference. */
int ap_policy_gpu_keeps_all(const ap_policy_gpu *g, int stream);

/* Each decode step (engine_device.h, ap_engine_decode_device) runs the policies'
 * updates at its end, through an ap_step_hook, so that a step is one
 * recorded launch and nothing waits for the host in between.
 *
 * begin_step, on the host before the step: the streams active[0..n_active)
 * in the decode step's order (active stream a is its row a). *key changes
 * when the active streams do (the recorded step must then be recorded
 * again). */
ap_status ap_policy_gpu_begin_step(ap_policy_gpu *g, const int *active, int n_active, long long *key,
                                   ap_error *err);

/* Inside the step, after the last layer: enqueues the updates on `stream` (a
 * cudaStream_t) and streams forked from and joined back to it. The kept
 * layers' lists are copied first; then each set observes the step, retains
 * t (t_of: device [n_active], each active stream's position) and evicts as
 * the host policy would. */
ap_status ap_policy_gpu_enqueue(ap_policy_gpu *g, void *stream, const int *t_of, ap_error *err);

/* Layers whose lists are copied each step as the decode left them, before the
 * policies change them (the sets the step attended to); once, before the first step. */
ap_status ap_policy_gpu_keep_layers(ap_policy_gpu *g, const int *layers, int n, ap_error *err);
/* Queues the copies of the last queued step's kept sets to the host, on the
 * decode steps' stream (after that step, before the next one queued), so
 * that the host can queue the next step before it reads them; they may be
 * read once ap_policy_gpu_wait_kept returns, until the next fetch. */
ap_status ap_policy_gpu_fetch_kept(ap_policy_gpu *g, ap_error *err);
ap_status ap_policy_gpu_wait_kept(ap_policy_gpu *g, ap_error *err);
/* Kept layer `which` (an index into keep_layers' list) of a stream's head, as
 * fetched: returns its retained count n; *pos holds the n positions and *rows
 * the n + 1 probabilities (t last). */
int ap_policy_gpu_kept(const ap_policy_gpu *g, int stream, int which, int head, const int **pos,
                       const float **rows);

/* For device code that runs the sets itself (sketch/cuda/observe.cuh's
 * set_step, as the isolated replay of study/cuda/ does): g's device state,
 * and the kind (observe.cuh's K_*) of policy p. */
struct ap_step_view;
const struct ap_step_view *ap_policy_gpu_view(const ap_policy_gpu *g);
int ap_policy_gpu_kind(const ap_policy_gpu *g, int p);

/* Retained counts of every list: cnt[n_stream * n_layer * n_head]. */
ap_status ap_policy_gpu_counts(ap_policy_gpu *g, int *cnt, ap_error *err);

#endif
