/* report.c — reports of several summaries (docs/reports.md): tables with
 * chosen metric columns in text or Markdown, two runs side by side, and the
 * charts their data supports. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "report_charts.h"

/* ---- metric columns ------------------------------------------------------------ */

ap_status ap_report_set_metrics(ap_report_set *set, const char *list, ap_error *err)
{
    static const int DEFAULTS[] = {AP_M_KL, AP_M_COSINE, AP_M_MASS, AP_M_TOP8};
    set->n_metrics = 0;
    set->metrics_given = list != NULL;
    if (!list) {
        for (size_t i = 0; i < sizeof DEFAULTS / sizeof DEFAULTS[0]; i++) set->metrics[set->n_metrics++] = DEFAULTS[i];
        return AP_OK;
    }
    for (const char *t = list;;) {
        const size_t w = strcspn(t, ",");
        char name[32];
        snprintf(name, sizeof name, "%.*s", (int)(w < 31 ? w : 31), t);
        const int m = w < 31 ? ap_metric_from_name(name) : -1;
        if (m < 0 || set->n_metrics == AP_M_COUNT) {
            char names[512] = "";
            for (int k = 0; k < AP_M_COUNT; k++)
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", k ? ", " : "", ap_metric_name(k));
            return ap_error_set(err, AP_ERR_USAGE, "--metrics %s: \"%.*s\" is not a metric (accepted: %s)", list,
                                (int)(w < 64 ? w : 64), t, names);
        }
        set->metrics[set->n_metrics++] = m;
        if (!t[w]) break;
        t += w + 1;
    }
    return AP_OK;
}

void ap_summary_config_text(const ap_summary *s, const char *key, char *out, size_t n)
{
    out[0] = '\0';
    cJSON *c = s->config_json ? cJSON_Parse(s->config_json) : NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    if (cJSON_IsString(v)) {
        snprintf(out, n, "%s", v->valuestring);
    } else if (v) {
        char *t = cJSON_PrintUnformatted(v);
        if (t) snprintf(out, n, "%s", t);
        free(t);
    }
    cJSON_Delete(c);
}

/* ---- what tells runs apart -------------------------------------------------------- */

/* What tells a set's runs apart, found once for the set: whether its
 * summaries measured different things (model, text, samples), whether their
 * modes differ, each summary's mode, and for each (policy, parameter)
 * whether the runs' values differ. */
typedef struct {
    int inputs_vary, modes_vary;
    char (*mode)[16];   /* [set->n] */
    struct variation {
        char policy[32], param[24];
        double value;
        int varies;
    } *v;
    int n_v;
} run_context;

static void context_free(run_context *c)
{
    free(c->mode);
    free(c->v);
    *c = (run_context){0};
}

static int context_make(const ap_report_set *set, run_context *c)
{
    *c = (run_context){0};
    int total = 0;
    for (int i = 0; i < set->n; i++) total += set->summaries[i].n_runs * AP_MAX_PARAMS;
    c->mode = calloc((size_t)set->n + 1, sizeof *c->mode);
    c->v = calloc((size_t)total + 1, sizeof *c->v);
    if (!c->mode || !c->v) {
        context_free(c);
        return -1;
    }
    for (int i = 0; i < set->n; i++) {
        const ap_summary *a = &set->summaries[0], *b = &set->summaries[i];
        ap_summary_config_text(b, "mode", c->mode[i], sizeof c->mode[i]);
        c->inputs_vary |= strcmp(a->model_sha256, b->model_sha256) || strcmp(a->input_sha256, b->input_sha256) ||
                          a->samples != b->samples || a->tokens != b->tokens;
        c->modes_vary |= strcmp(c->mode[0], c->mode[i]) != 0;
        for (int r = 0; r < b->n_runs; r++) {
            const ap_report_run *run = &b->runs[r];
            for (int p = 0; p < run->n_params; p++) {
                int k = 0;
                while (k < c->n_v && (strcmp(c->v[k].policy, run->policy) || strcmp(c->v[k].param, run->param_name[p])))
                    k++;
                if (k == c->n_v) {
                    snprintf(c->v[k].policy, sizeof c->v[k].policy, "%s", run->policy);
                    snprintf(c->v[k].param, sizeof c->v[k].param, "%s", run->param_name[p]);
                    c->v[k].value = run->param_value[p];
                    c->n_v++;
                }
                c->v[k].varies |= c->v[k].value != run->param_value[p];
            }
        }
    }
    return 0;
}

static int param_varies(const run_context *c, const char *policy, const char *param)
{
    for (int k = 0; k < c->n_v; k++)
        if (!strcmp(c->v[k].policy, policy) && !strcmp(c->v[k].param, param)) return c->v[k].varies;
    return 0;
}

