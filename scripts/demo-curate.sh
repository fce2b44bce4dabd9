#!/usr/bin/env bash
# demo-curate.sh BUILD [WORKDIR] - "data quality over data size" end to end
# on the one real model, stories260K:
#   1. generate a few hundred stories from a list of openings;
#   2. keep those in which a dog appears (a regular expression) and that the
#      judge finds likely enough (mean log-probability), as plain text;
#   3. de-duplicate them, and decontaminate them against held-out dog
#      stories generated apart (different openings and seeds);
#   4. LoRA-train an adapter on what is left;
#   5. measure: perplexity on the held-out dog stories (and, as a control,
#      on held-out stories without a dog), and the share of freshly sampled
#      stories with a dog, before and after.
# Prints the numbers and writes WORKDIR/summary.json (tests/test_curate_demo.c
# reads it).  Scale with DEMO_CANDIDATES (per opening, 25), DEMO_MAX_TOKENS
# (256), DEMO_HELDOUT (held-out stories per held-out opening, 40), DEMO_SAMPLES
# (fresh samples per opening for the share, 50), DEMO_STEPS (optimiser steps
# of 8 x 256 tokens, 16: a fixed amount of training whatever the number of
# stories kept), DEMO_LR (2e-3), DEMO_RANK (8), DEMO_SEED (1).
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."
SHARED=${NOMOAT_SHARED:-$(cd .. && pwd)/shared}
NM="$BUILD/nomoat"
W=${2:-$BUILD/demo-curate}
mkdir -p "$W"
M="$SHARED/models/stories260K.gguf"
N=${DEMO_CANDIDATES:-25}
HN=${DEMO_HELDOUT:-40}
TOK=${DEMO_MAX_TOKENS:-256}
S=${DEMO_SAMPLES:-50}
SEED=${DEMO_SEED:-1}
STEPS=${DEMO_STEPS:-16}
LR=${DEMO_LR:-2e-3}
RANK=${DEMO_RANK:-8}
DOG='(?i)\b(dog|dogs|puppy|puppies)\b'
# sampling: the default chain everywhere (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cat > "$W/openings.txt" <<'TXT'
Once upon a time
One day
There was a little girl named Lily
Tom was a happy boy
It was a sunny day
Sara and Ben
A long time ago
Once upon a time, there was a
One morning
The little bird
Max was
In a small house
Mom said
The sun was
Anna liked to
Tim and Sue
TXT
cat > "$W/heldout-openings.txt" <<'TXT'
Lucy and her mom
Once there was a boy
The park was
One evening
Ben had a
After lunch
TXT
cat > "$W/fresh-openings.txt" <<'TXT'
Once upon a time
One day
It was a sunny day
The little girl
TXT

step "1. Generate: $N stories per opening (16 openings), seed $SEED"
"$NM" curate generate -m "$M" --prompts "$W/openings.txt" -n "$N" --max-tokens "$TOK" \
    --seed "$SEED" -o "$W/candidates.jsonl"

step "2. Held-out stories (other openings and seeds), split into those with and without a dog"
"$NM" curate generate -m "$M" --prompts "$W/heldout-openings.txt" -n "$HN" --max-tokens "$TOK" \
    --seed $((SEED + 1000)) -o "$W/heldout.jsonl"
"$NM" curate score --in "$W/heldout.jsonl" --must-match "$DOG" --format text -o "$W/heldout-dog.txt" > "$W/score-dog.log"; head -n 1 "$W/score-dog.log"
"$NM" curate score --in "$W/heldout.jsonl" --must-not-match "$DOG" --format text -o "$W/heldout-other.txt" > "$W/score-other.log"; head -n 1 "$W/score-other.log"

step "3. Score and keep: a dog must appear (regex gate), the judge's mean log-probability >= -1.2"
"$NM" curate score --in "$W/candidates.jsonl" --must-match "$DOG" --judge "$M" --judge-min -1.2 \
    --repetition 3 --repetition-weight 0 --format text -o "$W/dog.txt" --all "$W/scored.jsonl"

step "4. Clean: exact and near duplicates, and anything sharing 13 words in a row with the held-out stories"
"$NM" curate clean "$W/dog.txt" --split paragraphs --eval "$W/heldout-dog.txt" --eval "$W/heldout-other.txt" \
    -o "$W/dog-clean.txt" --report-json "$W/clean-report.json" --examples 2

step "5. LoRA-train on the clean dog stories (rank $RANK, $STEPS steps of 8 x 256 tokens at learning rate $LR)"
rm -rf "$W/tuned"
"$NM" train -m "$M" --data "$W/dog-clean.txt" --format text --rank "$RANK" --alpha $((2 * RANK)) --steps "$STEPS" \
    --seq 256 --batch 8 --lr "$LR" --seed "$SEED" --out "$W/tuned" --quiet
T=(--lora "$W/tuned")

step "6. Perplexity on held-out stories, before and after"
pb=$("$NM" eval ppl -m "$M" --data "$W/heldout-dog.txt" --format text --ctx 256 --json)
pt=$("$NM" eval ppl -m "$M" "${T[@]}" --data "$W/heldout-dog.txt" --format text --ctx 256 --json)
ob=$("$NM" eval ppl -m "$M" --data "$W/heldout-other.txt" --format text --ctx 256 --json)
ot=$("$NM" eval ppl -m "$M" "${T[@]}" --data "$W/heldout-other.txt" --format text --ctx 256 --json)
echo "dog stories:    base $pb"
echo "                tuned $pt"
echo "other stories:  base $ob"
echo "                tuned $ot"

step "7. Share of freshly sampled stories with a dog ($S per opening, seed $((SEED + 2000)))"
sb=$("$NM" eval match -m "$M" --prompts "$W/fresh-openings.txt" -n "$S" --max-tokens "$TOK" \
    --seed $((SEED + 2000)) --regex "$DOG" --json)
st=$("$NM" eval match -m "$M" "${T[@]}" --prompts "$W/fresh-openings.txt" -n "$S" --max-tokens "$TOK" \
    --seed $((SEED + 2000)) --regex "$DOG" --json)
echo "base  $sb"
echo "tuned $st"

kept=$(grep -c '^$' "$W/dog.txt" || true)
clean=$(grep -c '^$' "$W/dog-clean.txt" || true)
cat > "$W/summary.json" <<JSON
{"seed": $SEED, "candidates": $((16 * N)), "kept": $kept, "clean": $clean,
 "ppl_dog": {"base": $pb, "tuned": $pt},
 "ppl_other": {"base": $ob, "tuned": $ot},
 "share": {"base": $sb, "tuned": $st}}
JSON
echo
echo "summary: $W/summary.json"
