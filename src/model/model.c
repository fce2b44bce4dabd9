/* model.c - LLaMA-family models: hyper-parameters and weights from GGUF, the
 * KV cache, and the forward pass.
 *
 * The forward pass reads like llama2.c: one function per step of a block
 * (norm, projections, RoPE, attention, FFN), each working on a batch of n
 * tokens at once so the prompt is one matrix-matrix pass over the weights
 * and generation is the same code with n = 1.  Architectures that are only
 * metadata variations of LLaMA are rows of ARCHS below, not code paths. */
#include "model.h"
#include "base/base.h"
#include "tensor/kernels.h"
#include "tensor/types.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- architectures ---- */

typedef struct arch_info {
    const char *name;
    nm_rope_type rope;
    bool qkv_bias;  /* q/k/v biases required */
} arch_info;

static const arch_info ARCHS[] = {
    {"llama", NM_ROPE_NORM, false},
    {"qwen2", NM_ROPE_NEOX, true},
};

static const char *const PROJ_NAMES[NM_PROJ_COUNT] = {
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
};

const char *nm_proj_name(nm_proj p) { return p >= 0 && p < NM_PROJ_COUNT ? PROJ_NAMES[p] : "?"; }

/* Limits that keep every size product far from overflow (a hostile file
 * cannot make us allocate or index beyond them). */
enum { MAX_DIM = 1 << 20, MAX_LAYERS = 4096, MAX_CTX = 1 << 22, MAX_VOCAB = 1 << 24 };

/* ====================================================================== */
/* loading                                                                */
/* ====================================================================== */

/* {arch}.{suffix} as an integer in [lo, hi]; def < 0 means required. */
static nm_status hp_int(const nm_gguf *g, const char *arch, const char *suffix, int64_t def, int64_t lo,
                        int64_t hi, int64_t *out, nm_err *err) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (nm_gguf_find_key(g, key) < 0) {
        if (def < 0) return nm_err_set(err, NM_ERR_NOT_FOUND, "%s: missing key %s", nm_gguf_path(g), key);
        *out = def;
        return NM_OK;
    }
    int64_t v;
    nm_status st = nm_gguf_get_i64(g, key, &v, err);
    if (st) return st;
    if (v < lo || v > hi)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %s = %lld is outside %lld..%lld", nm_gguf_path(g), key,
                          (long long)v, (long long)lo, (long long)hi);
    *out = v;
    return NM_OK;
}

static nm_status hp_float(const nm_gguf *g, const char *arch, const char *suffix, float def, float *out,
                          nm_err *err) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (nm_gguf_find_key(g, key) < 0) {
        *out = def;
        return NM_OK;
    }
    float v;
    nm_status st = nm_gguf_get_f32(g, key, &v, err);
    if (st) return st;
    if (!isfinite(v) || v <= 0.0f)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %s = %g must be a positive number", nm_gguf_path(g), key, v);
    *out = v;
    return NM_OK;
}

