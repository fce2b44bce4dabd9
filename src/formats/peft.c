/* peft.c - LoRA adapters as Hugging Face PEFT writes them:
 *   DIR/adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha",
 *                                   "use_rslora", "target_modules", ...}
 *   DIR/adapter_model.safetensors  base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight [r, in]
 *                                  ... .lora_B.weight [out, r]   (F32, F16, BF16)
 * nomoat adds to the safetensors __metadata__ what it needs to check and
 * convert the adapter without its base model: nomoat.base_fingerprint,
 * nomoat.base_signature, nomoat.stack (the adapters it was trained on top
 * of), nomoat.lora_b_rows ("hf": q/k rows in Hugging Face order),
 * nomoat.head_dim, nomoat.rope ("norm": LLaMA RoPE, whose q/k rows GGUF
 * permutes; "neox": no permutation) and nomoat.arch. */
#include "base/base.h"
#include "model/lora.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PEFT_WEIGHTS "adapter_model.safetensors"
#define PEFT_CONFIG "adapter_config.json"
#define MAX_HEAD_DIM (1 << 16)

/* Hugging Face module names of the seven projections, in nm_proj order. */
static const char *const HF_MOD[NM_PROJ_COUNT] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                   "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                   "mlp.down_proj"};

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static bool file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

bool nm_peft_is_adapter(const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0) return false;
    if (S_ISREG(sb.st_mode)) return ends_with(path, ".safetensors");
    if (!S_ISDIR(sb.st_mode)) return false;
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", path, PEFT_CONFIG);
    return file_exists(p);
}

/* ---- adapter_config.json ---- */

static bool empty_or_null(const json_t *v) {
    return !v || json_is_null(v) || (json_is_object(v) && json_object_size(v) == 0) ||
           (json_is_array(v) && json_array_size(v) == 0);
}

nm_status nm_peft_parse_config(const char *text, size_t len, const char *name, nm_peft_config *cfg, nm_err *err) {
    memset(cfg, 0, sizeof *cfg);
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!j) return nm_err_set(err, NM_ERR_FORMAT, "%s:%d: invalid JSON: %s", name, je.line, je.text);
    nm_status st = NM_OK;
    json_t *v;
    if (!json_is_object(j)) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: not a JSON object", name);
        goto done;
    }
    v = json_object_get(j, "peft_type");
    if (v && !(json_is_string(v) && strcmp(json_string_value(v), "LORA") == 0)) {
        st = nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: peft_type is %s, only LORA adapters are supported", name,
                        json_is_string(v) ? json_string_value(v) : "not a string");
        goto done;
    }
    v = json_object_get(j, "r");
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65536) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: \"r\" must be an integer rank from 1 to 65536", name);
        goto done;
    }
    cfg->r = (int64_t)json_integer_value(v);
    v = json_object_get(j, "lora_alpha");
    if (!json_is_number(v) || !isfinite(json_number_value(v)) || json_number_value(v) <= 0 ||
        json_number_value(v) > 1e9) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: \"lora_alpha\" must be a positive number", name);
        goto done;
    }
    cfg->alpha = (float)json_number_value(v);
    v = json_object_get(j, "use_rslora");
    if (v && !json_is_boolean(v) && !json_is_null(v)) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: \"use_rslora\" must be true or false", name);
        goto done;
    }
    cfg->rslora = json_is_true(v);
    /* What changes the computation in ways this reader does not implement
     * is refused rather than silently ignored. */
    static const char *const FLAGS[] = {"use_dora", "fan_in_fan_out"};
    for (size_t k = 0; k < 2; k++)
        if (json_is_true(json_object_get(j, FLAGS[k]))) {
            st = nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: %s adapters are not supported", name, FLAGS[k]);
            goto done;
        }
    v = json_object_get(j, "bias");
    if (v && !json_is_null(v) && !(json_is_string(v) && strcmp(json_string_value(v), "none") == 0)) {
        st = nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: bias training (\"bias\": %s) is not supported", name,
                        json_is_string(v) ? json_string_value(v) : "?");
        goto done;
    }
    static const char *const EMPTY[] = {"modules_to_save", "alpha_pattern"};
    for (size_t k = 0; k < 2; k++)
        if (!empty_or_null(json_object_get(j, EMPTY[k]))) {
            st = nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: \"%s\" is not supported", name, EMPTY[k]);
            goto done;
        }
    v = json_object_get(j, "rank_pattern");
    if (v && !json_is_null(v) && !json_is_object(v)) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: \"rank_pattern\" must be an object", name);
        goto done;
    }
    cfg->rank_pattern = v && json_is_object(v) && json_object_size(v) > 0;
    v = json_object_get(j, "target_modules");
    if (v && !json_is_null(v) && !json_is_string(v) && !json_is_array(v)) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: \"target_modules\" must be a string or a list", name);
        goto done;
    }
    v = json_object_get(j, "base_model_name_or_path");
    if (json_is_string(v)) snprintf(cfg->base_name, sizeof cfg->base_name, "%s", json_string_value(v));
