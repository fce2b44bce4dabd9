/* kernels_neon.c - matrix kernels for 64-bit ARM: NEON, with the dot-product
 * extension (SDOT, ARMv8.2 and every phone core since 2017) when present.
 *
 * The shapes and the arithmetic are those of kernels_avx512.c (read its
 * header first) with 4 lanes: batches repack tiles of 4 rows so that lanes
 * are rows, single tokens reduce 4 rows' block sums pairwise into the same
 * lanes; every quantized result is the scalar reference's, bit for bit.
 *
 * 8-bit products: SDOT multiplies signed by signed bytes, so no offset is
 * needed: Q4_0 weights are stored as q - 8 and Q6_K as q - 32 in the
 * repacked tiles, Q8_0 as they are, Q4_K/Q5_K quants (< 32) as they are.
 * Cores without the extension get the same lane sums from widening
 * multiplies (SMULL) and pairwise adds, exactly.  One set of kernel bodies
 * serves both: the bodies take `dp` as a constant, SDOT is written as
 * inline assembly (so the compiler needs no ARMv8.2 flag), and the table
 * picks the variant from the CPU's HWCAP_ASIMDDP at run time. */
#include "kernels_impl.h"
#include "ops.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#include <string.h>
#include <math.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define INL __attribute__((always_inline)) static inline

/* ---- 8-bit dot products: lane i += sum of bytes 4i..4i+3 of a x b ---- */

INL int32x4_t sdot(int32x4_t acc, int8x16_t a, int8x16_t b) {
    __asm__(".arch armv8.2-a+dotprod\n\tsdot %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b));
    return acc;
}

INL int32x4_t dot_emul(int32x4_t acc, int8x16_t a, int8x16_t b) {
    const int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b)), hi = vmull_high_s8(a, b);
    return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)));
}

INL int32x4_t dot4(bool dp, int32x4_t acc, int8x16_t a, int8x16_t b) { return dp ? sdot(acc, a, b) : dot_emul(acc, a, b); }

/* a x (the 4 bytes of b's 32-bit lane `lane`, repeated) */
INL int8x16_t dup_group(int8x16_t b, int lane) {
    switch (lane) {
    case 0: return vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(b), 0));
    case 1: return vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(b), 1));
    case 2: return vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(b), 2));
    default: return vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(b), 3));
    }
}

/* Sums of 4 vectors' lanes, in order: [sum a, sum b, sum c, sum d]. */
INL int32x4_t hsum4(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
    return vpaddq_s32(vpaddq_s32(a, b), vpaddq_s32(c, d));
}

INL float32x4_t halves4(const uint8_t *p0, const uint8_t *p1, const uint8_t *p2, const uint8_t *p3) {
    uint16_t h[4] = {nm_ld16(p0), nm_ld16(p1), nm_ld16(p2), nm_ld16(p3)};
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}

static inline float half_f(const uint8_t *p) {
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(nm_ld16(p)))), 0);
}

/* ====================================================================== */
/* Q8_0 and Q4_0 weights x Q8_0 activations                               */
/* ====================================================================== */

typedef struct q0_tok {
    const int8_t *q;
    const float *d;
} q0_tok;

INL q0_tok q0_token(const nm_mm_args *a, int64_t t, int64_t b0) {
    const float *d = (const float *)(const void *)(a->extra + (size_t)t * a->extra_stride);
    q0_tok k = {(const int8_t *)(a->act + (size_t)t * a->act_stride + (size_t)b0 * 34 + 2), d + b0};
    return k;
}

/* 4 rows: for block k and group g, 16 bytes = 4 signed quants of each row. */
typedef struct q0_panel4 {
    _Alignas(16) int8_t w[KC_BLOCKS * 8 * 16];
    _Alignas(16) float d[KC_BLOCKS * 4];
} q0_panel4;

/* The 32 signed quants of a block (Q4_0: nibble - 8). */
static void q0_unpack(bool q8, const uint8_t *blk, int8_t *q) {
    if (q8) {
        memcpy(q, blk + 2, 32);
        return;
    }
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)((blk[2 + j] & 15) - 8);
        q[j + 16] = (int8_t)((blk[2 + j] >> 4) - 8);
    }
}

static void repack4_q0(const nm_mm_args *a, int64_t r, int nr, int64_t b0, int kb, q0_panel4 *p, bool q8) {
    const size_t bb = q8 ? 34 : 18;
    for (int i = 0; i < 4; i++) {
        const uint8_t *blk = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes + (size_t)b0 * bb;
        for (int k = 0; k < kb; k++, blk += bb) {
            int8_t q[32];
            q0_unpack(q8, blk, q);
            p->d[4 * k + i] = i < nr ? half_f(blk) : 0.0f;
            for (int g = 0; g < 8; g++) memcpy(p->w + (k * 8 + g) * 16 + i * 4, q + 4 * g, 4);
        }
    }
}

enum { NT4 = 4 };

INL void q0_tokens4(bool dp, int NT, const nm_mm_args *a, const q0_panel4 *p, int64_t r, int nr, int64_t t,
                    int64_t b0, int kb) {
    float32x4_t acc[NT4];
    q0_tok tk[NT4];
    for (int i = 0; i < NT; i++) {
        tk[i] = q0_token(a, t + i, b0);
        const float *y = a->y + (t + i) * a->ldy + (r - a->y_r0);
        float v[4] = {0, 0, 0, 0};
        if (b0)
            for (int j = 0; j < nr; j++) v[j] = y[j];
        acc[i] = vld1q_f32(v);
    }
    for (int k = 0; k < kb; k++) {
        const int8_t *w = p->w + k * 128;
        int32x4_t s[NT4];
        for (int i = 0; i < NT; i++) {
            const int8x16_t x0 = vld1q_s8(tk[i].q + 34 * k), x1 = vld1q_s8(tk[i].q + 34 * k + 16);
            int32x4_t v = vdupq_n_s32(0);
            v = dot4(dp, v, vld1q_s8(w + 0), dup_group(x0, 0));
            v = dot4(dp, v, vld1q_s8(w + 16), dup_group(x0, 1));
            v = dot4(dp, v, vld1q_s8(w + 32), dup_group(x0, 2));
            v = dot4(dp, v, vld1q_s8(w + 48), dup_group(x0, 3));
            v = dot4(dp, v, vld1q_s8(w + 64), dup_group(x1, 0));
            v = dot4(dp, v, vld1q_s8(w + 80), dup_group(x1, 1));
            v = dot4(dp, v, vld1q_s8(w + 96), dup_group(x1, 2));
            v = dot4(dp, v, vld1q_s8(w + 112), dup_group(x1, 3));
            s[i] = v;
        }
        const float32x4_t dw = vld1q_f32(p->d + 4 * k);
        for (int i = 0; i < NT; i++) {
            const float32x4_t scale = vmulq_f32(dw, vdupq_n_f32(tk[i].d[k]));
            acc[i] = vaddq_f32(acc[i], vmulq_f32(vcvtq_f32_s32(s[i]), scale));
        }
    }
    for (int i = 0; i < NT; i++) {
        float v[4];
        vst1q_f32(v, acc[i]);
        float *y = a->y + (t + i) * a->ldy + (r - a->y_r0);
        for (int j = 0; j < nr; j++) y[j] = v[j];
    }
}

