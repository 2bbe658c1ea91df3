/* cmd_run.c — the main job's command line: run (trace + replay + report),
 * trace (save a reference trace) and replay (a saved trace). It parses the
 * flags, loads the model and the text, hands a study (study/study.h) its
 * config, and prints; the pipeline is the study's. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <signal.h>

#include "cli.h"
#include "common/atomic_file.h"
#include "common/phase.h"
#include "study/study.h"

/* Longest path accepted: the summary and the trace record paths in 1 KiB fields. */
#define AP_PATH_LIMIT 1000

#define DEFAULT_TYPES "full,window,sink,random,h2o,tova,cms,count_sketch,race,race_kde"

/* The seed study's configuration (docs/seed-study.md): caches of 64, 128 and
 * 256 positions of which the last 64 are a protected recent window, every
 * layer capped, heads 0-3 compared, also by slot index. */
#define SEED_PRESET                                                                                        \
    "--types window,h2o,cms,count_sketch --budget 64,128,256 --recent 64 --sink 0 --mode cascade "          \
    "--layers all --heads 0,1,2,3 --align index"

typedef struct {
    const char *model, *tokenizer, *input, *layers, *heads, *types, *mode, *device, *precision;
    const char *out, *format, *align, *save, *granularity, *compare_to, *sketch_memory, *seeds;
    int samples, max_length, warmup, stride, bootstrap, quiet, help, threads, batch_size, log_samples;
    int shard; /* under mpirun: split the samples over the processes (set by job, not a flag) */
    unsigned long seed;
    cli_policy_opts policy; /* --budget, --width, ...: the registry's flags (policy_flags.c) */
} run_opts;

enum {
    O_MODEL = 1000, O_TOKENIZER, O_INPUT, O_LAYERS, O_HEADS, O_TYPES, O_MODE, O_DEVICE,
    O_PRECISION, O_OUT, O_FORMAT, O_ALIGN, O_SAVE, O_GRAN, O_SAMPLES, O_MAXLEN, O_WARMUP,
    O_STRIDE, O_BOOT, O_SEED, O_QUIET, O_HELP, O_THREADS, O_BATCH, O_COMPARE, O_LOG_SAMPLES,
    O_SKETCH_MEMORY, O_SEEDS, O_PRESET,
    O_POLICY = 2000 /* the policy flags, cli_policy_longopts */
};

static const struct option FIXED_OPTS[] = {
    {"model", required_argument, 0, O_MODEL}, {"tokenizer", required_argument, 0, O_TOKENIZER},
    {"input", required_argument, 0, O_INPUT}, {"layers", required_argument, 0, O_LAYERS},
    {"layer", required_argument, 0, O_LAYERS}, {"heads", required_argument, 0, O_HEADS},
    {"types", required_argument, 0, O_TYPES}, {"mode", required_argument, 0, O_MODE},
    {"device", required_argument, 0, O_DEVICE}, {"precision", required_argument, 0, O_PRECISION},
    {"out", required_argument, 0, O_OUT}, {"format", required_argument, 0, O_FORMAT},
    {"align", required_argument, 0, O_ALIGN}, {"save", required_argument, 0, O_SAVE},
    {"granularity", required_argument, 0, O_GRAN}, {"samples", required_argument, 0, O_SAMPLES},
    {"max-length", required_argument, 0, O_MAXLEN}, {"warmup", required_argument, 0, O_WARMUP},
    {"stride", required_argument, 0, O_STRIDE},
    {"bootstrap", required_argument, 0, O_BOOT}, {"seed", required_argument, 0, O_SEED},
    {"quiet", no_argument, 0, O_QUIET},
    {"threads", required_argument, 0, O_THREADS}, {"batch-size", required_argument, 0, O_BATCH},
    {"compare-to", required_argument, 0, O_COMPARE}, {"log-samples", no_argument, 0, O_LOG_SAMPLES},
    {"sketch-memory", required_argument, 0, O_SKETCH_MEMORY}, {"seeds", required_argument, 0, O_SEEDS},
    {"preset", required_argument, 0, O_PRESET}, {"help", no_argument, 0, O_HELP},
};
enum { N_FIXED_OPTS = sizeof FIXED_OPTS / sizeof FIXED_OPTS[0] };

/* The fixed options and the policy registry's, ended by zeros. */
static const struct option *longopts(void)
{
    static struct option all[N_FIXED_OPTS + 16 + CLI_POLICY_FLAGS_MAX + 1];
    if (!all[0].name) {
        memcpy(all, FIXED_OPTS, sizeof FIXED_OPTS);
        cli_policy_longopts(all + N_FIXED_OPTS, O_POLICY);
    }
    return all;
}

