/* cuda_backend.cu — the CUDA backend: cuBLAS for the matrix products, small
 * CUDA kernels (kernels.cuh) for embedding, LayerNorm, GELU, bias, residual
 * and the causal softmax, launches recorded as CUDA graphs. Same layout and order of operations as engine/cpu/forward.c, so
 * the CPU backend can check it.
 *
 * cuBLAS is column-major; a row-major X[R, K] is a column-major X^T with
 * leading dimension K, so out[T, OC] = in[T, IC] @ W[IC, OC] is computed as
 * out^T = W^T in^T: gemm(N, N, m = OC, n = T, k = IC, W ld OC, in ld IC).
 *
 * Precision: fp32 (pedantic cuBLAS math: no tensor-core rounding), tf32
 * (tensor cores with TF32 inputs), bf16 (weights and activations rounded to
 * bf16 for the output projection and the MLP, fp32 accumulation; the q/k/v
 * projection and the attention products in TF32, because q and k decide the
 * probabilities this tool measures: docs/precision.md).
 *
 * The prefill touches each activation as few times as it can: the q/k/v
 * bias and the MLP's bias and GELU ride in the products' cublasLt epilogues,
 * each residual add runs inside the LayerNorm after it, LayerNorm and the MLP
 * write the bf16 copy the next product reads, the softmax reads a row once
 * and writes it once (one warp per row, the row in registers), and the
 * attention products skip the blocks above the diagonal (rows in chunks of
 * CAUSAL_CHUNK), batched over every (sequence, head) pair. */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "../engine_internal.h"
}

/* ---- error handling --------------------------------------------------------- */

#include "../../common/cuda_try.h"

#define CUBLAS_TRY(call, what)                                                                \
    do {                                                                                      \
        cublasStatus_t s_ = (call);                                                           \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                      \
            return ap_error_set(err, AP_ERR_RUNTIME, "%s failed (cuBLAS status %d) while %s", \
                                #call, (int)s_, what);                                        \
    } while (0)

extern "C" int ap_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
    return n;
}

#include "kernels.cuh"
#include "fused_attention.cuh"
#include "decode_attention.cuh"

enum { OUT_ATTN, OUT_Q, OUT_K, OUT_V, OUT_O, N_OUT };

/* For capture i and output kind k, the offset (in floats) of its copy in
 * ce->stage, or -1 when the caller did not ask for it. */
typedef struct {
    long long at[N_OUT];
} stage_slots;

/* ---- engine state ---------------------------------------------------------------- */

/* A recorded CUDA graph and the key of the work it replays. Launching ~300
 * kernels one by one costs more host time than the GPU needs to run them
 * (a 1024-token GPT-2-small prefill in bf16), so each entry point records its
 * launches once and replays them while the shapes and buffers stay the same. */
enum { GRAPH_KEY_MAX = 4 + 2 * 64 + 8 };
typedef struct {
    cudaGraphExec_t exec; /* NULL: none recorded */
    long long key[GRAPH_KEY_MAX];
    int n_key;
} graph_cache;

static void graph_cache_clear(graph_cache *g)
{
    if (g->exec) cudaGraphExecDestroy(g->exec);
    g->exec = NULL;
    g->n_key = 0;
}

static int graph_cache_matches(const graph_cache *g, const long long *key, int n_key)
{
    return g->exec && g->n_key == n_key && !memcmp(g->key, key, (size_t)n_key * sizeof *key);
}

typedef struct {
    cublasHandle_t blas;
    cublasLtHandle_t lt; /* the linear layers whose bias and GELU go in the epilogue */
    cudaStream_t stream;
    float *weights;             /* all parameters, same layout as the host model */
    __nv_bfloat16 *weights_bf16;/* bf16 copy for AP_PRECISION_BF16 */
    __nv_bfloat16 *act_bf16;    /* bf16 activations: a product's input [N, C] */
    __nv_bfloat16 *fc_bf16;     /* and the MLP's hidden layer [N, 4C] (inside act_bf16's allocation) */
    size_t act_bf16_n;
    /* scratch, grown on demand */
    float *x, *h, *qkv, *att, *tmp, *fc, *scores, *heads, *logits;
    int *ids, *pos;
    size_t cap_tokens, cap_scores;
    /* decode tables, grown on demand: device, and pinned host staging */
    void *d_tables, *d_ptrs, *d_compact, *h_tables, *h_ptrs, *h_compact;
    size_t d_tables_cap, d_ptrs_cap, d_compact_cap, h_tables_cap, h_ptrs_cap, h_compact_cap;
    /* the device decode step's pinned tables, two sets used in turn: the
     * host fills one while the GPU may still be copying from the other, so
     * a step is queued without waiting for the one before to finish */
    struct {
        void *host; /* [t_of S | max_len S | list_base S | tokens S | pad], then cache pointers [2S] */
        size_t cap;
        cudaEvent_t copied; /* recorded after the copies from this set */
    } step_set[2];
    int next_set;
    void *d_split; /* chunk partials of the decode attention */
    size_t d_split_cap;
    void *attn_ptrs; /* the prefill attention's pointer tables */
    size_t attn_ptrs_cap;
    /* device copies of what the caller captures, filled inside the graph and
     * copied to the caller's buffers after it */
    float *stage;
    size_t stage_cap;
    stage_slots *slots; /* [n_capture] of the call in progress */
    int slots_cap;
    /* the prefill layout whose unwritten attention entries are zero in the
     * stage (n_zeroed < 0: none): see plan_stage */
    stage_slots *zeroed;
    int n_zeroed;
    size_t zeroed_size[N_OUT];
    void *blas_workspace;
    size_t blas_workspace_size;
    /* one recorded graph per entry point, replayed while its key matches;
     * `generation` changes whenever a buffer a graph points into moves */
    graph_cache prefill_graph, decode_graph;
    unsigned long generation;
    int fused_smem_max; /* shared memory fused_attention_kernel may use; 0: not used */
} cuda_engine;

/* Device pointer of a host weight tensor (same offset in the device copy). */
static const float *dev_w(const ap_engine *e, const float *host)
{
    const cuda_engine *ce = (const cuda_engine *)e->impl;
    return ce->weights + (host - e->model->storage);
}

static const __nv_bfloat16 *dev_w16(const ap_engine *e, const float *host)
{
    const cuda_engine *ce = (const cuda_engine *)e->impl;
    return ce->weights_bf16 + (host - e->model->storage);
}

static void free_scratch(cuda_engine *ce)
{
    ce->generation++;
    cudaFree(ce->x), cudaFree(ce->h), cudaFree(ce->qkv), cudaFree(ce->att), cudaFree(ce->tmp);
    cudaFree(ce->fc), cudaFree(ce->scores), cudaFree(ce->heads), cudaFree(ce->logits);
    cudaFree(ce->ids), cudaFree(ce->pos), cudaFree(ce->act_bf16);
    ce->x = ce->h = ce->qkv = ce->att = ce->tmp = ce->fc = ce->scores = ce->heads = ce->logits = NULL;
    ce->ids = ce->pos = NULL;
    ce->act_bf16 = ce->fc_bf16 = NULL;
    ce->cap_tokens = ce->cap_scores = ce->act_bf16_n = 0;
}

