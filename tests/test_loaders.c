/* test_loaders.c — every loader validates before it trusts: each broken
 * file gives its own clear error (naming the file and the tensor) and the
 * documented status, never a crash (this test also runs under ASan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/engine.h"
#include "testutil.h"

static char dir[256];
static ap_model *good;
static char st_path[512], cfg_path[512];
static char *st_bytes, *cfg_bytes;
static size_t st_size, cfg_size;

static int setup(void **state)
{
    (void)state;
    ap_error err;
    if (ap_model_load("random:L=2,H=2,D=16,V=40,T=24,seed=3", &good, &err)) return -1;
    const char *tmp = testutil_tmpdir("loaders");
    if (!tmp) return -1;
    snprintf(dir, sizeof dir, "%s", tmp);
    if (testutil_write_hf(good, dir, 1)) return -1;
    snprintf(st_path, sizeof st_path, "%s/model.safetensors", dir);
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    st_bytes = testutil_read_file(st_path, &st_size);
    cfg_bytes = testutil_read_file(cfg_path, &cfg_size);
    return st_bytes && cfg_bytes ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    free(st_bytes);
    free(cfg_bytes);
    ap_model_free(good);
    return 0;
}

/* Restores the good files before each case. */
static int restore(void **state)
{
    (void)state;
    return testutil_write_file(st_path, st_bytes, st_size) ||
           testutil_write_file(cfg_path, cfg_bytes, cfg_size);
}

/* Loads dir and expects status `want` with every needle in the message. */
static void expect_error(ap_status want, const char *needle1, const char *needle2)
{
    ap_model *m = NULL;
    ap_error err = {{0}};
    ap_status st = ap_model_load(dir, &m, &err);
    if (st != want) fail_msg("status %d (want %d): %s", st, want, err.msg);
    assert_null(m);
    if (needle1 && !strstr(err.msg, needle1)) fail_msg("'%s' not in: %s", needle1, err.msg);
    if (needle2 && !strstr(err.msg, needle2)) fail_msg("'%s' not in: %s", needle2, err.msg);
    print_message("  ok: %s\n", err.msg);
}

static void test_good_model_loads_same_weights(void **state)
{
    (void)state;
    ap_model *m;
    ap_error err;
    if (ap_model_load(dir, &m, &err)) fail_msg("%s", err.msg);
    assert_memory_equal(m->storage, good->storage, good->n_params * sizeof(float));
    assert_string_equal(m->dtype, "F32");
    ap_model_free(m);
}

static void test_unprefixed_names_load(void **state)
{
    (void)state;
    const char *d2 = testutil_tmpdir("unprefixed");
    assert_int_equal(testutil_write_hf(good, d2, 0), 0);
    ap_model *m;
    ap_error err;
    if (ap_model_load(d2, &m, &err)) fail_msg("%s", err.msg);
    assert_memory_equal(m->storage, good->storage, good->n_params * sizeof(float));
    ap_model_free(m);
}

static void write_st(const char *bytes, size_t n) { assert_int_equal(testutil_write_file(st_path, bytes, n), 0); }

static void test_truncated(void **state)
{
    (void)state;
    write_st(st_bytes, 5); /* too small for what config.json implies: refused before any allocation */
    expect_error(AP_ERR_INPUT, "model.safetensors", "cannot hold");
    write_st(st_bytes, st_size - 100); /* data cut short: offsets past the end */
    expect_error(AP_ERR_INPUT, "model.safetensors", "outside");
}

static void test_header_length_past_eof(void **state)
{
    (void)state;
    char *b = malloc(st_size);
    memcpy(b, st_bytes, st_size);
    uint64_t huge = (uint64_t)st_size * 4;
    memcpy(b, &huge, 8);
    write_st(b, st_size);
    expect_error(AP_ERR_INPUT, "header length", "past the end");
    free(b);
}

/* Replaces the first occurrence of `from` in the header by `to` (same length). */
static void patch_header(const char *from, const char *to)
{
    char *b = malloc(st_size + 1);
    memcpy(b, st_bytes, st_size);
    b[st_size] = '\0';
    char *p = strstr(b + 8, from);
    assert_non_null(p);
    assert_int_equal(strlen(from), strlen(to));
    memcpy(p, to, strlen(to));
    write_st(b, st_size);
    free(b);
}

static void test_unknown_dtype(void **state)
{
    (void)state;
    patch_header("\"F32\"", "\"Q4K\"");
    expect_error(AP_ERR_INPUT, "dtype Q4K", "accepted");
}

