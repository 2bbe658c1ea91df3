/* decode.cuh — decoding streams: their KV caches, the decode step with host lists and with device lists.
 * Part of the CUDA backend: included once by cuda_backend.cu, after the
 * engine's state (one translation unit, as llm.c keeps one operation a file). */
#ifndef AP_CUDA_DECODE_CUH
#define AP_CUDA_DECODE_CUH

/* ---- decode ------------------------------------------------------------------------ */

typedef struct {
    float *k, *v; /* device [L, H, max_len, hd] */
} cuda_stream;

static ap_status cuda_stream_init(ap_engine *e, ap_stream *s, ap_error *err)
{
    const ap_config *c = &e->model->config;
    cuda_stream *cs = (cuda_stream *)calloc(1, sizeof *cs);
    if (!cs) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    const size_t n = (size_t)c->n_layer * c->n_embd * s->max_len * sizeof(float);
    if (cudaMalloc(&cs->k, n) != cudaSuccess || cudaMalloc(&cs->v, n) != cudaSuccess) {
        cudaFree(cs->k);
        free(cs);
        return ap_error_set(err, AP_ERR_RUNTIME, "cudaMalloc of a %zu-byte KV cache failed", 2 * n);
    }
    s->impl = cs;
    return AP_OK;
}

static void cuda_stream_free(ap_stream *s)
{
    cuda_stream *cs = (cuda_stream *)s->impl;
    if (!cs) return;
    cudaFree(cs->k);
    cudaFree(cs->v);
    free(cs);
}

/* Bytes of the decode attention's chunk partials for S streams whose lists
 * hold up to `longest` entries (t included). */
static size_t split_bytes(const ap_engine *e, int S, int longest)
{
    const ap_config *c = &e->model->config;
    return (size_t)S * c->n_head * decode_chunks(longest) * (2 + c->n_embd / c->n_head) * sizeof(float);
}

typedef struct {
    int S, longest;
    const ap_capture *cap;
    const stage_slots *slots;
    const ap_device_batch *dev; /* device-resident lists and outputs, or NULL */
} decode_args;

/* A decode step's inputs from the host: table_bytes of pinned tables, the
 * pinned cache pointers ptrs [2S], tokens and positions. */
static ap_status upload_step(cuda_engine *ce, int S, const void *tables, size_t table_bytes, const void *ptrs,
                             const int *tokens, const int *t_of, ap_error *err)
{
    CUDA_TRY(cudaMemcpyAsync(ce->d_tables, tables, table_bytes, cudaMemcpyHostToDevice, ce->stream),
             "copying the decode tables");
    CUDA_TRY(cudaMemcpyAsync(ce->d_ptrs, ptrs, 2 * (size_t)S * sizeof(float *), cudaMemcpyHostToDevice, ce->stream),
             "copying the cache pointers");
    CUDA_TRY(cudaMemcpyAsync(ce->ids, tokens, S * sizeof(int), cudaMemcpyHostToDevice, ce->stream),
             "copying tokens");
    CUDA_TRY(cudaMemcpyAsync(ce->pos, t_of, S * sizeof(int), cudaMemcpyHostToDevice, ce->stream),
             "copying positions");
    return AP_OK;
}

/* One decode step's device work (recordable): the tables, tokens and cache
 * pointers are already on the device. */
