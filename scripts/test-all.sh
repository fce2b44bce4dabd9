#!/usr/bin/env bash
# test-all.sh - what `make test` runs: the suite on the normal build, the same
# suite under ASan+UBSan, and a bounded libFuzzer run of every fuzz target.
# Ends with one line "N passed, N failed" over all phases.
set -u
cd "$(dirname "$0")/.."
JOBS=$(nproc 2>/dev/null || echo 2)
total_p=0; total_f=0
phase() { # LABEL CMD...
  local label=$1; shift
  local out; out=$(mktemp)
  "$@" 2>&1 | tee "$out"
  local line; line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1)
  if [ -n "$line" ]; then
    total_p=$((total_p + $(echo "$line" | cut -d' ' -f1)))
    total_f=$((total_f + $(echo "$line" | cut -d' ' -f3)))
  else
    echo "[$label] did not report results"; total_f=$((total_f + 1))
  fi
  rm -f "$out"
}
build() { make --no-print-directory -j"$JOBS" "$@" >/dev/null || { make --no-print-directory "$@"; return 1; }; }

if build all tests; then
  phase normal scripts/run-tests.sh build normal
else
  echo "[normal] build failed"; total_f=$((total_f + 1))
fi
if build SAN=1 all tests; then
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    phase asan+ubsan scripts/run-tests.sh build-san asan+ubsan
else
  echo "[asan+ubsan] build failed"; total_f=$((total_f + 1))
fi
# ---- aarch64 under qemu (kernels, issue 7): cross build, then the kernel,
# type, quantization and model tests on emulated ARM cores ----
if build cross-aarch64; then
  phase aarch64 scripts/test-aarch64.sh build-aarch64
else
  echo "[aarch64] cross build failed"; total_f=$((total_f + 1))
fi
# ---- end aarch64 ----
# ---- MPI (data-parallel training, issue 12): the MPI build and its one test
# program, which starts real 2-rank jobs with mpirun and checks that the
# default build (build/nomoat, above) refuses to run under it ----
if build MPI=1 all build-mpi/tests/test_mpi; then
  NOMOAT_PLAIN_BIN=$PWD/build/nomoat phase mpi scripts/run-tests.sh build-mpi mpi
else
  echo "[mpi] build failed"; total_f=$((total_f + 1))
fi
# ---- end MPI ----
phase fuzz make --no-print-directory fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
echo "== all phases =="
echo "$total_p passed, $total_f failed"
[ "$total_f" -eq 0 ]
