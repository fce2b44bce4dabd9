/* clean.c - the cleaning pipeline: filters, decontamination, exact and near
 * de-duplication (see nomoat.h "cleaning" and docs/CURATE.md).
 *
 * Every step but the bookkeeping runs on the thread pool, one contiguous
 * range of documents per thread; each thread writes only its documents'
 * verdicts, so no step needs a lock.  The decisions that depend on order
 * (which duplicate is kept) are taken afterwards in document order, so the
 * result does not depend on the thread count. */
#include "curate/curate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const STEP_NAMES[NM_CLEAN_N_STEPS] = {"kept",     "length", "chars", "lang",
                                                         "forbid",   "decontam", "exact", "near"};

const char *nm_clean_step_name(nm_clean_step s) { return (unsigned)s < NM_CLEAN_N_STEPS ? STEP_NAMES[s] : "?"; }

void nm_clean_params_default(nm_clean_params *p) {
    memset(p, 0, sizeof *p);
    p->max_nonletter = 1.0;
    p->max_digit = 1.0;
    p->en_min_ascii = 0.9;
    p->en_min_stopwords = 0.15;
    p->en_min_words = 5;
    p->ngram = 13;
    p->ngram_min = 8;
    p->exact = true;
    p->near = true;
    p->threshold = 0.8;
    p->num_perm = 128;
    p->shingle = 5;
    p->fn_weight = 0.9;
    p->seed = 1;
}

