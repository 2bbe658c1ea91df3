/* tracer.h — drives the engine over token streams (docs/architecture.md):
 * samples, the reference trace (and its file), and the isolated and cascade
 * replays of eviction policies.
 *
 * The tracer does not compute metrics: each replayed row is handed, with the
 * reference row and the retained set, to a caller's ap_row_sink (study/
 * feeds it to analysis/), so the folder depends on engine/ and sketch/ only.
 * A trace holds a batch of samples: a study traces, replays and frees one
 * batch at a time. */
#ifndef AP_TRACER_H
#define AP_TRACER_H

#include <stddef.h>

#include "../engine/engine.h"
#include "../sketch/policy.h"

/* ---- samples -------------------------------------------------------------- */

typedef struct {
    int n;       /* samples */
    int *len;    /* [n] tokens of each */
    int **ids;   /* [n][len] */
    int documents;  /* documents read */
    int skipped;    /* windows shorter than min_length */
} ap_samples;

/* Splits text into documents at blank lines and packs consecutive documents
 * into windows of at most max_length tokens, each starting with
 * <|endoftext|> (when the vocabulary has it). A document longer than a
 * window is cut. Windows shorter than min_length are skipped; at most
 * n_samples are taken. */
ap_status ap_samples_make(ap_tokenizer *tok, const char *text, size_t n_text, int n_samples,
                          int max_length, int min_length, ap_samples *out, ap_error *err);
void ap_samples_free(ap_samples *s);

/* ---- reference trace ------------------------------------------------------ */

typedef struct {
    int n_samples, n_layers, n_head, head_dim;
    int *layers;             /* [n_layers] probed layers */
    int *len;                /* [n_samples] */
    int **ids;               /* [n_samples][len] */
    float **attn;            /* [n_samples * n_layers]: [H, T, T] */
    float **q, **k, **v;     /* [n_samples * n_layers]: [H, T, head_dim] */
    float **o;               /* [n_samples * n_layers]: [H, T, head_dim] attention outputs */
    char model_source[1024];
    char model_sha256[65];
    char file_sha256[65];   /* of the header of the file it was read from ("" for a fresh trace) */
    int model_n_layer, model_vocab;
    char model_dtype[8];    /* the weights as stored: F32, F16, BF16 ("" unknown) */
    char input_source[1024], input_sha256[65]; /* the text the samples came from ("" unknown) */
    int max_length;         /* the window length asked for (0 unknown) */
    char *config_json;      /* what shaped the trace, as saved in its file (owned; may be NULL) */
    double seconds;
    ap_engine *device;      /* non-NULL: attn, q, k, v, o are buffers on this engine's device */
    float **logits;         /* [n_samples]: [T, vocab] the prefill's next-token logits, on the
                               device (ap_trace_run_device with logits), or NULL */
} ap_trace;

/* Allocates the arrays of a trace of these shapes (buffers left NULL). */
ap_status ap_trace_alloc(ap_trace *trace, int n_samples, int n_layers, ap_error *err);

typedef void (*ap_progress_fn)(void *ctx, const char *what, double fraction);

/* One prefill per sample, capturing attention, q, k, v of `layers`. */
ap_status ap_trace_run(ap_engine *engine, const ap_model *model, const ap_samples *samples,
                       const int *layers, int n_layers, ap_trace *out, ap_progress_fn progress,
                       void *progress_ctx, ap_error *err);
/* The same with attn, q, k, v and o left on a CUDA engine's device (for a
 * replay there; the trace must be freed before the engine); with_logits:
 * also every position's next-token logits (eval's reference, docs/eval.md). */
ap_status ap_trace_run_device(ap_engine *engine, const ap_model *model, const ap_samples *samples,
                              const int *layers, int n_layers, int with_logits, ap_trace *out,
                              ap_progress_fn progress, void *progress_ctx, ap_error *err);
void ap_trace_free(ap_trace *trace);
/* Index of layer in trace->layers, or -1. */
int ap_trace_layer_index(const ap_trace *trace, int layer);

/* ---- trace files (trace_file.c) -----------------------------------------------
 * Safetensors with ids.<s>, attn.<s>.<l>, q/k/v/o.<s>.<l>, the model, the
 * shapes, the config and a checksum of every sample. Written and read one
 * batch of samples at a time, so that a trace larger than memory streams. */

typedef struct ap_trace_writer ap_trace_writer;
/* A file for n_samples samples of lengths len[], with like's layers, heads,
 * model and config_json; written through a temporary file renamed by close. */
ap_status ap_trace_writer_open(const char *path, const ap_trace *like, const int *len, int n_samples,
                               ap_trace_writer **out, ap_error *err);
/* Appends the batch's samples (the next ones in order). */
ap_status ap_trace_writer_add(ap_trace_writer *w, const ap_trace *batch, ap_error *err);
/* ok and every sample written: renames into place; else removes the temporary. */
ap_status ap_trace_writer_close(ap_trace_writer *w, int ok, ap_error *err);
/* The temporary file being written (for removal on a signal), or NULL. */
const char *ap_trace_writer_temp_path(const ap_trace_writer *w);

