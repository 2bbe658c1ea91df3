/* decode_attention.cuh — the decode step's attention over retained positions:
 * each stream attends from t to the positions its lists keep (keys and
 * values gathered from its cache) and to t itself. Also the q/k/v kernel that
 * appends t to the caches. Included by cuda_backend.cu after kernels.cuh
 * (block_max, block_sum).
 *
 * A list holds n entries: n - 1 kept positions, then t. One block works on
 * (stream, head, chunk of up to DECODE_CHUNK kept positions; t goes with the
 * last chunk). A list of one chunk is finished in place; longer lists leave
 * each chunk's max, sum and unnormalised output to decode_combine_kernel (as
 * in flash-decoding): a stream that keeps everything (the `full` policy, a
 * thousand positions) would otherwise keep one block busy long after the
 * others. */
#ifndef AP_CUDA_DECODE_ATTENTION_CUH
#define AP_CUDA_DECODE_ATTENTION_CUH

enum { DECODE_THREADS = 256, DECODE_CHUNK = 256 };
/* Shared memory slots for a chunk's scores and positions (t included),
 * rounded to 16 bytes so that what follows can be read as float4. */
enum { DECODE_SLOT = DECODE_CHUNK + 4 };
/* Loads a lane keeps in flight in decode_attention_vec_kernel. */
enum { DECODE_GROUP = 8 };

/* What the decode attention reads and writes (passed by value). q from qkv
 * [S, 3C] (t's k and v after it); keys and values from each stream's cache
 * [L, H, max_len, hd]; lists layer-major with rows after each list's n
 * entries (host tables), or the caller's, stream-major (list_base). Writes
 * att[s, h*hd..] and, when compact != NULL, each row's probabilities in list
 * order; split lists write partials to part_ml [S*H, chunks, 2] and part_o
 * [S*H, chunks, hd] first. */
typedef struct {
    float *att, *compact, *part_ml, *part_o;
    const float *qkv;
    float *const *k_cache, *const *v_cache;
    const int *t_of, *max_len_of, *list_base, *pos_off, *n_kept, *positions;
    int S, H, hd, C, layer, chunks;
} decode_view;

static size_t decode_attention_smem(int hd)
{
    return (2 * (size_t)DECODE_SLOT + 32 + (size_t)hd * (1 + DECODE_THREADS / 32)) * sizeof(float);
}

/* Chunks (blocks) of a list of n entries; with n = a stream's capacity, the
 * most any of its lists takes. */
__host__ __device__ static inline int decode_chunks(int n)
{
    return n - 1 > DECODE_CHUNK ? (n - 1 + DECODE_CHUNK - 1) / DECODE_CHUNK : 1;
}

/* List of (stream s, head h) at the view's layer, and where its row starts:
 * layer-major host tables (rows after each list's entries) or the caller's
 * stream-major lists. */
__device__ static inline int decode_list(const decode_view *v, int s, int h, int *row_at)
{
    const int list = v->list_base ? v->list_base[s] + v->layer * v->H + h : (v->layer * v->S + s) * v->H + h;
    *row_at = v->list_base ? v->pos_off[list] : v->pos_off[list] + list;
    return list;
}

/* One block's share of its list. */
typedef struct {
    int s, h, t, row_at; /* stream, head, position; where the list's row starts */
    int n, split;        /* entries of the whole list; 1 when it takes several chunks */
    const int *kept;     /* this chunk's kept positions (its first one at `begin`) */
    int begin, m_kept;   /* chunk entries [begin, begin + m_kept) are kept positions */
    int has_t;           /* 1 for the last chunk: t follows, at begin + m_kept = n - 1 */
    const float *K, *V;  /* this (layer, head)'s cache */
} decode_share;

/* 0 when the block has nothing to do (its list is shorter than its chunk). */
__device__ static int decode_share_of(const decode_view *v, decode_share *d)
{
    d->s = blockIdx.x / v->H, d->h = blockIdx.x % v->H, d->t = v->t_of[d->s];
    const int list = decode_list(v, d->s, d->h, &d->row_at);
    d->n = v->n_kept[list] + 1;
    const int chunks = decode_chunks(d->n);
    if ((int)blockIdx.y >= chunks) return 0;
    d->split = chunks > 1;
    d->begin = blockIdx.y * DECODE_CHUNK;
    d->m_kept = min(d->n - 1, d->begin + DECODE_CHUNK) - d->begin;
    d->has_t = (int)blockIdx.y == chunks - 1;
    d->kept = v->positions + v->pos_off[list] + d->begin;
    const size_t head = ((size_t)v->layer * v->H + d->h) * v->max_len_of[d->s] * v->hd;
    d->K = v->k_cache[d->s] + head;
    d->V = v->v_cache[d->s] + head;
    return 1;
}

