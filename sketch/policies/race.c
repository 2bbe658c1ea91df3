/* race.c — two RACE policies (Coleman & Shrivastava, WWW 2020) over the keys'
 * signed-random-projection buckets, cached per retained position.
 *
 * race:     attention mass received by keys in the same LSH cells: each step
 *           adds a_t[j] to the buckets of k_j; score(j) = mean over rows of
 *           the counts at k_j's buckets. Similar keys share their mass.
 * race_kde: query density at the key: each step inserts q_t; score(j) ≈
 *           Σ_t (1 − θ(q_t, k_j)/π)^bits. Needs no attention weights. */
#include <stdlib.h>

#include "counters.h"

static int slots(const ap_policy_params *p) { return p->value[RACE_ROWS]; }

static ap_status init(void **state, const ap_policy_params *p, int head_dim, uint64_t seed,
                      ap_error *err)
{
    ap_race *s = malloc(sizeof *s);
    if (!s) return ap_error_set(err, AP_ERR_RUNTIME, "race policy: out of memory");
    ap_status st = ap_race_init(s, p->value[RACE_ROWS], p->value[RACE_BITS], head_dim, seed, err);
    if (st) {
        free(s);
        return st;
    }
    *state = s;
    return AP_OK;
}

static void free_state(void *state)
{
    ap_race_free(state);
    free(state);
}

static size_t bytes(const void *state) { return ap_race_bytes(state); }

/* slot words hold the key's buckets, one per row */
static void observe_mass(void *state, const ap_step *step, const int *kept, ap_slot_word *slot,
                         int n, ap_slot_word *new_slot)
{
    ap_race *s = state;
    ap_race_hash(s, step->k, &new_slot->u);
    for (int i = 0; i < n; i++) ap_race_add_buckets(s, &slot[(size_t)i * s->rows].u, ap_step_attn(step, kept[i]));
    ap_race_add_buckets(s, &new_slot->u, ap_step_attn(step, step->t));
}

static void observe_queries(void *state, const ap_step *step, const int *kept, ap_slot_word *slot,
                            int n, ap_slot_word *new_slot)
{
    (void)kept, (void)slot, (void)n;
    ap_race *s = state;
    ap_race_hash(s, step->k, &new_slot->u);
    ap_race_add(s, step->q, 1.0f);
}

static double score(void *state, const ap_step *step, int pos, const ap_slot_word *slot)
{
    (void)step, (void)pos;
    return ap_race_query_buckets(state, &slot->u);
}

#define RACE_PAPER "Coleman & Shrivastava, Sub-linear RACE Sketches for Approximate Kernel Density Estimation, WWW 2020"

const ap_policy_method ap_method_race = {
    .info = {.name = "race", .summary = "attention mass received by similar keys (RACE sketch over LSH cells)",
             .paper = RACE_PAPER, .params = {AP_PARAM_RACE_ROWS, AP_PARAM_RACE_BITS}, .protects = 1,
             .needs_qk = 1, .randomised = 1, .scored = 1, .on_device = 1},
    .slot_words = slots, .init = init, .free = free_state, .state_bytes = bytes, .observe = observe_mass,
    .score = score, .counter_bytes = ap_race_counter_bytes, .fit_counters = ap_race_fit_counters,
};

const ap_policy_method ap_method_race_kde = {
    .info = {.name = "race_kde", .summary = "density of past queries at the key (RACE KDE; no attention read)",
             .paper = RACE_PAPER, .params = {AP_PARAM_RACE_ROWS, AP_PARAM_RACE_BITS}, .protects = 1,
             .needs_qk = 1, .randomised = 1, .scored = 1, .on_device = 1},
    .slot_words = slots, .init = init, .free = free_state, .state_bytes = bytes, .observe = observe_queries,
    .score = score, .counter_bytes = ap_race_counter_bytes, .fit_counters = ap_race_fit_counters,
};
