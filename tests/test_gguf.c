/* test_gguf.c - GGUF reader and writer: byte-identical round trips of every
 * shared file, typed getters, the writer's layout rules, and hostile files
 * (each must fail with a clear message, never crash or leak). */
#include "testlib.h"
#include "base/base.h"

#include <dirent.h>
#include <string.h>

/* ---- a tiny GGUF builder for crafted files ---- */

static void put_str(nm_buf *b, const char *s) {
    nm_buf_push_u64(b, strlen(s));
    nm_buf_push(b, s, strlen(s));
}

/* A small valid file: 4 keys, 2 tensors (f32 [4], q8_0 [32 x 2]).  Returns
 * the offset where the last tensor's data ends (only padding follows). */
static size_t build_valid(nm_buf *b) {
    nm_buf_init(b);
    nm_buf_push(b, "GGUF", 4);
    nm_buf_push_u32(b, 3);
    nm_buf_push_u64(b, 2); /* tensors */
    nm_buf_push_u64(b, 4); /* kv */
    put_str(b, "general.architecture");
    nm_buf_push_u32(b, NM_GGUF_STRING);
    put_str(b, "llama");
    put_str(b, "llama.block_count");
    nm_buf_push_u32(b, NM_GGUF_UINT32);
    nm_buf_push_u32(b, 5);
    put_str(b, "llama.other_count");
    nm_buf_push_u32(b, NM_GGUF_UINT32);
    nm_buf_push_u32(b, 6);
    put_str(b, "tokenizer.ggml.tokens");
    nm_buf_push_u32(b, NM_GGUF_ARRAY);
    nm_buf_push_u32(b, NM_GGUF_STRING);
    nm_buf_push_u64(b, 2);
    put_str(b, "a");
    put_str(b, "bc");
    put_str(b, "aa.weight");
    nm_buf_push_u32(b, 1);
    nm_buf_push_u64(b, 4);
    nm_buf_push_u32(b, NM_TYPE_F32);
    nm_buf_push_u64(b, 0);
    put_str(b, "bb.weight");
    nm_buf_push_u32(b, 2);
    nm_buf_push_u64(b, 32);
    nm_buf_push_u64(b, 2);
    nm_buf_push_u32(b, NM_TYPE_Q8_0);
    nm_buf_push_u64(b, 32);
    while (b->len % 32) nm_buf_push(b, "", 1);
    float f[8] = {1, 2, 3, 4, 0, 0, 0, 0};
    nm_buf_push(b, f, sizeof f); /* 16 bytes + 16 padding */
    uint8_t q[68] = {0};
    nm_buf_push(b, q, sizeof q);
    size_t end = b->len;
    while (b->len % 32) nm_buf_push(b, "", 1);
    return end;
}

static nm_status open_buf(nm_buf *b, nm_gguf **g, nm_err *err) {
    return nm_gguf_open_buffer(b->data, b->len, "crafted.gguf", g, err);
}

static void test_crafted_valid(nm_test *t) {
    nm_buf b;
    build_valid(&b);
    nm_gguf *g;
    nm_err err = {0};
    nm_status st = open_buf(&b, &g, &err);
    if (!CHECK_OK(t, st, err)) {
        nm_buf_deinit(&b);
        return;
    }
    CHECK(t, nm_gguf_n_kv(g) == 4);
    CHECK(t, nm_gguf_n_tensors(g) == 2);
    uint32_t v = 0;
    CHECK(t, nm_gguf_get_u32(g, "llama.block_count", &v, &err) == NM_OK && v == 5);
    uint64_t v64 = 0;
    CHECK(t, nm_gguf_get_u64(g, "llama.block_count", &v64, &err) == NM_OK && v64 == 5);
    nm_str s;
    CHECK(t, nm_gguf_get_str(g, "general.architecture", &s, &err) == NM_OK && s.len == 5 && !memcmp(s.ptr, "llama", 5));
    CHECK(t, nm_gguf_get_str(g, "llama.block_count", &s, &err) == NM_ERR_FORMAT);
    CHECK(t, nm_gguf_get_u32(g, "nope", &v, &err) == NM_ERR_NOT_FOUND);
    CHECK(t, strstr(err.msg, "nope") != NULL);
    int64_t ti = nm_gguf_find_key(g, "tokenizer.ggml.tokens");
    CHECK(t, nm_gguf_arr_n(g, ti) == 2);
    nm_str s1 = nm_gguf_arr_str(g, ti, 1);
    CHECK(t, s1.len == 2 && !memcmp(s1.ptr, "bc", 2));
    CHECK(t, nm_gguf_arr_str(g, ti, 7).len == 0); /* out of range: empty, no crash */
    const nm_gguf_tensor *w = nm_gguf_find_tensor(g, "bb.weight");
    CHECK(t, w && w->nbytes == 68 && w->ne[0] == 32 && w->ne[1] == 2 && w->ne[2] == 1);
    const nm_gguf_tensor *n = nm_gguf_find_tensor(g, "aa.weight");
    float f[4];
    memcpy(f, n->data, 16);
    CHECK(t, f[0] == 1 && f[3] == 4);
    nm_gguf_free(g);
    nm_buf_deinit(&b);
}

