/* analysis.h — fidelity metrics of one attention row and their statistics
 * (docs/metrics.md, docs/statistics.md). Independent of engine/: rows are plain arrays. */
#ifndef AP_ANALYSIS_H
#define AP_ANALYSIS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"

typedef enum {
    AP_M_KL,          /* KL(p||q), eps-smoothed */
    AP_M_KL_REV,      /* KL(q||p) over supp(q) */
    AP_M_JS,          /* Jensen-Shannon, natural log */
    AP_M_TV,          /* total variation */
    AP_M_COSINE,
    AP_M_L1,
    AP_M_L2,
    AP_M_PEAK_SHIFT,  /* |argmax p - argmax q| in positions */
    AP_M_MASS,        /* mass_retained: sum of p over the retained set / sum of p */
    AP_M_TOP1,        /* topk_recall@1 */
    AP_M_TOP8,
    AP_M_TOP32,
    AP_M_OUT_ERR,     /* |o_q - o_p| / |o_p|, o = sum_j a_j v_j */
    AP_M_INDEX_L1,    /* --align index: mean |p_i - c_i| against the compacted row */
    AP_M_INDEX_RMS,   /* --align index: sqrt(mean (p_i - c_i)^2) */
    AP_M_INDEX_KL,    /* --align index: KL(p||c), eps-smoothed as kl */
    AP_M_INDEX_COSINE, /* --align index: p.c / (|p| |c|) */
    AP_M_TOP10,       /* topk_recall@10 (Quest's reported recall) */
    AP_M_ATTN_LOSS,   /* attention_loss: sum of p outside the retained set / sum of p (kvpress) */
    /* the model's next-token prediction (attnprobe eval; next_token.c) */
    AP_M_NLL,         /* -log p_policy(next token), nats; perplexity = exp(mean) */
    AP_M_NEXT_KL,     /* KL(p_full(next) || p_policy(next)) over the vocabulary */
    AP_M_NEXT_TOP1,   /* 1 when the policy's most likely next token is the full cache's */
    AP_M_ARGMAX_RANK, /* rank of the full cache's most likely token under the policy (0: first) */
    AP_M_COUNT
} ap_metric;

/* Metrics from this one on were added after summaries were first written:
 * a summary without them is read as having none measured. */
#define AP_M_FIRST_ADDED AP_M_INDEX_KL

/* The first next-token metric: attention rows fill the metrics before it,
 * next-token rows those from it (each leaves the others NaN). */
#define AP_M_FIRST_NEXT AP_M_NLL

#define AP_KL_EPS 1e-10

const char *ap_metric_name(ap_metric m);
/* GSL's version, for a summary's provenance. */
const char *ap_analysis_gsl_version(void);
/* 1 when a larger value is better (cosine, mass_retained, recall). */
int ap_metric_higher_is_better(ap_metric m);
/* Metric by name, or -1. */
int ap_metric_from_name(const char *name);

/* Metrics of one row at step t (n = t + 1 positions).
 *   p      reference row [n]
 *   q      policy row [n], over the same absolute positions, 0 where evicted
 *   kept   [n] 1 for positions in the retained set (t included)
 *   v      values [n * hd] (row j at v + j * hd), or NULL: out_err is NaN
 *   o_p    [hd] the reference output sum_j p_j v_j when known (the engine's
 *          own), else NULL and it is computed from p and v
 * out[AP_M_COUNT]. */
void ap_metrics_row(const float *p, const float *q, const unsigned char *kept, int n,
                    const float *v, const float *o_p, int hd, double *out);

/* The full cache's next-token distribution at one position, prepared once
 * for every policy compared with it: its logits[vocab], their log-sum-exp
 * and argmax, and the probabilities in prob[vocab] (caller's buffer). */
typedef struct {
    const float *logits;
    double *prob;
    double log_z;
    int vocab, argmax;
} ap_next_ref;
void ap_next_ref_init(ap_next_ref *ref, const float *logits, int vocab, double *prob);

/* Next-token metrics of one position: the policy's logits[vocab] at the
 * position ref was made for, and the token that follows.
 * out[AP_M_COUNT]: the next-token metrics, NaN elsewhere. */
void ap_next_token_row(const ap_next_ref *ref, const float *logits, int next, double *out);

typedef struct {
    size_t n;
    double mean, sd, median, p05, p95, min, max;
    double ci_lo, ci_hi; /* bootstrap 95% CI of the mean, resampling samples */
} ap_stats;

/* ---- streaming statistics (docs/statistics.md) ------------------------------
 *
 * A study folds each sample's values of a metric into an ap_moments (in the
 * order the rows come), then folds the samples' moments into an
 * ap_metric_acc in sample order; quantiles go to the accumulator's sketch
 * directly (counts add, so the order does not matter there). The statistics
 * are then the same, to the last bit, however the samples were batched. */

/* Exact running moments of one sample's values (NaN skipped). */
typedef struct {
    double n, sum, mean, m2, min, max;
} ap_moments;

void ap_moments_add(ap_moments *m, double x);
/* Chan et al.'s parallel update: into becomes the moments of both streams. */
void ap_moments_merge(ap_moments *into, const ap_moments *from);

/* Values of |x| below this are counted as 0 by the quantile sketch. */
#define AP_QSKETCH_ZERO 1e-12
/* The sketch's relative accuracy: every quantile it gives lies within this
 * relative distance of a value of the stream at that rank. */
