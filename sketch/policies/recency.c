/* recency.c — the baselines that need no attention at all.
 *
 * full:   never evicts; the control that must give perfect fidelity.
 * window: keeps the last `budget` positions (sliding window).
 * sink:   StreamingLLM (Xiao et al., "Efficient Streaming Language Models
 *         with Attention Sinks", ICLR 2024): the first `sink` positions plus
 *         the most recent ones. */
#include "method.h"

static double score_position(void *state, const ap_step *step, int pos, const ap_slot_word *slot)
{
    (void)state, (void)step, (void)slot;
    return pos; /* oldest goes first */
}

const ap_policy_method ap_method_full = {
    "full", 1, 0, 0, ap_method_no_slots, ap_method_no_init, ap_method_no_free,
    ap_method_no_bytes, ap_method_no_observe, score_position,
};

const ap_policy_method ap_method_window = {
    "window", 0, 0, 0, ap_method_no_slots, ap_method_no_init, ap_method_no_free,
    ap_method_no_bytes, ap_method_no_observe, score_position,
};

const ap_policy_method ap_method_sink = {
    "sink", 0, 1, 0, ap_method_no_slots, ap_method_no_init, ap_method_no_free,
    ap_method_no_bytes, ap_method_no_observe, score_position,
};