INL void q0_gemm4(bool dp, const nm_mm_args *a, int64_t r0, int64_t r1, bool q8) {
    const int64_t nb = a->cols / 32;
    q0_panel4 p;
    for (int64_t r = r0; r < r1; r += 4) {
        const int nr = (int)imin64(4, r1 - r);
        for (int64_t b0 = 0; b0 < nb; b0 += KC_BLOCKS) {
            const int kb = (int)imin64(KC_BLOCKS, nb - b0);
            repack4_q0(a, r, nr, b0, kb, &p, q8);
            int64_t t = 0;
            for (; t + NT4 <= a->n_tok; t += NT4) q0_tokens4(dp, NT4, a, &p, r, nr, t, b0, kb);
            for (; t < a->n_tok; t++) q0_tokens4(dp, 1, a, &p, r, nr, t, b0, kb);
        }
    }
}

/* One token x 4 rows as stored. */
INL void q0_gemv4(bool dp, const nm_mm_args *a, int64_t r, int nr, int64_t t, bool q8) {
    const int64_t nb = a->cols / 32;
    const size_t bb = q8 ? 34 : 18;
    const q0_tok tk = q0_token(a, t, 0);
    const uint8_t *rp[4];
    for (int i = 0; i < 4; i++) rp[i] = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes;
    const uint8x16_t m4 = vdupq_n_u8(15);
    const int8x16_t eight = vdupq_n_s8(8);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const size_t o = (size_t)b * bb;
        const int8x16_t x0 = vld1q_s8(tk.q + 34 * b), x1 = vld1q_s8(tk.q + 34 * b + 16);
        int32x4_t v[4];
        for (int i = 0; i < 4; i++) {
            int8x16_t w0, w1;
            if (q8) {
                w0 = vld1q_s8((const int8_t *)(rp[i] + o + 2));
                w1 = vld1q_s8((const int8_t *)(rp[i] + o + 18));
            } else {
                const uint8x16_t q = vld1q_u8(rp[i] + o + 2);
                w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, m4)), eight);
                w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), eight);
            }
            v[i] = dot4(dp, dot4(dp, vdupq_n_s32(0), w0, x0), w1, x1);
        }
        const int32x4_t s = hsum4(v[0], v[1], v[2], v[3]);
        const float32x4_t scale = vmulq_f32(halves4(rp[0] + o, rp[1] + o, rp[2] + o, rp[3] + o), vdupq_n_f32(tk.d[b]));
        acc = vaddq_f32(acc, vmulq_f32(vcvtq_f32_s32(s), scale));
    }
    float out[4];
    vst1q_f32(out, acc);
    float *y = a->y + t * a->ldy + (r - a->y_r0);
    for (int j = 0; j < nr; j++) y[j] = out[j];
}

INL void rows_q0(bool dp, const nm_mm_args *a, int64_t r0, int64_t r1, bool q8) {
    if (a->n_tok >= GEMM_MIN_TOK) {
        q0_gemm4(dp, a, r0, r1, q8);
        return;
    }
    for (int64_t r = r0; r < r1; r += 4)
        for (int64_t t = 0; t < a->n_tok; t++) q0_gemv4(dp, a, r, (int)imin64(4, r1 - r), t, q8);
}

/* ====================================================================== */
/* K-quants x Q8_K activations                                            */
/* ====================================================================== */

static inline void k4_scales(const uint8_t *q, uint8_t *sc, uint8_t *m) {
    uint32_t u[4];
    memcpy(u, q, 12);
    const uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
    u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
    const uint32_t m_lo = u[1] & k1;
    u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
    u[0] &= k1;
    memcpy(sc, &u[0], 4);
    memcpy(sc + 4, &u[1], 4);
    memcpy(m, &m_lo, 4);
    memcpy(m + 4, &u[3], 4);
}

/* The 256 signed quants of a K-quant super-block in element order (Q6_K
 * with its -32 applied; Q4_K/Q5_K quants are below 32). */
