#!/usr/bin/env bash
# test_bad_input.sh — bad flags, files and outputs: each gets its documented
# exit code and a message naming what was wrong, before any work where it
# can be, and nothing is left behind (no temporary file, no summary from a
# failed run, an existing target that is not a regular file left in place).
#   usage: test_bad_input.sh ATTNPROBE FIXTURES
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh"
no_temp_left() { # what
  if ls -a | grep -q '\.tmp\.'; then bad "$1: temporary file left: $(ls -a | grep tmp)"; else ok "$1: no temporary file left"; fi
}

# flags and values
expect_exit 2 "unknown policy" "$bin" --types lru
grep -q "accepted: full" err.txt && ok "names accepted policies" || bad "error text: $(cat err.txt)"
expect_exit 2 "bad budget" "$bin" --budget 0
expect_exit 2 "budget below sink+recent" "$bin" --types h2o --budget 8
expect_exit 2 "bad layer" "$bin" --layer 40
expect_exit 2 "unknown flag" "$bin" --frobnicate
expect_exit 2 "unknown format" "$bin" --format html,pdf
expect_exit 3 "missing model" "$bin" --model /nonexistent
expect_exit 3 "missing input" "$bin" --input /nonexistent.txt
printf 'A short text of a few words.\n' > tiny.txt
expect_exit 3 "eval of a text shorter than warmup + 2 tokens" "$bin" eval --input tiny.txt --warmup 64
grep -q "no sample of at least 66 tokens" err.txt && ok "eval: says the length needed" || bad "eval short: $(cat err.txt)"
expect_exit 2 "eval with --heads" "$bin" eval --heads 0,1
expect_exit 2 "replay --mode eval" "$bin" replay x.safetensors --mode eval
printf 'short\n' > short.txt
expect_exit 3 "too short input" "$bin" --input short.txt
expect_exit 2 "--precision bf16 on the cpu" "$bin" --precision bf16
expect_exit 2 "--sketch-memory too small for the sketch" "$bin" --types cms --sketch-memory 16
expect_exit 2 "--budget listing a value twice" "$bin" --budget 32,32
expect_exit 2 "--budget list with a word" "$bin" --budget 32,abc
expect_exit 2 "--seeds backwards" "$bin" --types cms --seeds 5-1
expect_exit 2 "--seeds not a list" "$bin" --types cms --seeds all
expect_exit 2 "--sketch-memory not a size" "$bin" --types cms --sketch-memory lots
expect_exit 2 "--compare-to a policy not in --types" "$bin" --types h2o,cms --compare-to race
if ! "$bin" --device cuda --samples 1 --max-length 80 --quiet --out gpu > /dev/null 2>&1; then
  expect_exit 2 "--device cuda without a GPU" "$bin" --device cuda
fi
# a config.json that does not fit its weights file: refused before allocating it
mkdir big && cp "$(dirname "$fixtures")/../models/attnprobe-mini/"* big/ 2> /dev/null || cp "$fixtures"/tiny/* big/
sed -i 's/"n_embd": [0-9]*/"n_embd": 1968/' big/config.json
expect_exit 3 "config.json far larger than its weights" "$bin" info --model big
grep -q "cannot hold" err.txt && ok "says the file cannot hold it" || bad "error text: $(cat err.txt)"

# outputs of the runs the cases below compare against
expect_exit 0 "baseline run" "$bin" --quiet --types full,h2o,window --budget 64 --max-length 256 --out base
expect_exit 0 "another run" "$bin" --quiet --types full,h2o,window --budget 64 --max-length 512 --out worse
expect_exit 0 "trace --save" "$bin" trace --save t.safetensors --layers 6,10 --quiet
no_temp_left "trace --save"

# a corrupted trace file is refused, nothing is written
cp t.safetensors flipped.safetensors
size=$(stat -c %s flipped.safetensors)
printf '\x7f' | dd of=flipped.safetensors bs=1 seek=$((size - 4096)) conv=notrunc status=none
expect_exit 3 "replay of a corrupted trace" "$bin" replay flipped.safetensors --types h2o --quiet --out corrupt
grep -q "checksum" err.txt && ok "names the checksum" || bad "error text: $(cat err.txt)"
[ -e corrupt/summary.json ] && bad "summary written from a corrupt trace" || ok "no summary from a corrupt trace"
# input checked before any work
expect_exit 2 "empty --format" "$bin" --format ""
expect_exit 2 "--types listed twice" "$bin" --types cms,cms
expect_exit 2 "--max-length beyond the model" "$bin" --max-length 4096
expect_exit 2 "--heads out of range" "$bin" --heads 9
expect_exit 2 "a path longer than accepted" "$bin" --out "$(printf 'd/%.0s' $(seq 600))"
# a target that is not a regular file is not replaced
mkfifo pipe
expect_exit 3 "--save onto a FIFO" "$bin" trace --save pipe --quiet
[ -p pipe ] && ok "the FIFO is still a FIFO" || bad "the FIFO was replaced"
# a malformed baseline is an error, not a pass
python3 - base/summary.json <<'PY' > nullmean.json
import json, sys
s = json.load(open(sys.argv[1]))
s["runs"][0]["metrics"]["kl"]["mean"] = None
print(json.dumps(s))
PY
expect_exit 3 "check: baseline metric without a mean" "$bin" check --baseline nullmean.json --current worse/summary.json
python3 - base/summary.json <<'PY' > nometric.json
import json, sys
s = json.load(open(sys.argv[1]))
del s["runs"][1]["metrics"]["kl"]
print(json.dumps(s))
PY
expect_exit 3 "check: baseline run missing a metric" "$bin" check --baseline nometric.json --current worse/summary.json
grep -q "no metric kl" err.txt && ok "names the missing metric" || bad "error text: $(cat err.txt)"
# an interrupted trace leaves no temporary file
"$bin" trace --save big.safetensors --layers all --samples 5 --max-length 1024 --quiet 2> /dev/null &
pid=$!
sleep 1
kill -TERM $pid 2> /dev/null
wait $pid
code=$?
left=$(ls | grep -c 'big.safetensors')
if [ "$code" = 143 ] && [ "$left" = 0 ]; then
  ok "SIGTERM during trace --save: exit 143, no file left"
elif [ "$code" = 0 ]; then
  ok "trace finished before the signal (nothing to check)"
  rm -f big.safetensors
else
  bad "SIGTERM during trace --save: exit $code, files left: $(ls | grep big)"
fi


no_temp_left "after every case"
finish
