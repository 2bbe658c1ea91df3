/* reports.h — the JSON summary (schema "attnprobe.summary/1"),
 * the text table, and the regression check between two summaries. */
#ifndef AP_REPORTS_H
#define AP_REPORTS_H

#include <stdio.h>

#include "../analysis/analysis.h"

#define AP_SUMMARY_SCHEMA "attnprobe.summary/1"
/* Fewer samples than this: the bootstrap CI is marked unreliable. */
#define AP_CI_MIN_SAMPLES 5
enum { AP_MAX_PARAMS = 24 };

typedef struct {
    char policy[32];
    int n_params;                          /* the parameters that shaped this run */
    char param_name[AP_MAX_PARAMS][24];
    double param_value[AP_MAX_PARAMS];
    char granularity[8];                   /* head | layer */
    int layer;
    ap_stats stats[AP_M_COUNT];
    int n_head;
    double *head_mean;                     /* [n_head * AP_M_COUNT], NaN where none */
    double kv_bytes, sketch_bytes;         /* as measured: fp32 k and v (isolated: the probed
                                              layer; cascade: every layer), policy state */
    double counter_bytes;                  /* the score state a layer keeps: sketch counters or
                                              h2o's scores (ap_policy_counter_bytes x heads) */
    double kv_quant_bytes;                 /* --quant: the probed layer's cache as quantised (0: none) */
    double kv_positions;                   /* retained positions at the end, summed over heads,
                                              one layer (the most over samples) */
    double replay_s, tokens_per_s;
    int n_samples;                         /* entries of sample_mean */
    double *sample_mean;                   /* [n_samples * AP_M_COUNT]: each sample's mean, NaN where none */
    /* paired against another policy's run of the same layer (docs/statistics.md) */
    char compare_to[32];                   /* "" when not compared */
    ap_paired compare[AP_M_COUNT];
    double compare_p_holm[AP_M_COUNT];     /* Holm-adjusted over the summary's comparisons */
} ap_report_run;

/* The run's value of parameter name (budget, width, ...), or NAN when it has none. */
double ap_report_run_param(const ap_report_run *r, const char *name);

/* A run's KV cache in the field's units (docs/metrics.md): the retained
 * positions' keys and values of one layer and of the whole model, in fp16
 * (KV-cache papers' convention) and in the model's stored precision. */
typedef struct {
    double per_layer_fp16, model_fp16;
    double per_layer_stored, model_stored;
    double state_bytes;
} ap_report_memory;

void ap_report_memory_of(const ap_report_run *r, int n_layer, int n_embd, int n_head,
                         const char *stored_dtype, ap_report_memory *out);

typedef struct {
    char tool_version[32];
    char model_source[1024], model_sha256[65];
    int n_layer, n_head, n_embd, vocab;
    char input_source[1100], input_sha256[65];
    int samples, tokens;
    char *config_json;   /* a JSON object: every option that shaped the numbers */
    char *provenance_json; /* a JSON object: command line, versions, libraries, time, host (or NULL) */
    char *cell_json;       /* a JSON object: the batch cell this summary is (id, study, args), or NULL */
    char backend[16], device_name[128], precision[16];
    char model_dtype[8];   /* as the weights are stored: F32, F16, BF16 ("" unknown) */
    double trace_s;
    double study_s;       /* the whole study after the model's load: trace, replay, statistics */
    double statistics_s;  /* of which the statistics (bootstrap CIs) */
    int n_runs;
    ap_report_run *runs;
} ap_summary;

/* Writes one JSON line per (sample, run): the sample's mean of every metric
 * (--log-samples), through a temporary file renamed into place. */
ap_status ap_summary_write_samples(const ap_summary *s, const char *path, ap_error *err);

/* Runs that differ only in their seed (--seeds): the spread of their means. */
enum { AP_MAX_SEEDS = 64 };
typedef struct {
    int first;                 /* the group's first run */
    int n, run[AP_MAX_SEEDS];  /* its runs, in summary order */
} ap_seed_group;
/* Fills up to max_groups groups of two or more runs; returns how many. */
int ap_seed_groups(const ap_summary *s, ap_seed_group *groups, int max_groups);
/* n, mean, sd, min and max over the group's runs of a metric's mean. */
void ap_seed_spread(const ap_summary *s, const ap_seed_group *g, int metric, ap_stats *out);

/* "budget=64,sink=4,…" — what check matches runs by (with policy and layer). */
void ap_report_run_key(const ap_report_run *r, char *buf, size_t n);

/* The summary's config value of key as text ("" when absent): strings as
 * they are, anything else as compact JSON. */
void ap_summary_config_text(const ap_summary *s, const char *key, char *out, size_t n);

