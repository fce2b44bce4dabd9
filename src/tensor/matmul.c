/* matmul.c - weight matrix x activation rows over the thread pool.
 *
 * Work split: threads take chunks of output rows (weight rows) for all
 * tokens, so every weight byte is read by one thread only, and a thread
 * that the system preempts (a shared machine, a phone's slow cores) leaves
 * its chunks to the others instead of holding up the region.  For one to
 * three tokens (generation) each thread has a slice of the rows, a counter
 * pair (front, back) in its own cache line: it takes chunks from the front
 * of its own slice, and when that is empty, from the back of the others'
 * (batches share one slice: see run_parts).  So a chunk costs an atomic on a
 * line the thread already holds, except at the end of a region (with one
 * shared counter, each of the ~20 chunks of a product moved the counter's
 * line between the cores: ~0.3 us of stall each when two vCPUs sit on
 * different core complexes, about 0.3 ms a token for tl1b).  Chunks are
 * whole tiles of the kernel (row_align); they start at a quarter of a
 * thread's share at most and shrink with the slice's rows left (each half
 * of them), down to one tile, so the threads finish within about a tile of
 * each other (with fixed chunks of an eighth of a share, one waited half a
 * chunk per product on average: 3-5% of generation).  A thread claims its
 * next chunk before it computes the
 * current one and tells the kernel (nm_mm_args pf_w), which prefetches it
 * while finishing the current one, as it does tile to tile inside a chunk.
 * Several matrices of one input (nm_matmul_multi: Q, K, V; gate, up) are
 * one row range to the threads, split into chunks that stay inside a
 * matrix, so they cost one region, and the next chunk prefetched may be
 * the next matrix's.  nm_matmul_glu makes a chunk the same rows of two
 * matrices (gate and up) and has its thread apply SwiGLU to them, so that
 * no other thread reads the up product.  Which thread computes a row
 * changes none of its bits.
 * Inside a chunk the level's kernel walks its own tiles (kernels_*.c).
 *
 * The activation rows are converted (quantized) before the split, in
 * parallel by token for large batches, so all threads share them; kernels
 * that want it also get exact side data of each row (block scales as
 * floats, block sums) computed once here instead of once per weight tile. */
#include "matmul.h"
#include "kernels.h"
#include "kernels_impl.h"
#include "types.h"
#include "base/base.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static nm_status mat_init(nm_mat *m, const char *name, nm_type type, int64_t cols, int64_t rows, const void *data,
                          nm_isa isa, nm_err *err) {
    const nm_mm_kernel *k = nm_mm_kernel_get(type, isa);
    if (!k)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: no matrix kernel for type %s", name,
                          nm_type_name(type) ? nm_type_name(type) : "(unknown)");
    size_t rb = nm_type_row_bytes(type, cols);
    if (cols <= 0 || rows <= 0 || rb == 0 || nm_act_row_bytes(k->act_type, cols) == 0)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: a %s matrix cannot have rows of %lld elements", name,
                          nm_type_name(type), (long long)cols);
    /* the work split counts the rows of up to NM_MATMUL_MULTI matrices in 32 bits */
    if (rows > NM_MAT_MAX_ROWS)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %lld rows is more than the %d a matrix may have", name,
                          (long long)rows, NM_MAT_MAX_ROWS);
    m->type = type;
    m->cols = cols;
    m->rows = rows;
    m->row_bytes = rb;
    m->data = data;
    m->k = k;
    m->packed_rows = 0;
    return NM_OK;
}

nm_status nm_mat_init_isa(nm_mat *m, const char *name, nm_type type, int64_t cols, int64_t rows, const void *data,
                          nm_isa isa, nm_err *err) {
    if (!nm_isa_available(isa))
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: instruction-set level %s is not available here", name,
                          nm_isa_name(isa));
    return mat_init(m, name, type, cols, rows, data, isa, err);
}

nm_status nm_mat_init(nm_mat *m, const char *name, nm_type type, int64_t cols, int64_t rows, const void *data,
                      nm_err *err) {
    nm_isa isa;
    nm_status st = nm_isa_select(&isa, err);
    if (st) return st;
    return mat_init(m, name, type, cols, rows, data, isa, err);
}

