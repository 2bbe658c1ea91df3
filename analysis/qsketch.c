/* qsketch.c — quantiles of a stream with a stated relative accuracy, in
 * memory that does not grow with the stream, and whose summaries merge
 * exactly (docs/statistics.md).
 *
 * A value x > 0 falls in bucket k = ceil(log(x) / log(gamma)) with
 * gamma = (1 + alpha) / (1 - alpha) (DDSketch: Masson, Rim and Lee, VLDB
 * 2019); negative values in a mirrored store; |x| below AP_QSKETCH_ZERO in a
 * zero bucket. A bucket's estimate 2 gamma^k / (gamma + 1) is within a
 * relative alpha of every value in it. Counts are integers, so merging two
 * sketches adds counts and gives the sketch of the concatenated streams, in
 * any order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis.h"

/* Keys are clamped to this range: |x| in [1e-12, 1e12] is covered. */
int64_t ap_qsketch_key_limit(const ap_qsketch *q) { return (int64_t)(ceil(log(1e12) / q->log_gamma) + 1); }

static int64_t key_of(const ap_qsketch *q, double ax)
{
    double k = ceil(log(ax) / q->log_gamma);
    const double lim = (double)ap_qsketch_key_limit(q);
    if (k > lim) k = lim;
    if (k < -lim) k = -lim;
    return (int64_t)k;
}

static double value_of(const ap_qsketch *q, int64_t key)
{
    return 2.0 * exp((double)key * q->log_gamma) / (q->gamma + 1.0);
}

void ap_qsketch_init(ap_qsketch *q, double alpha)
{
    memset(q, 0, sizeof *q);
    q->alpha = alpha;
    q->gamma = (1 + alpha) / (1 - alpha);
    q->log_gamma = log(q->gamma);
}

void ap_qsketch_free(ap_qsketch *q)
{
    free(q->store[0].bins);
    free(q->store[1].bins);
    memset(q->store, 0, sizeof q->store);
}

/* Makes room for key in a store (its bins cover [offset, offset + n)). */
static ap_status store_reserve(ap_qstore *s, int64_t key, ap_error *err)
{
    if (s->n && key >= s->offset && key < s->offset + (int64_t)s->n) return AP_OK;
    int64_t lo = s->n ? (key < s->offset ? key : s->offset) : key;
    int64_t hi = s->n ? (key >= s->offset + (int64_t)s->n ? key + 1 : s->offset + (int64_t)s->n) : key + 1;
    /* grow by a margin so that a drifting stream does not reallocate each value */
    const int64_t margin = 64;
    if (s->n) {
        if (lo < s->offset) lo -= margin;
        if (hi > s->offset + (int64_t)s->n) hi += margin;
    }
    const size_t n = (size_t)(hi - lo);
    uint64_t *bins = calloc(n, sizeof *bins);
    if (!bins) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for a quantile sketch");
    if (s->n) memcpy(bins + (s->offset - lo), s->bins, s->n * sizeof *bins);
    free(s->bins);
    s->bins = bins;
    s->offset = lo;
    s->n = n;
    return AP_OK;
}

ap_status ap_qsketch_add(ap_qsketch *q, double x, ap_error *err)
{
    if (isnan(x)) return AP_OK;
    const double ax = fabs(x);
    if (ax < AP_QSKETCH_ZERO) {
        q->zero++;
        q->count++;
        return AP_OK;
    }
    ap_qstore *s = &q->store[x < 0];
    const int64_t key = key_of(q, ax);
    ap_status st = store_reserve(s, key, err);
    if (st) return st;
    s->bins[key - s->offset]++;
    q->count++;
    return AP_OK;
}

ap_status ap_qsketch_add_bins(ap_qsketch *q, int negative, int64_t first_key, const uint32_t *counts, size_t n,
                              uint64_t zero, ap_error *err)
{
    q->zero += zero;
    q->count += zero;
    if (!n) return AP_OK;
    ap_qstore *s = &q->store[negative != 0];
    ap_status st;
    if ((st = store_reserve(s, first_key, err)) || (st = store_reserve(s, first_key + (int64_t)n - 1, err))) return st;
    for (size_t i = 0; i < n; i++) {
        s->bins[first_key + (int64_t)i - s->offset] += counts[i];
        q->count += counts[i];
    }
    return AP_OK;
}

