#include "testutil.h"

#include "engine/model_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int testutil_write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(data, 1, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

char *testutil_read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)size + 1);
    *n = buf ? fread(buf, 1, (size_t)size, f) : 0;
    if (buf) buf[*n] = '\0';
    fclose(f);
    return buf;
}

const char *testutil_tmpdir(const char *tag)
{
    static char dir[256];
    snprintf(dir, sizeof dir, "/tmp/attnprobe-test-%s-%ld", tag, (long)getpid());
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return NULL;
    mkdir(dir, 0700);
    return dir;
}

int testutil_write_hf(const ap_model *m, const char *dir, int prefixed)
{
    const ap_config *c = &m->config;
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char json[512];
    int n = snprintf(json, sizeof json,
                     "{\"model_type\": \"gpt2\", \"n_layer\": %d, \"n_head\": %d, \"n_embd\": %d, "
                     "\"n_positions\": %d, \"vocab_size\": %d, \"layer_norm_epsilon\": %g, "
                     "\"activation_function\": \"gelu_new\"}\n",
                     c->n_layer, c->n_head, c->n_embd, c->n_ctx, c->vocab_size, (double)c->ln_eps);
    if (testutil_write_file(path, json, (size_t)n)) return -1;
    int n_slots = ap_model_slot_count(c);
    ap_tensor_slot *slots = calloc((size_t)n_slots, sizeof *slots);
    ap_st_out *out = calloc((size_t)n_slots, sizeof *out);
    char (*names)[96] = calloc((size_t)n_slots, sizeof *names);
    ap_model_slots((ap_model *)m, slots);
    for (int i = 0; i < n_slots; i++) {
        snprintf(names[i], sizeof names[i], "%s%s", prefixed ? "transformer." : "", slots[i].name);
        out[i] = (ap_st_out){.name = names[i], .dtype = AP_DT_F32, .ndim = slots[i].ndim,
                             .shape = {slots[i].shape[0], slots[i].shape[1]}, .data = slots[i].dst};
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const char *k[] = {"format"}, *v[] = {"pt"};
    ap_error err;
    int rc = ap_st_write(path, out, n_slots, k, v, 1, &err) == AP_OK ? 0 : -1;
    free(slots);
    free(out);
    free(names);
    return rc;
}

static void put(FILE *f, float x, int bf16)
{
    if (bf16) {
        uint32_t bits;
        memcpy(&bits, &x, 4);
        uint16_t h = (uint16_t)(bits >> 16);
        fwrite(&h, 2, 1, f);
    } else {
        fwrite(&x, 4, 1, f);
    }
}

/* Writes count values; with out_dim > 0, `blocks` matrices stored [in,out]
 * written as [out,in] (llm.c's Linear layout). */
static void put_tensor(FILE *f, const float *src, size_t blocks, size_t out_dim, size_t in_dim,
                       int bf16)
{
    for (size_t b = 0; b < blocks; b++)
        for (size_t o = 0; o < out_dim; o++)
            for (size_t i = 0; i < in_dim; i++) put(f, src[b * out_dim * in_dim + i * out_dim + o], bf16);
}

int testutil_write_llmc(const ap_model *m, const char *path, int version)
{
    const ap_config *c = &m->config;
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int32_t h[256] = {20240326, version, c->n_ctx, c->vocab_size, c->n_layer, c->n_head, c->n_embd,
                      c->padded_vocab};
    fwrite(h, sizeof h, 1, f);
    const size_t C = (size_t)c->n_embd, L = (size_t)c->n_layer;
    const int bf = version == 5;
    const ap_weights *w = &m->w;
    put_tensor(f, w->wte, 1, 1, (size_t)c->padded_vocab * C, bf);
    put_tensor(f, w->wpe, 1, 1, (size_t)c->n_ctx * C, bf);
    put_tensor(f, w->ln1_w, 1, 1, L * C, bf);
    put_tensor(f, w->ln1_b, 1, 1, L * C, bf);
    put_tensor(f, w->attn_w, L, 3 * C, C, bf);
    put_tensor(f, w->attn_b, 1, 1, L * 3 * C, bf);
    put_tensor(f, w->attn_proj_w, L, C, C, bf);
    put_tensor(f, w->attn_proj_b, 1, 1, L * C, bf);
    put_tensor(f, w->ln2_w, 1, 1, L * C, bf);
    put_tensor(f, w->ln2_b, 1, 1, L * C, bf);
    put_tensor(f, w->fc_w, L, 4 * C, C, bf);
    put_tensor(f, w->fc_b, 1, 1, L * 4 * C, bf);
    put_tensor(f, w->fc_proj_w, L, C, 4 * C, bf);
    put_tensor(f, w->fc_proj_b, 1, 1, L * C, bf);
    put_tensor(f, w->lnf_w, 1, 1, C, bf);
    put_tensor(f, w->lnf_b, 1, 1, C, bf);
    return fclose(f) == 0 ? 0 : -1;
}

int testutil_model_samples(const char *model_dir, int n, int len, int min_len, ap_model **model, ap_samples *samples)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/sample.txt", model_dir);
    size_t size = 0;
    char *text = testutil_read_file(path, &size);
    ap_tokenizer *tok = NULL;
    ap_error err;
    int rc = !text || ap_model_load(model_dir, model, &err) || ap_tokenizer_load_dir(model_dir, &tok, &err) ||
             ap_samples_make(tok, text, size, n, len, min_len, samples, &err);
    if (rc) fprintf(stderr, "testutil: %s: %s\n", model_dir, text ? err.msg : "no sample.txt");
    free(text);
    ap_tokenizer_free(tok);
    return rc || samples->n != n;
}
