#!/usr/bin/env bash
# Runs deno for `deno task`: inside a task, a bare `deno` names this project's
# `deno` npm package (a devDependency) and Deno then runs that package's
# launcher, which fails. This takes the binary `npm ci` installed, else a
# native `deno` on PATH.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
deno=deno
[ -x "$repo/node_modules/.bin/deno" ] && deno=$repo/node_modules/.bin/deno
exec "$deno" "$@"
