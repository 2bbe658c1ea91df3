/* race.c — RACE: Repeated Array of Count Estimators (Coleman & Shrivastava,
 * "Sub-linear RACE sketches for approximate kernel density estimation on
 * streaming data", WWW 2020), with signed random projections (Charikar 2002)
 * as the LSH: P[h(x) = h(y)] = (1 − θ(x,y)/π)^bits. Hyperplanes are drawn
 * from a seeded GSL Gaussian. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "sketch.h"

ap_status ap_race_init(ap_race *s, int rows, int bits, int dim, uint64_t seed, ap_error *err)
{
    memset(s, 0, sizeof *s);
    if (rows < 1 || rows > 4096 || bits < 1 || bits > 20 || dim < 1 || dim > 65536)
        return ap_error_set(err, AP_ERR_USAGE,
                            "race: rows %d, bits %d, dim %d must be in 1..4096, 1..20, 1..65536",
                            rows, bits, dim);
    s->rows = rows;
    s->bits = bits;
    s->dim = dim;
    s->planes = malloc((size_t)rows * bits * dim * sizeof *s->planes);
    s->counts = calloc((size_t)rows << bits, sizeof *s->counts);
    s->proj = malloc((size_t)rows * bits * sizeof *s->proj);
    if (!s->planes || !s->counts || !s->proj ||
        ap_gaussian_fill(s->planes, (size_t)rows * bits * dim, seed) != 0) {
        ap_race_free(s);
        return ap_error_set(err, AP_ERR_RUNTIME, "race: out of memory");
    }
    return AP_OK;
}

void ap_race_free(ap_race *s)
{
    free(s->planes);
    free(s->counts);
    free(s->proj);
    memset(s, 0, sizeof *s);
}

void ap_race_hash(ap_race *s, const float *x, uint32_t *buckets)
{
    /* all rows x bits projections in one matrix-vector product */
    cblas_sgemv(CblasRowMajor, CblasNoTrans, s->rows * s->bits, s->dim, 1.0f, s->planes, s->dim, x,
                1, 0.0f, s->proj, 1);
    const float *proj = s->proj;
    for (int r = 0; r < s->rows; r++) {
        uint32_t b = 0;
        for (int i = 0; i < s->bits; i++) b |= (uint32_t)(*proj++ >= 0) << i;
        buckets[r] = b;
    }
}

void ap_race_add_buckets(ap_race *s, const uint32_t *buckets, float weight)
{
    for (int r = 0; r < s->rows; r++) s->counts[((size_t)r << s->bits) + buckets[r]] += weight;
}

float ap_race_query_buckets(const ap_race *s, const uint32_t *buckets)
{
    double sum = 0;
    for (int r = 0; r < s->rows; r++) sum += s->counts[((size_t)r << s->bits) + buckets[r]];
    return (float)(sum / s->rows);
}

void ap_race_add(ap_race *s, const float *x, float weight)
{
    uint32_t b[4096]; /* rows <= 4096 (init) */
    ap_race_hash(s, x, b);
    ap_race_add_buckets(s, b, weight);
}

float ap_race_query(ap_race *s, const float *x)
{
    uint32_t b[4096];
    ap_race_hash(s, x, b);
    return ap_race_query_buckets(s, b);
}

size_t ap_race_bytes(const ap_race *s)
{
    return ((size_t)s->rows << s->bits) * sizeof *s->counts +
           (size_t)s->rows * s->bits * s->dim * sizeof *s->planes;
}
