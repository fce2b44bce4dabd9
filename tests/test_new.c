/* test_new.c - random-weight models (`nomoat new`, nm_model_new_random).
 *
 * Expected layout: shared/tools/make_random_gguf.py (the preset table, key
 * order and tensor order below are transcribed from it), with the
 * tokenizer.* keys of the vocabulary file copied byte for byte.  Values:
 * weights std 0.02, norms 1 +- 0.1, reproducible from the seed. */
#include "testlib.h"

#include <math.h>
#include <string.h>

static const char *tmp_path(const char *name, char *buf, size_t cap) {
    snprintf(buf, cap, "%s/%s", nm_test_tmpdir(), name);
    return buf;
}

static nm_new_params t256_params(void) {
    nm_new_params p;
    memset(&p, 0, sizeof p);
    p.preset = "t256";
    p.vocab_from = nm_test_shared("models/stories260K.gguf");
    p.type = NM_TYPE_F16;
    p.seed = 1;
    return p;
}

/* llama.cpp's enum llama_ftype for the whole-model types used here. */
static double llama_ftype(nm_type t) {
    switch (t) {
    case NM_TYPE_F32: return 0;
    case NM_TYPE_F16: return 1;
    case NM_TYPE_Q8_0: return 7;
    default: return -1;
    }
}

/* Checks g is a LLaMA of the given shape written as make_random_gguf.py
 * lays it out, with matrices of type wtype and vocab's tokenizer keys. */
