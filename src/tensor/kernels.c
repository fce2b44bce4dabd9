/* kernels.c - scalar dot-product kernels, one per weight type (see kernels.h).
 *
 * Weight blocks come straight from the file mapping, so they are read through
 * byte pointers at the ggml block offsets (see quants.h for the layouts); the
 * int8 quants are read as signed chars, which is well defined for any
 * alignment.  Each kernel first forms an exact integer dot product per block
 * (or sub-block) and applies the float scales once per block: that is both
 * llama.cpp's arithmetic and the shape a SIMD version will keep.
 *
 * The loops are plain and fixed-length so the compiler can vectorise them.
 * These are the reference the SIMD levels (kernels_avx2.c, kernels_avx512.c,
 * kernels_neon.c) are tested against; this file also holds the activation
 * conversions, instruction-set detection and the dispatch tables. */
#include "kernels.h"
#include "kernels_impl.h"
#include "ops.h"
#include "quants.h"
#include "types.h"
#include "base/base.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define NM_X86 1
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#define NM_ARM64 1
#endif

/* ---- scalar helpers ---- */

static inline float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline uint32_t f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

float nm_kernel_f16_to_f32(uint16_t h) { return nm_half_to_f32(h); }

static inline float rd_half(const uint8_t *p) { return nm_half_to_f32(nm_rd_u16(p)); }
static inline float rd_f32(const uint8_t *p) { return bits_to_f32(nm_rd_u32(p)); }
static inline int rd_i16(const uint8_t *p) { return (int)(int16_t)nm_rd_u16(p); }
/* Activation blocks are written little-endian too, like the stored blocks. */
static inline void wr_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void wr_f32(uint8_t *p, float f) {
    const uint32_t u = f32_to_bits(f);
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(u >> (8 * i));
}

/* ====================================================================== */
/* float weights x float activations                                      */
/* ====================================================================== */
/* Products are formed in float (exact for F16 x F16 and BF16 x BF16) and
 * summed in double, as ggml's reference path does: the result is close to
 * the exact dot product rounded once, whatever the summation order, which
 * is what lets the golden logits be matched to 1e-5.  F16 and BF16 weights
 * meet activations rounded to their own type, as in llama.cpp. */

static inline float rd_bf16(const uint8_t *p) { return bits_to_f32((uint32_t)nm_rd_u16(p) << 16); }

static float dot_f32(int64_t n, const void *w_, const void *x_) {
    const uint8_t *w = w_;
    const float *x = x_;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += rd_f32(w + 4 * i) * x[i];
    return (float)sum;
}

static float dot_f16(int64_t n, const void *w_, const void *x_) {
    const uint8_t *w = w_, *x = x_;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += rd_half(w + 2 * i) * rd_half(x + 2 * i);
    return (float)sum;
}

static float dot_bf16(int64_t n, const void *w_, const void *x_) {
    const uint8_t *w = w_, *x = x_;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += rd_bf16(w + 2 * i) * rd_bf16(x + 2 * i);
    return (float)sum;
}

/* ====================================================================== */
/* 32-element blocks x Q8_0 / Q8_1 activations                            */
/* ====================================================================== */

enum { Q8_0_BYTES = sizeof(nm_block_q8_0), Q8_1_BYTES = sizeof(nm_block_q8_1) };

/* Sum of w[i] * x[i], i < n.  The weight quants are unpacked into int16
 * first: with one operand already 16-bit, compilers turn this loop into
 * 16-bit multiply-add-pairs (SSE2 pmaddwd, NEON smlal), about 1.5x faster
 * than multiplying two int8 streams. */
static inline int32_t isum16(const int16_t *w, const int8_t *x, int n) {
    int32_t s = 0;
    for (int i = 0; i < n; i++) s += w[i] * (int16_t)x[i];
    return s;
}

static float dot_q8_0(int64_t n, const void *w_, const void *x_) {
    const uint8_t *w = w_, *x = x_;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 32; b++, w += sizeof(nm_block_q8_0), x += Q8_0_BYTES) {
        const int8_t *wq = (const int8_t *)(w + offsetof(nm_block_q8_0, qs));
        const int8_t *xq = (const int8_t *)(x + offsetof(nm_block_q8_0, qs));
        int16_t q[32];
        for (int j = 0; j < 32; j++) q[j] = wq[j];
        sum += (float)isum16(q, xq, 32) * (rd_half(w) * rd_half(x));
    }
    return sum;
}

