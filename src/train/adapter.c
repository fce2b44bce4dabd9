/* adapter.c - LoRA adapters in PEFT layout (see adapter.h). */
#include "train/adapter.h"
#include "base/base.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int64_t nm_adapter_hf_row(int64_t r, int64_t hd) {
    int64_t h = r / hd, i = r % hd, j = i / 2, s = i % 2;
    return h * hd + s * (hd / 2) + j;
}

static bool permuted(nm_tmod k) { return k == NM_TM_Q || k == NM_TM_K; }

void nm_base_fingerprint(const nm_gguf *g, char hex[17]) {
    uint64_t h = 1469598103934665603ULL;
#define MIX(p, n)                                                                              \
    do {                                                                                       \
        const uint8_t *q_ = (const uint8_t *)(p);                                              \
        for (size_t i_ = 0; i_ < (size_t)(n); i_++) h = (h ^ q_[i_]) * 1099511628211ULL;       \
    } while (0)
    for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++) {
        const nm_gguf_tensor *t = nm_gguf_tensor_at(g, i);
        MIX(t->name, strlen(t->name));
        MIX(&t->type, sizeof t->type);
        MIX(t->ne, sizeof t->ne);
        /* 64 samples of 64 bytes spread over the tensor */
        for (uint64_t k = 0; k < 64; k++) {
            uint64_t off = t->nbytes > 64 ? (t->nbytes - 64) / 63 * k : 0;
            MIX((const uint8_t *)t->data + off, t->nbytes < 64 ? t->nbytes : 64);
            if (t->nbytes <= 64) break;
        }
    }
#undef MIX
    snprintf(hex, 17, "%016llx", (unsigned long long)h);
}

static void tensor_name(char *buf, size_t cap, int64_t layer, nm_tmod k, char ab) {
    snprintf(buf, cap, "base_model.model.model.layers.%lld.%s.lora_%c.weight", (long long)layer, nm_tmod_hf(k), ab);
}

