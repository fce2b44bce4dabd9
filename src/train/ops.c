/* ops.c - forward and backward of every op of a LLaMA block (see ops.h).
 *
 * Each op is a pair of plain loops, forward first, backward right below it,
 * written for clarity over speed.  Every parallel op is a task function run
 * on each thread of the pool with (ith, nth); a task takes a contiguous share
 * of the dimension it OWNS (the one whose output elements only it writes), so
 * no two threads write the same float and every float is summed in the same
 * order whatever the thread count. */
#include "train/ops.h"
#include "train/gemm.h"
#include "base/base.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void par_run(nm_ops_ctx *c, nm_pool_fn fn, void *arg) {
    if (c && c->pool && c->nth > 1)
        nm_pool_run(c->pool, fn, arg);
    else
        fn(arg, 0, 1);
}

static float *scratch_of(nm_ops_ctx *c, int ith) { return c->scratch + (size_t)ith * c->scratch_per_thread; }

nm_status nm_ops_ctx_init(nm_ops_ctx *c, nm_pool *pool, int64_t max_cols, nm_err *err) {
    memset(c, 0, sizeof *c);
    c->pool = pool;
    c->nth = pool ? nm_pool_size(pool) : 1;
    if (max_cols < 1) max_cols = 1;
    c->scratch_per_thread = (size_t)NM_OPS_TILE * (size_t)max_cols;
    c->scratch = nm_calloc((size_t)c->nth * c->scratch_per_thread, sizeof(float));
    if (!c->scratch) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for %d thread scratch areas", c->nth);
    return NM_OK;
}

void nm_ops_ctx_deinit(nm_ops_ctx *c) {
    free(c->scratch);
    memset(c, 0, sizeof *c);
}

nm_status nm_wmat_init(nm_wmat *w, const char *name, const void *data, nm_type type, int64_t rows,
                       int64_t cols, nm_err *err) {
    memset(w, 0, sizeof *w);
    const nm_type_traits *tr = nm_type_traits_get(type);
    if (!tr || !tr->to_float)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "tensor '%s': type %s cannot be used for training", name,
                          tr ? tr->name : "(unknown)");
    if (rows < 1 || cols < 1 || cols % tr->blck_size != 0)
        return nm_err_set(err, NM_ERR_FORMAT, "tensor '%s': %lld x %lld does not fit %s blocks of %lld", name,
                          (long long)rows, (long long)cols, tr->name, (long long)tr->blck_size);
    w->data = data;
    w->type = type;
    w->rows = rows;
    w->cols = cols;
    w->row_bytes = nm_type_row_bytes(type, cols);
    /* half floats through the hardware converters, Q4_0/Q8_0 through vector
     * decoders: the same values as the type table's reference decoders */
    w->to_float = type == NM_TYPE_F16    ? nm_f16_row_to_f32
                  : type == NM_TYPE_BF16 ? nm_bf16_row_to_f32
                  : type == NM_TYPE_Q4_0 ? nm_q4_0_row_to_f32
                  : type == NM_TYPE_Q8_0 ? nm_q8_0_row_to_f32
                                         : tr->to_float;
    w->blck = tr->blck_size;
    w->blck_bytes = tr->type_size;
    return NM_OK;
}

void nm_wmat_row(const nm_wmat *w, int64_t r, float *dst) {
    w->to_float((const uint8_t *)w->data + (size_t)r * w->row_bytes, dst, w->cols);
}

/* Dot product with 8 independent partial sums: the order is fixed (so the
 * result does not depend on the caller) and the compiler can vectorise it. */
