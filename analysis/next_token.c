/* next_token.c — what a capped cache costs the model's prediction of the
 * next token (attnprobe eval, docs/eval.md): the policy's log-likelihood of
 * the token that follows, and how far its next-token distribution is from
 * the full cache's. Sums in double, softmax through log-sum-exp. */
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

void ap_next_token_row(const float *ref, const float *logits, int vocab, int next, double *out)
{
    for (int m = 0; m < AP_M_COUNT; m++) out[m] = NAN;
    int top_ref, top;
    const double z_ref = log_sum_exp(ref, vocab, &top_ref), z = log_sum_exp(logits, vocab, &top);
    double kl = 0;
    for (int i = 0; i < vocab; i++) {
        const double lr = ref[i] - z_ref, lp = logits[i] - z;
        kl += exp(lr) * (lr - lp);
    }
    int rank = 0; /* tokens the policy prefers to the full cache's first */
    for (int i = 0; i < vocab; i++) rank += logits[i] > logits[top_ref] || (logits[i] == logits[top_ref] && i < top_ref);
    out[AP_M_NLL] = z - logits[next];
    out[AP_M_NEXT_KL] = kl > 0 ? kl : 0.0; /* identical rows: exactly 0, not -1e-17 */
    out[AP_M_NEXT_TOP1] = top == top_ref;
    out[AP_M_ARGMAX_RANK] = rank;
}
