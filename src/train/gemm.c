/* gemm.c - float32 matrix products (see gemm.h).
 *
 * Two kernel shapes cover every product of training:
 *  - nt ("dot"): C = A B^T with both operands running along k.  A tile of
 *    MR x NR outputs keeps MR*NR vector accumulators over k (16 lanes with
 *    AVX-512), reduced horizontally at the end.  Used for x W^T (forward),
 *    q k^T (attention scores), x A^T (LoRA).
 *  - nn ("axpy"): C += A B with B and C running along n.  A tile of MR rows
 *    x NV vectors of C stays in registers while k runs; each step broadcasts
 *    one element of A per row.  Used for dy W (backward), P V, weight
 *    gradients (A read transposed through its strides).
 * Edge tiles run the very same code: missing rows repeat the last valid row
 * (their results are not stored), missing columns and the k tail use masked
 * loads of zeros, so every element sees the same operations in the same
 * order wherever it sits. */
#include "train/gemm.h"
#include "nomoat.h"
#include "tensor/quants.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NM_GEMM_X86 1
#include <immintrin.h>
#endif

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

/* ======================================================================== */
/* portable C                                                               */
/* ======================================================================== */

static void nt_generic(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                       float *C, int64_t ldc, bool accumulate) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            const float *a = A + m * lda, *b = B + n * ldb;
            float acc[8] = {0};
            int64_t k = 0;
            for (; k + 8 <= K; k += 8)
                for (int l = 0; l < 8; l++) acc[l] += a[k + l] * b[k + l];
            for (int l = 0; k < K; k++, l++) acc[l] += a[k] * b[k];
            float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
            C[m * ldc + n] = accumulate ? C[m * ldc + n] + s : s;
        }
}

static void nn_generic(int64_t M, int64_t N, int64_t K, const float *A, int64_t ars, int64_t acs, const float *B,
                       int64_t ldb, float *C, int64_t ldc) {
    for (int64_t m = 0; m < M; m++) {
        float *c = C + m * ldc;
        for (int64_t k = 0; k < K; k++) {
            float a = A[m * ars + k * acs];
            const float *b = B + k * ldb;
            for (int64_t n = 0; n < N; n++) c[n] += a * b[n];
        }
    }
}

#ifdef NM_GEMM_X86
/* ======================================================================== */
/* AVX-512                                                                  */
/* ======================================================================== */

/* The accumulators are named variables, not arrays: compilers keep arrays
 * of vectors in memory, which halves the speed of these loops. */

