/* types.c - the type-traits table and the scalar half-precision conversions.
 *
 * The table is the single place that knows block sizes and conversion
 * functions; sizes match ggml's block structs byte for byte (see quants.h). */
#include "types.h"
#include "quants.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

/* IEEE half <-> float, round to nearest even, exactly as ggml's scalar path
 * (so F16 files we write are identical to llama.cpp's). */
float nm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while ((man & 0x400) == 0);
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + (127 - 15)) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t nm_f32_to_f16(float f) {
    /* Branch-free rounding of Maratea/ggml fp32_to_fp16 (round half to even). */
    uint32_t w;
    memcpy(&w, &f, 4);
    const float scale_to_inf = 0x1.0p+112f;
    const float scale_to_zero = 0x1.0p-110f;
    float af = f < 0 ? -f : f;
    float base = (af * scale_to_inf) * scale_to_zero;
    uint32_t shl1_w = w + w;
    uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xff000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    uint32_t bb = (bias >> 1) + 0x07800000u;
    float bf;
    memcpy(&bf, &bb, 4);
    base = bf + base;
    uint32_t bits;
    memcpy(&bits, &base, 4);
    uint32_t exp_bits = (bits >> 13) & 0x00007c00u;
    uint32_t mantissa_bits = bits & 0x00000fffu;
    uint32_t nonsign = exp_bits + mantissa_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xff000000u ? 0x7e00u : nonsign));
}

float nm_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t nm_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64); /* quiet NaN */
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

static void f32_to_float(const void *src, float *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}
static void f32_from_float(const float *src, void *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}
static void f16_to_float(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) dst[i] = nm_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
}
static void f16_from_float(const float *src, void *dst, int64_t n) {
    uint8_t *p = dst;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h = nm_f32_to_f16(src[i]);
        p[2 * i] = (uint8_t)h;
        p[2 * i + 1] = (uint8_t)(h >> 8);
    }
}
static void bf16_to_float(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) dst[i] = nm_bf16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
}
static void bf16_from_float(const float *src, void *dst, int64_t n) {
    uint8_t *p = dst;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h = nm_f32_to_bf16(src[i]);
        p[2 * i] = (uint8_t)h;
        p[2 * i + 1] = (uint8_t)(h >> 8);
    }
}

/* One row per type.  Rows without functions are types nomoat can size, read
 * and copy but not compute with. */
static const nm_type_traits TRAITS[NM_TYPE_COUNT] = {
    [NM_TYPE_F32] = {"f32", 1, 4, false, f32_to_float, f32_from_float},
    [NM_TYPE_F16] = {"f16", 1, 2, false, f16_to_float, f16_from_float},
    [NM_TYPE_BF16] = {"bf16", 1, 2, false, bf16_to_float, bf16_from_float},
    [NM_TYPE_Q4_0] = {"q4_0", 32, 18, true, nm_dequant_q4_0, nm_quant_q4_0},
    [NM_TYPE_Q4_1] = {"q4_1", 32, 20, true, nm_dequant_q4_1, nm_quant_q4_1},
    [NM_TYPE_Q5_0] = {"q5_0", 32, 22, true, nm_dequant_q5_0, nm_quant_q5_0},
    [NM_TYPE_Q5_1] = {"q5_1", 32, 24, true, nm_dequant_q5_1, nm_quant_q5_1},
    [NM_TYPE_Q8_0] = {"q8_0", 32, 34, true, nm_dequant_q8_0, nm_quant_q8_0},
    [NM_TYPE_Q8_1] = {"q8_1", 32, 36, true, NULL, NULL},
    [NM_TYPE_Q2_K] = {"q2_k", 256, 84, true, NULL, NULL},
    [NM_TYPE_Q3_K] = {"q3_k", 256, 110, true, NULL, NULL},
    [NM_TYPE_Q4_K] = {"q4_k", 256, 144, true, nm_dequant_q4_k, nm_quant_q4_k},
    [NM_TYPE_Q5_K] = {"q5_k", 256, 176, true, nm_dequant_q5_k, nm_quant_q5_k},
    [NM_TYPE_Q6_K] = {"q6_k", 256, 210, true, nm_dequant_q6_k, nm_quant_q6_k},
    [NM_TYPE_Q8_K] = {"q8_k", 256, 292, true, nm_dequant_q8_k, NULL},
    [NM_TYPE_I8] = {"i8", 1, 1, false, NULL, NULL},
    [NM_TYPE_I16] = {"i16", 1, 2, false, NULL, NULL},
    [NM_TYPE_I32] = {"i32", 1, 4, false, NULL, NULL},
    [NM_TYPE_I64] = {"i64", 1, 8, false, NULL, NULL},
    [NM_TYPE_F64] = {"f64", 1, 8, false, NULL, NULL},
};

