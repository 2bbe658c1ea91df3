/* chart.c — the report's charts drawn with PLplot (docs/reports.md): line
 * and point charts with confidence bands, and heatmaps, to SVG (inlined in
 * the HTML report) or PNG (for papers). Styled for reading: white ground,
 * the Okabe–Ito palette (safe for colour-blind readers), a light grid,
 * labelled axes and a legend.
 *
 * PLplot ends the process on a fatal error (plexit), so every chart checks
 * its data first: finite values, non-empty series, a range that is not a
 * point. PLplot keeps global state: charts are drawn one at a time. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reports.h"

#ifdef AP_HAVE_PLPLOT
#include <plplot.h>

/* cmap0: 0 ground, 1 ink, 2 grid, 3 guide, then the palette; 15 scratch */
enum { C_GROUND, C_INK, C_GRID, C_GUIDE, C_PALETTE, N_PALETTE = 8, C_SCRATCH = 15 };
static const unsigned char OKABE_ITO[N_PALETTE][3] = {
    {0, 114, 178}, {230, 159, 0}, {0, 158, 115}, {213, 94, 0},
    {86, 180, 233}, {204, 121, 167}, {0, 0, 0}, {240, 228, 66},
};
/* a filled circle (U+25CF), in the SVG's and PNG's own fonts */
#define MARKER "#[0x25cf]"
/* viridis, low to high */
static const double VIRIDIS[5][3] = {
    {68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37},
};

static void begin(ap_chart_format fmt, const char *path, int width, int height)
{
    plsdev(fmt == AP_CHART_PNG ? "pngcairo" : "svg");
    plsfnam(path);
    plspage(0, 0, width, height, 0, 0);
    plscolbg(255, 255, 255);
    plscmap0n(16);
    plscol0(C_INK, 51, 51, 51);
    plscol0(C_GRID, 221, 221, 221);
    plscol0(C_GUIDE, 150, 150, 150);
    for (int i = 0; i < N_PALETTE; i++) plscol0(C_PALETTE + i, OKABE_ITO[i][0], OKABE_ITO[i][1], OKABE_ITO[i][2]);
    plinit();
    plfontld(1);
    plschr(0, 0.9);
    pladv(0);
}

/* PLplot text: '#' starts an escape sequence, so it is doubled. */
static void pl_text(const char *in, char *out, size_t n)
{
    size_t j = 0;
    for (const char *c = in; *c && j + 2 < n; c++) {
        if (*c == '#') out[j++] = '#';
        out[j++] = *c;
    }
    out[j] = '\0';
}

/* Tick labels of a log2 axis: 16, 32, 64 rather than 2^4. */
static void log2_label(PLINT axis, PLFLT value, char *label, PLINT n, PLPointer data)
{
    (void)data;
    if (axis == PL_X_AXIS) snprintf(label, (size_t)n, "%g", pow(2.0, value));
    else snprintf(label, (size_t)n, "%g", value);
}

static ap_status range_of(const ap_chart_xy *c, double *x0, double *x1, double *y0, double *y1, ap_error *err)
{
    *x0 = *y0 = INFINITY;
    *x1 = *y1 = -INFINITY;
    for (int s = 0; s < c->n_series; s++) {
        const ap_chart_series *se = &c->series[s];
        for (int i = 0; i < se->n; i++) {
            double x = c->log_x ? log2(se->x[i]) : se->x[i];
            const double ys[3] = {se->y[i], se->lo ? se->lo[i] : se->y[i], se->hi ? se->hi[i] : se->y[i]};
            if (!isfinite(x)) return ap_error_set(err, AP_ERR_INPUT, "chart \"%s\": x %g cannot be drawn%s", c->title,
                                                  se->x[i], c->log_x ? " on a log axis" : "");
            *x0 = fmin(*x0, x), *x1 = fmax(*x1, x);
            for (int k = 0; k < 3; k++)
                if (isfinite(ys[k])) *y0 = fmin(*y0, ys[k]), *y1 = fmax(*y1, ys[k]);
        }
    }
    if (!isfinite(*x0) || !isfinite(*y0))
        return ap_error_set(err, AP_ERR_INPUT, "chart \"%s\": no finite point to draw", c->title);
    /* a margin, and a range that is not a point */
    const double dx = *x1 - *x0 > 0 ? (*x1 - *x0) * 0.06 : 0.5, dy = *y1 - *y0 > 0 ? (*y1 - *y0) * 0.08 : fmax(fabs(*y0) * 0.1, 0.05);
    *x0 -= dx, *x1 += dx, *y0 -= dy, *y1 += dy;
    return AP_OK;
}

