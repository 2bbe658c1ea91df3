/* study.h — one study end to end as a library call (docs/architecture.md):
 * samples in batches, the reference trace, the isolated or cascade replay
 * of every policy, the metrics folded into streaming accumulators, the
 * statistics and the summary. The CLI, the benchmarks and the tests call
 * this; nothing else runs a pipeline.
 *
 * A study streams: a batch of samples is traced, replayed, folded into
 * per-sample accumulators and freed before the next, so memory does not grow
 * with the number of samples, and every statistic is the same, to the last
 * bit, whatever the batch size (docs/statistics.md). */
#ifndef AP_STUDY_H
#define AP_STUDY_H

#include <stdint.h>

#include "../reports/reports.h"
#include "../tracer/tracer.h"

/* isolated and cascade measure attention at the probed layers; eval
 * decodes as cascade does and measures the next-token prediction (the
 * config's layers are then {-1}: the model's output; `full` must be among
 * the policies, as every stream's reference; docs/eval.md). */
typedef enum { AP_STUDY_ISOLATED = 0, AP_STUDY_CASCADE = 1, AP_STUDY_EVAL = 2 } ap_study_mode;

typedef struct {
    /* what is measured */
    const int *layers;            /* [n_layers] probed layers (the model's indices) */
    int n_layers;
    const int *heads;             /* [n_heads] heads whose rows count; NULL: all */
    int n_heads;
    const ap_policy_params *policies; /* [n_policies], distinct */
    int n_policies;
    ap_study_mode mode;
    int warmup, stride;           /* rows at t >= warmup with t % stride == 0 are measured */
    /* statistics */
    int bootstrap;                /* resamples for the CI of the mean (0: none) */
    uint64_t seed;
    const char *compare_to;       /* every other policy is compared, paired over samples, with
                                     this one's run of the same layer (NULL: none) */
    /* how it runs */
    ap_backend backend;
    ap_precision precision;
    int batch_size;               /* samples a batch; 0: as many as 256 MiB of trace in host
                                     memory (a quarter of the free memory when less), or a
                                     third of the free device memory for a device replay */
    int threads;                  /* isolated replays side by side; 0: one per core */
    int host_replay;              /* on a CUDA engine, run the policies (and eval's next-token
                                     metrics) on the host anyway: the device keeps the same
                                     sets; for comparison */
    /* recorded in the summary */
    const char *input_source, *input_sha256;
    const char *model_dtype;      /* the weights' stored dtype (F32, F16, BF16), for memory in it */
    const char *sketch_memory;    /* how the sketches were sized (--sketch-memory), or NULL */
    int max_length;               /* the window length asked for */
    int align_index;              /* the seed study's slot-index comparison was asked for */
    /* the reference trace is also written here, sample by sample (NULL: not) */
    const char *save_trace;
    /* started by mpirun: split the samples over the processes, rank 0 makes
     * the summary (docs/mpi.md); 0: this process does the whole study */
    int shard;
} ap_study_config;

/* What the study is doing, for a progress bar. */
typedef struct {
    const char *stage;            /* "trace", "replay", "cascade" */
    double samples_done;          /* may be fractional within a batch */
    int samples_total;
    double tokens_done;
    long long tokens_total;
    double elapsed_s;
} ap_study_progress;

typedef void (*ap_study_progress_fn)(void *ctx, const ap_study_progress *p);

/* The whole study of a model on tokenized samples: a summary (caller frees
 * with ap_summary_free). The engine is created on cfg->backend. */
ap_status ap_study_run(const ap_study_config *cfg, const ap_model *model, const ap_samples *samples,
                       ap_study_progress_fn progress, void *progress_ctx, ap_summary *out,
                       ap_error *err);

/* An isolated study of a saved trace: cfg->layers must be among its layers. */
ap_status ap_study_replay(const ap_study_config *cfg, const char *trace_path,
                          ap_study_progress_fn progress, void *progress_ctx, ap_summary *out,
                          ap_error *err);

/* The reference trace only, written to cfg->save_trace; *seconds: the trace's time. */
ap_status ap_study_trace(const ap_study_config *cfg, const ap_model *model, const ap_samples *samples,
                         ap_study_progress_fn progress, void *progress_ctx, double *seconds,
                         ap_error *err);

/* ---- several processes (mpi.c, docs/mpi.md) ------------------------------------ */

/* Initialises MPI when the process was started by mpirun or srun (a plain
 * run never touches MPI); 0 on success. */
int ap_mpi_start(int *argc, char ***argv);
/* Ends MPI; a failure that the ranks did not agree on (one rank failed
 * alone) aborts every rank with code. */
void ap_mpi_stop(int code);
int ap_mpi_built(void);           /* this build has MPI */
int ap_mpi_rank(void);
int ap_mpi_size(void);
int ap_mpi_local_rank(void);      /* the rank among the processes of this node */
/* Every rank returns the first failing rank's status, its message naming
 * the rank: call it on every rank at the same point. */
ap_status ap_mpi_agree(ap_status st, ap_error *err);
/* Binds this process to the GPU of its local rank; more ranks on a node than
 * GPUs is AP_ERR_USAGE unless share (or ATTNPROBE_SHARE_GPU=1): then they
 * take the GPUs round-robin. Without GPUs: nothing. */
ap_status ap_mpi_use_local_gpu(int share, ap_error *err);
/* A failure every rank knows of, reported by rank 0: the others stay quiet. */
int ap_mpi_failure_reported(void);

/* ---- batch grids (docs/batch.md) ---------------------------------------------- */

enum { AP_GRID_MAX_CELLS = 10000 };

/* One cell of a grid: one study, given as the flags of `attnprobe run`. */
typedef struct {
    char *study;                  /* the study's name in the grid */
    char *id;                     /* "<study>-<12 hex digits of the flags' SHA-256>": the cell file's name */
    int argc;
    char **argv;                  /* "run", "--budget", "16,32", ...; NULL-terminated */
} ap_grid_cell;

typedef struct {
    int n_cells;
    ap_grid_cell *cells;          /* in grid order */
    char *grid_json;              /* the grid as read, compact JSON */
} ap_grid;

/* Parses a grid file's text: every study's settings over the defaults, one
 * cell per combination of the values listed for the keys that change the
 * trace (model, input, samples, max_length, mode, ...). AP_ERR_INPUT names
 * source, the study and the key, with what is accepted. */
ap_status ap_grid_parse(const char *text, size_t n, const char *source, ap_grid *out, ap_error *err);
void ap_grid_free(ap_grid *g);

/* A batch's files (docs/batch.md). A cell's summary carries the cell (id,
 * study, flags); a rerun skips a cell whose file at path holds the same. */
#define AP_BATCH_SCHEMA "attnprobe.batch/1"
int ap_batch_cell_done(const char *path, const ap_grid_cell *cell);
ap_status ap_batch_cell_write(const char *path, const ap_grid_cell *cell, ap_summary *summary, ap_error *err);
/* From the cell files in cells_dir: batch.json (the grid and every cell's
 * summary) and the tidy CSV (one row per cell x run x metric). */
ap_status ap_batch_write_json(const ap_grid *g, const char *cells_dir, const char *path, ap_error *err);
ap_status ap_batch_write_csv(const ap_grid *g, const char *cells_dir, const char *path, ap_error *err);

/* The trace file being written right now, or NULL: a signal handler removes it. */
const char *ap_study_temp_file(void);

#endif