static void check_layout(nm_test *t, const nm_gguf *g, const nm_gguf *vocab, const char *name, int64_t dim,
                         int64_t layers, int64_t heads, int64_t kv_heads, int64_t ffn, int64_t ctx, nm_type wtype) {
    int64_t n_vocab = (int64_t)nm_gguf_arr_n(vocab, nm_gguf_find_key(vocab, "tokenizer.ggml.tokens"));
    int64_t hd = dim / heads;
    struct {
        const char *key;
        int vtype;
        double value;
    } expect[] = {
        {"general.architecture", NM_GGUF_STRING, 0},
        {"general.name", NM_GGUF_STRING, 0},
        {"general.file_type", NM_GGUF_UINT32, llama_ftype(wtype)},
        {"general.quantization_version", NM_GGUF_UINT32, 2},
        {"llama.context_length", NM_GGUF_UINT32, (double)ctx},
        {"llama.embedding_length", NM_GGUF_UINT32, (double)dim},
        {"llama.block_count", NM_GGUF_UINT32, (double)layers},
        {"llama.feed_forward_length", NM_GGUF_UINT32, (double)ffn},
        {"llama.rope.dimension_count", NM_GGUF_UINT32, (double)hd},
        {"llama.attention.head_count", NM_GGUF_UINT32, (double)heads},
        {"llama.attention.head_count_kv", NM_GGUF_UINT32, (double)kv_heads},
        {"llama.attention.layer_norm_rms_epsilon", NM_GGUF_FLOAT32, 1e-5f},
        {"llama.rope.freq_base", NM_GGUF_FLOAT32, 10000},
        {"llama.vocab_size", NM_GGUF_UINT32, (double)n_vocab},
    };
    bool quantized = wtype == NM_TYPE_Q8_0 || wtype == NM_TYPE_Q4_0;
    int64_t k = 0;
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
        if (!strcmp(expect[i].key, "general.quantization_version") && !quantized) {
            CHECK(t, nm_gguf_find_key(g, expect[i].key) < 0);
            continue;
        }
        int64_t j = nm_gguf_find_key(g, expect[i].key);
        if (!CHECKF(t, j == k, "%s at %lld, expected %lld", expect[i].key, (long long)j, (long long)k)) return;
        k++;
        if (!CHECKF(t, (int)nm_gguf_kv_type(g, j) == expect[i].vtype, "%s: type %d", expect[i].key,
                    (int)nm_gguf_kv_type(g, j)))
            continue;
        if (expect[i].vtype == NM_GGUF_UINT32) {
            uint32_t v = 0;
            nm_gguf_get_u32(g, expect[i].key, &v, NULL);
            CHECKF(t, v == (uint32_t)expect[i].value, "%s = %u, expected %.0f", expect[i].key, v, expect[i].value);
        } else if (expect[i].vtype == NM_GGUF_FLOAT32) {
            float v = 0;
            nm_gguf_get_f32(g, expect[i].key, &v, NULL);
            CHECKF(t, v == (float)expect[i].value, "%s = %g", expect[i].key, (double)v);
        }
    }
    nm_str s;
    CHECK(t, !nm_gguf_get_str(g, "general.architecture", &s, NULL) && s.len == 5 && !memcmp(s.ptr, "llama", 5));
    CHECK(t, !nm_gguf_get_str(g, "general.name", &s, NULL) && s.len == strlen(name) && !memcmp(s.ptr, name, s.len));
    /* Then every tokenizer.* key of the vocabulary, same order, same bytes. */
    for (int64_t i = 0; i < nm_gguf_n_kv(vocab); i++) {
        nm_str key = nm_gguf_key(vocab, i);
        if (key.len < 10 || memcmp(key.ptr, "tokenizer.", 10)) continue;
        if (!CHECKF(t, k < nm_gguf_n_kv(g), "missing %.*s", (int)key.len, key.ptr)) return;
        nm_str gk = nm_gguf_key(g, k);
        size_t la, lb;
        const void *ra = nm_gguf_kv_raw(g, k, &la), *rb = nm_gguf_kv_raw(vocab, i, &lb);
        CHECKF(t, gk.len == key.len && !memcmp(gk.ptr, key.ptr, key.len) &&
                      nm_gguf_kv_type(g, k) == nm_gguf_kv_type(vocab, i) && la == lb && !memcmp(ra, rb, la),
               "key %lld: %.*s is not a copy of the vocabulary's %.*s", (long long)k, (int)gk.len, gk.ptr,
               (int)key.len, key.ptr);
        k++;
    }
    CHECKF(t, k == nm_gguf_n_kv(g), "%lld keys, expected %lld", (long long)nm_gguf_n_kv(g), (long long)k);

    /* Tensors: token_embd, per layer nine, output_norm, output. */
    CHECKF(t, nm_gguf_n_tensors(g) == 9 * layers + 3, "%lld tensors", (long long)nm_gguf_n_tensors(g));
    int64_t kv = hd * kv_heads;
    struct {
        const char *suffix;
        int64_t ne0, ne1;
    } per_layer[9] = {{"attn_norm", dim, 0}, {"attn_q", dim, dim},      {"attn_k", dim, kv},
                      {"attn_v", dim, kv},   {"attn_output", dim, dim}, {"ffn_norm", dim, 0},
                      {"ffn_gate", dim, ffn}, {"ffn_up", dim, ffn},     {"ffn_down", ffn, dim}};
    for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++) {
        char want[64];
        int64_t ne0, ne1;
        if (i == 0) {
            snprintf(want, sizeof want, "token_embd.weight");
            ne0 = dim, ne1 = n_vocab;
        } else if (i == 9 * layers + 1) {
            snprintf(want, sizeof want, "output_norm.weight");
            ne0 = dim, ne1 = 0;
        } else if (i == 9 * layers + 2) {
            snprintf(want, sizeof want, "output.weight");
            ne0 = dim, ne1 = n_vocab;
        } else {
            int64_t l = (i - 1) / 9, m = (i - 1) % 9;
            snprintf(want, sizeof want, "blk.%lld.%s.weight", (long long)l, per_layer[m].suffix);
            ne0 = per_layer[m].ne0, ne1 = per_layer[m].ne1;
        }
        const nm_gguf_tensor *x = nm_gguf_tensor_at(g, i);
        CHECKF(t, !strcmp(x->name, want), "tensor %lld is %s, expected %s", (long long)i, x->name, want);
        CHECKF(t, x->n_dims == (ne1 ? 2u : 1u) && x->ne[0] == ne0 && x->ne[1] == (ne1 ? ne1 : 1),
               "%s: shape %lld x %lld, expected %lld x %lld", want, (long long)x->ne[0], (long long)x->ne[1],
               (long long)ne0, (long long)ne1);
        CHECKF(t, x->type == (ne1 ? (uint32_t)wtype : NM_TYPE_F32), "%s: type %s", want, nm_type_name(x->type));
    }
}

static nm_status make(const nm_new_params *p, const char *path, nm_err *err) {
    return nm_model_new_random(p, path, NULL, err);
}

static void test_t256_layout(nm_test *t) {
    char path[1024];
    nm_new_params p = t256_params();
    nm_err err = {0};
    if (!CHECK_OK(t, make(&p, tmp_path("t256.gguf", path, sizeof path), &err), err)) return;
    nm_gguf *g, *v;
    if (!CHECK_OK(t, nm_gguf_open(path, &g, &err), err)) return;
    if (CHECK_OK(t, nm_gguf_open(p.vocab_from, &v, &err), err)) {
        /* t256 row of make_random_gguf.py's PRESETS. */
        check_layout(t, g, v, "random-t256", 256, 2, 4, 2, 768, 512, NM_TYPE_F16);
        nm_gguf_free(v);
    }
    nm_gguf_free(g);
}