static float dot_q4_0(int64_t n, const void *w_, const void *x_) {
    const uint8_t *w = w_, *x = x_;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 32; b++, w += sizeof(nm_block_q4_0), x += Q8_0_BYTES) {
        const uint8_t *qs = w + offsetof(nm_block_q4_0, qs);
        const int8_t *xq = (const int8_t *)(x + offsetof(nm_block_q8_0, qs));
        int16_t q[32];
        for (int j = 0; j < 16; j++) {
            q[j] = (int16_t)((qs[j] & 0x0f) - 8);
            q[j + 16] = (int16_t)((qs[j] >> 4) - 8);
        }
        sum += (float)isum16(q, xq, 32) * (rd_half(w) * rd_half(x));
    }
    return sum;
}

static float dot_q4_1(int64_t n, const void *w_, const void *x_) {
    const uint8_t *w = w_, *x = x_;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 32; b++, w += sizeof(nm_block_q4_1), x += Q8_1_BYTES) {
        const uint8_t *qs = w + offsetof(nm_block_q4_1, qs);
        const int8_t *xq = (const int8_t *)(x + offsetof(nm_block_q8_1, qs));
        int16_t q[32];
        for (int j = 0; j < 16; j++) {
            q[j] = (int16_t)(qs[j] & 0x0f);
            q[j + 16] = (int16_t)(qs[j] >> 4);
        }
        /* value = d*q + m, so the block adds dw*dx*isum + m * (dx * sum xq) */
        sum += (float)isum16(q, xq, 32) * (rd_half(w) * rd_half(x)) +
               rd_half(w + offsetof(nm_block_q4_1, m)) * rd_half(x + offsetof(nm_block_q8_1, s));
    }
    return sum;
}

static float dot_q5_0(int64_t n, const void *w_, const void *x_) {
    const uint8_t *w = w_, *x = x_;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 32; b++, w += sizeof(nm_block_q5_0), x += Q8_0_BYTES) {
        const uint32_t qh = nm_rd_u32(w + offsetof(nm_block_q5_0, qh));
        const uint8_t *qs = w + offsetof(nm_block_q5_0, qs);
        const int8_t *xq = (const int8_t *)(x + offsetof(nm_block_q8_0, qs));
        int16_t q[32];
        for (int j = 0; j < 16; j++) {
            q[j] = (int16_t)((int)((qs[j] & 0x0fu) | ((qh >> j) & 1u) << 4) - 16);
            q[j + 16] = (int16_t)((int)((unsigned)(qs[j] >> 4) | ((qh >> (j + 16)) & 1u) << 4) - 16);
        }
        sum += (float)isum16(q, xq, 32) * (rd_half(w) * rd_half(x));
    }
    return sum;
}

static float dot_q5_1(int64_t n, const void *w_, const void *x_) {
    const uint8_t *w = w_, *x = x_;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 32; b++, w += sizeof(nm_block_q5_1), x += Q8_1_BYTES) {
        const uint32_t qh = nm_rd_u32(w + offsetof(nm_block_q5_1, qh));
        const uint8_t *qs = w + offsetof(nm_block_q5_1, qs);
        const int8_t *xq = (const int8_t *)(x + offsetof(nm_block_q8_1, qs));
        int16_t q[32];
        for (int j = 0; j < 16; j++) {
            q[j] = (int16_t)((qs[j] & 0x0fu) | ((qh >> j) & 1u) << 4);
            q[j + 16] = (int16_t)((unsigned)(qs[j] >> 4) | ((qh >> (j + 16)) & 1u) << 4);
        }
        sum += (float)isum16(q, xq, 32) * (rd_half(w) * rd_half(x)) +
               rd_half(w + offsetof(nm_block_q5_1, m)) * rd_half(x + offsetof(nm_block_q8_1, s));
    }
    return sum;
}

/* ====================================================================== */
/* K-quants x Q8_K activations                                            */
/* ====================================================================== */

/* The 6-bit scale and min of sub-block j (see quants.c for the packing). */
static inline void scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | (q[j - 4] >> 6) << 4;
        *m = (q[j + 4] >> 4) | (q[j] >> 6) << 4;
    }
}

