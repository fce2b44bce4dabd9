/* convert.c - GGUF to GGUF rewrites, optionally changing the type of the
 * weight matrices.  With no type change the output is byte-identical to the
 * input (same key order, same tensor order and layout). */
#include "base/base.h"
#include "tensor/types.h"

#include <stdlib.h>
#include <string.h>

/* llama.cpp's `general.file_type` (enum llama_ftype) for a whole-model type. */
static int ftype_for(nm_type t) {
    switch (t) {
    case NM_TYPE_F32: return 0;
    case NM_TYPE_F16: return 1;
    case NM_TYPE_Q4_0: return 2;
    case NM_TYPE_Q4_1: return 3;
    case NM_TYPE_Q8_0: return 7;
    case NM_TYPE_Q5_0: return 8;
    case NM_TYPE_Q5_1: return 9;
    case NM_TYPE_Q6_K: return 18;
    case NM_TYPE_BF16: return 32;
    default: return -1;
    }
}

/* Which tensors a type change applies to: the 2-D weight matrices.  Norms
 * and other 1-D tensors stay F32, as llama.cpp keeps them. */
static bool is_weight_matrix(const nm_gguf_tensor *t) {
    size_t n = strlen(t->name);
    return t->n_dims == 2 && n > 7 && strcmp(t->name + n - 7, ".weight") == 0;
}

nm_status nm_gguf_convert(const char *in_path, const char *out_path, int type, const nm_log *log, nm_err *err) {
    nm_gguf *g;
    nm_status st = nm_gguf_open(in_path, &g, err);
    if (st) return st;
    if (type >= 0 && !nm_type_can_quantize((nm_type)type)) {
        const char *nm = nm_type_name((uint32_t)type);
        nm_gguf_free(g);
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "converting to type %s is not supported", nm ? nm : "(unknown)");
    }
    nm_gguf_writer *w = nm_gguf_writer_new(nm_gguf_version(g));
    if (!w) {
        nm_gguf_free(g);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    for (int64_t i = 0; i < nm_gguf_n_kv(g) && !st; i++)
        if (nm_gguf_writer_copy_kv(w, g, i)) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    /* Record the new whole-model type the way llama.cpp's quantize does. */
    if (!st && type >= 0) {
        if (nm_type_traits_get((uint32_t)type)->is_quantized)
            nm_gguf_writer_set_u32(w, "general.quantization_version", 2);
        if (ftype_for((nm_type)type) >= 0)
            nm_gguf_writer_set_u32(w, "general.file_type", (uint32_t)ftype_for((nm_type)type));
    }
    int64_t n_converted = 0;
    float *row = NULL;
    for (int64_t i = 0; i < nm_gguf_n_tensors(g) && !st; i++) {
        const nm_gguf_tensor *t = nm_gguf_tensor_at(g, i);
        bool change = type >= 0 && (uint32_t)type != t->type && is_weight_matrix(t);
        if (change && nm_type_row_bytes((nm_type)type, t->ne[0]) == 0) {
            nm_logf(log, NM_LOG_WARN, "%s: row length %lld does not fit %s blocks; kept as %s", t->name,
                    (long long)t->ne[0], nm_type_name((uint32_t)type), nm_type_name(t->type));
            change = false;
        }
        if (change && !nm_type_can_dequantize((nm_type)t->type)) {
            st = nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: tensor '%s' of type %s cannot be read for conversion",
                            in_path, t->name, nm_type_name(t->type));
            break;
        }
        if (!change) {
            st = nm_gguf_writer_add_tensor(w, t->name, (nm_type)t->type, t->n_dims, t->ne, t->data, t->nbytes, err);
            continue;
        }
        /* Convert row by row: peak extra memory is the output tensor. */
        int64_t n_rows = t->ne[1] * t->ne[2] * t->ne[3];
        size_t in_rb = nm_type_row_bytes((nm_type)t->type, t->ne[0]);
        size_t out_rb = nm_type_row_bytes((nm_type)type, t->ne[0]);
        uint8_t *dst = nm_calloc((size_t)n_rows, out_rb);
        free(row);
        row = nm_calloc((size_t)t->ne[0], sizeof(float));
        if (!dst || !row) {
            free(dst);
            st = nm_err_set(err, NM_ERR_NOMEM, "out of memory converting '%s'", t->name);
            break;
        }
        for (int64_t r = 0; r < n_rows; r++) {
            nm_dequantize((nm_type)t->type, (const uint8_t *)t->data + (size_t)r * in_rb, row, t->ne[0], NULL);
            nm_quantize((nm_type)type, row, dst + (size_t)r * out_rb, t->ne[0], NULL);
        }
        st = nm_gguf_writer_add_tensor_owned(w, t->name, (nm_type)type, t->n_dims, t->ne, dst,
                                             (uint64_t)n_rows * out_rb, err);
        n_converted++;
    }
    free(row);
    if (!st) st = nm_gguf_writer_write(w, out_path, err);
    if (!st && type >= 0)
        nm_logf(log, NM_LOG_INFO, "converted %lld tensors to %s", (long long)n_converted, nm_type_name((uint32_t)type));
    nm_gguf_writer_free(w);
    nm_gguf_free(g);
    return st;
}
