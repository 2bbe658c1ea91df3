/* seeds.c — how much a randomised policy's numbers move with its seed: runs
 * that differ only in their seed (--seeds) grouped, and the spread of their
 * means (docs/statistics.md). */
#include <gsl/gsl_statistics_double.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "reports.h"

/* The run's key without its seed: what makes runs of one group. */
static void key_without_seed(const ap_report_run *r, char *buf, size_t n)
{
    size_t used = (size_t)snprintf(buf, n, "%s|%d", r->policy, r->layer);
    for (int i = 0; i < r->n_params && used < n; i++)
        if (strcmp(r->param_name[i], "seed") != 0)
            used += (size_t)snprintf(buf + used, n - used, ",%s=%g", r->param_name[i], r->param_value[i]);
    if (used < n) snprintf(buf + used, n - used, ",%s", r->granularity);
}

int ap_seed_groups(const ap_summary *s, ap_seed_group *groups, int max_groups)
{
    int n_groups = 0;
    char *taken = calloc((size_t)s->n_runs + 1, 1);
    if (!taken) return 0;
    for (int i = 0; i < s->n_runs && n_groups < max_groups; i++) {
        if (taken[i]) continue;
        char ki[512], kj[512];
        key_without_seed(&s->runs[i], ki, sizeof ki);
        ap_seed_group g = {.first = i, .n = 0};
        for (int j = i; j < s->n_runs && g.n < AP_MAX_SEEDS; j++) {
            key_without_seed(&s->runs[j], kj, sizeof kj);
            if (strcmp(ki, kj) == 0) g.run[g.n++] = j, taken[j] = 1;
        }
        if (g.n > 1) groups[n_groups++] = g;
    }
    free(taken);
    return n_groups;
}

void ap_seed_spread(const ap_summary *s, const ap_seed_group *g, int metric, ap_stats *out)
{
    double means[AP_MAX_SEEDS];
    size_t n = 0;
    for (int i = 0; i < g->n; i++) {
        const double v = s->runs[g->run[i]].stats[metric].mean;
        if (!isnan(v)) means[n++] = v;
    }
    memset(out, 0, sizeof *out);
    out->n = n;
    out->mean = n ? gsl_stats_mean(means, 1, n) : NAN;
    out->sd = n > 1 ? gsl_stats_sd_m(means, 1, n, out->mean) : NAN;
    out->min = n ? gsl_stats_min(means, 1, n) : NAN;
    out->max = n ? gsl_stats_max(means, 1, n) : NAN;
    out->median = out->p05 = out->p95 = out->ci_lo = out->ci_hi = NAN;
}