/* Sum of the Q8_K quants of sub-block j of 32 (from the 16 partial sums). */
static inline int q8k_bsum32(const uint8_t *x, int j) {
    const uint8_t *bs = x + offsetof(nm_block_q8_k, bsums);
    return rd_i16(bs + 2 * (2 * j)) + rd_i16(bs + 2 * (2 * j + 1));
}

/* Q4_K: value = d*sc*q - dmin*m, so a sub-block contributes
 * d*dx*sc*sum(q*xq) - dmin*dx*m*sum(xq); sum(xq) comes from bsums. */
static float dot_q4_k(int64_t n, const void *w_, const void *x_) {
    const uint8_t *w = w_, *x = x_;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / NM_QK_K; b++, w += sizeof(nm_block_q4_k), x += sizeof(nm_block_q8_k)) {
        const uint8_t *scales = w + offsetof(nm_block_q4_k, scales);
        const uint8_t *q = w + offsetof(nm_block_q4_k, qs);
        const int8_t *xq = (const int8_t *)(x + offsetof(nm_block_q8_k, qs));
        int32_t sumi = 0, summ = 0;
        for (int g = 0; g < 4; g++, q += 32, xq += 64) {
            int sc0, m0, sc1, m1;
            scale_min_k4(2 * g, scales, &sc0, &m0);
            scale_min_k4(2 * g + 1, scales, &sc1, &m1);
            int16_t u[64];
            for (int l = 0; l < 32; l++) {
                u[l] = (int16_t)(q[l] & 0x0f);
                u[l + 32] = (int16_t)(q[l] >> 4);
            }
            sumi += sc0 * isum16(u, xq, 32) + sc1 * isum16(u + 32, xq + 32, 32);
            summ += m0 * q8k_bsum32(x, 2 * g) + m1 * q8k_bsum32(x, 2 * g + 1);
        }
        const float dx = rd_f32(x + offsetof(nm_block_q8_k, d));
        sum += rd_half(w + offsetof(nm_block_q4_k, d)) * dx * (float)sumi -
               rd_half(w + offsetof(nm_block_q4_k, dmin)) * dx * (float)summ;
    }
    return sum;
}

static float dot_q5_k(int64_t n, const void *w_, const void *x_) {
    const uint8_t *w = w_, *x = x_;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / NM_QK_K; b++, w += sizeof(nm_block_q5_k), x += sizeof(nm_block_q8_k)) {
        const uint8_t *scales = w + offsetof(nm_block_q5_k, scales);
        const uint8_t *qh = w + offsetof(nm_block_q5_k, qh);
        const uint8_t *q = w + offsetof(nm_block_q5_k, qs);
        const int8_t *xq = (const int8_t *)(x + offsetof(nm_block_q8_k, qs));
        int32_t sumi = 0, summ = 0;
        for (int g = 0; g < 4; g++, q += 32, xq += 64) {
            int sc0, m0, sc1, m1;
            scale_min_k4(2 * g, scales, &sc0, &m0);
            scale_min_k4(2 * g + 1, scales, &sc1, &m1);
            const int sh0 = 2 * g, sh1 = 2 * g + 1;
            int16_t u[64];
            for (int l = 0; l < 32; l++) {
                u[l] = (int16_t)((q[l] & 0x0fu) | ((qh[l] >> sh0) & 1u) << 4);
                u[l + 32] = (int16_t)((unsigned)(q[l] >> 4) | ((qh[l] >> sh1) & 1u) << 4);
            }
            sumi += sc0 * isum16(u, xq, 32) + sc1 * isum16(u + 32, xq + 32, 32);
            summ += m0 * q8k_bsum32(x, 2 * g) + m1 * q8k_bsum32(x, 2 * g + 1);
        }
        const float dx = rd_f32(x + offsetof(nm_block_q8_k, d));
        sum += rd_half(w + offsetof(nm_block_q5_k, d)) * dx * (float)sumi -
               rd_half(w + offsetof(nm_block_q5_k, dmin)) * dx * (float)summ;
    }
    return sum;
}

/* Q6_K: value = d*sc*(q-32) with 16 signed scales of 16 elements.  Each half
 * of 128 is unpacked first (the packing interleaves four 32-element runs),
 * then multiplied sub-block by sub-block. */
