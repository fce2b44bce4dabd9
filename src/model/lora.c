/* lora.c - LoRA adapters for inference: building and binding adapters,
 * per-context stacks and the product nm_model_proj adds, provenance checks.
 * File formats live in src/formats/peft.c and src/formats/gguf_lora.c,
 * merges in src/adapters/merge.c. */
#include "model/lora.h"
#include "base/base.h"
#include "train/gemm.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const PROJ_SHORT[NM_PROJ_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};

void nm_lora_layout_of_model(const nm_model *m, nm_lora_layout *lay) {
    memset(lay, 0, sizeof *lay);
    snprintf(lay->arch, sizeof lay->arch, "%s", m->arch);
    lay->n_layer = m->hp.n_layer;
    for (int p = 0; p < NM_PROJ_COUNT; p++) {
        lay->in[p] = m->layers[0].w[p].cols;
        lay->out[p] = m->layers[0].w[p].rows;
    }
    lay->head_dim = m->hp.head_dim;
    lay->permute_qk = m->hp.rope_type == NM_ROPE_NORM;
}

/* ====================================================================== */
/* building                                                               */
/* ====================================================================== */

nm_lora *nm_lora_create(int64_t n_layer) {
    if (n_layer < 1 || n_layer > 4096) return NULL;
    nm_lora *l = nm_calloc(1, sizeof *l);
    if (!l) return NULL;
    l->n_layer = n_layer;
    l->mods = nm_calloc((size_t)n_layer * NM_PROJ_COUNT, sizeof *l->mods);
    l->format = "peft";
    if (!l->mods) {
        free(l);
        return NULL;
    }
    return l;
}

nm_lora_mod *nm_lora_mod_at(const nm_lora *l, int64_t layer, nm_proj p) {
    return &l->mods[layer * NM_PROJ_COUNT + p];
}

float nm_lora_scale_for(float alpha, bool rslora, int64_t r) {
    if (r <= 0) return 0.0f;
    if (alpha == 0.0f) return 1.0f; /* llama.cpp: no alpha means the user scale alone */
    return rslora ? alpha / sqrtf((float)r) : alpha / (float)r;
}

/* Sizes far beyond any model keep every product below 2^62. */
enum { MAX_RANK = 1 << 16, MAX_WIDTH = 1 << 20 };

nm_status nm_lora_shape(nm_lora *l, int64_t layer, nm_proj p, int64_t r, int64_t in, int64_t out, nm_err *err) {
    if (layer < 0 || layer >= l->n_layer || p < 0 || p >= NM_PROJ_COUNT)
        return nm_err_set(err, NM_ERR_ARG, "adapter module (layer %lld) is out of range", (long long)layer);
    if (r < 1 || r > MAX_RANK || in < 1 || in > MAX_WIDTH || out < 1 || out > MAX_WIDTH)
        return nm_err_set(err, NM_ERR_FORMAT, "layer %lld %s: rank %lld, %lld inputs, %lld outputs is out of range",
                          (long long)layer, PROJ_SHORT[p], (long long)r, (long long)in, (long long)out);
    nm_lora_mod *m = nm_lora_mod_at(l, layer, p);
    m->r = r;
    m->in = in;
    m->out = out;
    return NM_OK;
}

nm_status nm_lora_alloc(nm_lora *l, nm_err *err) {
    uint64_t total = 0;
    for (int64_t i = 0; i < l->n_layer * NM_PROJ_COUNT; i++) {
        const nm_lora_mod *m = &l->mods[i];
        total += (uint64_t)m->r * (uint64_t)(m->in + m->out);
    }
    if (total > ((uint64_t)1 << 36))
        return nm_err_set(err, NM_ERR_RANGE, "adapter of %llu parameters is too large", (unsigned long long)total);
    free(l->arena);
    l->arena = nm_calloc((size_t)total + 1, sizeof(float));
    if (!l->arena)
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory for an adapter of %.1f MiB", (double)total * 4 / 1048576.0);
    float *p = l->arena;
    for (int64_t i = 0; i < l->n_layer * NM_PROJ_COUNT; i++) {
        nm_lora_mod *m = &l->mods[i];
        if (!m->r) continue;
        m->A = p, p += m->r * m->in;
        m->Bt = p, p += m->r * m->out;
        m->scale = nm_lora_scale_for(l->alpha, l->rslora, m->r);
    }
    l->n_params = total;
    return NM_OK;
}

/* The content fingerprint: shapes, scales and values in GGUF row order, so
 * that the same adapter has the same one in any format.  An adapter whose
 * q/k rows cannot be put in GGUF order yet is hashed as it is (it is
 * hashed again once bound). */
