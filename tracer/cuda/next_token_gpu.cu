/* next_token_gpu.cu — eval's next-token metrics on the device (docs/eval.md):
 * at each decode step every stream's logits are compared, inside the step's
 * recorded launch, with the full cache's — the prefill's logits at that
 * position, or the decoded `full` stream's of the same sample — and four
 * numbers a (stream, step) are kept in device memory until the cascade ends.
 * Only they cross to the host: not 50,257 logits a stream and step.
 *
 * The arithmetic is analysis/next_token.c's, in double: log-sum-exp from the
 * maximum, the argmax the first of equal maxima, KL(p_full || p_policy)
 * clamped at 0 (identical rows give exactly 0: each term is). Only the order
 * of the sums differs from the host's. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "../replay_internal.h"
}

#include "../../common/cuda_try.h"

enum { NEXT_THREADS = 256 };

struct ap_next_gpu {
    int n_streams, n_samples, max_T, vocab;
    float *logits;  /* [n_streams, vocab]: the step's, by active index */
    int *ids, *len; /* [n_samples * max_T], [n_samples] */
    int *meta;      /* [n_streams * 3]: each active stream's id, sample, and its sample's full stream's
                       active index (-1: the reference is the prefill's) */
    const float **ref; /* [n_samples]: the prefill's logits [T, vocab] of each sample, or NULL */
    double *values; /* [n_streams * max_T * 4]: nll, next_kl, next_top1, full_argmax_rank */
    int n_active;
};

/* Block-wide: the largest value (the first index on ties) and a sum. */
__device__ static void block_max(double *v, int *i, double *sv, int *si)
{
    const int tid = threadIdx.x;
    sv[tid] = *v, si[tid] = *i;
    __syncthreads();
    for (int o = NEXT_THREADS / 2; o > 0; o >>= 1) {
        if (tid < o) {
            const double b = sv[tid + o];
            const int j = si[tid + o];
            if (b > sv[tid] || (b == sv[tid] && j < si[tid])) sv[tid] = b, si[tid] = j;
        }
        __syncthreads();
    }
    *v = sv[0], *i = si[0];
    __syncthreads();
}

__device__ static double block_sum(double v, double *sv)
{
    const int tid = threadIdx.x;
    sv[tid] = v;
    __syncthreads();
    for (int o = NEXT_THREADS / 2; o > 0; o >>= 1) {
        if (tid < o) sv[tid] += sv[tid + o];
        __syncthreads();
    }
    const double s = sv[0];
    __syncthreads();
    return s;
}

/* max and argmax of x[0..V), then log Σ exp(x - max) + max */
__device__ static double log_sum_exp(const float *x, int V, int *top, double *sv, int *si)
{
    double m = -INFINITY;
    int at = V;
    for (int j = threadIdx.x; j < V; j += NEXT_THREADS)
        if (x[j] > m) m = x[j], at = j; /* ascending j: the first of equal values stays */
    block_max(&m, &at, sv, si);
    double s = 0;
    for (int j = threadIdx.x; j < V; j += NEXT_THREADS) s += exp((double)x[j] - m);
    *top = at;
    return m + log(block_sum(s, sv));
}

/* One block an active stream: its metrics at its position t (when a next token exists). */
__global__ void next_token_kernel(ap_next_gpu g, const int *t_of)
{
    __shared__ double sv[NEXT_THREADS];
    __shared__ int si[NEXT_THREADS];
    const int a = blockIdx.x, id = g.meta[3 * a], sample = g.meta[3 * a + 1], r = g.meta[3 * a + 2];
    const int t = t_of[a], V = g.vocab;
    if (t + 1 >= g.len[sample]) return;
    const float *lp = g.logits + (size_t)a * V;
    const float *lr = r >= 0 ? g.logits + (size_t)r * V : g.ref[sample] + (size_t)t * V;
    int top_p, top_r;
    const double zp = log_sum_exp(lp, V, &top_p, sv, si), zr = log_sum_exp(lr, V, &top_r, sv, si);
    double kl = 0, rank = 0;
    const float best = lp[top_r];
    for (int j = threadIdx.x; j < V; j += NEXT_THREADS) {
        const double ref = (double)lr[j] - zr;
        kl += exp(ref) * (ref - ((double)lp[j] - zp));
        rank += lp[j] > best || (lp[j] == best && j < top_r);
    }
    kl = block_sum(kl, sv);
    rank = block_sum(rank, sv);
    if (threadIdx.x == 0) {
        double *out = g.values + ((size_t)id * g.max_T + t) * 4;
        out[0] = zp - lp[g.ids[(size_t)sample * g.max_T + t + 1]];
        out[1] = kl > 0 ? kl : 0.0;
        out[2] = top_p == top_r;
        out[3] = rank;
    }
}

/* A stream that keeps everything is not decoded: its logits are the
 * prefill's, so its metrics are the reference's own (one block a position;
 * blockIdx.y the stream of keeps[]). KL 0, top-1 1, rank 0 exactly. */
