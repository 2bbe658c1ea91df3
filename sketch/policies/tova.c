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
    "tova", 0, 1, 0, ap_method_no_slots, ap_method_no_init, ap_method_no_free,
    ap_method_no_bytes, ap_method_no_observe, score,
};
