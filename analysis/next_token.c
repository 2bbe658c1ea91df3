/* next_token.c — what a capped cache costs the model's prediction of the
 * next token (attnprobe eval, docs/eval.md): the policy's log-likelihood of
 * the token that follows, and how far its next-token distribution is from
 * the full cache's. Sums in double, softmax through log-sum-exp; the full
 * cache's distribution is prepared once for all the policies compared with
 * it (an exp a token, not one a token and policy). */
#include <math.h>

#include "analysis.h"

/* log Σ exp(x) over the vocabulary, and the index of the largest x. */
static double log_sum_exp(const float *x, int n, int *argmax)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)x[i] - x[best]);
    *argmax = best;
    return x[best] + log(sum);
}

void ap_next_ref_init(ap_next_ref *ref, const float *logits, int vocab, double *prob)
{
    ref->logits = logits;
    ref->vocab = vocab;
    ref->prob = prob;
    ref->log_z = log_sum_exp(logits, vocab, &ref->argmax);
    for (int i = 0; i < vocab; i++) prob[i] = exp(logits[i] - ref->log_z);
}

void ap_next_token_row(const ap_next_ref *ref, const float *logits, int next, double *out)
{
    for (int m = 0; m < AP_M_COUNT; m++) out[m] = NAN;
    const int V = ref->vocab, top_ref = ref->argmax;
    int top;
    const double z = log_sum_exp(logits, V, &top);
    double kl = 0;
    int rank = 0; /* tokens the policy prefers to the full cache's first */
    for (int i = 0; i < V; i++) {
        kl += ref->prob[i] * (((double)ref->logits[i] - ref->log_z) - ((double)logits[i] - z));
        rank += logits[i] > logits[top_ref] || (logits[i] == logits[top_ref] && i < top_ref);
    }
    out[AP_M_NLL] = z - logits[next];
    out[AP_M_NEXT_KL] = kl > 0 ? kl : 0.0; /* identical rows: exactly 0, not -1e-17 */
    out[AP_M_NEXT_TOP1] = top == top_ref;
    out[AP_M_ARGMAX_RANK] = rank;
}
