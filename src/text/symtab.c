/*
 * symtab.c - the integer form of the merge rules, built once at load so
 * that merging never hashes or compares strings.
 *
 * Symbols are the strings a tokenizer can hold between merges: tokens keep
 * their ids; strings that are not tokens but can still be a symbol get
 * extra ids from n_tokens up (a character the vocabulary has no token for,
 * a BPE merge part or result missing from the vocabulary).  A pair table
 * maps (left id, right id) to what the two merge into and the priority of
 * that merge.  Because a symbol id stands for exactly one string, a pair
 * lookup by ids answers the same question llama.cpp asks with strings.
 */
#include "text/text.h"

#include <stdlib.h>
#include <string.h>

void nm_symtab_free(nm_vocab *v) {
    free(v->xs_text);
    free(v->xs_off);
    free(v->xs_len);
    nm_strtab_deinit(&v->xs_tab);
    free(v->pairs);
    v->xs_text = NULL;
    v->xs_text_cap = 0;
    v->xs_off = v->xs_len = NULL;
    v->pairs = NULL;
}

static int32_t xs_find(const nm_vocab *v, const char *s, size_t n) {
    if (!v->xs_tab.slots) return -1;
    uint64_t i = nm_text_hash(s, n) & v->xs_tab.mask;
    for (;;) {
        int32_t k = v->xs_tab.slots[i];
        if (k < 0) return -1;
        if (v->xs_len[k] == n && memcmp(v->xs_text + v->xs_off[k], s, n) == 0) return k;
        i = (i + 1) & v->xs_tab.mask;
    }
}

int32_t nm_sym_find(const nm_vocab *v, const char *s, size_t n) {
    int32_t id = nm_vocab_find(v, s, n);
    if (id >= 0) return id;
    int32_t k = xs_find(v, s, n);
    return k < 0 ? -1 : v->n_tokens + k;
}

static void xs_put(nm_vocab *v, int32_t k) {
    uint64_t i = nm_text_hash(v->xs_text + v->xs_off[k], v->xs_len[k]) & v->xs_tab.mask;
    while (v->xs_tab.slots[i] >= 0) i = (i + 1) & v->xs_tab.mask;
    v->xs_tab.slots[i] = k;
}

/* Room for one more extra symbol of n bytes; the table stays at most half
 * full, growing (and rehashing) by doubling. */
static bool xs_reserve(nm_vocab *v, size_t n, size_t *text_cap) {
    if (v->n_xs >= INT32_MAX - v->n_tokens - 1) return false;
    if (v->n_xs == v->xs_cap) {
        int32_t cap = v->xs_cap ? v->xs_cap * 2 : 256;
        uint32_t *o = realloc(v->xs_off, (size_t)cap * sizeof(uint32_t));
        if (o) v->xs_off = o;
        uint32_t *l = realloc(v->xs_len, (size_t)cap * sizeof(uint32_t));
        if (l) v->xs_len = l;
        if (!o || !l) return false;
        nm_strtab t;
        if (!nm_strtab_init(&t, (uint64_t)cap)) return false;
        nm_strtab_deinit(&v->xs_tab);
        v->xs_tab = t;
        v->xs_cap = cap;
        for (int32_t k = 0; k < v->n_xs; k++) xs_put(v, k);
    }
    size_t used = v->n_xs ? v->xs_off[v->n_xs - 1] + v->xs_len[v->n_xs - 1] : 0;
    if (used + n > UINT32_MAX) return false;
    if (used + n > *text_cap) {
        size_t cap = *text_cap ? *text_cap : 4096;
        while (cap < used + n) cap *= 2;
        char *p = realloc(v->xs_text, cap);
        if (!p) return false;
        v->xs_text = p;
        *text_cap = cap;
    }
    return true;
}

int32_t nm_sym_intern(nm_vocab *v, const char *s, size_t n) {
    int32_t id = nm_sym_find(v, s, n);
    if (id >= 0) return id;
    size_t used = v->n_xs ? v->xs_off[v->n_xs - 1] + v->xs_len[v->n_xs - 1] : 0;
    if (!xs_reserve(v, n, &v->xs_text_cap)) return -1;
    int32_t k = v->n_xs++;
    v->xs_off[k] = (uint32_t)used;
    v->xs_len[k] = (uint32_t)n;
    if (n) memcpy(v->xs_text + used, s, n);
    xs_put(v, k);
    return v->n_tokens + k;
}

bool nm_pairs_init(nm_vocab *v, uint64_t n) {
    uint64_t cap = 16;
    while (cap < 2 * n) {
        if (cap > (UINT64_MAX >> 2)) return false;
        cap <<= 1;
    }
    if (cap > SIZE_MAX / sizeof(nm_pair)) return false;
    v->pairs = malloc((size_t)cap * sizeof(nm_pair));
    if (!v->pairs) return false;
    memset(v->pairs, 0xff, (size_t)cap * sizeof(nm_pair)); /* keys all ones: empty */
    v->pair_mask = cap - 1;
    return true;
}

void nm_pair_insert(nm_vocab *v, int32_t l, int32_t r, int32_t into, uint32_t prio) {
    uint64_t key = nm_pair_key(l, r);
    uint64_t h = key * 0x9e3779b97f4a7c15ULL;
    uint64_t i = (h ^ (h >> 29)) & v->pair_mask;
    for (;;) {
        nm_pair *p = &v->pairs[i];
        if (p->key == key) return;
        if (p->key == UINT64_MAX) {
            p->key = key;
            p->into = into;
            p->prio = prio;
            return;
        }
        i = (i + 1) & v->pair_mask;
    }
}
