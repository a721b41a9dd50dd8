#!/usr/bin/env bash
# Makes the local base image of the labelsieve image without any image registry: a minimal Debian
# bookworm (python3, python3-venv, ca-certificates) made with debootstrap from the machine's Debian mirror
# and loaded with `docker import`. Needs root (debootstrap). The Dockerfile then installs uv from PyPI and
# the locked dependencies on top of it.
#
#   scripts/docker_base.sh [--tag TAG] [--mirror URL] [--force]
#
#   --tag     image name (default: labelsieve-base:bookworm)
#   --mirror  Debian mirror (default: the first deb.debian.org-style URI in /etc/apt/sources.list*,
#             else http://deb.debian.org/debian)
#   --force   remake it even if the tag exists
set -euo pipefail
cd "$(dirname "$0")/.."

tag=labelsieve-base:bookworm
mirror=""
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --mirror) mirror="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "docker_base: unknown argument $1" >&2; exit 2 ;;
  esac
done

bash scripts/docker_engine.sh
if [ "$force" -eq 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "docker_base: $tag exists (--force remakes it)" >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "docker_base: debootstrap needs root" >&2
  exit 1
fi
command -v debootstrap >/dev/null 2>&1 || {
  echo "docker_base: apt-get install debootstrap" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

if [ -z "$mirror" ]; then
  # deb822 (URIs: ...) or one-line (deb URL suite ...) sources; the first Debian main archive wins.
  mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
    2>/dev/null | grep -oE '(URIs:[[:space:]]*|^deb[[:space:]]+)https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
    | grep -oE 'https?://[^[:space:]]+' | head -n1 || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
fi

root="$(mktemp -d /var/tmp/labelsieve-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "docker_base: debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# Smaller and reproducible-ish: no apt lists, caches or logs in the layer.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/log/* "$root"/tmp/*
tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap bookworm ($mirror) + python3 python3-venv ca-certificates" - "$tag" >/dev/null
echo "docker_base: made $tag ($(docker image inspect -f '{{.Size}}' "$tag" | numfmt --to=iec))" >&2
