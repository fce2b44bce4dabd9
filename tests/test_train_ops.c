/* test_train_ops.c - every training op's backward against central finite
 * differences of an independent float64 forward written here.
 *
 * How the check works: for an op y = f(x, ...) the test draws random inputs
 * and a random cotangent R, and defines the scalar L = sum(R * y).  The
 * analytic gradient is the op's float32 backward fed with dy = R; the
 * reference gradient is (L(x + h e_i) - L(x - h e_i)) / 2h computed with the
 * float64 forward below, h = 1e-6.
 *
 * Why a relative error below 1e-3 is the right bar: the float64 finite
 * difference is accurate to ~1e-9 (truncation h^2 |f'''| ~ 1e-12, rounding
 * eps |L| / h ~ 1e-10), so the difference measures the float32 backward alone.
 * float32 carries ~6e-8 relative error per operation; the sums here have at
 * most a few hundred terms with some cancellation, giving ~1e-6..1e-5
 * relative error in the norm.  1e-3 leaves two orders of margin for that
 * while any real mistake (a missing term, a wrong sign, a transposed index,
 * the wrong kv head) moves the gradient by O(1) relative error. */
#include "testlib.h"
#include "train/ops.h"
#include "base/base.h"
#include "base/threads.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FD_H 1e-6
#define REL_TOL 1e-3

static nm_rng RNG;

static float *rand_f(int64_t n, double scale) {
    float *p = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) p[i] = (float)(scale * (2.0 * nm_rng_uniform(&RNG) - 1.0));
    return p;
}
static double *to_d(const float *p, int64_t n) {
    double *d = malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++) d[i] = p[i];
    return d;
}
static float *zeros_f(int64_t n) { return calloc((size_t)n, sizeof(float)); }

typedef double (*loss_fn)(void *ctx);

/* Central differences of loss(ctx) with respect to each element of param. */
static double *fd_grad(loss_fn loss, void *ctx, double *param, int64_t n) {
    double *g = malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        double save = param[i];
        param[i] = save + FD_H;
        double lp = loss(ctx);
        param[i] = save - FD_H;
        double lm = loss(ctx);
        param[i] = save;
        g[i] = (lp - lm) / (2 * FD_H);
    }
    return g;
}

/* ||got - ref|| / ||ref|| below REL_TOL, and the worst element's error small
 * against the largest reference magnitude. */
static void check_grad(nm_test *t, const char *what, const float *got, const double *ref, int64_t n) {
    double num = 0, den = 0, maxerr = 0, maxref = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = (double)got[i] - ref[i];
        num += e * e;
        den += ref[i] * ref[i];
        if (fabs(e) > maxerr) maxerr = fabs(e);
        if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
    }
    double rel = sqrt(num) / (sqrt(den) > 0 ? sqrt(den) : 1);
    CHECKF(t, den > 0, "%s: reference gradient is all zero (test does not test)", what);
    CHECKF(t, rel < REL_TOL, "%s: relative error %.3g (n=%lld)", what, rel, (long long)n);
    CHECKF(t, maxerr < REL_TOL * maxref, "%s: max abs error %.3g vs max |ref| %.3g", what, maxerr, maxref);
}

/* Forward outputs: float32 vs float64 on the same inputs. */
static void check_fwd(nm_test *t, const char *what, const float *got, const double *ref, int64_t n, double tol) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    double rel = sqrt(num) / (den > 0 ? sqrt(den) : 1);
    CHECKF(t, rel < tol, "%s forward: relative error %.3g", what, rel);
}

