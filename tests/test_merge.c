/* test_merge.c - folding adapter stacks into a model and into one adapter.
 *
 *  - a model merged in F32 gives the logits of its base with the stack
 *    applied on the fly, within 1e-4 of the largest logit, for stacks in any
 *    order and with any scales; the merged file keeps every key of the base
 *    (tokenizer, chat template...) byte for byte and records its origin, and
 *    adapters made for the base still load onto it;
 *  - merged into a Q8_0 model (t256-q8_0, whose golden test tolerates
 *    0.03 / rms 0.006 against llama.cpp), the logits stay within that
 *    tolerance of the base + stack computed on the fly; stories260K merged
 *    and converted to Q8_0 stays within twice what converting the base
 *    alone to Q8_0 changes;
 *  - two rank-r adapters merged into one rank-2r adapter give the same
 *    logits bit for bit when the scales are powers of two (and within
 *    float rounding otherwise);
 *  - SVD truncation: at the full rank the error is ~0 and logits agree; at a
 *    lower rank the reported relative error equals both the error of the
 *    returned adapter measured directly and the Eckart-Young optimum from
 *    the eigenvalues of each module's dW^T dW (two-sided Jacobi here, an
 *    independent method);
 *  - errors: adapters of different models, nothing to merge;
 *  - the CLI: nomoat merge and nomoat adapter merge end to end. */
#include "testlib.h"
#include "base/base.h"
#include "model/lora.h"

#include <math.h>
#include <string.h>

static nm_model *load_path(nm_test *t, const char *path) {
    nm_err err = {0};
    nm_model *m = NULL;
    CHECK_OK(t, nm_model_load(path, NULL, &m, &err), err);
    return m;
}
static nm_model *load(nm_test *t, const char *file) {
    char rel[128];
    snprintf(rel, sizeof rel, "models/%s", file);
    return load_path(t, nm_test_shared(rel));
}

static const char *tmp(const char *name) {
    static char buf[16][512];
    static int k;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], "%s/%s", nm_test_tmpdir(), name);
    return buf[k];
}

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

typedef struct diff {
    double max, rms, scale; /* max |a - b|, rms, max |b| */
} diff;

static diff compare(const float *a, const float *b, size_t n) {
    diff d = {0, 0, 0};
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        d.max = fmax(d.max, e);
        d.rms += e * e;
        d.scale = fmax(d.scale, fabs((double)b[i]));
    }
    d.rms = sqrt(d.rms / (double)n);
    return d;
}

/* A bound adapter with random values (see test_adapter.c). */
static nm_lora *random_adapter(nm_test *t, const nm_model *m, uint64_t seed, int64_t r, float alpha, unsigned mask,
                               float amp) {
    nm_model_info info;
    nm_model_get_info(m, &info);
    nm_lora_layout lay;
    nm_lora_layout_of_model(m, &lay);
    nm_lora *l = nm_lora_create(info.n_layer);
    nm_err err = {0};
    l->alpha = alpha;
    for (int ly = 0; ly < info.n_layer; ly++)
        for (int p = 0; p < 7; p++)
            if (mask & (1u << p)) CHECK_OK(t, nm_lora_shape(l, ly, (nm_proj)p, r, lay.in[p], lay.out[p], &err), err);
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
    nm_base_fingerprint(nm_model_gguf(m), l->base_fp);
    l->has_base_fp = true;
    char name[32];
    snprintf(name, sizeof name, "rand%llu", (unsigned long long)seed);
    nm_lora_set_strings(l, name, NULL, NULL, &err);
    CHECK_OK(t, nm_lora_bind(l, m, &err), err);
    return l;
}

static const int32_t STORY[] = {1, 274, 287, 269, 317, 263, 377, 267, 265, 282, 295, 433, 426, 342, 394, 261,
                                 329, 429, 412, 425, 372, 403, 407, 261, 378, 385, 328, 432, 261, 370};
#define NS 30

/* ---- into a model ---- */

