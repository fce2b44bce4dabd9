/* gguf_lora.c - LoRA adapters as llama.cpp loads them (--lora FILE):
 *   general.type = "adapter", adapter.type = "lora",
 *   general.architecture = the base model's, adapter.lora.alpha (f32),
 *   tensors blk.N.attn_q.weight.lora_a with ggml shape [in, r] and
 *   blk.N.attn_q.weight.lora_b [r, out], i.e. A [r x in] and B [out x r]
 *   row-major, q/k rows of B in GGUF order (as the base weights).
 * llama.cpp scales each pair by user scale * alpha / r (r from the tensor)
 * and ignores *_norm.weight tensors, which this reader ignores too.
 * nomoat adds nomoat.* keys (fingerprints, stack, rsLoRA alpha, head size)
 * that llama.cpp keeps as plain metadata. */
#include "base/base.h"
#include "model/lora.h"
#include "tensor/types.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const GGUF_MOD[NM_PROJ_COUNT] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                                     "ffn_gate", "ffn_up", "ffn_down"};

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* "blk.N.attn_q.weight" + ".lora_a"/".lora_b"; false for anything else. */
static bool parse_name(const char *name, int64_t *layer, nm_proj *p, bool *is_b) {
    const char *s = name;
    if (strncmp(s, "blk.", 4) != 0) return false;
    s += 4;
    if (*s < '0' || *s > '9') return false;
    int64_t v = 0;
    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (*s++ - '0');
        if (v > 1000000) return false;
    }
    if (*s++ != '.') return false;
    for (int k = 0; k < NM_PROJ_COUNT; k++) {
        size_t n = strlen(GGUF_MOD[k]);
        if (strncmp(s, GGUF_MOD[k], n) != 0) continue;
        const char *t = s + n;
        if (strcmp(t, ".weight.lora_a") == 0)
            *is_b = false;
        else if (strcmp(t, ".weight.lora_b") == 0)
            *is_b = true;
        else
            return false;
        *layer = v;
        *p = (nm_proj)k;
        return true;
    }
    return false;
}

/* A string key of at most cap-1 bytes into buf; "" if absent. */
static nm_status get_str(const nm_gguf *g, const char *key, char *buf, size_t cap, bool *present, nm_err *err) {
    buf[0] = 0;
    *present = false;
    if (nm_gguf_find_key(g, key) < 0) return NM_OK;
    nm_str s;
    nm_status st = nm_gguf_get_str(g, key, &s, err);
    if (st) return st;
    if (s.len >= cap || memchr(s.ptr, 0, (size_t)s.len))
        return nm_err_set(err, NM_ERR_FORMAT, "%s: key %s is too long or holds a NUL", nm_gguf_path(g), key);
    memcpy(buf, s.ptr, (size_t)s.len);
    buf[s.len] = 0;
    *present = true;
    return NM_OK;
}

/* Rows of a tensor to float (any type with a decoder). */
static nm_status read_rows(const nm_gguf *g, const nm_gguf_tensor *t, float *dst, nm_err *err) {
    const nm_type_traits *tr = nm_type_traits_get(t->type);
    if (!tr || !tr->to_float || t->ne[0] % tr->blck_size)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: tensor '%s' has type %s, which cannot be read as floats",
                          nm_gguf_path(g), t->name, tr ? tr->name : "(unknown)");
    size_t rb = nm_type_row_bytes((nm_type)t->type, t->ne[0]);
    for (int64_t r = 0; r < t->ne[1]; r++) tr->to_float((const uint8_t *)t->data + (size_t)r * rb, dst + r * t->ne[0], t->ne[0]);
    int64_t n = t->ne[0] * t->ne[1];
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s' holds a non-finite value at %lld", nm_gguf_path(g),
                              t->name, (long long)i);
    return NM_OK;
}

typedef struct pair {
    const nm_gguf_tensor *a, *b;
} pair;

