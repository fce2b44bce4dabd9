/* quantize_model.c - `nomoat quantize`: a GGUF model rewritten with its
 * weight matrices in a quantized type or one of llama.cpp's mixes (see
 * quantize_model.h for the rules, which follow llama.cpp's
 * llama_tensor_get_type for LLaMA-family models).
 *
 * The output is written through the GGUF writer's fill callbacks, one
 * tensor at a time: memory holds the mapped input and one output tensor.
 * Each matrix is quantized by rows over a thread pool with the reference
 * quantizers of quants.c / quants_k.c (so a given input always gives the
 * same bytes, whatever the thread count), then dequantized again to
 * measure the error it introduced. */
#include "quantize_model.h"
#include "quants.h"
#include "types.h"
#include "base/base.h"
#include "base/threads.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct recipe {
    const char *name;
    nm_type base;
    bool mix;      /* Q4_K_M / Q5_K_M: attn_v, ffn_down get Q6_K in some layers */
    int ftype;     /* llama.cpp's general.file_type                        */
} recipe;

/* llama_ftype: MOSTLY_Q4_0 2, Q8_0 7, Q4_K_S 14, Q4_K_M 15, Q5_K_S 16,
 * Q5_K_M 17, Q6_K 18 ("q4_k" / "q5_k" are llama.cpp's --pure Q4_K_S /
 * Q5_K_S, which record those types). */
static const recipe RECIPES[] = {
    {"q8_0", NM_TYPE_Q8_0, false, 7},  {"q4_0", NM_TYPE_Q4_0, false, 2},  {"q4_k", NM_TYPE_Q4_K, false, 14},
    {"q5_k", NM_TYPE_Q5_K, false, 16}, {"q6_k", NM_TYPE_Q6_K, false, 18}, {"q4_k_m", NM_TYPE_Q4_K, true, 15},
    {"q5_k_m", NM_TYPE_Q5_K, true, 17},
};

static const recipe *find_recipe(const char *name) {
    for (size_t i = 0; name && i < sizeof RECIPES / sizeof RECIPES[0]; i++)
        if (strcasecmp(RECIPES[i].name, name) == 0) return &RECIPES[i];
    return NULL;
}

int nm_quant_recipe_type(const char *r) {
    const recipe *rc = find_recipe(r);
    return rc ? (int)rc->base : -1;
}

int nm_quant_recipe_ftype(const char *r) {
    const recipe *rc = find_recipe(r);
    return rc ? rc->ftype : -1;
}

/* llama.cpp's use_more_bits: the first and last eighth of the layers and
 * every third one between. */
static bool use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

