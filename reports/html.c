/* html.c — the report as one self-contained HTML file (docs/reports.md):
 * the charts drawn by PLplot as SVG and inlined, the tables, and each
 * summary's metadata; no script, no style sheet or font fetched from
 * anywhere, so the file opens offline and can be mailed. Also the charts as
 * PNG files for papers. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/atomic_file.h"
#include "report_charts.h"

static const char STYLE[] =
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#222;"
    "max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
    "h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse;margin:1em 0;font-size:.88em}"
    "th,td{padding:.3em .7em;border-bottom:1px solid #e5e5e5;text-align:right;vertical-align:top}"
    "th{background:#f6f6f6}td:first-child,th:first-child{text-align:left}"
    "table.meta td{text-align:left;word-break:break-all;max-width:760px}"
    "figure{margin:1.5em 0}figure .chart svg{width:100%;max-width:1013px;height:auto}"
    "figcaption{color:#555;font-size:.9em;max-width:760px}"
    "code{font-size:.9em;background:#f4f4f4;padding:0 .2em}";

static void html_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* The SVG file's text from its <svg element on (the XML prolog and DOCTYPE
 * are not HTML), appended to f. */
static ap_status inline_svg(const char *path, FILE *f, ap_error *err)
{
    FILE *in = fopen(path, "rb");
    if (!in) return ap_error_set(err, AP_ERR_RUNTIME, "%s: cannot read the chart: %s", path, strerror(errno));
    fseek(in, 0, SEEK_END);
    const long size = ftell(in);
    fseek(in, 0, SEEK_SET);
    char *text = size > 0 ? malloc((size_t)size + 1) : NULL;
    const size_t got = text ? fread(text, 1, (size_t)size, in) : 0;
    fclose(in);
    if (!text) return ap_error_set(err, AP_ERR_RUNTIME, "%s: empty chart", path);
    text[got] = '\0';
    const char *svg = strstr(text, "<svg");
    if (svg) fputs(svg, f);
    free(text);
    return svg ? AP_OK : ap_error_set(err, AP_ERR_RUNTIME, "%s: no <svg> in the chart", path);
}

static void meta_row(FILE *f, const char *key, const char *value)
{
    fputs("<tr><td>", f);
    html_escape(f, key);
    fputs("</td><td>", f);
    html_escape(f, value);
    fputs("</td></tr>\n", f);
}

static void write_meta(const ap_report_set *set, FILE *f)
{
    fputs("<h2>Runs</h2>\n", f);
    for (int i = 0; i < set->n; i++) {
        const ap_summary *s = &set->summaries[i];
        char buf[2400];
        fputs("<table class=\"meta\">\n", f);
        meta_row(f, "summary", set->labels[i]);
        snprintf(buf, sizeof buf, "%s (sha256 %s; %d layers, %d heads, width %d)", s->model_source, s->model_sha256,
                 s->n_layer, s->n_head, s->n_embd);
        meta_row(f, "model", buf);
        snprintf(buf, sizeof buf, "%s (sha256 %s; %d samples, %d tokens)", s->input_source, s->input_sha256,
                 s->samples, s->tokens);
        meta_row(f, "input", buf);
        meta_row(f, "config", s->config_json ? s->config_json : "");
        snprintf(buf, sizeof buf, "%s, %s, %s", s->backend, s->device_name, s->precision);
        meta_row(f, "device", buf);
        snprintf(buf, sizeof buf, "attnprobe %s", s->tool_version);
        meta_row(f, "version", buf);
        cJSON *prov = s->provenance_json ? cJSON_Parse(s->provenance_json) : NULL;
        const char *keys[3] = {"command", "started", "host"};
        for (int k = 0; k < 3; k++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(prov, keys[k]);
            if (cJSON_IsString(v)) meta_row(f, keys[k], v->valuestring);
        }
        cJSON_Delete(prov);
        snprintf(buf, sizeof buf, "%.2f s (trace %.2f s)", s->study_s, s->trace_s);
        meta_row(f, "time", buf);
        fputs("</table>\n", f);
    }
}

