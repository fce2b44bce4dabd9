/*
 * test_types.c - tensor types: the traits table, half-precision conversions,
 * and the quantized block formats (ggml/llama.cpp layouts, bit for bit).
 *
 * The expected values here are computed independently of src/tensor: blocks
 * are packed field by field from the format descriptions and decoded by the
 * formulas, half floats are checked against their definition and against
 * every rounding midpoint, and the real files written by llama.cpp are the
 * final word on the layouts.
 */
#include "testlib.h"
#include "base/base.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* ======================================================================== */
/* The traits table                                                         */
/* ======================================================================== */

typedef struct type_row {
    nm_type t;
    const char *name;
    int64_t blck;
    size_t bytes;
} type_row;

/* Block sizes and bytes of ggml's block structs (ggml-common.h). */
static const type_row TYPES[] = {
    {NM_TYPE_F32, "f32", 1, 4},        {NM_TYPE_F16, "f16", 1, 2},
    {NM_TYPE_BF16, "bf16", 1, 2},      {NM_TYPE_Q4_0, "q4_0", 32, 18},
    {NM_TYPE_Q4_1, "q4_1", 32, 20},    {NM_TYPE_Q5_0, "q5_0", 32, 22},
    {NM_TYPE_Q5_1, "q5_1", 32, 24},    {NM_TYPE_Q8_0, "q8_0", 32, 34},
    {NM_TYPE_Q8_1, "q8_1", 32, 36},    {NM_TYPE_Q2_K, "q2_k", 256, 84},
    {NM_TYPE_Q3_K, "q3_k", 256, 110},  {NM_TYPE_Q4_K, "q4_k", 256, 144},
    {NM_TYPE_Q5_K, "q5_k", 256, 176},  {NM_TYPE_Q6_K, "q6_k", 256, 210},
    {NM_TYPE_Q8_K, "q8_k", 256, 292},  {NM_TYPE_I8, "i8", 1, 1},
    {NM_TYPE_I16, "i16", 1, 2},        {NM_TYPE_I32, "i32", 1, 4},
    {NM_TYPE_I64, "i64", 1, 8},        {NM_TYPE_F64, "f64", 1, 8},
};
#define N_TYPES (sizeof TYPES / sizeof TYPES[0])

static void test_type_sizes(nm_test *t) {
    for (size_t i = 0; i < N_TYPES; i++) {
        const type_row *r = &TYPES[i];
        CHECKF(t, nm_type_known(r->t), "%s not known", r->name);
        CHECKF(t, nm_type_block_size(r->t) == r->blck, "%s block size %lld, want %lld", r->name,
               (long long)nm_type_block_size(r->t), (long long)r->blck);
        CHECKF(t, nm_type_block_bytes(r->t) == r->bytes, "%s block bytes %zu, want %zu", r->name,
               nm_type_block_bytes(r->t), r->bytes);
        const char *nm = nm_type_name(r->t);
        CHECKF(t, nm && strcmp(nm, r->name) == 0, "type %d named %s, want %s", (int)r->t, nm ? nm : "NULL",
               r->name);
    }
    /* Ids ggml retired (4, 5: Q4_2, Q4_3) or that nomoat does not know. */
    const uint32_t unknown[] = {4, 5, 16, 23, 29, 31, NM_TYPE_COUNT, 1000, UINT32_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        CHECKF(t, !nm_type_known(unknown[i]), "id %u known", unknown[i]);
        CHECKF(t, nm_type_name(unknown[i]) == NULL, "id %u has a name", unknown[i]);
    }
    CHECK(t, nm_type_block_size((nm_type)4) == 0 && nm_type_block_bytes((nm_type)4) == 0);
}

static void test_type_names(nm_test *t) {
    int n_known = 0;
    for (uint32_t id = 0; id < NM_TYPE_COUNT; id++) {
        const char *nm = nm_type_name(id);
        if (!nm) continue;
        n_known++;
        CHECKF(t, nm_type_from_name(nm) == (int)id, "from_name(%s) = %d, want %u", nm, nm_type_from_name(nm), id);
        char up[32];
        size_t k = 0;
        for (; nm[k] && k < sizeof up - 1; k++) up[k] = (char)(nm[k] >= 'a' && nm[k] <= 'z' ? nm[k] - 32 : nm[k]);
        up[k] = 0;
        CHECKF(t, nm_type_from_name(up) == (int)id, "from_name(%s) = %d, want %u", up, nm_type_from_name(up), id);
    }
    CHECKF(t, n_known == (int)N_TYPES, "%d known types, the test lists %zu", n_known, N_TYPES);
    const char *bad[] = {"", "q4", "q4_2", "f32 ", " f32", "q4_k_m", "float", "q8_0x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECKF(t, nm_type_from_name(bad[i]) == -1, "from_name(\"%s\") = %d", bad[i], nm_type_from_name(bad[i]));
}

static void test_row_bytes(nm_test *t) {
    CHECK(t, nm_type_row_bytes(NM_TYPE_Q4_0, 32) == 18);
    CHECK(t, nm_type_row_bytes(NM_TYPE_Q4_0, 4096) == 128 * 18);
    CHECK(t, nm_type_row_bytes(NM_TYPE_Q8_0, 256) == 8 * 34);
    CHECK(t, nm_type_row_bytes(NM_TYPE_Q4_K, 256) == 144);
    CHECK(t, nm_type_row_bytes(NM_TYPE_Q6_K, 4096) == 16 * 210);
    CHECK(t, nm_type_row_bytes(NM_TYPE_F32, 7) == 28);
    CHECK(t, nm_type_row_bytes(NM_TYPE_BF16, 3) == 6);
    /* Not a multiple of the block size. */
    CHECK(t, nm_type_row_bytes(NM_TYPE_Q4_0, 33) == 0);
    CHECK(t, nm_type_row_bytes(NM_TYPE_Q4_0, 16) == 0);
    CHECK(t, nm_type_row_bytes(NM_TYPE_Q4_K, 32) == 0);
    CHECK(t, nm_type_row_bytes(NM_TYPE_Q6_K, 4097) == 0);
    CHECK(t, nm_type_row_bytes(NM_TYPE_Q8_0, -32) == 0);
    CHECK(t, nm_type_row_bytes((nm_type)4, 32) == 0);
    /* Products that overflow 64 bits (2^62 * 4 = 2^64). */
    CHECK(t, nm_type_row_bytes(NM_TYPE_F32, INT64_C(1) << 62) == 0);
    CHECK(t, nm_type_row_bytes(NM_TYPE_F32, INT64_MAX) == 0);
    CHECK(t, nm_type_row_bytes(NM_TYPE_I32, INT64_MAX) == 0);
    CHECK(t, nm_type_row_bytes(NM_TYPE_F64, INT64_MAX) == 0);
    /* Large products that fit 64 bits (quantized types divide first: the
     * largest Q8_0 row is (2^58 - 1) blocks * 34 < 2^64); where they do not
     * fit size_t (32-bit hosts) the answer must be 0, not a truncation. */
    const uint64_t q8_max = ((UINT64_C(1) << 58) - 1) * 34, q8k_max = (UINT64_C(1) << 55) * 292 - 292,
                   i16_max = (uint64_t)INT64_MAX * 2;
    CHECK(t, nm_type_row_bytes(NM_TYPE_Q8_0, INT64_MAX - INT64_MAX % 32) == (q8_max <= SIZE_MAX ? q8_max : 0));
    CHECK(t, nm_type_row_bytes(NM_TYPE_Q8_K, INT64_MAX - INT64_MAX % 256) == (q8k_max <= SIZE_MAX ? q8k_max : 0));
    CHECK(t, nm_type_row_bytes(NM_TYPE_I16, INT64_MAX) == (i16_max <= SIZE_MAX ? i16_max : 0));
    CHECK(t, nm_type_row_bytes(NM_TYPE_F32, INT64_C(1) << 40) ==
                 ((UINT64_C(1) << 42) <= SIZE_MAX ? (size_t)(UINT64_C(1) << 42) : 0));
}

static void test_convert_api(nm_test *t) {
    const nm_type deq[] = {NM_TYPE_F32, NM_TYPE_F16, NM_TYPE_BF16, NM_TYPE_Q4_0, NM_TYPE_Q4_1,
                           NM_TYPE_Q5_0, NM_TYPE_Q5_1, NM_TYPE_Q8_0, NM_TYPE_Q4_K, NM_TYPE_Q5_K,
                           NM_TYPE_Q6_K, NM_TYPE_Q8_K};
    const nm_type quant[] = {NM_TYPE_F32, NM_TYPE_F16, NM_TYPE_BF16, NM_TYPE_Q4_0,
                             NM_TYPE_Q4_1, NM_TYPE_Q5_0, NM_TYPE_Q5_1, NM_TYPE_Q8_0};
    for (size_t i = 0; i < sizeof deq / sizeof deq[0]; i++)
        CHECKF(t, nm_type_can_dequantize(deq[i]), "cannot dequantize %s", nm_type_name(deq[i]));
    for (size_t i = 0; i < sizeof quant / sizeof quant[0]; i++)
        CHECKF(t, nm_type_can_quantize(quant[i]), "cannot quantize %s", nm_type_name(quant[i]));
    /* Q2_K and Q3_K are sized and copied only; Q8_K is an activation type
     * (dequantizable, never a weight target) */
    CHECK(t, !nm_type_can_dequantize(NM_TYPE_Q2_K) && !nm_type_can_quantize(NM_TYPE_Q2_K));
    CHECK(t, !nm_type_can_quantize(NM_TYPE_Q3_K));
    CHECK(t, !nm_type_can_dequantize((nm_type)4) && !nm_type_can_quantize((nm_type)4));

    float x[64] = {0};
    uint8_t buf[64 * 4];
    nm_err err = {0};
    CHECK(t, nm_quantize(NM_TYPE_Q8_0, x, buf, 33, &err) == NM_ERR_ARG && err.code == NM_ERR_ARG);
    CHECK(t, nm_dequantize(NM_TYPE_Q4_0, buf, x, 48, &err) == NM_ERR_ARG);
    CHECK(t, nm_dequantize(NM_TYPE_Q8_0, buf, x, -32, &err) == NM_ERR_ARG);
    CHECK(t, nm_dequantize(NM_TYPE_Q2_K, buf, x, 256, &err) == NM_ERR_UNSUPPORTED);
    CHECK(t, strstr(err.msg, "q2_k") != NULL);
    CHECK(t, nm_quantize(NM_TYPE_Q3_K, x, buf, 256, &err) == NM_ERR_UNSUPPORTED);
    CHECK(t, nm_quantize((nm_type)5, x, buf, 32, &err) == NM_ERR_UNSUPPORTED);
    CHECK(t, nm_quantize(NM_TYPE_Q8_0, x, buf, 64, &err) == NM_OK);
    CHECK(t, nm_dequantize(NM_TYPE_Q8_0, buf, x, 0, &err) == NM_OK); /* nothing to do */
}

/* ======================================================================== */
/* Half precision                                                           */
/* ======================================================================== */

static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static bool f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }

