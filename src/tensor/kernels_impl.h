/*
 * kernels_impl.h - what the kernel files share (kernels.c, the per-level
 * kernels_*.c and matmul.c); nothing outside src/tensor includes it.
 *
 * Each level's file returns its matrix kernel for a weight type, or NULL
 * when it has none for that type (the scalar kernel is used) or when it is
 * compiled for another architecture (then it has none at all).  A level's
 * functions run only after nm_isa_available() said the CPU has it: they are
 * compiled for their instruction set with target attributes, so the rest of
 * the binary stays portable.
 */
#ifndef NM_KERNELS_IMPL_H
#define NM_KERNELS_IMPL_H

#include "kernels.h"
#include "quants.h"

#include <stddef.h>
#include <string.h>

const nm_mm_kernel *nm_mm_kernel_avx2(nm_type t);
const nm_mm_kernel *nm_mm_kernel_avx512(nm_type t);
const nm_mm_kernel *nm_mm_kernel_neon(nm_type t);
nm_nn_fn nm_nn_kernel_avx2(void);
nm_nn_fn nm_nn_kernel_avx512(void);
nm_nn_fn nm_nn_kernel_neon(void);
const nm_attn_kernel *nm_attn_kernel_avx2(void);
const nm_attn_kernel *nm_attn_kernel_avx512(void);
const nm_attn_kernel *nm_attn_kernel_neon(void);

/* Peak probes (kernels_probe.c times them): `iters` rounds of the level's
 * multiply-add instruction on 12 independent accumulators - F32 fused
 * multiply-add, or the 8-bit dot product its matrix kernels use (VPDPBUSD,
 * VPMADDUBSW + VPMADDWD + VPADDD, SDOT or its emulation).  They return the
 * multiply-adds done (0: no probe at this level).  The read loops sum n
 * bytes (a multiple of 256, 64-byte aligned) with the level's widest loads
 * and return a checksum. */
uint64_t nm_probe_fma_avx512(uint64_t iters);
uint64_t nm_probe_int8_avx512(uint64_t iters);
uint64_t nm_probe_read_avx512(const uint8_t *p, size_t n);
uint64_t nm_probe_fma_avx2(uint64_t iters);
uint64_t nm_probe_int8_avx2(uint64_t iters);
uint64_t nm_probe_read_avx2(const uint8_t *p, size_t n);
uint64_t nm_probe_fma_neon(uint64_t iters);
uint64_t nm_probe_int8_neon(uint64_t iters);
uint64_t nm_probe_read_neon(const uint8_t *p, size_t n);

/* Rows of the K-chunk of a repacked tile, shared by the levels: a tile of
 * rows is rewritten into a small buffer in the layout the level's inner loop
 * reads, one chunk of KC_BLOCKS quantization blocks (or KC_FLOATS elements
 * for float weights) at a time, then used for every token of the batch.  A
 * chunk's buffer lives on the stack (a few KiB). */
enum { KC_BLOCKS = 16, KC_SUPER = 2, KC_FLOATS = 128 };

/* Batches below this many tokens go through the matrix-vector path (no
 * repacking: each weight byte is used by few tokens). */
enum { GEMM_MIN_TOK = 4 };

