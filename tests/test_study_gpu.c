/* test_study_gpu.c — the isolated replay on the device (ctest -L gpu): for
 * one CUDA trace, the device replay and the host replay give the same
 * statistics (n, memory and the kept sets' consequences exactly; means,
 * sd, extremes, CIs and per-head means within 1e-6 relative; quantiles
 * within the sketch's accuracy, as a value can fall in a neighbouring
 * bucket), for every policy at both granularities, with heads of 64 and 32;
 * full gives KL exactly 0 there too; batches do not change the numbers. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "study/study.h"


static double rel(double a, double b)
{
    if (a == b || (isnan(a) && isnan(b))) return 0;
    return fabs(a - b) / fmax(fmax(fabs(a), fabs(b)), 1e-9);
}

typedef struct {
    double stats, quantiles, heads;
} worst;

static void compare(const ap_summary *dev, const ap_summary *host, worst *w)
{
    assert_int_equal(dev->n_runs, host->n_runs);
    for (int r = 0; r < dev->n_runs; r++) {
        const ap_report_run *x = &dev->runs[r], *y = &host->runs[r];
        assert_true(x->kv_bytes == y->kv_bytes);
        for (int m = 0; m < AP_M_COUNT; m++) {
            const ap_stats *a = &x->stats[m], *b = &y->stats[m];
            assert_int_equal(a->n, b->n);
            const double s[6] = {rel(a->mean, b->mean), rel(a->sd, b->sd),     rel(a->min, b->min),
                                 rel(a->max, b->max),   rel(a->ci_lo, b->ci_lo), rel(a->ci_hi, b->ci_hi)};
            for (int i = 0; i < 6; i++) {
                if (s[i] > 1e-6)
                    fail_msg("%s layer %d %s: statistic %d differs by %.3g relative (%.17g vs %.17g)",
                             x->policy, x->layer, ap_metric_name((ap_metric)m), i, s[i], a->mean, b->mean);
                w->stats = fmax(w->stats, s[i]);
            }
            const double q[3] = {rel(a->median, b->median), rel(a->p05, b->p05), rel(a->p95, b->p95)};
            for (int i = 0; i < 3; i++) {
                assert_true(q[i] <= 2.05 * AP_QSKETCH_ALPHA);
                w->quantiles = fmax(w->quantiles, q[i]);
            }
        }
        for (int i = 0; i < x->n_head * AP_M_COUNT; i++) {
            const double d = rel(x->head_mean[i], y->head_mean[i]);
            assert_true(d <= 1e-6);
            w->heads = fmax(w->heads, d);
        }
    }
}

static void device_vs_host(const char *spec, int n_layers)
{
    ap_model *model;
    ap_error err;
    if (ap_model_load(spec, &model, &err)) fail_msg("%s", err.msg);
    const int V = model->config.vocab_size, lens[5] = {200, 200, 181, 256, 97};
    int *ids[5];
    for (int s = 0; s < 5; s++) {
        ids[s] = malloc(256 * sizeof(int));
        for (int t = 0; t < 256; t++) ids[s][t] = (int)((t * 7919u + s * 104729u + (unsigned)(t * t)) % (unsigned)V);
    }
    ap_samples samples = {5, (int *)lens, ids, 5, 0};
    const int layers[2] = {0, n_layers - 1};
    ap_policy_params pol[64];
    worst w = {0, 0, 0};
    int n_pol = 0;
    for (int gran = AP_GRAN_HEAD; gran <= AP_GRAN_LAYER; gran++) {
        n_pol = 0; /* every policy the device runs (the registry's on_device; full first) */
        for (int i = 0; i < ap_policy_count() && n_pol < 64; i++) {
            if (!ap_policy_info_at(i)->on_device) continue;
            ap_policy_params_default(&pol[n_pol], ap_policy_info_at(i)->name);
            pol[n_pol].budget = 24;
            pol[n_pol++].granularity = (ap_granularity)gran;
        }
        ap_study_config cfg = {.layers = layers, .n_layers = 2, .policies = pol, .n_policies = n_pol,
                               .mode = AP_STUDY_ISOLATED, .warmup = 16, .stride = 4, .bootstrap = 200,
                               .seed = 5, .backend = AP_BACKEND_CUDA, .precision = AP_PRECISION_FP32,
                               .max_length = 256};
        ap_summary dev, dev2, host;
        if (ap_study_run(&cfg, model, &samples, NULL, NULL, &dev, &err)) fail_msg("%s", err.msg);
        cfg.batch_size = 2;
        if (ap_study_run(&cfg, model, &samples, NULL, NULL, &dev2, &err)) fail_msg("%s", err.msg);
        cfg.batch_size = 0;
        cfg.host_replay = 1;
        if (ap_study_run(&cfg, model, &samples, NULL, NULL, &host, &err)) fail_msg("%s", err.msg);
        compare(&dev, &host, &w);
        /* batches of 2 on the device: the same numbers to the last bit */
        for (int r = 0; r < dev.n_runs; r++)
            assert_memory_equal(dev.runs[r].stats, dev2.runs[r].stats, sizeof dev.runs[r].stats);
        assert_true(dev.runs[0].stats[AP_M_KL].max == 0.0 && dev.runs[1].stats[AP_M_KL].max == 0.0);
        assert_true(dev.runs[0].stats[AP_M_COSINE].min == 1.0);
        ap_summary_free(&dev);
        ap_summary_free(&dev2);
        ap_summary_free(&host);
    }
    print_message("%s: device vs host replay, %d policies x 2 granularities x 2 layers: statistics %.3g, "
                  "per-head means %.3g, quantiles %.3g (relative, worst)\n",
                  spec, n_pol, w.stats, w.heads, w.quantiles);
    for (int s = 0; s < 5; s++) free(ids[s]);
    ap_model_free(model);
}

