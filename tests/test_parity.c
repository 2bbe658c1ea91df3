/* test_parity.c — the CPU engine against Hugging Face transformers (float64
 * references from tools/make_fixtures.py), the llm.c loader against the same
 * references, and decode_step against prefill. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "parity.h"

#define ATTN_TOL 1e-5
#define LOGIT_TOL 1e-4

static void check_parity(const char *model, const char *fixture)
{
    char ref[1024];
    snprintf(ref, sizeof ref, "%s/%s/reference.safetensors", AP_FIXTURES, fixture);
    parity_result r;
    ap_error err;
    ap_status st = parity_run(model, ref, AP_BACKEND_CPU, AP_PRECISION_FP32, &r, &err);
    if (st) fail_msg("%s", err.msg);
    print_message("%s: T=%d, %d layers: attention max abs %.3g, logits max rel %.3g\n", model, r.T,
                  r.n_layer, r.attn_max_abs, r.logits_max_rel);
    assert_true(r.attn_max_abs <= ATTN_TOL);
    assert_true(r.logits_max_rel <= LOGIT_TOL);
}

static void fixture_path(char *buf, size_t n, const char *rel)
{
    snprintf(buf, n, "%s/%s", AP_FIXTURES, rel);
}

static void test_hf_f32(void **state)
{
    (void)state;
    char p[1024];
    fixture_path(p, sizeof p, "tiny");
    check_parity(p, "tiny");
}

static void test_hf_f16_full_vocab(void **state)
{
    (void)state;
    char p[1024];
    fixture_path(p, sizeof p, "vocab50257");
    check_parity(p, "vocab50257");
}

static void test_hf_bf16(void **state)
{
    (void)state;
    char p[1024];
    fixture_path(p, sizeof p, "bf16/model.safetensors"); /* the file form of --model */
    check_parity(p, "bf16");
}

static void test_llmc_fp32(void **state)
{
    (void)state;
    char p[1024];
    fixture_path(p, sizeof p, "tiny/model.bin");
    check_parity(p, "tiny");
}

static void test_llmc_bf16(void **state)
{
    (void)state;
    char p[1024];
    fixture_path(p, sizeof p, "bf16/model_bf16.bin");
    check_parity(p, "bf16");
}

/* Decodes `ids` token by token on `n_stream` streams fed the same tokens
 * (kept = every earlier position, given explicitly when explicit_kept) and
 * returns the largest difference from prefill's rows and logits. */
static void decode_vs_prefill(const char *spec, int T, int n_stream, int explicit_kept,
                              double *attn_err, double *logit_err)
{
    ap_model *m;
    ap_engine *e;
    ap_error err;
    if (ap_model_load(spec, &m, &err)) fail_msg("%s", err.msg);
    if (ap_engine_create(m, AP_BACKEND_CPU, AP_PRECISION_FP32, &e, &err)) fail_msg("%s", err.msg);
    const ap_config *c = &m->config;
    const int L = c->n_layer, H = c->n_head, V = c->vocab_size, N = c->n_ctx;
    int *ids = malloc((size_t)T * sizeof *ids), *layers = malloc((size_t)L * sizeof *layers);
    for (int t = 0; t < T; t++) ids[t] = (t * 7919 + 13) % V;
    float **ref = malloc((size_t)L * sizeof *ref), **rows = malloc((size_t)L * sizeof *rows);
    float *ref_logits = malloc((size_t)T * V * sizeof(float));
    float *logits = malloc((size_t)n_stream * V * sizeof(float));
    for (int l = 0; l < L; l++) {
        layers[l] = l;
        ref[l] = malloc((size_t)H * T * T * sizeof(float));
        rows[l] = calloc((size_t)n_stream * H * N, sizeof(float));
    }
    ap_capture pc = {.n_capture = L, .layers = layers, .attn = ref, .logits = ref_logits};
    if (ap_engine_prefill(e, ids, T, &pc, &err)) fail_msg("%s", err.msg);

    ap_stream **streams = malloc((size_t)n_stream * sizeof *streams);
    for (int s = 0; s < n_stream; s++)
        if (ap_stream_create(e, T, &streams[s], &err)) fail_msg("%s", err.msg);
    int *all = malloc((size_t)T * sizeof *all);
    const int **kept_lh = malloc((size_t)L * H * sizeof *kept_lh);
    int *n_kept_lh = malloc((size_t)L * H * sizeof *n_kept_lh);
    const int *const **kept = malloc((size_t)n_stream * sizeof *kept);
    const int **n_kept = malloc((size_t)n_stream * sizeof *n_kept);
    for (int s = 0; s < n_stream; s++) {
        kept[s] = kept_lh;
        n_kept[s] = n_kept_lh;
    }
    int *tokens = malloc((size_t)n_stream * sizeof *tokens);
    *attn_err = 0;
    *logit_err = 0;
    for (int t = 0; t < T; t++) {
        all[t] = t;
        for (int lh = 0; lh < L * H; lh++) {
            kept_lh[lh] = all;
            n_kept_lh[lh] = t;
        }
        for (int s = 0; s < n_stream; s++) tokens[s] = ids[t];
        ap_decode_batch b = {.n_stream = n_stream, .streams = streams, .tokens = tokens,
                             .kept = explicit_kept ? kept : NULL,
                             .n_kept = explicit_kept ? n_kept : NULL};
        ap_capture dc = {.n_capture = L, .layers = layers, .attn = rows, .logits = logits};
        if (ap_engine_decode_step(e, &b, &dc, &err)) fail_msg("%s", err.msg);
        for (int s = 0; s < n_stream; s++) {
            for (int l = 0; l < L; l++)
                for (int h = 0; h < H; h++)
                    for (int j = 0; j <= t; j++) {
                        double d = fabs(rows[l][((size_t)s * H + h) * N + j] -
                                        ref[l][((size_t)h * T + t) * T + j]);
                        if (!(d <= *attn_err)) *attn_err = d;
                    }
            for (int v = 0; v < V; v++) {
                double d = fabs(logits[(size_t)s * V + v] - ref_logits[(size_t)t * V + v]);
                if (!(d <= *logit_err)) *logit_err = d;
            }
        }
    }
    for (int s = 0; s < n_stream; s++) {
        assert_int_equal(ap_stream_pos(streams[s]), T);
        ap_stream_free(streams[s]);
    }
    for (int l = 0; l < L; l++) {
        free(ref[l]);
        free(rows[l]);
    }
    free(streams); free(all); free(kept_lh); free(n_kept_lh); free(kept); free(n_kept);
    free(tokens); free(ids); free(layers); free(ref); free(rows); free(ref_logits); free(logits);
    ap_engine_free(e);
    ap_model_free(m);
}