/* Mean and standard deviation of a tensor's values. */
static bool tensor_stats(const nm_gguf_tensor *x, double *mean, double *sd) {
    int64_t n = x->ne[0] * x->ne[1];
    float *f = malloc((size_t)n * sizeof *f);
    if (!f || nm_dequantize((nm_type)x->type, x->data, f, n, NULL)) {
        free(f);
        return false;
    }
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) s += f[i];
    *mean = s / (double)n;
    for (int64_t i = 0; i < n; i++) s2 += (f[i] - *mean) * (f[i] - *mean);
    *sd = sqrt(s2 / (double)n);
    free(f);
    return true;
}

static void check_values(nm_test *t, const nm_gguf *g, double want_sd) {
    for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++) {
        const nm_gguf_tensor *x = nm_gguf_tensor_at(g, i);
        double mean = 0, sd = 0;
        if (!CHECKF(t, tensor_stats(x, &mean, &sd), "%s: cannot read", x->name)) continue;
        if (x->n_dims == 1) { /* norms: 1 + 0.1 N(0,1); 256 values, so loose */
            CHECKF(t, fabs(mean - 1.0) < 0.05 && sd > 0.07 && sd < 0.13, "%s: mean %g sd %g", x->name, mean, sd);
        } else {
            CHECKF(t, fabs(sd - want_sd) < 0.1 * want_sd && fabs(mean) < 0.1 * want_sd, "%s: mean %g sd %g", x->name,
                   mean, sd);
        }
    }
    /* Streams differ between tensors and between rows (a seeding mistake
     * would repeat them). */
    const nm_gguf_tensor *q0 = nm_gguf_find_tensor(g, "blk.0.attn_q.weight");
    const nm_gguf_tensor *q1 = nm_gguf_find_tensor(g, "blk.1.attn_q.weight");
    if (CHECK(t, q0 && q1)) {
        size_t rb = nm_type_row_bytes((nm_type)q0->type, q0->ne[0]);
        CHECK(t, memcmp(q0->data, q1->data, rb) != 0);
        CHECK(t, memcmp(q0->data, (const char *)q0->data + rb, rb) != 0);
    }
}

static void test_values_and_seed(nm_test *t) {
    char a[1024], b[1024], c[1024];
    nm_new_params p = t256_params();
    nm_err err = {0};
    if (!CHECK_OK(t, make(&p, tmp_path("s1a.gguf", a, sizeof a), &err), err)) return;
    if (!CHECK_OK(t, make(&p, tmp_path("s1b.gguf", b, sizeof b), &err), err)) return;
    p.seed = 2;
    if (!CHECK_OK(t, make(&p, tmp_path("s2.gguf", c, sizeof c), &err), err)) return;
    size_t la, lb, lc;
    char *fa = nm_test_read(a, &la), *fb = nm_test_read(b, &lb), *fc = nm_test_read(c, &lc);
    CHECK(t, fa && fb && fc);
    if (fa && fb && fc) {
        CHECK(t, la == lb && memcmp(fa, fb, la) == 0);
        /* Same layout, other values: the files differ in most of their data. */
        CHECK(t, la == lc);
        size_t same = 0;
        for (size_t i = 0; i < la && i < lc; i++) same += fa[i] == fc[i];
        CHECKF(t, same < la / 2, "seeds 1 and 2 share %zu of %zu bytes", same, la);
    }
    free(fa);
    free(fb);
    free(fc);
    nm_gguf *g;
    if (CHECK_OK(t, nm_gguf_open(a, &g, &err), err)) {
        check_values(t, g, 0.02);
        nm_gguf_free(g);
    }
}

