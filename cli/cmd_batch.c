/* cmd_batch.c — `attnprobe batch GRID --out DIR`: every cell of a grid
 * (study/grid.c) run as `run` would run it, each cell's summary written
 * atomically to DIR/cells/ID.json and skipped when a rerun finds it, then
 * DIR/batch.json and DIR/results.csv assembled from the cells (docs/batch.md). */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "study/study.h"

static const char USAGE[] =
    "usage: attnprobe batch GRID.json [--out DIR] [--force] [--quiet]\n"
    "  runs every cell of the grid (docs/batch.md) and writes\n"
    "  DIR/cells/ID.json (one summary a cell), DIR/batch.json, DIR/results.csv\n"
    "  --out DIR (batch-out)  --force  rerun cells already written  --quiet\n"
    "  A rerun skips the cells already written: an interrupted batch continues.\n";

typedef struct {
    const char *grid, *out;
    int force, quiet, help;
} batch_opts;

static ap_status parse_opts(int argc, char **argv, batch_opts *o, ap_error *err)
{
    static const struct option LONGOPTS[] = {{"out", required_argument, 0, 'o'}, {"force", no_argument, 0, 'f'},
                                             {"quiet", no_argument, 0, 'q'},    {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    *o = (batch_opts){.out = "batch-out"};
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", LONGOPTS, NULL)) != -1) {
        switch (c) {
        case 'o': o->out = optarg; break;
        case 'f': o->force = 1; break;
        case 'q': o->quiet = 1; break;
        case 'h': o->help = 1; break;
        default:
            return ap_error_set(err, AP_ERR_USAGE, "%s: unknown option or missing value (accepted: --out DIR, "
                                "--force, --quiet)", argv[optind - 1]);
        }
    }
    if (o->help) return AP_OK;
    if (optind != argc - 1)
        return ap_error_set(err, AP_ERR_USAGE, "batch takes one grid file (attnprobe batch GRID.json --out DIR)");
    o->grid = argv[optind];
    return AP_OK;
}

/* The files a cell names exist: its model (unless random:), tokenizer and
 * input, so that a typo in the grid is found before the first cell runs. */
static ap_status check_files(const ap_grid_cell *c, ap_error *err)
{
    for (int i = 1; i + 1 < c->argc; i++) {
        const char *flag = c->argv[i], *value = c->argv[i + 1];
        const int model = !strcmp(flag, "--model"), file = !strcmp(flag, "--input") || !strcmp(flag, "--tokenizer");
        if (!model && !file) continue;
        if (!strcmp(flag, "--input") && !strcmp(value, "-"))
            return ap_error_set(err, AP_ERR_INPUT, "input -: a batch reads its texts from files, not stdin");
        if (model && !strncmp(value, "random:", 7)) continue;
        if (access(value, R_OK) != 0)
            return ap_error_set(err, AP_ERR_INPUT, "%s %s: cannot read it: %s", flag, value, strerror(errno));
    }
    return AP_OK;
}

/* Every cell's flags and files checked before any cell runs: a bad value
 * names its cell. */
static ap_status check_cells(const ap_grid *g, const char *grid_path, ap_error *err)
{
    for (int i = 0; i < g->n_cells; i++) {
        const ap_grid_cell *c = &g->cells[i];
        ap_status st = cli_run_check(c->argc, c->argv, err);
        if (!st) st = check_files(c, err);
        if (st) return ap_error_wrap(err, AP_ERR_INPUT, "%s: study %s, cell %s", grid_path, c->study, c->id);
    }
    return AP_OK;
}

/* Temporary files a killed batch left in DIR/cells. */
static void remove_leftovers(const char *cells_dir)
{
    DIR *d = opendir(cells_dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strstr(e->d_name, ".json.tmp.")) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", cells_dir, e->d_name);
        unlink(path);
    }
    closedir(d);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* cell 3/12 [name] ... ETA, one line of stderr per cell */
static void announce(int i, int n, int done_here, double elapsed, const ap_grid_cell *c, const char *what)
{
    const double eta = done_here > 0 ? elapsed / done_here * (n - i) / ap_mpi_size() : 0;
    if (ap_mpi_size() > 1) fprintf(stderr, "batch (rank %d): cell %d/%d %s %s", ap_mpi_rank(), i + 1, n, c->id, what);
    else fprintf(stderr, "batch: cell %d/%d %s %s", i + 1, n, c->id, what);
    if (done_here > 0) fprintf(stderr, " (ETA %.0f s)", eta);
    fputc('\n', stderr);
}

static ap_status run_cells(const ap_grid *g, const batch_opts *o, const char *cells_dir, ap_error *err)
{
    const double start = now_s();
    int ran = 0;
    /* under mpirun, cell i is rank i mod size's (docs/mpi.md) */
    for (int i = ap_mpi_rank(); i < g->n_cells; i += ap_mpi_size()) {
        const ap_grid_cell *c = &g->cells[i];
        char path[4096];
        snprintf(path, sizeof path, "%s/%s.json", cells_dir, c->id);
        if (!o->force && ap_batch_cell_done(path, c)) {
            if (!o->quiet) announce(i, g->n_cells, 0, 0, c, "already written, skipped");
            continue;
        }
        if (!o->quiet) announce(i, g->n_cells, ran, now_s() - start, c, "running");
        ap_summary summary = {0};
        ap_status st = cli_run_cell(c->argc, c->argv, o->quiet, &summary, err);
        if (!st) st = ap_batch_cell_write(path, c, &summary, err);
        ap_summary_free(&summary);
        /* what a cell's run refuses (a layer the model lacks, a missing text) is the grid's fault */
        if (st) return ap_error_wrap(err, st == AP_ERR_USAGE ? AP_ERR_INPUT : st, "batch cell %s (study %s)", c->id, c->study);
        ran++;
    }
    return AP_OK;
}

int cmd_batch(int argc, char **argv)
{
    batch_opts o;
    ap_error err;
    ap_status st = parse_opts(argc, argv, &o, &err);
    if (st) return cli_fail(st, &err);
    if (o.help) {
        fputs(USAGE, stdout);
        return 0;
    }
    char *text = NULL;
    size_t n = 0;
    ap_grid grid = {0};
    if (access(o.grid, R_OK) != 0) {
        ap_error_set(&err, AP_ERR_INPUT, "batch %s: cannot read the grid file: %s", o.grid, strerror(errno));
        return cli_fail(AP_ERR_INPUT, &err);
    }
    if ((st = cli_read_input(o.grid, &text, &n, &err)) || (st = ap_grid_parse(text, n, o.grid, &grid, &err)) ||
        (st = check_cells(&grid, o.grid, &err))) {
        free(text);
        ap_grid_free(&grid);
        return cli_fail(st, &err);
    }
    free(text);
    const size_t len = strlen(o.out) + sizeof "/results.csv";
    char *cells_dir = malloc(len), *path = malloc(len);
    if (!cells_dir || !path) st = ap_error_set(&err, AP_ERR_RUNTIME, "out of memory");
    if (!st) {
        snprintf(cells_dir, len, "%s/cells", o.out);
        st = cli_make_dir("--out", cells_dir, &err);
    }
    /* under mpirun each rank runs its cells on its node's GPU of its local rank,
     * round-robin when there are more ranks than GPUs */
    if (!st && ap_mpi_size() > 1) st = ap_mpi_use_local_gpu(1, &err);
    if (!st && ap_mpi_rank() == 0) remove_leftovers(cells_dir);
    st = ap_mpi_agree(st, &err); /* also: no rank starts before the leftovers are gone */
    if (!st) st = run_cells(&grid, &o, cells_dir, &err);
    st = ap_mpi_agree(st, &err); /* every cell written before rank 0 reads them */
    const int root = ap_mpi_rank() == 0;
    if (!st && root) {
        snprintf(path, len, "%s/batch.json", o.out);
        st = ap_batch_write_json(&grid, cells_dir, path, &err);
    }
    if (!st && root) {
        snprintf(path, len, "%s/results.csv", o.out);
        st = ap_batch_write_csv(&grid, cells_dir, path, &err);
    }
    if (!st && root && !o.quiet) fprintf(stderr, "attnprobe: wrote %s/batch.json, %s/results.csv, %d cells\n", o.out, o.out,
                                 grid.n_cells);
    free(cells_dir);
    free(path);
    ap_grid_free(&grid);
    return st ? cli_fail(st, &err) : 0;
}
