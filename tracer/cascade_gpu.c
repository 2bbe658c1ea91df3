/* cascade_gpu.c — the cascade replay with the policies on the device.
 *
 * The retained sets, the sketches and the decode step's rows, queries and keys
 * stay on the GPU (sketch/policy_gpu.h), and the policies' updates run at the
 * end of each decode step, in the same recorded launch. Per step
 * the host sends the tokens and reads back only the rows it emits (the
 * trace's layers at measured steps). Same streams, order and results as the
 * host cascade in replay.c. */
#include <stdlib.h>
#include <string.h>

#include "../common/pool.h"
#include "../engine/engine_device.h"
#include "../sketch/policy_gpu.h"
#include "replay_internal.h"

typedef struct {
    int n_streams, L, H, D;
    int n_decoded; /* streams that are decoded: the others keep everything */
    int *param_of, *len_of, *sample_of; /* [n_streams] */
    ap_stream **streams;                /* [n_streams] */
    ap_stream **active;                 /* [n_streams]: this step's */
    int *active_id, *tokens, *list_base;
    int *cnt;                           /* [n_streams * L * H] */
    int max_T;
    float *dense;                       /* [n_streams * max_T]: each stream's row scratch */
    unsigned char *mask;                /* [n_streams * max_T] */
    ap_pool *pool;                      /* emits the streams' rows side by side */
} cascade_state;

static void state_free(cascade_state *s)
{
    for (int i = 0; s->streams && i < s->n_streams; i++) ap_stream_free(s->streams[i]);
    free(s->param_of), free(s->len_of), free(s->sample_of), free(s->streams), free(s->active);
    free(s->active_id), free(s->tokens), free(s->list_base), free(s->cnt);
    free(s->dense), free(s->mask);
    ap_pool_free(s->pool);
}

/* One measured step's emission, shared by the pool's threads. */
typedef struct {
    cascade_state *s;
    ap_policy_gpu *g;
    const ap_trace *tr;
    int n_policies, t;
    const ap_replay_opts *opts;
} emit_job;

/* Emits stream id's rows at the trace's layers: from the set the step
 * attended to (kept by the policies before they observed it, fetched after
 * step t was queued) — the row over 0..t from the compact one, the mask from
 * the retained positions — or, for a stream that keeps everything, the
 * reference row itself. Streams run side by side: each has its scratch, and
 * the sink takes rows of different streams at once. */
static ap_status emit_stream(void *ctx, int id, ap_error *err)
{
    const emit_job *j = ctx;
    cascade_state *s = j->s;
    const ap_trace *tr = j->tr;
    const int t = j->t, sample = s->sample_of[id], T = tr->len[sample];
    if (t >= T) return AP_OK;
    float *dense = s->dense + (size_t)id * s->max_T;
    unsigned char *mask = s->mask + (size_t)id * s->max_T;
    const int keeps_all = ap_policy_gpu_keeps_all(j->g, id);
    ap_status st = AP_OK;
    for (int li = 0; li < tr->n_layers && !st; li++) {
        const int l = tr->layers[li];
        const size_t ti = (size_t)sample * tr->n_layers + li;
        for (int h = 0; h < s->H && !st; h++) {
            const float *ref = tr->attn[ti] + ((size_t)h * T + t) * T, *q_row = ref;
            if (keeps_all)
                memset(mask, 1, (size_t)t + 1);
            else {
                const int *pos;
                const float *row;
                const int n = ap_policy_gpu_kept(j->g, id, li, h, &pos, &row);
                memset(dense, 0, (size_t)(t + 1) * sizeof *dense);
                memset(mask, 0, (size_t)t + 1);
                for (int x = 0; x < n; x++) dense[pos[x]] = row[x], mask[pos[x]] = 1;
                dense[t] = row[n];
                mask[t] = 1;
                q_row = dense;
            }
            ap_row_event ev = {id % j->n_policies, sample, l, h, t, t + 1, ref, q_row, mask,
                               tr->v[ti] + (size_t)h * T * s->D, tr->o[ti] + ((size_t)h * T + t) * s->D, s->D};
            st = j->opts->sink(j->opts->sink_ctx, &ev, err);
        }
    }
    return st;
}

