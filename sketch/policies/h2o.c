/* h2o.c — Heavy-Hitter Oracle (Zhang et al., "H2O: Heavy-Hitter Oracle for
 * Efficient Generative Inference of Large Language Models", NeurIPS 2023):
 * the exact attention each retained position has received so far. One float
 * per retained position. */
#include "method.h"

static int slots(const ap_policy_params *p)
{
    (void)p;
    return 1;
}

static void observe(void *state, const ap_step *step, const int *kept, ap_slot_word *slot, int n,
                    ap_slot_word *new_slot)
{
    (void)state;
    for (int i = 0; i < n; i++) slot[i].f += ap_step_attn(step, kept[i]);
    new_slot->f = ap_step_attn(step, step->t);
}

static double score(void *state, const ap_step *step, int pos, const ap_slot_word *slot)
{
    (void)state, (void)step, (void)pos;
    return slot->f;
}

/* Its scores are the state --sketch-memory matches the sketches to. */
static size_t counter_bytes(const ap_policy_params *p) { return ((size_t)p->budget + 1) * sizeof(float); }

const ap_policy_method ap_method_h2o = {
    .info = {.name = "h2o", .summary = "evicts the least attention received so far (exact)",
             .paper = "Zhang et al., H2O: Heavy-Hitter Oracle for Efficient Generative Inference, NeurIPS 2023",
             .protects = 1, .scored = 1, .on_device = 1},
    .slot_words = slots, .observe = observe, .score = score, .counter_bytes = counter_bytes,
};
