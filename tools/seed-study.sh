#!/usr/bin/env bash
# The seed study's configuration (attnprobe --preset seed) on the bundled
# model, summarised as the Markdown table of docs/seed-study.md: per policy
# and cache size, the mean over layers of KL and cosine in the seed's
# slot-index alignment and in position alignment, and the whole model's KV
# cache in fp16.
#   usage: tools/seed-study.sh ATTNPROBE [more attnprobe options...]
set -euo pipefail
bin=$1; shift
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$bin" run --preset seed --quiet --out "$out" "$@"
python3 - "$out/summary.json" <<'PY'
import json, sys
from collections import defaultdict
s = json.load(open(sys.argv[1]))
rows = defaultdict(list)
for r in s["runs"]:
    rows[(r["policy"], r["params"]["budget"])].append(r)
print(f"model {s['model']['source']}, {s['input']['samples']} samples x {s['input']['tokens'] // s['input']['samples']} tokens, "
      f"mode {s['config']['mode']}, heads {s['config'].get('heads', 'all')}")
print("| policy | cache | index KL | index cosine | KL (position) | cosine (position) | KV fp16, model |")
print("|---|---:|---:|---:|---:|---:|---:|")
for (policy, budget), runs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    mean = lambda m: sum(r["metrics"][m]["mean"] for r in runs) / len(runs)
    mem = runs[0]["memory"]["kv_bytes_model_fp16"] / 2**20
    print(f"| {policy} | {budget} | {mean('index_kl'):.2f} | {mean('index_cosine'):.3f} | "
          f"{mean('kl'):.3f} | {mean('cosine'):.3f} | {mem:.3f} MiB |")
PY
