/* batch.c — a batch's files (docs/batch.md): one summary a cell, written
 * atomically so that a rerun can trust any cell file it finds; batch.json
 * (every cell's summary and the grid) and the tidy results.csv, both made
 * from the cell files so that they are the same however often the batch was
 * interrupted. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/atomic_file.h"
#include "study.h"

static cJSON *cell_object(const ap_grid_cell *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", c->id);
    cJSON_AddStringToObject(o, "study", c->study);
    cJSON *args = cJSON_AddArrayToObject(o, "args");
    for (int i = 1; i < c->argc; i++) cJSON_AddItemToArray(args, cJSON_CreateString(c->argv[i]));
    return o;
}

static cJSON *read_json(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *text = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 65536 > cap) {
            char *grown = realloc(text, cap = cap * 2 + 65536);
            if (!grown) break;
            text = grown;
        }
        const size_t got = fread(text + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    fclose(f);
    cJSON *root = text ? cJSON_ParseWithLength(text, n) : NULL;
    free(text);
    return root;
}

int ap_batch_cell_done(const char *path, const ap_grid_cell *cell)
{
    cJSON *root = read_json(path);
    if (!root) return 0;
    cJSON *want = cell_object(cell);
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(root, "schema");
    const int done = cJSON_IsString(schema) && !strcmp(schema->valuestring, AP_SUMMARY_SCHEMA) &&
                     cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(root, "runs")) &&
                     cJSON_Compare(cJSON_GetObjectItemCaseSensitive(root, "cell"), want, 1);
    cJSON_Delete(want);
    cJSON_Delete(root);
    return done;
}

ap_status ap_batch_cell_write(const char *path, const ap_grid_cell *cell, ap_summary *summary, ap_error *err)
{
    cJSON *o = cell_object(cell);
    free(summary->cell_json);
    summary->cell_json = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!summary->cell_json) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    return ap_summary_write_json(summary, path, err);
}

static ap_status write_text(const char *path, const char *text, ap_error *err)
{
    char tmp[4200];
    FILE *f;
    ap_status st = ap_atomic_begin(path, tmp, sizeof tmp, &f, err);
    if (st) return st;
    const int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    return ap_atomic_end(f, tmp, path, ok, err);
}

static void cell_path(const char *cells_dir, const ap_grid_cell *c, char *out, size_t n)
{
    snprintf(out, n, "%s/%s.json", cells_dir, c->id);
}

ap_status ap_batch_write_json(const ap_grid *g, const char *cells_dir, const char *path, ap_error *err)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "schema", AP_BATCH_SCHEMA);
    cJSON_AddItemToObject(root, "grid", cJSON_Parse(g->grid_json));
    cJSON *cells = cJSON_AddArrayToObject(root, "cells");
    ap_status st = AP_OK;
    for (int i = 0; i < g->n_cells && !st; i++) {
        char file[4200];
        cell_path(cells_dir, &g->cells[i], file, sizeof file);
        cJSON *summary = read_json(file);
        if (!summary) {
            st = ap_error_set(err, AP_ERR_INPUT, "%s: missing or not JSON (rerun the batch)", file);
            break;
        }
        cJSON *cell = cell_object(&g->cells[i]);
        cJSON_DeleteItemFromObjectCaseSensitive(summary, "cell");
        cJSON_AddItemToObject(cell, "summary", summary);
        cJSON_AddItemToArray(cells, cell);
    }
    char *text = st ? NULL : cJSON_Print(root);
    cJSON_Delete(root);
    if (!st && !text) st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    if (!st) st = write_text(path, text, err);
    free(text);
    return st;
}

/* ---- results.csv ------------------------------------------------------------ */

/* The parameter columns: budget, sink, recent, every parameter of the
 * policy registry (in its order, each once), the allocation's, the seed. */
