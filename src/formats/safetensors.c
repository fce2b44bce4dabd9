/* safetensors.c - a strict reader and a writer for Hugging Face's
 * safetensors format (adapters in PEFT layout, trainer checkpoints).
 *
 * Layout: u64 little-endian N, then N bytes of UTF-8 JSON (an object; the
 * writer pads it with spaces to a multiple of 8), then the data section.
 * Each JSON key other than "__metadata__" is a tensor:
 *   {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
 * with offsets relative to the data section.  "__metadata__" maps strings
 * to strings.
 *
 * The reader treats the file as hostile and applies the rules of the
 * reference implementation: header length within the file (and at most
 * 100 MB), valid JSON with no duplicate key, a known dtype, integer shape
 * and offsets, (end - begin) equal to the product of the shape times the
 * element size (overflow checked), ranges that do not overlap and tile the
 * data section from 0 to its end without holes, no unknown fields. */
#include "base/base.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define ST_MAX_HEADER (100u * 1000u * 1000u)

typedef struct st_meta {
    char *key, *value;
} st_meta;

struct nm_st {
    nm_map map; /* owned when opened from a path */
    const uint8_t *base;
    size_t size;
    char *path;
    uint64_t data_start;
    nm_st_tensor *t;
    int64_t n_t;
    st_meta *meta;
    int64_t n_meta;
};

static const struct {
    const char *name;
    size_t size;
} DTYPES[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"U64", 8}, {"I32", 4}, {"U32", 4},
    {"I16", 2}, {"U16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
};

size_t nm_st_dtype_size(const char *dtype) {
    if (!dtype) return 0;
    for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
        if (strcmp(DTYPES[i].name, dtype) == 0) return DTYPES[i].size;
    return 0;
}

/* The canonical (static) spelling of a dtype, so tensors need not own it. */
static const char *dtype_canon(const char *dtype) {
    for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
        if (strcmp(DTYPES[i].name, dtype) == 0) return DTYPES[i].name;
    return NULL;
}

void nm_st_free(nm_st *s) {
    if (!s) return;
    for (int64_t i = 0; i < s->n_t; i++) free((char *)s->t[i].name);
    free(s->t);
    for (int64_t i = 0; i < s->n_meta; i++) {
        free(s->meta[i].key);
        free(s->meta[i].value);
    }
    free(s->meta);
    free(s->path);
    nm_map_close(&s->map);
    free(s);
}

static int cmp_offset(const void *a, const void *b) {
    const nm_st_tensor *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    /* empty tensors share an offset with their neighbour: keep it stable */
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* A JSON integer >= 0 as uint64. */
static bool json_u64(const json_t *j, uint64_t *v) {
    if (!json_is_integer(j)) return false;
    json_int_t x = json_integer_value(j);
    if (x < 0) return false;
    *v = (uint64_t)x;
    return true;
}

static nm_status parse_tensor(nm_st *s, const char *name, json_t *o, uint64_t data_size, nm_st_tensor *t,
                              nm_err *err) {
    const char *p = s->path;
    if (!json_is_object(o)) return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s' is not a JSON object", p, name);
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s' has an unknown field '%s'", p, name, k);
    }
    json_t *jd = json_object_get(o, "dtype"), *js = json_object_get(o, "shape"),
           *jo = json_object_get(o, "data_offsets");
    if (!json_is_string(jd)) return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s' has no dtype string", p, name);
    t->dtype = dtype_canon(json_string_value(jd));
    if (!t->dtype)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s' has unknown dtype '%.32s'", p, name,
                          json_string_value(jd));
    if (!json_is_array(js) || json_array_size(js) > NM_ST_MAX_DIMS)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s': shape must be an array of at most %d integers", p,
                          name, NM_ST_MAX_DIMS);
    t->n_dims = (uint32_t)json_array_size(js);
    uint64_t n = 1;
    for (uint32_t i = 0; i < t->n_dims; i++) {
        uint64_t d;
        if (!json_u64(json_array_get(js, i), &d) || d > INT64_MAX)
            return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s': shape[%u] is not a non-negative integer", p,
                              name, i);
        t->shape[i] = (int64_t)d;
        if (!nm_mul_ok(n, d, &n))
            return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s': shape overflows", p, name);
    }
    uint64_t begin, end, bytes;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_u64(json_array_get(jo, 0), &begin) ||
        !json_u64(json_array_get(jo, 1), &end))
        return nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s': data_offsets must be [begin, end]", p, name);
    if (end < begin || end > data_size)
        return nm_err_set(err, NM_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets [%llu, %llu] lie outside the data section (%llu bytes)", p,
                          name, (unsigned long long)begin, (unsigned long long)end, (unsigned long long)data_size);
    if (!nm_mul_ok(n, nm_st_dtype_size(t->dtype), &bytes) || bytes != end - begin)
        return nm_err_set(err, NM_ERR_FORMAT,
                          "%s: tensor '%s': shape x %s needs %llu bytes but data_offsets span %llu", p, name,
                          t->dtype, (unsigned long long)bytes, (unsigned long long)(end - begin));
    t->offset = begin;
    t->nbytes = bytes;
    t->data = s->base + s->data_start + begin;
    t->name = nm_strdup(name);
    if (!t->name) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    return NM_OK;
}

