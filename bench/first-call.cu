/* first-call.cu — what a CUDA process pays the first time it does each
 * thing the engine's first prefill does (the first engine call of a study
 * costs 0.1-0.25 s more than the others, bench/RESULTS.md): the context
 * made on another thread, then the first and second of each cuBLAS and
 * cublasLt product at GPT-2-small shapes (2 x 1,024 rows), a batched
 * product, a kernel of our own, a small copy from pageable memory and a
 * recorded graph. Host time of each call and a synchronize.
 *   build: nvcc -O2 -o first-call bench/first-call.cu -lcublas -lcublasLt -lpthread
 *   usage: first-call [thread|warm|bigmem]   (thread: the context made on a
 *   thread first; warm: a thread runs a product on handles of its own first;
 *   bigmem: 1 GB of host memory touched first) */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_check.h"
#include "lt_layer.h"

static double t_mark;
static void mark(const char *what)
{
    cudaDeviceSynchronize();
    const double t = now_s();
    printf("%-44s %8.4f s\n", what, t - t_mark);
    t_mark = now_s();
}

__global__ void scale_kernel(float *x, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= 0.5f;
}

static void *context_thread(void *arg)
{
    (void)arg;
    cudaFree(0);
    return NULL;
}

/* what a warm-up thread would do: its own stream and handles, one product of
 * each kind, then everything destroyed */
static void *warm_thread(void *arg)
{
    (void)arg;
    cudaStream_t s;
    cublasHandle_t h;
    float *buf;
    const float one = 1, zero = 0;
    if (cudaStreamCreate(&s) || cublasCreate(&h) || cudaMalloc(&buf, 3 * 64 * 64 * sizeof(float))) return NULL;
    cublasSetStream(h, s);
    cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH);
    cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 64, 64, 64, &one, buf, 64, buf + 4096, 64, &zero, buf + 8192, 64);
    cudaStreamSynchronize(s);
    cublasDestroy(h);
    cudaFree(buf);
    cudaStreamDestroy(s);
    return NULL;
}

/* the engine's MLP-up layer (bias + GELU epilogue, pedantic fp32) through cublasLt */
static int lt_gelu(cublasLtHandle_t lt, float *out, const float *in, const float *W, float *bias, int N, int IC,
                   int OC, void *ws, size_t ws_size, cudaStream_t s)
{
    lt_layer L;
    cublasLtMatmulHeuristicResult_t algo;
    int n_algo = 0;
    const float one = 1, zero = 0;
    void *bias_ptr = bias;
    CHECK(lt_layer_make(&L, CUBLAS_COMPUTE_32F_PEDANTIC, CUDA_R_32F, CUBLASLT_EPILOGUE_GELU_BIAS, &bias_ptr, N, IC,
                        OC, ws_size));
    CHECK(cublasLtMatmulAlgoGetHeuristic(lt, L.op, L.a, L.b, L.d, L.d, L.pref, 1, &algo, &n_algo));
    if (n_algo < 1) return 1;
    CHECK(cublasLtMatmul(lt, L.op, &one, W, L.a, in, L.b, &zero, out, L.d, out, L.d, &algo.algo, ws, ws_size, s));
    lt_layer_free(&L);
    return 0;
}

