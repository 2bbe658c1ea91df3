/* hf.c — Hugging Face model folders: config.json + model.safetensors.
 *
 * safetensors: u64 little-endian header length N, N bytes of JSON
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
 * then the data; offsets are relative to the byte after the header. Nothing
 * in the file is trusted before it is checked against the file size and the
 * config. */
#include "model_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static ap_status json_int(const cJSON *root, const char *key, const char *alt, int *out, int required,
                          const char *path, ap_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v && alt) v = cJSON_GetObjectItemCaseSensitive(root, alt);
    if (!v) {
        if (!required) return AP_OK;
        return ap_error_set(err, AP_ERR_INPUT, "%s: missing \"%s\" (an integer)", path, key);
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 ||
        v->valuedouble > INT_MAX)
        return ap_error_set(err, AP_ERR_INPUT, "%s: \"%s\" must be a non-negative integer", path, key);
    *out = (int)v->valuedouble;
    return AP_OK;
}

/* A boolean config flag that must have a given value for our forward pass
 * to be GPT-2's; absent means the transformers default. */
static ap_status json_flag(const cJSON *root, const char *key, int required_value, const char *path,
                           ap_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return AP_OK;
    if (!cJSON_IsBool(v))
        return ap_error_set(err, AP_ERR_INPUT, "%s: \"%s\" must be true or false", path, key);
    if (cJSON_IsTrue(v) != required_value)
        return ap_error_set(err, AP_ERR_INPUT, "%s: \"%s\": %s is not supported (only %s is)", path,
                            key, cJSON_IsTrue(v) ? "true" : "false",
                            required_value ? "true" : "false");
    return AP_OK;
}

static ap_status parse_config(const char *path, ap_config *c, ap_error *err)
{
    char *text;
    size_t n;
    ap_status st = ap_read_file(path, &text, &n, err);
    if (st) return st;
    cJSON *root = cJSON_ParseWithLength(text, n);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ap_error_set(err, AP_ERR_INPUT, "%s: not a JSON object", path);
    }
    memset(c, 0, sizeof *c);
    c->ln_eps = 1e-5f;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (mt && !(cJSON_IsString(mt) && strcmp(mt->valuestring, "gpt2") == 0)) {
        st = ap_error_set(err, AP_ERR_INPUT, "%s: model_type %s is not supported (only \"gpt2\")",
                          path, cJSON_IsString(mt) ? mt->valuestring : "(not a string)");
        goto done;
    }
    if ((st = json_int(root, "n_layer", NULL, &c->n_layer, 1, path, err)) ||
        (st = json_int(root, "n_head", NULL, &c->n_head, 1, path, err)) ||
        (st = json_int(root, "n_embd", NULL, &c->n_embd, 1, path, err)) ||
        (st = json_int(root, "n_positions", "n_ctx", &c->n_ctx, 1, path, err)) ||
        (st = json_int(root, "vocab_size", NULL, &c->vocab_size, 1, path, err)))
        goto done;
    c->padded_vocab = c->vocab_size;
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
    if (eps) {
        if (!cJSON_IsNumber(eps)) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: \"layer_norm_epsilon\" must be a number", path);
            goto done;
        }
        c->ln_eps = (float)eps->valuedouble;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    if (act && !(cJSON_IsString(act) && (strcmp(act->valuestring, "gelu_new") == 0 ||
                                         strcmp(act->valuestring, "gelu_pytorch_tanh") == 0))) {
        st = ap_error_set(err, AP_ERR_INPUT,
                          "%s: activation_function %s is not supported (accepted: \"gelu_new\", "
                          "\"gelu_pytorch_tanh\")",
                          path, cJSON_IsString(act) ? act->valuestring : "(not a string)");
        goto done;
    }
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(root, "n_inner");
    if (inner && !cJSON_IsNull(inner) &&
        !(cJSON_IsNumber(inner) && (int)inner->valuedouble == 4 * c->n_embd)) {
        st = ap_error_set(err, AP_ERR_INPUT, "%s: n_inner must be null or 4 * n_embd (%d)", path,
                          4 * c->n_embd);
        goto done;
    }
    if ((st = json_flag(root, "scale_attn_weights", 1, path, err)) ||
        (st = json_flag(root, "scale_attn_by_inverse_layer_idx", 0, path, err)) ||
        (st = json_flag(root, "add_cross_attention", 0, path, err)) ||
        (st = json_flag(root, "tie_word_embeddings", 1, path, err)))
        goto done;
    st = ap_config_validate(c, path, err);
done:
    cJSON_Delete(root);
    return st;
}

