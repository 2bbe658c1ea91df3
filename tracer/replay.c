/* replay.c — policies replayed over a reference trace (DESIGN.md §5).
 *
 * isolated: only the probed layer's cache is capped, so that layer's inputs
 *   are exact and the policy's row is the reference row restricted to the
 *   retained set ∪ {t}, renormalised. No model needed.
 * cascade: every layer's cache is capped; the model decodes token by token,
 *   all (sample, policy) streams batched in one decode step per position. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

static double kv_bytes_of(const ap_policy *pol, int n_head, int head_dim)
{
    double positions = 0;
    for (int h = 0; h < n_head; h++) {
        int n;
        ap_policy_kept(pol, ap_policy_set_of(pol, h), &n);
        positions += n;
    }
    return positions * 2.0 * head_dim * sizeof(float);
}

ap_status ap_replay_isolated(const ap_trace *tr, int li, const ap_policy_params *params,
                             const ap_replay_opts *opts, ap_replay_cost *cost, ap_error *err)
{
    const int H = tr->n_head, D = tr->head_dim;
    int max_T = 0;
    for (int s = 0; s < tr->n_samples; s++) max_T = tr->len[s] > max_T ? tr->len[s] : max_T;
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
    for (int s = 0; s < tr->n_samples && !st; s++) {
        const int T = tr->len[s];
        const size_t i = (size_t)s * tr->n_layers + li;
        const float *attn = tr->attn[i], *q = tr->q[i], *k = tr->k[i], *v = tr->v[i], *o = tr->o[i];
        ap_policy *pol;
        if ((st = ap_policy_create(params, H, D, &pol, err))) break;
        for (int t = 0; t < T && !st; t++) {
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
                memcpy(qt + (size_t)h * D, q + ((size_t)h * T + t) * D, (size_t)D * sizeof *qt);
                memcpy(kt + (size_t)h * D, k + ((size_t)h * T + t) * D, (size_t)D * sizeof *kt);
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
                ap_row_event ev = {0, s, tr->layers[li], h, t, t + 1, p, q_row, m,
                                   v + (size_t)h * T * D, o + ((size_t)h * T + t) * D, D};
                if ((st = opts->sink(opts->sink_ctx, &ev, err))) break;
            }
            if (!st)
                st = ap_policy_observe_scaled(pol, t, attn + (size_t)t * T, (size_t)T * T, scale, qt,
                                              kt, err);
        }
        double kv = kv_bytes_of(pol, H, D), sk = (double)ap_policy_state_bytes(pol);
        cost->kv_bytes = kv > cost->kv_bytes ? kv : cost->kv_bytes;
        cost->sketch_bytes = sk > cost->sketch_bytes ? sk : cost->sketch_bytes;
        ap_policy_free(pol);
        /* the next sample starts from clean rows */
        memset(rows, 0, (size_t)H * max_T * sizeof *rows);
        memset(mask, 0, (size_t)H * max_T);
        memset(n_written, 0, (size_t)H * sizeof *n_written);
        if (opts->progress) opts->progress(opts->progress_ctx, params->name, (double)(s + 1) / tr->n_samples);
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

/* ---- isolated replays in parallel ------------------------------------------ */

typedef struct {
    const ap_trace *tr;
    ap_isolated_job *jobs;
    int n_jobs, next, done;
    const ap_replay_opts *opts;
    pthread_mutex_t lock;
    ap_status st;
    ap_error err;
} jobs_run;

static void *jobs_worker(void *arg)
{
    jobs_run *r = arg;
    for (;;) {
        pthread_mutex_lock(&r->lock);
        const int j = r->st ? r->n_jobs : r->next++;
        pthread_mutex_unlock(&r->lock);
        if (j >= r->n_jobs) break;
        ap_isolated_job *job = &r->jobs[j];
        ap_replay_opts o = *r->opts;
        o.sink_ctx = job->sink_ctx;
        o.progress = NULL;
        ap_error e;
        ap_status st = ap_replay_isolated(r->tr, job->li, job->params, &o, &job->cost, &e);
        pthread_mutex_lock(&r->lock);
        if (st && !r->st) {
            r->st = st;
            r->err = e;
        }
        r->done++;
        if (!st && r->opts->progress)
            r->opts->progress(r->opts->progress_ctx, "replay", (double)r->done / r->n_jobs);
        pthread_mutex_unlock(&r->lock);
    }
    return NULL;
}

