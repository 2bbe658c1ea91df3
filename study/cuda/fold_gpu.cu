/* fold_gpu.cu — a batch's metric values, computed on the device by the
 * isolated replay, folded there into the study's accumulators
 * (study_internal.h, docs/statistics.md): only each sample's moments and
 * per-head sums and the quantile sketches' bucket counts cross to the host,
 * not the values (0.5 GB for 32 GPT-2-small samples of ten policies).
 *
 * The parts are the host's to the last bit: one thread folds a (sample,
 * run, metric) in study_acc_values' order (steps, then heads) with the same
 * IEEE operations (explicit _rn intrinsics: no fused multiply-add). A
 * value's quantile bucket is ceil(log|x| / log gamma) as on the host, with
 * CUDA's log, which may differ from the C library's in the last bit: a
 * value within that of a bucket boundary could fall in the neighbouring
 * bucket (a relative 1% apart; tests/test_study_gpu.c compares the
 * quantiles with the host's replay). */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "../study_internal.h"
}

#include "../../common/cuda_try.h"

enum { K = AP_M_COUNT };

/* What the fold reads; passed by value. */
typedef struct {
    int n_samples, n_runs, n_steps, H;
    const double *values;         /* [B][n_runs][n_steps][H][K] */
    const int *steps_of;          /* [B]: measured steps a sample has */
    const unsigned char *head_on; /* [H] */
} fold_view;

/* ap_moments_add (analysis/stats.c), operation for operation. */
__device__ static void moments_add(ap_moments *m, double x)
{
    if (isnan(x)) return;
    if (m->n == 0) {
        m->min = m->max = x;
    } else {
        if (x < m->min) m->min = x;
        if (x > m->max) m->max = x;
    }
    m->n = __dadd_rn(m->n, 1.0);
    m->sum = __dadd_rn(m->sum, x);
    const double d = __dsub_rn(x, m->mean);
    m->mean = __dadd_rn(m->mean, __ddiv_rn(d, m->n));
    m->m2 = __dadd_rn(m->m2, __dmul_rn(d, __dsub_rn(x, m->mean)));
}

/* One thread a (sample, run, metric): its moments over steps then heads,
 * then each head's sum and count over steps. */
__global__ void fold_kernel(fold_view f, ap_moments *part_m, double *head_sum, double *head_cnt)
{
    const int item = blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= f.n_samples * f.n_runs * K) return;
    const int k = item % K, br = item / K, b = br / f.n_runs, steps = f.steps_of[b];
    const double *x = f.values + (size_t)br * f.n_steps * f.H * K + k;
    ap_moments m = {0, 0, 0, 0, 0, 0};
    for (int s = 0; s < steps; s++)
        for (int h = 0; h < f.H; h++)
            if (f.head_on[h]) moments_add(&m, x[((size_t)s * f.H + h) * K]);
    part_m[item] = m;
    for (int h = 0; h < f.H; h++) {
        double sum = 0, cnt = 0;
        for (int s = 0; s < steps && f.head_on[h]; s++) {
            const double v = x[((size_t)s * f.H + h) * K];
            if (!isnan(v)) sum = __dadd_rn(sum, v), cnt = __dadd_rn(cnt, 1.0);
        }
        const size_t at = ((size_t)br * f.H + h) * K + k;
        head_sum[at] = sum, head_cnt[at] = cnt;
    }
}

/* One thread a value: its bucket's count, in hist[(run * K + k) * 2 +
 * negative][key + lim] (width 2 lim + 1), or zero[run * K + k]. */
__global__ void bucket_kernel(fold_view f, double log_gamma, int lim, unsigned *hist, unsigned *zero)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)f.n_samples * f.n_runs * f.n_steps * f.H * K) return;
    const int k = (int)(i % K), h = (int)(i / K % f.H), s = (int)(i / ((size_t)K * f.H) % f.n_steps);
    const int br = (int)(i / ((size_t)K * f.H * f.n_steps)), run = br % f.n_runs;
    if (s >= f.steps_of[br / f.n_runs] || !f.head_on[h]) return;
    const double x = f.values[i];
    if (isnan(x)) return;
    const double ax = fabs(x);
    const int hk = run * K + k;
    if (ax < AP_QSKETCH_ZERO) {
        atomicAdd(&zero[hk], 1u);
        return;
    }
    double key = ceil(log(ax) / log_gamma);
    key = key > lim ? lim : key < -lim ? -lim : key;
    atomicAdd(&hist[((size_t)hk * 2 + (x < 0)) * (2 * lim + 1) + (int)key + lim], 1u);
}

/* One block a histogram: the first and last bucket with a count (lo > hi when none). */
__global__ void range_kernel(const unsigned *hist, int width, int *lo, int *hi)
{
    __shared__ int first, last;
    if (threadIdx.x == 0) first = width, last = -1;
    __syncthreads();
    const unsigned *row = hist + (size_t)blockIdx.x * width;
    int f = width, l = -1;
    for (int i = threadIdx.x; i < width; i += blockDim.x)
        if (row[i]) f = i < f ? i : f, l = i;
    atomicMin(&first, f);
    atomicMax(&last, l);
    __syncthreads();
    if (threadIdx.x == 0) lo[blockIdx.x] = first, hi[blockIdx.x] = last;
}

