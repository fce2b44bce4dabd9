/* kernels_avx512.c - matrix kernels for AVX-512 (F, BW, VL, DQ, VNNI).
 *
 * Three shapes (see KERNELS.md for the arithmetic):
 *
 *  - batches (prompt processing): a tile of 16 weight rows is repacked,
 *    one chunk of the row length at a time, so that one vector holds the
 *    same 4 consecutive elements of 16 rows ("lanes are rows").  Each
 *    token then multiplies the whole tile with broadcasts of its own
 *    elements: for 8-bit types one VPDPBUSD does 64 multiply-adds into 16
 *    per-row block sums, with no horizontal reduction; the block's float
 *    scale arithmetic is then one vector operation for 16 outputs.  The
 *    repacking is paid once per tile and used by every token.
 *  - single tokens (generation): no repacking; 16 rows are read as stored,
 *    their block sums reduced horizontally into the same per-row lanes,
 *    while the next 16 rows are prefetched linearly into L2.
 *  - packed weights (Q8_0, Q4_0, Q4_K, Q6_K read into memory by a model):
 *    the tiles were rewritten once at load into lanes-are-rows vectors in
 *    reading order (pack_tile), so a single token multiplies them like a
 *    batch does its panels, from one stream; batches fill their panels
 *    from them with plain loads (see "Packed" below, KERNELS.md).
 *
 * All shapes give every output element the same operations in the same
 * order, so a token's result does not depend on its batch.  For quantized
 * weights those operations are the scalar reference's: exact integer block
 * sums, then `sum += (float)isum * (dw * dx)` in block order.
 *
 * 8-bit products: VPDPBUSD multiplies unsigned by signed bytes.  Weights are
 * made unsigned (Q8_0: q + 128; Q4_0: the stored nibble 0..15) and the
 * shift is taken back exactly with the activation block's sum:
 * sum (q + c) x = sum q x + c sum x. */
#include "kernels_impl.h"
#include "ops.h"

#include <math.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* Float expressions are evaluated as written (the reference's rounding):
 * GCC does not contract them in ISO C mode; clang must be told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define T512_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c"), always_inline)) static inline

T512_INLINE __mmask16 lanes(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

/* Four vectors, each holding 4 rows' partial sums (row of 128-bit lane k of
 * vector j = 4k + j), to one vector of the 16 rows' totals, in row order. */
T512_INLINE __m512i hsum4x4(__m512i a, __m512i b, __m512i c, __m512i d) {
    const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
}

/* Two vectors holding two rows each (one per 256-bit half, 8 partial sums a
 * row) to one holding the four rows' 4 partial sums: [p.lo, p.hi, q.lo, q.hi]. */
T512_INLINE __m512i fold_pairs(__m512i p, __m512i q) {
    return _mm512_add_epi32(_mm512_shuffle_i32x4(p, q, _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(p, q, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* 16 half-precision block scales at offset o of 16 rows.  Inserting 16-bit
 * loads beats VPGATHERDD by far on the cores measured (Zen 4). */
T512_INLINE __m512 load_halves(const uint8_t *const *rp, size_t o) {
    __m128i a = _mm_cvtsi32_si128(nm_ld16(rp[0] + o)), b = _mm_cvtsi32_si128(nm_ld16(rp[8] + o));
    a = _mm_insert_epi16(a, nm_ld16(rp[1] + o), 1);
    b = _mm_insert_epi16(b, nm_ld16(rp[9] + o), 1);
    a = _mm_insert_epi16(a, nm_ld16(rp[2] + o), 2);
    b = _mm_insert_epi16(b, nm_ld16(rp[10] + o), 2);
    a = _mm_insert_epi16(a, nm_ld16(rp[3] + o), 3);
    b = _mm_insert_epi16(b, nm_ld16(rp[11] + o), 3);
    a = _mm_insert_epi16(a, nm_ld16(rp[4] + o), 4);
    b = _mm_insert_epi16(b, nm_ld16(rp[12] + o), 4);
    a = _mm_insert_epi16(a, nm_ld16(rp[5] + o), 5);
    b = _mm_insert_epi16(b, nm_ld16(rp[13] + o), 5);
    a = _mm_insert_epi16(a, nm_ld16(rp[6] + o), 6);
    b = _mm_insert_epi16(b, nm_ld16(rp[14] + o), 6);
    a = _mm_insert_epi16(a, nm_ld16(rp[7] + o), 7);
    b = _mm_insert_epi16(b, nm_ld16(rp[15] + o), 7);
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1));
}

T512_INLINE __m512i bcast32(const uint8_t *p) { return _mm512_set1_epi32((int32_t)nm_ld32(p)); }

/* ====================================================================== */
/* Q8_0 and Q4_0 weights x Q8_0 activations                               */
/* ====================================================================== */
/* Activation side data (nm_act_extra): per block the scale as a float and
 * the sum of its quants. */
typedef struct q0_tok {
    const uint8_t *q;  /* block b0's quants (act row + 34 * b0 + 2) */
    const float *d;    /* block b0's scale                          */
    const int32_t *s;  /* block b0's quant sum                      */
} q0_tok;

T512_INLINE q0_tok q0_token(const nm_mm_args *a, int64_t t, int64_t b0) {
    const int64_t nb = a->cols / 32;
    const float *d = (const float *)(const void *)(a->extra + (size_t)t * a->extra_stride);
    q0_tok k = {a->act + (size_t)t * a->act_stride + (size_t)b0 * 34 + 2, d + b0,
                (const int32_t *)(const void *)(d + nb) + b0};
    return k;
}

/* Repacked tile chunk: for block k and group g of 4 elements, 64 bytes =
 * the 4 unsigned quants of each of 16 rows; then the 16 rows' scales. */
typedef struct q0_panel {
    _Alignas(64) uint8_t w[KC_BLOCKS * 8 * 64];
    _Alignas(64) float d[KC_BLOCKS * 16];
} q0_panel;

/* 8 x 8 transpose of 32-bit elements (row i of the input = vector i). */
T512_INLINE void transpose8x8(__m256i *r) {
    const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    const __m256i t4 = _mm256_unpacklo_epi32(r[4], r[5]), t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    const __m256i t6 = _mm256_unpacklo_epi32(r[6], r[7]), t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
    const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
    r[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
    r[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
    r[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
    r[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
    r[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
    r[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
    r[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
    r[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

/* Writes the 32 quants of 16 rows (vector i = row i) as 8 vectors of
 * "4 quants of each of the 16 rows", 64 bytes each, at dst. */
T512_INLINE void put_tile16(uint8_t *dst, __m256i *q) {
    transpose8x8(q);
    transpose8x8(q + 8);
    for (int g = 0; g < 8; g++)
        _mm512_store_si512(dst + 64 * g, _mm512_inserti64x4(_mm512_castsi256_si512(q[g]), q[8 + g], 1));
}

/* Rows past nr repeat the last one (their lanes are never stored) with a
 * zero scale. */
T512 static void repack_q8_0(const nm_mm_args *a, int64_t r, int nr, int64_t b0, int kb, q0_panel *p) {
    const uint8_t *row[16];
    for (int i = 0; i < 16; i++) row[i] = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes + (size_t)b0 * 34;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int k = 0; k < kb; k++) {
        __m256i q[16];
        for (int i = 0; i < 16; i++) {
            const uint8_t *blk = row[i] + 34 * k;
            p->d[16 * k + i] = i < nr ? _cvtsh_ss(nm_ld16(blk)) : 0.0f;
            q[i] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(const void *)(blk + 2)), flip);
        }
        put_tile16(p->w + k * 512, q);
    }
}

T512 static void repack_q4_0(const nm_mm_args *a, int64_t r, int nr, int64_t b0, int kb, q0_panel *p) {
    const uint8_t *row[16];
    for (int i = 0; i < 16; i++) row[i] = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes + (size_t)b0 * 18;
    const __m256i m4 = _mm256_set1_epi8(15);
    for (int k = 0; k < kb; k++) {
        __m256i q[16];
        for (int i = 0; i < 16; i++) {
            const uint8_t *blk = row[i] + 18 * k;
            p->d[16 * k + i] = i < nr ? _cvtsh_ss(nm_ld16(blk)) : 0.0f;
            const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(blk + 2));
            q[i] = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1), m4);
        }
        put_tile16(p->w + k * 512, q);
    }
}

/* NT tokens x one panel chunk: acc[t] (16 rows) continues each token's sum
 * over blocks b0 .. b0 + kb - 1.  The tokens' integer sums advance
 * together, group by group, so that NT independent chains of VPDPBUSD are
 * in flight instead of one. */
enum { QT = 8 };

T512_INLINE void q0_chunk(int NT, const q0_panel *p, int kb, const q0_tok *tk, int corr, __m512 *acc) {
    for (int k = 0; k < kb; k++) {
        const __m512i *w = (const __m512i *)(const void *)(p->w + k * 512);
        __m512i s[QT];
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) s[t] = _mm512_set1_epi32(corr * tk[t].s[k]);
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
            const __m512i wg = _mm512_load_si512(w + g);
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++) s[t] = _mm512_dpbusd_epi32(s[t], wg, bcast32(tk[t].q + 34 * k + 4 * g));
        }
        const __m512 dw = _mm512_load_ps(p->d + 16 * k);
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) {
            const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(tk[t].d[k]));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_cvtepi32_ps(s[t]), scale));
        }
    }
}

T512_INLINE void q0_tokens(int NT, const nm_mm_args *a, const q0_panel *p, int64_t r, __mmask16 m, int64_t t,
                           int64_t b0, int kb, int corr) {
    __m512 acc[QT];
    q0_tok tk[QT];
#pragma GCC unroll 8
    for (int i = 0; i < NT; i++) {
        tk[i] = q0_token(a, t + i, b0);
        float *y = a->y + (t + i) * a->ldy + (r - a->y_r0);
        acc[i] = b0 ? _mm512_maskz_loadu_ps(m, y) : _mm512_setzero_ps();
    }
    q0_chunk(NT, p, kb, tk, corr, acc);
#pragma GCC unroll 8
    for (int i = 0; i < NT; i++) _mm512_mask_storeu_ps(a->y + (t + i) * a->ldy + (r - a->y_r0), m, acc[i]);
}

/* Three tile chunks (48 rows) x NT tokens: each broadcast activation word
 * feeds three VPDPBUSD and each weight vector four tokens (12 integer and
 * 12 float accumulators, 3 weight vectors, one broadcast: 28 of 32 zmm).
 * One core, Q4_0 2304 x 2048 x 512 tokens: 147-149 G multiply-adds/s with
 * pairs of tiles x 6 tokens (the previous shape), 162-163 with three x 4
 * (three x 5, with spills, about the same). */
enum { QT3 = 4 };

T512_INLINE void q0_chunk3(int NT, const q0_panel *p0, const q0_panel *p1, const q0_panel *p2, int kb,
                           const q0_tok *tk, int corr, __m512 *acc0, __m512 *acc1, __m512 *acc2) {
    for (int k = 0; k < kb; k++) {
        const __m512i *w0 = (const __m512i *)(const void *)(p0->w + k * 512);
        const __m512i *w1 = (const __m512i *)(const void *)(p1->w + k * 512);
        const __m512i *w2 = (const __m512i *)(const void *)(p2->w + k * 512);
        __m512i s0[QT3], s1[QT3], s2[QT3];
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) s2[t] = s1[t] = s0[t] = _mm512_set1_epi32(corr * tk[t].s[k]);
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
            const __m512i wg0 = _mm512_load_si512(w0 + g), wg1 = _mm512_load_si512(w1 + g),
                          wg2 = _mm512_load_si512(w2 + g);
#pragma GCC unroll 8
            for (int t = 0; t < NT; t++) {
                const __m512i x = bcast32(tk[t].q + 34 * k + 4 * g);
                s0[t] = _mm512_dpbusd_epi32(s0[t], wg0, x);
                s1[t] = _mm512_dpbusd_epi32(s1[t], wg1, x);
                s2[t] = _mm512_dpbusd_epi32(s2[t], wg2, x);
            }
        }
        const __m512 dw0 = _mm512_load_ps(p0->d + 16 * k), dw1 = _mm512_load_ps(p1->d + 16 * k),
                     dw2 = _mm512_load_ps(p2->d + 16 * k);
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) {
            const __m512 dx = _mm512_set1_ps(tk[t].d[k]);
            acc0[t] = _mm512_add_ps(acc0[t], _mm512_mul_ps(_mm512_cvtepi32_ps(s0[t]), _mm512_mul_ps(dw0, dx)));
            acc1[t] = _mm512_add_ps(acc1[t], _mm512_mul_ps(_mm512_cvtepi32_ps(s1[t]), _mm512_mul_ps(dw1, dx)));
            acc2[t] = _mm512_add_ps(acc2[t], _mm512_mul_ps(_mm512_cvtepi32_ps(s2[t]), _mm512_mul_ps(dw2, dx)));
        }
    }
}

T512_INLINE void q0_tokens3(int NT, const nm_mm_args *a, const q0_panel *p0, const q0_panel *p1, const q0_panel *p2,
                            int64_t r, int64_t t, int64_t b0, int kb, int corr) {
    __m512 acc0[QT3], acc1[QT3], acc2[QT3];
    q0_tok tk[QT3];
#pragma GCC unroll 8
    for (int i = 0; i < NT; i++) {
        tk[i] = q0_token(a, t + i, b0);
        float *y = a->y + (t + i) * a->ldy + (r - a->y_r0);
        acc0[i] = b0 ? _mm512_loadu_ps(y) : _mm512_setzero_ps();
        acc1[i] = b0 ? _mm512_loadu_ps(y + 16) : _mm512_setzero_ps();
        acc2[i] = b0 ? _mm512_loadu_ps(y + 32) : _mm512_setzero_ps();
    }
    q0_chunk3(NT, p0, p1, p2, kb, tk, corr, acc0, acc1, acc2);
#pragma GCC unroll 8
    for (int i = 0; i < NT; i++) {
        float *y = a->y + (t + i) * a->ldy + (r - a->y_r0);
        _mm512_storeu_ps(y, acc0[i]);
        _mm512_storeu_ps(y + 16, acc1[i]);
        _mm512_storeu_ps(y + 32, acc2[i]);
    }
}

/* A panel chunk from a packed tile (rows r..r+15, whole): the quant
 * vectors are already "4 quants of 16 rows" (Q8_0: already unsigned). */
T512 static void repack_packed(const nm_mm_args *a, int64_t r, int64_t b0, int kb, q0_panel *p, bool q8) {
    const int64_t nb = a->cols / 32;
    const uint8_t *tile = a->w + (size_t)r * a->row_bytes;
    const __m512i m4 = _mm512_set1_epi8(15);
    for (int k = 0; k < kb; k++) {
        const nm_q0p_at at = nm_q0p_block(b0 + k, nb, q8 ? 512 : 256);
        _mm512_store_ps(p->d + 16 * k, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(tile + at.sc))));
        __m512i *dst = (__m512i *)(void *)(p->w + k * 512);
        for (int g = 0; g < 4; g++) {
            const __m512i v = _mm512_loadu_si512((const void *)(tile + at.q + 64 * g));
            if (q8) {
                _mm512_store_si512(dst + g, v);
                _mm512_store_si512(dst + 4 + g, _mm512_loadu_si512((const void *)(tile + at.q + 256 + 64 * g)));
            } else {
                _mm512_store_si512(dst + g, _mm512_and_si512(v, m4));
                _mm512_store_si512(dst + 4 + g, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
            }
        }
    }
}

/* The panel chunk of rows r..r+nr-1, whichever layout they are in. */
T512_INLINE void q0_fill(const nm_mm_args *a, int64_t r, int nr, int64_t b0, int kb, q0_panel *p, bool q8,
                         bool packed) {
    if (packed) repack_packed(a, r, b0, kb, p, q8);
    else if (q8) repack_q8_0(a, r, nr, b0, kb, p);
    else repack_q4_0(a, r, nr, b0, kb, p);
}

/* Rows [r0, r1) as 16-row tiles (packed: whole tiles of a packed matrix),
 * three at a time while they last (batch chunks are multiples of 48 rows,
 * batch_align), the rest one at a time. */
