#!/usr/bin/env bash
# test-aarch64.sh [BUILD] - the aarch64 cross build's kernel, type,
# quantization and model tests under qemu-user, twice: on an emulated core
# with the dot-product extension (-cpu max: the NEON level's SDOT kernels)
# and on one without (cortex-a53: its widening-multiply kernels).  Each
# test program also runs the scalar level itself.  Ends, like
# run-tests.sh, with "N passed, N failed".
set -u
BUILD=${1:-build-aarch64}
cd "$(dirname "$0")/.."
export NOMOAT_SHARED=${NOMOAT_SHARED:-$(cd .. && pwd)/shared}
# The arm64 libraries (libc included) come from Debian multiarch, so the
# emulated loader is the host's /lib/ld-linux-aarch64.so.1.  Pointing qemu
# at the cross compiler's sysroot (-L /usr/aarch64-linux-gnu) instead mixes
# two glibc builds, and threads then hang in pthread_create.
if [ -e /lib/ld-linux-aarch64.so.1 ]; then LDPREFIX=""; else LDPREFIX="-L /usr/aarch64-linux-gnu"; fi
TESTS="test_kernels test_types test_quantize test_model"
passed=0; failed=0
if ! command -v qemu-aarch64 >/dev/null 2>&1; then
  echo "[aarch64] qemu-aarch64 is missing (Debian package qemu-user)"
  echo "0 passed, 1 failed"; exit 1
fi
# cortex-a53 has no dot-product extension: there only the kernel tests
# that depend on the NEON variant run (the rest was covered on -cpu max).
# test_model once more at the scalar level (test_kernels' model_every_isa)
# is left to the native runs: in process, isa_golden covers that level.
for cpu in max cortex-a53; do
  runner="qemu-aarch64 $LDPREFIX -cpu $cpu"
  # test programs run the tool and each other through these
  export NOMOAT_BIN="$runner $PWD/$BUILD/nomoat"
  export NOMOAT_TEST_RUNNER="$runner"
  export NOMOAT_TEST_SKIP=model_every_isa
  tests=$TESTS
  if [ "$cpu" = cortex-a53 ]; then
    tests=test_kernels
    export NOMOAT_TEST_ONLY=isa_selection,isa_conversion,isa_vs_scalar,isa_extreme_blocks,matmul_t,isa_golden
  fi
  for t in $tests; do
    [ -x "$BUILD/tests/$t" ] || { echo "[aarch64 $cpu] $t: not built"; failed=$((failed + 1)); continue; }
    log=$(mktemp)
    start=$(date +%s)
    $runner "$BUILD/tests/$t" >"$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    res=$(grep -E '^RESULT passed=[0-9]+ failed=[0-9]+' "$log" | tail -n 1)
    p=0; f=0
    if [ -n "$res" ]; then
      p=$(echo "$res" | sed -E 's/.*passed=([0-9]+).*/\1/')
      f=$(echo "$res" | sed -E 's/.*failed=([0-9]+).*/\1/')
    fi
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    passed=$((passed + p)); failed=$((failed + f))
    if [ "$f" -ne 0 ]; then
      echo "[aarch64 $cpu] $t: $p passed, $f failed (exit $rc, ${secs}s)"
      grep -vE '^ok ' "$log" | tail -n 40 | sed 's/^/    /'
    else
      echo "[aarch64 $cpu] $t: $p passed (${secs}s)"
    fi
    rm -f "$log"
  done
  unset NOMOAT_TEST_ONLY
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