static void test_model_f32(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf");
    if (!m) return;
    nm_lora *a = random_adapter(t, m, 1, 4, 8.0f, 0x7f, 0.08f), *b = random_adapter(t, m, 2, 2, 3.0f, 0x35, 0.08f);
    nm_err err = {0};
    const nm_lora_entry stacks[3][2] = {{{a, 1.0f}, {b, 0.5f}}, {{b, 0.5f}, {a, 1.0f}}, {{a, -0.7f}, {b, 1.3f}}};
    for (int s = 0; s < 3 && a && b; s++) {
        const char *out = tmp(s == 0 ? "m0.gguf" : s == 1 ? "m1.gguf" : "m2.gguf");
        if (!CHECK_OK(t, nm_model_merge_loras(m, stacks[s], 2, -1, out, NULL, &err), err)) continue;
        nm_model *mm = load_path(t, out);
        float *want = logits_all(t, m, stacks[s], 2, STORY, NS), *got = mm ? logits_all(t, mm, NULL, 0, STORY, NS) : NULL;
        float *base = logits_all(t, m, NULL, 0, STORY, NS);
        if (want && got && base) {
            diff d = compare(got, want, (size_t)NS * 512), db = compare(base, want, (size_t)NS * 512);
            printf("  stack %d: merged F32 vs on the fly: max %.2e (of max |logit| %.2f), rms %.2e; the stack moves "
                   "logits by up to %.2f\n",
                   s, d.max, d.scale, d.rms, db.max);
            CHECKF(t, d.max <= 1e-4 * d.scale, "stack %d: merged logits differ by %.3g (scale %.3g)", s, d.max, d.scale);
            CHECK(t, db.max > 0.5); /* the stack matters */
        }
        free(want);
        free(got);
        free(base);
        if (s == 0 && mm) {
            /* every key of the base, byte for byte; the merge record */
            const nm_gguf *g0 = nm_model_gguf(m), *g1 = nm_model_gguf(mm);
            bool same = true;
            for (int64_t i = 0; i < nm_gguf_n_kv(g0) && same; i++) {
                nm_str k = nm_gguf_key(g0, i);
                char key[256];
                snprintf(key, sizeof key, "%.*s", (int)k.len, k.ptr);
                int64_t j = nm_gguf_find_key(g1, key);
                size_t l0, l1;
                const void *r0 = nm_gguf_kv_raw(g0, i, &l0), *r1 = j >= 0 ? nm_gguf_kv_raw(g1, j, &l1) : NULL;
                same = r1 && nm_gguf_kv_type(g0, i) == nm_gguf_kv_type(g1, j) && l0 == l1 && !memcmp(r0, r1, l0);
                CHECKF(t, same, "key %s differs in the merged model", key);
            }
            CHECK(t, nm_gguf_find_key(g1, "tokenizer.ggml.tokens") >= 0);
            CHECK(t, nm_gguf_n_tensors(g0) == nm_gguf_n_tensors(g1));
            nm_str s1;
            char fp[NM_FP_HEX];
            nm_base_fingerprint(g0, fp);
            CHECK(t, nm_gguf_get_str(g1, NM_KEY_MERGE_BASE, &s1, NULL) == NM_OK && s1.len == 16 && !memcmp(s1.ptr, fp, 16));
            nm_lora_prov *pv = NULL;
            size_t np = 0;
            nm_lora_merged_list(g1, &pv, &np);
            CHECK(t, np == 2 && pv && !strcmp(pv[0].fp, a->fp) && pv[0].scale == 1.0f && !strcmp(pv[1].fp, b->fp) &&
                         pv[1].scale == 0.5f && !strcmp(pv[1].name, "rand2"));
            free(pv);
            /* an adapter made for the base loads onto the merge */
            const char *ap = tmp("for-base");
            nm_lora *x = NULL;
            CHECK_OK(t, nm_lora_save(a, ap, NM_LORA_PEFT, NM_TYPE_F32, &err), err);
            CHECK_OK(t, nm_lora_load(mm, ap, false, NULL, &x, &err), err);
            nm_lora_free(x);
            /* merging a merge extends the record */
            nm_lora *c = NULL;
            if (CHECK_OK(t, nm_lora_load(mm, ap, false, NULL, &c, &err), err)) {
                nm_lora_entry e = {c, 0.25f};
                const char *out2 = tmp("m0b.gguf");
                if (CHECK_OK(t, nm_model_merge_loras(mm, &e, 1, -1, out2, NULL, &err), err)) {
                    nm_gguf *g2 = NULL;
                    if (CHECK_OK(t, nm_gguf_open(out2, &g2, &err), err)) {
                        nm_lora_merged_list(g2, &pv, &np);
                        CHECK(t, np == 3 && pv[2].scale == 0.25f);
                        CHECK(t, nm_gguf_get_str(g2, NM_KEY_MERGE_BASE, &s1, NULL) == NM_OK && !memcmp(s1.ptr, fp, 16));
                        free(pv);
                        nm_gguf_free(g2);
                    }
                }
            }
            nm_lora_free(c);
        }
        nm_model_free(mm);
    }
    nm_lora_free(a);
    nm_lora_free(b);
    nm_model_free(m);
}

