/*
 * utf8.c - small helpers of the tokenizer module: strict UTF-8 decoding,
 * the GPT-2 byte-to-unicode mapping, a string hash and the open-addressing
 * table the vocabulary is indexed with, a growable id list.
 */
#include "text/text.h"

#include <stdlib.h>
#include <string.h>

/* ---- hashing: 8 bytes at a time, multiply-xorshift mixing ---- */

static inline uint64_t mix(uint64_t h) {
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ULL;
    h ^= h >> 32;
    return h;
}

uint64_t nm_text_hash(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = mix(h ^ w) * 0x9e3779b97f4a7c15ULL;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++) w |= (uint64_t)s[i] << (8 * i);
    return mix(h ^ w ^ 0xff51afd7ed558ccdULL);
}

bool nm_strtab_init(nm_strtab *t, uint64_t n) {
    uint64_t cap = 16;
    while (cap < 2 * n) {
        if (cap > (UINT64_MAX >> 2)) return false;
        cap <<= 1;
    }
    if (cap > SIZE_MAX / sizeof(int32_t)) return false;
    t->slots = malloc((size_t)cap * sizeof(int32_t));
    if (!t->slots) return false;
    memset(t->slots, 0xff, (size_t)cap * sizeof(int32_t)); /* all -1 */
    t->mask = cap - 1;
    return true;
}

void nm_strtab_deinit(nm_strtab *t) {
    free(t->slots);
    t->slots = NULL;
    t->mask = 0;
}

int32_t nm_vocab_find(const nm_vocab *v, const char *s, size_t n) {
    uint64_t i = nm_text_hash(s, n) & v->tok_tab.mask;
    for (;;) {
        int32_t id = v->tok_tab.slots[i];
        if (id < 0) return -1;
        if (v->text_len[id] == n && memcmp(v->text + v->text_off[id], s, n) == 0) return id;
        i = (i + 1) & v->tok_tab.mask;
    }
}

/* ---- UTF-8 ---- */

int nm_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len;
    uint32_t v, min;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        v = c & 0x1f;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        v = c & 0x0f;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        v = c & 0x07;
        min = 0x10000;
    } else {
        return 0; /* continuation byte, C0/C1 overlong lead, F5..FF */
    }
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
    *cp = v;
    return len;
}

int nm_utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* True if s[0..n) (n < 4) could still grow into a valid sequence. */
static bool valid_incomplete(const uint8_t *s, size_t n) {
    if (n == 0 || n >= 4) return false;
    uint8_t c = s[0];
    size_t need;
    if (c >= 0xc2 && c <= 0xdf) need = 2;
    else if (c >= 0xe0 && c <= 0xef) need = 3;
    else if (c >= 0xf0 && c <= 0xf4) need = 4;
    else return false;
    if (n >= need) return false;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return false;
    /* second-byte limits that rule out overlongs, surrogates, > U+10FFFF */
    if (n >= 2) {
        uint8_t d = s[1];
        if (c == 0xe0 && d < 0xa0) return false;
        if (c == 0xed && d > 0x9f) return false;
        if (c == 0xf0 && d < 0x90) return false;
        if (c == 0xf4 && d > 0x8f) return false;
    }
    return true;
}

size_t nm_utf8_complete_prefix(const uint8_t *s, size_t n) {
    /* an incomplete sequence is at most 3 bytes long: look at the tail only */
    for (size_t k = n < 3 ? n : 3; k > 0; k--)
        if (valid_incomplete(s + n - k, k)) return n - k;
    return n;
}

/* ---- GPT-2 byte-level alphabet ----
 * Printable bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) stand for themselves;
 * the other 68 take the code points 256, 257, ... in byte order. */

static bool byte_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

uint32_t nm_bpe_byte_to_cp(uint8_t b) {
    if (byte_printable(b)) return b;
    uint32_t n = 0;
    for (unsigned i = 0; i < b; i++)
        if (!byte_printable(i)) n++;
    return 256 + n;
}

int nm_bpe_cp_to_byte(uint32_t cp) {
    if (cp < 256) return byte_printable(cp) ? (int)cp : -1;
    uint32_t n = 0;
    for (unsigned i = 0; i < 256; i++) {
        if (byte_printable(i)) continue;
        if (256 + n == cp) return (int)i;
        n++;
    }
    return -1;
}

/* ---- id list ---- */

void nm_ids_push(nm_ids *ids, int32_t id) {
    if (ids->oom) return;
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        if (cap > SIZE_MAX / sizeof(int32_t)) {
            ids->oom = true;
            return;
        }
        int32_t *p = realloc(ids->v, cap * sizeof(int32_t));
        if (!p) {
            ids->oom = true;
            return;
        }
        ids->v = p;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
}