enum { CSV_PARAMS_MAX = 64 };
static int csv_params(const char **names)
{
    int n = 0;
    names[n++] = "budget", names[n++] = "sink", names[n++] = "recent";
    for (int i = 0; i < ap_policy_count(); i++) {
        const ap_policy_info *info = ap_policy_info_at(i);
        for (int k = 0; k < ap_policy_n_params(info) && n < CSV_PARAMS_MAX - 6; k++) {
            int seen = 0;
            for (int j = 0; j < n; j++) seen |= !strcmp(names[j], info->params[k].name);
            if (!seen) names[n++] = info->params[k].name;
        }
    }
    names[n++] = "pyramid_beta", names[n++] = "adakv_alpha", names[n++] = "quant_bits", names[n++] = "group_size";
    names[n++] = "residual", names[n++] = "seed";
    return n;
}

/* A CSV field: quoted when it holds a comma, a quote or a line break. */
static void csv_text(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\n\r")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

/* Numbers as the JSON has them (17 significant digits); empty when undefined. */
static void csv_num(FILE *f, double v)
{
    if (isfinite(v)) fprintf(f, ",%.17g", v);
    else fputc(',', f);
}

static void csv_header(FILE *f)
{
    fputs("cell,study,model,input,mode,samples,tokens,policy", f);
    const char *params[CSV_PARAMS_MAX];
    const int n_params = csv_params(params);
    for (int p = 0; p < n_params; p++) fprintf(f, ",%s", params[p]);
    fputs(",granularity,layer,metric,n,mean,sd,ci_low,ci_high,median,p05,p95,min,max,kv_bytes_model_fp16,"
          "state_bytes\n", f);
}

static void csv_cell(FILE *f, const ap_grid_cell *c, const ap_summary *s)
{
    char mode[16];
    ap_summary_config_text(s, "mode", mode, sizeof mode);
    for (int r = 0; r < s->n_runs; r++) {
        const ap_report_run *run = &s->runs[r];
        ap_report_memory mem;
        ap_report_memory_of(run, s->n_layer, s->n_embd, s->n_head, s->model_dtype, &mem);
        for (int m = 0; m < AP_M_COUNT; m++) {
            const ap_stats *st = &run->stats[m];
            csv_text(f, c->id);
            fputc(',', f);
            csv_text(f, c->study);
            fputc(',', f);
            csv_text(f, s->model_source);
            fputc(',', f);
            csv_text(f, s->input_source);
            fprintf(f, ",%s,%d,%d,%s", mode, s->samples, s->tokens, run->policy);
            const char *params[CSV_PARAMS_MAX];
            const int n_params = csv_params(params);
            for (int p = 0; p < n_params; p++) csv_num(f, ap_report_run_param(run, params[p]));
            fprintf(f, ",%s,%d,%s,%zu", run->granularity, run->layer, ap_metric_name(m), st->n);
            const double v[9] = {st->mean, st->sd, st->ci_lo, st->ci_hi, st->median, st->p05, st->p95, st->min, st->max};
            for (int k = 0; k < 9; k++) csv_num(f, st->n ? v[k] : NAN);
            csv_num(f, mem.model_fp16);
            csv_num(f, mem.state_bytes);
            fputc('\n', f);
        }
    }
}

ap_status ap_batch_write_csv(const ap_grid *g, const char *cells_dir, const char *path, ap_error *err)
{
    char tmp[4200];
    FILE *f;
    ap_status st = ap_atomic_begin(path, tmp, sizeof tmp, &f, err);
    if (st) return st;
    csv_header(f);
    for (int i = 0; i < g->n_cells && !st; i++) {
        char file[4200];
        cell_path(cells_dir, &g->cells[i], file, sizeof file);
        ap_summary s;
        if ((st = ap_summary_read_json(file, &s, err))) break;
        csv_cell(f, &g->cells[i], &s);
        ap_summary_free(&s);
    }
    ap_error scratch;
    const int ok = !st && !ferror(f);
    ap_status end = ap_atomic_end(f, tmp, path, ok, st ? &scratch : err);
    return st ? st : end;
}
