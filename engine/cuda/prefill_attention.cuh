/* prefill_attention.cuh — the prefill's causal attention: the fused kernel's dispatch and the unfused chunked path.
 * Part of the CUDA backend: included once by cuda_backend.cu, after the
 * engine's state (one translation unit, as llm.c keeps one operation a file). */
#ifndef AP_CUDA_PREFILL_ATTENTION_CUH
#define AP_CUDA_PREFILL_ATTENTION_CUH

enum { CAUSAL_CHUNK = 256 }; /* 128 measured slower: bench/RESULTS.md */

static int causal_chunks(int T) { return (T + CAUSAL_CHUNK - 1) / CAUSAL_CHUNK; }

/* Whether fused_attention_kernel runs the prefill: tf32 and bf16, heads of
 * 32 or 64 (every GPT-2 size has 64; rows are 16-byte aligned since the
 * backend needs n_embd % 4 == 0) and its shared memory available. */
static int fused_attention_fits(const ap_engine *e)
{
    const cuda_engine *ce = (const cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const int hd = c->n_embd / c->n_head;
    return e->precision != AP_PRECISION_FP32 && (hd == 32 || hd == 64) &&
           fa_smem_bytes(hd) <= (size_t)ce->fused_smem_max;
}

static ap_status fused_attention(ap_engine *e, int B, int T, float *probs, long long probs_stride, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const int C = c->n_embd, H = c->n_head, hd = C / H;
    const dim3 grid((unsigned)((T + FA_ROWS - 1) / FA_ROWS), (unsigned)H, (unsigned)B);
    const size_t smem = fa_smem_bytes(hd);
    const float scale = 1.0f / sqrtf((float)hd);
    if (hd == 64)
        fused_attention_kernel<64><<<grid, FA_WARPS * 32, smem, ce->stream>>>(ce->qkv, ce->att, probs, probs_stride, T,
                                                                             H, C, scale);
    else
        fused_attention_kernel<32><<<grid, FA_WARPS * 32, smem, ce->stream>>>(ce->qkv, ce->att, probs, probs_stride, T,
                                                                             H, C, scale);
    KERNEL_TRY("the fused attention");
    return AP_OK;
}

/* For B sequences of T tokens back to back (qkv: rows [B * T, 3C]):
 * att[B * T, C] = softmax(q k^T / sqrt(hd)) v for every head, leaving
 * sequence b's probabilities [H, T, T] at probs + b * probs_stride. Rows go
 * in chunks of CAUSAL_CHUNK: chunk [r0, r1) needs keys 0..r1-1 only, so the
 * products skip most of the masked upper triangle. Each chunk's product is
 * one cuBLAS call batched over (sequence, head) through pointer tables that a
 * kernel writes on the device: a head's product alone is too small to fill
 * the GPU (12 heads of one 256-row chunk are a few dozen tiles). tf32 and
 * bf16 with heads of 32 or 64 take fused_attention instead. */
static ap_status causal_attention(ap_engine *e, int B, int T, float *probs, long long probs_stride, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const int C = c->n_embd, H = c->n_head, hd = C / H, BH = B * H, n_chunks = causal_chunks(T);
    if (fused_attention_fits(e)) return fused_attention(e, B, T, probs, probs_stride, err);
    const float one = 1.0f, zero = 0.0f;
    const long long TT = (long long)T * T, seq = (long long)T * 3 * C;
    enum { K, V, Q, P, ATT };
    const ptr_rules rules = {{{ce->qkv + C, seq, hd, 0},
                              {ce->qkv + 2 * C, seq, hd, 0},
                              {ce->qkv, seq, hd, (long long)CAUSAL_CHUNK * 3 * C},
                              {probs, probs_stride, TT, (long long)CAUSAL_CHUNK * T},
                              {ce->att, (long long)T * C, hd, (long long)CAUSAL_CHUNK * C}}};
    const float **table = (const float **)ce->attn_ptrs;
    pointer_table_kernel<<<blocks((size_t)PTR_RULES * n_chunks * BH), 256, 0, ce->stream>>>(table, rules, n_chunks,
                                                                                          B, H);
    KERNEL_TRY("the attention's pointer tables");
#define TABLE(rule, chunk) (table + ((size_t)(rule) * n_chunks + (chunk)) * BH)
    /* scores^T[j, i] = k_j . q_i */
    for (int ch = 0; ch < n_chunks; ch++) {
        const int r0 = ch * CAUSAL_CHUNK, r1 = r0 + CAUSAL_CHUNK < T ? r0 + CAUSAL_CHUNK : T;
        CUBLAS_TRY(cublasSgemmBatched(ce->blas, CUBLAS_OP_T, CUBLAS_OP_N, r1, r1 - r0, hd, &one, TABLE(K, 0), 3 * C,
                                      TABLE(Q, ch), 3 * C, &zero, (float *const *)TABLE(P, ch), T, BH),
                   "attention scores");
    }
    const float scale = 1.0f / sqrtf((float)hd);
    const int rows = BH * T, per_seq = H * T;
    const unsigned warp_blocks = (unsigned)((rows + 7) / 8);
    if (T <= 128)
        causal_softmax_warp_kernel<4><<<warp_blocks, 256, 0, ce->stream>>>(probs, T, per_seq, probs_stride, rows,
                                                                            CAUSAL_CHUNK, scale);
    else if (T <= 256)
        causal_softmax_warp_kernel<8><<<warp_blocks, 256, 0, ce->stream>>>(probs, T, per_seq, probs_stride, rows,
                                                                            CAUSAL_CHUNK, scale);
    else if (T <= 512)
        causal_softmax_warp_kernel<16><<<warp_blocks, 256, 0, ce->stream>>>(probs, T, per_seq, probs_stride, rows,
                                                                            CAUSAL_CHUNK, scale);
    else if (T <= 1024)
        causal_softmax_warp_kernel<32><<<warp_blocks, 256, 0, ce->stream>>>(probs, T, per_seq, probs_stride, rows,
                                                                            CAUSAL_CHUNK, scale);
    else
        causal_softmax_kernel<<<rows, 256, 0, ce->stream>>>(probs, T, per_seq, probs_stride, CAUSAL_CHUNK, scale);
    KERNEL_TRY("the causal softmax");
    /* att^T[:, h] = v_h^T P_h^T over the chunk's keys (P is 0 past the diagonal) */
    for (int ch = 0; ch < n_chunks; ch++) {
        const int r0 = ch * CAUSAL_CHUNK, r1 = r0 + CAUSAL_CHUNK < T ? r0 + CAUSAL_CHUNK : T;
        CUBLAS_TRY(cublasSgemmBatched(ce->blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, r1 - r0, r1, &one, TABLE(V, 0), 3 * C,
                                      TABLE(P, ch), T, &zero, (float *const *)TABLE(ATT, ch), C, BH),
                   "attention times values");
    }
#undef TABLE
    return AP_OK;
}

/* dst[H, T, hd] (device) from rows [T, ld] of src at column offset. */
static ap_status split_heads(ap_engine *e, float *dst, const float *src, int T, int ld, int offset,
                             ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const int H = c->n_head, hd = c->n_embd / H;
    const size_t n = (size_t)H * T * hd;
    split_heads_kernel<<<blocks(n), 256, 0, ce->stream>>>(dst, src, T, H, hd, ld, offset);
    KERNEL_TRY("splitting heads");
    return AP_OK;
}

#endif
