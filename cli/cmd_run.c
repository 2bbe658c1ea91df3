/* cmd_run.c — the main job: run (trace + replay + report), trace (save a
 * reference trace) and replay (a saved trace). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "analysis/analysis.h"
#include "cli.h"
#include "reports/reports.h"
#include "tracer/tracer.h"

#define DEFAULT_TYPES "full,window,sink,random,h2o,tova,cms,count_sketch,race,race_kde"

typedef struct {
    const char *model, *tokenizer, *input, *layers, *heads, *types, *mode, *device, *precision;
    const char *out, *format, *align, *save, *granularity;
    int samples, max_length, warmup, stride, budget, sink, recent, width, depth, race_rows,
        race_bits, bootstrap, quiet, help, plain_update, threads;
    unsigned long seed;
} run_opts;

enum {
    O_MODEL = 1000, O_TOKENIZER, O_INPUT, O_LAYERS, O_HEADS, O_TYPES, O_MODE, O_DEVICE,
    O_PRECISION, O_OUT, O_FORMAT, O_ALIGN, O_SAVE, O_GRAN, O_SAMPLES, O_MAXLEN, O_WARMUP,
    O_STRIDE, O_BUDGET, O_SINK, O_RECENT, O_WIDTH, O_DEPTH, O_RROWS, O_RBITS, O_BOOT, O_SEED,
    O_QUIET, O_HELP, O_PLAIN, O_THREADS
};

static const struct option LONGOPTS[] = {
    {"model", required_argument, 0, O_MODEL}, {"tokenizer", required_argument, 0, O_TOKENIZER},
    {"input", required_argument, 0, O_INPUT}, {"layers", required_argument, 0, O_LAYERS},
    {"layer", required_argument, 0, O_LAYERS}, {"heads", required_argument, 0, O_HEADS},
    {"types", required_argument, 0, O_TYPES}, {"mode", required_argument, 0, O_MODE},
    {"device", required_argument, 0, O_DEVICE}, {"precision", required_argument, 0, O_PRECISION},
    {"out", required_argument, 0, O_OUT}, {"format", required_argument, 0, O_FORMAT},
    {"align", required_argument, 0, O_ALIGN}, {"save", required_argument, 0, O_SAVE},
    {"granularity", required_argument, 0, O_GRAN}, {"samples", required_argument, 0, O_SAMPLES},
    {"max-length", required_argument, 0, O_MAXLEN}, {"warmup", required_argument, 0, O_WARMUP},
    {"stride", required_argument, 0, O_STRIDE}, {"budget", required_argument, 0, O_BUDGET},
    {"sink", required_argument, 0, O_SINK}, {"recent", required_argument, 0, O_RECENT},
    {"width", required_argument, 0, O_WIDTH}, {"depth", required_argument, 0, O_DEPTH},
    {"race-rows", required_argument, 0, O_RROWS}, {"race-bits", required_argument, 0, O_RBITS},
    {"bootstrap", required_argument, 0, O_BOOT}, {"seed", required_argument, 0, O_SEED},
    {"plain-update", no_argument, 0, O_PLAIN}, {"quiet", no_argument, 0, O_QUIET},
    {"threads", required_argument, 0, O_THREADS},
    {"help", no_argument, 0, O_HELP}, {0, 0, 0, 0},
};

static const char USAGE[] =
    "usage: attnprobe [run] [options]            trace, replay the policies, report\n"
    "       attnprobe trace --save FILE [options] reference trace only\n"
    "       attnprobe replay FILE [options]       isolated replay of a saved trace\n\n"
    "input and model:\n"
    "  --model DIR|FILE|random:SPEC   default: the bundled attnprobe-mini\n"
    "  --input FILE|-                 default: the model folder's sample.txt\n"
    "  --samples N (2)  --max-length T (256)  --layers 6|0,6,11|all (middle layer)\n"
    "  --heads all|0,3 (all)\n"
    "replay:\n"
    "  --types LIST (" DEFAULT_TYPES ")\n"
    "  --budget B (64)  --sink S (4)  --recent R (16)  --granularity head|layer (head)\n"
    "  --width W (512)  --depth D (4)  --plain-update (Count-Min without conservative update)\n"
    "  --race-rows R (16)  --race-bits B (9)  --seed N (1)\n"
    "  --mode isolated|cascade (isolated)  --warmup W (64)  --stride S (16)\n"
    "  --threads N (0: one per core) isolated replays run in parallel; same results for any N\n"
    "  --device cpu|cuda|auto (cpu)  --precision fp32|tf32|bf16 (fp32)\n"
    "output:\n"
    "  --out DIR (attnprobe-out): writes DIR/summary.json  --format text,json (both)\n"
    "  --align position|index (position; index also shows the seed study's slot-index L1/RMS)\n"
    "  --bootstrap N (1000) resamples for the 95% CI  --quiet (no table, no progress)\n";

static ap_status parse_run_opts(int argc, char **argv, run_opts *o, ap_error *err)
{
    *o = (run_opts){.types = DEFAULT_TYPES, .mode = "isolated", .device = "cpu",
                    .precision = "fp32", .out = "attnprobe-out", .format = "text,json",
                    .align = "position", .granularity = "head", .samples = 2, .max_length = 256,
                    .warmup = 64, .stride = 16, .budget = 64, .sink = 4, .recent = 16, .width = 512,
                    .depth = 4, .race_rows = 16, .race_bits = 9, .bootstrap = 1000, .seed = 1};
    optind = 1;
    opterr = 0;
    int c;
    ap_status st = AP_OK;
    while ((c = getopt_long(argc, argv, "", LONGOPTS, NULL)) != -1 && !st) {
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
        case O_BUDGET: st = cli_parse_int("--budget", optarg, 1, 1 << 20, &o->budget, err); break;
        case O_SINK: st = cli_parse_int("--sink", optarg, 0, 1 << 20, &o->sink, err); break;
        case O_RECENT: st = cli_parse_int("--recent", optarg, 0, 1 << 20, &o->recent, err); break;
        case O_WIDTH: st = cli_parse_int("--width", optarg, 1, 1 << 26, &o->width, err); break;
        case O_DEPTH: st = cli_parse_int("--depth", optarg, 1, 64, &o->depth, err); break;
        case O_RROWS: st = cli_parse_int("--race-rows", optarg, 1, 4096, &o->race_rows, err); break;
        case O_RBITS: st = cli_parse_int("--race-bits", optarg, 1, 20, &o->race_bits, err); break;
        case O_BOOT: st = cli_parse_int("--bootstrap", optarg, 0, 1000000, &o->bootstrap, err); break;
        case O_SEED: {
            int seed;
            st = cli_parse_int("--seed", optarg, 0, 2147483647, &seed, err);
            o->seed = (unsigned long)seed;
            break;
        }
        case O_PLAIN: o->plain_update = 1; break;
        case O_THREADS: st = cli_parse_int("--threads", optarg, 0, 256, &o->threads, err); break;
        case O_QUIET: o->quiet = 1; break;
        case O_HELP: o->help = 1; break;
        default:
            st = ap_error_set(err, AP_ERR_USAGE, "%s: unknown option or missing value (see "
                              "attnprobe run --help)", argv[optind - 1]);
        }
    }
    if (st) return st;
    const struct { const char *flag, *value, *accepted; } choices[] = {
        {"--mode", o->mode, "isolated cascade"}, {"--device", o->device, "cpu cuda auto"},
        {"--precision", o->precision, "fp32 tf32 bf16"}, {"--align", o->align, "position index"},
        {"--granularity", o->granularity, "head layer"},
    };
    for (size_t i = 0; i < sizeof choices / sizeof choices[0]; i++) {
        char padded[64];
        snprintf(padded, sizeof padded, " %s ", choices[i].value);
        char accepted[64];
        snprintf(accepted, sizeof accepted, " %s ", choices[i].accepted);
        if (!*choices[i].value || strchr(choices[i].value, ' ') || !strstr(accepted, padded))
            return ap_error_set(err, AP_ERR_USAGE, "%s %s: accepted: %s", choices[i].flag,
                                choices[i].value, choices[i].accepted);
    }
    char fmt[128];
    snprintf(fmt, sizeof fmt, "%s", o->format);
    for (char *save = NULL, *f = strtok_r(fmt, ",", &save); f; f = strtok_r(NULL, ",", &save))
        if (strcmp(f, "text") != 0 && strcmp(f, "json") != 0)
            return ap_error_set(err, AP_ERR_USAGE, "--format %s: \"%s\" is not available (accepted: "
                                "text, json)", o->format, f);
    return AP_OK;
}

/* ---- progress ------------------------------------------------------------- */

