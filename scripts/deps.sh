#!/usr/bin/env bash
# Installs the Debian packages the tests drive as real peers, if missing.
set -euo pipefail
need=()
command -v socat >/dev/null || need+=(socat)
command -v nc >/dev/null || need+=(netcat-openbsd)
command -v openssl >/dev/null || need+=(openssl)
command -v logger >/dev/null || need+=(bsdutils)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "scripts/deps.sh: please install: ${need[*]}" >&2
  exit 1
fi
apt-get -o DPkg::Lock::Timeout=300 update -qq
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${need[@]}" >/dev/null
