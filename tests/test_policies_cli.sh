#!/usr/bin/env bash
# test_policies_cli.sh — the policy registry as users meet it: every
# registered policy in run --help (with its parameters' flags), in --types
# all's summary, in a batch grid's keys and in the benchmark; the new
# policies' flags sweep; allocation and quantisation recorded in the
# summary and the CSV; what a mode cannot run refused before any work.
#   usage: test_policies_cli.sh ATTNPROBE FIXTURES BENCH_POLICIES
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh"
bench=$3

expect_exit 0 "run --help" "$bin" run --help
cp out.txt help.txt
expect_exit 0 "--types all" "$bin" --quiet --types all --samples 2 --max-length 160 --out all
expect_exit 0 "bench_policies over the registry" "$bench" 2 8
cp out.txt bench.txt
python3 - <<'PY' && ok "every registered policy in --help, the summary and the bench" || bad "registry coverage"
import json, re
s = json.load(open("all/summary.json"))
names = s["config"]["types"]
assert len(names) >= 13 and len(set(names)) == len(names), names
for new in ("knorm", "snapkv", "quest"):
    assert new in names, new
help_text, bench = open("help.txt").read(), open("bench.txt").read()
policies = [line.split()[0] for line in bench.splitlines()[2:]]
for name in names:
    assert re.search(r"^  %s " % name, help_text, re.M), "help lacks " + name
    assert sum(r["policy"] == name for r in s["runs"]) == 1, name
    assert name in policies, "bench lacks " + name
    params = [r["params"] for r in s["runs"] if r["policy"] == name][0]
    for key in params:  # every parameter a run reports has its flag (or is a shared one)
        if key in ("granularity", "seed"):
            continue
        assert "--" + key.replace("_", "-") in help_text, key
PY

expect_exit 0 "snapkv and quest sweeps" "$bin" --quiet --types snapkv,quest --window 8,32 --kernel 3 --page 4,16 \
  --samples 2 --max-length 160 --out sweep
python3 - <<'PY' && ok "each value of each policy's own flag runs once" || bad "sweep of registry flags"
import json
runs = json.load(open("sweep/summary.json"))["runs"]
got = sorted((r["policy"], r["params"].get("window"), r["params"].get("page")) for r in runs)
assert got == [("quest", None, 4), ("quest", None, 16), ("snapkv", 8, None), ("snapkv", 32, None)], got
assert all(r["params"].get("kernel", 3) == 3 for r in runs)
PY

expect_exit 0 "pyramid in cascade" "$bin" --quiet --types h2o --allocate pyramid --beta 4 --mode cascade --layers all \
  --samples 2 --max-length 128 --out pyr
expect_exit 0 "int8 quantised cache" "$bin" --quiet --types full,h2o --quant int8 --samples 2 --max-length 160 --out q8
python3 - <<'PY' && ok "allocation and quantisation in the summary" || bad "allocation or quantisation recorded"
import json
p = json.load(open("pyr/summary.json"))
assert p["config"]["allocate"] == "pyramid" and p["config"]["beta"] == 4
assert all(r["params"]["pyramid_beta"] == 4 for r in p["runs"])
q = json.load(open("q8/summary.json"))
assert q["config"]["quant"] == "int8"
for r in q["runs"]:
    assert r["params"]["quant_bits"] == 8, r["params"]
    mem = r["memory"]
    assert 0 < mem["kv_bytes_per_layer_quantised"] < mem["kv_bytes_per_layer_fp16"], mem
full = [r for r in q["runs"] if r["policy"] == "full"][0]["metrics"]
assert 0 < full["l1"]["max"] < 1e-2, full["l1"]  # int8: rows within 1e-2 of the exact ones
PY

cat > grid.json <<'G'
{"studies": [{"name": "new", "types": ["knorm", "snapkv"], "window": [16, 32], "quant": "kivi4",
              "samples": 2, "max_length": 128}]}
G
expect_exit 0 "batch grid with registry keys" "$bin" batch grid.json --out batch --quiet
python3 - <<'PY' && ok "grid keys and CSV columns from the registry" || bad "batch with registry keys"
import csv
rows = list(csv.DictReader(open("batch/results.csv")))
assert {"window", "kernel", "page", "quant_bits", "group_size", "residual"} <= set(rows[0]), rows[0].keys()
assert {(r["policy"], r["window"]) for r in rows} == {("knorm", ""), ("snapkv", "16"), ("snapkv", "32")}
assert {r["quant_bits"] for r in rows} == {"4"}
PY

expect_exit 2 "quest in cascade: refused" "$bin" --types quest --mode cascade --samples 2 --max-length 64
grep -q "isolated" err.txt && ok "says which mode it needs" || bad "quest cascade message: $(cat err.txt)"
expect_exit 2 "--quant in eval: refused" "$bin" eval --quant kivi2 --samples 2 --max-length 64
expect_exit 2 "--quant unknown" "$bin" --quant fp4
grep -q "kivi2, kivi4, int8" err.txt && ok "lists the accepted schemes" || bad "quant message: $(cat err.txt)"
expect_exit 2 "snapkv even kernel" "$bin" --types snapkv --kernel 4 --samples 2 --max-length 64
expect_exit 2 "--page out of range" "$bin" --types quest --page 0
grep -q "1..4096" err.txt && ok "names the range" || bad "page message: $(cat err.txt)"
expect_exit 2 "adakv at layer granularity" "$bin" --types h2o --allocate adakv --granularity layer
expect_exit 2 "--allocate unknown" "$bin" --allocate even

finish