typedef struct {
    int enabled;
} progress_state;

static void progress(void *ctx, const char *what, double fraction)
{
    progress_state *p = ctx;
    if (!p->enabled) return;
    int width = 30, filled = (int)(fraction * width + 0.5);
    fprintf(stderr, "\r%-14s [", what);
    for (int i = 0; i < width; i++) fputc(i < filled ? '#' : ' ', stderr);
    fprintf(stderr, "] %3.0f%%", fraction * 100);
    if (fraction >= 1.0) fprintf(stderr, "\r%*s\r", 60, "");
    fflush(stderr);
}

/* ---- accumulation of metrics (the row sink) -------------------------------- */

typedef struct {
    int n_layers, n_head;
    const int *trace_layers;
    const unsigned char *head_on;  /* [n_head] */
    ap_series *series;             /* [n_series] = [n_runs * AP_M_COUNT] */
    int n_series;
    double *head_sum, *head_cnt;   /* [n_runs * n_head * AP_M_COUNT] */
} accum;

/* The sink context of one replay: its rows' events say policy 0 in isolated
 * replays, so run_base places them (each run has its own series, so replays
 * of different runs may add rows concurrently). */
typedef struct {
    accum *a;
    int run_base; /* run index of (policy 0, layer 0) for this replay */
} run_sink;

