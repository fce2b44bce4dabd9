/* kernels_avx2.c - matrix kernels for AVX2 + FMA + F16C.
 *
 * The shapes and the arithmetic are those of kernels_avx512.c (read its
 * header first) with 8 lanes instead of 16: batches repack tiles of 8 rows
 * (16 for float weights) so that lanes are rows, single tokens reduce 8 rows'
 * block sums horizontally into the same lanes.
 *
 * Without VNNI the 8-bit products use VPMADDUBSW (unsigned x signed bytes,
 * pairs added into saturating 16-bit sums) then VPMADDWD (pairs of 16-bit
 * into 32-bit).  No sum may saturate, so every kernel keeps its 16-bit
 * partial sums below 32767:
 *  - Q4_0 / K-quants: weights are unsigned (0..15, 0..31, 0..63) against
 *    activations of at most 128 in magnitude: a pair is at most 2*63*128 =
 *    16128, and at most two pairs are added before widening;
 *  - Q8_0: signed weights, so the sign moves to the activation (VPSIGNB) and
 *    |w| <= 128 (a hostile -128 included) times |x| <= 127 gives pairs of at
 *    most 32512, widened at once.
 * Block sums are therefore exact, and the float arithmetic follows the
 * scalar reference: every level's quantized results are the reference's. */
#include "kernels_impl.h"
#include "ops.h"

#include <math.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define T2 __attribute__((target("avx2,fma,f16c")))
#define T2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

/* A mask of the first n of 8 lanes, for maskload/maskstore. */
T2_INLINE __m256i lanes8(int64_t n) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n > 8 ? 8 : n < 0 ? 0 : n)), idx);
}

T2_INLINE __m256 load8_ps(const float *p, __m256i m, int64_t n) {
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m);
}
T2_INLINE void store8_ps(float *p, __m256i m, int64_t n, __m256 v) {
    if (n >= 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, m, v);
}

/* Eight vectors of 8 partial sums to one vector of the 8 totals, in order. */
T2_INLINE __m256i hsum8x8(const __m256i *v) {
    const __m256i h01 = _mm256_hadd_epi32(v[0], v[1]), h23 = _mm256_hadd_epi32(v[2], v[3]);
    const __m256i h45 = _mm256_hadd_epi32(v[4], v[5]), h67 = _mm256_hadd_epi32(v[6], v[7]);
    const __m256i a = _mm256_hadd_epi32(h01, h23), b = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

T2_INLINE int32_t hsum4(__m128i s) {
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

T2_INLINE int32_t hsum8(__m256i v) { return hsum4(_mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1))); }

/* 8 half-precision scales at the same offset of 8 rows, by 8 scalar loads:
 * VPGATHERDD is microcoded on AMD (Zen 4, one token x 256 x 2048 from L2:
 * Q4_0 11.1 -> 12.3 GB/s, Q8_0 20.9 -> 24.7 without it). */
T2_INLINE __m256 load_halves8(const int32_t *offs, const uint8_t *base) {
    const __m128i h = _mm_setr_epi16((short)nm_ld16(base + offs[0]), (short)nm_ld16(base + offs[1]),
                                     (short)nm_ld16(base + offs[2]), (short)nm_ld16(base + offs[3]),
                                     (short)nm_ld16(base + offs[4]), (short)nm_ld16(base + offs[5]),
                                     (short)nm_ld16(base + offs[6]), (short)nm_ld16(base + offs[7]));
    return _mm256_cvtph_ps(h);
}

T2_INLINE __m256i bcast32(const uint8_t *p) { return _mm256_set1_epi32((int32_t)nm_ld32(p)); }

/* ====================================================================== */
/* Q8_0 and Q4_0 weights x Q8_0 activations                               */
/* ====================================================================== */

typedef struct q0_tok {
    const uint8_t *q;
    const float *d;
    const int32_t *s;
} q0_tok;

T2_INLINE q0_tok q0_token(const nm_mm_args *a, int64_t t, int64_t b0) {
    const int64_t nb = a->cols / 32;
    const float *d = (const float *)(const void *)(a->extra + (size_t)t * a->extra_stride);
    q0_tok k = {a->act + (size_t)t * a->act_stride + (size_t)b0 * 34 + 2, d + b0,
                (const int32_t *)(const void *)(d + nb) + b0};
    return k;
}

/* Repacked tile chunk, 8 rows: for block k and group g, 32 bytes = 4 quants
 * of each row.  Q8_0 keeps the signed quants (the kernel takes their
 * magnitude and moves the sign to the activation); Q4_0 the nibbles. */
typedef struct q0_panel8 {
    _Alignas(32) uint8_t w[KC_BLOCKS * 8 * 32];
    _Alignas(32) float d[KC_BLOCKS * 8];
} q0_panel8;

static void panel8_put(q0_panel8 *p, int k, int i, const uint8_t *q32) {
    for (int g = 0; g < 8; g++) memcpy(p->w + (k * 8 + g) * 32 + i * 4, q32 + 4 * g, 4);
}

T2 static void repack8_q0(const nm_mm_args *a, int64_t r, int nr, int64_t b0, int kb, q0_panel8 *p, bool q8) {
    if (nr < 8) memset(p, 0, sizeof *p);
    const size_t bb = q8 ? 34 : 18;
    for (int i = 0; i < nr; i++) {
        const uint8_t *blk = a->w + (size_t)(r + i) * a->row_bytes + (size_t)b0 * bb;
        for (int k = 0; k < kb; k++, blk += bb) {
            p->d[8 * k + i] = _cvtsh_ss(nm_ld16(blk));
            uint8_t q[32];
            if (q8) {
                memcpy(q, blk + 2, 32);
            } else {
                for (int j = 0; j < 16; j++) {
                    q[j] = blk[2 + j] & 15;
                    q[j + 16] = blk[2 + j] >> 4;
                }
            }
            panel8_put(p, k, i, q);
        }
    }
}

T2_INLINE void q0_chunk8(int NT, const q0_panel8 *p, int kb, const q0_tok *tk, int corr, bool q8, __m256 *acc) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int k = 0; k < kb; k++) {
        const __m256i *w = (const __m256i *)(const void *)(p->w + k * 256);
        __m256i s[4];
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) s[t] = _mm256_set1_epi32(corr * tk[t].s[k]);
        if (q8) {
            for (int g = 0; g < 8; g++) {
                const __m256i wg = _mm256_load_si256(w + g), aw = _mm256_abs_epi8(wg);
#pragma GCC unroll 4
                for (int t = 0; t < NT; t++) {
                    const __m256i sx = _mm256_sign_epi8(bcast32(tk[t].q + 34 * k + 4 * g), wg);
                    s[t] = _mm256_add_epi32(s[t], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones));
                }
            }
        } else {
            /* nibble pairs are at most 2*15*128: eight of them fit 16 bits */
            __m256i h[4];
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) h[t] = _mm256_setzero_si256();
            for (int g = 0; g < 8; g++) {
                const __m256i wg = _mm256_load_si256(w + g);
#pragma GCC unroll 4
                for (int t = 0; t < NT; t++)
                    h[t] = _mm256_add_epi16(h[t], _mm256_maddubs_epi16(wg, bcast32(tk[t].q + 34 * k + 4 * g)));
            }
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) s[t] = _mm256_add_epi32(s[t], _mm256_madd_epi16(h[t], ones));
        }
        const __m256 dw = _mm256_load_ps(p->d + 8 * k);
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(tk[t].d[k]));
            acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_cvtepi32_ps(s[t]), scale));
        }
    }
}

T2_INLINE void q0_tokens8(int NT, const nm_mm_args *a, const q0_panel8 *p, int64_t r, int nr, int64_t t, int64_t b0,
                          int kb, bool q8) {
    const __m256i m = lanes8(nr);
    __m256 acc[4];
    q0_tok tk[4];
#pragma GCC unroll 4
    for (int i = 0; i < NT; i++) {
        tk[i] = q0_token(a, t + i, b0);
        acc[i] = b0 ? load8_ps(a->y + (t + i) * a->ldy + (r - a->y_r0), m, nr) : _mm256_setzero_ps();
    }
    q0_chunk8(NT, p, kb, tk, q8 ? 0 : -8, q8, acc);
#pragma GCC unroll 4
    for (int i = 0; i < NT; i++) store8_ps(a->y + (t + i) * a->ldy + (r - a->y_r0), m, nr, acc[i]);
}

/* A panel chunk from half r & 8 of a packed tile (kernels_impl.h,
 * nm_pack_q0: Q8_0 signed, as here): the vectors' 256-bit halves are
 * already "4 quants of 8 rows". */
T2 static void repack8_q0p(const nm_mm_args *a, int64_t r, int64_t b0, int kb, q0_panel8 *p, bool q8) {
    const int64_t nb = a->cols / 32;
    const uint8_t *tile = a->w + (size_t)(r & ~(int64_t)15) * a->row_bytes;
    const size_t half = (size_t)(r & 8) * 4;
    const __m256i m4 = _mm256_set1_epi8(15);
    for (int k = 0; k < kb; k++) {
        const nm_q0p_at at = nm_q0p_block(b0 + k, nb, q8 ? 512 : 256);
        _mm256_store_ps(p->d + 8 * k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(tile + at.sc + half / 2))));
        __m256i *dst = (__m256i *)(void *)(p->w + k * 256);
        for (int g = 0; g < 4; g++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(tile + at.q + 64 * g + half));
            if (q8) {
                _mm256_store_si256(dst + g, v);
                _mm256_store_si256(dst + 4 + g,
                                   _mm256_loadu_si256((const __m256i *)(const void *)(tile + at.q + 256 + 64 * g + half)));
            } else {
                _mm256_store_si256(dst + g, _mm256_and_si256(v, m4));
                _mm256_store_si256(dst + 4 + g, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
            }
        }
    }
}

/* packed: rows [r0, r1) are whole packed tiles */
T2 static void q0_gemm8(const nm_mm_args *a, int64_t r0, int64_t r1, bool q8, bool packed) {
    const int64_t nb = a->cols / 32;
    q0_panel8 p;
    for (int64_t r = r0; r < r1; r += 8) {
        const int nr = (int)imin64(8, r1 - r);
        for (int64_t b0 = 0; b0 < nb; b0 += KC_BLOCKS) {
            const int kb = (int)imin64(KC_BLOCKS, nb - b0);
            if (packed) repack8_q0p(a, r, b0, kb, &p, q8);
            else repack8_q0(a, r, nr, b0, kb, &p, q8);
            int64_t t = 0;
            for (; t + 4 <= a->n_tok; t += 4) q0_tokens8(4, a, &p, r, nr, t, b0, kb, q8);
            for (; t < a->n_tok; t++) q0_tokens8(1, a, &p, r, nr, t, b0, kb, q8);
        }
    }
}

/* Q4_0, one token x 8 rows, two blocks a step (*b advanced past the pairs
 * done): a row's two blocks' quants share one vector (block b in the low
 * 128 bits, b + 1 in the high), so one shift, two ANDs, two VPMADDUBSW and
 * one VPMADDWD serve both, and one reduction tree gives both blocks' 8 row
 * sums.  The integer sums are exact and the float steps are the
 * reference's, block after block, as in the one-block loop.  (Sixteen
 * bit lanes hold at most 2 x 2 x 15 x 128.) */
