#!/usr/bin/env bash
# demo.sh BUILD - the main job on the one real model, end to end, as far as
# nomoat goes today.  `make demo` runs it after set-up and build.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
SHARED=${NOMOAT_SHARED:-$(cd .. && pwd)/shared}
NM="$BUILD/nomoat"
OUT=${DEMO_OUT:-$BUILD/demo}
# The demo's own folder, made afresh: training refuses to overwrite a run
# (it may be hours of work), so a second `make demo` starts clean instead.
if [ -z "${DEMO_OUT:-}" ]; then rm -rf "$OUT"; fi
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

step "14. Distil a stack into one adapter: the teacher (bard + nomo at 0.3) runs once, the student learns its distributions"
STACK=(--lora "$OUT/bard" --lora-scaled "$OUT/nomo" 0.3)
for s in $(seq 1 60); do "$NM" run -m "$OUT/stories260K.gguf" -p "Once upon a time" -n 200 --temp 0.9 --seed "$s" \
    "${STACK[@]}" 2>/dev/null; printf '\n\n'; done > "$OUT/teacher.txt"
for s in $(seq 101 115); do "$NM" run -m "$OUT/stories260K.gguf" -p "Once upon a time" -n 200 --temp 0.9 --seed "$s" \
    "${STACK[@]}" 2>/dev/null; printf '\n\n'; done > "$OUT/teacher-heldout.txt"
"$NM" distill cache -t "$OUT/stories260K.gguf" "${STACK[@]}" --data "$OUT/teacher.txt" --seq 64 --top-k 16 \
    -o "$OUT/teacher.kd" 2>&1 | tail -n 1
"$NM" distill train --cache "$OUT/teacher.kd" -m "$OUT/stories260K.gguf" --data "$OUT/teacher.txt" \
    --out "$OUT/distilled" --rank 8 --alpha 16 --steps 150 --batch 8 --lr 5e-3 --quiet
"$NM" train -m "$OUT/stories260K.gguf" --data "$OUT/teacher.txt" --seq 64 --out "$OUT/ce-only" \
    --rank 8 --alpha 16 --steps 150 --batch 8 --lr 5e-3 --quiet
"$NM" adapter merge "${STACK[@]}" --rank 8 -o "$OUT/stack-svd8" 2>/dev/null
echo "-- perplexity on held-out text the stack wrote (lower: closer to the stack):"
ppl() { "$NM" eval ppl -m "$OUT/stories260K.gguf" --data "$OUT/teacher-heldout.txt" --ctx 64 "$@" 2>/dev/null |
        sed -n 's/^perplexity: \([0-9.]*\).*/\1/p'; }
printf '   base alone            %s\n' "$(ppl)"
printf '   the stack (teacher)   %s\n' "$(ppl "${STACK[@]}")"
printf '   SVD merge, rank 8     %s\n' "$(ppl --lora "$OUT/stack-svd8")"
printf '   distilled, rank 8     %s\n' "$(ppl --lora "$OUT/distilled")"
printf '   same text, CE only    %s\n' "$(ppl --lora "$OUT/ce-only")"

step "15. Preference tuning (DPO) on chosen/rejected pairs, the frozen model itself as the reference"
# dpo_en_demo.json is an English assistant set, far beyond a 260K-parameter story model: this shows
# the mechanics (rewards and accuracy in the progress line); docs/DPO.md measures a held-out effect
"$NM" train --dpo -m "$OUT/stories260K.gguf" --data "$SHARED/data/dpo_en_demo.json" --out "$OUT/dpo" \
    --seq 128 --batch 4 --steps 30 --lr 5e-3 --beta 0.1 --val-split 0.1 --eval-every 15 2>&1 | grep -E "^step (1|15|30)/|DPO"

echo
echo "demo finished; files are in $OUT"