/* Scratch for N rows (tokens or streams) and H*T*T scores. */
static ap_status ensure_scratch(ap_engine *e, size_t N, size_t scores, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const size_t C = (size_t)c->n_embd, V = (size_t)c->vocab_size;
    if (N > ce->cap_tokens || scores > ce->cap_scores) {
        size_t n = N > ce->cap_tokens ? N : ce->cap_tokens, sc = scores > ce->cap_scores ? scores : ce->cap_scores;
        free_scratch(ce);
        CUDA_TRY(cudaMalloc(&ce->x, n * C * sizeof(float)), "allocating activations");
        CUDA_TRY(cudaMalloc(&ce->h, n * C * sizeof(float)), "allocating activations");
        /* FA_ROWS rows of zeros past the end: fused_attention_kernel reads
         * whole tiles of FA_ROWS query rows and keys */
        CUDA_TRY(cudaMalloc(&ce->qkv, (n + FA_ROWS) * 3 * C * sizeof(float)), "allocating activations");
        CUDA_TRY(cudaMemset(ce->qkv, 0, (n + FA_ROWS) * 3 * C * sizeof(float)), "clearing activations");
        CUDA_TRY(cudaMalloc(&ce->att, n * C * sizeof(float)), "allocating activations");
        CUDA_TRY(cudaMalloc(&ce->tmp, n * C * sizeof(float)), "allocating activations");
        CUDA_TRY(cudaMalloc(&ce->fc, n * 4 * C * sizeof(float)), "allocating activations");
        CUDA_TRY(cudaMalloc(&ce->heads, n * C * sizeof(float)), "allocating activations");
        CUDA_TRY(cudaMalloc(&ce->logits, n * V * sizeof(float)), "allocating logits");
        CUDA_TRY(cudaMalloc(&ce->ids, n * sizeof(int)), "allocating ids");
        CUDA_TRY(cudaMalloc(&ce->pos, n * sizeof(int)), "allocating positions");
        CUDA_TRY(cudaMalloc(&ce->scores, (sc ? sc : 1) * sizeof(float)), "allocating attention scores");
        if (e->precision == AP_PRECISION_BF16) {
            ce->act_bf16_n = n * 5 * C;
            CUDA_TRY(cudaMalloc(&ce->act_bf16, ce->act_bf16_n * sizeof(__nv_bfloat16)), "allocating bf16 activations");
            ce->fc_bf16 = ce->act_bf16 + n * C;
        }
        ce->cap_tokens = n;
        ce->cap_scores = sc;
    }
    return AP_OK;
}

static unsigned blocks(size_t n) { return (unsigned)((n + 255) / 256); }

/* out[N, OC] = in[N, IC] @ W[IC, OC] (W: a host pointer into the model). When
 * in16 != NULL the product reads it (the rows of `in` rounded to bf16) and the
 * bf16 weights; otherwise fp32 inputs in the handle's math mode. */
static ap_status matmul(ap_engine *e, float *out, const float *in, const __nv_bfloat16 *in16,
                        const float *W_host, int N, int IC, int OC, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const float one = 1.0f, zero = 0.0f;
    if (in16)
        CUBLAS_TRY(cublasGemmEx(ce->blas, CUBLAS_OP_N, CUBLAS_OP_N, OC, N, IC, &one, dev_w16(e, W_host),
                                CUDA_R_16BF, OC, in16, CUDA_R_16BF, IC, &zero, out, CUDA_R_32F, OC,
                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "a bf16 linear layer");
    else
        CUBLAS_TRY(cublasSgemm(ce->blas, CUBLAS_OP_N, CUBLAS_OP_N, OC, N, IC, &one, dev_w(e, W_host), OC,
                               in, IC, &zero, out, OC),
                   "a linear layer");
    return AP_OK;
}

/* What a linear layer's epilogue adds to its product. */
typedef enum { EPI_BIAS, EPI_BIAS_GELU } epilogue;

/* out[N, OC] = epi(in[N, IC] @ W[IC, OC] + bias) through cublasLt, the bias
 * (and GELU, tanh form: verified against bias_gelu_kernel by the CPU parity
 * tests) applied to the fp32 accumulator before the one store of the output:
 * one pass over the output instead of three. bf16: in and W are bf16 and
 * out is bf16 or fp32; otherwise all fp32 in the precision's compute mode.
 * The bias has the output's type (cublasLt's rule: a bf16 output takes the
 * bias rounded to bf16, like the rest of that layer's weights).
 * *done = 0 when cublasLt has no algorithm for the combination (the caller
 * then runs the product and the epilogue's kernel apart). */
static ap_status lt_linear(ap_engine *e, void *out, cudaDataType out_type, const void *in, const void *W, int bf16,
                           const void *bias, epilogue epi, int N, int IC, int OC, int *done, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const cudaDataType in_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t compute = bf16 ? CUBLAS_COMPUTE_32F
                                        : e->precision == AP_PRECISION_FP32 ? CUBLAS_COMPUTE_32F_PEDANTIC
                                                                            : CUBLAS_COMPUTE_32F_FAST_TF32;
    const cublasLtEpilogue_t ep = epi == EPI_BIAS_GELU ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
    const int32_t bias_type = out_type;
    const float one = 1.0f, zero = 0.0f;
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t a = NULL, b = NULL, d = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t algo;
    int n_algo = 0;
    *done = 0;
    /* column-major: out^T[OC, N] = W^T[OC, IC] in^T[IC, N] */
    cublasStatus_t s = cublasLtMatmulDescCreate(&op, compute, CUDA_R_32F);
    if (!s) s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep);
    if (!s) s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    if (!s) s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type);
    if (!s) s = cublasLtMatrixLayoutCreate(&a, in_type, OC, IC, OC);
    if (!s) s = cublasLtMatrixLayoutCreate(&b, in_type, IC, N, IC);
    if (!s) s = cublasLtMatrixLayoutCreate(&d, out_type, OC, N, OC);
    if (!s) s = cublasLtMatmulPreferenceCreate(&pref);
    if (!s)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                 &ce->blas_workspace_size, sizeof ce->blas_workspace_size);
    if (!s) s = cublasLtMatmulAlgoGetHeuristic(ce->lt, op, a, b, d, d, pref, 1, &algo, &n_algo);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED) s = CUBLAS_STATUS_SUCCESS, n_algo = 0;
    if (!s && n_algo > 0)
        s = cublasLtMatmul(ce->lt, op, &one, W, a, in, b, &zero, out, d, out, d, &algo.algo, ce->blas_workspace,
                           ce->blas_workspace_size, ce->stream);
    *done = !s && n_algo > 0;
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(d), cublasLtMatrixLayoutDestroy(b), cublasLtMatrixLayoutDestroy(a);
    cublasLtMatmulDescDestroy(op);
    if (s)
        return ap_error_set(err, AP_ERR_RUNTIME, "cublasLt failed (status %d) on a %d x %d x %d linear layer", (int)s,
                            N, IC, OC);
    return AP_OK;
}

/* The bf16 scratch when the precision rounds the MLP's inputs to bf16, else NULL. */
static __nv_bfloat16 *bf16_scratch(const ap_engine *e)
{
    return e->precision == AP_PRECISION_BF16 ? ((cuda_engine *)e->impl)->act_bf16 : NULL;
}

enum { LN_MAX_EMBD = 4 * 1024 }; /* layernorm4_kernel: four values a thread, at most 1024 threads */

/* out = LayerNorm(x) (w, b: host pointers into the model) over N rows; with
 * y, first x += y + bias (the residual add of a projection; bias a device
 * pointer). See layernorm4_kernel. */
static ap_status layernorm(ap_engine *e, float *out, __nv_bfloat16 *out16, float *x, const float *y,
                           const float *bias, const float *w_host, const float *b_host, int N, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const unsigned threads = (unsigned)((c->n_embd / 4 + 31) / 32 * 32);
    layernorm4_kernel<<<N, threads, 0, ce->stream>>>(x, y, bias, out, out16, dev_w(e, w_host), dev_w(e, b_host),
                                                     c->n_embd, c->ln_eps);
    KERNEL_TRY(y ? "the residual add and LayerNorm" : "LayerNorm");
    return AP_OK;
}

/* qkv[N, 3C] = ln1(x) @ attn_w (+ attn_b when add_bias) for block l (TF32
 * or fp32: q and k decide the probabilities). normed: h already holds
 * ln1(x) (block_finish of the block before computed it). */
