/* ops.c - float row operations of the forward pass (see ops.h).
 *
 * Sums that set a scale (RMSNorm's mean square, softmax's denominator) are
 * accumulated in double as ggml does: they run over whole rows, where float
 * accumulation would drift by more than the rest of the arithmetic. */
#include "ops.h"

#include <math.h>

/* The sum of squares is in double (as ggml's), in 8 interleaved partial
 * sums added in a fixed order: one running sum was a chain of dependent
 * double additions, 4 cycles an element, 2% of prompt processing. */
float nm_rms_scale(const double s[8], const float *x, int64_t n8, int64_t n, float eps) {
    double ss = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    for (int64_t i = n8; i < n; i++) ss += (double)x[i] * x[i];
    return 1.0f / sqrtf((float)(ss / (double)n) + eps);
}

void nm_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps) {
    double s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += (double)x[i + k] * x[i + k];
    const float scale = nm_rms_scale(s, x, i, n, eps);
    if (w)
        for (i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
    else
        for (i = 0; i < n; i++) y[i] = x[i] * scale;
}

void nm_add(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

float nm_dot_f32(const float *a, const float *b, int64_t n) {
    float acc[4] = {0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) acc[k] += a[i + k] * b[i + k];
    float tail = 0.0f;
    for (; i < n; i++) tail += a[i] * b[i];
    return (acc[0] + acc[2]) + (acc[1] + acc[3]) + tail;
}

void nm_rope_angles(float *cs, int64_t pos, int n_rot, float freq_base, float freq_scale,
                    const float *freq_factors) {
    for (int i = 0; i < n_rot / 2; i++) {
        double theta = (double)pos * freq_scale * pow((double)freq_base, -2.0 * i / n_rot);
        if (freq_factors) theta /= freq_factors[i];
        cs[2 * i] = (float)cos(theta);
        cs[2 * i + 1] = (float)sin(theta);
    }
}

void nm_rope_apply(float *x, int n_heads, int head_dim, int n_rot, const float *cs, nm_rope_type type) {
    const int half = n_rot / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (int64_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            const int a = type == NM_ROPE_NEOX ? i : 2 * i;
            const int b = type == NM_ROPE_NEOX ? i + half : 2 * i + 1;
            const float c = cs[2 * i], s = cs[2 * i + 1];
            const float x0 = v[a], x1 = v[b];
            v[a] = x0 * c - x1 * s;
            v[b] = x0 * s + x1 * c;
        }
    }
}
