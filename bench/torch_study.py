#!/usr/bin/env python3
"""The study a researcher would script in PyTorch, for bench/study-torch.sh.

Hugging Face GPT-2 (eager attention, output_attentions=True) traces the
samples; five policies (window, sink, random, h2o, tova) replay every layer's
attention, vectorised over samples x layers x heads with a loop over steps
only, with attnprobe's rules (docs/policies.md): budget, sink and recent
protection, lowest score evicted with the oldest position winning ties, the
isolated replay's row (the reference restricted to the kept set and t,
renormalised) as what the policies observe. Metrics at the measured steps:
kl (eps-smoothed), kl_rev, js, tv, cosine, l1, l2, mass_retained.

    python3 bench/torch_study.py --model DIR --ids TRACE [--summary SUMMARY.json]
        [--dtype fp32|fp16] [--budget 64 --sink 4 --recent 16 --warmup 64 --stride 16]

TRACE: a trace file of attnprobe (ids.<s> tensors: the samples' token ids).
With --summary (attnprobe's run on the same model and samples), prints the
largest difference of the metrics' means per (policy, layer); `random` draws
from another generator, so only its time is comparable.
"""
import argparse
import json
import time

import torch
from trace_ids import load_ids
from transformers import GPT2LMHeadModel

POLICIES = ["window", "sink", "random", "h2o", "tova"]
METRICS = ["kl", "kl_rev", "js", "tv", "cosine", "l1", "l2", "mass_retained"]
EPS = 1e-10


def metrics(p, q, kept):
    """p, q, kept: [..., n] (float64, float64, bool); returns {name: [...]}."""
    n = p.shape[-1]
    sp, sq = p.sum(-1, keepdim=True), q.sum(-1, keepdim=True)
    a, b = (p + EPS) / (sp + n * EPS), (q + EPS) / (sq + n * EPS)
    kl = (a * (a / b).log()).sum(-1).clamp_min(0)
    pos_q = q > 0
    kl_rev = torch.where(pos_q, q * (q / p).log(), torch.zeros_like(q)).sum(-1)
    m = 0.5 * (p + q)
    both = (p > 0) & (q > 0)
    js = torch.where(both, 0.5 * (p * (p / m).log() + q * (q / m).log()), 0.5 * (p + q) * 0.6931471805599453)
    diff = p - q
    return {
        "kl": kl, "kl_rev": kl_rev, "js": js.sum(-1).clamp_min(0), "tv": 0.5 * diff.abs().sum(-1),
        "cosine": (p * q).sum(-1) / ((p * p).sum(-1) * (q * q).sum(-1)).sqrt(),
        "l1": diff.abs().sum(-1), "l2": (diff * diff).sum(-1).sqrt(),
        "mass_retained": (p * kept).sum(-1) / sp.squeeze(-1),
    }


