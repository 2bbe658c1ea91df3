/* count_sketch.c — H2O's accumulated attention estimated by a Count Sketch
 * keyed by absolute position: unbiased per row, median over rows. */
#include <stdlib.h>

#include "counters.h"

static ap_status init(void **state, const ap_policy_params *p, int head_dim, uint64_t seed,
                      ap_error *err)
{
    (void)head_dim;
    ap_count_sketch *s = malloc(sizeof *s);
    if (!s) return ap_error_set(err, AP_ERR_RUNTIME, "count_sketch policy: out of memory");
    ap_status st = ap_cs_init(s, p->value[GRID_DEPTH], p->value[GRID_WIDTH], seed, err);
    if (st) {
        free(s);
        return st;
    }
    *state = s;
    return AP_OK;
}

static void free_state(void *state)
{
    ap_cs_free(state);
    free(state);
}

static size_t bytes(const void *state) { return ap_cs_bytes(state); }

/* Each retained position keeps its buckets (depth words): hashed once. */
static int slots(const ap_policy_params *p) { return p->value[GRID_DEPTH]; }

static void observe(void *state, const ap_step *step, const int *kept, ap_slot_word *slot, int n,
                    ap_slot_word *new_slot)
{
    ap_count_sketch *s = state;
    ap_cs_buckets(s, (uint64_t)step->t, &new_slot->u);
    for (int i = 0; i < n; i++) ap_cs_update_buckets(s, &slot[(size_t)i * s->depth].u, ap_step_attn(step, kept[i]));
    ap_cs_update_buckets(s, &new_slot->u, ap_step_attn(step, step->t));
}

static double score(void *state, const ap_step *step, int pos, const ap_slot_word *slot)
{
    (void)step, (void)pos;
    return ap_cs_query_buckets(state, &slot->u);
}

const ap_policy_method ap_method_count_sketch = {
    .info = {.name = "count_sketch", .summary = "h2o's accumulated attention in a Count Sketch (median of rows)",
             .paper = "Charikar, Chen & Farach-Colton, Finding Frequent Items in Data Streams, ICALP 2002",
             .params = {AP_PARAM_WIDTH, AP_PARAM_DEPTH}, .protects = 1, .randomised = 1, .scored = 1,
             .on_device = 1},
    .slot_words = slots, .init = init, .free = free_state, .state_bytes = bytes, .observe = observe,
    .score = score, .counter_bytes = ap_grid_counter_bytes, .fit_counters = ap_grid_fit_counters,
};
