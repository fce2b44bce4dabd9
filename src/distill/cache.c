/* cache.c - the teacher cache: its file format, a validating reader, and
 * the teacher pass that writes it (nm_distill_cache_write).
 *
 * Layout (little-endian), version 1:
 *    0  "NMKDCACH"
 *    8  u32 version          12  u32 k            16  u32 n_vocab
 *   20  u32 id_bytes (2 when n_vocab <= 65536, else 4)
 *   24  u32 seq_len          28  u32 flags (1: prompt masked)
 *   32  u64 n_ex             40  u64 n_tok         48  u64 n_pos
 *   56  u64 teacher_id       64  u64 data_hash     72  u64 vocab_hash
 *   80  u64 meta_len         88  meta (JSON object, meta_len bytes)
 *   then ex_len[n_ex] u32, tok[n_tok] (id_bytes each), trn[n_tok] u8,
 *   entries[n_pos]: ids[k] (id_bytes each), log-probs[k] F16, remainder F16
 *   last: u64 checksum (FNV-1a of every byte before it)
 * Entries follow the trained positions in order: example by example,
 * position j of an example has one when token j + 1 is a trained target.
 *
 * Why F16 log-probabilities: the rounding error of a log-probability is
 * relative to its magnitude (2^-11), so the likely tokens, which carry the
 * loss, keep ~4 decimal digits and only the improbable ones get coarse; it
 * halves the entries against F32. */
#include "distill/distill.h"
#include "base/base.h"
#include "base/threads.h"
#include "model/fingerprint.h"
#include "train/adapter.h"
#include "train/model.h"
#include "tensor/kernels.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

size_t nm_dcache_id_bytes(uint32_t n_vocab) { return n_vocab <= 65536u ? 2 : 4; }

uint64_t nm_dcache_checksum(const void *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    const uint8_t *q = p;
    for (size_t i = 0; i < n; i++) h = (h ^ q[i]) * 1099511628211ULL;
    return h;
}

static uint64_t fnv_more(uint64_t h, const void *p, size_t n) {
    const uint8_t *q = p;
    for (size_t i = 0; i < n; i++) h = (h ^ q[i]) * 1099511628211ULL;
    return h;
}

static void put_id(uint8_t *dst, size_t id_bytes, int32_t id) {
    uint32_t u = (uint32_t)id;
    dst[0] = (uint8_t)u;
    dst[1] = (uint8_t)(u >> 8);
    if (id_bytes == 4) {
        dst[2] = (uint8_t)(u >> 16);
        dst[3] = (uint8_t)(u >> 24);
    }
}

static uint32_t get_id(const uint8_t *p, size_t id_bytes) {
    return id_bytes == 2 ? nm_rd_u16(p) : nm_rd_u32(p);
}

void nm_dcache_encode_head(const nm_dcache_hdr *h, const nm_dataset *d, nm_buf *b) {
    size_t ib = nm_dcache_id_bytes(h->n_vocab);
    const char *meta = h->meta ? h->meta : "{}";
    nm_buf_push(b, NM_DCACHE_MAGIC, 8);
    nm_buf_push_u32(b, NM_DCACHE_VERSION);
    nm_buf_push_u32(b, h->k);
    nm_buf_push_u32(b, h->n_vocab);
    nm_buf_push_u32(b, (uint32_t)ib);
    nm_buf_push_u32(b, h->seq_len);
    nm_buf_push_u32(b, h->flags);
    nm_buf_push_u64(b, (uint64_t)d->n_ex);
    nm_buf_push_u64(b, (uint64_t)d->n_tok);
    nm_buf_push_u64(b, h->n_pos);
    nm_buf_push_u64(b, h->teacher_id);
    nm_buf_push_u64(b, h->data_hash);
    nm_buf_push_u64(b, h->vocab_hash);
    nm_buf_push_u64(b, strlen(meta));
    nm_buf_push(b, meta, strlen(meta));
    for (int64_t e = 0; e < d->n_ex; e++) nm_buf_push_u32(b, (uint32_t)d->ex_len[e]);
    uint8_t tmp[4];
    for (int64_t i = 0; i < d->n_tok; i++) {
        put_id(tmp, ib, d->tok[i]);
        nm_buf_push(b, tmp, ib);
    }
    nm_buf_push(b, d->trn, (size_t)d->n_tok);
}