T512 static void q0_gemm(const nm_mm_args *a, int64_t r0, int64_t r1, bool q8, bool packed) {
    const int64_t nb = a->cols / 32;
    const int corr = q8 ? -128 : -8;
    q0_panel p, p1, p2;
    int64_t r = r0;
    for (; r + 48 <= r1; r += 48)
        for (int64_t b0 = 0; b0 < nb; b0 += KC_BLOCKS) {
            const int kb = (int)imin64(KC_BLOCKS, nb - b0);
            q0_fill(a, r, 16, b0, kb, &p, q8, packed);
            q0_fill(a, r + 16, 16, b0, kb, &p1, q8, packed);
            q0_fill(a, r + 32, 16, b0, kb, &p2, q8, packed);
            int64_t t = 0;
            for (; t + QT3 <= a->n_tok; t += QT3) q0_tokens3(QT3, a, &p, &p1, &p2, r, t, b0, kb, corr);
            for (; t < a->n_tok; t++) q0_tokens3(1, a, &p, &p1, &p2, r, t, b0, kb, corr);
        }
    for (; r < r1; r += 16) {
        const int nr = (int)imin64(16, r1 - r);
        const __mmask16 m = lanes(nr);
        for (int64_t b0 = 0; b0 < nb; b0 += KC_BLOCKS) {
            const int kb = (int)imin64(KC_BLOCKS, nb - b0);
            q0_fill(a, r, nr, b0, kb, &p, q8, packed);
            int64_t t = 0;
            for (; t + QT <= a->n_tok; t += QT) q0_tokens(QT, a, &p, r, m, t, b0, kb, corr);
            for (; t < a->n_tok; t++) q0_tokens(1, a, &p, r, m, t, b0, kb, corr);
        }
    }
}

/* One token x 16 rows as stored.  (Measured on Zen 4: reading 16 rows side
 * by side streams from memory faster than 4 rows x 4 blocks or one row at a
 * time with per-block reductions; prefetching each row a fixed distance
 * ahead slowed it down, the next tile's span (prefetch_part) sped it up.)
 * Q8_0: rows travel in pairs, one per
 * 256-bit half (pair i = 2j + e holds rows j + 8e and j + 4 + 8e, so that
 * fold_pairs then hsum4x4 put row n in lane n).  One block a step: a four
 * block step like Q4_0's (two word permutes a row, hsum4x4 for 4 rows x 4
 * blocks, scales by blend and permute) read 10-13% faster from L2/L3 but
 * 4-7% slower from memory, where Q8_0 generation runs (KERNELS.md). */
T512_INLINE __m512i q8_pair(const uint8_t *lo, const uint8_t *hi, __m512i xb) {
    const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(const void *)lo)),
                                         _mm256_loadu_si256((const __m256i *)(const void *)hi), 1);
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(z, _mm512_set1_epi8((char)0x80)), xb);
}

T512 static void gemv_q8_0(const nm_mm_args *a, int64_t r, int nr, int64_t t, const span *nx) {
    const int64_t nb = a->cols / 32;
    const q0_tok tk = q0_token(a, t, 0);
    const uint8_t *rp[16];
    for (int i = 0; i < 16; i++) rp[i] = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes + 2;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const size_t o = (size_t)b * 34;
        prefetch_part(nx, b, nb);
        const __m512i xb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(const void *)(tk.q + o)));
        const __m512i q0 = fold_pairs(q8_pair(rp[0] + o, rp[4] + o, xb), q8_pair(rp[8] + o, rp[12] + o, xb));
        const __m512i q1 = fold_pairs(q8_pair(rp[1] + o, rp[5] + o, xb), q8_pair(rp[9] + o, rp[13] + o, xb));
        const __m512i q2 = fold_pairs(q8_pair(rp[2] + o, rp[6] + o, xb), q8_pair(rp[10] + o, rp[14] + o, xb));
        const __m512i q3 = fold_pairs(q8_pair(rp[3] + o, rp[7] + o, xb), q8_pair(rp[11] + o, rp[15] + o, xb));
        const __m512i s = _mm512_add_epi32(hsum4x4(q0, q1, q2, q3), _mm512_set1_epi32(-128 * tk.s[b]));
        const __m512 scale = _mm512_mul_ps(load_halves(rp, o - 2), _mm512_set1_ps(tk.d[b]));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(s), scale));
    }
    _mm512_mask_storeu_ps(a->y + t * a->ldy + (r - a->y_r0), lanes(nr), acc);
}

/* Q4_0: four rows' 16 packed bytes per vector, one per 128-bit lane (vector
 * j holds rows j, j+4, j+8, j+12), low nibbles against elements 0..15 and
 * high nibbles against 16..31. */
T512_INLINE __m512i q4_quad(const uint8_t *p0, const uint8_t *p1, const uint8_t *p2, const uint8_t *p3, __m512i xl,
                            __m512i xh) {
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(const void *)p0));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(const void *)p1), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(const void *)p2), 2);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(const void *)p3), 3);
    const __m512i m4 = _mm512_set1_epi8(15);
    const __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl), hi, xh);
}

/* Word-permute tables of the 4-block loop of gemv_q4_0 (built by
 * q4_tables; constant data).  Four Q4_0 blocks of a row are 72 bytes
 * (scale, 16 quant bytes; all 16-bit aligned), read as A = bytes 0..63 and
 * A8 = bytes 8..71 (so that nothing past the 4 blocks is read).  Rows go in
 * pairs (a, b): one permute of (a's A, b's A8) puts in 128-bit lane k
 * block k's quant bytes 0..7 of row a and 8..15 of row b, the same permute
 * of (a's A8, b's A) bytes 8..15 of a and 0..7 of b; four VPDPBUSD (low
 * and high nibbles of both) into one accumulator then leave two partial
 * sums per row and block: [a, a, b, b] in lane k. */
typedef struct q4_tabs {
    __m512i wq;         /* (A of a, A8 of b) -> lane k: a's quants 0..7, b's 8..15     */
    __m512i xl, xh;     /* activations (4 blocks of 34 bytes): elements 0..15 / 16..31 */
    __m512i sa, sb;     /* A0,A1 / A2,A3 -> the scales of rows 4g+j, block k, at 4k+j */
    __m512i rep;        /* dword lane l <- lane l / 4                                  */
} q4_tabs;

/* Index of the 16-bit word at byte offset o of a two-vector table whose
 * first vector starts at byte f0 and second at f1 (o is inside one). */
static inline int16_t q4_word(int o, int f0, int f1) {
    return (int16_t)(o >= f0 && o + 2 <= f0 + 64 ? (o - f0) / 2 : 32 + (o - f1) / 2);
}

T512 static q4_tabs q4_tables(void) {
    int16_t wq[32], xl[32], xh[32], sa[32], sb[32];
    int32_t rep[16];
    for (int k = 0; k < 4; k++)
        for (int w = 0; w < 8; w++) {
            /* block k's quants at 18k + 2 of A and (bytes 8..15) at 18k + 2 of A8 */
            wq[8 * k + w] = (int16_t)((w < 4 ? 0 : 32) + 9 * k + 1 + (w & 3));
            xl[8 * k + w] = q4_word(34 * k + 2 + 2 * w, 0, 64);   /* X0 = 0..63, X1 = 64..127 */
            xh[8 * k + w] = q4_word(34 * k + 18 + 2 * w, 16, 72); /* Y0 = 16..79, Y1 = 72..135 */
        }
    for (int i = 0; i < 32; i++) {
        const int k = (i / 4) & 3, j = i & 3;
        sa[i] = (int16_t)((j == 1 ? 32 : 0) + 9 * k); /* positions j = 0, 1 */
        sb[i] = (int16_t)((j == 3 ? 32 : 0) + 9 * k); /* positions j = 2, 3 */
    }
    for (int i = 0; i < 16; i++) rep[i] = i / 4;
    q4_tabs t = {_mm512_loadu_si512(wq), _mm512_loadu_si512(xl), _mm512_loadu_si512(xh),
                 _mm512_loadu_si512(sa), _mm512_loadu_si512(sb), _mm512_loadu_si512(rep)};
    return t;
}

T512_INLINE __m512i ld512(const uint8_t *p) { return _mm512_loadu_si512((const void *)p); }

/* A load the compiler must keep in a register: left to itself, GCC loads a
 * vector again for each use rather than copy it, and 64-byte loads that
 * cross a cache line (most of them here) cost 1.7 cycles each on Zen 4. */
T512_INLINE __m512i ld512_reg(const uint8_t *p) {
    __m512i v = ld512(p);
    __asm__("" : "+v"(v));
    return v;
}

/* What the 16 rows of a 4-block step share: the activations picked for
 * both halves of a pair (xs, ys: xl, xh with their 64-bit halves swapped),
 * the accumulator start (-8 x the block's activation sum, once a row:
 * dwords 0 and 2 of each lane), the activation scales. */
typedef struct q4_step {
    __m512i wq, xl, xh, xs, ys, init, sa, sb;
    __m512 dx;
} q4_step;

/* Rows a, b: lane k = [a, a, b, b] partial sums of block k. */
T512_INLINE __m512i q4_pair(__m512i a0, __m512i a8, __m512i b0, __m512i b8, const q4_step *st) {
    const __m512i m4 = _mm512_set1_epi8(15);
    const __m512i p = _mm512_permutex2var_epi16(a0, st->wq, b8), q = _mm512_permutex2var_epi16(a8, st->wq, b0);
    __m512i s = _mm512_dpbusd_epi32(st->init, _mm512_and_si512(p, m4), st->xl);
    s = _mm512_dpbusd_epi32(s, _mm512_and_si512(_mm512_srli_epi16(p, 4), m4), st->xh);
    s = _mm512_dpbusd_epi32(s, _mm512_and_si512(q, m4), st->xs);
    return _mm512_dpbusd_epi32(s, _mm512_and_si512(_mm512_srli_epi16(q, 4), m4), st->ys);
}

/* Rows 0..3 at p0..p3, 4 blocks: the products (float)isum * (dw * dx) with
 * row j, block k in lane 4k + j. */
T512_INLINE __m512 q4_group(const uint8_t *p0, const uint8_t *p1, const uint8_t *p2, const uint8_t *p3,
                            const q4_step *st) {
    const __m512i A0 = ld512_reg(p0), A1 = ld512_reg(p1), A2 = ld512_reg(p2), A3 = ld512_reg(p3);
    const __m512i u = q4_pair(A0, ld512(p0 + 8), A1, ld512(p1 + 8), st);
    const __m512i v = q4_pair(A2, ld512(p2 + 8), A3, ld512(p3 + 8), st);
    const __m512 uf = _mm512_castsi512_ps(u), vf = _mm512_castsi512_ps(v);
    const __m512i s = _mm512_add_epi32(_mm512_castps_si512(_mm512_shuffle_ps(uf, vf, 0x88)),
                                       _mm512_castps_si512(_mm512_shuffle_ps(uf, vf, 0xDD)));
    const __m512i h = _mm512_mask_blend_epi16(0xCCCCCCCCu, _mm512_permutex2var_epi16(A0, st->sa, A1),
                                              _mm512_permutex2var_epi16(A2, st->sb, A3));
    const __m512 dw = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, st->dx));
}

/* acc += the 16 rows x 4 blocks of products p0..p3 (group g = rows 4g..4g+3,
 * lanes 4k + j), block by block. */
T512_INLINE __m512 q4_add4(__m512 acc, __m512 p0, __m512 p1, __m512 p2, __m512 p3) {
    const __m512 t0 = _mm512_shuffle_f32x4(p0, p1, 0x44), t1 = _mm512_shuffle_f32x4(p0, p1, 0xEE);
    const __m512 t2 = _mm512_shuffle_f32x4(p2, p3, 0x44), t3 = _mm512_shuffle_f32x4(p2, p3, 0xEE);
    acc = _mm512_add_ps(acc, _mm512_shuffle_f32x4(t0, t2, 0x88));
    acc = _mm512_add_ps(acc, _mm512_shuffle_f32x4(t0, t2, 0xDD));
    acc = _mm512_add_ps(acc, _mm512_shuffle_f32x4(t1, t3, 0x88));
    return _mm512_add_ps(acc, _mm512_shuffle_f32x4(t1, t3, 0xDD));
}

T512_INLINE void q4_step_init(q4_step *st, const q4_tabs *tb, const q0_tok *tk, int64_t b) {
    const uint8_t *xq = tk->q - 2 + (size_t)b * 34;
    st->wq = tb->wq;
    st->sa = tb->sa;
    st->sb = tb->sb;
    st->xl = _mm512_permutex2var_epi16(ld512(xq), tb->xl, ld512(xq + 64));
    st->xh = _mm512_permutex2var_epi16(ld512(xq + 16), tb->xh, ld512(xq + 72));
    st->xs = _mm512_shuffle_epi32(st->xl, _MM_PERM_BADC);
    st->ys = _mm512_shuffle_epi32(st->xh, _MM_PERM_BADC);
    const __m512i sx = _mm512_maskz_permutexvar_epi32(
        0x5555, tb->rep, _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(const void *)(tk->s + b))));
    st->init = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sx, 3));
    st->dx = _mm512_permutexvar_ps(tb->rep, _mm512_castps128_ps512(_mm_loadu_ps(tk->d + b)));
}

/* Blocks b.. of 16 rows one at a time (cols not a multiple of 128). */
T512_INLINE __m512 q4_tail(const uint8_t *const *rp, const q0_tok *tk, int64_t b, int64_t nb, __m512 acc) {
    for (; b < nb; b++) {
        const size_t o = (size_t)b * 18 + 2;
        const uint8_t *xq = tk->q + (size_t)b * 34;
        const __m512i xl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)xq));
        const __m512i xh = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)(xq + 16)));
        const __m512i q0 = q4_quad(rp[0] + o, rp[4] + o, rp[8] + o, rp[12] + o, xl, xh);
        const __m512i q1 = q4_quad(rp[1] + o, rp[5] + o, rp[9] + o, rp[13] + o, xl, xh);
        const __m512i q2 = q4_quad(rp[2] + o, rp[6] + o, rp[10] + o, rp[14] + o, xl, xh);
        const __m512i q3 = q4_quad(rp[3] + o, rp[7] + o, rp[11] + o, rp[15] + o, xl, xh);
        const __m512i s = _mm512_add_epi32(hsum4x4(q0, q1, q2, q3), _mm512_set1_epi32(-8 * tk->s[b]));
        const __m512 scale = _mm512_mul_ps(load_halves(rp, o - 2), _mm512_set1_ps(tk->d[b]));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(s), scale));
    }
    return acc;
}

/* The next tile's span requested a fixed number of lines a step: the same
 * lines as prefetch_part, without its two divisions a step. */
typedef struct pf_run {
    const uint8_t *p, *end; /* next line to request, end of the span */
    size_t step;            /* bytes a step                          */
} pf_run;

T512_INLINE pf_run pf_start(const span *s, int64_t ni) {
    pf_run f = {NULL, NULL, 0};
    if (s && s->p) {
        f.p = (const uint8_t *)((uintptr_t)s->p & ~(uintptr_t)63);
        f.end = s->p + s->n;
        f.step = ((size_t)(f.end - f.p) / (size_t)ni + 63) & ~(size_t)63;
    }
    return f;
}

T512_INLINE void pf_next(pf_run *f) {
    const uint8_t *e = f->end - f->p > (ptrdiff_t)f->step ? f->p + f->step : f->end;
    for (; f->p < e; f->p += 64) _mm_prefetch((const char *)f->p, _MM_HINT_T1);
}

/* 16 rows, one token.  Four blocks a step: each row's 72 bytes come in as
 * two overlapping 64-byte loads; rows go in pairs (q4_tabs) so that a row
 * costs one word permute, one AND/shift/AND and two VPDPBUSD per 4 blocks
 * and four rows' sums need only two in-lane shuffles; the 16
 * half-precision scales of 4 rows are picked out of the same loads with
 * two permutes.  The products of 16 rows x 4 blocks are then transposed
 * (128-bit lanes) to lanes-are-rows and added block by block: the
 * reference's operations in its order.  A full tile addresses its rows as
 * base + {1,2,4,8} x row_bytes from six moving pointers (x86 scaled
 * indexing), hidden from the compiler's strength reduction, which
 * otherwise keeps 16 row pointers in vector registers and spills; a
 * partial tile (rows past the last repeat the last) goes through a pointer
 * array.  Leftover blocks (cols not a multiple of 128) go one at a time. */
