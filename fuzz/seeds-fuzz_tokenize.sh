#!/usr/bin/env bash
# seeds-fuzz_tokenize.sh SHARED CORPUS - lines of the tokenizer vectors, each
# behind a selector byte for every vocabulary.
set -eu
shared=$1; corpus=$2
i=0
for f in "$shared"/vocab/*.inp; do
  awk 'BEGIN{RS="\n__ggml_vocab_test__\n"} {print > "/dev/stdout"}' "$f" 2>/dev/null | head -c 20000 | split -l 3 - "$corpus/tmp-$i-"
  i=$((i + 1))
done
n=0
for t in "$corpus"/tmp-*; do
  for sel in 0 1 2 3 4 5 7; do
    { printf "\\x$(printf %02x $sel)"; cat "$t"; } > "$corpus/seed-$n-$sel"
  done
  rm -f "$t"; n=$((n + 1))
done
exit 0
