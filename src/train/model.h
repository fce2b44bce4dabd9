/*
 * model.h - the LLaMA model as training sees it: frozen weights read from a
 * GGUF file in their stored type, LoRA adapters (or, for full fine-tuning,
 * float32 copies of every weight) with their gradients, and one call that
 * runs the forward and backward pass of a micro-batch.
 *
 * The block, for each layer (x is the residual stream, [T x dim]):
 *   h1 = rmsnorm(x) * attn_norm
 *   q = rope(Wq h1), k = rope(Wk h1), v = Wv h1        (each + LoRA)
 *   x2 = x + Wo attn(q, k, v)
 *   h2 = rmsnorm(x2) * ffn_norm
 *   x' = x2 + Wdown (silu(Wgate h2) * (Wup h2))
 * then logits = Wout (rmsnorm(x) * output_norm) and cross-entropy.
 */
#ifndef NM_TRAIN_MODEL_H
#define NM_TRAIN_MODEL_H

#include "train/ops.h"

/* The seven projections LoRA can target, in PEFT/llama.cpp order. */
typedef enum nm_tmod {
    NM_TM_Q = 0,
    NM_TM_K,
    NM_TM_V,
    NM_TM_O,
    NM_TM_GATE,
    NM_TM_UP,
    NM_TM_DOWN,
    NM_TM_COUNT
} nm_tmod;
#define NM_TM_ALL ((1u << NM_TM_COUNT) - 1)

const char *nm_tmod_short(nm_tmod m); /* "q", "k", "v", "o", "gate", "up", "down" */
const char *nm_tmod_gguf(nm_tmod m);  /* "attn_q", ..., "ffn_down" */
const char *nm_tmod_hf(nm_tmod m);    /* "self_attn.q_proj", ..., "mlp.down_proj" */
/* "q,k,v" / "all" / "attn" / "mlp" or HF names ("q_proj") -> bit mask. */
nm_status nm_tmod_parse(const char *list, unsigned *mask, nm_err *err);

typedef struct nm_tm_hparams {
    char arch[32];
    int64_t n_vocab, dim, n_layer, n_head, n_kv, head_dim, n_ff, n_ctx, n_rot;
    float eps, rope_base, rope_freq_scale;
    bool rope_neox;
    bool tied_output; /* no output.weight: the head reuses token_embd */
} nm_tm_hparams;

typedef struct nm_tm_layer {
    nm_wmat w[NM_TM_COUNT];
    float *attn_norm, *ffn_norm; /* float copies, [dim] */
    /* full fine-tuning: gradients of the above (NULL in LoRA mode) */
    float *dw[NM_TM_COUNT], *d_attn_norm, *d_ffn_norm;
} nm_tm_layer;

/* One trainable float32 tensor: data, gradient, and its name/shape for
 * checkpoints (row-major, shape[0] rows of shape[1]). */
typedef struct nm_tparam {
    char name[112];
    float *data, *grad;
    int64_t n;
    int64_t shape[2];
    int ndim;
} nm_tparam;

typedef struct nm_tm_lora_mod {
    float *A, *B, *dA, *dB; /* A [r x in], B [out x r], NULL if not targeted */
    int64_t in, out;
} nm_tm_lora_mod;

/* A LoRA adapter on the model's projections. */
typedef struct nm_tm_lora {
    int64_t rank;
    float alpha, scale, dropout;
    bool rslora;        /* scale = alpha / sqrt(rank) instead of alpha / rank */
    unsigned targets;   /* bit mask of nm_tmod */
    int64_t n_layer;
    nm_tm_lora_mod *mods; /* [n_layer * NM_TM_COUNT] */
    nm_tparam *params;  /* every A then B, layer by layer: the optimiser's view */
    int64_t n_params;
    float *arena;       /* all data and gradients */
} nm_tm_lora;

typedef struct nm_tm_ws nm_tm_ws;

typedef struct nm_tmodel {
    nm_gguf *gguf; /* owned */
    nm_tm_hparams hp;
    nm_wmat tok_embd, output;
    float *output_norm; /* float copy */
    nm_tm_layer *layers;
    float *d_tok_embd, *d_output, *d_output_norm; /* full fine-tuning only */
    /* full fine-tuning: every weight as trainable float32 */
    bool full;
    nm_tparam *params;
    int64_t n_params;
    float *full_arena;
    /* adapters trained on top of (training on a stack): frozen, applied in
     * this order after the base product and before the trained adapter, in
     * the forward and, for the input gradient, in the backward pass */
    const nm_lora_entry *frozen; /* borrowed, n_frozen entries */
    size_t n_frozen;
    float *frozen_u;             /* scratch: nth * NM_LORA_ROWS * frozen_r floats */
    int64_t frozen_r;
    /* execution */
    nm_ops_ctx ops;
    bool checkpointing; /* recompute each layer in the backward */
    nm_tm_ws *ws;
} nm_tmodel;

/* Opens a LLaMA-architecture GGUF.  full: copy every weight into trainable
 * float32 (full fine-tuning).  pool may be NULL (one thread). */
nm_status nm_tmodel_open(const char *path, bool full, nm_pool *pool, nm_tmodel **out, nm_err *err);
void nm_tmodel_free(nm_tmodel *m);

