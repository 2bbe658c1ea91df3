/* fused_attention.cuh — causal attention of a prefill in one kernel, for the
 * TF32 and bf16 precisions (tensor cores, TF32 inputs). Included once, by
 * cuda_backend.cu.
 *
 * The unfused path writes the scores, reads them back for the softmax,
 * writes the probabilities and reads them again for P·V: four trips of a
 * [H, T, T] array through memory per layer, half of a trace's time at
 * GPT-2-small shapes. Here a block takes 64 queries of one head and walks the
 * keys up to its diagonal twice: first for each row's max and sum (online,
 * as in FlashAttention), then to write the normalised probabilities once and
 * multiply them by V while they are on chip. The scores are computed twice,
 * identically; the probabilities past the diagonal are written as zeros. */
#ifndef AP_FUSED_ATTENTION_CUH
#define AP_FUSED_ATTENTION_CUH

#include <mma.h>

enum { FA_BM = 64, FA_BN = 64, FA_WARPS = 4, FA_SLD = FA_BN + 4 };

/* Dynamic shared memory of fused_attention_kernel<HD>: Q, K and V tiles
 * (rows padded by 4 floats) and each warp's 16 x 64 scores. */
static size_t fused_attention_smem(int hd)
{
    return ((size_t)3 * FA_BM * (hd + 4) + (size_t)FA_WARPS * 16 * FA_SLD) * sizeof(float);
}

/* One block per (query block of 64, head, sequence): sequence z's qkv
 * [T, 3C] at qkv + z * qkv_stride; writes its probs [H, T, T] (every entry of
 * the block's rows) and its att [T, C]'s head columns. Warp w owns query rows
 * 16w..16w+15. The query blocks go longest first (the last has the most
 * keys). */
