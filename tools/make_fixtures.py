#!/usr/bin/env python3
"""Builds the parity fixtures under tests/fixtures/ with Hugging Face transformers.

Runs on the GPU machine (torch, transformers, tokenizers, safetensors are there);
a GPU is not needed. For each seeded random GPT-2 below it writes a Hugging Face
folder (config.json + model.safetensors, in the dtype given) and reference.safetensors:

  ids          I32 [T]         the input tokens
  attn.<l>     F32 [H, T, T]   attention probabilities of layer l
  logits_last  F32 [V]         logits of the last position

The reference is computed in float64 from the weights exactly as stored (after
rounding to F16/BF16), so it measures our engine, not the storage format. Attention
is made peaky (c_attn scaled, random LayerNorm gains) so rows are not near-uniform.
Fixture `tiny` is also written as an llm.c checkpoint (version 3, fp32) and `bf16`
as version 5 (bf16), to test that loader against the same reference.

With --tokenizer DIR --text DIR it also writes tests/fixtures/tokenizer/reference.json:
ids of adversarial strings and, per corpus file, the token count and the sha256 of
the ids as little-endian int32, from tokenizers.ByteLevelBPETokenizer.

With --gpt2-small OUT it builds a GPT-2-small-shaped (124M) random model and its
reference in OUT (not committed: 500 MB), for tests/parity_check run by hand.

usage: python3 tools/make_fixtures.py [--out tests/fixtures] [--tokenizer D --text D]
                                      [--gpt2-small DIR]
"""
import argparse
import hashlib
import json
import os
import struct
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

