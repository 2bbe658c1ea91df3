/* test_policy_methods.c — the policies added through the registry and the
 * budget allocations, each against a brute-force reference written here
 * from its paper's definition and recomputed from the whole history at
 * every step:
 *   - the registry: names unique, every parameter's default in its range,
 *     every policy creatable with its defaults and found by name
 *   - knorm: evicts the key of largest L2 norm
 *   - snapkv: window sums of past rows, pooled over retained neighbours
 *   - quest: page bounds from the raw keys (and that they bound every q·k
 *     of the page), the greedy choice of pages
 *   - pyramid: per-layer budgets decreasing, summing to n_layer x budget
 *   - adakv: the globally lowest h2o score evicted, heads above their floor
 * Policies are driven as the isolated replay drives them (rows = softmax of
 * fixed logits over the retained set ∪ {t}). */
#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sketch/policy.h"

enum { T = 200, H = 3, HD = 8 };

static float logits[H][T][T], qs[H][T][HD], ks[H][T][HD];

static int setup(void **state)
{
    (void)state;
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 99);
    for (int h = 0; h < H; h++) {
        for (int t = 0; t < T; t++)
            for (int j = 0; j < T; j++) logits[h][t][j] = (float)gsl_ran_gaussian(rng, 1.5);
        for (int t = 0; t < T; t++)
            for (int d = 0; d < HD; d++) {
                qs[h][t][d] = (float)gsl_ran_gaussian(rng, 1.0);
                ks[h][t][d] = (float)gsl_ran_gaussian(rng, 1.0 + (t % 7) * 0.1);
            }
    }
    gsl_rng_free(rng);
    return 0;
}

/* A reference's retained sets: kept[h][0..n[h]) ascending. */
typedef struct {
    int kept[H][T], n[H];
} ref_sets;

static void row_of(const int *kept, int n, int h, int t, float *row)
{
    memset(row, 0, T * sizeof *row);
    double sum = exp(logits[h][t][t]);
    for (int i = 0; i < n; i++) sum += exp(logits[h][t][kept[i]]);
    for (int i = 0; i < n; i++) row[kept[i]] = (float)(exp(logits[h][t][kept[i]]) / sum);
    row[t] = (float)(exp(logits[h][t][t]) / sum);
}

static void qk_of(int t, float *q, float *k)
{
    for (int h = 0; h < H; h++) {
        memcpy(q + h * HD, qs[h][t], sizeof qs[h][t]);
        memcpy(k + h * HD, ks[h][t], sizeof ks[h][t]);
    }
}

static void assert_same_sets(const ap_policy *p, const ref_sets *r, int t)
{
    for (int h = 0; h < H; h++) {
        int n;
        const int *kept = ap_policy_kept(p, h, &n);
        if (n != r->n[h] || memcmp(kept, r->kept[h], (size_t)n * sizeof *kept))
            fail_msg("step %d head %d: the policy keeps %d positions, the reference %d (or others)", t, h, n, r->n[h]);
    }
}

static ap_policy_params params_of(const char *name, int budget, int sink, int recent)
{
    ap_policy_params p;
    ap_policy_params_default(&p, name);
    p.budget = budget, p.sink = sink, p.recent = recent;
    return p;
}

static int evictable(const ap_policy_params *p, int j, int t) { return j >= p->sink && j <= t - p->recent; }

static void remove_entry(ref_sets *r, int h, int i)
{
    memmove(&r->kept[h][i], &r->kept[h][i + 1], (size_t)(r->n[h] - i - 1) * sizeof(int));
    r->n[h]--;
}

/* ---- the registry ------------------------------------------------------------ */

static void test_registry(void **state)
{
    (void)state;
    assert_true(ap_policy_count() >= 13);
    for (int i = 0; i < ap_policy_count(); i++) {
        const ap_policy_info *info = ap_policy_info_at(i);
        assert_non_null(info->name);
        assert_true(info->summary && info->summary[0] && info->paper && info->paper[0]);
        assert_ptr_equal(ap_policy_find(info->name), info);
        assert_non_null(strstr(ap_policy_names(), info->name));
        for (int j = 0; j < i; j++) assert_string_not_equal(ap_policy_info_at(j)->name, info->name);
        ap_policy_params params;
        ap_policy_params_default(&params, info->name);
        for (int k = 0; k < ap_policy_n_params(info); k++) {
            const ap_policy_param *d = &info->params[k];
            assert_true(d->lo <= d->def && d->def <= d->hi && d->help && d->help[0]);
            int v = -1;
            assert_true(ap_policy_param_get(&params, d->name, &v));
            assert_int_equal(v, d->def);
        }
        ap_policy *p;
        ap_error err;
        if (ap_policy_create(&params, H, HD, &p, &err)) fail_msg("%s with its defaults: %s", info->name, err.msg);
        ap_policy_free(p);
        if (ap_policy_n_params(info) > 0) { /* out of range: refused naming it */
            params.value[0] = info->params[0].hi + (info->params[0].hi < 2147483647);
            if (params.value[0] > info->params[0].hi) {
                assert_int_equal(ap_policy_create(&params, H, HD, &p, &err), AP_ERR_USAGE);
                assert_non_null(strstr(err.msg, info->params[0].name));
            }
        }
    }
    assert_null(ap_policy_find("lru"));
}

