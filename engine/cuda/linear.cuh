/* linear.cuh — the linear layers (cuBLAS, cublasLt epilogues), LayerNorm and the transformer block around them.
 * Part of the CUDA backend: included once by cuda_backend.cu, after the
 * engine's state (one translation unit, as llm.c keeps one operation a file). */
#ifndef AP_CUDA_LINEAR_CUH
#define AP_CUDA_LINEAR_CUH

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

#endif
