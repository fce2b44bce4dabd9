/*
 * spm.c - SentencePiece-style tokenization (tokenizer.ggml.model = llama),
 * the algorithm of llama.cpp's llm_tokenizer_spm: start from one symbol per
 * UTF-8 character, and repeatedly merge the adjacent pair whose
 * concatenation is the vocabulary token with the highest score (ties: the
 * leftmost pair).  Symbols form a linked list over the text and candidate
 * pairs sit in a heap (heap.h); a pair made stale by an earlier merge is
 * recognised when popped (its sides are no longer the same symbols) and
 * dropped.  O(n log n) for n characters, whatever the text.  Symbols carry
 * ids and pairs are looked up in the integer table of symtab.c, built from
 * every way a token splits into two symbols.
 *
 * When no token of the vocabulary has a U+2581 (the escaped space) after
 * another character - true of LLaMA's and of every SentencePiece model
 * trained with whitespace splitting - no merge can cross the point before a
 * run of U+2581, so each word is merged on its own: same result, but small
 * heaps that stay in cache.
 *
 * Characters left without a token are emitted as byte tokens (<0xNN>), or
 * as the unknown token when the vocabulary has no byte tokens.  Bytes that
 * are not valid UTF-8 become one-byte symbols of their own (llama.cpp would
 * let a stray lead byte swallow the following bytes), so they always reach
 * the byte fallback unchanged.
 */
#include "text/text.h"
#include "text/heap.h"

#include <stdlib.h>
#include <string.h>

typedef struct sym {
    int32_t prev, next;
    uint32_t off, len;
    int32_t id; /* symbol id (symtab.c), -1 if it cannot merge */
} sym;

typedef struct work {
    sym *s;
    size_t cap;
    nm_heap h;
} work;

static inline void try_pair(const nm_vocab *v, const sym *s, int32_t l, int32_t r, nm_heap *h, bool build) {
    if (l < 0 || r < 0) return;
    const nm_pair *p = nm_pair_find(v, s[l].id, s[r].id);
    if (!p) return;
    nm_heap_item it = {(uint64_t)p->prio << 32 | (uint32_t)l, (uint32_t)s[l].id, (uint32_t)s[r].id};
    if (build) nm_heap_append(h, it);
    else nm_heap_push(h, it);
}

static void emit_bytes(const nm_vocab *v, const uint8_t *p, size_t n, nm_ids *out) {
    for (size_t i = 0; i < n; i++) {
        int32_t id = v->byte_tok[p[i]];
        if (id < 0) id = v->unk;
        if (id >= 0) nm_ids_push(out, id);
    }
}

/* Merges text[0..len) (one region) and appends its ids. */
static bool spm_region(const nm_vocab *v, work *w, const char *text, size_t len, nm_ids *out) {
    if (len > w->cap) {
        sym *p = realloc(w->s, len * sizeof(sym));
        if (!p) return false;
        w->s = p;
        w->cap = len;
    }
    sym *s = w->s;
    int32_t n = 0;
    for (size_t off = 0; off < len;) {
        uint32_t cp;
        int l = nm_utf8_decode((const uint8_t *)text + off, len - off, &cp);
        if (l == 0) l = 1;
        s[n].prev = n - 1;
        s[n].next = off + (size_t)l == len ? -1 : n + 1;
        s[n].off = (uint32_t)off;
        s[n].len = (uint32_t)l;
        s[n].id = l == 1 && (uint8_t)text[off] < 0x80 ? v->ascii_sym[(uint8_t)text[off]] : nm_sym_find(v, text + off, (size_t)l);
        n++;
        off += (size_t)l;
    }

    nm_heap *h = &w->h;
    h->n = 0;
    for (int32_t i = 1; i < n; i++) try_pair(v, s, i - 1, i, h, true);
    nm_heap_build(h);
    while (h->n > 0 && !h->oom) {
        nm_heap_item it = nm_heap_pop(h);
        int32_t li = (int32_t)(uint32_t)it.key;
        sym *l = &s[li];
        /* stale unless the left symbol and its current right neighbour are
         * still the two symbols of the pair (a merge changes the id: ids
         * stand for strings, and a symbol's string only grows) */
        if (l->len == 0 || l->next < 0 || l->id != (int32_t)it.a || s[l->next].id != (int32_t)it.b) continue;
        sym *r = &s[l->next];
        l->id = nm_pair_find(v, l->id, r->id)->into;
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) s[r->next].prev = li;
        try_pair(v, s, l->prev, li, h, false);
        try_pair(v, s, li, l->next, h, false);
    }
    if (h->oom) return false;
    for (int32_t i = 0; i != -1; i = s[i].next) {
        if (s[i].id >= 0 && s[i].id < v->n_tokens) nm_ids_push(out, s[i].id);
        else emit_bytes(v, (const uint8_t *)text + s[i].off, s[i].len, out);
    }
    return true;
}

static inline bool is_mark(const char *p) {
    return (uint8_t)p[0] == 0xe2 && (uint8_t)p[1] == 0x96 && (uint8_t)p[2] == 0x81;
}

nm_status nm_spm_tokenize(const nm_vocab *v, const char *text, size_t len, nm_ids *out, nm_err *err) {
    if (len == 0) return NM_OK;
    if (len > INT32_MAX) return nm_err_set(err, NM_ERR_RANGE, "tokenize: text of %zu bytes is too long", len);
    work w = {0};
    bool ok = true;
    size_t start = 0;
    if (v->spm_split) {
        /* cut before every run of U+2581 that follows another character */
        for (size_t i = 3; i + 3 <= len && ok; i++) {
            if (text[i] != '\xe2' || !is_mark(text + i) || is_mark(text + i - 3)) continue;
            ok = spm_region(v, &w, text + start, i - start, out);
            start = i;
            i += 2;
        }
    }
    if (ok) ok = spm_region(v, &w, text + start, len - start, out);
    free(w.s);
    nm_heap_free(&w.h);
    return ok ? NM_OK : nm_err_set(err, NM_ERR_NOMEM, "tokenize: out of memory");
}
