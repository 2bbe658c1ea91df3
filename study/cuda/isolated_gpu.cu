/* isolated_gpu.cu — a batch's isolated replay on the CUDA device that holds
 * its trace (study_internal.h, docs/architecture.md).
 *
 * Streams are (sample, policy) pairs, one list per (stream, probed layer,
 * head), run by the cascade's device policies (sketch/policy_gpu.h). In an
 * isolated replay no set depends on another, and every step's input — the
 * reference row of t — is in the trace already, so one warp runs one set
 * through all of its steps (replay_kernel in isolated_kernels.cuh, with the
 * other kernels; this file is the host side), its sketch held in shared memory
 * throughout. Each step t:
 *   1. at a measured step, the set's positions are copied to a snapshot
 *      (before t is observed);
 *   2. the reference row of t, scaled by 1 / the mass the set retains (the
 *      host's double sum, in its order), is written where the policy reads
 *      the step's probabilities;
 *   3. the policy observes t, retains it and evicts, as the host's would
 *      (observe.cuh's set_step, the cascade's code).
 * RACE's buckets of every key and query are hashed before the first step.
 * The measured rows' metrics are computed from the snapshots by their own
 * kernel (analysis/metrics_device.cuh), a segment of steps at a time beside
 * the next segment's replay, and folded on the device (fold_gpu.cu): only
 * the accumulators come back to the host. */
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" {
#include "../../sketch/policy_gpu.h"
#include "../study_internal.h"
}

#include "../../analysis/metrics_device.cuh"
#include "../../common/cuda_try.h"
#include "../../common/phase.h"
#include "../../sketch/cuda/observe.cuh"

#include "isolated_kernels.cuh"

/* Device copies of the batch's pointer tables and small arrays; a stream
 * per policy; events: each policy's last segment done, each snapshot
 * buffer's metrics done. */
typedef struct {
    cudaStream_t stream, *policy_stream;
    cudaEvent_t *policy_done, metrics_done[2];
    int n_policy_streams;
    void *tables;    /* attn, q, k, v, o pointers; len; keeps_all */
    int *top, *snap_pos, *snap_cnt;
    long long *snap_off;
    double *values, *neg_entropy;
    uint32_t **buckets; /* [2 * n_policy_streams]: each RACE policy's query and key buckets, or NULL */
} batch_device;

