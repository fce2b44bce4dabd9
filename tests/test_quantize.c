/* test_quantize.c - the K-quant quantizers and `nomoat quantize`:
 *  - round-trip error of every quantizer on Gaussian weights within the
 *    bound its grid implies, and requantizing dequantized values gives
 *    them back;
 *  - the recipe's tensor types equal those of llama.cpp's own files
 *    (t256-q4_k_m, -q4_0, -q8_0, -q6_k in ../shared/models);
 *  - whole files: metadata llama.cpp reads (general.file_type,
 *    general.quantization_version), the same bytes for any thread count,
 *    and logits of the quantized model close to the float model's (a real
 *    model, stories260K, and a random one of K-quant-friendly widths);
 *  - the command line: help, usage errors, failures. */
#include "testlib.h"
#include "base/base.h"
#include "tensor/quantize_model.h"
#include "tensor/quants.h"
#include "tensor/types.h"

#include <math.h>
#include <string.h>

/* Round trip on N(0, 1) data.  Bounds from the grids (expected maximum of
 * |x| over a block of n Gaussians ~2.1 for n = 32, ~1.9 for 16; a uniform
 * rounding error of step s has RMS s / sqrt(12)):
 *   Q8_0  symmetric, step 2.1/127      -> 0.48%   bound 0.7%
 *   Q4_0  levels -8..7 of max/8        -> ~8%     bound 10%
 *   Q4_K  asymmetric 0..15 over ~4.2   -> 8.1%    bound 9%  (the fit gets ~7%)
 *   Q5_K  0..31 over ~4.2              -> 3.9%    bound 4.5%
 *   Q6_K  symmetric -32..31 of ~1.9/32 -> 1.7%    bound 2.5% (with 8-bit scales)
 * A wrong packing or scale gives errors of order 100%. */
static void test_roundtrip(nm_test *t) {
    static const struct {
        nm_type type;
        double bound;
    } cases[] = {{NM_TYPE_Q8_0, 0.007}, {NM_TYPE_Q4_0, 0.10}, {NM_TYPE_Q4_K, 0.09}, {NM_TYPE_Q5_K, 0.045}, {NM_TYPE_Q6_K, 0.025}};
    const int64_t n = 256 * 64;
    nm_rng r;
    nm_rng_seed(&r, 17);
    float *x = malloc(sizeof(float) * (size_t)n), *a = malloc(sizeof(float) * (size_t)n), *b = malloc(sizeof(float) * (size_t)n);
    uint8_t *q = malloc((size_t)n * 2), *q2 = malloc((size_t)n * 2);
    for (int64_t i = 0; i < n; i++) x[i] = (float)nm_rng_normal(&r);
    nm_err err = {0};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const nm_type ty = cases[k].type;
        if (!CHECK_OK(t, nm_quantize(ty, x, q, n, &err), err)) continue;
        CHECK_OK(t, nm_dequantize(ty, q, a, n, &err), err);
        double e = 0;
        for (int64_t i = 0; i < n; i++) e += ((double)a[i] - x[i]) * ((double)a[i] - x[i]);
        const double rms = sqrt(e / (double)n);
        printf("  %s: rms error %.4f of unit-variance data (bound %.4f)\n", nm_type_name(ty), rms, cases[k].bound);
        CHECKF(t, rms <= cases[k].bound && rms > cases[k].bound / 10, "%s: rms error %.4f, bound %.4f", nm_type_name(ty),
               rms, cases[k].bound);
        /* requantizing what dequantization gave: the values come back
         * (exactly, but for Q5_K, whose least-squares fit of scale and min
         * may move: within a tenth of its own error) */
        CHECK_OK(t, nm_quantize(ty, a, q2, n, &err), err);
        CHECK_OK(t, nm_dequantize(ty, q2, b, n, &err), err);
        double e2 = 0;
        for (int64_t i = 0; i < n; i++) e2 += ((double)b[i] - a[i]) * ((double)b[i] - a[i]);
        if (ty == NM_TYPE_Q5_K)
            CHECKF(t, sqrt(e2 / (double)n) <= 0.1 * rms, "q5_k: requantized values move by %.5f", sqrt(e2 / (double)n));
        else
            CHECKF(t, e2 == 0, "%s: requantizing dequantized values changes them (rms %.3g)", nm_type_name(ty),
                   sqrt(e2 / (double)n));
    }
    /* zeros stay zeros, constants and signs survive */
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const nm_type ty = cases[k].type;
        for (int64_t i = 0; i < 256; i++) x[i] = 0.0f;
        nm_quantize(ty, x, q, 256, &err);
        nm_dequantize(ty, q, a, 256, &err);
        bool zero = true;
        for (int i = 0; i < 256; i++) zero &= a[i] == 0.0f;
        CHECKF(t, zero, "%s: zeros do not come back as zeros", nm_type_name(ty));
        for (int64_t i = 0; i < 256; i++) x[i] = i < 128 ? -3.0f : 5.0f;
        nm_quantize(ty, x, q, 256, &err);
        nm_dequantize(ty, q, a, 256, &err);
        bool close = true;
        for (int i = 0; i < 256; i++) close &= fabsf(a[i] - x[i]) <= 0.5f;
        CHECKF(t, close, "%s: a two-valued row is off (%g, %g)", nm_type_name(ty), a[0], a[255]);
    }
    free(x);
    free(a);
    free(b);
    free(q);
    free(q2);
}