/* Every strict prefix of a valid file is a truncated file: each must be
 * rejected (the data section is needed too), with a message. */
static void test_every_truncation(nm_test *t) {
    nm_buf b;
    size_t end = build_valid(&b);
    for (size_t n = 0; n < end; n++) {
        /* copy into an exact-size allocation so ASan sees any overread */
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, b.data, n);
        nm_gguf *g = NULL;
        nm_err err = {0};
        nm_status st = nm_gguf_open_buffer(p, n, "cut.gguf", &g, &err);
        bool ok = st != NM_OK && g == NULL && strstr(err.msg, "cut.gguf") != NULL;
        /* Only the trailing padding of the last tensor may be cut without
         * changing meaning; the data itself may not. */
        if (!CHECKF(t, ok, "prefix of %zu bytes: status %d msg '%s'", n, st, err.msg)) {
            nm_gguf_free(g);
            free(p);
            break;
        }
        free(p);
    }
    nm_buf_deinit(&b);
}

typedef void (*mutate_fn)(nm_buf *b);

/* Applies fn to a fresh valid file and expects a failure mentioning `want`. */
static void expect_reject(nm_test *t, const char *label, mutate_fn fn, nm_status code, const char *want) {
    nm_buf b;
    build_valid(&b);
    fn(&b);
    nm_gguf *g = NULL;
    nm_err err = {0};
    nm_status st = open_buf(&b, &g, &err);
    CHECKF(t, st == code, "%s: status %d (want %d), msg '%s'", label, st, code, err.msg);
    CHECKF(t, strstr(err.msg, want) != NULL, "%s: message '%s' lacks '%s'", label, err.msg, want);
    CHECKF(t, strstr(err.msg, "crafted.gguf") != NULL, "%s: message '%s' does not name the file", label, err.msg);
    nm_gguf_free(g);
    nm_buf_deinit(&b);
}

/* Offsets inside build_valid's layout. */
#define OFF_VERSION 4
#define OFF_NT 8
#define OFF_NKV 16
static size_t find(nm_buf *b, const char *s) {
    size_t n = strlen(s);
    for (size_t i = 0; i + n <= b->len; i++)
        if (!memcmp(b->data + i, s, n)) return i;
    return 0;
}
static void wr32(nm_buf *b, size_t off, uint32_t v) { memcpy(b->data + off, &v, 4); }
static void wr64(nm_buf *b, size_t off, uint64_t v) { memcpy(b->data + off, &v, 8); }