static void k_unpack(nm_type type, const uint8_t *blk, int8_t *q) {
    if (type == NM_TYPE_Q6_K) {
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = blk + 64 * h, *qh = blk + offsetof(nm_block_q6_k, qh) + 32 * h;
            for (int l = 0; l < 32; l++) {
                q[128 * h + l] = (int8_t)(((ql[l] & 15) | (qh[l] & 3) << 4) - 32);
                q[128 * h + l + 32] = (int8_t)(((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4) - 32);
                q[128 * h + l + 64] = (int8_t)(((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32);
                q[128 * h + l + 96] = (int8_t)(((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32);
            }
        }
        return;
    }
    const bool q5 = type == NM_TYPE_Q5_K;
    const uint8_t *qs = blk + (q5 ? offsetof(nm_block_q5_k, qs) : offsetof(nm_block_q4_k, qs));
    const uint8_t *qh = blk + offsetof(nm_block_q5_k, qh);
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++) {
            q[64 * g + l] = (int8_t)((qs[32 * g + l] & 15) | (q5 ? ((qh[l] >> (2 * g)) & 1) << 4 : 0));
            q[64 * g + 32 + l] = (int8_t)((qs[32 * g + l] >> 4) | (q5 ? ((qh[l] >> (2 * g + 1)) & 1) << 4 : 0));
        }
}

typedef struct k_panel4 {
    _Alignas(16) int8_t w[KC_SUPER * 8 * 8 * 16]; /* [s][32-element sub-block][group][row][4] */
    _Alignas(16) int32_t sc[KC_SUPER * 16 * 4];   /* [s][scale][row] */
    _Alignas(16) int32_t mn[KC_SUPER * 8 * 4];    /* [s][sub-block][row]: mins */
    _Alignas(16) float d[KC_SUPER * 4], dmin[KC_SUPER * 4];
} k_panel4;

static void repack4_k(const nm_mm_args *a, nm_type type, int64_t r, int nr, int64_t s0, int ks, k_panel4 *p) {
    const size_t bb = type == NM_TYPE_Q6_K ? sizeof(nm_block_q6_k) : type == NM_TYPE_Q5_K ? sizeof(nm_block_q5_k) : sizeof(nm_block_q4_k);
    for (int i = 0; i < 4; i++) {
        const uint8_t *blk = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes + (size_t)s0 * bb;
        for (int s = 0; s < ks; s++, blk += bb) {
            int8_t q[256];
            k_unpack(type, blk, q);
            for (int j = 0; j < 8; j++)
                for (int g = 0; g < 8; g++) memcpy(p->w + ((8 * s + j) * 8 + g) * 16 + i * 4, q + 32 * j + 4 * g, 4);
            if (type == NM_TYPE_Q6_K) {
                const int8_t *sc = (const int8_t *)(blk + offsetof(nm_block_q6_k, scales));
                p->d[4 * s + i] = i < nr ? half_f(blk + offsetof(nm_block_q6_k, d)) : 0.0f;
                for (int j = 0; j < 16; j++) p->sc[(16 * s + j) * 4 + i] = sc[j];
            } else {
                uint8_t sc[8], m[8];
                k4_scales(blk + 4, sc, m);
                p->d[4 * s + i] = i < nr ? half_f(blk) : 0.0f;
                p->dmin[4 * s + i] = i < nr ? half_f(blk + 2) : 0.0f;
                for (int j = 0; j < 8; j++) {
                    p->sc[(16 * s + j) * 4 + i] = sc[j];
                    p->mn[(8 * s + j) * 4 + i] = m[j];
                }
            }
        }
    }
}

typedef struct k_tok {
    const uint8_t *blk;
    const int16_t *bsum32;
} k_tok;

INL k_tok k_token(const nm_mm_args *a, int64_t t, int64_t s0) {
    k_tok k = {a->act + (size_t)t * a->act_stride + (size_t)s0 * sizeof(nm_block_q8_k),
               (const int16_t *)(const void *)(a->extra + (size_t)t * a->extra_stride) + 8 * s0};
    return k;
}

static inline float q8k_d(const uint8_t *blk) {
    float d;
    memcpy(&d, blk, 4);
    return d;
}

/* groups g0 .. g0+n-1 of a 32-element sub-block (4 rows) x a token's quants */
INL int32x4_t k_groups(bool dp, const int8_t *w, const int8_t *xq, int g0, int n) {
    int32x4_t v = vdupq_n_s32(0);
    for (int g = g0; g < g0 + n; g++) {
        const int8x16_t x = vld1q_s8(xq + 16 * (g / 4));
        v = dot4(dp, v, vld1q_s8(w + 16 * g), dup_group(x, g % 4));
    }
    return v;
}

INL void k_tokens4(bool dp, int NT, const nm_mm_args *a, const k_panel4 *p, int64_t r, int nr, int64_t t, int64_t s0,
                   int ks, bool q6) {
    float32x4_t acc[NT4];
    k_tok tk[NT4];
    for (int i = 0; i < NT; i++) {
        tk[i] = k_token(a, t + i, s0);
        const float *y = a->y + (t + i) * a->ldy + (r - a->y_r0);
        float v[4] = {0, 0, 0, 0};
        if (s0)
            for (int j = 0; j < nr; j++) v[j] = y[j];
        acc[i] = vld1q_f32(v);
    }
    for (int s = 0; s < ks; s++) {
        for (int i = 0; i < NT; i++) {
            const uint8_t *b = tk[i].blk + (size_t)s * sizeof(nm_block_q8_k);
            const int8_t *xq = (const int8_t *)(b + 4);
            int32x4_t sumi = vdupq_n_s32(0), summ = vdupq_n_s32(0);
            for (int j = 0; j < 8; j++) {
                const int8_t *w = p->w + (8 * s + j) * 128;
                if (q6) {
                    sumi = vmlaq_s32(sumi, k_groups(dp, w, xq + 32 * j, 0, 4), vld1q_s32(p->sc + (16 * s + 2 * j) * 4));
                    sumi = vmlaq_s32(sumi, k_groups(dp, w, xq + 32 * j, 4, 4), vld1q_s32(p->sc + (16 * s + 2 * j + 1) * 4));
                } else {
                    sumi = vmlaq_s32(sumi, k_groups(dp, w, xq + 32 * j, 0, 8), vld1q_s32(p->sc + (16 * s + j) * 4));
                    summ = vmlaq_n_s32(summ, vld1q_s32(p->mn + (8 * s + j) * 4), tk[i].bsum32[8 * s + j]);
                }
            }
            const float32x4_t dx = vdupq_n_f32(q8k_d(b));
            const float32x4_t x = vmulq_f32(vmulq_f32(vld1q_f32(p->d + 4 * s), dx), vcvtq_f32_s32(sumi));
            if (q6) {
                acc[i] = vaddq_f32(acc[i], x);
            } else {
                const float32x4_t y = vmulq_f32(vmulq_f32(vld1q_f32(p->dmin + 4 * s), dx), vcvtq_f32_s32(summ));
                acc[i] = vaddq_f32(acc[i], vsubq_f32(x, y));
            }
        }
    }
    for (int i = 0; i < NT; i++) {
        float v[4];
        vst1q_f32(v, acc[i]);
        float *y = a->y + (t + i) * a->ldy + (r - a->y_r0);
        for (int j = 0; j < nr; j++) y[j] = v[j];
    }
}

INL void k_gemm4(bool dp, const nm_mm_args *a, int64_t r0, int64_t r1, nm_type type) {
    const int64_t nsb = a->cols / NM_QK_K;
    const bool q6 = type == NM_TYPE_Q6_K;
    k_panel4 p;
    memset(&p, 0, sizeof p);
    for (int64_t r = r0; r < r1; r += 4) {
        const int nr = (int)imin64(4, r1 - r);
        for (int64_t s0 = 0; s0 < nsb; s0 += KC_SUPER) {
            const int ks = (int)imin64(KC_SUPER, nsb - s0);
            repack4_k(a, type, r, nr, s0, ks, &p);
            int64_t t = 0;
            for (; t + NT4 <= a->n_tok; t += NT4) k_tokens4(dp, NT4, a, &p, r, nr, t, s0, ks, q6);
            for (; t < a->n_tok; t++) k_tokens4(dp, 1, a, &p, r, nr, t, s0, ks, q6);
        }
    }
}

/* One row x one token: integer sums vectorised, the reference's float
 * arithmetic per super-block. */
INL float dot_k(bool dp, nm_type type, const uint8_t *row, const k_tok *tk, int64_t nsb) {
    const size_t bb = type == NM_TYPE_Q6_K ? sizeof(nm_block_q6_k) : type == NM_TYPE_Q5_K ? sizeof(nm_block_q5_k) : sizeof(nm_block_q4_k);
    const uint8x16_t m4 = vdupq_n_u8(15), m3 = vdupq_n_u8(3), one = vdupq_n_u8(1);
    float sum = 0.0f;
    for (int64_t s = 0; s < nsb; s++, row += bb) {
        const uint8_t *x = tk->blk + (size_t)s * sizeof(nm_block_q8_k);
        const int8_t *xq = (const int8_t *)(x + 4);
        if (type == NM_TYPE_Q6_K) {
            const int8_t *sc = (const int8_t *)(row + offsetof(nm_block_q6_k, scales));
            int32_t sumi = 0;
            for (int h = 0; h < 2; h++) {
                const uint8_t *ql = row + 64 * h, *qhp = row + offsetof(nm_block_q6_k, qh) + 32 * h;
                for (int c = 0; c < 2; c++) { /* l in [16c, 16c + 16) */
                    const uint8x16_t l0 = vld1q_u8(ql + 16 * c), l1 = vld1q_u8(ql + 32 + 16 * c), qh = vld1q_u8(qhp + 16 * c);
                    const uint8x16_t q[4] = {
                        vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8(vandq_u8(qh, m3), 4)),
                        vorrq_u8(vandq_u8(l1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 2), m3), 4)),
                        vorrq_u8(vshrq_n_u8(l0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 4), m3), 4)),
                        vorrq_u8(vshrq_n_u8(l1, 4), vshlq_n_u8(vshrq_n_u8(qh, 6), 4)),
                    };
                    for (int k = 0; k < 4; k++) {
                        /* elements 128h + 32k + 16c .. +15: sub-block 8h + 2k + c */
                        const int8x16_t w = vsubq_s8(vreinterpretq_s8_u8(q[k]), vdupq_n_s8(32));
                        const int32x4_t v = dot4(dp, vdupq_n_s32(0), w, vld1q_s8(xq + 128 * h + 32 * k + 16 * c));
                        sumi += sc[8 * h + 2 * k + c] * vaddvq_s32(v);
                    }
                }
            }
            sum += half_f(row + offsetof(nm_block_q6_k, d)) * q8k_d(x) * (float)sumi;
            continue;
        }
        const bool q5 = type == NM_TYPE_Q5_K;
        const uint8_t *qs = row + (q5 ? offsetof(nm_block_q5_k, qs) : offsetof(nm_block_q4_k, qs));
        uint8_t sc[8], m[8];
        k4_scales(row + 4, sc, m);
        int32_t sumi = 0, summ = 0;
        for (int g = 0; g < 4; g++) {
            int32x4_t lo = vdupq_n_s32(0), hi = vdupq_n_s32(0);
            for (int c = 0; c < 2; c++) {
                const uint8x16_t q = vld1q_u8(qs + 32 * g + 16 * c);
                uint8x16_t l = vandq_u8(q, m4), h = vshrq_n_u8(q, 4);
                if (q5) {
                    const uint8x16_t qh = vld1q_u8(row + offsetof(nm_block_q5_k, qh) + 16 * c);
                    l = vorrq_u8(l, vshlq_n_u8(vandq_u8(vshlq_u8(qh, vdupq_n_s8((int8_t)(-2 * g))), one), 4));
                    h = vorrq_u8(h, vshlq_n_u8(vandq_u8(vshlq_u8(qh, vdupq_n_s8((int8_t)(-2 * g - 1))), one), 4));
                }
                lo = dot4(dp, lo, vreinterpretq_s8_u8(l), vld1q_s8(xq + 64 * g + 16 * c));
                hi = dot4(dp, hi, vreinterpretq_s8_u8(h), vld1q_s8(xq + 64 * g + 32 + 16 * c));
            }
            sumi += sc[2 * g] * vaddvq_s32(lo) + sc[2 * g + 1] * vaddvq_s32(hi);
        }
        for (int j = 0; j < 8; j++) summ += m[j] * tk->bsum32[8 * s + j];
        const float dx = q8k_d(x);
        sum += half_f(row) * dx * (float)sumi - half_f(row + 2) * dx * (float)summ;
    }
    return sum;
}