done:
    json_decref(j);
    return st;
}

/* ---- tensor names ---- */

/* "base_model.model.model.layers.N.MODULE.lora_A.weight" (the prefix
 * "base_model.model." and an adapter name ".default" before ".weight" are
 * optional).  Returns false for anything else. */
static bool parse_name(const char *name, int64_t *layer, nm_proj *p, bool *is_b) {
    const char *s = name;
    if (strncmp(s, "base_model.model.", 17) == 0) s += 17;
    if (strncmp(s, "model.layers.", 13) != 0) return false;
    s += 13;
    if (*s < '0' || *s > '9') return false;
    int64_t v = 0;
    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (*s++ - '0');
        if (v > 1000000) return false;
    }
    if (*s++ != '.') return false;
    for (int k = 0; k < NM_PROJ_COUNT; k++) {
        size_t n = strlen(HF_MOD[k]);
        if (strncmp(s, HF_MOD[k], n) != 0) continue;
        const char *t = s + n;
        bool b;
        if (strncmp(t, ".lora_A", 7) == 0)
            b = false;
        else if (strncmp(t, ".lora_B", 7) == 0)
            b = true;
        else
            return false;
        t += 7;
        if (strcmp(t, ".weight") != 0 && strcmp(t, ".default.weight") != 0) return false;
        *layer = v;
        *p = (nm_proj)k;
        *is_b = b;
        return true;
    }
    return false;
}

static nm_status check_finite(const float *v, int64_t n, const char *path, const char *name, nm_err *err) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s' holds a non-finite value at %lld", path, name,
                              (long long)i);
    return NM_OK;
}

/* ---- reading ---- */

typedef struct peft_pair {
    const nm_st_tensor *a, *b;
} peft_pair;

