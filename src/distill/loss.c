/* loss.c - the distillation loss on the output head (through the nm_tm_head
 * hook of src/train/model.h) and the trainer's view of the teacher cache.
 *
 * Gradient of one position.  With the student's log-softmax p, its bucket
 * log-masses u_b = log P_b (a top-k token alone, or the rest), and the loss
 * as a function of u (g_b = dL/du_b; see nm_kd_position for g), the chain
 * rule through u_b = log sum_{v in b} p_v gives
 *   dL/dz_v = g_b(v) p_v / P_b(v) - p_v G,    G = sum_b g_b
 * so a top-k token gets g_b - p_v G and a token of the rest g_rest p_v /
 * P_rest - p_v G.  G is zero in exact arithmetic (both sides are
 * distributions) and is kept for the last bits.  p_v / P_rest is computed
 * as exp(z_v - max) / sum_rest exp(z - max): no division by a mass that
 * underflowed. */
#include "distill/distill.h"
#include "base/base.h"
#include "base/threads.h"
#include "train/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double nm_kd_position(float *z, int64_t V, const int32_t *ids, const float *lq, int k, int32_t target,
                      const nm_kd_cfg *cfg, float scale, bool grad, uint32_t *stamp, uint32_t mark) {
    double u[NM_DCACHE_MAX_K + 1], ls[NM_DCACHE_MAX_K + 1], lt[NM_DCACHE_MAX_K + 1], g[NM_DCACHE_MAX_K + 1];
    for (int b = 0; b < k; b++) {
        if (stamp[ids[b]] == mark) return NAN;
        stamp[ids[b]] = mark;
    }
    bool rest = k < V;
    int nb = k + rest;
    float m = z[0];
    for (int64_t v = 1; v < V; v++) m = z[v] > m ? z[v] : m;
    double S = 0, SR = 0;
    for (int64_t v = 0; v < V; v++) {
        double e = exp((double)z[v] - m);
        S += e;
        if (stamp[v] != mark) SR += e;
    }
    double lse = m + log(S);
    for (int b = 0; b < k; b++) u[b] = (double)z[ids[b]] - lse;
    if (rest) u[k] = SR > 0 ? log(SR) + m - lse : -INFINITY;
    /* softened (k+1)-bucket distributions: student ls, teacher lt (logs) */
    double tau = cfg->tau, mx = -INFINITY, mt = -INFINITY;
    for (int b = 0; b < nb; b++) {
        mx = u[b] / tau > mx ? u[b] / tau : mx;
        mt = lq[b] / tau > mt ? lq[b] / tau : mt;
    }
    double ss = 0, st = 0;
    for (int b = 0; b < nb; b++) {
        ss += exp(u[b] / tau - mx);
        st += exp(lq[b] / tau - mt);
    }
    for (int b = 0; b < nb; b++) {
        ls[b] = u[b] / tau - mx - log(ss);
        lt[b] = lq[b] / tau - mt - log(st);
    }
    double kl = 0;
    if (!cfg->reverse) {
        for (int b = 0; b < nb; b++) {
            double q = exp(lt[b]);
            if (q > 0) kl += q * (lt[b] - ls[b]);
            g[b] = tau * (exp(ls[b]) - q);
        }
    } else {
        for (int b = 0; b < nb; b++) {
            double s = exp(ls[b]);
            if (s > 0) kl += s * (ls[b] - lt[b]);
        }
        for (int b = 0; b < nb; b++) {
            double s = exp(ls[b]);
            g[b] = s > 0 ? tau * s * (ls[b] - lt[b] - kl) : 0;
        }
    }
    double a = cfg->alpha;
    bool ce = a > 0 && target >= 0 && target < V;
    double loss = (1 - a) * tau * tau * kl + (ce ? a * (lse - z[target]) : 0);
    if (!grad) return loss;
    double G = 0;
    for (int b = 0; b < nb; b++) G += g[b];
    double gR = rest ? g[k] : 0, w = 1 - a;
    for (int64_t v = 0; v < V; v++) {
        if (stamp[v] == mark) continue;
        double e = exp((double)z[v] - m), p = e / S;
        double d = w * ((SR > 0 ? gR * e / SR : 0) - p * G) + (ce ? a * p : 0);
        z[v] = (float)(scale * d);
    }
    for (int b = 0; b < k; b++) {
        double p = exp(u[b]);
        z[ids[b]] = (float)(scale * (w * (g[b] - p * G) + (ce ? a * p : 0)));
    }
    if (ce) z[target] -= (float)(scale * a);
    return loss;
}