/* The value of an IEEE binary16 by its definition. */
static double f16_value(uint16_t h) {
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return h & 0x8000 ? -v : v;
}

static void test_f16_exhaustive(nm_test *t) {
    int bad_val = 0, bad_rt = 0, bad_nan = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float f = nm_f16_to_f32(h);
        if (f16_is_nan(h)) {
            uint16_t back = nm_f32_to_f16(f);
            if (!isnan(f) || !f16_is_nan(back) || (back & 0x8000) != (h & 0x8000)) bad_nan++;
            continue;
        }
        double want = f16_value(h);
        if ((double)f != want || !signbit(f) != !signbit(want)) {
            if (bad_val++ < 3) CHECKF(t, 0, "f16_to_f32(0x%04x) = %a, want %a", h, f, want);
        }
        uint16_t back = nm_f32_to_f16(f);
        if (back != h) {
            if (bad_rt++ < 3) CHECKF(t, 0, "f32_to_f16(f16_to_f32(0x%04x)) = 0x%04x", h, back);
        }
    }
    CHECKF(t, bad_val == 0 && bad_rt == 0 && bad_nan == 0, "%d values, %d round trips, %d NaNs wrong", bad_val,
           bad_rt, bad_nan);
}

/* Every midpoint between neighbouring finite halves (exact in float: 12
 * significant bits) must round to the even one, and one float ulp either
 * side must round to the nearer one.  The last midpoint, 65520, is where
 * rounding overflows to infinity. */
static void test_f16_rounding_all_midpoints(nm_test *t) {
    int bad = 0;
    for (uint32_t i = 0; i < 0x7c00; i++) {
        for (int neg = 0; neg < 2; neg++) {
            uint16_t lo = (uint16_t)(i | (neg ? 0x8000 : 0)), hi = (uint16_t)(lo + 1);
            float mid = (float)((f16_value(lo) + (i + 1 == 0x7c00 ? (neg ? -65536.0 : 65536.0) : f16_value(hi))) / 2);
            uint16_t even = (lo & 1) ? hi : lo;
            float below = nextafterf(mid, 0.0f), above = nextafterf(mid, neg ? -INFINITY : INFINITY);
            uint16_t r_mid = nm_f32_to_f16(mid), r_below = nm_f32_to_f16(below), r_above = nm_f32_to_f16(above);
            if (r_mid != even || r_below != lo || r_above != hi) {
                if (bad++ < 3)
                    CHECKF(t, 0, "around %a (between 0x%04x and 0x%04x): got 0x%04x 0x%04x 0x%04x", mid, lo, hi,
                           r_below, r_mid, r_above);
            }
        }
    }
    CHECKF(t, bad == 0, "%d midpoints rounded wrong", bad);
}

static void test_f16_cases(nm_test *t) {
    struct { float f; uint16_t h; } c[] = {
        {1.0f, 0x3c00},
        {1.0f + 0x1p-11f, 0x3c00},           /* tie, 1 is even */
        {1.0f + 3 * 0x1p-11f, 0x3c02},       /* tie between 0x3c01 and 0x3c02: even wins */
        {1.0f + 0x1p-11f + 0x1p-20f, 0x3c01}, /* just above the tie */
        {-2.5f, 0xc100},
        {0.1f, 0x2e66},
        {65504.0f, 0x7bff},                   /* largest half */
        {65519.0f, 0x7bff},
        {65520.0f, 0x7c00},                   /* tie with 2^16: rounds to even = inf */
        {1e10f, 0x7c00},
        {-1e10f, 0xfc00},
        {FLT_MAX, 0x7c00},
        {INFINITY, 0x7c00},
        {-INFINITY, 0xfc00},
        {0x1p-14f, 0x0400},                   /* smallest normal */
        {0x1p-14f - 0x1p-24f, 0x03ff},        /* largest subnormal */
        {0x1p-24f, 0x0001},                   /* smallest subnormal */
        {0x1p-25f, 0x0000},                   /* tie with 0: even */
        {0x1p-25f + 0x1p-40f, 0x0001},
        {3 * 0x1p-25f, 0x0002},               /* tie between 1 and 2 */
        {-0x1p-24f, 0x8001},
        {1e-10f, 0x0000},
        {0x1p-149f, 0x0000},                  /* float subnormal */
        {-0.0f, 0x8000},
        {0.0f, 0x0000},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        uint16_t h = nm_f32_to_f16(c[i].f);
        CHECKF(t, h == c[i].h, "f32_to_f16(%a) = 0x%04x, want 0x%04x", c[i].f, h, c[i].h);
    }
    CHECK(t, nm_f16_to_f32(0x7c00) == INFINITY && nm_f16_to_f32(0xfc00) == -INFINITY);
    CHECK(t, nm_f16_to_f32(0x0001) == 0x1p-24f && nm_f16_to_f32(0x03ff) == 0x1.ff8p-15f);
    CHECK(t, signbit(nm_f16_to_f32(0x8000)) && nm_f16_to_f32(0x8000) == 0.0f);
    const uint32_t nans[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fffffffu, 0xff800001u};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        uint16_t h = nm_f32_to_f16(u2f(nans[i]));
        CHECKF(t, f16_is_nan(h), "NaN 0x%08x became 0x%04x", nans[i], h);
    }
    CHECK(t, isnan(nm_f16_to_f32(0x7e00)) && isnan(nm_f16_to_f32(0x7c01)) && isnan(nm_f16_to_f32(0xfe00)));
}

