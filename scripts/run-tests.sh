#!/usr/bin/env bash
# run-tests.sh BUILD - runs every test binary of a build and totals the results.
# Each binary prints "ok NAME" / "FAIL NAME: why" lines and a last line
# "RESULT passed=N failed=M"; a binary that crashes counts as one failure.
set -u
BUILD=${1:-build}
LABEL=${2:-$BUILD}
cd "$(dirname "$0")/.."
export NOMOAT_SHARED=${NOMOAT_SHARED:-$(cd .. && pwd)/shared}
export NOMOAT_BIN=$PWD/$BUILD/nomoat
passed=0; failed=0
for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  log=$(mktemp)
  start=$(date +%s)
  "$t" >"$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  res=$(grep -E '^RESULT passed=[0-9]+ failed=[0-9]+' "$log" | tail -n 1)
  if [ -n "$res" ]; then
    p=$(echo "$res" | sed -E 's/.*passed=([0-9]+).*/\1/')
    f=$(echo "$res" | sed -E 's/.*failed=([0-9]+).*/\1/')
  else
    p=0; f=0
  fi
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  passed=$((passed + p)); failed=$((failed + f))
  if [ "$f" -ne 0 ]; then
    echo "[$LABEL] $name: $p passed, $f failed (exit $rc, ${secs}s)"
    grep -vE '^ok ' "$log" | tail -n 40 | sed 's/^/    /'
  else
    echo "[$LABEL] $name: $p passed (${secs}s)"
  fi
  rm -f "$log"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