__attribute__((target("avx512f"))) static void nt_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                                                         const float *B, int64_t ldb, float *C, int64_t ldc,
                                                         bool accumulate) {
    const int64_t kt = K % 16, kf = K - kt;
    const __mmask16 km = (__mmask16)((1u << kt) - 1);
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const float *a0 = A + imin(m0, M - 1) * lda, *a1 = A + imin(m0 + 1, M - 1) * lda;
        const float *a2 = A + imin(m0 + 2, M - 1) * lda, *a3 = A + imin(m0 + 3, M - 1) * lda;
        for (int64_t n0 = 0; n0 < N; n0 += 4) {
            const float *b0 = B + imin(n0, N - 1) * ldb, *b1 = B + imin(n0 + 1, N - 1) * ldb;
            const float *b2 = B + imin(n0 + 2, N - 1) * ldb, *b3 = B + imin(n0 + 3, N - 1) * ldb;
            __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00,
                   c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
            for (int64_t k = 0; k <= kf; k += 16) {
                __m512 x0, x1, x2, x3, y0, y1, y2, y3;
                if (k < kf) {
                    x0 = _mm512_loadu_ps(a0 + k), x1 = _mm512_loadu_ps(a1 + k);
                    x2 = _mm512_loadu_ps(a2 + k), x3 = _mm512_loadu_ps(a3 + k);
                    y0 = _mm512_loadu_ps(b0 + k), y1 = _mm512_loadu_ps(b1 + k);
                    y2 = _mm512_loadu_ps(b2 + k), y3 = _mm512_loadu_ps(b3 + k);
                } else if (kt) { /* the k tail: masked loads of zeros past K */
                    x0 = _mm512_maskz_loadu_ps(km, a0 + k), x1 = _mm512_maskz_loadu_ps(km, a1 + k);
                    x2 = _mm512_maskz_loadu_ps(km, a2 + k), x3 = _mm512_maskz_loadu_ps(km, a3 + k);
                    y0 = _mm512_maskz_loadu_ps(km, b0 + k), y1 = _mm512_maskz_loadu_ps(km, b1 + k);
                    y2 = _mm512_maskz_loadu_ps(km, b2 + k), y3 = _mm512_maskz_loadu_ps(km, b3 + k);
                } else {
                    break;
                }
                c00 = _mm512_fmadd_ps(x0, y0, c00), c01 = _mm512_fmadd_ps(x0, y1, c01);
                c02 = _mm512_fmadd_ps(x0, y2, c02), c03 = _mm512_fmadd_ps(x0, y3, c03);
                c10 = _mm512_fmadd_ps(x1, y0, c10), c11 = _mm512_fmadd_ps(x1, y1, c11);
                c12 = _mm512_fmadd_ps(x1, y2, c12), c13 = _mm512_fmadd_ps(x1, y3, c13);
                c20 = _mm512_fmadd_ps(x2, y0, c20), c21 = _mm512_fmadd_ps(x2, y1, c21);
                c22 = _mm512_fmadd_ps(x2, y2, c22), c23 = _mm512_fmadd_ps(x2, y3, c23);
                c30 = _mm512_fmadd_ps(x3, y0, c30), c31 = _mm512_fmadd_ps(x3, y1, c31);
                c32 = _mm512_fmadd_ps(x3, y2, c32), c33 = _mm512_fmadd_ps(x3, y3, c33);
            }
            float r[16] = {_mm512_reduce_add_ps(c00), _mm512_reduce_add_ps(c01), _mm512_reduce_add_ps(c02),
                           _mm512_reduce_add_ps(c03), _mm512_reduce_add_ps(c10), _mm512_reduce_add_ps(c11),
                           _mm512_reduce_add_ps(c12), _mm512_reduce_add_ps(c13), _mm512_reduce_add_ps(c20),
                           _mm512_reduce_add_ps(c21), _mm512_reduce_add_ps(c22), _mm512_reduce_add_ps(c23),
                           _mm512_reduce_add_ps(c30), _mm512_reduce_add_ps(c31), _mm512_reduce_add_ps(c32),
                           _mm512_reduce_add_ps(c33)};
            int64_t mi = imin(4, M - m0), nj = imin(4, N - n0);
            for (int64_t i = 0; i < mi; i++)
                for (int64_t j = 0; j < nj; j++) {
                    float *o = C + (m0 + i) * ldc + n0 + j;
                    *o = accumulate ? *o + r[i * 4 + j] : r[i * 4 + j];
                }
        }
    }
}

/* nn panels: 4 rows of C x 64, 32 or 16 columns, held in registers while
 * k runs.  m0..m0+3 are rows of C (repeated past M); msk masks columns. */
