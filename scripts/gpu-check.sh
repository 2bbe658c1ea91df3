#!/usr/bin/env bash
# Run THERE (the GPU machine, through the device tool with carry
# [".device/debs", ".device/mpi-debs", ".device/shared.tgz" or ".device/text.tgz"]):
# unpacks the carried Debian packages into a private prefix, builds attnprobe
# with CUDA for sm_90, runs the tests (ctest, all labels) and, with
# --bench, the benchmarks. Logs go to $OUT when set.
#   usage: bash scripts/gpu-check.sh [--no-test] [--bench] [--] [extra command]
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/.device/out}
mkdir -p "$OUT"
PREFIX=/tmp/attnprobe-deps
if [ ! -d "$PREFIX/usr" ]; then
  for f in .device/debs/*.deb .device/mpi-debs/*.deb; do [ -e "$f" ] && dpkg -x "$f" "$PREFIX"; done
fi
# the shared data, whole (shared.tgz) or its Brown text alone (text.tgz, when the rest would not fit the carry)
for f in .device/shared.tgz .device/text.tgz; do
  if [ ! -d .device/shared ] && [ -f "$f" ]; then mkdir -p .device/shared && tar xzf "$f" -C .device/shared; fi
done
LIBDIR=$PREFIX/usr/lib/x86_64-linux-gnu
ln -sf openblas-pthread/libopenblas.so.0 "$LIBDIR/libopenblas.so.0" 2>/dev/null
export PKG_CONFIG_SYSROOT_DIR=$PREFIX
export PKG_CONFIG_LIBDIR=$LIBDIR/pkgconfig:$LIBDIR/openblas-pthread/pkgconfig:$PREFIX/usr/share/pkgconfig
export LD_LIBRARY_PATH=$LIBDIR:$LIBDIR/openblas-pthread:${LD_LIBRARY_PATH:-}
mpi_flags=()
if [ -x "$PREFIX/usr/bin/mpirun.openmpi" ]; then # Open MPI, relocated into the prefix
  ln -sf mpirun.openmpi "$PREFIX/usr/bin/mpirun"
  export OPAL_PREFIX=$PREFIX/usr PATH=$PREFIX/usr/bin:$PATH
  export LD_LIBRARY_PATH=$LIBDIR/openmpi/lib:$LD_LIBRARY_PATH
  mpi_flags=(-DMPI_C_COMPILER="$PREFIX/usr/bin/mpicc.openmpi")
fi
export ATTNPROBE_SHARED=$ROOT/.device/shared
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DATTNPROBE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_FLAGS=-lineinfo -DATTNPROBE_SHARED_DIR="$ATTNPROBE_SHARED" "${mpi_flags[@]}" > "$OUT/configure.log" 2>&1 \
  || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j16 > "$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -40; exit 1; }
echo "gpu-check: built"
run_tests=1; bench=0
while [ $# -gt 0 ]; do
  case "$1" in
    --no-test) run_tests=0 ;;
    --bench) bench=1 ;;
    --) shift; break ;;
  esac
  shift
done
status=0
if [ $run_tests = 1 ]; then
  (cd build-gpu && ctest --output-on-failure -j8 2>&1 | tee "$OUT/ctest.log" | tail -25) || status=1
fi
if [ $bench = 1 ] && [ -x bench/run-gpu.sh ]; then bash bench/run-gpu.sh build-gpu "$OUT" || status=1; fi
if [ $# -gt 0 ]; then "$@" || status=1; fi
exit $status
