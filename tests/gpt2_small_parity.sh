#!/usr/bin/env bash
# ctest -L gpu: a GPT-2-small-shaped (124M) random model built by transformers
# (tools/make_fixtures.py --gpt2-small, cached in the build folder: 500 MB),
# the CUDA backend in fp32 against transformers' float64 forward, plus the
# tf32 and bf16 errors printed for docs/precision.md.
#   usage: gpt2_small_parity.sh PARITY_CHECK_BINARY SOURCE_DIR MODEL_DIR
set -u
check=$1 src=$2 dir=$3
if ! python3 -c "import torch, transformers" 2>/dev/null; then
  echo "SKIP: python3 has no torch/transformers to build the model"; exit 77
fi
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "SKIP: no GPU"; exit 77
fi
if [ ! -f "$dir/reference.safetensors" ]; then
  python3 "$src/tools/make_fixtures.py" --skip-models --gpt2-small "$dir" || exit 1
fi
"$check" "$dir" cuda fp32 || exit 1
echo "tf32 and bf16, printed for docs/precision.md (the fp32 bounds in their PASS/FAIL do not apply):"
"$check" "$dir" cuda tf32
"$check" "$dir" cuda bf16
exit 0