static void test_model_q8_0(nm_test *t) {
    nm_err err = {0};
    /* a Q8_0 base: the merged matrices are encoded in Q8_0 again */
    nm_model *m = load(t, "t256-q8_0.gguf");
    if (m) {
        /* dW of about a tenth of W (t256's weights have std ~0.02 per
         * element; A x ~ N(0, |x|^2 / in), so B of ~0.004 and scale 2) */
        nm_lora *a = random_adapter(t, m, 5, 8, 16.0f, 0x7f, 0.004f);
        const int32_t toks[] = {1, 450, 4996, 17354, 1701, 29916, 338, 263, 1243, 310, 278, 1243};
        const char *out = tmp("t256-merged.gguf");
        nm_lora_entry e = {a, 1.0f};
        if (a && CHECK_OK(t, nm_model_merge_loras(m, &e, 1, -1, out, NULL, &err), err)) {
            nm_model *mm = load_path(t, out);
            nm_model_info info;
            nm_model_get_info(m, &info);
            const nm_gguf_tensor *tq = mm ? nm_gguf_find_tensor(nm_model_gguf(mm), "blk.0.attn_q.weight") : NULL;
            CHECK(t, tq && tq->type == NM_TYPE_Q8_0);
            float *want = logits_all(t, m, &e, 1, toks, 12), *got = mm ? logits_all(t, mm, NULL, 0, toks, 12) : NULL;
            float *base = logits_all(t, m, NULL, 0, toks, 12);
            if (want && got && base) {
                size_t n = (size_t)12 * (size_t)info.n_vocab;
                diff d = compare(got, want, n), db = compare(base, want, n);
                printf("  t256-q8_0 merged (Q8_0) vs base + adapter: max %.4f, rms %.5f (golden tolerance 0.03 / "
                       "0.006); the adapter moves logits by max %.3f, rms %.4f\n",
                       d.max, d.rms, db.max, db.rms);
                CHECK(t, d.max <= 0.03 && d.rms <= 0.006);
                CHECK(t, db.rms > 5 * d.rms); /* the adapter matters more than the rounding */
            }
            free(want);
            free(got);
            free(base);
            nm_model_free(mm);
        }
        nm_lora_free(a);
        nm_model_free(m);
    }
    /* stories260K merged and converted to Q8_0 (--type q8_0): the same
     * tensors as merging in F32 and converting after, and about as far from
     * the exact stack as the base's own Q8_0 copy is from the base (an
     * adapter of the size fine-tuning gives: it moves logits by ~1) */
    m = load(t, "stories260K.gguf");
    if (!m) return;
    nm_lora *a = random_adapter(t, m, 6, 4, 8.0f, 0x7f, 0.01f);
    nm_lora_entry e = {a, 1.0f};
    const char *mq = tmp("s-merged-q8.gguf"), *bq = tmp("s-base-q8.gguf"), *mf = tmp("s-merged-f32.gguf"),
               *mfq = tmp("s-merged-f32-q8.gguf");
    if (a && CHECK_OK(t, nm_model_merge_loras(m, &e, 1, NM_TYPE_Q8_0, mq, NULL, &err), err) &&
        CHECK_OK(t, nm_model_merge_loras(m, &e, 1, -1, mf, NULL, &err), err) &&
        CHECK_OK(t, nm_gguf_convert(mf, mfq, NM_TYPE_Q8_0, NULL, &err), err) &&
        CHECK_OK(t, nm_gguf_convert(nm_test_shared("models/stories260K.gguf"), bq, NM_TYPE_Q8_0, NULL, &err), err)) {
        nm_gguf *g1 = NULL, *g2 = NULL;
        if (CHECK_OK(t, nm_gguf_open(mq, &g1, &err), err) && CHECK_OK(t, nm_gguf_open(mfq, &g2, &err), err)) {
            bool same = nm_gguf_n_tensors(g1) == nm_gguf_n_tensors(g2);
            for (int64_t i = 0; same && i < nm_gguf_n_tensors(g1); i++) {
                const nm_gguf_tensor *x = nm_gguf_tensor_at(g1, i), *y = nm_gguf_find_tensor(g2, x->name);
                same = y && x->type == y->type && x->nbytes == y->nbytes && !memcmp(x->data, y->data, x->nbytes);
            }
            CHECKF(t, same, "merge --type q8_0 differs from merging in F32 and converting");
        }
        nm_gguf_free(g1);
        nm_gguf_free(g2);
        nm_model *mm = load_path(t, mq), *mb = load_path(t, bq);
        float *want = logits_all(t, m, &e, 1, STORY, NS), *got = mm ? logits_all(t, mm, NULL, 0, STORY, NS) : NULL;
        float *b32 = logits_all(t, m, NULL, 0, STORY, NS), *b8 = mb ? logits_all(t, mb, NULL, 0, STORY, NS) : NULL;
        if (want && got && b32 && b8) {
            diff d = compare(got, want, (size_t)NS * 512), d0 = compare(b8, b32, (size_t)NS * 512);
            diff da = compare(b32, want, (size_t)NS * 512);
            printf("  stories260K merged + Q8_0 vs F32 base + adapter: max %.4f rms %.5f; base Q8_0 vs F32: max %.4f "
                   "rms %.5f; the adapter moves logits by max %.3f rms %.4f\n",
                   d.max, d.rms, d0.max, d0.rms, da.max, da.rms);
            CHECK(t, d.max <= 2 * d0.max && d.rms <= 2 * d0.rms);
        }
        free(want);
        free(got);
        free(b32);
        free(b8);
        nm_model_free(mm);
        nm_model_free(mb);
    }
    nm_lora_free(a);
    nm_model_free(m);
}

