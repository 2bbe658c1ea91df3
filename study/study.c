/* study.c — a study batch by batch: trace (or read) a batch of samples,
 * replay every policy on it, fold its metrics, free it (study.h). */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/phase.h"
#include "../common/pool.h"
#include "../engine/engine_device.h"
#include "study_internal.h"

#define BATCH_BYTES ((size_t)256 << 20)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The trace file being written, for a signal handler (study.h). */
static char *volatile temp_file;
const char *ap_study_temp_file(void) { return temp_file; }

static void set_temp_file(const char *path)
{
    char *old = temp_file;
    temp_file = path ? strdup(path) : NULL;
    free(old);
}

/* Bytes of one sample's trace at these shapes. */
static size_t sample_bytes(int n_layers, int n_head, int head_dim, int T)
{
    return (size_t)n_layers * ((size_t)n_head * T * T + 4 * (size_t)n_head * T * head_dim) * sizeof(float);
}

/* Samples a batch: as asked, or as many as BATCH_BYTES of trace hold (a
 * quarter of the free memory when that is less) — a third of the free
 * device memory when the trace stays there — at least one. */
static int batch_size(const ap_study_config *cfg, size_t per_sample, int n_samples, int on_device)
{
    int n = cfg->batch_size;
    if (n <= 0) {
        size_t budget = BATCH_BYTES;
        const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        if (pages > 0 && page > 0 && (size_t)pages * (size_t)page / 4 < budget)
            budget = (size_t)pages * (size_t)page / 4;
#ifdef AP_HAVE_CUDA
        if (on_device) budget = study_gpu_free_bytes() / 3;
#else
        (void)on_device;
#endif
        n = per_sample ? (int)(budget / per_sample) : n_samples;
        if (n < 1) n = 1;
        if (n < n_samples) { /* batches of equal size: no short last one */
            const int n_batches = (n_samples + n - 1) / n;
            n = (n_samples + n_batches - 1) / n_batches;
        }
    }
    n = n < n_samples ? n : n_samples;
    return n > 0 ? n : 1;
}

/* ---- progress ------------------------------------------------------------- */

typedef struct {
    ap_study_progress_fn fn;
    void *ctx;
    ap_study_progress p;
    const int *len; /* [samples_total] */
    double t0;
    int batch_first, batch_n;
    int lo, hi;     /* this process's samples; over several processes the
                       whole job's progress is estimated from this share */
} progress_state;

static void report(progress_state *ps, const char *stage, double done_in_batch)
{
    if (!ps->fn) return;
    ps->p.stage = stage;
    const double local = ps->batch_first - ps->lo + done_in_batch * ps->batch_n;
    const double scale = ps->hi > ps->lo ? (double)ps->p.samples_total / (ps->hi - ps->lo) : 1.0;
    double tokens = 0;
    const int whole = (int)local;
    for (int s = 0; s < whole; s++) tokens += ps->len[ps->lo + s];
    if (ps->lo + whole < ps->hi) tokens += (local - whole) * ps->len[ps->lo + whole];
    ps->p.samples_done = local * scale;
    ps->p.tokens_done = tokens * scale;
    ps->p.elapsed_s = now_s() - ps->t0;
    ps->fn(ps->ctx, &ps->p);
}

/* The trace's progress within a batch: the first half of the batch's work. */
static void trace_progress(void *ctx, const char *what, double fraction)
{
    (void)what;
    report(ctx, "trace", 0.5 * fraction);
}

/* ---- isolated replay of a batch ---------------------------------------------- */

typedef struct {
    study_acc *acc;
    const ap_trace *tr;
    const int *li;     /* [n_layers]: each probed layer's index in the trace */
    ap_pool *pool;
    pthread_mutex_t lock;
    int done;
    progress_state *ps;
} isolated_batch;

typedef struct {
    study_acc *acc;
    int b, run;
} item_sink;

