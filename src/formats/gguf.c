/*
 * gguf.c - GGUF reader (memory-mapped, validating) and writer.
 *
 * File layout (little-endian):
 *   "GGUF" u32 version  u64 n_tensors  u64 n_kv
 *   n_kv x { string key, u32 type, value }
 *   n_tensors x { string name, u32 n_dims, n_dims x u64 ne, u32 type, u64 offset }
 *   zero padding to `general.alignment` (default 32)
 *   tensor data; each tensor starts at data_start + offset (aligned)
 * where string = u64 length + bytes (no NUL) and an array value is
 * u32 element type, u64 count, elements (arrays may nest).
 *
 * The reader treats every file as hostile.  Nothing is read before the bytes
 * behind it are known to be inside the file, counts are bounded by the bytes
 * left before anything is allocated, and all size arithmetic is checked for
 * overflow.  Every failure names the file and the offending item.
 */
#include "base/base.h"
#include "tensor/types.h"

#include <stdlib.h>
#include <string.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_MAX_DEPTH 8 /* nested arrays deeper than this are rejected */

typedef struct gguf_kv {
    nm_str key;
    uint32_t type;
    uint64_t val_off; /* file offset of the value (after the type tag) */
    uint64_t val_len; /* bytes of the encoded value                  */
    uint32_t arr_type;
    uint64_t arr_n;
    uint64_t *str_offs; /* arrays of strings: file offset of each string */
} gguf_kv;

struct nm_gguf {
    nm_map map; /* owned mapping when opened from a path */
    const uint8_t *base;
    size_t size;
    char *path;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    int64_t n_kv;
    gguf_kv *kv;
    int64_t n_tensors;
    nm_gguf_tensor *tensors;
};

/* ---- a bounds-checked cursor over the file ---- */

typedef struct cursor {
    const uint8_t *base;
    uint64_t size, pos;
    const char *name;
    nm_err *err;
} cursor;

static nm_status truncated(cursor *c, const char *what) {
    return nm_err_set(c->err, NM_ERR_FORMAT, "%s: truncated file: %s at offset %llu runs past the end (%llu bytes)",
                      c->name, what, (unsigned long long)c->pos, (unsigned long long)c->size);
}

static bool have(const cursor *c, uint64_t n) { return n <= c->size - c->pos; }

static nm_status rd_u32(cursor *c, uint32_t *v, const char *what) {
    if (!have(c, 4)) return truncated(c, what);
    *v = nm_rd_u32(c->base + c->pos);
    c->pos += 4;
    return NM_OK;
}

static nm_status rd_u64(cursor *c, uint64_t *v, const char *what) {
    if (!have(c, 8)) return truncated(c, what);
    *v = nm_rd_u64(c->base + c->pos);
    c->pos += 8;
    return NM_OK;
}

static nm_status rd_str(cursor *c, nm_str *s, const char *what) {
    uint64_t n;
    nm_status st = rd_u64(c, &n, what);
    if (st) return st;
    if (!have(c, n))
        return nm_err_set(c->err, NM_ERR_FORMAT, "%s: %s: string length %llu at offset %llu runs past the end of the file",
                          c->name, what, (unsigned long long)n, (unsigned long long)(c->pos - 8));
    s->ptr = (const char *)c->base + c->pos;
    s->len = n;
    c->pos += n;
    return NM_OK;
}

