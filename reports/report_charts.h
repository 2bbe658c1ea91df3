/* report_charts.h — inside reports/ only: the charts a report set makes
 * (report.c) for the HTML and PNG writers (html.c). */
#ifndef AP_REPORT_CHARTS_H
#define AP_REPORT_CHARTS_H

#include "reports.h"

/* Allocations that live as long as one chart. */
typedef struct {
    void **p;
    int n, cap;
} report_bag;

typedef struct {
    char id[48];                  /* the figure's id and the PNG's name */
    char caption[400];
    int is_heatmap;
    ap_chart_xy xy;
    ap_chart_heatmap heatmap;
    report_bag bag;               /* everything the chart points to */
} report_chart;

enum { REPORT_MAX_CHARTS = 16 };

/* The charts that the set's data supports (fidelity against budget, policy x
 * layer and per-head heatmaps, fidelity against memory with its Pareto
 * front, isolated against cascade); *n of them. */
ap_status report_charts_make(const ap_report_set *set, report_chart *charts, int *n, ap_error *err);
ap_status report_chart_draw(const report_chart *c, ap_chart_format fmt, const char *path, ap_error *err);
void report_charts_free(report_chart *charts, int n);

#endif
