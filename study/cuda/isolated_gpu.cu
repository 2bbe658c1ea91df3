/* isolated_gpu.cu — a batch's isolated replay on the CUDA device that holds
 * its trace (study_internal.h, docs/architecture.md).
 *
 * Streams are (sample, policy) pairs, one list per (stream, probed layer,
 * head), run by the cascade's device policies (sketch/policy_gpu.h). Each
 * step t:
 *   1. at a measured step, every row's metrics against the sets as they are
 *      (before t is observed), one warp a row (analysis/metrics_device.cuh);
 *   2. the reference row of t, scaled by 1 / the mass the set retains (the
 *      host's double sum, in its order), is written where the policies read
 *      the step's probabilities, with t's query and key;
 *   3. the policies observe t, retain it and evict, as the host's would.
 * Only the per-row metric values (15 numbers a measured row) come back to
 * the host, which folds them as it folds its own replay's. */
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

/* What the kernels read of a batch; passed by value. */
typedef struct {
    int n_policies, L, H, D, max_T, n_steps;
    const int *len;                 /* [B] */
    const float *const *attn, *const *q, *const *k, *const *v, *const *o; /* [B * L] */
    const int *keeps_all;           /* [B * n_policies] */
    const int *off, *cnt, *pos;     /* the policies' lists */
    float *rows, *q_step, *k_step;  /* where the policies read step t */
    double *values;                 /* [B][n_policies * L][n_steps][H][AP_M_COUNT] */
    int *top;                       /* [B * L * H][32]: each reference row's top positions at t */
} batch_view;

enum { WARPS = 4 };

/* A metrics warp's scratch: the policy row (floats), then the kept flags;
 * 16-byte multiples so that every warp's floats stay aligned. */
__host__ __device__ static inline size_t warp_scratch_bytes(int max_T)
{
    return ((size_t)max_T * (sizeof(float) + 1) + 15) / 16 * 16;
}

/* One warp a reference row (sample, layer, head) at t: its top positions,
 * which every policy's recall reads. */
__global__ void topk_kernel(batch_view bv, int t, int n_rows)
{
    const int warp = blockIdx.x * WARPS + threadIdx.x / 32;
    if (warp >= n_rows) return;
    const int h = warp % bv.H, l = warp / bv.H % bv.L, b = warp / (bv.H * bv.L), T = bv.len[b];
    if (t >= T) return;
    const float *ref = bv.attn[(size_t)b * bv.L + l] + ((size_t)h * T + t) * T;
    ap_topk_warp(ref, t + 1, bv.top + (size_t)warp * 32);
}

/* One warp a row (stream, layer, head) of every stream still running at t. */
__global__ void metrics_kernel(batch_view bv, int t, int step, int n_rows)
{
    extern __shared__ unsigned char scratch[];
    const int warp = blockIdx.x * WARPS + threadIdx.x / 32;
    if (warp >= n_rows) return;
    const int h = warp % bv.H, l = warp / bv.H % bv.L, sid = warp / (bv.H * bv.L);
    const int b = sid / bv.n_policies, p = sid % bv.n_policies, T = bv.len[b];
    if (t >= T) return;
    float *q = (float *)(scratch + (threadIdx.x / 32) * warp_scratch_bytes(bv.max_T));
    unsigned char *kept = (unsigned char *)(q + bv.max_T);
    const int list = warp; /* (sid * L + l) * H + h */
    ap_row_set set = {t, bv.cnt[list], bv.keeps_all[sid], bv.pos + bv.off[list]};
    const size_t tl = (size_t)b * bv.L + l;
    const float *ref = bv.attn[tl] + ((size_t)h * T + t) * T;
    double out[AP_M_COUNT];
    const int *top = bv.top + (((size_t)b * bv.L + l) * bv.H + h) * 32;
    ap_metrics_row_warp(ref, &set, top, bv.v[tl] + (size_t)h * T * bv.D, bv.o[tl] + ((size_t)h * T + t) * bv.D, bv.D,
                        q, kept, out);
    if (threadIdx.x % 32 == 0) {
        const int run = p * bv.L + l;
        double *dst = bv.values + ((((size_t)b * bv.n_policies * bv.L + run) * bv.n_steps + step) * bv.H + h) * AP_M_COUNT;
        for (int m = 0; m < AP_M_COUNT; m++) dst[m] = out[m];
    }
}

/* One warp a list of an active stream: the scaled reference row of t where
 * the policies read it, and t's query and key. */