/* The recipe against the tensor types llama.cpp's quantize chose for the
 * shared t256 files (2 layers: use_more_bits picks layer 1). */
static void test_recipe_vs_llamacpp(nm_test *t) {
    static const struct {
        const char *file, *recipe;
    } cases[] = {
        {"models/t256-q4_k_m.gguf", "q4_k_m"},
        {"models/t256-q4_0.gguf", "q4_0"},
        {"models/t256-q8_0.gguf", "q8_0"},
        {"models/t256-q6_k.gguf", "q6_k"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        nm_gguf *g;
        nm_err err = {0};
        if (!CHECK_OK(t, nm_gguf_open(nm_test_shared(cases[c].file), &g, &err), err)) continue;
        const bool has_output = nm_gguf_find_tensor(g, "output.weight") != NULL;
        int bad = 0, n_q6 = 0;
        for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++) {
            const nm_gguf_tensor *te = nm_gguf_tensor_at(g, i);
            int layer = -1;
            if (!strncmp(te->name, "blk.", 4)) layer = atoi(te->name + 4);
            /* the source type of a norm is f32: what llama.cpp leaves */
            const nm_type stored = te->n_dims == 1 ? NM_TYPE_F32 : NM_TYPE_F16;
            const nm_type want = (nm_type)te->type;
            const nm_type got = nm_quant_tensor_type(cases[c].recipe, false, te->name, (int)te->n_dims, te->ne[0], stored,
                                                     layer, 2, has_output);
            n_q6 += got == NM_TYPE_Q6_K;
            if (got != want && bad++ < 3)
                CHECKF(t, false, "%s: %s gets %s, llama.cpp chose %s", cases[c].file, te->name, nm_type_name(got),
                       nm_type_name(want));
        }
        uint32_t ft = 0;
        CHECK_OK(t, nm_gguf_get_u32(g, "general.file_type", &ft, &err), err);
        CHECKF(t, (int)ft == nm_quant_recipe_ftype(cases[c].recipe), "%s: file_type %u, recipe says %d", cases[c].file,
               ft, nm_quant_recipe_ftype(cases[c].recipe));
        if (!strcmp(cases[c].recipe, "q4_k_m")) CHECK(t, n_q6 == 3); /* output, blk.1 attn_v and ffn_down */
        nm_gguf_free(g);
    }
    /* rows that do not fit: llama.cpp's fallbacks */
    CHECK(t, nm_quant_tensor_type("q4_k_m", false, "blk.0.attn_q.weight", 2, 64, NM_TYPE_F32, 0, 5, true) == NM_TYPE_Q5_0);
    CHECK(t, nm_quant_tensor_type("q5_k_m", false, "blk.0.attn_q.weight", 2, 64, NM_TYPE_F32, 0, 5, true) == NM_TYPE_Q5_1);
    CHECK(t, nm_quant_tensor_type("q4_k_m", false, "blk.0.ffn_down.weight", 2, 172, NM_TYPE_F32, 0, 5, true) == NM_TYPE_F16);
    CHECK(t, nm_quant_tensor_type("q4_k_m", false, "output.weight", 2, 64, NM_TYPE_F32, -1, 5, true) == NM_TYPE_Q8_0);
    /* tied embeddings are the output; pure keeps the base type */
    CHECK(t, nm_quant_tensor_type("q4_k", false, "token_embd.weight", 2, 256, NM_TYPE_F32, -1, 5, false) == NM_TYPE_Q6_K);
    CHECK(t, nm_quant_tensor_type("q4_k", false, "token_embd.weight", 2, 256, NM_TYPE_F32, -1, 5, true) == NM_TYPE_Q4_K);
    CHECK(t, nm_quant_tensor_type("q4_k", true, "output.weight", 2, 256, NM_TYPE_F32, -1, 5, true) == NM_TYPE_Q4_K);
    CHECK(t, nm_quant_tensor_type("q8_0", false, "output.weight", 2, 256, NM_TYPE_F32, -1, 5, true) == NM_TYPE_Q8_0);
    /* norms and 1-D tensors are never touched */
    CHECK(t, nm_quant_tensor_type("q4_0", false, "blk.0.attn_norm.weight", 1, 256, NM_TYPE_F32, 0, 5, true) == NM_TYPE_F32);
    CHECK(t, nm_quant_tensor_type("q4_0", false, "blk.0.ffn_norm.weight", 2, 256, NM_TYPE_F32, 0, 5, true) == NM_TYPE_F32);
    /* 22 layers (TinyLlama): use_more_bits picks 0-1 (< 22/8), 19-21
     * (>= 7*22/8) and 4, 7, 10, 13, 16 ((i - 2) % 3 == 2) */
    int picked = 0;
    for (int l = 0; l < 22; l++)
        picked += nm_quant_tensor_type("q4_k_m", false, "blk.x.attn_v.weight", 2, 2048, NM_TYPE_F16, l, 22, true) == NM_TYPE_Q6_K;
    CHECKF(t, picked == 10, "%d of 22 attn_v layers get q6_k, llama.cpp picks 10", picked);
    CHECK(t, nm_quant_recipe_type("Q4_K_M") == NM_TYPE_Q4_K && nm_quant_recipe_type("q3_k") == -1);
}