__attribute__((target("avx512f"))) static void nn512_64(int64_t M, int64_t K, const float *A, int64_t ars,
                                                        int64_t acs, const float *B, int64_t ldb, float *C,
                                                        int64_t ldc, __mmask16 m0k, __mmask16 m1k, __mmask16 m2k,
                                                        __mmask16 m3k) {
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
        int64_t r0 = m0, r1 = imin(m0 + 1, M - 1), r2 = imin(m0 + 2, M - 1), r3 = imin(m0 + 3, M - 1);
        float *p0 = C + r0 * ldc, *p1 = C + r1 * ldc, *p2 = C + r2 * ldc, *p3 = C + r3 * ldc;
        __m512 c00 = _mm512_maskz_loadu_ps(m0k, p0), c01 = _mm512_maskz_loadu_ps(m1k, p0 + 16);
        __m512 c02 = _mm512_maskz_loadu_ps(m2k, p0 + 32), c03 = _mm512_maskz_loadu_ps(m3k, p0 + 48);
        __m512 c10 = _mm512_maskz_loadu_ps(m0k, p1), c11 = _mm512_maskz_loadu_ps(m1k, p1 + 16);
        __m512 c12 = _mm512_maskz_loadu_ps(m2k, p1 + 32), c13 = _mm512_maskz_loadu_ps(m3k, p1 + 48);
        __m512 c20 = _mm512_maskz_loadu_ps(m0k, p2), c21 = _mm512_maskz_loadu_ps(m1k, p2 + 16);
        __m512 c22 = _mm512_maskz_loadu_ps(m2k, p2 + 32), c23 = _mm512_maskz_loadu_ps(m3k, p2 + 48);
        __m512 c30 = _mm512_maskz_loadu_ps(m0k, p3), c31 = _mm512_maskz_loadu_ps(m1k, p3 + 16);
        __m512 c32 = _mm512_maskz_loadu_ps(m2k, p3 + 32), c33 = _mm512_maskz_loadu_ps(m3k, p3 + 48);
        const float *a0 = A + r0 * ars, *a1 = A + r1 * ars, *a2 = A + r2 * ars, *a3 = A + r3 * ars;
        for (int64_t k = 0; k < K; k++) {
            const float *bk = B + k * ldb;
            __m512 b0 = _mm512_maskz_loadu_ps(m0k, bk), b1 = _mm512_maskz_loadu_ps(m1k, bk + 16);
            __m512 b2 = _mm512_maskz_loadu_ps(m2k, bk + 32), b3 = _mm512_maskz_loadu_ps(m3k, bk + 48);
            __m512 x = _mm512_set1_ps(a0[k * acs]);
            c00 = _mm512_fmadd_ps(x, b0, c00), c01 = _mm512_fmadd_ps(x, b1, c01);
            c02 = _mm512_fmadd_ps(x, b2, c02), c03 = _mm512_fmadd_ps(x, b3, c03);
            x = _mm512_set1_ps(a1[k * acs]);
            c10 = _mm512_fmadd_ps(x, b0, c10), c11 = _mm512_fmadd_ps(x, b1, c11);
            c12 = _mm512_fmadd_ps(x, b2, c12), c13 = _mm512_fmadd_ps(x, b3, c13);
            x = _mm512_set1_ps(a2[k * acs]);
            c20 = _mm512_fmadd_ps(x, b0, c20), c21 = _mm512_fmadd_ps(x, b1, c21);
            c22 = _mm512_fmadd_ps(x, b2, c22), c23 = _mm512_fmadd_ps(x, b3, c23);
            x = _mm512_set1_ps(a3[k * acs]);
            c30 = _mm512_fmadd_ps(x, b0, c30), c31 = _mm512_fmadd_ps(x, b1, c31);
            c32 = _mm512_fmadd_ps(x, b2, c32), c33 = _mm512_fmadd_ps(x, b3, c33);
        }
        int64_t mi = imin(4, M - m0);
        _mm512_mask_storeu_ps(p0, m0k, c00), _mm512_mask_storeu_ps(p0 + 16, m1k, c01);
        _mm512_mask_storeu_ps(p0 + 32, m2k, c02), _mm512_mask_storeu_ps(p0 + 48, m3k, c03);
        if (mi > 1) {
            _mm512_mask_storeu_ps(p1, m0k, c10), _mm512_mask_storeu_ps(p1 + 16, m1k, c11);
            _mm512_mask_storeu_ps(p1 + 32, m2k, c12), _mm512_mask_storeu_ps(p1 + 48, m3k, c13);
        }
        if (mi > 2) {
            _mm512_mask_storeu_ps(p2, m0k, c20), _mm512_mask_storeu_ps(p2 + 16, m1k, c21);
            _mm512_mask_storeu_ps(p2 + 32, m2k, c22), _mm512_mask_storeu_ps(p2 + 48, m3k, c23);
        }
        if (mi > 3) {
            _mm512_mask_storeu_ps(p3, m0k, c30), _mm512_mask_storeu_ps(p3 + 16, m1k, c31);
            _mm512_mask_storeu_ps(p3 + 32, m2k, c32), _mm512_mask_storeu_ps(p3 + 48, m3k, c33);
        }
    }
}

