/* summary.c — the JSON summary through cJSON, and the text table. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/atomic_file.h"
#include "reports.h"

void ap_report_run_key(const ap_report_run *r, char *buf, size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < r->n_params && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%s=%g", i ? "," : "", r->param_name[i],
                                 r->param_value[i]);
    if (used < n) snprintf(buf + used, n - used, "%sgranularity=%s", used ? "," : "", r->granularity);
}

double ap_report_run_param(const ap_report_run *r, const char *name)
{
    for (int i = 0; i < r->n_params; i++)
        if (!strcmp(r->param_name[i], name)) return r->param_value[i];
    return NAN;
}

void ap_summary_free(ap_summary *s)
{
    for (int i = 0; s->runs && i < s->n_runs; i++) {
        free(s->runs[i].head_mean);
        free(s->runs[i].sample_mean);
    }
    free(s->runs);
    free(s->config_json);
    free(s->provenance_json);
    free(s->cell_json);
    memset(s, 0, sizeof *s);
}

/* ---- writing -------------------------------------------------------------- */

static cJSON *number(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

static cJSON *stats_json(const ap_stats *st)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "n", cJSON_CreateNumber((double)st->n));
    const char *names[] = {"mean", "sd", "median", "p05", "p95", "min", "max"};
    const double vals[] = {st->mean, st->sd, st->median, st->p05, st->p95, st->min, st->max};
    for (int i = 0; i < 7; i++) cJSON_AddItemToObject(o, names[i], number(vals[i]));
    cJSON *ci = cJSON_AddArrayToObject(o, "ci95");
    cJSON_AddItemToArray(ci, number(st->ci_lo));
    cJSON_AddItemToArray(ci, number(st->ci_hi));
    return o;
}

/* The paired comparison of a run against compare_to, every metric. */
static cJSON *compare_json(const ap_report_run *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "to", r->compare_to);
    cJSON *metrics = cJSON_AddObjectToObject(o, "metrics");
    for (int m = 0; m < AP_M_COUNT; m++) {
        const ap_paired *c = &r->compare[m];
        if (c->n == 0) continue;
        cJSON *mo = cJSON_AddObjectToObject(metrics, ap_metric_name(m));
        cJSON_AddNumberToObject(mo, "n", c->n);
        cJSON_AddItemToObject(mo, "delta", number(c->delta));
        cJSON *ci = cJSON_AddArrayToObject(mo, "ci95");
        cJSON_AddItemToArray(ci, number(c->ci_lo));
        cJSON_AddItemToArray(ci, number(c->ci_hi));
        cJSON_AddItemToObject(mo, "p", number(c->p));
        cJSON_AddItemToObject(mo, "p_holm", number(r->compare_p_holm[m]));
    }
    return o;
}

/* eval runs: perplexity = exp(mean next-token NLL), with the CI's bounds
 * mapped the same way; against the compared run, the perplexity ratio
 * exp(mean paired NLL difference) and its CI (docs/eval.md). */
static void add_perplexity(cJSON *o, const ap_report_run *r)
{
    const ap_stats *nll = &r->stats[AP_M_NLL];
    if (!nll->n) return;
    cJSON *ppl = cJSON_AddObjectToObject(o, "perplexity");
    cJSON_AddItemToObject(ppl, "value", number(exp(nll->mean)));
    cJSON *ci = cJSON_AddArrayToObject(ppl, "ci95");
    cJSON_AddItemToArray(ci, number(exp(nll->ci_lo)));
    cJSON_AddItemToArray(ci, number(exp(nll->ci_hi)));
    if (!r->compare_to[0]) return;
    const ap_paired *d = &r->compare[AP_M_NLL];
    cJSON *ratio = cJSON_AddObjectToObject(ppl, "ratio_to");
    cJSON_AddStringToObject(ratio, "policy", r->compare_to);
    cJSON_AddItemToObject(ratio, "value", number(exp(d->delta)));
    cJSON *rci = cJSON_AddArrayToObject(ratio, "ci95");
    cJSON_AddItemToArray(rci, number(exp(d->ci_lo)));
    cJSON_AddItemToArray(rci, number(exp(d->ci_hi)));
}

