/*
 * lora.h - LoRA adapters in memory (internals of nm_lora, see nomoat.h).
 *
 * An adapter holds, for each layer and each of the seven projections it
 * adapts, A [r x in] and B [out x r]; the projection becomes
 *     y = W x + (user scale) * (file scale) * B (A x)
 * with file scale = alpha / r (PEFT, llama.cpp) or alpha / sqrt(r) (rsLoRA).
 * B is kept transposed (Bt [r x out]): the product adds the rows of Bt
 * weighted by A x (an axpy along `out`), and the columns of B, which QR and
 * the merges work on, are contiguous.
 *
 * Row order.  llama.cpp's converter permutes the rows of each head of q and
 * k for LLaMA-style RoPE (adjacent pairs); Hugging Face, and so PEFT, keep
 * the original order (see src/train/adapter.h).  In memory the `out` index
 * of q/k is in GGUF order as soon as the head size is known; a PEFT file
 * from elsewhere read without a model keeps HF order (qk_hf) until it is
 * bound to one.  Writers convert to the order of their format.
 */
#ifndef NM_MODEL_LORA_H
#define NM_MODEL_LORA_H

#include "model/fingerprint.h"
#include "model/model.h"

/* What an adapter must fit: the projections' shapes and the q/k row order. */
typedef struct nm_lora_layout {
    char arch[32];
    int64_t n_layer;
    int64_t in[NM_PROJ_COUNT], out[NM_PROJ_COUNT];
    int64_t head_dim;
    bool permute_qk; /* GGUF q/k rows differ from HF ones (LLaMA RoPE) */
} nm_lora_layout;

void nm_lora_layout_of_model(const nm_model *m, nm_lora_layout *lay);

typedef struct nm_lora_mod {
    int64_t r, in, out; /* r == 0: this projection is not adapted */
    float scale;        /* alpha / r or alpha / sqrt(r) */
    float *A;           /* [r][in]  */
    float *Bt;          /* [r][out] */
} nm_lora_mod;

/* One adapter an adapter was trained on top of (provenance). */
typedef struct nm_lora_prov {
    char fp[NM_FP_HEX];
    float scale;
    char name[64];
} nm_lora_prov;

struct nm_lora {
    const nm_model *model;   /* bound to this model's contexts, or NULL */
    int64_t n_layer;
    nm_lora_mod *mods;       /* [n_layer * NM_PROJ_COUNT] */
    int64_t rank;            /* the config's r (the largest module rank) */
    float alpha;
    bool rslora;
    bool qk_hf;              /* q/k rows of Bt still in HF order */
    int64_t head_dim;        /* 0: unknown */
    bool permute_qk;         /* meaningful when head_dim > 0 */
    char arch[32];           /* "" when the file does not say */
    char *path, *base_name;  /* owned; base_name may be NULL */
    const char *format;      /* "peft" or "gguf" (static) */
    bool has_base_fp;
    char base_fp[NM_FP_HEX];
    char *base_sig;          /* owned, NULL if none */
    nm_lora_prov *under;     /* owned: the adapters below it when trained */
    size_t n_under;
    char fp[NM_FP_HEX];      /* content fingerprint */
    uint64_t n_params;
    uint64_t file_bytes;     /* size on disk when read from files (0: in memory) */
    float *arena;
};

/* ---- building (readers, merges, tests) ----
 * nm_lora_create makes an empty adapter of n_layer layers; nm_lora_shape
 * declares a module; nm_lora_alloc allocates every declared module (values
 * zero); nm_lora_finish computes the fingerprint and the counts. */
nm_lora *nm_lora_create(int64_t n_layer);
nm_lora_mod *nm_lora_mod_at(const nm_lora *l, int64_t layer, nm_proj p);
nm_status nm_lora_shape(nm_lora *l, int64_t layer, nm_proj p, int64_t r, int64_t in, int64_t out, nm_err *err);
nm_status nm_lora_alloc(nm_lora *l, nm_err *err);
void nm_lora_finish(nm_lora *l);
/* The scale of rank r under alpha (and rsLoRA); alpha 0 (a GGUF LoRA
 * without adapter.lora.alpha) means 1, as in llama.cpp. */
float nm_lora_scale_for(float alpha, bool rslora, int64_t r);
/* Sets the file-level metadata strings (copied). */
nm_status nm_lora_set_strings(nm_lora *l, const char *path, const char *base_name, const char *base_sig,
                              nm_err *err);
/* Parses a JSON array of {"fingerprint","scale","name"} into l->under. */
nm_status nm_lora_parse_under(nm_lora *l, const char *json, nm_err *err);
/* The same array as JSON (malloc()ed); "[]" when empty. */
char *nm_lora_under_json(const nm_lora_prov *p, size_t n);

