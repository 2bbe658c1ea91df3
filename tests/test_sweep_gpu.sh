#!/usr/bin/env bash
# test_sweep_gpu.sh (label gpu) — sweeps and batch cells on the CUDA
# backend: every run of a sweep replayed on the device equals the single run
# with those values, bit for bit in isolated mode (the device replay). In
# cascade mode the sweep decodes more streams a step than the single run,
# and cuBLAS picks its kernels by the matrices' shapes, so the numbers agree
# only as float rounding lets them: the test prints the largest relative
# difference of a metric mean and bounds it (docs/batch.md).
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
    python3 - sweep-$mode/summary.json one/summary.json "$mode" "$1" <<'PY' && ok "$mode: $1 budget $2 width $3 in the sweep = alone" || bad "$mode: $1 $2 $3 differs"
import json, sys
sweep, one = (json.load(open(p)) for p in sys.argv[1:3])
mode, policy = sys.argv[3], sys.argv[4]
worst = 0.0
for r in one["runs"]:
    twin = [x for x in sweep["runs"] if x["policy"] == policy and x["layer"] == r["layer"] and x["params"] == r["params"]]
    assert len(twin) == 1, (policy, r["params"])
    if mode == "isolated":
        assert twin[0]["metrics"] == r["metrics"] and twin[0]["per_head"] == r["per_head"]
        continue
    for m, st in r["metrics"].items():
        a, b = st["mean"], twin[0]["metrics"][m]["mean"]
        assert st["n"] == twin[0]["metrics"][m]["n"]
        if a is not None and b is not None:
            worst = max(worst, abs(a - b) / max(abs(a), abs(b), 1e-3))
if mode == "cascade":
    print(f"cascade {policy}: largest relative difference of a metric mean {worst:.2e}")
    assert worst <= 0.05, worst
PY
  done
done
# eval on the CUDA backend: full's perplexity against the CPU's (fp32 within 1e-5)
evc=(eval --samples 3 --max-length 200 --types full,sink,h2o --budget 64 --quiet)
expect_exit 0 "eval on cuda" "$bin" "${evc[@]}" --device cuda --out ev-cuda
expect_exit 0 "eval on cpu" "$bin" "${evc[@]}" --out ev-cpu
python3 - ev-cuda/summary.json ev-cpu/summary.json <<'PY' && ok "eval: CUDA = CPU (full within 1e-5; next_kl 0, top-1 1)" || bad "eval on CUDA"
import json, sys
g, c = (json.load(open(p)) for p in sys.argv[1:3])
for rg, rc in zip(g["runs"], c["runs"]):
    a, b = rg["perplexity"]["value"], rc["perplexity"]["value"]
    print(f"{rg['policy']}: perplexity cuda {a:.6f} cpu {b:.6f}")
    if rg["policy"] == "full":
        assert abs(a - b) <= 1e-5 * b
        assert rg["metrics"]["next_kl"]["max"] == 0 and rg["metrics"]["next_top1"]["min"] == 1
PY
finish