/* Writes the summary through a temporary file renamed into place. */
ap_status ap_summary_write_json(const ap_summary *s, const char *path, ap_error *err);
/* Reads a summary; AP_ERR_INPUT names the file and what is wrong. */
ap_status ap_summary_read_json(const char *path, ap_summary *out, ap_error *err);
/* The same from text already read; source names it in errors. */
ap_status ap_summary_parse_json(const char *text, size_t n, const char *source, ap_summary *out, ap_error *err);
void ap_summary_free(ap_summary *s);

/* policy x metric table (mean ± sd), memory and time. */
void ap_summary_print_table(const ap_summary *s, FILE *f);
/* An eval summary's table: perplexity, its ratio to full, next-token KL,
 * top-1 agreement, the rank of the full cache's first choice, memory. */
void ap_summary_print_eval(const ap_summary *s, FILE *f);

/* Default absolute tolerances on metric means (kl 0.05, cosine 0.01, …). */
void ap_check_default_tolerances(double tol[AP_M_COUNT]);
/* Parses "kl=0.05,cosine=0.01" over the defaults. */
ap_status ap_check_parse_tolerances(const char *spec, double tol[AP_M_COUNT], ap_error *err);
/* Compares every baseline run with the current run of the same policy,
 * parameters and layer: a regression is a mean worse by more than its
 * tolerance. Prints a diff table to out. Summaries of other models, or whose
 * model or input checksum, sample count, max_length, stride, warmup, layers,
 * mode or heads differ, are AP_ERR_INPUT naming the field (a note in the
 * output with allow_mismatch); so is a baseline run missing from the current
 * summary. noise_aware, when both runs carry their samples' means of the
 * same input: a change beyond the tolerance is a regression only when the
 * paired difference's bootstrap CI excludes 0 on the worse side; the table
 * says which rule decided. */
ap_status ap_check(const ap_summary *base, const ap_summary *cur, const double tol[AP_M_COUNT],
                   int allow_mismatch, int noise_aware, FILE *out, int *regressions, ap_error *err);

/* ---- charts (chart.c, PLplot; docs/reports.md) ------------------------------ */

typedef enum { AP_CHART_LINE = 0, AP_CHART_POINTS = 1, AP_CHART_GUIDE = 2 } ap_chart_style;

typedef struct {
    const char *name;             /* legend entry ("" or NULL: none) */
    int n;
    const double *x, *y;          /* [n]; lines join the points in this order */
    const double *lo, *hi;        /* [n] a band (the 95% CI), or NULL */
    ap_chart_style style;         /* line with points, points only, or a grey dashed guide */
} ap_chart_series;

typedef struct {
    const char *title, *x_label, *y_label;
    int log_x;                    /* x on a log2 axis (budgets, bytes) */
    int n_series;
    const ap_chart_series *series; /* coloured in order from the Okabe-Ito palette */
} ap_chart_xy;

typedef struct {
    const char *title, *x_label, *y_label;
    int n_rows, n_cols;
    const char *const *row_names, *const *col_names;
    const double *values;         /* [n_rows * n_cols], row-major; NAN: empty */
    int higher_is_better;         /* dark cells are the worse end either way */
} ap_chart_heatmap;

typedef enum { AP_CHART_SVG, AP_CHART_PNG } ap_chart_format;

/* Draws to path; AP_ERR_INPUT when there is nothing finite to draw,
 * AP_ERR_USAGE when the build has no PLplot. */
ap_status ap_chart_xy_draw(const ap_chart_xy *c, ap_chart_format fmt, const char *path, ap_error *err);
ap_status ap_chart_heatmap_draw(const ap_chart_heatmap *c, ap_chart_format fmt, const char *path, ap_error *err);
int ap_chart_available(void);

/* ---- reports of several summaries (report.c, html.c) ------------------------------ */

typedef struct {
    int n;
    const ap_summary *summaries;  /* [n]: files given, or a batch's cells */
    const char *const *labels;    /* [n]: what names each (file, cell id) */
    int metrics[AP_M_COUNT];      /* the table's metric columns, in order */
    int n_metrics;
    int metrics_given;            /* asked for; else eval summaries show their own columns */
} ap_report_set;

/* "kl,cosine,l1": the metric columns of the tables; NULL: the defaults. */
ap_status ap_report_set_metrics(ap_report_set *set, const char *list, ap_error *err);
/* Every summary's table with the set's metric columns (text or Markdown). */
void ap_report_print_tables(const ap_report_set *set, int markdown, FILE *f);
/* Two summaries side by side: each common run's means and their difference. */
void ap_report_print_diff(const ap_report_set *set, int markdown, FILE *f);
/* One self-contained HTML file: tables, charts inlined as SVG, metadata.
 * png_dir, when given, also receives every chart as PNG. */
ap_status ap_report_write_html(const ap_report_set *set, const char *path, const char *png_dir, ap_error *err);
/* The charts only, as PNG files in dir; *n_written: how many. */
ap_status ap_report_write_pngs(const ap_report_set *set, const char *dir, int *n_written, ap_error *err);

#endif
