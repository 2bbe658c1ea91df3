/* grid.c — a batch grid file (JSON, docs/batch.md) expanded into cells. A
 * cell is one study: one trace of one model on one text with one set of
 * sample settings, over which every policy and every value of every swept
 * policy option is replayed. Keys that change the trace (the axes) make
 * separate cells when given a list; every other list is passed on to the
 * study as it is (a sweep, a set of layers, a list of types). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "study.h"

/* The grid's keys: the run's flags that a batch lets a study set (not its
 * outputs: the batch owns --out and --format), and every parameter of the
 * policy registry (sketch/policy.h). */
static const char *const KEYS[] = {
    "model", "tokenizer", "input", "samples", "max_length", "warmup", "stride", "layers", "heads",
    "types", "budget", "sink", "recent", "plain_update", "allocate", "beta", "alpha_safeguard",
    "quant", "group_size", "residual",
    "granularity", "mode", "device", "precision", "seed", "seeds", "bootstrap", "compare_to",
    "sketch_memory", "align", "threads", "batch_size", "preset",
};

/* A policy's own parameter (width, race_bits, window, ...). */
static int policy_param(const char *key)
{
    for (int i = 0; i < ap_policy_count(); i++) {
        const ap_policy_info *info = ap_policy_info_at(i);
        for (int k = 0; k < ap_policy_n_params(info); k++)
            if (!strcmp(info->params[k].name, key)) return 1;
    }
    return 0;
}
/* Keys whose list makes one cell per value: each value needs its own trace. */
static const char *const AXES[] = {"model", "tokenizer", "input", "samples", "max_length", "mode",
                                   "device", "precision", "warmup", "stride"};

static int in_list(const char *key, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(key, list[i])) return 1;
    return 0;
}
#define IN(key, list) in_list(key, list, sizeof list / sizeof list[0])

static ap_status keys_error(const char *where, const char *key, ap_error *err)
{
    char accepted[1200] = "";
    for (size_t i = 0; i < sizeof KEYS / sizeof KEYS[0]; i++)
        snprintf(accepted + strlen(accepted), sizeof accepted - strlen(accepted), "%s%s", i ? ", " : "", KEYS[i]);
    const char *seen[64];
    int n_seen = 0;
    for (int i = 0; i < ap_policy_count(); i++) {
        const ap_policy_info *info = ap_policy_info_at(i);
        for (int k = 0; k < ap_policy_n_params(info) && n_seen < 64; k++) {
            int dup = 0;
            for (int j = 0; j < n_seen; j++) dup |= !strcmp(seen[j], info->params[k].name);
            if (dup) continue;
            seen[n_seen++] = info->params[k].name;
            snprintf(accepted + strlen(accepted), sizeof accepted - strlen(accepted), ", %s", info->params[k].name);
        }
    }
    return ap_error_set(err, AP_ERR_INPUT, "%s: unknown key \"%s\" (accepted: name, %s)", where, key, accepted);
}

/* A scalar as the flag's text: numbers as integers when they are, strings as they are. */
static ap_status scalar_text(const cJSON *v, const char *where, const char *key, char *out, size_t n, ap_error *err)
{
    if (cJSON_IsString(v) && v->valuestring[0]) {
        if (strlen(v->valuestring) >= n)
            return ap_error_set(err, AP_ERR_INPUT, "%s.%s: a value of %zu bytes (at most %zu)", where, key,
                                strlen(v->valuestring), n - 1);
        snprintf(out, n, "%s", v->valuestring);
        return AP_OK;
    }
    if (cJSON_IsNumber(v) && isfinite(v->valuedouble)) {
        const double d = v->valuedouble;
        if (d == floor(d) && fabs(d) < 1e15) snprintf(out, n, "%.0f", d);
        else snprintf(out, n, "%.17g", d);
        return AP_OK;
    }
    return ap_error_set(err, AP_ERR_INPUT, "%s.%s: accepted: a number, a non-empty string%s", where, key,
                        IN(key, AXES) ? ", or a list of them (one cell each)" : ", or a list of them");
}

