/* test_metrics.c — fidelity metrics on hand-computed cases and against a
 * straightforward independent implementation on random rows. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <gsl/gsl_statistics_double.h>

#include "analysis/analysis.h"

#define CLOSE(a, b, tol) assert_true(fabs((a) - (b)) <= (tol))

static void test_identical_rows(void **state)
{
    (void)state;
    float p[4] = {0.1f, 0.2f, 0.3f, 0.4f};
    unsigned char kept[4] = {1, 1, 1, 1};
    double m[AP_M_COUNT];
    ap_metrics_row(p, p, kept, 4, NULL, NULL, 0, m);
    assert_true(m[AP_M_KL] == 0.0);
    assert_true(m[AP_M_JS] == 0.0);
    assert_true(m[AP_M_TV] == 0.0);
    assert_true(m[AP_M_L1] == 0.0 && m[AP_M_L2] == 0.0);
    CLOSE(m[AP_M_COSINE], 1.0, 1e-12);
    CLOSE(m[AP_M_MASS], 1.0, 1e-7);
    assert_true(m[AP_M_PEAK_SHIFT] == 0.0);
    assert_true(m[AP_M_TOP1] == 1.0 && m[AP_M_TOP8] == 1.0 && m[AP_M_TOP10] == 1.0 && m[AP_M_TOP32] == 1.0);
    assert_true(m[AP_M_ATTN_LOSS] == 0.0);
    assert_true(isnan(m[AP_M_OUT_ERR]));
}

/* p = (1/2, 1/4, 1/4), position 1 evicted: q = (2/3, 0, 1/3). */
static void test_hand_computed(void **state)
{
    (void)state;
    float p[3] = {0.5f, 0.25f, 0.25f}, q[3] = {2.0f / 3, 0.0f, 1.0f / 3};
    unsigned char kept[3] = {1, 0, 1};
    float v[3 * 2] = {1, 0, 0, 1, 1, 1}; /* values, head_dim 2 */
    double m[AP_M_COUNT];
    ap_metrics_row(p, q, kept, 3, v, NULL, 2, m);
    double with_o[AP_M_COUNT];
    const float o_p[2] = {0.75f, 0.5f};
    ap_metrics_row(p, q, kept, 3, v, o_p, 2, with_o);
    CLOSE(with_o[AP_M_OUT_ERR], sqrt(0.0625 + 1.0 / 36) / sqrt(0.5625 + 0.25), 1e-7);
    CLOSE(m[AP_M_MASS], 0.75, 1e-7);
    CLOSE(m[AP_M_KL_REV], -log(0.75), 1e-6);          /* isolated: KL(q||p) = -log mass */
    CLOSE(m[AP_M_TV], 0.5 * (1.0 / 6 + 0.25 + 1.0 / 12), 1e-7);
    CLOSE(m[AP_M_L1], 1.0 / 6 + 0.25 + 1.0 / 12, 1e-7);
    CLOSE(m[AP_M_L2], sqrt(1.0 / 36 + 1.0 / 16 + 1.0 / 144), 1e-7);
    double dot = 0.5 * 2 / 3 + 0.25 / 3, np = sqrt(0.25 + 2 * 0.0625), nq = sqrt(4.0 / 9 + 1.0 / 9);
    CLOSE(m[AP_M_COSINE], dot / (np * nq), 1e-7);
    /* KL(p||q) with eps: dominated by the evicted 1/4 against 1e-10 */
    double z = 1 + 3e-10, kl = 0;
    const double pp[3] = {0.5, 0.25, 0.25}, qq[3] = {2.0 / 3, 0, 1.0 / 3};
    for (int i = 0; i < 3; i++) kl += (pp[i] + 1e-10) / z * log(((pp[i] + 1e-10) / z) / ((qq[i] + 1e-10) / z));
    CLOSE(m[AP_M_KL], kl, 1e-6);
    /* JS: m = (7/12, 1/8, 7/24) */
    double mm[3] = {7.0 / 12, 0.125, 7.0 / 24}, js = 0;
    for (int i = 0; i < 3; i++) {
        if (pp[i] > 0) js += 0.5 * pp[i] * log(pp[i] / mm[i]);
        if (qq[i] > 0) js += 0.5 * qq[i] * log(qq[i] / mm[i]);
    }
    CLOSE(m[AP_M_JS], js, 1e-7);
    assert_true(m[AP_M_PEAK_SHIFT] == 0.0);
    assert_true(m[AP_M_TOP1] == 1.0);
    CLOSE(m[AP_M_TOP8], 2.0 / 3, 1e-12); /* k clipped to n = 3: positions 0,1,2; 1 evicted */
    CLOSE(m[AP_M_TOP10], 2.0 / 3, 1e-12);
    CLOSE(m[AP_M_ATTN_LOSS], 0.25, 1e-7); /* the evicted position's reference mass */
    /* o_p = (0.75, 0.5), o_q = (1, 1/3): |o_q - o_p| / |o_p| */
    CLOSE(m[AP_M_OUT_ERR], sqrt(0.0625 + 1.0 / 36) / sqrt(0.5625 + 0.25), 1e-7);
    /* index alignment: compacted (2/3, 1/3, 0) against (1/2, 1/4, 1/4) */
    CLOSE(m[AP_M_INDEX_L1], (1.0 / 6 + 1.0 / 12 + 0.25) / 3, 1e-7);
    const double cc[3] = {2.0 / 3, 1.0 / 3, 0};
    double ikl = 0;
    for (int i = 0; i < 3; i++) ikl += (pp[i] + 1e-10) / z * log(((pp[i] + 1e-10) / z) / ((cc[i] + 1e-10) / z));
    CLOSE(m[AP_M_INDEX_KL], ikl, 1e-6);
    /* p.c / (|p| |c|) = (1/3 + 1/12) / (sqrt(3/8) sqrt(5/9)) */
    CLOSE(m[AP_M_INDEX_COSINE], (1.0 / 3 + 1.0 / 12) / (sqrt(0.375) * sqrt(5.0 / 9)), 1e-7);
}

