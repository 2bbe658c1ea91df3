/* bench_gpu — GPU throughput of the reference trace and the cascade replay.
 *
 * usage: bench_gpu [--trace-samples N] [--precision fp32|tf32|bf16] [--batched-only 1] [--cascade-samples N]
 *                  [--cascade-T T] [--host-policies 1]
 *   --precision P runs (a) and (b) in P alone (b: fp32 or bf16).
 *   (a) trace: random:gpt2-small, T = 1024, every layer's attention computed
 *       (materialised in device memory), in fp32, tf32 and bf16; the same
 *       with all 12 layers' attention copied to host memory; and N samples
 *       in one batched prefill (N = 0 skips (a); --batched-only 1: that one
 *       alone);
 *   (b) cascade: 10 policies x N samples (default 8), T (default 1024),
 *       budget 256, fp32 and bf16: policy-tokens/s summed over the streams,
 *       the policies on the device (or on the host with --host-policies 1). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tracer/tracer.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Counts rows; the device cascade calls it from several threads at once. */
static ap_status null_sink(void *ctx, const ap_row_event *ev, ap_error *err)
{
    (void)ev, (void)err;
    __atomic_add_fetch((long *)ctx, 1, __ATOMIC_RELAXED);
    return AP_OK;
}

/* Decode steps alone: S streams of T tokens, every (layer, head) keeping the
 * last `budget` positions; with_rows captures every layer's rows. Returns
 * seconds per step, or -1. */
static double bench_decode(ap_engine *e, int S, int T, int budget, int with_rows)
{
    const ap_config *c = ap_engine_config(e);
    const int L = c->n_layer, H = c->n_head, LH = L * H;
    ap_stream **streams = calloc((size_t)S, sizeof *streams);
    int *tokens = malloc((size_t)S * sizeof *tokens), *window = malloc((size_t)T * sizeof *window);
    const int **kept_lists = malloc((size_t)LH * sizeof *kept_lists);
    int *n_kept_list = malloc((size_t)LH * sizeof *n_kept_list);
    const int *const **kept = malloc((size_t)S * sizeof *kept);
    const int **n_kept = malloc((size_t)S * sizeof *n_kept);
    int *layers = malloc((size_t)L * sizeof *layers);
    float **rows = calloc((size_t)L, sizeof *rows);
    ap_error err;
    double dt = -1;
    for (int s = 0; s < S; s++)
        if (ap_stream_create(e, T, &streams[s], &err)) goto done;
    for (int l = 0; l < L; l++) {
        layers[l] = l;
        rows[l] = malloc((size_t)S * H * c->n_ctx * sizeof(float));
    }
    for (int s = 0; s < S; s++) {
        kept[s] = kept_lists;
        n_kept[s] = n_kept_list;
    }
    ap_capture cap = {.n_capture = L, .layers = layers, .attn = rows};
    const double t0 = now_s();
    for (int t = 0; t < T; t++) {
        const int first = t > budget ? t - budget : 0;
        for (int i = first; i < t; i++) window[i - first] = i;
        for (int lh = 0; lh < LH; lh++) {
            kept_lists[lh] = window;
            n_kept_list[lh] = t - first;
        }
        for (int s = 0; s < S; s++) tokens[s] = (t * 31 + s) % c->vocab_size;
        ap_decode_batch b = {S, streams, tokens, kept, n_kept};
        if (ap_engine_decode_step(e, &b, with_rows ? &cap : NULL, &err)) {
            fprintf(stderr, "bench_gpu: %s\n", err.msg);
            goto done;
        }
    }
    dt = (now_s() - t0) / T;
done:
    for (int s = 0; s < S; s++) ap_stream_free(streams[s]);
    for (int l = 0; l < L; l++) free(rows[l]);
    free(streams), free(tokens), free(window), free(kept_lists), free(n_kept_list), free(kept);
    free(n_kept), free(layers), free(rows);
    return dt;
}

/* (b): the cascade of the device's policies over the samples, budget 256. */
static int run_cascade(ap_engine *e, const ap_model *m, const ap_samples *samples, int T, int host_policies,
                       const char *prec, ap_error *err)
{
    int probe = 6;
    ap_trace tr;
    if (ap_trace_run(e, m, samples, &probe, 1, &tr, NULL, NULL, err)) return 1;
    ap_policy_params params[64]; /* every policy the device runs (the registry's on_device) */
    int n = 0;
    for (int i = 0; i < ap_policy_count() && n < 64; i++) {
        if (!ap_policy_info_at(i)->on_device) continue;
        ap_policy_params_default(&params[n], ap_policy_info_at(i)->name);
        params[n++].budget = 256;
    }
    long rows = 0;
    ap_replay_opts o = {.warmup = 64, .stride = 16, .sink = null_sink, .sink_ctx = &rows, .host_policies = host_policies};
    ap_replay_cost cost[64];
    const double t0 = now_s();
    const ap_status st = ap_replay_cascade(e, &tr, params, n, &o, cost, err);
    const double dt = now_s() - t0;
    ap_trace_free(&tr);
    if (st) return 1;
    printf("(b) cascade, %d policies x %d samples, T=%d, budget 256, %s, policies on the %s: %.2f s, "
           "%.0f policy-tokens/s\n",
           n, samples->n, T, prec, host_policies ? "host" : "device", dt, (double)n * samples->n * T / dt);
    /* device policies: the steps are queued, so the host's time splits between
     * the decode calls (waiting for the tables of two steps ago) and the
     * synchronous copies of emitted rows; their sum is the GPU's time */
    printf("    of which in decode calls %.2f s, policy updates %.2f s (0: inside the decode steps), emitted rows and "
           "the rest %.2f s%s\n",
           cost[0].decode_seconds, cost[0].observe_seconds,
           cost[0].seconds - cost[0].decode_seconds - cost[0].observe_seconds,
           host_policies ? "" : " (steps run queued: the host waits in both)");
    return 0;
}