typedef struct ap_trace_reader ap_trace_reader;
ap_status ap_trace_reader_open(const char *path, ap_trace_reader **out, ap_error *err);
void ap_trace_reader_close(ap_trace_reader *r);
/* The file's shapes: n_samples, layers, heads, len[] of every sample, model
 * and config_json; no tensors. */
const ap_trace *ap_trace_reader_info(const ap_trace_reader *r);
/* Samples s0..s0+n-1 into a new batch (ap_trace_free), each checked: its
 * checksum, probability rows in [0, 1] summing to 1 within 1e-4 (zero past
 * the diagonal), finite vectors; AP_ERR_INPUT names the tensor, sample,
 * layer and row otherwise. */
ap_status ap_trace_reader_read(ap_trace_reader *r, int s0, int n, ap_trace *batch, ap_error *err);

/* Whole-trace conveniences on the above. */
ap_status ap_trace_save(const ap_trace *trace, const char *path, ap_error *err);
ap_status ap_trace_load(const char *path, ap_trace *out, ap_error *err);

/* ---- replay ----------------------------------------------------------------- */

/* One replayed row: the reference row p and the policy's row q over
 * absolute positions 0..t (n = t + 1), the retained set (t included) and the
 * reference values of the layer's head. */
typedef struct {
    int policy;     /* index into the policies replayed together */
    int sample, layer, head, t, n;
    const float *p, *q;
    const unsigned char *kept;
    const float *v;   /* [n, head_dim] values: the reference ones (--quant: as the quantised cache holds them) */
    const float *o_p; /* [head_dim] reference attention output of row t */
    int head_dim;
} ap_row_event;

typedef ap_status (*ap_row_sink)(void *ctx, const ap_row_event *ev, ap_error *err);

/* One cascade decode step's next-token logits (attnprobe eval): the step at
 * position t of n_active streams, stream a being (sample[a], policy[a]). */
typedef struct {
    int t, n_active, vocab;
    const int *sample, *policy; /* [n_active] */
    const float *logits;        /* [n_active, vocab] */
} ap_logits_step;

typedef ap_status (*ap_logits_sink)(void *ctx, const ap_logits_step *step, ap_error *err);

/* eval on the device: one stream's next-token metrics at step t (measured:
 * t >= warmup, a next token exists) as values[4] = nll, next_kl, next_top1,
 * full_argmax_rank, computed where the logits are (the full stream's of the
 * same sample is the reference). */
typedef ap_status (*ap_next_sink)(void *ctx, int sample, int policy, int t, const double values[4], ap_error *err);

typedef struct {
    int warmup, stride;      /* rows at t >= warmup with t % stride == 0 are emitted */
    ap_row_sink sink;
    void *sink_ctx;
    ap_progress_fn progress;
    void *progress_ctx;
    /* cascade on a CUDA engine: run the policies on the host instead of the
     * device (the same retained sets, slower; for comparison) */
    int host_policies;
    /* cascade: every step's next-token logits go here too (NULL: none); the
     * policies then run on the host */
    ap_logits_sink logits_sink;
    void *logits_ctx;
    /* cascade on a CUDA engine whose policies all run on the device: the
     * next-token metrics there, delivered here instead of the logits */
    ap_next_sink next_sink;
    void *next_ctx;
} ap_replay_opts;

/* Memory a policy used, the most over samples (and layers in cascade). */
typedef struct {
    double kv_bytes;     /* retained positions x (k + v) x head_dim x fp32, all heads */
    double kv_quant_bytes; /* --quant: the same cache as quantised (codes, scales, fp16 residual); else 0 */
    double sketch_bytes; /* ap_policy_state_bytes */
    double seconds;
    /* cascade only, shared by all policies: of `seconds`, the time inside the
     * engine's decode steps and inside the policies' updates (the rest is
     * building the retained sets and emitting rows). With the policies on the
     * GPU their updates run inside the decode steps: observe_seconds is 0;
     * the steps then run queued, so decode_seconds is the host's time in the
     * decode calls and part of the GPU's time shows in the rest (the
     * synchronous copies of emitted rows wait for it). */
    double decode_seconds, observe_seconds;
} ap_replay_cost;

/* Isolated replay of sample s (docs/architecture.md): only layer
 * trace->layers[li] is capped; the policy's row at t is the reference row
 * restricted to kept ∪ {t} and renormalised. Needs the trace only; replays
 * of different (sample, layer, policy) may run at the same time. Events say
 * policy 0 and the sample's index in the trace. */
ap_status ap_replay_isolated(const ap_trace *trace, int s, int li, const ap_policy_params *params,
                             const ap_replay_opts *opts, ap_replay_cost *cost, ap_error *err);

/* Cascade replay: every layer's cache capped by its own instance of the
 * policy; all (sample, policy) streams decode together, one batched step per
 * token. Rows of the trace's layers are emitted; with the policies on a
 * device, rows of different (sample, policy) streams reach the sink from
 * several threads at once. cost: [n_policies]. */
ap_status ap_replay_cascade(ap_engine *engine, const ap_trace *trace,
                            const ap_policy_params *params, int n_policies,
                            const ap_replay_opts *opts, ap_replay_cost *cost, ap_error *err);

#endif