static nm_status parse_meta(nm_st *s, json_t *o, nm_err *err) {
    if (!json_is_object(o)) return nm_err_set(err, NM_ERR_FORMAT, "%s: __metadata__ is not an object", s->path);
    s->meta = nm_calloc(json_object_size(o) + 1, sizeof *s->meta);
    if (!s->meta) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        if (!json_is_string(v))
            return nm_err_set(err, NM_ERR_FORMAT, "%s: __metadata__ value of '%s' is not a string", s->path, k);
        st_meta *m = &s->meta[s->n_meta++];
        m->key = nm_strdup(k);
        m->value = nm_strndup(json_string_value(v), json_string_length(v));
        if (!m->key || !m->value) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    return NM_OK;
}

nm_status nm_st_open_buffer(const void *buf, size_t size, const char *name, nm_st **out, nm_err *err) {
    *out = NULL;
    nm_st *s = nm_calloc(1, sizeof *s);
    if (!s) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    s->base = buf;
    s->size = size;
    s->path = nm_strdup(name ? name : "(buffer)");
    nm_status st = NM_OK;
    json_t *root = NULL;
    if (!s->path) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (size < 8) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: too short for a safetensors file (%zu bytes)", s->path, size);
        goto fail;
    }
    uint64_t hlen = nm_rd_u64(s->base);
    if (hlen < 2 || hlen > ST_MAX_HEADER || hlen > size - 8) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: header length %llu does not fit the file (%zu bytes)", s->path,
                        (unsigned long long)hlen, size);
        goto fail;
    }
    s->data_start = 8 + hlen;
    uint64_t data_size = size - s->data_start;
    if (s->base[8] != '{') {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: header is not a JSON object (it does not start with '{')", s->path);
        goto fail;
    }
    json_error_t je;
    root = json_loadb((const char *)s->base + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root || !json_is_object(root)) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: header is not a valid JSON object: %s (byte %d)", s->path,
                        root ? "not an object" : je.text, root ? 0 : je.position);
        goto fail;
    }
    s->t = nm_calloc(json_object_size(root) + 1, sizeof *s->t);
    if (!s->t) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto fail;
    }
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (strcmp(k, "__metadata__") == 0) {
            if ((st = parse_meta(s, v, err))) goto fail;
            continue;
        }
        if (!*k) {
            st = nm_err_set(err, NM_ERR_FORMAT, "%s: a tensor has an empty name", s->path);
            goto fail;
        }
        st = parse_tensor(s, k, v, data_size, &s->t[s->n_t], err);
        if (s->t[s->n_t].name) s->n_t++;
        if (st) goto fail;
    }
    qsort(s->t, (size_t)s->n_t, sizeof *s->t, cmp_offset);
    uint64_t at = 0;
    for (int64_t i = 0; i < s->n_t; i++) {
        if (s->t[i].offset != at) {
            st = nm_err_set(err, NM_ERR_FORMAT, "%s: tensor '%s' starts at %llu: %s at %llu", s->path, s->t[i].name,
                            (unsigned long long)s->t[i].offset,
                            s->t[i].offset < at ? "overlaps the data of the tensor before it, which ends"
                                                : "leaves a hole after the previous data, which ends",
                            (unsigned long long)at);
            goto fail;
        }
        at += s->t[i].nbytes;
    }
    if (at != data_size) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: tensors cover %llu of the %llu data bytes", s->path,
                        (unsigned long long)at, (unsigned long long)data_size);
        goto fail;
    }
    json_decref(root);
    *out = s;
    return NM_OK;
