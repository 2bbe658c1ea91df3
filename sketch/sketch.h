/* sketch.h — streaming sketches: seeded 2-universal hashing, Count-Min,
 * Count Sketch and RACE. Included through sketch/policy.h.
 *
 * Each sketch is sized at creation, independently of the stream length, and
 * never reset by the policies (streaming). Caller owns the struct; _init
 * allocates the counters and _free releases them. */
#ifndef AP_SKETCH_H
#define AP_SKETCH_H

#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"

/* ---- hashing ------------------------------------------------------------ */

/* Carter–Wegman h(x) = ((a x + b) mod p) with p = 2^61 − 1, a in [1, p),
 * b in [0, p): a 2-universal family over 64-bit keys below p. */
typedef struct {
    uint64_t a, b;
} ap_hash;

void ap_hash_init(ap_hash *h, uint64_t seed);
uint64_t ap_hash_eval(const ap_hash *h, uint64_t key); /* in [0, 2^61 − 1) */
/* splitmix64: seeds derived from one seed. */
uint64_t ap_seed_next(uint64_t *state);

/* Fills x[n] with standard normal draws from GSL's mt19937 seeded with seed
 * (GSL's headers and OpenBLAS's cblas.h cannot share a file). 0 on success. */
int ap_gaussian_fill(float *x, size_t n, uint64_t seed);

/* ---- Count-Min (Cormode & Muthukrishnan 2005) ---------------------------- */

typedef struct {
    int depth, width;
    int conservative;  /* conservative update (Estan & Varghese 2002) */
    float *counts;     /* [depth, width] */
    ap_hash *rows;     /* [depth] */
} ap_cms;

ap_status ap_cms_init(ap_cms *s, int depth, int width, int conservative, uint64_t seed,
                      ap_error *err);
void ap_cms_free(ap_cms *s);
void ap_cms_update(ap_cms *s, uint64_t key, float value); /* value >= 0 */
float ap_cms_query(const ap_cms *s, uint64_t key);         /* min over rows */
/* Adds b's counters into a (same depth, width and seed). */
ap_status ap_cms_merge(ap_cms *a, const ap_cms *b, ap_error *err);
void ap_cms_reset(ap_cms *s);
size_t ap_cms_bytes(const ap_cms *s);
int ap_cms_bucket(const ap_cms *s, int row, uint64_t key);
/* The same operations on a key's precomputed buckets[depth], so a caller
 * that keeps them (the policies do, per retained position) hashes a key once. */
void ap_cms_buckets(const ap_cms *s, uint64_t key, uint32_t *buckets);
void ap_cms_update_buckets(ap_cms *s, const uint32_t *buckets, float value);
float ap_cms_query_buckets(const ap_cms *s, const uint32_t *buckets);

/* ---- Count Sketch (Charikar, Chen & Farach-Colton 2002) ------------------ */

typedef struct {
    int depth, width;
    float *counts;        /* [depth, width] */
    ap_hash *rows, *signs;/* [depth] bucket and sign hashes */
    float *scratch;       /* [depth] for the median */
} ap_count_sketch;

ap_status ap_cs_init(ap_count_sketch *s, int depth, int width, uint64_t seed, ap_error *err);
void ap_cs_free(ap_count_sketch *s);
void ap_cs_update(ap_count_sketch *s, uint64_t key, float value);
float ap_cs_query(ap_count_sketch *s, uint64_t key);          /* median of rows */
float ap_cs_row_estimate(const ap_count_sketch *s, int row, uint64_t key);
size_t ap_cs_bytes(const ap_count_sketch *s);
int ap_cs_bucket(const ap_count_sketch *s, int row, uint64_t key);
/* Precomputed form: buckets[r] = bucket | (sign < 0) << 31. */
void ap_cs_buckets(const ap_count_sketch *s, uint64_t key, uint32_t *buckets);
void ap_cs_update_buckets(ap_count_sketch *s, const uint32_t *buckets, float value);
float ap_cs_query_buckets(ap_count_sketch *s, const uint32_t *buckets);

/* ---- RACE (Coleman & Shrivastava 2020) ----------------------------------
 * R repetitions of a signed-random-projection LSH with b bits: bucket of x in
 * row r = the signs of b Gaussian projections. add(x, w) adds w to x's bucket
 * in every row; query(y) = mean over rows of y's bucket counts, an unbiased
 * estimate of Σ w_x (1 − θ(x,y)/π)^b. */
typedef struct {
    int rows, bits, dim;
    float *planes;  /* [rows, bits, dim] Gaussian hyperplanes (GSL RNG) */
    float *counts;  /* [rows, 2^bits] */
    float *proj;    /* [rows * bits] scratch for one vector's projections */
} ap_race;

ap_status ap_race_init(ap_race *s, int rows, int bits, int dim, uint64_t seed, ap_error *err);
void ap_race_free(ap_race *s);
/* buckets[rows] of vector x[dim]. */
void ap_race_hash(ap_race *s, const float *x, uint32_t *buckets);
void ap_race_add_buckets(ap_race *s, const uint32_t *buckets, float weight);
float ap_race_query_buckets(const ap_race *s, const uint32_t *buckets);
void ap_race_add(ap_race *s, const float *x, float weight);
float ap_race_query(ap_race *s, const float *x);
size_t ap_race_bytes(const ap_race *s);

/* ---- KIVI quantisation of the cache (quant.c, docs/policies.md) ---------- */

/* How a cache is quantised: bits 0 (none), 2, 4 or 8; keys per channel over
 * blocks of `group` consecutive positions, values per position over groups
 * of `group` channels; the last `residual` positions in full precision. */
typedef struct {
    int bits, group, residual;
} ap_quant;

/* Asymmetric min-max quantisation of x[i * stride], i < n, to 2^bits levels,
 * dequantised into out[i * stride]: |x - out| <= (max - min) / (2^bits - 1) / 2. */
void ap_quant_span(const float *x, size_t stride, int n, int bits, float *out);
/* Keys [T, D] as the quantised cache holds them once their block is quantised
 * (a last incomplete block is copied: it is never quantised). */
void ap_quant_keys(const ap_quant *q, const float *k, int T, int D, float *k_hat);
/* Values [T, D] as they are once quantised. */
void ap_quant_values(const ap_quant *q, const float *v, int T, int D, float *v_hat);
/* At step t: is position j's key (its whole block older than the residual
 * window) or value (itself older than it) held quantised? */
int ap_quant_key_held(const ap_quant *q, int j, int t);
int ap_quant_value_held(const ap_quant *q, int j, int t);
/* Bytes a head's quantised cache holds at step t for the retained positions
 * kept[0..n) (ascending): b-bit codes, an fp16 scale and minimum per key
 * block and channel and per value group, fp16 for what is not quantised. */
double ap_quant_bytes(const ap_quant *q, const int *kept, int n, int t, int D);

#endif
