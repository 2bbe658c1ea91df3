#include "atomic_file.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

FILE *ap_atomic_begin(const char *path, char *tmp, size_t tmp_size, ap_error *err)
{
    snprintf(tmp, tmp_size, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) ap_error_set(err, AP_ERR_RUNTIME, "%s: cannot write: %s", tmp, strerror(errno));
    return f;
}

ap_status ap_atomic_end(FILE *f, const char *tmp, const char *path, int ok, ap_error *err)
{
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return ap_error_set(err, AP_ERR_RUNTIME, "%s: write failed: %s", path, strerror(e));
    }
    return AP_OK;
}
