/* test_train_gemm.c - the float32 product kernels of training: every kernel
 * family this CPU runs against a float64 product, on shapes that exercise
 * every edge (rows, columns and k not multiples of the tiles), and the
 * property that makes training reproducible: an element's bits do not
 * depend on where the caller cuts the matrix. */
#include "testlib.h"
#include "train/gemm.h"
#include "base/base.h"
#include "base/threads.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static nm_rng RNG;

static float *rnd(int64_t n) {
    float *p = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) p[i] = (float)(2 * nm_rng_uniform(&RNG) - 1);
    return p;
}

/* float32 error bound for a k-term sum of products of numbers in [-1, 1]:
 * a few ulps times k is generous; a wrong index is off by O(1). */
static void check_close(nm_test *t, const char *what, const float *got, const double *ref, int64_t n, int64_t k) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)got[i] - ref[i]));
    CHECKF(t, worst < 1e-6 * (double)(k + 8), "%s: max error %.3g", what, worst);
}

static void test_nt(nm_test *t) {
    const int64_t shapes[][3] = {{1, 1, 1}, {5, 7, 3}, {4, 4, 16}, {9, 6, 33}, {17, 13, 100}, {3, 70, 256}, {64, 9, 8}};
    for (int impl = NM_GEMM_GENERIC; impl <= NM_GEMM_AVX512; impl++) {
        if (!nm_gemm_available((nm_gemm_impl)impl)) continue;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], lda = K + 3, ldb = K + 1, ldc = N + 2;
            float *A = rnd(M * lda), *B = rnd(N * ldb), *C = rnd(M * ldc), *C0 = malloc((size_t)(M * ldc) * 4);
            memcpy(C0, C, (size_t)(M * ldc) * 4);
            double *ref = calloc((size_t)(M * N), sizeof(double));
            for (int64_t m = 0; m < M; m++)
                for (int64_t n = 0; n < N; n++) {
                    double acc = 0;
                    for (int64_t k = 0; k < K; k++) acc += (double)A[m * lda + k] * B[n * ldb + k];
                    ref[m * N + n] = acc + C0[m * ldc + n];
                }
            nm_gemm_nt_impl((nm_gemm_impl)impl, M, N, K, A, lda, B, ldb, C, ldc, true);
            float *got = malloc((size_t)(M * N) * 4);
            for (int64_t m = 0; m < M; m++) memcpy(got + m * N, C + m * ldc, (size_t)N * 4);
            char what[64];
            snprintf(what, sizeof what, "nt %s %lldx%lldx%lld", nm_gemm_name((nm_gemm_impl)impl), (long long)M,
                     (long long)N, (long long)K);
            check_close(t, what, got, ref, M * N, K);
            /* padding between rows untouched */
            bool pad = true;
            for (int64_t m = 0; m < M; m++) pad &= C[m * ldc + N] == C0[m * ldc + N] && C[m * ldc + N + 1] == C0[m * ldc + N + 1];
            CHECKF(t, pad, "%s wrote outside C", what);
            free(A), free(B), free(C), free(C0), free(ref), free(got);
        }
    }
}

static void test_nn(nm_test *t) {
    const int64_t shapes[][3] = {{1, 1, 1}, {5, 7, 3}, {4, 64, 16}, {9, 70, 33}, {17, 130, 10}, {3, 8, 256}, {6, 33, 1}};
    for (int impl = NM_GEMM_GENERIC; impl <= NM_GEMM_AVX512; impl++) {
        if (!nm_gemm_available((nm_gemm_impl)impl)) continue;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int trans = 0; trans < 2; trans++) {
                int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], ldb = N + 5, ldc = N + 3;
                /* A as [M x K] (ars = K+1, acs = 1) or stored transposed [K x M] */
                int64_t ars = trans ? 1 : K + 1, acs = trans ? M + 2 : 1;
                float *A = rnd(trans ? K * (M + 2) : M * (K + 1)), *B = rnd(K * ldb), *C = rnd(M * ldc);
                float *C0 = malloc((size_t)(M * ldc) * 4);
                memcpy(C0, C, (size_t)(M * ldc) * 4);
                double *ref = calloc((size_t)(M * N), sizeof(double));
                for (int64_t m = 0; m < M; m++)
                    for (int64_t n = 0; n < N; n++) {
                        double acc = C0[m * ldc + n];
                        for (int64_t k = 0; k < K; k++) acc += (double)A[m * ars + k * acs] * B[k * ldb + n];
                        ref[m * N + n] = acc;
                    }
                nm_gemm_nn_impl((nm_gemm_impl)impl, M, N, K, A, ars, acs, B, ldb, C, ldc);
                float *got = malloc((size_t)(M * N) * 4);
                for (int64_t m = 0; m < M; m++) memcpy(got + m * N, C + m * ldc, (size_t)N * 4);
                char what[64];
                snprintf(what, sizeof what, "nn%s %s %lldx%lldx%lld", trans ? "(A^T)" : "",
                         nm_gemm_name((nm_gemm_impl)impl), (long long)M, (long long)N, (long long)K);
                check_close(t, what, got, ref, M * N, K);
                bool pad = true;
                for (int64_t m = 0; m < M; m++) pad &= memcmp(C + m * ldc + N, C0 + m * ldc + N, 12) == 0;
                CHECKF(t, pad, "%s wrote outside C", what);
                free(A), free(B), free(C), free(C0), free(ref), free(got);
            }
    }
}

