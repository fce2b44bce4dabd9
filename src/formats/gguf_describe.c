/* gguf_describe.c - human and JSON descriptions of a GGUF file (what
 * `nomoat info` prints).  Long arrays (vocabularies, merges) are summarised
 * by type and length, with their first few items in the text form. */
#include "base/base.h"

#include <math.h>
#include <string.h>

#define SHOW_ITEMS 8

static void put_float(nm_buf *b, double v, bool json) {
    if (json && !isfinite(v)) nm_buf_printf(b, "null");
    else nm_buf_printf(b, "%.9g", v);
}

/* Appends element j (fixed-size scalar) of type t at p. */
static void put_scalar(nm_buf *b, nm_gguf_vtype t, const uint8_t *p, bool json) {
    uint64_t u;
    float f;
    double d;
    switch (t) {
    case NM_GGUF_UINT8: nm_buf_printf(b, "%u", p[0]); break;
    case NM_GGUF_INT8: nm_buf_printf(b, "%d", (int8_t)p[0]); break;
    case NM_GGUF_UINT16: nm_buf_printf(b, "%u", nm_rd_u16(p)); break;
    case NM_GGUF_INT16: nm_buf_printf(b, "%d", (int16_t)nm_rd_u16(p)); break;
    case NM_GGUF_UINT32: nm_buf_printf(b, "%u", nm_rd_u32(p)); break;
    case NM_GGUF_INT32: nm_buf_printf(b, "%d", (int32_t)nm_rd_u32(p)); break;
    case NM_GGUF_UINT64: nm_buf_printf(b, "%llu", (unsigned long long)nm_rd_u64(p)); break;
    case NM_GGUF_INT64: nm_buf_printf(b, "%lld", (long long)(int64_t)nm_rd_u64(p)); break;
    case NM_GGUF_FLOAT32:
        u = nm_rd_u32(p);
        memcpy(&f, &u, 4);
        put_float(b, f, json);
        break;
    case NM_GGUF_FLOAT64:
        u = nm_rd_u64(p);
        memcpy(&d, &u, 8);
        put_float(b, d, json);
        break;
    case NM_GGUF_BOOL: nm_buf_printf(b, "%s", p[0] ? "true" : "false"); break;
    default: nm_buf_printf(b, "?"); break;
    }
}

static size_t vsize(nm_gguf_vtype t) {
    switch (t) {
    case NM_GGUF_UINT8: case NM_GGUF_INT8: case NM_GGUF_BOOL: return 1;
    case NM_GGUF_UINT16: case NM_GGUF_INT16: return 2;
    case NM_GGUF_UINT32: case NM_GGUF_INT32: case NM_GGUF_FLOAT32: return 4;
    default: return 8;
    }
}

