/*
 * quants.c - scalar reference conversions of the quantized block types.
 *
 * Every function here reproduces ggml's reference code (ggml-quants.c:
 * dequantize_row_*, quantize_row_*_ref) bit for bit for finite inputs: same
 * block layout, same bit packing, same order of float operations, same f16
 * rounding.  That is what lets us read llama.cpp's files and write files that
 * are byte-identical to the ones llama.cpp's quantize tool writes.
 *
 * How we touch the bytes, and why:
 *  - Blocks are read and written through byte pointers (offsetof into the
 *    block structs of quants.h), never by dereferencing a block pointer.  A
 *    caller's buffer, a row inside a tensor or a file written with a small
 *    alignment need not be aligned for the uint16_t/float fields, and an
 *    unaligned struct access is undefined behaviour.
 *    Multi-byte fields are little-endian in the files, so we assemble them
 *    from bytes, which also keeps big-endian hosts correct.
 *  - ggml converts floats to small integers with casts like
 *    (int8_t)(x0 + 8.5f), which is undefined when the value does not fit
 *    (NaN, inf, huge inputs).  For every finite input the value fits and we
 *    produce exactly ggml's integer; for the rest we clamp (NaN -> 0) instead
 *    of invoking UB.
 *  - Quants are assembled in unsigned arithmetic: no shifts of negative
 *    values, no int8 overflow.
 *
 * The float expressions are written in ggml's evaluation order (for example
 * Q6_K's d * sc * q is (d * sc) * q), and the quantizers keep ggml's named
 * intermediates (x0 = x * id; then x0 + 8.5f) as separate statements, so no
 * compiler may fuse them into one FMA: the rounding stays ggml's.  GCC does
 * not contract in ISO C mode (-std=c11); clang does unless told not to.
 */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif
#include "quants.h"
#include "base/base.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

/* ---- byte-level field access ---- */

static inline float rd_half(const uint8_t *p) { return nm_f16_to_f32(nm_rd_u16(p)); }

static inline void wr_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void wr_half(uint8_t *p, float f) { wr_u16(p, nm_f32_to_f16(f)); }

static inline void wr_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static inline float rd_f32(const uint8_t *p) {
    uint32_t u = nm_rd_u32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The int8 quants of Q8_0/Q8_K are two's complement bytes; reinterpret
 * without an implementation-defined conversion. */
static inline int sbyte(uint8_t b) { return b < 128 ? (int)b : (int)b - 256; }

/* ggml's MIN(hi, (int8_t)v) for the 4/5-bit quantizers, where v = x0 + 8.5f
 * (or + 16.5f, + 0.5f) is >= 0 for every finite input: truncation toward
 * zero then clamp to hi.  NaN and negatives give 0 instead of UB. */
static inline unsigned trunc_clamp(float v, unsigned hi) {
    if (!(v > 0.0f)) return 0;
    if (v >= (float)hi) return hi;
    return (unsigned)v;
}

/* ggml stores roundf(x0) into an int8_t (round half away from zero); x0 is in
 * [-127, 127] for finite inputs.  Out-of-range values and NaN are clamped. */
static inline uint8_t round_i8(float v) {
    float r = roundf(v);
    int q;
    if (!(r == r)) q = 0;
    else if (r > 127.0f) q = 127;
    else if (r < -128.0f) q = -128;
    else q = (int)r;
    return (uint8_t)(q & 0xff);
}

/* ====================================================================== */
/* 32-element blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0                          */
/* ====================================================================== */
/* Element j of the first half of a block sits in the low nibble of qs[j],
 * element j + 16 in the high nibble of the same byte. */

void nm_dequant_q4_0(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / NM_QK4_0; i++, b += sizeof(nm_block_q4_0), dst += NM_QK4_0) {
        const float d = rd_half(b + offsetof(nm_block_q4_0, d));
        const uint8_t *qs = b + offsetof(nm_block_q4_0, qs);
        for (int j = 0; j < NM_QK4_0 / 2; j++) {
            const int x0 = (qs[j] & 0x0f) - 8;
            const int x1 = (qs[j] >> 4) - 8;
            dst[j] = x0 * d;
            dst[j + NM_QK4_0 / 2] = x1 * d;
        }
    }
}

void nm_dequant_q4_1(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / NM_QK4_1; i++, b += sizeof(nm_block_q4_1), dst += NM_QK4_1) {
        const float d = rd_half(b + offsetof(nm_block_q4_1, d));
        const float m = rd_half(b + offsetof(nm_block_q4_1, m));
        const uint8_t *qs = b + offsetof(nm_block_q4_1, qs);
        for (int j = 0; j < NM_QK4_1 / 2; j++) {
            const int x0 = qs[j] & 0x0f;
            const int x1 = qs[j] >> 4;
            dst[j] = x0 * d + m;
            dst[j + NM_QK4_1 / 2] = x1 * d + m;
        }
    }
}

