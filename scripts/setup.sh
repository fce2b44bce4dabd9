#!/usr/bin/env bash
# setup.sh - install the Debian packages nomoat builds and tests with, if any
# are missing.  Safe to run again: it does nothing when all are present.
set -euo pipefail

PKGS=(
  gcc make pkg-config             # the build
  libjansson-dev                  # JSON (metadata, golden files, server)
  libpcre2-dev                    # Unicode regexes for BPE pre-tokenizers
  libmicrohttpd-dev               # HTTP server of nomoat serve
  libopenblas-dev                 # sgemm for full training's weight gradient (optional: make BLAS=0)
  libopenmpi-dev openmpi-bin      # data-parallel training (make MPI=1, mpirun; tests/test_mpi.c)
  chromium                        # headless browser test of the serve chat page
  clang libclang-rt-14-dev        # libFuzzer and sanitizer runtimes
  gcc-aarch64-linux-gnu qemu-user libc6-dev-arm64-cross  # ARM cross build, tests under qemu (make cross-aarch64)
  libjansson-dev:arm64 libpcre2-dev:arm64 libmicrohttpd-dev:arm64  # its libraries (needs: dpkg --add-architecture arm64)
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# Node.js runs the serve tests (tests/serve); a node from elsewhere (e.g.
# NodeSource, which bundles npm) is used as it is.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi

# npm packages of the browser and OpenAI-client tests (tests/serve), pinned by
# its package-lock.json; several test programs use them, so they are
# installed here, once, rather than by whichever test runs first.
install_npm() {
  local dir
  dir="$(cd "$(dirname "$0")/.." && pwd)/tests/serve"
  if [ -f "$dir/package-lock.json" ] && [ ! -d "$dir/node_modules" ] && command -v npm >/dev/null 2>&1; then
    echo "setup: installing the npm packages of tests/serve"
    (cd "$dir" && npm ci --no-audit --no-fund >/dev/null) || {
      echo "setup: npm ci failed in $dir" >&2; return 1; }
  fi
  return 0
}

if [ ${#missing[@]} -eq 0 ]; then
  install_npm
  exit $?
fi

echo "setup: installing missing Debian packages: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: not root; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# The :arm64 libraries of the cross build need arm64 as a foreign
# architecture (and fresh package lists that include it).
if printf '%s\n' "${missing[@]}" | grep -q ':arm64$' && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update
fi
if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
install_npm
