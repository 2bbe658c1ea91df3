/* kernels.cuh — the CUDA backend's device code: embedding, LayerNorm, bias,
 * GELU and residual passes and the causal softmax (the decode step's
 * attention is in decode_attention.cuh, the fused prefill attention in
 * fused_attention.cuh). Included once, by cuda_backend.cu (one translation
 * unit, so no relocatable device code is needed). */
#ifndef AP_CUDA_KERNELS_CUH
#define AP_CUDA_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>

/* x[row] = wte[ids[row]] + wpe[position]; position pos[row], or row % period
 * when pos is NULL (period-long sequences back to back). */
__global__ void embed_kernel(float *x, const float *wte, const float *wpe, const int *ids,
                             const int *pos, int period, int C)
{
    int row = blockIdx.x;
    const int p = pos ? pos[row] : row % period;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        x[(size_t)row * C + i] = wte[(size_t)ids[row] * C + i] + wpe[(size_t)p * C + i];
}

__device__ float block_sum(float v, float *shared)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float total = 0;
    for (int w = 0; w < (int)(blockDim.x + 31) / 32; w++) total += shared[w];
    return total;
}

__device__ float block_max(float v, float *shared)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x + 31) / 32; w++) m = fmaxf(m, shared[w]);
    return m;
}

/* LayerNorm over rows [gridDim.x, C], one block per row and four values a
 * thread (C % 4 == 0, blockDim.x >= C / 4): out = LayerNorm(x) * w + b,
 * written as fp32 or, when out16 != NULL, only as the bf16 rounding the next
 * product reads. With y != NULL, first the residual add of a projection:
 * x += y + bias (written back), and the LayerNorm of the sum. The row is read
 * once and kept in registers through the two reductions. */
__global__ void layernorm4_kernel(float *x, const float *y, const float *bias, float *out, __nv_bfloat16 *out16,
                                  const float *w, const float *b, int C, float eps)
{
    __shared__ float shared[32];
    const int i = threadIdx.x, C4 = C / 4;
    const size_t at = (size_t)blockIdx.x * C4;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (i < C4) {
        v = ((const float4 *)x)[at + i];
        if (y) {
            const float4 d = ((const float4 *)y)[at + i], c = ((const float4 *)bias)[i];
            v.x += d.x + c.x, v.y += d.y + c.y, v.z += d.z + c.z, v.w += d.w + c.w;
            ((float4 *)x)[at + i] = v;
        }
    }
    const float mean = block_sum(i < C4 ? v.x + v.y + v.z + v.w : 0.0f, shared) / C;
    const float4 d = make_float4(v.x - mean, v.y - mean, v.z - mean, v.w - mean);
    const float var = block_sum(i < C4 ? d.x * d.x + d.y * d.y + d.z * d.z + d.w * d.w : 0.0f, shared) / C;
    const float rstd = rsqrtf(var + eps);
    if (i >= C4) return;
    const float4 g = ((const float4 *)w)[i], o = ((const float4 *)b)[i];
    const float4 r = make_float4(d.x * rstd * g.x + o.x, d.y * rstd * g.y + o.y, d.z * rstd * g.z + o.z,
                                 d.w * rstd * g.w + o.w);
    if (out16) {
        __nv_bfloat162 *dst = (__nv_bfloat162 *)out16 + 2 * (at + i);
        dst[0] = __floats2bfloat162_rn(r.x, r.y);
        dst[1] = __floats2bfloat162_rn(r.z, r.w);
    } else
        ((float4 *)out)[at + i] = r;
}

/* Launch shape of a per-column kernel over rows [n_rows, OC]: the column
 * comes from the grid (no 64-bit remainder per element), rows stride by
 * gridDim.y (at most 65535). */
static dim3 column_grid(int OC, int n_rows) { return dim3((OC + 255) / 256, n_rows < 65535 ? n_rows : 65535); }

/* x[r, :] += bias over rows [n_rows, OC]. */
__global__ void bias_kernel(float *x, const float *bias, int n_rows, int OC)
{
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    for (int r = blockIdx.y; j < OC && r < n_rows; r += gridDim.y) x[(size_t)r * OC + j] += bias[j];
}

/* x = GELU(x + bias) (tanh form, GPT-2's gelu_new) over rows [n_rows, OC], in
 * place or, when out16 != NULL, into the bf16 copy the next product reads. */
__global__ void bias_gelu_kernel(float *x, __nv_bfloat16 *out16, const float *bias, int n_rows, int OC)
{
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    for (int r = blockIdx.y; j < OC && r < n_rows; r += gridDim.y) {
        const size_t i = (size_t)r * OC + j;
        const float v = x[i] + bias[j];
        const float g = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        if (out16) out16[i] = __float2bfloat16(g);
        else x[i] = g;
    }
}

/* The residual add of a projection: x += y + bias. */
__global__ void bias_residual_kernel(float *x, const float *y, const float *bias, size_t n, int OC)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i] + bias[i % OC];
}