/* Q5: qh is a little-endian 32-bit mask; bit j is the fifth bit of element j
 * (j = 0..31), so bits 0..15 go with the low nibbles and 16..31 with the high
 * nibbles. */
static inline unsigned q5_high(uint32_t qh, int j) { return ((qh >> j) & 1u) << 4; }

void nm_dequant_q5_0(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / NM_QK5_0; i++, b += sizeof(nm_block_q5_0), dst += NM_QK5_0) {
        const float d = rd_half(b + offsetof(nm_block_q5_0, d));
        const uint32_t qh = nm_rd_u32(b + offsetof(nm_block_q5_0, qh));
        const uint8_t *qs = b + offsetof(nm_block_q5_0, qs);
        for (int j = 0; j < NM_QK5_0 / 2; j++) {
            const int x0 = (int)((qs[j] & 0x0fu) | q5_high(qh, j)) - 16;
            const int x1 = (int)((unsigned)(qs[j] >> 4) | q5_high(qh, j + 16)) - 16;
            dst[j] = x0 * d;
            dst[j + NM_QK5_0 / 2] = x1 * d;
        }
    }
}

void nm_dequant_q5_1(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / NM_QK5_1; i++, b += sizeof(nm_block_q5_1), dst += NM_QK5_1) {
        const float d = rd_half(b + offsetof(nm_block_q5_1, d));
        const float m = rd_half(b + offsetof(nm_block_q5_1, m));
        const uint32_t qh = nm_rd_u32(b + offsetof(nm_block_q5_1, qh));
        const uint8_t *qs = b + offsetof(nm_block_q5_1, qs);
        for (int j = 0; j < NM_QK5_1 / 2; j++) {
            const int x0 = (int)((qs[j] & 0x0fu) | q5_high(qh, j));
            const int x1 = (int)((unsigned)(qs[j] >> 4) | q5_high(qh, j + 16));
            dst[j] = x0 * d + m;
            dst[j + NM_QK5_1 / 2] = x1 * d + m;
        }
    }
}

void nm_dequant_q8_0(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / NM_QK8_0; i++, b += sizeof(nm_block_q8_0), dst += NM_QK8_0) {
        const float d = rd_half(b + offsetof(nm_block_q8_0, d));
        const uint8_t *qs = b + offsetof(nm_block_q8_0, qs);
        for (int j = 0; j < NM_QK8_0; j++) dst[j] = sbyte(qs[j]) * d;
    }
}

/* ---- quantization (ggml's *_ref: the deterministic file-writing path) ---- */

/* Q4_0: symmetric, 16 levels -8..7 times d.  d is chosen so that the element
 * of largest magnitude (max, with its sign) maps exactly to -8, the end of the
 * range that has one more level; the opposite extreme then lands at +8 and is
 * clamped to 7. */