/* Puts a frozen stack under the trained adapter (n = 0 removes it).  Each
 * adapter must fit the model: nm_lora_fit with nm_tm_layout (adapter.h).
 * items is borrowed until the next call or nm_tmodel_free. */
nm_status nm_tmodel_set_frozen(nm_tmodel *m, const nm_lora_entry *items, size_t n, nm_err *err);

/* Creates a LoRA adapter for the targeted projections.  A and B are zero:
 * call nm_tm_lora_init_peft (or fill them) before training. */
nm_status nm_tm_lora_new(const nm_tmodel *m, int64_t rank, float alpha, bool rslora, float dropout,
                         unsigned targets, nm_tm_lora **out, nm_err *err);
void nm_tm_lora_free(nm_tm_lora *l);
/* PEFT's initialisation: A ~ kaiming_uniform(a = sqrt(5)), i.e. uniform in
 * +-1/sqrt(in), drawn module by module from the seed; B = 0. */
void nm_tm_lora_init_peft(nm_tm_lora *l, uint64_t seed);
nm_tm_lora_mod *nm_tm_lora_mod_at(nm_tm_lora *l, int64_t layer, nm_tmod m);

/* A micro-batch: n_seq sequences of seq_len tokens, flattened. */
typedef struct nm_tm_batch {
    int64_t n_seq, seq_len;
    const int32_t *tokens;  /* [T] */
    const int32_t *targets; /* [T]; < 0: no loss at this position */
    const int32_t *pos;     /* [T] or NULL: 0..seq_len-1 in each sequence */
    const int32_t *doc;     /* [T] or NULL: one document per sequence */
} nm_tm_batch;

/* Forward and backward of one micro-batch.  Gradients are ACCUMULATED into
 * the LoRA gradients (lora != NULL) or the full-model gradients.  dloss is
 * the weight of each unmasked position's loss in the objective (1/N for the
 * mean over N positions of the whole optimiser step).  drop_seed makes the
 * dropout masks of this micro-batch.  Returns the sum of the position losses
 * and the number of unmasked positions. */
nm_status nm_tmodel_fwd_bwd(nm_tmodel *m, nm_tm_lora *lora, const nm_tm_batch *b, float dloss, uint64_t drop_seed,
                            double *loss_sum, int64_t *n_tok, nm_err *err);
/* A loss other than cross-entropy on the targets: distillation (teacher
 * distributions), preference tuning (weights that depend on whole-sequence
 * log-probabilities).  The head computes the logits HEAD_CHUNK positions at
 * a time (the [T x n_vocab] array never exists at once) and hands each chunk
 * to the hook.
 *  - scan (optional): a first sweep over every chunk, before any gradient is
 *    written, for objectives whose per-position gradient depends on the
 *    whole micro-batch (DPO needs each sequence's log-probability first).
 *    Costs one more output-head product per chunk.
 *  - loss: writes loss[i] for the ct positions t0..t0+ct-1 (row i of logits
 *    is position t0 + i of the flattened batch: sequence (t0+i) / seq_len)
 *    and, when backward, replaces logits in place by d(objective)/d(logits);
 *    positions without a loss get a zero row.  Returns how many positions
 *    count (what n_tok adds up).
 * c is the model's ops context: its pool can split the rows. */
typedef struct nm_tm_head {
    void (*scan)(void *user, nm_ops_ctx *c, int64_t t0, int64_t ct, int64_t V, const float *logits);
    int64_t (*loss)(void *user, nm_ops_ctx *c, int64_t t0, int64_t ct, int64_t V, float *logits, float *loss,
                    bool backward);
    void *user;
} nm_tm_head;

/* nm_tmodel_fwd_bwd / nm_tmodel_eval with the loss of hook instead of
 * cross-entropy (hook NULL: cross-entropy, dloss as there).  With a hook,
 * the hook scales its own gradient: dloss is not used.  b->targets may be
 * NULL with a hook (every position then reads -1 in the batch's targets). */
nm_status nm_tmodel_fwd_bwd_head(nm_tmodel *m, nm_tm_lora *lora, const nm_tm_batch *b, const nm_tm_head *hook,
                                 float dloss, uint64_t drop_seed, double *loss_sum, int64_t *n_tok, nm_err *err);
nm_status nm_tmodel_eval_head(nm_tmodel *m, nm_tm_lora *lora, const nm_tm_batch *b, const nm_tm_head *hook,
                              double *loss_sum, int64_t *n_tok, nm_err *err);
/* Forward only (no dropout): loss sum and count, e.g. for validation. */
nm_status nm_tmodel_eval(nm_tmodel *m, nm_tm_lora *lora, const nm_tm_batch *b, double *loss_sum, int64_t *n_tok,
                         nm_err *err);
/* Logits [n_vocab] of the last of tokens[0..n) (one sequence, no cache:
 * for tests and small checks, not for generation at speed). */
nm_status nm_tmodel_logits(nm_tmodel *m, nm_tm_lora *lora, const int32_t *tokens, int64_t n, float *out,
                           nm_err *err);
/* Bytes of activation memory a micro-batch of T tokens needs. */
uint64_t nm_tmodel_act_bytes(const nm_tmodel *m, const nm_tm_lora *lora, int64_t T);

#endif
