/* mpi.c — a study over several processes (docs/mpi.md): samples are split
 * into contiguous shards, rank r taking the r-th; every rank replays its
 * shard; ranks other than the first keep their samples' accumulator parts
 * and send them, with their quantile sketches, to rank 0, which folds them
 * after its own in sample order, so the statistics are the single process's
 * to the last bit. Without Open MPI (or when not started by mpirun) there
 * is one process and every function here is trivial. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "study_internal.h"

#ifdef AP_HAVE_MPI
#include <mpi.h>
#endif

static int started, rank_, size_ = 1, agreed;

/* Launched by mpirun (Open MPI or a PMIx launcher such as Slurm's srun)? A
 * plain run does not initialise MPI at all, so it stays exactly as fast and
 * as quiet as a build without MPI. */
static int launched_by_mpi(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_SIZE");
}

int ap_mpi_start(int *argc, char ***argv)
{
#ifdef AP_HAVE_MPI
    if (!launched_by_mpi()) return 0;
    if (MPI_Init(argc, argv) != MPI_SUCCESS) return -1;
    started = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
#else
    (void)argc, (void)argv;
#endif
    return 0;
}

void ap_mpi_stop(int code)
{
#ifdef AP_HAVE_MPI
    if (!started) return;
    /* a rank that failed alone would leave the others waiting in a
     * collective: end them all, with its code */
    if (code != 0 && !agreed && size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
    MPI_Finalize();
#else
    (void)code;
#endif
}

int ap_mpi_built(void)
{
#ifdef AP_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

int ap_mpi_rank(void) { return rank_; }
int ap_mpi_size(void) { return size_; }
int ap_mpi_failure_reported(void) { return agreed && rank_ != 0; }

int ap_mpi_local_rank(void)
{
    const char *v = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    if (!v) v = getenv("SLURM_LOCALID");
    return v ? atoi(v) : 0;
}

ap_status ap_mpi_agree(ap_status st, ap_error *err)
{
#ifdef AP_HAVE_MPI
    if (!started || size_ == 1) return st;
    /* the lowest failing rank tells everyone its status and message */
    int mine = st ? rank_ : size_, first = size_;
    MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (first == size_) return AP_OK;
    int code = st;
    char msg[sizeof err->msg];
    snprintf(msg, sizeof msg, "%s", st ? err->msg : "");
    MPI_Bcast(&code, 1, MPI_INT, first, MPI_COMM_WORLD);
    MPI_Bcast(msg, (int)sizeof msg, MPI_CHAR, first, MPI_COMM_WORLD);
    agreed = 1;
    return ap_error_set(err, (ap_status)code, "rank %d of %d: %s", first, size_, msg);
#else
    (void)err;
    return st;
#endif
}

ap_status ap_mpi_use_local_gpu(int share, ap_error *err)
{
    const int gpus = ap_cuda_devices(), local = ap_mpi_local_rank();
    const char *env = getenv("ATTNPROBE_SHARE_GPU");
    share = share || (env && !strcmp(env, "1"));
    if (gpus == 0) return AP_OK; /* the engine says what is missing when one is asked for */
    if (local >= gpus && !share)
        return ap_error_set(err, AP_ERR_USAGE, "--device cuda: local rank %d on a node with %d GPU%s: start at "
                            "most %d processes a node (or set ATTNPROBE_SHARE_GPU=1 to share)", local, gpus,
                            gpus == 1 ? "" : "s", gpus);
    return ap_cuda_use_device(local % gpus, err);
}

void study_shard_of(int n_samples, int *first, int *count)
{
    const long long lo = (long long)n_samples * rank_ / size_, hi = (long long)n_samples * (rank_ + 1) / size_;
    *first = (int)lo;
    *count = (int)(hi - lo);
}

#ifdef AP_HAVE_MPI
enum { TAG_HEAD = 1, TAG_PARTS, TAG_COSTS, TAG_SKETCH_SIZE, TAG_SKETCHES };

/* What a rank other than the first sends: made before anything is sent, so
 * that a failure here is agreed on, not met by rank 0 waiting for a message. */
enum { N_COSTS = 4 }; /* a run's costs a rank sends */

typedef struct {
    double head[3];        /* samples kept, tokens, trace seconds */
    size_t n_parts;        /* doubles in the kept parts */
    double *costs;         /* [n_runs * N_COSTS]: replay seconds, kv bytes, quantised kv bytes, state bytes */
    unsigned char *sketches;
    unsigned long long bytes;
} shard_message;

static ap_status pack_shard(const study_acc *a, double trace_s, shard_message *msg, ap_error *err)
{
    *msg = (shard_message){{(double)a->kept_n, (double)a->tokens, trace_s}, 0, NULL, NULL, 0};
    msg->n_parts = a->kept_n * (size_t)a->n_runs * study_part_doubles(a);
    for (int r = 0; r < a->n_runs; r++)
        for (int m = 0; m < AP_M_COUNT; m++) msg->bytes += ap_qsketch_packed_size(&a->runs[r].m[m].q);
    if (msg->n_parts > INT_MAX || msg->bytes > INT_MAX)
        return ap_error_set(err, AP_ERR_USAGE, "rank %d's shard is too large to send in one message (%zu values): "
                            "run more processes", rank_, msg->n_parts);
    msg->costs = malloc((size_t)a->n_runs * N_COSTS * sizeof *msg->costs);
    msg->sketches = malloc(msg->bytes ? (size_t)msg->bytes : 1);
    if (!msg->costs || !msg->sketches)
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory packing rank %d's accumulators", rank_);
    unsigned char *p = msg->sketches;
    for (int r = 0; r < a->n_runs; r++) {
        double *c = &msg->costs[N_COSTS * r];
        c[0] = a->runs[r].replay_s, c[1] = a->runs[r].kv_bytes, c[2] = a->runs[r].kv_quant_bytes;
        c[3] = a->runs[r].sketch_bytes;
        for (int m = 0; m < AP_M_COUNT; m++) {
            ap_qsketch_pack(&a->runs[r].m[m].q, p);
            p += ap_qsketch_packed_size(&a->runs[r].m[m].q);
        }
    }
    return AP_OK;
}

static void send_shard(const study_acc *a, const shard_message *msg)
{
    MPI_Send(msg->head, 3, MPI_DOUBLE, 0, TAG_HEAD, MPI_COMM_WORLD);
    MPI_Send(a->kept, (int)msg->n_parts, MPI_DOUBLE, 0, TAG_PARTS, MPI_COMM_WORLD);
    MPI_Send(msg->costs, a->n_runs * N_COSTS, MPI_DOUBLE, 0, TAG_COSTS, MPI_COMM_WORLD);
    MPI_Send(&msg->bytes, 1, MPI_UNSIGNED_LONG_LONG, 0, TAG_SKETCH_SIZE, MPI_COMM_WORLD);
    MPI_Send(msg->sketches, (int)msg->bytes, MPI_BYTE, 0, TAG_SKETCHES, MPI_COMM_WORLD);
}

/* Rank 0: rank `from`'s shard, its samples starting at `first`, folded in.
 * The senders are committed once they start, so a failure here (memory, a
 * malformed sketch) cannot be agreed on: it ends every rank (MPI_Abort). */
static void receive_shard(study_acc *a, int from, int first, double *trace_s)
{
    ap_error err;
    double head[3];
    MPI_Recv(head, 3, MPI_DOUBLE, from, TAG_HEAD, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    const int n = (int)head[0];
    const size_t n_parts = (size_t)n * (size_t)a->n_runs * study_part_doubles(a);
    double *parts = malloc((n_parts ? n_parts : 1) * sizeof *parts);
    double *costs = malloc((size_t)a->n_runs * N_COSTS * sizeof *costs);
    ap_status st = parts && costs ? AP_OK : ap_error_set(&err, AP_ERR_RUNTIME, "out of memory");
    unsigned long long bytes = 0;
    unsigned char *sketches = NULL;
    if (!st) {
        MPI_Recv(parts, (int)n_parts, MPI_DOUBLE, from, TAG_PARTS, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Recv(costs, a->n_runs * N_COSTS, MPI_DOUBLE, from, TAG_COSTS, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Recv(&bytes, 1, MPI_UNSIGNED_LONG_LONG, from, TAG_SKETCH_SIZE, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        if (!(sketches = malloc(bytes ? (size_t)bytes : 1))) st = ap_error_set(&err, AP_ERR_RUNTIME, "out of memory");
    }
    if (!st) MPI_Recv(sketches, (int)bytes, MPI_BYTE, from, TAG_SKETCHES, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (!st) st = study_acc_fold_parts(a, first, n, parts, &err);
    const unsigned char *p = sketches;
    size_t left = (size_t)bytes;
    for (int r = 0; r < a->n_runs && !st; r++) {
        study_run *run = &a->runs[r];
        const double *c = &costs[N_COSTS * r];
        run->replay_s += c[0];
        if (c[1] > run->kv_bytes) run->kv_bytes = c[1];
        if (c[2] > run->kv_quant_bytes) run->kv_quant_bytes = c[2];
        if (c[3] > run->sketch_bytes) run->sketch_bytes = c[3];
        for (int m = 0; m < AP_M_COUNT && !st; m++) {
            ap_qsketch q;
            size_t used = 0;
            if (!(st = ap_qsketch_unpack(p, left, &q, &used, &err))) {
                st = ap_qsketch_merge(&run->m[m].q, &q, &err);
                ap_qsketch_free(&q);
                p += used, left -= used;
            }
        }
    }
    free(parts), free(costs), free(sketches);
    if (st) {
        fprintf(stderr, "attnprobe: rank 0 of %d: gathering rank %d's shard: %s\n", size_, from, err.msg);
        MPI_Abort(MPI_COMM_WORLD, st);
    }
    a->tokens += (long long)head[1];
    if (head[2] > *trace_s) *trace_s = head[2]; /* the ranks trace side by side */
}
#endif

ap_status study_mpi_gather(study_acc *a, int n_samples, double *trace_s, ap_error *err)
{
#ifdef AP_HAVE_MPI
    if (!started || size_ == 1) return AP_OK;
    shard_message msg = {{0}, 0, NULL, NULL, 0};
    ap_status st = rank_ != 0 ? pack_shard(a, *trace_s, &msg, err) : AP_OK;
    if (!(st = ap_mpi_agree(st, err))) {
        if (rank_ != 0) send_shard(a, &msg);
        for (int r = 1; rank_ == 0 && r < size_; r++)
            receive_shard(a, r, (int)((long long)n_samples * r / size_), trace_s);
    }
    free(msg.costs), free(msg.sketches);
    return st;
#else
    (void)a, (void)n_samples, (void)trace_s, (void)err;
    return AP_OK;
#endif
}
