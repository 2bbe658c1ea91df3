/* bench_prefill — CPU prefill throughput and the share of it spent in BLAS.
 *
 * usage: bench_prefill [MODEL] [T ...]   (default random:gpt2-small, T = 256 1024)
 *
 * For each T: one warm-up, then the median of 3 prefills capturing every
 * layer's attention (what a reference trace needs). The BLAS share is the
 * time of the same sequence of dgemm calls (every product of one forward
 * pass, same shapes, same library) over the prefill time. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The products of one forward pass of T tokens, timed alone. */
static double gemm_seconds(const ap_config *c, int T)
{
    const int C = c->n_embd, H = c->n_head, hd = C / H;
    size_t big = (size_t)T * 4 * C > (size_t)T * T ? (size_t)T * 4 * C : (size_t)T * T;
    size_t wbig = (size_t)4 * C * C;
    double *a = calloc(big, sizeof(double)), *b = calloc(wbig > big ? wbig : big, sizeof(double)),
           *o = calloc(big > (size_t)T * 3 * C ? big : (size_t)T * 3 * C, sizeof(double));
    double t0 = now_s();
    for (int l = 0; l < c->n_layer; l++) {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, 3 * C, C, 1, a, C, b, 3 * C, 1, o, 3 * C);
        for (int h = 0; h < H; h++) {
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1, a, 3 * C, b, 3 * C, 0, o, T);
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1, a, T, b, 3 * C, 0, o, C);
        }
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, C, C, 1, a, C, b, C, 1, o, C);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, 4 * C, C, 1, a, C, b, 4 * C, 1, o, 4 * C);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, C, 4 * C, 1, a, 4 * C, b, C, 1, o, C);
    }
    double dt = now_s() - t0;
    free(a);
    free(b);
    free(o);
    return dt;
}

int main(int argc, char **argv)
{
    const char *spec = argc > 1 ? argv[1] : "random:gpt2-small";
    int lengths[16] = {256, 1024}, n_len = 2;
    if (argc > 2) {
        n_len = 0;
        for (int i = 2; i < argc && n_len < 16; i++) lengths[n_len++] = atoi(argv[i]);
    }
    ap_model *m;
    ap_engine *e;
    ap_error err;
    if (ap_model_load(spec, &m, &err) || ap_engine_create(m, AP_BACKEND_CPU, AP_PRECISION_FP32, &e, &err)) {
        fprintf(stderr, "bench_prefill: %s\n", err.msg);
        return 1;
    }
    const ap_config *c = &m->config;
    printf("model %s, %s\n", spec, ap_engine_device_name(e));
    printf("%6s %12s %12s %10s\n", "T", "prefill_s", "tokens/s", "blas_share");
    for (int li = 0; li < n_len; li++) {
        int T = lengths[li] < c->n_ctx ? lengths[li] : c->n_ctx;
        int *ids = malloc((size_t)T * sizeof *ids), *layers = malloc((size_t)c->n_layer * sizeof *layers);
        float **attn = malloc((size_t)c->n_layer * sizeof *attn);
        for (int t = 0; t < T; t++) ids[t] = (t * 7919) % c->vocab_size;
        for (int l = 0; l < c->n_layer; l++) {
            layers[l] = l;
            attn[l] = malloc((size_t)c->n_head * T * T * sizeof(float));
        }
        ap_capture cap = {.n_capture = c->n_layer, .layers = layers, .attn = attn};
        double times[4];
        for (int r = 0; r < 4; r++) {
            double t0 = now_s();
            if (ap_engine_prefill(e, ids, T, &cap, &err)) {
                fprintf(stderr, "bench_prefill: %s\n", err.msg);
                return 1;
            }
            times[r] = now_s() - t0;
        }
        qsort(times + 1, 3, sizeof(double), cmp);
        double med = times[2], blas = gemm_seconds(c, T);
        printf("%6d %12.3f %12.0f %9.0f%%\n", T, med, T / med, 100 * blas / med);
        for (int l = 0; l < c->n_layer; l++) free(attn[l]);
        free(attn);
        free(layers);
        free(ids);
    }
    ap_engine_free(e);
    ap_model_free(m);
    return 0;
}