static void batch_device_free(batch_device *d)
{
    if (d->stream) cudaStreamDestroy(d->stream);
    for (int i = 0; i < 2; i++)
        if (d->metrics_done[i]) cudaEventDestroy(d->metrics_done[i]);
    for (int p = 0; p < d->n_policy_streams; p++) {
        cudaStreamDestroy(d->policy_stream[p]);
        cudaEventDestroy(d->policy_done[p]);
        if (d->buckets) cudaFree(d->buckets[2 * p]), cudaFree(d->buckets[2 * p + 1]);
    }
    free(d->policy_stream), free(d->policy_done), free(d->buckets);
    cudaFree(d->tables), cudaFree(d->top), cudaFree(d->values), cudaFree(d->neg_entropy);
    cudaFree(d->snap_pos), cudaFree(d->snap_cnt), cudaFree(d->snap_off);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A phase's end, when ATTNPROBE_PHASES asks: after the device's work. */
static void phase(const char *what)
{
    if (!ap_phase_on()) return;
    cudaDeviceSynchronize();
    ap_phase_mark(what);
}

/* Uploads the pointer tables and lengths; fills bv's pointers to them. */
static ap_status upload_tables(const ap_trace *tr, const int *keeps_all, int n_streams, batch_device *d,
                               batch_view *bv, ap_error *err)
{
    const int BL = tr->n_samples * tr->n_layers;
    const size_t ptr_bytes = 5 * (size_t)BL * sizeof(float *);
    const size_t bytes = ptr_bytes + ((size_t)tr->n_samples + n_streams) * sizeof(int);
    char *host = (char *)malloc(bytes);
    if (!host) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    float *const *src[5] = {tr->attn, tr->q, tr->k, tr->v, tr->o};
    for (int kind = 0; kind < 5; kind++) memcpy(host + kind * BL * sizeof(float *), src[kind], BL * sizeof(float *));
    memcpy(host + ptr_bytes, tr->len, (size_t)tr->n_samples * sizeof(int));
    memcpy(host + ptr_bytes + (size_t)tr->n_samples * sizeof(int), keeps_all, (size_t)n_streams * sizeof(int));
    cudaError_t e = cudaMalloc(&d->tables, bytes);
    if (e == cudaSuccess) e = cudaMemcpy(d->tables, host, bytes, cudaMemcpyHostToDevice);
    free(host);
    CUDA_TRY(e, "copying the trace's pointer tables to the device");
    const float *const *ptrs = (const float *const *)d->tables;
    bv->attn = ptrs, bv->q = ptrs + BL, bv->k = ptrs + 2 * BL, bv->v = ptrs + 3 * BL, bv->o = ptrs + 4 * BL;
    bv->len = (const int *)((char *)d->tables + ptr_bytes);
    bv->keeps_all = bv->len + tr->n_samples;
    return AP_OK;
}

/* Snapshot memory at most: the measured steps go in segments that fit. */
static const size_t SNAP_BYTES_MAX = (size_t)4 << 30;
/* Segments a replay is cut into at least, so that the metrics of one run
 * beside the replay of the next. */
enum { SEGMENTS = 4 };

/* The snapshots' layout (bv->snap_off, snap_total) and two buffers (one
 * segment's metrics read one while the next segment's replay writes the
 * other) of *seg_len measured steps each. */
static ap_status plan_snapshots(const ap_policy_gpu *g, const int *keeps_all, int n_streams, batch_device *d,
                                batch_view *bv, int *seg_len, ap_error *err)
{
    const int LH = bv->L * bv->H;
    long long *off = (long long *)malloc((size_t)bv->n_lists * sizeof *off), total = 0;
    if (!off) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    for (int s = 0; s < n_streams; s++)
        for (int i = 0; i < LH; i++) {
            off[s * LH + i] = keeps_all[s] ? -1 : total;
            if (!keeps_all[s]) total += ap_policy_gpu_capacity(g, s);
        }
    const size_t step_bytes = ((size_t)total + bv->n_lists) * sizeof(int);
    size_t cap = study_gpu_free_bytes() / 4;
    cap = cap < SNAP_BYTES_MAX ? cap : SNAP_BYTES_MAX;
    const size_t fit = cap / 2 / step_bytes, quarter = ((size_t)bv->n_steps + SEGMENTS - 1) / SEGMENTS;
    *seg_len = bv->n_steps < 1 ? 1 : fit < 1 ? 1 : fit < quarter ? (int)fit : (int)quarter;
    cudaError_t e = cudaMalloc(&d->snap_off, (size_t)bv->n_lists * sizeof *off);
    if (e == cudaSuccess) e = cudaMemcpy(d->snap_off, off, (size_t)bv->n_lists * sizeof *off, cudaMemcpyHostToDevice);
    free(off);
    CUDA_TRY(e, "copying the snapshots' layout");
    CUDA_TRY(cudaMalloc(&d->snap_pos, 2 * (size_t)*seg_len * total * sizeof(int) + 1), "allocating the sets' snapshots");
    CUDA_TRY(cudaMalloc(&d->snap_cnt, 2 * (size_t)*seg_len * bv->n_lists * sizeof(int)), "allocating the sets' snapshots");
    bv->snap_off = d->snap_off, bv->snap_total = total, bv->snap_pos = d->snap_pos, bv->snap_cnt = d->snap_cnt;
    return AP_OK;
}

/* Launches policy p's sets through steps t0 <= t < t1 on its stream. */
static ap_status launch_policy(const ap_policy_gpu *g, const gpu_policy *P, int p, const batch_device *d,
                               const batch_view *bv, int t0, int t1, ap_error *err)
{
    const step_view *v = (const step_view *)ap_policy_gpu_view(g);
    const int stage_words = !P->layer_sets && P->state_words <= ISO_STAGE_WORDS_MAX ? (int)P->state_words : 0;
    const size_t stage_bytes = (size_t)stage_words * sizeof(uint32_t);
    const int fit = stage_bytes ? (int)((48 * 1024) / stage_bytes) : 4, warps = fit > 4 ? 4 : fit < 1 ? 1 : fit;
    const size_t shared = warps * stage_bytes;
    const replay_fn fn = REPLAY[ap_policy_gpu_kind(g, p)];
    const int n_sets = bv->n_samples * bv->L * bv->H;
    if (shared > 48 * 1024)
        CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared),
                 "sizing the replay's shared memory");
    fn<<<(unsigned)((n_sets + warps - 1) / warps), 32 * warps, shared, d->policy_stream[p]>>>(
        *bv, *v, p, stage_words, n_sets, t0, t1, d->buckets[2 * p], d->buckets[2 * p + 1]);
    KERNEL_TRY("launching the policies' replay");
    return AP_OK;
}