ap_status ap_qsketch_merge(ap_qsketch *into, const ap_qsketch *from, ap_error *err)
{
    for (int side = 0; side < 2; side++) {
        const ap_qstore *f = &from->store[side];
        ap_qstore *t = &into->store[side];
        if (!f->n) continue;
        ap_status st;
        if ((st = store_reserve(t, f->offset, err)) ||
            (st = store_reserve(t, f->offset + (int64_t)f->n - 1, err)))
            return st;
        for (size_t i = 0; i < f->n; i++) t->bins[f->offset + (int64_t)i - t->offset] += f->bins[i];
    }
    into->zero += from->zero;
    into->count += from->count;
    return AP_OK;
}

/* The value of rank r (0-based) among the count values, estimated. */
static double value_at_rank(const ap_qsketch *q, uint64_t r)
{
    uint64_t seen = 0;
    const ap_qstore *neg = &q->store[1], *pos = &q->store[0];
    for (size_t i = neg->n; i-- > 0;) { /* most negative first */
        seen += neg->bins[i];
        if (seen > r) return -value_of(q, neg->offset + (int64_t)i);
    }
    seen += q->zero;
    if (seen > r) return 0.0;
    for (size_t i = 0; i < pos->n; i++) {
        seen += pos->bins[i];
        if (seen > r) return value_of(q, pos->offset + (int64_t)i);
    }
    return pos->n ? value_of(q, pos->offset + (int64_t)pos->n - 1) : 0.0;
}

double ap_qsketch_quantile(const ap_qsketch *q, double p)
{
    if (q->count == 0) return NAN;
    /* the same rank rule as gsl_stats_quantile_from_sorted_data: between the
     * values of ranks floor(p (n - 1)) and the next, linearly */
    const double h = p * (double)(q->count - 1);
    const uint64_t lo = (uint64_t)floor(h);
    const double a = value_at_rank(q, lo);
    if (lo + 1 >= q->count || h == (double)lo) return a;
    const double b = value_at_rank(q, lo + 1);
    return a + (h - (double)lo) * (b - a);
}

/* ---- as bytes, for another process (study/mpi.c) ------------------------------ */

size_t ap_qsketch_packed_size(const ap_qsketch *q)
{
    return sizeof(double) + 2 * sizeof(uint64_t) + 2 * (sizeof(int64_t) + sizeof(uint64_t)) +
           (q->store[0].n + q->store[1].n) * sizeof(uint64_t);
}

static unsigned char *put(unsigned char *p, const void *v, size_t n)
{
    memcpy(p, v, n);
    return p + n;
}

void ap_qsketch_pack(const ap_qsketch *q, unsigned char *out)
{
    out = put(out, &q->alpha, sizeof q->alpha);
    out = put(out, &q->zero, sizeof q->zero);
    out = put(out, &q->count, sizeof q->count);
    for (int side = 0; side < 2; side++) {
        const uint64_t n = q->store[side].n;
        out = put(out, &q->store[side].offset, sizeof q->store[side].offset);
        out = put(out, &n, sizeof n);
        if (n) out = put(out, q->store[side].bins, (size_t)n * sizeof *q->store[side].bins);
    }
}

ap_status ap_qsketch_unpack(const unsigned char *in, size_t size, ap_qsketch *q, size_t *used, ap_error *err)
{
    const unsigned char *p = in, *end = in + size;
    double alpha;
    uint64_t zero, count;
    if (size < sizeof alpha + 2 * sizeof zero) goto bad;
    memcpy(&alpha, p, sizeof alpha), p += sizeof alpha;
    memcpy(&zero, p, sizeof zero), p += sizeof zero;
    memcpy(&count, p, sizeof count), p += sizeof count;
    if (!(alpha > 0 && alpha < 1)) goto bad;
    ap_qsketch_init(q, alpha);
    q->zero = zero, q->count = count;
    for (int side = 0; side < 2; side++) {
        uint64_t n;
        if ((size_t)(end - p) < sizeof q->store[side].offset + sizeof n) goto bad_free;
        memcpy(&q->store[side].offset, p, sizeof q->store[side].offset), p += sizeof q->store[side].offset;
        memcpy(&n, p, sizeof n), p += sizeof n;
        if (n > (uint64_t)(end - p) / sizeof(uint64_t)) goto bad_free;
        if (n) {
            if (!(q->store[side].bins = malloc((size_t)n * sizeof(uint64_t)))) {
                ap_qsketch_free(q);
                return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for a quantile sketch");
            }
            memcpy(q->store[side].bins, p, (size_t)n * sizeof(uint64_t)), p += n * sizeof(uint64_t);
        }
        q->store[side].n = (size_t)n;
    }
    *used = (size_t)(p - in);
    return AP_OK;
bad_free:
    ap_qsketch_free(q);
bad:
    return ap_error_set(err, AP_ERR_RUNTIME, "a quantile sketch received from another process is malformed");
}
