/* policy_flags.c — the policies' options of run, trace and replay, from the
 * policy registry (sketch/policy.h): each parameter a policy declares is a
 * flag (--race-bits for race_bits) shared by the policies that declare it,
 * with its range and help; lists make sweeps. The flags become one
 * ap_policy_params per run of the study (docs/policies.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* ---- the flags ------------------------------------------------------------------- */

/* The distinct parameter names of the registry, in registry order. */
typedef struct {
    const ap_policy_param *decl; /* the first policy's declaration */
    char flag[40];               /* "--race-bits" */
    char users[160];             /* "race, race_kde" */
} param_flag;

static param_flag FLAGS[CLI_POLICY_FLAGS_MAX];
static int n_flags = -1;

static void build_flags(void)
{
    if (n_flags >= 0) return;
    n_flags = 0;
    for (int i = 0; i < ap_policy_count(); i++) {
        const ap_policy_info *info = ap_policy_info_at(i);
        for (int k = 0; k < ap_policy_n_params(info); k++) {
            const ap_policy_param *d = &info->params[k];
            int f = 0;
            while (f < n_flags && strcmp(FLAGS[f].decl->name, d->name)) f++;
            if (f == CLI_POLICY_FLAGS_MAX) continue; /* test_registry checks that every parameter has its flag */
            if (f == n_flags) {
                FLAGS[n_flags].decl = d;
                snprintf(FLAGS[f].flag, sizeof FLAGS[f].flag, "--%s", d->name);
                for (char *c = FLAGS[f].flag; *c; c++) *c = *c == '_' ? '-' : *c;
                n_flags++;
            }
            const size_t used = strlen(FLAGS[f].users);
            snprintf(FLAGS[f].users + used, sizeof FLAGS[f].users - used, "%s%s", used ? ", " : "", info->name);
        }
    }
}

int cli_policy_flag_count(void)
{
    build_flags();
    return n_flags;
}

const char *cli_policy_flag_name(int i)
{
    build_flags();
    return i >= 0 && i < n_flags ? FLAGS[i].decl->name : NULL;
}

/* The flags every policy shares, before the registry's. */
enum { F_BUDGET, F_SINK, F_RECENT, F_PLAIN, F_ALLOCATE, F_BETA, F_ALPHA, F_QUANT, F_GROUP, F_RESIDUAL, F_FIXED };
static const char *const FIXED[F_FIXED] = {"budget", "sink", "recent", "plain-update", "allocate", "beta",
                                           "alpha-safeguard", "quant", "group-size", "residual"};

int cli_policy_longopts(struct option *out, int first_code)
{
    build_flags();
    int n = 0;
    for (int i = 0; i < F_FIXED; i++)
        out[n++] = (struct option){FIXED[i], i == F_PLAIN ? no_argument : required_argument, 0, first_code + i};
    for (int f = 0; f < n_flags; f++)
        out[n++] = (struct option){FLAGS[f].flag + 2, required_argument, 0, first_code + F_FIXED + f};
    return n;
}

/* The base's defaults (sketch/policy.c), the same for every policy. */
static ap_policy_params base_defaults(void)
{
    ap_policy_params d;
    ap_policy_params_default(&d, "full");
    return d;
}

void cli_policy_opts_default(cli_policy_opts *o)
{
    const ap_policy_params d = base_defaults();
    memset(o, 0, sizeof *o);
    o->allocate = "uniform";
    o->beta = d.beta;
    o->alpha = d.alpha;
    o->quant = d.quant;
}

