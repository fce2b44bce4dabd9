/*
 * ops.h - the operations of a LLaMA block, each with its forward and its
 * hand-written backward (llm.c style), used by LoRA and full fine-tuning.
 *
 * Conventions shared by every op:
 *  - Activations are float32, row-major: a [T x C] array holds T token rows
 *    of C features.  T counts all tokens of a micro-batch (n_seq * seq_len),
 *    so every matrix product is one batched product per micro-batch and each
 *    frozen weight is read once per micro-batch, not once per token.
 *  - Weight matrices follow ggml: a [rows x cols] matrix stores `rows` output
 *    features, each a row of `cols` input features (GGUF ne[0] = cols), and
 *    the product is y = x W^T.
 *  - Backward functions ACCUMULATE (+=) into the gradients they produce; the
 *    caller zeroes them.  That makes residual connections and weights used
 *    several times (q, k, v all read the same normalised input) free.
 *  - Work is split between the threads of an nm_ops_ctx so that each output
 *    element is computed entirely by one thread in a fixed order: results are
 *    bit-identical whatever the thread count.
 */
#ifndef NM_TRAIN_OPS_H
#define NM_TRAIN_OPS_H

#include "nomoat.h"
#include "base/threads.h"
#include "tensor/types.h"

/* Where the ops run: a thread pool (NULL: the calling thread alone) and one
 * scratch area per thread, large enough for what matmuls dequantize
 * (NM_OPS_TILE rows of the widest matrix).  The forward dequantizes
 * NM_OPS_TILE_FWD rows at a time and uses them for every token; the
 * backward NM_OPS_TILE rows, a column range per thread. */
#define NM_OPS_TILE 128
#define NM_OPS_TILE_FWD 16
typedef struct nm_ops_ctx {
    nm_pool *pool;      /* borrowed; NULL runs everything serially */
    int nth;
    float *scratch;     /* nth * scratch_per_thread floats, owned */
    size_t scratch_per_thread;
} nm_ops_ctx;

/* max_cols: the longest weight row any matmul will see. */
nm_status nm_ops_ctx_init(nm_ops_ctx *c, nm_pool *pool, int64_t max_cols, nm_err *err);
void nm_ops_ctx_deinit(nm_ops_ctx *c);

/* A frozen weight matrix in its stored type (F32, F16, BF16 or any
 * quantized type with a to_float), dequantized tile by tile inside the
 * kernels: no full float copy of the model ever exists. */
typedef struct nm_wmat {
    const void *data;
    nm_type type;
    int64_t rows, cols;
    size_t row_bytes;
    nm_to_float_fn to_float;
    int64_t blck;      /* elements per quantization block */
    size_t blck_bytes;
} nm_wmat;

/* Fails if the type cannot be dequantized or cols is not a multiple of its
 * block size.  name is used in the message. */
nm_status nm_wmat_init(nm_wmat *w, const char *name, const void *data, nm_type type, int64_t rows,
                       int64_t cols, nm_err *err);
/* Row r as floats into dst[cols]. */
void nm_wmat_row(const nm_wmat *w, int64_t r, float *dst);

/* ---- embedding: x[t] = E[tok[t]] --------------------------------------- */
void nm_op_embed_fwd(nm_ops_ctx *c, float *x, const int32_t *tok, int64_t T, const nm_wmat *E);
/* dE (F32, [n_vocab x dim]) += rows of dx scattered by token. */
void nm_op_embed_bwd(nm_ops_ctx *c, float *dE, const float *dx, const int32_t *tok, int64_t T, int64_t dim);

/* ---- RMSNorm: y = x / sqrt(mean(x^2) + eps) * w ------------------------- */
/* rstd[T] saved for the backward. */
void nm_op_rmsnorm_fwd(nm_ops_ctx *c, float *y, float *rstd, const float *x, const float *w, int64_t T,
                       int64_t C, float eps);
/* dx += ..., dw += ... (dw may be NULL: frozen norm weight). */
void nm_op_rmsnorm_bwd(nm_ops_ctx *c, float *dx, float *dw, const float *dy, const float *x, const float *w,
                       const float *rstd, int64_t T, int64_t C);

/* ---- matmul over a frozen typed weight: y = x W^T ----------------------- */
/* y [T x W->rows] is overwritten. */
void nm_op_matmul_fwd(nm_ops_ctx *c, float *y, const float *x, const nm_wmat *W, int64_t T);
/* dx [T x W->cols] += dy W (skipped when dx is NULL).  dW, if not NULL, is the float32 gradient of
 * W ([rows x cols], full fine-tuning) and gets += dy^T x (x needed then). */
void nm_op_matmul_bwd(nm_ops_ctx *c, float *dx, float *dW, const float *dy, const float *x, const nm_wmat *W,
                      int64_t T);

/* ---- LoRA: y += s * B (A drop(x)) --------------------------------------- */
/* A is [r x in], B is [out x r] (row-major float32, PEFT's layout).  With
 * dropout p > 0, drop(x) zeroes each element of x with probability p and
 * scales the rest by 1/(1-p); the mask is a hash of (seed, index) so the
 * backward (and a recomputed forward) regenerate it instead of storing it. */