__attribute__((target("avx512f"))) static void nn512_16(int64_t M, int64_t K, const float *A, int64_t ars,
                                                        int64_t acs, const float *B, int64_t ldb, float *C,
                                                        int64_t ldc, __mmask16 mk) {
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
        int64_t r0 = m0, r1 = imin(m0 + 1, M - 1), r2 = imin(m0 + 2, M - 1), r3 = imin(m0 + 3, M - 1);
        float *p0 = C + r0 * ldc, *p1 = C + r1 * ldc, *p2 = C + r2 * ldc, *p3 = C + r3 * ldc;
        __m512 c0 = _mm512_maskz_loadu_ps(mk, p0), c1 = _mm512_maskz_loadu_ps(mk, p1);
        __m512 c2 = _mm512_maskz_loadu_ps(mk, p2), c3 = _mm512_maskz_loadu_ps(mk, p3);
        const float *a0 = A + r0 * ars, *a1 = A + r1 * ars, *a2 = A + r2 * ars, *a3 = A + r3 * ars;
        for (int64_t k = 0; k < K; k++) {
            __m512 b = _mm512_maskz_loadu_ps(mk, B + k * ldb);
            c0 = _mm512_fmadd_ps(_mm512_set1_ps(a0[k * acs]), b, c0);
            c1 = _mm512_fmadd_ps(_mm512_set1_ps(a1[k * acs]), b, c1);
            c2 = _mm512_fmadd_ps(_mm512_set1_ps(a2[k * acs]), b, c2);
            c3 = _mm512_fmadd_ps(_mm512_set1_ps(a3[k * acs]), b, c3);
        }
        int64_t mi = imin(4, M - m0);
        _mm512_mask_storeu_ps(p0, mk, c0);
        if (mi > 1) _mm512_mask_storeu_ps(p1, mk, c1);
        if (mi > 2) _mm512_mask_storeu_ps(p2, mk, c2);
        if (mi > 3) _mm512_mask_storeu_ps(p3, mk, c3);
    }
}

static __mmask16 cols_mask(int64_t cols) {
    return cols >= 16 ? (__mmask16)0xffff : cols > 0 ? (__mmask16)((1u << cols) - 1) : (__mmask16)0;
}

/* Column panels of 64 while at least 48 columns remain, then panels of 16:
 * every element sees the same FMA chain in either. */
__attribute__((target("avx512f"))) static void nn_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t ars,
                                                         int64_t acs, const float *B, int64_t ldb, float *C,
                                                         int64_t ldc) {
    int64_t n0 = 0;
    for (; N - n0 >= 48; n0 += 64)
        nn512_64(M, K, A, ars, acs, B + n0, ldb, C + n0, ldc, cols_mask(N - n0), cols_mask(N - n0 - 16),
                 cols_mask(N - n0 - 32), cols_mask(N - n0 - 48));
    for (; n0 < N; n0 += 16) nn512_16(M, K, A, ars, acs, B + n0, ldb, C + n0, ldc, cols_mask(N - n0));
}

/* ======================================================================== */
/* AVX2 + FMA                                                               */
/* ======================================================================== */

__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static inline __m256i mask256(int64_t n) {
    int32_t m[8];
    for (int l = 0; l < 8; l++) m[l] = l < n ? -1 : 0;
    return _mm256_loadu_si256((const __m256i *)m);
}

