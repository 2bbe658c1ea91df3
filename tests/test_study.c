/* test_study.c — the study as a library call (study/study.h) on the bundled
 * model: the same summary to the last bit whatever the batch size and the
 * number of threads, in isolated and cascade mode; a trace streamed to a file
 * and replayed equals the in-memory study; a corrupted or impossible trace
 * file is refused with the tensor named; full gives KL exactly 0. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "study/study.h"
#include "testutil.h"

#define MODEL AP_SOURCE_DIR "/models/attnprobe-mini"
enum { T = 96, WARMUP = 16, STRIDE = 8, N_SAMPLES = 7 };

static ap_model *model;
static ap_samples samples;
static const int LAYERS[2] = {3, 6};
static ap_policy_params policies[10];
static const char *const NAMES[10] = {"full", "window", "sink", "random", "h2o",
                                      "tova", "cms", "count_sketch", "race", "race_kde"};

static int setup(void **state)
{
    (void)state;
    if (testutil_model_samples(MODEL, N_SAMPLES, T, WARMUP + 1, &model, &samples)) return -1;
    for (int i = 0; i < 10; i++) {
        ap_policy_params_default(&policies[i], NAMES[i]);
        policies[i].budget = 24;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ap_samples_free(&samples);
    ap_model_free(model);
    return 0;
}

static ap_study_config config(ap_study_mode mode, int batch_size, int threads)
{
    return (ap_study_config){.layers = LAYERS, .n_layers = 2, .policies = policies, .n_policies = 10,
                             .mode = mode, .warmup = WARMUP, .stride = STRIDE, .bootstrap = 200,
                             .seed = 3, .backend = AP_BACKEND_CPU, .precision = AP_PRECISION_FP32,
                             .batch_size = batch_size, .threads = threads, .input_source = "sample.txt",
                             .input_sha256 = "", .max_length = T, .compare_to = "h2o"};
}

static void run_study(const ap_study_config *cfg, ap_summary *out)
{
    ap_error err;
    if (ap_study_run(cfg, model, &samples, NULL, NULL, out, &err)) fail_msg("%s", err.msg);
}

/* Every statistic and per-head mean of a and b identical, bit for bit. */
static void assert_same_numbers(const ap_summary *a, const ap_summary *b)
{
    assert_int_equal(a->n_runs, b->n_runs);
    for (int r = 0; r < a->n_runs; r++) {
        const ap_report_run *x = &a->runs[r], *y = &b->runs[r];
        assert_string_equal(x->policy, y->policy);
        assert_int_equal(x->layer, y->layer);
        for (int m = 0; m < AP_M_COUNT; m++)
            if (memcmp(&x->stats[m], &y->stats[m], sizeof x->stats[m]) != 0)
                fail_msg("%s layer %d %s: mean %.17g vs %.17g, median %.17g vs %.17g, ci %.17g vs %.17g",
                         x->policy, x->layer, ap_metric_name((ap_metric)m), x->stats[m].mean,
                         y->stats[m].mean, x->stats[m].median, y->stats[m].median, x->stats[m].ci_lo,
                         y->stats[m].ci_lo);
        assert_memory_equal(x->head_mean, y->head_mean, (size_t)x->n_head * AP_M_COUNT * sizeof(double));
        /* paired comparisons with h2o: the same per-sample means, the same numbers */
        assert_string_equal(x->compare_to, y->compare_to);
        assert_memory_equal(x->compare, y->compare, sizeof x->compare);
        assert_memory_equal(x->compare_p_holm, y->compare_p_holm, sizeof x->compare_p_holm);
        assert_true(x->kv_bytes == y->kv_bytes && x->sketch_bytes == y->sketch_bytes);
    }
}

