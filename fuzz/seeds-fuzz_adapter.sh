#!/usr/bin/env bash
# seeds-fuzz_adapter.sh SHARED CORPUS - PEFT configs (first byte 0) and a
# small GGUF LoRA (first byte 1) written byte by byte.
set -eu
corpus=$2
printf '\000{"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16.0, "use_rslora": false, "target_modules": ["q_proj", "v_proj"], "bias": "none", "rank_pattern": {}, "alpha_pattern": {}}' > "$corpus/cfg-peft"
printf '\000{"r": 4, "lora_alpha": 8, "use_rslora": true, "base_model_name_or_path": "x", "rank_pattern": {"q_proj": 2}}' > "$corpus/cfg-rs"
le() { local v=$1 n=$2 i; for ((i = 0; i < n; i++)); do printf "\\$(printf %03o $((v & 255)))"; v=$((v >> 8)); done; }
str() { le ${#1} 8; printf '%s' "$1"; }
kvs() { str "$1"; le 8 4; str "$2"; }
f=$corpus/lora.gguf
{
  printf '\001GGUF'; le 3 4; le 2 8; le 4 8
  kvs general.architecture llama; kvs general.type adapter; kvs adapter.type lora
  str adapter.lora.alpha; le 6 4; le $((0x41000000)) 4
  str blk.0.attn_q.weight.lora_a; le 2 4; le 4 8; le 2 8; le 0 4; le 0 8
  str blk.0.attn_q.weight.lora_b; le 2 4; le 2 8; le 4 8; le 0 4; le 32 8
} > "$f"
size=$(stat -c %s "$f")
truncate -s $(( 1 + (size - 1 + 31) / 32 * 32 )) "$f"
for i in $(seq 1 16); do le $((0x3e800000)) 4; done >> "$f"
exit 0
