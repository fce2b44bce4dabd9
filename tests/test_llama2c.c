/* test_llama2c.c - llama2.c checkpoint import.
 *
 * External truth: shared/models/stories260K.gguf, made by llama.cpp's
 * convert-llama2c-to-ggml from the same stories260K.bin + tok512.bin.  The
 * import must equal it key by key (type and encoded value) and tensor by
 * tensor (exact bytes: the conversion is a copy of float32 values, so there
 * is nothing to round).  Hostile checkpoints and tokenizers must fail with
 * NM_ERR_FORMAT and a message naming the file, leaving no output behind. */
#include "testlib.h"

#include <string.h>
#include <unistd.h>

/* Path of name in the test's temporary folder (one of 4 rotating buffers:
 * copy it if it must outlive the next few calls). */
static const char *tmp_path(const char *name) {
    static char bufs[4][1024];
    static int slot;
    char *b = bufs[slot++ & 3];
    snprintf(b, 1024, "%s/%s", nm_test_tmpdir(), name);
    return b;
}

static bool write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static char *read_shared(const char *rel, size_t *len) { return nm_test_read(nm_test_shared(rel), len); }

/* Every key (name, type, encoded value) and every tensor (name, type,
 * shape, bytes) of a equals b, in the same order. */
static void check_same_gguf(nm_test *t, const nm_gguf *a, const nm_gguf *b) {
    CHECKF(t, nm_gguf_n_kv(a) == nm_gguf_n_kv(b), "%lld keys, reference has %lld", (long long)nm_gguf_n_kv(a),
           (long long)nm_gguf_n_kv(b));
    for (int64_t i = 0; i < nm_gguf_n_kv(b); i++) {
        nm_str kb = nm_gguf_key(b, i);
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)kb.len, kb.ptr);
        int64_t j = nm_gguf_find_key(a, key);
        if (!CHECKF(t, j == i, "key %s at %lld, reference has it at %lld", key, (long long)j, (long long)i)) continue;
        CHECKF(t, nm_gguf_kv_type(a, j) == nm_gguf_kv_type(b, i), "key %s: type %d, reference %d", key,
               (int)nm_gguf_kv_type(a, j), (int)nm_gguf_kv_type(b, i));
        size_t la, lb;
        const void *ra = nm_gguf_kv_raw(a, j, &la), *rb = nm_gguf_kv_raw(b, i, &lb);
        CHECKF(t, la == lb && memcmp(ra, rb, lb) == 0, "key %s: value differs from the reference", key);
    }
    CHECKF(t, nm_gguf_n_tensors(a) == nm_gguf_n_tensors(b), "%lld tensors, reference has %lld",
           (long long)nm_gguf_n_tensors(a), (long long)nm_gguf_n_tensors(b));
    for (int64_t i = 0; i < nm_gguf_n_tensors(b) && i < nm_gguf_n_tensors(a); i++) {
        const nm_gguf_tensor *x = nm_gguf_tensor_at(a, i), *y = nm_gguf_tensor_at(b, i);
        CHECKF(t, strcmp(x->name, y->name) == 0, "tensor %lld: %s, reference %s", (long long)i, x->name, y->name);
        CHECKF(t, x->type == y->type && x->n_dims == y->n_dims && !memcmp(x->ne, y->ne, sizeof x->ne),
               "tensor %s: type or shape differs", y->name);
        CHECKF(t, x->nbytes == y->nbytes && memcmp(x->data, y->data, y->nbytes) == 0,
               "tensor %s: values differ from the reference", y->name);
    }
}

