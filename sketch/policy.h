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

/* How a layer's budget is shared (docs/policies.md, "Budget allocation"):
 * uniform: every (layer, head) set holds at most `budget`;
 * pyramid: PyramidKV's per-layer budgets, decreasing linearly with depth,
 *          the same total over the model's layers (ap_policy_params_at_layer);
 * adakv:   AdaKV's one pool of n_head x budget a layer, the globally lowest
 *          score evicted, each head keeping at least alpha x budget. */
typedef enum { AP_ALLOC_UNIFORM = 0, AP_ALLOC_PYRAMID = 1, AP_ALLOC_ADAKV = 2 } ap_allocation;

enum { AP_POLICY_MAX_PARAMS = 8 };

/* One parameter a policy declares: an integer in [lo, hi] (a switch is 0..1).
 * Its name is its command-line flag (underscores as dashes), its key in the
 * summary's params and in batch grids. Policies that declare the same name
 * share the flag. */
typedef struct {
    const char *name;
    int def, lo, hi;
    const char *help;
} ap_policy_param;

/* What the registry says about a policy (sketch/policies/registry.c). */
typedef struct {
    const char *name;         /* its --types name */
    const char *summary;      /* one line for --help */
    const char *paper;        /* where the method comes from */
    ap_policy_param params[AP_POLICY_MAX_PARAMS]; /* its own parameters; the list ends at a NULL name */
    int never_evicts;         /* full */
    int protects;             /* sink and recent positions are never evicted; allocation applies */
    int needs_qk;             /* observes the query and key of each step */
    int randomised;           /* its choices depend on the seed (--seeds repeats it) */
    int scored;               /* evicts by a score computed from the data (not position or chance) */
    int selects;              /* chooses the attended set per query (ap_policy_select); evicts nothing */
    int on_device;            /* the CUDA policies (sketch/cuda/) run it */
} ap_policy_info;

typedef struct {
    char name[32];         /* a registered policy (ap_policy_find) */
    int budget;            /* max retained positions per set (default 64) */
    int sink;              /* first positions never evicted by scored policies (default 4) */
    int recent;            /* most recent positions never evicted by scored policies (default 16) */
    ap_granularity granularity;
    uint64_t seed;
    ap_allocation allocate;
    double beta;           /* pyramid: the top layer's share of the evictable budget is 1 / beta (20) */
    double alpha;          /* adakv: each head keeps at least alpha x budget (0.2) */
    ap_quant quant;        /* the retained cache quantised (KIVI; bits 0: not), isolated replay only */
    int value[AP_POLICY_MAX_PARAMS]; /* the policy's own parameters, in its info's order */
} ap_policy_params;

/* The registry: policies 0 .. ap_policy_count() - 1, in --types all order. */
int ap_policy_count(void);
const ap_policy_info *ap_policy_info_at(int i);
/* The policy called name, or NULL. */
const ap_policy_info *ap_policy_find(const char *name);
/* Number of parameters a policy declares. */
int ap_policy_n_params(const ap_policy_info *info);

/* Fills the defaults (docs/policies.md) for policy `name`. */
void ap_policy_params_default(ap_policy_params *p, const char *name);
/* A parameter of p's policy by name: 1 and *value when the policy has it, else 0. */
int ap_policy_param_get(const ap_policy_params *p, const char *name, int *value);
/* Sets it when the policy has it (returns 1), else leaves p as it is (0). */
int ap_policy_param_set(ap_policy_params *p, const char *name, int value);
/* The parameters a layer's instance runs with: the budget of that layer under
 * p->allocate (pyramid: per-layer budgets over n_layer layers whose sum is
 * n_layer x budget; otherwise p's own). */
void ap_policy_params_at_layer(const ap_policy_params *p, int layer, int n_layer, ap_policy_params *out);

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
/* 1 when the CUDA policies can run p (its policy, uniform allocation, no quantisation). */
int ap_policy_params_on_device(const ap_policy_params *p);

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

/* Before step t's row is read: a selecting policy (quest) chooses from every
 * position seen the set query t attends to (q: [n_head * head_dim], the
 * query of t); the others keep their sets. */
ap_status ap_policy_select(ap_policy *p, int t, const float *q, ap_error *err);

/* Number of sets: n_head (granularity head) or 1 (layer). */
int ap_policy_n_sets(const ap_policy *p);
/* The set head h uses (h, or 0 with layer granularity). */
int ap_policy_set_of(const ap_policy *p, int head);
/* Retained positions of a set, ascending; valid until the next observe. */
const int *ap_policy_kept(const ap_policy *p, int set, int *n);
/* Positions a set holds in memory: its retained ones, or every position
 * seen for a selecting policy (quest keeps the whole cache). */
int ap_policy_resident(const ap_policy *p, int set);
/* Position evicted from a set at the last step, or -1 (the last of them
 * when adakv's pool evicted several from one head). */
int ap_policy_evicted(const ap_policy *p, int set);
/* Bytes of policy state (sketches, scores), not counting the kept lists. */
size_t ap_policy_state_bytes(const ap_policy *p);

#endif