__attribute__((target("avx2,fma"))) static void nt_avx2(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                                                        const float *B, int64_t ldb, float *C, int64_t ldc,
                                                        bool accumulate) {
    const int64_t kt = K % 8, kf = K - kt;
    const __m256i km = mask256(kt);
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const float *a0 = A + imin(m0, M - 1) * lda, *a1 = A + imin(m0 + 1, M - 1) * lda;
        const float *a2 = A + imin(m0 + 2, M - 1) * lda, *a3 = A + imin(m0 + 3, M - 1) * lda;
        for (int64_t n0 = 0; n0 < N; n0 += 2) {
            const float *b0 = B + imin(n0, N - 1) * ldb, *b1 = B + imin(n0 + 1, N - 1) * ldb;
            __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
                   c31 = c00;
            for (int64_t k = 0; k <= kf; k += 8) {
                __m256 x0, x1, x2, x3, y0, y1;
                if (k < kf) {
                    y0 = _mm256_loadu_ps(b0 + k), y1 = _mm256_loadu_ps(b1 + k);
                    x0 = _mm256_loadu_ps(a0 + k), x1 = _mm256_loadu_ps(a1 + k);
                    x2 = _mm256_loadu_ps(a2 + k), x3 = _mm256_loadu_ps(a3 + k);
                } else if (kt) {
                    y0 = _mm256_maskload_ps(b0 + k, km), y1 = _mm256_maskload_ps(b1 + k, km);
                    x0 = _mm256_maskload_ps(a0 + k, km), x1 = _mm256_maskload_ps(a1 + k, km);
                    x2 = _mm256_maskload_ps(a2 + k, km), x3 = _mm256_maskload_ps(a3 + k, km);
                } else {
                    break;
                }
                c00 = _mm256_fmadd_ps(x0, y0, c00), c01 = _mm256_fmadd_ps(x0, y1, c01);
                c10 = _mm256_fmadd_ps(x1, y0, c10), c11 = _mm256_fmadd_ps(x1, y1, c11);
                c20 = _mm256_fmadd_ps(x2, y0, c20), c21 = _mm256_fmadd_ps(x2, y1, c21);
                c30 = _mm256_fmadd_ps(x3, y0, c30), c31 = _mm256_fmadd_ps(x3, y1, c31);
            }
            float r[8] = {hsum256(c00), hsum256(c01), hsum256(c10), hsum256(c11),
                          hsum256(c20), hsum256(c21), hsum256(c30), hsum256(c31)};
            int64_t mi = imin(4, M - m0), nj = imin(2, N - n0);
            for (int64_t i = 0; i < mi; i++)
                for (int64_t j = 0; j < nj; j++) {
                    float *o = C + (m0 + i) * ldc + n0 + j;
                    *o = accumulate ? *o + r[i * 2 + j] : r[i * 2 + j];
                }
        }
    }
}

/* AMD cores run vmaskmovps slowly: full panels use plain loads and stores
 * (the same values, so the same results as the masked edge panel). */
