/* policy_gpu.cu — sketch/policies/ on a CUDA device (policy_gpu.h).
 *
 * One warp per retained set. The host policies decide by comparing scores,
 * and sketch estimates tie often (positions sharing buckets), so the device
 * repeats the host's arithmetic exactly: a sketch row's counters are updated
 * by one lane in position order (lanes work on different rows), estimates
 * are combined in the host's order and type, eviction takes the lowest score
 * with the oldest position winning ties. What the host drew at random (hash
 * functions, hyperplanes, the Mersenne Twister of `random`) is copied from a
 * host instance made with the same parameters, so the streams are the same.
 *
 * Only the RACE hash can differ: its projections are summed in another order
 * than OpenBLAS's, which flips a bucket bit only when a projection is within
 * rounding of zero. */
#include <cuda_runtime.h>
#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include <gsl/gsl_rng.h>

#include "../policies/method.h"
#include "../policy_gpu.h"
}

#include "../../common/cuda_try.h"

enum { K_FULL, K_WINDOW, K_SINK, K_RANDOM, K_H2O, K_TOVA, K_CMS, K_CS, K_RACE, K_RACE_KDE };
static const char *const KIND_NAMES[] = {"full", "window", "sink",         "random", "h2o",
                                         "tova", "cms",    "count_sketch", "race",   "race_kde"};
enum { N_KINDS = sizeof KIND_NAMES / sizeof KIND_NAMES[0] };
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
    long long table;       /* cms/cs: buckets [n_head][max_T][depth]; race: planes [n_head][rows*bits*dim] */
    long long state_words; /* per head: counters, or the generator */
} gpu_policy;