static float dot_q6_k(int64_t n, const void *w_, const void *x_) {
    const uint8_t *w = w_, *x = x_;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / NM_QK_K; b++, w += sizeof(nm_block_q6_k), x += sizeof(nm_block_q8_k)) {
        const uint8_t *ql = w + offsetof(nm_block_q6_k, ql);
        const uint8_t *qh = w + offsetof(nm_block_q6_k, qh);
        const int8_t *sc = (const int8_t *)(w + offsetof(nm_block_q6_k, scales));
        const int8_t *xq = (const int8_t *)(x + offsetof(nm_block_q8_k, qs));
        int32_t sumi = 0;
        for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, xq += 128) {
            int16_t q[128];
            for (int l = 0; l < 32; l++) {
                q[l + 0] = (int16_t)((int)((ql[l] & 0x0fu) | (qh[l] & 3u) << 4) - 32);
                q[l + 32] = (int16_t)((int)((ql[l + 32] & 0x0fu) | ((qh[l] >> 2) & 3u) << 4) - 32);
                q[l + 64] = (int16_t)((int)((unsigned)(ql[l] >> 4) | ((qh[l] >> 4) & 3u) << 4) - 32);
                q[l + 96] = (int16_t)((int)((unsigned)(ql[l + 32] >> 4) | ((qh[l] >> 6) & 3u) << 4) - 32);
            }
            for (int s = 0; s < 8; s++) sumi += sc[s] * isum16(q + 16 * s, xq + 16 * s, 16);
        }
        sum += rd_half(w + offsetof(nm_block_q6_k, d)) * rd_f32(x + offsetof(nm_block_q8_k, d)) * (float)sumi;
    }
    return sum;
}

/* ====================================================================== */
/* activation quantizers                                                  */
/* ====================================================================== */

static inline int8_t clamp_i8(long v) { return (int8_t)(v < -128 ? -128 : v > 127 ? 127 : v); }

void nm_quant_q8_1(const float *x, void *dst, int64_t n) {
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / 32; i++, b += Q8_1_BYTES, x += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int8_t *qs = (int8_t *)(b + offsetof(nm_block_q8_1, qs));
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            const float v = x[j] * id;
            qs[j] = clamp_i8(v == v ? lroundf(v) : 0);
            sum += qs[j];
        }
        wr_u16(b + offsetof(nm_block_q8_1, d), nm_f32_to_f16(d));
        wr_u16(b + offsetof(nm_block_q8_1, s), nm_f32_to_f16((float)sum * d));
    }
}

/* Q8_K: the element of largest magnitude maps to -127 (scale -127/max), so
 * the sign of d follows it; rounding to nearest even; 16 partial sums. */
void nm_quant_q8_k(const float *x, void *dst, int64_t n) {
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / NM_QK_K; i++, b += sizeof(nm_block_q8_k), x += NM_QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < NM_QK_K; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        int8_t *qs = (int8_t *)(b + offsetof(nm_block_q8_k, qs));
        float d = 0.0f;
        if (amax == 0.0f || !isfinite(amax)) {
            memset(qs, 0, NM_QK_K);
        } else {
            const float iscale = -127.0f / max;
            for (int j = 0; j < NM_QK_K; j++) {
                const float v = iscale * x[j];
                qs[j] = clamp_i8(v == v ? lrintf(v) : 0);
            }
            d = 1.0f / iscale;
        }
        for (int s = 0; s < NM_QK_K / 16; s++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += qs[16 * s + l];
            wr_u16(b + offsetof(nm_block_q8_k, bsums) + 2 * s, (uint16_t)sum);
        }
        wr_f32(b + offsetof(nm_block_q8_k, d), d);
    }
}

static void quant_q8_0(const float *x, void *dst, int64_t n) { nm_quant_q8_0(x, dst, n); }

size_t nm_act_row_bytes(nm_type act_type, int64_t n) {
    switch (act_type) {
    case NM_TYPE_F32: return n >= 0 ? (size_t)n * sizeof(float) : 0;
    case NM_TYPE_F16:
    case NM_TYPE_BF16:
    case NM_TYPE_Q8_0:
    case NM_TYPE_Q8_1:
    case NM_TYPE_Q8_K: return nm_type_row_bytes(act_type, n);
    default: return 0;
    }
}