static size_t scalar_size(uint32_t t) {
    switch (t) {
    case NM_GGUF_UINT8: case NM_GGUF_INT8: case NM_GGUF_BOOL: return 1;
    case NM_GGUF_UINT16: case NM_GGUF_INT16: return 2;
    case NM_GGUF_UINT32: case NM_GGUF_INT32: case NM_GGUF_FLOAT32: return 4;
    case NM_GGUF_UINT64: case NM_GGUF_INT64: case NM_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static const char *vtype_name(uint32_t t) {
    static const char *names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                  "string", "array", "u64", "i64", "f64"};
    return t < NM_GGUF_VTYPE_COUNT ? names[t] : "unknown";
}

/* Skips over one value of type t, validating it. */
static nm_status skip_value(cursor *c, uint32_t t, int depth, const char *key) {
    size_t sz = scalar_size(t);
    if (sz) {
        if (!have(c, sz)) return truncated(c, key);
        c->pos += sz;
        return NM_OK;
    }
    if (t == NM_GGUF_STRING) {
        nm_str s;
        return rd_str(c, &s, key);
    }
    if (t != NM_GGUF_ARRAY)
        return nm_err_set(c->err, NM_ERR_FORMAT, "%s: key '%s': unknown value type %u", c->name, key, t);
    if (depth >= GGUF_MAX_DEPTH)
        return nm_err_set(c->err, NM_ERR_FORMAT, "%s: key '%s': arrays nested deeper than %d", c->name, key,
                          GGUF_MAX_DEPTH);
    uint32_t et;
    uint64_t n;
    nm_status st = rd_u32(c, &et, key);
    if (!st) st = rd_u64(c, &n, key);
    if (st) return st;
    size_t esz = scalar_size(et);
    if (esz) {
        uint64_t bytes;
        if (!nm_mul_ok(n, esz, &bytes) || !have(c, bytes))
            return nm_err_set(c->err, NM_ERR_FORMAT, "%s: key '%s': array of %llu %s runs past the end of the file",
                              c->name, key, (unsigned long long)n, vtype_name(et));
        c->pos += bytes;
        return NM_OK;
    }
    if (et != NM_GGUF_STRING && et != NM_GGUF_ARRAY)
        return nm_err_set(c->err, NM_ERR_FORMAT, "%s: key '%s': unknown array element type %u", c->name, key, et);
    /* Every string or nested array takes at least 8 bytes: bound n first. */
    if (n > (c->size - c->pos) / 8)
        return nm_err_set(c->err, NM_ERR_FORMAT, "%s: key '%s': array count %llu larger than the file allows",
                          c->name, key, (unsigned long long)n);
    for (uint64_t i = 0; i < n; i++) {
        st = skip_value(c, et, depth + 1, key);
        if (st) return st;
    }
    return NM_OK;
}

void nm_gguf_free(nm_gguf *g) {
    if (!g) return;
    for (int64_t i = 0; i < g->n_kv; i++) free(g->kv[i].str_offs);
    free(g->kv);
    if (g->tensors)
        for (int64_t i = 0; i < g->n_tensors; i++) free((char *)g->tensors[i].name);
    free(g->tensors);
    nm_map_close(&g->map);
    free(g->path);
    free(g);
}

static bool str_eq(nm_str s, const char *z) {
    size_t n = strlen(z);
    return s.len == n && memcmp(s.ptr, z, n) == 0;
}

static int cmp_offset(const void *a, const void *b) {
    const nm_gguf_tensor *x = *(nm_gguf_tensor *const *)a, *y = *(nm_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Duplicate keys or tensor names make lookups ambiguous: reject them.
 * Sorting keeps this O(n log n) even for hostile files with many entries. */
static int cmp_str(const void *a, const void *b) {
    const nm_str *x = *(const nm_str *const *)a, *y = *(const nm_str *const *)b;
    size_t n = x->len < y->len ? (size_t)x->len : (size_t)y->len;
    int c = n ? memcmp(x->ptr, y->ptr, n) : 0;
    if (c) return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

static nm_status check_unique(const nm_gguf *g, nm_str *items, size_t n, const char *what, nm_err *err) {
    if (n < 2) return NM_OK;
    nm_str **idx = nm_calloc(n, sizeof *idx);
    if (!idx) return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory", g->path);
    for (size_t i = 0; i < n; i++) idx[i] = &items[i];
    qsort(idx, n, sizeof *idx, cmp_str);
    nm_status st = NM_OK;
    for (size_t i = 1; i < n && !st; i++)
        if (cmp_str(&idx[i - 1], &idx[i]) == 0)
            st = nm_err_set(err, NM_ERR_FORMAT, "%s: duplicate %s '%.*s'", g->path, what,
                            (int)(idx[i]->len < 200 ? idx[i]->len : 200), idx[i]->ptr);
    free(idx);
    return st;
}

static nm_status check_unique_keys(const nm_gguf *g, nm_err *err) {
    nm_str *keys = nm_calloc((size_t)g->n_kv + 1, sizeof *keys);
    if (!keys) return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory", g->path);
    for (int64_t i = 0; i < g->n_kv; i++) keys[i] = g->kv[i].key;
    nm_status st = check_unique(g, keys, (size_t)g->n_kv, "key", err);
    free(keys);
    return st;
}

static nm_status check_unique_names(const nm_gguf *g, nm_err *err) {
    nm_str *names = nm_calloc((size_t)g->n_tensors + 1, sizeof *names);
    if (!names) return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory", g->path);
    for (int64_t i = 0; i < g->n_tensors; i++) {
        names[i].ptr = g->tensors[i].name;
        names[i].len = strlen(g->tensors[i].name);
    }
    nm_status st = check_unique(g, names, (size_t)g->n_tensors, "tensor name", err);
    free(names);
    return st;
}

/* Key lookup is a linear scan: files hold tens of keys and lookups happen at
 * load time only. */
int64_t nm_gguf_find_key(const nm_gguf *g, const char *key) {
    for (int64_t i = 0; i < g->n_kv; i++)
        if (str_eq(g->kv[i].key, key)) return i;
    return -1;
}

static nm_status parse(nm_gguf *g, nm_err *err) {
    cursor c = {g->base, g->size, 0, g->path, err};
    nm_status st;
    if (g->size < 4 || memcmp(g->base, GGUF_MAGIC, 4) != 0)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: not a GGUF file (bad magic)", g->path);
    c.pos = 4;
    if ((st = rd_u32(&c, &g->version, "version"))) return st;
    if (g->version == 1)
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: GGUF version 1 is not supported (convert it with a newer llama.cpp)",
                          g->path);
    if (g->version != 2 && g->version != 3) {
        if ((g->version & 0xffff) == 0)
            return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: big-endian GGUF files are not supported", g->path);
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: unknown GGUF version %u", g->path, g->version);
    }
    uint64_t n_tensors, n_kv;
    if ((st = rd_u64(&c, &n_tensors, "tensor count"))) return st;
    if ((st = rd_u64(&c, &n_kv, "metadata count"))) return st;
    /* A key/value takes >= 13 bytes (8 len + 4 type + 1), a tensor info
     * >= 28 (8 len + 4 dims + 8 ne + 4 type + 8 offset - name bytes). */
    if (n_kv > (g->size - c.pos) / 13)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: metadata count %llu is larger than the file can hold", g->path,
                          (unsigned long long)n_kv);
    if (n_tensors > (g->size - c.pos) / 28)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor count %llu is larger than the file can hold", g->path,
                          (unsigned long long)n_tensors);

    g->kv = nm_calloc(n_kv ? n_kv : 1, sizeof *g->kv);
    if (!g->kv) return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        char what[64];
        snprintf(what, sizeof what, "key #%llu", (unsigned long long)i);
        if ((st = rd_str(&c, &kv->key, what))) return st;
        g->n_kv = (int64_t)i + 1;
        char keyz[256];
        snprintf(keyz, sizeof keyz, "%.*s", (int)(kv->key.len < 200 ? kv->key.len : 200), kv->key.ptr);
        if ((st = rd_u32(&c, &kv->type, keyz))) return st;
        kv->val_off = c.pos;
        if (kv->type == NM_GGUF_ARRAY) {
            if (!have(&c, 12)) return truncated(&c, keyz);
            kv->arr_type = nm_rd_u32(c.base + c.pos);
            kv->arr_n = nm_rd_u64(c.base + c.pos + 4);
        }
        if ((st = skip_value(&c, kv->type, 0, keyz))) return st;
        kv->val_len = c.pos - kv->val_off;
        if (kv->type == NM_GGUF_ARRAY && kv->arr_type == NM_GGUF_STRING) {
            /* Index the strings once so nm_gguf_arr_str is O(1). */
            kv->str_offs = nm_calloc(kv->arr_n ? kv->arr_n : 1, sizeof(uint64_t));
            if (!kv->str_offs) return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory", g->path);
            uint64_t p = kv->val_off + 12;
            for (uint64_t j = 0; j < kv->arr_n; j++) {
                kv->str_offs[j] = p;
                p += 8 + nm_rd_u64(c.base + p); /* validated by skip_value */
            }
        }
    }
    g->n_kv = (int64_t)n_kv;
    if ((st = check_unique_keys(g, err))) return st;

    g->alignment = NM_GGUF_DEFAULT_ALIGNMENT;
    int64_t ai = nm_gguf_find_key(g, "general.alignment");
    if (ai >= 0) {
        if (g->kv[ai].type != NM_GGUF_UINT32)
            return nm_err_set(err, NM_ERR_FORMAT, "%s: general.alignment must be a u32, not %s", g->path,
                              vtype_name(g->kv[ai].type));
        uint32_t a = nm_rd_u32(g->base + g->kv[ai].val_off);
        if (a == 0 || (a & (a - 1)) != 0)
            return nm_err_set(err, NM_ERR_FORMAT, "%s: general.alignment %u is not a power of two", g->path, a);
        g->alignment = a;
    }

    g->tensors = nm_calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
    if (!g->tensors) return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < n_tensors; i++) {
        nm_gguf_tensor *t = &g->tensors[i];
        char what[64];
        snprintf(what, sizeof what, "tensor #%llu", (unsigned long long)i);
        nm_str name;
        if ((st = rd_str(&c, &name, what))) return st;
        t->name = nm_strndup(name.ptr, name.len);
        g->n_tensors = (int64_t)i + 1;
        if (!t->name) return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory", g->path);
        if (strlen(t->name) != name.len)
            return nm_err_set(err, NM_ERR_FORMAT, "%s: %s: name contains a NUL byte", g->path, what);
        if ((st = rd_u32(&c, &t->n_dims, t->name))) return st;
        if (t->n_dims == 0 || t->n_dims > NM_GGUF_MAX_DIMS)
            return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s': %u dimensions (1 to %d allowed)", g->path, t->name,
                              t->n_dims, NM_GGUF_MAX_DIMS);
        for (int d = 0; d < NM_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        uint64_t nelem = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t ne;
            if ((st = rd_u64(&c, &ne, t->name))) return st;
            if (ne > (uint64_t)INT64_MAX || !nm_mul_ok(nelem, ne, &nelem) || nelem > (uint64_t)INT64_MAX)
                return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s': dimensions overflow", g->path, t->name);
            t->ne[d] = (int64_t)ne;
        }
        if ((st = rd_u32(&c, &t->type, t->name))) return st;
        const nm_type_traits *tr = nm_type_traits_get(t->type);
        if (!tr)
            return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: tensor '%s': unknown tensor type id %u", g->path, t->name,
                              t->type);
        if (t->ne[0] % tr->blck_size != 0)
            return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s': row length %lld is not a multiple of the %s block size %lld",
                              g->path, t->name, (long long)t->ne[0], tr->name, (long long)tr->blck_size);
        uint64_t nbytes = (uint64_t)(t->ne[0] / tr->blck_size);
        for (int d = 1; d < NM_GGUF_MAX_DIMS && nbytes; d++)
            if (!nm_mul_ok(nbytes, (uint64_t)t->ne[d], &nbytes))
                return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s': size overflows", g->path, t->name);
        if (t->ne[0] == 0) nbytes = 0;
        if (!nm_mul_ok(nbytes, tr->type_size, &nbytes))
            return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s': size overflows", g->path, t->name);
        t->nbytes = nbytes;
        if ((st = rd_u64(&c, &t->offset, t->name))) return st;
        if (t->offset % g->alignment != 0)
            return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s': offset %llu is not aligned to %u", g->path, t->name,
                              (unsigned long long)t->offset, g->alignment);
    }

    if ((st = check_unique_names(g, err))) return st;

    g->data_offset = nm_align_up(c.pos, g->alignment);
    if (n_tensors > 0 && g->data_offset > g->size)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: truncated file: no tensor data section", g->path);
    uint64_t data_size = g->data_offset <= g->size ? g->size - g->data_offset : 0;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        nm_gguf_tensor *t = &g->tensors[i];
        uint64_t end;
        if (!nm_add_ok(t->offset, t->nbytes, &end) || end > data_size)
            return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s': data [%llu, +%llu) lies outside the data section (%llu bytes)",
                              g->path, t->name, (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                              (unsigned long long)data_size);
        t->data = g->base + g->data_offset + t->offset;
    }
    /* Overlapping tensors would let a write through one corrupt another (and
     * are never produced by a correct writer). */
    if (g->n_tensors > 1) {
        nm_gguf_tensor **order = nm_calloc((size_t)g->n_tensors, sizeof *order);
        if (!order) return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory", g->path);
        for (int64_t i = 0; i < g->n_tensors; i++) order[i] = &g->tensors[i];
        qsort(order, (size_t)g->n_tensors, sizeof *order, cmp_offset);
        for (int64_t i = 1; i < g->n_tensors; i++) {
            if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset) {
                st = nm_err_set(err, NM_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", g->path, order[i - 1]->name,
                                order[i]->name);
                free(order);
                return st;
            }
        }
        free(order);
    }
    return NM_OK;
}