/* What the kernel reads; passed by value. */
typedef struct {
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

struct ap_policy_gpu {
    int n_stream, L, H, D, max_T, n_lists;
    int *h_off, *h_cap; /* [n_lists + 1], [n_stream] */
    int *h_keeps_all;   /* [n_stream]: its policy never evicts within its length */
    ap_policy_gpu_buffers buf;
    step_view v;        /* device pointers, filled in at create */
    int n_policy;
    int *h_param;       /* [n_stream] policy of each stream */
    int *stage_words;   /* [n_policy]: shared memory per set (observe_kernel) */
    int *kind;          /* [n_policy]: which observe_kernel instantiation runs it */
    /* this step's work: active streams grouped by policy, items[first[p] ..
     * first[p] + count[p]) for policy p; key changes when they do */
    int *h_active, *h_items, *first, *count, n_active;
    int *d_active, *d_items;
    long long key;
    /* the policies' launches run side by side, one stream each, forked
     * from the decode step's stream at its end and joined back */
    cudaStream_t *policy_stream; /* [n_policy] */
    cudaEvent_t fork, *policy_done;
    cudaStream_t origin;     /* the decode step's stream (set when a step is recorded) */
    cudaEvent_t kept_copied; /* the last fetch_kept's copies are done */
    /* copies of some layers' lists as the decode step left them:
     * [n_kept][n_stream * n_head] counts, [n_kept][kept_total] positions and rows */
    int n_kept, *kept_layer;
    long long *h_kept_off, kept_total; /* [n_stream]: stream s's first entry */
    long long *d_kept_off;
    int *d_cap, *d_kept_cnt, *d_kept_pos, *h_kept_cnt, *h_kept_pos;
    float *d_kept_rows, *h_kept_rows;
};

/* Keys of recorded work: unique across instances, so that a recording of
 * a freed instance is never replayed for a new one at the same addresses. */
static long long last_key;
static long long next_key(void) { return __sync_add_and_fetch(&last_key, 1); }

/* ---- device helpers --------------------------------------------------------- */

__device__ static inline float as_float(uint32_t u) { return __uint_as_float(u); }

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

/* x . plane over dim floats (16-byte aligned when dim % 4 == 0). */
template <int DIM>
__device__ static float dot_fixed(const float *plane, const float *x)
{
    float acc[4] = {0, 0, 0, 0};
#pragma unroll
    for (int d = 0; d < DIM; d += 4) { /* every load in flight at once */
        const float4 p4 = *(const float4 *)(plane + d), x4 = *(const float4 *)(x + d);
        acc[0] += p4.x * x4.x, acc[1] += p4.y * x4.y, acc[2] += p4.z * x4.z, acc[3] += p4.w * x4.w;
    }
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

__device__ static float dot(const float *plane, const float *x, int dim)
{
    if (dim == 64) return dot_fixed<64>(plane, x);
    if (dim == 32) return dot_fixed<32>(plane, x);
    float acc[4] = {0, 0, 0, 0};
    int d = 0;
    if (dim % 4 == 0)
        for (; d < dim; d += 4) {
            const float4 p4 = *(const float4 *)(plane + d), x4 = *(const float4 *)(x + d);
            acc[0] += p4.x * x4.x, acc[1] += p4.y * x4.y, acc[2] += p4.z * x4.z, acc[3] += p4.w * x4.w;
        }
    for (; d < dim; d++) acc[0] += plane[d] * x[d];
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

/* RACE buckets of x[dim], the warp together: one lane per hyperplane, the
 * signs gathered by ballot (up to 32 * HASH_MASKS hyperplanes, else lane r
 * takes row r's alone); lane r < rows writes row r's bucket. */
enum { HASH_MASKS = 8 };
__device__ static void race_hash(const gpu_policy *P, const float *planes, int dim, const float *x,
                                 uint32_t *buckets, int lane)
{
    const int n_planes = P->rows * P->bits;
    if (n_planes <= 32 * HASH_MASKS) {
        uint32_t masks[HASH_MASKS];
        for (int m = 0; m * 32 < n_planes; m++) {
            const int j = m * 32 + lane;
            masks[m] = __ballot_sync(0xffffffffu, j < n_planes && dot(planes + (size_t)j * dim, x, dim) >= 0);
        }
        for (int r = lane; r < P->rows; r += 32) {
            uint32_t b = 0;
            for (int i = 0; i < P->bits; i++) {
                const int j = r * P->bits + i;
                b |= (masks[j / 32] >> (j % 32) & 1u) << i;
            }
            buckets[r] = b;
        }
        return;
    }
    for (int r = lane; r < P->rows; r += 32) {
        uint32_t b = 0;
        for (int i = 0; i < P->bits; i++)
            b |= (uint32_t)(dot(planes + ((size_t)r * P->bits + i) * dim, x, dim) >= 0) << i;
        buckets[r] = b;
    }
}

/* Count-Min update; lane r owns sketch rows r and r + 32, whose buckets
 * it passes in b[0], b[1]. */
__device__ static void cms_update(const gpu_policy *P, float *counts, const uint32_t *b, float value, int lane)
{
    /* loops over j have constant bounds (the arrays stay in registers) */
    float c[MAX_DEPTH / 32];
    float est = FLT_MAX;
#pragma unroll
    for (int j = 0; j < MAX_DEPTH / 32; j++)
        if (lane + 32 * j < P->depth) {
            c[j] = counts[(size_t)(lane + 32 * j) * P->width + b[j]];
            est = fminf(est, c[j]);
        }
    if (!P->conservative) {
#pragma unroll
        for (int j = 0; j < MAX_DEPTH / 32; j++)
            if (lane + 32 * j < P->depth) counts[(size_t)(lane + 32 * j) * P->width + b[j]] = c[j] + value;
        return;
    }
    /* rows sit in lanes 0..depth-1 (and 32.. for depth > 32): the min of
     * the first power-of-two group of lanes covers them */
    int span = 1;
    while (span < P->depth && span < 32) span <<= 1;
    for (int o = span / 2; o > 0; o >>= 1) est = fminf(est, __shfl_xor_sync(0xffffffffu, est, o));
    const float target = est + value;
#pragma unroll
    for (int j = 0; j < MAX_DEPTH / 32; j++)
        if (lane + 32 * j < P->depth && c[j] < target) counts[(size_t)(lane + 32 * j) * P->width + b[j]] = target;
}

/* counts[r][bucket] += ±row[i] for i = 0..n in order, the buckets of i at
 * slots + i * n_rows (Count Sketch's sign in bit 31; RACE's buckets never
 * reach it); lane r owns row r. The sketch may sit in global memory, so the
 * positions go ADD_GROUP at a time: their buckets and weights, then their
 * counters, are loaded together, and a counter that an earlier position of
 * the group updates is taken from that update (the same sums, in the same
 * order, as one position after the other). */
enum { ADD_GROUP = 16 };
__device__ static void add_in_order(float *counts, int row_len, const uint32_t *slots, int n_rows, const float *row,
                                    int n, int lane)
{
    for (int r0 = 0; r0 < n_rows; r0 += 32) {
        const int r = r0 + lane;
        if (r >= n_rows) break;
        float *line = counts + (size_t)r * row_len;
        for (int i0 = 0; i0 <= n; i0 += ADD_GROUP) {
            uint32_t b[ADD_GROUP] = {0};
            float w[ADD_GROUP] = {0}, c[ADD_GROUP] = {0};
#pragma unroll
            for (int j = 0; j < ADD_GROUP; j++)
                if (i0 + j <= n) {
                    b[j] = slots[(size_t)(i0 + j) * n_rows + r];
                    w[j] = row[i0 + j];
                    if (b[j] & CS_NEG) w[j] = -w[j];
                    b[j] &= ~CS_NEG;
                }
#pragma unroll
            for (int j = 0; j < ADD_GROUP; j++)
                if (i0 + j <= n) c[j] = line[b[j]];
#pragma unroll
            for (int j = 0; j < ADD_GROUP; j++) {
#pragma unroll
                for (int x = 0; x < j; x++)
                    if (b[x] == b[j]) c[j] = c[x]; /* the latest earlier update of this counter */
                c[j] += w[j];
            }
#pragma unroll
            for (int j = 0; j < ADD_GROUP; j++)
                if (i0 + j <= n) line[b[j]] = c[j];
        }
    }
}

/* One head's ingestion of the step (method.h's observe): kept i has
 * attention row[i], t has row[n]; the new slot is at slots + n * words. */
__device__ static void observe_head(const gpu_policy *P, const step_view *v, int t, int h, const float *row,
                                    uint32_t *slots, uint32_t *state, const float *q, const float *k, int n,
                                    int lane)
{
    uint32_t *fresh = slots + (size_t)n * P->words;
    float *counts = (float *)state;
    switch (P->kind) {
    case K_H2O:
        for (int i = lane; i < n; i += 32) slots[i] = __float_as_uint(as_float(slots[i]) + row[i]);
        if (lane == 0) fresh[0] = __float_as_uint(row[n]);
        break;
    case K_CMS:
    case K_CS: {
        const uint32_t *key = v->tables + P->table + ((size_t)h * v->max_T + t) * P->depth;
        for (int r = lane; r < P->depth; r += 32) fresh[r] = key[r];
        __syncwarp();
        if (P->kind == K_CMS) { /* positions in order (i == n: t's own), buckets loaded ahead */
            for (int i0 = 0; i0 <= n; i0 += PREFETCH) {
                uint32_t b[PREFETCH][MAX_DEPTH / 32];
                float w[PREFETCH];
#pragma unroll
                for (int j = 0; j < PREFETCH; j++) {
                    if (i0 + j > n) break;
                    w[j] = row[i0 + j];
#pragma unroll
                    for (int x = 0; x < MAX_DEPTH / 32; x++)
                        if (lane + 32 * x < P->depth) b[j][x] = slots[(size_t)(i0 + j) * P->depth + lane + 32 * x];
                }
#pragma unroll
                for (int j = 0; j < PREFETCH; j++)
                    if (i0 + j <= n) cms_update(P, counts, b[j], w[j], lane);
            }
            break;
        }
        add_in_order(counts, P->width, slots, P->depth, row, n, lane);
        break;
    }
    case K_RACE:
    case K_RACE_KDE: {
        const float *planes = (const float *)(v->tables + P->table) + (size_t)h * P->rows * P->bits * v->D;
        if (P->kind == K_RACE_KDE) {
            /* one unit of query mass in each row, at the query's buckets
             * (hashed into t's slot, which the key's buckets then replace) */
            race_hash(P, planes, v->D, q, fresh, lane);
            for (int r = lane; r < P->rows; r += 32) counts[((size_t)r << P->bits) + fresh[r]] += 1.0f;
            __syncwarp();
            race_hash(P, planes, v->D, k, fresh, lane);
            break;
        }
        race_hash(P, planes, v->D, k, fresh, lane);
        __syncwarp();
        add_in_order(counts, 1 << P->bits, slots, P->rows, row, n, lane);
        break;
    }
    default: /* full, window, sink, random, tova keep no per-step state */
        break;
    }
}

/* The median of a Count Sketch estimate of depth d <= CS_SMALL in registers:
 * value r lands where the host's (stable) insertion sort puts it, at the
 * number of smaller values plus the equal ones before it, so the middle
 * values are the host's. */
enum { CS_SMALL = 8 };
__device__ static float cs_median_small(const float *counts, int width, const uint32_t *slot, int d)
{
    float x[CS_SMALL];
#pragma unroll
    for (int r = 0; r < CS_SMALL; r++)
        if (r < d) {
            const float c = counts[(size_t)r * width + (slot[r] & ~CS_NEG)];
            x[r] = slot[r] & CS_NEG ? -c : c;
        }
    float lo = 0, hi = 0; /* sorted values d/2 - 1 and d/2 */
#pragma unroll
    for (int r = 0; r < CS_SMALL; r++) {
        if (r >= d) break;
        int rank = 0;
#pragma unroll
        for (int j = 0; j < CS_SMALL; j++)
            if (j < d) rank += x[j] < x[r] || (x[j] == x[r] && j < r);
        if (rank == d / 2 - 1) lo = x[r];
        if (rank == d / 2) hi = x[r];
    }
    return d % 2 ? hi : 0.5f * (lo + hi);
}

/* Head h's score of retained index i (position pos) (method.h's score). */
__device__ static double score_head(const gpu_policy *P, const float *row, const uint32_t *slots,
                                    const uint32_t *state, int i, int pos)
{
    const float *counts = (const float *)state;
    const uint32_t *slot = slots + (size_t)i * P->words;
    switch (P->kind) {
    case K_H2O: return as_float(slot[0]);
    case K_TOVA: return row[i];
    case K_CMS: {
        float est = FLT_MAX;
#pragma unroll 4
        for (int r = 0; r < P->depth; r++) est = fminf(est, counts[(size_t)r * P->width + slot[r]]);
        return est;
    }
    case K_CS: { /* median, by the host's insertion sort */
        if (P->depth <= CS_SMALL) return cs_median_small(counts, P->width, slot, P->depth);
        float s[MAX_DEPTH];
        for (int r = 0; r < P->depth; r++) {
            const float c = counts[(size_t)r * P->width + (slot[r] & ~CS_NEG)];
            const float x = slot[r] & CS_NEG ? -c : c;
            int j = r;
            while (j > 0 && s[j - 1] > x) {
                s[j] = s[j - 1];
                j--;
            }
            s[j] = x;
        }
        const int d = P->depth;
        return d % 2 ? s[d / 2] : 0.5f * (s[d / 2 - 1] + s[d / 2]);
    }
    case K_RACE:
    case K_RACE_KDE: {
        double sum = 0;
#pragma unroll 16
        for (int r = 0; r < P->rows; r++) sum += counts[((size_t)r << P->bits) + slot[r]];
        return (float)(sum / P->rows);
    }
    default: return pos; /* full, window, sink: the oldest goes */
    }
}

__device__ static int evictable(const gpu_policy *P, int pos, int t)
{
    return !P->protects || (pos >= P->sink && pos <= t - P->recent);
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

/* Shared memory a set of policy P works in (0: its sketch stays in place).
 * A head's sketch is staged when it fits and the step touches much of it
 * with dependent updates (Count-Min's conservative update reads the row
 * minimum before each write). The RACE sketches stay in place: 32 KB a set
 * would hold seven blocks an SM, and their sums go through add_in_order's
 * grouped loads; race_kde's step adds to one bucket a row. */
static int staged_words(const gpu_policy *P)
{
    if (P->layer_sets || P->kind == K_RACE || P->kind == K_RACE_KDE || P->state_words > STAGE_WORDS_MAX) return 0;
    return (int)P->state_words;
}

/* One warp per (active stream, layer, set) of the streams items[] (indices
 * into the active streams, all of one policy; t_of: their positions), n_sets
 * in all: observe, retain t, evict. A head-granularity set's sketch or
 * generator is worked on in shared memory when it fits stage_words. Blocks of
 * several warps: an SM holds at most 32 blocks, and the ten policies' sets
 * run side by side. */
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
    const int C = v.H * v.D;
    int *kp = v.pos + v.off[list];
    int n = v.cnt[list];
    /* head h's state: staged (a single head whose state fits) or in place */
    const int stage = !P.layer_sets && P.state_words > 0 && P.state_words <= stage_words;
    uint32_t *home = v.state + v.state_off[list];
    if (stage) stage_in(staged, home, P.state_words, lane);
    __syncwarp();
#define STATE_OF(h) (stage ? staged : v.state + v.state_off[base + (h)])
    for (int h = h0; h <= h1; h++) {
        const size_t qk = ((size_t)l * v.n_active + a) * C + (size_t)h * v.D;
        observe_head(&P, &v, t, h, v.rows + v.off[base + h], v.slots + v.slot_off[base + h], STATE_OF(h),
                     v.q + qk, v.k + qk, n, lane);
        __syncwarp();
    }
    if (lane == 0) kp[n] = t;
    n++;
    __syncwarp();
    if (!P.never_evicts && n > P.budget) {
        double *score = v.scratch + v.off[list];
        if (P.kind == K_RANDOM) {
            /* the host draws per evictable position, head after head */
            for (int i = lane; i < n; i += 32) score[i] = 0;
            for (int h = h0; h <= h1; h++) draw_evictable(&P, STATE_OF(h), score, kp, n, t, lane);
            __syncwarp();
        }
        const int sketch = P.kind == K_CMS || P.kind == K_CS || P.kind == K_RACE || P.kind == K_RACE_KDE;
        if (sketch) /* estimates read counters SCORE_BATCH positions at a time, their loads together */
            for (int i0 = lane; i0 < n; i0 += 32 * SCORE_BATCH) {
                double s[SCORE_BATCH];
#pragma unroll
                for (int j = 0; j < SCORE_BATCH; j++) {
                    const int i = i0 + 32 * j;
                    s[j] = 0;
                    for (int h = h0; i < n && h <= h1; h++)
                        s[j] += score_head(&P, NULL, v.slots + v.slot_off[base + h], STATE_OF(h), i, 0);
                }
#pragma unroll
                for (int j = 0; j < SCORE_BATCH; j++)
                    if (i0 + 32 * j < n) score[i0 + 32 * j] = s[j];
            }
        double best = 0;
        int victim = -1;
        for (int i = lane; i < n; i += 32) {
            if (!evictable(&P, kp[i], t)) continue;
            double s = 0;
            if (P.kind == K_RANDOM || sketch) s = score[i];
            else
                for (int h = h0; h <= h1; h++)
                    s += score_head(&P, v.rows + v.off[base + h], v.slots + v.slot_off[base + h], STATE_OF(h), i,
                                    kp[i]);
            if (victim < 0 || s < best) victim = i, best = s;
        }
        for (int o = 16; o > 0; o >>= 1) {
            const double b2 = __shfl_xor_sync(0xffffffffu, best, o);
            const int v2 = __shfl_xor_sync(0xffffffffu, victim, o);
            if (v2 >= 0 && (victim < 0 || b2 < best || (b2 == best && v2 < victim))) victim = v2, best = b2;
        }
        /* budget >= sink + recent (ap_policy_create): there is a victim */
        remove_entry((uint32_t *)kp, 1, victim, n, lane);
        for (int h = h0; P.words && h <= h1; h++)
            remove_entry(v.slots + v.slot_off[base + h], P.words, victim, n, lane);
        n--;
    }
#undef STATE_OF
    __syncwarp();
    for (long long w = lane; stage && w < P.state_words; w += 32) home[w] = staged[w];
    if (lane == 0) v.cnt[list] = n;
    if (P.layer_sets)
        for (int h = 1; h < v.H; h++) {
            int *dst = v.pos + v.off[base + h];
            for (int i = lane; i < n; i += 32) dst[i] = kp[i];
            if (lane == 0) v.cnt[base + h] = n;
        }
}

typedef void (*observe_fn)(step_view, const int *, const int *, int, int);
static const observe_fn OBSERVE[N_KINDS] = {
    observe_kernel<K_FULL>, observe_kernel<K_WINDOW>, observe_kernel<K_SINK>, observe_kernel<K_RANDOM>,
    observe_kernel<K_H2O>,  observe_kernel<K_TOVA>,   observe_kernel<K_CMS>,  observe_kernel<K_CS>,
    observe_kernel<K_RACE>, observe_kernel<K_RACE_KDE>};

/* Warps a block of observe_kernel: up to four, within the default 48 KB of
 * shared memory for their staged sketches. */
static int observe_warps(int stage_words)
{
    const int fit = stage_words ? STAGE_WORDS_MAX / stage_words : 4;
    return fit >= 4 ? 4 : fit < 1 ? 1 : fit;
}

/* Copies layer `layer`'s lists of the active streams as the decode step left
 * them: one block per (active stream, head); positions, then the rows with t
 * last. (A stream that has ended holds no row of t: its list may be full.) */
__global__ void keep_kernel(step_view v, int layer, const int *cap, const long long *kept_off, int *kept_cnt,
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

/* ---- host ------------------------------------------------------------------- */

static int kind_of(const char *name)
{
    for (int i = 0; i < N_KINDS; i++)
        if (!strcmp(KIND_NAMES[i], name)) return i;
    return -1;
}

/* GSL's mt19937 state (gsl/rng/mt.c): what gsl_rng_state points to. */
typedef struct {
    unsigned long mt[MT_N];
    int mti;
} gsl_mt_state;

/* The per-policy tables and the head-state template a host instance drew:
 * appends to *tables (growing it) and fills *init (state_words * n_head). */
static ap_status describe(const ap_policy *host, gpu_policy *P, int n_head, int head_dim, int max_T,
                          uint32_t **tables, size_t *n_tables, uint32_t **init, ap_error *err)
{
    size_t add = 0;
    if (P->kind == K_CMS || P->kind == K_CS) add = (size_t)n_head * max_T * P->depth;
    if (P->kind == K_RACE || P->kind == K_RACE_KDE) add = (size_t)n_head * P->rows * P->bits * head_dim;
    const size_t aligned = (*n_tables + 3) / 4 * 4;
    uint32_t *grown = (uint32_t *)realloc(*tables, (aligned + add + 1) * sizeof **tables);
    if (grown) memset(grown + *n_tables, 0, (aligned - *n_tables) * sizeof *grown);
    *n_tables = aligned;
    *init = P->state_words ? (uint32_t *)calloc((size_t)n_head * P->state_words, sizeof **init) : NULL;
    if (grown) *tables = grown;
    if (!grown || (P->state_words && !*init)) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    P->table = (long long)*n_tables; /* a multiple of 4: hyperplanes are read as float4 */
    uint32_t *out = *tables + *n_tables;
    for (int h = 0; h < n_head; h++) {
        void *st = ap_policy_head_state(host, h);
        if (P->kind == K_CMS)
            for (int t = 0; t < max_T; t++)
                ap_cms_buckets((const ap_cms *)st, (uint64_t)t, out + ((size_t)h * max_T + t) * P->depth);
        if (P->kind == K_CS)
            for (int t = 0; t < max_T; t++)
                ap_cs_buckets((const ap_count_sketch *)st, (uint64_t)t, out + ((size_t)h * max_T + t) * P->depth);
        if (P->kind == K_RACE || P->kind == K_RACE_KDE) {
            const size_t n = (size_t)P->rows * P->bits * head_dim;
            memcpy(out + h * n, ((const ap_race *)st)->planes, n * sizeof(float));
        }
        if (P->kind == K_RANDOM) {
            const gsl_mt_state *mt = (const gsl_mt_state *)gsl_rng_state((const gsl_rng *)st);
            uint32_t *w = *init + (size_t)h * P->state_words;
            for (int i = 0; i < MT_N; i++) w[i] = (uint32_t)mt->mt[i];
            w[MT_N] = (uint32_t)mt->mti;
        }
    }
    *n_tables += add;
    return AP_OK;
}

static ap_status make_policy(const ap_policy_params *p, int n_head, int head_dim, int max_T, gpu_policy *P,
                             uint32_t **tables, size_t *n_tables, uint32_t **init, ap_error *err)
{
    ap_policy *host;
    ap_status st = ap_policy_create(p, n_head, head_dim, &host, err);
    if (st) return st;
    const ap_policy_method *m = ap_policy_method_of(host);
    memset(P, 0, sizeof *P);
    P->kind = kind_of(p->name);
    if (P->kind < 0) {
        ap_policy_free(host);
        return ap_error_set(err, AP_ERR_USAGE, "policy %s has no device implementation", p->name);
    }
    P->never_evicts = m->never_evicts;
    P->protects = m->protects;
    P->layer_sets = p->granularity == AP_GRAN_LAYER;
    P->words = m->slot_words(p);
    P->budget = p->budget, P->sink = p->sink, P->recent = p->recent;
    P->depth = p->depth, P->width = p->width, P->conservative = p->conservative;
    P->rows = p->race_rows, P->bits = p->race_bits;
    if (P->kind == K_CMS || P->kind == K_CS) P->state_words = (long long)p->depth * p->width;
    if (P->kind == K_RACE || P->kind == K_RACE_KDE) P->state_words = (long long)p->race_rows << p->race_bits;
    if (P->kind == K_RANDOM) P->state_words = MT_WORDS;
    st = describe(host, P, n_head, head_dim, max_T, tables, n_tables, init, err);
    ap_policy_free(host);
    return st;
}

void ap_policy_gpu_free(ap_policy_gpu *g)
{
    if (!g) return;
    step_view *v = &g->v;
    cudaFree((void *)v->off), cudaFree(v->cnt), cudaFree(v->pos), cudaFree((void *)v->rows);
    cudaFree((void *)v->q), cudaFree((void *)v->k), cudaFree((void *)v->slot_off), cudaFree((void *)v->state_off);
    cudaFree(v->slots), cudaFree(v->state), cudaFree((void *)v->tables), cudaFree(v->scratch);
    cudaFree((void *)v->stream_policy), cudaFree((void *)v->policies), cudaFree(g->d_active);
    cudaFree(g->d_items);
    for (int p = 0; p < g->n_policy; p++) {
        if (g->policy_stream && g->policy_stream[p]) cudaStreamDestroy(g->policy_stream[p]);
        if (g->policy_done && g->policy_done[p]) cudaEventDestroy(g->policy_done[p]);
    }
    if (g->kept_copied) { /* a queued copy may still write the pinned buffers freed below */
        cudaEventSynchronize(g->kept_copied);
        cudaEventDestroy(g->kept_copied);
    }
    if (g->fork) cudaEventDestroy(g->fork);
    free(g->policy_stream), free(g->policy_done);
    free(g->h_param), free(g->stage_words), free(g->kind), free(g->h_active), free(g->h_items), free(g->first), free(g->count);
    free(g->kept_layer), free(g->h_kept_off);
    cudaFree(g->d_kept_off), cudaFree(g->d_cap), cudaFree(g->d_kept_cnt), cudaFree(g->d_kept_pos);
    cudaFree(g->d_kept_rows);
    cudaFreeHost(g->h_kept_cnt), cudaFreeHost(g->h_kept_pos), cudaFreeHost(g->h_kept_rows);
    free(g->h_off);
    free(g->h_cap), free(g->h_keeps_all);
    free(g);
}

/* cudaMalloc + copy of n bytes from host (or zeros when host is NULL). */
static cudaError_t upload(void **dst, const void *host, size_t n)
{
    cudaError_t e = cudaMalloc(dst, n ? n : 1);
    if (e != cudaSuccess) return e;
    return host ? cudaMemcpy(*dst, host, n, cudaMemcpyHostToDevice) : cudaMemset(*dst, 0, n ? n : 1);
}

ap_status ap_policy_gpu_create(const ap_policy_params *params, int n_params, const int *stream_param,
                               const int *stream_len, int n_stream, int n_layer, int n_head, int head_dim,
                               ap_policy_gpu **out, ap_error *err)
{
    *out = NULL;
    ap_policy_gpu *g = (ap_policy_gpu *)calloc(1, sizeof *g);
    if (!g) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    g->n_stream = n_stream, g->L = n_layer, g->H = n_head, g->D = head_dim;
    for (int s = 0; s < n_stream; s++) g->max_T = stream_len[s] > g->max_T ? stream_len[s] : g->max_T;
    const int LH = n_layer * n_head;
    g->n_lists = n_stream * LH;
    gpu_policy *pols = (gpu_policy *)calloc((size_t)n_params, sizeof *pols);
    uint32_t **init = (uint32_t **)calloc((size_t)n_params, sizeof *init), *tables = NULL;
    size_t n_tables = 0;
    long long *slot_off = (long long *)malloc(((size_t)g->n_lists + 1) * sizeof *slot_off);
    long long *state_off = (long long *)malloc(((size_t)g->n_lists + 1) * sizeof *state_off);
    g->h_off = (int *)malloc(((size_t)g->n_lists + 1) * sizeof *g->h_off);
    g->n_policy = n_params;
    g->h_param = (int *)malloc((size_t)n_stream * sizeof *g->h_param);
    g->stage_words = (int *)calloc((size_t)n_params, sizeof *g->stage_words);
    g->kind = (int *)calloc((size_t)n_params, sizeof *g->kind);
    g->policy_stream = (cudaStream_t *)calloc((size_t)n_params, sizeof *g->policy_stream);
    g->policy_done = (cudaEvent_t *)calloc((size_t)n_params, sizeof *g->policy_done);
    g->h_cap = (int *)malloc((size_t)n_stream * sizeof *g->h_cap);
    g->h_keeps_all = (int *)malloc((size_t)n_stream * sizeof *g->h_keeps_all);
    g->h_active = (int *)malloc((size_t)n_stream * sizeof *g->h_active);
    g->h_items = (int *)malloc((size_t)n_stream * sizeof *g->h_items);
    g->first = (int *)calloc((size_t)n_params, sizeof *g->first);
    g->count = (int *)calloc((size_t)n_params, sizeof *g->count);
    uint32_t *state = NULL;
    ap_status st = AP_OK;
    if (!pols || !init || !slot_off || !state_off || !g->h_off || !g->h_cap || !g->h_keeps_all || !g->h_param ||
        !g->stage_words || !g->kind ||
        !g->policy_stream || !g->policy_done || !g->h_active || !g->h_items || !g->first || !g->count) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        goto done;
    }
    for (int p = 0; p < n_params && !st; p++)
        st = make_policy(&params[p], n_head, head_dim, g->max_T, &pols[p], &tables, &n_tables, &init[p], err);
    if (st) goto done;
    {
        /* A list holds the retained positions plus t: budget + 1, or the
         * whole stream for a policy that never evicts. */
        long long at = 0, slot_at = 0, state_at = 0;
        for (int s = 0; s < n_stream; s++) {
            const gpu_policy *P = &pols[stream_param[s]];
            g->h_keeps_all[s] = P->never_evicts || P->budget >= stream_len[s];
            const int cap = g->h_keeps_all[s] ? stream_len[s] : P->budget + 1;
            g->h_cap[s] = cap;
            for (int i = 0; i < LH; i++) {
                const int list = s * LH + i;
                g->h_off[list] = (int)at, slot_off[list] = slot_at, state_off[list] = state_at;
                at += cap, slot_at += (long long)cap * P->words, state_at += P->state_words;
            }
        }
        if (at > 0x7fffffff) {
            st = ap_error_set(err, AP_ERR_USAGE, "cascade on the GPU: %lld retained positions exceed 2^31", at);
            goto done;
        }
        g->h_off[g->n_lists] = (int)at, slot_off[g->n_lists] = slot_at, state_off[g->n_lists] = state_at;
        if (!(state = (uint32_t *)calloc((size_t)state_at + 1, sizeof *state))) {
            st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
            goto done;
        }
        for (int s = 0; s < n_stream; s++) {
            const gpu_policy *P = &pols[stream_param[s]];
            const uint32_t *tmpl = init[stream_param[s]];
            for (int i = 0; tmpl && i < LH; i++)
                memcpy(state + state_off[s * LH + i], tmpl + (size_t)(i % n_head) * P->state_words,
                       (size_t)P->state_words * sizeof *state);
        }
        step_view *v = &g->v;
        const size_t C = (size_t)n_head * head_dim;
        v->L = n_layer, v->H = n_head, v->D = head_dim, v->max_T = g->max_T;
        CUDA_TRY(cudaEventCreateWithFlags(&g->fork, cudaEventDisableTiming), "creating an event");
        CUDA_TRY(cudaEventCreateWithFlags(&g->kept_copied, cudaEventDisableTiming), "creating an event");
        for (int p = 0; p < n_params; p++) {
            CUDA_TRY(cudaStreamCreate(&g->policy_stream[p]), "creating a stream for a policy");
            CUDA_TRY(cudaEventCreateWithFlags(&g->policy_done[p], cudaEventDisableTiming), "creating an event");
        }
        CUDA_TRY(upload((void **)&v->off, g->h_off, ((size_t)g->n_lists + 1) * sizeof(int)), "uploading list offsets");
        CUDA_TRY(upload((void **)&v->cnt, NULL, (size_t)g->n_lists * sizeof(int)), "allocating list lengths");
        CUDA_TRY(upload((void **)&v->pos, NULL, (size_t)at * sizeof(int)), "allocating retained positions");
        CUDA_TRY(upload((void **)&v->rows, NULL, (size_t)at * sizeof(float)), "allocating attention rows");
        CUDA_TRY(upload((void **)&v->scratch, NULL, (size_t)at * sizeof(double)), "allocating scores");
        CUDA_TRY(upload((void **)&v->q, NULL, (size_t)n_layer * n_stream * C * sizeof(float)), "allocating queries");
        CUDA_TRY(upload((void **)&v->k, NULL, (size_t)n_layer * n_stream * C * sizeof(float)), "allocating keys");
        CUDA_TRY(upload((void **)&v->slot_off, slot_off, ((size_t)g->n_lists + 1) * sizeof(long long)),
                 "uploading slot offsets");
        CUDA_TRY(upload((void **)&v->state_off, state_off, ((size_t)g->n_lists + 1) * sizeof(long long)),
                 "uploading state offsets");
        CUDA_TRY(upload((void **)&v->slots, NULL, (size_t)slot_at * sizeof(uint32_t)), "allocating slots");
        CUDA_TRY(upload((void **)&v->state, state, (size_t)state_at * sizeof(uint32_t)), "uploading sketches");
        CUDA_TRY(upload((void **)&v->tables, tables, n_tables * sizeof(uint32_t)), "uploading hash tables");
        CUDA_TRY(upload((void **)&v->stream_policy, stream_param, (size_t)n_stream * sizeof(int)),
                 "uploading stream policies");
        CUDA_TRY(upload((void **)&v->policies, pols, (size_t)n_params * sizeof *pols), "uploading policies");
        CUDA_TRY(upload((void **)&g->d_active, NULL, (size_t)n_stream * sizeof(int)), "allocating active streams");
        v->active = g->d_active;
        for (int p = 0; p < n_params; p++) g->stage_words[p] = staged_words(&pols[p]), g->kind[p] = pols[p].kind;
        memcpy(g->h_param, stream_param, (size_t)n_stream * sizeof(int));
        CUDA_TRY(upload((void **)&g->d_items, NULL, (size_t)n_stream * sizeof(int)), "allocating work lists");
        CUDA_TRY(upload((void **)&g->d_cap, g->h_cap, (size_t)n_stream * sizeof(int)), "uploading capacities");
        g->buf = (ap_policy_gpu_buffers){v->off, v->cnt, v->pos, (float *)v->rows, (float *)v->q, (float *)v->k};
    }
done:
    for (int p = 0; init && p < n_params; p++) free(init[p]);
    free(init), free(pols), free(tables), free(slot_off), free(state_off), free(state);
    if (st) ap_policy_gpu_free(g);
    else *out = g;
    return st;
}

const ap_policy_gpu_buffers *ap_policy_gpu_buffers_of(const ap_policy_gpu *g) { return &g->buf; }
int ap_policy_gpu_list_base(const ap_policy_gpu *g, int stream) { return stream * g->L * g->H; }
int ap_policy_gpu_keeps_all(const ap_policy_gpu *g, int stream) { return g->h_keeps_all[stream]; }
int ap_policy_gpu_capacity(const ap_policy_gpu *g, int stream) { return g->h_cap[stream]; }

ap_status ap_policy_gpu_begin_step(ap_policy_gpu *g, const int *active, int n_active, long long *key,
                                   ap_error *err)
{
    if (n_active != g->n_active || memcmp(active, g->h_active, (size_t)n_active * sizeof *active)) {
        /* a new set of streams (the first step, or one has ended) */
        int n_items = 0;
        for (int p = 0; p < g->n_policy; p++) {
            g->first[p] = n_items;
            for (int a = 0; a < n_active; a++)
                if (g->h_param[active[a]] == p) g->h_items[n_items++] = a;
            g->count[p] = n_items - g->first[p];
        }
        memcpy(g->h_active, active, (size_t)n_active * sizeof *active);
        g->n_active = g->v.n_active = n_active;
        CUDA_TRY(cudaMemcpy(g->d_active, active, (size_t)n_active * sizeof(int), cudaMemcpyHostToDevice),
                 "copying the active streams");
        CUDA_TRY(cudaMemcpy(g->d_items, g->h_items, (size_t)n_items * sizeof(int), cudaMemcpyHostToDevice),
                 "copying the work lists");
        g->key = next_key();
    }
    *key = g->key;
    return AP_OK;
}

ap_status ap_policy_gpu_enqueue(ap_policy_gpu *g, void *stream, const int *t_of, ap_error *err)
{
    cudaStream_t origin = (cudaStream_t)stream;
    g->origin = origin;
    for (int i = 0; i < g->n_kept; i++) {
        const size_t at = (size_t)i * g->kept_total;
        keep_kernel<<<(unsigned)g->n_active * g->H, 128, 0, origin>>>(g->v, g->kept_layer[i], g->d_cap, g->d_kept_off,
                                                                   g->d_kept_cnt + (size_t)i * g->n_stream * g->H,
                                                                   g->d_kept_pos + at, g->d_kept_rows + at);
        KERNEL_TRY("keeping a layer's retained sets");
    }
    /* one launch per policy, each with the shared memory its sets need, side by side */
    CUDA_TRY(cudaEventRecord(g->fork, origin), "ordering the policy updates");
    for (int p = 0; p < g->n_policy; p++) {
        if (!g->count[p]) continue;
        cudaStream_t ps = g->policy_stream[p];
        CUDA_TRY(cudaStreamWaitEvent(ps, g->fork, 0), "ordering the policy updates");
        const int sets = g->count[p] * g->L * g->H, warps = observe_warps(g->stage_words[p]);
        OBSERVE[g->kind[p]]<<<(unsigned)((sets + warps - 1) / warps), 32 * warps,
                              (size_t)warps * g->stage_words[p] * sizeof(uint32_t), ps>>>(
            g->v, t_of, g->d_items + g->first[p], g->stage_words[p], sets);
        KERNEL_TRY("launching the policy updates");
        CUDA_TRY(cudaEventRecord(g->policy_done[p], ps), "ordering the policy updates");
        CUDA_TRY(cudaStreamWaitEvent(origin, g->policy_done[p], 0), "ordering the policy updates");
    }
    return AP_OK;
}

ap_status ap_policy_gpu_keep_layers(ap_policy_gpu *g, const int *layers, int n, ap_error *err)
{
    if (g->n_kept || n < 1) return ap_error_set(err, AP_ERR_USAGE, "keep_layers: called twice or with no layer");
    if (!(g->kept_layer = (int *)malloc((size_t)n * sizeof(int))) ||
        !(g->h_kept_off = (long long *)malloc((size_t)g->n_stream * sizeof(long long))))
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    memcpy(g->kept_layer, layers, (size_t)n * sizeof(int));
    g->n_kept = n;
    for (int s = 0; s < g->n_stream; s++) {
        g->h_kept_off[s] = g->kept_total;
        g->kept_total += (long long)g->H * g->h_cap[s];
    }
    const size_t counts = (size_t)n * g->n_stream * g->H, entries = (size_t)n * g->kept_total;
    CUDA_TRY(upload((void **)&g->d_kept_off, g->h_kept_off, (size_t)g->n_stream * sizeof(long long)),
             "uploading kept offsets");
    CUDA_TRY(cudaMalloc((void **)&g->d_kept_cnt, counts * sizeof(int)), "allocating kept sets");
    CUDA_TRY(cudaMalloc((void **)&g->d_kept_pos, entries * sizeof(int)), "allocating kept sets");
    CUDA_TRY(cudaMalloc((void **)&g->d_kept_rows, entries * sizeof(float)), "allocating kept sets");
    CUDA_TRY(cudaMallocHost((void **)&g->h_kept_cnt, counts * sizeof(int)), "allocating kept sets");
    CUDA_TRY(cudaMallocHost((void **)&g->h_kept_pos, entries * sizeof(int)), "allocating kept sets");
    CUDA_TRY(cudaMallocHost((void **)&g->h_kept_rows, entries * sizeof(float)), "allocating kept sets");
    return AP_OK;
}

ap_status ap_policy_gpu_fetch_kept(ap_policy_gpu *g, ap_error *err)
{
    if (!g->origin) return ap_error_set(err, AP_ERR_RUNTIME, "fetch_kept: no decode step has run");
    const size_t counts = (size_t)g->n_kept * g->n_stream * g->H, entries = (size_t)g->n_kept * g->kept_total;
    CUDA_TRY(cudaMemcpyAsync(g->h_kept_cnt, g->d_kept_cnt, counts * sizeof(int), cudaMemcpyDeviceToHost, g->origin),
             "reading kept counts");
    CUDA_TRY(cudaMemcpyAsync(g->h_kept_pos, g->d_kept_pos, entries * sizeof(int), cudaMemcpyDeviceToHost, g->origin),
             "reading kept positions");
    CUDA_TRY(cudaMemcpyAsync(g->h_kept_rows, g->d_kept_rows, entries * sizeof(float), cudaMemcpyDeviceToHost,
                             g->origin),
             "reading kept attention rows");
    CUDA_TRY(cudaEventRecord(g->kept_copied, g->origin), "marking the kept sets' copies");
    return AP_OK;
}

ap_status ap_policy_gpu_wait_kept(ap_policy_gpu *g, ap_error *err)
{
    CUDA_TRY(cudaEventSynchronize(g->kept_copied), "waiting for the kept sets' copies");
    return AP_OK;
}

int ap_policy_gpu_kept(const ap_policy_gpu *g, int stream, int which, int head, const int **pos,
                       const float **rows)
{
    const size_t at = (size_t)which * g->kept_total + (size_t)g->h_kept_off[stream] + (size_t)head * g->h_cap[stream];
    *pos = g->h_kept_pos + at;
    *rows = g->h_kept_rows + at;
    return g->h_kept_cnt[((size_t)which * g->n_stream + stream) * g->H + head];
}

ap_status ap_policy_gpu_counts(ap_policy_gpu *g, int *cnt, ap_error *err)
{
    CUDA_TRY(cudaMemcpy(cnt, g->v.cnt, (size_t)g->n_lists * sizeof(int), cudaMemcpyDeviceToHost),
             "reading retained counts");
    return AP_OK;
}
