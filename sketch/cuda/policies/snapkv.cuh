/* snapkv.cuh — sketch/policies/snapkv.c on the device: each position's ring
 * of the last `window` attentions (entry t % window is query t's); the
 * eviction pools the window sums of each head's retained neighbours
 * (observe_kernel keeps the sums in the head's list's scratch). */
#ifndef AP_SKETCH_CUDA_SNAPKV_CUH
#define AP_SKETCH_CUDA_SNAPKV_CUH

__device__ static void observe_snapkv(const gpu_policy *P, const step_view *v, int t, int h, const float *row, uint32_t *slots,
                                      float *counts, uint32_t *fresh, const float *q, const float *k, int n, int lane)
{
    (void)v, (void)h, (void)counts, (void)q, (void)k;
    const int at = t % P->window;
    for (int i = lane; i < n; i += 32) slots[(size_t)i * P->words + at] = __float_as_uint(row[i]);
    for (int j = lane; j < P->window; j += 32) fresh[j] = __float_as_uint(j == at ? row[n] : 0.0f);
}

/* snapkv: a position's window sum, its ring's entries in order in double (the host's). */
__device__ static double window_sum(const gpu_policy *P, const uint32_t *slots, int i)
{
    double a = 0;
    for (int j = 0; j < P->window; j++) a += as_float(slots[(size_t)i * P->words + j]);
    return a;
}

/* snapkv: position i's pooled score from the window sums sums[0..n) of its
 * retained neighbours, as the host pools them (zero padding; avg: divided by
 * the kernel). */
__device__ static double pooled(const gpu_policy *P, const double *sums, int i, int n)
{
    const int half = P->kernel / 2;
    double s = P->max_pool ? sums[i] : 0;
    for (int x = i - half; x <= i + half; x++) {
        if (x < 0 || x >= n) continue;
        if (P->max_pool) s = sums[x] > s ? sums[x] : s;
        else s += sums[x];
    }
    return P->max_pool ? s : s / P->kernel;
}

#endif
