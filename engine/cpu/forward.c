/* forward.c — the CPU backend: GPT-2's forward pass, matrix products
 * through OpenBLAS (cblas_dgemm).
 *
 * This is the reference implementation the CUDA backend is checked against,
 * so it favours plainness (one function per operation, shapes in comments)
 * and accuracy: weights are stored fp32 but every activation and product is
 * computed in double (`real`), then rounded once to float at the outputs.
 * A trained model's sharp attention turns fp32 rounding in the projections
 * into probability errors above 1e-5; in double the engine stays within
 * ~1e-7 of transformers' float64 forward (docs/precision.md). */
#include "../engine_internal.h"

typedef double real;

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The model's parameters converted to double once per engine. */
typedef struct {
    real *storage;
    real *wte, *wpe, *ln1_w, *ln1_b, *attn_w, *attn_b, *attn_proj_w, *attn_proj_b;
    real *ln2_w, *ln2_b, *fc_w, *fc_b, *fc_proj_w, *fc_proj_b, *lnf_w, *lnf_b;
} cpu_weights;

/* ---- building blocks ---------------------------------------------------- */

/* out[T,C] = LayerNorm(x[T,C]) * w + b */
static void layernorm(real *out, const real *x, const real *w, const real *b, int T, int C,
                      double eps)
{
    for (int t = 0; t < T; t++) {
        const real *xt = x + (size_t)t * C;
        double mean = 0, var = 0;
        for (int i = 0; i < C; i++) mean += xt[i];
        mean /= C;
        for (int i = 0; i < C; i++) var += (xt[i] - mean) * (xt[i] - mean);
        var /= C;
        double rstd = 1.0 / sqrt(var + eps);
        real *ot = out + (size_t)t * C;
        for (int i = 0; i < C; i++) ot[i] = (xt[i] - mean) * rstd * w[i] + b[i];
    }
}

/* out[T,OC] = in[T,IC] @ w[IC,OC] + bias[OC] */
static void matmul_bias(real *out, const real *in, const real *w, const real *bias, int T, int IC,
                        int OC)
{
    for (int t = 0; t < T; t++) memcpy(out + (size_t)t * OC, bias, (size_t)OC * sizeof(real));
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, OC, IC, 1.0, in, IC, w, OC, 1.0, out,
                OC);
}

/* GELU, tanh approximation (transformers' gelu_new), in place. */
static void gelu(real *x, size_t n)
{
    const double s = 0.7978845608028654; /* sqrt(2 / pi) */
    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        x[i] = 0.5 * v * (1.0 + tanh(s * (v + 0.044715 * v * v * v)));
    }
}

static void add_inplace(real *x, const real *y, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

/* p[n] = softmax(s[n]); p may alias s. */
static void softmax(real *p, const real *s, int n)
{
    real max = s[0];
    for (int i = 1; i < n; i++) max = s[i] > max ? s[i] : max;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        p[i] = exp(s[i] - max);
        sum += p[i];
    }
    for (int i = 0; i < n; i++) p[i] /= sum;
}

static void to_float(float *dst, const real *src, size_t n)
{
    for (size_t i = 0; i < n; i++) dst[i] = (float)src[i];
}

/* ---- prefill ------------------------------------------------------------ */

typedef struct {
    real *x, *h, *qkv, *att, *tmp, *fc, *scores;
} buffers;

static void buffers_free(buffers *b)
{
    free(b->x); free(b->h); free(b->qkv); free(b->att); free(b->tmp); free(b->fc); free(b->scores);
    memset(b, 0, sizeof *b);
}

/* Activations for T rows of width C; scores for T x score_cols. */
static ap_status buffers_alloc(buffers *b, int T, int C, int score_cols, ap_error *err)
{
    size_t TC = (size_t)T * C;
    b->x = malloc(TC * sizeof(real));
    b->h = malloc(TC * sizeof(real));
    b->qkv = malloc(3 * TC * sizeof(real));
    b->att = malloc(TC * sizeof(real));
    b->tmp = malloc(TC * sizeof(real));
    b->fc = malloc(4 * TC * sizeof(real));
    b->scores = malloc((size_t)T * score_cols * sizeof(real));
    if (!b->x || !b->h || !b->qkv || !b->att || !b->tmp || !b->fc || !b->scores) {
        buffers_free(b);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for %d positions", T);
    }
    return AP_OK;
}


/* Copies head h's slice of qkv[T,3C] part `which` (0 q, 1 k, 2 v) to dst[T,hd]. */
static void copy_head(float *dst, const real *qkv, int which, int h, int T, int C, int hd)
{
    for (int t = 0; t < T; t++)
        to_float(dst + (size_t)t * hd, qkv + (size_t)t * 3 * C + (size_t)which * C + (size_t)h * hd,
                 (size_t)hd);
}

