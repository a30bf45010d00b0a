#!/usr/bin/env bash
# `deno task serve`: moat serve from source under Deno, with permissions
# narrowed to the loopback listening addresses, the served folder and the
# audit log. Deno is found by scripts/deno.sh (see there why a task cannot
# name it directly).
set -euo pipefail
here=$(dirname "$0")
exec bash "$here/deno.sh" run --no-prompt \
  --allow-net=127.0.0.1:4320,[::1]:4320 \
  --allow-read=. \
  --allow-write=moat-audit.log \
  --allow-env=MOAT_TOKEN \
  "$here/../main.ts" serve --port 4320 --root . --log moat-audit.log "$@"