__attribute__((target("avx2,fma"), always_inline)) static inline void
nn256_panel(bool full, int64_t M, int64_t N, int64_t K, const float *A, int64_t ars, int64_t acs, const float *B,
            int64_t ldb, float *C, int64_t ldc, int64_t n0) {
    const __m256i k0 = mask256(N - n0), k1 = mask256(N - n0 - 8);
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
        int64_t r0 = m0, r1 = imin(m0 + 1, M - 1), r2 = imin(m0 + 2, M - 1), r3 = imin(m0 + 3, M - 1);
        float *p0 = C + r0 * ldc + n0, *p1 = C + r1 * ldc + n0, *p2 = C + r2 * ldc + n0, *p3 = C + r3 * ldc + n0;
        __m256 c00, c01, c10, c11, c20, c21, c30, c31;
        if (full) {
            c00 = _mm256_loadu_ps(p0), c01 = _mm256_loadu_ps(p0 + 8), c10 = _mm256_loadu_ps(p1);
            c11 = _mm256_loadu_ps(p1 + 8), c20 = _mm256_loadu_ps(p2), c21 = _mm256_loadu_ps(p2 + 8);
            c30 = _mm256_loadu_ps(p3), c31 = _mm256_loadu_ps(p3 + 8);
        } else {
            c00 = _mm256_maskload_ps(p0, k0), c01 = _mm256_maskload_ps(p0 + 8, k1), c10 = _mm256_maskload_ps(p1, k0);
            c11 = _mm256_maskload_ps(p1 + 8, k1), c20 = _mm256_maskload_ps(p2, k0);
            c21 = _mm256_maskload_ps(p2 + 8, k1), c30 = _mm256_maskload_ps(p3, k0);
            c31 = _mm256_maskload_ps(p3 + 8, k1);
        }
        const float *a0 = A + r0 * ars, *a1 = A + r1 * ars, *a2 = A + r2 * ars, *a3 = A + r3 * ars;
        for (int64_t k = 0; k < K; k++) {
            const float *bk = B + k * ldb + n0;
            __m256 b0 = full ? _mm256_loadu_ps(bk) : _mm256_maskload_ps(bk, k0);
            __m256 b1 = full ? _mm256_loadu_ps(bk + 8) : _mm256_maskload_ps(bk + 8, k1);
            __m256 x = _mm256_broadcast_ss(a0 + k * acs);
            c00 = _mm256_fmadd_ps(x, b0, c00), c01 = _mm256_fmadd_ps(x, b1, c01);
            x = _mm256_broadcast_ss(a1 + k * acs);
            c10 = _mm256_fmadd_ps(x, b0, c10), c11 = _mm256_fmadd_ps(x, b1, c11);
            x = _mm256_broadcast_ss(a2 + k * acs);
            c20 = _mm256_fmadd_ps(x, b0, c20), c21 = _mm256_fmadd_ps(x, b1, c21);
            x = _mm256_broadcast_ss(a3 + k * acs);
            c30 = _mm256_fmadd_ps(x, b0, c30), c31 = _mm256_fmadd_ps(x, b1, c31);
        }
        int64_t mi = imin(4, M - m0);
        if (full) {
            _mm256_storeu_ps(p0, c00), _mm256_storeu_ps(p0 + 8, c01);
            if (mi > 1) _mm256_storeu_ps(p1, c10), _mm256_storeu_ps(p1 + 8, c11);
            if (mi > 2) _mm256_storeu_ps(p2, c20), _mm256_storeu_ps(p2 + 8, c21);
            if (mi > 3) _mm256_storeu_ps(p3, c30), _mm256_storeu_ps(p3 + 8, c31);
        } else {
            _mm256_maskstore_ps(p0, k0, c00), _mm256_maskstore_ps(p0 + 8, k1, c01);
            if (mi > 1) _mm256_maskstore_ps(p1, k0, c10), _mm256_maskstore_ps(p1 + 8, k1, c11);
            if (mi > 2) _mm256_maskstore_ps(p2, k0, c20), _mm256_maskstore_ps(p2 + 8, k1, c21);
            if (mi > 3) _mm256_maskstore_ps(p3, k0, c30), _mm256_maskstore_ps(p3 + 8, k1, c31);
        }
    }
}

__attribute__((target("avx2,fma"))) static void nn_avx2(int64_t M, int64_t N, int64_t K, const float *A, int64_t ars,
                                                        int64_t acs, const float *B, int64_t ldb, float *C,
                                                        int64_t ldc) {
    for (int64_t n0 = 0; n0 < N; n0 += 16) {
        if (N - n0 >= 16)
            nn256_panel(true, M, N, K, A, ars, acs, B, ldb, C, ldc, n0);
        else
            nn256_panel(false, M, N, K, A, ars, acs, B, ldb, C, ldc, n0);
    }
}

#endif /* NM_GEMM_X86 */

/* ======================================================================== */
/* half-float rows                                                          */
/* ======================================================================== */

#ifdef NM_GEMM_X86
__attribute__((target("avx512f"))) static void f16_row_avx512(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(p + 2 * i))));
    for (; i < n; i++) dst[i] = nm_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
}

__attribute__((target("avx2,f16c"))) static void f16_row_f16c(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p + 2 * i))));
    for (; i < n; i++) dst[i] = nm_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
}

__attribute__((target("avx512f"))) static void bf16_row_avx512(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(p + 2 * i)));
        _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
    for (; i < n; i++) dst[i] = nm_bf16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
}

/* Q4_0 block: f16 d, then 16 bytes; element j in the low nibble of byte j,
 * element j + 16 in its high nibble; value (nibble - 8) * d. */
__attribute__((target("avx512f"))) static void q4_0_row_avx512(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    const __m512i mask = _mm512_set1_epi32(0x0f), eight = _mm512_set1_epi32(8);
    for (int64_t i = 0; i < n / 32; i++, b += 18, dst += 32) {
        __m512 d = _mm512_set1_ps(nm_f16_to_f32((uint16_t)(b[0] | b[1] << 8)));
        __m512i w = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(b + 2)));
        __m512i lo = _mm512_sub_epi32(_mm512_and_si512(w, mask), eight);
        __m512i hi = _mm512_sub_epi32(_mm512_srli_epi32(w, 4), eight);
        _mm512_storeu_ps(dst, _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d));
        _mm512_storeu_ps(dst + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d));
    }
}

