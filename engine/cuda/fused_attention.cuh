/* fused_attention.cuh — the prefill's causal attention in one kernel for
 * --precision tf32 and bf16: scores, softmax and the product with V, writing
 * each probability once (and not at all for a layer nobody captures).
 *
 * Why: the unfused path (cuBLAS scores, softmax kernel, cuBLAS P·V) moves
 * every T × T score four times through memory — written, read, written as a
 * probability, read again — which was most of a bf16 trace's time
 * (bench/RESULTS.md). Here a block owns 64 query rows of one (sequence,
 * head), 16 a warp, and walks the keys twice in chunks of 64, as
 * FlashAttention does (Dao, "FlashAttention-2", 2023), except that the
 * probabilities must come out normalised: the first walk finds each row's
 * maximum and sum, the second recomputes the scores, writes the final
 * probabilities and multiplies them with V. Products run on tensor cores in
 * TF32 (the precision of the unfused path's cuBLAS calls) with
 * mma.sync.m16n8k8, whose register layouts are fixed by the PTX ISA, so the
 * softmax works on the scores in registers. Chunks of k and v stream through
 * shared memory two at a time (cp.async). fp32 keeps the unfused, pedantic
 * path: its bound is 1e-5. */
#ifndef AP_CUDA_FUSED_ATTENTION_CUH
#define AP_CUDA_FUSED_ATTENTION_CUH

#include <cuda_pipeline_primitives.h>

enum {
    FA_ROWS = 64,  /* query rows of a block (and rows of zeroed padding the caller keeps after qkv) */
    FA_WARPS = 4,  /* 16 rows each */
    FA_CHUNK = 64  /* keys per step */
};

/* Dynamic shared memory of fused_attention_kernel: two stages of a k and a v chunk. */
__host__ __device__ static inline size_t fa_smem_bytes(int hd) { return (size_t)2 * 2 * FA_CHUNK * hd * sizeof(float); }

/* Shared chunks are [FA_CHUNK][HD] with each row's 16-byte pieces permuted
 * (piece c of row r at c ^ swizzle(r)), so that the fragment loads below hit
 * distinct banks without padding: k's 16 bytes a lane with rows 8n + g, v's
 * 8 bytes a lane with rows 8n + 2t and + 1. */
__device__ static inline int fa_swizzle(int is_v, int r) { return is_v ? 2 * ((r >> 1) & 3) : 4 * (r & 1); }

/* x rounded to TF32 (to nearest, ties away from zero, as cvt.rna.tf32.f32):
 * half a TF32 ulp added to the bits; the tensor cores ignore the 13 bits
 * below TF32's mantissa (they truncate), so masking them is not needed.
 * One integer add where cvt.rna takes four instructions on sm_90
 * (CUTLASS's round_half_ulp_truncate). */
__device__ static inline unsigned fa_tf32(float x) { return __float_as_uint(x) + 0x1000u; }

/* d[16x8] += a[16x8] b[8x8] in TF32 with fp32 accumulation. Lane = 4g + t
 * holds a: (g, t) (g+8, t) (g, t+4) (g+8, t+4); b: (t, g) (t+4, g);
 * d: (g, 2t) (g, 2t+1) (g+8, 2t) (g+8, 2t+1). */