static void test_peak_shift_and_recall(void **state)
{
    (void)state;
    float p[5] = {0.05f, 0.6f, 0.05f, 0.1f, 0.2f}, q[5] = {0.1f, 0.0f, 0.1f, 0.3f, 0.5f};
    unsigned char kept[5] = {1, 0, 1, 1, 1};
    double m[AP_M_COUNT];
    ap_metrics_row(p, q, kept, 5, NULL, NULL, 0, m);
    assert_true(m[AP_M_PEAK_SHIFT] == 3.0); /* argmax 1 vs 4 */
    assert_true(m[AP_M_TOP1] == 0.0);
    /* twenty positions, p falling with j except the largest at 19; the top ten
     * are 19 and 0..8, of which 2, 5 and 19 are evicted: recall@10 = 7/10 */
    float p20[20], q20[20] = {0};
    unsigned char k20[20];
    double sum = 0;
    for (int j = 0; j < 20; j++) p20[j] = j == 19 ? 0.3f : 0.05f - 0.002f * j, sum += p20[j];
    for (int j = 0; j < 20; j++) k20[j] = !(j == 2 || j == 5 || j == 19);
    ap_metrics_row(p20, q20, k20, 20, NULL, NULL, 0, m);
    CLOSE(m[AP_M_TOP10], 0.7, 1e-12);
    assert_true(m[AP_M_TOP1] == 0.0);
    CLOSE(m[AP_M_ATTN_LOSS], (p20[2] + p20[5] + p20[19]) / sum, 1e-6);
}