int main(int argc, char **argv)
{
    const int N = 2048, C = 768;
    t_mark = now_s();
    int n_dev = 0;
    CHECK(cudaGetDeviceCount(&n_dev));
    mark("cudaGetDeviceCount");
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "bigmem")) { /* a process holding a model's 1 GB, as attnprobe's does by now */
        static char *big;
        big = (char *)malloc((size_t)1 << 30);
        memset(big, 1, (size_t)1 << 30);
        mark("1 GB of host memory touched");
    }
    if (!strcmp(mode, "thread") || !strcmp(mode, "warm")) {
        pthread_t th;
        pthread_create(&th, NULL, !strcmp(mode, "warm") ? warm_thread : context_thread, NULL);
        pthread_join(th, NULL);
        mark(!strcmp(mode, "warm") ? "warm-up on a thread" : "context on a thread (cudaFree(0))");
    }
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    mark("cudaStreamCreate (main thread)");
    cublasHandle_t h;
    cublasLtHandle_t lt;
    CHECK(cublasCreate(&h));
    mark("cublasCreate");
    CHECK(cublasLtCreate(&lt));
    mark("cublasLtCreate");
    void *ws;
    const size_t ws_size = (size_t)32 << 20;
    CHECK(cudaMalloc(&ws, ws_size));
    CHECK(cublasSetStream(h, s));
    CHECK(cublasSetWorkspace(h, ws, ws_size));
    CHECK(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH));
    mark("stream, workspace, math mode");
    float *W, *x, *y, *bias;
    CHECK(cudaMalloc(&W, (size_t)4 * C * C * 4 * sizeof(float)));
    CHECK(cudaMalloc(&x, (size_t)N * 4 * C * sizeof(float)));
    CHECK(cudaMalloc(&y, (size_t)12 * 1024 * 1024 * sizeof(float)));
    CHECK(cudaMalloc(&bias, (size_t)4 * C * sizeof(float)));
    CHECK(cudaMemset(W, 0, (size_t)4 * C * C * 4 * sizeof(float)));
    CHECK(cudaMemset(x, 0, (size_t)N * 4 * C * sizeof(float)));
    CHECK(cudaMemset(bias, 0, (size_t)4 * C * sizeof(float)));
    mark("buffers");
    const float one = 1, zero = 0;
    for (int k = 0; k < 2; k++) {
        CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3 * C, N, C, &one, W, 3 * C, x, C, &zero, y, 3 * C));
        mark(k ? "  second" : "cublasSgemm 2304 x 2048 x 768, first");
    }
    for (int k = 0; k < 2; k++) {
        CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, C, N, C, &one, W, C, x, C, &zero, y, C));
        mark(k ? "  second" : "cublasSgemm 768 x 2048 x 768, first");
    }
    for (int k = 0; k < 2; k++) {
        CHECK(lt_gelu(lt, y, x, W, bias, N, C, 4 * C, ws, ws_size, s));
        mark(k ? "  second" : "cublasLt GELU+bias 3072 x 2048 x 768, first");
    }
    const float *A[12], *B[12];
    float *Cp[12];
    for (int i = 0; i < 12; i++) A[i] = W + i * 64, B[i] = x + i * 64, Cp[i] = y + (size_t)i * 1024 * 1024;
    const float **dA, **dB;
    float **dC;
    CHECK(cudaMalloc(&dA, sizeof A));
    CHECK(cudaMalloc(&dB, sizeof B));
    CHECK(cudaMalloc(&dC, sizeof Cp));
    CHECK(cudaMemcpy(dA, A, sizeof A, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dB, B, sizeof B, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dC, Cp, sizeof Cp, cudaMemcpyHostToDevice));
    mark("pointer tables");
    for (int k = 0; k < 2; k++) {
        CHECK(cublasSgemmBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, 1024, 1024, 64, &one, dA, 3 * C, dB, 3 * C, &zero, dC,
                                 1024, 12));
        mark(k ? "  second" : "cublasSgemmBatched 12 x 1024 x 1024 x 64, first");
    }
    for (int k = 0; k < 2; k++) {
        scale_kernel<<<(N * C + 255) / 256, 256, 0, s>>>(x, N * C);
        mark(k ? "  second" : "own kernel, first launch");
    }
    static int ids[2048];
    for (int k = 0; k < 2; k++) {
        CHECK(cudaMemcpyAsync(W, ids, sizeof ids, cudaMemcpyHostToDevice, s));
        mark(k ? "  second" : "cudaMemcpyAsync 8 KB pageable, first");
    }
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3 * C, N, C, &one, W, 3 * C, x, C, &zero, y, 3 * C));
    scale_kernel<<<(N * C + 255) / 256, 256, 0, s>>>(x, N * C);
    CHECK(cudaStreamEndCapture(s, &graph));
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    mark("graph: record and instantiate");
    for (int k = 0; k < 2; k++) {
        CHECK(cudaGraphLaunch(exec, s));
        mark(k ? "  second" : "graph launch, first");
    }
    return 0;
}