static ap_status on_row(void *ctx, const ap_row_event *ev, ap_error *err)
{
    const run_sink *rs = ctx;
    accum *a = rs->a;
    if (!a->head_on[ev->head]) return AP_OK;
    int li = 0;
    while (li < a->n_layers && a->trace_layers[li] != ev->layer) li++;
    const int run = rs->run_base + ev->policy * a->n_layers + li;
    double m[AP_M_COUNT];
    ap_metrics_row(ev->p, ev->q, ev->kept, ev->n, ev->v, ev->o_p, ev->head_dim, m);
    for (int k = 0; k < AP_M_COUNT; k++) {
        ap_status st = ap_series_add(&a->series[(size_t)run * AP_M_COUNT + k], m[k], ev->sample, err);
        if (st) return st;
        if (!isnan(m[k])) {
            const size_t i = ((size_t)run * a->n_head + ev->head) * AP_M_COUNT + k;
            a->head_sum[i] += m[k];
            a->head_cnt[i] += 1;
        }
    }
    return AP_OK;
}

/* ---- helpers ---------------------------------------------------------------- */

static ap_status parse_types(const char *types, char names[][32], int *n, ap_error *err)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", types);
    *n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!ap_policy_known(t))
            return ap_error_set(err, AP_ERR_USAGE, "--types %s: unknown policy '%s' (accepted: %s)",
                                types, t, ap_policy_names());
        if (*n == 16) return ap_error_set(err, AP_ERR_USAGE, "--types: at most 16 policies");
        snprintf(names[(*n)++], 32, "%s", t);
    }
    if (*n == 0) return ap_error_set(err, AP_ERR_USAGE, "--types: empty list (accepted: %s)", ap_policy_names());
    return AP_OK;
}