static ap_status sink_item(void *ctx, const ap_row_event *ev, ap_error *err)
{
    const item_sink *is = ctx;
    return study_acc_row(is->acc, is->b, is->run, ev, err);
}

/* Item = (sample of the batch, run): samples outer, so that the items
 * running together are different runs and rarely wait for a run's lock. */
static ap_status isolated_item(void *ctx, int item, ap_error *err)
{
    isolated_batch *ib = ctx;
    study_acc *acc = ib->acc;
    const ap_study_config *cfg = acc->cfg;
    const int b = item / acc->n_runs, run = item % acc->n_runs;
    const int p = run / cfg->n_layers, l = run % cfg->n_layers;
    item_sink is = {acc, b, run};
    ap_replay_opts o = {.warmup = cfg->warmup, .stride = cfg->stride, .sink = sink_item, .sink_ctx = &is};
    ap_replay_cost cost;
    ap_status st = ap_replay_isolated(ib->tr, b, ib->li[l], &cfg->policies[p], &o, &cost, err);
    if (st) return st;
    study_run *r = &acc->runs[run];
    pthread_mutex_lock(&r->lock);
    r->replay_s += cost.seconds;
    if (cost.kv_bytes > r->kv_bytes) r->kv_bytes = cost.kv_bytes;
    if (cost.kv_quant_bytes > r->kv_quant_bytes) r->kv_quant_bytes = cost.kv_quant_bytes;
    if (cost.sketch_bytes > r->sketch_bytes) r->sketch_bytes = cost.sketch_bytes;
    pthread_mutex_unlock(&r->lock);
    pthread_mutex_lock(&ib->lock);
    const int done = ++ib->done;
    /* one thread reports at a time; the first half of the batch was the trace */
    if (ib->ps->fn) report(ib->ps, "replay", 0.5 + 0.5 * done / ((double)ib->tr->n_samples * acc->n_runs));
    pthread_mutex_unlock(&ib->lock);
    return AP_OK;
}

static ap_status replay_isolated_batch(study_acc *acc, const ap_trace *tr, const int *li, ap_pool *pool,
                                       progress_state *ps, ap_error *err)
{
    isolated_batch ib = {acc, tr, li, pool, PTHREAD_MUTEX_INITIALIZER, 0, ps};
    ap_status st = ap_pool_run(pool, tr->n_samples * acc->n_runs, isolated_item, &ib, err);
    pthread_mutex_destroy(&ib.lock);
    return st;
}

/* ---- isolated replay of a batch on the device ---------------------------------- */

#ifdef AP_HAVE_CUDA
static ap_status replay_device_batch(study_acc *acc, const ap_trace *tr, ap_pool *pool, progress_state *ps,
                                     ap_error *err)
{
    const ap_study_config *cfg = acc->cfg;
    double *kv = calloc((size_t)acc->n_runs, sizeof *kv);
    double seconds = 0;
    ap_status st = !kv ? ap_error_set(err, AP_ERR_RUNTIME, "out of memory")
                       : study_isolated_gpu(cfg, tr, acc, pool, kv, &seconds, err);
    report(ps, "replay", 0.9);
    for (int p = 0; p < cfg->n_policies && !st; p++) {
        /* the policy's state, as a host instance of the same parameters holds it */
        ap_policy *host;
        if ((st = ap_policy_create(&cfg->policies[p], tr->n_head, tr->head_dim, &host, err))) break;
        const double bytes = (double)ap_policy_state_bytes(host);
        ap_policy_free(host);
        for (int l = 0; l < cfg->n_layers; l++) {
            const int r = p * cfg->n_layers + l;
            study_run *run = &acc->runs[r];
            run->replay_s += seconds; /* the runs replay together */
            if (kv[r] > run->kv_bytes) run->kv_bytes = kv[r];
            if (bytes > run->sketch_bytes) run->sketch_bytes = bytes;
        }
    }
    free(kv);
    return st;
}
#endif

/* ---- cascade replay of a batch ---------------------------------------------- */