INL void rows_k(bool dp, const nm_mm_args *a, int64_t r0, int64_t r1, nm_type type) {
    if (a->n_tok >= GEMM_MIN_TOK) {
        k_gemm4(dp, a, r0, r1, type);
        return;
    }
    const int64_t nsb = a->cols / NM_QK_K;
    for (int64_t t = 0; t < a->n_tok; t++) {
        const k_tok tk = k_token(a, t, 0);
        float *y = a->y + t * a->ldy - a->y_r0;
        for (int64_t r = r0; r < r1; r++) y[r] = dot_k(dp, type, a->w + (size_t)r * a->row_bytes, &tk, nsb);
    }
}

/* ====================================================================== */
/* F32, F16, BF16 weights                                                 */
/* ====================================================================== */
/* Lanes are 4 rows; each output is chains of at most 16 fused
 * multiply-adds (16 consecutive elements) added to the running sum; BF16
 * products are added in double (see kernels_avx512.c).  Batches repack 4
 * rows x KC_FLOATS element-major; single tokens gather 4 rows x 4 elements
 * and transpose them. */

static inline float elem(nm_type t, const uint8_t *row, int64_t k) {
    if (t == NM_TYPE_F32) {
        float f;
        memcpy(&f, row + 4 * k, 4);
        return f;
    }
    if (t == NM_TYPE_F16) return half_f(row + 2 * k);
    const uint32_t u = (uint32_t)nm_ld16(row + 2 * k) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline const float *f_x(const nm_mm_args *a, nm_type type, int64_t t) {
    if (type == NM_TYPE_F32) return (const float *)(const void *)(a->act + (size_t)t * a->act_stride);
    return (const float *)(const void *)(a->extra + (size_t)t * a->extra_stride);
}

/* 4 consecutive elements of a row as floats (n < 4: the first n). */
static inline float32x4_t load4(nm_type t, const uint8_t *row, int64_t k, int n) {
    if (n < 4) {
        float f[4] = {0, 0, 0, 0};
        for (int i = 0; i < n; i++) f[i] = elem(t, row, k + i);
        return vld1q_f32(f);
    }
    switch (t) {
    case NM_TYPE_F16: return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)(const void *)(row + 2 * k))));
    case NM_TYPE_BF16:
        return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)(const void *)(row + 2 * k)), 16));
    default: return vld1q_f32((const float *)(const void *)(row + 4 * k));
    }
}

INL void transpose4(float32x4_t *r) {
    const float32x4_t t0 = vtrn1q_f32(r[0], r[1]), t1 = vtrn2q_f32(r[0], r[1]);
    const float32x4_t t2 = vtrn1q_f32(r[2], r[3]), t3 = vtrn2q_f32(r[2], r[3]);
    r[0] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    r[1] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
    r[2] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    r[3] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
}

enum { FT4 = 6 };

/* p[k * 4 + i] = row i's element k0 + k */
static void repack4_f(const nm_mm_args *a, nm_type type, int64_t r, int nr, int64_t k0, int kc, float *p) {
    const size_t esz = type == NM_TYPE_F32 ? 4 : 2;
    for (int c = 0; c < kc; c += 4) {
        const int n = kc - c < 4 ? kc - c : 4;
        float32x4_t v[4];
        for (int i = 0; i < 4; i++)
            v[i] = i < nr ? load4(type, a->w + (size_t)(r + i) * a->row_bytes + (size_t)k0 * esz, c, n) : vdupq_n_f32(0.0f);
        transpose4(v);
        for (int i = 0; i < n; i++) vst1q_f32(p + (c + i) * 4, v[i]);
    }
}

static void store4(float *y, int nr, float32x4_t v) {
    float o[4];
    vst1q_f32(o, v);
    for (int j = 0; j < nr; j++) y[j] = o[j];
}

static float32x4_t load4y(const float *y, int nr) {
    float o[4] = {0, 0, 0, 0};
    for (int j = 0; j < nr; j++) o[j] = y[j];
    return vld1q_f32(o);
}

