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

ap_status ap_paired_draws_make(uint64_t seed, int m, int resamples, int permutations, ap_paired_draws *out,
                               ap_error *err)
{
    memset(out, 0, sizeof *out);
    out->m = m, out->resamples = resamples, out->permutations = permutations;
    if (m < 1) return AP_OK;
    const int boot = m > 1 && resamples > 0, words = (m + 31) / 32;
    out->picks = malloc(((size_t)(boot ? resamples : 0) * m + 1) * sizeof *out->picks);
    out->signs = malloc(((size_t)(permutations > 0 ? permutations : 0) * words + 1) * sizeof *out->signs);
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    if (!out->picks || !out->signs || !rng) {
        gsl_rng_free(rng);
        ap_paired_draws_free(out);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for a paired comparison's draws");
    }
    /* the order ap_paired_compare has always drawn in: the resamples, then
     * 32 signs a draw for each permutation */
    gsl_rng_set(rng, (unsigned long)seed);
    for (size_t i = 0; boot && i < (size_t)resamples * m; i++)
        out->picks[i] = (int)gsl_rng_uniform_int(rng, (unsigned long)m);
    for (size_t i = 0; i < (size_t)(permutations > 0 ? permutations : 0) * words; i++)
        out->signs[i] = (uint32_t)gsl_rng_get(rng);
    gsl_rng_free(rng);
    return AP_OK;
}

void ap_paired_draws_free(ap_paired_draws *dr)
{
    free(dr->picks);
    free(dr->signs);
    memset(dr, 0, sizeof *dr);
}

/* Sign-flip test: under "no difference" each sample's difference is as
 * likely negative as positive, so the observed |mean| is ranked among the
 * means with random signs. (count + 1) / (permutations + 1): never 0. */
static double sign_flip_p(const double *d, int n, double observed, const ap_paired_draws *dr)
{
    const int words = (n + 31) / 32;
    int as_large = 0;
    for (int k = 0; k < dr->permutations; k++) {
        const uint32_t *bits = dr->signs + (size_t)k * words;
        double sum = 0;
        for (int i = 0; i < n; i++) /* the sign as a factor (x * -1 is -x exactly): no branch to mispredict */
            sum += d[i] * (double)((int)(bits[i / 32] >> (i % 32) & 1u) * 2 - 1);
        /* a relative margin so that a flip giving back the same value counts */
        if (fabs(sum / n) >= fabs(observed) * (1 - 1e-12)) as_large++;
    }
    return (as_large + 1.0) / (dr->permutations + 1.0);
}

/* The differences that are numbers: d[0..m), m returned. */
static int finite_differences(const double *a, const double *b, int n, double *d)
{
    int m = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(a[i] - b[i])) d[m++] = a[i] - b[i];
    return m;
}

/* The comparison of the m differences d with draws made for m. */
static ap_status compare_drawn(const double *d, int m, const ap_paired_draws *dr, ap_paired *out, ap_error *err)
{
    out->n = m;
    if (m == 0) return AP_OK;
    out->delta = gsl_stats_mean(d, 1, (size_t)m);
    out->ci_lo = out->ci_hi = out->delta;
    if (m > 1 && dr->resamples > 0) {
        double *means = malloc((size_t)dr->resamples * sizeof *means);
        if (!means) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for a paired comparison");
        for (int r = 0; r < dr->resamples; r++) {
            const int *pick = dr->picks + (size_t)r * m;
            double sum = 0;
            for (int i = 0; i < m; i++) sum += d[pick[i]];
            means[r] = sum / m;
        }
        gsl_sort(means, 1, (size_t)dr->resamples);
        out->ci_lo = gsl_stats_quantile_from_sorted_data(means, 1, (size_t)dr->resamples, 0.025);
        out->ci_hi = gsl_stats_quantile_from_sorted_data(means, 1, (size_t)dr->resamples, 0.975);
        free(means);
    }
    out->p = dr->permutations > 0 ? sign_flip_p(d, m, out->delta, dr) : NAN;
    return AP_OK;
}

ap_status ap_paired_compare_drawn(const double *a, const double *b, int n, const ap_paired_draws *draws,
                                  int resamples, int permutations, uint64_t seed, ap_paired *out, ap_error *err)
{
    memset(out, 0, sizeof *out);
    out->delta = out->ci_lo = out->ci_hi = out->p = NAN;
    double *d = malloc((size_t)(n > 0 ? n : 1) * sizeof *d);
    if (!d) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for a paired comparison");
    const int m = finite_differences(a, b, n, d);
    ap_status st = AP_OK;
    if (draws && draws->m == m && draws->resamples == resamples && draws->permutations == permutations) {
        st = compare_drawn(d, m, draws, out, err);
    } else { /* draws of its own, the same that draws made for this m would hold */
        ap_paired_draws own;
        if (!(st = ap_paired_draws_make(seed, m, resamples, permutations, &own, err)))
            st = compare_drawn(d, m, &own, out, err);
        ap_paired_draws_free(&own);
    }
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