int main(int argc, char **argv)
{
    int trace_samples = 8, cascade_samples = 8, cascade_T = 1024, host_policies = 0, batched_only = 0;
    const char *only = NULL; /* --precision: the trace and cascade in this precision only */
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--trace-samples")) trace_samples = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--cascade-samples")) cascade_samples = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--cascade-T")) cascade_T = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--host-policies")) host_policies = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--batched-only")) batched_only = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--precision")) only = argv[i + 1];
    }
    ap_model *m;
    ap_error err;
    if (ap_model_load("random:gpt2-small", &m, &err)) {
        fprintf(stderr, "bench_gpu: %s\n", err.msg);
        return 1;
    }
    const ap_config *c = &m->config;
    const int T = 1024, L = c->n_layer, H = c->n_head;
    int *ids = malloc((size_t)T * sizeof *ids), layers[64];
    for (int t = 0; t < T; t++) ids[t] = (t * 7919 + 1) % c->vocab_size;
    for (int l = 0; l < L; l++) layers[l] = l;
    float **attn = malloc((size_t)L * sizeof *attn);
    for (int l = 0; l < L; l++) attn[l] = malloc((size_t)H * T * T * sizeof(float));
    const char *pnames[] = {"fp32", "tf32", "bf16"};
    if (trace_samples > 0)
        printf("(a) trace, random:gpt2-small, T=%d, %d samples, every layer's attention\n", T, trace_samples);
    for (int pi = 0; pi < 3 && trace_samples > 0; pi++) {
        if (only && strcmp(only, pnames[pi])) continue;
        ap_engine *e;
        if (ap_engine_create(m, AP_BACKEND_CUDA, (ap_precision)pi, &e, &err)) {
            fprintf(stderr, "bench_gpu: %s\n", err.msg);
            return 1;
        }
        /* mode 0: one sample per call, attention on device; 1: the same, all
         * layers' attention copied to host; 2: trace_samples per call
         * (ap_engine_prefill_batch), attention on device */
        for (int mode = batched_only ? 2 : 0; mode < 3; mode++) {
            int last = L - 1;
            ap_capture on_device = {.n_capture = 1, .layers = &last}; /* all layers run, nothing copied */
            ap_capture copied = {.n_capture = L, .layers = layers, .attn = attn};
            ap_capture *cap = mode == 1 ? &copied : &on_device;
            ap_capture caps[64];
            const int *seqs[64];
            const int B = trace_samples < 64 ? trace_samples : 64;
            for (int b = 0; b < B; b++) {
                caps[b] = on_device;
                seqs[b] = ids;
            }
            ap_status st = mode == 2 ? ap_engine_prefill_batch(e, B, seqs, T, caps, &err) /* warm-up */
                                     : ap_engine_prefill(e, ids, T, cap, &err);
            double t0 = now_s();
            for (int s = 0; s < (mode == 2 ? 3 : trace_samples) && !st; s++)
                st = mode == 2 ? ap_engine_prefill_batch(e, B, seqs, T, caps, &err)
                               : ap_engine_prefill(e, ids, T, cap, &err);
            if (st) {
                fprintf(stderr, "bench_gpu: %s\n", err.msg);
                return 1;
            }
            double dt = now_s() - t0;
            const int n = mode == 2 ? 3 * B : trace_samples;
            const char *what[] = {"attention on device", "attention copied to host", "batched, on device"};
            printf("  %-4s %-25s %10.0f tokens/s  (%.2f ms per 1024-token sample)\n", pnames[pi], what[mode],
                   n * (double)T / dt, dt * 1e3 / n);
        }
        ap_engine_free(e);
    }
    for (int l = 0; l < L; l++) free(attn[l]);
    free(attn);

    /* (b) cascade, in fp32 and bf16 */
    const int CT = cascade_T < c->n_ctx ? cascade_T : c->n_ctx, S = cascade_samples;
    int **sample_ids = malloc((size_t)S * sizeof *sample_ids), *lens = malloc((size_t)S * sizeof *lens);
    for (int s = 0; s < S; s++) {
        sample_ids[s] = malloc((size_t)CT * sizeof(int));
        for (int t = 0; t < CT; t++) sample_ids[s][t] = (t * 7919 + s * 104729 + 1) % c->vocab_size;
        lens[s] = CT;
    }
    ap_samples samples = {S, lens, sample_ids, S, 0};
    const ap_precision cascade_prec[2] = {AP_PRECISION_FP32, AP_PRECISION_BF16};
    for (int pi = 0; pi < 2 && S > 0; pi++) {
        if (only && strcmp(only, pnames[cascade_prec[pi]])) continue;
        ap_engine *e;
        if (ap_engine_create(m, AP_BACKEND_CUDA, cascade_prec[pi], &e, &err) ||
            run_cascade(e, m, &samples, CT, host_policies, pnames[cascade_prec[pi]], &err)) {
            fprintf(stderr, "bench_gpu: %s\n", err.msg);
            return 1;
        }
        if (pi == 0) {
            const double step = bench_decode(e, 10 * S, CT, 256, 0), step_rows = bench_decode(e, 10 * S, CT, 256, 1);
            printf("    decode steps alone through host tables, %d streams keeping the last 256 positions: "
                   "%.2f ms per step, %.2f ms with every layer's rows on the host\n",
                   10 * S, step * 1e3, step_rows * 1e3);
        }
        ap_engine_free(e);
    }
    for (int s = 0; s < S; s++) free(sample_ids[s]);
    free(sample_ids), free(lens), free(ids);
    ap_model_free(m);
    return 0;
}