fail:
    json_decref(root);
    nm_st_free(s);
    return st;
}

nm_status nm_st_open(const char *path, nm_st **out, nm_err *err) {
    *out = NULL;
    nm_map m;
    nm_status st = nm_map_open(&m, path, err);
    if (st) return st;
    nm_st *s;
    st = nm_st_open_buffer(m.data, m.size, path, &s, err);
    if (st) {
        nm_map_close(&m);
        return st;
    }
    s->map = m;
    *out = s;
    return NM_OK;
}

int64_t nm_st_n_tensors(const nm_st *s) { return s->n_t; }

const nm_st_tensor *nm_st_tensor_at(const nm_st *s, int64_t i) {
    return i >= 0 && i < s->n_t ? &s->t[i] : NULL;
}

const nm_st_tensor *nm_st_find(const nm_st *s, const char *name) {
    for (int64_t i = 0; i < s->n_t; i++)
        if (strcmp(s->t[i].name, name) == 0) return &s->t[i];
    return NULL;
}

const char *nm_st_meta(const nm_st *s, const char *key) {
    for (int64_t i = 0; i < s->n_meta; i++)
        if (strcmp(s->meta[i].key, key) == 0) return s->meta[i].value;
    return NULL;
}

int64_t nm_st_n_meta(const nm_st *s) { return s->n_meta; }

void nm_st_meta_at(const nm_st *s, int64_t i, const char **key, const char **value) {
    *key = *value = NULL;
    if (i < 0 || i >= s->n_meta) return;
    *key = s->meta[i].key;
    *value = s->meta[i].value;
}

nm_status nm_st_read_f32(const nm_st *s, const nm_st_tensor *t, float *dst, nm_err *err) {
    const uint8_t *p = t->data;
    size_t es = nm_st_dtype_size(t->dtype);
    uint64_t n = t->nbytes / es;
    if (strcmp(t->dtype, "F32") == 0) {
        memcpy(dst, p, (size_t)t->nbytes);
    } else if (strcmp(t->dtype, "F16") == 0) {
        for (uint64_t i = 0; i < n; i++) dst[i] = nm_f16_to_f32(nm_rd_u16(p + 2 * i));
    } else if (strcmp(t->dtype, "BF16") == 0) {
        for (uint64_t i = 0; i < n; i++) dst[i] = nm_bf16_to_f32(nm_rd_u16(p + 2 * i));
    } else if (strcmp(t->dtype, "F64") == 0) {
        for (uint64_t i = 0; i < n; i++) {
            uint64_t u = nm_rd_u64(p + 8 * i);
            double d;
            memcpy(&d, &u, 8);
            dst[i] = (float)d;
        }
    } else {
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s, not a float type", s->path,
                          t->name, t->dtype);
    }
    return NM_OK;
}

/* ======================================================================== */
/* writer                                                                   */
/* ======================================================================== */

typedef struct st_wt {
    char *name;
    const char *dtype;
    uint32_t n_dims;
    int64_t shape[NM_ST_MAX_DIMS];
    const void *data;
    uint64_t nbytes;
} st_wt;

struct nm_st_writer {
    st_wt *t;
    int64_t n_t, cap_t;
    st_meta *meta;
    int64_t n_meta, cap_meta;
};

nm_st_writer *nm_st_writer_new(void) { return nm_calloc(1, sizeof(nm_st_writer)); }

void nm_st_writer_free(nm_st_writer *w) {
    if (!w) return;
    for (int64_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->t);
    for (int64_t i = 0; i < w->n_meta; i++) {
        free(w->meta[i].key);
        free(w->meta[i].value);
    }
    free(w->meta);
    free(w);
}

static bool grow(void **p, int64_t *cap, int64_t need, size_t elem) {
    if (need <= *cap) return true;
    int64_t nc = *cap ? *cap * 2 : 16;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, (size_t)nc * elem);
    if (!q) return false;
    *p = q;
    *cap = nc;
    return true;
}