void nm_clean_result_deinit(nm_clean_result *r) {
    free(r->step);
    free(r->detail);
    free(r->ref);
    free(r->value);
    memset(r, 0, sizeof *r);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct clean_job {
    const nm_docset *docs;
    const nm_clean_params *p;
    nm_clean_result *r;
    size_t n;
    bool oom;
    /* filters */
    char **forbid_lc;  /* lower-cased forbidden strings */
    size_t *forbid_len;
    /* decontamination */
    const nm_hmap *eval_grams;
    uint64_t eval_lens; /* bit L: eval keys of L words exist */
    /* exact */
    uint64_t *hash;
} clean_job;

static bool filters_on(const nm_clean_params *p) {
    return p->min_chars > 0 || p->max_chars > 0 || p->min_words > 0 || p->max_words > 0 || p->max_nonletter < 1 ||
           p->max_digit < 1 || p->lang || p->n_forbid > 0;
}

static void reject(nm_clean_result *r, size_t i, nm_clean_step s, int detail, int64_t ref, double value) {
    r->step[i] = (uint8_t)s;
    r->detail[i] = (uint8_t)detail;
    r->ref[i] = ref;
    r->value[i] = (float)value;
}

/* ---- filters ---- */

static void filter_task(void *arg, int ith, int nth) {
    clean_job *j = arg;
    const nm_clean_params *p = j->p;
    nm_clean_result *r = j->r;
    int64_t lo, hi;
    nm_split_range((int64_t)j->n, ith, nth, 1, &lo, &hi);
    nm_buf lc, norm;
    nm_buf_init(&lc);
    nm_buf_init(&norm);
    for (int64_t i = lo; i < hi; i++) {
        const nm_doc *d = nm_docset_doc(j->docs, (size_t)i);
        int64_t chars = 0, words = 0, nonspace = 0, letters = 0, digits = 0, ascii_letters = 0;
        bool in_word = false;
        for (size_t k = 0; k < d->len;) {
            uint32_t c = nm_cu_next(d->text, d->len, &k);
            chars++;
            if (nm_cu_is_space(c)) {
                in_word = false;
                continue;
            }
            if (!in_word) words++;
            in_word = true;
            nonspace++;
            if (nm_cu_is_letter(c)) {
                letters++;
                ascii_letters += c < 0x80;
            } else if (nm_cu_is_digit(c)) {
                digits++;
            }
        }
        if (p->min_chars > 0 && chars < p->min_chars) {
            reject(r, (size_t)i, NM_CLEAN_LENGTH, 1, -1, (double)chars);
            continue;
        }
        if (p->max_chars > 0 && chars > p->max_chars) {
            reject(r, (size_t)i, NM_CLEAN_LENGTH, 2, -1, (double)chars);
            continue;
        }
        if (p->min_words > 0 && words < p->min_words) {
            reject(r, (size_t)i, NM_CLEAN_LENGTH, 3, -1, (double)words);
            continue;
        }
        if (p->max_words > 0 && words > p->max_words) {
            reject(r, (size_t)i, NM_CLEAN_LENGTH, 4, -1, (double)words);
            continue;
        }
        double nonletter = nonspace ? (double)(nonspace - letters) / (double)nonspace : 0.0;
        double digit = nonspace ? (double)digits / (double)nonspace : 0.0;
        /* digits first: they are non-letters too, and the narrower reason
         * says more */
        if (p->max_digit < 1 && digit > p->max_digit) {
            reject(r, (size_t)i, NM_CLEAN_CHARS, 2, -1, digit);
            continue;
        }
        if (p->max_nonletter < 1 && nonletter > p->max_nonletter) {
            reject(r, (size_t)i, NM_CLEAN_CHARS, 1, -1, nonletter);
            continue;
        }
        if (p->lang) {
            double ascii = letters ? (double)ascii_letters / (double)letters : 0.0;
            if (ascii < p->en_min_ascii) {
                reject(r, (size_t)i, NM_CLEAN_LANG, 1, -1, ascii);
                continue;
            }
            norm.len = 0;
            nm_cu_normalize(d->text, d->len, &norm);
            const char *t = (const char *)norm.data;
            /* words with a letter: numbers and symbols say nothing about
             * the language */
            int64_t nw = 0, stop = 0;
            for (size_t a = 0; a < norm.len;) {
                const char *sp = memchr(t + a, ' ', norm.len - a);
                size_t e = sp ? (size_t)(sp - t) : norm.len;
                bool has_letter = false;
                for (size_t k = a; k < e && !has_letter;) has_letter = nm_cu_is_letter(nm_cu_next(t, e, &k));
                if (has_letter) {
                    nw++;
                    stop += nm_cu_is_en_stopword(t + a, e - a);
                }
                a = e + 1;
            }
            double ratio = nw ? (double)stop / (double)nw : 0.0;
            if (nw >= p->en_min_words && ratio < p->en_min_stopwords) {
                reject(r, (size_t)i, NM_CLEAN_LANG, 2, -1, ratio);
                continue;
            }
        }
        if (p->n_forbid) {
            lc.len = 0;
            nm_buf_push(&lc, d->text, d->len);
            if (lc.oom) {
                j->oom = true;
                break;
            }
            for (size_t k = 0; k < lc.len; k++)
                if (lc.data[k] >= 'A' && lc.data[k] <= 'Z') lc.data[k] += 32;
            for (size_t f = 0; f < p->n_forbid; f++)
                if (j->forbid_len[f] && memmem(lc.data, lc.len, j->forbid_lc[f], j->forbid_len[f])) {
                    reject(r, (size_t)i, NM_CLEAN_FORBID, 0, (int64_t)f, 0);
                    break;
                }
        }
    }
    if (norm.oom) j->oom = true;
    nm_buf_deinit(&lc);
    nm_buf_deinit(&norm);
}

/* ---- decontamination ---- */

#define POLY_BASE 0x100000001b3ULL

static uint64_t gram_key(uint64_t poly, int64_t len) { return nm_cu_mix(poly ^ ((uint64_t)len * 0xa24baed4963ee407ULL)); }

static nm_status build_eval_grams(const nm_clean_params *p, nm_hmap *m, uint64_t *lens, nm_clean_result *r,
                                  nm_err *err) {
    const nm_docset *ev = p->eval;
    const int64_t n = p->ngram;
    *lens = 0;
    if (!nm_hmap_init(m, 1024)) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    nm_buf norm;
    nm_buf_init(&norm);
    nm_u64vec w = {0};
    for (size_t e = 0; e < nm_docset_size(ev); e++) {
        const nm_doc *d = nm_docset_doc(ev, e);
        norm.len = 0;
        nm_cu_normalize(d->text, d->len, &norm);
        if (norm.oom || !nm_cu_word_hashes((const char *)norm.data, norm.len, &w)) goto oom;
        int64_t m_words = (int64_t)w.n;
        if (m_words < n) {
            if (m_words < p->ngram_min || m_words == 0) {
                r->eval_short_skipped++;
                continue;
            }
            uint64_t h = 0;
            for (int64_t k = 0; k < m_words; k++) h = h * POLY_BASE + w.v[k];
            if (!nm_hmap_put(m, gram_key(h, m_words), (uint32_t)e, NULL, NULL)) goto oom;
            *lens |= 1ULL << m_words;
            continue;
        }
        uint64_t pw = 1, h = 0;
        for (int64_t k = 0; k < n - 1; k++) pw *= POLY_BASE;
        for (int64_t k = 0; k < m_words; k++) {
            if (k >= n) h -= w.v[k - n] * pw;
            h = h * POLY_BASE + w.v[k];
            if (k >= n - 1 && !nm_hmap_put(m, gram_key(h, n), (uint32_t)e, NULL, NULL)) goto oom;
        }
        *lens |= 1ULL << n;
    }
    r->eval_ngrams = m->n;
    nm_buf_deinit(&norm);
    nm_u64vec_free(&w);
    return NM_OK;
oom:
    nm_buf_deinit(&norm);
    nm_u64vec_free(&w);
    nm_hmap_deinit(m);
    return nm_err_set(err, NM_ERR_NOMEM, "out of memory for the evaluation n-grams");
}

/* The first window of the words w[0..m) (any length in lens, shortest
 * first) that is an evaluation key: true with its start, length and eval
 * document. */
static bool first_hit(const nm_hmap *grams, uint64_t lens, const uint64_t *w, int64_t m, int64_t *at, int64_t *len,
                      uint32_t *ev) {
    for (int64_t L = 1; L < 64; L++) {
        if (!(lens >> L & 1) || L > m) continue;
        uint64_t pw = 1, h = 0;
        for (int64_t k = 0; k < L - 1; k++) pw *= POLY_BASE;
        for (int64_t k = 0; k < m; k++) {
            if (k >= L) h -= w[k - L] * pw;
            h = h * POLY_BASE + w[k];
            if (k >= L - 1 && nm_hmap_get(grams, gram_key(h, L), ev)) {
                *at = k - L + 1;
                *len = L;
                return true;
            }
        }
    }
    return false;
}

static void decontam_task(void *arg, int ith, int nth) {
    clean_job *j = arg;
    nm_clean_result *r = j->r;
    int64_t lo, hi;
    nm_split_range((int64_t)j->n, ith, nth, 1, &lo, &hi);
    nm_buf norm;
    nm_buf_init(&norm);
    nm_u64vec w = {0};
    for (int64_t i = lo; i < hi; i++) {
        if (r->step[i] != NM_CLEAN_KEPT) continue;
        const nm_doc *d = nm_docset_doc(j->docs, (size_t)i);
        norm.len = 0;
        nm_cu_normalize(d->text, d->len, &norm);
        if (norm.oom || !nm_cu_word_hashes((const char *)norm.data, norm.len, &w)) {
            j->oom = true;
            break;
        }
        int64_t at, len;
        uint32_t ev;
        if (first_hit(j->eval_grams, j->eval_lens, w.v, (int64_t)w.n, &at, &len, &ev))
            reject(r, (size_t)i, NM_CLEAN_DECONTAM, (int)len, (int64_t)ev, (double)at);
    }
    nm_buf_deinit(&norm);
    nm_u64vec_free(&w);
}

/* ---- exact duplicates ---- */

static void hash_task(void *arg, int ith, int nth) {
    clean_job *j = arg;
    int64_t lo, hi;
    nm_split_range((int64_t)j->n, ith, nth, 1, &lo, &hi);
    nm_buf norm;
    nm_buf_init(&norm);
    for (int64_t i = lo; i < hi; i++) {
        if (j->r->step[i] != NM_CLEAN_KEPT) continue;
        const nm_doc *d = nm_docset_doc(j->docs, (size_t)i);
        norm.len = 0;
        nm_cu_normalize(d->text, d->len, &norm);
        if (norm.oom) {
            j->oom = true;
            break;
        }
        j->hash[i] = nm_cu_hash(norm.data, norm.len, 0xe8ac7);
    }
    nm_buf_deinit(&norm);
}

static void run(nm_pool *pool, nm_pool_fn fn, clean_job *j) {
    if (pool)
        nm_pool_run(pool, fn, j);
    else
        fn(j, 0, 1);
}

static nm_status step_done(const nm_clean_params *p, nm_clean_step s, nm_err *err) {
    if (p->progress && p->progress(p->user, (uint64_t)s, NM_CLEAN_N_STEPS - 1, STEP_NAMES[s]))
        return nm_err_set(err, NM_ERR_CANCELLED, "cleaning cancelled after the %s step", STEP_NAMES[s]);
    return NM_OK;
}

nm_status nm_clean_run(const nm_docset *docs, const nm_clean_params *p, nm_clean_result *r, const nm_log *log,
                       nm_err *err) {
    memset(r, 0, sizeof *r);
    const size_t n = nm_docset_size(docs);
    if (p->ngram < 1 || p->ngram > 63) return nm_err_set(err, NM_ERR_ARG, "n-gram size %d is not in 1..63", p->ngram);
    if (p->lang && strcmp(p->lang, "en") != 0)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "language '%s': only \"en\" has a test (docs/CURATE.md)", p->lang);
    if (p->threads < 0) return nm_err_set(err, NM_ERR_ARG, "thread count %d is negative", p->threads);
    r->n_docs = n;
    r->step = nm_calloc(n ? n : 1, 1);
    r->detail = nm_calloc(n ? n : 1, 1);
    r->ref = malloc((n ? n : 1) * sizeof *r->ref);
    r->value = nm_calloc(n ? n : 1, sizeof *r->value);
    if (!r->step || !r->detail || !r->ref || !r->value) {
        nm_clean_result_deinit(r);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory for %zu documents", n);
    }
    for (size_t i = 0; i < n; i++) r->ref[i] = -1;
    nm_pool *pool = NULL;
    nm_status st = NM_OK;
    int nth = p->threads ? p->threads : nm_cpu_count();
    if (nth > 1 && (st = nm_pool_new(nth, &pool, err))) {
        nm_clean_result_deinit(r);
        return st;
    }
    clean_job j = {docs, p, r, n, false, NULL, NULL, NULL, 0, NULL};
    nm_hmap grams = {0};
    size_t *idx = NULL;
    int64_t *root = NULL;
    float *jac = NULL;
    double t0;

    /* 1. filters */
    if (filters_on(p)) {
        t0 = now_s();
        if (p->n_forbid) {
            j.forbid_lc = nm_calloc(p->n_forbid, sizeof *j.forbid_lc);
            j.forbid_len = nm_calloc(p->n_forbid, sizeof *j.forbid_len);
            if (!j.forbid_lc || !j.forbid_len) goto oom;
            for (size_t f = 0; f < p->n_forbid; f++) {
                if (!(j.forbid_lc[f] = nm_strdup(p->forbid[f]))) goto oom;
                j.forbid_len[f] = strlen(j.forbid_lc[f]);
                for (char *c = j.forbid_lc[f]; *c; c++)
                    if (*c >= 'A' && *c <= 'Z') *c += 32;
            }
        }
        run(pool, filter_task, &j);
        if (j.oom) goto oom;
        r->seconds[NM_CLEAN_LENGTH] = now_s() - t0;
    }
    if ((st = step_done(p, NM_CLEAN_FORBID, err))) goto out;

    /* 2. decontamination */
    if (p->eval) {
        t0 = now_s();
        if ((st = build_eval_grams(p, &grams, &j.eval_lens, r, err))) goto out;
        j.eval_grams = &grams;
        nm_logf(log, NM_LOG_INFO, "decontamination: %zu evaluation n-grams (%d words) from %zu documents (%zu too short)",
                r->eval_ngrams, p->ngram, nm_docset_size(p->eval), r->eval_short_skipped);
        run(pool, decontam_task, &j);
        if (j.oom) goto oom;
        r->seconds[NM_CLEAN_DECONTAM] = now_s() - t0;
    }
    if ((st = step_done(p, NM_CLEAN_DECONTAM, err))) goto out;

    /* 3. exact duplicates: the first of equal normalised forms stays */
    if (p->exact) {
        t0 = now_s();
        j.hash = nm_calloc(n ? n : 1, sizeof *j.hash);
        nm_hmap seen;
        if (!j.hash || !nm_hmap_init(&seen, n / 2 + 16)) goto oom;
        run(pool, hash_task, &j);
        if (j.oom) {
            nm_hmap_deinit(&seen);
            goto oom;
        }
        for (size_t i = 0; i < n; i++) {
            if (r->step[i] != NM_CLEAN_KEPT) continue;
            bool there;
            uint32_t first;
            if (i > UINT32_MAX || !nm_hmap_put(&seen, j.hash[i], (uint32_t)i, &there, &first)) {
                nm_hmap_deinit(&seen);
                goto oom;
            }
            if (there) reject(r, i, NM_CLEAN_EXACT, 0, (int64_t)first, 1.0);
        }
        nm_hmap_deinit(&seen);
        r->seconds[NM_CLEAN_EXACT] = now_s() - t0;
    }
    if ((st = step_done(p, NM_CLEAN_EXACT, err))) goto out;

    /* 4. near duplicates among what is left */
    if (p->near) {
        t0 = now_s();
        size_t m = 0;
        for (size_t i = 0; i < n; i++) m += r->step[i] == NM_CLEAN_KEPT;
        idx = malloc((m ? m : 1) * sizeof *idx);
        root = malloc((m ? m : 1) * sizeof *root);
        jac = malloc((m ? m : 1) * sizeof *jac);
        if (!idx || !root || !jac) goto oom;
        m = 0;
        for (size_t i = 0; i < n; i++)
            if (r->step[i] == NM_CLEAN_KEPT) idx[m++] = i;
        if ((st = nm_near_dedup(docs, idx, m, p, pool, root, jac, r, err))) goto out;
        for (size_t k = 0; k < m; k++)
            if (root[k] >= 0) reject(r, idx[k], NM_CLEAN_NEAR, 0, root[k], jac[k]);
        r->seconds[NM_CLEAN_NEAR] = now_s() - t0;
        nm_logf(log, NM_LOG_INFO,
                "near duplicates: %d bands x %d rows, %llu candidate comparisons, %llu similar pairs, %.1f MiB, %.2f s",
                r->bands, r->rows, (unsigned long long)r->lsh_pairs, (unsigned long long)r->lsh_verified,
                (double)r->near_bytes / 1048576.0, r->seconds[NM_CLEAN_NEAR]);
    }
    if ((st = step_done(p, NM_CLEAN_NEAR, err))) goto out;
    for (size_t i = 0; i < n; i++) r->count[r->step[i]]++;
    goto out;
oom:
    st = nm_err_set(err, NM_ERR_NOMEM, "out of memory while cleaning %zu documents", n);
out:
    if (j.forbid_lc)
        for (size_t f = 0; f < p->n_forbid; f++) free(j.forbid_lc[f]);
    free(j.forbid_lc);
    free(j.forbid_len);
    free(j.hash);
    free(idx);
    free(root);
    free(jac);
    nm_hmap_deinit(&grams);
    nm_pool_free(pool);
    if (st) nm_clean_result_deinit(r);
    return st;
}

