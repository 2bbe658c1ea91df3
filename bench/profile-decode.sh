#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu-check.sh has built build-gpu: one
# decode step of the cascade benchmark under Nsight Compute (real clocks, no
# cache flushes), its kernels summed by name, then the policy launches that
# follow it. Used for the breakdown in bench/RESULTS.md. SKIP launches are
# passed over first: ~200 a step, so the default 60000 lands near step 300 of
# 512, where every list holds the budget's 256 positions.
#   usage: bench/profile-decode.sh [BUILD_DIR] [OUT] [fp32|bf16] [SKIP]
set -uo pipefail
build=${1:-build-gpu} out=${2:-${OUT:-.}} prec=${3:-fp32} skip=${4:-60000}
ncu=${NCU:-/usr/local/cuda/bin/ncu}
"$ncu" --cache-control none --clock-control none --launch-skip "$skip" --launch-count 700 \
  --metrics gpu__time_duration.sum --csv "$build/bench/bench_gpu" --trace-samples 0 --cascade-T 512 \
  --precision "$prec" > "$out/ncu_decode_$prec.csv" 2> "$out/ncu_decode_$prec.err" \
  || { tail -5 "$out/ncu_decode_$prec.err"; exit 1; }
PYTHONPATH="$(dirname "$0")" python3 - "$out/ncu_decode_$prec.csv" <<'PY'
import collections, sys
from ncu_kernels import kernels
seq = kernels(sys.argv[1])
is_policy = lambda k: "observe_kernel" in k[0]
first = next(i for i, k in enumerate(seq) if is_policy(k))
while first < len(seq) and is_policy(seq[first]): first += 1   # a decode step starts after a policy group
end = first
while end < len(seq) and not is_policy(seq[end]): end += 1
by_name = collections.OrderedDict()
for name, grid, ns in seq[first:end]:
    e = by_name.setdefault((name, grid), [0, 0.0]); e[0] += 1; e[1] += ns
for (name, grid), (n, ns) in sorted(by_name.items(), key=lambda x: -x[1][1]):
    print(f"{n:4d} x {ns / n / 1e3:7.1f} us = {ns / 1e3:8.1f} us  {grid} {name}")
print(f"decode step: {end - first} kernels, {sum(k[2] for k in seq[first:end]) / 1e3:.1f} us")
# `full` streams are not decoded (their rows are the reference's): no launch
names = ["window", "sink", "random", "h2o", "tova", "cms", "count_sketch", "race", "race_kde"]
policy, i = 0, 0
while end < len(seq) and is_policy(seq[end]):
    print(f"  policy launch {names[i] if i < len(names) else i}: {seq[end][2] / 1e3:.1f} us, grid {seq[end][1]}")
    policy += seq[end][2]; end += 1; i += 1
print(f"policy launches that follow: {policy / 1e3:.1f} us in all (they run side by side)")
PY
