/* quants_k.c - reference quantizers of the K-quants: Q4_K, Q5_K, Q6_K.
 *
 * The arithmetic is ggml's quantize_row_q4_K_ref / q5_K_ref / q6_K_ref
 * (llama.cpp's quantize without an importance matrix), step for step in
 * float, so the bytes match what llama.cpp writes for the same input:
 *
 *  - Q4_K / Q5_K: each 32-element sub-block gets a scale and a min fitted
 *    by make_qkx2 (a search over 21 / 16 candidate scales around
 *    nmax / (max - min), each followed by a weighted least-squares fit of
 *    scale and min, keeping the best weighted squared error; weights
 *    mean|x| + |x_i| favour the large elements); the 8 scales and 8 mins
 *    are then quantized to 6 bits against the largest of each, and the
 *    elements re-quantized with the 6-bit values actually stored.
 *  - Q6_K: each 16-element sub-block gets a signed scale from make_qx (19
 *    candidate scales around -32 / max, weights x^2, best by
 *    sum(w x l)^2 / sum(w l^2)); the 16 scales are quantized to 8 bits
 *    against the largest magnitude, the elements re-quantized with them.
 *
 * Packing is that of quants.c's dequantizers (see its comments). */
#include "quants.h"
#include "types.h"

#include <math.h>
#include <string.h>

/* ggml's float-to-nearest-int for |f| < 2^22: adding 1.5 * 2^23 leaves the
 * integer in the low mantissa bits, rounded to nearest even. */
static inline int nearest_int(float f) {
    float v = f + 12582912.0f;
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

static inline void put_half(uint8_t *p, float f) {
    const uint16_t h = nm_f32_to_f16(f);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

static inline float get_half(const uint8_t *p) { return nm_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* Scale and min (returned as -min >= 0 in *neg_min) of n elements on
 * 0..nmax, levels in L. */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L, float *neg_min, float rmin,
                           float rdelta, int nstep) {
    float min = x[0], max = x[0], sum_w = w[0], sum_x = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *neg_min = -min;
        return 0.0f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
        const float diff = scale * L[i] + min - x[i];
        best += w[i] * (diff * diff);
    }
    uint8_t aux[32];
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
            aux[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float err = 0;
            for (int i = 0; i < n; i++) {
                const float diff = this_scale * aux[i] + this_min - x[i];
                err += w[i] * (diff * diff);
            }
            if (err < best) {
                memcpy(L, aux, (size_t)n);
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *neg_min = -min;
    return scale;
}

/* Signed scale of n elements on -nmax..nmax-1 (levels + nmax in L),
 * weights x^2. */
static float fit_scale_signed(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < 1e-15f) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = sumlx / suml2;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            const float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) L[i] = (int8_t)(nmax + clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* The shared part of Q4_K and Q5_K: 8 sub-block scales and mins, their
 * 6-bit packing into scales[12], d and dmin, and the levels (0..nmax) of
 * the 256 elements against the stored values. */
static void q45k_block(const float *x, int nmax, float rmin, float rdelta, int nstep, uint8_t *dd, uint8_t *packed,
                       uint8_t *L) {
    float scales[8], mins[8], w[32], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) w[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = fit_scale_min(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], rmin, rdelta, nstep);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f, inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(packed, 0, 12);
    for (int j = 0; j < 8; j++) {
        /* as ggml: the int is truncated to a byte, then capped at 63 */
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]), lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (uint8_t)((ls & 0xf) | (lm & 0xf) << 4);
            packed[j - 4] |= (uint8_t)((ls >> 4) << 6);
            packed[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    put_half(dd, max_scale / 63.f);
    put_half(dd + 2, max_min / 63.f);
    for (int j = 0; j < 8; j++) {
        int sc, m;
        if (j < 4) {
            sc = packed[j] & 63;
            m = packed[j + 4] & 63;
        } else {
            sc = (packed[j + 4] & 0xf) | (packed[j - 4] >> 6) << 4;
            m = (packed[j + 4] >> 4) | (packed[j] >> 6) << 4;
        }
        const float d = get_half(dd) * sc;
        if (!d) continue;
        const float dm = get_half(dd + 2) * m;
        for (int i = 0; i < 32; i++) L[32 * j + i] = (uint8_t)clampi(nearest_int((x[32 * j + i] + dm) / d), 0, nmax);
    }
}

void nm_quant_q4_k(const float *src, void *dst, int64_t n) {
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / NM_QK_K; i++, src += NM_QK_K, b += sizeof(nm_block_q4_k)) {
        uint8_t L[NM_QK_K];
        q45k_block(src, 15, -1.f, 0.1f, 20, b, b + 4, L);
        uint8_t *q = b + 16;
        for (int j = 0; j < NM_QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; l++) q[l] = (uint8_t)(L[j + l] | L[j + l + 32] << 4);
    }
}

void nm_quant_q5_k(const float *src, void *dst, int64_t n) {
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / NM_QK_K; i++, src += NM_QK_K, b += sizeof(nm_block_q5_k)) {
        uint8_t L[NM_QK_K];
        q45k_block(src, 31, -0.5f, 0.1f, 15, b, b + 4, L);
        uint8_t *qh = b + 16, *ql = b + 48;
        memset(qh, 0, 32);
        uint8_t m1 = 1, m2 = 2;
        for (int j = 0; j < NM_QK_K; j += 64, ql += 32, m1 = (uint8_t)(m1 << 2), m2 = (uint8_t)(m2 << 2))
            for (int l = 0; l < 32; l++) {
                int l1 = L[j + l], l2 = L[j + l + 32];
                if (l1 > 15) {
                    l1 -= 16;
                    qh[l] |= m1;
                }
                if (l2 > 15) {
                    l2 -= 16;
                    qh[l] |= m2;
                }
                ql[l] = (uint8_t)(l1 | l2 << 4);
            }
    }
}

