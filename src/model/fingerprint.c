/* fingerprint.c - base fingerprints and signatures (see fingerprint.h). */
#include "model/fingerprint.h"
#include "base/base.h"
#include "tensor/types.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- streaming hash ----
 * Bytes are packed into 64-bit words, each mixed in with a multiply and a
 * rotation (fast enough to hash an adapter of hundreds of MB in well under
 * a second); the tail and the length are folded in at the end. */

static uint64_t fmix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void nm_hash_init(nm_hash *s) { s->h = 0x6a09e667f3bcc908ULL; }

static void mix_word(nm_hash *s, uint64_t w) {
    s->h ^= fmix(w + 0x9e3779b97f4a7c15ULL);
    s->h = (s->h << 27 | s->h >> 37) * 0x9fb21c651e98df25ULL;
}

void nm_hash_bytes(nm_hash *s, const void *p, size_t n) {
    const uint8_t *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) mix_word(s, nm_rd_u64(b + i));
    uint64_t last = 0;
    for (size_t k = 0; i + k < n; k++) last |= (uint64_t)b[i + k] << (8 * k);
    /* the length separates "ab" + "c" from "a" + "bc" */
    mix_word(s, last ^ ((uint64_t)(n & 7) << 56));
    mix_word(s, (uint64_t)n);
}

void nm_hash_u64(nm_hash *s, uint64_t v) { mix_word(s, v); }

uint64_t nm_hash_final(const nm_hash *s) { return fmix(s->h); }

void nm_hash_hex(uint64_t h, char hex[NM_FP_HEX]) { snprintf(hex, NM_FP_HEX, "%016llx", (unsigned long long)h); }

/* ---- strict base fingerprint ----
 * FNV-1a over names, types, shapes and 64 samples of 64 bytes per tensor.
 * Kept exactly as the first trainer wrote it: trainer states and adapters
 * written since then carry values of this function. */
void nm_base_fingerprint(const nm_gguf *g, char hex[NM_FP_HEX]) {
    uint64_t h = 1469598103934665603ULL;
    for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++) {
        const nm_gguf_tensor *t = nm_gguf_tensor_at(g, i);
        const void *parts[3] = {t->name, &t->type, t->ne};
        const size_t lens[3] = {strlen(t->name), sizeof t->type, sizeof t->ne};
        for (int k = 0; k < 3; k++) {
            const uint8_t *q = parts[k];
            for (size_t j = 0; j < lens[k]; j++) h = (h ^ q[j]) * 1099511628211ULL;
        }
        for (uint64_t k = 0; k < 64; k++) {
            uint64_t off = t->nbytes > 64 ? (t->nbytes - 64) / 63 * k : 0;
            const uint8_t *q = (const uint8_t *)t->data + off;
            size_t n = t->nbytes < 64 ? (size_t)t->nbytes : 64;
            for (size_t j = 0; j < n; j++) h = (h ^ q[j]) * 1099511628211ULL;
            if (t->nbytes <= 64) break;
        }
    }
    nm_hash_hex(h, hex);
}

/* ---- signature ---- */

enum { SIG_SAMPLES = 256, SIG_MIN_VALID = 32 };
#define SIG_PREFIX "s1:"

static bool is_matrix(const nm_gguf_tensor *t) { return t->n_dims == 2 && t->ne[0] > 0 && t->ne[1] > 0; }

/* Names and shapes of every tensor, not types nor order (converters
 * reorder tensors): the part of the identity storage does not change.  The
 * per-tensor hashes are added, which does not depend on the order. */
static uint64_t shape_hash(const nm_gguf *g) {
    uint64_t sum = 0;
    for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++) {
        const nm_gguf_tensor *t = nm_gguf_tensor_at(g, i);
        nm_hash s;
        nm_hash_init(&s);
        nm_hash_bytes(&s, t->name, strlen(t->name));
        for (int d = 0; d < NM_GGUF_MAX_DIMS; d++) nm_hash_u64(&s, (uint64_t)t->ne[d]);
        sum += nm_hash_final(&s);
    }
    return sum;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(const nm_gguf_tensor *const *)a)->name, (*(const nm_gguf_tensor *const *)b)->name);
}

/* The 256 samples: sample k reads matrix k * n_mat / 256 in name order at
 * an element chosen from k and the matrix's name, decoding only the block
 * that holds it.  NAN where the type cannot be decoded. */