__global__ void to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __float2bfloat16(src[i]);
}

/* The same for n4 groups of four (16-byte loads, 8-byte stores: the scalar
 * kernel moves half the bytes per instruction and runs at half bandwidth). */
__global__ void to_bf16x4_kernel(__nv_bfloat162 *dst, const float4 *src, size_t n4)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n4) return;
    const float4 v = src[i];
    dst[2 * i] = __floats2bfloat162_rn(v.x, v.y);
    dst[2 * i + 1] = __floats2bfloat162_rn(v.z, v.w);
}

/* Row r of a batch of sequences, each [H * T rows, T] at scores + seq * seq_stride. */
__device__ float *softmax_row(float *scores, int T, int rows_per_seq, long long seq_stride, int r)
{
    return scores + (size_t)(r / rows_per_seq) * seq_stride + (size_t)(r % rows_per_seq) * T;
}

/* Where the softmax of row `row` stops writing: the end of the row's chunk
 * of `chunk` rows (the score product wrote nothing past it, and the entries
 * there stay zero from the caller), or T when chunk is 0. */
__device__ int softmax_write_end(int row, int T, int chunk)
{
    return chunk && (row / chunk + 1) * chunk < T ? (row / chunk + 1) * chunk : T;
}

/* Causal softmax of the rows in place (scale applied); one block per row.
 * Entries past the diagonal become 0 (up to softmax_write_end). */
__global__ void causal_softmax_kernel(float *scores, int T, int rows_per_seq, long long seq_stride, int chunk,
                                      float scale)
{
    __shared__ float shared[32];
    const int row = blockIdx.x % T;
    float *s = softmax_row(scores, T, rows_per_seq, seq_stride, blockIdx.x);
    float m = -INFINITY;
    for (int j = threadIdx.x; j <= row; j += blockDim.x) m = fmaxf(m, s[j] * scale);
    m = block_max(m, shared);
    float sum = 0;
    for (int j = threadIdx.x; j <= row; j += blockDim.x) {
        float e = expf(s[j] * scale - m);
        s[j] = e;
        sum += e;
    }
    const float inv = 1.0f / block_sum(sum, shared);
    const int end = softmax_write_end(row, T, chunk);
    for (int j = threadIdx.x; j < end; j += blockDim.x) s[j] = j <= row ? s[j] * inv : 0.0f;
}

/* The same softmax with one warp per row, the row held in registers
 * (VPT values per lane, T <= 32 * VPT): each score is read once and each
 * probability written once. Only entries up to the diagonal are read, so the
 * score product may leave the rest unwritten. */
template <int VPT>
__global__ void causal_softmax_warp_kernel(float *scores, int T, int rows_per_seq, long long seq_stride, int n_rows,
                                           int chunk, float scale)
{
    const int r = (int)(((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32), lane = threadIdx.x % 32;
    if (r >= n_rows) return;
    const int row = r % T;
    float *s = softmax_row(scores, T, rows_per_seq, seq_stride, r);
    float v[VPT];
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int j = lane + 32 * i;
        v[i] = j <= row ? s[j] * scale : -INFINITY;
        m = fmaxf(m, v[i]);
    }
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
    float sum = 0;
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        v[i] = lane + 32 * i <= row ? expf(v[i] - m) : 0.0f;
        sum += v[i];
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
    const float inv = 1.0f / sum;
    const int end = softmax_write_end(row, T, chunk);
#pragma unroll
    for (int i = 0; i < VPT; i++)
        if (lane + 32 * i < end) s[lane + 32 * i] = v[i] * inv;
}

/* Pointer tables for cuBLAS's batched products over (sequence, head, chunk
 * of rows): table[(rule * n_chunks + chunk) * B * H + b * H + h] =
 * base + b * per_seq + h * per_head + chunk * per_chunk for each rule. */
typedef struct {
    const float *base;
    long long per_seq, per_head, per_chunk;
} ptr_rule;
enum { PTR_RULES = 5 };
typedef struct {
    ptr_rule r[PTR_RULES];
} ptr_rules;

__global__ void pointer_table_kernel(const float **table, ptr_rules rules, int n_chunks, int B, int H)
{
    const int BH = B * H, i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= PTR_RULES * n_chunks * BH) return;
    const int bh = i % BH, chunk = (i / BH) % n_chunks;
    const ptr_rule r = rules.r[i / (BH * n_chunks)];
    table[i] = r.base + (bh / H) * r.per_seq + (bh % H) * r.per_head + chunk * r.per_chunk;
}

/* dst[H, T, hd] from src rows [T, ld] starting at column offset (head h at offset + h*hd). */
__global__ void split_heads_kernel(float *dst, const float *src, int T, int H, int hd, int ld,
                                   int offset)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t n = (size_t)H * T * hd;
    if (i >= n) return;
    int d = i % hd, t = (i / hd) % T, h = i / ((size_t)hd * T);
    dst[i] = src[(size_t)t * ld + offset + h * hd + d];
}

#endif
