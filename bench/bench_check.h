/* bench_check.h — what the standalone CUDA benchmarks (device-alloc.cu,
 * first-call.cu) share: a monotonic clock and a check that leaves main. */
#ifndef AP_BENCH_CHECK_H
#define AP_BENCH_CHECK_H

#include <stdio.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A CUDA or cuBLAS call that must succeed: else its status, and main returns 1. */
#define CHECK(call)                                                                                  \
    do {                                                                                             \
        const int e_ = (int)(call);                                                                  \
        if (e_ != 0) {                                                                               \
            fprintf(stderr, "%s: error %d\n", #call, e_);                                            \
            return 1;                                                                                \
        }                                                                                            \
    } while (0)

#endif