nm_status nm_peft_read(const char *path, nm_lora **out, nm_err *err) {
    *out = NULL;
    char wpath[4096], cpath[4096];
    if (ends_with(path, ".safetensors")) {
        snprintf(wpath, sizeof wpath, "%s", path);
        const char *slash = strrchr(path, '/');
        if (slash)
            snprintf(cpath, sizeof cpath, "%.*s/%s", (int)(slash - path), path, PEFT_CONFIG);
        else
            snprintf(cpath, sizeof cpath, "%s", PEFT_CONFIG);
    } else {
        snprintf(wpath, sizeof wpath, "%s/%s", path, PEFT_WEIGHTS);
        snprintf(cpath, sizeof cpath, "%s/%s", path, PEFT_CONFIG);
        char bin[4096];
        snprintf(bin, sizeof bin, "%s/adapter_model.bin", path);
        if (!file_exists(wpath) && file_exists(bin))
            return nm_err_set(err, NM_ERR_UNSUPPORTED,
                              "%s: only adapter_model.safetensors is read (adapter_model.bin is a Python pickle; "
                              "save the adapter with safe_serialization=True)",
                              path);
    }
    char *text = NULL;
    size_t tlen = 0;
    nm_status st = nm_read_file(cpath, &text, &tlen, err);
    if (st) return st;
    nm_peft_config cfg;
    st = nm_peft_parse_config(text, tlen, cpath, &cfg, err);
    free(text);
    if (st) return st;
    nm_st *s = NULL;
    if ((st = nm_st_open(wpath, &s, err))) return st;

    const int64_t nt = nm_st_n_tensors(s);
    int64_t n_layer = 0;
    peft_pair *pairs = NULL;
    nm_lora *l = NULL;
    /* pass 1: names, pairs and the number of layers */
    for (int64_t i = 0; i < nt; i++) {
        const nm_st_tensor *t = nm_st_tensor_at(s, i);
        int64_t layer;
        nm_proj p;
        bool is_b;
        if (!parse_name(t->name, &layer, &p, &is_b)) {
            st = nm_err_set(err, NM_ERR_UNSUPPORTED,
                            "%s: tensor '%s' matches no module nomoat adapts (model.layers.N.self_attn.q/k/v/o_proj or "
                            "mlp.gate/up/down_proj, lora_A/lora_B)",
                            wpath, t->name);
            goto done;
        }
        if (layer + 1 > n_layer) n_layer = layer + 1;
    }
    if (n_layer == 0) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: the adapter holds no LoRA tensor", wpath);
        goto done;
    }
    if (n_layer > 4096) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: layer %lld is out of range", wpath, (long long)n_layer - 1);
        goto done;
    }
    pairs = nm_calloc((size_t)n_layer * NM_PROJ_COUNT, sizeof *pairs);
    l = nm_lora_create(n_layer);
    if (!pairs || !l) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int64_t i = 0; i < nt; i++) {
        const nm_st_tensor *t = nm_st_tensor_at(s, i);
        int64_t layer;
        nm_proj p;
        bool is_b;
        parse_name(t->name, &layer, &p, &is_b);
        peft_pair *pp = &pairs[layer * NM_PROJ_COUNT + p];
        const nm_st_tensor **slot = is_b ? &pp->b : &pp->a;
        if (*slot) {
            st = nm_err_set(err, NM_ERR_FORMAT, "%s: tensors '%s' and '%s' are the same module", wpath, (*slot)->name,
                            t->name);
            goto done;
        }
        if (t->n_dims != 2) {
            st = nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s' has %u dimensions, a LoRA matrix has 2", wpath,
                            t->name, t->n_dims);
            goto done;
        }
        if (strcmp(t->dtype, "F32") && strcmp(t->dtype, "F16") && strcmp(t->dtype, "BF16") && strcmp(t->dtype, "F64")) {
            st = nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (F32, F16, BF16 or F64 expected)",
                            wpath, t->name, t->dtype);
            goto done;
        }
        *slot = t;
    }
    l->alpha = cfg.alpha;
    l->rslora = cfg.rslora;
    for (int64_t ly = 0; ly < n_layer; ly++)
        for (int p = 0; p < NM_PROJ_COUNT; p++) {
            const peft_pair *pp = &pairs[ly * NM_PROJ_COUNT + p];
            if (!pp->a && !pp->b) continue;
            if (!pp->a || !pp->b) {
                st = nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s' has no %s partner", wpath,
                                (pp->a ? pp->a : pp->b)->name, pp->a ? "lora_B" : "lora_A");
                goto done;
            }
            /* A [r, in], B [out, r] */
            if (pp->a->shape[0] != pp->b->shape[1]) {
                st = nm_err_set(err, NM_ERR_FORMAT, "%s: '%s' is [%lld, %lld] and '%s' [%lld, %lld]: the ranks differ",
                                wpath, pp->a->name, (long long)pp->a->shape[0], (long long)pp->a->shape[1],
                                pp->b->name, (long long)pp->b->shape[0], (long long)pp->b->shape[1]);
                goto done;
            }
            if (pp->a->shape[0] != cfg.r && !cfg.rank_pattern) {
                st = nm_err_set(err, NM_ERR_FORMAT, "%s: '%s' has rank %lld but %s says r = %lld (and has no rank_pattern)",
                                wpath, pp->a->name, (long long)pp->a->shape[0], cpath, (long long)cfg.r);
                goto done;
            }
            nm_err e2 = {0};
            if ((st = nm_lora_shape(l, ly, (nm_proj)p, pp->a->shape[0], pp->a->shape[1], pp->b->shape[0], &e2))) {
                nm_err_set(err, st, "%s: %s", wpath, e2.msg);
                goto done;
            }
        }
    if ((st = nm_lora_alloc(l, err))) goto done;
    float *tmp = NULL;
    size_t tmp_n = 0;
    for (int64_t ly = 0; ly < n_layer && !st; ly++)
        for (int p = 0; p < NM_PROJ_COUNT && !st; p++) {
            const peft_pair *pp = &pairs[ly * NM_PROJ_COUNT + p];
            nm_lora_mod *m = nm_lora_mod_at(l, ly, (nm_proj)p);
            if (!m->r) continue;
            if ((st = nm_st_read_f32(s, pp->a, m->A, err)) ||
                (st = check_finite(m->A, m->r * m->in, wpath, pp->a->name, err)))
                break;
            size_t need = (size_t)(m->r * m->out);
            if (need > tmp_n) {
                free(tmp);
                tmp = malloc(need * sizeof *tmp);
                tmp_n = tmp ? need : 0;
                if (!tmp) {
                    st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
                    break;
                }
            }
            if ((st = nm_st_read_f32(s, pp->b, tmp, err)) ||
                (st = check_finite(tmp, m->r * m->out, wpath, pp->b->name, err)))
                break;
            for (int64_t o = 0; o < m->out; o++)
                for (int64_t j = 0; j < m->r; j++) m->Bt[j * m->out + o] = tmp[o * m->r + j];
        }
    free(tmp);
    if (st) goto done;

    /* nomoat's metadata */
    const char *fp = nm_st_meta(s, "nomoat.base_fingerprint");
    if (fp && strlen(fp) == 16) {
        memcpy(l->base_fp, fp, NM_FP_HEX);
        l->has_base_fp = true;
    }
    if ((st = nm_lora_set_strings(l, path, cfg.base_name[0] ? cfg.base_name : NULL, nm_st_meta(s, "nomoat.base_signature"),
                                  err)))
        goto done;
    const char *under = nm_st_meta(s, "nomoat.stack");
    nm_err e3 = {0};
    if (under && (st = nm_lora_parse_under(l, under, &e3))) {
        nm_err_set(err, st, "%s: nomoat.stack: %s", wpath, e3.msg);
        goto done;
    }
    const char *arch = nm_st_meta(s, "nomoat.arch");
    if (arch) snprintf(l->arch, sizeof l->arch, "%s", arch);
    const char *rows = nm_st_meta(s, "nomoat.lora_b_rows");
    l->qk_hf = !rows || strcmp(rows, "gguf") != 0;
    const char *rope = nm_st_meta(s, "nomoat.rope");
    l->permute_qk = !(rope && strcmp(rope, "neox") == 0);
    const char *hd = nm_st_meta(s, "nomoat.head_dim");
    if (hd) {
        char *end;
        errno = 0;
        long long v = strtoll(hd, &end, 10);
        if (errno || *end || v < 2 || v > MAX_HEAD_DIM || v % 2) {
            st = nm_err_set(err, NM_ERR_FORMAT, "%s: nomoat.head_dim '%s' is not a head size", wpath, hd);
            goto done;
        }
        l->head_dim = v;
        if ((st = nm_lora_set_row_order(l, false, err))) goto done;
    }
    l->format = "peft";
    struct stat sb;
    if (stat(wpath, &sb) == 0) l->file_bytes = (uint64_t)sb.st_size;
    if (stat(cpath, &sb) == 0) l->file_bytes += (uint64_t)sb.st_size;
    nm_lora_finish(l);
