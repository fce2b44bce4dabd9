#!/usr/bin/env bash
# seeds-fuzz_pref.sh SHARED CORPUS - preference pairs in every layout (the
# first records of the DPO demo file, flat pairs, HH-RLHF transcripts), each
# behind a few selector bytes.
set -eu
shared=$1; corpus=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
head -c 6000 "$shared/data/dpo_en_demo.json" > "$tmp/demo" || true
printf '%s\n' '{"prompt":"Tell me a story.","chosen":"Once upon a time.","rejected":"No."}' \
  '{"prompt":[{"role":"user","content":"Hi"}],"chosen":[{"role":"assistant","content":"Hello"}],"rejected":"Go away","system":"Be kind."}' > "$tmp/flat"
printf '%s\n' '[{"chosen":"\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A story?\n\nAssistant: Once upon a time.","rejected":"\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A story?\n\nAssistant: No."}]' > "$tmp/hh"
for f in demo flat hh; do
  for sel in 0f 4f 8f c3; do
    { printf "\\x$sel"; cat "$tmp/$f"; } > "$corpus/seed-$f-$sel"
  done
done
exit 0
