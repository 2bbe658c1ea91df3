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

/* Sign-flip test: under "no difference" each sample's difference is as
 * likely negative as positive, so the observed |mean| is ranked among the
 * means with random signs. (count + 1) / (permutations + 1): never 0. */
static double sign_flip_p(const double *d, int n, double observed, int permutations, gsl_rng *rng)
{
    int as_large = 0;
    for (int k = 0; k < permutations; k++) {
        double sum = 0;
        unsigned long bits = 0;
        for (int i = 0; i < n; i++) {
            if (i % 32 == 0) bits = gsl_rng_get(rng); /* mt19937: 32 random bits, one sign each */
            sum += bits >> (i % 32) & 1u ? d[i] : -d[i];
        }
        /* a relative margin so that a flip giving back the same value counts */
        if (fabs(sum / n) >= fabs(observed) * (1 - 1e-12)) as_large++;
    }
    return (as_large + 1.0) / (permutations + 1.0);
}

ap_status ap_paired_compare(const double *a, const double *b, int n, int resamples, int permutations,
                            uint64_t seed, ap_paired *out, ap_error *err)
{
    memset(out, 0, sizeof *out);
    out->delta = out->ci_lo = out->ci_hi = out->p = NAN;
    double *d = malloc((size_t)(n > 0 ? n : 1) * sizeof *d);
    double *means = malloc((size_t)(resamples > 0 ? resamples : 1) * sizeof *means);
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    ap_status st = AP_OK;
    if (!d || !means || !rng) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory for a paired comparison");
        goto done;
    }
    int m = 0; /* samples where both policies have a value and their difference is a number */
    for (int i = 0; i < n; i++)
        if (isfinite(a[i] - b[i])) d[m++] = a[i] - b[i];
    out->n = m;
    if (m == 0) goto done;
    out->delta = gsl_stats_mean(d, 1, (size_t)m);
    out->ci_lo = out->ci_hi = out->delta;
    gsl_rng_set(rng, (unsigned long)seed);
    if (m > 1 && resamples > 0) {
        for (int r = 0; r < resamples; r++) {
            double sum = 0;
            for (int i = 0; i < m; i++) sum += d[gsl_rng_uniform_int(rng, (unsigned long)m)];
            means[r] = sum / m;
        }
        gsl_sort(means, 1, (size_t)resamples);
        out->ci_lo = gsl_stats_quantile_from_sorted_data(means, 1, (size_t)resamples, 0.025);
        out->ci_hi = gsl_stats_quantile_from_sorted_data(means, 1, (size_t)resamples, 0.975);
    }
    out->p = permutations > 0 ? sign_flip_p(d, m, out->delta, permutations, rng) : NAN;
done:
    free(d);
    free(means);
    gsl_rng_free(rng);
    return st;
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
