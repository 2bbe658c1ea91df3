#!/usr/bin/env bash
# test_batch.sh — attnprobe batch: a grid's cells, the CSV against the JSON,
# a cell of a sweep against a single run, resuming after SIGTERM, --force,
# and bad grid files.
#   usage: test_batch.sh ATTNPROBE FIXTURES
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh"

cat > grid.json <<'EOF'
{
  "defaults": {"samples": 3, "max_length": 256, "layers": [3, 6], "bootstrap": 200},
  "studies": [
    {"name": "budgets", "types": ["window", "h2o", "cms"], "budget": [32, 64]},
    {"name": "lengths", "types": "h2o,tova", "max_length": [200, 256], "budget": 48}
  ]
}
EOF
expect_exit 0 "batch of 3 cells" "$bin" batch grid.json --out full --quiet
[ "$(ls full/cells | wc -l)" = 3 ] && ok "three cell files" || bad "cells: $(ls full/cells)"

python3 - full <<'PY' && ok "batch.json and results.csv agree, every row parses" || bad "batch files wrong"
import csv, json, math, sys
d = sys.argv[1]
b = json.load(open(f"{d}/batch.json"))
assert b["schema"] == "attnprobe.batch/1" and len(b["cells"]) == 3
assert b["grid"]["studies"][0]["name"] == "budgets"
rows = list(csv.DictReader(open(f"{d}/results.csv")))
n_metrics = len(b["cells"][0]["summary"]["runs"][0]["metrics"])
assert len(rows) == sum(len(c["summary"]["runs"]) for c in b["cells"]) * n_metrics, len(rows)
cells = {c["id"]: c for c in b["cells"]}
for row in rows:
    s = cells[row["cell"]]["summary"]
    runs = [r for r in s["runs"] if r["policy"] == row["policy"] and r["layer"] == int(row["layer"])
            and str(r["params"].get("budget", "")) == row["budget"]]
    assert len(runs) == 1, row
    m = runs[0]["metrics"][row["metric"]]
    for col, key in [("mean", "mean"), ("sd", "sd"), ("ci_low", "ci95"), ("median", "median"), ("max", "max")]:
        want = m[key][0] if key == "ci95" else m[key]
        got = float(row[col]) if row[col] else None
        assert (want is None and got is None) or got == want, (row, col, got, want)
    assert row["mode"] == s["config"]["mode"] and int(row["samples"]) == s["input"]["samples"]
PY

# a cell of the sweep is the run with those values, to the last bit
expect_exit 0 "single run: h2o, budget 32" "$bin" --samples 3 --max-length 256 --layers 3,6 --bootstrap 200 --types h2o --budget 32 --quiet --out single
python3 - full/batch.json single/summary.json <<'PY' && ok "sweep cell = separate run (bit-identical metrics)" || bad "sweep cell differs from a run"
import json, sys
b = json.load(open(sys.argv[1]))
single = json.load(open(sys.argv[2]))
cell = next(c for c in b["cells"] if c["study"] == "budgets")["summary"]
for r in single["runs"]:
    twin = [x for x in cell["runs"] if x["policy"] == "h2o" and x["layer"] == r["layer"] and x["params"]["budget"] == 32]
    assert len(twin) == 1 and twin[0]["metrics"] == r["metrics"], r["layer"]
    assert twin[0]["per_head"] == r["per_head"]
PY

# resume: SIGTERM in the middle, then the rerun finishes with the same numbers
cat > slow.json <<'EOF'
{"defaults": {"samples": 3, "max_length": 256, "bootstrap": 200, "types": "h2o,cms", "layers": "all"},
 "studies": [{"name": "a", "budget": [24, 32]}, {"name": "b", "budget": 48},
             {"name": "c", "budget": 64}, {"name": "d", "budget": 80}]}
EOF
expect_exit 0 "uninterrupted batch" "$bin" batch slow.json --out whole --quiet
"$bin" batch slow.json --out cut --quiet > /dev/null 2>&1 &
pid=$!
for _ in $(seq 1 600); do [ "$(ls cut/cells 2>/dev/null | grep -c 'json$')" -ge 1 ] && break; sleep 0.05; done
kill -TERM $pid 2>/dev/null
wait $pid
code=$?
n_cut=$(ls cut/cells | grep -c 'json$')
[ "$code" = 143 ] && [ "$n_cut" -lt 4 ] && ok "SIGTERM stops the batch after $n_cut cell(s) (exit $code)" \
  || bad "SIGTERM: exit $code with $n_cut cells"
