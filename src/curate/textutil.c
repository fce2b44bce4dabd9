/* textutil.c - character classes, the normalised form of a text, hashing,
 * and small containers for the curation code (see curate.h).
 *
 * The classes are ranges of code points chosen for the scripts people write
 * training data in, not the full Unicode database: docs/CURATE.md lists
 * them, and changing one changes what de-duplication considers equal, so
 * the two must move together. */
#include "curate/curate.h"
#include "text/text.h"

#include <stdlib.h>
#include <string.h>

#define INVALID_BASE 0x110000u

uint32_t nm_cu_next(const char *s, size_t n, size_t *i) {
    const uint8_t *p = (const uint8_t *)s + *i;
    if (*p < 0x80) {
        (*i)++;
        return *p;
    }
    uint32_t cp;
    int k = nm_utf8_decode(p, n - *i, &cp);
    if (k <= 0) {
        (*i)++;
        return INVALID_BASE + *p;
    }
    *i += (size_t)k;
    return cp;
}

uint32_t nm_cu_lower(uint32_t c) {
    if (c < 0x80) return c >= 'A' && c <= 'Z' ? c + 32 : c;
    if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 0x20;
    if (c >= 0x100 && c <= 0x137) return c == 0x130 ? 'i' : c | 1;
    if (c >= 0x139 && c <= 0x148) return c & 1 ? c + 1 : c;
    if (c >= 0x14A && c <= 0x177) return c | 1;
    if (c == 0x178) return 0xFF;
    if (c >= 0x179 && c <= 0x17E) return c & 1 ? c + 1 : c;
    if (c == 0x386) return 0x3AC;
    if (c >= 0x388 && c <= 0x38A) return c + 37;
    if (c == 0x38C) return 0x3CC;
    if (c == 0x38E || c == 0x38F) return c + 63;
    if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) return c + 0x20;
    if (c >= 0x400 && c <= 0x40F) return c + 0x50;
    if (c >= 0x410 && c <= 0x42F) return c + 0x20;
    if ((c >= 0x460 && c <= 0x481) || (c >= 0x48A && c <= 0x4BF)) return c | 1;
    if (c >= 0x531 && c <= 0x556) return c + 0x30;
    if ((c >= 0x1E00 && c <= 0x1E95) || (c >= 0x1EA0 && c <= 0x1EFF)) return c | 1;
    if (c >= 0xFF21 && c <= 0xFF3A) return c + 0x20;
    return c;
}

bool nm_cu_is_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

bool nm_cu_is_ignorable(uint32_t c) {
    return c < 0x09 || (c >= 0x0E && c <= 0x1F) || (c >= 0x7F && c <= 0x9F && c != 0x85) || c == 0xAD ||
           (c >= 0x200B && c <= 0x200D) || c == 0x2060 || c == 0xFEFF;
}

bool nm_cu_is_punct(uint32_t c) {
    if (c < 0x80) return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
                         (c >= 0x7B && c <= 0x7E);
    return (c >= 0xA1 && c <= 0xBF && c != 0xAA && c != 0xB5 && c != 0xBA) || c == 0xD7 || c == 0xF7 ||
           (c >= 0x2010 && c <= 0x2027) || (c >= 0x2030 && c <= 0x205E) || (c >= 0x20A0 && c <= 0x20CF) ||
           (c >= 0x2190 && c <= 0x23FF) || (c >= 0x2500 && c <= 0x27BF) || (c >= 0x2E00 && c <= 0x2E7F) ||
           (c >= 0x3001 && c <= 0x303F) || (c >= 0xFF01 && c <= 0xFF0F) || (c >= 0xFF1A && c <= 0xFF20) ||
           (c >= 0xFF3B && c <= 0xFF40) || (c >= 0xFF5B && c <= 0xFF65) || (c >= 0x1F300 && c <= 0x1FAFF);
}

