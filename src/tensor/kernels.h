/*
 * kernels.h - dot products of a stored weight row with an activation row,
 * one kernel per weight type (the ggml design).
 *
 * A weight row stays in its stored type.  The activation row is first
 * converted once into the weight type's partner layout (`act_type`):
 *   F32 weights              ->  F32 activations (used in place)
 *   F16 / BF16 weights       ->  F16 / BF16 activations
 *   Q4_0, Q5_0, Q8_0         ->  Q8_0 activations
 *   Q4_1, Q5_1               ->  Q8_1 activations (scale and scaled sum)
 *   Q4_K, Q5_K, Q6_K         ->  Q8_K activations (256-element super-blocks)
 * so the inner loops of the quantized kernels are integer multiply-adds with
 * one float scale per block, exactly as llama.cpp computes them (the golden
 * logits come from there).  The SIMD levels below give the same results
 * (docs/KERNELS.md).
 */
#ifndef NM_KERNELS_H
#define NM_KERNELS_H

#include "nomoat.h"
#include "base/threads.h"

#include <string.h>

/* Dot product of n elements: w is a row in the weight type, x the activation
 * row already in the kernel's act_type.  n is a multiple of both block sizes. */
typedef float (*nm_vec_dot_fn)(int64_t n, const void *w, const void *x);

typedef struct nm_kernel {
    nm_type act_type;
    nm_vec_dot_fn vec_dot;
} nm_kernel;

/* The scalar reference kernel; NULL if nomoat has no kernel for this type. */
const nm_kernel *nm_kernel_get(uint32_t weight_type);

/* ====================================================================== */
/* instruction-set levels                                                 */
/* ====================================================================== */
/* One binary carries every level its target architecture has; the level is
 * chosen per matrix when it is described (nm_mat_init): NOMOAT_ISA if that
 * environment variable is set, else the best level this CPU runs.  Nothing
 * is cached, so a test can set NOMOAT_ISA and load a model again. */
typedef enum nm_isa {
    NM_ISA_SCALAR = 0, /* portable C: the reference                       */
    NM_ISA_AVX2,       /* x86-64: AVX2 + FMA + F16C                        */
    NM_ISA_AVX512,     /* x86-64: AVX-512 F/BW/VL/DQ + VNNI (BF16 if there) */
    NM_ISA_NEON,       /* aarch64: NEON (+ dot product if there)           */
    NM_ISA_COUNT
} nm_isa;

const char *nm_isa_name(nm_isa isa);
/* -1 if s names no level. */
int nm_isa_from_name(const char *s);
/* Compiled into this binary and runnable on this CPU. */
bool nm_isa_available(nm_isa isa);
nm_isa nm_isa_best(void);
/* The level NOMOAT_ISA asks for, or the best one when it is unset or empty;
 * an error naming the problem when it names no level or one this CPU (or
 * this build) cannot run. */
nm_status nm_isa_select(nm_isa *out, nm_err *err);
/* Optional extensions a level uses when present (for reports and tests). */
bool nm_cpu_has_avx512_bf16(void);
bool nm_cpu_has_neon_dotprod(void);

/* ====================================================================== */
/* matrix kernels                                                         */
/* ====================================================================== */
/* A matrix kernel multiplies a range of weight rows with every activation
 * row of a batch.  Each ISA level has one per type it accelerates (types it
 * lacks fall back to the scalar one).  Contract, which the tests check:
 *  - every output element is computed by the same operations in the same
 *    order whatever the row range, the batch size, the tile it falls in or
 *    the thread that runs it (so batching and threads change no bit);
 *  - for the quantized types every level gives exactly the scalar
 *    reference's bits: integer block sums are exact, and the float scale
 *    arithmetic is done in the reference's order (see KERNELS.md);
 *  - for F32/F16/BF16 weights the levels sum in float lanes, the reference
 *    in double: they agree to float rounding. */
