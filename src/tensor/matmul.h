/*
 * matmul.h - products of a stored weight matrix with rows of activations,
 * spread over a thread pool, with the kernels of the instruction-set level
 * chosen when the matrix is described (kernels.h).
 *
 * A weight matrix is used as stored (mapped from the file, any type with a
 * kernel in kernels.h): `rows` rows of `cols` elements, ggml's ne1 x ne0.
 * The activations are n_tok rows of cols floats; they are converted once to
 * the kernel's activation layout in caller-provided scratch, then every
 * output element is one kernel dot product.  Nothing is allocated here.
 *
 * Each output element is computed by one thread with the same operations
 * whatever the batch size, the row slice and the thread count, so results
 * are bit-identical across them (tests/test_kernels.c checks it).
 */
#ifndef NM_MATMUL_H
#define NM_MATMUL_H

#include "nomoat.h"
#include "base/threads.h"
#include "tensor/kernels.h"

typedef struct nm_mat {
    nm_type type;
    int64_t cols;      /* elements per row (ne0)          */
    int64_t rows;      /* number of rows (ne1)            */
    size_t row_bytes;  /* bytes of one stored row         */
    const void *data;
    const nm_mm_kernel *k; /* the kernel of the chosen level */
    int64_t packed_rows;   /* rows [0, packed_rows) packed (nm_mat_pack) */
} nm_mat;

/* Describes a stored matrix with the kernels of nm_isa_select() (NOMOAT_ISA
 * or the best level of this CPU); fails (naming `name`) if the type has no
 * kernel, cols does not fit its blocks or the kernel's activation blocks,
 * or NOMOAT_ISA asks for a level this CPU cannot run. */
nm_status nm_mat_init(nm_mat *m, const char *name, nm_type type, int64_t cols, int64_t rows, const void *data,
                      nm_err *err);
/* The same with an explicit level (tests, benchmarks); it must be available. */
nm_status nm_mat_init_isa(nm_mat *m, const char *name, nm_type type, int64_t cols, int64_t rows, const void *data,
                          nm_isa isa, nm_err *err);

/* Rewrites the matrix's whole tiles of NM_PACK_ROWS rows in place into
 * its level's packed layout (nm_mm_kernel.pack_tile) when the level has
 * one for the type; nothing otherwise.  `data` is m->data, writable.  Why:
 * a single token's product reads a tile's 16 rows side by side, 16 streams
 * the hardware prefetchers follow badly and blocks whose quants and scales
 * interleave; packed, a tile is one stream laid out as the kernel consumes
 * it (docs/KERNELS.md "Packed weights").  Products give the same bits
 * either way.  Afterwards the data is only for nm_matmul, nm_matmul_rows
 * and nm_matmul_multi: not for nm_matmul_t, row lookups or hashing. */
nm_status nm_mat_pack(nm_mat *m, void *data, nm_err *err);

/* Scratch bytes nm_matmul needs for n_tok activation rows of a matrix with
 * this type and row length, for any level (0 for F32 weights, whose
 * activations are used in place). */
size_t nm_matmul_scratch_bytes(nm_type type, int64_t cols, int64_t n_tok);

/* y[t * w->rows + r] = dot(row r of w, x[t * w->cols ...]) for t < n_tok and
 * every row r.  scratch: nm_matmul_scratch_bytes(...) bytes (may be NULL
 * when that is 0).  x and y must not overlap.  pool may be NULL. */
void nm_matmul(nm_pool *pool, const nm_mat *w, const float *x, int64_t n_tok, float *y, void *scratch);

/* Same, rows [r0, r1) only, written to y[t * ldy + (r - r0)]: for callers
 * that split one matrix into parts (fused projections) or slice rows. */
void nm_matmul_rows(nm_pool *pool, const nm_mat *w, int64_t r0, int64_t r1, const float *x, int64_t n_tok,
                    float *y, int64_t ldy, void *scratch);

/* Whether a and b convert activations alike (activation type, row length,
 * side data): one conversion of x then serves both products. */
bool nm_matmul_act_shared(const nm_mat *a, const nm_mat *b);

/* y[i] = w[i] x (as nm_matmul) for n matrices (scratch sized for the
 * largest conversion): each run of consecutive matrices that share the
 * activation layout (nm_matmul_act_shared) converts x once and runs in one
 * pool region, up to NM_MATMUL_MULTI at a time, threads taking chunks
 * across the matrices in order.  Why: every region costs a wake and a wait, and a thread's first
 * tile of a matrix comes in unprefetched; at generation, where the K and V
 * of a small model take a few microseconds each, that was a large part of
 * them.  Every output gets the same bits as from nm_matmul. */
enum { NM_MATMUL_MULTI = 4 };
/* Rows a matrix may have (nm_mat_init): 2^28, a vocabulary a thousand times
 * the largest in use, so the rows of NM_MATMUL_MULTI matrices fit 32 bits. */
enum { NM_MAT_MAX_ROWS = 1 << 28 };
void nm_matmul_multi(nm_pool *pool, const nm_mat *const *w, float *const *y, int n, const float *x, int64_t n_tok,
                     void *scratch);

/* yg = glu(gate x, up x) row by row, through yu (gate and up: the same
 * rows and activation layout, nm_matmul_act_shared): one region whose
 * chunks are rows [lo, hi) of both matrices, and the thread that computed
 * them applies glu(yg + .., yg + .., yu + .., hi - lo) for every token
 * (SwiGLU: yg = silu(yg) * yu).  Why: the caller then reads only yg, half
 * of it from the other threads, instead of both products; when a VM puts
 * two vCPUs on two core complexes every line one thread hands another
 * costs ~160 ns (docs/KERNELS.md).  Same bits as nm_matmul_multi and glu
 * over all rows: glu is element by element. */
typedef void (*nm_glu_fn)(float *out, const float *gate, const float *up, int64_t n);
void nm_matmul_glu(nm_pool *pool, const nm_mat *gate, const nm_mat *up, const float *x, int64_t n_tok, float *yg,
                   float *yu, nm_glu_fn glu, void *scratch);

/* The transposed product of a backward pass: dx[t * w->cols + c] =
 * sum over rows r of dy[t * w->rows + r] * W[r][c], for t < n_tok, with W
 * dequantized (exactly) to float.  accumulate: add to dx instead of
 * overwriting it.  scratch: nm_matmul_t_scratch_bytes(w, pool) bytes.
 * Each element of dx is summed over r in increasing order by one thread,
 * whatever the thread count. */
size_t nm_matmul_t_scratch_bytes(const nm_mat *w, const nm_pool *pool);
void nm_matmul_t(nm_pool *pool, const nm_mat *w, const float *dy, int64_t n_tok, float *dx, bool accumulate,
                 void *scratch);

#endif
