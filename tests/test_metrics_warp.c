/* test_metrics_warp.c — analysis/metrics_device.cuh's warp code run on the
 * CPU, against metrics.c's ap_metrics_row (and the top positions against
 * a sort), so that CI checks the device
 * metrics' arithmetic without a GPU. 32 threads stand for a warp's lanes
 * and meet at a barrier at every shuffle, ballot and __syncwarp; each such
 * call must be reached by every lane, in the same order (counted).
 * The device replay's own test on a GPU is test_study_gpu. */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* ---- a warp of threads ------------------------------------------------ */

static _Thread_local struct {
    unsigned x;
} threadIdx;
static pthread_barrier_t warp_barrier;
typedef union {
    double d;
    float f;
    int i;
    unsigned u;
} lane_word;
static lane_word exchange[32];
static int call_kind[32], kind_mismatches;

/* Every lane calls the same collective (kind) at the same point. */
static void collective(int kind)
{
    const unsigned lane = threadIdx.x;
    call_kind[lane] = kind;
    pthread_barrier_wait(&warp_barrier);
    if (lane == 0)
        for (int i = 1; i < 32; i++) kind_mismatches += call_kind[i] != kind;
}

#define SHUFFLE(name, type, member)                                                                  \
    static type name(type v, int src)                                                                \
    {                                                                                                \
        collective(1);                                                                               \
        exchange[threadIdx.x].member = v;                                                            \
        pthread_barrier_wait(&warp_barrier);                                                         \
        const type r = exchange[src & 31].member;                                                    \
        pthread_barrier_wait(&warp_barrier);                                                         \
        return r;                                                                                    \
    }
SHUFFLE(shuffle_d, double, d)
SHUFFLE(shuffle_f, float, f)
SHUFFLE(shuffle_i, int, i)
SHUFFLE(shuffle_u, unsigned, u)

#define SHUFFLE_OF(v) _Generic((v), double: shuffle_d, float: shuffle_f, int: shuffle_i, unsigned: shuffle_u)
#define __shfl_sync(mask, v, src) SHUFFLE_OF(v)((v), (int)(src))
#define __shfl_xor_sync(mask, v, o) SHUFFLE_OF(v)((v), (int)(threadIdx.x ^ (unsigned)(o)))

static unsigned __ballot_sync(unsigned mask, int pred)
{
    (void)mask;
    collective(2);
    exchange[threadIdx.x].i = pred != 0;
    pthread_barrier_wait(&warp_barrier);
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= (unsigned)exchange[i].i << i;
    pthread_barrier_wait(&warp_barrier);
    return r;
}

static void __syncwarp(void)
{
    collective(3);
    pthread_barrier_wait(&warp_barrier);
}

#define __popc(x) __builtin_popcount(x)
#define __device__

#include "../analysis/metrics_device.cuh"

/* ---- one row, on the warp and on the host ------------------------------ */

typedef struct {
    int t, hd, all_kept, cnt;
    float *p, *v, *o; /* [t + 1], [t + 1, hd], [hd] */
    int *pos;         /* [cnt] ascending, all < t */
    int top[32], warp_top[32]; /* p's best positions: the host's order, the warp's (ap_topk_warp) */
    double device[AP_M_COUNT], host[AP_M_COUNT];
} row_case;

static float warp_q[4096];              /* the warp's scratch (shared memory) */
static unsigned char warp_kept[4096];

typedef struct {
    row_case *row;
    unsigned lane;
} lane_arg;

static void *run_lane(void *arg)
{
    const lane_arg *a = arg;
    threadIdx.x = a->lane;
    row_case *r = a->row;
    const int n = r->t + 1;
    const ap_row_set set = {r->t, r->all_kept ? r->t : r->cnt, r->all_kept, r->pos};
    ap_topk_warp(r->p, n, r->warp_top);
    __syncwarp();
    const double neg_entropy = ap_row_neg_entropy_warp(r->p, n);
    double out[AP_M_COUNT];
    ap_metrics_row_warp(r->p, &set, r->warp_top, neg_entropy, r->v, r->o, r->hd, warp_q, warp_kept, out);
    if (a->lane == 0) memcpy(r->device, out, sizeof out);
    return NULL;
}