static void test_integer_weights_rejected(void **state)
{
    (void)state;
    patch_header("\"F32\"", "\"I32\"");
    expect_error(AP_ERR_INPUT, "not supported for weights", "transformer.");
}

static void test_offsets_outside(void **state)
{
    (void)state;
    /* the last tensor starts past 10000: make its start 9xxxx, beyond the data */
    char *b = malloc(st_size + 1);
    memcpy(b, st_bytes, st_size);
    b[st_size] = '\0';
    char *p = NULL, *q = b + 8;
    while ((q = strstr(q, "\"data_offsets\":[")) != NULL) p = q++;
    assert_non_null(p);
    p += strlen("\"data_offsets\":[");
    assert_true(strspn(p, "0123456789") == 5);
    p[0] = '9';
    write_st(b, st_size);
    free(b);
    expect_error(AP_ERR_INPUT, "data_offsets", "outside");
}

/* Two tensors whose data_offsets share bytes: refused, naming both. */
static void test_overlapping_tensors(void **state)
{
    (void)state;
    const char *header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}";
    const size_t hlen = strlen(header);
    char file[256];
    memset(file, 0, sizeof file);
    for (int i = 0; i < 8; i++) file[i] = (char)((uint64_t)hlen >> (8 * i));
    memcpy(file + 8, header, hlen);
    char path[300];
    snprintf(path, sizeof path, "%s/overlap.safetensors", dir);
    assert_int_equal(testutil_write_file(path, file, 8 + hlen + 12), 0);
    ap_st_file *f;
    ap_error err;
    assert_int_equal(ap_st_open(path, &f, &err), AP_ERR_INPUT);
    assert_non_null(strstr(err.msg, "overlap"));
    print_message("  ok: %s\n", err.msg);
    /* an overlap behind a zero-size tensor between the two */
    const char *hidden = "{\"a\":{\"dtype\":\"F32\",\"shape\":[25],\"data_offsets\":[0,100]},"
                         "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[40,40]},"
                         "\"c\":{\"dtype\":\"F32\",\"shape\":[5],\"data_offsets\":[60,80]}}";
    char big[512];
    const size_t hl = strlen(hidden);
    memset(big, 0, sizeof big);
    for (int i = 0; i < 8; i++) big[i] = (char)((uint64_t)hl >> (8 * i));
    memcpy(big + 8, hidden, hl);
    assert_int_equal(testutil_write_file(path, big, 8 + hl + 100), 0);
    assert_int_equal(ap_st_open(path, &f, &err), AP_ERR_INPUT);
    assert_non_null(strstr(err.msg, "tensors a and c overlap"));
    remove(path);
}

static void test_header_not_json(void **state)
{
    (void)state;
    patch_header("{", "[");
    expect_error(AP_ERR_INPUT, "header is not a JSON object", NULL);
}

static void write_cfg(const char *text) { assert_int_equal(testutil_write_file(cfg_path, text, strlen(text)), 0); }

static void test_shape_mismatch(void **state)
{
    (void)state;
    write_cfg("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"n_positions\": 24, \"vocab_size\": 41}");
    expect_error(AP_ERR_INPUT, "transformer.wte.weight", "config.json implies [41, 16]");
    write_cfg("{\"n_layer\": 3, \"n_head\": 2, \"n_embd\": 16, \"n_positions\": 24, \"vocab_size\": 40}");
    expect_error(AP_ERR_INPUT, "h.2.", "missing");
    write_cfg("{\"n_layer\": 1, \"n_head\": 2, \"n_embd\": 16, \"n_positions\": 24, \"vocab_size\": 40}");
    expect_error(AP_ERR_INPUT, "transformer.h.1.", "not part of a GPT-2 with 1 layers");
}