typedef enum { DT_F32, DT_F16, DT_BF16 } dtype;

static int parse_dtype(const char *s, dtype *d, size_t *size)
{
    if (strcmp(s, "F32") == 0) { *d = DT_F32; *size = 4; return 1; }
    if (strcmp(s, "F16") == 0) { *d = DT_F16; *size = 2; return 1; }
    if (strcmp(s, "BF16") == 0) { *d = DT_BF16; *size = 2; return 1; }
    return 0;
}

static void convert(const unsigned char *src, dtype d, size_t count, float *dst)
{
    for (size_t i = 0; i < count; i++) {
        if (d == DT_F32) {
            uint32_t bits = (uint32_t)src[4 * i] | (uint32_t)src[4 * i + 1] << 8 |
                            (uint32_t)src[4 * i + 2] << 16 | (uint32_t)src[4 * i + 3] << 24;
            memcpy(&dst[i], &bits, sizeof bits);
        } else {
            uint16_t h = (uint16_t)(src[2 * i] | src[2 * i + 1] << 8);
            dst[i] = d == DT_F16 ? ap_half_to_float(h) : ap_bf16_to_float(h);
        }
    }
}

/* Tensors the loader knows to skip: causal-mask buffers of older GPT-2
 * checkpoints and the LM head, which GPT-2 ties to wte. */
static int ignorable(const char *name)
{
    size_t n = strlen(name);
    return (n > 10 && strcmp(name + n - 10, ".attn.bias") == 0) ||
           (n > 17 && strcmp(name + n - 17, ".attn.masked_bias") == 0) ||
           strcmp(name, "lm_head.weight") == 0;
}

static const char *strip_prefix(const char *name)
{
    return strncmp(name, "transformer.", 12) == 0 ? name + 12 : name;
}

/* Checks the lm_head, when present, equals wte (a checkpoint with an untied
 * head would give other logits than we compute). Done after wte is read. */
