/* policy.c — the shared base of every eviction policy: retained sets,
 * per-position slots, sink/recent protection and lowest-score eviction.
 * The methods (the files in policies/) only ingest steps and score positions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policies/method.h"
#include "policy.h"

static const ap_policy_method *const METHODS[] = {
    &ap_method_full, &ap_method_window, &ap_method_sink, &ap_method_random, &ap_method_h2o,
    &ap_method_tova, &ap_method_cms, &ap_method_count_sketch, &ap_method_race, &ap_method_race_kde,
};
enum { N_METHODS = sizeof METHODS / sizeof METHODS[0] };

struct ap_policy {
    ap_policy_params params;
    const ap_policy_method *m;
    int n_head, head_dim, n_sets, words; /* words: slot words per position */
    void **state;         /* [n_head] method state */
    int **kept;           /* [n_sets][budget + 1] ascending positions */
    int *n_kept;          /* [n_sets] */
    int cap;              /* capacity of each kept list */
    int *evicted;         /* [n_sets] */
    ap_slot_word **slots; /* [n_head][(budget + 1) * words], aligned with its set's kept list */
};

/* ---- helpers shared by the methods -------------------------------------- */

int ap_method_no_slots(const ap_policy_params *p)
{
    (void)p;
    return 0;
}

ap_status ap_method_no_init(void **state, const ap_policy_params *p, int head_dim, uint64_t seed,
                            ap_error *err)
{
    (void)p, (void)head_dim, (void)seed, (void)err;
    *state = NULL;
    return AP_OK;
}

void ap_method_no_free(void *state) { (void)state; }

size_t ap_method_no_bytes(const void *state)
{
    (void)state;
    return 0;
}

void ap_method_no_observe(void *state, const ap_step *step, const int *kept, ap_slot_word *slots,
                          int n, ap_slot_word *new_slot)
{
    (void)state, (void)step, (void)kept, (void)slots, (void)n, (void)new_slot;
}

/* ---- parameters --------------------------------------------------------- */

static const ap_policy_method *find_method(const char *name)
{
    for (int i = 0; i < N_METHODS; i++)
        if (strcmp(METHODS[i]->name, name) == 0) return METHODS[i];
    return NULL;
}

const char *ap_policy_names(void)
{
    return "full, window, sink, random, h2o, tova, cms, count_sketch, race, race_kde";
}

int ap_policy_known(const char *name) { return find_method(name) != NULL; }

void ap_policy_params_default(ap_policy_params *p, const char *name)
{
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->budget = 64;
    p->sink = 4;
    p->recent = 16;
    p->width = 512;
    p->depth = 4;
    p->conservative = 1;
    p->race_rows = 16;
    p->race_bits = 9;
    p->granularity = AP_GRAN_HEAD;
    p->seed = 1;
}

/* ---- lifetime ----------------------------------------------------------- */

void ap_policy_free(ap_policy *p)
{
    if (!p) return;
    for (int h = 0; p->state && h < p->n_head; h++)
        if (p->state[h]) p->m->free(p->state[h]);
    for (int s = 0; p->kept && s < p->n_sets; s++) free(p->kept[s]);
    for (int h = 0; p->slots && h < p->n_head; h++) free(p->slots[h]);
    free(p->state);
    free(p->kept);
    free(p->slots);
    free(p->n_kept);
    free(p->evicted);
    free(p);
}

