#!/usr/bin/env bash
# Downloads OpenAI's GPT-2 small (124M) from Hugging Face (openai-community/gpt2)
# into models/gpt2 and checks every file against its sha256, so that
#   attnprobe ... --model models/gpt2
# runs on the real weights. Needs network access to huggingface.co.
set -euo pipefail
dest=${1:-$(dirname "$0")/../models/gpt2}
base=https://huggingface.co/openai-community/gpt2/resolve/607a30d783dfa663caf39e06633721c8d4cfcd7e
# sha256 of the files at that revision (vocab.json and merges.txt are the same
# files as GPT-2's encoder.json and vocab.bpe)
declare -A sums=(
  [config.json]=0daed7749b4f02b8f76240d5444551d7b08712dab4d0adb8239c56ba823bb7b4
  [model.safetensors]=248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707
  [vocab.json]=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
  [merges.txt]=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5
)
mkdir -p "$dest"
for f in "${!sums[@]}"; do
  if [ ! -f "$dest/$f" ]; then
    echo "downloading $f" >&2
    curl -fL --retry 3 -o "$dest/$f.part" "$base/$f" && mv "$dest/$f.part" "$dest/$f"
  fi
  got=$(sha256sum "$dest/$f" | cut -d' ' -f1)
  if [ "$got" != "${sums[$f]}" ]; then
    echo "download-gpt2: $dest/$f: sha256 $got does not match ${sums[$f]}" >&2
    exit 3
  fi
done
echo "GPT-2 small is in $dest" >&2
