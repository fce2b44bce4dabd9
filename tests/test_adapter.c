/* test_adapter.c - LoRA adapters at inference: formats, stacks, provenance.
 *
 *  - external truth: the float64 PyTorch reference of
 *    ../shared/golden/grads-stories260K.json gives the loss of stories260K
 *    with a known rank-4 adapter on all seven projections (A, B in GGUF row
 *    order, scale alpha/r = 2).  The test writes that adapter as a GGUF LoRA
 *    by hand, following llama.cpp's loader (llama-adapter.cpp), and the
 *    loss our forward pass gives with it must match; so must the same
 *    adapter converted to PEFT (q/k rows permuted to Hugging Face order and
 *    back), split into two stacked adapters, or at scale 0.5 stacked twice;
 *  - round trips PEFT <-> GGUF are lossless in F32 (bit for bit, and
 *    PEFT -> GGUF -> PEFT gives the same files); F16/BF16 store rounded
 *    values; our GGUF files follow llama.cpp's rules, checked on the raw file;
 *  - per-context stacks: attach/detach, contexts of one nm_decode_batch with
 *    different stacks give what each gives alone, bit for bit;
 *  - errors: shapes of another model, names that match no module, missing
 *    halves, unsupported PEFT options, non-finite values, the wrong base
 *    (same shapes, other weights) and --force, a base stored in another
 *    type (accepted through the weight signature), adapters without a
 *    fingerprint (warning);
 *  - hostile input: random damage to adapter_config.json and to GGUF LoRA
 *    files (every truncation, byte flips) never crashes a reader (run under
 *    ASan/UBSan by `make test`);
 *  - the CLI: adapter info/convert, run --lora, usage errors. */
#include "testlib.h"
#include "base/base.h"
#include "model/lora.h"
#include "tensor/quantize_model.h"

#include <jansson.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

static nm_model *load(nm_test *t, const char *file) {
    char rel[128];
    snprintf(rel, sizeof rel, "models/%s", file);
    nm_err err = {0};
    nm_model *m = NULL;
    CHECK_OK(t, nm_model_load(nm_test_shared(rel), NULL, &m, &err), err);
    return m;
}

static const char *tmp(const char *name) {
    static char buf[16][512];
    static int k;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], "%s/%s", nm_test_tmpdir(), name);
    return buf[k];
}

/* Logs into a buffer, to check warnings. */
typedef struct logbuf {
    char text[8192];
    size_t len;
} logbuf;
static void log_to(void *user, nm_log_level level, const char *msg) {
    logbuf *b = user;
    int n = snprintf(b->text + b->len, sizeof b->text - b->len, "[%d] %s\n", (int)level, msg);
    if (n > 0 && b->len + (size_t)n < sizeof b->text) b->len += (size_t)n;
}

/* Logits of every position of tokens[0..n) with the stack attached (F32 KV
 * cache: plain float arithmetic).  [n][n_vocab], malloc()ed. */
static float *logits_all(nm_test *t, const nm_model *m, const nm_lora_entry *st, size_t n_st, const int32_t *tokens,
                         int32_t n) {
    nm_context_params p = nm_context_default_params();
    p.n_ctx = n;
    p.n_batch = n;
    p.logits_all = true;
    p.kv_type = NM_TYPE_F32;
    p.n_threads = 1;
    nm_err err = {0};
    nm_context *c = NULL;
    if (!CHECK_OK(t, nm_context_new(m, &p, &c, &err), err)) return NULL;
    nm_model_info info;
    nm_model_get_info(m, &info);
    float *out = NULL;
    if (CHECK_OK(t, nm_context_set_loras(c, st, n_st, &err), err) && CHECK_OK(t, nm_decode(c, tokens, n, &err), err)) {
        out = malloc(sizeof(float) * (size_t)n * (size_t)info.n_vocab);
        for (int32_t i = 0; i < n; i++)
            memcpy(out + (size_t)i * (size_t)info.n_vocab, nm_get_logits_ith(c, i), sizeof(float) * (size_t)info.n_vocab);
    }
    nm_context_free(c);
    return out;
}

/* Mean cross-entropy of positions [from, n) predicting targets. */
static double xent(const float *logits, int32_t nv, const int32_t *targets, int32_t from, int32_t n) {
    double sum = 0;
    for (int32_t i = from; i < n; i++) {
        const float *l = logits + (size_t)i * (size_t)nv;
        double mx = l[0];
        for (int32_t j = 1; j < nv; j++) mx = fmax(mx, l[j]);
        double s = 0;
        for (int32_t j = 0; j < nv; j++) s += exp((double)l[j] - mx);
        sum += mx + log(s) - (double)l[targets[i]];
    }
    return sum / (n - from);
}

/* ====================================================================== */
/* the golden adapter                                                     */
/* ====================================================================== */

static json_t *GOLD;
static json_t *golden(nm_test *t) {
    if (GOLD) return GOLD;
    json_error_t je;
    GOLD = json_load_file(nm_test_shared("golden/grads-stories260K.json"), 0, &je);
    CHECKF(t, GOLD != NULL, "golden file: %s", je.text);
    return GOLD;
}

static const char *const MODS[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};

/* Writes the reference adapter (modules whose bit is in mask) as a GGUF
 * LoRA, by hand, as llama.cpp's loader reads it: lora_a ne [in, r] holding
 * A row-major, lora_b ne [r, out] holding B row-major, alpha = 8. */
static bool write_golden_gguf(nm_test *t, const char *path, unsigned mask) {
    json_t *g = golden(t), *lt = json_object_get(g, "lora_tensors");
    if (!lt) return false;
    nm_gguf_writer *w = nm_gguf_writer_new(3);
    nm_gguf_writer_set_str(w, "general.architecture", "llama");
    nm_gguf_writer_set_str(w, "general.type", "adapter");
    nm_gguf_writer_set_str(w, "adapter.type", "lora");
    nm_gguf_writer_set_f32(w, "adapter.lora.alpha", 8.0f);
    nm_err err = {0};
    bool ok = true;
    for (int l = 0; l < 5; l++)
        for (int p = 0; p < 7; p++) {
            if (!(mask & (1u << p))) continue;
            char name[96];
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, MODS[p]);
            json_t *e = json_object_get(lt, name);
            json_t *as = json_object_get(e, "A_shape"), *bs = json_object_get(e, "B_shape");
            int64_t r = json_integer_value(json_array_get(as, 0)), in = json_integer_value(json_array_get(as, 1));
            int64_t out = json_integer_value(json_array_get(bs, 0));
            float *A = malloc(sizeof(float) * (size_t)(r * in)), *B = malloc(sizeof(float) * (size_t)(out * r));
            for (int64_t i = 0; i < r * in; i++) A[i] = (float)json_number_value(json_array_get(json_object_get(e, "A"), (size_t)i));
            for (int64_t i = 0; i < out * r; i++) B[i] = (float)json_number_value(json_array_get(json_object_get(e, "B"), (size_t)i));
            int64_t nea[2] = {in, r}, neb[2] = {r, out};
            char an[128], bn[128];
            snprintf(an, sizeof an, "%s.lora_a", name);
            snprintf(bn, sizeof bn, "%s.lora_b", name);
            ok &= CHECK_OK(t, nm_gguf_writer_add_tensor_owned(w, an, NM_TYPE_F32, 2, nea, A, (uint64_t)(r * in) * 4, &err), err);
            ok &= CHECK_OK(t, nm_gguf_writer_add_tensor_owned(w, bn, NM_TYPE_F32, 2, neb, B, (uint64_t)(out * r) * 4, &err), err);
        }
    ok &= CHECK_OK(t, nm_gguf_writer_write(w, path, &err), err);
    nm_gguf_writer_free(w);
    return ok;
}

