#!/usr/bin/env bash
# Run HERE (the development machine): gathers what the GPU machine lacks into
# .device/ (ignored by git, carried by the device tool): the Debian packages
# of the build's libraries and a copy of ../shared/data for tests and tools.
# The GPU machine has CUDA, PyTorch and transformers but no GSL, cJSON, PCRE2,
# cmocka or OpenBLAS headers; scripts/gpu-check.sh unpacks these there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device/debs
pkgs=(libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread libgfortran5 libquadmath0
      libgsl-dev libgsl27 libgslcblas0 libcjson-dev libcjson1
      libpcre2-dev libpcre2-8-0 libcmocka-dev libcmocka0 libxxhash-dev libxxhash0)
if [ -z "$(ls .device/debs/*.deb 2>/dev/null)" ]; then
  (cd .device/debs && apt-get download "${pkgs[@]}" >/dev/null)
fi
# Open MPI's runtime (mpirun and its libraries), for bench/mpi.sh there
mpi_pkgs=(openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libhwloc15 libevent-core-2.1-7
          libevent-pthreads-2.1-7 libfabric1 libucx0 libibverbs1 librdmacm1 libnl-3-200 libnl-route-3-200
          libpsm-infinipath1 libpsm2-2 libmunge2 libltdl7 libnuma1 libxnvctrl0 libpciaccess0 libx11-6 libxext6
          libxcb1 libxau6 libxdmcp6 libbsd0 libmd0)
mkdir -p .device/mpi-debs
if [ -z "$(ls .device/mpi-debs/*.deb 2>/dev/null)" ]; then
  (cd .device/mpi-debs && apt-get download "${mpi_pkgs[@]}" >/dev/null)
fi
# Text travels compressed (the device tool carries at most 64 MiB):
# ../shared/data plus the prose of Debian documentation packages (tools/debian_text.py).
mkdir -p .device/stage/extra
cp -r ../shared/data .device/stage/
extra() {  # name package [pages glob]
  local out=.device/stage/extra/$1.txt
  [ -f "$out" ] || python3 tools/debian_text.py --out "$out" --package "$2" ${3:+--pages "$3"}
}
extra python-docs python3.11-doc
extra postgresql-docs postgresql-doc-15
extra git-docs git-doc
extra debian-handbook debian-handbook 'usr/share/doc/debian-handbook/html/en-US/*.html'
tar czf .device/shared.tgz -C .device/stage data extra
# the Brown text alone, for calls whose working tree leaves no room for the rest
tar czf .device/text.tgz -C .device/stage data/text/brown.txt
du -sh .device/debs .device/mpi-debs .device/shared.tgz .device/text.tgz
