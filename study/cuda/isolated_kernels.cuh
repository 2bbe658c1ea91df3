/* isolated_kernels.cuh — the device side of a batch's isolated replay
 * (isolated_gpu.cu, which includes it once: one translation unit, as the
 * engine's CUDA backend keeps its kernels in .cuh parts): what the kernels
 * read of a batch, the reference rows' top positions and entropies, the
 * rows' metrics, RACE's hashing ahead and the replay of a set through all
 * of its steps. */
#ifndef AP_STUDY_ISOLATED_KERNELS_CUH
#define AP_STUDY_ISOLATED_KERNELS_CUH

/* What the kernels read of a batch; passed by value. */
typedef struct {
    int n_samples, n_policies, L, H, D, max_T, n_steps, warmup, stride, n_lists;
    const int *len;                 /* [B] */
    const float *const *attn, *const *q, *const *k, *const *v, *const *o; /* [B * L] */
    const int *keeps_all;           /* [B * n_policies] */
    double *values;                 /* [B][n_policies * L][n_steps][H][AP_M_COUNT] */
    const int *top;                 /* [n_steps][B * L * H][32]: each reference row's top positions */
    const double *neg_entropy;      /* [n_steps][B * L * H]: each reference row's ap_row_neg_entropy_warp */
    /* the sets at the measured steps of the current segment (snapshots):
     * step s's list at snap_pos + s * snap_total + snap_off[list], its
     * count at snap_cnt[s * n_lists + list]; a list of a stream that keeps
     * everything has none (snap_off -1) */
    const long long *snap_off;      /* [n_lists] */
    long long snap_total;
    int *snap_pos, *snap_cnt;
    int seg_step;                   /* the segment's first measured step */
} batch_view;

/* The position of measured step `step`: the multiples of the stride from the warmup on. */
__host__ __device__ static inline int measured_t(const batch_view *bv, int step)
{
    return (bv->warmup + bv->stride - 1) / bv->stride * bv->stride + step * bv->stride;
}

enum { WARPS = 4 }; /* warps a block of the top and metrics kernels */

/* A metrics warp's scratch: the policy row (floats), then the kept flags;
 * 16-byte multiples so that every warp's floats stay aligned. */
__host__ __device__ static inline size_t warp_scratch_bytes(int max_T)
{
    return ((size_t)max_T * (sizeof(float) + 1) + 15) / 16 * 16;
}

/* Words of a head's state a set may stage in shared memory for its whole
 * replay (a RACE sketch of 16 rows × 2^9 buckets is 8,192). */
enum { ISO_STAGE_WORDS_MAX = 16 * 1024 };

/* One warp a reference row (measured step, sample, layer, head): its top
 * positions, which every policy's recall reads. */
__global__ void topk_kernel(batch_view bv, int n_rows)
{
    const int warp = blockIdx.x * WARPS + threadIdx.x / 32;
    if (warp >= n_rows * bv.n_steps) return;
    const int row = warp % n_rows, step = warp / n_rows;
    const int h = row % bv.H, l = row / bv.H % bv.L, b = row / (bv.H * bv.L), T = bv.len[b];
    const int t = measured_t(&bv, step);
    if (t >= T) return;
    const float *ref = bv.attn[(size_t)b * bv.L + l] + ((size_t)h * T + t) * T;
    ap_topk_warp(ref, t + 1, (int *)bv.top + (size_t)warp * 32);
    const double neg_entropy = ap_row_neg_entropy_warp(ref, t + 1);
    if (threadIdx.x % 32 == 0) ((double *)bv.neg_entropy)[warp] = neg_entropy;
}

/* One warp a row (segment step, stream, layer, head) of the segment's
 * n_rows: its metrics against the set the snapshot holds. */
