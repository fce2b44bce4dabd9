/*
 * text.h - internals of the tokenizer module (src/text): the nm_vocab
 * structure shared by the loader (vocab.c), the integer merge tables
 * (symtab.c), the two tokenizers (spm.c, bpe.c, with the heap of heap.h),
 * the pre-tokenizer (pretok.c), the top-level tokenize (tokenize.c) and the
 * detokenizer (detok.c), plus the UTF-8 and hashing helpers they have in
 * common (utf8.c).
 *
 * The behaviour follows llama.cpp's llama-vocab.cpp (the reference that
 * produced the conformance vectors in shared/vocab and the golden prompts);
 * docs/TOKENIZERS.md lists where and why nomoat differs.
 */
#ifndef NM_TEXT_H
#define NM_TEXT_H

#include "base/base.h"

/* Token attributes (bit set), as llama.cpp derives them from
 * tokenizer.ggml.token_type. */
enum {
    NM_TOK_UNDEFINED = 0,
    NM_TOK_UNKNOWN = 1 << 0,
    NM_TOK_UNUSED = 1 << 1,
    NM_TOK_NORMAL = 1 << 2,
    NM_TOK_CONTROL = 1 << 3,
    NM_TOK_USER_DEFINED = 1 << 4,
    NM_TOK_BYTE = 1 << 5,
    NM_TOK_LSTRIP = 1 << 6, /* eat spaces left of the token when splitting specials  */
    NM_TOK_RSTRIP = 1 << 7  /* ... and right of it                                   */
};

typedef enum nm_vocab_kind {
    NM_VOCAB_SPM, /* tokenizer.ggml.model = "llama" */
    NM_VOCAB_BPE  /* tokenizer.ggml.model = "gpt2"  */
} nm_vocab_kind;

/* Open-addressing hash set of strings that live elsewhere; slots hold an
 * index (or -1).  The caller supplies how to compare. */
typedef struct nm_strtab {
    int32_t *slots;
    uint64_t mask; /* capacity - 1 (capacity is a power of two) */
} nm_strtab;

/* A pair of adjacent symbols that merges: key = (left id << 32) | right id
 * (all ones: empty slot); into = the merged symbol (BPE) or token (SPM);
 * prio = the merge rank (BPE) or score rank (SPM): lower merges first. */
typedef struct nm_pair {
    uint64_t key;
    int32_t into;
    uint32_t prio;
} nm_pair;

typedef struct nm_pretok nm_pretok; /* compiled pre-tokenizer (pretok.c) */

struct nm_vocab {
    nm_vocab_kind kind;
    int32_t n_tokens;

    /* token texts, NUL-terminated, in one arena */
    char *text;
    uint32_t *text_off;
    uint32_t *text_len;
    float *score;
    uint32_t *prio;     /* SPM: rank of the score, 0 = best (ties share) */
    bool spm_split;     /* SPM: no token has U+2581 after another character,
                           so merging can work word by word (spm.c) */
    uint16_t *attr;
    nm_strtab tok_tab; /* text -> id (first id wins for duplicates) */

    /* token_to_piece(special = true) of every token, precomputed */
    char *piece;
    uint32_t *piece_off;
    uint32_t *piece_len;

    /* special ids (-1: none) */
    int32_t bos, eos, eot, eom, unk, pad, sep;
    bool add_bos, add_eos;
    bool add_space_prefix; /* SPM: " " before the text and after specials   */
    bool ignore_merges;    /* BPE: a pre-token that is a token is kept whole */
    bool clean_spaces;     /* what llama.cpp's detokenizer would do (info)  */
    uint8_t *eog;          /* n_tokens flags: end of generation             */

    /* tokens split out of the text before tokenizing (control, user-defined,
     * unknown), longest first */
    int32_t *special;
    int32_t n_special;

    /* byte -> token: SPM <0xXX> (or the one-byte token), BPE the token of
     * the byte's mapped character; -1 if the vocabulary has none */
    int32_t byte_tok[256];

    /* Merging works on symbol ids: ids below n_tokens are tokens, the
     * others (extra symbols) are strings that can be a symbol without being
     * a token (single characters, BPE merge parts); symtab.c */
    char *xs_text;
    size_t xs_text_cap;
    uint32_t *xs_off, *xs_len;
    int32_t n_xs, xs_cap;
    nm_strtab xs_tab;
    nm_pair *pairs;
    uint64_t pair_mask; /* capacity - 1 */
    int32_t byte_sym[256]; /* BPE: symbol of each byte's mapped character */
    int32_t ascii_sym[128]; /* SPM: symbol of each ASCII character */
    int64_t n_merges;       /* BPE: well-formed merges read */

