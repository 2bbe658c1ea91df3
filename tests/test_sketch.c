/* test_sketch.c — the sketches' guarantees, measured over many seeds on
 * Zipf(1.1) streams of 1e5 updates:
 *   Count-Min never underestimates; error <= eps*|f|_1 for >= (1-delta) of
 *   items at w = ceil(e/eps), d = ceil(ln 1/delta); conservative update's
 *   estimate <= plain update's; merge equals one sketch of both streams.
 *   Count Sketch rows are unbiased (mean signed error over 100 seeds within
 *   3 standard errors of 0); error <= eps*|f|_2 at w = ceil(3/eps^2) for
 *   >= (1-delta) of items.
 *   RACE's mean estimate is within 10% of the exact sum of (1 - theta/pi)^b
 *   over 1000 queries with R = 64. */
#include <gsl/gsl_math.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sketch/policy.h"

enum { UNIVERSE = 5000, UPDATES = 100000, SEEDS = 20 };

static int stream[UPDATES];
static double freq[UNIVERSE];
static double l1, l2;

static int setup(void **state)
{
    (void)state;
    double *p = malloc(UNIVERSE * sizeof *p);
    for (int i = 0; i < UNIVERSE; i++) p[i] = pow(i + 1, -1.1);
    gsl_ran_discrete_t *zipf = gsl_ran_discrete_preproc(UNIVERSE, p);
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 42);
    for (int u = 0; u < UPDATES; u++) {
        /* scatter ranks over the key space so keys are not just 0..N */
        stream[u] = (int)gsl_ran_discrete(rng, zipf);
        freq[stream[u]] += 1;
    }
    for (int i = 0; i < UNIVERSE; i++) {
        l1 += freq[i];
        l2 += freq[i] * freq[i];
    }
    l2 = sqrt(l2);
    gsl_rng_free(rng);
    gsl_ran_discrete_free(zipf);
    free(p);
    return 0;
}

static uint64_t key_of(int item) { return (uint64_t)item * 7919u + 13u; }

static void test_cms_guarantees(void **state)
{
    (void)state;
    const double eps = 0.01, delta = 0.05;
    const int w = (int)ceil(M_E / eps), d = (int)ceil(log(1 / delta));
    double worst_share = 1;
    for (int seed = 1; seed <= SEEDS; seed++) {
        ap_cms plain, cu;
        ap_error err;
        assert_int_equal(ap_cms_init(&plain, d, w, 0, (uint64_t)seed, &err), AP_OK);
        assert_int_equal(ap_cms_init(&cu, d, w, 1, (uint64_t)seed, &err), AP_OK);
        for (int u = 0; u < UPDATES; u++) {
            ap_cms_update(&plain, key_of(stream[u]), 1.0f);
            ap_cms_update(&cu, key_of(stream[u]), 1.0f);
        }
        int within = 0;
        for (int i = 0; i < UNIVERSE; i++) {
            float ep = ap_cms_query(&plain, key_of(i)), ec = ap_cms_query(&cu, key_of(i));
            assert_true(ep >= freq[i]);  /* never underestimates */
            assert_true(ec >= freq[i]);
            assert_true(ec <= ep);       /* conservative update is never worse */
            within += ep - freq[i] <= eps * l1;
        }
        double share = (double)within / UNIVERSE;
        worst_share = fmin(worst_share, share);
        assert_true(share >= 1 - delta);
        ap_cms_free(&plain);
        ap_cms_free(&cu);
    }
    print_message("count-min w=%d d=%d over %d seeds: never under, CU <= plain, worst share within "
                  "eps*|f|_1: %.4f (need >= %.2f)\n", w, d, SEEDS, worst_share, 1 - delta);
}

static void test_cms_merge(void **state)
{
    (void)state;
    ap_cms a, b, all, other;
    ap_error err;
    ap_cms_init(&a, 3, 100, 0, 7, &err);
    ap_cms_init(&b, 3, 100, 0, 7, &err);
    ap_cms_init(&all, 3, 100, 0, 7, &err);
    ap_cms_init(&other, 3, 100, 0, 8, &err);
    for (int u = 0; u < UPDATES; u++) {
        ap_cms_update(u % 2 ? &a : &b, key_of(stream[u]), 1.0f);
        ap_cms_update(&all, key_of(stream[u]), 1.0f);
    }
    assert_int_equal(ap_cms_merge(&a, &b, &err), AP_OK);
    assert_memory_equal(a.counts, all.counts, 3 * 100 * sizeof(float));
    assert_int_equal(ap_cms_merge(&a, &other, &err), AP_ERR_USAGE);
    assert_true(ap_cms_bytes(&a) >= 3 * 100 * sizeof(float));
    ap_cms_reset(&a);
    assert_true(ap_cms_query(&a, key_of(0)) == 0.0f);
    ap_cms_free(&a);
    ap_cms_free(&b);
    ap_cms_free(&all);
    ap_cms_free(&other);
}

