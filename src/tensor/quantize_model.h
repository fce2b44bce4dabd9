/*
 * quantize_model.h - rewrite a GGUF model with quantized weight matrices
 * (what `nomoat quantize` runs): a single type or one of llama.cpp's mixed
 * recipes, files llama.cpp loads as its own.
 */
#ifndef NM_QUANTIZE_MODEL_H
#define NM_QUANTIZE_MODEL_H

#include "nomoat.h"

/* Recipes: "q8_0", "q4_0", "q4_k", "q5_k", "q6_k" (every weight matrix in
 * that type, except what llama.cpp also treats apart: output.weight - or
 * token_embd.weight when the embeddings are tied - gets Q6_K unless the
 * type is Q8_0), "q4_k_m", "q5_k_m" (llama.cpp's mixes: Q4_K / Q5_K, with
 * Q6_K for output.weight and for attn_v and ffn_down in the layers
 * llama.cpp's use_more_bits picks).  pure: every matrix in the recipe's
 * base type, output included.  A matrix whose rows do not fit the type's
 * blocks falls back as llama.cpp does (Q4_K -> Q5_0, Q5_K -> Q5_1,
 * Q6_K -> Q8_0, then F16).  Norms and other 1-D tensors are copied. */
typedef struct nm_quant_tensor_info {
    const char *name;
    int64_t rows, cols;
    nm_type from, to;
    double rms_err;     /* sqrt(mean((dequant(quant(w)) - w)^2)); 0 if copied */
    double rms_w;       /* sqrt(mean(w^2)) of the source                    */
    bool copied;        /* written as stored (type unchanged)               */
} nm_quant_tensor_info;

typedef struct nm_quantize_params {
    const char *recipe;
    bool pure;
    int n_threads;      /* 0: all CPUs */
    /* called once per tensor, in file order, as it is written */
    void (*on_tensor)(void *user, const nm_quant_tensor_info *info);
    void *user;
} nm_quantize_params;

/* Base weight type of a recipe name (case-insensitive), or -1. */
int nm_quant_recipe_type(const char *recipe);

/* The type a tensor gets under a recipe.  layer/n_layers: the tensor's
 * block index and the block count (-1 / 0 for tensors outside blocks);
 * has_output: the model has an output.weight (else token_embd.weight is
 * the output). Returns the tensor's own type for tensors that are not
 * quantized (1-D, norms). */
nm_type nm_quant_tensor_type(const char *recipe, bool pure, const char *name, int n_dims, int64_t ne0, nm_type stored,
                             int layer, int n_layers, bool has_output);

/* llama.cpp's general.file_type for a recipe (-1 if unknown). */
int nm_quant_recipe_ftype(const char *recipe);

nm_status nm_quantize_model(const char *in_path, const char *out_path, const nm_quantize_params *p, const nm_log *log,
                            nm_err *err);

#endif
