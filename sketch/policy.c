/* policy.c — the shared base of every eviction policy: the registry's
 * lookups, parameters and budget allocation, retained sets, per-position
 * slots, sink/recent protection and lowest-score eviction. The methods (the
 * files in policies/) only ingest steps and score positions. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policies/method.h"
#include "policy.h"

struct ap_policy {
    ap_policy_params params;
    const ap_policy_method *m;
    int n_head, head_dim, n_sets, words; /* words: slot words per position */
    int pooled;           /* adakv: the heads share one budget of n_head x budget */
    void **state;         /* [n_head] method state */
    int **kept;           /* [n_sets][cap] ascending positions */
    int *n_kept;          /* [n_sets] */
    int cap;              /* capacity of each kept list */
    int *evicted;         /* [n_sets] */
    int seen;             /* positions observed (a selecting policy holds them all) */
    ap_slot_word **slots; /* [n_head][cap * words], aligned with its set's kept list */
    ap_step *steps;       /* [n_head] this step's views */
    double *scores;       /* [n_sets][cap] this step's scores */
    double *head_scores;  /* [cap] one head's, from score_all */
};

/* ---- the registry ---------------------------------------------------------- */

int ap_policy_count(void) { return ap_policy_registry_size; }

const ap_policy_info *ap_policy_info_at(int i)
{
    return i >= 0 && i < ap_policy_registry_size ? &ap_policy_registry[i]->info : NULL;
}

static const ap_policy_method *find_method(const char *name)
{
    for (int i = 0; i < ap_policy_registry_size; i++)
        if (strcmp(ap_policy_registry[i]->info.name, name) == 0) return ap_policy_registry[i];
    return NULL;
}

const ap_policy_info *ap_policy_find(const char *name)
{
    const ap_policy_method *m = find_method(name);
    return m ? &m->info : NULL;
}

int ap_policy_n_params(const ap_policy_info *info)
{
    int n = 0;
    while (n < AP_POLICY_MAX_PARAMS && info->params[n].name) n++;
    return n;
}

const char *ap_policy_names(void)
{
    static _Thread_local char names[1024]; /* built once a thread: error messages read it */
    if (!names[0])
        for (int i = 0; i < ap_policy_registry_size; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "",
                     ap_policy_registry[i]->info.name);
    return names;
}

int ap_policy_known(const char *name) { return find_method(name) != NULL; }

/* ---- parameters ------------------------------------------------------------ */

void ap_policy_params_default(ap_policy_params *p, const char *name)
{
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->budget = 64;
    p->sink = 4;
    p->recent = 16;
    p->granularity = AP_GRAN_HEAD;
    p->seed = 1;
    p->allocate = AP_ALLOC_UNIFORM;
    p->beta = 20;
    p->alpha = 0.2;
    p->quant = (ap_quant){0, 32, 32};
    const ap_policy_info *info = ap_policy_find(name);
    for (int i = 0; info && i < ap_policy_n_params(info); i++) p->value[i] = info->params[i].def;
}

static int param_index(const ap_policy_params *p, const char *name)
{
    const ap_policy_info *info = ap_policy_find(p->name);
    for (int i = 0; info && i < ap_policy_n_params(info); i++)
        if (!strcmp(info->params[i].name, name)) return i;
    return -1;
}

int ap_policy_param_get(const ap_policy_params *p, const char *name, int *value)
{
    const int i = param_index(p, name);
    if (i >= 0) *value = p->value[i];
    return i >= 0;
}

int ap_policy_param_set(ap_policy_params *p, const char *name, int value)
{
    const int i = param_index(p, name);
    if (i >= 0) p->value[i] = value;
    return i >= 0;
}

/* PyramidKV (Cai et al., "PyramidKV: Dynamic KV Cache Compression based on
 * Pyramidal Information Funneling", 2024): the evictable part of the budget
 * falls linearly from 2E − E/β at layer 0 to E/β at the last, E the uniform
 * one; rounded by largest remainders so that the layers' sum is exactly
 * n_layer x budget (docs/policies.md). */