INL void f_tokens4(int NT, const nm_mm_args *a, nm_type type, const float *p, int64_t r, int nr, int64_t t, int64_t k0,
                   int kc) {
    float32x4_t acc[FT4];
    const float *x[FT4];
    for (int i = 0; i < NT; i++) {
        x[i] = f_x(a, type, t + i) + k0;
        acc[i] = k0 ? load4y(a->y + (t + i) * a->ldy + (r - a->y_r0), nr) : vdupq_n_f32(0.0f);
    }
    for (int c = 0; c < kc; c += 16) {
        float32x4_t part[FT4];
        for (int i = 0; i < NT; i++) part[i] = vdupq_n_f32(0.0f);
        for (int k = c; k < c + 16 && k < kc; k++) {
            const float32x4_t w = vld1q_f32(p + 4 * k);
            for (int i = 0; i < NT; i++) part[i] = vfmaq_n_f32(part[i], w, x[i][k]);
        }
        for (int i = 0; i < NT; i++) acc[i] = vaddq_f32(acc[i], part[i]);
    }
    for (int i = 0; i < NT; i++) store4(a->y + (t + i) * a->ldy + (r - a->y_r0), nr, acc[i]);
}

static void f_gemm4(const nm_mm_args *a, int64_t r0, int64_t r1, nm_type type) {
    _Alignas(16) float p[KC_FLOATS * 4];
    for (int64_t r = r0; r < r1; r += 4) {
        const int nr = (int)imin64(4, r1 - r);
        for (int64_t k0 = 0; k0 < a->cols; k0 += KC_FLOATS) {
            const int kc = (int)imin64(KC_FLOATS, a->cols - k0);
            repack4_f(a, type, r, nr, k0, kc, p);
            int64_t t = 0;
            for (; t + FT4 <= a->n_tok; t += FT4) f_tokens4(FT4, a, type, p, r, nr, t, k0, kc);
            for (; t < a->n_tok; t++) f_tokens4(1, a, type, p, r, nr, t, k0, kc);
        }
    }
}

static void f_gemv4(const nm_mm_args *a, nm_type type, int64_t r, int nr, int64_t t) {
    const float *x = f_x(a, type, t);
    const uint8_t *rp[4];
    for (int i = 0; i < 4; i++) rp[i] = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes;
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t c = 0; c < a->cols; c += 16) {
        float32x4_t part = vdupq_n_f32(0.0f);
        for (int64_t k0 = c; k0 < c + 16 && k0 < a->cols; k0 += 4) {
            const int n = (int)imin64(4, a->cols - k0);
            float32x4_t v[4];
            for (int i = 0; i < 4; i++) v[i] = load4(type, rp[i], k0, n);
            transpose4(v);
            for (int i = 0; i < n; i++) part = vfmaq_n_f32(part, v[i], x[k0 + i]);
        }
        acc = vaddq_f32(acc, part);
    }
    store4(a->y + t * a->ldy + (r - a->y_r0), nr, acc);
}

/* BF16: exact float products added in double. */
static inline void bf_add(float64x2_t *acc, float32x4_t p) {
    acc[0] = vaddq_f64(acc[0], vcvt_f64_f32(vget_low_f32(p)));
    acc[1] = vaddq_f64(acc[1], vcvt_high_f64_f32(p));
}

static void bf_rows(const nm_mm_args *a, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r += 4) {
        const int nr = (int)imin64(4, r1 - r);
        const uint8_t *rp[4];
        for (int i = 0; i < 4; i++) rp[i] = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes;
        for (int64_t t = 0; t < a->n_tok; t++) {
            const float *x = f_x(a, NM_TYPE_BF16, t);
            float64x2_t acc[2] = {vdupq_n_f64(0.0), vdupq_n_f64(0.0)};
            for (int64_t k0 = 0; k0 < a->cols; k0 += 4) {
                const int n = (int)imin64(4, a->cols - k0);
                float32x4_t v[4];
                for (int i = 0; i < 4; i++) v[i] = load4(NM_TYPE_BF16, rp[i], k0, n);
                transpose4(v);
                for (int i = 0; i < n; i++) bf_add(acc, vmulq_n_f32(v[i], x[k0 + i]));
            }
            store4(a->y + t * a->ldy + (r - a->y_r0), nr, vcombine_f32(vcvt_f32_f64(acc[0]), vcvt_f32_f64(acc[1])));
        }
    }
}

static void f_rows(const nm_mm_args *a, int64_t r0, int64_t r1, nm_type type) {
    if (type == NM_TYPE_BF16) {
        bf_rows(a, r0, r1);
        return;
    }
    if (a->n_tok >= GEMM_MIN_TOK) {
        f_gemm4(a, r0, r1, type);
        return;
    }
    for (int64_t r = r0; r < r1; r += 4)
        for (int64_t t = 0; t < a->n_tok; t++) f_gemv4(a, type, r, (int)imin64(4, r1 - r), t);
}

static void rows_f32(const nm_mm_args *a, int64_t r0, int64_t r1) { f_rows(a, r0, r1, NM_TYPE_F32); }
static void rows_f16(const nm_mm_args *a, int64_t r0, int64_t r1) { f_rows(a, r0, r1, NM_TYPE_F16); }
static void rows_bf16(const nm_mm_args *a, int64_t r0, int64_t r1) { f_rows(a, r0, r1, NM_TYPE_BF16); }

/* ====================================================================== */
/* the two variants                                                       */
/* ====================================================================== */

static void rows_q8_0_dp(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_q0(true, a, r0, r1, true); }
static void rows_q4_0_dp(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_q0(true, a, r0, r1, false); }
static void rows_q4_k_dp(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_k(true, a, r0, r1, NM_TYPE_Q4_K); }
static void rows_q5_k_dp(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_k(true, a, r0, r1, NM_TYPE_Q5_K); }
static void rows_q6_k_dp(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_k(true, a, r0, r1, NM_TYPE_Q6_K); }
static void rows_q8_0_pl(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_q0(false, a, r0, r1, true); }
static void rows_q4_0_pl(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_q0(false, a, r0, r1, false); }
static void rows_q4_k_pl(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_k(false, a, r0, r1, NM_TYPE_Q4_K); }
static void rows_q5_k_pl(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_k(false, a, r0, r1, NM_TYPE_Q5_K); }
static void rows_q6_k_pl(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_k(false, a, r0, r1, NM_TYPE_Q6_K); }

/* ====================================================================== */
/* activation conversion                                                  */
/* ====================================================================== */
/* The reference quantizers operation for operation: FRINTA is roundf
 * (ties away from zero), FCVTNS rounds to nearest even like lrintf. */