bool nm_cu_is_letter(uint32_t c) {
    if (c < 0x80) return (c | 32) >= 'a' && (c | 32) <= 'z';
    return c == 0xAA || c == 0xB5 || c == 0xBA || (c >= 0xC0 && c <= 0x2AF && c != 0xD7 && c != 0xF7) ||
           (c >= 0x370 && c <= 0x3FF && c != 0x375 && c != 0x37E && c != 0x384 && c != 0x385 && c != 0x387) ||
           (c >= 0x400 && c <= 0x52F && !(c >= 0x482 && c <= 0x489)) || (c >= 0x531 && c <= 0x587) ||
           (c >= 0x5D0 && c <= 0x5EA) || (c >= 0x620 && c <= 0x64A) || (c >= 0x66E && c <= 0x6D3) ||
           (c >= 0x900 && c <= 0xDFF) || (c >= 0xE01 && c <= 0xE4E) || (c >= 0x1100 && c <= 0x11FF) ||
           (c >= 0x1E00 && c <= 0x1FFF) || (c >= 0x3041 && c <= 0x30FF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0xAC00 && c <= 0xD7AF) || (c >= 0xF900 && c <= 0xFAFF) ||
           (c >= 0xFF21 && c <= 0xFF3A) || (c >= 0xFF41 && c <= 0xFF5A);
}

bool nm_cu_is_digit(uint32_t c) {
    return (c >= '0' && c <= '9') || (c >= 0x660 && c <= 0x669) || (c >= 0x6F0 && c <= 0x6F9) ||
           (c >= 0xFF10 && c <= 0xFF19);
}

void nm_cu_normalize(const char *s, size_t n, nm_buf *out) {
    bool pending_space = false, any = false;
    size_t i = 0;
    while (i < n) {
        /* ASCII fast path: most training text is ASCII */
        uint8_t b = (uint8_t)s[i];
        if (b < 0x80) {
            i++;
            if (b >= 'A' && b <= 'Z') b += 32;
            if ((b >= 'a' && b <= 'z') || (b >= '0' && b <= '9')) {
                if (pending_space && any) nm_buf_push(out, " ", 1);
                pending_space = false;
                any = true;
                nm_buf_push(out, &b, 1);
            } else if (b == ' ' || (b >= 0x09 && b <= 0x0D)) {
                pending_space = true;
            }
            /* other ASCII: punctuation (removed) or controls (ignorable) */
            continue;
        }
        size_t at = i;
        uint32_t c = nm_cu_next(s, n, &i);
        if (nm_cu_is_space(c)) {
            pending_space = true;
            continue;
        }
        if (nm_cu_is_ignorable(c) || nm_cu_is_punct(c)) continue;
        if (pending_space && any) nm_buf_push(out, " ", 1);
        pending_space = false;
        any = true;
        if (c >= INVALID_BASE) {
            nm_buf_push(out, s + at, 1);
        } else {
            char enc[4];
            int k = nm_utf8_encode(nm_cu_lower(c), enc);
            nm_buf_push(out, enc, (size_t)k);
        }
    }
}

uint64_t nm_cu_hash(const void *p, size_t n, uint64_t seed) {
    const uint8_t *b = p;
    uint64_t h = seed ^ (n * 0x9e3779b97f4a7c15ULL);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) h = (h ^ nm_rd_u64(b + i)) * 0xff51afd7ed558ccdULL, h ^= h >> 32;
    uint64_t t = 0;
    for (size_t k = 0; i + k < n; k++) t |= (uint64_t)b[i + k] << (8 * k);
    h = (h ^ t) * 0xc4ceb9fe1a85ec53ULL;
    return nm_cu_mix(h);
}

bool nm_u64vec_push(nm_u64vec *a, uint64_t x) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        uint64_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return false;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return true;
}

void nm_u64vec_free(nm_u64vec *a) {
    free(a->v);
    memset(a, 0, sizeof *a);
}

bool nm_cu_word_hashes(const char *norm, size_t n, nm_u64vec *a) {
    a->n = 0;
    size_t i = 0;
    while (i < n) {
        const char *sp = memchr(norm + i, ' ', n - i);
        size_t e = sp ? (size_t)(sp - norm) : n;
        if (e > i && !nm_u64vec_push(a, nm_cu_hash(norm + i, e - i, 0x5eed))) return false;
        i = e + 1;
    }
    return true;
}

/* ---- hash map ---- */

