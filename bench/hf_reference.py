#!/usr/bin/env python3
"""The Hugging Face reference for bench/bench_gpu (same shapes, same GPU).

(a) prefill: transformers GPT2LMHeadModel with GPT-2-small shapes (random weights),
    fp16, eager attention, output_attentions=True, T=1024, batch 8: tokens/s with every
    layer's attention materialised on the device.
(b) the seed study's loop: two models in lockstep (full cache and a second model fed
    the same tokens), token by token, output_attentions=True, fp32, batch 1: tokens/s.

usage: python3 bench/hf_reference.py [--steps 128]
"""
import argparse
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=128)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
    cfg._attn_implementation = "eager"
    dev = "cuda"
    model = GPT2LMHeadModel(cfg).to(dev).half().eval()
    ids = torch.randint(0, cfg.vocab_size, (8, 1024), device=dev)
    with torch.no_grad():
        model(ids, output_attentions=True)
        torch.cuda.synchronize()
        t0 = time.time()
        reps = 3
        for _ in range(reps):
            out = model(ids, output_attentions=True)
        torch.cuda.synchronize()
        dt = time.time() - t0
    print(f"(a) transformers fp16 prefill, output_attentions, T=1024 x 8: "
          f"{reps * 8 * 1024 / dt:.0f} tokens/s ({len(out.attentions)} layers materialised)")
    del model, out
    torch.cuda.empty_cache()

    a = GPT2LMHeadModel(cfg).to(dev).eval()
    b = GPT2LMHeadModel(cfg).to(dev).eval()
    tok = torch.randint(0, cfg.vocab_size, (1, args.steps), device=dev)
    with torch.no_grad():
        pa = pb = None
        torch.cuda.synchronize()
        t0 = time.time()
        for t in range(args.steps):
            oa = a(tok[:, t:t + 1], past_key_values=pa, use_cache=True, output_attentions=True)
            ob = b(tok[:, t:t + 1], past_key_values=pb, use_cache=True, output_attentions=True)
            pa, pb = oa.past_key_values, ob.past_key_values
            _ = [x.cpu() for x in oa.attentions[:1] + ob.attentions[:1]]
        torch.cuda.synchronize()
        dt = time.time() - t0
    print(f"(b) transformers token-by-token, two models in lockstep, fp32: "
          f"{args.steps / dt:.1f} tokens/s over {args.steps} steps")


if __name__ == "__main__":
    main()
