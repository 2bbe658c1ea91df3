/* model.c — model allocation, tensor naming and the load dispatcher. */
#include "model_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

ap_status ap_config_validate(const ap_config *c, const char *what, ap_error *err)
{
    if (c->n_layer < 1 || c->n_layer > 256)
        return ap_error_set(err, AP_ERR_INPUT, "%s: n_layer %d is outside 1..256", what, c->n_layer);
    if (c->n_head < 1 || c->n_head > 256)
        return ap_error_set(err, AP_ERR_INPUT, "%s: n_head %d is outside 1..256", what, c->n_head);
    if (c->n_embd < 1 || c->n_embd > 65536 || c->n_embd % c->n_head != 0)
        return ap_error_set(err, AP_ERR_INPUT,
                            "%s: n_embd %d must be in 1..65536 and a multiple of n_head %d", what,
                            c->n_embd, c->n_head);
    if (c->n_ctx < 1 || c->n_ctx > 1 << 20)
        return ap_error_set(err, AP_ERR_INPUT, "%s: n_positions %d is outside 1..1048576", what,
                            c->n_ctx);
    if (c->vocab_size < 1 || c->vocab_size > 1 << 24)
        return ap_error_set(err, AP_ERR_INPUT, "%s: vocab_size %d is outside 1..16777216", what,
                            c->vocab_size);
    if (c->padded_vocab < c->vocab_size || c->padded_vocab > (1 << 24) + 4096)
        return ap_error_set(err, AP_ERR_INPUT, "%s: padded vocab %d is below vocab_size %d", what,
                            c->padded_vocab, c->vocab_size);
    if (!(c->ln_eps > 0.0f && c->ln_eps < 1.0f))
        return ap_error_set(err, AP_ERR_INPUT, "%s: layer_norm_epsilon %g is outside (0, 1)", what,
                            (double)c->ln_eps);
    /* Guard the allocation size computation against overflow. */
    double floats = (double)c->padded_vocab * c->n_embd + (double)c->n_ctx * c->n_embd +
                    12.0 * c->n_layer * (double)c->n_embd * c->n_embd;
    if (floats > 16e9)
        return ap_error_set(err, AP_ERR_INPUT, "%s: model of %.3g parameters is too large", what,
                            floats);
    return AP_OK;
}

size_t ap_model_param_count(const ap_config *c)
{
    size_t C = (size_t)c->n_embd, L = (size_t)c->n_layer;
    size_t per_layer = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * 4 * C + 4 * C) +
                       (4 * C * C + C);
    return (size_t)c->vocab_size * C + (size_t)c->n_ctx * C + L * per_layer + 2 * C;
}

int ap_model_slot_count(const ap_config *c) { return 4 + 12 * c->n_layer; }

static void slot(ap_tensor_slot *s, const char *name, float *dst, int64_t d0, int64_t d1)
{
    snprintf(s->name, sizeof s->name, "%s", name);
    s->dst = dst;
    s->ndim = d1 ? 2 : 1;
    s->shape[0] = d0;
    s->shape[1] = d1;
}

/* Slot of layer l's tensor `suffix`: each layer holds d0 x d1 (d1 = 0: a vector). */
static void layer_slot(ap_tensor_slot *s, int l, const char *suffix, float *base, int64_t d0,
                       int64_t d1)
{
    char name[64];
    snprintf(name, sizeof name, "h.%d.%s", l, suffix);
    slot(s, name, base + (size_t)l * (size_t)d0 * (size_t)(d1 ? d1 : 1), d0, d1);
}

