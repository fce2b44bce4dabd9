/* test_kernels.c - every typed dot-product kernel and the threaded matmul
 * against a float64 reference built from the scalar dequantizers of
 * quants.c (the ggml reference conversions), every instruction-set level
 * against the scalar level, and the thread pool.
 *
 * Scalar level, two references per kernel:
 *  - exact: the weight rows and the converted activation row both
 *    dequantized, multiplied and summed in double.  The kernels do integer
 *    block sums with float scales, so they must agree to float rounding
 *    (relative 1e-5 of sum |w x|): any packing or scale bug shows here.
 *  - original: against the unconverted float activations, within the error
 *    the activation conversion may introduce (one quantization step of the
 *    block per element: sum |w| * amax_block / 127; F16/BF16 rounding).
 * Weights come from the reference quantizers where they exist, from random
 * block bytes (with sane scales) for the K-quants, and from real llama.cpp
 * tensors of the t256 files.
 *
 * SIMD levels (each one this CPU runs): quantized and BF16 weights must give
 * the scalar level's results bit for bit (the kernels' contract, see
 * KERNELS.md); F32/F16 within the bound of a different float summation
 * order; every level bit-identical to itself across batch sizes, row slices
 * and thread counts; and the golden logits of llama.cpp reproduced with the
 * models run at each level (in process, and test_model re-run whole with
 * NOMOAT_ISA). */
#include "testlib.h"
#include "base/base.h"
#include "base/threads.h"
#include "tensor/kernels.h"
#include "tensor/kernels_impl.h"
#include "tensor/matmul.h"
#include "tensor/quants.h"
#include "tensor/types.h"

#include <jansson.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void random_floats(nm_rng *r, float *x, int64_t n, double scale) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)(nm_rng_normal(r) * scale);
    /* a few outliers, as real activations have */
    for (int64_t i = 0; i < n; i += 97) x[i] *= 6.0f;
}

static void put_half(uint8_t *p, float f) {
    uint16_t h = nm_f32_to_f16(f);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* rows x cols weights of type t: quantized from random floats when a
 * quantizer exists, otherwise random block bytes with the scale fields set
 * to small positive halves (any byte pattern is a valid block). */
static uint8_t *make_weights(nm_rng *r, nm_type t, int64_t rows, int64_t cols) {
    size_t rb = nm_type_row_bytes(t, cols);
    uint8_t *w = malloc(rb * (size_t)rows);
    if (nm_type_can_quantize(t)) {
        float *f = malloc((size_t)(rows * cols) * sizeof *f);
        random_floats(r, f, rows * cols, 0.05);
        nm_err err = {0};
        for (int64_t i = 0; i < rows; i++) nm_quantize(t, f + i * cols, w + (size_t)i * rb, cols, &err);
        free(f);
        return w;
    }
    for (size_t i = 0; i < rb * (size_t)rows; i++) w[i] = (uint8_t)nm_rng_u64(r);
    size_t bb = nm_type_block_bytes(t);
    for (size_t b = 0; b < rb * (size_t)rows / bb; b++) {
        uint8_t *blk = w + b * bb;
        float d = (float)(0.001 + 0.01 * nm_rng_uniform(r));
        switch (t) {
        case NM_TYPE_Q4_K:
        case NM_TYPE_Q5_K:
            put_half(blk, d);
            put_half(blk + 2, d * 0.5f);
            break;
        case NM_TYPE_Q6_K: put_half(blk + offsetof(nm_block_q6_k, d), d * 0.1f); break;
        default: break;
        }
    }
    return w;
}

/* The activation row as the kernel sees it, back in floats. */
static void act_to_float(nm_type at, const void *act, float *out, int64_t n) {
    nm_err err = {0};
    if (at == NM_TYPE_Q8_1) {
        const uint8_t *b = act;
        for (int64_t i = 0; i < n / 32; i++, b += sizeof(nm_block_q8_1)) {
            float d = nm_f16_to_f32(nm_rd_u16(b));
            for (int j = 0; j < 32; j++) out[i * 32 + j] = d * (float)(int8_t)b[4 + j];
        }
        return;
    }
    nm_dequantize(at, act, out, n, &err);
}

typedef struct kernel_case {
    nm_type type;
    int64_t cols;
} kernel_case;

static void check_kernel(nm_test *t, nm_type type, const uint8_t *w, int64_t rows, int64_t cols, nm_rng *r,
                         const char *what) {
    const nm_kernel *k = nm_kernel_get(type);
    if (!CHECKF(t, k != NULL, "no kernel for %s", nm_type_name(type))) return;
    size_t rb = nm_type_row_bytes(type, cols);
    float *x = malloc((size_t)cols * sizeof *x), *xq = malloc((size_t)cols * sizeof *xq);
    float *wf = malloc((size_t)cols * sizeof *wf);
    void *act = malloc(nm_act_row_bytes(k->act_type, cols));
    random_floats(r, x, cols, 1.0);
    nm_act_from_float(k->act_type, x, act, cols);
    act_to_float(k->act_type, act, xq, cols);
    const int64_t blk = k->act_type == NM_TYPE_Q8_K ? 256 : 32;
    nm_err err = {0};
    int bad_exact = 0, bad_orig = 0;
    for (int64_t i = 0; i < rows; i++) {
        CHECK_OK(t, nm_dequantize(type, w + (size_t)i * rb, wf, cols, &err), err);
        double exact = 0, mag = 0, orig = 0, bound = 0;
        for (int64_t j = 0; j < cols; j++) {
            exact += (double)wf[j] * xq[j];
            mag += fabs((double)wf[j] * xq[j]);
            orig += (double)wf[j] * x[j];
        }
        if (k->act_type == NM_TYPE_Q8_1) {
            /* Q4_1/Q5_1 add min * s per block, s = d * sum(q) stored as a
             * half: the kernel uses that stored s, so must the reference. */
            const uint8_t *row = w + (size_t)i * rb, *a = act;
            for (int64_t b = 0; b < cols / 32; b++) {
                const double m = nm_f16_to_f32(nm_rd_u16(row + (size_t)b * nm_type_block_bytes(type) + 2));
                const double d = nm_f16_to_f32(nm_rd_u16(a + b * 36)), s = nm_f16_to_f32(nm_rd_u16(a + b * 36 + 2));
                int sq = 0;
                for (int j = 0; j < 32; j++) sq += (int8_t)a[b * 36 + 4 + j];
                exact += m * (s - d * sq);
            }
        }
        /* what converting the activations may cost */
        for (int64_t b0 = 0; b0 < cols; b0 += blk) {
            double amax = 0, wsum = 0;
            for (int64_t j = b0; j < b0 + blk && j < cols; j++) {
                amax = fmax(amax, fabs(x[j]));
                wsum += fabs(wf[j]);
            }
            if (k->act_type == NM_TYPE_F16) bound += wsum * amax * 0x1p-11;
            else if (k->act_type == NM_TYPE_BF16) bound += wsum * amax * 0x1p-8;
            else if (k->act_type != NM_TYPE_F32) bound += wsum * amax / 127.0;
        }
        const float got = k->vec_dot(cols, w + (size_t)i * rb, act);
        if (fabs(got - exact) > 1e-5 * mag + 1e-6 && bad_exact++ < 3)
            CHECKF(t, false, "%s %s row %lld: kernel %.7g vs exact %.7g (|wx| %.3g)", nm_type_name(type), what,
                   (long long)i, got, exact, mag);
        if (fabs(got - orig) > bound * 1.01 + 1e-5 * mag + 1e-6 && bad_orig++ < 3)
            CHECKF(t, false, "%s %s row %lld: kernel %.7g vs float input %.7g beyond %.3g", nm_type_name(type), what,
                   (long long)i, got, orig, bound);
    }
    free(x);
    free(xq);
    free(wf);
    free(act);
}

static void test_kernels_random(nm_test *t) {
    static const kernel_case cases[] = {
        {NM_TYPE_F32, 100},  {NM_TYPE_F16, 100},  {NM_TYPE_BF16, 100}, {NM_TYPE_Q4_0, 512}, {NM_TYPE_Q4_1, 512},
        {NM_TYPE_Q5_0, 512}, {NM_TYPE_Q5_1, 512}, {NM_TYPE_Q8_0, 512}, {NM_TYPE_Q4_K, 512}, {NM_TYPE_Q5_K, 512},
        {NM_TYPE_Q6_K, 768},
    };
    nm_rng r;
    nm_rng_seed(&r, 42);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const int64_t rows = 9;
        uint8_t *w = make_weights(&r, cases[i].type, rows, cases[i].cols);
        check_kernel(t, cases[i].type, w, rows, cases[i].cols, &r, "random");
        free(w);
    }
}

/* Real tensors written by llama.cpp's quantize tool. */
static void test_kernels_real_tensors(nm_test *t) {
    static const struct {
        const char *file, *tensor;
        nm_type type;
    } cases[] = {
        {"models/t256-q8_0.gguf", "blk.0.ffn_down.weight", NM_TYPE_Q8_0},
        {"models/t256-q4_0.gguf", "blk.0.ffn_down.weight", NM_TYPE_Q4_0},
        {"models/t256-q4_k_m.gguf", "blk.0.ffn_down.weight", NM_TYPE_Q4_K},
        {"models/t256-q4_k_m.gguf", "blk.1.ffn_down.weight", NM_TYPE_Q6_K},
        {"models/t256-q6_k.gguf", "output.weight", NM_TYPE_Q6_K},
        {"models/llama-2-tiny-random.gguf", "output.weight", NM_TYPE_F16},
        {"models/stories260K-bf16.gguf", "blk.0.ffn_down.weight", NM_TYPE_BF16},
        {"models/stories260K.gguf", "blk.0.ffn_down.weight", NM_TYPE_F32},
    };
    nm_rng r;
    nm_rng_seed(&r, 7);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nm_gguf *g;
        nm_err err = {0};
        if (!CHECK_OK(t, nm_gguf_open(nm_test_shared(cases[i].file), &g, &err), err)) continue;
        const nm_gguf_tensor *te = nm_gguf_find_tensor(g, cases[i].tensor);
        if (CHECKF(t, te && te->type == (uint32_t)cases[i].type, "%s: %s missing or not %s", cases[i].file,
                   cases[i].tensor, nm_type_name(cases[i].type))) {
            int64_t rows = te->ne[1] < 16 ? te->ne[1] : 16;
            check_kernel(t, cases[i].type, te->data, rows, te->ne[0], &r, cases[i].file);
        }
        nm_gguf_free(g);
    }
}

/* Pools of 1, 2 and 11 threads: every split the matmul tests compare (11:
 * odd, and more threads than the work split has slices, so threads share
 * them and steal from several). */
static void pools_new(nm_test *t, nm_pool **pools) {
    static const int sizes[3] = {1, 2, 11};
    nm_err err = {0};
    for (int p = 0; p < 3; p++) CHECK_OK(t, nm_pool_new(sizes[p], &pools[p], &err), err);
}

/* The threaded, tiled scalar matmul gives exactly the per-row kernel
 * results, for any thread count and for row slices. */
