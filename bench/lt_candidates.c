/* lt_candidates — times every algorithm cublasLt's heuristic offers for the
 * trace's four linear layers (GPT-2-small shapes, 8 samples of 1024 tokens:
 * 8192 rows) with the epilogues the engine asks for, in TF32 or bf16. Shows
 * whether the heuristic's first choice (what the engine runs) is the fastest
 * and what a fused bias + GELU costs against the plain product.
 *   usage: lt_candidates [tf32|bf16] [rows] */
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lt_layer.h"

#define CHECK(x)                                                                                           \
    do {                                                                                                   \
        long long rc_ = (long long)(x);                                                                    \
        if (rc_) {                                                                                         \
            fprintf(stderr, "lt_candidates: %s failed (%lld)\n", #x, rc_);                                 \
            exit(1);                                                                                       \
        }                                                                                                  \
    } while (0)

enum { MAX_ALGOS = 16, REPEAT = 20 };

/* out[N, OC] = epi(in[N, IC] @ W[IC, OC] + bias): each candidate's mean time. */
static void time_candidates(cublasLtHandle_t lt, int bf16, cublasLtEpilogue_t ep, const char *name, int N, int IC,
                            int OC, void *ws, size_t ws_size)
{
    const cudaDataType in_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t compute = bf16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
    const size_t in_size = bf16 ? 2 : 4;
    void *in, *W, *out, *bias;
    CHECK(cudaMalloc(&in, (size_t)N * IC * in_size));
    CHECK(cudaMalloc(&W, (size_t)IC * OC * in_size));
    CHECK(cudaMalloc(&out, (size_t)N * OC * 4));
    CHECK(cudaMalloc(&bias, (size_t)OC * 4));
    CHECK(cudaMemset(in, 0, (size_t)N * IC * in_size));
    CHECK(cudaMemset(W, 0, (size_t)IC * OC * in_size));
    CHECK(cudaMemset(bias, 0, (size_t)OC * 4));
    const float one = 1.0f, zero = 0.0f;
    lt_layer L;
    CHECK(lt_layer_make(&L, compute, in_type, ep, &bias, N, IC, OC, ws_size));
    cublasLtMatmulDesc_t op = L.op;
    cublasLtMatrixLayout_t a = L.a, b = L.b, d = L.d;
    cublasLtMatmulHeuristicResult_t algo[MAX_ALGOS];
    int n_algo = 0;
    CHECK(cublasLtMatmulAlgoGetHeuristic(lt, op, a, b, d, d, L.pref, MAX_ALGOS, algo, &n_algo));
    cudaEvent_t t0, t1;
    CHECK(cudaEventCreate(&t0));
    CHECK(cudaEventCreate(&t1));
    printf("%s %s, %d x %d x %d: %d candidates\n", bf16 ? "bf16" : "tf32", name, N, IC, OC, n_algo);
    for (int i = 0; i < n_algo; i++) {
        int id = 0, tile = 0, splitk = 0, stages = 0;
        size_t got;
        cublasLtMatmulAlgoConfigGetAttribute(&algo[i].algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &got);
        cublasLtMatmulAlgoConfigGetAttribute(&algo[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &got);
        cublasLtMatmulAlgoConfigGetAttribute(&algo[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk,
                                             &got);
        cublasLtMatmulAlgoConfigGetAttribute(&algo[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages,
                                             &got);
        cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
        for (int r = 0; r < 3 && !s; r++) /* warm-up */
            s = cublasLtMatmul(lt, op, &one, W, a, in, b, &zero, out, d, out, d, &algo[i].algo, ws, ws_size, 0);
        CHECK(cudaEventRecord(t0, 0));
        for (int r = 0; r < REPEAT && !s; r++)
            s = cublasLtMatmul(lt, op, &one, W, a, in, b, &zero, out, d, out, d, &algo[i].algo, ws, ws_size, 0);
        CHECK(cudaEventRecord(t1, 0));
        CHECK(cudaEventSynchronize(t1));
        float ms = 0;
        CHECK(cudaEventElapsedTime(&ms, t0, t1));
        if (s) printf("  #%-2d algo %3d tile %3d split-K %2d stages %3d: status %d\n", i, id, tile, splitk, stages,
                      (int)s);
        else printf("  #%-2d algo %3d tile %3d split-K %2d stages %3d: %8.1f us  %6.1f TFLOP/s\n", i, id, tile, splitk,
                    stages, ms * 1e3 / REPEAT, 2.0 * N * IC * OC / (ms * 1e-3 / REPEAT) / 1e12);
    }
    cudaEventDestroy(t0), cudaEventDestroy(t1);
    lt_layer_free(&L);
    cudaFree(in), cudaFree(W), cudaFree(out), cudaFree(bias);
}

int main(int argc, char **argv)
{
    const int bf16 = argc > 1 && !strcmp(argv[1], "bf16");
    const int N = argc > 2 ? atoi(argv[2]) : 8192, C = 768;
    cublasLtHandle_t lt;
    CHECK(cublasLtCreate(&lt));
    const size_t ws_size = 32u << 20;
    void *ws;
    CHECK(cudaMalloc(&ws, ws_size));
    time_candidates(lt, bf16, CUBLASLT_EPILOGUE_BIAS, "q/k/v + bias", N, C, 3 * C, ws, ws_size);
    time_candidates(lt, bf16, CUBLASLT_EPILOGUE_GELU_BIAS, "MLP up + bias + GELU", N, C, 4 * C, ws, ws_size);
    time_candidates(lt, bf16, CUBLASLT_EPILOGUE_BIAS, "MLP up + bias (no GELU)", N, C, 4 * C, ws, ws_size);
    time_candidates(lt, bf16, CUBLASLT_EPILOGUE_DEFAULT, "MLP up, plain", N, C, 4 * C, ws, ws_size);
    cudaFree(ws);
    cublasLtDestroy(lt);
    return 0;
}