/* Puts q/k rows into GGUF order (hf = false) or HF order (hf = true) in
 * place; needs head_dim.  No-op when they already are, or permute_qk is
 * false. */
nm_status nm_lora_set_row_order(nm_lora *l, bool hf, nm_err *err);
/* Checks every module against the layout (names that match no projection
 * were rejected by the readers; here: layers beyond the model, in/out
 * sizes) and puts rows in GGUF order. */
nm_status nm_lora_fit(nm_lora *l, const nm_lora_layout *lay, nm_err *err);
/* nm_lora_fit to m's layout, then bound to m (its contexts accept it). */
nm_status nm_lora_bind(nm_lora *l, const nm_model *m, nm_err *err);
/* B of module (layer, p) as [out][r] into dst, q/k rows in HF order (hf)
 * or GGUF order; fails when that needs a head size the adapter lacks. */
nm_status nm_lora_get_b(const nm_lora *l, int64_t layer, nm_proj p, bool hf, float *dst, nm_err *err);

/* ---- formats (src/formats/peft.c, src/formats/gguf_lora.c) ---- */
/* True if path is a directory (or a .safetensors file) holding a PEFT adapter. */
bool nm_peft_is_adapter(const char *path);
nm_status nm_peft_read(const char *path, nm_lora **out, nm_err *err);
/* type: F32, F16 or BF16. */
nm_status nm_peft_write(const nm_lora *l, const char *dir, nm_type type, nm_err *err);
/* Reads a GGUF LoRA from a buffer (fuzzing) or a file. */
nm_status nm_gguf_lora_read(const char *path, nm_lora **out, nm_err *err);
nm_status nm_gguf_lora_read_gguf(const nm_gguf *g, nm_lora **out, nm_err *err);
/* type: F32, F16, BF16 or Q8_0 (rows that do not fit Q8_0 blocks stay F32). */
nm_status nm_gguf_lora_write(const nm_lora *l, const char *path, nm_type type, nm_err *err);
/* PEFT's config JSON, parsed for the fuzzer and the reader: rank, alpha,
 * rslora and the base name; fails on anything this reader cannot honour
 * (DoRA, bias, modules_to_save, alpha_pattern...). */
typedef struct nm_peft_config {
    int64_t r;
    float alpha;
    bool rslora;
    bool rank_pattern; /* per-module ranks: taken from the tensor shapes */
    char base_name[256];
} nm_peft_config;
nm_status nm_peft_parse_config(const char *text, size_t len, const char *name, nm_peft_config *cfg, nm_err *err);

/* ---- provenance ----
 * Whether l may go on the model whose file is g: its base fingerprint is
 * g's, or g is a merge made from that base, or its base signature matches
 * g's weights (another storage type).  Otherwise an error naming both, or
 * with force a warning.  No fingerprint at all: a warning. *merged_ok is
 * set when the match went through g's merge record (may be NULL). */
nm_status nm_lora_check_base(const nm_lora *l, const nm_gguf *g, bool force, const nm_log *log, bool *merged_ok,
                             nm_err *err);
/* nm_lora_check_stack for the model whose file is g. */
void nm_lora_check_stack_gguf(const nm_gguf *g, const nm_lora_entry *items, size_t n, const nm_log *log);
/* The merge record of g (adapters folded into it), or n = 0. */
nm_status nm_lora_merged_list(const nm_gguf *g, nm_lora_prov **out, size_t *n);

/* ---- the forward pass ---- */
/* y[t][out] += s * Bt^T (A x[t]) for t < n, over rows in blocks of
 * NM_LORA_ROWS with u ([NM_LORA_ROWS][r] floats) as scratch. */
#define NM_LORA_ROWS 32
void nm_lora_mod_fwd(const nm_lora_mod *m, float s, const float *x, float *y, int64_t n, float *u);
/* dx[t][in] += s * A^T (Bt dy[t]): the input gradient through a frozen
 * module (training on a stack). */
void nm_lora_mod_bwd_dx(const nm_lora_mod *m, float s, const float *dy, float *dx, int64_t n, float *u);

/* A context's attached stack. */
typedef struct nm_lora_stack {
    size_t n;
    nm_lora_entry *items;
    int64_t r_max;
    float *u; /* NM_LORA_ROWS * r_max */
} nm_lora_stack;
void nm_lora_stack_free(nm_lora_stack *s);
/* What nm_model_proj adds for one sequence: rows [0, n) of x (in floats
 * each) and y (out floats each). */
void nm_lora_apply(nm_lora_stack *s, int64_t layer, nm_proj p, const float *x, float *y, int64_t n);

#endif