/* A RACE policy's buckets of every key (and, for race_kde, query) of the
 * batch, on its stream: what its steps would hash one at a time. */
static ap_status hash_ahead(const ap_policy_gpu *g, const gpu_policy *P, int p, batch_device *d, const batch_view *bv,
                            ap_error *err)
{
    if (P->kind != K_RACE && P->kind != K_RACE_KDE) return AP_OK;
    const int n_vectors = bv->n_samples * bv->L * bv->H * bv->max_T;
    const step_view *v = (const step_view *)ap_policy_gpu_view(g);
    for (int of_q = 0; of_q <= (P->kind == K_RACE_KDE); of_q++) {
        uint32_t **out = &d->buckets[2 * p + (of_q ? 0 : 1)];
        CUDA_TRY(cudaMalloc((void **)out, (size_t)n_vectors * P->rows * sizeof(uint32_t)),
                 "allocating the RACE buckets of the trace's vectors");
        const size_t plane_bytes = (size_t)P->rows * P->bits * bv->D * sizeof(float);
        const unsigned tiles = (unsigned)((bv->max_T + HASH_TILE - 1) / HASH_TILE) * bv->n_samples * bv->L * bv->H;
        cudaStream_t ps = d->policy_stream[p];
        if ((bv->D == 64 || bv->D == 32) && plane_bytes <= 48 * 1024) {
            if (bv->D == 64) hash_tile_kernel<64><<<tiles, HASH_TILE, plane_bytes, ps>>>(*bv, *P, v->tables, of_q, *out);
            else hash_tile_kernel<32><<<tiles, HASH_TILE, plane_bytes, ps>>>(*bv, *P, v->tables, of_q, *out);
        } else {
            hash_kernel<<<(unsigned)((n_vectors + WARPS - 1) / WARPS), 32 * WARPS, 0, ps>>>(*bv, *P, v->tables, of_q,
                                                                                          *out, n_vectors);
        }
        KERNEL_TRY("hashing the trace's vectors into RACE buckets");
    }
    return AP_OK;
}

/* The reference rows' top positions; then, a segment of measured steps at
 * a time, every policy's sets through the segment's steps (each policy on
 * its own stream, side by side) and the metrics of its rows. */
