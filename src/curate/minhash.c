/* minhash.c - near-duplicate removal with MinHash and LSH banding.
 *
 * For each document: the shingles of its normalised form (runs of `shingle`
 * words, or characters), each hashed to 32 bits; num_perm hash functions;
 * the signature is the minimum of each function over the shingles.  Two
 * signatures agree at a position with probability equal to the Jaccard
 * similarity of the shingle sets, so the fraction of agreeing positions
 * estimates it.
 *
 * LSH: the first bands x rows positions are cut into bands of rows values;
 * documents whose band values are all equal in some band become candidate
 * pairs (probability 1 - (1 - s^rows)^bands for similarity s).  Candidates
 * are verified against the full signature (estimate >= threshold) before
 * they count, so the banding only has to be generous, not exact.
 *
 * Memory per document: the signature kept as 16-bit values (their low
 * halves: two different minima agree by chance with probability 2^-16,
 * which the estimate corrects for) and one 32-bit key per band.  Candidate
 * pairs come from sorting (key, document) per band: a band's bucket is
 * compared as a star around its first member (plus each member with the
 * previous one), linear in the bucket's size even when thousands of
 * documents share a bucket.  Verified pairs join clusters (union-find,
 * the smallest index as root); every document but the root of its cluster
 * is removed. */
#include "curate/curate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

