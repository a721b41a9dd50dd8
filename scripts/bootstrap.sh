#!/usr/bin/env bash
# Installs everything labelsieve needs on a fresh Debian machine: uv, the locked Python dependencies
# (uv.lock), Debian's Fashion-MNIST package and chromium (the tests render report.html headless), and
# makes data/raw, the raw input data.dvc tracks, cached so `dvc status` is clean (scripts/raw_data.sh).
# Safe to run again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if command -v uv >/dev/null 2>&1; then
  uv=(uv)
else
  if ! python3 -m uv --version >/dev/null 2>&1; then
    echo "bootstrap: installing uv" >&2
    python3 -m pip install --quiet uv 2>/dev/null || python3 -m pip install --quiet --user --break-system-packages uv
  fi
  uv=(python3 -m uv)
fi

missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# SeaweedFS (`weed`), the S3 server the object-storage tests start on 127.0.0.1. Optional: a release
# without seaweedfs-bin (Debian 12) skips those tests; that answer is remembered per release.
no_weed="${XDG_CACHE_HOME:-$HOME/.cache}/labelsieve/no-seaweedfs-bin-$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
if ! command -v weed >/dev/null 2>&1 && [ ! -e "$no_weed" ]; then
  sudo_if_needed apt-get update -qq
  if apt-cache show seaweedfs-bin >/dev/null 2>&1; then
    missing+=(seaweedfs-bin)
  else
    echo "bootstrap: seaweedfs-bin is not in this release's archive; the SeaweedFS tests will skip" >&2
    mkdir -p "$(dirname "$no_weed")" && touch "$no_weed"
  fi
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: apt-get install ${missing[*]}" >&2
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --compile-bytecode: every stage, kfp task and test child is a fresh Python. Where PYTHONDONTWRITEBYTECODE
# is set (as on the CI machines) nothing is cached at import, and each such process would spend 3 to 4 s
# compiling torch's sources again (README "Containers"). The .pyc files are written once, here.
"${uv[@]}" sync --frozen --quiet --compile-bytecode

DVC="${uv[*]} run --frozen dvc" bash scripts/raw_data.sh  # data/raw, in DVC's cache
