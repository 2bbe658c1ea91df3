#include "atomic_file.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The temporary file being written, for a signal handler to remove. */
static char pending[4096];

const char *ap_atomic_pending(void) { return pending[0] ? pending : NULL; }

ap_status ap_atomic_begin(const char *path, char *tmp, size_t tmp_size, FILE **out, ap_error *err)
{
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode))
        return ap_error_set(err, AP_ERR_INPUT, "%s exists and is not a regular file: not replacing it "
                            "(name a file)", path);
    if ((size_t)snprintf(tmp, tmp_size, "%s.tmp.%ld", path, (long)getpid()) >= tmp_size)
        return ap_error_set(err, AP_ERR_USAGE, "%s: path too long", path);
    if (!(*out = fopen(tmp, "wb")))
        return ap_error_set(err, AP_ERR_RUNTIME, "%s: cannot write: %s", tmp, strerror(errno));
    snprintf(pending, sizeof pending, "%s", tmp);
    return AP_OK;
}

ap_status ap_atomic_end(FILE *f, const char *tmp, const char *path, int ok, ap_error *err)
{
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        pending[0] = '\0';
        return ap_error_set(err, AP_ERR_RUNTIME, "%s: write failed: %s", path, strerror(e));
    }
    pending[0] = '\0';
    return AP_OK;
}
