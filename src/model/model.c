/* model.c - LLaMA-family models: hyper-parameters and weights from GGUF, the
 * KV cache, and the forward pass.
 *
 * The forward pass reads like llama2.c: one function per step of a block
 * (norm, projections, RoPE, attention, FFN), each working on a batch of n
 * tokens at once so the prompt is one matrix-matrix pass over the weights
 * and generation is the same code with n = 1; nm_decode_batch stacks the
 * tokens of several contexts into the same pass.  Architectures that are only
 * metadata variations of LLaMA are rows of ARCHS below, not code paths. */
#include "model.h"
#include "base/base.h"
#include "tensor/kernels.h"
#include "tensor/types.h"
#include "model/lora.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
    in->in_memory = m->in_memory;
    in->n_packed = !m->tied && m->output.packed_rows > 0;
    for (int64_t l = 0; l < hp->n_layer; l++)
        for (int p = 0; p < NM_PROJ_COUNT; p++) in->n_packed += m->layers[l].w[p].packed_rows > 0;
    for (int64_t i = 0; i < nm_gguf_n_tensors(m->gguf); i++) {
        const nm_gguf_tensor *t = nm_gguf_tensor_at(m->gguf, i);
        in->n_params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        in->weight_bytes += t->nbytes;
    }
}

/* Weights read into memory are the model's own: its products are all that
 * read the projections (and an output matrix of its own; a tied one is
 * also the embedding table, read by rows), so they are packed for the
 * kernels where the level has a packed layout (nm_mat_pack: generation
 * streams them faster).  The provenance checks hash bytes as stored, so
 * the file's identities are taken first.  NOMOAT_PACK=0 keeps them as
 * stored (A/B measurements); the bits of every result are the same. */
static nm_status pack_weights(nm_model *m, nm_err *err) {
    const char *env = getenv("NOMOAT_PACK");
    if (!m->in_memory || (env && strcmp(env, "0") == 0)) return NM_OK;
    bool any = !m->tied && m->output.k->pack_tile;
    for (int64_t l = 0; l < m->hp.n_layer; l++)
        for (int p = 0; p < NM_PROJ_COUNT; p++) any |= m->layers[l].w[p].k->pack_tile != NULL;
    nm_err ignored = {0};
    /* packing is only speed: memory that cannot be made writable stays as stored */
    if (!any || nm_gguf_set_writable(m->gguf, true, &ignored)) return NM_OK;
    nm_base_ids_init(&m->ids, m->gguf);
    m->packed = true;
    nm_status st = NM_OK;
    for (int64_t l = 0; l < m->hp.n_layer && !st; l++)
        for (int p = 0; p < NM_PROJ_COUNT && !st; p++) {
            nm_mat *w = &m->layers[l].w[p];
            st = nm_mat_pack(w, (void *)w->data, err);
        }
    if (!st && !m->tied) st = nm_mat_pack(&m->output, (void *)m->output.data, err);
    nm_err e2 = {0};
    const nm_status st2 = nm_gguf_set_writable(m->gguf, false, &e2);
    if (!st && st2) st = nm_err_set(err, st2, "%s", e2.msg);
    return st;
}

const nm_base_ids *nm_model_base_ids(const nm_model *m) { return m->packed ? &m->ids : NULL; }

/* Whether to read the model file into memory rather than map it.  The
 * single-token kernels read 16 rows side by side and prefetch the next
 * tile in software; on the 4 KiB pages of a file map that streamed ~22
 * GB/s a core against ~27 on transparent huge pages (tl1b Q4_0, one
 * thread, the core's read probe 28: docs/KERNELS.md "Huge pages").  Only
 * when the file takes at most half the memory available, so a model that
 * barely fits (or does not) is still mapped and paged by the kernel; and
 * never with NOMOAT_MMAP=1 (several processes sharing one model's pages). */
static bool read_into_memory(const char *path) {
    const char *env = getenv("NOMOAT_MMAP");
    if (env && *env && strcmp(env, "0") != 0) return false;
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return false;
    const uint64_t avail = nm_mem_available();
    return avail > 0 && (uint64_t)st.st_size <= avail / 2;
}