static const char USAGE[] =
    "usage: attnprobe [run] [options]            trace, replay the policies, report\n"
    "       attnprobe trace --save FILE [options] reference trace only\n"
    "       attnprobe replay FILE [options]       isolated replay of a saved trace\n\n"
    "input and model:\n"
    "  --model DIR|FILE|random:SPEC   default: the bundled attnprobe-mini\n"
    "  --input FILE|-                 default: the model folder's eval.txt (held-out text), else sample.txt\n"
    "  --samples N (16)  --max-length T (512)  --layers 6|0,6,11|all (middle layer)\n"
    "  --heads all|0,3 (all)\n"
    "replay:\n"
    "  --types LIST|all (" DEFAULT_TYPES ")\n"
    "  --granularity head|layer (head)  --seed N (1)\n"
    "  --seeds 1-5|1,4,9  run each randomised policy once per seed and report the spread of its means\n"
    "  --sketch-memory match|SIZE  size the sketches' counters (cms, count_sketch: width; race:\n"
    "                 bits, then rows) to h2o's scores at the same budget, or to SIZE bytes a\n"
    "                 layer (4096, 4KiB, 1MiB), split over the heads\n"
    "  --mode isolated|cascade|eval (isolated; eval: attnprobe eval, docs/eval.md)\n"
    "  --warmup W (64)  --stride S (16)\n"
    "  --threads N (0: one per core) isolated replays run in parallel; same results for any N\n"
    "  --batch-size N (0: from free memory) samples traced and replayed at a time; the\n"
    "                 numbers are the same for any N, memory grows with it\n"
    "  --device cpu|cuda|auto (cpu)  --precision fp32|tf32|bf16 (fp32)\n"
    "output:\n"
    "  --out DIR (attnprobe-out): writes DIR/summary.json  --format text,json (both);\n"
    "                 md: also DIR/report.md, html: also DIR/report.html (tables, charts)\n"
    "  --align position|index (position; index also shows the seed study's slot-index KL,\n"
    "                 cosine, L1 and RMS beside the position-aligned KL and cosine)\n"
    "  --bootstrap N (1000) resamples for the 95% CI  --quiet (no table, no progress)\n"
    "  --compare-to POLICY|none (the first scored policy of --types): every other policy's\n"
    "                 per-sample difference from it, bootstrap CI, Holm-adjusted sign-flip p\n"
    "  --log-samples  also write DIR/samples.jsonl: every sample's mean of every metric\n"
    "presets (flags given beside one override its values):\n"
    "  --preset seed  the seed study's configuration (docs/seed-study.md): " SEED_PRESET "\n";

static ap_status parse_flags(int argc, char **argv, run_opts *o, ap_error *err);

static const char *const FORMATS[] = {"text", "json", "md", "html", NULL};

/* --preset NAME: the preset's flags parsed first, so that every flag given
 * beside it, before or after, overrides its value. */
static ap_status apply_preset(int argc, char **argv, run_opts *o, ap_error *err)
{
    const char *name = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--")) break;
        if (!strcmp(argv[i], "--preset") && i + 1 < argc) name = argv[++i];
        else if (!strncmp(argv[i], "--preset=", 9)) name = argv[i] + 9;
    }
    if (!name) return AP_OK;
    if (strcmp(name, "seed"))
        return ap_error_set(err, AP_ERR_USAGE, "--preset %s: accepted: seed", name);
    static char preset[sizeof SEED_PRESET]; /* o keeps pointers into it */
    memcpy(preset, SEED_PRESET, sizeof preset);
    char *words[32] = {argv[0]};
    int n = 1;
    for (char *save = NULL, *w = strtok_r(preset, " ", &save); w && n < 32; w = strtok_r(NULL, " ", &save))
        words[n++] = w;
    return parse_flags(n, words, o, err);
}

static ap_status parse_run_opts(int argc, char **argv, run_opts *o, ap_error *err)
{
    *o = (run_opts){.types = DEFAULT_TYPES, .mode = "isolated", .device = "cpu",
                    .precision = "fp32", .out = "attnprobe-out", .format = "text,json",
                    .align = "position", .granularity = "head", .samples = 16, .max_length = 512,
                    .warmup = 64, .stride = 16, .bootstrap = 1000, .seed = 1};
    cli_policy_opts_default(&o->policy);
    ap_status st = apply_preset(argc, argv, o, err);
    const char *preset_heads = o->heads;
    if (!st) st = parse_flags(argc, argv, o, err);
    /* eval measures the model's output: a preset's heads do not apply (heads asked for are refused) */
    if (!st && !strcmp(o->mode, "eval") && preset_heads && o->heads == preset_heads) o->heads = NULL;
    return st;
}