static void compute_fp(nm_lora *l) {
    nm_hash h;
    nm_hash_init(&h);
    nm_hash_u64(&h, (uint64_t)l->n_layer);
    for (int64_t ly = 0; ly < l->n_layer; ly++)
        for (int p = 0; p < NM_PROJ_COUNT; p++) {
            const nm_lora_mod *m = nm_lora_mod_at(l, ly, (nm_proj)p);
            if (!m->r) continue;
            uint32_t sb;
            memcpy(&sb, &m->scale, 4);
            nm_hash_u64(&h, (uint64_t)ly << 8 | (uint64_t)p);
            nm_hash_u64(&h, (uint64_t)m->r);
            nm_hash_u64(&h, (uint64_t)m->in << 32 | (uint64_t)m->out);
            nm_hash_u64(&h, sb);
            nm_hash_bytes(&h, m->A, (size_t)(m->r * m->in) * sizeof(float));
            nm_hash_bytes(&h, m->Bt, (size_t)(m->r * m->out) * sizeof(float));
        }
    nm_hash_hex(nm_hash_final(&h), l->fp);
}

void nm_lora_finish(nm_lora *l) {
    l->n_params = 0;
    l->rank = 0;
    for (int64_t i = 0; i < l->n_layer * NM_PROJ_COUNT; i++) {
        const nm_lora_mod *m = &l->mods[i];
        l->n_params += (uint64_t)m->r * (uint64_t)(m->in + m->out);
        if (m->r > l->rank) l->rank = m->r;
    }
    compute_fp(l);
}

static nm_status dup_opt(char **dst, const char *s, nm_err *err) {
    free(*dst);
    *dst = NULL;
    if (!s) return NM_OK;
    *dst = nm_strdup(s);
    return *dst ? NM_OK : nm_err_set(err, NM_ERR_NOMEM, "out of memory");
}

nm_status nm_lora_set_strings(nm_lora *l, const char *path, const char *base_name, const char *base_sig,
                              nm_err *err) {
    nm_status st;
    if ((st = dup_opt(&l->path, path, err)) || (st = dup_opt(&l->base_name, base_name, err)) ||
        (st = dup_opt(&l->base_sig, base_sig, err)))
        return st;
    return NM_OK;
}