def replay(attn, lens, policy, args, gen):
    """attn: [S, L, H, T, T] on the device. Returns {metric: [S, L] sums}, counts [S, L]."""
    S, L, H, T, _ = attn.shape
    dev = attn.device
    kept = torch.zeros(S, L, H, T, dtype=torch.bool, device=dev)
    n_kept = torch.zeros(S, L, H, dtype=torch.long, device=dev)
    score = torch.zeros(S, L, H, T, dtype=torch.float32, device=dev)
    position = torch.arange(T, device=dev, dtype=torch.float32)
    sums = {k: torch.zeros(S, L, dtype=torch.float64, device=dev) for k in METRICS}
    count = torch.zeros(S, L, dtype=torch.float64, device=dev)
    live_len = torch.tensor(lens, device=dev)
    inf = torch.tensor(float("inf"), device=dev)
    for t in range(T):
        live = (t < live_len).view(S, 1, 1)
        p = attn[:, :, :, t, : t + 1]                      # [S, L, H, t + 1]
        k_t = kept[..., : t + 1].clone()
        k_t[..., t] = True
        nothing_evicted = (n_kept == t).unsqueeze(-1)
        mass = (p.double() * k_t).sum(-1, keepdim=True)
        q = torch.where(nothing_evicted, p.double(), torch.where(k_t, p.double() / mass, torch.zeros_like(mass)))
        if t >= args.warmup and t % args.stride == 0:
            m = metrics(p.double(), q, k_t)
            w = live.squeeze(-1).double() * H
            for k in METRICS:
                sums[k] += m[k].sum(-1) * live.squeeze(-1)
            count += w
        # observe t: the row the policies see is p scaled by 1 / the retained mass
        scale = torch.where(nothing_evicted, torch.ones_like(mass), 1.0 / mass).float()
        val = p * scale
        if policy == "h2o":
            score[..., : t + 1] += torch.where(k_t, val, torch.zeros_like(val))
        elif policy == "tova":
            score[..., : t + 1] = val
        elif policy == "random":
            score[..., : t + 1] = torch.rand(val.shape, device=dev, generator=gen)
        kept[..., t] = live.expand(S, L, H)
        n_kept += live.long()
        over = (n_kept > args.budget) & live
        if not bool(over.any()):
            continue
        protect = policy != "window"
        cand = kept.clone()
        if protect:
            cand[..., : args.sink] = False
            cand[..., max(0, t - args.recent + 1): t + 1] = False
        s = position.expand(S, L, H, T) if policy in ("window", "sink") else score
        victim = torch.where(cand, s, inf).argmin(-1)      # first minimum: the oldest on ties
        drop = torch.zeros_like(kept).scatter_(-1, victim.unsqueeze(-1), True) & over.unsqueeze(-1)
        kept &= ~drop
        n_kept -= over.long()
    return sums, count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--summary")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--sink", type=int, default=4)
    ap.add_argument("--recent", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=64)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8, help="samples a forward pass")
    args = ap.parse_args()
    dev = "cuda"
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    model = GPT2LMHeadModel.from_pretrained(args.model, attn_implementation="eager", torch_dtype=dtype).to(dev).eval()
    ids = load_ids(args.ids)
    lens = [len(x) for x in ids]
    T = max(lens)
    batch = torch.full((len(ids), T), 0, dtype=torch.long)
    for s, x in enumerate(ids):
        batch[s, : len(x)] = x
    torch.cuda.synchronize()
    t0 = time.time()
    with torch.no_grad():
        layers = []
        for s0 in range(0, len(ids), args.batch):
            out = model(batch[s0: s0 + args.batch].to(dev), output_attentions=True)
            layers.append(torch.stack([a.float() for a in out.attentions], 1))  # [b, L, H, T, T]
            del out
        attn = torch.cat(layers, 0)
        del layers
        torch.cuda.synchronize()
        t_trace = time.time() - t0
        gen = torch.Generator(device=dev)
        gen.manual_seed(1)
        results = {}
        for pol in POLICIES:
            sums, count = replay(attn, lens, pol, args, gen)
            results[pol] = {k: (v.sum(0) / count.sum(0)).tolist() for k, v in sums.items()}
        torch.cuda.synchronize()
    dt = time.time() - t0
    print(f"torch {args.dtype}: {len(ids)} samples x {T}, {attn.shape[1]} layers, 5 policies: {dt:.2f} s "
          f"(trace {t_trace:.2f} s), peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if args.summary:
        ours = json.load(open(args.summary))
        worst = {}
        for run in ours["runs"]:
            pol, layer = run["policy"], run["layer"]
            if pol not in results or pol == "random":
                continue
            for k in METRICS:
                d = abs(run["metrics"][k]["mean"] - results[pol][k][layer])
                worst[pol] = max(worst.get(pol, 0), d)
        for pol, d in worst.items():
            print(f"  {pol}: largest |mean difference| over layers and metrics {d:.2e}")


if __name__ == "__main__":
    main()