__global__ void metrics_kernel(batch_view bv, int n_rows)
{
    extern __shared__ unsigned char scratch[];
    const int warp = blockIdx.x * WARPS + threadIdx.x / 32;
    if (warp >= n_rows) return;
    const int n_lists = bv.n_lists, list = warp % n_lists, s = warp / n_lists, step = bv.seg_step + s;
    const int h = list % bv.H, l = list / bv.H % bv.L, sid = list / (bv.H * bv.L);
    const int b = sid / bv.n_policies, p = sid % bv.n_policies, T = bv.len[b], t = measured_t(&bv, step);
    if (t >= T) return;
    float *q = (float *)(scratch + (threadIdx.x / 32) * warp_scratch_bytes(bv.max_T));
    unsigned char *kept = (unsigned char *)(q + bv.max_T);
    const long long at = bv.snap_off[list];
    const int keeps_all = at < 0;
    ap_row_set set = {t, keeps_all ? t : bv.snap_cnt[(size_t)s * n_lists + list], keeps_all,
                      keeps_all ? NULL : bv.snap_pos + s * bv.snap_total + at};
    const size_t tl = (size_t)b * bv.L + l;
    const float *ref = bv.attn[tl] + ((size_t)h * T + t) * T;
    const size_t ref_row = (size_t)step * bv.n_samples * bv.L * bv.H + tl * bv.H + h;
    double out[AP_M_COUNT];
    ap_metrics_row_warp(ref, &set, bv.top + ref_row * 32, bv.neg_entropy[ref_row], bv.v[tl] + (size_t)h * T * bv.D, bv.o[tl] + ((size_t)h * T + t) * bv.D, bv.D,
                        q, kept, out);
    if (threadIdx.x % 32 == 0) {
        const int run = p * bv.L + l;
        double *dst = bv.values + ((((size_t)b * bv.n_policies * bv.L + run) * bv.n_steps + step) * bv.H + h) * AP_M_COUNT;
        for (int m = 0; m < AP_M_COUNT; m++) dst[m] = out[m];
    }
}

/* Head h's reference row of t restricted to the set (n positions kp[] and
 * t), scaled as ap_replay_isolated scales it: by 1 / its mass summed in the
 * host's order, unless nothing has been evicted. */
__device__ static void feed_row(const float *ref, const int *kp, int n, int t, float *row, int lane)
{
    for (int x = lane; x <= n; x += 32) row[x] = ref[x < n ? kp[x] : t];
    __syncwarp();
    double mass = 0;
    if (lane == 0 && n < t) {
        mass = row[n];
#pragma unroll 8
        for (int x = 0; x < n; x++) mass += row[x];
    }
    mass = __shfl_sync(0xffffffffu, mass, 0);
    const float scale = n == t || !(mass > 0) ? 1.0f : (float)(1.0 / mass);
    if (scale != 1.0f)
        for (int x = lane; x <= n; x += 32) row[x] *= scale;
    __syncwarp();
}

/* One warp a vector (sample, layer, head, position) of the batch's queries
 * (of_q) or keys: its buckets under policy P's hyperplanes, at
 * out + ((tl * H + h) * max_T + t) * rows — what race_hash gives in a step,
 * found for every position at once. */
__global__ void hash_kernel(batch_view bv, gpu_policy P, const uint32_t *tables, int of_q, uint32_t *out, int n_vectors)
{
    const int warp = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp >= n_vectors) return;
    const int t = warp % bv.max_T, h = warp / bv.max_T % bv.H, tl = warp / (bv.max_T * bv.H);
    const int T = bv.len[tl / bv.L];
    if (t >= T) return;
    const float *x = (of_q ? bv.q : bv.k)[tl] + ((size_t)h * T + t) * bv.D;
    const float *planes = (const float *)(tables + P.table) + (size_t)h * P.rows * P.bits * bv.D;
    race_hash(&P, planes, bv.D, x, out + (size_t)warp * P.rows, lane);
}

/* The same for heads of DIM (32 or 64) whose hyperplanes fit the shared
 * memory: a block per (sample, layer, head) and 128 positions, a thread a
 * vector, held in registers, against the head's hyperplanes read from
 * shared memory by every thread at once — dot_fixed's sums, in its order. */
enum { HASH_TILE = 128 };
template <int DIM>
__global__ void __launch_bounds__(HASH_TILE) hash_tile_kernel(batch_view bv, gpu_policy P, const uint32_t *tables,
                                                              int of_q, uint32_t *out)
{
    extern __shared__ float4 planes_s[];
    const int n_planes = P.rows * P.bits, tiles = (bv.max_T + HASH_TILE - 1) / HASH_TILE;
    const int tile = blockIdx.x % tiles, vh = blockIdx.x / tiles, h = vh % bv.H, tl = vh / bv.H;
    const int T = bv.len[tl / bv.L], t = tile * HASH_TILE + threadIdx.x;
    const float4 *planes = (const float4 *)(tables + P.table) + (size_t)h * n_planes * DIM / 4;
    for (int i = threadIdx.x; i < n_planes * DIM / 4; i += blockDim.x) planes_s[i] = planes[i];
    __syncthreads();
    if (t >= T) return;
    const float *xg = (of_q ? bv.q : bv.k)[tl] + ((size_t)h * T + t) * DIM;
    float x[DIM];
#pragma unroll
    for (int d = 0; d < DIM; d++) x[d] = xg[d];
    uint32_t *dst = out + ((size_t)vh * bv.max_T + t) * P.rows;
    for (int r = 0; r < P.rows; r++) {
        uint32_t b = 0;
        for (int i = 0; i < P.bits; i++) {
            const float4 *p = planes_s + (size_t)(r * P.bits + i) * DIM / 4;
            float acc[4] = {0, 0, 0, 0};
#pragma unroll
            for (int d = 0; d < DIM; d += 4) {
                const float4 p4 = p[d / 4];
                acc[0] += p4.x * x[d], acc[1] += p4.y * x[d + 1], acc[2] += p4.z * x[d + 2], acc[3] += p4.w * x[d + 3];
            }
            b |= (uint32_t)((acc[0] + acc[1]) + (acc[2] + acc[3]) >= 0) << i;
        }
        dst[r] = b;
    }
}