static ap_status parse_flags(int argc, char **argv, run_opts *o, ap_error *err)
{
    optind = 1;
    opterr = 0;
    int c;
    ap_status st = AP_OK;
    while ((c = getopt_long(argc, argv, "", longopts(), NULL)) != -1 && !st) {
        if (c >= O_POLICY) {
            st = cli_policy_flag(&o->policy, c - O_POLICY, optarg, err);
            continue;
        }
        switch (c) {
        case O_MODEL: o->model = optarg; break;
        case O_TOKENIZER: o->tokenizer = optarg; break;
        case O_INPUT: o->input = optarg; break;
        case O_LAYERS: o->layers = optarg; break;
        case O_HEADS: o->heads = optarg; break;
        case O_TYPES: o->types = optarg; break;
        case O_MODE: o->mode = optarg; break;
        case O_DEVICE: o->device = optarg; break;
        case O_PRECISION: o->precision = optarg; break;
        case O_OUT: o->out = optarg; break;
        case O_FORMAT: o->format = optarg; break;
        case O_ALIGN: o->align = optarg; break;
        case O_SAVE: o->save = optarg; break;
        case O_GRAN: o->granularity = optarg; break;
        case O_SAMPLES: st = cli_parse_int("--samples", optarg, 1, 100000, &o->samples, err); break;
        case O_MAXLEN: st = cli_parse_int("--max-length", optarg, 2, 1 << 20, &o->max_length, err); break;
        case O_WARMUP: st = cli_parse_int("--warmup", optarg, 0, 1 << 20, &o->warmup, err); break;
        case O_STRIDE: st = cli_parse_int("--stride", optarg, 1, 1 << 20, &o->stride, err); break;
        case O_BOOT: st = cli_parse_int("--bootstrap", optarg, 0, 1000000, &o->bootstrap, err); break;
        case O_SEED: {
            int seed;
            st = cli_parse_int("--seed", optarg, 0, 2147483647, &seed, err);
            o->seed = (unsigned long)seed;
            break;
        }
        case O_THREADS: st = cli_parse_int("--threads", optarg, 0, 4096, &o->threads, err); break;
        case O_BATCH: st = cli_parse_int("--batch-size", optarg, 0, 1000000, &o->batch_size, err); break;
        case O_COMPARE: o->compare_to = optarg; break;
        case O_LOG_SAMPLES: o->log_samples = 1; break;
        case O_SKETCH_MEMORY: o->sketch_memory = optarg; break;
        case O_SEEDS: o->seeds = optarg; break;
        case O_PRESET: break; /* applied first, by apply_preset */
        case O_QUIET: o->quiet = 1; break;
        case O_HELP: o->help = 1; break;
        default:
            st = ap_error_set(err, AP_ERR_USAGE, "%s: unknown option or missing value (see "
                              "attnprobe run --help)", argv[optind - 1]);
        }
    }
    if (st) return st;
    /* paths are recorded in the summary and the trace file in fixed fields */
    const struct { const char *flag, *value; } paths[] = {
        {"--model", o->model}, {"--tokenizer", o->tokenizer}, {"--input", o->input},
        {"--out", o->out},     {"--save", o->save},
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        if (paths[i].value && strlen(paths[i].value) > AP_PATH_LIMIT)
            return ap_error_set(err, AP_ERR_USAGE, "%s: a path of %zu bytes (at most %d accepted)",
                                paths[i].flag, strlen(paths[i].value), AP_PATH_LIMIT);
    const struct { const char *flag, *value, *accepted; } choices[] = {
        {"--mode", o->mode, "isolated cascade eval"}, {"--device", o->device, "cpu cuda auto"},
        {"--precision", o->precision, "fp32 tf32 bf16"}, {"--align", o->align, "position index"},
        {"--granularity", o->granularity, "head layer"},
    };
    for (size_t i = 0; i < sizeof choices / sizeof choices[0]; i++) {
        const char *v = choices[i].value, *hit = strstr(choices[i].accepted, v);
        const size_t n = strlen(v);
        /* a whole word of the accepted list */
        if (!n || strchr(v, ' ') || !hit || (hit != choices[i].accepted && hit[-1] != ' ') ||
            (hit[n] != ' ' && hit[n] != '\0'))
            return ap_error_set(err, AP_ERR_USAGE, "%s %s: accepted: %s", choices[i].flag, v,
                                choices[i].accepted);
    }
    /* every format named must be known, and at least one named */
    int n_fmt = 0;
    for (const char *f = o->format; *f;) {
        const size_t len = strcspn(f, ",");
        int known = 0;
        for (const char *const *k = FORMATS; *k; k++) known |= len == strlen(*k) && !strncmp(f, *k, len);
        if (!known)
            return ap_error_set(err, AP_ERR_USAGE, "--format %s: \"%.*s\" is not available (accepted: "
                                "text, json, md, html, comma-separated)", o->format, (int)len, f);
        n_fmt++;
        f += len + (f[len] == ',');
    }
    if (n_fmt == 0)
        return ap_error_set(err, AP_ERR_USAGE, "--format is empty (accepted: text, json, md, html, "
                            "comma-separated)");
    return AP_OK;
}

/* ---- progress ------------------------------------------------------------- */

typedef struct {
    int enabled;
} progress_state;

/* stage [#####     ] 12/64 samples · 35.2k tok/s · ETA 3 s, on one line of stderr */
static void progress(void *ctx, const ap_study_progress *p)
{
    const progress_state *ps = ctx;
    if (!ps->enabled) return;
    const double fraction = p->samples_total ? p->samples_done / p->samples_total : 1.0;
    const int width = 24, filled = (int)(fraction * width + 0.5);
    char bar[32];
    for (int i = 0; i < width; i++) bar[i] = i < filled ? '#' : ' ';
    bar[width] = '\0';
    const double rate = p->elapsed_s > 0 ? p->tokens_done / p->elapsed_s : 0;
    const double eta = rate > 0 ? (p->tokens_total - p->tokens_done) / rate : 0;
    fprintf(stderr, "\r%-8s [%s] %d/%d samples  %7.1fk tok/s  ETA %4.0f s ", p->stage, bar,
            (int)p->samples_done, p->samples_total, rate / 1000, eta);
    if (fraction >= 1.0) fprintf(stderr, "\r%*s\r", 78, "");
    fflush(stderr);
}

/* ---- interrupts --------------------------------------------------------------- */

/* SIGINT/SIGTERM/SIGHUP while a trace file is written: remove it (the
 * summary is written by a rename at the very end), then die of the signal's
 * usual exit code 128 + n. */
static void on_signal(int sig)
{
    const char *tmp = ap_study_temp_file(), *out = ap_atomic_pending();
    if (tmp) unlink(tmp);
    if (out) unlink(out);
    _exit(128 + sig);
}

static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) sigaction(sigs[i], &sa, NULL);
}

/* ---- the study's config ------------------------------------------------------- */