__global__ void feed_kernel(batch_view bv, const int *active, int n_active, int t, int *t_of)
{
    const int warp = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp >= n_active * bv.L * bv.H) return;
    const int h = warp % bv.H, l = warp / bv.H % bv.L, a = warp / (bv.H * bv.L);
    const int sid = active[a], b = sid / bv.n_policies, T = bv.len[b];
    const int list = (sid * bv.L + l) * bv.H + h, n = bv.cnt[list];
    const int *pos = bv.pos + bv.off[list];
    const size_t tl = (size_t)b * bv.L + l;
    const float *ref = bv.attn[tl] + ((size_t)h * T + t) * T;
    /* the retained entries of the row, gathered by the whole warp into the
     * policies' row (unscaled) so that the sum below reads them nearby */
    float *row = bv.rows + bv.off[list];
    for (int x = lane; x <= n; x += 32) row[x] = ref[x < n ? pos[x] : t];
    __syncwarp();
    /* ap_replay_isolated's scale: 1 / the retained mass, summed in its order */
    double mass = 0;
    if (lane == 0 && n < t) {
        mass = row[n];
        for (int x = 0; x < n; x++) mass += row[x];
    }
    mass = __shfl_sync(0xffffffffu, mass, 0);
    const float scale = n == t || !(mass > 0) ? 1.0f : (float)(1.0 / mass);
    if (scale != 1.0f)
        for (int x = lane; x <= n; x += 32) row[x] *= scale;
    const size_t C = (size_t)bv.H * bv.D, src = ((size_t)h * T + t) * bv.D;
    const size_t dst = ((size_t)l * n_active + a) * C + (size_t)h * bv.D;
    for (int d = lane; d < bv.D; d += 32) {
        bv.q_step[dst + d] = bv.q[tl][src + d];
        bv.k_step[dst + d] = bv.k[tl][src + d];
    }
    if (l == 0 && h == 0 && lane == 0) t_of[a] = t;
}

/* Device copies of the batch's pointer tables and small arrays. */
typedef struct {
    cudaStream_t stream;
    void *tables;    /* attn, q, k, v, o pointers; len; keeps_all */
    int *active, *t_of, *top;
    double *values;
} batch_device;

