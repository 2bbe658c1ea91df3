/* trace_file.c — the reference trace's file, written and read one sample at
 * a time so that a trace larger than memory streams (docs/architecture.md).
 *
 * Safetensors with ids.<s>, attn.<s>.<l> [H, T, T], q/k/v/o.<s>.<l>
 * [H, T, D] and metadata: format attnprobe.trace/2, the model, the shapes,
 * the study's config, and xxh3.<s>: an XXH3-64 checksum of sample s's bytes
 * as stored (its tensors in file order), written once the sample is. A
 * reader checks each sample's checksum and its values (probability rows,
 * finite vectors) before handing it out, so a flipped bit is an error, not a
 * different number. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "tracer.h"

#define TRACE_FORMAT "attnprobe.trace/2"
enum { KINDS = 5 }; /* attn, q, k, v, o */
static const char *const KIND[KINDS] = {"attn", "q", "k", "v", "o"};

/* Fixed metadata keys before the per-sample checksums. */
enum { META_FIXED = 10 };

/* ---- writer ------------------------------------------------------------------ */

struct ap_trace_writer {
    ap_st_writer *st;
    int n_samples, n_layers, next;
    int n_meta;
    char **meta_keys, **meta_values; /* values of the checksums filled as samples are put */
};

static void writer_free(ap_trace_writer *w)
{
    for (int i = 0; i < w->n_meta; i++) {
        if (w->meta_keys) free(w->meta_keys[i]);
        if (w->meta_values) free(w->meta_values[i]);
    }
    free(w->meta_keys);
    free(w->meta_values);
    free(w);
}

static char *layers_text(const int *layers, int n)
{
    char *s = malloc((size_t)n * 12 + 1);
    if (!s) return NULL;
    size_t used = 0;
    s[0] = '\0';
    for (int l = 0; l < n; l++) used += (size_t)sprintf(s + used, l ? ",%d" : "%d", layers[l]);
    return s;
}

ap_status ap_trace_writer_open(const char *path, const ap_trace *like, const int *len, int n_samples,
                               ap_trace_writer **out, ap_error *err)
{
    *out = NULL;
    const int L = like->n_layers, H = like->n_head, D = like->head_dim;
    const int n_tensors = n_samples * (1 + KINDS * L);
    ap_trace_writer *w = calloc(1, sizeof *w);
    ap_st_out *t = calloc((size_t)n_tensors, sizeof *t);
    char (*names)[48] = calloc((size_t)n_tensors, sizeof *names);
    ap_status st = AP_OK;
    if (!w || !t || !names) goto oom;
    w->n_samples = n_samples;
    w->n_layers = L;
    w->n_meta = META_FIXED + n_samples;
    w->meta_keys = calloc((size_t)w->n_meta, sizeof *w->meta_keys);
    w->meta_values = calloc((size_t)w->n_meta, sizeof *w->meta_values);
    if (!w->meta_keys || !w->meta_values) goto oom;
    int n = 0;
    for (int s = 0; s < n_samples; s++) {
        snprintf(names[n], sizeof names[n], "ids.%d", s);
        t[n] = (ap_st_out){names[n], AP_DT_I32, 1, {len[s]}, NULL};
        n++;
        for (int l = 0; l < L; l++)
            for (int kind = 0; kind < KINDS; kind++) {
                snprintf(names[n], sizeof names[n], "%s.%d.%d", KIND[kind], s, like->layers[l]);
                t[n] = (ap_st_out){names[n], AP_DT_F32, 3, {H, len[s], kind ? D : len[s]}, NULL};
                n++;
            }
    }
    char shape[64], model_shape[64];
    snprintf(model_shape, sizeof model_shape, "%d,%d", like->model_n_layer, like->model_vocab);
    snprintf(shape, sizeof shape, "%d,%d,%d,%d", n_samples, L, H, D);
    char max_length[16];
    snprintf(max_length, sizeof max_length, "%d", like->max_length);
    const char *keys[META_FIXED] = {"format", "model", "model_sha256", "model_layers_vocab", "layers",
                                    "samples_layers_heads_dim", "model_dtype", "input", "input_sha256",
                                    "max_length"};
    char *layers = layers_text(like->layers, L);
    const char *vals[META_FIXED] = {TRACE_FORMAT, like->model_source, like->model_sha256, model_shape,
                                    layers ? layers : "", shape, like->model_dtype, like->input_source,
                                    like->input_sha256, max_length};
    for (int i = 0; i < META_FIXED; i++) {
        w->meta_keys[i] = strdup(keys[i]);
        w->meta_values[i] = strdup(vals[i]);
    }
    free(layers);
    for (int s = 0; s < n_samples; s++) {
        char key[32];
        snprintf(key, sizeof key, "xxh3.%d", s);
        w->meta_keys[META_FIXED + s] = strdup(key);
        w->meta_values[META_FIXED + s] = strdup("0000000000000000"); /* filled as s is put */
    }
    for (int i = 0; i < w->n_meta; i++)
        if (!w->meta_keys[i] || !w->meta_values[i]) goto oom;
    /* the config goes last, as one more pair */
    char **k2 = realloc(w->meta_keys, (size_t)(w->n_meta + 1) * sizeof *k2);
    if (k2) w->meta_keys = k2;
    char **v2 = k2 ? realloc(w->meta_values, (size_t)(w->n_meta + 1) * sizeof *v2) : NULL;
    if (v2) w->meta_values = v2;
    if (!k2 || !v2) goto oom;
    w->meta_keys[w->n_meta] = strdup("config");
    w->meta_values[w->n_meta] = strdup(like->config_json ? like->config_json : "{}");
    w->n_meta++;
    if (!w->meta_keys[w->n_meta - 1] || !w->meta_values[w->n_meta - 1]) goto oom;
    st = ap_st_writer_open(path, t, n, (const char *const *)w->meta_keys,
                           (const char *const *)w->meta_values, w->n_meta, &w->st, err);
    free(t);
    free(names);
    if (st) {
        writer_free(w);
        return st;
    }
    *out = w;
    return AP_OK;
oom:
    free(t);
    free(names);
    if (w) writer_free(w);
    return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for the trace file");
}