nm_status nm_model_load(const char *path, const nm_log *log, nm_model **out, nm_err *err) {
    *out = NULL;
    nm_model *m = nm_calloc(1, sizeof *m);
    if (!m) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for a model");
    m->in_memory = read_into_memory(path);
    nm_status st = m->in_memory ? nm_gguf_open_read(path, &m->gguf, err) : nm_gguf_open(path, &m->gguf, err);
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
    if ((st = read_hparams(m, ai, err)) || (st = load_weights(m, ai, err)) || (st = pack_weights(m, err))) goto fail;
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
    if (m->packed) nm_base_ids_deinit(&m->ids);
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

/* The output product may take every row of a batch too (logits_all, or one
 * last row per context in nm_decode_batch), so it is sized for n_batch. */
static size_t max_act_bytes(const nm_model *m, int64_t n_batch) {
    size_t best = nm_matmul_scratch_bytes(m->output.type, m->output.cols, n_batch);
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
    if (p->pool) {
        c->pool = p->pool;
    } else {
        nm_status st = nm_pool_new(p->n_threads ? p->n_threads : nm_cpu_count(), &c->pool, err);
        if (st) {
            free(c);
            return st;
        }
        c->own_pool = true;
    }
    const int nth = nm_pool_size(c->pool);
    c->n_scratch_threads = nth;
    const int64_t B = c->n_batch, n_out = c->logits_all ? B : 1;
    c->kv_type = p->kv_type;
    c->kv_elt = p->kv_type == NM_TYPE_F16 ? 2 : 4;
    /* whole key tiles of NM_KEY_TILE positions (F16 keys, kernels.h) */
    c->n_kv_pos = (c->n_ctx + NM_KEY_TILE - 1) / NM_KEY_TILE * NM_KEY_TILE;
    c->k_cache = ctx_alloc(c, hp->n_layer, c->n_kv_pos, hp->kv_dim, c->kv_elt);
    c->v_cache = ctx_alloc(c, hp->n_layer, c->n_kv_pos, hp->kv_dim, c->kv_elt);
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
    c->scores = ctx_floats(c, nth, hp->n_head / hp->n_head_kv, c->n_ctx);
    c->logits = ctx_floats(c, n_out, hp->n_vocab, 1);
    c->act_slot = nm_align_up(max_act_bytes(m, 1), 64);
    c->act_bytes = max_act_bytes(m, B);
    if (c->act_bytes < NM_ACT_RING * c->act_slot) c->act_bytes = NM_ACT_RING * c->act_slot;
    c->act = c->act_bytes ? aligned_alloc(64, nm_align_up(c->act_bytes, 64)) : NULL;
    c->bytes += c->act_bytes;
    if (!c->k_cache || !c->v_cache || !c->x || !c->xb || !c->q || !c->k || !c->v || !c->att || !c->hb ||
        !c->hb2 || !c->rope_cs || !c->scores || !c->logits || (c->act_bytes && !c->act)) {
        nm_context_free(c);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory for a context of %lld tokens (KV cache %.1f MiB)",
                          (long long)c->n_ctx, kv / 1048576.0);
    }
    *out = c;
    return NM_OK;
}