typedef struct {
    study_acc *acc;
    const int *li_of_layer; /* model layer -> index in cfg->layers, or -1 */
} cascade_sink;

static ap_status sink_cascade(void *ctx, const ap_row_event *ev, ap_error *err)
{
    const cascade_sink *cs = ctx;
    const int l = cs->li_of_layer[ev->layer];
    if (l < 0) return AP_OK;
    return study_acc_row(cs->acc, ev->sample, ev->policy * cs->acc->cfg->n_layers + l, ev, err);
}

static void cascade_progress(void *ctx, const char *what, double fraction)
{
    (void)what;
    report(ctx, "cascade", 0.5 + 0.5 * fraction);
}

/* The index of `full` among the policies, or -1. */
static int full_index(const ap_study_config *cfg)
{
    for (int p = 0; p < cfg->n_policies; p++)
        if (!strcmp(cfg->policies[p].name, "full")) return p;
    return -1;
}

static ap_status replay_cascade_batch(study_acc *acc, ap_engine *engine, const ap_trace *tr, ap_pool *pool,
                                      progress_state *ps, ap_error *err)
{
    const ap_study_config *cfg = acc->cfg;
    const int L = ap_engine_config(engine)->n_layer, eval = cfg->mode == AP_STUDY_EVAL;
    int *li_of_layer = malloc((size_t)L * sizeof *li_of_layer);
    ap_replay_cost *cost = calloc((size_t)cfg->n_policies, sizeof *cost);
    if (!li_of_layer || !cost) {
        free(li_of_layer), free(cost);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    }
    for (int l = 0; l < L; l++) li_of_layer[l] = -1;
    for (int l = 0; l < cfg->n_layers && !eval; l++) li_of_layer[cfg->layers[l]] = l;
    cascade_sink cs = {acc, li_of_layer};
    study_eval ev = {acc, tr, full_index(cfg), pool, NULL, NULL, NULL};
    ap_replay_opts o = {.warmup = cfg->warmup, .stride = cfg->stride, .sink = sink_cascade, .sink_ctx = &cs,
                        .progress = cascade_progress, .progress_ctx = ps,
                        .logits_sink = eval ? study_eval_step : NULL, .logits_ctx = &ev,
                        .next_sink = eval ? study_eval_values : NULL, .next_ctx = &ev,
                        .host_policies = cfg->host_replay};
    ap_status st = eval && ev.full_policy < 0
                       ? ap_error_set(err, AP_ERR_USAGE, "eval compares every policy with full: list full in the policies")
                       : ap_replay_cascade(engine, tr, cfg->policies, cfg->n_policies, &o, cost, err);
    for (int p = 0; p < cfg->n_policies && !st; p++)
        for (int l = 0; l < cfg->n_layers; l++) {
            study_run *r = &acc->runs[p * cfg->n_layers + l];
            r->replay_s += cost[p].seconds;
            if (cost[p].kv_bytes > r->kv_bytes) r->kv_bytes = cost[p].kv_bytes;
            if (cost[p].sketch_bytes > r->sketch_bytes) r->sketch_bytes = cost[p].sketch_bytes;
        }
    free(li_of_layer);
    free(cost);
    study_eval_free(&ev);
    return st;
}

/* ---- the study ---------------------------------------------------------------- */

/* Where a study's batches come from: the model (trace) or a trace file. */
typedef struct {
    ap_engine *engine;
    const ap_model *model;
    const ap_samples *samples;
    ap_trace_reader *reader;
    ap_trace_writer *writer;
    int on_device; /* the trace stays on the engine's device and is replayed there */
    int sharded;   /* one of several processes: its share of the samples only (mpi.c) */
} batch_source;

