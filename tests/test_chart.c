/* test_chart.c — the report's charts: a line of known points lands where it
 * should in the SVG (read back from PLplot's output), heatmaps and PNGs are
 * written, and data that cannot be drawn is refused, not drawn. Skipped
 * (exit 77) in a build without PLplot. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "reports/reports.h"
#include "testutil.h"

static char dir[256];

/* The points of the SVG's polyline drawn in colour (the palette's first:
 * #0072B2) with the most points; returns how many. */
static int line_points(const char *svg, double *x, double *y, int max)
{
    int best = 0;
    for (const char *p = svg; (p = strstr(p, "<polyline"));) {
        const char *end = strstr(p, "/>");
        const char *stroke = strstr(p, "stroke=\"#0072B2\"");
        const char *pts = strstr(p, "points=\"");
        p += 9;
        if (!end || !stroke || stroke > end || !pts || pts > end) continue;
        double px[64], py[64];
        int n = 0;
        for (const char *q = pts + 8; n < 64 && *q != '"';) {
            char *e;
            px[n] = strtod(q, &e);
            if (e == q || *e != ',') break;
            py[n] = strtod(e + 1, &e);
            n++;
            while (*e == ' ') e++;
            q = e;
        }
        if (n > best && n <= max) {
            best = n;
            memcpy(x, px, (size_t)n * sizeof *x);
            memcpy(y, py, (size_t)n * sizeof *y);
        }
    }
    return best;
}

/* Draws an xy chart (c) or a heatmap (h) into dir/name and returns the
 * file's contents (malloc'ed; *n its bytes). */
static char *draw(const ap_chart_xy *c, const ap_chart_heatmap *h, ap_chart_format format, const char *name,
                  size_t *n)
{
    char path[300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    ap_error err;
    const ap_status st = c ? ap_chart_xy_draw(c, format, path, &err) : ap_chart_heatmap_draw(h, format, path, &err);
    if (st) fail_msg("%s: %s", name, err.msg);
    char *data = testutil_read_file(path, n);
    assert_non_null(data);
    return data;
}

static void test_three_points(void **state)
{
    (void)state;
    const double x[3] = {1, 2, 3}, y[3] = {10, 20, 40};
    const ap_chart_series s = {.name = "line", .n = 3, .x = x, .y = y, .style = AP_CHART_LINE};
    const ap_chart_xy c = {.title = "three points", .x_label = "x", .y_label = "y", .n_series = 1, .series = &s};
    size_t n;
    char *svg = draw(&c, NULL, AP_CHART_SVG, "three.svg", &n);
    double px[64], py[64];
    assert_int_equal(line_points(svg, px, py, 64), 3);
    /* x equally spaced and increasing; y (up the page: PLplot's SVG flips
     * the y axis by a transform) in the data's 10:20:40 proportions */
    assert_true(px[0] < px[1] && px[1] < px[2]);
    assert_true(fabs((px[1] - px[0]) - (px[2] - px[1])) < 0.05);
    assert_true(py[0] < py[1] && py[1] < py[2]);
    assert_true(fabs((py[2] - py[1]) - 2 * (py[1] - py[0])) < 0.05);
    /* the title is text, not paths (PLplot writes each character as a reference) */
    char title[128] = "";
    for (const char *c = "three"; *c; c++) snprintf(title + strlen(title), sizeof title - strlen(title), "&#x%x;", *c);
    assert_non_null(strstr(svg, title));
    free(svg);
}

static void test_log_axis_and_band(void **state)
{
    (void)state;
    const double x[3] = {16, 64, 256}, y[3] = {3, 2, 1}, lo[3] = {2.5, 1.5, 0.5}, hi[3] = {3.5, 2.5, 1.5};
    const ap_chart_series s = {.name = "h2o", .n = 3, .x = x, .y = y, .lo = lo, .hi = hi};
    const ap_chart_xy c = {.title = "log", .x_label = "budget", .y_label = "KL", .log_x = 1, .n_series = 1, .series = &s};
    size_t n;
    char *svg = draw(&c, NULL, AP_CHART_SVG, "log.svg", &n);
    double px[64], py[64];
    assert_int_equal(line_points(svg, px, py, 3), 3);
    /* 16, 64, 256 are equally spaced on a log axis */
    assert_true(fabs((px[1] - px[0]) - (px[2] - px[1])) < 0.05);
    assert_non_null(strstr(svg, "fill-opacity=\"0.18")); /* the band, translucent */
    free(svg);
    char *png = draw(&c, NULL, AP_CHART_PNG, "log.png", &n);
    assert_true(n > 1000 && !memcmp(png, "\x89PNG", 4));
    free(png);
}

static void test_heatmap(void **state)
{
    (void)state;
    const char *rows[2] = {"h2o", "cms"}, *cols[3] = {"0", "6", "11"};
    const double v[6] = {1, 2, 3, 4, NAN, 6};
    const ap_chart_heatmap h = {.title = "heat", .x_label = "layer", .y_label = "policy", .n_rows = 2, .n_cols = 3,
                                .row_names = rows, .col_names = cols, .values = v};
    size_t n;
    char *svg = draw(NULL, &h, AP_CHART_SVG, "heat.svg", &n);
    int cells = 0; /* PLplot's fills: closed polylines with a fill rule */
    for (const char *p = svg; (p = strstr(p, "fill-rule=\"nonzero\"")); p++) cells++;
    assert_int_equal(cells, 6); /* one a cell, the empty one in grey */
    assert_non_null(strstr(svg, "fill=\"#F5F5F5\""));
    free(svg);
}

static void test_refused(void **state)
{
    (void)state;
    char path[300];
    snprintf(path, sizeof path, "%s/bad.svg", dir);
    ap_error err;
    const double x[2] = {0, 1}, y[2] = {NAN, NAN}, ok_y[2] = {1, 2};
    ap_chart_series s = {.name = "nan", .n = 2, .x = x, .y = y};
    ap_chart_xy c = {.title = "nothing", .x_label = "x", .y_label = "y", .n_series = 1, .series = &s};
    assert_int_equal(ap_chart_xy_draw(&c, AP_CHART_SVG, path, &err), AP_ERR_INPUT);
    s.y = ok_y;
    c.log_x = 1; /* x = 0 has no place on a log axis */
    assert_int_equal(ap_chart_xy_draw(&c, AP_CHART_SVG, path, &err), AP_ERR_INPUT);
    s.n = 0;
    assert_int_equal(ap_chart_xy_draw(&c, AP_CHART_SVG, path, &err), AP_ERR_INPUT);
    const ap_chart_heatmap h = {.title = "empty", .n_rows = 0, .n_cols = 3};
    assert_int_equal(ap_chart_heatmap_draw(&h, AP_CHART_SVG, path, &err), AP_ERR_INPUT);
}

int main(void)
{
    if (!ap_chart_available()) {
        printf("skipped: this build has no PLplot\n");
        return 77;
    }
    snprintf(dir, sizeof dir, "%s", testutil_tmpdir("chart"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_three_points),
        cmocka_unit_test(test_log_axis_and_band),
        cmocka_unit_test(test_heatmap),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