static ap_status launch_replay(const ap_policy_gpu *g, const int *keeps_all, batch_device *d, batch_view *bv,
                               ap_error *err)
{
    const int ref_rows = bv->n_samples * bv->L * bv->H, topk_warps = ref_rows * bv->n_steps;
    const size_t shared = WARPS * warp_scratch_bytes(bv->max_T);
    if (shared > 48 * 1024)
        CUDA_TRY(cudaFuncSetAttribute(metrics_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared),
                 "sizing the metrics' shared memory");
    if (topk_warps > 0) topk_kernel<<<(unsigned)((topk_warps + WARPS - 1) / WARPS), 32 * WARPS, 0, d->stream>>>(*bv, ref_rows);
    KERNEL_TRY("finding the reference rows' top positions");
    CUDA_TRY(cudaStreamSynchronize(d->stream), "finding the reference rows' top positions");
    phase("top positions");
    const int P_n = bv->n_policies;
    gpu_policy *shapes = (gpu_policy *)malloc((size_t)P_n * sizeof *shapes);
    int *evicts = (int *)calloc((size_t)P_n, sizeof *evicts);
    if (!shapes || !evicts) {
        free(shapes), free(evicts);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    }
    const step_view *v = (const step_view *)ap_policy_gpu_view(g);
    cudaError_t e = cudaMemcpy(shapes, v->policies, (size_t)P_n * sizeof *shapes, cudaMemcpyDeviceToHost);
    for (int s = 0; s < bv->n_samples * P_n; s++) evicts[s % P_n] |= !keeps_all[s];
    int seg_len = 1;
    ap_status st = e != cudaSuccess ? ap_error_set(err, AP_ERR_RUNTIME, "reading the policies' shapes: %s",
                                                   cudaGetErrorString(e))
                                    : plan_snapshots(g, keeps_all, bv->n_samples * P_n, d, bv, &seg_len, err);
    for (int p = 0; p < P_n && !st; p++)
        if (evicts[p]) st = hash_ahead(g, &shapes[p], p, d, bv, err);
    phase("snapshots+hash");
    /* segment k: each policy's replay on its stream (after the metrics of
     * segment k - 2, which read the same snapshot buffer), then its metrics
     * on d->stream once every policy is through it */
    for (int first = 0, k = 0; !st && (first == 0 || first < bv->n_steps); first += seg_len, k++) {
        const int last = first + seg_len < bv->n_steps ? first + seg_len : bv->n_steps, buf = k % 2;
        const int t0 = first == 0 ? 0 : measured_t(bv, first), t1 = last < bv->n_steps ? measured_t(bv, last) : bv->max_T;
        bv->seg_step = first;
        bv->snap_pos = d->snap_pos + (size_t)buf * seg_len * bv->snap_total;
        bv->snap_cnt = d->snap_cnt + (size_t)buf * seg_len * bv->n_lists;
        for (int p = 0; p < P_n && !st; p++) {
            if (!evicts[p]) continue;
            if (k >= 2 && cudaStreamWaitEvent(d->policy_stream[p], d->metrics_done[buf], 0) != cudaSuccess)
                st = ap_error_set(err, AP_ERR_RUNTIME, "ordering the replay after the metrics failed");
            if (!st) st = launch_policy(g, &shapes[p], p, d, bv, t0, t1, err);
            if (!st && (cudaEventRecord(d->policy_done[p], d->policy_stream[p]) != cudaSuccess ||
                        cudaStreamWaitEvent(d->stream, d->policy_done[p], 0) != cudaSuccess))
                st = ap_error_set(err, AP_ERR_RUNTIME, "ordering the metrics after the replay failed");
        }
        const int rows = (last - first) * bv->n_lists;
        if (st || rows <= 0) continue;
        metrics_kernel<<<(unsigned)((rows + WARPS - 1) / WARPS), 32 * WARPS, shared, d->stream>>>(*bv, rows);
        if (cudaGetLastError() != cudaSuccess || cudaEventRecord(d->metrics_done[buf], d->stream) != cudaSuccess)
            st = ap_error_set(err, AP_ERR_RUNTIME, "launching the rows' metrics on the device failed");
    }
    for (int p = 0; p < P_n; p++)
        if (cudaStreamSynchronize(d->policy_stream[p]) != cudaSuccess && !st)
            st = ap_error_set(err, AP_ERR_RUNTIME, "replaying the policies on the device failed");
    if (cudaStreamSynchronize(d->stream) != cudaSuccess && !st)
        st = ap_error_set(err, AP_ERR_RUNTIME, "computing the rows' metrics on the device failed");
    phase("replay+metrics");
    free(shapes), free(evicts);
    return st;
}

/* Creates the device state of the batch, replays it and folds its rows'
 * metrics into acc; the caller frees g and d. */
static ap_status run_batch(const ap_study_config *cfg, const ap_trace *tr, study_acc *acc, ap_pool *pool,
                           int n_steps, int max_T, const int *keeps_all, int n_streams, ap_policy_gpu *g,
                           batch_device *d, ap_error *err)
{
    const int L = tr->n_layers, H = tr->n_head;
    const size_t n_values = (size_t)n_streams * L * n_steps * H * AP_M_COUNT;
    batch_view bv = {tr->n_samples, cfg->n_policies, L, H,           tr->head_dim,
                     max_T,        n_steps,          cfg->warmup, cfg->stride, n_streams * L * H};
    CUDA_TRY(cudaStreamCreate(&d->stream), "creating a stream for the replay");
    if (!(d->policy_stream = (cudaStream_t *)calloc((size_t)cfg->n_policies, sizeof(cudaStream_t))))
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    if (!(d->buckets = (uint32_t **)calloc(2 * (size_t)cfg->n_policies, sizeof *d->buckets)))
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    if (!(d->policy_done = (cudaEvent_t *)calloc((size_t)cfg->n_policies, sizeof(cudaEvent_t))))
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    for (int i = 0; i < 2; i++)
        CUDA_TRY(cudaEventCreateWithFlags(&d->metrics_done[i], cudaEventDisableTiming), "creating an event");
    for (; d->n_policy_streams < cfg->n_policies; d->n_policy_streams++) {
        const int p = d->n_policy_streams;
        CUDA_TRY(cudaEventCreateWithFlags(&d->policy_done[p], cudaEventDisableTiming), "creating an event");
        if (cudaStreamCreate(&d->policy_stream[p]) != cudaSuccess) {
            cudaEventDestroy(d->policy_done[p]);
            return ap_error_set(err, AP_ERR_RUNTIME, "creating a stream for a policy failed");
        }
    }
    CUDA_TRY(cudaMalloc(&d->top, (size_t)n_steps * tr->n_samples * L * H * 32 * sizeof(int) + 1),
             "allocating the rows' top positions");
    bv.top = d->top;
    CUDA_TRY(cudaMalloc(&d->neg_entropy, (size_t)n_steps * tr->n_samples * L * H * sizeof(double) + 1),
             "allocating the rows' entropies");
    bv.neg_entropy = d->neg_entropy;
    CUDA_TRY(cudaMalloc(&d->values, n_values * sizeof(double) + 1), "allocating the rows' metrics");
    bv.values = d->values;
    int *steps_of = (int *)malloc((size_t)tr->n_samples * sizeof(int) + 1);
    if (!steps_of) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    for (int b = 0; b < tr->n_samples; b++) {
        steps_of[b] = 0;
        while (steps_of[b] < n_steps && measured_t(&bv, steps_of[b]) < tr->len[b]) steps_of[b]++;
    }
    ap_status st;
    if (!(st = upload_tables(tr, keeps_all, n_streams, d, &bv, err)) && !(st = launch_replay(g, keeps_all, d, &bv, err)))
        st = study_fold_gpu(acc, d->values, tr->n_samples, n_steps, steps_of, pool, err);
    phase("fold");
    free(steps_of);
    return st;
}