/* ---- knorm, snapkv: one brute-force driver ------------------------------------ */

/* A reference score of retained entry i of head h at step t. */
typedef double (*ref_score_fn)(const ref_sets *r, int h, int i, int t, const ap_policy_params *p);

static float history[H][T][T]; /* rows the policy was shown: [h][step][position] */

static double knorm_ref(const ref_sets *r, int h, int i, int t, const ap_policy_params *p)
{
    (void)t, (void)p;
    const int j = r->kept[h][i];
    double sq = 0;
    for (int d = 0; d < HD; d++) sq += (double)ks[h][j][d] * ks[h][j][d];
    return (float)-sqrt(sq); /* larger norm, lower score: evicted first */
}

/* The attention j received from the last `window` queries, summed in the
 * order of their steps modulo the window (the order SnapKV's ring holds them). */
static double window_sum(int h, int j, int t, int window)
{
    double a = 0;
    for (int r = 0; r < window; r++) {
        int s = t - ((t - r) % window + window) % window; /* the step in (t - window, t] with s % window == r */
        if (s >= 0 && s >= j) a += history[h][s][j];
    }
    return a;
}

static double snapkv_ref(const ref_sets *r, int h, int i, int t, const ap_policy_params *p)
{
    int window, kernel, max_pool;
    ap_policy_param_get(p, "window", &window), ap_policy_param_get(p, "kernel", &kernel);
    ap_policy_param_get(p, "max_pool", &max_pool);
    double pooled = max_pool ? window_sum(h, r->kept[h][i], t, window) : 0;
    for (int x = i - kernel / 2; x <= i + kernel / 2; x++) {
        if (x < 0 || x >= r->n[h]) continue;
        const double v = window_sum(h, r->kept[h][x], t, window);
        pooled = max_pool ? (v > pooled ? v : pooled) : pooled + v;
    }
    return max_pool ? pooled : pooled / kernel;
}

static void check_against(const ap_policy_params *params, ref_score_fn ref_score)
{
    ap_policy *p;
    ap_error err;
    if (ap_policy_create(params, H, HD, &p, &err)) fail_msg("%s", err.msg);
    ref_sets r = {0};
    float rows[H * T], q[H * HD], k[H * HD];
    int evictions = 0;
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < H; h++) {
            row_of(r.kept[h], r.n[h], h, t, rows + h * T);
            memcpy(history[h][t], rows + h * T, sizeof history[h][t]);
        }
        qk_of(t, q, k);
        if (ap_policy_observe(p, t, rows, T, q, k, &err)) fail_msg("%s", err.msg);
        for (int h = 0; h < H; h++) {
            r.kept[h][r.n[h]++] = t;
            if (r.n[h] <= params->budget) continue;
            int victim = -1;
            double best = 0;
            for (int i = 0; i < r.n[h]; i++) {
                if (!evictable(params, r.kept[h][i], t)) continue;
                const double s = ref_score(&r, h, i, t, params);
                if (victim < 0 || s < best) victim = i, best = s;
            }
            remove_entry(&r, h, victim);
            evictions++;
        }
        assert_same_sets(p, &r, t);
    }
    ap_policy_free(p);
    print_message("%s (%d %d %d): %d evictions as the reference's\n", params->name, params->value[0],
                  params->value[1], params->value[2], evictions);
}

static void test_knorm(void **state)
{
    (void)state;
    ap_policy_params params = params_of("knorm", 40, 2, 6);
    check_against(&params, knorm_ref);
}

