/* quest.c — Quest (Tang et al., "Quest: Query-Aware Sparsity for Efficient
 * Long-Context LLM Inference", ICML 2024): the cache is cut into pages of
 * `page` consecutive positions, each summarised by the channel-wise minimum
 * and maximum of its keys. A query's dot product with any key of a page is
 * at most Σ_d max(q_d·min_d, q_d·max_d); each query attends to the pages of
 * highest bound that fit in the budget (beside the protected sink and recent
 * positions). Nothing is evicted for good: the next query chooses again from
 * every page, so its fidelity shows selection against eviction — and its
 * memory is the whole cache (it saves reads, not space). */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "method.h"

enum { PAGE = 0 };

typedef struct {
    int page, head_dim, n_pages, cap, failed;
    float *lo, *hi; /* [cap][head_dim]: each page's channel-wise min and max key */
    struct page_bound {
        double bound;
        int page;
    } *order;       /* [cap] scratch for select */
    unsigned char *chosen; /* [cap] scratch for select */
} quest;

static ap_status init(void **state, const ap_policy_params *p, int head_dim, uint64_t seed, ap_error *err)
{
    (void)seed;
    quest *s = calloc(1, sizeof *s);
    if (!s) return ap_error_set(err, AP_ERR_RUNTIME, "quest policy: out of memory");
    s->page = p->value[PAGE];
    s->head_dim = head_dim;
    *state = s;
    return AP_OK;
}

static void free_state(void *state)
{
    quest *s = state;
    free(s->lo), free(s->hi), free(s->order), free(s->chosen), free(s);
}

static size_t bytes(const void *state)
{
    const quest *s = state;
    return (size_t)s->n_pages * s->head_dim * 2 * sizeof(float);
}

static int grow(quest *s)
{
    const int cap = s->cap ? s->cap * 2 : 64;
    float *lo = realloc(s->lo, (size_t)cap * s->head_dim * sizeof *lo);
    if (lo) s->lo = lo;
    float *hi = lo ? realloc(s->hi, (size_t)cap * s->head_dim * sizeof *hi) : NULL;
    if (hi) s->hi = hi;
    struct page_bound *order = hi ? realloc(s->order, (size_t)cap * sizeof *order) : NULL;
    if (order) s->order = order;
    unsigned char *chosen = order ? realloc(s->chosen, (size_t)cap) : NULL;
    if (!chosen) return -1;
    s->chosen = chosen;
    s->cap = cap;
    return 0;
}

/* Position t's key joins its page's bounds. */
static void observe(void *state, const ap_step *step, const int *kept, ap_slot_word *slot, int n,
                    ap_slot_word *new_slot)
{
    (void)kept, (void)slot, (void)n, (void)new_slot;
    quest *s = state;
    const int g = step->t / s->page, D = s->head_dim;
    if (g >= s->cap && grow(s)) {
        s->failed = 1;
        return;
    }
    float *lo = s->lo + (size_t)g * D, *hi = s->hi + (size_t)g * D;
    if (step->t % s->page == 0) {
        memcpy(lo, step->k, (size_t)D * sizeof *lo);
        memcpy(hi, step->k, (size_t)D * sizeof *hi);
        s->n_pages = g + 1;
        return;
    }
    for (int d = 0; d < D; d++) {
        lo[d] = step->k[d] < lo[d] ? step->k[d] : lo[d];
        hi[d] = step->k[d] > hi[d] ? step->k[d] : hi[d];
    }
}

static int by_bound(const void *a, const void *b)
{
    const struct page_bound *x = a, *y = b;
    if (x->bound != y->bound) return x->bound > y->bound ? -1 : 1;
    return (x->page > y->page) - (x->page < y->page); /* the older page first */
}

static int is_protected(const ap_policy_params *p, int j, int t) { return j < p->sink || j > t - p->recent; }

/* The pages' bounds summed over the set's heads; the highest pages whose
 * unprotected positions still fit, in that order (a page that does not fit
 * is passed over for smaller ones). */
static int select_set(void *const *states, const ap_step *steps, int n_heads, const ap_policy_params *p, int t,
                      int *out)
{
    quest *s = states[0];
    for (int h = 0; h < n_heads; h++)
        if (((quest *)states[h])->failed) return -1;
    if (t <= p->budget) {
        for (int j = 0; j < t; j++) out[j] = j;
        return t;
    }
    const int P = s->page, n_pages = (t - 1) / P + 1, D = s->head_dim;
    if (n_pages < 1 || n_pages > s->cap) return -1; /* observe grew the pages up to t - 1 */
    int room = p->budget;
    for (int j = 0; j < t; j++) room -= is_protected(p, j, t);
    for (int g = 0; g < n_pages; g++) {
        double bound = 0;
        for (int h = 0; h < n_heads; h++) {
            const quest *sh = states[h];
            const float *lo = sh->lo + (size_t)g * D, *hi = sh->hi + (size_t)g * D, *q = steps[h].q;
            for (int d = 0; d < D; d++) {
                const double a = (double)q[d] * lo[d], b = (double)q[d] * hi[d];
                bound += a > b ? a : b;
            }
        }
        s->order[g] = (struct page_bound){bound, g};
    }
    qsort(s->order, (size_t)n_pages, sizeof *s->order, by_bound);
    memset(s->chosen, 0, (size_t)n_pages);
    for (int r = 0; r < n_pages; r++) {
        const int g = s->order[r].page, end = (g + 1) * P < t ? (g + 1) * P : t;
        int free_here = 0;
        for (int j = g * P; j < end; j++) free_here += !is_protected(p, j, t);
        if (free_here > 0 && free_here <= room) {
            room -= free_here;
            s->chosen[g] = 1;
        }
    }
    int n = 0;
    for (int j = 0; j < t; j++)
        if (s->chosen[j / P] || is_protected(p, j, t)) out[n++] = j;
    return n;
}

const ap_policy_method ap_method_quest = {
    .info = {.name = "quest", .summary = "each query attends to the pages of highest key bound (no eviction)",
             .paper = "Tang et al., Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference, ICML 2024",
             .params = {{"page", 16, 1, 4096, "positions a page"}}, .protects = 1, .needs_qk = 1,
             .scored = 1, .selects = 1},
    .init = init, .free = free_state, .state_bytes = bytes, .observe = observe, .select = select_set,
};