/* --types with the policy flags; eval adds full, its every stream's reference. */
static ap_status parse_types(const run_opts *o, ap_policy_params **params, int *n, ap_error *err)
{
    ap_status st = cli_policy_types(&o->policy, o->types, params, n, err);
    if (st) return st;
    ap_policy_params *p = *params;
    for (int i = 0; i < *n; i++) {
        p[i].granularity = strcmp(o->granularity, "layer") == 0 ? AP_GRAN_LAYER : AP_GRAN_HEAD;
        p[i].seed = o->seed;
    }
    int has_full = 0;
    for (int i = 0; i < *n; i++) has_full |= !strcmp(p[i].name, "full");
    if (!strcmp(o->mode, "eval") && !has_full) {
        ap_policy_params *grown = realloc(p, ((size_t)*n + 1) * sizeof *p);
        if (!grown) {
            free(p);
            *params = NULL;
            return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        }
        p = *params = grown;
        memmove(&p[1], &p[0], (size_t)*n * sizeof *p);
        ap_policy_params_default(&p[0], "full");
        p[0].granularity = p[1].granularity;
        (*n)++;
    }
    return AP_OK;
}

/* --seeds "1-5" or "1,4,9": into seeds[] (at most AP_MAX_SEEDS, distinct, >= 0);
 * anything else in the text is an error. */
static ap_status parse_seeds(const char *text, unsigned long *seeds, int *n, ap_error *err)
{
    *n = 0;
    int ok = *text != '\0';
    for (const char *t = text; ok && *t;) {
        char *end;
        long a = strtol(t, &end, 10), b;
        ok = end != t && a >= 0 && *t != '-' && *t != '+';
        b = a;
        if (ok && *end == '-') {
            const char *u = end + 1;
            b = strtol(u, &end, 10);
            ok = end != u && *u != '-' && *u != '+' && b >= a;
        }
        ok = ok && (*end == ',' || *end == '\0') && b - a < AP_MAX_SEEDS && *n + (b - a + 1) <= AP_MAX_SEEDS;
        for (long v = a; ok && v <= b; v++) {
            for (int i = 0; i < *n; i++) ok = ok && seeds[i] != (unsigned long)v;
            seeds[(*n)++] = (unsigned long)v;
        }
        t = ok && *end ? end + 1 : end;
        ok = ok && !(*end == ',' && *t == '\0'); /* no trailing comma */
    }
    if (!ok || *n < 1)
        return ap_error_set(err, AP_ERR_USAGE, "--seeds %s: accepted: a range 1-5 or a list 1,4,9 of at most %d "
                            "distinct seeds >= 0", text, AP_MAX_SEEDS);
    return AP_OK;
}

/* --seeds: every randomised policy once per seed (the others once). */
static ap_status expand_seeds(const run_opts *o, ap_policy_params **params, int *n, ap_error *err)
{
    if (!o->seeds) return AP_OK;
    unsigned long seeds[AP_MAX_SEEDS];
    int n_seeds;
    ap_status st = parse_seeds(o->seeds, seeds, &n_seeds, err);
    if (st) return st;
    ap_policy_params *out = calloc((size_t)*n * n_seeds, sizeof *out);
    if (!out) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    int m = 0;
    for (int i = 0; i < *n; i++) {
        const int randomised = ap_policy_find((*params)[i].name)->randomised;
        for (int k = 0; k < (randomised ? n_seeds : 1); k++) {
            out[m] = (*params)[i];
            if (randomised) out[m].seed = seeds[k];
            m++;
        }
    }
    free(*params);
    *params = out;
    *n = m;
    return AP_OK;
}

/* --compare-to: a policy of --types, "none", or by default the first scored
 * one (a policy whose evictions follow a score, not position or chance). */
static ap_status pick_compare(const run_opts *o, const ap_policy_params *p, int n, const char **out, ap_error *err)
{
    *out = NULL;
    if (o->compare_to && !strcmp(o->compare_to, "none")) return AP_OK;
    if (!o->compare_to && !strcmp(o->mode, "eval")) { /* eval: against the full cache */
        *out = "full";
        return AP_OK;
    }
    for (int i = 0; i < n; i++) {
        const char *name = p[i].name;
        const int scored = ap_policy_find(name)->scored;
        if (o->compare_to ? !strcmp(name, o->compare_to) : scored) {
            *out = name;
            return AP_OK;
        }
    }
    if (o->compare_to)
        return ap_error_set(err, AP_ERR_USAGE, "--compare-to %s: not in --types %s (accepted: one of them, "
                            "or none)", o->compare_to, o->types);
    return AP_OK;
}

/* --sketch-memory SIZE: bytes with an optional KiB or MiB suffix. */
static ap_status parse_size(const char *text, size_t *out, ap_error *err)
{
    char *end;
    errno = 0;
    const double v = strtod(text, &end);
    double unit = 1;
    if (!strcmp(end, "KiB")) unit = 1024;
    else if (!strcmp(end, "MiB")) unit = 1024.0 * 1024;
    else if (*end) unit = -1;
    if (end == text || errno || unit < 0 || !(v > 0) || v * unit > 1e12)
        return ap_error_set(err, AP_ERR_USAGE, "--sketch-memory %s: accepted: match, or bytes a layer "
                            "(4096, 4KiB, 1MiB)", text);
    *out = (size_t)(v * unit);
    return AP_OK;
}

/* --sketch-memory: every sketch policy's counters sized to h2o's scores at the
 * same budget (match) or to SIZE a layer, over n_head heads. */