static float dot(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy(float *y, float a, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* ======================================================================== */
/* embedding                                                                */
/* ======================================================================== */

typedef struct embed_args {
    nm_ops_ctx *c;
    float *x;
    float *dE;
    const float *dx;
    const int32_t *tok;
    int64_t T, dim;
    const nm_wmat *E;
} embed_args;

static void embed_fwd_task(void *arg, int ith, int nth) {
    embed_args *a = arg;
    int64_t t0, t1;
    nm_split_range(a->T, ith, nth, 1, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        float *row = a->x + t * a->E->cols;
        if (a->tok[t] >= 0 && a->tok[t] < a->E->rows)
            nm_wmat_row(a->E, a->tok[t], row);
        else
            memset(row, 0, (size_t)a->E->cols * sizeof(float));
    }
}

void nm_op_embed_fwd(nm_ops_ctx *c, float *x, const int32_t *tok, int64_t T, const nm_wmat *E) {
    embed_args a = {.c = c, .x = x, .tok = tok, .T = T, .E = E};
    par_run(c, embed_fwd_task, &a);
}

/* Owner of vocabulary row v is thread v % nth: each row sums its tokens in
 * increasing t whatever the split. */
static void embed_bwd_task(void *arg, int ith, int nth) {
    embed_args *a = arg;
    for (int64_t t = 0; t < a->T; t++) {
        int32_t v = a->tok[t];
        if (v < 0 || v % nth != ith) continue;
        axpy(a->dE + (int64_t)v * a->dim, 1.0f, a->dx + t * a->dim, a->dim);
    }
}

void nm_op_embed_bwd(nm_ops_ctx *c, float *dE, const float *dx, const int32_t *tok, int64_t T, int64_t dim) {
    embed_args a = {.c = c, .dE = dE, .dx = dx, .tok = tok, .T = T, .dim = dim};
    par_run(c, embed_bwd_task, &a);
}

/* ======================================================================== */
/* RMSNorm                                                                  */
/* ======================================================================== */

typedef struct rms_args {
    float *y, *rstd, *dx, *dw;
    const float *x, *w, *dy, *rstd_in;
    int64_t T, C;
    float eps;
} rms_args;

static void rms_fwd_task(void *arg, int ith, int nth) {
    rms_args *a = arg;
    int64_t t0, t1;
    nm_split_range(a->T, ith, nth, 1, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        const float *x = a->x + t * a->C;
        double ss = 0;
        for (int64_t i = 0; i < a->C; i++) ss += (double)x[i] * x[i];
        float r = (float)(1.0 / sqrt(ss / (double)a->C + (double)a->eps));
        a->rstd[t] = r;
        float *y = a->y + t * a->C;
        for (int64_t i = 0; i < a->C; i++) y[i] = x[i] * r * a->w[i];
    }
}

void nm_op_rmsnorm_fwd(nm_ops_ctx *c, float *y, float *rstd, const float *x, const float *w, int64_t T,
                       int64_t C, float eps) {
    rms_args a = {.y = y, .rstd = rstd, .x = x, .w = w, .T = T, .C = C, .eps = eps};
    par_run(c, rms_fwd_task, &a);
}

/* With xh = x * rstd and g = dy * w:
 *   dx = rstd * (g - xh * mean(g * xh)),   dw = sum_t dy * xh.
 * dx is owned by token rows, dw by feature columns. */
static void rms_bwd_task(void *arg, int ith, int nth) {
    rms_args *a = arg;
    int64_t t0, t1;
    nm_split_range(a->T, ith, nth, 1, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        const float *x = a->x + t * a->C, *dy = a->dy + t * a->C;
        float r = a->rstd_in[t];
        double m = 0;
        for (int64_t i = 0; i < a->C; i++) m += (double)dy[i] * a->w[i] * x[i] * r;
        float mean = (float)(m / (double)a->C);
        float *dx = a->dx + t * a->C;
        for (int64_t i = 0; i < a->C; i++) dx[i] += r * (dy[i] * a->w[i] - x[i] * r * mean);
    }
    if (!a->dw) return;
    int64_t i0, i1;
    nm_split_range(a->C, ith, nth, 1, &i0, &i1);
    for (int64_t t = 0; t < a->T; t++) {
        const float *x = a->x + t * a->C, *dy = a->dy + t * a->C;
        float r = a->rstd_in[t];
        for (int64_t i = i0; i < i1; i++) a->dw[i] += dy[i] * x[i] * r;
    }
}

void nm_op_rmsnorm_bwd(nm_ops_ctx *c, float *dx, float *dw, const float *dy, const float *x, const float *w,
                       const float *rstd, int64_t T, int64_t C) {
    rms_args a = {.dx = dx, .dw = dw, .dy = dy, .x = x, .w = w, .rstd_in = rstd, .T = T, .C = C};
    par_run(c, rms_bwd_task, &a);
}

/* ======================================================================== */
/* matmul over a frozen typed weight                                        */
/* ======================================================================== */

typedef struct mm_args {
    nm_ops_ctx *c;
    float *y, *dx, *dW;
    const float *x, *dy;
    const nm_wmat *W;
    int64_t T;
} mm_args;

/* F32 rows are used where they lie; other types are dequantized. */
static const float *f32_rows(const nm_wmat *W, int64_t r) {
    return (const float *)(const void *)((const uint8_t *)W->data + (size_t)r * W->row_bytes);
}

/* Forward: rows of W (output features) are owned; a tile of
 * NM_OPS_TILE_FWD rows is dequantized once and used for every token. */
static void mm_fwd_task(void *arg, int ith, int nth) {
    mm_args *a = arg;
    const nm_wmat *W = a->W;
    int64_t r0, r1;
    nm_split_range(W->rows, ith, nth, NM_OPS_TILE_FWD, &r0, &r1);
    float *buf = scratch_of(a->c, ith);
    for (int64_t rt = r0; rt < r1; rt += NM_OPS_TILE_FWD) {
        int64_t nr = r1 - rt < NM_OPS_TILE_FWD ? r1 - rt : NM_OPS_TILE_FWD;
        const float *w = buf;
        if (W->type == NM_TYPE_F32)
            w = f32_rows(W, rt);
        else
            for (int64_t j = 0; j < nr; j++) nm_wmat_row(W, rt + j, buf + j * W->cols);
        nm_gemm_nt(a->T, nr, W->cols, a->x, W->cols, w, W->cols, a->y + rt, W->rows, false);
    }
}

void nm_op_matmul_fwd(nm_ops_ctx *c, float *y, const float *x, const nm_wmat *W, int64_t T) {
    mm_args a = {.c = c, .y = y, .x = x, .W = W, .T = T};
    par_run(c, mm_fwd_task, &a);
}

/* Backward: dx = dy W is owned by column ranges (whole quantization blocks),
 * so each thread dequantizes only its part of W and sums the rows in the
 * same order whatever the split; the weight gradient dW = dy^T x, when
 * wanted, is owned by rows of W. */
static void mm_bwd_task(void *arg, int ith, int nth) {
    mm_args *a = arg;
    const nm_wmat *W = a->W;
    float *buf = scratch_of(a->c, ith);
    if (a->dx) {
        int64_t align = W->blck >= 16 ? W->blck : 16, i0, i1;
        nm_split_range(W->cols, ith, nth, align, &i0, &i1);
        int64_t ni = i1 - i0;
        for (int64_t rt = 0; ni > 0 && rt < W->rows; rt += NM_OPS_TILE) {
            int64_t nr = W->rows - rt < NM_OPS_TILE ? W->rows - rt : NM_OPS_TILE;
            const float *w = buf;
            int64_t ldw = ni;
            if (W->type == NM_TYPE_F32) {
                w = f32_rows(W, rt) + i0;
                ldw = W->cols;
            } else {
                size_t off = (size_t)(i0 / W->blck) * W->blck_bytes;
                for (int64_t j = 0; j < nr; j++)
                    W->to_float((const uint8_t *)W->data + (size_t)(rt + j) * W->row_bytes + off, buf + j * ni, ni);
            }
            nm_gemm_nn(a->T, ni, nr, a->dy + rt, W->rows, 1, w, ldw, a->dx + i0, W->cols);
        }
    }
    if (a->dW) {
        int64_t r0, r1;
        nm_split_range(W->rows, ith, nth, 1, &r0, &r1);
        nm_gemm_nn_dw(W->rows, r1 - r0, W->cols, a->T, a->dy + r0, 1, W->rows, a->x, W->cols, a->dW + r0 * W->cols,
                      W->cols);
    }
}

void nm_op_matmul_bwd(nm_ops_ctx *c, float *dx, float *dW, const float *dy, const float *x, const nm_wmat *W,
                      int64_t T) {
    mm_args a = {.c = c, .dx = dx, .dW = dW, .dy = dy, .x = x, .W = W, .T = T};
    par_run(c, mm_bwd_task, &a);
}

/* ======================================================================== */
/* LoRA                                                                     */
/* ======================================================================== */

/* splitmix64 finaliser of (seed, i): a counter-based generator, so element i
 * gets the same coin in the forward, the backward and any recomputation. */
float nm_lora_drop_mult(uint64_t seed, uint64_t i, float p) {
    if (p <= 0) return 1.0f;
    uint64_t z = seed ^ (i * 0x9e3779b97f4a7c15ULL);
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    double u = (double)(z >> 11) * 0x1.0p-53;
    return u < (double)p ? 0.0f : 1.0f / (1.0f - p);
}

/* Scratch layout: Bt [r x out] = s B^T | du [T x r] | dBt [r x out] |
 * xd [T x in] (the dropped-out input, only with dropout). */
int64_t nm_op_lora_tmp_floats(const nm_lora_op *L, int64_t T) {
    return 2 * L->r * L->out + T * L->r + (L->dropout > 0 ? T * L->in : 0);
}

typedef struct lora_args {
    nm_ops_ctx *c;
    float *y, *u, *dx;
    const float *x, *dy, *u_in;
    const nm_lora_op *L;
    int64_t T;
    float *Bt, *du, *dBt, *xd; /* in tmp */
} lora_args;

static void lora_tmp_split(lora_args *a, float *tmp) {
    const nm_lora_op *L = a->L;
    a->Bt = tmp;
    a->du = a->Bt + L->r * L->out;
    a->dBt = a->du + a->T * L->r;
    a->xd = L->dropout > 0 ? a->dBt + L->r * L->out : NULL;
}

/* Bt[j][o] = s B[o][j]: the B side as rows along `out`, scale folded in. */
static void lora_make_bt(const nm_lora_op *L, float *Bt) {
    for (int64_t o = 0; o < L->out; o++)
        for (int64_t j = 0; j < L->r; j++) Bt[j * L->out + o] = L->scale * L->B[o * L->r + j];
}

/* Rows [t0, t1) of drop(x) into xd. */
static void lora_drop_rows(const nm_lora_op *L, const float *x, float *xd, int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++)
        for (int64_t i = 0; i < L->in; i++)
            xd[t * L->in + i] =
                x[t * L->in + i] * nm_lora_drop_mult(L->drop_seed, (uint64_t)(t * L->in + i), L->dropout);
}

/* Forward, token rows owned: u = drop(x) A^T, y += u Bt. */
static void lora_fwd_task(void *arg, int ith, int nth) {
    lora_args *a = arg;
    const nm_lora_op *L = a->L;
    int64_t t0, t1;
    nm_split_range(a->T, ith, nth, 1, &t0, &t1);
    if (t1 <= t0) return;
    const float *xs = a->x;
    if (a->xd) {
        lora_drop_rows(L, a->x, a->xd, t0, t1);
        xs = a->xd;
    }
    nm_gemm_nt(t1 - t0, L->r, L->in, xs + t0 * L->in, L->in, L->A, L->in, a->u + t0 * L->r, L->r, false);
    nm_gemm_nn(t1 - t0, L->out, L->r, a->u + t0 * L->r, L->r, 1, a->Bt, L->out, a->y + t0 * L->out, L->out);
}

void nm_op_lora_fwd(nm_ops_ctx *c, float *y, float *u, const float *x, const nm_lora_op *L, int64_t T, float *tmp) {
    lora_args a = {.c = c, .y = y, .u = u, .x = x, .L = L, .T = T};
    lora_tmp_split(&a, tmp);
    lora_make_bt(L, a.Bt);
    par_run(c, lora_fwd_task, &a);
}

/* Pass 1, token rows owned: du = dy Bt^T (= s dy B), and drop(x) again. */
static void lora_bwd_du_task(void *arg, int ith, int nth) {
    lora_args *a = arg;
    const nm_lora_op *L = a->L;
    int64_t t0, t1;
    nm_split_range(a->T, ith, nth, 1, &t0, &t1);
    if (t1 <= t0) return;
    nm_gemm_nt(t1 - t0, L->r, L->out, a->dy + t0 * L->out, L->out, a->Bt, L->out, a->du + t0 * L->r, L->r, false);
    if (a->xd) lora_drop_rows(L, a->x, a->xd, t0, t1);
}

/* Pass 2: dB through dBt = u^T dy (columns of `out` owned), dA += du^T
 * drop(x) (columns of `in` owned). */
static void lora_bwd_w_task(void *arg, int ith, int nth) {
    lora_args *a = arg;
    const nm_lora_op *L = a->L;
    int64_t lo, hi;
    if (L->dB) {
        nm_split_range(L->out, ith, nth, 16, &lo, &hi);
        for (int64_t j = 0; j < L->r; j++)
            for (int64_t o = lo; o < hi; o++) a->dBt[j * L->out + o] = 0;
        nm_gemm_nn(L->r, hi - lo, a->T, a->u_in, 1, L->r, a->dy + lo, L->out, a->dBt + lo, L->out);
        for (int64_t o = lo; o < hi; o++)
            for (int64_t j = 0; j < L->r; j++) L->dB[o * L->r + j] += L->scale * a->dBt[j * L->out + o];
    }
    if (L->dA) {
        nm_split_range(L->in, ith, nth, 16, &lo, &hi);
        const float *xs = a->xd ? a->xd : a->x;
        nm_gemm_nn(L->r, hi - lo, a->T, a->du, 1, L->r, xs + lo, L->in, L->dA + lo, L->in);
    }
}

/* Pass 3, token rows owned: dx += drop'(du A).  With dropout the product
 * goes through this thread's rows of xd (no longer needed) first. */
static void lora_bwd_dx_task(void *arg, int ith, int nth) {
    lora_args *a = arg;
    const nm_lora_op *L = a->L;
    int64_t t0, t1;
    nm_split_range(a->T, ith, nth, 1, &t0, &t1);
    if (t1 <= t0) return;
    if (!a->xd) {
        nm_gemm_nn(t1 - t0, L->in, L->r, a->du + t0 * L->r, L->r, 1, L->A, L->in, a->dx + t0 * L->in, L->in);
        return;
    }
    float *tmp = a->xd + t0 * L->in;
    memset(tmp, 0, (size_t)((t1 - t0) * L->in) * sizeof(float));
    nm_gemm_nn(t1 - t0, L->in, L->r, a->du + t0 * L->r, L->r, 1, L->A, L->in, tmp, L->in);
    for (int64_t t = t0; t < t1; t++)
        for (int64_t i = 0; i < L->in; i++)
            a->dx[t * L->in + i] +=
                tmp[(t - t0) * L->in + i] * nm_lora_drop_mult(L->drop_seed, (uint64_t)(t * L->in + i), L->dropout);
}

void nm_op_lora_bwd(nm_ops_ctx *c, float *dx, const float *dy, const float *x, const float *u,
                    const nm_lora_op *L, int64_t T, float *tmp) {
    lora_args a = {.c = c, .dx = dx, .x = x, .dy = dy, .u_in = u, .L = L, .T = T};
    lora_tmp_split(&a, tmp);
    lora_make_bt(L, a.Bt);
    par_run(c, lora_bwd_du_task, &a);
    if (L->dA || L->dB) par_run(c, lora_bwd_w_task, &a);
    if (dx) par_run(c, lora_bwd_dx_task, &a);
}

/* ======================================================================== */
/* RoPE                                                                     */
/* ======================================================================== */

void nm_rope_table(float *cosv, float *sinv, const int32_t *pos, int64_t T, int64_t n_rot, float base,
                   float freq_scale) {
    int64_t half = n_rot / 2;
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < half; i++) {
            double ang = (double)pos[t] * (double)freq_scale * pow((double)base, -2.0 * (double)i / (double)n_rot);
            cosv[t * half + i] = (float)cos(ang);
            sinv[t * half + i] = (float)sin(ang);
        }
}

