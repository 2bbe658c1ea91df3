/* safetensors.c — see safetensors.h. Nothing in a file is trusted before it
 * is checked against the file size. */
#define _DEFAULT_SOURCE /* madvise */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include "../common/atomic_file.h"
#include "model_internal.h"
#include "strmap.h"

enum { MAX_HEADER = 100 << 20 };

struct ap_st_file {
    char *data;          /* whole file: mapped (mapped = 1) or read */
    size_t size;
    int mapped;
    size_t header_bytes; /* 8 + the header's length */
    cJSON *header;
    ap_st_tensor *tensors;
    int n;
    ap_strmap by_name;   /* tensor name -> index: a trace holds tens of thousands */
    int by_name_ready;
    char sha256[65];     /* "" until ap_st_sha256 is first asked */
    char path[1024];
};

/* Maps a regular file read-only, so that a file larger than memory can be
 * read tensor by tensor (pages come in as they are read and can be released,
 * ap_st_release); anything else (a pipe, an empty file) is read whole. */
static ap_status map_file(ap_st_file *f, const char *path, ap_error *err)
{
    int fd = open(path, O_RDONLY);
    struct stat sb;
    if (fd >= 0 && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size > 0) {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
        if (p == MAP_FAILED)
            return ap_error_set(err, AP_ERR_INPUT, "%s: cannot map: %s", path, strerror(errno));
        f->data = p;
        f->size = (size_t)sb.st_size;
        f->mapped = 1;
        return AP_OK;
    }
    if (fd >= 0) close(fd);
    return ap_read_file(path, &f->data, &f->size, err);
}

static const struct { const char *name; ap_dtype d; size_t size; } DTYPES[] = {
    {"F32", AP_DT_F32, 4}, {"F16", AP_DT_F16, 2}, {"BF16", AP_DT_BF16, 2},
    {"I32", AP_DT_I32, 4}, {"I64", AP_DT_I64, 8},
};

const char *ap_dtype_name(ap_dtype d)
{
    for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
        if (DTYPES[i].d == d) return DTYPES[i].name;
    return "?";
}

static size_t dtype_size(ap_dtype d)
{
    for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
        if (DTYPES[i].d == d) return DTYPES[i].size;
    return 0;
}

void ap_st_close(ap_st_file *f)
{
    if (!f) return;
    cJSON_Delete(f->header);
    free(f->tensors);
    if (f->by_name_ready) ap_strmap_free(&f->by_name);
    if (f->mapped)
        munmap(f->data, f->size);
    else
        free(f->data);
    free(f);
}

/* Validates one header entry and fills t. */
static ap_status parse_entry(const ap_st_file *f, const cJSON *e, size_t data_start,
                             ap_st_tensor *t, ap_error *err)
{
    const char *path = f->path, *name = e->string;
    if (!cJSON_IsObject(e))
        return ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s: entry is not an object", path, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    size_t k = 0, n_dtypes = sizeof DTYPES / sizeof DTYPES[0];
    while (k < n_dtypes && !(cJSON_IsString(jd) && strcmp(jd->valuestring, DTYPES[k].name) == 0)) k++;
    if (k == n_dtypes)
        return ap_error_set(err, AP_ERR_INPUT,
                            "%s: tensor %s: dtype %s is not supported (accepted: F32, F16, BF16, "
                            "I32, I64)",
                            path, name, cJSON_IsString(jd) ? jd->valuestring : "(missing)");
    if (!cJSON_IsArray(js) || cJSON_GetArraySize(js) > 8 || !cJSON_IsArray(jo) ||
        cJSON_GetArraySize(jo) != 2)
        return ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s: malformed shape or data_offsets", path,
                            name);
    t->name = name;
    t->dtype = DTYPES[k].d;
    t->ndim = cJSON_GetArraySize(js);
    double count = 1;
    for (int i = 0; i < t->ndim; i++) {
        const cJSON *dim = cJSON_GetArrayItem(js, i);
        if (!cJSON_IsNumber(dim) || dim->valuedouble < 0 || dim->valuedouble > 1e12 ||
            dim->valuedouble != floor(dim->valuedouble))
            return ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s: dimension %d is not a "
                                "non-negative integer", path, name, i);
        t->shape[i] = (int64_t)dim->valuedouble;
        count *= dim->valuedouble;
    }
    const cJSON *jb = cJSON_GetArrayItem(jo, 0), *je = cJSON_GetArrayItem(jo, 1);
    if (!cJSON_IsNumber(jb) || !cJSON_IsNumber(je))
        return ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s: data_offsets are not numbers", path,
                            name);
    double b = jb->valuedouble, end = je->valuedouble, data_size = (double)(f->size - data_start);
    if (b < 0 || end < b || end > data_size || b != floor(b) || end != floor(end))
        return ap_error_set(err, AP_ERR_INPUT,
                            "%s: tensor %s: data_offsets [%.0f, %.0f] lie outside the %.0f data "
                            "bytes of the file",
                            path, name, b, end, data_size);
    if (end - b != count * (double)DTYPES[k].size)
        return ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s: %.0f bytes of data for %.0f "
                            "elements of %s", path, name, end - b, count, DTYPES[k].name);
    t->count = (size_t)count;
    t->offset = data_start + (size_t)b;
    t->nbytes = (size_t)(end - b);
    return AP_OK;
}