static void test_snapkv(void **state)
{
    (void)state;
    const int settings[4][3] = {{32, 5, 0}, {8, 3, 1}, {1, 1, 0}, {50, 7, 1}};
    for (int i = 0; i < 4; i++) {
        ap_policy_params params = params_of("snapkv", 36, 3, 5);
        ap_policy_param_set(&params, "window", settings[i][0]);
        ap_policy_param_set(&params, "kernel", settings[i][1]);
        ap_policy_param_set(&params, "max_pool", settings[i][2]);
        check_against(&params, snapkv_ref);
    }
    ap_policy_params params; /* an even kernel has no centre */
    ap_policy_params_default(&params, "snapkv");
    ap_policy_param_set(&params, "kernel", 4);
    ap_policy *p;
    ap_error err;
    assert_int_equal(ap_policy_create(&params, H, HD, &p, &err), AP_ERR_USAGE);
    assert_non_null(strstr(err.msg, "odd"));
}

/* ---- quest --------------------------------------------------------------------- */

/* The set query t attends to, recomputed from the raw keys of positions < t. */
static int quest_ref(const ap_policy_params *p, int h, int t, int *out)
{
    int page;
    ap_policy_param_get(p, "page", &page);
    if (t <= p->budget) {
        for (int j = 0; j < t; j++) out[j] = j;
        return t;
    }
    const int n_pages = (t - 1) / page + 1;
    double bound[T];
    int room = p->budget, chosen[T] = {0}, taken[T] = {0};
    for (int j = 0; j < t; j++) room -= !evictable(p, j, t);
    for (int g = 0; g < n_pages; g++) {
        bound[g] = 0;
        for (int d = 0; d < HD; d++) {
            float lo = INFINITY, hi = -INFINITY;
            for (int j = g * page; j < (g + 1) * page && j < t; j++) {
                lo = fminf(lo, ks[h][j][d]);
                hi = fmaxf(hi, ks[h][j][d]);
            }
            bound[g] += fmax((double)qs[h][t][d] * lo, (double)qs[h][t][d] * hi);
        }
        for (int j = g * page; j < (g + 1) * page && j < t; j++) { /* an upper bound of every q·k of the page */
            double dot = 0;
            for (int d = 0; d < HD; d++) dot += (double)qs[h][t][d] * ks[h][j][d];
            assert_true(dot <= bound[g] + 1e-9);
        }
    }
    for (int r = 0; r < n_pages; r++) { /* pages by bound, highest first, the older on ties */
        int g = -1;
        for (int x = 0; x < n_pages; x++)
            if (!taken[x] && (g < 0 || bound[x] > bound[g])) g = x;
        taken[g] = 1;
        int free_here = 0;
        for (int j = g * page; j < (g + 1) * page && j < t; j++) free_here += evictable(p, j, t);
        if (free_here > 0 && free_here <= room) room -= free_here, chosen[g] = 1;
    }
    int n = 0;
    for (int j = 0; j < t; j++)
        if (chosen[j / page] || !evictable(p, j, t)) out[n++] = j;
    return n;
}

static void test_quest(void **state)
{
    (void)state;
    const int pages[3] = {16, 5, 1};
    for (int c = 0; c < 3; c++) {
        ap_policy_params params = params_of("quest", 48, 4, 8);
        ap_policy_param_set(&params, "page", pages[c]);
        ap_policy *p;
        ap_error err;
        if (ap_policy_create(&params, H, HD, &p, &err)) fail_msg("%s", err.msg);
        float rows[H * T], q[H * HD], k[H * HD];
        int partial = 0;
        for (int t = 0; t < T; t++) {
            qk_of(t, q, k);
            if (ap_policy_select(p, t, q, &err)) fail_msg("%s", err.msg);
            for (int h = 0; h < H; h++) {
                int want[T], n;
                const int m = quest_ref(&params, h, t, want);
                const int *kept = ap_policy_kept(p, h, &n);
                assert_int_equal(n, m);
                assert_memory_equal(kept, want, (size_t)n * sizeof *kept);
                partial += n < params.budget && t > params.budget;
                row_of(kept, n, h, t, rows + h * T);
            }
            if (ap_policy_observe(p, t, rows, T, q, k, &err)) fail_msg("%s", err.msg);
        }
        ap_policy_free(p);
        print_message("quest page %d: every query's set as the reference's (%d sets short of the budget: a "
                      "page that did not fit)\n", pages[c], partial);
    }
}

/* ---- budget allocation ----------------------------------------------------------- */

