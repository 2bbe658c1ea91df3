/* forward.c — the CPU backend: GPT-2's forward pass in fp32, matrix
 * products through OpenBLAS's cblas_sgemm.
 *
 * This is the reference implementation the CUDA backend is checked against,
 * so it favours plainness: one function per operation, shapes in comments,
 * and reductions (LayerNorm statistics, softmax sums) accumulated in double
 * so the result sits as close as fp32 allows to a float64 computation. */
#include "../engine_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- building blocks ---------------------------------------------------- */

/* out[T,C] = LayerNorm(x[T,C]) * w + b */
static void layernorm(float *out, const float *x, const float *w, const float *b, int T, int C,
                      float eps)
{
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C;
        double mean = 0, var = 0;
        for (int i = 0; i < C; i++) mean += xt[i];
        mean /= C;
        for (int i = 0; i < C; i++) var += (xt[i] - mean) * (xt[i] - mean);
        var /= C;
        double rstd = 1.0 / sqrt(var + eps);
        float *ot = out + (size_t)t * C;
        for (int i = 0; i < C; i++) ot[i] = (float)((xt[i] - mean) * rstd) * w[i] + b[i];
    }
}

/* out[T,OC] = in[T,IC] @ w[IC,OC] + bias[OC] */
static void matmul_bias(float *out, const float *in, const float *w, const float *bias, int T,
                        int IC, int OC)
{
    for (int t = 0; t < T; t++) memcpy(out + (size_t)t * OC, bias, (size_t)OC * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, OC, IC, 1.0f, in, IC, w, OC, 1.0f, out,
                OC);
}

/* GELU, tanh approximation (transformers' gelu_new), in place. */
static void gelu(float *x, size_t n)
{
    const double s = 0.7978845608028654; /* sqrt(2 / pi) */
    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        x[i] = (float)(0.5 * v * (1.0 + tanh(s * (v + 0.044715 * v * v * v))));
    }
}

static void add_inplace(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

/* p[n] = softmax(s[n]); p may alias s. */
static void softmax(float *p, const float *s, int n)
{
    float max = s[0];
    for (int i = 1; i < n; i++) max = s[i] > max ? s[i] : max;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        float e = expf(s[i] - max);
        p[i] = e;
        sum += e;
    }
    const double inv = 1.0 / sum;
    for (int i = 0; i < n; i++) p[i] = (float)(p[i] * inv);
}

/* ---- prefill ------------------------------------------------------------ */

typedef struct {
    float *x, *h, *qkv, *att, *tmp, *fc, *scores, *probs;
    int T;
} prefill_buffers;

static void buffers_free(prefill_buffers *b)
{
    free(b->x); free(b->h); free(b->qkv); free(b->att); free(b->tmp); free(b->fc);
    free(b->scores); free(b->probs);
    memset(b, 0, sizeof *b);
}

static ap_status buffers_alloc(prefill_buffers *b, int T, int C, ap_error *err)
{
    size_t TC = (size_t)T * C;
    b->T = T;
    b->x = malloc(TC * sizeof(float));
    b->h = malloc(TC * sizeof(float));
    b->qkv = malloc(3 * TC * sizeof(float));
    b->att = malloc(TC * sizeof(float));
    b->tmp = malloc(TC * sizeof(float));
    b->fc = malloc(4 * TC * sizeof(float));
    b->scores = malloc((size_t)T * T * sizeof(float));
    b->probs = malloc((size_t)T * T * sizeof(float));
    if (!b->x || !b->h || !b->qkv || !b->att || !b->tmp || !b->fc || !b->scores || !b->probs) {
        buffers_free(b);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for a %d-token prefill", T);
    }
    return AP_OK;
}

static int capture_index(const ap_capture *cap, int layer)
{
    if (!cap) return -1;
    for (int i = 0; i < cap->n_capture; i++)
        if (cap->layers[i] == layer) return i;
    return -1;
}

