/* cms.c — H2O's accumulated attention, estimated by a Count-Min sketch keyed
 * by the token's absolute position (conservative update by default): the
 * state is depth × width counters, whatever the sequence length. Keying by
 * position keeps distinct tokens distinct; a key derived from the key
 * vector's values would make collisions depend on the data. */
#include <stdlib.h>

#include "counters.h"

enum { CONSERVATIVE = 2 };

static ap_status init(void **state, const ap_policy_params *p, int head_dim, uint64_t seed,
                      ap_error *err)
{
    (void)head_dim;
    ap_cms *s = malloc(sizeof *s);
    if (!s) return ap_error_set(err, AP_ERR_RUNTIME, "cms policy: out of memory");
    ap_status st = ap_cms_init(s, p->value[GRID_DEPTH], p->value[GRID_WIDTH], p->value[CONSERVATIVE], seed, err);
    if (st) {
        free(s);
        return st;
    }
    *state = s;
    return AP_OK;
}

static void free_state(void *state)
{
    ap_cms_free(state);
    free(state);
}

static size_t bytes(const void *state) { return ap_cms_bytes(state); }

/* Each retained position keeps its buckets (depth words): hashed once. */
static int slots(const ap_policy_params *p) { return p->value[GRID_DEPTH]; }

static void observe(void *state, const ap_step *step, const int *kept, ap_slot_word *slot, int n,
                    ap_slot_word *new_slot)
{
    ap_cms *s = state;
    ap_cms_buckets(s, (uint64_t)step->t, &new_slot->u);
    for (int i = 0; i < n; i++) ap_cms_update_buckets(s, &slot[(size_t)i * s->depth].u, ap_step_attn(step, kept[i]));
    ap_cms_update_buckets(s, &new_slot->u, ap_step_attn(step, step->t));
}

static double score(void *state, const ap_step *step, int pos, const ap_slot_word *slot)
{
    (void)step, (void)pos;
    return ap_cms_query_buckets(state, &slot->u);
}

const ap_policy_method ap_method_cms = {
    .info = {.name = "cms", .summary = "h2o's accumulated attention in a Count-Min sketch",
             .paper = "Cormode & Muthukrishnan, An Improved Data Stream Summary: the Count-Min Sketch, 2005",
             .params = {AP_PARAM_WIDTH, AP_PARAM_DEPTH,
                        {"conservative", 1, 0, 1, "conservative update (0: plain, as --plain-update)"}},
             .protects = 1, .randomised = 1, .scored = 1, .on_device = 1},
    .slot_words = slots, .init = init, .free = free_state, .state_bytes = bytes, .observe = observe,
    .score = score, .counter_bytes = ap_grid_counter_bytes, .fit_counters = ap_grid_fit_counters,
};
