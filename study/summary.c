/* summary.c — a study's accumulators as a summary (reports.h): statistics
 * per run, per-head means, memory, time, and the config that shaped them. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/pool.h"
#include "study_internal.h"

/* The parameters that shape a policy's numbers, for the summary: the
 * budget, protection, the registry's parameters, the allocation, the seed. */
static void run_params(const ap_policy_params *p, ap_report_run *r)
{
    const ap_policy_info *info = ap_policy_find(p->name);
    int n = 0;
#define PARAM(key, value) (snprintf(r->param_name[n], sizeof r->param_name[n], "%s", key), r->param_value[n++] = (value))
    if (!info->never_evicts) PARAM("budget", p->budget);
    if (info->protects) {
        PARAM("sink", p->sink);
        PARAM("recent", p->recent);
    }
    for (int k = 0; k < ap_policy_n_params(info) && n < AP_MAX_PARAMS - 5; k++) PARAM(info->params[k].name, p->value[k]);
    if (p->allocate == AP_ALLOC_PYRAMID) PARAM("pyramid_beta", p->beta);
    if (p->allocate == AP_ALLOC_ADAKV) PARAM("adakv_alpha", p->alpha);
    if (p->quant.bits) {
        PARAM("quant_bits", p->quant.bits);
        PARAM("group_size", p->quant.group);
        PARAM("residual", p->quant.residual);
    }
    if (info->randomised) PARAM("seed", (double)p->seed);
#undef PARAM
    r->n_params = n;
    snprintf(r->granularity, sizeof r->granularity, "%s", p->granularity == AP_GRAN_LAYER ? "layer" : "head");
}

/* An int option of the policies that have it: its value, or the distinct
 * values of a sweep (in order); left out when no policy has it. */
static void add_param(cJSON *c, const char *key, const ap_study_config *cfg)
{
    cJSON *values = cJSON_CreateArray();
    int n = 0, first = 0, any = 0;
    for (int p = 0; p < cfg->n_policies; p++) {
        const ap_policy_params *q = &cfg->policies[p];
        int v;
        if (!strcmp(key, "budget")) v = q->budget;
        else if (!strcmp(key, "sink")) v = q->sink;
        else if (!strcmp(key, "recent")) v = q->recent;
        else if (!ap_policy_param_get(q, key, &v)) continue;
        int seen = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, values) seen |= (int)e->valuedouble == v;
        if (!seen) cJSON_AddItemToArray(values, cJSON_CreateNumber(v)), n++;
        if (!any) first = v, any = 1;
    }
    if (n > 1) {
        cJSON_AddItemToObject(c, key, values);
        return;
    }
    cJSON_Delete(values);
    if (any) cJSON_AddNumberToObject(c, key, first);
}

