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
#include "../../common/phase.h"

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

extern "C" int ap_cuda_select_device(int index) { return cudaSetDevice(index) == cudaSuccess ? 0 : -1; }

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
    /* the capture buffers' own memory pool (NULL where the device has none:
     * plain cudaMalloc then), see cuda_device_alloc */
    cudaMemPool_t capture_pool;
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


#include "linear.cuh"
#include "prefill_attention.cuh"
#include "recorded.cuh"
#include "prefill.cuh"
#include "decode.cuh"

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
    if (ce->stream) {
        cudaStreamSynchronize(ce->stream); /* the capture buffers' frees */
        cudaStreamDestroy(ce->stream);
    }
    if (ce->capture_pool) cudaMemPoolDestroy(ce->capture_pool);
    free(ce);
}

/* Capture buffers come from the engine's own memory pool, which keeps what
 * is freed: a study's batches reuse the same blocks instead of mapping a
 * trace sample's hundreds of MB anew with cudaMalloc each time. When the
 * device runs out, what the pool holds unused is given back and the
 * allocation tried once more (samples of other lengths cannot reuse a
 * block). A block may be used on any stream once alloc returns; the caller
 * frees it when no work on it is in flight, before the engine goes. */
static ap_status cuda_device_alloc(ap_engine *e, size_t bytes, void **out, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    if (!bytes) bytes = 1;
    if (!ce->capture_pool) {
        CUDA_TRY(cudaMalloc(out, bytes), "allocating device memory for a capture");
        return AP_OK;
    }
    cudaError_t st = cudaMallocFromPoolAsync(out, bytes, ce->capture_pool, ce->stream);
    if (st == cudaErrorMemoryAllocation) {
        cudaGetLastError(); /* not sticky: clear it */
        cudaStreamSynchronize(ce->stream);
        cudaMemPoolTrimTo(ce->capture_pool, 0);
        st = cudaMallocFromPoolAsync(out, bytes, ce->capture_pool, ce->stream);
    }
    if (st == cudaSuccess) st = cudaStreamSynchronize(ce->stream);
    CUDA_TRY(st, "allocating device memory for a capture");
    return AP_OK;
}

static void cuda_device_free(ap_engine *e, void *p)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    if (ce->capture_pool) cudaFreeAsync(p, ce->stream);
    else cudaFree(p);
}

/* The capture pool, where the device supports memory pools: kept when freed
 * (release threshold: never; the engine's free destroys it). */
static ap_status make_capture_pool(cuda_engine *ce, ap_error *err)
{
    int device, pools = 0;
    CUDA_TRY(cudaGetDevice(&device), "finding the device");
    if (cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess || !pools) {
        cudaGetLastError();
        return AP_OK;
    }
    cudaMemPoolProps props;
    memset(&props, 0, sizeof props);
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    CUDA_TRY(cudaMemPoolCreate(&ce->capture_pool, &props), "creating the capture buffers' memory pool");
    uint64_t keep = UINT64_MAX;
    CUDA_TRY(cudaMemPoolSetAttribute(ce->capture_pool, cudaMemPoolAttrReleaseThreshold, &keep),
             "keeping freed capture buffers for reuse");
    return AP_OK;
}

static const ap_backend_ops cuda_ops = {cuda_prefill,      cuda_stream_init,   cuda_stream_free,
                                        cuda_decode_step,  cuda_free,          cuda_prefill_batch,
                                        cuda_decode_device, cuda_device_alloc, cuda_device_free};

/* The current device's context and cuBLAS's first product, on handles
 * thrown away after (ap_engine_warm_up): what the first engine call would
 * otherwise wait for. A failure is left for the engine to meet and report. */
extern "C" void ap_cuda_warm_up(void)
{
    cudaStream_t stream = NULL;
    cublasHandle_t blas = NULL;
    float *buf = NULL;
    const float one = 1.0f, zero = 0.0f;
    const int n = 32;
    if (cudaStreamCreate(&stream) == cudaSuccess && cublasCreate(&blas) == CUBLAS_STATUS_SUCCESS &&
        cublasSetStream(blas, stream) == CUBLAS_STATUS_SUCCESS &&
        cudaMalloc(&buf, 3 * n * n * sizeof(float)) == cudaSuccess &&
        cudaMemsetAsync(buf, 0, 3 * n * n * sizeof(float), stream) == cudaSuccess)
        cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, buf, n, buf + n * n, n, &zero, buf + 2 * n * n, n);
    if (stream) cudaStreamSynchronize(stream);
    if (blas) cublasDestroy(blas);
    if (buf) cudaFree(buf);
    if (stream) cudaStreamDestroy(stream);
    cudaGetLastError();
}

extern "C" void ap_cuda_versions(int *runtime, int *driver)
{
    if (cudaRuntimeGetVersion(runtime) != cudaSuccess) *runtime = 0;
    if (cudaDriverGetVersion(driver) != cudaSuccess) *driver = 0;
}

extern "C" ap_status ap_cuda_engine_init(ap_engine *e, ap_error *err)
{
    if (ap_cuda_device_count() == 0)
        return ap_error_set(err, AP_ERR_RUNTIME, "a CUDA engine: no CUDA device is visible");
    const int n_embd = e->model->config.n_embd;
    if (n_embd % 4 || n_embd > LN_MAX_EMBD)
        return ap_error_set(err, AP_ERR_INPUT,
                            "a CUDA engine: n_embd %d is not supported (the CUDA backend needs a multiple of 4, at most "
                            "%d)",
                            n_embd, LN_MAX_EMBD);
    cuda_engine *ce = (cuda_engine *)calloc(1, sizeof *ce);
    if (!ce) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    e->impl = ce;
    e->ops = &cuda_ops;
    ce->n_zeroed = -1;
    const ap_model *m = e->model;
    const size_t bytes = m->n_params * sizeof(float);
    ap_phase_mark("engine: start");
    CUDA_TRY(cudaStreamCreate(&ce->stream), "creating a CUDA stream");
    ap_phase_mark("engine: context");
    ap_status pool_st = make_capture_pool(ce, err);
    if (pool_st) return pool_st;
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
    ap_phase_mark("engine: cublas");
    CUDA_TRY(cudaMalloc(&ce->weights, bytes), "allocating the weights on the device");
    CUDA_TRY(cudaMemcpy(ce->weights, m->storage, bytes, cudaMemcpyHostToDevice), "copying the weights");
    ap_phase_mark("engine: weights");
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