static ap_status fit_sketch_memory(const run_opts *o, ap_policy_params *p, int n, int n_head, ap_error *err)
{
    if (!o->sketch_memory) return AP_OK;
    const int match = !strcmp(o->sketch_memory, "match");
    size_t per_head = 0;
    if (!match) {
        size_t layer = 0;
        ap_status st = parse_size(o->sketch_memory, &layer, err);
        if (st) return st;
        per_head = layer / (size_t)n_head;
    }
    for (int i = 0; i < n; i++) {
        if (match) { /* h2o's scores at this policy's budget */
            ap_policy_params h2o;
            ap_policy_params_default(&h2o, "h2o");
            h2o.budget = p[i].budget;
            per_head = ap_policy_counter_bytes(&h2o);
        }
        ap_status st = ap_policy_params_fit_counters(&p[i], per_head, err);
        ap_policy *probe;
        if (!st) st = ap_policy_create(&p[i], 1, 1, &probe, err);
        if (st) return ap_error_wrap(err, st, "--sketch-memory %s", o->sketch_memory);
        ap_policy_free(probe);
    }
    return AP_OK;
}

/* --heads: NULL for all, else the list (checked against n_head). */
static ap_status parse_heads(const char *heads, int n_head, int **out, int *n, ap_error *err)
{
    *out = NULL;
    *n = 0;
    if (!heads || strcmp(heads, "all") == 0) return AP_OK;
    if (cli_parse_layers(heads, n_head, out, n, err))
        return ap_error_set(err, AP_ERR_USAGE, "--heads %s: accepted: all, or heads 0..%d separated by "
                            "commas", heads, n_head - 1);
    return AP_OK;
}

static ap_backend pick_backend(const char *device)
{
    if (strcmp(device, "cuda") == 0 || (strcmp(device, "auto") == 0 && ap_cuda_available()))
        return AP_BACKEND_CUDA;
    return AP_BACKEND_CPU;
}

static ap_precision pick_precision(const char *p)
{
    return strcmp(p, "tf32") == 0 ? AP_PRECISION_TF32 : strcmp(p, "bf16") == 0 ? AP_PRECISION_BF16 : AP_PRECISION_FP32;
}

/* ---- output --------------------------------------------------------------------- */

static int has_format(const char *list, const char *name)
{
    const size_t n = strlen(name);
    for (const char *f = list; *f;) {
        const size_t len = strcspn(f, ",");
        if (len == n && !strncmp(f, name, n)) return 1;
        f += len + (f[len] == ',');
    }
    return 0;
}

static ap_status write_outputs(const run_opts *o, const ap_summary *summary, ap_error *err)
{
    if (!o->quiet && summary->samples < AP_CI_MIN_SAMPLES)
        fprintf(stderr, "attnprobe: warning: %d sample%s: the 95%% CIs are unreliable (at least %d needed)\n",
                summary->samples, summary->samples == 1 ? "" : "s", AP_CI_MIN_SAMPLES);
    if (has_format(o->format, "json")) {
        const size_t n = strlen(o->out) + sizeof "/samples.jsonl"; /* the longer name */
        char *path = malloc(n);
        if (!path) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        snprintf(path, n, "%s/summary.json", o->out);
        ap_status st = ap_summary_write_json(summary, path, err);
        if (!st && !o->quiet) fprintf(stderr, "attnprobe: wrote %s\n", path);
        if (!st && o->log_samples) {
            snprintf(path, n, "%s/samples.jsonl", o->out);
            st = ap_summary_write_samples(summary, path, err);
            if (!st && !o->quiet) fprintf(stderr, "attnprobe: wrote %s\n", path);
        }
        free(path);
        if (st) return st;
    }
    const int md = has_format(o->format, "md"), html = has_format(o->format, "html");
    if (md || html) {
        const size_t n = strlen(o->out) + sizeof "/report.html";
        char *path = malloc(n);
        const char *label = "summary.json";
        ap_report_set set = {.n = 1, .summaries = summary, .labels = &label};
        ap_status st = path ? ap_report_set_metrics(&set, NULL, err) : ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        if (!st && md) {
            snprintf(path, n, "%s/report.md", o->out);
            FILE *f = fopen(path, "w");
            if (!f) st = ap_error_set(err, AP_ERR_RUNTIME, "%s: cannot write: %s", path, strerror(errno));
            if (f) ap_report_print_tables(&set, 1, f);
            if (f && fclose(f) != 0) st = ap_error_set(err, AP_ERR_RUNTIME, "%s: write failed", path);
            if (!st && !o->quiet) fprintf(stderr, "attnprobe: wrote %s\n", path);
        }
        if (!st && html) {
            snprintf(path, n, "%s/report.html", o->out);
            st = ap_report_write_html(&set, path, NULL, err);
            if (!st && !o->quiet) fprintf(stderr, "attnprobe: wrote %s\n", path);
        }
        free(path);
        if (st) return st;
    }
    if (has_format(o->format, "text") && !o->quiet && !strcmp(o->mode, "eval")) {
        ap_summary_print_eval(summary, stdout);
    } else if (has_format(o->format, "text") && !o->quiet) {
        ap_summary_print_table(summary, stdout);
        if (strcmp(o->align, "index") == 0) {
            printf("\n--align index: the seed study's comparison (compacted cache by slot index, zero-padded)\n");
            printf("%-13s %7s %5s %9s %9s %9s %9s   %9s %9s\n", "policy", "budget", "layer", "index_kl",
                   "index_cos", "index_l1", "index_rms", "kl", "cosine");
            for (int r = 0; r < summary->n_runs; r++) {
                const ap_report_run *run = &summary->runs[r];
                printf("%-13s %7.0f %5d %9.4f %9.4f %9.6f %9.6f   %9.4f %9.4f\n", run->policy, ap_report_run_param(run, "budget"),
                       run->layer, run->stats[AP_M_INDEX_KL].mean, run->stats[AP_M_INDEX_COSINE].mean,
                       run->stats[AP_M_INDEX_L1].mean, run->stats[AP_M_INDEX_RMS].mean, run->stats[AP_M_KL].mean,
                       run->stats[AP_M_COSINE].mean);
            }
        }
    }
    return AP_OK;
}