T512_INLINE void gemv_q4_0_tile(const nm_mm_args *a, const q4_tabs *tb, int64_t r, int nr, int64_t t, const span *nx,
                                bool full) {
    const int64_t nb = a->cols / 32;
    const q0_tok tk = q0_token(a, t, 0);
    const size_t rb = a->row_bytes;
    const uint8_t *w = a->w + (size_t)r * rb;
    __m512 acc = _mm512_setzero_ps();
    pf_run pf = pf_start(nx, nb / 4 > 0 ? nb / 4 : 1);
    int64_t b = 0;
    if (full) {
        const uint8_t *q0 = w, *q3 = w + 3 * rb, *q6 = w + 6 * rb, *q9 = w + 9 * rb, *q12 = w + 12 * rb,
                      *q15 = w + 15 * rb;
        __m512 r0 = _mm512_setzero_ps(), r1 = r0, r2 = r0, r3 = r0;
        for (; b + 4 <= nb; b += 4) {
            __asm__("" : "+r"(q0), "+r"(q3), "+r"(q6), "+r"(q9), "+r"(q12), "+r"(q15));
            q4_step st;
            q4_step_init(&st, tb, &tk, b);
            pf_next(&pf);
            const __m512 p0 = q4_group(q0, q0 + rb, q0 + 2 * rb, q3, &st);
            if (b) acc = q4_add4(acc, r0, r1, r2, r3);
            const __m512 p1 = q4_group(q0 + 4 * rb, q3 + 2 * rb, q6, q3 + 4 * rb, &st);
            const __m512 p2 = q4_group(q0 + 8 * rb, q9, q6 + 4 * rb, q3 + 8 * rb, &st);
            const __m512 p3 = q4_group(q12, q9 + 4 * rb, q6 + 8 * rb, q15, &st);
            r0 = p0, r1 = p1, r2 = p2, r3 = p3;
            q0 += 72, q3 += 72, q6 += 72, q9 += 72, q12 += 72, q15 += 72;
        }
        if (b) acc = q4_add4(acc, r0, r1, r2, r3);
    } else {
        const uint8_t *rp[16];
        for (int i = 0; i < 16; i++) rp[i] = w + (size_t)(i < nr ? i : nr - 1) * rb;
        for (; b + 4 <= nb; b += 4) {
            const size_t o = (size_t)b * 18;
            q4_step st;
            q4_step_init(&st, tb, &tk, b);
            pf_next(&pf);
            const __m512 p0 = q4_group(rp[0] + o, rp[1] + o, rp[2] + o, rp[3] + o, &st);
            const __m512 p1 = q4_group(rp[4] + o, rp[5] + o, rp[6] + o, rp[7] + o, &st);
            const __m512 p2 = q4_group(rp[8] + o, rp[9] + o, rp[10] + o, rp[11] + o, &st);
            const __m512 p3 = q4_group(rp[12] + o, rp[13] + o, rp[14] + o, rp[15] + o, &st);
            acc = q4_add4(acc, p0, p1, p2, p3);
        }
    }
    if (b < nb) {
        const uint8_t *rp[16];
        for (int i = 0; i < 16; i++) rp[i] = w + (size_t)(i < nr ? i : nr - 1) * rb;
        acc = q4_tail(rp, &tk, b, nb, acc);
    }
    _mm512_mask_storeu_ps(a->y + t * a->ldy + (r - a->y_r0), lanes(nr), acc);
}

T512 static void gemv_q4_0(const nm_mm_args *a, const q4_tabs *tb, int64_t r, int nr, int64_t t, const span *nx) {
    if (nr == 16) gemv_q4_0_tile(a, tb, r, 16, t, nx, true);
    else gemv_q4_0_tile(a, tb, r, nr, t, nx, false);
}

T512 static void rows_q8_0(const nm_mm_args *a, int64_t r0, int64_t r1) {
    if (a->n_tok >= GEMM_MIN_TOK) {
        q0_gemm(a, r0, r1, true, false);
        return;
    }
    for (int64_t r = r0; r < r1; r += 16) {
        const span nx = next_tile(a, r, 16, r1);
        for (int64_t t = 0; t < a->n_tok; t++) gemv_q8_0(a, r, (int)imin64(16, r1 - r), t, t ? NULL : &nx);
    }
}

T512 static void rows_q4_0(const nm_mm_args *a, int64_t r0, int64_t r1) {
    if (a->n_tok >= GEMM_MIN_TOK) {
        q0_gemm(a, r0, r1, false, false);
        return;
    }
    const q4_tabs tb = q4_tables();
    for (int64_t r = r0; r < r1; r += 16) {
        const span nx = next_tile(a, r, 16, r1);
        for (int64_t t = 0; t < a->n_tok; t++) gemv_q4_0(a, &tb, r, (int)imin64(16, r1 - r), t, t ? NULL : &nx);
    }
}

/* ---------------------------------------------------------------------- */
/* Packed Q4_0 and Q8_0 (nm_mm_kernel.pack_tile)                          */
/* ---------------------------------------------------------------------- */
/* The layout of kernels_impl.h (nm_pack_q0), Q8_0 quants stored plus 128
 * (unsigned for VPDPBUSD, as the batch panels hold them).
 *
 * A token then needs per block and 16 rows 4 (Q8_0: 8) VPDPBUSD against
 * broadcast activations into lanes that are rows already: no permutes, no
 * horizontal sums, one scale load; and the tile is one stream of bytes,
 * which the hardware prefetchers follow (no software prefetch: with it,
 * one thread read 19-21 GB/s from memory, without it 30-32).  The
 * reference's operations in its order, as everywhere. */
static void pack_q4_0(uint8_t *dst, const uint8_t *src, size_t row_bytes, int64_t cols) {
    nm_pack_q0(dst, src, row_bytes, cols, false, 0);
}
static void pack_q8_0(uint8_t *dst, const uint8_t *src, size_t row_bytes, int64_t cols) {
    nm_pack_q0(dst, src, row_bytes, cols, true, 0x80808080u);
}

/* Q4_0: acc += block b of a packed tile (scales at sc, quant vectors at q). */
T512_INLINE __m512 q4p_add(const uint8_t *sc, const uint8_t *q, const q0_tok *tk, int64_t b, __m512 acc) {
    const uint8_t *x = tk->q + (size_t)b * 34;
    const __m512i m4 = _mm512_set1_epi8(15);
    const __m512i v0 = ld512(q), v1 = ld512(q + 64), v2 = ld512(q + 128), v3 = ld512(q + 192);
    __m512i s0 = _mm512_set1_epi32(-8 * tk->s[b]), s1 = _mm512_setzero_si512(), s2 = s1, s3 = s1;
    s0 = _mm512_dpbusd_epi32(s0, _mm512_and_si512(v0, m4), bcast32(x));
    s1 = _mm512_dpbusd_epi32(s1, _mm512_and_si512(v1, m4), bcast32(x + 4));
    s2 = _mm512_dpbusd_epi32(s2, _mm512_and_si512(v2, m4), bcast32(x + 8));
    s3 = _mm512_dpbusd_epi32(s3, _mm512_and_si512(v3, m4), bcast32(x + 12));
    s0 = _mm512_dpbusd_epi32(s0, _mm512_and_si512(_mm512_srli_epi16(v0, 4), m4), bcast32(x + 16));
    s1 = _mm512_dpbusd_epi32(s1, _mm512_and_si512(_mm512_srli_epi16(v1, 4), m4), bcast32(x + 20));
    s2 = _mm512_dpbusd_epi32(s2, _mm512_and_si512(_mm512_srli_epi16(v2, 4), m4), bcast32(x + 24));
    s3 = _mm512_dpbusd_epi32(s3, _mm512_and_si512(_mm512_srli_epi16(v3, 4), m4), bcast32(x + 28));
    const __m512i s = _mm512_add_epi32(_mm512_add_epi32(s0, s1), _mm512_add_epi32(s2, s3));
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)sc));
    return _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(tk->d[b]))));
}

/* One token x the packed Q4_0 tile at `tile`: the 16 rows' sums to out. */
T512 static void gemv_q4_0p(const nm_mm_args *a, const uint8_t *tile, int64_t t, float *out) {
    const int64_t nb = a->cols / 32;
    const q0_tok tk = q0_token(a, t, 0);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const nm_q0p_at at = nm_q0p_block(b, nb, 256);
        acc = q4p_add(tile + at.sc, tile + at.q, &tk, b, acc);
    }
    _mm512_storeu_ps(out, acc);
}

/* Q8_0: acc += block b of rows 0..7 (half 0) or 8..15 (half 32) of a
 * packed tile, 256-bit VPDPBUSD.  Why halves: from memory the 512-bit
 * version streamed 22-30 GB/s on two threads where this one streams 29-46
 * (the same moments, alternately; from L2 both ~85-90), much as the AVX2
 * kernel does; for Q4_0 the halves were no faster. */
T512_INLINE __m256 q8p_half(const uint8_t *sc, const uint8_t *q, size_t half, const q0_tok *tk, int64_t b, __m256 acc) {
    const uint8_t *x = tk->q + (size_t)b * 34;
    __m256i s[4] = {_mm256_set1_epi32(-128 * tk->s[b]), _mm256_setzero_si256(), _mm256_setzero_si256(),
                    _mm256_setzero_si256()};
#pragma GCC unroll 8
    for (int g = 0; g < 8; g++)
        s[g & 3] = _mm256_dpbusd_epi32(s[g & 3], _mm256_loadu_si256((const __m256i *)(const void *)(q + 64 * g + half)),
                                       _mm256_set1_epi32((int32_t)nm_ld32(x + 4 * g)));
    const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(s[0], s[1]), _mm256_add_epi32(s[2], s[3]));
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(sc + half / 2)));
    return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(dw, _mm256_set1_ps(tk->d[b]))));
}

T512 static void gemv_q8_0p(const nm_mm_args *a, const uint8_t *tile, int64_t t, float *out) {
    const int64_t nb = a->cols / 32;
    const q0_tok tk = q0_token(a, t, 0);
    __m256 lo = _mm256_setzero_ps(), hi = lo;
    for (int64_t b = 0; b < nb; b++) {
        const nm_q0p_at at = nm_q0p_block(b, nb, 512);
        lo = q8p_half(tile + at.sc, tile + at.q, 0, &tk, b, lo);
        hi = q8p_half(tile + at.sc, tile + at.q, 32, &tk, b, hi);
    }
    _mm256_storeu_ps(out, lo);
    _mm256_storeu_ps(out + 8, hi);
}

T512 static void tiles_q4_0p(const nm_mm_args *a, int64_t r0, int64_t r1) { q0_gemm(a, r0, r1, false, true); }
T512 static void tiles_q8_0p(const nm_mm_args *a, int64_t r0, int64_t r1) { q0_gemm(a, r0, r1, true, true); }

T512 static void rows_q4_0p(const nm_mm_args *a, int64_t r0, int64_t r1) {
    nm_rows_packed(a, r0, r1, gemv_q4_0p, tiles_q4_0p, rows_q4_0);
}
T512 static void rows_q8_0p(const nm_mm_args *a, int64_t r0, int64_t r1) {
    nm_rows_packed(a, r0, r1, gemv_q8_0p, tiles_q8_0p, rows_q8_0);
}

/* ====================================================================== */
/* K-quants x Q8_K activations                                            */
/* ====================================================================== */
/* The reference per super-block of 256: an exact integer sum of
 * scale x (quants . activations) over the sub-blocks (and for Q4_K/Q5_K an
 * exact sum of min x activation sub-block sums), then
 *   sum += d * dx * (float)sumi - dmin * dx * (float)summ     (Q4_K, Q5_K)
 *   sum += d * dx * (float)sumi                                (Q6_K)
 * Batches repack a tile like Q8_0 (32-element sub-blocks of unsigned
 * quants, lanes are rows) plus per-row integer scales; single tokens read
 * 16 rows side by side (gemv_q45_k, gemv_q6_k below): integer work per
 * row, one transposing reduction, and the float operations above once per
 * super-block for the 16 rows, lanes are rows. */

/* ggml's unpacking of the 12 bytes of 6-bit scales and mins: sc[8], m[8]. */
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

typedef struct k_panel {
    _Alignas(64) uint8_t w[KC_SUPER * 8 * 8 * 64];  /* [s][j][group][row][4]                 */
    _Alignas(64) int32_t sc[KC_SUPER * 16 * 16];     /* [s][sub-block][row]: scales           */
    _Alignas(64) int32_t mn[KC_SUPER * 4 * 16];      /* [s][pair][row]: (m[2p], m[2p+1]) words */
    _Alignas(64) float d[KC_SUPER * 16], dmin[KC_SUPER * 16];
} k_panel;

/* The 256 unsigned quants of a K-quant super-block in element order
 * (Q6_K without its -32): Q4_K/Q5_K group g is 32 bytes of qs (low
 * nibbles: elements 64g + l, high: 64g + 32 + l) and for Q5_K bit 2g / 2g+1
 * of qh[l]; Q6_K half h: ql[64h + l] nibbles and 2 bits of qh[32h + l] make
 * elements 128h + {l, 32 + l, 64 + l, 96 + l}. */
T512 static void k_unpack(nm_type type, const uint8_t *blk, uint8_t *out) {
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    if (type == NM_TYPE_Q6_K) {
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = blk + 64 * h;
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(const void *)ql);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(const void *)(ql + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(const void *)(blk + offsetof(nm_block_q6_k, qh) + 32 * h));
            const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
            const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
            const __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
            const __m256i h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
            uint8_t *o = out + 128 * h;
            _mm256_storeu_si256((__m256i *)(void *)o, _mm256_or_si256(_mm256_and_si256(l0, m4), h0));
            _mm256_storeu_si256((__m256i *)(void *)(o + 32), _mm256_or_si256(_mm256_and_si256(l1, m4), h1));
            _mm256_storeu_si256((__m256i *)(void *)(o + 64), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2));
            _mm256_storeu_si256((__m256i *)(void *)(o + 96), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3));
        }
        return;
    }
    const bool q5 = type == NM_TYPE_Q5_K;
    const uint8_t *qs = blk + (q5 ? offsetof(nm_block_q5_k, qs) : offsetof(nm_block_q4_k, qs));
    const __m256i qh = q5 ? _mm256_loadu_si256((const __m256i *)(const void *)(blk + offsetof(nm_block_q5_k, qh)))
                          : _mm256_setzero_si256();
    for (int g = 0; g < 4; g++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(const void *)(qs + 32 * g));
        __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if (q5) {
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g)), one), 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g + 1)), one), 4));
        }
        _mm256_storeu_si256((__m256i *)(void *)(out + 64 * g), lo);
        _mm256_storeu_si256((__m256i *)(void *)(out + 64 * g + 32), hi);
    }
}

T512 static void repack_k(const nm_mm_args *a, nm_type type, int64_t r, int nr, int64_t s0, int ks, k_panel *p) {
    const size_t bb = type == NM_TYPE_Q6_K ? sizeof(nm_block_q6_k) : type == NM_TYPE_Q5_K ? sizeof(nm_block_q5_k) : sizeof(nm_block_q4_k);
    _Alignas(64) uint8_t q[16][256];
    for (int s = 0; s < ks; s++) {
        for (int i = 0; i < 16; i++) {
            const uint8_t *blk = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes + (size_t)(s0 + s) * bb;
            k_unpack(type, blk, q[i]);
            if (type == NM_TYPE_Q6_K) {
                const int8_t *sc = (const int8_t *)(blk + offsetof(nm_block_q6_k, scales));
                p->d[16 * s + i] = i < nr ? _cvtsh_ss(nm_ld16(blk + offsetof(nm_block_q6_k, d))) : 0.0f;
                for (int j = 0; j < 16; j++) p->sc[(16 * s + j) * 16 + i] = sc[j];
            } else {
                uint8_t sc[8], m[8];
                k4_scales(blk + 4, sc, m);
                p->d[16 * s + i] = i < nr ? _cvtsh_ss(nm_ld16(blk)) : 0.0f;
                p->dmin[16 * s + i] = i < nr ? _cvtsh_ss(nm_ld16(blk + 2)) : 0.0f;
                for (int j = 0; j < 8; j++) p->sc[(16 * s + j) * 16 + i] = sc[j];
                for (int j = 0; j < 4; j++) p->mn[(4 * s + j) * 16 + i] = m[2 * j] | m[2 * j + 1] << 16;
            }
        }
        for (int j = 0; j < 8; j++) {
            __m256i v[16];
            for (int i = 0; i < 16; i++) v[i] = _mm256_load_si256((const __m256i *)(const void *)(q[i] + 32 * j));
            put_tile16(p->w + (8 * s + j) * 512, v);
        }
    }
}

/* A token's Q8_K data at super-block s0 of the chunk. */
typedef struct k_tok {
    const uint8_t *blk;     /* Q8_K block s0                                */
    const int16_t *bsum32;  /* side data: 32-element sums from block s0    */
} k_tok;

T512_INLINE k_tok k_token(const nm_mm_args *a, int64_t t, int64_t s0) {
    k_tok k = {a->act + (size_t)t * a->act_stride + (size_t)s0 * sizeof(nm_block_q8_k),
               (const int16_t *)(const void *)(a->extra + (size_t)t * a->extra_stride) + 8 * s0};
    return k;
}

T512_INLINE float q8k_d(const uint8_t *blk) {
    float d;
    memcpy(&d, blk, 4);
    return d;
}

/* 4 (or 8) groups of a 32-element sub-block: unsigned quants x the token's
 * signed quants, added to s.  Unrolled: as a loop GCC copied the sum
 * between registers around every VPDPBUSD and kept the activation word in
 * a register instead of VPDPBUSD's broadcast operand (Q4_K batch products
 * 97 -> 150 G multiply-adds/s a core, Q6_K 90 -> 133). */
T512_INLINE __m512i dp_groups(__m512i s, const __m512i *w, const uint8_t *xq, int g0, int n) {
#pragma GCC unroll 8
    for (int g = g0; g < g0 + n; g++) s = _mm512_dpbusd_epi32(s, _mm512_load_si512(w + g), bcast32(xq + 4 * g));
    return s;
}

