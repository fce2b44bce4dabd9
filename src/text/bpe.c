/*
 * bpe.c - byte-level BPE tokenization (tokenizer.ggml.model = gpt2), the
 * algorithm of llama.cpp's llm_tokenizer_bpe: the pre-tokenizer cuts the
 * text into words (pretok.c); every byte of a word becomes the character
 * the GPT-2 byte alphabet maps it to; then the adjacent pair with the best
 * (lowest) merge rank is merged, ties going to the leftmost pair, until no
 * pair of the word is in tokenizer.ggml.merges.  Same data structures as
 * spm.c: a linked list of symbols and a heap of candidate pairs (heap.h),
 * stale pairs dropped when popped.  O(n log n) in the word length.  The
 * merges are looked up by symbol ids (symtab.c), not by strings.
 *
 * A final symbol that is not a token (merges and vocabulary that disagree)
 * is emitted byte by byte through the byte tokens; llama.cpp drops such
 * bytes instead when their mapped character is two bytes long.
 */
#include "text/text.h"
#include "text/heap.h"

#include <stdlib.h>
#include <string.h>

typedef struct sym {
    int32_t prev, next;
    int32_t id; /* symbol id (symtab.c), -1 if it cannot merge */
} sym;

typedef struct work {
    char *enc; /* the word in the byte alphabet */
    size_t enc_cap;
    sym *s;
    size_t s_cap;
    nm_heap h;
    bool oom;
} work;

static inline void try_pair(const nm_vocab *v, work *w, int32_t l, int32_t r, bool build) {
    if (l < 0 || r < 0) return;
    const sym *s = w->s;
    const nm_pair *p = nm_pair_find(v, s[l].id, s[r].id);
    if (!p) return;
    nm_heap_item it = {(uint64_t)p->prio << 32 | (uint32_t)l, (uint32_t)s[l].id, (uint32_t)s[r].id};
    if (build) nm_heap_append(&w->h, it);
    else nm_heap_push(&w->h, it);
}

/* New capacity for at least need elements (doubling), 0 on overflow. */
static size_t grown(size_t cap, size_t need, size_t elem) {
    size_t c = cap ? cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 2) return 0;
        c *= 2;
    }
    return c > SIZE_MAX / elem ? 0 : c;
}

static bool reserve_enc(work *w, size_t need) {
    if (need <= w->enc_cap) return true;
    size_t c = grown(w->enc_cap, need, 1);
    char *p = c ? realloc(w->enc, c) : NULL;
    if (!p) return false;
    w->enc = p;
    w->enc_cap = c;
    return true;
}

static bool reserve_syms(work *w, size_t need) {
    if (need <= w->s_cap) return true;
    size_t c = grown(w->s_cap, need, sizeof(sym));
    sym *p = c ? realloc(w->s, c * sizeof(sym)) : NULL;
    if (!p) return false;
    w->s = p;
    w->s_cap = c;
    return true;
}

/* Tokenizes one pre-token word[0..n). */
static void bpe_word(const nm_vocab *v, work *w, const uint8_t *word, size_t n, nm_ids *out) {
    if (v->ignore_merges) {
        /* llama-3 style: a word that is a token stays whole */
        if (!reserve_enc(w, 2 * n)) {
            w->oom = true;
            return;
        }
        size_t e = 0;
        for (size_t i = 0; i < n; i++) {
            memcpy(w->enc + e, v->bpe_enc[word[i]], v->bpe_enc_len[word[i]]);
            e += v->bpe_enc_len[word[i]];
        }
        int32_t id = nm_vocab_find(v, w->enc, e);
        if (id >= 0) {
            nm_ids_push(out, id);
            return;
        }
    }
    if (!reserve_syms(w, n)) {
        w->oom = true;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        sym *s = &w->s[i];
        s->prev = (int32_t)i - 1;
        s->next = i + 1 == n ? -1 : (int32_t)i + 1;
        s->id = v->byte_sym[word[i]];
    }
    nm_heap *h = &w->h;
    h->n = 0;
    for (size_t i = 1; i < n; i++) try_pair(v, w, (int32_t)i - 1, (int32_t)i, true);
    nm_heap_build(h);
    while (h->n > 0 && !h->oom) {
        nm_heap_item it = nm_heap_pop(h);
        int32_t li = (int32_t)(uint32_t)it.key;
        sym *l = &w->s[li];
        /* stale unless the left symbol (alive) and its current right
         * neighbour are still the two symbols of the pair: a merge changes a
         * symbol's id, since ids stand for strings and strings only grow */
        if (l->id == -2 || l->next < 0 || l->id != (int32_t)it.a || w->s[l->next].id != (int32_t)it.b) continue;
        sym *r = &w->s[l->next];
        l->id = nm_pair_find(v, l->id, r->id)->into;
        r->id = -2; /* merged away */
        l->next = r->next;
        if (r->next >= 0) w->s[r->next].prev = li;
        try_pair(v, w, l->prev, li, false);
        try_pair(v, w, li, l->next, false);
    }
    if (h->oom) w->oom = true;
    for (int32_t i = 0; i != -1; i = w->s[i].next) {
        int32_t id = w->s[i].id;
        if (id >= 0 && id < v->n_tokens) {
            nm_ids_push(out, id);
            continue;
        }
        /* not a token (merges and vocabulary disagree, or a byte the
         * vocabulary lacks): symbol i covers the word's bytes i .. next-1 */
        size_t end = w->s[i].next >= 0 ? (size_t)w->s[i].next : n;
        for (size_t j = (size_t)i; j < end; j++) {
            int32_t b = v->byte_tok[word[j]];
            if (b < 0) b = v->unk;
            if (b >= 0) nm_ids_push(out, b);
        }
    }
}

nm_status nm_bpe_tokenize(const nm_vocab *v, const char *text, size_t len, nm_ids *out, nm_err *err) {
    if (len == 0) return NM_OK;
    if (len > UINT32_MAX / 4) return nm_err_set(err, NM_ERR_RANGE, "tokenize: text of %zu bytes is too long", len);
    size_t *words, n_words;
    nm_status st = nm_pretok_split(v->pretok, text, len, &words, &n_words, err);
    if (st) return st;
    work w = {0};
    for (size_t i = 0; i < n_words && !w.oom; i++)
        bpe_word(v, &w, (const uint8_t *)text + words[2 * i], words[2 * i + 1], out);
    if (w.oom) st = nm_err_set(err, NM_ERR_NOMEM, "tokenize: out of memory");
    free(w.enc);
    free(w.s);
    nm_heap_free(&w.h);
    free(words);
    return st;
}
