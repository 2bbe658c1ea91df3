/* count_sketch.cuh — sketch/policies/count_sketch.c on the device: signed
 * updates in position order (add_in_order), the median of the rows as the
 * host's stable insertion sort places it. */
#ifndef AP_SKETCH_CUDA_COUNT_SKETCH_CUH
#define AP_SKETCH_CUDA_COUNT_SKETCH_CUH

__device__ static void observe_count_sketch(const gpu_policy *P, const step_view *v, int t, int h, const float *row, uint32_t *slots,
                                            float *counts, uint32_t *fresh, const float *q, const float *k, int n, int lane)
{
    (void)q, (void)k;
    copy_buckets(P, v, t, h, fresh, lane);
    add_in_order(counts, P->width, slots, P->depth, row, n, lane);
}

/* The median of a Count Sketch estimate of depth d <= CS_SMALL in registers:
 * value r lands where the host's (stable) insertion sort puts it, at the
 * number of smaller values plus the equal ones before it, so the middle
 * values are the host's. */
enum { CS_SMALL = 8 };
__device__ static float cs_median_small(const float *counts, int width, const uint32_t *slot, int d)
{
    float x[CS_SMALL];
#pragma unroll
    for (int r = 0; r < CS_SMALL; r++)
        if (r < d) {
            const float c = counts[(size_t)r * width + (slot[r] & ~CS_NEG)];
            x[r] = slot[r] & CS_NEG ? -c : c;
        }
    float lo = 0, hi = 0; /* sorted values d/2 - 1 and d/2 */
#pragma unroll
    for (int r = 0; r < CS_SMALL; r++) {
        if (r >= d) break;
        int rank = 0;
#pragma unroll
        for (int j = 0; j < CS_SMALL; j++)
            if (j < d) rank += x[j] < x[r] || (x[j] == x[r] && j < r);
        if (rank == d / 2 - 1) lo = x[r];
        if (rank == d / 2) hi = x[r];
    }
    return d % 2 ? hi : 0.5f * (lo + hi);
}

__device__ static double score_count_sketch(const gpu_policy *P, const float *counts, const uint32_t *slot)
{
    if (P->depth <= CS_SMALL) return cs_median_small(counts, P->width, slot, P->depth);
    float s[MAX_DEPTH];
    for (int r = 0; r < P->depth; r++) {
        const float c = counts[(size_t)r * P->width + (slot[r] & ~CS_NEG)];
        const float x = slot[r] & CS_NEG ? -c : c;
        int j = r;
        while (j > 0 && s[j - 1] > x) {
            s[j] = s[j - 1];
            j--;
        }
        s[j] = x;
    }
    const int d = P->depth;
    return d % 2 ? s[d / 2] : 0.5f * (s[d / 2 - 1] + s[d / 2]);
}

#endif
