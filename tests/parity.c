#include "parity.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

ap_status parity_run(const char *model_spec, const char *reference, ap_backend backend,
                     ap_precision precision, parity_result *out, ap_error *err)
{
    ap_model *m = NULL;
    ap_st_file *ref = NULL;
    ap_engine *e = NULL;
    int *ids = NULL, *layers = NULL;
    float **attn = NULL, *logits = NULL, *want = NULL;
    ap_status st;
    if ((st = ap_model_load(model_spec, &m, err)) || (st = ap_st_open(reference, &ref, err))) goto done;
    const ap_config *c = &m->config;
    const ap_st_tensor *tid = ap_st_find(ref, "ids"), *tlog = ap_st_find(ref, "logits_last");
    if (!tid || !tlog || (int)tlog->count != c->vocab_size) {
        st = ap_error_set(err, AP_ERR_INPUT, "%s: missing ids or logits_last of %d", reference,
                          c->vocab_size);
        goto done;
    }
    const int T = (int)tid->count, L = c->n_layer, H = c->n_head;
    ids = malloc((size_t)T * sizeof *ids);
    layers = malloc((size_t)L * sizeof *layers);
    attn = calloc((size_t)L, sizeof *attn);
    logits = malloc((size_t)c->vocab_size * sizeof *logits);
    want = malloc(((size_t)H * T * T > (size_t)c->vocab_size ? (size_t)H * T * T
                                                               : (size_t)c->vocab_size) *
                  sizeof *want);
    if (!ids || !layers || !attn || !logits || !want) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        goto done;
    }
    if ((st = ap_st_read_i32(ref, tid, ids, err))) goto done;
    for (int l = 0; l < L; l++) {
        layers[l] = l;
        if (!(attn[l] = malloc((size_t)H * T * T * sizeof(float)))) {
            st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
            goto done;
        }
    }
    if ((st = ap_engine_create(m, backend, precision, &e, err))) goto done;
    ap_capture cap = {.n_capture = L, .layers = layers, .attn = attn, .logits = logits,
                      .logits_last_only = 1};
    if ((st = ap_engine_prefill(e, ids, T, &cap, err))) goto done;
    out->attn_max_abs = 0;
    out->T = T;
    out->n_layer = L;
    for (int l = 0; l < L; l++) {
        char name[32];
        snprintf(name, sizeof name, "attn.%d", l);
        const ap_st_tensor *ta = ap_st_find(ref, name);
        if (!ta || ta->count != (size_t)H * T * T) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: %s missing or not [%d,%d,%d]", reference, name,
                              H, T, T);
            goto done;
        }
        if ((st = ap_st_read_f32(ref, ta, want, err))) goto done;
        for (size_t i = 0; i < ta->count; i++) {
            double d = fabs((double)attn[l][i] - want[i]);
            if (!(d <= out->attn_max_abs)) out->attn_max_abs = d; /* NaN propagates */
        }
    }
    if ((st = ap_st_read_f32(ref, tlog, want, err))) goto done;
    double max_ref = 0, max_diff = 0;
    for (int v = 0; v < c->vocab_size; v++) {
        max_ref = fmax(max_ref, fabs(want[v]));
        double d = fabs((double)logits[v] - want[v]);
        if (!(d <= max_diff)) max_diff = d;
    }
    out->logits_max_rel = max_diff / (max_ref > 0 ? max_ref : 1);
done:
    for (int l = 0; attn && m && l < m->config.n_layer; l++) free(attn[l]);
    free(attn);
    free(ids);
    free(layers);
    free(logits);
    free(want);
    ap_engine_free(e);
    ap_st_close(ref);
    ap_model_free(m);
    return st;
}

/* Buffers of one sequence's capture at one layer, and its last logits. */
typedef struct {
    float *attn, *q, *v, *o, *logits;
    ap_capture cap;
} one_capture;

static int capture_alloc(one_capture *c, const ap_config *cfg, int T, const int *layer)
{
    const size_t a = (size_t)cfg->n_head * T * T, qk = (size_t)T * cfg->n_embd;
    c->attn = malloc(a * sizeof(float));
    c->q = malloc(qk * sizeof(float));
    c->v = malloc(qk * sizeof(float));
    c->o = malloc(qk * sizeof(float));
    c->logits = malloc((size_t)cfg->vocab_size * sizeof(float));
    c->cap = (ap_capture){.n_capture = 1, .layers = layer, .attn = &c->attn, .q = &c->q, .v = &c->v,
                          .o = &c->o, .logits = c->logits, .logits_last_only = 1};
    return c->attn && c->q && c->v && c->o && c->logits;
}

static void capture_free(one_capture *c)
{
    free(c->attn), free(c->q), free(c->v), free(c->o), free(c->logits);
}

static double max_diff(const float *x, const float *y, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)x[i] - y[i]));
    return d;
}

double parity_batch_vs_single(ap_engine *e, int n_seq, int T, int layer, ap_error *err)
{
    enum { MAX_SEQ = 8 };
    const ap_config *cfg = ap_engine_config(e);
    if (n_seq > MAX_SEQ) n_seq = MAX_SEQ;
    one_capture batched[MAX_SEQ], single[MAX_SEQ];
    ap_capture caps[MAX_SEQ];
    int *ids[MAX_SEQ];
    double worst = 0;
    int ok = 1;
    for (int s = 0; s < n_seq; s++) {
        ok &= capture_alloc(&batched[s], cfg, T, &layer) & capture_alloc(&single[s], cfg, T, &layer);
        ids[s] = malloc((size_t)T * sizeof(int));
        ok &= ids[s] != NULL;
        for (int t = 0; ids[s] && t < T; t++) ids[s][t] = (t * 131 + s * 977 + 7) % cfg->vocab_size;
        caps[s] = batched[s].cap;
    }
    if (!ok) {
        ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        worst = -1;
    } else if (ap_engine_prefill_batch(e, n_seq, (const int *const *)ids, T, caps, err)) {
        worst = -1;
    }
    for (int s = 0; s < n_seq && worst >= 0; s++) {
        if (ap_engine_prefill(e, ids[s], T, &single[s].cap, err)) {
            worst = -1;
            break;
        }
        const size_t a = (size_t)cfg->n_head * T * T, qk = (size_t)T * cfg->n_embd;
        worst = fmax(worst, max_diff(batched[s].attn, single[s].attn, a));
        worst = fmax(worst, max_diff(batched[s].q, single[s].q, qk));
        worst = fmax(worst, max_diff(batched[s].v, single[s].v, qk));
        worst = fmax(worst, max_diff(batched[s].o, single[s].o, qk));
        worst = fmax(worst, max_diff(batched[s].logits, single[s].logits, (size_t)cfg->vocab_size));
    }
    for (int s = 0; s < n_seq; s++) {
        capture_free(&batched[s]);
        capture_free(&single[s]);
        free(ids[s]);
    }
    return worst;
}