static ap_status next_batch(batch_source *src, const ap_study_config *cfg, int first, int n,
                            progress_state *ps, ap_trace *tr, double *trace_s, ap_error *err)
{
    ap_status st;
    if (src->reader) {
        st = ap_trace_reader_read(src->reader, first, n, tr, err);
        if (ps) report(ps, "read", 0.5);
        return st;
    }
    ap_samples view = {n, src->samples->len + first, src->samples->ids + first, 0, 0};
    const int n_layers = cfg->mode == AP_STUDY_EVAL ? 0 : cfg->n_layers; /* eval captures no attention */
    ap_progress_fn fn = ps ? trace_progress : NULL;
    st = src->on_device
             ? ap_trace_run_device(src->engine, src->model, &view, cfg->layers, n_layers, cfg->mode == AP_STUDY_EVAL, tr,
                                   fn, ps, err)
             : ap_trace_run(src->engine, src->model, &view, cfg->layers, n_layers, tr, fn, ps, err);
    if (st) return st;
    ap_phase_mark("trace");
    *trace_s += tr->seconds;
    if (src->writer && (st = ap_trace_writer_add(src->writer, tr, err))) ap_trace_free(tr);
    return st;
}

/* The next batch's trace, made on a thread while the current batch's
 * replay runs on the device's other streams (the engine is the thread's
 * alone meanwhile). It reports no progress: the replay does. */
typedef struct {
    batch_source *src;
    const ap_study_config *cfg;
    int first, n;
    pthread_t thread;
    ap_trace tr;
    double trace_s;
    ap_status st;
    ap_error err;
} ahead_job;

static void *trace_ahead(void *arg)
{
    ahead_job *j = arg;
    j->st = next_batch(j->src, j->cfg, j->first, j->n, NULL, &j->tr, &j->trace_s, &j->err);
    return NULL;
}

/* The size of the batch that starts at `first`: B, or what is left before hi. */
static int batch_at(int first, int B, int hi) { return first + B <= hi ? B : hi - first; }

/* Runs the batches; `info` gives the shapes (a trace without tensors). */
static ap_status run_batches(const ap_study_config *cfg, batch_source *src, const ap_trace *info,
                             const int *li, int replay, ap_study_progress_fn progress, void *ctx,
                             study_acc *acc, double *trace_s, ap_error *err)
{
    const int S = info->n_samples;
    int max_T = 0;
    for (int s = 0; s < S; s++) max_T = info->len[s] > max_T ? info->len[s] : max_T;
    int lo = 0, count = S;
    if (src->sharded) study_shard_of(S, &lo, &count);
    const int hi = lo + count;
    size_t per_sample = sample_bytes(info->n_layers, info->n_head, info->head_dim, max_T);
    /* eval on the device: each position's logits, the trace's and the engine's staging of them */
    if (cfg->mode == AP_STUDY_EVAL && src->on_device) per_sample += 2 * (size_t)max_T * info->model_vocab * sizeof(float);
    const int B = batch_size(cfg, per_sample, count, src->on_device);
    progress_state ps = {progress, ctx, {"trace", 0, S, 0, 0, 0}, info->len, now_s(), 0, 0, lo, hi};
    for (int s = 0; s < S; s++) ps.p.tokens_total += info->len[s];
    ap_pool *pool = NULL;
    ap_status st = AP_OK;
    if (replay && (st = study_acc_init(acc, cfg, info, B, err))) return st;
    acc->keep_parts = src->sharded && lo > 0; /* rank 0 folds its own; the others send theirs */
    if (replay && cfg->mode != AP_STUDY_CASCADE && (st = ap_pool_create(cfg->threads, &pool, err))) return st;
    /* an isolated replay on the device leaves the engine free: the next
     * batch is traced on a thread while this one replays (trace_ahead) */
    const int ahead = replay && src->on_device && cfg->mode == AP_STUDY_ISOLATED && hi - lo > B;
    ap_trace tr = {0};
    if (lo < hi) {
        ps.batch_first = lo;
        ps.batch_n = batch_at(lo, B, hi);
        st = next_batch(src, cfg, lo, ps.batch_n, &ps, &tr, trace_s, err);
    }
    for (int first = lo; first < hi && !st; first += B) {
        const int n = batch_at(first, B, hi);
        ps.batch_first = first;
        ps.batch_n = n;
        ahead_job next = {.src = src, .cfg = cfg, .first = first + B, .n = batch_at(first + B, B, hi)};
        int started = 0;
        if (ahead && first + B < hi) {
            ap_engine_device_shared(src->engine, 1);
            if (!(started = !pthread_create(&next.thread, NULL, trace_ahead, &next))) {
                ap_engine_device_shared(src->engine, 0);
                st = ap_error_set(err, AP_ERR_RUNTIME, "starting the next batch's trace failed");
            }
        }
        if (replay && !st) {
            study_acc_begin_batch(acc, first);
            if (cfg->mode != AP_STUDY_ISOLATED)
                st = replay_cascade_batch(acc, src->engine, &tr, pool, &ps, err);
#ifdef AP_HAVE_CUDA
            else if (src->on_device)
                st = replay_device_batch(acc, &tr, pool, &ps, err);
#endif
            else
                st = replay_isolated_batch(acc, &tr, li, pool, &ps, err);
            ap_phase_mark("replay");
            if (!st) st = study_acc_end_batch(acc, n, err);
            for (int b = 0; b < n; b++) acc->tokens += tr.len[b];
        }
        if (started) { /* the engine is this thread's again only after the join */
            pthread_join(next.thread, NULL);
            ap_engine_device_shared(src->engine, 0);
            *trace_s += next.trace_s;
            if (!st && next.st) st = next.st, *err = next.err;
        }
        ap_trace_free(&tr);
        report(&ps, replay ? (cfg->mode == AP_STUDY_ISOLATED ? "replay" : "cascade") : "trace", 1.0);
        if (started) {
            tr = next.tr; /* (freed by the next turn, or after the loop) */
        } else if (first + B < hi && !st) {
            ps.batch_first = first + B;
            ps.batch_n = batch_at(first + B, B, hi);
            st = next_batch(src, cfg, first + B, ps.batch_n, &ps, &tr, trace_s, err);
        }
    }
    ap_trace_free(&tr);
    ap_pool_free(pool);
    return st;
}

