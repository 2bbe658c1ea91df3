/* cms.cuh — sketch/policies/cms.c on the device: the buckets a host
 * instance drew, copied into the new slot; the updates in position order,
 * one lane a sketch row (conservative update takes the minimum across
 * lanes, which is exact); the estimate the rows' minimum. */
#ifndef AP_SKETCH_CUDA_CMS_CUH
#define AP_SKETCH_CUDA_CMS_CUH

/* The new position's buckets (cms, count_sketch): drawn by the host, in the tables. */
__device__ static void copy_buckets(const gpu_policy *P, const step_view *v, int t, int h, uint32_t *fresh, int lane)
{
    const uint32_t *key = v->tables + P->table + ((size_t)h * v->max_T + t) * P->depth;
    for (int r = lane; r < P->depth; r += 32) fresh[r] = key[r];
    __syncwarp();
}

/* Count-Min update; lane r owns sketch rows r and r + 32, whose buckets
 * it passes in b[0], b[1]. */
__device__ static void cms_update(const gpu_policy *P, float *counts, const uint32_t *b, float value, int lane)
{
    /* loops over j have constant bounds (the arrays stay in registers) */
    float c[MAX_DEPTH / 32];
    float est = FLT_MAX;
#pragma unroll
    for (int j = 0; j < MAX_DEPTH / 32; j++)
        if (lane + 32 * j < P->depth) {
            c[j] = counts[(size_t)(lane + 32 * j) * P->width + b[j]];
            est = fminf(est, c[j]);
        }
    if (!P->conservative) {
#pragma unroll
        for (int j = 0; j < MAX_DEPTH / 32; j++)
            if (lane + 32 * j < P->depth) counts[(size_t)(lane + 32 * j) * P->width + b[j]] = c[j] + value;
        return;
    }
    /* rows sit in lanes 0..depth-1 (and 32.. for depth > 32): the min of
     * the first power-of-two group of lanes covers them */
    int span = 1;
    while (span < P->depth && span < 32) span <<= 1;
    for (int o = span / 2; o > 0; o >>= 1) est = fminf(est, __shfl_xor_sync(0xffffffffu, est, o));
    const float target = est + value;
#pragma unroll
    for (int j = 0; j < MAX_DEPTH / 32; j++)
        if (lane + 32 * j < P->depth && c[j] < target) counts[(size_t)(lane + 32 * j) * P->width + b[j]] = target;
}

/* Positions in order (i == n: t's own), their buckets loaded PREFETCH ahead. */
__device__ static void observe_cms(const gpu_policy *P, const step_view *v, int t, int h, const float *row, uint32_t *slots,
                                   float *counts, uint32_t *fresh, const float *q, const float *k, int n, int lane)
{
    (void)q, (void)k;
    copy_buckets(P, v, t, h, fresh, lane);
    for (int i0 = 0; i0 <= n; i0 += PREFETCH) {
        uint32_t b[PREFETCH][MAX_DEPTH / 32];
        float w[PREFETCH];
#pragma unroll
        for (int j = 0; j < PREFETCH; j++) {
            if (i0 + j > n) break;
            w[j] = row[i0 + j];
#pragma unroll
            for (int x = 0; x < MAX_DEPTH / 32; x++)
                if (lane + 32 * x < P->depth) b[j][x] = slots[(size_t)(i0 + j) * P->depth + lane + 32 * x];
        }
#pragma unroll
        for (int j = 0; j < PREFETCH; j++)
            if (i0 + j <= n) cms_update(P, counts, b[j], w[j], lane);
    }
}

__device__ static double score_cms(const gpu_policy *P, const float *counts, const uint32_t *slot)
{
    float est = FLT_MAX;
#pragma unroll 4
    for (int r = 0; r < P->depth; r++) est = fminf(est, counts[(size_t)r * P->width + slot[r]]);
    return est;
}

#endif
