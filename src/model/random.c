/*
 * random.c - LLaMA-architecture GGUF files with random weights: models of
 * realistic shape for speed and memory measurements, and starting points
 * for training from scratch.
 *
 * The layout (metadata keys and their order, tensor names, shapes and order)
 * is that of shared/tools/make_random_gguf.py, so benchmarks made with
 * either agree: norms are float32 1 + 0.1 N(0,1), every 2-D matrix is
 * init_std * N(0,1) stored in the requested type, and the tokenizer.* keys
 * are copied verbatim from a real vocabulary.
 *
 * The values differ from the Python generator's (another RNG) but are a
 * pure function of the parameters, the seed and the vocabulary file: each
 * row of each tensor draws from its own stream seeded by (seed, tensor,
 * row), so the output does not depend on how many threads made it.
 */
#include "base/base.h"
#include "base/threads.h"
#include "tensor/types.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct preset {
    const char *name;
    int64_t dim, layers, heads, kv_heads, ffn, ctx;
} preset;

/* Same table as make_random_gguf.py. */
static const preset PRESETS[] = {
    {"tl1b", 2048, 22, 32, 4, 5632, 2048}, /* TinyLlama-1.1B shapes */
    {"m110", 768, 12, 12, 12, 2048, 1024}, /* stories110M shapes    */
    {"m15", 288, 6, 6, 6, 768, 256},       /* stories15M shapes     */
    {"t256", 256, 2, 4, 2, 768, 512},      /* widths fit every quant */
};
#define N_PRESETS (sizeof PRESETS / sizeof PRESETS[0])

#define DEFAULT_CTX 2048
#define DEFAULT_STD 0.02f
/* Bounds on any one hyper-parameter: far beyond real models, small enough
 * that the size arithmetic below cannot overflow before it is checked. */
#define MAX_DIM (1 << 20)
#define MAX_LAYERS 4096
#define MAX_CTX (1 << 24)

/* llama.cpp's general.file_type (enum llama_ftype) for the types we write. */
static int ftype_for(nm_type t) {
    switch (t) {
    case NM_TYPE_F32: return 0;
    case NM_TYPE_F16: return 1;
    case NM_TYPE_Q4_0: return 2;
    case NM_TYPE_Q8_0: return 7;
    case NM_TYPE_BF16: return 32;
    default: return -1;
    }
}

typedef struct shape {
    int64_t dim, layers, heads, kv_heads, ffn, ctx, vocab, head_dim;
} shape;

static const preset *find_preset(const char *name) {
    for (size_t i = 0; i < N_PRESETS; i++)
        if (strcmp(PRESETS[i].name, name) == 0) return &PRESETS[i];
    return NULL;
}

static nm_status check_range(const char *what, int64_t v, int64_t hi, nm_err *err) {
    if (v < 1 || v > hi)
        return nm_err_set(err, NM_ERR_ARG, "random model: %s %lld out of range (1..%lld)", what, (long long)v,
                          (long long)hi);
    return NM_OK;
}

/* Preset values overridden by the non-zero fields of p. */
static nm_status resolve_shape(const nm_new_params *p, shape *s, nm_err *err) {
    memset(s, 0, sizeof *s);
    if (p->preset) {
        const preset *pr = find_preset(p->preset);
        if (!pr)
            return nm_err_set(err, NM_ERR_ARG, "random model: unknown preset '%s' (tl1b, m110, m15, t256)", p->preset);
        s->dim = pr->dim;
        s->layers = pr->layers;
        s->heads = pr->heads;
        s->kv_heads = pr->kv_heads;
        s->ffn = pr->ffn;
        s->ctx = pr->ctx;
    }
    const int64_t given[6] = {p->dim, p->layers, p->heads, p->kv_heads, p->ffn, p->ctx};
    static const char *names[6] = {"dim", "layers", "heads", "kv_heads", "ffn", "ctx"};
    int64_t *dst[6] = {&s->dim, &s->layers, &s->heads, &s->kv_heads, &s->ffn, &s->ctx};
    for (int i = 0; i < 6; i++) {
        if (given[i] < 0)
            return nm_err_set(err, NM_ERR_ARG, "random model: %s %lld is negative", names[i], (long long)given[i]);
        if (given[i]) *dst[i] = given[i];
    }
    /* Without a preset: multi-head attention and a LLaMA-sized context
     * unless told otherwise; the rest has no sensible default. */
    if (!s->kv_heads) s->kv_heads = s->heads;
    if (!s->ctx) s->ctx = DEFAULT_CTX;
    for (int i = 0; i < 5; i++)
        if (!*dst[i])
            return nm_err_set(err, NM_ERR_ARG, "random model: %s is missing (give a preset or all of dim, layers, "
                              "heads, ffn)", names[i]);
    nm_status st;
    if ((st = check_range("dim", s->dim, MAX_DIM, err)) || (st = check_range("layers", s->layers, MAX_LAYERS, err)) ||
        (st = check_range("heads", s->heads, s->dim, err)) ||
        (st = check_range("kv_heads", s->kv_heads, s->heads, err)) ||
        (st = check_range("ffn", s->ffn, MAX_DIM, err)) || (st = check_range("ctx", s->ctx, MAX_CTX, err)))
        return st;
    if (s->dim % s->heads)
        return nm_err_set(err, NM_ERR_ARG, "random model: heads %lld does not divide dim %lld", (long long)s->heads,
                          (long long)s->dim);
    if (s->heads % s->kv_heads)
        return nm_err_set(err, NM_ERR_ARG, "random model: kv_heads %lld does not divide heads %lld",
                          (long long)s->kv_heads, (long long)s->heads);
    s->head_dim = s->dim / s->heads;
    if (s->head_dim % 2)
        return nm_err_set(err, NM_ERR_ARG, "random model: head size %lld (dim/heads) is odd; RoPE rotates pairs",
                          (long long)s->head_dim);
    return NM_OK;
}