static ap_status enqueue_decode(ap_engine *e, const void *arg, ap_error *err)
{
    const decode_args *a = (const decode_args *)arg;
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const ap_weights *w = &e->model->w;
    const int S = a->S, C = c->n_embd, H = c->n_head, hd = C / H, L = c->n_layer;
    const size_t lists = (size_t)S * L * H;
    const ap_device_batch *dev = a->dev;
    /* host tables: [t_of S | max_len S | pos_off lists | n_kept lists | positions];
     * device-resident: [t_of S | max_len S | list_base S], lists the caller's */
    int *d_t = (int *)ce->d_tables, *d_max = d_t + S, *d_off = d_max + S, *d_cnt = d_off + lists,
        *d_pos = d_cnt + lists, *d_base = NULL;
    if (dev) d_base = d_max + S, d_off = (int *)dev->off, d_cnt = (int *)dev->cnt, d_pos = (int *)dev->pos;
    float *rows_out = dev ? dev->rows : (float *)ce->d_compact;
    float **d_k = (float **)ce->d_ptrs, **d_v = d_k + S;
    const int chunks = decode_chunks(a->longest);
    float *part_ml = (float *)ce->d_split, *part_o = part_ml + (size_t)S * H * chunks * 2;
    ap_status st;
    embed_kernel<<<S, 256, 0, ce->stream>>>(ce->x, dev_w(e, w->wte), dev_w(e, w->wpe), ce->ids, ce->pos, 1, C);
    KERNEL_TRY("the embedding");
    for (int l = 0; l < L; l++) {
        const int ci = ap_capture_index(a->cap, l);
        const long long *at = ci >= 0 ? a->slots[ci].at : NULL;
        if ((st = block_qkv(e, l, S, 0, l > 0, err))) return st;
        decode_qkv_kernel<<<S, 256, 0, ce->stream>>>(ce->qkv, dev_w(e, w->attn_b + (size_t)3 * l * C), d_k, d_v,
                                                     dev && dev->q ? dev->q + (size_t)l * S * C : NULL,
                                                     dev && dev->k ? dev->k + (size_t)l * S * C : NULL, d_t,
                                                     d_max, H, hd, C, l);
        KERNEL_TRY("appending to the KV caches");
        const int want_rows = dev ? dev->rows != NULL : at && capture_dst(a->cap, ci, OUT_ATTN);
        float *rows = want_rows ? rows_out : NULL;
        const decode_view view = {ce->att, rows, part_ml, part_o, ce->qkv, d_k, d_v, d_t, d_max,
                                  d_base, d_off, d_cnt, d_pos, S, H, hd, C, l, chunks};
        decode_attention_enqueue(&view, ce->stream);
        KERNEL_TRY("the decode attention");
        for (int which = 0; at && which < 3; which++)
            if (at[OUT_Q + which] >= 0)
                CUDA_TRY(cudaMemcpy2DAsync(ce->stage + at[OUT_Q + which], C * sizeof(float), ce->qkv + which * C,
                                           3 * C * sizeof(float), C * sizeof(float), S, cudaMemcpyDeviceToDevice,
                                           ce->stream),
                         "keeping q/k/v for the host");
        if (at && at[OUT_O] >= 0)
            CUDA_TRY(cudaMemcpyAsync(ce->stage + at[OUT_O], ce->att, (size_t)S * C * sizeof(float),
                                     cudaMemcpyDeviceToDevice, ce->stream),
                     "keeping the attention output for the host");
        if ((st = block_finish(e, l, S, l + 1 < L, err))) return st;
    }
    if (dev && dev->logits && (st = lm_head(e, ce->x, dev->logits, S, err))) return st;
    if (dev && dev->hook && (st = dev->hook->enqueue(dev->hook->ctx, ce->stream, d_t, err))) return st;
    if (a->cap && a->cap->logits) return lm_head(e, ce->x, ce->logits, S, err);
    return AP_OK;
}

