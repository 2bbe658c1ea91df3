/* safetensors.h — reading and writing safetensors files (Hugging Face's
 * format: u64 LE header length N, N bytes of JSON, then the data).
 * Used by the model loader, the trace files and the tests. Included through
 * engine.h. */
#ifndef AP_SAFETENSORS_H
#define AP_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"

typedef enum { AP_DT_F32, AP_DT_F16, AP_DT_BF16, AP_DT_I32, AP_DT_I64 } ap_dtype;

typedef struct {
    const char *name;   /* owned by the file */
    ap_dtype dtype;
    int ndim;
    int64_t shape[8];
    size_t count;       /* elements */
    size_t offset;      /* of the first byte, from the start of the file */
    size_t nbytes;
} ap_st_tensor;

typedef struct ap_st_file ap_st_file;

/* Opens (maps) and validates a file: header length within the file, JSON
 * object, known dtypes, shapes whose byte count matches data_offsets, and
 * offsets inside the data section. */
ap_status ap_st_open(const char *path, ap_st_file **out, ap_error *err);
void ap_st_close(ap_st_file *f);
int ap_st_count(const ap_st_file *f);
const ap_st_tensor *ap_st_at(const ap_st_file *f, int i);
const ap_st_tensor *ap_st_find(const ap_st_file *f, const char *name);
/* "__metadata__" value for key, or NULL. */
const char *ap_st_metadata(const ap_st_file *f, const char *key);
/* SHA-256 of the whole file (computed on the first call: a full read). */
const char *ap_st_sha256(const ap_st_file *f);
/* SHA-256 of the header (length and JSON): names the contents when the
 * header holds checksums of the data, without reading the data. */
void ap_st_header_sha256(const ap_st_file *f, char out[65]);
/* A tensor's bytes as stored (little-endian), valid until ap_st_close. */
const void *ap_st_bytes(const ap_st_file *f, const ap_st_tensor *t);
/* Tells the system that a tensor's pages will not be read again soon (a
 * mapped file's pages then leave the process's resident memory). */
void ap_st_release(const ap_st_file *f, const ap_st_tensor *t);
const char *ap_st_path(const ap_st_file *f);
const char *ap_dtype_name(ap_dtype d);

/* Converts a F32/F16/BF16 tensor to float dst[count]. */
ap_status ap_st_read_f32(const ap_st_file *f, const ap_st_tensor *t, float *dst, ap_error *err);
/* Converts an I32/I64 tensor to int dst[count] (values must fit). */
ap_status ap_st_read_i32(const ap_st_file *f, const ap_st_tensor *t, int *dst, ap_error *err);

/* One tensor to write: F32 or I32 from host memory. */
typedef struct {
    const char *name;
    ap_dtype dtype;      /* AP_DT_F32 or AP_DT_I32 */
    int ndim;
    int64_t shape[8];
    const void *data;
} ap_st_out;

/* Writes tensors (and string metadata pairs) to path through a temporary
 * file renamed into place, so an interrupted write leaves no partial file. */
ap_status ap_st_write(const char *path, const ap_st_out *tensors, int n,
                      const char *const *meta_keys, const char *const *meta_values, int n_meta,
                      ap_error *err);

/* The same, tensor by tensor, for files larger than memory: open writes the
 * header (tensors' data pointers are not read), put writes the next
 * tensor's data in order, close renames the file into place when ok and
 * every tensor was put, or removes it. meta_values at close (NULL: keep)
 * replace the metadata values; each must have the length of the value it
 * replaces (checksums known only at the end are announced as placeholders). */
typedef struct ap_st_writer ap_st_writer;
ap_status ap_st_writer_open(const char *path, const ap_st_out *tensors, int n,
                            const char *const *meta_keys, const char *const *meta_values, int n_meta,
                            ap_st_writer **out, ap_error *err);
ap_status ap_st_writer_put(ap_st_writer *w, const void *data, ap_error *err);
ap_status ap_st_writer_close(ap_st_writer *w, const char *const *meta_values, int ok, ap_error *err);
/* The temporary file being written (for removal on a signal). */
const char *ap_st_writer_temp_path(const ap_st_writer *w);

#endif
