/* fuzz_parsers.c — fuzzing the file parsers: safetensors, config.json,
 * llm.c checkpoints, tokenizer vocab/merges files, text into the BPE, trace
 * files, summaries and batch grid files.
 *
 * Two ways to run it:
 *   - as a ctest (default build): a seeded mutation fuzzer. It writes valid
 *     seed files, then for N rounds per parser flips bits, overwrites bytes
 *     with boundary values, truncates, splices and duplicates chunks, and
 *     loads the result. Every load must return a status (never crash, hang
 *     or leak: CI runs it under ASan+UBSan). usage: fuzz_parsers [rounds] [seed]
 *   - with libFuzzer (clang -fsanitize=fuzzer -DAP_LIBFUZZER): the first input
 *     byte picks the parser and the rest is the file.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "reports/reports.h"
#include "study/study.h"
#include "testutil.h"
#include "tracer/tracer.h"

enum { K_SAFETENSORS, K_CONFIG, K_LLMC, K_VOCAB, K_MERGES, K_TRACE, K_SUMMARY, K_TEXT, K_GRID, K_COUNT };
static const char *const KIND_NAMES[K_COUNT] __attribute__((unused)) = {
    "safetensors", "config.json", "llm.c", "vocab.json", "merges.txt", "trace", "summary.json", "text", "grid.json"};

static char work[256];            /* folder with a valid model and tokenizer */
static ap_tokenizer *text_tok;    /* for K_TEXT */
static char *seed_data[K_COUNT];
static size_t seed_size[K_COUNT];

static const char *kind_path(int kind, char *buf, size_t n)
{
    static const char *files[K_COUNT] = {"model.safetensors", "config.json", "model.bin",
                                         "vocab.json", "merges.txt", "trace.safetensors",
                                         "summary.json", NULL};
    snprintf(buf, n, "%s/%s", work, files[kind] ? files[kind] : "");
    return buf;
}

/* Writes the small tokenizer: the 256 byte symbols plus a few merges. */
static int write_tokenizer(void)
{
    char path[300], sym[4];
    snprintf(path, sizeof path, "%s/vocab.json", work);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputc('{', f);
    int next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        int cp = printable ? b : next++;
        int n = cp < 0x80 ? (sym[0] = (char)cp, 1)
                          : (sym[0] = (char)(0xC0 | cp >> 6), sym[1] = (char)(0x80 | (cp & 0x3F)), 2);
        sym[n] = '\0';
        fprintf(f, "%s\"%s%s\": %d", b ? ", " : "", sym[0] == '"' || sym[0] == '\\' ? "\\" : "",
                sym, b);
    }
    fprintf(f, ", \"th\": 256, \"the\": 257, \"\\u0120the\": 258, \"<|endoftext|>\": 259}");
    fclose(f);
    snprintf(path, sizeof path, "%s/merges.txt", work);
    const char *merges = "#version: 0.2\nt h\nth e\n\xC4\xA0 the\n";
    return testutil_write_file(path, merges, strlen(merges));
}

/* A small trace of the model and a one-run summary, as seeds. */
static int write_trace_and_summary(const ap_model *m)
{
    ap_engine *e;
    ap_error err;
    if (ap_engine_create(m, AP_BACKEND_CPU, AP_PRECISION_FP32, &e, &err)) return -1;
    int ids[12] = {1, 5, 9, 2, 7, 3, 8, 4, 6, 0, 11, 10}, layer = 0;
    ap_samples samples = {1, (int[]){12}, (int *[]){ids}, 1, 0};
    ap_trace tr;
    char path[300];
    snprintf(path, sizeof path, "%s/trace.safetensors", work);
    int rc = ap_trace_run(e, m, &samples, &layer, 1, &tr, NULL, NULL, &err) != AP_OK;
    if (!rc) {
        tr.config_json = strdup("{\"mode\":\"isolated\"}");
        rc = ap_trace_save(&tr, path, &err) != AP_OK;
        ap_trace_free(&tr);
    }
    ap_engine_free(e);
    ap_report_run run = {.policy = "h2o", .n_params = 1, .param_name = {"budget"},
                         .param_value = {8}, .granularity = "head", .layer = 0, .n_head = 1,
                         .head_mean = (double[AP_M_COUNT]){0}};
    for (int k = 0; k < AP_M_COUNT; k++)
        run.stats[k] = (ap_stats){3, 0.5, 0.1, 0.5, 0.4, 0.6, 0.3, 0.7, 0.45, 0.55};
    ap_summary sum = {.tool_version = "test", .model_source = "random", .n_layer = 1, .n_head = 1,
                      .n_embd = 8, .vocab = 300, .config_json = (char *)"{\"budget\":8}",
                      .backend = "cpu", .precision = "fp32", .n_runs = 1, .runs = &run};
    snprintf(path, sizeof path, "%s/summary.json", work);
    return rc || ap_summary_write_json(&sum, path, &err) != AP_OK ? -1 : 0;
}