/* A trace without tensors holding the model's shapes and the samples' lengths. */
static ap_status model_info(const ap_study_config *cfg, const ap_model *model, const ap_samples *samples,
                            ap_trace *info, ap_error *err)
{
    const ap_config *c = &model->config;
    memset(info, 0, sizeof *info);
    info->n_samples = samples->n;
    info->n_layers = cfg->n_layers;
    info->n_head = c->n_head;
    info->head_dim = c->n_embd / c->n_head;
    info->layers = malloc((size_t)cfg->n_layers * sizeof *info->layers);
    info->len = malloc((size_t)(samples->n > 0 ? samples->n : 1) * sizeof *info->len);
    if (!info->layers || !info->len) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    memcpy(info->layers, cfg->layers, (size_t)cfg->n_layers * sizeof *info->layers);
    memcpy(info->len, samples->len, (size_t)samples->n * sizeof *info->len);
    snprintf(info->model_source, sizeof info->model_source, "%s", model->source);
    snprintf(info->model_sha256, sizeof info->model_sha256, "%s", model->sha256);
    info->model_n_layer = c->n_layer;
    info->model_vocab = c->vocab_size;
    snprintf(info->model_dtype, sizeof info->model_dtype, "%s", model->dtype);
    snprintf(info->input_source, sizeof info->input_source, "%s", cfg->input_source ? cfg->input_source : "");
    snprintf(info->input_sha256, sizeof info->input_sha256, "%s", cfg->input_sha256 ? cfg->input_sha256 : "");
    info->max_length = cfg->max_length;
    return AP_OK;
}

/* Several processes: each needs a sample, and a GPU of its own unless told
 * to share (ATTNPROBE_SHARE_GPU=1); the same verdict on every rank. */