void nm_dcache_encode_entry(uint32_t k, size_t id_bytes, const int32_t *ids, const float *lq, uint8_t *dst) {
    for (uint32_t i = 0; i < k; i++) put_id(dst + i * id_bytes, id_bytes, ids[i]);
    uint8_t *f = dst + (size_t)k * id_bytes;
    for (uint32_t i = 0; i <= k; i++) {
        float x = lq[i] > 0 ? 0.0f : lq[i];
        if (x < -60000.0f && (i < k || x != -INFINITY)) x = -60000.0f; /* F16 range; -inf only for "no rest" */
        uint16_t h = nm_f32_to_f16(x);
        f[2 * i] = (uint8_t)h;
        f[2 * i + 1] = (uint8_t)(h >> 8);
    }
}

void nm_dcache_entry(const nm_dcache *c, uint64_t e, int32_t *ids, float *lq) {
    const uint8_t *p = c->entries + e * c->entry_bytes;
    for (uint32_t i = 0; i < c->k; i++) ids[i] = (int32_t)get_id(p + i * c->id_bytes, c->id_bytes);
    const uint8_t *f = p + (size_t)c->k * c->id_bytes;
    for (uint32_t i = 0; i <= c->k; i++) lq[i] = nm_half_to_f32(nm_rd_u16(f + 2 * i));
}

/* ---- reader ---- */