static nm_status read_hparams(nm_model *m, const arch_info *ai, nm_err *err) {
    const nm_gguf *g = m->gguf;
    const char *a = m->arch;
    nm_hparams *hp = &m->hp;
    nm_status st;
    if ((st = hp_int(g, a, "embedding_length", -1, 1, MAX_DIM, &hp->n_embd, err)) ||
        (st = hp_int(g, a, "block_count", -1, 1, MAX_LAYERS, &hp->n_layer, err)) ||
        (st = hp_int(g, a, "feed_forward_length", -1, 1, MAX_DIM, &hp->n_ff, err)) ||
        (st = hp_int(g, a, "attention.head_count", -1, 1, MAX_DIM, &hp->n_head, err)) ||
        (st = hp_int(g, a, "attention.head_count_kv", hp->n_head, 1, hp->n_head, &hp->n_head_kv, err)) ||
        (st = hp_int(g, a, "context_length", 2048, 1, INT32_MAX, &hp->n_ctx_train, err)))
        return st;
    if (hp->n_head % hp->n_head_kv)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %lld attention heads cannot be shared by %lld KV heads",
                          nm_gguf_path(g), (long long)hp->n_head, (long long)hp->n_head_kv);
    int64_t def_hd = hp->n_embd % hp->n_head == 0 ? hp->n_embd / hp->n_head : -1;
    int64_t hd_k, hd_v;
    if ((st = hp_int(g, a, "attention.key_length", def_hd, 1, MAX_DIM, &hd_k, err)) ||
        (st = hp_int(g, a, "attention.value_length", hd_k, 1, MAX_DIM, &hd_v, err)))
        return st;
    if (hd_k != hd_v)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: key length %lld differs from value length %lld",
                          nm_gguf_path(g), (long long)hd_k, (long long)hd_v);
    hp->head_dim = hd_k;
    if (hp->n_head * hp->head_dim > MAX_DIM)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %lld heads of %lld are too wide", nm_gguf_path(g),
                          (long long)hp->n_head, (long long)hp->head_dim);
    hp->q_dim = hp->n_head * hp->head_dim;
    hp->kv_dim = hp->n_head_kv * hp->head_dim;
    if ((st = hp_int(g, a, "rope.dimension_count", hp->head_dim, 2, hp->head_dim, &hp->n_rot, err))) return st;
    if (hp->n_rot % 2)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: rope.dimension_count %lld is odd", nm_gguf_path(g),
                          (long long)hp->n_rot);
    if ((st = hp_float(g, a, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->norm_eps, err)) ||
        (st = hp_float(g, a, "rope.freq_base", 10000.0f, &hp->rope_base, err)))
        return st;

    /* RoPE scaling: linear stretches positions by 1/factor; nothing else is
     * implemented, and silently ignoring it would give wrong outputs. */
    float factor = 1.0f;
    char key[160];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    if (nm_gguf_find_key(g, key) >= 0) {
        nm_str type;
        if ((st = nm_gguf_get_str(g, key, &type, err))) return st;
        bool is_linear = type.len == 6 && memcmp(type.ptr, "linear", 6) == 0;
        bool is_none = type.len == 4 && memcmp(type.ptr, "none", 4) == 0;
        if (!is_linear && !is_none)
            return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: rope scaling '%.*s' is not supported (only linear)",
                              nm_gguf_path(g), (int)(type.len > 40 ? 40 : type.len), type.ptr);
        if (is_linear && (st = hp_float(g, a, "rope.scaling.factor", 1.0f, &factor, err))) return st;
    } else if ((st = hp_float(g, a, "rope.scale_linear", 1.0f, &factor, err))) {
        return st;
    }
    hp->rope_freq_scale = 1.0f / factor;
    hp->rope_type = ai->rope;
    return NM_OK;
}

/* A tensor with exactly the given shape (ne1 = 1 for vectors). */
static nm_status find_tensor(const nm_model *m, const char *name, int64_t ne0, int64_t ne1, bool required,
                             const nm_gguf_tensor **out, nm_err *err) {
    const nm_gguf_tensor *t = nm_gguf_find_tensor(m->gguf, name);
    *out = NULL;
    if (!t) {
        if (!required) return NM_OK;
        return nm_err_set(err, NM_ERR_NOT_FOUND, "%s: missing tensor %s (needed by architecture %s)",
                          nm_gguf_path(m->gguf), name, m->arch);
    }
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor %s has shape %lld x %lld x %lld x %lld, expected %lld x %lld",
                          nm_gguf_path(m->gguf), name, (long long)t->ne[0], (long long)t->ne[1],
                          (long long)t->ne[2], (long long)t->ne[3], (long long)ne0, (long long)ne1);
    *out = t;
    return NM_OK;
}

static nm_status load_matrix(nm_model *m, const char *name, int64_t cols, int64_t rows, bool required,
                             nm_mat *out, nm_err *err) {
    const nm_gguf_tensor *t;
    nm_status st = find_tensor(m, name, cols, rows, required, &t, err);
    if (st || !t) return st;
    nm_err e2 = {0};
    if (nm_mat_init(out, name, (nm_type)t->type, cols, rows, t->data, &e2))
        return nm_err_set(err, e2.code, "%s: %s", nm_gguf_path(m->gguf), e2.msg);
    return NM_OK;
}

/* 1-D tensors are tiny: keep an owned F32 copy whatever the stored type. */
static nm_status load_vector(nm_model *m, const char *name, int64_t n, bool required, float **out, nm_err *err) {
    const nm_gguf_tensor *t;
    *out = NULL;
    nm_status st = find_tensor(m, name, n, 1, required, &t, err);
    if (st || !t) return st;
    const nm_type_traits *tr = nm_type_traits_get(t->type);
    if (!tr || !tr->to_float || n % tr->blck_size)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: tensor %s has type %s, which cannot be read as floats",
                          nm_gguf_path(m->gguf), name, tr ? tr->name : "(unknown)");
    float *v = nm_calloc((size_t)n, sizeof *v);
    if (!v) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for tensor %s", name);
    tr->to_float(t->data, v, n);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i])) {
            free(v);
            return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor %s holds a non-finite value at %lld",
                              nm_gguf_path(m->gguf), name, (long long)i);
        }
    *out = v;
    return NM_OK;
}