typedef struct rope_args {
    float *x;
    const float *cosv, *sinv;
    int64_t T, n_head, hd, n_rot;
    bool neox;
    float sign; /* +1 rotates by the angle (forward), -1 by its opposite */
} rope_args;

static void rope_task(void *arg, int ith, int nth) {
    rope_args *a = arg;
    int64_t half = a->n_rot / 2;
    int64_t t0, t1;
    nm_split_range(a->T, ith, nth, 1, &t0, &t1);
    for (int64_t t = t0; t < t1; t++)
        for (int64_t h = 0; h < a->n_head; h++) {
            float *v = a->x + (t * a->n_head + h) * a->hd;
            for (int64_t i = 0; i < half; i++) {
                float c = a->cosv[t * half + i], s = a->sign * a->sinv[t * half + i];
                int64_t i0 = a->neox ? i : 2 * i, i1 = a->neox ? i + half : 2 * i + 1;
                float x0 = v[i0], x1 = v[i1];
                v[i0] = x0 * c - x1 * s;
                v[i1] = x0 * s + x1 * c;
            }
        }
}

void nm_op_rope_fwd(nm_ops_ctx *c, float *x, const float *cosv, const float *sinv, int64_t T, int64_t n_head,
                    int64_t hd, int64_t n_rot, bool neox) {
    rope_args a = {x, cosv, sinv, T, n_head, hd, n_rot, neox, 1.0f};
    par_run(c, rope_task, &a);
}

