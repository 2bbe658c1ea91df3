/* phase.c — ATTNPROBE_PHASES marks (phase.h). */
#include "phase.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double phase_last;

int ap_phase_on(void)
{
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("ATTNPROBE_PHASES");
        on = v && *v && strcmp(v, "0") != 0;
    }
    return on;
}

void ap_phase_mark(const char *what)
{
    if (!ap_phase_on()) return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const double now = ts.tv_sec + ts.tv_nsec * 1e-9;
    if (phase_last > 0) fprintf(stderr, "phase %-22s %.4f s\n", what, now - phase_last);
    phase_last = now;
}