/* Causal self-attention of one layer: att[T,C] from qkv[T,3C]; head h's
 * probabilities go to attn_capture + h*T*T when given. */
static void attention(buffers *b, int T, int C, int NH, float *attn_capture)
{
    const int hd = C / NH;
    const double scale = 1.0 / sqrt((double)hd);
    for (int h = 0; h < NH; h++) {
        const real *q = b->qkv + (size_t)h * hd;
        const real *k = b->qkv + C + (size_t)h * hd;
        const real *v = b->qkv + 2 * (size_t)C + (size_t)h * hd;
        /* scores[T,T] = q[T,hd] @ k[T,hd]^T * scale; only j <= i is used */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, q, 3 * C, k, 3 * C,
                    0.0, b->scores, T);
        for (int i = 0; i < T; i++) {
            real *row = b->scores + (size_t)i * T;
            softmax(row, row, i + 1);
            memset(row + i + 1, 0, (size_t)(T - i - 1) * sizeof(real));
        }
        if (attn_capture) to_float(attn_capture + (size_t)h * T * T, b->scores, (size_t)T * T);
        /* att[:, h*hd:(h+1)*hd] = probs[T,T] @ v[T,hd] */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0, b->scores, T, v,
                    3 * C, 0.0, b->att + (size_t)h * hd, C);
    }
}

/* The MLP half of block l, and the attention output projection before it:
 * x += proj(att); x += mlp(ln2(x)). */
static void block_finish(const cpu_weights *w, const ap_config *c, int l, buffers *b, int T)
{
    const int C = c->n_embd;
    const size_t TC = (size_t)T * C, lc = (size_t)l * C;
    matmul_bias(b->tmp, b->att, w->attn_proj_w + lc * C, w->attn_proj_b + lc, T, C, C);
    add_inplace(b->x, b->tmp, TC);
    layernorm(b->h, b->x, w->ln2_w + lc, w->ln2_b + lc, T, C, c->ln_eps);
    matmul_bias(b->fc, b->h, w->fc_w + lc * 4 * C, w->fc_b + 4 * lc, T, C, 4 * C);
    gelu(b->fc, 4 * TC);
    matmul_bias(b->tmp, b->fc, w->fc_proj_w + lc * 4 * C, w->fc_proj_b + lc, T, 4 * C, C);
    add_inplace(b->x, b->tmp, TC);
}

/* qkv[T,3C] = ln1(x) @ W_qkv + b of block l. */
static void block_qkv(const cpu_weights *w, const ap_config *c, int l, buffers *b, int T)
{
    const int C = c->n_embd;
    const size_t lc = (size_t)l * C;
    layernorm(b->h, b->x, w->ln1_w + lc, w->ln1_b + lc, T, C, c->ln_eps);
    matmul_bias(b->qkv, b->h, w->attn_w + lc * 3 * C, w->attn_b + 3 * lc, T, C, 3 * C);
}

/* logits[n,V] = LayerNorm_f(x[n,C]) @ wte[V,C]^T */
static ap_status lm_head(const cpu_weights *w, const ap_config *c, float *logits, const real *x,
                         real *h, int n, ap_error *err)
{
    real *out = malloc((size_t)n * c->vocab_size * sizeof(real));
    if (!out) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for logits");
    layernorm(h, x, w->lnf_w, w->lnf_b, n, c->n_embd, c->ln_eps);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, c->vocab_size, c->n_embd, 1.0, h,
                c->n_embd, w->wte, c->n_embd, 0.0, out, c->vocab_size);
    to_float(logits, out, (size_t)n * c->vocab_size);
    free(out);
    return AP_OK;
}

static void embed(const cpu_weights *w, int C, real *x, int token, int pos)
{
    for (int i = 0; i < C; i++) x[i] = w->wte[(size_t)token * C + i] + w->wpe[(size_t)pos * C + i];
}

