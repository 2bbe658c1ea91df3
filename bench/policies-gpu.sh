#!/usr/bin/env bash
# policies-gpu.sh — what the policies beyond the ten baselines cost in the
# whole command on a GPU: the isolated study of GPT-2-small shapes (all 12
# layers, 1024 tokens) with the ten baselines, with knorm and snapkv added
# (both run on the device), with those two alone, and quest (selection per
# query: the host replays it). Wall and peak RSS from GNU time; study_s,
# trace_s and each run's replay_s from the summaries.
#   usage: bash bench/policies-gpu.sh BUILD_DIR TEXT [OUT]
set -euo pipefail
build=$1 text=$2 out=${3:-${OUT:-bench-out}}
mkdir -p "$out"
run="$build/attnprobe run --model random:gpt2-small --tokenizer tests/fixtures/gpt2-tokenizer --input $text
     --max-length 1024 --layers all --device cuda --quiet"
base=full,window,sink,random,h2o,tova,cms,count_sketch,race,race_kde
for cfg in "ten 32 $base" "twelve 32 $base,knorm,snapkv" "knorm_snapkv 32 full,knorm,snapkv" "quest 8 full,quest"; do
  set -- $cfg
  /usr/bin/time -f "$1 ($2 samples, --types $3): wall %e s, peak RSS %M KB" $run --samples "$2" --types "$3" \
    --out "$out/$1" 2>&1 | tail -1
  python3 - "$out/$1/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
replay = {r["policy"]: r["timing"]["replay_s"] for r in s["runs"] if r["layer"] == 0}
print("  study_s %.2f  trace_s %.2f  replay_s %s" % (s["study_s"], s["trace_s"],
      ", ".join("%s %.3f" % kv for kv in replay.items())))
PY
done