static bool bf16_is_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0; }

static void test_bf16(nm_test *t) {
    int bad = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float f = nm_bf16_to_f32(h);
        /* bf16 is the top half of a float, by definition. */
        if (f2u(f) != (uint32_t)h << 16 && !bf16_is_nan(h)) {
            if (bad++ < 3) CHECKF(t, 0, "bf16_to_f32(0x%04x) = 0x%08x", h, f2u(f));
            continue;
        }
        uint16_t back = nm_f32_to_bf16(f);
        if (bf16_is_nan(h) ? !(isnan(f) && bf16_is_nan(back)) : back != h) {
            if (bad++ < 3) CHECKF(t, 0, "bf16 round trip 0x%04x -> 0x%04x", h, back);
            continue;
        }
        /* Midpoint to the next value up in magnitude, and one ulp either
         * side; the midpoint above 0x7f7f rounds to infinity. */
        if ((h & 0x7fff) < 0x7f80) {
            uint32_t mid = (uint32_t)h << 16 | 0x8000u;
            uint16_t even = (h & 1) ? (uint16_t)(h + 1) : h;
            uint16_t r_mid = nm_f32_to_bf16(u2f(mid)), r_below = nm_f32_to_bf16(u2f(mid - 1)),
                     r_above = nm_f32_to_bf16(u2f(mid + 1));
            if (r_mid != even || r_below != h || r_above != (uint16_t)(h + 1)) {
                if (bad++ < 3)
                    CHECKF(t, 0, "around 0x%08x: got 0x%04x 0x%04x 0x%04x", mid, r_below, r_mid, r_above);
            }
        }
    }
    CHECKF(t, bad == 0, "%d bf16 values wrong", bad);
    CHECK(t, nm_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(t, nm_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80);     /* tie: even */
    CHECK(t, nm_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82); /* tie: even, upward */
    CHECK(t, nm_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81);
    CHECK(t, nm_f32_to_bf16(FLT_MAX) == 0x7f80);             /* overflow to inf */
    CHECK(t, nm_f32_to_bf16(-FLT_MAX) == 0xff80);
    CHECK(t, nm_f32_to_bf16(u2f(0x7f7f7fffu)) == 0x7f7f);    /* largest finite stays */
    CHECK(t, nm_f32_to_bf16(u2f(0x00010000u)) == 0x0001);    /* float subnormal */
    CHECK(t, nm_f32_to_bf16(u2f(0x00008000u)) == 0x0000);    /* tie with 0 */
    CHECK(t, nm_f32_to_bf16(u2f(0x00018000u)) == 0x0002);
    CHECK(t, bf16_is_nan(nm_f32_to_bf16(u2f(0x7f800001u)))); /* signalling NaN must not become inf */
    CHECK(t, bf16_is_nan(nm_f32_to_bf16(u2f(0xff800001u))));
    CHECK(t, bf16_is_nan(nm_f32_to_bf16(NAN)));
    CHECK(t, nm_f32_to_bf16(INFINITY) == 0x7f80 && nm_f32_to_bf16(-0.0f) == 0x8000);
}

/* ======================================================================== */
/* Hand-built blocks                                                        */
/* ======================================================================== */
/* Each block is assembled byte by byte at the offsets of ggml's structs and
 * the expected floats come from the format's formula.  Scales are powers of
 * two so every product is exact and the comparison can be exact whatever
 * order the library multiplies in.  Each test decodes two different blocks
 * back to back, from an odd address (GGUF data need not be aligned for the
 * 16-bit fields; the sanitizer build catches an unaligned struct access). */

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* Decodes nblk blocks of type ty stored in `bytes` from an odd address and
 * compares with want[]. */
static void check_decode(nm_test *t, nm_type ty, const uint8_t *bytes, int nblk, const float *want) {
    const size_t bb = nm_type_block_bytes(ty);
    const int64_t n = nm_type_block_size(ty) * nblk;
    uint8_t *raw = malloc(bb * (size_t)nblk + 1);
    float *got = malloc((size_t)n * sizeof(float));
    if (!CHECK(t, raw && got)) goto out;
    memcpy(raw + 1, bytes, bb * (size_t)nblk);
    nm_err err = {0};
    nm_status st = nm_dequantize(ty, raw + 1, got, n, &err);
    if (!CHECK_OK(t, st, err)) goto out;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (got[i] != want[i] && bad++ < 4)
            CHECKF(t, 0, "%s element %lld: got %.9g, want %.9g", nm_type_name(ty), (long long)i, got[i], want[i]);
    }
out:
    free(raw);
    free(got);
}

/* Half bit patterns of exact powers of two used as scales. */
#define H_0_5 0x3800   /* 0.5    */
#define H_0_25 0x3400  /* 0.25   */
#define H_0_125 0x3000 /* 0.125  */
#define H_M0_5 0xb800  /* -0.5   */
#define H_2 0x4000     /* 2      */
#define H_TINY 0x0004  /* 2^-22, a subnormal half */

static void test_block_q4_0(nm_test *t) {
    uint8_t b[2 * 18];
    float want[64];
    const uint16_t ds[2] = {H_0_5, H_TINY};
    for (int k = 0; k < 2; k++) {
        uint8_t *p = b + 18 * k;
        put16(p, ds[k]);
        for (int j = 0; j < 16; j++) {
            /* low nibble: element j, high nibble: element j + 16; all 16
             * codes appear in both halves. */
            int lo = (j * 7 + k) & 15, hi = (15 - j + 3 * k) & 15;
            p[2 + j] = (uint8_t)(lo | hi << 4);
            want[32 * k + j] = (float)((lo - 8) * f16_value(ds[k]));
            want[32 * k + j + 16] = (float)((hi - 8) * f16_value(ds[k]));
        }
    }
    check_decode(t, NM_TYPE_Q4_0, b, 2, want);
}

static void test_block_q4_1(nm_test *t) {
    uint8_t b[2 * 20];
    float want[64];
    const uint16_t ds[2] = {H_0_25, H_2}, ms[2] = {H_M0_5, H_0_125};
    for (int k = 0; k < 2; k++) {
        uint8_t *p = b + 20 * k;
        put16(p, ds[k]);
        put16(p + 2, ms[k]);
        for (int j = 0; j < 16; j++) {
            int lo = (j * 5 + k) & 15, hi = (j * 11 + 2) & 15;
            p[4 + j] = (uint8_t)(lo | hi << 4);
            want[32 * k + j] = (float)(lo * f16_value(ds[k]) + f16_value(ms[k]));
            want[32 * k + j + 16] = (float)(hi * f16_value(ds[k]) + f16_value(ms[k]));
        }
    }
    check_decode(t, NM_TYPE_Q4_1, b, 2, want);
}

/* Q5_0 / Q5_1: 5-bit codes q[0..31]; low nibbles as Q4, fifth bit of
 * element i in bit i of the little-endian 32-bit qh. */
static void pack_q5(uint8_t *qh, uint8_t *qs, const int *q) {
    uint32_t h = 0;
    for (int i = 0; i < 32; i++) h |= (uint32_t)(q[i] >> 4 & 1) << i;
    for (int i = 0; i < 4; i++) qh[i] = (uint8_t)(h >> (8 * i));
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
}

