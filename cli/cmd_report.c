/* cmd_report.c — report (tables, Markdown, HTML with charts of saved
 * summaries and batches) and check (the regression
 * gate users put in their CI). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "reports/reports.h"
#include "study/study.h"

static const char REPORT_USAGE[] =
    "usage: attnprobe report FILE... [--metrics LIST] [--format text|md] [--md OUT.md]\n"
    "                        [--html OUT.html] [--png DIR]\n"
    "FILE: a summary (attnprobe run) or a batch (DIR/batch.json of attnprobe batch).\n"
    "  (default)       the table of each summary; two files: also their differences\n"
    "  --metrics LIST  the tables' metric columns (kl,cosine,mass_retained,topk_recall@8;\n"
    "                  any of the summary's metrics, comma-separated)\n"
    "  --format md     Markdown tables on stdout (a paper or a pull request can paste them)\n"
    "  --md FILE       the same into FILE\n"
    "  --html FILE     one self-contained HTML file: charts, tables, run metadata\n"
    "  --png DIR       the charts as PNG files in DIR\n";

/* One more summary, from JSON text, labelled. */
static ap_status add_summary(const char *text, size_t n, const char *source, const char *label, ap_summary **all,
                             char ***labels, int *count, ap_error *err)
{
    ap_summary *grown = realloc(*all, (size_t)(*count + 1) * sizeof *grown);
    if (grown) *all = grown;
    char **grown_labels = grown ? realloc(*labels, (size_t)(*count + 1) * sizeof *grown_labels) : NULL;
    if (grown_labels) *labels = grown_labels;
    char *copy = strdup(label);
    if (!grown || !grown_labels || !copy) {
        free(copy);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    }
    ap_status st = ap_summary_parse_json(text, n, source, &(*all)[*count], err);
    if (st) free(copy);
    else (*labels)[(*count)++] = copy;
    return st;
}

/* A batch's cells become summaries labelled by their cell id. */
static ap_status add_batch(const char *path, const char *text, size_t n, ap_summary **all, char ***labels, int *count,
                           ap_error *err)
{
    cJSON *root = cJSON_ParseWithLength(text, n);
    const cJSON *cells = cJSON_GetObjectItemCaseSensitive(root, "cells");
    ap_status st = cJSON_IsArray(cells) ? AP_OK : ap_error_set(err, AP_ERR_INPUT, "%s: a batch without \"cells\"", path);
    const cJSON *cell;
    cJSON_ArrayForEach(cell, cells)
    {
        if (st) break;
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cell, "id"));
        char *summary = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(cell, "summary"));
        char source[1200];
        snprintf(source, sizeof source, "%s: cell %s", path, id ? id : "?");
        st = summary ? add_summary(summary, strlen(summary), source, id ? id : "?", all, labels, count, err)
                     : ap_error_set(err, AP_ERR_INPUT, "%s: no summary", source);
        free(summary);
    }
    cJSON_Delete(root);
    return st;
}

static ap_status load_files(int n_paths, char **paths, ap_summary **all, char ***labels, int *count, ap_error *err)
{
    ap_status st = AP_OK;
    for (int i = 0; i < n_paths && !st; i++) {
        char *text;
        size_t n;
        if ((st = cli_read_input(paths[i], &text, &n, err))) break;
        cJSON *root = cJSON_ParseWithLength(text, n);
        const int batch = !strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "schema")) ?: "",
                                  AP_BATCH_SCHEMA);
        cJSON_Delete(root);
        st = batch ? add_batch(paths[i], text, n, all, labels, count, err)
                   : add_summary(text, n, paths[i], paths[i], all, labels, count, err);
        free(text);
    }
    return st;
}