/* scores[0..m) -> exp(score - max), normalised unless the list is split;
 * returns the max and sum for the chunk's partials. */
__device__ static void decode_softmax(float *scores, int m, int split, float *scratch, float *mx_out, float *sum_out)
{
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < m; i += blockDim.x) mx = fmaxf(mx, scores[i]);
    mx = block_max(mx, scratch);
    float sum = 0;
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        scores[i] = expf(scores[i] - mx);
        sum += scores[i];
    }
    sum = block_sum(sum, scratch);
    if (!split) {
        const float inv = 1.0f / sum;
        for (int i = threadIdx.x; i < m; i += blockDim.x) scores[i] *= inv;
    }
    *mx_out = mx, *sum_out = sum;
    __syncthreads();
}

/* The block's output: part[warps][hd] summed over the warps, written to att
 * or, for a split list, with the max and sum to the partials; then the row. */
__device__ static void decode_finish(const decode_view *v, const decode_share *d, const float *part,
                                     const float *scores, float mx, float sum)
{
    const int n_warps = blockDim.x / 32, m = d->m_kept + d->has_t;
    const size_t at = (size_t)blockIdx.x * v->chunks + blockIdx.y;
    for (int x = threadIdx.x; x < v->hd; x += blockDim.x) {
        float o = 0;
        for (int w = 0; w < n_warps; w++) o += part[w * v->hd + x];
        if (d->split) v->part_o[at * v->hd + x] = o;
        else v->att[(size_t)d->s * v->C + d->h * v->hd + x] = o;
    }
    if (d->split && threadIdx.x == 0) v->part_ml[2 * at] = mx, v->part_ml[2 * at + 1] = sum;
    if (v->compact)
        for (int i = threadIdx.x; i < m; i += blockDim.x) v->compact[d->row_at + d->begin + i] = scores[i];
}

/* Any head size: a thread per key (its loads independent and in flight
 * together), then a warp per share of the values, a lane per pair of
 * dimensions. */
__global__ void decode_attention_kernel(decode_view v)
{
    extern __shared__ float sm[]; /* scores[SLOT] pos[SLOT] scratch[32] q[hd] part[warps*hd] */
    decode_share d;
    if (!decode_share_of(&v, &d)) return;
    const int hd = v.hd, m = d.m_kept + d.has_t;
    float *scores = sm;
    int *where = (int *)(sm + DECODE_SLOT);
    float *scratch = sm + 2 * DECODE_SLOT, *qs = scratch + 32, *part = qs + hd;
    const float *q = v.qkv + (size_t)d.s * 3 * v.C + d.h * hd;
    const float scale = rsqrtf((float)hd);
    for (int i = threadIdx.x; i < m; i += blockDim.x) where[i] = i < d.m_kept ? d.kept[i] : d.t;
    for (int x = threadIdx.x; x < hd; x += blockDim.x) qs[x] = q[x];
    __syncthreads();
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        const float *kp = d.K + (size_t)where[i] * hd;
        float acc[4] = {0, 0, 0, 0};
        int x = 0;
        if (hd % 4 == 0)
            for (; x < hd; x += 4) {
                const float4 k4 = *(const float4 *)(kp + x);
                acc[0] += qs[x] * k4.x, acc[1] += qs[x + 1] * k4.y;
                acc[2] += qs[x + 2] * k4.z, acc[3] += qs[x + 3] * k4.w;
            }
        for (; x < hd; x++) acc[0] += qs[x] * kp[x];
        scores[i] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) * scale;
    }
    __syncthreads();
    float mx, sum;
    decode_softmax(scores, m, d.split, scratch, &mx, &sum);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    if (hd % 2 == 0)
        for (int x = 2 * lane; x < hd; x += 64) {
            float2 o = {0, 0};
#pragma unroll 8
            for (int i = warp; i < m; i += n_warps) {
                const float2 v2 = *(const float2 *)(d.V + (size_t)where[i] * hd + x);
                o.x += scores[i] * v2.x, o.y += scores[i] * v2.y;
            }
            part[warp * hd + x] = o.x, part[warp * hd + x + 1] = o.y;
        }
    else
        for (int x = lane; x < hd; x += 32) {
            float o = 0;
#pragma unroll 8
            for (int i = warp; i < m; i += n_warps) o += scores[i] * d.V[(size_t)where[i] * hd + x];
            part[warp * hd + x] = o;
        }
    __syncthreads();
    decode_finish(&v, &d, part, scores, mx, sum);
}