nm_status nm_mat_pack(nm_mat *m, void *data, nm_err *err) {
    if (!m->k->pack_tile || m->packed_rows || m->rows < NM_PACK_ROWS) return NM_OK;
    const size_t tile = (size_t)NM_PACK_ROWS * m->row_bytes;
    uint8_t *copy = malloc(tile);
    if (!copy) return nm_err_set(err, NM_ERR_NOMEM, "out of memory to pack a %lld x %lld matrix", (long long)m->rows,
                                 (long long)m->cols);
    const int64_t n = m->rows / NM_PACK_ROWS * NM_PACK_ROWS;
    for (int64_t r = 0; r < n; r += NM_PACK_ROWS) {
        uint8_t *t = (uint8_t *)data + (size_t)r * m->row_bytes;
        memcpy(copy, t, tile);
        m->k->pack_tile(t, copy, m->row_bytes, m->cols);
    }
    free(copy);
    m->packed_rows = n;
    return NM_OK;
}

/* Activation scratch: n_tok converted rows, then n_tok rows of side data,
 * each row padded to 64 bytes so vector loads of one row stay in it. */
static size_t act_stride(nm_type act_type, int64_t cols) {
    return (size_t)nm_align_up(nm_act_row_bytes(act_type, cols), 64);
}
static size_t extra_stride(nm_type act_type, int64_t cols) {
    return (size_t)nm_align_up(nm_act_extra_bytes(act_type, cols), 64);
}

size_t nm_matmul_scratch_bytes(nm_type type, int64_t cols, int64_t n_tok) {
    const nm_kernel *k = nm_kernel_get(type);
    if (!k || k->act_type == NM_TYPE_F32 || n_tok <= 0) return 0;
    return (act_stride(k->act_type, cols) + extra_stride(k->act_type, cols)) * (size_t)n_tok;
}

/* One matrix of a region: rows [r0, r1) of w into y[t * ldy + (r - r0)],
 * rows [start, start + r1 - r0) of the region's combined row range. */
typedef struct mm_part {
    const nm_mat *w;
    int64_t r0, r1, start;
    float *y;
    int64_t ldy;
    int64_t align; /* chunks: multiples of align rows */
} mm_part;

/* Rows of the combined range not yet taken from one thread's slice:
 * [front, back), packed as front | back << 32 so that one compare-exchange
 * moves either end (nm_mat_init keeps rows below 2^28, so four parts fit). */
enum { MM_SLICES = 8 };
typedef struct mm_slice {
    _Alignas(64) atomic_ullong fb;
} mm_slice;

typedef struct mm_task {
    mm_slice slice[MM_SLICES]; /* threads past MM_SLICES share them */
    int n_slices;
    mm_part part[NM_MATMUL_MULTI];
    int n_part;
    /* nm_matmul_glu: each chunk of part[0] (gate) also computes the same
     * rows of *glu_up, then glu over them */
    const mm_part *glu_up;
    nm_glu_fn glu;
    int64_t total;       /* rows of all parts */
    int64_t cap;         /* chunks: at most cap rows */
    int nth;
    const float *x;
    nm_mm_args args;     /* the activation fields all parts share */
    uint8_t *act_out, *extra_out; /* for the conversion step */
} mm_task;

static void convert_task(void *arg, int ith, int nth) {
    const mm_task *t = arg;
    const nm_mat *w = t->part[0].w;
    const nm_mm_kernel *k = w->k;
    int64_t lo, hi;
    nm_split_range(t->args.n_tok, ith, nth, 1, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) {
        uint8_t *a = t->act_out + (size_t)i * t->args.act_stride;
        uint8_t *e = k->wants_extra ? t->extra_out + (size_t)i * t->args.extra_stride : NULL;
        if (k->convert) {
            k->convert(t->x + i * w->cols, a, e, w->cols);
        } else {
            nm_act_from_float(k->act_type, t->x + i * w->cols, a, w->cols);
            if (e) nm_act_extra(k->act_type, a, e, w->cols);
        }
    }
}

static int64_t part_end(const mm_part *P) { return P->start + (P->r1 - P->r0); }

/* The part that holds row pos of the combined range. */
static int part_at(const mm_task *t, int64_t pos) {
    int p = 0;
    while (p + 1 < t->n_part && pos >= part_end(&t->part[p])) p++;
    return p;
}

/* pos (not before P's start) rounded down to whole chunks (align rows) of P. */
static int64_t tile_floor(const mm_part *P, int64_t pos) {
    return P->start + (pos - P->start) / P->align * P->align;
}

/* pos rounded down to whole chunks of its part. */
static int64_t align_down(const mm_task *t, int64_t pos) {
    return pos >= t->total ? t->total : tile_floor(&t->part[part_at(t, pos)], pos);
}