static void m_magic(nm_buf *b) { b->data[0] = 'X'; }
static void m_v1(nm_buf *b) { wr32(b, OFF_VERSION, 1); }
static void m_v99(nm_buf *b) { wr32(b, OFF_VERSION, 99); }
static void m_bigendian(nm_buf *b) { wr32(b, OFF_VERSION, 0x03000000); }
static void m_nt_huge(nm_buf *b) { wr64(b, OFF_NT, 1ULL << 60); }
static void m_nkv_huge(nm_buf *b) { wr64(b, OFF_NKV, UINT64_MAX); }
static void m_keylen(nm_buf *b) { wr64(b, 24, UINT64_MAX - 3); }
static void m_strlen(nm_buf *b) { wr64(b, find(b, "llama\x11") - 8 + 0, 1ULL << 40); }
static void m_valtype(nm_buf *b) { wr32(b, find(b, "llama.block_count") + 17, 77); }
static void m_arrcount(nm_buf *b) { wr64(b, find(b, "tokenizer.ggml.tokens") + 21 + 4 + 4, 1ULL << 62); }
static void m_dims0(nm_buf *b) { wr32(b, find(b, "aa.weight") + 9, 0); }
static void m_dims5(nm_buf *b) { wr32(b, find(b, "aa.weight") + 9, 5); }
static void m_ne_overflow(nm_buf *b) {
    size_t o = find(b, "bb.weight") + 9 + 4;
    wr64(b, o, 1ULL << 40);
    wr64(b, o + 8, 1ULL << 40);
}
static void m_ne_negative(nm_buf *b) { wr64(b, find(b, "bb.weight") + 13 + 8, (uint64_t)-2); }
static void m_type(nm_buf *b) { wr32(b, find(b, "aa.weight") + 9 + 4 + 8, 1234); }
static void m_block(nm_buf *b) { wr64(b, find(b, "bb.weight") + 13, 31); }
static void m_unaligned(nm_buf *b) { wr64(b, find(b, "bb.weight") + 13 + 16 + 4, 33); }
static void m_outside(nm_buf *b) { wr64(b, find(b, "bb.weight") + 13 + 16 + 4, 1ULL << 50); }
static void m_offset_wrap(nm_buf *b) { wr64(b, find(b, "bb.weight") + 13 + 16 + 4, UINT64_MAX - 31); }
static void m_overlap(nm_buf *b) { wr64(b, find(b, "bb.weight") + 13 + 16 + 4, 0); }
static void m_dupkey(nm_buf *b) { memcpy(b->data + find(b, "llama.other_count"), "llama.block_count", 17); }
static void m_dupname(nm_buf *b) { memcpy(b->data + find(b, "bb.weight"), "aa", 2); }

static void test_hostile(nm_test *t) {
    expect_reject(t, "magic", m_magic, NM_ERR_FORMAT, "not a GGUF");
    expect_reject(t, "v1", m_v1, NM_ERR_UNSUPPORTED, "version 1");
    expect_reject(t, "v99", m_v99, NM_ERR_UNSUPPORTED, "version 99");
    expect_reject(t, "big-endian", m_bigendian, NM_ERR_UNSUPPORTED, "big-endian");
    expect_reject(t, "tensor count", m_nt_huge, NM_ERR_FORMAT, "tensor count");
    expect_reject(t, "kv count", m_nkv_huge, NM_ERR_FORMAT, "metadata count");
    expect_reject(t, "key length", m_keylen, NM_ERR_FORMAT, "past the end");
    expect_reject(t, "string length", m_strlen, NM_ERR_FORMAT, "past the end");
    expect_reject(t, "value type", m_valtype, NM_ERR_FORMAT, "unknown value type");
    expect_reject(t, "array count", m_arrcount, NM_ERR_FORMAT, "array count");
    expect_reject(t, "0 dims", m_dims0, NM_ERR_FORMAT, "dimensions");
    expect_reject(t, "5 dims", m_dims5, NM_ERR_FORMAT, "dimensions");
    expect_reject(t, "dims overflow", m_ne_overflow, NM_ERR_FORMAT, "overflow");
    expect_reject(t, "negative dim", m_ne_negative, NM_ERR_FORMAT, "overflow");
    expect_reject(t, "type id", m_type, NM_ERR_UNSUPPORTED, "unknown tensor type id 1234");
    expect_reject(t, "block size", m_block, NM_ERR_FORMAT, "block size");
    expect_reject(t, "unaligned", m_unaligned, NM_ERR_FORMAT, "not aligned");
    expect_reject(t, "outside", m_outside, NM_ERR_FORMAT, "outside the data section");
    expect_reject(t, "offset wraps", m_offset_wrap, NM_ERR_FORMAT, "outside the data section");
    expect_reject(t, "overlap", m_overlap, NM_ERR_FORMAT, "overlap");
    expect_reject(t, "duplicate key", m_dupkey, NM_ERR_FORMAT, "duplicate key");
    expect_reject(t, "duplicate name", m_dupname, NM_ERR_FORMAT, "duplicate tensor name");
}

