/* check.c — the regression gate: compare a current summary with a baseline,
 * run by run, metric by metric. */
#include <cjson/cJSON.h>
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
    tol[AP_M_INDEX_KL] = 0.05;
    tol[AP_M_INDEX_COSINE] = 0.01;
    tol[AP_M_ATTN_LOSS] = 0.01;
    tol[AP_M_NLL] = 0.02; /* about 2% of perplexity */
    tol[AP_M_NEXT_KL] = 0.05;
    tol[AP_M_NEXT_TOP1] = 0.01;
    tol[AP_M_ARGMAX_RANK] = 1.0;
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
        /* ppl=P%: perplexity exp(nll) may grow by P percent, i.e. the mean NLL by ln(1 + P/100) */
        const int ppl = !strcmp(item, "ppl") && eq && end && end != eq + 1 && !strcmp(end, "%");
        if (ppl) {
            m = AP_M_NLL, end++;
            v = log1p(v / 100);
        }
        if (!eq || m < 0 || end == eq + 1 || *end != '\0' || !(v >= 0) || !isfinite(v)) {
            char names[512] = "";
            for (int k = 0; k < AP_M_COUNT; k++)
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", k ? ", " : "",
                         ap_metric_name(k));
            return ap_error_set(err, AP_ERR_USAGE,
                                "tolerances %s: \"%s\" is not METRIC=VALUE with a known metric and a "
                                "finite value >= 0, or ppl=P%% (metrics: %s)", spec, item, names);
        }
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

/* The config's value of key as compact JSON text (malloc'ed), or NULL. */
static char *config_value(const cJSON *config, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(config, key);
    return v ? cJSON_PrintUnformatted(v) : NULL;
}

/* What makes two summaries comparable: the same model, input, samples and
 * measured steps. A difference is AP_ERR_INPUT naming the field, or a note
 * when allow_mismatch. */
static ap_status check_comparable(const ap_summary *base, const ap_summary *cur, int allow_mismatch, FILE *out,
                                  ap_error *err)
{
    char b_samples[32], c_samples[32];
    snprintf(b_samples, sizeof b_samples, "%d", base->samples);
    snprintf(c_samples, sizeof c_samples, "%d", cur->samples);
    const struct { const char *field, *a, *b; } plain[] = {
        {"model.sha256", base->model_sha256, cur->model_sha256},
        {"input.sha256", base->input_sha256, cur->input_sha256},
        {"input.samples", b_samples, c_samples},
    };
    cJSON *bc = cJSON_Parse(base->config_json ? base->config_json : "{}");
    cJSON *cc = cJSON_Parse(cur->config_json ? cur->config_json : "{}");
    static const char *const KEYS[] = {"max_length", "stride", "warmup", "layers", "mode", "heads"};
    ap_status st = AP_OK;
    for (size_t i = 0; i < sizeof plain / sizeof plain[0] + sizeof KEYS / sizeof KEYS[0] && !st; i++) {
        const size_t n_plain = sizeof plain / sizeof plain[0];
        char *a = NULL, *b = NULL, field[64];
        if (i < n_plain) {
            snprintf(field, sizeof field, "%s", plain[i].field);
            a = strdup(plain[i].a), b = strdup(plain[i].b);
        } else {
            snprintf(field, sizeof field, "config.%s", KEYS[i - n_plain]);
            a = config_value(bc, KEYS[i - n_plain]), b = config_value(cc, KEYS[i - n_plain]);
        }
        /* an unknown checksum ("") is never taken as the same input */
        const int unknown = i < 2 && a && b && (!a[0] || !b[0]);
        if ((a || b) && (!a || !b || unknown || strcmp(a, b) != 0)) {
            if (allow_mismatch)
                fprintf(out, "note: %s differs (%s and %s); compared anyway (--allow-mismatch)\n", field,
                        a && a[0] ? a : "missing", b && b[0] ? b : "missing");
            else
                st = ap_error_set(err, AP_ERR_INPUT, "the summaries differ in %s (%s and %s): their numbers "
                                  "are not comparable (--allow-mismatch compares them anyway)", field,
                                  a && a[0] ? a : "missing", b && b[0] ? b : "missing");
        }
        free(a), free(b);
    }
    cJSON_Delete(bc);
    cJSON_Delete(cc);
    return st;
}

ap_status ap_check(const ap_summary *base, const ap_summary *cur, const double tol[AP_M_COUNT],
                   int allow_mismatch, int noise_aware, FILE *out, int *regressions, ap_error *err)
{
    *regressions = 0;
    if (base->n_layer != cur->n_layer || base->n_head != cur->n_head || base->n_embd != cur->n_embd)
        return ap_error_set(err, AP_ERR_INPUT,
                            "the summaries are of different models (%d/%d/%d and %d/%d/%d layers/heads/width)",
                            base->n_layer, base->n_head, base->n_embd, cur->n_layer, cur->n_head,
                            cur->n_embd);
    ap_status st = check_comparable(base, cur, allow_mismatch, out, err);
    if (st) return st;
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
        /* noise-aware: both files carry the same samples' means */
        const int paired = noise_aware && b->sample_mean && c->sample_mean && b->n_samples == c->n_samples &&
                           b->n_samples > 1 && !strcmp(base->input_sha256, cur->input_sha256);
        for (int m = 0; m < AP_M_COUNT; m++) {
            const ap_stats *sb = &b->stats[m], *sc = &c->stats[m];
            if (sb->n == 0 || isnan(sb->mean)) continue;
            const double change = (sc->n == 0 ? NAN : sc->mean) - sb->mean;
            const int higher_better = ap_metric_higher_is_better(m);
            const double worse = higher_better ? -change : change;
            int bad = isnan(change) || worse > tol[m];
            char ci_text[64] = "";
            if (bad && !isnan(change) && paired) {
                /* the paired difference's CI must exclude zero on the worse side */
                double *x = malloc((size_t)b->n_samples * sizeof *x), *y = malloc((size_t)b->n_samples * sizeof *y);
                ap_paired d;
                ap_status st_p = !x || !y ? ap_error_set(err, AP_ERR_RUNTIME, "out of memory") : AP_OK;
                for (int smp = 0; !st_p && smp < b->n_samples; smp++) {
                    x[smp] = c->sample_mean[(size_t)smp * AP_M_COUNT + m];
                    y[smp] = b->sample_mean[(size_t)smp * AP_M_COUNT + m];
                }
                if (!st_p) st_p = ap_paired_compare(x, y, b->n_samples, 2000, 0, 1234 + (uint64_t)m, &d, err);
                free(x), free(y);
                if (st_p) return st_p;
                const int significant = higher_better ? d.ci_hi < 0 : d.ci_lo > 0;
                snprintf(ci_text, sizeof ci_text, " [%+.4g, %+.4g]", d.ci_lo, d.ci_hi);
                bad = significant;
            }
            *regressions += bad;
            const int noise = !bad && !isnan(change) && worse > tol[m]; /* beyond tolerance, CI includes 0 */
            fprintf(out, "%-13s %5d %-15s %12.6f %12.6f %+12.6f %9.4g  %s%s%s\n", b->policy, b->layer,
                    ap_metric_name(m), sb->mean, sc->mean, change, tol[m],
                    bad ? "REGRESSION" : worse < 0 ? "better" : "ok", ci_text,
                    bad ? (ci_text[0] ? " (tolerance and CI)" : " (tolerance)") : noise ? " (within noise: CI includes 0)" : "");
        }
    }
    fprintf(out, "%d regression%s\n", *regressions, *regressions == 1 ? "" : "s");
    return AP_OK;
}