nm_status nm_gguf_lora_read_gguf(const nm_gguf *g, nm_lora **out, nm_err *err) {
    *out = NULL;
    const char *path = nm_gguf_path(g);
    char type[64], atype[64], arch[32];
    bool has_type, has_atype, has_arch;
    nm_status st;
    if ((st = get_str(g, "general.type", type, sizeof type, &has_type, err)) ||
        (st = get_str(g, "adapter.type", atype, sizeof atype, &has_atype, err)) ||
        (st = get_str(g, "general.architecture", arch, sizeof arch, &has_arch, err)))
        return st;
    if (!has_type || strcmp(type, "adapter") != 0) {
        if (nm_gguf_find_tensor(g, "token_embd.weight"))
            return nm_err_set(err, NM_ERR_ARG, "%s is a model, not an adapter (use it with -m)", path);
        return nm_err_set(err, NM_ERR_FORMAT, "%s: not a LoRA adapter (general.type is '%s', expected 'adapter')", path,
                          has_type ? type : "missing");
    }
    if (!has_atype || strcmp(atype, "lora") != 0)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: adapter.type is '%s', only 'lora' is supported", path,
                          has_atype ? atype : "missing");
    float alpha = 0.0f;
    if (nm_gguf_find_key(g, "adapter.lora.alpha") >= 0) {
        if ((st = nm_gguf_get_f32(g, "adapter.lora.alpha", &alpha, err))) return st;
        if (!isfinite(alpha) || alpha < 0 || alpha > 1e9f)
            return nm_err_set(err, NM_ERR_FORMAT, "%s: adapter.lora.alpha = %g is out of range", path, (double)alpha);
    }
    /* nomoat's rsLoRA record: adapter.lora.alpha is then the equivalent
     * alpha / r alpha llama.cpp needs, the original alpha is here. */
    bool rslora = false;
    if (nm_gguf_find_key(g, "nomoat.lora.rslora") >= 0 && (st = nm_gguf_get_bool(g, "nomoat.lora.rslora", &rslora, err)))
        return st;
    if (rslora) {
        if ((st = nm_gguf_get_f32(g, "nomoat.lora.alpha", &alpha, err))) return st;
        if (!isfinite(alpha) || alpha <= 0 || alpha > 1e9f)
            return nm_err_set(err, NM_ERR_FORMAT, "%s: nomoat.lora.alpha = %g is out of range", path, (double)alpha);
    }

    int64_t n_layer = 0;
    for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++) {
        const nm_gguf_tensor *t = nm_gguf_tensor_at(g, i);
        int64_t layer;
        nm_proj p;
        bool is_b;
        if (parse_name(t->name, &layer, &p, &is_b)) {
            if (layer + 1 > n_layer) n_layer = layer + 1;
        } else if (!ends_with(t->name, "_norm.weight")) { /* llama.cpp ignores those too */
            return nm_err_set(err, NM_ERR_UNSUPPORTED,
                              "%s: tensor '%s' matches no projection nomoat adapts (blk.N.attn_q/attn_k/attn_v/"
                              "attn_output/ffn_gate/ffn_up/ffn_down.weight.lora_a/lora_b)",
                              path, t->name);
        }
    }
    if (n_layer == 0) return nm_err_set(err, NM_ERR_FORMAT, "%s: the adapter holds no LoRA tensor", path);
    if (n_layer > 4096) return nm_err_set(err, NM_ERR_FORMAT, "%s: layer %lld is out of range", path, (long long)n_layer - 1);
    pair *pairs = nm_calloc((size_t)n_layer * NM_PROJ_COUNT, sizeof *pairs);
    nm_lora *l = nm_lora_create(n_layer);
    float *tmp = NULL;
    if (!pairs || !l) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++) {
        const nm_gguf_tensor *t = nm_gguf_tensor_at(g, i);
        int64_t layer;
        nm_proj p;
        bool is_b;
        if (!parse_name(t->name, &layer, &p, &is_b)) continue;
        if (t->n_dims != 2) {
            st = nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s' has %u dimensions, a LoRA matrix has 2", path, t->name,
                            t->n_dims);
            goto done;
        }
        pair *pp = &pairs[layer * NM_PROJ_COUNT + p];
        if (is_b) /* names are unique: the reader refuses duplicates */
            pp->b = t;
        else
            pp->a = t;
    }
    l->alpha = alpha;
    l->rslora = rslora;
    int64_t max_n = 0;
    for (int64_t ly = 0; ly < n_layer; ly++)
        for (int p = 0; p < NM_PROJ_COUNT; p++) {
            const pair *pp = &pairs[ly * NM_PROJ_COUNT + p];
            if (!pp->a && !pp->b) continue;
            if (!pp->a || !pp->b) {
                st = nm_err_set(err, NM_ERR_FORMAT, "%s: LoRA tensor pair for 'blk.%lld.%s.weight' is missing %s", path,
                                (long long)ly, GGUF_MOD[p], pp->a ? "lora_b" : "lora_a");
                goto done;
            }
            /* lora_a ne [in, r], lora_b ne [r, out] */
            if (pp->a->ne[1] != pp->b->ne[0]) {
                st = nm_err_set(err, NM_ERR_FORMAT,
                                "%s: '%s' is [%lld, %lld] and '%s' [%lld, %lld] (ggml order): lora_a must be [in, r] and "
                                "lora_b [r, out]",
                                path, pp->a->name, (long long)pp->a->ne[0], (long long)pp->a->ne[1], pp->b->name,
                                (long long)pp->b->ne[0], (long long)pp->b->ne[1]);
                goto done;
            }
            nm_err e2 = {0};
            if ((st = nm_lora_shape(l, ly, (nm_proj)p, pp->a->ne[1], pp->a->ne[0], pp->b->ne[1], &e2))) {
                nm_err_set(err, st, "%s: %s", path, e2.msg);
                goto done;
            }
            if (pp->b->ne[0] * pp->b->ne[1] > max_n) max_n = pp->b->ne[0] * pp->b->ne[1];
        }
    if ((st = nm_lora_alloc(l, err))) goto done;
    tmp = nm_calloc((size_t)max_n + 1, sizeof *tmp);
    if (!tmp) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int64_t ly = 0; ly < n_layer && !st; ly++)
        for (int p = 0; p < NM_PROJ_COUNT && !st; p++) {
            nm_lora_mod *m = nm_lora_mod_at(l, ly, (nm_proj)p);
            if (!m->r) continue;
            const pair *pp = &pairs[ly * NM_PROJ_COUNT + p];
            if ((st = read_rows(g, pp->a, m->A, err)) || (st = read_rows(g, pp->b, tmp, err))) break;
            for (int64_t o = 0; o < m->out; o++)
                for (int64_t j = 0; j < m->r; j++) m->Bt[j * m->out + o] = tmp[o * m->r + j];
        }
    if (st) goto done;

    char buf[4096];
    bool has;
    snprintf(l->arch, sizeof l->arch, "%s", arch);
    l->qk_hf = false;
    if ((st = get_str(g, "nomoat.base_fingerprint", buf, sizeof buf, &has, err))) goto done;
    if (has && strlen(buf) == 16) {
        memcpy(l->base_fp, buf, NM_FP_HEX);
        l->has_base_fp = true;
    }
    char base_name[256];
    bool has_name;
    if ((st = get_str(g, "nomoat.base_model", base_name, sizeof base_name, &has_name, err)) ||
        (st = get_str(g, "nomoat.base_signature", buf, sizeof buf, &has, err)) ||
        (st = nm_lora_set_strings(l, path, has_name ? base_name : NULL, has ? buf : NULL, err)))
        goto done;
    if (nm_gguf_find_key(g, "nomoat.stack") >= 0) {
        nm_str s;
        if ((st = nm_gguf_get_str(g, "nomoat.stack", &s, err))) goto done;
        char *text = nm_strndup(s.ptr, (size_t)s.len);
        nm_err e3 = {0};
        st = text ? nm_lora_parse_under(l, text, &e3) : NM_ERR_NOMEM;
        free(text);
        if (st) {
            nm_err_set(err, st, "%s: nomoat.stack: %s", path, e3.msg[0] ? e3.msg : "out of memory");
            goto done;
        }
    }
    if (nm_gguf_find_key(g, "nomoat.head_dim") >= 0) {
        uint32_t hd;
        if ((st = nm_gguf_get_u32(g, "nomoat.head_dim", &hd, err))) goto done;
        if (hd < 2 || hd > (1u << 16) || hd % 2) {
            st = nm_err_set(err, NM_ERR_FORMAT, "%s: nomoat.head_dim %u is not a head size", path, hd);
            goto done;
        }
        l->head_dim = hd;
        char rope[16];
        if ((st = get_str(g, "nomoat.rope", rope, sizeof rope, &has, err))) goto done;
        l->permute_qk = !(has && strcmp(rope, "neox") == 0);
    }
    l->format = "gguf";
    l->file_bytes = nm_gguf_file_size(g);
    nm_lora_finish(l);
