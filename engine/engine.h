/* engine.h — GPT-2 model, tokenizer and forward passes (docs/architecture.md).
 *
 * The only header other folders include from engine/. Everything crosses it
 * as plain arrays with their shapes in comments; no backend type leaks out.
 *
 *   ap_model      weights + config in host memory (loaded or synthetic)
 *   ap_tokenizer  GPT-2 byte-level BPE
 *   ap_engine     a backend (cpu, cuda) bound to a model: prefill, decode
 *   ap_stream     one decoding stream's KV cache, for decode_step
 *
 * What works on device memory directly (device buffers for captures, the
 * decode step over device-resident retained lists) is in engine_device.h,
 * for the code that keeps its own state on the GPU.
 */
#ifndef AP_ENGINE_H
#define AP_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"
#include "safetensors.h"

/* ---- model ------------------------------------------------------------ */

typedef struct {
    int n_layer;      /* transformer blocks */
    int n_head;       /* attention heads per block */
    int n_embd;       /* width C; head_dim = n_embd / n_head */
    int n_ctx;        /* learned positions (max sequence length) */
    int vocab_size;   /* V: real vocabulary */
    int padded_vocab; /* Vp >= V: rows of wte as stored (llm.c pads) */
    float ln_eps;     /* LayerNorm epsilon */
} ap_config;

/* Parameter tensors, fp32, row-major. Matrices are stored [in, out] (the
 * Hugging Face Conv1D layout) so that a forward product is x[T,in] @ W. */
typedef struct {
    float *wte;        /* [Vp, C] token embedding, tied LM head */
    float *wpe;        /* [n_ctx, C] */
    float *ln1_w, *ln1_b;      /* [L, C] */
    float *attn_w;             /* [L, C, 3C] q|k|v */
    float *attn_b;             /* [L, 3C] */
    float *attn_proj_w;        /* [L, C, C] */
    float *attn_proj_b;        /* [L, C] */
    float *ln2_w, *ln2_b;      /* [L, C] */
    float *fc_w;               /* [L, C, 4C] */
    float *fc_b;               /* [L, 4C] */
    float *fc_proj_w;          /* [L, 4C, C] */
    float *fc_proj_b;          /* [L, C] */
    float *lnf_w, *lnf_b;      /* [C] */
} ap_weights;

typedef struct ap_tokenizer ap_tokenizer;

typedef struct {
    ap_config config;
    ap_weights w;
    float *storage;        /* one allocation holding every tensor above */
    size_t n_params;       /* floats in storage (padded vocab rows included) */
    char source[1024];     /* what was asked for: path or random:SPEC */
    char dir[1024];        /* model folder ("" for a file or random model) */
    char sha256[65];       /* of the weights file; of the spec for random */
    char dtype[8];         /* dtype as stored: F32, F16, BF16 */
} ap_model;

/* Loads `spec`: a Hugging Face folder (config.json + model.safetensors), a
 * .safetensors file next to its config.json, an llm.c checkpoint (.bin), or
 * random:gpt2-small / random:L=2,H=4,D=64,V=512,T=256,seed=1. */
ap_status ap_model_load(const char *spec, ap_model **out, ap_error *err);
void ap_model_free(ap_model *model);

/* Parameters a checkpoint holds (real vocabulary, no padding). */
size_t ap_model_param_count(const ap_config *c);

/* Hex SHA-256 of a buffer (out: 65 chars). */
void ap_sha256_hex(const void *data, size_t n, char out[65]);

/* ---- tokenizer -------------------------------------------------------- */

/* From a folder holding vocab.json+merges.txt or encoder.json+vocab.bpe. */
ap_status ap_tokenizer_load_dir(const char *dir, ap_tokenizer **out, ap_error *err);
ap_status ap_tokenizer_load(const char *vocab_json, const char *merges, ap_tokenizer **out,
                            ap_error *err);
void ap_tokenizer_free(ap_tokenizer *tok);
int ap_tokenizer_vocab_size(const ap_tokenizer *tok);
/* Id of <|endoftext|>, or -1 when the vocabulary has none. */
int ap_tokenizer_eot(const ap_tokenizer *tok);

/* Encodes n bytes of text. Invalid UTF-8 is replaced by U+FFFD first (as
 * Python's bytes.decode("utf-8", "replace") does). The literal text
 * "<|endoftext|>" becomes the special token. *ids is malloc'ed (caller frees). */
ap_status ap_tokenizer_encode(ap_tokenizer *tok, const char *text, size_t n, int **ids,
                              size_t *n_ids, ap_error *err);
/* Decodes ids to bytes; *text is malloc'ed and NUL-terminated. */
ap_status ap_tokenizer_decode(const ap_tokenizer *tok, const int *ids, size_t n_ids,
                              char **text, size_t *n_text, ap_error *err);

/* ---- engine ----------------------------------------------------------- */