static void test_matmul_threads(nm_test *t) {
    static const nm_type types[] = {NM_TYPE_F32, NM_TYPE_F16, NM_TYPE_Q8_0, NM_TYPE_Q4_0, NM_TYPE_Q4_K, NM_TYPE_Q6_K};
    nm_rng r;
    nm_rng_seed(&r, 3);
    nm_pool *pools[3] = {NULL};
    nm_err err = {0};
    pools_new(t, pools);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int64_t rows = 37, cols = 512, n_tok = 6;
        uint8_t *w = make_weights(&r, types[ti], rows, cols);
        nm_mat m;
        CHECK_OK(t, nm_mat_init_isa(&m, "w", types[ti], cols, rows, w, NM_ISA_SCALAR, &err), err);
        const nm_kernel *k = nm_kernel_get(types[ti]);
        float *x = malloc(sizeof(float) * (size_t)(n_tok * cols));
        random_floats(&r, x, n_tok * cols, 1.0);
        float *want = malloc(sizeof(float) * (size_t)(n_tok * rows));
        void *act = malloc(nm_act_row_bytes(k->act_type, cols));
        for (int64_t tok = 0; tok < n_tok; tok++) {
            nm_act_from_float(k->act_type, x + tok * cols, act, cols);
            for (int64_t i = 0; i < rows; i++)
                want[tok * rows + i] = k->vec_dot(cols, w + (size_t)i * m.row_bytes, act);
        }
        void *scratch = malloc(nm_matmul_scratch_bytes(types[ti], cols, n_tok) + 1);
        float *y = malloc(sizeof(float) * (size_t)(n_tok * rows));
        for (int p = 0; p < 3; p++) {
            for (int64_t nt = 1; nt <= n_tok; nt += n_tok - 1) {
                memset(y, 0xff, sizeof(float) * (size_t)(n_tok * rows));
                nm_matmul(pools[p], &m, x, nt, y, scratch);
                CHECKF(t, memcmp(y, want, sizeof(float) * (size_t)(nt * rows)) == 0,
                       "%s: matmul of %lld tokens on %d threads differs", nm_type_name(types[ti]), (long long)nt,
                       nm_pool_size(pools[p]));
            }
            /* rows 5..30 into a strided output */
            float ys[6 * 40];
            nm_matmul_rows(pools[p], &m, 5, 30, x, n_tok, ys, 40, scratch);
            bool same = true;
            for (int64_t tok = 0; tok < n_tok; tok++)
                for (int64_t i = 5; i < 30; i++) same &= ys[tok * 40 + i - 5] == want[tok * rows + i];
            CHECKF(t, same, "%s: row slice differs on %d threads", nm_type_name(types[ti]), nm_pool_size(pools[p]));
        }
        free(w);
        free(x);
        free(want);
        free(act);
        free(scratch);
        free(y);
    }
    for (int p = 0; p < 3; p++) nm_pool_free(pools[p]);
}

/* nm_matmul_multi (several matrices of one input in one pool region, as
 * Q/K/V and gate/up run): every output has nm_matmul's bits, at every level,
 * on any thread count, for single tokens and batches, with more matrices
 * than one region takes, with row counts that are not whole tiles, so
 * chunks end at matrix boundaries and the prefetch hint crosses them, and
 * with neighbours whose activation layouts differ (a region and a
 * conversion each). */
static void test_matmul_multi(nm_test *t) {
    static const nm_type groups[][2] = {
        {NM_TYPE_Q4_0, NM_TYPE_Q8_0}, {NM_TYPE_Q4_K, NM_TYPE_Q6_K}, {NM_TYPE_F16, NM_TYPE_F16},
        {NM_TYPE_F32, NM_TYPE_F32},  {NM_TYPE_Q8_0, NM_TYPE_Q4_K}, {NM_TYPE_F16, NM_TYPE_Q4_0}};
    static const int64_t rows[] = {48, 37, 16, 100, 5, 64};
    enum { N = sizeof rows / sizeof rows[0] };
    const int64_t cols = 512, n_tok = 6;
    nm_rng r;
    nm_rng_seed(&r, 11);
    nm_pool *pools[3] = {NULL};
    nm_err err = {0};
    pools_new(t, pools);
    float *x = malloc(sizeof(float) * (size_t)(n_tok * cols));
    random_floats(&r, x, n_tok * cols, 1.0);
    for (int level = 0; level < NM_ISA_COUNT; level++) {
        if (!nm_isa_available((nm_isa)level)) continue;
        for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
            uint8_t *w[N];
            nm_mat m[N];
            const nm_mat *mp[N];
            float *want[N], *y[N];
            size_t sbytes = 0;
            int n = 0;
            for (int i = 0; i < N; i++) {
                const nm_type ty = groups[g][i % 2];
                w[i] = make_weights(&r, ty, rows[i], cols);
                CHECK_OK(t, nm_mat_init_isa(&m[i], "w", ty, cols, rows[i], w[i], (nm_isa)level, &err), err);
                mp[i] = &m[i];
                want[i] = malloc(sizeof(float) * (size_t)(n_tok * rows[i]));
                y[i] = malloc(sizeof(float) * (size_t)(n_tok * rows[i]));
                const size_t sb = nm_matmul_scratch_bytes(ty, cols, n_tok);
                if (sb > sbytes) sbytes = sb;
                n++;
            }
            void *scratch = malloc(sbytes + 1);
            for (int64_t nt = 1; nt <= n_tok; nt += n_tok - 1)
                for (int p = 0; p < 3; p++)
                    for (int cnt = 1; cnt <= n; cnt += cnt < 3 ? 2 : 3) { /* 1, 3, 6 matrices */
                        for (int i = 0; i < cnt; i++) {
                            nm_matmul(pools[p], &m[i], x, nt, want[i], scratch);
                            memset(y[i], 0xff, sizeof(float) * (size_t)(nt * rows[i]));
                        }
                        nm_matmul_multi(pools[p], mp, y, cnt, x, nt, scratch);
                        for (int i = 0; i < cnt; i++)
                            CHECKF(t, memcmp(y[i], want[i], sizeof(float) * (size_t)(nt * rows[i])) == 0,
                                   "%s %s: matrix %d of %d (%lld rows), %lld tokens, %d threads differs from nm_matmul",
                                   nm_isa_name((nm_isa)level), nm_type_name(m[i].type), i, cnt, (long long)rows[i],
                                   (long long)nt, nm_pool_size(pools[p]));
                    }
            for (int i = 0; i < n; i++) {
                free(w[i]);
                free(want[i]);
                free(y[i]);
            }
            free(scratch);
        }
    }
    free(x);
    for (int p = 0; p < 3; p++) nm_pool_free(pools[p]);
}

/* nm_matmul_glu (gate and up in one region, SwiGLU by the thread that
 * computed the rows, as generation's FFN runs): the same bits as the two
 * products by nm_matmul and the level's SwiGLU over whole rows, at every
 * level, packed or as stored, on 1-3 threads, for single tokens and
 * batches, with row counts that are and are not whole tiles. */
static void test_matmul_glu(nm_test *t) {
    static const nm_type types[] = {NM_TYPE_Q4_0, NM_TYPE_Q8_0, NM_TYPE_Q4_K, NM_TYPE_Q5_K, NM_TYPE_Q6_K, NM_TYPE_F16};
    static const int64_t rows[] = {37, 96};
    const int64_t cols = 512, n_tok = 6;
    nm_rng r;
    nm_rng_seed(&r, 12);
    nm_pool *pools[3] = {NULL};
    nm_err err = {0};
    pools_new(t, pools);
    float *x = malloc(sizeof(float) * (size_t)(n_tok * cols));
    random_floats(&r, x, n_tok * cols, 1.0);
    for (int level = 0; level < NM_ISA_COUNT; level++) {
        if (!nm_isa_available((nm_isa)level)) continue;
        const nm_attn_kernel *ak = nm_attn_kernel_get((nm_isa)level);
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
            for (size_t ri = 0; ri < sizeof rows / sizeof rows[0]; ri++)
                for (int packed = 0; packed < 2; packed++) {
                    const int64_t R = rows[ri];
                    uint8_t *wg = make_weights(&r, types[ti], R, cols), *wu = make_weights(&r, types[ti], R, cols);
                    nm_mat g, u;
                    if (!CHECK_OK(t, nm_mat_init_isa(&g, "gate", types[ti], cols, R, wg, (nm_isa)level, &err), err) ||
                        !CHECK_OK(t, nm_mat_init_isa(&u, "up", types[ti], cols, R, wu, (nm_isa)level, &err), err)) {
                        free(wg);
                        free(wu);
                        continue;
                    }
                    const size_t n = (size_t)(n_tok * R);
                    float *wg_y = malloc(sizeof(float) * n), *wu_y = malloc(sizeof(float) * n);
                    float *yg = malloc(sizeof(float) * n), *yu = malloc(sizeof(float) * n);
                    void *scratch = malloc(nm_matmul_scratch_bytes(types[ti], cols, n_tok) + 1);
                    /* the reference before packing (packing rewrites the bytes in place) */
                    nm_matmul(pools[0], &g, x, n_tok, wg_y, scratch);
                    nm_matmul(pools[0], &u, x, n_tok, wu_y, scratch);
                    for (int64_t tok = 0; tok < n_tok; tok++) ak->swiglu(wg_y + tok * R, wg_y + tok * R, wu_y + tok * R, R);
                    if (packed) {
                        CHECK_OK(t, nm_mat_pack(&g, wg, &err), err);
                        CHECK_OK(t, nm_mat_pack(&u, wu, &err), err);
                    }
                    for (int64_t nt = 1; nt <= n_tok; nt += n_tok - 1)
                        for (int p = 0; p < 3; p++) {
                            memset(yg, 0xff, sizeof(float) * n);
                            memset(yu, 0xff, sizeof(float) * n);
                            nm_matmul_glu(pools[p], &g, &u, x, nt, yg, yu, ak->swiglu, scratch);
                            CHECKF(t, memcmp(yg, wg_y, sizeof(float) * (size_t)(nt * R)) == 0,
                                   "%s %s%s, %lld rows, %lld tokens, %d threads: differs from the products + SwiGLU",
                                   nm_isa_name((nm_isa)level), nm_type_name(types[ti]), packed ? " packed" : "",
                                   (long long)R, (long long)nt, nm_pool_size(pools[p]));
                        }
                    free(wg);
                    free(wu);
                    free(wg_y);
                    free(wu_y);
                    free(yg);
                    free(yu);
                    free(scratch);
                }
    }
    free(x);
    for (int p = 0; p < 3; p++) nm_pool_free(pools[p]);
}

static void test_f16_conversion(nm_test *t) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float a = nm_kernel_f16_to_f32((uint16_t)h), b = nm_f16_to_f32((uint16_t)h);
        bool same = (a != a && b != b) || memcmp(&a, &b, sizeof a) == 0;
        if (!same && bad++ < 3) CHECKF(t, false, "half 0x%04x: %g vs %g", h, a, b);
    }
}

static void test_mat_init_errors(nm_test *t) {
    nm_mat m;
    nm_err err = {0};
    uint8_t buf[64] = {0};
    CHECK(t, nm_mat_init(&m, "w", NM_TYPE_Q2_K, 256, 1, buf, &err) == NM_ERR_UNSUPPORTED);
    CHECKF(t, strstr(err.msg, "q2_k") != NULL, "message: %s", err.msg);
    CHECK(t, nm_mat_init(&m, "w", NM_TYPE_Q4_0, 48, 1, buf, &err) == NM_ERR_FORMAT);
    CHECK(t, nm_mat_init(&m, "w", NM_TYPE_Q4_K, 128, 1, buf, &err) == NM_ERR_FORMAT);
    CHECK(t, nm_mat_init(&m, "w", NM_TYPE_Q4_0, 0, 1, buf, &err) == NM_ERR_FORMAT);
}

/* ---- thread pool ---- */

typedef struct count_task {
    atomic_int calls;
    atomic_int sum;
    int64_t n;
    int *hits;
} count_task;

static void count_fn(void *arg, int ith, int nth) {
    count_task *c = arg;
    atomic_fetch_add(&c->calls, 1);
    int64_t lo, hi;
    nm_split_range(c->n, ith, nth, 3, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) c->hits[i]++;
    atomic_fetch_add(&c->sum, ith);
}

/* Workers that finish 40 ms after the caller: it must wait for them. */
typedef struct slow_task {
    int done[4];
} slow_task;

static void slow_fn(void *arg, int ith, int nth) {
    slow_task *s = arg;
    (void)nth;
    if (ith == 0) return;
    nanosleep(&(struct timespec){0, 40 * 1000 * 1000}, NULL);
    s->done[ith] = 1;
}