static const char *vname(nm_gguf_vtype t) {
    static const char *n[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
    return t < NM_GGUF_VTYPE_COUNT ? n[t] : "?";
}

static void put_str(nm_buf *b, nm_str s, bool json, size_t max) {
    size_t n = s.len < max ? (size_t)s.len : max;
    if (json) {
        nm_buf_json_str(b, s.ptr, n);
    } else {
        nm_buf_json_str(b, s.ptr, n); /* quoted and escaped in text mode too */
        if (n < s.len) nm_buf_printf(b, "...(%llu bytes)", (unsigned long long)s.len);
    }
}

static void put_value(nm_buf *b, const nm_gguf *g, int64_t i, bool json) {
    nm_gguf_vtype t = nm_gguf_kv_type(g, i);
    if (t == NM_GGUF_STRING) {
        size_t len;
        const uint8_t *p = nm_gguf_kv_raw(g, i, &len);
        nm_str s = {(const char *)p + 8, nm_rd_u64(p)};
        put_str(b, s, json, json ? (size_t)-1 : 200);
        return;
    }
    if (t != NM_GGUF_ARRAY) {
        put_scalar(b, t, nm_gguf_kv_raw(g, i, NULL), json);
        return;
    }
    nm_gguf_vtype et = nm_gguf_arr_type(g, i);
    uint64_t n = nm_gguf_arr_n(g, i);
    if (json && n <= 64) {
        nm_buf_printf(b, "[");
        for (uint64_t j = 0; j < n; j++) {
            if (j) nm_buf_printf(b, ", ");
            if (et == NM_GGUF_STRING) put_str(b, nm_gguf_arr_str(g, i, j), true, (size_t)-1);
            else if (et == NM_GGUF_ARRAY) nm_buf_printf(b, "null");
            else put_scalar(b, et, (const uint8_t *)nm_gguf_arr_data(g, i) + j * vsize(et), true);
        }
        nm_buf_printf(b, "]");
        return;
    }
    if (json) {
        nm_buf_printf(b, "{\"array_of\": \"%s\", \"length\": %llu}", vname(et), (unsigned long long)n);
        return;
    }
    nm_buf_printf(b, "[%s x %llu]", vname(et), (unsigned long long)n);
    if (et == NM_GGUF_ARRAY) return;
    nm_buf_printf(b, " ");
    for (uint64_t j = 0; j < n && j < SHOW_ITEMS; j++) {
        if (j) nm_buf_printf(b, ", ");
        if (et == NM_GGUF_STRING) put_str(b, nm_gguf_arr_str(g, i, j), false, 40);
        else put_scalar(b, et, (const uint8_t *)nm_gguf_arr_data(g, i) + j * vsize(et), false);
    }
    if (n > SHOW_ITEMS) nm_buf_printf(b, ", ...");
}

static bool key_has_prefix(nm_str k, const char *prefix, size_t plen) {
    return k.len > plen && memcmp(k.ptr, prefix, plen) == 0;
}

nm_status nm_gguf_describe(const nm_gguf *g, bool json, char **out, nm_err *err) {
    *out = NULL;
    nm_buf b;
    nm_buf_init(&b);
    nm_str arch = {"", 0};
    nm_gguf_get_str(g, "general.architecture", &arch, NULL);
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%.*s.", (int)(arch.len < 100 ? arch.len : 100), arch.ptr);
    size_t plen = strlen(prefix);
    uint64_t n_params = 0, n_bytes = 0;
    for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++) {
        const nm_gguf_tensor *t = nm_gguf_tensor_at(g, i);
        n_params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        n_bytes += t->nbytes;
    }
    nm_str tokm = {"", 0};
    nm_gguf_get_str(g, "tokenizer.ggml.model", &tokm, NULL);
    int64_t tok_i = nm_gguf_find_key(g, "tokenizer.ggml.tokens");
    uint64_t n_tok = tok_i >= 0 ? nm_gguf_arr_n(g, tok_i) : 0;

    if (json) {
        nm_buf_printf(&b, "{\"file\": ");
        nm_buf_json_str(&b, nm_gguf_path(g), strlen(nm_gguf_path(g)));
        nm_buf_printf(&b, ", \"file_size\": %zu, \"gguf_version\": %u, \"alignment\": %u, \"architecture\": ",
                      nm_gguf_file_size(g), nm_gguf_version(g), nm_gguf_alignment(g));
        if (arch.len) nm_buf_json_str(&b, arch.ptr, arch.len);
        else nm_buf_printf(&b, "null");
        nm_buf_printf(&b, ", \"hparams\": {");
        bool first = true;
        for (int64_t i = 0; i < nm_gguf_n_kv(g); i++) {
            nm_str k = nm_gguf_key(g, i);
            if (!arch.len || !key_has_prefix(k, prefix, plen)) continue;
            nm_buf_printf(&b, "%s", first ? "" : ", ");
            first = false;
            nm_buf_json_str(&b, k.ptr + plen, k.len - plen);
            nm_buf_printf(&b, ": ");
            put_value(&b, g, i, true);
        }
        nm_buf_printf(&b, "}, \"tokenizer\": {\"model\": ");
        if (tokm.len) nm_buf_json_str(&b, tokm.ptr, tokm.len);
        else nm_buf_printf(&b, "null");
        nm_buf_printf(&b, ", \"n_tokens\": %llu", (unsigned long long)n_tok);
        static const char *ids[] = {"bos", "eos", "eot", "unknown", "padding"};
        for (size_t j = 0; j < sizeof ids / sizeof ids[0]; j++) {
            char key[64];
            snprintf(key, sizeof key, "tokenizer.ggml.%s_token_id", ids[j]);
            uint32_t v;
            if (nm_gguf_get_u32(g, key, &v, NULL) == NM_OK) nm_buf_printf(&b, ", \"%s_id\": %u", ids[j], v);
        }
        nm_buf_printf(&b, "}, \"n_params\": %llu, \"tensor_bytes\": %llu, \"metadata\": {",
                      (unsigned long long)n_params, (unsigned long long)n_bytes);
        for (int64_t i = 0; i < nm_gguf_n_kv(g); i++) {
            nm_str k = nm_gguf_key(g, i);
            nm_buf_printf(&b, "%s", i ? ", " : "");
            nm_buf_json_str(&b, k.ptr, k.len);
            nm_buf_printf(&b, ": ");
            put_value(&b, g, i, true);
        }
        nm_buf_printf(&b, "}, \"tensors\": [");
        for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++) {
            const nm_gguf_tensor *t = nm_gguf_tensor_at(g, i);
            nm_buf_printf(&b, "%s{\"name\": ", i ? ", " : "");
            nm_buf_json_str(&b, t->name, strlen(t->name));
            nm_buf_printf(&b, ", \"type\": \"%s\", \"shape\": [", nm_type_name(t->type));
            for (uint32_t d = 0; d < t->n_dims; d++) nm_buf_printf(&b, "%s%lld", d ? ", " : "", (long long)t->ne[d]);
            nm_buf_printf(&b, "], \"bytes\": %llu, \"offset\": %llu}", (unsigned long long)t->nbytes,
                          (unsigned long long)t->offset);
        }
        nm_buf_printf(&b, "]}\n");
    } else {
        nm_buf_printf(&b, "file:          %s\n", nm_gguf_path(g));
        nm_buf_printf(&b, "format:        GGUF v%u, %zu bytes, alignment %u\n", nm_gguf_version(g),
                      nm_gguf_file_size(g), nm_gguf_alignment(g));
        nm_buf_printf(&b, "architecture:  %.*s\n", (int)arch.len, arch.len ? arch.ptr : "");
        nm_str name;
        if (nm_gguf_get_str(g, "general.name", &name, NULL) == NM_OK)
            nm_buf_printf(&b, "name:          %.*s\n", (int)(name.len < 200 ? name.len : 200), name.ptr);
        nm_buf_printf(&b, "parameters:    %llu in %lld tensors (%.2f MiB)\n", (unsigned long long)n_params,
                      (long long)nm_gguf_n_tensors(g), (double)n_bytes / 1048576.0);
        if (arch.len) {
            nm_buf_printf(&b, "hyper-parameters:\n");
            for (int64_t i = 0; i < nm_gguf_n_kv(g); i++) {
                nm_str k = nm_gguf_key(g, i);
                if (!key_has_prefix(k, prefix, plen)) continue;
                nm_buf_printf(&b, "  %-40.*s ", (int)(k.len - plen), k.ptr + plen);
                put_value(&b, g, i, false);
                nm_buf_printf(&b, "\n");
            }
        }
        nm_buf_printf(&b, "tokenizer:     %.*s, %llu tokens", (int)tokm.len, tokm.len ? tokm.ptr : "(none)",
                      (unsigned long long)n_tok);
        uint32_t v;
        if (nm_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &v, NULL) == NM_OK) nm_buf_printf(&b, ", bos %u", v);
        if (nm_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &v, NULL) == NM_OK) nm_buf_printf(&b, ", eos %u", v);
        nm_buf_printf(&b, "\nmetadata (%lld keys):\n", (long long)nm_gguf_n_kv(g));
        for (int64_t i = 0; i < nm_gguf_n_kv(g); i++) {
            nm_str k = nm_gguf_key(g, i);
            nm_buf_printf(&b, "  %-40.*s ", (int)(k.len < 200 ? k.len : 200), k.ptr);
            put_value(&b, g, i, false);
            nm_buf_printf(&b, "\n");
        }
        nm_buf_printf(&b, "tensors (%lld):\n", (long long)nm_gguf_n_tensors(g));
        nm_buf_printf(&b, "  %-32s %-6s %-24s %12s\n", "name", "type", "shape", "bytes");
        for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++) {
            const nm_gguf_tensor *t = nm_gguf_tensor_at(g, i);
            char shape[96] = "";
            size_t o = 0;
            for (uint32_t d = 0; d < t->n_dims && o < sizeof shape; d++)
                o += (size_t)snprintf(shape + o, sizeof shape - o, "%s%lld", d ? " x " : "", (long long)t->ne[d]);
            nm_buf_printf(&b, "  %-32s %-6s %-24s %12llu\n", t->name, nm_type_name(t->type), shape,
                          (unsigned long long)t->nbytes);
        }
    }
    nm_buf_push(&b, "", 1);
    if (b.oom) {
        nm_buf_deinit(&b);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    *out = (char *)b.data;
    return NM_OK;
}
