#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu-check.sh has built build-gpu: where
# an isolated study's device replay goes. (1) the whole command with one
# policy at a time (`--types`), its replay_s; (2) Nsight Compute on the
# first batch's launches: the reference rows' top positions and each
# policy's replay kernel (all of its sets through all their steps), their
# durations, registers and occupancy; (3) the same for the rows' metrics.
#   usage: bench/profile-study.sh BUILD_DIR TEXT [OUT]
set -uo pipefail
build=$1 text=$2 out=${3:-${OUT:-.}}
here=$(dirname "$0")
ncu=${NCU:-/usr/local/cuda/bin/ncu}
common=(--model random:gpt2-small --tokenizer "$here/../tests/fixtures/gpt2-tokenizer" --input "$text"
        --max-length 1024 --layers all --device cuda --samples 32)
# (0) the phases of the whole study (ATTNPROBE_PHASES=1: engine, trace,
# the device replay's parts, statistics), the ten policies
ATTNPROBE_PHASES=1 "$build/attnprobe" run "${common[@]}" --quiet --out "$(mktemp -d)" 2>&1 | grep '^phase'
[ "${PER_POLICY:-1}" = 1 ] && for ty in full window h2o random cms count_sketch race race_kde window,sink,random,h2o,tova \
          full,window,sink,random,h2o,tova,cms,count_sketch,race,race_kde; do
  echo "types $ty: $(bash "$here/study.sh" "$build/attnprobe" "${common[@]}" --types "$ty")"
done
"$ncu" --cache-control none --clock-control none -k regex:"replay_kernel|topk_kernel" \
  --launch-count 11 --section SpeedOfLight --section LaunchStats --section Occupancy \
  "$build/attnprobe" run "${common[@]}" --quiet --out "$(mktemp -d)" > "$out/ncu_study.txt" 2>&1
grep -E "replay_kernel|topk_kernel|Duration|Registers Per|Achieved Occupancy" "$out/ncu_study.txt"
# (3) the rows' metrics kernel, its first eight launches (one a segment)
"$ncu" --cache-control none --clock-control none -k regex:"metrics_kernel" --launch-count 8 --section SpeedOfLight \
  --section LaunchStats --section Occupancy \
  "$build/attnprobe" run "${common[@]}" --quiet --out "$(mktemp -d)" > "$out/ncu_metrics.txt" 2>&1
grep -E "metrics_kernel|Duration|Registers Per|Achieved Occupancy" "$out/ncu_metrics.txt"