/* Copies head h's slice of qkv[T,3C] part `which` (0 q, 1 k, 2 v) to dst[T,hd]. */
static void copy_head(float *dst, const float *qkv, int which, int h, int T, int C, int hd)
{
    for (int t = 0; t < T; t++)
        memcpy(dst + (size_t)t * hd, qkv + (size_t)t * 3 * C + (size_t)which * C + (size_t)h * hd,
               (size_t)hd * sizeof(float));
}

/* Causal self-attention of one layer: att[T,C] from qkv[T,3C]. Writes the
 * probabilities of head h to probs_out(h) [T,T] when given. */
static void attention(prefill_buffers *b, int T, int C, int NH, float *attn_capture)
{
    const int hd = C / NH;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < NH; h++) {
        const float *q = b->qkv + (size_t)h * hd;
        const float *k = b->qkv + C + (size_t)h * hd;
        const float *v = b->qkv + 2 * (size_t)C + (size_t)h * hd;
        float *probs = attn_capture ? attn_capture + (size_t)h * T * T : b->probs;
        /* scores[T,T] = q[T,hd] @ k[T,hd]^T * scale; only j <= i is used */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, q, 3 * C, k, 3 * C,
                    0.0f, b->scores, T);
        for (int i = 0; i < T; i++) {
            float *row = probs + (size_t)i * T;
            softmax(row, b->scores + (size_t)i * T, i + 1);
            memset(row + i + 1, 0, (size_t)(T - i - 1) * sizeof(float));
        }
        /* att[:, h*hd:(h+1)*hd] = probs[T,T] @ v[T,hd] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, probs, T, v, 3 * C,
                    0.0f, b->att + (size_t)h * hd, C);
    }
}

/* Runs block l on b->x in place. */
static void block_forward(const ap_model *m, int l, prefill_buffers *b, int T, const ap_capture *cap)
{
    const ap_config *c = &m->config;
    const ap_weights *w = &m->w;
    const int C = c->n_embd, NH = c->n_head, hd = C / NH;
    const size_t TC = (size_t)T * C, lc = (size_t)l * C;
    int ci = capture_index(cap, l);

    layernorm(b->h, b->x, w->ln1_w + lc, w->ln1_b + lc, T, C, c->ln_eps);
    matmul_bias(b->qkv, b->h, w->attn_w + lc * 3 * C, w->attn_b + 3 * lc, T, C, 3 * C);
    if (ci >= 0) {
        float **dst[3] = {cap->q, cap->k, cap->v};
        for (int which = 0; which < 3; which++)
            if (dst[which] && dst[which][ci])
                for (int h = 0; h < NH; h++)
                    copy_head(dst[which][ci] + (size_t)h * T * hd, b->qkv, which, h, T, C, hd);
    }
    attention(b, T, C, NH, ci >= 0 && cap->attn ? cap->attn[ci] : NULL);
    matmul_bias(b->tmp, b->att, w->attn_proj_w + lc * C, w->attn_proj_b + lc, T, C, C);
    add_inplace(b->x, b->tmp, TC);

    layernorm(b->h, b->x, w->ln2_w + lc, w->ln2_b + lc, T, C, c->ln_eps);
    matmul_bias(b->fc, b->h, w->fc_w + lc * 4 * C, w->fc_b + 4 * lc, T, C, 4 * C);
    gelu(b->fc, 4 * TC);
    matmul_bias(b->tmp, b->fc, w->fc_proj_w + lc * 4 * C, w->fc_proj_b + lc, T, 4 * C, C);
    add_inplace(b->x, b->tmp, TC);
}

/* logits[n,V] = LayerNorm_f(x[n,C]) @ wte[V,C]^T */
static void lm_head(const ap_model *m, float *logits, const float *x, float *h, int n)
{
    const ap_config *c = &m->config;
    layernorm(h, x, m->w.lnf_w, m->w.lnf_b, n, c->n_embd, c->ln_eps);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, c->vocab_size, c->n_embd, 1.0f, h,
                c->n_embd, m->w.wte, c->n_embd, 0.0f, logits, c->vocab_size);
}