/* "16,32,64": distinct integers in [lo, hi], at most CLI_SWEEP_MAX. */
static ap_status parse_int_list(const char *flag, const char *text, int lo, int hi, cli_int_list *list, ap_error *err)
{
    list->n = 0;
    for (const char *t = text;;) {
        const size_t w = strcspn(t, ",");
        char item[32];
        if (w == 0 || w >= sizeof item)
            return ap_error_set(err, AP_ERR_USAGE, "%s %s: accepted: integers %d..%d separated by commas", flag,
                                text, lo, hi);
        memcpy(item, t, w);
        item[w] = '\0';
        int v;
        ap_status st = cli_parse_int(flag, item, lo, hi, &v, err);
        if (st) return st;
        for (int i = 0; i < list->n; i++)
            if (list->v[i] == v) return ap_error_set(err, AP_ERR_USAGE, "%s %s: %d is listed twice", flag, text, v);
        if (list->n == CLI_SWEEP_MAX)
            return ap_error_set(err, AP_ERR_USAGE, "%s %s: at most %d values", flag, text, CLI_SWEEP_MAX);
        list->v[list->n++] = v;
        if (!t[w]) break;
        t += w + 1;
    }
    return AP_OK;
}

static ap_status parse_real(const char *flag, const char *text, double lo, double hi, double *out, ap_error *err)
{
    char *end;
    const double v = strtod(text, &end);
    if (end == text || *end || !(v >= lo && v <= hi))
        return ap_error_set(err, AP_ERR_USAGE, "%s %s: accepted: a number in [%g, %g]", flag, text, lo, hi);
    *out = v;
    return AP_OK;
}

ap_status cli_policy_flag(cli_policy_opts *o, int index, const char *value, ap_error *err)
{
    switch (index) {
    case F_BUDGET: return parse_int_list("--budget", value, 1, 1 << 20, &o->budget, err);
    case F_SINK: return parse_int_list("--sink", value, 0, 1 << 20, &o->sink, err);
    case F_RECENT: return parse_int_list("--recent", value, 0, 1 << 20, &o->recent, err);
    case F_PLAIN: o->plain_update = 1; return AP_OK;
    case F_ALLOCATE:
        if (strcmp(value, "uniform") && strcmp(value, "pyramid") && strcmp(value, "adakv"))
            return ap_error_set(err, AP_ERR_USAGE, "--allocate %s: accepted: uniform, pyramid, adakv", value);
        o->allocate = value;
        return AP_OK;
    case F_BETA: return parse_real("--beta", value, 1, 1e6, &o->beta, err);
    case F_ALPHA: return parse_real("--alpha-safeguard", value, 0, 1, &o->alpha, err);
    case F_QUANT: {
        const char *const names[4] = {"none", "kivi2", "kivi4", "int8"};
        const int bits[4] = {0, 2, 4, 8};
        for (int i = 0; i < 4; i++)
            if (!strcmp(value, names[i])) {
                o->quant.bits = bits[i];
                return AP_OK;
            }
        return ap_error_set(err, AP_ERR_USAGE, "--quant %s: accepted: none, kivi2, kivi4, int8", value);
    }
    case F_GROUP: return cli_parse_int("--group-size", value, 1, 4096, &o->quant.group, err);
    case F_RESIDUAL: return cli_parse_int("--residual", value, 0, 1 << 20, &o->quant.residual, err);
    }
    const int f = index - F_FIXED;
    if (f < 0 || f >= cli_policy_flag_count()) return ap_error_set(err, AP_ERR_USAGE, "unknown policy option");
    return parse_int_list(FLAGS[f].flag, value, FLAGS[f].decl->lo, FLAGS[f].decl->hi, &o->value[f], err);
}

