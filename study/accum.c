/* accum.c — a study's accumulators: each replayed row's metrics go to its
 * sample's part (exact moments, per-head sums) and to its run's quantile
 * sketches; after a batch the parts are folded into the runs in sample
 * order, so the statistics do not depend on the batch size or on which
 * thread replayed what (docs/statistics.md). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "study_internal.h"

ap_status study_acc_init(study_acc *a, const ap_study_config *cfg, const ap_trace *info, int batch_cap,
                         ap_error *err)
{
    memset(a, 0, sizeof *a);
    const int n_head = info->n_head;
    a->cfg = cfg;
    a->n_head = n_head;
    a->head_dim = info->head_dim;
    a->model_n_layer = info->model_n_layer;
    a->n_runs = cfg->n_policies * cfg->n_layers;
    a->batch_cap = batch_cap;
    const size_t per_head = (size_t)n_head * AP_M_COUNT, n_parts = (size_t)batch_cap * a->n_runs;
    a->head_on = calloc((size_t)n_head, 1);
    a->runs = calloc((size_t)a->n_runs, sizeof *a->runs);
    a->parts = calloc(n_parts, sizeof *a->parts);
    a->part_heads = calloc(n_parts * per_head * 2, sizeof *a->part_heads);
    if (!a->head_on || !a->runs || !a->parts || !a->part_heads) goto oom;
    if (!cfg->heads) memset(a->head_on, 1, (size_t)n_head);
    for (int i = 0; i < cfg->n_heads && cfg->heads; i++) a->head_on[cfg->heads[i]] = 1;
    for (int r = 0; r < a->n_runs; r++) { /* every run initialised before any can fail */
        study_run *run = &a->runs[r];
        for (int m = 0; m < AP_M_COUNT; m++) ap_metric_acc_init(&run->m[m]);
        pthread_mutex_init(&run->lock, NULL);
    }
    a->runs_ready = 1;
    for (int r = 0; r < a->n_runs; r++) {
        study_run *run = &a->runs[r];
        run->head_sum = calloc(per_head, sizeof *run->head_sum);
        run->head_cnt = calloc(per_head, sizeof *run->head_cnt);
        if (!run->head_sum || !run->head_cnt) goto oom;
    }
    for (size_t i = 0; i < n_parts; i++) {
        a->parts[i].head_sum = a->part_heads + i * per_head * 2;
        a->parts[i].head_cnt = a->parts[i].head_sum + per_head;
    }
    return AP_OK;
oom:
    study_acc_free(a);
    return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for the study's accumulators");
}

void study_acc_free(study_acc *a)
{
    for (int r = 0; a->runs && a->runs_ready && r < a->n_runs; r++) {
        study_run *run = &a->runs[r];
        for (int m = 0; m < AP_M_COUNT; m++) ap_metric_acc_free(&run->m[m]);
        pthread_mutex_destroy(&run->lock);
        free(run->head_sum);
        free(run->head_cnt);
    }
    free(a->runs);
    free(a->parts);
    free(a->part_heads);
    free(a->head_on);
    free(a->kept);
    memset(a, 0, sizeof *a);
}

void study_acc_begin_batch(study_acc *a, int first)
{
    a->batch_first = first;
    const size_t n_parts = (size_t)a->batch_cap * a->n_runs;
    for (size_t i = 0; i < n_parts; i++) memset(a->parts[i].m, 0, sizeof a->parts[i].m);
    memset(a->part_heads, 0, n_parts * (size_t)a->n_head * AP_M_COUNT * 2 * sizeof *a->part_heads);
}

ap_status study_acc_row(study_acc *a, int b, int run, const ap_row_event *ev, ap_error *err)
{
    if (!a->head_on[ev->head]) return AP_OK;
    double m[AP_M_COUNT];
    ap_metrics_row(ev->p, ev->q, ev->kept, ev->n, ev->v, ev->o_p, ev->head_dim, m);
    return study_acc_values(a, b, run, ev->head, m, err);
}

