#!/usr/bin/env bash
# On the GPU machine: attnprobe's study beside a PyTorch script that does the
# same (bench/torch_study.py), in one launch, on the same random GPT-2-small
# weights (saved as a Hugging Face folder) and the same 32 samples of 1024
# tokens: five policies (window, sink, random, h2o, tova), all 12 layers.
#   usage: bench/study-torch.sh BUILD_DIR TEXT [SAMPLES]
set -uo pipefail
build=$1 text=$2 n=${3:-32}
here=$(dirname "$0")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 "$here/hf_random_gpt2.py" "$work/model" || exit 1
tok="$here/../tests/fixtures/gpt2-tokenizer"
common=(--model "$work/model" --tokenizer "$tok" --input "$text" --samples "$n" --max-length 1024)
"$build/attnprobe" trace "${common[@]}" --layers 0 --quiet --save "$work/ids.safetensors" || exit 1
for p in fp32 bf16; do
  echo "attnprobe $p: $(bash "$here/study.sh" "$build/attnprobe" "${common[@]}" --layers all --device cuda \
    --precision $p --types window,sink,random,h2o,tova)"
  "$build/attnprobe" run "${common[@]}" --layers all --device cuda --precision $p \
    --types window,sink,random,h2o,tova --quiet --out "$work/ours-$p" || exit 1
done
PYTHONUNBUFFERED=1 python3 "$here/torch_study.py" --model "$work/model" --ids "$work/ids.safetensors" \
  --summary "$work/ours-fp32/summary.json" --dtype fp32 2>&1 | grep -v -i warn
PYTHONUNBUFFERED=1 python3 "$here/torch_study.py" --model "$work/model" --ids "$work/ids.safetensors" \
  --dtype fp16 2>&1 | grep -v -i warn
