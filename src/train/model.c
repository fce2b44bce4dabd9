/* model.c - LLaMA forward and backward for LoRA and full fine-tuning.
 *
 * Memory plan.  The forward pass keeps, per layer, what its backward needs
 * (normalised inputs, q/k/v after RoPE, attention output and log-sum-exp,
 * gate/up/SwiGLU outputs, the LoRA intermediates A x).  With checkpointing
 * only each layer's input (the residual stream) is kept and one set of
 * activations is reused: the backward recomputes layer l's forward right
 * before its backward, so memory stays flat with depth for one extra
 * forward pass.  The output head runs in chunks of tokens, forward and
 * backward together, so the [T x n_vocab] logits never exist at once. */
#include "train/model.h"
#include "base/base.h"
#include "model/lora.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HEAD_CHUNK 64 /* tokens per output-head chunk */

static const char *const MOD_SHORT[NM_TM_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};
static const char *const MOD_GGUF[NM_TM_COUNT] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                                   "ffn_gate", "ffn_up", "ffn_down"};
static const char *const MOD_HF[NM_TM_COUNT] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                 "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                 "mlp.down_proj"};

const char *nm_tmod_short(nm_tmod m) { return m < NM_TM_COUNT ? MOD_SHORT[m] : "?"; }
const char *nm_tmod_gguf(nm_tmod m) { return m < NM_TM_COUNT ? MOD_GGUF[m] : "?"; }
const char *nm_tmod_hf(nm_tmod m) { return m < NM_TM_COUNT ? MOD_HF[m] : "?"; }

nm_status nm_tmod_parse(const char *list, unsigned *mask, nm_err *err) {
    *mask = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        char w[32];
        if (n == 0 || n >= sizeof w) return nm_err_set(err, NM_ERR_ARG, "targets '%s': empty or too long name", list);
        memcpy(w, p, n);
        w[n] = 0;
        unsigned bit = 0;
        if (strcasecmp(w, "all") == 0) {
            bit = NM_TM_ALL;
        } else if (strcasecmp(w, "attn") == 0) {
            bit = (1u << NM_TM_Q) | (1u << NM_TM_K) | (1u << NM_TM_V) | (1u << NM_TM_O);
        } else if (strcasecmp(w, "mlp") == 0 || strcasecmp(w, "ffn") == 0) {
            bit = (1u << NM_TM_GATE) | (1u << NM_TM_UP) | (1u << NM_TM_DOWN);
        } else {
            for (int m = 0; m < NM_TM_COUNT; m++) {
                const char *hf = strchr(MOD_HF[m], '.') + 1; /* "q_proj" */
                if (strcasecmp(w, MOD_SHORT[m]) == 0 || strcasecmp(w, MOD_GGUF[m]) == 0 || strcasecmp(w, hf) == 0)
                    bit = 1u << m;
            }
        }
        if (!bit)
            return nm_err_set(err, NM_ERR_ARG,
                              "targets: unknown module '%s' (use q,k,v,o,gate,up,down, attn, mlp or all)", w);
        *mask |= bit;
        p += n;
        if (*p == ',') p++;
    }
    if (!*mask) return nm_err_set(err, NM_ERR_ARG, "targets: empty list");
    return NM_OK;
}

/* ======================================================================== */
/* workspace                                                                */
/* ======================================================================== */

typedef struct layer_acts {
    const float *x; /* input of the layer (points into ws->xs) */
    float *h1, *rstd1, *q, *k, *v, *att, *lse, *x2, *h2, *rstd2, *g, *u, *m;
    float *lu[NM_TM_COUNT]; /* LoRA A x, [T x r] */
} layer_acts;

struct nm_tm_ws {
    int64_t T, r;
    bool ckpt;
    float *arena;
    uint64_t n_floats;
    int64_t n_sets;
    layer_acts *acts;
    float **xs; /* n_layer + 1 residual streams */
    float *xf, *rstdf, *cosv, *sinv, *loss;
    float *dx, *dh, *dq, *dk, *dv, *datt, *dg, *du, *dm, *lora_tmp, *logits, *dxf, *attn_scratch;
    int32_t *pos;
};

static void ws_free(nm_tm_ws *w) {
    if (!w) return;
    free(w->arena);
    free(w->acts);
    free(w->xs);
    free(w->pos);
    free(w);
}

/* Floats of one activation set for T tokens and LoRA rank r. */
static uint64_t set_floats(const nm_tm_hparams *hp, int64_t T, int64_t r) {
    uint64_t qd = (uint64_t)(hp->n_head * hp->head_dim), kvd = (uint64_t)(hp->n_kv * hp->head_dim);
    uint64_t per_tok = 3 * (uint64_t)hp->dim + 2 + 2 * qd + 2 * kvd + (uint64_t)hp->n_head +
                       3 * (uint64_t)hp->n_ff + NM_TM_COUNT * (uint64_t)r;
    return per_tok * (uint64_t)T;
}

/* Widest projection side (LoRA scratch is sized for it). */
static uint64_t max_width(const nm_tm_hparams *hp) {
    uint64_t w = (uint64_t)hp->dim;
    if ((uint64_t)hp->n_ff > w) w = (uint64_t)hp->n_ff;
    if ((uint64_t)(hp->n_head * hp->head_dim) > w) w = (uint64_t)(hp->n_head * hp->head_dim);
    return w;
}

static uint64_t lora_tmp_floats(const nm_tm_hparams *hp, int64_t T, int64_t r) {
    if (r <= 0) return 1;
    return 2 * (uint64_t)r * max_width(hp) + (uint64_t)T * (uint64_t)r + (uint64_t)T * max_width(hp);
}

static uint64_t ws_floats(const nm_tm_hparams *hp, int64_t T, int64_t r, bool ckpt, int nth, int64_t *n_sets) {
    uint64_t qd = (uint64_t)(hp->n_head * hp->head_dim), kvd = (uint64_t)(hp->n_kv * hp->head_dim);
    uint64_t D = (uint64_t)hp->dim, F = (uint64_t)hp->n_ff, uT = (uint64_t)T;
    *n_sets = ckpt ? 1 : hp->n_layer;
    uint64_t n = (uint64_t)*n_sets * set_floats(hp, T, r);
    n += (uint64_t)(hp->n_layer + 1) * uT * D;           /* xs */
    n += uT * D + uT + uT * (uint64_t)hp->n_rot + uT;    /* xf, rstdf, cos+sin, loss */
    n += uT * (2 * D + 2 * qd + 2 * kvd + 3 * F) + lora_tmp_floats(hp, T, r); /* backward */
    n += (uint64_t)HEAD_CHUNK * (uint64_t)hp->n_vocab + uT * D; /* logits chunk, dxf */
    n += (uint64_t)nth * 2 * NM_ATTN_QB * uT;                   /* attention blocks */
    return n;
}