ap_status ap_policy_create(const ap_policy_params *params, int n_head, int head_dim,
                           ap_policy **out, ap_error *err)
{
    *out = NULL;
    const ap_policy_method *m = find_method(params->name);
    if (!m)
        return ap_error_set(err, AP_ERR_USAGE, "unknown policy '%s' (accepted: %s)",
                            params->name, ap_policy_names());
    if (n_head < 1 || head_dim < 1)
        return ap_error_set(err, AP_ERR_USAGE, "policy %s: n_head %d and head_dim %d must be >= 1",
                            params->name, n_head, head_dim);
    if (params->budget < 1 || params->sink < 0 || params->recent < 0)
        return ap_error_set(err, AP_ERR_USAGE,
                            "policy %s: budget %d must be >= 1, sink %d and recent %d >= 0",
                            params->name, params->budget, params->sink, params->recent);
    if (m->protects && !m->never_evicts && params->budget < params->sink + params->recent)
        return ap_error_set(err, AP_ERR_USAGE,
                            "policy %s: budget %d must be at least sink + recent (%d + %d), "
                            "or nothing would be evictable",
                            params->name, params->budget, params->sink, params->recent);
    ap_policy *p = calloc(1, sizeof *p);
    if (!p) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    p->params = *params;
    p->m = m;
    p->n_head = n_head;
    p->head_dim = head_dim;
    p->n_sets = params->granularity == AP_GRAN_LAYER ? 1 : n_head;
    p->words = m->slot_words(params);
    /* full never evicts: its sets grow to the sequence, so they grow on demand. */
    const size_t cap = (size_t)params->budget + 1;
    p->state = calloc((size_t)n_head, sizeof *p->state);
    p->kept = calloc((size_t)p->n_sets, sizeof *p->kept);
    p->n_kept = calloc((size_t)p->n_sets, sizeof *p->n_kept);
    p->evicted = malloc((size_t)p->n_sets * sizeof *p->evicted);
    p->slots = calloc((size_t)n_head, sizeof *p->slots);
    p->cap = (int)cap;
    ap_status st = AP_OK;
    if (!p->state || !p->kept || !p->n_kept || !p->evicted || !p->slots) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        goto fail;
    }
    for (int s = 0; s < p->n_sets; s++) {
        p->evicted[s] = -1;
        if (!(p->kept[s] = malloc(cap * sizeof **p->kept))) {
            st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
            goto fail;
        }
    }
    uint64_t seeds = params->seed;
    for (int h = 0; h < n_head; h++) {
        if (p->words && !(p->slots[h] = calloc(cap * (size_t)p->words, sizeof **p->slots))) {
            st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
            goto fail;
        }
        if ((st = m->init(&p->state[h], params, head_dim, ap_seed_next(&seeds), err))) goto fail;
    }
    *out = p;
    return AP_OK;
fail:
    ap_policy_free(p);
    return st;
}

/* ---- stepping ----------------------------------------------------------- */

/* Doubles every kept list: only `full`, which never evicts (and has no
 * slots), outgrows budget + 1. */
static int grow(ap_policy *p)
{
    for (int s = 0; s < p->n_sets; s++) {
        int *k = realloc(p->kept[s], (size_t)p->cap * 2 * sizeof *k);
        if (!k) return -1;
        p->kept[s] = k;
    }
    p->cap *= 2;
    return 0;
}

static void remove_at(ap_policy *p, int set, int i)
{
    int n = p->n_kept[set];
    memmove(&p->kept[set][i], &p->kept[set][i + 1], (size_t)(n - i - 1) * sizeof(int));
    const int h_first = p->n_sets == 1 ? 0 : set, h_last = p->n_sets == 1 ? p->n_head - 1 : set;
    for (int h = h_first; h <= h_last && p->words; h++) {
        ap_slot_word *s = p->slots[h];
        memmove(&s[(size_t)i * p->words], &s[(size_t)(i + 1) * p->words],
                (size_t)(n - i - 1) * p->words * sizeof *s);
    }
    p->n_kept[set] = n - 1;
}

ap_status ap_policy_observe(ap_policy *p, int t, const float *rows, size_t row_stride,
                            const float *q, const float *k, ap_error *err)
{
    return ap_policy_observe_scaled(p, t, rows, row_stride, NULL, q, k, err);
}

