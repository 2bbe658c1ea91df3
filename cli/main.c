/* main.c — attnprobe entry point: dispatches to a sub-command. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "attnprobe %s — how faithfully a bounded KV cache preserves GPT-2's attention\n\n"
            "usage: attnprobe <command> [options]\n\n"
            "commands:\n"
            "  info      --model M                   model config, parameter count, checksum\n"
            "  tokenize  --model M [--input F] TEXT  token ids of a text (GPT-2 byte-level BPE)\n"
            "  prefill   --model M [--input F]       one full-cache pass: attention summary, "
            "next token\n\n"
            "Run 'attnprobe <command> --help' for a command's options.\n"
            "Exit codes: 0 success, 1 regression, 2 usage error, 3 bad input or model file, "
            "4 runtime failure.\n",
            AP_VERSION);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return AP_ERR_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("attnprobe %s\n", AP_VERSION);
        return 0;
    }
    struct { const char *name; int (*fn)(int, char **); } cmds[] = {
        {"info", cmd_info}, {"tokenize", cmd_tokenize}, {"prefill", cmd_prefill},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (strcmp(cmd, cmds[i].name) == 0) return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "attnprobe: unknown command '%s' (accepted: info, tokenize, prefill; see "
            "attnprobe --help)\n", cmd);
    return AP_ERR_USAGE;
}
