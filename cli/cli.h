/* cli.h — sub-commands of the attnprobe executable and their shared helpers. */
#ifndef AP_CLI_H
#define AP_CLI_H

#include <getopt.h>
#include <stdio.h>

#include "engine/engine.h"
#include "reports/reports.h"
#include "sketch/policy.h"

/* Each sub-command takes argv after its name and returns an exit code. */
int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_prefill(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_trace(int argc, char **argv);
int cmd_replay(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_batch(int argc, char **argv);
int cmd_eval(int argc, char **argv);

/* What batch needs of run (cmd_run.c): the flags of `attnprobe run` given as
 * argv checked before any work, and the study they ask for into out
 * (nothing printed but the progress bar unless quiet, nothing written). */
ap_status cli_run_check(int argc, char **argv, ap_error *err);
ap_status cli_run_cell(int argc, char **argv, int quiet, ap_summary *out, ap_error *err);

/* ---- the policies' flags (policy_flags.c), from the policy registry ---- */

enum { CLI_SWEEP_MAX = 64, CLI_POLICY_FLAGS_MAX = 48 }; /* room: 10 fixed + CLI_POLICY_FLAGS_MAX flags */
/* A policy option's values: one, or a sweep's list (n = 0: not given). */
typedef struct {
    int n, v[CLI_SWEEP_MAX];
} cli_int_list;

typedef struct {
    cli_int_list budget, sink, recent;
    cli_int_list value[CLI_POLICY_FLAGS_MAX]; /* the registry's parameters, by flag index */
    int plain_update;
    const char *allocate;                     /* uniform, pyramid, adakv */
    double beta, alpha;
    ap_quant quant;                           /* --quant, --group-size, --residual */
} cli_policy_opts;

void cli_policy_opts_default(cli_policy_opts *o);
/* The policy flags as getopt_long entries with codes first_code, first_code
 * + 1, ... (out has room for 16 + CLI_POLICY_FLAGS_MAX); returns their number. */
int cli_policy_longopts(struct option *out, int first_code);
/* The value of the flag with code first_code + index. */
ap_status cli_policy_flag(cli_policy_opts *o, int index, const char *value, ap_error *err);
/* The registry's parameter flags: how many, and the name of each (race_bits). */
int cli_policy_flag_count(void);
const char *cli_policy_flag_name(int i);
void cli_policy_usage(FILE *f);
/* --types (a list, or all) into one parameter set per policy (malloc'ed). */
ap_status cli_policy_types(const cli_policy_opts *o, const char *types, ap_policy_params **params, int *n,
                           ap_error *err);
/* Every policy once per combination of the listed values that shape it. */
ap_status cli_policy_sweeps(const cli_policy_opts *o, ap_policy_params **params, int *n, ap_error *err);
/* Each parameter set can make its policy (the error names the values). */
ap_status cli_policy_probe(const ap_policy_params *p, int n, ap_error *err);

/* Creates dir and its parents, writable (flag names it in errors). */
ap_status cli_make_dir(const char *flag, const char *dir, ap_error *err);

/* Prints "attnprobe: <msg>" to stderr and returns code. */
int cli_fail(ap_status code, const ap_error *err);

/* Parses a decimal int in [lo, hi] given to flag; on failure fills err. */
ap_status cli_parse_int(const char *flag, const char *value, int lo, int hi, int *out, ap_error *err);

/* Parses "6", "0,6,11" or "all" into layers (malloc'ed). */
ap_status cli_parse_layers(const char *value, int n_layer, int **layers, int *n, ap_error *err);

/* The bundled model folder (models/attnprobe-mini), or NULL when none is
 * found next to the executable, under the install prefix or $ATTNPROBE_HOME. */
const char *cli_default_model(void);

/* Reads a whole file, or stdin for "-". */
ap_status cli_read_input(const char *path, char **data, size_t *n, ap_error *err);

/* Loads the model and, when it has one (or --tokenizer names one), its tokenizer. */
ap_status cli_load_model(const char *model_spec, const char *tokenizer_dir, ap_model **model,
                         ap_tokenizer **tok, ap_error *err);

/* The summary's provenance (a JSON object, malloc'ed): the command line,
 * version and git description, the libraries' versions (CUDA's when used),
 * the start time (cli_utc_now) and the host. */
char *cli_provenance_json(int argc, char **argv, const char *started, int used_cuda);
void cli_utc_now(char out[32]);

#endif
