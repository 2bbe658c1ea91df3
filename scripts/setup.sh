#!/usr/bin/env bash
# Installs the Debian packages attnprobe needs to build and test.
# Idempotent: prints nothing and exits 0 when everything is already there.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libopenblas-dev libgsl-dev libcjson-dev libpcre2-dev libcmocka-dev libxxhash-dev
  libplplot-dev plplot-driver-cairo fonts-dejavu-core
  chromium-headless-shell
  openmpi-bin libopenmpi-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