/* Little-endian loads from unaligned bytes, for the level files. */
static inline uint32_t nm_ld32(const void *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline uint16_t nm_ld16(const void *p) {
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The 6-bit scale and min of sub-block j of a Q4_K / Q5_K super-block (the
 * packing of ggml's get_scale_min_k4). */
static inline void nm_scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | (q[j - 4] >> 6) << 4;
        *m = (q[j + 4] >> 4) | (q[j] >> 6) << 4;
    }
}

/* The forward pass's exponential (softmax, SiLU), one sequence of float
 * operations that every level performs identically, element by element or
 * in vector lanes, so its results are the same bits everywhere (libm's
 * expf cannot be vectorised and stay equal to itself).  Cephes' expf:
 * n = nearest integer to x log2(e) (the 1.5 * 2^23 trick, which rounds half
 * to even like the vector rounding instructions), r = x - n ln2 in two
 * parts (C1 has few bits, so n C1 is exact), a degree-5 polynomial, then
 * 2^n from the exponent bits.  Separate multiplies and adds (no FMA):
 * C11 mode compiles without contraction.  Below -87.3 the result is 0 (e^x
 * would be a subnormal: in a softmax it is a weight below 2^-125 of the
 * largest, added to a double sum of at least 1, and rounded to F16 later:
 * no effect), above 88.3 it is infinity (instead of up to 3.4e38 near
 * 88.7).  Within 1 ulp of expf (tests/test_kernels.c checks 2 ulps). */
#define NM_EXP_LO (-87.3f)
#define NM_EXP_HI 88.3f
#define NM_EXP_LOG2E 1.44269504088896341f
#define NM_EXP_MAGIC 12582912.0f /* 1.5 * 2^23 */
#define NM_EXP_C1 0.693359375f
#define NM_EXP_C2 (-2.12194440e-4f)
#define NM_EXP_P0 1.9875691500e-4f
#define NM_EXP_P1 1.3981999507e-3f
#define NM_EXP_P2 8.3334519073e-3f
#define NM_EXP_P3 4.1665795894e-2f
#define NM_EXP_P4 1.6666665459e-1f
#define NM_EXP_P5 5.0000001201e-1f

/* The softmax's end (kernels.c): elements i.. of x (after the levels'
 * vector part) exponentiated and added to the 16 double lanes a, the
 * lanes reduced; returns the factor (float)(1 / sum) x is scaled by. */
float nm_softmax_tail(float *x, int64_t n, int64_t i, float max, double *a);

static inline float nm_exp_ref(float x) {
    /* clamped first (NaN included) so that the integer conversion is defined */
    float xc = x < NM_EXP_HI ? x : NM_EXP_HI;
    xc = x > NM_EXP_LO ? xc : NM_EXP_LO;
    const float fn = (xc * NM_EXP_LOG2E + NM_EXP_MAGIC) - NM_EXP_MAGIC;
    float r = xc - fn * NM_EXP_C1;
    r = r - fn * NM_EXP_C2;
    const float z = r * r;
    float p = NM_EXP_P0;
    p = p * r + NM_EXP_P1;
    p = p * r + NM_EXP_P2;
    p = p * r + NM_EXP_P3;
    p = p * r + NM_EXP_P4;
    p = p * r + NM_EXP_P5;
    float y = p * z;
    y = y + r;
    y = y + 1.0f;
    const uint32_t bits = (uint32_t)((int32_t)fn + 127) << 23; /* n in [-126, 127] */
    float scale;
    memcpy(&scale, &bits, 4);
    float e = y * scale;
    if (x < NM_EXP_LO) e = 0.0f;
    if (x > NM_EXP_HI) e = __builtin_inff();
    if (x != x) e = x;
    return e;
}

static inline int64_t imin64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Generation reads every weight byte once, with the rows of a tile side by
 * side.  The rows of a tile are adjacent, so the tile is one contiguous
 * span, but 8 or 16 interleaved streams row_bytes apart are not a pattern
 * the hardware prefetchers follow well (AVX-512 Q4_0 read 10 GB/s a thread
 * from memory, half the two-thread read probe is 16).  So while one tile
 * is computed, the next tile of the thread's share is requested linearly
 * into L2, spread evenly over the iterations (AVX-512 Q4_0: 10 -> 16 GB/s,
 * one thread; into L1 instead gained little, and prefetching each row a
 * fixed distance ahead lost).  Used by the AVX-512 and AVX2 single-token
 * kernels. */
typedef struct span {
    const uint8_t *p; /* NULL: no next tile */
    size_t n;
} span;

static inline span next_tile(const nm_mm_args *a, int64_t r, int64_t tile, int64_t r1) {
    span s = {NULL, 0};
    if (r + tile < r1) {
        s.p = a->w + (size_t)(r + tile) * a->row_bytes;
        s.n = (size_t)imin64(tile, r1 - r - tile) * a->row_bytes;
    } else if (a->pf_w) { /* the last tile: the first of the thread's next chunk */
        s.p = a->pf_w;
        s.n = (size_t)imin64(tile, a->pf_rows) * a->pf_row_bytes;
    }
    return s;
}

/* Part i of ni of the span (whole cache lines, at most one repeated). */
static inline void prefetch_part(const span *s, int64_t i, int64_t ni) {
    if (!s || !s->p) return;
    const size_t lo = (size_t)i * s->n / (size_t)ni & ~(size_t)63, hi = (size_t)(i + 1) * s->n / (size_t)ni;
    for (size_t o = lo; o < hi; o += 64) __builtin_prefetch(s->p + o, 0, 2); /* prefetcht1: into L2 */
}

/* ---- packed tiles (nm_mm_kernel.pack_tile), shared by the levels ----
 * Q8_0 / Q4_0, a tile of NM_PACK_ROWS = 16 rows block by block: the 16
 * rows' half-precision scales (32 bytes), then the quants as "lanes are
 * rows" vectors of 64 bytes: vector g holds bytes 4g..4g+3 of each row's
 * block (row i at 4i; a 256-bit level reads rows 0..7 and 8..15 as its two
 * halves).  Q4_0: 4 vectors of packed nibbles (low: elements 4g.., high:
 * 16 + 4g..), Q8_0: 8, each quant XOR `flip` (AVX-512 stores them plus
 * 128, unsigned for VPDPBUSD; AVX2 keeps them signed).  Blocks go in
 * pairs, both scale rows first - [scales 2p][scales 2p+1][quants 2p]
 * [quants 2p+1] - so that every quant vector starts a multiple of 64 bytes
 * from the pair; an odd last block is [scales][quants]. */
typedef struct nm_q0p_at {
    size_t sc, q; /* block b's scales and quant vectors, from the tile */
} nm_q0p_at;

static inline nm_q0p_at nm_q0p_block(int64_t b, int64_t nb, size_t qbytes) {
    const size_t pair = (size_t)(b / 2) * 2 * (32 + qbytes);
    if ((nb & 1) && b == nb - 1) return (nm_q0p_at){pair, pair + 32};
    return (nm_q0p_at){pair + 32 * (size_t)(b & 1), pair + 64 + qbytes * (size_t)(b & 1)};
}

static inline void nm_pack_q0(uint8_t *dst, const uint8_t *src, size_t row_bytes, int64_t cols, bool q8,
                              uint32_t flip) {
    const int64_t nb = cols / 32;
    const size_t blk = q8 ? 34 : 18, qn = q8 ? 32 : 16;
    for (int64_t b = 0; b < nb; b++) {
        const nm_q0p_at at = nm_q0p_block(b, nb, 16 * qn);
        for (size_t i = 0; i < 16; i++) {
            const uint8_t *in = src + i * row_bytes + (size_t)b * blk;
            memcpy(dst + at.sc + 2 * i, in, 2);
            for (size_t g = 0; g < qn / 4; g++) {
                const uint32_t v = nm_ld32(in + 2 + 4 * g) ^ flip;
                memcpy(dst + at.q + 64 * g + 4 * i, &v, 4);
            }
        }
    }
}

/* Q4_K. A tile of 16 rows, super-block by super-block (2304 bytes each, the 16
 * rows' 144): the 16 d (half precision, 32 bytes), the 16 dmin (32), the
 * 12 scale bytes of each row as 3 vectors (vector k: bytes 4k..4k+3 of
 * row i at 4i), then the quants as 32 "lanes are rows" vectors: vector
 * 8g + q holds bytes 4q..4q+3 of each row's group g (32 bytes of qs: low
 * nibbles are elements 64g + l, high ones 64g + 32 + l).  As for Q4_0, a
 * 256-bit level reads rows 0..7 and 8..15 as the vectors' two halves.
 * Q5_K (2816 bytes): the same with, between the scales and the quants, 8
 * vectors of high bits (vector q: qh bytes 4q..4q+3 of each row; bit 2g of
 * qh[l] is element 64g + l's fifth bit, bit 2g + 1 element 64g + 32 + l's),
 * read once a super-block and kept for its four groups. */
enum { NM_Q4KP_QS = 256, NM_Q5KP_QH = 256, NM_Q5KP_QS = 768 }; /* offsets in a packed super-block */

/* Bytes of one packed super-block of 16 rows (Q4_K, Q5_K, Q6_K). */
static inline size_t nm_kp_super_bytes(nm_type type) {
    return 16 * (type == NM_TYPE_Q6_K   ? sizeof(nm_block_q6_k)
                 : type == NM_TYPE_Q5_K ? sizeof(nm_block_q5_k)
                                        : sizeof(nm_block_q4_k));
}

static inline void nm_pack_q45_k(uint8_t *dst, const uint8_t *src, size_t row_bytes, int64_t cols, bool q5) {
    const size_t bb = q5 ? sizeof(nm_block_q5_k) : sizeof(nm_block_q4_k);
    const size_t qs_in = q5 ? offsetof(nm_block_q5_k, qs) : offsetof(nm_block_q4_k, qs);
    const size_t qs_out = q5 ? NM_Q5KP_QS : NM_Q4KP_QS;
    for (int64_t sb = 0; sb < cols / NM_QK_K; sb++) {
        uint8_t *o = dst + (size_t)sb * 16 * bb;
        for (size_t i = 0; i < 16; i++) {
            const uint8_t *in = src + i * row_bytes + (size_t)sb * bb;
            memcpy(o + 2 * i, in, 2);
            memcpy(o + 32 + 2 * i, in + 2, 2);
            for (size_t k = 0; k < 3; k++) memcpy(o + 64 + 64 * k + 4 * i, in + 4 + 4 * k, 4);
            if (q5)
                for (size_t q = 0; q < 8; q++) memcpy(o + NM_Q5KP_QH + 64 * q + 4 * i, in + offsetof(nm_block_q5_k, qh) + 4 * q, 4);
            for (size_t g = 0; g < 4; g++)
                for (size_t q = 0; q < 8; q++) memcpy(o + qs_out + 64 * (8 * g + q) + 4 * i, in + qs_in + 32 * g + 4 * q, 4);
        }
    }
}
static inline void nm_pack_q4_k(uint8_t *dst, const uint8_t *src, size_t row_bytes, int64_t cols) {
    nm_pack_q45_k(dst, src, row_bytes, cols, false);
}
static inline void nm_pack_q5_k(uint8_t *dst, const uint8_t *src, size_t row_bytes, int64_t cols) {
    nm_pack_q45_k(dst, src, row_bytes, cols, true);
}

/* Q6_K. A tile of 16 rows, super-block by super-block (3360 bytes, the 16 rows'
 * 210): the 16 d (32 bytes), the 16 int8 scales of each row as 4 vectors
 * (vector k: scales 4k..4k+3 of row i at 4i), then for half h and q = 0..7
 * three vectors, in the order the kernel reads them: ql[64h + 4q ..+3],
 * ql[64h + 32 + 4q ..+3] and qh[32h + 4q ..+3] of each row.  Kind k of
 * those bytes is elements 128h + 32k + 4q..: ql's low (k = 0, 1) or high
 * (2, 3) nibble and bits 2k, 2k+1 of qh.  (With the ql and qh vectors in
 * two separate runs, three streams a super-block, one thread read 9.6
 * GB/s from memory; in one run, as here, ~29.) */
static inline void nm_pack_q6_k(uint8_t *dst, const uint8_t *src, size_t row_bytes, int64_t cols) {
    for (int64_t sb = 0; sb < cols / NM_QK_K; sb++) {
        uint8_t *o = dst + (size_t)sb * 16 * sizeof(nm_block_q6_k);
        for (size_t i = 0; i < 16; i++) {
            const uint8_t *in = src + i * row_bytes + (size_t)sb * sizeof(nm_block_q6_k);
            memcpy(o + 2 * i, in + offsetof(nm_block_q6_k, d), 2);
            for (size_t k = 0; k < 4; k++) memcpy(o + 32 + 64 * k + 4 * i, in + offsetof(nm_block_q6_k, scales) + 4 * k, 4);
            for (size_t h = 0; h < 2; h++)
                for (size_t q = 0; q < 8; q++) {
                    uint8_t *v = o + 288 + 192 * (8 * h + q) + 4 * i;
                    memcpy(v, in + 64 * h + 4 * q, 4);
                    memcpy(v + 64, in + 64 * h + 32 + 4 * q, 4);
                    memcpy(v + 128, in + offsetof(nm_block_q6_k, qh) + 32 * h + 4 * q, 4);
                }
        }
    }
}

/* One token x the packed tile at `tile`: its 16 rows' results to out. */
typedef void (*nm_packed_gemv_fn)(const nm_mm_args *a, const uint8_t *tile, int64_t t, float *out);

/* Rows [r0, r1) of a matrix whose first packed_rows rows are packed, for
 * any packed layout of any level: runs of whole tiles go to `tiles`
 * (batches) or to `gemv` tile by tile (single tokens), a range that starts
 * or ends inside a tile computes the tile with `gemv` and keeps its rows,
 * and the rows past the packed ones go to `stored`, the level's kernel for
 * rows as stored. */
static inline void nm_rows_packed(const nm_mm_args *a, int64_t r0, int64_t r1, nm_packed_gemv_fn gemv,
                                  nm_mm_rows_fn tiles, nm_mm_rows_fn stored) {
    const int64_t pr = imin64(a->packed_rows, r1);
    int64_t r = r0;
    while (r < pr) {
        const int64_t t0 = r & ~(int64_t)(NM_PACK_ROWS - 1), end = imin64(t0 + NM_PACK_ROWS, pr);
        if (r == t0 && end == t0 + NM_PACK_ROWS) {
            const int64_t e = r + (pr - r) / NM_PACK_ROWS * NM_PACK_ROWS;
            if (a->n_tok >= GEMM_MIN_TOK) {
                tiles(a, r, e);
            } else {
                for (int64_t x = r; x < e; x += NM_PACK_ROWS)
                    for (int64_t t = 0; t < a->n_tok; t++)
                        gemv(a, a->w + (size_t)x * a->row_bytes, t, a->y + t * a->ldy + (x - a->y_r0));
            }
            r = e;
        } else {
            float part[NM_PACK_ROWS];
            for (int64_t t = 0; t < a->n_tok; t++) {
                gemv(a, a->w + (size_t)t0 * a->row_bytes, t, part);
                memcpy(a->y + t * a->ldy + (r - a->y_r0), part + (r - t0), (size_t)(end - r) * sizeof(float));
            }
            r = end;
        }
    }
    if (r < r1) stored(a, r, r1);
}

#endif