void nm_context_free(nm_context *c) {
    if (!c) return;
    nm_lora_stack_free(c->loras);
    if (c->own_pool) nm_pool_free(c->pool);
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
/*
 * One forward pass runs over a stack of rows: the tokens of one context
 * (nm_decode) or of several contexts of the same model (nm_decode_batch),
 * each context's tokens a contiguous run of rows (an nm_seq).  Everything
 * that is per row - norms, projections, RoPE, the FFN - runs over the whole
 * stack, so every weight matrix is read once per pass; what involves the
 * KV cache (storing keys and values, attention) runs per sequence against
 * its own context's cache.  No result depends on which other rows share the
 * stack: every output element of a product is one kernel dot product of a
 * weight row with one activation row (converted per row), and every
 * (token, head) of attention is computed by one thread in a fixed order.  A
 * context therefore gets bit-identical results alone or in any batch, in
 * one call or token by token, on any number of threads.
 */

enum { BATCH_SEQS = 64 }; /* sequences in one pass; more contexts take more passes */

/* Profiles (nm_context_set_profiling): a pass marks the end of each of its
 * steps, and the time since the previous mark, with the pool's region
 * counters over the same span, goes to that step's phase. */
static const char *const PHASE_NAMES[NM_PHASE_COUNT] = {
    "embed", "norm", "qkv", "rope_kv", "attention", "attn_out", "ffn_up", "ffn_down", "residual", "logits"};

const char *nm_phase_name(nm_phase ph) {
    return (int)ph >= 0 && ph < NM_PHASE_COUNT ? PHASE_NAMES[ph] : NULL;
}

void nm_context_set_profiling(nm_context *c, bool on) {
    c->profiling = on;
    nm_pool_set_timing(c->pool, on);
    if (on) c->prof = (nm_profile){0};
}

void nm_context_profile(const nm_context *c, nm_profile *out) { *out = c->prof; }

static void prof_start(const nm_fwd *f) {
    nm_context *h = f->host;
    if (!h->profiling) return;
    h->prof.passes++;
    h->prof.rows += f->n;
    h->prof_pool = nm_pool_times_get(h->pool);
    h->prof_t = nm_now_ns();
}

static void prof_mark(const nm_fwd *f, nm_phase ph) {
    nm_context *h = f->host;
    if (!h->profiling) return;
    const uint64_t t = nm_now_ns();
    const nm_pool_times now = nm_pool_times_get(h->pool), *was = &h->prof_pool;
    nm_profile *p = &h->prof;
    p->seconds[ph] += 1e-9 * (double)(t - h->prof_t);
    p->in_regions[ph] += 1e-9 * (double)(now.region_ns - was->region_ns);
    p->waiting[ph] += 1e-9 * (double)(now.wait_ns - was->wait_ns);
    p->regions[ph] += (int64_t)(now.regions - was->regions);
    h->prof_pool = now;
    h->prof_t = t;
}

/* Below this many multiply-adds per parallel region (a product or the
 * attention of one layer), a pass runs on the calling thread alone: waking
 * the pool costs about 1 us per region on an idle machine and 15-20 us on a
 * busy one, which is more than a small region's work (stories260K: 45K per
 * token and layer, spread over 8 regions).  Which thread computes what never
 * changes a result, so this only decides speed. */
enum { PAR_MIN_MACS = 1 << 18 };

static nm_pool *pool_for(nm_pool *pool, double macs_per_region) {
    return macs_per_region >= PAR_MIN_MACS ? pool : NULL;
}

/* Offset of KV head g's entry at position pos of layer l (see model.h). */
static size_t kv_offset(const nm_context *c, int64_t l, int64_t g, int64_t pos) {
    const nm_hparams *hp = &c->m->hp;
    return (size_t)(((l * hp->n_head_kv + g) * c->n_kv_pos + pos) * hp->head_dim) * c->kv_elt;
}

/* Writes n floats into the cache at dst, in the cache's element type. */
static void kv_put(const nm_context *c, uint8_t *dst, const float *src, int64_t n, const nm_attn_kernel *ak) {
    if (c->kv_type == NM_TYPE_F32) memcpy(dst, src, (size_t)n * sizeof(float));
    else ak->to_f16(src, (uint16_t *)(void *)dst, n);
}

/* One head's keys at position pos of an F16 key run, in key tiles: element
 * i at nm_key_index (kernels.h), NM_KEY_TILE apart, converted by the level
 * a piece at a time. */
static void key_put(uint16_t *run, const float *k, int64_t hd, int64_t pos, const nm_attn_kernel *ak) {
    uint16_t *dst = run + nm_key_index(hd, pos, 0), h[64];
    for (int64_t i0 = 0; i0 < hd; i0 += 64) {
        const int64_t m = hd - i0 < 64 ? hd - i0 : 64;
        ak->to_f16(k + i0, h, m);
        for (int64_t i = 0; i < m; i++) dst[(i0 + i) * NM_KEY_TILE] = h[i];
    }
}

/* Stores one row's keys k and values v ([kv_dim]) at position pos of
 * layer l, each KV head's part into its own run (F16 keys in key tiles). */
static void kv_store(nm_context *c, int64_t l, int64_t pos, const float *k, const float *v, const nm_attn_kernel *ak) {
    const nm_hparams *hp = &c->m->hp;
    const int64_t hd = hp->head_dim;
    for (int64_t g = 0; g < hp->n_head_kv; g++) {
        if (c->kv_type == NM_TYPE_F16)
            key_put((uint16_t *)(void *)(c->k_cache + kv_offset(c, l, g, 0)), k + g * hd, hd, pos, ak);
        else
            kv_put(c, c->k_cache + kv_offset(c, l, g, pos), k + g * hd, hd, ak);
        kv_put(c, c->v_cache + kv_offset(c, l, g, pos), v + g * hd, hd, ak);
    }
}

/* x[t] = embedding row of tokens[t] (dequantized from the stored type). */
static void embed_tokens(const nm_model *m, const int32_t *tokens, int64_t n, float *x) {
    const nm_mat *e = &m->tok_embd;
    const nm_type_traits *tr = nm_type_traits_get(e->type);
    for (int64_t t = 0; t < n; t++)
        tr->to_float((const uint8_t *)e->data + (size_t)tokens[t] * e->row_bytes, x + t * e->cols, e->cols);
}

static void rmsnorm_rows(float *y, const float *x, const float *w, int64_t n, int64_t dim, float eps,
                         const nm_attn_kernel *ak) {
    for (int64_t t = 0; t < n; t++) ak->rmsnorm(y + t * dim, x + t * dim, w, dim, eps);
}

/* Row operations of a batch over the pool, rows split between threads (a
 * row's result does not depend on who computes it): on one thread they
 * were ~2% of a 512-token prompt while the other thread waited. */
typedef enum row_kind { ROW_NORM, ROW_SWIGLU, ROW_ADD } row_kind;
typedef struct row_op {
    row_kind kind;
    float *y;
    const float *x, *w, *up; /* ROW_NORM: y = norm(x) w; ROW_SWIGLU: y = silu(x) * up; ROW_ADD: y += x */
    int64_t n, dim;
    float eps;
    const nm_attn_kernel *ak;
} row_op;

static void row_op_task(void *arg, int ith, int nth) {
    const row_op *o = arg;
    int64_t lo, hi;
    nm_split_range(o->n, ith, nth, 1, &lo, &hi);
    if (lo >= hi) return;
    float *y = o->y + lo * o->dim;
    const float *x = o->x + lo * o->dim;
    switch (o->kind) {
    case ROW_NORM: rmsnorm_rows(y, x, o->w, hi - lo, o->dim, o->eps, o->ak); break;
    case ROW_SWIGLU: o->ak->swiglu(y, x, o->up + lo * o->dim, (hi - lo) * o->dim); break;
    case ROW_ADD:
        for (int64_t i = 0; i < (hi - lo) * o->dim; i++) y[i] += x[i];
        break;
    }
}

/* A batch's row step over the pool, or on the caller for a few rows,
 * where waking the pool costs more than the step. */
static void rows_run(const nm_fwd *f, nm_pool_fn fn, void *arg) {
    if (f->n >= 8 && f->pool) nm_pool_run(f->pool, fn, arg);
    else fn(arg, 0, 1);
}

/* x += xb over the pass's rows (the block's output into the stream) */
static void residual_add(const nm_fwd *f) {
    row_op o = {.kind = ROW_ADD, .y = f->host->x, .x = f->host->xb, .n = f->n, .dim = f->m->hp.n_embd};
    rows_run(f, row_op_task, &o);
}

static void rmsnorm_batch(const nm_fwd *f, float *y, const float *x, const float *w, int64_t dim, float eps,
                          const nm_attn_kernel *ak) {
    row_op o = {.kind = ROW_NORM, .y = y, .x = x, .w = w, .n = f->n, .dim = dim, .eps = eps, .ak = ak};
    rows_run(f, row_op_task, &o);
}

/* Scratch for the converted activations of a product of n_rows rows.
 * One-row products (generation) take the slots of a ring in turn: the
 * caller converts a row, the other threads read it, and the next product's
 * conversion overwrote those same lines, so every store first had to
 * invalidate the copies in the other cores' caches: ~0.15 ms a token for
 * tl1b with two vCPUs on one core complex and 0.5 ms on two, where a token
 * takes 12 ms.  With 64 slots a slot comes round after ~16 layers and its
 * lines are no longer in the other core's caches (8 slots recovered half).
 * tl1b Q4_K_M, two threads, conversions 350 -> 130 us a token near, 560 ->
 * 140 far (same minutes, alternately). */
static void *act_scratch(const nm_fwd *f, int64_t n_rows) {
    nm_context *h = f->host;
    if (n_rows != 1 || h->act_slot == 0) return h->act;
    return (uint8_t *)h->act + (size_t)(h->act_next++ % NM_ACT_RING) * h->act_slot;
}

/* What a projection adds after its base product: bias, adapters. */
static void proj_finish(const nm_fwd *f, int64_t l, nm_proj which, const float *x, float *y) {
    const nm_layer *L = &f->m->layers[l];
    const nm_mat *w = &L->w[which];
    if (L->bias[which])
        for (int64_t t = 0; t < f->n; t++) nm_add(y + t * w->rows, L->bias[which], w->rows);
    /* The contexts of one pass may carry different adapter stacks, so
     * adapters apply per sequence, after the shared base product. */
    for (int s = 0; s < f->n_seqs; s++) {
        const nm_seq *q = &f->seqs[s];
        if (q->c->loras)
            nm_lora_apply(q->c->loras, l, which, x + q->row0 * w->cols, y + q->row0 * w->rows, q->n);
    }
}

void nm_model_proj(const nm_fwd *f, int64_t l, nm_proj which, const float *x, float *y) {
    const nm_mat *w = &f->m->layers[l].w[which];
    nm_matmul(f->pool, w, x, f->n, y, act_scratch(f, f->n));
    proj_finish(f, l, which, x, y);
}

/* n (at most 3) projections of one x: the base products together
 * (nm_matmul_multi: one conversion and one pool region where the
 * matrices' layouts agree), then each one's bias and adapters. */
static void proj_group(const nm_fwd *f, int64_t l, const nm_proj *which, float *const *y, int n, const float *x) {
    const nm_mat *w[3];
    for (int i = 0; i < n; i++) w[i] = &f->m->layers[l].w[which[i]];
    nm_matmul_multi(f->pool, w, y, n, x, f->n, act_scratch(f, f->n));
    for (int i = 0; i < n; i++) proj_finish(f, l, which[i], x, y[i]);
}

/* Angles of every row's position, shared by every layer and head. */
static void rope_prepare(const nm_fwd *f) {
    const nm_hparams *hp = &f->m->hp;
    for (int s = 0; s < f->n_seqs; s++) {
        const nm_seq *q = &f->seqs[s];
        for (int64_t t = 0; t < q->n; t++)
            nm_rope_angles(f->host->rope_cs + (q->row0 + t) * hp->n_rot, q->pos0 + t, (int)hp->n_rot, hp->rope_base,
                           hp->rope_freq_scale, f->m->rope_freqs);
    }
}

/* A pass's rows, split between threads: RoPE on the queries and keys, the
 * keys and values into their sequence's cache, and the queries rounded to
 * F16 where that cache is F16 (attend) - each row on its own.  On the
 * calling thread alone this was 1.7% of a 512-token prompt while the
 * others waited. */
typedef struct rope_kv_task {
    const nm_fwd *f;
    int64_t l;
    const nm_attn_kernel *ak;
} rope_kv_task;

static void rope_kv_run(void *arg, int ith, int nth) {
    const rope_kv_task *r = arg;
    const nm_fwd *f = r->f;
    int64_t lo, hi;
    nm_split_range(f->n, ith, nth, 1, &lo, &hi);
    const nm_hparams *hp = &f->m->hp;
    const nm_context *h = f->host;
    int s = 0;
    for (int64_t t = lo; t < hi; t++) {
        while (t >= f->seqs[s].row0 + f->seqs[s].n) s++;
        const nm_seq *q = &f->seqs[s];
        const float *cs = h->rope_cs + t * hp->n_rot;
        float *qt = h->q + t * hp->q_dim, *kt = h->k + t * hp->kv_dim;
        nm_rope_apply(qt, (int)hp->n_head, (int)hp->head_dim, (int)hp->n_rot, cs, hp->rope_type);
        nm_rope_apply(kt, (int)hp->n_head_kv, (int)hp->head_dim, (int)hp->n_rot, cs, hp->rope_type);
        kv_store(q->c, r->l, q->pos0 + (t - q->row0), kt, h->v + t * hp->kv_dim, r->ak);
        if (q->c->kv_type == NM_TYPE_F16) r->ak->round_f16(qt, hp->q_dim);
    }
}


/* The attention work of a pass: items are (row, head) pairs numbered
 * sequence by sequence; item0[s] is the first item of sequence s. */
typedef struct attn_task {
    const nm_fwd *f;
    int64_t l;
    int64_t item0[BATCH_SEQS + 1];
    int64_t chunk;             /* items taken at a time */
    int nth;                   /* threads taking part */
    atomic_llong next;         /* first item nobody has taken */
    const nm_attn_kernel *ak;  /* the matrices' level */
} attn_task;

/* Softmax(q . keys) . values over the n_keys first cache positions of layer
 * l, for the nq query heads that share KV head g (queries and outputs hd
 * apart).  With an F16 cache the query and the attention weights are
 * rounded to F16 as llama.cpp does (its KQ and KQV products take F16
 * operands), which is what its golden logits carry; q is already rounded by
 * the caller.  The F16 loops are the level's attention kernels: the same
 * bits at every level and for any nq (kernels.h, docs/KERNELS.md), so
 * neither the level nor the grouping changes a logit. */
static void attend(const nm_context *c, int64_t l, const float *q, int nq, int64_t g, int64_t n_keys, float *out,
                   float *scores, const nm_attn_kernel *ak) {
    const int64_t hd = c->m->hp.head_dim;
    const float scale = 1.0f / sqrtf((float)hd);
    const uint8_t *keys = c->k_cache + kv_offset(c, l, g, 0), *vals = c->v_cache + kv_offset(c, l, g, 0);
    if (c->kv_type == NM_TYPE_F16) {
        ak->scores(q, (size_t)hd, nq, (const uint16_t *)(const void *)keys, n_keys, hd, scale, scores,
                   (size_t)c->n_ctx);
        for (int j = 0; j < nq; j++) {
            float *s = scores + (int64_t)j * c->n_ctx;
            ak->softmax(s, n_keys);
            ak->round_f16(s, n_keys);
        }
        ak->values(scores, (size_t)c->n_ctx, nq, (const uint16_t *)(const void *)vals, (size_t)hd, n_keys, hd, out,
                   (size_t)hd);
        return;
    }
    const float *kf = (const float *)(const void *)keys, *vf = (const float *)(const void *)vals;
    for (int j = 0; j < nq; j++, q += hd, out += hd) {
        for (int64_t p = 0; p < n_keys; p++) scores[p] = nm_dot_f32(q, kf + p * hd, hd) * scale;
        ak->softmax(scores, n_keys);
        memset(out, 0, (size_t)hd * sizeof *out);
        for (int64_t p = 0; p < n_keys; p++) {
            const float *v = vf + p * hd;
            const float s = scores[p];
            for (int64_t i = 0; i < hd; i++) out[i] += s * v[i];
        }
    }
}

/* Causal attention of every row over its own context's cache (which
 * already holds this pass's keys and values).  An item is a row and a KV
 * head with the query heads that share it (GQA), so each cached row is
 * read once for the group.  Threads take chunks of items as they go: the
 * items' costs differ (a row at position 1000 attends over 1000 keys, one
 * at 10 over 10), and which thread computes an item does not change its
 * result. */
static void attention_task(void *arg, int ith, int nth) {
    attn_task *a = arg;
    (void)nth;
    if (ith >= a->nth) return;  /* a context's scratch has fewer threads */
    const nm_fwd *f = a->f;
    const nm_hparams *hp = &f->m->hp;
    const int64_t hd = hp->head_dim, group = hp->n_head / hp->n_head_kv, n_items = a->item0[f->n_seqs];
    for (;;) {
        const int64_t taken = atomic_fetch_add_explicit(&a->next, a->chunk, memory_order_relaxed);
        if (taken >= n_items) break;
        /* Chunks are handed out from the end: within a sequence the later
         * rows attend over more keys, so the heaviest chunks go first and
         * the last ones, which decide when the region ends, are light. */
        const int64_t hi = n_items - taken, lo = hi - a->chunk > 0 ? hi - a->chunk : 0;
        int s = 0;
        for (int64_t item = lo; item < hi; item++) {
            while (item >= a->item0[s + 1]) s++;
            const nm_seq *q = &f->seqs[s];
            const nm_context *c = q->c;
            const int64_t k = item - a->item0[s], t = k / hp->n_head_kv, g = k % hp->n_head_kv;
            const int64_t row = q->row0 + t, h0 = g * group;
            attend(c, a->l, f->host->q + row * hp->q_dim + h0 * hd, (int)group, g, q->pos0 + t + 1,
                   f->host->att + row * hp->q_dim + h0 * hd, c->scores + (int64_t)ith * group * c->n_ctx, a->ak);
        }
    }
}

/* x += Wo attention(rope(Wq xn), cache <- rope(Wk xn), Wv xn), xn = norm(x) */
static void attention_block(const nm_fwd *f, int64_t l) {
    const nm_hparams *hp = &f->m->hp;
    const nm_layer *L = &f->m->layers[l];
    nm_context *h = f->host;
    const nm_attn_kernel *ak = nm_attn_kernel_get(L->w[NM_PROJ_Q].k->isa);
    rmsnorm_batch(f, h->xb, h->x, L->attn_norm, hp->n_embd, hp->norm_eps, ak);
    prof_mark(f, NM_PHASE_NORM);
    static const nm_proj qkv[3] = {NM_PROJ_Q, NM_PROJ_K, NM_PROJ_V};
    proj_group(f, l, qkv, (float *const[]){h->q, h->k, h->v}, 3, h->xb);
    prof_mark(f, NM_PHASE_QKV);
    rope_kv_task r = {.f = f, .l = l, .ak = ak};
    rows_run(f, rope_kv_run, &r);

    attn_task a = {.f = f, .l = l, .nth = nm_pool_size(f->pool), .ak = ak};
    for (int s = 0; s < f->n_seqs; s++) {
        const nm_seq *q = &f->seqs[s];
        a.item0[s + 1] = a.item0[s] + q->n * hp->n_head_kv;
        if (q->c->n_scratch_threads < a.nth) a.nth = q->c->n_scratch_threads;
    }
    a.chunk = a.item0[f->n_seqs] / ((int64_t)a.nth * 8);
    if (a.chunk < 1) a.chunk = 1;
    atomic_init(&a.next, 0);
    prof_mark(f, NM_PHASE_ROPE_KV);
    nm_pool_run(f->pool, attention_task, &a);
    prof_mark(f, NM_PHASE_ATTENTION);

    nm_model_proj(f, l, NM_PROJ_O, h->att, h->xb);
    prof_mark(f, NM_PHASE_ATTN_OUT);
    residual_add(f);
    prof_mark(f, NM_PHASE_RESIDUAL);
}

/* x += Wdown (silu(Wgate xn) * Wup xn), xn = norm(x) */
static void ffn_block(const nm_fwd *f, int64_t l) {
    const nm_hparams *hp = &f->m->hp;
    const nm_layer *L = &f->m->layers[l];
    nm_context *h = f->host;
    const nm_mat *gate = &L->w[NM_PROJ_GATE], *up = &L->w[NM_PROJ_UP];
    const nm_attn_kernel *ak = nm_attn_kernel_get(gate->k->isa);
    rmsnorm_batch(f, h->xb, h->x, L->ffn_norm, hp->n_embd, hp->norm_eps, ak);
    prof_mark(f, NM_PHASE_NORM);
    bool adapted = L->bias[NM_PROJ_GATE] || L->bias[NM_PROJ_UP];
    for (int s = 0; s < f->n_seqs; s++) adapted = adapted || f->seqs[s].c->loras;
    if (!adapted && nm_matmul_act_shared(gate, up)) {
        /* SwiGLU by the threads that computed the rows (nm_matmul_glu) */
        nm_matmul_glu(f->pool, gate, up, h->xb, f->n, h->hb, h->hb2, ak->swiglu, act_scratch(f, f->n));
    } else { /* biases and adapters apply to gate and up before SwiGLU */
        static const nm_proj gate_up[2] = {NM_PROJ_GATE, NM_PROJ_UP};
        proj_group(f, l, gate_up, (float *const[]){h->hb, h->hb2}, 2, h->xb);
        row_op sw = {.kind = ROW_SWIGLU, .y = h->hb, .x = h->hb, .up = h->hb2, .n = f->n, .dim = hp->n_ff, .ak = ak};
        rows_run(f, row_op_task, &sw);
    }
    prof_mark(f, NM_PHASE_FFN_UP);
    nm_model_proj(f, l, NM_PROJ_DOWN, h->hb, h->xb);
    prof_mark(f, NM_PHASE_FFN_DOWN);
    residual_add(f);
    prof_mark(f, NM_PHASE_RESIDUAL);
}

/* The logits each sequence asks for, normed rows gathered in the host's xb
 * and multiplied by the output matrix in one product. */
static void output_logits(const nm_fwd *f) {
    const nm_hparams *hp = &f->m->hp;
    const nm_mat *w = &f->m->output;
    nm_context *h = f->host;
    const int64_t E = hp->n_embd, nv = hp->n_vocab;
    int64_t R = 0;
    int n_out = 0;
    const nm_seq *only = NULL;
    for (int s = 0; s < f->n_seqs; s++) {
        const nm_seq *q = &f->seqs[s];
        const int64_t k = q->n - q->out_first;
        if (k <= 0) continue;
        rmsnorm_rows(h->xb + R * E, h->x + (q->row0 + q->out_first) * E, f->m->output_norm, k, E, hp->norm_eps,
                     nm_attn_kernel_get(w->k->isa));
        R += k;
        n_out++;
        only = q;
    }
    if (R == 0) return;
    nm_pool *pool = pool_for(h->pool, (double)R * (double)nv * (double)E);
    if (n_out == 1) {
        nm_matmul(pool, w, h->xb, R, only->c->logits + only->out_row * nv, act_scratch(f, R));
    } else {
        /* The contexts' logits live apart, so the product goes through the
         * host's FFN scratch (n_batch * n_ff floats, R <= n_batch) in slices
         * of the vocabulary, then to each context: the output matrix is
         * still read once. */
        int64_t S = h->n_batch * hp->n_ff / R;
        if (S > nv) S = nv;
        if (S > NM_PACK_ROWS) S -= S % NM_PACK_ROWS; /* slices of whole packed tiles */
        for (int64_t r0 = 0; r0 < nv; r0 += S) {
            const int64_t r1 = r0 + S < nv ? r0 + S : nv, len = r1 - r0;
            nm_matmul_rows(pool, w, r0, r1, h->xb, R, h->hb, len, h->act);
            int64_t g = 0;
            for (int s = 0; s < f->n_seqs; s++) {
                const nm_seq *q = &f->seqs[s];
                for (int64_t t = 0; t < q->n - q->out_first; t++, g++)
                    memcpy(q->c->logits + (q->out_row + t) * nv + r0, h->hb + g * len, (size_t)len * sizeof(float));
            }
        }
    }
    for (int s = 0; s < f->n_seqs; s++) {
        const nm_seq *q = &f->seqs[s];
        if (q->n > q->out_first) q->c->n_logits = q->out_row + q->n - q->out_first;
    }
}

static void forward(const nm_fwd *f) {
    const int64_t E = f->m->hp.n_embd;
    prof_start(f);
    for (int s = 0; s < f->n_seqs; s++)
        embed_tokens(f->m, f->seqs[s].tokens, f->seqs[s].n, f->host->x + f->seqs[s].row0 * E);
    prof_mark(f, NM_PHASE_EMBED);
    rope_prepare(f);
    prof_mark(f, NM_PHASE_ROPE_KV);
    for (int64_t l = 0; l < f->m->hp.n_layer; l++) {
        attention_block(f, l);
        ffn_block(f, l);
    }
    output_logits(f);
    prof_mark(f, NM_PHASE_LOGITS);
    for (int s = 0; s < f->n_seqs; s++) f->seqs[s].c->n_past += f->seqs[s].n;
}

/* Multiply-adds of one layer of a pass: the projections of every row, and
 * each row's attention over its keys (scores and weighted values). */
static double layer_macs(const nm_fwd *f) {
    const nm_hparams *hp = &f->m->hp;
    double per_row = 0, attn = 0;
    for (int p = 0; p < NM_PROJ_COUNT; p++) {
        const nm_mat *w = &f->m->layers[0].w[p];
        per_row += (double)w->rows * (double)w->cols;
    }
    for (int s = 0; s < f->n_seqs; s++) {
        const nm_seq *q = &f->seqs[s];
        /* keys pos0+1 .. pos0+n over the rows */
        attn += (double)q->n * ((double)q->pos0 + (double)(q->n + 1) / 2.0);
    }
    return per_row * (double)f->n + attn * 2.0 * (double)hp->n_head * (double)hp->head_dim;
}

/* Runs checked inputs in passes of at most host->n_batch rows and
 * BATCH_SEQS sequences, contexts in order: a context whose tokens do not
 * fit the rest of a pass continues in the next one, as nm_decode cuts a
 * long input in batches.  Logits: every row for logits_all contexts, else
 * the last token's, in the pass that takes it. */
static void run_passes(nm_context *const *ctxs, const int32_t *const *tokens, const int32_t *n_tokens,
                       int32_t n_ctxs) {
    nm_context *host = ctxs[0];
    nm_seq seqs[BATCH_SEQS];
    for (int32_t i = 0; i < n_ctxs; i++) ctxs[i]->n_logits = 0;
    int32_t i = 0;
    int64_t off = 0; /* tokens of ctxs[i] already run */
    while (i < n_ctxs) {
        int n_seqs = 0;
        int64_t rows = 0;
        while (i < n_ctxs && n_seqs < BATCH_SEQS && rows < host->n_batch) {
            nm_context *c = ctxs[i];
            const int64_t left = n_tokens[i] - off, room = host->n_batch - rows;
            const int64_t take = left < room ? left : room;
            const bool last = take == left;
            nm_seq *q = &seqs[n_seqs++];
            *q = (nm_seq){.c = c, .tokens = tokens[i] + off, .row0 = rows, .n = take, .pos0 = c->n_past};
            if (c->logits_all) {
                q->out_first = 0;
                q->out_row = off;
            } else {
                q->out_first = last ? take - 1 : take;
                q->out_row = 0;
            }
            rows += take;
            off += take;
            if (last) {
                i++;
                off = 0;
            }
        }
        nm_fwd f = {.m = host->m, .host = host, .seqs = seqs, .n_seqs = n_seqs, .n = rows};
        f.pool = pool_for(host->pool, layer_macs(&f) / (NM_PROJ_COUNT + 1));
        forward(&f);
    }
}

/* Checks one context's share of a decode call without changing anything;
 * idx >= 0 names the context in messages (nm_decode_batch). */
static nm_status check_decode(const nm_context *c, const int32_t *tokens, int32_t n, int32_t idx, nm_err *err) {
    char who[32] = "";
    if (idx >= 0) snprintf(who, sizeof who, "context %d: ", idx);
    if (n <= 0) return nm_err_set(err, NM_ERR_ARG, "%snothing to decode (%d tokens)", who, n);
    if (!tokens) return nm_err_set(err, NM_ERR_ARG, "%sno token array", who);
    if (c->n_past + n > c->n_ctx)
        return nm_err_set(err, NM_ERR_RANGE,
                          "%scontext full: %lld tokens already in the context + %d new exceed its size of %lld "
                          "(raise --ctx)",
                          who, (long long)c->n_past, n, (long long)c->n_ctx);
    if (c->logits_all && n > c->n_batch)
        return nm_err_set(err, NM_ERR_ARG, "%s%d tokens in one call exceed the batch size %lld (all logits kept)", who,
                          n, (long long)c->n_batch);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->m->hp.n_vocab)
            return nm_err_set(err, NM_ERR_ARG, "%stoken id %d at index %d is outside the vocabulary (0..%lld)", who,
                              tokens[i], i, (long long)c->m->hp.n_vocab - 1);
    return NM_OK;
}