static ap_status block_qkv(ap_engine *e, int l, int N, int add_bias, int normed, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_weights *w = &e->model->w;
    const int C = e->model->config.n_embd;
    const size_t lc = (size_t)l * C;
    ap_status st;
    int done = 0;
    if (!normed && (st = layernorm(e, ce->h, NULL, ce->x, NULL, NULL, w->ln1_w + lc, w->ln1_b + lc, N, err))) return st;
    if (add_bias && (st = lt_linear(e, ce->qkv, CUDA_R_32F, ce->h, dev_w(e, w->attn_w + lc * 3 * C), 0,
                                    dev_w(e, w->attn_b + 3 * lc), EPI_BIAS, N, C, 3 * C, &done, err)))
        return st;
    if (done) return AP_OK;
    if ((st = matmul(e, ce->qkv, ce->h, NULL, w->attn_w + lc * 3 * C, N, C, 3 * C, err))) return st;
    if (!add_bias) return AP_OK;
    bias_kernel<<<column_grid(3 * C, N), 256, 0, ce->stream>>>(ce->qkv, dev_w(e, w->attn_b + 3 * lc), N, 3 * C);
    KERNEL_TRY("adding the q/k/v bias");
    return AP_OK;
}

/* GELU(h @ fc_w + fc_b) of block l over N rows, into ce->fc_bf16 (bf16:
 * from the bf16 copy of h) or ce->fc. */
static ap_status mlp_hidden(ap_engine *e, int l, int N, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const int C = e->model->config.n_embd;
    const float *W = e->model->w.fc_w + (size_t)l * C * 4 * C, *bias = e->model->w.fc_b + (size_t)l * 4 * C;
    __nv_bfloat16 *bf = bf16_scratch(e);
    int done = 0;
    ap_status st = bf ? lt_linear(e, ce->fc_bf16, CUDA_R_16BF, bf, dev_w16(e, W), 1, dev_w16(e, bias), EPI_BIAS_GELU,
                                  N, C, 4 * C, &done, err)
                      : lt_linear(e, ce->fc, CUDA_R_32F, ce->h, dev_w(e, W), 0, dev_w(e, bias), EPI_BIAS_GELU, N, C,
                                  4 * C, &done, err);
    if (st || done) return st;
    if ((st = matmul(e, ce->fc, ce->h, bf, W, N, C, 4 * C, err))) return st;
    bias_gelu_kernel<<<column_grid(4 * C, N), 256, 0, ce->stream>>>(ce->fc, bf ? ce->fc_bf16 : NULL, dev_w(e, bias),
                                                                    N, 4 * C);
    KERNEL_TRY("GELU");
    return AP_OK;
}

/* x += attn_proj(att); x += mlp(ln2(x)) for block l over N rows; with
 * next_ln, also h = ln1(x) of block l + 1. Each residual add and the
 * LayerNorm after it are one kernel. */
static ap_status block_finish(ap_engine *e, int l, int N, int next_ln, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const ap_weights *w = &e->model->w;
    const int C = c->n_embd;
    const size_t lc = (size_t)l * C, NC = (size_t)N * C;
    __nv_bfloat16 *bf = bf16_scratch(e);
    ap_status st;
    if (bf) {
        /* n_embd % 4 == 0 (ap_cuda_engine_init) */
        to_bf16x4_kernel<<<blocks(NC / 4), 256, 0, ce->stream>>>((__nv_bfloat162 *)bf, (const float4 *)ce->att,
                                                                NC / 4);
        KERNEL_TRY("rounding the attention output to bf16");
    }
    if ((st = matmul(e, ce->tmp, ce->att, bf, w->attn_proj_w + lc * C, N, C, C, err))) return st;
    if ((st = layernorm(e, ce->h, bf, ce->x, ce->tmp, dev_w(e, w->attn_proj_b + lc), w->ln2_w + lc, w->ln2_b + lc, N,
                        err)))
        return st;
    if ((st = mlp_hidden(e, l, N, err)) ||
        (st = matmul(e, ce->tmp, ce->fc, bf ? ce->fc_bf16 : NULL, w->fc_proj_w + lc * 4 * C, N, 4 * C, C, err)))
        return st;
    if (next_ln)
        return layernorm(e, ce->h, NULL, ce->x, ce->tmp, dev_w(e, w->fc_proj_b + lc), w->ln1_w + lc + C,
                         w->ln1_b + lc + C, N, err);
    bias_residual_kernel<<<blocks(NC), 256, 0, ce->stream>>>(ce->x, ce->tmp, dev_w(e, w->fc_proj_b + lc), NC, C);
    KERNEL_TRY("the residual add");
    return AP_OK;
}

/* Grows a device buffer to at least n bytes, with headroom so that growing
 * tables move rarely (each move invalidates the recorded graphs). */
static cudaError_t grow(cuda_engine *ce, void **buf, size_t *cap, size_t n)
{
    if (n <= *cap) return cudaSuccess;
    n += n / 2;
    cudaFree(*buf);
    *cap = 0;
    ce->generation++;
    cudaError_t e = cudaMalloc(buf, n);
    if (e == cudaSuccess) *cap = n;
    return e;
}

static cudaError_t grow_host(void **buf, size_t *cap, size_t n)
{
    if (n <= *cap) return cudaSuccess;
    n += n / 2;
    cudaFreeHost(*buf);
    *cap = 0;
    cudaError_t e = cudaMallocHost(buf, n);
    if (e == cudaSuccess) *cap = n;
    return e;
}

/* logits[N, vocab] = ln_f(x) @ wte^T (device) */
static ap_status lm_head(ap_engine *e, float *x, float *logits, int N, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const float one = 1.0f, zero = 0.0f;
    ap_status st;
    if ((st = layernorm(e, ce->h, NULL, x, NULL, NULL, e->model->w.lnf_w, e->model->w.lnf_b, N, err))) return st;
    CUBLAS_TRY(cublasSgemm(ce->blas, CUBLAS_OP_T, CUBLAS_OP_N, c->vocab_size, N, c->n_embd, &one,
                           dev_w(e, e->model->w.wte), c->n_embd, ce->h, c->n_embd, &zero, logits,
                           c->vocab_size),
               "the LM head");
    return AP_OK;
}


enum { CAUSAL_CHUNK = 256 }; /* 128 measured slower: bench/RESULTS.md */

static int causal_chunks(int T) { return (T + CAUSAL_CHUNK - 1) / CAUSAL_CHUNK; }

/* Whether fused_attention_kernel runs the prefill: tf32 and bf16, heads of
 * 32 or 64 (every GPT-2 size has 64; rows are 16-byte aligned since the
 * backend needs n_embd % 4 == 0) and its shared memory available. */
