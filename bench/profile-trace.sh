#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu-check.sh has built build-gpu: one
# GPT-2-small trace of 1024-token samples (every layer's attention on the
# device) under Nsight Compute (real clocks, no cache flushes), its kernels
# summed by name: one sample, or a batched prefill of BATCH samples.
# Used for the trace breakdowns in bench/RESULTS.md.
#   usage: bench/profile-trace.sh [BUILD_DIR] [OUT] [PRECISION] [BATCH]
set -uo pipefail
build=${1:-build-gpu} out=${2:-${OUT:-.}} prec=${3:-bf16} batch=${4:-1}
mode=(--trace-samples 1)
[ "$batch" -gt 1 ] && mode=(--trace-samples "$batch" --batched-only 1)
ncu=${NCU:-/usr/local/cuda/bin/ncu}
# the first prefill is the warm-up (recording the graph); the second is measured
"$ncu" --cache-control none --clock-control none --launch-count 600 --metrics gpu__time_duration.sum --csv \
  "$build/bench/bench_gpu" "${mode[@]}" --precision "$prec" --cascade-samples 0 \
  > "$out/ncu_trace_$prec.csv" 2> "$out/ncu_trace_$prec.err" || { tail -5 "$out/ncu_trace_$prec.err"; exit 1; }
PYTHONPATH="$(dirname "$0")" python3 - "$out/ncu_trace_$prec.csv" "$prec" "$batch" <<'PY'
import collections, sys
from ncu_kernels import kernels
seq = [(name, ns) for name, grid, ns in kernels(sys.argv[1], 70)]
# a prefill starts with the embedding; take the second one
starts = [i for i, k in enumerate(seq) if k[0].startswith("embed_kernel")]
first, end = starts[1], starts[2] if len(starts) > 2 else len(seq)
by_name = collections.OrderedDict()
for name, ns in seq[first:end]:
    e = by_name.setdefault(name, [0, 0.0]); e[0] += 1; e[1] += ns
for name, (n, ns) in sorted(by_name.items(), key=lambda x: -x[1][1]):
    print(f"{n:4d} x {ns / n / 1e3:7.1f} us = {ns / 1e3:8.1f} us  {name}")
total = sum(k[1] for k in seq[first:end]) / 1e3
print(f"{sys.argv[2]} trace of {sys.argv[3]} 1024-token sample(s) in one prefill: {end - first} kernels, "
      f"{total:.1f} us ({total / int(sys.argv[3]):.1f} us a sample)")
PY