const char *ap_trace_writer_temp_path(const ap_trace_writer *w)
{
    return w ? ap_st_writer_temp_path(w->st) : NULL;
}

ap_status ap_trace_writer_add(ap_trace_writer *w, const ap_trace *batch, ap_error *err)
{
    if (w->next + batch->n_samples > w->n_samples || batch->n_layers != w->n_layers)
        return ap_error_set(err, AP_ERR_RUNTIME, "trace file: %d samples of %d layers do not fit "
                            "(%d of %d written)", batch->n_samples, batch->n_layers, w->next, w->n_samples);
    XXH3_state_t *h = XXH3_createState();
    if (!h) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    ap_status st = AP_OK;
    for (int b = 0; b < batch->n_samples && !st; b++) {
        const int T = batch->len[b], H = batch->n_head, D = batch->head_dim;
        XXH3_64bits_reset(h);
        XXH3_64bits_update(h, batch->ids[b], (size_t)T * sizeof(int));
        st = ap_st_writer_put(w->st, batch->ids[b], err);
        for (int l = 0; l < batch->n_layers && !st; l++) {
            const size_t i = (size_t)b * batch->n_layers + l;
            const float *data[KINDS] = {batch->attn[i], batch->q[i], batch->k[i], batch->v[i], batch->o[i]};
            for (int kind = 0; kind < KINDS && !st; kind++) {
                const size_t count = (size_t)H * T * (kind ? D : T);
                XXH3_64bits_update(h, data[kind], count * sizeof(float));
                st = ap_st_writer_put(w->st, data[kind], err);
            }
        }
        char *value = w->meta_values[META_FIXED + w->next];
        snprintf(value, 17, "%016llx", (unsigned long long)XXH3_64bits_digest(h));
        w->next++;
    }
    XXH3_freeState(h);
    return st;
}

ap_status ap_trace_writer_close(ap_trace_writer *w, int ok, ap_error *err)
{
    if (!w) return AP_OK;
    ok = ok && w->next == w->n_samples;
    ap_status st = ap_st_writer_close(w->st, (const char *const *)w->meta_values, ok, err);
    if (!ok && !st)
        st = ap_error_set(err, AP_ERR_RUNTIME, "trace file: %d of %d samples written", w->next, w->n_samples);
    writer_free(w);
    return st;
}