/* Q8_0 block: f16 d, then 32 signed bytes; value q * d. */
__attribute__((target("avx512f"))) static void q8_0_row_avx512(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / 32; i++, b += 34, dst += 32) {
        __m512 d = _mm512_set1_ps(nm_f16_to_f32((uint16_t)(b[0] | b[1] << 8)));
        __m512i q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(b + 2)));
        __m512i q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(b + 18)));
        _mm512_storeu_ps(dst, _mm512_mul_ps(_mm512_cvtepi32_ps(q0), d));
        _mm512_storeu_ps(dst + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(q1), d));
    }
}
#endif

void nm_q4_0_row_to_f32(const void *src, float *dst, int64_t n) {
#ifdef NM_GEMM_X86
    if (__builtin_cpu_supports("avx512f")) {
        q4_0_row_avx512(src, dst, n);
        return;
    }
#endif
    nm_dequant_q4_0(src, dst, n);
}

void nm_q8_0_row_to_f32(const void *src, float *dst, int64_t n) {
#ifdef NM_GEMM_X86
    if (__builtin_cpu_supports("avx512f")) {
        q8_0_row_avx512(src, dst, n);
        return;
    }
#endif
    nm_dequant_q8_0(src, dst, n);
}

void nm_f16_row_to_f32(const void *src, float *dst, int64_t n) {
#ifdef NM_GEMM_X86
    if (__builtin_cpu_supports("avx512f")) {
        f16_row_avx512(src, dst, n);
        return;
    }
    if (__builtin_cpu_supports("avx2")) { /* every AVX2 CPU has F16C */
        f16_row_f16c(src, dst, n);
        return;
    }
#endif
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) dst[i] = nm_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
}

void nm_bf16_row_to_f32(const void *src, float *dst, int64_t n) {
#ifdef NM_GEMM_X86
    if (__builtin_cpu_supports("avx512f")) {
        bf16_row_avx512(src, dst, n);
        return;
    }
#endif
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)(p[2 * i] | p[2 * i + 1] << 8) << 16;
        memcpy(dst + i, &u, 4);
    }
}

/* ======================================================================== */
/* exp                                                                      */
/* ======================================================================== */

#ifdef NM_GEMM_X86
/* exp(x) = 2^n exp(r), n = round(x log2 e), r = x - n ln 2 in two parts;
 * exp(r) by its Taylor polynomial to degree 6 (|r| <= 0.35: truncation
 * 1.2e-7 relative). */
__attribute__((target("avx512f"))) static inline __m512 exp512(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.0f);
    __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), lo);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps((__mmask16)~tiny, _mm512_scalef_ps(p, n));
}

__attribute__((target("avx512f"))) static double exp_row_avx512(float *x, int64_t n, float sub) {
    __m512 s = _mm512_setzero_ps(), vs = _mm512_set1_ps(sub);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vs));
        _mm512_storeu_ps(x + i, e);
        s = _mm512_add_ps(s, e);
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vs));
        e = _mm512_maskz_mov_ps(m, e);
        _mm512_mask_storeu_ps(x + i, m, e);
        s = _mm512_add_ps(s, e);
    }
    return (double)_mm512_reduce_add_ps(s);
}
#endif

double nm_exp_row(float *x, int64_t n, float sub) {
#ifdef NM_GEMM_X86
    if (__builtin_cpu_supports("avx512f")) return exp_row_avx512(x, n, sub);
#endif
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        float d = x[i] - sub;
        x[i] = d < -87.0f ? 0.0f : expf(d);
        s += x[i];
    }
    return s;
}

nm_gemm_impl nm_gemm_best(void) {
#ifdef NM_GEMM_X86
    if (__builtin_cpu_supports("avx512f")) return NM_GEMM_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return NM_GEMM_AVX2;
#endif
    return NM_GEMM_GENERIC;
}