static int fused_attention_fits(const ap_engine *e)
{
    const cuda_engine *ce = (const cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const int hd = c->n_embd / c->n_head;
    return e->precision != AP_PRECISION_FP32 && (hd == 32 || hd == 64) &&
           fa_smem_bytes(hd) <= (size_t)ce->fused_smem_max;
}

static ap_status fused_attention(ap_engine *e, int B, int T, float *probs, long long probs_stride, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const int C = c->n_embd, H = c->n_head, hd = C / H;
    const dim3 grid((unsigned)((T + FA_ROWS - 1) / FA_ROWS), (unsigned)H, (unsigned)B);
    const size_t smem = fa_smem_bytes(hd);
    const float scale = 1.0f / sqrtf((float)hd);
    if (hd == 64)
        fused_attention_kernel<64><<<grid, FA_WARPS * 32, smem, ce->stream>>>(ce->qkv, ce->att, probs, probs_stride, T,
                                                                             H, C, scale);
    else
        fused_attention_kernel<32><<<grid, FA_WARPS * 32, smem, ce->stream>>>(ce->qkv, ce->att, probs, probs_stride, T,
                                                                             H, C, scale);
    KERNEL_TRY("the fused attention");
    return AP_OK;
}

/* For B sequences of T tokens back to back (qkv: rows [B * T, 3C]):
 * att[B * T, C] = softmax(q k^T / sqrt(hd)) v for every head, leaving
 * sequence b's probabilities [H, T, T] at probs + b * probs_stride. Rows go
 * in chunks of CAUSAL_CHUNK: chunk [r0, r1) needs keys 0..r1-1 only, so the
 * products skip most of the masked upper triangle. Each chunk's product is
 * one cuBLAS call batched over (sequence, head) through pointer tables that a
 * kernel writes on the device: a head's product alone is too small to fill
 * the GPU (12 heads of one 256-row chunk are a few dozen tiles). tf32 and
 * bf16 with heads of 32 or 64 take fused_attention instead. */
static ap_status causal_attention(ap_engine *e, int B, int T, float *probs, long long probs_stride, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const int C = c->n_embd, H = c->n_head, hd = C / H, BH = B * H, n_chunks = causal_chunks(T);
    if (fused_attention_fits(e)) return fused_attention(e, B, T, probs, probs_stride, err);
    const float one = 1.0f, zero = 0.0f;
    const long long TT = (long long)T * T, seq = (long long)T * 3 * C;
    enum { K, V, Q, P, ATT };
    const ptr_rules rules = {{{ce->qkv + C, seq, hd, 0},
                              {ce->qkv + 2 * C, seq, hd, 0},
                              {ce->qkv, seq, hd, (long long)CAUSAL_CHUNK * 3 * C},
                              {probs, probs_stride, TT, (long long)CAUSAL_CHUNK * T},
                              {ce->att, (long long)T * C, hd, (long long)CAUSAL_CHUNK * C}}};
    const float **table = (const float **)ce->attn_ptrs;
    pointer_table_kernel<<<blocks((size_t)PTR_RULES * n_chunks * BH), 256, 0, ce->stream>>>(table, rules, n_chunks,
                                                                                          B, H);
    KERNEL_TRY("the attention's pointer tables");
#define TABLE(rule, chunk) (table + ((size_t)(rule) * n_chunks + (chunk)) * BH)
    /* scores^T[j, i] = k_j . q_i */
    for (int ch = 0; ch < n_chunks; ch++) {
        const int r0 = ch * CAUSAL_CHUNK, r1 = r0 + CAUSAL_CHUNK < T ? r0 + CAUSAL_CHUNK : T;
        CUBLAS_TRY(cublasSgemmBatched(ce->blas, CUBLAS_OP_T, CUBLAS_OP_N, r1, r1 - r0, hd, &one, TABLE(K, 0), 3 * C,
                                      TABLE(Q, ch), 3 * C, &zero, (float *const *)TABLE(P, ch), T, BH),
                   "attention scores");
    }
    const float scale = 1.0f / sqrtf((float)hd);
    const int rows = BH * T, per_seq = H * T;
    const unsigned warp_blocks = (unsigned)((rows + 7) / 8);
    if (T <= 128)
        causal_softmax_warp_kernel<4><<<warp_blocks, 256, 0, ce->stream>>>(probs, T, per_seq, probs_stride, rows,
                                                                            CAUSAL_CHUNK, scale);
    else if (T <= 256)
        causal_softmax_warp_kernel<8><<<warp_blocks, 256, 0, ce->stream>>>(probs, T, per_seq, probs_stride, rows,
                                                                            CAUSAL_CHUNK, scale);
    else if (T <= 512)
        causal_softmax_warp_kernel<16><<<warp_blocks, 256, 0, ce->stream>>>(probs, T, per_seq, probs_stride, rows,
                                                                            CAUSAL_CHUNK, scale);
    else if (T <= 1024)
        causal_softmax_warp_kernel<32><<<warp_blocks, 256, 0, ce->stream>>>(probs, T, per_seq, probs_stride, rows,
                                                                            CAUSAL_CHUNK, scale);
    else
        causal_softmax_kernel<<<rows, 256, 0, ce->stream>>>(probs, T, per_seq, probs_stride, CAUSAL_CHUNK, scale);
    KERNEL_TRY("the causal softmax");
    /* att^T[:, h] = v_h^T P_h^T over the chunk's keys (P is 0 past the diagonal) */
    for (int ch = 0; ch < n_chunks; ch++) {
        const int r0 = ch * CAUSAL_CHUNK, r1 = r0 + CAUSAL_CHUNK < T ? r0 + CAUSAL_CHUNK : T;
        CUBLAS_TRY(cublasSgemmBatched(ce->blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, r1 - r0, r1, &one, TABLE(V, 0), 3 * C,
                                      TABLE(P, ch), T, &zero, (float *const *)TABLE(ATT, ch), C, BH),
                   "attention times values");
    }
#undef TABLE
    return AP_OK;
}

/* dst[H, T, hd] (device) from rows [T, ld] of src at column offset. */
static ap_status split_heads(ap_engine *e, float *dst, const float *src, int T, int ld, int offset,
                             ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const int H = c->n_head, hd = c->n_embd / H;
    const size_t n = (size_t)H * T * hd;
    split_heads_kernel<<<blocks(n), 256, 0, ce->stream>>>(dst, src, T, H, hd, ld, offset);
    KERNEL_TRY("splitting heads");
    return AP_OK;
}

/* ---- captured outputs and recorded launches ------------------------------------- */

static float *capture_dst(const ap_capture *cap, int i, int kind)
{
    float **lists[N_OUT] = {cap->attn, cap->q, cap->k, cap->v, cap->o};
    return lists[kind] ? lists[kind][i] : NULL;
}

/* The engine's slot table, grown to n entries. */
static stage_slots *slots_for(ap_engine *e, int n_slots)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const int n = n_slots + 1;
    if (n > ce->slots_cap) {
        stage_slots *grown = (stage_slots *)realloc(ce->slots, (size_t)n * sizeof *grown);
        if (!grown) return NULL;
        ce->slots = grown;
        ce->slots_cap = n;
    }
    return ce->slots;
}

/* Lays out the stage for caps[0..B-1] (size[kind] floats per output; 0:
 * never staged) and grows it; slots[b * n_capture + i] for capture i of b.
 * zeroed (the prefill): the caller leaves the attention entries past each
 * row's chunk unwritten (causal_attention), so they must hold zeros: the
 * stage is cleared whenever this layout differs from the last zeroed one. */
static ap_status plan_stage(ap_engine *e, const ap_capture *caps, int B, const size_t *size, stage_slots *slots,
                            int zeroed, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    size_t total = 0;
    int n_slots = 0;
    for (int b = 0; caps && b < B; b++)
        for (int i = 0; i < caps[b].n_capture; i++, n_slots++) {
            stage_slots *sl = &slots[(size_t)b * caps[b].n_capture + i];
            for (int k = 0; k < N_OUT; k++) {
                sl->at[k] = size[k] && capture_dst(&caps[b], i, k) ? (long long)total : -1;
                if (sl->at[k] >= 0) total += size[k];
            }
        }
    if (total * sizeof(float) > ce->stage_cap) {
        cudaFree(ce->stage);
        ce->stage = NULL;
        ce->stage_cap = 0;
        ce->n_zeroed = -1;
        ce->generation++;
        CUDA_TRY(cudaMalloc(&ce->stage, total * sizeof(float)), "allocating the capture buffers");
        ce->stage_cap = total * sizeof(float);
    }
    if (!zeroed) {
        ce->n_zeroed = -1;
        return AP_OK;
    }
    if (n_slots == ce->n_zeroed && !memcmp(size, ce->zeroed_size, sizeof ce->zeroed_size) &&
        (n_slots == 0 || !memcmp(slots, ce->zeroed, (size_t)n_slots * sizeof *slots)))
        return AP_OK;
    stage_slots *copy = (stage_slots *)realloc(ce->zeroed, (size_t)(n_slots + 1) * sizeof *copy);
    if (!copy) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    ce->zeroed = copy;
    memcpy(copy, slots, (size_t)n_slots * sizeof *slots);
    memcpy(ce->zeroed_size, size, sizeof ce->zeroed_size);
    ce->n_zeroed = n_slots;
    if (total) CUDA_TRY(cudaMemsetAsync(ce->stage, 0, total * sizeof(float), ce->stream), "clearing the capture buffers");
    return AP_OK;
}