/* A list's items joined by commas (a sweep or a set). */
static ap_status list_text(const cJSON *v, const char *where, const char *key, char *out, size_t n, ap_error *err)
{
    out[0] = '\0';
    const int count = cJSON_GetArraySize(v);
    if (count == 0) return ap_error_set(err, AP_ERR_INPUT, "%s.%s: an empty list (accepted: one value or more)", where, key);
    for (int i = 0; i < count; i++) {
        char item[1100];
        ap_status st = scalar_text(cJSON_GetArrayItem(v, i), where, key, item, sizeof item, err);
        if (st) return st;
        const size_t used = strlen(out);
        if (used + strlen(item) + 2 > n) return ap_error_set(err, AP_ERR_INPUT, "%s.%s: the list is too long", where, key);
        snprintf(out + used, n - used, "%s%s", i ? "," : "", item);
    }
    return AP_OK;
}

typedef struct {
    int argc, cap;
    char **argv;
} argv_buf;

static ap_status push(argv_buf *a, const char *s, ap_error *err)
{
    if (a->argc + 2 > a->cap) {
        const int cap = a->cap ? a->cap * 2 : 16;
        char **grown = realloc(a->argv, (size_t)cap * sizeof *grown);
        if (!grown) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        a->argv = grown, a->cap = cap;
    }
    if (!(a->argv[a->argc] = strdup(s))) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    a->argv[++a->argc] = NULL;
    return AP_OK;
}

static void argv_free(argv_buf *a)
{
    for (int i = 0; i < a->argc; i++) free(a->argv[i]);
    free(a->argv);
    *a = (argv_buf){0};
}

/* "--max-length" from "max_length". */
static void flag_of(const char *key, char *out, size_t n)
{
    snprintf(out, n, "--%s", key);
    for (char *c = out; *c; c++)
        if (*c == '_') *c = '-';
}

/* The study's merged settings (defaults, then its own keys) checked. */
static ap_status check_study(const cJSON *study, const char *where, ap_error *err)
{
    if (!cJSON_IsObject(study)) return ap_error_set(err, AP_ERR_INPUT, "%s: accepted: an object of settings", where);
    for (const cJSON *k = study->child; k; k = k->next) {
        for (const cJSON *e = study->child; e != k; e = e->next)
            if (!strcmp(e->string, k->string))
                return ap_error_set(err, AP_ERR_INPUT, "%s: the key \"%s\" is given twice", where, k->string);
        if (!strcmp(k->string, "name")) continue;
        if (!IN(k->string, KEYS) && !policy_param(k->string)) return keys_error(where, k->string, err);
        if (!strcmp(k->string, "plain_update")) {
            if (!cJSON_IsBool(k)) return ap_error_set(err, AP_ERR_INPUT, "%s.plain_update: accepted: true or false", where);
        } else if (cJSON_IsArray(k)) {
            for (const cJSON *i = k->child; i; i = i->next)
                if (!(cJSON_IsString(i) || cJSON_IsNumber(i)))
                    return ap_error_set(err, AP_ERR_INPUT, "%s.%s: list items must be numbers or strings", where, k->string);
        } else if (!(cJSON_IsString(k) || cJSON_IsNumber(k))) {
            return ap_error_set(err, AP_ERR_INPUT, "%s.%s: accepted: a number, a string or a list", where, k->string);
        }
    }
    return AP_OK;
}