/* One warp a set (sample, layer, head — or layer for a layer-granularity
 * policy) of policy p: its steps t0 <= t < t1, the sets of the measured
 * ones copied to the segment's snapshots before t is observed. A set whose
 * state fits stage_words keeps it in shared memory meanwhile. */
template <int KIND>
__global__ void __launch_bounds__(128) replay_kernel(batch_view bv, step_view v, int p, int stage_words, int n_sets,
                                                     int t0, int t1, const uint32_t *pre_q, const uint32_t *pre_k)
{
    extern __shared__ __align__(16) uint32_t staged_all[];
    const int warp = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp >= n_sets) return;
    const int set = warp % bv.H, l = warp / bv.H % bv.L, b = warp / (bv.H * bv.L);
    const int sid = b * bv.n_policies + p, T = bv.len[b];
    if (bv.keeps_all[sid]) return;
    gpu_policy P = v.policies[v.stream_policy[sid]];
    P.kind = KIND; /* a constant: each kind's launch compiles to its own code */
    if (P.layer_sets && set > 0) return;
    const int base = (sid * bv.L + l) * bv.H, list = base + set;
    const int h0 = P.layer_sets ? 0 : set, h1 = P.layer_sets ? bv.H - 1 : set;
    uint32_t *staged = staged_all + (size_t)(threadIdx.x / 32) * stage_words;
    const int stage = !P.layer_sets && P.state_words > 0 && P.state_words <= stage_words;
    uint32_t *home = v.state + v.state_off[list];
    if (stage) stage_in(staged, home, P.state_words, lane);
    __syncwarp();
    const size_t tl = (size_t)b * bv.L + l;
    const float *attn = bv.attn[tl];
    for (int t = t0; t < t1 && t < T; t++) {
        if (t >= bv.warmup && t % bv.stride == 0) {
            const size_t s = (size_t)((t - measured_t(&bv, 0)) / bv.stride - bv.seg_step);
            for (int h = h0; h <= h1; h++) {
                const int hl = base + h, n = v.cnt[list];
                const int *kp = v.pos + v.off[list];
                int *dst = bv.snap_pos + s * bv.snap_total + bv.snap_off[hl];
                for (int i = lane; i < n; i += 32) dst[i] = kp[i];
                if (lane == 0) bv.snap_cnt[s * bv.n_lists + hl] = n;
            }
        }
        const int n = v.cnt[list], *kp = v.pos + v.off[list];
        for (int h = h0; h <= h1; h++)
            feed_row(attn + ((size_t)h * T + t) * T, kp, n, t, (float *)v.rows + v.off[base + h], lane);
        const size_t at = tl * bv.H * bv.max_T * P.rows; /* head 0's position 0 */
        const step_vectors x = {bv.q[tl] + (size_t)t * bv.D, bv.k[tl] + (size_t)t * bv.D, (size_t)T * bv.D,
                                pre_q ? pre_q + at : NULL, pre_k ? pre_k + at : NULL, (size_t)bv.max_T * P.rows};
        set_step<KIND>(P, v, list, base, h0, h1, t, x, stage ? staged : NULL, lane);
    }
    for (long long w = lane; stage && w < P.state_words; w += 32) home[w] = staged[w];
}

typedef void (*replay_fn)(batch_view, step_view, int, int, int, int, int, const uint32_t *, const uint32_t *);
static const replay_fn REPLAY[] = {
    replay_kernel<K_FULL>, replay_kernel<K_WINDOW>, replay_kernel<K_SINK>,     replay_kernel<K_RANDOM>,
    replay_kernel<K_H2O>,  replay_kernel<K_TOVA>,   replay_kernel<K_CMS>,      replay_kernel<K_CS>,
    replay_kernel<K_RACE>, replay_kernel<K_RACE_KDE>, replay_kernel<K_KNORM>, replay_kernel<K_SNAPKV>};

#endif