static nm_status load_weights(nm_model *m, const arch_info *ai, nm_err *err) {
    nm_hparams *hp = &m->hp;
    const nm_gguf_tensor *emb = nm_gguf_find_tensor(m->gguf, "token_embd.weight");
    if (!emb)
        return nm_err_set(err, NM_ERR_NOT_FOUND, "%s: missing tensor token_embd.weight (needed by architecture %s)",
                          nm_gguf_path(m->gguf), m->arch);
    if (emb->ne[1] < 1 || emb->ne[1] > MAX_VOCAB)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: token_embd.weight has %lld rows", nm_gguf_path(m->gguf),
                          (long long)emb->ne[1]);
    hp->n_vocab = emb->ne[1];
    nm_status st;
    if ((st = load_matrix(m, "token_embd.weight", hp->n_embd, hp->n_vocab, true, &m->tok_embd, err))) return st;
    const nm_type_traits *et = nm_type_traits_get(m->tok_embd.type);
    if (!et || !et->to_float)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: token_embd.weight has type %s, which cannot be read",
                          nm_gguf_path(m->gguf), nm_type_name(m->tok_embd.type));
    if ((st = load_matrix(m, "output.weight", hp->n_embd, hp->n_vocab, false, &m->output, err))) return st;
    m->tied = m->output.data == NULL;
    if (m->tied) m->output = m->tok_embd;
    if ((st = load_vector(m, "output_norm.weight", hp->n_embd, true, &m->output_norm, err))) return st;
    if ((st = load_vector(m, "rope_freqs.weight", hp->n_rot / 2, false, &m->rope_freqs, err))) return st;

    m->layers = nm_calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for %lld layers", (long long)hp->n_layer);
    /* (cols, rows) of each projection */
    const int64_t shape[NM_PROJ_COUNT][2] = {
        [NM_PROJ_Q] = {hp->n_embd, hp->q_dim},  [NM_PROJ_K] = {hp->n_embd, hp->kv_dim},
        [NM_PROJ_V] = {hp->n_embd, hp->kv_dim}, [NM_PROJ_O] = {hp->q_dim, hp->n_embd},
        [NM_PROJ_GATE] = {hp->n_embd, hp->n_ff}, [NM_PROJ_UP] = {hp->n_embd, hp->n_ff},
        [NM_PROJ_DOWN] = {hp->n_ff, hp->n_embd},
    };
    char name[96];
    for (int64_t l = 0; l < hp->n_layer; l++) {
        nm_layer *L = &m->layers[l];
        snprintf(name, sizeof name, "blk.%lld.attn_norm.weight", (long long)l);
        if ((st = load_vector(m, name, hp->n_embd, true, &L->attn_norm, err))) return st;
        snprintf(name, sizeof name, "blk.%lld.ffn_norm.weight", (long long)l);
        if ((st = load_vector(m, name, hp->n_embd, true, &L->ffn_norm, err))) return st;
        for (int p = 0; p < NM_PROJ_COUNT; p++) {
            snprintf(name, sizeof name, "blk.%lld.%s.weight", (long long)l, PROJ_NAMES[p]);
            if ((st = load_matrix(m, name, shape[p][0], shape[p][1], true, &L->w[p], err))) return st;
            /* Biases: required where the architecture has them (Qwen2's
             * q/k/v), taken when present otherwise. */
            bool need = ai->qkv_bias && (p == NM_PROJ_Q || p == NM_PROJ_K || p == NM_PROJ_V);
            snprintf(name, sizeof name, "blk.%lld.%s.bias", (long long)l, PROJ_NAMES[p]);
            if ((st = load_vector(m, name, shape[p][1], need, &L->bias[p], err))) return st;
        }
    }
    return NM_OK;
}

