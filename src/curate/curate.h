/*
 * curate.h - internals shared by the curation code (src/curate) and the
 * evaluation code (src/eval): character classes, the normalised form of a
 * text, word hashing, and the small containers they need.  The rules are
 * written down in docs/CURATE.md; the comments here say why.
 */
#ifndef NM_CURATE_H
#define NM_CURATE_H

#include "nomoat.h"
#include "base/base.h"
#include "base/threads.h"

/* ---- characters (Unicode code points; the ranges are listed in
 * docs/CURATE.md "Character classes") ---- */
uint32_t nm_cu_lower(uint32_t cp);
bool nm_cu_is_space(uint32_t cp);
bool nm_cu_is_ignorable(uint32_t cp); /* zero-width, soft hyphen, BOM, C0/C1 controls */
bool nm_cu_is_punct(uint32_t cp);     /* punctuation and symbols */
bool nm_cu_is_letter(uint32_t cp);
bool nm_cu_is_digit(uint32_t cp);

/* Next code point of s[*i..n): advances *i.  An invalid byte is returned as
 * 0x110000 + byte (outside Unicode, so no class matches it) and skips one
 * byte. */
uint32_t nm_cu_next(const char *s, size_t n, size_t *i);

/* The normalised form (exact de-duplication, shingles, decontamination):
 * lower case, punctuation and symbols removed, ignorable characters
 * removed, every run of white space one ASCII space, no space at either
 * end.  Invalid UTF-8 bytes are kept as they are.  Appends to out (which the
 * caller resets). */
void nm_cu_normalize(const char *s, size_t n, nm_buf *out);

/* ---- hashing ---- */
static inline uint64_t nm_cu_mix(uint64_t x) { /* splitmix64's finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}
/* A 64-bit hash of bytes (not cryptographic; well mixed). */
uint64_t nm_cu_hash(const void *p, size_t n, uint64_t seed);

/* Words of a normalised text (split at its single spaces): hashes into a
 * growable array. */
typedef struct nm_u64vec {
    uint64_t *v;
    size_t n, cap;
} nm_u64vec;
bool nm_u64vec_push(nm_u64vec *a, uint64_t x);
void nm_u64vec_free(nm_u64vec *a);
/* Replaces a's contents with the hashes of the words of normalised text. */
bool nm_cu_word_hashes(const char *norm, size_t n, nm_u64vec *a);

/* ---- an open-addressing set/map of 64-bit keys to 32-bit values ---- */
typedef struct nm_hmap {
    uint64_t *keys; /* 0: empty slot (key 0 is stored as 1) */
    uint32_t *vals;
    size_t cap, n; /* cap: a power of two */
} nm_hmap;
bool nm_hmap_init(nm_hmap *m, size_t expect);
void nm_hmap_deinit(nm_hmap *m);
/* Inserts key -> val unless key is present; returns false only on OOM.
 * *existing (may be NULL) receives the stored value when the key was there
 * (and true is returned with *was_there set). */
bool nm_hmap_put(nm_hmap *m, uint64_t key, uint32_t val, bool *was_there, uint32_t *existing);
bool nm_hmap_get(const nm_hmap *m, uint64_t key, uint32_t *val);

/* ---- a chunked arena: pointers into it stay valid as it grows ---- */
typedef struct nm_arena_blk nm_arena_blk;
typedef struct nm_arena {
    nm_arena_blk *head;
    size_t used_bytes; /* sum of block sizes, for memory reports */
} nm_arena;
void *nm_arena_alloc(nm_arena *a, size_t n); /* 8-byte aligned; NULL on OOM */
char *nm_arena_strndup(nm_arena *a, const char *s, size_t n);
void nm_arena_free(nm_arena *a);

/* ---- English stop words (the language filter) ---- */
bool nm_cu_is_en_stopword(const char *w, size_t n);

/* ---- JSON helpers ---- */
/* s as a JSON string literal: invalid UTF-8 becomes \ufffd, and '<',
 * U+2028 and U+2029 are escaped so the result can sit inside an HTML
 * <script> element as well. */
void nm_cu_json_str(nm_buf *b, const char *s, size_t n);
/* Appends a short excerpt of text (at most max bytes, cut on a character
 * boundary, "..." added when cut) as a JSON string. */
void nm_cu_json_excerpt(nm_buf *b, const char *s, size_t n, size_t max);
/* The same excerpt as plain text on one line (newlines shown as " / "). */
void nm_cu_text_excerpt(nm_buf *b, const char *s, size_t n, size_t max);

/* ---- candidates (cands.c): what scoring changes in place ---- */
nm_cand *nm_cands_mut(nm_cands *c, size_t i);
/* Names the scorers and gives every candidate a scores array of NaN. */
nm_status nm_cands_set_scorers(nm_cands *c, const char *const *names, size_t n, nm_err *err);

/* ---- external commands (command.c) ---- */
/* Runs `/bin/sh -c command` (in its own process group) with input on its
 * standard input and returns what it printed on standard output (at most
 * 1 MiB kept) in *out (malloc()ed, NUL-terminated).  Fails with a message
 * naming the command when it cannot start, runs past timeout_s (the whole
 * process group is killed), exits non-zero or dies of a signal.  Its
 * standard error goes where ours goes. */
nm_status nm_cu_run_command(const char *command, const char *input, size_t in_len, double timeout_s, char **out,
                            nm_err *err);

/* ---- MinHash (minhash.c) ---- */
/* num_perm hash functions h_i(x) = ((a_i x + b_i) mod 2^64) >> 32 over the
 * 32-bit shingle hash x (multiply-add-shift: 2-independent), a_i and b_i
 * drawn from the seed. */
typedef struct nm_minhash {
    int32_t num_perm, shingle;
    bool chars;
    uint32_t *alo, *ahi; /* a_i split in halves: a_i x mod 2^64 from 32-bit products */
    uint64_t *b;
} nm_minhash;
nm_status nm_minhash_init(nm_minhash *mh, int32_t num_perm, int32_t shingle, bool chars, uint64_t seed, nm_err *err);
void nm_minhash_deinit(nm_minhash *mh);
/* Scratch for one thread. */
typedef struct nm_mh_scratch {
    nm_buf norm;
    nm_u64vec words;
    nm_u64vec offs;
    nm_u64vec shingles;
} nm_mh_scratch;
void nm_mh_scratch_deinit(nm_mh_scratch *s);
/* The signature sig[num_perm] of a text: for each function, the minimum over
 * the text's shingles.  A text shorter than one shingle is one shingle (its
 * whole normalised form); an empty one has every value 0xffffffff. */
bool nm_minhash_sig(const nm_minhash *mh, const char *text, size_t len, nm_mh_scratch *s, uint32_t *sig);
/* The shingle hashes of a text (the set MinHash samples), for tests. */
bool nm_minhash_shingles(const nm_minhash *mh, const char *text, size_t len, nm_mh_scratch *s, nm_u64vec *out);

/* Near-duplicate removal over docs[idx[0..n)]: out_root[k] receives the doc
 * index of the kept document of k's cluster (-1 if k is kept), out_jac[k]
 * the estimated Jaccard similarity with it.  Fills r's bands, rows,
 * lsh_pairs, lsh_verified and near_bytes. */
nm_status nm_near_dedup(const nm_docset *docs, const size_t *idx, size_t n, const nm_clean_params *p, nm_pool *pool,
                        int64_t *out_root, float *out_jac, nm_clean_result *r, nm_err *err);

#endif
