/* derive.c - a smaller student made from the teacher's own layers
 * (`--init-from-teacher every-2nd-layer` or `0,2,4`): the embeddings, the
 * final norm, the output head and the chosen blocks, renumbered, in a new
 * GGUF with the teacher's metadata and tokenizer and block_count changed.
 * every-Nth-layer counts from the last block down: the last block, whose
 * output the final norm and the head were trained to read, is always kept. */
#include "base/base.h"
#include "model/fingerprint.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* "every-2nd-layer" / "every-3rd-layer" / "every-N" or "0,2,4". */
nm_status nm_distill_layers_parse(const char *spec, int64_t n_layer, int32_t *layers, size_t *n, nm_err *err) {
    *n = 0;
    if (!spec || !*spec) return nm_err_set(err, NM_ERR_ARG, "no layer list given");
    if (!strncmp(spec, "every-", 6)) {
        char *end;
        long step = strtol(spec + 6, &end, 10);
        const char *suf = end;
        if (!strncmp(suf, "st", 2) || !strncmp(suf, "nd", 2) || !strncmp(suf, "rd", 2) || !strncmp(suf, "th", 2))
            suf += 2;
        if (!strcmp(suf, "-layer")) suf += 6;
        if (end == spec + 6 || *suf || step < 1 || step > n_layer)
            return nm_err_set(err, NM_ERR_ARG, "bad layer choice '%s' (every-2nd-layer, every-3rd-layer, or a list "
                              "such as 0,2,4)", spec);
        /* counted from the last block down, so that the last is kept */
        int64_t first = (n_layer - 1) % step;
        for (int64_t l = first; l < n_layer; l += step) layers[(*n)++] = (int32_t)l;
        return NM_OK;
    }
    const char *p = spec;
    while (*p) {
        if (!isdigit((unsigned char)*p)) break;
        char *end;
        long l = strtol(p, &end, 10);
        if (l < 0 || l >= n_layer)
            return nm_err_set(err, NM_ERR_ARG, "layer %ld is outside the teacher's %lld layers", l, (long long)n_layer);
        for (size_t i = 0; i < *n; i++)
            if (layers[i] == l) return nm_err_set(err, NM_ERR_ARG, "layer %ld is listed twice", l);
        layers[(*n)++] = (int32_t)l;
        p = end;
        if (*p != ',') break;
        if (!isdigit((unsigned char)*++p)) return nm_err_set(err, NM_ERR_ARG, "bad layer list '%s'", spec);
    }
    if (*p || *n == 0)
        return nm_err_set(err, NM_ERR_ARG, "bad layer choice '%s' (every-2nd-layer, every-3rd-layer, or a list such "
                          "as 0,2,4)", spec);
    return NM_OK;
}

/* blk.N.rest -> N and the rest; -1 when name is not a block tensor. */
static long block_of(const char *name, const char **rest) {
    if (strncmp(name, "blk.", 4)) return -1;
    char *end;
    long l = strtol(name + 4, &end, 10);
    if (end == name + 4 || *end != '.') return -1;
    *rest = end + 1;
    return l;
}

nm_status nm_distill_derive(const char *teacher, const char *spec, const char *out, const nm_log *log, nm_err *err) {
    nm_gguf *g;
    nm_status st = nm_gguf_open(teacher, &g, err);
    if (st) return st;
    nm_gguf_writer *w = NULL;
    int32_t *layers = NULL;
    nm_str arch;
    uint64_t n_layer;
    char key[160];
    if ((st = nm_gguf_get_str(g, "general.architecture", &arch, err))) goto done;
    snprintf(key, sizeof key, "%.*s.block_count", (int)(arch.len < 100 ? arch.len : 100), arch.ptr);
    if ((st = nm_gguf_get_u64(g, key, &n_layer, err))) goto done;
    if (n_layer < 1 || n_layer > 4096) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: %llu layers", teacher, (unsigned long long)n_layer);
        goto done;
    }
    layers = nm_calloc(n_layer, sizeof *layers);
    if (!layers) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    size_t n;
    if ((st = nm_distill_layers_parse(spec, (int64_t)n_layer, layers, &n, err))) goto done;
    w = nm_gguf_writer_new(3);
    if (!w) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int64_t i = 0; i < nm_gguf_n_kv(g) && !st; i++) st = nm_gguf_writer_copy_kv(w, g, i);
    if (!st) st = nm_gguf_writer_set_u32(w, key, (uint32_t)n);
    char fp[NM_FP_HEX], list[4096];
    nm_base_fingerprint(g, fp);
    size_t len = 0;
    list[0] = 0;
    for (size_t i = 0; i < n && len < sizeof list - 16; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%d", i ? "," : "", layers[i]);
    if (!st) st = nm_gguf_writer_set_str(w, "nomoat.distill.teacher_fingerprint", fp);
    if (!st) st = nm_gguf_writer_set_str(w, "nomoat.distill.teacher_layers", list);
    if (st) {
        st = nm_err_set(err, st, "out of memory");
        goto done;
    }
    for (int64_t i = 0; i < nm_gguf_n_tensors(g) && !st; i++) {
        const nm_gguf_tensor *t = nm_gguf_tensor_at(g, i);
        const char *rest;
        long b = block_of(t->name, &rest);
        if (b < 0) {
            st = nm_gguf_writer_add_tensor(w, t->name, (nm_type)t->type, t->n_dims, t->ne, t->data, t->nbytes, err);
            continue;
        }
        for (size_t j = 0; j < n; j++)
            if (layers[j] == b) {
                char name[256];
                snprintf(name, sizeof name, "blk.%zu.%s", j, rest);
                st = nm_gguf_writer_add_tensor(w, name, (nm_type)t->type, t->n_dims, t->ne, t->data, t->nbytes, err);
            }
    }
    if (!st) st = nm_gguf_writer_write(w, out, err);
    if (!st) nm_logf(log, NM_LOG_INFO, "%s: %zu of the %llu layers of %s (%s)", out, n, (unsigned long long)n_layer,
                     teacher, list);
done:
    nm_gguf_writer_free(w);
    free(layers);
    nm_gguf_free(g);
    return st;
}
