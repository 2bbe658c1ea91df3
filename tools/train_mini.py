#!/usr/bin/env python3
"""Trains attnprobe-mini, the bundled default model (models/attnprobe-mini/README.md).

GPT-2 architecture (transformers GPT2LMHeadModel): 12 layers, 6 heads, width 192,
1024 positions, and a byte-level BPE vocabulary of 8192 tokens trained here on the
same text. Runs on the GPU machine (torch, transformers, tokenizers); about three
minutes on one H200. Deterministic given --seed (fixed step count, seeded data order,
deterministic kernels where torch offers them).

Text: every *.txt under the --text folders (blocks separated by blank lines are
documents). Documents are shuffled with the seed and 5% are held out for validation;
sample.txt is taken from the held-out part.

usage: python3 tools/train_mini.py --text DIR [--text DIR2] --out models/attnprobe-mini
"""
import argparse
import glob
import json
import math
import os
import random
import time

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel


def read_documents(folders):
    docs = []
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "*.txt"))):
            with open(path, encoding="utf-8", errors="replace") as f:
                docs.extend(d.strip() for d in f.read().split("\n\n") if d.strip())
    return docs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", action="append", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--probe-every", type=int, default=1000,
                    help="print the attention structure every N steps")
    args = ap.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()

    docs = read_documents(args.text)
    random.Random(args.seed).shuffle(docs)
    n_val = max(1, len(docs) // 20)
    val_docs, train_docs = docs[:n_val], docs[n_val:]
    print(f"{len(docs)} documents ({sum(map(len, docs)) / 1e6:.1f} MB): {len(train_docs)} train, "
          f"{len(val_docs)} held out")

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(train_docs, vocab_size=args.vocab, min_frequency=2,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tok.save_model(args.out)  # vocab.json, merges.txt
    eot = tok.token_to_id("<|endoftext|>")

    def encode(ds):
        ids = []
        for enc in tok.encode_batch(ds):
            ids.extend(enc.ids)
            ids.append(eot)
        return torch.tensor(ids, dtype=torch.int64)

    train_ids, val_ids = encode(train_docs), encode(val_docs)
    print(f"tokens: {len(train_ids)} train, {len(val_ids)} held out ({time.time() - t0:.0f}s)")

    config = GPT2Config(n_layer=12, n_head=6, n_embd=192, n_positions=1024, vocab_size=args.vocab,
                        bos_token_id=eot, eos_token_id=eot, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, activation_function="gelu_new", tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    dev = "cuda"
    model = GPT2LMHeadModel(config).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=True)
    warmup = args.steps // 20

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    gen = torch.Generator().manual_seed(args.seed)
    train_gpu = train_ids.to(dev)

    eot_col = torch.full((args.batch, 1), eot, dtype=torch.int64, device=dev)
    n_repeat = args.batch // 4

    def batch(data, g):
        """Rows of <|endoftext|> + text. A quarter of the rows hold a passage twice in a
        row: repeated text is what teaches copying (induction heads) within minutes, and
        the leading <|endoftext|> gives the model a fixed first token to park attention on
        (an attention sink), as GPT-2's documents begin after <|endoftext|>."""
        starts = torch.randint(0, len(data) - args.seq - 1, (args.batch,), generator=g)
        idx = starts[:, None].to(dev) + torch.arange(args.seq, device=dev)[None, :]
        half = args.seq // 2
        rep = idx[:n_repeat, :half]
        idx[:n_repeat, half:2 * half] = rep
        x = torch.cat([eot_col, data[idx]], dim=1)
        return x[:, :-1], x[:, 1:]

    @torch.no_grad()
    def evaluate():
        model.eval()
        vg = val_ids.to(dev)
        losses = []
        n = (len(vg) - 1) // args.seq
        eot1 = torch.tensor([eot], device=dev)
        for i in range(0, min(n, 64), 8):
            rows = [torch.cat([eot1, vg[j * args.seq:(j + 1) * args.seq]])
                    for j in range(i, min(i + 8, n))]
            xb = torch.stack(rows)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(xb[:, :-1], labels=xb[:, :-1])
            losses.append(out.loss.float().item())
        model.train()
        return float(np.mean(losses))

    probe_rng = torch.Generator().manual_seed(args.seed + 1)
    probe_text = torch.cat([torch.tensor([eot]), val_ids[:255]]).to(dev)
    probe_rep = torch.randint(0, args.vocab, (50,), generator=probe_rng)
    probe_rep[probe_rep == eot] += 1
    probe_rep = torch.cat([torch.tensor([eot]), probe_rep, probe_rep]).to(dev)

    def use_attention(impl):
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(impl)
        else:
            model.config._attn_implementation = impl

    @torch.no_grad()
    def attention_structure():
        """The scores tests/test_bundled_model.c asserts, in fp32: per layer the mean
        attention on position 0 (sink) over heads and queries, the best previous-token
        head, and the best induction head (50 random tokens repeated)."""
        model.eval()
        use_attention("eager")  # sdpa returns no probabilities
        att = model(probe_text[None], output_attentions=True).attentions
        T = probe_text.numel()
        sink = [a[0, :, 1:, 0].mean().item() for a in att]
        prev = max(a[0].diagonal(offset=-1, dim1=1, dim2=2).mean(-1).max().item() for a in att)
        att = model(probe_rep[None], output_attentions=True).attentions
        R = 50
        q = torch.arange(1 + R, 2 * R, device=dev)
        ind = max(a[0][:, q, q - R + 1].mean(-1).max().item() for a in att)
        use_attention("sdpa")
        model.train()
        return sink, prev, ind

    def print_structure(step):
        sink, prev, ind = attention_structure()
        print(f"  structure at step {step}: prev {prev:.3f} induction {ind:.3f} sink by layer "
              + " ".join(f"{s:.2f}" for s in sink), flush=True)
        return sink, prev, ind

    print(f"model: {n_params / 1e6:.2f} M parameters; {args.steps} steps of {args.batch}x{args.seq}")
    model.train()
    t_train = time.time()
    for step in range(args.steps):
        for gparam in opt.param_groups:
            gparam["lr"] = lr_at(step)
        x, y = batch(train_gpu, gen)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)),
                                                 y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {loss.item():.3f} lr {lr_at(step):.2e} "
                  f"{(step + 1) * args.batch * args.seq / (time.time() - t_train) / 1e3:.0f}k tok/s",
                  flush=True)
        if args.probe_every and step > 0 and step % args.probe_every == 0:
            print_structure(step)
    sink, prev, ind = print_structure(args.steps)
    val_loss = evaluate()
    train_s = time.time() - t_train
    print(f"validation loss {val_loss:.4f} (perplexity {math.exp(val_loss):.1f}) after {train_s:.0f}s")

    # Save in the Hugging Face layout, fp16, tied lm_head left out.
    model = model.float().cpu()
    model.config.save_pretrained(args.out)
    tensors = {k: v.half().contiguous() for k, v in model.state_dict().items()
               if k != "lm_head.weight" and not k.endswith(".attn.bias")}
    save_file(tensors, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    sample, size = [], 0
    for d in val_docs:
        if len(d) < 300:
            continue
        sample.append(d)
        size += len(d)
        if size > 6000:
            break
    with open(os.path.join(args.out, "sample.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(sample) + "\n")
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({"seed": args.seed, "steps": args.steps, "batch": args.batch, "seq": args.seq,
                   "lr": args.lr, "vocab": args.vocab, "parameters": n_params,
                   "train_tokens": len(train_ids), "val_tokens": len(val_ids),
                   "weight_decay": args.weight_decay, "documents": len(docs),
                   "val_loss": val_loss, "train_seconds": train_s,
                   "structure": {"sink_by_layer": sink, "best_prev": prev,
                                 "best_induction": ind}},
                  f, indent=1)


if __name__ == "__main__":
    main()
