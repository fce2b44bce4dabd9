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
 * logits come from there).  SIMD versions can later replace a row of the
 * table without touching any caller.
 */
#ifndef NM_KERNELS_H
#define NM_KERNELS_H

#include "nomoat.h"

#include <string.h>

/* Dot product of n elements: w is a row in the weight type, x the activation
 * row already in the kernel's act_type.  n is a multiple of both block sizes. */
typedef float (*nm_vec_dot_fn)(int64_t n, const void *w, const void *x);

typedef struct nm_kernel {
    nm_type act_type;
    nm_vec_dot_fn vec_dot;
} nm_kernel;

/* NULL if nomoat has no kernel for this weight type. */
const nm_kernel *nm_kernel_get(uint32_t weight_type);

/* Q8_1: ggml's block_q8_1 (activation side of Q4_1/Q5_1): d, then
 * s = d * sum(qs), both half precision. */
typedef struct {
    uint16_t d, s;
    int8_t qs[32];
} nm_block_q8_1;
_Static_assert(sizeof(nm_block_q8_1) == 36, "q8_1 layout");

/* Bytes of an activation row of n elements in act_type (0 if not a valid
 * activation type or n does not fit its blocks). */
size_t nm_act_row_bytes(nm_type act_type, int64_t n);
/* Converts n floats into act_type (F32 is a copy).  n fits the blocks. */
void nm_act_from_float(nm_type act_type, const float *x, void *dst, int64_t n);

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
