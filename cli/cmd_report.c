/* cmd_report.c — report (render a saved summary) and check (the regression
 * gate users put in their CI). */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "reports/reports.h"

int cmd_report(int argc, char **argv)
{
    ap_error err;
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: attnprobe report SUMMARY.json\nPrints the table of a summary written by "
               "attnprobe run.\n");
        return 0;
    }
    if (argc != 2) {
        ap_error_set(&err, AP_ERR_USAGE, "report takes one summary file (attnprobe report "
                     "attnprobe-out/summary.json)");
        return cli_fail(AP_ERR_USAGE, &err);
    }
    ap_summary s;
    ap_status st = ap_summary_read_json(argv[1], &s, &err);
    if (st) return cli_fail(st, &err);
    ap_summary_print_table(&s, stdout);
    ap_summary_free(&s);
    return 0;
}

int cmd_check(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"baseline", required_argument, 0, 'b'}, {"current", required_argument, 0, 'c'},
        {"tol", required_argument, 0, 't'},      {"help", no_argument, 0, 'h'},
        {"allow-mismatch", no_argument, 0, 'm'}, {"tolerance-only", no_argument, 0, 'n'},
        {0, 0, 0, 0},
    };
    const char *base_path = NULL, *cur_path = NULL, *tol_spec = NULL;
    int allow_mismatch = 0, noise_aware = 1;
    ap_error err;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+", longopts, NULL)) != -1) {
        switch (c) {
        case 'b': base_path = optarg; break;
        case 'c': cur_path = optarg; break;
        case 't': tol_spec = optarg; break;
        case 'm': allow_mismatch = 1; break;
        case 'n': noise_aware = 0; break;
        case 'h':
            printf("usage: attnprobe check --baseline A.json --current B.json [--tol kl=0.05,cosine=0.01]\n"
                   "                       [--allow-mismatch] [--tolerance-only]\n"
                   "Matches runs by policy, parameters and layer and compares metric means.\n"
                   "Summaries of another model, input, sample count, length, stride, warmup, layers,\n"
                   "mode or heads are refused (exit 3) unless --allow-mismatch (noted in the output).\n"
                   "When both carry each sample's means (summaries of this version), a change beyond\n"
                   "the tolerance counts only if the paired difference's 95%% CI excludes 0 on the\n"
                   "worse side (noise-aware; --tolerance-only: the tolerance alone).\n"
                   "A mean worse than the baseline's by more than its tolerance is a regression.\n"
                   "Default tolerances: kl 0.05, kl_rev 0.05, js 0.01, cosine 0.01, mass_retained 0.01,\n"
                   "l1 0.04, peak_shift 1, the rest 0.02.\n"
                   "Exit: 0 no regression, 1 regression, 2 usage, 3 unreadable or mismatched summary.\n");
            return 0;
        default:
            ap_error_set(&err, AP_ERR_USAGE, "%s: unknown option or missing value (see attnprobe "
                         "check --help)", argv[optind - 1]);
            return cli_fail(AP_ERR_USAGE, &err);
        }
    }
    if (!base_path || !cur_path || optind < argc) {
        ap_error_set(&err, AP_ERR_USAGE, "check needs --baseline FILE and --current FILE");
        return cli_fail(AP_ERR_USAGE, &err);
    }
    double tol[AP_M_COUNT];
    ap_check_default_tolerances(tol);
    ap_status st = tol_spec ? ap_check_parse_tolerances(tol_spec, tol, &err) : AP_OK;
    if (st) return cli_fail(ap_error_wrap(&err, st, "--tol"), &err);
    ap_summary base = {0}, cur = {0};
    int regressions = 0;
    if (!(st = ap_summary_read_json(base_path, &base, &err)) &&
        !(st = ap_summary_read_json(cur_path, &cur, &err)))
        st = ap_check(&base, &cur, tol, allow_mismatch, noise_aware, stdout, &regressions, &err);
    ap_summary_free(&base);
    ap_summary_free(&cur);
    if (st) return cli_fail(st, &err);
    return regressions ? AP_ERR_REGRESSION : 0;
}
