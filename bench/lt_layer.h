/* lt_layer.h — the engine's linear layer as cublasLt sees it
 * (engine/cuda/linear.cuh's lt_linear), for the benchmarks that time it
 * (lt_candidates.c, first-call.cu): out^T[OC, N] = W^T[OC, IC] in^T[IC, N],
 * the epilogue's bias (fp32) at *bias. */
#ifndef AP_BENCH_LT_LAYER_H
#define AP_BENCH_LT_LAYER_H

#include <cublasLt.h>

typedef struct {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulPreference_t pref;
} lt_layer;

static cublasStatus_t lt_layer_make(lt_layer *L, cublasComputeType_t compute, cudaDataType in_type,
                                    cublasLtEpilogue_t ep, void *const *bias, int N, int IC, int OC, size_t ws_size)
{
    const int32_t bias_type = CUDA_R_32F;
    cublasStatus_t s = cublasLtMatmulDescCreate(&L->op, compute, CUDA_R_32F);
    if (!s) s = cublasLtMatmulDescSetAttribute(L->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep);
    if (!s && ep != CUBLASLT_EPILOGUE_DEFAULT)
        s = cublasLtMatmulDescSetAttribute(L->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias, sizeof *bias);
    if (!s && ep != CUBLASLT_EPILOGUE_DEFAULT)
        s = cublasLtMatmulDescSetAttribute(L->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type);
    if (!s) s = cublasLtMatrixLayoutCreate(&L->a, in_type, OC, IC, OC);
    if (!s) s = cublasLtMatrixLayoutCreate(&L->b, in_type, IC, N, IC);
    if (!s) s = cublasLtMatrixLayoutCreate(&L->d, CUDA_R_32F, OC, N, OC);
    if (!s) s = cublasLtMatmulPreferenceCreate(&L->pref);
    if (!s)
        s = cublasLtMatmulPreferenceSetAttribute(L->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_size,
                                                 sizeof ws_size);
    return s;
}

static void lt_layer_free(lt_layer *L)
{
    cublasLtMatmulPreferenceDestroy(L->pref);
    cublasLtMatrixLayoutDestroy(L->d), cublasLtMatrixLayoutDestroy(L->b), cublasLtMatrixLayoutDestroy(L->a);
    cublasLtMatmulDescDestroy(L->op);
}

#endif