static int setup(void)
{
    snprintf(work, sizeof work, "%s", testutil_tmpdir("fuzz"));
    ap_model *m;
    ap_error err;
    if (ap_model_load("random:L=1,H=2,D=8,V=300,T=16,seed=4", &m, &err)) return -1;
    char bin[300];
    snprintf(bin, sizeof bin, "%s/model.bin", work);
    int rc = testutil_write_hf(m, work, 1) || testutil_write_llmc(m, bin, 3) || write_tokenizer() ||
             write_trace_and_summary(m);
    ap_model_free(m);
    if (rc) return -1;
    char path[300];
    for (int k = 0; k < K_TEXT; k++) {
        seed_data[k] = testutil_read_file(kind_path(k, path, sizeof path), &seed_size[k]);
        if (!seed_data[k]) return -1;
    }
    const char *text = "Hello world! It's 2026 \xF0\x9F\x99\x82 the <|endoftext|> théâtre\r\n  x";
    seed_data[K_TEXT] = strdup(text);
    seed_size[K_TEXT] = strlen(text);
    const char *grid = "{\"defaults\": {\"samples\": 3, \"layers\": [3, 6]}, \"studies\": [{\"name\": \"b\", "
                       "\"types\": [\"h2o\", \"cms\"], \"budget\": [32, 64], \"mode\": [\"isolated\", \"cascade\"], "
                       "\"plain_update\": true}, {\"max_length\": [200, 256.5], \"input\": \"x.txt\"}]}";
    seed_data[K_GRID] = strdup(grid);
    seed_size[K_GRID] = strlen(grid);
    return ap_tokenizer_load_dir(work, &text_tok, &err) == AP_OK ? 0 : -1;
}

/* Runs one input through the parser of `kind`; returns 0 unless a contract
 * (a status from the documented set, text round trip) is broken. */
static int fuzz_one(int kind, const uint8_t *data, size_t size)
{
    char path[300];
    ap_error err;
    ap_status st;
    if (kind == K_GRID) { /* a grid parses into cells or is refused */
        ap_grid g;
        st = ap_grid_parse((const char *)data, size, "grid.json", &g, &err);
        if (st == AP_OK) ap_grid_free(&g);
        return !(st == AP_OK || st == AP_ERR_INPUT);
    }
    if (kind == K_TEXT) {
        int *ids;
        size_t n_ids;
        st = ap_tokenizer_encode(text_tok, (const char *)data, size, &ids, &n_ids, &err);
        if (st) return st != AP_ERR_RUNTIME;
        char *back;
        size_t n_back;
        st = ap_tokenizer_decode(text_tok, ids, n_ids, &back, &n_back, &err);
        free(ids);
        if (st) return 1;
        /* Output is what the sanitised input was; for valid UTF-8 the input itself. */
        free(back);
        return 0;
    }
    kind_path(kind, path, sizeof path);
    if (testutil_write_file(path, data, size)) return 1;
    if (kind == K_TRACE) {
        ap_trace tr;
        st = ap_trace_load(path, &tr, &err);
        if (st == AP_OK) ap_trace_free(&tr);
    } else if (kind == K_SUMMARY) {
        ap_summary s;
        st = ap_summary_read_json(path, &s, &err);
        if (st == AP_OK) { /* a readable summary must also check and print */
            double tol[AP_M_COUNT];
            int regressions;
            ap_check_default_tolerances(tol);
            FILE *null = fopen("/dev/null", "w");
            if (null) {
                ap_check(&s, &s, tol, 0, 1, null, &regressions, &err);
                ap_summary_print_table(&s, null);
                fclose(null);
            }
            ap_summary_free(&s);
        }
    } else if (kind == K_VOCAB || kind == K_MERGES) {
        ap_tokenizer *t = NULL;
        st = ap_tokenizer_load_dir(work, &t, &err);
        if (t) { /* a loaded tokenizer must still encode */
            int *ids;
            size_t n;
            if (ap_tokenizer_encode(t, "the theme", 9, &ids, &n, &err) == AP_OK) free(ids);
        }
        ap_tokenizer_free(t);
    } else {
        ap_model *m = NULL;
        char target[300];
        snprintf(target, sizeof target, "%s%s", work, kind == K_LLMC ? "/model.bin" : "");
        st = ap_model_load(target, &m, &err);
        ap_model_free(m);
    }
    /* restore the seed so the next input mutates one file at a time */
    testutil_write_file(path, seed_data[kind], seed_size[kind]);
    return !(st == AP_OK || st == AP_ERR_INPUT || st == AP_ERR_USAGE || st == AP_ERR_RUNTIME);
}