/* ---- the tensors, in make_random_gguf.py's order ---- */

typedef struct tensor_spec {
    char name[64];
    int64_t ne0, ne1; /* ne1 == 0: a 1-D norm */
} tensor_spec;

static size_t n_tensors(const shape *s) { return (size_t)s->layers * 9 + 3; }

static void tensor_at(const shape *s, size_t i, tensor_spec *t) {
    int64_t kv = s->head_dim * s->kv_heads;
    size_t last = n_tensors(s) - 1;
    t->ne1 = 0;
    if (i == 0) {
        snprintf(t->name, sizeof t->name, "token_embd.weight");
        t->ne0 = s->dim;
        t->ne1 = s->vocab;
        return;
    }
    if (i == last - 1) {
        snprintf(t->name, sizeof t->name, "output_norm.weight");
        t->ne0 = s->dim;
        return;
    }
    if (i == last) {
        snprintf(t->name, sizeof t->name, "output.weight");
        t->ne0 = s->dim;
        t->ne1 = s->vocab;
        return;
    }
    enum { NONE, DIM, FFN, KV };
    static const struct {
        const char *suffix;
        int ne0, ne1;
    } per_layer[9] = {
        {"attn_norm.weight", DIM, NONE}, {"attn_q.weight", DIM, DIM},   {"attn_k.weight", DIM, KV},
        {"attn_v.weight", DIM, KV},      {"attn_output.weight", DIM, DIM}, {"ffn_norm.weight", DIM, NONE},
        {"ffn_gate.weight", DIM, FFN},   {"ffn_up.weight", DIM, FFN},   {"ffn_down.weight", FFN, DIM},
    };
    const int64_t width[4] = {0, s->dim, s->ffn, kv};
    size_t l = (i - 1) / 9, k = (i - 1) % 9;
    snprintf(t->name, sizeof t->name, "blk.%zu.%s", l, per_layer[k].suffix);
    t->ne0 = width[per_layer[k].ne0];
    t->ne1 = width[per_layer[k].ne1];
}

/* Fills dst with n standard normal samples (Box-Muller, both outputs used). */
static void fill_normal(nm_rng *r, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = nm_rng_uniform(r), u2 = nm_rng_uniform(r);
        if (u1 < 1e-300) u1 = 1e-300;
        double rad = sqrt(-2.0 * log(u1)), ang = 2.0 * M_PI * u2;
        dst[i] = (float)(rad * cos(ang));
        if (i + 1 < n) dst[i + 1] = (float)(rad * sin(ang));
    }
}

/* splitmix64's finaliser: a bijection that scatters nearby inputs. */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* One independent stream per row of each tensor, so rows can be made by
 * any number of threads in any order and the file stays the same. */
static void seed_row(nm_rng *r, uint64_t seed, size_t tensor, int64_t row) {
    uint64_t h = mix64(seed ^ 0x6e6f6d6f61742121ULL);
    h = mix64(h + (uint64_t)tensor);
    h = mix64(h + (uint64_t)row);
    nm_rng_seed(r, h);
}

/* One tensor being generated by the pool: rows [0, n_rows) of ne0 values,
 * each stored as rb bytes of `type` at dst + row * rb. */
typedef struct gen_job {
    size_t tensor;
    int64_t ne0, n_rows;
    bool norm;           /* 1 + 0.1 N(0,1) in F32, else std N(0,1) */
    float std;
    uint64_t seed;
    nm_from_float_fn from_float;
    size_t rb;
    uint8_t *dst;
    float *scratch;      /* one row of floats per thread */
    int64_t scratch_len;
} gen_job;

