/* knorm.cuh — sketch/policies/knorm.c on the device: the key's negated L2
 * norm, summed in channel order in double (squares of floats are exact
 * there, so the sum is the host's), in the new position's slot. */
#ifndef AP_SKETCH_CUDA_KNORM_CUH
#define AP_SKETCH_CUDA_KNORM_CUH

__device__ static void observe_knorm(const gpu_policy *P, const step_view *v, int t, int h, const float *row, uint32_t *slots,
                                     float *counts, uint32_t *fresh, const float *q, const float *k, int n, int lane)
{
    (void)P, (void)t, (void)h, (void)row, (void)slots, (void)counts, (void)q, (void)n;
    if (lane == 0) {
        double sq = 0;
        for (int d = 0; d < v->D; d++) sq += (double)k[d] * k[d];
        fresh[0] = __float_as_uint((float)-sqrt(sq));
    }
}

#endif