/* ======================================================================== */
/* the trainer's side                                                       */
/* ======================================================================== */

struct nm_kd {
    nm_dcache *c;
    nm_kd_cfg cfg;
    int64_t n_vocab;
    nm_dataset shadow; /* the training examples, tokens replaced by their
                          offsets in the cache */
    bool bound;
    nm_rows srows;     /* the epoch's rows of cache offsets */
    /* per thread: the top-k membership table, its current mark, an entry */
    int nth;
    uint32_t *stamp, *mark;
    int32_t *ids;
    float *lq;
    /* the micro-batch being run, and the entry of each row of a chunk */
    const nm_tm_batch *b;
    int64_t cell0;
    float scale;
    bool bad;
    int64_t bad_cell;
    int64_t *ent;
    int64_t ent_cap;
    /* the chunk being run (kd_rows_fn) */
    float *logits, *loss;
    int64_t t0, ct, V;
    bool backward;
};

nm_status nm_kd_open(const char *path, const nm_vocab *v, int64_t n_vocab, const nm_kd_cfg *cfg, nm_kd **out,
                     nm_err *err) {
    *out = NULL;
    if (!(cfg->tau > 0) || !isfinite(cfg->tau) || cfg->tau > 100)
        return nm_err_set(err, NM_ERR_ARG, "distillation temperature must be in (0, 100], got %g", cfg->tau);
    if (!(cfg->alpha >= 0 && cfg->alpha <= 1))
        return nm_err_set(err, NM_ERR_ARG, "distillation alpha (weight of cross-entropy) must be in [0, 1], got %g",
                          cfg->alpha);
    nm_kd *kd = nm_calloc(1, sizeof *kd);
    if (!kd) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    kd->cfg = *cfg;
    kd->n_vocab = n_vocab;
    nm_status st = nm_dcache_open(path, &kd->c, err);
    if (!st && (kd->c->n_vocab != n_vocab || kd->c->vocab_hash != nm_vocab_hash(v)))
        st = nm_err_set(err, NM_ERR_ARG,
                        "%s: the student's tokenizer (%lld tokens) is not the teacher's (%u tokens): distillation "
                        "through a teacher cache needs the same vocabulary",
                        path, (long long)n_vocab, kd->c->n_vocab);
    if (st) {
        nm_kd_free(kd);
        return st;
    }
    *out = kd;
    return NM_OK;
}

void nm_kd_free(nm_kd *kd) {
    if (!kd) return;
    nm_dcache_free(kd->c);
    nm_dataset_deinit(&kd->shadow);
    nm_rows_deinit(&kd->srows);
    free(kd->stamp);
    free(kd->mark);
    free(kd->ids);
    free(kd->lq);
    free(kd->ent);
    free(kd);
}

uint64_t nm_kd_teacher_id(const nm_kd *kd) { return kd->c->teacher_id; }

nm_status nm_kd_check_data(const nm_kd *kd, const nm_dataset *d, const char *path, nm_err *err) {
    if (nm_dataset_hash(d) == kd->c->data_hash) return NM_OK;
    return nm_err_set(err, NM_ERR_ARG,
                      "%s: the data is not what the teacher cache was made from (%lld examples of %lld tokens here, "
                      "%lld of %lld in the cache): another file, format, sequence length, chat template, prompt "
                      "masking or --var",
                      path, (long long)d->n_ex, (long long)d->n_tok, (long long)kd->c->data.n_ex,
                      (long long)kd->c->data.n_tok);
}

/* The training examples are the cache's in order, less those held out for
 * validation: match them in order (identical examples have identical
 * teacher entries, so which of two equal ones is matched does not matter). */