/* ---- the job ---------------------------------------------------------------- */

typedef enum { JOB_RUN, JOB_TRACE, JOB_REPLAY } job_kind;

/* The samples of the input text, as the flags ask. */
static ap_status make_samples(const run_opts *o, const ap_model *model, ap_tokenizer *tok,
                              const char *input_source, const char *text, size_t n_text,
                              ap_samples *samples, ap_error *err)
{
    const ap_config *c = &model->config;
    if (o->max_length > c->n_ctx)
        return ap_error_set(err, AP_ERR_USAGE, "--max-length %d: the model %s has %d positions "
                            "(accepted: 2..%d)", o->max_length, model->source, c->n_ctx, c->n_ctx);
    /* the first measured step; eval measures every step from warmup on that has a next token */
    const int eval = !strcmp(o->mode, "eval");
    const int first = eval ? o->warmup + 1 : o->warmup % o->stride ? (o->warmup / o->stride + 1) * o->stride : o->warmup;
    if (eval && first + 1 > o->max_length)
        return ap_error_set(err, AP_ERR_USAGE, "--warmup %d measures no next token of a %d-token sample (eval "
                            "needs --max-length of at least warmup + 2)", o->warmup, o->max_length);
    if (first + 1 > o->max_length)
        return ap_error_set(err, AP_ERR_USAGE, "--warmup %d and --stride %d measure no step of a "
                            "%d-token sample (the first measured step is %d)",
                            o->warmup, o->stride, o->max_length, first);
    ap_status st = ap_samples_make(tok, text, n_text, o->samples, o->max_length, first + 1, samples, err);
    if (st) return st;
    if (samples->n == 0)
        return ap_error_set(err, AP_ERR_INPUT, "--input %s: no sample of at least %d tokens "
                            "(%d documents read); lower --warmup or give a longer text",
                            input_source, first + 1, samples->documents);
    if (!o->quiet && samples->n < o->samples)
        fprintf(stderr, "attnprobe: %s gives %d of the %d samples asked for\n", input_source,
                samples->n, o->samples);
    return AP_OK;
}

/* Flag combinations that cannot work, before anything is loaded. */
static ap_status check_opts(job_kind kind, const run_opts *o, int n_args, ap_error *err)
{
    if (kind == JOB_REPLAY && n_args != 1)
        return ap_error_set(err, AP_ERR_USAGE, "replay takes one trace file (written by attnprobe trace --save FILE)");
    if (kind == JOB_TRACE && !o->save) return ap_error_set(err, AP_ERR_USAGE, "trace needs --save FILE");
    if (kind == JOB_TRACE && ap_mpi_size() > 1)
        return ap_error_set(err, AP_ERR_USAGE, "trace --save writes one file from one process: run it without mpirun");
    if (strcmp(o->device, "cpu") == 0 && strcmp(o->precision, "fp32") != 0)
        return ap_error_set(err, AP_ERR_USAGE, "--precision %s needs --device cuda (the cpu backend computes "
                            "in fp32)", o->precision);
    if (strcmp(o->device, "cuda") == 0 && !ap_cuda_available())
        return ap_error_set(err, AP_ERR_USAGE, "--device cuda: no CUDA device is visible, or this build has no "
                            "CUDA backend (accepted here: --device cpu or auto)");
    if (kind == JOB_REPLAY && strcmp(o->mode, "isolated") != 0)
        return ap_error_set(err, AP_ERR_USAGE, "--mode %s needs the model: use attnprobe run", o->mode);
    if (!strcmp(o->mode, "eval") && o->heads)
        return ap_error_set(err, AP_ERR_USAGE, "--heads: eval measures the model's output, not heads (leave it out)");
    return AP_OK;
}

/* The policies' parameter sets the flags ask for (malloc'ed), checked. */
/* A selecting policy (quest) needs each query before its set is given,
 * which only the isolated replay has. */
static ap_status check_modes(const run_opts *o, const ap_policy_params *p, int n, ap_error *err)
{
    if (strcmp(o->mode, "isolated") && o->policy.quant.bits)
        return ap_error_set(err, AP_ERR_USAGE, "--quant with --mode %s: the quantised cache's rows are recomputed "
                            "from the trace's queries and keys, which only the isolated replay has (accepted: "
                            "--mode isolated)", o->mode);
    for (int i = 0; i < n && strcmp(o->mode, "isolated"); i++)
        if (ap_policy_find(p[i].name)->selects)
            return ap_error_set(err, AP_ERR_USAGE, "--types %s with --mode %s: %s chooses its set from each query, "
                                "which the cascade's decode step computes after the sets are given (accepted: "
                                "--mode isolated)", o->types, o->mode, p[i].name);
    return AP_OK;
}

