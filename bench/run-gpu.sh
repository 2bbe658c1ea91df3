#!/usr/bin/env bash
# On the GPU machine (called by scripts/gpu-check.sh --bench): attnprobe's GPU
# benchmark and the Hugging Face reference, one after the other, logs in OUT.
#   usage: bench/run-gpu.sh BUILD_DIR OUT
set -uo pipefail
build=$1 out=$2
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$build/bench/bench_gpu" 2>&1 | tee "$out/bench_gpu.txt"
PYTHONUNBUFFERED=1 python3 "$(dirname "$0")/hf_reference.py" 2>&1 | grep -v -i warn | tee "$out/hf_reference.txt"