void nm_quant_q4_0(const float *src, void *dst, int64_t n) {
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / NM_QK4_0; i++, b += sizeof(nm_block_q4_0), src += NM_QK4_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < NM_QK4_0; j++) {
            if (amax < fabsf(src[j])) {
                amax = fabsf(src[j]);
                max = src[j];
            }
        }
        const float d = max / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        wr_half(b + offsetof(nm_block_q4_0, d), d);
        uint8_t *qs = b + offsetof(nm_block_q4_0, qs);
        for (int j = 0; j < NM_QK4_0 / 2; j++) {
            /* + 8.5 then truncation: round half up, shifted to 0..16. */
            const float x0 = src[j] * id, x1 = src[j + NM_QK4_0 / 2] * id;
            const unsigned q0 = trunc_clamp(x0 + 8.5f, 15), q1 = trunc_clamp(x1 + 8.5f, 15);
            qs[j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

/* Q4_1: asymmetric, value = q * d + m with q in 0..15, m = block minimum. */
void nm_quant_q4_1(const float *src, void *dst, int64_t n) {
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / NM_QK4_1; i++, b += sizeof(nm_block_q4_1), src += NM_QK4_1) {
        float min = 3.40282347e+38f, max = -3.40282347e+38f; /* +-FLT_MAX, as ggml */
        for (int j = 0; j < NM_QK4_1; j++) {
            if (src[j] < min) min = src[j];
            if (src[j] > max) max = src[j];
        }
        const float d = (max - min) / ((1 << 4) - 1);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        wr_half(b + offsetof(nm_block_q4_1, d), d);
        wr_half(b + offsetof(nm_block_q4_1, m), min);
        uint8_t *qs = b + offsetof(nm_block_q4_1, qs);
        for (int j = 0; j < NM_QK4_1 / 2; j++) {
            const float x0 = (src[j] - min) * id, x1 = (src[j + NM_QK4_1 / 2] - min) * id;
            const unsigned q0 = trunc_clamp(x0 + 0.5f, 15), q1 = trunc_clamp(x1 + 0.5f, 15);
            qs[j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

/* Q5_0: as Q4_0 with 32 levels -16..15; the fifth bits go to qh. */
void nm_quant_q5_0(const float *src, void *dst, int64_t n) {
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / NM_QK5_0; i++, b += sizeof(nm_block_q5_0), src += NM_QK5_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < NM_QK5_0; j++) {
            if (amax < fabsf(src[j])) {
                amax = fabsf(src[j]);
                max = src[j];
            }
        }
        const float d = max / -16;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        wr_half(b + offsetof(nm_block_q5_0, d), d);
        uint8_t *qs = b + offsetof(nm_block_q5_0, qs);
        uint32_t qh = 0;
        for (int j = 0; j < NM_QK5_0 / 2; j++) {
            const float x0 = src[j] * id, x1 = src[j + NM_QK5_0 / 2] * id;
            const unsigned q0 = trunc_clamp(x0 + 16.5f, 31), q1 = trunc_clamp(x1 + 16.5f, 31);
            qs[j] = (uint8_t)((q0 & 0x0fu) | (q1 & 0x0fu) << 4);
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + NM_QK5_0 / 2);
        }
        wr_u32(b + offsetof(nm_block_q5_0, qh), qh);
    }
}

/* Q5_1: as Q4_1 with 32 levels.  (ggml has no clamp here, (max-min)*id is at
 * most 31 for finite inputs; ours only matters for NaN/inf.) */
void nm_quant_q5_1(const float *src, void *dst, int64_t n) {
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / NM_QK5_1; i++, b += sizeof(nm_block_q5_1), src += NM_QK5_1) {
        float min = 3.40282347e+38f, max = -3.40282347e+38f;
        for (int j = 0; j < NM_QK5_1; j++) {
            if (src[j] < min) min = src[j];
            if (src[j] > max) max = src[j];
        }
        const float d = (max - min) / ((1 << 5) - 1);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        wr_half(b + offsetof(nm_block_q5_1, d), d);
        wr_half(b + offsetof(nm_block_q5_1, m), min);
        uint8_t *qs = b + offsetof(nm_block_q5_1, qs);
        uint32_t qh = 0;
        for (int j = 0; j < NM_QK5_1 / 2; j++) {
            const float x0 = (src[j] - min) * id, x1 = (src[j + NM_QK5_1 / 2] - min) * id;
            const unsigned q0 = trunc_clamp(x0 + 0.5f, 31), q1 = trunc_clamp(x1 + 0.5f, 31);
            qs[j] = (uint8_t)((q0 & 0x0fu) | (q1 & 0x0fu) << 4);
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + NM_QK5_1 / 2);
        }
        wr_u32(b + offsetof(nm_block_q5_1, qh), qh);
    }
}

/* Q8_0: symmetric, d = amax / 127, q = round(x / d) in -127..127. */
void nm_quant_q8_0(const float *src, void *dst, int64_t n) {
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / NM_QK8_0; i++, b += sizeof(nm_block_q8_0), src += NM_QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < NM_QK8_0; j++) {
            const float a = fabsf(src[j]);
            amax = amax > a ? amax : a; /* ggml's MAX(amax, a), NaN behaviour included */
        }
        const float d = amax / ((1 << 7) - 1);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        wr_half(b + offsetof(nm_block_q8_0, d), d);
        uint8_t *qs = b + offsetof(nm_block_q8_0, qs);
        for (int j = 0; j < NM_QK8_0; j++) qs[j] = round_i8(src[j] * id);
    }
}

/* ====================================================================== */
/* 256-element super-blocks: Q4_K, Q5_K, Q6_K, Q8_K                         */
/* ====================================================================== */

/* Q4_K/Q5_K hold 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min,
 * packed into 12 bytes:
 *   bytes 0..3  : scale j   (low 6 bits)  | top 2 bits of scale j+4 (bits 6-7)
 *   bytes 4..7  : min j     (low 6 bits)  | top 2 bits of min j+4   (bits 6-7)
 *   bytes 8..11 : low 4 bits of scale j+4 | low 4 bits of min j+4 << 4
 * (ggml's get_scale_min_k4). */
static inline void scale_min_k4(int j, const uint8_t *q, unsigned *sc, unsigned *m) {
    if (j < 4) {
        *sc = q[j] & 63u;
        *m = q[j + 4] & 63u;
    } else {
        *sc = (q[j + 4] & 0x0fu) | (unsigned)(q[j - 4] >> 6) << 4;
        *m = (unsigned)(q[j + 4] >> 4) | (unsigned)(q[j] >> 6) << 4;
    }
}

