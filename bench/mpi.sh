#!/usr/bin/env bash
# The whole `attnprobe run` under mpirun with 1, 2, ... processes against the
# plain command: wall time of each and the speed-up over -np 1.
#   usage: [THREADS=N] bench/mpi.sh ATTNPROBE "NPROCS..." [attnprobe run options...]
# THREADS: --threads and OpenBLAS threads a process (default 1: the cores
# are the processes'). ATTNPROBE_SHARE_GPU=1 is passed on (ranks sharing a GPU).
set -euo pipefail
bin=$1 procs=$2; shift 2
threads=${THREADS:-1}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export OPENBLAS_NUM_THREADS=$threads
mpi=(mpirun --oversubscribe -x OPENBLAS_NUM_THREADS)
[ -n "${ATTNPROBE_SHARE_GPU:-}" ] && mpi+=(-x ATTNPROBE_SHARE_GPU)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
now() { date +%s.%N; }
t0=$(now)
"$bin" run --quiet --threads "$threads" --out "$out/plain" "$@"
awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "plain (no mpirun): %.2f s\n", b - a }'
base=""
for n in $procs; do
  t0=$(now)
  "${mpi[@]}" -np "$n" "$bin" run --quiet --threads "$threads" --out "$out/np$n" "$@"
  t=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print b - a }')
  [ -z "$base" ] && base=$t
  awk -v n="$n" -v t="$t" -v b="$base" 'BEGIN { printf "mpirun -np %d: %.2f s, speed-up over -np 1: %.2fx\n", n, t, b / t }'
done