ap_status ap_trace_save(const ap_trace *trace, const char *path, ap_error *err)
{
    ap_trace_writer *w;
    ap_status st = ap_trace_writer_open(path, trace, trace->len, trace->n_samples, &w, err);
    if (st) return st;
    st = ap_trace_writer_add(w, trace, err);
    ap_status close_st = ap_trace_writer_close(w, !st, st ? NULL : err);
    return st ? st : close_st;
}

/* ---- reader ------------------------------------------------------------------ */

struct ap_trace_reader {
    ap_st_file *f;
    ap_trace info; /* shapes, lengths and model; no tensors */
};

void ap_trace_reader_close(ap_trace_reader *r)
{
    if (!r) return;
    ap_st_close(r->f);
    ap_trace_free(&r->info);
    free(r);
}

const ap_trace *ap_trace_reader_info(const ap_trace_reader *r) { return &r->info; }

static ap_status parse_layers(const char *path, const char *text, int *layers, int L, ap_error *err)
{
    const char *p = text;
    for (int l = 0; l < L; l++) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 1000000 || (*end != ',' && *end != '\0') || (*end == '\0' && l != L - 1))
            return ap_error_set(err, AP_ERR_INPUT, "%s: metadata layers \"%s\" does not list %d layers",
                                path, text, L);
        layers[l] = (int)v;
        p = end + 1;
    }
    return AP_OK;
}

ap_status ap_trace_reader_open(const char *path, ap_trace_reader **out, ap_error *err)
{
    *out = NULL;
    ap_trace_reader *r = calloc(1, sizeof *r);
    if (!r) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    ap_status st = ap_st_open(path, &r->f, err);
    if (st) {
        free(r);
        return st;
    }
    ap_st_file *f = r->f;
    ap_trace *tr = &r->info;
    const char *format = ap_st_metadata(f, "format"), *shape = ap_st_metadata(f, "samples_layers_heads_dim");
    const char *layers = ap_st_metadata(f, "layers"), *ms = ap_st_metadata(f, "model_layers_vocab");
    int S, L, H, D;
    if (format && strcmp(format, "attnprobe.trace/1") == 0) {
        st = ap_error_set(err, AP_ERR_INPUT, "%s: a trace of an older attnprobe (attnprobe.trace/1, "
                          "no checksums); write it again with attnprobe trace --save", path);
        goto fail;
    }
    if (!format || strcmp(format, TRACE_FORMAT) != 0 || !shape || !layers ||
        sscanf(shape, "%d,%d,%d,%d", &S, &L, &H, &D) != 4 || S < 1 || L < 1 || H < 1 || D < 1 ||
        S > 10000000 || L > 100000 || H > 100000 || D > 65536 ||
        (int64_t)ap_st_count(f) != (int64_t)S * (1 + KINDS * (int64_t)L)) {
        st = ap_error_set(err, AP_ERR_INPUT, "%s: not an attnprobe trace (metadata format "
                          TRACE_FORMAT " with shapes and one tensor per sample, layer and kind "
                          "expected; write one with attnprobe trace --save)", path);
        goto fail;
    }
    tr->n_samples = S;
    tr->n_layers = L;
    tr->n_head = H;
    tr->head_dim = D;
    tr->layers = calloc((size_t)L, sizeof *tr->layers);
    tr->len = calloc((size_t)S, sizeof *tr->len);
    if (!tr->layers || !tr->len) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        goto fail;
    }
    if (!ms || sscanf(ms, "%d,%d", &tr->model_n_layer, &tr->model_vocab) != 2) {
        st = ap_error_set(err, AP_ERR_INPUT, "%s: metadata model_layers_vocab missing", path);
        goto fail;
    }
    if ((st = parse_layers(path, layers, tr->layers, L, err))) goto fail;
    const char *model = ap_st_metadata(f, "model"), *sha = ap_st_metadata(f, "model_sha256");
    const char *config = ap_st_metadata(f, "config"), *dtype = ap_st_metadata(f, "model_dtype");
    snprintf(tr->model_dtype, sizeof tr->model_dtype, "%s", dtype ? dtype : "");
    const char *input = ap_st_metadata(f, "input"), *input_sha = ap_st_metadata(f, "input_sha256");
    const char *max_length = ap_st_metadata(f, "max_length");
    snprintf(tr->input_source, sizeof tr->input_source, "%s", input ? input : "");
    snprintf(tr->input_sha256, sizeof tr->input_sha256, "%s", input_sha ? input_sha : "");
    tr->max_length = max_length ? atoi(max_length) : 0;
    snprintf(tr->model_source, sizeof tr->model_source, "%s", model ? model : "");
    snprintf(tr->model_sha256, sizeof tr->model_sha256, "%s", sha ? sha : "");
    tr->config_json = strdup(config ? config : "{}");
    /* the header holds every sample's checksum: its hash names the contents */
    ap_st_header_sha256(f, tr->file_sha256);
    for (int s = 0; s < S; s++) {
        char name[48];
        snprintf(name, sizeof name, "ids.%d", s);
        const ap_st_tensor *t = ap_st_find(f, name);
        if (!t || t->ndim != 1 || t->dtype != AP_DT_I32 || t->count < 1 || t->count > (1u << 20)) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s missing or not a 1-D I32 list of ids",
                              path, name);
            goto fail;
        }
        tr->len[s] = (int)t->count;
        snprintf(name, sizeof name, "xxh3.%d", s);
        const char *sum = ap_st_metadata(f, name);
        if (!sum || strlen(sum) != 16) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: metadata %s (sample %d's checksum) missing",
                              path, name, s);
            goto fail;
        }
    }
    *out = r;
    return AP_OK;