static void test_pool(nm_test *t) {
    nm_err err = {0};
    for (int n = 1; n <= 6; n++) {
        nm_pool *p;
        if (!CHECK_OK(t, nm_pool_new(n, &p, &err), err)) continue;
        CHECK(t, nm_pool_size(p) == n);
        int hits[1000] = {0};
        count_task c = {.n = 1000, .hits = hits};
        atomic_init(&c.calls, 0);
        atomic_init(&c.sum, 0);
        for (int rep = 0; rep < 2000; rep++) nm_pool_run(p, count_fn, &c);
        CHECKF(t, atomic_load(&c.calls) == 2000 * n, "%d threads: %d calls", n, atomic_load(&c.calls));
        CHECK(t, atomic_load(&c.sum) == 2000 * n * (n - 1) / 2);
        bool each_once = true;
        for (int i = 0; i < 1000; i++) each_once &= hits[i] == 2000;
        CHECKF(t, each_once, "%d threads: split ranges overlap or leave gaps", n);
        nm_pool_free(p);
    }
    /* Regions far apart, so the workers have gone to sleep and must be
     * woken; and a region whose worker is slow, so the caller sleeps. */
    for (int n = 2; n <= 3; n++) {
        nm_pool *p;
        if (!CHECK_OK(t, nm_pool_new(n, &p, &err), err)) continue;
        count_task c = {.n = 0, .hits = NULL};
        atomic_init(&c.calls, 0);
        atomic_init(&c.sum, 0);
        for (int rep = 0; rep < 3; rep++) {
            nanosleep(&(struct timespec){0, 30 * 1000 * 1000}, NULL);
            nm_pool_run(p, count_fn, &c);
        }
        CHECKF(t, atomic_load(&c.calls) == 3 * n, "%d sleeping threads: %d calls", n, atomic_load(&c.calls));
        /* with region timing on (profiles): the caller's wall time covers
         * the 40 ms workers, and its wait is part of it; off, no counting */
        CHECK(t, nm_pool_times_get(p).regions == 0);
        nm_pool_set_timing(p, true);
        slow_task s = {{0}};
        nm_pool_run(p, slow_fn, &s);
        bool all = true;
        for (int i = 1; i < n; i++) all &= s.done[i] == 1;
        CHECKF(t, all, "%d threads: the caller returned before a slow worker finished", n);
        const nm_pool_times tm = nm_pool_times_get(p);
        CHECKF(t, tm.regions == 1 && tm.region_ns >= 40000000u && tm.wait_ns > 0 && tm.wait_ns <= tm.region_ns,
               "%d threads: %llu regions, %llu ns, waiting %llu", n, (unsigned long long)tm.regions,
               (unsigned long long)tm.region_ns, (unsigned long long)tm.wait_ns);
        nm_pool_set_timing(p, false);
        nm_pool_run(p, slow_fn, &s);
        CHECK(t, nm_pool_times_get(p).regions == 1 && nm_pool_times_get(p).region_ns == tm.region_ns);
        nm_pool_free(p);
    }
    /* one thread: the region is the caller's own work, no waiting */
    nm_pool *one;
    if (CHECK_OK(t, nm_pool_new(1, &one, &err), err)) {
        nm_pool_set_timing(one, true);
        slow_task s = {{0}};
        nm_pool_run(one, slow_fn, &s);
        CHECK(t, nm_pool_times_get(one).regions == 1 && nm_pool_times_get(one).wait_ns == 0);
        nm_pool_free(one);
    }
    CHECK(t, nm_pool_times_get(NULL).regions == 0);
    nm_pool *p;
    CHECK(t, nm_pool_new(0, &p, &err) == NM_ERR_ARG);
    CHECK(t, nm_cpu_count() >= 1);
}

/* ====================================================================== */
/* instruction-set levels                                                 */
/* ====================================================================== */

#if defined(__x86_64__)
/* Whether the kernel lists a CPU flag (external truth for what the levels'
 * detection says).  -1 when /proc/cpuinfo has no flags line. */
static int cpu_flag(const char *flag) {
    size_t len;
    char *s = nm_test_read("/proc/cpuinfo", &len);
    if (!s) return -1;
    char *line = strstr(s, "\nflags");
    int found = -1;
    if (line) {
        char *end = strchr(line + 1, '\n');
        if (end) *end = 0;
        found = 0;
        for (char *w = strtok(strchr(line, ':') ? strchr(line, ':') + 1 : line, " \t"); w; w = strtok(NULL, " \t"))
            if (strcmp(w, flag) == 0) found = 1;
    }
    free(s);
    return found;
}
#endif

/* Sets NOMOAT_ISA (NULL: unset), returning nothing; the tests restore the
 * caller's value at their end. */
static void set_isa_env(const char *v) {
    if (v) setenv("NOMOAT_ISA", v, 1);
    else unsetenv("NOMOAT_ISA");
}

static char *saved_isa_env(void) {
    const char *v = getenv("NOMOAT_ISA");
    return v ? strdup(v) : NULL;
}

static void test_isa_selection(nm_test *t) {
    char *saved = saved_isa_env();
    CHECK(t, nm_isa_available(NM_ISA_SCALAR));
    CHECK(t, nm_isa_available(nm_isa_best()));
    for (int i = 0; i < NM_ISA_COUNT; i++) {
        CHECK(t, nm_isa_from_name(nm_isa_name((nm_isa)i)) == i);
        if (nm_isa_available((nm_isa)i) && i != NM_ISA_SCALAR) CHECK(t, nm_isa_best() >= (nm_isa)i);
    }
    CHECK(t, nm_isa_from_name("AVX2") == NM_ISA_AVX2);
    CHECK(t, nm_isa_from_name("sse9") == -1);
#if defined(__x86_64__)
    /* the detection against the kernel's view of the CPU */
    if (cpu_flag("avx2") >= 0) {
        const bool avx2 = cpu_flag("avx2") == 1 && cpu_flag("fma") == 1 && cpu_flag("f16c") == 1;
        const bool avx512 = avx2 && cpu_flag("avx512f") == 1 && cpu_flag("avx512bw") == 1 &&
                            cpu_flag("avx512vl") == 1 && cpu_flag("avx512dq") == 1 && cpu_flag("avx512_vnni") == 1;
        CHECKF(t, nm_isa_available(NM_ISA_AVX2) == avx2, "avx2 level %d, /proc/cpuinfo says %d",
               nm_isa_available(NM_ISA_AVX2), avx2);
        CHECKF(t, nm_isa_available(NM_ISA_AVX512) == avx512, "avx512 level %d, /proc/cpuinfo says %d",
               nm_isa_available(NM_ISA_AVX512), avx512);
        CHECK(t, nm_cpu_has_avx512_bf16() == (avx512 && cpu_flag("avx512_bf16") == 1));
    }
    CHECK(t, !nm_isa_available(NM_ISA_NEON));
#elif defined(__aarch64__)
    CHECK(t, nm_isa_available(NM_ISA_NEON) && nm_isa_best() == NM_ISA_NEON);
    CHECK(t, !nm_isa_available(NM_ISA_AVX2) && !nm_isa_available(NM_ISA_AVX512));
#endif
    /* NOMOAT_ISA: unset or empty = best; a name = that level; errors name
     * the variable */
    nm_isa isa;
    nm_err err = {0};
    set_isa_env(NULL);
    CHECK(t, nm_isa_select(&isa, &err) == NM_OK && isa == nm_isa_best());
    set_isa_env("");
    CHECK(t, nm_isa_select(&isa, &err) == NM_OK && isa == nm_isa_best());
    set_isa_env("bogus");
    CHECK(t, nm_isa_select(&isa, &err) == NM_ERR_ARG && strstr(err.msg, "NOMOAT_ISA") != NULL);
    uint8_t blk[34] = {0};
    nm_mat m;
    CHECK(t, nm_mat_init(&m, "blk.0.attn_q.weight", NM_TYPE_Q8_0, 32, 1, blk, &err) == NM_ERR_ARG);
    CHECKF(t, strstr(err.msg, "NOMOAT_ISA") != NULL, "message: %s", err.msg);
    for (int i = 0; i < NM_ISA_COUNT; i++) {
        set_isa_env(nm_isa_name((nm_isa)i));
        const nm_status st = nm_isa_select(&isa, &err);
        if (nm_isa_available((nm_isa)i)) {
            CHECK(t, st == NM_OK && isa == (nm_isa)i);
            if (CHECK_OK(t, nm_mat_init(&m, "w", NM_TYPE_Q8_0, 32, 1, blk, &err), err))
                CHECKF(t, m.k->isa == (nm_isa)i, "Q8_0 at level %s runs %s kernels", nm_isa_name((nm_isa)i),
                       nm_isa_name(m.k->isa));
        } else {
            CHECKF(t, st == NM_ERR_UNSUPPORTED && strstr(err.msg, nm_isa_name((nm_isa)i)),
                   "NOMOAT_ISA=%s on a CPU without it: status %d (%s)", nm_isa_name((nm_isa)i), st, err.msg);
            CHECK(t, nm_mat_init_isa(&m, "w", NM_TYPE_Q8_0, 32, 1, blk, (nm_isa)i, &err) == NM_ERR_UNSUPPORTED);
        }
    }
    set_isa_env(saved);
    free(saved);
}

/* The activation side data, against its definition. */
static void test_act_extra(nm_test *t) {
    nm_rng r;
    nm_rng_seed(&r, 11);
    const int64_t n = 512;
    float x[512];
    random_floats(&r, x, n, 1.0);
    uint8_t act[2048];
    float extra[1024];
    /* Q8_0: scales as floats, then block sums */
    nm_act_from_float(NM_TYPE_Q8_0, x, act, n);
    CHECK(t, nm_act_extra_bytes(NM_TYPE_Q8_0, n) == (size_t)(n / 32) * 8);
    nm_act_extra(NM_TYPE_Q8_0, act, extra, n);
    bool ok = true;
    for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *blk = act + b * 34;
        int sum = 0;
        for (int j = 0; j < 32; j++) sum += (int8_t)blk[2 + j];
        int32_t got;
        memcpy(&got, (const uint8_t *)(extra + n / 32) + 4 * b, 4);
        ok &= extra[b] == nm_f16_to_f32(nm_rd_u16(blk)) && got == sum;
    }
    CHECK(t, ok);
    /* Q8_K: 32-element sums */
    nm_act_from_float(NM_TYPE_Q8_K, x, act, n);
    nm_act_extra(NM_TYPE_Q8_K, act, extra, n);
    ok = true;
    for (int64_t b = 0; b < n / 256; b++)
        for (int j = 0; j < 8; j++) {
            int sum = 0;
            for (int l = 0; l < 32; l++) sum += (int8_t)act[b * 292 + 4 + 32 * j + l];
            int16_t got;
            memcpy(&got, (const uint8_t *)extra + 2 * (8 * b + j), 2);
            ok &= got == sum;
        }
    CHECK(t, ok);
    /* F16 / BF16: the rounded values */
    nm_act_from_float(NM_TYPE_F16, x, act, n);
    nm_act_extra(NM_TYPE_F16, act, extra, n);
    ok = true;
    for (int64_t i = 0; i < n; i++) ok &= extra[i] == nm_f16_to_f32(nm_f32_to_f16(x[i]));
    CHECK(t, ok);
    nm_act_from_float(NM_TYPE_BF16, x, act, n);
    nm_act_extra(NM_TYPE_BF16, act, extra, n);
    ok = true;
    for (int64_t i = 0; i < n; i++) ok &= extra[i] == nm_bf16_to_f32(nm_f32_to_bf16(x[i]));
    CHECK(t, ok);
    CHECK(t, nm_act_extra_bytes(NM_TYPE_F32, n) == 0);
}

/* Each level's activation conversion gives the reference's bytes (rows and
 * side data) for finite input: random rows, rows with exact .5 ties after
 * scaling, zeros, a negative largest element, equal magnitudes of both
 * signs, tiny and huge values; rows of 16 blocks and of 24 and 32 (the
 * AVX-512 Q8_0 conversion takes 16 blocks at a time, the rest one by one). */
