#!/usr/bin/env bash
# Run HERE (the development machine): gathers what the GPU machine lacks into
# .device/ (ignored by git, carried by the device tool): the Debian packages
# of the build's libraries and a copy of ../shared/data for tests and tools.
# The GPU machine has CUDA, PyTorch and transformers but no GSL, cJSON, PCRE2,
# cmocka or OpenBLAS headers; scripts/gpu-check.sh unpacks these there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device/debs .device/shared
pkgs=(libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread libgfortran5 libquadmath0
      libgsl-dev libgsl27 libgslcblas0 libcjson-dev libcjson1
      libpcre2-dev libpcre2-8-0 libcmocka-dev libcmocka0)
if [ -z "$(ls .device/debs/*.deb 2>/dev/null)" ]; then
  (cd .device/debs && apt-get download "${pkgs[@]}" >/dev/null)
fi
rsync -a --delete ../shared/data/ .device/shared/data/ 2>/dev/null || cp -r ../shared/data .device/shared/
du -sh .device