nm_status nm_gguf_open_buffer(const void *buf, size_t size, const char *name, nm_gguf **out, nm_err *err) {
    *out = NULL;
    nm_gguf *g = calloc(1, sizeof *g);
    if (!g) return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory", name);
    g->path = nm_strdup(name ? name : "(buffer)");
    g->base = buf;
    g->size = size;
    nm_status st = g->path ? parse(g, err) : nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    if (st) {
        nm_gguf_free(g);
        return st;
    }
    *out = g;
    return NM_OK;
}

static nm_status gguf_open(const char *path, bool read_all, nm_gguf **out, nm_err *err) {
    *out = NULL;
    nm_map m;
    nm_status st = read_all ? nm_map_read(&m, path, err) : nm_map_open(&m, path, err);
    if (st) return st;
    nm_gguf *g;
    st = nm_gguf_open_buffer(m.data, m.size, path, &g, err);
    if (st) {
        nm_map_close(&m);
        return st;
    }
    g->map = m;
    *out = g;
    return NM_OK;
}

nm_status nm_gguf_open(const char *path, nm_gguf **out, nm_err *err) { return gguf_open(path, false, out, err); }

nm_status nm_gguf_open_read(const char *path, nm_gguf **out, nm_err *err) { return gguf_open(path, true, out, err); }