static ap_status emit_rows(cascade_state *s, ap_policy_gpu *g, const ap_trace *tr, int n_policies, int t,
                           const ap_replay_opts *opts, ap_error *err)
{
    ap_status st = s->n_decoded ? ap_policy_gpu_wait_kept(g, err) : AP_OK;
    emit_job job = {s, g, tr, n_policies, t, opts};
    return st ? st : ap_pool_run(s->pool, s->n_streams, emit_stream, &job, err);
}

/* The decode step's hook: the policies' updates at its end, and for eval
 * the next-token metrics of the step's logits. */
typedef struct {
    ap_policy_gpu *g;
    ap_next_gpu *next; /* eval, or NULL */
} step_work;

static ap_status hook_enqueue(void *ctx, void *stream, const int *t_of, ap_error *err)
{
    const step_work *w = ctx;
    ap_status st = ap_policy_gpu_enqueue(w->g, stream, t_of, err);
    return st || !w->next ? st : ap_next_gpu_enqueue(w->next, stream, t_of, err);
}

/* eval: each active stream's id, sample and the active index of its
 * sample's full stream (policy full_p; -1 when the prefill's logits are the
 * reference), for ap_next_gpu_set_active. */
static ap_status eval_active(const cascade_state *s, ap_next_gpu *next, int n_active, int full_p, int n_policies,
                             int prefill_ref, int *meta, ap_error *err)
{
    for (int a = 0; a < n_active; a++) {
        const int id = s->active_id[a];
        meta[3 * a] = id, meta[3 * a + 1] = s->sample_of[id], meta[3 * a + 2] = -1;
        if (prefill_ref) continue;
        for (int b = 0; b < n_active; b++)
            if (s->active_id[b] == s->sample_of[id] * n_policies + full_p) meta[3 * a + 2] = b;
        if (meta[3 * a + 2] < 0)
            return ap_error_set(err, AP_ERR_RUNTIME, "eval: sample %d has no full-cache stream", s->sample_of[id]);
    }
    return ap_next_gpu_set_active(next, meta, n_active, err);
}

/* eval: every stream's measured next-token metrics, in stream and step
 * order; those of the streams that were not decoded (they keep everything)
 * from the prefill's logits first. */
static ap_status eval_deliver(const cascade_state *s, ap_next_gpu *next, int n_policies, int max_T,
                              const ap_replay_opts *opts, int *keeps, ap_error *err)
{
    int n_keeps = 0;
    for (int i = 0; i < s->n_streams; i++)
        if (!s->streams[i]) keeps[2 * n_keeps] = i, keeps[2 * n_keeps++ + 1] = s->sample_of[i];
    double *values = malloc((size_t)s->n_streams * max_T * 4 * sizeof *values);
    if (!values) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for eval's metrics");
    ap_status st = ap_next_gpu_reference(next, keeps, n_keeps, err);
    if (!st) st = ap_next_gpu_values(next, values, err);
    for (int i = 0; i < s->n_streams && !st; i++)
        for (int t = opts->warmup; t + 1 < s->len_of[i] && !st; t++)
            st = opts->next_sink(opts->next_ctx, s->sample_of[i], i % n_policies, t,
                                 values + ((size_t)i * max_T + t) * 4, err);
    free(values);
    return st;
}

/* kv_bytes and sketch_bytes of each policy from the final retained counts
 * (s->cnt, read by ap_policy_gpu_counts). */