T2_INLINE __m256 q4_gemv8_pairs(const uint8_t *const *rp, const int32_t *offs, const uint8_t *base, const q0_tok *tk,
                                int64_t nb, const span *nx, int64_t *bp) {
    const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(15);
    __m256 acc = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        const size_t o = (size_t)b * 18;
        const uint8_t *x0 = tk->q + (size_t)b * 34, *x1 = x0 + 34;
        prefetch_part(nx, b, nb);
        prefetch_part(nx, b + 1, nb);
        const __m256i xl = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)x0)),
                                                   _mm_loadu_si128((const __m128i *)(const void *)x1), 1);
        const __m256i xh = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)(x0 + 16))),
            _mm_loadu_si128((const __m128i *)(const void *)(x1 + 16)), 1);
        __m256i v[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            const __m256i q = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)(rp[i] + o + 2))),
                _mm_loadu_si128((const __m128i *)(const void *)(rp[i] + o + 20)), 1);
            const __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            v[i] = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_maddubs_epi16(hi, xh)), ones);
        }
        /* rows 0..3 then 4..7 of block b in the low halves, of b + 1 in the high */
        const __m256i h01 = _mm256_hadd_epi32(v[0], v[1]), h23 = _mm256_hadd_epi32(v[2], v[3]);
        const __m256i h45 = _mm256_hadd_epi32(v[4], v[5]), h67 = _mm256_hadd_epi32(v[6], v[7]);
        const __m256i s03 = _mm256_hadd_epi32(h01, h23), s47 = _mm256_hadd_epi32(h45, h67);
        const __m256i sums[2] = {_mm256_permute2x128_si256(s03, s47, 0x20), _mm256_permute2x128_si256(s03, s47, 0x31)};
        for (int k = 0; k < 2; k++) {
            const __m256i s = _mm256_add_epi32(sums[k], _mm256_set1_epi32(-8 * tk->s[b + k]));
            const __m256 scale = _mm256_mul_ps(load_halves8(offs, base + o + 18 * (size_t)k), _mm256_set1_ps(tk->d[b + k]));
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(s), scale));
        }
    }
    *bp = b;
    return acc;
}

/* One token x 8 rows as stored, the next tile (nx) requested meanwhile. */
T2 static void q0_gemv8(const nm_mm_args *a, int64_t r, int nr, int64_t t, bool q8, const span *nx) {
    const int64_t nb = a->cols / 32;
    const size_t bb = q8 ? 34 : 18;
    const q0_tok tk = q0_token(a, t, 0);
    const uint8_t *rp[8];
    int32_t offs[8];
    for (int i = 0; i < 8; i++) {
        rp[i] = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes;
        offs[i] = (int32_t)((i < nr ? i : nr - 1) * a->row_bytes);
    }
    const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(15);
    const uint8_t *base = a->w + (size_t)r * a->row_bytes;
    __m256 acc = _mm256_setzero_ps();
    int64_t b = 0;
    if (!q8) acc = q4_gemv8_pairs(rp, offs, base, &tk, nb, nx, &b);
    for (; b < nb; b++) {
        const size_t o = (size_t)b * bb;
        prefetch_part(nx, b, nb);
        const __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(tk.q + (size_t)b * 34));
        __m256i v[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            if (q8) {
                const __m256i w = _mm256_loadu_si256((const __m256i *)(const void *)(rp[i] + o + 2));
                v[i] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w)), ones);
            } else {
                const __m128i q = _mm_loadu_si128((const __m128i *)(const void *)(rp[i] + o + 2));
                const __m256i w = _mm256_and_si256(
                    _mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1), m4);
                v[i] = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
            }
        }
        const __m256i s = _mm256_add_epi32(hsum8x8(v), _mm256_set1_epi32((q8 ? 0 : -8) * tk.s[b]));
        const __m256 scale = _mm256_mul_ps(load_halves8(offs, base + o), _mm256_set1_ps(tk.d[b]));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(s), scale));
    }
    store8_ps(a->y + t * a->ldy + (r - a->y_r0), lanes8(nr), nr, acc);
}

T2 static void rows_q0(const nm_mm_args *a, int64_t r0, int64_t r1, bool q8) {
    if (a->n_tok >= GEMM_MIN_TOK) {
        q0_gemm8(a, r0, r1, q8, false);
        return;
    }
    for (int64_t r = r0; r < r1; r += 8) {
        const span nx = next_tile(a, r, 8, r1);
        for (int64_t t = 0; t < a->n_tok; t++) q0_gemv8(a, r, (int)imin64(8, r1 - r), t, q8, t ? NULL : &nx);
    }
}

T2 static void rows_q8_0(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_q0(a, r0, r1, true); }
T2 static void rows_q4_0(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_q0(a, r0, r1, false); }

/* ---- packed Q8_0 / Q4_0 (nm_mm_kernel.pack_tile) ----
 * The layout of kernels_impl.h (nm_pack_q0), Q8_0 signed.  A 16-row tile
 * is two 8-row halves, the low and high 256 bits of each vector: per block
 * and half, Q4_0 is 4 loads, 8 VPMADDUBSW into 16-bit sums (at most 8 x 2
 * x 15 x 127) and one VPMADDWD; Q8_0 8 x (VPSIGNB, VPABSB, VPMADDUBSW,
 * VPMADDWD); lanes are rows, so no horizontal sums, and the tile is one
 * stream.  The reference's float steps, block after block. */
static void pack8_q4_0(uint8_t *dst, const uint8_t *src, size_t row_bytes, int64_t cols) {
    nm_pack_q0(dst, src, row_bytes, cols, false, 0);
}
static void pack8_q8_0(uint8_t *dst, const uint8_t *src, size_t row_bytes, int64_t cols) {
    nm_pack_q0(dst, src, row_bytes, cols, true, 0);
}

/* acc += block b of rows 0..7 (half 0) or 8..15 (half 32) of a packed tile. */
T2_INLINE __m256 q0p_add8(const uint8_t *sc, const uint8_t *q, size_t half, const q0_tok *tk, int64_t b, __m256 acc,
                          bool q8) {
    const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(15);
    const uint8_t *x = tk->q + (size_t)b * 34;
    __m256i s;
    if (q8) {
        __m256i s0 = _mm256_setzero_si256(), s1 = s0;
#pragma GCC unroll 8
        for (int g = 0; g < 8; g += 2) {
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(const void *)(q + 64 * g + half));
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(const void *)(q + 64 * g + 64 + half));
            s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(bcast32(x + 4 * g), w0)), ones));
            s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w1), _mm256_sign_epi8(bcast32(x + 4 * g + 4), w1)), ones));
        }
        s = _mm256_add_epi32(s0, s1);
    } else {
        __m256i h0 = _mm256_setzero_si256(), h1 = h0;
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(q + 64 * g + half));
            h0 = _mm256_add_epi16(h0, _mm256_maddubs_epi16(_mm256_and_si256(v, m4), bcast32(x + 4 * g)));
            h1 = _mm256_add_epi16(h1, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), bcast32(x + 16 + 4 * g)));
        }
        s = _mm256_add_epi32(_mm256_madd_epi16(_mm256_add_epi16(h0, h1), ones), _mm256_set1_epi32(-8 * tk->s[b]));
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(sc + half / 2)));
    return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(tk->d[b]))));
}

T2_INLINE void gemv_q0p8(const nm_mm_args *a, const uint8_t *tile, int64_t t, float *out, bool q8) {
    const int64_t nb = a->cols / 32;
    const size_t qb = q8 ? 512 : 256;
    const q0_tok tk = q0_token(a, t, 0);
    __m256 lo = _mm256_setzero_ps(), hi = lo;
    for (int64_t b = 0; b < nb; b++) {
        const nm_q0p_at at = nm_q0p_block(b, nb, qb);
        lo = q0p_add8(tile + at.sc, tile + at.q, 0, &tk, b, lo, q8);
        hi = q0p_add8(tile + at.sc, tile + at.q, 32, &tk, b, hi, q8);
    }
    _mm256_storeu_ps(out, lo);
    _mm256_storeu_ps(out + 8, hi);
}

T2 static void gemv_q4_0p(const nm_mm_args *a, const uint8_t *tile, int64_t t, float *out) {
    gemv_q0p8(a, tile, t, out, false);
}
T2 static void gemv_q8_0p(const nm_mm_args *a, const uint8_t *tile, int64_t t, float *out) {
    gemv_q0p8(a, tile, t, out, true);
}
T2 static void tiles_q4_0p(const nm_mm_args *a, int64_t r0, int64_t r1) { q0_gemm8(a, r0, r1, false, true); }
T2 static void tiles_q8_0p(const nm_mm_args *a, int64_t r0, int64_t r1) { q0_gemm8(a, r0, r1, true, true); }
T2 static void rows_q4_0p(const nm_mm_args *a, int64_t r0, int64_t r1) {
    nm_rows_packed(a, r0, r1, gemv_q4_0p, tiles_q4_0p, rows_q4_0);
}
T2 static void rows_q8_0p(const nm_mm_args *a, int64_t r0, int64_t r1) {
    nm_rows_packed(a, r0, r1, gemv_q8_0p, tiles_q8_0p, rows_q8_0);
}

/* ====================================================================== */
/* K-quants x Q8_K activations                                            */
/* ====================================================================== */
/* As kernels_avx512.c, with the scale multiplied in by VPMADDWD: the 16-bit
 * pair sums of a sub-block times its scale repeated in both halves of each
 * 32-bit lane give the scaled 32-bit sums directly. */

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

typedef struct k_panel8 {
    _Alignas(32) uint8_t w[KC_SUPER * 8 * 8 * 32]; /* [s][32-element sub-block][group][row][4] */
    _Alignas(32) int32_t sc[KC_SUPER * 16 * 8];    /* [s][scale][row]: scale in both 16-bit halves */
    _Alignas(32) int32_t mn[KC_SUPER * 4 * 8];     /* [s][pair][row]: (m[2p], m[2p+1])            */
    _Alignas(32) float d[KC_SUPER * 8], dmin[KC_SUPER * 8];
} k_panel8;

static void kpanel8_put(k_panel8 *p, int k, int i, const uint8_t *q32) {
    for (int g = 0; g < 8; g++) memcpy(p->w + (k * 8 + g) * 32 + i * 4, q32 + 4 * g, 4);
}

static inline int32_t dup16(int v) { return (int32_t)((uint32_t)(uint16_t)v | (uint32_t)(uint16_t)v << 16); }

/* The 256 unsigned quants of a Q4_K / Q5_K / Q6_K super-block in element
 * order (Q6_K without its -32). */