typedef enum { AP_BACKEND_CPU = 0, AP_BACKEND_CUDA = 1 } ap_backend;
typedef enum { AP_PRECISION_FP32 = 0, AP_PRECISION_TF32, AP_PRECISION_BF16 } ap_precision;

typedef struct ap_engine ap_engine;
typedef struct ap_stream ap_stream;

/* The libraries the engine runs on, for a summary's provenance. */
typedef struct {
    char blas[256];            /* OpenBLAS's configuration string */
    char pcre2[64];
    int cuda_runtime, cuda_driver; /* CUDA's version numbers (e.g. 13000); 0 without CUDA */
} ap_library_versions;
void ap_engine_library_versions(ap_library_versions *out);

/* True when this build has the CUDA backend and a device is present. */
int ap_cuda_available(void);
/* CUDA devices visible to this process (0 without the backend). */
int ap_cuda_devices(void);
/* Engines created from now on run on CUDA device index (several processes
 * on one node: one device each). */
ap_status ap_cuda_use_device(int index, ap_error *err);

/* Starts the backend's one-time costs that need no model on a thread of
 * its own, so that they are paid while the model loads; the next
 * ap_engine_create waits for it. CUDA: the device's context and cuBLAS's
 * first product (0.1 s on an H200, per process, whatever the handle:
 * bench/first-call.cu). Not for a process that picks its device later
 * (ap_cuda_use_device): it would warm the default device. A process that
 * creates no engine calls ap_engine_warm_up_wait before it exits. No-op on
 * the CPU. */
void ap_engine_warm_up(ap_backend backend);
void ap_engine_warm_up_wait(void);

/* Binds a backend to a model. The model must outlive the engine. */
ap_status ap_engine_create(const ap_model *model, ap_backend backend, ap_precision precision,
                           ap_engine **out, ap_error *err);
void ap_engine_free(ap_engine *engine);
const char *ap_engine_device_name(const ap_engine *engine);
ap_backend ap_engine_backend(const ap_engine *engine);
const ap_config *ap_engine_config(const ap_engine *engine);

/* What prefill captures. Every pointer array has n_capture entries, one per
 * layer in `layers`; an array (or an entry) left NULL is not computed.
 * Buffers are caller-owned. */
typedef struct {
    int n_capture;
    const int *layers;  /* [n_capture] layer indices */
    float **attn;       /* each [n_head, T, T]: causal probabilities, 0 above diagonal */
    float **q, **k, **v;/* each [n_head, T, head_dim] */
    float **o;          /* each [n_head, T, head_dim]: attention output sum_j a_j v_j per head
                           (prefill only) */
    float *logits;      /* [T, vocab] or [vocab] with logits_last_only; NULL: none */
    int logits_last_only;
} ap_capture;

/* One causal pass over ids[0..T-1] (T <= n_ctx). */
ap_status ap_engine_prefill(ap_engine *engine, const int *ids, int T, const ap_capture *cap,
                            ap_error *err);

/* n_seq independent passes of the same length T, ids[i] captured into
 * caps[i]: the same as n_seq prefills, faster where the backend batches them
 * (CUDA: one pass over n_seq * T rows). The captures must ask for the same
 * layers and outputs. */
ap_status ap_engine_prefill_batch(ap_engine *engine, int n_seq, const int *const *ids, int T,
                                  const ap_capture *caps, ap_error *err);

/* A decoding stream: KV cache of every layer for up to max_len positions,
 * addressed by absolute position. Which cached positions a step may attend
 * to is chosen by the caller at each step (the policy's kept set). */
ap_status ap_stream_create(ap_engine *engine, int max_len, ap_stream **out, ap_error *err);
void ap_stream_free(ap_stream *stream);
/* Next position this stream decodes (0 for a new stream). */
int ap_stream_pos(const ap_stream *stream);

/* One batched decode step. All streams decode the position they are at.
 *
 *   streams  [n_stream]
 *   tokens   [n_stream] token fed at the stream's position t
 *   kept     [n_stream][n_layer * n_head]: positions (< t) head (l,h) attends
 *            to besides t itself; NULL = all of 0..t-1
 *   n_kept   [n_stream][n_layer * n_head] lengths of those lists
 *
 * Captured outputs (cap->layers as in prefill; T is 1):
 *   attn[i]   [n_stream, n_head, n_ctx] row over absolute positions 0..t,
 *             zero at positions not attended to (entries past t untouched)
 *   q,k,v[i]  [n_stream, n_head, head_dim] of the new position
 *   logits    [n_stream, vocab]
 * Each stream's position then advances by one. */
typedef struct {
    int n_stream;
    ap_stream *const *streams;
    const int *tokens;
    const int *const *const *kept;
    const int *const *n_kept;
} ap_decode_batch;

ap_status ap_engine_decode_step(ap_engine *engine, const ap_decode_batch *batch,
                                const ap_capture *cap, ap_error *err);

#endif