/* A series' name: the policy, the parameters other than skip whose values
 * differ between the set's runs of that policy, the mode when the set has
 * both, and the summary's label when the summaries measured different things. */
static void series_name(const ap_report_set *set, const run_context *c, int si, const ap_report_run *r,
                        const char *skip, int with_mode, char *out, size_t n)
{
    size_t used = (size_t)snprintf(out, n, "%s", r->policy);
    for (int p = 0; p < r->n_params && used < n; p++) {
        if (skip && !strcmp(r->param_name[p], skip)) continue;
        if (param_varies(c, r->policy, r->param_name[p]))
            used += (size_t)snprintf(out + used, n - used, " %s=%g", r->param_name[p], r->param_value[p]);
    }
    if (with_mode && c->modes_vary && used < n) used += (size_t)snprintf(out + used, n - used, " [%s]", c->mode[si]);
    if (c->inputs_vary && used < n) snprintf(out + used, n - used, " (%s)", set->labels[si]);
}

/* Names of runs among their own summary's runs: what tells them apart is
 * found once a summary (names_make), then each run named from it. */
typedef struct {
    const char *label;
    ap_report_set one;
    run_context c;
    int ok;
} run_names;

static void names_make(run_names *nm, const ap_summary *s, const char *label)
{
    nm->label = label;
    nm->one = (ap_report_set){.n = 1, .summaries = s, .labels = &nm->label};
    nm->ok = context_make(&nm->one, &nm->c) == 0;
}

static void name_of(const run_names *nm, const ap_report_run *r, char *out, size_t n)
{
    if (nm->ok) series_name(&nm->one, &nm->c, 0, r, NULL, 0, out, n);
    else snprintf(out, n, "%s", r->policy); /* out of memory: the policy alone */
}

static void names_free(run_names *nm)
{
    if (nm->ok) context_free(&nm->c);
}

/* ---- tables --------------------------------------------------------------------- */

/* The metric columns of a summary's table: the set's, or for an eval
 * summary without columns asked for, the next-token metrics. */
static const int NEXT_COLUMNS[4] = {AP_M_NLL, AP_M_NEXT_KL, AP_M_NEXT_TOP1, AP_M_ARGMAX_RANK};
static void columns_of(const ap_report_set *set, const ap_summary *s, const int **cols, int *n)
{
    char mode[16];
    ap_summary_config_text(s, "mode", mode, sizeof mode);
    if (!set->metrics_given && !strcmp(mode, "eval")) *cols = NEXT_COLUMNS, *n = 4;
    else *cols = set->metrics, *n = set->n_metrics;
}

static void print_row_cells(const ap_report_run *r, const int *cols, int n_cols, int markdown, FILE *f)
{
    for (int k = 0; k < n_cols; k++) {
        const ap_stats *st = &r->stats[cols[k]];
        char cell[64];
        if (!st->n || !isfinite(st->mean)) snprintf(cell, sizeof cell, "–");
        else if (isfinite(st->ci_lo)) snprintf(cell, sizeof cell, "%.4f [%.4f, %.4f]", st->mean, st->ci_lo, st->ci_hi);
        else snprintf(cell, sizeof cell, "%.4f", st->mean);
        fprintf(f, markdown ? " %s |" : " %26s", cell);
    }
}

void ap_report_print_tables(const ap_report_set *set, int markdown, FILE *f)
{
    for (int i = 0; i < set->n; i++) {
        const ap_summary *s = &set->summaries[i];
        char mode[32];
        ap_summary_config_text(s, "mode", mode, sizeof mode);
        const int *cols;
        int n_cols;
        columns_of(set, s, &cols, &n_cols);
        fprintf(f, markdown ? "### %s\n\n" : "== %s ==\n", set->labels[i]);
        fprintf(f, markdown ? "%s on %s: %d samples, %d tokens, %s replay; mean [95%% CI]\n\n"
                            : "%s on %s: %d samples, %d tokens, %s replay; mean [95%% CI]\n",
                s->model_source, s->input_source, s->samples, s->tokens, mode);
        if (markdown) {
            fputs("| run | layer |", f);
            for (int k = 0; k < n_cols; k++) fprintf(f, " %s |", ap_metric_name(cols[k]));
            fputs(" KV fp16, model |\n|---|---:|", f);
            for (int k = 0; k < n_cols; k++) fputs("---:|", f);
            fputs("---:|\n", f);
        } else {
            fprintf(f, "%-28s %5s", "run", "layer");
            for (int k = 0; k < n_cols; k++) fprintf(f, " %26s", ap_metric_name(cols[k]));
            fprintf(f, " %14s\n", "KV fp16 model");
        }
        run_names names;
        names_make(&names, s, set->labels[i]);
        for (int r = 0; r < s->n_runs; r++) {
            const ap_report_run *run = &s->runs[r];
            char name[160];
            name_of(&names, run, name, sizeof name);
            ap_report_memory mem;
            ap_report_memory_of(run, s->n_layer, s->n_embd, s->n_head, s->model_dtype, &mem);
            if (markdown) fprintf(f, "| %s | %d |", name, run->layer);
            else fprintf(f, "%-28s %5d", name, run->layer);
            print_row_cells(run, cols, n_cols, markdown, f);
            fprintf(f, markdown ? " %.3f MiB |\n" : " %10.3f MiB\n", mem.model_fp16 / 1048576.0);
        }
        names_free(&names);
        fputc('\n', f);
    }
}

