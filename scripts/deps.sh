#!/usr/bin/env bash
# Installs the Debian packages the tests drive as real peers, if missing.
# The one list: .ci/run and `npm test` both call this script.
set -euo pipefail
pkgs=(socat netcat-openbsd openssl bsdutils rsyslog rsyslog-gnutls nftables iproute2
  qemu-user-static libc6-arm64-cross logrotate fail2ban jq tmux nats-server)
need=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "scripts/deps.sh: please install: ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 update -qq
apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${need[@]}" >/dev/null
