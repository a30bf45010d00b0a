#!/usr/bin/env bash
# `deno task serve`: moat serve from source under Deno, with permissions
# narrowed to the loopback listening addresses, the served folder and the
# audit log. A script rather than an inline task: inside `deno task`, a bare
# `deno` names the npm package of that name (this project's devDependency)
# and Deno then runs that package's launcher, which fails. Run by bash, this
# takes the binary `npm ci` installed, else a native `deno` on PATH.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
deno=deno
[ -x "$repo/node_modules/.bin/deno" ] && deno=$repo/node_modules/.bin/deno
exec "$deno" run --no-prompt \
  --allow-net=127.0.0.1:4320,[::1]:4320 \
  --allow-read=. \
  --allow-write=moat-audit.log \
  --allow-env=MOAT_TOKEN \
  "$repo/main.ts" serve --port 4320 --root . --log moat-audit.log "$@"