/* The set's tables as HTML: the Markdown writer's rows, cell by cell. */
static void write_tables(const ap_report_set *set, FILE *f)
{
    fputs("<h2>Tables</h2>\n", f);
    char *md = NULL;
    size_t n = 0;
    FILE *mf = open_memstream(&md, &n);
    if (!mf) return;
    ap_report_print_tables(set, 1, mf);
    fclose(mf);
    int in_table = 0;
    for (char *save = NULL, *line = strtok_r(md, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (!strncmp(line, "### ", 4)) {
            if (in_table) fputs("</table>\n", f), in_table = 0;
            fputs("<h3>", f);
            html_escape(f, line + 4);
            fputs("</h3>\n", f);
        } else if (line[0] == '|' && line[1] == '-') {
            continue; /* the Markdown rule under the header */
        } else if (line[0] == '|') {
            const char *cell_tag = in_table ? "td" : "th";
            if (!in_table) fputs("<table>\n", f), in_table = 1;
            fputs("<tr>", f);
            for (char *c = line + 1; *c;) {
                char *end = strchr(c, '|');
                if (!end) break;
                *end = '\0';
                while (*c == ' ') c++;
                for (char *t = end - 1; t >= c && *t == ' '; t--) *t = '\0';
                fprintf(f, "<%s>", cell_tag);
                html_escape(f, c);
                fprintf(f, "</%s>", cell_tag);
                c = end + 1;
            }
            fputs("</tr>\n", f);
        } else {
            if (in_table) fputs("</table>\n", f), in_table = 0;
            fputs("<p>", f);
            html_escape(f, line);
            fputs("</p>\n", f);
        }
    }
    if (in_table) fputs("</table>\n", f);
    free(md);
}

static ap_status png_path(const char *dir, const report_chart *c, char *out, size_t n, ap_error *err)
{
    if ((size_t)snprintf(out, n, "%s/%s.png", dir, c->id) >= n)
        return ap_error_set(err, AP_ERR_USAGE, "--png %s: path too long", dir);
    return AP_OK;
}

static ap_status write_charts(const ap_report_set *set, FILE *f, const char *png_dir, ap_error *err)
{
    fputs("<h2>Charts</h2>\n", f);
    if (!ap_chart_available()) {
        fputs("<p>This build of attnprobe has no PLplot: no charts (scripts/setup.sh installs it).</p>\n", f);
        return AP_OK;
    }
    report_chart charts[REPORT_MAX_CHARTS];
    int n = 0;
    ap_status st = report_charts_make(set, charts, &n, err);
    if (st) return st;
    char tmp[] = "/tmp/attnprobe-chart-XXXXXX";
    const int fd = mkstemp(tmp);
    if (fd < 0) st = ap_error_set(err, AP_ERR_RUNTIME, "cannot make a temporary file: %s", strerror(errno));
    else close(fd);
    for (int i = 0; i < n && !st; i++) {
        /* a chart its data cannot draw (nothing finite, x <= 0 on a log axis) is left out, said so */
        ap_error why;
        st = report_chart_draw(&charts[i], AP_CHART_SVG, tmp, &why);
        if (st == AP_ERR_INPUT) {
            fputs("<p>A chart was left out: ", f);
            html_escape(f, why.msg);
            fputs("</p>\n", f);
            st = AP_OK;
            continue;
        }
        if (st) {
            *err = why;
            break;
        }
        fprintf(f, "<figure id=\"%s\"><div class=\"chart\">\n", charts[i].id);
        st = inline_svg(tmp, f, err);
        fputs("</div><figcaption>", f);
        html_escape(f, charts[i].caption);
        fputs("</figcaption></figure>\n", f);
        char png[4200];
        if (!st && png_dir && !(st = png_path(png_dir, &charts[i], png, sizeof png, err)))
            st = report_chart_draw(&charts[i], AP_CHART_PNG, png, err);
    }
    if (n == 0) fputs("<p>No chart: the runs share one budget and one layer.</p>\n", f);
    if (fd >= 0) unlink(tmp);
    report_charts_free(charts, n);
    return st;
}

ap_status ap_report_write_html(const ap_report_set *set, const char *path, const char *png_dir, ap_error *err)
{
    char tmp[4200];
    FILE *f;
    ap_status st = ap_atomic_begin(path, tmp, sizeof tmp, &f, err);
    if (st) return st;
    fprintf(f, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
               "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
               "<title>attnprobe report</title>\n<style>%s</style></head><body>\n"
               "<h1>attnprobe report</h1>\n<p>How far each KV-cache policy's attention drifts from the full "
               "cache's, over %d summar%s.</p>\n", STYLE, set->n, set->n == 1 ? "y" : "ies");
    st = write_charts(set, f, png_dir, err);
    if (!st) {
        write_tables(set, f);
        if (set->n == 2) {
            fputs("<h2>Differences</h2>\n", f);
            char *md = NULL;
            size_t n = 0;
            FILE *mf = open_memstream(&md, &n);
            if (mf) {
                ap_report_print_diff(set, 0, mf);
                fclose(mf);
                fputs("<pre>", f);
                html_escape(f, md);
                fputs("</pre>\n", f);
            }
            free(md);
        }
        write_meta(set, f);
        fputs("</body></html>\n", f);
    }
    ap_error scratch;
    const ap_status end = ap_atomic_end(f, tmp, path, !st && !ferror(f), st ? &scratch : err);
    return st ? st : end;
}

ap_status ap_report_write_pngs(const ap_report_set *set, const char *dir, int *n_written, ap_error *err)
{
    *n_written = 0;
    report_chart charts[REPORT_MAX_CHARTS];
    int n = 0;
    ap_status st = report_charts_make(set, charts, &n, err);
    for (int i = 0; i < n && !st; i++) {
        char png[4200];
        if (!(st = png_path(dir, &charts[i], png, sizeof png, err)) &&
            !(st = report_chart_draw(&charts[i], AP_CHART_PNG, png, err)))
            (*n_written)++;
        if (st == AP_ERR_INPUT) { /* nothing this chart could draw: left out */
            fprintf(stderr, "attnprobe: chart %s left out: %s\n", charts[i].id, err->msg);
            st = AP_OK;
        }
    }
    report_charts_free(charts, n);
    return st;
}