/* One cell: the study's settings with each axis at the value pick[] chooses. */
static ap_status make_cell(const cJSON *study, const char *name, const int *pick, ap_grid_cell *cell, const char *where,
                           ap_error *err)
{
    argv_buf a = {0};
    ap_status st = push(&a, "run", err);
    int axis = 0;
    for (const cJSON *k = study->child; k && !st; k = k->next) {
        if (!strcmp(k->string, "name")) continue;
        char flag[64], value[4096];
        flag_of(k->string, flag, sizeof flag);
        if (cJSON_IsBool(k)) {
            if (cJSON_IsTrue(k)) st = push(&a, flag, err);
            continue;
        }
        if (cJSON_IsArray(k) && IN(k->string, AXES)) {
            if (cJSON_GetArraySize(k) == 0)
                st = ap_error_set(err, AP_ERR_INPUT, "%s.%s: an empty list (accepted: one value or more)", where, k->string);
            else
                st = scalar_text(cJSON_GetArrayItem(k, pick[axis]), where, k->string, value, sizeof value, err);
            axis++;
        } else if (cJSON_IsArray(k)) {
            st = list_text(k, where, k->string, value, sizeof value, err);
        } else {
            st = scalar_text(k, where, k->string, value, sizeof value, err);
        }
        if (!st) st = push(&a, flag, err);
        if (!st) st = push(&a, value, err);
    }
    /* the cell's name: the study's and a digest of its flags, stable across runs */
    size_t len = 0;
    for (int i = 0; i < a.argc && !st; i++) len += strlen(a.argv[i]) + 1;
    char *joined = st ? NULL : malloc(len + 1);
    if (!st && !joined) st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    if (!st) {
        joined[0] = '\0';
        for (int i = 0; i < a.argc; i++) strcat(strcat(joined, a.argv[i]), "\n");
        char digest[65];
        ap_sha256_hex(joined, strlen(joined), digest);
        free(joined);
        const size_t n = strlen(name) + 14;
        if (!(cell->id = malloc(n)) || !(cell->study = strdup(name))) {
            free(cell->id);
            cell->id = NULL;
            st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        } else {
            snprintf(cell->id, n, "%s-%.12s", name, digest);
            cell->argc = a.argc;
            cell->argv = a.argv;
            return AP_OK;
        }
    }
    argv_free(&a);
    return st;
}

/* The study's name: given (letters, digits, . _ -; it names files) or study<i>. */
static ap_status study_name(const cJSON *study, int index, const char *where, char *out, size_t n, ap_error *err)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(study, "name");
    if (!name) {
        snprintf(out, n, "study%d", index);
        return AP_OK;
    }
    const char *s = cJSON_GetStringValue(name);
    int ok = s && s[0] && strlen(s) < n && s[0] != '.';
    for (const char *c = s; ok && *c; c++)
        ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || strchr("._-", *c);
    if (!ok)
        return ap_error_set(err, AP_ERR_INPUT, "%s.name: accepted: 1-%zu letters, digits, '.', '_' or '-', not "
                            "starting with '.' (it names the cell files)", where, n - 1);
    snprintf(out, n, "%s", s);
    return AP_OK;
}

static ap_status add_cells(const cJSON *study, const char *name, const char *where, ap_grid *g, ap_error *err)
{
    enum { MAX_AXES = sizeof AXES / sizeof AXES[0] }; /* keys are distinct (check_study) */
    int sizes[MAX_AXES], n_axes = 0;
    long long total = 1;
    for (const cJSON *k = study->child; k && n_axes < MAX_AXES; k = k->next)
        if (cJSON_IsArray(k) && IN(k->string, AXES)) {
            sizes[n_axes] = cJSON_GetArraySize(k) ? cJSON_GetArraySize(k) : 1;
            total *= sizes[n_axes++];
            if (g->n_cells + total > AP_GRID_MAX_CELLS)
                return ap_error_set(err, AP_ERR_INPUT, "%s: the grid makes more than %d cells", where,
                                    AP_GRID_MAX_CELLS);
        }
    ap_grid_cell *grown = realloc(g->cells, (size_t)(g->n_cells + total) * sizeof *grown);
    if (!grown) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    g->cells = grown;
    for (int c = 0; c < (int)total; c++) {
        int pick[MAX_AXES], rest = c;
        for (int x = n_axes - 1; x >= 0; x--) { /* the last axis varies fastest */
            pick[x] = rest % sizes[x];
            rest /= sizes[x];
        }
        ap_grid_cell *cell = &g->cells[g->n_cells];
        *cell = (ap_grid_cell){0};
        ap_status st = make_cell(study, name, pick, cell, where, err);
        if (st) return st;
        g->n_cells++; /* owned by the grid from here, freed with it */
        for (int i = 0; i < g->n_cells - 1; i++)
            if (!strcmp(g->cells[i].id, cell->id))
                return ap_error_set(err, AP_ERR_INPUT, "%s: cell %s repeats cell %d (same study name and settings)",
                                    where, cell->id, i);
    }
    return AP_OK;
}

