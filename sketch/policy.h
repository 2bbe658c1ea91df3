/* policy.h — KV-cache eviction policies (docs/policies.md), the public header of
 * sketch/. Independent of engine/: policies see plain arrays only, so the
 * isolated replay (reference rows) and the cascade replay (the engine's own
 * rows) drive them the same way.
 *
 * A policy owns, per (layer, head) — or per layer with granularity "layer" —
 * the set S of retained positions. At step t it is shown, per head, the
 * attention row of query t over absolute positions 0..t (zero outside
 * S ∪ {t}), the query and the key of t; it updates its state, adds t to S
 * and, when |S| > budget, evicts the lowest-scored position that is neither
 * a sink (< sink) nor recent (> t − recent). Ties go to the oldest position.
 *
 * One instance serves one layer of one stream. */
#ifndef AP_POLICY_H
#define AP_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"
#include "sketch.h"

typedef enum { AP_GRAN_HEAD = 0, AP_GRAN_LAYER = 1 } ap_granularity;

typedef struct {
    char name[32];         /* full, window, sink, random, h2o, tova, cms, count_sketch, race, race_kde */
    int budget;            /* max retained positions per set (default 64) */
    int sink;              /* first positions never evicted by scored policies (default 4) */
    int recent;            /* most recent positions never evicted by scored policies (default 16) */
    int width, depth;      /* cms / count_sketch (defaults 512, 4) */
    int conservative;      /* cms: conservative update (default 1) */
    int race_rows, race_bits; /* race / race_kde (defaults 16, 9) */
    ap_granularity granularity;
    uint64_t seed;
} ap_policy_params;

/* Fills the defaults (docs/policies.md) for policy `name`. */
void ap_policy_params_default(ap_policy_params *p, const char *name);

/* Bytes of score state a head of this policy keeps: its sketch's counters
 * (cms, count_sketch: depth x width floats; race, race_kde: rows x 2^bits)
 * or its per-position scores (h2o: budget + 1 floats); 0 for the rest.
 * What --sketch-memory matches (docs/policies.md): not the hash seeds,
 * hyperplanes or per-position bucket caches, which a seed regenerates. */
size_t ap_policy_counter_bytes(const ap_policy_params *p);
/* Sizes a sketch policy's counters to at most bytes_per_head (cms and
 * count_sketch: the width; race and race_kde: the bits, then the rows);
 * the other policies are left as they are. */
ap_status ap_policy_params_fit_counters(ap_policy_params *p, size_t bytes_per_head, ap_error *err);

/* Comma-separated list of the policy names. */
const char *ap_policy_names(void);
int ap_policy_known(const char *name);

typedef struct ap_policy ap_policy;

ap_status ap_policy_create(const ap_policy_params *params, int n_head, int head_dim,
                           ap_policy **out, ap_error *err);
void ap_policy_free(ap_policy *p);

/* Step t (0, 1, 2, … in order).
 *   rows     [n_head * row_stride]: head h's row at rows + h * row_stride,
 *            entries 0..t valid (probabilities over absolute positions)
 *   q, k     [n_head * head_dim]: query and key of position t (may be NULL
 *            for policies that use neither; race and race_kde need them)
 * Evicted positions are reported by ap_policy_evicted. */
ap_status ap_policy_observe(ap_policy *p, int t, const float *rows, size_t row_stride,
                            const float *q, const float *k, ap_error *err);
/* The same with head h's row read as rows[h] * scale[h] (scale: [n_head]).
 * Only the retained positions and t are read, so an isolated replay can pass
 * the reference rows in place with scale = 1 / retained mass. */
ap_status ap_policy_observe_scaled(ap_policy *p, int t, const float *rows, size_t row_stride,
                                   const float *scale, const float *q, const float *k,
                                   ap_error *err);

/* Number of sets: n_head (granularity head) or 1 (layer). */
int ap_policy_n_sets(const ap_policy *p);
/* The set head h uses (h, or 0 with layer granularity). */
int ap_policy_set_of(const ap_policy *p, int head);
/* Retained positions of a set, ascending; valid until the next observe. */
const int *ap_policy_kept(const ap_policy *p, int set, int *n);
/* Position evicted from a set at the last step, or -1. */
int ap_policy_evicted(const ap_policy *p, int set);
/* Bytes of policy state (sketches, scores), not counting the kept lists. */
size_t ap_policy_state_bytes(const ap_policy *p);

#endif