static nm_status bind(nm_kd *kd, const nm_dataset *train, nm_err *err) {
    const nm_dataset *cd = &kd->c->data;
    nm_dataset *s = &kd->shadow;
    s->tok = malloc((size_t)(train->n_tok ? train->n_tok : 1) * sizeof *s->tok);
    s->trn = malloc((size_t)(train->n_tok ? train->n_tok : 1));
    s->ex_off = malloc((size_t)(train->n_ex ? train->n_ex : 1) * sizeof *s->ex_off);
    s->ex_len = malloc((size_t)(train->n_ex ? train->n_ex : 1) * sizeof *s->ex_len);
    if (!s->tok || !s->trn || !s->ex_off || !s->ex_len) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    int64_t j = 0;
    for (int64_t e = 0; e < train->n_ex; e++) {
        const int32_t *tok = train->tok + train->ex_off[e];
        const uint8_t *trn = train->trn + train->ex_off[e];
        int64_t n = train->ex_len[e];
        while (j < cd->n_ex && !(cd->ex_len[j] == n && !memcmp(cd->tok + cd->ex_off[j], tok, (size_t)n * 4) &&
                                 !memcmp(cd->trn + cd->ex_off[j], trn, (size_t)n)))
            j++;
        if (j == cd->n_ex)
            return nm_err_set(err, NM_ERR_ARG, "training example %lld is not in the teacher cache", (long long)e);
        for (int64_t i = 0; i < n; i++) {
            s->tok[train->ex_off[e] + i] = (int32_t)(cd->ex_off[j] + i);
            s->trn[train->ex_off[e] + i] = trn[i];
        }
        s->ex_off[e] = train->ex_off[e];
        s->ex_len[e] = n;
        j++;
    }
    s->n_ex = s->cap_ex = train->n_ex;
    s->n_tok = s->cap_tok = train->n_tok;
    kd->bound = true;
    return NM_OK;
}

nm_status nm_kd_rows(nm_kd *kd, const nm_dataset *train, int64_t seq_len, bool pack, bool shuffle, uint64_t seed,
                     const nm_rows *rows, nm_err *err) {
    nm_status st;
    if (!kd->bound && (st = bind(kd, train, err))) return st;
    nm_rows_deinit(&kd->srows);
    /* the same examples, lengths and seed give the same order and packing */
    if ((st = nm_rows_build(&kd->shadow, seq_len, pack, shuffle, seed, &kd->srows, err))) return st;
    if (kd->srows.n_rows != rows->n_rows ||
        memcmp(kd->srows.doc, rows->doc, (size_t)(rows->n_rows * seq_len) * sizeof *rows->doc))
        return nm_err_set(err, NM_ERR_FORMAT, "distillation: the rows of the cache and of the data differ");
    return NM_OK;
}

/* Rows ith, ith + nth, ... of the chunk: each row's arithmetic is the same
 * whatever thread runs it, so the bits do not depend on the thread count. */
static void kd_rows_fn(void *arg, int ith, int nth) {
    nm_kd *kd = arg;
    const nm_dcache *dc = kd->c;
    int64_t V = kd->V;
    uint32_t *stamp = kd->stamp + (size_t)ith * (size_t)V;
    int32_t *ids = kd->ids + (size_t)ith * dc->k;
    float *lq = kd->lq + (size_t)ith * (dc->k + 1);
    for (int64_t i = ith; i < kd->ct; i += nth) {
        float *z = kd->logits + i * V;
        int64_t e = kd->ent[i];
        kd->loss[i] = 0;
        if (e < 0) {
            if (kd->backward) memset(z, 0, (size_t)V * sizeof *z);
            continue;
        }
        nm_dcache_entry(dc, (uint64_t)e, ids, lq);
        if (++kd->mark[ith] == 0) {
            memset(stamp, 0, (size_t)V * sizeof *stamp);
            kd->mark[ith] = 1;
        }
        int32_t tgt = kd->b->targets[kd->t0 + i];
        kd->loss[i] = (float)nm_kd_position(z, V, ids, lq, (int)dc->k, tgt, &kd->cfg, kd->scale, kd->backward, stamp,
                                            kd->mark[ith]);
    }
}

