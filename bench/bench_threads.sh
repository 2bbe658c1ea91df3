#!/usr/bin/env bash
# Wall time of `attnprobe replay` (isolated replays of all ten policies and
# their metrics) on one thread and on one thread per core (--threads), from a
# saved trace of the bundled model: 4 samples of 1024 tokens (its sample text
# six times over), layers 6 and 9; best of 3 each.
#   usage: bench/bench_threads.sh [BUILD_DIR]
set -euo pipefail
bin=${1:-build}/attnprobe
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
best() {
  local best_ms=
  for _ in 1 2 3; do
    local t0 t1
    t0=$(date +%s%N)
    "$bin" replay "$out/trace.safetensors" --quiet --out "$out/o" "$@"
    t1=$(date +%s%N)
    local ms=$(( (t1 - t0) / 1000000 ))
    if [ -z "$best_ms" ] || [ "$ms" -lt "$best_ms" ]; then best_ms=$ms; fi
  done
  echo "$best_ms"
}
sample=$(dirname "$0")/../models/attnprobe-mini/sample.txt
for _ in 1 2 3 4 5 6; do cat "$sample"; echo; done > "$out/input.txt"
"$bin" trace --input "$out/input.txt" --layers 6,9 --samples 4 --max-length 1024 --quiet \
  --save "$out/trace.safetensors"
echo "cores: $(nproc)"
# replays' own time: timing.replay_s summed over the runs of the last summary
replay_s() {
  python3 - "$out/o/summary.json" <<'PY' 2>/dev/null || echo "?"
import json, sys
print(f"{sum(r['timing']['replay_s'] for r in json.load(open(sys.argv[1]))['runs']):.2f} s")
PY
}
one=$(best --threads 1); one_replay=$(replay_s)
all=$(best --threads 0); all_replay=$(replay_s)
echo "replay, 10 policies x 2 layers, 4 x 1024 tokens: --threads 1: ${one} ms" \
     "(replays ${one_replay} of it summed), one per core: ${all} ms (replays ${all_replay} summed)"