static double dotd(const double *a, const double *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static nm_ops_ctx serial_ctx(int64_t max_cols) {
    nm_ops_ctx c;
    nm_err err = {0};
    if (nm_ops_ctx_init(&c, NULL, max_cols, &err)) abort();
    return c;
}

/* ======================================================================== */
/* RMSNorm                                                                  */
/* ======================================================================== */

typedef struct rms_ref {
    double *x, *w, *R;
    int64_t T, C;
    double eps;
} rms_ref;

static void rms_ref_fwd(const rms_ref *r, double *y) {
    for (int64_t t = 0; t < r->T; t++) {
        double ss = 0;
        for (int64_t i = 0; i < r->C; i++) ss += r->x[t * r->C + i] * r->x[t * r->C + i];
        double inv = 1.0 / sqrt(ss / (double)r->C + r->eps);
        for (int64_t i = 0; i < r->C; i++) y[t * r->C + i] = r->x[t * r->C + i] * inv * r->w[i];
    }
}
static double rms_ref_loss(void *ctx) {
    rms_ref *r = ctx;
    double *y = malloc((size_t)(r->T * r->C) * sizeof(double));
    rms_ref_fwd(r, y);
    double l = dotd(y, r->R, r->T * r->C);
    free(y);
    return l;
}

static void test_rmsnorm(nm_test *t) {
    int64_t T = 5, C = 12;
    float *x = rand_f(T * C, 2.0), *w = rand_f(C, 1.5), *R = rand_f(T * C, 1.0);
    nm_ops_ctx c = serial_ctx(C);
    float *y = zeros_f(T * C), *rstd = zeros_f(T), *dx = zeros_f(T * C), *dw = zeros_f(C);
    nm_op_rmsnorm_fwd(&c, y, rstd, x, w, T, C, 1e-5f);
    nm_op_rmsnorm_bwd(&c, dx, dw, R, x, w, rstd, T, C);
    rms_ref r = {to_d(x, T * C), to_d(w, C), to_d(R, T * C), T, C, (double)1e-5f};
    double *yr = malloc((size_t)(T * C) * sizeof(double));
    rms_ref_fwd(&r, yr);
    check_fwd(t, "rmsnorm", y, yr, T * C, 1e-6);
    double *gx = fd_grad(rms_ref_loss, &r, r.x, T * C), *gw = fd_grad(rms_ref_loss, &r, r.w, C);
    check_grad(t, "rmsnorm dx", dx, gx, T * C);
    check_grad(t, "rmsnorm dw", dw, gw, C);
    free(gx), free(gw), free(yr), free(r.x), free(r.w), free(r.R);
    free(x), free(w), free(R), free(y), free(rstd), free(dx), free(dw);
    nm_ops_ctx_deinit(&c);
}

/* ======================================================================== */
/* matmul over every stored weight type                                     */
/* ======================================================================== */

typedef struct mm_ref {
    double *x, *W, *R; /* W: [rows x cols] */
    int64_t T, rows, cols;
} mm_ref;

static double mm_ref_loss(void *ctx) {
    mm_ref *m = ctx;
    double l = 0;
    for (int64_t t = 0; t < m->T; t++)
        for (int64_t o = 0; o < m->rows; o++)
            l += m->R[t * m->rows + o] * dotd(m->x + t * m->cols, m->W + o * m->cols, m->cols);
    return l;
}

/* Runs forward and backward of a weight stored as `type` in `data`, checks
 * them against the float64 product with the dequantized weight. */
static void matmul_case(nm_test *t, const char *what, nm_type type, const void *data, int64_t rows, int64_t cols,
                        bool want_dW) {
    int64_t T = 3;
    nm_err err = {0};
    nm_wmat W;
    if (!CHECK_OK(t, nm_wmat_init(&W, what, data, type, rows, cols, &err), err)) return;
    float *wf = zeros_f(rows * cols);
    for (int64_t r = 0; r < rows; r++) nm_wmat_row(&W, r, wf + r * cols);
    float *x = rand_f(T * cols, 1.0), *R = rand_f(T * rows, 1.0);
    float *y = zeros_f(T * rows), *dx = zeros_f(T * cols), *dW = want_dW ? zeros_f(rows * cols) : NULL;
    nm_ops_ctx c = serial_ctx(cols);
    nm_op_matmul_fwd(&c, y, x, &W, T);
    nm_op_matmul_bwd(&c, dx, dW, R, x, &W, T);
    mm_ref m = {to_d(x, T * cols), to_d(wf, rows * cols), to_d(R, T * rows), T, rows, cols};
    double *yr = malloc((size_t)(T * rows) * sizeof(double));
    for (int64_t tt = 0; tt < T; tt++)
        for (int64_t o = 0; o < rows; o++) yr[tt * rows + o] = dotd(m.x + tt * cols, m.W + o * cols, cols);
    char name[96];
    snprintf(name, sizeof name, "matmul %s", what);
    check_fwd(t, name, y, yr, T * rows, 1e-5);
    double *gx = fd_grad(mm_ref_loss, &m, m.x, T * cols);
    snprintf(name, sizeof name, "matmul %s dx", what);
    check_grad(t, name, dx, gx, T * cols);
    if (want_dW) {
        double *gW = fd_grad(mm_ref_loss, &m, m.W, rows * cols);
        snprintf(name, sizeof name, "matmul %s dW", what);
        check_grad(t, name, dW, gW, rows * cols);
        free(gW);
    }
    free(gx), free(yr), free(m.x), free(m.W), free(m.R);
    free(wf), free(x), free(R), free(y), free(dx), free(dW);
    nm_ops_ctx_deinit(&c);
}

static void test_matmul_types(nm_test *t) {
    int64_t rows = 7, cols = 64; /* rows not a multiple of the tile: edge tiles run */
    float *w = rand_f(rows * cols, 0.5);
    matmul_case(t, "f32", NM_TYPE_F32, w, rows, cols, true);
    nm_type types[] = {NM_TYPE_F16, NM_TYPE_BF16, NM_TYPE_Q8_0, NM_TYPE_Q4_0};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        size_t nb = nm_type_row_bytes(types[k], cols) * (size_t)rows;
        void *q = malloc(nb);
        nm_err err = {0};
        CHECK_OK(t, nm_quantize(types[k], w, q, rows * cols, &err), err);
        matmul_case(t, nm_type_name(types[k]), types[k], q, rows, cols, false);
        free(q);
    }
    free(w);
    /* Q4_K and Q6_K blocks as llama.cpp wrote them (no quantizer here). */
    nm_gguf *g;
    nm_err err = {0};
    if (!CHECK_OK(t, nm_gguf_open(nm_test_shared("models/t256-q4_k_m.gguf"), &g, &err), err)) return;
    const char *names[] = {"blk.0.attn_k.weight", "output.weight"};
    for (int k = 0; k < 2; k++) {
        const nm_gguf_tensor *gt = nm_gguf_find_tensor(g, names[k]);
        if (!CHECKF(t, gt != NULL, "%s missing", names[k])) continue;
        CHECK(t, gt->type == (k == 0 ? NM_TYPE_Q4_K : NM_TYPE_Q6_K));
        matmul_case(t, nm_type_name(gt->type), gt->type, gt->data, 5, gt->ne[0], false);
    }
    nm_gguf_free(g);
}