static void test_isa_conversion(nm_test *t) {
    static const nm_type types[] = {NM_TYPE_Q8_0, NM_TYPE_Q4_K, NM_TYPE_F16, NM_TYPE_BF16};
    static const int64_t lengths[] = {512, 768, 1024};
    enum { CAP = 8192 };
    nm_rng r;
    nm_rng_seed(&r, 21);
    float *x = malloc(sizeof(float) * 1024);
    uint8_t *a0 = malloc(CAP), *a1 = malloc(CAP), *e0 = malloc(CAP), *e1 = malloc(CAP);
    for (int isa = 1; isa < NM_ISA_COUNT; isa++) {
        if (!nm_isa_available((nm_isa)isa)) continue;
        for (size_t ti = 0; ti < sizeof types / sizeof types[0] * 3; ti++) {
            const int64_t n = lengths[ti % 3];
            const nm_mm_kernel *k = nm_mm_kernel_get(types[ti / 3], (nm_isa)isa);
            if (!k->convert) continue;
            const size_t ab = nm_act_row_bytes(k->act_type, n), eb = nm_act_extra_bytes(k->act_type, n);
            int bad = 0;
            for (int c = 0; c < 12; c++) {
                random_floats(&r, x, n, c < 4 ? 1.0 : c < 6 ? 1e-30 : c < 8 ? 1e30 : 3.0);
                if (c == 8) /* block maximum 127: the scale is 1 and every other value is a tie (m + 0.5) */
                    for (int64_t i = 0; i < n; i++) x[i] = i % 32 == 0 ? 127.0f : (float)((int)(i % 50) - 25) + 0.5f;
                if (c == 9) memset(x, 0, sizeof(float) * (size_t)n);
                if (c == 10)
                    for (int64_t i = 0; i < n; i++) x[i] = (i % 3 == 0 ? -2.5f : 2.5f) * (float)(1 + i % 2);
                if (c == 11)
                    for (int64_t i = 0; i < n; i++) x[i] = i % 32 == 5 ? -100.0f : (float)(i % 7) - 3.0f;
                memset(a0, 0, CAP);
                memset(a1, 0, CAP);
                memset(e0, 0, CAP);
                memset(e1, 0, CAP);
                nm_act_from_float(k->act_type, x, a0, n);
                nm_act_extra(k->act_type, a0, e0, n);
                k->convert(x, a1, e1, n);
                if ((memcmp(a0, a1, ab) != 0 || memcmp(e0, e1, eb) != 0) && bad++ < 2)
                    CHECKF(t, false, "%s conversion to %s differs from the reference (case %d, %lld elements)",
                           nm_isa_name((nm_isa)isa), nm_type_name(k->act_type), c, (long long)n);
                /* without side data: the same row */
                memset(a1, 0, CAP);
                k->convert(x, a1, NULL, n);
                if (memcmp(a0, a1, ab) != 0 && bad++ < 2)
                    CHECKF(t, false, "%s conversion to %s without side data differs", nm_isa_name((nm_isa)isa),
                           nm_type_name(k->act_type));
            }
        }
    }
    free(x);
    free(a0);
    free(a1);
    free(e0);
    free(e1);
}

/* Summation bound of the float kernels against the reference (double sum
 * of float products): the levels add exact products in chains of at most
 * 16 fused multiply-adds, then add the chains (K/16 of them): each output
 * is within (K/16 + 16 + 1) rounding units of sum |w x| of the exact sum,
 * the reference within 1 + 1 (its product and its final rounding). */
static double float_bound(int64_t cols, double mag) { return ((double)cols / 16 + 20) * 0x1p-24 * mag + 1e-30; }

static const char *isa_label(nm_isa i) { return nm_isa_name(i); }

/* The level's packed layout (nm_mat_pack) against the same matrix as
 * stored (y: its product with all n_tok tokens of x): the same bits for
 * every thread count, batch size and row slice, slices that start and end
 * inside a tile and in the unpacked tail included. */
static void check_packed(nm_test *t, const nm_mat *ml, const uint8_t *w, const float *x, int64_t n_tok,
                         const float *y, nm_pool **pools, void *scratch) {
    const int64_t rows = ml->rows, cols = ml->cols;
    const size_t bytes = (size_t)rows * ml->row_bytes;
    const char *tn = nm_type_name(ml->type), *lv = nm_isa_name(ml->k->isa);
    uint8_t *wp = malloc(bytes);
    float *y1 = malloc(sizeof(float) * (size_t)(n_tok * rows));
    memcpy(wp, w, bytes);
    nm_mat mp = *ml;
    mp.data = wp;
    nm_err err = {0};
    if (CHECK_OK(t, nm_mat_pack(&mp, wp, &err), err) && !ml->k->pack_tile) {
        CHECKF(t, mp.packed_rows == 0 && memcmp(wp, w, bytes) == 0, "%s %s: no packed layout, yet packed", lv, tn);
    } else if (!err.code) {
        const size_t pb = (size_t)mp.packed_rows * ml->row_bytes;
        CHECKF(t, mp.packed_rows == rows / NM_PACK_ROWS * NM_PACK_ROWS && memcmp(wp, w, pb) != 0,
               "%s %s: %lld rows packed (of %lld), bytes changed: %d", lv, tn, (long long)mp.packed_rows,
               (long long)rows, memcmp(wp, w, pb) != 0);
        CHECKF(t, memcmp(wp + pb, w + pb, bytes - pb) == 0, "%s %s: packing changed the rows past the tiles", lv, tn);
        for (int p = 0; p < 3; p++) {
            memset(y1, 0xff, sizeof(float) * (size_t)(n_tok * rows));
            nm_matmul(pools[p], &mp, x, n_tok, y1, scratch);
            CHECKF(t, memcmp(y1, y, sizeof(float) * (size_t)(n_tok * rows)) == 0,
                   "%s %s cols %lld packed, %d threads: differs from as stored", lv, tn, (long long)cols,
                   nm_pool_size(pools[p]));
        }
        for (int64_t nt = 1; nt <= 5; nt++) {
            memset(y1, 0xff, sizeof(float) * (size_t)(nt * rows));
            nm_matmul(pools[2], &mp, x, nt, y1, scratch);
            CHECKF(t, memcmp(y1, y, sizeof(float) * (size_t)(nt * rows)) == 0,
                   "%s %s cols %lld packed: a batch of %lld tokens differs", lv, tn, (long long)cols, (long long)nt);
        }
        static const int64_t slice[][2] = {{5, 40}, {16, 32}, {0, 17}, {20, 45}, {31, 33}, {3, 9}, {33, 45}};
        for (size_t k = 0; k < sizeof slice / sizeof slice[0]; k++)
            for (int64_t nt = 1; nt <= n_tok; nt += n_tok - 1) {
                const int64_t r0 = slice[k][0], r1 = slice[k][1], ld = r1 - r0 + 1;
                nm_matmul_rows(pools[1], &mp, r0, r1, x, nt, y1, ld, scratch);
                bool same = true;
                for (int64_t tok = 0; tok < nt; tok++)
                    same &= memcmp(y1 + tok * ld, y + tok * rows + r0, sizeof(float) * (size_t)(r1 - r0)) == 0;
                CHECKF(t, same, "%s %s packed: rows %lld..%lld of %lld tokens differ", lv, tn, (long long)r0,
                       (long long)r1, (long long)nt);
            }
    }
    free(wp);
    free(y1);
}

static void check_level(nm_test *t, nm_isa isa, nm_type type, int64_t cols, nm_pool **pools, nm_rng *r) {
    const int64_t rows = 93, n_tok = 17; /* AVX-512 batches: 3 tiles, 2, then 13 rows */
    nm_err err = {0};
    uint8_t *w = make_weights(r, type, rows, cols);
    nm_mat ms, ml;
    if (!CHECK_OK(t, nm_mat_init_isa(&ms, "w", type, cols, rows, w, NM_ISA_SCALAR, &err), err) ||
        !CHECK_OK(t, nm_mat_init_isa(&ml, "w", type, cols, rows, w, isa, &err), err)) {
        free(w);
        return;
    }
    float *x = malloc(sizeof(float) * (size_t)(n_tok * cols));
    random_floats(r, x, n_tok * cols, 1.0);
    const size_t ny = (size_t)(n_tok * rows);
    float *ref = malloc(sizeof(float) * ny), *y = malloc(sizeof(float) * ny), *y1 = malloc(sizeof(float) * ny);
    void *scratch = malloc(nm_matmul_scratch_bytes(type, cols, n_tok) + 1);
    nm_matmul(pools[0], &ms, x, n_tok, ref, scratch);
    const bool exact = type != NM_TYPE_F32 && type != NM_TYPE_F16;
    const char *tn = nm_type_name(type);

    /* against the scalar level */
    memset(y, 0xff, sizeof(float) * ny);
    nm_matmul(pools[1], &ml, x, n_tok, y, scratch);
    if (exact) {
        int bad = 0;
        for (size_t i = 0; i < ny; i++)
            if (memcmp(&y[i], &ref[i], sizeof(float)) != 0 && bad++ < 3)
                CHECKF(t, false, "%s %s cols %lld: output %zu (token %zu row %zu) %.9g, scalar %.9g", isa_label(isa), tn,
                       (long long)cols, i, i / (size_t)rows, i % (size_t)rows, y[i], ref[i]);
    } else {
        float *wf = malloc(sizeof(float) * (size_t)cols), *xr = malloc(sizeof(float) * (size_t)cols);
        int bad = 0;
        for (int64_t tok = 0; tok < n_tok; tok++) {
            for (int64_t j = 0; j < cols; j++)
                xr[j] = type == NM_TYPE_F16 ? nm_f16_to_f32(nm_f32_to_f16(x[tok * cols + j])) : x[tok * cols + j];
            for (int64_t i = 0; i < rows; i++) {
                nm_dequantize(type, w + (size_t)i * ms.row_bytes, wf, cols, &err);
                double mag = 0;
                for (int64_t j = 0; j < cols; j++) mag += fabs((double)wf[j] * xr[j]);
                const size_t o = (size_t)(tok * rows + i);
                if (fabs((double)y[o] - ref[o]) > float_bound(cols, mag) && bad++ < 3)
                    CHECKF(t, false, "%s %s cols %lld: token %lld row %lld: %.9g vs scalar %.9g beyond %.3g", isa_label(isa),
                           tn, (long long)cols, (long long)tok, (long long)i, y[o], ref[o], float_bound(cols, mag));
            }
        }
        free(wf);
        free(xr);
    }

    /* the level against itself: thread counts, batch sizes, row slices */
    for (int p = 0; p < 3; p++) {
        memset(y1, 0xff, sizeof(float) * ny);
        nm_matmul(pools[p], &ml, x, n_tok, y1, scratch);
        CHECKF(t, memcmp(y1, y, sizeof(float) * ny) == 0, "%s %s: %d threads differ from 2", isa_label(isa), tn,
               nm_pool_size(pools[p]));
    }
    static const int64_t sizes[] = {1, 2, 3, 4, 5, 13};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
        for (int64_t t0 = 0; t0 + sizes[k] <= n_tok; t0 += sizes[k] + 3) {
            memset(y1, 0xff, sizeof(float) * ny);
            nm_matmul(pools[2], &ml, x + t0 * cols, sizes[k], y1, scratch);
            CHECKF(t, memcmp(y1, y + t0 * rows, sizeof(float) * (size_t)(sizes[k] * rows)) == 0,
                   "%s %s: a batch of %lld tokens (from %lld) differs from the batch of %lld", isa_label(isa), tn,
                   (long long)sizes[k], (long long)t0, (long long)n_tok);
        }
    const int64_t r0 = 5, r1 = 40, ldy = 41;
    float *ys = malloc(sizeof(float) * (size_t)(n_tok * ldy));
    for (int64_t nt = 1; nt <= n_tok; nt += n_tok - 1) {
        nm_matmul_rows(pools[1], &ml, r0, r1, x, nt, ys, ldy, scratch);
        bool same = true;
        for (int64_t tok = 0; tok < nt; tok++)
            same &= memcmp(ys + tok * ldy, y + tok * rows + r0, sizeof(float) * (size_t)(r1 - r0)) == 0;
        CHECKF(t, same, "%s %s: rows %lld..%lld of %lld tokens differ", isa_label(isa), tn, (long long)r0,
               (long long)r1, (long long)nt);
    }
    free(ys);
    check_packed(t, &ml, w, x, n_tok, y, pools, scratch);
    free(w);
    free(x);
    free(ref);
    free(y);
    free(y1);
    free(scratch);
}

