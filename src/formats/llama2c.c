/*
 * llama2c.c - import of llama2.c checkpoints (karpathy/llama2.c, "version 0"
 * legacy export) and llama2.c tokenizer.bin files into GGUF.
 *
 * The output is what llama.cpp's convert-llama2c-to-ggml writes, key for key
 * and tensor for tensor, so that a file imported here and one converted by
 * llama.cpp are interchangeable (for stories260K they are byte-identical).
 *
 * Checkpoint layout: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 * vocab_size, seq_len; a negative vocab_size means a separate classifier
 * follows), then float32 arrays in this order: token embedding [vocab][dim],
 * rms_att [layers][dim], wq [layers][dim][dim], wk and wv
 * [layers][kv_dim][dim], wo [layers][dim][dim], rms_ffn [layers][dim], w1
 * [layers][hidden][dim], w2 [layers][dim][hidden], w3 [layers][hidden][dim],
 * rms_final [dim], two obsolete RoPE tables of seq_len*head_size/2 floats
 * each, then wcls [vocab][dim] when not shared.  PyTorch stores a Linear
 * weight as [out][in] row-major, which is exactly ggml's layout with
 * ne[0] = in, so every tensor is copied as is: llama2.c's RoPE rotates
 * adjacent pairs, as llama.cpp's LLaMA graph does, so wq/wk need no
 * permutation (checked against llama.cpp's own conversion of stories260K).
 *
 * Tokenizer layout: int32 max_token_length, then per token: float32 score,
 * int32 length, length bytes (no terminator).
 */
#include "base/base.h"

#include <stdlib.h>
#include <string.h>

#define L2C_HEADER_BYTES 28
#define L2C_MAGIC 0x616b3432u /* "ak42" */

/* llama2.c's export fixes these ids; llama.cpp's converter assumes them too. */
#define L2C_UNK_ID 0
#define L2C_BOS_ID 1
#define L2C_EOS_ID 2

/* What llama.cpp's converter writes as llama.context_length whatever the
 * checkpoint's seq_len (stories260K was trained with 512).  Kept so the two
 * converters agree; the value only bounds how long a context a runner will
 * allow, and the checkpoint's own seq_len is logged for the user. */
#define L2C_CONTEXT_LENGTH 2048

/* llama_token_type values as GGUF stores them. */
enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_BYTE = 6 };

typedef struct l2c_config {
    int64_t dim, hidden, layers, heads, kv_heads, vocab, seq_len;
    int64_t head_size, kv_dim;
    bool shared; /* classifier shares the token embedding */
} l2c_config;

/* Sizes (in floats) of the arrays of a checkpoint, in file order. */
enum {
    A_EMBD, A_RMS_ATT, A_WQ, A_WK, A_WV, A_WO, A_RMS_FFN, A_W1, A_W2, A_W3, A_RMS_FINAL, A_FREQ, A_WCLS, A_COUNT
};

/* Largest value accepted for any single dimension: far above real models
 * (LLaMA-2 70B has dim 8192, hidden 28672, vocab 32000) yet small enough
 * that products of two stay far from overflow before the checked sums. */
#define L2C_MAX_DIM (1 << 24)