/* The Jacobian of a rotation is the rotation itself, so the backward applies
 * its transpose: the rotation by the opposite angle. */
void nm_op_rope_bwd(nm_ops_ctx *c, float *dx, const float *cosv, const float *sinv, int64_t T, int64_t n_head,
                    int64_t hd, int64_t n_rot, bool neox) {
    rope_args a = {dx, cosv, sinv, T, n_head, hd, n_rot, neox, -1.0f};
    par_run(c, rope_task, &a);
}

/* ======================================================================== */
/* causal attention, grouped-query                                          */
/* ======================================================================== */

int64_t nm_op_attn_scratch_floats(const nm_attn_shape *s, int nth) {
    return (int64_t)nth * 2 * NM_ATTN_QB * s->seq_len;
}

typedef struct attn_args {
    nm_ops_ctx *c;
    float *out, *lse, *dq, *dk, *dv;
    const float *q, *k, *v, *dout, *o_in, *lse_in;
    const nm_attn_shape *s;
} attn_args;

/* Rows of scores for queries [qb0, qb0 + nq) of sequence b against keys
 * [0, qb0 + nq): turned into probabilities exp(score - lse) with the causal
 * and document masks applied (masked entries exactly 0).  In the forward
 * (lse_out set) the log-sum-exp is computed here; the backward passes the
 * saved one. */