static void test_isa_vs_scalar(nm_test *t) {
    static const kernel_case cases[] = {
        {NM_TYPE_F32, 100},  {NM_TYPE_F32, 300},  {NM_TYPE_F16, 172},  {NM_TYPE_F16, 512},  {NM_TYPE_BF16, 100},
        {NM_TYPE_BF16, 288}, {NM_TYPE_Q8_0, 1088}, {NM_TYPE_Q4_0, 1088}, {NM_TYPE_Q8_0, 64}, {NM_TYPE_Q4_0, 96},
        {NM_TYPE_Q4_1, 512}, {NM_TYPE_Q5_0, 512}, {NM_TYPE_Q5_1, 512}, {NM_TYPE_Q4_K, 768}, {NM_TYPE_Q5_K, 768},
        {NM_TYPE_Q6_K, 768}, {NM_TYPE_Q4_K, 256}, {NM_TYPE_Q6_K, 256},
    };
    nm_err err = {0};
    nm_pool *pools[3] = {NULL};
    CHECK_OK(t, nm_pool_new(1, &pools[0], &err), err);
    CHECK_OK(t, nm_pool_new(2, &pools[1], &err), err);
    CHECK_OK(t, nm_pool_new(3, &pools[2], &err), err);
    int levels = 0;
    for (int isa = 0; isa < NM_ISA_COUNT; isa++) {
        if (!nm_isa_available((nm_isa)isa)) continue;
        levels++;
        nm_rng r;
        nm_rng_seed(&r, 100 + (uint64_t)isa);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            check_level(t, (nm_isa)isa, cases[i].type, cases[i].cols, pools, &r);
    }
    printf("  %d instruction-set levels run here (best: %s)\n", levels, nm_isa_name(nm_isa_best()));
    for (int p = 0; p < 3; p++) nm_pool_free(pools[p]);
}

/* Hostile-looking but valid blocks: Q8_0 quants of -128 (never written by
 * a quantizer, legal in a file) and extreme nibbles, at every level. */
static void test_isa_extreme_blocks(nm_test *t) {
    const int64_t cols = 512, rows = 20;
    uint8_t *w = malloc((size_t)rows * 16 * 34);
    for (int64_t i = 0; i < rows * 16; i++) {
        uint8_t *b = w + i * 34;
        const uint16_t d = nm_f32_to_f16(0.01f);
        b[0] = (uint8_t)d;
        b[1] = (uint8_t)(d >> 8);
        for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)((i + j) % 3 == 0 ? 0x80 : (i + j) % 3 == 1 ? 0x7f : 0x81);
    }
    float x[4 * 512];
    for (int64_t i = 0; i < 4 * cols; i++) x[i] = (i % 7 == 0 ? -1.0f : 1.0f) * (float)(i % 13 + 1);
    nm_err err = {0};
    nm_mat ms;
    CHECK_OK(t, nm_mat_init_isa(&ms, "w", NM_TYPE_Q8_0, cols, rows, w, NM_ISA_SCALAR, &err), err);
    float ref[4 * 20], y[4 * 20];
    uint8_t scratch[4 * 1024];
    CHECK(t, nm_matmul_scratch_bytes(NM_TYPE_Q8_0, cols, 4) <= sizeof scratch);
    for (int isa = 1; isa < NM_ISA_COUNT; isa++) {
        nm_mat ml;
        if (!nm_isa_available((nm_isa)isa)) continue;
        CHECK_OK(t, nm_mat_init_isa(&ml, "w", NM_TYPE_Q8_0, cols, rows, w, (nm_isa)isa, &err), err);
        for (int64_t nt = 1; nt <= 4; nt += 3) {
            nm_matmul(NULL, &ms, x, nt, ref, scratch);
            nm_matmul(NULL, &ml, x, nt, y, scratch);
            CHECKF(t, memcmp(ref, y, sizeof(float) * (size_t)(nt * rows)) == 0, "%s: Q8_0 quants of -128 (%lld tokens)",
                   nm_isa_name((nm_isa)isa), (long long)nt);
        }
    }
    free(w);
}

/* K-quant blocks at the edges of their ranges, which quantizers never
 * write but files may hold: every 6-bit scale and min 63, every quant at
 * its maximum (0xff bytes), Q6_K scales of -128 and 127 with quants 0 (a
 * 6-bit quant of -32), random bytes; against activations whose Q8_K quants
 * are all -128, alternate -128 / 127, or random.  The scalar kernel is
 * checked against float64 sums of the dequantized values, every level
 * against scalar bit for bit: 1, 2, 3 tokens (the single-token path) and 4
 * (the batch path), 37 rows (two 16-row tiles and 5 more), 1 and 3 super-blocks. */
static void test_isa_k_extreme(nm_test *t) {
    static const nm_type types[] = {NM_TYPE_Q4_K, NM_TYPE_Q5_K, NM_TYPE_Q6_K};
    const int64_t rows = 37, max_cols = 768, max_tok = 4;
    nm_err err = {0};
    nm_pool *pools[2] = {NULL};
    CHECK_OK(t, nm_pool_new(1, &pools[0], &err), err);
    CHECK_OK(t, nm_pool_new(3, &pools[1], &err), err);
    nm_rng r;
    nm_rng_seed(&r, 77);
    float *x = malloc(sizeof(float) * (size_t)(max_tok * max_cols)), *xq = malloc(sizeof(float) * (size_t)max_cols);
    float *wf = malloc(sizeof(float) * (size_t)max_cols);
    float *ref = malloc(sizeof(float) * (size_t)(max_tok * rows)), *y = malloc(sizeof(float) * (size_t)(max_tok * rows));
    uint8_t *act = malloc(nm_act_row_bytes(NM_TYPE_Q8_K, max_cols));
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (int64_t cols = 256; cols <= max_cols; cols += 512)
            for (int wp = 0; wp < 4; wp++) {
                const nm_type type = types[ti];
                const size_t bb = nm_type_block_bytes(type), rb = nm_type_row_bytes(type, cols);
                uint8_t *w = malloc(rb * (size_t)rows), *wc = malloc(rb * (size_t)rows);
                for (size_t i = 0; i < rb * (size_t)rows; i++)
                    w[i] = wp == 0 ? 0xff : wp == 1 ? (uint8_t)nm_rng_u64(&r) : wp == 2 ? (i % 2 ? 0xff : 0x00) : 0x00;
                for (size_t b = 0; b < rb * (size_t)rows / bb; b++) {
                    uint8_t *blk = w + b * bb;
                    const float d = (float)(0.001 + 0.01 * nm_rng_uniform(&r));
                    if (type == NM_TYPE_Q6_K) {
                        put_half(blk + offsetof(nm_block_q6_k, d), d);
                        if (wp == 3) /* quants 0 (-32), scales -128 and 127 */
                            for (int j = 0; j < 16; j++) blk[offsetof(nm_block_q6_k, scales) + j] = j % 3 ? 0x80 : 0x7f;
                    } else {
                        put_half(blk, d);
                        put_half(blk + 2, wp == 3 ? 0.0f : d * 0.5f);
                        if (wp == 3) memset(blk + 4, 0xff, 12); /* scales and mins 63, quants 0 */
                    }
                }
                nm_mat ms;
                if (!CHECK_OK(t, nm_mat_init_isa(&ms, "w", type, cols, rows, w, NM_ISA_SCALAR, &err), err)) {
                    free(w);
                    free(wc);
                    continue;
                }
                void *scratch = malloc(nm_matmul_scratch_bytes(type, cols, max_tok) + 64);
                for (int xp = 0; xp < 3; xp++) {
                    for (int64_t i = 0; i < max_tok * cols; i++)
                        x[i] = xp == 0 ? 1.0f : xp == 1 ? (i % 2 ? -2.0f : 2.0f) : (float)(nm_rng_uniform(&r) * 2 - 1);
                    nm_matmul(pools[0], &ms, x, max_tok, ref, scratch);
                    /* the reference against float64 (token 0) */
                    nm_act_from_float(NM_TYPE_Q8_K, x, act, cols);
                    CHECK_OK(t, nm_dequantize(NM_TYPE_Q8_K, act, xq, cols, &err), err);
                    int bad = 0;
                    for (int64_t i = 0; i < rows; i++) {
                        CHECK_OK(t, nm_dequantize(type, w + (size_t)i * rb, wf, cols, &err), err);
                        double exact = 0, mag = 0;
                        for (int64_t j = 0; j < cols; j++) {
                            exact += (double)wf[j] * xq[j];
                            mag += fabs((double)wf[j] * xq[j]);
                        }
                        if (fabs(ref[i] - exact) > 1e-5 * mag + 1e-6 && bad++ < 2)
                            CHECKF(t, false, "scalar %s pattern %d/%d cols %lld row %lld: %.9g vs float64 %.9g", nm_type_name(type),
                                   wp, xp, (long long)cols, (long long)i, ref[i], exact);
                    }
                    /* every level, as stored and in its packed layout where it has one */
                    for (int isa = 1; isa < NM_ISA_COUNT; isa++)
                        for (int packed = 0; packed < 2; packed++) {
                            nm_mat ml;
                            if (!nm_isa_available((nm_isa)isa)) continue;
                            CHECK_OK(t, nm_mat_init_isa(&ml, "w", type, cols, rows, packed ? wc : w, (nm_isa)isa, &err), err);
                            if (packed) {
                                if (!ml.k->pack_tile) continue;
                                memcpy(wc, w, rb * (size_t)rows);
                                CHECK_OK(t, nm_mat_pack(&ml, wc, &err), err);
                                CHECK(t, ml.packed_rows == 32);
                            }
                            for (int p = 0; p < 2; p++)
                                for (int64_t nt = 1; nt <= max_tok; nt++) {
                                    memset(y, 0xff, sizeof(float) * (size_t)(nt * rows));
                                    nm_matmul(pools[p], &ml, x, nt, y, scratch);
                                    CHECKF(t, memcmp(ref, y, sizeof(float) * (size_t)(nt * rows)) == 0,
                                           "%s %s%s pattern %d/%d cols %lld: %lld tokens, %d threads differ from scalar",
                                           nm_isa_name((nm_isa)isa), nm_type_name(type), packed ? " packed" : "", wp, xp,
                                           (long long)cols, (long long)nt, nm_pool_size(pools[p]));
                                }
                        }
                }
                free(scratch);
                free(w);
                free(wc);
            }
    free(x);
    free(xq);
    free(wf);
    free(ref);
    free(y);
    free(act);
    for (int p = 0; p < 2; p++) nm_pool_free(pools[p]);
}

/* Single tokens (generation) on Q8_0/Q4_0 at every level against the scalar
 * level, bit for bit, on shapes the SIMD kernels take apart: 1000 rows (62
 * full 16-row tiles and one of 8; thread shares of several tiles, so the
 * next tile's prefetch and the full-tile row addressing run), rows not
 * starting at a tile boundary, row lengths of 4-block steps plus 0..3
 * leftover blocks, 1..3 tokens, 1..3 threads.  Weights: the reference
 * quantizer's, and random bytes with random finite scales from subnormal
 * to 2^15 (products that underflow or round far from 1). */
