/* atomic_file.h — write a file so that readers see either the old file or
 * the whole new one: write to PATH.tmp.PID, then rename. */
#ifndef AP_ATOMIC_FILE_H
#define AP_ATOMIC_FILE_H

#include <stdio.h>

#include "status.h"

/* Opens the temporary file beside path; tmp receives its name. An existing
 * path that is not a regular file (a device, a pipe, a folder) is refused
 * (AP_ERR_INPUT): a rename would replace it. */
ap_status ap_atomic_begin(const char *path, char *tmp, size_t tmp_size, FILE **out, ap_error *err);
/* Closes f and renames tmp to path when ok (all writes succeeded); removes
 * tmp otherwise. Returns AP_ERR_RUNTIME naming path on any failure. */
ap_status ap_atomic_end(FILE *f, const char *tmp, const char *path, int ok, ap_error *err);

/* The temporary file of a write in progress, or NULL: a signal handler
 * removes it so that an interrupted command leaves nothing half-written. */
const char *ap_atomic_pending(void);

#endif