static size_t slot_of(uint64_t key, size_t mask) { return (size_t)nm_cu_mix(key) & mask; }

bool nm_hmap_init(nm_hmap *m, size_t expect) {
    memset(m, 0, sizeof *m);
    size_t cap = 64;
    while (cap < expect * 2) cap *= 2;
    m->keys = nm_calloc(cap, sizeof *m->keys);
    m->vals = nm_calloc(cap, sizeof *m->vals);
    if (!m->keys || !m->vals) {
        nm_hmap_deinit(m);
        return false;
    }
    m->cap = cap;
    return true;
}

void nm_hmap_deinit(nm_hmap *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static bool hmap_grow(nm_hmap *m) {
    nm_hmap g;
    if (!nm_hmap_init(&g, m->cap)) return false; /* twice the capacity */
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) {
            size_t j = slot_of(m->keys[i], g.cap - 1);
            while (g.keys[j]) j = (j + 1) & (g.cap - 1);
            g.keys[j] = m->keys[i];
            g.vals[j] = m->vals[i];
            g.n++;
        }
    nm_hmap_deinit(m);
    *m = g;
    return true;
}

bool nm_hmap_put(nm_hmap *m, uint64_t key, uint32_t val, bool *was_there, uint32_t *existing) {
    if (key == 0) key = 1;
    if (was_there) *was_there = false;
    if ((m->n + 1) * 2 > m->cap && !hmap_grow(m)) return false;
    size_t j = slot_of(key, m->cap - 1);
    while (m->keys[j]) {
        if (m->keys[j] == key) {
            if (was_there) *was_there = true;
            if (existing) *existing = m->vals[j];
            return true;
        }
        j = (j + 1) & (m->cap - 1);
    }
    m->keys[j] = key;
    m->vals[j] = val;
    m->n++;
    return true;
}

bool nm_hmap_get(const nm_hmap *m, uint64_t key, uint32_t *val) {
    if (!m->cap) return false;
    if (key == 0) key = 1;
    size_t j = slot_of(key, m->cap - 1);
    while (m->keys[j]) {
        if (m->keys[j] == key) {
            *val = m->vals[j];
            return true;
        }
        j = (j + 1) & (m->cap - 1);
    }
    return false;
}

/* ---- arena ---- */

struct nm_arena_blk {
    nm_arena_blk *next;
    size_t size, used;
    _Alignas(8) uint8_t data[];
};