static int by_offset(const void *a, const void *b)
{
    const ap_st_tensor *x = *(const ap_st_tensor *const *)a, *y = *(const ap_st_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* No two tensors share a byte: a file whose offsets overlap would make two
 * tensors read each other's data. */
static ap_status check_disjoint(const ap_st_file *f, ap_error *err)
{
    if (f->n < 2) return AP_OK;
    const ap_st_tensor **order = malloc((size_t)f->n * sizeof *order);
    if (!order) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    for (int i = 0; i < f->n; i++) order[i] = &f->tensors[i];
    qsort(order, (size_t)f->n, sizeof *order, by_offset);
    ap_status st = AP_OK;
    const ap_st_tensor *reach = order[0]; /* the tensor reaching furthest so far */
    for (int i = 1; i < f->n && !st; i++) {
        if (order[i]->nbytes > 0 && reach->offset + reach->nbytes > order[i]->offset)
            st = ap_error_set(err, AP_ERR_INPUT, "%s: tensors %s and %s overlap (data_offsets)", f->path,
                              reach->name, order[i]->name);
        if (order[i]->offset + order[i]->nbytes > reach->offset + reach->nbytes) reach = order[i];
    }
    free(order);
    return st;
}

ap_status ap_st_open(const char *path, ap_st_file **out, ap_error *err)
{
    *out = NULL;
    ap_st_file *f = calloc(1, sizeof *f);
    if (!f) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    snprintf(f->path, sizeof f->path, "%s", path);
    ap_status st = map_file(f, path, err);
    if (st) goto fail;
    const unsigned char *bytes = (const unsigned char *)f->data;
    if (f->size < 8) {
        st = ap_error_set(err, AP_ERR_INPUT, "%s: truncated: %zu bytes, a safetensors file starts "
                          "with an 8-byte header length", path, f->size);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | bytes[i];
    if (hlen > f->size - 8 || hlen > MAX_HEADER) {
        st = ap_error_set(err, AP_ERR_INPUT,
                          "%s: header length %llu runs past the end of the file (%zu bytes)", path,
                          (unsigned long long)hlen, f->size);
        goto fail;
    }
    f->header = cJSON_ParseWithLength(f->data + 8, (size_t)hlen);
    if (!f->header || !cJSON_IsObject(f->header)) {
        st = ap_error_set(err, AP_ERR_INPUT, "%s: header is not a JSON object", path);
        goto fail;
    }
    int n_items = cJSON_GetArraySize(f->header);
    f->tensors = calloc((size_t)n_items + 1, sizeof *f->tensors);
    if (!f->tensors || ap_strmap_init(&f->by_name, (size_t)n_items + 1) != 0) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        goto fail;
    }
    f->by_name_ready = 1;
    const cJSON *e;
    cJSON_ArrayForEach(e, f->header)
    {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(e)) {
                st = ap_error_set(err, AP_ERR_INPUT, "%s: __metadata__ is not an object", path);
                goto fail;
            }
            continue;
        }
        if ((st = parse_entry(f, e, 8 + (size_t)hlen, &f->tensors[f->n], err))) goto fail;
        int seen;
        if (ap_strmap_get(&f->by_name, e->string, strlen(e->string), &seen)) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s appears twice", path, e->string);
            goto fail;
        }
        if (ap_strmap_put(&f->by_name, e->string, strlen(e->string), f->n) != 0) {
            st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
            goto fail;
        }
        f->n++;
    }
    if ((st = check_disjoint(f, err))) goto fail;
    f->header_bytes = 8 + (size_t)hlen;
    *out = f;
    return AP_OK;
fail:
    ap_st_close(f);
    return st;
}

int ap_st_count(const ap_st_file *f) { return f->n; }
const ap_st_tensor *ap_st_at(const ap_st_file *f, int i) { return &f->tensors[i]; }
const char *ap_st_sha256(const ap_st_file *f)
{
    ap_st_file *mut = (ap_st_file *)f; /* a cache: hashing a large file costs a full read */
    if (!f->sha256[0]) ap_sha256_hex(f->data, f->size, mut->sha256);
    return f->sha256;
}