static void batch_device_free(batch_device *d)
{
    if (d->stream) cudaStreamDestroy(d->stream);
    cudaFree(d->tables), cudaFree(d->active), cudaFree(d->t_of), cudaFree(d->top), cudaFree(d->values);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
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

/* The measured steps of the batch, and every step's replay. */
static ap_status replay_steps(const ap_study_config *cfg, const ap_trace *tr, ap_policy_gpu *g, const int *keeps_all,
                              int n_streams, batch_device *d, batch_view *bv, ap_error *err)
{
    int *active = (int *)malloc((size_t)n_streams * sizeof(int));
    int *last = (int *)malloc((size_t)n_streams * sizeof(int));
    if (!active || !last) {
        free(active), free(last);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    }
    const int rows_all = n_streams * bv->L * bv->H;
    const size_t shared = WARPS * warp_scratch_bytes(bv->max_T);
    ap_status st = AP_OK;
    int n_last = -1, step = 0;
    for (int t = 0; t < bv->max_T && !st; t++) {
        if (t >= cfg->warmup && t % cfg->stride == 0) {
            const int ref_rows = tr->n_samples * bv->L * bv->H;
            topk_kernel<<<(unsigned)((ref_rows + WARPS - 1) / WARPS), 32 * WARPS, 0, d->stream>>>(*bv, t, ref_rows);
            metrics_kernel<<<(unsigned)((rows_all + WARPS - 1) / WARPS), 32 * WARPS, shared, d->stream>>>(*bv, t, step++,
                                                                                                         rows_all);
            if (cudaGetLastError() != cudaSuccess) {
                st = ap_error_set(err, AP_ERR_RUNTIME, "launching the metrics of step %d failed", t);
                break;
            }
        }
        int n_active = 0;
        for (int s = 0; s < n_streams; s++)
            if (t < tr->len[s / cfg->n_policies] && !keeps_all[s]) active[n_active++] = s;
        if (!n_active) continue;
        long long key;
        if ((st = ap_policy_gpu_begin_step(g, active, n_active, &key, err))) break;
        if (n_active != n_last || memcmp(active, last, (size_t)n_active * sizeof(int))) {
            if (cudaMemcpyAsync(d->active, active, (size_t)n_active * sizeof(int), cudaMemcpyHostToDevice, d->stream) !=
                cudaSuccess) {
                st = ap_error_set(err, AP_ERR_RUNTIME, "copying the active streams failed");
                break;
            }
            memcpy(last, active, (size_t)n_active * sizeof(int));
            n_last = n_active;
        }
        const int lists = n_active * bv->L * bv->H;
        feed_kernel<<<(unsigned)((lists + WARPS - 1) / WARPS), 32 * WARPS, 0, d->stream>>>(*bv, d->active, n_active, t,
                                                                                          d->t_of);
        if (cudaGetLastError() != cudaSuccess) {
            st = ap_error_set(err, AP_ERR_RUNTIME, "launching step %d's rows failed", t);
            break;
        }
        st = ap_policy_gpu_enqueue(g, d->stream, d->t_of, err);
    }
    free(active), free(last);
    return st;
}

/* Creates the device state of the batch and replays it; the caller frees g and d. */
static ap_status run_batch(const ap_study_config *cfg, const ap_trace *tr, int n_steps, int max_T, const int *keeps_all,
                           int n_streams, ap_policy_gpu *g, batch_device *d, double *values, ap_error *err)
{
    const int L = tr->n_layers, H = tr->n_head;
    const ap_policy_gpu_buffers *buf = ap_policy_gpu_buffers_of(g);
    const size_t n_values = (size_t)n_streams * L * n_steps * H * AP_M_COUNT;
    batch_view bv = {cfg->n_policies, L, H, tr->head_dim, max_T, n_steps};
    bv.off = buf->off, bv.cnt = buf->cnt, bv.pos = buf->pos;
    bv.rows = buf->rows, bv.q_step = buf->q, bv.k_step = buf->k;
    CUDA_TRY(cudaStreamCreate(&d->stream), "creating a stream for the replay");
    CUDA_TRY(cudaMalloc(&d->active, (size_t)n_streams * sizeof(int)), "allocating the active streams");
    CUDA_TRY(cudaMalloc(&d->t_of, (size_t)n_streams * sizeof(int)), "allocating the steps' positions");
    CUDA_TRY(cudaMalloc(&d->top, (size_t)tr->n_samples * L * H * 32 * sizeof(int)), "allocating the rows' top positions");
    bv.top = d->top;
    CUDA_TRY(cudaMalloc(&d->values, n_values * sizeof(double) + 1), "allocating the rows' metrics");
    bv.values = d->values;
    const size_t shared = WARPS * warp_scratch_bytes(max_T);
    if (shared > 48 * 1024)
        CUDA_TRY(cudaFuncSetAttribute(metrics_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared),
                 "sizing the metrics' shared memory");
    ap_status st;
    if ((st = upload_tables(tr, keeps_all, n_streams, d, &bv, err)) ||
        (st = replay_steps(cfg, tr, g, keeps_all, n_streams, d, &bv, err)))
        return st;
    CUDA_TRY(cudaStreamSynchronize(d->stream), "replaying the policies on the device");
    CUDA_TRY(cudaMemcpy(values, d->values, n_values * sizeof(double), cudaMemcpyDeviceToHost),
             "copying the rows' metrics to the host");
    return AP_OK;
}

extern "C" ap_status study_isolated_gpu(const ap_study_config *cfg, const ap_trace *tr, int n_steps, double *values,
                                        double *kv_bytes, double *seconds, ap_error *err)
{
    const int B = tr->n_samples, P = cfg->n_policies, L = tr->n_layers, H = tr->n_head, D = tr->head_dim;
    const int n_streams = B * P;
    int max_T = 0;
    for (int b = 0; b < B; b++) max_T = tr->len[b] > max_T ? tr->len[b] : max_T;
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
    if ((st = ap_policy_gpu_create(cfg->policies, P, stream_param, stream_len, n_streams, L, H, D, &g, err))) goto done;
    for (int s = 0; s < n_streams; s++) keeps_all[s] = ap_policy_gpu_keeps_all(g, s);
    if ((st = run_batch(cfg, tr, n_steps, max_T, keeps_all, n_streams, g, &d, values, err)) ||
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
    free(stream_param), free(stream_len), free(keeps_all), free(cnt);
    return st;
}

extern "C" size_t study_gpu_free_bytes(void)
{
    size_t free_b = 0, total = 0;
    return cudaMemGetInfo(&free_b, &total) == cudaSuccess ? free_b : 0;
}