static ap_status shard_check(const ap_study_config *cfg, int n_samples, ap_error *err)
{
    const int size = ap_mpi_size();
    if (n_samples < size)
        return ap_error_set(err, AP_ERR_USAGE, "%d processes for %d samples: run at most %d processes or ask for more "
                            "samples", size, n_samples, n_samples);
    if (cfg->save_trace) return ap_error_set(err, AP_ERR_USAGE, "a trace file is written by one process: run "
                                             "trace --save without mpirun");
    return cfg->backend == AP_BACKEND_CUDA ? ap_mpi_use_local_gpu(0, err) : AP_OK;
}

/* The engine, the trace file's writer (when asked) and the batches. */
static ap_status study_model(const ap_study_config *cfg, const ap_model *model, const ap_samples *samples,
                             int replay, ap_study_progress_fn progress, void *ctx, ap_summary *out,
                             double *trace_s, ap_error *err)
{
    ap_trace info;
    study_acc acc = {0};
    batch_source src = {.model = model, .samples = samples, .sharded = cfg->shard && ap_mpi_size() > 1};
    const double t0 = now_s();
    const int *li = NULL;
    int *li_buf = NULL;
    *trace_s = 0;
    ap_status st = model_info(cfg, model, samples, &info, err);
    if (!st && samples->n < 1) st = ap_error_set(err, AP_ERR_INPUT, "the study has no sample");
    if (!st && src.sharded) st = shard_check(cfg, samples->n, err);
    ap_phase_mark("start");
    if (!st) st = ap_engine_create(model, cfg->backend, cfg->precision, &src.engine, err);
    ap_phase_mark("engine");
#ifdef AP_HAVE_CUDA
    /* an isolated replay on a CUDA engine runs where the trace is */
    int device_policies = 1; /* a policy the CUDA policies lack (docs/policies.md) replays on the host */
    for (int p = 0; p < cfg->n_policies; p++) device_policies &= ap_policy_params_on_device(&cfg->policies[p]);
    /* (eval: the trace holds the prefill's logits there, the reference of the device's next-token metrics) */
    src.on_device = !st && replay && cfg->mode != AP_STUDY_CASCADE && !cfg->host_replay && !cfg->save_trace &&
                    device_policies && ap_engine_backend(src.engine) == AP_BACKEND_CUDA; /* a file is written from host memory */
#endif
    if (!st && cfg->save_trace) {
        if (!(info.config_json = study_config_json(cfg, samples->n)))
            st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        if (!st) st = ap_trace_writer_open(cfg->save_trace, &info, samples->len, samples->n, &src.writer, err);
        if (!st) set_temp_file(ap_trace_writer_temp_path(src.writer));
    }
    if (!st && (li_buf = malloc((size_t)cfg->n_layers * sizeof *li_buf)) == NULL)
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    for (int l = 0; !st && l < cfg->n_layers; l++) li_buf[l] = l; /* the trace holds cfg's layers */
    li = li_buf;
    if (!st) st = run_batches(cfg, &src, &info, li, replay, progress, ctx, &acc, trace_s, err);
    if (src.writer) {
        ap_status close_st = ap_trace_writer_close(src.writer, !st, st ? NULL : err);
        set_temp_file(NULL);
        if (!st) st = close_st;
    }
    if (src.sharded) { /* every rank agrees on the outcome; rank 0 gathers the shards */
        st = ap_mpi_agree(st, err);
        if (!st && replay) st = study_mpi_gather(&acc, samples->n, trace_s, err);
        replay = replay && ap_mpi_rank() == 0; /* the summary is rank 0's to make */
    }
    if (!st && replay)
        st = study_summary(&acc, cfg, &info, samples->n, ap_engine_backend(src.engine) == AP_BACKEND_CUDA ? "cuda" : "cpu",
                           ap_engine_device_name(src.engine), *trace_s, out, err);
    ap_phase_mark("statistics");
    if (!st && replay) out->study_s = now_s() - t0; /* the engine's creation included */
    study_acc_free(&acc);
    free(li_buf);
    ap_trace_free(&info);
    ap_engine_free(src.engine);
    return st;
}