static void attn_probs(const nm_attn_shape *s, float *S, int64_t b, int64_t h, int64_t qb0, int64_t nq, float scale,
                       float *lse_out, const float *lse_in) {
    int64_t L = s->seq_len, H = s->n_head, kend = qb0 + nq;
    for (int64_t i = 0; i < nq; i++) {
        int64_t qi = qb0 + i, t = b * L + qi;
        float *row = S + i * L;
        float m = -INFINITY;
        for (int64_t j = 0; j < kend; j++) {
            bool ok = j <= qi && (!s->doc || s->doc[b * L + j] == s->doc[t]);
            row[j] = ok ? row[j] * scale : -INFINITY;
            m = row[j] > m ? row[j] : m;
        }
        if (lse_out) { /* forward: normalise the exponentials directly */
            double sum = nm_exp_row(row, kend, m);
            lse_out[t * H + h] = m + (float)log(sum);
            float inv = (float)(1.0 / sum);
            for (int64_t j = 0; j < kend; j++) row[j] *= inv;
        } else {
            nm_exp_row(row, kend, lse_in[t * H + h]);
        }
    }
}

/* Forward owns (sequence, query head) pairs.  Per block of queries:
 * S = q k^T (scaled, masked), P = softmax(S), out = P v. */
static void attn_fwd_task(void *arg, int ith, int nth) {
    attn_args *a = arg;
    const nm_attn_shape *s = a->s;
    int64_t H = s->n_head, G = s->n_kv, hd = s->hd, L = s->seq_len, group = H / G;
    int64_t ldq = H * hd, ldk = G * hd;
    float scale = 1.0f / sqrtf((float)hd);
    float *S = s->scratch + (int64_t)ith * 2 * NM_ATTN_QB * L;
    int64_t u0, u1;
    nm_split_range(s->n_seq * H, ith, nth, 1, &u0, &u1);
    for (int64_t unit = u0; unit < u1; unit++) {
        int64_t b = unit / H, h = unit % H, g = h / group;
        const float *q = a->q + b * L * ldq + h * hd, *k = a->k + b * L * ldk + g * hd, *v = a->v + b * L * ldk + g * hd;
        float *o = a->out + b * L * ldq + h * hd;
        for (int64_t qb0 = 0; qb0 < L; qb0 += NM_ATTN_QB) {
            int64_t nq = L - qb0 < NM_ATTN_QB ? L - qb0 : NM_ATTN_QB, kend = qb0 + nq;
            nm_gemm_nt(nq, kend, hd, q + qb0 * ldq, ldq, k, ldk, S, L, false);
            attn_probs(s, S, b, h, qb0, nq, scale, a->lse, NULL);
            for (int64_t i = 0; i < nq; i++) memset(o + (qb0 + i) * ldq, 0, (size_t)hd * sizeof(float));
            nm_gemm_nn(nq, hd, kend, S, L, 1, v, ldk, o + qb0 * ldq, ldq);
        }
    }
}

