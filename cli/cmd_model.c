/* cmd_model.c — info, tokenize and prefill: commands about one model. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

typedef struct {
    const char *model, *tokenizer, *input, *layers, *device;
    int max_length;
    int help;
} model_opts;

enum { OPT_MODEL = 1000, OPT_TOKENIZER, OPT_INPUT, OPT_LAYERS, OPT_MAXLEN, OPT_DEVICE, OPT_HELP };

/* Parses the options these commands share; leaves positional args in argv[optind..]. */
static ap_status parse_opts(int argc, char **argv, model_opts *o, ap_error *err)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, OPT_MODEL},
        {"tokenizer", required_argument, 0, OPT_TOKENIZER},
        {"input", required_argument, 0, OPT_INPUT},
        {"layers", required_argument, 0, OPT_LAYERS},
        {"layer", required_argument, 0, OPT_LAYERS},
        {"max-length", required_argument, 0, OPT_MAXLEN},
        {"device", required_argument, 0, OPT_DEVICE},
        {"help", no_argument, 0, OPT_HELP},
        {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->max_length = 256;
    o->device = "cpu";
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL: o->model = optarg; break;
        case OPT_TOKENIZER: o->tokenizer = optarg; break;
        case OPT_INPUT: o->input = optarg; break;
        case OPT_LAYERS: o->layers = optarg; break;
        case OPT_DEVICE: o->device = optarg; break;
        case OPT_MAXLEN: {
            ap_status st = cli_parse_int("--max-length", optarg, 1, 1 << 20, &o->max_length, err);
            if (st) return st;
            break;
        }
        case OPT_HELP: o->help = 1; break;
        default:
            return ap_error_set(err, AP_ERR_USAGE, "%s: unknown option or missing value (see --help)",
                                argv[optind - 1]);
        }
    }
    if (strcmp(o->device, "cpu") != 0 && strcmp(o->device, "cuda") != 0 &&
        strcmp(o->device, "auto") != 0)
        return ap_error_set(err, AP_ERR_USAGE, "--device %s: accepted: cpu, cuda, auto", o->device);
    return AP_OK;
}

int cmd_info(int argc, char **argv)
{
    model_opts o;
    ap_error err;
    ap_status st = parse_opts(argc, argv, &o, &err);
    if (st) return cli_fail(st, &err);
    if (o.help) {
        printf("usage: attnprobe info [--model DIR|FILE|random:SPEC] [--tokenizer DIR]\n"
               "Prints the model's configuration, parameter count and weights checksum.\n");
        return 0;
    }
    ap_model *m;
    ap_tokenizer *tok;
    if ((st = cli_load_model(o.model, o.tokenizer, &m, &tok, &err))) return cli_fail(st, &err);
    const ap_config *c = &m->config;
    printf("model        %s\n", m->source);
    printf("dtype        %s\n", m->dtype);
    printf("n_layer      %d\nn_head       %d\nn_embd       %d\nhead_dim     %d\n", c->n_layer,
           c->n_head, c->n_embd, c->n_embd / c->n_head);
    printf("n_ctx        %d\nvocab_size   %d\n", c->n_ctx, c->vocab_size);
    if (c->padded_vocab != c->vocab_size) printf("padded_vocab %d\n", c->padded_vocab);
    printf("ln_eps       %g\n", (double)c->ln_eps);
    printf("parameters   %zu (%.2f M)\n", ap_model_param_count(c), ap_model_param_count(c) / 1e6);
    printf("sha256       %s\n", m->sha256);
    if (tok) printf("tokenizer    %d ids, <|endoftext|> = %d\n", ap_tokenizer_vocab_size(tok),
                    ap_tokenizer_eot(tok));
    else printf("tokenizer    none\n");
    ap_tokenizer_free(tok);
    ap_model_free(m);
    return 0;
}

/* Text to tokenize: the positional arguments joined by spaces, --input, or
 * else the model folder's sample.txt (the bundled sample text). */