int ap_model_slots(ap_model *m, ap_tensor_slot *s)
{
    const ap_config *c = &m->config;
    const int64_t C = c->n_embd;
    ap_weights *w = &m->w;
    int n = 0;
    slot(&s[n++], "wte.weight", w->wte, c->vocab_size, C);
    slot(&s[n++], "wpe.weight", w->wpe, c->n_ctx, C);
    for (int l = 0; l < c->n_layer; l++) {
        layer_slot(&s[n++], l, "ln_1.weight", w->ln1_w, C, 0);
        layer_slot(&s[n++], l, "ln_1.bias", w->ln1_b, C, 0);
        layer_slot(&s[n++], l, "attn.c_attn.weight", w->attn_w, C, 3 * C);
        layer_slot(&s[n++], l, "attn.c_attn.bias", w->attn_b, 3 * C, 0);
        layer_slot(&s[n++], l, "attn.c_proj.weight", w->attn_proj_w, C, C);
        layer_slot(&s[n++], l, "attn.c_proj.bias", w->attn_proj_b, C, 0);
        layer_slot(&s[n++], l, "ln_2.weight", w->ln2_w, C, 0);
        layer_slot(&s[n++], l, "ln_2.bias", w->ln2_b, C, 0);
        layer_slot(&s[n++], l, "mlp.c_fc.weight", w->fc_w, C, 4 * C);
        layer_slot(&s[n++], l, "mlp.c_fc.bias", w->fc_b, 4 * C, 0);
        layer_slot(&s[n++], l, "mlp.c_proj.weight", w->fc_proj_w, 4 * C, C);
        layer_slot(&s[n++], l, "mlp.c_proj.bias", w->fc_proj_b, C, 0);
    }
    slot(&s[n++], "ln_f.weight", w->lnf_w, C, 0);
    slot(&s[n++], "ln_f.bias", w->lnf_b, C, 0);
    return n;
}

ap_status ap_model_alloc(ap_model *m, ap_error *err)
{
    const ap_config *c = &m->config;
    size_t C = (size_t)c->n_embd, L = (size_t)c->n_layer;
    size_t sizes[] = {
        (size_t)c->padded_vocab * C, (size_t)c->n_ctx * C, L * C, L * C, L * C * 3 * C, L * 3 * C,
        L * C * C, L * C, L * C, L * C, L * C * 4 * C, L * 4 * C, L * 4 * C * C, L * C, C, C,
    };
    float **ptrs[] = {
        &m->w.wte,   &m->w.wpe,         &m->w.ln1_w,       &m->w.ln1_b, &m->w.attn_w, &m->w.attn_b,
        &m->w.attn_proj_w, &m->w.attn_proj_b, &m->w.ln2_w, &m->w.ln2_b, &m->w.fc_w,   &m->w.fc_b,
        &m->w.fc_proj_w,   &m->w.fc_proj_b,   &m->w.lnf_w, &m->w.lnf_b,
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) total += sizes[i];
    m->storage = calloc(total, sizeof(float));
    if (!m->storage)
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory allocating %zu parameters", total);
    m->n_params = total;
    float *p = m->storage;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        *ptrs[i] = p;
        p += sizes[i];
    }
    return AP_OK;
}

ap_status ap_read_file(const char *path, char **data, size_t *n, ap_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return ap_error_set(err, AP_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return ap_error_set(err, AP_ERR_INPUT, "%s: not a regular file", path);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(f);
        return ap_error_set(err, AP_ERR_RUNTIME, "%s: out of memory reading %lld bytes", path,
                            (long long)st.st_size);
    }
    size_t got = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    if (got != (size_t)st.st_size) {
        free(buf);
        return ap_error_set(err, AP_ERR_INPUT, "%s: short read (%zu of %lld bytes)", path, got,
                            (long long)st.st_size);
    }
    buf[got] = '\0';
    *data = buf;
    *n = got;
    return AP_OK;
}

float ap_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while (!(mant & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | mant << 13;
    } else {
        bits = sign | (exp + 127 - 15) << 23 | mant << 13;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float ap_bf16_to_float(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

ap_status ap_model_load(const char *spec, ap_model **out, ap_error *err)
{
    *out = NULL;
    if (!spec || !*spec) return ap_error_set(err, AP_ERR_USAGE, "model: empty path (accepted: a model folder, a .safetensors file, an llm.c .bin, random:SPEC)");
    ap_model *m = calloc(1, sizeof *m);
    if (!m) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    snprintf(m->source, sizeof m->source, "%s", spec);
    ap_status st;
    if (strncmp(spec, "random:", 7) == 0)
        st = ap_model_load_random(spec + 7, m, err);
    else if (has_suffix(spec, ".bin"))
        st = ap_model_load_llmc(spec, m, err);
    else
        st = ap_model_load_hf(spec, m, err);
    if (st != AP_OK) {
        ap_model_free(m);
        return st;
    }
    *out = m;
    return AP_OK;
}

void ap_model_free(ap_model *model)
{
    if (!model) return;
    free(model->storage);
    free(model);
}
