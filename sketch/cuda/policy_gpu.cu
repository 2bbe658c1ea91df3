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

#include "observe.cuh"

/* The policies the device runs (observe.cuh's kinds, in order); the
 * registry marks them on_device (test_registry checks both agree). */
static const char *const KIND_NAMES[] = {"full", "window", "sink",         "random", "h2o",      "tova",
                                         "cms",  "count_sketch", "race", "race_kde", "knorm", "snapkv"};
enum { N_KINDS = sizeof KIND_NAMES / sizeof KIND_NAMES[0] };

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

/* Shared memory a set of policy P works in (0: its sketch stays in place).
 * A head's sketch is staged when it fits and the step touches much of it
 * with dependent updates (Count-Min's conservative update reads the row
 * minimum before each write). The RACE sketches stay in place: 32 KB a set
 * would hold seven blocks an SM, and their sums go through add_in_order (a
 * lane a position); race_kde's step adds to one bucket a row. */
static int staged_words(const gpu_policy *P)
{
    if (P->layer_sets || P->kind == K_RACE || P->kind == K_RACE_KDE || P->state_words > STAGE_WORDS_MAX) return 0;
    return (int)P->state_words;
}

typedef void (*observe_fn)(step_view, const int *, const int *, int, int);
static const observe_fn OBSERVE[N_KINDS] = {
    observe_kernel<K_FULL>, observe_kernel<K_WINDOW>, observe_kernel<K_SINK>, observe_kernel<K_RANDOM>,
    observe_kernel<K_H2O>,  observe_kernel<K_TOVA>,   observe_kernel<K_CMS>,  observe_kernel<K_CS>,
    observe_kernel<K_RACE>, observe_kernel<K_RACE_KDE>, observe_kernel<K_KNORM>, observe_kernel<K_SNAPKV>};

/* Warps a block of observe_kernel: up to four, within the default 48 KB of
 * shared memory for their staged sketches. */
static int observe_warps(int stage_words)
{
    const int fit = stage_words ? STAGE_WORDS_MAX / stage_words : 4;
    return fit >= 4 ? 4 : fit < 1 ? 1 : fit;
}

/* ---- host ------------------------------------------------------------------- */

static int kind_of(const char *name)
{
    for (int i = 0; i < N_KINDS; i++)
        if (!strcmp(KIND_NAMES[i], name)) return i;
    return -1;
}

int ap_policy_gpu_runs(const char *name) { return kind_of(name) >= 0; }

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
    if (P->kind < 0 || !ap_policy_params_on_device(p)) {
        ap_policy_free(host);
        return ap_error_set(err, AP_ERR_USAGE, "policy %s has no device implementation", p->name);
    }
    P->never_evicts = m->info.never_evicts;
    P->protects = m->info.protects;
    P->layer_sets = p->granularity == AP_GRAN_LAYER;
    P->words = m->slot_words ? m->slot_words(p) : 0;
    P->budget = p->budget, P->sink = p->sink, P->recent = p->recent;
    /* the sketches' shapes, by the registry's names (sketch/policies/counters.h) */
    ap_policy_param_get(p, "depth", &P->depth), ap_policy_param_get(p, "width", &P->width);
    ap_policy_param_get(p, "conservative", &P->conservative);
    ap_policy_param_get(p, "race_rows", &P->rows), ap_policy_param_get(p, "race_bits", &P->bits);
    ap_policy_param_get(p, "window", &P->window), ap_policy_param_get(p, "kernel", &P->kernel);
    ap_policy_param_get(p, "max_pool", &P->max_pool);
    if (P->kind == K_CMS || P->kind == K_CS) P->state_words = (long long)P->depth * P->width;
    if (P->kind == K_RACE || P->kind == K_RACE_KDE) P->state_words = (long long)P->rows << P->bits;
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

/* Each list of policy p's streams starts from its head's template,
 * tmpl[(list % H) * words ...]. */
__global__ void fill_state_kernel(step_view v, int p, const uint32_t *tmpl, long long words)
{
    const int list = blockIdx.x, LH = v.L * v.H;
    if (v.stream_policy[list / LH] != p) return;
    uint32_t *dst = v.state + v.state_off[list];
    const uint32_t *src = tmpl + (size_t)(list % v.H) * words;
    for (long long w = threadIdx.x; w < words; w += blockDim.x) dst[w] = src[w];
}

/* Policy p's initial states, on the device (the state starts zeroed: only
 * a template with a non-zero word, a generator's, is copied). */
static ap_status fill_state(ap_policy_gpu *g, int p, const gpu_policy *P, const uint32_t *tmpl, ap_error *err)
{
    const size_t n = (size_t)g->H * P->state_words;
    size_t nonzero = 0;
    while (tmpl && nonzero < n && !tmpl[nonzero]) nonzero++;
    if (!tmpl || nonzero == n || !g->n_lists) return AP_OK;
    uint32_t *d_tmpl = NULL;
    cudaError_t e = upload((void **)&d_tmpl, tmpl, n * sizeof *tmpl);
    if (e == cudaSuccess) {
        fill_state_kernel<<<(unsigned)g->n_lists, 128>>>(g->v, p, d_tmpl, P->state_words);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    cudaFree(d_tmpl);
    CUDA_TRY(e, "filling a policy's initial states");
    return AP_OK;
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
        CUDA_TRY(upload((void **)&v->state, NULL, (size_t)state_at * sizeof(uint32_t)), "allocating sketches");
        CUDA_TRY(upload((void **)&v->tables, tables, n_tables * sizeof(uint32_t)), "uploading hash tables");
        CUDA_TRY(upload((void **)&v->stream_policy, stream_param, (size_t)n_stream * sizeof(int)),
                 "uploading stream policies");
        CUDA_TRY(upload((void **)&v->policies, pols, (size_t)n_params * sizeof *pols), "uploading policies");
        for (int p = 0; p < n_params; p++)
            if ((st = fill_state(g, p, &pols[p], init[p], err))) goto done;
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
    free(init), free(pols), free(tables), free(slot_off), free(state_off);
    if (st) ap_policy_gpu_free(g);
    else *out = g;
    return st;
}

const ap_policy_gpu_buffers *ap_policy_gpu_buffers_of(const ap_policy_gpu *g) { return &g->buf; }
int ap_policy_gpu_list_base(const ap_policy_gpu *g, int stream) { return stream * g->L * g->H; }
int ap_policy_gpu_keeps_all(const ap_policy_gpu *g, int stream) { return g->h_keeps_all[stream]; }
int ap_policy_gpu_capacity(const ap_policy_gpu *g, int stream) { return g->h_cap[stream]; }
const struct ap_step_view *ap_policy_gpu_view(const ap_policy_gpu *g) { return &g->v; }
int ap_policy_gpu_kind(const ap_policy_gpu *g, int p) { return g->kind[p]; }

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
