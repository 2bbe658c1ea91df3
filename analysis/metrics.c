/* metrics.c — fidelity of a policy's attention row to the reference row,
 * compared position by position (a kept token with itself). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis.h"

static const double M_LN2_ = 0.69314718055994530942;

static const char *const NAMES[AP_M_COUNT] = {
    "kl", "kl_rev", "js", "tv", "cosine", "l1", "l2", "peak_shift", "mass_retained",
    "topk_recall@1", "topk_recall@8", "topk_recall@32", "out_err", "index_l1", "index_rms",
    "index_kl", "index_cosine", "topk_recall@10", "attention_loss", "nll", "next_kl", "next_top1", "full_argmax_rank",
};

const char *ap_metric_name(ap_metric m) { return m < AP_M_COUNT ? NAMES[m] : "?"; }

int ap_metric_higher_is_better(ap_metric m)
{
    return m == AP_M_COSINE || m == AP_M_INDEX_COSINE || m == AP_M_NEXT_TOP1 || m == AP_M_MASS || m == AP_M_TOP1 || m == AP_M_TOP8 ||
           m == AP_M_TOP10 || m == AP_M_TOP32;
}

int ap_metric_from_name(const char *name)
{
    for (int m = 0; m < AP_M_COUNT; m++)
        if (strcmp(NAMES[m], name) == 0) return m;
    return -1;
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Recall of the top-k positions of p (k = 1, 8, 32 into out[0..2], 10 into
 * *out10; clipped to n; ties in p go to the earlier position) among the kept ones. */
static void topk_recall(const float *p, const unsigned char *kept, int n, double out[3], double *out10)
{
    enum { KMAX = 32 };
    int top[KMAX], m = 0; /* indices of the largest values, descending */
    for (int j = 0; j < n; j++) {
        if (m == KMAX && !(p[j] > p[top[m - 1]])) continue;
        int i = m < KMAX ? m++ : m - 1;
        while (i > 0 && p[j] > p[top[i - 1]]) {
            top[i] = top[i - 1];
            i--;
        }
        top[i] = j;
    }
    const int ks[4] = {1, 8, 32, 10};
    for (int r = 0; r < 4; r++) {
        int k = ks[r] < n ? ks[r] : n, hits = 0;
        for (int i = 0; i < k; i++) hits += kept[top[i]] != 0;
        *(r < 3 ? &out[r] : out10) = (double)hits / k;
    }
}

/* |o_q - o_p| / |o_p|. o_q sums only where q is non-zero (the retained
 * positions), so with o_p given the cost is O(retained * hd). */
static double output_error(const float *p, const float *q, int n, const float *v,
                           const float *o_p, int hd)
{
    double num = 0, den = 0;
    double oq[512], op[512];
    if (hd > 512) return NAN;
    for (int d = 0; d < hd; d++) oq[d] = 0, op[d] = o_p ? o_p[d] : 0;
    for (int j = 0; j < n; j++) {
        const float *vj = v + (size_t)j * hd;
        if (q[j] != 0)
            for (int d = 0; d < hd; d++) oq[d] += (double)q[j] * vj[d];
        if (!o_p)
            for (int d = 0; d < hd; d++) op[d] += (double)p[j] * vj[d];
    }
    for (int d = 0; d < hd; d++) {
        num += (oq[d] - op[d]) * (oq[d] - op[d]);
        den += op[d] * op[d];
    }
    return den > 0 ? sqrt(num / den) : 0.0;
}

void ap_metrics_row(const float *p, const float *q, const unsigned char *kept, int n,
                    const float *v, const float *o_p, int hd, double *out)
{
    /* ε-smoothed distributions for KL(p||q): add ε to both and renormalise */
    double sp = 0, sq = 0;
    for (int j = 0; j < n; j++) {
        sp += p[j];
        sq += q[j];
    }
    const double zp = sp + n * AP_KL_EPS, zq = sq + n * AP_KL_EPS;
    double kl = 0, kl_rev = 0, js = 0, l1 = 0, l2 = 0, dot = 0, np2 = 0, nq2 = 0, mass = 0, lost = 0;
    for (int j = 0; j < n; j++) {
        const double a = p[j], b = q[j];
        const double as = (a + AP_KL_EPS) / zp, bs = (b + AP_KL_EPS) / zq;
        kl += as * log(as / bs);
        if (b > 0) kl_rev += a > 0 ? b * log(b / a) : INFINITY;
        if (a > 0 && b > 0) {
            const double m = 0.5 * (a + b);
            js += 0.5 * (a * log(a / m) + b * log(b / m));
        } else {
            js += 0.5 * (a + b) * M_LN2_; /* one side zero: m = x / 2, x log(x / m) = x ln 2 */
        }
        l1 += fabs(a - b);
        l2 += (a - b) * (a - b);
        dot += a * b;
        np2 += a * a;
        nq2 += b * b;
        if (kept[j]) mass += a;
        else lost += a;
    }
    out[AP_M_KL] = kl > 0 ? kl : 0.0; /* rounding can give -1e-17 for identical rows */
    out[AP_M_KL_REV] = kl_rev;
    out[AP_M_JS] = js > 0 ? js : 0.0;
    out[AP_M_TV] = 0.5 * l1;
    out[AP_M_COSINE] = np2 > 0 && nq2 > 0 ? dot / sqrt(np2 * nq2) : 0.0;
    out[AP_M_L1] = l1;
    out[AP_M_L2] = sqrt(l2);
    out[AP_M_PEAK_SHIFT] = abs(argmax(p, n) - argmax(q, n));
    /* relative to the row's own total, so keeping everything gives exactly 1 */
    out[AP_M_MASS] = sp > 0 ? mass / sp : 0.0;
    out[AP_M_ATTN_LOSS] = sp > 0 ? lost / sp : 0.0;
    topk_recall(p, kept, n, &out[AP_M_TOP1], &out[AP_M_TOP10]); /* TOP1, TOP8, TOP32 are consecutive */
    out[AP_M_OUT_ERR] = v ? output_error(p, q, n, v, o_p, hd) : NAN;
    /* The seed study's comparison: the compacted cache's row (retained
     * positions in order, zero-padded) against the reference by slot index. */
    /* c holds q's values in another order, so it sums to sq and its norm is
     * q's: KL and cosine need only the terms that pair p_j with c_j. */
    double il1 = 0, il2 = 0, ikl = 0, idot = 0;
    int slot = 0;
    for (int j = 0; j < n; j++) {
        while (slot < n && !kept[slot]) slot++; /* next retained position */
        const double c = slot < n ? q[slot] : 0.0;
        if (slot < n) slot++;
        const double as = (p[j] + AP_KL_EPS) / zp, cs = (c + AP_KL_EPS) / zq;
        il1 += fabs(p[j] - c);
        il2 += (p[j] - c) * (p[j] - c);
        ikl += as * log(as / cs);
        idot += p[j] * c;
    }
    out[AP_M_INDEX_L1] = il1 / n;
    out[AP_M_INDEX_RMS] = sqrt(il2 / n);
    out[AP_M_INDEX_KL] = ikl > 0 ? ikl : 0.0;
    out[AP_M_INDEX_COSINE] = np2 > 0 && nq2 > 0 ? idot / sqrt(np2 * nq2) : 0.0;
    for (int m = AP_M_FIRST_NEXT; m < AP_M_COUNT; m++) out[m] = NAN;
}