static int64_t kd_loss(void *user, nm_ops_ctx *c, int64_t t0, int64_t ct, int64_t V, float *logits, float *loss,
                       bool backward) {
    nm_kd *kd = user;
    const nm_tm_batch *b = kd->b;
    const nm_dcache *dc = kd->c;
    int64_t n = 0, cells = kd->srows.n_rows * kd->srows.seq_len;
    if (ct > kd->ent_cap) { /* HEAD_CHUNK rows: allocated once */
        int64_t *p = realloc(kd->ent, (size_t)ct * sizeof *p);
        if (!p) {
            kd->bad = true;
            kd->bad_cell = -1;
            ct = 0;
        } else {
            kd->ent = p;
            kd->ent_cap = ct;
        }
    }
    /* which entry each row reads (serial: it records the first bad cell) */
    for (int64_t i = 0; i < ct; i++) {
        int64_t t = t0 + i, cell = kd->cell0 + t, e = -1;
        if (b->targets && b->targets[t] >= 0) {
            int32_t off = cell < cells && kd->srows.doc[cell] >= 0 ? kd->srows.tokens[cell] : -1;
            e = off >= 0 && dc->data.tok[off] == b->tokens[t] ? dc->entry_of[off] : -1;
            if (e < 0 && !kd->bad) {
                kd->bad = true;
                kd->bad_cell = cell;
            }
        }
        kd->ent[i] = e;
        n += e >= 0;
    }
    kd->logits = logits;
    kd->loss = loss;
    kd->t0 = t0;
    kd->ct = ct;
    kd->V = V;
    kd->backward = backward;
    if (c && c->pool && c->nth > 1 && kd->nth >= c->nth && ct > 1)
        nm_pool_run(c->pool, kd_rows_fn, kd);
    else
        kd_rows_fn(kd, 0, 1);
    return n;
}

static nm_status kd_run(nm_kd *kd, nm_tmodel *m, nm_tm_lora *lora, const nm_tm_batch *b, int64_t row0, bool train,
                        float dloss, uint64_t drop_seed, double *loss_sum, int64_t *n_tok, nm_err *err) {
    if (m->hp.n_vocab != kd->n_vocab) return nm_err_set(err, NM_ERR_ARG, "distillation: the model's vocabulary changed");
    int nth = m->ops.nth > 1 ? m->ops.nth : 1;
    if (kd->nth < nth) { /* per-thread scratch, grown once */
        free(kd->stamp);
        free(kd->mark);
        free(kd->ids);
        free(kd->lq);
        kd->nth = 0;
        kd->stamp = nm_calloc((size_t)nth * (size_t)kd->n_vocab, sizeof *kd->stamp);
        kd->mark = nm_calloc((size_t)nth, sizeof *kd->mark);
        kd->ids = malloc((size_t)nth * kd->c->k * sizeof *kd->ids);
        kd->lq = malloc((size_t)nth * (kd->c->k + 1) * sizeof *kd->lq);
        if (!kd->stamp || !kd->mark || !kd->ids || !kd->lq) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        kd->nth = nth;
    }
    kd->b = b;
    kd->cell0 = row0 * b->seq_len;
    kd->scale = dloss;
    kd->bad = false;
    if (b->seq_len != kd->srows.seq_len || row0 < 0 || row0 + b->n_seq > kd->srows.n_rows)
        return nm_err_set(err, NM_ERR_ARG, "distillation: rows %lld..%lld are not the epoch's", (long long)row0,
                          (long long)(row0 + b->n_seq));
    nm_tm_head hook = {NULL, kd_loss, kd};
    nm_status st = train ? nm_tmodel_fwd_bwd_head(m, lora, b, &hook, dloss, drop_seed, loss_sum, n_tok, err)
                         : nm_tmodel_eval_head(m, lora, b, &hook, loss_sum, n_tok, err);
    if (!st && kd->bad)
        st = nm_err_set(err, NM_ERR_FORMAT, "distillation: the token at cell %lld has no teacher entry in the cache",
                        (long long)kd->bad_cell);
    kd->b = NULL;
    return st;
}

nm_status nm_kd_fwd_bwd(nm_kd *kd, nm_tmodel *m, nm_tm_lora *lora, const nm_tm_batch *b, int64_t row0, float dloss,
                        uint64_t drop_seed, double *loss_sum, int64_t *n_tok, nm_err *err) {
    return kd_run(kd, m, lora, b, row0, true, dloss, drop_seed, loss_sum, n_tok, err);
}

nm_status nm_kd_eval(nm_kd *kd, nm_tmodel *m, nm_tm_lora *lora, const nm_tm_batch *b, int64_t row0, double *loss_sum,
                     int64_t *n_tok, nm_err *err) {
    return kd_run(kd, m, lora, b, row0, false, 0.0f, 0, loss_sum, n_tok, err);
}
