/* tova.c — Token Omission Via Attention (Oren et al., "Transformers are
 * Multi-State RNNs", 2024): evict the position the current query attends to
 * least. No state. */
#include "method.h"

static double score(void *state, const ap_step *step, int pos, const ap_slot_word *slot)
{
    (void)state, (void)slot;
    return ap_step_attn(step, pos);
}

const ap_policy_method ap_method_tova = {
    .info = {.name = "tova", .summary = "evicts what the current query attends to least",
             .paper = "Oren et al., Transformers are Multi-State RNNs, 2024", .protects = 1, .scored = 1,
             .on_device = 1},
    .score = score,
};