static ap_status cpu_prefill(ap_engine *e, const int *ids, int T, const ap_capture *cap,
                             ap_error *err)
{
    const cpu_weights *w = e->impl;
    const ap_config *c = &e->model->config;
    const int C = c->n_embd, NH = c->n_head, hd = C / NH;
    buffers b;
    ap_status st = buffers_alloc(&b, T, C, T, err);
    if (st) return st;
    for (int t = 0; t < T; t++) embed(w, C, b.x + (size_t)t * C, ids[t], t);
    int last_needed = c->n_layer - 1;
    if (!cap || !cap->logits) { /* layers past the last captured one change nothing we return */
        last_needed = -1;
        for (int i = 0; cap && i < cap->n_capture; i++)
            last_needed = cap->layers[i] > last_needed ? cap->layers[i] : last_needed;
    }
    for (int l = 0; l <= last_needed; l++) {
        const int ci = ap_capture_index(cap, l);
        block_qkv(w, c, l, &b, T);
        if (ci >= 0) {
            float **dst[3] = {cap->q, cap->k, cap->v};
            for (int which = 0; which < 3; which++)
                if (dst[which] && dst[which][ci])
                    for (int h = 0; h < NH; h++)
                        copy_head(dst[which][ci] + (size_t)h * T * hd, b.qkv, which, h, T, C, hd);
        }
        attention(&b, T, C, NH, ci >= 0 && cap->attn ? cap->attn[ci] : NULL);
        if (ci >= 0 && cap->o && cap->o[ci]) /* att[T,C] holds the heads' outputs side by side */
            for (int h = 0; h < NH; h++)
                for (int t = 0; t < T; t++)
                    to_float(cap->o[ci] + ((size_t)h * T + t) * hd, b.att + (size_t)t * C + (size_t)h * hd,
                             (size_t)hd);
        block_finish(w, c, l, &b, T);
    }
    if (cap && cap->logits)
        st = cap->logits_last_only ? lm_head(w, c, cap->logits, b.x + (size_t)(T - 1) * C, b.h, 1, err)
                                   : lm_head(w, c, cap->logits, b.x, b.h, T, err);
    buffers_free(&b);
    return st;
}

/* ---- decode ------------------------------------------------------------- */

typedef struct {
    real *k, *v; /* [L, H, max_len, hd] */
} cpu_stream;

static ap_status cpu_stream_init(ap_engine *e, ap_stream *s, ap_error *err)
{
    const ap_config *c = &e->model->config;
    size_t n = (size_t)c->n_layer * c->n_embd * s->max_len;
    cpu_stream *cs = calloc(1, sizeof *cs);
    if (cs) {
        cs->k = malloc(n * sizeof(real));
        cs->v = malloc(n * sizeof(real));
    }
    if (!cs || !cs->k || !cs->v) {
        if (cs) {
            free(cs->k);
            free(cs->v);
        }
        free(cs);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for a KV cache of %d positions",
                            s->max_len);
    }
    s->impl = cs;
    return AP_OK;
}

static void cpu_stream_free(ap_stream *s)
{
    cpu_stream *cs = s->impl;
    if (!cs) return;
    free(cs->k);
    free(cs->v);
    free(cs);
}

/* One head's attention at position t over the kept positions and t itself.
 * k, v: the head's cache [max_len, hd]; q, out: [hd]; row (optional): [n_ctx]
 * over absolute positions. scores and pos hold t + 1 entries. */
static void decode_attend_head(const real *k, const real *v, int hd, int t, const int *kept,
                               int n_kept, const real *q, real *out, float *row, real *scores,
                               int *pos)
{
    const double scale = 1.0 / sqrt((double)hd);
    int n = 0;
    if (kept) {
        for (int i = 0; i < n_kept; i++) pos[n++] = kept[i];
    } else {
        for (int j = 0; j < t; j++) pos[n++] = j;
    }
    pos[n++] = t;
    for (int i = 0; i < n; i++) {
        const real *kj = k + (size_t)pos[i] * hd;
        double dot = 0;
        for (int d = 0; d < hd; d++) dot += q[d] * kj[d];
        scores[i] = dot * scale;
    }
    softmax(scores, scores, n);
    for (int d = 0; d < hd; d++) out[d] = 0;
    for (int i = 0; i < n; i++) {
        const real *vj = v + (size_t)pos[i] * hd;
        for (int d = 0; d < hd; d++) out[d] += scores[i] * vj[d];
    }
    if (row) {
        memset(row, 0, (size_t)(t + 1) * sizeof(float));
        for (int i = 0; i < n; i++) row[pos[i]] = (float)scores[i];
    }
}