void ap_policy_params_at_layer(const ap_policy_params *p, int layer, int n_layer, ap_policy_params *out)
{
    *out = *p;
    const ap_policy_info *info = ap_policy_find(p->name);
    if (p->allocate != AP_ALLOC_PYRAMID || n_layer < 2 || !info || info->never_evicts) return;
    const int protect = info->protects ? p->sink + p->recent : 0;
    const double E = p->budget - protect, lo = E / p->beta, hi = 2 * E - lo;
    int floor_sum = 0, mine = 0, rank = 0;
    double my_frac = 0;
    for (int l = 0; l < n_layer; l++) {
        const double e = hi - (hi - lo) * l / (n_layer - 1);
        floor_sum += (int)floor(e);
        if (l == layer) mine = (int)floor(e), my_frac = e - floor(e);
    }
    /* the layers with larger remainders (the lower layer on ties) get one more */
    for (int l = 0; l < n_layer; l++) {
        const double e = hi - (hi - lo) * l / (n_layer - 1), frac = e - floor(e);
        rank += frac > my_frac || (frac == my_frac && l < layer);
    }
    const int extra = (int)llround(E * n_layer) - floor_sum;
    out->budget = protect + mine + (rank < extra);
    if (out->budget < 1) out->budget = 1;
}

size_t ap_policy_counter_bytes(const ap_policy_params *p)
{
    const ap_policy_method *m = find_method(p->name);
    return m && m->counter_bytes ? m->counter_bytes(p) : 0;
}

ap_status ap_policy_params_fit_counters(ap_policy_params *p, size_t bytes_per_head, ap_error *err)
{
    const ap_policy_method *m = find_method(p->name);
    return m && m->fit_counters ? m->fit_counters(p, bytes_per_head, err) : AP_OK;
}

int ap_policy_params_on_device(const ap_policy_params *p)
{
    const ap_policy_info *info = ap_policy_find(p->name);
    return info && info->on_device && p->allocate == AP_ALLOC_UNIFORM && p->quant.bits == 0;
}

/* ---- lifetime -------------------------------------------------------------- */

void ap_policy_free(ap_policy *p)
{
    if (!p) return;
    for (int h = 0; p->state && h < p->n_head; h++)
        if (p->state[h] && p->m->free) p->m->free(p->state[h]);
    for (int s = 0; p->kept && s < p->n_sets; s++) free(p->kept[s]);
    for (int h = 0; p->slots && h < p->n_head; h++) free(p->slots[h]);
    free(p->state), free(p->kept), free(p->slots), free(p->n_kept), free(p->evicted);
    free(p->steps), free(p->scores), free(p->head_scores), free(p);
}

static ap_status check_params(const ap_policy_method *m, const ap_policy_params *params, int n_head, int head_dim,
                              ap_error *err)
{
    const ap_policy_info *info = &m->info;
    if (n_head < 1 || head_dim < 1)
        return ap_error_set(err, AP_ERR_USAGE, "policy %s: n_head %d and head_dim %d must be >= 1",
                            params->name, n_head, head_dim);
    if (params->budget < 1 || params->sink < 0 || params->recent < 0)
        return ap_error_set(err, AP_ERR_USAGE, "policy %s: budget %d must be >= 1, sink %d and recent %d >= 0",
                            params->name, params->budget, params->sink, params->recent);
    if (info->protects && !info->never_evicts && params->budget < params->sink + params->recent)
        return ap_error_set(err, AP_ERR_USAGE,
                            "policy %s: budget %d must be at least sink + recent (%d + %d), "
                            "or nothing would be evictable",
                            params->name, params->budget, params->sink, params->recent);
    for (int i = 0; i < ap_policy_n_params(info); i++) {
        const ap_policy_param *d = &info->params[i];
        if (params->value[i] < d->lo || params->value[i] > d->hi)
            return ap_error_set(err, AP_ERR_USAGE, "policy %s: %s %d (accepted: %d..%d)", params->name, d->name,
                                params->value[i], d->lo, d->hi);
    }
    if (params->allocate == AP_ALLOC_PYRAMID && !(params->beta >= 1))
        return ap_error_set(err, AP_ERR_USAGE, "policy %s: pyramid beta %g (accepted: >= 1)", params->name,
                            params->beta);
    if (params->allocate == AP_ALLOC_ADAKV) {
        if (info->never_evicts || info->selects || params->granularity == AP_GRAN_LAYER)
            return ap_error_set(err, AP_ERR_USAGE, "policy %s: adakv shares a layer's budget among heads that "
                                "evict (accepted: an evicting policy at granularity head)", params->name);
        if (!(params->alpha >= 0 && params->alpha <= 1))
            return ap_error_set(err, AP_ERR_USAGE, "policy %s: adakv alpha %g (accepted: 0..1)", params->name,
                                params->alpha);
    }
    const ap_quant *q = &params->quant;
    if ((q->bits != 0 && q->bits != 2 && q->bits != 4 && q->bits != 8) || q->group < 1 || q->group > 4096 ||
        q->residual < 0)
        return ap_error_set(err, AP_ERR_USAGE, "policy %s: quantisation bits %d, group %d, residual %d (accepted: "
                            "bits 0, 2, 4 or 8; group 1..4096; residual >= 0)", params->name, q->bits, q->group,
                            q->residual);
    return AP_OK;
}