static void k_unpack(nm_type type, const uint8_t *blk, uint8_t *q) {
    if (type == NM_TYPE_Q6_K) {
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = blk + 64 * h, *qh = blk + offsetof(nm_block_q6_k, qh) + 32 * h;
            for (int l = 0; l < 32; l++) {
                q[128 * h + l] = (uint8_t)((ql[l] & 15) | (qh[l] & 3) << 4);
                q[128 * h + l + 32] = (uint8_t)((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4);
                q[128 * h + l + 64] = (uint8_t)((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4);
                q[128 * h + l + 96] = (uint8_t)((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4);
            }
        }
        return;
    }
    const bool q5 = type == NM_TYPE_Q5_K;
    const uint8_t *qs = blk + (q5 ? offsetof(nm_block_q5_k, qs) : offsetof(nm_block_q4_k, qs));
    const uint8_t *qh = blk + offsetof(nm_block_q5_k, qh);
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++) {
            q[64 * g + l] = (uint8_t)((qs[32 * g + l] & 15) | (q5 ? ((qh[l] >> (2 * g)) & 1) << 4 : 0));
            q[64 * g + 32 + l] = (uint8_t)((qs[32 * g + l] >> 4) | (q5 ? ((qh[l] >> (2 * g + 1)) & 1) << 4 : 0));
        }
}

static void repack8_k(const nm_mm_args *a, nm_type type, int64_t r, int nr, int64_t s0, int ks, k_panel8 *p) {
    if (nr < 8) memset(p, 0, sizeof *p);
    const size_t bb = type == NM_TYPE_Q6_K ? sizeof(nm_block_q6_k) : type == NM_TYPE_Q5_K ? sizeof(nm_block_q5_k) : sizeof(nm_block_q4_k);
    for (int i = 0; i < nr; i++) {
        const uint8_t *blk = a->w + (size_t)(r + i) * a->row_bytes + (size_t)s0 * bb;
        for (int s = 0; s < ks; s++, blk += bb) {
            uint8_t q[256];
            k_unpack(type, blk, q);
            for (int j = 0; j < 8; j++) kpanel8_put(p, 8 * s + j, i, q + 32 * j);
            if (type == NM_TYPE_Q6_K) {
                const int8_t *sc = (const int8_t *)(blk + offsetof(nm_block_q6_k, scales));
                p->d[8 * s + i] = nm_f16_to_f32(nm_ld16(blk + offsetof(nm_block_q6_k, d)));
                for (int j = 0; j < 16; j++) p->sc[(16 * s + j) * 8 + i] = dup16(sc[j]);
            } else {
                uint8_t sc[8], m[8];
                k4_scales(blk + 4, sc, m);
                p->d[8 * s + i] = nm_f16_to_f32(nm_ld16(blk));
                p->dmin[8 * s + i] = nm_f16_to_f32(nm_ld16(blk + 2));
                for (int j = 0; j < 8; j++) p->sc[(16 * s + j) * 8 + i] = dup16(sc[j]);
                for (int j = 0; j < 4; j++) p->mn[(4 * s + j) * 8 + i] = m[2 * j] | m[2 * j + 1] << 16;
            }
        }
    }
}

typedef struct k_tok {
    const uint8_t *blk;
    const int16_t *bsum32;
} k_tok;

T2_INLINE k_tok k_token(const nm_mm_args *a, int64_t t, int64_t s0) {
    k_tok k = {a->act + (size_t)t * a->act_stride + (size_t)s0 * sizeof(nm_block_q8_k),
               (const int16_t *)(const void *)(a->extra + (size_t)t * a->extra_stride) + 8 * s0};
    return k;
}

T2_INLINE float q8k_d(const uint8_t *blk) {
    float d;
    memcpy(&d, blk, 4);
    return d;
}

/* Two groups of 4 elements (8 rows x 8 quants), at most 2*63*128*2 = 32256. */
T2_INLINE __m256i pair16(const __m256i *w, int g, const uint8_t *xq) {
    return _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_load_si256(w + g), bcast32(xq + 4 * g)),
                            _mm256_maddubs_epi16(_mm256_load_si256(w + g + 1), bcast32(xq + 4 * g + 4)));
}

T2_INLINE void k_chunk8(int NT, const k_panel8 *p, int ks, const k_tok *tk, bool q6, __m256 *acc) {
    for (int s = 0; s < ks; s++) {
        __m256i sumi[4], summ[4];
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) sumi[t] = summ[t] = _mm256_setzero_si256();
        for (int j = 0; j < 8; j++) {
            const __m256i *w = (const __m256i *)(const void *)(p->w + (8 * s + j) * 256);
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                const uint8_t *xq = tk[t].blk + (size_t)s * sizeof(nm_block_q8_k) + 4 + 32 * j;
                if (q6) {
                    /* 16-element sub-blocks 2j (groups 0-3) and 2j+1 (4-7) */
                    const __m256i sa = _mm256_load_si256((const __m256i *)(const void *)(p->sc + (16 * s + 2 * j) * 8));
                    const __m256i sb = _mm256_load_si256((const __m256i *)(const void *)(p->sc + (16 * s + 2 * j + 1) * 8));
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(pair16(w, 0, xq), sa));
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(pair16(w, 2, xq), sa));
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(pair16(w, 4, xq), sb));
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(pair16(w, 6, xq), sb));
                } else {
                    const __m256i sc = _mm256_load_si256((const __m256i *)(const void *)(p->sc + (16 * s + j) * 8));
                    /* unrolled: 74 -> 77-80 G multiply-adds/s a core (Q4_K, 512 tokens) */
#pragma GCC unroll 4
                    for (int g = 0; g < 8; g += 2)
                        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(pair16(w, g, xq), sc));
                }
            }
        }
        if (q6) {
            /* the -32 of every quant: scale x 32 x sum of the 16 activations */
            for (int j = 0; j < 8; j++) {
                const __m256i sab = _mm256_blend_epi16(
                    _mm256_load_si256((const __m256i *)(const void *)(p->sc + (16 * s + 2 * j) * 8)),
                    _mm256_load_si256((const __m256i *)(const void *)(p->sc + (16 * s + 2 * j + 1) * 8)), 0xaa);
#pragma GCC unroll 4
                for (int t = 0; t < NT; t++) {
                    const uint8_t *bs = tk[t].blk + (size_t)s * sizeof(nm_block_q8_k) + offsetof(nm_block_q8_k, bsums);
                    summ[t] = _mm256_add_epi32(summ[t], _mm256_madd_epi16(sab, bcast32(bs + 4 * j)));
                }
            }
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) sumi[t] = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(summ[t], 5));
        } else {
            for (int j = 0; j < 4; j++) {
                const __m256i mn = _mm256_load_si256((const __m256i *)(const void *)(p->mn + (4 * s + j) * 8));
#pragma GCC unroll 4
                for (int t = 0; t < NT; t++)
                    summ[t] = _mm256_add_epi32(summ[t], _mm256_madd_epi16(mn, bcast32((const uint8_t *)(tk[t].bsum32 + 8 * s + 2 * j))));
            }
        }
        const __m256 d = _mm256_load_ps(p->d + 8 * s);
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            const __m256 dx = _mm256_set1_ps(q8k_d(tk[t].blk + (size_t)s * sizeof(nm_block_q8_k)));
            const __m256 x = _mm256_mul_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(sumi[t]));
            if (q6) {
                acc[t] = _mm256_add_ps(acc[t], x);
            } else {
                const __m256 dmin = _mm256_load_ps(p->dmin + 8 * s);
                const __m256 y = _mm256_mul_ps(_mm256_mul_ps(dmin, dx), _mm256_cvtepi32_ps(summ[t]));
                acc[t] = _mm256_add_ps(acc[t], _mm256_sub_ps(x, y));
            }
        }
    }
}

T2_INLINE void k_tokens8(int NT, const nm_mm_args *a, const k_panel8 *p, int64_t r, int nr, int64_t t, int64_t s0,
                         int ks, bool q6) {
    const __m256i m = lanes8(nr);
    __m256 acc[4];
    k_tok tk[4];
#pragma GCC unroll 4
    for (int i = 0; i < NT; i++) {
        tk[i] = k_token(a, t + i, s0);
        acc[i] = s0 ? load8_ps(a->y + (t + i) * a->ldy + (r - a->y_r0), m, nr) : _mm256_setzero_ps();
    }
    k_chunk8(NT, p, ks, tk, q6, acc);
#pragma GCC unroll 4
    for (int i = 0; i < NT; i++) store8_ps(a->y + (t + i) * a->ldy + (r - a->y_r0), m, nr, acc[i]);
}

T2 static void repack8_kp(const nm_mm_args *a, nm_type type, int64_t r, int64_t s0, int ks, k_panel8 *p);

/* Rows [r0, r1) for a batch; `packed`: whole packed tiles (rows r0.. a
 * multiple of 16), read 8 rows, a tile's half, at a time. */
T2 static void k_gemm8(const nm_mm_args *a, int64_t r0, int64_t r1, nm_type type, bool packed) {
    const int64_t nsb = a->cols / NM_QK_K;
    const bool q6 = type == NM_TYPE_Q6_K;
    k_panel8 p;
    for (int64_t r = r0; r < r1; r += 8) {
        const int nr = (int)imin64(8, r1 - r);
        for (int64_t s0 = 0; s0 < nsb; s0 += KC_SUPER) {
            const int ks = (int)imin64(KC_SUPER, nsb - s0);
            if (packed) repack8_kp(a, type, r, s0, ks, &p);
            else repack8_k(a, type, r, nr, s0, ks, &p);
            int64_t t = 0;
            for (; t + 4 <= a->n_tok; t += 4) k_tokens8(4, a, &p, r, nr, t, s0, ks, q6);
            for (; t < a->n_tok; t++) k_tokens8(1, a, &p, r, nr, t, s0, ks, q6);
        }
    }
}

/* Every 16-bit word = word j of v's low 128 bits (v holds the same words in
 * both lanes): one VPSHUFB instead of a scalar load and a broadcast. */
T2_INLINE __m256i word_of(__m256i v, int j) { return _mm256_shuffle_epi8(v, _mm256_set1_epi16((short)(0x0100 + 0x0202 * j))); }

/* One row x one token: the integer sums vectorised, the float arithmetic of
 * the reference per super-block. */
T2 static float dot_q45_k(const uint8_t *row, const k_tok *tk, int64_t nsb, bool q5) {
    const size_t bb = q5 ? sizeof(nm_block_q5_k) : sizeof(nm_block_q4_k);
    const size_t qs_off = q5 ? offsetof(nm_block_q5_k, qs) : offsetof(nm_block_q4_k, qs);
    const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
    float sum = 0.0f;
    for (int64_t s = 0; s < nsb; s++, row += bb) {
        const uint8_t *x = tk->blk + (size_t)s * sizeof(nm_block_q8_k);
        uint8_t sc[8], m[8];
        k4_scales(row + 4, sc, m);
        const __m256i qh = q5 ? _mm256_loadu_si256((const __m256i *)(const void *)(row + 16)) : _mm256_setzero_si256();
        /* the 8 sub-block scales as 16-bit words in both 128-bit lanes */
        const __m256i scw = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)sc)));
        __m256i acc = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(const void *)(row + qs_off + 32 * g));
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (q5) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g)), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g + 1)), one), 4));
            }
            const __m256i xl = _mm256_loadu_si256((const __m256i *)(const void *)(x + 4 + 64 * g));
            const __m256i xh = _mm256_loadu_si256((const __m256i *)(const void *)(x + 4 + 64 * g + 32));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xl), word_of(scw, 2 * g)));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xh), word_of(scw, 2 * g + 1)));
        }
        const int32_t sumi = hsum8(acc);
        const __m128i mm = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)m)),
                                          _mm_loadu_si128((const __m128i *)(const void *)(tk->bsum32 + 8 * s)));
        const int32_t summ = hsum4(mm);
        const float dx = q8k_d(x);
        sum += _cvtsh_ss(nm_ld16(row)) * dx * (float)sumi - _cvtsh_ss(nm_ld16(row + 2)) * dx * (float)summ;
    }
    return sum;
}