static void test_block_q5_0(nm_test *t) {
    uint8_t b[2 * 22];
    float want[64];
    const uint16_t ds[2] = {H_0_125, H_M0_5};
    for (int k = 0; k < 2; k++) {
        int q[32];
        /* Block 0 uses every code 0..31 once (so half the qh bits are set,
         * in an irregular pattern); block 1 has all fifth bits set. */
        for (int i = 0; i < 32; i++) q[i] = k == 0 ? (i * 13 + 5) % 32 : 16 | (i % 16);
        uint8_t *p = b + 22 * k;
        put16(p, ds[k]);
        pack_q5(p + 2, p + 6, q);
        for (int i = 0; i < 32; i++) want[32 * k + i] = (float)((q[i] - 16) * f16_value(ds[k]));
    }
    CHECK(t, b[22 + 2] == 0xff && b[22 + 5] == 0xff);
    check_decode(t, NM_TYPE_Q5_0, b, 2, want);
}

static void test_block_q5_1(nm_test *t) {
    uint8_t b[2 * 24];
    float want[64];
    const uint16_t ds[2] = {H_0_25, H_0_5}, ms[2] = {H_2, H_M0_5};
    for (int k = 0; k < 2; k++) {
        int q[32];
        for (int i = 0; i < 32; i++) q[i] = k == 0 ? (i * 19 + 7) % 32 : 31 - i;
        uint8_t *p = b + 24 * k;
        put16(p, ds[k]);
        put16(p + 2, ms[k]);
        pack_q5(p + 4, p + 8, q);
        for (int i = 0; i < 32; i++) want[32 * k + i] = (float)(q[i] * f16_value(ds[k]) + f16_value(ms[k]));
    }
    check_decode(t, NM_TYPE_Q5_1, b, 2, want);
}

static void test_block_q8_0(nm_test *t) {
    uint8_t b[2 * 34];
    float want[64];
    const uint16_t ds[2] = {H_0_125, H_M0_5};
    for (int k = 0; k < 2; k++) {
        uint8_t *p = b + 34 * k;
        put16(p, ds[k]);
        for (int j = 0; j < 32; j++) {
            /* includes -128, -127, -1, 0, 1, 127 */
            int q = k == 0 ? -128 + j * 8 + (j == 31 ? 7 : 0) : (j % 2 ? j : -j) * 4 - (j == 31 ? 3 : 0);
            if (k == 1 && j == 2) q = -1;
            if (k == 1 && j == 3) q = 1;
            p[2 + j] = (uint8_t)(q & 0xff);
            want[32 * k + j] = (float)(q * f16_value(ds[k]));
        }
    }
    CHECK(t, want[0] == -16.0f && want[31] == 127 * 0.125f);
    check_decode(t, NM_TYPE_Q8_0, b, 2, want);
}

/* K-quants: 6-bit scales sc[8] and mins m[8] packed into 12 bytes. */
static void pack_scales_k4(uint8_t *s, const int *sc, const int *m) {
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)((sc[j] & 63) | (sc[j + 4] >> 4) << 6);
        s[j + 4] = (uint8_t)((m[j] & 63) | (m[j + 4] >> 4) << 6);
        s[j + 8] = (uint8_t)((sc[j + 4] & 15) | (m[j + 4] & 15) << 4);
    }
}

/* Distinct 6-bit values with high bits set in both halves. */
static const int KSC[2][8] = {{1, 63, 17, 42, 58, 5, 33, 26}, {40, 3, 61, 12, 20, 47, 9, 36}};
static const int KMIN[2][8] = {{62, 0, 31, 48, 7, 55, 19, 34}, {11, 50, 27, 60, 39, 2, 44, 16}};

static void test_block_q4_k(nm_test *t) {
    uint8_t b[2 * 144];
    float *want = malloc(512 * sizeof(float));
    if (!CHECK(t, want != NULL)) return;
    const uint16_t ds[2] = {H_0_125, H_0_5}, dmins[2] = {H_0_25, H_0_125};
    for (int k = 0; k < 2; k++) {
        uint8_t *p = b + 144 * k;
        put16(p, ds[k]);
        put16(p + 2, dmins[k]);
        pack_scales_k4(p + 4, KSC[k], KMIN[k]);
        int q[256];
        for (int i = 0; i < 256; i++) q[i] = (i * 7 + i / 32 + 3 * k) & 15;
        /* qs: 4 groups of 32 bytes; sub-block 2g in the low nibbles of group
         * g, sub-block 2g+1 in the high nibbles. */
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 32; l++)
                p[16 + 32 * g + l] = (uint8_t)(q[64 * g + l] | q[64 * g + 32 + l] << 4);
        for (int i = 0; i < 256; i++) {
            int s = i / 32;
            want[256 * k + i] =
                (float)(f16_value(ds[k]) * KSC[k][s] * q[i] - f16_value(dmins[k]) * KMIN[k][s]);
        }
    }
    check_decode(t, NM_TYPE_Q4_K, b, 2, want);
    free(want);
}

static void test_block_q5_k(nm_test *t) {
    uint8_t b[2 * 176];
    float *want = malloc(512 * sizeof(float));
    if (!CHECK(t, want != NULL)) return;
    const uint16_t ds[2] = {H_0_25, H_0_125}, dmins[2] = {H_0_5, H_0_25};
    for (int k = 0; k < 2; k++) {
        uint8_t *p = b + 176 * k;
        put16(p, ds[k]);
        put16(p + 2, dmins[k]);
        pack_scales_k4(p + 4, KSC[k], KMIN[k]);
        int q[256];
        for (int i = 0; i < 256; i++) q[i] = k == 0 ? (i * 11 + i / 32) & 31 : 16 | ((i * 3) & 15);
        /* qh[l] bit s: fifth bit of element l of sub-block s. */
        uint8_t *qh = p + 16, *qs = p + 48;
        for (int l = 0; l < 32; l++) {
            int h = 0;
            for (int s = 0; s < 8; s++) h |= (q[32 * s + l] >> 4) << s;
            qh[l] = (uint8_t)h;
        }
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 32; l++)
                qs[32 * g + l] = (uint8_t)((q[64 * g + l] & 15) | (q[64 * g + 32 + l] & 15) << 4);
        for (int i = 0; i < 256; i++) {
            int s = i / 32;
            want[256 * k + i] =
                (float)(f16_value(ds[k]) * KSC[k][s] * q[i] - f16_value(dmins[k]) * KMIN[k][s]);
        }
    }
    CHECK(t, b[176 + 16] == 0xff); /* block 1: every high bit set */
    check_decode(t, NM_TYPE_Q5_K, b, 2, want);
    free(want);
}

static void test_block_q6_k(nm_test *t) {
    uint8_t b[2 * 210];
    float *want = malloc(512 * sizeof(float));
    if (!CHECK(t, want != NULL)) return;
    const uint16_t ds[2] = {H_0_125, H_M0_5};
    for (int k = 0; k < 2; k++) {
        uint8_t *p = b + 210 * k;
        uint8_t *ql = p, *qh = p + 128;
        int sc[16], q[256];
        /* 16 distinct signed scales, including -128 and 127. */
        for (int s = 0; s < 16; s++) sc[s] = k == 0 ? -128 + 17 * s : 127 - 13 * s;
        for (int i = 0; i < 256; i++) q[i] = (i * 29 + 7 * k + i / 64) & 63;
        memset(qh, 0, 64);
        /* Per half h (128 elements): element 32*grp + l has its low 4 bits in
         * ql[64h + l + 32*(grp&1)] (low nibble for grp < 2, high nibble
         * otherwise) and its top 2 bits in qh[32h + l] at bit 2*grp. */
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const int *qq = q + 128 * h + l;
                ql[64 * h + l] = (uint8_t)((qq[0] & 15) | (qq[64] & 15) << 4);
                ql[64 * h + l + 32] = (uint8_t)((qq[32] & 15) | (qq[96] & 15) << 4);
                qh[32 * h + l] = (uint8_t)(qq[0] >> 4 | (qq[32] >> 4) << 2 | (qq[64] >> 4) << 4 | (qq[96] >> 4) << 6);
            }
        for (int s = 0; s < 16; s++) p[192 + s] = (uint8_t)(sc[s] & 0xff);
        put16(p + 208, ds[k]);
        for (int i = 0; i < 256; i++) want[256 * k + i] = (float)(f16_value(ds[k]) * sc[i / 16] * (q[i] - 32));
    }
    check_decode(t, NM_TYPE_Q6_K, b, 2, want);
    free(want);
}