static void test_nested_arrays(nm_test *t) {
    /* depth 3 nesting is fine; depth 9 is rejected */
    for (int depth = 3; depth <= 9; depth += 6) {
        nm_buf b;
        nm_buf_init(&b);
        nm_buf_push(&b, "GGUF", 4);
        nm_buf_push_u32(&b, 2);
        nm_buf_push_u64(&b, 0);
        nm_buf_push_u64(&b, 1);
        put_str(&b, "nest");
        nm_buf_push_u32(&b, NM_GGUF_ARRAY);
        for (int d = 0; d < depth; d++) {
            nm_buf_push_u32(&b, d + 1 < depth ? NM_GGUF_ARRAY : NM_GGUF_INT16);
            nm_buf_push_u64(&b, 1);
        }
        nm_buf_push(&b, "\x01\x00", 2);
        nm_gguf *g = NULL;
        nm_err err = {0};
        nm_status st = open_buf(&b, &g, &err);
        if (depth == 3) {
            CHECK_OK(t, st, err);
            if (g) CHECK(t, nm_gguf_arr_type(g, 0) == NM_GGUF_ARRAY && nm_gguf_arr_n(g, 0) == 1);
        } else {
            CHECKF(t, st == NM_ERR_FORMAT && strstr(err.msg, "nested"), "depth %d: %s", depth, err.msg);
        }
        nm_gguf_free(g);
        nm_buf_deinit(&b);
    }
}

static void test_bad_alignment(nm_test *t) {
    for (int k = 0; k < 2; k++) {
        nm_buf b;
        nm_buf_init(&b);
        nm_buf_push(&b, "GGUF", 4);
        nm_buf_push_u32(&b, 3);
        nm_buf_push_u64(&b, 0);
        nm_buf_push_u64(&b, 1);
        put_str(&b, "general.alignment");
        nm_buf_push_u32(&b, k == 0 ? NM_GGUF_UINT32 : NM_GGUF_UINT64);
        if (k == 0) nm_buf_push_u32(&b, 24);
        else nm_buf_push_u64(&b, 32);
        nm_gguf *g = NULL;
        nm_err err = {0};
        nm_status st = open_buf(&b, &g, &err);
        CHECKF(t, st == NM_ERR_FORMAT && strstr(err.msg, "alignment"), "case %d: %s", k, err.msg);
        nm_gguf_free(g);
        nm_buf_deinit(&b);
    }
}