typedef struct collect {
    int n, n_quant;
    double worst_rel;
} collect;

static void on_tensor(void *user, const nm_quant_tensor_info *info) {
    collect *c = user;
    c->n++;
    if (!info->copied) {
        c->n_quant++;
        if (info->rms_w > 0) c->worst_rel = fmax(c->worst_rel, info->rms_err / info->rms_w);
    }
}

/* The last logits of a prompt. */
static float *logits_of(nm_test *t, const char *path, const int32_t *toks, int n, int32_t *n_vocab) {
    nm_err err = {0};
    nm_model *m;
    if (!CHECK_OK(t, nm_model_load(path, NULL, &m, &err), err)) return NULL;
    nm_model_info info;
    nm_model_get_info(m, &info);
    *n_vocab = info.n_vocab;
    nm_context_params p = nm_context_default_params();
    p.n_ctx = 64;
    p.n_threads = 2;
    nm_context *c;
    float *out = NULL;
    if (CHECK_OK(t, nm_context_new(m, &p, &c, &err), err)) {
        if (CHECK_OK(t, nm_decode(c, toks, n, &err), err)) {
            out = malloc(sizeof(float) * (size_t)info.n_vocab);
            memcpy(out, nm_get_logits(c), sizeof(float) * (size_t)info.n_vocab);
        }
        nm_context_free(c);
    }
    nm_model_free(m);
    return out;
}

/* rms(a - b) / rms(b) */
static double rel_rms(const float *a, const float *b, int n) {
    double e = 0, w = 0, mean = 0;
    for (int i = 0; i < n; i++) mean += b[i];
    mean /= n;
    for (int i = 0; i < n; i++) {
        e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        w += ((double)b[i] - mean) * ((double)b[i] - mean);
    }
    return sqrt(e / (w > 0 ? w : 1));
}