static const ap_report_run *twin_of(const ap_summary *s, const ap_report_run *like)
{
    char want[512], key[512];
    ap_report_run_key(like, want, sizeof want);
    for (int i = 0; i < s->n_runs; i++) {
        ap_report_run_key(&s->runs[i], key, sizeof key);
        if (!strcmp(s->runs[i].policy, like->policy) && s->runs[i].layer == like->layer && !strcmp(key, want))
            return &s->runs[i];
    }
    return NULL;
}

void ap_report_print_diff(const ap_report_set *set, int markdown, FILE *f)
{
    const ap_summary *a = &set->summaries[0], *b = &set->summaries[1];
    fprintf(f, markdown ? "### %s against %s\n\n" : "== %s against %s ==\n", set->labels[1], set->labels[0]);
    if (markdown) {
        fputs("| run | layer |", f);
        for (int k = 0; k < set->n_metrics; k++) fprintf(f, " %s A | B | B − A |", ap_metric_name(set->metrics[k]));
        fputs("\n|---|---:|", f);
        for (int k = 0; k < set->n_metrics; k++) fputs("---:|---:|---:|", f);
        fputc('\n', f);
    } else {
        fprintf(f, "%-28s %5s", "run", "layer");
        for (int k = 0; k < set->n_metrics; k++) fprintf(f, " %30s", ap_metric_name(set->metrics[k]));
        fprintf(f, "\n%-34s", "");
        for (int k = 0; k < set->n_metrics; k++) fprintf(f, " %9s %9s %10s", "A", "B", "B - A");
        fputc('\n', f);
    }
    int unmatched = 0;
    run_names names;
    names_make(&names, a, set->labels[0]);
    for (int r = 0; r < a->n_runs; r++) {
        const ap_report_run *ra = &a->runs[r], *rb = twin_of(b, ra);
        if (!rb) {
            unmatched++;
            continue;
        }
        char name[160];
        name_of(&names, ra, name, sizeof name);
        if (markdown) fprintf(f, "| %s | %d |", name, ra->layer);
        else fprintf(f, "%-28s %5d", name, ra->layer);
        for (int k = 0; k < set->n_metrics; k++) {
            const double x = ra->stats[set->metrics[k]].mean, y = rb->stats[set->metrics[k]].mean;
            fprintf(f, markdown ? " %.4f | %.4f | %+.4f |" : " %9.4f %9.4f %+10.4f", x, y, y - x);
        }
        fputc('\n', f);
    }
    names_free(&names);
    if (unmatched) fprintf(f, "(%d run%s of A not in B)\n", unmatched, unmatched == 1 ? "" : "s");
    fputc('\n', f);
}

/* ---- charts --------------------------------------------------------------------- */

static void *bag_alloc(report_bag *b, size_t bytes)
{
    if (b->n == b->cap) {
        const int cap = b->cap ? b->cap * 2 : 16;
        void **grown = realloc(b->p, (size_t)cap * sizeof *grown);
        if (!grown) return NULL;
        b->p = grown, b->cap = cap;
    }
    void *p = calloc(1, bytes ? bytes : 1);
    if (p) b->p[b->n++] = p;
    return p;
}

static char *bag_strdup(report_bag *b, const char *s)
{
    char *p = bag_alloc(b, strlen(s) + 1);
    if (p) strcpy(p, s);
    return p;
}

void report_charts_free(report_chart *charts, int n)
{
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < charts[i].bag.n; k++) free(charts[i].bag.p[k]);
        free(charts[i].bag.p);
        charts[i].bag = (report_bag){0};
    }
}

/* One run of the set with what the charts group it by. */
typedef struct {
    int summary;
    const ap_report_run *run;
    char series[160];        /* series name without the budget */
    char series_nomode[160]; /* ... and without the mode */
    char mode[16];
    double budget;
} point;