static void policy_params(const run_opts *o, const char *name, ap_policy_params *p)
{
    ap_policy_params_default(p, name);
    p->budget = o->budget;
    p->sink = o->sink;
    p->recent = o->recent;
    p->width = o->width;
    p->depth = o->depth;
    p->conservative = !o->plain_update;
    p->race_rows = o->race_rows;
    p->race_bits = o->race_bits;
    p->granularity = strcmp(o->granularity, "layer") == 0 ? AP_GRAN_LAYER : AP_GRAN_HEAD;
    p->seed = o->seed;
}

/* The parameters that shape a policy's numbers, for the summary. */
static void run_params(const ap_policy_params *p, ap_report_run *r)
{
    const char *name = p->name;
    int sketch = !strcmp(name, "cms") || !strcmp(name, "count_sketch");
    int race = !strcmp(name, "race") || !strcmp(name, "race_kde");
    int n = 0;
#define PARAM(key, value) (snprintf(r->param_name[n], sizeof r->param_name[n], "%s", key), r->param_value[n++] = (value))
    if (strcmp(name, "full") != 0) PARAM("budget", p->budget);
    if (strcmp(name, "full") != 0 && strcmp(name, "window") != 0) {
        PARAM("sink", p->sink);
        PARAM("recent", p->recent);
    }
    if (sketch) {
        PARAM("width", p->width);
        PARAM("depth", p->depth);
    }
    if (!strcmp(name, "cms")) PARAM("conservative", p->conservative);
    if (race) {
        PARAM("race_rows", p->race_rows);
        PARAM("race_bits", p->race_bits);
    }
    if (sketch || race || !strcmp(name, "random")) PARAM("seed", (double)p->seed);
#undef PARAM
    r->n_params = n;
    snprintf(r->granularity, sizeof r->granularity, "%s", p->granularity == AP_GRAN_LAYER ? "layer" : "head");
}

static char *config_json(const run_opts *o, const int *layers, int n_layers)
{
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "mode", o->mode);
    cJSON_AddNumberToObject(c, "samples", o->samples);
    cJSON_AddNumberToObject(c, "max_length", o->max_length);
    cJSON_AddNumberToObject(c, "warmup", o->warmup);
    cJSON_AddNumberToObject(c, "stride", o->stride);
    cJSON *l = cJSON_AddArrayToObject(c, "layers");
    for (int i = 0; i < n_layers; i++) cJSON_AddItemToArray(l, cJSON_CreateNumber(layers[i]));
    cJSON_AddStringToObject(c, "heads", o->heads ? o->heads : "all");
    cJSON_AddStringToObject(c, "types", o->types);
    cJSON_AddNumberToObject(c, "budget", o->budget);
    cJSON_AddNumberToObject(c, "sink", o->sink);
    cJSON_AddNumberToObject(c, "recent", o->recent);
    cJSON_AddNumberToObject(c, "width", o->width);
    cJSON_AddNumberToObject(c, "depth", o->depth);
    cJSON_AddBoolToObject(c, "conservative_update", !o->plain_update);
    cJSON_AddNumberToObject(c, "race_rows", o->race_rows);
    cJSON_AddNumberToObject(c, "race_bits", o->race_bits);
    cJSON_AddStringToObject(c, "granularity", o->granularity);
    cJSON_AddStringToObject(c, "align", o->align);
    cJSON_AddNumberToObject(c, "seed", (double)o->seed);
    cJSON_AddNumberToObject(c, "bootstrap", o->bootstrap);
    cJSON_AddNumberToObject(c, "kl_epsilon", AP_KL_EPS);
    char *s = cJSON_PrintUnformatted(c);
    cJSON_Delete(c);
    return s;
}