/* Straightforward double-precision reference on random rows. */
static void test_against_reference_implementation(void **state)
{
    (void)state;
    srand(7);
    for (int trial = 0; trial < 200; trial++) {
        int n = 1 + rand() % 300;
        float *p = malloc(n * sizeof *p), *q = malloc(n * sizeof *q);
        unsigned char *kept = malloc(n);
        double sp = 0, sq = 0;
        for (int j = 0; j < n; j++) {
            p[j] = (float)(rand() % 1000 + 1);
            kept[j] = j == n - 1 || rand() % 3 != 0;
            sp += p[j];
        }
        for (int j = 0; j < n; j++) p[j] = (float)(p[j] / sp);
        for (int j = 0; j < n; j++) sq += kept[j] ? p[j] : 0;
        for (int j = 0; j < n; j++) q[j] = kept[j] ? (float)(p[j] / sq) : 0.0f;
        double m[AP_M_COUNT];
        ap_metrics_row(p, q, kept, n, NULL, NULL, 0, m);
        double tv = 0, l2 = 0, mass = 0, klr = 0, sump = 0, sumq = 0;
        for (int j = 0; j < n; j++) {
            tv += fabs((double)p[j] - q[j]) / 2;
            l2 += ((double)p[j] - q[j]) * ((double)p[j] - q[j]);
            mass += kept[j] ? p[j] : 0;
            if (q[j] > 0) klr += q[j] * log((double)q[j] / p[j]);
            sump += p[j];
            sumq += q[j];
        }
        CLOSE(m[AP_M_TV], tv, 1e-9);
        CLOSE(m[AP_M_L2], sqrt(l2), 1e-9);
        CLOSE(m[AP_M_MASS], mass / sump, 1e-9); /* relative to the row's total */
        CLOSE(m[AP_M_KL_REV], klr, 1e-9);
        /* isolated replay identity; tolerance covers the float rounding of p, q */
        CLOSE(m[AP_M_KL_REV], -log(mass), 2e-6);
        free(p), free(q), free(kept);
    }
}

/* Folds values 1..100 (sample = i % 4) as a study does: per-sample moments in
 * sample order, every value into the sketch. */
static void fold_1_to_100(ap_metric_acc *acc, ap_error *err)
{
    ap_metric_acc_init(acc);
    for (int smp = 0; smp < 4; smp++) {
        ap_moments m = {0};
        for (int i = 1; i <= 100; i++)
            if (i % 4 == smp) {
                ap_moments_add(&m, i);
                assert_int_equal(ap_qsketch_add(&acc->q, i, err), AP_OK);
            }
        ap_moments_add(&m, NAN); /* skipped */
        assert_int_equal(ap_metric_acc_fold(acc, smp, &m, err), AP_OK);
    }
}

static void test_stats(void **state)
{
    (void)state;
    ap_error err;
    ap_metric_acc acc;
    fold_1_to_100(&acc, &err);
    ap_stats st;
    assert_int_equal(ap_metric_acc_stats(&acc, 4, 500, 1, &st, &err), AP_OK);
    assert_int_equal(st.n, 100);
    CLOSE(st.mean, 50.5, 1e-12);
    assert_true(st.min == 1 && st.max == 100);
    CLOSE(st.sd, sqrt(100.0 * 101 / 12), 1e-9); /* sample sd of 1..100 */
    /* quantiles from the sketch: within its relative accuracy of the exact ones */
    CLOSE(st.median, 50.5, 50.5 * AP_QSKETCH_ALPHA);
    CLOSE(st.p05, 5.95, 5.95 * AP_QSKETCH_ALPHA);
    CLOSE(st.p95, 95.05, 95.05 * AP_QSKETCH_ALPHA);
    assert_true(st.ci_lo <= st.mean && st.mean <= st.ci_hi);
    ap_metric_acc again;
    fold_1_to_100(&again, &err);
    ap_stats st2;
    ap_metric_acc_stats(&again, 4, 500, 1, &st2, &err);
    assert_memory_equal(&st, &st2, sizeof st); /* seeded */
    /* folding a sample before an earlier one is refused */
    ap_moments m = {0};
    ap_moments_add(&m, 1);
    assert_int_equal(ap_metric_acc_fold(&again, 1, &m, &err), AP_ERR_RUNTIME);
    ap_metric_acc_free(&acc);
    ap_metric_acc_free(&again);
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The sketch on known distributions: every quantile from 1% to 99% within
 * the stated relative accuracy of the exact one (same rank rule). */
static void test_qsketch_accuracy(void **state)
{
    (void)state;
    enum { N = 100000 };
    double *x = malloc(N * sizeof *x);
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 7);
    for (int dist = 0; dist < 3; dist++) {
        ap_qsketch q;
        ap_error err;
        ap_qsketch_init(&q, AP_QSKETCH_ALPHA);
        for (int i = 0; i < N; i++) {
            /* log-normal over 8 decades; exponential; mixed signs with exact zeros */
            x[i] = dist == 0 ? gsl_ran_lognormal(rng, -3, 3)
                 : dist == 1 ? gsl_ran_exponential(rng, 0.7)
                             : (i % 10 == 0 ? 0.0 : gsl_ran_gaussian(rng, 2.0));
            assert_int_equal(ap_qsketch_add(&q, x[i], &err), AP_OK);
        }
        qsort(x, N, sizeof *x, cmp_double);
        double worst = 0;
        for (int pc = 1; pc <= 99; pc++) {
            const double exact = gsl_stats_quantile_from_sorted_data(x, 1, N, pc / 100.0);
            const double est = ap_qsketch_quantile(&q, pc / 100.0);
            const double rel = exact == 0 ? fabs(est) : fabs(est - exact) / fabs(exact);
            if (rel > worst) worst = rel;
        }
        print_message("distribution %d: worst relative error of 99 quantiles %.5f (alpha %.3f)\n",
                      dist, worst, AP_QSKETCH_ALPHA);
        assert_true(worst <= AP_QSKETCH_ALPHA * 1.0001);
        ap_qsketch_free(&q);
    }
    gsl_rng_free(rng);
    free(x);
}