/* ---- why ---- */

void nm_clean_reason(const nm_docset *docs, const nm_clean_params *p, const nm_clean_result *r, size_t i, char *buf,
                     size_t cap) {
    if (!cap) return;
    buf[0] = 0;
    if (i >= r->n_docs) return;
    const double v = r->value[i];
    const int64_t ref = r->ref[i];
    const nm_doc *other;
    switch (r->step[i]) {
    case NM_CLEAN_LENGTH: {
        static const char *const what[] = {"", "characters, fewer than", "characters, more than", "words, fewer than",
                                           "words, more than"};
        int64_t bound = r->detail[i] == 1 ? p->min_chars : r->detail[i] == 2 ? p->max_chars
                        : r->detail[i] == 3 ? p->min_words : p->max_words;
        snprintf(buf, cap, "%.0f %s %lld", v, what[r->detail[i] < 5 ? r->detail[i] : 0], (long long)bound);
        break;
    }
    case NM_CLEAN_CHARS:
        if (r->detail[i] == 1)
            snprintf(buf, cap, "%.0f%% of its characters are not letters (at most %.0f%%)", v * 100, p->max_nonletter * 100);
        else
            snprintf(buf, cap, "%.0f%% of its characters are digits (at most %.0f%%)", v * 100, p->max_digit * 100);
        break;
    case NM_CLEAN_LANG:
        if (r->detail[i] == 1)
            snprintf(buf, cap, "not English: %.1f%% of its letters are ASCII (at least %g%%)", v * 100,
                     p->en_min_ascii * 100);
        else
            snprintf(buf, cap, "not English: %.1f%% of its words are English stop words (at least %g%%)", v * 100,
                     p->en_min_stopwords * 100);
        break;
    case NM_CLEAN_FORBID:
        snprintf(buf, cap, "contains the forbidden string \"%.80s\"",
                 ref >= 0 && (size_t)ref < p->n_forbid ? p->forbid[ref] : "?");
        break;
    case NM_CLEAN_DECONTAM:
        other = p->eval ? nm_docset_doc(p->eval, (size_t)ref) : NULL;
        if (other && other->line > 0)
            snprintf(buf, cap, "shares a %d-word sequence with %s:%lld", r->detail[i],
                     nm_docset_file(p->eval, other->file), (long long)other->line);
        else if (other)
            snprintf(buf, cap, "shares a %d-word sequence with %s record %lld", r->detail[i],
                     nm_docset_file(p->eval, other->file), (long long)other->record);
        break;
    case NM_CLEAN_EXACT:
    case NM_CLEAN_NEAR:
        other = nm_docset_doc(docs, (size_t)ref);
        if (!other) break;
        {
            char where[300];
            if (other->line > 0)
                snprintf(where, sizeof where, "%s:%lld", nm_docset_file(docs, other->file), (long long)other->line);
            else
                snprintf(where, sizeof where, "%s record %lld", nm_docset_file(docs, other->file),
                         (long long)other->record);
            if (r->step[i] == NM_CLEAN_EXACT)
                snprintf(buf, cap, "same normalised text as %s", where);
            else
                snprintf(buf, cap, "near duplicate of %s (estimated Jaccard %.2f)", where, v);
        }
        break;
    default:
        break;
    }
}
