#!/usr/bin/env bash
# demo.sh BUILD - the main job on the one real model, end to end, as far as
# nomoat goes today.  `make demo` runs it after set-up and build.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
SHARED=${NOMOAT_SHARED:-$(cd .. && pwd)/shared}
NM="$BUILD/nomoat"
OUT=${DEMO_OUT:-$BUILD/demo}
mkdir -p "$OUT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Import the llama2.c checkpoint and its tokenizer into GGUF"
"$NM" convert "$SHARED/models/stories260K.bin" --tokenizer "$SHARED/models/tok512.bin" -o "$OUT/stories260K.gguf"

step "2. Inspect it"
"$NM" info "$OUT/stories260K.gguf" | head -n 24

step "2b. The import equals llama.cpp's conversion of the same checkpoint, byte for byte"
cmp "$SHARED/models/stories260K.gguf" "$OUT/stories260K.gguf" && echo "byte-identical to ../shared/models/stories260K.gguf"

step "3. Round trip: rewriting the reference GGUF gives the same bytes"
"$NM" convert "$SHARED/models/stories260K.gguf" -o "$OUT/roundtrip.gguf"
cmp "$SHARED/models/stories260K.gguf" "$OUT/roundtrip.gguf" && echo "byte-identical"

step "4. Quantize the weights to Q8_0 (rows that do not fit 32-blocks stay F32)"
"$NM" convert "$OUT/stories260K.gguf" --type q8_0 -o "$OUT/stories260K-q8_0.gguf" 2>&1 | tail -n 1
ls -l "$OUT/stories260K.gguf" "$OUT/stories260K-q8_0.gguf" | awk '{print $5, $9}'

step "5. Tokenize a prompt with the model's own SentencePiece vocabulary"
"$NM" tokenize -m "$OUT/stories260K.gguf" -p "Once upon a time" --pieces

step "6. Generate a story (greedy ids match llama.cpp's exactly; here sampled with a fixed seed)"
"$NM" run -m "$OUT/stories260K.gguf" -p "Once upon a time" -n 120 --temp 0.8 --seed 42
echo

step "7. The same from the Q8_0 copy (8-bit weights, 8-bit activations in the dot products)"
"$NM" run -m "$OUT/stories260K-q8_0.gguf" -p "Once upon a time" -n 60 --temp 0
echo

echo
echo "demo finished; files are in $OUT"
