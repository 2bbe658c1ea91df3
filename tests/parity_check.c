/* parity_check — prints the engine's error against a reference written by
 * tools/make_fixtures.py. For models too large to commit (GPT-2-small
 * shapes), run by hand on the machine that built them:
 *   parity_check MODEL_DIR [cpu|cuda] [fp32|tf32|bf16]
 * Exit 0 when attention is within 1e-5 and logits within 1e-4 (relative). */
#include <stdio.h>
#include <string.h>

#include "parity.h"

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: parity_check MODEL_DIR [cpu|cuda] [fp32|tf32|bf16]\n");
        return 2;
    }
    char ref[2048];
    snprintf(ref, sizeof ref, "%s/reference.safetensors", argv[1]);
    ap_backend backend = argc > 2 && strcmp(argv[2], "cuda") == 0 ? AP_BACKEND_CUDA : AP_BACKEND_CPU;
    ap_precision prec = AP_PRECISION_FP32;
    if (argc > 3) prec = strcmp(argv[3], "tf32") == 0 ? AP_PRECISION_TF32
                       : strcmp(argv[3], "bf16") == 0 ? AP_PRECISION_BF16 : AP_PRECISION_FP32;
    parity_result r;
    ap_error err;
    ap_status st = parity_run(argv[1], ref, backend, prec, &r, &err);
    if (st) {
        fprintf(stderr, "parity_check: %s\n", err.msg);
        return (int)st;
    }
    int ok = r.attn_max_abs <= 1e-5 && r.logits_max_rel <= 1e-4;
    printf("%s [%s]: T=%d layers=%d attention max abs err %.3g, logits max rel err %.3g: %s\n",
           argv[1], backend == AP_BACKEND_CUDA ? "cuda" : "cpu", r.T, r.n_layer, r.attn_max_abs,
           r.logits_max_rel, ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