static void convert_q8_0(const float *x, uint8_t *act, uint8_t *extra, int64_t n) {
    const int64_t nb = n / 32;
    float *ed = (float *)(void *)extra;
    for (int64_t b = 0; b < nb; b++, x += 32, act += 34) {
        float32x4_t v[8];
        float32x4_t m = vdupq_n_f32(0.0f);
        for (int i = 0; i < 8; i++) {
            v[i] = vld1q_f32(x + 4 * i);
            m = vmaxq_f32(m, vabsq_f32(v[i]));
        }
        const float amax = vmaxvq_f32(m);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const uint16_t dh = nm_f32_to_f16(d);
        memcpy(act, &dh, 2);
        int32x4_t q[8], sum = vdupq_n_s32(0);
        for (int i = 0; i < 8; i++) {
            q[i] = vcvtq_s32_f32(vrndaq_f32(vmulq_n_f32(v[i], id)));
            sum = vaddq_s32(sum, q[i]);
        }
        for (int h = 0; h < 2; h++) {
            const int16x8_t a0 = vcombine_s16(vqmovn_s32(q[4 * h]), vqmovn_s32(q[4 * h + 1]));
            const int16x8_t a1 = vcombine_s16(vqmovn_s32(q[4 * h + 2]), vqmovn_s32(q[4 * h + 3]));
            vst1q_s8((int8_t *)(act + 2 + 16 * h), vcombine_s8(vqmovn_s16(a0), vqmovn_s16(a1)));
        }
        if (ed) {
            ed[b] = half_f(act);
            const int32_t s = vaddvq_s32(sum);
            memcpy(extra + 4 * (nb + b), &s, 4);
        }
    }
}

static void convert_q8_k(const float *x, uint8_t *act, uint8_t *extra, int64_t n) {
    int16_t *e16 = (int16_t *)(void *)extra;
    for (int64_t b = 0; b < n / NM_QK_K; b++, x += NM_QK_K, act += sizeof(nm_block_q8_k)) {
        float32x4_t m = vdupq_n_f32(0.0f);
        for (int j = 0; j < NM_QK_K; j += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + j)));
        const float amax = vmaxvq_f32(m);
        int8_t *qs = (int8_t *)(act + 4);
        int16_t bsums[16];
        float d = 0.0f;
        if (amax == 0.0f || !isfinite(amax)) {
            memset(qs, 0, NM_QK_K);
            memset(bsums, 0, sizeof bsums);
        } else {
            float max = 0.0f;
            for (int j = 0; j < NM_QK_K; j++)
                if (fabsf(x[j]) == amax) {
                    max = x[j];
                    break;
                }
            const float iscale = -127.0f / max;
            for (int j = 0; j < NM_QK_K; j += 16) {
                int32x4_t q[4];
                for (int i = 0; i < 4; i++) q[i] = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + j + 4 * i), iscale));
                const int16x8_t h0 = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
                const int16x8_t h1 = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
                const int8x16_t b8 = vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1));
                vst1q_s8(qs + j, b8);
                bsums[j / 16] = (int16_t)vaddlvq_s8(b8);
            }
            d = 1.0f / iscale;
        }
        memcpy(act, &d, 4);
        memcpy(act + 4 + NM_QK_K, bsums, sizeof bsums);
        if (e16)
            for (int j = 0; j < 8; j++) e16[8 * b + j] = (int16_t)(bsums[2 * j] + bsums[2 * j + 1]);
    }
}

/* ====================================================================== */
/* dx = dy W panels                                                       */
/* ====================================================================== */

static void nn_neon(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                    int64_t ldc) {
    for (int64_t m = 0; m < M; m++) {
        float *c = C + m * ldc;
        int64_t n = 0;
        for (; n + 16 <= N; n += 16) {
            float32x4_t c0 = vld1q_f32(c + n), c1 = vld1q_f32(c + n + 4), c2 = vld1q_f32(c + n + 8), c3 = vld1q_f32(c + n + 12);
            for (int64_t k = 0; k < K; k++) {
                const float av = A[m * lda + k];
                const float *b = B + k * ldb + n;
                c0 = vfmaq_n_f32(c0, vld1q_f32(b), av);
                c1 = vfmaq_n_f32(c1, vld1q_f32(b + 4), av);
                c2 = vfmaq_n_f32(c2, vld1q_f32(b + 8), av);
                c3 = vfmaq_n_f32(c3, vld1q_f32(b + 12), av);
            }
            vst1q_f32(c + n, c0);
            vst1q_f32(c + n + 4, c1);
            vst1q_f32(c + n + 8, c2);
            vst1q_f32(c + n + 12, c3);
        }
        for (; n < N; n++) {
            float s = c[n];
            for (int64_t k = 0; k < K; k++) s = fmaf(A[m * lda + k], B[k * ldb + n], s);
            c[n] = s;
        }
    }
}

/* ====================================================================== */
/* attention over an F16 cache (see kernels.h)                            */
/* ====================================================================== */
/* Float lanes with one fused multiply-add per product, in the reference's
 * order (kernels.c): a head's 16 score lanes are four vectors, reduced by
 * the reference's tree; values are summed per element in key order. */