static int collect(const ap_report_set *set, point **out, int *n)
{
    int total = 0;
    for (int i = 0; i < set->n; i++) total += set->summaries[i].n_runs;
    point *p = calloc((size_t)total + 1, sizeof *p);
    run_context c;
    if (!p || context_make(set, &c)) {
        free(p);
        return -1;
    }
    int k = 0;
    for (int i = 0; i < set->n; i++)
        for (int r = 0; r < set->summaries[i].n_runs; r++, k++) {
            p[k].summary = i;
            p[k].run = &set->summaries[i].runs[r];
            series_name(set, &c, i, p[k].run, "budget", 1, p[k].series, sizeof p[k].series);
            series_name(set, &c, i, p[k].run, "budget", 0, p[k].series_nomode, sizeof p[k].series_nomode);
            snprintf(p[k].mode, sizeof p[k].mode, "%s", c.mode[i]);
            p[k].budget = ap_report_run_param(p[k].run, "budget");
        }
    context_free(&c);
    *out = p;
    *n = total;
    return 0;
}

/* Distinct series names in first-seen order (indices into pts). */
static int distinct_series(const point *pts, int n, int *first, int use_nomode)
{
    int m = 0;
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int j = 0; j < m && !seen; j++)
            seen = !strcmp(use_nomode ? pts[first[j]].series_nomode : pts[first[j]].series,
                           use_nomode ? pts[i].series_nomode : pts[i].series);
        if (!seen) first[m++] = i;
    }
    return m;
}

static int cmp_int_fn(const void *a, const void *b)
{
    const int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The middle of the probed layers: the layer the single-layer charts show. */
static int middle_layer(const point *pts, int n)
{
    int *layers = malloc((size_t)n * sizeof *layers), m = 0;
    if (!layers) return -1;
    for (int i = 0; i < n; i++) {
        int seen = pts[i].run->layer < 0; /* eval runs have no layer */
        for (int k = 0; k < m; k++) seen |= layers[k] == pts[i].run->layer;
        if (!seen) layers[m++] = pts[i].run->layer;
    }
    qsort(layers, (size_t)m, sizeof *layers, cmp_int_fn);
    const int mid = m ? layers[(m - 1) / 2] : -1;
    free(layers);
    return mid;
}

/* The budget most runs have (the smallest of equals): the heatmaps' budget. */
static double common_budget(const point *pts, int n)
{
    double best = NAN;
    int best_count = 0;
    for (int i = 0; i < n; i++) {
        int count = 0;
        for (int j = 0; j < n; j++) count += pts[j].budget == pts[i].budget;
        if (count > best_count || (count == best_count && pts[i].budget < best)) best = pts[i].budget, best_count = count;
    }
    return best;
}

static const char *metric_title(int m)
{
    switch (m) {
    case AP_M_KL: return "KL(reference || policy)";
    case AP_M_COSINE: return "cosine similarity";
    case AP_M_MASS: return "attention mass retained";
    case AP_M_TOP8: return "top-8 recall";
    case AP_M_NLL: return "perplexity";
    case AP_M_NEXT_KL: return "next-token KL(full || policy)";
    case AP_M_NEXT_TOP1: return "top-1 agreement with full";
    default: return ap_metric_name(m);
    }
}

/* What a chart shows of a metric's mean or bound: perplexity for the NLL. */
static double shown(int metric, double v) { return metric == AP_M_NLL ? exp(v) : v; }

/* "layer 6", or for eval runs (layer -1) what they measure. */
static void where_text(int layer, char *out, size_t n)
{
    if (layer < 0) snprintf(out, n, "next token, every layer capped");
    else snprintf(out, n, "layer %d", layer);
}

/* fidelity against budget: one line per series, the 95% CI as a band */
static ap_status chart_budget(const point *pts, int n, int layer, int metric, report_chart *c)
{
    int *first = malloc(((size_t)n + 1) * sizeof *first);
    double *budgets = malloc(((size_t)n + 1) * sizeof *budgets);
    if (!first || !budgets) {
        free(first), free(budgets);
        return AP_ERR_RUNTIME;
    }
    const int n_series = distinct_series(pts, n, first, 0);
    ap_chart_series *series = bag_alloc(&c->bag, (size_t)n_series * sizeof *series);
    int used = 0;
    for (int s = 0; series && s < n_series; s++) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if (!strcmp(pts[i].series, pts[first[s]].series) && pts[i].run->layer == layer && isfinite(pts[i].budget))
                budgets[m++] = pts[i].budget;
        if (m == 0) continue;
        qsort(budgets, (size_t)m, sizeof *budgets, cmp_double);
        ap_chart_series *se = &series[used++];
        double *x = bag_alloc(&c->bag, (size_t)m * sizeof *x), *y = bag_alloc(&c->bag, (size_t)m * sizeof *y);
        double *lo = bag_alloc(&c->bag, (size_t)m * sizeof *lo), *hi = bag_alloc(&c->bag, (size_t)m * sizeof *hi);
        if (!x || !y || !lo || !hi) break;
        int k = 0;
        for (int b = 0; b < m; b++) {
            if (b && budgets[b] == budgets[b - 1]) continue; /* the first run of a budget */
            for (int i = 0; i < n; i++)
                if (!strcmp(pts[i].series, pts[first[s]].series) && pts[i].run->layer == layer &&
                    pts[i].budget == budgets[b]) {
                    const ap_stats *st = &pts[i].run->stats[metric];
                    x[k] = budgets[b], y[k] = st->n ? shown(metric, st->mean) : NAN;
                    lo[k] = shown(metric, st->ci_lo), hi[k] = shown(metric, st->ci_hi);
                    k++;
                    break;
                }
        }
        *se = (ap_chart_series){.name = bag_strdup(&c->bag, pts[first[s]].series), .n = k, .x = x, .y = y,
                                .lo = lo, .hi = hi, .style = AP_CHART_LINE};
    }
    free(first), free(budgets);
    char title[200], where[64];
    where_text(layer, where, sizeof where);
    snprintf(title, sizeof title, "%s against budget, %s", metric_title(metric), where);
    c->xy = (ap_chart_xy){.title = bag_strdup(&c->bag, title), .x_label = "KV budget (positions kept)",
                          .y_label = metric_title(metric), .log_x = 1, .n_series = used, .series = series};
    snprintf(c->id, sizeof c->id, "budget-%s", ap_metric_name(metric));
    for (char *q = c->id; *q; q++)
        if (*q == '@') *q = '_';
    snprintf(c->caption, sizeof c->caption, "%s of each policy against its KV budget (%s): mean over "
             "samples, band: 95%% bootstrap CI.", metric_title(metric), where);
    return series ? (used ? AP_OK : AP_ERR_INPUT) : AP_ERR_RUNTIME;
}