T2 static float dot_q6_k(const uint8_t *row, const k_tok *tk, int64_t nsb) {
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    float sum = 0.0f;
    for (int64_t s = 0; s < nsb; s++, row += sizeof(nm_block_q6_k)) {
        const uint8_t *x = tk->blk + (size_t)s * sizeof(nm_block_q8_k);
        const int8_t *sc = (const int8_t *)(row + offsetof(nm_block_q6_k, scales));
        /* the 16 scales as 16-bit words: sc16 = 0..15; half h's 8 in both lanes of sch[h] */
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)sc));
        const __m256i sch[2] = {_mm256_permute2x128_si256(sc16, sc16, 0x00), _mm256_permute2x128_si256(sc16, sc16, 0x11)};
        __m256i acc = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = row + 64 * h;
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(const void *)ql);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(const void *)(ql + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(const void *)(row + offsetof(nm_block_q6_k, qh) + 32 * h));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                /* 32 elements 128h + 32k: sub-blocks 8h + 2k (lanes 0-3) and 8h + 2k + 1 (lanes 4-7) */
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(const void *)(x + 4 + 128 * h + 32 * k));
                const __m256i pick = _mm256_setr_m128i(_mm_set1_epi16((short)(0x0100 + 0x0202 * (2 * k))),
                                                       _mm_set1_epi16((short)(0x0100 + 0x0202 * (2 * k + 1))));
                const __m256i scv = _mm256_shuffle_epi8(sch[h], pick);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], xv), scv));
            }
        }
        const __m256i bs = _mm256_loadu_si256((const __m256i *)(const void *)(x + offsetof(nm_block_q8_k, bsums)));
        const int32_t off = hsum8(_mm256_madd_epi16(sc16, bs));
        const int32_t sumi = hsum8(acc) - 32 * off;
        sum += _cvtsh_ss(nm_ld16(row + offsetof(nm_block_q6_k, d))) * q8k_d(x) * (float)sumi;
    }
    return sum;
}

T2 static void rows_k(const nm_mm_args *a, int64_t r0, int64_t r1, nm_type type) {
    if (a->n_tok >= GEMM_MIN_TOK) {
        k_gemm8(a, r0, r1, type, false);
        return;
    }
    const int64_t nsb = a->cols / NM_QK_K;
    for (int64_t t = 0; t < a->n_tok; t++) {
        const k_tok tk = k_token(a, t, 0);
        float *y = a->y + t * a->ldy - a->y_r0;
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *row = a->w + (size_t)r * a->row_bytes;
            y[r] = type == NM_TYPE_Q6_K ? dot_q6_k(row, &tk, nsb) : dot_q45_k(row, &tk, nsb, type == NM_TYPE_Q5_K);
        }
    }
}

T2 static void rows_q4_k(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_k(a, r0, r1, NM_TYPE_Q4_K); }
T2 static void rows_q5_k(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_k(a, r0, r1, NM_TYPE_Q5_K); }
T2 static void rows_q6_k(const nm_mm_args *a, int64_t r0, int64_t r1) { rows_k(a, r0, r1, NM_TYPE_Q6_K); }

/* ---- packed Q4_K / Q6_K (nm_pack_q4_k, nm_pack_q6_k in kernels_impl.h) ----
 * A 16-row tile is two 8-row halves, the low and high 256 bits of each
 * vector, as for Q4_0.  Lanes are rows: a Q4_K sub-block is 8 VPMADDUBSW
 * summed in 16 bits (at most 8 x 2 x 15 x 128 = 30720), then one VPMADDWD
 * by its scale repeated in both 16-bit halves of the row's lane; Q6_K two
 * VPMADDUBSW (2 x 2 x 63 x 128) a VPMADDWD.  No horizontal sums, one
 * stream a tile; the scales and mins are unpacked for 8 rows at once.  The
 * float steps are the reference's, super-block after super-block. */
T2_INLINE __m256i ld8x32(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)(const void *)p); }
T2_INLINE __m256 ld_d8(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p)); }

/* Each 32-bit lane's low 16 bits in both halves. */
T2_INLINE __m256i dup16_lanes(__m256i v) {
    return _mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi32(0xffff)), _mm256_slli_epi32(v, 16));
}

/* Rows 0..7 (half 0) or 8..15 (half 32) of a packed Q4_K super-block:
 * the 6-bit scales (s03, s47) and mins (m03, m47) of sub-blocks 0-3 and
 * 4-7 as bytes of each row's lane, ggml's get_scale_min_k4 in vector
 * lanes.  Four registers: a struct of the twelve unpacked vectors does not
 * fit AVX2's sixteen, and GCC copied it with REP MOVSQ (17% of the time). */
typedef struct k4p8 {
    __m256i s03, s47, m03, m47;
} k4p8;

T2_INLINE k4p8 k4p8_unpack(const uint8_t *sb, size_t half) {
    const __m256i u0 = ld8x32(sb + 64 + half), u1 = ld8x32(sb + 128 + half), u2 = ld8x32(sb + 192 + half);
    const __m256i k1 = _mm256_set1_epi32(0x3f3f3f3f), k2 = _mm256_set1_epi32(0x0f0f0f0f),
                  k3 = _mm256_set1_epi32(0x03030303);
    k4p8 k;
    k.s03 = _mm256_and_si256(u0, k1);
    k.m03 = _mm256_and_si256(u1, k1);
    k.s47 = _mm256_or_si256(_mm256_and_si256(u2, k2), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u0, 6), k3), 4));
    k.m47 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u2, 4), k2),
                            _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u1, 6), k3), 4));
    return k;
}

/* Sub-block j's scale in both 16-bit halves of each row's lane. */
T2_INLINE __m256i k4p8_sc(const k4p8 *k, int j) {
    return dup16_lanes(_mm256_and_si256(_mm256_srli_epi32(j < 4 ? k->s03 : k->s47, 8 * (j % 4)), _mm256_set1_epi32(0xff)));
}

/* Mins 2p and 2p+1 as the two words of each row's lane. */
T2_INLINE __m256i k4p8_mn(const k4p8 *k, int p) {
    const __m256i m = p < 2 ? k->m03 : k->m47, b = _mm256_set1_epi32(0xff), w1 = _mm256_set1_epi32(0x00ff0000);
    if (p % 2 == 0) return _mm256_or_si256(_mm256_and_si256(m, b), _mm256_and_si256(_mm256_slli_epi32(m, 8), w1));
    return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(m, 16), b), _mm256_and_si256(_mm256_srli_epi32(m, 8), w1));
}

/* acc[0] (rows 0..7), acc[1] (8..15) += super-block s of a packed Q4_K
 * tile (at sb): both halves in one pass, so each activation broadcast
 * serves 16 rows. */
T2_INLINE void q4kp_add16(const uint8_t *sb, const k_tok *tk, int64_t s, __m256 *acc) {
    const uint8_t *xb = tk->blk + (size_t)s * sizeof(nm_block_q8_k), *xq = xb + 4;
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256i sumi[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++) {
        const uint8_t *w = sb + 256 + 512 * g, *x = xq + 64 * g;
        __m256i lo[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()}, hi[2] = {lo[0], lo[0]};
#pragma GCC unroll 8
        for (int q = 0; q < 8; q++) {
            const __m256i xl = bcast32(x + 4 * q), xh = bcast32(x + 32 + 4 * q);
#pragma GCC unroll 2
            for (int i = 0; i < 2; i++) {
                const __m256i v = ld8x32(w + 64 * q + 32 * i);
                lo[i] = _mm256_add_epi16(lo[i], _mm256_maddubs_epi16(_mm256_and_si256(v, m4), xl));
                hi[i] = _mm256_add_epi16(hi[i], _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), xh));
            }
        }
#pragma GCC unroll 2
        for (int i = 0; i < 2; i++) {
            const k4p8 k = k4p8_unpack(sb, 32 * (size_t)i);
            sumi[i] = _mm256_add_epi32(sumi[i], _mm256_madd_epi16(lo[i], k4p8_sc(&k, 2 * g)));
            sumi[i] = _mm256_add_epi32(sumi[i], _mm256_madd_epi16(hi[i], k4p8_sc(&k, 2 * g + 1)));
        }
    }
    const __m256 dx = _mm256_set1_ps(q8k_d(xb));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) {
        const k4p8 k = k4p8_unpack(sb, 32 * (size_t)i);
        __m256i summ = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            summ = _mm256_add_epi32(summ, _mm256_madd_epi16(k4p8_mn(&k, j), bcast32((const uint8_t *)(tk->bsum32 + 8 * s + 2 * j))));
        const __m256 x = _mm256_mul_ps(_mm256_mul_ps(ld_d8(sb + 16 * i), dx), _mm256_cvtepi32_ps(sumi[i]));
        const __m256 y = _mm256_mul_ps(_mm256_mul_ps(ld_d8(sb + 32 + 16 * i), dx), _mm256_cvtepi32_ps(summ));
        acc[i] = _mm256_add_ps(acc[i], _mm256_sub_ps(x, y));
    }
}

/* The 4 kinds of quants (0..63) of half h, bytes 4q.. of one half of a
 * packed Q6_K super-block: e[k] = elements 128h + 32k + 4q.. of 8 rows. */
