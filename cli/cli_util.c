/* cli_util.c — helpers shared by the sub-commands. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "analysis/analysis.h"
#include "cli.h"
#include "study/study.h"

int cli_fail(ap_status code, const ap_error *err)
{
    /* a failure all ranks agreed on is reported once, by rank 0 */
    if (!ap_mpi_failure_reported()) {
        if (ap_mpi_size() > 1 && ap_mpi_rank() > 0) fprintf(stderr, "attnprobe (rank %d): %s\n", ap_mpi_rank(), err->msg);
        else fprintf(stderr, "attnprobe: %s\n", err->msg);
    }
    return (int)code;
}

ap_status cli_parse_int(const char *flag, const char *value, int lo, int hi, int *out, ap_error *err)
{
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end != '\0' || v < lo || v > hi)
        return ap_error_set(err, AP_ERR_USAGE, "%s %s: expected an integer in %d..%d", flag, value,
                            lo, hi);
    *out = (int)v;
    return AP_OK;
}

ap_status cli_parse_layers(const char *value, int n_layer, int **layers, int *n, ap_error *err)
{
    *layers = malloc((size_t)n_layer * sizeof **layers);
    *n = 0;
    if (!*layers) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    if (strcmp(value, "all") == 0) {
        for (int l = 0; l < n_layer; l++) (*layers)[(*n)++] = l;
        return AP_OK;
    }
    char *buf = strdup(value); /* a list of any length */
    if (!buf) {
        free(*layers);
        *layers = NULL;
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    }
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int l = -1;
        ap_status st = cli_parse_int("--layers", tok, 0, n_layer - 1, &l, err);
        if (st) {
            ap_error_set(err, AP_ERR_USAGE,
                         "--layers %s: \"%s\" is not a layer (accepted: all, or indices 0..%d "
                         "separated by commas)",
                         value, tok, n_layer - 1);
            free(*layers);
            free(buf); /* tok points into it: freed after the message */
            *layers = NULL;
            return AP_ERR_USAGE;
        }
        int dup = 0;
        for (int i = 0; i < *n; i++) dup |= (*layers)[i] == l;
        if (!dup) (*layers)[(*n)++] = l;
    }
    free(buf);
    if (*n == 0) {
        free(*layers);
        *layers = NULL;
        return ap_error_set(err, AP_ERR_USAGE, "--layers: empty list (accepted: all or 0..%d)",
                            n_layer - 1);
    }
    return AP_OK;
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int has_tokenizer_files(const char *dir)
{
    const char *names[] = {"vocab.json", "merges.txt", "encoder.json", "vocab.bpe"};
    char p[PATH_MAX + 32];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        if (access(p, F_OK) == 0) return 1;
    }
    return 0;
}

const char *cli_default_model(void)
{
    static char found[PATH_MAX + 64];
    const char *home = getenv("ATTNPROBE_HOME");
    if (home && *home) {
        snprintf(found, sizeof found, "%s/models/attnprobe-mini", home);
        if (is_dir(found)) return found;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return NULL;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash) return NULL;
    *slash = '\0';
    const char *rel[] = {"models/attnprobe-mini", "../share/attnprobe/models/attnprobe-mini"};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
        snprintf(found, sizeof found, "%s/%s", exe, rel[i]);
        if (is_dir(found)) return found;
    }
    return NULL;
}

ap_status cli_read_input(const char *path, char **data, size_t *n, ap_error *err)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f)
        return ap_error_set(err, AP_ERR_INPUT, "--input %s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (len + 1 >= cap) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) { free(buf); buf = NULL; break; }
            buf = bigger;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    if (f != stdin) fclose(f);
    if (!buf) return ap_error_set(err, AP_ERR_RUNTIME, "--input %s: out of memory", path);
    if (bad) {
        free(buf);
        return ap_error_set(err, AP_ERR_INPUT, "--input %s: read error", path);
    }
    buf[len] = '\0';
    *data = buf;
    *n = len;
    return AP_OK;
}