/* One block a histogram: its counts lo..hi to out + off. */
__global__ void gather_kernel(const unsigned *hist, int width, const int *lo, const int *hi, const long long *off,
                              unsigned *out)
{
    const unsigned *row = hist + (size_t)blockIdx.x * width;
    for (int i = lo[blockIdx.x] + threadIdx.x; i <= hi[blockIdx.x]; i += blockDim.x)
        out[off[blockIdx.x] + i - lo[blockIdx.x]] = row[i];
}

/* Device and host buffers of one fold; freed by fold_free. */
typedef struct {
    ap_moments *d_m, *h_m;
    double *d_sums, *h_sums; /* head sums then counts */
    unsigned *hist, *zero, *compact, *h_zero, *h_compact;
    int *lo, *hi, *h_lo, *h_hi;
    long long *off, *h_off;
    int *steps_of;
    unsigned char *head_on;
} fold_buffers;

static void fold_free(fold_buffers *fb)
{
    cudaFree(fb->d_m), cudaFree(fb->d_sums), cudaFree(fb->hist), cudaFree(fb->zero), cudaFree(fb->compact);
    cudaFree(fb->lo), cudaFree(fb->hi), cudaFree(fb->off), cudaFree(fb->steps_of), cudaFree(fb->head_on);
    free(fb->h_m), free(fb->h_sums), free(fb->h_zero), free(fb->h_compact), free(fb->h_lo), free(fb->h_hi);
    free(fb->h_off);
}

/* The sketches' part of the fold: hand run `run`'s bucket counts to its sketches. */
typedef struct {
    study_acc *acc;
    const fold_buffers *fb;
    int lim;
} sketch_job;

static ap_status sketch_item(void *ctx, int run, ap_error *err)
{
    const sketch_job *j = (const sketch_job *)ctx;
    for (int k = 0; k < K; k++) {
        ap_qsketch *q = &j->acc->runs[run].m[k].q;
        const int hk = run * K + k;
        for (int side = 0; side < 2; side++) {
            const int at = hk * 2 + side, lo = j->fb->h_lo[at], hi = j->fb->h_hi[at];
            const size_t n = hi >= lo ? (size_t)(hi - lo + 1) : 0;
            ap_status st = ap_qsketch_add_bins(q, side, (int64_t)lo - j->lim, j->fb->h_compact + j->fb->h_off[at], n,
                                               side ? 0 : j->fb->h_zero[hk], err);
            if (st) return st;
        }
    }
    return AP_OK;
}

/* The quantiles' share: every value's bucket, the counts of each
 * histogram's non-empty range copied back, then added to the sketches. */
static ap_status fold_sketches(study_acc *acc, const fold_view *f, fold_buffers *fb, ap_pool *pool, ap_error *err)
{
    const ap_qsketch *q0 = &acc->runs[0].m[0].q;
    const int lim = (int)ap_qsketch_key_limit(q0), width = 2 * lim + 1, n_hist = f->n_runs * K * 2;
    const size_t n_values = (size_t)f->n_samples * f->n_runs * f->n_steps * f->H * K;
    CUDA_TRY(cudaMalloc(&fb->hist, (size_t)n_hist * width * sizeof(unsigned)), "allocating the quantile buckets");
    CUDA_TRY(cudaMalloc(&fb->zero, (size_t)f->n_runs * K * sizeof(unsigned)), "allocating the quantile buckets");
    CUDA_TRY(cudaMemset(fb->hist, 0, (size_t)n_hist * width * sizeof(unsigned)), "clearing the quantile buckets");
    CUDA_TRY(cudaMemset(fb->zero, 0, (size_t)f->n_runs * K * sizeof(unsigned)), "clearing the quantile buckets");
    if (n_values)
        bucket_kernel<<<(unsigned)((n_values + 255) / 256), 256>>>(*f, q0->log_gamma, lim, fb->hist, fb->zero);
    KERNEL_TRY("counting the values' quantile buckets");
    CUDA_TRY(cudaMalloc(&fb->lo, n_hist * sizeof(int)), "allocating the buckets' ranges");
    CUDA_TRY(cudaMalloc(&fb->hi, n_hist * sizeof(int)), "allocating the buckets' ranges");
    range_kernel<<<(unsigned)n_hist, 256>>>(fb->hist, width, fb->lo, fb->hi);
    KERNEL_TRY("finding the buckets' ranges");
    fb->h_lo = (int *)malloc(n_hist * sizeof(int)), fb->h_hi = (int *)malloc(n_hist * sizeof(int));
    fb->h_off = (long long *)malloc(n_hist * sizeof(long long));
    fb->h_zero = (unsigned *)malloc((size_t)f->n_runs * K * sizeof(unsigned));
    if (!fb->h_lo || !fb->h_hi || !fb->h_off || !fb->h_zero) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    CUDA_TRY(cudaMemcpy(fb->h_lo, fb->lo, n_hist * sizeof(int), cudaMemcpyDeviceToHost), "reading the buckets' ranges");
    CUDA_TRY(cudaMemcpy(fb->h_hi, fb->hi, n_hist * sizeof(int), cudaMemcpyDeviceToHost), "reading the buckets' ranges");
    CUDA_TRY(cudaMemcpy(fb->h_zero, fb->zero, (size_t)f->n_runs * K * sizeof(unsigned), cudaMemcpyDeviceToHost),
             "reading the zero buckets");
    long long total = 0;
    for (int i = 0; i < n_hist; i++) {
        fb->h_off[i] = total;
        if (fb->h_hi[i] >= fb->h_lo[i]) total += fb->h_hi[i] - fb->h_lo[i] + 1;
    }
    CUDA_TRY(cudaMalloc(&fb->off, n_hist * sizeof(long long)), "allocating the buckets' ranges");
    CUDA_TRY(cudaMemcpy(fb->off, fb->h_off, n_hist * sizeof(long long), cudaMemcpyHostToDevice),
             "copying the buckets' ranges");
    CUDA_TRY(cudaMalloc(&fb->compact, (size_t)total * sizeof(unsigned) + 1), "allocating the bucket counts");
    gather_kernel<<<(unsigned)n_hist, 256>>>(fb->hist, width, fb->lo, fb->hi, fb->off, fb->compact);
    KERNEL_TRY("gathering the bucket counts");
    if (!(fb->h_compact = (unsigned *)malloc((size_t)total * sizeof(unsigned) + 1)))
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    CUDA_TRY(cudaMemcpy(fb->h_compact, fb->compact, (size_t)total * sizeof(unsigned), cudaMemcpyDeviceToHost),
             "reading the bucket counts");
    sketch_job job = {acc, fb, lim};
    return ap_pool_run(pool, f->n_runs, sketch_item, &job, err);
}