/* A chunk's rows when `left` rows remain in a slice: half of them per
 * thread that takes from it first (one, or all for a shared slice), in
 * whole tiles, at least one tile, at most cap. */
static int64_t chunk_rows(const mm_task *t, const mm_part *P, int64_t left) {
    const int64_t owners = t->n_slices == 1 ? t->nth : 1;
    const int64_t size = left / (2 * owners) / P->align * P->align;
    return size > t->cap ? t->cap : size < P->align ? P->align : size;
}

/* A chunk from the front (the slice's owner) or the back (another thread)
 * of slice s: rows [*lo, *hi) of part *pi; false when s is empty.  A chunk
 * never crosses from one part into the next, and both ends stay on whole
 * tiles of their part (a slice's ends start there and move by tiles, or
 * to a part's end). */
static bool take(mm_task *t, mm_slice *s, bool front, int *pi, int64_t *lo, int64_t *hi) {
    unsigned long long fb = atomic_load_explicit(&s->fb, memory_order_relaxed);
    for (;;) {
        const int64_t f = (int64_t)(fb & 0xffffffffu), b = (int64_t)(fb >> 32);
        if (f >= b) return false;
        int64_t c0, c1;
        const int p = part_at(t, front ? f : b - 1);
        const mm_part *P = &t->part[p];
        if (front) {
            c0 = f;
            c1 = f + chunk_rows(t, P, b - f);
            if (c1 > part_end(P)) c1 = part_end(P);
            if (c1 > b) c1 = b;
        } else {
            c1 = b;
            c0 = b - chunk_rows(t, P, b - f);
            c0 = c0 <= P->start ? P->start : tile_floor(P, c0);
            if (c0 < f) c0 = f;
        }
        const unsigned long long nfb = front ? (unsigned long long)c1 | (unsigned long long)b << 32
                                             : (unsigned long long)f | (unsigned long long)c0 << 32;
        if (atomic_compare_exchange_weak_explicit(&s->fb, &fb, nfb, memory_order_relaxed, memory_order_relaxed)) {
            *pi = p;
            *lo = P->r0 + (c0 - P->start);
            *hi = *lo + (c1 - c0);
            return true;
        }
    }
}

/* Thread ith's next chunk: from its own slice, else from the others'. */
static bool claim(mm_task *t, int ith, int *pi, int64_t *lo, int64_t *hi) {
    const int home = ith % t->n_slices;
    for (int k = 0; k < t->n_slices; k++)
        if (take(t, &t->slice[(home + k) % t->n_slices], k == 0, pi, lo, hi)) return true;
    return false;
}

static void dot_task(void *arg, int ith, int nth) {
    mm_task *t = arg;
    (void)nth;
    int p = 0, np = 0;
    int64_t lo = 0, hi = 0;
    bool have = claim(t, ith, &p, &lo, &hi);
    while (have) {
        int64_t nlo = 0, nhi = 0;
        const bool more = claim(t, ith, &np, &nlo, &nhi);
        const mm_part *P = &t->part[p];
        nm_mm_args a = t->args; /* this thread's copy: its part and prefetch hint */
        a.w = P->w->data;
        a.row_bytes = P->w->row_bytes;
        a.cols = P->w->cols;
        a.y = P->y;
        a.ldy = P->ldy;
        a.y_r0 = P->r0;
        if (more) {
            const nm_mat *nw = t->part[np].w;
            a.pf_w = (const uint8_t *)nw->data + (size_t)nlo * nw->row_bytes;
            a.pf_row_bytes = nw->row_bytes;
            a.pf_rows = nhi - nlo;
        }
        a.packed_rows = P->w->packed_rows;
        (a.packed_rows ? P->w->k->rows_packed : P->w->k->rows)(&a, lo, hi);
        if (t->glu) {
            const mm_part *U = t->glu_up;
            a.w = U->w->data;
            a.row_bytes = U->w->row_bytes;
            a.y = U->y;
            a.ldy = U->ldy;
            a.y_r0 = U->r0;
            a.packed_rows = U->w->packed_rows;
            (a.packed_rows ? U->w->k->rows_packed : U->w->k->rows)(&a, lo, hi);
            for (int64_t tok = 0; tok < t->args.n_tok; tok++) {
                float *g = P->y + tok * P->ldy + (lo - P->r0);
                t->glu(g, g, U->y + tok * U->ldy + (lo - U->r0), hi - lo);
            }
        }
        p = np;
        lo = nlo;
        hi = nhi;
        have = more;
    }
}