done:
    free(tmp);
    free(pairs);
    if (st) {
        nm_lora_free(l);
        return st;
    }
    *out = l;
    return NM_OK;
}

nm_status nm_gguf_lora_read(const char *path, nm_lora **out, nm_err *err) {
    nm_gguf *g;
    nm_status st = nm_gguf_open(path, &g, err);
    if (st) return st;
    st = nm_gguf_lora_read_gguf(g, out, err);
    nm_gguf_free(g);
    return st;
}

/* ---- writing ---- */

/* rows x cols floats as type t (Q8_0 only where cols fits its blocks:
 * otherwise F32, which llama.cpp reads as well).  Returns the type used;
 * *bytes gets the size of a malloc()ed *out. */
static nm_type encode(nm_type t, const float *src, int64_t rows, int64_t cols, void **out, size_t *bytes) {
    if (nm_type_row_bytes(t, cols) == 0) t = NM_TYPE_F32;
    size_t rb = nm_type_row_bytes(t, cols);
    uint8_t *dst = nm_calloc((size_t)rows, rb);
    *out = dst;
    *bytes = (size_t)rows * rb;
    if (!dst) return t;
    for (int64_t r = 0; r < rows; r++) nm_quantize(t, src + r * cols, dst + (size_t)r * rb, cols, NULL);
    return t;
}