T2_INLINE void q6p8_quants(const uint8_t *sb, size_t half, int h, int q, __m256i *e) {
    const uint8_t *v = sb + 288 + 192 * (8 * h + q) + half;
    const __m256i l0 = ld8x32(v), l1 = ld8x32(v + 64), hb = ld8x32(v + 128);
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    e[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
    e[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
    e[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m30));
    e[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
}

/* The 8 rows' scale of sub-block j (16 elements), sign-extended, dup16. */
T2_INLINE __m256i q6p8_scale(const uint8_t *sb, size_t half, int j) {
    const __m256i v = ld8x32(sb + 32 + 64 * (j / 4) + half);
    return dup16_lanes(_mm256_srai_epi32(_mm256_slli_epi32(v, 24 - 8 * (j % 4)), 24));
}

/* acc[0] (rows 0..7), acc[1] (8..15) += super-block s of a packed Q6_K
 * tile (at sb), both halves in one pass as for Q4_K. */
T2_INLINE void q6kp_add16(const uint8_t *sb, const k_tok *tk, int64_t s, __m256 *acc) {
    const uint8_t *xb = tk->blk + (size_t)s * sizeof(nm_block_q8_k), *xq = xb + 4;
    const uint8_t *bs = xb + offsetof(nm_block_q8_k, bsums);
    __m256i sumi[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++)
#pragma GCC unroll 4
        for (int qp = 0; qp < 8; qp += 2) {
            /* bytes q = qp, qp + 1 of kind k: sub-block 8h + 2k + qp / 4 */
            __m256i pr[2][4];
#pragma GCC unroll 2
            for (int q = qp; q < qp + 2; q++) {
                __m256i xk[4];
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++) xk[k] = bcast32(xq + 128 * h + 32 * k + 4 * q);
#pragma GCC unroll 2
                for (int i = 0; i < 2; i++) {
                    __m256i e[4];
                    q6p8_quants(sb, 32 * (size_t)i, h, q, e);
#pragma GCC unroll 4
                    for (int k = 0; k < 4; k++) {
                        const __m256i m = _mm256_maddubs_epi16(e[k], xk[k]);
                        pr[i][k] = q == qp ? m : _mm256_add_epi16(pr[i][k], m);
                    }
                }
            }
#pragma GCC unroll 2
            for (int i = 0; i < 2; i++)
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++)
                    sumi[i] = _mm256_add_epi32(sumi[i], _mm256_madd_epi16(pr[i][k], q6p8_scale(sb, 32 * (size_t)i, 8 * h + 2 * k + qp / 4)));
        }
    const __m256 dx = _mm256_set1_ps(q8k_d(xb));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) {
        /* the -32 of every quant: scale x 32 x sum of the 16 activations */
        __m256i summ = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            summ = _mm256_add_epi32(summ, _mm256_madd_epi16(_mm256_blend_epi16(q6p8_scale(sb, 32 * (size_t)i, 2 * j),
                                                                               q6p8_scale(sb, 32 * (size_t)i, 2 * j + 1), 0xaa),
                                                            bcast32(bs + 4 * j)));
        const __m256i si = _mm256_sub_epi32(sumi[i], _mm256_slli_epi32(summ, 5));
        acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(_mm256_mul_ps(ld_d8(sb + 16 * i), dx), _mm256_cvtepi32_ps(si)));
    }
}

/* Bit b of each byte of h moved to bit 4 (a Q5_K quant's fifth bit). */
T2_INLINE __m256i q5_bit8(__m256i h, int b) {
    return _mm256_and_si256(b <= 4 ? _mm256_slli_epi16(h, 4 - b) : _mm256_srli_epi16(h, b - 4), _mm256_set1_epi8(0x10));
}

/* The low and high quants of group g in a packed Q4_K / Q5_K vector v
 * (nibbles; for Q5_K with their fifth bits from high-bit vector h). */
T2_INLINE void k45p8_split(__m256i v, __m256i h, int g, bool q5, __m256i *lo, __m256i *hi) {
    const __m256i m4 = _mm256_set1_epi8(15);
    *lo = _mm256_and_si256(v, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    if (q5) {
        *lo = _mm256_or_si256(*lo, q5_bit8(h, 2 * g));
        *hi = _mm256_or_si256(*hi, q5_bit8(h, 2 * g + 1));
    }
}

/* acc += super-block s of half `half` of a packed Q5_K tile (at sb).  One
 * half at a time, its 8 high-bit vectors loaded first and held (both
 * halves' would not fit in 16 registers), and nothing moved above them
 * (the compiler barrier: see gemv_q45_kp in kernels_avx512.c).  Quants
 * reach 31, so 4 VPMADDUBSW (4 x 2 x 31 x 128) a VPMADDWD. */
T2_INLINE __m256 q5kp_add8(const uint8_t *sb, size_t half, const k_tok *tk, int64_t s, __m256 acc) {
    const uint8_t *xb = tk->blk + (size_t)s * sizeof(nm_block_q8_k), *xq = xb + 4;
    __m256i qh[8];
#pragma GCC unroll 8
    for (int q = 0; q < 8; q++) qh[q] = ld8x32(sb + NM_Q5KP_QH + 64 * q + half);
    __asm__ volatile("" ::: "memory");
    __m256i sumi = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++) {
        const uint8_t *w = sb + NM_Q5KP_QS + 512 * g + half, *x = xq + 64 * g;
#pragma GCC unroll 2
        for (int q0 = 0; q0 < 8; q0 += 4) {
            __m256i lo = _mm256_setzero_si256(), hi = lo;
#pragma GCC unroll 4
            for (int q = q0; q < q0 + 4; q++) {
                __m256i vl, vh;
                k45p8_split(ld8x32(w + 64 * q), qh[q], g, true, &vl, &vh);
                lo = _mm256_add_epi16(lo, _mm256_maddubs_epi16(vl, bcast32(x + 4 * q)));
                hi = _mm256_add_epi16(hi, _mm256_maddubs_epi16(vh, bcast32(x + 32 + 4 * q)));
            }
            const k4p8 k = k4p8_unpack(sb, half);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(lo, k4p8_sc(&k, 2 * g)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(hi, k4p8_sc(&k, 2 * g + 1)));
        }
    }
    const k4p8 k = k4p8_unpack(sb, half);
    __m256i summ = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
        summ = _mm256_add_epi32(summ, _mm256_madd_epi16(k4p8_mn(&k, j), bcast32((const uint8_t *)(tk->bsum32 + 8 * s + 2 * j))));
    const __m256 dx = _mm256_set1_ps(q8k_d(xb));
    const __m256 x = _mm256_mul_ps(_mm256_mul_ps(ld_d8(sb + half / 2), dx), _mm256_cvtepi32_ps(sumi));
    const __m256 y = _mm256_mul_ps(_mm256_mul_ps(ld_d8(sb + 32 + half / 2), dx), _mm256_cvtepi32_ps(summ));
    return _mm256_add_ps(acc, _mm256_sub_ps(x, y));
}

T2_INLINE void gemv_kp8(const nm_mm_args *a, const uint8_t *tile, int64_t t, float *out, nm_type type) {
    const int64_t nsb = a->cols / NM_QK_K;
    const size_t sbb = nm_kp_super_bytes(type);
    const k_tok tk = k_token(a, t, 0);
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t s = 0; s < nsb; s++, tile += sbb) {
        if (type == NM_TYPE_Q6_K) {
            q6kp_add16(tile, &tk, s, acc);
        } else if (type == NM_TYPE_Q5_K) {
            acc[0] = q5kp_add8(tile, 0, &tk, s, acc[0]);
            acc[1] = q5kp_add8(tile, 32, &tk, s, acc[1]);
        } else {
            q4kp_add16(tile, &tk, s, acc);
        }
    }
    _mm256_storeu_ps(out, acc[0]);
    _mm256_storeu_ps(out + 8, acc[1]);
}

/* A batch panel chunk from half (r & 8) of the packed tile holding row r:
 * panel sub-block 8s + j, 4-element group g is elements 32j + 4g. */
T2 static void repack8_kp(const nm_mm_args *a, nm_type type, int64_t r, int64_t s0, int ks, k_panel8 *p) {
    const bool q6 = type == NM_TYPE_Q6_K, q5 = type == NM_TYPE_Q5_K;
    const size_t sbb = nm_kp_super_bytes(type), half = (r & 8) ? 32 : 0;
    const uint8_t *tile = a->w + (size_t)(r & ~(int64_t)15) * a->row_bytes;
    for (int s = 0; s < ks; s++) {
        const uint8_t *sb = tile + (size_t)(s0 + s) * sbb;
        _mm256_store_ps(p->d + 8 * s, ld_d8(sb + half / 2));
        if (q6) {
            for (int j = 0; j < 16; j++) _mm256_store_si256((__m256i *)(void *)(p->sc + (16 * s + j) * 8), q6p8_scale(sb, half, j));
            for (int h = 0; h < 2; h++)
                for (int q = 0; q < 8; q++) {
                    __m256i e[4];
                    q6p8_quants(sb, half, h, q, e);
                    for (int k = 0; k < 4; k++) _mm256_store_si256((__m256i *)(void *)(p->w + (8 * s + 4 * h + k) * 256 + 32 * q), e[k]);
                }
            continue;
        }
        const k4p8 k = k4p8_unpack(sb, half);
        _mm256_store_ps(p->dmin + 8 * s, ld_d8(sb + 32 + half / 2));
        for (int j = 0; j < 8; j++) _mm256_store_si256((__m256i *)(void *)(p->sc + (16 * s + j) * 8), k4p8_sc(&k, j));
        for (int j = 0; j < 4; j++) _mm256_store_si256((__m256i *)(void *)(p->mn + (4 * s + j) * 8), k4p8_mn(&k, j));
        for (int g = 0; g < 4; g++)
            for (int q = 0; q < 8; q++) {
                __m256i lo, hi;
                k45p8_split(ld8x32(sb + (q5 ? NM_Q5KP_QS : NM_Q4KP_QS) + 64 * (8 * g + q) + half),
                            q5 ? ld8x32(sb + NM_Q5KP_QH + 64 * q + half) : _mm256_setzero_si256(), g, q5, &lo, &hi);
                _mm256_store_si256((__m256i *)(void *)(p->w + (8 * s + 2 * g) * 256 + 32 * q), lo);
                _mm256_store_si256((__m256i *)(void *)(p->w + (8 * s + 2 * g + 1) * 256 + 32 * q), hi);
            }
    }
}

T2 static void gemv_q4_kp(const nm_mm_args *a, const uint8_t *tile, int64_t t, float *out) {
    gemv_kp8(a, tile, t, out, NM_TYPE_Q4_K);
}
T2 static void gemv_q5_kp(const nm_mm_args *a, const uint8_t *tile, int64_t t, float *out) {
    gemv_kp8(a, tile, t, out, NM_TYPE_Q5_K);
}
T2 static void gemv_q6_kp(const nm_mm_args *a, const uint8_t *tile, int64_t t, float *out) {
    gemv_kp8(a, tile, t, out, NM_TYPE_Q6_K);
}
T2 static void tiles_q4_kp(const nm_mm_args *a, int64_t r0, int64_t r1) { k_gemm8(a, r0, r1, NM_TYPE_Q4_K, true); }
T2 static void tiles_q5_kp(const nm_mm_args *a, int64_t r0, int64_t r1) { k_gemm8(a, r0, r1, NM_TYPE_Q5_K, true); }
T2 static void tiles_q6_kp(const nm_mm_args *a, int64_t r0, int64_t r1) { k_gemm8(a, r0, r1, NM_TYPE_Q6_K, true); }
T2 static void rows_q4_kp(const nm_mm_args *a, int64_t r0, int64_t r1) {
    nm_rows_packed(a, r0, r1, gemv_q4_kp, tiles_q4_kp, rows_q4_k);
}
T2 static void rows_q5_kp(const nm_mm_args *a, int64_t r0, int64_t r1) {
    nm_rows_packed(a, r0, r1, gemv_q5_kp, tiles_q5_kp, rows_q5_k);
}
T2 static void rows_q6_kp(const nm_mm_args *a, int64_t r0, int64_t r1) {
    nm_rows_packed(a, r0, r1, gemv_q6_kp, tiles_q6_kp, rows_q6_k);
}

/* ====================================================================== */
/* F32, F16, BF16 weights                                                 */
/* ====================================================================== */
/* As kernels_avx512.c: lanes are rows; each output is chains of at most 16
 * fused multiply-adds (16 consecutive elements) added to the running sum;
 * BF16 products are added in double.  Batches repack 16 rows x KC_FLOATS
 * element-major; single tokens transpose 8 x 8 squares. */