typedef struct nm_mm_args {
    const uint8_t *w;      /* row 0 of the matrix                          */
    size_t row_bytes;
    int64_t cols;
    const uint8_t *act;    /* n_tok rows in act_type, act_stride apart     */
    size_t act_stride;
    const uint8_t *extra;  /* side data of each row (nm_act_extra) or NULL */
    size_t extra_stride;
    int64_t n_tok;
    float *y;              /* y[t * ldy + (r - y_r0)]                      */
    int64_t ldy, y_r0;
    /* the rows the calling thread computes next, possibly of another
     * matrix (a prefetch hint for the end of this call's rows; pf_w NULL:
     * none): pf_rows rows of pf_row_bytes from pf_w */
    const uint8_t *pf_w;
    size_t pf_row_bytes;
    int64_t pf_rows;
    /* rows [0, packed_rows) are in the level's packed layout (see
     * nm_mm_kernel.pack_tile); 0 when the matrix is as stored */
    int64_t packed_rows;
} nm_mm_args;

typedef void (*nm_mm_rows_fn)(const nm_mm_args *a, int64_t r0, int64_t r1);

/* Converts a float row into act_type and, if extra is not NULL, its side
 * data: the same bytes as nm_act_from_float + nm_act_extra for finite
 * input, only faster. */
typedef void (*nm_act_convert_fn)(const float *x, uint8_t *act, uint8_t *extra, int64_t n);

typedef struct nm_mm_kernel {
    nm_type act_type;      /* activation layout (shared by all levels)      */
    bool wants_extra;      /* reads nm_act_extra side data                  */
    int row_align;         /* thread shares start at multiples of this      */
    nm_isa isa;
    nm_mm_rows_fn rows;
    nm_act_convert_fn convert; /* NULL: the reference conversion          */
    /* Exact weight rows to floats (the dequantizer's values), faster than
     * the type table's reference; NULL: use that one (nm_matmul_t). */
    void (*to_float)(const void *src, float *dst, int64_t n);
    /* Optional: the level's own layout for whole tiles of NM_PACK_ROWS
     * rows, for weights that are only read by this level's kernels (a
     * model read into memory).  pack_tile writes one tile (the
     * NM_PACK_ROWS x row_bytes bytes at src, as stored) in that layout at
     * dst (the same size; dst and src do not overlap); rows_packed then
     * computes rows of a matrix whose first packed_rows rows are packed
     * (nm_mm_args), any row range, the rows past them as stored.  Same
     * bits as `rows` on the stored matrix.  NULL: no packed layout. */
    void (*pack_tile)(uint8_t *dst, const uint8_t *src, size_t row_bytes, int64_t cols);
    nm_mm_rows_fn rows_packed;
    /* Batches (4 tokens or more): thread shares are multiples of this, the
     * rows the batch kernel takes at once; 0: 2 x row_align. */
    int batch_align;
} nm_mm_kernel;

/* Rows of a packed tile (nm_mm_kernel.pack_tile). */
enum { NM_PACK_ROWS = 16 };

/* The kernel of a weight type at a level (the scalar one where the level
 * has none); NULL if the type has no kernel at all. */
const nm_mm_kernel *nm_mm_kernel_get(uint32_t weight_type, nm_isa isa);

/* Q8_1: ggml's block_q8_1 (activation side of Q4_1/Q5_1): d, then
 * s = d * sum(qs), both half precision. */
typedef struct {
    uint16_t d, s;
    int8_t qs[32];
} nm_block_q8_1;
_Static_assert(sizeof(nm_block_q8_1) == 36, "q8_1 layout");

/* Float panel product of the transposed matmul (nm_matmul_t):
 * C[m * ldc + n] += sum over k < K of A[m * lda + k] * B[k * ldb + n], for
 * m < M, n < N, each element summed over k in increasing order (so
 * consecutive calls over row panels continue one sum). */
typedef void (*nm_nn_fn)(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                         float *C, int64_t ldc);
nm_nn_fn nm_nn_kernel(nm_isa isa);