bool nm_gemm_available(nm_gemm_impl impl) {
    if (impl == NM_GEMM_AUTO || impl == NM_GEMM_GENERIC) return true;
#ifdef NM_GEMM_X86
    if (impl == NM_GEMM_AVX512) return __builtin_cpu_supports("avx512f");
    if (impl == NM_GEMM_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return false;
}

const char *nm_gemm_name(nm_gemm_impl impl) {
    static const char *const names[] = {"auto", "generic", "avx2", "avx512"};
    return (unsigned)impl < 4 ? names[impl] : "?";
}

void nm_gemm_nt_impl(nm_gemm_impl impl, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                     const float *B, int64_t ldb, float *C, int64_t ldc, bool accumulate) {
    if (M <= 0 || N <= 0) return;
    if (impl == NM_GEMM_AUTO || !nm_gemm_available(impl)) impl = nm_gemm_best();
#ifdef NM_GEMM_X86
    if (impl == NM_GEMM_AVX512) {
        nt_avx512(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
        return;
    }
    if (impl == NM_GEMM_AVX2) {
        nt_avx2(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
        return;
    }
#endif
    nt_generic(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

void nm_gemm_nn_impl(nm_gemm_impl impl, int64_t M, int64_t N, int64_t K, const float *A, int64_t ars, int64_t acs,
                     const float *B, int64_t ldb, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    if (impl == NM_GEMM_AUTO || !nm_gemm_available(impl)) impl = nm_gemm_best();
#ifdef NM_GEMM_X86
    if (impl == NM_GEMM_AVX512) {
        nn_avx512(M, N, K, A, ars, acs, B, ldb, C, ldc);
        return;
    }
    if (impl == NM_GEMM_AVX2) {
        nn_avx2(M, N, K, A, ars, acs, B, ldb, C, ldc);
        return;
    }
#endif
    nn_generic(M, N, K, A, ars, acs, B, ldb, C, ldc);
}

void nm_gemm_nt(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                float *C, int64_t ldc, bool accumulate) {
    nm_gemm_nt_impl(NM_GEMM_AUTO, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

void nm_gemm_nn(int64_t M, int64_t N, int64_t K, const float *A, int64_t ars, int64_t acs, const float *B,
                int64_t ldb, float *C, int64_t ldc) {
    nm_gemm_nn_impl(NM_GEMM_AUTO, M, N, K, A, ars, acs, B, ldb, C, ldc);
}

/* ---- OpenBLAS for the weight gradient (see gemm.h) ---- */

#ifdef NM_OPENBLAS
#include <cblas.h>
#include <pthread.h>

/* Our pool already runs one part per core: OpenBLAS's own threads would
 * only oversubscribe them.  (This sets it for the process.) */
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_one_thread(void) { openblas_set_num_threads(1); }
#endif

bool nm_gemm_dw_uses_blas(int64_t m_total, int64_t N, int64_t K, int64_t ars, int64_t acs) {
#ifdef NM_OPENBLAS
    return (ars == 1 || acs == 1) && m_total * N * K >= NM_GEMM_BLAS_MIN && N >= 64;
#else
    (void)m_total, (void)N, (void)K, (void)ars, (void)acs;
    return false;
#endif
}

void nm_gemm_nn_dw(int64_t m_total, int64_t M, int64_t N, int64_t K, const float *A, int64_t ars, int64_t acs,
                   const float *B, int64_t ldb, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0 || K <= 0) return;
#ifdef NM_OPENBLAS
    if (nm_gemm_dw_uses_blas(m_total, N, K, ars, acs) && M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX &&
        ars <= INT32_MAX && acs <= INT32_MAX && ldb <= INT32_MAX && ldc <= INT32_MAX) {
        pthread_once(&blas_once, blas_one_thread);
        /* acs == 1: A is M x K row-major with row stride ars; else A^T is
         * stored K x M with row stride acs */
        const bool plain = acs == 1;
        cblas_sgemm(CblasRowMajor, plain ? CblasNoTrans : CblasTrans, CblasNoTrans, (int)M, (int)N, (int)K, 1.0f, A,
                    (int)(plain ? ars : acs), B, (int)ldb, 1.0f, C, (int)ldc);
        return;
    }
#endif
    nm_gemm_nn(M, N, K, A, ars, acs, B, ldb, C, ldc);
}

