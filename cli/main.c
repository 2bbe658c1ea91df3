/* main.c — attnprobe entry point: dispatches to a sub-command. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "study/study.h"

static void usage(FILE *f)
{
    fprintf(f,
            "attnprobe %s — how faithfully a bounded KV cache preserves GPT-2's attention\n\n"
            "usage: attnprobe <command> [options]\n\n"
            "       attnprobe [run] --layer 6 --stride 16 --types cms,count_sketch,race\n\n"
            "commands:\n"
            "  run       (default) trace, replay the policies, print the table, write JSON\n"
            "  trace     --save FILE                 reference trace only\n"
            "  replay    FILE --types ...            isolated replay of a saved trace\n"
            "  eval      --types ... --budget 64     perplexity and next-token fidelity of capped caches\n"
            "  batch     GRID.json --out DIR         every cell of a grid; resumable; batch.json, results.csv\n"
            "  report    FILE... [--html F --md F]   tables and charts of summaries or a batch\n"
            "  check     --baseline A --current B [--tol kl=0.05,...]   regression gate\n"
            "  info      --model M                   model config, parameter count, checksum\n"
            "  tokenize  --model M [--input F] TEXT  token ids of a text (GPT-2 byte-level BPE)\n"
            "  prefill   --model M [--input F]       one full-cache pass: attention summary, "
            "next token\n\n"
            "Run 'attnprobe <command> --help' for a command's options.\n"
            "Exit codes: 0 success, 1 regression, 2 usage error, 3 bad input or model file, "
            "4 runtime failure.\n",
            AP_VERSION);
}

static int dispatch(int argc, char **argv);

/* Under mpirun every rank runs the same command (docs/mpi.md). */
int main(int argc, char **argv)
{
    if (ap_mpi_start(&argc, &argv) != 0) {
        fprintf(stderr, "attnprobe: MPI could not be initialised (started by mpirun or srun?)\n");
        return AP_ERR_RUNTIME;
    }
    const int code = dispatch(argc, argv);
    ap_mpi_stop(code);
    return code;
}

static int dispatch(int argc, char **argv)
{
    if (argc < 2) return cmd_run(argc, argv); /* the main job on the bundled model */
    const char *cmd = argv[1];
    if (cmd[0] == '-' && cmd[1] == '-' && strcmp(cmd, "--help") != 0 && strcmp(cmd, "--version") != 0)
        return cmd_run(argc, argv); /* attnprobe --layer 6 ... is attnprobe run --layer 6 ... */
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("attnprobe %s\n", AP_VERSION);
        /* what this build can do: scripts and tests read this line */
        printf("features: cuda-device %s, charts %s, mpi %s\n", ap_cuda_available() ? "yes" : "no",
               ap_chart_available() ? "yes (PLplot)" : "no", ap_mpi_built() ? "yes (Open MPI)" : "no");
        return 0;
    }
    struct { const char *name; int (*fn)(int, char **); } cmds[] = {
        {"run", cmd_run},     {"trace", cmd_trace},       {"replay", cmd_replay},
        {"report", cmd_report}, {"check", cmd_check},     {"info", cmd_info}, {"batch", cmd_batch}, {"eval", cmd_eval},
        {"tokenize", cmd_tokenize}, {"prefill", cmd_prefill},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (strcmp(cmd, cmds[i].name) == 0) return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "attnprobe: unknown command '%s' (accepted: run, trace, replay, "
            "eval, batch, report, check, info, tokenize, prefill; see attnprobe --help)\n", cmd);
    return AP_ERR_USAGE;
}