void nm_act_from_float(nm_type act_type, const float *x, void *dst, int64_t n) {
    switch (act_type) {
    case NM_TYPE_F32: memcpy(dst, x, (size_t)n * sizeof(float)); break;
    case NM_TYPE_F16:
        for (int64_t i = 0; i < n; i++) wr_u16((uint8_t *)dst + 2 * i, nm_f32_to_f16(x[i]));
        break;
    case NM_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) wr_u16((uint8_t *)dst + 2 * i, nm_f32_to_bf16(x[i]));
        break;
    case NM_TYPE_Q8_0: quant_q8_0(x, dst, n); break;
    case NM_TYPE_Q8_1: nm_quant_q8_1(x, dst, n); break;
    case NM_TYPE_Q8_K: nm_quant_q8_k(x, dst, n); break;
    default: break;
    }
}

/* ====================================================================== */
/* activation side data                                                   */
/* ====================================================================== */

size_t nm_act_extra_bytes(nm_type act_type, int64_t n) {
    if (n < 0) return 0;
    switch (act_type) {
    case NM_TYPE_Q8_0: return (size_t)(n / 32) * (sizeof(float) + sizeof(int32_t));
    case NM_TYPE_Q8_K: return (size_t)(n / 32) * sizeof(int16_t);
    case NM_TYPE_F16:
    case NM_TYPE_BF16: return (size_t)n * sizeof(float);
    default: return 0;
    }
}

void nm_act_extra(nm_type act_type, const void *act_row, void *extra, int64_t n) {
    const uint8_t *a = act_row;
    switch (act_type) {
    case NM_TYPE_Q8_0: {
        float *d = extra;
        int32_t *sum = (int32_t *)(void *)(d + n / 32);
        for (int64_t b = 0; b < n / 32; b++, a += Q8_0_BYTES) {
            d[b] = rd_half(a);
            int s = 0;
            for (int j = 0; j < 32; j++) s += (int8_t)a[2 + j];
            sum[b] = s;
        }
        break;
    }
    case NM_TYPE_Q8_K: {
        int16_t *sum = extra;
        for (int64_t b = 0; b < n / NM_QK_K; b++, a += sizeof(nm_block_q8_k))
            for (int j = 0; j < 8; j++) sum[8 * b + j] = (int16_t)q8k_bsum32(a, j);
        break;
    }
    case NM_TYPE_F16: {
        float *f = extra;
        for (int64_t i = 0; i < n; i++) f[i] = rd_half(a + 2 * i);
        break;
    }
    case NM_TYPE_BF16: {
        float *f = extra;
        for (int64_t i = 0; i < n; i++) f[i] = rd_bf16(a + 2 * i);
        break;
    }
    default: break;
    }
}

/* ====================================================================== */
/* the tables                                                             */
/* ====================================================================== */

static const nm_kernel KERNELS[NM_TYPE_COUNT] = {
    [NM_TYPE_F32] = {NM_TYPE_F32, dot_f32},
    [NM_TYPE_F16] = {NM_TYPE_F16, dot_f16},
    [NM_TYPE_BF16] = {NM_TYPE_BF16, dot_bf16},
    [NM_TYPE_Q4_0] = {NM_TYPE_Q8_0, dot_q4_0},
    [NM_TYPE_Q4_1] = {NM_TYPE_Q8_1, dot_q4_1},
    [NM_TYPE_Q5_0] = {NM_TYPE_Q8_0, dot_q5_0},
    [NM_TYPE_Q5_1] = {NM_TYPE_Q8_1, dot_q5_1},
    [NM_TYPE_Q8_0] = {NM_TYPE_Q8_0, dot_q8_0},
    [NM_TYPE_Q4_K] = {NM_TYPE_Q8_K, dot_q4_k},
    [NM_TYPE_Q5_K] = {NM_TYPE_Q8_K, dot_q5_k},
    [NM_TYPE_Q6_K] = {NM_TYPE_Q8_K, dot_q6_k},
};

const nm_kernel *nm_kernel_get(uint32_t weight_type) {
    if (weight_type >= NM_TYPE_COUNT || !KERNELS[weight_type].vec_dot) return NULL;
    return &KERNELS[weight_type];
}

/* The scalar matrix kernel: one dot product per output element, in tiles
 * of ROW_TILE weight rows that stay in cache while every token of the
 * batch is multiplied with them. */
enum { ROW_TILE = 16 };

