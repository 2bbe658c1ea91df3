/* stats.c — streaming statistics of a metric: exact moments folded sample by
 * sample, quantiles from a mergeable sketch (qsketch.c), and a bootstrap CI
 * of the mean that resamples whole samples (steps of one sample are not
 * independent, samples are). */
#include <gsl/gsl_rng.h>
#include <gsl/gsl_sort.h>
#include <gsl/gsl_statistics_double.h>
#include <gsl/gsl_version.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis.h"

const char *ap_analysis_gsl_version(void) { return gsl_version; }

/* study/cuda/fold_gpu.cu repeats this on the device, operation for
 * operation (its moments must be these bits): change both together. */
void ap_moments_add(ap_moments *m, double x)
{
    if (isnan(x)) return;
    if (m->n == 0) {
        m->min = m->max = x;
    } else {
        if (x < m->min) m->min = x;
        if (x > m->max) m->max = x;
    }
    m->n += 1;
    m->sum += x;
    /* Welford: mean and the sum of squared deviations, stable for long streams */
    const double d = x - m->mean;
    m->mean += d / m->n;
    m->m2 += d * (x - m->mean);
}

void ap_moments_merge(ap_moments *into, const ap_moments *from)
{
    if (from->n == 0) return;
    if (into->n == 0) {
        *into = *from;
        return;
    }
    const double n = into->n + from->n, d = from->mean - into->mean;
    into->m2 += from->m2 + d * d * into->n * from->n / n;
    into->mean += d * from->n / n;
    into->sum += from->sum;
    into->n = n;
    if (from->min < into->min) into->min = from->min;
    if (from->max > into->max) into->max = from->max;
}

void ap_metric_acc_init(ap_metric_acc *a)
{
    memset(a, 0, sizeof *a);
    ap_qsketch_init(&a->q, AP_QSKETCH_ALPHA);
}

void ap_metric_acc_free(ap_metric_acc *a)
{
    ap_qsketch_free(&a->q);
    free(a->sample_sum);
    free(a->sample_n);
    memset(a, 0, sizeof *a);
}

ap_status ap_metric_acc_fold(ap_metric_acc *a, int sample, const ap_moments *part, ap_error *err)
{
    if (sample < 0 || sample < a->n_samples - 1)
        return ap_error_set(err, AP_ERR_RUNTIME, "statistics: sample %d folded after sample %d",
                            sample, a->n_samples - 1);
    if (sample >= a->cap) {
        int cap = a->cap ? a->cap : 64;
        while (cap <= sample) cap *= 2;
        double *sum = realloc(a->sample_sum, (size_t)cap * sizeof *sum);
        if (sum) a->sample_sum = sum;
        double *n = sum ? realloc(a->sample_n, (size_t)cap * sizeof *n) : NULL;
        if (n) a->sample_n = n;
        if (!sum || !n) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for statistics");
        a->cap = cap;
    }
    for (int s = a->n_samples; s <= sample; s++) a->sample_sum[s] = a->sample_n[s] = 0;
    if (sample >= a->n_samples) a->n_samples = sample + 1;
    a->sample_sum[sample] += part->sum;
    a->sample_n[sample] += part->n;
    ap_moments_merge(&a->all, part);
    return AP_OK;
}

/* Resamples drawn at a time by the bootstrap: their picks are shared by
 * every accumulator (they depend on the seed and n_samples alone). */
enum { BOOT_CHUNK = 64 };

ap_status ap_metric_acc_bootstrap(const ap_metric_acc *const *accs, int n_accs, int n_samples, int resamples,
                                  uint64_t seed, ap_stats *const *outs, ap_error *err)
{
    if (n_samples < 2 || resamples < 1 || n_accs < 1) return AP_OK;
    double *means = malloc((size_t)n_accs * resamples * sizeof *means);
    int *picks = malloc((size_t)BOOT_CHUNK * n_samples * sizeof *picks), *n_means = calloc((size_t)n_accs, sizeof *n_means);
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    ap_status st = AP_OK;
    if (!means || !picks || !n_means || !rng) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory for the bootstrap");
        goto done;
    }
    gsl_rng_set(rng, (unsigned long)seed);
    for (int b0 = 0; b0 < resamples; b0 += BOOT_CHUNK) {
        const int nb = resamples - b0 < BOOT_CHUNK ? resamples - b0 : BOOT_CHUNK;
        for (int i = 0; i < nb * n_samples; i++) picks[i] = (int)gsl_rng_uniform_int(rng, (unsigned long)n_samples);
        for (int j = 0; j < n_accs; j++) {
            const ap_metric_acc *a = accs[j];
            if (a->all.n == 0) continue;
            for (int b = 0; b < nb; b++) {
                double tot = 0, c = 0;
                for (int k = 0; k < n_samples; k++) {
                    const int pick = picks[b * n_samples + k];
                    if (pick < a->n_samples) {
                        tot += a->sample_sum[pick];
                        c += a->sample_n[pick];
                    }
                }
                if (c > 0) means[(size_t)j * resamples + n_means[j]++] = tot / c;
            }
        }
    }
    for (int j = 0; j < n_accs; j++) {
        const int m = n_means[j];
        double *mj = means + (size_t)j * resamples;
        if (m == 0) continue;
        gsl_sort(mj, 1, (size_t)m);
        outs[j]->ci_lo = gsl_stats_quantile_from_sorted_data(mj, 1, (size_t)m, 0.025);
        outs[j]->ci_hi = gsl_stats_quantile_from_sorted_data(mj, 1, (size_t)m, 0.975);
    }
done:
    free(means), free(picks), free(n_means);
    gsl_rng_free(rng);
    return st;
}

ap_status ap_metric_acc_stats(const ap_metric_acc *a, int n_samples, int resamples, uint64_t seed,
                              ap_stats *out, ap_error *err)
{
    memset(out, 0, sizeof *out);
    const ap_moments *m = &a->all;
    out->n = (size_t)m->n;
    if (m->n == 0) {
        out->mean = out->sd = out->median = out->p05 = out->p95 = out->min = out->max = NAN;
        out->ci_lo = out->ci_hi = NAN;
        return AP_OK;
    }
    /* the sum over samples in sample order: the same whatever the batching */
    double sum = 0;
    for (int s = 0; s < a->n_samples; s++) sum += a->sample_sum[s];
    out->mean = sum / m->n;
    out->sd = m->n > 1 ? sqrt(m->m2 / (m->n - 1)) : 0.0;
    out->min = m->min;
    out->max = m->max;
    out->median = ap_qsketch_quantile(&a->q, 0.5);
    out->p05 = ap_qsketch_quantile(&a->q, 0.05);
    out->p95 = ap_qsketch_quantile(&a->q, 0.95);
    /* the sketch's estimates are within alpha of a stream value: keep them in [min, max] */
    double *qs[3] = {&out->median, &out->p05, &out->p95};
    for (int i = 0; i < 3; i++) {
        if (*qs[i] < out->min) *qs[i] = out->min;
        if (*qs[i] > out->max) *qs[i] = out->max;
    }
    out->ci_lo = out->ci_hi = out->mean;
    return ap_metric_acc_bootstrap(&a, 1, n_samples, resamples, seed, &out, err);
}
