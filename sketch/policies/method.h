/* method.h — what one eviction policy implements (a file in sketch/policies/).
 *
 * As in NVIDIA kvpress's presses/, a policy is a small file with a score:
 * the shared base (sketch/policy.c) keeps the retained sets, protects sink
 * and recent positions and evicts the lowest score. A method only ingests
 * each step into its state and scores a retained position. Not public. */
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
    const char *name;
    int never_evicts;   /* full */
    int protects;       /* sink and recent positions are never evicted */
    int needs_qk;       /* observe needs q and k */
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
} ap_policy_method;

extern const ap_policy_method ap_method_full, ap_method_window, ap_method_sink, ap_method_random,
    ap_method_h2o, ap_method_tova, ap_method_cms, ap_method_count_sketch, ap_method_race,
    ap_method_race_kde;

/* What a policy instance runs and head h's state (for sketch/cuda/, which
 * copies the hashes, hyperplanes and generators a host instance drew). */
const ap_policy_method *ap_policy_method_of(const ap_policy *p);
void *ap_policy_head_state(const ap_policy *p, int head);

/* Helpers for methods without state or slots. */
int ap_method_no_slots(const ap_policy_params *p);
ap_status ap_method_no_init(void **state, const ap_policy_params *p, int head_dim, uint64_t seed,
                            ap_error *err);
void ap_method_no_free(void *state);
size_t ap_method_no_bytes(const void *state);
void ap_method_no_observe(void *state, const ap_step *step, const int *kept, ap_slot_word *slots,
                          int n, ap_slot_word *new_slot);

#endif