nm_status nm_gguf_set_writable(nm_gguf *g, bool writable, nm_err *err) {
    return nm_map_set_writable(&g->map, writable, err);
}

/* ---- accessors ---- */

uint32_t nm_gguf_version(const nm_gguf *g) { return g->version; }
uint32_t nm_gguf_alignment(const nm_gguf *g) { return g->alignment; }
uint64_t nm_gguf_data_offset(const nm_gguf *g) { return g->data_offset; }
const char *nm_gguf_path(const nm_gguf *g) { return g->path; }
size_t nm_gguf_file_size(const nm_gguf *g) { return g->size; }
int64_t nm_gguf_n_kv(const nm_gguf *g) { return g->n_kv; }
int64_t nm_gguf_n_tensors(const nm_gguf *g) { return g->n_tensors; }

static bool kv_ok(const nm_gguf *g, int64_t i) { return i >= 0 && i < g->n_kv; }

nm_str nm_gguf_key(const nm_gguf *g, int64_t i) {
    nm_str none = {"", 0};
    return kv_ok(g, i) ? g->kv[i].key : none;
}

nm_gguf_vtype nm_gguf_kv_type(const nm_gguf *g, int64_t i) {
    return kv_ok(g, i) ? (nm_gguf_vtype)g->kv[i].type : NM_GGUF_VTYPE_COUNT;
}

nm_gguf_vtype nm_gguf_arr_type(const nm_gguf *g, int64_t i) {
    return kv_ok(g, i) && g->kv[i].type == NM_GGUF_ARRAY ? (nm_gguf_vtype)g->kv[i].arr_type : NM_GGUF_VTYPE_COUNT;
}

uint64_t nm_gguf_arr_n(const nm_gguf *g, int64_t i) {
    return kv_ok(g, i) && g->kv[i].type == NM_GGUF_ARRAY ? g->kv[i].arr_n : 0;
}

const void *nm_gguf_arr_data(const nm_gguf *g, int64_t i) {
    if (!kv_ok(g, i) || g->kv[i].type != NM_GGUF_ARRAY || !scalar_size(g->kv[i].arr_type)) return NULL;
    return g->base + g->kv[i].val_off + 12;
}

nm_str nm_gguf_arr_str(const nm_gguf *g, int64_t i, uint64_t j) {
    nm_str s = {"", 0};
    if (!kv_ok(g, i) || !g->kv[i].str_offs || j >= g->kv[i].arr_n) return s;
    const uint8_t *p = g->base + g->kv[i].str_offs[j];
    s.len = nm_rd_u64(p);
    s.ptr = (const char *)p + 8;
    return s;
}

const void *nm_gguf_kv_raw(const nm_gguf *g, int64_t i, size_t *len) {
    if (!kv_ok(g, i)) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = (size_t)g->kv[i].val_len;
    return g->base + g->kv[i].val_off;
}