static nm_status check_config(const char *path, const int32_t h[7], size_t file_size, l2c_config *c,
                              uint64_t counts[A_COUNT], nm_err *err) {
    static const char *names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
    for (int i = 0; i < 7; i++) {
        /* vocab_size carries the sharing flag in its sign. */
        int64_t v = i == 5 ? (h[i] < 0 ? -(int64_t)h[i] : h[i]) : h[i];
        if (v <= 0 || v > L2C_MAX_DIM)
            return nm_err_set(err, NM_ERR_FORMAT,
                              "%s: not a llama2.c checkpoint: header %s = %d (expected 1..%d); "
                              "only the version 0 (legacy) export is supported",
                              path, names[i], (int)h[i], L2C_MAX_DIM);
    }
    c->dim = h[0];
    c->hidden = h[1];
    c->layers = h[2];
    c->heads = h[3];
    c->kv_heads = h[4];
    c->shared = h[5] > 0;
    c->vocab = h[5] > 0 ? h[5] : -(int64_t)h[5];
    c->seq_len = h[6];
    if (c->dim % c->heads)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: n_heads %lld does not divide dim %lld", path,
                          (long long)c->heads, (long long)c->dim);
    if (c->kv_heads > c->heads || c->heads % c->kv_heads)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: n_kv_heads %lld does not divide n_heads %lld", path,
                          (long long)c->kv_heads, (long long)c->heads);
    c->head_size = c->dim / c->heads;
    if (c->head_size % 2)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: head size %lld is odd (RoPE rotates pairs)", path,
                          (long long)c->head_size);
    c->kv_dim = c->kv_heads * c->head_size;

    /* Every product below is of values <= 2^24, so two-factor products fit;
     * the three-factor ones and the sums are checked. */
    uint64_t L = (uint64_t)c->layers, D = (uint64_t)c->dim, F = (uint64_t)c->hidden;
    bool ok = true;
    counts[A_EMBD] = (uint64_t)c->vocab * D;
    counts[A_RMS_ATT] = L * D;
    ok &= nm_mul_ok(L, D * D, &counts[A_WQ]);
    ok &= nm_mul_ok(L, D * (uint64_t)c->kv_dim, &counts[A_WK]);
    counts[A_WV] = counts[A_WK];
    counts[A_WO] = counts[A_WQ];
    counts[A_RMS_FFN] = L * D;
    ok &= nm_mul_ok(L, D * F, &counts[A_W1]);
    counts[A_W2] = counts[A_W1];
    counts[A_W3] = counts[A_W1];
    counts[A_RMS_FINAL] = D;
    counts[A_FREQ] = (uint64_t)c->seq_len * (uint64_t)c->head_size; /* real + imag halves */
    counts[A_WCLS] = c->shared ? 0 : counts[A_EMBD];
    uint64_t total = 0;
    for (int i = 0; i < A_COUNT && ok; i++) ok &= nm_add_ok(total, counts[i], &total);
    uint64_t bytes = 0;
    ok = ok && nm_mul_ok(total, 4, &bytes) && nm_add_ok(bytes, L2C_HEADER_BYTES, &bytes);
    if (!ok || bytes > (uint64_t)INT64_MAX)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: header dimensions overflow (dim %lld, layers %lld, hidden %lld)",
                          path, (long long)c->dim, (long long)c->layers, (long long)c->hidden);
    if (bytes != file_size)
        return nm_err_set(err, NM_ERR_FORMAT,
                          "%s: file has %zu bytes but its header (dim %lld, hidden %lld, layers %lld, heads %lld/%lld, "
                          "vocab %lld %s, seq_len %lld) implies %llu: truncated, or not a version 0 llama2.c checkpoint",
                          path, file_size, (long long)c->dim, (long long)c->hidden, (long long)c->layers,
                          (long long)c->heads, (long long)c->kv_heads, (long long)c->vocab,
                          c->shared ? "shared" : "separate classifier", (long long)c->seq_len,
                          (unsigned long long)bytes);
    return NM_OK;
}

/* The vocabulary as llama.cpp's converter builds it from a tokenizer.bin. */
typedef struct l2c_vocab {
    int64_t n;
    char **text;    /* NUL-terminated, spaces replaced by U+2581 */
    float *scores;
    int32_t *types;
} l2c_vocab;

static void vocab_deinit(l2c_vocab *v) {
    if (v->text)
        for (int64_t i = 0; i < v->n; i++) free(v->text[i]);
    free(v->text);
    free(v->scores);
    free(v->types);
    memset(v, 0, sizeof *v);
}

static int hex_digit(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    return -1;
}

/* SentencePiece writes byte-fallback pieces as exactly "<0xHH>". */
static bool is_byte_token(const uint8_t *p, uint32_t len) {
    return len == 6 && p[0] == '<' && p[1] == '0' && p[2] == 'x' && hex_digit((char)p[3]) >= 0 &&
           hex_digit((char)p[4]) >= 0 && p[5] == '>';
}

