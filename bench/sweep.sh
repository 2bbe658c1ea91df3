#!/usr/bin/env bash
# A budget sweep in one run against the same runs one by one: the sweep
# traces once and replays every (policy, budget) on that trace.
#   usage: bench/sweep.sh ATTNPROBE [attnprobe run options...]
# Budgets 16,32,64,128,256 x the ten policies (full has no budget: it runs
# once in the sweep and once a budget in the separate runs). Prints the
# sweep's wall time, the separate runs' total and their ratio, and the
# target's test: the sweep's study_s against 1.5 x (one trace + the sum of
# the separate runs' replay and statistics, study_s - trace_s).
set -euo pipefail
bin=$1; shift
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
types=full,window,sink,random,h2o,tova,cms,count_sketch,race,race_kde
budgets=(16 32 64 128 256)
now() { date +%s.%N; }
t0=$(now)
"$bin" run --quiet --out "$out/sweep" --types "$types" --sink 4 --recent 8 --budget "$(IFS=,; echo "${budgets[*]}")" "$@"
t1=$(now)
n=0
for b in "${budgets[@]}"; do
  for p in ${types//,/ }; do
    "$bin" run --quiet --out "$out/one" --types "$p" --sink 4 --recent 8 --budget "$b" "$@"
    python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); print(s["study_s"], s["trace_s"])' \
      "$out/one/summary.json" >> "$out/separate.txt"
    n=$((n + 1))
  done
done
t2=$(now)
python3 - "$t0" "$t1" "$t2" "$n" "$out/sweep/summary.json" "$out/separate.txt" <<'PY'
import json, sys
t0, t1, t2 = map(float, sys.argv[1:4])
s = json.load(open(sys.argv[5]))
sep = [tuple(map(float, line.split())) for line in open(sys.argv[6])]
sweep, separate = t1 - t0, t2 - t1
trace = sum(t for _, t in sep) / len(sep)
replays = sum(st - t for st, t in sep)
print(f"sweep: {len(s['runs'])} runs in one command {sweep:.2f} s (study_s {s['study_s']:.2f}, trace_s {s['trace_s']:.2f}); "
      f"{sys.argv[4]} separate commands {separate:.2f} s; separate / sweep = {separate / sweep:.1f}x")
print(f"target: sweep study_s {s['study_s']:.2f} s against one trace {trace:.2f} s + the separate replays "
      f"{replays:.2f} s = {trace + replays:.2f} s: {s['study_s'] / (trace + replays):.2f}x (target <= 1.5x)")
PY