ap_status ap_grid_parse(const char *text, size_t n, const char *source, ap_grid *out, ap_error *err)
{
    *out = (ap_grid){0};
    cJSON *root = cJSON_ParseWithLength(text, n);
    if (!root) return ap_error_set(err, AP_ERR_INPUT, "%s: not valid JSON (near byte %td)", source,
                                   cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - text : (ptrdiff_t)0);
    ap_status st = AP_OK;
    const cJSON *studies = cJSON_GetObjectItemCaseSensitive(root, "studies");
    const cJSON *defaults = cJSON_GetObjectItemCaseSensitive(root, "defaults");
    if (!cJSON_IsObject(root))
        st = ap_error_set(err, AP_ERR_INPUT, "%s: accepted: an object with \"studies\" (a list) and \"defaults\"", source);
    for (const cJSON *k = root->child; !st && k; k = k->next)
        if (strcmp(k->string, "studies") && strcmp(k->string, "defaults") && strcmp(k->string, "schema"))
            st = ap_error_set(err, AP_ERR_INPUT, "%s: unknown key \"%s\" (accepted: schema, defaults, studies)", source,
                              k->string);
    if (!st && (!cJSON_IsArray(studies) || cJSON_GetArraySize(studies) == 0))
        st = ap_error_set(err, AP_ERR_INPUT, "%s: studies: accepted: a non-empty list of objects", source);
    char where[1200];
    snprintf(where, sizeof where, "%s: defaults", source);
    if (!st && defaults) st = check_study(defaults, where, err);
    if (!st && defaults && cJSON_GetObjectItemCaseSensitive(defaults, "name"))
        st = ap_error_set(err, AP_ERR_INPUT, "%s.name: a name belongs to a study, not to the defaults", where);
    int index = 0;
    for (const cJSON *s = studies ? studies->child : NULL; !st && s; s = s->next, index++) {
        snprintf(where, sizeof where, "%s: studies[%d]", source, index);
        /* the study's keys over the defaults */
        if ((st = check_study(s, where, err))) break;
        cJSON *merged = cJSON_Duplicate(s, 1);
        if (!merged) {
            st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
            break;
        }
        for (const cJSON *d = defaults ? defaults->child : NULL; d; d = d->next)
            if (!cJSON_GetObjectItemCaseSensitive(merged, d->string))
                cJSON_AddItemToObject(merged, d->string, cJSON_Duplicate(d, 1));
        char name[64];
        if (!(st = study_name(s, index, where, name, sizeof name, err))) st = add_cells(merged, name, where, out, err);
        cJSON_Delete(merged);
    }
    if (!st && !(out->grid_json = cJSON_PrintUnformatted(root))) st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    cJSON_Delete(root);
    if (st) ap_grid_free(out);
    return st;
}

void ap_grid_free(ap_grid *g)
{
    for (int i = 0; i < g->n_cells; i++) {
        argv_buf a = {g->cells[i].argc, 0, g->cells[i].argv};
        argv_free(&a);
        free(g->cells[i].id);
        free(g->cells[i].study);
    }
    free(g->cells);
    free(g->grid_json);
    *g = (ap_grid){0};
}
