#!/usr/bin/env bash
# The whole attnprobe command as a user runs it, timed: wall time and peak
# resident memory from GNU time, beside the study's own trace time.
#   usage: bench/study.sh ATTNPROBE [attnprobe run options...]
# Prints one line: "wall_s=… peak_rss_mb=… trace_s=… samples=… tokens=…".
set -euo pipefail
bin=$1; shift
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
/usr/bin/time -v "$bin" run --quiet --out "$out" "$@" 2> "$out/time.txt" || { cat "$out/time.txt" >&2; exit 1; }
wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$out/time.txt" |
       awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }')
rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$out/time.txt")
python3 - "$out/summary.json" "$wall" "$rss" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"wall_s={float(sys.argv[2]):.2f} peak_rss_mb={int(sys.argv[3]) / 1024:.0f} "
      f"study_s={s.get('study_s', 0):.2f} trace_s={s.get('trace_s', 0):.2f} statistics_s={s.get('statistics_s', 0):.2f} "
      f"replay_s={s['runs'][0]['timing']['replay_s']:.2f} "
      f"samples={s['input']['samples']} tokens={s['input']['tokens']} runs={len(s['runs'])}")
PY
