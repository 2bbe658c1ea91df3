/* testutil.h — builds small model files for loader tests and the fuzzer. */
#ifndef AP_TESTUTIL_H
#define AP_TESTUTIL_H

#include "engine/engine.h"
#include "tracer/tracer.h"

/* Writes dir/config.json and dir/model.safetensors (F32, Hugging Face names,
 * "transformer." prefix when prefixed) for the model. Returns 0 on success. */
int testutil_write_hf(const ap_model *m, const char *dir, int prefixed);

/* Writes an llm.c checkpoint (version 3 fp32 or 5 bf16) of the model. */
int testutil_write_llmc(const ap_model *m, const char *path, int version);

/* Writes n bytes to path. */
int testutil_write_file(const char *path, const void *data, size_t n);

/* Reads a whole file (malloc'ed); NULL on failure. */
char *testutil_read_file(const char *path, size_t *n);

/* A fresh empty directory under /tmp; returns its path (static buffer). */
const char *testutil_tmpdir(const char *tag);

/* The model in model_dir and n samples of its sample.txt, windows of len
 * tokens of which at least min_len; 0 when there are n of them. */
int testutil_model_samples(const char *model_dir, int n, int len, int min_len, ap_model **model, ap_samples *samples);

#endif