template <int HD>
__global__ void __launch_bounds__(FA_WARPS * 32)
    fused_attention_kernel(const float *qkv, size_t qkv_stride, float *att, size_t att_stride, float *probs,
                           size_t probs_stride, int T, int C, float scale)
{
#if __CUDA_ARCH__ >= 800
    using namespace nvcuda;
    enum { LD = HD + 4, KSTEPS = HD / 8, OTILES = HD / 16 };
    extern __shared__ __align__(128) float fa_smem[]; /* WMMA needs 32-byte aligned tiles */
    float *Qs = fa_smem, *Ks = Qs + FA_BM * LD, *Vs = Ks + FA_BN * LD;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, h = blockIdx.y;
    float *S = Vs + FA_BN * LD + warp * 16 * FA_SLD; /* this warp's rows */
    const int qb = gridDim.x - 1 - blockIdx.x, q0 = qb * FA_BM, row0 = q0 + warp * 16;
    const size_t ld_in = (size_t)3 * C;
    qkv += blockIdx.z * qkv_stride;
    att += blockIdx.z * att_stride;
    float *P = probs + blockIdx.z * probs_stride + (size_t)h * T * T;
    /* tile[r][d] = qkv[first + r][offset + d], zero past T */
    auto load_tile = [&](float *tile, int first, int offset) {
#pragma unroll
        for (int x = 0; x < 64 * HD / 4 / (FA_WARPS * 32); x++) {
            const int i = threadIdx.x + x * FA_WARPS * 32, r = i / (HD / 4), d = i % (HD / 4) * 4;
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
            if (first + r < T) v = *(const float4 *)(qkv + (size_t)(first + r) * ld_in + offset + d);
            *(float4 *)(tile + r * LD + d) = v;
        }
    };
    load_tile(Qs, q0, h * HD);
    __syncthreads();
    /* this warp's Q fragments, the same for every key block */
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> qf[KSTEPS];
#pragma unroll
    for (int kk = 0; kk < KSTEPS; kk++) {
        wmma::load_matrix_sync(qf[kk], Qs + warp * 16 * LD + kk * 8, LD);
#pragma unroll
        for (int x = 0; x < qf[kk].num_elements; x++) qf[kk].x[x] = wmma::__float_to_tf32(qf[kk].x[x]);
    }
    /* S = Q_w K^T for the key block in Ks (raw scores, 16 x 64) */
    auto scores = [&]() {
#pragma unroll
        for (int j = 0; j < FA_BN / 16; j++) {
            wmma::fragment<wmma::accumulator, 16, 16, 8, float> c;
            wmma::fill_fragment(c, 0.0f);
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> b;
                wmma::load_matrix_sync(b, Ks + j * 16 * LD + kk * 8, LD);
#pragma unroll
                for (int x = 0; x < b.num_elements; x++) b.x[x] = wmma::__float_to_tf32(b.x[x]);
                wmma::mma_sync(c, qf[kk], b, c);
            }
            wmma::store_matrix_sync(S + j * 16, c, FA_SLD, wmma::mem_row_major);
        }
        __syncwarp();
    };
    /* Two lanes per row: lane 2r + half takes row r's columns half * 32 ..
     * + 31, in an order rotated by the lane so that the 32 lanes read 32
     * different banks. */
    const int r = lane / 2, half = lane % 2, qi = row0 + r;
    float *srow = S + r * FA_SLD + half * 32;
    const int n_blocks = qb + 1; /* key blocks up to the diagonal */
    float m = -INFINITY, l = 0.0f;
    /* pass 1: each row's max and sum of exponentials */
    for (int kb = 0; kb < n_blocks; kb++) {
        const int k0 = kb * FA_BN, kfirst = k0 + half * 32;
        __syncthreads();
        load_tile(Ks, k0, C + h * HD);
        __syncthreads();
        scores();
        float mx = -INFINITY;
        for (int i = 0; i < 32; i++) {
            const int c = (i + lane) % 32, key = kfirst + c;
            if (key <= qi && key < T) mx = fmaxf(mx, srow[c] * scale);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        const float m_new = fmaxf(m, mx);
        float sum = 0.0f;
        for (int i = 0; i < 32; i++) {
            const int c = (i + lane) % 32, key = kfirst + c;
            if (key <= qi && key < T) sum += expf(srow[c] * scale - m_new);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l = (m == -INFINITY ? 0.0f : l * expf(m - m_new)) + sum;
        m = m_new;
    }
    /* pass 2: probabilities written once, and multiplied by V on chip */
    const float inv = 1.0f / l;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> o[OTILES];
#pragma unroll
    for (int j = 0; j < OTILES; j++) wmma::fill_fragment(o[j], 0.0f);
    for (int kb = 0; kb < n_blocks; kb++) {
        const int k0 = kb * FA_BN, kfirst = k0 + half * 32;
        __syncthreads();
        load_tile(Ks, k0, C + h * HD);
        load_tile(Vs, k0, 2 * C + h * HD);
        __syncthreads();
        scores();
        for (int i = 0; i < 32; i++) {
            const int c = (i + lane) % 32, key = kfirst + c;
            srow[c] = key <= qi && key < T ? expf(srow[c] * scale - m) * inv : 0.0f;
        }
        __syncwarp();
        /* the warp's 16 rows to memory, each row by coalesced stores */
        for (int rr = 0; rr < 16 && row0 + rr < T; rr++)
            for (int c = lane; c < FA_BN && k0 + c < T; c += 32)
                P[(size_t)(row0 + rr) * T + k0 + c] = S[rr * FA_SLD + c];
#pragma unroll
        for (int kk = 0; kk < FA_BN / 8; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
            wmma::load_matrix_sync(a, S + kk * 8, FA_SLD);
#pragma unroll
            for (int x = 0; x < a.num_elements; x++) a.x[x] = wmma::__float_to_tf32(a.x[x]);
#pragma unroll
            for (int j = 0; j < OTILES; j++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> b;
                wmma::load_matrix_sync(b, Vs + kk * 8 * LD + j * 16, LD);
#pragma unroll
                for (int x = 0; x < b.num_elements; x++) b.x[x] = wmma::__float_to_tf32(b.x[x]);
                wmma::mma_sync(o[j], a, b, o[j]);
            }
        }
        __syncwarp();
    }
    /* the rows' entries past the last key block: zeros */
    const int zero_from = n_blocks * FA_BN;
    for (int rr = 0; rr < 16 && zero_from < T && row0 + rr < T; rr++)
        for (int key = zero_from + lane; key < T; key += 32) P[(size_t)(row0 + rr) * T + key] = 0.0f;
    /* att rows of this warp, through its score tile */
#pragma unroll
    for (int j = 0; j < OTILES; j++) wmma::store_matrix_sync(S + j * 16, o[j], FA_SLD, wmma::mem_row_major);
    __syncwarp();
    for (int i = lane; i < 16 * HD; i += 32) {
        const int rr = i / HD, d = i % HD;
        if (row0 + rr < T) att[(size_t)(row0 + rr) * C + h * HD + d] = S[rr * FA_SLD + d];
    }
#endif
}

#endif