done:
    free(pairs);
    nm_st_free(s);
    if (st) {
        nm_lora_free(l);
        return st;
    }
    *out = l;
    return NM_OK;
}

/* ---- writing ---- */

static const char *dtype_of(nm_type t) {
    switch (t) {
    case NM_TYPE_F32: return "F32";
    case NM_TYPE_F16: return "F16";
    case NM_TYPE_BF16: return "BF16";
    default: return NULL;
    }
}

/* n floats to the dtype at dst (little-endian, as safetensors stores). */
static void store(nm_type t, const float *src, uint8_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (t == NM_TYPE_F32) {
            memcpy(dst + 4 * i, &src[i], 4);
        } else {
            uint16_t h = t == NM_TYPE_F16 ? nm_f32_to_f16(src[i]) : nm_f32_to_bf16(src[i]);
            dst[2 * i] = (uint8_t)h;
            dst[2 * i + 1] = (uint8_t)(h >> 8);
        }
    }
}

static nm_status make_dir(const char *dir, nm_err *err) {
    if (mkdir(dir, 0777) == 0 || errno == EEXIST) {
        struct stat sb;
        if (stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode)) return NM_OK;
        return nm_err_set(err, NM_ERR_IO, "%s exists and is not a directory", dir);
    }
    return nm_err_set(err, NM_ERR_IO, "cannot create directory %s: %s", dir, strerror(errno));
}

