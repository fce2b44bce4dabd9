/*
 * adapter.h - LoRA adapters of training on disk in PEFT layout:
 *   DIR/adapter_model.safetensors  base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight [r, in]
 *                                  ... .lora_B.weight [out, r]   (F32)
 *   DIR/adapter_config.json        peft_type LORA, r, lora_alpha, target_modules, use_rslora, ...
 * The files are written and read by the adapter code of inference
 * (src/formats/peft.c, src/model/lora.c): one reader and one writer for
 * every command, with the same provenance metadata (base fingerprint and
 * signature, the adapters trained on top of).
 *
 * Row order.  GGUF stores the q and k projections of LLaMA with the rows of
 * each head permuted (llama.cpp's converter interleaves the two halves of a
 * head so that RoPE rotates adjacent pairs), while Hugging Face models (and
 * so PEFT adapters) keep the original order.  The rows of lora_B for q_proj
 * and k_proj are therefore permuted on the way out and back on the way in:
 * GGUF row h*hd + 2j + s  <->  HF row h*hd + s*hd/2 + j  (j < hd/2, s = 0, 1).
 * lora_A (input side) and every other module are the same in both.
 */
#ifndef NM_TRAIN_ADAPTER_H
#define NM_TRAIN_ADAPTER_H

#include "model/fingerprint.h" /* nm_base_fingerprint */
#include "model/lora.h"
#include "train/model.h"

#define NM_ADAPTER_WEIGHTS "adapter_model.safetensors"
#define NM_ADAPTER_CONFIG "adapter_config.json"

/* The HF row of GGUF row r of a projection with n_head heads of hd. */
int64_t nm_adapter_hf_row(int64_t r, int64_t hd);

/* The training model's projections as an adapter layout. */
void nm_tm_layout(const nm_tmodel *m, nm_lora_layout *lay);

/* Writes both files atomically.  base_name: base_model_name_or_path.
 * under[0..n_under): the frozen adapters it was trained on top of. */
nm_status nm_adapter_save_ex(const nm_tm_lora *l, const nm_tmodel *m, const char *dir, const char *base_name,
                             const nm_lora_prov *under, size_t n_under, nm_err *err);
nm_status nm_adapter_save(const nm_tm_lora *l, const nm_tmodel *m, const char *dir, const char *base_name,
                          nm_err *err);
/* Reads an adapter (PEFT, F32/F16/BF16, or GGUF LoRA) for model m into a
 * training adapter: one rank for every module (a module that is adapted
 * in some layers only has zeros in the others). */
nm_status nm_adapter_load(const nm_tmodel *m, const char *dir, nm_tm_lora **out, nm_err *err);

#endif