void nm_op_attn_fwd(nm_ops_ctx *c, float *out, float *lse, const float *q, const float *k, const float *v,
                    const nm_attn_shape *s) {
    attn_args a = {.c = c, .out = out, .lse = lse, .q = q, .k = k, .v = v, .s = s};
    par_run(c, attn_fwd_task, &a);
}

/* Backward owns (sequence, kv head) pairs: all query heads of the group
 * write the same dk/dv rows, so one thread takes the whole group.  Per block
 * of queries, with P recomputed from the saved log-sum-exp and
 * D = rowsum(dout * out):
 *   dv += P^T dout,  dS = P * (dout v^T - D) * scale,
 *   dq += dS k,      dk += dS^T q. */
static void attn_bwd_task(void *arg, int ith, int nth) {
    attn_args *a = arg;
    const nm_attn_shape *s = a->s;
    int64_t H = s->n_head, G = s->n_kv, hd = s->hd, L = s->seq_len, group = H / G;
    int64_t ldq = H * hd, ldk = G * hd;
    float scale = 1.0f / sqrtf((float)hd);
    float *S = s->scratch + (int64_t)ith * 2 * NM_ATTN_QB * L, *dP = S + NM_ATTN_QB * L;
    int64_t u0, u1;
    nm_split_range(s->n_seq * G, ith, nth, 1, &u0, &u1);
    for (int64_t unit = u0; unit < u1; unit++) {
        int64_t b = unit / G, g = unit % G;
        const float *k = a->k + b * L * ldk + g * hd, *v = a->v + b * L * ldk + g * hd;
        float *dk = a->dk + b * L * ldk + g * hd, *dv = a->dv + b * L * ldk + g * hd;
        for (int64_t h = g * group; h < (g + 1) * group; h++) {
            const float *q = a->q + b * L * ldq + h * hd, *dout = a->dout + b * L * ldq + h * hd;
            const float *o = a->o_in + b * L * ldq + h * hd;
            float *dq = a->dq + b * L * ldq + h * hd;
            for (int64_t qb0 = 0; qb0 < L; qb0 += NM_ATTN_QB) {
                int64_t nq = L - qb0 < NM_ATTN_QB ? L - qb0 : NM_ATTN_QB, kend = qb0 + nq;
                nm_gemm_nt(nq, kend, hd, q + qb0 * ldq, ldq, k, ldk, S, L, false);
                attn_probs(s, S, b, h, qb0, nq, scale, NULL, a->lse_in);
                nm_gemm_nt(nq, kend, hd, dout + qb0 * ldq, ldq, v, ldk, dP, L, false);
                for (int64_t i = 0; i < nq; i++) {
                    float D = dot(dout + (qb0 + i) * ldq, o + (qb0 + i) * ldq, hd);
                    float *p = S + i * L, *dp = dP + i * L;
                    for (int64_t j = 0; j < kend; j++) dp[j] = p[j] * (dp[j] - D) * scale;
                }
                nm_gemm_nn(kend, hd, nq, S, 1, L, dout + qb0 * ldq, ldq, dv, ldk);
                nm_gemm_nn(nq, hd, kend, dP, L, 1, k, ldk, dq + qb0 * ldq, ldq);
                nm_gemm_nn(kend, hd, nq, dP, 1, L, q + qb0 * ldq, ldq, dk, ldk);
            }
        }
    }
}

