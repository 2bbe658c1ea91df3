/* random.c — seeded random eviction: the control a scoring policy must beat.
 * Sink and recent positions are protected as for the scored policies, so
 * the comparison isolates the choice among the others. */
#include <gsl/gsl_rng.h>

#include "method.h"

static ap_status init(void **state, const ap_policy_params *p, int head_dim, uint64_t seed,
                      ap_error *err)
{
    (void)p, (void)head_dim;
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    if (!rng) return ap_error_set(err, AP_ERR_RUNTIME, "random policy: out of memory");
    gsl_rng_set(rng, (unsigned long)seed);
    *state = rng;
    return AP_OK;
}

static void free_state(void *state) { gsl_rng_free(state); }

static size_t bytes(const void *state) { return gsl_rng_size(state); }

static double score(void *state, const ap_step *step, int pos, const ap_slot_word *slot)
{
    (void)step, (void)pos, (void)slot;
    return gsl_rng_uniform(state);
}

const ap_policy_method ap_method_random = {
    .info = {.name = "random", .summary = "evicts a random unprotected position (the control)", .paper = "-",
             .protects = 1, .randomised = 1, .on_device = 1},
    .init = init, .free = free_state, .state_bytes = bytes, .score = score,
};