ap_status ap_study_run(const ap_study_config *cfg, const ap_model *model, const ap_samples *samples,
                       ap_study_progress_fn progress, void *progress_ctx, ap_summary *out, ap_error *err)
{
    double trace_s;
    memset(out, 0, sizeof *out);
    ap_status st = study_model(cfg, model, samples, 1, progress, progress_ctx, out, &trace_s, err);
    if (st) ap_summary_free(out);
    return st;
}

ap_status ap_study_trace(const ap_study_config *cfg, const ap_model *model, const ap_samples *samples,
                         ap_study_progress_fn progress, void *progress_ctx, double *seconds, ap_error *err)
{
    if (!cfg->save_trace) return ap_error_set(err, AP_ERR_USAGE, "a trace needs a file to be written to");
    return study_model(cfg, model, samples, 0, progress, progress_ctx, NULL, seconds, err);
}

ap_status ap_study_replay(const ap_study_config *cfg, const char *trace_path, ap_study_progress_fn progress,
                          void *progress_ctx, ap_summary *out, ap_error *err)
{
    memset(out, 0, sizeof *out);
    if (cfg->mode != AP_STUDY_ISOLATED)
        return ap_error_set(err, AP_ERR_USAGE, "a cascade or an eval needs the model: a saved trace replays isolated only");
    batch_source src = {.sharded = cfg->shard && ap_mpi_size() > 1};
    ap_status st = ap_trace_reader_open(trace_path, &src.reader, err);
    if (st) return src.sharded ? ap_mpi_agree(st, err) : st;
    const ap_trace *info = ap_trace_reader_info(src.reader);
    /* the summary names the text and window length the trace was made from */
    ap_study_config from_trace = *cfg;
    if (info->input_sha256[0]) from_trace.input_source = info->input_source, from_trace.input_sha256 = info->input_sha256;
    if (info->max_length > 0) from_trace.max_length = info->max_length;
    cfg = &from_trace;
    int *li = malloc((size_t)cfg->n_layers * sizeof *li);
    if (!li) st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    for (int l = 0; !st && l < cfg->n_layers; l++)
        if ((li[l] = ap_trace_layer_index(info, cfg->layers[l])) < 0) {
            char have[256] = "";
            for (int k = 0, used = 0; k < info->n_layers && used < (int)sizeof have - 16; k++)
                used += snprintf(have + used, sizeof have - (size_t)used, k ? ",%d" : "%d", info->layers[k]);
            st = ap_error_set(err, AP_ERR_USAGE, "layer %d: the trace %s holds layers %s; pick among them",
                              cfg->layers[l], trace_path, have);
        }
    for (int h = 0; !st && cfg->heads && h < cfg->n_heads; h++)
        if (cfg->heads[h] < 0 || cfg->heads[h] >= info->n_head)
            st = ap_error_set(err, AP_ERR_USAGE, "head %d: the trace %s has heads 0..%d", cfg->heads[h],
                              trace_path, info->n_head - 1);
    study_acc acc = {0};
    double trace_s = 0;
    const double t0 = now_s();
    if (!st && src.sharded) st = shard_check(cfg, info->n_samples, err);
    if (!st) st = run_batches(cfg, &src, info, li, 1, progress, progress_ctx, &acc, &trace_s, err);
    int summarise = 1;
    if (src.sharded) {
        st = ap_mpi_agree(st, err);
        if (!st) st = study_mpi_gather(&acc, info->n_samples, &trace_s, err);
        summarise = ap_mpi_rank() == 0;
    }
    if (!st && summarise) st = study_summary(&acc, cfg, info, info->n_samples, "cpu", "(replay of a saved trace)", 0, out, err);
    if (!st && summarise) snprintf(out->model_dtype, sizeof out->model_dtype, "%s", info->model_dtype);
    if (!st && summarise) out->study_s = now_s() - t0;
    if (st) ap_summary_free(out);
    study_acc_free(&acc);
    free(li);
    ap_trace_reader_close(src.reader);
    return st;
}