/* ======================================================================== */
/* LoRA                                                                     */
/* ======================================================================== */

typedef struct lora_ref {
    double *x, *A, *B, *R, *mult; /* mult: dropout keep-multiplier per x element */
    int64_t T, r, in, out;
    double s;
} lora_ref;

static double lora_ref_loss(void *ctx) {
    lora_ref *L = ctx;
    double l = 0;
    double *xd = malloc((size_t)L->in * sizeof(double)), *u = malloc((size_t)L->r * sizeof(double));
    for (int64_t t = 0; t < L->T; t++) {
        for (int64_t i = 0; i < L->in; i++) xd[i] = L->x[t * L->in + i] * L->mult[t * L->in + i];
        for (int64_t j = 0; j < L->r; j++) u[j] = dotd(L->A + j * L->in, xd, L->in);
        for (int64_t o = 0; o < L->out; o++) l += L->R[t * L->out + o] * L->s * dotd(L->B + o * L->r, u, L->r);
    }
    free(xd), free(u);
    return l;
}

static void lora_case(nm_test *t, float p) {
    int64_t T = 4, r = 3, in = 10, out = 6;
    float *x = rand_f(T * in, 1.0), *A = rand_f(r * in, 0.5), *B = rand_f(out * r, 0.5), *R = rand_f(T * out, 1.0);
    float *dA = zeros_f(r * in), *dB = zeros_f(out * r), *dx = zeros_f(T * in);
    nm_lora_op L = {A, B, dA, dB, r, in, out, 2.0f, p, 0x1234abcdULL};
    float *y = zeros_f(T * out), *u = zeros_f(T * r), *tmp = zeros_f(nm_op_lora_tmp_floats(&L, T));
    nm_ops_ctx c = serial_ctx(in);
    nm_op_lora_fwd(&c, y, u, x, &L, T, tmp);
    nm_op_lora_bwd(&c, dx, R, x, u, &L, T, tmp);
    lora_ref lr = {to_d(x, T * in), to_d(A, r * in), to_d(B, out * r), to_d(R, T * out), NULL, T, r, in, out, 2.0};
    lr.mult = malloc((size_t)(T * in) * sizeof(double));
    int dropped = 0;
    for (int64_t i = 0; i < T * in; i++) {
        lr.mult[i] = nm_lora_drop_mult(L.drop_seed, (uint64_t)i, p);
        dropped += lr.mult[i] == 0;
    }
    if (p > 0) CHECKF(t, dropped > 0, "dropout %.2f dropped nothing of %lld", p, (long long)(T * in));
    char name[64];
    double *gx = fd_grad(lora_ref_loss, &lr, lr.x, T * in);
    double *gA = fd_grad(lora_ref_loss, &lr, lr.A, r * in);
    double *gB = fd_grad(lora_ref_loss, &lr, lr.B, out * r);
    snprintf(name, sizeof name, "lora(p=%.1f) dx", p);
    check_grad(t, name, dx, gx, T * in);
    snprintf(name, sizeof name, "lora(p=%.1f) dA", p);
    check_grad(t, name, dA, gA, r * in);
    snprintf(name, sizeof name, "lora(p=%.1f) dB", p);
    check_grad(t, name, dB, gB, out * r);
    /* forward: L(x) is linear in R, so the forward output is dL/dR */
    double *yr = fd_grad(lora_ref_loss, &lr, lr.R, T * out);
    snprintf(name, sizeof name, "lora(p=%.1f)", p);
    check_fwd(t, name, y, yr, T * out, 1e-5);
    free(yr), free(gx), free(gA), free(gB);
    free(lr.x), free(lr.A), free(lr.B), free(lr.R), free(lr.mult);
    free(x), free(A), free(B), free(R), free(dA), free(dB), free(dx), free(y), free(u), free(tmp);
    nm_ops_ctx_deinit(&c);
}

static void test_lora(nm_test *t) {
    lora_case(t, 0.0f);
    lora_case(t, 0.3f);
}

/* The dropout coin: right rate, right scale, same coin for the same index. */
static void test_lora_dropout_mask(nm_test *t) {
    const float p = 0.1f;
    int64_t n = 200000, zero = 0, bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float m = nm_lora_drop_mult(42, (uint64_t)i, p);
        if (m == 0)
            zero++;
        else if (m != 1.0f / (1.0f - p))
            bad++;
        if (m != nm_lora_drop_mult(42, (uint64_t)i, p)) bad++;
    }
    double rate = (double)zero / (double)n; /* sd of the rate: sqrt(p(1-p)/n) = 6.7e-4 */
    CHECKF(t, fabs(rate - p) < 5e-3, "dropout rate %.4f, expected %.2f", rate, p);
    CHECK(t, bad == 0);
    CHECK(t, nm_lora_drop_mult(42, 7, 0.0f) == 1.0f);
}

