#!/usr/bin/env python3
"""The perplexity a researcher would measure with Hugging Face, for
bench/eval-gpu.sh: GPT-2 decodes the samples token by token, teacher-forced,
batched over samples, with a DynamicCache capped to the last BUDGET
positions after every step (the window policy), and a second loop with the
whole cache (full). Prints each loop's tokens/s and perplexity over the
positions >= WARMUP, and, with --summary (attnprobe eval on the same model
and samples), attnprobe's full and window perplexities beside them.

    python3 bench/eval_torch.py --model DIR --ids TRACE [--summary SUMMARY.json]
        [--dtype fp32|bf16] [--budget 256 --warmup 64]
"""
import argparse
import json
import math
import time

import torch
from trace_ids import load_ids
from transformers import DynamicCache, GPT2LMHeadModel


def crop(cache, budget):
    """Keep the last `budget` positions of every layer's keys and values."""
    for layer in cache.layers:
        if layer.keys is not None and layer.keys.shape[-2] > budget:
            layer.keys = layer.keys[..., -budget:, :].contiguous()
            layer.values = layer.values[..., -budget:, :].contiguous()


@torch.no_grad()
def loop(model, ids, budget, warmup):
    """Token-by-token decode of ids [B, T]; budget None: the whole cache."""
    B, T = ids.shape
    cache = DynamicCache()
    nll, n = 0.0, 0
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for t in range(T - 1):
        pos = torch.full((B, 1), t, device=ids.device, dtype=torch.long)
        out = model(input_ids=ids[:, t:t + 1], position_ids=pos, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        if budget is not None:
            crop(cache, budget)
        if t >= warmup:
            logp = torch.log_softmax(out.logits[:, -1].double(), -1)
            nll += -logp.gather(1, ids[:, t + 1:t + 2]).sum().item()
            n += B
    torch.cuda.synchronize()
    return B * (T - 1) / (time.perf_counter() - t0), math.exp(nll / n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--summary")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=64)
    a = ap.parse_args()
    dtype = torch.float32 if a.dtype == "fp32" else torch.bfloat16
    model = GPT2LMHeadModel.from_pretrained(a.model, torch_dtype=dtype, attn_implementation="eager").cuda().eval()
    samples = load_ids(a.ids)
    T = min(len(s) for s in samples)
    ids = torch.stack([s[:T] for s in samples]).cuda()
    for name, budget in (("full", None), ("window", a.budget)):
        tps, ppl = loop(model, ids, budget, a.warmup)
        print(f"transformers {a.dtype} {name}: {tps:.0f} tokens/s ({ids.shape[0]} samples x {T} tokens, "
              f"batched over samples), perplexity {ppl:.4f}")
    if a.summary:
        s = json.load(open(a.summary))
        for r in s["runs"]:
            if r["policy"] in ("full", "window"):
                print(f"attnprobe {r['policy']}: perplexity {r['perplexity']['value']:.4f}")


if __name__ == "__main__":
    main()
