/* test_tokenizer.c — GPT-2 BPE against tokenizers.ByteLevelBPETokenizer
 * (tests/fixtures/tokenizer/reference.json from tools/make_fixtures.py):
 * adversarial strings id for id, the optional large corpus (the team's
 * shared data folder, skipped with a message when absent) by count and
 * sha256 of the ids, and decode(encode(x)) == x. The vocabulary itself is a
 * fixture (tests/fixtures/gpt2-tokenizer, MIT). */
#include <cjson/cJSON.h>
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

#define GPT2_TOK AP_FIXTURES "/gpt2-tokenizer"

static ap_tokenizer *tok;
static cJSON *ref;

static int setup(void **state)
{
    (void)state;
    ap_error err;
    if (ap_tokenizer_load_dir(GPT2_TOK, &tok, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    size_t n;
    char *text = testutil_read_file(AP_FIXTURES "/tokenizer/reference.json", &n);
    if (!text) return -1;
    ref = cJSON_Parse(text);
    free(text);
    return ref ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    ap_tokenizer_free(tok);
    cJSON_Delete(ref);
    return 0;
}

static size_t unhex(const char *hex, char *out)
{
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (char)v;
    }
    return n;
}

static void test_adversarial_strings(void **state)
{
    (void)state;
    const cJSON *strings = cJSON_GetObjectItem(ref, "strings"), *s;
    int checked = 0;
    cJSON_ArrayForEach(s, strings)
    {
        const char *hex = cJSON_GetObjectItem(s, "text_hex")->valuestring;
        char *text = malloc(strlen(hex) / 2 + 1);
        size_t n = unhex(hex, text);
        int *ids;
        size_t n_ids;
        ap_error err;
        if (ap_tokenizer_encode(tok, text, n, &ids, &n_ids, &err)) fail_msg("%s", err.msg);
        const cJSON *want = cJSON_GetObjectItem(s, "ids");
        if ((int)n_ids != cJSON_GetArraySize(want))
            fail_msg("text %s: %zu ids, reference has %d", hex, n_ids, cJSON_GetArraySize(want));
        for (size_t i = 0; i < n_ids; i++)
            if (ids[i] != cJSON_GetArrayItem(want, (int)i)->valueint)
                fail_msg("text %s: id %zu is %d, reference %d", hex, i, ids[i],
                         cJSON_GetArrayItem(want, (int)i)->valueint);
        /* Valid UTF-8 round-trips exactly; invalid input decodes to its U+FFFD form. */
        if (!cJSON_IsTrue(cJSON_GetObjectItem(s, "invalid_utf8"))) {
            char *back;
            size_t n_back;
            if (ap_tokenizer_decode(tok, ids, n_ids, &back, &n_back, &err)) fail_msg("%s", err.msg);
            assert_int_equal(n_back, n);
            assert_memory_equal(back, text, n);
            free(back);
        }
        free(ids);
        free(text);
        checked++;
    }
    print_message("%d strings identical to tokenizers\n", checked);
    assert_true(checked >= 40);
}

static void test_corpus_files(void **state)
{
    (void)state;
    const cJSON *files = cJSON_GetObjectItem(ref, "files"), *f;
    int checked = 0, skipped = 0;
    cJSON_ArrayForEach(f, files)
    {
        char path[1024];
        snprintf(path, sizeof path, AP_SHARED_DIR "/data/text/%s",
                 cJSON_GetObjectItem(f, "file")->valuestring);
        size_t n;
        char *text = testutil_read_file(path, &n);
        if (!text) {
            print_message("skipping %s: optional corpus not present (set ATTNPROBE_SHARED_DIR "
                          "at configure time to check it)\n", path);
            skipped++;
            continue;
        }
        int *ids;
        size_t n_ids;
        ap_error err;
        if (ap_tokenizer_encode(tok, text, n, &ids, &n_ids, &err)) fail_msg("%s", err.msg);
        const cJSON *first = cJSON_GetObjectItem(f, "first_ids");
        for (int i = 0; i < cJSON_GetArraySize(first) && (size_t)i < n_ids; i++)
            assert_int_equal(ids[i], cJSON_GetArrayItem(first, i)->valueint);
        assert_int_equal(n_ids, (size_t)cJSON_GetObjectItem(f, "tokens")->valuedouble);
        int32_t *le = malloc(n_ids * sizeof *le); /* little-endian int32, as the reference hashed */
        for (size_t i = 0; i < n_ids; i++) le[i] = ids[i];
        char sha[65];
        ap_sha256_hex(le, n_ids * sizeof *le, sha);
        assert_string_equal(sha, cJSON_GetObjectItem(f, "ids_sha256")->valuestring);
        char *back;
        size_t n_back;
        if (ap_tokenizer_decode(tok, ids, n_ids, &back, &n_back, &err)) fail_msg("%s", err.msg);
        assert_int_equal(n_back, n);
        assert_memory_equal(back, text, n);
        print_message("%s: %zu tokens identical to tokenizers, round trip exact\n", path, n_ids);
        free(back);
        free(le);
        free(ids);
        free(text);
        checked++;
    }
    assert_int_equal(checked + skipped, cJSON_GetArraySize(files));
}

static void test_special_and_decode_errors(void **state)
{
    (void)state;
    assert_int_equal(ap_tokenizer_eot(tok), 50256);
    assert_int_equal(ap_tokenizer_vocab_size(tok), 50257);
    int bad[2] = {15496, 50257};
    char *text;
    size_t n;
    ap_error err;
    assert_int_equal(ap_tokenizer_decode(tok, bad, 2, &text, &n, &err), AP_ERR_INPUT);
    assert_non_null(strstr(err.msg, "50257"));
}

static void test_missing_files(void **state)
{
    (void)state;
    ap_tokenizer *t;
    ap_error err;
    assert_int_equal(ap_tokenizer_load_dir("/nonexistent-dir", &t, &err), AP_ERR_INPUT);
    assert_null(t);
    assert_non_null(strstr(err.msg, "vocab.json"));
    assert_int_equal(ap_tokenizer_load(GPT2_TOK "/encoder.json", "/nonexistent/merges.txt", &t, &err),
                     AP_ERR_INPUT);
    assert_non_null(strstr(err.msg, "/nonexistent/merges.txt"));
    /* merges given as vocabulary: not a JSON object */
    assert_int_equal(ap_tokenizer_load(GPT2_TOK "/vocab.bpe", GPT2_TOK "/vocab.bpe", &t, &err),
                     AP_ERR_INPUT);
    assert_non_null(strstr(err.msg, "vocab.bpe"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adversarial_strings),
        cmocka_unit_test(test_corpus_files),
        cmocka_unit_test(test_special_and_decode_errors),
        cmocka_unit_test(test_missing_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
