#!/usr/bin/env bash
# test_mpi.sh — attnprobe under mpirun: `run` (isolated and cascade) and
# `batch` over 1, 2 and 3 processes give the single process's outputs, to
# the last bit (timings, provenance and the device's thread count aside);
# a corrupt sample in one rank's shard makes every rank exit 3 with one
# message naming the rank; more ranks than samples is a usage error; a
# batch rerun under mpirun skips the cells already written. Skipped
# (exit 77) without mpirun or in a build without MPI.
#   usage: test_mpi.sh ATTNPROBE FIXTURES
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh"
if ! command -v mpirun > /dev/null || ! "$bin" --version | grep -q "mpi yes"; then
  echo "skipped: no mpirun, or this build has no MPI (scripts/setup.sh installs Open MPI)"
  exit 77
fi
mpi=(mpirun --oversubscribe)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
# Open MPI keeps memory to the end of the process in plugins it has already
# unloaded (LeakSanitizer cannot name them, so no suppression matches): leak
# checks stay on for every other test, which runs the same study code
# without MPI, and are off for the processes mpirun starts.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
for v in ASAN_OPTIONS UBSAN_OPTIONS OPENBLAS_NUM_THREADS; do [ -n "${!v:-}" ] && mpi+=(-x "$v"); done

same() { # the summaries or batches given are the same but for timings and provenance
  python3 - "$@" <<'PY'
import json, sys
def strip(s):
    for k in ("provenance", "study_s", "trace_s", "statistics_s"):
        s.pop(k, None)
    s.get("device", {}).pop("name", None)
    for r in s.get("runs", []):
        r.pop("timing", None)
    return s
def load(p):
    d = json.load(open(p))
    if d.get("schema") == "attnprobe.batch/1":
        for c in d["cells"]:
            strip(c["summary"])
        return d
    return strip(d)
first = load(sys.argv[1])
for p in sys.argv[2:]:
    assert load(p) == first, p
PY
}

iso=(--samples 7 --max-length 256 --layers 3,6 --types h2o,cms,window,random --budget 32,64 --quiet)
expect_exit 0 "isolated, one process without mpirun" "$bin" "${iso[@]}" --out plain
for n in 1 2 3; do
  expect_exit 0 "isolated, mpirun -np $n" "${mpi[@]}" -np $n "$bin" "${iso[@]}" --out np$n
done
same plain/summary.json np1/summary.json np2/summary.json np3/summary.json \
  && ok "isolated: -np 1, 2, 3 = the plain run, bit for bit" || bad "isolated summaries differ"

cas=(--samples 5 --max-length 256 --layers 6 --types h2o,tova --budget 48 --mode cascade --quiet)
expect_exit 0 "cascade, one process" "$bin" "${cas[@]}" --out cplain
for n in 2 3; do
  expect_exit 0 "cascade, mpirun -np $n" "${mpi[@]}" -np $n "$bin" "${cas[@]}" --out cnp$n
done
same cplain/summary.json cnp2/summary.json cnp3/summary.json \
  && ok "cascade: -np 2, 3 = the plain run, bit for bit" || bad "cascade summaries differ"

ev=(eval --samples 4 --max-length 128 --warmup 16 --types sink,h2o --budget 32 --quiet)
expect_exit 0 "eval, one process" "$bin" "${ev[@]}" --out eplain
expect_exit 0 "eval, mpirun -np 2" "${mpi[@]}" -np 2 "$bin" "${ev[@]}" --out enp2
python3 - eplain/summary.json enp2/summary.json <<'PY' && ok "eval: -np 2 = one process within 1e-12" || bad "eval under mpirun differs"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for ra, rb in zip(a["runs"], b["runs"]):
    for m in ("nll", "next_kl", "next_top1", "full_argmax_rank"):
        x, y = ra["metrics"][m], rb["metrics"][m]
        assert x["n"] == y["n"]
        for k in ("mean", "sd", "min", "max"):
            assert abs(x[k] - y[k]) <= 1e-12 * max(abs(x[k]), 1e-3), (ra["policy"], m, k, x[k], y[k])
PY

cat > grid.json <<'GRID'
{"defaults": {"samples": 3, "max_length": 256, "bootstrap": 200, "types": "h2o,cms", "layers": "3,6"},
 "studies": [{"name": "a", "budget": [24, 32]}, {"name": "b", "budget": 48, "mode": ["isolated", "cascade"]},
             {"name": "c", "budget": 64}]}
GRID
expect_exit 0 "batch, one process" "$bin" batch grid.json --out b1 --quiet
for n in 2 3; do
  expect_exit 0 "batch, mpirun -np $n" "${mpi[@]}" -np $n "$bin" batch grid.json --out b$n --quiet
done
same b1/batch.json b2/batch.json b3/batch.json && cmp -s b1/results.csv b2/results.csv && cmp -s b1/results.csv b3/results.csv \
  && ok "batch: -np 2, 3 = one process (batch.json and results.csv)" || bad "batch outputs differ"
expect_exit 0 "batch rerun under mpirun" "${mpi[@]}" -np 2 "$bin" batch grid.json --out b2
# (the ranks' lines reach mpirun's stderr side by side and may share a line)
[ "$(grep -o 'already written, skipped' err.txt | wc -l)" = 4 ] && ok "every cell skipped on the rerun" \
  || bad "skips: $(grep -o 'already written, skipped' err.txt | wc -l) of 4: $(cat err.txt)"

# faults: the last sample (rank 1's shard) corrupt
expect_exit 0 "a trace to corrupt" "$bin" trace --save t.safetensors --samples 4 --max-length 256 --layers 6 --quiet
cp t.safetensors flipped.safetensors
size=$(stat -c %s flipped.safetensors)
printf '\x7f' | dd of=flipped.safetensors bs=1 seek=$((size - 4096)) conv=notrunc status=none
expect_exit 3 "a corrupt sample on rank 1: every rank exits 3" "${mpi[@]}" -np 2 "$bin" replay flipped.safetensors --types h2o --quiet --out corrupt
[ "$(grep -c '^attnprobe' err.txt)" = 1 ] && grep -q "rank 1 of 2: .*checksum" err.txt \
  && ok "one message, naming rank 1 and the cause" || bad "messages: $(grep attnprobe err.txt)"
[ -e corrupt/summary.json ] && bad "a summary was written" || ok "no output"
expect_exit 2 "more ranks than samples" "${mpi[@]}" -np 5 "$bin" replay t.safetensors --types h2o --quiet --out many
grep -q "5 processes for 4 samples" err.txt && ok "says how many processes fit" || bad "$(grep attnprobe err.txt)"
expect_exit 2 "trace --save under mpirun" "${mpi[@]}" -np 2 "$bin" trace --save t2.safetensors --samples 4 --quiet
finish
