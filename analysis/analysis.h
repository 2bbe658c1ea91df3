/* analysis.h — fidelity metrics of one attention row and their statistics
 * (DESIGN.md §6). Independent of engine/: rows are plain arrays. */
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
    AP_M_COUNT
} ap_metric;

#define AP_KL_EPS 1e-10

const char *ap_metric_name(ap_metric m);
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

/* Values of one metric with the sample each came from. */
typedef struct {
    double *value;
    int *sample;
    size_t n, cap;
} ap_series;

ap_status ap_series_add(ap_series *s, double value, int sample, ap_error *err);
void ap_series_free(ap_series *s);

typedef struct {
    size_t n;
    double mean, sd, median, p05, p95, min, max;
    double ci_lo, ci_hi; /* bootstrap 95% CI of the mean, resampling samples */
} ap_stats;

/* Statistics of a series (NaN values are skipped). Bootstrap: `resamples`
 * resamples of the n_samples samples, GSL mt19937 seeded with seed. */
ap_status ap_stats_compute(const ap_series *s, int n_samples, int resamples, uint64_t seed,
                           ap_stats *out, ap_error *err);

#endif