#define AP_QSKETCH_ALPHA 0.005

typedef struct {
    int64_t offset; /* key of bins[0] */
    uint64_t *bins;
    size_t n;
} ap_qstore;

/* Log-bucketed histogram (DDSketch): mergeable quantiles, relative accuracy alpha. */
typedef struct {
    double alpha, gamma, log_gamma;
    ap_qstore store[2]; /* [0] positive values, [1] negative (by magnitude) */
    uint64_t zero, count;
} ap_qsketch;

void ap_qsketch_init(ap_qsketch *q, double alpha);
void ap_qsketch_free(ap_qsketch *q);
ap_status ap_qsketch_add(ap_qsketch *q, double x, ap_error *err);
ap_status ap_qsketch_merge(ap_qsketch *into, const ap_qsketch *from, ap_error *err);
/* The keys a value's bucket can have: [-ap_qsketch_key_limit, +limit]
 * (values past 1e12 share the last). A value x with AP_QSKETCH_ZERO <= |x|
 * goes to key ceil(log|x| / log_gamma), clamped, in store[x < 0]; a device
 * that found the keys hands their counts over with add_bins. */
int64_t ap_qsketch_key_limit(const ap_qsketch *q);
/* Adds counts[i] values of key first_key + i to store[negative], and zero
 * values below AP_QSKETCH_ZERO. */
ap_status ap_qsketch_add_bins(ap_qsketch *q, int negative, int64_t first_key, const uint32_t *counts, size_t n,
                              uint64_t zero, ap_error *err);
/* Quantile p in [0, 1] (ranks interpolated as gsl_stats_quantile does); NaN when empty. */
double ap_qsketch_quantile(const ap_qsketch *q, double p);
/* The sketch as bytes for another process, and back (*used: bytes read). */
size_t ap_qsketch_packed_size(const ap_qsketch *q);
void ap_qsketch_pack(const ap_qsketch *q, unsigned char *out);
ap_status ap_qsketch_unpack(const unsigned char *in, size_t size, ap_qsketch *q, size_t *used, ap_error *err);

/* One metric of one run over a whole study. */
typedef struct {
    ap_moments all;
    ap_qsketch q;
    int n_samples;               /* samples folded (grows) */
    int cap;
    double *sample_sum, *sample_n; /* [n_samples]: for the bootstrap */
} ap_metric_acc;

void ap_metric_acc_init(ap_metric_acc *a);
void ap_metric_acc_free(ap_metric_acc *a);
/* Folds sample `sample`'s moments (samples folded in increasing order; a
 * sample may be folded in several parts, in order). */
ap_status ap_metric_acc_fold(ap_metric_acc *a, int sample, const ap_moments *part, ap_error *err);
/* Statistics: n, mean, sd, min, max exact; median, p05, p95 from the sketch;
 * bootstrap: `resamples` resamples of the n_samples samples' (sum, n), GSL
 * mt19937 seeded with seed. */
ap_status ap_metric_acc_stats(const ap_metric_acc *a, int n_samples, int resamples, uint64_t seed,
                              ap_stats *out, ap_error *err);
/* The bootstrap CI of each of accs[0..n_accs) into outs[j]->ci_lo, ci_hi,
 * each as ap_metric_acc_stats finds it with this seed, the draws made once
 * for all (they depend on the seed and n_samples alone). */
ap_status ap_metric_acc_bootstrap(const ap_metric_acc *const *accs, int n_accs, int n_samples, int resamples,
                                  uint64_t seed, ap_stats *const *outs, ap_error *err);

/* ---- paired comparisons (paired.c) ------------------------------------------ */

typedef struct {
    int n;               /* samples with a value under both */
    double delta;        /* mean over samples of (a - b) */
    double ci_lo, ci_hi; /* bootstrap 95% CI of delta, resampling samples */
    double p;            /* two-sided sign-flip permutation p-value */
} ap_paired;

/* a[i], b[i]: sample i's mean of one metric under two policies (NaN: none).
 * GSL mt19937 seeded with seed draws the resamples, then the sign flips. */
ap_status ap_paired_compare(const double *a, const double *b, int n, int resamples, int permutations,
                            uint64_t seed, ap_paired *out, ap_error *err);

/* The random draws of a comparison of m differences: they depend on the
 * seed and m alone, so comparisons that share a seed can share them
 * (picks: [resamples][m] bootstrap indices; signs: [permutations][(m + 31)
 * / 32] sign bits). */
typedef struct {
    int m, resamples, permutations;
    int *picks;
    uint32_t *signs;
} ap_paired_draws;
ap_status ap_paired_draws_make(uint64_t seed, int m, int resamples, int permutations, ap_paired_draws *out,
                               ap_error *err);
void ap_paired_draws_free(ap_paired_draws *dr);
/* ap_paired_compare with draws made for its seed: used when they were made
 * for the comparison's number of finite differences (else it draws its own). */
ap_status ap_paired_compare_drawn(const double *a, const double *b, int n, const ap_paired_draws *draws,
                                  int resamples, int permutations, uint64_t seed, ap_paired *out, ap_error *err);
/* Holm's step-down adjustment of n p-values (NaN stays NaN). */
void ap_holm(const double *p, int n, double *adjusted);

#endif
