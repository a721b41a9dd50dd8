#!/usr/bin/env bash
# Builds the labelsieve image from the repository Dockerfile.
#
#   scripts/docker_build.sh [--base IMAGE|local|cuda] [--ca-bundle PATH|none] [--tag TAG] [--no-cache]
#
#   --base       local (default): labelsieve-base:bookworm, made by scripts/docker_base.sh when missing
#                (debootstrap from the Debian mirror; no image registry needed);
#                cuda: the Dockerfile's default, NVIDIA's CUDA runtime image (needs docker hub / nvcr);
#                any other value is used as the base image as is.
#   --ca-bundle  a PEM CA bundle pip and uv trust inside the build (BuildKit secret "ca"), for networks that
#                intercept HTTPS (corporate proxies). Default: $PIP_CERT when it names a readable file,
#                else none; `--ca-bundle none` turns it off. It is never stored in the image.
#   --tag        default: labelsieve:latest (components/image.py)
#   --no-cache   rebuild every layer (Debian's docker.io 20.10 then also empties uv's download cache)
#
# Starts a Docker engine first if none answers and we are root (scripts/docker_engine.sh). Builds with
# `--network host` (the engine started there has no bridge). Needs BuildKit: `docker buildx`, or a docker
# CLI older than 23 (Debian's docker.io) with DOCKER_BUILDKIT=1. Prints the build time and image size.
set -euo pipefail
cd "$(dirname "$0")/.."

local_base=labelsieve-base:bookworm
base=local
ca="${PIP_CERT:-}"
tag=labelsieve:latest
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base="$2"; shift 2 ;;
    --ca-bundle) ca="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --no-cache) extra+=(--no-cache); shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "docker_build: unknown argument $1" >&2; exit 2 ;;
  esac
done

bash scripts/docker_engine.sh

args=(--network host --tag "$tag" --file Dockerfile)
case "$base" in
  local|"$local_base")
    bash scripts/docker_base.sh --tag "$local_base"
    args+=(--build-arg "BASE_IMAGE=$local_base") ;;
  cuda) ;;  # the Dockerfile's default BASE_IMAGE
  *) args+=(--build-arg "BASE_IMAGE=$base") ;;
esac
if [ -n "$ca" ] && [ "$ca" != none ]; then
  [ -r "$ca" ] || { echo "docker_build: --ca-bundle $ca is not a readable file" >&2; exit 2; }
  args+=(--secret "id=ca,src=$ca")
fi

# BuildKit: buildx if installed; else a pre-23 CLI, whose `docker build` has BuildKit built in.
if docker buildx version >/dev/null 2>&1; then
  build=(docker buildx build --load)
else
  build=()
  for cli in docker /usr/bin/docker; do
    version="$("$cli" version --format '{{.Client.Version}}' 2>/dev/null || true)"
    if [ -n "$version" ] && [ "${version%%.*}" -lt 23 ] 2>/dev/null; then
      build=(env DOCKER_BUILDKIT=1 "$cli" build)
      break
    fi
  done
  if [ "${#build[@]}" -eq 0 ]; then
    echo "docker_build: BuildKit needed: install docker-buildx, or Debian's docker.io CLI" >&2
    exit 1
  fi
fi

echo "docker_build: ${build[*]} ${args[*]} ${extra[*]} ." >&2
start=$(date +%s)
"${build[@]}" --progress plain "${args[@]}" "${extra[@]}" .
seconds=$(( $(date +%s) - start ))
size=$(docker image inspect --format '{{.Size}}' "$tag")
echo "docker_build: $tag built in ${seconds} s, $(numfmt --to=iec "$size") ($size bytes)" >&2