/* The same element computed as part of different sub-matrices (as threads
 * cut them) has the same bits; nn split along K in consecutive calls too. */
static void test_split_invariance(nm_test *t) {
    int64_t M = 23, N = 45, K = 77;
    float *A = rnd(M * K), *B = rnd(N * K), *Bn = rnd(K * N);
    float *C1 = calloc((size_t)(M * N), 4), *C2 = calloc((size_t)(M * N), 4);
    nm_gemm_nt(M, N, K, A, K, B, K, C1, N, false);
    for (int64_t m0 = 0; m0 < M; m0 += 5) /* odd pieces: 5 rows x 7 columns */
        for (int64_t n0 = 0; n0 < N; n0 += 7)
            nm_gemm_nt(M - m0 < 5 ? M - m0 : 5, N - n0 < 7 ? N - n0 : 7, K, A + m0 * K, K, B + n0 * K, K,
                       C2 + m0 * N + n0, N, false);
    CHECK(t, memcmp(C1, C2, (size_t)(M * N) * 4) == 0);
    memset(C1, 0, (size_t)(M * N) * 4);
    memset(C2, 0, (size_t)(M * N) * 4);
    nm_gemm_nn(M, N, K, A, K, 1, Bn, N, C1, N);
    for (int64_t m0 = 0; m0 < M; m0 += 3)
        for (int64_t n0 = 0; n0 < N; n0 += 19)
            for (int64_t k0 = 0; k0 < K; k0 += 30)
                nm_gemm_nn(M - m0 < 3 ? M - m0 : 3, N - n0 < 19 ? N - n0 : 19, K - k0 < 30 ? K - k0 : 30,
                           A + m0 * K + k0, K, 1, Bn + k0 * N + n0, N, C2 + m0 * N + n0, N);
    CHECK(t, memcmp(C1, C2, (size_t)(M * N) * 4) == 0);
    printf("# gemm kernels: %s\n", nm_gemm_name(nm_gemm_best()));
    free(A), free(B), free(Bn), free(C1), free(C2);
}

/* Full training's weight gradient, dW += dy^T x (nm_gemm_nn_dw): against a
 * float64 product, dy read transposed through its strides (as ops.c does)
 * and as a plain matrix, on a product big enough for the OpenBLAS path when
 * the build has it and on a small one that never takes it; the bits of an
 * element do not depend on the rows the part has (threads cut M). */