/* Whole models: stories260K (real weights; its widths 64 and 172 fit no
 * K-quant, so q4_k_m falls back to q5_0 / q8_0 / f16 as llama.cpp would) and
 * a random model of t256 widths, quantized with q4_k_m and q8_0, against
 * their float logits.
 *
 * Tolerances: the logits move by the weight errors propagated through the
 * products on the path (2 layers: about 8 in series), each adding its
 * matrix's relative error e plus the 8-bit rounding of its activations
 * (~0.4%); independent, they add in quadrature: ~sqrt(8) * (e + 0.4%).
 * q8_0 (e = 0.5%): 2.6%; q4_k_m (mostly e = 7%): 21%.  The bounds are 1.5x
 * that, for the random model, whose flat logits show every error; for
 * stories260K (5 layers, mostly q5_0 at 4% and q8_0) the same argument
 * gives ~14% and 3.5%, bounds 20% and 5%.  A broken quantizer moves the
 * logits by their whole spread or more. */
static void test_models(nm_test *t) {
    const char *dir = nm_test_tmpdir();
    char f32[512], out[512], out3[512], cmd[2048];
    snprintf(f32, sizeof f32, "%s/t256-f32.gguf", dir);
    snprintf(cmd, sizeof cmd, "%s new --preset t256 --vocab-from %s --type f32 --seed 3 -o %s >/dev/null 2>&1",
             nm_test_bin(), nm_test_shared("models/t256-q8_0.gguf"), f32);
    if (!CHECKF(t, nm_test_sh(cmd, NULL) == 0, "%s failed", cmd)) return;
    const int32_t toks_llama[] = {1, 450, 4996, 17354, 1701, 29916, 338, 263};
    const int32_t toks_stories[] = {1, 274, 287, 269, 317, 263, 377, 267};
    const int n_toks = 8;
    static const struct {
        const char *model, *recipe;
        double tol;
        uint32_t ftype;
    } cases[] = {
        {NULL, "q8_0", 0.04, 7},
        {NULL, "q4_k_m", 0.30, 15},
        {"models/stories260K.gguf", "q8_0", 0.05, 7},
        {"models/stories260K.gguf", "q4_k_m", 0.20, 15},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *in = cases[c].model ? nm_test_shared(cases[c].model) : f32;
        snprintf(out, sizeof out, "%s/q-%zu.gguf", dir, c);
        collect col = {0};
        nm_quantize_params p = {.recipe = cases[c].recipe, .n_threads = 3, .on_tensor = on_tensor, .user = &col};
        nm_err err = {0};
        if (!CHECK_OK(t, nm_quantize_model(in, out, &p, NULL, &err), err)) continue;
        CHECK(t, col.n_quant > 0 && col.worst_rel < 0.1);
        /* metadata llama.cpp reads */
        nm_gguf *g;
        if (CHECK_OK(t, nm_gguf_open(out, &g, &err), err)) {
            uint32_t v = 0;
            CHECK(t, nm_gguf_get_u32(g, "general.quantization_version", &v, &err) == NM_OK && v == 2);
            CHECK(t, nm_gguf_get_u32(g, "general.file_type", &v, &err) == NM_OK && v == cases[c].ftype);
            CHECK(t, nm_gguf_find_key(g, "tokenizer.ggml.tokens") >= 0);
            const nm_gguf_tensor *te = nm_gguf_find_tensor(g, "blk.0.attn_norm.weight");
            CHECK(t, te && te->type == NM_TYPE_F32);
            nm_gguf_free(g);
        }
        /* float vs quantized logits */
        int32_t nv = 0, nv2 = 0;
        const int32_t *toks = cases[c].model ? toks_stories : toks_llama;
        float *ref = logits_of(t, in, toks, n_toks, &nv), *got = logits_of(t, out, toks, n_toks, &nv2);
        if (ref && got && CHECK(t, nv == nv2)) {
            const double rel = rel_rms(got, ref, nv);
            printf("  %s %s: %d matrices quantized (worst %.2f%%), logits off by %.2f%% of their spread (tolerance "
                   "%.0f%%)\n",
                   cases[c].model ? cases[c].model : "random t256", cases[c].recipe, col.n_quant, 100 * col.worst_rel,
                   100 * rel, 100 * cases[c].tol);
            CHECKF(t, rel <= cases[c].tol, "%s: quantized logits off by %.3f", cases[c].recipe, rel);
        }
        free(ref);
        free(got);
        /* the same bytes on 1 thread */
        if (c == 1) {
            snprintf(out3, sizeof out3, "%s/q-1thread.gguf", dir);
            p.n_threads = 1;
            p.on_tensor = NULL;
            if (CHECK_OK(t, nm_quantize_model(in, out3, &p, NULL, &err), err)) {
                size_t la, lb;
                char *a = nm_test_read(out, &la), *b = nm_test_read(out3, &lb);
                CHECKF(t, a && b && la == lb && memcmp(a, b, la) == 0, "3 threads and 1 thread write different files");
                free(a);
                free(b);
            }
        }
    }
    /* requantizing a quantized model: types change, error measured
     * against the dequantized source */
    snprintf(out, sizeof out, "%s/q4k-from-q8.gguf", dir);
    collect col = {0};
    nm_quantize_params p = {.recipe = "q4_k", .n_threads = 2, .on_tensor = on_tensor, .user = &col};
    nm_err err = {0};
    CHECK_OK(t, nm_quantize_model(nm_test_shared("models/t256-q8_0.gguf"), out, &p, NULL, &err), err);
    CHECK(t, col.n_quant == 16);
}

