/* matmul.c - weight matrix x activation rows over the thread pool.
 *
 * Work split: each thread takes a contiguous range of output rows (weight
 * rows) for all tokens, so every weight byte is read by one thread only.
 * Inside its range a thread walks tiles of ROW_TILE weight rows; for a batch
 * of tokens the tile stays in cache while every token's activation row is
 * multiplied with it, which turns the prompt's matrix-matrix product into
 * one pass over the weights instead of one per token.
 *
 * The activation rows are converted (quantized) before the split, in
 * parallel by token for large batches, so all threads share them. */
#include "matmul.h"
#include "kernels.h"
#include "types.h"
#include "base/base.h"

enum { ROW_TILE = 16 };

nm_status nm_mat_init(nm_mat *m, const char *name, nm_type type, int64_t cols, int64_t rows, const void *data,
                      nm_err *err) {
    const nm_kernel *k = nm_kernel_get(type);
    if (!k)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: no matrix kernel for type %s", name,
                          nm_type_name(type) ? nm_type_name(type) : "(unknown)");
    size_t rb = nm_type_row_bytes(type, cols);
    if (cols <= 0 || rows <= 0 || rb == 0 || nm_act_row_bytes(k->act_type, cols) == 0)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: a %s matrix cannot have rows of %lld elements", name,
                          nm_type_name(type), (long long)cols);
    m->type = type;
    m->cols = cols;
    m->rows = rows;
    m->row_bytes = rb;
    m->data = data;
    return NM_OK;
}

size_t nm_matmul_scratch_bytes(nm_type type, int64_t cols, int64_t n_tok) {
    const nm_kernel *k = nm_kernel_get(type);
    if (!k || k->act_type == NM_TYPE_F32) return 0;
    return nm_act_row_bytes(k->act_type, cols) * (size_t)n_tok;
}

typedef struct mm_task {
    const nm_mat *w;
    const nm_kernel *k;
    int64_t r0, r1;
    const float *x;
    const uint8_t *act; /* converted activations (or x itself for F32) */
    size_t act_stride;
    uint8_t *act_out;   /* for the conversion step */
    int64_t n_tok;
    float *y;
    int64_t ldy;
} mm_task;

static void convert_task(void *arg, int ith, int nth) {
    const mm_task *t = arg;
    int64_t lo, hi;
    nm_split_range(t->n_tok, ith, nth, 1, &lo, &hi);
    for (int64_t i = lo; i < hi; i++)
        nm_act_from_float(t->k->act_type, t->x + i * t->w->cols, t->act_out + (size_t)i * t->act_stride, t->w->cols);
}

static void dot_task(void *arg, int ith, int nth) {
    const mm_task *t = arg;
    int64_t lo, hi;
    nm_split_range(t->r1 - t->r0, ith, nth, 4, &lo, &hi);
    lo += t->r0;
    hi += t->r0;
    const uint8_t *wd = t->w->data;
    const nm_vec_dot_fn dot = t->k->vec_dot;
    const int64_t cols = t->w->cols;
    for (int64_t a = lo; a < hi; a += ROW_TILE) {
        const int64_t b = a + ROW_TILE < hi ? a + ROW_TILE : hi;
        for (int64_t tok = 0; tok < t->n_tok; tok++) {
            const uint8_t *xa = t->act + (size_t)tok * t->act_stride;
            float *yt = t->y + tok * t->ldy;
            for (int64_t r = a; r < b; r++) yt[r - t->r0] = dot(cols, wd + (size_t)r * t->w->row_bytes, xa);
        }
    }
}

void nm_matmul_rows(nm_pool *pool, const nm_mat *w, int64_t r0, int64_t r1, const float *x, int64_t n_tok,
                    float *y, int64_t ldy, void *scratch) {
    mm_task t = {.w = w, .k = nm_kernel_get(w->type), .r0 = r0, .r1 = r1, .x = x, .n_tok = n_tok, .y = y,
                 .ldy = ldy};
    if (t.k->act_type == NM_TYPE_F32) {
        t.act = (const uint8_t *)x;
        t.act_stride = (size_t)w->cols * sizeof(float);
    } else {
        t.act_out = scratch;
        t.act = scratch;
        t.act_stride = nm_act_row_bytes(t.k->act_type, w->cols);
        /* A region costs a few microseconds: below a handful of rows the
         * conversion is cheaper done right here. */
        if (n_tok >= 4 && pool) nm_pool_run(pool, convert_task, &t);
        else convert_task(&t, 0, 1);
    }
    nm_pool_run(pool, dot_task, &t);
}

void nm_matmul(nm_pool *pool, const nm_mat *w, const float *x, int64_t n_tok, float *y, void *scratch) {
    nm_matmul_rows(pool, w, 0, w->rows, x, n_tok, y, w->rows, scratch);
}