/* Copies a piece, replacing each space by U+2581 (SentencePiece's space
 * mark, which GGUF vocabularies use where llama2.c's export has spaces). */
static char *escape_spaces(const uint8_t *p, uint32_t len) {
    size_t spaces = 0;
    for (uint32_t i = 0; i < len; i++) spaces += p[i] == ' ';
    char *s = malloc((size_t)len + 2 * spaces + 1);
    if (!s) return NULL;
    size_t o = 0;
    for (uint32_t i = 0; i < len; i++) {
        if (p[i] == ' ') {
            memcpy(s + o, "\xe2\x96\x81", 3);
            o += 3;
        } else {
            s[o++] = (char)p[i];
        }
    }
    s[o] = 0;
    return s;
}

static nm_status read_tokenizer(const char *path, int64_t n_vocab, l2c_vocab *v, nm_err *err) {
    memset(v, 0, sizeof *v);
    nm_map m;
    nm_status st = nm_map_open(&m, path, err);
    if (st) return st;
    const uint8_t *p = m.data;
    size_t size = m.size, pos = 4;
    if (size < 4) {
        nm_map_close(&m);
        return nm_err_set(err, NM_ERR_FORMAT, "%s: truncated llama2.c tokenizer (%zu bytes)", path, size);
    }
    int32_t max_len = (int32_t)nm_rd_u32(p);
    if (max_len <= 0) {
        nm_map_close(&m);
        return nm_err_set(err, NM_ERR_FORMAT, "%s: not a llama2.c tokenizer: max_token_length %d", path, (int)max_len);
    }
    v->n = n_vocab;
    v->text = nm_calloc((size_t)n_vocab, sizeof *v->text);
    v->scores = nm_calloc((size_t)n_vocab, sizeof *v->scores);
    v->types = nm_calloc((size_t)n_vocab, sizeof *v->types);
    if (!v->text || !v->scores || !v->types) {
        st = nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory for %lld tokens", path, (long long)n_vocab);
        goto fail;
    }
    for (int64_t id = 0; id < n_vocab; id++) {
        if (size - pos < 8) {
            st = nm_err_set(err, NM_ERR_FORMAT,
                            "%s: ends at token %lld but the checkpoint has %lld tokens (truncated, or a tokenizer "
                            "for another model)",
                            path, (long long)id, (long long)n_vocab);
            goto fail;
        }
        float score;
        uint32_t bits = nm_rd_u32(p + pos);
        memcpy(&score, &bits, sizeof score);
        int32_t len = (int32_t)nm_rd_u32(p + pos + 4);
        pos += 8;
        if (len < 0 || len > max_len) {
            st = nm_err_set(err, NM_ERR_FORMAT, "%s: token %lld has length %d (max_token_length is %d)", path,
                            (long long)id, (int)len, (int)max_len);
            goto fail;
        }
        if ((size_t)len > size - pos) {
            st = nm_err_set(err, NM_ERR_FORMAT, "%s: token %lld (length %d) runs past the end of the file", path,
                            (long long)id, (int)len);
            goto fail;
        }
        const uint8_t *text = p + pos;
        pos += (size_t)len;
        /* GGUF strings carry a length, but token text travels through C
         * strings here and in llama.cpp: a NUL would silently cut it. */
        if (memchr(text, 0, (size_t)len)) {
            st = nm_err_set(err, NM_ERR_FORMAT, "%s: token %lld contains a NUL byte", path, (long long)id);
            goto fail;
        }
        /* llama2.c's export writes the special pieces as "<unk>",
         * "\n<s>\n" and "\n</s>\n"; GGUF vocabularies use the plain names. */
        int32_t type = TOK_NORMAL;
        if (id == L2C_UNK_ID) {
            text = (const uint8_t *)"<unk>";
            len = 5;
            type = TOK_UNKNOWN;
        } else if (id == L2C_BOS_ID) {
            text = (const uint8_t *)"<s>";
            len = 3;
            type = TOK_CONTROL;
        } else if (id == L2C_EOS_ID) {
            text = (const uint8_t *)"</s>";
            len = 4;
            type = TOK_CONTROL;
        } else if (len == 0) {
            type = TOK_CONTROL;
        } else if (is_byte_token(text, (uint32_t)len)) {
            type = TOK_BYTE;
        }
        v->text[id] = escape_spaces(text, (uint32_t)len);
        if (!v->text[id]) {
            st = nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory", path);
            goto fail;
        }
        v->scores[id] = score;
        v->types[id] = type;
    }
    if (pos != size) {
        st = nm_err_set(err, NM_ERR_FORMAT,
                        "%s: %zu bytes left after the %lld tokens of the checkpoint (a tokenizer for a larger "
                        "vocabulary?)",
                        path, size - pos, (long long)n_vocab);
        goto fail;
    }
    nm_map_close(&m);
    return NM_OK;
fail:
    nm_map_close(&m);
    vocab_deinit(v);
    return st;
}