/* ======================================================================== */
/* RoPE                                                                     */
/* ======================================================================== */

typedef struct rope_ref {
    double *x, *R;
    const int32_t *pos;
    int64_t T, H, hd, n_rot;
    double base;
    bool neox;
} rope_ref;

static void rope_ref_fwd(const rope_ref *r, double *y) {
    memcpy(y, r->x, (size_t)(r->T * r->H * r->hd) * sizeof(double));
    for (int64_t t = 0; t < r->T; t++)
        for (int64_t h = 0; h < r->H; h++)
            for (int64_t i = 0; i < r->n_rot / 2; i++) {
                double th = r->pos[t] * pow(r->base, -2.0 * (double)i / (double)r->n_rot);
                double *v = y + (t * r->H + h) * r->hd;
                int64_t a = r->neox ? i : 2 * i, b = r->neox ? i + r->n_rot / 2 : 2 * i + 1;
                double x0 = v[a], x1 = v[b];
                v[a] = x0 * cos(th) - x1 * sin(th);
                v[b] = x0 * sin(th) + x1 * cos(th);
            }
}
static double rope_ref_loss(void *ctx) {
    rope_ref *r = ctx;
    int64_t n = r->T * r->H * r->hd;
    double *y = malloc((size_t)n * sizeof(double));
    rope_ref_fwd(r, y);
    double l = dotd(y, r->R, n);
    free(y);
    return l;
}

static void rope_case(nm_test *t, bool neox, int64_t n_rot) {
    int64_t T = 5, H = 3, hd = 8, n = T * H * hd;
    int32_t pos[5] = {0, 1, 7, 2, 300};
    float *x = rand_f(n, 1.0), *R = rand_f(n, 1.0);
    float *cosv = zeros_f(T * n_rot / 2), *sinv = zeros_f(T * n_rot / 2);
    nm_rope_table(cosv, sinv, pos, T, n_rot, 10000.0f, 1.0f);
    nm_ops_ctx c = serial_ctx(8);
    float *y = malloc((size_t)n * sizeof(float));
    memcpy(y, x, (size_t)n * sizeof(float));
    nm_op_rope_fwd(&c, y, cosv, sinv, T, H, hd, n_rot, neox);
    float *dx = malloc((size_t)n * sizeof(float));
    memcpy(dx, R, (size_t)n * sizeof(float));
    nm_op_rope_bwd(&c, dx, cosv, sinv, T, H, hd, n_rot, neox);
    rope_ref r = {to_d(x, n), to_d(R, n), pos, T, H, hd, n_rot, 10000.0, neox};
    double *yr = malloc((size_t)n * sizeof(double));
    rope_ref_fwd(&r, yr);
    char name[64];
    snprintf(name, sizeof name, "rope %s n_rot=%lld", neox ? "neox" : "normal", (long long)n_rot);
    check_fwd(t, name, y, yr, n, 1e-6);
    double *gx = fd_grad(rope_ref_loss, &r, r.x, n);
    check_grad(t, name, dx, gx, n);
    free(gx), free(yr), free(r.x), free(r.R), free(x), free(R), free(cosv), free(sinv), free(y), free(dx);
    nm_ops_ctx_deinit(&c);
}

static void test_rope(nm_test *t) {
    rope_case(t, false, 8);
    rope_case(t, true, 8);
    rope_case(t, false, 4); /* partial rotary: the rest passes through */
    rope_case(t, true, 6);
}

/* LLaMA GGUF convention in numbers: position 1, pair 0 rotates by exactly 1
 * radian; features 0 and 1 (adjacent) move together. */
static void test_rope_convention(nm_test *t) {
    int32_t pos[1] = {1};
    float cosv[2], sinv[2];
    nm_rope_table(cosv, sinv, pos, 1, 4, 10000.0f, 1.0f);
    float x[4] = {1, 0, 0, 0};
    nm_ops_ctx c = serial_ctx(4);
    nm_op_rope_fwd(&c, x, cosv, sinv, 1, 1, 4, 4, false);
    CHECK(t, fabsf(x[0] - cosf(1.0f)) < 1e-6f && fabsf(x[1] - sinf(1.0f)) < 1e-6f && x[2] == 0 && x[3] == 0);
    float y[4] = {1, 0, 0, 0};
    nm_op_rope_fwd(&c, y, cosv, sinv, 1, 1, 4, 4, true);
    CHECK(t, fabsf(y[0] - cosf(1.0f)) < 1e-6f && y[1] == 0 && fabsf(y[2] - sinf(1.0f)) < 1e-6f);
    nm_ops_ctx_deinit(&c);
}

/* ======================================================================== */
/* attention                                                                */
/* ======================================================================== */

typedef struct attn_ref {
    double *q, *k, *v, *R;
    int64_t n_seq, L, H, G, hd;
    const int32_t *doc;
} attn_ref;

