/* test_quant.c — KIVI quantisation of the cache (--quant; sketch/quant.c,
 * tracer/replay_quant.c):
 *   - the quantiser: 2^bits levels between the span's minimum and maximum,
 *     every value within half a step, the extremes exact
 *   - the isolated replay's row under `full` + quantisation equals a softmax
 *     over keys quantised here independently (per channel, blocks of the
 *     group size, the residual exact); with budget >= T an evicting policy
 *     gives the same rows (pure quantisation)
 *   - int8 changes the bundled model's rows by less than 1e-2; nothing
 *     quantised (a residual past T) gives the reference row
 *   - the bytes held: codes, fp16 scales and minima, the fp16 residual */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/engine.h"
#include "tracer/tracer.h"
#include "testutil.h"

#define MODEL AP_SOURCE_DIR "/models/attnprobe-mini"
enum { T = 80, WARMUP = 8, STRIDE = 4 };

static ap_model *model;
static ap_trace tr;

static int setup(void **state)
{
    (void)state;
    ap_samples samples;
    ap_engine *e;
    ap_error err;
    const int layer = 5;
    if (testutil_model_samples(MODEL, 1, T, T, &model, &samples)) return -1;
    if (ap_engine_create(model, AP_BACKEND_CPU, AP_PRECISION_FP32, &e, &err) ||
        ap_trace_run(e, model, &samples, &layer, 1, &tr, NULL, NULL, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    ap_engine_free(e);
    ap_samples_free(&samples);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ap_trace_free(&tr);
    ap_model_free(model);
    return 0;
}

static void test_quantiser_levels(void **state)
{
    (void)state;
    float x[37], out[37];
    for (int bits = 2; bits <= 8; bits *= 2) {
        for (int i = 0; i < 37; i++) x[i] = sinf(i * 1.7f) * 3 + (i % 5) * 0.25f;
        ap_quant_span(x, 1, 37, bits, out);
        float lo = x[0], hi = x[0];
        for (int i = 0; i < 37; i++) lo = fminf(lo, x[i]), hi = fmaxf(hi, x[i]);
        const double step = ((double)hi - lo) / ((1 << bits) - 1);
        for (int i = 0; i < 37; i++) {
            assert_true(fabs((double)out[i] - x[i]) <= step / 2 * (1 + 1e-6));
            const double level = (out[i] - (double)lo) / step; /* on one of the 2^bits levels */
            assert_true(fabs(level - nearbyint(level)) < 1e-4 && level > -1e-4 && level < (1 << bits) - 1 + 1e-4);
            if (x[i] == lo || x[i] == hi) assert_true(fabs((double)out[i] - x[i]) < 1e-6 * (fabs(x[i]) + 1));
        }
    }
    float same[4] = {2, 2, 2, 2}; /* no spread: nothing to round */
    ap_quant_span(same, 1, 4, 2, out);
    assert_memory_equal(out, same, sizeof same);
}

/* Brute force: key j as held at step t, from its block's own min and max. */
static float held_key(const ap_quant *qz, const float *k, int j, int d, int t)
{
    const int g0 = j / qz->group * qz->group;
    if (g0 + qz->group - 1 > t - qz->residual || g0 + qz->group > T) return k[(size_t)j * tr.head_dim + d];
    float lo = INFINITY, hi = -INFINITY;
    for (int x = g0; x < g0 + qz->group; x++) {
        lo = fminf(lo, k[(size_t)x * tr.head_dim + d]);
        hi = fmaxf(hi, k[(size_t)x * tr.head_dim + d]);
    }
    const double step = ((double)hi - lo) / ((1 << qz->bits) - 1);
    return step > 0 ? (float)(lo + nearbyint((k[(size_t)j * tr.head_dim + d] - (double)lo) / step) * step)
                    : k[(size_t)j * tr.head_dim + d];
}

typedef struct {
    const ap_quant *qz;
    double worst_vs_brute, worst_vs_reference;
    float rows[T][16][T]; /* [t][head][j] the policy rows seen */
} capture;

static ap_status sink(void *ctx, const ap_row_event *ev, ap_error *err)
{
    (void)err;
    capture *c = ctx;
    const int D = tr.head_dim;
    const float *q = tr.q[0] + ((size_t)ev->head * T + ev->t) * D, *k = tr.k[0] + (size_t)ev->head * T * D;
    double logit[T], top = -INFINITY, sum = 0;
    for (int j = 0; j <= ev->t; j++) {
        double dot = 0;
        for (int d = 0; d < D; d++) dot += (double)q[d] * held_key(c->qz, k, j, d, ev->t);
        logit[j] = dot / sqrt((double)D);
        top = fmax(top, logit[j]);
    }
    for (int j = 0; j <= ev->t; j++) sum += exp(logit[j] - top);
    for (int j = 0; j <= ev->t; j++) {
        const double want = exp(logit[j] - top) / sum;
        c->worst_vs_brute = fmax(c->worst_vs_brute, fabs(ev->q[j] - want));
        c->worst_vs_reference = fmax(c->worst_vs_reference, fabs(ev->q[j] - ev->p[j]));
        c->rows[ev->t][ev->head][j] = ev->q[j];
    }
    return AP_OK;
}

static void replay(const char *name, int budget, const ap_quant *qz, capture *c)
{
    ap_policy_params p;
    ap_policy_params_default(&p, name);
    p.budget = budget;
    p.quant = *qz;
    memset(c, 0, sizeof *c);
    c->qz = qz;
    ap_replay_opts o = {.warmup = WARMUP, .stride = STRIDE, .sink = sink, .sink_ctx = c};
    ap_replay_cost cost;
    ap_error err;
    if (ap_replay_isolated(&tr, 0, 0, &p, &o, &cost, &err)) fail_msg("%s", err.msg);
    assert_true(cost.kv_quant_bytes > 0 && cost.kv_quant_bytes < cost.kv_bytes);
}

static void test_full_is_pure_quantisation(void **state)
{
    (void)state;
    assert_true(tr.n_head <= 16);
    static capture full, h2o;
    const ap_quant cases[3] = {{2, 32, 32}, {4, 16, 8}, {8, 32, 0}};
    for (int c = 0; c < 3; c++) {
        replay("full", 64, &cases[c], &full);
        replay("h2o", T, &cases[c], &h2o); /* budget >= T: nothing evicted */
        print_message("%d bits, group %d, residual %d: rows within %.2g of brute force, %.2g of the reference\n",
                      cases[c].bits, cases[c].group, cases[c].residual, full.worst_vs_brute, full.worst_vs_reference);
        assert_true(full.worst_vs_brute < 1e-6);
        assert_true(full.worst_vs_reference > 0);
        assert_memory_equal(full.rows, h2o.rows, sizeof full.rows);
        if (cases[c].bits == 8) assert_true(full.worst_vs_reference < 1e-2);
    }
    const ap_quant none = {8, 32, T}; /* the residual covers every position: the exact row */
    replay("full", 64, &none, &full);
    assert_true(full.worst_vs_reference < 1e-5);
}

static void test_bytes_held(void **state)
{
    (void)state;
    const ap_quant q = {2, 4, 4};
    const int kept[6] = {0, 1, 2, 5, 9, 11}, D = 8;
    /* at t = 11: blocks 0 (0..3) and 1 (4..7) are older than the residual (8..11) */
    const double key_codes = 4 * D * 0.25, key_scales = 2 * (2.0 * D * 2), exact = 2 * (2 * D * 2.0); /* 9, 11: k and v */
    const double value_codes = 4 * (D * 0.25 + 2 * 2 * 2.0); /* positions 0, 1, 2, 5: two groups of 4 channels */
    assert_true(fabs(ap_quant_bytes(&q, kept, 6, 11, D) - (key_codes + key_scales + value_codes + exact)) < 1e-9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantiser_levels),
        cmocka_unit_test(test_full_is_pure_quantisation),
        cmocka_unit_test(test_bytes_held),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