static nm_status add_f32(nm_gguf_writer *w, const char *name, int64_t ne0, int64_t ne1, const float *data,
                         nm_err *err) {
    int64_t ne[2] = {ne0, ne1};
    uint32_t n_dims = ne1 > 0 ? 2 : 1;
    uint64_t n = (uint64_t)ne0 * (uint64_t)(ne1 > 0 ? ne1 : 1);
    return nm_gguf_writer_add_tensor(w, name, NM_TYPE_F32, n_dims, ne, data, n * sizeof(float), err);
}

/* Metadata in llama.cpp's order (so the output matches its converter byte
 * for byte). */
static nm_status set_metadata(nm_gguf_writer *w, const l2c_config *c, const l2c_vocab *v) {
    bool ok = true;
    ok &= !nm_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->text, (uint64_t)v->n);
    ok &= !nm_gguf_writer_set_arr(w, "tokenizer.ggml.scores", NM_GGUF_FLOAT32, v->scores, (uint64_t)v->n);
    ok &= !nm_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", NM_GGUF_INT32, v->types, (uint64_t)v->n);
    ok &= !nm_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    ok &= !nm_gguf_writer_set_str(w, "general.architecture", "llama");
    ok &= !nm_gguf_writer_set_str(w, "general.name", "llama");
    ok &= !nm_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", L2C_UNK_ID);
    ok &= !nm_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", L2C_BOS_ID);
    ok &= !nm_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", L2C_EOS_ID);
    /* "seperator" is the key's real spelling in GGUF. */
    ok &= !nm_gguf_writer_set_u32(w, "tokenizer.ggml.seperator_token_id", UINT32_MAX);
    ok &= !nm_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", UINT32_MAX);
    ok &= !nm_gguf_writer_set_u32(w, "llama.context_length", L2C_CONTEXT_LENGTH);
    ok &= !nm_gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)c->dim);
    ok &= !nm_gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)c->hidden);
    ok &= !nm_gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)c->heads);
    ok &= !nm_gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)c->kv_heads);
    ok &= !nm_gguf_writer_set_u32(w, "llama.block_count", (uint32_t)c->layers);
    /* llama2.c rotates the whole head.  (llama.cpp's converter writes
     * min(64, head_size), which is wrong for heads wider than 64; for every
     * llama2.c model published the two agree.) */
    ok &= !nm_gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)c->head_size);
    ok &= !nm_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    return ok ? NM_OK : NM_ERR_NOMEM;
}