ap_status cli_load_model(const char *model_spec, const char *tokenizer_dir, ap_model **model,
                         ap_tokenizer **tok, ap_error *err)
{
    *model = NULL;
    if (tok) *tok = NULL;
    if (!model_spec) {
        model_spec = cli_default_model();
        if (!model_spec)
            return ap_error_set(err, AP_ERR_USAGE,
                                "--model not given and no bundled model found (looked in "
                                "$ATTNPROBE_HOME/models, next to the executable and under "
                                "share/attnprobe); pass --model DIR|FILE|random:SPEC");
    }
    ap_status st = ap_model_load(model_spec, model, err);
    if (st || !tok) return st;
    const char *dir = tokenizer_dir ? tokenizer_dir : (*model)->dir[0] ? (*model)->dir : NULL;
    if (!dir) return AP_OK; /* random and llm.c models carry no tokenizer */
    if (!tokenizer_dir && !has_tokenizer_files(dir)) return AP_OK; /* weights-only folder */
    st = ap_tokenizer_load_dir(dir, tok, err);
    if (st == AP_OK && ap_tokenizer_vocab_size(*tok) > (*model)->config.vocab_size)
        st = ap_error_set(err, AP_ERR_INPUT, "%s: tokenizer has %d ids, model only %d", dir,
                          ap_tokenizer_vocab_size(*tok), (*model)->config.vocab_size);
    if (st) {
        ap_tokenizer_free(*tok);
        *tok = NULL;
        ap_model_free(*model);
        *model = NULL;
        if (!tokenizer_dir) return ap_error_wrap(err, st, "--model %s", model_spec);
    }
    return st;
}

char *cli_provenance_json(int argc, char **argv, const char *started, int used_cuda)
{
    cJSON *p = cJSON_CreateObject();
    if (!p) return NULL;
    size_t n = 1;
    for (int i = 0; i < argc; i++) n += strlen(argv[i]) + 1;
    char *command = malloc(n);
    if (command) {
        command[0] = '\0';
        for (int i = 0; i < argc; i++) {
            if (i) strcat(command, " ");
            strcat(command, argv[i]);
        }
        cJSON_AddStringToObject(p, "command", command);
        free(command);
    }
    cJSON_AddStringToObject(p, "version", AP_VERSION);
    if (AP_GIT[0]) cJSON_AddStringToObject(p, "git", AP_GIT);
    ap_library_versions v;
    ap_engine_library_versions(&v);
    cJSON *lib = cJSON_AddObjectToObject(p, "libraries");
    cJSON_AddStringToObject(lib, "openblas", v.blas);
    cJSON_AddStringToObject(lib, "gsl", ap_analysis_gsl_version());
    cJSON_AddStringToObject(lib, "cjson", cJSON_Version());
    cJSON_AddStringToObject(lib, "pcre2", v.pcre2);
    if (used_cuda) {
        cJSON_AddNumberToObject(lib, "cuda_runtime", v.cuda_runtime);
        cJSON_AddNumberToObject(lib, "cuda_driver", v.cuda_driver);
    }
    cJSON_AddStringToObject(p, "started", started);
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) == 0) cJSON_AddStringToObject(p, "host", host);
    char *text = cJSON_PrintUnformatted(p);
    cJSON_Delete(p);
    return text;
}

void cli_utc_now(char out[32])
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

ap_status cli_make_dir(const char *flag, const char *dir, ap_error *err)
{
    char *path = strdup(dir);
    if (!path) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    ap_status st = AP_OK;
    for (char *p = path + 1; *p && !st; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            st = ap_error_set(err, AP_ERR_RUNTIME, "%s %s: cannot create %s: %s", flag, dir, path, strerror(errno));
        *p = '/';
    }
    if (!st && mkdir(path, 0755) != 0 && errno != EEXIST)
        st = ap_error_set(err, AP_ERR_RUNTIME, "%s %s: cannot create: %s", flag, dir, strerror(errno));
    if (!st && access(path, W_OK) != 0)
        st = ap_error_set(err, AP_ERR_RUNTIME, "%s %s: not writable: %s", flag, dir, strerror(errno));
    free(path);
    return st;
}