static void test_open_errors(nm_test *t) {
    nm_gguf *g = NULL;
    nm_err err = {0};
    CHECK(t, nm_gguf_open("/nonexistent/x.gguf", &g, &err) == NM_ERR_IO && g == NULL);
    CHECK(t, strstr(err.msg, "/nonexistent/x.gguf") != NULL);
    CHECK(t, nm_gguf_open("/tmp", &g, &err) == NM_ERR_IO);
    char path[512];
    snprintf(path, sizeof path, "%s/empty.gguf", nm_test_tmpdir());
    FILE *f = fopen(path, "wb");
    fclose(f);
    CHECK(t, nm_gguf_open(path, &g, &err) == NM_ERR_FORMAT && strstr(err.msg, "empty"));
    /* the same through the read-into-memory path (nm_model_load's for models that fit) */
    CHECK(t, nm_gguf_open_read("/nonexistent/x.gguf", &g, &err) == NM_ERR_IO && g == NULL);
    CHECK(t, strstr(err.msg, "/nonexistent/x.gguf") != NULL);
    CHECK(t, nm_gguf_open_read("/tmp", &g, &err) == NM_ERR_IO && g == NULL);
    CHECK(t, nm_gguf_open_read(path, &g, &err) == NM_ERR_FORMAT && strstr(err.msg, "empty") && g == NULL);
    /* a truncated model read into memory is refused like a mapped one */
    size_t n = 0;
    char *model = nm_test_read(nm_test_shared("models/t256-q4_0.gguf"), &n);
    if (CHECK(t, model && n > 4096)) {
        snprintf(path, sizeof path, "%s/cut.gguf", nm_test_tmpdir());
        f = fopen(path, "wb");
        fwrite(model, 1, n - 1000, f);
        fclose(f);
        nm_status a = nm_gguf_open(path, &g, &err), b = nm_gguf_open_read(path, &g, &err);
        CHECK(t, a != NM_OK && b == a && g == NULL);
    }
    free(model);
    /* a valid file: the same tensors, the same bytes */
    nm_gguf *gm = NULL, *gr = NULL;
    const char *ok = nm_test_shared("models/t256-q4_0.gguf");
    if (CHECK_OK(t, nm_gguf_open(ok, &gm, &err), err) && CHECK_OK(t, nm_gguf_open_read(ok, &gr, &err), err)) {
        CHECK(t, nm_gguf_n_tensors(gm) == nm_gguf_n_tensors(gr) && nm_gguf_n_tensors(gr) > 0);
        for (int64_t i = 0; i < nm_gguf_n_tensors(gr); i++) {
            const nm_gguf_tensor *x = nm_gguf_tensor_at(gm, i), *y = nm_gguf_tensor_at(gr, i);
            CHECKF(t, x->nbytes == y->nbytes && memcmp(x->data, y->data, (size_t)x->nbytes) == 0, "tensor %lld differs",
                   (long long)i);
        }
    }
    nm_gguf_free(gm);
    nm_gguf_free(gr);
}

/* Re-writing every shared GGUF through the public writer gives the same bytes. */
static void roundtrip_dir(nm_test *t, const char *dir, int *count) {
    DIR *d = opendir(nm_test_shared(dir));
    if (!CHECKF(t, d != NULL, "cannot open %s", nm_test_shared(dir))) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 5, ".gguf") != 0) continue;
        char rel[512], out[512];
        snprintf(rel, sizeof rel, "%s/%s", dir, e->d_name);
        snprintf(out, sizeof out, "%s/rt-%s", nm_test_tmpdir(), e->d_name);
        const char *in = nm_test_shared(rel);
        nm_gguf *g;
        nm_err err = {0};
        nm_status st = nm_gguf_open(in, &g, &err);
        if (!CHECK_OK(t, st, err)) continue;
        nm_gguf_writer *w;
        st = nm_gguf_writer_from(g, &w, &err);
        if (CHECK_OK(t, st, err)) {
            st = nm_gguf_writer_write(w, out, &err);
            CHECK_OK(t, st, err);
            nm_gguf_writer_free(w);
            size_t la, lb;
            char *a = nm_test_read(in, &la), *b = nm_test_read(out, &lb);
            CHECKF(t, a && b && la == lb && memcmp(a, b, la) == 0, "%s: round trip differs (%zu vs %zu bytes)",
                   e->d_name, la, lb);
            free(a);
            free(b);
            (*count)++;
        }
        nm_gguf_free(g);
    }
    closedir(d);
}

static void test_roundtrip_shared(nm_test *t) {
    int count = 0;
    roundtrip_dir(t, "models", &count);
    roundtrip_dir(t, "vocab", &count);
    CHECKF(t, count >= 14, "only %d shared GGUF files round-tripped", count);
}