void *nm_arena_alloc(nm_arena *a, size_t n) {
    n = (n + 7) & ~(size_t)7;
    nm_arena_blk *b = a->head;
    if (!b || b->size - b->used < n) {
        size_t size = n > (1u << 20) ? n : (1u << 20);
        b = malloc(sizeof *b + size);
        if (!b) return NULL;
        b->next = a->head;
        b->size = size;
        b->used = 0;
        a->head = b;
        a->used_bytes += size;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

char *nm_arena_strndup(nm_arena *a, const char *s, size_t n) {
    char *p = nm_arena_alloc(a, n + 1);
    if (!p) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void nm_arena_free(nm_arena *a) {
    nm_arena_blk *b = a->head;
    while (b) {
        nm_arena_blk *next = b->next;
        free(b);
        b = next;
    }
    memset(a, 0, sizeof *a);
}

/* ---- English stop words: the most frequent English function words
 * (articles, pronouns, auxiliaries, prepositions, conjunctions), all in
 * the normalised form (lower case, apostrophes removed).  Sorted for
 * bsearch. ---- */
static const char *const EN_STOP[] = {
    "a",       "about",   "above",  "after",  "again",  "against", "all",     "am",     "an",     "and",
    "any",     "are",     "as",     "at",     "be",     "because", "been",    "before", "being",  "below",
    "between", "both",    "but",    "by",     "can",    "could",   "did",     "didnt",  "do",     "does",
    "doesnt",  "doing",   "dont",   "down",   "during", "each",    "few",     "for",    "from",   "further",
    "had",     "has",     "have",   "having", "he",     "her",     "here",    "hers",   "herself", "him",
    "himself", "his",     "how",    "i",      "if",     "im",      "in",      "into",   "is",     "isnt",
    "it",      "its",     "itself", "just",   "me",     "more",    "most",    "my",     "myself", "no",
    "nor",     "not",     "now",    "of",     "off",    "on",      "once",    "only",   "or",     "other",
    "our",     "ours",    "out",    "over",   "own",    "same",    "she",     "should", "so",     "some",
    "such",    "than",    "that",   "the",    "their",  "them",    "then",    "there",  "these",  "they",
    "this",    "those",   "through", "to",    "too",    "under",   "until",   "up",     "very",   "was",
    "wasnt",   "we",      "were",   "what",   "when",   "where",   "which",   "while",  "who",    "whom",
    "why",     "will",    "with",   "would",  "you",    "your",    "yours",   "yourself",
};

bool nm_cu_is_en_stopword(const char *w, size_t n) {
    size_t lo = 0, hi = sizeof EN_STOP / sizeof EN_STOP[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const char *s = EN_STOP[mid];
        size_t sl = strlen(s);
        int c = memcmp(w, s, n < sl ? n : sl);
        if (c == 0) c = n < sl ? -1 : n > sl;
        if (c == 0) return true;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return false;
}

/* ---- JSON ---- */

void nm_cu_json_str(nm_buf *b, const char *s, size_t n) {
    nm_buf_push(b, "\"", 1);
    size_t i = 0;
    while (i < n) {
        uint8_t c = (uint8_t)s[i];
        if (c >= 0x80) {
            size_t at = i;
            uint32_t cp = nm_cu_next(s, n, &i);
            if (cp >= INVALID_BASE)
                nm_buf_push(b, "\\ufffd", 6);
            else if (cp == 0x2028 || cp == 0x2029) /* valid JSON, but not inside a <script> */
                nm_buf_printf(b, "\\u%04x", (unsigned)cp);
            else
                nm_buf_push(b, s + at, i - at);
            continue;
        }
        i++;
        switch (c) {
        case '"': nm_buf_push(b, "\\\"", 2); break;
        case '\\': nm_buf_push(b, "\\\\", 2); break;
        case '\n': nm_buf_push(b, "\\n", 2); break;
        case '\r': nm_buf_push(b, "\\r", 2); break;
        case '\t': nm_buf_push(b, "\\t", 2); break;
        case '<': nm_buf_push(b, "\\u003c", 6); break; /* no "</script>" inside HTML */
        default:
            if (c < 0x20 || c == 0x7F)
                nm_buf_printf(b, "\\u%04x", c);
            else
                nm_buf_push(b, &c, 1);
        }
    }
    nm_buf_push(b, "\"", 1);
}

/* ---- excerpts ---- */

static size_t excerpt_len(const char *s, size_t n, size_t max, bool *cut) {
    *cut = n > max;
    if (!*cut) return n;
    size_t k = max;
    while (k > 0 && ((uint8_t)s[k] & 0xC0) == 0x80) k--; /* not inside a character */
    return k;
}

void nm_cu_json_excerpt(nm_buf *b, const char *s, size_t n, size_t max) {
    bool cut;
    size_t k = excerpt_len(s, n, max, &cut);
    if (!cut) {
        nm_cu_json_str(b, s, k);
        return;
    }
    nm_buf t;
    nm_buf_init(&t);
    nm_buf_push(&t, s, k);
    nm_buf_push(&t, "...", 3);
    nm_cu_json_str(b, t.oom ? "" : (const char *)t.data, t.oom ? 0 : t.len);
    nm_buf_deinit(&t);
}

void nm_cu_text_excerpt(nm_buf *b, const char *s, size_t n, size_t max) {
    bool cut;
    size_t k = excerpt_len(s, n, max, &cut);
    for (size_t i = 0; i < k; i++) {
        char c = s[i];
        if (c == '\n')
            nm_buf_push(b, " / ", 3);
        else if (c == '\r' || c == '\t')
            nm_buf_push(b, " ", 1);
        else if ((uint8_t)c < 0x20)
            continue;
        else
            nm_buf_push(b, &c, 1);
    }
    if (cut) nm_buf_push(b, "...", 3);
}