/* Every option that shaped the numbers, as a JSON object. */
char *study_config_json(const ap_study_config *cfg, int n_samples)
{
    cJSON *c = cJSON_CreateObject();
    if (!c) return NULL;
    const ap_policy_params *p0 = &cfg->policies[0];
    cJSON_AddStringToObject(c, "mode", cfg->mode == AP_STUDY_CASCADE ? "cascade" : cfg->mode == AP_STUDY_EVAL ? "eval" : "isolated");
    cJSON_AddNumberToObject(c, "samples", n_samples);
    cJSON_AddNumberToObject(c, "max_length", cfg->max_length);
    cJSON_AddNumberToObject(c, "warmup", cfg->warmup);
    cJSON_AddNumberToObject(c, "stride", cfg->stride);
    cJSON *l = cJSON_AddArrayToObject(c, "layers");
    for (int i = 0; i < cfg->n_layers; i++) cJSON_AddItemToArray(l, cJSON_CreateNumber(cfg->layers[i]));
    if (cfg->heads) {
        cJSON *h = cJSON_AddArrayToObject(c, "heads");
        for (int i = 0; i < cfg->n_heads; i++) cJSON_AddItemToArray(h, cJSON_CreateNumber(cfg->heads[i]));
    } else {
        cJSON_AddStringToObject(c, "heads", "all");
    }
    cJSON *types = cJSON_AddArrayToObject(c, "types");
    for (int i = 0; i < cfg->n_policies; i++) cJSON_AddItemToArray(types, cJSON_CreateString(cfg->policies[i].name));
    add_param(c, "budget", cfg);
    add_param(c, "sink", cfg);
    add_param(c, "recent", cfg);
    /* every registered parameter some policy of the study has */
    for (int i = 0; i < ap_policy_count(); i++) {
        const ap_policy_info *info = ap_policy_info_at(i);
        for (int k = 0; k < ap_policy_n_params(info); k++) {
            const char *key = info->params[k].name;
            if (!cJSON_GetObjectItemCaseSensitive(c, key)) add_param(c, key, cfg);
        }
    }
    cJSON_AddStringToObject(c, "allocate", p0->allocate == AP_ALLOC_PYRAMID ? "pyramid"
                                           : p0->allocate == AP_ALLOC_ADAKV ? "adakv" : "uniform");
    if (p0->allocate == AP_ALLOC_PYRAMID) cJSON_AddNumberToObject(c, "beta", p0->beta);
    if (p0->allocate == AP_ALLOC_ADAKV) cJSON_AddNumberToObject(c, "alpha_safeguard", p0->alpha);
    const char *quant = p0->quant.bits == 2 ? "kivi2" : p0->quant.bits == 4 ? "kivi4" : p0->quant.bits == 8 ? "int8" : "none";
    cJSON_AddStringToObject(c, "quant", quant);
    if (p0->quant.bits) {
        cJSON_AddNumberToObject(c, "group_size", p0->quant.group);
        cJSON_AddNumberToObject(c, "residual", p0->quant.residual);
    }
    cJSON_AddStringToObject(c, "granularity", p0->granularity == AP_GRAN_LAYER ? "layer" : "head");
    cJSON_AddStringToObject(c, "align", cfg->align_index ? "index" : "position");
    cJSON_AddNumberToObject(c, "seed", (double)cfg->seed);
    cJSON_AddNumberToObject(c, "bootstrap", cfg->bootstrap);
    cJSON_AddNumberToObject(c, "kl_epsilon", AP_KL_EPS);
    cJSON_AddNumberToObject(c, "quantile_accuracy", AP_QSKETCH_ALPHA);
    if (cfg->sketch_memory) cJSON_AddStringToObject(c, "sketch_memory", cfg->sketch_memory);
    char *s = cJSON_PrintUnformatted(c);
    cJSON_Delete(c);
    return s;
}

static ap_status sample_means(const study_run *acc, int n_samples, ap_report_run *r, ap_error *err);

static ap_status fill_run(const study_acc *a, const ap_study_config *cfg, int p, int l, int n_samples,
                          ap_report_run *r, ap_error *err)
{
    const int run = p * cfg->n_layers + l, H = a->n_head;
    const study_run *acc = &a->runs[run];
    snprintf(r->policy, sizeof r->policy, "%.31s", cfg->policies[p].name);
    run_params(&cfg->policies[p], r);
    r->layer = cfg->layers[l];
    for (int m = 0; m < AP_M_COUNT; m++) {
        /* the bootstrap CI comes after, every run's at once (bootstrap_item) */
        ap_status st = ap_metric_acc_stats(&acc->m[m], n_samples, 0, 0, &r->stats[m], err);
        if (st) return st;
        const ap_stats *s = &r->stats[m];
        if (s->n && (!isfinite(s->mean) || !isfinite(s->sd)) && m != AP_M_KL_REV)
            return ap_error_set(err, AP_ERR_RUNTIME, "policy %s, layer %d: metric %s came out %g "
                                "(non-finite); the trace holds values that are not probabilities",
                                r->policy, r->layer, ap_metric_name((ap_metric)m), s->mean);
    }
    r->n_head = H;
    if (!(r->head_mean = malloc((size_t)H * AP_M_COUNT * sizeof *r->head_mean)))
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    for (int i = 0; i < H * AP_M_COUNT; i++)
        r->head_mean[i] = acc->head_cnt[i] > 0 ? acc->head_sum[i] / acc->head_cnt[i] : NAN;
    r->kv_bytes = acc->kv_bytes;
    r->kv_quant_bytes = acc->kv_quant_bytes; /* isolated only: one layer */
    r->sketch_bytes = acc->sketch_bytes;
    r->counter_bytes = (double)ap_policy_counter_bytes(&cfg->policies[p]) * H;
    /* kv_bytes is fp32 k and v of one layer (isolated) or of every layer (cascade) */
    const double per_position = 2.0 * (double)a->head_dim * sizeof(float);
    r->kv_positions = acc->kv_bytes / per_position / (cfg->mode != AP_STUDY_ISOLATED ? a->model_n_layer : 1);
    r->replay_s = acc->replay_s;
    r->tokens_per_s = acc->replay_s > 0 ? (double)a->tokens / acc->replay_s : 0;
    return sample_means(acc, n_samples, r, err);
}