static void fill_info(nm_model *m) {
    nm_model_info *in = &m->info;
    const nm_hparams *hp = &m->hp;
    in->arch = m->arch;
    in->n_vocab = (int32_t)hp->n_vocab;
    in->n_ctx_train = (int32_t)hp->n_ctx_train;
    in->n_embd = (int32_t)hp->n_embd;
    in->n_layer = (int32_t)hp->n_layer;
    in->n_head = (int32_t)hp->n_head;
    in->n_head_kv = (int32_t)hp->n_head_kv;
    in->head_dim = (int32_t)hp->head_dim;
    in->n_ff = (int32_t)hp->n_ff;
    in->n_rot = (int32_t)hp->n_rot;
    in->norm_eps = hp->norm_eps;
    in->rope_freq_base = hp->rope_base;
    in->rope_freq_scale = hp->rope_freq_scale;
    in->tied_output = m->tied;
    for (int64_t i = 0; i < nm_gguf_n_tensors(m->gguf); i++) {
        const nm_gguf_tensor *t = nm_gguf_tensor_at(m->gguf, i);
        in->n_params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        in->weight_bytes += t->nbytes;
    }
}

nm_status nm_model_load(const char *path, const nm_log *log, nm_model **out, nm_err *err) {
    *out = NULL;
    nm_model *m = nm_calloc(1, sizeof *m);
    if (!m) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for a model");
    nm_status st = nm_gguf_open(path, &m->gguf, err);
    if (st) goto fail;
    nm_str arch;
    if (nm_gguf_get_str(m->gguf, "general.architecture", &arch, NULL)) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: no general.architecture key: not a model file", path);
        goto fail;
    }
    m->arch = nm_strndup(arch.ptr, arch.len);
    if (!m->arch) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto fail;
    }
    const arch_info *ai = NULL;
    for (size_t i = 0; i < sizeof ARCHS / sizeof ARCHS[0]; i++)
        if (strlen(ARCHS[i].name) == arch.len && memcmp(ARCHS[i].name, arch.ptr, arch.len) == 0) ai = &ARCHS[i];
    if (!ai) {
        st = nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: architecture '%.*s' is not supported (supported: llama, qwen2)",
                        path, (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
        goto fail;
    }
    if ((st = read_hparams(m, ai, err)) || (st = load_weights(m, ai, err))) goto fail;
    if (nm_gguf_find_key(m->gguf, "tokenizer.ggml.model") >= 0) {
        if ((st = nm_vocab_from_gguf(m->gguf, &m->vocab, log, err))) goto fail;
        if (nm_vocab_n_tokens(m->vocab) > m->hp.n_vocab)
            nm_logf(log, NM_LOG_WARN, "%s: the tokenizer has %d tokens but the model only %lld embeddings", path,
                    nm_vocab_n_tokens(m->vocab), (long long)m->hp.n_vocab);
    }
    fill_info(m);
    nm_logf(log, NM_LOG_DEBUG, "%s: %s, %lld layers, dim %lld, %lld heads (%lld KV), ffn %lld, vocab %lld", path,
            m->arch, (long long)m->hp.n_layer, (long long)m->hp.n_embd, (long long)m->hp.n_head,
            (long long)m->hp.n_head_kv, (long long)m->hp.n_ff, (long long)m->hp.n_vocab);
    *out = m;
    return NM_OK;
fail:
    nm_model_free(m);
    return st;
}

void nm_model_free(nm_model *m) {
    if (!m) return;
    if (m->layers) {
        for (int64_t l = 0; l < m->hp.n_layer; l++) {
            free(m->layers[l].attn_norm);
            free(m->layers[l].ffn_norm);
            for (int p = 0; p < NM_PROJ_COUNT; p++) free(m->layers[l].bias[p]);
        }
        free(m->layers);
    }
    free(m->output_norm);
    free(m->rope_freqs);
    nm_vocab_free(m->vocab);
    free(m->arch);
    nm_gguf_free(m->gguf);
    free(m);
}

void nm_model_get_info(const nm_model *m, nm_model_info *info) { *info = m->info; }
const nm_vocab *nm_model_vocab(const nm_model *m) { return m->vocab; }
const nm_gguf *nm_model_gguf(const nm_model *m) { return m->gguf; }

/* ====================================================================== */
/* context                                                                */
/* ====================================================================== */

nm_context_params nm_context_default_params(void) {
    nm_context_params p = {0};
    p.kv_type = NM_TYPE_F16;
    return p;
}