static void test_import_matches_llama_cpp(nm_test *t) {
    const char *out = tmp_path("stories260K.gguf");
    nm_err err = {0};
    nm_status st = nm_llama2c_to_gguf(nm_test_shared("models/stories260K.bin"), nm_test_shared("models/tok512.bin"),
                                      out, NULL, &err);
    if (!CHECK_OK(t, st, err)) return;
    nm_gguf *a, *b;
    st = nm_gguf_open(out, &a, &err);
    if (!CHECK_OK(t, st, err)) return;
    st = nm_gguf_open(nm_test_shared("models/stories260K.gguf"), &b, &err);
    if (CHECK_OK(t, st, err)) {
        check_same_gguf(t, a, b);
        /* Spelled out, what the comparison above covers for the vocabulary:
         * llama.cpp's conventions for a llama2.c tokenizer. */
        int64_t k = nm_gguf_find_key(a, "tokenizer.ggml.tokens");
        nm_str s1 = nm_gguf_arr_str(a, k, 1), s259 = nm_gguf_arr_str(a, k, 259);
        CHECK(t, s1.len == 3 && !memcmp(s1.ptr, "<s>", 3));                      /* was "\n<s>\n"   */
        CHECK(t, s259.len == 4 && !memcmp(s259.ptr, "\xe2\x96\x81t", 4));        /* was " t"        */
        int64_t kt = nm_gguf_find_key(a, "tokenizer.ggml.token_type");
        int32_t types[512];
        if (CHECK(t, nm_gguf_arr_n(a, kt) == 512)) {
            memcpy(types, nm_gguf_arr_data(a, kt), sizeof types);
            int n_byte = 0;
            for (int i = 3; i < 259; i++) n_byte += types[i] == 6;
            CHECK(t, types[0] == 2 && types[1] == 3 && types[2] == 3 && n_byte == 256 && types[259] == 1);
        }
        uint32_t bos = 0, eos = 0;
        CHECK(t, !nm_gguf_get_u32(a, "tokenizer.ggml.bos_token_id", &bos, NULL) && bos == 1);
        CHECK(t, !nm_gguf_get_u32(a, "tokenizer.ggml.eos_token_id", &eos, NULL) && eos == 2);
        nm_gguf_free(b);
    }
    nm_gguf_free(a);
    /* Same keys, same tensors, same order and layout: the same bytes. */
    size_t la, lb;
    char *fa = nm_test_read(out, &la), *fb = read_shared("models/stories260K.gguf", &lb);
    CHECK(t, fa && fb && la == lb && memcmp(fa, fb, la) == 0);
    free(fa);
    free(fb);
}

/* A checkpoint with its own classifier (negative vocab_size): output.weight
 * comes from the trailing wcls array, not from the embedding. */
static void test_separate_classifier(nm_test *t) {
    size_t n;
    char *bin = read_shared("models/stories260K.bin", &n);
    if (!CHECK(t, bin)) return;
    int32_t vocab;
    memcpy(&vocab, bin + 20, 4);
    size_t cls_floats = (size_t)vocab * 64;
    char *big = malloc(n + cls_floats * 4);
    memcpy(big, bin, n);
    int32_t neg = -vocab;
    memcpy(big + 20, &neg, 4);
    float *cls = (float *)(big + n);
    for (size_t i = 0; i < cls_floats; i++) cls[i] = (float)i * 0.25f - 3.0f;
    const char *ckpt = tmp_path("sep.bin"), *out = tmp_path("sep.gguf");
    CHECK(t, write_file(ckpt, big, n + cls_floats * 4));
    nm_err err = {0};
    nm_status st = nm_llama2c_to_gguf(ckpt, nm_test_shared("models/tok512.bin"), out, NULL, &err);
    nm_gguf *g = NULL;
    if (CHECK_OK(t, st, err) && CHECK_OK(t, nm_gguf_open(out, &g, &err), err)) {
        const nm_gguf_tensor *o = nm_gguf_find_tensor(g, "output.weight");
        const nm_gguf_tensor *e = nm_gguf_find_tensor(g, "token_embd.weight");
        CHECK(t, o && o->nbytes == cls_floats * 4 && memcmp(o->data, cls, o->nbytes) == 0);
        CHECK(t, e && e->nbytes == cls_floats * 4 && memcmp(e->data, bin + 28, e->nbytes) == 0);
        nm_gguf_free(g);
    }
    free(big);
    free(bin);
}

/* Expects a FORMAT error naming `named` and no output file. */
static void expect_format_error(nm_test *t, const char *what, const char *ckpt, const char *tok, const char *named) {
    char out[1024]; /* not from tmp_path(): its few slots may hold ckpt or tok */
    snprintf(out, sizeof out, "%s/hostile.gguf", nm_test_tmpdir());
    unlink(out);
    nm_err err = {0};
    nm_status st = nm_llama2c_to_gguf(ckpt, tok, out, NULL, &err);
    CHECKF(t, st == NM_ERR_FORMAT, "%s: status %d (%s)", what, (int)st, err.msg);
    CHECKF(t, strstr(err.msg, named) != NULL, "%s: message does not name the file: %s", what, err.msg);
    CHECKF(t, !nm_test_file_exists(out), "%s: output written", what);
}