T512_INLINE void q45k_chunk(int NT, const k_panel *p, int ks, const k_tok *tk, __m512 *acc) {
    for (int s = 0; s < ks; s++) {
        __m512i sumi[4], summ[4];
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) sumi[t] = summ[t] = _mm512_setzero_si512();
        for (int j = 0; j < 8; j++) {
            const __m512i *w = (const __m512i *)(const void *)(p->w + (8 * s + j) * 512);
            const __m512i sc = _mm512_load_si512(p->sc + (16 * s + j) * 16);
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                const uint8_t *xq = tk[t].blk + (size_t)s * sizeof(nm_block_q8_k) + 4 + 32 * j;
                /* two chains of 4 groups: twice the VPDPBUSD chains in flight (+4%) */
                const __m512i v = _mm512_add_epi32(dp_groups(_mm512_setzero_si512(), w, xq, 0, 4),
                                                   dp_groups(_mm512_setzero_si512(), w, xq, 4, 4));
                sumi[t] = _mm512_add_epi32(sumi[t], _mm512_mullo_epi32(v, sc));
            }
        }
        for (int j = 0; j < 4; j++) {
            const __m512i mn = _mm512_load_si512(p->mn + (4 * s + j) * 16);
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++)
                summ[t] = _mm512_dpwssd_epi32(summ[t], mn, bcast32((const uint8_t *)(tk[t].bsum32 + 8 * s + 2 * j)));
        }
        const __m512 d = _mm512_load_ps(p->d + 16 * s), dmin = _mm512_load_ps(p->dmin + 16 * s);
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            const __m512 dx = _mm512_set1_ps(q8k_d(tk[t].blk + (size_t)s * sizeof(nm_block_q8_k)));
            const __m512 x = _mm512_mul_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(sumi[t]));
            const __m512 y = _mm512_mul_ps(_mm512_mul_ps(dmin, dx), _mm512_cvtepi32_ps(summ[t]));
            acc[t] = _mm512_add_ps(acc[t], _mm512_sub_ps(x, y));
        }
    }
}

T512_INLINE void q6k_chunk(int NT, const k_panel *p, int ks, const k_tok *tk, __m512 *acc) {
    for (int s = 0; s < ks; s++) {
        __m512i sumi[4];
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) sumi[t] = _mm512_setzero_si512();
        for (int j = 0; j < 8; j++) {
            const __m512i *w = (const __m512i *)(const void *)(p->w + (8 * s + j) * 512);
            const __m512i sa = _mm512_load_si512(p->sc + (16 * s + 2 * j) * 16);
            const __m512i sb = _mm512_load_si512(p->sc + (16 * s + 2 * j + 1) * 16);
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                const uint8_t *b = tk[t].blk + (size_t)s * sizeof(nm_block_q8_k);
                const uint8_t *xq = b + 4 + 32 * j;
                const int16_t *bs = (const int16_t *)(const void *)(b + offsetof(nm_block_q8_k, bsums));
                const __m512i va = dp_groups(_mm512_set1_epi32(-32 * bs[2 * j]), w, xq, 0, 4);
                const __m512i vb = dp_groups(_mm512_set1_epi32(-32 * bs[2 * j + 1]), w, xq, 4, 4);
                sumi[t] = _mm512_add_epi32(sumi[t], _mm512_add_epi32(_mm512_mullo_epi32(va, sa), _mm512_mullo_epi32(vb, sb)));
            }
        }
        const __m512 d = _mm512_load_ps(p->d + 16 * s);
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            const __m512 dx = _mm512_set1_ps(q8k_d(tk[t].blk + (size_t)s * sizeof(nm_block_q8_k)));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(sumi[t])));
        }
    }
}

T512_INLINE void k_tokens(int NT, const nm_mm_args *a, const k_panel *p, int64_t r, __mmask16 m, int64_t t,
                          int64_t s0, int ks, bool q6) {
    __m512 acc[4];
    k_tok tk[4];
#pragma GCC unroll 4
    for (int i = 0; i < NT; i++) {
        tk[i] = k_token(a, t + i, s0);
        float *y = a->y + (t + i) * a->ldy + (r - a->y_r0);
        acc[i] = s0 ? _mm512_maskz_loadu_ps(m, y) : _mm512_setzero_ps();
    }
    if (q6) q6k_chunk(NT, p, ks, tk, acc);
    else q45k_chunk(NT, p, ks, tk, acc);
#pragma GCC unroll 4
    for (int i = 0; i < NT; i++) _mm512_mask_storeu_ps(a->y + (t + i) * a->ldy + (r - a->y_r0), m, acc[i]);
}

T512 static void repack_q45_kp(const nm_mm_args *a, int64_t r, int64_t s0, int ks, k_panel *p, bool q5);
T512 static void repack_q6_kp(const nm_mm_args *a, int64_t r, int64_t s0, int ks, k_panel *p);

/* packed: rows [r0, r1) are whole packed tiles (Q4_K, Q5_K, Q6_K: below) */
T512 static void k_gemm(const nm_mm_args *a, int64_t r0, int64_t r1, nm_type type, bool packed) {
    const int64_t nsb = a->cols / NM_QK_K;
    k_panel p;
    for (int64_t r = r0; r < r1; r += 16) {
        const int nr = (int)imin64(16, r1 - r);
        const __mmask16 m = lanes(nr);
        for (int64_t s0 = 0; s0 < nsb; s0 += KC_SUPER) {
            const int ks = (int)imin64(KC_SUPER, nsb - s0);
            if (packed && type == NM_TYPE_Q6_K) repack_q6_kp(a, r, s0, ks, &p);
            else if (packed) repack_q45_kp(a, r, s0, ks, &p, type == NM_TYPE_Q5_K);
            else repack_k(a, type, r, nr, s0, ks, &p);
            const bool q6 = type == NM_TYPE_Q6_K;
            int64_t t = 0;
            for (; t + 4 <= a->n_tok; t += 4) k_tokens(4, a, &p, r, m, t, s0, ks, q6);
            for (; t < a->n_tok; t++) k_tokens(1, a, &p, r, m, t, s0, ks, q6);
        }
    }
}

/* ---- single tokens: 16 rows side by side ----
 *
 * Like gemv_q4_0: the 16 rows of a tile are read super-block by
 * super-block while the next tile is prefetched into L2 (prefetch_part),
 * the activation vectors are arranged once per super-block for the 16 rows,
 * each row does only integer work into one vector of partial sums, one
 * transposing reduction (k_rows16) turns 16 such vectors into lanes-are-rows,
 * and the reference's float operations run once per super-block for the 16
 * rows as vector operations, in its order.
 *
 * A row's quants (unsigned, Q6_K's -32 included below) meet the activations
 * in VPDPBUSD: dword lane i of each product covers 4 consecutive elements,
 * at most 4 x 63 x 128 in magnitude, so VPACKSSDW narrows two products to
 * 16-bit words exactly, and one VPMADDWD / VPDPWSSD applies the sub-block
 * scales (words, the same in a dword pair) to both at once. */

/* prefetch_part for the K-quant tiles without its divisions: part i of the
 * next tile is bytes [i * step, (i + 1) * step) (a shorter last tile ends
 * sooner).  The kernels request a quarter of 16 super-blocks' bytes before
 * each group of 4 rows: the whole next tile over the current one, in
 * smaller bursts than one per super-block (Q6_K from memory, one thread:
 * 19 -> 28 GB/s; one per row was no better). */
T512_INLINE void prefetch_k(const span *s, int64_t i, size_t step) {
    if (!s || !s->p) return;
    const size_t lo = (size_t)i * step & ~(size_t)63, hi = (size_t)(i + 1) * step < s->n ? (size_t)(i + 1) * step : s->n;
    for (size_t o = lo; o < hi; o += 64) _mm_prefetch((const char *)(s->p + o), _MM_HINT_T1);
}

/* The end of the transposing reduction of 16 rows: g[k] = hsum4x4 of 4
 * rows' partial-sum vectors (lane 4p + j: part p of its row j); lane 4k + j
 * of the result = the sum over p of g[k]'s lanes 4p + j, the total of g[k]'s
 * row j.  Together ~3 operations a row instead of a full reduce_add. */
T512_INLINE __m512i k_rows16(const __m512i *g) {
    const __m512i u0 = _mm512_add_epi32(_mm512_shuffle_i32x4(g[0], g[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                        _mm512_shuffle_i32x4(g[0], g[1], _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512i u1 = _mm512_add_epi32(_mm512_shuffle_i32x4(g[2], g[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                        _mm512_shuffle_i32x4(g[2], g[3], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* The first 16 bytes of 4 Q4_K/Q5_K super-blocks (d, dmin, 12 bytes of
 * scales), one per 128-bit lane. */
T512_INLINE __m512i k_heads(const uint8_t *p0, const uint8_t *p1, const uint8_t *p2, const uint8_t *p3) {
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(const void *)p0));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(const void *)p1), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(const void *)p2), 2);
    return _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(const void *)p3), 3);
}

/* k4_scales for 4 super-blocks at once: per 128-bit lane the dwords
 * [dd, u0, u1, u2] of k_heads become [sc0..3, sc4..7, m0..3, m4..7]:
 *   sc0..3 = u0 & 0x3f..,  sc4..7 = (u2 & 0x0f..) | ((u0 >> 6) & 0x03..) << 4,
 *   m0..3  = u1 & 0x3f..,  m4..7  = ((u2 >> 4) & 0x0f..) | ((u1 >> 6) & 0x03..) << 4. */
T512_INLINE __m512i k4_scales4(__m512i h) {
    const __m512i a = _mm512_and_si512(_mm512_srlv_epi32(_mm512_shuffle_epi32(h, (_MM_PERM_ENUM)_MM_SHUFFLE(3, 2, 3, 1)),
                                                         _mm512_set4_epi32(4, 0, 0, 0)),
                                       _mm512_set4_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f));
    const __m512i b = _mm512_srli_epi32(_mm512_shuffle_epi32(h, (_MM_PERM_ENUM)_MM_SHUFFLE(2, 0, 1, 0)), 2);
    return _mm512_ternarylogic_epi32(a, b, _mm512_set4_epi32(0x30303030, 0, 0x30303030, 0), 0xF8); /* a | (b & c) */
}

/* Byte-shuffle controls of the Q4_K/Q5_K row (constant data, built once per
 * call). */
typedef struct k4_tabs {
    __m512i s0, s1; /* scale bytes of a row (broadcast) -> the words of S0 / S1 */
    __m512i mw;     /* [sc, m] lane -> m0..m7 as words                         */
    __m512i out;    /* lane 4k + j <- row 4j + k, an involution                */
} k4_tabs;

T512 static k4_tabs k4_tables(void) {
    int8_t s0[64], s1[64], mw[64];
    int32_t out[16];
    for (int q = 0; q < 4; q++)
        for (int w = 0; w < 8; w++) {
            /* 128-bit lanes 0, 1 hold sub-blocks (0, 1) and (4, 5), lanes 2, 3 (2, 3) and (6, 7) */
            const int sb = (q < 2 ? 0 : 2) + (w >= 4);
            s0[16 * q + 2 * w] = (int8_t)sb;
            s1[16 * q + 2 * w] = (int8_t)(4 + sb);
            mw[16 * q + 2 * w] = (int8_t)(8 + w);
            s0[16 * q + 2 * w + 1] = s1[16 * q + 2 * w + 1] = mw[16 * q + 2 * w + 1] = (int8_t)0x80;
        }
    for (int i = 0; i < 16; i++) out[i] = 4 * (i % 4) + i / 4;
    k4_tabs t = {_mm512_loadu_si512(s0), _mm512_loadu_si512(s1), _mm512_loadu_si512(mw), _mm512_loadu_si512(out)};
    return t;
}

/* The activation quants of a super-block arranged for the 4 nibble vectors
 * of a row: x[0] = elements [0..31 | 64..95] (low nibbles of qs 0..63),
 * x[1] = [32..63 | 96..127] (their high nibbles), x[2], x[3] the same + 128. */
T512_INLINE void k4_acts(const uint8_t *xq, __m512i *x) {
    for (int i = 0; i < 4; i++) {
        const uint8_t *p = xq + 128 * (i / 2) + 32 * (i % 2);
        x[i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(const void *)p)),
                                  _mm256_loadu_si256((const __m256i *)(const void *)(p + 64)), 1);
    }
}

/* One Q4_K/Q5_K row's super-block: sum over sub-blocks of scale x quants .
 * activations, as 16 dword partials.  sc: the row's [sc, m] bytes in every
 * 128-bit lane. */
T512_INLINE __m512i k4_row(const uint8_t *blk, bool q5, const __m512i *x, __m512i sc, const k4_tabs *tb) {
    const uint8_t *qs = blk + (q5 ? offsetof(nm_block_q5_k, qs) : offsetof(nm_block_q4_k, qs));
    const __m512i m4 = _mm512_set1_epi8(15);
    const __m512i v0 = _mm512_loadu_si512(qs), v1 = _mm512_loadu_si512(qs + 64);
    __m512i q[4] = {_mm512_and_si512(v0, m4), _mm512_and_si512(_mm512_srli_epi16(v0, 4), m4), _mm512_and_si512(v1, m4),
                    _mm512_and_si512(_mm512_srli_epi16(v1, 4), m4)};
    if (q5) {
        /* the fifth bit: qh[l] bit 2g for the low nibbles of group g (byte
         * l), 2g + 1 for the high ones; moved to bit 4 by word shifts
         * (bits crossing from the neighbour byte are masked off) */
        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(const void *)(blk + offsetof(nm_block_q5_k, qh))));
        const __m512i b4 = _mm512_set1_epi8(16);
        const __m512i h0 = _mm512_sllv_epi16(qh, _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1));
        const __m512i h1 = _mm512_sllv_epi16(qh, _mm512_inserti64x4(_mm512_set1_epi16(3), _mm256_set1_epi16(1), 1));
        const __m512i h2 = _mm512_srlv_epi16(qh, _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1));
        const __m512i h3 = _mm512_srlv_epi16(qh, _mm512_inserti64x4(_mm512_set1_epi16(1), _mm256_set1_epi16(3), 1));
        q[0] = _mm512_ternarylogic_epi32(h0, b4, q[0], 0xEA); /* (a & b) | c */
        q[1] = _mm512_ternarylogic_epi32(h1, b4, q[1], 0xEA);
        q[2] = _mm512_ternarylogic_epi32(h2, b4, q[2], 0xEA);
        q[3] = _mm512_ternarylogic_epi32(h3, b4, q[3], 0xEA);
    }
    const __m512i z = _mm512_setzero_si512();
    const __m512i p0 = _mm512_dpbusd_epi32(z, q[0], x[0]), p1 = _mm512_dpbusd_epi32(z, q[1], x[1]);
    const __m512i p2 = _mm512_dpbusd_epi32(z, q[2], x[2]), p3 = _mm512_dpbusd_epi32(z, q[3], x[3]);
    /* words: lanes 0, 1 sub-blocks (0, 1) / (4, 5), lanes 2, 3 (2, 3) / (6, 7), 4 words each */
    const __m512i w01 = _mm512_packs_epi32(p0, p1), w23 = _mm512_packs_epi32(p2, p3);
    return _mm512_dpwssd_epi32(_mm512_madd_epi16(w01, _mm512_shuffle_epi8(sc, tb->s0)), w23, _mm512_shuffle_epi8(sc, tb->s1));
}

/* 16 Q4_K/Q5_K rows x one token. */
T512_INLINE void gemv_q45_k(const nm_mm_args *a, const k4_tabs *tb, int64_t r, int nr, int64_t t, const span *nx, bool q5) {
    const int64_t nsb = a->cols / NM_QK_K;
    const size_t bb = q5 ? sizeof(nm_block_q5_k) : sizeof(nm_block_q4_k);
    const k_tok tk = k_token(a, t, 0);
    const uint8_t *rp[16];
    for (int i = 0; i < 16; i++) rp[i] = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t s = 0; s < nsb; s++) {
        const size_t o = (size_t)s * bb;
        const uint8_t *xb = tk.blk + (size_t)s * sizeof(nm_block_q8_k);
        __m512i x[4];
        k4_acts(xb + offsetof(nm_block_q8_k, qs), x);
        /* h[j]: rows 4j .. 4j + 3, one per 128-bit lane; from here on lane
         * 4k + j of a 16-row vector is row 4j + k */
        __m512i h[4], sc[4], mn[4];
        const __m512i bs = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)(tk.bsum32 + 8 * s)));
        for (int j = 0; j < 4; j++) {
            h[j] = k_heads(rp[4 * j] + o, rp[4 * j + 1] + o, rp[4 * j + 2] + o, rp[4 * j + 3] + o);
            sc[j] = k4_scales4(h[j]);
            mn[j] = _mm512_madd_epi16(_mm512_shuffle_epi8(sc[j], tb->mw), bs); /* m x 32-element sums */
        }
        /* the float operations of the mins and d * dx now, to free registers */
        const __m512 dx = _mm512_set1_ps(q8k_d(xb));
        const __m512i dd = _mm512_unpacklo_epi64(_mm512_unpacklo_epi32(h[0], h[1]), _mm512_unpacklo_epi32(h[2], h[3]));
        const __m512 ddx = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd)), dx);
        const __m512 dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dd, 16)));
        const __m512 mpart = _mm512_mul_ps(_mm512_mul_ps(dmin, dx), _mm512_cvtepi32_ps(hsum4x4(mn[0], mn[1], mn[2], mn[3])));
        __m512i g[4];
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            prefetch_k(nx, 4 * s + k, 4 * bb);
            /* rows k, k + 4, k + 8, k + 12: lane k of h[0..3] */
            __m512i part[4];
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                const __m512i sck = k == 0   ? _mm512_shuffle_i32x4(sc[j], sc[j], 0x00)
                                    : k == 1 ? _mm512_shuffle_i32x4(sc[j], sc[j], 0x55)
                                    : k == 2 ? _mm512_shuffle_i32x4(sc[j], sc[j], 0xAA)
                                             : _mm512_shuffle_i32x4(sc[j], sc[j], 0xFF);
                part[j] = k4_row(rp[4 * j + k] + o, q5, x, sck, tb);
            }
            g[k] = hsum4x4(part[0], part[1], part[2], part[3]);
        }
        acc = _mm512_add_ps(acc, _mm512_sub_ps(_mm512_mul_ps(ddx, _mm512_cvtepi32_ps(k_rows16(g))), mpart));
    }
    _mm512_mask_storeu_ps(a->y + t * a->ldy + (r - a->y_r0), lanes(nr), _mm512_permutexvar_ps(tb->out, acc));
}

