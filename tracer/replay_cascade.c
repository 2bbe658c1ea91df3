/* replay_cascade.c — the cascade replay on the host (docs/architecture.md):
 * every layer's cache is capped; the model decodes token by token, all
 * (sample, policy) streams batched in one decode step per position, and the
 * streams' policies observe each step side by side on a worker pool. */
#include <stdlib.h>
#include <string.h>

#include "../common/pool.h"
#include "replay_internal.h"

/* mask[0..t] = 1 on the set's retained positions and on t; returns their count. */
static int retained_mask(const ap_policy *pol, int set, int t, unsigned char *mask)
{
    int n;
    const int *kept = ap_policy_kept(pol, set, &n);
    memset(mask, 0, (size_t)t + 1);
    for (int i = 0; i < n; i++) mask[kept[i]] = 1;
    mask[t] = 1;
    return n + 1;
}

/* ---- cascade -------------------------------------------------------------- */

typedef struct {
    int sample, policy;
    ap_stream *stream;
    ap_policy **layer_policy; /* [n_layer] */
} cascade_stream;

static void free_streams(cascade_stream *cs, int n, int n_layer)
{
    for (int i = 0; cs && i < n; i++) {
        ap_stream_free(cs[i].stream);
        for (int l = 0; cs[i].layer_policy && l < n_layer; l++) ap_policy_free(cs[i].layer_policy[l]);
        free(cs[i].layer_policy);
    }
    free(cs);
}

/* One decode step's policy updates: item = (active stream, layer), so that
 * the policies' different costs spread evenly over the pool. */
typedef struct {
    cascade_stream *cs;
    const int *active_idx;
    int L, H, D, ctx, t;
    float **attn, **q, **k;
} observe_step;

static ap_status observe_item(void *ctx, int item, ap_error *err)
{
    const observe_step *job = ctx;
    const int a = item / job->L, l = item % job->L;
    cascade_stream *str = &job->cs[job->active_idx[a]];
    const size_t row_base = (size_t)a * job->H * job->ctx, qk = (size_t)a * job->H * job->D;
    return ap_policy_observe(str->layer_policy[l], job->t, job->attn[l] + row_base, (size_t)job->ctx,
                             job->q[l] + qk, job->k[l] + qk, err);
}