static void test_pyramid_budgets(void **state)
{
    (void)state;
    const int cases[5][4] = {{64, 4, 16, 12}, {128, 0, 32, 12}, {256, 4, 64, 24}, {37, 1, 3, 5}, {20, 4, 16, 12}};
    const double betas[3] = {20, 2, 1};
    for (int c = 0; c < 5; c++)
        for (int b = 0; b < 3; b++) {
            ap_policy_params p, at;
            ap_policy_params_default(&p, "h2o");
            p.budget = cases[c][0], p.sink = cases[c][1], p.recent = cases[c][2];
            p.allocate = AP_ALLOC_PYRAMID;
            p.beta = betas[b];
            const int L = cases[c][3];
            long total = 0;
            int previous = 1 << 30;
            for (int l = 0; l < L; l++) {
                ap_policy_params_at_layer(&p, l, L, &at);
                assert_true(at.budget <= previous); /* falls with depth */
                assert_true(at.budget >= p.sink + p.recent);
                previous = at.budget;
                total += at.budget;
            }
            assert_int_equal(total, (long)L * p.budget);
            ap_policy_params_at_layer(&p, 0, L, &at);
            if (b == 2) assert_int_equal(at.budget, p.budget); /* beta 1: uniform */
        }
    ap_policy_params p, at; /* uniform, one layer and full are left as they are */
    ap_policy_params_default(&p, "h2o");
    ap_policy_params_at_layer(&p, 3, 12, &at);
    assert_int_equal(at.budget, p.budget);
    p.allocate = AP_ALLOC_PYRAMID;
    ap_policy_params_at_layer(&p, 0, 1, &at);
    assert_int_equal(at.budget, p.budget);
    ap_policy_params_default(&p, "full");
    p.allocate = AP_ALLOC_PYRAMID;
    ap_policy_params_at_layer(&p, 0, 12, &at);
    assert_int_equal(at.budget, p.budget);
}

/* AdaKV over h2o's scores: one pool of H x budget, the lowest accumulated
 * attention of any head goes (the lower head, then the older position, on
 * ties), never from a head at its floor. */
static void test_adakv(void **state)
{
    (void)state;
    const double alphas[3] = {0.2, 0.0, 1.0};
    for (int a = 0; a < 3; a++) {
        ap_policy_params params = params_of("h2o", 30, 2, 4);
        params.allocate = AP_ALLOC_ADAKV;
        params.alpha = alphas[a];
        ap_policy *p;
        ap_error err;
        if (ap_policy_create(&params, H, HD, &p, &err)) fail_msg("%s", err.msg);
        ref_sets r = {0};
        static float score[H][T];
        float rows[H * T], q[H * HD], k[H * HD];
        const int floor_n = (int)(params.alpha * params.budget);
        int spread = 0;
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < H; h++) row_of(r.kept[h], r.n[h], h, t, rows + h * T);
            qk_of(t, q, k);
            if (ap_policy_observe(p, t, rows, T, q, k, &err)) fail_msg("%s", err.msg);
            int total = 0;
            for (int h = 0; h < H; h++) {
                for (int i = 0; i < r.n[h]; i++) score[h][r.kept[h][i]] += rows[h * T + r.kept[h][i]];
                score[h][t] = rows[h * T + t];
                r.kept[h][r.n[h]++] = t;
                total += r.n[h];
            }
            while (total > H * params.budget) {
                int vh = -1, vi = -1;
                for (int h = 0; h < H; h++) {
                    if (r.n[h] <= floor_n) continue;
                    for (int i = 0; i < r.n[h]; i++) {
                        const int j = r.kept[h][i];
                        if (evictable(&params, j, t) && (vh < 0 || score[h][j] < score[vh][r.kept[vh][vi]]))
                            vh = h, vi = i;
                    }
                }
                assert_true(vh >= 0);
                remove_entry(&r, vh, vi);
                total--;
            }
            assert_same_sets(p, &r, t);
            for (int h = 0; h < H && t >= params.budget; h++) spread |= r.n[h] != params.budget;
        }
        ap_policy_free(p);
        print_message("adakv alpha %.1f: sets as the reference's; heads' sizes differ: %s\n", params.alpha,
                      spread ? "yes" : "no");
        assert_int_equal(spread, alphas[a] < 1); /* shared unevenly; a floor of the whole budget is uniform */
    }
    ap_policy_params params; /* a layer's one set has no heads to share among */
    ap_policy_params_default(&params, "h2o");
    params.allocate = AP_ALLOC_ADAKV;
    params.granularity = AP_GRAN_LAYER;
    ap_policy *p;
    ap_error err;
    assert_int_equal(ap_policy_create(&params, H, HD, &p, &err), AP_ERR_USAGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),       cmocka_unit_test(test_knorm),
        cmocka_unit_test(test_snapkv),         cmocka_unit_test(test_quest),
        cmocka_unit_test(test_pyramid_budgets), cmocka_unit_test(test_adakv),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
