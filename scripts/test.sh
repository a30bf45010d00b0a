#!/usr/bin/env bash
# Lints, format-checks and type-checks, runs the doc examples of lib/ and
# cli/ (`deno test --doc`), the whole suite under Deno and Bun, then the
# end-to-end tests against the compiled linux-x64 binary, and prints one line
# "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=node_modules/.bin
export NO_COLOR=1
bash scripts/deps.sh || exit 1

passed=0
failed=0
status=0
log=$(mktemp -d)

run() { # name, then the command
  local name=$1
  shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$log/$name.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

count_deno() {
  local line p f
  line=$(grep -E '^(ok|FAILED) \| [0-9]+ passed' "$log/$1.txt" | tail -1)
  p=$(sed -E 's/.*\| ([0-9]+) passed.*/\1/' <<<"$line")
  f=$(sed -E 's/.*\| ([0-9]+) failed.*/\1/' <<<"$line")
  if [ -z "$line" ]; then p=0; f=1; fi
  passed=$((passed + p)); failed=$((failed + f))
  echo "-- $1: $p passed, $f failed"
}

count_bun() {
  local p f
  p=$(grep -E '^ *[0-9]+ pass$' "$log/$1.txt" | tail -1 | tr -dc 0-9)
  f=$(grep -E '^ *[0-9]+ fail$' "$log/$1.txt" | tail -1 | tr -dc 0-9)
  if [ -z "$p" ]; then p=0; f=${f:-1}; fi
  passed=$((passed + p)); failed=$((failed + ${f:-0}))
  echo "-- $1: $p passed, ${f:-0} failed"
}

# Lint, format and types once (the runs below skip type checking); a failure
# counts as one failed check, like a failed build.
if ! run static bash -c "$BIN/deno lint && $BIN/deno fmt --check && $BIN/deno check main.ts soak/ bench/ tests/ scripts/"; then
  failed=$((failed + 1))
  echo "-- static checks failed"
fi
# Each example block is one test; this run type-checks them too.
run doc "$BIN/deno" test -A --doc lib/ cli/
count_deno doc
run deno "$BIN/deno" test -A --no-check tests/
count_deno deno
run bun "$BIN/bun" test --timeout 180000 tests/
count_bun bun
if run build bash scripts/build.sh linux-x64 linux-arm64; then
  MOAT_BIN=dist/moat-linux-x64 run binary "$BIN/bun" test --timeout 180000 tests/e2e_
  count_bun binary
else
  failed=$((failed + 1))
  echo "-- build failed"
fi
rm -rf "$log"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
