#!/usr/bin/env bash
# Makes sure a Docker engine answers: exits 0 if `docker info` works, after starting one when it does not
# and we are root (installing Debian's docker.io first if `dockerd` is missing). The engine started here is
# rootful, without iptables and without a bridge, so builds and containers must use `--network host`; it
# keeps running after this script (log: $LABELSIEVE_DOCKERD_LOG, default /var/log/labelsieve-dockerd.log).
# Exits 1, with the reason on stderr, when no engine can be reached or started.
set -euo pipefail

log="${LABELSIEVE_DOCKERD_LOG:-/var/log/labelsieve-dockerd.log}"

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && ! command -v dockerd >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "docker_engine: apt-get install docker.io" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi

if [ "$(id -u)" -ne 0 ] || ! command -v dockerd >/dev/null 2>&1; then
  echo "docker_engine: no Docker engine answers, and starting one needs root and dockerd" >&2
  exit 1
fi
if [ -S /var/run/docker.sock ] && pgrep -x dockerd >/dev/null 2>&1; then
  echo "docker_engine: dockerd is running but does not answer; see $log" >&2
  exit 1
fi

echo "docker_engine: starting dockerd (log: $log)" >&2
mkdir -p "$(dirname "$log")"
nohup dockerd --storage-driver=overlay2 --iptables=false --ip6tables=false --bridge=none \
  >>"$log" 2>&1 </dev/null &
for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "docker_engine: dockerd did not answer within 60 s; see $log" >&2
exit 1