static nm_status ws_ensure(nm_tmodel *m, int64_t T, int64_t r, nm_err *err) {
    nm_tm_ws *w = m->ws;
    if (w && w->T >= T && w->r >= r && w->ckpt == m->checkpointing) return NM_OK;
    ws_free(w);
    m->ws = NULL;
    const nm_tm_hparams *hp = &m->hp;
    w = nm_calloc(1, sizeof *w);
    if (!w) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    w->T = T;
    w->r = r;
    w->ckpt = m->checkpointing;
    w->n_floats = ws_floats(hp, T, r, w->ckpt, m->ops.nth, &w->n_sets);
    w->arena = nm_calloc((size_t)w->n_floats, sizeof(float));
    w->acts = nm_calloc((size_t)w->n_sets, sizeof *w->acts);
    w->xs = nm_calloc((size_t)hp->n_layer + 1, sizeof *w->xs);
    w->pos = nm_calloc((size_t)T, sizeof *w->pos);
    if (!w->arena || !w->acts || !w->xs || !w->pos) {
        double mib = (double)w->n_floats * 4.0 / 1048576.0;
        ws_free(w);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory for training activations (%.1f MiB for %lld tokens)",
                          mib, (long long)T);
    }
    float *p = w->arena;
#define TAKE(n) (p += (n), p - (n))
    int64_t D = hp->dim, F = hp->n_ff, H = hp->n_head, qd = H * hp->head_dim, kvd = hp->n_kv * hp->head_dim;
    for (int64_t s = 0; s < w->n_sets; s++) {
        layer_acts *a = &w->acts[s];
        a->h1 = TAKE(T * D);
        a->rstd1 = TAKE(T);
        a->q = TAKE(T * qd);
        a->k = TAKE(T * kvd);
        a->v = TAKE(T * kvd);
        a->att = TAKE(T * qd);
        a->lse = TAKE(T * H);
        a->x2 = TAKE(T * D);
        a->h2 = TAKE(T * D);
        a->rstd2 = TAKE(T);
        a->g = TAKE(T * F);
        a->u = TAKE(T * F);
        a->m = TAKE(T * F);
        for (int k = 0; k < NM_TM_COUNT; k++) a->lu[k] = TAKE(T * r);
    }
    for (int64_t l = 0; l <= hp->n_layer; l++) w->xs[l] = TAKE(T * D);
    w->xf = TAKE(T * D);
    w->rstdf = TAKE(T);
    w->cosv = TAKE(T * hp->n_rot / 2);
    w->sinv = TAKE(T * hp->n_rot / 2);
    w->loss = TAKE(T);
    w->dx = TAKE(T * D);
    w->dh = TAKE(T * D);
    w->dq = TAKE(T * qd);
    w->datt = TAKE(T * qd);
    w->dk = TAKE(T * kvd);
    w->dv = TAKE(T * kvd);
    w->dg = TAKE(T * F);
    w->du = TAKE(T * F);
    w->dm = TAKE(T * F);
    w->lora_tmp = TAKE((int64_t)lora_tmp_floats(hp, T, r));
    w->logits = TAKE((int64_t)HEAD_CHUNK * hp->n_vocab);
    w->dxf = TAKE(T * D);
    w->attn_scratch = TAKE((int64_t)m->ops.nth * 2 * NM_ATTN_QB * T);
#undef TAKE
    if ((uint64_t)(p - w->arena) > w->n_floats) { /* the two sizings disagree: a bug here, not in the input */
        ws_free(w);
        return nm_err_set(err, NM_ERR_INTERNAL, "training workspace layout overflow");
    }
    m->ws = w;
    return NM_OK;
}

uint64_t nm_tmodel_act_bytes(const nm_tmodel *m, const nm_tm_lora *lora, int64_t T) {
    int64_t n_sets;
    return 4 * ws_floats(&m->hp, T, lora ? lora->rank : 0, m->checkpointing, m->ops.nth, &n_sets);
}

/* ======================================================================== */
/* loading                                                                  */
/* ======================================================================== */

static nm_status get_tensor(const nm_gguf *g, const char *name, int64_t rows, int64_t cols,
                            const nm_gguf_tensor **out, nm_err *err) {
    const nm_gguf_tensor *t = nm_gguf_find_tensor(g, name);
    if (!t) return nm_err_set(err, NM_ERR_NOT_FOUND, "%s: missing tensor '%s'", nm_gguf_path(g), name);
    int64_t r = t->n_dims >= 2 ? t->ne[1] : 1;
    if (t->n_dims > 2 || t->ne[0] != cols || r != rows)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s' is %lld x %lld, expected %lld x %lld (ggml order)",
                          nm_gguf_path(g), name, (long long)t->ne[0], (long long)r, (long long)cols,
                          (long long)rows);
    *out = t;
    return NM_OK;
}

static nm_status get_hp_u(const nm_gguf *g, const char *arch, const char *key, bool required, int64_t dflt,
                          int64_t *v, nm_err *err) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    uint64_t u;
    nm_status st = nm_gguf_get_u64(g, k, &u, err);
    if (st == NM_ERR_NOT_FOUND && !required) {
        *v = dflt;
        return NM_OK;
    }
    if (st) return st;
    if (u == 0 || u > (1u << 30))
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %s = %llu is out of range", nm_gguf_path(g), k,
                          (unsigned long long)u);
    *v = (int64_t)u;
    return NM_OK;
}

static nm_status get_hp_f(const nm_gguf *g, const char *arch, const char *key, float dflt, float *v, nm_err *err) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    nm_status st = nm_gguf_get_f32(g, k, v, err);
    if (st == NM_ERR_NOT_FOUND) {
        *v = dflt;
        return NM_OK;
    }
    if (st) return st;
    if (!isfinite(*v) || *v <= 0)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %s = %g is out of range", nm_gguf_path(g), k, (double)*v);
    return NM_OK;
}

