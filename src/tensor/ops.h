/*
 * ops.h - the element-wise and row-wise float operations of a LLaMA forward
 * pass (RMSNorm, RoPE, softmax, SwiGLU), one row at a time, no allocation.
 * The forward pass of src/model uses them and training can reuse them.
 */
#ifndef NM_OPS_H
#define NM_OPS_H

#include "nomoat.h"

/* y = x / sqrt(mean(x^2) + eps) * w (w may be NULL: no gain).  y may be x. */
void nm_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps);
/* nm_rmsnorm's scale from its 8 partial sums of squares s[k] (elements
 * i % 8 == k of the first n8 = n / 8 * 8, in order): the kernel levels'
 * RMSNorm (nm_attn_kernel.rmsnorm) sums in vector lanes and ends here, so
 * every level gets its bits. */
float nm_rms_scale(const double s[8], const float *x, int64_t n8, int64_t n, float eps);

/* y[i] += x[i] */
void nm_add(float *y, const float *x, int64_t n);

float nm_dot_f32(const float *a, const float *b, int64_t n);

/* RoPE.  NORM rotates adjacent pairs (x[2i], x[2i+1]) - LLaMA as GGUF
 * stores it; NEOX rotates (x[i], x[i + n_rot/2]) - Qwen2, GPT-NeoX. */
typedef enum nm_rope_type { NM_ROPE_NORM = 0, NM_ROPE_NEOX = 2 } nm_rope_type;

/* cs[2i], cs[2i+1] = cos, sin of pos * freq_scale * base^(-2i/n_rot) /
 * freq_factors[i] for i < n_rot/2 (freq_factors may be NULL).  Computed in
 * double, so long contexts keep accurate angles. */
void nm_rope_angles(float *cs, int64_t pos, int n_rot, float freq_base, float freq_scale,
                    const float *freq_factors);

/* Rotates the first n_rot elements of each of n_heads heads of head_dim
 * elements in x, with the angles of one position (from nm_rope_angles). */
void nm_rope_apply(float *x, int n_heads, int head_dim, int n_rot, const float *cs, nm_rope_type type);

#endif
