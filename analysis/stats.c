/* stats.c — summary statistics of a metric with GSL, and a bootstrap CI of
 * the mean that resamples whole samples (steps of one sample are not
 * independent, samples are). */
#include <gsl/gsl_rng.h>
#include <gsl/gsl_sort.h>
#include <gsl/gsl_statistics_double.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis.h"

ap_status ap_series_add(ap_series *s, double value, int sample, ap_error *err)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        double *v = realloc(s->value, cap * sizeof *v);
        if (v) s->value = v;
        int *smp = v ? realloc(s->sample, cap * sizeof *smp) : NULL;
        if (smp) s->sample = smp;
        if (!v || !smp) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for metric values");
        s->cap = cap;
    }
    s->value[s->n] = value;
    s->sample[s->n] = sample;
    s->n++;
    return AP_OK;
}

void ap_series_free(ap_series *s)
{
    free(s->value);
    free(s->sample);
    memset(s, 0, sizeof *s);
}

ap_status ap_stats_compute(const ap_series *s, int n_samples, int resamples, uint64_t seed,
                           ap_stats *out, ap_error *err)
{
    memset(out, 0, sizeof *out);
    size_t n = 0;
    double *x = malloc((s->n ? s->n : 1) * sizeof *x);
    double *sum = calloc((size_t)(n_samples > 0 ? n_samples : 1), sizeof *sum);
    double *cnt = calloc((size_t)(n_samples > 0 ? n_samples : 1), sizeof *cnt);
    if (!x || !sum || !cnt) {
        free(x), free(sum), free(cnt);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for statistics");
    }
    for (size_t i = 0; i < s->n; i++) {
        if (isnan(s->value[i])) continue;
        x[n++] = s->value[i];
        if (s->sample[i] >= 0 && s->sample[i] < n_samples) {
            sum[s->sample[i]] += s->value[i];
            cnt[s->sample[i]] += 1;
        }
    }
    out->n = n;
    if (n == 0) {
        out->mean = out->sd = out->median = out->p05 = out->p95 = out->min = out->max = NAN;
        out->ci_lo = out->ci_hi = NAN;
        free(x), free(sum), free(cnt);
        return AP_OK;
    }
    out->mean = gsl_stats_mean(x, 1, n);
    out->sd = n > 1 ? gsl_stats_sd_m(x, 1, n, out->mean) : 0.0;
    gsl_sort(x, 1, n);
    out->min = x[0];
    out->max = x[n - 1];
    out->median = gsl_stats_median_from_sorted_data(x, 1, n);
    out->p05 = gsl_stats_quantile_from_sorted_data(x, 1, n, 0.05);
    out->p95 = gsl_stats_quantile_from_sorted_data(x, 1, n, 0.95);
    out->ci_lo = out->ci_hi = out->mean;
    if (n_samples > 1 && resamples > 0) {
        double *means = malloc((size_t)resamples * sizeof *means);
        gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
        if (!means || !rng) {
            free(means);
            gsl_rng_free(rng);
            free(x), free(sum), free(cnt);
            return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for the bootstrap");
        }
        gsl_rng_set(rng, (unsigned long)seed);
        int m = 0;
        for (int b = 0; b < resamples; b++) {
            double tot = 0, c = 0;
            for (int k = 0; k < n_samples; k++) {
                int pick = (int)gsl_rng_uniform_int(rng, (unsigned long)n_samples);
                tot += sum[pick];
                c += cnt[pick];
            }
            if (c > 0) means[m++] = tot / c;
        }
        if (m > 0) {
            gsl_sort(means, 1, (size_t)m);
            out->ci_lo = gsl_stats_quantile_from_sorted_data(means, 1, (size_t)m, 0.025);
            out->ci_hi = gsl_stats_quantile_from_sorted_data(means, 1, (size_t)m, 0.975);
        }
        free(means);
        gsl_rng_free(rng);
    }
    free(x), free(sum), free(cnt);
    return AP_OK;
}