static int by_value_then_position(const void *x, const void *y, void *p)
{
    const float *row = p;
    const int a = *(const int *)x, b = *(const int *)y;
    if (row[a] != row[b]) return row[a] > row[b] ? -1 : 1;
    return a - b;
}

/* The device's values of r (on 32 threads) and the host's. */
static void row_run(row_case *r)
{
    const int n = r->t + 1;
    int *order = malloc((size_t)n * sizeof *order);
    float *q = calloc((size_t)n, sizeof *q);
    unsigned char *kept = calloc((size_t)n, 1);
    assert_non_null(order), assert_non_null(q), assert_non_null(kept);
    for (int j = 0; j < n; j++) order[j] = j;
    qsort_r(order, (size_t)n, sizeof *order, by_value_then_position, r->p);
    for (int i = 0; i < 32; i++) r->top[i] = i < n ? order[i] : 0;
    /* the host's policy row: p on the set, renormalised */
    const int nothing_evicted = r->all_kept || r->cnt == r->t;
    double mass = r->p[r->t];
    for (int x = 0; x < r->cnt; x++) mass += r->p[r->pos[x]];
    for (int j = 0; j < n; j++) q[j] = nothing_evicted ? r->p[j] : 0, kept[j] = (unsigned char)nothing_evicted;
    for (int x = 0; !nothing_evicted && x <= r->cnt; x++) {
        const int j = x < r->cnt ? r->pos[x] : r->t;
        q[j] = mass > 0 ? (float)(r->p[j] / mass) : 0.0f, kept[j] = 1;
    }
    ap_metrics_row(r->p, q, kept, n, r->v, r->o, r->hd, r->host);
    pthread_t lanes[32];
    lane_arg args[32];
    for (unsigned l = 0; l < 32; l++) {
        args[l] = (lane_arg){r, l};
        assert_int_equal(pthread_create(&lanes[l], NULL, run_lane, &args[l]), 0);
    }
    for (int l = 0; l < 32; l++) pthread_join(lanes[l], NULL);
    for (int i = 0; i < 32 && i < n; i++) assert_int_equal(r->warp_top[i], r->top[i]);
    free(order), free(q), free(kept);
}

static float uniform(unsigned *seed) { return (float)rand_r(seed) / (float)RAND_MAX; }

/* A row of t + 1 probabilities (some zero, some tied), values, the exact
 * output, and a set of one of seven shapes. */
static void row_make(row_case *r, int t, int hd, int shape, unsigned *seed)
{
    const int n = t + 1;
    r->t = t, r->hd = hd, r->all_kept = shape == 0, r->cnt = 0;
    r->p = malloc((size_t)n * sizeof *r->p);
    r->v = malloc((size_t)n * hd * sizeof *r->v);
    r->o = malloc((size_t)hd * sizeof *r->o);
    r->pos = malloc((size_t)n * sizeof *r->pos);
    assert_non_null(r->p), assert_non_null(r->v), assert_non_null(r->o), assert_non_null(r->pos);
    const int ties = rand_r(seed) % 10 == 0;
    double z = 0;
    for (int j = 0; j < n; j++) {
        r->p[j] = ties ? (float)(rand_r(seed) % 2) : rand_r(seed) % 5 == 0 ? 0.0f : expf(8.0f * uniform(seed));
        z += r->p[j];
    }
    for (int j = 0; j < n; j++) r->p[j] = z > 0 ? (float)(r->p[j] / z) : 0.0f;
    for (int j = 0; j < n * hd; j++) r->v[j] = 2.0f * uniform(seed) - 1.0f;
    for (int j = 0; j < t; j++) {
        /* 1: all of 0..t-1 (nothing evicted); 2-5: random subsets; 6: t alone */
        const int keep = shape == 1 || (shape >= 2 && shape <= 5 && rand_r(seed) % (shape == 5 ? 9 : 2) == 0);
        if (keep) r->pos[r->cnt++] = j;
    }
    if (shape == 3) { /* nothing of the set has any mass */
        r->p[t] = 0;
        for (int x = 0; x < r->cnt; x++) r->p[r->pos[x]] = 0;
    }
    for (int d = 0; d < hd; d++) {
        double s = 0;
        for (int j = 0; j < n; j++) s += (double)r->p[j] * r->v[(size_t)j * hd + d];
        r->o[d] = (float)s;
    }
}

