/* kernels.cuh — the CUDA backend's device code: embedding, LayerNorm, bias,
 * GELU and residual passes, the causal softmax, and the decode step's
 * attention over retained positions. Included once, by cuda_backend.cu (one
 * translation unit, so no relocatable device code is needed). */
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

/* out[N,C] = LayerNorm(x) * w + b; one block per row. Writes out (fp32) or,
 * when out16 != NULL, only the bf16 rounding the next product reads. */
__global__ void layernorm_kernel(float *out, __nv_bfloat16 *out16, const float *x, const float *w,
                                 const float *b, int C, float eps)
{
    __shared__ float shared[32];
    const float *xr = x + (size_t)blockIdx.x * C;
    float s = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += xr[i];
    const float mean = block_sum(s, shared) / C;
    float v = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) v += (xr[i] - mean) * (xr[i] - mean);
    const float rstd = rsqrtf(block_sum(v, shared) / C + eps);
    const size_t at = (size_t)blockIdx.x * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        const float y = (xr[i] - mean) * rstd * w[i] + b[i];
        if (out16) out16[at + i] = __float2bfloat16(y);
        else out[at + i] = y;
    }
}

__global__ void bias_kernel(float *x, const float *bias, size_t n, int OC)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += bias[i % OC];
}

/* x = GELU(x + bias) (tanh form, GPT-2's gelu_new), in place or, when out16 !=
 * NULL, into the bf16 copy the next product reads. */
__global__ void bias_gelu_kernel(float *x, __nv_bfloat16 *out16, const float *bias, size_t n, int OC)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float v = x[i] + bias[i % OC];
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

/* Causal softmax of scores[H][T][T] rows in place (scale applied); one block
 * per (head, row). Entries past the diagonal become 0. */
__global__ void causal_softmax_kernel(float *scores, int T, float scale)
{
    __shared__ float shared[32];
    const int row = blockIdx.x % T;
    float *s = scores + (size_t)blockIdx.x * T;
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
    for (int j = threadIdx.x; j < T; j += blockDim.x) s[j] = j <= row ? s[j] * inv : 0.0f;
}

/* The same softmax with one warp per row, the row held in registers
 * (VPT values per lane, T <= 32 * VPT): each score is read once and each
 * probability written once. Only entries up to the diagonal are read, so the
 * score product may leave the rest unwritten. */
template <int VPT>
__global__ void causal_softmax_warp_kernel(float *scores, int T, int n_rows, float scale)
{
    const int r = (int)(((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32), lane = threadIdx.x % 32;
    if (r >= n_rows) return;
    const int row = r % T;
    float *s = scores + (size_t)r * T;
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
#pragma unroll
    for (int i = 0; i < VPT; i++)
        if (lane + 32 * i < T) s[lane + 32 * i] = v[i] * inv;
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

/* One decode step's attention of layer `layer` for (stream, head) =
 * blockIdx.x: q from qkv [S, 3C]; keys/values of the kept positions and t
 * from the stream's cache. Tables are layer-major: list i = (layer * S + s) *
 * H + h holds n_kept[i] kept positions at positions + pos_off[i]. Writes
 * att[s, h*hd..] and, when compact != NULL, the row's probabilities in list
 * order (kept..., t) at compact + pos_off[i] + i. */
__global__ void decode_attention_kernel(float *att, float *compact, const float *qkv,
                                        float *const *k_cache, float *const *v_cache,
                                        const int *t_of, const int *max_len_of, const int *list_base,
                                        const int *pos_off, const int *n_kept, const int *positions,
                                        int S, int H, int hd, int C, int layer)
{
    extern __shared__ float sm[]; /* scores[longest + 1] then reduction scratch[32] */
    const int s = blockIdx.x / H, h = blockIdx.x % H, t = t_of[s], max_len = max_len_of[s];
    /* lists layer-major with rows after each list's n + 1 entries (host
     * tables), or the caller's stream-major lists (list_base) */
    const int list = list_base ? list_base[s] + layer * H + h : (layer * S + s) * H + h;
    const int row_at = list_base ? pos_off[list] : pos_off[list] + list;
    const int n = n_kept[list] + 1; /* kept + t */
    const int *pos = positions + pos_off[list];
    float *scores = sm, *scratch = sm + max_len + 1;
    const float *q = qkv + (size_t)s * 3 * C + h * hd;
    const float *K = k_cache[s] + ((size_t)layer * H + h) * max_len * hd;
    const float *V = v_cache[s] + ((size_t)layer * H + h) * max_len * hd;
    const float scale = rsqrtf((float)hd);
    /* one warp per kept position: its lanes read the key row together */
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    for (int i = warp; i < n; i += n_warps) {
        const float *kp = K + (size_t)(i < n - 1 ? pos[i] : t) * hd;
        float dot = 0;
        for (int d = lane; d < hd; d += 32) dot += q[d] * kp[d];
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffff, dot, o);
        if (lane == 0) scores[i] = dot * scale;
    }
    __syncthreads();
    float m = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, scores[i]);
    m = block_max(m, scratch);
    float sum = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        scores[i] = expf(scores[i] - m);
        sum += scores[i];
    }
    const float inv = 1.0f / block_sum(sum, scratch);
    for (int i = threadIdx.x; i < n; i += blockDim.x) scores[i] *= inv;
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0;
        for (int i = 0; i < n; i++) o += scores[i] * V[(size_t)(i < n - 1 ? pos[i] : t) * hd + d];
        att[(size_t)s * C + h * hd + d] = o;
    }
    if (compact)
        for (int i = threadIdx.x; i < n; i += blockDim.x) compact[row_at + i] = scores[i];
}

/* Appends the new k, v of each stream (from qkv [S, 3C]) to its cache. */
__global__ void kv_append_kernel(float *const *k_cache, float *const *v_cache, const float *qkv,
                                 const int *t_of, const int *max_len_of, int H, int hd, int C,
                                 int layer)
{
    const int s = blockIdx.x, t = t_of[s], max_len = max_len_of[s];
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        const int h = i / hd, d = i % hd;
        const size_t at = (((size_t)layer * H + h) * max_len + t) * hd + d;
        k_cache[s][at] = qkv[(size_t)s * 3 * C + C + i];
        v_cache[s][at] = qkv[(size_t)s * 3 * C + 2 * C + i];
    }
}

#endif
