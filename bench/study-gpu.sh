#!/usr/bin/env bash
# On the GPU machine: the whole `attnprobe run` as a user runs it, GPT-2-small
# shapes (random:gpt2-small, the real GPT-2 tokenizer), T = 1024, all 12
# layers, the 10 default policies; isolated (the replay on the device) at
# 32 and 256 samples, cascade at 8 samples. Wall time and peak RSS from GNU
# time (bench/study.sh), the model's load included.
#   usage: bench/study-gpu.sh BUILD_DIR TEXT [PRECISION] [SAMPLES...]
#   (CASCADE=0 leaves the cascade out)
set -uo pipefail
build=$1 text=$2 prec=${3:-fp32}
shift 3 2>/dev/null || shift $#
sizes=("${@:-32 256}")
[ $# -eq 0 ] && sizes=(32 256)
here=$(dirname "$0")
common=(--model random:gpt2-small --tokenizer "$here/../tests/fixtures/gpt2-tokenizer" --input "$text"
        --max-length 1024 --layers all --device cuda --precision "$prec")
for n in "${sizes[@]}"; do
  echo "isolated $prec, $n samples: $(bash "$here/study.sh" "$build/attnprobe" "${common[@]}" --samples $n)"
done
[ "${CASCADE:-1}" = 1 ] &&
  echo "cascade $prec, 8 samples: $(bash "$here/study.sh" "$build/attnprobe" "${common[@]}" --samples 8 --mode cascade)"
# the model's load alone (a study of one short sample on one layer and policy)
echo "load only: $(bash "$here/study.sh" "$build/attnprobe" --model random:gpt2-small \
  --tokenizer "$here/../tests/fixtures/gpt2-tokenizer" --input "$text" --max-length 128 --samples 1 \
  --layers 0 --types window --device cuda)"