T2_INLINE __m256 load8(nm_type t, const uint8_t *row, int64_t k, int n) {
    if (n < 8) {
        float f[8] = {0};
        const uint8_t *p = row + (t == NM_TYPE_F32 ? 4 : 2) * k;
        for (int i = 0; i < n; i++) {
            if (t == NM_TYPE_F32) memcpy(&f[i], p + 4 * i, 4);
            else if (t == NM_TYPE_F16) f[i] = _cvtsh_ss(nm_ld16(p + 2 * i));
            else {
                const uint32_t u = (uint32_t)nm_ld16(p + 2 * i) << 16;
                memcpy(&f[i], &u, 4);
            }
        }
        return _mm256_loadu_ps(f);
    }
    switch (t) {
    case NM_TYPE_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * k)));
    case NM_TYPE_BF16:
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * k))), 16));
    default: return _mm256_loadu_ps((const float *)(const void *)(row + 4 * k));
    }
}

T2_INLINE void transpose8(__m256 *r) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)), s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)), s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

T2_INLINE const float *f_x(const nm_mm_args *a, nm_type type, int64_t t) {
    if (type == NM_TYPE_F32) return (const float *)(const void *)(a->act + (size_t)t * a->act_stride);
    return (const float *)(const void *)(a->extra + (size_t)t * a->extra_stride);
}

/* p[k * 16 + i] = row i's element k0 + k (rows past nr are zero). */
T2 static void repack16_f(const nm_mm_args *a, nm_type type, int64_t r, int nr, int64_t k0, int kc, float *p) {
    const size_t esz = type == NM_TYPE_F32 ? 4 : 2;
    for (int h = 0; h < 2; h++)
        for (int c = 0; c < kc; c += 8) {
            __m256 v[8];
            const int n = kc - c < 8 ? kc - c : 8;
            for (int i = 0; i < 8; i++) {
                const int row = 8 * h + i;
                v[i] = row < nr ? load8(type, a->w + (size_t)(r + row) * a->row_bytes + (size_t)k0 * esz, c, n)
                                : _mm256_setzero_ps();
            }
            transpose8(v);
            for (int i = 0; i < n; i++) _mm256_store_ps(p + (c + i) * 16 + 8 * h, v[i]);
        }
}

enum { FT8 = 6, BT8 = 2 };

T2_INLINE void f_tokens16(int NT, const nm_mm_args *a, nm_type type, const float *p, int64_t r, int nr, int64_t t,
                          int64_t k0, int kc) {
    const __m256i m0 = lanes8(nr), m1 = lanes8(nr - 8);
    const int64_t n0 = nr, n1 = nr - 8;
    __m256 acc[FT8][2];
    const float *x[FT8];
#pragma GCC unroll 6
    for (int i = 0; i < NT; i++) {
        x[i] = f_x(a, type, t + i) + k0;
        const float *y = a->y + (t + i) * a->ldy + (r - a->y_r0);
        acc[i][0] = k0 ? load8_ps(y, m0, n0) : _mm256_setzero_ps();
        acc[i][1] = k0 && n1 > 0 ? load8_ps(y + 8, m1, n1) : _mm256_setzero_ps();
    }
    for (int c = 0; c < kc; c += 16) {
        __m256 part[FT8][2];
#pragma GCC unroll 6
        for (int i = 0; i < NT; i++) part[i][0] = part[i][1] = _mm256_setzero_ps();
        for (int k = c; k < c + 16 && k < kc; k++) {
            const __m256 w0 = _mm256_load_ps(p + 16 * k), w1 = _mm256_load_ps(p + 16 * k + 8);
#pragma GCC unroll 6
            for (int i = 0; i < NT; i++) {
                const __m256 xb = _mm256_broadcast_ss(x[i] + k);
                part[i][0] = _mm256_fmadd_ps(w0, xb, part[i][0]);
                part[i][1] = _mm256_fmadd_ps(w1, xb, part[i][1]);
            }
        }
#pragma GCC unroll 6
        for (int i = 0; i < NT; i++) {
            acc[i][0] = _mm256_add_ps(acc[i][0], part[i][0]);
            acc[i][1] = _mm256_add_ps(acc[i][1], part[i][1]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < NT; i++) {
        float *y = a->y + (t + i) * a->ldy + (r - a->y_r0);
        store8_ps(y, m0, n0, acc[i][0]);
        if (n1 > 0) store8_ps(y + 8, m1, n1, acc[i][1]);
    }
}

T2 static void f_gemm16(const nm_mm_args *a, int64_t r0, int64_t r1, nm_type type) {
    _Alignas(32) float p[KC_FLOATS * 16];
    for (int64_t r = r0; r < r1; r += 16) {
        const int nr = (int)imin64(16, r1 - r);
        for (int64_t k0 = 0; k0 < a->cols; k0 += KC_FLOATS) {
            const int kc = (int)imin64(KC_FLOATS, a->cols - k0);
            repack16_f(a, type, r, nr, k0, kc, p);
            int64_t t = 0;
            for (; t + FT8 <= a->n_tok; t += FT8) f_tokens16(FT8, a, type, p, r, nr, t, k0, kc);
            for (; t < a->n_tok; t++) f_tokens16(1, a, type, p, r, nr, t, k0, kc);
        }
    }
}

T2 static void f_gemv8(const nm_mm_args *a, nm_type type, int64_t r, int nr, int64_t t) {
    const float *x = f_x(a, type, t);
    const uint8_t *rp[8];
    for (int i = 0; i < 8; i++) rp[i] = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t c = 0; c < a->cols; c += 16) {
        __m256 part = _mm256_setzero_ps();
        for (int64_t k0 = c; k0 < c + 16 && k0 < a->cols; k0 += 8) {
            const int n = (int)imin64(8, a->cols - k0);
            __m256 v[8];
            for (int i = 0; i < 8; i++) v[i] = load8(type, rp[i], k0, n);
            transpose8(v);
            for (int i = 0; i < n; i++) part = _mm256_fmadd_ps(v[i], _mm256_broadcast_ss(x + k0 + i), part);
        }
        acc = _mm256_add_ps(acc, part);
    }
    store8_ps(a->y + t * a->ldy + (r - a->y_r0), lanes8(nr), nr, acc);
}

/* BF16: exact float products added in double, as the reference. */
T2_INLINE void bf_add(__m256d *acc, __m256 p) {
    acc[0] = _mm256_add_pd(acc[0], _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
    acc[1] = _mm256_add_pd(acc[1], _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
}

T2_INLINE __m256 bf_float(const __m256d *acc) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(acc[0])), _mm256_cvtpd_ps(acc[1]), 1);
}

T2_INLINE void bf_tokens16(int NT, const nm_mm_args *a, float *p, int64_t r, int nr, int64_t t) {
    __m256d acc[BT8][4];
    const float *x[BT8];
#pragma GCC unroll 2
    for (int i = 0; i < NT; i++) {
        x[i] = f_x(a, NM_TYPE_BF16, t + i);
        for (int j = 0; j < 4; j++) acc[i][j] = _mm256_setzero_pd();
    }
    for (int64_t k0 = 0; k0 < a->cols; k0 += KC_FLOATS) {
        const int kc = (int)imin64(KC_FLOATS, a->cols - k0);
        repack16_f(a, NM_TYPE_BF16, r, nr, k0, kc, p);
        for (int k = 0; k < kc; k++) {
            const __m256 w0 = _mm256_load_ps(p + 16 * k), w1 = _mm256_load_ps(p + 16 * k + 8);
#pragma GCC unroll 2
            for (int i = 0; i < NT; i++) {
                const __m256 xb = _mm256_broadcast_ss(x[i] + k0 + k);
                bf_add(acc[i], _mm256_mul_ps(w0, xb));
                bf_add(acc[i] + 2, _mm256_mul_ps(w1, xb));
            }
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < NT; i++) {
        float *y = a->y + (t + i) * a->ldy + (r - a->y_r0);
        store8_ps(y, lanes8(nr), nr, bf_float(acc[i]));
        if (nr > 8) store8_ps(y + 8, lanes8(nr - 8), nr - 8, bf_float(acc[i] + 2));
    }
}

T2 static void bf_gemv8(const nm_mm_args *a, int64_t r, int nr, int64_t t) {
    const float *x = f_x(a, NM_TYPE_BF16, t);
    const uint8_t *rp[8];
    for (int i = 0; i < 8; i++) rp[i] = a->w + (size_t)(r + (i < nr ? i : nr - 1)) * a->row_bytes;
    __m256d acc[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
    for (int64_t k0 = 0; k0 < a->cols; k0 += 8) {
        const int n = (int)imin64(8, a->cols - k0);
        __m256 v[8];
        for (int i = 0; i < 8; i++) v[i] = load8(NM_TYPE_BF16, rp[i], k0, n);
        transpose8(v);
        for (int i = 0; i < n; i++) bf_add(acc, _mm256_mul_ps(v[i], _mm256_broadcast_ss(x + k0 + i)));
    }
    store8_ps(a->y + t * a->ldy + (r - a->y_r0), lanes8(nr), nr, bf_float(acc));
}

T2 static void f_rows(const nm_mm_args *a, int64_t r0, int64_t r1, nm_type type) {
    if (a->n_tok >= GEMM_MIN_TOK) {
        if (type == NM_TYPE_BF16) {
            _Alignas(32) float p[KC_FLOATS * 16];
            for (int64_t r = r0; r < r1; r += 16) {
                const int nr = (int)imin64(16, r1 - r);
                int64_t t = 0;
                for (; t + BT8 <= a->n_tok; t += BT8) bf_tokens16(BT8, a, p, r, nr, t);
                for (; t < a->n_tok; t++) bf_tokens16(1, a, p, r, nr, t);
            }
        } else {
            f_gemm16(a, r0, r1, type);
        }
        return;
    }
    for (int64_t r = r0; r < r1; r += 8)
        for (int64_t t = 0; t < a->n_tok; t++) {
            if (type == NM_TYPE_BF16) bf_gemv8(a, r, (int)imin64(8, r1 - r), t);
            else f_gemv8(a, type, r, (int)imin64(8, r1 - r), t);
        }
}

T2 static void rows_f32(const nm_mm_args *a, int64_t r0, int64_t r1) { f_rows(a, r0, r1, NM_TYPE_F32); }
T2 static void rows_f16(const nm_mm_args *a, int64_t r0, int64_t r1) { f_rows(a, r0, r1, NM_TYPE_F16); }
T2 static void rows_bf16(const nm_mm_args *a, int64_t r0, int64_t r1) { f_rows(a, r0, r1, NM_TYPE_BF16); }

/* Weight rows to floats for nm_matmul_t: exact conversions. */
T2 static void f16_to_float(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(h + i))));
    for (; i < n; i++) dst[i] = _cvtsh_ss(h[i]);
}

T2 static void bf16_to_float(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_si256((__m256i *)(void *)(dst + i),
                            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(h + i))), 16));
    for (; i < n; i++) {
        const uint32_t u = (uint32_t)h[i] << 16;
        memcpy(dst + i, &u, 4);
    }
}

/* ====================================================================== */
/* dx = dy W panels                                                       */
/* ====================================================================== */

/* NM tokens x 16 columns: 2 vectors of C a token stay in registers while
 * k runs; full tiles use plain loads, the last columns masked ones. */