/* Copies the staged outputs to the caller's buffers (asynchronously). */
static ap_status copy_out(ap_engine *e, const ap_capture *caps, int B, const size_t *size, const stage_slots *slots,
                          ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    for (int b = 0; caps && b < B; b++)
        for (int i = 0; i < caps[b].n_capture; i++) {
            const stage_slots *sl = &slots[(size_t)b * caps[b].n_capture + i];
            for (int k = 0; k < N_OUT; k++)
                if (sl->at[k] >= 0)
                    /* cudaMemcpyDefault: to the host, or to device buffers (ap_engine_device_alloc) */
                    CUDA_TRY(cudaMemcpyAsync(capture_dst(&caps[b], i, k), ce->stage + sl->at[k],
                                             size[k] * sizeof(float), cudaMemcpyDefault, ce->stream),
                             "copying captured attention, q/k/v or output");
        }
    return AP_OK;
}

/* The part of a key that says what is captured: (layer, outputs mask) pairs.
 * Returns the new key length, or -1 when it does not fit (then nothing is
 * recorded and the launches run one by one). */
static int key_captures(long long *key, int n, const ap_capture *cap)
{
    const int n_capture = cap ? cap->n_capture : 0;
    if (n + 1 + 2 * n_capture > GRAPH_KEY_MAX) return -1;
    key[n++] = n_capture;
    for (int i = 0; i < n_capture; i++) {
        int mask = 0;
        for (int k = 0; k < N_OUT; k++) mask |= capture_dst(cap, i, k) ? 1 << k : 0;
        key[n++] = cap->layers[i];
        key[n++] = mask;
    }
    return n;
}

typedef ap_status (*enqueue_fn)(ap_engine *e, const void *arg, ap_error *err);

/* Runs enqueue's launches on the engine's stream: replays the recorded graph
 * when key matches, else records them (n_key < 0: runs them directly). */
static ap_status run_recorded(ap_engine *e, graph_cache *g, const long long *key, int n_key, enqueue_fn enqueue,
                              const void *arg, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    if (n_key >= 0 && graph_cache_matches(g, key, n_key)) {
        CUDA_TRY(cudaGraphLaunch(g->exec, ce->stream), "replaying the recorded launches");
        return AP_OK;
    }
    graph_cache_clear(g);
    if (n_key < 0) return enqueue(e, arg, err);
    CUDA_TRY(cudaStreamBeginCapture(ce->stream, cudaStreamCaptureModeThreadLocal), "recording the launches");
    ap_status st = enqueue(e, arg, err);
    cudaGraph_t graph = NULL;
    cudaError_t ec = cudaStreamEndCapture(ce->stream, &graph);
    if (st) {
        if (graph) cudaGraphDestroy(graph);
        return st;
    }
    CUDA_TRY(ec, "recording the launches");
    ec = cudaGraphInstantiate(&g->exec, graph, 0);
    cudaGraphDestroy(graph);
    if (ec != cudaSuccess) g->exec = NULL;
    CUDA_TRY(ec, "instantiating the recorded launches");
    memcpy(g->key, key, (size_t)n_key * sizeof *key);
    g->n_key = n_key;
    CUDA_TRY(cudaGraphLaunch(g->exec, ce->stream), "replaying the recorded launches");
    return AP_OK;
}

/* ---- prefill ------------------------------------------------------------------------ */

typedef struct {
    int B, T, last, logits_rows; /* logits_rows per sequence: 0, 1 (last position) or T */
    const ap_capture *cap;       /* caps[0]: what every sequence captures */
    const stage_slots *slots;    /* [B * n_capture], sequence-major */
} prefill_args;

/* The prefill's device work for B sequences of T tokens back to back: every
 * launch, no host copies (recordable). Row-wise steps run over all B * T rows
 * at once; attention runs per sequence. */
static ap_status enqueue_prefill(ap_engine *e, const void *arg, ap_error *err)
{
    const prefill_args *a = (const prefill_args *)arg;
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const ap_weights *w = &e->model->w;
    const int C = c->n_embd, H = c->n_head, T = a->T, N = a->B * a->T;
    const int n_capture = a->cap ? a->cap->n_capture : 0;
    ap_status st;
    embed_kernel<<<N, 256, 0, ce->stream>>>(ce->x, dev_w(e, w->wte), dev_w(e, w->wpe), ce->ids, NULL, T, C);
    KERNEL_TRY("the embedding");
    for (int l = 0; l <= a->last; l++) {
        const int ci = ap_capture_index(a->cap, l);
        if ((st = block_qkv(e, l, N, 1, l > 0, err))) return st;
        float *probs[2] = {NULL, NULL}; /* sequences 0 and 1: the rest follow at the same stride */
        for (int b = 0; b < a->B; b++) {
            const long long *at = ci >= 0 ? a->slots[(size_t)b * n_capture + ci].at : NULL;
            for (int which = 0; at && which < 3; which++)
                if (at[OUT_Q + which] >= 0 && (st = split_heads(e, ce->stage + at[OUT_Q + which],
                                                                ce->qkv + (size_t)b * T * 3 * C, T, 3 * C, which * C,
                                                                err)))
                    return st;
            /* probabilities nobody captures: scratch, or none at all when fused */
            float *p = at && at[OUT_ATTN] >= 0   ? ce->stage + at[OUT_ATTN]
                       : fused_attention_fits(e) ? NULL
                                                    : ce->scores + (size_t)b * H * T * T;
            if (b < 2) probs[b] = p;
            else if (p != probs[0] + b * (probs[1] - probs[0]))
                return ap_error_set(err, AP_ERR_RUNTIME, "a batched prefill needs every sequence to capture the same");
        }
        if ((st = causal_attention(e, a->B, T, probs[0], a->B > 1 ? probs[1] - probs[0] : 0, err))) return st;
        for (int b = 0; ci >= 0 && b < a->B; b++) {
            const long long *at = a->slots[(size_t)b * n_capture + ci].at;
            if (at[OUT_O] >= 0 &&
                (st = split_heads(e, ce->stage + at[OUT_O], ce->att + (size_t)b * T * C, T, C, 0, err)))
                return st;
        }
        if ((st = block_finish(e, l, N, l < a->last, err))) return st;
    }
    if (a->logits_rows == T) return lm_head(e, ce->x, ce->logits, N, err);
    for (int b = 0; a->logits_rows && b < a->B; b++) /* the last position of each sequence */
        if ((st = lm_head(e, ce->x + ((size_t)b * T + T - 1) * C, ce->logits + (size_t)b * c->vocab_size, 1, err)))
            return st;
    return AP_OK;
}

