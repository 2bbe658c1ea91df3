/* replay_quant.c — the isolated replay's policy row under a quantised cache
 * (--quant, docs/policies.md): query t's logits over the attended positions
 * recomputed from the trace's q and the keys as the quantised cache holds
 * them, softmax; the output from the values as it holds them. Positions in
 * the residual window keep their exact keys and values. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "replay_internal.h"

ap_status replay_quant_open(replay_quant *rq, const ap_quant *qz, const float *k, const float *v, int H, int T,
                            int D, ap_error *err)
{
    memset(rq, 0, sizeof *rq);
    rq->quant = *qz;
    const size_t n = (size_t)H * T * D;
    rq->k_hat = malloc(n * sizeof *rq->k_hat);
    rq->v_hat = malloc(n * sizeof *rq->v_hat);
    rq->v_row = malloc(n * sizeof *rq->v_row);
    if (!rq->k_hat || !rq->v_hat || !rq->v_row) {
        replay_quant_close(rq);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for the quantised cache");
    }
    for (int h = 0; h < H; h++) {
        const size_t at = (size_t)h * T * D;
        ap_quant_keys(qz, k + at, T, D, rq->k_hat + at);
        ap_quant_values(qz, v + at, T, D, rq->v_hat + at);
    }
    rq->T = T, rq->D = D;
    return AP_OK;
}

void replay_quant_close(replay_quant *rq)
{
    free(rq->k_hat), free(rq->v_hat), free(rq->v_row);
    memset(rq, 0, sizeof *rq);
}

/* row[w[x]] for x < n_w: softmax over w of q_t · key_j / sqrt(D) (GPT-2's
 * scaling), each key as held at step t; returns head h's values as held,
 * valid at the rows w names. */
const float *replay_quant_row(replay_quant *rq, int h, int t, const float *q_t, const float *k, const float *v,
                              const int *w, int n_w, float *row)
{
    const int T = rq->T, D = rq->D;
    const size_t at = (size_t)h * T * D;
    const double inv_sqrt_d = 1.0 / sqrt((double)D);
    double top = -INFINITY, sum = 0;
    for (int x = 0; x < n_w; x++) {
        const int j = w[x];
        const float *key = (ap_quant_key_held(&rq->quant, j, t) ? rq->k_hat : k) + at + (size_t)j * D;
        double dot = 0;
        for (int d = 0; d < D; d++) dot += (double)q_t[d] * key[d];
        row[j] = (float)(dot * inv_sqrt_d);
        top = row[j] > top ? row[j] : top;
        const float *val = (ap_quant_value_held(&rq->quant, j, t) ? rq->v_hat : v) + at + (size_t)j * D;
        memcpy(rq->v_row + at + (size_t)j * D, val, (size_t)D * sizeof *val);
    }
    for (int x = 0; x < n_w; x++) sum += exp((double)row[w[x]] - top);
    for (int x = 0; x < n_w; x++) row[w[x]] = (float)(exp((double)row[w[x]] - top) / sum);
    return rq->v_row + at;
}