static ap_status cpu_prefill(ap_engine *e, const int *ids, int T, const ap_capture *cap,
                             ap_error *err)
{
    const ap_model *m = e->model;
    const int C = m->config.n_embd;
    prefill_buffers b;
    ap_status st = buffers_alloc(&b, T, C, err);
    if (st) return st;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < C; i++)
            b.x[(size_t)t * C + i] = m->w.wte[(size_t)ids[t] * C + i] + m->w.wpe[(size_t)t * C + i];
    int last_needed = m->config.n_layer - 1;
    if (!cap || !cap->logits) { /* layers past the last captured one change nothing we return */
        last_needed = -1;
        for (int i = 0; cap && i < cap->n_capture; i++)
            last_needed = cap->layers[i] > last_needed ? cap->layers[i] : last_needed;
    }
    for (int l = 0; l <= last_needed; l++) block_forward(m, l, &b, T, cap);
    if (cap && cap->logits) {
        if (cap->logits_last_only)
            lm_head(m, cap->logits, b.x + (size_t)(T - 1) * C, b.h, 1);
        else
            lm_head(m, cap->logits, b.x, b.h, T);
    }
    buffers_free(&b);
    return AP_OK;
}

/* ---- decode ------------------------------------------------------------- */

typedef struct {
    float *k, *v; /* [L, H, max_len, hd] */
} cpu_stream;

