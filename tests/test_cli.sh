#!/usr/bin/env bash
# test_cli.sh — the attnprobe command end to end: the mission command prints
# the table and writes the JSON; report re-renders it; check passes a run
# against itself and exits 1 on a clearly worse one; trace --save + replay
# gives the same metrics as one run; --threads and --batch-size do not change
# the numbers. Bad input: test_bad_input.sh.
#   usage: test_cli.sh ATTNPROBE FIXTURES
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh"

expect_exit 0 "mission command" "$bin" --layer 6 --stride 16 --types cms,count_sketch,race
grep -q "count_sketch" out.txt && grep -q "kl" out.txt && ok "table printed" || bad "no table"
[ -s attnprobe-out/summary.json ] && grep -q 'attnprobe.summary/1' attnprobe-out/summary.json \
  && ok "summary.json written" || bad "no summary.json"
ls attnprobe-out | grep -q tmp && bad "temporary file left" || ok "no temporary file left"
expect_exit 0 "report" "$bin" report attnprobe-out/summary.json
grep -q "race" out.txt && ok "report shows the runs" || bad "report output"

expect_exit 0 "baseline run" "$bin" --quiet --types full,h2o,window --budget 64 --max-length 256 --out base
expect_exit 0 "check against itself" "$bin" check --baseline base/summary.json --current base/summary.json
expect_exit 0 "worse run (longer samples, same policies)" "$bin" --quiet --types full,h2o,window --budget 64 --max-length 512 --out worse
expect_exit 3 "check: summaries of other settings refused" "$bin" check --baseline base/summary.json --current worse/summary.json
grep -q "config.max_length" err.txt && ok "names the field that differs" || bad "error text: $(cat err.txt)"
expect_exit 1 "check finds the regression (--allow-mismatch)" "$bin" check --baseline base/summary.json --current worse/summary.json --allow-mismatch
grep -q REGRESSION out.txt && ok "regression listed" || bad "no REGRESSION line"
grep -q "note: config.max_length differs" out.txt && ok "the mismatch is noted" || bad "no mismatch note"
expect_exit 0 "check with loose tolerances" "$bin" check --allow-mismatch --baseline base/summary.json \
  --current worse/summary.json --tol kl=100,kl_rev=100,js=1,tv=1,l1=2,l2=1,mass_retained=1,topk_recall@1=1,topk_recall@8=1,topk_recall@32=1,out_err=100,peak_shift=1000,cosine=1,index_l1=1,index_rms=1,index_kl=100,index_cosine=1,topk_recall@10=1,attention_loss=1
expect_exit 3 "check: missing runs" "$bin" check --baseline base/summary.json --current attnprobe-out/summary.json
expect_exit 3 "check: unreadable file" "$bin" check --baseline nothing.json --current base/summary.json
echo '{"schema": "other"}' > other.json
expect_exit 3 "check: wrong schema" "$bin" check --baseline other.json --current base/summary.json
sed 's/"n_layer":[^,]*/"n_layer": 1e300/; s/"layer":[^,]*/"layer": -1e300/' base/summary.json > huge.json
expect_exit 3 "check: out-of-range numbers in a summary" "$bin" check --baseline huge.json --current base/summary.json
expect_exit 2 "check: bad tolerance" "$bin" check --baseline base/summary.json --current base/summary.json --tol kl=abc
expect_exit 2 "check: infinite tolerance" "$bin" check --baseline base/summary.json --current base/summary.json --tol kl=inf

expect_exit 0 "trace --save" "$bin" trace --save t.safetensors --layers 6,10 --quiet
expect_exit 0 "replay" "$bin" replay t.safetensors --types h2o,cms --quiet --out replayed
expect_exit 0 "run, same settings" "$bin" --layers 6,10 --types h2o,cms --quiet --out direct
# identical metrics: compare the runs sections (timings and sources differ)
strip() { sed -n '/"runs"/,$p' "$1" | grep -v -E '"(replay_s|tokens_per_s)"'; }
if [ -n "$(strip replayed/summary.json)" ] && diff <(strip replayed/summary.json) <(strip direct/summary.json) > /dev/null; then
  ok "replay of a saved trace = one run"
else
  bad "replay differs from run"
fi

# parallel isolated replays: the same numbers for any --threads
expect_exit 0 "--threads 1" "$bin" --layers 6,10 --types h2o,cms,race --threads 1 --quiet --out one
expect_exit 0 "--threads 3" "$bin" --layers 6,10 --types h2o,cms,race --threads 3 --quiet --out three
if [ -n "$(strip one/summary.json)" ] && diff <(strip one/summary.json) <(strip three/summary.json) > /dev/null; then
  ok "--threads 1 and 3 give identical metrics"
else
  bad "--threads changes the metrics"
fi
expect_exit 2 "bad --threads" "$bin" --threads -1 --quiet --out nothing
expect_exit 3 "replay of a non-trace" "$bin" replay "$fixtures/tiny/model.safetensors"
expect_exit 2 "unknown command" "$bin" frobnicate
expect_exit 0 "cascade mode" "$bin" --mode cascade --types full,h2o --max-length 96 --warmup 32 --quiet --out cascade
expect_exit 0 "layer granularity, index alignment" "$bin" --granularity layer --align index --types h2o,cms
grep -q "index_l1" out.txt && ok "index alignment shown" || bad "no index table"