void cli_policy_usage(FILE *f)
{
    build_flags();
    const ap_policy_params d = base_defaults();
    fprintf(f, "policies (--types all: every one):\n");
    for (int i = 0; i < ap_policy_count(); i++) {
        const ap_policy_info *info = ap_policy_info_at(i);
        fprintf(f, "  %-13s %s\n", info->name, info->summary);
    }
    fprintf(f, "policy options (each takes a list too, 16,32,64: every policy it shapes runs once per\n"
               "combination of the values, all on one reference trace):\n"
               "  --budget B (%d)  --sink S (%d)  --recent R (%d)   positions kept a set; protected first/last\n",
            d.budget, d.sink, d.recent);
    for (int k = 0; k < n_flags; k++) {
        char head[64];
        snprintf(head, sizeof head, "%s N (%d)", FLAGS[k].flag, FLAGS[k].decl->def);
        fprintf(f, "  %-22s %s; %d..%d [%s]\n", head, FLAGS[k].decl->help, FLAGS[k].decl->lo, FLAGS[k].decl->hi,
                FLAGS[k].users);
    }
    fprintf(f, "  --plain-update         Count-Min without conservative update (as --conservative 0)\n"
               "  --allocate uniform|pyramid|adakv (uniform)  how a budget is shared: pyramid, per-layer\n"
               "                 budgets falling with depth (PyramidKV; --beta X (%g)); adakv, one pool a\n"
               "                 layer shared by its heads (AdaKV; --alpha-safeguard X (%g) of the budget\n"
               "                 a head keeps at least)\n"
               "  --quant none|kivi2|kivi4|int8 (none)  the retained cache quantised as KIVI does: keys per\n"
               "                 channel over --group-size N (%d) positions, values per position over N\n"
               "                 channels, the last --residual R (%d) positions exact (isolated mode)\n",
            d.beta, d.alpha, d.quant.group, d.quant.residual);
}

/* ---- the parameter sets ----------------------------------------------------------- */

/* A policy's parameters from the flags (the first value of each list). */
static void params_of(const cli_policy_opts *o, const char *name, ap_policy_params *q)
{
    ap_policy_params_default(q, name);
    if (o->budget.n) q->budget = o->budget.v[0];
    if (o->sink.n) q->sink = o->sink.v[0];
    if (o->recent.n) q->recent = o->recent.v[0];
    if (o->plain_update) ap_policy_param_set(q, "conservative", 0);
    for (int f = 0; f < n_flags; f++)
        if (o->value[f].n) ap_policy_param_set(q, FLAGS[f].decl->name, o->value[f].v[0]);
    q->allocate = !strcmp(o->allocate, "pyramid") ? AP_ALLOC_PYRAMID
                  : !strcmp(o->allocate, "adakv") ? AP_ALLOC_ADAKV
                                                  : AP_ALLOC_UNIFORM;
    q->beta = o->beta;
    q->alpha = o->alpha;
    q->quant = o->quant;
}

/* --types: known, distinct policies ("all": every registered one). */
ap_status cli_policy_types(const cli_policy_opts *o, const char *types, ap_policy_params **params, int *n,
                           ap_error *err)
{
    build_flags();
    *params = NULL;
    *n = 0;
    const int all = !strcmp(types, "all");
    const size_t len = strlen(types);
    const size_t cap = (all ? (size_t)ap_policy_count() : len / 2 + 1) + 1; /* one name per 2 bytes, and full */
    ap_policy_params *p = calloc(cap, sizeof *p);
    if (!p) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    for (int i = 0; all && i < ap_policy_count(); i++) params_of(o, ap_policy_info_at(i)->name, &p[(*n)++]);
    for (const char *t = types; !all && *t;) {
        const size_t w = strcspn(t, ",");
        char name[32];
        snprintf(name, sizeof name, "%.*s", (int)(w < 31 ? w : 31), t);
        if (w >= 32 || !ap_policy_known(name)) {
            free(p);
            return ap_error_set(err, AP_ERR_USAGE, "--types: unknown policy '%.*s' (accepted: %s, or all)",
                                (int)(w < 64 ? w : 64), t, ap_policy_names());
        }
        for (int i = 0; i < *n; i++)
            if (!strcmp(p[i].name, name)) {
                free(p);
                return ap_error_set(err, AP_ERR_USAGE, "--types: %s is listed twice", name);
            }
        params_of(o, name, &p[(*n)++]);
        t += w + (t[w] == ',');
    }
    if (*n == 0) {
        free(p);
        return ap_error_set(err, AP_ERR_USAGE, "--types: empty list (accepted: %s, or all)", ap_policy_names());
    }
    *params = p;
    return AP_OK;
}

