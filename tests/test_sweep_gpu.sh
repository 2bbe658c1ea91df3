#!/usr/bin/env bash
# test_sweep_gpu.sh (label gpu) — sweeps and batch cells on the CUDA
# backend: every run of a sweep replayed on the device equals the single run
# with those values, bit for bit, isolated (the device replay) and cascade.
# Skipped (exit 77) without a CUDA device.
#   usage: test_sweep_gpu.sh ATTNPROBE FIXTURES
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh"
if ! "$bin" --device cuda --samples 1 --max-length 128 --warmup 16 --types window --quiet --format json --out probe 2>/dev/null; then
  echo "skipped: no CUDA device or no CUDA backend"
  exit 77
fi
common=(--device cuda --samples 3 --max-length 256 --layers 3,6 --bootstrap 200)
for mode in isolated cascade; do
  expect_exit 0 "$mode sweep on cuda" "$bin" "${common[@]}" --mode $mode --types h2o,cms,race --budget 32,64 --width 64,512 --quiet --out sweep-$mode
  for one in "h2o 64 512" "cms 32 64" "race 64 512"; do
    set -- $one
    expect_exit 0 "$mode single run $1 budget $2 width $3" "$bin" "${common[@]}" --mode $mode --types $1 --budget $2 --width $3 --quiet --out one
    python3 - sweep-$mode/summary.json one/summary.json "$1" "$2" "$3" <<'PY' && ok "$mode: $1 budget $2 width $3 in the sweep = alone" || bad "$mode: $1 $2 $3 differs"
import json, sys
sweep, one = (json.load(open(p)) for p in sys.argv[1:3])
policy, budget, width = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
for r in one["runs"]:
    twin = [x for x in sweep["runs"] if x["policy"] == policy and x["layer"] == r["layer"] and x["params"] == r["params"]]
    assert len(twin) == 1, (policy, r["params"])
    assert twin[0]["metrics"] == r["metrics"] and twin[0]["per_head"] == r["per_head"]
PY
  done
done
finish
