/*
 * model.h - internals of nm_model and nm_context (src/model/model.c).
 *
 * The model holds the GGUF mapping and, per layer, a descriptor of each
 * weight matrix pointing into it (no copies), plus small F32 copies of the
 * 1-D tensors (norm gains, biases).  The context holds the KV cache and the
 * scratch of one forward pass, sized once at creation.
 */
#ifndef NM_MODEL_H
#define NM_MODEL_H

#include "nomoat.h"
#include "base/threads.h"
#include "tensor/matmul.h"
#include "tensor/ops.h"

/* The seven projections of a LLaMA block, in GGUF tensor-name order.  Every
 * product with a block weight goes through nm_model_proj() with one of these,
 * which is where bias and (later) LoRA adapters apply. */
typedef enum nm_proj {
    NM_PROJ_Q,
    NM_PROJ_K,
    NM_PROJ_V,
    NM_PROJ_O,
    NM_PROJ_GATE,
    NM_PROJ_UP,
    NM_PROJ_DOWN,
    NM_PROJ_COUNT
} nm_proj;

/* "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down" */
const char *nm_proj_name(nm_proj p);

typedef struct nm_layer {
    float *attn_norm;              /* n_embd, owned */
    float *ffn_norm;               /* n_embd, owned */
    nm_mat w[NM_PROJ_COUNT];       /* into the mapping */
    float *bias[NM_PROJ_COUNT];    /* owned; NULL where the file has none */
} nm_layer;

typedef struct nm_hparams {
    int64_t n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_rot;
    int64_t q_dim, kv_dim;         /* n_head * head_dim, n_head_kv * head_dim */
    float norm_eps, rope_base, rope_freq_scale;
    nm_rope_type rope_type;
} nm_hparams;

struct nm_model {
    nm_gguf *gguf;
    char *arch;
    nm_hparams hp;
    nm_vocab *vocab;
    nm_mat tok_embd;
    nm_mat output;                 /* == tok_embd's data when tied */
    bool tied;
    float *output_norm;            /* owned */
    float *rope_freqs;             /* owned, n_rot/2 factors, or NULL */
    nm_layer *layers;
    nm_model_info info;
};

struct nm_context {
    const nm_model *m;
    nm_pool *pool;
    int64_t n_ctx, n_batch, n_past;
    bool logits_all;

    /* [n_layer][n_ctx][kv_dim] in kv_type (F16: as llama.cpp, half the
     * memory; F32: exact) */
    nm_type kv_type;
    size_t kv_elt;                 /* bytes per cached element */
    uint8_t *k_cache, *v_cache;

    /* scratch for n_batch tokens */
    float *x;                      /* residual stream   [B][n_embd] */
    float *xb;                     /* block input/out   [B][n_embd] */
    float *q;                      /* queries           [B][q_dim]  */
    float *k, *v;                  /* new keys, values  [B][kv_dim] */
    float *att;                    /* attention output  [B][q_dim]  */
    float *hb, *hb2;               /* FFN hidden        [B][n_ff]   */
    float *rope_cs;                /* angles            [B][n_rot]  */
    float *scores;                 /* per thread        [nth][n_ctx] */
    double *att_acc;               /* per thread        [nth][head_dim] */
    void *act;                     /* converted activations for matmul */
    size_t act_bytes;

    float *logits;                 /* [logits_all ? B : 1][n_vocab] */
    int64_t n_logits;              /* rows valid after the last decode */
    size_t bytes;                  /* everything allocated above */
};

/* y[n][rows] = x[n][cols] W^T (+ bias) for projection `which` of layer l. */
void nm_model_proj(nm_context *c, int64_t l, nm_proj which, const float *x, float *y, int64_t n);

#endif
