#!/usr/bin/env bash
# On the GPU machine (called by scripts/gpu-check.sh --bench): attnprobe's GPU
# benchmark and the Hugging Face reference one after the other in one call,
# logs in OUT, then the ratios.
#   usage: bench/run-gpu.sh BUILD_DIR OUT
set -uo pipefail
build=$1 out=$2
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$build/bench/bench_gpu" 2>&1 | tee "$out/bench_gpu.txt"
PYTHONUNBUFFERED=1 python3 "$(dirname "$0")/hf_reference.py" 2>&1 | grep -v -i warn | tee "$out/hf_reference.txt"
hf_prefill=$(sed -n 's/^(a) transformers.*: \([0-9]*\) tokens\/s.*/\1/p' "$out/hf_reference.txt")
hf_loop=$(sed -n 's/^(b) transformers.*: \([0-9.]*\) tokens\/s.*/\1/p' "$out/hf_reference.txt")
echo "ratios against transformers (same GPU):"
for p in fp32 tf32 bf16; do
  for mode in "attention on device" "batched, on device"; do
    ours=$(sed -n "s/^  $p $mode *\([0-9]*\) tokens\/s.*/\1/p" "$out/bench_gpu.txt")
    [ -n "$ours" ] && [ -n "$hf_prefill" ] && awk -v a="$ours" -v b="$hf_prefill" -v p="$p" -v m="$mode" \
      'BEGIN { printf "  trace %s (%s): %.2fx transformers fp16 prefill with output_attentions\n", p, m, a / b }'
  done
done
for p in fp32 bf16; do
  cascade=$(sed -n "s/^(b) cascade.*, $p, .*, \([0-9]*\) policy-tokens\/s.*/\1/p" "$out/bench_gpu.txt" | head -1)
  [ -n "$cascade" ] && [ -n "$hf_loop" ] && awk -v a="$cascade" -v b="$hf_loop" -v p="$p" \
    'BEGIN { printf "  cascade %s: %.1fx the token-by-token two-model loop\n", p, a / b }'
done
