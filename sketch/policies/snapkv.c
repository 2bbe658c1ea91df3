/* snapkv.c — SnapKV (Li et al., "SnapKV: LLM Knows What You are Looking for
 * Before Generation", 2024): a position's score is the attention it received
 * from the last `window` queries, pooled over its neighbours with a kernel of
 * `kernel` positions (average, as the paper's code, or max), so that the
 * tokens around an important one stay with it. SnapKV compresses the prompt
 * once; here it is applied at every step (eviction during decoding, as the
 * other policies). Neighbours are the adjacent retained positions; the pool
 * is zero-padded at both ends (PyTorch's avg_pool1d with padding). */
#include <stdlib.h>

#include "method.h"

enum { WINDOW = 0, KERNEL = 1, MAX_POOL = 2 };

typedef struct {
    int window, kernel, max_pool;
} snapkv;

static ap_status init(void **state, const ap_policy_params *p, int head_dim, uint64_t seed, ap_error *err)
{
    (void)head_dim, (void)seed;
    if (p->value[KERNEL] % 2 == 0)
        return ap_error_set(err, AP_ERR_USAGE, "policy snapkv: kernel %d must be odd (a window centred on "
                            "the position)", p->value[KERNEL]);
    snapkv *s = malloc(sizeof *s);
    if (!s) return ap_error_set(err, AP_ERR_RUNTIME, "snapkv policy: out of memory");
    *s = (snapkv){p->value[WINDOW], p->value[KERNEL], p->value[MAX_POOL]};
    *state = s;
    return AP_OK;
}

static void free_state(void *state) { free(state); }
static size_t bytes(const void *state) { return sizeof(snapkv) * (state != NULL); }

/* A ring of the last `window` attentions each retained position received:
 * entry t % window holds query t's. */
static int slots(const ap_policy_params *p) { return p->value[WINDOW]; }

static void observe(void *state, const ap_step *step, const int *kept, ap_slot_word *slot, int n,
                    ap_slot_word *new_slot)
{
    const snapkv *s = state;
    const int w = s->window, at = step->t % w;
    for (int i = 0; i < n; i++) slot[(size_t)i * w + at].f = ap_step_attn(step, kept[i]);
    for (int j = 0; j < w; j++) new_slot[j].f = 0.0f;
    new_slot[at].f = ap_step_attn(step, step->t);
}

/* Each position's window sum (in ring order, in double), then pooled in
 * place: prev keeps the sums of the `half` positions before i, which out
 * no longer holds. */
static void score_all(void *state, const ap_step *step, const int *kept, const ap_slot_word *slot, int n,
                      double *out)
{
    (void)step, (void)kept;
    const snapkv *s = state;
    const int w = s->window, half = s->kernel / 2, ring = half + 1;
    for (int i = 0; i < n; i++) {
        double a = 0;
        for (int j = 0; j < w; j++) a += slot[(size_t)i * w + j].f;
        out[i] = a;
    }
    double prev[32];
    for (int i = 0; i < n; i++) {
        const double mine = out[i];
        double pooled = s->max_pool ? mine : 0;
        for (int x = i - half; x <= i + half; x++) {
            if (x < 0 || x >= n) continue; /* zero padding: adds nothing, and sums are >= 0 for max */
            const double v = x < i ? prev[x % ring] : x == i ? mine : out[x];
            if (s->max_pool) pooled = v > pooled ? v : pooled;
            else pooled += v;
        }
        prev[i % ring] = mine;
        out[i] = s->max_pool ? pooled : pooled / s->kernel;
    }
}

const ap_policy_method ap_method_snapkv = {
    .info = {.name = "snapkv", .summary = "attention from the last window queries, pooled over neighbours",
             .paper = "Li et al., SnapKV: LLM Knows What You are Looking for Before Generation, 2024",
             .params = {{"window", 32, 1, 1024, "queries whose attention scores a position"},
                        {"kernel", 5, 1, 63, "positions pooled around each (odd)"},
                        {"max_pool", 0, 0, 1, "1 pools by the maximum, 0 by the average"}},
             .protects = 1, .scored = 1, .on_device = 1},
    .slot_words = slots, .init = init, .free = free_state, .state_bytes = bytes, .observe = observe,
    .score_all = score_all,
};