nm_status nm_llama2c_to_gguf(const char *ckpt_path, const char *tok_path, const char *out_path, const nm_log *log,
                             nm_err *err) {
    if (!ckpt_path || !tok_path || !out_path)
        return nm_err_set(err, NM_ERR_ARG, "llama2.c import needs a checkpoint, a tokenizer and an output path");
    nm_map m;
    nm_status st = nm_map_open(&m, ckpt_path, err);
    if (st) return st;
    if (m.size < L2C_HEADER_BYTES) {
        nm_map_close(&m);
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %zu bytes, too short for a llama2.c checkpoint header", ckpt_path,
                          m.size);
    }
    int32_t h[7];
    for (int i = 0; i < 7; i++) h[i] = (int32_t)nm_rd_u32((const uint8_t *)m.data + 4 * i);
    /* llama2.c's later exports (version 1: f32, version 2: int8) start with
     * this magic and a version number. */
    if ((uint32_t)h[0] == L2C_MAGIC) {
        nm_map_close(&m);
        return nm_err_set(err, NM_ERR_UNSUPPORTED,
                          "%s: llama2.c export version %d; only the version 0 (legacy) format can be imported",
                          ckpt_path, (int)h[1]);
    }
    l2c_config c = {0};
    uint64_t counts[A_COUNT] = {0};
    st = check_config(ckpt_path, h, m.size, &c, counts, err);
    if (st) {
        nm_map_close(&m);
        return st;
    }
    l2c_vocab v;
    st = read_tokenizer(tok_path, c.vocab, &v, err);
    if (st) {
        nm_map_close(&m);
        return st;
    }
    nm_logf(log, NM_LOG_DEBUG,
            "%s: dim %lld, hidden %lld, layers %lld, heads %lld (kv %lld), vocab %lld (%s classifier), seq_len %lld",
            ckpt_path, (long long)c.dim, (long long)c.hidden, (long long)c.layers, (long long)c.heads,
            (long long)c.kv_heads, (long long)c.vocab, c.shared ? "shared" : "separate", (long long)c.seq_len);

    /* Tensors point straight into the mapping: the checkpoint already holds
     * float32 in ggml's layout (the file is 4-byte aligned after the
     * 28-byte header). */
    const float *arr[A_COUNT];
    const float *f = (const float *)((const uint8_t *)m.data + L2C_HEADER_BYTES);
    for (int i = 0; i < A_COUNT; i++) {
        arr[i] = f;
        f += counts[i];
    }
    const float *wcls = c.shared ? arr[A_EMBD] : arr[A_WCLS];

    nm_gguf_writer *w = nm_gguf_writer_new(3);
    if (!w) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (set_metadata(w, &c, &v)) {
        st = nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory building metadata", out_path);
        goto done;
    }
    int64_t D = c.dim, F = c.hidden, KV = c.kv_dim;
    st = add_f32(w, "token_embd.weight", D, c.vocab, arr[A_EMBD], err);
    if (!st) st = add_f32(w, "output_norm.weight", D, 0, arr[A_RMS_FINAL], err);
    if (!st) st = add_f32(w, "output.weight", D, c.vocab, wcls, err);
    /* Per layer, in llama.cpp's order: GGUF name, source array, ne0, ne1
     * (0 for 1-D). */
    const struct {
        const char *suffix;
        int array;
        int64_t ne0, ne1;
    } per_layer[] = {
        {"attn_q.weight", A_WQ, D, D},      {"attn_k.weight", A_WK, D, KV},    {"attn_v.weight", A_WV, D, KV},
        {"attn_output.weight", A_WO, D, D}, {"attn_norm.weight", A_RMS_ATT, D, 0},
        {"ffn_gate.weight", A_W1, D, F},    {"ffn_down.weight", A_W2, F, D},   {"ffn_up.weight", A_W3, D, F},
        {"ffn_norm.weight", A_RMS_FFN, D, 0},
    };
    for (int64_t l = 0; l < c.layers && !st; l++)
        for (size_t k = 0; k < sizeof per_layer / sizeof per_layer[0] && !st; k++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%lld.%s", (long long)l, per_layer[k].suffix);
            /* Each array holds the layers one after another. */
            uint64_t per = counts[per_layer[k].array] / (uint64_t)c.layers;
            st = add_f32(w, name, per_layer[k].ne0, per_layer[k].ne1, arr[per_layer[k].array] + (uint64_t)l * per, err);
        }
    if (!st) st = nm_gguf_writer_write(w, out_path, err);
    if (!st)
        nm_logf(log, NM_LOG_INFO, "imported %s (%lld layers, dim %lld, vocab %lld, trained context %lld) into %s",
                ckpt_path, (long long)c.layers, (long long)c.dim, (long long)c.vocab, (long long)c.seq_len, out_path);
done:
    nm_gguf_writer_free(w);
    vocab_deinit(&v);
    nm_map_close(&m);
    return st;
}