bool nm_matmul_act_shared(const nm_mat *a, const nm_mat *b) {
    return a->k->act_type == b->k->act_type && a->cols == b->cols && a->k->wants_extra == b->k->wants_extra &&
           a->k->convert == b->k->convert;
}

/* Rows a chunk of w is a multiple of.  Batches: what the level's batch
 * kernel takes at once (batch_align: AVX-512 Q8_0/Q4_0 run three 16-row
 * tiles together), else two tiles; packed tiles are read whole (a chunk
 * starting inside one would read it twice). */
static int64_t chunk_align(const nm_mat *w, int64_t n_tok) {
    const nm_mm_kernel *k = w->k;
    const int64_t a = n_tok < 4 ? k->row_align : k->batch_align ? k->batch_align : 2 * k->row_align;
    return w->packed_rows && a < NM_PACK_ROWS ? NM_PACK_ROWS : a;
}

/* Converts x (unless `converted`) and runs the parts in one region. */
static void run_parts(nm_pool *pool, mm_task *t, int64_t n_tok, void *scratch, bool converted) {
    const nm_mat *w = t->part[0].w;
    const nm_mm_kernel *k = w->k;
    t->args = (nm_mm_args){.n_tok = n_tok};
    if (k->act_type == NM_TYPE_F32) {
        t->args.act = (const uint8_t *)t->x;
        t->args.act_stride = (size_t)w->cols * sizeof(float);
    } else {
        t->args.act_stride = act_stride(k->act_type, w->cols);
        t->args.extra_stride = extra_stride(k->act_type, w->cols);
        t->act_out = scratch;
        t->extra_out = t->act_out + t->args.act_stride * (size_t)n_tok;
        t->args.act = t->act_out;
        t->args.extra = k->wants_extra ? t->extra_out : NULL;
        /* A region costs a few microseconds: below a handful of rows the
         * conversion is cheaper done right here. */
        if (converted) {
            /* done by the previous call */
        } else if (n_tok >= 4 && pool) {
            nm_pool_run(pool, convert_task, t);
        } else {
            convert_task(t, 0, 1);
        }
    }
    t->nth = nm_pool_size(pool);
    t->total = 0;
    int64_t align = 1;
    for (int i = 0; i < t->n_part; i++) {
        mm_part *P = &t->part[i];
        P->align = chunk_align(P->w, n_tok);
        if (i == 0 && t->glu) { /* whole tiles of up too */
            const int64_t ua = chunk_align(t->glu_up->w, n_tok);
            if (ua > P->align) P->align = ua;
        }
        P->start = t->total;
        t->total += P->r1 - P->r0;
        if (P->align > align) align = P->align;
    }
    const int64_t cap = t->total / (4 * (int64_t)t->nth) / align * align;
    t->cap = cap > align ? cap : align;
    /* Batches: one slice that all threads share, as one counter.  Their
     * chunks are long (a tile is many tokens' work), so claims are rare,
     * and per-thread slices measured 3-5% slower for LoRA training's
     * 128-token products (alternately with one counter, three pairs). */
    t->n_slices = n_tok >= GEMM_MIN_TOK ? 1 : t->nth < MM_SLICES ? t->nth : MM_SLICES;
    int64_t front = 0;
    for (int i = 0; i < t->n_slices; i++) {
        const int64_t back = align_down(t, t->total * (i + 1) / t->n_slices);
        atomic_init(&t->slice[i].fb, (unsigned long long)front | (unsigned long long)back << 32);
        front = back;
    }
    nm_pool_run(pool, dot_task, t);
}

void nm_matmul_rows(nm_pool *pool, const nm_mat *w, int64_t r0, int64_t r1, const float *x, int64_t n_tok,
                    float *y, int64_t ldy, void *scratch) {
    mm_task t = {.n_part = 1, .x = x};
    t.part[0] = (mm_part){.w = w, .r0 = r0, .r1 = r1, .y = y, .ldy = ldy};
    run_parts(pool, &t, n_tok, scratch, false);
}

void nm_matmul_multi(nm_pool *pool, const nm_mat *const *w, float *const *y, int n, const float *x, int64_t n_tok,
                     void *scratch) {
    mm_task t = {.x = x};
    bool converted = false;
    for (int i = 0; i < n; i++) {
        t.part[t.n_part++] = (mm_part){.w = w[i], .r0 = 0, .r1 = w[i]->rows, .y = y[i], .ldy = w[i]->rows};
        const bool next_shares = i + 1 < n && nm_matmul_act_shared(w[i], w[i + 1]);
        if (t.n_part == NM_MATMUL_MULTI || !next_shares) {
            run_parts(pool, &t, n_tok, scratch, converted);
            converted = next_shares;
            t.n_part = 0;
        }
    }
}