static ap_status cuda_prefill_batch(ap_engine *e, int B, const int *const *ids, int T, const ap_capture *caps,
                                    ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const int C = c->n_embd, H = c->n_head;
    const ap_capture *cap = caps; /* caps[0] says what every sequence captures */
    /* the fused attention needs neither the score scratch nor the pointer tables */
    const int fused = fused_attention_fits(e);
    ap_status st = ensure_scratch(e, (size_t)B * T, fused ? 0 : (size_t)B * H * T * T, err);
    if (st) return st;
    if (!fused)
        CUDA_TRY(grow(ce, &ce->attn_ptrs, &ce->attn_ptrs_cap,
                      (size_t)PTR_RULES * causal_chunks(T) * B * H * sizeof(float *)),
                 "allocating the attention's pointer tables");
    int last = c->n_layer - 1;
    if (!cap || !cap->logits) {
        last = -1;
        for (int i = 0; cap && i < cap->n_capture; i++) last = cap->layers[i] > last ? cap->layers[i] : last;
    }
    const int n_capture = cap ? cap->n_capture : 0;
    const size_t size[N_OUT] = {(size_t)H * T * T, (size_t)T * C, (size_t)T * C, (size_t)T * C, (size_t)T * C};
    stage_slots *slots = slots_for(e, B * n_capture);
    if (!slots) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    if ((st = plan_stage(e, caps, B, size, slots, 1, err))) return st;
    const int logits_rows = cap && cap->logits ? (cap->logits_last_only ? 1 : T) : 0;
    prefill_args args = {B, T, last, logits_rows, cap, slots};
    long long key[GRAPH_KEY_MAX] = {1, B, T, last, logits_rows, (long long)ce->generation};
    for (int b = 0; b < B; b++)
        CUDA_TRY(cudaMemcpyAsync(ce->ids + (size_t)b * T, ids[b], (size_t)T * sizeof(int), cudaMemcpyHostToDevice,
                                 ce->stream),
                 "copying token ids to the device");
    if ((st = run_recorded(e, &ce->prefill_graph, key, key_captures(key, 6, cap), enqueue_prefill, &args, err)) ||
        (st = copy_out(e, caps, B, size, slots, err)))
        return st;
    for (int b = 0; logits_rows && b < B; b++)
        CUDA_TRY(cudaMemcpyAsync(caps[b].logits, ce->logits + (size_t)b * logits_rows * c->vocab_size,
                                 (size_t)logits_rows * c->vocab_size * sizeof(float), cudaMemcpyDeviceToHost,
                                 ce->stream),
                 "copying logits to the host");
    CUDA_TRY(cudaStreamSynchronize(ce->stream), "finishing the prefill");
    return AP_OK;
}

static ap_status cuda_prefill(ap_engine *e, const int *ids, int T, const ap_capture *cap, ap_error *err)
{
    return cuda_prefill_batch(e, 1, &ids, T, cap, err);
}

/* ---- decode ------------------------------------------------------------------------ */

typedef struct {
    float *k, *v; /* device [L, H, max_len, hd] */
} cuda_stream;

static ap_status cuda_stream_init(ap_engine *e, ap_stream *s, ap_error *err)
{
    const ap_config *c = &e->model->config;
    cuda_stream *cs = (cuda_stream *)calloc(1, sizeof *cs);
    if (!cs) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    const size_t n = (size_t)c->n_layer * c->n_embd * s->max_len * sizeof(float);
    if (cudaMalloc(&cs->k, n) != cudaSuccess || cudaMalloc(&cs->v, n) != cudaSuccess) {
        cudaFree(cs->k);
        free(cs);
        return ap_error_set(err, AP_ERR_RUNTIME, "cudaMalloc of a %zu-byte KV cache failed", 2 * n);
    }
    s->impl = cs;
    return AP_OK;
}

static void cuda_stream_free(ap_stream *s)
{
    cuda_stream *cs = (cuda_stream *)s->impl;
    if (!cs) return;
    cudaFree(cs->k);
    cudaFree(cs->v);
    free(cs);
}

/* Bytes of the decode attention's chunk partials for S streams whose lists
 * hold up to `longest` entries (t included). */
static size_t split_bytes(const ap_engine *e, int S, int longest)
{
    const ap_config *c = &e->model->config;
    return (size_t)S * c->n_head * decode_chunks(longest) * (2 + c->n_embd / c->n_head) * sizeof(float);
}

typedef struct {
    int S, longest;
    const ap_capture *cap;
    const stage_slots *slots;
    const ap_device_batch *dev; /* device-resident lists and outputs, or NULL */
} decode_args;

/* A decode step's inputs from the host: table_bytes of pinned tables, the
 * pinned cache pointers ptrs [2S], tokens and positions. */
static ap_status upload_step(cuda_engine *ce, int S, const void *tables, size_t table_bytes, const void *ptrs,
                             const int *tokens, const int *t_of, ap_error *err)
{
    CUDA_TRY(cudaMemcpyAsync(ce->d_tables, tables, table_bytes, cudaMemcpyHostToDevice, ce->stream),
             "copying the decode tables");
    CUDA_TRY(cudaMemcpyAsync(ce->d_ptrs, ptrs, 2 * (size_t)S * sizeof(float *), cudaMemcpyHostToDevice, ce->stream),
             "copying the cache pointers");
    CUDA_TRY(cudaMemcpyAsync(ce->ids, tokens, S * sizeof(int), cudaMemcpyHostToDevice, ce->stream),
             "copying tokens");
    CUDA_TRY(cudaMemcpyAsync(ce->pos, t_of, S * sizeof(int), cudaMemcpyHostToDevice, ce->stream),
             "copying positions");
    return AP_OK;
}

/* One decode step's device work (recordable): the tables, tokens and cache
 * pointers are already on the device. */
static ap_status enqueue_decode(ap_engine *e, const void *arg, ap_error *err)
{
    const decode_args *a = (const decode_args *)arg;
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const ap_weights *w = &e->model->w;
    const int S = a->S, C = c->n_embd, H = c->n_head, hd = C / H, L = c->n_layer;
    const size_t lists = (size_t)S * L * H;
    const ap_device_batch *dev = a->dev;
    /* host tables: [t_of S | max_len S | pos_off lists | n_kept lists | positions];
     * device-resident: [t_of S | max_len S | list_base S], lists the caller's */
    int *d_t = (int *)ce->d_tables, *d_max = d_t + S, *d_off = d_max + S, *d_cnt = d_off + lists,
        *d_pos = d_cnt + lists, *d_base = NULL;
    if (dev) d_base = d_max + S, d_off = (int *)dev->off, d_cnt = (int *)dev->cnt, d_pos = (int *)dev->pos;
    float *rows_out = dev ? dev->rows : (float *)ce->d_compact;
    float **d_k = (float **)ce->d_ptrs, **d_v = d_k + S;
    const int chunks = decode_chunks(a->longest);
    float *part_ml = (float *)ce->d_split, *part_o = part_ml + (size_t)S * H * chunks * 2;
    ap_status st;
    embed_kernel<<<S, 256, 0, ce->stream>>>(ce->x, dev_w(e, w->wte), dev_w(e, w->wpe), ce->ids, ce->pos, 1, C);
    KERNEL_TRY("the embedding");
    for (int l = 0; l < L; l++) {
        const int ci = ap_capture_index(a->cap, l);
        const long long *at = ci >= 0 ? a->slots[ci].at : NULL;
        if ((st = block_qkv(e, l, S, 0, l > 0, err))) return st;
        decode_qkv_kernel<<<S, 256, 0, ce->stream>>>(ce->qkv, dev_w(e, w->attn_b + (size_t)3 * l * C), d_k, d_v,
                                                     dev && dev->q ? dev->q + (size_t)l * S * C : NULL,
                                                     dev && dev->k ? dev->k + (size_t)l * S * C : NULL, d_t,
                                                     d_max, H, hd, C, l);
        KERNEL_TRY("appending to the KV caches");
        const int want_rows = dev ? dev->rows != NULL : at && capture_dst(a->cap, ci, OUT_ATTN);
        float *rows = want_rows ? rows_out : NULL;
        const decode_view view = {ce->att, rows, part_ml, part_o, ce->qkv, d_k, d_v, d_t, d_max,
                                  d_base, d_off, d_cnt, d_pos, S, H, hd, C, l, chunks};
        decode_attention_enqueue(&view, ce->stream);
        KERNEL_TRY("the decode attention");
        for (int which = 0; at && which < 3; which++)
            if (at[OUT_Q + which] >= 0)
                CUDA_TRY(cudaMemcpy2DAsync(ce->stage + at[OUT_Q + which], C * sizeof(float), ce->qkv + which * C,
                                           3 * C * sizeof(float), C * sizeof(float), S, cudaMemcpyDeviceToDevice,
                                           ce->stream),
                         "keeping q/k/v for the host");
        if (at && at[OUT_O] >= 0)
            CUDA_TRY(cudaMemcpyAsync(ce->stage + at[OUT_O], ce->att, (size_t)S * C * sizeof(float),
                                     cudaMemcpyDeviceToDevice, ce->stream),
                     "keeping the attention output for the host");
        if ((st = block_finish(e, l, S, l + 1 < L, err))) return st;
    }
    if (dev && dev->hook && (st = dev->hook->enqueue(dev->hook->ctx, ce->stream, d_t, err))) return st;
    if (a->cap && a->cap->logits) return lm_head(e, ce->x, ce->logits, S, err);
    return AP_OK;
}