static void test_block_q8_k(nm_test *t) {
    uint8_t b[2 * 292];
    float *want = malloc(512 * sizeof(float));
    if (!CHECK(t, want != NULL)) return;
    const float ds[2] = {0.375f, -0x1p-20f};
    memset(b, 0, sizeof b);
    for (int k = 0; k < 2; k++) {
        uint8_t *p = b + 292 * k;
        uint32_t u = f2u(ds[k]);
        for (int i = 0; i < 4; i++) p[i] = (uint8_t)(u >> (8 * i));
        for (int i = 0; i < 256; i++) {
            int q = (i * 37 + 11 * k) % 256 - 128;
            p[4 + i] = (uint8_t)(q & 0xff);
            want[256 * k + i] = ds[k] * (float)q;
        }
        /* bsums: sums of 16 quants; only dot products read them, so
         * garbage here must not change the result. */
        for (int i = 0; i < 32; i++) p[260 + i] = (uint8_t)(0xa5 ^ i);
    }
    check_decode(t, NM_TYPE_Q8_K, b, 2, want);
    free(want);
}

/* ======================================================================== */
/* Quantize / dequantize on random data                                     */
/* ======================================================================== */

/* Largest |v - f16(v)| for |v| <= 65504: half an ulp, that is 2^-11 |v|
 * for normal halves and 2^-25 (half the subnormal spacing 2^-24) below. */
static double f16_err(double v) {
    double a = fabs(v) * 0x1p-11;
    return a > 0x1p-25 ? a : 0x1p-25;
}

/* Error bound for element j of a 32-element block x, derived from ggml's
 * reference quantizers.  With d the exact scale, dh = f16(d), mh = f16(min):
 *
 *  Q8_0  d = amax/127, q = round(x/d) in -127..127:
 *        |x - q dh| <= |x - q d| + |q| |d - dh| <= d/2 + 127 err16(d)
 *  Q4_0  d = max/-8 (max: the signed value of largest magnitude), so
 *        t = x/d is in [-8, 8]; q = floor(t + 8.5) clamped to 15:
 *        error <= |d|/2 + 8 err16(d) for t <= 7.5; elements with t in
 *        (7.5, 8] (opposite sign to max, |x| > 15/16 amax) are clamped
 *        to level 7 and may be off by up to |d|.
 *  Q5_0  the same with d = max/-16, 32 levels, clamp above t = 15.5,
 *        |q - 16| <= 16.
 *  Q4_1  d = (max-min)/15, q = floor((x-min)/d + 0.5) in 0..15:
 *        error <= d/2 + 15 err16(d) + err16(min)
 *  Q5_1  the same with 31.
 * plus 1e-5 amax for float rounding inside the quantizer (x*id and
 * (x-min)*id are float products, q*dh + mh float sums). */
static double elem_bound(nm_type ty, const float *x, int j) {
    double amax = 0, max = 0, lo = x[0], hi = x[0];
    for (int i = 0; i < 32; i++) {
        if (fabs(x[i]) > amax) {
            amax = fabs(x[i]);
            max = x[i];
        }
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
    }
    const double slack = 1e-5 * amax;
    switch (ty) {
    case NM_TYPE_Q8_0: {
        double d = amax / 127;
        return d / 2 + 127 * f16_err(d) + slack;
    }
    case NM_TYPE_Q4_0:
    case NM_TYPE_Q5_0: {
        double nl = ty == NM_TYPE_Q4_0 ? 8 : 16;
        if (amax == 0) return 0;
        double d = max / -nl, tt = x[j] / d;
        double step = fabs(d) * (tt > nl - 0.5 - 1e-4 ? 1.0 : 0.5);
        return step + nl * f16_err(d) + slack;
    }
    case NM_TYPE_Q4_1:
    case NM_TYPE_Q5_1: {
        double nl = ty == NM_TYPE_Q4_1 ? 15 : 31;
        double d = (hi - lo) / nl;
        return d / 2 + nl * f16_err(d) + f16_err(lo) + slack;
    }
    default:
        return 0;
    }
}

enum { DIST_NORMAL, DIST_UNIFORM, DIST_OUTLIER, DIST_ZERO, DIST_POSITIVE };

static void fill(float *x, int64_t n, nm_rng *r, int dist, double scale) {
    for (int64_t i = 0; i < n; i++) {
        switch (dist) {
        case DIST_NORMAL: x[i] = (float)(scale * nm_rng_normal(r)); break;
        case DIST_UNIFORM: x[i] = (float)(scale * (2 * nm_rng_uniform(r) - 1)); break;
        case DIST_POSITIVE: x[i] = (float)(scale * (1 + nm_rng_uniform(r))); break;
        case DIST_ZERO: x[i] = 0.0f; break;
        case DIST_OUTLIER:
            x[i] = (float)(scale * nm_rng_normal(r));
            /* one element per block, at a random place and sign, 1000x */
            break;
        }
    }
    if (dist == DIST_OUTLIER)
        for (int64_t b = 0; b < n / 32; b++) {
            uint64_t u = nm_rng_u64(r);
            x[32 * b + (int64_t)(u % 32)] = (float)(scale * ((u >> 8) & 1 ? 1000.0 : -1000.0));
        }
}

static const nm_type QTYPES[] = {NM_TYPE_Q8_0, NM_TYPE_Q4_0, NM_TYPE_Q4_1, NM_TYPE_Q5_0, NM_TYPE_Q5_1};

/* Limit of RMS(error)/RMS(x) on normal and uniform data at scales where d
 * is a half (not 0).  Rounding error is about uniform over a step, so it is
 * step/sqrt(12); e.g. Q8_0 on U(-1,1): (1/127)/sqrt(12) / (1/sqrt(3)) =
 * 0.0039.  Measured (131072 values per case, fixed seeds, worst scale):
 *           normal   uniform
 *   q8_0    0.0054   0.0044
 *   q4_0    0.0864   0.0652
 *   q4_1    0.0786   0.0609
 *   q5_0    0.0428   0.0312
 *   q5_1    0.0380   0.0294
 * The limits sit ~12% above: the data are fixed, so the margin only has to
 * absorb libm differences, and a quantizer that rounds to the wrong level
 * (or drops Q5's fifth bit) lands far above them. */
static double rms_limit(nm_type ty, int dist) {
    bool u = dist == DIST_UNIFORM;
    switch (ty) {
    case NM_TYPE_Q8_0: return u ? 0.0050 : 0.0061;
    case NM_TYPE_Q4_0: return u ? 0.073 : 0.097;
    case NM_TYPE_Q4_1: return u ? 0.068 : 0.088;
    case NM_TYPE_Q5_0: return u ? 0.035 : 0.048;
    case NM_TYPE_Q5_1: return u ? 0.033 : 0.043;
    default: return 0;
    }
}