static void test_cli(nm_test *t) {
    char cmd[2048], *out = NULL;
    const char *dir = nm_test_tmpdir();
    snprintf(cmd, sizeof cmd, "%s quantize --help", nm_test_bin());
    CHECK(t, nm_test_sh(cmd, &out) == 0 && out && strstr(out, "q4_k_m"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s quantize %s %s/x.gguf q3_k 2>&1", nm_test_bin(), nm_test_shared("models/stories260K.gguf"), dir);
    CHECK(t, nm_test_sh(cmd, &out) == 2 && out && strstr(out, "q3_k"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s quantize %s 2>&1", nm_test_bin(), nm_test_shared("models/stories260K.gguf"));
    CHECK(t, nm_test_sh(cmd, &out) == 2);
    free(out);
    snprintf(cmd, sizeof cmd, "%s quantize %s/missing.gguf %s/x.gguf q8_0 2>&1", nm_test_bin(), dir, dir);
    CHECK(t, nm_test_sh(cmd, &out) == 1 && out && strstr(out, "nomoat: error:") && strstr(out, "missing.gguf"));
    free(out);
    /* a corrupt (truncated) model: one error line naming it, no output left behind */
    snprintf(cmd, sizeof cmd, "head -c 5000 %s > %s/trunc.gguf && %s quantize %s/trunc.gguf %s/t.gguf q4_0 2>&1",
             nm_test_shared("models/stories260K.gguf"), dir, nm_test_bin(), dir, dir);
    CHECK(t, nm_test_sh(cmd, &out) == 1 && out && strstr(out, "nomoat: error:") && strstr(out, "trunc.gguf") &&
                 strstr(out, "truncated"));
    free(out);
    snprintf(cmd, sizeof cmd, "test ! -e %s/t.gguf", dir);
    CHECK(t, nm_test_sh(cmd, NULL) == 0);
    snprintf(cmd, sizeof cmd, "%s quantize %s %s/s.gguf Q8_0 --threads 2", nm_test_bin(),
             nm_test_shared("models/stories260K.gguf"), dir);
    CHECK(t, nm_test_sh(cmd, &out) == 0 && out && strstr(out, "blk.0.attn_q.weight") && strstr(out, "rms error") &&
                 strstr(out, "(copied)"));
    free(out);
    /* the output runs */
    snprintf(cmd, sizeof cmd, "%s info %s/s.gguf", nm_test_bin(), dir);
    CHECK(t, nm_test_sh(cmd, &out) == 0 && out && strstr(out, "q8_0"));
    free(out);
}

int main(void) {
    nm_test_run("roundtrip", test_roundtrip);
    nm_test_run("recipe_vs_llamacpp", test_recipe_vs_llamacpp);
    nm_test_run("models", test_models);
    nm_test_run("cli", test_cli);
    return nm_test_finish();
}