T2_INLINE void nn_tile8(int NM, bool full, int64_t n, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                        int64_t ldb, float *C, int64_t ldc) {
    const int64_t n0 = full ? 8 : N - n, n1 = full ? 8 : N - n - 8;
    const __m256i m0 = lanes8(n0), m1 = lanes8(n1);
    __m256 acc[6][2];
#pragma GCC unroll 6
    for (int i = 0; i < NM; i++) {
        acc[i][0] = load8_ps(C + i * ldc + n, m0, n0);
        acc[i][1] = n1 > 0 ? load8_ps(C + i * ldc + n + 8, m1, n1) : _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < K; k++) {
        const float *b = B + k * ldb + n;
        const __m256 b0 = load8_ps(b, m0, n0), b1 = n1 > 0 ? load8_ps(b + 8, m1, n1) : _mm256_setzero_ps();
#pragma GCC unroll 6
        for (int i = 0; i < NM; i++) {
            const __m256 av = _mm256_broadcast_ss(A + i * lda + k);
            acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < NM; i++) {
        store8_ps(C + i * ldc + n, m0, n0, acc[i][0]);
        if (n1 > 0) store8_ps(C + i * ldc + n + 8, m1, n1, acc[i][1]);
    }
}

T2_INLINE void nn_tokens8(int NM, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                          float *C, int64_t ldc) {
    int64_t n = 0;
    for (; n + 16 <= N; n += 16) nn_tile8(NM, true, n, N, K, A, lda, B, ldb, C, ldc);
    if (n < N) nn_tile8(NM, false, n, N, K, A, lda, B, ldb, C, ldc);
}

T2 static void nn_avx2(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                       float *C, int64_t ldc) {
    int64_t m = 0;
    for (; m + 6 <= M; m += 6) nn_tokens8(6, N, K, A + m * lda, lda, B, ldb, C + m * ldc, ldc);
    for (; m < M; m++) nn_tokens8(1, N, K, A + m * lda, lda, B, ldb, C + m * ldc, ldc);
}

/* ====================================================================== */
/* activation conversion                                                  */
/* ====================================================================== */
/* As kernels_avx512.c: the reference quantizers operation for operation. */

T2_INLINE float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

T2_INLINE __m256 abs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

T2_INLINE __m256i round_away8(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 f = abs8(_mm256_sub_ps(v, t));
    const __m256 one = _mm256_or_ps(_mm256_and_ps(v, _mm256_set1_ps(-0.0f)), _mm256_set1_ps(1.0f));
    const __m256 up = _mm256_cmp_ps(f, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(up, one)));
}

/* Four vectors of 8 int32 to 32 saturated bytes in order. */
T2_INLINE __m256i pack32(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

T2 static void convert_q8_0(const float *x, uint8_t *act, uint8_t *extra, int64_t n) {
    const int64_t nb = n / 32;
    float *ed = (float *)(void *)extra;
    for (int64_t b = 0; b < nb; b++, x += 32, act += 34) {
        const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8), v2 = _mm256_loadu_ps(x + 16),
                     v3 = _mm256_loadu_ps(x + 24);
        const float amax = hmax8(_mm256_max_ps(_mm256_max_ps(abs8(v0), abs8(v1)), _mm256_max_ps(abs8(v2), abs8(v3))));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const uint16_t dh = nm_f32_to_f16(d);
        memcpy(act, &dh, 2);
        const __m256 vid = _mm256_set1_ps(id);
        const __m256i q0 = round_away8(_mm256_mul_ps(v0, vid)), q1 = round_away8(_mm256_mul_ps(v1, vid));
        const __m256i q2 = round_away8(_mm256_mul_ps(v2, vid)), q3 = round_away8(_mm256_mul_ps(v3, vid));
        _mm256_storeu_si256((__m256i *)(void *)(act + 2), pack32(q0, q1, q2, q3));
        if (ed) {
            ed[b] = _cvtsh_ss(dh);
            const int32_t sum = hsum8(_mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3)));
            memcpy(extra + 4 * (nb + b), &sum, 4);
        }
    }
}

T2 static void convert_q8_k(const float *x, uint8_t *act, uint8_t *extra, int64_t n) {
    int16_t *e16 = (int16_t *)(void *)extra;
    for (int64_t b = 0; b < n / NM_QK_K; b++, x += NM_QK_K, act += sizeof(nm_block_q8_k)) {
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < NM_QK_K; j += 8) m = _mm256_max_ps(m, abs8(_mm256_loadu_ps(x + j)));
        const float amax = hmax8(m);
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
            const __m256 vs = _mm256_set1_ps(iscale);
            for (int j = 0; j < NM_QK_K; j += 32) {
                const __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + j)));
                const __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 8)));
                const __m256i q2 = _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 16)));
                const __m256i q3 = _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 24)));
                const __m256i q8 = pack32(q0, q1, q2, q3);
                _mm256_storeu_si256((__m256i *)(void *)(qs + j), q8);
                /* the sums of the saturated bytes */
                const __m256i w = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q8);
                const __m256i s32 = _mm256_madd_epi16(w, _mm256_set1_epi16(1));
                /* s32 lanes: 4 sums of 4 per 128-bit half: elements 0..15 in the low half */
                bsums[j / 16] = (int16_t)hsum8(_mm256_permute2x128_si256(s32, s32, 0x80));
                bsums[j / 16 + 1] = (int16_t)hsum8(_mm256_permute2x128_si256(s32, s32, 0x81));
            }
            d = 1.0f / iscale;
        }
        memcpy(act, &d, 4);
        memcpy(act + 4 + NM_QK_K, bsums, sizeof bsums);
        if (e16)
            for (int j = 0; j < 8; j++) e16[8 * b + j] = (int16_t)(bsums[2 * j] + bsums[2 * j + 1]);
    }
}

T2 static void convert_f16(const float *x, uint8_t *act, uint8_t *extra, int64_t n) {
    float *f = (float *)(void *)extra;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)(void *)(act + 2 * i), h);
        if (f) _mm256_storeu_ps(f + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) {
        const uint16_t h = nm_f32_to_f16(x[i]);
        memcpy(act + 2 * i, &h, 2);
        if (f) f[i] = nm_f16_to_f32(h);
    }
}

T2 static void convert_bf16(const float *x, uint8_t *act, uint8_t *extra, int64_t n) {
    float *f = (float *)(void *)extra;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(x + i));
        const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
        /* NaN: (u >> 16) | 64; magnitudes above 0x7f800000 (signed compare is
         * safe on the 31-bit magnitude) */
        const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
        const __m256i qn = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
        const __m256i v = _mm256_blendv_epi8(r, qn, nan);
        /* 8 x 32-bit (values < 65536) to 8 x 16-bit */
        const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(v, v), _MM_SHUFFLE(3, 1, 2, 0));
        _mm_storeu_si128((__m128i *)(void *)(act + 2 * i), _mm256_castsi256_si128(p));
        if (f) _mm256_storeu_ps(f + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
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
 * order (kernels.c): a head's 16 score lanes are two vectors, reduced by
 * the reference's tree; values are summed per element in key order. */

T2_INLINE __m256 ld_h8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p)); }

/* Scores by key tiles (kernels.h): a tile's 16 keys converted once into kf
 * for all the queries, then per head and half tile (8 keys a vector) the
 * reference's 16 lane chains, lanes l and l + 8 added as soon as both are
 * done, and the rest of the lane tree as vertical adds. */
T2 static void attn_scores_2(const float *q, size_t q_stride, int nq, const uint16_t *k, int64_t n, int64_t hd,
                             float scale, float *scores, size_t s_stride) {
    if (hd > 256) {
        nm_attn_kernel_get(NM_ISA_SCALAR)->scores(q, q_stride, nq, k, n, hd, scale, scores, s_stride);
        return;
    }
    _Alignas(32) float kf[256 * NM_KEY_TILE];
    const __m256 vs = _mm256_set1_ps(scale);
    for (int64_t p0 = 0; p0 < n; p0 += NM_KEY_TILE, k += NM_KEY_TILE * hd) {
        for (int64_t i = 0; i < 16 * hd; i += 8) _mm256_store_ps(kf + i, ld_h8(k + i));
        for (int j = 0; j < nq; j++) {
            const float *qj = q + (size_t)j * q_stride;
            for (int64_t h = 0; h < 16 && p0 + h < n; h += 8) {
                const float *kh = kf + h;
                __m256 r;
                if (hd % 16 == 0) {
                    __m256 b[8];
                    for (int l = 0; l < 8; l++) {
                        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
                        for (int64_t i = 0; i < hd; i += 16) {
                            lo = _mm256_fmadd_ps(_mm256_set1_ps(qj[i + l]), _mm256_load_ps(kh + 16 * (i + l)), lo);
                            hi = _mm256_fmadd_ps(_mm256_set1_ps(qj[i + l + 8]), _mm256_load_ps(kh + 16 * (i + l + 8)), hi);
                        }
                        b[l] = _mm256_add_ps(lo, hi); /* l + 8 */
                    }
                    for (int l = 0; l < 4; l++) b[l] = _mm256_add_ps(b[l], b[l + 4]);
                    b[0] = _mm256_add_ps(b[0], b[2]);
                    b[1] = _mm256_add_ps(b[1], b[3]);
                    r = _mm256_add_ps(b[0], b[1]);
                } else { /* element by element, as the reference */
                    r = _mm256_setzero_ps();
                    for (int64_t i = 0; i < hd; i++)
                        r = _mm256_fmadd_ps(_mm256_set1_ps(qj[i]), _mm256_load_ps(kh + 16 * i), r);
                }
                r = _mm256_mul_ps(r, vs);
                float *dst = scores + (size_t)j * s_stride + p0 + h;
                if (n - (p0 + h) >= 8) {
                    _mm256_storeu_ps(dst, r);
                } else {
                    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - (p0 + h))),
                                                         _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                    _mm256_maskstore_ps(dst, m, r);
                }
            }
        }
    }
}

T2 static void attn_values_2(const float *w, size_t w_stride, int nq, const uint16_t *v0, size_t stride, int64_t n,
                             int64_t hd, float *out, size_t o_stride) {
    if (hd % 8 || hd > 64) {
        nm_attn_kernel_get(NM_ISA_SCALAR)->values(w, w_stride, nq, v0, stride, n, hd, out, o_stride);
        return;
    }
    const int nc = (int)(hd / 8);
    for (int j = 0; j < nq; j++, w += w_stride, out += o_stride) {
        __m256 a[8];
        for (int m = 0; m < nc; m++) a[m] = _mm256_setzero_ps();
        const uint16_t *v = v0;
        for (int64_t p = 0; p < n; p++, v += stride) {
            const __m256 s = _mm256_set1_ps(w[p]);
            for (int m = 0; m < nc; m++) a[m] = _mm256_fmadd_ps(s, ld_h8(v + 8 * m), a[m]);
        }
        for (int m = 0; m < nc; m++) _mm256_storeu_ps(out + 8 * m, a[m]);
    }
}

T2 static void to_f16_2(const float *x, uint16_t *h, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(void *)(h + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) h[i] = nm_f32_to_f16(x[i]);
}

T2 static void round_f16_2(float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
    for (; i < n; i++) x[i] = nm_half_to_f32(nm_f32_to_f16(x[i]));
}

