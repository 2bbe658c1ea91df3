/* llmc.c — llm.c checkpoints (karpathy/llm.c, gpt2_124M.bin).
 *
 * int32[256] header: magic 20240326, version (3: fp32, 5: bf16), max_seq_len,
 * vocab_size, n_layer, n_head, n_embd, padded_vocab_size; then the
 * parameters in this order, Linear weights stored [out, in]:
 * wte[Vp,C] wpe[T,C] ln1w[L,C] ln1b[L,C] qkvw[L,3C,C] qkvb[L,3C]
 * attprojw[L,C,C] attprojb[L,C] ln2w[L,C] ln2b[L,C] fcw[L,4C,C] fcb[L,4C]
 * fcprojw[L,C,4C] fcprojb[L,C] lnfw[C] lnfb[C]. We transpose the weights to
 * our [in, out] layout while reading. */
#include "model_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { LLMC_MAGIC = 20240326, LLMC_HEADER_INTS = 256 };

typedef struct {
    const unsigned char *p;
    size_t left;
    int bf16;
} reader;

static float read_value(reader *r)
{
    float f;
    if (r->bf16) {
        f = ap_bf16_to_float((uint16_t)(r->p[0] | r->p[1] << 8));
        r->p += 2;
    } else {
        uint32_t bits = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 |
                        (uint32_t)r->p[3] << 24;
        memcpy(&f, &bits, sizeof f);
        r->p += 4;
    }
    return f;
}

/* Reads count values into dst; with out_dim > 0 the source is `blocks`
 * matrices [out_dim, in_dim] and each is stored transposed [in_dim, out_dim]. */
static void read_tensor(reader *r, float *dst, size_t blocks, size_t out_dim, size_t in_dim)
{
    for (size_t b = 0; b < blocks; b++) {
        float *m = dst + b * out_dim * in_dim;
        for (size_t o = 0; o < out_dim; o++)
            for (size_t i = 0; i < in_dim; i++) m[i * out_dim + o] = read_value(r);
    }
}

ap_status ap_model_load_llmc(const char *path, ap_model *m, ap_error *err)
{
    char *file;
    size_t size;
    ap_status st = ap_read_file(path, &file, &size, err);
    if (st) return st;
    int32_t h[LLMC_HEADER_INTS];
    if (size < sizeof h) {
        free(file);
        return ap_error_set(err, AP_ERR_INPUT, "%s: truncated llm.c header (%zu of %zu bytes)", path,
                            size, sizeof h);
    }
    memcpy(h, file, sizeof h);
    if (h[0] != LLMC_MAGIC) {
        free(file);
        return ap_error_set(err, AP_ERR_INPUT, "%s: bad magic %d (an llm.c checkpoint has %d)", path,
                            h[0], LLMC_MAGIC);
    }
    if (h[1] != 3 && h[1] != 5) {
        free(file);
        return ap_error_set(err, AP_ERR_INPUT,
                            "%s: llm.c version %d is not supported (3: fp32, 5: bf16)", path, h[1]);
    }
    ap_config *c = &m->config;
    *c = (ap_config){.n_ctx = h[2], .vocab_size = h[3], .n_layer = h[4], .n_head = h[5],
                     .n_embd = h[6], .padded_vocab = h[7], .ln_eps = 1e-5f};
    if ((st = ap_config_validate(c, path, err))) {
        free(file);
        return st;
    }
    size_t C = (size_t)c->n_embd, L = (size_t)c->n_layer;
    size_t count = (size_t)c->padded_vocab * C + (size_t)c->n_ctx * C + L * (12 * C * C + 13 * C) +
                   2 * C;
    size_t esize = h[1] == 5 ? 2 : 4;
    if (size - sizeof h != count * esize) {
        free(file);
        return ap_error_set(err, AP_ERR_INPUT,
                            "%s: %zu bytes of parameters, the header implies %zu (%zu values of %zu "
                            "bytes)",
                            path, size - sizeof h, count * esize, count, esize);
    }
    if ((st = ap_model_alloc(m, err))) {
        free(file);
        return st;
    }
    reader r = {(const unsigned char *)file + sizeof h, size - sizeof h, h[1] == 5};
    ap_weights *w = &m->w;
    read_tensor(&r, w->wte, 1, 1, (size_t)c->padded_vocab * C);
    read_tensor(&r, w->wpe, 1, 1, (size_t)c->n_ctx * C);
    read_tensor(&r, w->ln1_w, 1, 1, L * C);
    read_tensor(&r, w->ln1_b, 1, 1, L * C);
    read_tensor(&r, w->attn_w, L, 3 * C, C);
    read_tensor(&r, w->attn_b, 1, 1, L * 3 * C);
    read_tensor(&r, w->attn_proj_w, L, C, C);
    read_tensor(&r, w->attn_proj_b, 1, 1, L * C);
    read_tensor(&r, w->ln2_w, 1, 1, L * C);
    read_tensor(&r, w->ln2_b, 1, 1, L * C);
    read_tensor(&r, w->fc_w, L, 4 * C, C);
    read_tensor(&r, w->fc_b, 1, 1, L * 4 * C);
    read_tensor(&r, w->fc_proj_w, L, C, 4 * C);
    read_tensor(&r, w->fc_proj_b, 1, 1, L * C);
    read_tensor(&r, w->lnf_w, 1, 1, C);
    read_tensor(&r, w->lnf_b, 1, 1, C);
    snprintf(m->dtype, sizeof m->dtype, "%s", h[1] == 5 ? "BF16" : "F32");
    ap_sha256_hex(file, size, m->sha256);
    free(file);
    return AP_OK;
}