static nm_status read_hparams(const nm_gguf *g, nm_tm_hparams *hp, nm_err *err) {
    memset(hp, 0, sizeof *hp);
    nm_str a;
    nm_status st = nm_gguf_get_str(g, "general.architecture", &a, err);
    if (st) return st;
    if (a.len >= sizeof hp->arch) a.len = sizeof hp->arch - 1;
    memcpy(hp->arch, a.ptr, (size_t)a.len);
    hp->arch[a.len] = 0;
    if (strcmp(hp->arch, "llama") != 0)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: architecture '%s' cannot be trained yet (llama only)",
                          nm_gguf_path(g), hp->arch);
    const char *ar = hp->arch;
    if ((st = get_hp_u(g, ar, "embedding_length", true, 0, &hp->dim, err))) return st;
    if ((st = get_hp_u(g, ar, "block_count", true, 0, &hp->n_layer, err))) return st;
    if ((st = get_hp_u(g, ar, "feed_forward_length", true, 0, &hp->n_ff, err))) return st;
    if ((st = get_hp_u(g, ar, "attention.head_count", true, 0, &hp->n_head, err))) return st;
    if ((st = get_hp_u(g, ar, "attention.head_count_kv", false, hp->n_head, &hp->n_kv, err))) return st;
    if ((st = get_hp_u(g, ar, "context_length", false, 2048, &hp->n_ctx, err))) return st;
    if (hp->dim % hp->n_head != 0 || hp->n_head % hp->n_kv != 0)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %lld heads / %lld kv heads do not divide dim %lld",
                          nm_gguf_path(g), (long long)hp->n_head, (long long)hp->n_kv, (long long)hp->dim);
    if ((st = get_hp_u(g, ar, "attention.key_length", false, hp->dim / hp->n_head, &hp->head_dim, err))) return st;
    if ((st = get_hp_u(g, ar, "rope.dimension_count", false, hp->head_dim, &hp->n_rot, err))) return st;
    if (hp->n_rot > hp->head_dim || hp->n_rot % 2)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: rope.dimension_count %lld does not fit head size %lld",
                          nm_gguf_path(g), (long long)hp->n_rot, (long long)hp->head_dim);
    if ((st = get_hp_f(g, ar, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->eps, err))) return st;
    if ((st = get_hp_f(g, ar, "rope.freq_base", 10000.0f, &hp->rope_base, err))) return st;
    hp->rope_freq_scale = 1.0f;
    char k[128];
    snprintf(k, sizeof k, "%s.rope.scaling.type", ar);
    nm_str stype;
    if (nm_gguf_get_str(g, k, &stype, NULL) == NM_OK && !(stype.len == 4 && memcmp(stype.ptr, "none", 4) == 0)) {
        if (!(stype.len == 6 && memcmp(stype.ptr, "linear", 6) == 0))
            return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: rope scaling '%.*s' is not supported for training",
                              nm_gguf_path(g), (int)stype.len, stype.ptr);
        float factor;
        if ((st = get_hp_f(g, ar, "rope.scaling.factor", 1.0f, &factor, err))) return st;
        hp->rope_freq_scale = 1.0f / factor;
    }
    hp->rope_neox = false; /* llama: adjacent pairs */
    const nm_gguf_tensor *te = nm_gguf_find_tensor(g, "token_embd.weight");
    if (!te || te->n_dims != 2)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: missing or malformed tensor 'token_embd.weight'", nm_gguf_path(g));
    hp->n_vocab = te->ne[1];
    hp->tied_output = nm_gguf_find_tensor(g, "output.weight") == NULL;
    return NM_OK;
}

/* A float copy of a 1-D tensor (a norm weight) of any dequantizable type. */
static nm_status load_vec(const nm_gguf *g, const char *name, int64_t n, float *dst, nm_err *err) {
    const nm_gguf_tensor *t;
    nm_status st = get_tensor(g, name, 1, n, &t, err);
    if (st) return st;
    const nm_type_traits *tr = nm_type_traits_get(t->type);
    if (!tr || !tr->to_float || n % tr->blck_size)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: tensor '%s' has a type training cannot read",
                          nm_gguf_path(g), name);
    tr->to_float(t->data, dst, n);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s' holds a non-finite value", nm_gguf_path(g), name);
    return NM_OK;
}

/* A matrix: as stored (LoRA) or dequantized into trainable float32 (full). */
static nm_status load_mat(nm_tmodel *m, const char *name, int64_t rows, int64_t cols, nm_wmat *w, float *full_dst,
                          nm_err *err) {
    const nm_gguf_tensor *t;
    nm_status st = get_tensor(m->gguf, name, rows, cols, &t, err);
    if (st) return st;
    if ((st = nm_wmat_init(w, name, t->data, t->type, rows, cols, err))) return st;
    if (!full_dst) return NM_OK;
    for (int64_t r = 0; r < rows; r++) nm_wmat_row(w, r, full_dst + r * cols);
    return nm_wmat_init(w, name, full_dst, NM_TYPE_F32, rows, cols, err);
}

/* The full-fine-tuning parameter list, in file order; data/grad filled
 * later from the arena. */