static void test_gemv_shapes(nm_test *t) {
    static const int64_t cols_list[] = {512, 544, 576, 608};
    static const nm_type types[] = {NM_TYPE_Q8_0, NM_TYPE_Q4_0};
    const int64_t rows = 1000, r0 = 7, r1 = 990, max_tok = 3;
    nm_err err = {0};
    nm_pool *pools[3] = {NULL};
    for (int p = 0; p < 3; p++) CHECK_OK(t, nm_pool_new(p + 1, &pools[p], &err), err);
    nm_rng r;
    nm_rng_seed(&r, 77);
    for (size_t ti = 0; ti < 2; ti++)
        for (size_t ci = 0; ci < sizeof cols_list / sizeof cols_list[0]; ci++)
            for (int raw = 0; raw < 2; raw++) {
                const nm_type type = types[ti];
                const int64_t cols = cols_list[ci];
                const size_t rb = nm_type_row_bytes(type, cols), bb = nm_type_block_bytes(type);
                uint8_t *w = make_weights(&r, type, rows, cols);
                if (raw) {
                    for (size_t i = 0; i < rb * (size_t)rows; i++) w[i] = (uint8_t)nm_rng_u64(&r);
                    for (size_t b = 0; b < rb * (size_t)rows / bb; b++) {
                        uint16_t h = (uint16_t)(nm_rng_u64(&r) & 0xfbff); /* exponent below 31: finite */
                        w[b * bb] = (uint8_t)h;
                        w[b * bb + 1] = (uint8_t)(h >> 8);
                    }
                }
                float *x = malloc(sizeof(float) * (size_t)(max_tok * cols));
                float *ref = malloc(sizeof(float) * (size_t)(max_tok * rows)), *y = malloc(sizeof(float) * (size_t)(max_tok * rows));
                void *scratch = malloc(nm_matmul_scratch_bytes(type, cols, max_tok));
                random_floats(&r, x, max_tok * cols, 1.0);
                nm_mat ms;
                CHECK_OK(t, nm_mat_init_isa(&ms, "w", type, cols, rows, w, NM_ISA_SCALAR, &err), err);
                for (int isa = 1; isa < NM_ISA_COUNT; isa++) {
                    nm_mat ml;
                    if (!nm_isa_available((nm_isa)isa)) continue;
                    CHECK_OK(t, nm_mat_init_isa(&ml, "w", type, cols, rows, w, (nm_isa)isa, &err), err);
                    for (int64_t nt = 1; nt <= max_tok; nt++) {
                        nm_matmul(pools[0], &ms, x, nt, ref, scratch);
                        for (int p = 0; p < 3; p++) {
                            memset(y, 0xff, sizeof(float) * (size_t)(nt * rows));
                            nm_matmul(pools[p], &ml, x, nt, y, scratch);
                            int64_t bad = -1;
                            for (int64_t i = 0; i < nt * rows && bad < 0; i++)
                                if (memcmp(&y[i], &ref[i], sizeof(float)) != 0) bad = i;
                            if (bad >= 0)
                                CHECKF(t, false, "%s %s cols %lld (%s weights), %lld tokens, %d threads: token %lld row %lld %.9g, scalar %.9g",
                                       nm_isa_name((nm_isa)isa), nm_type_name(type), (long long)cols, raw ? "raw" : "quantized",
                                       (long long)nt, p + 1, (long long)(bad / rows), (long long)(bad % rows), y[bad], ref[bad]);
                        }
                        /* a slice whose tiles start off the 16-row grid and end in a partial one */
                        memset(y, 0xff, sizeof(float) * (size_t)(nt * rows));
                        nm_matmul_rows(pools[1], &ml, r0, r1, x, nt, y, rows, scratch);
                        bool same = true;
                        for (int64_t k = 0; k < nt; k++)
                            same &= memcmp(y + k * rows, ref + k * rows + r0, sizeof(float) * (size_t)(r1 - r0)) == 0;
                        CHECKF(t, same, "%s %s cols %lld: rows %lld..%lld of %lld tokens differ from scalar",
                               nm_isa_name((nm_isa)isa), nm_type_name(type), (long long)cols, (long long)r0, (long long)r1,
                               (long long)nt);
                    }
                }
                free(w);
                free(x);
                free(ref);
                free(y);
                free(scratch);
            }
    for (int p = 0; p < 3; p++) nm_pool_free(pools[p]);
}

/* dx = dy W against a float64 reference, and bit-identical across thread
 * counts; accumulate adds to what dx holds. */
static void test_matmul_t(nm_test *t) {
    static const kernel_case cases[] = {
        {NM_TYPE_F32, 100}, {NM_TYPE_F16, 512}, {NM_TYPE_BF16, 96}, {NM_TYPE_Q8_0, 544}, {NM_TYPE_Q4_K, 768}, {NM_TYPE_Q6_K, 512},
    };
    nm_err err = {0};
    nm_pool *pools[3] = {NULL};
    CHECK_OK(t, nm_pool_new(1, &pools[0], &err), err);
    CHECK_OK(t, nm_pool_new(2, &pools[1], &err), err);
    CHECK_OK(t, nm_pool_new(3, &pools[2], &err), err);
    nm_rng r;
    nm_rng_seed(&r, 5);
    for (int isa = 0; isa < NM_ISA_COUNT; isa++) {
        if (!nm_isa_available((nm_isa)isa)) continue;
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            const nm_type type = cases[ci].type;
            const int64_t cols = cases[ci].cols, rows = 75, n_tok = 7;
            uint8_t *w = make_weights(&r, type, rows, cols);
            nm_mat m;
            if (!CHECK_OK(t, nm_mat_init_isa(&m, "w", type, cols, rows, w, (nm_isa)isa, &err), err)) {
                free(w);
                continue;
            }
            float *wf = malloc(sizeof(float) * (size_t)(rows * cols));
            for (int64_t i = 0; i < rows; i++) nm_dequantize(type, w + (size_t)i * m.row_bytes, wf + i * cols, cols, &err);
            float *dy = malloc(sizeof(float) * (size_t)(n_tok * rows));
            random_floats(&r, dy, n_tok * rows, 1.0);
            float *dx = malloc(sizeof(float) * (size_t)(n_tok * cols)), *dx2 = malloc(sizeof(float) * (size_t)(n_tok * cols));
            void *scratch = malloc(nm_matmul_t_scratch_bytes(&m, pools[2]));
            for (int64_t i = 0; i < n_tok * cols; i++) dx[i] = NAN; /* overwritten, not read */
            nm_matmul_t(pools[1], &m, dy, n_tok, dx, false, scratch);
            int bad = 0;
            for (int64_t tok = 0; tok < n_tok; tok++)
                for (int64_t c = 0; c < cols; c++) {
                    double want = 0, mag = 0;
                    for (int64_t i = 0; i < rows; i++) {
                        want += (double)dy[tok * rows + i] * wf[i * cols + c];
                        mag += fabs((double)dy[tok * rows + i] * wf[i * cols + c]);
                    }
                    const double bound = (rows + 2) * 0x1p-24 * mag + 1e-30;
                    if (!(fabs(dx[tok * cols + c] - want) <= bound) && bad++ < 3)
                        CHECKF(t, false, "%s %s: dx[%lld][%lld] = %.9g, want %.9g", nm_isa_name((nm_isa)isa),
                               nm_type_name(type), (long long)tok, (long long)c, dx[tok * cols + c], want);
                }
            for (int p = 0; p < 3; p += 2) {
                nm_matmul_t(pools[p], &m, dy, n_tok, dx2, false, scratch);
                CHECKF(t, memcmp(dx, dx2, sizeof(float) * (size_t)(n_tok * cols)) == 0, "%s %s: %d threads differ",
                       nm_isa_name((nm_isa)isa), nm_type_name(type), nm_pool_size(pools[p]));
            }
            /* accumulate: dx2 = 1 + dy W, within one more rounding */
            for (int64_t i = 0; i < n_tok * cols; i++) dx2[i] = 1.0f;
            nm_matmul_t(pools[2], &m, dy, n_tok, dx2, true, scratch);
            bool acc_ok = true;
            for (int64_t i = 0; i < n_tok * cols; i++) acc_ok &= fabs(dx2[i] - (1.0 + dx[i])) <= 1e-4 * (1 + fabs(dx[i]));
            CHECKF(t, acc_ok, "%s %s: accumulate", nm_isa_name((nm_isa)isa), nm_type_name(type));
            free(w);
            free(wf);
            free(dy);
            free(dx);
            free(dx2);
            free(scratch);
        }
    }
    for (int p = 0; p < 3; p++) nm_pool_free(pools[p]);
}

/* Distance in units in the last place between two finite floats. */
static int64_t ulps(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if (ia < 0) ia = INT32_MIN - ia;
    if (ib < 0) ib = INT32_MIN - ib;
    return ia > ib ? (int64_t)ia - ib : (int64_t)ib - ia;
}

/* The attention helpers of every level against the scalar loops (src/model's
 * arithmetic): exact products added in double, in another order, so each
 * float result is the scalar one or its neighbour. */
/* The attention loops: the scalar reference against a float64 sum (its
 * only roundings are double additions of exact products, so it is within
 * a few units of 2^-50 of the exact value, far below float's rounding: the
 * float results agree to one ulp), and every level against the reference
 * bit for bit, one query at a time and in groups (GQA: nq heads share the
 * keys), on head widths that take the 16-lane order (16, 64, 128, 256),
 * wider ones the levels hand to the reference (320) and ones that go
 * element by element (8, 100), over whole and partial key tiles (16, 7,
 * 300 keys; the lanes past the last key hold infinities and NaNs, and the
 * gaps between score rows must stay untouched).  Queries are unrounded
 * floats in some cases: products in double keep them exact too. */