static ap_status cpu_stream_init(ap_engine *e, ap_stream *s, ap_error *err)
{
    const ap_config *c = &e->model->config;
    size_t n = (size_t)c->n_layer * c->n_embd * s->max_len;
    cpu_stream *cs = calloc(1, sizeof *cs);
    if (cs) {
        cs->k = malloc(n * sizeof(float));
        cs->v = malloc(n * sizeof(float));
    }
    if (!cs || !cs->k || !cs->v) {
        if (cs) { free(cs->k); free(cs->v); }
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

/* Attention of one stream at position t for head h of layer l, over the
 * kept positions and t itself. q, k_new, v_new: [hd]; out: [hd];
 * row (optional): [n_ctx] over absolute positions. */
static void decode_attend_head(const cpu_stream *cs, size_t head_base, int hd, int t,
                               const int *kept, int n_kept, const float *q, float *out, float *row,
                               float *scores, int *pos)
{
    const float scale = 1.0f / sqrtf((float)hd);
    int n = 0;
    if (kept) {
        for (int i = 0; i < n_kept; i++) pos[n++] = kept[i];
    } else {
        for (int j = 0; j < t; j++) pos[n++] = j;
    }
    pos[n++] = t;
    for (int i = 0; i < n; i++) {
        const float *kj = cs->k + head_base + (size_t)pos[i] * hd;
        double dot = 0; /* float accumulation order differs from sgemm; keep it exact-ish */
        for (int d = 0; d < hd; d++) dot += (double)q[d] * kj[d];
        scores[i] = (float)dot * scale;
    }
    softmax(scores, scores, n);
    for (int d = 0; d < hd; d++) out[d] = 0;
    for (int i = 0; i < n; i++) {
        const float *vj = cs->v + head_base + (size_t)pos[i] * hd;
        for (int d = 0; d < hd; d++) out[d] += scores[i] * vj[d];
    }
    if (row) {
        memset(row, 0, (size_t)(t + 1) * sizeof(float));
        for (int i = 0; i < n; i++) row[pos[i]] = scores[i];
    }
}

static ap_status cpu_decode_step(ap_engine *e, const ap_decode_batch *b, const ap_capture *cap,
                                 ap_error *err)
{
    const ap_model *m = e->model;
    const ap_config *c = &m->config;
    const ap_weights *w = &m->w;
    const int S = b->n_stream, C = c->n_embd, NH = c->n_head, hd = C / NH;
    int max_len = 0;
    for (int s = 0; s < S; s++)
        max_len = b->streams[s]->max_len > max_len ? b->streams[s]->max_len : max_len;
    prefill_buffers buf; /* rows are streams here */
    ap_status st = buffers_alloc(&buf, S, C, err);
    if (st) return st;
    float *scores = malloc((size_t)(max_len + 1) * sizeof(float));
    int *pos = malloc((size_t)(max_len + 1) * sizeof(int));
    if (!scores || !pos) {
        free(scores); free(pos); buffers_free(&buf);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory in decode step");
    }
    for (int s = 0; s < S; s++) {
        int t = b->streams[s]->pos;
        for (int i = 0; i < C; i++)
            buf.x[(size_t)s * C + i] =
                w->wte[(size_t)b->tokens[s] * C + i] + w->wpe[(size_t)t * C + i];
    }
    for (int l = 0; l < c->n_layer; l++) {
        const size_t lc = (size_t)l * C;
        const int ci = capture_index(cap, l);
        layernorm(buf.h, buf.x, w->ln1_w + lc, w->ln1_b + lc, S, C, c->ln_eps);
        matmul_bias(buf.qkv, buf.h, w->attn_w + lc * 3 * C, w->attn_b + 3 * lc, S, C, 3 * C);
        for (int s = 0; s < S; s++) {
            const ap_stream *str = b->streams[s];
            const cpu_stream *cs = str->impl;
            const int t = str->pos;
            const float *qkv = buf.qkv + (size_t)s * 3 * C;
            for (int h = 0; h < NH; h++) {
                size_t head_base = ((size_t)l * NH + h) * str->max_len * hd;
                memcpy(cs->k + head_base + (size_t)t * hd, qkv + C + h * hd, hd * sizeof(float));
                memcpy(cs->v + head_base + (size_t)t * hd, qkv + 2 * C + h * hd, hd * sizeof(float));
                const int lh = l * NH + h;
                const int *kept = b->kept && b->kept[s] ? b->kept[s][lh] : NULL;
                const int n_kept = kept ? b->n_kept[s][lh] : 0;
                float *row = ci >= 0 && cap->attn && cap->attn[ci]
                                 ? cap->attn[ci] + ((size_t)s * NH + h) * c->n_ctx
                                 : NULL;
                decode_attend_head(cs, head_base, hd, t, kept, n_kept, qkv + h * hd,
                                   buf.att + (size_t)s * C + h * hd, row, scores, pos);
                float **dst[3] = {ci >= 0 ? cap->q : NULL, ci >= 0 ? cap->k : NULL,
                                  ci >= 0 ? cap->v : NULL};
                for (int which = 0; which < 3; which++)
                    if (dst[which] && dst[which][ci])
                        memcpy(dst[which][ci] + ((size_t)s * NH + h) * hd, qkv + which * C + h * hd,
                               hd * sizeof(float));
            }
        }
        matmul_bias(buf.tmp, buf.att, w->attn_proj_w + lc * C, w->attn_proj_b + lc, S, C, C);
        add_inplace(buf.x, buf.tmp, (size_t)S * C);
        layernorm(buf.h, buf.x, w->ln2_w + lc, w->ln2_b + lc, S, C, c->ln_eps);
        matmul_bias(buf.fc, buf.h, w->fc_w + lc * 4 * C, w->fc_b + 4 * lc, S, C, 4 * C);
        gelu(buf.fc, (size_t)S * 4 * C);
        matmul_bias(buf.tmp, buf.fc, w->fc_proj_w + lc * 4 * C, w->fc_proj_b + lc, S, 4 * C, C);
        add_inplace(buf.x, buf.tmp, (size_t)S * C);
    }
    if (cap && cap->logits) lm_head(m, cap->logits, buf.x, buf.h, S);
    free(scores);
    free(pos);
    buffers_free(&buf);
    return AP_OK;
}

static void cpu_free(ap_engine *e) { (void)e; }

static const ap_backend_ops cpu_ops = {cpu_prefill, cpu_stream_init, cpu_stream_free,
                                       cpu_decode_step, cpu_free};

ap_status ap_cpu_engine_init(ap_engine *e, ap_error *err)
{
    (void)err;
    e->ops = &cpu_ops;
    snprintf(e->device_name, sizeof e->device_name, "cpu (OpenBLAS, %d threads)",
             openblas_get_num_threads());
    return AP_OK;
}