__device__ static inline void fa_mma(float *d, const unsigned *a, unsigned b0, unsigned b1)
{
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Keeps the probabilities of keys key and key + 1 of a row at p[0], p[1],
 * only those at or before the row: past it stay untouched (the next row's
 * first entry may follow). A pair in one store where aligned (T odd makes
 * every other row odd-aligned). */
__device__ static inline void fa_keep_pair(float *p, int key, int row, float a, float b)
{
    if (key + 1 <= row) {
        if (((size_t)p & 7) == 0) *(float2 *)p = make_float2(a, b);
        else p[0] = a, p[1] = b;
    } else if (key <= row)
        p[0] = a;
}

/* A thread's share of a chunk: piece tid % VEC of rows tid / VEC + i * STEP;
 * the rows' swizzle is then the same for every i (STEP is a multiple of 8),
 * so the addresses are one base and constant offsets (computing each
 * piece's address had cost ~23 instructions a 16-byte copy). */
template <int HD> struct fa_share {
    enum { VEC = HD / 4, STEP = FA_WARPS * 32 / VEC, N = FA_CHUNK / STEP };
};

/* Starts copying FA_CHUNK rows of one head's k or v (src: the first, rows
 * row_stride apart) into the swizzled buf. */
template <int HD> __device__ static inline void fa_load_chunk(float *buf, const float *src, size_t row_stride, int is_v)
{
    typedef fa_share<HD> sh;
    const int r = threadIdx.x / sh::VEC, c = threadIdx.x % sh::VEC;
    float *dst = buf + r * HD + 4 * (c ^ fa_swizzle(is_v, r));
    src += (size_t)r * row_stride + 4 * c;
#pragma unroll
    for (int i = 0; i < sh::N; i++) __pipeline_memcpy_async(dst + i * sh::STEP * HD, src + i * sh::STEP * row_stride, 16);
}

/* The pieces this thread copied with fa_load_chunk, rounded to TF32 in place
 * once they arrived: fragments then load ready operands (four warps would
 * otherwise each round every element). */
template <int HD> __device__ static inline void fa_round_chunk(float *buf, int is_v)
{
    typedef fa_share<HD> sh;
    const int r = threadIdx.x / sh::VEC, c = threadIdx.x % sh::VEC;
    float *at = buf + r * HD + 4 * (c ^ fa_swizzle(is_v, r));
#pragma unroll
    for (int i = 0; i < sh::N; i++) {
        float4 *p = (float4 *)(at + i * sh::STEP * HD);
        float4 f = *p;
        f.x = __uint_as_float(fa_tf32(f.x)), f.y = __uint_as_float(fa_tf32(f.y));
        f.z = __uint_as_float(fa_tf32(f.z)), f.w = __uint_as_float(fa_tf32(f.w));
        *p = f;
    }
}

/* 2^x with the hardware's approximation (relative error ~2^-22; -inf gives
 * 0): exp2f adds a denormal path on top, and the scores are in log2 units
 * so that no multiply is needed either. */
__device__ static inline float fa_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

enum { FA_TILES = FA_CHUNK / 8 };

/* s[n] = this thread's scores (log2 units) against keys key0 + 8n + 2t and
 * + 1, rows lo and hi = lo + 8. On the diagonal chunk (DIAG) only the warp's
 * first n_tiles tiles are computed and keys past a row are -inf. The
 * products' k index runs over head dimensions in the order that gives each
 * lane whole 16-byte pieces of a k row: k-step 2i + u takes, for lane t,
 * dimensions 16i + 4t + 2u (as k = t) and + 1 (as k = t + 4); q's
 * fragments are loaded in the same order. */
template <int HD, bool DIAG>
__device__ __forceinline__ void fa_scores(float (&s)[FA_TILES][4], const unsigned (&qa)[HD / 8][4], const float *kc,
                                          int n_tiles, int key0, int row_lo, int g, int t)
{
#pragma unroll
    for (int n = 0; n < FA_TILES; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = DIAG && n >= n_tiles ? -INFINITY : 0.0f;
    /* key 8n + g, piece 4i + t at piece (4i + t) ^ 4 (g & 1): i's lowest
     * bit flips for odd g, so even and odd i have their own base */
    const int flip = 16 * (g & 1);
    const float *k_even = kc + g * HD + 4 * t + flip, *k_odd = kc + g * HD + 4 * t - flip;
    /* the tiles' products side by side: one accumulator's are a chain */
#pragma unroll
    for (int i = 0; i < HD / 16; i++) {
        float4 f[FA_TILES];
#pragma unroll
        for (int n = 0; n < FA_TILES; n++)
            if (!DIAG || n < n_tiles) f[n] = *(const float4 *)((i & 1 ? k_odd : k_even) + 8 * n * HD + 16 * i);
#pragma unroll
        for (int n = 0; n < FA_TILES; n++)
            if (!DIAG || n < n_tiles) fa_mma(s[n], qa[2 * i], __float_as_uint(f[n].x), __float_as_uint(f[n].y));
#pragma unroll
        for (int n = 0; n < FA_TILES; n++)
            if (!DIAG || n < n_tiles) fa_mma(s[n], qa[2 * i + 1], __float_as_uint(f[n].z), __float_as_uint(f[n].w));
    }
    if (DIAG)
#pragma unroll
        for (int n = 0; n < FA_TILES; n++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (key0 + 8 * n + 2 * t + (e & 1) > row_lo + (e < 2 ? 0 : 8)) s[n][e] = -INFINITY;
}

/* The first walk: each row's running maximum m and sum l over this thread's
 * columns. */
__device__ __forceinline__ void fa_observe(const float (&s)[FA_TILES][4], float (&m)[2], float (&l)[2])
{
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float cm = -INFINITY;
#pragma unroll
        for (int n = 0; n < FA_TILES; n++) cm = fmaxf(cm, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
        if (cm == -INFINITY) continue; /* every key masked (the diagonal) */
        const float nm = fmaxf(m[r], cm);
        float add = 0.0f;
#pragma unroll
        for (int n = 0; n < FA_TILES; n++) add += fa_exp2(s[n][2 * r] - nm) + fa_exp2(s[n][2 * r + 1] - nm);
        l[r] = l[r] * fa_exp2(m[r] - nm) + add; /* m = -inf: l is 0 and exp2 gives 0 */
        m[r] = nm;
    }
}

/* The second walk: the final probabilities (m: the row's maximum, l: 1 /
 * its sum) kept at p_lo / p_hi (NULL: not kept; aligned: rows start 8-byte
 * aligned) and multiplied with v. The product is taken transposed, o^T +=
 * v^T p^T, so that the probabilities, as they sit in the scores' registers,
 * are its b operand: keys 2t and 2t+1 of a tile stand for its k = t and
 * t + 4, and v's rows are read in that order. o[dt][r]: output dimensions
 * 16 dt + 2g (m = g) and + 1 (m = g + 8) of rows 2t and 2t+1 of the
 * warp's row group r (lo: rows 0-7, hi: 8-15). */
template <int HD, bool DIAG>
__device__ __forceinline__ void fa_emit(float (&o)[HD / 16][2][4], const float (&s)[FA_TILES][4], const float (&m)[2],
                                        const float (&l)[2], const float *vc, float *p_lo, float *p_hi, int aligned,
                                        int n_tiles, int key0, int row_lo, int g, int t)
{
    /* rows 8n + 2t and + 1 share the swizzle 2t: dimensions 16 dt + 2g, + 1
     * sit in piece (4 dt + g / 2) ^ 2t, where dt's lowest bit flips when
     * t & 2, so even and odd dt have their own base */
    const int swz = fa_swizzle(1, 2 * t), flip = 16 * ((swz >> 2) & 1);
    const float *v_base = vc + 2 * t * HD + 4 * ((g / 2) ^ (swz & 3)) + 2 * (g & 1);
    const float *v_even = v_base + flip, *v_odd = v_base - flip;
#pragma unroll
    for (int n = 0; n < FA_TILES; n++) {
        if (DIAG && n >= n_tiles) continue;
        float p[4];
#pragma unroll
        for (int e = 0; e < 4; e++) p[e] = fa_exp2(s[n][e] - m[e / 2]) * l[e / 2];
        const int col = 8 * n + 2 * t;
        if (DIAG) {
            if (p_lo) fa_keep_pair(p_lo + col, key0 + col, row_lo, p[0], p[1]);
            if (p_hi) fa_keep_pair(p_hi + col, key0 + col, row_lo + 8, p[2], p[3]);
        } else if (aligned) {
            if (p_lo) *(float2 *)(p_lo + col) = make_float2(p[0], p[1]);
            if (p_hi) *(float2 *)(p_hi + col) = make_float2(p[2], p[3]);
        } else {
            if (p_lo) p_lo[col] = p[0], p_lo[col + 1] = p[1];
            if (p_hi) p_hi[col] = p[2], p_hi[col + 1] = p[3];
        }
        const unsigned pb_lo0 = fa_tf32(p[0]), pb_lo1 = fa_tf32(p[1]), pb_hi0 = fa_tf32(p[2]), pb_hi1 = fa_tf32(p[3]);
#pragma unroll
        for (int dt = 0; dt < HD / 16; dt++) {
            const float *v0 = (dt & 1 ? v_odd : v_even) + 8 * n * HD + 16 * dt, *v1 = v0 + HD;
            const float2 a01 = *(const float2 *)v0, a23 = *(const float2 *)v1;
            const unsigned va[4] = {__float_as_uint(a01.x), __float_as_uint(a01.y), __float_as_uint(a23.x),
                                    __float_as_uint(a23.y)};
            fa_mma(o[dt][0], va, pb_lo0, pb_lo1);
            fa_mma(o[dt][1], va, pb_hi0, pb_hi1);
        }
    }
}

/* qkv: rows [B * T (+ FA_ROWS of zeroed padding), 3C], head h's q, k, v at
 * columns h*HD, C + h*HD, 2C + h*HD. att[B * T, C] receives each head's
 * output. probs (or NULL: not kept) receives sequence b's [H, T, T] at
 * probs + b * probs_stride; entries past the diagonal are not written (the
 * caller keeps them zero). Grid (ceil(T / 64), H, B), FA_WARPS warps. */
template <int HD>
__global__ void __launch_bounds__(FA_WARPS * 32, 3) /* three blocks an SM */
    fused_attention_kernel(const float *qkv, float *att, float *probs, long long probs_stride, int T, int H, int C,
                           float scale)
{
    extern __shared__ __align__(128) float fa_smem[];
    enum { LDB = HD, KSTEPS = HD / 8 };
    const int n_blocks = gridDim.x, rb = n_blocks - 1 - blockIdx.x; /* longest rows first */
    const int h = blockIdx.y, b = blockIdx.z, r0 = rb * FA_ROWS, n_chunks = rb + 1;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int row_lo = r0 + 16 * warp + g, row_hi = row_lo + 8; /* this thread's two rows */
    const size_t row_stride = (size_t)3 * C;
    const float *k = qkv + (size_t)b * T * row_stride + C + (size_t)h * HD, *v = k + C;

    /* q's fragments, scaled so that scores come in log2 units: exp2(s - m)
     * below is exp(q.k / sqrt(hd) - max) */
    unsigned qa[KSTEPS][4];
    {
        const float scale_log2 = scale * 1.4426950408889634f;
        const float *q_lo = qkv + ((size_t)b * T + row_lo) * row_stride + (size_t)h * HD, *q_hi = q_lo + 8 * row_stride;
#pragma unroll
        for (int i = 0; i < HD / 16; i++) { /* k-steps 2i, 2i + 1: see fa_scores */
            const float4 lo = *(const float4 *)(q_lo + 16 * i + 4 * t), hi = *(const float4 *)(q_hi + 16 * i + 4 * t);
            qa[2 * i][0] = fa_tf32(lo.x * scale_log2), qa[2 * i][1] = fa_tf32(hi.x * scale_log2);
            qa[2 * i][2] = fa_tf32(lo.y * scale_log2), qa[2 * i][3] = fa_tf32(hi.y * scale_log2);
            qa[2 * i + 1][0] = fa_tf32(lo.z * scale_log2), qa[2 * i + 1][1] = fa_tf32(hi.z * scale_log2);
            qa[2 * i + 1][2] = fa_tf32(lo.w * scale_log2), qa[2 * i + 1][3] = fa_tf32(hi.w * scale_log2);
        }
    }
    float o[HD / 16][2][4];
#pragma unroll
    for (int dt = 0; dt < HD / 16; dt++)
#pragma unroll
        for (int r = 0; r < 2; r++) o[dt][r][0] = o[dt][r][1] = o[dt][r][2] = o[dt][r][3] = 0.0f;
    /* per row (lo, hi): the running maximum and sum over this thread's
     * columns; after the first walk the row's maximum and 1 / sum */
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float *p_lo = probs && row_lo < T ? probs + b * probs_stride + ((size_t)h * T + row_lo) * T : NULL;
    float *p_hi = probs && row_hi < T ? probs + b * probs_stride + ((size_t)h * T + row_hi) * T : NULL;
    const int aligned = (((size_t)p_lo | (size_t)p_hi) & 7) == 0;

    /* stage i at fa_smem + i * 2 * FA_CHUNK * LDB: [k chunk | v chunk]; as
     * offsets from fa_smem so the accesses stay shared-memory loads */
#define FA_STAGE(i) (fa_smem + ((i) & 1) * 2 * FA_CHUNK * LDB)
    /* job j < n_chunks: the first walk over key chunk j; then the second over
     * chunk j - n_chunks, which needs its values too */
    const int n_jobs = 2 * n_chunks;
    fa_load_chunk<HD>(FA_STAGE(0), k, row_stride, 0);
    __pipeline_commit();
    for (int j = 0; j < n_jobs; j++) {
        const int second = j >= n_chunks, c = second ? j - n_chunks : j;
        if (j + 1 < n_jobs) {
            const int nc = j + 1 >= n_chunks ? j + 1 - n_chunks : j + 1;
            fa_load_chunk<HD>(FA_STAGE(j + 1), k + (size_t)nc * FA_CHUNK * row_stride, row_stride, 0);
            if (j + 1 >= n_chunks)
                fa_load_chunk<HD>(FA_STAGE(j + 1) + FA_CHUNK * LDB, v + (size_t)nc * FA_CHUNK * row_stride,
                                  row_stride, 1);
        }
        __pipeline_commit();
        __pipeline_wait_prior(1);
        fa_round_chunk<HD>(FA_STAGE(j), 0);
        if (second) fa_round_chunk<HD>(FA_STAGE(j) + FA_CHUNK * LDB, 1);
        __syncthreads();
        const float *kc = FA_STAGE(j), *vc = kc + FA_CHUNK * LDB;
        const int key0 = c * FA_CHUNK, diag = c == n_chunks - 1;
        const int n_tiles = diag ? 2 * warp + 2 : FA_TILES; /* 8-key tiles the warp's rows see */
        float s[FA_TILES][4];
        if (diag) fa_scores<HD, true>(s, qa, kc, n_tiles, key0, row_lo, g, t);
        else fa_scores<HD, false>(s, qa, kc, n_tiles, key0, row_lo, g, t);
        if (!second) {
            fa_observe(s, m, l);
            if (diag) /* the four threads of a row into its maximum and 1 / sum */
#pragma unroll
                for (int r = 0; r < 2; r++) {
#pragma unroll
                    for (int x = 1; x <= 2; x <<= 1) {
                        const float om = __shfl_xor_sync(0xffffffff, m[r], x), ol = __shfl_xor_sync(0xffffffff, l[r], x);
                        const float nm = fmaxf(m[r], om);
                        /* a thread may have seen no key of the row (-inf - -inf is NaN) */
                        l[r] = (m[r] == -INFINITY ? 0.0f : l[r] * fa_exp2(m[r] - nm)) +
                               (om == -INFINITY ? 0.0f : ol * fa_exp2(om - nm));
                        m[r] = nm;
                    }
                    l[r] = 1.0f / l[r];
                }
        } else if (diag)
            fa_emit<HD, true>(o, s, m, l, vc, p_lo ? p_lo + key0 : NULL, p_hi ? p_hi + key0 : NULL, aligned, n_tiles,
                              key0, row_lo, g, t);
        else
            fa_emit<HD, false>(o, s, m, l, vc, p_lo ? p_lo + key0 : NULL, p_hi ? p_hi + key0 : NULL, aligned,
                               n_tiles, key0, row_lo, g, t);
        __syncthreads(); /* FA_STAGE(j) is loaded next */
    }
#undef FA_STAGE
    /* o[dt][r]: rows 2t and 2t+1 of row group r, dimensions 16 dt + 2g and + 1 (fa_emit) */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = r0 + 16 * warp + 8 * r + 2 * t;
        float *out = att + ((size_t)b * T + row) * C + (size_t)h * HD + 2 * g;
#pragma unroll
        for (int dt = 0; dt < HD / 16; dt++) {
            if (row < T) *(float2 *)(out + 16 * dt) = make_float2(o[dt][r][0], o[dt][r][2]);
            if (row + 1 < T) *(float2 *)(out + C + 16 * dt) = make_float2(o[dt][r][1], o[dt][r][3]);
        }
    }
}

#endif