fail:
    ap_trace_reader_close(r);
    return st;
}

/* A stored tensor of sample s, layer index l, kind: exactly the expected shape. */
static ap_status find_tensor(const ap_trace_reader *r, int s, int l, int kind, const ap_st_tensor **out,
                             ap_error *err)
{
    const ap_trace *tr = &r->info;
    const int T = tr->len[s];
    char name[48];
    snprintf(name, sizeof name, "%s.%d.%d", KIND[kind], s, tr->layers[l]);
    const ap_st_tensor *t = ap_st_find(r->f, name);
    const int64_t want[3] = {tr->n_head, T, kind ? tr->head_dim : T};
    if (!t || t->dtype != AP_DT_F32 || t->ndim != 3 || t->shape[0] != want[0] || t->shape[1] != want[1] ||
        t->shape[2] != want[2])
        return ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s missing or not F32 [%lld, %lld, %lld]",
                            ap_st_path(r->f), name, (long long)want[0], (long long)want[1],
                            (long long)want[2]);
    *out = t;
    return AP_OK;
}

/* Rows of a probability tensor [H, T, T]: row t non-negative and finite over
 * 0..t, summing to 1 within 1e-4, zero past t. */
static ap_status check_rows(const ap_trace_reader *r, const float *attn, int s, int layer, int T,
                            ap_error *err)
{
    for (int h = 0; h < r->info.n_head; h++)
        for (int t = 0; t < T; t++) {
            const float *row = attn + ((size_t)h * T + t) * T;
            double sum = 0;
            for (int j = 0; j < T; j++) {
                const float x = row[j];
                if (!isfinite(x) || x < 0 || x > 1.0001f || (j > t && x != 0))
                    return ap_error_set(err, AP_ERR_INPUT, "%s: tensor attn.%d.%d, sample %d, layer %d, "
                                        "head %d, row %d: entry %d is %g (probabilities in [0, 1] "
                                        "over positions 0..%d, 0 after)", ap_st_path(r->f), s, layer,
                                        s, layer, h, t, j, (double)x, t);
                sum += x;
            }
            if (fabs(sum - 1.0) > 1e-4)
                return ap_error_set(err, AP_ERR_INPUT, "%s: tensor attn.%d.%d, sample %d, layer %d, head "
                                    "%d, row %d sums to %.6g, not 1", ap_st_path(r->f), s, layer, s,
                                    layer, h, t, sum);
        }
    return AP_OK;
}

static ap_status check_finite(const ap_trace_reader *r, const float *x, size_t n, const char *name,
                              ap_error *err)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s: element %zu is %g (finite values "
                                "expected)", ap_st_path(r->f), name, i, (double)x[i]);
    return AP_OK;
}