void nm_op_attn_bwd(nm_ops_ctx *c, float *dq, float *dk, float *dv, const float *dout, const float *q,
                    const float *k, const float *v, const float *out, const float *lse, const nm_attn_shape *s) {
    attn_args a = {.c = c, .dq = dq, .dk = dk, .dv = dv, .dout = dout, .q = q, .k = k, .v = v,
                   .o_in = out, .lse_in = lse, .s = s};
    par_run(c, attn_bwd_task, &a);
}

/* ======================================================================== */
/* SwiGLU, residual                                                         */
/* ======================================================================== */

typedef struct ew_args {
    float *y, *da, *db;
    const float *a, *b, *dy;
    int64_t n;
} ew_args;

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

static void swiglu_fwd_task(void *arg, int ith, int nth) {
    ew_args *e = arg;
    int64_t i0, i1;
    nm_split_range(e->n, ith, nth, 64, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) e->y[i] = e->a[i] * sigmoidf(e->a[i]) * e->b[i];
}

void nm_op_swiglu_fwd(nm_ops_ctx *c, float *h, const float *g, const float *u, int64_t n) {
    ew_args e = {.y = h, .a = g, .b = u, .n = n};
    par_run(c, swiglu_fwd_task, &e);
}

/* silu'(g) = sig(g) (1 + g (1 - sig(g))). */
static void swiglu_bwd_task(void *arg, int ith, int nth) {
    ew_args *e = arg;
    int64_t i0, i1;
    nm_split_range(e->n, ith, nth, 64, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) {
        float g = e->a[i], sg = sigmoidf(g);
        e->da[i] += e->dy[i] * e->b[i] * sg * (1.0f + g * (1.0f - sg));
        e->db[i] += e->dy[i] * g * sg;
    }
}

void nm_op_swiglu_bwd(nm_ops_ctx *c, float *dg, float *du, const float *dh, const float *g, const float *u,
                      int64_t n) {
    ew_args e = {.da = dg, .db = du, .a = g, .b = u, .dy = dh, .n = n};
    par_run(c, swiglu_bwd_task, &e);
}

static void add_fwd_task(void *arg, int ith, int nth) {
    ew_args *e = arg;
    int64_t i0, i1;
    nm_split_range(e->n, ith, nth, 64, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) e->y[i] = e->a[i] + e->b[i];
}

void nm_op_add_fwd(nm_ops_ctx *c, float *y, const float *a, const float *b, int64_t n) {
    ew_args e = {.y = y, .a = a, .b = b, .n = n};
    par_run(c, add_fwd_task, &e);
}

static void add_bwd_task(void *arg, int ith, int nth) {
    ew_args *e = arg;
    int64_t i0, i1;
    nm_split_range(e->n, ith, nth, 64, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) {
        if (e->da) e->da[i] += e->dy[i];
        if (e->db) e->db[i] += e->dy[i];
    }
}