/* Q4_K: value = d * scale_s * q - dmin * min_s, q in 0..15.  The 256 quants
 * are stored as 4 groups of 32 bytes; group g holds sub-block 2g in the low
 * nibbles and sub-block 2g+1 in the high nibbles. */
void nm_dequant_q4_k(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / NM_QK_K; i++, b += sizeof(nm_block_q4_k)) {
        const float d = rd_half(b + offsetof(nm_block_q4_k, d));
        const float dmin = rd_half(b + offsetof(nm_block_q4_k, dmin));
        const uint8_t *scales = b + offsetof(nm_block_q4_k, scales);
        const uint8_t *q = b + offsetof(nm_block_q4_k, qs);
        for (int s = 0; s < 8; s += 2, q += 32) {
            unsigned sc, m;
            scale_min_k4(s, scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            scale_min_k4(s + 1, scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *dst++ = d1 * (q[l] & 0x0f) - m1;
            for (int l = 0; l < 32; l++) *dst++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

/* Q5_K: Q4_K plus a fifth bit per quant (q in 0..31).  qh[l] bit 2g is the
 * fifth bit of element l of sub-block 2g, bit 2g+1 that of sub-block 2g+1. */
void nm_dequant_q5_k(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / NM_QK_K; i++, b += sizeof(nm_block_q5_k)) {
        const float d = rd_half(b + offsetof(nm_block_q5_k, d));
        const float dmin = rd_half(b + offsetof(nm_block_q5_k, dmin));
        const uint8_t *scales = b + offsetof(nm_block_q5_k, scales);
        const uint8_t *qh = b + offsetof(nm_block_q5_k, qh);
        const uint8_t *ql = b + offsetof(nm_block_q5_k, qs);
        unsigned u1 = 1, u2 = 2;
        for (int s = 0; s < 8; s += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
            unsigned sc, m;
            scale_min_k4(s, scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            scale_min_k4(s + 1, scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *dst++ = d1 * ((ql[l] & 0x0f) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) *dst++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        }
    }
}

/* Q6_K: 16 sub-blocks of 16 with signed 8-bit scales; value = d * sc * (q-32),
 * q in 0..63.  Each half of the block (128 elements) uses 64 bytes of ql and
 * 32 of qh: for l in 0..31,
 *   element l      : low nibble of ql[l]      | qh[l] bits 0-1 << 4
 *   element l + 32 : low nibble of ql[l + 32] | qh[l] bits 2-3 << 4
 *   element l + 64 : high nibble of ql[l]     | qh[l] bits 4-5 << 4
 *   element l + 96 : high nibble of ql[l + 32]| qh[l] bits 6-7 << 4
 * and element e of the half uses scale e / 16 of that half's 8 scales. */
void nm_dequant_q6_k(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / NM_QK_K; i++, b += sizeof(nm_block_q6_k)) {
        const float d = rd_half(b + offsetof(nm_block_q6_k, d));
        const uint8_t *ql = b + offsetof(nm_block_q6_k, ql);
        const uint8_t *qh = b + offsetof(nm_block_q6_k, qh);
        const uint8_t *sc = b + offsetof(nm_block_q6_k, scales);
        for (int half = 0; half < 2; half++, dst += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = (int)((ql[l] & 0x0fu) | ((qh[l] >> 0) & 3u) << 4) - 32;
                const int q2 = (int)((ql[l + 32] & 0x0fu) | ((qh[l] >> 2) & 3u) << 4) - 32;
                const int q3 = (int)((unsigned)(ql[l] >> 4) | ((qh[l] >> 4) & 3u) << 4) - 32;
                const int q4 = (int)((unsigned)(ql[l + 32] >> 4) | ((qh[l] >> 6) & 3u) << 4) - 32;
                dst[l + 0] = d * sbyte(sc[is + 0]) * q1;
                dst[l + 32] = d * sbyte(sc[is + 2]) * q2;
                dst[l + 64] = d * sbyte(sc[is + 4]) * q3;
                dst[l + 96] = d * sbyte(sc[is + 6]) * q4;
            }
        }
    }
}

/* Q8_K: float32 scale, 256 int8 quants, then 16 int16 partial sums (bsums)
 * that only the dot-product kernels use. */
void nm_dequant_q8_k(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / NM_QK_K; i++, b += sizeof(nm_block_q8_k), dst += NM_QK_K) {
        const float d = rd_f32(b + offsetof(nm_block_q8_k, d));
        const uint8_t *qs = b + offsetof(nm_block_q8_k, qs);
        for (int j = 0; j < NM_QK_K; j++) dst[j] = d * sbyte(qs[j]);
    }
}