static void gen_rows(void *arg, int ith, int nth) {
    const gen_job *j = arg;
    int64_t lo, hi;
    nm_split_range(j->n_rows, ith, nth, 1, &lo, &hi);
    float *row = j->scratch + (size_t)ith * (size_t)j->scratch_len;
    for (int64_t r = lo; r < hi; r++) {
        nm_rng rng;
        seed_row(&rng, j->seed, j->tensor, r);
        fill_normal(&rng, row, j->ne0);
        if (j->norm) {
            float *out = (float *)(j->dst + (size_t)r * j->rb);
            for (int64_t k = 0; k < j->ne0; k++) out[k] = 1.0f + 0.1f * row[k];
        } else {
            for (int64_t k = 0; k < j->ne0; k++) row[k] *= j->std;
            j->from_float(row, j->dst + (size_t)r * j->rb, j->ne0);
        }
    }
}

/* What the writer's fill callback needs to generate tensor i. */
typedef struct gen_ctx {
    const shape *s;
    nm_type type;
    float std;
    uint64_t seed;
    nm_pool *pool;
    float *scratch;
    int64_t scratch_len;
    const nm_log *log;
} gen_ctx;

static nm_status fill_tensor(void *user, size_t i, void *buf, uint64_t nbytes, nm_err *err) {
    const gen_ctx *gc = user;
    tensor_spec t;
    tensor_at(gc->s, i, &t);
    bool norm = t.ne1 == 0;
    nm_type type = norm ? NM_TYPE_F32 : gc->type;
    gen_job job = {
        .tensor = i, .ne0 = t.ne0, .n_rows = norm ? 1 : t.ne1, .norm = norm, .std = gc->std, .seed = gc->seed,
        .from_float = nm_type_traits_get(type)->from_float, .rb = nm_type_row_bytes(type, t.ne0),
        .scratch = gc->scratch, .scratch_len = gc->scratch_len, .dst = buf,
    };
    if ((uint64_t)job.n_rows * job.rb != nbytes)
        return nm_err_set(err, NM_ERR_INTERNAL, "random model: size mismatch for '%s'", t.name);
    nm_pool_run(gc->pool, gen_rows, &job);
    nm_logf(gc->log, NM_LOG_DEBUG, "generated %s", t.name);
    return NM_OK;
}

/* Metadata in make_random_gguf.py's order, then the tokenizer.* keys of the
 * vocabulary file in their own order. */
static nm_status set_metadata(nm_gguf_writer *w, const nm_new_params *p, const shape *s, const nm_gguf *vg) {
    char name[64];
    snprintf(name, sizeof name, "random-%s", p->preset ? p->preset : "custom");
    bool ok = true;
    ok &= !nm_gguf_writer_set_str(w, "general.architecture", "llama");
    ok &= !nm_gguf_writer_set_str(w, "general.name", name);
    ok &= !nm_gguf_writer_set_u32(w, "general.file_type", (uint32_t)ftype_for(p->type));
    if (nm_type_traits_get(p->type)->is_quantized) ok &= !nm_gguf_writer_set_u32(w, "general.quantization_version", 2);
    ok &= !nm_gguf_writer_set_u32(w, "llama.context_length", (uint32_t)s->ctx);
    ok &= !nm_gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)s->dim);
    ok &= !nm_gguf_writer_set_u32(w, "llama.block_count", (uint32_t)s->layers);
    ok &= !nm_gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)s->ffn);
    ok &= !nm_gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)s->head_dim);
    ok &= !nm_gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)s->heads);
    ok &= !nm_gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)s->kv_heads);
    ok &= !nm_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    ok &= !nm_gguf_writer_set_f32(w, "llama.rope.freq_base", 10000.0f);
    ok &= !nm_gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)s->vocab);
    for (int64_t i = 0; i < nm_gguf_n_kv(vg); i++) {
        nm_str k = nm_gguf_key(vg, i);
        if (k.len >= 10 && memcmp(k.ptr, "tokenizer.", 10) == 0) ok &= !nm_gguf_writer_copy_kv(w, vg, i);
    }
    return ok ? NM_OK : NM_ERR_NOMEM;
}

