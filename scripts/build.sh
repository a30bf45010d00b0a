#!/usr/bin/env bash
# Builds one self-contained moat executable per target with `bun build
# --compile` (Bun fetches each target's runtime from the npm registry), then
# writes dist/SHA256SUMS. Usage: scripts/build.sh [target...]
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(linux-x64 linux-arm64 darwin-x64 darwin-arm64 windows-x64)
mkdir -p dist
for t in "${targets[@]}"; do
  out="dist/moat-$t"
  [[ $t == windows-* ]] && out="$out.exe"
  node_modules/.bin/bun build --compile --minify --target="bun-$t" \
    --define "MOAT_TARGET=\"$t\"" main.ts --outfile "$out" >/dev/null
  echo "built $out"
done
(cd dist && sha256sum moat-* > SHA256SUMS)
