/* test_mainjob.c — the main job's invariants on the bundled model:
 *   full (and any policy with budget >= T) gives kl = 0, cosine = 1,
 *   mass_retained = 1 exactly; isolated replay satisfies
 *   kl_rev = -log mass_retained; a larger budget never lowers mean
 *   mass_retained for window, sink and h2o; cascade with full equals the
 *   reference within 1e-5; a saved trace replays bit-identically. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "analysis/analysis.h"
#include "tracer/tracer.h"

#define MODEL AP_SOURCE_DIR "/models/attnprobe-mini"
enum { T = 128, WARMUP = 16, STRIDE = 8 };

static ap_model *model;
static ap_tokenizer *tok;
static ap_engine *engine;
static ap_trace trace;
static const int LAYERS[2] = {6, 10};

static int setup(void **state)
{
    (void)state;
    ap_error err;
    char *text = NULL;
    size_t n = 0;
    FILE *f = fopen(MODEL "/sample.txt", "rb");
    if (!f) return -1;
    text = malloc(1 << 16);
    n = fread(text, 1, 1 << 16, f);
    fclose(f);
    ap_samples samples;
    if (ap_model_load(MODEL, &model, &err) || ap_tokenizer_load_dir(MODEL, &tok, &err) ||
        ap_engine_create(model, AP_BACKEND_CPU, AP_PRECISION_FP32, &engine, &err) ||
        ap_samples_make(tok, text, n, 2, T, WARMUP + 1, &samples, &err) ||
        ap_trace_run(engine, model, &samples, LAYERS, 2, &trace, NULL, NULL, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    free(text);
    int ok = samples.n == 2 && samples.len[0] == T;
    ap_samples_free(&samples);
    return ok ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    ap_trace_free(&trace);
    ap_engine_free(engine);
    ap_tokenizer_free(tok);
    ap_model_free(model);
    return 0;
}

/* Every value of one metric, in the order the rows came. */
typedef struct {
    double *value;
    size_t n, cap;
} values;

static int values_add(values *v, double x)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 256;
        double *p = realloc(v->value, cap * sizeof *p);
        if (!p) return -1;
        v->value = p;
        v->cap = cap;
    }
    v->value[v->n++] = x;
    return 0;
}

/* Collects every metric of every emitted row, and the largest |q - p|. */
typedef struct {
    values s[AP_M_COUNT];
    double max_abs_diff, max_klrev_gap;
} collect;

static ap_status sink(void *ctx, const ap_row_event *ev, ap_error *err)
{
    collect *c = ctx;
    double m[AP_M_COUNT];
    ap_metrics_row(ev->p, ev->q, ev->kept, ev->n, ev->v, ev->o_p, ev->head_dim, m);
    for (int k = 0; k < AP_M_COUNT; k++)
        if (values_add(&c->s[k], m[k])) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    for (int j = 0; j < ev->n; j++) c->max_abs_diff = fmax(c->max_abs_diff, fabs(ev->p[j] - ev->q[j]));
    c->max_klrev_gap = fmax(c->max_klrev_gap, fabs(m[AP_M_KL_REV] + log(m[AP_M_MASS])));
    return AP_OK;
}

static void collect_free(collect *c)
{
    for (int k = 0; k < AP_M_COUNT; k++) free(c->s[k].value);
}

static void isolated(const ap_trace *tr, const char *name, int budget, collect *c)
{
    memset(c, 0, sizeof *c);
    ap_policy_params p;
    ap_policy_params_default(&p, name);
    p.budget = budget;
    ap_replay_opts o = {.warmup = WARMUP, .stride = STRIDE, .sink = sink, .sink_ctx = c};
    ap_replay_cost cost;
    ap_error err;
    for (int smp = 0; smp < tr->n_samples; smp++)
        for (int li = 0; li < tr->n_layers; li++)
            if (ap_replay_isolated(tr, smp, li, &p, &o, &cost, &err)) fail_msg("%s", err.msg);
}

static const char *const NAMES[] = {"full", "window", "sink", "random", "h2o",
                                    "tova", "cms", "count_sketch", "race", "race_kde"};

static void test_no_eviction_is_perfect(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof NAMES / sizeof NAMES[0]; i++) {
        collect c;
        isolated(&trace, NAMES[i], i == 0 ? 64 : T, &c); /* full at any budget; the rest at T */
        assert_true(c.s[AP_M_KL].n > 0);
        for (size_t r = 0; r < c.s[AP_M_KL].n; r++) {
            assert_true(c.s[AP_M_KL].value[r] == 0.0);
            assert_true(c.s[AP_M_COSINE].value[r] == 1.0);
            assert_true(c.s[AP_M_MASS].value[r] == 1.0);
            assert_true(c.s[AP_M_TV].value[r] == 0.0);
        }
        collect_free(&c);
    }
}