# a replay's summary names the text and window length its trace was made from
expect_exit 0 "replay --layers all" "$bin" replay t.safetensors --layers all --types h2o,cms --quiet --out replayed_all
expect_exit 0 "check: a run against the replay of its own trace" "$bin" check --baseline direct/summary.json --current replayed/summary.json
expect_exit 0 "trace of another text" "$bin" trace --save other.safetensors --layers 6,10 --input "$(dirname "$bin")/models/attnprobe-mini/sample.txt" --samples 4 --quiet
expect_exit 0 "replay of it" "$bin" replay other.safetensors --types h2o,cms --quiet --out replayed_other
expect_exit 3 "check: replays of traces of other texts are refused" "$bin" check --baseline replayed/summary.json --current replayed_other/summary.json

# streaming: the same numbers whatever the batch size
expect_exit 0 "--batch-size 1" "$bin" --samples 3 --max-length 256 --layers 6,10 --types h2o,cms --batch-size 1 --quiet --out b1
expect_exit 0 "--batch-size 2" "$bin" --samples 3 --max-length 256 --layers 6,10 --types h2o,cms --batch-size 2 --quiet --out b2
if [ -n "$(strip b1/summary.json)" ] && diff <(strip b1/summary.json) <(strip b2/summary.json) > /dev/null; then
  ok "--batch-size 1 and 2 give identical summaries"
else
  bad "--batch-size changes the numbers"
fi
# noise-aware check: a consistent shift of every sample is a regression, the
# same mean shift buried in sample-to-sample noise is not (unless --tolerance-only)
expect_exit 0 "six-sample baseline" "$bin" --samples 6 --max-length 256 --types h2o --quiet --out six
python3 - six/summary.json <<'PY'
import json, sys
base = json.load(open(sys.argv[1]))
for name, noise in (("shifted", 0.0), ("noisy", 3.0)):
    s = json.loads(json.dumps(base))
    kl = s["runs"][0]["metrics"]["kl"]
    kl["per_sample"] = [v + 0.1 + noise * (1 if i % 2 else -1) for i, v in enumerate(kl["per_sample"])]
    kl["mean"] += 0.1
    json.dump(s, open(f"{name}.json", "w"))
PY
expect_exit 1 "check: a consistent shift is a regression" "$bin" check --baseline six/summary.json --current shifted.json
grep -q "tolerance and CI" out.txt && ok "says both rules fired" || bad "verdict: $(grep kl out.txt)"
expect_exit 0 "check: the same shift within noise passes" "$bin" check --baseline six/summary.json --current noisy.json
grep -q "within noise" out.txt && ok "says it is within noise" || bad "verdict: $(grep kl out.txt)"
expect_exit 1 "check --tolerance-only flags it" "$bin" check --baseline six/summary.json --current noisy.json --tolerance-only

# memory-matched sketches: counters within one bucket row (all heads) of h2o's scores
expect_exit 0 "--sketch-memory match" "$bin" --samples 2 --max-length 256 --types h2o,cms,count_sketch,race --sketch-memory match --quiet --out matched
python3 - matched/summary.json <<'PY' && ok "counters within one bucket row of h2o's" || bad "sketch memory not matched"
import json, sys
s = json.load(open(sys.argv[1]))
runs = {r["policy"]: r for r in s["runs"]}
h2o = runs["h2o"]["memory"]["counter_bytes_per_layer"]
heads = s["model"]["n_head"]
for name in ("cms", "count_sketch", "race"):
    r = runs[name]
    c = r["memory"]["counter_bytes_per_layer"]
    row = 4 * heads * (r["params"].get("width") or 2 ** r["params"]["race_bits"])
    assert c <= h2o and h2o - c < row, (name, c, h2o, row)
PY

# sweeps: every policy once per value that shapes it, on one trace
expect_exit 0 "--budget 32,64 --width 16,512" "$bin" --samples 2 --max-length 256 --types h2o,cms,window --budget 32,64 --width 16,512 --quiet --out sweep
python3 - sweep/summary.json <<'PY' && ok "sweep: h2o x2, cms x4 (budget x width), window x2" || bad "sweep runs wrong"
import json, sys
s = json.load(open(sys.argv[1]))
runs = [(r["policy"], r["params"].get("budget"), r["params"].get("width")) for r in s["runs"]]
assert sorted(runs, key=str) == sorted([("h2o", 32, None), ("h2o", 64, None), ("cms", 32, 16), ("cms", 32, 512),
                                         ("cms", 64, 16), ("cms", 64, 512), ("window", 32, None),
                                         ("window", 64, None)], key=str), runs
assert s["config"]["budget"] == [32, 64] and s["config"]["width"] == [16, 512]
PY

