/* method.h — what one eviction policy implements (a file in sketch/policies/).
 *
 * As in NVIDIA kvpress's presses/, a policy is a small file with a score:
 * the shared base (sketch/policy.c) keeps the retained sets, protects sink
 * and recent positions and evicts the lowest score. A method declares what
 * it is (its ap_policy_info: name, paper, parameters) and at most ingests
 * each step into its state and scores a retained position; every callback
 * left NULL does nothing. Adding a policy is one file with one of these and
 * one line in registry.c (docs/policies.md, "Adding a policy"). Not public. */
#ifndef AP_POLICY_METHOD_H
#define AP_POLICY_METHOD_H

#include "../policy.h"

/* Per-position state kept by the base next to each retained position, per
 * head (e.g. an accumulated score, or cached LSH buckets of the key). */
typedef union {
    float f;
    uint32_t u;
} ap_slot_word;

/* One head's view of step t. */
typedef struct {
    int t;
    const float *row;   /* attention over positions 0..t, times scale (read through ap_step_attn) */
    float scale;
    const float *q, *k; /* [head_dim] of position t, or NULL */
    int head_dim;
} ap_step;

/* Attention the query of step t gave position j (j retained or j = t). */
static inline float ap_step_attn(const ap_step *step, int j) { return step->row[j] * step->scale; }

typedef struct {
    ap_policy_info info;
    /* 32-bit words the base keeps per retained position and head. */
    int (*slot_words)(const ap_policy_params *p);
    /* Allocates one head's state (may set *state = NULL when none). */
    ap_status (*init)(void **state, const ap_policy_params *p, int head_dim, uint64_t seed,
                      ap_error *err);
    void (*free)(void *state);
    size_t (*state_bytes)(const void *state);
    /* Ingests step t: kept[0..n) are the retained positions with their slots
     * (slot_words each, consecutive), new_slot is position t's. */
    void (*observe)(void *state, const ap_step *step, const int *kept, ap_slot_word *slots, int n,
                    ap_slot_word *new_slot);
    /* Score of retained position pos; the lowest evictable one goes. */
    double (*score)(void *state, const ap_step *step, int pos, const ap_slot_word *slot);
    /* Instead of score, when a position's score depends on its neighbours:
     * the scores of all n retained positions at once into out[n]. */
    void (*score_all)(void *state, const ap_step *step, const int *kept, const ap_slot_word *slots, int n,
                      double *out);
    /* A selecting policy: the positions (ascending, at most `budget`, all
     * < t) that query t attends to, into out; returns their number. Sets of
     * several heads (granularity layer) pass each head's state and step. */
    int (*select)(void *const *states, const ap_step *steps, int n_heads, const ap_policy_params *p, int t,
                  int *out);
    /* --sketch-memory: the counters a head keeps, and sizing them to a byte count. */
    size_t (*counter_bytes)(const ap_policy_params *p);
    ap_status (*fit_counters)(ap_policy_params *p, size_t bytes_per_head, ap_error *err);
} ap_policy_method;

/* The registry (registry.c), in --types all order. */
extern const ap_policy_method *const ap_policy_registry[];
extern const int ap_policy_registry_size;

/* What a policy instance runs and head h's state (for sketch/cuda/, which
 * copies the hashes, hyperplanes and generators a host instance drew). */
const ap_policy_method *ap_policy_method_of(const ap_policy *p);
void *ap_policy_head_state(const ap_policy *p, int head);

#endif
