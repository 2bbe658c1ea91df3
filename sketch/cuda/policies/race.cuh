/* race.cuh — sketch/policies/race.c on the device: the key's buckets from
 * the hyperplanes a host instance drew (the one place the device may differ:
 * a projection within rounding of zero, docs/policies.md); race adds the
 * attention in position order, race_kde one unit of query mass; the
 * estimate the rows' mean in double. */
#ifndef AP_SKETCH_CUDA_RACE_CUH
#define AP_SKETCH_CUDA_RACE_CUH

/* x[d..d+3], as one load when x is 16-byte aligned (a trace's vectors
 * need not be: the isolated replay reads them in place). */
__device__ static inline float4 load4(const float *x, int d, bool aligned)
{
    return aligned ? *(const float4 *)(x + d) : make_float4(x[d], x[d + 1], x[d + 2], x[d + 3]);
}

/* x . plane over dim floats (planes 16-byte aligned when dim % 4 == 0). */
template <int DIM>
__device__ static float dot_fixed(const float *plane, const float *x)
{
    const bool aligned = ((uintptr_t)x & 15) == 0;
    float acc[4] = {0, 0, 0, 0};
#pragma unroll
    for (int d = 0; d < DIM; d += 4) { /* every load in flight at once */
        const float4 p4 = *(const float4 *)(plane + d), x4 = load4(x, d, aligned);
        acc[0] += p4.x * x4.x, acc[1] += p4.y * x4.y, acc[2] += p4.z * x4.z, acc[3] += p4.w * x4.w;
    }
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

__device__ static float dot(const float *plane, const float *x, int dim)
{
    if (dim == 64) return dot_fixed<64>(plane, x);
    if (dim == 32) return dot_fixed<32>(plane, x);
    float acc[4] = {0, 0, 0, 0};
    int d = 0;
    const bool aligned = ((uintptr_t)x & 15) == 0;
    if (dim % 4 == 0)
        for (; d < dim; d += 4) {
            const float4 p4 = *(const float4 *)(plane + d), x4 = load4(x, d, aligned);
            acc[0] += p4.x * x4.x, acc[1] += p4.y * x4.y, acc[2] += p4.z * x4.z, acc[3] += p4.w * x4.w;
        }
    for (; d < dim; d++) acc[0] += plane[d] * x[d];
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

/* RACE buckets of x[dim], the warp together: one lane per hyperplane, the
 * signs gathered by ballot (up to 32 * HASH_MASKS hyperplanes, else lane r
 * takes row r's alone); lane r < rows writes row r's bucket. */
enum { HASH_MASKS = 8 };
__device__ static void race_hash(const gpu_policy *P, const float *planes, int dim, const float *x,
                                 uint32_t *buckets, int lane)
{
    const int n_planes = P->rows * P->bits;
    if (n_planes <= 32 * HASH_MASKS) {
        uint32_t masks[HASH_MASKS];
        for (int m = 0; m * 32 < n_planes; m++) {
            const int j = m * 32 + lane;
            masks[m] = __ballot_sync(0xffffffffu, j < n_planes && dot(planes + (size_t)j * dim, x, dim) >= 0);
        }
        for (int r = lane; r < P->rows; r += 32) {
            uint32_t b = 0;
            for (int i = 0; i < P->bits; i++) {
                const int j = r * P->bits + i;
                b |= (masks[j / 32] >> (j % 32) & 1u) << i;
            }
            buckets[r] = b;
        }
        return;
    }
    for (int r = lane; r < P->rows; r += 32) {
        uint32_t b = 0;
        for (int i = 0; i < P->bits; i++)
            b |= (uint32_t)(dot(planes + ((size_t)r * P->bits + i) * dim, x, dim) >= 0) << i;
        buckets[r] = b;
    }
}

__device__ static const float *race_planes(const gpu_policy *P, const step_view *v, int h)
{
    return (const float *)(v->tables + P->table) + (size_t)h * P->rows * P->bits * v->D;
}

/* Key buckets: with the buckets computed ahead (k_buckets: head h's
 * position 0), a retained position's are read by its position; else t's
 * are hashed into its slot, fresh, beside the retained ones'. */
__device__ static void observe_race(const gpu_policy *P, const step_view *v, int t, int h, const float *row, uint32_t *slots,
                                    float *counts, uint32_t *fresh, const float *k, const uint32_t *k_buckets,
                                    const int *kp, int n, int lane)
{
    if (k_buckets) {
        add_in_order(counts, 1 << P->bits, k_buckets, P->rows, row, n, lane, kp, t);
        return;
    }
    race_hash(P, race_planes(P, v, h), v->D, k, fresh, lane);
    __syncwarp();
    add_in_order(counts, 1 << P->bits, slots, P->rows, row, n, lane);
}

/* One unit of query mass in each row at the query's buckets (computed
 * ahead, or hashed into t's slot, which the key's buckets then replace). */
__device__ static void observe_race_kde(const gpu_policy *P, const step_view *v, int t, int h, float *counts,
                                        uint32_t *fresh, const float *q, const float *k, const uint32_t *q_buckets,
                                        const uint32_t *k_buckets, int lane)
{
    if (q_buckets) {
        const uint32_t *qb = q_buckets + (size_t)t * P->rows;
        for (int r = lane; r < P->rows; r += 32) counts[((size_t)r << P->bits) + qb[r]] += 1.0f;
        __syncwarp();
    } else {
        race_hash(P, race_planes(P, v, h), v->D, q, fresh, lane);
        for (int r = lane; r < P->rows; r += 32) counts[((size_t)r << P->bits) + fresh[r]] += 1.0f;
        __syncwarp();
    }
    if (!k_buckets) race_hash(P, race_planes(P, v, h), v->D, k, fresh, lane);
}

/* The rows' counts at the slot's buckets, summed in row order; the buckets
 * four at a time where they are 16-byte aligned (a lane reads its own
 * position's: one 16-byte load, not four 4-byte ones, a sector each). */
__device__ static double score_race(const gpu_policy *P, const float *counts, const uint32_t *slot)
{
    double sum = 0;
    int r = 0;
    if (P->rows % 4 == 0 && ((uintptr_t)slot & 15) == 0)
        for (; r < P->rows; r += 4) {
            const uint4 b = *(const uint4 *)(slot + r);
            sum += counts[((size_t)r << P->bits) + b.x];
            sum += counts[((size_t)(r + 1) << P->bits) + b.y];
            sum += counts[((size_t)(r + 2) << P->bits) + b.z];
            sum += counts[((size_t)(r + 3) << P->bits) + b.w];
        }
#pragma unroll 16
    for (; r < P->rows; r++) sum += counts[((size_t)r << P->bits) + slot[r]];
    return (float)(sum / P->rows);
}

#endif