nm_status nm_adapter_save(const nm_tm_lora *l, const nm_tmodel *m, const char *dir, const char *base_name,
                          nm_err *err) {
    const nm_tm_hparams *hp = &m->hp;
    nm_st_writer *w = nm_st_writer_new();
    float *bufs = NULL;
    nm_status st = NM_OK;
    if (!w) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    /* permuted copies of q/k B live here until the write */
    uint64_t perm_total = 0;
    for (int64_t ly = 0; ly < l->n_layer; ly++)
        for (int k = 0; k < NM_TM_COUNT; k++)
            if ((l->targets & (1u << k)) && permuted((nm_tmod)k))
                perm_total += (uint64_t)(l->mods[ly * NM_TM_COUNT + k].out * l->rank);
    bufs = nm_calloc((size_t)perm_total + 1, sizeof(float));
    if (!bufs) {
        nm_st_writer_free(w);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    float *pb = bufs;
    char name[160];
    for (int64_t ly = 0; ly < l->n_layer && !st; ly++)
        for (int k = 0; k < NM_TM_COUNT && !st; k++) {
            if (!(l->targets & (1u << k))) continue;
            const nm_tm_lora_mod *md = &l->mods[ly * NM_TM_COUNT + k];
            int64_t sa[2] = {l->rank, md->in}, sb[2] = {md->out, l->rank};
            tensor_name(name, sizeof name, ly, (nm_tmod)k, 'A');
            st = nm_st_writer_add(w, name, "F32", 2, sa, md->A, (uint64_t)(l->rank * md->in) * 4, err);
            if (st) break;
            const float *B = md->B;
            if (permuted((nm_tmod)k) && hp->arch[0] && !hp->rope_neox) {
                for (int64_t r = 0; r < md->out; r++)
                    memcpy(pb + nm_adapter_hf_row(r, hp->head_dim) * l->rank, md->B + r * l->rank,
                           (size_t)l->rank * sizeof(float));
                B = pb;
                pb += md->out * l->rank;
            }
            tensor_name(name, sizeof name, ly, (nm_tmod)k, 'B');
            st = nm_st_writer_add(w, name, "F32", 2, sb, B, (uint64_t)(md->out * l->rank) * 4, err);
        }
    char fp[17];
    nm_base_fingerprint(m->gguf, fp);
    if (!st) st = nm_st_writer_meta(w, "format", "pt", err);
    if (!st) st = nm_st_writer_meta(w, "nomoat.base_fingerprint", fp, err);
    if (!st) st = nm_st_writer_meta(w, "nomoat.lora_b_rows", "hf", err);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, NM_ADAPTER_WEIGHTS);
    if (!st) st = nm_st_writer_write(w, path, err);
    nm_st_writer_free(w);
    free(bufs);
    if (st) return st;

    json_t *cfg = json_object();
    json_t *tm = json_array();
    for (int k = 0; k < NM_TM_COUNT; k++)
        if (l->targets & (1u << k)) json_array_append_new(tm, json_string(strchr(nm_tmod_hf((nm_tmod)k), '.') + 1));
    json_object_set_new(cfg, "peft_type", json_string("LORA"));
    json_object_set_new(cfg, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(cfg, "base_model_name_or_path", json_string(base_name ? base_name : ""));
    json_object_set_new(cfg, "r", json_integer(l->rank));
    json_object_set_new(cfg, "lora_alpha", json_real(l->alpha));
    json_object_set_new(cfg, "lora_dropout", json_real(l->dropout));
    json_object_set_new(cfg, "use_rslora", json_boolean(l->rslora));
    json_object_set_new(cfg, "target_modules", tm);
    json_object_set_new(cfg, "bias", json_string("none"));
    json_object_set_new(cfg, "fan_in_fan_out", json_false());
    json_object_set_new(cfg, "inference_mode", json_true());
    json_object_set_new(cfg, "init_lora_weights", json_true());
    json_object_set_new(cfg, "modules_to_save", json_null());
    json_object_set_new(cfg, "layers_to_transform", json_null());
    json_object_set_new(cfg, "revision", json_null());
    char *text = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(cfg);
    if (!text) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    snprintf(path, sizeof path, "%s/%s", dir, NM_ADAPTER_CONFIG);
    size_t n = strlen(text);
    text[n] = '\n'; /* json_dumps leaves room only for the NUL: rewrite it */
    st = nm_write_file_atomic(path, text, n + 1, err);
    free(text);
    return st;
}

nm_status nm_adapter_load(const nm_tmodel *m, const char *dir, nm_tm_lora **out, nm_err *err) {
    *out = NULL;
    const nm_tm_hparams *hp = &m->hp;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, NM_ADAPTER_CONFIG);
    json_error_t je;
    json_t *cfg = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!cfg) return nm_err_set(err, NM_ERR_FORMAT, "%s:%d: %s", path, je.line, je.text);
    nm_status st = NM_OK;
    nm_st *s = NULL;
    nm_tm_lora *l = NULL;
    json_t *jr = json_object_get(cfg, "r"), *ja = json_object_get(cfg, "lora_alpha"),
           *jt = json_object_get(cfg, "target_modules"), *jp = json_object_get(cfg, "peft_type");
    if (!json_is_integer(jr) || !json_is_number(ja) || !json_is_array(jt) ||
        (jp && (!json_is_string(jp) || strcmp(json_string_value(jp), "LORA")))) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: not a LoRA adapter config (needs peft_type LORA, r, lora_alpha, "
                        "target_modules)", path);
        goto done;
    }
    unsigned targets = 0;
    size_t i;
    json_t *v;
    json_array_foreach(jt, i, v) {
        unsigned bit;
        if (!json_is_string(v) || nm_tmod_parse(json_string_value(v), &bit, err)) {
            st = nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: target module %zu is not one nomoat knows", path, i);
            goto done;
        }
        targets |= bit;
    }
    json_t *jrs = json_object_get(cfg, "use_rslora"), *jd = json_object_get(cfg, "lora_dropout");
    float dropout = json_is_number(jd) ? (float)json_number_value(jd) : 0.0f;
    if ((st = nm_tm_lora_new(m, (int64_t)json_integer_value(jr), (float)json_number_value(ja), json_is_true(jrs),
                             dropout >= 0 && dropout < 1 ? dropout : 0.0f, targets, &l, err)))
        goto done;
    snprintf(path, sizeof path, "%s/%s", dir, NM_ADAPTER_WEIGHTS);
    if ((st = nm_st_open(path, &s, err))) goto done;
    const char *rows = nm_st_meta(s, "nomoat.lora_b_rows");
    bool hf_rows = !rows || strcmp(rows, "gguf") != 0;
    char name[160];
    for (int64_t ly = 0; ly < l->n_layer && !st; ly++)
        for (int k = 0; k < NM_TM_COUNT && !st; k++) {
            if (!(l->targets & (1u << k))) continue;
            nm_tm_lora_mod *md = nm_tm_lora_mod_at(l, ly, (nm_tmod)k);
            for (int ab = 0; ab < 2 && !st; ab++) {
                tensor_name(name, sizeof name, ly, (nm_tmod)k, ab ? 'B' : 'A');
                const nm_st_tensor *t = nm_st_find(s, name);
                int64_t r0 = ab ? md->out : l->rank, r1 = ab ? l->rank : md->in;
                if (!t) {
                    st = nm_err_set(err, NM_ERR_NOT_FOUND, "%s: missing tensor '%s'", path, name);
                } else if (t->n_dims != 2 || t->shape[0] != r0 || t->shape[1] != r1) {
                    st = nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s' has shape [%lld, %lld], the model needs "
                                    "[%lld, %lld]", path, name, (long long)t->shape[0],
                                    (long long)(t->n_dims > 1 ? t->shape[1] : 0), (long long)r0, (long long)r1);
                } else if (!ab) {
                    st = nm_st_read_f32(s, t, md->A, err);
                } else if (!(permuted((nm_tmod)k) && hf_rows && !hp->rope_neox)) {
                    st = nm_st_read_f32(s, t, md->B, err);
                } else {
                    float *tmp = malloc((size_t)(r0 * r1) * sizeof(float));
                    if (!tmp) {
                        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
                        break;
                    }
                    st = nm_st_read_f32(s, t, tmp, err);
                    for (int64_t r = 0; r < md->out && !st; r++)
                        memcpy(md->B + r * l->rank, tmp + nm_adapter_hf_row(r, hp->head_dim) * l->rank,
                               (size_t)l->rank * sizeof(float));
                    free(tmp);
                }
            }
        }
done:
    json_decref(cfg);
    nm_st_free(s);
    if (st) {
        nm_tm_lora_free(l);
        return st;
    }
    *out = l;
    return NM_OK;
}
