/* test_safetensors.c - the safetensors writer round-trips, and the reader
 * rejects every hostile header with a clear error instead of crashing. */
#include "testlib.h"
#include "base/base.h"

#include <stdlib.h>
#include <string.h>

/* A file image: 8-byte length, header text as given, data_len bytes. */
static uint8_t *image(const char *header, size_t data_len, size_t *size) {
    size_t h = strlen(header);
    *size = 8 + h + data_len;
    uint8_t *b = calloc(1, *size);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    for (size_t i = 0; i < data_len; i++) b[8 + h + i] = (uint8_t)i;
    return b;
}

static void test_roundtrip(nm_test *t) {
    float a[6] = {1, -2, 3.5f, 0, 1e-8f, 6};
    uint16_t h[3] = {nm_f32_to_f16(0.5f), nm_f32_to_f16(-1.0f), nm_f32_to_f16(2.0f)};
    uint16_t bf[2] = {nm_f32_to_bf16(3.0f), nm_f32_to_bf16(-0.25f)};
    int32_t iv[1] = {42};
    nm_err err = {0};
    nm_st_writer *w = nm_st_writer_new();
    int64_t s_a[2] = {2, 3}, s_h[1] = {3}, s_bf[2] = {1, 2};
    CHECK_OK(t, nm_st_writer_add(w, "layer.a", "F32", 2, s_a, a, sizeof a, &err), err);
    CHECK_OK(t, nm_st_writer_add(w, "h", "F16", 1, s_h, h, sizeof h, &err), err);
    CHECK_OK(t, nm_st_writer_add(w, "b\"q", "BF16", 2, s_bf, bf, sizeof bf, &err), err);
    CHECK_OK(t, nm_st_writer_add(w, "scalar", "I32", 0, NULL, iv, sizeof iv, &err), err);
    CHECK(t, nm_st_writer_add(w, "h", "F16", 1, s_h, h, sizeof h, &err) == NM_ERR_ARG);      /* twice */
    CHECK(t, nm_st_writer_add(w, "x", "F32", 1, s_h, a, 8, &err) == NM_ERR_ARG);            /* size */
    CHECK(t, nm_st_writer_add(w, "y", "Q4", 1, s_h, a, 12, &err) == NM_ERR_ARG);            /* dtype */
    CHECK_OK(t, nm_st_writer_meta(w, "format", "pt", &err), err);
    CHECK_OK(t, nm_st_writer_meta(w, "note", "line\nbreak \"quoted\"", &err), err);
    CHECK_OK(t, nm_st_writer_meta(w, "format", "pt2", &err), err);
    char path[512];
    snprintf(path, sizeof path, "%s/rt.safetensors", nm_test_tmpdir());
    CHECK_OK(t, nm_st_writer_write(w, path, &err), err);
    nm_st_writer_free(w);

    size_t len;
    char *raw = nm_test_read(path, &len);
    CHECK(t, raw && len > 8 && (nm_rd_u64((const uint8_t *)raw) % 8) == 0); /* header padded */
    free(raw);

    nm_st *s;
    if (!CHECK_OK(t, nm_st_open(path, &s, &err), err)) return;
    CHECK(t, nm_st_n_tensors(s) == 4);
    const nm_st_tensor *ta = nm_st_find(s, "layer.a");
    CHECK(t, ta && strcmp(ta->dtype, "F32") == 0 && ta->n_dims == 2 && ta->shape[0] == 2 && ta->shape[1] == 3);
    float back[6];
    CHECK_OK(t, nm_st_read_f32(s, ta, back, &err), err);
    CHECK(t, memcmp(back, a, sizeof a) == 0);
    const nm_st_tensor *th = nm_st_find(s, "h");
    CHECK_OK(t, nm_st_read_f32(s, th, back, &err), err);
    CHECK(t, back[0] == 0.5f && back[1] == -1.0f && back[2] == 2.0f);
    const nm_st_tensor *tb = nm_st_find(s, "b\"q");
    CHECK(t, tb != NULL);
    if (tb) {
        CHECK_OK(t, nm_st_read_f32(s, tb, back, &err), err);
        CHECK(t, back[0] == 3.0f && back[1] == -0.25f);
    }
    const nm_st_tensor *ts = nm_st_find(s, "scalar");
    CHECK(t, ts && ts->n_dims == 0 && ts->nbytes == 4);
    CHECK(t, nm_st_read_f32(s, ts, back, &err) == NM_ERR_UNSUPPORTED);
    CHECK(t, nm_st_meta(s, "format") && strcmp(nm_st_meta(s, "format"), "pt2") == 0);
    CHECK(t, nm_st_meta(s, "note") && strcmp(nm_st_meta(s, "note"), "line\nbreak \"quoted\"") == 0);
    CHECK(t, nm_st_meta(s, "none") == NULL && nm_st_n_meta(s) == 2);
    /* tensors come in data order */
    CHECK(t, strcmp(nm_st_tensor_at(s, 0)->name, "layer.a") == 0 && nm_st_tensor_at(s, 4) == NULL);
    nm_st_free(s);
}

typedef struct bad_case {
    const char *what, *header;
    size_t data_len;
    const char *msg_part; /* expected in the error message */
} bad_case;