/* ====================================================================== */
/* attention over an F16 KV cache                                         */
/* ====================================================================== */
/* The two inner loops of attention, for src/model: with an F16 cache it
 * multiplies F16-rounded queries by cached keys and F16-rounded weights by
 * cached values and adds the products in double (as llama.cpp's golden
 * outputs require).  Every level gives the scalar
 * reference's bits: values are summed per element in key order (vector
 * lanes are elements), scores of heads a multiple of 16 wide in 16 double
 * lanes reduced by halves, other widths element by element (kernels.c).
 * Products are taken in double (exact for any float q and w: 24 x 11
 * significant bits), so FMA and separate multiply-add give the same bits.
 * Each call serves nq queries that share the keys (the query heads of one
 * KV head), so the levels convert each cached row once for all of them; a
 * query's results do not depend on nq or on the other queries.
 *   scores: scores[j * s_stride + p] = (float)(sum_i q_j[i] * K_p[i]) * scale
 *   values: out[j * o_stride + i] = (float)(sum_p w_j[p] * V_p[i])
 * for j < nq, p < n, i < hd, with q_j = q + j * q_stride, w_j = w + j *
 * w_stride, V_p = v + p * stride (halves) and the keys in *key tiles*:
 * K_p[i] = k[nm_key_index(hd, p, i)], 16 positions side by side for each
 * element, so that a vector holds one element of 16 keys and the scores of
 * 16 keys come out of vertical operations, the reference's lane tree
 * included (no reduction across lanes per key).  Tile lanes past n are
 * read (any finite or non-finite halves) but never stored. */
enum { NM_KEY_TILE = 16 };
static inline size_t nm_key_index(int64_t hd, int64_t p, int64_t i) {
    return (size_t)((p / NM_KEY_TILE) * NM_KEY_TILE * hd + i * NM_KEY_TILE + p % NM_KEY_TILE);
}
typedef struct nm_attn_kernel {
    void (*scores)(const float *q, size_t q_stride, int nq, const uint16_t *k, int64_t n, int64_t hd, float scale,
                   float *scores, size_t s_stride);
    void (*values)(const float *w, size_t w_stride, int nq, const uint16_t *v, size_t stride, int64_t n, int64_t hd,
                   float *out, size_t o_stride);
    /* Rows to half precision (the cache) and rounded to it in place (queries,
     * attention weights): nm_f32_to_f16's bits for finite input. */
    void (*to_f16)(const float *x, uint16_t *h, int64_t n);
    void (*round_f16)(float *x, int64_t n);
    /* The other row operations of the forward pass that need e^x, with the
     * levels' shared exponential (kernels_impl.h: the same bits everywhere
     * for finite input).  softmax: x[i] = e^(x[i] - max) / sum, the sum in
     * double over 16 lanes (lane i % 16) reduced like the scores.  swiglu:
     * out[i] = g / (1 + e^-g) * up[i], g = gate[i] (out may be gate). */
    void (*softmax)(float *x, int64_t n);
    void (*swiglu)(float *out, const float *gate, const float *up, int64_t n);
    /* nm_rmsnorm (ops.h) with its bits: the sum of squares in 8 double
     * lanes, ended by nm_rms_scale.  The scalar loop converts float to
     * double one element at a time, ~2 us for 2048 (45 a tl1b token). */
    void (*rmsnorm)(float *y, const float *x, const float *w, int64_t n, float eps);
} nm_attn_kernel;

const nm_attn_kernel *nm_attn_kernel_get(nm_isa isa);

/* ====================================================================== */
/* machine figures for roofline reports (nomoat bench)                    */
/* ====================================================================== */
/* Measured on the calling pool's threads at once, at one level: memory
 * read bandwidth over a buffer far larger than the caches, and the peak
 * rates of the multiply-adds the level's kernels are made of (F32 fused
 * multiply-add; the 8-bit dot product: VPDPBUSD on AVX-512, VPMADDUBSW +
 * VPMADDWD on AVX2, SDOT or its emulation on NEON).  Each figure is the
 * best of a few runs of ~50 ms. */
typedef struct nm_machine_peaks {
    nm_isa isa;
    int threads;
    double read_bytes_s;  /* bytes per second          */
    double fma_s;         /* F32 multiply-adds/second  */
    double int8_s;        /* 8-bit multiply-adds/second */
} nm_machine_peaks;