const nm_gguf_tensor *nm_gguf_tensor_at(const nm_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const nm_gguf_tensor *nm_gguf_find_tensor(const nm_gguf *g, const char *name) {
    for (int64_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0) return &g->tensors[i];
    return NULL;
}

/* ---- typed getters ---- */

static nm_status lookup(const nm_gguf *g, const char *key, int64_t *idx, nm_err *err) {
    *idx = nm_gguf_find_key(g, key);
    if (*idx < 0) return nm_err_set(err, NM_ERR_NOT_FOUND, "%s: key '%s' not found", g->path, key);
    return NM_OK;
}

/* Reads an integer value of any width; *neg tells a negative signed one. */
static bool read_int(const nm_gguf *g, int64_t i, uint64_t *mag, bool *neg) {
    const uint8_t *p = g->base + g->kv[i].val_off;
    *neg = false;
    switch (g->kv[i].type) {
    case NM_GGUF_UINT8: *mag = p[0]; return true;
    case NM_GGUF_UINT16: *mag = nm_rd_u16(p); return true;
    case NM_GGUF_UINT32: *mag = nm_rd_u32(p); return true;
    case NM_GGUF_UINT64: *mag = nm_rd_u64(p); return true;
    case NM_GGUF_INT8: case NM_GGUF_INT16: case NM_GGUF_INT32: case NM_GGUF_INT64: {
        int64_t v;
        if (g->kv[i].type == NM_GGUF_INT8) v = (int8_t)p[0];
        else if (g->kv[i].type == NM_GGUF_INT16) v = (int16_t)nm_rd_u16(p);
        else if (g->kv[i].type == NM_GGUF_INT32) v = (int32_t)nm_rd_u32(p);
        else v = (int64_t)nm_rd_u64(p);
        *neg = v < 0;
        *mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
        return true;
    }
    default: return false;
    }
}

nm_status nm_gguf_get_u64(const nm_gguf *g, const char *key, uint64_t *v, nm_err *err) {
    int64_t i;
    nm_status st = lookup(g, key, &i, err);
    if (st) return st;
    uint64_t mag;
    bool neg;
    if (!read_int(g, i, &mag, &neg) || neg)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: key '%s' is not a non-negative integer (%s)", g->path, key,
                          vtype_name(g->kv[i].type));
    *v = mag;
    return NM_OK;
}

nm_status nm_gguf_get_i64(const nm_gguf *g, const char *key, int64_t *v, nm_err *err) {
    int64_t i;
    nm_status st = lookup(g, key, &i, err);
    if (st) return st;
    uint64_t mag;
    bool neg;
    if (!read_int(g, i, &mag, &neg) || (!neg && mag > (uint64_t)INT64_MAX) || (neg && mag > (uint64_t)INT64_MAX + 1))
        return nm_err_set(err, NM_ERR_FORMAT, "%s: key '%s' is not an integer that fits 64 bits (%s)", g->path, key,
                          vtype_name(g->kv[i].type));
    *v = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    return NM_OK;
}

nm_status nm_gguf_get_u32(const nm_gguf *g, const char *key, uint32_t *v, nm_err *err) {
    uint64_t x;
    nm_status st = nm_gguf_get_u64(g, key, &x, err);
    if (st) return st;
    if (x > UINT32_MAX)
        return nm_err_set(err, NM_ERR_RANGE, "%s: key '%s' = %llu does not fit 32 bits", g->path, key,
                          (unsigned long long)x);
    *v = (uint32_t)x;
    return NM_OK;
}

nm_status nm_gguf_get_f64(const nm_gguf *g, const char *key, double *v, nm_err *err) {
    int64_t i;
    nm_status st = lookup(g, key, &i, err);
    if (st) return st;
    const uint8_t *p = g->base + g->kv[i].val_off;
    if (g->kv[i].type == NM_GGUF_FLOAT32) {
        uint32_t b = nm_rd_u32(p);
        float f;
        memcpy(&f, &b, 4);
        *v = f;
    } else if (g->kv[i].type == NM_GGUF_FLOAT64) {
        uint64_t b = nm_rd_u64(p);
        memcpy(v, &b, 8);
    } else {
        uint64_t mag;
        bool neg;
        if (!read_int(g, i, &mag, &neg))
            return nm_err_set(err, NM_ERR_FORMAT, "%s: key '%s' is not a number (%s)", g->path, key,
                              vtype_name(g->kv[i].type));
        *v = neg ? -(double)mag : (double)mag;
    }
    return NM_OK;
}

nm_status nm_gguf_get_f32(const nm_gguf *g, const char *key, float *v, nm_err *err) {
    double d;
    nm_status st = nm_gguf_get_f64(g, key, &d, err);
    if (!st) *v = (float)d;
    return st;
}

nm_status nm_gguf_get_bool(const nm_gguf *g, const char *key, bool *v, nm_err *err) {
    int64_t i;
    nm_status st = lookup(g, key, &i, err);
    if (st) return st;
    if (g->kv[i].type != NM_GGUF_BOOL)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: key '%s' is not a bool (%s)", g->path, key,
                          vtype_name(g->kv[i].type));
    *v = g->base[g->kv[i].val_off] != 0;
    return NM_OK;
}

