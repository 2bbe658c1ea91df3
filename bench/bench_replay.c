/* bench_replay — isolated replay of the ten policies over one 1024-token
 * trace with 12 heads (goal: under 50 ms on one CPU core).
 *
 * usage: bench_replay [MODEL] [T]   (default random:L=1,H=12,D=768,V=1024,T=1024, T=1024)
 * The trace is taken once (not timed); then each policy replays layer 0 with
 * the default parameters, once with no metric sink (policy + row
 * construction only) and once computing every metric at stride 16 after
 * warm-up 64, as `attnprobe run` does. Median of 5 runs. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "analysis/analysis.h"
#include "tracer/tracer.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static ap_status metrics_sink(void *ctx, const ap_row_event *ev, ap_error *err)
{
    (void)err;
    double m[AP_M_COUNT];
    ap_metrics_row(ev->p, ev->q, ev->kept, ev->n, ev->v, ev->o_p, ev->head_dim, m);
    *(double *)ctx += m[AP_M_KL];
    return AP_OK;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    const char *spec = argc > 1 ? argv[1] : "random:L=1,H=12,D=768,V=1024,T=1024";
    const int T = argc > 2 ? atoi(argv[2]) : 1024;
    ap_model *m;
    ap_engine *e;
    ap_error err;
    if (ap_model_load(spec, &m, &err) || ap_engine_create(m, AP_BACKEND_CPU, AP_PRECISION_FP32, &e, &err)) {
        fprintf(stderr, "bench_replay: %s\n", err.msg);
        return 1;
    }
    int *ids = malloc((size_t)T * sizeof *ids), layer = 0;
    for (int t = 0; t < T; t++) ids[t] = (t * 7919) % m->config.vocab_size;
    ap_samples samples = {1, (int[]){T}, (int *[]){ids}, 1, 0};
    ap_trace tr;
    if (ap_trace_run(e, m, &samples, &layer, 1, &tr, NULL, NULL, &err)) {
        fprintf(stderr, "bench_replay: %s\n", err.msg);
        return 1;
    }
    printf("trace: %s, T=%d, %d heads of %d (trace %.2f s, not timed below)\n", spec, T, tr.n_head,
           tr.head_dim, tr.seconds);
    printf("%-13s %14s %14s\n", "policy", "replay_ms", "with_metrics_ms");
    double total[2] = {0, 0};
    for (int i = 0; i < ap_policy_count(); i++) { /* every registered policy */
        const char *name = ap_policy_info_at(i)->name;
        ap_policy_params p;
        ap_policy_params_default(&p, name);
        double med[2];
        for (int with = 0; with < 2; with++) {
            double times[5], sum = 0;
            for (int r = 0; r < 5; r++) {
                ap_replay_opts o = {.warmup = 64, .stride = 16, .sink = with ? metrics_sink : NULL, .sink_ctx = &sum};
                ap_replay_cost cost;
                double t0 = now_s();
                if (ap_replay_isolated(&tr, 0, 0, &p, &o, &cost, &err)) {
                    fprintf(stderr, "bench_replay: %s\n", err.msg);
                    return 1;
                }
                times[r] = now_s() - t0;
            }
            qsort(times, 5, sizeof(double), cmp);
            med[with] = times[2] * 1e3;
            total[with] += med[with];
        }
        printf("%-13s %14.2f %14.2f\n", name, med[0], med[1]);
    }
    printf("%-13s %14.2f %14.2f\n", "all", total[0], total[1]);
    ap_trace_free(&tr);
    free(ids);
    ap_engine_free(e);
    ap_model_free(m);
    return 0;
}