static bool is_hex16(const char *s) {
    if (!s || strlen(s) != 16) return false;
    for (int i = 0; i < 16; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

/* Reads [{"fingerprint", "scale", "name"}, ...] (at most 256 entries). */
static nm_status parse_prov(const char *json, nm_lora_prov **out, size_t *n_out, nm_err *err) {
    *out = NULL;
    *n_out = 0;
    json_error_t je;
    json_t *a = json_loads(json, JSON_REJECT_DUPLICATES, &je);
    if (!a || !json_is_array(a) || json_array_size(a) > 256) {
        json_decref(a);
        return nm_err_set(err, NM_ERR_FORMAT, "the adapter provenance list is not a JSON array of adapters");
    }
    size_t n = json_array_size(a);
    nm_lora_prov *p = n ? nm_calloc(n, sizeof *p) : NULL;
    if (n && !p) {
        json_decref(a);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(a, i);
        const char *fp = json_string_value(json_object_get(e, "fingerprint"));
        json_t *sc = json_object_get(e, "scale");
        const char *name = json_string_value(json_object_get(e, "name"));
        if (!json_is_object(e) || !is_hex16(fp) || !json_is_number(sc) || !isfinite(json_number_value(sc))) {
            free(p);
            json_decref(a);
            return nm_err_set(err, NM_ERR_FORMAT,
                              "the adapter provenance list: entry %zu needs a 16-digit hex \"fingerprint\" and a "
                              "\"scale\"",
                              i);
        }
        memcpy(p[i].fp, fp, NM_FP_HEX);
        p[i].scale = (float)json_number_value(sc);
        snprintf(p[i].name, sizeof p[i].name, "%s", name ? name : "");
    }
    json_decref(a);
    *out = p;
    *n_out = n;
    return NM_OK;
}

nm_status nm_lora_parse_under(nm_lora *l, const char *json, nm_err *err) {
    free(l->under);
    l->under = NULL;
    l->n_under = 0;
    return parse_prov(json, &l->under, &l->n_under, err);
}

char *nm_lora_under_json(const nm_lora_prov *p, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; i < n && a; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "fingerprint", json_string(p[i].fp));
        json_object_set_new(e, "scale", json_real(p[i].scale));
        json_object_set_new(e, "name", json_string(p[i].name));
        json_array_append_new(a, e);
    }
    char *s = a ? json_dumps(a, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(a);
    return s;
}

void nm_lora_free(nm_lora *l) {
    if (!l) return;
    free(l->mods);
    free(l->arena);
    free(l->path);
    free(l->base_name);
    free(l->base_sig);
    free(l->under);
    free(l);
}

/* ====================================================================== */
/* row order and fitting                                                  */
/* ====================================================================== */

/* HF row of GGUF row r for heads of hd rows (the inverse of llama.cpp's
 * permute): GGUF h*hd + 2j + s  <->  HF h*hd + s*hd/2 + j. */
static int64_t hf_row(int64_t r, int64_t hd) {
    int64_t h = r / hd, i = r % hd;
    return h * hd + (i % 2) * (hd / 2) + i / 2;
}

nm_status nm_lora_set_row_order(nm_lora *l, bool hf, nm_err *err) {
    if (l->qk_hf == hf) return NM_OK;
    if (l->head_dim > 0 && !l->permute_qk) {
        l->qk_hf = hf; /* nothing is permuted for this architecture */
        return NM_OK;
    }
    if (l->head_dim <= 0 || l->head_dim % 2) {
        /* Only q/k modules are affected: an adapter without them is fine. */
        bool any = false;
        for (int64_t ly = 0; ly < l->n_layer; ly++)
            any |= nm_lora_mod_at(l, ly, NM_PROJ_Q)->r || nm_lora_mod_at(l, ly, NM_PROJ_K)->r;
        if (!any) {
            l->qk_hf = hf;
            return NM_OK;
        }
        return nm_err_set(err, NM_ERR_ARG,
                          "%s: putting the q_proj/k_proj rows in %s order needs the base model's head size "
                          "(give the base model, e.g. -m BASE.gguf)",
                          l->path ? l->path : "adapter", hf ? "Hugging Face" : "GGUF");
    }
    int64_t max_out = 0;
    for (int64_t ly = 0; ly < l->n_layer; ly++)
        for (int p = NM_PROJ_Q; p <= NM_PROJ_K; p++) {
            const nm_lora_mod *m = nm_lora_mod_at(l, ly, (nm_proj)p);
            if (m->r && m->out % l->head_dim)
                return nm_err_set(err, NM_ERR_FORMAT, "%s: layer %lld %s has %lld outputs, not whole heads of %lld",
                                  l->path ? l->path : "adapter", (long long)ly, PROJ_SHORT[p], (long long)m->out,
                                  (long long)l->head_dim);
            if (m->r && m->out > max_out) max_out = m->out;
        }
    float *tmp = nm_calloc((size_t)max_out + 1, sizeof(float));
    if (!tmp) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    for (int64_t ly = 0; ly < l->n_layer; ly++)
        for (int p = NM_PROJ_Q; p <= NM_PROJ_K; p++) {
            nm_lora_mod *m = nm_lora_mod_at(l, ly, (nm_proj)p);
            for (int64_t j = 0; j < m->r; j++) {
                float *row = m->Bt + j * m->out;
                memcpy(tmp, row, (size_t)m->out * sizeof(float));
                for (int64_t g = 0; g < m->out; g++) {
                    if (hf)
                        row[hf_row(g, l->head_dim)] = tmp[g];
                    else
                        row[g] = tmp[hf_row(g, l->head_dim)];
                }
            }
        }
    free(tmp);
    l->qk_hf = hf;
    return NM_OK;
}

nm_status nm_lora_get_b(const nm_lora *l, int64_t layer, nm_proj p, bool hf, float *dst, nm_err *err) {
    const nm_lora_mod *m = nm_lora_mod_at(l, layer, p);
    bool qk = p == NM_PROJ_Q || p == NM_PROJ_K;
    bool permute = qk && hf != l->qk_hf && !(l->head_dim > 0 && !l->permute_qk);
    if (permute && (l->head_dim <= 0 || m->out % l->head_dim || l->head_dim % 2))
        return nm_err_set(err, NM_ERR_ARG,
                          "%s: writing the q_proj/k_proj rows in %s order needs the base model's head size "
                          "(give the base model, e.g. -m BASE.gguf)",
                          l->path ? l->path : "adapter", hf ? "Hugging Face" : "GGUF");
    for (int64_t o = 0; o < m->out; o++) {
        /* row o of the output order reads row src of the stored order */
        int64_t src = o;
        if (permute) {
            if (hf) { /* HF row o holds GGUF row g with hf_row(g) == o */
                int64_t h = o / l->head_dim, i = o % l->head_dim, half = l->head_dim / 2;
                src = h * l->head_dim + (i % half) * 2 + i / half;
            } else {
                src = hf_row(o, l->head_dim);
            }
        }
        for (int64_t j = 0; j < m->r; j++) dst[o * m->r + j] = m->Bt[j * m->out + src];
    }
    return NM_OK;
}

nm_status nm_lora_fit(nm_lora *l, const nm_lora_layout *lay, nm_err *err) {
    const char *who = l->path ? l->path : "adapter";
    if (l->arch[0] && lay->arch[0] && strcmp(l->arch, lay->arch))
        return nm_err_set(err, NM_ERR_ARG, "%s: adapter for architecture '%s' cannot go on a '%s' model", who, l->arch,
                          lay->arch);
    if (l->head_dim > 0 && lay->head_dim > 0 && l->head_dim != lay->head_dim && l->qk_hf)
        return nm_err_set(err, NM_ERR_ARG, "%s: adapter made for heads of %lld, the model has heads of %lld", who,
                          (long long)l->head_dim, (long long)lay->head_dim);
    int64_t used = 0;
    for (int64_t ly = 0; ly < l->n_layer; ly++)
        for (int p = 0; p < NM_PROJ_COUNT; p++) {
            const nm_lora_mod *m = nm_lora_mod_at(l, ly, (nm_proj)p);
            if (!m->r) continue;
            if (ly >= lay->n_layer)
                return nm_err_set(err, NM_ERR_ARG, "%s: adapts layer %lld, the model has %lld layers", who,
                                  (long long)ly, (long long)lay->n_layer);
            if (m->in != lay->in[p] || m->out != lay->out[p])
                return nm_err_set(err, NM_ERR_ARG,
                                  "%s: layer %lld %s maps %lld inputs to %lld outputs, the model's projection %lld to "
                                  "%lld (an adapter for another model?)",
                                  who, (long long)ly, PROJ_SHORT[p], (long long)m->in, (long long)m->out,
                                  (long long)lay->in[p], (long long)lay->out[p]);
            used++;
        }
    if (!used) return nm_err_set(err, NM_ERR_ARG, "%s: the adapter adapts no projection", who);
    if (l->qk_hf) {
        if (l->head_dim <= 0) {
            l->head_dim = lay->head_dim;
            l->permute_qk = lay->permute_qk;
        }
        nm_status st = nm_lora_set_row_order(l, false, err);
        if (st) return st;
        compute_fp(l);
    }
    l->head_dim = lay->head_dim;
    l->permute_qk = lay->permute_qk;
    if (!l->arch[0]) snprintf(l->arch, sizeof l->arch, "%s", lay->arch);
    return NM_OK;
}

/* ====================================================================== */
/* products                                                               */
/* ====================================================================== */

void nm_lora_mod_fwd(const nm_lora_mod *m, float s, const float *x, float *y, int64_t n, float *u) {
    for (int64_t t0 = 0; t0 < n; t0 += NM_LORA_ROWS) {
        const int64_t k = n - t0 < NM_LORA_ROWS ? n - t0 : NM_LORA_ROWS;
        nm_gemm_nt(k, m->r, m->in, x + t0 * m->in, m->in, m->A, m->in, u, m->r, false);
        for (int64_t i = 0; i < k * m->r; i++) u[i] *= s;
        nm_gemm_nn(k, m->out, m->r, u, m->r, 1, m->Bt, m->out, y + t0 * m->out, m->out);
    }
}

void nm_lora_mod_bwd_dx(const nm_lora_mod *m, float s, const float *dy, float *dx, int64_t n, float *u) {
    for (int64_t t0 = 0; t0 < n; t0 += NM_LORA_ROWS) {
        const int64_t k = n - t0 < NM_LORA_ROWS ? n - t0 : NM_LORA_ROWS;
        nm_gemm_nt(k, m->r, m->out, dy + t0 * m->out, m->out, m->Bt, m->out, u, m->r, false);
        for (int64_t i = 0; i < k * m->r; i++) u[i] *= s;
        nm_gemm_nn(k, m->in, m->r, u, m->r, 1, m->A, m->in, dx + t0 * m->in, m->in);
    }
}

void nm_lora_apply(nm_lora_stack *s, int64_t layer, nm_proj p, const float *x, float *y, int64_t n) {
    for (size_t i = 0; i < s->n; i++) {
        const nm_lora *l = s->items[i].lora;
        if (layer >= l->n_layer) continue;
        const nm_lora_mod *m = nm_lora_mod_at(l, layer, p);
        const float sc = m->scale * s->items[i].scale;
        if (m->r && sc != 0.0f) nm_lora_mod_fwd(m, sc, x, y, n, s->u);
    }
}

/* ====================================================================== */
/* stacks on contexts                                                     */
/* ====================================================================== */

void nm_lora_stack_free(nm_lora_stack *s) {
    if (!s) return;
    free(s->items);
    free(s->u);
    free(s);
}

nm_status nm_context_set_loras(nm_context *c, const nm_lora_entry *items, size_t n, nm_err *err) {
    if (n == 0) {
        nm_lora_stack_free(c->loras);
        c->loras = NULL;
        return NM_OK;
    }
    if (!items) return nm_err_set(err, NM_ERR_ARG, "no adapter list");
    if (n > 1024) return nm_err_set(err, NM_ERR_ARG, "a stack of %zu adapters is too deep", n);
    int64_t r_max = 1;
    for (size_t i = 0; i < n; i++) {
        const nm_lora *l = items[i].lora;
        if (!l) return nm_err_set(err, NM_ERR_ARG, "adapter %zu of the stack is NULL", i);
        if (l->model != c->m)
            return nm_err_set(err, NM_ERR_ARG, "adapter %zu (%s) was not loaded for this context's model", i,
                              l->path ? l->path : "in memory");
        if (!isfinite(items[i].scale))
            return nm_err_set(err, NM_ERR_ARG, "adapter %zu (%s) has a non-finite scale", i,
                              l->path ? l->path : "in memory");
        if (l->rank > r_max) r_max = l->rank;
    }
    nm_lora_stack *s = nm_calloc(1, sizeof *s);
    if (s) {
        s->items = nm_calloc(n, sizeof *s->items);
        s->u = nm_calloc((size_t)NM_LORA_ROWS * (size_t)r_max, sizeof(float));
    }
    if (!s || !s->items || !s->u) {
        nm_lora_stack_free(s);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory for an adapter stack");
    }
    memcpy(s->items, items, n * sizeof *items);
    s->n = n;
    s->r_max = r_max;
    nm_lora_stack_free(c->loras);
    c->loras = s;
    return NM_OK;
}

size_t nm_context_n_loras(const nm_context *c) { return c->loras ? c->loras->n : 0; }

/* ====================================================================== */
/* opening and provenance                                                 */
/* ====================================================================== */

nm_status nm_lora_bind(nm_lora *l, const nm_model *m, nm_err *err) {
    nm_lora_layout lay;
    nm_lora_layout_of_model(m, &lay);
    nm_status st = nm_lora_fit(l, &lay, err);
    if (st) return st;
    l->model = m;
    return NM_OK;
}

static bool is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

nm_status nm_lora_open(const char *path, const nm_model *m, nm_lora **out, nm_err *err) {
    *out = NULL;
    if (!path) return nm_err_set(err, NM_ERR_ARG, "no adapter path");
    nm_lora *l = NULL;
    nm_status st;
    if (nm_peft_is_adapter(path)) {
        st = nm_peft_read(path, &l, err);
    } else if (is_dir(path)) {
        char p2[4096];
        snprintf(p2, sizeof p2, "%s/model.gguf", path);
        struct stat sb;
        if (stat(p2, &sb) == 0)
            return nm_err_set(err, NM_ERR_ARG,
                              "%s holds a fully fine-tuned model (%s), not an adapter: run it with -m %s", path, p2, p2);
        return nm_err_set(err, NM_ERR_NOT_FOUND,
                          "%s: not an adapter directory (no adapter_config.json + adapter_model.safetensors)", path);
    } else {
        st = nm_gguf_lora_read(path, &l, err);
    }
    if (st) return st;
    if (m && (st = nm_lora_bind(l, m, err))) {
        nm_lora_free(l);
        return st;
    }
    *out = l;
    return NM_OK;
}

nm_status nm_lora_merged_list(const nm_gguf *g, nm_lora_prov **out, size_t *n) {
    *out = NULL;
    *n = 0;
    nm_str s;
    if (nm_gguf_get_str(g, NM_KEY_MERGE_ADAPTERS, &s, NULL)) return NM_OK;
    char *text = nm_strndup(s.ptr, (size_t)s.len);
    if (!text) return NM_ERR_NOMEM;
    nm_status st = parse_prov(text, out, n, NULL);
    free(text);
    return st;
}

/* nm_lora_check_base with the base's identities taken before (ids) or,
 * NULL, from g's tensors. */
static nm_status check_base(const nm_lora *l, const nm_gguf *g, const nm_base_ids *ids, bool force, const nm_log *log,
                            bool *merged_ok, nm_err *err) {
    if (merged_ok) *merged_ok = false;
    const char *who = l->path ? l->path : "adapter";
    if (!l->has_base_fp) {
        nm_logf(log, NM_LOG_WARN, "%s has no base fingerprint (made outside nomoat?): it is not checked against %s",
                who, nm_gguf_path(g));
        return NM_OK;
    }
    char fp[NM_FP_HEX];
    if (ids) memcpy(fp, ids->fp, sizeof fp);
    else nm_base_fingerprint(g, fp);
    if (strcmp(fp, l->base_fp) == 0) return NM_OK;
    nm_str mb;
    if (nm_gguf_get_str(g, NM_KEY_MERGE_BASE, &mb, NULL) == NM_OK && mb.len == 16 &&
        memcmp(mb.ptr, l->base_fp, 16) == 0) {
        if (merged_ok) *merged_ok = true;
        nm_logf(log, NM_LOG_INFO, "%s: %s is its base with adapters merged in", who, nm_gguf_path(g));
        return NM_OK;
    }
    double r = NAN;
    if (l->base_sig && (ids ? nm_base_signature_match_sig(l->base_sig, ids->sig, &r)
                            : nm_base_signature_match(l->base_sig, g, &r))) {
        nm_logf(log, NM_LOG_INFO, "%s: %s holds its base's weights stored differently (sample correlation %.4f)", who,
                nm_gguf_path(g), r);
        return NM_OK;
    }
    char extra[96] = "";
    if (!isnan(r)) snprintf(extra, sizeof extra, "; weight samples correlate at %.2f", r);
    if (force) {
        nm_logf(log, NM_LOG_WARN, "%s was trained on another base (fingerprint %s%s%s, %s has %s%s): loaded anyway (--force)",
                who, l->base_fp, l->base_name ? " " : "", l->base_name ? l->base_name : "", nm_gguf_path(g), fp, extra);
        return NM_OK;
    }
    return nm_err_set(err, NM_ERR_ARG,
                      "%s was trained on another base model (fingerprint %s%s%s%s), not %s (fingerprint %s%s); "
                      "--force loads it anyway",
                      who, l->base_fp, l->base_name ? ", " : "", l->base_name ? l->base_name : "",
                      l->base_sig ? "" : ", no signature", nm_gguf_path(g), fp, extra);
}

nm_status nm_lora_check_base(const nm_lora *l, const nm_gguf *g, bool force, const nm_log *log, bool *merged_ok,
                             nm_err *err) {
    return check_base(l, g, NULL, force, log, merged_ok, err);
}

nm_status nm_lora_load(const nm_model *m, const char *path, bool force, const nm_log *log, nm_lora **out,
                       nm_err *err) {
    nm_lora *l;
    nm_status st = nm_lora_open(path, m, &l, err);
    if (st) return st;
    if ((st = check_base(l, m->gguf, nm_model_base_ids(m), force, log, NULL, err))) {
        nm_lora_free(l);
        return st;
    }
    nm_logf(log, NM_LOG_DEBUG, "%s: %s adapter, rank %lld, alpha %g%s, %llu parameters, fingerprint %s", path,
            l->format, (long long)l->rank, (double)l->alpha, l->rslora ? " (rsLoRA)" : "",
            (unsigned long long)l->n_params, l->fp);
    *out = l;
    return NM_OK;
}

/* The stack an adapter trained on top of others expects below it, against
 * the one it gets: the model's merge record (when the model is a merge of
 * the adapter's base) and the adapters before it.  Scales are compared too: an adapter trained
 * on A at 0.5 sees a different model under A at 1. */
static void check_stack(const nm_gguf *g, const nm_base_ids *ids, const nm_lora_entry *items, size_t n,
                        const nm_log *log);

void nm_lora_check_stack(const nm_model *m, const nm_lora_entry *items, size_t n, const nm_log *log) {
    check_stack(m->gguf, nm_model_base_ids(m), items, n, log);
}

void nm_lora_check_stack_gguf(const nm_gguf *g, const nm_lora_entry *items, size_t n, const nm_log *log) {
    check_stack(g, NULL, items, n, log);
}

static void check_stack(const nm_gguf *g, const nm_base_ids *ids, const nm_lora_entry *items, size_t n,
                        const nm_log *log) {
    nm_lora_prov *merged = NULL;
    size_t n_merged = 0;
    nm_lora_merged_list(g, &merged, &n_merged);
    for (size_t i = 0; i < n; i++) {
        const nm_lora *l = items[i].lora;
        bool via_merge = false;
        /* an adapter trained on the bare base is independent: stacking such
         * adapters is what stacks are for */
        if (l->n_under == 0) continue;
        if (check_base(l, g, ids, true, NULL, &via_merge, NULL)) continue;
        size_t n_have = (via_merge ? n_merged : 0) + i;
        bool same = n_have == l->n_under;
        for (size_t j = 0; same && j < n_have; j++) {
            const char *fp;
            float sc;
            if (via_merge && j < n_merged) {
                fp = merged[j].fp;
                sc = merged[j].scale;
            } else {
                const nm_lora_entry *e = &items[j - (via_merge ? n_merged : 0)];
                fp = e->lora->fp;
                sc = e->scale;
            }
            same = strcmp(fp, l->under[j].fp) == 0 && fabsf(sc - l->under[j].scale) <= 1e-6f * fabsf(sc);
        }
        if (same) continue;
        char want[512] = "", have[512] = "";
        size_t w = 0, h = 0;
        for (size_t j = 0; j < l->n_under && w < sizeof want; j++)
            w += (size_t)snprintf(want + w, sizeof want - w, "%s%s@%g", j ? ", " : "",
                                  l->under[j].name[0] ? l->under[j].name : l->under[j].fp, (double)l->under[j].scale);
        for (size_t j = 0; j < n_have && h < sizeof have; j++) {
            bool mj = via_merge && j < n_merged;
            const nm_lora_entry *e = mj ? NULL : &items[j - (via_merge ? n_merged : 0)];
            const char *nm = mj ? (merged[j].name[0] ? merged[j].name : merged[j].fp) : e->lora->fp;
            h += (size_t)snprintf(have + h, sizeof have - h, "%s%s@%g", j ? ", " : "", nm,
                                  (double)(mj ? merged[j].scale : e->scale));
        }
        nm_logf(log, NM_LOG_WARN, "%s was trained on top of [%s] but is stacked on [%s]",
                l->path ? l->path : "adapter", want, have);
    }
    free(merged);
}

/* ====================================================================== */
/* information                                                            */
/* ====================================================================== */

void nm_lora_get_info(const nm_lora *l, nm_lora_info *info) {
    memset(info, 0, sizeof *info);
    info->path = l->path;
    info->format = l->format;
    info->arch = l->arch;
    info->base_name = l->base_name;
    info->rank = (int32_t)l->rank;
    info->rank_min = (int32_t)l->rank;
    info->alpha = l->alpha;
    info->rslora = l->rslora;
    info->n_layer = (int32_t)l->n_layer;
    for (int64_t ly = 0; ly < l->n_layer; ly++) {
        bool any = false;
        for (int p = 0; p < NM_PROJ_COUNT; p++) {
            const nm_lora_mod *m = nm_lora_mod_at(l, ly, (nm_proj)p);
            if (!m->r) continue;
            any = true;
            info->targets |= 1u << p;
            info->n_modules++;
            if (m->r < info->rank_min) info->rank_min = (int32_t)m->r;
        }
        info->n_layers_adapted += any;
    }
    info->scale = nm_lora_scale_for(l->alpha, l->rslora, l->rank);
    info->n_params = l->n_params;
    info->file_bytes = l->file_bytes;
    info->fingerprint = l->fp;
    info->base_fingerprint = l->has_base_fp ? l->base_fp : NULL;
    info->has_signature = l->base_sig != NULL;
    info->n_under = l->n_under;
    info->bound = l->model != NULL;
    info->qk_rows_hf = l->qk_hf;
}

bool nm_lora_under(const nm_lora *l, size_t j, const char **fp, float *scale, const char **name) {
    if (j >= l->n_under) return false;
    if (fp) *fp = l->under[j].fp;
    if (scale) *scale = l->under[j].scale;
    if (name) *name = l->under[j].name;
    return true;
}

nm_status nm_lora_describe(const nm_lora *l, bool json, char **out, nm_err *err) {
    nm_lora_info in;
    nm_lora_get_info(l, &in);
    nm_buf b;
    nm_buf_init(&b);
    char targets[64] = "";
    size_t tn = 0;
    for (int p = 0; p < NM_PROJ_COUNT; p++)
        if (in.targets & (1u << p)) tn += (size_t)snprintf(targets + tn, sizeof targets - tn, "%s%s", tn ? "," : "", PROJ_SHORT[p]);
    const double mib = (double)in.n_params * 4.0 / 1048576.0;
    if (json) {
        nm_buf_printf(&b, "{\"path\": ");
        nm_buf_json_str(&b, in.path ? in.path : "", in.path ? strlen(in.path) : 0);
        nm_buf_printf(&b, ", \"format\": \"%s\", \"arch\": ", in.format);
        nm_buf_json_str(&b, in.arch, strlen(in.arch));
        nm_buf_printf(&b, ", \"rank\": %d, \"rank_min\": %d, \"alpha\": %.9g, \"rslora\": %s, \"scale\": %.9g", in.rank,
                      in.rank_min, (double)in.alpha, in.rslora ? "true" : "false", (double)in.scale);
        nm_buf_printf(&b, ", \"targets\": \"%s\", \"layers\": %d, \"layers_adapted\": %d, \"modules\": %d", targets,
                      in.n_layer, in.n_layers_adapted, in.n_modules);
        nm_buf_printf(&b,
                      ", \"params\": %llu, \"bytes_f32\": %llu, \"file_bytes\": %llu, \"fingerprint\": \"%s\", "
                      "\"base_fingerprint\": ",
                      (unsigned long long)in.n_params, (unsigned long long)in.n_params * 4,
                      (unsigned long long)in.file_bytes, in.fingerprint);
        if (in.base_fingerprint)
            nm_buf_printf(&b, "\"%s\"", in.base_fingerprint);
        else
            nm_buf_printf(&b, "null");
        nm_buf_printf(&b, ", \"base_signature\": %s, \"base_model\": ", in.has_signature ? "true" : "false");
        if (in.base_name)
            nm_buf_json_str(&b, in.base_name, strlen(in.base_name));
        else
            nm_buf_printf(&b, "null");
        nm_buf_printf(&b, ", \"trained_on_top_of\": ");
        char *u = nm_lora_under_json(l->under, l->n_under);
        nm_buf_printf(&b, "%s}\n", u ? u : "[]");
        free(u);
    } else {
        nm_buf_printf(&b, "adapter:      %s (%s)\n", in.path ? in.path : "(in memory)", in.format);
        if (in.arch[0]) nm_buf_printf(&b, "architecture: %s\n", in.arch);
        if (in.rank_min != in.rank)
            nm_buf_printf(&b, "rank:         %d to %d (per module)\n", in.rank_min, in.rank);
        else
            nm_buf_printf(&b, "rank:         %d\n", in.rank);
        nm_buf_printf(&b, "alpha:        %g%s (scale %g at rank %d)\n", (double)in.alpha,
                      in.rslora ? ", rsLoRA: alpha/sqrt(r)" : "", (double)in.scale, in.rank);
        nm_buf_printf(&b, "targets:      %s in %d of %d layers (%d modules)\n", targets, in.n_layers_adapted,
                      in.n_layer, in.n_modules);
        nm_buf_printf(&b, "size:         %llu parameters, %.2f MiB as F32", (unsigned long long)in.n_params, mib);
        if (in.file_bytes) nm_buf_printf(&b, ", %.2f MiB on disk", (double)in.file_bytes / 1048576.0);
        nm_buf_printf(&b, "\n");
        nm_buf_printf(&b, "fingerprint:  %s\n", in.fingerprint);
        if (in.base_fingerprint)
            nm_buf_printf(&b, "base:         fingerprint %s%s%s%s\n", in.base_fingerprint, in.base_name ? " (" : "",
                          in.base_name ? in.base_name : "", in.base_name ? ")" : "");
        else
            nm_buf_printf(&b, "base:         unknown (no fingerprint: made outside nomoat)%s%s\n",
                          in.base_name ? ", named " : "", in.base_name ? in.base_name : "");
        if (in.has_signature) nm_buf_printf(&b, "              with a weight signature (fits other storage types)\n");
        if (l->n_under == 0) {
            nm_buf_printf(&b, "trained on:   the base alone\n");
        } else {
            nm_buf_printf(&b, "trained on:   the base +");
            for (size_t j = 0; j < l->n_under; j++)
                nm_buf_printf(&b, "%s %s (fingerprint %s) at %g", j ? "," : "", l->under[j].name[0] ? l->under[j].name : "?",
                              l->under[j].fp, (double)l->under[j].scale);
            nm_buf_printf(&b, "\n");
        }
        if (in.qk_rows_hf) nm_buf_printf(&b, "note:         q/k rows in Hugging Face order (head size unknown until bound to a model)\n");
    }
    nm_buf_push(&b, "", 1);
    if (b.oom) {
        nm_buf_deinit(&b);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    *out = (char *)b.data;
    return NM_OK;
}

nm_status nm_lora_save(const nm_lora *l, const char *path, nm_lora_format fmt, nm_type type, nm_err *err) {
    if (fmt == NM_LORA_AUTO) {
        size_t n = strlen(path);
        fmt = n >= 5 && strcmp(path + n - 5, ".gguf") == 0 ? NM_LORA_GGUF : NM_LORA_PEFT;
    }
    if (fmt == NM_LORA_GGUF) return nm_gguf_lora_write(l, path, type, err);
    if (fmt == NM_LORA_PEFT) return nm_peft_write(l, path, type, err);
    return nm_err_set(err, NM_ERR_ARG, "unknown adapter format %d", (int)fmt);
}
