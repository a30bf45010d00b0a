#!/usr/bin/env bash
# Lints, format-checks and type-checks, runs the doc examples of lib/ and
# cli/ (`deno test --doc`), the whole suite under Deno and Bun, then the
# end-to-end tests against the compiled linux-x64 binary, and prints one line
# "N passed, N failed".
#
# The phases run at the same time, and each suite runs its files in parallel
# (one worker per core): most of a suite's time is spent waiting on child
# processes, sockets and timeouts, not computing, so the waits overlap. The
# binary is built first (the suites' install test reuses it instead of
# building its own while the binary suite runs it). Each phase writes its own
# log; the logs are printed whole, in a fixed order, once their phase ended.
#
# Temporary files go to a fresh folder per run (TMPDIR), on a tmpfs of its
# own when run as root: the vault tests fsync thousands of times, which costs
# seconds of kernel time on a disk and nothing on a tmpfs. A run leaves
# neither folder nor mount behind.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=node_modules/.bin
export NO_COLOR=1
bash scripts/deps.sh || exit 1

passed=0
failed=0
status=0
log=$(mktemp -d)
tmp=$(mktemp -d)
mounted=
# A run holds about 1 GiB of temporary files at its peak; the tmpfs takes at
# most half the memory available, and is not used below 4 GiB available.
avail=$(awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo 2>/dev/null || echo 0)
if [ "$(id -u)" -eq 0 ] && [ "${avail:-0}" -ge 4096 ] &&
  mount -t tmpfs -o "size=$((avail / 2))m,mode=1777" moat-test "$tmp" 2>/dev/null; then
  mounted=1
fi
cleanup() {
  [ -z "$mounted" ] || umount -l "$tmp"
  rm -rf "$log" "$tmp"
}
trap cleanup EXIT
export TMPDIR=$tmp
# Status sockets of servers started without --socket or --vault go here, not
# to /run/moat where another run's (or a real) server may hold the same port.
export XDG_RUNTIME_DIR=$tmp/run
mkdir -m 0700 "$XDG_RUNTIME_DIR"

start() { # name, then the command: runs it in the background into its log
  local name=$1
  shift
  echo "$*" >"$log/$name.cmd"
  (
    s=$SECONDS
    "$@" >"$log/$name.txt" 2>&1
    echo $? >"$log/$name.rc"
    echo $((SECONDS - s)) >"$log/$name.secs"
  ) &
  echo $! >"$log/$name.pid"
}

finish() { # name: waits for it, prints its log, returns its exit status
  local name=$1 rc
  wait "$(cat "$log/$name.pid")" 2>/dev/null
  rc=$(cat "$log/$name.rc" 2>/dev/null || echo 1)
  echo "== $name: $(cat "$log/$name.cmd")"
  cat "$log/$name.txt"
  echo "-- $name took $(cat "$log/$name.secs" 2>/dev/null || echo '?') s"
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
start static bash -c "$BIN/deno lint && $BIN/deno fmt --check && $BIN/deno check main.ts soak/ bench/ tests/ scripts/"
# Each example block is one test; this run type-checks them too.
start doc "$BIN/deno" test -A --doc lib/ cli/
start build bash scripts/build.sh linux-x64 linux-arm64
wait "$(cat "$log/build.pid")"
start deno "$BIN/deno" test -A --no-check --parallel tests/
start bun "$BIN/bun" test --timeout 180000 --parallel tests/
built=$(cat "$log/build.rc")
if [ "$built" -eq 0 ]; then
  start binary env MOAT_BIN=dist/moat-linux-x64 "$BIN/bun" test --timeout 180000 --parallel tests/e2e_
fi

if ! finish static; then
  failed=$((failed + 1))
  echo "-- static checks failed"
fi
finish doc
count_deno doc
finish build
finish deno
count_deno deno
finish bun
count_bun bun
if [ "$built" -eq 0 ]; then
  finish binary
  count_bun binary
else
  failed=$((failed + 1))
  echo "-- build failed"
fi
# CI shows the end of this output: name every failed test again here, then
# the first lines of the errors, so the excerpt says what failed (at most
# 150 lines: a run with many failures has its whole log above). Bun runs its
# files in parallel and may print a test's error apart from its name.
recap=$(
  for name in doc deno; do
    [ -f "$log/$name.txt" ] || continue
    # Deno names them under FAILURES: a test (" => file:line") or a file
    # that failed to load ("file (uncaught error)").
    sed -n '/^ *FAILURES *$/,/^FAILED |/p' "$log/$name.txt" |
      grep -Ev '^ *(FAILURES *|FAILED \|.*)?$' | sed "s/^/$name: /"
  done
  for name in bun binary; do
    [ -f "$log/$name.txt" ] || continue
    grep -E '^\(fail\) |^# Unhandled error' "$log/$name.txt" | sort -u | sed "s/^/$name: /"
  done
  for name in doc deno; do
    [ -f "$log/$name.txt" ] || continue
    sed -n '/^ *ERRORS *$/,/^ *FAILURES *$/p' "$log/$name.txt" |
      grep -Ev '^ *(at |ERRORS *$|FAILURES *$)' | head -n 40 | sed "s/^/$name: /"
  done
  for name in bun binary; do
    [ -f "$log/$name.txt" ] || continue
    grep -E '^(error|[A-Za-z]*Error)(:| \[)' "$log/$name.txt" | head -n 20 | sed "s/^/$name: /"
  done
)
if [ "$failed" -gt 0 ] && [ -n "$recap" ]; then
  echo "== failed tests, then their errors"
  head -n 150 <<<"$recap"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