static void test_isolated_klrev_is_minus_log_mass(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof NAMES / sizeof NAMES[0]; i++) {
        collect c;
        isolated(&trace, NAMES[i], 32, &c);
        print_message("%-13s budget 32: max |kl_rev + log mass| = %.2g\n", NAMES[i], c.max_klrev_gap);
        assert_true(c.max_klrev_gap <= 1e-6);
        collect_free(&c);
    }
}

static double mean_of(const values *s)
{
    double sum = 0;
    for (size_t i = 0; i < s->n; i++) sum += s->value[i];
    return sum / (double)s->n;
}

static void test_budget_monotone(void **state)
{
    (void)state;
    const char *names[] = {"window", "sink", "h2o"};
    const int budgets[] = {20, 24, 32, 48, 64, 96, 128};
    for (int i = 0; i < 3; i++) {
        double prev = -1;
        print_message("%-7s mean mass_retained:", names[i]);
        for (size_t b = 0; b < sizeof budgets / sizeof budgets[0]; b++) {
            collect c;
            isolated(&trace, names[i], budgets[b], &c);
            double m = mean_of(&c.s[AP_M_MASS]);
            print_message(" %d:%.4f", budgets[b], m);
            assert_true(m >= prev);
            prev = m;
            collect_free(&c);
        }
        print_message("\n");
    }
}

static void test_cascade_full_equals_reference(void **state)
{
    (void)state;
    collect c = {0};
    ap_policy_params p[2];
    ap_policy_params_default(&p[0], "full");
    ap_policy_params_default(&p[1], "h2o");
    ap_replay_opts o = {.warmup = WARMUP, .stride = STRIDE, .sink = sink, .sink_ctx = &c};
    ap_replay_cost cost[2];
    ap_error err;
    /* full alone: its rows must be the reference rows */
    if (ap_replay_cascade(engine, &trace, p, 1, &o, cost, &err)) fail_msg("%s", err.msg);
    print_message("cascade full vs reference: max |q - p| = %.3g over %zu rows\n", c.max_abs_diff,
                  c.s[AP_M_KL].n);
    assert_true(c.max_abs_diff <= 1e-5);
    assert_int_equal(c.s[AP_M_KL].n, 2 * 2 * 6 * ((T - WARMUP + STRIDE - 1) / STRIDE));
    collect_free(&c);
    /* batched with another policy, full's rows are unchanged */
    memset(&c, 0, sizeof c);
    if (ap_replay_cascade(engine, &trace, p, 2, &o, cost, &err)) fail_msg("%s", err.msg);
    assert_true(cost[1].kv_bytes < cost[0].kv_bytes);
    collect_free(&c);
}

static void test_trace_file_round_trip(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "/tmp/attnprobe-trace-%ld.safetensors", (long)getpid());
    ap_error err;
    free(trace.config_json);
    trace.config_json = strdup("{\"test\":1}");
    if (ap_trace_save(&trace, path, &err)) fail_msg("%s", err.msg);
    ap_trace loaded;
    if (ap_trace_load(path, &loaded, &err)) fail_msg("%s", err.msg);
    assert_int_equal(loaded.n_samples, trace.n_samples);
    assert_string_equal(loaded.model_sha256, model->sha256);
    assert_string_equal(loaded.config_json, "{\"test\":1}");
    for (size_t i = 0; i < sizeof NAMES / sizeof NAMES[0]; i++) {
        collect a, b;
        isolated(&trace, NAMES[i], 24, &a);
        isolated(&loaded, NAMES[i], 24, &b);
        for (int k = 0; k < AP_M_COUNT; k++) {
            assert_int_equal(a.s[k].n, b.s[k].n);
            assert_memory_equal(a.s[k].value, b.s[k].value, a.s[k].n * sizeof(double));
        }
        collect_free(&a);
        collect_free(&b);
    }
    ap_trace_free(&loaded);
    /* a file that is not a trace */
    assert_int_equal(ap_trace_load(AP_FIXTURES "/tiny/model.safetensors", &loaded, &err), AP_ERR_INPUT);
    assert_non_null(strstr(err.msg, "not an attnprobe trace"));
    remove(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_eviction_is_perfect),
        cmocka_unit_test(test_isolated_klrev_is_minus_log_mass),
        cmocka_unit_test(test_budget_monotone),
        cmocka_unit_test(test_cascade_full_equals_reference),
        cmocka_unit_test(test_trace_file_round_trip),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