/* Allocates a*b*d elements of elt bytes (checked), counted in c->bytes. */
static void *ctx_alloc(nm_context *c, int64_t a, int64_t b, int64_t d, size_t elt) {
    uint64_t n, n2;
    if (!nm_mul_ok((uint64_t)a, (uint64_t)b, &n) || !nm_mul_ok(n, (uint64_t)d, &n2)) return NULL;
    void *p = nm_calloc((size_t)n2, elt);
    if (p) c->bytes += (size_t)n2 * elt;
    return p;
}
static float *ctx_floats(nm_context *c, int64_t a, int64_t b, int64_t d) {
    return ctx_alloc(c, a, b, d, sizeof(float));
}

static size_t max_act_bytes(const nm_model *m, int64_t n_batch, int64_t n_out) {
    size_t best = nm_matmul_scratch_bytes(m->output.type, m->output.cols, n_out);
    for (int64_t l = 0; l < m->hp.n_layer; l++)
        for (int p = 0; p < NM_PROJ_COUNT; p++) {
            const nm_mat *w = &m->layers[l].w[p];
            size_t b = nm_matmul_scratch_bytes(w->type, w->cols, n_batch);
            if (b > best) best = b;
        }
    return best;
}

nm_status nm_context_new(const nm_model *m, const nm_context_params *p, nm_context **out, nm_err *err) {
    *out = NULL;
    nm_context_params def = nm_context_default_params();
    if (!p) p = &def;
    const nm_hparams *hp = &m->hp;
    if (p->n_ctx < 0 || p->n_ctx > MAX_CTX)
        return nm_err_set(err, NM_ERR_ARG, "context size %d is outside 1..%d", p->n_ctx, MAX_CTX);
    if (p->n_batch < 0) return nm_err_set(err, NM_ERR_ARG, "batch size %d is negative", p->n_batch);
    if (p->n_threads < 0) return nm_err_set(err, NM_ERR_ARG, "thread count %d is negative", p->n_threads);
    if (p->kv_type != NM_TYPE_F16 && p->kv_type != NM_TYPE_F32)
        return nm_err_set(err, NM_ERR_ARG, "KV cache type %s is not supported (f16 or f32)",
                          nm_type_name(p->kv_type) ? nm_type_name(p->kv_type) : "(unknown)");
    nm_context *c = nm_calloc(1, sizeof *c);
    if (!c) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for a context");
    c->m = m;
    c->n_ctx = p->n_ctx ? p->n_ctx : (hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096);
    c->n_batch = p->n_batch ? p->n_batch : 512;
    if (c->n_batch > c->n_ctx) c->n_batch = c->n_ctx;
    c->logits_all = p->logits_all;
    int nth = p->n_threads ? p->n_threads : nm_cpu_count();
    nm_status st = nm_pool_new(nth, &c->pool, err);
    if (st) {
        free(c);
        return st;
    }
    const int64_t B = c->n_batch, n_out = c->logits_all ? B : 1;
    c->kv_type = p->kv_type;
    c->kv_elt = p->kv_type == NM_TYPE_F16 ? 2 : 4;
    c->k_cache = ctx_alloc(c, hp->n_layer, c->n_ctx, hp->kv_dim, c->kv_elt);
    c->v_cache = ctx_alloc(c, hp->n_layer, c->n_ctx, hp->kv_dim, c->kv_elt);
    size_t kv = c->bytes;
    c->x = ctx_floats(c, B, hp->n_embd, 1);
    c->xb = ctx_floats(c, B, hp->n_embd, 1);
    c->q = ctx_floats(c, B, hp->q_dim, 1);
    c->k = ctx_floats(c, B, hp->kv_dim, 1);
    c->v = ctx_floats(c, B, hp->kv_dim, 1);
    c->att = ctx_floats(c, B, hp->q_dim, 1);
    c->hb = ctx_floats(c, B, hp->n_ff, 1);
    c->hb2 = ctx_floats(c, B, hp->n_ff, 1);
    c->rope_cs = ctx_floats(c, B, hp->n_rot, 1);
    c->scores = ctx_floats(c, nth, c->n_ctx, 1);
    c->att_acc = ctx_alloc(c, nth, hp->head_dim, 1, sizeof(double));
    c->logits = ctx_floats(c, n_out, hp->n_vocab, 1);
    c->act_bytes = max_act_bytes(m, B, n_out);
    c->act = c->act_bytes ? malloc(c->act_bytes) : NULL;
    c->bytes += c->act_bytes;
    if (!c->k_cache || !c->v_cache || !c->x || !c->xb || !c->q || !c->k || !c->v || !c->att || !c->hb ||
        !c->hb2 || !c->rope_cs || !c->scores || !c->att_acc || !c->logits || (c->act_bytes && !c->act)) {
        nm_context_free(c);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory for a context of %lld tokens (KV cache %.1f MiB)",
                          (long long)c->n_ctx, kv / 1048576.0);
    }
    *out = c;
    return NM_OK;
}