nm_status nm_gguf_lora_write(const nm_lora *l, const char *path, nm_type type, nm_err *err) {
    if (type != NM_TYPE_F32 && type != NM_TYPE_F16 && type != NM_TYPE_BF16 && type != NM_TYPE_Q8_0)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "a GGUF LoRA is written as F32, F16, BF16 or Q8_0, not %s",
                          nm_type_name(type) ? nm_type_name(type) : "(unknown)");
    /* llama.cpp's scale is alpha / r for every pair: rsLoRA's alpha / sqrt(r)
     * is alpha * sqrt(r) / r, one alpha only if every rank is the same. */
    float alpha = l->alpha;
    if (l->rslora) {
        for (int64_t i = 0; i < l->n_layer * NM_PROJ_COUNT; i++)
            if (l->mods[i].r && l->mods[i].r != l->rank)
                return nm_err_set(err, NM_ERR_UNSUPPORTED,
                                  "%s: an rsLoRA adapter with ranks that differ between modules has no GGUF alpha "
                                  "(merge it into one rank first: nomoat adapter merge --rank N)",
                                  l->path ? l->path : "adapter");
        alpha = nm_lora_scale_for(l->alpha, true, l->rank) * (float)l->rank;
    }
    nm_gguf_writer *w = nm_gguf_writer_new(3);
    if (!w) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    nm_status st = NM_OK;
    bool ok = true;
    ok &= !nm_gguf_writer_set_str(w, "general.architecture", l->arch[0] ? l->arch : "llama");
    ok &= !nm_gguf_writer_set_str(w, "general.type", "adapter");
    ok &= !nm_gguf_writer_set_str(w, "adapter.type", "lora");
    ok &= !nm_gguf_writer_set_f32(w, "adapter.lora.alpha", alpha);
    if (l->rslora) {
        ok &= !nm_gguf_writer_set_bool(w, "nomoat.lora.rslora", true);
        ok &= !nm_gguf_writer_set_f32(w, "nomoat.lora.alpha", l->alpha);
    }
    if (l->base_name) ok &= !nm_gguf_writer_set_str(w, "nomoat.base_model", l->base_name);
    if (l->has_base_fp) ok &= !nm_gguf_writer_set_str(w, "nomoat.base_fingerprint", l->base_fp);
    if (l->base_sig) ok &= !nm_gguf_writer_set_str(w, "nomoat.base_signature", l->base_sig);
    if (l->n_under) {
        char *u = nm_lora_under_json(l->under, l->n_under);
        ok &= u && !nm_gguf_writer_set_str(w, "nomoat.stack", u);
        free(u);
    }
    if (l->head_dim > 0) {
        ok &= !nm_gguf_writer_set_u32(w, "nomoat.head_dim", (uint32_t)l->head_dim);
        ok &= !nm_gguf_writer_set_str(w, "nomoat.rope", l->permute_qk ? "norm" : "neox");
    }
    if (!ok) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    int64_t max_b = 0;
    for (int64_t i = 0; i < l->n_layer * NM_PROJ_COUNT; i++)
        if (l->mods[i].r * l->mods[i].out > max_b) max_b = l->mods[i].r * l->mods[i].out;
    float *bbuf = nm_calloc((size_t)max_b + 1, sizeof(float));
    if (!bbuf && !st) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    char name[128];
    for (int64_t ly = 0; ly < l->n_layer && !st; ly++)
        for (int k = 0; k < NM_PROJ_COUNT && !st; k++) {
            const nm_lora_mod *m = nm_lora_mod_at(l, ly, (nm_proj)k);
            if (!m->r) continue;
            if ((st = nm_lora_get_b(l, ly, (nm_proj)k, false, bbuf, err))) break;
            for (int ab = 0; ab < 2 && !st; ab++) {
                const float *src = ab ? bbuf : m->A;
                int64_t rows = ab ? m->out : m->r, cols = ab ? m->r : m->in;
                void *data;
                size_t bytes;
                nm_type tt = encode(type, src, rows, cols, &data, &bytes);
                if (!data) {
                    st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
                    break;
                }
                int64_t ne[2] = {cols, rows};
                snprintf(name, sizeof name, "blk.%lld.%s.weight.lora_%c", (long long)ly, GGUF_MOD[k], ab ? 'b' : 'a');
                st = nm_gguf_writer_add_tensor_owned(w, name, tt, 2, ne, data, bytes, err);
            }
        }
    free(bbuf);
    if (!st) st = nm_gguf_writer_write(w, path, err);
    nm_gguf_writer_free(w);
    return st;
}