static ap_status cpu_decode_step(ap_engine *e, const ap_decode_batch *b, const ap_capture *cap,
                                 ap_error *err)
{
    const cpu_weights *w = e->impl;
    const ap_config *c = &e->model->config;
    const int S = b->n_stream, C = c->n_embd, NH = c->n_head, hd = C / NH;
    int max_len = 0;
    for (int s = 0; s < S; s++)
        max_len = b->streams[s]->max_len > max_len ? b->streams[s]->max_len : max_len;
    buffers buf; /* rows are streams here; scores hold one row */
    ap_status st = buffers_alloc(&buf, S, C, max_len + 1, err);
    if (st) return st;
    int *pos = malloc((size_t)(max_len + 1) * sizeof(int));
    if (!pos) {
        buffers_free(&buf);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory in decode step");
    }
    for (int s = 0; s < S; s++) embed(w, C, buf.x + (size_t)s * C, b->tokens[s], b->streams[s]->pos);
    for (int l = 0; l < c->n_layer; l++) {
        const int ci = ap_capture_index(cap, l);
        block_qkv(w, c, l, &buf, S);
        for (int s = 0; s < S; s++) {
            const ap_stream *str = b->streams[s];
            const cpu_stream *cs = str->impl;
            const int t = str->pos;
            const real *qkv = buf.qkv + (size_t)s * 3 * C;
            for (int h = 0; h < NH; h++) {
                const int lh = l * NH + h;
                real *k = cs->k + (size_t)lh * str->max_len * hd;
                real *v = cs->v + (size_t)lh * str->max_len * hd;
                memcpy(k + (size_t)t * hd, qkv + C + h * hd, hd * sizeof(real));
                memcpy(v + (size_t)t * hd, qkv + 2 * C + h * hd, hd * sizeof(real));
                const int *kept = b->kept && b->kept[s] ? b->kept[s][lh] : NULL;
                const int n_kept = kept ? b->n_kept[s][lh] : 0;
                float *row = ci >= 0 && cap->attn && cap->attn[ci]
                                 ? cap->attn[ci] + ((size_t)s * NH + h) * c->n_ctx
                                 : NULL;
                decode_attend_head(k, v, hd, t, kept, n_kept, qkv + h * hd,
                                   buf.att + (size_t)s * C + h * hd, row, buf.scores, pos);
                float **dst[3] = {ci >= 0 ? cap->q : NULL, ci >= 0 ? cap->k : NULL,
                                  ci >= 0 ? cap->v : NULL};
                for (int which = 0; which < 3; which++)
                    if (dst[which] && dst[which][ci])
                        to_float(dst[which][ci] + ((size_t)s * NH + h) * hd, qkv + which * C + h * hd,
                                 (size_t)hd);
            }
        }
        block_finish(w, c, l, &buf, S);
    }
    if (cap && cap->logits) st = lm_head(w, c, cap->logits, buf.x, buf.h, S, err);
    free(pos);
    buffers_free(&buf);
    return st;
}

/* ---- engine ------------------------------------------------------------- */

static void cpu_free(ap_engine *e)
{
    cpu_weights *w = e->impl;
    if (!w) return;
    free(w->storage);
    free(w);
}

/* OpenBLAS names its version, build and threading model (engine.c). */
const char *ap_cpu_blas_config(void) { return openblas_get_config(); }

static const ap_backend_ops cpu_ops = {cpu_prefill, cpu_stream_init, cpu_stream_free,
                                       cpu_decode_step, cpu_free, NULL, NULL, NULL, NULL};

ap_status ap_cpu_engine_init(ap_engine *e, ap_error *err)
{
    const ap_model *m = e->model;
    cpu_weights *w = calloc(1, sizeof *w);
    if (w) w->storage = malloc(m->n_params * sizeof(real));
    if (!w || !w->storage) {
        free(w);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory converting %zu parameters",
                            m->n_params);
    }
    for (size_t i = 0; i < m->n_params; i++) w->storage[i] = m->storage[i];
    /* Same layout as the model's storage: shift each tensor pointer over. */
    const float *base = m->storage;
    const float *src[] = {m->w.wte, m->w.wpe, m->w.ln1_w, m->w.ln1_b, m->w.attn_w, m->w.attn_b,
                          m->w.attn_proj_w, m->w.attn_proj_b, m->w.ln2_w, m->w.ln2_b, m->w.fc_w,
                          m->w.fc_b, m->w.fc_proj_w, m->w.fc_proj_b, m->w.lnf_w, m->w.lnf_b};
    real **dst[] = {&w->wte, &w->wpe, &w->ln1_w, &w->ln1_b, &w->attn_w, &w->attn_b,
                    &w->attn_proj_w, &w->attn_proj_b, &w->ln2_w, &w->ln2_b, &w->fc_w,
                    &w->fc_b, &w->fc_proj_w, &w->fc_proj_b, &w->lnf_w, &w->lnf_b};
    for (size_t i = 0; i < sizeof src / sizeof src[0]; i++) *dst[i] = w->storage + (src[i] - base);
    e->impl = w;
    e->ops = &cpu_ops;
    snprintf(e->device_name, sizeof e->device_name, "cpu (OpenBLAS, %d threads, fp64 arithmetic)",
             openblas_get_num_threads());
    return AP_OK;
}
