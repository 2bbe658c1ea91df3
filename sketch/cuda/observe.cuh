/* observe.cuh — the device side of policy_gpu.cu: what a policy's set does
 * each step (set_step: observe, retain t, evict, one warp a set; run by the
 * cascade's observe_kernel and by the isolated replay of study/cuda/) and
 * the copies of the sets the step attended to (keep_kernel), with the
 * helpers the policies share; each policy's own code is its file in
 * policies/. policy_gpu.cu says why the arithmetic is the host's. */
#ifndef AP_SKETCH_OBSERVE_CUH
#define AP_SKETCH_OBSERVE_CUH

#include <cuda_runtime.h>
#include <float.h>
#include <stdint.h>

/* The policies with a device implementation (policy_gpu.cu names them in this order). */
enum { K_FULL, K_WINDOW, K_SINK, K_RANDOM, K_H2O, K_TOVA, K_CMS, K_CS, K_RACE, K_RACE_KDE, K_KNORM, K_SNAPKV };
enum { MT_N = 624, MT_M = 397, MT_WORDS = MT_N + 1 }; /* state, then the index */
enum { CS_NEG = 1u << 31 };
enum { MAX_DEPTH = 64 }; /* ap_cms_init / ap_cs_init accept depth <= 64 */
enum { PREFETCH = 8 };    /* sketch updates: buckets loaded this many positions ahead */
enum { SCORE_BATCH = 4 }; /* eviction: positions a lane estimates at once */
/* A set's sketch is staged in shared memory when it fits this many words. */
enum { STAGE_WORDS_MAX = 12 * 1024 };

typedef struct {
    int kind, never_evicts, protects, layer_sets, words;
    int budget, sink, recent;
    int depth, width, conservative, rows, bits;
    int window, kernel, max_pool; /* snapkv */
    long long table;       /* cms/cs: buckets [n_head][max_T][depth]; race: planes [n_head][rows*bits*dim] */
    long long state_words; /* per head: counters, or the generator */
} gpu_policy;

/* What the kernels read; passed by value. (policy_gpu.h hands it to
 * device code elsewhere as struct ap_step_view.) */
typedef struct ap_step_view {
    int L, H, D, max_T, n_active;
    const int *off;
    int *cnt, *pos;
    const float *rows, *q, *k;
    const long long *slot_off, *state_off;
    uint32_t *slots, *state;
    const uint32_t *tables;
    double *scratch;
    const int *stream_policy, *active;
    const gpu_policy *policies;
} step_view;

/* ---- device helpers --------------------------------------------------------- */

__device__ static inline float as_float(uint32_t u) { return __uint_as_float(u); }