/* ---- into one adapter ---- */

static void test_concat(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf");
    if (!m) return;
    nm_err err = {0};
    /* ranks 4 and 4 on every module; scales 2 (8/4) and 1 (4/4) x 0.5 */
    nm_lora *a = random_adapter(t, m, 7, 4, 8.0f, 0x7f, 0.08f), *b = random_adapter(t, m, 8, 4, 4.0f, 0x7f, 0.08f);
    for (int v = 0; v < 2 && a && b; v++) {
        float sb = v == 0 ? 0.5f : 0.3f; /* 0.3: not a power of two */
        nm_lora_entry st[2] = {{a, 1.0f}, {b, sb}};
        nm_lora *c = NULL;
        double rel = -1;
        if (!CHECK_OK(t, nm_lora_merge(st, 2, 0, &c, &rel, &err), err)) continue;
        CHECK(t, c->rank == 8 && c->alpha == 8.0f && nm_lora_mod_at(c, 3, NM_PROJ_UP)->r == 8 && rel == 0);
        nm_lora_entry one = {c, 1.0f};
        float *want = logits_all(t, m, st, 2, STORY, NS), *got = logits_all(t, m, &one, 1, STORY, NS);
        if (want && got) {
            diff d = compare(got, want, (size_t)NS * 512);
            printf("  rank 4 + 4 -> 8, second scale %g: max difference %.3g\n", (double)sb, d.max);
            if (v == 0)
                CHECKF(t, memcmp(got, want, sizeof(float) * NS * 512) == 0, "not bit-identical: %.3g", d.max);
            else
                CHECK(t, d.max <= 1e-5 * d.scale);
        }
        free(want);
        free(got);
        /* through a file and back: the same adapter */
        const char *p = tmp("concat.gguf");
        nm_lora *back = NULL;
        if (CHECK_OK(t, nm_lora_save(c, p, NM_LORA_GGUF, NM_TYPE_F32, &err), err) &&
            CHECK_OK(t, nm_lora_open(p, m, &back, &err), err))
            CHECK(t, !strcmp(back->fp, c->fp) && back->has_base_fp && !strcmp(back->base_fp, a->base_fp));
        nm_lora_free(back);
        nm_lora_free(c);
    }
    /* modules adapted by one of them only: mixed ranks, still exact */
    nm_lora *q = random_adapter(t, m, 9, 3, 6.0f, 0x01, 0.1f);
    if (a && q) {
        nm_lora_entry st[2] = {{q, 1.0f}, {a, 1.0f}};
        nm_lora *c = NULL;
        if (CHECK_OK(t, nm_lora_merge(st, 2, 0, &c, NULL, &err), err)) {
            CHECK(t, nm_lora_mod_at(c, 0, NM_PROJ_Q)->r == 7 && nm_lora_mod_at(c, 0, NM_PROJ_K)->r == 4);
            nm_lora_entry one = {c, 1.0f};
            float *want = logits_all(t, m, st, 2, STORY, NS), *got = logits_all(t, m, &one, 1, STORY, NS);
            if (want && got) {
                diff d = compare(got, want, (size_t)NS * 512);
                CHECKF(t, d.max <= 1e-5 * d.scale, "mixed ranks: %.3g", d.max);
            }
            free(want);
            free(got);
            /* PEFT writes a rank_pattern for the smaller modules and reads it back */
            const char *pd = tmp("mixed-peft");
            nm_lora *back = NULL;
            if (CHECK_OK(t, nm_lora_save(c, pd, NM_LORA_PEFT, NM_TYPE_F32, &err), err) &&
                CHECK_OK(t, nm_lora_open(pd, m, &back, &err), err))
                CHECK(t, !strcmp(back->fp, c->fp));
            nm_lora_free(back);
        }
        nm_lora_free(c);
    }
    nm_lora_free(q);
    nm_lora_free(a);
    nm_lora_free(b);
    nm_model_free(m);
}