static void test_hostile_headers(nm_test *t) {
    static const bad_case cases[] = {
        {"not json", "{\"a\":", 0, "JSON"},
        {"array", "[1,2]", 0, "JSON"},
        {"trailing garbage", "{}xyz", 0, "JSON"},
        {"duplicate key",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
         "\"data_offsets\":[4,8]}}",
         8, "JSON"},
        {"unknown dtype", "{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype"},
        {"dtype not string", "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype"},
        {"negative shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "shape"},
        {"float shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "shape"},
        {"too many dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
         "shape"},
        {"shape overflow",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
         "overflow"},
        {"size mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "bytes"},
        {"end before begin", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "outside"},
        {"outside file", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[100,104]}}", 4, "outside"},
        {"offsets malformed", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "data_offsets"},
        {"offsets missing", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "data_offsets"},
        {"overlap",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],"
         "\"data_offsets\":[4,8]}}",
         8, "overlaps"},
        {"hole",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],"
         "\"data_offsets\":[8,12]}}",
         12, "hole"},
        {"uncovered tail", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 9, "cover"},
        {"unknown field", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4, "unknown"},
        {"tensor not object", "{\"a\":7}", 0, "object"},
        {"metadata not object", "{\"__metadata__\":[1]}", 0, "__metadata__"},
        {"metadata value not string", "{\"__metadata__\":{\"k\":1}}", 0, "__metadata__"},
        {"empty name", "{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "empty"},
        {"invalid utf-8", "{\"\xff\xfe\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t size;
        uint8_t *b = image(cases[i].header, cases[i].data_len, &size);
        nm_st *s = NULL;
        nm_err err = {0};
        nm_status st = nm_st_open_buffer(b, size, "hostile.safetensors", &s, &err);
        CHECKF(t, st == NM_ERR_FORMAT && s == NULL, "%s: accepted (status %d)", cases[i].what, (int)st);
        CHECKF(t, strstr(err.msg, "hostile.safetensors") != NULL, "%s: message lacks file name: %s", cases[i].what,
               err.msg);
        CHECKF(t, strstr(err.msg, cases[i].msg_part) != NULL, "%s: message '%s' lacks '%s'", cases[i].what, err.msg,
               cases[i].msg_part);
        nm_st_free(s);
        free(b);
    }
    /* length field problems */
    uint8_t tiny[5] = {0};
    nm_st *s = NULL;
    nm_err err = {0};
    CHECK(t, nm_st_open_buffer(tiny, sizeof tiny, "x", &s, &err) == NM_ERR_FORMAT);
    uint8_t big[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    CHECK(t, nm_st_open_buffer(big, sizeof big, "x", &s, &err) == NM_ERR_FORMAT && strstr(err.msg, "length"));
    uint8_t over[12] = {9, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' '}; /* claims 9, has 4 */
    CHECK(t, nm_st_open_buffer(over, sizeof over, "x", &s, &err) == NM_ERR_FORMAT);
    /* empty file and empty object are fine */
    size_t size;
    uint8_t *b = image("{}      ", 0, &size);
    CHECK_OK(t, nm_st_open_buffer(b, size, "empty", &s, &err), err);
    CHECK(t, s && nm_st_n_tensors(s) == 0);
    nm_st_free(s);
    free(b);
    CHECK(t, nm_st_open("/nonexistent/x.safetensors", &s, &err) == NM_ERR_IO);
}

/* Random damage to a valid file: every outcome is a clean error or a valid
 * parse, never a crash (ASan/UBSan builds check the "never"). */
static void test_mutations(nm_test *t) {
    size_t size;
    uint8_t *good = image("{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],"
                          "\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[8,20]}}",
                          20, &size);
    nm_st *s;
    nm_err err = {0};
    CHECK_OK(t, nm_st_open_buffer(good, size, "good", &s, &err), err);
    nm_st_free(s);
    nm_rng rng;
    nm_rng_seed(&rng, 5);
    uint8_t *b = malloc(size);
    int ok = 0, bad = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(b, good, size);
        int flips = 1 + (int)(nm_rng_u64(&rng) % 4);
        for (int f = 0; f < flips; f++) b[nm_rng_u64(&rng) % size] = (uint8_t)nm_rng_u64(&rng);
        size_t cut = nm_rng_u64(&rng) % 8 == 0 ? nm_rng_u64(&rng) % size : size;
        if (nm_st_open_buffer(b, cut, "m", &s, &err) == NM_OK) {
            ok++;
            for (int64_t i = 0; i < nm_st_n_tensors(s); i++) { /* touch every byte it claims */
                const nm_st_tensor *tt = nm_st_tensor_at(s, i);
                volatile uint8_t sink = 0;
                for (uint64_t j = 0; j < tt->nbytes; j++) sink ^= ((const uint8_t *)tt->data)[j];
                (void)sink;
            }
            nm_st_free(s);
        } else {
            bad++;
        }
    }
    CHECK(t, bad > 0 && ok > 0);
    free(b);
    free(good);
}

int main(void) {
    nm_test_run("roundtrip", test_roundtrip);
    nm_test_run("hostile_headers", test_hostile_headers);
    nm_test_run("mutations", test_mutations);
    return nm_test_finish();
}