__global__ void reference_kernel(ap_next_gpu g, const int *keeps)
{
    __shared__ double sv[NEXT_THREADS];
    __shared__ int si[NEXT_THREADS];
    const int id = keeps[2 * blockIdx.y], sample = keeps[2 * blockIdx.y + 1], t = blockIdx.x;
    if (t + 1 >= g.len[sample]) return;
    const float *lr = g.ref[sample] + (size_t)t * g.vocab;
    int top;
    const double z = log_sum_exp(lr, g.vocab, &top, sv, si);
    if (threadIdx.x == 0) {
        double *out = g.values + ((size_t)id * g.max_T + t) * 4;
        out[0] = z - lr[g.ids[(size_t)sample * g.max_T + t + 1]];
        out[1] = 0.0, out[2] = 1.0, out[3] = 0.0;
    }
}

extern "C" ap_status ap_next_gpu_create(int n_streams, const int *const *ids, const int *len, int n_samples,
                                        int max_T, int vocab, float *const *ref, ap_next_gpu **out, ap_error *err)
{
    ap_next_gpu *g = (ap_next_gpu *)calloc(1, sizeof *g);
    if (!g) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    *out = g;
    g->n_streams = n_streams, g->n_samples = n_samples, g->max_T = max_T, g->vocab = vocab;
    int *h_ids = (int *)calloc((size_t)n_samples * max_T, sizeof *h_ids);
    if (!h_ids) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    for (int s = 0; s < n_samples; s++) memcpy(h_ids + (size_t)s * max_T, ids[s], (size_t)len[s] * sizeof(int));
    cudaError_t e = cudaMalloc(&g->logits, (size_t)n_streams * vocab * sizeof(float));
    if (!e) e = cudaMalloc(&g->ids, (size_t)n_samples * max_T * sizeof(int));
    if (!e) e = cudaMalloc(&g->len, (size_t)n_samples * sizeof(int));
    if (!e) e = cudaMalloc(&g->meta, (size_t)n_streams * 3 * sizeof(int));
    if (!e) e = cudaMalloc(&g->values, (size_t)n_streams * max_T * 4 * sizeof(double));
    if (!e && ref) e = cudaMalloc(&g->ref, (size_t)n_samples * sizeof *g->ref);
    if (!e && ref) e = cudaMemcpy(g->ref, ref, (size_t)n_samples * sizeof *g->ref, cudaMemcpyHostToDevice);
    if (!e) e = cudaMemcpy(g->ids, h_ids, (size_t)n_samples * max_T * sizeof(int), cudaMemcpyHostToDevice);
    if (!e) e = cudaMemcpy(g->len, len, (size_t)n_samples * sizeof(int), cudaMemcpyHostToDevice);
    /* steps without a next token stay NaN: the host never reads them */
    if (!e) e = cudaMemset(g->values, 0xff, (size_t)n_streams * max_T * 4 * sizeof(double));
    free(h_ids);
    CUDA_TRY(e, "allocating eval's next-token buffers on the device");
    return AP_OK;
}

extern "C" void ap_next_gpu_free(ap_next_gpu *g)
{
    if (!g) return;
    cudaFree(g->logits), cudaFree(g->ids), cudaFree(g->len), cudaFree(g->meta), cudaFree(g->values);
    cudaFree(g->ref);
    free(g);
}

extern "C" float *ap_next_gpu_logits(ap_next_gpu *g) { return g->logits; }

extern "C" ap_status ap_next_gpu_set_active(ap_next_gpu *g, const int *meta, int n_active, ap_error *err)
{
    /* a synchronous copy: the steps queued before, which read the old table, finish first */
    CUDA_TRY(cudaMemcpy(g->meta, meta, (size_t)n_active * 3 * sizeof(int), cudaMemcpyHostToDevice),
             "copying eval's active streams");
    g->n_active = n_active;
    return AP_OK;
}

extern "C" ap_status ap_next_gpu_enqueue(ap_next_gpu *g, void *stream, const int *t_of, ap_error *err)
{
    if (g->n_active < 1) return AP_OK;
    next_token_kernel<<<g->n_active, NEXT_THREADS, 0, (cudaStream_t)stream>>>(*g, t_of);
    KERNEL_TRY("eval's next-token metrics");
    return AP_OK;
}

extern "C" ap_status ap_next_gpu_reference(ap_next_gpu *g, const int *keeps, int n_keeps, ap_error *err)
{
    if (n_keeps < 1) return AP_OK;
    if (!g->ref) return ap_error_set(err, AP_ERR_RUNTIME, "eval: a stream keeps everything but no prefill logits");
    int *d_keeps;
    CUDA_TRY(cudaMalloc(&d_keeps, (size_t)n_keeps * 2 * sizeof(int)), "allocating eval's reference streams");
    cudaError_t e = cudaMemcpy(d_keeps, keeps, (size_t)n_keeps * 2 * sizeof(int), cudaMemcpyHostToDevice);
    if (!e) {
        reference_kernel<<<dim3(g->max_T, n_keeps), NEXT_THREADS>>>(*g, d_keeps);
        e = cudaGetLastError();
    }
    if (!e) e = cudaDeviceSynchronize();
    cudaFree(d_keeps);
    CUDA_TRY(e, "eval's metrics of the streams that keep everything");
    return AP_OK;
}

extern "C" ap_status ap_next_gpu_values(ap_next_gpu *g, double *out, ap_error *err)
{
    CUDA_TRY(cudaMemcpy(out, g->values, (size_t)g->n_streams * g->max_T * 4 * sizeof(double), cudaMemcpyDeviceToHost),
             "copying eval's next-token metrics");
    return AP_OK;
}
