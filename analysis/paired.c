/* paired.c — two policies compared on the same samples (docs/statistics.md):
 * the per-sample differences of a metric's means, their mean, a bootstrap
 * CI that resamples samples, and a sign-flip permutation p-value; Holm's
 * step-down correction over a family of comparisons. */
#include <gsl/gsl_rng.h>
#include <gsl/gsl_sort.h>
#include <gsl/gsl_statistics_double.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis.h"

/* Where a comparison's draws come from: made ahead (dr), or from rng as
 * they are used, in the same order — so the same numbers either way, and
 * a comparison without shared draws needs no room for them. */
typedef struct {
    const ap_paired_draws *dr;
    gsl_rng *rng;
    int m;
    size_t picks, signs; /* used so far */
} draw_source;

static inline int next_pick(draw_source *src)
{
    return src->dr ? src->dr->picks[src->picks++] : (int)gsl_rng_uniform_int(src->rng, (unsigned long)src->m);
}

static inline uint32_t next_signs(draw_source *src)
{
    return src->dr ? src->dr->signs[src->signs++] : (uint32_t)gsl_rng_get(src->rng); /* mt19937: 32 bits */
}

/* Sign-flip test: under "no difference" each sample's difference is as
 * likely negative as positive, so the observed |mean| is ranked among the
 * means with random signs. (count + 1) / (permutations + 1): never 0. */
static double sign_flip_p(const double *d, int n, double observed, int permutations, draw_source *src)
{
    int as_large = 0;
    for (int k = 0; k < permutations; k++) {
        double sum = 0;
        uint32_t bits = 0;
        for (int i = 0; i < n; i++) {
            if (i % 32 == 0) bits = next_signs(src);
            /* the sign as a factor (x * -1 is -x exactly): no branch to mispredict */
            sum += d[i] * (double)((int)(bits >> (i % 32) & 1u) * 2 - 1);
        }
        /* a relative margin so that a flip giving back the same value counts */
        if (fabs(sum / n) >= fabs(observed) * (1 - 1e-12)) as_large++;
    }
    return (as_large + 1.0) / (permutations + 1.0);
}

/* The differences that are numbers: d[0..m), m returned. */
static int finite_differences(const double *a, const double *b, int n, double *d)
{
    int m = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(a[i] - b[i])) d[m++] = a[i] - b[i];
    return m;
}

/* The comparison of the m differences d: the resamples, then the sign flips. */
static ap_status compare(const double *d, int m, int resamples, int permutations, draw_source *src, ap_paired *out,
                         ap_error *err)
{
    out->n = m;
    if (m == 0) return AP_OK;
    out->delta = gsl_stats_mean(d, 1, (size_t)m);
    out->ci_lo = out->ci_hi = out->delta;
    if (m > 1 && resamples > 0) {
        double *means = malloc((size_t)resamples * sizeof *means);
        if (!means) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for a paired comparison");
        for (int r = 0; r < resamples; r++) {
            double sum = 0;
            for (int i = 0; i < m; i++) sum += d[next_pick(src)];
            means[r] = sum / m;
        }
        gsl_sort(means, 1, (size_t)resamples);
        out->ci_lo = gsl_stats_quantile_from_sorted_data(means, 1, (size_t)resamples, 0.025);
        out->ci_hi = gsl_stats_quantile_from_sorted_data(means, 1, (size_t)resamples, 0.975);
        free(means);
    }
    out->p = permutations > 0 ? sign_flip_p(d, m, out->delta, permutations, src) : NAN;
    return AP_OK;
}

ap_status ap_paired_draws_make(uint64_t seed, int m, int resamples, int permutations, ap_paired_draws *out,
                               ap_error *err)
{
    memset(out, 0, sizeof *out);
    out->m = m, out->resamples = resamples, out->permutations = permutations;
    if (m < 1) return AP_OK;
    const size_t n_picks = m > 1 && resamples > 0 ? (size_t)resamples * m : 0;
    const size_t n_signs = permutations > 0 ? (size_t)permutations * ((m + 31) / 32) : 0;
    out->picks = malloc((n_picks + 1) * sizeof *out->picks);
    out->signs = malloc((n_signs + 1) * sizeof *out->signs);
    draw_source src = {NULL, gsl_rng_alloc(gsl_rng_mt19937), m, 0, 0};
    if (!out->picks || !out->signs || !src.rng) {
        gsl_rng_free(src.rng);
        ap_paired_draws_free(out);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for a paired comparison's draws");
    }
    gsl_rng_set(src.rng, (unsigned long)seed);
    for (size_t i = 0; i < n_picks; i++) out->picks[i] = next_pick(&src);
    for (size_t i = 0; i < n_signs; i++) out->signs[i] = next_signs(&src);
    gsl_rng_free(src.rng);
    return AP_OK;
}

void ap_paired_draws_free(ap_paired_draws *dr)
{
    free(dr->picks);
    free(dr->signs);
    memset(dr, 0, sizeof *dr);
}

ap_status ap_paired_compare_drawn(const double *a, const double *b, int n, const ap_paired_draws *draws,
                                  int resamples, int permutations, uint64_t seed, ap_paired *out, ap_error *err)
{
    memset(out, 0, sizeof *out);
    out->delta = out->ci_lo = out->ci_hi = out->p = NAN;
    double *d = malloc((size_t)(n > 0 ? n : 1) * sizeof *d);
    if (!d) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for a paired comparison");
    const int m = finite_differences(a, b, n, d);
    const int shared = draws && draws->m == m && draws->resamples == resamples && draws->permutations == permutations;
    draw_source src = {shared ? draws : NULL, shared ? NULL : gsl_rng_alloc(gsl_rng_mt19937), m, 0, 0};
    ap_status st = AP_OK;
    if (!shared && !src.rng) st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory for a paired comparison");
    if (!st && !shared) gsl_rng_set(src.rng, (unsigned long)seed);
    if (!st) st = compare(d, m, resamples, permutations, &src, out, err);
    gsl_rng_free(src.rng);
    free(d);
    return st;
}

ap_status ap_paired_compare(const double *a, const double *b, int n, int resamples, int permutations,
                            uint64_t seed, ap_paired *out, ap_error *err)
{
    return ap_paired_compare_drawn(a, b, n, NULL, resamples, permutations, seed, out, err);
}

void ap_holm(const double *p, int n, double *adjusted)
{
    /* the family is the tests that have a p-value: order them; the k-th
     * smallest (0-based) of m is multiplied by m - k, and the adjusted values
     * are made non-decreasing in that order */
    double *valid = calloc((size_t)(n > 0 ? n : 1), sizeof *valid);
    size_t *order = malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
    int *where = malloc((size_t)(n > 0 ? n : 1) * sizeof *where);
    for (int i = 0; i < n; i++) adjusted[i] = NAN;
    if (!valid || !order || !where) {
        free(valid), free(order), free(where);
        return;
    }
    int m = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(p[i])) where[m] = i, valid[m++] = p[i];
    if (m > 0) gsl_sort_index(order, valid, 1, (size_t)m);
    double running = 0;
    for (int k = 0; k < m; k++) {
        double v = valid[order[k]] * (m - k);
        if (v > 1) v = 1;
        if (v < running) v = running;
        running = v;
        adjusted[where[order[k]]] = v;
    }
    free(valid), free(order), free(where);
}