void nm_context_free(nm_context *c) {
    if (!c) return;
    nm_pool_free(c->pool);
    free(c->k_cache);
    free(c->v_cache);
    free(c->x);
    free(c->xb);
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->att);
    free(c->hb);
    free(c->hb2);
    free(c->rope_cs);
    free(c->scores);
    free(c->att_acc);
    free(c->logits);
    free(c->act);
    free(c);
}

const float *nm_get_logits(const nm_context *c) {
    return c->n_logits ? c->logits + (c->n_logits - 1) * c->m->hp.n_vocab : NULL;
}

const float *nm_get_logits_ith(const nm_context *c, int32_t i) {
    if (!c->logits_all || i < 0 || i >= c->n_logits) return NULL;
    return c->logits + (int64_t)i * c->m->hp.n_vocab;
}

int32_t nm_context_n_past(const nm_context *c) { return (int32_t)c->n_past; }
int32_t nm_context_n_ctx(const nm_context *c) { return (int32_t)c->n_ctx; }
int32_t nm_context_n_threads(const nm_context *c) { return nm_pool_size(c->pool); }
size_t nm_context_bytes(const nm_context *c) { return c->bytes; }
size_t nm_context_kv_bytes(const nm_context *c) {
    return 2 * (size_t)c->m->hp.n_layer * (size_t)c->n_ctx * (size_t)c->m->hp.kv_dim * c->kv_elt;
}

nm_status nm_context_truncate(nm_context *c, int32_t n_past, nm_err *err) {
    if (n_past < 0 || n_past > c->n_past)
        return nm_err_set(err, NM_ERR_ARG, "cannot truncate the context to %d tokens: it holds %lld", n_past,
                          (long long)c->n_past);
    /* Cache rows beyond n_past are never read before being rewritten. */
    c->n_past = n_past;
    c->n_logits = 0;
    return NM_OK;
}

int32_t nm_logits_argmax(const float *logits, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (logits[i] > logits[best] || (logits[best] != logits[best] && logits[i] == logits[i])) best = i;
    return best;
}

/* ====================================================================== */
/* forward pass                                                           */
/* ====================================================================== */

static uint8_t *k_cache_at(const nm_context *c, int64_t l, int64_t pos) {
    return c->k_cache + (size_t)((l * c->n_ctx + pos) * c->m->hp.kv_dim) * c->kv_elt;
}
static uint8_t *v_cache_at(const nm_context *c, int64_t l, int64_t pos) {
    return c->v_cache + (size_t)((l * c->n_ctx + pos) * c->m->hp.kv_dim) * c->kv_elt;
}

/* Rounds to the nearest half-precision value (kept as a float). */
static inline float round_f16(float x) { return nm_half_to_f32(nm_f32_to_f16(x)); }

/* Stores n rows of keys and values at positions pos0.. of layer l. */
static void kv_store(nm_context *c, int64_t l, int64_t pos0, int64_t n) {
    const int64_t m = n * c->m->hp.kv_dim;
    if (c->kv_type == NM_TYPE_F32) {
        memcpy(k_cache_at(c, l, pos0), c->k, (size_t)m * sizeof(float));
        memcpy(v_cache_at(c, l, pos0), c->v, (size_t)m * sizeof(float));
        return;
    }
    uint16_t *kd = (uint16_t *)(void *)k_cache_at(c, l, pos0), *vd = (uint16_t *)(void *)v_cache_at(c, l, pos0);
    for (int64_t i = 0; i < m; i++) {
        kd[i] = nm_f32_to_f16(c->k[i]);
        vd[i] = nm_f32_to_f16(c->v[i]);
    }
}

/* x[t] = embedding row of tokens[t] (dequantized from the stored type). */
static void embed_tokens(nm_context *c, const int32_t *tokens, int64_t n) {
    const nm_mat *e = &c->m->tok_embd;
    const nm_type_traits *tr = nm_type_traits_get(e->type);
    for (int64_t t = 0; t < n; t++)
        tr->to_float((const uint8_t *)e->data + (size_t)tokens[t] * e->row_bytes, c->x + t * e->cols, e->cols);
}