static void test_roundtrip_random(nm_test *t) {
    const int64_t nblk = 4096, n = 32 * nblk;
    float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
    uint8_t *q = malloc((size_t)nblk * 34);
    if (!CHECK(t, x && y && q)) goto out;
    const double scales[] = {1e-7, 1e-3, 0.02, 1.0, 300.0};
    const int dists[] = {DIST_NORMAL, DIST_UNIFORM, DIST_POSITIVE, DIST_OUTLIER, DIST_ZERO};
    const bool verbose = getenv("NM_TEST_VERBOSE") != NULL;
    for (size_t ti = 0; ti < sizeof QTYPES / sizeof QTYPES[0]; ti++) {
        const nm_type ty = QTYPES[ti];
        for (size_t di = 0; di < sizeof dists / sizeof dists[0]; di++) {
            for (size_t si = 0; si < sizeof scales / sizeof scales[0]; si++) {
                const double scale = scales[si];
                if (dists[di] == DIST_OUTLIER && scale > 10) continue; /* keep d inside f16 */
                nm_rng r;
                nm_rng_seed(&r, 1000 * ti + 10 * di + si + 1);
                fill(x, n, &r, dists[di], scale);
                nm_err err = {0};
                nm_status st = nm_quantize(ty, x, q, n, &err);
                if (!CHECK_OK(t, st, err)) goto out;
                st = nm_dequantize(ty, q, y, n, &err);
                if (!CHECK_OK(t, st, err)) goto out;
                double se = 0, sx = 0;
                int bad = 0;
                for (int64_t i = 0; i < n; i++) {
                    double e = fabs((double)y[i] - x[i]);
                    se += e * e;
                    sx += (double)x[i] * x[i];
                    double bound = elem_bound(ty, x + (i & ~(int64_t)31), (int)(i & 31));
                    if (!(e <= bound) && bad++ < 3)
                        CHECKF(t, 0, "%s dist %d scale %g element %lld: x %.9g y %.9g error %.3g > bound %.3g",
                               nm_type_name(ty), dists[di], scale, (long long)i, x[i], y[i], e, bound);
                }
                if (dists[di] == DIST_ZERO) {
                    CHECKF(t, se == 0, "%s: zero block does not decode to zeros", nm_type_name(ty));
                    continue;
                }
                double rel = sqrt(se / sx);
                if (verbose)
                    printf("  %-5s dist %d scale %-6g rel rms %.5f\n", nm_type_name(ty), dists[di], scale, rel);
                /* RMS limits for the distributions the bounds were
                 * measured on, at scales where d is a normal half. */
                if ((dists[di] == DIST_NORMAL || dists[di] == DIST_UNIFORM) && scale >= 1e-3) {
                    double lim = rms_limit(ty, dists[di]);
                    CHECKF(t, rel < lim, "%s dist %d scale %g: relative RMS error %.5f >= %.5f", nm_type_name(ty),
                           dists[di], scale, rel, lim);
                }
            }
        }
    }
out:
    free(x);
    free(y);
    free(q);
}

/* The exact bytes of quantized all-zero blocks, as ggml writes them. */
static void test_zero_blocks(nm_test *t) {
    float x[64] = {0};
    uint8_t q[64 * 2];
    nm_err err = {0};
    /* Q4_0/Q5_0 compute d = max / -8 (or -16) with max = +0, so their d is
     * -0.0 (half 0x8000), as in llama.cpp's files. */
    struct { nm_type ty; size_t off; uint8_t fill; } c[] = {
        {NM_TYPE_Q8_0, 2, 0x00},  /* d = +0, q = 0                              */
        {NM_TYPE_Q4_0, 2, 0x88},  /* d = -0, id = 0: x0 + 8.5 -> 8 in each nibble */
        {NM_TYPE_Q4_1, 4, 0x00},  /* d = m = 0, q = 0                           */
        {NM_TYPE_Q5_0, 6, 0x00},  /* d = -0, q = 16: low nibbles 0, qh all ones */
        {NM_TYPE_Q5_1, 8, 0x00},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        const size_t bb = nm_type_block_bytes(c[i].ty);
        memset(q, 0x5a, sizeof q);
        nm_status st = nm_quantize(c[i].ty, x, q, 64, &err);
        if (!CHECK_OK(t, st, err)) continue;
        for (size_t k = 0; k < 2; k++) {
            const uint8_t *p = q + k * bb;
            const bool neg_d = c[i].ty == NM_TYPE_Q4_0 || c[i].ty == NM_TYPE_Q5_0;
            for (size_t j = 0; j < c[i].off; j++) {
                uint8_t want = c[i].ty == NM_TYPE_Q5_0 && j >= 2 ? 0xff : j == 1 && neg_d ? 0x80 : 0x00;
                CHECKF(t, p[j] == want, "%s byte %zu = 0x%02x, want 0x%02x", nm_type_name(c[i].ty), j, p[j], want);
            }
            for (size_t j = c[i].off; j < bb; j++)
                CHECKF(t, p[j] == c[i].fill, "%s byte %zu = 0x%02x", nm_type_name(c[i].ty), j, p[j]);
        }
    }
    /* -0.0 in every slot: still zero scales, and decoding gives +-0. */
    for (int i = 0; i < 64; i++) x[i] = -0.0f;
    CHECK_OK(t, nm_quantize(NM_TYPE_Q8_0, x, q, 64, &err), err);
    CHECK(t, q[0] == 0 && q[1] == 0);
}

/* Inputs that are not finite must not crash or trip the sanitizers (ggml's
 * casts are undefined there); the finite elements of a block with an
 * infinity decode to 0 and nothing is read or written out of bounds. */
static void test_nonfinite_inputs(nm_test *t) {
    float x[64];
    uint8_t q[64 * 2 + 8];
    float y[64];
    for (size_t ti = 0; ti < sizeof QTYPES / sizeof QTYPES[0]; ti++) {
        for (int i = 0; i < 64; i++) x[i] = (float)(i - 32) * 0.1f;
        x[3] = INFINITY;
        x[40] = NAN;
        x[41] = -INFINITY;
        memset(q, 0xee, sizeof q);
        nm_err err = {0};
        CHECK_OK(t, nm_quantize(QTYPES[ti], x, q, 64, &err), err);
        size_t used = 2 * nm_type_block_bytes(QTYPES[ti]);
        CHECKF(t, q[used] == 0xee, "%s wrote past its output", nm_type_name(QTYPES[ti]));
        CHECK_OK(t, nm_dequantize(QTYPES[ti], q, y, 64, &err), err);
    }
}

/* quantize(dequantize(b)) == b for blocks made by quantize: the decoded
 * block's largest element is exactly the extreme level times dh, so the
 * requantizer finds the same d and every value lands back on its level.
 * Holds for the symmetric types (not Q4_1/Q5_1, whose max - min is rounded)
 * as long as dh is not 0 (d below 2^-25). */
static void test_idempotence(nm_test *t) {
    const int64_t nblk = 2048, n = 32 * nblk;
    float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
    uint8_t *a = malloc((size_t)nblk * 34), *b = malloc((size_t)nblk * 34);
    if (!CHECK(t, x && y && a && b)) goto out;
    const nm_type types[] = {NM_TYPE_Q8_0, NM_TYPE_Q4_0, NM_TYPE_Q5_0};
    const double scales[] = {1e-3, 0.02, 1.0, 50.0};
    const int dists[] = {DIST_NORMAL, DIST_UNIFORM, DIST_OUTLIER, DIST_ZERO};
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t di = 0; di < 4; di++)
            for (size_t si = 0; si < 4; si++) {
                nm_rng r;
                nm_rng_seed(&r, 77 + 100 * ti + 10 * di + si);
                fill(x, n, &r, dists[di], scales[si]);
                nm_err err = {0};
                const size_t nb = (size_t)nblk * nm_type_block_bytes(types[ti]);
                CHECK_OK(t, nm_quantize(types[ti], x, a, n, &err), err);
                CHECK_OK(t, nm_dequantize(types[ti], a, y, n, &err), err);
                CHECK_OK(t, nm_quantize(types[ti], y, b, n, &err), err);
                if (memcmp(a, b, nb) != 0) {
                    size_t k = 0;
                    while (a[k] == b[k]) k++;
                    CHECKF(t, 0, "%s dist %d scale %g: requantized bytes differ at %zu", nm_type_name(types[ti]),
                           dists[di], scales[si], k);
                }
            }
out:
    free(x);
    free(y);
    free(a);
    free(b);
}

/* ======================================================================== */
/* Real files written by llama.cpp                                          */
/* ======================================================================== */

/* Row 6 (elements 1536..1791) of blk.0.attn_q.weight of the t256 model, as
 * the F16 values make_random_gguf.py wrote (seed 7) before llama.cpp
 * quantized them.  Four of its Q4_0 blocks have elements in the clamped
 * range (t > 7.5).  Checked against the files: our Q4_0 and Q8_0 of these
 * values must equal llama.cpp's bytes. */