static inline float32x4_t h4(const uint16_t *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

/* Scores by key tiles (kernels.h), as the AVX2 level: a tile converted
 * once for all the queries, then per head and quarter tile (4 keys a
 * vector) the reference's lane chains and tree as vertical operations. */
static void attn_scores_neon(const float *q, size_t q_stride, int nq, const uint16_t *k, int64_t n, int64_t hd,
                             float scale, float *scores, size_t s_stride) {
    if (hd > 256) {
        nm_attn_kernel_get(NM_ISA_SCALAR)->scores(q, q_stride, nq, k, n, hd, scale, scores, s_stride);
        return;
    }
    float kf[256 * NM_KEY_TILE];
    for (int64_t p0 = 0; p0 < n; p0 += NM_KEY_TILE, k += NM_KEY_TILE * hd) {
        for (int64_t i = 0; i < 16 * hd; i += 4) vst1q_f32(kf + i, h4(k + i));
        for (int j = 0; j < nq; j++) {
            const float *qj = q + (size_t)j * q_stride;
            for (int64_t h = 0; h < 16 && p0 + h < n; h += 4) {
                const float *kh = kf + h;
                float32x4_t r;
                if (hd % 16 == 0) {
                    float32x4_t b[8];
                    for (int l = 0; l < 8; l++) {
                        float32x4_t lo = vdupq_n_f32(0.0f), hi = vdupq_n_f32(0.0f);
                        for (int64_t i = 0; i < hd; i += 16) {
                            lo = vfmaq_n_f32(lo, vld1q_f32(kh + 16 * (i + l)), qj[i + l]);
                            hi = vfmaq_n_f32(hi, vld1q_f32(kh + 16 * (i + l + 8)), qj[i + l + 8]);
                        }
                        b[l] = vaddq_f32(lo, hi); /* l + 8 */
                    }
                    for (int l = 0; l < 4; l++) b[l] = vaddq_f32(b[l], b[l + 4]);
                    b[0] = vaddq_f32(b[0], b[2]);
                    b[1] = vaddq_f32(b[1], b[3]);
                    r = vaddq_f32(b[0], b[1]);
                } else { /* element by element, as the reference */
                    r = vdupq_n_f32(0.0f);
                    for (int64_t i = 0; i < hd; i++) r = vfmaq_n_f32(r, vld1q_f32(kh + 16 * i), qj[i]);
                }
                r = vmulq_n_f32(r, scale);
                float out[4];
                vst1q_f32(out, r);
                const int64_t m = n - (p0 + h) < 4 ? n - (p0 + h) : 4;
                memcpy(scores + (size_t)j * s_stride + p0 + h, out, (size_t)m * sizeof(float));
            }
        }
    }
}

static void attn_values_neon(const float *w, size_t w_stride, int nq, const uint16_t *v0, size_t stride, int64_t n,
                             int64_t hd, float *out, size_t o_stride) {
    if (hd % 4 || hd > 64) {
        nm_attn_kernel_get(NM_ISA_SCALAR)->values(w, w_stride, nq, v0, stride, n, hd, out, o_stride);
        return;
    }
    const int nc = (int)(hd / 4);
    for (int j = 0; j < nq; j++, w += w_stride, out += o_stride) {
        float32x4_t a[16];
        for (int m = 0; m < nc; m++) a[m] = vdupq_n_f32(0.0f);
        const uint16_t *v = v0;
        for (int64_t p = 0; p < n; p++, v += stride) {
            const float s = w[p];
            for (int m = 0; m < nc; m++) a[m] = vfmaq_n_f32(a[m], h4(v + 4 * m), s);
        }
        for (int m = 0; m < nc; m++) vst1q_f32(out + 4 * m, a[m]);
    }
}

/* FCVTN rounds to nearest even (the FPCR default) */
static void to_f16_neon(const float *x, uint16_t *h, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1_u16(h + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
    for (; i < n; i++) h[i] = nm_f32_to_f16(x[i]);
}

static void round_f16_neon(float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(x + i, vcvt_f32_f16(vcvt_f16_f32(vld1q_f32(x + i))));
    for (; i < n; i++) x[i] = nm_half_to_f32(nm_f32_to_f16(x[i]));
}

/* nm_exp_ref in 4 lanes: the same operations (separate multiplies and
 * adds, no FMLA), so the same bits */
static inline float32x4_t exp4(float32x4_t x) {
    const float32x4_t hi = vdupq_n_f32(NM_EXP_HI), lo = vdupq_n_f32(NM_EXP_LO), magic = vdupq_n_f32(NM_EXP_MAGIC);
    float32x4_t xc = vbslq_f32(vcltq_f32(x, hi), x, hi);
    xc = vbslq_f32(vcgtq_f32(x, lo), xc, lo);
    const float32x4_t fn = vsubq_f32(vaddq_f32(vmulq_f32(xc, vdupq_n_f32(NM_EXP_LOG2E)), magic), magic);
    float32x4_t r = vsubq_f32(xc, vmulq_f32(fn, vdupq_n_f32(NM_EXP_C1)));
    r = vsubq_f32(r, vmulq_f32(fn, vdupq_n_f32(NM_EXP_C2)));
    const float32x4_t z = vmulq_f32(r, r);
    float32x4_t p = vdupq_n_f32(NM_EXP_P0);
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(NM_EXP_P1));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(NM_EXP_P2));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(NM_EXP_P3));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(NM_EXP_P4));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(NM_EXP_P5));
    float32x4_t y = vaddq_f32(vaddq_f32(vmulq_f32(p, z), r), vdupq_n_f32(1.0f));
    const int32x4_t n = vcvtq_s32_f32(fn);
    y = vmulq_f32(y, vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n, vdupq_n_s32(127)), 23)));
    y = vbslq_f32(vcltq_f32(x, lo), vdupq_n_f32(0.0f), y);
    y = vbslq_f32(vcgtq_f32(x, hi), vdupq_n_f32(__builtin_inff()), y);
    return vbslq_f32(vceqq_f32(x, x), y, x);
}

static void softmax_neon(float *x, int64_t n) {
    float32x4_t vm = vdupq_n_f32(-__builtin_inff());
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vm = vmaxq_f32(vm, vld1q_f32(x + i));
    float max = vmaxvq_f32(vm); /* max is exact in any order */
    for (; i < n; i++) max = x[i] > max ? x[i] : max;
    const float32x4_t m = vdupq_n_f32(max);
    float64x2_t a[8];
    for (int h = 0; h < 8; h++) a[h] = vdupq_n_f64(0.0);
    for (i = 0; i + 16 <= n; i += 16)
        for (int h = 0; h < 4; h++) {
            const float32x4_t e = exp4(vsubq_f32(vld1q_f32(x + i + 4 * h), m));
            vst1q_f32(x + i + 4 * h, e);
            a[2 * h] = vaddq_f64(a[2 * h], vcvt_f64_f32(vget_low_f32(e)));
            a[2 * h + 1] = vaddq_f64(a[2 * h + 1], vcvt_high_f64_f32(e));
        }
    double acc[16];
    for (int h = 0; h < 8; h++) vst1q_f64(acc + 2 * h, a[h]);
    const float inv = nm_softmax_tail(x, n, i, max, acc);
    for (i = 0; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_n_f32(vld1q_f32(x + i), inv));
    for (; i < n; i++) x[i] *= inv;
}

static void swiglu_neon(float *out, const float *gate, const float *up, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t g = vld1q_f32(gate + i);
        const float32x4_t e = exp4(vnegq_f32(g));
        vst1q_f32(out + i, vmulq_f32(vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0f), e)), vld1q_f32(up + i)));
    }
    for (; i < n; i++) {
        const float g = gate[i];
        out[i] = g / (1.0f + nm_exp_ref(-g)) * up[i];
    }
}

static void rmsnorm_neon(float *y, const float *x, const float *w, int64_t n, float eps) {
    float64x2_t a[4] = {vdupq_n_f64(0), vdupq_n_f64(0), vdupq_n_f64(0), vdupq_n_f64(0)}; /* lanes 2j, 2j + 1 */
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 4; j++) {
            const float64x2_t v = vcvt_f64_f32(vld1_f32(x + i + 2 * j));
            a[j] = vaddq_f64(a[j], vmulq_f64(v, v));
        }
    double s[8];
    for (int j = 0; j < 4; j++) vst1q_f64(s + 2 * j, a[j]);
    const float scale = nm_rms_scale(s, x, i, n, eps);
    const float32x4_t vs = vdupq_n_f32(scale);
    for (i = 0; i + 4 <= n; i += 4) {
        const float32x4_t v = vmulq_f32(vld1q_f32(x + i), vs);
        vst1q_f32(y + i, w ? vmulq_f32(v, vld1q_f32(w + i)) : v);
    }
    for (; i < n; i++) y[i] = w ? (x[i] * scale) * w[i] : x[i] * scale;
}

static const nm_attn_kernel ATTN_NEON = {attn_scores_neon, attn_values_neon, to_f16_neon, round_f16_neon,
                                         softmax_neon,     swiglu_neon,      rmsnorm_neon};

const nm_attn_kernel *nm_attn_kernel_neon(void) { return &ATTN_NEON; }

/* ====================================================================== */
/* peak probes                                                            */
/* ====================================================================== */

static volatile uint64_t probe_sink;