/* The parts' share: each (sample, run)'s moments and head sums. */
static ap_status fold_parts(study_acc *acc, const fold_view *f, fold_buffers *fb, ap_error *err)
{
    const size_t n_items = (size_t)f->n_samples * f->n_runs, n_sums = n_items * f->H * K;
    CUDA_TRY(cudaMalloc(&fb->d_m, n_items * K * sizeof(ap_moments) + 1), "allocating the samples' moments");
    CUDA_TRY(cudaMalloc(&fb->d_sums, 2 * n_sums * sizeof(double) + 1), "allocating the samples' head sums");
    if (n_items) fold_kernel<<<(unsigned)((n_items * K + 127) / 128), 128>>>(*f, fb->d_m, fb->d_sums, fb->d_sums + n_sums);
    KERNEL_TRY("folding the samples' values");
    fb->h_m = (ap_moments *)malloc(n_items * K * sizeof(ap_moments) + 1);
    fb->h_sums = (double *)malloc(2 * n_sums * sizeof(double) + 1);
    if (!fb->h_m || !fb->h_sums) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    CUDA_TRY(cudaMemcpy(fb->h_m, fb->d_m, n_items * K * sizeof(ap_moments), cudaMemcpyDeviceToHost),
             "reading the samples' moments");
    CUDA_TRY(cudaMemcpy(fb->h_sums, fb->d_sums, 2 * n_sums * sizeof(double), cudaMemcpyDeviceToHost),
             "reading the samples' head sums");
    for (size_t i = 0; i < n_items; i++)
        study_acc_add_part(acc, (int)(i / f->n_runs), (int)(i % f->n_runs), fb->h_m + i * K,
                           fb->h_sums + i * f->H * K, fb->h_sums + n_sums + i * f->H * K);
    return AP_OK;
}

extern "C" ap_status study_fold_gpu(study_acc *acc, const double *values, int n_samples, int n_steps,
                                    const int *steps_of, ap_pool *pool, ap_error *err)
{
    fold_buffers fb;
    memset(&fb, 0, sizeof fb);
    fold_view f = {n_samples, acc->n_runs, n_steps, acc->n_head, values, NULL, NULL};
    ap_status st = AP_OK;
    cudaError_t e = cudaMalloc(&fb.steps_of, (size_t)n_samples * sizeof(int) + 1);
    if (e == cudaSuccess) e = cudaMemcpy(fb.steps_of, steps_of, (size_t)n_samples * sizeof(int), cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMalloc(&fb.head_on, (size_t)acc->n_head);
    if (e == cudaSuccess) e = cudaMemcpy(fb.head_on, acc->head_on, (size_t)acc->n_head, cudaMemcpyHostToDevice);
    if (e != cudaSuccess)
        st = ap_error_set(err, AP_ERR_RUNTIME, "copying the fold's tables to the device: %s", cudaGetErrorString(e));
    f.steps_of = fb.steps_of, f.head_on = fb.head_on;
    if (!st) st = fold_parts(acc, &f, &fb, err);
    if (!st) st = fold_sketches(acc, &f, &fb, pool, err);
    fold_free(&fb);
    return st;
}