static void test_batch_size_does_not_change_numbers(void **state)
{
    (void)state;
    ap_summary whole, ones, threes;
    ap_study_config c0 = config(AP_STUDY_ISOLATED, 0, 0), c1 = config(AP_STUDY_ISOLATED, 1, 1),
                    c3 = config(AP_STUDY_ISOLATED, 3, 2);
    run_study(&c0, &whole);
    run_study(&c1, &ones);
    run_study(&c3, &threes);
    assert_int_equal(whole.samples, N_SAMPLES);
    assert_same_numbers(&whole, &ones);
    assert_same_numbers(&whole, &threes);
    /* full: KL exactly 0, cosine and mass exactly 1, on every row */
    const ap_report_run *full = &whole.runs[0];
    assert_string_equal(full->policy, "full");
    assert_true(full->stats[AP_M_KL].n > 0 && full->stats[AP_M_KL].max == 0.0);
    assert_true(full->stats[AP_M_COSINE].min == 1.0 && full->stats[AP_M_MASS].min == 1.0);
    /* a scored policy evicts, and its numbers say so */
    assert_true(whole.runs[2 * 4].stats[AP_M_KL].mean > 0); /* h2o, layer 3 */
    print_message("isolated, 7 samples: batch sizes 1, 3 and %d give identical summaries\n", N_SAMPLES);
    ap_summary_free(&whole);
    ap_summary_free(&ones);
    ap_summary_free(&threes);
}

static void test_cascade_batches(void **state)
{
    (void)state;
    ap_summary whole, twos;
    ap_study_config c0 = config(AP_STUDY_CASCADE, 0, 0), c2 = config(AP_STUDY_CASCADE, 2, 0);
    c0.n_policies = c2.n_policies = 5; /* full, window, sink, random, h2o */
    run_study(&c0, &whole);
    run_study(&c2, &twos);
    assert_same_numbers(&whole, &twos);
    assert_true(whole.runs[0].stats[AP_M_KL].max <= 1e-9); /* full's cascade is the reference */
    ap_summary_free(&whole);
    ap_summary_free(&twos);
}

static void temp_path(char *path, size_t n, const char *what)
{
    snprintf(path, n, "/tmp/attnprobe-study-%s-%ld.safetensors", what, (long)getpid());
}

/* Writes the study's reference trace to a temporary file named for `what`. */
static ap_study_config save_trace(const char *what, int batch_size, char *path, size_t n)
{
    temp_path(path, n, what);
    ap_error err;
    ap_study_config c = config(AP_STUDY_ISOLATED, batch_size, 0);
    c.save_trace = path;
    double seconds;
    if (ap_study_trace(&c, model, &samples, NULL, NULL, &seconds, &err)) fail_msg("%s", err.msg);
    assert_null(ap_study_temp_file()); /* no temporary file left to remove */
    c.save_trace = NULL;
    return c;
}

static void test_trace_file_streams(void **state)
{
    (void)state;
    char path[256];
    ap_error err;
    ap_study_config c = save_trace("trace", 2, path, sizeof path);
    ap_summary direct, replayed;
    run_study(&c, &direct);
    c.batch_size = 3;
    if (ap_study_replay(&c, path, NULL, NULL, &replayed, &err)) fail_msg("%s", err.msg);
    assert_same_numbers(&direct, &replayed);
    assert_int_equal(replayed.samples, N_SAMPLES);
    assert_int_equal(strlen(replayed.input_sha256), 0); /* the caller names the input */
    ap_summary_free(&direct);
    ap_summary_free(&replayed);
    /* a layer the trace does not hold */
    const int other[1] = {5};
    c.layers = other;
    c.n_layers = 1;
    assert_int_equal(ap_study_replay(&c, path, NULL, NULL, &replayed, &err), AP_ERR_USAGE);
    assert_non_null(strstr(err.msg, "layer 5"));
    remove(path);
}

/* Flips one bit of the file at offset `at` from its end. */
static void flip_bit(const char *path, long from_end)
{
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, -from_end, SEEK_END);
    int byte = fgetc(f);
    fseek(f, -from_end, SEEK_END);
    fputc(byte ^ 0x10, f);
    fclose(f);
}

