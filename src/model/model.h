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
#include "model/fingerprint.h"

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
    bool in_memory;                /* read into memory, not mapped */
    bool packed;                   /* some matrices packed (nm_mat_pack): */
    nm_base_ids ids;               /* then the file's identities, taken before */
};

/* The identities adapters are checked against when the model's weights no
 * longer read as stored (packed); NULL: take them from its file. */
const nm_base_ids *nm_model_base_ids(const nm_model *m);

/* Slots of a context's ring of one-row activation scratch (model.c act_scratch). */
enum { NM_ACT_RING = 64 };

struct nm_context {
    const nm_model *m;
    nm_pool *pool;                 /* own (own_pool) or borrowed from the params */
    bool own_pool;
    int n_scratch_threads;         /* threads the per-thread scratch is sized for */
    int64_t n_ctx, n_batch, n_past;
    bool logits_all;

    /* [n_layer][n_head_kv][n_kv_pos][head_dim] in kv_type (F16: as
     * llama.cpp, half the memory; F32: exact).  Head-major, so attention
     * reads each KV head's keys and values as one contiguous stream:
     * position-major rows interleave the heads, and the 512-byte stride of
     * tl1b's rows cost ~5 us a layer in cache misses the prefetchers did not
     * cover.  F16 keys are stored in key tiles (16 positions side by side
     * for each element, nm_key_index in kernels.h), so that the score
     * kernels compute 16 keys a vector without reductions across lanes. */
    nm_type kv_type;
    size_t kv_elt;                 /* bytes per cached element */
    int64_t n_kv_pos;              /* positions a run holds: n_ctx up to whole key tiles */
    uint8_t *k_cache, *v_cache;

    /* Scratch for n_batch rows of a forward pass.  In nm_decode_batch the
     * rows of every context of the batch are stacked in the scratch of the
     * first one (the host); the other contexts' scratch stays unused except
     * the per-thread attention buffers, which depend on their n_ctx. */
    float *x;                      /* residual stream   [B][n_embd] */
    float *xb;                     /* block input/out   [B][n_embd] */
    float *q;                      /* queries           [B][q_dim]  */
    float *k, *v;                  /* new keys, values  [B][kv_dim] */
    float *att;                    /* attention output  [B][q_dim]  */
    float *hb, *hb2;               /* FFN hidden        [B][n_ff]   */
    float *rope_cs;                /* angles            [B][n_rot]  */
    float *scores;                 /* per thread        [nth][n_head / n_head_kv][n_ctx] */
    void *act;                     /* converted activations for matmul ([B] rows), */
    size_t act_bytes;              /* or, one row at a time, a ring of NM_ACT_RING slots */
    size_t act_slot;               /* bytes of one slot: a row's conversion, 64-aligned */
    unsigned act_next;             /* the slot the next one-row product takes */

    float *logits;                 /* [logits_all ? B : 1][n_vocab] */
    int64_t n_logits;              /* rows valid after the last decode */
    size_t bytes;                  /* everything allocated above */
    struct nm_lora_stack *loras;   /* attached adapters (src/model/lora.c), or NULL */

    /* nm_context_set_profiling: totals, and where the last mark left off */
    bool profiling;
    nm_profile prof;
    uint64_t prof_t;               /* clock at the last mark (ns)        */
    nm_pool_times prof_pool;       /* the pool's counters at the last mark */
};

/* One context's share of a forward pass: its tokens are rows
 * [row0, row0 + n) of the stacked activations, at positions pos0.. of its
 * own KV cache.  Logits are computed for its rows [out_first, n) (none when
 * out_first == n) and stored from row out_row of c->logits on. */
typedef struct nm_seq {
    nm_context *c;
    const int32_t *tokens;
    int64_t row0, n, pos0;
    int64_t out_first, out_row;
} nm_seq;

/* A forward pass over the rows of one or more sequences (nm_decode: one
 * context; nm_decode_batch: several of the same model), on the scratch and
 * the thread pool of `host`.  n <= host->n_batch. */
typedef struct nm_fwd {
    const nm_model *m;
    nm_context *host;
    nm_pool *pool;
    const nm_seq *seqs;
    int n_seqs;
    int64_t n;                     /* rows: the sum of seqs[].n */
} nm_fwd;

/* y[n][rows] = x[n][cols] W^T (+ bias) for projection `which` of layer l,
 * over all f->n stacked rows: the weights are read once for every context
 * of the pass.  Per-context terms (LoRA adapters, which may differ between
 * the contexts of one batch) are added afterwards for each sequence's rows
 * [row0, row0 + n) of x and y, from that sequence's context. */
void nm_model_proj(const nm_fwd *f, int64_t l, nm_proj which, const float *x, float *y);

#endif