ap_status study_acc_values(study_acc *a, int b, int run, int head, const double *m, ap_error *err)
{
    if (!a->head_on[head]) return AP_OK;
    study_part *part = &a->parts[(size_t)b * a->n_runs + run];
    for (int k = 0; k < AP_M_COUNT; k++) {
        ap_moments_add(&part->m[k], m[k]);
        if (!isnan(m[k])) {
            const size_t i = (size_t)head * AP_M_COUNT + k;
            part->head_sum[i] += m[k];
            part->head_cnt[i] += 1;
        }
    }
    study_run *r = &a->runs[run];
    ap_status st = AP_OK;
    pthread_mutex_lock(&r->lock);
    for (int k = 0; k < AP_M_COUNT && !st; k++) st = ap_qsketch_add(&r->m[k].q, m[k], err);
    pthread_mutex_unlock(&r->lock);
    return st;
}

void study_acc_add_part(study_acc *a, int b, int run, const ap_moments *m, const double *head_sum,
                        const double *head_cnt)
{
    study_part *part = &a->parts[(size_t)b * a->n_runs + run];
    for (int k = 0; k < AP_M_COUNT; k++) ap_moments_merge(&part->m[k], &m[k]);
    for (size_t i = 0; i < (size_t)a->n_head * AP_M_COUNT; i++) {
        part->head_sum[i] += head_sum[i];
        part->head_cnt[i] += head_cnt[i];
    }
}

/* A part's moments as doubles (ap_moments is six doubles). */
#define MOMENT_DOUBLES (AP_M_COUNT * (sizeof(ap_moments) / sizeof(double)))

size_t study_part_doubles(const study_acc *a) { return MOMENT_DOUBLES + 2 * (size_t)a->n_head * AP_M_COUNT; }

/* Appends the batch's parts to kept, sample by sample. */
static ap_status keep_batch(study_acc *a, int n, ap_error *err)
{
    const size_t part = study_part_doubles(a), per_sample = part * (size_t)a->n_runs;
    const size_t per_head = (size_t)a->n_head * AP_M_COUNT;
    if (a->kept_n + (size_t)n > a->kept_cap) {
        const size_t cap = (a->kept_n + (size_t)n) * 2;
        double *grown = realloc(a->kept, cap * per_sample * sizeof *grown);
        if (!grown) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory keeping a shard's accumulators");
        a->kept = grown, a->kept_cap = cap;
    }
    for (int b = 0; b < n; b++, a->kept_n++)
        for (int r = 0; r < a->n_runs; r++) {
            const study_part *pt = &a->parts[(size_t)b * a->n_runs + r];
            double *out = a->kept + a->kept_n * per_sample + (size_t)r * part;
            memcpy(out, pt->m, sizeof pt->m);
            memcpy(out + MOMENT_DOUBLES, pt->head_sum, 2 * per_head * sizeof(double));
        }
    return AP_OK;
}

/* One sample's part of one run folded into the run (sample: the study's index). */
static ap_status fold_part(study_acc *a, int run, int sample, const study_part *part, ap_error *err)
{
    const size_t per_head = (size_t)a->n_head * AP_M_COUNT;
    study_run *r = &a->runs[run];
    for (int k = 0; k < AP_M_COUNT; k++) {
        ap_status st = ap_metric_acc_fold(&r->m[k], sample, &part->m[k], err);
        if (st) return st;
    }
    for (size_t i = 0; i < per_head; i++) {
        r->head_sum[i] += part->head_sum[i];
        r->head_cnt[i] += part->head_cnt[i];
    }
    return AP_OK;
}

ap_status study_acc_fold_parts(study_acc *a, int first, int n, const double *parts, ap_error *err)
{
    const size_t part = study_part_doubles(a), per_head = (size_t)a->n_head * AP_M_COUNT;
    for (int s = 0; s < n; s++)
        for (int r = 0; r < a->n_runs; r++) {
            const double *in = parts + ((size_t)s * a->n_runs + r) * part;
            study_part p;
            memcpy(p.m, in, sizeof p.m);
            p.head_sum = (double *)in + MOMENT_DOUBLES;
            p.head_cnt = p.head_sum + per_head;
            ap_status st = fold_part(a, r, first + s, &p, err);
            if (st) return st;
        }
    return AP_OK;
}

ap_status study_acc_end_batch(study_acc *a, int n, ap_error *err)
{
    if (a->keep_parts) return keep_batch(a, n, err);
    for (int b = 0; b < n; b++)
        for (int r = 0; r < a->n_runs; r++) {
            ap_status st = fold_part(a, r, a->batch_first + b, &a->parts[(size_t)b * a->n_runs + r], err);
            if (st) return st;
        }
    return AP_OK;
}