static ap_status policies_of(const run_opts *o, ap_policy_params **params, int *n, const char **compare_to,
                             ap_error *err)
{
    ap_status st;
    if ((st = parse_types(o, params, n, err)) || (st = cli_policy_sweeps(&o->policy, params, n, err)) ||
        (st = expand_seeds(o, params, n, err)) || (st = cli_policy_probe(*params, *n, err)) ||
        (st = pick_compare(o, *params, *n, compare_to, err)) || (st = check_modes(o, *params, *n, err))) {
        free(*params);
        *params = NULL;
    }
    return st;
}

/* The study the flags ask for, into summary (or, for trace, the trace file). */
static ap_status study_of(job_kind kind, const run_opts *o, int argc, char **argv, const char *trace_file,
                          ap_summary *summary, ap_error *err)
{
    ap_policy_params *params = NULL;
    int n_policies = 0;
    const char *compare_to = NULL;
    ap_status st = policies_of(o, &params, &n_policies, &compare_to, err);
    if (st) return st;
    char started[32];
    cli_utc_now(started);
    progress_state prog = {!o->quiet && isatty(2)};
    ap_model *model = NULL;
    ap_tokenizer *tok = NULL;
    ap_samples samples = {0};
    char *text = NULL, *input_source = NULL;
    char input_sha[65] = "";
    size_t n_text = 0;
    int *layers = NULL, n_layers = 0, *heads = NULL, n_heads = 0;
    ap_study_config cfg = {
        .policies = params, .n_policies = n_policies,
        .mode = !strcmp(o->mode, "cascade") ? AP_STUDY_CASCADE : !strcmp(o->mode, "eval") ? AP_STUDY_EVAL : AP_STUDY_ISOLATED,
        .warmup = o->warmup, .stride = o->stride, .bootstrap = o->bootstrap, .seed = o->seed,
        .backend = pick_backend(o->device), .precision = pick_precision(o->precision),
        .batch_size = o->batch_size, .threads = o->threads, .max_length = o->max_length,
        .align_index = strcmp(o->align, "index") == 0, .save_trace = kind == JOB_TRACE ? o->save : NULL,
        .compare_to = compare_to, .sketch_memory = o->sketch_memory, .shard = o->shard,
    };

    if (kind == JOB_REPLAY) {
        ap_trace_reader *r;
        if ((st = ap_trace_reader_open(trace_file, &r, err))) goto out;
        const ap_trace *info = ap_trace_reader_info(r);
        const int n_head = info->n_head, trace_layers = info->n_layers;
        /* --layers selects among the trace's layers (all of them by default, or "all") */
        if (o->layers && strcmp(o->layers, "all") != 0) {
            st = cli_parse_layers(o->layers, 1 << 20, &layers, &n_layers, err);
        } else if ((layers = malloc((size_t)trace_layers * sizeof *layers))) {
            memcpy(layers, info->layers, (size_t)trace_layers * sizeof *layers);
            n_layers = trace_layers;
        } else {
            st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        }
        ap_trace_reader_close(r);
        if (st || (st = parse_heads(o->heads, n_head, &heads, &n_heads, err)) ||
            (st = fit_sketch_memory(o, params, n_policies, n_head, err)))
            goto out;
        input_source = strdup(trace_file);
        cfg.layers = layers, cfg.n_layers = n_layers, cfg.heads = heads, cfg.n_heads = n_heads;
        cfg.input_source = input_source;
        st = ap_study_replay(&cfg, trace_file, progress, &prog, summary, err);
        goto provenance;
    }

    ap_phase_mark("cli: start");
    /* the device's one-time costs are paid while the model loads (a process
     * of several picks its device in the study: it warms its own) */
    if (!(o->shard && ap_mpi_size() > 1)) ap_engine_warm_up(cfg.backend);
    if ((st = cli_load_model(o->model, o->tokenizer, &model, &tok, err))) goto out;
    ap_phase_mark("cli: model");
    if (!tok) {
        st = ap_error_set(err, AP_ERR_USAGE, "--model %s has no tokenizer; pass --tokenizer DIR", model->source);
        goto out;
    }
    if (o->input) {
        input_source = strdup(o->input);
    } else if (model->dir[0]) {
        /* the model's held-out evaluation text when it ships one */
        const size_t n = strlen(model->dir) + sizeof "/sample.txt";
        if ((input_source = malloc(n))) {
            snprintf(input_source, n, "%s/eval.txt", model->dir);
            if (access(input_source, R_OK) != 0) snprintf(input_source, n, "%s/sample.txt", model->dir);
        }
    } else {
        st = ap_error_set(err, AP_ERR_USAGE, "--model %s has no sample.txt; pass --input FILE", model->source);
        goto out;
    }
    if (!input_source) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        goto out;
    }
    if ((st = cli_read_input(input_source, &text, &n_text, err))) goto out;
    ap_sha256_hex(text, n_text, input_sha);
    char mid[16];
    snprintf(mid, sizeof mid, "%d", model->config.n_layer / 2);
    if (cfg.mode == AP_STUDY_EVAL) { /* the model's output, not a layer: one pseudo-layer -1 */
        if (!(layers = malloc(sizeof *layers))) st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        else layers[0] = -1, n_layers = 1;
    } else {
        st = cli_parse_layers(o->layers ? o->layers : mid, model->config.n_layer, &layers, &n_layers, err);
    }
    if (!st && cfg.mode != AP_STUDY_EVAL) st = parse_heads(o->heads, model->config.n_head, &heads, &n_heads, err);
    if (st || (st = fit_sketch_memory(o, params, n_policies, model->config.n_head, err)) ||
        (st = make_samples(o, model, tok, input_source, text, n_text, &samples, err)))
        goto out;
    ap_phase_mark("cli: samples");
    cfg.layers = layers, cfg.n_layers = n_layers, cfg.heads = heads, cfg.n_heads = n_heads;
    cfg.input_source = input_source;
    cfg.input_sha256 = input_sha;
    cfg.model_dtype = model->dtype;
    if (kind == JOB_TRACE) {
        double seconds = 0;
        if ((st = ap_study_trace(&cfg, model, &samples, progress, &prog, &seconds, err))) goto out;
        if (!o->quiet)
            printf("trace of %d samples, layers %s: %.2f s → %s\n", samples.n, o->layers ? o->layers : mid,
                   seconds, o->save);
        goto out;
    }
    st = ap_study_run(&cfg, model, &samples, progress, &prog, summary, err);