static void test_bad_config(void **state)
{
    (void)state;
    write_cfg("{\"n_layer\": 2, ");
    expect_error(AP_ERR_INPUT, "config.json", "not a JSON object");
    write_cfg("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"vocab_size\": 40}");
    expect_error(AP_ERR_INPUT, "config.json", "missing \"n_positions\"");
    write_cfg("{\"n_layer\": 2, \"n_head\": 3, \"n_embd\": 16, \"n_positions\": 24, \"vocab_size\": 40}");
    expect_error(AP_ERR_INPUT, "n_embd 16", "multiple of n_head 3");
    write_cfg("{\"n_layer\": -2, \"n_head\": 2, \"n_embd\": 16, \"n_positions\": 24, \"vocab_size\": 40}");
    expect_error(AP_ERR_INPUT, "n_layer", "non-negative integer");
    write_cfg("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"n_positions\": 24, \"vocab_size\": 40,"
              " \"activation_function\": \"relu\"}");
    expect_error(AP_ERR_INPUT, "activation_function relu", "gelu_new");
    write_cfg("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"n_positions\": 24, \"vocab_size\": 40,"
              " \"scale_attn_by_inverse_layer_idx\": true}");
    expect_error(AP_ERR_INPUT, "scale_attn_by_inverse_layer_idx", "not supported");
    /* a config far larger than the weights file: refused before allocating it */
    write_cfg("{\"n_layer\": 12, \"n_head\": 12, \"n_embd\": 1968, \"n_positions\": 1024, \"vocab_size\": 50257}");
    expect_error(AP_ERR_INPUT, "model.safetensors", "cannot hold");
    write_cfg("{\"model_type\": \"llama\", \"n_layer\": 2}");
    expect_error(AP_ERR_INPUT, "model_type llama", "gpt2");
    remove(cfg_path);
    expect_error(AP_ERR_INPUT, "config.json", "cannot open");
}

static void test_missing_model(void **state)
{
    (void)state;
    ap_model *m;
    ap_error err;
    assert_int_equal(ap_model_load("/no/such/model", &m, &err), AP_ERR_INPUT);
    assert_non_null(strstr(err.msg, "/no/such/model"));
    assert_non_null(strstr(err.msg, "random:SPEC"));
    assert_int_equal(ap_model_load("random:L=2,Q=3", &m, &err), AP_ERR_USAGE);
    assert_non_null(strstr(err.msg, "unknown key \"Q\""));
    assert_int_equal(ap_model_load("random:L=2,H=3,D=16", &m, &err), AP_ERR_USAGE);
    assert_non_null(strstr(err.msg, "multiple of n_head"));
    assert_int_equal(ap_model_load("random:L=x", &m, &err), AP_ERR_USAGE);
}

static void test_llmc(void **state)
{
    (void)state;
    char path[600];
    snprintf(path, sizeof path, "%s/model.bin", dir);
    ap_model *m;
    ap_error err;
    assert_int_equal(testutil_write_llmc(good, path, 3), 0);
    if (ap_model_load(path, &m, &err)) fail_msg("%s", err.msg);
    assert_memory_equal(m->storage, good->storage, good->n_params * sizeof(float));
    ap_model_free(m);
    size_t n;
    char *bin = testutil_read_file(path, &n);
    testutil_write_file(path, bin, 100);
    assert_int_equal(ap_model_load(path, &m, &err), AP_ERR_INPUT);
    assert_non_null(strstr(err.msg, "truncated llm.c header"));
    testutil_write_file(path, bin, n - 4);
    assert_int_equal(ap_model_load(path, &m, &err), AP_ERR_INPUT);
    assert_non_null(strstr(err.msg, "the header implies"));
    int32_t bad = 12345;
    memcpy(bin, &bad, 4);
    testutil_write_file(path, bin, n);
    assert_int_equal(ap_model_load(path, &m, &err), AP_ERR_INPUT);
    assert_non_null(strstr(err.msg, "bad magic 12345"));
    int32_t magic = 20240326, version = 4;
    memcpy(bin, &magic, 4);
    memcpy(bin + 4, &version, 4);
    testutil_write_file(path, bin, n);
    assert_int_equal(ap_model_load(path, &m, &err), AP_ERR_INPUT);
    assert_non_null(strstr(err.msg, "version 4"));
    int32_t layers = 1 << 30;
    version = 3;
    memcpy(bin + 4, &version, 4);
    memcpy(bin + 16, &layers, 4);
    testutil_write_file(path, bin, n);
    assert_int_equal(ap_model_load(path, &m, &err), AP_ERR_INPUT);
    assert_non_null(strstr(err.msg, "n_layer"));
    free(bin);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_good_model_loads_same_weights, restore),
        cmocka_unit_test_setup(test_unprefixed_names_load, restore),
        cmocka_unit_test_setup(test_truncated, restore),
        cmocka_unit_test_setup(test_header_length_past_eof, restore),
        cmocka_unit_test_setup(test_unknown_dtype, restore),
        cmocka_unit_test_setup(test_integer_weights_rejected, restore),
        cmocka_unit_test_setup(test_offsets_outside, restore),
        cmocka_unit_test_setup(test_header_not_json, restore),
        cmocka_unit_test(test_overlapping_tensors),
        cmocka_unit_test_setup(test_shape_mismatch, restore),
        cmocka_unit_test_setup(test_bad_config, restore),
        cmocka_unit_test_setup(test_missing_model, restore),
        cmocka_unit_test_setup(test_llmc, restore),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