/* eval (docs/eval.md) with the policies and the next-token metrics on the
 * device — the reference the prefill's logits — against the host policies
 * and metrics, whose reference is the decoded full stream: perplexities
 * within 1e-5 relative, next-token KL within 1e-4 (+1e-3 relative), top-1
 * agreement within 0.02, the full argmax's rank within 2% (the prefill's
 * and the decode's logits differ by float rounding, which can flip near
 * ties); full's KL exactly 0 and top-1 agreement 1 on the device; a budget
 * of at least the length gives full's numbers exactly. */
static void eval_device_vs_host(const char *spec)
{
    ap_model *model;
    ap_error err;
    if (ap_model_load(spec, &model, &err)) fail_msg("%s", err.msg);
    const int V = model->config.vocab_size, lens[4] = {160, 97, 160, 130};
    int *ids[4];
    for (int s = 0; s < 4; s++) {
        ids[s] = malloc(160 * sizeof(int));
        for (int t = 0; t < 160; t++) ids[s][t] = (int)((t * 7919u + s * 104729u + (unsigned)(t * t)) % (unsigned)V);
    }
    ap_samples samples = {4, (int *)lens, ids, 4, 0};
    const int layers[1] = {-1};
    ap_policy_params pol[64];
    int n_pol = 0;
    for (int i = 0; i < ap_policy_count() && n_pol < 64; i++) {
        if (!ap_policy_info_at(i)->on_device) continue;
        ap_policy_params_default(&pol[n_pol], ap_policy_info_at(i)->name);
        pol[n_pol++].budget = 24;
    }
    pol[1].budget = 160; /* a budget of at least the length: exactly full's numbers */
    ap_study_config cfg = {.layers = layers, .n_layers = 1, .policies = pol, .n_policies = n_pol,
                           .mode = AP_STUDY_EVAL, .warmup = 16, .stride = 1, .bootstrap = 200, .seed = 5,
                           .backend = AP_BACKEND_CUDA, .precision = AP_PRECISION_FP32, .max_length = 160,
                           .compare_to = "full"};
    ap_summary dev, host;
    if (ap_study_run(&cfg, model, &samples, NULL, NULL, &dev, &err)) fail_msg("%s", err.msg);
    cfg.host_replay = 1;
    if (ap_study_run(&cfg, model, &samples, NULL, NULL, &host, &err)) fail_msg("%s", err.msg);
    assert_int_equal(dev.n_runs, host.n_runs);
    double worst[4] = {0, 0, 0, 0};
    for (int r = 0; r < dev.n_runs; r++) {
        const ap_stats *x = dev.runs[r].stats, *y = host.runs[r].stats;
        assert_string_equal(dev.runs[r].policy, host.runs[r].policy);
        const double d[4] = {rel(x[AP_M_NLL].mean, y[AP_M_NLL].mean), fabs(x[AP_M_NEXT_KL].mean - y[AP_M_NEXT_KL].mean),
                             fabs(x[AP_M_NEXT_TOP1].mean - y[AP_M_NEXT_TOP1].mean),
                             rel(x[AP_M_ARGMAX_RANK].mean, y[AP_M_ARGMAX_RANK].mean)};
        assert_true(x[AP_M_NLL].n == y[AP_M_NLL].n && x[AP_M_NLL].n > 0);
        assert_true(d[0] <= 1e-5);
        assert_true(d[1] <= 1e-4 + 1e-3 * fabs(y[AP_M_NEXT_KL].mean));
        assert_true(d[2] <= 0.02);
        assert_true(d[3] <= 0.02 || fabs(x[AP_M_ARGMAX_RANK].mean - y[AP_M_ARGMAX_RANK].mean) <= 0.5);
        for (int i = 0; i < 4; i++) worst[i] = fmax(worst[i], d[i]);
    }
    const ap_stats *kl = &dev.runs[0].stats[AP_M_NEXT_KL], *top1 = &dev.runs[0].stats[AP_M_NEXT_TOP1];
    assert_true(kl->n > 0 && kl->max == 0.0 && top1->min == 1.0);
    for (int m = AP_M_NLL; m <= AP_M_ARGMAX_RANK; m++) /* budget >= T: full's numbers */
        assert_true(rel(dev.runs[1].stats[m].mean, dev.runs[0].stats[m].mean) <= 1e-12);
    print_message("%s: eval on the device vs the host, %d policies: perplexity %.3g relative, next_kl %.3g, "
                  "top-1 %.3g, rank %.3g relative (worst)\n",
                  spec, n_pol, worst[0], worst[1], worst[2], worst[3]);
    ap_summary_free(&dev);
    ap_summary_free(&host);
    for (int s = 0; s < 4; s++) free(ids[s]);
    ap_model_free(model);
}

static void test_eval(void **state)
{
    (void)state;
    eval_device_vs_host("random:L=3,H=4,D=256,V=512,T=256,seed=2");
    eval_device_vs_host(AP_SOURCE_DIR "/models/attnprobe-mini");
}

static void test_heads_of_64(void **state)
{
    (void)state;
    device_vs_host("random:L=3,H=4,D=256,V=512,T=256,seed=2", 3);
}

static void test_heads_of_32(void **state)
{
    (void)state;
    device_vs_host(AP_SOURCE_DIR "/models/attnprobe-mini", 12);
}

int main(void)
{
    if (!ap_cuda_available()) {
        printf("test_study_gpu: no CUDA device; this test runs on the GPU machine (ctest -L gpu)\n");
        return 77; /* ctest: skipped */
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heads_of_64),
        cmocka_unit_test(test_heads_of_32),
        cmocka_unit_test(test_eval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