static void rmsnorm_rows(float *y, const float *x, const float *w, int64_t n, int64_t dim, float eps) {
    for (int64_t t = 0; t < n; t++) nm_rmsnorm(y + t * dim, x + t * dim, w, dim, eps);
}

void nm_model_proj(nm_context *c, int64_t l, nm_proj which, const float *x, float *y, int64_t n) {
    const nm_layer *L = &c->m->layers[l];
    const nm_mat *w = &L->w[which];
    nm_matmul(c->pool, w, x, n, y, c->act);
    if (L->bias[which])
        for (int64_t t = 0; t < n; t++) nm_add(y + t * w->rows, L->bias[which], w->rows);
    /* LoRA: adapters will add scale * B (A x) to y here. */
}

/* Angles of the batch's positions, shared by every layer and head. */
static void rope_prepare(nm_context *c, int64_t pos0, int64_t n) {
    const nm_hparams *hp = &c->m->hp;
    for (int64_t t = 0; t < n; t++)
        nm_rope_angles(c->rope_cs + t * hp->n_rot, pos0 + t, (int)hp->n_rot, hp->rope_base, hp->rope_freq_scale,
                       c->m->rope_freqs);
}

static void rope_rows(nm_context *c, float *x, int64_t n_heads, int64_t n) {
    const nm_hparams *hp = &c->m->hp;
    for (int64_t t = 0; t < n; t++)
        nm_rope_apply(x + t * n_heads * hp->head_dim, (int)n_heads, (int)hp->head_dim, (int)hp->n_rot,
                      c->rope_cs + t * hp->n_rot, hp->rope_type);
}

typedef struct attn_task {
    nm_context *c;
    int64_t l, pos0, n;
} attn_task;

/* Causal attention of the batch's queries over the cache (which already
 * holds this batch's keys and values), one (token, head) pair at a time;
 * each pair is computed by one thread in a fixed order, so results do not
 * depend on the thread count.  With an F16 cache the query and the
 * attention weights are rounded to F16 as llama.cpp does (its KQ and KQV
 * products take F16 operands), which is what its golden logits carry. */
static void attention_task(void *arg, int ith, int nth) {
    const attn_task *a = arg;
    nm_context *c = a->c;
    const nm_hparams *hp = &c->m->hp;
    const int64_t hd = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    const bool f16 = c->kv_type == NM_TYPE_F16;
    const float scale = 1.0f / sqrtf((float)hd);
    float *scores = c->scores + (int64_t)ith * c->n_ctx;
    double *acc = c->att_acc + (int64_t)ith * hd;
    int64_t lo, hi;
    nm_split_range(a->n * hp->n_head, ith, nth, 1, &lo, &hi);
    for (int64_t item = lo; item < hi; item++) {
        const int64_t t = item / hp->n_head, h = item % hp->n_head;
        const int64_t kvo = (h / group) * hd, n_keys = a->pos0 + t + 1;
        const float *q = c->q + t * hp->q_dim + h * hd;
        for (int64_t p = 0; p < n_keys; p++) {
            if (f16) {
                const uint16_t *k = (const uint16_t *)(const void *)k_cache_at(c, a->l, p) + kvo;
                double dot = 0.0;
                for (int64_t i = 0; i < hd; i++) dot += q[i] * nm_half_to_f32(k[i]);
                scores[p] = (float)dot * scale;
            } else {
                scores[p] = nm_dot_f32(q, (const float *)(const void *)k_cache_at(c, a->l, p) + kvo, hd) * scale;
            }
        }
        nm_softmax(scores, n_keys);
        float *out = c->att + t * hp->q_dim + h * hd;
        memset(out, 0, (size_t)hd * sizeof *out);
        if (f16) memset(acc, 0, (size_t)hd * sizeof *acc);
        for (int64_t p = 0; p < n_keys; p++) {
            if (f16) {
                const uint16_t *v = (const uint16_t *)(const void *)v_cache_at(c, a->l, p) + kvo;
                const float s = round_f16(scores[p]);
                for (int64_t i = 0; i < hd; i++) acc[i] += s * nm_half_to_f32(v[i]);
            } else {
                const float *v = (const float *)(const void *)v_cache_at(c, a->l, p) + kvo;
                const float s = scores[p];
                for (int64_t i = 0; i < hd; i++) out[i] += s * v[i];
            }
        }
        if (f16)
            for (int64_t i = 0; i < hd; i++) out[i] = (float)acc[i];
    }
}