FIXTURES = [
    # name, layers, heads, width, vocab, positions, sequence length, dtype, eps, seed
    dict(name="tiny", L=2, H=4, C=128, V=512, n_ctx=256, T=160, dtype="F32", eps=1e-5, seed=1),
    dict(name="vocab50257", L=3, H=4, C=48, V=50257, n_ctx=192, T=128, dtype="F16", eps=1e-6, seed=2),
    dict(name="bf16", L=4, H=8, C=128, V=1000, n_ctx=300, T=144, dtype="BF16", eps=1e-5, seed=3),
]
TORCH_DTYPE = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def build_model(spec):
    torch.manual_seed(spec["seed"])
    config = GPT2Config(
        n_layer=spec["L"], n_head=spec["H"], n_embd=spec["C"], vocab_size=spec["V"],
        n_positions=spec["n_ctx"], layer_norm_epsilon=spec["eps"],
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "eager"  # output_attentions needs the eager path
    model = GPT2LMHeadModel(config).eval()
    g = torch.Generator().manual_seed(spec["seed"] + 100)
    with torch.no_grad():
        for block in model.transformer.h:
            C = spec["C"]
            # Peaky attention: larger q and k projections sharpen the softmax.
            block.attn.c_attn.weight[:, : 2 * C] *= spec.get("q_scale", 6.0)
            for p in (block.attn.c_attn.bias, block.attn.c_proj.bias, block.mlp.c_fc.bias,
                      block.mlp.c_proj.bias, block.ln_1.bias, block.ln_2.bias):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            for p in (block.ln_1.weight, block.ln_2.weight):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        model.transformer.wpe.weight.mul_(3.0)  # position-dependent attention patterns
        # Round to the storage dtype so the float64 reference sees the stored values.
        dt = TORCH_DTYPE.get(spec.get("dtype", "F32"), torch.float32)
        for p in model.parameters():
            p.copy_(p.to(dt).to(torch.float32))
    return model


def reference(model, ids):
    """float64 forward with eager attention: attention of every layer, last logits."""
    m64 = GPT2LMHeadModel(model.config).eval()
    m64.load_state_dict(model.state_dict())
    m64 = m64.double()
    with torch.no_grad():
        out = m64(torch.tensor([ids]), output_attentions=True)
    attn = {f"attn.{l}": a[0].float().contiguous() for l, a in enumerate(out.attentions)}
    return attn, out.logits[0, -1].float().contiguous()


def save_model(model, spec, folder):
    os.makedirs(folder, exist_ok=True)
    model.config.save_pretrained(folder)
    dt = TORCH_DTYPE[spec["dtype"]]
    # Hugging Face names, tied lm_head left out (as save_pretrained does).
    tensors = {k: v.to(dt).contiguous() for k, v in model.state_dict().items()
               if k != "lm_head.weight" and not k.endswith(".attn.bias")
               and not k.endswith(".attn.masked_bias")}
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def write_llmc(model, path, version):
    """llm.c checkpoint: int32[256] header, then parameters with Linear weights [out, in]."""
    sd = {k: v.float() for k, v in model.state_dict().items()}
    cfg = model.config
    L, C, V, T = cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.n_positions
    Vp = ((V + 127) // 128) * 128
    header = np.zeros(256, dtype=np.int32)
    header[:8] = [20240326, version, T, V, L, cfg.n_head, C, Vp]
    wte = torch.zeros(Vp, C)
    wte[:V] = sd["transformer.wte.weight"]

    def stack(name, transpose):
        ts = [sd[f"transformer.h.{l}.{name}"] for l in range(L)]
        return torch.stack([t.t() if transpose else t for t in ts])

    params = [wte, sd["transformer.wpe.weight"], stack("ln_1.weight", 0), stack("ln_1.bias", 0),
              stack("attn.c_attn.weight", 1), stack("attn.c_attn.bias", 0),
              stack("attn.c_proj.weight", 1), stack("attn.c_proj.bias", 0),
              stack("ln_2.weight", 0), stack("ln_2.bias", 0), stack("mlp.c_fc.weight", 1),
              stack("mlp.c_fc.bias", 0), stack("mlp.c_proj.weight", 1), stack("mlp.c_proj.bias", 0),
              sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"]]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for p in params:
            flat = p.contiguous().reshape(-1)
            if version == 5:
                f.write(flat.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
            else:
                f.write(flat.numpy().astype("<f4").tobytes())


def make_model_fixture(spec, out_dir):
    model = build_model(spec)
    folder = os.path.join(out_dir, spec["name"])
    save_model(model, spec, folder)
    rng = np.random.default_rng(spec["seed"])
    ids = rng.integers(0, spec["V"], size=spec["T"]).tolist()
    attn, logits = reference(model, ids)
    ref = dict(attn)
    ref["ids"] = torch.tensor(ids, dtype=torch.int32)
    ref["logits_last"] = logits
    save_file(ref, os.path.join(folder, "reference.safetensors"))
    if spec["name"] == "tiny":
        write_llmc(model, os.path.join(folder, "model.bin"), 3)
    if spec["name"] == "bf16":
        write_llmc(model, os.path.join(folder, "model_bf16.bin"), 5)
    peak = float(torch.stack([a.max(-1).values.mean() for a in attn.values()]).mean())
    print(f"{spec['name']}: L={spec['L']} H={spec['H']} C={spec['C']} V={spec['V']} "
          f"T={spec['T']} {spec['dtype']}, mean row max attention {peak:.3f}")


ADVERSARIAL = [
    "", " ", "  ", "\t", "\n", "\r\n", "a\r\nb\r\n", "   leading and trailing   ",
    "Hello world! It's a test.", "I'm, you're, we've, they'll, she'd, it's, ISN'T, 'quoted'",
    "digits 1234567890 3.14159 1,000,000 0x1F 2026-11-30", "ﬁ ligature ａｂｃ fullwidth",
    "emoji 🙂👍🏽 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵", "CJK 你好，世界。日本語のテキスト 한국어",
    "combining e\u0301 a\u0308 n\u0303 Z\u0351\u0300\u0336",
    "spaces    between\t\ttabs\n\n\nnewlines \n \n", "trailing space ", "nbsp\u00a0here\u2003em",
    "zero\u200bwidth\u200djoin", "Ελληνικά Русский עברית العربية हिन्दी",
    "math ∑∫√∞ ≤≥ ±×÷", "<|endoftext|>", "before<|endoftext|>after <|endoftext|> x",
    "<|endoftext", "mixed Case ALLCAPS camelCase snake_case kebab-case",
    "punctuation!!! ??? ... --- ((( ))) [[ ]] {{ }}", "tab\tat\tend\t", "\u2028line sep\u2029",
    "a" * 300, " ".join(["word"] * 100), "🙂" * 20,
]
# Invalid UTF-8 byte strings: we replace ill-formed sequences by U+FFFD like Python's
# bytes.decode("utf-8", "replace"), and compare with that.
INVALID = [b"\xff", b"abc\x80def", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf0\x9f\x99",
           b"ok \xc0\xaf bad", b"\xf4\x90\x80\x80 too big", b"\xe0\x80\xaf overlong"]


def make_tokenizer_fixture(tok_dir, text_dir, out_dir):
    from tokenizers import ByteLevelBPETokenizer
    tok = ByteLevelBPETokenizer(os.path.join(tok_dir, "encoder.json"),
                                os.path.join(tok_dir, "vocab.bpe"))
    tok.add_special_tokens(["<|endoftext|>"])
    strings = [{"text_hex": s.encode("utf-8").hex(), "ids": tok.encode(s).ids} for s in ADVERSARIAL]
    for b in INVALID:
        strings.append({"text_hex": b.hex(), "ids": tok.encode(b.decode("utf-8", "replace")).ids,
                        "invalid_utf8": True})
    files = []
    for name in sorted(os.listdir(text_dir)):
        if not name.endswith(".txt"):
            continue
        with open(os.path.join(text_dir, name), "rb") as f:
            raw = f.read()
        ids = tok.encode(raw.decode("utf-8", "replace")).ids
        digest = hashlib.sha256(struct.pack(f"<{len(ids)}i", *ids)).hexdigest()
        files.append({"file": name, "bytes": len(raw), "tokens": len(ids), "ids_sha256": digest,
                      "first_ids": ids[:64]})
        print(f"tokenizer: {name}: {len(ids)} tokens")
    os.makedirs(os.path.join(out_dir, "tokenizer"), exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer", "reference.json"), "w") as f:
        json.dump({"source": "tokenizers.ByteLevelBPETokenizer(encoder.json, vocab.bpe) with "
                   "<|endoftext|> added as a special token", "strings": strings, "files": files},
                  f, indent=1)


def make_gpt2_small(out):
    # q_scale 2.45 = 6 * sqrt(128 / 768): attention logits of the same spread as `tiny`.
    spec = dict(name="gpt2-small", L=12, H=12, C=768, V=50257, n_ctx=1024, T=256, dtype="F32",
                eps=1e-5, seed=124, q_scale=2.45)
    model = build_model(spec)
    save_model(model, spec, out)
    ids = np.random.default_rng(7).integers(0, spec["V"], size=spec["T"]).tolist()
    attn, logits = reference(model, ids)
    ref = dict(attn)
    ref["ids"] = torch.tensor(ids, dtype=torch.int32)
    ref["logits_last"] = logits
    save_file(ref, os.path.join(out, "reference.safetensors"))
    # For context: how far transformers' own fp32 forward is from its float64 one.
    with torch.no_grad():
        out32 = model(torch.tensor([ids]), output_attentions=True)
    errs = [float((a[0].float() - attn[f"attn.{l}"]).abs().max()) for l, a in
            enumerate(out32.attentions)]
    lg = float((out32.logits[0, -1] - logits).abs().max() / logits.abs().max())
    print(f"gpt2-small: {sum(p.numel() for p in model.parameters())} parameters in {out}; "
          f"transformers fp32 vs float64: attention max abs {max(errs):.3g} "
          f"(per layer {' '.join(f'{e:.2g}' for e in errs)}), logits max rel {lg:.3g}")


def make_bundled_reference(folder, out):
    """Reference of a trained model exactly as stored (fp16 weights, float64 compute)."""
    model = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager",
                                            dtype=torch.float32).eval()
    ids = np.random.default_rng(11).integers(0, model.config.vocab_size, size=96).tolist()
    attn, logits = reference(model, ids)
    ref = dict(attn)
    ref["ids"] = torch.tensor(ids, dtype=torch.int32)
    ref["logits_last"] = logits
    os.makedirs(out, exist_ok=True)
    save_file(ref, os.path.join(out, "reference.safetensors"))
    print(f"bundled model {folder}: reference of {len(ids)} tokens in {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--tokenizer", help="folder with encoder.json and vocab.bpe")
    ap.add_argument("--text", help="folder with the corpus .txt files")
    ap.add_argument("--gpt2-small", help="also build a 124M model and reference here")
    ap.add_argument("--skip-models", action="store_true")
    ap.add_argument("--bundled", help="a model folder (the bundled model): write its reference "
                    "to OUT/mini/reference.safetensors")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    if not args.skip_models:
        for spec in FIXTURES:
            make_model_fixture(spec, args.out)
    if args.tokenizer and args.text:
        make_tokenizer_fixture(args.tokenizer, args.text, args.out)
    if args.gpt2_small:
        make_gpt2_small(args.gpt2_small)
    if args.bundled:
        make_bundled_reference(args.bundled, os.path.join(args.out, "mini"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