static const uint16_t ATTN_Q_ROW6[256] = {
    0x206b, 0x9808, 0xa185, 0xa074, 0x14a1, 0x9081, 0x9f93, 0xa662, 0x2591, 0x27c1,
    0x2894, 0xa77d, 0x9e4b, 0x2477, 0x9ce5, 0xa825, 0xa84d, 0x1de8, 0x27ea, 0x27e8,
    0x284d, 0xa87a, 0x2305, 0x1cfe, 0x271a, 0xa62d, 0x1772, 0x9d8f, 0x1b71, 0xa126,
    0xa270, 0xa437, 0xa400, 0x99fc, 0x9afb, 0x1f63, 0xa5e3, 0x2284, 0x24ea, 0x0627,
    0x26e6, 0xa314, 0x1ca6, 0x99ec, 0xa95b, 0xa076, 0x990d, 0xa4d4, 0x2923, 0x94e7,
    0x2513, 0xa53e, 0x9c69, 0x9e51, 0xa005, 0xa42d, 0x1c48, 0x2195, 0xa745, 0x216e,
    0x24ed, 0xa470, 0x224f, 0x27b7, 0x9a6a, 0x269f, 0x26ad, 0x1bea, 0xa27c, 0xa2f4,
    0x2766, 0x15b3, 0xaa31, 0x1e3d, 0x230d, 0xa545, 0xa56e, 0x9b9a, 0x220d, 0xa330,
    0xa596, 0xa591, 0x2502, 0xa333, 0x24dd, 0x9e41, 0xa1fa, 0xa652, 0x1cfb, 0x1fa3,
    0x9d2b, 0xa38d, 0x211d, 0x1db3, 0x2016, 0x20c0, 0x9839, 0xa9c4, 0xa763, 0x23f0,
    0x96ab, 0x21e5, 0x24b8, 0x2999, 0xa0d1, 0x133f, 0xa55b, 0x9f74, 0x2465, 0x17d5,
    0xa0f1, 0xabb7, 0x25e0, 0x943d, 0xa107, 0x87de, 0xac37, 0xa56b, 0xa44b, 0x98ff,
    0xa8ba, 0xa493, 0x2968, 0x1e2b, 0x1ced, 0x1df4, 0xa428, 0xa48a, 0xa48e, 0x9780,
    0x201b, 0x1828, 0x9ee8, 0x2929, 0x281b, 0x9c0c, 0x1031, 0x80a3, 0xa484, 0xa548,
    0x18ed, 0x1df8, 0x1fcf, 0x9cc7, 0xa478, 0xa770, 0xa853, 0x9095, 0x20aa, 0x1b5b,
    0xa0cf, 0x26d1, 0xa415, 0xa7b8, 0xa591, 0xa62e, 0x2707, 0x255a, 0xa42a, 0x213e,
    0x1e52, 0x23f1, 0x2459, 0xaa75, 0x24b0, 0xa429, 0x9d18, 0x28c7, 0xa0db, 0x21fa,
    0x294a, 0x2690, 0x23ff, 0xa3a6, 0x1d63, 0xa2cd, 0x19b3, 0x9821, 0x2405, 0xa089,
    0x261d, 0xa580, 0x266e, 0x9f91, 0x2497, 0x1f0f, 0x9f71, 0x9d91, 0x9518, 0x22c8,
    0x246d, 0xa79b, 0xa30d, 0x2770, 0x187c, 0x2956, 0x1eb3, 0x223b, 0xa60d, 0xa276,
    0xa2fa, 0xa411, 0x1db8, 0x9a2f, 0x1cab, 0x2149, 0x1df7, 0x2528, 0x9d1a, 0xa2f8,
    0xa832, 0x241b, 0xa140, 0x271d, 0x10f6, 0xa1d1, 0x2376, 0x218a, 0xa181, 0xa30a,
    0x2287, 0xa290, 0x9dcc, 0xa538, 0x251c, 0x1ff6, 0x2299, 0x1965, 0x9aef, 0x2639,
    0xaa83, 0x93a5, 0x28d4, 0xa41f, 0x2636, 0x2246, 0x2172, 0xa9d2, 0xaadf, 0xa1d6,
    0xa3ac, 0x2653, 0x13a7, 0x9c8d, 0xa829, 0x2561, 0xa106, 0x259d, 0x1f0b, 0xa671,
    0x24d4, 0x2af8, 0xa4b7, 0x1243, 0xa63f, 0xa063,
};

static nm_gguf *open_model(nm_test *t, const char *rel) {
    const char *path = nm_test_shared(rel);
    if (!CHECKF(t, nm_test_file_exists(path), "missing fixture %s", path)) return NULL;
    nm_gguf *g = NULL;
    nm_err err = {0};
    nm_status st = nm_gguf_open(path, &g, &err);
    if (!CHECK_OK(t, st, err)) return NULL;
    return g;
}

static int64_t n_elements(const nm_gguf_tensor *tn) {
    int64_t n = 1;
    for (int d = 0; d < NM_GGUF_MAX_DIMS; d++) n *= tn->ne[d];
    return n;
}

/* Dequantizes a whole tensor into a malloc()ed array (NULL on failure). */
static float *tensor_f32(nm_test *t, const nm_gguf_tensor *tn) {
    const int64_t n = n_elements(tn);
    float *x = malloc((size_t)n * sizeof(float));
    if (!CHECK(t, x != NULL)) return NULL;
    nm_err err = {0};
    nm_status st = nm_dequantize((nm_type)tn->type, tn->data, x, n, &err);
    if (!CHECKF(t, st == NM_OK, "%s: %s", tn->name, err.msg)) {
        free(x);
        return NULL;
    }
    return x;
}

static void test_llamacpp_row_bytes(nm_test *t) {
    float x[256];
    for (int i = 0; i < 256; i++) x[i] = nm_f16_to_f32(ATTN_Q_ROW6[i]);
    const int64_t first = 6 * 256; /* element offset of the row */
    struct { const char *file; nm_type ty; } q[] = {
        {"models/t256-q8_0.gguf", NM_TYPE_Q8_0},
        {"models/t256-q4_0.gguf", NM_TYPE_Q4_0},
    };
    for (size_t i = 0; i < 2; i++) {
        nm_gguf *g = open_model(t, q[i].file);
        if (!g) continue;
        const nm_gguf_tensor *tn = nm_gguf_find_tensor(g, "blk.0.attn_q.weight");
        if (CHECK(t, tn && tn->type == (uint32_t)q[i].ty && tn->ne[0] == 256)) {
            uint8_t mine[8 * 34];
            nm_err err = {0};
            CHECK_OK(t, nm_quantize(q[i].ty, x, mine, 256, &err), err);
            const size_t nb = nm_type_row_bytes(q[i].ty, 256);
            const uint8_t *theirs = (const uint8_t *)tn->data + nm_type_row_bytes(q[i].ty, first);
            CHECKF(t, memcmp(mine, theirs, nb) == 0, "%s: our %s bytes differ from llama.cpp's", q[i].file,
                   nm_type_name(q[i].ty));
        }
        nm_gguf_free(g);
    }
    /* The K-quant files hold the same row; decoded, it must be close to the
     * F16 source (measured: Q6_K 1.8%, Q4_K 7.1% relative RMS over the whole
     * model), and far from it if the layout were misread. */
    struct { const char *file; nm_type ty; double lim; } k[] = {
        {"models/t256-q6_k.gguf", NM_TYPE_Q6_K, 0.03},
        {"models/t256-q4_k_m.gguf", NM_TYPE_Q4_K, 0.10},
    };
    for (size_t i = 0; i < 2; i++) {
        nm_gguf *g = open_model(t, k[i].file);
        if (!g) continue;
        const nm_gguf_tensor *tn = nm_gguf_find_tensor(g, "blk.0.attn_q.weight");
        if (CHECK(t, tn && tn->type == (uint32_t)k[i].ty && tn->ne[0] == 256)) {
            float y[256];
            nm_err err = {0};
            const uint8_t *row = (const uint8_t *)tn->data + nm_type_row_bytes(k[i].ty, first);
            CHECK_OK(t, nm_dequantize(k[i].ty, row, y, 256, &err), err);
            double se = 0, sx = 0;
            for (int j = 0; j < 256; j++) {
                se += ((double)y[j] - x[j]) * ((double)y[j] - x[j]);
                sx += (double)x[j] * x[j];
            }
            CHECKF(t, sqrt(se / sx) < k[i].lim, "%s: row 6 relative RMS error %.4f", k[i].file, sqrt(se / sx));
        }
        nm_gguf_free(g);
    }
}