static void test_decode_equals_prefill(void **state)
{
    (void)state;
    char p[1024];
    fixture_path(p, sizeof p, "tiny");
    double a, l;
    decode_vs_prefill(p, 96, 1, 0, &a, &l);
    print_message("decode vs prefill (tiny, T=96): attention %.3g, logits %.3g\n", a, l);
    assert_true(a <= 1e-5);
    assert_true(l <= 1e-4);
}

static void test_decode_batched_explicit_kept(void **state)
{
    (void)state;
    double a, l;
    decode_vs_prefill("random:L=3,H=4,D=64,V=300,T=64,seed=5", 48, 3, 1, &a, &l);
    print_message("batched decode, explicit kept lists: attention %.3g, logits %.3g\n", a, l);
    assert_true(a <= 1e-5);
    assert_true(l <= 1e-4);
}

/* With a one-layer model the layer's input does not depend on the cache, so
 * attending to a subset S of the past must give the prefill row restricted
 * to S ∪ {t} and renormalised: the identity isolated replay rests on. */
static void test_decode_subset_renormalises(void **state)
{
    (void)state;
    ap_model *m;
    ap_engine *e;
    ap_error err;
    if (ap_model_load("random:L=1,H=2,D=32,V=100,T=64,seed=9", &m, &err)) fail_msg("%s", err.msg);
    if (ap_engine_create(m, AP_BACKEND_CPU, AP_PRECISION_FP32, &e, &err)) fail_msg("%s", err.msg);
    const int T = 40, H = 2, N = 64, layer0 = 0;
    int ids[40];
    for (int t = 0; t < T; t++) ids[t] = (t * 31 + 3) % 100;
    float *ref = malloc((size_t)H * T * T * sizeof(float)), *row = calloc((size_t)H * N, sizeof(float));
    ap_capture pc = {.n_capture = 1, .layers = &layer0, .attn = &ref};
    if (ap_engine_prefill(e, ids, T, &pc, &err)) fail_msg("%s", err.msg);
    ap_stream *s;
    if (ap_stream_create(e, T, &s, &err)) fail_msg("%s", err.msg);
    double worst = 0;
    int kept_buf[64];
    for (int t = 0; t < T; t++) {
        int n = 0; /* keep even positions and the first one */
        for (int j = 0; j < t; j++)
            if (j % 2 == 0) kept_buf[n++] = j;
        const int *lists[2] = {kept_buf, kept_buf};
        int counts[2] = {n, n};
        const int *const *kept1[1] = {lists};
        const int *counts1[1] = {counts};
        ap_decode_batch b = {1, &s, &ids[t], kept1, counts1};
        ap_capture dc = {.n_capture = 1, .layers = &layer0, .attn = &row};
        if (ap_engine_decode_step(e, &b, &dc, &err)) fail_msg("%s", err.msg);
        for (int h = 0; h < H; h++) {
            const float *p = ref + ((size_t)h * T + t) * T;
            double mass = p[t];
            for (int i = 0; i < n; i++) mass += p[kept_buf[i]];
            for (int j = 0; j <= t; j++) {
                int in = j == t || (j % 2 == 0);
                double want = in ? p[j] / mass : 0.0;
                worst = fmax(worst, fabs(row[(size_t)h * N + j] - want));
            }
        }
    }
    print_message("subset decode vs renormalised prefill: %.3g\n", worst);
    assert_true(worst <= 1e-5);
    ap_stream_free(s);
    free(ref);
    free(row);
    ap_engine_free(e);
    ap_model_free(m);
}

