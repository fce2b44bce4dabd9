#!/usr/bin/env bash
# seeds-fuzz_gguf.sh SHARED CORPUS - small valid files plus the heads of the
# real shared models (their first 64 KiB: headers, metadata, vocabularies).
set -eu
shared=$1; corpus=$2
build-fuzz/make_seeds "$corpus"
for f in "$shared"/models/*.gguf "$shared"/vocab/*.gguf; do
  [ -f "$f" ] && head -c 65536 "$f" > "$corpus/head-$(basename "$f")"
done
exit 0