/* Sweeps: each policy once per combination of the listed values of the
 * options that shape it (the budget for all but full; sink and recent for
 * the policies that protect positions; a registry parameter for the
 * policies that declare it). The last option varies fastest. */
enum { SWEEP_RUNS_MAX = 4096 };
ap_status cli_policy_sweeps(const cli_policy_opts *o, ap_policy_params **params, int *n, ap_error *err)
{
    build_flags();
    const int n_lists = 3 + n_flags;
    const cli_int_list *lists[3 + CLI_POLICY_FLAGS_MAX] = {&o->budget, &o->sink, &o->recent};
    for (int f = 0; f < n_flags; f++) lists[3 + f] = &o->value[f];
    int swept = 0;
    for (int k = 0; k < n_lists; k++) swept |= lists[k]->n > 1;
    if (!swept) return AP_OK;
    ap_policy_params *out = NULL;
    int m = 0, cap = 0;
    for (int i = 0; i < *n; i++) {
        const ap_policy_params *b = &(*params)[i];
        const ap_policy_info *info = ap_policy_find(b->name);
        int count[3 + CLI_POLICY_FLAGS_MAX], total = 1, dummy;
        for (int k = 0; k < n_lists; k++) {
            const int matters = k == 0 ? !info->never_evicts
                                : k < 3 ? info->protects
                                        : ap_policy_param_get(b, FLAGS[k - 3].decl->name, &dummy);
            count[k] = matters && lists[k]->n > 1 ? lists[k]->n : 1;
            total *= count[k];
        }
        if (m + total > SWEEP_RUNS_MAX) {
            free(out);
            return ap_error_set(err, AP_ERR_USAGE, "the sweep makes more than %d policy runs a layer; list fewer "
                                "values", SWEEP_RUNS_MAX);
        }
        if (m + total > cap) {
            cap = (m + total) * 2;
            ap_policy_params *grown = realloc(out, (size_t)cap * sizeof *out);
            if (!grown) {
                free(out);
                return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
            }
            out = grown;
        }
        for (int c = 0; c < total; c++) {
            ap_policy_params q = *b;
            int rest = c;
            for (int k = n_lists - 1; k >= 0; k--) {
                if (count[k] > 1) {
                    const int v = lists[k]->v[rest % count[k]];
                    if (k == 0) q.budget = v;
                    else if (k == 1) q.sink = v;
                    else if (k == 2) q.recent = v;
                    else ap_policy_param_set(&q, FLAGS[k - 3].decl->name, v);
                }
                rest /= count[k];
            }
            out[m++] = q;
        }
    }
    free(*params);
    *params = out;
    *n = m;
    return AP_OK;
}

/* Every parameter set can make its policy: checked before any work. */
ap_status cli_policy_probe(const ap_policy_params *p, int n, ap_error *err)
{
    for (int i = 0; i < n; i++) {
        ap_policy *probe;
        ap_status st = ap_policy_create(&p[i], 1, 1, &probe, err);
        if (st) {
            char given[512];
            int used = snprintf(given, sizeof given, "--budget %d --sink %d --recent %d", p[i].budget, p[i].sink,
                                p[i].recent);
            const ap_policy_info *info = ap_policy_find(p[i].name);
            for (int k = 0; info && k < ap_policy_n_params(info) && used < (int)sizeof given; k++) {
                char flag[40];
                snprintf(flag, sizeof flag, "%s", info->params[k].name);
                for (char *c = flag; *c; c++) *c = *c == '_' ? '-' : *c;
                used += snprintf(given + used, sizeof given - used, " --%s %d", flag, p[i].value[k]);
            }
            return ap_error_wrap(err, st, "%s", given);
        }
        ap_policy_free(probe);
    }
    return AP_OK;
}