/* Eigenvalues of the symmetric n x n matrix S (destroyed), by cyclic
 * two-sided Jacobi rotations. */
static void sym_eigen(double *S, int64_t n, double *ev) {
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0;
        for (int64_t p = 0; p < n; p++)
            for (int64_t q = p + 1; q < n; q++) off += S[p * n + q] * S[p * n + q];
        if (off < 1e-30) break;
        for (int64_t p = 0; p < n; p++)
            for (int64_t q = p + 1; q < n; q++) {
                double apq = S[p * n + q];
                if (fabs(apq) < 1e-300) continue;
                double theta = (S[q * n + q] - S[p * n + p]) / (2 * apq);
                double tt = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(tt * tt + 1), s = tt * c;
                for (int64_t k = 0; k < n; k++) { /* columns p, q */
                    double x = S[k * n + p], y = S[k * n + q];
                    S[k * n + p] = c * x - s * y;
                    S[k * n + q] = s * x + c * y;
                }
                for (int64_t k = 0; k < n; k++) { /* rows p, q */
                    double x = S[p * n + k], y = S[q * n + k];
                    S[p * n + k] = c * x - s * y;
                    S[q * n + k] = s * x + c * y;
                }
            }
    }
    for (int64_t i = 0; i < n; i++) ev[i] = S[i * n + i];
}

static int cmp_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* dW of module (ly, p) of a stack, [out][in] in double. */
static void delta_w(const nm_lora_entry *st, size_t n, int64_t ly, nm_proj p, double *W, int64_t in, int64_t out) {
    memset(W, 0, sizeof(double) * (size_t)(in * out));
    for (size_t i = 0; i < n; i++) {
        const nm_lora_mod *m = nm_lora_mod_at(st[i].lora, ly, p);
        double s = (double)m->scale * st[i].scale;
        for (int64_t j = 0; j < m->r; j++)
            for (int64_t o = 0; o < out; o++) {
                double b = s * m->Bt[j * out + o];
                for (int64_t c = 0; c < in; c++) W[o * in + c] += b * m->A[j * in + c];
            }
    }
}

