/* knorm.c — keep the keys of smallest L2 norm (Devoto et al., "A Simple and
 * Effective L2 Norm-Based Strategy for KV Cache Compression", EMNLP 2024):
 * keys of small norm tend to draw high attention, so the position whose key
 * has the largest norm goes. Reads no attention: the score is fixed when the
 * position arrives and kept in its slot. */
#include <math.h>

#include "method.h"

static int slots(const ap_policy_params *p)
{
    (void)p;
    return 1;
}

/* The norm summed in position order in double: the device repeats it. */
static void observe(void *state, const ap_step *step, const int *kept, ap_slot_word *slot, int n,
                    ap_slot_word *new_slot)
{
    (void)state, (void)kept, (void)slot, (void)n;
    double sq = 0;
    for (int d = 0; d < step->head_dim; d++) sq += (double)step->k[d] * step->k[d];
    new_slot->f = (float)-sqrt(sq);
}

static double score(void *state, const ap_step *step, int pos, const ap_slot_word *slot)
{
    (void)state, (void)step, (void)pos;
    return slot->f;
}

const ap_policy_method ap_method_knorm = {
    .info = {.name = "knorm", .summary = "evicts the key of largest L2 norm (no attention read)",
             .paper = "Devoto et al., A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression, "
                      "EMNLP 2024",
             .protects = 1, .needs_qk = 1, .scored = 1, .on_device = 1},
    .slot_words = slots, .observe = observe, .score = score,
};