/* Materialises the full score matrix per head, the textbook way. */
static void attn_ref_fwd(const attn_ref *a, double *out) {
    int64_t H = a->H, G = a->G, hd = a->hd, L = a->L;
    double *p = malloc((size_t)L * sizeof(double));
    for (int64_t b = 0; b < a->n_seq; b++)
        for (int64_t h = 0; h < H; h++) {
            int64_t g = h / (H / G);
            for (int64_t i = 0; i < L; i++) {
                int64_t ti = b * L + i;
                double mx = -INFINITY;
                for (int64_t j = 0; j < L; j++) {
                    int64_t tj = b * L + j;
                    bool ok = j <= i && (!a->doc || a->doc[tj] == a->doc[ti]);
                    p[j] = ok ? dotd(a->q + (ti * H + h) * hd, a->k + (tj * G + g) * hd, hd) / sqrt((double)hd)
                              : -INFINITY;
                    if (p[j] > mx) mx = p[j];
                }
                double s = 0;
                for (int64_t j = 0; j < L; j++) s += (p[j] = exp(p[j] - mx));
                double *o = out + (ti * H + h) * hd;
                for (int64_t d = 0; d < hd; d++) o[d] = 0;
                for (int64_t j = 0; j < L; j++)
                    for (int64_t d = 0; d < hd; d++) o[d] += p[j] / s * a->v[((b * L + j) * G + g) * hd + d];
            }
        }
    free(p);
}
static double attn_ref_loss(void *ctx) {
    attn_ref *a = ctx;
    int64_t n = a->n_seq * a->L * a->H * a->hd;
    double *o = malloc((size_t)n * sizeof(double));
    attn_ref_fwd(a, o);
    double l = dotd(o, a->R, n);
    free(o);
    return l;
}

static void attn_case(nm_test *t, const char *what, int64_t n_seq, int64_t L, int64_t H, int64_t G,
                      const int32_t *doc, nm_pool *pool) {
    int64_t hd = 4, T = n_seq * L, nq = T * H * hd, nk = T * G * hd;
    float *q = rand_f(nq, 1.5), *k = rand_f(nk, 1.5), *v = rand_f(nk, 1.0), *R = rand_f(nq, 1.0);
    float *out = zeros_f(nq), *lse = zeros_f(T * H), *dq = zeros_f(nq), *dk = zeros_f(nk), *dv = zeros_f(nk);
    nm_ops_ctx c;
    nm_err err = {0};
    CHECK_OK(t, nm_ops_ctx_init(&c, pool, hd, &err), err);
    nm_attn_shape s = {n_seq, L, H, G, hd, doc, NULL};
    s.scratch = zeros_f(nm_op_attn_scratch_floats(&s, c.nth));
    nm_op_attn_fwd(&c, out, lse, q, k, v, &s);
    nm_op_attn_bwd(&c, dq, dk, dv, R, q, k, v, out, lse, &s);
    attn_ref a = {to_d(q, nq), to_d(k, nk), to_d(v, nk), to_d(R, nq), n_seq, L, H, G, hd, doc};
    double *yr = malloc((size_t)nq * sizeof(double));
    attn_ref_fwd(&a, yr);
    char name[96];
    snprintf(name, sizeof name, "attn %s", what);
    check_fwd(t, name, out, yr, nq, 1e-5);
    double *gq = fd_grad(attn_ref_loss, &a, a.q, nq), *gk = fd_grad(attn_ref_loss, &a, a.k, nk),
           *gv = fd_grad(attn_ref_loss, &a, a.v, nk);
    snprintf(name, sizeof name, "attn %s dq", what);
    check_grad(t, name, dq, gq, nq);
    snprintf(name, sizeof name, "attn %s dk", what);
    check_grad(t, name, dk, gk, nk);
    snprintf(name, sizeof name, "attn %s dv", what);
    check_grad(t, name, dv, gv, nk);
    free(gq), free(gk), free(gv), free(yr), free(a.q), free(a.k), free(a.v), free(a.R);
    free(q), free(k), free(v), free(R), free(out), free(lse), free(dq), free(dk), free(dv), free(s.scratch);
    nm_ops_ctx_deinit(&c);
}

static void test_attention(nm_test *t) {
    attn_case(t, "mha", 1, 6, 2, 2, NULL, NULL);
    attn_case(t, "gqa 4/2, 2 seqs", 2, 5, 4, 2, NULL, NULL);
    attn_case(t, "mqa 4/1", 1, 5, 4, 1, NULL, NULL);
    /* packed: documents [0 0 0 1 1 2 2] in seq 0 and [5 5 5 5 6 6 6] in seq 1 */
    static const int32_t doc[14] = {0, 0, 0, 1, 1, 2, 2, 5, 5, 5, 5, 6, 6, 6};
    attn_case(t, "gqa packed docs", 2, 7, 4, 2, doc, NULL);
}

/* Packed documents must not see each other: the second document of a
 * packed row gives exactly what it gives alone. */