static void test_svd(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf");
    if (!m) return;
    nm_err err = {0};
    nm_lora *a = random_adapter(t, m, 10, 4, 8.0f, 0x7f, 0.08f), *b = random_adapter(t, m, 11, 4, 4.0f, 0x5b, 0.08f);
    if (!a || !b) goto out;
    nm_lora_entry st[2] = {{a, 1.0f}, {b, -0.6f}};
    /* full rank: exact up to rounding */
    nm_lora *full = NULL;
    double rel = -1;
    if (CHECK_OK(t, nm_lora_merge(st, 2, 8, &full, &rel, &err), err)) {
        printf("  SVD at the full rank 8: relative error %.3g\n", rel);
        CHECK(t, rel < 1e-6);
        nm_lora_entry one = {full, 1.0f};
        float *want = logits_all(t, m, st, 2, STORY, NS), *got = logits_all(t, m, &one, 1, STORY, NS);
        if (want && got) {
            diff d = compare(got, want, (size_t)NS * 512);
            printf("  logits: max difference %.3g (max |logit| %.2f)\n", d.max, d.scale);
            CHECK(t, d.max <= 1e-4 * d.scale);
        }
        free(want);
        free(got);
    }
    nm_lora_free(full);
    /* rank 3 */
    nm_lora *low = NULL;
    if (CHECK_OK(t, nm_lora_merge(st, 2, 3, &low, &rel, &err), err)) {
        double num_direct = 0, num_opt = 0, den = 0;
        double *W = malloc(sizeof(double) * 172 * 64), *G = malloc(sizeof(double) * 172 * 172), *ev = malloc(sizeof(double) * 172);
        nm_lora_entry lo = {low, 1.0f};
        double *Wk = malloc(sizeof(double) * 172 * 64);
        for (int64_t ly = 0; ly < 5; ly++)
            for (int p = 0; p < 7; p++) {
                const nm_lora_mod *md = nm_lora_mod_at(low, ly, (nm_proj)p);
                if (!md->r) continue;
                CHECK(t, md->r == 3);
                int64_t in = md->in, out = md->out, k = in < out ? in : out;
                delta_w(st, 2, ly, (nm_proj)p, W, in, out);
                delta_w(&lo, 1, ly, (nm_proj)p, Wk, in, out);
                for (int64_t i = 0; i < in * out; i++) {
                    den += W[i] * W[i];
                    num_direct += (W[i] - Wk[i]) * (W[i] - Wk[i]);
                }
                /* Gram matrix on the smaller side: eigenvalues = s^2 */
                for (int64_t x = 0; x < k; x++)
                    for (int64_t y = 0; y < k; y++) {
                        double g = 0;
                        if (in <= out)
                            for (int64_t o = 0; o < out; o++) g += W[o * in + x] * W[o * in + y];
                        else
                            for (int64_t c = 0; c < in; c++) g += W[x * in + c] * W[y * in + c];
                        G[x * k + y] = g;
                    }
                sym_eigen(G, k, ev);
                qsort(ev, (size_t)k, sizeof *ev, cmp_desc);
                for (int64_t j = 3; j < k; j++) num_opt += fmax(ev[j], 0.0);
            }
        double direct = sqrt(num_direct / den), opt = sqrt(num_opt / den);
        printf("  SVD to rank 3: reported %.6f, measured %.6f, Eckart-Young optimum %.6f\n", rel, direct, opt);
        CHECK(t, fabs(rel - direct) <= 1e-6 + 1e-4 * direct && fabs(rel - opt) <= 1e-6 + 1e-4 * opt && rel > 0.05);
        free(W);
        free(Wk);
        free(G);
        free(ev);
    }
    nm_lora_free(low);
out:
    nm_lora_free(a);
    nm_lora_free(b);
    nm_model_free(m);
}

static void test_merge_errors(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf"), *big = load(t, "t256-q8_0.gguf");
    nm_err err = {0};
    if (!m || !big) goto out;
    nm_lora *a = random_adapter(t, m, 12, 2, 2.0f, 0x7f, 0.1f), *b = random_adapter(t, big, 13, 2, 2.0f, 0x7f, 0.01f);
    if (a && b) {
        nm_lora_entry st[2] = {{a, 1.0f}, {b, 1.0f}};
        nm_lora *c = NULL;
        CHECK(t, nm_lora_merge(st, 2, 0, &c, NULL, &err) == NM_ERR_ARG && strstr(err.msg, "different models"));
        CHECK(t, nm_lora_merge(st, 0, 0, &c, NULL, &err) == NM_ERR_ARG && strstr(err.msg, "no adapter"));
        CHECK(t, nm_model_merge_loras(m, st + 1, 1, -1, tmp("x.gguf"), NULL, &err) == NM_ERR_ARG &&
                     strstr(err.msg, "not loaded for this model"));
        CHECK(t, nm_lora_merge(st, 1, -3, &c, NULL, &err) == NM_ERR_ARG);
    }
    nm_lora_free(a);
    nm_lora_free(b);
out:
    nm_model_free(m);
    nm_model_free(big);
}

