/*
 * quants.h - block layouts of the quantized types (identical to ggml's
 * block_q4_0, block_q4_K, ...) and their scalar reference conversions.
 * These scalar functions are the reference every SIMD kernel is tested
 * against.
 */
#ifndef NM_QUANTS_H
#define NM_QUANTS_H

#include <stdint.h>

#define NM_QK4_0 32
#define NM_QK4_1 32
#define NM_QK5_0 32
#define NM_QK5_1 32
#define NM_QK8_0 32
#define NM_QK_K 256
#define NM_K_SCALE_SIZE 12

typedef struct { uint16_t d; uint8_t qs[NM_QK4_0 / 2]; } nm_block_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[NM_QK4_1 / 2]; } nm_block_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[NM_QK5_0 / 2]; } nm_block_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[NM_QK5_1 / 2]; } nm_block_q5_1;
typedef struct { uint16_t d; int8_t qs[NM_QK8_0]; } nm_block_q8_0;
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[NM_K_SCALE_SIZE];
    uint8_t qs[NM_QK_K / 2];
} nm_block_q4_k;
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[NM_K_SCALE_SIZE];
    uint8_t qh[NM_QK_K / 8];
    uint8_t qs[NM_QK_K / 2];
} nm_block_q5_k;
typedef struct {
    uint8_t ql[NM_QK_K / 2];
    uint8_t qh[NM_QK_K / 4];
    int8_t scales[NM_QK_K / 16];
    uint16_t d;
} nm_block_q6_k;
typedef struct {
    float d;
    int8_t qs[NM_QK_K];
    int16_t bsums[NM_QK_K / 16];
} nm_block_q8_k;

_Static_assert(sizeof(nm_block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(nm_block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(nm_block_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(nm_block_q5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(nm_block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(nm_block_q4_k) == 144, "q4_k layout");
_Static_assert(sizeof(nm_block_q5_k) == 176, "q5_k layout");
_Static_assert(sizeof(nm_block_q6_k) == 210, "q6_k layout");
_Static_assert(sizeof(nm_block_q8_k) == 292, "q8_k layout");

/* n is a multiple of the block size (checked by the caller). */
void nm_dequant_q4_0(const void *src, float *dst, int64_t n);
void nm_dequant_q4_1(const void *src, float *dst, int64_t n);
void nm_dequant_q5_0(const void *src, float *dst, int64_t n);
void nm_dequant_q5_1(const void *src, float *dst, int64_t n);
void nm_dequant_q8_0(const void *src, float *dst, int64_t n);
void nm_dequant_q4_k(const void *src, float *dst, int64_t n);
void nm_dequant_q5_k(const void *src, float *dst, int64_t n);
void nm_dequant_q6_k(const void *src, float *dst, int64_t n);
void nm_dequant_q8_k(const void *src, float *dst, int64_t n);

/* Quantizers: ggml's quantize_row_*_ref, byte for byte for finite input. */
void nm_quant_q4_0(const float *src, void *dst, int64_t n);
void nm_quant_q4_1(const float *src, void *dst, int64_t n);
void nm_quant_q5_0(const float *src, void *dst, int64_t n);
void nm_quant_q5_1(const float *src, void *dst, int64_t n);
void nm_quant_q8_0(const float *src, void *dst, int64_t n);
/* K-quants (quants_k.c): ggml's quantize_row_q4_K_ref / q5_K_ref /
 * q6_K_ref arithmetic (no importance matrix). */
void nm_quant_q4_k(const float *src, void *dst, int64_t n);
void nm_quant_q5_k(const float *src, void *dst, int64_t n);
void nm_quant_q6_k(const float *src, void *dst, int64_t n);

#endif