void nm_matmul_glu(nm_pool *pool, const nm_mat *gate, const nm_mat *up, const float *x, int64_t n_tok, float *yg,
                   float *yu, nm_glu_fn glu, void *scratch) {
    mm_task t = {.n_part = 1, .x = x, .glu = glu};
    const mm_part u = {.w = up, .r0 = 0, .r1 = up->rows, .y = yu, .ldy = up->rows};
    t.glu_up = &u;
    t.part[0] = (mm_part){.w = gate, .r0 = 0, .r1 = gate->rows, .y = yg, .ldy = gate->rows};
    run_parts(pool, &t, n_tok, scratch, false);
}

void nm_matmul(nm_pool *pool, const nm_mat *w, const float *x, int64_t n_tok, float *y, void *scratch) {
    nm_matmul_rows(pool, w, 0, w->rows, x, n_tok, y, w->rows, scratch);
}

/* ====================================================================== */
/* dx = dy W                                                              */
/* ====================================================================== */
/* Threads own column ranges of dx (whole blocks of W), so each element is
 * summed over all rows by one thread.  A thread dequantizes a panel of
 * T_ROWS rows x T_COLS columns of W into its scratch, then adds the
 * panel's contribution to every token's dx through the level's
 * accumulate kernel; panels follow each other down the rows, so each
 * element's sum runs over r in increasing order. */
enum { T_ROWS = 64, T_COLS = 256 };

size_t nm_matmul_t_scratch_bytes(const nm_mat *w, const nm_pool *pool) {
    (void)w;
    return (size_t)nm_pool_size(pool) * T_ROWS * T_COLS * sizeof(float);
}

typedef struct mt_task {
    const nm_mat *w;
    const nm_type_traits *tr;
    const float *dy;
    int64_t n_tok;
    float *dx;
    bool accumulate;
    float *scratch;
    nm_nn_fn nn;
} mt_task;

static void transpose_task(void *arg, int ith, int nth) {
    const mt_task *t = arg;
    const nm_mat *w = t->w;
    const int64_t blk = t->tr->blck_size;
    int64_t c0, c1;
    nm_split_range(w->cols, ith, nth, blk > 16 ? blk : 16, &c0, &c1);
    float *panel = t->scratch + (size_t)ith * T_ROWS * T_COLS;
    for (int64_t cc = c0; cc < c1; cc += T_COLS) {
        const int64_t nc = c1 - cc < T_COLS ? c1 - cc : T_COLS;
        if (!t->accumulate)
            for (int64_t tok = 0; tok < t->n_tok; tok++) memset(t->dx + tok * w->cols + cc, 0, (size_t)nc * sizeof(float));
        for (int64_t r = 0; r < w->rows; r += T_ROWS) {
            const int64_t nr = w->rows - r < T_ROWS ? w->rows - r : T_ROWS;
            const float *b;
            int64_t ldb;
            if (w->type == NM_TYPE_F32) {
                b = (const float *)w->data + r * w->cols + cc;
                ldb = w->cols;
            } else {
                /* cc is a multiple of the block size, and so is nc except
                 * at the end of a row */
                const size_t off = (size_t)(cc / blk) * t->tr->type_size;
                void (*to_float)(const void *, float *, int64_t) = w->k->to_float ? w->k->to_float : t->tr->to_float;
                for (int64_t i = 0; i < nr; i++)
                    to_float((const uint8_t *)w->data + (size_t)(r + i) * w->row_bytes + off, panel + i * nc, nc);
                b = panel;
                ldb = nc;
            }
            t->nn(t->n_tok, nc, nr, t->dy + r, w->rows, b, ldb, t->dx + cc, w->cols);
        }
    }
}

void nm_matmul_t(nm_pool *pool, const nm_mat *w, const float *dy, int64_t n_tok, float *dx, bool accumulate,
                 void *scratch) {
    mt_task t = {.w = w, .tr = nm_type_traits_get(w->type), .dy = dy, .n_tok = n_tok, .dx = dx,
                 .accumulate = accumulate, .scratch = scratch, .nn = nm_nn_kernel(w->k->isa)};
    nm_pool_run(pool, transpose_task, &t);
}
