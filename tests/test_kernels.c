/* test_kernels.c - every typed dot-product kernel and the threaded matmul
 * against a float64 reference built from the scalar dequantizers of
 * quants.c (the ggml reference conversions), plus the thread pool.
 *
 * Two references per kernel:
 *  - exact: the weight rows and the converted activation row both
 *    dequantized, multiplied and summed in double.  The kernels do integer
 *    block sums with float scales, so they must agree to float rounding
 *    (relative 1e-5 of sum |w x|): any packing or scale bug shows here.
 *  - original: against the unconverted float activations, within the error
 *    the activation conversion may introduce (one quantization step of the
 *    block per element: sum |w| * amax_block / 127; F16/BF16 rounding).
 * Weights come from the reference quantizers where they exist, from random
 * block bytes (with sane scales) for the K-quants, and from real llama.cpp
 * tensors of the t256 files. */
#include "testlib.h"
#include "base/base.h"
#include "base/threads.h"
#include "tensor/kernels.h"
#include "tensor/matmul.h"
#include "tensor/quants.h"
#include "tensor/types.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

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

/* The threaded, tiled matmul gives exactly the per-row kernel results, for
 * any thread count and for row slices. */
static void test_matmul_threads(nm_test *t) {
    static const nm_type types[] = {NM_TYPE_F32, NM_TYPE_F16, NM_TYPE_Q8_0, NM_TYPE_Q4_0, NM_TYPE_Q4_K, NM_TYPE_Q6_K};
    nm_rng r;
    nm_rng_seed(&r, 3);
    nm_pool *pools[3] = {NULL};
    nm_err err = {0};
    CHECK_OK(t, nm_pool_new(1, &pools[0], &err), err);
    CHECK_OK(t, nm_pool_new(2, &pools[1], &err), err);
    CHECK_OK(t, nm_pool_new(5, &pools[2], &err), err);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int64_t rows = 37, cols = 512, n_tok = 6;
        uint8_t *w = make_weights(&r, types[ti], rows, cols);
        nm_mat m;
        CHECK_OK(t, nm_mat_init(&m, "w", types[ti], cols, rows, w, &err), err);
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
    nm_pool *p;
    CHECK(t, nm_pool_new(0, &p, &err) == NM_ERR_ARG);
    CHECK(t, nm_cpu_count() >= 1);
}

int main(void) {
    nm_test_run("f16_conversion", test_f16_conversion);
    nm_test_run("kernels_random", test_kernels_random);
    nm_test_run("kernels_real_tensors", test_kernels_real_tensors);
    nm_test_run("matmul_threads", test_matmul_threads);
    nm_test_run("mat_init_errors", test_mat_init_errors);
    nm_test_run("pool", test_pool);
    return nm_test_finish();
}