/* The memory the read-bandwidth probe reads: read_bytes (rounded down to
 * 256) of pseudo-random bytes, as weights are (a repeated pattern leaves
 * identical pages a host may merge), written once so that every
 * measurement reads resident pages. */
typedef struct nm_read_probe nm_read_probe;
nm_status nm_read_probe_new(size_t read_bytes, nm_read_probe **out, nm_err *err);
void nm_read_probe_free(nm_read_probe *p);

nm_status nm_measure_machine(nm_pool *pool, nm_isa isa, const nm_read_probe *probe, nm_machine_peaks *out,
                             nm_err *err);
/* Only the memory read bandwidth (bytes per second, best of `passes` reads
 * of the probe).  On a shared machine (a VM whose host serves other
 * tenants) memory bandwidth moves by half between seconds, so `nomoat
 * bench` measures it beside each timed generation run as well. */
nm_status nm_measure_read(nm_pool *pool, nm_isa isa, const nm_read_probe *probe, int passes, double *bytes_s,
                          nm_err *err);

/* Round trip of one cache line between the pool's first two threads, in
 * nanoseconds: the mean of up to 20000 hand-offs (at most ~5 ms); 0 with
 * one thread.  What every region of a product pays to start, hand over
 * rows and finish.  On a VM the host may run two vCPUs on one core complex
 * (this 2-core EPYC: 50-80 ns) or on two (~300 ns: then each has its own
 * memory link, so the read probe sees 50-60 GB/s instead of 30-37, while
 * every hand-off between the threads is slower), so `nomoat bench`
 * measures it beside each generation run. */
double nm_measure_round_trip(nm_pool *pool);

/* Bytes of an activation row of n elements in act_type (0 if not a valid
 * activation type or n does not fit its blocks). */
size_t nm_act_row_bytes(nm_type act_type, int64_t n);
/* Converts n floats into act_type (F32 is a copy).  n fits the blocks. */
void nm_act_from_float(nm_type act_type, const float *x, void *dst, int64_t n);

/* Side data derived exactly from an activation row, for the SIMD kernels:
 *   Q8_0: float d[n/32] (the block scales), then int32 sum[n/32] (the sum
 *         of each block's quants);
 *   Q8_K: int16 sum[n/32] (each 32-element sub-block's quants summed);
 *   F16, BF16: the n values as floats.
 * 0 bytes for the other types. */
size_t nm_act_extra_bytes(nm_type act_type, int64_t n);
void nm_act_extra(nm_type act_type, const void *act_row, void *extra, int64_t n);

/* The activation quantizers (ggml's quantize_row_q8_1_ref / q8_K_ref
 * arithmetic); Q8_0 uses the reference nm_quant_q8_0 of quants.c. */
void nm_quant_q8_1(const float *x, void *dst, int64_t n);
void nm_quant_q8_k(const float *x, void *dst, int64_t n);

/* Exact half -> float without branches (the FP16 library's method: normal
 * numbers by rebiasing the exponent with one multiply, subnormals through a
 * magic-number subtraction, the select on the magnitude), for inner loops:
 * inlined and vectorisable, unlike the general nm_f16_to_f32. */
static inline float nm_half_to_f32(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    uint32_t nb = (two_w >> 4) + (0xE0u << 23), db = (two_w >> 17) | (126u << 23);
    float normalized, denormalized;
    memcpy(&normalized, &nb, 4);
    memcpy(&denormalized, &db, 4);
    normalized *= 0x1.0p-112f;
    denormalized -= 0.5f;
    uint32_t mag;
    if (two_w < (1u << 27)) memcpy(&mag, &denormalized, 4);
    else memcpy(&mag, &normalized, 4);
    const uint32_t r = sign | mag;
    float f;
    memcpy(&f, &r, 4);
    return f;
}
/* The same, out of line (for tests and callers outside inner loops). */
float nm_kernel_f16_to_f32(uint16_t h);

#endif