static ap_status read_text(const model_opts *o, const ap_model *m, int argc, char **argv,
                           char **text, size_t *n, ap_error *err)
{
    if (!o->input && optind >= argc && m && m->dir[0]) {
        char sample[1100];
        snprintf(sample, sizeof sample, "%s/sample.txt", m->dir);
        FILE *f = fopen(sample, "rb");
        if (f) {
            fclose(f);
            return cli_read_input(sample, text, n, err);
        }
    }
    if (o->input) {
        if (optind < argc)
            return ap_error_set(err, AP_ERR_USAGE, "give either --input or a text argument, not both");
        return cli_read_input(o->input, text, n, err);
    }
    if (optind >= argc)
        return ap_error_set(err, AP_ERR_USAGE, "no text: give --input FILE (or -) or a text argument");
    size_t total = 0;
    for (int i = optind; i < argc; i++) total += strlen(argv[i]) + 1;
    char *buf = malloc(total + 1);
    if (!buf) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    buf[0] = '\0';
    for (int i = optind; i < argc; i++) {
        if (i > optind) strcat(buf, " ");
        strcat(buf, argv[i]);
    }
    *text = buf;
    *n = strlen(buf);
    return AP_OK;
}

int cmd_tokenize(int argc, char **argv)
{
    model_opts o;
    ap_error err;
    ap_status st = parse_opts(argc, argv, &o, &err);
    if (st) return cli_fail(st, &err);
    if (o.help) {
        printf("usage: attnprobe tokenize [--model M | --tokenizer DIR] [--input FILE|-] [TEXT...]\n"
               "Prints the GPT-2 byte-level BPE token ids of the text, one line, space-separated.\n"
               "With --tokenizer only, no model is loaded.\n");
        return 0;
    }
    ap_model *m = NULL;
    ap_tokenizer *tok = NULL;
    if (o.tokenizer && !o.model)
        st = ap_tokenizer_load_dir(o.tokenizer, &tok, &err);
    else
        st = cli_load_model(o.model, o.tokenizer, &m, &tok, &err);
    if (st) return cli_fail(st, &err);
    if (!tok) {
        ap_model_free(m);
        ap_error_set(&err, AP_ERR_USAGE, "--model %s has no tokenizer files; pass --tokenizer DIR",
                     o.model ? o.model : "(default)");
        return cli_fail(AP_ERR_USAGE, &err);
    }
    char *text = NULL;
    size_t n = 0;
    int *ids = NULL;
    size_t n_ids = 0;
    if (!(st = read_text(&o, m, argc, argv, &text, &n, &err)))
        st = ap_tokenizer_encode(tok, text, n, &ids, &n_ids, &err);
    if (!st) {
        for (size_t i = 0; i < n_ids; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
    }
    free(ids);
    free(text);
    ap_tokenizer_free(tok);
    ap_model_free(m);
    return st ? cli_fail(st, &err) : 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Summary of one layer's attention [H,T,T]: mean mass on position 0 (sink)
 * and on t-1 (previous token), over rows t >= 1, per head. */
static void print_attention_summary(int layer, const float *attn, int H, int T)
{
    printf("layer %2d  head:", layer);
    for (int h = 0; h < H; h++) printf(" %5d", h);
    printf("\n  sink mass     ");
    for (int h = 0; h < H; h++) {
        double s = 0;
        for (int t = 1; t < T; t++) s += attn[((size_t)h * T + t) * T];
        printf(" %5.3f", T > 1 ? s / (T - 1) : 0.0);
    }
    printf("\n  previous tok  ");
    for (int h = 0; h < H; h++) {
        double s = 0;
        for (int t = 1; t < T; t++) s += attn[((size_t)h * T + t) * T + t - 1];
        printf(" %5.3f", T > 1 ? s / (T - 1) : 0.0);
    }
    printf("\n");
}

int cmd_prefill(int argc, char **argv)
{
    model_opts o;
    ap_error err;
    ap_status st = parse_opts(argc, argv, &o, &err);
    if (st) return cli_fail(st, &err);
    if (o.help) {
        printf("usage: attnprobe prefill [--model M] [--input FILE|-] [TEXT...] [--layers L]\n"
               "                        (default text: the model folder's sample.txt)\n"
               "                        [--max-length T] [--device cpu|cuda|auto]\n"
               "One full-cache forward pass over the first T tokens (default 256): per captured\n"
               "layer (default: the middle one) the mean attention each head puts on position 0\n"
               "and on the previous token; the most likely next token; the time it took.\n");
        return 0;
    }
    ap_model *m = NULL;
    ap_tokenizer *tok = NULL;
    ap_engine *e = NULL;
    char *text = NULL;
    int *ids = NULL, *layers = NULL, n_layers = 0;
    size_t n_text = 0, n_ids = 0;
    float **attn = NULL, *logits = NULL;
    if ((st = cli_load_model(o.model, o.tokenizer, &m, &tok, &err))) goto out;
    const ap_config *c = &m->config;
    if (!tok) {
        st = ap_error_set(&err, AP_ERR_USAGE, "--model %s has no tokenizer; pass --tokenizer DIR",
                          m->source);
        goto out;
    }
    if ((st = read_text(&o, m, argc, argv, &text, &n_text, &err)) ||
        (st = ap_tokenizer_encode(tok, text, n_text, &ids, &n_ids, &err)))
        goto out;
    if (n_ids == 0) {
        st = ap_error_set(&err, AP_ERR_INPUT, "the input has no tokens");
        goto out;
    }
    int T = (int)n_ids < o.max_length ? (int)n_ids : o.max_length;
    if (T > c->n_ctx) T = c->n_ctx;
    char mid[16];
    snprintf(mid, sizeof mid, "%d", c->n_layer / 2);
    if ((st = cli_parse_layers(o.layers ? o.layers : mid, c->n_layer, &layers, &n_layers, &err)))
        goto out;
    ap_backend backend = AP_BACKEND_CPU;
    if (strcmp(o.device, "cuda") == 0 || (strcmp(o.device, "auto") == 0 && ap_cuda_available()))
        backend = AP_BACKEND_CUDA;
    if ((st = ap_engine_create(m, backend, AP_PRECISION_FP32, &e, &err))) goto out;
    attn = calloc((size_t)n_layers, sizeof *attn);
    logits = malloc((size_t)c->vocab_size * sizeof *logits);
    if (!attn || !logits) {
        st = ap_error_set(&err, AP_ERR_RUNTIME, "out of memory");
        goto out;
    }
    for (int i = 0; i < n_layers; i++) {
        attn[i] = malloc((size_t)c->n_head * T * T * sizeof(float));
        if (!attn[i]) {
            st = ap_error_set(&err, AP_ERR_RUNTIME, "out of memory for attention of %d tokens", T);
            goto out;
        }
    }
    ap_capture cap = {.n_capture = n_layers, .layers = layers, .attn = attn, .logits = logits,
                      .logits_last_only = 1};
    double t0 = now_s();
    if ((st = ap_engine_prefill(e, ids, T, &cap, &err))) goto out;
    double dt = now_s() - t0;
    printf("model %s (%d layers, %d heads, width %d) on %s\n", m->source, c->n_layer, c->n_head,
           c->n_embd, ap_engine_device_name(e));
    printf("prefill of %d tokens: %.3f s, %.0f tokens/s\n\n", T, dt, T / dt);
    for (int i = 0; i < n_layers; i++) print_attention_summary(layers[i], attn[i], c->n_head, T);
    int best = 0;
    for (int v = 1; v < c->vocab_size; v++) best = logits[v] > logits[best] ? v : best;
    char *piece = NULL;
    size_t n_piece;
    if (ap_tokenizer_decode(tok, &best, 1, &piece, &n_piece, NULL) == AP_OK)
        printf("\nnext token: %d \"%s\" (logit %.3f)\n", best, piece, (double)logits[best]);
    free(piece);
out:
    for (int i = 0; attn && i < n_layers; i++) free(attn[i]);
    free(attn);
    free(logits);
    free(layers);
    free(ids);
    free(text);
    ap_engine_free(e);
    ap_tokenizer_free(tok);
    ap_model_free(m);
    return st ? cli_fail(st, &err) : 0;
}