void ap_st_header_sha256(const ap_st_file *f, char out[65]) { ap_sha256_hex(f->data, f->header_bytes, out); }

const void *ap_st_bytes(const ap_st_file *f, const ap_st_tensor *t) { return f->data + t->offset; }

void ap_st_release(const ap_st_file *f, const ap_st_tensor *t)
{
    if (!f->mapped) return;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t lo = (t->offset + page - 1) / page * page, hi = (t->offset + t->nbytes) / page * page;
    if (hi > lo) madvise(f->data + lo, hi - lo, MADV_DONTNEED);
}
const char *ap_st_path(const ap_st_file *f) { return f->path; }

const ap_st_tensor *ap_st_find(const ap_st_file *f, const char *name)
{
    int i;
    return f->by_name_ready && ap_strmap_get(&f->by_name, name, strlen(name), &i) ? &f->tensors[i] : NULL;
}

const char *ap_st_metadata(const ap_st_file *f, const char *key)
{
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(f->header, "__metadata__");
    const cJSON *v = meta ? cJSON_GetObjectItemCaseSensitive(meta, key) : NULL;
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

ap_status ap_st_read_f32(const ap_st_file *f, const ap_st_tensor *t, float *dst, ap_error *err)
{
    const unsigned char *src = (const unsigned char *)f->data + t->offset;
    for (size_t i = 0; i < t->count; i++) {
        switch (t->dtype) {
        case AP_DT_F32: {
            uint32_t bits = le32(src + 4 * i);
            memcpy(&dst[i], &bits, sizeof bits);
            break;
        }
        case AP_DT_F16: dst[i] = ap_half_to_float((uint16_t)(src[2 * i] | src[2 * i + 1] << 8)); break;
        case AP_DT_BF16: dst[i] = ap_bf16_to_float((uint16_t)(src[2 * i] | src[2 * i + 1] << 8)); break;
        default:
            return ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s is %s, a float type is needed",
                                f->path, t->name, ap_dtype_name(t->dtype));
        }
    }
    return AP_OK;
}

ap_status ap_st_read_i32(const ap_st_file *f, const ap_st_tensor *t, int *dst, ap_error *err)
{
    const unsigned char *src = (const unsigned char *)f->data + t->offset;
    for (size_t i = 0; i < t->count; i++) {
        if (t->dtype == AP_DT_I32) {
            dst[i] = (int)(int32_t)le32(src + 4 * i);
        } else if (t->dtype == AP_DT_I64) {
            uint64_t v = (uint64_t)le32(src + 8 * i) | (uint64_t)le32(src + 8 * i + 4) << 32;
            if ((int64_t)v < INT32_MIN || (int64_t)v > INT32_MAX)
                return ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s: value %lld does not fit int32",
                                    f->path, t->name, (long long)(int64_t)v);
            dst[i] = (int)(int64_t)v;
        } else {
            return ap_error_set(err, AP_ERR_INPUT, "%s: tensor %s is %s, an integer type is needed",
                                f->path, t->name, ap_dtype_name(t->dtype));
        }
    }
    return AP_OK;
}

static size_t tensor_bytes(const ap_st_out *t)
{
    size_t n = dtype_size(t->dtype);
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    return n;
}

/* The header: tensors' names, dtypes, shapes and offsets, and the metadata. */
static char *header_json(const ap_st_out *tensors, int n, const char *const *meta_keys,
                         const char *const *meta_values, int n_meta)
{
    cJSON *header = cJSON_CreateObject();
    if (!header) return NULL;
    if (n_meta > 0) {
        cJSON *meta = cJSON_AddObjectToObject(header, "__metadata__");
        for (int i = 0; meta && i < n_meta; i++) cJSON_AddStringToObject(meta, meta_keys[i], meta_values[i]);
    }
    size_t offset = 0;
    for (int i = 0; i < n; i++) {
        cJSON *e = cJSON_AddObjectToObject(header, tensors[i].name);
        cJSON *shape = cJSON_CreateArray();
        cJSON *offs = cJSON_CreateArray();
        if (!e || !shape || !offs) {
            cJSON_Delete(shape);
            cJSON_Delete(offs);
            cJSON_Delete(header);
            return NULL;
        }
        cJSON_AddStringToObject(e, "dtype", ap_dtype_name(tensors[i].dtype));
        for (int d = 0; d < tensors[i].ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)tensors[i].shape[d]));
        cJSON_AddItemToObject(e, "shape", shape);
        size_t nb = tensor_bytes(&tensors[i]);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(offset + nb)));
        cJSON_AddItemToObject(e, "data_offsets", offs);
        offset += nb;
    }
    char *json = cJSON_PrintUnformatted(header);
    cJSON_Delete(header);
    return json;
}