void nm_dcache_free(nm_dcache *c) {
    if (!c) return;
    free(c->meta);
    free(c->entry_of);
    nm_dataset_deinit(&c->data);
    if (c->map_data) {
        nm_map m = {.data = c->map_data, .size = c->map_size};
        nm_map_close(&m);
    }
    free(c);
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

#define BAD(...) (st = nm_err_set(err, NM_ERR_FORMAT, __VA_ARGS__))

static nm_status parse(nm_dcache *c, const uint8_t *p, size_t size, const char *name, nm_err *err) {
    nm_status st = NM_OK;
    if (size < NM_DCACHE_HEADER + 8 || memcmp(p, NM_DCACHE_MAGIC, 8))
        return BAD("%s: not a nomoat teacher cache (bad magic or too short)", name);
    uint32_t ver = nm_rd_u32(p + 8);
    if (ver != NM_DCACHE_VERSION)
        return BAD("%s: teacher cache version %u, this build reads version %u (make the cache again)", name, ver,
                   NM_DCACHE_VERSION);
    c->k = nm_rd_u32(p + 12);
    c->n_vocab = nm_rd_u32(p + 16);
    c->id_bytes = nm_rd_u32(p + 20);
    c->seq_len = nm_rd_u32(p + 24);
    c->flags = nm_rd_u32(p + 28);
    uint64_t n_ex = nm_rd_u64(p + 32), n_tok = nm_rd_u64(p + 40);
    c->n_pos = nm_rd_u64(p + 48);
    c->teacher_id = nm_rd_u64(p + 56);
    c->data_hash = nm_rd_u64(p + 64);
    c->vocab_hash = nm_rd_u64(p + 72);
    uint64_t meta_len = nm_rd_u64(p + 80);
    if (c->n_vocab < 1 || c->n_vocab > (1u << 30)) return BAD("%s: vocabulary size %u is out of range", name, c->n_vocab);
    if (c->k < 1 || c->k > NM_DCACHE_MAX_K || c->k > c->n_vocab)
        return BAD("%s: top-k %u is out of range (1..%u, at most the vocabulary)", name, c->k, NM_DCACHE_MAX_K);
    if (c->id_bytes != nm_dcache_id_bytes(c->n_vocab))
        return BAD("%s: id width %u does not fit a vocabulary of %u", name, c->id_bytes, c->n_vocab);
    if (c->flags > 1) return BAD("%s: unknown flags 0x%x", name, c->flags);
    c->entry_bytes = (size_t)c->k * c->id_bytes + ((size_t)c->k + 1) * 2;
    /* sizes: every section against the bytes that exist */
    uint64_t need = NM_DCACHE_HEADER, s1, s2, s3;
    if (!nm_add_ok(need, meta_len, &need) || !nm_mul_ok(n_ex, 4, &s1) || !nm_add_ok(need, s1, &need) ||
        !nm_mul_ok(n_tok, c->id_bytes + 1u, &s2) || !nm_add_ok(need, s2, &need) ||
        !nm_mul_ok(c->n_pos, c->entry_bytes, &s3) || !nm_add_ok(need, s3, &need) || !nm_add_ok(need, 8, &need) ||
        need != size)
        return BAD("%s: sizes in the header do not match the file (%zu bytes): truncated or corrupt", name, size);
    if (n_ex < 1 || n_tok > INT32_MAX || n_ex > n_tok)
        return BAD("%s: %llu examples of %llu tokens is out of range", name, (unsigned long long)n_ex,
                   (unsigned long long)n_tok);
    uint64_t sum = nm_rd_u64(p + size - 8);
    if (nm_dcache_checksum(p, size - 8) != sum) return BAD("%s: checksum mismatch: the file is corrupt", name);
    const uint8_t *q = p + NM_DCACHE_HEADER;
    c->meta = nm_strndup((const char *)q, (size_t)meta_len);
    if (!c->meta) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    json_t *mj = json_loadb((const char *)q, (size_t)meta_len, 0, NULL);
    bool meta_ok = json_is_object(mj);
    json_decref(mj);
    if (!meta_ok) return BAD("%s: the metadata is not a JSON object", name);
    q += meta_len;
    nm_dataset *d = &c->data;
    d->n_ex = d->cap_ex = (int64_t)n_ex;
    d->n_tok = d->cap_tok = (int64_t)n_tok;
    d->ex_off = malloc((size_t)n_ex * sizeof *d->ex_off);
    d->ex_len = malloc((size_t)n_ex * sizeof *d->ex_len);
    d->tok = malloc((size_t)(n_tok ? n_tok : 1) * sizeof *d->tok);
    d->trn = malloc((size_t)(n_tok ? n_tok : 1));
    c->entry_of = malloc((size_t)(n_tok ? n_tok : 1) * sizeof *c->entry_of);
    if (!d->ex_off || !d->ex_len || !d->tok || !d->trn || !c->entry_of)
        return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory for %llu tokens", name, (unsigned long long)n_tok);
    uint64_t off = 0;
    for (uint64_t e = 0; e < n_ex; e++) {
        uint32_t len = nm_rd_u32(q + 4 * e);
        if (len < 2 || len > n_tok - off)
            return BAD("%s: example %llu has a bad length %u", name, (unsigned long long)e, len);
        d->ex_off[e] = (int64_t)off;
        d->ex_len[e] = len;
        off += len;
    }
    if (off != n_tok) return BAD("%s: example lengths add up to %llu tokens, not %llu", name, (unsigned long long)off,
                                 (unsigned long long)n_tok);
    q += 4 * n_ex;
    for (uint64_t i = 0; i < n_tok; i++) {
        uint32_t id = get_id(q + i * c->id_bytes, c->id_bytes);
        if (id >= c->n_vocab) return BAD("%s: token %llu (id %u) is outside the vocabulary", name, (unsigned long long)i, id);
        d->tok[i] = (int32_t)id;
    }
    q += n_tok * c->id_bytes;
    memcpy(d->trn, q, (size_t)n_tok);
    q += n_tok;
    uint64_t n_pos = 0;
    for (uint64_t e = 0; e < n_ex; e++) {
        int64_t o = d->ex_off[e], n = d->ex_len[e];
        for (int64_t j = 0; j < n; j++) {
            if (d->trn[o + j] > 1) return BAD("%s: bad trained flag at token %lld", name, (long long)(o + j));
            c->entry_of[o + j] = j + 1 < n && d->trn[o + j + 1] ? (int64_t)n_pos++ : -1;
        }
    }
    if (n_pos != c->n_pos)
        return BAD("%s: %llu entries for %llu trained positions", name, (unsigned long long)c->n_pos,
                   (unsigned long long)n_pos);
    if (nm_dataset_hash(d) != c->data_hash) return BAD("%s: the rows do not match the recorded data hash", name);
    c->entries = q;
    /* every entry: ids in the vocabulary and distinct, log-probs <= 0.
     * Distinct by sorting a copy: a table of the vocabulary's size would
     * let a tiny file claiming a huge vocabulary allocate gigabytes. */
    int32_t *ids = malloc(c->k * sizeof *ids);
    float *lq = malloc((c->k + 1) * sizeof *lq);
    if (!ids || !lq) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    for (uint64_t e = 0; e < c->n_pos && !st; e++) {
        nm_dcache_entry(c, e, ids, lq);
        for (uint32_t i = 0; i < c->k && !st; i++)
            if (!(lq[i] <= 0 && isfinite(lq[i]))) BAD("%s: entry %llu has a bad log-probability", name, (unsigned long long)e);
        bool rem_ok = c->k == c->n_vocab ? (lq[c->k] == -INFINITY) : (lq[c->k] <= 0 && isfinite(lq[c->k]));
        if (!st && !rem_ok) BAD("%s: entry %llu has a bad remainder", name, (unsigned long long)e);
        if (c->k <= 64) {
            for (uint32_t i = 1; i < c->k; i++)
                for (uint32_t j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
                    int32_t x = ids[j];
                    ids[j] = ids[j - 1];
                    ids[j - 1] = x;
                }
        } else {
            qsort(ids, c->k, sizeof *ids, cmp_i32);
        }
        for (uint32_t i = 0; i < c->k && !st; i++)
            if ((uint32_t)ids[i] >= c->n_vocab || (i && ids[i] == ids[i - 1]))
                BAD("%s: entry %llu has a bad or repeated token id %d", name, (unsigned long long)e, ids[i]);
    }
    free(ids);
    free(lq);
    return st;
}

nm_status nm_dcache_open_buffer(const void *buf, size_t size, const char *name, nm_dcache **out, nm_err *err) {
    *out = NULL;
    nm_dcache *c = nm_calloc(1, sizeof *c);
    if (!c) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    nm_status st = parse(c, buf, size, name, err);
    if (st) {
        nm_dcache_free(c);
        return st;
    }
    c->file_bytes = size;
    *out = c;
    return NM_OK;
}

nm_status nm_dcache_open(const char *path, nm_dcache **out, nm_err *err) {
    *out = NULL;
    nm_map m;
    nm_status st = nm_map_open(&m, path, err);
    if (st) return st;
    nm_dcache *c = nm_calloc(1, sizeof *c);
    if (!c) {
        nm_map_close(&m);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    c->map_data = m.data;
    c->map_size = m.size;
    if ((st = parse(c, m.data, m.size, path, err))) {
        nm_dcache_free(c);
        return st;
    }
    c->file_bytes = m.size;
    *out = c;
    return NM_OK;
}

/* ---- identities ---- */

uint64_t nm_vocab_hash(const nm_vocab *v) {
    nm_hash h;
    nm_hash_init(&h);
    int32_t n = nm_vocab_n_tokens(v);
    nm_hash_u64(&h, (uint64_t)n);
    for (int32_t i = 0; i < n; i++) {
        const char *t = nm_vocab_token_text(v, i);
        size_t len = t ? strlen(t) : 0;
        nm_hash_u64(&h, len);
        if (len) nm_hash_bytes(&h, t, len);
    }
    nm_hash_u64(&h, (uint64_t)(int64_t)nm_vocab_bos(v));
    nm_hash_u64(&h, (uint64_t)(int64_t)nm_vocab_eos(v));
    nm_hash_u64(&h, nm_vocab_add_bos(v));
    return nm_hash_final(&h);
}

uint64_t nm_teacher_id(const char *base_fp, const char *const *lora_fps, const float *scales, size_t n) {
    nm_hash h;
    nm_hash_init(&h);
    nm_hash_bytes(&h, base_fp, strlen(base_fp));
    for (size_t i = 0; i < n; i++) {
        nm_hash_bytes(&h, lora_fps[i], strlen(lora_fps[i]));
        float s = scales ? scales[i] : 1.0f;
        uint32_t u;
        memcpy(&u, &s, 4);
        nm_hash_u64(&h, u);
    }
    return nm_hash_final(&h);
}

/* ---- the teacher pass ---- */

void nm_distill_cache_params_default(nm_distill_cache_params *p) {
    memset(p, 0, sizeof *p);
    p->format = "auto";
    p->seq_len = 256;
    p->mask_prompt = true;
    p->top_k = 16;
    p->batch = 4;
}

static void info_from(const nm_dcache *c, nm_distill_cache_info *info) {
    memset(info, 0, sizeof *info);
    info->k = (int32_t)c->k;
    info->n_vocab = (int32_t)c->n_vocab;
    info->seq_len = (int32_t)c->seq_len;
    info->mask_prompt = c->flags & NM_DCACHE_MASK_PROMPT;
    info->n_examples = c->data.n_ex;
    info->n_tokens = c->data.n_tok;
    info->n_positions = (int64_t)c->n_pos;
    info->file_bytes = c->file_bytes;
    nm_hash_hex(c->teacher_id, info->teacher_id);
    nm_hash_hex(c->data_hash, info->data_hash);
    nm_hash_hex(c->vocab_hash, info->vocab_hash);
    info->teacher_loss = NAN;
}

nm_status nm_distill_cache_info_read(const char *path, nm_distill_cache_info *info, char **meta, nm_err *err) {
    nm_dcache *c;
    nm_status st = nm_dcache_open(path, &c, err);
    if (st) return st;
    info_from(c, info);
    if (meta) {
        *meta = c->meta;
        c->meta = NULL;
    }
    nm_dcache_free(c);
    return NM_OK;
}

/* A teacher: the model, its stack, its identity. */
typedef struct teacher {
    nm_tmodel *m;
    nm_lora **l;
    nm_lora_entry *e;
    size_t n;
    char fp[NM_FP_HEX];
    uint64_t id;
} teacher;

static void teacher_free(teacher *t) {
    for (size_t i = 0; i < t->n; i++) nm_lora_free(t->l[i]);
    free(t->l);
    free(t->e);
    nm_tmodel_free(t->m);
}

static nm_status teacher_open(teacher *t, const char *path, const char *const *loras, const float *scales, size_t n,
                              bool force, nm_pool *pool, const nm_log *log, nm_err *err) {
    memset(t, 0, sizeof *t);
    nm_status st = nm_tmodel_open(path, false, pool, &t->m, err);
    if (st) return st;
    nm_base_fingerprint(t->m->gguf, t->fp);
    if (!n) {
        t->id = nm_teacher_id(t->fp, NULL, NULL, 0);
        return NM_OK;
    }
    t->l = nm_calloc(n, sizeof *t->l);
    t->e = nm_calloc(n, sizeof *t->e);
    const char **fps = nm_calloc(n, sizeof *fps);
    if (!t->l || !t->e || !fps) {
        free(fps);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    nm_lora_layout lay;
    nm_tm_layout(t->m, &lay);
    for (size_t i = 0; i < n && !st; i++) {
        if ((st = nm_lora_open(loras[i], NULL, &t->l[i], err))) break;
        t->n++;
        if ((st = nm_lora_fit(t->l[i], &lay, err)) || (st = nm_lora_check_base(t->l[i], t->m->gguf, force, log, NULL, err)))
            break;
        float sc = scales ? scales[i] : 1.0f;
        if (!isfinite(sc)) st = nm_err_set(err, NM_ERR_ARG, "%s: the scale is not finite", loras[i]);
        t->e[i] = (nm_lora_entry){t->l[i], sc};
        fps[i] = t->l[i]->fp;
    }
    if (!st) {
        t->id = nm_teacher_id(t->fp, fps, scales, n);
        st = nm_tmodel_set_frozen(t->m, t->e, n, err);
    }
    free(fps);
    return st;
}

nm_status nm_distill_teacher_id(const char *path, const char *const *loras, const float *scales, size_t n,
                                char hex[17], nm_err *err) {
    teacher t;
    nm_status st = teacher_open(&t, path, loras, scales, n, true, NULL, NULL, err);
    if (!st) nm_hash_hex(t.id, hex);
    teacher_free(&t);
    return st;
}

/* The hook of the teacher pass: for each trained position, the top-k of
 * the log-softmax and the log of the rest, encoded into the batch's entry
 * buffer at the position's cell. */
typedef struct tpass {
    const int32_t *targets;
    uint32_t k;
    size_t id_bytes, entry_bytes;
    uint8_t *buf; /* [T x entry_bytes] */
    int32_t *ids;
    float *lq;
    float *lp; /* [V] */
} tpass;

static int64_t tpass_loss(void *user, nm_ops_ctx *c, int64_t t0, int64_t ct, int64_t V, float *logits, float *loss,
                          bool backward) {
    (void)c, (void)backward;
    tpass *tp = user;
    int64_t n = 0;
    for (int64_t i = 0; i < ct; i++) {
        int64_t t = t0 + i;
        loss[i] = 0;
        if (tp->targets[t] < 0) continue;
        const float *z = logits + i * V;
        float m = z[0];
        for (int64_t v = 1; v < V; v++) m = z[v] > m ? z[v] : m;
        double s = 0;
        for (int64_t v = 0; v < V; v++) s += exp((double)z[v] - m);
        double lse = m + log(s);
        for (int64_t v = 0; v < V; v++) tp->lp[v] = (float)((double)z[v] - lse);
        /* top-k by insertion: k is small next to V, and ties keep the lower id */
        uint32_t have = 0, k = tp->k;
        for (int64_t v = 0; v < V; v++) {
            float x = tp->lp[v];
            if (have == k && !(x > tp->lq[k - 1])) continue;
            uint32_t j = have < k ? have++ : k - 1;
            while (j > 0 && x > tp->lq[j - 1]) {
                tp->lq[j] = tp->lq[j - 1];
                tp->ids[j] = tp->ids[j - 1];
                j--;
            }
            tp->lq[j] = x;
            tp->ids[j] = (int32_t)v;
        }
        /* the rest, summed directly (1 - sum(top-k) would cancel) */
        double top = -INFINITY;
        for (uint32_t j = 0; j < k; j++) top = top > tp->lq[j] ? top : tp->lq[j];
        double rs = 0;
        if ((int64_t)k < V) {
            /* membership by value order: mark top ids in lp as +inf */
            for (uint32_t j = 0; j < k; j++) tp->lp[tp->ids[j]] = INFINITY;
            for (int64_t v = 0; v < V; v++)
                if (tp->lp[v] != INFINITY) rs += exp((double)z[v] - lse);
            tp->lq[k] = rs > 0 ? (float)log(rs) : -100.0f;
        } else {
            tp->lq[k] = -INFINITY;
        }
        nm_dcache_encode_entry(k, tp->id_bytes, tp->ids, tp->lq, tp->buf + (size_t)t * tp->entry_bytes);
        loss[i] = (float)(lse - z[tp->targets[t]]);
        n++;
    }
    return n;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *meta_json(const nm_distill_cache_params *p, const teacher *t, const nm_dataset *d) {
    json_t *o = json_object();
    json_object_set_new(o, "creator", json_string("nomoat " NM_VERSION_STRING));
    json_object_set_new(o, "teacher", json_string(p->teacher));
    json_object_set_new(o, "teacher_base_fingerprint", json_string(t->fp));
    json_t *a = json_array();
    for (size_t i = 0; i < t->n; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "path", json_string(p->loras[i]));
        json_object_set_new(e, "fingerprint", json_string(t->l[i]->fp));
        json_object_set_new(e, "scale", json_real(t->e[i].scale));
        json_array_append_new(a, e);
    }
    json_object_set_new(o, "teacher_adapters", a);
    json_object_set_new(o, "data", json_string(p->data));
    json_object_set_new(o, "format", json_string(nm_data_format_name(d->format)));
    json_object_set_new(o, "chat_template", p->chat_template ? json_string(p->chat_template) : json_null());
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

nm_status nm_distill_cache_write(const nm_distill_cache_params *p, nm_distill_cache_info *info, const nm_log *log,
                                 nm_err *err) {
    if (info) memset(info, 0, sizeof *info);
    if (!p->teacher) return nm_err_set(err, NM_ERR_ARG, "no teacher model given");
    if (!p->data) return nm_err_set(err, NM_ERR_ARG, "no data given");
    if (!p->out) return nm_err_set(err, NM_ERR_ARG, "no output file given");
    if (p->top_k < 1 || p->top_k > NM_DCACHE_MAX_K)
        return nm_err_set(err, NM_ERR_ARG, "top-k %d is out of range (1..%d)", p->top_k, NM_DCACHE_MAX_K);
    if (p->seq_len < 2 || p->seq_len > (1 << 20)) return nm_err_set(err, NM_ERR_ARG, "sequence length %d is out of range", p->seq_len);
    if (p->batch < 1 || p->batch > 4096) return nm_err_set(err, NM_ERR_ARG, "batch %d is out of range", p->batch);
    int fmt = nm_data_format_parse(p->format ? p->format : "auto");
    if (fmt < 0) return nm_err_set(err, NM_ERR_ARG, "unknown data format '%s'", p->format);
    double t_start = now_s();
    nm_pool *pool = NULL;
    teacher t = {0};
    nm_vocab *vocab = NULL;
    nm_dataset d = {0};
    nm_rows rows = {0};
    nm_buf head;
    nm_buf_init(&head);
    tpass tp = {0};
    char *meta = NULL;
    nm_atomic_file af = {0};
    bool af_open = false;
    nm_status st = nm_pool_new(p->threads > 0 ? p->threads : nm_cpu_count(), &pool, err);
    if (st) return st;
    if ((st = teacher_open(&t, p->teacher, p->loras, p->lora_scales, p->n_loras, p->force, pool, log, err))) goto done;
    if ((st = nm_vocab_from_gguf(t.m->gguf, &vocab, log, err))) goto done;
    int64_t V = t.m->hp.n_vocab;
    if (nm_vocab_n_tokens(vocab) != V) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: the tokenizer has %d tokens, the output head %lld", p->teacher,
                        nm_vocab_n_tokens(vocab), (long long)V);
        goto done;
    }
    uint32_t k = (uint32_t)(p->top_k < V ? p->top_k : V);
    {
        nm_data_opts o = {0};
        o.format = (nm_data_format)fmt;
        o.vocab = vocab;
        if (p->chat_template) {
            o.tmpl = nm_chat_template_from_name(p->chat_template);
            if (o.tmpl == NM_CHAT_TEMPLATE_UNKNOWN) {
                st = nm_err_set(err, NM_ERR_ARG, "unknown chat template '%s'", p->chat_template);
                goto done;
            }
        } else {
            o.tmpl = nm_chat_template_of_gguf(t.m->gguf);
            if (o.tmpl == NM_CHAT_TEMPLATE_UNKNOWN) o.tmpl = NM_CHAT_TEMPLATE_DEFAULT;
        }
        o.seq_len = p->seq_len;
        o.mask_prompt = p->mask_prompt;
        o.skip_bad = p->skip_bad;
        o.vars = p->vars;
        o.n_vars = p->n_vars;
        o.log = log;
        if ((st = nm_dataset_load(p->data, &o, &d, err))) goto done;
    }
    if (d.n_tok > INT32_MAX) {
        st = nm_err_set(err, NM_ERR_ARG, "%s: %lld tokens: a cache holds at most 2^31", p->data, (long long)d.n_tok);
        goto done;
    }
    /* the rows of the pass: examples in order, packed (each example sees
     * only itself, so its log-probs do not depend on the packing) */
    if ((st = nm_rows_build(&d, p->seq_len, true, false, 0, &rows, err))) goto done;
    uint64_t n_pos = 0;
    for (int64_t e = 0; e < d.n_ex; e++)
        for (int64_t j = 1; j < d.ex_len[e]; j++) n_pos += d.trn[d.ex_off[e] + j] != 0;
    nm_dcache_hdr h = {k, (uint32_t)V, (uint32_t)p->seq_len, p->mask_prompt ? NM_DCACHE_MASK_PROMPT : 0u, n_pos,
                       t.id, nm_dataset_hash(&d), nm_vocab_hash(vocab), NULL};
    if (!(meta = meta_json(p, &t, &d))) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    h.meta = meta;
    nm_dcache_encode_head(&h, &d, &head);
    if (head.oom) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    tp.k = k;
    tp.id_bytes = nm_dcache_id_bytes((uint32_t)V);
    tp.entry_bytes = (size_t)k * tp.id_bytes + ((size_t)k + 1) * 2;
    int64_t L = p->seq_len, B = p->batch;
    tp.buf = malloc((size_t)(B * L) * tp.entry_bytes);
    tp.ids = malloc(((size_t)k + 1) * sizeof *tp.ids);
    tp.lq = malloc(((size_t)k + 1) * sizeof *tp.lq);
    tp.lp = malloc((size_t)V * sizeof *tp.lp);
    if (!tp.buf || !tp.ids || !tp.lq || !tp.lp) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((st = nm_atomic_open(&af, p->out, err))) goto done;
    af_open = true;
    uint64_t sum = fnv_more(1469598103934665603ULL, head.data, head.len);
    if ((st = nm_atomic_write(&af, head.data, head.len, err))) goto done;
    nm_tm_head hook = {NULL, tpass_loss, &tp};
    double loss_all = 0;
    int64_t n_all = 0;
    uint64_t written = 0;
    for (int64_t r = 0; r < rows.n_rows; r += B) {
        int64_t ns = rows.n_rows - r < B ? rows.n_rows - r : B;
        nm_tm_batch b = {ns, L, rows.tokens + r * L, rows.targets + r * L, rows.pos + r * L, rows.doc + r * L};
        tp.targets = b.targets;
        double s;
        int64_t n;
        if ((st = nm_tmodel_eval_head(t.m, NULL, &b, &hook, &s, &n, err))) goto done;
        loss_all += s;
        n_all += n;
        for (int64_t c = 0; c < ns * L; c++) {
            if (b.targets[c] < 0) continue;
            const uint8_t *e = tp.buf + (size_t)c * tp.entry_bytes;
            sum = fnv_more(sum, e, tp.entry_bytes);
            if ((st = nm_atomic_write(&af, e, tp.entry_bytes, err))) goto done;
            written++;
        }
    }
    if (written != n_pos) { /* the rows and the examples disagree: a bug, not bad input */
        st = nm_err_set(err, NM_ERR_FORMAT, "teacher pass: %llu entries for %llu trained positions",
                        (unsigned long long)written, (unsigned long long)n_pos);
        goto done;
    }
    uint8_t tail[8];
    for (int i = 0; i < 8; i++) tail[i] = (uint8_t)(sum >> (8 * i));
    if ((st = nm_atomic_write(&af, tail, 8, err))) goto done;
    af_open = false;
    if ((st = nm_atomic_commit(&af, err))) goto done;
    if (info) {
        info->k = (int32_t)k;
        info->n_vocab = (int32_t)V;
        info->seq_len = p->seq_len;
        info->mask_prompt = p->mask_prompt;
        info->n_examples = d.n_ex;
        info->n_tokens = d.n_tok;
        info->n_positions = (int64_t)n_pos;
        info->file_bytes = head.len + n_pos * tp.entry_bytes + 8;
        nm_hash_hex(h.teacher_id, info->teacher_id);
        nm_hash_hex(h.data_hash, info->data_hash);
        nm_hash_hex(h.vocab_hash, info->vocab_hash);
        info->teacher_loss = n_all ? loss_all / (double)n_all : NAN;
        info->seconds = now_s() - t_start;
    }
    nm_logf(log, NM_LOG_INFO, "%s: teacher cache of %lld positions (top-%u), teacher loss %.4f", p->out,
            (long long)n_pos, k, n_all ? loss_all / (double)n_all : NAN);
done:
    if (af_open) nm_atomic_abort(&af);
    free(meta);
    free(tp.buf);
    free(tp.ids);
    free(tp.lq);
    free(tp.lp);
    nm_buf_deinit(&head);
    nm_rows_deinit(&rows);
    nm_dataset_deinit(&d);
    nm_vocab_free(vocab);
    teacher_free(&t);
    nm_pool_free(pool);
    return st;
}
