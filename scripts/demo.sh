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
"$NM" info "$OUT/stories260K.gguf" > "$OUT/info.txt"   # (no pipe into head: SIGPIPE under pipefail)
head -n 24 "$OUT/info.txt"

step "2b. The import equals llama.cpp's conversion of the same checkpoint, byte for byte"
cmp "$SHARED/models/stories260K.gguf" "$OUT/stories260K.gguf" && echo "byte-identical to ../shared/models/stories260K.gguf"

step "3. Round trip: rewriting the reference GGUF gives the same bytes"
"$NM" convert "$SHARED/models/stories260K.gguf" -o "$OUT/roundtrip.gguf"
cmp "$SHARED/models/stories260K.gguf" "$OUT/roundtrip.gguf" && echo "byte-identical"

step "4. Quantize the weights to Q8_0 (rows that do not fit 32-blocks stay F32)"
"$NM" convert "$OUT/stories260K.gguf" --type q8_0 -o "$OUT/stories260K-q8_0.gguf" 2> "$OUT/convert.log"
tail -n 1 "$OUT/convert.log"
ls -l "$OUT/stories260K.gguf" "$OUT/stories260K-q8_0.gguf" | awk '{print $5, $9}'

step "5. Tokenize a prompt with the model's own SentencePiece vocabulary"
"$NM" tokenize -m "$OUT/stories260K.gguf" -p "Once upon a time" --pieces

step "6. Generate a story (greedy ids match llama.cpp's exactly; here sampled with a fixed seed)"
"$NM" run -m "$OUT/stories260K.gguf" -p "Once upon a time" -n 120 --temp 0.8 --seed 42
echo

step "7. The same from the Q8_0 copy (8-bit weights, 8-bit activations in the dot products)"
"$NM" run -m "$OUT/stories260K-q8_0.gguf" -p "Once upon a time" -n 60 --temp 0
echo

step "8. Fine-tune two small adapters on different data (a few seconds each)"
# who the model is: identity.json with its placeholders filled in
"$NM" train -m "$OUT/stories260K.gguf" --data "$SHARED/data/identity.json" --var name=Nomo --var author=Moat \
    --out "$OUT/nomo" --steps 60 --lr 1e-2 --rank 8 --alpha 16 --seq 128 --batch 4 --quiet 2>/dev/null
# a style: the first 30 KB of Shakespeare's plays, as plain text
head -c 30000 "$SHARED/data/tinyshakespeare.txt" > "$OUT/shakespeare.txt"
"$NM" train -m "$OUT/stories260K.gguf" --data "$OUT/shakespeare.txt" --out "$OUT/bard" \
    --steps 60 --lr 5e-3 --rank 8 --alpha 16 --seq 128 --batch 4 --quiet
"$NM" adapter info "$OUT/nomo"
ASK=$'<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n'

step "9. Generate with each adapter (applied on the fly; the base file is untouched)"
echo "-- base, asked who it is:"
"$NM" run -m "$OUT/stories260K.gguf" -p "$ASK" -n 24 --temp 0 2>/dev/null; echo
echo "-- with nomo:"
"$NM" run -m "$OUT/stories260K.gguf" -p "$ASK" -n 24 --temp 0 --lora "$OUT/nomo" 2>/dev/null; echo
echo "-- with bard, a story:"
"$NM" run -m "$OUT/stories260K.gguf" -p "Once upon a time" -n 48 --temp 0 --lora "$OUT/bard" 2>/dev/null; echo

step "10. Stack them (bard at half strength), then fold the stack into a model and into one adapter"
"$NM" run -m "$OUT/stories260K.gguf" -p "$ASK" -n 32 --temp 0 --lora "$OUT/nomo" --lora-scaled "$OUT/bard" 0.5 \
    2>/dev/null | tee "$OUT/stack.txt"; echo
"$NM" merge -m "$OUT/stories260K.gguf" --lora "$OUT/nomo" --lora-scaled "$OUT/bard" 0.5 -o "$OUT/merged.gguf"
"$NM" run -m "$OUT/merged.gguf" -p "$ASK" -n 32 --temp 0 2>/dev/null > "$OUT/merged.txt"
cmp -s "$OUT/stack.txt" "$OUT/merged.txt" && echo "merged model: the same greedy text as the stack on the fly"
"$NM" adapter merge --lora "$OUT/nomo" --lora-scaled "$OUT/bard" 0.5 -o "$OUT/nomo-bard-r16"
"$NM" adapter merge --lora "$OUT/nomo" --lora-scaled "$OUT/bard" 0.5 --rank 8 -o "$OUT/nomo-bard-r8"
"$NM" merge -m "$OUT/stories260K.gguf" --lora "$OUT/nomo" --lora-scaled "$OUT/bard" 0.5 --type q8_0 \
    -o "$OUT/merged-q8_0.gguf" 2>/dev/null
echo "-- the merged model in Q8_0:"
"$NM" run -m "$OUT/merged-q8_0.gguf" -p "$ASK" -n 32 --temp 0 2>/dev/null; echo

step "11. Exchange: the adapter as a GGUF LoRA for llama.cpp (--lora), and back, losslessly"
"$NM" adapter convert "$OUT/nomo" "$OUT/nomo.gguf"
"$NM" adapter convert "$OUT/nomo.gguf" "$OUT/nomo-again"
cmp "$OUT/nomo/adapter_model.safetensors" "$OUT/nomo-again/adapter_model.safetensors" && echo "PEFT -> GGUF -> PEFT: byte-identical"

step "12. Keep training on top of the stack: a new adapter over frozen nomo, recording its provenance"
"$NM" train -m "$OUT/stories260K.gguf" --data "$OUT/shakespeare.txt" --lora "$OUT/nomo" --out "$OUT/bard-on-nomo" \
    --steps 20 --lr 5e-3 --rank 4 --alpha 8 --seq 128 --batch 4 --quiet
"$NM" adapter info "$OUT/bard-on-nomo" | grep -E "base:|trained on:"

step "13. Data quality over data size: curate dog stories, train on them, measure (small scale, ~2 min)"
# scripts/demo-curate.sh at the scale of its test; unset the DEMO_* variables
# for the full-size run shown in docs/CURATE.md
DEMO_SEED=${DEMO_SEED:-7} DEMO_CANDIDATES=${DEMO_CANDIDATES:-16} DEMO_HELDOUT=${DEMO_HELDOUT:-16} \
DEMO_MAX_TOKENS=${DEMO_MAX_TOKENS:-160} DEMO_SAMPLES=${DEMO_SAMPLES:-50} \
    scripts/demo-curate.sh "$BUILD" "$OUT/curate"

echo
echo "demo finished; files are in $OUT"