/* Merging is exact: a stream split into parts, merged in any order, gives
 * the sketch of the whole stream, bin for bin. */
static void test_qsketch_merge(void **state)
{
    (void)state;
    enum { N = 20000 };
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 11);
    double *x = malloc(N * sizeof *x);
    for (int i = 0; i < N; i++) x[i] = i % 7 == 0 ? -gsl_ran_exponential(rng, 3) : gsl_ran_lognormal(rng, 0, 4);
    ap_error err;
    ap_qsketch whole;
    ap_qsketch_init(&whole, AP_QSKETCH_ALPHA);
    for (int i = 0; i < N; i++) ap_qsketch_add(&whole, x[i], &err);
    const int splits[3] = {1, 3, 17};
    for (int k = 0; k < 3; k++) {
        ap_qsketch merged;
        ap_qsketch_init(&merged, AP_QSKETCH_ALPHA);
        for (int part = splits[k] - 1; part >= 0; part--) { /* last part first */
            ap_qsketch q;
            ap_qsketch_init(&q, AP_QSKETCH_ALPHA);
            for (int i = part; i < N; i += splits[k]) ap_qsketch_add(&q, x[i], &err);
            assert_int_equal(ap_qsketch_merge(&merged, &q, &err), AP_OK);
            ap_qsketch_free(&q);
        }
        assert_true(merged.count == whole.count && merged.zero == whole.zero);
        for (double p = 0; p <= 1.0; p += 0.01)
            assert_true(ap_qsketch_quantile(&merged, p) == ap_qsketch_quantile(&whole, p));
        ap_qsketch_free(&merged);
    }
    ap_qsketch_free(&whole);
    gsl_rng_free(rng);
    free(x);
}

/* A known effect is detected; with none, the test rejects at about its level. */
static void test_paired_comparison(void **state)
{
    (void)state;
    enum { N = 16 };
    double a[N], b[N];
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 3);
    for (int i = 0; i < N; i++) {
        b[i] = 1 + gsl_ran_gaussian(rng, 0.5);      /* samples differ a lot... */
        a[i] = b[i] + 0.1 + gsl_ran_gaussian(rng, 0.05); /* ...the policies by 0.1 */
    }
    ap_paired r;
    ap_error err;
    assert_int_equal(ap_paired_compare(a, b, N, 1000, 999, 1, &r, &err), AP_OK);
    print_message("effect 0.1: delta %.4f [%.4f, %.4f], p %.4f\n", r.delta, r.ci_lo, r.ci_hi, r.p);
    assert_true(r.n == N && fabs(r.delta - 0.1) < 0.03 && r.ci_lo > 0 && r.p < 0.01);
    /* no effect: 200 seeds, rejections at 0.05 */
    int rejected = 0;
    for (int seed = 0; seed < 200; seed++) {
        gsl_rng_set(rng, 100 + seed);
        for (int i = 0; i < N; i++) a[i] = gsl_ran_gaussian(rng, 1), b[i] = gsl_ran_gaussian(rng, 1);
        ap_paired_compare(a, b, N, 0, 999, seed, &r, &err);
        rejected += r.p < 0.05;
    }
    print_message("no effect: %d of 200 rejected at 0.05\n", rejected);
    assert_true(rejected >= 4 && rejected <= 18); /* rate within [0.02, 0.09] */
    gsl_rng_free(rng);
}