/* Rows r of the chunk's kept positions, r = g + j * stride + first for j <
 * DECODE_GROUP: this lane's float4 (`sub`) of each, zeros past m_kept. */
template <int HD>
__device__ static inline void decode_load_group(float4 *dst, const float *base, const int *where, int g, int stride,
                                                int first, int m_kept, int sub)
{
#pragma unroll
    for (int j = 0; j < DECODE_GROUP; j++) {
        const int i = g + j * stride + first;
        dst[j] = i < m_kept ? ((const float4 *)(base + (size_t)where[i] * HD))[sub] : make_float4(0, 0, 0, 0);
    }
}

/* Heads of HD = 32 or 64: a key or value row is read by HD / 4 lanes, a
 * float4 each, so that a warp's load covers whole rows (the generic kernel's
 * thread per key reads 16-byte pieces of 32 rows at once), and each lane
 * keeps DECODE_GROUP loads in flight; the first group of values loads while
 * the softmax is worked out. t's own key and value come from qkv, where they
 * were just computed. */
template <int HD>
__global__ void __launch_bounds__(DECODE_THREADS, 4) decode_attention_vec_kernel(decode_view v)
{
    constexpr int LPR = HD / 4, RPW = 32 / LPR;             /* lanes a row, rows a warp's load */
    constexpr int STRIDE = DECODE_THREADS / 32 * RPW;         /* rows one load of every lane covers */
    constexpr int SPAN = STRIDE * DECODE_GROUP;               /* rows a group of loads covers */
    extern __shared__ float sm[]; /* scores[SLOT] pos[SLOT] scratch[32] (q[hd]) part[warps*hd] */
    decode_share d;
    if (!decode_share_of(&v, &d)) return;
    const int m_kept = d.m_kept, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int sub = lane % LPR, first = warp * RPW + lane / LPR;
    float *scores = sm;
    int *where = (int *)(sm + DECODE_SLOT);
    float *scratch = sm + 2 * DECODE_SLOT, *part = scratch + 32 + HD;
    const float *q = v.qkv + (size_t)d.s * 3 * v.C + d.h * HD;
    const float4 q4 = ((const float4 *)q)[sub];
    const float scale = rsqrtf((float)HD);
    for (int i = threadIdx.x; i < m_kept; i += DECODE_THREADS) where[i] = d.kept[i];
    float4 v_t = make_float4(0, 0, 0, 0);
    if (d.has_t && warp == 0) {
        const float4 k4 = ((const float4 *)(q + v.C))[sub];
        v_t = ((const float4 *)(q + 2 * v.C))[sub];
        float dot = (q4.x * k4.x + q4.y * k4.y) + (q4.z * k4.z + q4.w * k4.w);
        for (int o = LPR / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (lane == 0) scores[m_kept] = dot * scale;
    }
    __syncthreads();
    float4 rows[DECODE_GROUP];
    for (int g = 0; g < m_kept; g += SPAN) {
        decode_load_group<HD>(rows, d.K, where, g, STRIDE, first, m_kept, sub);
#pragma unroll
        for (int j = 0; j < DECODE_GROUP; j++) {
            const float4 k4 = rows[j];
            float dot = (q4.x * k4.x + q4.y * k4.y) + (q4.z * k4.z + q4.w * k4.w);
            for (int o = LPR / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
            const int i = g + j * STRIDE + first;
            if (sub == 0 && i < m_kept) scores[i] = dot * scale;
        }
    }
    __syncthreads();
    decode_load_group<HD>(rows, d.V, where, 0, STRIDE, first, m_kept, sub);
    float mx, sum;
    decode_softmax(scores, m_kept + d.has_t, d.split, scratch, &mx, &sum);
    float4 o = make_float4(0, 0, 0, 0);
    for (int g = 0; g < m_kept; g += SPAN) {
        if (g > 0) decode_load_group<HD>(rows, d.V, where, g, STRIDE, first, m_kept, sub);
#pragma unroll
        for (int j = 0; j < DECODE_GROUP; j++) {
            const int i = g + j * STRIDE + first;
            const float p = i < m_kept ? scores[i] : 0.0f;
            o.x += p * rows[j].x, o.y += p * rows[j].y, o.z += p * rows[j].z, o.w += p * rows[j].w;
        }
    }
    if (d.has_t && warp == 0 && lane < LPR) {
        const float p = scores[m_kept];
        o.x += p * v_t.x, o.y += p * v_t.y, o.z += p * v_t.z, o.w += p * v_t.w;
    }
    /* the warp's rows to one: lanes sub, sub + LPR, ... hold the same dimensions */
    for (int x = LPR; x < 32; x <<= 1) {
        o.x += __shfl_xor_sync(0xffffffffu, o.x, x), o.y += __shfl_xor_sync(0xffffffffu, o.y, x);
        o.z += __shfl_xor_sync(0xffffffffu, o.z, x), o.w += __shfl_xor_sync(0xffffffffu, o.w, x);
    }
    if (lane < LPR) ((float4 *)(part + warp * HD))[sub] = o;
    __syncthreads();
    decode_finish(&v, &d, part, scores, mx, sum);
}

/* Joins the chunks of the split lists: one block per (stream, head); nothing
 * to do for lists of one chunk. */
__global__ void decode_combine_kernel(decode_view v)
{
    const int s = blockIdx.x / v.H, h = blockIdx.x % v.H, hd = v.hd;
    int row_at;
    const int list = decode_list(&v, s, h, &row_at);
    const int n = v.n_kept[list] + 1, used = decode_chunks(n);
    if (used <= 1) return;
    const float *ml = v.part_ml + (size_t)blockIdx.x * v.chunks * 2;
    const float *po = v.part_o + (size_t)blockIdx.x * v.chunks * hd;
    float mx = -INFINITY, total = 0;
    for (int c = 0; c < used; c++) mx = fmaxf(mx, ml[2 * c]);
    for (int c = 0; c < used; c++) total += ml[2 * c + 1] * expf(ml[2 * c] - mx);
    const float inv = 1.0f / total;
    for (int x = threadIdx.x; x < hd; x += blockDim.x) {
        float o = 0;
        for (int c = 0; c < used; c++) o += po[(size_t)c * hd + x] * expf(ml[2 * c] - mx);
        v.att[(size_t)s * v.C + h * hd + x] = o * inv;
    }
    if (v.compact) /* t, entry n - 1, belongs to the last chunk */
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            v.compact[row_at + i] *= expf(ml[2 * min(i / DECODE_CHUNK, used - 1)] - mx) * inv;
}

/* The decode attention of one layer, on `stream`: the vectorised kernel for
 * heads of 32 and 64, the generic one otherwise, then the join of split
 * lists when a list can be split. */
static void decode_attention_enqueue(const decode_view *v, cudaStream_t stream)
{
    const dim3 grid(v->S * v->H, v->chunks);
    const size_t smem = decode_attention_smem(v->hd);
    if (v->hd == 64) decode_attention_vec_kernel<64><<<grid, DECODE_THREADS, smem, stream>>>(*v);
    else if (v->hd == 32) decode_attention_vec_kernel<32><<<grid, DECODE_THREADS, smem, stream>>>(*v);
    else decode_attention_kernel<<<grid, DECODE_THREADS, smem, stream>>>(*v);
    if (v->chunks > 1) decode_combine_kernel<<<v->S * v->H, 64, 0, stream>>>(*v);
}

/* The decode step's q/k/v of each stream (qkv [S, 3C], one block each):
 * adds the bias, appends k and v to the stream's cache and, when q_out /
 * k_out are set, keeps q and k there ([S, C] each) for the caller. */
__global__ void decode_qkv_kernel(float *qkv, const float *bias, float *const *k_cache,
                                  float *const *v_cache, float *q_out, float *k_out,
                                  const int *t_of, const int *max_len_of, int H, int hd, int C,
                                  int layer)
{
    const int s = blockIdx.x, t = t_of[s], max_len = max_len_of[s];
    float *row = qkv + (size_t)s * 3 * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        const int h = i / hd, d = i % hd;
        const size_t at = (((size_t)layer * H + h) * max_len + t) * hd + d;
        const float q = row[i] + bias[i], k = row[C + i] + bias[C + i], v = row[2 * C + i] + bias[2 * C + i];
        row[i] = q, row[C + i] = k, row[2 * C + i] = v;
        k_cache[s][at] = k;
        v_cache[s][at] = v;
        if (q_out) q_out[(size_t)s * C + i] = q;
        if (k_out) k_out[(size_t)s * C + i] = k;
    }
}

#endif