/* A heatmap shows at most this many rows (policies in first-seen order). */
enum { HEATMAP_ROWS = 40 };

/* policy x layer (or x head at one layer) heatmap of KL at one budget */
static ap_status chart_heatmap(const point *pts, int n, double budget, int per_head,
                               int layer, report_chart *c)
{
    int *first = malloc(((size_t)n + 1) * sizeof *first);
    if (!first) return AP_ERR_RUNTIME;
    const int n_series = distinct_series(pts, n, first, 0);
    int layers[512], n_layers = 0, n_head = 0;
    for (int i = 0; i < n; i++) n_head = pts[i].run->n_head > n_head ? pts[i].run->n_head : n_head;
    if (per_head && (n_head < 2 || n_head > 1024)) { /* nothing to show, or a file's n_head not to be trusted */
        free(first);
        return AP_ERR_INPUT;
    }
    for (int i = 0; i < n && !per_head; i++) {
        int seen = pts[i].run->layer < 0; /* eval runs: no layer */
        for (int k = 0; k < n_layers; k++) seen |= layers[k] == pts[i].run->layer;
        if (!seen && n_layers < 512) layers[n_layers++] = pts[i].run->layer;
    }
    qsort(layers, (size_t)n_layers, sizeof *layers, cmp_int_fn);
    const int n_cols = per_head ? n_head : n_layers;
    const char **rows = bag_alloc(&c->bag, (size_t)n_series * sizeof *rows);
    const char **cols = bag_alloc(&c->bag, (size_t)n_cols * sizeof *cols);
    double *v = bag_alloc(&c->bag, (size_t)n_series * n_cols * sizeof *v);
    if (!rows || !cols || !v) {
        free(first);
        return AP_ERR_RUNTIME;
    }
    for (int k = 0; k < n_cols; k++) {
        char name[16];
        snprintf(name, sizeof name, "%d", per_head ? k : layers[k]);
        cols[k] = bag_strdup(&c->bag, name);
    }
    int n_rows = 0;
    for (int s = 0; s < n_series && n_rows < HEATMAP_ROWS; s++) {
        int any = 0;
        for (int k = 0; k < n_cols; k++) v[n_rows * n_cols + k] = NAN;
        for (int i = 0; i < n; i++) {
            const ap_report_run *r = pts[i].run;
            if (strcmp(pts[i].series, pts[first[s]].series) || !(pts[i].budget == budget || isnan(pts[i].budget)))
                continue;
            if (per_head) {
                if (r->layer != layer || !r->head_mean) continue;
                for (int h = 0; h < n_cols && h < r->n_head; h++)
                    if (isnan(v[n_rows * n_cols + h])) v[n_rows * n_cols + h] = r->head_mean[(size_t)h * AP_M_COUNT + AP_M_KL];
                any = 1;
            } else {
                for (int k = 0; k < n_cols; k++)
                    if (layers[k] == r->layer && isnan(v[n_rows * n_cols + k]) && r->stats[AP_M_KL].n)
                        v[n_rows * n_cols + k] = r->stats[AP_M_KL].mean, any = 1;
            }
        }
        if (any) rows[n_rows++] = bag_strdup(&c->bag, pts[first[s]].series);
    }
    free(first);
    char title[200];
    if (per_head) snprintf(title, sizeof title, "KL per head, layer %d, budget %g", layer, budget);
    else snprintf(title, sizeof title, "KL per policy and layer, budget %g", budget);
    c->is_heatmap = 1;
    c->heatmap = (ap_chart_heatmap){.title = bag_strdup(&c->bag, title), .x_label = per_head ? "head" : "layer",
                                    .y_label = "policy", .n_rows = n_rows, .n_cols = n_cols, .row_names = rows,
                                    .col_names = cols, .values = v, .higher_is_better = 0};
    snprintf(c->id, sizeof c->id, per_head ? "heads-layer%d" : "policy-layer", layer);
    if (per_head)
        snprintf(c->caption, sizeof c->caption, "Mean KL of each head at layer %d (budget %g); darker is further "
                 "from the full cache.%s", layer, budget, n_series > HEATMAP_ROWS ? " The first 40 runs only." : "");
    else
        snprintf(c->caption, sizeof c->caption, "Mean KL of each policy at each probed layer (budget %g); darker "
                 "is further from the full cache.%s", budget, n_series > HEATMAP_ROWS ? " The first 40 runs only." : "");
    return n_rows ? AP_OK : AP_ERR_INPUT;
}