nm_status nm_gguf_get_str(const nm_gguf *g, const char *key, nm_str *v, nm_err *err) {
    int64_t i;
    nm_status st = lookup(g, key, &i, err);
    if (st) return st;
    if (g->kv[i].type != NM_GGUF_STRING)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: key '%s' is not a string (%s)", g->path, key,
                          vtype_name(g->kv[i].type));
    const uint8_t *p = g->base + g->kv[i].val_off;
    v->len = nm_rd_u64(p);
    v->ptr = (const char *)p + 8;
    return NM_OK;
}

/* ------------------------------------------------------------------------ */
/* Writer                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct wkv {
    char *key;
    uint32_t type;
    nm_buf val; /* encoded value, exactly as it goes into the file */
} wkv;

typedef struct wtensor {
    char *name;
    uint32_t type;
    uint32_t n_dims;
    int64_t ne[NM_GGUF_MAX_DIMS];
    const void *data;
    void *owned;
    uint64_t nbytes;
    nm_gguf_fill_fn fill; /* produces the data at write time when data is NULL */
    void *fill_user;
} wtensor;

struct nm_gguf_writer {
    uint32_t version;
    wkv *kv;
    size_t n_kv, cap_kv;
    wtensor *t;
    size_t n_t, cap_t;
    bool oom;
};

nm_gguf_writer *nm_gguf_writer_new(uint32_t version) {
    nm_gguf_writer *w = calloc(1, sizeof *w);
    if (w) w->version = version ? version : 3;
    return w;
}

void nm_gguf_writer_free(nm_gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        nm_buf_deinit(&w->kv[i].val);
    }
    free(w->kv);
    for (size_t i = 0; i < w->n_t; i++) {
        free(w->t[i].name);
        free(w->t[i].owned);
    }
    free(w->t);
    free(w);
}

/* Returns the slot for key (existing or appended), with its value cleared. */
static wkv *kv_slot(nm_gguf_writer *w, const char *key) {
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kv[i].key, key) == 0) {
            w->kv[i].val.len = 0;
            return &w->kv[i];
        }
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? w->cap_kv * 2 : 32;
        wkv *p = realloc(w->kv, cap * sizeof *p);
        if (!p) return NULL;
        w->kv = p;
        w->cap_kv = cap;
    }
    wkv *kv = &w->kv[w->n_kv];
    memset(kv, 0, sizeof *kv);
    kv->key = nm_strdup(key);
    if (!kv->key) return NULL;
    w->n_kv++;
    return kv;
}

static nm_status set_raw(nm_gguf_writer *w, const char *key, uint32_t type, const void *p, size_t n) {
    wkv *kv = kv_slot(w, key);
    if (!kv) {
        w->oom = true;
        return NM_ERR_NOMEM;
    }
    kv->type = type;
    nm_buf_push(&kv->val, p, n);
    if (kv->val.oom) w->oom = true;
    return kv->val.oom ? NM_ERR_NOMEM : NM_OK;
}

/* Values are stored little-endian; this code assumes a little-endian host
 * (x86-64, aarch64), as ggml does. */
nm_status nm_gguf_writer_set_u8(nm_gguf_writer *w, const char *k, uint8_t v) { return set_raw(w, k, NM_GGUF_UINT8, &v, 1); }
nm_status nm_gguf_writer_set_i8(nm_gguf_writer *w, const char *k, int8_t v) { return set_raw(w, k, NM_GGUF_INT8, &v, 1); }
nm_status nm_gguf_writer_set_u16(nm_gguf_writer *w, const char *k, uint16_t v) { return set_raw(w, k, NM_GGUF_UINT16, &v, 2); }
nm_status nm_gguf_writer_set_i16(nm_gguf_writer *w, const char *k, int16_t v) { return set_raw(w, k, NM_GGUF_INT16, &v, 2); }
nm_status nm_gguf_writer_set_u32(nm_gguf_writer *w, const char *k, uint32_t v) { return set_raw(w, k, NM_GGUF_UINT32, &v, 4); }
nm_status nm_gguf_writer_set_i32(nm_gguf_writer *w, const char *k, int32_t v) { return set_raw(w, k, NM_GGUF_INT32, &v, 4); }
nm_status nm_gguf_writer_set_u64(nm_gguf_writer *w, const char *k, uint64_t v) { return set_raw(w, k, NM_GGUF_UINT64, &v, 8); }
nm_status nm_gguf_writer_set_i64(nm_gguf_writer *w, const char *k, int64_t v) { return set_raw(w, k, NM_GGUF_INT64, &v, 8); }
nm_status nm_gguf_writer_set_f32(nm_gguf_writer *w, const char *k, float v) { return set_raw(w, k, NM_GGUF_FLOAT32, &v, 4); }
nm_status nm_gguf_writer_set_f64(nm_gguf_writer *w, const char *k, double v) { return set_raw(w, k, NM_GGUF_FLOAT64, &v, 8); }
nm_status nm_gguf_writer_set_bool(nm_gguf_writer *w, const char *k, bool v) {
    uint8_t b = v ? 1 : 0;
    return set_raw(w, k, NM_GGUF_BOOL, &b, 1);
}

nm_status nm_gguf_writer_set_strn(nm_gguf_writer *w, const char *key, const char *v, size_t len) {
    wkv *kv = kv_slot(w, key);
    if (!kv) {
        w->oom = true;
        return NM_ERR_NOMEM;
    }
    kv->type = NM_GGUF_STRING;
    nm_buf_push_u64(&kv->val, len);
    nm_buf_push(&kv->val, v, len);
    if (kv->val.oom) w->oom = true;
    return kv->val.oom ? NM_ERR_NOMEM : NM_OK;
}