#ifdef AP_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        if (setup()) abort();
        ready = 1;
    }
    if (size < 1) return 0;
    if (fuzz_one(data[0] % K_COUNT, data + 1, size - 1)) abort();
    return 0;
}
#else
static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* One random mutation of buf (size *n, capacity cap). */
static void mutate(uint8_t *buf, size_t *n, size_t cap)
{
    static const uint8_t interesting[] = {0, 1, 0x7f, 0x80, 0xff, '"', '{', '}', '[', ']', ',',
                                          ':', '-', '9', ' ', '\n', '\\', 0xc3, 0xe2, 0xf0};
    size_t len = *n;
    switch (rnd() % 7) {
    case 0: if (len) buf[rnd() % len] ^= (uint8_t)(1u << (rnd() % 8)); break;
    case 1: if (len) buf[rnd() % len] = interesting[rnd() % sizeof interesting]; break;
    case 2: if (len) *n = rnd() % len; break; /* truncate */
    case 3: /* duplicate a chunk */
        if (len > 1) {
            size_t at = rnd() % len, span = 1 + rnd() % (len - at < 64 ? len - at : 64);
            if (len + span <= cap) {
                memmove(buf + at + span, buf + at, len - at);
                *n = len + span;
            }
        }
        break;
    case 4: /* delete a chunk */
        if (len > 1) {
            size_t at = rnd() % len, span = 1 + rnd() % (len - at);
            memmove(buf + at, buf + at + span, len - at - span);
            *n = len - span;
        }
        break;
    case 5: /* digits: the header's numbers */
        for (size_t tries = 0; len && tries < 64; tries++) {
            size_t at = rnd() % len;
            if (buf[at] >= '0' && buf[at] <= '9') {
                buf[at] = (uint8_t)('0' + rnd() % 10);
                break;
            }
        }
        break;
    default: /* the safetensors header length or llm.c header ints */
        if (len >= 8) {
            size_t at = 4 * (rnd() % (len < 64 ? len / 4 : 16));
            uint32_t v = (uint32_t)rnd();
            if (rnd() % 2) v %= 4096;
            if (at + 4 <= len) memcpy(buf + at, &v, 4);
        }
    }
}

/* Writes the seeds as a libFuzzer corpus: one file per parser, kind byte first. */
static int write_seeds(const char *dir)
{
    for (int k = 0; k < K_COUNT; k++) {
        char path[512];
        snprintf(path, sizeof path, "%s/seed-%d", dir, k);
        uint8_t *buf = malloc(seed_size[k] + 1);
        buf[0] = (uint8_t)k;
        memcpy(buf + 1, seed_data[k], seed_size[k]);
        int rc = testutil_write_file(path, buf, seed_size[k] + 1);
        free(buf);
        if (rc) return 1;
    }
    return 0;
}

/* Replays saved inputs (kind byte first, as libFuzzer's corpus): the
 * regression corpus of inputs that once broke a contract. */
static int replay_files(int n, char **paths)
{
    if (setup()) return 1;
    int failures = 0;
    for (int i = 0; i < n; i++) {
        size_t size;
        uint8_t *data = (uint8_t *)testutil_read_file(paths[i], &size);
        if (!data || size < 1) {
            fprintf(stderr, "fuzz_parsers: cannot read %s\n", paths[i]);
            failures++;
        } else if (fuzz_one(data[0] % K_COUNT, data + 1, size - 1)) {
            fprintf(stderr, "fuzz_parsers: %s broke a contract\n", paths[i]);
            failures++;
        }
        free(data);
    }
    for (int k = 0; k < K_COUNT; k++) free(seed_data[k]);
    ap_tokenizer_free(text_tok);
    printf("%d passed, %d failed\n", n - failures, failures);
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0) return setup() || write_seeds(argv[2]);
    if (argc >= 3 && strcmp(argv[1], "--replay") == 0) return replay_files(argc - 2, argv + 2);
    int rounds = argc > 1 ? atoi(argv[1]) : 400;
    rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) : 0x9e3779b97f4a7c15ull;
    if (setup()) {
        fprintf(stderr, "fuzz_parsers: cannot build the seed files\n");
        return 1;
    }
    int failures = 0;
    for (int k = 0; k < K_COUNT; k++) {
        size_t cap = seed_size[k] * 2 + 64;
        uint8_t *buf = malloc(cap);
        for (int r = 0; r < rounds; r++) {
            size_t n = seed_size[k];
            memcpy(buf, seed_data[k], n);
            int n_mut = 1 + (int)(rnd() % 4);
            for (int i = 0; i < n_mut; i++) mutate(buf, &n, cap);
            if (fuzz_one(k, buf, n)) {
                fprintf(stderr, "fuzz_parsers: %s round %d broke a contract\n", KIND_NAMES[k], r);
                failures++;
            }
        }
        free(buf);
        printf("fuzz_parsers: %s: %d mutated inputs\n", KIND_NAMES[k], rounds);
    }
    for (int k = 0; k < K_COUNT; k++) free(seed_data[k]);
    ap_tokenizer_free(text_tok);
    printf("%d passed, %d failed\n", K_COUNT * rounds - failures, failures);
    return failures ? 1 : 0;
}
#endif