T512 static void gemv_q4_k(const nm_mm_args *a, const k4_tabs *tb, int64_t r, int nr, int64_t t, const span *nx) {
    gemv_q45_k(a, tb, r, nr, t, nx, false);
}

T512 static void gemv_q5_k(const nm_mm_args *a, const k4_tabs *tb, int64_t r, int nr, int64_t t, const span *nx) {
    gemv_q45_k(a, tb, r, nr, t, nx, true);
}

/* Q6_K: the 4 vectors of 6-bit quants of a row are elements 0..63,
 * 64..127, 128..191, 192..255 in order (so the activations are read as
 * stored), from ql (nibbles) and qh (2 bits, moved to bits 4-5 by word
 * shifts and masked); the -32 of every quant is in the VPDPBUSD's starting
 * value, -32 x the sum of the 4 activations (the same for every row). */
typedef struct q6_tabs {
    __m512i s0, s1; /* the 16 scale bytes (broadcast) -> the words of S0 / S1, x 256 */
} q6_tabs;

T512 static q6_tabs q6_tables(void) {
    int8_t s0[64], s1[64];
    for (int q = 0; q < 4; q++)
        for (int w = 0; w < 8; w++) {
            /* lane q of packs(p0, p1): sub-block q (elements 16q..) then 4 + q;
             * the signed scale goes to the high byte of its word */
            s0[16 * q + 2 * w] = s1[16 * q + 2 * w] = (int8_t)0x80;
            s0[16 * q + 2 * w + 1] = (int8_t)(w < 4 ? q : 4 + q);
            s1[16 * q + 2 * w + 1] = (int8_t)(w < 4 ? 8 + q : 12 + q);
        }
    q6_tabs t = {_mm512_loadu_si512(s0), _mm512_loadu_si512(s1)};
    return t;
}

T512_INLINE __m512i q6_row(const uint8_t *blk, const __m512i *x, const __m512i *c, const q6_tabs *tb) {
    const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    const __m512i l0 = _mm512_loadu_si512(blk), l1 = _mm512_loadu_si512(blk + 64);
    const __m512i h0 = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(const void *)(blk + offsetof(nm_block_q6_k, qh))));
    const __m512i h1 = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(const void *)(blk + offsetof(nm_block_q6_k, qh) + 32)));
    /* qh[32h + l] bits 0-1 / 2-3 / 4-5 / 6-7: elements l, 32 + l, 64 + l, 96 + l of half h */
    const __m512i sl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i sr = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
    const __m512i q0 = _mm512_ternarylogic_epi32(_mm512_sllv_epi16(h0, sl), m30, _mm512_and_si512(l0, m4), 0xEA);
    const __m512i q1 = _mm512_ternarylogic_epi32(_mm512_srlv_epi16(h0, sr), m30, _mm512_and_si512(_mm512_srli_epi16(l0, 4), m4), 0xEA);
    const __m512i q2 = _mm512_ternarylogic_epi32(_mm512_sllv_epi16(h1, sl), m30, _mm512_and_si512(l1, m4), 0xEA);
    const __m512i q3 = _mm512_ternarylogic_epi32(_mm512_srlv_epi16(h1, sr), m30, _mm512_and_si512(_mm512_srli_epi16(l1, 4), m4), 0xEA);
    const __m512i p0 = _mm512_dpbusd_epi32(c[0], q0, x[0]), p1 = _mm512_dpbusd_epi32(c[1], q1, x[1]);
    const __m512i p2 = _mm512_dpbusd_epi32(c[2], q2, x[2]), p3 = _mm512_dpbusd_epi32(c[3], q3, x[3]);
    /* The scales as 256 x sc words (one VPSHUFB each, no sign extension):
     * a dword takes 4 products |(q - 32) x . 4| <= 16384 times 256 |sc| <=
     * 32768, in [-2^31, 2^31 - 2^24], so it stays exact, and the arithmetic
     * shift by 8 then takes the 256 back exactly. */
    const __m512i sc = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)(blk + offsetof(nm_block_q6_k, scales))));
    const __m512i v = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_packs_epi32(p0, p1), _mm512_shuffle_epi8(sc, tb->s0)),
                                          _mm512_packs_epi32(p2, p3), _mm512_shuffle_epi8(sc, tb->s1));
    return _mm512_srai_epi32(v, 8);
}

T512 static void gemv_q6_k(const nm_mm_args *a, const q6_tabs *tb, int64_t r, int nr, int64_t t, const span *nx) {
    const int64_t nsb = a->cols / NM_QK_K;
    const k_tok tk = k_token(a, t, 0);
    const uint8_t *rp[16];
    for (int i = 0; i < 16; i++) rp[i] = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t s = 0; s < nsb; s++) {
        const size_t o = (size_t)s * sizeof(nm_block_q6_k);
        const uint8_t *xb = tk.blk + (size_t)s * sizeof(nm_block_q8_k);
        __m512i x[4], c[4];
        for (int i = 0; i < 4; i++) {
            x[i] = _mm512_loadu_si512(xb + offsetof(nm_block_q8_k, qs) + 64 * i);
            c[i] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(32), x[i]));
        }
        __m512i g[4];
        for (int k = 0; k < 4; k++) {
            prefetch_k(nx, 4 * s + k, 4 * sizeof(nm_block_q6_k));
            /* rows 4k .. 4k + 3: k_rows16 then puts row i in lane i */
            const __m512i p0 = q6_row(rp[4 * k] + o, x, c, tb), p1 = q6_row(rp[4 * k + 1] + o, x, c, tb);
            const __m512i p2 = q6_row(rp[4 * k + 2] + o, x, c, tb), p3 = q6_row(rp[4 * k + 3] + o, x, c, tb);
            g[k] = hsum4x4(p0, p1, p2, p3);
        }
        const __m512 d = load_halves(rp, o + offsetof(nm_block_q6_k, d));
        const __m512 dx = _mm512_set1_ps(q8k_d(xb));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(k_rows16(g))));
    }
    _mm512_mask_storeu_ps(a->y + t * a->ldy + (r - a->y_r0), lanes(nr), acc);
}

T512_INLINE void rows_q45_k(const nm_mm_args *a, int64_t r0, int64_t r1, bool q5) {
    if (a->n_tok >= GEMM_MIN_TOK) {
        k_gemm(a, r0, r1, q5 ? NM_TYPE_Q5_K : NM_TYPE_Q4_K, false);
        return;
    }
    const k4_tabs tb = k4_tables();
    for (int64_t r = r0; r < r1; r += 16) {
        const span nx = next_tile(a, r, 16, r1);
        for (int64_t t = 0; t < a->n_tok; t++) {
            const int nr = (int)imin64(16, r1 - r);
            if (q5) gemv_q5_k(a, &tb, r, nr, t, t ? NULL : &nx);
            else gemv_q4_k(a, &tb, r, nr, t, t ? NULL : &nx);
        }
    }
}

T512 static void rows_q4_k(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_q45_k(a, r0, r1, false); }
T512 static void rows_q5_k(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_q45_k(a, r0, r1, true); }

T512 static void rows_q6_k(const nm_mm_args *a, int64_t r0, int64_t r1) {
    if (a->n_tok >= GEMM_MIN_TOK) {
        k_gemm(a, r0, r1, NM_TYPE_Q6_K, false);
        return;
    }
    const q6_tabs tb = q6_tables();
    for (int64_t r = r0; r < r1; r += 16) {
        const span nx = next_tile(a, r, 16, r1);
        for (int64_t t = 0; t < a->n_tok; t++) gemv_q6_k(a, &tb, r, (int)imin64(16, r1 - r), t, t ? NULL : &nx);
    }
}

/* ---------------------------------------------------------------------- */
/* Packed Q4_K (nm_mm_kernel.pack_tile)                                   */
/* ---------------------------------------------------------------------- */
/* Packed Q4_K (kernels_impl.h's nm_pack_q4_k).  The scales and mins are
 * unpacked for the 16 rows at once (ggml's get_scale_min_k4 in vector
 * lanes); a sub-block is 8 VPDPBUSD into lanes that are rows, then one
 * multiply by its scale: no reductions (the row-wise kernel needs one
 * transposing reduction a super-block and per-row shuffles). */

/* The 16 rows' sub-block scales (sc[j], lanes are rows) and min pairs
 * (mn[p]: words m[2p], m[2p+1]) of a packed super-block. */
typedef struct k4p_scales {
    __m512i sc[8], mn[4];
} k4p_scales;

T512_INLINE k4p_scales k4p_unpack(const uint8_t *sb) {
    const __m512i u0 = ld512(sb + 64), u1 = ld512(sb + 128), u2 = ld512(sb + 192);
    const __m512i k1 = _mm512_set1_epi32(0x3f3f3f3f), k2 = _mm512_set1_epi32(0x0f0f0f0f),
                  k3 = _mm512_set1_epi32(0x03030303), b = _mm512_set1_epi32(0xff);
    const __m512i s03 = _mm512_and_si512(u0, k1), m03 = _mm512_and_si512(u1, k1);
    const __m512i s47 = _mm512_or_si512(_mm512_and_si512(u2, k2),
                                        _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u0, 6), k3), 4));
    const __m512i m47 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), k2),
                                        _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u1, 6), k3), 4));
    k4p_scales k;
    for (int j = 0; j < 4; j++) {
        k.sc[j] = _mm512_and_si512(_mm512_srli_epi32(s03, 8 * j), b);
        k.sc[4 + j] = _mm512_and_si512(_mm512_srli_epi32(s47, 8 * j), b);
    }
    /* bytes (m0, m1) -> words: m0 | m1 << 16; (m2, m3): (m >> 16) & 0xff | (m >> 8) & 0xff0000 */
    const __m512i w1 = _mm512_set1_epi32(0x00ff0000);
    k.mn[0] = _mm512_or_si512(_mm512_and_si512(m03, b), _mm512_and_si512(_mm512_slli_epi32(m03, 8), w1));
    k.mn[1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(m03, 16), b), _mm512_and_si512(_mm512_srli_epi32(m03, 8), w1));
    k.mn[2] = _mm512_or_si512(_mm512_and_si512(m47, b), _mm512_and_si512(_mm512_slli_epi32(m47, 8), w1));
    k.mn[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(m47, 16), b), _mm512_and_si512(_mm512_srli_epi32(m47, 8), w1));
    return k;
}

/* Bit b of each byte of h moved to bit 4 (a Q5_K quant's fifth bit). */
T512_INLINE __m512i q5_bit(__m512i h, int b) {
    return _mm512_and_si512(b <= 4 ? _mm512_slli_epi16(h, 4 - b) : _mm512_srli_epi16(h, b - 4), _mm512_set1_epi8(0x10));
}

/* Quants 8g + q of a packed Q4_K / Q5_K super-block (at sb): low and high
 * nibbles, with their fifth bits from h (high-bit vector q) for Q5_K. */
T512_INLINE void k45p_quants(const uint8_t *sb, int g, int q, bool q5, __m512i h, __m512i *lo, __m512i *hi) {
    const __m512i m4 = _mm512_set1_epi8(15);
    const __m512i v = ld512(sb + (q5 ? NM_Q5KP_QS : NM_Q4KP_QS) + 64 * (8 * g + q));
    *lo = _mm512_and_si512(v, m4);
    *hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    if (q5) {
        *lo = _mm512_or_si512(*lo, q5_bit(h, 2 * g));
        *hi = _mm512_or_si512(*hi, q5_bit(h, 2 * g + 1));
    }
}

/* One token x the packed Q4_K / Q5_K tile at `tile`: q45k_chunk's
 * operations for 16 rows, super-block by super-block. */
T512_INLINE void gemv_q45_kp(const nm_mm_args *a, const uint8_t *tile, int64_t t, float *out, bool q5) {
    const int64_t nsb = a->cols / NM_QK_K;
    const size_t sbb = nm_kp_super_bytes(q5 ? NM_TYPE_Q5_K : NM_TYPE_Q4_K);
    const k_tok tk = k_token(a, t, 0);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t s = 0; s < nsb; s++, tile += sbb) {
        const k4p_scales k = k4p_unpack(tile);
        const uint8_t *xb = tk.blk + (size_t)s * sizeof(nm_block_q8_k), *xq = xb + 4;
        __m512i sumi = _mm512_setzero_si512(), summ = _mm512_setzero_si512();
        /* Q5_K's high bits are read first, all eight vectors, and the empty
         * asm (a compiler barrier) keeps GCC from moving any load of the
         * super-block above that point: the stream's lines are then first
         * touched in order.  Without it, GCC interleaved these loads with the
         * quants' and one core read packed Q5_K from memory at 10-11 GB/s
         * (25 as stored, 28 with the barrier; from L2 42-43 either way);
         * Q4_K gained a little too (two threads 28.7-32.6 -> 31.2-34.6 GB/s,
         * alternately). */
        __m512i qh[8];
#pragma GCC unroll 8
        for (int q = 0; q < 8; q++) qh[q] = q5 ? ld512(tile + NM_Q5KP_QH + 64 * q) : _mm512_setzero_si512();
        __asm__ volatile("" ::: "memory");
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            const uint8_t *x = xq + 64 * g;
            __m512i l0 = _mm512_setzero_si512(), l1 = l0, h0 = l0, h1 = l0;
#pragma GCC unroll 4
            for (int q = 0; q < 8; q += 2) {
                __m512i lo0, hi0, lo1, hi1;
                k45p_quants(tile, g, q, q5, qh[q], &lo0, &hi0);
                k45p_quants(tile, g, q + 1, q5, qh[q + 1], &lo1, &hi1);
                l0 = _mm512_dpbusd_epi32(l0, lo0, bcast32(x + 4 * q));
                h0 = _mm512_dpbusd_epi32(h0, hi0, bcast32(x + 32 + 4 * q));
                l1 = _mm512_dpbusd_epi32(l1, lo1, bcast32(x + 4 * q + 4));
                h1 = _mm512_dpbusd_epi32(h1, hi1, bcast32(x + 36 + 4 * q));
            }
            sumi = _mm512_add_epi32(sumi, _mm512_mullo_epi32(_mm512_add_epi32(l0, l1), k.sc[2 * g]));
            sumi = _mm512_add_epi32(sumi, _mm512_mullo_epi32(_mm512_add_epi32(h0, h1), k.sc[2 * g + 1]));
        }
        for (int j = 0; j < 4; j++)
            summ = _mm512_dpwssd_epi32(summ, k.mn[j], bcast32((const uint8_t *)(tk.bsum32 + 8 * s + 2 * j)));
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)tile));
        const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(tile + 32)));
        const __m512 dx = _mm512_set1_ps(q8k_d(xb));
        const __m512 x = _mm512_mul_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(sumi));
        const __m512 y = _mm512_mul_ps(_mm512_mul_ps(dmin, dx), _mm512_cvtepi32_ps(summ));
        acc = _mm512_add_ps(acc, _mm512_sub_ps(x, y));
    }
    _mm512_storeu_ps(out, acc);
}

T512 static void gemv_q4_kp(const nm_mm_args *a, const uint8_t *tile, int64_t t, float *out) {
    gemv_q45_kp(a, tile, t, out, false);
}
T512 static void gemv_q5_kp(const nm_mm_args *a, const uint8_t *tile, int64_t t, float *out) {
    gemv_q45_kp(a, tile, t, out, true);
}