/* Each sample's mean of each metric (NaN where it had no row). */
static ap_status sample_means(const study_run *acc, int n_samples, ap_report_run *r, ap_error *err)
{
    r->n_samples = n_samples;
    if (!(r->sample_mean = malloc(((size_t)n_samples * AP_M_COUNT + 1) * sizeof *r->sample_mean)))
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    for (int smp = 0; smp < n_samples; smp++)
        for (int m = 0; m < AP_M_COUNT; m++) {
            const ap_metric_acc *ma = &acc->m[m];
            const int has = smp < ma->n_samples && ma->sample_n[smp] > 0;
            r->sample_mean[(size_t)smp * AP_M_COUNT + m] = has ? ma->sample_sum[smp] / ma->sample_n[smp] : NAN;
        }
    return AP_OK;
}

typedef struct {
    const study_acc *a;
    const ap_study_config *cfg;
    int n_samples;
    ap_summary *out;
} fill_job;

/* ---- paired comparisons -------------------------------------------------------- */

enum { PERMUTATIONS = 999 };

typedef struct {
    const ap_study_config *cfg;
    ap_summary *out;
    const ap_paired_draws *draws; /* made for every sample having a difference, or NULL */
} compare_job;

/* Every comparison draws with this seed (common random numbers: the same
 * resamples and sign flips for every policy, layer and metric), so the
 * draws are made once (docs/statistics.md). */
static uint64_t compare_seed(const ap_study_config *cfg) { return cfg->seed + 7919u; }
/* Bootstrap indices held at most for the shared draws (beyond, each
 * comparison draws its own: the same numbers, slower). */
enum { SHARED_PICKS_MAX = 1 << 26 };

static double param_of(const ap_report_run *r, const char *name)
{
    for (int i = 0; i < r->n_params; i++)
        if (!strcmp(r->param_name[i], name)) return r->param_value[i];
    return NAN;
}

/* The reference's run for r: the same layer, the same budget when a sweep
 * has one, else the reference's first run of the layer. */
static const ap_report_run *reference_of(const compare_job *j, const ap_report_run *r)
{
    const ap_report_run *first = NULL;
    for (int i = 0; i < j->out->n_runs; i++) {
        const ap_report_run *c = &j->out->runs[i];
        if (strcmp(c->policy, j->cfg->compare_to) != 0 || c->layer != r->layer) continue;
        if (!first) first = c;
        if (param_of(c, "budget") == param_of(r, "budget")) return c;
    }
    return first;
}

/* Run `run` against the reference's run of its layer, every metric. */
static ap_status compare_item(void *ctx, int run, ap_error *err)
{
    const compare_job *j = ctx;
    ap_report_run *r = &j->out->runs[run];
    if (!strcmp(r->policy, j->cfg->compare_to)) return AP_OK; /* a reference itself */
    const ap_report_run *ref = reference_of(j, r);
    if (!ref) return AP_OK;
    snprintf(r->compare_to, sizeof r->compare_to, "%s", ref->policy);
    const int n = r->n_samples;
    double *a = malloc(((size_t)n + 1) * sizeof *a), *b = malloc(((size_t)n + 1) * sizeof *b);
    ap_status st = !a || !b ? ap_error_set(err, AP_ERR_RUNTIME, "out of memory") : AP_OK;
    for (int m = 0; m < AP_M_COUNT && !st; m++) {
        for (int smp = 0; smp < n; smp++) {
            a[smp] = r->sample_mean[(size_t)smp * AP_M_COUNT + m];
            b[smp] = ref->sample_mean[(size_t)smp * AP_M_COUNT + m];
        }
        st = ap_paired_compare_drawn(a, b, n, j->draws, j->cfg->bootstrap, PERMUTATIONS, compare_seed(j->cfg),
                                     &r->compare[m], err);
    }
    free(a), free(b);
    return st;
}

/* Every policy against cfg->compare_to, then Holm's correction per metric
 * over all the comparisons (policies x layers). */