/* The captured attention output o equals sum_j a_j v_j of the captured rows. */
static void test_attention_output_capture(void **state)
{
    (void)state;
    ap_model *m;
    ap_engine *e;
    ap_error err;
    if (ap_model_load("random:L=2,H=3,D=48,V=100,T=64,seed=2", &m, &err) ||
        ap_engine_create(m, AP_BACKEND_CPU, AP_PRECISION_FP32, &e, &err))
        fail_msg("%s", err.msg);
    enum { T = 40, H = 3, HD = 16 };
    int ids[T], layer = 1;
    for (int t = 0; t < T; t++) ids[t] = (t * 17) % 100;
    float *attn = malloc(H * T * T * sizeof(float)), *v = malloc(H * T * HD * sizeof(float)),
          *o = malloc(H * T * HD * sizeof(float));
    ap_capture cap = {.n_capture = 1, .layers = &layer, .attn = &attn, .v = &v, .o = &o};
    if (ap_engine_prefill(e, ids, T, &cap, &err)) fail_msg("%s", err.msg);
    double worst = 0;
    for (int h = 0; h < H; h++)
        for (int t = 0; t < T; t++)
            for (int d = 0; d < HD; d++) {
                double sum = 0;
                for (int j = 0; j <= t; j++) sum += (double)attn[(h * T + t) * T + j] * v[(h * T + j) * HD + d];
                worst = fmax(worst, fabs(sum - o[(h * T + t) * HD + d]));
            }
    print_message("attention output capture vs sum_j a_j v_j: %.3g\n", worst);
    assert_true(worst <= 1e-5);
    free(attn), free(v), free(o);
    ap_engine_free(e);
    ap_model_free(m);
}

static void test_decode_rejects_bad_kept(void **state)
{
    (void)state;
    ap_model *m;
    ap_engine *e;
    ap_stream *s;
    ap_error err;
    if (ap_model_load("random:L=1,H=1,D=16,V=10,T=8,seed=1", &m, &err)) fail_msg("%s", err.msg);
    if (ap_engine_create(m, AP_BACKEND_CPU, AP_PRECISION_FP32, &e, &err)) fail_msg("%s", err.msg);
    if (ap_stream_create(e, 4, &s, &err)) fail_msg("%s", err.msg);
    int tok = 1, future = 0, n = 1;
    const int *lists[1] = {&future};
    const int *const *kept[1] = {lists};
    const int *counts[1] = {&n};
    ap_decode_batch b = {1, &s, &tok, kept, counts};
    /* at position 0 no earlier position exists */
    assert_int_equal(ap_engine_decode_step(e, &b, NULL, &err), AP_ERR_USAGE);
    assert_non_null(strstr(err.msg, "kept position 0"));
    int bad_tok = 10;
    ap_decode_batch b2 = {1, &s, &bad_tok, NULL, NULL};
    assert_int_equal(ap_engine_decode_step(e, &b2, NULL, &err), AP_ERR_INPUT);
    ap_stream_free(s);
    ap_engine_free(e);
    ap_model_free(m);
}

/* The batched prefill equals one prefill per sequence; captures that ask for
 * different things are refused. */
static void test_prefill_batch(void **state)
{
    (void)state;
    ap_model *m;
    ap_engine *e;
    ap_error err;
    if (ap_model_load("random:L=2,H=2,D=16,V=50,T=32,seed=3", &m, &err)) fail_msg("%s", err.msg);
    if (ap_engine_create(m, AP_BACKEND_CPU, AP_PRECISION_FP32, &e, &err)) fail_msg("%s", err.msg);
    const double d = parity_batch_vs_single(e, 3, 24, 1, &err);
    if (d < 0) fail_msg("%s", err.msg);
    assert_true(d == 0);
    int layer0 = 0, layer1 = 1, ids[4] = {1, 2, 3, 4};
    const int *seqs[2] = {ids, ids};
    ap_capture caps[2] = {{.n_capture = 1, .layers = &layer0}, {.n_capture = 1, .layers = &layer1}};
    assert_int_equal(ap_engine_prefill_batch(e, 2, seqs, 4, caps, &err), AP_ERR_USAGE);
    assert_non_null(strstr(err.msg, "capture 1"));
    ap_engine_free(e);
    ap_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill_batch),
        cmocka_unit_test(test_hf_f32),
        cmocka_unit_test(test_hf_f16_full_vocab),
        cmocka_unit_test(test_hf_bf16),
        cmocka_unit_test(test_llmc_fp32),
        cmocka_unit_test(test_llmc_bf16),
        cmocka_unit_test(test_decode_equals_prefill),
        cmocka_unit_test(test_decode_batched_explicit_kept),
        cmocka_unit_test(test_decode_subset_renormalises),
        cmocka_unit_test(test_decode_rejects_bad_kept),
        cmocka_unit_test(test_attention_output_capture),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