ap_status ap_policy_create(const ap_policy_params *params, int n_head, int head_dim, ap_policy **out,
                           ap_error *err)
{
    *out = NULL;
    const ap_policy_method *m = find_method(params->name);
    if (!m)
        return ap_error_set(err, AP_ERR_USAGE, "unknown policy '%s' (accepted: %s)", params->name,
                            ap_policy_names());
    ap_status st = check_params(m, params, n_head, head_dim, err);
    if (st) return st;
    ap_policy *p = calloc(1, sizeof *p);
    if (!p) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    p->params = *params;
    p->m = m;
    p->n_head = n_head;
    p->head_dim = head_dim;
    p->n_sets = params->granularity == AP_GRAN_LAYER ? 1 : n_head;
    p->pooled = params->allocate == AP_ALLOC_ADAKV;
    p->words = m->slot_words ? m->slot_words(params) : 0;
    /* full never evicts: its sets grow to the sequence, so they grow on
     * demand; a pooled head may hold the whole layer's budget */
    p->cap = (p->pooled ? n_head : 1) * params->budget + 1;
    p->state = calloc((size_t)n_head, sizeof *p->state);
    p->kept = calloc((size_t)p->n_sets, sizeof *p->kept);
    p->n_kept = calloc((size_t)p->n_sets, sizeof *p->n_kept);
    p->evicted = malloc((size_t)p->n_sets * sizeof *p->evicted);
    p->slots = calloc((size_t)n_head, sizeof *p->slots);
    p->steps = malloc((size_t)n_head * sizeof *p->steps);
    p->scores = malloc((size_t)p->n_sets * p->cap * sizeof *p->scores);
    p->head_scores = malloc((size_t)p->cap * sizeof *p->head_scores);
    if (!p->state || !p->kept || !p->n_kept || !p->evicted || !p->slots || !p->steps || !p->scores ||
        !p->head_scores) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        goto fail;
    }
    for (int s = 0; s < p->n_sets; s++) {
        p->evicted[s] = -1;
        if (!(p->kept[s] = malloc((size_t)p->cap * sizeof **p->kept))) {
            st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
            goto fail;
        }
    }
    uint64_t seeds = params->seed;
    for (int h = 0; h < n_head; h++) {
        if (p->words && !(p->slots[h] = calloc((size_t)p->cap * p->words, sizeof **p->slots))) {
            st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
            goto fail;
        }
        const uint64_t seed = ap_seed_next(&seeds);
        if (m->init && (st = m->init(&p->state[h], params, head_dim, seed, err))) goto fail;
    }
    *out = p;
    return AP_OK;
fail:
    ap_policy_free(p);
    return st;
}

/* ---- stepping -------------------------------------------------------------- */

/* Doubles every kept list: only `full`, which never evicts (and has no
 * slots), outgrows its capacity. */
static int grow(ap_policy *p)
{
    for (int s = 0; s < p->n_sets; s++) {
        int *k = realloc(p->kept[s], (size_t)p->cap * 2 * sizeof *k);
        if (!k) return -1;
        p->kept[s] = k;
    }
    double *scores = realloc(p->scores, (size_t)p->n_sets * p->cap * 2 * sizeof *scores);
    if (scores) p->scores = scores;
    double *head_scores = scores ? realloc(p->head_scores, (size_t)p->cap * 2 * sizeof *head_scores) : NULL;
    if (!head_scores) return -1;
    p->head_scores = head_scores;
    p->cap *= 2;
    return 0;
}

static int first_head(const ap_policy *p, int set) { return p->n_sets == 1 ? 0 : set; }
static int last_head(const ap_policy *p, int set) { return p->n_sets == 1 ? p->n_head - 1 : set; }

