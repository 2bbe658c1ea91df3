/* metrics_device.cuh — ap_metrics_row (metrics.c) on a CUDA device, one warp
 * per row, for replays whose reference rows never leave the GPU. Same
 * definitions; sums over positions are split among the lanes and the KL
 * sums rearranged (ap_metrics_row_warp), so a value can differ from the
 * host's in its last bits (a row with nothing evicted still gives KL
 * exactly 0, as the host's x log 1 terms do). Include from a .cu file. */
#ifndef AP_METRICS_DEVICE_CUH
#define AP_METRICS_DEVICE_CUH

#include "analysis.h"

/* Below this smoothed mass where the policy's row is zero, a row's KL is
 * summed term by term rather than rearranged (ap_metrics_row_warp). */
#define AP_KL_DIRECT_BELOW 1e-6

/* The policy's retained set of one row: all of 0..t (all_kept), or the
 * cnt ascending positions pos[] (all < t) and t itself. */
typedef struct {
    int t, cnt, all_kept;
    const int *pos;
} ap_row_set;

__device__ static inline double ap_warp_sum(double x)
{
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/* Warp argmax of (value, position): the larger value, the earlier position on ties. */
__device__ static inline void ap_warp_argmax(float *value, int *pos)
{
    for (int o = 16; o > 0; o >>= 1) {
        const float v2 = __shfl_xor_sync(0xffffffffu, *value, o);
        const int p2 = __shfl_xor_sync(0xffffffffu, *pos, o);
        if (p2 >= 0 && (*pos < 0 || v2 > *value || (v2 == *value && p2 < *pos))) *value = v2, *pos = p2;
    }
}

/* top[0..min(32, n)): the positions of the largest p[0..n), best first, the
 * earlier position first among equal values (metrics.c's order), one
 * selection a round; a lane keeps its positions' selected flags (j = lane +
 * 32 i, bit i), so n <= 1024. Written by lane 0. */
__device__ static void ap_topk_warp(const float *p, int n, int *top)
{
    const int lane = threadIdx.x % 32, kmax = n < 32 ? n : 32;
    unsigned taken = 0;
    for (int r = 0; r < kmax; r++) {
        float bv = -1.0f;
        int bj = -1;
        for (int i = 0, j = lane; j < n; i++, j += 32)
            if (!(taken >> i & 1u) && (bj < 0 || p[j] > bv)) bv = p[j], bj = j;
        ap_warp_argmax(&bv, &bj);
        if (bj % 32 == lane) taken |= 1u << (bj / 32);
        if (lane == 0) top[r] = bj;
    }
}

/* The j-th retained position, ascending (-1 past the last). */
__device__ static inline int ap_row_set_at(const ap_row_set *k, int j)
{
    if (k->all_kept) return j <= k->t ? j : -1;
    return j < k->cnt ? k->pos[j] : j == k->cnt ? k->t : -1;
}

/* Σ_j as_j log as_j of reference row p[0..n), as_j = (p_j + ε) / zp its
 * ε-smoothed value: the part of every policy's KL that depends on p alone,
 * found once a row (beside its top positions). The sum on every lane. */
__device__ static double ap_row_neg_entropy_warp(const float *p, int n)
{
    const int lane = threadIdx.x % 32;
    double sp = 0;
    for (int j = lane; j < n; j += 32) sp += p[j];
    const double zp = ap_warp_sum(sp) + n * AP_KL_EPS;
    double h = 0;
    for (int j = lane; j < n; j += 32) {
        const double as = (p[j] + AP_KL_EPS) / zp;
        h += as * log(as);
    }
    return ap_warp_sum(h);
}

/* KL(p‖q) summed term by term, as the host sums it, over the row's n
 * positions: q_j = q[j], or with by_slot the j-th retained entry's value
 * (the index KL; 0 beyond the n_set entries). */
__device__ static double ap_kl_direct_warp(const float *p, const float *q, const ap_row_set *set, int by_slot, int n,
                                           int n_set, double zp, double zq, int lane)
{
    double kl = 0;
    for (int j = lane; j < n; j += 32) {
        const int slot = !by_slot ? j : j < n_set ? ap_row_set_at(set, j) : -1;
        const double as = (p[j] + AP_KL_EPS) / zp, bs = ((slot >= 0 ? (double)q[slot] : 0.0) + AP_KL_EPS) / zq;
        kl += as * log(as / bs);
    }
    return ap_warp_sum(kl);
}

/* Metrics of reference row p[0..t] against the policy row that is p
 * restricted to the set and renormalised (the isolated replay's row).
 * top: p's min(32, t + 1) largest positions, best first, ties to the earlier
 * position (ap_topk_warp; the same for every policy, so found once a row);
 * neg_entropy: ap_row_neg_entropy_warp(p, t + 1).
 * q, kept: the warp's scratch of t + 1 floats and bytes. v: [t + 1, hd]
 * reference values, o_p: [hd] reference output. out[AP_M_COUNT] on lane 0.
 *
 * The divergences take a log only where the policy's row is non-zero (see
 * docs/architecture.md, "Metrics on the device"): with bs_j = c0 = ε / zq
 * wherever q_j = 0,
 *   KL = Σ as log(as / bs) = neg_entropy − Σ_{q_j ≠ 0} as log bs − log c0 · Σ_{q_j = 0} as,
 * and the index KL likewise over the slot values c_j; JS and the reverse KL
 * have log terms only where both rows are non-zero. A row with nothing
 * evicted gives every divergence exactly 0, as on the host. */
__device__ static void ap_metrics_row_warp(const float *p, const ap_row_set *set, const int *top, double neg_entropy,
                                           const float *v, const float *o_p, int hd, float *q, unsigned char *kept,
                                           double *out)
{
    const int lane = threadIdx.x % 32, t = set->t, n = t + 1;
    /* the policy's row: p itself when nothing was evicted, else renormalised
     * on the set with the host's double sum in the host's order */
    const int nothing_evicted = set->all_kept || set->cnt == t;
    const int n_set = nothing_evicted ? n : set->cnt + 1; /* the positions q may be non-zero at */
    double mass = 0;
    if (!nothing_evicted && lane == 0) {
        mass = p[t];
        for (int x = 0; x < set->cnt; x++) mass += p[set->pos[x]];
    }
    mass = __shfl_sync(0xffffffffu, mass, 0);
    for (int j = lane; j < n; j += 32) {
        q[j] = nothing_evicted ? p[j] : 0.0f;
        kept[j] = (unsigned char)nothing_evicted;
    }
    __syncwarp();
    if (!nothing_evicted) {
        for (int x = lane; x < n_set; x += 32) {
            const int j = x < set->cnt ? set->pos[x] : t;
            q[j] = mass > 0 ? (float)(p[j] / mass) : 0.0f;
            kept[j] = 1;
        }
    }
    __syncwarp();
    double sp = 0, sq = 0;
    for (int j = lane; j < n; j += 32) sp += p[j], sq += q[j];
    sp = ap_warp_sum(sp);
    sq = ap_warp_sum(sq);
    const double zp = sp + n * AP_KL_EPS, zq = sq + n * AP_KL_EPS, ln2 = 0.69314718055994530942;
    /* the dense pass: every position's cheap terms, the index KL's logs
     * (slots 0..n_set - 1 are the first positions, so no lane idles) */
    double l1 = 0, l2 = 0, dot = 0, np2 = 0, nq2 = 0, mk = 0, lost = 0, il1 = 0, il2 = 0, idot = 0;
    double js = 0, q_zero = 0, ikl_part = 0, c_zero = 0;
    float best_p = -1.0f, best_q = -1.0f;
    int arg_p = -1, arg_q = -1;
    for (int j = lane; j < n; j += 32) {
        const double a = p[j], b = q[j];
        const double as = (a + AP_KL_EPS) / zp;
        if (!(a > 0 && b > 0)) js += 0.5 * (a + b) * ln2;
        if (b == 0) q_zero += as;
        l1 += fabs(a - b);
        l2 += (a - b) * (a - b);
        dot += a * b;
        np2 += a * a;
        nq2 += b * b;
        if (kept[j]) mk += a;
        else lost += a;
        if (p[j] > best_p) best_p = p[j], arg_p = j;
        if (q[j] > best_q) best_q = q[j], arg_q = j;
        /* the seed study's slot-index comparison: the j-th retained entry against p_j */
        const int slot = j < n_set ? ap_row_set_at(set, j) : -1;
        const double c = slot >= 0 ? (double)q[slot] : 0.0;
        il1 += fabs(a - c);
        il2 += (a - c) * (a - c);
        idot += a * c;
        if (c == 0) c_zero += as;
        else ikl_part += as * log((c + AP_KL_EPS) / zq); /* c sums to sq: q's values in slot order */
    }
    /* the retained positions: the log terms */
    double kl_part = 0, kl_rev = 0;
    if (!nothing_evicted) {
        for (int x = lane; x < n_set; x += 32) {
            const int j = ap_row_set_at(set, x);
            const double a = p[j], b = q[j];
            if (b == 0) continue;
            kl_part += (a + AP_KL_EPS) / zp * log((b + AP_KL_EPS) / zq);
            kl_rev += a > 0 ? b * log(b / a) : INFINITY;
            if (a > 0) {
                const double m = 0.5 * (a + b);
                js += 0.5 * (a * log(a / m) + b * log(b / m));
            }
        }
    }
    l1 = ap_warp_sum(l1), l2 = ap_warp_sum(l2), dot = ap_warp_sum(dot), np2 = ap_warp_sum(np2);
    nq2 = ap_warp_sum(nq2), mk = ap_warp_sum(mk), lost = ap_warp_sum(lost), il1 = ap_warp_sum(il1);
    il2 = ap_warp_sum(il2), idot = ap_warp_sum(idot), js = ap_warp_sum(js), kl_rev = ap_warp_sum(kl_rev);
    q_zero = ap_warp_sum(q_zero), c_zero = ap_warp_sum(c_zero), kl_part = ap_warp_sum(kl_part);
    ikl_part = ap_warp_sum(ikl_part);
    const double log_c0 = log(AP_KL_EPS / zq);
    /* nothing evicted: q = p, every term is x log 1 on the host */
    double kl = nothing_evicted ? 0.0 : neg_entropy - kl_part - log_c0 * q_zero;
    double ikl = nothing_evicted ? 0.0 : neg_entropy - ikl_part - log_c0 * c_zero;
    if (nothing_evicted) js = 0, kl_rev = 0;
    /* the rearranged sums carry an absolute error of ~1e-15 (neg_entropy is
     * of the order of log n): where the smoothed mass at q = 0 (or c = 0) is
     * below AP_KL_DIRECT_BELOW the divergence is that small too, and it is
     * summed term by term as on the host (warp-uniform branches) */
    if (!nothing_evicted && q_zero < AP_KL_DIRECT_BELOW) kl = ap_kl_direct_warp(p, q, set, 0, n, n_set, zp, zq, lane);
    if (!nothing_evicted && c_zero < AP_KL_DIRECT_BELOW) ikl = ap_kl_direct_warp(p, q, set, 1, n, n_set, zp, zq, lane);
    ap_warp_argmax(&best_p, &arg_p);
    ap_warp_argmax(&best_q, &arg_q);
    /* recall of p's top positions (given, best first) among the kept ones */
    const int kmax = n < 32 ? n : 32;
    const unsigned hit = __ballot_sync(0xffffffffu, lane < kmax && (kept[top[lane < kmax ? lane : 0]] & 1));
    const int hits[4] = {(int)(hit & 1u), __popc(hit & 0xffu), __popc(hit), __popc(hit & 0x3ffu)};
    /* the attention output over the policy's row, each dimension's sum in
     * the host's position order; a lane sums two dimensions side by side */
    double num = 0, den = 0;
    for (int d0 = lane; d0 < hd; d0 += 64) {
        const int d1 = d0 + 32 < hd ? d0 + 32 : d0;
        double oq0 = 0, oq1 = 0;
        for (int x = 0; x < n_set; x++) {
            const int j = nothing_evicted ? x : ap_row_set_at(set, x);
            const double qj = q[j];
            if (qj != 0) {
                const float *vj = v + (size_t)j * hd;
                oq0 += qj * vj[d0];
                oq1 += qj * vj[d1];
            }
        }
        const double op0 = o_p[d0];
        num += (oq0 - op0) * (oq0 - op0);
        den += op0 * op0;
        if (d1 != d0) {
            const double op1 = o_p[d1];
            num += (oq1 - op1) * (oq1 - op1);
            den += op1 * op1;
        }
    }
    num = ap_warp_sum(num), den = ap_warp_sum(den);
    if (lane == 0) {
        out[AP_M_KL] = kl > 0 ? kl : 0.0;
        out[AP_M_KL_REV] = kl_rev;
        out[AP_M_JS] = js > 0 ? js : 0.0;
        out[AP_M_TV] = 0.5 * l1;
        out[AP_M_COSINE] = np2 > 0 && nq2 > 0 ? dot / sqrt(np2 * nq2) : 0.0;
        out[AP_M_L1] = l1;
        out[AP_M_L2] = sqrt(l2);
        out[AP_M_PEAK_SHIFT] = abs(arg_p - arg_q);
        out[AP_M_MASS] = sp > 0 ? mk / sp : 0.0;
        const int ks[3] = {1, 8, 32};
        for (int r = 0; r < 3; r++) out[AP_M_TOP1 + r] = (double)hits[r] / (ks[r] < n ? ks[r] : n);
        out[AP_M_TOP10] = (double)hits[3] / (10 < n ? 10 : n);
        out[AP_M_ATTN_LOSS] = sp > 0 ? lost / sp : 0.0;
        out[AP_M_OUT_ERR] = hd <= 512 ? (den > 0 ? sqrt(num / den) : 0.0) : NAN;
        out[AP_M_INDEX_L1] = il1 / n;
        out[AP_M_INDEX_RMS] = sqrt(il2 / n);
        out[AP_M_INDEX_KL] = ikl > 0 ? ikl : 0.0;
        out[AP_M_INDEX_COSINE] = np2 > 0 && nq2 > 0 ? idot / sqrt(np2 * nq2) : 0.0;
        for (int m = AP_M_FIRST_NEXT; m < AP_M_COUNT; m++) out[m] = NAN; /* next-token metrics: eval's */
    }
}

#endif
