/* recorded.cuh — captured outputs staged on the device, and launches recorded as CUDA graphs.
 * Part of the CUDA backend: included once by cuda_backend.cu, after the
 * engine's state (one translation unit, as llm.c keeps one operation a file). */
#ifndef AP_CUDA_RECORDED_CUH
#define AP_CUDA_RECORDED_CUH

/* ---- captured outputs and recorded launches ------------------------------------- */

static float *capture_dst(const ap_capture *cap, int i, int kind)
{
    float **lists[N_OUT] = {cap->attn, cap->q, cap->k, cap->v, cap->o};
    return lists[kind] ? lists[kind][i] : NULL;
}

/* The engine's slot table, grown to n entries. */
static stage_slots *slots_for(ap_engine *e, int n_slots)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    const int n = n_slots + 1;
    if (n > ce->slots_cap) {
        stage_slots *grown = (stage_slots *)realloc(ce->slots, (size_t)n * sizeof *grown);
        if (!grown) return NULL;
        ce->slots = grown;
        ce->slots_cap = n;
    }
    return ce->slots;
}

/* Lays out the stage for caps[0..B-1] (size[kind] floats per output; 0:
 * never staged) and grows it; slots[b * n_capture + i] for capture i of b.
 * zeroed (the prefill): the caller leaves the attention entries past each
 * row's chunk unwritten (causal_attention), so they must hold zeros: the
 * stage is cleared whenever this layout differs from the last zeroed one. */
static ap_status plan_stage(ap_engine *e, const ap_capture *caps, int B, const size_t *size, stage_slots *slots,
                            int zeroed, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    size_t total = 0;
    int n_slots = 0;
    for (int b = 0; caps && b < B; b++)
        for (int i = 0; i < caps[b].n_capture; i++, n_slots++) {
            stage_slots *sl = &slots[(size_t)b * caps[b].n_capture + i];
            for (int k = 0; k < N_OUT; k++) {
                sl->at[k] = size[k] && capture_dst(&caps[b], i, k) ? (long long)total : -1;
                if (sl->at[k] >= 0) total += size[k];
            }
        }
    if (total * sizeof(float) > ce->stage_cap) {
        cudaFree(ce->stage);
        ce->stage = NULL;
        ce->stage_cap = 0;
        ce->n_zeroed = -1;
        ce->generation++;
        CUDA_TRY(cudaMalloc(&ce->stage, total * sizeof(float)), "allocating the capture buffers");
        ce->stage_cap = total * sizeof(float);
    }
    if (!zeroed) {
        ce->n_zeroed = -1;
        return AP_OK;
    }
    if (n_slots == ce->n_zeroed && !memcmp(size, ce->zeroed_size, sizeof ce->zeroed_size) &&
        (n_slots == 0 || !memcmp(slots, ce->zeroed, (size_t)n_slots * sizeof *slots)))
        return AP_OK;
    stage_slots *copy = (stage_slots *)realloc(ce->zeroed, (size_t)(n_slots + 1) * sizeof *copy);
    if (!copy) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    ce->zeroed = copy;
    memcpy(copy, slots, (size_t)n_slots * sizeof *slots);
    memcpy(ce->zeroed_size, size, sizeof ce->zeroed_size);
    ce->n_zeroed = n_slots;
    if (total) CUDA_TRY(cudaMemsetAsync(ce->stage, 0, total * sizeof(float), ce->stream), "clearing the capture buffers");
    return AP_OK;
}

/* Copies the staged outputs to the caller's buffers (asynchronously). */
static ap_status copy_out(ap_engine *e, const ap_capture *caps, int B, const size_t *size, const stage_slots *slots,
                          ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    for (int b = 0; caps && b < B; b++)
        for (int i = 0; i < caps[b].n_capture; i++) {
            const stage_slots *sl = &slots[(size_t)b * caps[b].n_capture + i];
            for (int k = 0; k < N_OUT; k++)
                if (sl->at[k] >= 0)
                    /* cudaMemcpyDefault: to the host, or to device buffers (ap_engine_device_alloc) */
                    CUDA_TRY(cudaMemcpyAsync(capture_dst(&caps[b], i, k), ce->stage + sl->at[k],
                                             size[k] * sizeof(float), cudaMemcpyDefault, ce->stream),
                             "copying captured attention, q/k/v or output");
        }
    return AP_OK;
}

/* The part of a key that says what is captured: (layer, outputs mask) pairs.
 * Returns the new key length, or -1 when it does not fit (then nothing is
 * recorded and the launches run one by one). */
static int key_captures(long long *key, int n, const ap_capture *cap)
{
    const int n_capture = cap ? cap->n_capture : 0;
    if (n + 1 + 2 * n_capture > GRAPH_KEY_MAX) return -1;
    key[n++] = n_capture;
    for (int i = 0; i < n_capture; i++) {
        int mask = 0;
        for (int k = 0; k < N_OUT; k++) mask |= capture_dst(cap, i, k) ? 1 << k : 0;
        key[n++] = cap->layers[i];
        key[n++] = mask;
    }
    return n;
}

typedef ap_status (*enqueue_fn)(ap_engine *e, const void *arg, ap_error *err);

/* Runs enqueue's launches on the engine's stream: replays the recorded graph
 * when key matches, else records them (n_key < 0, or a device shared with
 * another thread (ap_engine_device_shared): runs them directly). */
static ap_status run_recorded(ap_engine *e, graph_cache *g, const long long *key, int n_key, enqueue_fn enqueue,
                              const void *arg, ap_error *err)
{
    cuda_engine *ce = (cuda_engine *)e->impl;
    if (n_key >= 0 && graph_cache_matches(g, key, n_key)) {
        CUDA_TRY(cudaGraphLaunch(g->exec, ce->stream), "replaying the recorded launches");
        return AP_OK;
    }
    if (e->device_shared) return enqueue(e, arg, err); /* (the recorded graph stays) */
    graph_cache_clear(g);
    if (n_key < 0) return enqueue(e, arg, err);
    CUDA_TRY(cudaStreamBeginCapture(ce->stream, cudaStreamCaptureModeThreadLocal), "recording the launches");
    ap_status st = enqueue(e, arg, err);
    cudaGraph_t graph = NULL;
    cudaError_t ec = cudaStreamEndCapture(ce->stream, &graph);
    if (st) {
        if (graph) cudaGraphDestroy(graph);
        return st;
    }
    CUDA_TRY(ec, "recording the launches");
    ec = cudaGraphInstantiate(&g->exec, graph, 0);
    cudaGraphDestroy(graph);
    if (ec != cudaSuccess) g->exec = NULL;
    CUDA_TRY(ec, "instantiating the recorded launches");
    memcpy(g->key, key, (size_t)n_key * sizeof *key);
    g->n_key = n_key;
    CUDA_TRY(cudaGraphLaunch(g->exec, ce->stream), "replaying the recorded launches");
    return AP_OK;
}

#endif