static ap_status cuda_decode_step(ap_engine *e, const ap_decode_batch *b, const ap_capture *cap,
                                  ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const ap_config *c = &e->model->config;
    const int S = b->n_stream, C = c->n_embd, H = c->n_head, L = c->n_layer;
    const size_t lists = (size_t)S * L * H;
    ap_status st = ensure_scratch(e, (size_t)S, 0, err);
    if (st) return st;
    /* Host tables in pinned memory, layer-major lists: [t_of S | max_len S |
     * pos_off lists | n_kept lists | positions total], then cache pointers. */
    size_t total = 0;
    int longest = 0;
    for (int s = 0; s < S; s++) {
        longest = b->streams[s]->max_len > longest ? b->streams[s]->max_len : longest;
        for (int lh = 0; lh < L * H; lh++)
            total += (size_t)(b->kept && b->kept[s] ? b->n_kept[s][lh] : b->streams[s]->pos);
    }
    const size_t ints = 2 * (size_t)S + 2 * lists + total;
    cudaError_t ec = grow_host(&ce->h_tables, &ce->h_tables_cap, ints * sizeof(int));
    if (!ec) ec = grow(ce, &ce->d_tables, &ce->d_tables_cap, ints * sizeof(int));
    if (!ec) ec = grow(ce, &ce->d_ptrs, &ce->d_ptrs_cap, 2 * (size_t)S * sizeof(float *));
    if (!ec) ec = grow_host(&ce->h_ptrs, &ce->h_ptrs_cap, 2 * (size_t)S * sizeof(float *));
    if (!ec) ec = grow(ce, &ce->d_compact, &ce->d_compact_cap, (total + lists) * sizeof(float));
    if (!ec) ec = grow(ce, &ce->d_split, &ce->d_split_cap, split_bytes(e, S, longest));
    if (!ec) ec = grow_host(&ce->h_compact, &ce->h_compact_cap, (total + lists) * sizeof(float));
    if (ec) return ap_error_set(err, AP_ERR_RUNTIME, "allocating decode tables failed (%s)", cudaGetErrorString(ec));
    int *t_of = (int *)ce->h_tables, *max_len = t_of + S, *off = max_len + S, *cnt = off + lists,
        *positions = cnt + lists;
    float **kc = (float **)ce->h_ptrs, **vc = kc + S;
    size_t at = 0;
    for (int l = 0; l < L; l++)
        for (int s = 0; s < S; s++)
            for (int h = 0; h < H; h++) {
                const ap_stream *str = b->streams[s];
                const int lh = l * H + h, list = (l * S + s) * H + h;
                const int n = b->kept && b->kept[s] ? b->n_kept[s][lh] : str->pos;
                off[list] = (int)at;
                cnt[list] = n;
                if (b->kept && b->kept[s]) memcpy(positions + at, b->kept[s][lh], (size_t)n * sizeof(int));
                else for (int j = 0; j < n; j++) positions[at + j] = j;
                at += (size_t)n;
            }
    for (int s = 0; s < S; s++) {
        t_of[s] = b->streams[s]->pos;
        max_len[s] = b->streams[s]->max_len;
        kc[s] = ((cuda_stream *)b->streams[s]->impl)->k;
        vc[s] = ((cuda_stream *)b->streams[s]->impl)->v;
    }
    const size_t size[N_OUT] = {0, (size_t)S * C, (size_t)S * C, (size_t)S * C, (size_t)S * C};
    stage_slots *slots = slots_for(e, cap ? cap->n_capture : 0);
    if (!slots) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    if ((st = plan_stage(e, cap, 1, size, slots, 0, err))) return st;
    {
        float *compact = (float *)ce->d_compact, *h_compact = (float *)ce->h_compact;
        if ((st = upload_step(ce, S, ce->h_tables, ints * sizeof(int), ce->h_ptrs, b->tokens, t_of, err))) return st;
        decode_args args = {S, longest, cap, slots, NULL};
        long long key[GRAPH_KEY_MAX] = {2, S, longest, cap && cap->logits, (long long)ce->generation};
        if ((st = run_recorded(e, &ce->decode_graph, key, key_captures(key, 5, cap), enqueue_decode, &args, err)) ||
            (st = copy_out(e, cap, 1, size, slots, err)))
            return st;
        for (int i = 0; cap && i < cap->n_capture; i++) {
            if (!capture_dst(cap, i, OUT_ATTN)) continue;
            /* this layer's lists are contiguous: one copy */
            const int l = cap->layers[i];
            const size_t first = (size_t)l * S * H, begin = (size_t)off[first] + first;
            const size_t end = l + 1 < L ? (size_t)off[first + (size_t)S * H] + first + (size_t)S * H : total + lists;
            CUDA_TRY(cudaMemcpyAsync(h_compact + begin, compact + begin, (end - begin) * sizeof(float),
                                     cudaMemcpyDeviceToHost, ce->stream),
                     "copying attention rows to the host");
        }
        if (cap && cap->logits)
            CUDA_TRY(cudaMemcpyAsync(cap->logits, ce->logits, (size_t)S * c->vocab_size * sizeof(float),
                                     cudaMemcpyDeviceToHost, ce->stream),
                     "copying logits to the host");
        CUDA_TRY(cudaStreamSynchronize(ce->stream), "finishing the decode step");
        /* Dense rows over 0..t from the compact ones: zeros, then the kept entries. */
        for (int i = 0; cap && i < cap->n_capture; i++) {
            if (!cap->attn || !cap->attn[i]) continue;
            const int l = cap->layers[i];
            for (int s = 0; s < S; s++)
                for (int h = 0; h < H; h++) {
                    const int list = (l * S + s) * H + h, t = t_of[s], n = cnt[list];
                    float *row = cap->attn[i] + ((size_t)s * H + h) * c->n_ctx;
                    const float *src = h_compact + off[list] + list;
                    memset(row, 0, (size_t)(t + 1) * sizeof(float));
                    for (int x = 0; x < n; x++) row[positions[off[list] + x]] = src[x];
                    row[t] = src[n];
                }
        }
    }
    return AP_OK;
}