static cJSON *run_json(const ap_summary *s, const ap_report_run *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "policy", r->policy);
    cJSON *params = cJSON_AddObjectToObject(o, "params");
    for (int i = 0; i < r->n_params; i++)
        cJSON_AddNumberToObject(params, r->param_name[i], r->param_value[i]);
    cJSON_AddStringToObject(params, "granularity", r->granularity);
    cJSON_AddNumberToObject(o, "layer", r->layer);
    cJSON *metrics = cJSON_AddObjectToObject(o, "metrics");
    for (int m = 0; m < AP_M_COUNT; m++) { /* every metric, n 0 and null values when none was measured */
        cJSON *st = stats_json(&r->stats[m]);
        /* each sample's mean: what paired comparisons and a noise-aware check need */
        cJSON *per = r->sample_mean ? cJSON_AddArrayToObject(st, "per_sample") : NULL;
        for (int smp = 0; per && smp < r->n_samples; smp++)
            cJSON_AddItemToArray(per, number(r->sample_mean[(size_t)smp * AP_M_COUNT + m]));
        cJSON_AddItemToObject(metrics, ap_metric_name(m), st);
    }
    cJSON *heads = cJSON_AddArrayToObject(o, "per_head");
    for (int h = 0; h < r->n_head; h++) {
        cJSON *ho = cJSON_CreateObject();
        cJSON_AddNumberToObject(ho, "head", h);
        for (int m = 0; m < AP_M_COUNT; m++) {
            double v = r->head_mean[(size_t)h * AP_M_COUNT + m];
            if (!isnan(v)) cJSON_AddItemToObject(ho, ap_metric_name(m), number(v));
        }
        cJSON_AddItemToArray(heads, ho);
    }
    if (r->compare_to[0]) cJSON_AddItemToObject(o, "compare", compare_json(r));
    add_perplexity(o, r);
    cJSON *mem = cJSON_AddObjectToObject(o, "memory");
    ap_report_memory m;
    ap_report_memory_of(r, s->n_layer, s->n_embd, s->n_head, s->model_dtype, &m);
    cJSON_AddNumberToObject(mem, "kv_positions_per_layer", r->kv_positions);
    cJSON_AddNumberToObject(mem, "kv_bytes_per_layer_fp16", m.per_layer_fp16);
    cJSON_AddNumberToObject(mem, "kv_bytes_model_fp16", m.model_fp16);
    if (!isnan(m.per_layer_stored)) {
        cJSON_AddStringToObject(mem, "stored_dtype", s->model_dtype);
        cJSON_AddNumberToObject(mem, "kv_bytes_per_layer", m.per_layer_stored);
        cJSON_AddNumberToObject(mem, "kv_bytes_model", m.model_stored);
    }
    if (r->kv_quant_bytes > 0) { /* --quant: codes, scales and the fp16 residual */
        cJSON_AddNumberToObject(mem, "kv_bytes_per_layer_quantised", r->kv_quant_bytes);
        cJSON_AddNumberToObject(mem, "kv_bytes_model_quantised", r->kv_quant_bytes * s->n_layer);
    }
    cJSON_AddNumberToObject(mem, "state_bytes", m.state_bytes);
    cJSON_AddNumberToObject(mem, "counter_bytes_per_layer", r->counter_bytes);
    cJSON_AddNumberToObject(mem, "kv_bytes", r->kv_bytes);         /* as measured, fp32 */
    cJSON_AddNumberToObject(mem, "sketch_bytes", r->sketch_bytes); /* = state_bytes */
    cJSON *timing = cJSON_AddObjectToObject(o, "timing");
    cJSON_AddNumberToObject(timing, "replay_s", r->replay_s);
    cJSON_AddNumberToObject(timing, "tokens_per_s", r->tokens_per_s);
    return o;
}

/* The policy's name, with the parameters that tell it from the summary's
 * other runs of the same policy and layer (a sweep, --seeds): "cms budget=32". */
