#!/usr/bin/env bash
# The whole `attnprobe run` under mpirun with 1, 2, ... processes against the
# plain command: wall time of each and the speed-up over -np 1, on the
# machine's cores (OpenBLAS one thread a process).
#   usage: bench/mpi.sh ATTNPROBE "NPROCS..." [attnprobe run options...]
set -euo pipefail
bin=$1 procs=$2; shift 2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mpi=(mpirun --oversubscribe -x OPENBLAS_NUM_THREADS=1)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
now() { date +%s.%N; }
t0=$(now)
OPENBLAS_NUM_THREADS=1 "$bin" run --quiet --threads 1 --out "$out/plain" "$@"
plain=$(echo "$(now) - $t0" | bc)
echo "plain (no mpirun, 1 thread): ${plain} s"
base=""
for n in $procs; do
  t0=$(now)
  "${mpi[@]}" -np "$n" "$bin" run --quiet --threads 1 --out "$out/np$n" "$@"
  t=$(echo "$(now) - $t0" | bc)
  [ -z "$base" ] && base=$t
  printf "mpirun -np %d: %.2f s, speed-up over -np 1: %.2fx\n" "$n" "$t" "$(echo "$base / $t" | bc -l)"
done
