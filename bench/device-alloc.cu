/* device-alloc.cu — what a study's device memory costs before any kernel
 * runs: creating the context, then N blocks of B MiB (a trace sample's
 * capture block is ~755 MiB at GPT-2-small shapes) by cudaMalloc, by a
 * fresh memory pool (cudaMallocFromPoolAsync), and again from that pool
 * once its blocks were freed (what a study's later batches get); then all
 * N blocks' bytes as one block, from a fresh pool and by cudaMalloc.
 *   build: nvcc -O2 -o device-alloc bench/device-alloc.cu
 *   usage: device-alloc [N] [MiB]   (32 755) */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_check.h"

int main(int argc, char **argv)
{
    const int n = argc > 1 ? atoi(argv[1]) : 32;
    const size_t bytes = (size_t)(argc > 2 ? atoi(argv[2]) : 755) << 20;
    void **block = (void **)calloc((size_t)n, sizeof *block);
    if (n < 1 || !block) return 1;
    double t = now_s();
    CHECK(cudaFree(0));
    printf("context: %.3f s\n", now_s() - t);

    t = now_s();
    for (int i = 0; i < n; i++) CHECK(cudaMalloc(&block[i], bytes));
    printf("cudaMalloc %d x %zu MiB: %.3f s\n", n, bytes >> 20, now_s() - t);
    t = now_s();
    for (int i = 0; i < n; i++) CHECK(cudaMemsetAsync(block[i], 0, bytes));
    CHECK(cudaDeviceSynchronize());
    printf("first write (memset) of them: %.3f s\n", now_s() - t);
    t = now_s();
    for (int i = 0; i < n; i++) CHECK(cudaFree(block[i]));
    printf("cudaFree: %.3f s\n", now_s() - t);

    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = 0;
    cudaMemPool_t pool;
    CHECK(cudaMemPoolCreate(&pool, &props));
    unsigned long long keep = ~0ull;
    CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    cudaStream_t stream;
    CHECK(cudaStreamCreate(&stream));
    for (int round = 0; round < 2; round++) {
        t = now_s();
        for (int i = 0; i < n; i++) CHECK(cudaMallocFromPoolAsync(&block[i], bytes, pool, stream));
        CHECK(cudaStreamSynchronize(stream));
        printf("pool, %s: %d x %zu MiB: %.3f s\n", round ? "reused" : "fresh", n, bytes >> 20, now_s() - t);
        t = now_s();
        for (int i = 0; i < n; i++) CHECK(cudaMemsetAsync(block[i], 0, bytes, stream));
        CHECK(cudaStreamSynchronize(stream));
        printf("  write (memset) of them: %.3f s\n", now_s() - t);
        for (int i = 0; i < n; i++) CHECK(cudaFreeAsync(block[i], stream));
        CHECK(cudaStreamSynchronize(stream));
    }
    CHECK(cudaMemPoolDestroy(pool));
    /* a fresh pool again, the N blocks' bytes asked for at once */
    CHECK(cudaMemPoolCreate(&pool, &props));
    CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    t = now_s();
    CHECK(cudaMallocFromPoolAsync(&block[0], bytes * n, pool, stream));
    CHECK(cudaStreamSynchronize(stream));
    printf("pool, fresh: 1 x %zu MiB: %.3f s\n", (bytes >> 20) * n, now_s() - t);
    CHECK(cudaFreeAsync(block[0], stream));
    CHECK(cudaStreamSynchronize(stream));
    CHECK(cudaMemPoolDestroy(pool));
    t = now_s();
    CHECK(cudaMalloc(&block[0], bytes * n));
    printf("cudaMalloc 1 x %zu MiB: %.3f s\n", (bytes >> 20) * n, now_s() - t);
    CHECK(cudaFree(block[0]));
    free(block);
    return 0;
}