static void run_label(const ap_summary *s, const ap_report_run *r, char *buf, size_t n)
{
    size_t used = (size_t)snprintf(buf, n, "%s", r->policy);
    for (int p = 0; p < r->n_params && used < n; p++) {
        int differs = 0;
        for (int i = 0; i < s->n_runs && !differs; i++) {
            const ap_report_run *o = &s->runs[i];
            if (strcmp(o->policy, r->policy) != 0 || o->layer != r->layer) continue;
            for (int q = 0; q < o->n_params; q++)
                differs |= !strcmp(o->param_name[q], r->param_name[p]) && o->param_value[q] != r->param_value[p];
        }
        if (differs)
            used += (size_t)snprintf(buf + used, n - used, " %s=%g", r->param_name[p], r->param_value[p]);
    }
}

/* "seed_spread": for runs that differ only in their seed, each metric's mean
 * over the seeds, its sd, min and max. */
static void add_seed_spread(cJSON *root, const ap_summary *s)
{
    ap_seed_group *groups = malloc(((size_t)s->n_runs + 1) * sizeof *groups);
    const int n = groups ? ap_seed_groups(s, groups, s->n_runs) : 0;
    cJSON *arr = n ? cJSON_AddArrayToObject(root, "seed_spread") : NULL;
    for (int i = 0; arr && i < n; i++) {
        const ap_report_run *r = &s->runs[groups[i].first];
        cJSON *g = cJSON_CreateObject();
        cJSON_AddStringToObject(g, "policy", r->policy);
        cJSON_AddNumberToObject(g, "layer", r->layer);
        cJSON *seeds = cJSON_AddArrayToObject(g, "seeds");
        for (int k = 0; k < groups[i].n; k++) {
            const ap_report_run *rk = &s->runs[groups[i].run[k]];
            for (int p = 0; p < rk->n_params; p++)
                if (!strcmp(rk->param_name[p], "seed")) cJSON_AddItemToArray(seeds, number(rk->param_value[p]));
        }
        cJSON *metrics = cJSON_AddObjectToObject(g, "metrics");
        for (int m = 0; m < AP_M_COUNT; m++) {
            ap_stats st;
            ap_seed_spread(s, &groups[i], m, &st);
            if (!st.n) continue;
            cJSON *mo = cJSON_AddObjectToObject(metrics, ap_metric_name(m));
            cJSON_AddItemToObject(mo, "mean", number(st.mean));
            cJSON_AddItemToObject(mo, "sd", number(st.sd));
            cJSON_AddItemToObject(mo, "min", number(st.min));
            cJSON_AddItemToObject(mo, "max", number(st.max));
        }
        cJSON_AddItemToArray(arr, g);
    }
    free(groups);
}

ap_status ap_summary_write_json(const ap_summary *s, const char *path, ap_error *err)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "schema", AP_SUMMARY_SCHEMA);
    cJSON *tool = cJSON_AddObjectToObject(root, "tool");
    cJSON_AddStringToObject(tool, "name", "attnprobe");
    cJSON_AddStringToObject(tool, "version", s->tool_version);
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "source", s->model_source);
    cJSON_AddStringToObject(model, "sha256", s->model_sha256);
    cJSON_AddNumberToObject(model, "n_layer", s->n_layer);
    cJSON_AddNumberToObject(model, "n_head", s->n_head);
    cJSON_AddNumberToObject(model, "n_embd", s->n_embd);
    cJSON_AddNumberToObject(model, "vocab", s->vocab);
    if (s->model_dtype[0]) cJSON_AddStringToObject(model, "dtype", s->model_dtype);
    cJSON *input = cJSON_AddObjectToObject(root, "input");
    cJSON_AddStringToObject(input, "source", s->input_source);
    cJSON_AddStringToObject(input, "sha256", s->input_sha256);
    cJSON_AddNumberToObject(input, "samples", s->samples);
    cJSON_AddNumberToObject(input, "tokens", s->tokens);
    /* a bootstrap over fewer samples gives intervals that mean little */
    cJSON_AddBoolToObject(root, "ci_reliable", s->samples >= AP_CI_MIN_SAMPLES);
    cJSON *config = s->config_json ? cJSON_Parse(s->config_json) : NULL;
    cJSON_AddItemToObject(root, "config", config ? config : cJSON_CreateObject());
    cJSON *provenance = s->provenance_json ? cJSON_Parse(s->provenance_json) : NULL;
    if (provenance) cJSON_AddItemToObject(root, "provenance", provenance);
    cJSON *cell = s->cell_json ? cJSON_Parse(s->cell_json) : NULL;
    if (cell) cJSON_AddItemToObject(root, "cell", cell);
    cJSON *device = cJSON_AddObjectToObject(root, "device");
    cJSON_AddStringToObject(device, "backend", s->backend);
    cJSON_AddStringToObject(device, "name", s->device_name);
    cJSON_AddStringToObject(device, "precision", s->precision);
    cJSON_AddNumberToObject(root, "trace_s", s->trace_s);
    cJSON_AddNumberToObject(root, "study_s", s->study_s);
    cJSON_AddNumberToObject(root, "statistics_s", s->statistics_s);
    add_seed_spread(root, s);
    cJSON *runs = cJSON_AddArrayToObject(root, "runs");
    for (int i = 0; i < s->n_runs; i++) cJSON_AddItemToArray(runs, run_json(s, &s->runs[i]));
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory writing %s", path);
    char tmp[1100];
    FILE *f;
    ap_status st = ap_atomic_begin(path, tmp, sizeof tmp, &f, err);
    if (st) {
        free(text);
        return st;
    }
    int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    free(text);
    return ap_atomic_end(f, tmp, path, ok, err);
}