int cmd_report(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"metrics", required_argument, 0, 'm'}, {"format", required_argument, 0, 'f'},
        {"html", required_argument, 0, 'H'},    {"md", required_argument, 0, 'M'},
        {"png", required_argument, 0, 'p'},     {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    const char *metrics = NULL, *format = "text", *html = NULL, *md = NULL, *png = NULL;
    ap_error err;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': metrics = optarg; break;
        case 'f': format = optarg; break;
        case 'H': html = optarg; break;
        case 'M': md = optarg; break;
        case 'p': png = optarg; break;
        case 'h': fputs(REPORT_USAGE, stdout); return 0;
        default:
            ap_error_set(&err, AP_ERR_USAGE, "%s: unknown option or missing value (see attnprobe report --help)",
                         argv[optind - 1]);
            return cli_fail(AP_ERR_USAGE, &err);
        }
    }
    if (strcmp(format, "text") && strcmp(format, "md")) {
        ap_error_set(&err, AP_ERR_USAGE, "--format %s: accepted: text, md", format);
        return cli_fail(AP_ERR_USAGE, &err);
    }
    if (optind >= argc) {
        ap_error_set(&err, AP_ERR_USAGE, "report takes one or more summary or batch files (attnprobe report "
                     "attnprobe-out/summary.json)");
        return cli_fail(AP_ERR_USAGE, &err);
    }
    ap_report_set set = {0};
    ap_status st = ap_report_set_metrics(&set, metrics, &err);
    if (st) return cli_fail(st, &err);
    if ((html || png) && !ap_chart_available() && png) {
        ap_error_set(&err, AP_ERR_USAGE, "--png: this build has no PLplot (scripts/setup.sh installs it)");
        return cli_fail(AP_ERR_USAGE, &err);
    }
    ap_summary *all = NULL;
    char **labels = NULL;
    int count = 0;
    st = load_files(argc - optind, argv + optind, &all, &labels, &count, &err);
    if (!st && count == 0) st = ap_error_set(&err, AP_ERR_INPUT, "%s: no summary to report (an empty batch?)", argv[optind]);
    set.n = count, set.summaries = all, set.labels = (const char *const *)labels;
    if (!st && png) st = cli_make_dir("--png", png, &err);
    if (!st && html) st = ap_report_write_html(&set, html, png, &err);
    if (!st && png && !html) {
        int n_png = 0;
        st = ap_report_write_pngs(&set, png, &n_png, &err);
        if (!st) fprintf(stderr, "attnprobe: wrote %d chart%s to %s\n", n_png, n_png == 1 ? "" : "s", png);
    }
    if (!st && html) fprintf(stderr, "attnprobe: wrote %s\n", html);
    if (!st && md) {
        FILE *f = fopen(md, "w");
        if (!f) {
            st = ap_error_set(&err, AP_ERR_RUNTIME, "--md %s: cannot write: %s", md, strerror(errno));
        } else {
            ap_report_print_tables(&set, 1, f);
            if (count == 2) ap_report_print_diff(&set, 1, f);
            if (fclose(f) != 0) st = ap_error_set(&err, AP_ERR_RUNTIME, "--md %s: write failed", md);
        }
    }
    if (!st && !html && !md && !png) {
        const int markdown = !strcmp(format, "md");
        if (markdown || metrics) {
            ap_report_print_tables(&set, markdown, stdout);
        } else {
            for (int i = 0; i < count; i++) {
                char mode[16];
                if (count > 1) printf("== %s ==\n", labels[i]);
                ap_summary_config_text(&all[i], "mode", mode, sizeof mode);
                if (!strcmp(mode, "eval")) ap_summary_print_eval(&all[i], stdout);
                else ap_summary_print_table(&all[i], stdout);
            }
        }
        if (count == 2) ap_report_print_diff(&set, markdown, stdout);
    }
    for (int i = 0; i < count; i++) {
        ap_summary_free(&all[i]);
        free(labels[i]);
    }
    free(all);
    free(labels);
    return st ? cli_fail(st, &err) : 0;
}

int cmd_check(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"baseline", required_argument, 0, 'b'}, {"current", required_argument, 0, 'c'},
        {"tol", required_argument, 0, 't'},      {"help", no_argument, 0, 'h'},
        {"allow-mismatch", no_argument, 0, 'm'}, {"tolerance-only", no_argument, 0, 'n'},
        {0, 0, 0, 0},
    };
    const char *base_path = NULL, *cur_path = NULL, *tol_spec = NULL;
    int allow_mismatch = 0, noise_aware = 1;
    ap_error err;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+", longopts, NULL)) != -1) {
        switch (c) {
        case 'b': base_path = optarg; break;
        case 'c': cur_path = optarg; break;
        case 't': tol_spec = optarg; break;
        case 'm': allow_mismatch = 1; break;
        case 'n': noise_aware = 0; break;
        case 'h':
            printf("usage: attnprobe check --baseline A.json --current B.json [--tol kl=0.05,cosine=0.01]\n"
                   "                       [--allow-mismatch] [--tolerance-only]\n"
                   "Matches runs by policy, parameters and layer and compares metric means.\n"
                   "Summaries of another model, input, sample count, length, stride, warmup, layers,\n"
                   "mode or heads are refused (exit 3) unless --allow-mismatch (noted in the output).\n"
                   "When both carry each sample's means (summaries of this version), a change beyond\n"
                   "the tolerance counts only if the paired difference's 95%% CI excludes 0 on the\n"
                   "worse side (noise-aware; --tolerance-only: the tolerance alone).\n"
                   "A mean worse than the baseline's by more than its tolerance is a regression.\n"
                   "Default tolerances: kl 0.05, kl_rev 0.05, js 0.01, cosine 0.01, mass_retained 0.01,\n"
                   "l1 0.04, peak_shift 1, the rest 0.02. Eval summaries: ppl=0.5%% lets the perplexity\n"
                   "grow by 0.5%% (the mean next-token NLL by ln 1.005).\n"
                   "Exit: 0 no regression, 1 regression, 2 usage, 3 unreadable or mismatched summary.\n");
            return 0;
        default:
            ap_error_set(&err, AP_ERR_USAGE, "%s: unknown option or missing value (see attnprobe "
                         "check --help)", argv[optind - 1]);
            return cli_fail(AP_ERR_USAGE, &err);
        }
    }
    if (!base_path || !cur_path || optind < argc) {
        ap_error_set(&err, AP_ERR_USAGE, "check needs --baseline FILE and --current FILE");
        return cli_fail(AP_ERR_USAGE, &err);
    }
    double tol[AP_M_COUNT];
    ap_check_default_tolerances(tol);
    ap_status st = tol_spec ? ap_check_parse_tolerances(tol_spec, tol, &err) : AP_OK;
    if (st) return cli_fail(ap_error_wrap(&err, st, "--tol"), &err);
    ap_summary base = {0}, cur = {0};
    int regressions = 0;
    if (!(st = ap_summary_read_json(base_path, &base, &err)) &&
        !(st = ap_summary_read_json(cur_path, &cur, &err)))
        st = ap_check(&base, &cur, tol, allow_mismatch, noise_aware, stdout, &regressions, &err);
    ap_summary_free(&base);
    ap_summary_free(&cur);
    if (st) return cli_fail(st, &err);
    return regressions ? AP_ERR_REGRESSION : 0;
}
