/* study_internal.h — what the study's files share; not public. */
#ifndef AP_STUDY_INTERNAL_H
#define AP_STUDY_INTERNAL_H

#include <pthread.h>

#include "../analysis/analysis.h"
#include "../common/pool.h"
#include "study.h"

/* One run (policy × layer) over the whole study. */
typedef struct {
    ap_metric_acc m[AP_M_COUNT];
    double *head_sum, *head_cnt;  /* [n_head * AP_M_COUNT] */
    pthread_mutex_t lock;         /* guards the sketches and the costs */
    double replay_s, kv_bytes, kv_quant_bytes, sketch_bytes;
} study_run;

/* One sample's share of a run, folded into the run in sample order. */
typedef struct {
    ap_moments m[AP_M_COUNT];
    double *head_sum, *head_cnt;  /* [n_head * AP_M_COUNT] */
} study_part;

typedef struct {
    const ap_study_config *cfg;
    int n_head, n_runs;           /* run = policy * n_layers + layer index */
    int head_dim, model_n_layer;
    unsigned char *head_on;       /* [n_head] */
    study_run *runs;              /* [n_runs] */
    int runs_ready;               /* their accumulators and locks initialised */
    /* the batch being replayed */
    int batch_first, batch_cap;
    study_part *parts;            /* [batch_cap * n_runs]: part of (b, run) at b * n_runs + run */
    double *part_heads;           /* storage of the parts' head arrays */
    long long tokens;             /* tokens of the samples folded */
    /* a shard of a study over several processes (mpi.c): ranks other than
     * the first keep their samples' parts, in order, to send to rank 0 */
    int keep_parts;
    double *kept;                 /* [kept_n * n_runs * study_part_doubles()] */
    size_t kept_n, kept_cap;      /* samples kept, and room for */
} study_acc;

ap_status study_acc_init(study_acc *a, const ap_study_config *cfg, const ap_trace *info, int batch_cap,
                         ap_error *err);
void study_acc_free(study_acc *a);
/* Clears the parts for a batch starting at sample `first`. */
void study_acc_begin_batch(study_acc *a, int first);
/* Adds one replayed row's metrics to part (b, run) and the run's sketches. */
ap_status study_acc_row(study_acc *a, int b, int run, const ap_row_event *ev, ap_error *err);
/* The same from the row's metric values m[AP_M_COUNT] (computed on a device). */
ap_status study_acc_values(study_acc *a, int b, int run, int head, const double *m, ap_error *err);
/* The same for a sample's rows folded elsewhere (a device) in the order
 * study_acc_values would fold them: m[AP_M_COUNT] moments, head_sum and
 * head_cnt [n_head * AP_M_COUNT]; their quantiles go to the runs' sketches
 * separately (ap_qsketch_add_bins). Exact when the part is empty. */
void study_acc_add_part(study_acc *a, int b, int run, const ap_moments *m, const double *head_sum,
                        const double *head_cnt);
/* Folds the batch's n parts into the runs, in sample order (or, with
 * keep_parts, appends them to kept). */
ap_status study_acc_end_batch(study_acc *a, int n, ap_error *err);
/* A part as doubles: its moments, then its per-head sums and counts. */
size_t study_part_doubles(const study_acc *a);
/* Folds n samples' parts (as kept by another process) in, the first being
 * sample `first` of the study. */
ap_status study_acc_fold_parts(study_acc *a, int first, int n, const double *parts, ap_error *err);

/* ---- eval (eval.c) ---- */
/* What a cascade's logits sink needs to score a batch's streams. */
typedef struct {
    study_acc *acc;
    const ap_trace *tr;          /* the batch: its token ids and lengths */
    int full_policy;             /* the index of `full` among the config's policies */
    ap_pool *pool;
    /* made at the first step, freed by study_eval_free */
    int *ref_of;                 /* [tr->n_samples]: the active index of each sample's full stream */
    ap_next_ref *refs;           /* [tr->n_samples]: each sample's full cache, this step */
    double *prob;                /* [tr->n_samples * vocab]: their probabilities */
} study_eval;
/* An ap_logits_sink: each stream's next-token metrics into its part. */
ap_status study_eval_step(void *ctx, const ap_logits_step *step, ap_error *err);
/* An ap_next_sink: one stream's metrics, computed on the device, into its part. */
ap_status study_eval_values(void *ctx, int sample, int policy, int t, const double values[4], ap_error *err);
void study_eval_free(study_eval *ev);

/* ---- several processes (mpi.c) ---- */
/* This process's contiguous share of n_samples. */
void study_shard_of(int n_samples, int *first, int *count);
/* Rank 0 receives every other rank's shard and folds it in after its own. */
ap_status study_mpi_gather(study_acc *a, int n_samples, double *trace_s, ap_error *err);

/* Every option that shaped the numbers, as a JSON object (malloc'ed). */
char *study_config_json(const ap_study_config *cfg, int n_samples);

/* The summary of the accumulated study. */
ap_status study_summary(const study_acc *a, const ap_study_config *cfg, const ap_trace *info,
                        int n_samples, const char *backend, const char *device_name,
                        double trace_s, ap_summary *out, ap_error *err);

#ifdef AP_HAVE_CUDA
/* The isolated replay of a batch whose trace is on the CUDA device
 * (ap_trace_run_device), folded into acc's parts of the batch and its runs'
 * sketches there: only those accumulators come back (pool: for the
 * sketches' merge); kv_bytes[run] raised to the most any sample keeps;
 * seconds: the replay's wall time. */
ap_status study_isolated_gpu(const ap_study_config *cfg, const ap_trace *trace, study_acc *acc, ap_pool *pool,
                             double *kv_bytes, double *seconds, ap_error *err);
/* Folds a batch's metric values on the device (study/cuda/fold_gpu.cu),
 * values[b][run][step][head][AP_M_COUNT] for n_steps measured steps, of
 * which sample b has steps_of[b], into acc's parts of the batch (as
 * study_acc_values would, bit for bit) and the runs' sketches. */
ap_status study_fold_gpu(study_acc *acc, const double *values, int n_samples, int n_steps, const int *steps_of,
                         ap_pool *pool, ap_error *err);
/* Free memory on the current CUDA device (0 when unknown). */
size_t study_gpu_free_bytes(void);
#endif

#endif
