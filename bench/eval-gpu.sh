#!/usr/bin/env bash
# On the GPU machine: attnprobe eval (GPT-2-small shapes, the ten policies at
# budget 256, 8 samples x 1024 tokens) timed whole, in fp32 and bf16, beside
# the Hugging Face token-by-token loop with a capped DynamicCache
# (bench/eval_torch.py) on the same random weights and samples, in one launch.
#   usage: bench/eval-gpu.sh BUILD_DIR TEXT
set -uo pipefail
build=$1 text=$2
here=$(dirname "$0")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 "$here/hf_random_gpt2.py" "$work/model" || exit 1
tok="$here/../tests/fixtures/gpt2-tokenizer"
common=(--model "$work/model" --tokenizer "$tok" --input "$text" --samples 8 --max-length 1024)
"$build/attnprobe" trace "${common[@]}" --layers 0 --quiet --save "$work/ids.safetensors" || exit 1
for p in fp32 bf16; do
  t0=$(date +%s.%N)
  "$build/attnprobe" eval "${common[@]}" --device cuda --precision $p --budget 256 --quiet --out "$work/eval-$p" || exit 1
  python3 - "$work/eval-$p/summary.json" "$t0" "$(date +%s.%N)" "$p" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
wall = float(sys.argv[3]) - float(sys.argv[2])
streams = len(s["runs"])
replay = s["runs"][0]["timing"]["replay_s"]
print(f"attnprobe eval {sys.argv[4]}: {streams} streams a sample, {s['input']['tokens']} tokens a stream; "
      f"wall {wall:.2f} s, study_s {s['study_s']:.2f}, decode {replay:.2f} s = "
      f"{streams * s['input']['tokens'] / replay:.0f} policy-tokens/s; "
      f"full perplexity {s['runs'][0]['perplexity']['value']:.4f}")
PY
  PYTHONUNBUFFERED=1 python3 "$here/eval_torch.py" --model "$work/model" --ids "$work/ids.safetensors" \
    --summary "$work/eval-$p/summary.json" --dtype $p 2>&1 | grep -v -i warn
done