static void add_param(nm_tmodel *m, const char *name, int64_t rows, int64_t cols) {
    nm_tparam *p = &m->params[m->n_params++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->n = rows * cols;
    p->ndim = rows > 1 ? 2 : 1;
    p->shape[0] = rows > 1 ? rows : cols;
    p->shape[1] = rows > 1 ? cols : 1;
}

static nm_tparam *find_param(nm_tmodel *m, const char *name) {
    for (int64_t i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    return NULL;
}

static nm_status setup_full_params(nm_tmodel *m, nm_err *err) {
    const nm_tm_hparams *hp = &m->hp;
    int64_t D = hp->dim, qd = hp->n_head * hp->head_dim, kvd = hp->n_kv * hp->head_dim, F = hp->n_ff;
    m->params = nm_calloc((size_t)(3 + hp->n_layer * 9), sizeof *m->params);
    if (!m->params) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    char name[96];
    add_param(m, "token_embd.weight", hp->n_vocab, D);
    add_param(m, "output_norm.weight", 1, D);
    if (!hp->tied_output) add_param(m, "output.weight", hp->n_vocab, D);
    const int64_t rows[NM_TM_COUNT] = {qd, kvd, kvd, D, F, F, D}, cols[NM_TM_COUNT] = {D, D, D, qd, D, D, F};
    for (int64_t l = 0; l < hp->n_layer; l++) {
        snprintf(name, sizeof name, "blk.%lld.attn_norm.weight", (long long)l);
        add_param(m, name, 1, D);
        snprintf(name, sizeof name, "blk.%lld.ffn_norm.weight", (long long)l);
        add_param(m, name, 1, D);
        for (int k = 0; k < NM_TM_COUNT; k++) {
            snprintf(name, sizeof name, "blk.%lld.%s.weight", (long long)l, MOD_GGUF[k]);
            add_param(m, name, rows[k], cols[k]);
        }
    }
    uint64_t total = 0;
    for (int64_t i = 0; i < m->n_params; i++) total += 2 * (uint64_t)m->params[i].n;
    m->full_arena = nm_calloc((size_t)total, sizeof(float));
    if (!m->full_arena)
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory for full fine-tuning (%.1f MiB)",
                          (double)total * 4.0 / 1048576.0);
    float *p = m->full_arena;
    for (int64_t i = 0; i < m->n_params; i++) {
        m->params[i].data = p;
        p += m->params[i].n;
        m->params[i].grad = p;
        p += m->params[i].n;
    }
    return NM_OK;
}

nm_status nm_tmodel_open(const char *path, bool full, nm_pool *pool, nm_tmodel **out, nm_err *err) {
    *out = NULL;
    nm_tmodel *m = nm_calloc(1, sizeof *m);
    if (!m) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    nm_status st = nm_gguf_open(path, &m->gguf, err);
    if (st) goto fail;
    if ((st = read_hparams(m->gguf, &m->hp, err))) goto fail;
    const nm_tm_hparams *hp = &m->hp;
    int64_t D = hp->dim, qd = hp->n_head * hp->head_dim, kvd = hp->n_kv * hp->head_dim, F = hp->n_ff;
    m->full = full;
    if (full && (st = setup_full_params(m, err))) goto fail;
    m->layers = nm_calloc((size_t)hp->n_layer, sizeof *m->layers);
    /* In LoRA mode the norms are small owned copies; in full mode they live
     * in the parameter arena. */
    float *norms = full ? NULL : nm_calloc((size_t)(2 * hp->n_layer + 1) * (size_t)D, sizeof(float));
    if (!m->layers || (!full && !norms)) {
        free(norms);
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto fail;
    }
#define PDATA(nm) (full ? find_param(m, nm)->data : NULL)
#define PGRAD(nm) (full ? find_param(m, nm)->grad : NULL)
    m->output_norm = full ? PDATA("output_norm.weight") : norms;
    if ((st = load_vec(m->gguf, "output_norm.weight", D, m->output_norm, err))) goto fail;
    if ((st = load_mat(m, "token_embd.weight", hp->n_vocab, D, &m->tok_embd, PDATA("token_embd.weight"), err)))
        goto fail;
    m->d_output_norm = PGRAD("output_norm.weight");
    m->d_tok_embd = PGRAD("token_embd.weight");
    m->d_output = hp->tied_output ? m->d_tok_embd : PGRAD("output.weight");
    if (hp->tied_output)
        m->output = m->tok_embd;
    else if ((st = load_mat(m, "output.weight", hp->n_vocab, D, &m->output, PDATA("output.weight"), err)))
        goto fail;
    const int64_t rows[NM_TM_COUNT] = {qd, kvd, kvd, D, F, F, D}, cols[NM_TM_COUNT] = {D, D, D, qd, D, D, F};
    char name[96];
    for (int64_t l = 0; l < hp->n_layer; l++) {
        nm_tm_layer *L = &m->layers[l];
        snprintf(name, sizeof name, "blk.%lld.attn_norm.weight", (long long)l);
        L->attn_norm = full ? PDATA(name) : norms + (1 + 2 * l) * D;
        L->d_attn_norm = PGRAD(name);
        if ((st = load_vec(m->gguf, name, D, L->attn_norm, err))) goto fail;
        snprintf(name, sizeof name, "blk.%lld.ffn_norm.weight", (long long)l);
        L->ffn_norm = full ? PDATA(name) : norms + (2 + 2 * l) * D;
        L->d_ffn_norm = PGRAD(name);
        if ((st = load_vec(m->gguf, name, D, L->ffn_norm, err))) goto fail;
        for (int k = 0; k < NM_TM_COUNT; k++) {
            snprintf(name, sizeof name, "blk.%lld.%s.weight", (long long)l, MOD_GGUF[k]);
            if ((st = load_mat(m, name, rows[k], cols[k], &L->w[k], PDATA(name), err))) goto fail;
            L->dw[k] = PGRAD(name);
        }
    }
#undef PDATA
#undef PGRAD
    int64_t max_cols = D > F ? D : F;
    if (qd > max_cols) max_cols = qd;
    if ((st = nm_ops_ctx_init(&m->ops, pool, max_cols, err))) goto fail;
    *out = m;
    return NM_OK;
fail:
    nm_tmodel_free(m);
    return st;
}

void nm_tmodel_free(nm_tmodel *m) {
    if (!m) return;
    if (!m->full) free(m->output_norm); /* the norms block starts there */
    free(m->layers);
    free(m->params);
    free(m->full_arena);
    ws_free(m->ws);
    free(m->frozen_u);
    nm_ops_ctx_deinit(&m->ops);
    nm_gguf_free(m->gguf);
    free(m);
}

/* ======================================================================== */
/* LoRA adapter                                                             */
/* ======================================================================== */

nm_tm_lora_mod *nm_tm_lora_mod_at(nm_tm_lora *l, int64_t layer, nm_tmod m) {
    return &l->mods[layer * NM_TM_COUNT + m];
}

nm_status nm_tm_lora_new(const nm_tmodel *m, int64_t rank, float alpha, bool rslora, float dropout,
                         unsigned targets, nm_tm_lora **out, nm_err *err) {
    *out = NULL;
    if (rank < 1 || rank > 4096) return nm_err_set(err, NM_ERR_ARG, "LoRA rank %lld is out of range", (long long)rank);
    if (!(alpha > 0) || !isfinite(alpha)) return nm_err_set(err, NM_ERR_ARG, "LoRA alpha must be positive");
    if (!(dropout >= 0 && dropout < 1)) return nm_err_set(err, NM_ERR_ARG, "LoRA dropout must be in [0, 1)");
    if (!(targets & NM_TM_ALL)) return nm_err_set(err, NM_ERR_ARG, "LoRA has no target module");
    nm_tm_lora *l = nm_calloc(1, sizeof *l);
    if (!l) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    l->rank = rank;
    l->alpha = alpha;
    l->rslora = rslora;
    l->scale = rslora ? alpha / sqrtf((float)rank) : alpha / (float)rank;
    l->dropout = dropout;
    l->targets = targets & NM_TM_ALL;
    l->n_layer = m->hp.n_layer;
    l->mods = nm_calloc((size_t)(l->n_layer * NM_TM_COUNT), sizeof *l->mods);
    l->params = nm_calloc((size_t)(l->n_layer * NM_TM_COUNT * 2), sizeof *l->params);
    if (!l->mods || !l->params) goto oom;
    uint64_t total = 0;
    for (int64_t ly = 0; ly < l->n_layer; ly++)
        for (int k = 0; k < NM_TM_COUNT; k++) {
            if (!(l->targets & (1u << k))) continue;
            const nm_wmat *w = &m->layers[ly].w[k];
            total += 2 * (uint64_t)rank * (uint64_t)(w->cols + w->rows);
        }
    l->arena = nm_calloc((size_t)total, sizeof(float));
    if (!l->arena) goto oom;
    float *p = l->arena;
    for (int64_t ly = 0; ly < l->n_layer; ly++)
        for (int k = 0; k < NM_TM_COUNT; k++) {
            if (!(l->targets & (1u << k))) continue;
            const nm_wmat *w = &m->layers[ly].w[k];
            nm_tm_lora_mod *md = nm_tm_lora_mod_at(l, ly, (nm_tmod)k);
            md->in = w->cols;
            md->out = w->rows;
            md->A = p, p += rank * md->in;
            md->dA = p, p += rank * md->in;
            md->B = p, p += md->out * rank;
            md->dB = p, p += md->out * rank;
            nm_tparam *pa = &l->params[l->n_params++], *pb = &l->params[l->n_params++];
            *pa = (nm_tparam){.data = md->A, .grad = md->dA, .n = rank * md->in, .shape = {rank, md->in}, .ndim = 2};
            *pb = (nm_tparam){.data = md->B, .grad = md->dB, .n = md->out * rank, .shape = {md->out, rank}, .ndim = 2};
            snprintf(pa->name, sizeof pa->name, "blk.%lld.%s.weight.lora_a", (long long)ly, MOD_GGUF[k]);
            snprintf(pb->name, sizeof pb->name, "blk.%lld.%s.weight.lora_b", (long long)ly, MOD_GGUF[k]);
        }
    *out = l;
    return NM_OK;
oom:
    nm_tm_lora_free(l);
    return nm_err_set(err, NM_ERR_NOMEM, "out of memory for the LoRA adapter");
}

void nm_tm_lora_free(nm_tm_lora *l) {
    if (!l) return;
    free(l->mods);
    free(l->params);
    free(l->arena);
    free(l);
}

void nm_tm_lora_init_peft(nm_tm_lora *l, uint64_t seed) {
    nm_rng rng;
    nm_rng_seed(&rng, seed);
    for (int64_t ly = 0; ly < l->n_layer; ly++)
        for (int k = 0; k < NM_TM_COUNT; k++) {
            nm_tm_lora_mod *md = nm_tm_lora_mod_at(l, ly, (nm_tmod)k);
            if (!md->A) continue;
            /* kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)), bound gain*sqrt(3/fan_in) = 1/sqrt(fan_in) */
            double bound = 1.0 / sqrt((double)md->in);
            for (int64_t i = 0; i < l->rank * md->in; i++)
                md->A[i] = (float)((2.0 * nm_rng_uniform(&rng) - 1.0) * bound);
            memset(md->B, 0, (size_t)(md->out * l->rank) * sizeof(float));
        }
}

/* ======================================================================== */
/* forward / backward                                                       */
/* ======================================================================== */

typedef struct run_ctx {
    nm_tmodel *m;
    nm_tm_lora *lora;
    int64_t T;
    nm_attn_shape ashape;
    uint64_t drop_seed;
    bool train; /* dropout on, activations kept for the backward */
    float *last_logits; /* if set: receives the logits of the last token */
    const nm_tm_head *hook; /* NULL: cross-entropy on the targets */
} run_ctx;

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The LoRA op of (layer, module), or false if it is not targeted. */
static bool lora_op(const run_ctx *rc, int64_t l, int k, nm_lora_op *op) {
    if (!rc->lora || !(rc->lora->targets & (1u << k))) return false;
    nm_tm_lora_mod *md = nm_tm_lora_mod_at(rc->lora, l, (nm_tmod)k);
    *op = (nm_lora_op){.A = md->A, .B = md->B, .dA = md->dA, .dB = md->dB, .r = rc->lora->rank,
                       .in = md->in, .out = md->out, .scale = rc->lora->scale,
                       .dropout = rc->train ? rc->lora->dropout : 0.0f,
                       .drop_seed = mix64(rc->drop_seed + 0x9e3779b97f4a7c15ULL * (uint64_t)(l * NM_TM_COUNT + k + 1))};
    return true;
}

/* The frozen stack's terms of (layer, module) for rows split between the
 * threads: each row is computed whole by one thread, in stack order, so
 * results do not depend on the thread count. */
typedef struct frozen_args {
    const nm_tmodel *m;
    int64_t l, T;
    int k;
    bool bwd;
    const float *in; /* x (forward) or dy (backward) */
    float *out;      /* y (forward) or dx (backward) */
} frozen_args;

static void frozen_task(void *arg, int ith, int nth) {
    const frozen_args *a = arg;
    int64_t t0, t1;
    nm_split_range(a->T, ith, nth, 1, &t0, &t1);
    if (t1 <= t0) return;
    float *u = a->m->frozen_u + (size_t)ith * NM_LORA_ROWS * (size_t)a->m->frozen_r;
    for (size_t i = 0; i < a->m->n_frozen; i++) {
        const nm_lora *fl = a->m->frozen[i].lora;
        if (a->l >= fl->n_layer) continue;
        const nm_lora_mod *md = nm_lora_mod_at(fl, a->l, (nm_proj)a->k);
        const float s = md->scale * a->m->frozen[i].scale;
        if (!md->r || s == 0.0f) continue;
        if (a->bwd)
            nm_lora_mod_bwd_dx(md, s, a->in + t0 * md->out, a->out + t0 * md->in, t1 - t0, u);
        else
            nm_lora_mod_fwd(md, s, a->in + t0 * md->in, a->out + t0 * md->out, t1 - t0, u);
    }
}

static void frozen_run(const run_ctx *rc, int64_t l, int k, bool bwd, const float *in, float *out) {
    nm_tmodel *m = rc->m;
    if (!m->n_frozen) return;
    frozen_args a = {m, l, rc->T, k, bwd, in, out};
    if (m->ops.pool && m->ops.nth > 1)
        nm_pool_run(m->ops.pool, frozen_task, &a);
    else
        frozen_task(&a, 0, 1);
}

nm_status nm_tmodel_set_frozen(nm_tmodel *m, const nm_lora_entry *items, size_t n, nm_err *err) {
    free(m->frozen_u);
    m->frozen_u = NULL;
    m->frozen = NULL;
    m->n_frozen = 0;
    m->frozen_r = 0;
    if (n == 0) return NM_OK;
    int64_t r = 1;
    for (size_t i = 0; i < n; i++) {
        const nm_lora *fl = items[i].lora;
        if (!fl) return nm_err_set(err, NM_ERR_ARG, "frozen adapter %zu is NULL", i);
        for (int64_t ly = 0; ly < fl->n_layer; ly++)
            for (int k = 0; k < NM_TM_COUNT; k++) {
                const nm_lora_mod *md = nm_lora_mod_at(fl, ly, (nm_proj)k);
                if (!md->r) continue;
                if (ly >= m->hp.n_layer || md->in != m->layers[ly].w[k].cols || md->out != m->layers[ly].w[k].rows ||
                    fl->qk_hf)
                    return nm_err_set(err, NM_ERR_ARG, "%s does not fit the model being trained",
                                      fl->path ? fl->path : "frozen adapter");
                if (md->r > r) r = md->r;
            }
    }
    m->frozen_u = nm_calloc((size_t)m->ops.nth * NM_LORA_ROWS * (size_t)r, sizeof(float));
    if (!m->frozen_u) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    m->frozen = items;
    m->n_frozen = n;
    m->frozen_r = r;
    return NM_OK;
}

static void linear_fwd(const run_ctx *rc, int64_t l, int k, float *y, const float *x, float *lu) {
    nm_tmodel *m = rc->m;
    nm_op_matmul_fwd(&m->ops, y, x, &m->layers[l].w[k], rc->T);
    frozen_run(rc, l, k, false, x, y);
    nm_lora_op op;
    if (lora_op(rc, l, k, &op)) nm_op_lora_fwd(&m->ops, y, lu, x, &op, rc->T, m->ws->lora_tmp);
}

/* dx may be NULL (no gradient wanted below this point). */
static void linear_bwd(const run_ctx *rc, int64_t l, int k, float *dx, const float *dy, const float *x,
                       const float *lu) {
    nm_tmodel *m = rc->m;
    float *dW = m->layers[l].dw[k];
    if (dx || dW) nm_op_matmul_bwd(&m->ops, dx, dW, dy, x, &m->layers[l].w[k], rc->T);
    if (dx) frozen_run(rc, l, k, true, dy, dx);
    nm_lora_op op;
    if (lora_op(rc, l, k, &op)) nm_op_lora_bwd(&m->ops, dx, dy, x, lu, &op, rc->T, m->ws->lora_tmp);
}

static void layer_fwd(const run_ctx *rc, int64_t l, layer_acts *a, float *x_out) {
    nm_tmodel *m = rc->m;
    nm_ops_ctx *c = &m->ops;
    const nm_tm_hparams *hp = &m->hp;
    const nm_tm_layer *L = &m->layers[l];
    nm_tm_ws *w = m->ws;
    int64_t T = rc->T, D = hp->dim, F = hp->n_ff;
    nm_op_rmsnorm_fwd(c, a->h1, a->rstd1, a->x, L->attn_norm, T, D, hp->eps);
    linear_fwd(rc, l, NM_TM_Q, a->q, a->h1, a->lu[NM_TM_Q]);
    linear_fwd(rc, l, NM_TM_K, a->k, a->h1, a->lu[NM_TM_K]);
    linear_fwd(rc, l, NM_TM_V, a->v, a->h1, a->lu[NM_TM_V]);
    nm_op_rope_fwd(c, a->q, w->cosv, w->sinv, T, hp->n_head, hp->head_dim, hp->n_rot, hp->rope_neox);
    nm_op_rope_fwd(c, a->k, w->cosv, w->sinv, T, hp->n_kv, hp->head_dim, hp->n_rot, hp->rope_neox);
    nm_op_attn_fwd(c, a->att, a->lse, a->q, a->k, a->v, &rc->ashape);
    linear_fwd(rc, l, NM_TM_O, a->x2, a->att, a->lu[NM_TM_O]);
    nm_op_add_fwd(c, a->x2, a->x2, a->x, T * D);
    nm_op_rmsnorm_fwd(c, a->h2, a->rstd2, a->x2, L->ffn_norm, T, D, hp->eps);
    linear_fwd(rc, l, NM_TM_GATE, a->g, a->h2, a->lu[NM_TM_GATE]);
    linear_fwd(rc, l, NM_TM_UP, a->u, a->h2, a->lu[NM_TM_UP]);
    nm_op_swiglu_fwd(c, a->m, a->g, a->u, T * F);
    linear_fwd(rc, l, NM_TM_DOWN, x_out, a->m, a->lu[NM_TM_DOWN]);
    nm_op_add_fwd(c, x_out, x_out, a->x2, T * D);
}

/* On entry w->dx holds d(layer output); on return d(layer input), unless
 * need_dx is false (nothing below wants it: LoRA training, first layer). */
static void layer_bwd(const run_ctx *rc, int64_t l, const layer_acts *a, bool need_dx) {
    nm_tmodel *m = rc->m;
    nm_ops_ctx *c = &m->ops;
    const nm_tm_hparams *hp = &m->hp;
    const nm_tm_layer *L = &m->layers[l];
    nm_tm_ws *w = m->ws;
    int64_t T = rc->T, D = hp->dim, F = hp->n_ff, qd = hp->n_head * hp->head_dim, kvd = hp->n_kv * hp->head_dim;
    /* feed-forward */
    memset(w->dm, 0, (size_t)(T * F) * sizeof(float));
    linear_bwd(rc, l, NM_TM_DOWN, w->dm, w->dx, a->m, a->lu[NM_TM_DOWN]);
    memset(w->dg, 0, (size_t)(T * F) * sizeof(float));
    memset(w->du, 0, (size_t)(T * F) * sizeof(float));
    nm_op_swiglu_bwd(c, w->dg, w->du, w->dm, a->g, a->u, T * F);
    memset(w->dh, 0, (size_t)(T * D) * sizeof(float));
    linear_bwd(rc, l, NM_TM_GATE, w->dh, w->dg, a->h2, a->lu[NM_TM_GATE]);
    linear_bwd(rc, l, NM_TM_UP, w->dh, w->du, a->h2, a->lu[NM_TM_UP]);
    nm_op_rmsnorm_bwd(c, w->dx, L->d_ffn_norm, w->dh, a->x2, L->ffn_norm, a->rstd2, T, D);
    /* attention (w->dx is now d x2; the residual passes it through) */
    memset(w->datt, 0, (size_t)(T * qd) * sizeof(float));
    linear_bwd(rc, l, NM_TM_O, w->datt, w->dx, a->att, a->lu[NM_TM_O]);
    memset(w->dq, 0, (size_t)(T * qd) * sizeof(float));
    memset(w->dk, 0, (size_t)(T * kvd) * sizeof(float));
    memset(w->dv, 0, (size_t)(T * kvd) * sizeof(float));
    nm_op_attn_bwd(c, w->dq, w->dk, w->dv, w->datt, a->q, a->k, a->v, a->att, a->lse, &rc->ashape);
    nm_op_rope_bwd(c, w->dq, w->cosv, w->sinv, T, hp->n_head, hp->head_dim, hp->n_rot, hp->rope_neox);
    nm_op_rope_bwd(c, w->dk, w->cosv, w->sinv, T, hp->n_kv, hp->head_dim, hp->n_rot, hp->rope_neox);
    float *dh = need_dx ? w->dh : NULL;
    if (dh) memset(dh, 0, (size_t)(T * D) * sizeof(float));
    linear_bwd(rc, l, NM_TM_Q, dh, w->dq, a->h1, a->lu[NM_TM_Q]);
    linear_bwd(rc, l, NM_TM_K, dh, w->dk, a->h1, a->lu[NM_TM_K]);
    linear_bwd(rc, l, NM_TM_V, dh, w->dv, a->h1, a->lu[NM_TM_V]);
    if (need_dx) nm_op_rmsnorm_bwd(c, w->dx, L->d_attn_norm, dh, a->x, L->attn_norm, a->rstd1, T, D);
}

static nm_status check_batch(const nm_tmodel *m, const nm_tm_batch *b, nm_err *err) {
    if (b->n_seq < 1 || b->seq_len < 1 || b->n_seq > (1 << 20) || b->seq_len > (1 << 24))
        return nm_err_set(err, NM_ERR_ARG, "batch of %lld x %lld tokens is out of range", (long long)b->n_seq,
                          (long long)b->seq_len);
    int64_t T = b->n_seq * b->seq_len;
    for (int64_t t = 0; t < T; t++) {
        if (b->tokens[t] < 0 || b->tokens[t] >= m->hp.n_vocab)
            return nm_err_set(err, NM_ERR_ARG, "token id %d at position %lld is outside the vocabulary (%lld)",
                              b->tokens[t], (long long)t, (long long)m->hp.n_vocab);
        if (b->targets && b->targets[t] >= m->hp.n_vocab)
            return nm_err_set(err, NM_ERR_ARG, "target id %d at position %lld is outside the vocabulary",
                              b->targets[t], (long long)t);
        if (b->pos && b->pos[t] < 0)
            return nm_err_set(err, NM_ERR_ARG, "negative position at %lld", (long long)t);
    }
    return NM_OK;
}

/* Forward of the whole stack; activations in ws (per layer, or only the
 * layer inputs with checkpointing / in evaluation). */
static void forward_layers(const run_ctx *rc, bool keep_all) {
    nm_tmodel *m = rc->m;
    nm_tm_ws *w = m->ws;
    for (int64_t l = 0; l < m->hp.n_layer; l++) {
        layer_acts *a = &w->acts[keep_all ? l : 0];
        a->x = w->xs[l];
        layer_fwd(rc, l, a, w->xs[l + 1]);
    }
}

/* Final norm, output head and loss in chunks; with backward, also the
 * head's backward into w->dx (overwritten). */
static void head(const run_ctx *rc, const int32_t *targets, bool backward, float dloss, double *loss_sum,
                 int64_t *n_tok) {
    nm_tmodel *m = rc->m;
    nm_ops_ctx *c = &m->ops;
    nm_tm_ws *w = m->ws;
    int64_t T = rc->T, D = m->hp.dim, V = m->hp.n_vocab, L = m->hp.n_layer;
    nm_op_rmsnorm_fwd(c, w->xf, w->rstdf, w->xs[L], m->output_norm, T, D, m->hp.eps);
    if (backward) memset(w->dxf, 0, (size_t)(T * D) * sizeof(float));
    double sum = 0;
    int64_t n = 0;
    const nm_tm_head *hk = rc->hook;
    if (hk && hk->scan)
        for (int64_t c0 = 0; c0 < T; c0 += HEAD_CHUNK) {
            int64_t ct = T - c0 < HEAD_CHUNK ? T - c0 : HEAD_CHUNK;
            nm_op_matmul_fwd(c, w->logits, w->xf + c0 * D, &m->output, ct);
            hk->scan(hk->user, c, c0, ct, V, w->logits);
        }
    for (int64_t c0 = 0; c0 < T; c0 += HEAD_CHUNK) {
        int64_t ct = T - c0 < HEAD_CHUNK ? T - c0 : HEAD_CHUNK;
        nm_op_matmul_fwd(c, w->logits, w->xf + c0 * D, &m->output, ct);
        if (rc->last_logits && c0 + ct == T) memcpy(rc->last_logits, w->logits + (ct - 1) * V, (size_t)V * sizeof(float));
        /* the same loss arithmetic in training and evaluation */
        if (hk)
            n += hk->loss(hk->user, c, c0, ct, V, w->logits, w->loss + c0, backward);
        else
            n += nm_op_xent_fused(c, w->loss + c0, w->logits, targets + c0, ct, V, backward ? dloss : 0.0f);
        for (int64_t t = 0; t < ct; t++) sum += w->loss[c0 + t];
        if (!backward) continue;
        nm_op_matmul_bwd(c, w->dxf + c0 * D, m->d_output, w->logits, w->xf + c0 * D, &m->output, ct);
    }
    *loss_sum = sum;
    *n_tok = n;
    if (!backward) return;
    memset(w->dx, 0, (size_t)(T * D) * sizeof(float));
    nm_op_rmsnorm_bwd(c, w->dx, m->d_output_norm, w->dxf, w->xs[L], m->output_norm, w->rstdf, T, D);
}

static nm_status run(nm_tmodel *m, nm_tm_lora *lora, const nm_tm_batch *b, const nm_tm_head *hook, bool train,
                     float dloss, uint64_t drop_seed, double *loss_sum, int64_t *n_tok, float *last_logits,
                     nm_err *err) {
    *loss_sum = 0;
    *n_tok = 0;
    if (m->full && lora) return nm_err_set(err, NM_ERR_ARG, "full fine-tuning and LoRA at once");
    if (train && !m->full && !lora) return nm_err_set(err, NM_ERR_ARG, "nothing to train: no LoRA adapter");
    if (!b->targets && !hook) return nm_err_set(err, NM_ERR_ARG, "batch without targets");
    if (hook && !hook->loss) return nm_err_set(err, NM_ERR_ARG, "loss hook without a loss function");
    nm_status st = check_batch(m, b, err);
    if (st) return st;
    int64_t T = b->n_seq * b->seq_len;
    if ((st = ws_ensure(m, T, lora ? lora->rank : 0, err))) return st;
    nm_tm_ws *w = m->ws;
    const nm_tm_hparams *hp = &m->hp;
    for (int64_t t = 0; t < T; t++) w->pos[t] = b->pos ? b->pos[t] : (int32_t)(t % b->seq_len);
    nm_rope_table(w->cosv, w->sinv, w->pos, T, hp->n_rot, hp->rope_base, hp->rope_freq_scale);
    run_ctx rc = {m,
                  lora,
                  T,
                  {b->n_seq, b->seq_len, hp->n_head, hp->n_kv, hp->head_dim, b->doc, w->attn_scratch},
                  drop_seed,
                  train,
                  last_logits,
                  hook};
    nm_op_embed_fwd(&m->ops, w->xs[0], b->tokens, T, &m->tok_embd);
    bool keep_all = train && !m->checkpointing;
    forward_layers(&rc, keep_all);
    head(&rc, b->targets, train, dloss, loss_sum, n_tok);
    if (!train) return NM_OK;
    for (int64_t l = hp->n_layer - 1; l >= 0; l--) {
        layer_acts *a = &w->acts[keep_all ? l : 0];
        if (!keep_all) { /* checkpointing: recompute this layer's activations */
            a->x = w->xs[l];
            layer_fwd(&rc, l, a, w->dxf); /* output discarded: dxf is free scratch here */
        }
        layer_bwd(&rc, l, a, m->full || l > 0);
    }
    if (m->full) nm_op_embed_bwd(&m->ops, m->d_tok_embd, w->dx, b->tokens, T, hp->dim);
    return NM_OK;
}

nm_status nm_tmodel_fwd_bwd(nm_tmodel *m, nm_tm_lora *lora, const nm_tm_batch *b, float dloss, uint64_t drop_seed,
                            double *loss_sum, int64_t *n_tok, nm_err *err) {
    return run(m, lora, b, NULL, true, dloss, drop_seed, loss_sum, n_tok, NULL, err);
}

nm_status nm_tmodel_fwd_bwd_head(nm_tmodel *m, nm_tm_lora *lora, const nm_tm_batch *b, const nm_tm_head *hook,
                                 float dloss, uint64_t drop_seed, double *loss_sum, int64_t *n_tok, nm_err *err) {
    return run(m, lora, b, hook, true, dloss, drop_seed, loss_sum, n_tok, NULL, err);
}

nm_status nm_tmodel_eval_head(nm_tmodel *m, nm_tm_lora *lora, const nm_tm_batch *b, const nm_tm_head *hook,
                              double *loss_sum, int64_t *n_tok, nm_err *err) {
    return run(m, lora, b, hook, false, 0.0f, 0, loss_sum, n_tok, NULL, err);
}

nm_status nm_tmodel_eval(nm_tmodel *m, nm_tm_lora *lora, const nm_tm_batch *b, double *loss_sum, int64_t *n_tok,
                         nm_err *err) {
    return run(m, lora, b, NULL, false, 0.0f, 0, loss_sum, n_tok, NULL, err);
}

nm_status nm_tmodel_logits(nm_tmodel *m, nm_tm_lora *lora, const int32_t *tokens, int64_t n, float *out,
                           nm_err *err) {
    if (n < 1) return nm_err_set(err, NM_ERR_ARG, "no tokens");
    int32_t *tgt = malloc((size_t)n * sizeof *tgt);
    if (!tgt) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++) tgt[i] = -1;
    nm_tm_batch b = {1, n, tokens, tgt, NULL, NULL};
    double s;
    int64_t k;
    nm_status st = run(m, lora, &b, NULL, false, 0.0f, 0, &s, &k, out, err);
    free(tgt);
    return st;
}