static void test_corrupt_trace_is_refused(void **state)
{
    (void)state;
    char path[256];
    ap_error err;
    ap_study_config c = save_trace("corrupt", 0, path, sizeof path);
    flip_bit(path, 1000); /* inside the last sample's last tensor */
    ap_summary out;
    assert_int_equal(ap_study_replay(&c, path, NULL, NULL, &out, &err), AP_ERR_INPUT);
    print_message("flipped bit: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "checksum"));
    assert_non_null(strstr(err.msg, "sample 6"));
    remove(path);

    /* impossible values written with a valid checksum: refused by value */
    ap_engine *engine;
    ap_trace tr;
    ap_samples one = {1, samples.len, samples.ids, 0, 0};
    if (ap_engine_create(model, AP_BACKEND_CPU, AP_PRECISION_FP32, &engine, &err) ||
        ap_trace_run(engine, model, &one, LAYERS, 2, &tr, NULL, NULL, &err))
        fail_msg("%s", err.msg);
    const float bad[3] = {NAN, -0.25f, 1e38f};
    for (int i = 0; i < 3; i++) {
        const float keep = tr.attn[1][5 * T + 2];
        tr.attn[1][5 * T + 2] = bad[i]; /* layer 6, head 0, row 5, position 2 */
        if (ap_trace_save(&tr, path, &err)) fail_msg("%s", err.msg);
        ap_trace back;
        assert_int_equal(ap_trace_load(path, &back, &err), AP_ERR_INPUT);
        print_message("value %g: %s\n", (double)bad[i], err.msg);
        assert_non_null(strstr(err.msg, "attn.0.6"));
        assert_non_null(strstr(err.msg, "row 5"));
        tr.attn[1][5 * T + 2] = keep;
    }
    ap_trace_free(&tr);
    ap_engine_free(engine);
    remove(path);
}

/* The KV cache in the field's units: GPT-2 small keeping 64 / 128 / 256
 * positions is 2.25 / 4.5 / 9.0 MiB in fp16 for the whole model (the seed
 * study's figures), from what a study measures. */
static void test_memory_in_fp16(void **state)
{
    (void)state;
    ap_model *gpt2;
    ap_error err;
    if (ap_model_load("random:gpt2-small", &gpt2, &err)) fail_msg("%s", err.msg);
    int ids[300];
    for (int t = 0; t < 300; t++) ids[t] = (t * 7919) % gpt2->config.vocab_size;
    ap_samples one = {1, (int[]){300}, (int *[]){ids}, 1, 0};
    ap_policy_params window[3];
    const int budgets[3] = {64, 128, 256};
    for (int i = 0; i < 3; i++) {
        ap_policy_params_default(&window[i], "window");
        window[i].budget = budgets[i];
    }
    const int layer0 = 0;
    ap_study_config c = {.layers = &layer0, .n_layers = 1, .policies = window, .n_policies = 3,
                         .mode = AP_STUDY_ISOLATED, .warmup = 290, .stride = 1, .bootstrap = 0,
                         .backend = AP_BACKEND_CPU, .precision = AP_PRECISION_FP32, .max_length = 300,
                         .model_dtype = "F32"};
    ap_summary out;
    if (ap_study_run(&c, gpt2, &one, NULL, NULL, &out, &err)) fail_msg("%s", err.msg);
    const double mib[3] = {2.25, 4.5, 9.0};
    for (int i = 0; i < 3; i++) {
        ap_report_memory m;
        ap_report_memory_of(&out.runs[i], out.n_layer, out.n_embd, out.n_head, out.model_dtype, &m);
        print_message("window budget %d: %.4f MiB fp16, %.4f MiB fp32 for the model\n", budgets[i],
                      m.model_fp16 / (1 << 20), m.model_stored / (1 << 20));
        assert_true(m.model_fp16 == mib[i] * (1 << 20));
        assert_true(m.model_stored == 2 * m.model_fp16 && m.per_layer_fp16 * 12 == m.model_fp16);
    }
    ap_summary_free(&out);
    ap_model_free(gpt2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_size_does_not_change_numbers),
        cmocka_unit_test(test_cascade_batches),
        cmocka_unit_test(test_trace_file_streams),
        cmocka_unit_test(test_corrupt_trace_is_refused),
        cmocka_unit_test(test_memory_in_fp16),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