static void row_free(row_case *r) { free(r->p), free(r->v), free(r->o), free(r->pos); }

static int is_divergence(int m) { return m == AP_M_KL || m == AP_M_KL_REV || m == AP_M_JS || m == AP_M_INDEX_KL; }

/* Every metric as the host's: equal, or within 1e-12 absolute or 1e-9
 * relative; a row with nothing evicted has divergences exactly 0. */
static void check_row(const row_case *r, int shape)
{
    const int nothing_evicted = r->all_kept || r->cnt == r->t;
    for (int m = 0; m < AP_M_FIRST_NEXT; m++) {
        const double a = r->device[m], b = r->host[m];
        if (nothing_evicted && is_divergence(m) && a != 0)
            fail_msg("t %d shape %d: %s %.17g with nothing evicted", r->t, shape, ap_metric_name((ap_metric)m), a);
        if (a == b || (isnan(a) && isnan(b))) continue;
        const double d = fabs(a - b), rel = d / fmax(fabs(a), fabs(b));
        if (!(d <= 1e-12 || rel <= 1e-9))
            fail_msg("t %d hd %d shape %d cnt %d: %s device %.17g host %.17g", r->t, r->hd, shape, r->cnt,
                     ap_metric_name((ap_metric)m), a, b);
    }
}

static void test_random_rows(void **state)
{
    (void)state;
    static const int ts[] = {0, 1, 2, 5, 31, 32, 33, 63, 64, 65, 100, 257, 1023};
    static const int hds[] = {1, 8, 32, 33, 48, 64, 96};
    unsigned seed = 7;
    kind_mismatches = 0;
    for (int it = 0; it < 150; it++) {
        const int t = ts[rand_r(&seed) % 13], hd = hds[rand_r(&seed) % 7], shape = rand_r(&seed) % 7;
        row_case r;
        row_make(&r, t, hd, shape, &seed);
        row_run(&r);
        check_row(&r, shape);
        row_free(&r);
    }
    assert_int_equal(kind_mismatches, 0);
}

/* A nearly lossless row: five evicted positions of tiny mass. Its KL is
 * tiny too and must keep its relative precision (the rearranged sums
 * alone left an error of ~1e-15 absolute: 3e-4 of a KL of 1e-11). */
static void test_nearly_lossless(void **state)
{
    (void)state;
    static const float tiny[] = {1e-3f, 1e-5f, 1e-7f, 1e-9f, 1e-11f};
    unsigned seed = 3;
    for (int k = 0; k < 5; k++)
        for (int t = 100; t <= 700; t += 600) {
            row_case r;
            row_make(&r, t, 64, 1, &seed); /* every position kept, then five evicted */
            for (int j = 10; j < 15; j++) r.p[j] = tiny[k];
            r.cnt = 0;
            for (int j = 0; j < t; j++)
                if (j < 10 || j >= 15) r.pos[r.cnt++] = j;
            row_run(&r);
            for (int m = AP_M_KL; m <= AP_M_KL; m++) {
                const double rel = fabs(r.device[m] - r.host[m]) / r.host[m];
                if (!(rel <= 1e-9))
                    fail_msg("tiny %g t %d: KL device %.17g host %.17g (%.2g relative)", tiny[k], t, r.device[m],
                             r.host[m], rel);
            }
            check_row(&r, 1);
            row_free(&r);
        }
}

int main(void)
{
    pthread_barrier_init(&warp_barrier, NULL, 32);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_rows),
        cmocka_unit_test(test_nearly_lossless),
    };
    const int failed = cmocka_run_group_tests(tests, NULL, NULL);
    pthread_barrier_destroy(&warp_barrier);
    return failed;
}