static void draw_frame(const char *title, const char *x_label, const char *y_label, int log_x)
{
    char t[256], xl[256], yl[256];
    pl_text(title, t, sizeof t), pl_text(x_label, xl, sizeof xl), pl_text(y_label, yl, sizeof yl);
    if (log_x) plslabelfunc(log2_label, NULL);
    const char *xopt_grid = log_x ? "g" : "g", *xopt = log_x ? "bcnsto" : "bcnst";
    plcol0(C_GRID);
    plwidth(0.6);
    plbox(xopt_grid, log_x ? 1.0 : 0, 0, "g", 0, 0);
    plcol0(C_INK);
    plwidth(1.0);
    plbox(xopt, log_x ? 1.0 : 0, 0, "bcnstv", 0, 0);
    pllab(xl, yl, t);
    if (log_x) plslabelfunc(NULL, NULL);
}

static void draw_series(const ap_chart_series *se, int color, int log_x)
{
    double *x = malloc((size_t)se->n * sizeof *x), *y = malloc((size_t)se->n * sizeof *y);
    double *px = malloc((size_t)se->n * 2 * sizeof *px), *py = malloc((size_t)se->n * 2 * sizeof *py);
    if (!x || !y || !px || !py) goto out;
    int n = 0;
    for (int i = 0; i < se->n; i++)
        if (isfinite(se->y[i])) x[n] = log_x ? log2(se->x[i]) : se->x[i], y[n++] = se->y[i];
    const int guide = se->style == AP_CHART_GUIDE;
    const int pal = C_PALETTE + color % N_PALETTE;
    if (se->lo && se->hi && n > 1) { /* the band: the lower edge out, the upper edge back */
        int m = 0;
        for (int i = 0; i < se->n; i++)
            if (isfinite(se->lo[i]) && isfinite(se->hi[i])) px[m] = log_x ? log2(se->x[i]) : se->x[i], py[m++] = se->lo[i];
        const int half = m;
        for (int i = se->n - 1; i >= 0; i--)
            if (isfinite(se->lo[i]) && isfinite(se->hi[i])) px[m] = log_x ? log2(se->x[i]) : se->x[i], py[m++] = se->hi[i];
        if (half > 1) {
            plscol0a(C_SCRATCH, OKABE_ITO[color % N_PALETTE][0], OKABE_ITO[color % N_PALETTE][1],
                     OKABE_ITO[color % N_PALETTE][2], 0.18);
            plcol0(C_SCRATCH);
            plfill(m, px, py);
        }
    }
    plcol0(guide ? C_GUIDE : pal);
    plwidth(guide ? 1.2 : 2.0);
    pllsty(guide ? 2 : 1);
    if (se->style != AP_CHART_POINTS && n > 1) plline(n, x, y);
    pllsty(1);
    plschr(0, 0.65);
    if (!guide) plstring(n, x, y, MARKER);
    plschr(0, 0.9);
out:
    free(x), free(y), free(px), free(py);
}

static void draw_legend(const ap_chart_xy *c)
{
    enum { MAX = 24 };
    PLINT opt[MAX], text_colors[MAX], line_colors[MAX], line_styles[MAX], symbol_colors[MAX], symbol_numbers[MAX];
    PLFLT line_widths[MAX], symbol_scales[MAX];
    char names[MAX][64];
    const char *texts[MAX], *symbols[MAX];
    int n = 0;
    for (int s = 0; s < c->n_series && n < MAX; s++) {
        const ap_chart_series *se = &c->series[s];
        if (!se->name || !se->name[0]) continue;
        const int guide = se->style == AP_CHART_GUIDE, color = guide ? C_GUIDE : C_PALETTE + s % N_PALETTE;
        pl_text(se->name, names[n], sizeof names[n]);
        texts[n] = names[n];
        opt[n] = se->style == AP_CHART_POINTS ? PL_LEGEND_SYMBOL : guide ? PL_LEGEND_LINE : PL_LEGEND_LINE | PL_LEGEND_SYMBOL;
        text_colors[n] = C_INK, line_colors[n] = color, line_styles[n] = guide ? 2 : 1, line_widths[n] = guide ? 1.2 : 2.0;
        symbol_colors[n] = color, symbol_scales[n] = 0.7, symbol_numbers[n] = 1, symbols[n] = MARKER;
        n++;
    }
    if (n == 0) return;
    PLFLT w, h;
    plscol0a(C_SCRATCH, 255, 255, 255, 0.85);
    pllegend(&w, &h, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX, PL_POSITION_RIGHT | PL_POSITION_OUTSIDE, 0.02, 0.0,
             0.1, C_SCRATCH, C_GRID, 1, 0, 0, n, opt, 1.0, 0.9, 2.0, 0.0, text_colors, texts, NULL, NULL, NULL, NULL,
             line_colors, line_styles, line_widths, symbol_colors, symbol_scales, symbol_numbers, symbols);
}