static void rows_generic(const nm_mm_args *a, int64_t r0, int64_t r1, nm_vec_dot_fn dot) {
    for (int64_t lo = r0; lo < r1; lo += ROW_TILE) {
        const int64_t hi = lo + ROW_TILE < r1 ? lo + ROW_TILE : r1;
        for (int64_t t = 0; t < a->n_tok; t++) {
            const uint8_t *x = a->act + (size_t)t * a->act_stride;
            float *y = a->y + t * a->ldy - a->y_r0;
            for (int64_t r = lo; r < hi; r++) y[r] = dot(a->cols, a->w + (size_t)r * a->row_bytes, x);
        }
    }
}

static void rows_f32(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_generic(a, r0, r1, dot_f32); }
static void rows_f16(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_generic(a, r0, r1, dot_f16); }
static void rows_bf16(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_generic(a, r0, r1, dot_bf16); }
static void rows_q4_0(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_generic(a, r0, r1, dot_q4_0); }
static void rows_q4_1(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_generic(a, r0, r1, dot_q4_1); }
static void rows_q5_0(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_generic(a, r0, r1, dot_q5_0); }
static void rows_q5_1(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_generic(a, r0, r1, dot_q5_1); }
static void rows_q8_0(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_generic(a, r0, r1, dot_q8_0); }
static void rows_q4_k(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_generic(a, r0, r1, dot_q4_k); }
static void rows_q5_k(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_generic(a, r0, r1, dot_q5_k); }
static void rows_q6_k(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_generic(a, r0, r1, dot_q6_k); }

static const nm_mm_kernel SCALAR_MM[NM_TYPE_COUNT] = {
    [NM_TYPE_F32] = {NM_TYPE_F32, false, 1, NM_ISA_SCALAR, rows_f32, NULL, NULL, NULL, NULL},
    [NM_TYPE_F16] = {NM_TYPE_F16, false, 1, NM_ISA_SCALAR, rows_f16, NULL, NULL, NULL, NULL},
    [NM_TYPE_BF16] = {NM_TYPE_BF16, false, 1, NM_ISA_SCALAR, rows_bf16, NULL, NULL, NULL, NULL},
    [NM_TYPE_Q4_0] = {NM_TYPE_Q8_0, false, 1, NM_ISA_SCALAR, rows_q4_0, NULL, NULL, NULL, NULL},
    [NM_TYPE_Q4_1] = {NM_TYPE_Q8_1, false, 1, NM_ISA_SCALAR, rows_q4_1, NULL, NULL, NULL, NULL},
    [NM_TYPE_Q5_0] = {NM_TYPE_Q8_0, false, 1, NM_ISA_SCALAR, rows_q5_0, NULL, NULL, NULL, NULL},
    [NM_TYPE_Q5_1] = {NM_TYPE_Q8_1, false, 1, NM_ISA_SCALAR, rows_q5_1, NULL, NULL, NULL, NULL},
    [NM_TYPE_Q8_0] = {NM_TYPE_Q8_0, false, 1, NM_ISA_SCALAR, rows_q8_0, NULL, NULL, NULL, NULL},
    [NM_TYPE_Q4_K] = {NM_TYPE_Q8_K, false, 1, NM_ISA_SCALAR, rows_q4_k, NULL, NULL, NULL, NULL},
    [NM_TYPE_Q5_K] = {NM_TYPE_Q8_K, false, 1, NM_ISA_SCALAR, rows_q5_k, NULL, NULL, NULL, NULL},
    [NM_TYPE_Q6_K] = {NM_TYPE_Q8_K, false, 1, NM_ISA_SCALAR, rows_q6_k, NULL, NULL, NULL, NULL},
};

const nm_mm_kernel *nm_mm_kernel_get(uint32_t weight_type, nm_isa isa) {
    if (weight_type >= NM_TYPE_COUNT || !SCALAR_MM[weight_type].rows) return NULL;
    const nm_mm_kernel *k = NULL;
    switch (isa) {
    case NM_ISA_AVX2: k = nm_mm_kernel_avx2((nm_type)weight_type); break;
    case NM_ISA_AVX512: k = nm_mm_kernel_avx512((nm_type)weight_type); break;
    case NM_ISA_NEON: k = nm_mm_kernel_neon((nm_type)weight_type); break;
    default: break;
    }
    return k ? k : &SCALAR_MM[weight_type];
}

/* The scalar panel product: one multiply and one add per step, in order. */
static void nn_scalar(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                      float *C, int64_t ldc) {
    for (int64_t m = 0; m < M; m++) {
        float *c = C + m * ldc;
        for (int64_t k = 0; k < K; k++) {
            const float a = A[m * lda + k];
            const float *b = B + k * ldb;
            for (int64_t n = 0; n < N; n++) c[n] += a * b[n];
        }
    }
}

