#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu-check.sh has built build-gpu: the
# parts of a 32-sample study that bench/profile-study.sh does not split.
# (0) each first CUDA and cuBLAS call (bench/first-call.cu, four ways);
# (1) device memory before any kernel (bench/device-alloc.cu); (2) the
# phases in fp32 and bf16; (3) every kernel of a 4-sample study with its
# summed GPU time (Nsight Compute, one metric); (4) where RACE's replay
# kernel stalls (warp states and source counters of its first launch).
#   usage: bench/diagnose-study.sh BUILD_DIR TEXT [OUT]
set -uo pipefail
build=$1 text=$2 out=${3:-${OUT:-.}}
here=$(dirname "$0")
ncu=${NCU:-/usr/local/cuda/bin/ncu}
nvcc -O2 -o "$out/first-call" "$here/first-call.cu" -lcublas -lcublasLt -lpthread &&
  for mode in plain thread warm bigmem; do echo "first calls, $mode:"; "$out/first-call" $mode; done
nvcc -O2 -o "$out/device-alloc" "$here/device-alloc.cu" && "$out/device-alloc" 32 755
common=(--model random:gpt2-small --tokenizer "$here/../tests/fixtures/gpt2-tokenizer" --input "$text"
        --max-length 1024 --layers all --device cuda --quiet)
for prec in fp32 bf16; do
  echo "phases, $prec, 32 samples:"
  ATTNPROBE_PHASES=1 "$build/attnprobe" run "${common[@]}" --precision $prec --samples 32 --out "$(mktemp -d)" 2>&1 |
    grep '^phase'
done
"$ncu" --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel \
  "$build/attnprobe" run "${common[@]}" --samples 4 --out "$(mktemp -d)" > "$out/ncu_kernels.txt" 2>&1
echo "kernels of a 4-sample study: $out/ncu_kernels.txt"
"$ncu" --clock-control none -k regex:replay_kernel --launch-skip 7 --launch-count 1 --section WarpStateStats \
  --section SourceCounters --section MemoryWorkloadAnalysis \
  "$build/attnprobe" run "${common[@]}" --samples 32 --out "$(mktemp -d)" > "$out/ncu_race.txt" 2>&1
grep -A40 "Warp State\|Source Counters" "$out/ncu_race.txt" | head -120
