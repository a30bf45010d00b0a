#!/usr/bin/env bash
# Builds one self-contained moat executable per target with `bun build
# --compile` (Bun fetches each target's runtime from the npm registry once),
# then writes dist/SHA256SUMS.
#
# Usage: scripts/build.sh [target...]
#   targets: linux-x64 linux-arm64 darwin-x64 darwin-arm64 windows-x64 (default: all)
# cli/_tree_worker.ts is a second entrypoint: the vault's tree worker thread
# (cli/serve.ts treeWorkerUrl finds it inside the binary).
#   MOAT_BYTECODE=0 builds without --bytecode (precompiled JavaScriptCore
#   bytecode: faster start-up, ~2 MB larger; needs --format=esm for moat's
#   top-level await).
set -euo pipefail
cd "$(dirname "$0")/.."
all=(linux-x64 linux-arm64 darwin-x64 darwin-arm64 windows-x64)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "build.sh: unknown target \"$t\" (one of: ${all[*]})" >&2; exit 2; }
done
flags=(--compile --minify --format=esm)
[ "${MOAT_BYTECODE:-1}" = 0 ] || flags+=(--bytecode)
mkdir -p dist
for t in "${targets[@]}"; do
  out="dist/moat-$t"
  [[ $t == windows-* ]] && out="$out.exe"
  log=$(mktemp)
  if ! node_modules/.bin/bun build "${flags[@]}" --target="bun-$t" \
    --define "MOAT_TARGET=\"$t\"" main.ts cli/_tree_worker.ts --outfile "$out" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  echo "built $out ($(du -m "$out" | cut -f1) MB)"
done
node_modules/.bin/bun scripts/checksums.ts dist