nm_nn_fn nm_nn_kernel(nm_isa isa) {
    nm_nn_fn f = NULL;
    switch (isa) {
    case NM_ISA_AVX2: f = nm_nn_kernel_avx2(); break;
    case NM_ISA_AVX512: f = nm_nn_kernel_avx512(); break;
    case NM_ISA_NEON: f = nm_nn_kernel_neon(); break;
    default: break;
    }
    return f ? f : nn_scalar;
}

/* The scalar attention loops, the reference of every level.  Products and
 * sums are in float, each product added by one fused multiply-add (fmaf:
 * the rounding of the exact a * b + c, which every level's FMA instruction
 * gives too; the model's queries and attention weights are rounded to
 * half precision, so its products are exact anyway, as in llama.cpp's F16
 * KQ and KQV products, which also sum in float).  Scores of heads that are
 * a multiple of 16 wide are summed in 16 float lanes (lane j takes elements
 * j, j + 16, ...), then the lanes pairwise by halves (j + 8, then j + 4,
 * j + 2, j + 1): the order one AVX-512 register, two AVX2 or four NEON
 * registers give naturally, so every level returns the same bits.  Other
 * widths go element by element, on every level.  Values are summed per
 * element in key order.  (Until this was measured, both ran in double:
 * exact products without FMA, but half the lanes; attention was 15% of a
 * 512-token prompt on tl1b.) */
static void attn_scores_scalar(const float *q, size_t q_stride, int nq, const uint16_t *k, int64_t n, int64_t hd,
                               float scale, float *scores, size_t s_stride) {
    for (int j = 0; j < nq; j++, q += q_stride, scores += s_stride)
        for (int64_t p = 0; p < n; p++) {
            float dot = 0.0f;
            if (hd % 16) {
                for (int64_t i = 0; i < hd; i++) dot = fmaf(q[i], nm_half_to_f32(k[nm_key_index(hd, p, i)]), dot);
            } else {
                float a[16] = {0};
                for (int64_t i = 0; i < hd; i += 16)
                    for (int l = 0; l < 16; l++) a[l] = fmaf(q[i + l], nm_half_to_f32(k[nm_key_index(hd, p, i + l)]), a[l]);
                for (int w = 8; w >= 1; w /= 2)
                    for (int l = 0; l < w; l++) a[l] += a[l + w];
                dot = a[0];
            }
            scores[p] = dot * scale;
        }
}

static void attn_values_scalar(const float *w, size_t w_stride, int nq, const uint16_t *v, size_t stride, int64_t n,
                               int64_t hd, float *out, size_t o_stride) {
    for (int j = 0; j < nq; j++, w += w_stride, out += o_stride)
        for (int64_t i0 = 0; i0 < hd; i0 += 64) {
            float acc[64] = {0};
            const int64_t m = hd - i0 < 64 ? hd - i0 : 64;
            const uint16_t *vp = v + i0;
            for (int64_t p = 0; p < n; p++, vp += stride)
                for (int64_t i = 0; i < m; i++) acc[i] = fmaf(w[p], nm_half_to_f32(vp[i]), acc[i]);
            for (int64_t i = 0; i < m; i++) out[i0 + i] = acc[i];
        }
}

static void to_f16_scalar(const float *x, uint16_t *h, int64_t n) {
    for (int64_t i = 0; i < n; i++) h[i] = nm_f32_to_f16(x[i]);
}

static void round_f16_scalar(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = nm_half_to_f32(nm_f32_to_f16(x[i]));
}

/* The reference softmax; the levels vectorise the exponentials, the
 * first n - n % 16 elements of the sum and the scaling, and call this for
 * the rest of the sum. */
float nm_softmax_tail(float *x, int64_t n, int64_t i, float max, double *a) {
    for (; i < n; i++) {
        x[i] = nm_exp_ref(x[i] - max);
        a[i % 16] += x[i];
    }
    for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) a[l] += a[l + w];
    return (float)(1.0 / a[0]);
}