/* x += Wo attention(rope(Wq xn), cache <- rope(Wk xn), Wv xn), xn = norm(x) */
static void attention_block(nm_context *c, int64_t l, int64_t pos0, int64_t n) {
    const nm_hparams *hp = &c->m->hp;
    const nm_layer *L = &c->m->layers[l];
    rmsnorm_rows(c->xb, c->x, L->attn_norm, n, hp->n_embd, hp->norm_eps);
    nm_model_proj(c, l, NM_PROJ_Q, c->xb, c->q, n);
    nm_model_proj(c, l, NM_PROJ_K, c->xb, c->k, n);
    nm_model_proj(c, l, NM_PROJ_V, c->xb, c->v, n);
    rope_rows(c, c->q, hp->n_head, n);
    rope_rows(c, c->k, hp->n_head_kv, n);
    kv_store(c, l, pos0, n);
    if (c->kv_type == NM_TYPE_F16)
        for (int64_t i = 0; i < n * hp->q_dim; i++) c->q[i] = round_f16(c->q[i]);
    attn_task a = {c, l, pos0, n};
    nm_pool_run(c->pool, attention_task, &a);
    nm_model_proj(c, l, NM_PROJ_O, c->att, c->xb, n);
    for (int64_t t = 0; t < n * hp->n_embd; t++) c->x[t] += c->xb[t];
}

/* x += Wdown (silu(Wgate xn) * Wup xn), xn = norm(x) */
static void ffn_block(nm_context *c, int64_t l, int64_t n) {
    const nm_hparams *hp = &c->m->hp;
    const nm_layer *L = &c->m->layers[l];
    rmsnorm_rows(c->xb, c->x, L->ffn_norm, n, hp->n_embd, hp->norm_eps);
    nm_model_proj(c, l, NM_PROJ_GATE, c->xb, c->hb, n);
    nm_model_proj(c, l, NM_PROJ_UP, c->xb, c->hb2, n);
    nm_swiglu(c->hb, c->hb, c->hb2, n * hp->n_ff);
    nm_model_proj(c, l, NM_PROJ_DOWN, c->hb, c->xb, n);
    for (int64_t t = 0; t < n * hp->n_embd; t++) c->x[t] += c->xb[t];
}

/* logits of the rows [first, n) of the batch */
static void output_logits(nm_context *c, int64_t first, int64_t n) {
    const nm_hparams *hp = &c->m->hp;
    const int64_t rows = n - first;
    rmsnorm_rows(c->xb, c->x + first * hp->n_embd, c->m->output_norm, rows, hp->n_embd, hp->norm_eps);
    nm_matmul(c->pool, &c->m->output, c->xb, rows, c->logits, c->act);
    c->n_logits = rows;
}

/* One batch of n <= n_batch tokens at positions n_past.. */
static void forward_batch(nm_context *c, const int32_t *tokens, int64_t n, bool want_logits) {
    const int64_t pos0 = c->n_past;
    embed_tokens(c, tokens, n);
    rope_prepare(c, pos0, n);
    for (int64_t l = 0; l < c->m->hp.n_layer; l++) {
        attention_block(c, l, pos0, n);
        ffn_block(c, l, n);
    }
    if (want_logits) output_logits(c, c->logits_all ? 0 : n - 1, n);
    c->n_past += n;
}

nm_status nm_decode(nm_context *c, const int32_t *tokens, int32_t n, nm_err *err) {
    if (n <= 0) return nm_err_set(err, NM_ERR_ARG, "nothing to decode (%d tokens)", n);
    if (c->n_past + n > c->n_ctx)
        return nm_err_set(err, NM_ERR_RANGE,
                          "context full: %lld tokens already in the context + %d new exceed its size of %lld "
                          "(raise --ctx)",
                          (long long)c->n_past, n, (long long)c->n_ctx);
    if (c->logits_all && n > c->n_batch)
        return nm_err_set(err, NM_ERR_ARG, "%d tokens in one call exceed the batch size %lld (all logits kept)", n,
                          (long long)c->n_batch);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->m->hp.n_vocab)
            return nm_err_set(err, NM_ERR_ARG, "token id %d at index %d is outside the vocabulary (0..%lld)",
                              tokens[i], i, (long long)c->m->hp.n_vocab - 1);
    c->n_logits = 0;
    for (int64_t done = 0; done < n;) {
        const int64_t b = n - done < c->n_batch ? n - done : c->n_batch;
        forward_batch(c, tokens + done, b, done + b == n);
        done += b;
    }
    return NM_OK;
}