ap_status ap_policy_observe_scaled(ap_policy *p, int t, const float *rows, size_t row_stride,
                                   const float *scale, const float *q, const float *k,
                                   ap_error *err)
{
    if (p->m->needs_qk && (!q || !k))
        return ap_error_set(err, AP_ERR_USAGE, "policy %s needs the query and key of each step",
                            p->params.name);
    for (int s = 0; s < p->n_sets; s++) {
        int n = p->n_kept[s];
        if (n > 0 && p->kept[s][n - 1] >= t)
            return ap_error_set(err, AP_ERR_USAGE, "policy %s: step %d after step %d", p->params.name,
                                t, p->kept[s][n - 1]);
    }
    if (p->n_kept[0] + 1 > p->cap && grow(p) != 0) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    ap_step *steps = malloc((size_t)p->n_head * sizeof *steps);
    if (!steps) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    for (int h = 0; h < p->n_head; h++) {
        steps[h] = (ap_step){t, rows + (size_t)h * row_stride, scale ? scale[h] : 1.0f,
                             q ? q + (size_t)h * p->head_dim : NULL,
                             k ? k + (size_t)h * p->head_dim : NULL, p->head_dim};
        const int s = ap_policy_set_of(p, h);
        const int n = p->n_kept[s];
        ap_slot_word *slots = p->words ? p->slots[h] : NULL;
        p->m->observe(p->state[h], &steps[h], p->kept[s], slots, n,
                      slots ? &slots[(size_t)n * p->words] : NULL);
    }
    for (int s = 0; s < p->n_sets; s++) {
        p->kept[s][p->n_kept[s]++] = t;
        p->evicted[s] = -1;
        const int n = p->n_kept[s];
        if (p->m->never_evicts || n <= p->params.budget) continue;
        /* Lowest score among evictable positions; the first (oldest) wins ties.
         * A set's heads: itself (granularity head) or all (layer). */
        const int h_first = p->n_sets == 1 ? 0 : s, h_last = p->n_sets == 1 ? p->n_head - 1 : s;
        int victim = -1;
        double best = 0;
        for (int i = 0; i < n; i++) {
            const int pos = p->kept[s][i];
            if (p->m->protects && (pos < p->params.sink || pos > t - p->params.recent)) continue;
            double score = 0;
            for (int h = h_first; h <= h_last; h++) {
                const ap_slot_word *slot = p->words ? &p->slots[h][(size_t)i * p->words] : NULL;
                score += p->m->score(p->state[h], &steps[h], pos, slot);
            }
            if (victim < 0 || score < best) {
                victim = i;
                best = score;
            }
        }
        /* create() guarantees a candidate: budget >= sink + recent */
        p->evicted[s] = p->kept[s][victim];
        remove_at(p, s, victim);
    }
    free(steps);
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

int ap_policy_evicted(const ap_policy *p, int set) { return p->evicted[set]; }

size_t ap_policy_state_bytes(const ap_policy *p)
{
    size_t total = 0;
    for (int h = 0; h < p->n_head; h++) {
        if (p->state[h]) total += p->m->state_bytes(p->state[h]);
        total += ((size_t)p->params.budget + 1) * p->words * sizeof(ap_slot_word);
    }
    return total;
}

static int is_sketch(const char *name) { return !strcmp(name, "cms") || !strcmp(name, "count_sketch"); }
static int is_race(const char *name) { return !strcmp(name, "race") || !strcmp(name, "race_kde"); }

size_t ap_policy_counter_bytes(const ap_policy_params *p)
{
    if (is_sketch(p->name)) return (size_t)p->depth * p->width * sizeof(float);
    if (is_race(p->name)) return ((size_t)p->race_rows << p->race_bits) * sizeof(float);
    if (!strcmp(p->name, "h2o")) return ((size_t)p->budget + 1) * sizeof(float);
    return 0;
}

ap_status ap_policy_params_fit_counters(ap_policy_params *p, size_t bytes_per_head, ap_error *err)
{
    const size_t floats = bytes_per_head / sizeof(float);
    if (is_sketch(p->name)) {
        if (floats < (size_t)p->depth)
            return ap_error_set(err, AP_ERR_USAGE, "policy %s: %zu bytes a head cannot hold %d rows of counters",
                                p->name, bytes_per_head, p->depth);
        if (floats / (size_t)p->depth > (1u << 26))
            return ap_error_set(err, AP_ERR_USAGE, "policy %s: %zu bytes a head would need a width over 2^26",
                                p->name, bytes_per_head);
        p->width = (int)(floats / (size_t)p->depth);
    } else if (is_race(p->name)) {
        int bits = 1;
        while (bits < 20 && ((size_t)p->race_rows << (bits + 1)) <= floats) bits++;
        if (bits == 20 && ((size_t)p->race_rows << 21) <= floats)
            return ap_error_set(err, AP_ERR_USAGE, "policy %s: %zu bytes a head would need over 20 bits a row",
                                p->name, bytes_per_head);
        if (((size_t)p->race_rows << bits) > floats) { /* fewer rows of 2 buckets */
            if (floats < 2)
                return ap_error_set(err, AP_ERR_USAGE, "policy %s: %zu bytes a head cannot hold a row of "
                                    "two buckets", p->name, bytes_per_head);
            p->race_rows = (int)(floats / 2);
            bits = 1;
        }
        p->race_bits = bits;
    }
    return AP_OK;
}