static void take_samples(const nm_gguf *g, float *out) {
    for (int k = 0; k < SIG_SAMPLES; k++) out[k] = NAN;
    int64_t n_mat = 0;
    for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++) n_mat += is_matrix(nm_gguf_tensor_at(g, i));
    if (n_mat == 0) return;
    const nm_gguf_tensor **mats = nm_calloc((size_t)n_mat, sizeof *mats);
    if (!mats) return;
    n_mat = 0;
    for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++)
        if (is_matrix(nm_gguf_tensor_at(g, i))) mats[n_mat++] = nm_gguf_tensor_at(g, i);
    qsort(mats, (size_t)n_mat, sizeof *mats, cmp_name);
    float blk[512];
    for (int k = 0; k < SIG_SAMPLES; k++) {
        const nm_gguf_tensor *t = mats[(int64_t)k * n_mat / SIG_SAMPLES];
        const nm_type_traits *tr = nm_type_traits_get(t->type);
        if (!tr || !tr->to_float || tr->blck_size > (int64_t)(sizeof blk / sizeof blk[0]) ||
            t->ne[0] % tr->blck_size)
            continue;
        nm_hash h;
        nm_hash_init(&h);
        nm_hash_bytes(&h, t->name, strlen(t->name));
        nm_hash_u64(&h, (uint64_t)k);
        uint64_t e = nm_hash_final(&h) % ((uint64_t)t->ne[0] * (uint64_t)t->ne[1]);
        uint64_t row = e / (uint64_t)t->ne[0], col = e % (uint64_t)t->ne[0];
        size_t rb = nm_type_row_bytes((nm_type)t->type, t->ne[0]);
        uint64_t off = row * rb + col / (uint64_t)tr->blck_size * tr->type_size;
        if (rb == 0 || off + tr->type_size > t->nbytes) continue;
        tr->to_float((const uint8_t *)t->data + off, blk, tr->blck_size);
        float v = blk[col % (uint64_t)tr->blck_size];
        if (isfinite(v)) out[k] = v;
    }
    free(mats);
}

char *nm_base_signature(const nm_gguf *g) {
    float s[SIG_SAMPLES];
    take_samples(g, s);
    int valid = 0;
    for (int k = 0; k < SIG_SAMPLES; k++) valid += !isnan(s[k]);
    if (valid < SIG_MIN_VALID) return NULL;
    size_t cap = sizeof SIG_PREFIX + 17 + 4 * SIG_SAMPLES + 1;
    char *out = malloc(cap);
    if (!out) return NULL;
    int n = snprintf(out, cap, SIG_PREFIX "%016llx:", (unsigned long long)shape_hash(g));
    for (int k = 0; k < SIG_SAMPLES; k++) n += snprintf(out + n, cap - (size_t)n, "%04x", nm_f32_to_f16(s[k]));
    return out;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The samples of a signature string (NAN where they are not finite);
 * false when it is malformed.  shape: its 16 hex digits of shape hash. */
static bool parse_sig(const char *sig, const char **shape, float *v) {
    const size_t plen = strlen(SIG_PREFIX);
    if (!sig || strlen(sig) != plen + 17 + 4 * SIG_SAMPLES || strncmp(sig, SIG_PREFIX, plen) || sig[plen + 16] != ':')
        return false;
    *shape = sig + plen;
    const char *p = sig + plen + 17;
    for (int k = 0; k < SIG_SAMPLES; k++) {
        int x = 0;
        for (int d = 0; d < 4; d++) {
            int h = hexval(p[4 * k + d]);
            if (h < 0) return false;
            x = x * 16 + h;
        }
        v[k] = nm_f16_to_f32((uint16_t)x);
    }
    return true;
}

/* Pearson correlation of the pairs where both are finite; true when r >= 0.9. */
static bool correlate(const float *x, const float *y, double *r) {
    double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
    int n = 0;
    for (int k = 0; k < SIG_SAMPLES; k++) {
        const double a = x[k], b = y[k];
        if (!isfinite(a) || !isfinite(b)) continue;
        sx += a, sy += b, sxx += a * a, syy += b * b, sxy += a * b;
        n++;
    }
    if (n < SIG_MIN_VALID) return false;
    double cov = sxy - sx * sy / n, vx = sxx - sx * sx / n, vy = syy - sy * sy / n;
    if (!(vx > 0) || !(vy > 0)) return false;
    *r = cov / sqrt(vx * vy);
    return *r >= 0.9;
}

bool nm_base_signature_match(const char *sig, const nm_gguf *g, double *r) {
    *r = NAN;
    const char *shape;
    float want[SIG_SAMPLES], have[SIG_SAMPLES];
    if (!parse_sig(sig, &shape, want)) return false;
    char hash[17];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)shape_hash(g));
    if (memcmp(shape, hash, 16) != 0) return false;
    take_samples(g, have);
    return correlate(want, have, r);
}

bool nm_base_signature_match_sig(const char *sig, const char *have, double *r) {
    *r = NAN;
    const char *s0, *s1;
    float a[SIG_SAMPLES], b[SIG_SAMPLES];
    if (!parse_sig(sig, &s0, a) || !parse_sig(have, &s1, b) || memcmp(s0, s1, 16) != 0) return false;
    return correlate(a, b, r);
}

void nm_base_ids_init(nm_base_ids *ids, const nm_gguf *g) {
    nm_base_fingerprint(g, ids->fp);
    ids->sig = nm_base_signature(g);
}

void nm_base_ids_deinit(nm_base_ids *ids) {
    free(ids->sig);
    ids->sig = NULL;
}