static void test_writer(nm_test *t) {
    nm_gguf_writer *w = nm_gguf_writer_new(3);
    nm_err err = {0};
    nm_gguf_writer_set_str(w, "a.str", "hello");
    nm_gguf_writer_set_u32(w, "a.u32", 7);
    nm_gguf_writer_set_f32(w, "a.f32", 0.5f);
    nm_gguf_writer_set_bool(w, "a.bool", true);
    nm_gguf_writer_set_i64(w, "a.i64", -5);
    nm_gguf_writer_set_u32(w, "general.alignment", 64);
    const char *strs[] = {"x", "", "yz"};
    nm_gguf_writer_set_arr_str(w, "a.strs", strs, 3);
    int32_t ints[] = {1, -2, 3};
    nm_gguf_writer_set_arr(w, "a.ints", NM_GGUF_INT32, ints, 3);
    nm_gguf_writer_set_u32(w, "a.u32", 9); /* replace keeps position */
    nm_gguf_writer_set_str(w, "gone", "x");
    CHECK(t, nm_gguf_writer_remove(w, "gone") == NM_OK);
    CHECK(t, nm_gguf_writer_remove(w, "gone") == NM_ERR_NOT_FOUND);
    float d1[3] = {1, 2, 3};
    int64_t ne1[1] = {3};
    CHECK_OK(t, nm_gguf_writer_add_tensor(w, "t1", NM_TYPE_F32, 1, ne1, d1, 12, &err), err);
    CHECK(t, nm_gguf_writer_add_tensor(w, "t1", NM_TYPE_F32, 1, ne1, d1, 12, &err) == NM_ERR_ARG);
    CHECK(t, nm_gguf_writer_add_tensor(w, "t2", NM_TYPE_F32, 1, ne1, d1, 11, &err) == NM_ERR_ARG);
    int64_t ne2[2] = {31, 1};
    CHECK(t, nm_gguf_writer_add_tensor(w, "t3", NM_TYPE_Q8_0, 2, ne2, d1, 34, &err) == NM_ERR_ARG);
    uint16_t h[4] = {0x3c00, 0, 0, 0};
    int64_t ne4[2] = {2, 2};
    CHECK_OK(t, nm_gguf_writer_add_tensor(w, "t4", NM_TYPE_F16, 2, ne4, h, 8, &err), err);
    char path[512];
    snprintf(path, sizeof path, "%s/w.gguf", nm_test_tmpdir());
    CHECK_OK(t, nm_gguf_writer_write(w, path, &err), err);
    nm_gguf_writer_free(w);

    nm_gguf *g;
    if (!CHECK_OK(t, nm_gguf_open(path, &g, &err), err)) return;
    CHECK(t, nm_gguf_n_kv(g) == 8);
    CHECK(t, nm_gguf_find_key(g, "a.u32") == 1);
    uint32_t u;
    CHECK(t, nm_gguf_get_u32(g, "a.u32", &u, &err) == NM_OK && u == 9);
    float f;
    CHECK(t, nm_gguf_get_f32(g, "a.f32", &f, &err) == NM_OK && f == 0.5f);
    bool bv;
    CHECK(t, nm_gguf_get_bool(g, "a.bool", &bv, &err) == NM_OK && bv);
    int64_t iv;
    CHECK(t, nm_gguf_get_i64(g, "a.i64", &iv, &err) == NM_OK && iv == -5);
    uint64_t uv;
    CHECK(t, nm_gguf_get_u64(g, "a.i64", &uv, &err) == NM_ERR_FORMAT); /* negative */
    CHECK(t, nm_gguf_alignment(g) == 64);
    CHECK(t, nm_gguf_data_offset(g) % 64 == 0);
    int64_t si = nm_gguf_find_key(g, "a.strs");
    CHECK(t, nm_gguf_arr_n(g, si) == 3 && nm_gguf_arr_str(g, si, 1).len == 0 && nm_gguf_arr_str(g, si, 2).len == 2);
    int64_t ii = nm_gguf_find_key(g, "a.ints");
    int32_t back[3];
    memcpy(back, nm_gguf_arr_data(g, ii), sizeof back);
    CHECK(t, back[1] == -2 && nm_gguf_arr_type(g, ii) == NM_GGUF_INT32);
    const nm_gguf_tensor *t4 = nm_gguf_find_tensor(g, "t4");
    CHECK(t, t4 && t4->offset == 64 && t4->type == NM_TYPE_F16 && t4->ne[1] == 2);
    CHECK(t, nm_gguf_file_size(g) % 64 == 0);
    nm_gguf_free(g);
}