# seed variance of the randomised policies
expect_exit 0 "--seeds 1-3" "$bin" --samples 2 --max-length 256 --types h2o,cms,random --seeds 1-3 --quiet --out seeds
python3 - seeds/summary.json <<'PY' && ok "seed_spread: cms and random over 3 seeds" || bad "no seed spread"
import json, sys
s = json.load(open(sys.argv[1]))
groups = {g["policy"]: g for g in s["seed_spread"]}
assert sorted(groups) == ["cms", "random"] and all(g["seeds"] == [1, 2, 3] for g in groups.values())
assert groups["random"]["metrics"]["kl"]["sd"] > 0
assert len(s["runs"]) == 7
PY

# paired comparisons and per-sample means
expect_exit 0 "--compare-to and --log-samples" "$bin" --samples 3 --max-length 256 --types h2o,cms,window --compare-to h2o --log-samples --out paired
grep -q "paired over samples against h2o" out.txt && ok "comparisons in the table" || bad "no comparison lines"
grep -q '"compare"' paired/summary.json && ok "comparisons in the JSON" || bad "no compare object"
[ "$(wc -l < paired/samples.jsonl)" = 9 ] && ok "samples.jsonl: 3 samples x 3 runs" || bad "samples.jsonl has $(wc -l < paired/samples.jsonl) lines"

# --preset seed: the seed study's configuration; flags beside it override it
expect_exit 0 "--preset seed (isolated, short)" "$bin" --samples 2 --max-length 300 --mode isolated --preset seed --layers 6 --out seedp
python3 - seedp/summary.json <<'PY' && ok "preset values, overridden mode and layers" || bad "preset config wrong"
import json, sys
s = json.load(open(sys.argv[1]))
c = s["config"]
assert c["budget"] == [64, 128, 256] and c["recent"] == 64 and c["sink"] == 0, c
assert c["heads"] == [0, 1, 2, 3] and c["align"] == "index" and c["mode"] == "isolated" and c["layers"] == [6], c
assert sorted({r["policy"] for r in s["runs"]}) == ["cms", "count_sketch", "h2o", "window"]
w = {r["params"]["budget"]: r for r in s["runs"] if r["policy"] == "window"}
for r in s["runs"]:  # the whole cache of 64 is the protected window: every policy is window
    if r["params"]["budget"] == 64:
        assert r["metrics"]["kl"]["mean"] == w[64]["metrics"]["kl"]["mean"], r["policy"]
    assert 0 <= r["metrics"]["index_cosine"]["mean"] <= 1 and r["metrics"]["index_kl"]["mean"] >= 0
PY
grep -q "index_kl" out.txt && ok "slot-index table printed" || bad "no index table"
expect_exit 2 "--preset unknown" "$bin" --preset paper
grep -q "accepted: seed" err.txt && ok "names the presets" || bad "error text: $(cat err.txt)"

# eval: perplexity and next-token fidelity with capped caches at every layer
expect_exit 0 "eval" "$bin" eval --samples 6 --max-length 200 --types window,sink,h2o --budget 64 --out ev
grep -q "perplexity" out.txt && grep -q "^sink " out.txt && ok "eval table" || bad "eval table: $(head -4 out.txt)"
python3 - ev/summary.json <<'PY' && ok "eval summary: full first, perplexity and its ratio to full" || bad "eval summary wrong"
import json, math, sys
s = json.load(open(sys.argv[1]))
assert s["config"]["mode"] == "eval" and s["runs"][0]["policy"] == "full"
for r in s["runs"]:
    nll = r["metrics"]["nll"]
    assert abs(r["perplexity"]["value"] - math.exp(nll["mean"])) < 1e-9 * r["perplexity"]["value"]
    assert r["metrics"]["kl"]["n"] == 0 and nll["n"] > 0
    if r["policy"] != "full":
        assert r["perplexity"]["ratio_to"]["policy"] == "full" and r["perplexity"]["ratio_to"]["value"] > 1
full = s["runs"][0]["metrics"]
assert full["next_kl"]["max"] == 0 and full["next_top1"]["min"] == 1
# a perplexity 1% worse for the check below
for r in s["runs"]:
    if r["policy"] == "sink":
        r["metrics"]["nll"]["mean"] += math.log(1.01)
json.dump(s, open("ev/worse.json", "w"))
PY
expect_exit 1 "check --tol ppl=0.5% finds a 1% worse perplexity" "$bin" check --baseline ev/summary.json --current ev/worse.json --tol ppl=0.5% --tolerance-only
grep -q "sink .* nll .*REGRESSION" out.txt && ok "the sink's nll flagged" || bad "$(grep nll out.txt)"
expect_exit 0 "check --tol ppl=2% lets it pass" "$bin" check --baseline ev/summary.json --current ev/worse.json --tol ppl=2% --tolerance-only
expect_exit 0 "eval sweep and batch grid key mode=eval" "$bin" eval --samples 3 --max-length 128 --types sink --budget 32,64 --quiet --out evs
python3 -c "import json; s = json.load(open('evs/summary.json')); assert len(s['runs']) == 3, len(s['runs'])" \
  && ok "eval sweep: full + sink x 2 budgets" || bad "eval sweep runs"

finish