/* ---- reading -------------------------------------------------------------- */

static double get_num(const cJSON *o, const char *key)
{
    const cJSON *v = key ? cJSON_GetObjectItemCaseSensitive(o, key) : o;
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* An integer field; 0 when absent, not a number or out of int range (a
 * summary is input: casting such a double would be undefined). */
static int get_int(const cJSON *o, const char *key)
{
    double v = get_num(o, key);
    return v >= -2147483648.0 && v <= 2147483647.0 ? (int)v : 0;
}

static void get_str(const cJSON *o, const char *key, char *dst, size_t n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    snprintf(dst, n, "%s", cJSON_IsString(v) ? v->valuestring : "");
}

/* A metric's per-sample means into r->sample_mean (sized by the first array;
 * every metric's must have that length). */
static ap_status read_per_sample(const cJSON *per, int m, ap_report_run *r, const char *path, int index,
                                 ap_error *err)
{
    const int n = cJSON_GetArraySize(per);
    if (!r->sample_mean) {
        if (n < 1 || n > 10000000) return AP_OK;
        if (!(r->sample_mean = malloc(((size_t)n * AP_M_COUNT + 1) * sizeof *r->sample_mean)))
            return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        for (size_t i = 0; i < (size_t)n * AP_M_COUNT; i++) r->sample_mean[i] = NAN;
        r->n_samples = n;
    }
    if (n != r->n_samples)
        return ap_error_set(err, AP_ERR_INPUT, "%s: runs[%d] metric %s: %d per-sample means, %d elsewhere",
                            path, index, ap_metric_name(m), n, r->n_samples);
    for (int smp = 0; smp < n; smp++)
        r->sample_mean[(size_t)smp * AP_M_COUNT + m] = get_num(cJSON_GetArrayItem(per, smp), NULL);
    return AP_OK;
}

static ap_status read_run(const cJSON *jr, ap_report_run *r, const char *path, int index, ap_error *err)
{
    memset(r, 0, sizeof *r);
    const cJSON *policy = cJSON_GetObjectItemCaseSensitive(jr, "policy");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(jr, "params");
    const cJSON *metrics = cJSON_GetObjectItemCaseSensitive(jr, "metrics");
    if (!cJSON_IsString(policy) || !cJSON_IsObject(params) || !cJSON_IsObject(metrics) ||
        !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(jr, "layer")))
        return ap_error_set(err, AP_ERR_INPUT, "%s: runs[%d] lacks policy, params, layer or metrics",
                            path, index);
    snprintf(r->policy, sizeof r->policy, "%s", policy->valuestring);
    r->layer = get_int(jr, "layer");
    const cJSON *p;
    cJSON_ArrayForEach(p, params)
    {
        if (cJSON_IsString(p) && strcmp(p->string, "granularity") == 0) {
            snprintf(r->granularity, sizeof r->granularity, "%s", p->valuestring);
        } else if (cJSON_IsNumber(p) && r->n_params < AP_MAX_PARAMS) {
            snprintf(r->param_name[r->n_params], sizeof r->param_name[0], "%s", p->string);
            r->param_value[r->n_params++] = p->valuedouble;
        }
    }
    ap_status st_per = AP_OK;
    for (int m = 0; m < AP_M_COUNT; m++) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(metrics, ap_metric_name(m));
        ap_stats *o = &r->stats[m];
        /* every metric is written; one missing, or rows without a mean, is a
         * malformed file (a regression gate must not skip what it cannot read),
         * except the metrics later versions added: a summary written before
         * them has none measured */
        if (!cJSON_IsObject(st) && m >= AP_M_FIRST_ADDED) {
            *o = (ap_stats){.mean = NAN, .sd = NAN, .median = NAN, .p05 = NAN, .p95 = NAN, .min = NAN, .max = NAN,
                            .ci_lo = NAN, .ci_hi = NAN};
            continue;
        }
        if (!cJSON_IsObject(st))
            return ap_error_set(err, AP_ERR_INPUT, "%s: runs[%d] (%s) has no metric %s", path, index,
                                r->policy, ap_metric_name(m));
        o->n = (size_t)(get_int(st, "n") > 0 ? get_int(st, "n") : 0);
        o->mean = get_num(st, "mean");
        if (o->n > 0 && isnan(o->mean))
            return ap_error_set(err, AP_ERR_INPUT, "%s: runs[%d] (%s) metric %s: %zu rows but no mean "
                                "(a number is needed)", path, index, r->policy, ap_metric_name(m), o->n);
        o->sd = get_num(st, "sd");
        o->median = get_num(st, "median");
        o->p05 = get_num(st, "p05");
        o->p95 = get_num(st, "p95");
        o->min = get_num(st, "min");
        o->max = get_num(st, "max");
        const cJSON *per = cJSON_GetObjectItemCaseSensitive(st, "per_sample");
        if (cJSON_IsArray(per) && (st_per = read_per_sample(per, m, r, path, index, err)) != AP_OK)
            return st_per;
        const cJSON *ci = cJSON_GetObjectItemCaseSensitive(st, "ci95");
        o->ci_lo = cJSON_IsArray(ci) && cJSON_IsNumber(cJSON_GetArrayItem(ci, 0)) ? cJSON_GetArrayItem(ci, 0)->valuedouble : NAN;
        o->ci_hi = cJSON_IsArray(ci) && cJSON_IsNumber(cJSON_GetArrayItem(ci, 1)) ? cJSON_GetArrayItem(ci, 1)->valuedouble : NAN;
    }
    const cJSON *heads = cJSON_GetObjectItemCaseSensitive(jr, "per_head");
    r->n_head = cJSON_IsArray(heads) ? cJSON_GetArraySize(heads) : 0;
    if (r->n_head > 4096) r->n_head = 0;
    r->head_mean = malloc(((size_t)r->n_head * AP_M_COUNT + 1) * sizeof *r->head_mean);
    if (!r->head_mean) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    for (int h = 0; h < r->n_head; h++)
        for (int m = 0; m < AP_M_COUNT; m++)
            r->head_mean[(size_t)h * AP_M_COUNT + m] = get_num(cJSON_GetArrayItem(heads, h), ap_metric_name(m));
    const cJSON *cmp = cJSON_GetObjectItemCaseSensitive(jr, "compare");
    if (cJSON_IsObject(cmp)) {
        get_str(cmp, "to", r->compare_to, sizeof r->compare_to);
        const cJSON *cm = cJSON_GetObjectItemCaseSensitive(cmp, "metrics");
        for (int m = 0; m < AP_M_COUNT; m++) {
            const cJSON *mo = cJSON_GetObjectItemCaseSensitive(cm, ap_metric_name(m));
            ap_paired *c = &r->compare[m];
            if (!cJSON_IsObject(mo)) continue;
            c->n = get_int(mo, "n") > 0 ? get_int(mo, "n") : 0;
            c->delta = get_num(mo, "delta");
            c->p = get_num(mo, "p");
            r->compare_p_holm[m] = get_num(mo, "p_holm");
            const cJSON *ci = cJSON_GetObjectItemCaseSensitive(mo, "ci95");
            c->ci_lo = cJSON_IsArray(ci) ? get_num(cJSON_GetArrayItem(ci, 0), NULL) : NAN;
            c->ci_hi = cJSON_IsArray(ci) ? get_num(cJSON_GetArrayItem(ci, 1), NULL) : NAN;
        }
    }
    const cJSON *mem = cJSON_GetObjectItemCaseSensitive(jr, "memory");
    const cJSON *timing = cJSON_GetObjectItemCaseSensitive(jr, "timing");
    r->kv_bytes = get_num(mem, "kv_bytes");
    const double quant = get_num(mem, "kv_bytes_per_layer_quantised");
    r->kv_quant_bytes = isnan(quant) ? 0 : quant;
    r->kv_positions = get_num(mem, "kv_positions_per_layer");
    r->counter_bytes = get_num(mem, "counter_bytes_per_layer");
    r->sketch_bytes = get_num(mem, "sketch_bytes");
    r->replay_s = get_num(timing, "replay_s");
    r->tokens_per_s = get_num(timing, "tokens_per_s");
    return AP_OK;
}

