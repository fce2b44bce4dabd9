/* mem.c - allocation that fails cleanly, and a growable byte buffer. */
#include "base.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void *nm_calloc(size_t n, size_t size) {
    if (n == 0 || size == 0) return calloc(1, 1);
    if (n > SIZE_MAX / size) return NULL;
    return calloc(n, size);
}

char *nm_strndup(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

char *nm_strdup(const char *s) { return nm_strndup(s, strlen(s)); }

void nm_buf_init(nm_buf *b) { memset(b, 0, sizeof *b); }

void nm_buf_deinit(nm_buf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

static bool buf_reserve(nm_buf *b, size_t n) {
    if (b->oom) return false;
    if (n > SIZE_MAX - b->len) { b->oom = true; return false; }
    if (b->len + n <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) {
        if (cap > SIZE_MAX / 2) { cap = b->len + n; break; }
        cap *= 2;
    }
    uint8_t *p = realloc(b->data, cap);
    if (!p) { b->oom = true; return false; }
    b->data = p;
    b->cap = cap;
    return true;
}

void nm_buf_push(nm_buf *b, const void *p, size_t n) {
    if (n == 0 || !buf_reserve(b, n)) return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void nm_buf_push_u32(nm_buf *b, uint32_t v) {
    uint8_t t[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    nm_buf_push(b, t, 4);
}

void nm_buf_push_u64(nm_buf *b, uint64_t v) {
    nm_buf_push_u32(b, (uint32_t)v);
    nm_buf_push_u32(b, (uint32_t)(v >> 32));
}

void nm_buf_printf(nm_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !buf_reserve(b, (size_t)n + 1)) return;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void nm_buf_json_str(nm_buf *b, const char *s, size_t n) {
    nm_buf_push(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': nm_buf_push(b, "\\\"", 2); break;
        case '\\': nm_buf_push(b, "\\\\", 2); break;
        case '\n': nm_buf_push(b, "\\n", 2); break;
        case '\r': nm_buf_push(b, "\\r", 2); break;
        case '\t': nm_buf_push(b, "\\t", 2); break;
        default:
            if (c < 0x20) nm_buf_printf(b, "\\u%04x", c);
            else nm_buf_push(b, &s[i], 1);
        }
    }
    nm_buf_push(b, "\"", 1);
}