static void test_attention(nm_test *t) {
    static const int64_t hds[] = {8, 16, 64, 100, 128, 256, 320};
    static const int64_t ns[] = {1, 7, 16, 300};
    static const int nqs[] = {1, 3, 8, 11};
    nm_rng r;
    nm_rng_seed(&r, 31);
    const nm_attn_kernel *ref = nm_attn_kernel_get(NM_ISA_SCALAR);
    for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++)
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
            for (size_t qi = 0; qi < sizeof nqs / sizeof nqs[0]; qi++) {
                const int64_t hd = hds[hi], n = ns[ni], stride = hd * 3; /* a head inside a wider cache row */
                const int nq = nqs[qi];
                const bool rounded = qi % 2 == 0;
                const size_t sst = (size_t)n + 5, ost = (size_t)hd + 3; /* strides with gaps */
                float *q = malloc(sizeof(float) * (size_t)(hd * nq)), *w = malloc(sizeof(float) * sst * (size_t)nq);
                uint16_t *cache = malloc(sizeof(uint16_t) * (size_t)(n * stride));
                float *s0 = calloc(sst * (size_t)nq, sizeof(float)), *s1 = calloc(sst * (size_t)nq, sizeof(float));
                float *o0 = calloc(ost * (size_t)nq, sizeof(float)), *o1 = calloc(ost * (size_t)nq, sizeof(float));
                for (int64_t i = 0; i < hd * nq; i++) {
                    const float x = (float)nm_rng_normal(&r);
                    q[i] = rounded ? nm_f16_to_f32(nm_f32_to_f16(x)) : x;
                }
                for (size_t i = 0; i < sst * (size_t)nq; i++) {
                    const float x = (float)nm_rng_uniform(&r) / (float)n;
                    w[i] = rounded ? nm_f16_to_f32(nm_f32_to_f16(x)) : x;
                }
                for (int64_t i = 0; i < n * stride; i++) cache[i] = nm_f32_to_f16((float)nm_rng_normal(&r));
                const uint16_t *kv = cache + hd;
                /* the keys as the model stores them, in key tiles; the lanes
                 * past n hold infinities and NaNs, which no score may see */
                const int64_t n_tiles = (n + NM_KEY_TILE - 1) / NM_KEY_TILE;
                uint16_t *kt = malloc(sizeof(uint16_t) * (size_t)(n_tiles * NM_KEY_TILE * hd));
                for (int64_t i = 0; i < n_tiles * NM_KEY_TILE * hd; i++) kt[i] = i % 2 ? 0x7c00 : 0xfe01;
                for (int64_t p = 0; p < n; p++)
                    for (int64_t i = 0; i < hd; i++) kt[nm_key_index(hd, p, i)] = kv[p * stride + i];
                ref->scores(q, (size_t)hd, nq, kt, n, hd, 0.125f, s0, sst);
                ref->values(w, sst, nq, kv, (size_t)stride, n, hd, o0, ost);
                /* Float sums, one rounding per addition: the textbook bound
                 * |sum - exact| <= (longest chain of additions + 1) x 2^-24 x
                 * sum |term|.  Scores: hd / 16 terms a lane + the 4 levels of
                 * the lane tree (element by element: hd); values: n keys. */
                double worst = 0;
                const int64_t depth = hd % 16 ? hd : hd / 16 + 4;
                for (int j = 0; j < nq; j++) {
                    for (int64_t p = 0; p < n; p++) {
                        double d = 0, a = 0;
                        for (int64_t i = 0; i < hd; i++) {
                            const double x = (double)q[j * hd + i] * (double)nm_f16_to_f32(kv[p * stride + i]);
                            d += x;
                            a += fabs(x);
                        }
                        const double err = fabs((double)s0[(size_t)j * sst + (size_t)p] - d * 0.125);
                        const double bound = (double)(depth + 1) * 0x1p-24 * a * 0.125 + 1e-45;
                        worst = fmax(worst, err / bound);
                    }
                    for (int64_t i = 0; i < hd; i++) {
                        double d = 0, a = 0;
                        for (int64_t p = 0; p < n; p++) {
                            const double x = (double)w[(size_t)j * sst + (size_t)p] * (double)nm_f16_to_f32(kv[p * stride + i]);
                            d += x;
                            a += fabs(x);
                        }
                        const double err = fabs((double)o0[(size_t)j * ost + (size_t)i] - d);
                        worst = fmax(worst, err / ((double)(n + 1) * 0x1p-24 * a + 1e-45));
                    }
                }
                CHECKF(t, worst <= 1.0, "scalar attention, head %lld, %lld keys, %d queries: error %.2f x the float bound",
                       (long long)hd, (long long)n, nq, worst);
                for (int isa = 1; isa < NM_ISA_COUNT; isa++) {
                    if (!nm_isa_available((nm_isa)isa)) continue;
                    const nm_attn_kernel *k = nm_attn_kernel_get((nm_isa)isa);
                    k->scores(q, (size_t)hd, nq, kt, n, hd, 0.125f, s1, sst);
                    k->values(w, sst, nq, kv, (size_t)stride, n, hd, o1, ost);
                    CHECKF(t, memcmp(s0, s1, sizeof(float) * sst * (size_t)nq) == 0 &&
                                  memcmp(o0, o1, sizeof(float) * ost * (size_t)nq) == 0,
                           "%s attention, head %lld, %lld keys, %d queries%s: differs from the scalar loops",
                           nm_isa_name((nm_isa)isa), (long long)hd, (long long)n, nq, rounded ? "" : " (unrounded)");
                    /* one query alone gives the bits it gets in a group */
                    k->scores(q + hd * (nq - 1), (size_t)hd, 1, kt, n, hd, 0.125f, s1, sst);
                    CHECKF(t, memcmp(s1, s0 + (size_t)(nq - 1) * sst, sizeof(float) * (size_t)n) == 0,
                           "%s attention scores, head %lld: the last query alone differs from the group",
                           nm_isa_name((nm_isa)isa), (long long)hd);
                }
                free(q);
                free(w);
                free(cache);
                free(kt);
                free(s0);
                free(s1);
                free(o0);
                free(o1);
            }
}

/* Conversion to half precision at every level: the reference's bits for
 * finite input, round-half-to-even ties, subnormals, overflow to infinity
 * included; the in-place rounding agrees with converting back. */
static void test_attn_f16(nm_test *t) {
    enum { N = 4099 }; /* not a multiple of any vector width */
    float *x = malloc(sizeof(float) * N), *r0 = malloc(sizeof(float) * N), *r1 = malloc(sizeof(float) * N);
    uint16_t *h0 = malloc(sizeof(uint16_t) * N), *h1 = malloc(sizeof(uint16_t) * N);
    nm_rng r;
    nm_rng_seed(&r, 5);
    for (int i = 0; i < N; i++) {
        switch (i % 6) {
        case 0: x[i] = (float)nm_rng_normal(&r); break;
        case 1: x[i] = (float)nm_rng_normal(&r) * 1e-6f; break; /* F16 subnormals */
        case 2: { /* exact ties between two halves */
            const uint16_t hh = (uint16_t)(nm_rng_u64(&r) & 0x7bff);
            x[i] = 0.5f * (nm_f16_to_f32(hh) + nm_f16_to_f32((uint16_t)(hh + 1)));
            break;
        }
        case 3: x[i] = (float)nm_rng_normal(&r) * 70000.0f; break; /* overflow */
        case 4: x[i] = -(float)nm_rng_uniform(&r) * 1e-9f; break;  /* underflow to -0 */
        default: x[i] = (float)nm_rng_normal(&r) * 1000.0f; break;
        }
    }
    const nm_attn_kernel *ref = nm_attn_kernel_get(NM_ISA_SCALAR);
    ref->to_f16(x, h0, N);
    memcpy(r0, x, sizeof(float) * N);
    ref->round_f16(r0, N);
    int bad = 0;
    for (int i = 0; i < N; i++)
        if (h0[i] != nm_f32_to_f16(x[i]) || memcmp(&r0[i], &(float){nm_f16_to_f32(h0[i])}, 4) != 0) bad++;
    CHECKF(t, bad == 0, "scalar: %d conversions differ from nm_f32_to_f16", bad);
    for (int isa = 1; isa < NM_ISA_COUNT; isa++) {
        if (!nm_isa_available((nm_isa)isa)) continue;
        const nm_attn_kernel *k = nm_attn_kernel_get((nm_isa)isa);
        k->to_f16(x, h1, N);
        memcpy(r1, x, sizeof(float) * N);
        k->round_f16(r1, N);
        CHECKF(t, memcmp(h0, h1, sizeof(uint16_t) * N) == 0 && memcmp(r0, r1, sizeof(float) * N) == 0,
               "%s: half-precision conversion differs from the reference", nm_isa_name((nm_isa)isa));
    }
    free(x);
    free(r0);
    free(r1);
    free(h0);
    free(h1);
}

/* The shared exponential against float64 exp on a dense sweep of its range
 * and at the edges (within 2 ulps where the result is a normal float), 0
 * below the range, infinity above, NaN through; then softmax and SwiGLU:
 * the reference against float64 formulas (a few ulps: float exponentials,
 * one float scaling), and every level against the reference bit for bit
 * on lengths around the vector widths, with elements whose exponential
 * underflows. */
static void test_row_ops(nm_test *t) {
    int64_t worst = 0;
    float at = 0;
    for (float x = -87.29f; x <= 88.29f; x += 0.00137f) {
        const double want = exp((double)x);
        if (want < 1.2e-38) continue; /* subnormal results: absolute error only */
        const int64_t u = ulps(nm_exp_ref(x), (float)want);
        if (u > worst) worst = u, at = x;
    }
    CHECKF(t, worst <= 2, "exp: %lld ulps from float64 at %g", (long long)worst, at);
    CHECK(t, nm_exp_ref(0.0f) == 1.0f && nm_exp_ref(-0.0f) == 1.0f);
    CHECK(t, nm_exp_ref(-88.0f) == 0.0f && nm_exp_ref(-1e30f) == 0.0f && nm_exp_ref(-__builtin_inff()) == 0.0f);
    CHECK(t, isinf(nm_exp_ref(89.0f)) && isinf(nm_exp_ref(1e30f)) && isinf(nm_exp_ref(__builtin_inff())));
    CHECK(t, isnan(nm_exp_ref(NAN)));
    CHECK(t, fabs(nm_exp_ref(-87.29f) - exp((double)-87.29f)) < 1e-44); /* near the bottom: 2^-149 steps */

    static const int64_t lens[] = {1, 7, 8, 15, 16, 17, 33, 300, 1001};
    nm_rng r;
    nm_rng_seed(&r, 77);
    const nm_attn_kernel *ref = nm_attn_kernel_get(NM_ISA_SCALAR);
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        const int64_t n = lens[li];
        float *x = malloc(sizeof(float) * (size_t)n), *s0 = malloc(sizeof(float) * (size_t)n);
        float *s1 = malloc(sizeof(float) * (size_t)n), *up = malloc(sizeof(float) * (size_t)n);
        for (int64_t i = 0; i < n; i++) {
            /* every fifth far below the others: its exponential underflows */
            x[i] = (float)nm_rng_normal(&r) * 4.0f - (i % 5 == 3 ? 120.0f : 0.0f);
            up[i] = (float)nm_rng_normal(&r);
        }
        memcpy(s0, x, sizeof(float) * (size_t)n);
        ref->softmax(s0, n);
        /* x - max is rounded to float by the formula itself (not an error of
         * the exponential), so the reference takes the same differences */
        float mx = x[0];
        double sum = 0;
        for (int64_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
        for (int64_t i = 0; i < n; i++) sum += exp((double)(x[i] - mx));
        int64_t ws = 0, wg = 0;
        for (int64_t i = 0; i < n; i++) {
            const double want = exp((double)(x[i] - mx)) / sum;
            if (want < 1e-37) CHECK(t, s0[i] < 1e-37f);
            else ws = ulps(s0[i], (float)want) > ws ? ulps(s0[i], (float)want) : ws;
        }
        CHECKF(t, ws <= 4, "softmax of %lld: %lld ulps from float64", (long long)n, (long long)ws);
        ref->swiglu(s1, x, up, n);
        for (int64_t i = 0; i < n; i++) {
            const double g = x[i], want = g / (1.0 + exp(-g)) * up[i];
            if (fabs(want) > 1e-30) wg = ulps(s1[i], (float)want) > wg ? ulps(s1[i], (float)want) : wg;
        }
        CHECKF(t, wg <= 4, "swiglu of %lld: %lld ulps from float64", (long long)n, (long long)wg);
        /* RMSNorm by up as the weight: float64's scale, then the two float products */
        float *r0 = malloc(sizeof(float) * (size_t)n);
        ref->rmsnorm(r0, x, up, n, 1e-5f);
        double ss = 0;
        for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
        const float want_scale = (float)(1.0 / sqrt(ss / (double)n + 1e-5));
        int64_t wr = 0;
        for (int64_t i = 0; i < n; i++) {
            const int64_t u = ulps(r0[i], (x[i] * want_scale) * up[i]);
            wr = u > wr ? u : wr;
        }
        CHECKF(t, wr <= 2, "rmsnorm of %lld: %lld ulps from a float64 scale", (long long)n, (long long)wr);
        for (int isa = 1; isa < NM_ISA_COUNT; isa++) {
            if (!nm_isa_available((nm_isa)isa)) continue;
            const nm_attn_kernel *k = nm_attn_kernel_get((nm_isa)isa);
            float *v = malloc(sizeof(float) * (size_t)n);
            memcpy(v, x, sizeof(float) * (size_t)n);
            k->softmax(v, n);
            CHECKF(t, memcmp(v, s0, sizeof(float) * (size_t)n) == 0, "%s softmax of %lld differs from the reference",
                   nm_isa_name((nm_isa)isa), (long long)n);
            memcpy(v, x, sizeof(float) * (size_t)n);
            k->swiglu(v, v, up, n); /* in place, as the model calls it */
            CHECKF(t, memcmp(v, s1, sizeof(float) * (size_t)n) == 0, "%s swiglu of %lld differs from the reference",
                   nm_isa_name((nm_isa)isa), (long long)n);
            k->rmsnorm(v, x, up, n, 1e-5f);
            CHECKF(t, memcmp(v, r0, sizeof(float) * (size_t)n) == 0, "%s rmsnorm of %lld differs from the reference",
                   nm_isa_name((nm_isa)isa), (long long)n);
            float *r1 = malloc(sizeof(float) * (size_t)n);
            ref->rmsnorm(r1, x, NULL, n, 1e-5f);
            k->rmsnorm(v, x, NULL, n, 1e-5f);
            CHECKF(t, memcmp(v, r1, sizeof(float) * (size_t)n) == 0, "%s rmsnorm of %lld without weights differs",
                   nm_isa_name((nm_isa)isa), (long long)n);
            free(r1);
            free(v);
        }
        free(r0);
        free(x);
        free(s0);
        free(s1);
        free(up);
    }
}