    /* BPE */
    char bpe_enc[256][2];      /* byte -> UTF-8 of its mapped character */
    uint8_t bpe_enc_len[256];
    nm_pretok *pretok;
    char pre_name[64];
};

/* ---- hashing ---- */
uint64_t nm_text_hash(const void *p, size_t n);
/* Table of capacity >= 2 * n, all slots empty; false on overflow/OOM. */
bool nm_strtab_init(nm_strtab *t, uint64_t n);
void nm_strtab_deinit(nm_strtab *t);

/* Token id of the exact text s[0..n), or -1. */
int32_t nm_vocab_find(const nm_vocab *v, const char *s, size_t n);

/* ---- symbols and pairs (symtab.c) ---- */
/* Symbol id of s[0..n): a token, an extra symbol, or -1. */
int32_t nm_sym_find(const nm_vocab *v, const char *s, size_t n);
/* Loader: the symbol id of s[0..n), adding an extra symbol if needed;
 * -1 when out of memory. */
int32_t nm_sym_intern(nm_vocab *v, const char *s, size_t n);
/* Loader: a pair table with room for n pairs. */
bool nm_pairs_init(nm_vocab *v, uint64_t n);
/* Loader: adds (l, r) unless present (the first insertion wins). */
void nm_pair_insert(nm_vocab *v, int32_t l, int32_t r, int32_t into, uint32_t prio);
void nm_symtab_free(nm_vocab *v);

static inline uint64_t nm_pair_key(int32_t l, int32_t r) { return (uint64_t)(uint32_t)l << 32 | (uint32_t)r; }

/* The pair (l, r), or NULL if they do not merge. */
static inline const nm_pair *nm_pair_find(const nm_vocab *v, int32_t l, int32_t r) {
    if (l < 0 || r < 0 || !v->pairs) return NULL;
    uint64_t key = nm_pair_key(l, r);
    uint64_t h = key * 0x9e3779b97f4a7c15ULL;
    uint64_t i = (h ^ (h >> 29)) & v->pair_mask;
    for (;;) {
        const nm_pair *p = &v->pairs[i];
        if (p->key == key) return p;
        if (p->key == UINT64_MAX) return NULL;
        i = (i + 1) & v->pair_mask;
    }
}

/* ---- UTF-8 ---- */
/* Length of the valid UTF-8 sequence at s[0..n) (1-4), or 0 if the bytes
 * there are not one (stray continuation, overlong, surrogate, > U+10FFFF,
 * or truncated).  *cp receives the code point when valid. */
int nm_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);
/* Writes cp (<= 0x10FFFF) as UTF-8 into out (4 bytes room); returns length. */
int nm_utf8_encode(uint32_t cp, char *out);
/* Length of the longest prefix of s[0..n) that ends on a character boundary
 * and leaves behind at most an incomplete (but so far valid) sequence. */
size_t nm_utf8_complete_prefix(const uint8_t *s, size_t n);

/* GPT-2 byte-level mapping: byte -> code point, and back (-1 if cp is not
 * the image of a byte). */
uint32_t nm_bpe_byte_to_cp(uint8_t b);
int nm_bpe_cp_to_byte(uint32_t cp);

/* ---- pre-tokenizer (pretok.c) ---- */
/* Compiles the patterns of the named pre-tokenizer type.  Unknown names get
 * a warning and the GPT-2 pattern.  Also reports the flags llama.cpp ties
 * to the type. */
typedef struct nm_pretok_flags {
    bool ignore_merges, clean_spaces, add_bos;
    bool known;
} nm_pretok_flags;
nm_status nm_pretok_new(const char *name, nm_pretok **out, nm_pretok_flags *flags, const nm_log *log,
                        nm_err *err);
void nm_pretok_free(nm_pretok *p);
/* Splits text[0..len) into words; (*words)[2i] is the offset and [2i+1] the
 * length of word i, covering the text in order.  *words is malloc()ed. */
nm_status nm_pretok_split(const nm_pretok *p, const char *text, size_t len, size_t **words,
                          size_t *n_words, nm_err *err);

/* ---- growable id list ---- */
typedef struct nm_ids {
    int32_t *v;
    size_t n, cap;
    bool oom;
} nm_ids;
void nm_ids_push(nm_ids *ids, int32_t id);

/* ---- the tokenizers: append the ids of one raw-text fragment ---- */
/* text is already escaped (spaces as U+2581, prefix added). */
nm_status nm_spm_tokenize(const nm_vocab *v, const char *text, size_t len, nm_ids *out, nm_err *err);
nm_status nm_bpe_tokenize(const nm_vocab *v, const char *text, size_t len, nm_ids *out, nm_err *err);

/* Builds the piece cache (detok.c), called once by the loader. */
nm_status nm_vocab_build_pieces(nm_vocab *v, nm_err *err);

#endif
