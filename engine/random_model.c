/* random_model.c — seeded synthetic GPT-2s for tests and benchmarks.
 *
 * random:gpt2-small, or random:L=2,H=4,D=64,V=512,T=256,seed=1 with
 * L layers, H heads, D width (n_embd), V vocabulary, T positions. Weights
 * follow GPT-2's initialisation (normal, sd 0.02; LayerNorm 1 and 0) from
 * GSL's mt19937, so a spec names the same model everywhere. */
#include "model_internal.h"

#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ap_status parse_spec(const char *spec, ap_config *c, unsigned long *seed, ap_error *err)
{
    *c = (ap_config){.n_layer = 2, .n_head = 4, .n_embd = 64, .n_ctx = 256, .vocab_size = 512,
                     .ln_eps = 1e-5f};
    *seed = 1;
    if (strcmp(spec, "gpt2-small") == 0) {
        *c = (ap_config){12, 12, 768, 1024, 50257, 50257, 1e-5f};
        return AP_OK;
    }
    char buf[256];
    if (strlen(spec) >= sizeof buf)
        return ap_error_set(err, AP_ERR_USAGE, "model random:%s: spec too long", spec);
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        char *end = NULL;
        long val = eq ? strtol(eq + 1, &end, 10) : 0;
        if (!eq || end == eq + 1 || *end != '\0' || val < 0 || val > (1L << 24))
            return ap_error_set(err, AP_ERR_USAGE,
                                "model random:%s: bad item \"%s\" (accepted: gpt2-small or "
                                "L=,H=,D=,V=,T=,seed= with integer values)",
                                spec, tok);
        *eq = '\0';
        if (strcmp(tok, "L") == 0) c->n_layer = (int)val;
        else if (strcmp(tok, "H") == 0) c->n_head = (int)val;
        else if (strcmp(tok, "D") == 0) c->n_embd = (int)val;
        else if (strcmp(tok, "V") == 0) c->vocab_size = (int)val;
        else if (strcmp(tok, "T") == 0) c->n_ctx = (int)val;
        else if (strcmp(tok, "seed") == 0) *seed = (unsigned long)val;
        else
            return ap_error_set(err, AP_ERR_USAGE,
                                "model random:%s: unknown key \"%s\" (accepted: L, H, D, V, T, seed)",
                                spec, tok);
    }
    c->padded_vocab = c->vocab_size;
    return AP_OK;
}

ap_status ap_model_load_random(const char *spec, ap_model *m, ap_error *err)
{
    unsigned long seed;
    ap_status st = parse_spec(spec, &m->config, &seed, err);
    if (st) return st;
    if ((st = ap_config_validate(&m->config, m->source, err))) {
        return st == AP_ERR_INPUT ? AP_ERR_USAGE : st;
    }
    if ((st = ap_model_alloc(m, err))) return st;
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    if (!rng) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    gsl_rng_set(rng, seed);
    const ap_config *c = &m->config;
    size_t C = (size_t)c->n_embd, L = (size_t)c->n_layer;
    struct { float *p; size_t n; double sd; float fill; } groups[] = {
        {m->w.wte, (size_t)c->padded_vocab * C, 0.02, 0},
        {m->w.wpe, (size_t)c->n_ctx * C, 0.01, 0},
        {m->w.ln1_w, L * C, 0, 1}, {m->w.ln1_b, L * C, 0, 0},
        {m->w.attn_w, L * C * 3 * C, 0.02, 0}, {m->w.attn_b, L * 3 * C, 0, 0},
        {m->w.attn_proj_w, L * C * C, 0.02, 0}, {m->w.attn_proj_b, L * C, 0, 0},
        {m->w.ln2_w, L * C, 0, 1}, {m->w.ln2_b, L * C, 0, 0},
        {m->w.fc_w, L * C * 4 * C, 0.02, 0}, {m->w.fc_b, L * 4 * C, 0, 0},
        {m->w.fc_proj_w, L * 4 * C * C, 0.02, 0}, {m->w.fc_proj_b, L * C, 0, 0},
        {m->w.lnf_w, C, 0, 1}, {m->w.lnf_b, C, 0, 0},
    };
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++)
        for (size_t i = 0; i < groups[g].n; i++)
            groups[g].p[i] = groups[g].sd > 0
                                 ? (float)gsl_ran_gaussian_ziggurat(rng, groups[g].sd)
                                 : groups[g].fill;
    gsl_rng_free(rng);
    snprintf(m->dtype, sizeof m->dtype, "F32");
    ap_sha256_hex(m->source, strlen(m->source), m->sha256);
    return AP_OK;
}