/* KL against memory (the whole model's KV cache in fp16 plus the policy's
 * state), one point per run at the layer, the Pareto front as a guide */
static ap_status chart_memory(const ap_report_set *set, const point *pts, int n, int layer, int metric,
                              report_chart *c)
{
    int *first = malloc(((size_t)n + 1) * sizeof *first);
    double *fx = bag_alloc(&c->bag, ((size_t)n + 1) * sizeof *fx), *fy = bag_alloc(&c->bag, ((size_t)n + 1) * sizeof *fy);
    if (!first || !fx || !fy) {
        free(first);
        return AP_ERR_RUNTIME;
    }
    const int n_series = distinct_series(pts, n, first, 0);
    ap_chart_series *series = bag_alloc(&c->bag, ((size_t)n_series + 1) * sizeof *series);
    int used = 0, n_front = 0;
    for (int s = 0; series && s < n_series; s++) {
        double *x = bag_alloc(&c->bag, (size_t)n * sizeof *x), *y = bag_alloc(&c->bag, (size_t)n * sizeof *y);
        if (!x || !y) break;
        int k = 0;
        for (int i = 0; i < n; i++) {
            const ap_report_run *r = pts[i].run;
            if (strcmp(pts[i].series, pts[first[s]].series) || r->layer != layer || !r->stats[metric].n) continue;
            const ap_summary *sm = &set->summaries[pts[i].summary];
            ap_report_memory mem;
            ap_report_memory_of(r, sm->n_layer, sm->n_embd, sm->n_head, sm->model_dtype, &mem);
            const double kib = (mem.model_fp16 + mem.state_bytes) / 1024.0;
            const double v = shown(metric, r->stats[metric].mean);
            if (!(kib > 0) || !isfinite(v)) continue;
            x[k] = kib, y[k] = v, k++;
            fx[n_front] = kib, fy[n_front++] = v;
        }
        if (k) series[used++] = (ap_chart_series){.name = bag_strdup(&c->bag, pts[first[s]].series), .n = k, .x = x,
                                                  .y = y, .style = AP_CHART_POINTS};
    }
    free(first);
    if (!series || n_front < 2) return n_front < 2 ? AP_ERR_INPUT : AP_ERR_RUNTIME;
    /* the front: sorted by memory, every point better than all cheaper ones */
    for (int i = 1; i < n_front; i++)
        for (int j = i; j > 0 && (fx[j - 1] > fx[j] || (fx[j - 1] == fx[j] && fy[j - 1] > fy[j])); j--) {
            double t = fx[j]; fx[j] = fx[j - 1], fx[j - 1] = t;
            t = fy[j]; fy[j] = fy[j - 1], fy[j - 1] = t;
        }
    int m = 0;
    for (int i = 0; i < n_front; i++)
        if (m == 0 || fy[i] < fy[m - 1]) fx[m] = fx[i], fy[m++] = fy[i];
    series[used++] = (ap_chart_series){.name = "Pareto front", .n = m, .x = fx, .y = fy, .style = AP_CHART_GUIDE};
    char title[200], where[64];
    where_text(layer, where, sizeof where);
    snprintf(title, sizeof title, "%s against memory, %s", metric == AP_M_KL ? "KL" : metric_title(metric), where);
    c->xy = (ap_chart_xy){.title = bag_strdup(&c->bag, title), .x_label = "KV cache (fp16, whole model) + policy state, KiB",
                          .y_label = metric_title(metric), .log_x = 1, .n_series = used, .series = series};
    snprintf(c->id, sizeof c->id, metric == AP_M_KL ? "memory" : "memory-%s", ap_metric_name(metric));
    snprintf(c->caption, sizeof c->caption, "Each run's %s (%s) against the memory it keeps: the whole model's capped "
             "KV cache in fp16 plus the policy's state (sketch counters or scores). The dashed line joins the runs no "
             "cheaper run beats (the Pareto front).", metric_title(metric), where);
    return AP_OK;
}