static void remove_at(ap_policy *p, int set, int i)
{
    const int n = p->n_kept[set];
    p->evicted[set] = p->kept[set][i];
    memmove(&p->kept[set][i], &p->kept[set][i + 1], (size_t)(n - i - 1) * sizeof(int));
    for (int h = first_head(p, set); h <= last_head(p, set) && p->words; h++) {
        ap_slot_word *s = p->slots[h];
        memmove(&s[(size_t)i * p->words], &s[(size_t)(i + 1) * p->words], (size_t)(n - i - 1) * p->words * sizeof *s);
    }
    p->n_kept[set] = n - 1;
}

static int evictable(const ap_policy *p, int pos, int t)
{
    return !p->m->info.protects || (pos >= p->params.sink && pos <= t - p->params.recent);
}

/* This step's scores of a set's positions into scores[0..n): the sum of its
 * heads' scores. Only evictable positions are scored (random draws once a
 * candidate, in order). */
static void score_set(ap_policy *p, int set, int t, double *scores)
{
    const int n = p->n_kept[set];
    const int *kept = p->kept[set];
    for (int i = 0; i < n; i++) scores[i] = 0;
    for (int h = first_head(p, set); h <= last_head(p, set); h++) {
        const ap_slot_word *slots = p->words ? p->slots[h] : NULL;
        if (p->m->score_all) {
            p->m->score_all(p->state[h], &p->steps[h], kept, slots, n, p->head_scores);
            for (int i = 0; i < n; i++) scores[i] += p->head_scores[i];
            continue;
        }
        for (int i = 0; i < n; i++)
            if (evictable(p, kept[i], t))
                scores[i] += p->m->score(p->state[h], &p->steps[h], kept[i], slots ? &slots[(size_t)i * p->words] : NULL);
    }
}

/* The lowest-scored evictable entry of a set; the first (oldest) wins ties; -1 when none. */
static int lowest(const ap_policy *p, int set, int t, const double *scores)
{
    int victim = -1;
    for (int i = 0; i < p->n_kept[set]; i++)
        if (evictable(p, p->kept[set][i], t) && (victim < 0 || scores[i] < scores[victim])) victim = i;
    return victim;
}

/* The set's lowest-scored evictable entry, the oldest on ties: scored in
 * one pass (no scores stored) unless the method scores all at once. */
static int victim_of(ap_policy *p, int set, int t)
{
    if (p->m->score_all) {
        double *scores = p->scores + (size_t)set * p->cap;
        score_set(p, set, t, scores);
        return lowest(p, set, t, scores);
    }
    const int n = p->n_kept[set], h0 = first_head(p, set), h1 = last_head(p, set);
    const int *kept = p->kept[set];
    int victim = -1;
    double best = 0;
    for (int i = 0; i < n; i++) {
        if (!evictable(p, kept[i], t)) continue;
        double score = 0;
        for (int h = h0; h <= h1; h++)
            score += p->m->score(p->state[h], &p->steps[h], kept[i], p->words ? &p->slots[h][(size_t)i * p->words] : NULL);
        if (victim < 0 || score < best) victim = i, best = score;
    }
    return victim;
}

/* AdaKV (Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive
 * Budget Allocation", 2024): the layer's heads share n_head x budget; the
 * globally lowest score goes, from a head holding more than its floor of
 * alpha x budget, until the pool fits. */
static void evict_pooled(ap_policy *p, int t)
{
    const int H = p->n_head, floor_n = (int)(p->params.alpha * p->params.budget);
    int total = 0;
    for (int h = 0; h < H; h++) {
        total += p->n_kept[h];
        score_set(p, h, t, p->scores + (size_t)h * p->cap);
    }
    while (total > H * p->params.budget) {
        int vh = -1, vi = -1;
        for (int h = 0; h < H; h++) {
            if (p->n_kept[h] <= floor_n) continue;
            const double *sc = p->scores + (size_t)h * p->cap;
            const int i = lowest(p, h, t, sc);
            if (i >= 0 && (vh < 0 || sc[i] < p->scores[(size_t)vh * p->cap + vi])) vh = h, vi = i;
        }
        if (vh < 0) break; /* every head at its floor or protected */
        double *sc = p->scores + (size_t)vh * p->cap;
        memmove(&sc[vi], &sc[vi + 1], (size_t)(p->n_kept[vh] - vi - 1) * sizeof *sc);
        remove_at(p, vh, vi);
        total--;
    }
}

