/* bench_policies — cost of one observe+evict step of each policy.
 *
 * usage: bench_policies [n_head=12] [head_dim=64]
 * For budgets 64 and 256 and sequences of 1024 and 8192 steps: nanoseconds
 * per step (all heads of one layer) and the policy's state bytes at the end.
 * Rows are fixed random vectors (the policy reads only its kept positions
 * and t), so the time is the policy's own. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "sketch/policy.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    const int H = argc > 1 ? atoi(argv[1]) : 12, HD = argc > 2 ? atoi(argv[2]) : 64;
    const int max_t = 8192;
    float *rows = malloc((size_t)H * max_t * sizeof *rows);
    float *qk = malloc((size_t)2 * max_t * H * HD * sizeof *qk);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < (size_t)H * max_t; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        rows[i] = (float)(x % 1000) / 1000.0f / 64.0f;
    }
    for (size_t i = 0; i < (size_t)2 * max_t * H * HD; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        qk[i] = (float)((int)(x % 2001) - 1000) / 1000.0f;
    }
    printf("%d heads, head_dim %d; ns per step (one layer, all heads) and state bytes\n", H, HD);
    printf("%-13s %7s %7s %12s %12s\n", "policy", "budget", "steps", "ns/step", "state_bytes");
    for (int i = 0; i < ap_policy_count(); i++) /* every registered policy */
        for (int budget = 64; budget <= 256; budget *= 4)
            for (int steps = 1024; steps <= max_t; steps *= 8) {
                ap_policy_params params;
                const char *name = ap_policy_info_at(i)->name;
                ap_policy_params_default(&params, name);
                params.budget = budget;
                ap_policy *p;
                ap_error err;
                if (ap_policy_create(&params, H, HD, &p, &err)) {
                    fprintf(stderr, "%s\n", err.msg);
                    return 1;
                }
                double t0 = now_s();
                for (int t = 0; t < steps; t++) {
                    const float *q = qk + (size_t)t * 2 * H * HD, *k = q + (size_t)H * HD;
                    if (ap_policy_select(p, t, q, &err) || ap_policy_observe(p, t, rows, max_t, q, k, &err)) {
                        fprintf(stderr, "%s\n", err.msg);
                        return 1;
                    }
                }
                double ns = (now_s() - t0) * 1e9 / steps;
                printf("%-13s %7d %7d %12.0f %12zu\n", name, budget, steps, ns,
                       ap_policy_state_bytes(p));
                ap_policy_free(p);
            }
    free(rows);
    free(qk);
    return 0;
}