nm_status nm_gguf_writer_set_str(nm_gguf_writer *w, const char *key, const char *v) {
    return nm_gguf_writer_set_strn(w, key, v, strlen(v));
}

nm_status nm_gguf_writer_set_arr(nm_gguf_writer *w, const char *key, nm_gguf_vtype et, const void *data, uint64_t n) {
    size_t esz = scalar_size(et);
    uint64_t bytes;
    if (!esz || !nm_mul_ok(n, esz, &bytes)) return NM_ERR_ARG;
    wkv *kv = kv_slot(w, key);
    if (!kv) {
        w->oom = true;
        return NM_ERR_NOMEM;
    }
    kv->type = NM_GGUF_ARRAY;
    nm_buf_push_u32(&kv->val, et);
    nm_buf_push_u64(&kv->val, n);
    nm_buf_push(&kv->val, data, (size_t)bytes);
    if (kv->val.oom) w->oom = true;
    return kv->val.oom ? NM_ERR_NOMEM : NM_OK;
}

nm_status nm_gguf_writer_set_arr_str(nm_gguf_writer *w, const char *key, const char *const *strs, uint64_t n) {
    wkv *kv = kv_slot(w, key);
    if (!kv) {
        w->oom = true;
        return NM_ERR_NOMEM;
    }
    kv->type = NM_GGUF_ARRAY;
    nm_buf_push_u32(&kv->val, NM_GGUF_STRING);
    nm_buf_push_u64(&kv->val, n);
    for (uint64_t i = 0; i < n; i++) {
        size_t len = strlen(strs[i]);
        nm_buf_push_u64(&kv->val, len);
        nm_buf_push(&kv->val, strs[i], len);
    }
    if (kv->val.oom) w->oom = true;
    return kv->val.oom ? NM_ERR_NOMEM : NM_OK;
}

nm_status nm_gguf_writer_copy_kv(nm_gguf_writer *w, const nm_gguf *g, int64_t i) {
    if (!kv_ok(g, i)) return NM_ERR_ARG;
    char *key = nm_strndup(g->kv[i].key.ptr, g->kv[i].key.len);
    if (!key) return NM_ERR_NOMEM;
    nm_status st = set_raw(w, key, g->kv[i].type, g->base + g->kv[i].val_off, (size_t)g->kv[i].val_len);
    free(key);
    return st;
}

nm_status nm_gguf_writer_remove(nm_gguf_writer *w, const char *key) {
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kv[i].key, key) == 0) {
            free(w->kv[i].key);
            nm_buf_deinit(&w->kv[i].val);
            memmove(&w->kv[i], &w->kv[i + 1], (w->n_kv - i - 1) * sizeof *w->kv);
            w->n_kv--;
            return NM_OK;
        }
    return NM_ERR_NOT_FOUND;
}

static nm_status add_tensor(nm_gguf_writer *w, const char *name, nm_type type, uint32_t n_dims, const int64_t *ne,
                            const void *data, void *owned, uint64_t nbytes, nm_err *err) {
    const nm_type_traits *tr = nm_type_traits_get(type);
    if (!tr) return nm_err_set(err, NM_ERR_ARG, "tensor '%s': unknown type %d", name, (int)type);
    if (n_dims == 0 || n_dims > NM_GGUF_MAX_DIMS)
        return nm_err_set(err, NM_ERR_ARG, "tensor '%s': %u dimensions", name, n_dims);
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return nm_err_set(err, NM_ERR_ARG, "tensor '%s' added twice", name);
    uint64_t nel = 1;
    for (uint32_t d = 0; d < n_dims; d++)
        if (ne[d] < 0 || !nm_mul_ok(nel, (uint64_t)ne[d], &nel))
            return nm_err_set(err, NM_ERR_ARG, "tensor '%s': bad dimensions", name);
    if (ne[0] % tr->blck_size)
        return nm_err_set(err, NM_ERR_ARG, "tensor '%s': row length %lld is not a multiple of the %s block size",
                          name, (long long)ne[0], tr->name);
    uint64_t want = nel / (uint64_t)tr->blck_size * tr->type_size;
    if (want != nbytes)
        return nm_err_set(err, NM_ERR_ARG, "tensor '%s': %llu bytes given, %llu expected", name,
                          (unsigned long long)nbytes, (unsigned long long)want);
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? w->cap_t * 2 : 64;
        wtensor *p = realloc(w->t, cap * sizeof *p);
        if (!p) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        w->t = p;
        w->cap_t = cap;
    }
    wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    t->name = nm_strdup(name);
    if (!t->name) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    t->type = type;
    t->n_dims = n_dims;
    for (int d = 0; d < NM_GGUF_MAX_DIMS; d++) t->ne[d] = d < (int)n_dims ? ne[d] : 1;
    t->data = data;
    t->owned = owned;
    t->nbytes = nbytes;
    w->n_t++;
    return NM_OK;
}

nm_status nm_gguf_writer_add_tensor(nm_gguf_writer *w, const char *name, nm_type type, uint32_t n_dims,
                                    const int64_t *ne, const void *data, uint64_t nbytes, nm_err *err) {
    return add_tensor(w, name, type, n_dims, ne, data, NULL, nbytes, err);
}