nm_status nm_decode(nm_context *c, const int32_t *tokens, int32_t n, nm_err *err) {
    nm_status st = check_decode(c, tokens, n, -1, err);
    if (st) return st;
    run_passes(&c, &tokens, &n, 1);
    return NM_OK;
}

nm_status nm_decode_batch(nm_context *const *ctxs, const int32_t *const *tokens, const int32_t *n_tokens,
                          int32_t n_ctxs, nm_err *err) {
    if (n_ctxs <= 0 || !ctxs || !tokens || !n_tokens)
        return nm_err_set(err, NM_ERR_ARG, "nothing to decode (%d contexts)", n_ctxs);
    for (int32_t i = 0; i < n_ctxs; i++) {
        if (!ctxs[i]) return nm_err_set(err, NM_ERR_ARG, "context %d is NULL", i);
        if (ctxs[i]->m != ctxs[0]->m)
            return nm_err_set(err, NM_ERR_ARG, "context %d belongs to another model than context 0", i);
        /* One context twice would write its cache rows twice in one pass. */
        for (int32_t j = 0; j < i; j++)
            if (ctxs[j] == ctxs[i]) return nm_err_set(err, NM_ERR_ARG, "context %d is also context %d", i, j);
        nm_status st = check_decode(ctxs[i], tokens[i], n_tokens[i], i, err);
        if (st) return st;
    }
    run_passes(ctxs, tokens, n_tokens, n_ctxs);
    return NM_OK;
}