struct ap_st_writer {
    FILE *out;
    char *tmp;
    char *path;
    ap_st_out *tensors; /* names copied */
    int n, next;
    const char **meta_keys;
    int n_meta;
    size_t header_len; /* JSON bytes, before padding */
    int ok;
};

static void writer_free(ap_st_writer *w)
{
    for (int i = 0; w->tensors && i < w->n; i++) free((char *)w->tensors[i].name);
    for (int i = 0; w->meta_keys && i < w->n_meta; i++) free((char *)w->meta_keys[i]);
    free(w->tensors);
    free(w->meta_keys);
    free(w->tmp);
    free(w->path);
    free(w);
}

/* Writes the 8-byte length and the header padded to 8 bytes. */
static int put_header(FILE *out, const char *json, size_t padded)
{
    const size_t hlen = strlen(json);
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(len, 1, 8, out) == 8 && fwrite(json, 1, hlen, out) == hlen;
    for (size_t i = hlen; ok && i < padded; i++) ok = fputc(' ', out) != EOF;
    return ok;
}

ap_status ap_st_writer_open(const char *path, const ap_st_out *tensors, int n,
                            const char *const *meta_keys, const char *const *meta_values, int n_meta,
                            ap_st_writer **out, ap_error *err)
{
    *out = NULL;
    ap_st_writer *w = calloc(1, sizeof *w);
    if (!w) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    w->n = n;
    w->n_meta = n_meta;
    w->tensors = calloc((size_t)(n > 0 ? n : 1), sizeof *w->tensors);
    w->meta_keys = calloc((size_t)(n_meta > 0 ? n_meta : 1), sizeof *w->meta_keys);
    w->path = strdup(path);
    w->tmp = malloc(strlen(path) + 32);
    int ok = w->tensors && w->meta_keys && w->path && w->tmp;
    for (int i = 0; ok && i < n; i++) {
        w->tensors[i] = tensors[i];
        ok = (w->tensors[i].name = strdup(tensors[i].name)) != NULL;
    }
    for (int i = 0; ok && i < n_meta; i++) ok = (w->meta_keys[i] = strdup(meta_keys[i])) != NULL;
    char *json = ok ? header_json(tensors, n, meta_keys, meta_values, n_meta) : NULL;
    if (!json) {
        writer_free(w);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    }
    w->header_len = strlen(json);
    ap_status st = ap_atomic_begin(path, w->tmp, strlen(path) + 32, &w->out, err);
    if (st) {
        free(json);
        writer_free(w);
        return st;
    }
    w->ok = put_header(w->out, json, (w->header_len + 7) / 8 * 8); /* 8-byte aligned data */
    free(json);
    *out = w;
    return AP_OK;
}

ap_status ap_st_writer_put(ap_st_writer *w, const void *data, ap_error *err)
{
    if (w->next >= w->n)
        return ap_error_set(err, AP_ERR_RUNTIME, "%s: more tensors than announced (%d)", w->path, w->n);
    /* Data are written in the host's byte order; attnprobe targets little-endian hosts. */
    const size_t nb = tensor_bytes(&w->tensors[w->next++]);
    if (w->ok) w->ok = fwrite(data, 1, nb, w->out) == nb;
    if (!w->ok) return ap_error_set(err, AP_ERR_RUNTIME, "%s: write failed: %s", w->tmp, strerror(errno));
    return AP_OK;
}

const char *ap_st_writer_temp_path(const ap_st_writer *w) { return w->tmp; }

ap_status ap_st_writer_close(ap_st_writer *w, const char *const *meta_values, int ok, ap_error *err)
{
    if (!w) return AP_OK;
    ok = ok && w->ok && w->next == w->n;
    if (ok && meta_values) { /* the final metadata, in the space the first took */
        char *json = header_json(w->tensors, w->n, w->meta_keys, meta_values, w->n_meta);
        ok = json && strlen(json) == w->header_len && fseek(w->out, 0, SEEK_SET) == 0 &&
             put_header(w->out, json, (w->header_len + 7) / 8 * 8);
        free(json);
    }
    ap_status st = ap_atomic_end(w->out, w->tmp, w->path, ok, err);
    writer_free(w);
    return st;
}

ap_status ap_st_write(const char *path, const ap_st_out *tensors, int n,
                      const char *const *meta_keys, const char *const *meta_values, int n_meta,
                      ap_error *err)
{
    ap_st_writer *w;
    ap_status st = ap_st_writer_open(path, tensors, n, meta_keys, meta_values, n_meta, &w, err);
    for (int i = 0; !st && i < n; i++) st = ap_st_writer_put(w, tensors[i].data, err);
    if (st) {
        ap_st_writer_close(w, NULL, 0, NULL);
        return st;
    }
    return ap_st_writer_close(w, NULL, 1, err);
}