nm_status nm_model_new_random(const nm_new_params *p, const char *out_path, const nm_log *log, nm_err *err) {
    if (!p || !out_path) return nm_err_set(err, NM_ERR_ARG, "random model: missing parameters or output path");
    shape s;
    nm_status st = resolve_shape(p, &s, err);
    if (st) return st;
    if (ftype_for(p->type) < 0 || !nm_type_can_quantize(p->type)) {
        const char *tn = nm_type_name(p->type);
        return nm_err_set(err, NM_ERR_ARG, "random model: weight type %s is not supported (f32, f16, bf16, q8_0, q4_0)",
                          tn ? tn : "(unknown)");
    }
    int64_t blk = nm_type_block_size(p->type);
    if (s.dim % blk || s.ffn % blk)
        return nm_err_set(err, NM_ERR_ARG, "random model: type %s needs dim and ffn multiples of %lld (dim %lld, ffn %lld)",
                          nm_type_name(p->type), (long long)blk, (long long)s.dim, (long long)s.ffn);
    float std = p->init_std == 0 ? DEFAULT_STD : p->init_std;
    if (!(std > 0 && std < 1e6f))
        return nm_err_set(err, NM_ERR_ARG, "random model: init_std %g must be positive and finite", (double)p->init_std);
    if (!p->vocab_from) return nm_err_set(err, NM_ERR_ARG, "random model: a vocabulary file (vocab_from) is needed");

    nm_gguf *vg;
    st = nm_gguf_open(p->vocab_from, &vg, err);
    if (st) return st;
    int64_t ti = nm_gguf_find_key(vg, "tokenizer.ggml.tokens");
    if (ti < 0 || nm_gguf_kv_type(vg, ti) != NM_GGUF_ARRAY || nm_gguf_arr_type(vg, ti) != NM_GGUF_STRING ||
        nm_gguf_arr_n(vg, ti) == 0 || nm_gguf_arr_n(vg, ti) > (uint64_t)INT32_MAX) {
        nm_gguf_free(vg);
        return nm_err_set(err, NM_ERR_FORMAT, "%s: no usable vocabulary (tokenizer.ggml.tokens missing, empty or not "
                          "an array of strings)", p->vocab_from);
    }
    s.vocab = (int64_t)nm_gguf_arr_n(vg, ti);

    /* Total size, checked, for the log and to fail before any work. */
    uint64_t total = 0, params = 0;
    size_t nt = n_tensors(&s);
    bool ok = true;
    for (size_t i = 0; i < nt && ok; i++) {
        tensor_spec t;
        tensor_at(&s, i, &t);
        uint64_t rows = t.ne1 ? (uint64_t)t.ne1 : 1, bytes, n;
        size_t rb = t.ne1 ? nm_type_row_bytes(p->type, t.ne0) : (size_t)t.ne0 * sizeof(float);
        ok = rb && nm_mul_ok(rows, rb, &bytes) && nm_add_ok(total, bytes, &total) &&
             nm_mul_ok(rows, (uint64_t)t.ne0, &n) && nm_add_ok(params, n, &params) && bytes <= SIZE_MAX;
    }
    if (!ok) {
        nm_gguf_free(vg);
        return nm_err_set(err, NM_ERR_RANGE, "random model: the requested shape is too large");
    }
    nm_logf(log, NM_LOG_INFO, "writing %s: %lld layers, dim %lld, %lld heads (%lld kv), ffn %lld, vocab %lld: "
            "%.3g M parameters, %.1f MiB of %s weights",
            out_path, (long long)s.layers, (long long)s.dim, (long long)s.heads, (long long)s.kv_heads,
            (long long)s.ffn, (long long)s.vocab, (double)params / 1e6, (double)total / (1024.0 * 1024.0),
            nm_type_name(p->type));

    nm_gguf_writer *w = nm_gguf_writer_new(3);
    if (!w) {
        nm_gguf_free(vg);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    if (set_metadata(w, p, &s, vg)) st = nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory building metadata", out_path);
    nm_pool *pool = NULL;
    float *scratch = NULL;
    int64_t scratch_len = s.dim > s.ffn ? s.dim : s.ffn;
    if (!st) st = nm_pool_new(nm_cpu_count(), &pool, err);
    if (!st) {
        scratch = nm_calloc((size_t)nm_pool_size(pool), (size_t)scratch_len * sizeof(float));
        if (!scratch) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    /* Tensors are generated while the file is written, one at a time into
     * the writer's buffer: peak memory is the largest tensor, not the file. */
    gen_ctx gc = {.s = &s, .type = p->type, .std = std, .seed = p->seed, .pool = pool, .scratch = scratch,
                  .scratch_len = scratch_len, .log = log};
    for (size_t i = 0; i < nt && !st; i++) {
        tensor_spec t;
        tensor_at(&s, i, &t);
        bool norm = t.ne1 == 0;
        nm_type type = norm ? NM_TYPE_F32 : p->type;
        int64_t ne[2] = {t.ne0, t.ne1};
        uint64_t nbytes = (uint64_t)(norm ? 1 : t.ne1) * nm_type_row_bytes(type, t.ne0);
        st = nm_gguf_writer_add_tensor_fn(w, t.name, type, norm ? 1 : 2, ne, nbytes, fill_tensor, &gc, err);
    }
    if (!st) st = nm_gguf_writer_write(w, out_path, err);
    free(scratch);
    nm_pool_free(pool);
    nm_gguf_writer_free(w);
    nm_gguf_free(vg);
    return st;
}
