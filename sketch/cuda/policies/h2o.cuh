/* h2o.cuh — sketch/policies/h2o.c on the device: each retained position's
 * accumulated attention in its slot (added in the host's float order). */
#ifndef AP_SKETCH_CUDA_H2O_CUH
#define AP_SKETCH_CUDA_H2O_CUH

__device__ static void observe_h2o(const gpu_policy *P, const step_view *v, int t, int h, const float *row, uint32_t *slots,
                                   float *counts, uint32_t *fresh, const float *q, const float *k, int n, int lane)
{
    (void)P, (void)v, (void)t, (void)h, (void)counts, (void)q, (void)k;
    for (int i = lane; i < n; i += 32) slots[i] = __float_as_uint(as_float(slots[i]) + row[i]);
    if (lane == 0) fresh[0] = __float_as_uint(row[n]);
}

/* h2o and knorm: the score is the slot's float. */
__device__ static double score_slot(const uint32_t *slot) { return as_float(slot[0]); }

#endif