/* A batch panel chunk from a packed Q4_K / Q5_K tile (rows r..r+15, whole). */
T512 static void repack_q45_kp(const nm_mm_args *a, int64_t r, int64_t s0, int ks, k_panel *p, bool q5) {
    const size_t sbb = nm_kp_super_bytes(q5 ? NM_TYPE_Q5_K : NM_TYPE_Q4_K);
    for (int s = 0; s < ks; s++) {
        const uint8_t *sb = a->w + (size_t)r * a->row_bytes + (size_t)(s0 + s) * sbb;
        const k4p_scales k = k4p_unpack(sb);
        _mm512_store_ps(p->d + 16 * s, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)sb)));
        _mm512_store_ps(p->dmin + 16 * s, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(sb + 32))));
        for (int j = 0; j < 8; j++) _mm512_store_si512(p->sc + (16 * s + j) * 16, k.sc[j]);
        for (int j = 0; j < 4; j++) _mm512_store_si512(p->mn + (4 * s + j) * 16, k.mn[j]);
        for (int g = 0; g < 4; g++)
            for (int q = 0; q < 8; q++) {
                __m512i lo, hi;
                k45p_quants(sb, g, q, q5, q5 ? ld512(sb + NM_Q5KP_QH + 64 * q) : _mm512_setzero_si512(), &lo, &hi);
                _mm512_store_si512(p->w + (8 * s + 2 * g) * 512 + 64 * q, lo);
                _mm512_store_si512(p->w + (8 * s + 2 * g + 1) * 512 + 64 * q, hi);
            }
    }
}

/* ---------------------------------------------------------------------- */
/* Packed Q6_K                                                            */
/* ---------------------------------------------------------------------- */
/* Packed Q6_K (kernels_impl.h's nm_pack_q6_k). */

/* The 4 kinds of quants (unsigned 0..63) of half h, bytes 4q.. of a packed
 * Q6_K super-block: e[k] holds elements 128h + 32k + 4q.. of the 16 rows. */
T512_INLINE void q6p_quants(const uint8_t *sb, int h, int q, __m512i *e) {
    const uint8_t *v = sb + 288 + 192 * (8 * h + q);
    const __m512i l0 = ld512(v), l1 = ld512(v + 64), hb = ld512(v + 128);
    const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    /* (low 4 bits of a) | (b & 0x30): ternary-logic table 0xEA with c = 0x0f would take b's top bits too */
    e[0] = _mm512_or_si512(_mm512_and_si512(l0, m4), _mm512_and_si512(_mm512_slli_epi16(hb, 4), m30));
    e[1] = _mm512_or_si512(_mm512_and_si512(l1, m4), _mm512_and_si512(_mm512_slli_epi16(hb, 2), m30));
    e[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l0, 4), m4), _mm512_and_si512(hb, m30));
    e[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1, 4), m4), _mm512_and_si512(_mm512_srli_epi16(hb, 2), m30));
}

/* The 16 rows' scale of sub-block j (16 elements), sign-extended. */
T512_INLINE __m512i q6p_scale(const uint8_t *sb, int j) {
    return _mm512_srai_epi32(_mm512_slli_epi32(ld512(sb + 32 + 64 * (j / 4)), 24 - 8 * (j % 4)), 24);
}

/* One token x the packed Q6_K tile: q6k_chunk's operations for 16 rows. */
T512 static void gemv_q6_kp(const nm_mm_args *a, const uint8_t *tile, int64_t t, float *out) {
    const int64_t nsb = a->cols / NM_QK_K;
    const k_tok tk = k_token(a, t, 0);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t s = 0; s < nsb; s++, tile += 16 * sizeof(nm_block_q6_k)) {
        const uint8_t *xb = tk.blk + (size_t)s * sizeof(nm_block_q8_k), *xq = xb + 4;
        const int16_t *bs = (const int16_t *)(const void *)(xb + offsetof(nm_block_q8_k, bsums));
        __m512i sumi = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            /* sub-block 8h + 2k + (q >= 4): elements 128h + 32k + 16(q >= 4) .. */
            __m512i v[8];
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) v[j] = _mm512_set1_epi32(-32 * bs[8 * h + j]);
#pragma GCC unroll 8
            for (int q = 0; q < 8; q++) {
                __m512i e[4];
                q6p_quants(tile, h, q, e);
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++)
                    v[2 * k + q / 4] = _mm512_dpbusd_epi32(v[2 * k + q / 4], e[k], bcast32(xq + 128 * h + 32 * k + 4 * q));
            }
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) sumi = _mm512_add_epi32(sumi, _mm512_mullo_epi32(v[j], q6p_scale(tile, 8 * h + j)));
        }
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)tile));
        const __m512 dx = _mm512_set1_ps(q8k_d(xb));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(sumi)));
    }
    _mm512_storeu_ps(out, acc);
}

/* A batch panel chunk from a packed Q6_K tile (rows r..r+15, whole): panel
 * group 8s + j, 4-element group g is elements 32j + 4g = 128h + 32k + 4q. */
T512 static void repack_q6_kp(const nm_mm_args *a, int64_t r, int64_t s0, int ks, k_panel *p) {
    for (int s = 0; s < ks; s++) {
        const uint8_t *sb = a->w + (size_t)r * a->row_bytes + (size_t)(s0 + s) * 16 * sizeof(nm_block_q6_k);
        _mm512_store_ps(p->d + 16 * s, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)sb)));
        for (int j = 0; j < 16; j++) _mm512_store_si512(p->sc + (16 * s + j) * 16, q6p_scale(sb, j));
        for (int h = 0; h < 2; h++)
            for (int q = 0; q < 8; q++) {
                __m512i e[4];
                q6p_quants(sb, h, q, e);
                for (int k = 0; k < 4; k++) _mm512_store_si512(p->w + (8 * s + 4 * h + k) * 512 + 64 * q, e[k]);
            }
    }
}

T512 static void tiles_q6_kp(const nm_mm_args *a, int64_t r0, int64_t r1) { k_gemm(a, r0, r1, NM_TYPE_Q6_K, true); }

T512 static void rows_q6_kp(const nm_mm_args *a, int64_t r0, int64_t r1) {
    nm_rows_packed(a, r0, r1, gemv_q6_kp, tiles_q6_kp, rows_q6_k);
}

T512 static void tiles_q4_kp(const nm_mm_args *a, int64_t r0, int64_t r1) { k_gemm(a, r0, r1, NM_TYPE_Q4_K, true); }
T512 static void tiles_q5_kp(const nm_mm_args *a, int64_t r0, int64_t r1) { k_gemm(a, r0, r1, NM_TYPE_Q5_K, true); }

T512 static void rows_q4_kp(const nm_mm_args *a, int64_t r0, int64_t r1) {
    nm_rows_packed(a, r0, r1, gemv_q4_kp, tiles_q4_kp, rows_q4_k);
}
T512 static void rows_q5_kp(const nm_mm_args *a, int64_t r0, int64_t r1) {
    nm_rows_packed(a, r0, r1, gemv_q5_kp, tiles_q5_kp, rows_q5_k);
}

/* ====================================================================== */
/* F32, F16, BF16 weights                                                 */
/* ====================================================================== */
/* Lanes are rows here too: each output is one chain of fused multiply-adds
 * over the row in element order, acc = fma(w[k], x[k], acc), which both
 * shapes follow.  Batches repack a tile of 32 rows x KC_FLOATS elements
 * transposed (element-major) to floats; single tokens transpose 16 x 16
 * squares in registers.  x is the F32 input, or for F16/BF16 weights the
 * activations rounded to that type (as floats, from the side data), so the
 * products are exact and the results depend only on the summation. */

/* 16 elements of a row, from element k, as floats; n < 16 reads only n. */
T512_INLINE __m512 load16(nm_type t, const uint8_t *row, int64_t k, int n) {
    const __mmask16 m = lanes(n);
    switch (t) {
    case NM_TYPE_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row + 2 * k));
    case NM_TYPE_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, row + 2 * k)), 16));
    default: return _mm512_maskz_loadu_ps(m, row + 4 * k);
    }
}

/* In-register transpose of 16 vectors. */
T512_INLINE void transpose16(__m512 *r) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], _MM_SHUFFLE(2, 0, 2, 0));
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], _MM_SHUFFLE(3, 1, 3, 1));
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], _MM_SHUFFLE(2, 0, 2, 0));
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], _MM_SHUFFLE(3, 1, 3, 1));
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], _MM_SHUFFLE(2, 0, 2, 0));
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], _MM_SHUFFLE(3, 1, 3, 1));
        r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], _MM_SHUFFLE(2, 0, 2, 0));
        r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], _MM_SHUFFLE(3, 1, 3, 1));
    }
}

/* The float rows the products read: x itself for F32 weights, the rounded
 * activations of the side data otherwise. */
T512_INLINE const float *f_x(const nm_mm_args *a, nm_type type, int64_t t) {
    if (type == NM_TYPE_F32) return (const float *)(const void *)(a->act + (size_t)t * a->act_stride);
    return (const float *)(const void *)(a->extra + (size_t)t * a->extra_stride);
}

/* Element-major panel: p[k * 32 + i] = row i's element k0 + k. */
T512 static void repack_f(const nm_mm_args *a, nm_type type, int64_t r, int nr, int64_t k0, int kc, float *p) {
    const size_t esz = type == NM_TYPE_F32 ? 4 : 2;
    for (int h = 0; h < 2; h++)
        for (int c = 0; c < kc; c += 16) {
            __m512 v[16];
            const int n = kc - c < 16 ? kc - c : 16;
            for (int i = 0; i < 16; i++) {
                const int row = 16 * h + i;
                v[i] = row < nr ? load16(type, a->w + (size_t)(r + row) * a->row_bytes + (size_t)k0 * esz, c, n)
                                : _mm512_setzero_ps();
            }
            transpose16(v);
            for (int i = 0; i < n; i++) _mm512_store_ps(p + (c + i) * 32 + 16 * h, v[i]);
        }
}

/* Tokens per batch tile: 6 x 2 chain sums and 6 x 2 running totals stay
 * in registers (27 of the 32 with the weights and a broadcast).  12 tokens
 * (24 chain sums) spilled the running totals to the stack at every
 * 16-element step and ran at 41 G multiply-adds/s a core against 48 for 6
 * (F16, 2048 x 2048 x 512 tokens, one Zen 4 core, peak 58).  The full
 * 16-element steps are a separate, completely unrolled loop: with the
 * bounds test of the tail loop inside it the same tile ran at 26. */
enum { FT = 6 };

/* Element k of the chunk: one fused multiply-add into each chain sum. */
T512_INLINE void f_step(int NT, const float *p, const float *const *x, int k, __m512 (*part)[2]) {
    const __m512 w0 = _mm512_load_ps(p + 32 * k), w1 = _mm512_load_ps(p + 32 * k + 16);
#pragma GCC unroll 12
    for (int i = 0; i < NT; i++) {
        const __m512 xb = _mm512_set1_ps(x[i][k]);
        part[i][0] = _mm512_fmadd_ps(w0, xb, part[i][0]);
        part[i][1] = _mm512_fmadd_ps(w1, xb, part[i][1]);
    }
}

/* NT tokens x 32 rows over one panel chunk. */
T512_INLINE void f_tokens(int NT, const nm_mm_args *a, nm_type type, const float *p, int64_t r, int nr, int64_t t,
                          int64_t k0, int kc) {
    const __mmask16 m0 = lanes(nr), m1 = lanes(nr - 16 > 0 ? nr - 16 : 0);
    __m512 acc[FT][2];
    const float *x[FT];
#pragma GCC unroll 12
    for (int i = 0; i < NT; i++) {
        x[i] = f_x(a, type, t + i) + k0;
        const float *y = a->y + (t + i) * a->ldy + (r - a->y_r0);
        acc[i][0] = k0 ? _mm512_maskz_loadu_ps(m0, y) : _mm512_setzero_ps();
        acc[i][1] = k0 ? _mm512_maskz_loadu_ps(m1, y + 16) : _mm512_setzero_ps();
    }
    for (int c = 0; c < kc; c += 16) {
        __m512 part[FT][2];
#pragma GCC unroll 12
        for (int i = 0; i < NT; i++) part[i][0] = part[i][1] = _mm512_setzero_ps();
        if (kc - c >= 16) {
#pragma GCC unroll 16
            for (int k = c; k < c + 16; k++) f_step(NT, p, x, k, part);
        } else {
            for (int k = c; k < kc; k++) f_step(NT, p, x, k, part);
        }
#pragma GCC unroll 12
        for (int i = 0; i < NT; i++) {
            acc[i][0] = _mm512_add_ps(acc[i][0], part[i][0]);
            acc[i][1] = _mm512_add_ps(acc[i][1], part[i][1]);
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < NT; i++) {
        float *y = a->y + (t + i) * a->ldy + (r - a->y_r0);
        _mm512_mask_storeu_ps(y, m0, acc[i][0]);
        _mm512_mask_storeu_ps(y + 16, m1, acc[i][1]);
    }
}

/* BF16: the products of two BF16 values are exact floats; they are added
 * in double, in element order, as the scalar reference (and llama.cpp)
 * does: BF16 activations keep only 8 bits, so a sum that differs in its
 * last float bit can round an activation of the next layer the other way,
 * which moves the logits by more than the golden tolerance.  The result is
 * then the reference's, bit for bit. */
enum { BT = 4 };

T512_INLINE void bf_add(__m512d *acc, __m512 p) {
    acc[0] = _mm512_add_pd(acc[0], _mm512_cvtps_pd(_mm512_castps512_ps256(p)));
    acc[1] = _mm512_add_pd(acc[1], _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(p), 1))));
}

/* 16 doubles (two vectors) of a tile row group to floats, into y. */
T512_INLINE void bf_store(float *y, __mmask16 m, const __m512d *acc) {
    const __m512 f = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(acc[0])), _mm512_cvtpd_ps(acc[1]), 1);
    _mm512_mask_storeu_ps(y, m, f);
}

/* The running sums of a tile live in y as floats between chunks, which
 * would round them: BF16 tiles therefore take the whole row as one chunk
 * (bf_gemm repacks KC_FLOATS at a time but keeps the doubles in registers
 * per token group). */
T512_INLINE void bf_tokens(int NT, const nm_mm_args *a, float *p, int64_t r, int nr, int64_t t) {
    const __mmask16 m0 = lanes(nr), m1 = lanes(nr - 16 > 0 ? nr - 16 : 0);
    __m512d acc[BT][4];
    const float *x[BT];
#pragma GCC unroll 4
    for (int i = 0; i < NT; i++) {
        x[i] = f_x(a, NM_TYPE_BF16, t + i);
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_pd();
    }
    for (int64_t k0 = 0; k0 < a->cols; k0 += KC_FLOATS) {
        const int kc = (int)imin64(KC_FLOATS, a->cols - k0);
        repack_f(a, NM_TYPE_BF16, r, nr, k0, kc, p);
        for (int k = 0; k < kc; k++) {
            const __m512 w0 = _mm512_load_ps(p + 32 * k), w1 = _mm512_load_ps(p + 32 * k + 16);
#pragma GCC unroll 4
            for (int i = 0; i < NT; i++) {
                const __m512 xb = _mm512_set1_ps(x[i][k0 + k]);
                bf_add(acc[i], _mm512_mul_ps(w0, xb));
                bf_add(acc[i] + 2, _mm512_mul_ps(w1, xb));
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NT; i++) {
        float *y = a->y + (t + i) * a->ldy + (r - a->y_r0);
        bf_store(y, m0, acc[i]);
        bf_store(y + 16, m1, acc[i] + 2);
    }
}

/* BF16 batches: token groups outside, the row walked (and repacked) once
 * per group: the repacking is cheap next to the double arithmetic. */
T512 static void bf_gemm(const nm_mm_args *a, int64_t r0, int64_t r1) {
    _Alignas(64) float p[KC_FLOATS * 32];
    for (int64_t r = r0; r < r1; r += 32) {
        const int nr = (int)imin64(32, r1 - r);
        int64_t t = 0;
        for (; t + BT <= a->n_tok; t += BT) bf_tokens(BT, a, p, r, nr, t);
        for (; t < a->n_tok; t++) bf_tokens(1, a, p, r, nr, t);
    }
}

T512 static void bf_gemv(const nm_mm_args *a, int64_t r, int nr, int64_t t) {
    const float *x = f_x(a, NM_TYPE_BF16, t);
    const uint8_t *rp[16];
    for (int i = 0; i < 16; i++) rp[i] = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes;
    __m512d acc[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
    for (int64_t k0 = 0; k0 < a->cols; k0 += 16) {
        const int n = (int)imin64(16, a->cols - k0);
        __m512 v[16];
        for (int i = 0; i < 16; i++) v[i] = load16(NM_TYPE_BF16, rp[i], k0, n);
        transpose16(v);
        for (int i = 0; i < n; i++) bf_add(acc, _mm512_mul_ps(v[i], _mm512_set1_ps(x[k0 + i])));
    }
    bf_store(a->y + t * a->ldy + (r - a->y_r0), lanes(nr), acc);
}

T512 static void f_gemm(const nm_mm_args *a, int64_t r0, int64_t r1, nm_type type) {
    _Alignas(64) float p[KC_FLOATS * 32];
    for (int64_t r = r0; r < r1; r += 32) {
        const int nr = (int)imin64(32, r1 - r);
        for (int64_t k0 = 0; k0 < a->cols; k0 += KC_FLOATS) {
            const int kc = (int)imin64(KC_FLOATS, a->cols - k0);
            repack_f(a, type, r, nr, k0, kc, p);
            int64_t t = 0;
            for (; t + FT <= a->n_tok; t += FT) f_tokens(FT, a, type, p, r, nr, t, k0, kc);
            for (; t < a->n_tok; t++) f_tokens(1, a, type, p, r, nr, t, k0, kc);
        }
    }
}

/* One token x 16 rows: squares of 16 x 16 transposed in registers, then the
 * same chain of fused multiply-adds as the batch shape. */
T512 static void f_gemv(const nm_mm_args *a, nm_type type, int64_t r, int nr, int64_t t) {
    const float *x = f_x(a, type, t);
    const uint8_t *rp[16];
    for (int i = 0; i < 16; i++) rp[i] = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t k0 = 0; k0 < a->cols; k0 += 16) {
        const int n = (int)imin64(16, a->cols - k0);
        __m512 v[16];
        for (int i = 0; i < 16; i++) v[i] = load16(type, rp[i], k0, n);
        transpose16(v);
        __m512 part = _mm512_setzero_ps();
        for (int i = 0; i < n; i++) part = _mm512_fmadd_ps(v[i], _mm512_set1_ps(x[k0 + i]), part);
        acc = _mm512_add_ps(acc, part);
    }
    _mm512_mask_storeu_ps(a->y + t * a->ldy + (r - a->y_r0), lanes(nr), acc);
}

T512 static void f_rows(const nm_mm_args *a, int64_t r0, int64_t r1, nm_type type) {
    if (a->n_tok >= GEMM_MIN_TOK) {
        if (type == NM_TYPE_BF16) bf_gemm(a, r0, r1);
        else f_gemm(a, r0, r1, type);
        return;
    }
    for (int64_t r = r0; r < r1; r += 16)
        for (int64_t t = 0; t < a->n_tok; t++) {
            if (type == NM_TYPE_BF16) bf_gemv(a, r, (int)imin64(16, r1 - r), t);
            else f_gemv(a, type, r, (int)imin64(16, r1 - r), t);
        }
}

T512 static void rows_f32(const nm_mm_args *a, int64_t r0, int64_t r1) { f_rows(a, r0, r1, NM_TYPE_F32); }
T512 static void rows_f16(const nm_mm_args *a, int64_t r0, int64_t r1) { f_rows(a, r0, r1, NM_TYPE_F16); }
T512 static void rows_bf16(const nm_mm_args *a, int64_t r0, int64_t r1) { f_rows(a, r0, r1, NM_TYPE_BF16); }

/* Weight rows to floats for nm_matmul_t: exact conversions. */
T512 static void f16_to_float(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(h + i))));
    for (; i < n; i++) dst[i] = _cvtsh_ss(h[i]);
}