static void test_dw_product(nm_test *t) {
    const int64_t shapes[][3] = {{256, 512, 128}, {96, 70, 33}}; /* m_total, N, K (tokens) */
    for (size_t s = 0; s < 2; s++) {
        const int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *dy = rnd(K * M), *x = rnd(K * N), *C0 = rnd(M * N);
        for (int layout = 0; layout < 2; layout++) {
            /* layout 0: dy stored K x M (A = dy^T: ars 1, acs M); 1: A is M x K */
            float *A = layout ? rnd(M * K) : dy;
            const int64_t ars = layout ? K : 1, acs = layout ? 1 : M;
            double *ref = malloc((size_t)(M * N) * sizeof(double));
            for (int64_t m = 0; m < M; m++)
                for (int64_t n = 0; n < N; n++) {
                    double acc = C0[m * N + n];
                    for (int64_t k = 0; k < K; k++) acc += (double)A[m * ars + k * acs] * x[k * N + n];
                    ref[m * N + n] = acc;
                }
            float *C1 = malloc((size_t)(M * N) * 4), *C2 = malloc((size_t)(M * N) * 4);
            memcpy(C1, C0, (size_t)(M * N) * 4);
            nm_gemm_nn_dw(M, M, N, K, A, ars, acs, x, N, C1, N);
            check_close(t, layout ? "dW product (plain A)" : "dW product (transposed A)", C1, ref, M * N, K + 1);
            const int parts[] = {2, 3, 7, 40};
            for (int p = 0; p < 4; p++) {
                memcpy(C2, C0, (size_t)(M * N) * 4);
                for (int i = 0; i < parts[p]; i++) {
                    int64_t m0, m1;
                    nm_split_range(M, i, parts[p], 1, &m0, &m1);
                    nm_gemm_nn_dw(M, m1 - m0, N, K, A + m0 * ars, ars, acs, x, N, C2 + m0 * N, N);
                }
                CHECKF(t, memcmp(C1, C2, (size_t)(M * N) * 4) == 0, "%lld x %lld x %lld in %d parts: other bits",
                       (long long)M, (long long)N, (long long)K, parts[p]);
            }
            if (s == 0 && layout == 0)
                printf("# dW product %lldx%lldx%lld: %s\n", (long long)M, (long long)N, (long long)K,
                       nm_gemm_dw_uses_blas(M, N, K, ars, acs) ? "OpenBLAS" : "nomoat's kernels");
            CHECK(t, !nm_gemm_dw_uses_blas(96, 70, 33, ars, acs)); /* small: always ours */
            free(ref), free(C1), free(C2);
            if (layout) free(A);
        }
        free(dy), free(x), free(C0);
    }
}

/* The vectorised exp against libm's, over the range softmax uses. */
static void test_exp_row(nm_test *t) {
    int64_t n = 4099;
    float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) x[i] = y[i] = (float)(-100.0 + 110.0 * (double)i / (double)n);
    x[7] = y[7] = -INFINITY;
    double sum = nm_exp_row(x, n, 3.0f), ref = 0, worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = y[i] - 3.0f < -87.0f ? 0.0 : exp((double)(y[i] - 3.0f));
        ref += e;
        if (e > 0) worst = fmax(worst, fabs(x[i] - e) / e);
        else CHECK(t, x[i] == 0);
    }
    CHECKF(t, worst < 5e-7, "exp relative error %.3g", worst);
    CHECKF(t, fabs(sum - ref) < 1e-6 * ref, "sum %.9g vs %.9g", sum, ref);
    free(x), free(y);
}

/* The fast row decoders give exactly the reference decoders' values. */
static void test_row_decoders(nm_test *t) {
    int64_t n = 32 * 37;
    uint8_t *raw = malloc((size_t)n * 2);
    for (int64_t i = 0; i < n * 2; i++) raw[i] = (uint8_t)nm_rng_u64(&RNG);
    float *a = malloc((size_t)n * 4), *b = malloc((size_t)n * 4);
    nm_err err = {0};
    /* random bits: every half-float value, NaNs and infinities included */
    const nm_type types[] = {NM_TYPE_F16, NM_TYPE_BF16, NM_TYPE_Q4_0, NM_TYPE_Q8_0};
    void (*const fast[])(const void *, float *, int64_t) = {nm_f16_row_to_f32, nm_bf16_row_to_f32, nm_q4_0_row_to_f32,
                                                           nm_q8_0_row_to_f32};
    for (int k = 0; k < 4; k++) {
        CHECK_OK(t, nm_dequantize(types[k], raw, a, n, &err), err);
        fast[k](raw, b, n);
        /* the same bits, except that NaNs may come back quieted (hardware
         * F16 conversion): a NaN weight is garbage either way */
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) bad += !(memcmp(a + i, b + i, 4) == 0 || (isnan(a[i]) && isnan(b[i])));
        CHECKF(t, bad == 0, "%s decoder differs from the reference in %lld values", nm_type_name(types[k]),
               (long long)bad);
    }
    free(raw), free(a), free(b);
}

int main(void) {
    nm_rng_seed(&RNG, 77);
    nm_test_run("row_decoders_exact", test_row_decoders);
    nm_test_run("exp_row", test_exp_row);
    nm_test_run("nt_every_kernel", test_nt);
    nm_test_run("nn_every_kernel", test_nn);
    nm_test_run("split_invariance", test_split_invariance);
    nm_test_run("dw_product", test_dw_product);
    return nm_test_finish();
}