/* Atomic writes: a failed write leaves the old file untouched and no
 * temporary behind. */
static void test_atomic(nm_test *t) {
    char path[512];
    snprintf(path, sizeof path, "%s/atomic.bin", nm_test_tmpdir());
    nm_err err = {0};
    CHECK_OK(t, nm_write_file_atomic(path, "old", 3, &err), err);
    nm_atomic_file af;
    CHECK_OK(t, nm_atomic_open(&af, path, &err), err);
    nm_atomic_write(&af, "new-but-abandoned", 17, &err);
    nm_atomic_abort(&af);
    size_t n;
    char *s = nm_test_read(path, &n);
    CHECK(t, s && n == 3 && !memcmp(s, "old", 3));
    free(s);
    char cmd[600], *out;
    snprintf(cmd, sizeof cmd, "ls %s | grep -c tmp", nm_test_tmpdir());
    nm_test_sh(cmd, &out);
    CHECK(t, out && atoi(out) == 0);
    free(out);
    CHECK(t, nm_write_file_atomic("/nonexistent-dir/x", "a", 1, &err) == NM_ERR_IO && strstr(err.msg, "/nonexistent-dir/x"));
}

/* `convert --type f16` must give the same values as llama.cpp's F16 file
 * (same rounding), and keep norms F32. */
static void test_convert_types_match_llamacpp(nm_test *t) {
    const char *names[2] = {"f16", "bf16"};
    const char *refs[2] = {"models/stories260K-f16.gguf", "models/stories260K-bf16.gguf"};
    for (int k = 0; k < 2; k++) {
        char out[512];
        snprintf(out, sizeof out, "%s/conv-%s.gguf", nm_test_tmpdir(), names[k]);
        nm_err err = {0};
        nm_status st = nm_gguf_convert(nm_test_shared("models/stories260K.gguf"), out, nm_type_from_name(names[k]),
                                       NULL, &err);
        if (!CHECK_OK(t, st, err)) continue;
        nm_gguf *a, *b;
        if (nm_gguf_open(out, &a, &err)) continue;
        if (nm_gguf_open(nm_test_shared(refs[k]), &b, &err)) {
            nm_gguf_free(a);
            continue;
        }
        CHECK(t, nm_gguf_n_tensors(a) == nm_gguf_n_tensors(b));
        int same = 0;
        for (int64_t i = 0; i < nm_gguf_n_tensors(b); i++) {
            const nm_gguf_tensor *tb = nm_gguf_tensor_at(b, i);
            const nm_gguf_tensor *ta = nm_gguf_find_tensor(a, tb->name);
            if (!CHECKF(t, ta != NULL, "%s missing", tb->name)) continue;
            bool eq = ta->type == tb->type && ta->nbytes == tb->nbytes && !memcmp(ta->data, tb->data, ta->nbytes);
            CHECKF(t, eq, "%s: %s differs from llama.cpp's (types %s/%s)", names[k], tb->name, nm_type_name(ta->type),
                   nm_type_name(tb->type));
            same += eq;
        }
        CHECK(t, same == 48);
        uint32_t ft;
        CHECK(t, nm_gguf_get_u32(a, "general.file_type", &ft, &err) == NM_OK && ft == (k == 0 ? 1u : 32u));
        nm_gguf_free(a);
        nm_gguf_free(b);
    }
}

int main(void) {
    nm_test_run("gguf_crafted_valid", test_crafted_valid);
    nm_test_run("gguf_every_truncation_rejected", test_every_truncation);
    nm_test_run("gguf_hostile_fields", test_hostile);
    nm_test_run("gguf_nested_arrays", test_nested_arrays);
    nm_test_run("gguf_bad_alignment", test_bad_alignment);
    nm_test_run("gguf_open_errors", test_open_errors);
    nm_test_run("gguf_roundtrip_shared_byte_identical", test_roundtrip_shared);
    nm_test_run("gguf_writer", test_writer);
    nm_test_run("atomic_write", test_atomic);
    nm_test_run("convert_f16_bf16_match_llamacpp", test_convert_types_match_llamacpp);
    return nm_test_finish();
}