static ap_status cuda_decode_step(ap_engine *e, const ap_decode_batch *b, const ap_capture *cap,
                                  ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const int S = b->n_stream, C = c->n_embd, H = c->n_head, L = c->n_layer;
    const size_t lists = (size_t)S * L * H;
    ap_status st = ensure_scratch(e, (size_t)S, 0, err);
    if (st) return st;
    /* Host tables in pinned memory, layer-major lists: [t_of S | max_len S |
     * pos_off lists | n_kept lists | positions total], then cache pointers. */
    size_t total = 0;
    int longest = 0;
    for (int s = 0; s < S; s++) {
        longest = b->streams[s]->max_len > longest ? b->streams[s]->max_len : longest;
        for (int lh = 0; lh < L * H; lh++)
            total += (size_t)(b->kept && b->kept[s] ? b->n_kept[s][lh] : b->streams[s]->pos);
    }
    const size_t ints = 2 * (size_t)S + 2 * lists + total;
    cudaError_t ec = grow_host(&ce->h_tables, &ce->h_tables_cap, ints * sizeof(int));
    if (!ec) ec = grow(ce, &ce->d_tables, &ce->d_tables_cap, ints * sizeof(int));
    if (!ec) ec = grow(ce, &ce->d_ptrs, &ce->d_ptrs_cap, 2 * (size_t)S * sizeof(float *));
    if (!ec) ec = grow_host(&ce->h_ptrs, &ce->h_ptrs_cap, 2 * (size_t)S * sizeof(float *));
    if (!ec) ec = grow(ce, &ce->d_compact, &ce->d_compact_cap, (total + lists) * sizeof(float));
    if (!ec) ec = grow(ce, &ce->d_split, &ce->d_split_cap, split_bytes(e, S, longest));
    if (!ec) ec = grow_host(&ce->h_compact, &ce->h_compact_cap, (total + lists) * sizeof(float));
    if (ec) return ap_error_set(err, AP_ERR_RUNTIME, "allocating decode tables failed (%s)", cudaGetErrorString(ec));
    int *t_of = (int *)ce->h_tables, *max_len = t_of + S, *off = max_len + S, *cnt = off + lists,
        *positions = cnt + lists;
    float **kc = (float **)ce->h_ptrs, **vc = kc + S;
    size_t at = 0;
    for (int l = 0; l < L; l++)
        for (int s = 0; s < S; s++)
            for (int h = 0; h < H; h++) {
                const ap_stream *str = b->streams[s];
                const int lh = l * H + h, list = (l * S + s) * H + h;
                const int n = b->kept && b->kept[s] ? b->n_kept[s][lh] : str->pos;
                off[list] = (int)at;
                cnt[list] = n;
                if (b->kept && b->kept[s]) memcpy(positions + at, b->kept[s][lh], (size_t)n * sizeof(int));
                else for (int j = 0; j < n; j++) positions[at + j] = j;
                at += (size_t)n;
            }
    for (int s = 0; s < S; s++) {
        t_of[s] = b->streams[s]->pos;
        max_len[s] = b->streams[s]->max_len;
        kc[s] = ((cuda_stream *)b->streams[s]->impl)->k;
        vc[s] = ((cuda_stream *)b->streams[s]->impl)->v;
    }
    const size_t size[N_OUT] = {0, (size_t)S * C, (size_t)S * C, (size_t)S * C, (size_t)S * C};
    stage_slots *slots = slots_for(e, cap ? cap->n_capture : 0);
    if (!slots) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    if ((st = plan_stage(e, cap, 1, size, slots, 0, err))) return st;
    {
        float *compact = (float *)ce->d_compact, *h_compact = (float *)ce->h_compact;
        if ((st = upload_step(ce, S, ce->h_tables, ints * sizeof(int), ce->h_ptrs, b->tokens, t_of, err))) return st;
        decode_args args = {S, longest, cap, slots, NULL};
        long long key[GRAPH_KEY_MAX] = {2, S, longest, cap && cap->logits, (long long)ce->generation};
        if ((st = run_recorded(e, &ce->decode_graph, key, key_captures(key, 5, cap), enqueue_decode, &args, err)) ||
            (st = copy_out(e, cap, 1, size, slots, err)))
            return st;
        for (int i = 0; cap && i < cap->n_capture; i++) {
            if (!capture_dst(cap, i, OUT_ATTN)) continue;
            /* this layer's lists are contiguous: one copy */
            const int l = cap->layers[i];
            const size_t first = (size_t)l * S * H, begin = (size_t)off[first] + first;
            const size_t end = l + 1 < L ? (size_t)off[first + (size_t)S * H] + first + (size_t)S * H : total + lists;
            CUDA_TRY(cudaMemcpyAsync(h_compact + begin, compact + begin, (end - begin) * sizeof(float),
                                     cudaMemcpyDeviceToHost, ce->stream),
                     "copying attention rows to the host");
        }
        if (cap && cap->logits)
            CUDA_TRY(cudaMemcpyAsync(cap->logits, ce->logits, (size_t)S * c->vocab_size * sizeof(float),
                                     cudaMemcpyDeviceToHost, ce->stream),
                     "copying logits to the host");
        CUDA_TRY(cudaStreamSynchronize(ce->stream), "finishing the decode step");
        /* Dense rows over 0..t from the compact ones: zeros, then the kept entries. */
        for (int i = 0; cap && i < cap->n_capture; i++) {
            if (!cap->attn || !cap->attn[i]) continue;
            const int l = cap->layers[i];
            for (int s = 0; s < S; s++)
                for (int h = 0; h < H; h++) {
                    const int list = (l * S + s) * H + h, t = t_of[s], n = cnt[list];
                    float *row = cap->attn[i] + ((size_t)s * H + h) * c->n_ctx;
                    const float *src = h_compact + off[list] + list;
                    memset(row, 0, (size_t)(t + 1) * sizeof(float));
                    for (int x = 0; x < n; x++) row[positions[off[list] + x]] = src[x];
                    row[t] = src[n];
                }
        }
    }
    return AP_OK;
}

/* The decode step of ap_engine_decode_device: the caller's lists and output
 * buffers are already on the device; only tokens, positions and the cache
 * pointers (a few hundred bytes) go up. Returns once the step is queued: the
 * host prepares the next step while this one runs (engine_device.h). */