ap_status ap_replay_cascade(ap_engine *engine, const ap_trace *tr, const ap_policy_params *params,
                            int n_policies, const ap_replay_opts *opts, ap_replay_cost *cost,
                            ap_error *err)
{
    const ap_config *c = ap_engine_config(engine);
    const int H = tr->n_head, D = tr->head_dim, L = c->n_layer, ctx = c->n_ctx;
    if (H != c->n_head || D != c->n_embd / c->n_head)
        return ap_error_set(err, AP_ERR_INPUT, "the trace has %d heads of %d, the model %d of %d",
                            H, D, c->n_head, c->n_embd / c->n_head);
#ifdef AP_HAVE_CUDA
    int on_device = 1;
    for (int p = 0; p < n_policies; p++) on_device &= ap_policy_params_on_device(&params[p]);
    /* eval's logits stay on the device when its next_sink takes the metrics */
    const int logits_on_device = !opts->logits_sink || opts->next_sink;
    if (ap_engine_backend(engine) == AP_BACKEND_CUDA && !opts->host_policies && logits_on_device && on_device)
        return ap_replay_cascade_gpu(engine, tr, params, n_policies, opts, cost, err);
#endif
    for (int p = 0; p < n_policies; p++) {
        const ap_policy_info *info = ap_policy_find(params[p].name);
        if (info && info->selects)
            return ap_error_set(err, AP_ERR_USAGE, "policy %s chooses its set from each query, which the cascade's "
                                "decode step computes after the sets are given (accepted: --mode isolated)",
                                params[p].name);
    }
    const int n_streams = tr->n_samples * n_policies;
    int max_T = 0;
    for (int s = 0; s < tr->n_samples; s++) max_T = tr->len[s] > max_T ? tr->len[s] : max_T;
    ap_status st = AP_OK;
    cascade_stream *cs = calloc((size_t)n_streams, sizeof *cs);
    int *layers = malloc((size_t)L * sizeof *layers);
    float **attn = calloc((size_t)L, sizeof *attn), **q = calloc((size_t)L, sizeof *q),
          **k = calloc((size_t)L, sizeof *k);
    ap_stream **active = malloc((size_t)n_streams * sizeof *active);
    int *active_idx = malloc((size_t)n_streams * sizeof *active_idx);
    int *tokens = malloc((size_t)n_streams * sizeof *tokens);
    const int **kept_flat = malloc((size_t)n_streams * L * H * sizeof *kept_flat);
    int *n_kept_flat = malloc((size_t)n_streams * L * H * sizeof *n_kept_flat);
    const int *const **kept = malloc((size_t)n_streams * sizeof *kept);
    const int **n_kept = malloc((size_t)n_streams * sizeof *n_kept);
    unsigned char *mask = malloc((size_t)max_T);
    /* eval: the step's next-token logits, and whose they are */
    const int V = c->vocab_size;
    float *logits = opts->logits_sink ? malloc((size_t)n_streams * V * sizeof *logits) : NULL;
    int *of_sample = malloc((size_t)n_streams * sizeof *of_sample), *of_policy = malloc((size_t)n_streams * sizeof *of_policy);
    memset(cost, 0, (size_t)n_policies * sizeof *cost);
    if (!cs || !layers || !attn || !q || !k || !active || !active_idx || !tokens || !kept_flat ||
        !n_kept_flat || !kept || !n_kept || !mask || (opts->logits_sink && !logits) || !of_sample || !of_policy) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory for cascade replay");
        goto done;
    }
    for (int l = 0; l < L; l++) {
        layers[l] = l;
        attn[l] = malloc((size_t)n_streams * H * ctx * sizeof(float));
        q[l] = malloc((size_t)n_streams * H * D * sizeof(float));
        k[l] = malloc((size_t)n_streams * H * D * sizeof(float));
        if (!attn[l] || !q[l] || !k[l]) {
            st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory for cascade replay");
            goto done;
        }
    }
    for (int s = 0; s < tr->n_samples; s++)
        for (int p = 0; p < n_policies; p++) {
            cascade_stream *str = &cs[s * n_policies + p];
            str->sample = s;
            str->policy = p;
            if ((st = ap_stream_create(engine, tr->len[s], &str->stream, err))) goto done;
            if (!(str->layer_policy = calloc((size_t)L, sizeof *str->layer_policy))) {
                st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
                goto done;
            }
            for (int l = 0; l < L; l++) {
                ap_policy_params at_layer; /* the layer's budget (docs/policies.md, "Budget allocation") */
                ap_policy_params_at_layer(&params[p], l, L, &at_layer);
                if ((st = ap_policy_create(&at_layer, H, D, &str->layer_policy[l], err))) goto done;
            }
        }
    ap_pool *pool = NULL;
    if ((st = ap_pool_create(0, &pool, err))) goto done;
    const double t0 = replay_now_s();
    double decode_s = 0, observe_s = 0;
    for (int t = 0; t < max_T && !st; t++) {
        int n_active = 0;
        for (int i = 0; i < n_streams; i++) {
            cascade_stream *str = &cs[i];
            if (t >= tr->len[str->sample]) continue;
            const int a = n_active++;
            active[a] = str->stream;
            active_idx[a] = i;
            tokens[a] = tr->ids[str->sample][t];
            for (int l = 0; l < L; l++)
                for (int h = 0; h < H; h++) {
                    const ap_policy *pol = str->layer_policy[l];
                    const size_t f = ((size_t)a * L + l) * H + h;
                    kept_flat[f] = ap_policy_kept(pol, ap_policy_set_of(pol, h), &n_kept_flat[f]);
                }
            kept[a] = &kept_flat[(size_t)a * L * H];
            n_kept[a] = &n_kept_flat[(size_t)a * L * H];
            of_sample[a] = str->sample, of_policy[a] = str->policy;
        }
        ap_decode_batch b = {n_active, active, tokens, kept, n_kept};
        ap_capture cap = {.n_capture = L, .layers = layers, .attn = attn, .q = q, .k = k, .logits = logits};
        const double t_decode = replay_now_s();
        if ((st = ap_engine_decode_step(engine, &b, &cap, err))) break;
        decode_s += replay_now_s() - t_decode;
        if (opts->logits_sink) {
            const ap_logits_step step = {t, n_active, V, of_sample, of_policy, logits};
            if ((st = opts->logits_sink(opts->logits_ctx, &step, err))) break;
        }
        /* Emit the probed layers' rows (before the policies see step t, so
         * the masks are the sets the step attended to), one thread... */
        for (int a = 0; a < n_active && !st && opts->sink && replay_measured(opts, t); a++) {
            cascade_stream *str = &cs[active_idx[a]];
            const int T = tr->len[str->sample];
            for (int li = 0; li < tr->n_layers && !st; li++) {
                const int l = tr->layers[li];
                const ap_policy *pol = str->layer_policy[l];
                const float *rows = attn[l] + (size_t)a * H * ctx;
                const size_t ti = (size_t)str->sample * tr->n_layers + li;
                for (int h = 0; h < H && !st; h++) {
                    retained_mask(pol, ap_policy_set_of(pol, h), t, mask);
                    ap_row_event ev = {str->policy, str->sample, l, h, t, t + 1,
                                       tr->attn[ti] + ((size_t)h * T + t) * T, rows + (size_t)h * ctx,
                                       mask, tr->v[ti] + (size_t)h * T * D,
                                       tr->o[ti] + ((size_t)h * T + t) * D, D};
                    st = opts->sink(opts->sink_ctx, &ev, err);
                }
            }
        }
        /* ...then every stream's policies observe the step, streams in parallel
         * (each stream's policies are its own). */
        if (!st) {
            observe_step job = {cs, active_idx, L, H, D, ctx, t, attn, q, k};
            const double t_observe = replay_now_s();
            st = ap_pool_run(pool, n_active * L, observe_item, &job, err);
            observe_s += replay_now_s() - t_observe;
        }
        if (opts->progress) opts->progress(opts->progress_ctx, "cascade", (double)(t + 1) / max_T);
    }
    const double dt = replay_now_s() - t0;
    ap_pool_free(pool);
    for (int i = 0; i < n_streams && !st; i++) {
        ap_replay_cost *pc = &cost[cs[i].policy];
        double kv = 0, sk = 0;
        for (int l = 0; l < L; l++) {
            kv += replay_kv_bytes(cs[i].layer_policy[l], H, D);
            sk += (double)ap_policy_state_bytes(cs[i].layer_policy[l]);
        }
        pc->kv_bytes = kv > pc->kv_bytes ? kv : pc->kv_bytes;
        pc->sketch_bytes = sk > pc->sketch_bytes ? sk : pc->sketch_bytes;
        pc->seconds = dt; /* the streams decode together */
        pc->decode_seconds = decode_s;
        pc->observe_seconds = observe_s;
    }
done:
    free_streams(cs, n_streams, L);
    for (int l = 0; l < L; l++) {
        if (attn) free(attn[l]);
        if (q) free(q[l]);
        if (k) free(k[l]);
    }
    free(layers), free(attn), free(q), free(k), free(active), free(active_idx), free(tokens);
    free(kept_flat), free(n_kept_flat), free(kept), free(n_kept), free(mask);
    free(logits), free(of_sample), free(of_policy);
    return st;
}