static ap_status compare_runs(const ap_study_config *cfg, ap_summary *out, ap_pool *pool, ap_error *err)
{
    if (!cfg->compare_to) return AP_OK;
    int found = 0;
    for (int p = 0; p < cfg->n_policies; p++) found |= !strcmp(cfg->policies[p].name, cfg->compare_to);
    if (!found)
        return ap_error_set(err, AP_ERR_USAGE, "compare to %s: not among the study's policies", cfg->compare_to);
    ap_paired_draws draws = {0};
    const int n = out->n_runs ? out->runs[0].n_samples : 0;
    ap_status st = AP_OK;
    if ((size_t)cfg->bootstrap * n <= SHARED_PICKS_MAX)
        st = ap_paired_draws_make(compare_seed(cfg), n, cfg->bootstrap, PERMUTATIONS, &draws, err);
    compare_job job = {cfg, out, draws.picks ? &draws : NULL};
    if (!st) st = ap_pool_run(pool, out->n_runs, compare_item, &job, err);
    ap_paired_draws_free(&draws);
    double *p = malloc(((size_t)out->n_runs + 1) * sizeof *p), *adj = malloc(((size_t)out->n_runs + 1) * sizeof *adj);
    int *who = malloc(((size_t)out->n_runs + 1) * sizeof *who);
    if (!st && (!p || !adj || !who)) st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    for (int m = 0; m < AP_M_COUNT && !st; m++) {
        int n = 0;
        for (int r = 0; r < out->n_runs; r++)
            if (out->runs[r].compare_to[0]) who[n] = r, p[n++] = out->runs[r].compare[m].p;
        ap_holm(p, n, adj);
        for (int i = 0; i < n; i++) out->runs[who[i]].compare_p_holm[m] = adj[i];
    }
    free(p), free(adj), free(who);
    return st;
}

/* One run's statistics but the bootstrap's. */
static ap_status fill_item(void *ctx, int run, ap_error *err)
{
    const fill_job *j = ctx;
    return fill_run(j->a, j->cfg, run / j->cfg->n_layers, run % j->cfg->n_layers, j->n_samples,
                    &j->out->runs[run], err);
}

/* Metric m's bootstrap CI in every run: seeded seed + m, as each run's own
 * would be, so the runs share the resamples' draws. */
static ap_status bootstrap_item(void *ctx, int m, ap_error *err)
{
    const fill_job *j = ctx;
    const int n = j->a->n_runs;
    const ap_metric_acc **accs = malloc((size_t)n * sizeof *accs);
    ap_stats **outs = malloc((size_t)n * sizeof *outs);
    ap_status st = !accs || !outs ? ap_error_set(err, AP_ERR_RUNTIME, "out of memory") : AP_OK;
    for (int r = 0; r < n && !st; r++) accs[r] = &j->a->runs[r].m[m], outs[r] = &j->out->runs[r].stats[m];
    if (!st)
        st = ap_metric_acc_bootstrap(accs, n, j->n_samples, j->cfg->bootstrap, j->cfg->seed + (uint64_t)m, outs, err);
    free(accs), free(outs);
    return st;
}

ap_status study_summary(const study_acc *a, const ap_study_config *cfg, const ap_trace *info,
                        int n_samples, const char *backend, const char *device_name,
                        double trace_s, ap_summary *out, ap_error *err)
{
    memset(out, 0, sizeof *out);
    out->runs = calloc((size_t)a->n_runs, sizeof *out->runs);
    out->config_json = study_config_json(cfg, n_samples);
    if (!out->runs || !out->config_json) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    out->n_runs = a->n_runs;
    ap_pool *pool;
    ap_status st = ap_pool_create(cfg->threads, &pool, err);
    if (st) return st;
    fill_job job = {a, cfg, n_samples, out};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    st = ap_pool_run(pool, a->n_runs, fill_item, &job, err);
    if (!st) st = ap_pool_run(pool, AP_M_COUNT, bootstrap_item, &job, err);
    if (!st) st = compare_runs(cfg, out, pool, err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    out->statistics_s = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    ap_pool_free(pool);
    if (st) return st;
    snprintf(out->tool_version, sizeof out->tool_version, "%s", AP_VERSION);
    snprintf(out->model_source, sizeof out->model_source, "%s", info->model_source);
    snprintf(out->model_sha256, sizeof out->model_sha256, "%s", info->model_sha256);
    out->n_layer = info->model_n_layer;
    out->n_embd = info->n_head * info->head_dim;
    out->vocab = info->model_vocab;
    out->n_head = info->n_head;
    snprintf(out->input_source, sizeof out->input_source, "%s", cfg->input_source ? cfg->input_source : "");
    snprintf(out->input_sha256, sizeof out->input_sha256, "%s", cfg->input_sha256 ? cfg->input_sha256 : "");
    out->samples = n_samples;
    out->tokens = (int)a->tokens;
    snprintf(out->backend, sizeof out->backend, "%s", backend);
    snprintf(out->device_name, sizeof out->device_name, "%s", device_name);
    const char *prec = cfg->precision == AP_PRECISION_TF32 ? "tf32" : cfg->precision == AP_PRECISION_BF16 ? "bf16" : "fp32";
    snprintf(out->precision, sizeof out->precision, "%s", prec);
    out->trace_s = trace_s;
    snprintf(out->model_dtype, sizeof out->model_dtype, "%s", cfg->model_dtype ? cfg->model_dtype : info->model_dtype);
    return AP_OK;
}