/* Samples whose difference is not a number (inf - inf) are left out; a test
 * without a p-value is not part of Holm's family. */
static void test_paired_undefined(void **state)
{
    (void)state;
    const double a[4] = {INFINITY, 1.0, 2.0, 3.0}, b[4] = {INFINITY, 0.5, 1.5, NAN};
    ap_paired r;
    ap_error err;
    assert_int_equal(ap_paired_compare(a, b, 4, 100, 99, 1, &r, &err), AP_OK);
    assert_int_equal(r.n, 2);
    CLOSE(r.delta, 0.5, 1e-12);
    const double p[4] = {NAN, 0.01, 0.04, 0.03};
    double adj[4];
    ap_holm(p, 4, adj); /* a family of three: 0.01 x 3, 0.03 x 2, 0.04 x 1 -> monotone */
    assert_true(isnan(adj[0]));
    CLOSE(adj[1], 0.03, 1e-12);
    CLOSE(adj[3], 0.06, 1e-12);
    CLOSE(adj[2], 0.06, 1e-12);
}

/* Draws made once serve every comparison with their seed: the numbers each
 * comparison gets drawing its own; one with fewer finite differences
 * draws its own. */
static void test_paired_shared_draws(void **state)
{
    (void)state;
    enum { N = 40, RESAMPLES = 500, PERMS = 99 };
    double a[N], b[N], c[N];
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 8);
    for (int i = 0; i < N; i++) b[i] = gsl_ran_gaussian(rng, 1), a[i] = b[i] + 0.2 + gsl_ran_gaussian(rng, 0.3);
    gsl_rng_free(rng);
    ap_error err;
    ap_paired_draws dr;
    assert_int_equal(ap_paired_draws_make(11, N, RESAMPLES, PERMS, &dr, &err), AP_OK);
    ap_paired own, shared;
    for (int pass = 0; pass < 2; pass++) {
        memcpy(c, a, sizeof c);
        if (pass) c[3] = NAN; /* 39 differences: the draws for 40 do not apply */
        assert_int_equal(ap_paired_compare(c, b, N, RESAMPLES, PERMS, 11, &own, &err), AP_OK);
        assert_int_equal(ap_paired_compare_drawn(c, b, N, &dr, RESAMPLES, PERMS, 11, &shared, &err), AP_OK);
        assert_int_equal(shared.n, N - pass);
        assert_memory_equal(&own, &shared, sizeof own);
        assert_true(own.ci_lo < own.delta && own.delta < own.ci_hi && own.p > 0 && own.p <= 1);
    }
    ap_paired_draws_free(&dr);
}

/* The bootstrap of several accumulators at once gives each the CI it gets
 * alone (500 resamples: several of the shared draws' chunks). */
static void test_bootstrap_many(void **state)
{
    (void)state;
    ap_error err;
    ap_metric_acc acc[2];
    fold_1_to_100(&acc[0], &err);
    ap_metric_acc_init(&acc[1]);
    for (int smp = 0; smp < 4; smp++) { /* sample 2 has no value: a pick of it adds nothing */
        ap_moments m = {0};
        for (int i = 0; i < 30 && smp != 2; i++) ap_moments_add(&m, (smp + 1) * sin(i));
        assert_int_equal(ap_metric_acc_fold(&acc[1], smp, &m, &err), AP_OK);
    }
    ap_stats alone[2], together[2];
    for (int j = 0; j < 2; j++) {
        assert_int_equal(ap_metric_acc_stats(&acc[j], 4, 500, 5, &alone[j], &err), AP_OK);
        assert_int_equal(ap_metric_acc_stats(&acc[j], 4, 0, 0, &together[j], &err), AP_OK);
    }
    const ap_metric_acc *accs[2] = {&acc[0], &acc[1]};
    ap_stats *outs[2] = {&together[0], &together[1]};
    assert_int_equal(ap_metric_acc_bootstrap(accs, 2, 4, 500, 5, outs, &err), AP_OK);
    for (int j = 0; j < 2; j++) {
        assert_memory_equal(&alone[j], &together[j], sizeof alone[j]);
        /* against the bootstrap written out: 500 resamples of 4 picks, one generator */
        gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
        gsl_rng_set(rng, 5);
        double means[500];
        int m = 0;
        for (int r = 0; r < 500; r++) {
            double tot = 0, c = 0;
            for (int k = 0; k < 4; k++) {
                const int pick = (int)gsl_rng_uniform_int(rng, 4);
                tot += acc[j].sample_sum[pick], c += acc[j].sample_n[pick];
            }
            if (c > 0) means[m++] = tot / c;
        }
        gsl_rng_free(rng);
        qsort(means, (size_t)m, sizeof *means, cmp_double);
        assert_true(alone[j].ci_lo == gsl_stats_quantile_from_sorted_data(means, 1, (size_t)m, 0.025));
        assert_true(alone[j].ci_hi == gsl_stats_quantile_from_sorted_data(means, 1, (size_t)m, 0.975));
        assert_true(alone[j].ci_lo < alone[j].ci_hi);
        ap_metric_acc_free(&acc[j]);
    }
}