/* ---- golden logits at every level, in process ---- */

typedef struct golden_case {
    int32_t *tokens;
    size_t n_tokens;
    float *logits;
    size_t n_logits;
} golden_case;

static size_t golden_read(nm_test *t, const char *name, golden_case **out) {
    char rel[128];
    snprintf(rel, sizeof rel, "golden/%s.jsonl", name);
    size_t len;
    char *text = nm_test_read(nm_test_shared(rel), &len);
    *out = NULL;
    if (!CHECKF(t, text != NULL, "cannot read %s", rel)) return 0;
    size_t n = 0, cap = 0;
    golden_case *g = NULL;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        if (!CHECKF(t, o != NULL, "%s: bad JSON line", rel)) continue;
        json_t *tk = json_object_get(o, "tokens"), *lg = json_object_get(o, "last_logits");
        if (json_is_array(tk) && json_is_array(lg)) {
            if (n == cap) {
                cap = cap ? 2 * cap : 8;
                g = realloc(g, cap * sizeof *g);
            }
            golden_case *c = &g[n++];
            c->n_tokens = json_array_size(tk);
            c->tokens = malloc(sizeof(int32_t) * (c->n_tokens + 1));
            for (size_t i = 0; i < c->n_tokens; i++) c->tokens[i] = (int32_t)json_integer_value(json_array_get(tk, i));
            c->n_logits = json_array_size(lg);
            c->logits = malloc(sizeof(float) * (c->n_logits + 1));
            for (size_t i = 0; i < c->n_logits; i++) c->logits[i] = (float)json_number_value(json_array_get(lg, i));
        }
        json_decref(o);
    }
    free(text);
    *out = g;
    return n;
}

/* The last logits of every golden prompt (one batch each), at the level
 * NOMOAT_ISA names; also checks that token-by-token decoding on 3 threads
 * gives the same bits as the batch on 1.  NULL if the model cannot load. */
static float *golden_logits(nm_test *t, const char *model, const golden_case *g, size_t n, int32_t *n_vocab) {
    nm_err err = {0};
    nm_model *m;
    if (!CHECK_OK(t, nm_model_load(nm_test_shared(model), NULL, &m, &err), err)) return NULL;
    nm_model_info info;
    nm_model_get_info(m, &info);
    *n_vocab = info.n_vocab;
    nm_context_params p = nm_context_default_params();
    p.n_ctx = 256;
    p.n_threads = 1;
    nm_context *c1 = NULL, *c3 = NULL;
    CHECK_OK(t, nm_context_new(m, &p, &c1, &err), err);
    p.n_threads = 3;
    CHECK_OK(t, nm_context_new(m, &p, &c3, &err), err);
    float *out = calloc(n * (size_t)info.n_vocab + 1, sizeof(float));
    for (size_t k = 0; c1 && c3 && k < n; k++) {
        nm_context_truncate(c1, 0, NULL);
        nm_context_truncate(c3, 0, NULL);
        if (!CHECK_OK(t, nm_decode(c1, g[k].tokens, (int32_t)g[k].n_tokens, &err), err)) continue;
        memcpy(out + k * (size_t)info.n_vocab, nm_get_logits(c1), sizeof(float) * (size_t)info.n_vocab);
        if (k < 2) { /* the property, on a couple of prompts per model */
            for (size_t i = 0; i < g[k].n_tokens; i++) CHECK_OK(t, nm_decode(c3, g[k].tokens + i, 1, &err), err);
            CHECKF(t, memcmp(nm_get_logits(c3), out + k * (size_t)info.n_vocab, sizeof(float) * (size_t)info.n_vocab) == 0,
                   "%s case %zu: token by token on 3 threads differs from the batch on 1", model, k);
        }
    }
    nm_context_free(c1);
    nm_context_free(c3);
    nm_model_free(m);
    return out;
}

static void test_isa_golden(nm_test *t) {
    /* Tolerances of test_model.c (argued there): stories 0.02 / rms 0.005,
     * t256 0.03 / 0.006, tiny-random 1e-3 / 2e-4.  Quantized and BF16 models
     * must moreover give the scalar level's logits exactly. */
    static const struct {
        const char *model, *golden;
        double tol, rms_tol;
        bool exact;
    } files[] = {
        {"models/stories260K.gguf", "stories260K", 0.02, 0.005, false},
        {"models/stories260K-f16.gguf", "stories260K-f16", 0.02, 0.005, false},
        {"models/stories260K-bf16.gguf", "stories260K-bf16", 0.02, 0.005, true},
        {"models/t256-q8_0.gguf", "t256-q8_0", 0.03, 0.006, true},
        {"models/t256-q4_0.gguf", "t256-q4_0", 0.03, 0.006, true},
        {"models/t256-q4_k_m.gguf", "t256-q4_k_m", 0.03, 0.006, true},
        {"models/t256-q6_k.gguf", "t256-q6_k", 0.03, 0.006, true},
        {"models/llama-2-tiny-random.gguf", "llama-2-tiny-random", 1e-3, 2e-4, false},
    };
    char *saved = saved_isa_env();
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        golden_case *g;
        const size_t n = golden_read(t, files[f].golden, &g);
        float *scalar = NULL;
        for (int isa = 0; isa < NM_ISA_COUNT; isa++) {
            if (!nm_isa_available((nm_isa)isa)) continue;
            set_isa_env(nm_isa_name((nm_isa)isa));
            int32_t nv = 0;
            float *got = golden_logits(t, files[f].model, g, n, &nv);
            if (!got) continue;
            double worst = 0, worst_rms = 0, vs_scalar = 0;
            for (size_t k = 0; k < n; k++) {
                if (!CHECK(t, g[k].n_logits == (size_t)nv)) continue;
                double ss = 0;
                for (size_t i = 0; i < g[k].n_logits; i++) {
                    const double d = fabs((double)got[k * (size_t)nv + i] - g[k].logits[i]);
                    worst = fmax(worst, d);
                    ss += d * d;
                    if (scalar) vs_scalar = fmax(vs_scalar, fabs((double)got[k * (size_t)nv + i] - scalar[k * (size_t)nv + i]));
                }
                worst_rms = fmax(worst_rms, sqrt(ss / (double)g[k].n_logits));
            }
            printf("  %-8s %-20s max |logit - golden| %.5f, rms %.5f; vs scalar %.3g\n", nm_isa_name((nm_isa)isa),
                   files[f].golden, worst, worst_rms, vs_scalar);
            CHECKF(t, worst <= files[f].tol && worst_rms <= files[f].rms_tol, "%s at %s: max %.5f rms %.5f",
                   files[f].golden, nm_isa_name((nm_isa)isa), worst, worst_rms);
            if (scalar && files[f].exact)
                CHECKF(t, vs_scalar == 0, "%s at %s: logits differ from the scalar level's by %.3g", files[f].golden,
                       nm_isa_name((nm_isa)isa), vs_scalar);
            if (!scalar) scalar = got;
            else free(got);
        }
        free(scalar);
        for (size_t k = 0; k < n; k++) {
            free(g[k].tokens);
            free(g[k].logits);
        }
        free(g);
    }
    set_isa_env(saved);
    free(saved);
}

/* test_model (the whole golden and property suite, CLI included) once more
 * at every other level this CPU runs: the suite's own run covers the best
 * level.  Skipped under the sanitizers, whose run covers the levels through
 * test_isa_golden above in far less time. */
static void test_model_every_isa(nm_test *t) {
#if defined(__SANITIZE_ADDRESS__)
    printf("  skipped under AddressSanitizer\n");
    return;
#else
    char self[4096];
    const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 32);
    if (!CHECK(t, len > 0)) return;
    self[len] = 0;
    char *slash = strrchr(self, '/');
    if (!CHECK(t, slash != NULL)) return;
    strcpy(slash + 1, "test_model");
    if (!CHECKF(t, access(self, X_OK) == 0, "%s is not built", self)) return;
    for (int isa = 0; isa < NM_ISA_COUNT; isa++) {
        if (!nm_isa_available((nm_isa)isa) || (nm_isa)isa == nm_isa_best()) continue;
        /* NOMOAT_TEST_RUNNER: an emulator prefix (qemu-user for the
         * aarch64 build, see scripts/test-aarch64.sh) */
        const char *runner = getenv("NOMOAT_TEST_RUNNER");
        char cmd[4600];
        snprintf(cmd, sizeof cmd, "NOMOAT_ISA=%s %.256s '%s' 2>&1", nm_isa_name((nm_isa)isa), runner ? runner : "", self);
        char *out = NULL;
        const int rc = nm_test_sh(cmd, &out);
        const char *res = out ? strstr(out, "RESULT passed=") : NULL;
        printf("  NOMOAT_ISA=%s test_model: %.*s\n", nm_isa_name((nm_isa)isa), res ? (int)strcspn(res, "\n") : 16,
               res ? res : "(no result line)");
        CHECKF(t, rc == 0 && res && strstr(res, "failed=0"), "test_model at %s: exit %d, %s", nm_isa_name((nm_isa)isa),
               rc, res ? res : "no result");
        if (rc != 0 && out) {
            /* the failing lines, for the log */
            for (char *l = strtok(out, "\n"); l; l = strtok(NULL, "\n"))
                if (strncmp(l, "FAIL", 4) == 0) printf("    %s\n", l);
        }
        free(out);
    }
#endif
}

/* Whether a comma-separated list names the test. */
static bool listed(const char *list, const char *name) {
    const size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, name, n) == 0) return true;
        p += len + (p[len] == ',');
    }
    return false;
}

/* NOMOAT_TEST_ONLY=a,b runs only those tests, NOMOAT_TEST_SKIP=a,b all but
 * those (for slow emulated runs and debugging). */
static void run(const char *name, nm_test_fn fn) {
    const char *only = getenv("NOMOAT_TEST_ONLY"), *skip = getenv("NOMOAT_TEST_SKIP");
    if ((only && *only && !listed(only, name)) || (skip && listed(skip, name))) return;
    nm_test_run(name, fn);
}

int main(void) {
    run("f16_conversion", test_f16_conversion);
    run("kernels_random", test_kernels_random);
    run("kernels_real_tensors", test_kernels_real_tensors);
    run("matmul_threads", test_matmul_threads);
    run("matmul_multi", test_matmul_multi);
    run("matmul_glu", test_matmul_glu);
    run("mat_init_errors", test_mat_init_errors);
    run("pool", test_pool);
    run("isa_selection", test_isa_selection);
    run("act_extra", test_act_extra);
    run("isa_conversion", test_isa_conversion);
    run("isa_vs_scalar", test_isa_vs_scalar);
    run("isa_extreme_blocks", test_isa_extreme_blocks);
    run("isa_k_extreme", test_isa_k_extreme);
    run("gemv_shapes", test_gemv_shapes);
    run("matmul_t", test_matmul_t);
    run("attention", test_attention);
    run("attn_f16", test_attn_f16);
    run("row_ops", test_row_ops);
    run("isa_golden", test_isa_golden);
    run("model_every_isa", test_model_every_isa);
    return nm_test_finish();
}
