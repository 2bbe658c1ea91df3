/* replay_isolated.c — one sample's isolated replay (docs/architecture.md):
 * only the probed layer's cache is capped, so that layer's inputs are exact
 * and the policy's row is the reference row restricted to the retained set
 * ∪ {t}, renormalised. No model needed; the study runs many of these side by
 * side, one per (sample, layer, policy). */
#include <stdlib.h>
#include <string.h>

#include "replay_internal.h"

ap_status ap_replay_isolated(const ap_trace *tr, int s, int li, const ap_policy_params *params,
                             const ap_replay_opts *opts, ap_replay_cost *cost, ap_error *err)
{
    const int H = tr->n_head, D = tr->head_dim;
    const int max_T = tr->len[s];
    /* Dense rows and masks over absolute positions for the measured steps,
     * kept zero outside the entries written last time. */
    float *rows = calloc((size_t)H * max_T, sizeof *rows);
    unsigned char *mask = calloc((size_t)H * max_T, 1);
    int *written = malloc((size_t)H * max_T * sizeof *written), *n_written = calloc((size_t)H, sizeof *n_written);
    float *qt = malloc((size_t)H * D * sizeof *qt), *kt = malloc((size_t)H * D * sizeof *kt);
    float *scale = malloc((size_t)H * sizeof *scale);
    ap_status st = AP_OK;
    memset(cost, 0, sizeof *cost);
    if (!rows || !qt || !kt || !mask || !written || !n_written || !scale) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory for replay");
        goto done;
    }
    const double t0 = replay_now_s();
    {
        const int T = tr->len[s];
        const size_t i = (size_t)s * tr->n_layers + li;
        const float *attn = tr->attn[i], *q = tr->q[i], *k = tr->k[i], *v = tr->v[i], *o = tr->o[i];
        ap_policy *pol;
        replay_quant rq = {0}; /* --quant: the cache's keys and values as held quantised */
        if (params->quant.bits && (st = replay_quant_open(&rq, &params->quant, k, v, H, T, D, err))) goto done;
        ap_policy_params at_layer; /* the layer's budget (docs/policies.md, "Budget allocation") */
        ap_policy_params_at_layer(params, tr->layers[li], tr->model_n_layer, &at_layer);
        if ((st = ap_policy_create(&at_layer, H, D, &pol, err))) {
            replay_quant_close(&rq);
            goto done;
        }
        for (int t = 0; t < T && !st; t++) {
            for (int h = 0; h < H; h++) {
                memcpy(qt + (size_t)h * D, q + ((size_t)h * T + t) * D, (size_t)D * sizeof *qt);
                memcpy(kt + (size_t)h * D, k + ((size_t)h * T + t) * D, (size_t)D * sizeof *kt);
            }
            if ((st = ap_policy_select(pol, t, qt, err))) break; /* quest: the set query t attends to */
            /* The policy reads only the retained positions and t, so it is
             * given the reference rows in place, each scaled by 1 / the mass
             * it retains. Dense policy rows are built only for the steps whose
             * metrics are computed. */
            const int emit = opts->sink && replay_measured(opts, t);
            for (int h = 0; h < H; h++) {
                const float *p = attn + ((size_t)h * T + t) * T;
                int n;
                const int *kept = ap_policy_kept(pol, ap_policy_set_of(pol, h), &n);
                double mass = p[t];
                if (n < t)
                    for (int x = 0; x < n; x++) mass += p[kept[x]];
                scale[h] = n == t || !(mass > 0) ? 1.0f : (float)(1.0 / mass);
                if (!emit) continue;
                /* reference row p; policy row = p on kept ∪ {t}, renormalised */
                float *row = rows + (size_t)h * max_T;
                unsigned char *m = mask + (size_t)h * max_T;
                int *w = written + (size_t)h * max_T;
                for (int x = 0; x < n_written[h]; x++) row[w[x]] = 0.0f, m[w[x]] = 0;
                const float *q_row = p;
                if (n == t) { /* nothing evicted: the reference row itself */
                    memset(m, 1, (size_t)t + 1);
                    for (int j = 0; j <= t; j++) w[j] = j;
                    n_written[h] = t + 1;
                } else {
                    memcpy(w, kept, (size_t)n * sizeof *w);
                    w[n] = t;
                    n_written[h] = n + 1;
                    for (int x = 0; x <= n; x++) {
                        row[w[x]] = mass > 0 ? (float)(p[w[x]] / mass) : 0.0f;
                        m[w[x]] = 1;
                    }
                    q_row = row;
                }
                const float *values = v + (size_t)h * T * D;
                if (rq.quant.bits) { /* the row and output the quantised cache gives */
                    values = replay_quant_row(&rq, h, t, qt + (size_t)h * D, k, v, w, n_written[h], row);
                    q_row = row;
                }
                ap_row_event ev = {0, s, tr->layers[li], h, t, t + 1, p, q_row, m, values,
                                   o + ((size_t)h * T + t) * D, D};
                if ((st = opts->sink(opts->sink_ctx, &ev, err))) break;
            }
            if (!st)
                st = ap_policy_observe_scaled(pol, t, attn + (size_t)t * T, (size_t)T * T, scale, qt,
                                              kt, err);
        }
        double kv = replay_kv_bytes(pol, H, D), sk = (double)ap_policy_state_bytes(pol);
        cost->kv_bytes = kv > cost->kv_bytes ? kv : cost->kv_bytes;
        if (rq.quant.bits) /* the cache as quantised after the last step */
            for (int h = 0; h < H; h++) {
                int n;
                const int *kept = ap_policy_kept(pol, ap_policy_set_of(pol, h), &n);
                cost->kv_quant_bytes += ap_quant_bytes(&rq.quant, kept, n, T - 1, D);
            }
        replay_quant_close(&rq);
        cost->sketch_bytes = sk > cost->sketch_bytes ? sk : cost->sketch_bytes;
        ap_policy_free(pol);
    }
    cost->seconds = replay_now_s() - t0;
done:
    free(rows);
    free(mask);
    free(written);
    free(n_written);
    free(qt);
    free(kt);
    free(scale);
    return st;
}