/* Bucket counts handed over (as the device replay finds them) make the
 * sketch that adding the values one by one makes: positive, negative,
 * below the zero threshold and past the clamped keys. */
static void test_qsketch_bins(void **state)
{
    (void)state;
    enum { N = 20000 };
    ap_qsketch one, bins;
    ap_qsketch_init(&one, AP_QSKETCH_ALPHA);
    ap_qsketch_init(&bins, AP_QSKETCH_ALPHA);
    const int64_t lim = ap_qsketch_key_limit(&one), width = 2 * lim + 1;
    uint32_t *count = calloc(2 * (size_t)width, sizeof *count);
    uint64_t zero = 0;
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 21);
    ap_error err;
    for (int i = 0; i < N; i++) {
        double x = gsl_ran_gaussian(rng, 1) * exp(gsl_ran_gaussian(rng, 6));
        if (i % 97 == 0) x = 1e-13 * (i % 2 ? 1 : -1);
        if (i % 89 == 0) x = 3e14;
        assert_int_equal(ap_qsketch_add(&one, x, &err), AP_OK);
        const double ax = fabs(x);
        if (ax < AP_QSKETCH_ZERO) {
            zero++;
            continue;
        }
        double key = ceil(log(ax) / one.log_gamma);
        key = key > lim ? lim : key < -lim ? -lim : key;
        count[(size_t)(x < 0) * width + (size_t)(key + lim)]++;
    }
    for (int side = 0; side < 2; side++) {
        const uint32_t *c = count + (size_t)side * width;
        int64_t lo = 0, hi = width - 1;
        while (lo < width && !c[lo]) lo++;
        while (hi >= 0 && !c[hi]) hi--;
        const size_t n = hi >= lo ? (size_t)(hi - lo + 1) : 0;
        assert_int_equal(ap_qsketch_add_bins(&bins, side, lo - lim, c + lo, n, side ? 0 : zero, &err), AP_OK);
    }
    assert_true(one.count == bins.count && one.zero == bins.zero && one.count == N);
    for (int pc = 0; pc <= 100; pc += 5) assert_true(ap_qsketch_quantile(&one, pc / 100.0) == ap_qsketch_quantile(&bins, pc / 100.0));
    gsl_rng_free(rng);
    free(count);
    ap_qsketch_free(&one);
    ap_qsketch_free(&bins);
}

static void test_holm(void **state)
{
    (void)state;
    const double p[4] = {0.01, 0.04, 0.03, 0.005};
    double adj[4];
    ap_holm(p, 4, adj);
    /* sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06 */
    const double want[4] = {0.03, 0.06, 0.06, 0.02};
    for (int i = 0; i < 4; i++) CLOSE(adj[i], want[i], 1e-12);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identical_rows),
        cmocka_unit_test(test_hand_computed),
        cmocka_unit_test(test_peak_shift_and_recall),
        cmocka_unit_test(test_against_reference_implementation),
        cmocka_unit_test(test_stats),
        cmocka_unit_test(test_qsketch_accuracy),
        cmocka_unit_test(test_qsketch_merge),
        cmocka_unit_test(test_paired_comparison),
        cmocka_unit_test(test_holm),
        cmocka_unit_test(test_paired_undefined),
        cmocka_unit_test(test_paired_shared_draws),
        cmocka_unit_test(test_bootstrap_many),
        cmocka_unit_test(test_qsketch_bins),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