static ap_status cuda_decode_device(ap_engine *e, const ap_device_batch *b, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const int S = b->n_stream;
    ap_status st = ensure_scratch(e, (size_t)S, 0, err);
    if (st) return st;
    /* everything the copies read is pinned: a copy from pageable memory may
     * wait for the stream */
    const size_t table_bytes = 3 * (size_t)S * sizeof(int), ptr_at = (4 * (size_t)S * sizeof(int) + 15) / 16 * 16;
    /* the longest list (t included) sizes the attention's grid */
    int longest = b->max_cnt > 0 ? b->max_cnt + 1 : 0;
    for (int s = 0; s < S && b->max_cnt <= 0; s++)
        longest = b->streams[s]->max_len > longest ? b->streams[s]->max_len : longest;
    /* this set's copies (two steps ago) must be done before it is written */
    const int k = ce->next_set;
    ce->next_set ^= 1;
    CUDA_TRY(cudaEventSynchronize(ce->step_set[k].copied), "waiting for the decode tables of two steps ago");
    cudaError_t ec = grow_host(&ce->step_set[k].host, &ce->step_set[k].cap, ptr_at + 2 * (size_t)S * sizeof(float *));
    if (!ec) ec = grow(ce, &ce->d_tables, &ce->d_tables_cap, table_bytes);
    if (!ec) ec = grow(ce, &ce->d_ptrs, &ce->d_ptrs_cap, 2 * (size_t)S * sizeof(float *));
    if (!ec) ec = grow(ce, &ce->d_split, &ce->d_split_cap, split_bytes(e, S, longest));
    if (ec) return ap_error_set(err, AP_ERR_RUNTIME, "allocating decode tables failed (%s)", cudaGetErrorString(ec));
    int *t_of = (int *)ce->step_set[k].host, *max_len = t_of + S, *base = max_len + S, *tokens = base + S;
    float **kc = (float **)((char *)ce->step_set[k].host + ptr_at), **vc = kc + S;
    for (int s = 0; s < S; s++) {
        t_of[s] = b->streams[s]->pos;
        max_len[s] = b->streams[s]->max_len;
        base[s] = b->list_base[s];
        tokens[s] = b->tokens[s];
        kc[s] = ((cuda_stream *)b->streams[s]->impl)->k;
        vc[s] = ((cuda_stream *)b->streams[s]->impl)->v;
    }
    if ((st = upload_step(ce, S, t_of, table_bytes, kc, tokens, t_of, err))) return st;
    CUDA_TRY(cudaEventRecord(ce->step_set[k].copied, ce->stream), "marking the decode tables copied");
    decode_args args = {S, longest, NULL, NULL, b};
    long long key[GRAPH_KEY_MAX] = {3,
                                    S,
                                    longest,
                                    (long long)ce->generation,
                                    (long long)(size_t)b->off,
                                    (long long)(size_t)b->cnt,
                                    (long long)(size_t)b->pos,
                                    (long long)(size_t)b->rows,
                                    (long long)(size_t)b->q,
                                    (long long)(size_t)b->k,
                                    (long long)(size_t)b->hook,
                                    b->hook ? b->hook->key : 0};
    return run_recorded(e, &ce->decode_graph, key, 12, enqueue_decode, &args, err);
}

/* ---- engine ----------------------------------------------------------------------- */

static void cuda_free(ap_engine *e)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    if (!ce) return;
    if (ce->stream) cudaStreamSynchronize(ce->stream); /* device decode steps return queued */
    graph_cache_clear(&ce->prefill_graph);
    graph_cache_clear(&ce->decode_graph);
    free_scratch(ce);
    cudaFree(ce->stage), cudaFree(ce->blas_workspace);
    free(ce->slots), free(ce->zeroed);
    cudaFree(ce->d_tables), cudaFree(ce->d_ptrs), cudaFree(ce->d_compact), cudaFree(ce->d_split);
    cudaFree(ce->attn_ptrs);
    cudaFreeHost(ce->h_tables), cudaFreeHost(ce->h_ptrs), cudaFreeHost(ce->h_compact);
    for (int k = 0; k < 2; k++) {
        if (ce->step_set[k].copied) cudaEventDestroy(ce->step_set[k].copied);
        cudaFreeHost(ce->step_set[k].host);
    }
    cudaFree(ce->weights);
    cudaFree(ce->weights_bf16);
    if (ce->blas) cublasDestroy(ce->blas);
    if (ce->lt) cublasLtDestroy(ce->lt);
    if (ce->stream) cudaStreamDestroy(ce->stream);
    free(ce);
}

static ap_status cuda_device_alloc(ap_engine *e, size_t bytes, void **out, ap_error *err)
{
    (void)e;
    CUDA_TRY(cudaMalloc(out, bytes ? bytes : 1), "allocating device memory for a capture");
    return AP_OK;
}

static void cuda_device_free(ap_engine *e, void *p)
{
    (void)e;
    cudaFree(p);
}

static const ap_backend_ops cuda_ops = {cuda_prefill,      cuda_stream_init,   cuda_stream_free,
                                        cuda_decode_step,  cuda_free,          cuda_prefill_batch,
                                        cuda_decode_device, cuda_device_alloc, cuda_device_free};

extern "C" ap_status ap_cuda_engine_init(ap_engine *e, ap_error *err)
{
    if (ap_cuda_device_count() == 0)
        return ap_error_set(err, AP_ERR_RUNTIME, "--device cuda: no CUDA device is visible");
    const int n_embd = e->model->config.n_embd;
    if (n_embd % 4 || n_embd > LN_MAX_EMBD)
        return ap_error_set(err, AP_ERR_INPUT,
                            "--device cuda: n_embd %d is not supported (the CUDA backend needs a multiple of 4, at most "
                            "%d)",
                            n_embd, LN_MAX_EMBD);
    cuda_engine *ce = (cuda_engine *)calloc(1, sizeof *ce);
    if (!ce) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    e->impl = ce;
    e->ops = &cuda_ops;
    ce->n_zeroed = -1;
    const ap_model *m = e->model;
    const size_t bytes = m->n_params * sizeof(float);
    CUDA_TRY(cudaStreamCreate(&ce->stream), "creating a CUDA stream");
    for (int k = 0; k < 2; k++)
        CUDA_TRY(cudaEventCreateWithFlags(&ce->step_set[k].copied, cudaEventDisableTiming), "creating an event");
    CUBLAS_TRY(cublasCreate(&ce->blas), "creating the cuBLAS handle");
    CUBLAS_TRY(cublasSetStream(ce->blas, ce->stream), "binding cuBLAS to the stream");
    /* a fixed workspace: cuBLAS must not allocate while launches are recorded */
    const size_t workspace = (size_t)32 << 20;
    CUDA_TRY(cudaMalloc(&ce->blas_workspace, workspace), "allocating the cuBLAS workspace");
    CUBLAS_TRY(cublasSetWorkspace(ce->blas, ce->blas_workspace, workspace), "setting the cuBLAS workspace");
    ce->blas_workspace_size = workspace;
    CUBLAS_TRY(cublasLtCreate(&ce->lt), "creating the cublasLt handle");
    CUBLAS_TRY(cublasSetMathMode(ce->blas, e->precision == AP_PRECISION_FP32 ? CUBLAS_PEDANTIC_MATH
                                                                             : CUBLAS_TF32_TENSOR_OP_MATH),
               "setting the math mode");
    CUDA_TRY(cudaMalloc(&ce->weights, bytes), "allocating the weights on the device");
    CUDA_TRY(cudaMemcpy(ce->weights, m->storage, bytes, cudaMemcpyHostToDevice), "copying the weights");
    if (e->precision == AP_PRECISION_BF16) {
        CUDA_TRY(cudaMalloc(&ce->weights_bf16, m->n_params * sizeof(__nv_bfloat16)), "allocating bf16 weights");
        to_bf16_kernel<<<blocks(m->n_params), 256, 0, ce->stream>>>(ce->weights_bf16, ce->weights, m->n_params);
        KERNEL_TRY("rounding the weights to bf16");
        CUDA_TRY(cudaStreamSynchronize(ce->stream), "rounding the weights to bf16");
    }
    cudaDeviceProp prop;
    int dev = 0;
    cudaGetDevice(&dev);
    cudaGetDeviceProperties(&prop, dev);
    if (e->precision != AP_PRECISION_FP32) {
        const int optin = (int)prop.sharedMemPerBlockOptin;
        CUDA_TRY(cudaFuncSetAttribute(fused_attention_kernel<32>, cudaFuncAttributeMaxDynamicSharedMemorySize, optin),
                 "allowing the fused attention its shared memory");
        CUDA_TRY(cudaFuncSetAttribute(fused_attention_kernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, optin),
                 "allowing the fused attention its shared memory");
        ce->fused_smem_max = optin;
    }
    const char *prec = e->precision == AP_PRECISION_FP32 ? "fp32" : e->precision == AP_PRECISION_TF32 ? "tf32" : "bf16";
    snprintf(e->device_name, sizeof e->device_name, "cuda (%s, %s)", prop.name, prec);
    return AP_OK;
}
