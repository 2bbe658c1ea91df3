/* engine_internal.h — what a backend implements; not public.
 *
 * engine.c validates arguments once and dispatches here, so a backend can
 * trust its inputs (ids in range, T within n_ctx, kept positions < t). */
#ifndef AP_ENGINE_INTERNAL_H
#define AP_ENGINE_INTERNAL_H

#include "engine_device.h"

typedef struct {
    ap_status (*prefill)(ap_engine *e, const int *ids, int T, const ap_capture *cap, ap_error *err);
    ap_status (*stream_init)(ap_engine *e, ap_stream *s, ap_error *err);
    void (*stream_free)(ap_stream *s);
    ap_status (*decode_step)(ap_engine *e, const ap_decode_batch *b, const ap_capture *cap,
                             ap_error *err);
    void (*free)(ap_engine *e);
    /* optional: n_seq passes at once; NULL: engine.c calls prefill per pass */
    ap_status (*prefill_batch)(ap_engine *e, int n_seq, const int *const *ids, int T,
                               const ap_capture *caps, ap_error *err);
    /* optional (CUDA): decode with device-resident lists */
    ap_status (*decode_device)(ap_engine *e, const ap_device_batch *b, ap_error *err);
    /* optional (CUDA): device memory for captures */
    ap_status (*device_alloc)(ap_engine *e, size_t bytes, void **out, ap_error *err);
    void (*device_free)(ap_engine *e, void *p);
} ap_backend_ops;

struct ap_engine {
    const ap_model *model;
    ap_backend backend;
    ap_precision precision;
    const ap_backend_ops *ops;
    void *impl;
    char device_name[128];
    int device_shared; /* ap_engine_device_shared */
};

struct ap_stream {
    ap_engine *engine;
    int pos;     /* next position to decode */
    int max_len; /* positions the cache holds */
    void *impl;
};

/* Index of layer in cap->layers, or -1 (also for cap == NULL). */
int ap_capture_index(const ap_capture *cap, int layer);

ap_status ap_cpu_engine_init(ap_engine *e, ap_error *err);
/* Versions of the libraries under the backends (ap_engine_library_versions). */
const char *ap_cpu_blas_config(void);
void ap_tokenizer_pcre2_version(char *buf, size_t n);
#ifdef AP_HAVE_CUDA
ap_status ap_cuda_engine_init(ap_engine *e, ap_error *err);
void ap_cuda_versions(int *runtime, int *driver);
#endif

#endif
