#!/usr/bin/env bash
# Makes data/raw, the raw input data.dvc tracks, and puts it in DVC's cache, so `dvc status` is clean and
# `dvc push` has it to send. scripts/bootstrap.sh runs it after `uv sync`; $DVC is the dvc command
# (default: uv run --frozen dvc).
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a dvc <<< "${DVC:-uv run --frozen dvc}"

# The default raw input: the Fashion-MNIST files of Debian's dataset-fashion-mnist, byte for byte
# (data.dvc records their md5). A data/raw that exists is left alone: it may hold a newer crawl.
if [ ! -e data/raw ]; then
  echo "raw_data: data/raw <- /usr/share/datasets/fashion-mnist" >&2
  rm -rf data/raw.tmp && mkdir -p data/raw.tmp  # copy aside, then rename: never a half-filled data/raw
  cp /usr/share/datasets/fashion-mnist/*-ubyte.gz data/raw.tmp/
  mv data/raw.tmp data/raw
fi

# Without --force, `dvc commit` caches data/raw only if it is the version data.dvc records; a newer crawl
# is left for `dvc repro`, which records it in data.dvc. Already cached: nothing to do.
if ! said=$("${dvc[@]}" commit --quiet data.dvc 2>&1); then
  echo "raw_data: data/raw is not cached: it differs from data.dvc (a new crawl? \`dvc repro\` records" \
    "it) or DVC failed: ${said}" >&2
fi