INL uint64_t probe_int8(bool dp, uint64_t iters) {
    int32x4_t c[12];
    for (int i = 0; i < 12; i++) c[i] = vdupq_n_s32(i);
    int8x16_t x = vdupq_n_s8(3), y = vdupq_n_s8(5);
    for (uint64_t it = 0; it < iters; it++) {
        __asm__ volatile("" : "+w"(x), "+w"(y));
        for (int i = 0; i < 12; i++) c[i] = dot4(dp, c[i], x, y);
    }
    int32x4_t s = c[0];
    for (int i = 1; i < 12; i++) s = vaddq_s32(s, c[i]);
    probe_sink = vaddvq_u32(vreinterpretq_u32_s32(s)); /* the sums wrap around */
    return iters * 12 * 16;
}

uint64_t nm_probe_int8_neon(uint64_t iters) {
    return nm_cpu_has_neon_dotprod() ? probe_int8(true, iters) : probe_int8(false, iters);
}

uint64_t nm_probe_fma_neon(uint64_t iters) {
    float32x4_t c[12];
    for (int i = 0; i < 12; i++) c[i] = vdupq_n_f32((float)i);
    float32x4_t x = vdupq_n_f32(0.999f), y = vdupq_n_f32(0.001f);
    for (uint64_t it = 0; it < iters; it++) {
        __asm__ volatile("" : "+w"(x), "+w"(y));
        for (int i = 0; i < 12; i++) c[i] = vfmaq_f32(y, c[i], x);
    }
    float32x4_t s = c[0];
    for (int i = 1; i < 12; i++) s = vaddq_f32(s, c[i]);
    probe_sink = (uint64_t)vaddvq_f32(s);
    return iters * 12 * 4;
}

uint64_t nm_probe_read_neon(const uint8_t *p, size_t n) {
    uint64x2_t s0 = vdupq_n_u64(0), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 64) {
        s0 = vaddq_u64(s0, vld1q_u64((const uint64_t *)(const void *)(p + i)));
        s1 = vaddq_u64(s1, vld1q_u64((const uint64_t *)(const void *)(p + i + 16)));
        s2 = vaddq_u64(s2, vld1q_u64((const uint64_t *)(const void *)(p + i + 32)));
        s3 = vaddq_u64(s3, vld1q_u64((const uint64_t *)(const void *)(p + i + 48)));
    }
    return vaddvq_u64(vaddq_u64(vaddq_u64(s0, s1), vaddq_u64(s2, s3)));
}

/* Weight rows to floats for nm_matmul_t: exact conversions. */
static void f16_to_float(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h + i))));
    for (; i < n; i++) dst[i] = half_f((const uint8_t *)(h + i));
}

static void bf16_to_float(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(h + i), 16)));
    for (; i < n; i++) {
        const uint32_t u = (uint32_t)h[i] << 16;
        memcpy(dst + i, &u, 4);
    }
}

/* ====================================================================== */
/* the tables                                                             */
/* ====================================================================== */

static const nm_mm_kernel NEON_DP[NM_TYPE_COUNT] = {
    [NM_TYPE_F32] = {NM_TYPE_F32, false, 4, NM_ISA_NEON, rows_f32, NULL, NULL, NULL, NULL},
    [NM_TYPE_F16] = {NM_TYPE_F16, true, 4, NM_ISA_NEON, rows_f16, NULL, f16_to_float, NULL, NULL},
    [NM_TYPE_BF16] = {NM_TYPE_BF16, true, 4, NM_ISA_NEON, rows_bf16, NULL, bf16_to_float, NULL, NULL},
    [NM_TYPE_Q4_0] = {NM_TYPE_Q8_0, true, 4, NM_ISA_NEON, rows_q4_0_dp, convert_q8_0, NULL, NULL, NULL},
    [NM_TYPE_Q8_0] = {NM_TYPE_Q8_0, true, 4, NM_ISA_NEON, rows_q8_0_dp, convert_q8_0, NULL, NULL, NULL},
    [NM_TYPE_Q4_K] = {NM_TYPE_Q8_K, true, 4, NM_ISA_NEON, rows_q4_k_dp, convert_q8_k, NULL, NULL, NULL},
    [NM_TYPE_Q5_K] = {NM_TYPE_Q8_K, true, 4, NM_ISA_NEON, rows_q5_k_dp, convert_q8_k, NULL, NULL, NULL},
    [NM_TYPE_Q6_K] = {NM_TYPE_Q8_K, true, 4, NM_ISA_NEON, rows_q6_k_dp, convert_q8_k, NULL, NULL, NULL},
};

static const nm_mm_kernel NEON_PLAIN[NM_TYPE_COUNT] = {
    [NM_TYPE_F32] = {NM_TYPE_F32, false, 4, NM_ISA_NEON, rows_f32, NULL, NULL, NULL, NULL},
    [NM_TYPE_F16] = {NM_TYPE_F16, true, 4, NM_ISA_NEON, rows_f16, NULL, f16_to_float, NULL, NULL},
    [NM_TYPE_BF16] = {NM_TYPE_BF16, true, 4, NM_ISA_NEON, rows_bf16, NULL, bf16_to_float, NULL, NULL},
    [NM_TYPE_Q4_0] = {NM_TYPE_Q8_0, true, 4, NM_ISA_NEON, rows_q4_0_pl, convert_q8_0, NULL, NULL, NULL},
    [NM_TYPE_Q8_0] = {NM_TYPE_Q8_0, true, 4, NM_ISA_NEON, rows_q8_0_pl, convert_q8_0, NULL, NULL, NULL},
    [NM_TYPE_Q4_K] = {NM_TYPE_Q8_K, true, 4, NM_ISA_NEON, rows_q4_k_pl, convert_q8_k, NULL, NULL, NULL},
    [NM_TYPE_Q5_K] = {NM_TYPE_Q8_K, true, 4, NM_ISA_NEON, rows_q5_k_pl, convert_q8_k, NULL, NULL, NULL},
    [NM_TYPE_Q6_K] = {NM_TYPE_Q8_K, true, 4, NM_ISA_NEON, rows_q6_k_pl, convert_q8_k, NULL, NULL, NULL},
};

const nm_mm_kernel *nm_mm_kernel_neon(nm_type t) {
    const nm_mm_kernel *table = nm_cpu_has_neon_dotprod() ? NEON_DP : NEON_PLAIN;
    return (unsigned)t < NM_TYPE_COUNT && table[t].rows ? &table[t] : NULL;
}

nm_nn_fn nm_nn_kernel_neon(void) { return nn_neon; }

#else /* not aarch64 */

const nm_mm_kernel *nm_mm_kernel_neon(nm_type t) {
    (void)t;
    return NULL;
}
nm_nn_fn nm_nn_kernel_neon(void) { return NULL; }
const nm_attn_kernel *nm_attn_kernel_neon(void) { return NULL; }
uint64_t nm_probe_fma_neon(uint64_t iters) { return (void)iters, 0; }
uint64_t nm_probe_int8_neon(uint64_t iters) { return (void)iters, 0; }
uint64_t nm_probe_read_neon(const uint8_t *p, size_t n) { return (void)p, (void)n, 0; }

#endif