ap_status ap_replay_isolated_jobs(const ap_trace *tr, ap_isolated_job *jobs, int n_jobs,
                                  const ap_replay_opts *opts, int n_threads, ap_error *err)
{
    enum { MAX_JOB_THREADS = 256 };
    if (n_threads <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = cores < 1 ? 1 : (int)cores;
    }
    if (n_threads > MAX_JOB_THREADS) n_threads = MAX_JOB_THREADS;
    if (n_threads > n_jobs) n_threads = n_jobs;
    jobs_run r = {tr, jobs, n_jobs, 0, 0, opts, PTHREAD_MUTEX_INITIALIZER, AP_OK, {{0}}};
    pthread_t threads[MAX_JOB_THREADS];
    int started = 0;
    for (int i = 1; i < n_threads; i++)
        if (pthread_create(&threads[started], NULL, jobs_worker, &r) == 0) started++;
    jobs_worker(&r); /* the caller works too */
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    pthread_mutex_destroy(&r.lock);
    if (r.st && err) *err = r.err;
    return r.st;
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

/* One decode step's policy updates, shared by the worker threads: each takes
 * the next unclaimed (stream, layer). */
typedef struct {
    cascade_stream *cs;
    const int *active_idx;
    int n_active, L, H, D, ctx, t;
    float **attn, **q, **k;
    pthread_mutex_t lock; /* guards next, st and err */
    int next;             /* next (stream, layer) item to claim */
    ap_status st;         /* first failure */
    ap_error err;
} observe_job;

static void *observe_worker(void *arg)
{
    observe_job *job = arg;
    const int n_items = job->n_active * job->L;
    for (;;) {
        pthread_mutex_lock(&job->lock);
        const int item = job->st ? n_items : job->next++;
        pthread_mutex_unlock(&job->lock);
        if (item >= n_items) break;
        /* one (stream, layer) per item: the policies differ in cost, and
         * small items keep the threads evenly loaded */
        const int a = item / job->L, l = item % job->L;
        cascade_stream *str = &job->cs[job->active_idx[a]];
        ap_error e;
        const size_t row_base = (size_t)a * job->H * job->ctx, qk = (size_t)a * job->H * job->D;
        ap_status st = ap_policy_observe(str->layer_policy[l], job->t, job->attn[l] + row_base,
                                         (size_t)job->ctx, job->q[l] + qk, job->k[l] + qk, &e);
        if (st) {
            pthread_mutex_lock(&job->lock);
            if (!job->st) {
                job->st = st;
                job->err = e;
            }
            pthread_mutex_unlock(&job->lock);
            break;
        }
    }
    return NULL;
}

/* Worker threads that live for the whole cascade. Each step the caller
 * publishes a job, wakes them and works along; creating threads every step
 * cost more than the updates themselves on the GPU machine. */
enum { MAX_THREADS = 64 };
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t wake, all_done;
    long step; /* bumped to start a step */
    int quit, n_started, n_done;
    observe_job *job;
    pthread_t threads[MAX_THREADS];
} observer_pool;

static void *pool_worker(void *arg)
{
    observer_pool *p = arg;
    long seen = 0;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (p->step == seen && !p->quit) pthread_cond_wait(&p->wake, &p->lock);
        if (p->quit) break;
        seen = p->step;
        observe_job *job = p->job;
        pthread_mutex_unlock(&p->lock);
        observe_worker(job);
        pthread_mutex_lock(&p->lock);
        if (++p->n_done == p->n_started) pthread_cond_signal(&p->all_done);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* Starts up to the machine's cores less one (the caller works too); a pool
 * that starts no thread still works, on the caller alone. */
static void pool_start(observer_pool *p)
{
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->all_done, NULL);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n = (int)(cores < 1 ? 1 : cores > MAX_THREADS ? MAX_THREADS : cores);
    for (int i = 1; i < n; i++)
        if (pthread_create(&p->threads[p->n_started], NULL, pool_worker, p) == 0) p->n_started++;
}

static ap_status pool_run(observer_pool *p, observe_job *job, ap_error *err)
{
    pthread_mutex_lock(&p->lock);
    p->job = job;
    p->n_done = 0;
    p->step++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    observe_worker(job);
    pthread_mutex_lock(&p->lock);
    while (p->n_done < p->n_started) pthread_cond_wait(&p->all_done, &p->lock);
    pthread_mutex_unlock(&p->lock);
    if (job->st && err) *err = job->err;
    return job->st;
}

static void pool_stop(observer_pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->quit = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->all_done);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
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
    if (ap_engine_backend(engine) == AP_BACKEND_CUDA && !opts->host_policies)
        return ap_replay_cascade_gpu(engine, tr, params, n_policies, opts, cost, err);
#endif
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
    memset(cost, 0, (size_t)n_policies * sizeof *cost);
    if (!cs || !layers || !attn || !q || !k || !active || !active_idx || !tokens || !kept_flat ||
        !n_kept_flat || !kept || !n_kept || !mask) {
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
            for (int l = 0; l < L; l++)
                if ((st = ap_policy_create(&params[p], H, D, &str->layer_policy[l], err))) goto done;
        }
    observer_pool pool;
    pool_start(&pool);
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
        }
        ap_decode_batch b = {n_active, active, tokens, kept, n_kept};
        ap_capture cap = {.n_capture = L, .layers = layers, .attn = attn, .q = q, .k = k};
        const double t_decode = replay_now_s();
        if ((st = ap_engine_decode_step(engine, &b, &cap, err))) break;
        decode_s += replay_now_s() - t_decode;
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
            observe_job job = {cs, active_idx, n_active, L, H, D, ctx, t, attn, q, k,
                               PTHREAD_MUTEX_INITIALIZER, 0, AP_OK, {{0}}};
            const double t_observe = replay_now_s();
            st = pool_run(&pool, &job, err);
            pthread_mutex_destroy(&job.lock);
            observe_s += replay_now_s() - t_observe;
        }
        if (opts->progress) opts->progress(opts->progress_ctx, "cascade", (double)(t + 1) / max_T);
    }
    const double dt = replay_now_s() - t0;
    pool_stop(&pool);
    for (int i = 0; i < n_streams && !st; i++) {
        ap_replay_cost *pc = &cost[cs[i].policy];
        double kv = 0, sk = 0;
        for (int l = 0; l < L; l++) {
            kv += kv_bytes_of(cs[i].layer_policy[l], H, D);
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
    return st;
}