nm_status nm_peft_write(const nm_lora *l, const char *dir, nm_type type, nm_err *err) {
    const char *dtype = dtype_of(type);
    if (!dtype)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "a PEFT adapter stores F32, F16 or BF16, not %s",
                          nm_type_name(type) ? nm_type_name(type) : "(unknown)");
    nm_status st = make_dir(dir, err);
    if (st) return st;
    const size_t elt = type == NM_TYPE_F32 ? 4 : 2;
    uint8_t *data = nm_calloc((size_t)l->n_params + 1, elt);
    float *bbuf = NULL;
    int64_t max_b = 0;
    for (int64_t i = 0; i < l->n_layer * NM_PROJ_COUNT; i++)
        if (l->mods[i].r * l->mods[i].out > max_b) max_b = l->mods[i].r * l->mods[i].out;
    bbuf = nm_calloc((size_t)max_b + 1, sizeof(float));
    nm_st_writer *w = nm_st_writer_new();
    json_t *cfg = NULL;
    char *text = NULL;
    if (!data || !bbuf || !w) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    uint8_t *p = data;
    char name[160];
    unsigned targets = 0;
    bool mixed = false;
    for (int64_t ly = 0; ly < l->n_layer && !st; ly++)
        for (int k = 0; k < NM_PROJ_COUNT && !st; k++) {
            const nm_lora_mod *m = nm_lora_mod_at(l, ly, (nm_proj)k);
            if (!m->r) continue;
            targets |= 1u << k;
            mixed |= m->r != l->rank;
            int64_t sa[2] = {m->r, m->in}, sb[2] = {m->out, m->r};
            snprintf(name, sizeof name, "base_model.model.model.layers.%lld.%s.lora_A.weight", (long long)ly, HF_MOD[k]);
            store(type, m->A, p, m->r * m->in);
            if ((st = nm_st_writer_add(w, name, dtype, 2, sa, p, (uint64_t)(m->r * m->in) * elt, err))) break;
            p += (size_t)(m->r * m->in) * elt;
            if ((st = nm_lora_get_b(l, ly, (nm_proj)k, true, bbuf, err))) break;
            snprintf(name, sizeof name, "base_model.model.model.layers.%lld.%s.lora_B.weight", (long long)ly, HF_MOD[k]);
            store(type, bbuf, p, m->r * m->out);
            if ((st = nm_st_writer_add(w, name, dtype, 2, sb, p, (uint64_t)(m->r * m->out) * elt, err))) break;
            p += (size_t)(m->r * m->out) * elt;
        }
    if (st) goto done;
    if (mixed && l->alpha == 0.0f) { /* scale 1 everywhere is alpha = r per module: no single lora_alpha */
        st = nm_err_set(err, NM_ERR_UNSUPPORTED,
                        "%s: a GGUF LoRA without alpha whose modules have different ranks has no PEFT form (merge it "
                        "into one rank first: nomoat adapter merge --rank N)",
                        l->path ? l->path : "adapter");
        goto done;
    }
    char num[32];
    if ((st = nm_st_writer_meta(w, "format", "pt", err)) || (st = nm_st_writer_meta(w, "nomoat.lora_b_rows", "hf", err)))
        goto done;
    if (l->has_base_fp && (st = nm_st_writer_meta(w, "nomoat.base_fingerprint", l->base_fp, err))) goto done;
    if (l->base_sig && (st = nm_st_writer_meta(w, "nomoat.base_signature", l->base_sig, err))) goto done;
    if (l->arch[0] && (st = nm_st_writer_meta(w, "nomoat.arch", l->arch, err))) goto done;
    if (l->head_dim > 0) {
        snprintf(num, sizeof num, "%lld", (long long)l->head_dim);
        if ((st = nm_st_writer_meta(w, "nomoat.head_dim", num, err)) ||
            (st = nm_st_writer_meta(w, "nomoat.rope", l->permute_qk ? "norm" : "neox", err)))
            goto done;
    }
    if (l->n_under) {
        char *u = nm_lora_under_json(l->under, l->n_under);
        if (!u) {
            st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
            goto done;
        }
        st = nm_st_writer_meta(w, "nomoat.stack", u, err);
        free(u);
        if (st) goto done;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, PEFT_WEIGHTS);
    if ((st = nm_st_writer_write(w, path, err))) goto done;

    /* PEFT's own keys, in the order it writes them */
    cfg = json_object();
    json_t *tm = json_array();
    for (int k = 0; k < NM_PROJ_COUNT; k++)
        if (targets & (1u << k)) json_array_append_new(tm, json_string(strchr(HF_MOD[k], '.') + 1));
    /* A file scale of 1 from a GGUF LoRA without alpha is alpha = r. */
    double alpha = l->alpha == 0.0f ? (double)l->rank : (double)l->alpha;
    json_object_set_new(cfg, "peft_type", json_string("LORA"));
    json_object_set_new(cfg, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(cfg, "base_model_name_or_path", json_string(l->base_name ? l->base_name : ""));
    json_object_set_new(cfg, "r", json_integer(l->rank));
    json_object_set_new(cfg, "lora_alpha", json_real(alpha));
    json_object_set_new(cfg, "lora_dropout", json_real(0.0));
    json_object_set_new(cfg, "use_rslora", json_boolean(l->rslora));
    json_object_set_new(cfg, "target_modules", tm);
    json_object_set_new(cfg, "bias", json_string("none"));
    json_object_set_new(cfg, "fan_in_fan_out", json_false());
    json_object_set_new(cfg, "inference_mode", json_true());
    json_object_set_new(cfg, "init_lora_weights", json_true());
    json_object_set_new(cfg, "modules_to_save", json_null());
    json_object_set_new(cfg, "layers_to_transform", json_null());
    json_object_set_new(cfg, "revision", json_null());
    json_t *rp = json_object();
    if (mixed) /* PEFT matches these keys as suffixes of module names */
        for (int64_t ly = 0; ly < l->n_layer; ly++)
            for (int k = 0; k < NM_PROJ_COUNT; k++) {
                const nm_lora_mod *m = nm_lora_mod_at(l, ly, (nm_proj)k);
                if (!m->r || m->r == l->rank) continue;
                snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)ly, HF_MOD[k]);
                json_object_set_new(rp, name, json_integer(m->r));
            }
    json_object_set_new(cfg, "rank_pattern", rp);
    json_object_set_new(cfg, "alpha_pattern", json_object());
    text = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    if (!text) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    snprintf(path, sizeof path, "%s/%s", dir, PEFT_CONFIG);
    size_t n = strlen(text);
    text[n] = '\n'; /* json_dumps leaves room for the NUL only: it becomes the newline */
    st = nm_write_file_atomic(path, text, n + 1, err);
done:
    free(text);
    json_decref(cfg);
    nm_st_writer_free(w);
    free(bbuf);
    free(data);
    return st;
}