/* nm_exp_ref in 8 lanes: the same operations, so the same bits */
T2_INLINE __m256 exp8(__m256 x) {
    const __m256 hi = _mm256_set1_ps(NM_EXP_HI), lo = _mm256_set1_ps(NM_EXP_LO), magic = _mm256_set1_ps(NM_EXP_MAGIC);
    __m256 xc = _mm256_blendv_ps(hi, x, _mm256_cmp_ps(x, hi, _CMP_LT_OQ));
    xc = _mm256_blendv_ps(lo, xc, _mm256_cmp_ps(x, lo, _CMP_GT_OQ));
    const __m256 fn = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(xc, _mm256_set1_ps(NM_EXP_LOG2E)), magic), magic);
    __m256 r = _mm256_sub_ps(xc, _mm256_mul_ps(fn, _mm256_set1_ps(NM_EXP_C1)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(fn, _mm256_set1_ps(NM_EXP_C2)));
    const __m256 z = _mm256_mul_ps(r, r);
    __m256 p = _mm256_set1_ps(NM_EXP_P0);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(NM_EXP_P1));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(NM_EXP_P2));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(NM_EXP_P3));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(NM_EXP_P4));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(NM_EXP_P5));
    __m256 y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, z), r), _mm256_set1_ps(1.0f));
    const __m256i n = _mm256_cvttps_epi32(fn);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23)));
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

T2 static void softmax_2(float *x, int64_t n) {
    __m256 vm = _mm256_set1_ps(-__builtin_inff());
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
    float mv[8], max = -__builtin_inff(); /* max is exact in any order */
    _mm256_storeu_ps(mv, vm);
    for (int l = 0; l < 8; l++) max = mv[l] > max ? mv[l] : max;
    for (; i < n; i++) max = x[i] > max ? x[i] : max;
    const __m256 m = _mm256_set1_ps(max);
    __m256d a[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
    for (i = 0; i + 16 <= n; i += 16)
        for (int h = 0; h < 2; h++) {
            const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8 * h), m));
            _mm256_storeu_ps(x + i + 8 * h, e);
            a[2 * h] = _mm256_add_pd(a[2 * h], _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            a[2 * h + 1] = _mm256_add_pd(a[2 * h + 1], _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
        }
    double acc[16];
    for (int h = 0; h < 4; h++) _mm256_storeu_pd(acc + 4 * h, a[h]);
    const float inv = nm_softmax_tail(x, n, i, max, acc);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(inv)));
    for (; i < n; i++) x[i] *= inv;
}

T2 static void swiglu_2(float *out, const float *gate, const float *up, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = exp8(_mm256_xor_ps(g, _mm256_set1_ps(-0.0f)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) {
        const float g = gate[i];
        out[i] = g / (1.0f + nm_exp_ref(-g)) * up[i];
    }
}

T2 static void rmsnorm_2(float *y, const float *x, const float *w, int64_t n, float eps) {
    __m256d a0 = _mm256_setzero_pd(), a1 = a0; /* lanes k and 4 + k: nm_rmsnorm's s[k], s[4 + k] */
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256d v0 = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), v1 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        a0 = _mm256_add_pd(a0, _mm256_mul_pd(v0, v0));
        a1 = _mm256_add_pd(a1, _mm256_mul_pd(v1, v1));
    }
    double s[8];
    _mm256_storeu_pd(s, a0);
    _mm256_storeu_pd(s + 4, a1);
    const float scale = nm_rms_scale(s, x, i, n, eps);
    const __m256 vs = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
        _mm256_storeu_ps(y + i, w ? _mm256_mul_ps(v, _mm256_loadu_ps(w + i)) : v);
    }
    for (; i < n; i++) y[i] = w ? (x[i] * scale) * w[i] : x[i] * scale;
}

static const nm_attn_kernel ATTN_2 = {attn_scores_2, attn_values_2, to_f16_2, round_f16_2,
                                      softmax_2,     swiglu_2,      rmsnorm_2};

const nm_attn_kernel *nm_attn_kernel_avx2(void) { return &ATTN_2; }

/* ====================================================================== */
/* peak probes                                                            */
/* ====================================================================== */
/* The 8-bit probe is the kernels' sequence, VPMADDUBSW + VPMADDWD + VPADDD
 * for 32 multiply-adds, on 5 independent accumulators with their own
 * inputs (16 registers hold no more). */

static volatile uint64_t probe_sink;

T2 uint64_t nm_probe_int8_avx2(uint64_t iters) {
    __m256i c0 = _mm256_set1_epi32(0), c1 = _mm256_set1_epi32(1), c2 = _mm256_set1_epi32(2), c3 = _mm256_set1_epi32(3),
            c4 = _mm256_set1_epi32(4);
    __m256i x0 = _mm256_set1_epi8(1), x1 = _mm256_set1_epi8(2), x2 = _mm256_set1_epi8(3), x3 = _mm256_set1_epi8(4),
            x4 = _mm256_set1_epi8(5);
    const __m256i y = _mm256_set1_epi8(7), ones = _mm256_set1_epi16(1);
    for (uint64_t i = 0; i < iters; i++) {
        __asm__ volatile("" : "+x"(x0), "+x"(x1), "+x"(x2), "+x"(x3), "+x"(x4));
        c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(_mm256_maddubs_epi16(x0, y), ones));
        c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(_mm256_maddubs_epi16(x1, y), ones));
        c2 = _mm256_add_epi32(c2, _mm256_madd_epi16(_mm256_maddubs_epi16(x2, y), ones));
        c3 = _mm256_add_epi32(c3, _mm256_madd_epi16(_mm256_maddubs_epi16(x3, y), ones));
        c4 = _mm256_add_epi32(c4, _mm256_madd_epi16(_mm256_maddubs_epi16(x4, y), ones));
    }
    probe_sink = (uint64_t)hsum8(_mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(_mm256_add_epi32(c2, c3), c4)));
    return iters * 5 * 32;
}

T2 uint64_t nm_probe_fma_avx2(uint64_t iters) {
    __m256 c0 = _mm256_set1_ps(0), c1 = _mm256_set1_ps(1), c2 = _mm256_set1_ps(2), c3 = _mm256_set1_ps(3),
           c4 = _mm256_set1_ps(4), c5 = _mm256_set1_ps(5), c6 = _mm256_set1_ps(6), c7 = _mm256_set1_ps(7),
           c8 = _mm256_set1_ps(8), c9 = _mm256_set1_ps(9), c10 = _mm256_set1_ps(10), c11 = _mm256_set1_ps(11);
    __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(0.001f);
    for (uint64_t i = 0; i < iters; i++) {
        __asm__ volatile("" : "+x"(x), "+x"(y));
        c0 = _mm256_fmadd_ps(c0, x, y);
        c1 = _mm256_fmadd_ps(c1, x, y);
        c2 = _mm256_fmadd_ps(c2, x, y);
        c3 = _mm256_fmadd_ps(c3, x, y);
        c4 = _mm256_fmadd_ps(c4, x, y);
        c5 = _mm256_fmadd_ps(c5, x, y);
        c6 = _mm256_fmadd_ps(c6, x, y);
        c7 = _mm256_fmadd_ps(c7, x, y);
        c8 = _mm256_fmadd_ps(c8, x, y);
        c9 = _mm256_fmadd_ps(c9, x, y);
        c10 = _mm256_fmadd_ps(c10, x, y);
        c11 = _mm256_fmadd_ps(c11, x, y);
    }
    const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                                   _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7)),
                                                 _mm256_add_ps(_mm256_add_ps(c8, c9), _mm256_add_ps(c10, c11))));
    float f[8];
    _mm256_storeu_ps(f, s);
    probe_sink = (uint64_t)f[0];
    return iters * 12 * 8;
}

T2 uint64_t nm_probe_read_avx2(const uint8_t *p, size_t n) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 128) {
        s0 = _mm256_add_epi64(s0, _mm256_load_si256((const __m256i *)(const void *)(p + i)));
        s1 = _mm256_add_epi64(s1, _mm256_load_si256((const __m256i *)(const void *)(p + i + 32)));
        s2 = _mm256_add_epi64(s2, _mm256_load_si256((const __m256i *)(const void *)(p + i + 64)));
        s3 = _mm256_add_epi64(s3, _mm256_load_si256((const __m256i *)(const void *)(p + i + 96)));
    }
    uint64_t o[4];
    _mm256_storeu_si256((__m256i *)(void *)o, _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)));
    return o[0] + o[1] + o[2] + o[3];
}

/* ====================================================================== */
/* the table                                                              */
/* ====================================================================== */

static const nm_mm_kernel AVX2_MM[NM_TYPE_COUNT] = {
    [NM_TYPE_F32] = {NM_TYPE_F32, false, 16, NM_ISA_AVX2, rows_f32, NULL, NULL, NULL, NULL},
    [NM_TYPE_F16] = {NM_TYPE_F16, true, 16, NM_ISA_AVX2, rows_f16, convert_f16, f16_to_float, NULL, NULL},
    [NM_TYPE_BF16] = {NM_TYPE_BF16, true, 16, NM_ISA_AVX2, rows_bf16, convert_bf16, bf16_to_float, NULL, NULL},
    [NM_TYPE_Q4_0] = {NM_TYPE_Q8_0, true, 8, NM_ISA_AVX2, rows_q4_0, convert_q8_0, NULL, pack8_q4_0, rows_q4_0p},
    [NM_TYPE_Q8_0] = {NM_TYPE_Q8_0, true, 8, NM_ISA_AVX2, rows_q8_0, convert_q8_0, NULL, pack8_q8_0, rows_q8_0p},
    [NM_TYPE_Q4_K] = {NM_TYPE_Q8_K, true, 8, NM_ISA_AVX2, rows_q4_k, convert_q8_k, NULL, nm_pack_q4_k, rows_q4_kp},
    [NM_TYPE_Q5_K] = {NM_TYPE_Q8_K, true, 8, NM_ISA_AVX2, rows_q5_k, convert_q8_k, NULL, nm_pack_q5_k, rows_q5_kp},
    [NM_TYPE_Q6_K] = {NM_TYPE_Q8_K, true, 8, NM_ISA_AVX2, rows_q6_k, convert_q8_k, NULL, nm_pack_q6_k, rows_q6_kp},
};

const nm_mm_kernel *nm_mm_kernel_avx2(nm_type t) {
    return (unsigned)t < NM_TYPE_COUNT && AVX2_MM[t].rows ? &AVX2_MM[t] : NULL;
}

nm_nn_fn nm_nn_kernel_avx2(void) { return nn_avx2; }

#else /* not x86-64 */

const nm_mm_kernel *nm_mm_kernel_avx2(nm_type t) {
    (void)t;
    return NULL;
}
nm_nn_fn nm_nn_kernel_avx2(void) { return NULL; }
const nm_attn_kernel *nm_attn_kernel_avx2(void) { return NULL; }
uint64_t nm_probe_fma_avx2(uint64_t iters) { return (void)iters, 0; }
uint64_t nm_probe_int8_avx2(uint64_t iters) { return (void)iters, 0; }
uint64_t nm_probe_read_avx2(const uint8_t *p, size_t n) { return (void)p, (void)n, 0; }

#endif