static ap_status fill_costs(cascade_state *s, ap_policy_gpu *g, const ap_policy_params *params,
                            int n_policies, ap_replay_cost *cost, ap_error *err)
{
    ap_status st = AP_OK;
    for (int p = 0; p < n_policies && !st; p++) {
        ap_policy *host;
        if ((st = ap_policy_create(&params[p], s->H, s->D, &host, err))) break;
        cost[p].sketch_bytes = (double)ap_policy_state_bytes(host) * s->L;
        ap_policy_free(host);
    }
    for (int i = 0; i < s->n_streams && !st; i++) {
        double positions = 0;
        for (int lh = 0; lh < s->L * s->H; lh++) positions += s->cnt[(size_t)i * s->L * s->H + lh];
        if (ap_policy_gpu_keeps_all(g, i)) positions = (double)s->len_of[i] * s->L * s->H; /* not decoded */
        const double kv = positions * 2.0 * s->D * sizeof(float);
        ap_replay_cost *pc = &cost[s->param_of[i]];
        pc->kv_bytes = kv > pc->kv_bytes ? kv : pc->kv_bytes;
    }
    return st;
}

ap_status ap_replay_cascade_gpu(ap_engine *engine, const ap_trace *tr,
                                const ap_policy_params *params, int n_policies,
                                const ap_replay_opts *opts, ap_replay_cost *cost, ap_error *err)
{
    const ap_config *c = ap_engine_config(engine);
    const int n = tr->n_samples * n_policies;
    cascade_state s = {.n_streams = n, .L = c->n_layer, .H = tr->n_head, .D = tr->head_dim};
    int max_T = 0;
    for (int i = 0; i < tr->n_samples; i++) max_T = tr->len[i] > max_T ? tr->len[i] : max_T;
    s.param_of = malloc((size_t)n * sizeof(int));
    s.len_of = malloc((size_t)n * sizeof(int));
    s.sample_of = malloc((size_t)n * sizeof(int));
    s.streams = calloc((size_t)n, sizeof *s.streams);
    s.active = malloc((size_t)n * sizeof *s.active);
    s.active_id = malloc((size_t)n * sizeof(int));
    s.tokens = malloc((size_t)n * sizeof(int));
    s.list_base = malloc((size_t)n * sizeof(int));
    s.cnt = malloc((size_t)n * s.L * s.H * sizeof(int));
    s.max_T = max_T;
    s.dense = malloc((size_t)n * max_T * sizeof(float));
    s.mask = malloc((size_t)n * max_T);
    ap_policy_gpu *g = NULL;
    ap_next_gpu *next = NULL; /* eval: the next-token metrics where the logits are */
    int *meta = malloc((size_t)n * 3 * sizeof *meta), full_p = -1;
    const int eval = opts->next_sink != NULL;
    /* eval's reference: the prefill's logits where the trace kept them on the
     * device; else the full streams, decoded beside the others */
    const int prefill_ref = eval && tr->device && tr->logits;
    for (int p = 0; p < n_policies; p++) {
        const ap_policy_info *info = ap_policy_find(params[p].name);
        if (info && info->never_evicts) full_p = p;
    }
    ap_status st = AP_OK;
    memset(cost, 0, (size_t)n_policies * sizeof *cost);
    if (!s.param_of || !s.len_of || !s.sample_of || !s.streams || !s.active || !s.active_id ||
        !s.tokens || !s.list_base || !s.cnt || !s.dense || !s.mask || !meta) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory for cascade replay");
        goto done;
    }
    if (eval && full_p < 0) {
        st = ap_error_set(err, AP_ERR_USAGE, "eval compares every policy with full: list full in the policies");
        goto done;
    }
    /* stream i = sample * n_policies + policy, as on the host */
    for (int i = 0; i < n; i++) {
        s.sample_of[i] = i / n_policies;
        s.param_of[i] = i % n_policies;
        s.len_of[i] = tr->len[s.sample_of[i]];
    }
    if ((st = ap_pool_create(0, &s.pool, err)) ||
        (st = ap_policy_gpu_create(params, n_policies, s.param_of, s.len_of, n, s.L, s.H, s.D, &g, err)))
        goto done;
    /* A stream whose policy keeps everything is not decoded: its cascade is
     * the reference by definition, so its rows are the trace's, and its
     * logits the prefill's (`full` then gives KL exactly 0 on any engine and
     * precision). An eval without the prefill's logits decodes it: its
     * logits are the others' reference. */
    if (eval && (st = ap_next_gpu_create(n, (const int *const *)tr->ids, tr->len, tr->n_samples, max_T,
                                         c->vocab_size, prefill_ref ? tr->logits : NULL, &next, err)))
        goto done;
    for (int i = 0; i < n; i++) {
        if (ap_policy_gpu_keeps_all(g, i) && (!eval || prefill_ref)) continue;
        s.n_decoded++;
        if ((st = ap_stream_create(engine, s.len_of[i], &s.streams[i], err))) goto done;
    }
    if (opts->sink && tr->n_layers > 0 && (st = ap_policy_gpu_keep_layers(g, tr->layers, tr->n_layers, err))) goto done;
    const ap_policy_gpu_buffers *buf = ap_policy_gpu_buffers_of(g);
    step_work work = {g, next};
    ap_step_hook hook = {&work, hook_enqueue, 0};
    long long active_key = -1;
    const double t0 = replay_now_s();
    double decode_s = 0;
    int measured = -1; /* a step whose rows are still to be emitted */
    for (int t = 0; t < max_T && !st; t++) {
        int n_active = 0, max_cnt = 0;
        for (int i = 0; i < n; i++) {
            if (t >= s.len_of[i] || !s.streams[i]) continue;
            const int cap = ap_policy_gpu_capacity(g, i) - 1;
            max_cnt = cap > max_cnt ? cap : max_cnt;
            s.active[n_active] = s.streams[i];
            s.active_id[n_active] = i;
            s.tokens[n_active] = tr->ids[s.sample_of[i]][t];
            s.list_base[n_active++] = ap_policy_gpu_list_base(g, i);
        }
        if (n_active) {
            if ((st = ap_policy_gpu_begin_step(g, s.active_id, n_active, &hook.key, err))) break;
            if (eval && hook.key != active_key) {
                if ((st = eval_active(&s, next, n_active, full_p, n_policies, prefill_ref, meta, err))) break;
                active_key = hook.key;
            }
            ap_device_batch b = {n_active, s.active, s.tokens, s.list_base, buf->off, buf->cnt,
                                 buf->pos, buf->rows, buf->q, buf->k, max_cnt, &hook,
                                 eval ? ap_next_gpu_logits(next) : NULL};
            const double t_decode = replay_now_s();
            if ((st = ap_engine_decode_device(engine, &b, err))) break;
            decode_s += replay_now_s() - t_decode;
        }
        /* a measured step's rows are emitted once the next step is queued:
         * the host's work on them overlaps the GPU's */
        if (measured >= 0 && (st = emit_rows(&s, g, tr, n_policies, measured, opts, err))) break;
        measured = -1;
        if (opts->sink && replay_measured(opts, t)) {
            if (s.n_decoded && (st = ap_policy_gpu_fetch_kept(g, err))) break;
            measured = t;
        }
        if (opts->progress) opts->progress(opts->progress_ctx, "cascade", (double)(t + 1) / max_T);
    }
    if (!st && measured >= 0) st = emit_rows(&s, g, tr, n_policies, measured, opts, err);
    /* the decode steps return queued: reading the final counts waits for the last */
    if (!st) st = ap_policy_gpu_counts(g, s.cnt, err);
    if (!st && eval) st = eval_deliver(&s, next, n_policies, max_T, opts, meta, err);
    const double dt = replay_now_s() - t0;
    if (!st) st = fill_costs(&s, g, params, n_policies, cost, err);
    for (int p = 0; p < n_policies && !st; p++) {
        cost[p].seconds = dt; /* the streams decode together */
        cost[p].decode_seconds = decode_s;
        cost[p].observe_seconds = 0; /* inside the decode steps */
    }
done:
    ap_next_gpu_free(next);
    ap_policy_gpu_free(g);
    state_free(&s);
    free(meta);
    return st;
}
