/* eval.c — a study's next-token side (attnprobe eval, docs/eval.md): the
 * cascade decodes every (sample, policy) stream with the policy's cache at
 * every layer; at each step every stream's next-token logits are compared
 * with the `full` stream's of the same sample (the model with its whole
 * cache), and the policy's log-likelihood of the token that follows is
 * taken. Streams are scored side by side on a worker pool; each writes only
 * its own (sample, policy) part. */
#include <string.h>

#include "study_internal.h"

typedef struct {
    study_acc *acc;
    const ap_trace *tr;
    const ap_logits_step *step;
    const int *ref_of; /* [n samples of the batch]: the active index of its full stream */
} eval_step;

static ap_status score_stream(void *ctx, int a, ap_error *err)
{
    const eval_step *e = ctx;
    const ap_logits_step *st = e->step;
    const int s = st->sample[a], t = st->t, T = e->tr->len[s];
    if (t < e->acc->cfg->warmup || t + 1 >= T) return AP_OK; /* no next token, or not measured */
    const int ref = e->ref_of[s];
    if (ref < 0) return ap_error_set(err, AP_ERR_RUNTIME, "eval: sample %d has no full-cache stream at step %d", s, t);
    double m[AP_M_COUNT];
    ap_next_token_row(st->logits + (size_t)ref * st->vocab, st->logits + (size_t)a * st->vocab, st->vocab,
                      e->tr->ids[s][t + 1], m);
    /* one run a policy (the config's one pseudo-layer), its values on head 0 */
    return study_acc_values(e->acc, s, st->policy[a], 0, m, err);
}

ap_status study_eval_step(void *ctx, const ap_logits_step *step, ap_error *err)
{
    study_eval *ev = ctx;
    for (int s = 0; s < ev->tr->n_samples; s++) ev->ref_of[s] = -1;
    for (int a = 0; a < step->n_active; a++)
        if (step->policy[a] == ev->full_policy) ev->ref_of[step->sample[a]] = a;
    eval_step e = {ev->acc, ev->tr, step, ev->ref_of};
    return ap_pool_run(ev->pool, step->n_active, score_stream, &e, err);
}
