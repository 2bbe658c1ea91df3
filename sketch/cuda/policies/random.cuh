/* random.cuh — sketch/policies/random.c on the device: GSL's mt19937, its
 * state copied from a host instance, advanced a warp at a time so that each
 * evictable position gets the draw the host's would. */
#ifndef AP_SKETCH_CUDA_RANDOM_CUH
#define AP_SKETCH_CUDA_RANDOM_CUH

/* GSL's mt19937 (gsl_rng_uniform), a warp at a time. The state's words are
 * rewritten in the host's order 32 at a time: word kk reads kk + 1 (not yet
 * rewritten) and kk + M (likewise) below N - M, kk + M - N (rewritten, in an
 * earlier batch: N - M = 227 > 32) above. */
__device__ static void mt_twist(uint32_t *mt, int lane)
{
    for (int k0 = 0; k0 < MT_N - 1; k0 += 32) {
        const int kk = k0 + lane;
        uint32_t next = 0;
        if (kk < MT_N - 1) {
            const uint32_t y = (mt[kk] & 0x80000000u) | (mt[kk + 1] & 0x7fffffffu);
            next = mt[kk < MT_N - MT_M ? kk + MT_M : kk + MT_M - MT_N] ^ (y >> 1) ^ (y & 1 ? 0x9908b0dfu : 0u);
        }
        __syncwarp();
        if (kk < MT_N - 1) mt[kk] = next;
        __syncwarp();
    }
    if (lane == 0) {
        const uint32_t y = (mt[MT_N - 1] & 0x80000000u) | (mt[0] & 0x7fffffffu);
        mt[MT_N - 1] = mt[MT_M - 1] ^ (y >> 1) ^ (y & 1 ? 0x9908b0dfu : 0u);
    }
    __syncwarp();
}

__device__ static inline double mt_uniform(uint32_t k)
{
    k ^= k >> 11;
    k ^= (k << 7) & 0x9d2c5680u;
    k ^= (k << 15) & 0xefc60000u;
    k ^= k >> 18;
    return k / 4294967296.0;
}

/* score[i] += the next draw of generator mt for each evictable position i
 * in order, as one mt19937 draw after the other: a position's draw is the
 * state word at the generator's index plus its rank among the evictable
 * positions, past the end of the state from the next state. */
__device__ static void draw_evictable(const gpu_policy *P, uint32_t *mt, double *score, const int *kp, int n, int t,
                                      int lane)
{
    const int index = (int)mt[MT_N], left = MT_N - index; /* draws the state has left */
    int total = 0;
    for (int pass = 0; pass < 2; pass++) {
        int rank = 0;
        for (int i0 = 0; i0 < n; i0 += 32) {
            const int i = i0 + lane, e = i < n && evictable(P, kp[i], t);
            const unsigned mask = __ballot_sync(0xffffffffu, e);
            const int r = rank + __popc(mask & ((1u << lane) - 1));
            if (e && pass == 0 && r < left) score[i] += mt_uniform(mt[index + r]);
            if (e && pass == 1 && r >= left) score[i] += mt_uniform(mt[r - left]);
            rank += __popc(mask);
        }
        total = rank;
        if (pass == 1 || total <= left) break;
        __syncwarp();
        mt_twist(mt, lane);
    }
    __syncwarp();
    if (lane == 0) mt[MT_N] = total <= left ? index + total : total - left;
    __syncwarp();
}

#endif
