/* bench_metrics — cost of computing every metric of one attention row.
 *
 * usage: bench_metrics [n=1024] [calls=20000]
 * A random row of n positions with one in 16 retained (plus the last) and
 * the policy row renormalised on them, as in an isolated replay after
 * eviction; prints microseconds per ap_metrics_row call (no values, so
 * out_err is skipped). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "analysis/analysis.h"

int main(int argc, char **argv)
{
    const int n = argc > 1 ? atoi(argv[1]) : 1024, calls = argc > 2 ? atoi(argv[2]) : 20000;
    float *p = malloc((size_t)n * sizeof *p), *q = malloc((size_t)n * sizeof *q);
    unsigned char *kept = malloc((size_t)n);
    double sum = 0, mass = 0;
    srand(1);
    for (int j = 0; j < n; j++) sum += p[j] = (float)(rand() % 1000 + 1);
    for (int j = 0; j < n; j++) {
        p[j] = (float)(p[j] / sum);
        kept[j] = j % 16 == 0 || j == n - 1;
        if (kept[j]) mass += p[j];
    }
    for (int j = 0; j < n; j++) q[j] = kept[j] ? (float)(p[j] / mass) : 0.0f;
    double out[AP_M_COUNT], checksum = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int r = 0; r < calls; r++) {
        ap_metrics_row(p, q, kept, n, NULL, NULL, 0, out);
        checksum += out[AP_M_KL];
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double us = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / calls / 1e3;
    printf("%d positions: %.3f us per row (kl %.4f)\n", n, us, checksum / calls);
    free(p), free(q), free(kept);
    return 0;
}
