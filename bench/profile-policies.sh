#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu-check.sh has built build-gpu: the
# policy launches of one decode step past the budget (step ~300 of the
# cascade benchmark at T = 512) under Nsight Compute's full set, real
# clocks. Used for the policy analysis in bench/RESULTS.md.
#   usage: bench/profile-policies.sh [BUILD_DIR] [OUT] [fp32|bf16]
set -uo pipefail
build=${1:-build-gpu} out=${2:-${OUT:-.}} prec=${3:-bf16}
ncu=${NCU:-/usr/local/cuda/bin/ncu}
# nine policy launches a step (`full` is not decoded)
"$ncu" --cache-control none --clock-control none -k regex:observe_kernel --launch-skip 2700 --launch-count 9 \
  --set full "$build/bench/bench_gpu" --trace-samples 0 --cascade-T 512 --precision "$prec" \
  > "$out/ncu_policies_$prec.txt" 2> "$out/ncu_policies_$prec.err" || { tail -5 "$out/ncu_policies_$prec.err"; exit 1; }
grep -E "observe_kernel|Duration|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Issue Slots Busy|Memory Throughput|L2 Hit|Stall" \
  "$out/ncu_policies_$prec.txt" | head -150
