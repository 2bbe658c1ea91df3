/* prefill.cuh — a batched prefill.
 * Part of the CUDA backend: included once by cuda_backend.cu, after the
 * engine's state (one translation unit, as llm.c keeps one operation a file). */
#ifndef AP_CUDA_PREFILL_CUH
#define AP_CUDA_PREFILL_CUH

/* ---- prefill ------------------------------------------------------------------------ */

typedef struct {
    int B, T, last, logits_rows; /* logits_rows per sequence: 0, 1 (last position) or T */
    const ap_capture *cap;       /* caps[0]: what every sequence captures */
    const stage_slots *slots;    /* [B * n_capture], sequence-major */
} prefill_args;

/* The prefill's device work for B sequences of T tokens back to back: every
 * launch, no host copies (recordable). Row-wise steps run over all B * T rows
 * at once; attention runs per sequence. */
static ap_status enqueue_prefill(ap_engine *e, const void *arg, ap_error *err)
{
    const prefill_args *a = (const prefill_args *)arg;
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const ap_weights *w = &e->model->w;
    const int C = c->n_embd, H = c->n_head, T = a->T, N = a->B * a->T;
    const int n_capture = a->cap ? a->cap->n_capture : 0;
    ap_status st;
    embed_kernel<<<N, 256, 0, ce->stream>>>(ce->x, dev_w(e, w->wte), dev_w(e, w->wpe), ce->ids, NULL, T, C);
    KERNEL_TRY("the embedding");
    for (int l = 0; l <= a->last; l++) {
        const int ci = ap_capture_index(a->cap, l);
        if ((st = block_qkv(e, l, N, 1, l > 0, err))) return st;
        float *probs[2] = {NULL, NULL}; /* sequences 0 and 1: the rest follow at the same stride */
        for (int b = 0; b < a->B; b++) {
            const long long *at = ci >= 0 ? a->slots[(size_t)b * n_capture + ci].at : NULL;
            for (int which = 0; at && which < 3; which++)
                if (at[OUT_Q + which] >= 0 && (st = split_heads(e, ce->stage + at[OUT_Q + which],
                                                                ce->qkv + (size_t)b * T * 3 * C, T, 3 * C, which * C,
                                                                err)))
                    return st;
            /* probabilities nobody captures: scratch, or none at all when fused */
            float *p = at && at[OUT_ATTN] >= 0   ? ce->stage + at[OUT_ATTN]
                       : fused_attention_fits(e) ? NULL
                                                    : ce->scores + (size_t)b * H * T * T;
            if (b < 2) probs[b] = p;
            else if (p != probs[0] + b * (probs[1] - probs[0]))
                return ap_error_set(err, AP_ERR_RUNTIME, "a batched prefill needs every sequence to capture the same");
        }
        if ((st = causal_attention(e, a->B, T, probs[0], a->B > 1 ? probs[1] - probs[0] : 0, err))) return st;
        for (int b = 0; ci >= 0 && b < a->B; b++) {
            const long long *at = a->slots[(size_t)b * n_capture + ci].at;
            if (at[OUT_O] >= 0 &&
                (st = split_heads(e, ce->stage + at[OUT_O], ce->att + (size_t)b * T * C, T, C, 0, err)))
                return st;
        }
        if ((st = block_finish(e, l, N, l < a->last, err))) return st;
    }
    if (a->logits_rows == T) return lm_head(e, ce->x, ce->logits, N, err);
    for (int b = 0; a->logits_rows && b < a->B; b++) /* the last position of each sequence */
        if ((st = lm_head(e, ce->x + ((size_t)b * T + T - 1) * C, ce->logits + (size_t)b * c->vocab_size, 1, err)))
            return st;
    return AP_OK;
}

static ap_status cuda_prefill_batch(ap_engine *e, int B, const int *const *ids, int T, const ap_capture *caps,
                                    ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const int C = c->n_embd, H = c->n_head;
    const ap_capture *cap = caps; /* caps[0] says what every sequence captures */
    /* the fused attention needs neither the score scratch nor the pointer tables */
    const int fused = fused_attention_fits(e);
    ap_status st = ensure_scratch(e, (size_t)B * T, fused ? 0 : (size_t)B * H * T * T, err);
    if (st) return st;
    if (!fused)
        CUDA_TRY(grow(ce, &ce->attn_ptrs, &ce->attn_ptrs_cap,
                      (size_t)PTR_RULES * causal_chunks(T) * B * H * sizeof(float *)),
                 "allocating the attention's pointer tables");
    int last = c->n_layer - 1;
    if (!cap || !cap->logits) {
        last = -1;
        for (int i = 0; cap && i < cap->n_capture; i++) last = cap->layers[i] > last ? cap->layers[i] : last;
    }
    const int n_capture = cap ? cap->n_capture : 0;
    const size_t size[N_OUT] = {(size_t)H * T * T, (size_t)T * C, (size_t)T * C, (size_t)T * C, (size_t)T * C};
    stage_slots *slots = slots_for(e, B * n_capture);
    if (!slots) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    if ((st = plan_stage(e, caps, B, size, slots, 1, err))) return st;
    const int logits_rows = cap && cap->logits ? (cap->logits_last_only ? 1 : T) : 0;
    prefill_args args = {B, T, last, logits_rows, cap, slots};
    long long key[GRAPH_KEY_MAX] = {1, B, T, last, logits_rows, (long long)ce->generation};
    for (int b = 0; b < B; b++)
        CUDA_TRY(cudaMemcpyAsync(ce->ids + (size_t)b * T, ids[b], (size_t)T * sizeof(int), cudaMemcpyHostToDevice,
                                 ce->stream),
                 "copying token ids to the device");
    if ((st = run_recorded(e, &ce->prefill_graph, key, key_captures(key, 6, cap), enqueue_prefill, &args, err)) ||
        (st = copy_out(e, caps, B, size, slots, err)))
        return st;
    for (int b = 0; logits_rows && b < B; b++)
        CUDA_TRY(cudaMemcpyAsync(caps[b].logits, ce->logits + (size_t)b * logits_rows * c->vocab_size,
                                 (size_t)logits_rows * c->vocab_size * sizeof(float), cudaMemcpyDefault,
                                 ce->stream),
                 "copying logits to the host");
    CUDA_TRY(cudaStreamSynchronize(ce->stream), "finishing the prefill");
    return AP_OK;
}

static ap_status cuda_prefill(ap_engine *e, const int *ids, int T, const ap_capture *cap, ap_error *err)
{
    return cuda_prefill_batch(e, 1, &ids, T, cap, err);
}

#endif