/* The real checkpoint with header field `field` replaced (size unchanged). */
static void hostile_header(nm_test *t, const char *what, int field, int32_t value) {
    size_t n;
    char *bin = read_shared("models/stories260K.bin", &n);
    if (!CHECK(t, bin)) return;
    memcpy(bin + 4 * field, &value, 4);
    const char *p = tmp_path("hostile.bin");
    CHECK(t, write_file(p, bin, n));
    expect_format_error(t, what, p, nm_test_shared("models/tok512.bin"), p);
    free(bin);
}

static void test_hostile_checkpoints(nm_test *t) {
    const char *tok = nm_test_shared("models/tok512.bin");
    size_t n;
    char *bin = read_shared("models/stories260K.bin", &n);
    if (!CHECK(t, bin)) return;
    const char *p = tmp_path("hostile.bin");
    CHECK(t, write_file(p, bin, 0));
    expect_format_error(t, "empty file", p, tok, p);
    CHECK(t, write_file(p, bin, 10));
    expect_format_error(t, "truncated header", p, tok, p);
    CHECK(t, write_file(p, bin, n - 100));
    expect_format_error(t, "truncated weights", p, tok, p);
    char *longer = calloc(1, n + 4);
    memcpy(longer, bin, n);
    CHECK(t, write_file(p, longer, n + 4));
    expect_format_error(t, "trailing bytes", p, tok, p);
    free(longer);
    free(bin);
    /* header: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab, seq_len */
    hostile_header(t, "dim 0", 0, 0);
    hostile_header(t, "negative dim", 0, -64);
    hostile_header(t, "n_heads 0", 3, 0);
    hostile_header(t, "n_heads not dividing dim", 3, 7);
    hostile_header(t, "n_kv_heads not dividing n_heads", 4, 3);
    hostile_header(t, "more kv heads than heads", 4, 16);
    hostile_header(t, "n_kv_heads 0", 4, 0);
    hostile_header(t, "odd head size", 3, 64);
    hostile_header(t, "n_layers negative", 2, -5);
    hostile_header(t, "vocab INT32_MIN", 5, INT32_MIN);
    hostile_header(t, "vocab 0", 5, 0);
    hostile_header(t, "seq_len 0", 6, 0);
    hostile_header(t, "seq_len huge", 6, INT32_MAX);
    hostile_header(t, "hidden_dim changed", 1, 173);
    /* Products that overflow 64 bits: a 28-byte file claiming 2^72 floats. */
    int32_t h[7] = {1 << 24, 1 << 24, 1 << 24, 1 << 4, 1 << 4, 512, 512};
    CHECK(t, write_file(p, h, sizeof h));
    expect_format_error(t, "overflowing dimensions", p, tok, p);
    int32_t h2[7] = {INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX};
    CHECK(t, write_file(p, h2, sizeof h2));
    expect_format_error(t, "all INT32_MAX", p, tok, p);
    /* A later llama2.c export (magic "ak42", version 1): valid, not ours. */
    uint32_t v1[64] = {0x616b3432u, 1, 64, 172, 5, 8, 4, 512, 512};
    CHECK(t, write_file(p, v1, sizeof v1));
    nm_err err = {0};
    nm_status st = nm_llama2c_to_gguf(p, tok, tmp_path("v1.gguf"), NULL, &err);
    CHECKF(t, st == NM_ERR_UNSUPPORTED && strstr(err.msg, p) && strstr(err.msg, "version 1"), "v1 export: %d %s",
           (int)st, err.msg);
}