static void test_attention_packing_isolated(nm_test *t) {
    int64_t H = 4, G = 2, hd = 4, L1 = 3, L2 = 4, L = L1 + L2;
    float *q = rand_f(L * H * hd, 1.0), *k = rand_f(L * G * hd, 1.0), *v = rand_f(L * G * hd, 1.0);
    float *out = zeros_f(L * H * hd), *lse = zeros_f(L * H), *out2 = zeros_f(L2 * H * hd), *lse2 = zeros_f(L2 * H);
    int32_t doc[7] = {3, 3, 3, 4, 4, 4, 4};
    nm_ops_ctx c = serial_ctx(hd);
    float *scr = zeros_f(2 * NM_ATTN_QB * L);
    nm_attn_shape s = {1, L, H, G, hd, doc, scr};
    nm_op_attn_fwd(&c, out, lse, q, k, v, &s);
    nm_attn_shape s2 = {1, L2, H, G, hd, NULL, scr};
    nm_op_attn_fwd(&c, out2, lse2, q + L1 * H * hd, k + L1 * G * hd, v + L1 * G * hd, &s2);
    CHECK(t, memcmp(out + L1 * H * hd, out2, (size_t)(L2 * H * hd) * sizeof(float)) == 0);
    free(q), free(k), free(v), free(out), free(lse), free(out2), free(lse2), free(scr);
    nm_ops_ctx_deinit(&c);
}

/* ======================================================================== */
/* SwiGLU, residual, embedding, cross-entropy                                */
/* ======================================================================== */

typedef struct ew_ref {
    double *g, *u, *R;
    int64_t n;
} ew_ref;

static double swiglu_ref_loss(void *ctx) {
    ew_ref *e = ctx;
    double l = 0;
    for (int64_t i = 0; i < e->n; i++) l += e->R[i] * e->g[i] / (1.0 + exp(-e->g[i])) * e->u[i];
    return l;
}

static void test_swiglu(nm_test *t) {
    int64_t n = 40;
    float *g = rand_f(n, 4.0), *u = rand_f(n, 2.0), *R = rand_f(n, 1.0);
    float *h = zeros_f(n), *dg = zeros_f(n), *du = zeros_f(n);
    nm_ops_ctx c = serial_ctx(1);
    nm_op_swiglu_fwd(&c, h, g, u, n);
    nm_op_swiglu_bwd(&c, dg, du, R, g, u, n);
    ew_ref e = {to_d(g, n), to_d(u, n), to_d(R, n), n};
    double *hr = fd_grad(swiglu_ref_loss, &e, e.R, n);
    check_fwd(t, "swiglu", h, hr, n, 1e-6);
    double *gg = fd_grad(swiglu_ref_loss, &e, e.g, n), *gu = fd_grad(swiglu_ref_loss, &e, e.u, n);
    check_grad(t, "swiglu dg", dg, gg, n);
    check_grad(t, "swiglu du", du, gu, n);
    free(hr), free(gg), free(gu), free(e.g), free(e.u), free(e.R);
    free(g), free(u), free(R), free(h), free(dg), free(du);
    nm_ops_ctx_deinit(&c);
}

static double add_ref_loss(void *ctx) {
    ew_ref *e = ctx;
    double l = 0;
    for (int64_t i = 0; i < e->n; i++) l += e->R[i] * (e->g[i] + e->u[i]);
    return l;
}

static void test_residual(nm_test *t) {
    int64_t n = 20;
    float *a = rand_f(n, 1.0), *b = rand_f(n, 1.0), *R = rand_f(n, 1.0);
    float *y = zeros_f(n), *da = zeros_f(n), *db = zeros_f(n);
    nm_ops_ctx c = serial_ctx(1);
    nm_op_add_fwd(&c, y, a, b, n);
    nm_op_add_bwd(&c, da, db, R, n);
    ew_ref e = {to_d(a, n), to_d(b, n), to_d(R, n), n};
    double *ga = fd_grad(add_ref_loss, &e, e.g, n), *gb = fd_grad(add_ref_loss, &e, e.u, n);
    double *yr = fd_grad(add_ref_loss, &e, e.R, n);
    check_fwd(t, "add", y, yr, n, 1e-7);
    check_grad(t, "add da", da, ga, n);
    check_grad(t, "add db", db, gb, n);
    free(ga), free(gb), free(yr), free(e.g), free(e.u), free(e.R);
    free(a), free(b), free(R), free(y), free(da), free(db);
    nm_ops_ctx_deinit(&c);
}

typedef struct emb_ref {
    double *E, *R;
    const int32_t *tok;
    int64_t T, dim;
} emb_ref;

static double emb_ref_loss(void *ctx) {
    emb_ref *e = ctx;
    double l = 0;
    for (int64_t t = 0; t < e->T; t++) l += dotd(e->E + e->tok[t] * e->dim, e->R + t * e->dim, e->dim);
    return l;
}

