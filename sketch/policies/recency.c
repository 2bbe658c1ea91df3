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
    .info = {.name = "full", .summary = "never evicts: the reference, KL exactly 0", .paper = "-",
             .never_evicts = 1, .on_device = 1},
    .score = score_position,
};

const ap_policy_method ap_method_window = {
    .info = {.name = "window", .summary = "the last budget positions (sliding window)", .paper = "-",
             .on_device = 1},
    .score = score_position,
};

const ap_policy_method ap_method_sink = {
    .info = {.name = "sink", .summary = "the first sink positions and the most recent ones",
             .paper = "Xiao et al., Efficient Streaming Language Models with Attention Sinks, ICLR 2024",
             .protects = 1, .on_device = 1},
    .score = score_position,
};