/* The largest of the warp's values. */
__device__ static inline int warp_max(int x)
{
#if __CUDA_ARCH__ >= 800
    return (int)__reduce_max_sync(0xffffffffu, (unsigned)x);
#else
    for (int o = 16; o > 0; o >>= 1) x = max(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
#endif
}

/* One sketch row's counters `line` += ±w of the warp's positions, one a
 * lane (`on`), in lane order: the lanes that share a counter
 * (__match_any_sync) pass its running sum from one to the next, the first
 * having read it and the last storing it — the same sums, in the same order,
 * as one position after the other. */
__device__ static inline void add_row(float *line, uint32_t b, float w, bool on, int lane)
{
    const uint32_t counter = on ? b & ~CS_NEG : 0xffffffffu; /* (no bucket reaches ~0: width < 2^31) */
    const unsigned group = __match_any_sync(0xffffffffu, counter), below = (1u << lane) - 1u;
    const unsigned earlier = group & below, later = group & ~below & ~(1u << lane);
    const int rank = __popc(earlier), prev = earlier ? 31 - __clz(earlier) : lane;
    const float signed_w = b & CS_NEG ? -w : w;
    float sum = on && !earlier ? line[counter] + signed_w : 0.0f;
    const int rounds = warp_max(on ? rank : 0);
    for (int k = 1; k <= rounds; k++) {
        const float from = __shfl_sync(0xffffffffu, sum, prev);
        if (on && rank == k) sum = from + signed_w;
    }
    if (on && !later) line[counter] = sum;
}

/* counts[r][bucket] += ±row[i] for i = 0..n in order, the buckets of i at
 * slots + i * n_rows — or, with an index, at slots + pos * n_rows for i's
 * position pos (index[i], t for i = n) (Count Sketch's sign in bit 31;
 * RACE's buckets never reach it). A lane a position, 32 positions at a
 * time, a row after the other (add_row keeps each counter's order); a
 * lane's buckets four rows at a time, as one 16-byte load where aligned. */
__device__ static void add_in_order(float *counts, int row_len, const uint32_t *slots, int n_rows, const float *row,
                                    int n, int lane, const int *index = NULL, int t = 0)
{
    const bool by4 = n_rows % 4 == 0 && ((uintptr_t)slots & 15) == 0;
    for (int i0 = 0; i0 <= n; i0 += 32) {
        const int i = i0 + lane;
        const bool on = i <= n;
        const float w = on ? row[i] : 0.0f;
        const uint32_t *mine = slots + (size_t)(on ? (index ? (i < n ? index[i] : t) : i) : 0) * n_rows;
        for (int r0 = 0; r0 < n_rows; r0 += 4) {
            uint32_t b[4] = {0, 0, 0, 0};
            if (on && by4) {
                const uint4 b4 = *(const uint4 *)(mine + r0);
                b[0] = b4.x, b[1] = b4.y, b[2] = b4.z, b[3] = b4.w;
            } else if (on) {
#pragma unroll
                for (int j = 0; j < 4; j++)
                    if (r0 + j < n_rows) b[j] = mine[r0 + j];
            }
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (r0 + j < n_rows) add_row(counts + (size_t)(r0 + j) * row_len, b[j], w, on, lane);
        }
        __syncwarp(); /* the next positions read what these stored */
    }
}

/* One file per policy (sketch/cuda/policies/), as on the host: each
 * holds its observe and score; the kernels below dispatch on the kind. */
#include "policies/cms.cuh"
#include "policies/count_sketch.cuh"
#include "policies/h2o.cuh"
#include "policies/knorm.cuh"
#include "policies/race.cuh"
#include "policies/snapkv.cuh"

/* What a set's step reads besides the rows: head h's query and key at
 * q + h * stride and k + h * stride, and, when computed ahead (the isolated
 * replay hashes every position of the trace at once), the RACE buckets of
 * head h's position p at q_buckets + h * bucket_stride + p * rows and
 * k_buckets likewise (NULL: hashed in the step). With them a retained
 * position's buckets are read by its position, not kept in its slot. */
typedef struct {
    const float *q, *k;
    size_t stride;
    const uint32_t *q_buckets, *k_buckets;
    size_t bucket_stride;
} step_vectors;

/* One head's ingestion of the step (method.h's observe): kept i has
 * attention row[i], t has row[n]; the new slot is at slots + n * words. */
__device__ static void observe_head(const gpu_policy *P, const step_view *v, int t, int h, const float *row,
                                    uint32_t *slots, uint32_t *state, const step_vectors &x, const int *kp, int n,
                                    int lane)
{
    uint32_t *fresh = slots + (size_t)n * P->words;
    float *counts = (float *)state;
    const float *q = x.q + h * x.stride, *k = x.k + h * x.stride;
    const uint32_t *qb = x.q_buckets ? x.q_buckets + h * x.bucket_stride : NULL;
    const uint32_t *kb = x.k_buckets ? x.k_buckets + h * x.bucket_stride : NULL;
    switch (P->kind) {
    case K_H2O: observe_h2o(P, v, t, h, row, slots, counts, fresh, q, k, n, lane); break;
    case K_CMS: observe_cms(P, v, t, h, row, slots, counts, fresh, q, k, n, lane); break;
    case K_CS: observe_count_sketch(P, v, t, h, row, slots, counts, fresh, q, k, n, lane); break;
    case K_RACE: observe_race(P, v, t, h, row, slots, counts, fresh, k, kb, kp, n, lane); break;
    case K_RACE_KDE: observe_race_kde(P, v, t, h, counts, fresh, q, k, qb, kb, lane); break;
    case K_KNORM: observe_knorm(P, v, t, h, row, slots, counts, fresh, q, k, n, lane); break;
    case K_SNAPKV: observe_snapkv(P, v, t, h, row, slots, counts, fresh, q, k, n, lane); break;
    default: /* full, window, sink, random, tova keep no per-step state */
        break;
    }
}

/* Head h's score of retained index i (position pos, its slot `slot`)
 * (method.h's score); snapkv's pooled score is the kernel's (it needs the
 * neighbours'). */
__device__ static double score_head(const gpu_policy *P, const float *row, const uint32_t *slot,
                                    const uint32_t *state, int i, int pos)
{
    const float *counts = (const float *)state;
    switch (P->kind) {
    case K_H2O:
    case K_KNORM: return score_slot(slot);
    case K_TOVA: return row[i]; /* tova.c: the current query's attention */
    case K_CMS: return score_cms(P, counts, slot);
    case K_CS: return score_count_sketch(P, counts, slot);
    case K_RACE:
    case K_RACE_KDE: return score_race(P, counts, slot);
    default: return pos; /* full, window, sink: the oldest goes */
    }
}

__device__ static int evictable(const gpu_policy *P, int pos, int t)
{
    return !P->protects || (pos >= P->sink && pos <= t - P->recent);
}

#include "policies/random.cuh"

/* Removes index x of n from a warp-shared array of `words`-word entries.
 * The shift goes in batches of SHIFT_LOADS words per lane, all loaded before
 * any is stored (a batch's stores land below the next batch's loads), so that
 * a RACE set's 4,000 words of buckets take 8 round trips, not 128. */
enum { SHIFT_LOADS = 16 };
__device__ static void remove_entry(uint32_t *a, int words, int x, int n, int lane)
{
    const int end = (n - 1) * words;
    for (int j0 = x * words; j0 < end; j0 += 32 * SHIFT_LOADS) {
        uint32_t next[SHIFT_LOADS];
#pragma unroll
        for (int i = 0; i < SHIFT_LOADS; i++) {
            const int j = j0 + 32 * i + lane;
            next[i] = j < end ? a[j + words] : 0;
        }
        __syncwarp();
#pragma unroll
        for (int i = 0; i < SHIFT_LOADS; i++) {
            const int j = j0 + 32 * i + lane;
            if (j < end) a[j] = next[i];
        }
        __syncwarp();
    }
}

/* Copies a sketch into shared memory with STAGE_LOADS loads in flight per
 * lane: a 32 KB RACE sketch in 16 round trips, not 256. */
enum { STAGE_LOADS = 16 };
__device__ static void stage_in(uint32_t *staged, const uint32_t *home, long long words, int lane)
{
    for (long long w0 = lane; w0 < words; w0 += 32 * STAGE_LOADS) {
        uint32_t r[STAGE_LOADS];
#pragma unroll
        for (int j = 0; j < STAGE_LOADS; j++) r[j] = w0 + 32 * j < words ? home[w0 + 32 * j] : 0;
#pragma unroll
        for (int j = 0; j < STAGE_LOADS; j++)
            if (w0 + 32 * j < words) staged[w0 + 32 * j] = r[j];
    }
}

/* One set's step, one warp: observe t, retain it, evict as the host's
 * policy would. The set is list (a head's) or, for a layer-granularity set,
 * base's heads h0..h1 (its positions in list = base, mirrored into the
 * others at the end); head h's rows are at v.rows + v.off[base + h], its
 * vectors in x; a head set's state is at `staged` when not NULL (else in
 * place). P's kind must be
 * KIND. Both replays run it: the cascade's step by step (observe_kernel),
 * the isolated one with a set's every step in one warp (study/). */
template <int KIND>
__device__ __forceinline__ static void set_step(const gpu_policy &P, const step_view &v, int list, int base, int h0,
                                                int h1, int t, const step_vectors &x, uint32_t *staged, int lane)
{
    int *kp = v.pos + v.off[list];
    int n = v.cnt[list];
#define STATE_OF(h) (staged ? staged : v.state + v.state_off[base + (h)])
    /* RACE's buckets read by position from the ones computed ahead, or kept in the slots */
    const int by_position = (KIND == K_RACE || KIND == K_RACE_KDE) && x.k_buckets;
#define SLOT_OF(h, i)                                                                                  \
    (by_position ? x.k_buckets + (h) * x.bucket_stride + (size_t)kp[i] * P.rows                       \
                 : v.slots + v.slot_off[base + (h)] + (size_t)(i) * P.words)
    for (int h = h0; h <= h1; h++) {
        observe_head(&P, &v, t, h, v.rows + v.off[base + h], v.slots + v.slot_off[base + h], STATE_OF(h), x, kp, n,
                     lane);
        __syncwarp();
    }
    if (lane == 0) kp[n] = t;
    n++;
    __syncwarp();
    if (!P.never_evicts && n > P.budget) {
        double *score = v.scratch + v.off[list];
        if (KIND == K_RANDOM) {
            /* the host draws per evictable position, head after head */
            for (int i = lane; i < n; i += 32) score[i] = 0;
            for (int h = h0; h <= h1; h++) draw_evictable(&P, STATE_OF(h), score, kp, n, t, lane);
            __syncwarp();
        }
        const int sketch = KIND == K_CMS || KIND == K_CS || KIND == K_RACE || KIND == K_RACE_KDE;
        if (sketch) /* estimates read counters SCORE_BATCH positions at a time, their loads together */
            for (int i0 = lane; i0 < n; i0 += 32 * SCORE_BATCH) {
                double s[SCORE_BATCH];
#pragma unroll
                for (int j = 0; j < SCORE_BATCH; j++) {
                    const int i = i0 + 32 * j;
                    s[j] = 0;
                    for (int h = h0; i < n && h <= h1; h++)
                        s[j] += score_head(&P, NULL, SLOT_OF(h, i), STATE_OF(h), i, 0);
                }
#pragma unroll
                for (int j = 0; j < SCORE_BATCH; j++)
                    if (i0 + 32 * j < n) score[i0 + 32 * j] = s[j];
            }
        if (KIND == K_SNAPKV) { /* every head's window sums first: a score pools its neighbours' */
            for (int h = h0; h <= h1; h++)
                for (int i = lane; i < n; i += 32)
                    v.scratch[v.off[base + h] + i] = window_sum(&P, v.slots + v.slot_off[base + h], i);
            __syncwarp();
        }
        double best = 0;
        int victim = -1;
        for (int i = lane; i < n; i += 32) {
            if (!evictable(&P, kp[i], t)) continue;
            double s = 0;
            if (KIND == K_SNAPKV)
                for (int h = h0; h <= h1; h++) s += pooled(&P, v.scratch + v.off[base + h], i, n);
            else if (KIND == K_RANDOM || sketch) s = score[i];
            else
                for (int h = h0; h <= h1; h++)
                    s += score_head(&P, v.rows + v.off[base + h], SLOT_OF(h, i), STATE_OF(h), i, kp[i]);
            if (victim < 0 || s < best) victim = i, best = s;
        }
        for (int o = 16; o > 0; o >>= 1) {
            const double b2 = __shfl_xor_sync(0xffffffffu, best, o);
            const int v2 = __shfl_xor_sync(0xffffffffu, victim, o);
            if (v2 >= 0 && (victim < 0 || b2 < best || (b2 == best && v2 < victim))) victim = v2, best = b2;
        }
        /* budget >= sink + recent (ap_policy_create): there is a victim */
        remove_entry((uint32_t *)kp, 1, victim, n, lane);
        for (int h = h0; P.words && !by_position && h <= h1; h++)
            remove_entry(v.slots + v.slot_off[base + h], P.words, victim, n, lane);
        n--;
    }
#undef STATE_OF
#undef SLOT_OF
    __syncwarp();
    if (lane == 0) v.cnt[list] = n;
    if (P.layer_sets)
        for (int h = 1; h < v.H; h++) {
            int *dst = v.pos + v.off[base + h];
            for (int i = lane; i < n; i += 32) dst[i] = kp[i];
            if (lane == 0) v.cnt[base + h] = n;
        }
    __syncwarp();
}

/* One warp per (active stream, layer, set) of the streams items[] (indices
 * into the active streams, all of one policy; t_of: their positions), n_sets
 * in all: set_step. A head-granularity set's sketch or generator is worked
 * on in shared memory when it fits stage_words. Blocks of several warps: an
 * SM holds at most 32 blocks, and the ten policies' sets run side by side. */
template <int KIND>
__global__ void __launch_bounds__(128, 6) observe_kernel(step_view v, const int *t_of, const int *items, int stage_words, int n_sets)
{
    extern __shared__ uint32_t staged_all[];
    const int warp = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp >= n_sets) return;
    uint32_t *staged = staged_all + (size_t)(threadIdx.x / 32) * stage_words;
    const int a = items[warp / (v.L * v.H)], l = warp / v.H % v.L, set = warp % v.H, t = t_of[a];
    const int sid = v.active[a];
    gpu_policy P = v.policies[v.stream_policy[sid]];
    P.kind = KIND; /* a constant: each kind's launch compiles to its own code */
    if (P.layer_sets && set > 0) return;
    const int base = (sid * v.L + l) * v.H, list = base + set;
    const int h0 = P.layer_sets ? 0 : set, h1 = P.layer_sets ? v.H - 1 : set;
    /* head h's state: staged (a single head whose state fits) or in place */
    const int stage = !P.layer_sets && P.state_words > 0 && P.state_words <= stage_words;
    uint32_t *home = v.state + v.state_off[list];
    if (stage) stage_in(staged, home, P.state_words, lane);
    __syncwarp();
    const size_t qk = ((size_t)l * v.n_active + a) * v.H * v.D;
    const step_vectors x = {v.q + qk, v.k + qk, (size_t)v.D, NULL, NULL, 0};
    set_step<KIND>(P, v, list, base, h0, h1, t, x, stage ? staged : NULL, lane);
    for (long long w = lane; stage && w < P.state_words; w += 32) home[w] = staged[w];
}

/* Copies layer `layer`'s lists of the active streams as the decode step left
 * them: one block per (active stream, head); positions, then the rows with t
 * last. (A stream that has ended holds no row of t: its list may be full.) */
static __global__ void keep_kernel(step_view v, int layer, const int *cap, const long long *kept_off, int *kept_cnt,
                            int *kept_pos, float *kept_rows)
{
    const int s = v.active[blockIdx.x / v.H], h = blockIdx.x % v.H, list = (s * v.L + layer) * v.H + h;
    const int n = v.cnt[list];
    const size_t src = (size_t)v.off[list], dst = (size_t)kept_off[s] + (size_t)h * cap[s];
    for (int i = threadIdx.x; i <= n; i += blockDim.x) {
        if (i < n) kept_pos[dst + i] = v.pos[src + i];
        kept_rows[dst + i] = v.rows[src + i];
    }
    if (threadIdx.x == 0) kept_cnt[s * v.H + h] = n;
}

#endif