nm_status nm_gguf_writer_add_tensor_fn(nm_gguf_writer *w, const char *name, nm_type type, uint32_t n_dims,
                                       const int64_t *ne, uint64_t nbytes, nm_gguf_fill_fn fill, void *user,
                                       nm_err *err) {
    nm_status st = add_tensor(w, name, type, n_dims, ne, NULL, NULL, nbytes, err);
    if (!st) {
        w->t[w->n_t - 1].fill = fill;
        w->t[w->n_t - 1].fill_user = user;
    }
    return st;
}

nm_status nm_gguf_writer_add_tensor_owned(nm_gguf_writer *w, const char *name, nm_type type, uint32_t n_dims,
                                          const int64_t *ne, void *data, uint64_t nbytes, nm_err *err) {
    nm_status st = add_tensor(w, name, type, n_dims, ne, data, data, nbytes, err);
    if (st) free(data);
    return st;
}

static uint32_t writer_alignment(const nm_gguf_writer *w) {
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kv[i].key, "general.alignment") == 0 && w->kv[i].type == NM_GGUF_UINT32 && w->kv[i].val.len == 4) {
            uint32_t a = nm_rd_u32(w->kv[i].val.data);
            if (a && !(a & (a - 1))) return a;
        }
    return NM_GGUF_DEFAULT_ALIGNMENT;
}

nm_status nm_gguf_writer_write(nm_gguf_writer *w, const char *path, nm_err *err) {
    if (w->oom) return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory while building the file", path);
    uint32_t align = writer_alignment(w);
    /* Header and tensor infos are built in memory (small); data is streamed. */
    nm_buf h;
    nm_buf_init(&h);
    nm_buf_push(&h, GGUF_MAGIC, 4);
    nm_buf_push_u32(&h, w->version);
    nm_buf_push_u64(&h, w->n_t);
    nm_buf_push_u64(&h, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        size_t kl = strlen(w->kv[i].key);
        nm_buf_push_u64(&h, kl);
        nm_buf_push(&h, w->kv[i].key, kl);
        nm_buf_push_u32(&h, w->kv[i].type);
        nm_buf_push(&h, w->kv[i].val.data, w->kv[i].val.len);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        size_t nl = strlen(t->name);
        nm_buf_push_u64(&h, nl);
        nm_buf_push(&h, t->name, nl);
        nm_buf_push_u32(&h, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) nm_buf_push_u64(&h, (uint64_t)t->ne[d]);
        nm_buf_push_u32(&h, t->type);
        nm_buf_push_u64(&h, off);
        off = nm_align_up(off + t->nbytes, align);
    }
    static const uint8_t zeros[64];
    /* The data section (and the padding before it) exists only when there
     * are tensors: vocabulary-only files written by llama.cpp's tools end
     * right after the metadata. */
    size_t pad = w->n_t ? (size_t)(nm_align_up(h.len, align) - h.len) : 0;
    while (pad > 0) {
        size_t k = pad < sizeof zeros ? pad : sizeof zeros;
        nm_buf_push(&h, zeros, k);
        pad -= k;
    }
    if (h.oom) {
        nm_buf_deinit(&h);
        return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory", path);
    }
    nm_atomic_file af;
    nm_status st = nm_atomic_open(&af, path, err);
    if (st) {
        nm_buf_deinit(&h);
        return st;
    }
    st = nm_atomic_write(&af, h.data, h.len, err);
    nm_buf_deinit(&h);
    /* Tensors produced at write time share one buffer: peak memory is the
     * largest of them, not the file. */
    uint64_t fill_max = 0;
    for (size_t i = 0; i < w->n_t; i++)
        if (w->t[i].fill && w->t[i].nbytes > fill_max) fill_max = w->t[i].nbytes;
    void *fill_buf = NULL;
    if (!st && fill_max) {
        fill_buf = fill_max <= SIZE_MAX ? malloc((size_t)fill_max) : NULL;
        if (!fill_buf) st = nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory (%llu bytes)", path,
                                       (unsigned long long)fill_max);
    }
    for (size_t i = 0; i < w->n_t && !st; i++) {
        const wtensor *t = &w->t[i];
        const void *data = t->data;
        if (t->fill) {
            st = t->fill(t->fill_user, i, fill_buf, t->nbytes, err);
            data = fill_buf;
        }
        if (!st) st = nm_atomic_write(&af, data, (size_t)t->nbytes, err);
        size_t tp = (size_t)(nm_align_up(t->nbytes, align) - t->nbytes);
        while (!st && tp > 0) {
            size_t k = tp < sizeof zeros ? tp : sizeof zeros;
            st = nm_atomic_write(&af, zeros, k, err);
            tp -= k;
        }
    }
    free(fill_buf);
    if (st) {
        nm_atomic_abort(&af);
        return st;
    }
    return nm_atomic_commit(&af, err);
}

nm_status nm_gguf_writer_from(const nm_gguf *g, nm_gguf_writer **out, nm_err *err) {
    *out = NULL;
    nm_gguf_writer *w = nm_gguf_writer_new(g->version);
    if (!w) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < g->n_kv; i++)
        if (nm_gguf_writer_copy_kv(w, g, i)) {
            nm_gguf_writer_free(w);
            return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        }
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const nm_gguf_tensor *t = &g->tensors[i];
        nm_status st = nm_gguf_writer_add_tensor(w, t->name, (nm_type)t->type, t->n_dims, t->ne, t->data, t->nbytes, err);
        if (st) {
            nm_gguf_writer_free(w);
            return st;
        }
    }
    *out = w;
    return NM_OK;
}
