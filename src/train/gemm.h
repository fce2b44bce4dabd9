/*
 * gemm.h - float32 matrix products for training, single-threaded (callers
 * split the work), with AVX-512 and AVX2 kernels picked at run time and a
 * portable C fallback.
 *
 * Reproducibility: each output element is computed by the same sequence of
 * operations wherever it falls in a kernel tile (edge rows reuse the full
 * tile code on a repeated row, edge columns use masked loads), so splitting
 * M or N differently between threads never changes a bit.  Only the kernel
 * family (AVX-512 / AVX2 / C) changes results, i.e. the machine.
 */
#ifndef NM_TRAIN_GEMM_H
#define NM_TRAIN_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* C[m][n] (+)= sum_k A[m*lda + k] * B[n*ldb + k]       ("dot" form: rows
 * of A and B both run along k).  accumulate: add to C, else overwrite. */
void nm_gemm_nt(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                float *C, int64_t ldc, bool accumulate);

/* C[m][n] += sum_k A[m*ars + k*acs] * B[k*ldb + n]      ("axpy" form: rows
 * of B and C run along n; A may be read transposed through its strides).
 * The sum runs over k in increasing order starting from C's value, so
 * splitting K into consecutive calls gives the same bits. */
void nm_gemm_nn(int64_t M, int64_t N, int64_t K, const float *A, int64_t ars, int64_t acs, const float *B,
                int64_t ldb, float *C, int64_t ldc);

/* Rows of half floats to float, exactly (hardware conversion when the CPU
 * has it; NaNs may come back quieted). */
void nm_f16_row_to_f32(const void *src, float *dst, int64_t n);
void nm_bf16_row_to_f32(const void *src, float *dst, int64_t n);
/* Q4_0 / Q8_0 blocks to float, the same values as the reference decoders
 * of src/tensor/quants.c (vectorised with AVX-512, the reference otherwise). */
void nm_q4_0_row_to_f32(const void *src, float *dst, int64_t n);
void nm_q8_0_row_to_f32(const void *src, float *dst, int64_t n);

/* x[i] = exp(x[i] - sub) for i < n; returns the sum of the results.
 * Inputs below -87 (and -inf: masked scores) give exactly 0.  Vectorised
 * with a polynomial of ~1 ulp where the CPU has AVX-512, expf otherwise;
 * the summation order is fixed. */
double nm_exp_row(float *x, int64_t n, float sub);

/* The weight-gradient product of full training, dW = dy^T x: C += A B as
 * nm_gemm_nn, for a part (M rows) of a product whose whole height is
 * m_total.  Built with OpenBLAS (`make` finds it through pkg-config; BLAS=0
 * leaves it out), products of at least NM_GEMM_BLAS_MIN multiply-adds over
 * the whole height go to its sgemm, one thread each (measured on Zen 4, one
 * core, K = 128 tokens: 97-103 vs 76-89 GFLOP/s for our nn kernel; at the
 * other shapes training calls, the forward's 16-row tiles and dx's
 * 128-row panels, our kernels are as fast or faster, so they stay ours).
 * The path depends only on the whole product, so every part of a split
 * takes the same one, and OpenBLAS gives an element the same bits whatever
 * rows the part has (tests/test_train_gemm.c); unlike nm_gemm_nn, a split
 * of K changes bits (training never splits K here).  A must be readable as
 * a matrix (ars == 1 or acs == 1), else this is nm_gemm_nn. */
#define NM_GEMM_BLAS_MIN (1ll << 24)
void nm_gemm_nn_dw(int64_t m_total, int64_t M, int64_t N, int64_t K, const float *A, int64_t ars, int64_t acs,
                   const float *B, int64_t ldb, float *C, int64_t ldc);
/* Whether nm_gemm_nn_dw sends a product of this whole size to OpenBLAS. */
bool nm_gemm_dw_uses_blas(int64_t m_total, int64_t N, int64_t K, int64_t ars, int64_t acs);

/* Kernel families; AUTO picks the best this CPU runs. */
typedef enum nm_gemm_impl { NM_GEMM_AUTO = 0, NM_GEMM_GENERIC, NM_GEMM_AVX2, NM_GEMM_AVX512 } nm_gemm_impl;
/* The family AUTO picks on this CPU, and whether impl can run here. */
nm_gemm_impl nm_gemm_best(void);
bool nm_gemm_available(nm_gemm_impl impl);
const char *nm_gemm_name(nm_gemm_impl impl);
/* The same products with an explicit family (tests compare them). */
void nm_gemm_nt_impl(nm_gemm_impl impl, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                     const float *B, int64_t ldb, float *C, int64_t ldc, bool accumulate);
void nm_gemm_nn_impl(nm_gemm_impl impl, int64_t M, int64_t N, int64_t K, const float *A, int64_t ars, int64_t acs,
                     const float *B, int64_t ldb, float *C, int64_t ldc);

#endif