T512 static void bf16_to_float(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_si512(dst + i, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(h + i))), 16));
    for (; i < n; i++) {
        const uint32_t u = (uint32_t)h[i] << 16;
        memcpy(dst + i, &u, 4);
    }
}

/* ====================================================================== */
/* dx = dy W panels                                                       */
/* ====================================================================== */

/* NM tokens x 64 columns: 4 vectors of C a token stay in registers while
 * k runs; full tiles use plain loads, the last columns masked ones. */
T512_INLINE void nn_tile(int NM, bool full, int64_t n, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                         int64_t ldb, float *C, int64_t ldc) {
    __mmask16 m[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) m[j] = full ? (__mmask16)0xffff : lanes(N - n - 16 * j > 0 ? N - n - 16 * j : 0);
    __m512 acc[6][4];
#pragma GCC unroll 6
    for (int i = 0; i < NM; i++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_maskz_loadu_ps(m[j], C + i * ldc + n + 16 * j);
    for (int64_t k = 0; k < K; k++) {
        const float *b = B + k * ldb + n;
        __m512 bv[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) bv[j] = full ? _mm512_loadu_ps(b + 16 * j) : _mm512_maskz_loadu_ps(m[j], b + 16 * j);
#pragma GCC unroll 6
        for (int i = 0; i < NM; i++) {
            const __m512 av = _mm512_set1_ps(A[i * lda + k]);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < NM; i++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) _mm512_mask_storeu_ps(C + i * ldc + n + 16 * j, m[j], acc[i][j]);
}

T512_INLINE void nn_tokens(int NM, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                           float *C, int64_t ldc) {
    int64_t n = 0;
    for (; n + 64 <= N; n += 64) nn_tile(NM, true, n, N, K, A, lda, B, ldb, C, ldc);
    if (n < N) nn_tile(NM, false, n, N, K, A, lda, B, ldb, C, ldc);
}

T512 static void nn_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                           float *C, int64_t ldc) {
    int64_t m = 0;
    for (; m + 6 <= M; m += 6) nn_tokens(6, N, K, A + m * lda, lda, B, ldb, C + m * ldc, ldc);
    for (; m < M; m++) nn_tokens(1, N, K, A + m * lda, lda, B, ldb, C + m * ldc, ldc);
}

/* ====================================================================== */
/* activation conversion                                                  */
/* ====================================================================== */
/* The reference quantizers (nm_quant_q8_0 of quants.c, nm_quant_q8_k of
 * kernels.c) vectorised operation for operation, so the bytes are the
 * same for finite input: the same float products, roundf (half away from
 * zero) for Q8_0 and round-to-nearest-even for Q8_K, the same scales. */

/* roundf: truncate, then step away from zero when the dropped fraction
 * (exact: v and its truncation are within a factor 2) is at least 1/2. */
T512_INLINE __m512i round_away(__m512 v) {
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_abs_ps(_mm512_sub_ps(v, t));
    const __m512 one = _mm512_or_ps(_mm512_and_ps(v, _mm512_set1_ps(-0.0f)), _mm512_set1_ps(1.0f));
    const __mmask16 up = _mm512_cmp_ps_mask(f, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, one));
}

/* Sixteen vectors to one: lane i = the maximum (hmax16) or the sum
 * (hsum16) of vector i's lanes, by a transposing tree (30 shuffles for the
 * 16 reductions instead of 64).  Maxima of non-NaN floats and sums of
 * integers are exact in any order. */
T512_INLINE __m512 hmax16(const __m512 *m) {
    __m512 t[8], u[4], w[2];
    for (int j = 0; j < 8; j++)
        t[j] = _mm512_max_ps(_mm512_unpacklo_ps(m[2 * j], m[2 * j + 1]), _mm512_unpackhi_ps(m[2 * j], m[2 * j + 1]));
    for (int j = 0; j < 4; j++) {
        const __m512d c = _mm512_castps_pd(t[2 * j]), d = _mm512_castps_pd(t[2 * j + 1]);
        u[j] = _mm512_max_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)), _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)));
    }
    for (int j = 0; j < 2; j++)
        w[j] = _mm512_max_ps(_mm512_shuffle_f32x4(u[2 * j], u[2 * j + 1], 0x44), _mm512_shuffle_f32x4(u[2 * j], u[2 * j + 1], 0xEE));
    return _mm512_max_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD));
}

T512_INLINE __m512i hsum16(const __m512i *m) {
    __m512i t[8], u[4], w[2];
    for (int j = 0; j < 8; j++)
        t[j] = _mm512_add_epi32(_mm512_unpacklo_epi32(m[2 * j], m[2 * j + 1]), _mm512_unpackhi_epi32(m[2 * j], m[2 * j + 1]));
    for (int j = 0; j < 4; j++)
        u[j] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * j], t[2 * j + 1]), _mm512_unpackhi_epi64(t[2 * j], t[2 * j + 1]));
    for (int j = 0; j < 2; j++)
        w[j] = _mm512_add_epi32(_mm512_shuffle_i32x4(u[2 * j], u[2 * j + 1], 0x44), _mm512_shuffle_i32x4(u[2 * j], u[2 * j + 1], 0xEE));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(w[0], w[1], 0x88), _mm512_shuffle_i32x4(w[0], w[1], 0xDD));
}

/* The reference quantizer's bytes (roundf of x / d, d = amax / 127 rounded
 * to half precision with ties to even) and its side data.  Sixteen blocks
 * at a time share the maximum and sum reductions, the scale divisions and
 * the half-precision rounding (VCVTPS2PH, the reference's rounding for
 * finite scales): a single token's conversion runs before the thread
 * split, and one block at a time it was 4% of a 512 x 2048 Q4_0 product. */
T512 static void convert_q8_0(const float *x, uint8_t *act, uint8_t *extra, int64_t n) {
    const int64_t nb = n / 32;
    float *ed = (float *)(void *)extra;
    int64_t b = 0;
    for (; b + 16 <= nb; b += 16) {
        const float *xb = x + 32 * b;
        __m512 m[16];
        for (int i = 0; i < 16; i++)
            m[i] = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb + 32 * i)), _mm512_abs_ps(_mm512_loadu_ps(xb + 32 * i + 16)));
        const __m512 d = _mm512_div_ps(hmax16(m), _mm512_set1_ps(127.0f));
        const __m512 id =
            _mm512_maskz_div_ps(_mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_NEQ_UQ), _mm512_set1_ps(1.0f), d);
        const __m256i dh = _mm512_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _Alignas(64) float idv[16];
        _Alignas(32) uint16_t dhv[16];
        _mm512_store_ps(idv, id);
        _mm256_store_si256((__m256i *)(void *)dhv, dh);
        if (ed) _mm512_storeu_ps(ed + b, _mm512_cvtph_ps(dh));
        __m512i s[16];
        for (int i = 0; i < 16; i++) {
            uint8_t *a = act + 34 * (b + i);
            memcpy(a, &dhv[i], 2);
            const __m512 vid = _mm512_set1_ps(idv[i]);
            const __m512i q0 = round_away(_mm512_mul_ps(_mm512_loadu_ps(xb + 32 * i), vid));
            const __m512i q1 = round_away(_mm512_mul_ps(_mm512_loadu_ps(xb + 32 * i + 16), vid));
            _mm_storeu_si128((__m128i *)(void *)(a + 2), _mm512_cvtsepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(void *)(a + 18), _mm512_cvtsepi32_epi8(q1));
            s[i] = _mm512_add_epi32(q0, q1);
        }
        if (ed) _mm512_storeu_si512((void *)(extra + 4 * (nb + b)), hsum16(s));
    }
    for (x += 32 * b, act += 34 * b; b < nb; b++, x += 32, act += 34) {
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const uint16_t dh = nm_f32_to_f16(d);
        memcpy(act, &dh, 2);
        const __m512 vid = _mm512_set1_ps(id);
        const __m512i q0 = round_away(_mm512_mul_ps(v0, vid)), q1 = round_away(_mm512_mul_ps(v1, vid));
        _mm_storeu_si128((__m128i *)(void *)(act + 2), _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(void *)(act + 18), _mm512_cvtsepi32_epi8(q1));
        if (ed) {
            ed[b] = _cvtsh_ss(dh);
            const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            memcpy(extra + 4 * (nb + b), &sum, 4);
        }
    }
}

T512 static void convert_q8_k(const float *x, uint8_t *act, uint8_t *extra, int64_t n) {
    int16_t *e16 = (int16_t *)(void *)extra;
    for (int64_t b = 0; b < n / NM_QK_K; b++, x += NM_QK_K, act += sizeof(nm_block_q8_k)) {
        __m512 m = _mm512_setzero_ps();
        for (int j = 0; j < NM_QK_K; j += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + j)));
        const float amax = _mm512_reduce_max_ps(m);
        int8_t *qs = (int8_t *)(act + 4);
        int16_t bsums[16];
        float d = 0.0f;
        if (amax == 0.0f || !isfinite(amax)) {
            memset(qs, 0, NM_QK_K);
            memset(bsums, 0, sizeof bsums);
        } else {
            /* the first element of largest magnitude sets the sign */
            float max = 0.0f;
            for (int j = 0; j < NM_QK_K; j += 16) {
                const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + j)), _mm512_set1_ps(amax), _CMP_EQ_OQ);
                if (hit) {
                    max = x[j + __builtin_ctz(hit)];
                    break;
                }
            }
            const float iscale = -127.0f / max;
            const __m512 vs = _mm512_set1_ps(iscale);
            for (int j = 0; j < NM_QK_K; j += 16) {
                const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(vs, _mm512_loadu_ps(x + j)));
                const __m128i q8 = _mm512_cvtsepi32_epi8(q);
                _mm_storeu_si128((__m128i *)(void *)(qs + j), q8);
                bsums[j / 16] = (int16_t)_mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(q8));
            }
            d = 1.0f / iscale;
        }
        memcpy(act, &d, 4);
        memcpy(act + 4 + NM_QK_K, bsums, sizeof bsums);
        if (e16)
            for (int j = 0; j < 8; j++) e16[8 * b + j] = (int16_t)(bsums[2 * j] + bsums[2 * j + 1]);
    }
}

T512 static void convert_f16(const float *x, uint8_t *act, uint8_t *extra, int64_t n) {
    float *f = (float *)(void *)extra;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_si256((__m256i *)(void *)(act + 2 * i), h);
        if (f) _mm512_storeu_ps(f + i, _mm512_cvtph_ps(h));
    }
    for (; i < n; i++) {
        const uint16_t h = nm_f32_to_f16(x[i]);
        memcpy(act + 2 * i, &h, 2);
        if (f) f[i] = nm_f16_to_f32(h);
    }
}

/* nm_f32_to_bf16 in integers: round to nearest even, NaN made quiet. */
T512 static void convert_bf16(const float *x, uint8_t *act, uint8_t *extra, int64_t n) {
    float *f = (float *)(void *)extra;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i u = _mm512_castps_si512(_mm512_loadu_ps(x + i));
        const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
        const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
        r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(64));
        _mm256_storeu_si256((__m256i *)(void *)(act + 2 * i), _mm512_cvtepi32_epi16(r));
        if (f) _mm512_storeu_ps(f + i, _mm512_castsi512_ps(_mm512_slli_epi32(r, 16)));
    }
    for (; i < n; i++) {
        const uint16_t h = nm_f32_to_bf16(x[i]);
        memcpy(act + 2 * i, &h, 2);
        if (f) f[i] = nm_bf16_to_f32(h);
    }
}

/* ====================================================================== */
/* attention over an F16 cache (see kernels.h)                            */
/* ====================================================================== */
/* Float lanes with one fused multiply-add per product, in the reference's
 * order (kernels.c).  Scores: keys in the lanes (key tiles), each tile
 * converted once for all the queries that share it.  Values: elements in
 * the lanes, up to 4 heads x 64 elements in registers.  Heads wider than
 * 256, and for values widths that are not a multiple of 16, take the
 * scalar loops. */

T512_INLINE __m512 h16_ps(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)p));
}

/* Full unrolling of the constant-size tile loops, so that arrays of
 * accumulators become registers (GCC does not unroll at -O2). */
#if defined(__GNUC__) && !defined(__clang__)
#define NM_UNROLL4 _Pragma("GCC unroll 4")
#else
#define NM_UNROLL4
#endif

enum { ATT_MAXD = 256 }; /* wider heads take the scalar loops */
enum { ATT_TILES = 3 };   /* key tiles a pass: each query broadcast feeds 3 FMAs */

/* Scores of NT key tiles (converted in kf, tile t at kf + t * 16 * hd) for
 * one query head qj, stored through masks m[t].  Per tile the reference's
 * 16 lane chains, taken four at a time (lanes l, l + 4, l + 8, l + 12) and
 * added as its tree adds them: ((l + (l + 8)) + ((l + 4) + (l + 12))) for
 * l < 4, then (0 + 2) + (1 + 3).  So 28 vectors are live and each
 * broadcast of a query element serves every tile of the pass. */
T512_INLINE void scores_tiles(int NT, const float *qj, const float *kf, int64_t hd, __m512 vs, float *dst,
                              const __mmask16 *m) {
    __m512 c[ATT_TILES][4];
    NM_UNROLL4 for (int l = 0; l < 4; l++) {
        __m512 x[ATT_TILES][4];
        NM_UNROLL4 for (int t = 0; t < NT; t++)
            NM_UNROLL4 for (int u = 0; u < 4; u++) x[t][u] = _mm512_setzero_ps();
        for (int64_t i = 0; i < hd; i += 16)
            NM_UNROLL4 for (int u = 0; u < 4; u++) {
                const int64_t e = i + l + 4 * u; /* lanes l, l + 4, l + 8, l + 12 */
                const __m512 b = _mm512_set1_ps(qj[e]);
                NM_UNROLL4 for (int t = 0; t < NT; t++)
                    x[t][u] = _mm512_fmadd_ps(b, _mm512_load_ps(kf + t * 16 * hd + 16 * e), x[t][u]);
            }
        NM_UNROLL4 for (int t = 0; t < NT; t++)
            c[t][l] = _mm512_add_ps(_mm512_add_ps(x[t][0], x[t][2]), _mm512_add_ps(x[t][1], x[t][3]));
    }
    NM_UNROLL4 for (int t = 0; t < NT; t++) {
        const __m512 r = _mm512_add_ps(_mm512_add_ps(c[t][0], c[t][2]), _mm512_add_ps(c[t][1], c[t][3]));
        _mm512_mask_storeu_ps(dst + 16 * t, m[t], _mm512_mul_ps(r, vs));
    }
}