/* tok512.bin with a change; the checkpoint is the real one. */
static void test_hostile_tokenizers(nm_test *t) {
    const char *ckpt = nm_test_shared("models/stories260K.bin");
    size_t n;
    char *tok = read_shared("models/tok512.bin", &n);
    if (!CHECK(t, tok)) return;
    const char *p = tmp_path("hostile-tok.bin");
    /* Offsets of the records of tokens 0..3: max_len, then (score, len, bytes). */
    size_t off[4];
    size_t pos = 4;
    for (int i = 0; i < 4; i++) {
        off[i] = pos;
        int32_t len;
        memcpy(&len, tok + pos + 4, 4);
        pos += 8 + (size_t)len;
    }
    CHECK(t, write_file(p, tok, 2));
    expect_format_error(t, "2-byte tokenizer", p, ckpt, p);
    CHECK(t, write_file(p, tok, n - 3));
    expect_format_error(t, "last token cut short", p, ckpt, p);
    CHECK(t, write_file(p, tok, off[3]));
    expect_format_error(t, "3 tokens for a 512-token model", p, ckpt, p);
    /* one token too many: the vocabularies do not match */
    char *more = malloc(n + 9);
    memcpy(more, tok, n);
    memcpy(more + n, "\0\0\0\0\1\0\0\0x", 9);
    CHECK(t, write_file(p, more, n + 9));
    expect_format_error(t, "513 tokens for a 512-token model", p, ckpt, p);
    free(more);

    char *bad = malloc(n);
    int32_t v;
    memcpy(bad, tok, n);
    v = 1 << 30; /* length past the end */
    memcpy(bad + off[3] + 4, &v, 4);
    v = 1 << 30;
    memcpy(bad, &v, 4); /* ... even with a matching max_token_length */
    CHECK(t, write_file(p, bad, n));
    expect_format_error(t, "token length past the end", p, ckpt, p);
    memcpy(bad, tok, n);
    v = -1;
    memcpy(bad + off[3] + 4, &v, 4);
    CHECK(t, write_file(p, bad, n));
    expect_format_error(t, "negative token length", p, ckpt, p);
    memcpy(bad, tok, n);
    v = 0;
    memcpy(bad, &v, 4);
    CHECK(t, write_file(p, bad, n));
    expect_format_error(t, "max_token_length 0", p, ckpt, p);
    memcpy(bad, tok, n);
    v = 2; /* "<0x00>" is longer than the declared maximum */
    memcpy(bad, &v, 4);
    CHECK(t, write_file(p, bad, n));
    expect_format_error(t, "token longer than max_token_length", p, ckpt, p);
    memcpy(bad, tok, n);
    bad[off[3] + 8 + 2] = 0; /* "<0\0..." */
    CHECK(t, write_file(p, bad, n));
    expect_format_error(t, "NUL inside a token", p, ckpt, p);
    free(bad);
    free(tok);

    nm_err err = {0};
    nm_status st = nm_llama2c_to_gguf(ckpt, tmp_path("does-not-exist.bin"), tmp_path("x.gguf"), NULL, &err);
    CHECKF(t, st == NM_ERR_IO && strstr(err.msg, "does-not-exist.bin"), "missing tokenizer: %d %s", (int)st, err.msg);
}

static int run(const char *args, char **out) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", nm_test_bin(), args);
    return nm_test_sh(cmd, out);
}

static void test_cli(nm_test *t) {
    char args[4096], *out;
    const char *dst = tmp_path("cli.gguf");
    snprintf(args, sizeof args, "convert %s --tokenizer %s -o %s", nm_test_shared("models/stories260K.bin"),
             nm_test_shared("models/tok512.bin"), dst);
    int rc = run(args, &out);
    CHECKF(t, rc == 0, "convert -> %d: %s", rc, out);
    free(out);
    size_t la, lb;
    char *fa = nm_test_read(dst, &la), *fb = read_shared("models/stories260K.gguf", &lb);
    CHECK(t, fa && fb && la == lb && memcmp(fa, fb, la) == 0);
    free(fa);
    free(fb);

    /* A checkpoint cut short: exit 1, one clear line naming the file. */
    size_t n;
    char *bin = read_shared("models/stories260K.bin", &n);
    const char *bad = tmp_path("cut.bin");
    CHECK(t, bin && write_file(bad, bin, n / 2));
    free(bin);
    snprintf(args, sizeof args, "convert %s --tokenizer %s -o %s", bad, nm_test_shared("models/tok512.bin"),
             tmp_path("cut.gguf"));
    rc = run(args, &out);
    CHECKF(t, rc == 1 && strstr(out, "nomoat: error: ") && strstr(out, bad) && strstr(out, "truncated"),
           "bad checkpoint -> %d: %s", rc, out);
    free(out);
    CHECK(t, !nm_test_file_exists(tmp_path("cut.gguf")));
    /* Without a tokenizer: a usage error. */
    snprintf(args, sizeof args, "convert %s -o %s", nm_test_shared("models/stories260K.bin"), tmp_path("x.gguf"));
    rc = run(args, &out);
    CHECKF(t, rc == 2 && strstr(out, "--tokenizer"), "missing --tokenizer -> %d: %s", rc, out);
    free(out);
}

int main(void) {
    nm_test_run("import_matches_llama_cpp", test_import_matches_llama_cpp);
    nm_test_run("separate_classifier", test_separate_classifier);
    nm_test_run("hostile_checkpoints", test_hostile_checkpoints);
    nm_test_run("hostile_tokenizers", test_hostile_tokenizers);
    nm_test_run("cli", test_cli);
    return nm_test_finish();
}
