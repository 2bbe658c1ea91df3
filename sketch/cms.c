/* cms.c — Count-Min sketch (Cormode & Muthukrishnan, "An improved data stream
 * summary: the count-min sketch and its applications", J. Algorithms 2005),
 * with conservative update (Estan & Varghese, SIGCOMM 2002): only the
 * counters below the new estimate are raised, which never underestimates and
 * never exceeds plain update's estimate. */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "sketch.h"

ap_status ap_cms_init(ap_cms *s, int depth, int width, int conservative, uint64_t seed,
                      ap_error *err)
{
    memset(s, 0, sizeof *s);
    if (depth < 1 || depth > 64 || width < 1 || width > (1 << 26))
        return ap_error_set(err, AP_ERR_USAGE,
                            "count-min: depth %d and width %d must be in 1..64 and 1..67108864",
                            depth, width);
    s->depth = depth;
    s->width = width;
    s->conservative = conservative;
    s->counts = calloc((size_t)depth * width, sizeof *s->counts);
    s->rows = malloc((size_t)depth * sizeof *s->rows);
    if (!s->counts || !s->rows) {
        ap_cms_free(s);
        return ap_error_set(err, AP_ERR_RUNTIME, "count-min: out of memory");
    }
    uint64_t state = seed;
    for (int r = 0; r < depth; r++) ap_hash_init(&s->rows[r], ap_seed_next(&state));
    return AP_OK;
}

void ap_cms_free(ap_cms *s)
{
    free(s->counts);
    free(s->rows);
    memset(s, 0, sizeof *s);
}

int ap_cms_bucket(const ap_cms *s, int row, uint64_t key)
{
    return (int)(ap_hash_eval(&s->rows[row], key) % (uint64_t)s->width);
}

void ap_cms_buckets(const ap_cms *s, uint64_t key, uint32_t *buckets)
{
    for (int r = 0; r < s->depth; r++) buckets[r] = (uint32_t)ap_cms_bucket(s, r, key);
}

float ap_cms_query_buckets(const ap_cms *s, const uint32_t *buckets)
{
    float est = FLT_MAX;
    for (int r = 0; r < s->depth; r++) {
        float c = s->counts[(size_t)r * s->width + buckets[r]];
        est = c < est ? c : est;
    }
    return est;
}

void ap_cms_update_buckets(ap_cms *s, const uint32_t *buckets, float value)
{
    if (!s->conservative) {
        for (int r = 0; r < s->depth; r++) s->counts[(size_t)r * s->width + buckets[r]] += value;
        return;
    }
    float target = ap_cms_query_buckets(s, buckets) + value;
    for (int r = 0; r < s->depth; r++) {
        float *c = &s->counts[(size_t)r * s->width + buckets[r]];
        if (*c < target) *c = target;
    }
}

float ap_cms_query(const ap_cms *s, uint64_t key)
{
    uint32_t b[64]; /* depth <= 64 (init) */
    ap_cms_buckets(s, key, b);
    return ap_cms_query_buckets(s, b);
}

void ap_cms_update(ap_cms *s, uint64_t key, float value)
{
    uint32_t b[64];
    ap_cms_buckets(s, key, b);
    ap_cms_update_buckets(s, b, value);
}

ap_status ap_cms_merge(ap_cms *a, const ap_cms *b, ap_error *err)
{
    if (a->depth != b->depth || a->width != b->width)
        return ap_error_set(err, AP_ERR_USAGE, "count-min merge: shapes %dx%d and %dx%d differ",
                            a->depth, a->width, b->depth, b->width);
    for (int r = 0; r < a->depth; r++)
        if (a->rows[r].a != b->rows[r].a || a->rows[r].b != b->rows[r].b)
            return ap_error_set(err, AP_ERR_USAGE, "count-min merge: sketches have other hashes");
    for (size_t i = 0; i < (size_t)a->depth * a->width; i++) a->counts[i] += b->counts[i];
    return AP_OK;
}

void ap_cms_reset(ap_cms *s) { memset(s->counts, 0, (size_t)s->depth * s->width * sizeof *s->counts); }

size_t ap_cms_bytes(const ap_cms *s)
{
    return (size_t)s->depth * s->width * sizeof *s->counts + (size_t)s->depth * sizeof *s->rows;
}