const nm_type_traits *nm_type_traits_get(uint32_t t) {
    if (t >= NM_TYPE_COUNT || !TRAITS[t].name) return NULL;
    return &TRAITS[t];
}

bool nm_type_known(uint32_t t) { return nm_type_traits_get(t) != NULL; }

const char *nm_type_name(uint32_t t) {
    const nm_type_traits *tr = nm_type_traits_get(t);
    return tr ? tr->name : NULL;
}

int nm_type_from_name(const char *name) {
    for (int t = 0; t < NM_TYPE_COUNT; t++)
        if (TRAITS[t].name && strcasecmp(TRAITS[t].name, name) == 0) return t;
    return -1;
}

int64_t nm_type_block_size(nm_type t) {
    const nm_type_traits *tr = nm_type_traits_get(t);
    return tr ? tr->blck_size : 0;
}

size_t nm_type_block_bytes(nm_type t) {
    const nm_type_traits *tr = nm_type_traits_get(t);
    return tr ? tr->type_size : 0;
}

size_t nm_type_row_bytes(nm_type t, int64_t n) {
    const nm_type_traits *tr = nm_type_traits_get(t);
    if (!tr || n < 0 || n % tr->blck_size != 0) return 0;
    uint64_t r;
    if (__builtin_mul_overflow((uint64_t)(n / tr->blck_size), (uint64_t)tr->type_size, &r) || r > SIZE_MAX) return 0;
    return (size_t)r;
}

bool nm_type_can_dequantize(nm_type t) {
    const nm_type_traits *tr = nm_type_traits_get(t);
    return tr && tr->to_float;
}

bool nm_type_can_quantize(nm_type t) {
    const nm_type_traits *tr = nm_type_traits_get(t);
    return tr && tr->from_float;
}

nm_status nm_dequantize(nm_type t, const void *src, float *dst, int64_t n, nm_err *err) {
    const nm_type_traits *tr = nm_type_traits_get(t);
    if (!tr || !tr->to_float)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "cannot dequantize type %s",
                          tr ? tr->name : "(unknown)");
    if (n < 0 || n % tr->blck_size)
        return nm_err_set(err, NM_ERR_ARG, "%lld elements is not a multiple of the %s block size %lld",
                          (long long)n, tr->name, (long long)tr->blck_size);
    tr->to_float(src, dst, n);
    return NM_OK;
}

nm_status nm_quantize(nm_type t, const float *src, void *dst, int64_t n, nm_err *err) {
    const nm_type_traits *tr = nm_type_traits_get(t);
    if (!tr || !tr->from_float)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "cannot quantize to type %s",
                          tr ? tr->name : "(unknown)");
    if (n < 0 || n % tr->blck_size)
        return nm_err_set(err, NM_ERR_ARG, "%lld elements is not a multiple of the %s block size %lld",
                          (long long)n, tr->name, (long long)tr->blck_size);
    tr->from_float(src, dst, n);
    return NM_OK;
}