/* The decode step of ap_engine_decode_device: the caller's lists and output
 * buffers are already on the device; only tokens, positions and the cache
 * pointers (a few hundred bytes) go up. Returns once the step is queued: the
 * host prepares the next step while this one runs (engine_device.h). */
static ap_status cuda_decode_device(ap_engine *e, const ap_device_batch *b, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const int S = b->n_stream;
    ap_status st = ensure_scratch(e, (size_t)S, 0, err);
    if (st) return st;
    /* everything the copies read is pinned: a copy from pageable memory may
     * wait for the stream */
    const size_t table_bytes = 3 * (size_t)S * sizeof(int), ptr_at = (4 * (size_t)S * sizeof(int) + 15) / 16 * 16;
    /* the longest list (t included) sizes the attention's grid */
    int longest = b->max_cnt > 0 ? b->max_cnt + 1 : 0;
    for (int s = 0; s < S && b->max_cnt <= 0; s++)
        longest = b->streams[s]->max_len > longest ? b->streams[s]->max_len : longest;
    /* this set's copies (two steps ago) must be done before it is written */
    const int k = ce->next_set;
    ce->next_set ^= 1;
    CUDA_TRY(cudaEventSynchronize(ce->step_set[k].copied), "waiting for the decode tables of two steps ago");
    cudaError_t ec = grow_host(&ce->step_set[k].host, &ce->step_set[k].cap, ptr_at + 2 * (size_t)S * sizeof(float *));
    if (!ec) ec = grow(ce, &ce->d_tables, &ce->d_tables_cap, table_bytes);
    if (!ec) ec = grow(ce, &ce->d_ptrs, &ce->d_ptrs_cap, 2 * (size_t)S * sizeof(float *));
    if (!ec) ec = grow(ce, &ce->d_split, &ce->d_split_cap, split_bytes(e, S, longest));
    if (ec) return ap_error_set(err, AP_ERR_RUNTIME, "allocating decode tables failed (%s)", cudaGetErrorString(ec));
    int *t_of = (int *)ce->step_set[k].host, *max_len = t_of + S, *base = max_len + S, *tokens = base + S;
    float **kc = (float **)((char *)ce->step_set[k].host + ptr_at), **vc = kc + S;
    for (int s = 0; s < S; s++) {
        t_of[s] = b->streams[s]->pos;
        max_len[s] = b->streams[s]->max_len;
        base[s] = b->list_base[s];
        tokens[s] = b->tokens[s];
        kc[s] = ((cuda_stream *)b->streams[s]->impl)->k;
        vc[s] = ((cuda_stream *)b->streams[s]->impl)->v;
    }
    if ((st = upload_step(ce, S, t_of, table_bytes, kc, tokens, t_of, err))) return st;
    CUDA_TRY(cudaEventRecord(ce->step_set[k].copied, ce->stream), "marking the decode tables copied");
    decode_args args = {S, longest, NULL, NULL, b};
    long long key[GRAPH_KEY_MAX] = {3,
                                    S,
                                    longest,
                                    (long long)ce->generation,
                                    (long long)(size_t)b->off,
                                    (long long)(size_t)b->cnt,
                                    (long long)(size_t)b->pos,
                                    (long long)(size_t)b->rows,
                                    (long long)(size_t)b->q,
                                    (long long)(size_t)b->k,
                                    (long long)(size_t)b->hook,
                                    b->hook ? b->hook->key : 0,
                                    (long long)(size_t)b->logits};
    return run_recorded(e, &ce->decode_graph, key, 13, enqueue_decode, &args, err);
}

#endif