ls cut/cells | grep -q tmp && bad "a temporary file was left" || ok "no partial cell file"
[ -e cut/batch.json ] && bad "batch.json written by an interrupted batch" || ok "no batch.json yet"
expect_exit 0 "rerun continues" "$bin" batch slow.json --out cut
grep -c "already written, skipped" err.txt | grep -q "^$n_cut$" && ok "the $n_cut finished cell(s) skipped" \
  || bad "skips: $(grep -c skipped err.txt), want $n_cut"
python3 - whole/batch.json cut/batch.json <<'PY' && ok "resumed batch = uninterrupted batch" || bad "resumed batch differs"
import json, sys
def strip(b):
    for c in b["cells"]:
        s = c["summary"]
        for k in ("provenance", "study_s", "trace_s", "statistics_s"):
            s.pop(k, None)
        for r in s["runs"]:
            r.pop("timing", None)
    return b
a, b = (strip(json.load(open(p))) for p in sys.argv[1:])
assert a == b
PY

touch -d '2000-01-01' whole/cells/*.json
expect_exit 0 "--force reruns" "$bin" batch slow.json --out whole --force --quiet
[ -z "$(find whole/cells -name '*.json' ! -newermt '2001-01-01')" ] && ok "--force rewrote every cell" || bad "--force left cells"

# bad grids: exit 3 naming the key and what is accepted
echo '{"studies": [{"budgett": 3}]}' > bad1.json
expect_exit 3 "unknown key" "$bin" batch bad1.json --out bad
grep -q 'unknown key "budgett" (accepted: name, model' err.txt && ok "names the key and the accepted keys" || bad "$(cat err.txt)"
echo '{"studies": [{"mode": ["isolated", "sideways"]}]}' > bad2.json
expect_exit 3 "bad value in an axis" "$bin" batch bad2.json --out bad
grep -q "mode sideways: accepted: isolated cascade" err.txt && ok "names the value and the accepted ones" || bad "$(cat err.txt)"
echo '{"studies": [' > bad3.json
expect_exit 3 "not JSON" "$bin" batch bad3.json --out bad
echo '{"studies": [{"name": "x"}, {"name": "x"}]}' > bad4.json
expect_exit 3 "the same cell twice" "$bin" batch bad4.json --out bad
echo '{"studies": [{"plain_update": "yes"}]}' > bad5.json
expect_exit 3 "a flag's value not a boolean" "$bin" batch bad5.json --out bad
expect_exit 3 "missing grid file" "$bin" batch nothing.json --out bad
echo '{"studies": [{"warmup": [0], "warmup": [1]}]}' > bad6.json
expect_exit 3 "a key given twice" "$bin" batch bad6.json --out bad
grep -q 'the key "warmup" is given twice' err.txt && ok "names the repeated key" || bad "$(cat err.txt)"
python3 -c 'import json; print(json.dumps({"studies": [{"samples": list(range(1, 201)), "warmup": list(range(0, 51))}]}))' > bad7.json
expect_exit 3 "more than 10,000 cells" "$bin" batch bad7.json --out bad
echo '{"studies": [{"name": "a", "budget": 32}, {"name": "b", "input": ["sample-missing.txt"]}]}' > bad9.json
expect_exit 3 "a missing input file, found before any cell runs" "$bin" batch bad9.json --out bad9 --quiet
grep -q "cell b-.*--input sample-missing.txt: cannot read" err.txt && [ ! -e bad9/cells/*.json ] \
  && ok "names the cell and the file; no cell ran" || bad "$(cat err.txt); $(ls bad9/cells 2>&1)"
echo '{"studies": [{"name": "l", "layers": "99"}]}' > bad8.json
expect_exit 3 "a layer the model lacks (found when the cell runs)" "$bin" batch bad8.json --out bad8 --quiet
grep -q "batch cell l-" err.txt && ok "names the cell" || bad "$(cat err.txt)"
[ -e bad ] && bad "a bad grid made the output folder" || ok "nothing written for bad grids"
echo '{"schema": "attnprobe.batch/1", "grid": {}, "cells": []}' > empty-batch.json
expect_exit 3 "report of an empty batch" "$bin" report empty-batch.json
expect_exit 2 "no grid given" "$bin" batch --out bad

finish