static void test_custom_dims(nm_test *t) {
    char path[1024];
    nm_new_params p;
    memset(&p, 0, sizeof p);
    p.vocab_from = nm_test_shared("models/stories260K.gguf");
    p.type = NM_TYPE_F32;
    p.dim = 96, p.layers = 3, p.heads = 6, p.kv_heads = 2, p.ffn = 200, p.ctx = 128;
    p.init_std = 0.05f;
    nm_err err = {0};
    if (!CHECK_OK(t, make(&p, tmp_path("custom.gguf", path, sizeof path), &err), err)) return;
    nm_gguf *g, *v;
    if (!CHECK_OK(t, nm_gguf_open(path, &g, &err), err)) return;
    if (CHECK_OK(t, nm_gguf_open(p.vocab_from, &v, &err), err)) {
        check_layout(t, g, v, "random-custom", 96, 3, 6, 2, 200, 128, NM_TYPE_F32);
        check_values(t, g, 0.05);
        nm_gguf_free(v);
    }
    nm_gguf_free(g);
    /* A preset with one value overridden; kv_heads defaults to heads
     * without a preset. */
    p = t256_params();
    p.layers = 1;
    if (CHECK_OK(t, make(&p, path, &err), err) && CHECK_OK(t, nm_gguf_open(path, &g, &err), err)) {
        if (CHECK_OK(t, nm_gguf_open(p.vocab_from, &v, &err), err)) {
            check_layout(t, g, v, "random-t256", 256, 1, 4, 2, 768, 512, NM_TYPE_F16);
            nm_gguf_free(v);
        }
        nm_gguf_free(g);
    }
    memset(&p, 0, sizeof p);
    p.vocab_from = nm_test_shared("models/stories260K.gguf");
    p.type = NM_TYPE_F16;
    p.dim = 64, p.layers = 1, p.heads = 4, p.ffn = 128;
    uint32_t kvh = 0, ctx = 0;
    if (CHECK_OK(t, make(&p, path, &err), err) && CHECK_OK(t, nm_gguf_open(path, &g, &err), err)) {
        CHECK(t, !nm_gguf_get_u32(g, "llama.attention.head_count_kv", &kvh, NULL) && kvh == 4);
        CHECK(t, !nm_gguf_get_u32(g, "llama.context_length", &ctx, NULL) && ctx == 2048);
        nm_gguf_free(g);
    }
}

static void test_q8_0(nm_test *t) {
    char path[1024];
    nm_new_params p = t256_params();
    p.type = NM_TYPE_Q8_0;
    nm_err err = {0};
    if (!CHECK_OK(t, make(&p, tmp_path("q8.gguf", path, sizeof path), &err), err)) return;
    nm_gguf *g, *v;
    if (!CHECK_OK(t, nm_gguf_open(path, &g, &err), err)) return;
    if (CHECK_OK(t, nm_gguf_open(p.vocab_from, &v, &err), err)) {
        check_layout(t, g, v, "random-t256", 256, 2, 4, 2, 768, 512, NM_TYPE_Q8_0);
        nm_gguf_free(v);
    }
    check_values(t, g, 0.02);
    nm_gguf_free(g);
}

/* Expects status `want` with a message containing `needle`, no file. */
static void expect_error(nm_test *t, const char *what, const nm_new_params *p, nm_status want, const char *needle) {
    char path[1024];
    tmp_path("invalid.gguf", path, sizeof path);
    nm_err err = {0};
    nm_status st = make(p, path, &err);
    CHECKF(t, st == want && strstr(err.msg, needle), "%s: status %d, message '%s'", what, (int)st, err.msg);
    CHECKF(t, !nm_test_file_exists(path), "%s: a file was written", what);
}

