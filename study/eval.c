/* eval.c — a study's next-token side (attnprobe eval, docs/eval.md): the
 * cascade decodes every (sample, policy) stream with the policy's cache at
 * every layer; at each step every stream's next-token logits are compared
 * with the `full` stream's of the same sample (the model with its whole
 * cache), and the policy's log-likelihood of the token that follows is
 * taken. Each sample's reference is prepared once a step, then the streams
 * are scored side by side on a worker pool; each writes only its own
 * (sample, policy) part. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "study_internal.h"

typedef struct {
    study_eval *ev;
    const ap_logits_step *step;
} eval_step;

static int measured(const study_eval *ev, int s, int t)
{
    return t >= ev->acc->cfg->warmup && t + 1 < ev->tr->len[s]; /* measured, with a next token */
}

static ap_status prepare_ref(void *ctx, int s, ap_error *err)
{
    (void)err;
    const eval_step *e = ctx;
    const int a = e->ev->ref_of[s], V = e->step->vocab;
    if (a >= 0 && measured(e->ev, s, e->step->t))
        ap_next_ref_init(&e->ev->refs[s], e->step->logits + (size_t)a * V, V, e->ev->prob + (size_t)s * V);
    return AP_OK;
}

static ap_status score_stream(void *ctx, int a, ap_error *err)
{
    const eval_step *e = ctx;
    const ap_logits_step *st = e->step;
    const int s = st->sample[a], t = st->t;
    if (!measured(e->ev, s, t)) return AP_OK;
    if (e->ev->ref_of[s] < 0)
        return ap_error_set(err, AP_ERR_RUNTIME, "eval: sample %d has no full-cache stream at step %d", s, t);
    double m[AP_M_COUNT];
    ap_next_token_row(&e->ev->refs[s], st->logits + (size_t)a * st->vocab, e->ev->tr->ids[s][t + 1], m);
    /* one run a policy (the config's one pseudo-layer), its values on head 0 */
    return study_acc_values(e->ev->acc, s, st->policy[a], 0, m, err);
}

ap_status study_eval_step(void *ctx, const ap_logits_step *step, ap_error *err)
{
    study_eval *ev = ctx;
    const int S = ev->tr->n_samples;
    if (!ev->prob) { /* the references and their probabilities: a vocabulary a sample */
        ev->prob = malloc((size_t)S * step->vocab * sizeof *ev->prob);
        ev->refs = calloc((size_t)S, sizeof *ev->refs);
        ev->ref_of = malloc((size_t)S * sizeof *ev->ref_of);
        if (!ev->prob || !ev->refs || !ev->ref_of)
            return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for eval's references");
    }
    for (int s = 0; s < S; s++) ev->ref_of[s] = -1;
    for (int a = 0; a < step->n_active; a++)
        if (step->policy[a] == ev->full_policy) ev->ref_of[step->sample[a]] = a;
    eval_step e = {ev, step};
    ap_status st = ap_pool_run(ev->pool, S, prepare_ref, &e, err);
    return st ? st : ap_pool_run(ev->pool, step->n_active, score_stream, &e, err);
}

ap_status study_eval_values(void *ctx, int sample, int policy, int t, const double values[4], ap_error *err)
{
    study_eval *ev = ctx;
    if (!measured(ev, sample, t)) return AP_OK;
    double m[AP_M_COUNT];
    for (int i = 0; i < AP_M_COUNT; i++) m[i] = NAN;
    m[AP_M_NLL] = values[0], m[AP_M_NEXT_KL] = values[1], m[AP_M_NEXT_TOP1] = values[2];
    m[AP_M_ARGMAX_RANK] = values[3];
    return study_acc_values(ev->acc, sample, policy, 0, m, err);
}

void study_eval_free(study_eval *ev)
{
    free(ev->prob);
    free(ev->refs);
    free(ev->ref_of);
    ev->prob = NULL, ev->refs = NULL, ev->ref_of = NULL;
}