nm_status nm_minhash_init(nm_minhash *mh, int32_t num_perm, int32_t shingle, bool chars, uint64_t seed, nm_err *err) {
    memset(mh, 0, sizeof *mh);
    if (num_perm < 1 || num_perm > 4096)
        return nm_err_set(err, NM_ERR_ARG, "MinHash needs 1 to 4096 permutations, got %d", num_perm);
    if (shingle < 1 || shingle > 64) return nm_err_set(err, NM_ERR_ARG, "shingle size %d is not in 1..64", shingle);
    mh->num_perm = num_perm;
    mh->shingle = shingle;
    mh->chars = chars;
    mh->alo = malloc((size_t)num_perm * sizeof *mh->alo);
    mh->ahi = malloc((size_t)num_perm * sizeof *mh->ahi);
    mh->b = malloc((size_t)num_perm * sizeof *mh->b);
    if (!mh->alo || !mh->ahi || !mh->b) {
        nm_minhash_deinit(mh);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    nm_rng rng;
    nm_rng_seed(&rng, seed);
    for (int32_t i = 0; i < num_perm; i++) {
        uint64_t a = nm_rng_u64(&rng) | 1;
        mh->alo[i] = (uint32_t)a;
        mh->ahi[i] = (uint32_t)(a >> 32);
        mh->b[i] = nm_rng_u64(&rng);
    }
    return NM_OK;
}

void nm_minhash_deinit(nm_minhash *mh) {
    free(mh->alo);
    free(mh->ahi);
    free(mh->b);
    memset(mh, 0, sizeof *mh);
}

void nm_mh_scratch_deinit(nm_mh_scratch *s) {
    nm_buf_deinit(&s->norm);
    nm_u64vec_free(&s->words);
    nm_u64vec_free(&s->offs);
    nm_u64vec_free(&s->shingles);
}

#define POLY_BASE 0x100000001b3ULL

/* The shingle hashes (64-bit) of the normalised text in s->norm. */
static bool shingles_of(const nm_minhash *mh, nm_mh_scratch *s, nm_u64vec *out) {
    const char *t = (const char *)s->norm.data;
    size_t n = s->norm.len;
    const int64_t k = mh->shingle;
    out->n = 0;
    if (n == 0) return true;
    if (!mh->chars) {
        if (!nm_cu_word_hashes(t, n, &s->words)) return false;
        const uint64_t *w = s->words.v;
        int64_t m = (int64_t)s->words.n;
        if (m < k) return nm_u64vec_push(out, nm_cu_hash(t, n, 0x5817));
        /* polynomial rolling hash of k word hashes */
        uint64_t pw = 1, h = 0;
        for (int64_t j = 0; j < k - 1; j++) pw *= POLY_BASE;
        for (int64_t j = 0; j < k; j++) h = h * POLY_BASE + w[j];
        if (!nm_u64vec_push(out, h)) return false;
        for (int64_t j = k; j < m; j++) {
            h = (h - w[j - k] * pw) * POLY_BASE + w[j];
            if (!nm_u64vec_push(out, h)) return false;
        }
        return true;
    }
    /* character shingles: offsets of the code points */
    s->offs.n = 0;
    for (size_t i = 0; i < n;) {
        if (!nm_u64vec_push(&s->offs, i)) return false;
        (void)nm_cu_next(t, n, &i);
    }
    if (!nm_u64vec_push(&s->offs, n)) return false;
    int64_t m = (int64_t)s->offs.n - 1;
    if (m < k) return nm_u64vec_push(out, nm_cu_hash(t, n, 0x5817));
    for (int64_t j = 0; j + k <= m; j++) {
        size_t a = s->offs.v[j], b = s->offs.v[j + k];
        if (!nm_u64vec_push(out, nm_cu_hash(t + a, b - a, 0x5817))) return false;
    }
    return true;
}

bool nm_minhash_shingles(const nm_minhash *mh, const char *text, size_t len, nm_mh_scratch *s, nm_u64vec *out) {
    s->norm.len = 0;
    nm_cu_normalize(text, len, &s->norm);
    if (s->norm.oom) return false;
    return shingles_of(mh, s, out);
}

bool nm_minhash_sig(const nm_minhash *mh, const char *text, size_t len, nm_mh_scratch *s, uint32_t *sig) {
    bool ok = nm_minhash_shingles(mh, text, len, s, &s->shingles);
    const int32_t P = mh->num_perm;
    for (int32_t i = 0; i < P; i++) sig[i] = UINT32_MAX;
    if (!ok) return false;
    const uint32_t *alo = mh->alo, *ahi = mh->ahi;
    const uint64_t *b = mh->b;
    const nm_u64vec *sh = &s->shingles;
    for (size_t j = 0; j < sh->n; j++) {
        const uint32_t x = (uint32_t)(nm_cu_mix(sh->v[j]) >> 32);
        for (int32_t i = 0; i < P; i++) {
            /* ((a x + b) mod 2^64) >> 32 with a = ahi:alo */
            uint32_t h = (uint32_t)(((uint64_t)alo[i] * x + b[i]) >> 32) + ahi[i] * x;
            sig[i] = h < sig[i] ? h : sig[i];
        }
    }
    return true;
}

/* ======================================================================== */
/* LSH parameters                                                           */
/* ======================================================================== */

double nm_lsh_prob(double s, int32_t bands, int32_t rows) {
    if (bands < 1 || rows < 1) return 0.0;
    return 1.0 - pow(1.0 - pow(s, rows), bands);
}

/* Midpoint rule over [a, b] with enough points for these smooth curves. */
static double area(double a, double b, int32_t bands, int32_t rows, bool fn) {
    const int steps = 200;
    double h = (b - a) / steps, sum = 0.0;
    for (int i = 0; i < steps; i++) {
        double p = nm_lsh_prob(a + (i + 0.5) * h, bands, rows);
        sum += fn ? 1.0 - p : p;
    }
    return sum * h;
}

void nm_lsh_choose(double threshold, int32_t num_perm, double fn_weight, int32_t *bands, int32_t *rows) {
    double best = INFINITY;
    *bands = 1;
    *rows = num_perm > 0 ? num_perm : 1;
    for (int32_t b = 1; b <= num_perm; b++)
        for (int32_t r = 1; r <= num_perm / b; r++) {
            double e = (1.0 - fn_weight) * area(0.0, threshold, b, r, false) +
                       fn_weight * area(threshold, 1.0, b, r, true);
            if (e < best - 1e-12) {
                best = e;
                *bands = b;
                *rows = r;
            }
        }
}

/* ======================================================================== */
/* near-duplicate removal                                                   */
/* ======================================================================== */

typedef struct near_job {
    const nm_docset *docs;
    const size_t *idx;
    size_t n;
    const nm_minhash *mh;
    int32_t bands, rows;
    double threshold;
    uint16_t *sig16;  /* [n * P] */
    uint32_t *keys;   /* [n * bands] */
    uint64_t seed;
    bool oom;
    /* band phase */
    nm_u64vec *pairs; /* per thread: verified (i << 32 | j), i < j */
    uint64_t *n_cmp;  /* per thread */
} near_job;

static void sig_task(void *arg, int ith, int nth) {
    near_job *j = arg;
    const int32_t P = j->mh->num_perm;
    int64_t lo, hi;
    nm_split_range((int64_t)j->n, ith, nth, 1, &lo, &hi);
    nm_mh_scratch s = {0};
    uint32_t *sig = malloc((size_t)P * sizeof *sig);
    if (!sig) {
        j->oom = true;
        return;
    }
    for (int64_t k = lo; k < hi; k++) {
        const nm_doc *d = nm_docset_doc(j->docs, j->idx[k]);
        if (!nm_minhash_sig(j->mh, d->text, d->len, &s, sig)) {
            j->oom = true;
            break;
        }
        for (int32_t i = 0; i < P; i++) j->sig16[(size_t)k * (size_t)P + (size_t)i] = (uint16_t)sig[i];
        for (int32_t t = 0; t < j->bands; t++)
            j->keys[(size_t)k * (size_t)j->bands + (size_t)t] =
                (uint32_t)nm_cu_hash(sig + (size_t)t * (size_t)j->rows, (size_t)j->rows * sizeof *sig,
                                     j->seed + (uint64_t)t);
    }
    free(sig);
    nm_mh_scratch_deinit(&s);
}

/* Estimated Jaccard similarity of documents k and l (positions in idx). */
static double est_jaccard(const near_job *j, size_t k, size_t l) {
    const int32_t P = j->mh->num_perm;
    const uint16_t *a = j->sig16 + k * (size_t)P, *b = j->sig16 + l * (size_t)P;
    int32_t eq = 0;
    for (int32_t i = 0; i < P; i++) eq += a[i] == b[i];
    const double chance = 1.0 / 65536.0;
    double e = ((double)eq / P - chance) / (1.0 - chance);
    return e < 0 ? 0 : e > 1 ? 1 : e;
}

/* LSD radix sort of (key << 32 | position) entries by their key (stable, so
 * positions stay ascending within a key). */
static void sort_by_key(uint64_t *a, uint64_t *tmp, size_t n) {
    for (int shift = 32; shift < 64; shift += 8) {
        size_t count[257] = {0};
        for (size_t i = 0; i < n; i++) count[((a[i] >> shift) & 255) + 1]++;
        for (int b = 0; b < 256; b++) count[b + 1] += count[b];
        for (size_t i = 0; i < n; i++) tmp[count[(a[i] >> shift) & 255]++] = a[i];
        memcpy(a, tmp, n * sizeof *a);
    }
}

static void band_task(void *arg, int ith, int nth) {
    near_job *j = arg;
    size_t n = j->n;
    uint64_t *e = malloc(n * sizeof *e), *tmp = malloc(n * sizeof *tmp);
    if (!e || !tmp) {
        free(e);
        free(tmp);
        j->oom = true;
        return;
    }
    nm_u64vec *pairs = &j->pairs[ith];
    uint64_t cmp = 0;
    for (int32_t t = ith; t < j->bands && !j->oom; t += nth) {
        for (size_t k = 0; k < n; k++) e[k] = (uint64_t)j->keys[k * (size_t)j->bands + (size_t)t] << 32 | k;
        sort_by_key(e, tmp, n);
        for (size_t g = 0; g < n;) {
            size_t h = g + 1;
            while (h < n && e[h] >> 32 == e[g] >> 32) h++;
            const size_t first = (uint32_t)e[g];
            for (size_t m = g + 1; m < h; m++) {
                size_t cur = (uint32_t)e[m], prev = (uint32_t)e[m - 1];
                cmp++;
                size_t other = first;
                bool sim = est_jaccard(j, first, cur) >= j->threshold;
                if (!sim && m > g + 1) {
                    cmp++;
                    other = prev;
                    sim = est_jaccard(j, prev, cur) >= j->threshold;
                }
                if (sim && !nm_u64vec_push(pairs, (uint64_t)other << 32 | cur)) {
                    j->oom = true;
                    break;
                }
            }
            g = h;
        }
    }
    j->n_cmp[ith] = cmp;
    free(e);
    free(tmp);
}

static size_t uf_find(size_t *parent, size_t x) {
    while (parent[x] != x) {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    return x;
}

nm_status nm_near_dedup(const nm_docset *docs, const size_t *idx, size_t n, const nm_clean_params *p, nm_pool *pool,
                        int64_t *out_root, float *out_jac, nm_clean_result *r, nm_err *err) {
    for (size_t k = 0; k < n; k++) {
        out_root[k] = -1;
        out_jac[k] = 0;
    }
    if (!(p->threshold > 0 && p->threshold <= 1))
        return nm_err_set(err, NM_ERR_ARG, "the Jaccard threshold must be in (0, 1], got %g", p->threshold);
    if (n > UINT32_MAX) return nm_err_set(err, NM_ERR_RANGE, "near de-duplication handles at most 2^32 documents");
    nm_minhash mh;
    nm_status st = nm_minhash_init(&mh, p->num_perm, p->shingle, p->char_shingles, p->seed, err);
    if (st) return st;
    int32_t bands = p->bands, rows = p->rows;
    if (bands <= 0 || rows <= 0) nm_lsh_choose(p->threshold, p->num_perm, p->fn_weight, &bands, &rows);
    if ((int64_t)bands * rows > p->num_perm) {
        nm_minhash_deinit(&mh);
        return nm_err_set(err, NM_ERR_ARG, "%d bands x %d rows need more than the %d permutations", bands, rows,
                          p->num_perm);
    }
    r->bands = bands;
    r->rows = rows;
    const int nth = pool ? nm_pool_size(pool) : 1;
    near_job j = {docs, idx, n, &mh, bands, rows, p->threshold, NULL, NULL, p->seed * 0x9e3779b97f4a7c15ULL + 77,
                  false, NULL, NULL};
    j.sig16 = nm_calloc(n ? n : 1, (size_t)p->num_perm * sizeof *j.sig16);
    j.keys = nm_calloc(n ? n : 1, (size_t)bands * sizeof *j.keys);
    j.pairs = nm_calloc((size_t)nth, sizeof *j.pairs);
    j.n_cmp = nm_calloc((size_t)nth, sizeof *j.n_cmp);
    size_t *parent = malloc((n ? n : 1) * sizeof *parent);
    if (!j.sig16 || !j.keys || !j.pairs || !j.n_cmp || !parent) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory for %zu MinHash signatures", n);
        goto out;
    }
    r->near_bytes = (uint64_t)n * ((uint64_t)p->num_perm * 2 + (uint64_t)bands * 4 + sizeof *parent) +
                    (uint64_t)(nth < bands ? nth : bands) * n * 16;
    if (pool)
        nm_pool_run(pool, sig_task, &j);
    else
        sig_task(&j, 0, 1);
    if (!j.oom) {
        if (pool)
            nm_pool_run(pool, band_task, &j);
        else
            band_task(&j, 0, 1);
    }
    if (j.oom) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory in near de-duplication");
        goto out;
    }
    for (size_t k = 0; k < n; k++) parent[k] = k;
    r->lsh_pairs = 0;
    r->lsh_verified = 0;
    for (int t = 0; t < nth; t++) {
        r->lsh_pairs += j.n_cmp[t];
        r->lsh_verified += j.pairs[t].n;
        for (size_t q = 0; q < j.pairs[t].n; q++) {
            size_t a = uf_find(parent, (size_t)(j.pairs[t].v[q] >> 32));
            size_t b = uf_find(parent, (size_t)(uint32_t)j.pairs[t].v[q]);
            if (a == b) continue;
            if (a < b)
                parent[b] = a;
            else
                parent[a] = b;
        }
    }
    for (size_t k = 0; k < n; k++) {
        size_t root = uf_find(parent, k);
        if (root != k) {
            out_root[k] = (int64_t)idx[root];
            out_jac[k] = (float)est_jaccard(&j, root, k);
        }
    }
out:
    if (j.pairs)
        for (int t = 0; t < nth; t++) nm_u64vec_free(&j.pairs[t]);
    free(j.pairs);
    free(j.n_cmp);
    free(j.sig16);
    free(j.keys);
    free(parent);
    nm_minhash_deinit(&mh);
    return st;
}