static void test_invalid(nm_test *t) {
    nm_new_params p = t256_params();
    p.dim = 250;
    expect_error(t, "heads not dividing dim", &p, NM_ERR_ARG, "does not divide dim");
    p = t256_params();
    p.kv_heads = 3;
    expect_error(t, "kv_heads not dividing heads", &p, NM_ERR_ARG, "does not divide heads");
    p = t256_params();
    p.kv_heads = 8;
    expect_error(t, "more kv heads than heads", &p, NM_ERR_ARG, "kv_heads 8");
    p = t256_params();
    p.heads = 256, p.kv_heads = 1;
    expect_error(t, "odd head size", &p, NM_ERR_ARG, "odd");
    p = t256_params();
    p.layers = -1;
    expect_error(t, "negative layers", &p, NM_ERR_ARG, "layers -1");
    p = t256_params();
    p.dim = (int64_t)1 << 40;
    expect_error(t, "absurd dim", &p, NM_ERR_ARG, "dim");
    p = t256_params();
    p.preset = "t9000";
    expect_error(t, "unknown preset", &p, NM_ERR_ARG, "t9000");
    p = t256_params();
    p.preset = NULL;
    p.dim = 64, p.heads = 4, p.ffn = 128;
    expect_error(t, "no preset, no layers", &p, NM_ERR_ARG, "layers is missing");
    p = t256_params();
    p.type = NM_TYPE_Q4_0;
    p.ffn = 100;
    expect_error(t, "q4_0 with ffn 100", &p, NM_ERR_ARG, "multiples of 32");
    p = t256_params();
    p.type = NM_TYPE_Q6_K;
    expect_error(t, "unsupported type", &p, NM_ERR_ARG, "q6_k");
    p = t256_params();
    p.init_std = -1;
    expect_error(t, "negative std", &p, NM_ERR_ARG, "init_std");
    p = t256_params();
    p.init_std = NAN;
    expect_error(t, "NaN std", &p, NM_ERR_ARG, "init_std");
    p = t256_params();
    p.vocab_from = NULL;
    expect_error(t, "no vocabulary", &p, NM_ERR_ARG, "vocab");
    char missing[1024];
    p.vocab_from = tmp_path("no-such-vocab.gguf", missing, sizeof missing);
    expect_error(t, "missing vocabulary file", &p, NM_ERR_IO, "no-such-vocab.gguf");
    /* A GGUF without tokenizer keys. */
    char novocab[1024];
    tmp_path("novocab.gguf", novocab, sizeof novocab);
    nm_gguf_writer *w = nm_gguf_writer_new(3);
    nm_gguf_writer_set_str(w, "general.architecture", "llama");
    nm_err err = {0};
    CHECK_OK(t, nm_gguf_writer_write(w, novocab, &err), err);
    nm_gguf_writer_free(w);
    p.vocab_from = novocab;
    expect_error(t, "vocabulary file without tokens", &p, NM_ERR_FORMAT, "novocab.gguf");
}

static int run(const char *args, char **out) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", nm_test_bin(), args);
    return nm_test_sh(cmd, out);
}

static void test_cli(nm_test *t) {
    char args[4096], path[1024], lib_path[1024], *out;
    const char *vocab = nm_test_shared("models/stories260K.gguf");
    tmp_path("cli.gguf", path, sizeof path);
    snprintf(args, sizeof args, "new --preset t256 --vocab-from %s --type q8_0 --seed 5 -o %s", vocab, path);
    int rc = run(args, &out);
    CHECKF(t, rc == 0, "-> %d: %s", rc, out);
    free(out);
    /* The tool is a thin layer: the same file as the library call. */
    nm_new_params p = t256_params();
    p.type = NM_TYPE_Q8_0;
    p.seed = 5;
    nm_err err = {0};
    CHECK_OK(t, make(&p, tmp_path("lib.gguf", lib_path, sizeof lib_path), &err), err);
    size_t la, lb;
    char *fa = nm_test_read(path, &la), *fb = nm_test_read(lib_path, &lb);
    CHECK(t, fa && fb && la == lb && memcmp(fa, fb, la) == 0);
    free(fa);
    free(fb);

    snprintf(args, sizeof args, "new --dim 64 --layers 1 --heads 3 --ffn 128 --vocab-from %s -o %s", vocab, path);
    rc = run(args, &out);
    CHECKF(t, rc == 1 && strstr(out, "nomoat: error: ") && strstr(out, "does not divide"), "bad dims -> %d: %s", rc,
           out);
    free(out);
    snprintf(args, sizeof args, "new --preset t256 --vocab-from %s --type q5_k -o %s", vocab, path);
    rc = run(args, &out);
    CHECKF(t, rc == 2 && strstr(out, "q5_k"), "bad type -> %d: %s", rc, out);
    free(out);
    snprintf(args, sizeof args, "new --dim 64 --vocab-from %s -o %s", vocab, path);
    rc = run(args, &out);
    CHECKF(t, rc == 2 && strstr(out, "--preset"), "incomplete dims -> %d: %s", rc, out);
    free(out);
    snprintf(args, sizeof args, "new --preset t256 --dim -3 --vocab-from %s -o %s", vocab, path);
    rc = run(args, &out);
    CHECKF(t, rc == 2 && strstr(out, "--dim"), "negative dim -> %d: %s", rc, out);
    free(out);
    snprintf(args, sizeof args, "new --preset t256 -o %s", path);
    rc = run(args, &out);
    CHECKF(t, rc == 2 && strstr(out, "--vocab-from"), "no vocabulary -> %d: %s", rc, out);
    free(out);
}

int main(void) {
    nm_test_run("t256_layout", test_t256_layout);
    nm_test_run("values_and_seed", test_values_and_seed);
    nm_test_run("custom_dims", test_custom_dims);
    nm_test_run("q8_0", test_q8_0);
    nm_test_run("invalid", test_invalid);
    nm_test_run("cli", test_cli);
    return nm_test_finish();
}