void nm_quant_q6_k(const float *src, void *dst, int64_t n) {
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / NM_QK_K; i++, src += NM_QK_K, b += sizeof(nm_block_q6_k)) {
        int8_t L[NM_QK_K];
        float scales[16], max_scale = 0, max_abs = 0;
        for (int j = 0; j < 16; j++) {
            scales[j] = fit_scale_signed(16, 32, src + 16 * j, L + 16 * j);
            if (fabsf(scales[j]) > max_abs) {
                max_abs = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        uint8_t *ql = b, *qh = b + 128;
        int8_t *sc = (int8_t *)(b + 192);
        if (!max_abs) {
            memset(b, 0, sizeof(nm_block_q6_k));
            continue;
        }
        const float iscale = -128.f / max_scale;
        put_half(b + 208, 1 / iscale);
        for (int j = 0; j < 16; j++) sc[j] = (int8_t)clampi(nearest_int(iscale * scales[j]), -128, 127);
        for (int j = 0; j < 16; j++) {
            const float d = get_half(b + 208) * sc[j];
            if (!d) continue;
            for (int l = 0; l < 16; l++) L[16 * j + l] = (int8_t)(clampi(nearest_int(src[16 * j + l] / d), -32, 31) + 32);
        }
        for (int j = 0; j < NM_QK_K; j += 128, ql += 64, qh += 32)
            for (int l = 0; l < 32; l++) {
                const int q1 = L[j + l] & 0xf, q2 = L[j + l + 32] & 0xf, q3 = L[j + l + 64] & 0xf, q4 = L[j + l + 96] & 0xf;
                ql[l] = (uint8_t)(q1 | q3 << 4);
                ql[l + 32] = (uint8_t)(q2 | q4 << 4);
                qh[l] = (uint8_t)((L[j + l] >> 4) | (L[j + l + 32] >> 4) << 2 | (L[j + l + 64] >> 4) << 4 |
                                  (L[j + l + 96] >> 4) << 6);
            }
    }
}