void nm_op_add_bwd(nm_ops_ctx *c, float *da, float *db, const float *dy, int64_t n) {
    ew_args e = {.da = da, .db = db, .dy = dy, .n = n};
    par_run(c, add_bwd_task, &e);
}

/* ======================================================================== */
/* cross-entropy                                                            */
/* ======================================================================== */

typedef struct xent_args {
    float *loss, *dlogits;
    const float *logits;
    const int32_t *target;
    int64_t T, V;
    float dloss;
} xent_args;

/* max and log(sum(exp(l - max))) of one row, the sum in double. */
static void row_lse(const float *l, int64_t V, float *mx, double *logsum) {
    float m = l[0];
    for (int64_t i = 1; i < V; i++) m = l[i] > m ? l[i] : m;
    double s = 0;
    for (int64_t i = 0; i < V; i++) s += exp((double)(l[i] - m));
    *mx = m;
    *logsum = log(s);
}

static bool target_ok(int32_t y, int64_t V) { return y >= 0 && y < V; }

static void xent_fwd_task(void *arg, int ith, int nth) {
    xent_args *a = arg;
    int64_t t0, t1;
    nm_split_range(a->T, ith, nth, 1, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        int32_t y = a->target[t];
        if (!target_ok(y, a->V)) {
            a->loss[t] = 0;
            continue;
        }
        const float *l = a->logits + t * a->V;
        float m;
        double ls;
        row_lse(l, a->V, &m, &ls);
        a->loss[t] = (float)(ls + (double)m - (double)l[y]);
    }
}

int64_t nm_op_xent_fwd(nm_ops_ctx *c, float *loss, const float *logits, const int32_t *target, int64_t T,
                       int64_t V) {
    xent_args a = {.loss = loss, .logits = logits, .target = target, .T = T, .V = V};
    par_run(c, xent_fwd_task, &a);
    int64_t n = 0;
    for (int64_t t = 0; t < T; t++) n += target_ok(target[t], V);
    return n;
}

static void xent_bwd_task(void *arg, int ith, int nth) {
    xent_args *a = arg;
    int64_t t0, t1;
    nm_split_range(a->T, ith, nth, 1, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        int32_t y = a->target[t];
        const float *l = a->logits + t * a->V;
        float *dl = a->dlogits + t * a->V;
        if (!target_ok(y, a->V)) {
            for (int64_t i = 0; i < a->V; i++) dl[i] = 0;
            continue;
        }
        float m;
        double ls;
        row_lse(l, a->V, &m, &ls);
        /* Reads l[i] before writing dl[i]: safe when dlogits == logits. */
        for (int64_t i = 0; i < a->V; i++) {
            double p = exp((double)(l[i] - m) - ls);
            dl[i] = (float)((p - (i == y ? 1.0 : 0.0)) * (double)a->dloss);
        }
    }
}

void nm_op_xent_bwd(nm_ops_ctx *c, float *dlogits, const float *logits, const int32_t *target, int64_t T,
                    int64_t V, float dloss) {
    xent_args a = {.dlogits = dlogits, .logits = logits, .target = target, .T = T, .V = V, .dloss = dloss};
    par_run(c, xent_bwd_task, &a);
}

static void xent_fused_task(void *arg, int ith, int nth) {
    xent_args *a = arg;
    int64_t t0, t1;
    nm_split_range(a->T, ith, nth, 1, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        int32_t y = a->target[t];
        float *l = a->dlogits + t * a->V;
        if (!target_ok(y, a->V)) {
            a->loss[t] = 0;
            memset(l, 0, (size_t)a->V * sizeof(float));
            continue;
        }
        float m = l[0];
        for (int64_t i = 1; i < a->V; i++) m = l[i] > m ? l[i] : m;
        float ly = l[y];
        double s = nm_exp_row(l, a->V, m);
        a->loss[t] = (float)(log(s) + (double)m - (double)ly);
        float k = (float)(1.0 / s) * a->dloss;
        for (int64_t i = 0; i < a->V; i++) l[i] *= k;
        l[y] -= a->dloss;
    }
}

int64_t nm_op_xent_fused(nm_ops_ctx *c, float *loss, float *logits, const int32_t *target, int64_t T, int64_t V,
                         float dloss) {
    xent_args a = {.loss = loss, .dlogits = logits, .target = target, .T = T, .V = V, .dloss = dloss};
    par_run(c, xent_fused_task, &a);
    int64_t n = 0;
    for (int64_t t = 0; t < T; t++) n += target_ok(target[t], V);
    return n;
}