static ap_status check_step(const ap_policy *p, int t, const float *q, const float *k, ap_error *err)
{
    if (p->m->info.needs_qk && (!q || !k))
        return ap_error_set(err, AP_ERR_USAGE, "policy %s needs the query and key of each step", p->params.name);
    if (t < p->seen)
        return ap_error_set(err, AP_ERR_USAGE, "policy %s: step %d after step %d", p->params.name, t, p->seen - 1);
    return AP_OK;
}

static void fill_steps(ap_policy *p, int t, const float *rows, size_t row_stride, const float *scale,
                       const float *q, const float *k)
{
    for (int h = 0; h < p->n_head; h++)
        p->steps[h] = (ap_step){t, rows ? rows + (size_t)h * row_stride : NULL, scale ? scale[h] : 1.0f,
                                q ? q + (size_t)h * p->head_dim : NULL, k ? k + (size_t)h * p->head_dim : NULL,
                                p->head_dim};
}

ap_status ap_policy_select(ap_policy *p, int t, const float *q, ap_error *err)
{
    if (!p->m->select) return AP_OK;
    if (!q) return ap_error_set(err, AP_ERR_USAGE, "policy %s needs the query of each step", p->params.name);
    fill_steps(p, t, NULL, 0, NULL, q, NULL);
    for (int s = 0; s < p->n_sets; s++) {
        const int h0 = first_head(p, s);
        const int n = p->m->select(&p->state[h0], &p->steps[h0], last_head(p, s) - h0 + 1, &p->params, t, p->kept[s]);
        if (n < 0) return ap_error_set(err, AP_ERR_RUNTIME, "policy %s: out of memory", p->params.name);
        p->n_kept[s] = n;
        p->evicted[s] = -1;
    }
    return AP_OK;
}

ap_status ap_policy_observe(ap_policy *p, int t, const float *rows, size_t row_stride, const float *q,
                            const float *k, ap_error *err)
{
    return ap_policy_observe_scaled(p, t, rows, row_stride, NULL, q, k, err);
}

ap_status ap_policy_observe_scaled(ap_policy *p, int t, const float *rows, size_t row_stride, const float *scale,
                                   const float *q, const float *k, ap_error *err)
{
    ap_status st = check_step(p, t, q, k, err);
    if (st) return st;
    if (p->n_kept[0] + 1 > p->cap && grow(p) != 0) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    fill_steps(p, t, rows, row_stride, scale, q, k);
    for (int h = 0; h < p->n_head && p->m->observe; h++) {
        const int s = ap_policy_set_of(p, h), n = p->n_kept[s];
        ap_slot_word *slots = p->words ? p->slots[h] : NULL;
        p->m->observe(p->state[h], &p->steps[h], p->kept[s], slots, n, slots ? &slots[(size_t)n * p->words] : NULL);
    }
    p->seen = t + 1;
    if (p->m->select) return AP_OK; /* the next select chooses again from every position */
    for (int s = 0; s < p->n_sets; s++) {
        p->kept[s][p->n_kept[s]++] = t;
        p->evicted[s] = -1;
    }
    if (p->m->info.never_evicts) return AP_OK;
    if (p->pooled) {
        evict_pooled(p, t);
        return AP_OK;
    }
    for (int s = 0; s < p->n_sets; s++) {
        if (p->n_kept[s] <= p->params.budget) continue;
        /* create() guarantees a candidate: budget >= sink + recent */
        remove_at(p, s, victim_of(p, s, t));
    }
    return AP_OK;
}

const ap_policy_method *ap_policy_method_of(const ap_policy *p) { return p->m; }
void *ap_policy_head_state(const ap_policy *p, int head) { return p->state[head]; }

int ap_policy_n_sets(const ap_policy *p) { return p->n_sets; }
int ap_policy_set_of(const ap_policy *p, int head) { return p->n_sets == 1 ? 0 : head; }

const int *ap_policy_kept(const ap_policy *p, int set, int *n)
{
    *n = p->n_kept[set];
    return p->kept[set];
}

int ap_policy_resident(const ap_policy *p, int set) { return p->m->select ? p->seen : p->n_kept[set]; }

int ap_policy_evicted(const ap_policy *p, int set) { return p->evicted[set]; }

size_t ap_policy_state_bytes(const ap_policy *p)
{
    size_t total = 0;
    for (int h = 0; h < p->n_head; h++) {
        if (p->state[h] && p->m->state_bytes) total += p->m->state_bytes(p->state[h]);
        total += (size_t)p->cap * p->words * sizeof(ap_slot_word);
    }
    return total;
}