/* isolated against cascade: the same policy, budget and layer replayed both ways */
static ap_status chart_modes(const point *pts, int n, report_chart *c)
{
    int *first = malloc(((size_t)n + 1) * sizeof *first);
    if (!first) return AP_ERR_RUNTIME;
    const int n_series = distinct_series(pts, n, first, 1);
    ap_chart_series *series = bag_alloc(&c->bag, ((size_t)n_series + 1) * sizeof *series);
    int used = 0;
    double lo = INFINITY, hi = -INFINITY;
    for (int s = 0; series && s < n_series; s++) {
        double *x = bag_alloc(&c->bag, (size_t)n * sizeof *x), *y = bag_alloc(&c->bag, (size_t)n * sizeof *y);
        if (!x || !y) break;
        int k = 0;
        for (int i = 0; i < n; i++) {
            if (strcmp(pts[i].series_nomode, pts[first[s]].series_nomode) || strcmp(pts[i].mode, "isolated")) continue;
            for (int j = 0; j < n; j++) {
                if (strcmp(pts[j].series_nomode, pts[i].series_nomode) || strcmp(pts[j].mode, "cascade") ||
                    pts[j].run->layer != pts[i].run->layer || !(pts[j].budget == pts[i].budget || isnan(pts[i].budget)))
                    continue;
                x[k] = pts[i].run->stats[AP_M_KL].mean, y[k] = pts[j].run->stats[AP_M_KL].mean;
                if (isfinite(x[k]) && isfinite(y[k])) {
                    lo = fmin(lo, fmin(x[k], y[k])), hi = fmax(hi, fmax(x[k], y[k]));
                    k++;
                }
                break;
            }
        }
        if (k) series[used++] = (ap_chart_series){.name = bag_strdup(&c->bag, pts[first[s]].series_nomode), .n = k,
                                                  .x = x, .y = y, .style = AP_CHART_POINTS};
    }
    free(first);
    if (!series || used == 0) return series ? AP_ERR_INPUT : AP_ERR_RUNTIME;
    double *dx = bag_alloc(&c->bag, 2 * sizeof *dx), *dy = bag_alloc(&c->bag, 2 * sizeof *dy);
    if (!dx || !dy) return AP_ERR_RUNTIME;
    dx[0] = dy[0] = lo, dx[1] = dy[1] = hi;
    series[used++] = (ap_chart_series){.name = "equal", .n = 2, .x = dx, .y = dy, .style = AP_CHART_GUIDE};
    c->xy = (ap_chart_xy){.title = "KL: isolated against cascade replay", .x_label = "KL, isolated (one layer capped)",
                          .y_label = "KL, cascade (every layer capped)", .n_series = used, .series = series};
    snprintf(c->id, sizeof c->id, "modes");
    snprintf(c->caption, sizeof c->caption, "Each policy, budget and layer replayed both ways: above the dashed "
             "line, capping every layer costs more than capping the probed layer alone (errors compound).");
    return AP_OK;
}

ap_status report_charts_make(const ap_report_set *set, report_chart *charts, int *n_out, ap_error *err)
{
    *n_out = 0;
    point *pts;
    int n;
    if (collect(set, &pts, &n)) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    if (n == 0) {
        free(pts);
        return AP_OK;
    }
    int n_budgets = 0, n_layers = 0, modes = 0;
    double *b = malloc(((size_t)n + 1) * sizeof *b);
    if (!b) {
        free(pts);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int k = 0; k < n_budgets; k++) seen |= b[k] == pts[i].budget;
        if (!seen && isfinite(pts[i].budget)) b[n_budgets++] = pts[i].budget;
        int lseen = 0;
        for (int k = 0; k < i; k++) lseen |= pts[k].run->layer == pts[i].run->layer;
        n_layers += !lseen && pts[i].run->layer >= 0;
        modes |= !strcmp(pts[i].mode, "cascade") ? 2 : 1;
    }
    free(b);
    const int layer = middle_layer(pts, n); /* -1 when there are eval runs only */
    const double budget = common_budget(pts, n);
    int has_eval = 0;
    for (int i = 0; i < n; i++) has_eval |= pts[i].run->layer < 0 && pts[i].run->stats[AP_M_NLL].n > 0;
    ap_status st = AP_OK;
    int k = 0;
    /* each chart in turn; one its data cannot fill (AP_ERR_INPUT) is left out */
