/* parity.h — compares the engine with a reference.safetensors written by
 * tools/make_fixtures.py (ids, attn.<l> [H,T,T], logits_last [V]). */
#ifndef AP_TEST_PARITY_H
#define AP_TEST_PARITY_H

#include "engine/engine.h"

typedef struct {
    double attn_max_abs;     /* max |ours - ref| over all layers' attention */
    double logits_max_rel;   /* max |ours - ref| / max |ref| over the last logits */
    int T, n_layer;
} parity_result;

/* Runs prefill on the reference's ids and compares. */
ap_status parity_run(const char *model_spec, const char *reference, ap_backend backend,
                     ap_precision precision, parity_result *out, ap_error *err);

/* Runs n_seq (<= 8) sequences of T tokens through ap_engine_prefill_batch
 * and one by one through ap_engine_prefill, capturing attention, q, v and
 * the attention output at `layer` and the last logits; returns the largest
 * |batched - single| (or -1 on an engine error, with err set). */
double parity_batch_vs_single(ap_engine *e, int n_seq, int T, int layer, ap_error *err);

#endif