ap_status ap_summary_read_json(const char *path, ap_summary *s, ap_error *err)
{
    memset(s, 0, sizeof *s);
    FILE *f = fopen(path, "rb");
    if (!f) return ap_error_set(err, AP_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (size < 0 || size > (1L << 30)) {
        fclose(f);
        return ap_error_set(err, AP_ERR_INPUT, "%s: not a summary (size %ld)", path, size);
    }
    char *text = malloc((size_t)size + 1);
    size_t got = text ? fread(text, 1, (size_t)size, f) : 0;
    fclose(f);
    if (!text) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    ap_status st = ap_summary_parse_json(text, got, path, s, err);
    free(text);
    return st;
}

ap_status ap_summary_parse_json(const char *text, size_t n, const char *path, ap_summary *s, ap_error *err)
{
    memset(s, 0, sizeof *s);
    cJSON *root = cJSON_ParseWithLength(text, n);
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(root, "schema");
    if (!root || !cJSON_IsString(schema) || strcmp(schema->valuestring, AP_SUMMARY_SCHEMA) != 0) {
        cJSON_Delete(root);
        return ap_error_set(err, AP_ERR_INPUT, "%s: not an attnprobe summary (schema \"%s\" "
                            "expected)", path, AP_SUMMARY_SCHEMA);
    }
    const cJSON *tool = cJSON_GetObjectItemCaseSensitive(root, "tool");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(root, "input");
    const cJSON *device = cJSON_GetObjectItemCaseSensitive(root, "device");
    get_str(tool, "version", s->tool_version, sizeof s->tool_version);
    get_str(model, "source", s->model_source, sizeof s->model_source);
    get_str(model, "sha256", s->model_sha256, sizeof s->model_sha256);
    s->n_layer = get_int(model, "n_layer");
    s->n_head = get_int(model, "n_head");
    s->n_embd = get_int(model, "n_embd");
    s->vocab = get_int(model, "vocab");
    get_str(model, "dtype", s->model_dtype, sizeof s->model_dtype);
    get_str(input, "source", s->input_source, sizeof s->input_source);
    get_str(input, "sha256", s->input_sha256, sizeof s->input_sha256);
    s->samples = get_int(input, "samples");
    s->tokens = get_int(input, "tokens");
    get_str(device, "backend", s->backend, sizeof s->backend);
    get_str(device, "name", s->device_name, sizeof s->device_name);
    get_str(device, "precision", s->precision, sizeof s->precision);
    s->trace_s = get_num(root, "trace_s");
    s->study_s = get_num(root, "study_s");
    s->statistics_s = get_num(root, "statistics_s");
    const cJSON *config = cJSON_GetObjectItemCaseSensitive(root, "config");
    s->config_json = cJSON_IsObject(config) ? cJSON_PrintUnformatted(config) : NULL;
    const cJSON *provenance = cJSON_GetObjectItemCaseSensitive(root, "provenance");
    s->provenance_json = cJSON_IsObject(provenance) ? cJSON_PrintUnformatted(provenance) : NULL;
    const cJSON *cell = cJSON_GetObjectItemCaseSensitive(root, "cell");
    s->cell_json = cJSON_IsObject(cell) ? cJSON_PrintUnformatted(cell) : NULL;
    const cJSON *runs = cJSON_GetObjectItemCaseSensitive(root, "runs");
    ap_status st = AP_OK;
    if (!cJSON_IsArray(runs)) {
        st = ap_error_set(err, AP_ERR_INPUT, "%s: no \"runs\" array", path);
    } else {
        s->runs = calloc((size_t)cJSON_GetArraySize(runs) + 1, sizeof *s->runs);
        if (!s->runs) st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        const cJSON *jr;
        cJSON_ArrayForEach(jr, runs)
        {
            if (st) break;
            st = read_run(jr, &s->runs[s->n_runs], path, s->n_runs, err);
            s->n_runs++; /* counted even when failed, so its buffer is freed */
        }
    }
    cJSON_Delete(root);
    if (st) ap_summary_free(s);
    return st;
}

/* ---- text table ----------------------------------------------------------- */

void ap_summary_print_table(const ap_summary *s, FILE *f)
{
    static const ap_metric shown[] = {AP_M_KL, AP_M_JS, AP_M_COSINE, AP_M_TV, AP_M_MASS, AP_M_TOP8,
                                      AP_M_PEAK_SHIFT, AP_M_OUT_ERR};
    const int n_shown = sizeof shown / sizeof shown[0];
    fprintf(f, "model %s (%d layers, %d heads) · %d samples, %d tokens · %s %s\n", s->model_source,
            s->n_layer, s->n_head, s->samples, s->tokens, s->backend, s->precision);
    int width = 13; /* the policy column: as wide as its longest label */
    for (int i = 0; i < s->n_runs; i++) {
        char label[96];
        run_label(s, &s->runs[i], label, sizeof label);
        if ((int)strlen(label) > width) width = (int)strlen(label);
    }
    fprintf(f, "%-*s %5s", width, "policy", "layer");
    for (int i = 0; i < n_shown; i++) fprintf(f, " %17s", ap_metric_name(shown[i]));
    fprintf(f, " %9s %10s %10s %8s\n", "kv_KiB", "state_KiB", "scores_B", "time_ms");
    for (int r = 0; r < s->n_runs; r++) {
        const ap_report_run *run = &s->runs[r];
        char label[96];
        run_label(s, run, label, sizeof label);
        fprintf(f, "%-*s %5d", width, label, run->layer);
        for (int i = 0; i < n_shown; i++) {
            const ap_stats *st = &run->stats[shown[i]];
            char cell[40];
            if (st->n == 0 || isnan(st->mean)) snprintf(cell, sizeof cell, "-");
            else snprintf(cell, sizeof cell, "%.4f ± %.4f", st->mean, st->sd);
            fprintf(f, " %17s", cell);
        }
        fprintf(f, " %9.1f %10.1f %10.0f %8.1f\n", run->kv_bytes / 1024, run->sketch_bytes / 1024,
                run->counter_bytes, run->replay_s * 1e3);
    }
    fprintf(f, "mean ± sd over %zu measured rows per run (samples × steps × heads); JSON has "
            "median, p05, p95, 95%% CI\n", s->n_runs ? s->runs[0].stats[AP_M_KL].n : (size_t)0);
    int shown_compare = 0;
    for (int i = 0; i < s->n_runs; i++) {
        const ap_report_run *r = &s->runs[i];
        if (!r->compare_to[0] || r->compare[AP_M_KL].n == 0) continue;
        if (!shown_compare++)
            fprintf(f, "\npaired over samples against %s (mean difference [95%% CI], Holm-adjusted "
                    "sign-flip p):\n", r->compare_to);
        const ap_paired *kl = &r->compare[AP_M_KL], *cs = &r->compare[AP_M_COSINE];
        char label[96];
        run_label(s, r, label, sizeof label);
        fprintf(f, "  %s - %s, layer %d: dKL %+.4f [%+.4f, %+.4f] p = %.3g;  dcosine %+.4f [%+.4f, %+.4f] "
                "p = %.3g\n", label, r->compare_to, r->layer, kl->delta, kl->ci_lo, kl->ci_hi,
                r->compare_p_holm[AP_M_KL], cs->delta, cs->ci_lo, cs->ci_hi, r->compare_p_holm[AP_M_COSINE]);
    }
    ap_seed_group *groups = malloc(((size_t)s->n_runs + 1) * sizeof *groups);
    const int n_groups = groups ? ap_seed_groups(s, groups, s->n_runs) : 0;
    for (int i = 0; i < n_groups; i++) {
        ap_stats kl, cs;
        ap_seed_spread(s, &groups[i], AP_M_KL, &kl);
        ap_seed_spread(s, &groups[i], AP_M_COSINE, &cs);
        if (!i) fprintf(f, "\nspread of the mean over seeds (sd, min..max):\n");
        const ap_report_run *r = &s->runs[groups[i].first];
        fprintf(f, "  %s, layer %d, %d seeds: KL %.4f sd %.4f (%.4f..%.4f); cosine %.4f sd %.4f\n", r->policy,
                r->layer, groups[i].n, kl.mean, kl.sd, kl.min, kl.max, cs.mean, cs.sd);
    }
    free(groups);
    if (s->samples < AP_CI_MIN_SAMPLES)
        fprintf(f, "warning: %d sample%s: the 95%% CIs are unreliable (at least %d needed; --samples)\n",
                s->samples, s->samples == 1 ? "" : "s", AP_CI_MIN_SAMPLES);
}

static double dtype_bytes(const char *dtype)
{
    return !strcmp(dtype, "F32") ? 4 : !strcmp(dtype, "F16") || !strcmp(dtype, "BF16") ? 2 : NAN;
}

void ap_report_memory_of(const ap_report_run *r, int n_layer, int n_embd, int n_head,
                         const char *stored_dtype, ap_report_memory *out)
{
    /* keys and values: 2 vectors of head_dim per retained position and head */
    const double per_layer_values = r->kv_positions * 2.0 * (n_head > 0 ? (double)n_embd / n_head : 0);
    out->per_layer_fp16 = per_layer_values * 2;
    out->model_fp16 = out->per_layer_fp16 * n_layer;
    out->per_layer_stored = per_layer_values * dtype_bytes(stored_dtype ? stored_dtype : "");
    out->model_stored = out->per_layer_stored * n_layer;
    out->state_bytes = r->sketch_bytes;
}

ap_status ap_summary_write_samples(const ap_summary *s, const char *path, ap_error *err)
{
    char tmp[1100];
    FILE *f;
    ap_status st = ap_atomic_begin(path, tmp, sizeof tmp, &f, err);
    if (st) return st;
    int ok = 1;
    for (int i = 0; i < s->n_runs && ok; i++) {
        const ap_report_run *r = &s->runs[i];
        for (int smp = 0; smp < r->n_samples && ok; smp++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "sample", smp);
            cJSON_AddStringToObject(o, "policy", r->policy);
            cJSON *params = cJSON_AddObjectToObject(o, "params");
            for (int k = 0; k < r->n_params; k++) cJSON_AddNumberToObject(params, r->param_name[k], r->param_value[k]);
            cJSON_AddNumberToObject(o, "layer", r->layer);
            cJSON *means = cJSON_AddObjectToObject(o, "mean");
            for (int m = 0; m < AP_M_COUNT; m++)
                cJSON_AddItemToObject(means, ap_metric_name(m), number(r->sample_mean[(size_t)smp * AP_M_COUNT + m]));
            char *line = cJSON_PrintUnformatted(o);
            cJSON_Delete(o);
            ok = line && fputs(line, f) >= 0 && fputc('\n', f) != EOF;
            free(line);
        }
    }
    return ap_atomic_end(f, tmp, path, ok, err);
}
