/* status.h — status codes and error messages shared by every attnprobe module.
 *
 * Functions that can fail return an ap_status and, when given a non-NULL
 * ap_error, write one line saying what failed and why (file, tensor, flag,
 * value, what would be accepted). The numeric values are the CLI's exit codes
 * (README: exit codes), so cli/ can return a status unchanged. */
#ifndef AP_STATUS_H
#define AP_STATUS_H

typedef enum {
    AP_OK = 0,
    AP_ERR_REGRESSION = 1, /* `check` found a regression */
    AP_ERR_USAGE = 2,      /* bad flag or value */
    AP_ERR_INPUT = 3,      /* bad or unreadable input/model file */
    AP_ERR_RUNTIME = 4     /* out of memory, device failure, I/O failure */
} ap_status;

typedef struct {
    char msg[1024];
} ap_error;

/* Formats msg into err (if non-NULL) and returns code, so callers can write
 * `return ap_error_set(err, AP_ERR_INPUT, "%s: ...", path);` */
ap_status ap_error_set(ap_error *err, ap_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes context to an existing message: "context: old message". */
ap_status ap_error_wrap(ap_error *err, ap_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