extern "C" ap_status study_isolated_gpu(const ap_study_config *cfg, const ap_trace *tr, study_acc *acc, ap_pool *pool,
                                        double *kv_bytes, double *seconds, ap_error *err)
{
    const int B = tr->n_samples, P = cfg->n_policies, L = tr->n_layers, H = tr->n_head, D = tr->head_dim;
    const int n_streams = B * P;
    int max_T = 0, n_steps = 0;
    for (int b = 0; b < B; b++) max_T = tr->len[b] > max_T ? tr->len[b] : max_T;
    for (int t = cfg->warmup; t < max_T; t++) n_steps += t % cfg->stride == 0;
    int *stream_param = (int *)malloc((size_t)n_streams * sizeof(int));
    int *stream_len = (int *)malloc((size_t)n_streams * sizeof(int));
    int *keeps_all = (int *)malloc((size_t)n_streams * sizeof(int));
    int *cnt = (int *)malloc((size_t)n_streams * L * H * sizeof(int));
    batch_device d = {0};
    ap_policy_gpu *g = NULL;
    ap_status st = AP_OK;
    const double t0 = now_s();
    if (!stream_param || !stream_len || !keeps_all || !cnt) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        goto done;
    }
    for (int s = 0; s < n_streams; s++) stream_param[s] = s % P, stream_len[s] = tr->len[s / P];
    phase("replay start");
    if ((st = ap_policy_gpu_create(cfg->policies, P, stream_param, stream_len, n_streams, L, H, D, &g, err))) goto done;
    phase("policy state");
    for (int s = 0; s < n_streams; s++) keeps_all[s] = ap_policy_gpu_keeps_all(g, s);
    if ((st = run_batch(cfg, tr, acc, pool, n_steps, max_T, keeps_all, n_streams, g, &d, err)) ||
        (st = ap_policy_gpu_counts(g, cnt, err)))
        goto done;
    /* what each run keeps at the end, the most over the batch's samples */
    for (int s = 0; s < n_streams; s++)
        for (int l = 0; l < L; l++) {
            double positions = 0;
            for (int h = 0; h < H; h++) positions += cnt[((size_t)s * L + l) * H + h];
            if (keeps_all[s]) positions = (double)stream_len[s] * H;
            const double kv = positions * 2.0 * D * sizeof(float);
            double *dst = &kv_bytes[(s % P) * L + l];
            if (kv > *dst) *dst = kv;
        }
    *seconds = now_s() - t0;
done:
    ap_policy_gpu_free(g);
    batch_device_free(&d);
    phase("free");
    free(stream_param), free(stream_len), free(keeps_all), free(cnt);
    return st;
}

extern "C" size_t study_gpu_free_bytes(void)
{
    size_t free_b = 0, total = 0;
    return cudaMemGetInfo(&free_b, &total) == cudaSuccess ? free_b : 0;
}