/* Key tiles (16 keys) converted once into kf for all the query heads (a
 * vector holds one element of 16 keys), then per head the scores of up to
 * ATT_TILES tiles as vertical operations (scores_tiles): no reductions
 * across lanes, where one key at a time spent about as much on those as on
 * its multiply-adds. */
T512 static void attn_scores_512(const float *q, size_t q_stride, int nq, const uint16_t *k, int64_t n, int64_t hd,
                                 float scale, float *scores, size_t s_stride) {
    if (hd > ATT_MAXD) {
        nm_attn_kernel_get(NM_ISA_SCALAR)->scores(q, q_stride, nq, k, n, hd, scale, scores, s_stride);
        return;
    }
    _Alignas(64) float kf[ATT_TILES * ATT_MAXD * NM_KEY_TILE];
    const __m512 vs = _mm512_set1_ps(scale);
    const int64_t pass = ATT_TILES * NM_KEY_TILE;
    for (int64_t p0 = 0; p0 < n; p0 += pass, k += pass * hd) {
        const int nt = n - p0 >= pass ? ATT_TILES : (int)((n - p0 + NM_KEY_TILE - 1) / NM_KEY_TILE);
        __mmask16 m[ATT_TILES];
        for (int t = 0; t < nt; t++) m[t] = lanes(n - p0 - NM_KEY_TILE * t);
        for (int64_t i = 0; i < nt * NM_KEY_TILE * hd; i += 16) _mm512_store_ps(kf + i, h16_ps(k + i));
        for (int j = 0; j < nq; j++) {
            const float *qj = q + (size_t)j * q_stride;
            float *dst = scores + (size_t)j * s_stride + p0;
            if (hd % 16) { /* element by element, as the reference */
                for (int t = 0; t < nt; t++) {
                    __m512 r = _mm512_setzero_ps();
                    for (int64_t i = 0; i < hd; i++)
                        r = _mm512_fmadd_ps(_mm512_set1_ps(qj[i]), _mm512_load_ps(kf + t * 16 * hd + 16 * i), r);
                    _mm512_mask_storeu_ps(dst + 16 * t, m[t], _mm512_mul_ps(r, vs));
                }
            } else if (nt == 3) {
                scores_tiles(3, qj, kf, hd, vs, dst, m);
            } else if (nt == 2) {
                scores_tiles(2, qj, kf, hd, vs, dst, m);
            } else {
                scores_tiles(1, qj, kf, hd, vs, dst, m);
            }
        }
    }
}

/* Up to 4 heads x 64 elements of the output in registers while the keys
 * run (nv vectors of 16 elements). */
T512_INLINE void values_tile(const float *w, size_t w_stride, const uint16_t *v, size_t stride, int64_t n, float *out,
                             size_t o_stride, const int mq, const int nv) {
    __m512 a[4][4];
    NM_UNROLL4 for (int j = 0; j < 4; j++)
        NM_UNROLL4 for (int m = 0; m < 4; m++) a[j][m] = _mm512_setzero_ps();
    for (int64_t p = 0; p < n; p++, v += stride) {
        __m512 vf[4];
        NM_UNROLL4 for (int m = 0; m < 4; m++) vf[m] = m < nv ? h16_ps(v + 16 * m) : _mm512_setzero_ps();
        NM_UNROLL4 for (int j = 0; j < mq; j++) {
            const __m512 s = _mm512_set1_ps(w[(size_t)j * w_stride + (size_t)p]);
            NM_UNROLL4 for (int m = 0; m < nv; m++) a[j][m] = _mm512_fmadd_ps(s, vf[m], a[j][m]);
        }
    }
    NM_UNROLL4 for (int j = 0; j < mq; j++)
        NM_UNROLL4 for (int m = 0; m < nv; m++) _mm512_storeu_ps(out + (size_t)j * o_stride + (size_t)(16 * m), a[j][m]);
}

T512 static void attn_values_512(const float *w, size_t w_stride, int nq, const uint16_t *v, size_t stride, int64_t n,
                                 int64_t hd, float *out, size_t o_stride) {
    if (hd % 16 || hd > ATT_MAXD) {
        nm_attn_kernel_get(NM_ISA_SCALAR)->values(w, w_stride, nq, v, stride, n, hd, out, o_stride);
        return;
    }
    for (int64_t i0 = 0; i0 < hd; i0 += 64)
        for (int j0 = 0; j0 < nq; j0 += 4) {
            const float *wj = w + (size_t)j0 * w_stride;
            float *oj = out + (size_t)j0 * o_stride + (size_t)i0;
            const int mq = nq - j0 < 4 ? nq - j0 : 4;
            const int nv = hd - i0 >= 64 ? 4 : (int)((hd - i0) / 16);
            if (mq == 4 && nv == 4) values_tile(wj, w_stride, v + i0, stride, n, oj, o_stride, 4, 4);
            else if (nv == 4) values_tile(wj, w_stride, v + i0, stride, n, oj, o_stride, mq, 4);
            else values_tile(wj, w_stride, v + i0, stride, n, oj, o_stride, mq, nv);
        }
}

T512 static void to_f16_512(const float *x, uint16_t *h, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(void *)(h + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) h[i] = nm_f32_to_f16(x[i]);
}

T512 static void round_f16_512(float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(x + i, _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
    for (; i < n; i++) x[i] = nm_half_to_f32(nm_f32_to_f16(x[i]));
}

/* nm_exp_ref in 16 lanes: the same operations, so the same bits */
T512_INLINE __m512 exp16(__m512 x) {
    const __m512 hi = _mm512_set1_ps(NM_EXP_HI), lo = _mm512_set1_ps(NM_EXP_LO), magic = _mm512_set1_ps(NM_EXP_MAGIC);
    const __mmask16 below = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), above = _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ);
    __m512 xc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, hi, _CMP_LT_OQ), hi, x);
    xc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lo, _CMP_GT_OQ), lo, xc);
    const __m512 fn = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(NM_EXP_LOG2E)), magic), magic);
    __m512 r = _mm512_sub_ps(xc, _mm512_mul_ps(fn, _mm512_set1_ps(NM_EXP_C1)));
    r = _mm512_sub_ps(r, _mm512_mul_ps(fn, _mm512_set1_ps(NM_EXP_C2)));
    const __m512 z = _mm512_mul_ps(r, r);
    __m512 p = _mm512_set1_ps(NM_EXP_P0);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(NM_EXP_P1));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(NM_EXP_P2));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(NM_EXP_P3));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(NM_EXP_P4));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(NM_EXP_P5));
    __m512 y = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, z), r), _mm512_set1_ps(1.0f));
    const __m512i n = _mm512_cvttps_epi32(fn);
    y = _mm512_mul_ps(y, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23)));
    y = _mm512_mask_blend_ps(below, y, _mm512_setzero_ps());
    y = _mm512_mask_blend_ps(above, y, _mm512_set1_ps(__builtin_inff()));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), y, x);
}

T512 static void softmax_512(float *x, int64_t n) {
    __m512 vm = _mm512_set1_ps(-__builtin_inff());
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + i));
    float max = _mm512_reduce_max_ps(vm); /* max is exact in any order */
    for (; i < n; i++) max = x[i] > max ? x[i] : max;
    const __m512 m = _mm512_set1_ps(max);
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    for (i = 0; i + 16 <= n; i += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), m));
        _mm512_storeu_ps(x + i, e);
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    double a[16];
    _mm512_storeu_pd(a, a0);
    _mm512_storeu_pd(a + 8, a1);
    const __m512 inv = _mm512_set1_ps(nm_softmax_tail(x, n, i, max, a));
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
    if (i < n) _mm512_mask_storeu_ps(x + i, lanes(n - i), _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes(n - i), x + i), inv));
}

T512 static void swiglu_512(float *out, const float *gate, const float *up, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 g = _mm512_loadu_ps(gate + i);
        const __m512 e = exp16(_mm512_xor_ps(g, _mm512_set1_ps(-0.0f)));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), _mm512_loadu_ps(up + i)));
    }
    for (; i < n; i++) {
        const float g = gate[i];
        out[i] = g / (1.0f + nm_exp_ref(-g)) * up[i];
    }
}

T512 static void rmsnorm_512(float *y, const float *x, const float *w, int64_t n, float eps) {
    __m512d acc = _mm512_setzero_pd(); /* lane k: nm_rmsnorm's s[k] */
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + i));
        acc = _mm512_add_pd(acc, _mm512_mul_pd(v, v));
    }
    double s[8];
    _mm512_storeu_pd(s, acc);
    const float scale = nm_rms_scale(s, x, i, n, eps);
    const __m512 vs = _mm512_set1_ps(scale);
    for (i = 0; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), vs);
        _mm512_storeu_ps(y + i, w ? _mm512_mul_ps(v, _mm512_loadu_ps(w + i)) : v);
    }
    for (; i < n; i++) y[i] = w ? (x[i] * scale) * w[i] : x[i] * scale;
}

static const nm_attn_kernel ATTN_512 = {attn_scores_512, attn_values_512, to_f16_512, round_f16_512,
                                        softmax_512,     swiglu_512,      rmsnorm_512};

const nm_attn_kernel *nm_attn_kernel_avx512(void) { return &ATTN_512; }

/* ====================================================================== */
/* peak probes                                                            */
/* ====================================================================== */
/* Twelve accumulators hide the instructions' latency; the inputs are made
 * opaque every round so nothing can be hoisted or folded. */

static volatile uint64_t probe_sink;

T512 uint64_t nm_probe_int8_avx512(uint64_t iters) {
    __m512i c0 = _mm512_set1_epi32(0), c1 = _mm512_set1_epi32(1), c2 = _mm512_set1_epi32(2), c3 = _mm512_set1_epi32(3),
            c4 = _mm512_set1_epi32(4), c5 = _mm512_set1_epi32(5), c6 = _mm512_set1_epi32(6), c7 = _mm512_set1_epi32(7),
            c8 = _mm512_set1_epi32(8), c9 = _mm512_set1_epi32(9), c10 = _mm512_set1_epi32(10), c11 = _mm512_set1_epi32(11);
    __m512i x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(5);
    for (uint64_t i = 0; i < iters; i++) {
        __asm__ volatile("" : "+v"(x), "+v"(y));
        c0 = _mm512_dpbusd_epi32(c0, x, y);
        c1 = _mm512_dpbusd_epi32(c1, x, y);
        c2 = _mm512_dpbusd_epi32(c2, x, y);
        c3 = _mm512_dpbusd_epi32(c3, x, y);
        c4 = _mm512_dpbusd_epi32(c4, x, y);
        c5 = _mm512_dpbusd_epi32(c5, x, y);
        c6 = _mm512_dpbusd_epi32(c6, x, y);
        c7 = _mm512_dpbusd_epi32(c7, x, y);
        c8 = _mm512_dpbusd_epi32(c8, x, y);
        c9 = _mm512_dpbusd_epi32(c9, x, y);
        c10 = _mm512_dpbusd_epi32(c10, x, y);
        c11 = _mm512_dpbusd_epi32(c11, x, y);
    }
    const __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                                       _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)),
                                                        _mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11))));
    /* the sums wrap around: add them as unsigned */
    uint32_t lanes[16];
    _mm512_storeu_si512(lanes, s);
    uint32_t total = 0;
    for (int i = 0; i < 16; i++) total += lanes[i];
    probe_sink = total;
    return iters * 12 * 64;
}

T512 uint64_t nm_probe_fma_avx512(uint64_t iters) {
    __m512 c0 = _mm512_set1_ps(0), c1 = _mm512_set1_ps(1), c2 = _mm512_set1_ps(2), c3 = _mm512_set1_ps(3),
           c4 = _mm512_set1_ps(4), c5 = _mm512_set1_ps(5), c6 = _mm512_set1_ps(6), c7 = _mm512_set1_ps(7),
           c8 = _mm512_set1_ps(8), c9 = _mm512_set1_ps(9), c10 = _mm512_set1_ps(10), c11 = _mm512_set1_ps(11);
    __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(0.001f);
    for (uint64_t i = 0; i < iters; i++) {
        __asm__ volatile("" : "+v"(x), "+v"(y));
        c0 = _mm512_fmadd_ps(c0, x, y);
        c1 = _mm512_fmadd_ps(c1, x, y);
        c2 = _mm512_fmadd_ps(c2, x, y);
        c3 = _mm512_fmadd_ps(c3, x, y);
        c4 = _mm512_fmadd_ps(c4, x, y);
        c5 = _mm512_fmadd_ps(c5, x, y);
        c6 = _mm512_fmadd_ps(c6, x, y);
        c7 = _mm512_fmadd_ps(c7, x, y);
        c8 = _mm512_fmadd_ps(c8, x, y);
        c9 = _mm512_fmadd_ps(c9, x, y);
        c10 = _mm512_fmadd_ps(c10, x, y);
        c11 = _mm512_fmadd_ps(c11, x, y);
    }
    const __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
                                   _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c4, c5), _mm512_add_ps(c6, c7)),
                                                 _mm512_add_ps(_mm512_add_ps(c8, c9), _mm512_add_ps(c10, c11))));
    probe_sink = (uint64_t)_mm512_reduce_add_ps(s);
    return iters * 12 * 16;
}

T512 uint64_t nm_probe_read_avx512(const uint8_t *p, size_t n) {
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 256) {
        s0 = _mm512_add_epi64(s0, _mm512_load_si512(p + i));
        s1 = _mm512_add_epi64(s1, _mm512_load_si512(p + i + 64));
        s2 = _mm512_add_epi64(s2, _mm512_load_si512(p + i + 128));
        s3 = _mm512_add_epi64(s3, _mm512_load_si512(p + i + 192));
    }
    uint64_t lanes[8], total = 0;
    _mm512_storeu_si512(lanes, _mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3)));
    for (int i = 0; i < 8; i++) total += lanes[i]; /* wraps around: unsigned */
    return total;
}

/* ====================================================================== */
/* the table                                                              */
/* ====================================================================== */

static const nm_mm_kernel AVX512_MM[NM_TYPE_COUNT] = {
    [NM_TYPE_F32] = {NM_TYPE_F32, false, 32, NM_ISA_AVX512, rows_f32, NULL, NULL, NULL, NULL},
    [NM_TYPE_F16] = {NM_TYPE_F16, true, 32, NM_ISA_AVX512, rows_f16, convert_f16, f16_to_float, NULL, NULL},
    [NM_TYPE_BF16] = {NM_TYPE_BF16, true, 32, NM_ISA_AVX512, rows_bf16, convert_bf16, bf16_to_float, NULL, NULL},
    [NM_TYPE_Q4_0] = {NM_TYPE_Q8_0, true, 16, NM_ISA_AVX512, rows_q4_0, convert_q8_0, NULL, pack_q4_0, rows_q4_0p, 48},
    [NM_TYPE_Q8_0] = {NM_TYPE_Q8_0, true, 16, NM_ISA_AVX512, rows_q8_0, convert_q8_0, NULL, pack_q8_0, rows_q8_0p, 48},
    [NM_TYPE_Q4_K] = {NM_TYPE_Q8_K, true, 16, NM_ISA_AVX512, rows_q4_k, convert_q8_k, NULL, nm_pack_q4_k, rows_q4_kp},
    [NM_TYPE_Q5_K] = {NM_TYPE_Q8_K, true, 16, NM_ISA_AVX512, rows_q5_k, convert_q8_k, NULL, nm_pack_q5_k, rows_q5_kp},
    [NM_TYPE_Q6_K] = {NM_TYPE_Q8_K, true, 16, NM_ISA_AVX512, rows_q6_k, convert_q8_k, NULL, nm_pack_q6_k, rows_q6_kp},
};

const nm_mm_kernel *nm_mm_kernel_avx512(nm_type t) {
    return (unsigned)t < NM_TYPE_COUNT && AVX512_MM[t].rows ? &AVX512_MM[t] : NULL;
}

nm_nn_fn nm_nn_kernel_avx512(void) { return nn_avx512; }

#else /* not x86-64 */

const nm_mm_kernel *nm_mm_kernel_avx512(nm_type t) {
    (void)t;
    return NULL;
}
nm_nn_fn nm_nn_kernel_avx512(void) { return NULL; }
const nm_attn_kernel *nm_attn_kernel_avx512(void) { return NULL; }
uint64_t nm_probe_fma_avx512(uint64_t iters) { return (void)iters, 0; }
uint64_t nm_probe_int8_avx512(uint64_t iters) { return (void)iters, 0; }
uint64_t nm_probe_read_avx512(const uint8_t *p, size_t n) { return (void)p, (void)n, 0; }

#endif
