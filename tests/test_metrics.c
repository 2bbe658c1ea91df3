/* test_metrics.c — fidelity metrics on hand-computed cases and against a
 * straightforward independent implementation on random rows. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

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
    assert_true(m[AP_M_TOP1] == 1.0 && m[AP_M_TOP8] == 1.0 && m[AP_M_TOP32] == 1.0);
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
    /* o_p = (0.75, 0.5), o_q = (1, 1/3): |o_q - o_p| / |o_p| */
    CLOSE(m[AP_M_OUT_ERR], sqrt(0.0625 + 1.0 / 36) / sqrt(0.5625 + 0.25), 1e-7);
    /* index alignment: compacted (2/3, 1/3, 0) against (1/2, 1/4, 1/4) */
    CLOSE(m[AP_M_INDEX_L1], (1.0 / 6 + 1.0 / 12 + 0.25) / 3, 1e-7);
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

static void test_stats(void **state)
{
    (void)state;
    ap_series s = {0};
    ap_error err;
    for (int i = 1; i <= 100; i++) ap_series_add(&s, i, i % 4, &err);
    ap_series_add(&s, NAN, 0, &err);
    ap_stats st;
    assert_int_equal(ap_stats_compute(&s, 4, 500, 1, &st, &err), AP_OK);
    assert_int_equal(st.n, 100);
    CLOSE(st.mean, 50.5, 1e-12);
    CLOSE(st.median, 50.5, 1e-12);
    assert_true(st.min == 1 && st.max == 100);
    CLOSE(st.sd, sqrt(100.0 * 101 / 12), 1e-9); /* sample sd of 1..100 */
    CLOSE(st.p05, 5.95, 1e-9);
    assert_true(st.ci_lo <= st.mean && st.mean <= st.ci_hi);
    ap_stats again;
    ap_stats_compute(&s, 4, 500, 1, &again, &err);
    assert_memory_equal(&st, &again, sizeof st); /* seeded */
    ap_series_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identical_rows),
        cmocka_unit_test(test_hand_computed),
        cmocka_unit_test(test_peak_shift_and_recall),
        cmocka_unit_test(test_against_reference_implementation),
        cmocka_unit_test(test_stats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