static ap_status make_dir(const char *dir, ap_error *err)
{
    char path[1024];
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return ap_error_set(err, AP_ERR_RUNTIME, "--out %s: cannot create %s: %s", dir, path, strerror(errno));
        *p = '/';
    }
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return ap_error_set(err, AP_ERR_RUNTIME, "--out %s: cannot create: %s", dir, strerror(errno));
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

/* ---- the job ---------------------------------------------------------------- */

typedef enum { JOB_RUN, JOB_TRACE, JOB_REPLAY } job_kind;

static int job(job_kind kind, int argc, char **argv)
{
    run_opts o;
    ap_error err;
    ap_status st = parse_run_opts(argc, argv, &o, &err);
    if (st) return cli_fail(st, &err);
    if (o.help) {
        fputs(USAGE, stdout);
        return 0;
    }
    const char *trace_file = NULL;
    if (kind == JOB_REPLAY) {
        if (optind != argc - 1) {
            ap_error_set(&err, AP_ERR_USAGE, "replay takes one trace file (written by attnprobe "
                         "trace --save FILE)");
            return cli_fail(AP_ERR_USAGE, &err);
        }
        trace_file = argv[optind];
    } else if (optind < argc) {
        ap_error_set(&err, AP_ERR_USAGE, "unexpected argument '%s' (see attnprobe --help)", argv[optind]);
        return cli_fail(AP_ERR_USAGE, &err);
    }
    if (kind == JOB_TRACE && !o.save) {
        ap_error_set(&err, AP_ERR_USAGE, "trace needs --save FILE");
        return cli_fail(AP_ERR_USAGE, &err);
    }
    if (kind == JOB_REPLAY && strcmp(o.mode, "cascade") == 0) {
        ap_error_set(&err, AP_ERR_USAGE, "--mode cascade needs the model: use attnprobe run");
        return cli_fail(AP_ERR_USAGE, &err);
    }
    char names[16][32];
    int n_policies = 0;
    if ((st = parse_types(o.types, names, &n_policies, &err))) return cli_fail(st, &err);
    ap_policy_params params[16];
    for (int i = 0; i < n_policies; i++) {
        policy_params(&o, names[i], &params[i]);
        ap_policy *probe; /* validate parameters before any work */
        if ((st = ap_policy_create(&params[i], 1, 1, &probe, &err))) return cli_fail(st, &err);
        ap_policy_free(probe);
    }

    progress_state prog = {!o.quiet && isatty(2)};
    ap_model *model = NULL;
    ap_tokenizer *tok = NULL;
    ap_engine *engine = NULL;
    ap_samples samples = {0};
    ap_trace trace = {0};
    char *text = NULL, *cfg = NULL;
    size_t n_text = 0;
    int *layers = NULL, n_layers = 0;
    unsigned char *head_on = NULL;
    accum acc = {0};
    ap_summary summary = {0};
    ap_replay_cost cost[16];
    char input_source[1100] = "", input_sha[65] = "";
    int need_model = kind != JOB_REPLAY;

    if (need_model) {
        if ((st = cli_load_model(o.model, o.tokenizer, &model, &tok, &err))) goto out;
        const ap_config *c = &model->config;
        if (!tok) {
            st = ap_error_set(&err, AP_ERR_USAGE, "--model %s has no tokenizer; pass --tokenizer DIR", model->source);
            goto out;
        }
        if (o.input) {
            snprintf(input_source, sizeof input_source, "%s", o.input);
        } else if (model->dir[0]) {
            snprintf(input_source, sizeof input_source, "%s/sample.txt", model->dir);
        } else {
            st = ap_error_set(&err, AP_ERR_USAGE, "--model %s has no sample.txt; pass --input FILE", model->source);
            goto out;
        }
        if ((st = cli_read_input(input_source, &text, &n_text, &err))) goto out;
        ap_sha256_hex(text, n_text, input_sha);
        char mid[16];
        snprintf(mid, sizeof mid, "%d", c->n_layer / 2);
        if ((st = cli_parse_layers(o.layers ? o.layers : mid, c->n_layer, &layers, &n_layers, &err))) goto out;
        int max_len = o.max_length < c->n_ctx ? o.max_length : c->n_ctx;
        int first = o.warmup % o.stride ? (o.warmup / o.stride + 1) * o.stride : o.warmup;
        if (first + 1 > max_len) {
            st = ap_error_set(&err, AP_ERR_USAGE, "--warmup %d and --stride %d measure no step of a "
                              "%d-token sample (the first measured step is %d)",
                              o.warmup, o.stride, max_len, first);
            goto out;
        }
        if ((st = ap_samples_make(tok, text, n_text, o.samples, max_len, first + 1, &samples, &err))) goto out;
        if (samples.n == 0) {
            st = ap_error_set(&err, AP_ERR_INPUT, "--input %s: no sample of at least %d tokens "
                              "(%d documents read); lower --warmup or give a longer text",
                              input_source, first + 1, samples.documents);
            goto out;
        }
        if (!o.quiet && samples.n < o.samples)
            fprintf(stderr, "attnprobe: %s gives %d of the %d samples asked for\n", input_source,
                    samples.n, o.samples);
        if ((st = ap_engine_create(model, pick_backend(o.device), pick_precision(o.precision), &engine, &err)))
            goto out;
        if ((st = ap_trace_run(engine, model, &samples, layers, n_layers, &trace, progress, &prog, &err)))
            goto out;
        cfg = config_json(&o, layers, n_layers);
        snprintf(trace.config_json, sizeof trace.config_json, "%s", cfg ? cfg : "{}");
    } else {
        if ((st = ap_trace_load(trace_file, &trace, &err))) goto out;
        snprintf(input_source, sizeof input_source, "%s", trace_file);
        snprintf(input_sha, sizeof input_sha, "%s", trace.file_sha256);
        /* --layers selects among the trace's layers */
        layers = malloc((size_t)trace.n_layers * sizeof *layers);
        if (!layers) {
            st = ap_error_set(&err, AP_ERR_RUNTIME, "out of memory");
            goto out;
        }
        if (o.layers) {
            int *sel, n_sel;
            if ((st = cli_parse_layers(o.layers, 256, &sel, &n_sel, &err))) goto out;
            for (int i = 0; i < n_sel; i++) {
                if (ap_trace_layer_index(&trace, sel[i]) < 0) {
                    st = ap_error_set(&err, AP_ERR_USAGE, "--layers: the trace %s has no layer %d",
                                      trace_file, sel[i]);
                    free(sel);
                    goto out;
                }
                layers[n_layers++] = sel[i];
            }
            free(sel);
        } else {
            for (int i = 0; i < trace.n_layers; i++) layers[n_layers++] = trace.layers[i];
        }
        cfg = config_json(&o, layers, n_layers);
    }
    if (kind == JOB_TRACE) {
        if ((st = ap_trace_save(&trace, o.save, &err))) goto out;
        if (!o.quiet)
            printf("trace of %d samples, layers %s: %.2f s → %s\n", trace.n_samples,
                   o.layers ? o.layers : "(middle)", trace.seconds, o.save);
        goto out;
    }

    /* ---- replay ---- */
    const int H = trace.n_head;
    head_on = malloc((size_t)H);
    if (!head_on) {
        st = ap_error_set(&err, AP_ERR_RUNTIME, "out of memory");
        goto out;
    }
    memset(head_on, o.heads ? 0 : 1, (size_t)H);
    if (o.heads && strcmp(o.heads, "all") == 0) memset(head_on, 1, (size_t)H);
    else if (o.heads) {
        int *hs, n_hs;
        if ((st = cli_parse_layers(o.heads, H, &hs, &n_hs, &err))) {
            st = ap_error_set(&err, AP_ERR_USAGE, "--heads %s: accepted: all, or heads 0..%d "
                              "separated by commas", o.heads, H - 1);
            goto out;
        }
        for (int i = 0; i < n_hs; i++) head_on[hs[i]] = 1;
        free(hs);
    }
    const int n_runs = n_policies * n_layers;
    acc = (accum){n_layers, H, layers, head_on,
                  calloc((size_t)n_runs * AP_M_COUNT, sizeof(ap_series)), n_runs * AP_M_COUNT,
                  calloc((size_t)n_runs * H * AP_M_COUNT, sizeof(double)),
                  calloc((size_t)n_runs * H * AP_M_COUNT, sizeof(double))};
    summary.runs = calloc((size_t)n_runs, sizeof *summary.runs);
    if (!acc.series || !acc.head_sum || !acc.head_cnt || !summary.runs) {
        st = ap_error_set(&err, AP_ERR_RUNTIME, "out of memory");
        goto out;
    }
    run_sink all_runs = {&acc, 0};
    ap_replay_opts ro = {o.warmup, o.stride, on_row, &all_runs, progress, &prog, 0};
    double replay_s[16 * 256] = {0};
    double kv[16 * 256] = {0}, sk[16 * 256] = {0};
    if (strcmp(o.mode, "cascade") == 0) {
        /* the trace's layers are all measured in cascade: restrict to --layers */
        if ((st = ap_replay_cascade(engine, &trace, params, n_policies, &ro, cost, &err))) goto out;
        for (int p = 0; p < n_policies; p++)
            for (int l = 0; l < n_layers; l++) {
                replay_s[p * n_layers + l] = cost[p].seconds;
                kv[p * n_layers + l] = cost[p].kv_bytes;
                sk[p * n_layers + l] = cost[p].sketch_bytes;
            }
    } else {
        /* one job per (policy, layer), in parallel (--threads) */
        ap_isolated_job *jobs = calloc((size_t)n_runs, sizeof *jobs);
        run_sink *sinks = calloc((size_t)n_runs, sizeof *sinks);
        if (!jobs || !sinks) {
            free(jobs), free(sinks);
            st = ap_error_set(&err, AP_ERR_RUNTIME, "out of memory");
            goto out;
        }
        for (int p = 0; p < n_policies; p++)
            for (int l = 0; l < n_layers; l++) {
                const int run = p * n_layers + l;
                sinks[run] = (run_sink){&acc, p * n_layers}; /* on_row adds the layer */
                jobs[run] = (ap_isolated_job){.li = ap_trace_layer_index(&trace, layers[l]), .params = &params[p],
                                              .sink_ctx = &sinks[run]};
            }
        st = ap_replay_isolated_jobs(&trace, jobs, n_runs, &ro, o.threads, &err);
        for (int run = 0; run < n_runs && !st; run++) {
            replay_s[run] = jobs[run].cost.seconds;
            kv[run] = jobs[run].cost.kv_bytes;
            sk[run] = jobs[run].cost.sketch_bytes;
        }
        free(jobs), free(sinks);
        if (st) goto out;
    }
    int tokens = 0;
    for (int s = 0; s < trace.n_samples; s++) tokens += trace.len[s];
    for (int p = 0; p < n_policies; p++)
        for (int l = 0; l < n_layers; l++) {
            const int run = p * n_layers + l;
            ap_report_run *r = &summary.runs[summary.n_runs++];
            snprintf(r->policy, sizeof r->policy, "%.31s", params[p].name);
            run_params(&params[p], r);
            r->layer = layers[l];
            for (int m = 0; m < AP_M_COUNT; m++)
                if ((st = ap_stats_compute(&acc.series[(size_t)run * AP_M_COUNT + m], trace.n_samples,
                                           o.bootstrap, o.seed + (uint64_t)m, &r->stats[m], &err)))
                    goto out;
            r->n_head = H;
            if (!(r->head_mean = malloc((size_t)H * AP_M_COUNT * sizeof *r->head_mean))) {
                st = ap_error_set(&err, AP_ERR_RUNTIME, "out of memory");
                goto out;
            }
            for (int i = 0; i < H * AP_M_COUNT; i++) {
                const size_t k = (size_t)run * H * AP_M_COUNT + i;
                r->head_mean[i] = acc.head_cnt[k] > 0 ? acc.head_sum[k] / acc.head_cnt[k] : NAN;
            }
            r->kv_bytes = kv[run];
            r->sketch_bytes = sk[run];
            r->replay_s = replay_s[run];
            r->tokens_per_s = replay_s[run] > 0 ? tokens / replay_s[run] : 0;
        }
    snprintf(summary.tool_version, sizeof summary.tool_version, "%s", AP_VERSION);
    snprintf(summary.model_source, sizeof summary.model_source, "%s", trace.model_source);
    snprintf(summary.model_sha256, sizeof summary.model_sha256, "%s", trace.model_sha256);
    summary.n_layer = trace.model_n_layer;
    summary.n_embd = trace.n_head * trace.head_dim;
    summary.vocab = trace.model_vocab;
    summary.n_head = H;
    snprintf(summary.input_source, sizeof summary.input_source, "%s", input_source);
    snprintf(summary.input_sha256, sizeof summary.input_sha256, "%s", input_sha);
    summary.samples = trace.n_samples;
    summary.tokens = tokens;
    summary.config_json = cfg;
    cfg = NULL;
    snprintf(summary.backend, sizeof summary.backend, "%s", engine && pick_backend(o.device) == AP_BACKEND_CUDA ? "cuda" : "cpu");
    snprintf(summary.device_name, sizeof summary.device_name, "%s", engine ? ap_engine_device_name(engine) : "(replay of a saved trace)");
    snprintf(summary.precision, sizeof summary.precision, "%s", o.precision);
    summary.trace_s = trace.seconds;
    if (strstr(o.format, "json")) {
        char path[1100];
        if ((st = make_dir(o.out, &err))) goto out;
        snprintf(path, sizeof path, "%s/summary.json", o.out);
        if ((st = ap_summary_write_json(&summary, path, &err))) goto out;
        if (!o.quiet) fprintf(stderr, "attnprobe: wrote %s\n", path);
    }
    if (strstr(o.format, "text") && !o.quiet) {
        ap_summary_print_table(&summary, stdout);
        if (strcmp(o.align, "index") == 0) {
            printf("\n--align index: the seed study's comparison (compacted cache by slot index, zero-padded)\n");
            printf("%-13s %5s %12s %12s   (aligned by position: %s)\n", "policy", "layer", "index_l1", "index_rms", "l1 / l2");
            for (int r = 0; r < summary.n_runs; r++) {
                const ap_report_run *run = &summary.runs[r];
                printf("%-13s %5d %12.6f %12.6f   %.6f / %.6f\n", run->policy, run->layer,
                       run->stats[AP_M_INDEX_L1].mean, run->stats[AP_M_INDEX_RMS].mean,
                       run->stats[AP_M_L1].mean, run->stats[AP_M_L2].mean);
            }
        }
    }
out:
    for (int i = 0; acc.series && i < acc.n_series; i++) ap_series_free(&acc.series[i]);
    free(acc.series);
    free(acc.head_sum);
    free(acc.head_cnt);
    free(head_on);
    ap_summary_free(&summary);
    free(cfg);
    free(layers);
    free(text);
    ap_trace_free(&trace);
    ap_samples_free(&samples);
    ap_engine_free(engine);
    ap_tokenizer_free(tok);
    ap_model_free(model);
    return st ? cli_fail(st, &err) : 0;
}

int cmd_run(int argc, char **argv) { return job(JOB_RUN, argc, argv); }
int cmd_trace(int argc, char **argv) { return job(JOB_TRACE, argc, argv); }
int cmd_replay(int argc, char **argv) { return job(JOB_REPLAY, argc, argv); }