/* Sample s into slot b of batch: checksum first, then the values. */
static ap_status read_sample(ap_trace_reader *r, int s, ap_trace *batch, int b, ap_error *err)
{
    const ap_trace *tr = &r->info;
    const int T = tr->len[s], L = tr->n_layers;
    char name[48];
    snprintf(name, sizeof name, "ids.%d", s);
    const ap_st_tensor *ids = ap_st_find(r->f, name);
    const ap_st_tensor *t[KINDS];
    XXH3_state_t *h = XXH3_createState();
    if (!h) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    XXH3_64bits_reset(h);
    XXH3_64bits_update(h, ap_st_bytes(r->f, ids), ids->nbytes);
    ap_status st = AP_OK;
    for (int l = 0; l < L && !st; l++)
        for (int kind = 0; kind < KINDS && !st; kind++) {
            if ((st = find_tensor(r, s, l, kind, &t[kind], err))) break;
            XXH3_64bits_update(h, ap_st_bytes(r->f, t[kind]), t[kind]->nbytes);
        }
    char sum[17];
    snprintf(sum, sizeof sum, "%016llx", (unsigned long long)XXH3_64bits_digest(h));
    XXH3_freeState(h);
    if (st) return st;
    snprintf(name, sizeof name, "xxh3.%d", s);
    if (strcmp(sum, ap_st_metadata(r->f, name)) != 0)
        return ap_error_set(err, AP_ERR_INPUT, "%s: sample %d's data do not match its checksum "
                            "(%s, stored %s): the file is corrupt", ap_st_path(r->f), s, sum,
                            ap_st_metadata(r->f, name));
    batch->len[b] = T;
    if (!(batch->ids[b] = malloc((size_t)T * sizeof(int)))) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    if ((st = ap_st_read_i32(r->f, ids, batch->ids[b], err))) return st;
    for (int l = 0; l < L && !st; l++) {
        const size_t i = (size_t)b * L + l;
        float **dst[KINDS] = {&batch->attn[i], &batch->q[i], &batch->k[i], &batch->v[i], &batch->o[i]};
        for (int kind = 0; kind < KINDS && !st; kind++) {
            if ((st = find_tensor(r, s, l, kind, &t[kind], err))) break;
            if (!(*dst[kind] = malloc(t[kind]->count * sizeof(float))))
                return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
            if ((st = ap_st_read_f32(r->f, t[kind], *dst[kind], err))) break;
            ap_st_release(r->f, t[kind]);
            snprintf(name, sizeof name, "%s.%d.%d", KIND[kind], s, tr->layers[l]);
            st = kind ? check_finite(r, *dst[kind], t[kind]->count, name, err)
                      : check_rows(r, *dst[kind], s, tr->layers[l], T, err);
        }
    }
    return st;
}

ap_status ap_trace_reader_read(ap_trace_reader *r, int s0, int n, ap_trace *batch, ap_error *err)
{
    const ap_trace *tr = &r->info;
    if (s0 < 0 || n < 1 || s0 + n > tr->n_samples)
        return ap_error_set(err, AP_ERR_RUNTIME, "trace: samples %d..%d of %d asked", s0, s0 + n - 1,
                            tr->n_samples);
    ap_status st = ap_trace_alloc(batch, n, tr->n_layers, err);
    if (st) {
        ap_trace_free(batch);
        return st;
    }
    batch->n_head = tr->n_head;
    batch->head_dim = tr->head_dim;
    memcpy(batch->layers, tr->layers, (size_t)tr->n_layers * sizeof *tr->layers);
    memcpy(batch->model_source, tr->model_source, sizeof tr->model_source);
    memcpy(batch->model_sha256, tr->model_sha256, sizeof tr->model_sha256);
    memcpy(batch->file_sha256, tr->file_sha256, sizeof tr->file_sha256);
    batch->model_n_layer = tr->model_n_layer;
    batch->model_vocab = tr->model_vocab;
    memcpy(batch->model_dtype, tr->model_dtype, sizeof tr->model_dtype);
    for (int b = 0; b < n && !st; b++) st = read_sample(r, s0 + b, batch, b, err);
    if (st) ap_trace_free(batch);
    return st;
}

ap_status ap_trace_load(const char *path, ap_trace *out, ap_error *err)
{
    memset(out, 0, sizeof *out);
    ap_trace_reader *r;
    ap_status st = ap_trace_reader_open(path, &r, err);
    if (st) return st;
    st = ap_trace_reader_read(r, 0, r->info.n_samples, out, err);
    if (!st) out->config_json = strdup(r->info.config_json);
    ap_trace_reader_close(r);
    return st;
}