static void test_count_sketch_unbiased_rows(void **state)
{
    (void)state;
    enum { RUNS = 100 };
    const int items[] = {0, 3, 30, 300, 3000};
    for (size_t k = 0; k < sizeof items / sizeof items[0]; k++) {
        double sum = 0, sum2 = 0;
        for (int seed = 1; seed <= RUNS; seed++) {
            ap_count_sketch cs;
            ap_error err;
            assert_int_equal(ap_cs_init(&cs, 1, 64, (uint64_t)seed * 1000 + k, &err), AP_OK);
            for (int u = 0; u < UPDATES; u++) ap_cs_update(&cs, key_of(stream[u]), 1.0f);
            double e = ap_cs_row_estimate(&cs, 0, key_of(items[k])) - freq[items[k]];
            sum += e;
            sum2 += e * e;
            ap_cs_free(&cs);
        }
        double mean = sum / RUNS, sd = sqrt(fmax(sum2 / RUNS - mean * mean, 0));
        double se = sd / sqrt(RUNS);
        print_message("count sketch row, item rank %d (f=%.0f): mean signed error %.1f, 3 SE %.1f\n",
                      items[k] + 1, freq[items[k]], mean, 3 * se);
        assert_true(fabs(mean) <= 3 * se);
    }
}

static void test_count_sketch_l2_bound(void **state)
{
    (void)state;
    const double eps = 0.1, delta = 0.05;
    const int w = (int)ceil(3 / (eps * eps)), d = 5;
    double worst = 1;
    for (int seed = 1; seed <= SEEDS; seed++) {
        ap_count_sketch cs;
        ap_error err;
        assert_int_equal(ap_cs_init(&cs, d, w, (uint64_t)seed, &err), AP_OK);
        for (int u = 0; u < UPDATES; u++) ap_cs_update(&cs, key_of(stream[u]), 1.0f);
        int within = 0;
        for (int i = 0; i < UNIVERSE; i++)
            within += fabs(ap_cs_query(&cs, key_of(i)) - freq[i]) <= eps * l2;
        worst = fmin(worst, (double)within / UNIVERSE);
        ap_cs_free(&cs);
    }
    print_message("count sketch w=%d d=%d: worst share within eps*|f|_2 over %d seeds: %.4f\n", w, d,
                  SEEDS, worst);
    assert_true(worst >= 1 - delta);
}

static double angle_kernel(const float *x, const float *y, int dim, int bits)
{
    double dot = 0, nx = 0, ny = 0;
    for (int i = 0; i < dim; i++) {
        dot += (double)x[i] * y[i];
        nx += (double)x[i] * x[i];
        ny += (double)y[i] * y[i];
    }
    double c = dot / sqrt(nx * ny);
    c = c > 1 ? 1 : c < -1 ? -1 : c;
    return pow(1 - acos(c) / M_PI, bits);
}

static void test_race_estimates_kernel_sum(void **state)
{
    (void)state;
    enum { DIM = 16, N = 2000, QUERIES = 1000, ROWS = 64, BITS = 4 };
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 5);
    float *data = malloc((size_t)N * DIM * sizeof *data), *query = malloc(DIM * sizeof *query);
    /* clustered data so the kernel sum varies between queries */
    for (int i = 0; i < N * DIM; i++) data[i] = (float)gsl_ran_gaussian(rng, 1.0) + (i % DIM < 4 ? 2.0f : 0);
    ap_race race;
    ap_error err;
    assert_int_equal(ap_race_init(&race, ROWS, BITS, DIM, 99, &err), AP_OK);
    for (int i = 0; i < N; i++) ap_race_add(&race, data + (size_t)i * DIM, 1.0f);
    double sum_est = 0, sum_exact = 0;
    for (int qi = 0; qi < QUERIES; qi++) {
        for (int d = 0; d < DIM; d++) query[d] = (float)gsl_ran_gaussian(rng, 1.0);
        double exact = 0;
        for (int i = 0; i < N; i++) exact += angle_kernel(query, data + (size_t)i * DIM, DIM, BITS);
        sum_exact += exact;
        sum_est += ap_race_query(&race, query);
    }
    double rel = fabs(sum_est - sum_exact) / sum_exact;
    print_message("race R=%d b=%d: mean estimate %.2f, exact %.2f, relative error %.4f\n", ROWS, BITS,
                  sum_est / QUERIES, sum_exact / QUERIES, rel);
    assert_true(rel <= 0.10);
    ap_race_free(&race);
    free(data);
    free(query);
    gsl_rng_free(rng);
}

static void test_hash_range_and_determinism(void **state)
{
    (void)state;
    ap_hash a, b;
    ap_hash_init(&a, 3);
    ap_hash_init(&b, 3);
    for (uint64_t k = 0; k < 1000; k++) {
        assert_true(ap_hash_eval(&a, k) < (1ull << 61) - 1);
        assert_true(ap_hash_eval(&a, k) == ap_hash_eval(&b, k));
    }
    ap_cms s;
    ap_error err;
    assert_int_equal(ap_cms_init(&s, 0, 10, 0, 1, &err), AP_ERR_USAGE);
    assert_int_equal(ap_race_init(&(ap_race){0}, 4, 40, 8, 1, &err), AP_ERR_USAGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cms_guarantees),
        cmocka_unit_test(test_cms_merge),
        cmocka_unit_test(test_count_sketch_unbiased_rows),
        cmocka_unit_test(test_count_sketch_l2_bound),
        cmocka_unit_test(test_race_estimates_kernel_sum),
        cmocka_unit_test(test_hash_range_and_determinism),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