typedef struct nm_lora_op {
    const float *A, *B;
    float *dA, *dB;     /* gradients (may be NULL when only evaluating) */
    int64_t r, in, out;
    float scale;
    float dropout;
    uint64_t drop_seed; /* distinct per module and per micro-batch */
} nm_lora_op;
/* Floats of scratch (tmp) the two LoRA calls need. */
int64_t nm_op_lora_tmp_floats(const nm_lora_op *L, int64_t T);
/* u [T x r] = drop(x) A^T is saved; y += s * u B^T. */
void nm_op_lora_fwd(nm_ops_ctx *c, float *y, float *u, const float *x, const nm_lora_op *L, int64_t T, float *tmp);
/* dA += (s dy B)^T drop(x), dB += s dy^T u, dx += drop'(s dy B A) (dx may
 * be NULL). */
void nm_op_lora_bwd(nm_ops_ctx *c, float *dx, const float *dy, const float *x, const float *u,
                    const nm_lora_op *L, int64_t T, float *tmp);
/* The dropout keep-multiplier for element i of a module's input: 0 or
 * 1/(1-p).  Exposed for the tests. */
float nm_lora_drop_mult(uint64_t seed, uint64_t i, float p);

/* ---- RoPE ---------------------------------------------------------------- */
/* cos/sin tables [T x n_rot/2] for positions pos[T]:
 * angle(t, i) = pos[t] * freq_scale * base^(-2i / n_rot). */
void nm_rope_table(float *cosv, float *sinv, const int32_t *pos, int64_t T, int64_t n_rot, float base,
                   float freq_scale);
/* In place on x [T x n_head x hd]; the first n_rot features of each head
 * rotate.  neox = false: adjacent pairs (x[2i], x[2i+1]) rotate together
 * (LLaMA as GGUF stores it); neox = true: pairs (x[i], x[i + n_rot/2]). */
void nm_op_rope_fwd(nm_ops_ctx *c, float *x, const float *cosv, const float *sinv, int64_t T, int64_t n_head,
                    int64_t hd, int64_t n_rot, bool neox);
/* In place on dx: the inverse rotation (the backward of a rotation). */
void nm_op_rope_bwd(nm_ops_ctx *c, float *dx, const float *cosv, const float *sinv, int64_t T, int64_t n_head,
                    int64_t hd, int64_t n_rot, bool neox);

/* ---- causal attention with grouped-query heads -------------------------- */
/* q [T x n_head x hd], k and v [T x n_kv x hd]: T = n_seq * seq_len tokens in
 * n_seq independent sequences.  Query head h reads kv head h / (n_head/n_kv).
 * Token t attends to t' <= t of its sequence, and, when doc is not NULL,
 * only to those with doc[t'] == doc[t] (packed documents stay apart).
 * out [T x n_head x hd] = softmax(q k^T / sqrt(hd)) v; lse [T x n_head] is
 * the log-sum-exp of each score row, all the backward needs (it recomputes
 * the scores instead of storing T^2 probabilities). */
typedef struct nm_attn_shape {
    int64_t n_seq, seq_len, n_head, n_kv, hd;
    const int32_t *doc; /* NULL or [T] */
    float *scratch;     /* nm_op_attn_scratch_floats() floats */
} nm_attn_shape;
/* Scores are computed NM_ATTN_QB queries at a time (flash-attention style
 * blocks, so memory is linear in the sequence length). */
#define NM_ATTN_QB 32
int64_t nm_op_attn_scratch_floats(const nm_attn_shape *s, int nth);
void nm_op_attn_fwd(nm_ops_ctx *c, float *out, float *lse, const float *q, const float *k, const float *v,
                    const nm_attn_shape *s);
/* dq, dk, dv += ... from dout. */
void nm_op_attn_bwd(nm_ops_ctx *c, float *dq, float *dk, float *dv, const float *dout, const float *q,
                    const float *k, const float *v, const float *out, const float *lse, const nm_attn_shape *s);

/* ---- SwiGLU: h = silu(g) * u ------------------------------------------- */
void nm_op_swiglu_fwd(nm_ops_ctx *c, float *h, const float *g, const float *u, int64_t n);
void nm_op_swiglu_bwd(nm_ops_ctx *c, float *dg, float *du, const float *dh, const float *g, const float *u,
                      int64_t n);

/* ---- residual: y = a + b ------------------------------------------------ */
void nm_op_add_fwd(nm_ops_ctx *c, float *y, const float *a, const float *b, int64_t n);
/* da += dy, db += dy (either may be NULL). */
void nm_op_add_bwd(nm_ops_ctx *c, float *da, float *db, const float *dy, int64_t n);

/* ---- cross-entropy over logits [T x V] ---------------------------------- */
/* loss[t] = -log softmax(logits[t])[target[t]], or 0 where target[t] < 0
 * (masked: prompt tokens, padding).  Returns the number of unmasked rows.
 * Targets >= V are the caller's bug: they are treated as masked. */
int64_t nm_op_xent_fwd(nm_ops_ctx *c, float *loss, const float *logits, const int32_t *target, int64_t T,
                       int64_t V);
/* dlogits[t] = (softmax(logits[t]) - onehot(target[t])) * dloss, 0 where
 * masked.  dloss is d(total loss)/d(loss[t]), e.g. 1/N for the mean over N
 * unmasked rows.  dlogits may be logits itself (computed in place). */
void nm_op_xent_bwd(nm_ops_ctx *c, float *dlogits, const float *logits, const int32_t *target, int64_t T,
                    int64_t V, float dloss);
/* Both at once, in place: loss[t] as nm_op_xent_fwd, and logits replaced by
 * the gradient of nm_op_xent_bwd (one exponential per logit instead of
 * three).  Returns the number of unmasked rows. */
int64_t nm_op_xent_fused(nm_ops_ctx *c, float *loss, float *logits, const int32_t *target, int64_t T, int64_t V,
                         float dloss);

#endif
