/* quant.c — KIVI's asymmetric quantisation of the KV cache (Liu et al.,
 * "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML
 * 2024): keys per channel, because their outliers sit in fixed channels;
 * values per token; the most recent positions in full precision until a
 * whole group of them can be quantised together. A key block's statistics
 * are those of all its positions as the model wrote them, so quantisation
 * composes with any eviction (docs/policies.md). */
#include <math.h>
#include <string.h>

#include "sketch.h"

void ap_quant_span(const float *x, size_t stride, int n, int bits, float *out)
{
    if (n < 1) return;
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        const float v = x[(size_t)i * stride];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    const double scale = ((double)hi - lo) / ((1 << bits) - 1);
    for (int i = 0; i < n; i++) {
        const float v = x[(size_t)i * stride];
        out[(size_t)i * stride] = scale > 0 ? (float)(lo + nearbyint((v - (double)lo) / scale) * scale) : v;
    }
}

void ap_quant_keys(const ap_quant *q, const float *k, int T, int D, float *k_hat)
{
    memcpy(k_hat, k, (size_t)T * D * sizeof *k_hat);
    for (int first = 0; first + q->group <= T; first += q->group)
        for (int d = 0; d < D; d++)
            ap_quant_span(k + (size_t)first * D + d, (size_t)D, q->group, q->bits, k_hat + (size_t)first * D + d);
}

void ap_quant_values(const ap_quant *q, const float *v, int T, int D, float *v_hat)
{
    for (int j = 0; j < T; j++)
        for (int first = 0; first < D; first += q->group) {
            const int n = first + q->group <= D ? q->group : D - first;
            ap_quant_span(v + (size_t)j * D + first, 1, n, q->bits, v_hat + (size_t)j * D + first);
        }
}

int ap_quant_key_held(const ap_quant *q, int j, int t)
{
    const int block_end = (j / q->group + 1) * q->group - 1;
    return q->bits > 0 && block_end <= t - q->residual;
}

int ap_quant_value_held(const ap_quant *q, int j, int t) { return q->bits > 0 && j <= t - q->residual; }

double ap_quant_bytes(const ap_quant *q, const int *kept, int n, int t, int D)
{
    const double code = q->bits / 8.0, half = 2.0; /* fp16 */
    const int value_groups = (D + q->group - 1) / q->group;
    double bytes = 0;
    int last_block = -1;
    for (int i = 0; i < n; i++) {
        const int j = kept[i];
        if (ap_quant_key_held(q, j, t)) {
            bytes += D * code;
            if (j / q->group != last_block) bytes += 2.0 * D * half; /* the block's scales and minima */
            last_block = j / q->group;
        } else {
            bytes += D * half;
        }
        bytes += ap_quant_value_held(q, j, t) ? D * code + 2.0 * value_groups * half : D * half;
    }
    return bytes;
}