static void test_cli(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf");
    if (!m) return;
    nm_err err = {0};
    nm_lora *a = random_adapter(t, m, 14, 4, 8.0f, 0x7f, 0.2f), *b = random_adapter(t, m, 15, 4, 8.0f, 0x7f, 0.2f);
    const char *pa = tmp("cli-a"), *pb = tmp("cli-b.gguf"), *merged = tmp("cli-merged.gguf"), *ab = tmp("cli-ab.gguf");
    const char *bin = nm_test_bin(), *model = nm_test_shared("models/stories260K.gguf");
    char cmd[4096], *o1 = NULL, *o2 = NULL, *o3 = NULL, *out = NULL;
    if (!a || !b || !CHECK_OK(t, nm_lora_save(a, pa, NM_LORA_PEFT, NM_TYPE_F32, &err), err) ||
        !CHECK_OK(t, nm_lora_save(b, pb, NM_LORA_GGUF, NM_TYPE_F32, &err), err))
        goto done;
    snprintf(cmd, sizeof cmd, "%s merge -m %s --lora %s --lora-scaled %s 0.5 -o %s 2>&1", bin, model, pa, pb, merged);
    CHECK(t, nm_test_sh(cmd, &out) == 0 && strstr(out, "2 adapters folded into 35 weight matrices"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s adapter merge --lora %s --lora-scaled %s 0.5 -o %s 2>&1", bin, pa, pb, ab);
    CHECK(t, nm_test_sh(cmd, &out) == 0 && strstr(out, "rank 8") && strstr(out, "exact"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s run -m %s -p 'Once upon a time' -n 16 --temp 0 --json --lora %s --lora-scaled %s 0.5",
             bin, model, pa, pb);
    nm_test_sh(cmd, &o1);
    snprintf(cmd, sizeof cmd, "%s run -m %s -p 'Once upon a time' -n 16 --temp 0 --json", bin, merged);
    nm_test_sh(cmd, &o2);
    snprintf(cmd, sizeof cmd, "%s run -m %s -p 'Once upon a time' -n 16 --temp 0 --json --lora %s", bin, model, ab);
    nm_test_sh(cmd, &o3);
    CHECKF(t, o1 && o2 && o3 && !strcmp(o1, o2) && !strcmp(o1, o3), "stack / merged model / merged adapter:\n%s%s%s",
           o1 ? o1 : "", o2 ? o2 : "", o3 ? o3 : "");
    snprintf(cmd, sizeof cmd, "%s adapter merge --lora %s --lora %s --rank 3 -o %s 2>&1", bin, pa, pb, tmp("r3"));
    CHECK(t, nm_test_sh(cmd, &out) == 0 && strstr(out, "relative error"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s merge -m %s -o %s 2>&1", bin, model, merged);
    CHECK(t, nm_test_sh(cmd, &out) == 2);
    free(out);
    snprintf(cmd, sizeof cmd, "%s merge -m %s --lora %s -o %s --type q9_9 2>&1", bin, model, pa, merged);
    CHECK(t, nm_test_sh(cmd, &out) == 2);
    free(out);
done:
    free(o1);
    free(o2);
    free(o3);
    nm_lora_free(a);
    nm_lora_free(b);
    nm_model_free(m);
}

int main(void) {
    nm_test_run("model_f32", test_model_f32);
    nm_test_run("model_q8_0", test_model_q8_0);
    nm_test_run("concat", test_concat);
    nm_test_run("svd", test_svd);
    nm_test_run("errors", test_merge_errors);
    nm_test_run("cli", test_cli);
    return nm_test_finish();
}
