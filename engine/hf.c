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

ap_status ap_read_json_object(const char *path, const char *what, void **out, ap_error *err)
{
    char *text;
    size_t n;
    ap_status st = ap_read_file(path, &text, &n, err);
    if (st) return st;
    cJSON *root = cJSON_ParseWithLength(text, n);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ap_error_set(err, AP_ERR_INPUT, "%s: not a JSON object%s", path, what);
    }
    *out = root;
    return AP_OK;
}

static ap_status parse_config(const char *path, ap_config *c, ap_error *err)
{
    void *parsed = NULL;
    ap_status st = ap_read_json_object(path, "", &parsed, err);
    if (st) return st;
    cJSON *root = parsed;
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

/* Tensors the loader knows to skip: causal-mask buffers of older GPT-2
 * checkpoints and the LM head, which GPT-2 ties to wte (config.json's
 * tie_word_embeddings is checked to be true). */
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

static void shape_text(char *buf, size_t size, int ndim, const int64_t *shape)
{
    int off = snprintf(buf, size, "[");
    for (int i = 0; i < ndim && off < (int)size - 24; i++)
        off += snprintf(buf + off, size - (size_t)off, i ? ", %lld" : "%lld", (long long)shape[i]);
    snprintf(buf + off, size - (size_t)off, "]");
}

/* Matches every tensor of the file to a parameter of the config and converts it. */
static ap_status load_safetensors(const char *path, ap_model *m, ap_error *err)
{
    ap_st_file *f;
    ap_status st = ap_st_open(path, &f, err);
    if (st) return st;
    int n_slots = ap_model_slot_count(&m->config);
    ap_tensor_slot *slots = calloc((size_t)n_slots, sizeof *slots);
    char *seen = calloc((size_t)n_slots, 1);
    if (!slots || !seen) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        goto done;
    }
    ap_model_slots(m, slots);
    m->dtype[0] = '\0';
    for (int i = 0; i < ap_st_count(f); i++) {
        const ap_st_tensor *t = ap_st_at(f, i);
        if (ignorable(t->name)) continue;
        if (t->dtype != AP_DT_F32 && t->dtype != AP_DT_F16 && t->dtype != AP_DT_BF16) {
            st = ap_error_set(err, AP_ERR_INPUT,
                              "%s: tensor %s: dtype %s is not supported for weights (accepted: F32, "
                              "F16, BF16)", path, t->name, ap_dtype_name(t->dtype));
            goto done;
        }
        const char *key = strip_prefix(t->name);
        int k = 0;
        while (k < n_slots && strcmp(slots[k].name, key) != 0) k++;
        if (k == n_slots) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s is not part of a GPT-2 with %d layers",
                              path, t->name, m->config.n_layer);
            goto done;
        }
        if (seen[k]) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s appears twice (with and without the "
                              "transformer. prefix)", path, t->name);
            goto done;
        }
        if (t->ndim != slots[k].ndim || t->shape[0] != slots[k].shape[0] ||
            (t->ndim == 2 && t->shape[1] != slots[k].shape[1])) {
            char want[64], got[96];
            shape_text(want, sizeof want, slots[k].ndim, slots[k].shape);
            shape_text(got, sizeof got, t->ndim, t->shape);
            st = ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s has shape %s, config.json implies %s",
                              path, t->name, got, want);
            goto done;
        }
        if ((st = ap_st_read_f32(f, t, slots[k].dst, err))) goto done;
        seen[k] = 1;
        if (!m->dtype[0]) snprintf(m->dtype, sizeof m->dtype, "%s", ap_dtype_name(t->dtype));
    }
    for (int k = 0; k < n_slots; k++)
        if (!seen[k]) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s (or transformer.%s) is missing", path,
                              slots[k].name, slots[k].name);
            goto done;
        }
    snprintf(m->sha256, sizeof m->sha256, "%s", ap_st_sha256(f));
done:
    free(slots);
    free(seen);
    ap_st_close(f);
    return st;
}

ap_status ap_model_load_hf(const char *path, ap_model *m, ap_error *err)
{
    struct stat st_path;
    if (stat(path, &st_path) != 0)
        return ap_error_set(err, AP_ERR_INPUT,
                            "model %s: %s (accepted: a model folder, a .safetensors file, an llm.c "
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
    /* Before allocating what config.json implies: the weights file must be
     * able to hold it (2 bytes a parameter at the least, F16/BF16), so a
     * config that does not belong to the file fails at once. */
    struct stat st_weights;
    const size_t count = ap_model_param_count(&m->config);
    if (stat(weights, &st_weights) == 0 && S_ISREG(st_weights.st_mode) &&
        (size_t)st_weights.st_size / 2 < count)
        return ap_error_set(err, AP_ERR_INPUT, "%s: %lld bytes cannot hold the %zu parameters %s implies "
                            "(at least %zu bytes in F16)", weights, (long long)st_weights.st_size, count,
                            config, 2 * count);
    if ((st = ap_model_alloc(m, err))) return st;
    return load_safetensors(weights, m, err);
}