#define ADD_CHART(call)                                                                                          \
    do {                                                                                                         \
        charts[k] = (report_chart){0};                                                                           \
        st = (call);                                                                                             \
        if (st == AP_ERR_INPUT) report_charts_free(&charts[k], 1), st = AP_OK;                                  \
        else k++;                                                                                                \
    } while (0)
    /* attention runs (at the middle probed layer), then eval runs (layer -1) */
    static const int METRICS[4] = {AP_M_KL, AP_M_COSINE, AP_M_MASS, AP_M_TOP8};
    static const int NEXT[3] = {AP_M_NLL, AP_M_NEXT_KL, AP_M_NEXT_TOP1};
    for (int m = 0; m < 4 && layer >= 0 && n_budgets >= 2 && !st; m++)
        ADD_CHART(chart_budget(pts, n, layer, METRICS[m], &charts[k]));
    if (!st && n_layers >= 2) ADD_CHART(chart_heatmap(pts, n, budget, 0, layer, &charts[k]));
    if (!st && layer >= 0)
        ADD_CHART(chart_heatmap(pts, n, budget, 1, layer, &charts[k]));
    if (!st && layer >= 0) ADD_CHART(chart_memory(set, pts, n, layer, AP_M_KL, &charts[k]));
    for (int m = 0; m < 3 && has_eval && n_budgets >= 2 && !st; m++)
        ADD_CHART(chart_budget(pts, n, -1, NEXT[m], &charts[k]));
    if (!st && has_eval) ADD_CHART(chart_memory(set, pts, n, -1, AP_M_NLL, &charts[k]));
    if (!st && modes == 3) ADD_CHART(chart_modes(pts, n, &charts[k]));
#undef ADD_CHART
    free(pts);
    if (st) {
        report_charts_free(charts, k);
        return ap_error_set(err, st, "out of memory");
    }
    *n_out = k;
    return AP_OK;
}

ap_status report_chart_draw(const report_chart *c, ap_chart_format fmt, const char *path, ap_error *err)
{
    return c->is_heatmap ? ap_chart_heatmap_draw(&c->heatmap, fmt, path, err) : ap_chart_xy_draw(&c->xy, fmt, path, err);
}

/* ---- eval ------------------------------------------------------------------------ */

void ap_summary_print_eval(const ap_summary *s, FILE *f)
{
    fprintf(f, "model %s (%d layers, %d heads) · %d samples, %d tokens · %s %s\n", s->model_source, s->n_layer,
            s->n_head, s->samples, s->tokens, s->backend, s->precision);
    fprintf(f, "next-token prediction with each policy's cache at every layer; mean [95%% CI] over samples\n");
    fprintf(f, "%-24s %32s %28s %9s %7s %9s %14s %12s\n", "policy", "perplexity", "ratio to full", "next_kl",
            "top-1", "rank", "KV fp16 model", "state bytes");
    run_names names;
    names_make(&names, s, "summary");
    for (int r = 0; r < s->n_runs; r++) {
        const ap_report_run *run = &s->runs[r];
        const ap_stats *nll = &run->stats[AP_M_NLL];
        if (!nll->n) continue;
        char name[160], ppl[64], ratio[64] = "–";
        name_of(&names, run, name, sizeof name);
        snprintf(ppl, sizeof ppl, "%.3f [%.3f, %.3f]", exp(nll->mean), exp(nll->ci_lo), exp(nll->ci_hi));
        const ap_paired *d = &run->compare[AP_M_NLL];
        if (run->compare_to[0] && d->n > 0)
            snprintf(ratio, sizeof ratio, "%.4f [%.4f, %.4f]", exp(d->delta), exp(d->ci_lo), exp(d->ci_hi));
        else if (!strcmp(run->policy, "full"))
            snprintf(ratio, sizeof ratio, "1");
        ap_report_memory mem;
        ap_report_memory_of(run, s->n_layer, s->n_embd, s->n_head, s->model_dtype, &mem);
        fprintf(f, "%-24s %32s %28s %9.4f %7.4f %9.2f %10.3f MiB %12.0f\n", name, ppl, ratio,
                run->stats[AP_M_NEXT_KL].mean, run->stats[AP_M_NEXT_TOP1].mean, run->stats[AP_M_ARGMAX_RANK].mean,
                mem.model_fp16 / 1048576.0, mem.state_bytes);
    }
    names_free(&names);
    if (s->n_runs > 0 && s->runs[0].replay_s > 0)
        fprintf(f, "decode: %d streams a step, %.0f tokens/s a stream (the streams decode together, %.2f s)\n",
                s->n_runs, s->runs[0].tokens_per_s, s->runs[0].replay_s);
}