/* Relative RMS difference to the Q8_0 file's tensor, per type of the other
 * file's tensor.  Q8_0 itself is 0.53% away from the F16 source, so the
 * difference is about the other type's own error (against the source:
 * Q6_K 1.78%, Q4_K 7.1%, Q4_0 8.6%).  Measured on every 2-D tensor of the
 * four files (min..max): Q6_K 0.0185..0.0187, Q4_K 0.0711..0.0721, Q4_0
 * 0.0857..0.0869.  Upper limits leave ~25% margin (a misread scale or bit
 * plane gives tens of percent); lower limits catch a test that compares a
 * file with itself or reads the wrong tensor. */
static bool diff_limits(uint32_t ty, double *lo, double *hi) {
    switch (ty) {
    case NM_TYPE_Q6_K: *lo = 0.010; *hi = 0.025; return true;
    case NM_TYPE_Q4_K: *lo = 0.040; *hi = 0.090; return true;
    case NM_TYPE_Q4_0: *lo = 0.050; *hi = 0.110; return true;
    default: return false;
    }
}

static void test_llamacpp_files(nm_test *t) {
    nm_gguf *ref = open_model(t, "models/t256-q8_0.gguf");
    if (!ref) return;
    const char *files[] = {"models/t256-q8_0.gguf", "models/t256-q4_0.gguf", "models/t256-q6_k.gguf",
                           "models/t256-q4_k_m.gguf"};
    bool seen[NM_TYPE_COUNT] = {false};
    const bool verbose = getenv("NM_TEST_VERBOSE") != NULL;
    for (size_t fi = 0; fi < sizeof files / sizeof files[0]; fi++) {
        nm_gguf *g = open_model(t, files[fi]);
        if (!g) continue;
        const int64_t nt = nm_gguf_n_tensors(g);
        CHECKF(t, nt == 21, "%s: %lld tensors", files[fi], (long long)nt);
        for (int64_t ti = 0; ti < nt; ti++) {
            const nm_gguf_tensor *tn = nm_gguf_tensor_at(g, ti);
            if (!CHECK(t, tn != NULL)) continue;
            if (tn->type < NM_TYPE_COUNT) seen[tn->type] = true;
            const int64_t n = n_elements(tn);
            if (!CHECKF(t, nm_type_can_dequantize((nm_type)tn->type), "%s: %s has type %u", files[fi], tn->name,
                        tn->type))
                continue;
            CHECKF(t, tn->nbytes == nm_type_row_bytes((nm_type)tn->type, tn->ne[0]) * (uint64_t)(n / tn->ne[0]),
                   "%s: %s nbytes %llu", files[fi], tn->name, (unsigned long long)tn->nbytes);
            float *x = tensor_f32(t, tn);
            if (!x) continue;
            /* Statistics: 2-D weights ~ N(0, 0.02^2), norms 1 + 0.1 N(0,1). */
            double s = 0, s2 = 0;
            int64_t nonfinite = 0;
            for (int64_t i = 0; i < n; i++) {
                if (!isfinite(x[i])) nonfinite++;
                s += x[i];
                s2 += (double)x[i] * x[i];
            }
            const double mean = s / n, sd = sqrt(s2 / n - mean * mean);
            CHECKF(t, nonfinite == 0, "%s: %s has %lld non-finite values", files[fi], tn->name, (long long)nonfinite);
            if (tn->n_dims == 2) {
                CHECKF(t, fabs(mean) < 0.002 && sd > 0.018 && sd < 0.022, "%s: %s mean %.5f std %.5f", files[fi],
                       tn->name, mean, sd);
            } else {
                CHECKF(t, tn->type == NM_TYPE_F32 && fabs(mean - 1) < 0.03 && sd > 0.07 && sd < 0.13,
                       "%s: %s type %u mean %.5f std %.5f", files[fi], tn->name, tn->type, mean, sd);
            }
            /* Against the Q8_0 file's copy of the same tensor. */
            const nm_gguf_tensor *rt = nm_gguf_find_tensor(ref, tn->name);
            if (CHECKF(t, rt && n_elements(rt) == n && rt->ne[0] == tn->ne[0], "%s: %s not in the Q8_0 file",
                       files[fi], tn->name)) {
                float *r = tensor_f32(t, rt);
                if (r) {
                    double se = 0, sr = 0;
                    for (int64_t i = 0; i < n; i++) {
                        se += ((double)x[i] - r[i]) * ((double)x[i] - r[i]);
                        sr += (double)r[i] * r[i];
                    }
                    const double rel = sqrt(se / sr);
                    double lo, hi;
                    if (verbose) printf("  %s %-26s %-5s rel diff %.5f\n", files[fi], tn->name, nm_type_name(tn->type), rel);
                    if (tn->type == NM_TYPE_F32 || tn->type == NM_TYPE_Q8_0)
                        CHECKF(t, se == 0, "%s: %s differs from the Q8_0 file's (%.3g)", files[fi], tn->name, rel);
                    else if (diff_limits(tn->type, &lo, &hi))
                        CHECKF(t, rel > lo && rel < hi, "%s: %s (%s) relative RMS difference %.5f not in (%.3f, %.3f)",
                               files[fi], tn->name, nm_type_name(tn->type), rel, lo, hi);
                    else
                        CHECKF(t, 0, "%s: %s has unexpected type %s", files[fi], tn->name, nm_type_name(tn->type));
                    free(r);
                }
            }
            /* Requantizing llama.cpp's Q8_0 and Q4_0 tensors reproduces their
             * bytes (our quantizer applied to their decoded blocks). */
            if (tn->type == NM_TYPE_Q8_0 || tn->type == NM_TYPE_Q4_0) {
                uint8_t *q = malloc(tn->nbytes);
                nm_err err = {0};
                if (CHECK(t, q != NULL) && CHECK_OK(t, nm_quantize((nm_type)tn->type, x, q, n, &err), err))
                    CHECKF(t, memcmp(q, tn->data, tn->nbytes) == 0, "%s: requantized %s differs from the file",
                           files[fi], tn->name);
                free(q);
            }
            free(x);
        }
        nm_gguf_free(g);
    }
    nm_gguf_free(ref);
    const nm_type want[] = {NM_TYPE_F32, NM_TYPE_Q8_0, NM_TYPE_Q4_0, NM_TYPE_Q6_K, NM_TYPE_Q4_K};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECKF(t, seen[want[i]], "no %s tensor in the files", nm_type_name(want[i]));
}

int main(void) {
    nm_test_run("type_sizes", test_type_sizes);
    nm_test_run("type_names", test_type_names);
    nm_test_run("row_bytes", test_row_bytes);
    nm_test_run("convert_api", test_convert_api);
    nm_test_run("f16_exhaustive", test_f16_exhaustive);
    nm_test_run("f16_rounding_all_midpoints", test_f16_rounding_all_midpoints);
    nm_test_run("f16_cases", test_f16_cases);
    nm_test_run("bf16", test_bf16);
    nm_test_run("block_q4_0", test_block_q4_0);
    nm_test_run("block_q4_1", test_block_q4_1);
    nm_test_run("block_q5_0", test_block_q5_0);
    nm_test_run("block_q5_1", test_block_q5_1);
    nm_test_run("block_q8_0", test_block_q8_0);
    nm_test_run("block_q4_k", test_block_q4_k);
    nm_test_run("block_q5_k", test_block_q5_k);
    nm_test_run("block_q6_k", test_block_q6_k);
    nm_test_run("block_q8_k", test_block_q8_k);
    nm_test_run("roundtrip_random", test_roundtrip_random);
    nm_test_run("zero_blocks", test_zero_blocks);
    nm_test_run("nonfinite_inputs", test_nonfinite_inputs);
    nm_test_run("idempotence", test_idempotence);
    nm_test_run("llamacpp_row_bytes", test_llamacpp_row_bytes);
    nm_test_run("llamacpp_files", test_llamacpp_files);
    return nm_test_finish();
}
