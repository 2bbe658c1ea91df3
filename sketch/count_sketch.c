/* count_sketch.c — Count Sketch (Charikar, Chen & Farach-Colton, "Finding
 * frequent items in data streams", ICALP 2002): each row adds sign(x)·v to
 * one bucket, so a row's estimate sign(x)·bucket is unbiased; the query is
 * the median over rows. */
#include <stdlib.h>
#include <string.h>

#include "sketch.h"

ap_status ap_cs_init(ap_count_sketch *s, int depth, int width, uint64_t seed, ap_error *err)
{
    memset(s, 0, sizeof *s);
    if (depth < 1 || depth > 64 || width < 1 || width > (1 << 26))
        return ap_error_set(err, AP_ERR_USAGE,
                            "count sketch: depth %d and width %d must be in 1..64 and 1..67108864",
                            depth, width);
    s->depth = depth;
    s->width = width;
    s->counts = calloc((size_t)depth * width, sizeof *s->counts);
    s->rows = malloc((size_t)depth * sizeof *s->rows);
    s->signs = malloc((size_t)depth * sizeof *s->signs);
    s->scratch = malloc((size_t)depth * sizeof *s->scratch);
    if (!s->counts || !s->rows || !s->signs || !s->scratch) {
        ap_cs_free(s);
        return ap_error_set(err, AP_ERR_RUNTIME, "count sketch: out of memory");
    }
    uint64_t state = seed;
    for (int r = 0; r < depth; r++) {
        ap_hash_init(&s->rows[r], ap_seed_next(&state));
        ap_hash_init(&s->signs[r], ap_seed_next(&state));
    }
    return AP_OK;
}

void ap_cs_free(ap_count_sketch *s)
{
    free(s->counts);
    free(s->rows);
    free(s->signs);
    free(s->scratch);
    memset(s, 0, sizeof *s);
}

int ap_cs_bucket(const ap_count_sketch *s, int row, uint64_t key)
{
    return (int)(ap_hash_eval(&s->rows[row], key) % (uint64_t)s->width);
}

static float sign_of(const ap_count_sketch *s, int row, uint64_t key)
{
    /* bit 30 of a value uniform on [0, 2^61−1): pairwise independent signs */
    return (ap_hash_eval(&s->signs[row], key) >> 30) & 1 ? 1.0f : -1.0f;
}

enum { NEG = 1u << 31 };

void ap_cs_buckets(const ap_count_sketch *s, uint64_t key, uint32_t *buckets)
{
    for (int r = 0; r < s->depth; r++)
        buckets[r] = (uint32_t)ap_cs_bucket(s, r, key) | (sign_of(s, r, key) < 0 ? NEG : 0u);
}

void ap_cs_update_buckets(ap_count_sketch *s, const uint32_t *buckets, float value)
{
    for (int r = 0; r < s->depth; r++)
        s->counts[(size_t)r * s->width + (buckets[r] & ~NEG)] += buckets[r] & NEG ? -value : value;
}

void ap_cs_update(ap_count_sketch *s, uint64_t key, float value)
{
    uint32_t b[64]; /* depth <= 64 (init) */
    ap_cs_buckets(s, key, b);
    ap_cs_update_buckets(s, b, value);
}

float ap_cs_row_estimate(const ap_count_sketch *s, int row, uint64_t key)
{
    return sign_of(s, row, key) * s->counts[(size_t)row * s->width + ap_cs_bucket(s, row, key)];
}

float ap_cs_query(ap_count_sketch *s, uint64_t key)
{
    uint32_t b[64];
    ap_cs_buckets(s, key, b);
    return ap_cs_query_buckets(s, b);
}

float ap_cs_query_buckets(ap_count_sketch *s, const uint32_t *buckets)
{
    /* insertion sort: depth is small (<= 64) and this is the policy's hot path */
    for (int r = 0; r < s->depth; r++) {
        const float c = s->counts[(size_t)r * s->width + (buckets[r] & ~NEG)];
        const float v = buckets[r] & NEG ? -c : c;
        int i = r;
        while (i > 0 && s->scratch[i - 1] > v) {
            s->scratch[i] = s->scratch[i - 1];
            i--;
        }
        s->scratch[i] = v;
    }
    int d = s->depth;
    return d % 2 ? s->scratch[d / 2] : 0.5f * (s->scratch[d / 2 - 1] + s->scratch[d / 2]);
}

size_t ap_cs_bytes(const ap_count_sketch *s)
{
    return (size_t)s->depth * s->width * sizeof *s->counts + 2 * (size_t)s->depth * sizeof *s->rows;
}