provenance:
    if (!st && !(summary->provenance_json = cli_provenance_json(argc, argv, started, cfg.backend == AP_BACKEND_CUDA)))
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
out:
    ap_engine_warm_up_wait(); /* (a study that failed before its engine) */
    free(params);
    free(layers);
    free(heads);
    free(text);
    free(input_source);
    ap_samples_free(&samples);
    ap_tokenizer_free(tok);
    ap_model_free(model);
    return st;
}

/* The flags checked before any work: every rank of an mpirun finds the same
 * verdict and agrees on it, so that one message is printed (rank 0's). */
static ap_status check_job(job_kind kind, int argc, char **argv, run_opts *o, ap_error *err)
{
    ap_status st = parse_run_opts(argc, argv, o, err);
    if (!st && o->help) return AP_OK;
    if (!st && kind != JOB_REPLAY && optind < argc)
        st = ap_error_set(err, AP_ERR_USAGE, "unexpected argument '%s' (see attnprobe --help)", argv[optind]);
    if (!st) st = check_opts(kind, o, argc - optind, err);
    ap_policy_params *params = NULL;
    int n_params = 0;
    const char *compare_to;
    if (!st) st = policies_of(o, &params, &n_params, &compare_to, err);
    free(params);
    return ap_mpi_agree(st, err);
}

static int job(job_kind kind, int argc, char **argv)
{
    run_opts o;
    ap_error err;
    ap_status st = check_job(kind, argc, argv, &o, &err);
    if (st) return cli_fail(st, &err);
    if (o.help) {
        if (ap_mpi_rank() == 0) {
            fputs(USAGE, stdout);
            cli_policy_usage(stdout);
        }
        return 0;
    }
    const char *trace_file = kind == JOB_REPLAY && optind < argc ? argv[optind] : NULL;
    /* under mpirun the ranks share the samples; rank 0 prints and writes */
    const int root = ap_mpi_rank() == 0;
    o.shard = 1;
    if (!root) o.quiet = 1;
    if (kind != JOB_TRACE && root && (has_format(o.format, "json") || has_format(o.format, "md") || has_format(o.format, "html")) &&
        (st = cli_make_dir("--out", o.out, &err)))
        return cli_fail(st, &err);
    catch_signals();
    ap_summary summary = {0};
    st = study_of(kind, &o, argc, argv, trace_file, &summary, &err);
    if (!st && kind != JOB_TRACE && root) st = write_outputs(&o, &summary, &err);
    ap_summary_free(&summary);
    return st ? cli_fail(st, &err) : 0;
}

int cmd_run(int argc, char **argv) { return job(JOB_RUN, argc, argv); }

/* attnprobe eval = attnprobe run --mode eval (docs/eval.md). */
int cmd_eval(int argc, char **argv)
{
    char **args = malloc(((size_t)argc + 3) * sizeof *args);
    if (!args) {
        ap_error err;
        ap_error_set(&err, AP_ERR_RUNTIME, "out of memory");
        return cli_fail(AP_ERR_RUNTIME, &err);
    }
    args[0] = argv[0], args[1] = "--mode", args[2] = "eval";
    for (int i = 1; i < argc; i++) args[i + 2] = argv[i];
    args[argc + 2] = NULL;
    const int code = job(JOB_RUN, argc + 2, args);
    free(args);
    return code;
}
int cmd_trace(int argc, char **argv) { return job(JOB_TRACE, argc, argv); }
int cmd_replay(int argc, char **argv) { return job(JOB_REPLAY, argc, argv); }

ap_status cli_run_check(int argc, char **argv, ap_error *err)
{
    run_opts o;
    ap_status st = parse_run_opts(argc, argv, &o, err);
    if (!st && optind < argc) st = ap_error_set(err, AP_ERR_USAGE, "unexpected argument '%s'", argv[optind]);
    if (!st) st = check_opts(JOB_RUN, &o, 0, err);
    ap_policy_params *params = NULL;
    int n = 0;
    const char *compare_to;
    if (!st) st = policies_of(&o, &params, &n, &compare_to, err);
    free(params);
    return st;
}

ap_status cli_run_cell(int argc, char **argv, int quiet, ap_summary *out, ap_error *err)
{
    run_opts o;
    ap_status st = parse_run_opts(argc, argv, &o, err);
    if (st) return st;
    o.quiet = quiet;
    if ((st = check_opts(JOB_RUN, &o, 0, err))) return st;
    catch_signals();
    return study_of(JOB_RUN, &o, argc, argv, NULL, out, err);
}