static void softmax_scalar(float *x, int64_t n) {
    float max = x[0];
    for (int64_t i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    double a[16] = {0};
    const float inv = nm_softmax_tail(x, n, 0, max, a);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

static void swiglu_scalar(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = g / (1.0f + nm_exp_ref(-g)) * up[i];
    }
}

static const nm_attn_kernel ATTN_SCALAR = {attn_scores_scalar, attn_values_scalar, to_f16_scalar, round_f16_scalar,
                                           softmax_scalar,     swiglu_scalar,      nm_rmsnorm};

const nm_attn_kernel *nm_attn_kernel_get(nm_isa isa) {
    const nm_attn_kernel *k = NULL;
    switch (isa) {
    case NM_ISA_AVX2: k = nm_attn_kernel_avx2(); break;
    case NM_ISA_AVX512: k = nm_attn_kernel_avx512(); break;
    case NM_ISA_NEON: k = nm_attn_kernel_neon(); break;
    default: break;
    }
    return k ? k : &ATTN_SCALAR;
}

/* ====================================================================== */
/* instruction-set levels                                                 */
/* ====================================================================== */

static const char *const ISA_NAMES[NM_ISA_COUNT] = {"scalar", "avx2", "avx512", "neon"};

const char *nm_isa_name(nm_isa isa) { return isa >= 0 && isa < NM_ISA_COUNT ? ISA_NAMES[isa] : "?"; }

int nm_isa_from_name(const char *s) {
    for (int i = 0; i < NM_ISA_COUNT; i++)
        if (strcasecmp(s, ISA_NAMES[i]) == 0) return i;
    return -1;
}

#ifdef NM_X86
/* cpuid says what the core implements, XCR0 what the operating system saves
 * on a context switch: the wide registers are usable only when both agree
 * (a kernel or hypervisor may switch AVX-512 state off). */
typedef struct x86_features {
    bool avx2, avx512, avx512_bf16;
} x86_features;

static x86_features x86_detect(void) {
    x86_features f = {false, false, false};
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
    if (!osxsave || !avx) return f;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    const uint64_t xcr0 = (uint64_t)hi << 32 | lo;
    const bool ymm_state = (xcr0 & 0x6) == 0x6, zmm_state = (xcr0 & 0xe6) == 0xe6;
    if (__get_cpuid_max(0, NULL) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    const bool avx2 = b & (1u << 5), avx512f = b & (1u << 16), avx512dq = b & (1u << 17),
               avx512bw = b & (1u << 30), avx512vl = b & (1u << 31), vnni = c & (1u << 11);
    f.avx2 = ymm_state && avx2 && fma && f16c;
    f.avx512 = f.avx2 && zmm_state && avx512f && avx512dq && avx512bw && avx512vl && vnni;
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512_bf16 = f.avx512 && (a & (1u << 5));
    return f;
}
#endif

#ifdef NM_ARM64
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

bool nm_cpu_has_avx512_bf16(void) {
#ifdef NM_X86
    return x86_detect().avx512_bf16;
#else
    return false;
#endif
}

bool nm_cpu_has_neon_dotprod(void) {
#ifdef NM_ARM64
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
    return false;
#endif
}

bool nm_isa_available(nm_isa isa) {
    switch (isa) {
    case NM_ISA_SCALAR: return true;
#ifdef NM_X86
    case NM_ISA_AVX2: return x86_detect().avx2;
    case NM_ISA_AVX512: return x86_detect().avx512;
#endif
#ifdef NM_ARM64
    case NM_ISA_NEON: return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
#endif
    default: return false;
    }
}

nm_isa nm_isa_best(void) {
    for (int i = NM_ISA_COUNT - 1; i > 0; i--)
        if (nm_isa_available((nm_isa)i)) return (nm_isa)i;
    return NM_ISA_SCALAR;
}

nm_status nm_isa_select(nm_isa *out, nm_err *err) {
    const char *env = getenv("NOMOAT_ISA");
    *out = nm_isa_best();
    if (!env || !*env) return NM_OK;
    const int isa = nm_isa_from_name(env);
    if (isa < 0)
        return nm_err_set(err, NM_ERR_ARG, "NOMOAT_ISA=%.40s names no instruction-set level (scalar, avx2, avx512, neon)",
                          env);
    if (!nm_isa_available((nm_isa)isa))
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "NOMOAT_ISA=%s: this CPU or this build cannot run that level (best here: %s)",
                          ISA_NAMES[isa], ISA_NAMES[nm_isa_best()]);
    *out = (nm_isa)isa;
    return NM_OK;
}
