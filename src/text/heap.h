/*
 * heap.h - the priority queue of candidate merges shared by spm.c and
 * bpe.c: a 4-ary min-heap of 16-byte items keyed by one 64-bit integer
 * (priority in the high half, left symbol index in the low half, so ties go
 * to the leftmost pair).  Four children fill one 64-byte cache line, which
 * matters when a megabyte without spaces puts a million pairs in the heap.
 */
#ifndef NM_TEXT_HEAP_H
#define NM_TEXT_HEAP_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct nm_heap_item {
    uint64_t key;   /* (priority << 32) | left: smaller pops first */
    uint32_t a, b;  /* payload: lengths used to recognise stale pairs */
} nm_heap_item;

typedef struct nm_heap {
    nm_heap_item *mem; /* allocation; items live at mem + 3 so that the
                          children 4i+1..4i+4 of item i share a line */
    nm_heap_item *v;
    size_t n, cap;
    bool oom;
} nm_heap;

static inline void nm_heap_free(nm_heap *h) {
    free(h->mem);
    memset(h, 0, sizeof *h);
}

static inline bool nm_heap_reserve(nm_heap *h, size_t need) {
    if (need <= h->cap) return true;
    size_t cap = h->cap ? h->cap : 256;
    while (cap < need) cap *= 2;
    if (cap > SIZE_MAX / sizeof(nm_heap_item) - 8) {
        h->oom = true;
        return false;
    }
    nm_heap_item *m = aligned_alloc(64, (cap + 8) * sizeof(nm_heap_item));
    if (!m) {
        h->oom = true;
        return false;
    }
    if (h->n) memcpy(m + 3, h->v, h->n * sizeof(nm_heap_item));
    free(h->mem);
    h->mem = m;
    h->v = m + 3;
    h->cap = cap;
    return true;
}

static inline void nm_heap_sift_up(nm_heap_item *v, size_t i, nm_heap_item x) {
    while (i > 0) {
        size_t p = (i - 1) / 4;
        if (v[p].key <= x.key) break;
        v[i] = v[p];
        i = p;
    }
    v[i] = x;
}

static inline void nm_heap_push(nm_heap *h, nm_heap_item x) {
    if (h->oom || (h->n == h->cap && !nm_heap_reserve(h, h->n + 1))) return;
    nm_heap_sift_up(h->v, h->n++, x);
}

static inline void nm_heap_sift_down(nm_heap_item *v, size_t n, size_t i, nm_heap_item x) {
    for (;;) {
        size_t c = 4 * i + 1;
        if (c >= n) break;
        size_t end = c + 4 < n ? c + 4 : n, best = c;
        for (size_t k = c + 1; k < end; k++)
            if (v[k].key < v[best].key) best = k;
        if (v[best].key >= x.key) break;
        v[i] = v[best];
        i = best;
    }
    v[i] = x;
}

static inline nm_heap_item nm_heap_pop(nm_heap *h) {
    nm_heap_item top = h->v[0];
    nm_heap_item last = h->v[--h->n];
    if (h->n > 0) nm_heap_sift_down(h->v, h->n, 0, last);
    return top;
}

/* Appends without ordering; call nm_heap_build before popping. */
static inline void nm_heap_append(nm_heap *h, nm_heap_item x) {
    if (h->oom || (h->n == h->cap && !nm_heap_reserve(h, h->n + 1))) return;
    h->v[h->n++] = x;
}

static inline void nm_heap_build(nm_heap *h) {
    if (h->n < 2) return;
    for (size_t i = (h->n - 2) / 4 + 1; i-- > 0;) nm_heap_sift_down(h->v, h->n, i, h->v[i]);
}

#endif