static void test_embedding(nm_test *t) {
    int64_t V = 9, dim = 6, T = 7;
    int32_t tok[7] = {3, 0, 3, 8, 5, 3, 0}; /* repeats: gradients of one row add up */
    float *E = rand_f(V * dim, 1.0), *R = rand_f(T * dim, 1.0);
    float *x = zeros_f(T * dim), *dE = zeros_f(V * dim);
    nm_wmat W;
    nm_err err = {0};
    CHECK_OK(t, nm_wmat_init(&W, "E", E, NM_TYPE_F32, V, dim, &err), err);
    nm_ops_ctx c = serial_ctx(dim);
    nm_op_embed_fwd(&c, x, tok, T, &W);
    nm_op_embed_bwd(&c, dE, R, tok, T, dim);
    emb_ref e = {to_d(E, V * dim), to_d(R, T * dim), tok, T, dim};
    double *gE = fd_grad(emb_ref_loss, &e, e.E, V * dim), *xr = fd_grad(emb_ref_loss, &e, e.R, T * dim);
    check_fwd(t, "embed", x, xr, T * dim, 1e-7);
    check_grad(t, "embed dE", dE, gE, V * dim);
    /* F16 table: rows are dequantized */
    uint16_t h[54];
    for (int i = 0; i < 54; i++) h[i] = nm_f32_to_f16(E[i]);
    CHECK_OK(t, nm_wmat_init(&W, "E16", h, NM_TYPE_F16, V, dim, &err), err);
    nm_op_embed_fwd(&c, x, tok, T, &W);
    CHECK(t, x[1 * dim + 2] == nm_f16_to_f32(h[0 * dim + 2]));
    free(gE), free(xr), free(e.E), free(e.R), free(E), free(R), free(x), free(dE);
    nm_ops_ctx_deinit(&c);
}

typedef struct xent_ref {
    double *logits;
    const int32_t *target;
    int64_t T, V;
} xent_ref;

/* Mean over unmasked rows of -log softmax[target]. */
static double xent_ref_loss(void *ctx) {
    xent_ref *x = ctx;
    double l = 0;
    int64_t n = 0;
    for (int64_t t = 0; t < x->T; t++) {
        if (x->target[t] < 0) continue;
        const double *z = x->logits + t * x->V;
        double s = 0;
        for (int64_t i = 0; i < x->V; i++) s += exp(z[i]);
        l += log(s) - z[x->target[t]];
        n++;
    }
    return l / (double)n;
}

static void test_cross_entropy(nm_test *t) {
    int64_t T = 6, V = 11;
    int32_t target[6] = {-1, 4, 0, -1, 10, 4}; /* prompt positions masked */
    float *logits = rand_f(T * V, 3.0), *loss = zeros_f(T), *dl = zeros_f(T * V);
    nm_ops_ctx c = serial_ctx(1);
    int64_t n = nm_op_xent_fwd(&c, loss, logits, target, T, V);
    CHECK(t, n == 4);
    CHECK(t, loss[0] == 0 && loss[3] == 0);
    double sum = 0;
    for (int64_t i = 0; i < T; i++) sum += loss[i];
    xent_ref x = {to_d(logits, T * V), target, T, V};
    double ref = xent_ref_loss(&x);
    CHECKF(t, fabs(sum / (double)n - ref) < 1e-6 * fabs(ref), "loss %.9g vs %.9g", sum / (double)n, ref);
    nm_op_xent_bwd(&c, dl, logits, target, T, V, 1.0f / (float)n);
    double *g = fd_grad(xent_ref_loss, &x, x.logits, T * V);
    check_grad(t, "xent dlogits", dl, g, T * V);
    /* the fused form: the same losses, the same gradient to float rounding */
    float *loss2 = zeros_f(T);
    CHECK(t, nm_op_xent_fused(&c, loss2, logits, target, T, V, 1.0f / (float)n) == n);
    for (int64_t i = 0; i < T; i++) CHECK(t, fabsf(loss2[i] - loss[i]) <= 1e-6f * (1 + fabsf(loss[i])));
    check_grad(t, "xent fused dlogits", logits, g, T * V);
    free(loss2);
    free(g), free(x.logits), free(logits), free(loss), free(dl);
    nm_ops_ctx_deinit(&c);
}

/* ======================================================================== */
/* the same bits whatever the thread count                                  */
/* ======================================================================== */