static ap_status load_safetensors(const char *path, ap_model *m, ap_error *err)
{
    char *file = NULL;
    size_t size = 0;
    ap_status st = ap_read_file(path, &file, &size, err);
    if (st) return st;
    cJSON *header = NULL;
    ap_tensor_slot *slots = NULL;
    char *seen = NULL;
    const unsigned char *bytes = (const unsigned char *)file;
    if (size < 8) {
        st = ap_error_set(err, AP_ERR_INPUT, "%s: truncated: %zu bytes, a safetensors file starts "
                          "with an 8-byte header length", path, size);
        goto done;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | bytes[i];
    if (hlen > size - 8 || hlen > (100u << 20)) {
        st = ap_error_set(err, AP_ERR_INPUT,
                          "%s: header length %llu runs past the end of the file (%zu bytes)", path,
                          (unsigned long long)hlen, size);
        goto done;
    }
    header = cJSON_ParseWithLength(file + 8, (size_t)hlen);
    if (!header || !cJSON_IsObject(header)) {
        st = ap_error_set(err, AP_ERR_INPUT, "%s: header is not a JSON object", path);
        goto done;
    }
    const size_t data_start = 8 + (size_t)hlen, data_size = size - data_start;
    int n_slots = ap_model_slot_count(&m->config);
    slots = calloc((size_t)n_slots, sizeof *slots);
    seen = calloc((size_t)n_slots, 1);
    if (!slots || !seen) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        goto done;
    }
    ap_model_slots(m, slots);
    m->dtype[0] = '\0';
    const cJSON *t;
    cJSON_ArrayForEach(t, header)
    {
        const char *name = t->string;
        if (strcmp(name, "__metadata__") == 0) continue;
        if (!cJSON_IsObject(t)) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s: entry is not an object", path, name);
            goto done;
        }
        const cJSON *jd = cJSON_GetObjectItemCaseSensitive(t, "dtype");
        const cJSON *js = cJSON_GetObjectItemCaseSensitive(t, "shape");
        const cJSON *jo = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
        dtype d;
        size_t esize;
        if (!cJSON_IsString(jd) || !parse_dtype(jd->valuestring, &d, &esize)) {
            st = ap_error_set(err, AP_ERR_INPUT,
                              "%s: tensor %s: dtype %s is not supported (accepted: F32, F16, BF16)",
                              path, name, cJSON_IsString(jd) ? jd->valuestring : "(missing)");
            goto done;
        }
        if (!cJSON_IsArray(js) || cJSON_GetArraySize(js) > 4 || !cJSON_IsArray(jo) ||
            cJSON_GetArraySize(jo) != 2) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s: malformed shape or data_offsets",
                              path, name);
            goto done;
        }
        int64_t shape[4] = {0};
        int ndim = cJSON_GetArraySize(js);
        double count = 1;
        for (int i = 0; i < ndim; i++) {
            const cJSON *dim = cJSON_GetArrayItem(js, i);
            if (!cJSON_IsNumber(dim) || dim->valuedouble < 0 || dim->valuedouble > 1e12 ||
                dim->valuedouble != floor(dim->valuedouble)) {
                st = ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s: bad dimension in shape", path,
                                  name);
                goto done;
            }
            shape[i] = (int64_t)dim->valuedouble;
            count *= dim->valuedouble;
        }
        double b = cJSON_GetArrayItem(jo, 0)->valuedouble, e = cJSON_GetArrayItem(jo, 1)->valuedouble;
        if (!cJSON_IsNumber(cJSON_GetArrayItem(jo, 0)) || !cJSON_IsNumber(cJSON_GetArrayItem(jo, 1)) ||
            b < 0 || e < b || e > (double)data_size || b != floor(b) || e != floor(e)) {
            st = ap_error_set(err, AP_ERR_INPUT,
                              "%s: tensor %s: data_offsets [%.0f, %.0f] lie outside the %zu data "
                              "bytes of the file",
                              path, name, b, e, data_size);
            goto done;
        }
        if (e - b != count * (double)esize) {
            st = ap_error_set(err, AP_ERR_INPUT,
                              "%s: tensor %s: %.0f bytes of data for %.0f elements of %s", path, name,
                              e - b, count, jd->valuestring);
            goto done;
        }
        if (ignorable(name)) continue;
        const char *key = strip_prefix(name);
        int k = 0;
        while (k < n_slots && strcmp(slots[k].name, key) != 0) k++;
        if (k == n_slots) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s is not part of a GPT-2 with %d layers",
                              path, name, m->config.n_layer);
            goto done;
        }
        if (seen[k]) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s appears twice", path, name);
            goto done;
        }
        if (ndim != slots[k].ndim || shape[0] != slots[k].shape[0] ||
            (ndim == 2 && shape[1] != slots[k].shape[1])) {
            char want[64], got[96];
            snprintf(want, sizeof want, slots[k].ndim == 2 ? "[%lld, %lld]" : "[%lld]",
                     (long long)slots[k].shape[0], (long long)slots[k].shape[1]);
            int off = snprintf(got, sizeof got, "[");
            for (int i = 0; i < ndim && off < (int)sizeof got - 24; i++)
                off += snprintf(got + off, sizeof got - (size_t)off, i ? ", %lld" : "%lld",
                                (long long)shape[i]);
            snprintf(got + off, sizeof got - (size_t)off, "]");
            st = ap_error_set(err, AP_ERR_INPUT,
                              "%s: tensor %s has shape %s, config.json implies %s", path, name, got,
                              want);
            goto done;
        }
        convert(bytes + data_start + (size_t)b, d, (size_t)count, slots[k].dst);
        seen[k] = 1;
        if (!m->dtype[0]) snprintf(m->dtype, sizeof m->dtype, "%s", jd->valuestring);
    }
    for (int k = 0; k < n_slots; k++)
        if (!seen[k]) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s (or transformer.%s) is missing", path,
                              slots[k].name, slots[k].name);
            goto done;
        }
    ap_sha256_hex(file, size, m->sha256);
done:
    cJSON_Delete(header);
    free(slots);
    free(seen);
    free(file);
    return st;
}

ap_status ap_model_load_hf(const char *path, ap_model *m, ap_error *err)
{
    struct stat st_path;
    if (stat(path, &st_path) != 0)
        return ap_error_set(err, AP_ERR_INPUT,
                            "--model %s: %s (accepted: a model folder, a .safetensors file, an llm.c "
                            ".bin, random:SPEC)",
                            path, strerror(errno));
    char dir[1024], config[1100], weights[1100];
    if (S_ISDIR(st_path.st_mode)) {
        snprintf(dir, sizeof dir, "%s", path);
        snprintf(weights, sizeof weights, "%s/model.safetensors", dir);
    } else {
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0'; else snprintf(dir, sizeof dir, ".");
        snprintf(weights, sizeof weights, "%s", path);
    }
    snprintf(config, sizeof config, "%s/config.json", dir);
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    ap_status st = parse_config(config, &m->config, err);
    if (st) return st;
    if ((st = ap_model_alloc(m, err))) return st;
    return load_safetensors(weights, m, err);
}