static bool ends_with(const char *s, const char *suffix) {
    const size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* What llama.cpp quantizes: 2-D (or more) ".weight" tensors except norms. */
static bool is_quantizable(const char *name, int n_dims) {
    return n_dims >= 2 && ends_with(name, ".weight") && !strstr(name, "_norm.weight");
}

nm_type nm_quant_tensor_type(const char *r, bool pure, const char *name, int n_dims, int64_t ne0, nm_type stored,
                             int layer, int n_layers, bool has_output) {
    const recipe *rc = find_recipe(r);
    if (!rc || !is_quantizable(name, n_dims)) return stored;
    nm_type t = rc->base;
    if (!pure) {
        const bool is_output = strcmp(name, "output.weight") == 0 || (!has_output && strcmp(name, "token_embd.weight") == 0);
        if (is_output) {
            if (ne0 % NM_QK_K != 0) t = NM_TYPE_Q8_0;
            else if (t != NM_TYPE_Q8_0) t = NM_TYPE_Q6_K;
        } else if (strstr(name, "attn_qkv.weight") && rc->mix) {
            t = rc->base == NM_TYPE_Q4_K ? NM_TYPE_Q5_K : NM_TYPE_Q6_K;
        } else if (rc->mix && layer >= 0 && (strstr(name, "attn_v.weight") || strstr(name, "ffn_down")) &&
                   use_more_bits(layer, n_layers)) {
            t = NM_TYPE_Q6_K;
        }
    }
    /* rows that do not fit the blocks: llama.cpp's fallbacks */
    if (ne0 % nm_type_block_size(t) != 0) {
        t = t == NM_TYPE_Q4_K ? NM_TYPE_Q5_0 : t == NM_TYPE_Q5_K ? NM_TYPE_Q5_1 : t == NM_TYPE_Q6_K ? NM_TYPE_Q8_0 : t;
        if (ne0 % nm_type_block_size(t) != 0) t = NM_TYPE_F16;
    }
    return t;
}

/* "blk.N." -> N, else -1 */
static int layer_of(const char *name) {
    if (strncmp(name, "blk.", 4) != 0) return -1;
    char *end;
    const long v = strtol(name + 4, &end, 10);
    return end != name + 4 && *end == '.' && v >= 0 && v < 1000000 ? (int)v : -1;
}

/* ---- one tensor ---- */

typedef struct qjob {
    const nm_gguf_tensor *t;
    nm_type to;
    int64_t rows, cols;
    size_t src_rb, dst_rb;
    bool copy;
    const nm_quantize_params *p;
    nm_pool *pool;
    /* per fill */
    uint8_t *dst;
    double *row_err, *row_w;
    float *scratch;  /* 2 * cols floats per thread */
} qjob;

typedef struct qctx {
    qjob *jobs;
    int64_t n_jobs;
    nm_pool *pool;
    const nm_quantize_params *p;
} qctx;

static void quant_rows(void *arg, int ith, int nth) {
    qjob *j = arg;
    const nm_type_traits *src = nm_type_traits_get(j->t->type), *dst = nm_type_traits_get(j->to);
    float *f = j->scratch + (size_t)ith * 2 * (size_t)j->cols, *g = f + j->cols;
    int64_t lo, hi;
    nm_split_range(j->rows, ith, nth, 1, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        src->to_float((const uint8_t *)j->t->data + (size_t)r * j->src_rb, f, j->cols);
        uint8_t *out = j->dst + (size_t)r * j->dst_rb;
        dst->from_float(f, out, j->cols);
        dst->to_float(out, g, j->cols);
        double e = 0, w = 0;
        for (int64_t i = 0; i < j->cols; i++) {
            const double d = (double)g[i] - f[i];
            e += d * d;
            w += (double)f[i] * f[i];
        }
        j->row_err[r] = e;
        j->row_w[r] = w;
    }
}

static nm_status fill(void *user, size_t index, void *buf, uint64_t nbytes, nm_err *err) {
    qctx *c = user;
    if (index >= (size_t)c->n_jobs) return nm_err_set(err, NM_ERR_INTERNAL, "quantize: tensor %zu out of range", index);
    qjob *j = &c->jobs[index];
    nm_quant_tensor_info info = {j->t->name, j->rows, j->cols, (nm_type)j->t->type, j->to, 0, 0, j->copy};
    if (j->copy) {
        memcpy(buf, j->t->data, (size_t)nbytes);
    } else {
        const int nth = nm_pool_size(c->pool);
        j->dst = buf;
        j->row_err = nm_calloc((size_t)j->rows, sizeof(double));
        j->row_w = nm_calloc((size_t)j->rows, sizeof(double));
        j->scratch = nm_calloc((size_t)nth * 2 * (size_t)j->cols, sizeof(float));
        if (!j->row_err || !j->row_w || !j->scratch) {
            free(j->row_err);
            free(j->row_w);
            free(j->scratch);
            return nm_err_set(err, NM_ERR_NOMEM, "out of memory quantizing %s", j->t->name);
        }
        nm_pool_run(c->pool, quant_rows, j);
        /* summed in row order: the same bits for any thread count */
        double e = 0, w = 0;
        for (int64_t r = 0; r < j->rows; r++) {
            e += j->row_err[r];
            w += j->row_w[r];
        }
        const double n = (double)j->rows * (double)j->cols;
        info.rms_err = sqrt(e / n);
        info.rms_w = sqrt(w / n);
        free(j->row_err);
        free(j->row_w);
        free(j->scratch);
    }
    if (c->p->on_tensor) c->p->on_tensor(c->p->user, &info);
    return NM_OK;
}

nm_status nm_quantize_model(const char *in_path, const char *out_path, const nm_quantize_params *p, const nm_log *log,
                            nm_err *err) {
    const recipe *rc = find_recipe(p->recipe);
    if (!rc)
        return nm_err_set(err, NM_ERR_ARG,
                          "unknown quantization type '%.40s' (q8_0, q4_0, q4_k, q5_k, q6_k, q4_k_m, q5_k_m)",
                          p->recipe ? p->recipe : "");
    nm_gguf *g;
    nm_status st = nm_gguf_open(in_path, &g, err);
    if (st) return st;
    const int64_t n_t = nm_gguf_n_tensors(g);
    qctx c = {.p = p};
    nm_gguf_writer *w = nm_gguf_writer_new(nm_gguf_version(g));
    c.jobs = nm_calloc(n_t > 0 ? (size_t)n_t : 1, sizeof *c.jobs);
    if (!w || !c.jobs) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto out;
    }
    if ((st = nm_pool_new(p->n_threads > 0 ? p->n_threads : nm_cpu_count(), &c.pool, err))) goto out;
    for (int64_t i = 0; i < nm_gguf_n_kv(g); i++)
        if (nm_gguf_writer_copy_kv(w, g, i)) {
            st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
            goto out;
        }
    if (nm_gguf_writer_set_u32(w, "general.quantization_version", 2) ||
        nm_gguf_writer_set_u32(w, "general.file_type", (uint32_t)rc->ftype)) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto out;
    }
    int n_layers = 0;
    for (int64_t i = 0; i < n_t; i++) {
        const int l = layer_of(nm_gguf_tensor_at(g, i)->name);
        if (l + 1 > n_layers) n_layers = l + 1;
    }
    const bool has_output = nm_gguf_find_tensor(g, "output.weight") != NULL;
    int64_t n_changed = 0;
    for (int64_t i = 0; i < n_t && !st; i++) {
        const nm_gguf_tensor *t = nm_gguf_tensor_at(g, i);
        qjob *j = &c.jobs[i];
        j->t = t;
        j->cols = t->ne[0];
        j->rows = t->ne[1] * t->ne[2] * t->ne[3];
        j->to = nm_quant_tensor_type(rc->name, p->pure, t->name, (int)t->n_dims, t->ne[0], (nm_type)t->type,
                                     layer_of(t->name), n_layers, has_output);
        j->copy = j->to == (nm_type)t->type;
        uint64_t nbytes = t->nbytes;
        if (!j->copy) {
            const nm_type_traits *src = nm_type_traits_get(t->type);
            if (!src || !src->to_float) {
                st = nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: tensor %s has type %s, which cannot be read as floats",
                                in_path, t->name, src ? src->name : "(unknown)");
                break;
            }
            j->src_rb = nm_type_row_bytes((nm_type)t->type, j->cols);
            j->dst_rb = nm_type_row_bytes(j->to, j->cols);
            if (j->src_rb == 0 || j->dst_rb == 0 || !nm_mul_ok(j->dst_rb, (uint64_t)j->rows, &nbytes)) {
                st = nm_err_set(err, NM_ERR_FORMAT, "%s: tensor %s: rows of %lld elements do not fit type %s", in_path,
                                t->name, (long long)j->cols, nm_type_name(j->to));
                break;
            }
            n_changed++;
        }
        st = nm_gguf_writer_add_tensor_fn(w, t->name, j->to, t->n_dims, t->ne, nbytes, fill, &c, err);
    }
    c.n_jobs = n_t;
    if (st) goto out;
    if (n_changed == 0)
        nm_logf(log, NM_LOG_WARN, "%s: no tensor changes type under %s (already quantized?)", in_path, rc->name);
    st = nm_gguf_writer_write(w, out_path, err);
out:
    nm_pool_free(c.pool);
    free(c.jobs);
    nm_gguf_writer_free(w);
    nm_gguf_free(g);
    return st;
}