nm_status nm_st_writer_meta(nm_st_writer *w, const char *key, const char *value, nm_err *err) {
    for (int64_t i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta[i].key, key) == 0) {
            char *v = nm_strdup(value);
            if (!v) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
            free(w->meta[i].value);
            w->meta[i].value = v;
            return NM_OK;
        }
    if (!grow((void **)&w->meta, &w->cap_meta, w->n_meta + 1, sizeof *w->meta))
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    st_meta *m = &w->meta[w->n_meta];
    m->key = nm_strdup(key);
    m->value = nm_strdup(value);
    if (!m->key || !m->value) {
        free(m->key);
        free(m->value);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    w->n_meta++;
    return NM_OK;
}

nm_status nm_st_writer_add(nm_st_writer *w, const char *name, const char *dtype, uint32_t n_dims,
                           const int64_t *shape, const void *data, uint64_t nbytes, nm_err *err) {
    const char *dt = dtype ? dtype_canon(dtype) : NULL;
    if (!name || !*name || strcmp(name, "__metadata__") == 0)
        return nm_err_set(err, NM_ERR_ARG, "safetensors: invalid tensor name");
    if (!dt) return nm_err_set(err, NM_ERR_ARG, "safetensors: tensor '%s': unknown dtype", name);
    if (n_dims > NM_ST_MAX_DIMS) return nm_err_set(err, NM_ERR_ARG, "safetensors: tensor '%s': too many dims", name);
    uint64_t n = nm_st_dtype_size(dt);
    for (uint32_t i = 0; i < n_dims; i++)
        if (shape[i] < 0 || !nm_mul_ok(n, (uint64_t)shape[i], &n))
            return nm_err_set(err, NM_ERR_ARG, "safetensors: tensor '%s': bad shape", name);
    if (n != nbytes)
        return nm_err_set(err, NM_ERR_ARG, "safetensors: tensor '%s': %llu bytes given, shape needs %llu", name,
                          (unsigned long long)nbytes, (unsigned long long)n);
    for (int64_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return nm_err_set(err, NM_ERR_ARG, "safetensors: tensor '%s' added twice", name);
    if (!grow((void **)&w->t, &w->cap_t, w->n_t + 1, sizeof *w->t))
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    st_wt *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    t->name = nm_strdup(name);
    if (!t->name) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    t->dtype = dt;
    t->n_dims = n_dims;
    for (uint32_t i = 0; i < n_dims; i++) t->shape[i] = shape[i];
    t->data = data;
    t->nbytes = nbytes;
    w->n_t++;
    return NM_OK;
}

nm_status nm_st_writer_write(nm_st_writer *w, const char *path, nm_err *err) {
    nm_buf h;
    nm_buf_init(&h);
    nm_buf_push(&h, "{", 1);
    bool first = true;
    if (w->n_meta) {
        nm_buf_printf(&h, "\"__metadata__\":{");
        for (int64_t i = 0; i < w->n_meta; i++) {
            if (i) nm_buf_push(&h, ",", 1);
            nm_buf_json_str(&h, w->meta[i].key, strlen(w->meta[i].key));
            nm_buf_push(&h, ":", 1);
            nm_buf_json_str(&h, w->meta[i].value, strlen(w->meta[i].value));
        }
        nm_buf_push(&h, "}", 1);
        first = false;
    }
    uint64_t off = 0;
    for (int64_t i = 0; i < w->n_t; i++) {
        const st_wt *t = &w->t[i];
        if (!first) nm_buf_push(&h, ",", 1);
        first = false;
        nm_buf_json_str(&h, t->name, strlen(t->name));
        nm_buf_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", t->dtype);
        for (uint32_t d = 0; d < t->n_dims; d++) nm_buf_printf(&h, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        nm_buf_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                      (unsigned long long)(off + t->nbytes));
        off += t->nbytes;
    }
    nm_buf_push(&h, "}", 1);
    while (h.len % 8) nm_buf_push(&h, " ", 1); /* data starts 8-byte aligned */
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
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)h.len >> (8 * i));
    st = nm_atomic_write(&af, len8, 8, err);
    if (!st) st = nm_atomic_write(&af, h.data, h.len, err);
    for (int64_t i = 0; i < w->n_t && !st; i++) st = nm_atomic_write(&af, w->t[i].data, (size_t)w->t[i].nbytes, err);
    nm_buf_deinit(&h);
    if (st) {
        nm_atomic_abort(&af);
        return st;
    }
    return nm_atomic_commit(&af, err);
}
