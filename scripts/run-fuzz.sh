#!/usr/bin/env bash
# run-fuzz.sh SECONDS BIN... - runs each libFuzzer target for a bounded time
# on a seed corpus made from the shared model files, prints the executions.
set -u
secs=$1; shift
cd "$(dirname "$0")/.."
SHARED=${NOMOAT_SHARED:-$(cd .. && pwd)/shared}
passed=0; failed=0
for bin in "$@"; do
  name=$(basename "$bin")
  corpus=build-fuzz/corpus-$name
  mkdir -p "$corpus"
  seeds=fuzz/seeds-$name.sh
  [ -x "$seeds" ] && "$seeds" "$SHARED" "$corpus"
  log=build-fuzz/$name.log
  "$bin" -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix=build-fuzz/ "$corpus" >"$log" 2>&1
  rc=$?
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1)
  if [ "$rc" -eq 0 ]; then
    echo "[fuzz] $name: ${runs:-?} executions in ${secs}s, no crash"
    passed=$((passed + 1))
  else
    echo "[fuzz] $name: FAILED (exit $rc) after ${runs:-?} executions"; tail -n 30 "$log"
    failed=$((failed + 1))
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