static void test_threads_bit_identical(nm_test *t) {
    nm_pool *pool;
    nm_err err = {0};
    if (!CHECK_OK(t, nm_pool_new(3, &pool, &err), err)) return;
    nm_ops_ctx c1 = serial_ctx(64), c3;
    CHECK_OK(t, nm_ops_ctx_init(&c3, pool, 64, &err), err);
    int64_t T = 11, rows = 37, cols = 64;
    float *w = rand_f(rows * cols, 0.5), *x = rand_f(T * cols, 1.0), *dy = rand_f(T * rows, 1.0);
    void *q = malloc(nm_type_row_bytes(NM_TYPE_Q8_0, cols) * (size_t)rows);
    CHECK_OK(t, nm_quantize(NM_TYPE_Q8_0, w, q, rows * cols, &err), err);
    nm_wmat W;
    CHECK_OK(t, nm_wmat_init(&W, "w", q, NM_TYPE_Q8_0, rows, cols, &err), err);
    float *y1 = zeros_f(T * rows), *y3 = zeros_f(T * rows), *dx1 = zeros_f(T * cols), *dx3 = zeros_f(T * cols);
    nm_op_matmul_fwd(&c1, y1, x, &W, T);
    nm_op_matmul_fwd(&c3, y3, x, &W, T);
    nm_op_matmul_bwd(&c1, dx1, NULL, dy, x, &W, T);
    nm_op_matmul_bwd(&c3, dx3, NULL, dy, x, &W, T);
    CHECK(t, memcmp(y1, y3, (size_t)(T * rows) * sizeof(float)) == 0);
    CHECK(t, memcmp(dx1, dx3, (size_t)(T * cols) * sizeof(float)) == 0);
    /* LoRA with dropout */
    int64_t r = 4;
    float *A = rand_f(r * cols, 0.3), *B = rand_f(rows * r, 0.3);
    float *dA1 = zeros_f(r * cols), *dB1 = zeros_f(rows * r), *dA3 = zeros_f(r * cols), *dB3 = zeros_f(rows * r);
    nm_lora_op L1 = {A, B, dA1, dB1, r, cols, rows, 2.0f, 0.2f, 99}, L3 = L1;
    L3.dA = dA3, L3.dB = dB3;
    float *u = zeros_f(T * r), *tmp = zeros_f(nm_op_lora_tmp_floats(&L1, T));
    nm_op_lora_fwd(&c1, y1, u, x, &L1, T, tmp);
    nm_op_lora_bwd(&c1, dx1, dy, x, u, &L1, T, tmp);
    nm_op_lora_fwd(&c3, y3, u, x, &L3, T, tmp);
    nm_op_lora_bwd(&c3, dx3, dy, x, u, &L3, T, tmp);
    CHECK(t, memcmp(y1, y3, (size_t)(T * rows) * sizeof(float)) == 0);
    CHECK(t, memcmp(dx1, dx3, (size_t)(T * cols) * sizeof(float)) == 0);
    CHECK(t, memcmp(dA1, dA3, (size_t)(r * cols) * sizeof(float)) == 0);
    CHECK(t, memcmp(dB1, dB3, (size_t)(rows * r) * sizeof(float)) == 0);
    /* attention */
    int64_t H = 4, G = 2, hd = 8, L = 9, nq = 2 * L * H * hd, nk = 2 * L * G * hd;
    float *aq = rand_f(nq, 1), *ak = rand_f(nk, 1), *av = rand_f(nk, 1), *ado = rand_f(nq, 1);
    float *o1 = zeros_f(nq), *o3 = zeros_f(nq), *l1 = zeros_f(2 * L * H), *l3 = zeros_f(2 * L * H);
    float *g1 = zeros_f(nq + 2 * nk), *g3 = zeros_f(nq + 2 * nk);
    nm_attn_shape s = {2, L, H, G, hd, NULL, NULL};
    s.scratch = zeros_f(nm_op_attn_scratch_floats(&s, 3));
    nm_op_attn_fwd(&c1, o1, l1, aq, ak, av, &s);
    nm_op_attn_fwd(&c3, o3, l3, aq, ak, av, &s);
    nm_op_attn_bwd(&c1, g1, g1 + nq, g1 + nq + nk, ado, aq, ak, av, o1, l1, &s);
    nm_op_attn_bwd(&c3, g3, g3 + nq, g3 + nq + nk, ado, aq, ak, av, o3, l3, &s);
    free(s.scratch);
    CHECK(t, memcmp(o1, o3, (size_t)nq * sizeof(float)) == 0);
    CHECK(t, memcmp(g1, g3, (size_t)(nq + 2 * nk) * sizeof(float)) == 0);
    free(aq), free(ak), free(av), free(ado), free(o1), free(o3), free(l1), free(l3), free(g1), free(g3);
    free(A), free(B), free(dA1), free(dB1), free(dA3), free(dB3), free(u), free(tmp);
    free(w), free(x), free(dy), free(q), free(y1), free(y3), free(dx1), free(dx3);
    nm_ops_ctx_deinit(&c1);
    nm_ops_ctx_deinit(&c3);
    nm_pool_free(pool);
}

static void test_wmat_rejects(nm_test *t) {
    nm_wmat W;
    nm_err err = {0};
    float dummy[4] = {0};
    CHECK(t, nm_wmat_init(&W, "bad", dummy, NM_TYPE_Q4_0, 2, 48, &err) == NM_ERR_FORMAT); /* 48 % 32 */
    CHECK(t, strstr(err.msg, "bad") != NULL);
    CHECK(t, nm_wmat_init(&W, "i32", dummy, NM_TYPE_I32, 2, 2, &err) == NM_ERR_UNSUPPORTED);
}

int main(void) {
    nm_rng_seed(&RNG, 20240607);
    nm_test_run("rmsnorm", test_rmsnorm);
    nm_test_run("matmul_every_type", test_matmul_types);
    nm_test_run("lora", test_lora);
    nm_test_run("lora_dropout_mask", test_lora_dropout_mask);
    nm_test_run("rope", test_rope);
    nm_test_run("rope_convention", test_rope_convention);
    nm_test_run("attention", test_attention);
    nm_test_run("attention_packing_isolated", test_attention_packing_isolated);
    nm_test_run("swiglu", test_swiglu);
    nm_test_run("residual", test_residual);
    nm_test_run("embedding", test_embedding);
    nm_test_run("cross_entropy", test_cross_entropy);
    nm_test_run("threads_bit_identical", test_threads_bit_identical);
    nm_test_run("wmat_rejects", test_wmat_rejects);
    return nm_test_finish();
}
