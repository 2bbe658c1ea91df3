/* check.c — the regression gate: compare a current summary with a baseline,
 * run by run, metric by metric. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reports.h"

void ap_check_default_tolerances(double tol[AP_M_COUNT])
{
    for (int m = 0; m < AP_M_COUNT; m++) tol[m] = 0.02;
    tol[AP_M_KL] = 0.05;
    tol[AP_M_KL_REV] = 0.05;
    tol[AP_M_JS] = 0.01;
    tol[AP_M_COSINE] = 0.01;
    tol[AP_M_MASS] = 0.01;
    tol[AP_M_L1] = 0.04;
    tol[AP_M_PEAK_SHIFT] = 1.0;
}

ap_status ap_check_parse_tolerances(const char *spec, double tol[AP_M_COUNT], ap_error *err)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *save = NULL, *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        char *end = NULL;
        double v = eq ? strtod(eq + 1, &end) : NAN;
        if (eq) *eq = '\0';
        int m = ap_metric_from_name(item);
        if (!eq || m < 0 || end == eq + 1 || *end != '\0' || !(v >= 0))
            return ap_error_set(err, AP_ERR_USAGE,
                                "tolerances %s: \"%s\" is not METRIC=VALUE with a known metric and a "
                                "value >= 0 (metrics: kl, kl_rev, js, tv, cosine, l1, l2, "
                                "peak_shift, mass_retained, topk_recall@1, topk_recall@8, "
                                "topk_recall@32, out_err, index_l1, index_rms)",
                                spec, item);
        tol[m] = v;
    }
    return AP_OK;
}

static const ap_report_run *find_run(const ap_summary *s, const ap_report_run *like)
{
    char want[512], key[512];
    ap_report_run_key(like, want, sizeof want);
    for (int i = 0; i < s->n_runs; i++) {
        const ap_report_run *r = &s->runs[i];
        ap_report_run_key(r, key, sizeof key);
        if (strcmp(r->policy, like->policy) == 0 && r->layer == like->layer && strcmp(key, want) == 0)
            return r;
    }
    return NULL;
}

ap_status ap_check(const ap_summary *base, const ap_summary *cur, const double tol[AP_M_COUNT],
                   FILE *out, int *regressions, ap_error *err)
{
    *regressions = 0;
    if (base->n_layer != cur->n_layer || base->n_head != cur->n_head || base->n_embd != cur->n_embd)
        return ap_error_set(err, AP_ERR_INPUT,
                            "the summaries are of different models (%d/%d/%d and %d/%d/%d layers/heads/width)",
                            base->n_layer, base->n_head, base->n_embd, cur->n_layer, cur->n_head,
                            cur->n_embd);
    if (strcmp(base->model_sha256, cur->model_sha256) != 0)
        fprintf(out, "note: model checksums differ (%.12s… and %.12s…)\n", base->model_sha256,
                cur->model_sha256);
    fprintf(out, "%-13s %5s %-15s %12s %12s %12s %9s  %s\n", "policy", "layer", "metric",
            "baseline", "current", "change", "tolerance", "verdict");
    for (int i = 0; i < base->n_runs; i++) {
        const ap_report_run *b = &base->runs[i], *c = find_run(cur, b);
        if (!c) {
            char key[512];
            ap_report_run_key(b, key, sizeof key);
            return ap_error_set(err, AP_ERR_INPUT,
                                "the current summary has no run of %s (%s) at layer %d, which the "
                                "baseline has", b->policy, key, b->layer);
        }
        for (int m = 0; m < AP_M_COUNT; m++) {
            const ap_stats *sb = &b->stats[m], *sc = &c->stats[m];
            if (sb->n == 0 || isnan(sb->mean)) continue;
            const double change = (sc->n == 0 ? NAN : sc->mean) - sb->mean;
            const double worse = ap_metric_higher_is_better(m) ? -change : change;
            const int bad = isnan(change) || worse > tol[m];
            *regressions += bad;
            fprintf(out, "%-13s %5d %-15s %12.6f %12.6f %+12.6f %9.4g  %s\n", b->policy, b->layer,
                    ap_metric_name(m), sb->mean, sc->mean, change, tol[m],
                    bad ? "REGRESSION" : worse < 0 ? "better" : "ok");
        }
    }
    fprintf(out, "%d regression%s\n", *regressions, *regressions == 1 ? "" : "s");
    return AP_OK;
}