typedef struct golden_seq {
    int32_t tok[65];
} golden_seq;

static bool golden_tokens(nm_test *t, golden_seq *s) {
    json_t *a = json_object_get(golden(t), "tokens");
    if (!CHECK(t, json_array_size(a) == 65)) return false;
    for (int i = 0; i < 65; i++) s->tok[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    return true;
}

static void check_loss(nm_test *t, const nm_model *m, const nm_lora_entry *st, size_t n, const char *what) {
    golden_seq s;
    if (!golden_tokens(t, &s)) return;
    float *lg = logits_all(t, m, st, n, s.tok, 64);
    if (!lg) return;
    double loss = xent(lg, 512, s.tok + 1, 0, 64), l32 = xent(lg, 512, s.tok + 1, 32, 64);
    double want = json_number_value(json_object_get(golden(t), "loss"));
    double want32 = json_number_value(json_object_get(golden(t), "loss_last32"));
    printf("  %s: loss %.9f (PyTorch float64 %.9f), last 32 %.9f (%.9f)\n", what, loss, want, l32, want32);
    CHECKF(t, fabs(loss - want) < 1e-4 * want && fabs(l32 - want32) < 1e-4 * want32,
           "%s: loss %.9f / %.9f, the reference %.9f / %.9f", what, loss, l32, want, want32);
    free(lg);
}

static void test_golden_loss(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf");
    const char *path = tmp("golden.gguf");
    if (!m || !write_golden_gguf(t, path, 0x7f)) {
        nm_model_free(m);
        return;
    }
    nm_err err = {0};
    logbuf lb = {0};
    nm_log log = {log_to, &lb, NM_LOG_DEBUG};
    nm_lora *l = NULL;
    if (!CHECK_OK(t, nm_lora_load(m, path, false, &log, &l, &err), err)) goto out;
    /* made outside nomoat: no fingerprint, a warning */
    CHECKF(t, strstr(lb.text, "no base fingerprint") != NULL, "no warning for a missing fingerprint: %s", lb.text);
    nm_lora_entry e = {l, 1.0f};
    check_loss(t, m, &e, 1, "GGUF LoRA");
    /* the base alone is far from it: the adapter does act */
    golden_seq s;
    if (golden_tokens(t, &s)) {
        float *lg = logits_all(t, m, NULL, 0, s.tok, 64);
        double base = lg ? xent(lg, 512, s.tok + 1, 0, 64) : 0;
        CHECKF(t, fabs(base - 1.23096) > 0.01, "base loss %.6f equals the adapter's", base);
        free(lg);
    }
    /* the same adapter as PEFT: q/k rows go to HF order and back */
    const char *pdir = tmp("golden-peft");
    nm_lora *p = NULL;
    if (CHECK_OK(t, nm_lora_save(l, pdir, NM_LORA_PEFT, NM_TYPE_F32, &err), err) &&
        CHECK_OK(t, nm_lora_load(m, pdir, true, NULL, &p, &err), err)) {
        e.lora = p;
        check_loss(t, m, &e, 1, "converted to PEFT");
        CHECK(t, strcmp(p->fp, l->fp) == 0);
        /* on disk, row 1 of head 0 of q's B (GGUF) is HF row hd/2 = 4 */
        char wp[600];
        snprintf(wp, sizeof wp, "%s/adapter_model.safetensors", pdir);
        nm_st *st = NULL;
        if (CHECK_OK(t, nm_st_open(wp, &st, &err), err)) {
            const nm_st_tensor *qb = nm_st_find(st, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
            json_t *ref = json_object_get(json_object_get(json_object_get(golden(t), "lora_tensors"), "blk.0.attn_q.weight"), "B");
            if (CHECK(t, qb && qb->shape[0] == 64 && qb->shape[1] == 4)) {
                float got[4];
                memcpy(got, (const float *)qb->data + 4 * 4, sizeof got);
                bool same = true;
                for (int j = 0; j < 4; j++) same &= got[j] == (float)json_number_value(json_array_get(ref, (size_t)(1 * 4 + j)));
                CHECKF(t, same, "HF row 4 of q_proj lora_B is not GGUF row 1");
            }
            nm_st_free(st);
        }
    }
    nm_lora_free(p);
    /* split in two adapters (attention, MLP) and stacked; and the whole
     * adapter twice at scale 0.5 */
    const char *pa = tmp("golden-attn.gguf"), *pm = tmp("golden-mlp.gguf");
    nm_lora *la = NULL, *lm = NULL;
    if (write_golden_gguf(t, pa, 0x0f) && write_golden_gguf(t, pm, 0x70) &&
        CHECK_OK(t, nm_lora_load(m, pa, false, NULL, &la, &err), err) &&
        CHECK_OK(t, nm_lora_load(m, pm, false, NULL, &lm, &err), err)) {
        nm_lora_entry two[2] = {{lm, 1.0f}, {la, 1.0f}};
        check_loss(t, m, two, 2, "split into MLP + attention adapters");
        nm_lora_entry halves[2] = {{l, 0.5f}, {l, 0.5f}};
        check_loss(t, m, halves, 2, "twice at scale 0.5");
    }
    nm_lora_free(la);
    nm_lora_free(lm);
out:
    nm_lora_free(l);
    nm_model_free(m);
}

/* ====================================================================== */
/* random adapters, round trips                                           */
/* ====================================================================== */

/* A bound adapter with random values for model m: rank r, alpha, the
 * projections in mask, in every layer except `skip_layer` (-1: none). */
static nm_lora *random_adapter(nm_test *t, const nm_model *m, uint64_t seed, int64_t r, float alpha, bool rslora,
                               unsigned mask, int skip_layer, float amp) {
    nm_model_info info;
    nm_model_get_info(m, &info);
    nm_lora_layout lay;
    nm_lora_layout_of_model(m, &lay);
    nm_lora *l = nm_lora_create(info.n_layer);
    nm_err err = {0};
    l->alpha = alpha;
    l->rslora = rslora;
    for (int ly = 0; ly < info.n_layer; ly++)
        for (int p = 0; p < 7; p++)
            if ((mask & (1u << p)) && ly != skip_layer)
                CHECK_OK(t, nm_lora_shape(l, ly, (nm_proj)p, r, lay.in[p], lay.out[p], &err), err);
    if (!CHECK_OK(t, nm_lora_alloc(l, &err), err)) {
        nm_lora_free(l);
        return NULL;
    }
    nm_rng rng;
    nm_rng_seed(&rng, seed);
    for (int64_t i = 0; i < l->n_layer * 7; i++) {
        nm_lora_mod *md = &l->mods[i];
        for (int64_t k = 0; k < md->r * md->in; k++) md->A[k] = (float)(nm_rng_normal(&rng) / sqrt((double)md->in));
        for (int64_t k = 0; k < md->r * md->out; k++) md->Bt[k] = (float)(amp * nm_rng_normal(&rng));
    }
    nm_lora_finish(l);
    /* a model that packed its weights keeps its file's identities */
    const nm_base_ids *ids = nm_model_base_ids(m);
    if (ids) memcpy(l->base_fp, ids->fp, NM_FP_HEX);
    else nm_base_fingerprint(nm_model_gguf(m), l->base_fp);
    l->has_base_fp = true;
    char *sig = ids ? (ids->sig ? strdup(ids->sig) : NULL) : nm_base_signature(nm_model_gguf(m));
    nm_lora_set_strings(l, NULL, "test-base", sig, &err);
    free(sig);
    CHECK_OK(t, nm_lora_bind(l, m, &err), err);
    return l;
}

static bool same_values(const nm_lora *a, const nm_lora *b) {
    if (a->n_layer != b->n_layer) return false;
    for (int64_t i = 0; i < a->n_layer * 7; i++) {
        const nm_lora_mod *x = &a->mods[i], *y = &b->mods[i];
        if (x->r != y->r || x->in != y->in || x->out != y->out) return false;
        if (!x->r) continue;
        if (x->scale != y->scale || memcmp(x->A, y->A, (size_t)(x->r * x->in) * 4) ||
            memcmp(x->Bt, y->Bt, (size_t)(x->r * x->out) * 4))
            return false;
    }
    return true;
}

static bool files_equal(const char *a, const char *b) {
    size_t na, nb;
    char *x = nm_test_read(a, &na), *y = nm_test_read(b, &nb);
    bool eq = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return eq;
}

static void test_roundtrips(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf");
    if (!m) return;
    nm_err err = {0};
    for (int variant = 0; variant < 2; variant++) {
        /* q, k, down (so q/k rows are permuted), layer 2 left out; rsLoRA in
         * the second variant */
        bool rs = variant == 1;
        nm_lora *l = random_adapter(t, m, 7 + variant, 3, 5.0f, rs, 0x43, 2, 0.1f);
        if (!l) continue;
        l->n_under = 0;
        const char *pd = tmp(rs ? "rt-rs" : "rt"), *gg = tmp(rs ? "rt-rs.gguf" : "rt.gguf"),
                   *pd2 = tmp(rs ? "rt-rs2" : "rt2");
        nm_lora *a = NULL, *b = NULL, *c = NULL, *d = NULL;
        CHECK_OK(t, nm_lora_save(l, pd, NM_LORA_AUTO, NM_TYPE_F32, &err), err);
        CHECK_OK(t, nm_lora_save(l, gg, NM_LORA_AUTO, NM_TYPE_F32, &err), err);
        /* unbound reads: nomoat's files carry the head size */
        if (CHECK_OK(t, nm_lora_open(pd, NULL, &a, &err), err) && CHECK_OK(t, nm_lora_open(gg, NULL, &b, &err), err)) {
            CHECKF(t, same_values(l, a), "PEFT round trip changed values (variant %d)", variant);
            CHECKF(t, same_values(l, b), "GGUF round trip changed values (variant %d)", variant);
            CHECK(t, !strcmp(a->fp, l->fp) && !strcmp(b->fp, l->fp));
            CHECK(t, a->rslora == rs && b->rslora == rs && a->alpha == 5.0f && b->alpha == 5.0f);
            CHECK(t, a->has_base_fp && !strcmp(a->base_fp, l->base_fp) && b->base_sig && !strcmp(b->base_sig, l->base_sig));
            CHECK(t, nm_lora_mod_at(a, 2, NM_PROJ_Q)->r == 0 && nm_lora_mod_at(a, 3, NM_PROJ_DOWN)->r == 3);
            /* GGUF -> PEFT gives the same files as writing PEFT directly */
            CHECK_OK(t, nm_lora_save(b, pd2, NM_LORA_PEFT, NM_TYPE_F32, &err), err);
            char f1[600], f2[600];
            snprintf(f1, sizeof f1, "%s/adapter_model.safetensors", pd);
            snprintf(f2, sizeof f2, "%s/adapter_model.safetensors", pd2);
            CHECKF(t, files_equal(f1, f2), "PEFT -> GGUF -> PEFT changed the weights file");
            snprintf(f1, sizeof f1, "%s/adapter_config.json", pd);
            snprintf(f2, sizeof f2, "%s/adapter_config.json", pd2);
            CHECKF(t, files_equal(f1, f2), "PEFT -> GGUF -> PEFT changed the config");
            /* and PEFT -> GGUF the same GGUF */
            const char *gg2 = tmp("rt-again.gguf");
            CHECK_OK(t, nm_lora_save(a, gg2, NM_LORA_GGUF, NM_TYPE_F32, &err), err);
            CHECKF(t, files_equal(gg, gg2), "PEFT -> GGUF differs from writing GGUF directly");
        }
        /* F16 / BF16 storage: the rounded values */
        for (int k = 0; k < 2; k++) {
            nm_type ty = k ? NM_TYPE_BF16 : NM_TYPE_F16;
            const char *hp = tmp(k ? "rt-bf16" : "rt-f16");
            nm_lora_free(c);
            c = NULL;
            if (!CHECK_OK(t, nm_lora_save(l, hp, NM_LORA_PEFT, ty, &err), err) ||
                !CHECK_OK(t, nm_lora_open(hp, m, &c, &err), err))
                continue;
            bool ok = true;
            for (int64_t i = 0; i < l->n_layer * 7 && ok; i++) {
                const nm_lora_mod *x = &l->mods[i], *y = &c->mods[i];
                for (int64_t j = 0; j < x->r * x->in && ok; j++) {
                    float want = k ? nm_bf16_to_f32(nm_f32_to_bf16(x->A[j])) : nm_f16_to_f32(nm_f32_to_f16(x->A[j]));
                    ok = y->A[j] == want;
                }
                for (int64_t j = 0; j < x->r * x->out && ok; j++) {
                    float want = k ? nm_bf16_to_f32(nm_f32_to_bf16(x->Bt[j])) : nm_f16_to_f32(nm_f32_to_f16(x->Bt[j]));
                    ok = y->Bt[j] == want;
                }
            }
            CHECKF(t, ok, "%s adapter does not hold the rounded values", nm_type_name(ty));
        }
        /* Q8_0 GGUF (rows of in = 64 fit its blocks, rows of r = 3 stay F32) */
        const char *q8 = tmp("rt-q8.gguf");
        if (CHECK_OK(t, nm_lora_save(l, q8, NM_LORA_GGUF, NM_TYPE_Q8_0, &err), err) &&
            CHECK_OK(t, nm_lora_open(q8, m, &d, &err), err)) {
            const nm_lora_mod *x = nm_lora_mod_at(l, 0, NM_PROJ_Q), *y = nm_lora_mod_at(d, 0, NM_PROJ_Q);
            double worst = 0;
            for (int64_t j = 0; j < x->r * x->in; j++) worst = fmax(worst, fabs(x->A[j] - y->A[j]));
            CHECKF(t, worst > 0 && worst < 0.02, "Q8_0 A error %.3g", worst);
            CHECK(t, memcmp(x->Bt, y->Bt, (size_t)(x->r * x->out) * 4) == 0);
        }
        nm_lora_free(a);
        nm_lora_free(b);
        nm_lora_free(c);
        nm_lora_free(d);
        nm_lora_free(l);
    }
    nm_model_free(m);
}

/* Our GGUF LoRA, read raw, follows the rules of llama.cpp's loader
 * (llama-adapter.cpp): general.type "adapter", adapter.type "lora",
 * general.architecture the model's, adapter.lora.alpha a float32, every
 * tensor NAME.lora_a / NAME.lora_b of a base tensor NAME, lora_a ne [in, r]
 * with in = the base's ne[0], lora_b ne [r, out] with out = its ne[1]. */
static void test_llama_cpp_rules(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf");
    if (!m) return;
    nm_lora *l = random_adapter(t, m, 3, 4, 8.0f, false, 0x7f, -1, 0.05f);
    const char *path = tmp("rules.gguf");
    nm_err err = {0};
    nm_gguf *g = NULL;
    if (!l || !CHECK_OK(t, nm_lora_save(l, path, NM_LORA_GGUF, NM_TYPE_F16, &err), err) ||
        !CHECK_OK(t, nm_gguf_open(path, &g, &err), err))
        goto out;
    nm_str s;
    CHECK(t, nm_gguf_get_str(g, "general.type", &s, NULL) == NM_OK && s.len == 7 && !memcmp(s.ptr, "adapter", 7));
    CHECK(t, nm_gguf_get_str(g, "adapter.type", &s, NULL) == NM_OK && s.len == 4 && !memcmp(s.ptr, "lora", 4));
    CHECK(t, nm_gguf_get_str(g, "general.architecture", &s, NULL) == NM_OK && s.len == 5 && !memcmp(s.ptr, "llama", 5));
    int64_t ka = nm_gguf_find_key(g, "adapter.lora.alpha");
    CHECK(t, ka >= 0 && nm_gguf_kv_type(g, ka) == NM_GGUF_FLOAT32);
    const nm_gguf *base = nm_model_gguf(m);
    int64_t n = nm_gguf_n_tensors(g);
    CHECK(t, n == 70);
    for (int64_t i = 0; i < n; i++) {
        const nm_gguf_tensor *tt = nm_gguf_tensor_at(g, i);
        size_t len = strlen(tt->name);
        bool is_a = len > 7 && !strcmp(tt->name + len - 7, ".lora_a"), is_b = len > 7 && !strcmp(tt->name + len - 7, ".lora_b");
        if (!CHECKF(t, is_a || is_b, "tensor %s has neither suffix", tt->name)) continue;
        char bn[128];
        snprintf(bn, sizeof bn, "%.*s", (int)(len - 7), tt->name);
        const nm_gguf_tensor *bt = nm_gguf_find_tensor(base, bn);
        char other[140];
        snprintf(other, sizeof other, "%s.lora_%c", bn, is_a ? 'b' : 'a');
        const nm_gguf_tensor *ot = nm_gguf_find_tensor(g, other);
        if (!CHECKF(t, bt && ot, "%s: base tensor or partner missing", tt->name)) continue;
        const nm_gguf_tensor *a = is_a ? tt : ot, *b = is_a ? ot : tt;
        CHECKF(t, a->ne[0] == bt->ne[0] && b->ne[1] == bt->ne[1] && a->ne[1] == b->ne[0] && a->ne[1] == 4,
               "%s: shapes a [%lld, %lld] b [%lld, %lld] base [%lld, %lld]", bn, (long long)a->ne[0],
               (long long)a->ne[1], (long long)b->ne[0], (long long)b->ne[1], (long long)bt->ne[0], (long long)bt->ne[1]);
    }
out:
    nm_gguf_free(g);
    nm_lora_free(l);
    nm_model_free(m);
}

/* ====================================================================== */
/* stacks on contexts                                                     */
/* ====================================================================== */

static void test_contexts(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf"), *m2 = load(t, "stories260K-f16.gguf");
    if (!m || !m2) goto done0;
    nm_lora *a = random_adapter(t, m, 11, 4, 8.0f, false, 0x7f, -1, 0.05f);
    nm_lora *b = random_adapter(t, m, 12, 2, 2.0f, false, 0x15, 1, 0.05f);
    nm_err err = {0};
    const int32_t toks[] = {1, 274, 287, 269, 317, 263, 377, 267, 265, 282, 295, 433};
    const int32_t n = 12;
    nm_context_params p = nm_context_default_params();
    p.n_threads = 1;
    p.n_ctx = 64;
    nm_context *c[3] = {0};
    for (int i = 0; i < 3; i++) CHECK_OK(t, nm_context_new(m, &p, &c[i], &err), err);
    nm_context *c2 = NULL;
    CHECK_OK(t, nm_context_new(m2, &p, &c2, &err), err);
    if (!a || !b || !c[0] || !c[1] || !c[2] || !c2) goto done;
    nm_lora_entry s1[2] = {{a, 1.0f}, {b, -0.7f}}, s2[1] = {{b, 1.5f}};
    /* an adapter bound to another model is refused */
    CHECK(t, nm_context_set_loras(c2, s1, 2, &err) == NM_ERR_ARG && strstr(err.msg, "not loaded for this context"));
    CHECK(t, nm_context_set_loras(c[0], (nm_lora_entry[]){{a, NAN}}, 1, &err) == NM_ERR_ARG);
    /* alone, one at a time */
    float ref[3][512];
    nm_lora_entry *stacks[3] = {s1, s2, NULL};
    size_t ns[3] = {2, 1, 0};
    for (int i = 0; i < 3; i++) {
        CHECK_OK(t, nm_context_set_loras(c[i], stacks[i], ns[i], &err), err);
        CHECK(t, nm_context_n_loras(c[i]) == ns[i]);
        CHECK_OK(t, nm_decode(c[i], toks, n, &err), err);
        memcpy(ref[i], nm_get_logits(c[i]), sizeof ref[i]);
        nm_context_truncate(c[i], 0, &err);
    }
    CHECK(t, memcmp(ref[0], ref[2], sizeof ref[0]) != 0 && memcmp(ref[1], ref[2], sizeof ref[0]) != 0);
    /* together in one batch, each with its stack: the same bits */
    nm_context *const cs[3] = {c[0], c[1], c[2]};
    const int32_t *tk[3] = {toks, toks, toks};
    const int32_t nt[3] = {n, n, n};
    if (CHECK_OK(t, nm_decode_batch(cs, tk, nt, 3, &err), err))
        for (int i = 0; i < 3; i++)
            CHECKF(t, memcmp(nm_get_logits(c[i]), ref[i], sizeof ref[i]) == 0, "context %d of the batch differs", i);
    /* detaching gives the base back exactly */
    CHECK_OK(t, nm_context_set_loras(c[0], NULL, 0, &err), err);
    CHECK(t, nm_context_n_loras(c[0]) == 0);
    nm_context_truncate(c[0], 0, &err);
    CHECK_OK(t, nm_decode(c[0], toks, n, &err), err);
    CHECK(t, memcmp(nm_get_logits(c[0]), ref[2], sizeof ref[2]) == 0);
    /* scale 0 is the base too */
    CHECK_OK(t, nm_context_set_loras(c[0], (nm_lora_entry[]){{a, 0.0f}}, 1, &err), err);
    nm_context_truncate(c[0], 0, &err);
    CHECK_OK(t, nm_decode(c[0], toks, n, &err), err);
    CHECK(t, memcmp(nm_get_logits(c[0]), ref[2], sizeof ref[2]) == 0);
done:
    for (int i = 0; i < 3; i++) nm_context_free(c[i]);
    nm_context_free(c2);
    nm_lora_free(a);
    nm_lora_free(b);
done0:
    nm_model_free(m);
    nm_model_free(m2);
}

/* ====================================================================== */
/* errors                                                                 */
/* ====================================================================== */

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* A PEFT directory with the given tensors (F32, values 0.01) and config. */
static void write_peft(const char *dir, const char *cfg, const char *const *names, const int64_t (*shapes)[2], int n,
                       bool nan) {
    mkdir(dir, 0777);
    char p[600];
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    write_text(p, cfg);
    nm_st_writer *w = nm_st_writer_new();
    float *bufs[16] = {0};
    for (int i = 0; i < n; i++) {
        int64_t k = shapes[i][0] * shapes[i][1];
        bufs[i] = malloc(sizeof(float) * (size_t)k);
        for (int64_t j = 0; j < k; j++) bufs[i][j] = 0.01f;
        if (nan && i == n - 1) bufs[i][k - 1] = NAN;
        nm_st_writer_add(w, names[i], "F32", 2, shapes[i], bufs[i], (uint64_t)k * 4, NULL);
    }
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    nm_st_writer_write(w, p, NULL);
    nm_st_writer_free(w);
    for (int i = 0; i < n; i++) free(bufs[i]);
}

#define CFG "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]}"
#define QA "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
#define QB "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"

static void expect_open_error(nm_test *t, const nm_model *m, const char *path, nm_status code, const char *needle) {
    nm_err err = {0};
    nm_lora *l = NULL;
    nm_status st = nm_lora_open(path, m, &l, &err);
    CHECKF(t, st == code && strstr(err.msg, needle) && strstr(err.msg, path), "%s: status %d, message '%s' (want %d, '%s')",
           path, st, err.msg, code, needle);
    nm_lora_free(l);
}

static void test_errors(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf"), *big = load(t, "t256-q8_0.gguf");
    if (!m || !big) goto out;
    nm_err err = {0};
    /* shapes of another model: a t256 adapter on stories260K */
    nm_lora *other = random_adapter(t, big, 5, 4, 8.0f, false, 0x01, -1, 0.01f);
    const char *op = tmp("t256.gguf");
    if (other && CHECK_OK(t, nm_lora_save(other, op, NM_LORA_GGUF, NM_TYPE_F32, &err), err)) {
        expect_open_error(t, m, op, NM_ERR_ARG, "layer 0 q maps 256 inputs to 256 outputs, the model's projection 64 to 64");
        nm_lora *l = NULL;
        CHECK(t, nm_lora_load(m, op, true, NULL, &l, &err) == NM_ERR_ARG); /* --force does not bypass shapes */
        nm_lora_free(l);
    }
    nm_lora_free(other);
    /* PEFT: names that match no module, missing halves, rank disagreements */
    const int64_t sa[2] = {4, 64}, sb[2] = {64, 4}, sb3[2] = {64, 3};
    const char *d = tmp("bad-name");
    const char *n1[] = {QA, QB, "base_model.model.lm_head.lora_A.weight"};
    const int64_t s1[3][2] = {{4, 64}, {64, 4}, {4, 64}};
    write_peft(d, CFG, n1, s1, 3, false);
    expect_open_error(t, m, d, NM_ERR_UNSUPPORTED, "lm_head.lora_A.weight' matches no module");
    d = tmp("half");
    const char *n2[] = {QA};
    write_peft(d, CFG, n2, &sa, 1, false);
    expect_open_error(t, m, d, NM_ERR_FORMAT, "has no lora_B partner");
    d = tmp("ranks");
    const char *n3[] = {QA, QB};
    const int64_t s3[2][2] = {{4, 64}, {64, 3}};
    write_peft(d, CFG, n3, s3, 2, false);
    expect_open_error(t, m, d, NM_ERR_FORMAT, "the ranks differ");
    (void)sb3;
    d = tmp("wrong-in");
    const int64_t s4[2][2] = {{4, 60}, {64, 4}};
    write_peft(d, CFG, n3, s4, 2, false);
    expect_open_error(t, m, d, NM_ERR_ARG, "maps 60 inputs to 64 outputs");
    d = tmp("too-deep");
    const char *n5[] = {"base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight",
                        "base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight"};
    const int64_t s5[2][2] = {{4, 64}, {64, 4}};
    write_peft(d, CFG, n5, s5, 2, false);
    expect_open_error(t, m, d, NM_ERR_ARG, "adapts layer 7, the model has 5 layers");
    d = tmp("nan");
    write_peft(d, CFG, n3, s5, 2, true);
    expect_open_error(t, m, d, NM_ERR_FORMAT, "non-finite");
    d = tmp("r-mismatch");
    write_peft(d, "{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 8}", n3, s5, 2, false);
    expect_open_error(t, m, d, NM_ERR_FORMAT, "says r = 8");
    static const struct {
        const char *cfg, *needle;
        nm_status code;
    } CFGS[] = {
        {"{\"peft_type\": \"PREFIX_TUNING\", \"r\": 4, \"lora_alpha\": 8}", "only LORA", NM_ERR_UNSUPPORTED},
        {"{\"r\": 4, \"lora_alpha\": 8, \"use_dora\": true}", "use_dora", NM_ERR_UNSUPPORTED},
        {"{\"r\": 4, \"lora_alpha\": 8, \"bias\": \"all\"}", "bias", NM_ERR_UNSUPPORTED},
        {"{\"r\": 4, \"lora_alpha\": 8, \"modules_to_save\": [\"lm_head\"]}", "modules_to_save", NM_ERR_UNSUPPORTED},
        {"{\"r\": 4, \"lora_alpha\": 8, \"alpha_pattern\": {\"q_proj\": 4}}", "alpha_pattern", NM_ERR_UNSUPPORTED},
        {"{\"lora_alpha\": 8}", "\"r\"", NM_ERR_FORMAT},
        {"{\"r\": 4, \"lora_alpha\": -1}", "lora_alpha", NM_ERR_FORMAT},
        {"{\"r\": 4, \"r\": 4, \"lora_alpha\": 8}", "invalid JSON", NM_ERR_FORMAT},
        {"[1, 2]", "not a JSON object", NM_ERR_FORMAT},
    };
    for (size_t i = 0; i < sizeof CFGS / sizeof CFGS[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "cfg%zu", i);
        d = tmp(name);
        write_peft(d, CFGS[i].cfg, n3, s5, 2, false);
        expect_open_error(t, m, d, CFGS[i].code, CFGS[i].needle);
    }
    (void)sb;
    /* GGUF: foreign tensor names, a model instead of an adapter, a lora_a
     * that is not transposed */
    {
        const char *g1 = tmp("embd.gguf");
        nm_gguf_writer *w = nm_gguf_writer_new(3);
        nm_gguf_writer_set_str(w, "general.architecture", "llama");
        nm_gguf_writer_set_str(w, "general.type", "adapter");
        nm_gguf_writer_set_str(w, "adapter.type", "lora");
        float z[256] = {0};
        int64_t ne[2] = {64, 4};
        nm_gguf_writer_add_tensor(w, "token_embd.weight.lora_a", NM_TYPE_F32, 2, ne, z, sizeof z, NULL);
        nm_gguf_writer_write(w, g1, NULL);
        nm_gguf_writer_free(w);
        expect_open_error(t, m, g1, NM_ERR_UNSUPPORTED, "'token_embd.weight.lora_a' matches no projection");
        const char *g2 = tmp("transposed.gguf");
        w = nm_gguf_writer_new(3);
        nm_gguf_writer_set_str(w, "general.architecture", "llama");
        nm_gguf_writer_set_str(w, "general.type", "adapter");
        nm_gguf_writer_set_str(w, "adapter.type", "lora");
        int64_t nea[2] = {64, 4}, neb[2] = {64, 4}; /* B as [out, r] in ggml order: not transposed */
        nm_gguf_writer_add_tensor(w, "blk.0.attn_q.weight.lora_a", NM_TYPE_F32, 2, nea, z, sizeof z, NULL);
        nm_gguf_writer_add_tensor(w, "blk.0.attn_q.weight.lora_b", NM_TYPE_F32, 2, neb, z, sizeof z, NULL);
        nm_gguf_writer_write(w, g2, NULL);
        nm_gguf_writer_free(w);
        expect_open_error(t, m, g2, NM_ERR_FORMAT, "lora_a must be [in, r]");
        expect_open_error(t, m, nm_test_shared("models/stories260K.gguf"), NM_ERR_ARG, "is a model, not an adapter");
        char full[600];
        snprintf(full, sizeof full, "%s/model.gguf", tmp("fulldir"));
        mkdir(tmp("fulldir"), 0777);
        write_text(full, "x");
        expect_open_error(t, m, tmp("fulldir"), NM_ERR_ARG, "fully fine-tuned model");
        expect_open_error(t, m, tmp("no-such-adapter"), NM_ERR_IO, "no-such-adapter");
    }
out:
    nm_model_free(m);
    nm_model_free(big);
}

/* The wrong base: a model with stories260K's exact shapes and other
 * weights.  The same weights stored as F16 pass (signature). */
static void test_provenance(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf"), *f16 = load(t, "stories260K-f16.gguf"), *other = NULL;
    nm_err err = {0};
    const char *op = tmp("lookalike.gguf");
    nm_new_params np = {0};
    np.dim = 64, np.layers = 5, np.heads = 8, np.kv_heads = 4, np.ffn = 172, np.ctx = 128;
    np.vocab_from = nm_test_shared("models/stories260K.gguf");
    np.type = NM_TYPE_F32;
    np.seed = 3;
    if (!m || !f16 || !CHECK_OK(t, nm_model_new_random(&np, op, NULL, &err), err) ||
        !CHECK_OK(t, nm_model_load(op, NULL, &other, &err), err))
        goto out;
    nm_lora *l = random_adapter(t, m, 21, 4, 8.0f, false, 0x7f, -1, 0.05f);
    const char *ap = tmp("prov");
    nm_lora *x = NULL;
    logbuf lb = {0};
    nm_log log = {log_to, &lb, NM_LOG_DEBUG};
    if (!l || !CHECK_OK(t, nm_lora_save(l, ap, NM_LORA_PEFT, NM_TYPE_F32, &err), err)) goto out2;
    CHECK_OK(t, nm_lora_load(m, ap, false, &log, &x, &err), err);
    nm_lora_free(x);
    x = NULL;
    /* another model with the same shapes: a clear error naming both */
    nm_status st = nm_lora_load(other, ap, false, &log, &x, &err);
    CHECKF(t, st == NM_ERR_ARG && strstr(err.msg, "trained on another base model") && strstr(err.msg, op) &&
                  strstr(err.msg, l->base_fp) && strstr(err.msg, "--force"),
           "wrong base: %d '%s'", st, err.msg);
    nm_lora_free(x);
    x = NULL;
    /* --force loads it with a warning */
    lb.len = 0;
    lb.text[0] = 0;
    CHECK_OK(t, nm_lora_load(other, ap, true, &log, &x, &err), err);
    CHECKF(t, strstr(lb.text, "[2]") && strstr(lb.text, "loaded anyway"), "no warning with --force: %s", lb.text);
    nm_lora_free(x);
    x = NULL;
    /* the F16 copy of the base: accepted through the weight signature */
    lb.len = 0;
    lb.text[0] = 0;
    CHECK_OK(t, nm_lora_load(f16, ap, false, &log, &x, &err), err);
    CHECKF(t, strstr(lb.text, "stored differently"), "no note for the F16 base: %s", lb.text);
    nm_lora_free(x);
    x = NULL;
    double r;
    CHECK(t, !nm_base_signature_match(l->base_sig, nm_model_gguf(other), &r) && fabs(r) < 0.5);
    printf("  signature correlation: other weights %.3f\n", r);
    CHECK(t, nm_base_signature_match(l->base_sig, nm_model_gguf(f16), &r) && r > 0.999);
    printf("  signature correlation: F16 copy %.6f\n", r);
    /* stacks: an adapter that records being trained on top of l warns when
     * stacked on something else */
    nm_lora *top = random_adapter(t, m, 22, 2, 2.0f, false, 0x01, -1, 0.05f);
    if (top) {
        top->under = calloc(1, sizeof *top->under);
        memcpy(top->under[0].fp, l->fp, NM_FP_HEX);
        top->under[0].scale = 1.0f;
        snprintf(top->under[0].name, sizeof top->under[0].name, "prov");
        top->n_under = 1;
        nm_lora_entry good[2] = {{l, 1.0f}, {top, 1.0f}}, bad[1] = {{top, 1.0f}}, scaled[2] = {{l, 0.5f}, {top, 1.0f}};
        lb.len = 0;
        lb.text[0] = 0;
        nm_lora_check_stack(m, good, 2, &log);
        CHECKF(t, lb.len == 0, "a warning for the stack it was trained on: %s", lb.text);
        nm_lora_check_stack(m, bad, 1, &log);
        CHECKF(t, strstr(lb.text, "was trained on top of [prov@1] but is stacked on []"), "%s", lb.text);
        lb.len = 0;
        lb.text[0] = 0;
        nm_lora_check_stack(m, scaled, 2, &log);
        CHECKF(t, strstr(lb.text, "was trained on top of"), "no warning for another scale: %s", lb.text);
        nm_lora_free(top);
    }
out2:
    nm_lora_free(l);
out:
    nm_model_free(m);
    nm_model_free(f16);
    nm_model_free(other);
}

/* A base read into memory whose matrices were packed for the kernels
 * (Q8_0 where the level packs it): the file's identities were taken
 * before, so an adapter made for the file fits without a note, one made
 * for the F32 weights fits through the signature; a merge takes the
 * weights as stored from the file, and refuses a file changed since. */
static void test_packed_base(nm_test *t) {
    nm_err err = {0};
    const char *qp = tmp("s260-q8_0.gguf"), *ap = tmp("packed-a"), *bp = tmp("packed-b"), *mp = tmp("packed-m.gguf");
    nm_quantize_params par = {.recipe = "q8_0"};
    nm_model *f32 = load(t, "stories260K.gguf"), *q8 = NULL;
    nm_gguf *g = NULL, *gm = NULL;
    nm_lora *a = NULL, *b = NULL, *x = NULL;
    if (!f32 || !CHECK_OK(t, nm_quantize_model(nm_test_shared("models/stories260K.gguf"), qp, &par, NULL, &err), err) ||
        !CHECK_OK(t, nm_model_load(qp, NULL, &q8, &err), err) || !CHECK_OK(t, nm_gguf_open(qp, &g, &err), err))
        goto out;
    nm_model_info info;
    nm_model_get_info(q8, &info);
    char fp_file[NM_FP_HEX], fp_mem[NM_FP_HEX];
    nm_base_fingerprint(g, fp_file);
    nm_base_fingerprint(nm_model_gguf(q8), fp_mem);
    printf("  stories260K Q8_0: %d matrices packed; fingerprint of the file %s, of the packed memory %s\n",
           (int)info.n_packed, fp_file, fp_mem);
    CHECK(t, info.n_packed == 0 || strcmp(fp_file, fp_mem) != 0);
    CHECK(t, info.n_packed == 0 || (nm_model_base_ids(q8) && strcmp(nm_model_base_ids(q8)->fp, fp_file) == 0));

    /* made for the file: the exact fingerprint, no note */
    a = random_adapter(t, q8, 31, 4, 8.0f, false, 0x01, -1, 0.05f);
    b = random_adapter(t, f32, 32, 4, 8.0f, false, 0x01, -1, 0.05f);
    if (!a || !b || !CHECK(t, strcmp(a->base_fp, fp_file) == 0) ||
        !CHECK_OK(t, nm_lora_save(a, ap, NM_LORA_PEFT, NM_TYPE_F32, &err), err) ||
        !CHECK_OK(t, nm_lora_save(b, bp, NM_LORA_PEFT, NM_TYPE_F32, &err), err))
        goto out;
    logbuf lb = {0};
    nm_log log = {log_to, &lb, NM_LOG_INFO};
    CHECK_OK(t, nm_lora_load(q8, ap, false, &log, &x, &err), err);
    CHECKF(t, lb.len == 0, "a note for the adapter's own base: %s", lb.text);
    nm_lora_free(x);
    x = NULL;
    /* made for the F32 weights: the signature */
    CHECK_OK(t, nm_lora_load(q8, bp, false, &log, &x, &err), err);
    CHECKF(t, strstr(lb.text, "stored differently"), "no note for the F32 adapter: %s", lb.text);
    nm_lora_free(x);
    x = NULL;

    /* merged: the matrices the adapter leaves alone are the file's bytes */
    nm_lora_entry e = {a, 1.0f};
    if (CHECK_OK(t, nm_model_merge_loras(q8, &e, 1, -1, mp, NULL, &err), err) &&
        CHECK_OK(t, nm_gguf_open(mp, &gm, &err), err)) {
        const nm_gguf_tensor *want = nm_gguf_find_tensor(g, "blk.1.ffn_up.weight"),
                             *got = nm_gguf_find_tensor(gm, "blk.1.ffn_up.weight");
        CHECK(t, want && got && want->nbytes == got->nbytes && memcmp(want->data, got->data, want->nbytes) == 0);
    }
    /* the file replaced since it was loaded: refused */
    nm_quantize_params p4 = {.recipe = "q4_0"};
    if (CHECK_OK(t, nm_quantize_model(nm_test_shared("models/stories260K.gguf"), qp, &p4, NULL, &err), err)) {
        const nm_status st = nm_model_merge_loras(q8, &e, 1, -1, mp, NULL, &err);
        CHECKF(t, info.n_packed == 0 || (st == NM_ERR_IO && strstr(err.msg, "changed on disk")), "merge of a changed file: %d %s",
               st, err.msg);
    }
out:
    nm_gguf_free(gm);
    nm_gguf_free(g);
    nm_lora_free(a);
    nm_lora_free(b);
    nm_model_free(q8);
    nm_model_free(f32);
}

/* ====================================================================== */
/* hostile input                                                          */
/* ====================================================================== */

static void test_hostile(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf");
    if (!m) return;
    nm_err err = {0};
    /* adapter_config.json: random damage to a valid config */
    const char *cfg = "{\n  \"peft_type\": \"LORA\",\n  \"task_type\": \"CAUSAL_LM\",\n  \"r\": 8,\n"
                      "  \"lora_alpha\": 16.0,\n  \"use_rslora\": false,\n  \"target_modules\": [\"q_proj\", "
                      "\"v_proj\"],\n  \"rank_pattern\": {},\n  \"alpha_pattern\": {}\n}\n";
    size_t cl = strlen(cfg);
    nm_rng rng;
    nm_rng_seed(&rng, 77);
    char buf[1024];
    int ok_count = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(buf, cfg, cl);
        size_t n = cl;
        int edits = 1 + (int)(nm_rng_u64(&rng) % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = (size_t)(nm_rng_u64(&rng) % n);
            switch (nm_rng_u64(&rng) % 4) {
            case 0: buf[at] = (char)nm_rng_u64(&rng); break;
            case 1: n = at; break;
            case 2: buf[at] = "{}[]\",:0-e.\\"[nm_rng_u64(&rng) % 12]; break;
            default: buf[at] = 0; break;
            }
            if (n == 0) n = 1;
        }
        nm_peft_config pc;
        err.msg[0] = 0;
        nm_status st = nm_peft_parse_config(buf, n, "fuzz.json", &pc, &err);
        if (st == NM_OK) {
            ok_count++;
            CHECK(t, pc.r >= 1 && pc.alpha > 0 && isfinite(pc.alpha));
        } else {
            CHECK(t, err.msg[0] != 0);
        }
    }
    printf("  adapter_config.json: 20000 damaged copies, %d still valid, no crash\n", ok_count);
    /* GGUF LoRA: every truncation and random byte flips */
    nm_lora *l = random_adapter(t, m, 31, 2, 4.0f, false, 0x41, -1, 0.1f);
    const char *path = tmp("fuzz.gguf");
    size_t len = 0;
    char *file = NULL;
    if (l && CHECK_OK(t, nm_lora_save(l, path, NM_LORA_GGUF, NM_TYPE_F32, &err), err)) file = nm_test_read(path, &len);
    if (file) {
        int opened = 0;
        for (size_t cut = 0; cut < len; cut += (cut < 2048 ? 1 : 97)) {
            nm_gguf *g = NULL;
            if (nm_gguf_open_buffer(file, cut, "cut", &g, NULL) == NM_OK) {
                nm_lora *x = NULL;
                if (nm_gguf_lora_read_gguf(g, &x, NULL) == NM_OK) opened++;
                nm_lora_free(x);
                nm_gguf_free(g);
            }
        }
        char *copy = malloc(len);
        int readable = 0;
        for (int it = 0; it < 3000; it++) {
            memcpy(copy, file, len);
            int flips = 1 + (int)(nm_rng_u64(&rng) % 8);
            for (int f = 0; f < flips; f++) {
                /* mostly the header and metadata, where structure lives */
                size_t at = (size_t)(nm_rng_u64(&rng) % (it % 2 ? len : (len < 2048 ? len : 2048)));
                copy[at] = (char)nm_rng_u64(&rng);
            }
            nm_gguf *g = NULL;
            if (nm_gguf_open_buffer(copy, len, "flip", &g, NULL) == NM_OK) {
                nm_lora *x = NULL;
                nm_err e2 = {0};
                nm_status st = nm_gguf_lora_read_gguf(g, &x, &e2);
                CHECK(t, st == NM_OK || e2.msg[0]);
                if (st == NM_OK) readable++;
                nm_lora_free(x);
                nm_gguf_free(g);
            }
        }
        printf("  GGUF LoRA: %zu bytes, every truncation (%d read) and 3000 flipped copies (%d read), no crash\n", len,
               opened, readable);
        free(copy);
    }
    free(file);
    nm_lora_free(l);
    nm_model_free(m);
}

/* ====================================================================== */
/* CLI                                                                    */
/* ====================================================================== */

static int sh(const char *cmd, char **out) {
    char full[4200];
    snprintf(full, sizeof full, "%.4096s 2>&1", cmd);
    return nm_test_sh(full, out);
}

static void test_cli(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf");
    if (!m) return;
    nm_err err = {0};
    nm_lora *l = random_adapter(t, m, 41, 4, 8.0f, false, 0x7f, -1, 0.3f);
    const char *dir = tmp("cli-a"), *gg = tmp("cli-a.gguf"), *back = tmp("cli-back");
    const char *bin = nm_test_bin(), *model = nm_test_shared("models/stories260K.gguf");
    char cmd[4096], *out = NULL;
    if (!l || !CHECK_OK(t, nm_lora_save(l, dir, NM_LORA_PEFT, NM_TYPE_F32, &err), err)) goto done;
    snprintf(cmd, sizeof cmd, "%s adapter info %s", bin, dir);
    CHECK(t, sh(cmd, &out) == 0 && strstr(out, "rank:         4") && strstr(out, "q,k,v,o,gate,up,down") &&
                 strstr(out, l->fp) && strstr(out, l->base_fp));
    free(out);
    snprintf(cmd, sizeof cmd, "%s adapter info %s --json -m %s", bin, dir, model);
    CHECK(t, sh(cmd, &out) == 0 && strstr(out, "\"rank\": 4") && strstr(out, "\"params\": 23120"));
    free(out);
    snprintf(cmd, sizeof cmd, "(%s adapter convert %s %s && %s adapter convert %s %s)", bin, dir, gg, bin, gg, back);
    CHECK(t, sh(cmd, &out) == 0);
    free(out);
    char f1[600], f2[600];
    snprintf(f1, sizeof f1, "%s/adapter_model.safetensors", dir);
    snprintf(f2, sizeof f2, "%s/adapter_model.safetensors", back);
    CHECK(t, files_equal(f1, f2));
    /* run: the stack changes the output; the same through GGUF */
    char *o1 = NULL, *o2 = NULL, *o3 = NULL;
    snprintf(cmd, sizeof cmd, "%s run -m %s -p 'Once upon a time' -n 12 --temp 0 --json --lora %s", bin, model, dir);
    int r1 = nm_test_sh(cmd, &o1);
    snprintf(cmd, sizeof cmd, "%s run -m %s -p 'Once upon a time' -n 12 --temp 0 --json --lora-scaled %s 1", bin, model, gg);
    int r2 = nm_test_sh(cmd, &o2);
    snprintf(cmd, sizeof cmd, "%s run -m %s -p 'Once upon a time' -n 12 --temp 0 --json", bin, model);
    int r3 = nm_test_sh(cmd, &o3);
    CHECK(t, r1 == 0 && r2 == 0 && r3 == 0 && o1 && o2 && o3 && !strcmp(o1, o2) && strcmp(o1, o3));
    free(o1);
    free(o2);
    free(o3);
    /* perplexity and chat take the options too */
    snprintf(cmd, sizeof cmd, "printf 'hello\\n' | %s chat -m %s -n 4 --temp 0 --lora %s", bin, model, dir);
    CHECK(t, sh(cmd, &out) == 0);
    free(out);
    snprintf(cmd, sizeof cmd, "%s perplexity -m %s -f %s -c 64 --chunks 4 --lora %s --lora-scaled %s -0.5", bin, model,
             nm_test_shared("data/wiki_demo.txt"), dir, gg);
    CHECK(t, sh(cmd, &out) == 0 && strstr(out, "perplexity:"));
    free(out);
    /* errors: usage (2), a broken adapter (1, nomoat: error:) */
    snprintf(cmd, sizeof cmd, "%s run -m %s -p x --lora-scaled %s notanumber", bin, model, dir);
    CHECK(t, sh(cmd, &out) == 2);
    free(out);
    snprintf(cmd, sizeof cmd, "%s adapter frobnicate", bin);
    CHECK(t, sh(cmd, &out) == 2);
    free(out);
    snprintf(cmd, sizeof cmd, "%s run -m %s -p x --lora %s", bin, model, model);
    CHECK(t, sh(cmd, &out) == 1 && strstr(out, "nomoat: error:") && strstr(out, "is a model, not an adapter"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s adapter convert %s %s --type q8_0", bin, dir, tmp("x-peft"));
    CHECK(t, sh(cmd, &out) == 2);
    free(out);
    snprintf(cmd, sizeof cmd, "%s adapter --help && %s merge --help", bin, bin);
    CHECK(t, sh(cmd, &out) == 0 && strstr(out, "usage: nomoat adapter") && strstr(out, "usage: nomoat merge"));
    free(out);
done:
    nm_lora_free(l);
    nm_model_free(m);
}

int main(void) {
    nm_test_run("golden_loss", test_golden_loss);
    nm_test_run("roundtrips", test_roundtrips);
    nm_test_run("llama_cpp_rules", test_llama_cpp_rules);
    nm_test_run("contexts", test_contexts);
    nm_test_run("errors", test_errors);
    nm_test_run("provenance", test_provenance);
    nm_test_run("packed_base", test_packed_base);
    nm_test_run("hostile", test_hostile);
    nm_test_run("cli", test_cli);
    json_decref(GOLD);
    return nm_test_finish();
}