ap_status ap_chart_xy_draw(const ap_chart_xy *c, ap_chart_format fmt, const char *path, ap_error *err)
{
    double x0, x1, y0, y1;
    for (int s = 0; s < c->n_series; s++)
        if (c->series[s].n < 1) return ap_error_set(err, AP_ERR_INPUT, "chart \"%s\": series %d is empty", c->title, s);
    ap_status st = range_of(c, &x0, &x1, &y0, &y1, err);
    if (st) return st;
    begin(fmt, path, 760, 420);
    plvpor(0.09, 0.67, 0.13, 0.90);
    plwind(x0, x1, y0, y1);
    draw_frame(c->title, c->x_label, c->y_label, c->log_x);
    for (int s = 0; s < c->n_series; s++) draw_series(&c->series[s], s, c->log_x);
    draw_legend(c);
    plend();
    return AP_OK;
}

/* A value's colour on the viridis ramp; t in [0, 1]. */
static void ramp(double t, int rgb[3])
{
    t = fmin(fmax(t, 0), 1) * 4;
    const int i = t >= 4 ? 3 : (int)t;
    const double f = t - i;
    for (int k = 0; k < 3; k++) rgb[k] = (int)lround(VIRIDIS[i][k] + f * (VIRIDIS[i + 1][k] - VIRIDIS[i][k]));
}

ap_status ap_chart_heatmap_draw(const ap_chart_heatmap *c, ap_chart_format fmt, const char *path, ap_error *err)
{
    if (c->n_rows < 1 || c->n_cols < 1)
        return ap_error_set(err, AP_ERR_INPUT, "chart \"%s\": %d x %d cells", c->title, c->n_rows, c->n_cols);
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < c->n_rows * c->n_cols; i++)
        if (isfinite(c->values[i])) lo = fmin(lo, c->values[i]), hi = fmax(hi, c->values[i]);
    if (!isfinite(lo)) return ap_error_set(err, AP_ERR_INPUT, "chart \"%s\": no finite value to draw", c->title);
    const int height = 150 + 26 * c->n_rows, width = 760;
    begin(fmt, path, width, height < 260 ? 260 : height);
    plvpor(0.20, 0.97, 0.20, 0.86);
    plwind(0, c->n_cols, 0, c->n_rows);
    char buf[256];
    for (int r = 0; r < c->n_rows; r++) {
        for (int k = 0; k < c->n_cols; k++) {
            const double v = c->values[r * c->n_cols + k];
            /* rows top to bottom; dark = far from the reference */
            const double y = c->n_rows - 1 - r;
            const double bx[4] = {k, k + 1, k + 1, k}, by[4] = {y, y, y + 1, y + 1};
            int rgb[3] = {245, 245, 245};
            double t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
            if (!c->higher_is_better) t = 1 - t;
            if (isfinite(v)) ramp(t, rgb);
            plscol0a(C_SCRATCH, rgb[0], rgb[1], rgb[2], 1.0);
            plcol0(C_SCRATCH);
            plfill(4, bx, by);
            if (!isfinite(v) || c->n_cols > 24) continue;
            snprintf(buf, sizeof buf, fabs(v) >= 100 ? "%.0f" : fabs(v) >= 1 ? "%.2f" : "%.3f", v);
            plcol0(t > 0.55 ? C_INK : C_GROUND);
            plschr(0, 0.7);
            plptex(k + 0.5, y + 0.5, 1, 0, 0.5, buf);
            plschr(0, 0.9);
        }
        pl_text(c->row_names[r], buf, sizeof buf);
        plcol0(C_INK);
        plmtex("lv", 0.8, (c->n_rows - 0.5 - r) / c->n_rows, 1.0, buf);
    }
    for (int k = 0; k < c->n_cols; k++) {
        pl_text(c->col_names[k], buf, sizeof buf);
        plmtex("b", 1.2, (k + 0.5) / c->n_cols, 0.5, buf);
    }
    char t[256], xl[256], yl[256];
    pl_text(c->title, t, sizeof t), pl_text(c->x_label, xl, sizeof xl), pl_text(c->y_label, yl, sizeof yl);
    plmtex("t", 1.5, 0.5, 0.5, t);
    plmtex("b", 3.0, 0.5, 0.5, xl);
    (void)yl; /* the row names say what the rows are */
    plend();
    return AP_OK;
}

int ap_chart_available(void) { return 1; }

#else

ap_status ap_chart_xy_draw(const ap_chart_xy *c, ap_chart_format fmt, const char *path, ap_error *err)
{
    (void)c, (void)fmt, (void)path;
    return ap_error_set(err, AP_ERR_USAGE, "charts need PLplot: this build has none (install libplplot-dev and "
                        "plplot-driver-cairo, scripts/setup.sh, and rebuild)");
}

ap_status ap_chart_heatmap_draw(const ap_chart_heatmap *c, ap_chart_format fmt, const char *path, ap_error *err)
{
    (void)c, (void)fmt, (void)path;
    return ap_error_set(err, AP_ERR_USAGE, "charts need PLplot: this build has none (install libplplot-dev and "
                        "plplot-driver-cairo, scripts/setup.sh, and rebuild)");
}

int ap_chart_available(void) { return 0; }

#endif
