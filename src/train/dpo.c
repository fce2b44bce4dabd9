/* dpo.c - the DPO objective through the output-head loss hook (see dpo.h).
 *
 * Precision.  Token log-probabilities are formed in double from the float
 * logits and summed per sequence in position order, so a sequence's value
 * does not depend on the thread count or on which other sequences share its
 * micro-batch: the reference values computed once before training are the
 * ones an identical forward would give again (exact resume recomputes
 * them). */
#include "train/dpo.h"
#include "train/gemm.h"
#include "base/base.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int nm_dpo_loss_parse(const char *name) {
    if (!strcasecmp(name, "sigmoid") || !strcasecmp(name, "dpo")) return NM_DPO_SIGMOID;
    if (!strcasecmp(name, "ipo")) return NM_DPO_IPO;
    return -1;
}

const char *nm_dpo_loss_name(nm_dpo_loss l) { return l == NM_DPO_IPO ? "ipo" : "sigmoid"; }

nm_status nm_dpo_cfg_check(const nm_dpo_cfg *c, nm_err *err) {
    if ((unsigned)c->loss > NM_DPO_IPO) return nm_err_set(err, NM_ERR_ARG, "unknown DPO loss");
    if (!(c->beta > 0) || !isfinite(c->beta)) return nm_err_set(err, NM_ERR_ARG, "DPO beta must be positive");
    if (!(c->label_smoothing >= 0 && c->label_smoothing < 0.5))
        return nm_err_set(err, NM_ERR_ARG, "DPO label smoothing must be in [0, 0.5)");
    if (c->loss == NM_DPO_IPO && c->label_smoothing > 0)
        return nm_err_set(err, NM_ERR_ARG, "label smoothing (conservative DPO) applies to the sigmoid loss only");
    return NM_OK;
}

/* log(sigmoid(x)) and sigmoid(x) without overflow for any x. */
static double log_sigmoid(double x) { return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }
static double sigmoid(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

double nm_dpo_pair(const nm_dpo_cfg *c, double pol_c, double pol_r, double ref_c, double ref_r, double *d_c,
                   double *d_r) {
    double h = (pol_c - ref_c) - (pol_r - ref_r), L, dh;
    if (c->loss == NM_DPO_IPO) {
        double u = h - 1.0 / (2.0 * c->beta);
        L = u * u;
        dh = 2.0 * u;
    } else {
        double z = c->beta * h, e = c->label_smoothing;
        L = -(1.0 - e) * log_sigmoid(z) - e * log_sigmoid(-z);
        dh = c->beta * (-(1.0 - e) * sigmoid(-z) + e * sigmoid(z));
    }
    if (d_c) *d_c = dh;
    if (d_r) *d_r = -dh;
    return L;
}

/* ---- the hook ---- */

nm_status nm_dpo_hook_init(nm_dpo_hook *h, const nm_dpo_cfg *cfg, const int32_t *targets, int64_t n_seq,
                           int64_t seq_len, const double *ref, double weight, int64_t n_vocab, int nth, nm_err *err) {
    memset(h, 0, sizeof *h);
    if (n_seq < 1 || seq_len < 1 || n_vocab < 1) return nm_err_set(err, NM_ERR_ARG, "DPO: empty micro-batch");
    h->n_vocab = n_vocab;
    h->nth = nth > 0 ? nth : 1;
    if (ref && n_seq % 2) return nm_err_set(err, NM_ERR_ARG, "DPO: a micro-batch must hold whole pairs (%lld rows)",
                                            (long long)n_seq);
    h->cfg = cfg;
    h->targets = targets;
    h->n_seq = n_seq;
    h->seq_len = seq_len;
    h->ref = ref;
    h->weight = weight;
    size_t T = (size_t)(n_seq * seq_len);
    h->lse = nm_calloc(T, sizeof *h->lse);
    h->tok_lp = nm_calloc(T, sizeof *h->tok_lp);
    h->logp = nm_calloc((size_t)n_seq, sizeof *h->logp);
    h->coef = nm_calloc((size_t)n_seq, sizeof *h->coef);
    h->pair_loss = nm_calloc((size_t)n_seq, sizeof *h->pair_loss);
    h->scratch = nm_calloc((size_t)h->nth * (size_t)n_vocab, sizeof *h->scratch);
    if (!h->lse || !h->tok_lp || !h->logp || !h->coef || !h->pair_loss || !h->scratch) {
        nm_dpo_hook_deinit(h);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    return NM_OK;
}

void nm_dpo_hook_deinit(nm_dpo_hook *h) {
    free(h->lse);
    free(h->tok_lp);
    free(h->logp);
    free(h->coef);
    free(h->pair_loss);
    free(h->scratch);
    memset(h, 0, sizeof *h);
}

typedef struct rows_job {
    nm_dpo_hook *h;
    int64_t t0, ct, V;
    float *logits;
    bool backward;
} rows_job;

static void par(nm_ops_ctx *c, const nm_dpo_hook *h, nm_pool_fn fn, void *arg) {
    if (c && c->pool && c->nth > 1 && c->nth <= h->nth) /* one scratch row per thread */
        nm_pool_run(c->pool, fn, arg);
    else
        fn(arg, 0, 1);
}

static bool target_ok(int32_t y, int64_t V) { return y >= 0 && (int64_t)y < V; }

static void scan_task(void *arg, int ith, int nth) {
    rows_job *j = arg;
    int64_t i0, i1;
    nm_split_range(j->ct, ith, nth, 1, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) {
        int64_t t = j->t0 + i;
        int32_t y = j->h->targets[t];
        if (!target_ok(y, j->V)) continue;
        const float *l = j->logits + i * j->V;
        float m = l[0], *x = j->h->scratch + (size_t)ith * (size_t)j->V;
        for (int64_t v = 1; v < j->V; v++) m = l[v] > m ? l[v] : m;
        /* the vectorised exp of cross-entropy, on a copy: the logits are
         * not ours to change in this sweep */
        memcpy(x, l, (size_t)j->V * sizeof *x);
        double lse = (double)m + log(nm_exp_row(x, j->V, m));
        j->h->lse[t] = lse;
        j->h->tok_lp[t] = (double)l[y] - lse;
    }
}

static void dpo_scan(void *user, nm_ops_ctx *c, int64_t t0, int64_t ct, int64_t V, const float *logits) {
    nm_dpo_hook *h = user;
    if (V > h->n_vocab) return; /* not the vocabulary it was made for: finish() sees no values */
    rows_job j = {h, t0, ct, V, (float *)logits, false};
    par(c, h, scan_task, &j);
}

/* After the scan: each sequence's value, each pair's loss and rewards, and
 * each sequence's gradient coefficient. */
static void finish(nm_dpo_hook *h) {
    const nm_dpo_cfg *c = h->cfg;
    for (int64_t s = 0; s < h->n_seq; s++) {
        double sum = 0;
        int64_t n = 0;
        for (int64_t t = s * h->seq_len; t < (s + 1) * h->seq_len; t++)
            if (h->targets[t] >= 0) sum += h->tok_lp[t], n++;
        h->logp[s] = c->loss == NM_DPO_IPO && n > 0 ? sum / (double)n : sum;
        /* IPO's average: d(mean)/d(token log-prob) = 1/n */
        h->coef[s] = c->loss == NM_DPO_IPO && n > 0 ? 1.0 / (double)n : 1.0;
    }
    if (h->ref) {
        for (int64_t k = 0; 2 * k < h->n_seq; k++) {
            double d_c, d_r, *lp = h->logp + 2 * k;
            const double *rf = h->ref + 2 * k;
            double L = nm_dpo_pair(c, lp[0], lp[1], rf[0], rf[1], &d_c, &d_r);
            double rc = c->beta * (lp[0] - rf[0]), rr = c->beta * (lp[1] - rf[1]);
            h->pair_loss[k] = L;
            h->coef[2 * k] *= h->weight * d_c;
            h->coef[2 * k + 1] *= h->weight * d_r;
            h->sums.loss += L;
            h->sums.acc += rc > rr ? 1.0 : 0.0;
            h->sums.margin += rc - rr;
            h->sums.chosen += rc;
            h->sums.rejected += rr;
            h->sums.n_pairs++;
        }
    } else {
        for (int64_t s = 0; s < h->n_seq; s++) h->coef[s] = 0;
    }
    h->ready = true;
}

static void grad_task(void *arg, int ith, int nth) {
    rows_job *j = arg;
    nm_dpo_hook *h = j->h;
    int64_t i0, i1;
    nm_split_range(j->ct, ith, nth, 1, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) {
        int64_t t = j->t0 + i;
        int32_t y = h->targets[t];
        float *l = j->logits + i * j->V;
        double k = target_ok(y, j->V) ? h->coef[t / h->seq_len] : 0.0;
        if (k == 0.0) {
            memset(l, 0, (size_t)j->V * sizeof *l);
            continue;
        }
        /* d(k * logp_y)/dlogits = k * (onehot(y) - softmax) */
        nm_exp_row(l, j->V, (float)h->lse[t]);
        float kf = (float)k;
        for (int64_t v = 0; v < j->V; v++) l[v] *= -kf;
        l[y] += kf;
    }
}

static int64_t dpo_loss(void *user, nm_ops_ctx *c, int64_t t0, int64_t ct, int64_t V, float *logits, float *loss,
                        bool backward) {
    nm_dpo_hook *h = user;
    if (h->one_sweep && !backward) { /* forward only: gather now, finish after the pass */
        dpo_scan(user, c, t0, ct, V, logits);
        memset(loss, 0, (size_t)ct * sizeof *loss);
        return 0;
    }
    if (!h->ready) finish(h);
    int64_t n = 0;
    for (int64_t i = 0; i < ct; i++) { /* each pair's loss sits on its first position */
        int64_t t = t0 + i, s = t / h->seq_len;
        bool first = h->ref && t % h->seq_len == 0 && s % 2 == 0;
        loss[i] = first ? (float)h->pair_loss[s / 2] : 0.0f;
        n += first;
    }
    if (backward) {
        rows_job j = {h, t0, ct, V, logits, true};
        par(c, h, grad_task, &j);
    }
    return n;
}

nm_tm_head nm_dpo_head(nm_dpo_hook *h) { return (nm_tm_head){h->one_sweep ? NULL : dpo_scan, dpo_loss, h}; }

/* ---- on the model ---- */

nm_status nm_dpo_logps(nm_tmodel *m, nm_tm_lora *lora, const nm_dpo_cfg *c, const nm_tm_batch *b, double *out,
                       nm_err *err) {
    nm_dpo_hook h;
    nm_status st = nm_dpo_hook_init(&h, c, b->targets, b->n_seq, b->seq_len, NULL, 0, m->hp.n_vocab, m->ops.nth, err);
    if (st) return st;
    h.one_sweep = true;
    nm_tm_head hk = nm_dpo_head(&h);
    double s;
    int64_t n;
    st = nm_tmodel_eval_head(m, lora, b, &hk, &s, &n, err);
    if (!st) {
        if (!h.ready) finish(&h);
        memcpy(out, h.logp, (size_t)b->n_seq * sizeof *out);
    }
    nm_dpo_hook_deinit(&h);
    return st;
}

nm_status nm_dpo_step(nm_tmodel *m, nm_tm_lora *lora, const nm_dpo_cfg *c, const nm_tm_batch *b, const double *ref,
                      bool train, double weight, uint64_t drop_seed, nm_dpo_sums *sums, nm_err *err) {
    if (!ref) return nm_err_set(err, NM_ERR_ARG, "DPO: no reference log-probabilities");
    nm_dpo_hook h;
    nm_status st = nm_dpo_hook_init(&h, c, b->targets, b->n_seq, b->seq_len, ref, weight, m->hp.n_vocab, m->ops.nth, err);
    if (st) return st;
    h.one_sweep = !train; /* without a gradient one output-head sweep is enough */
    nm_tm_head hk = nm_dpo_head(&h);
    double s;
    int64_t n;
    st = train ? nm_tmodel_fwd_bwd_head(m, lora, b, &hk, 0.0f, drop_seed, &s, &n, err)
               : nm_tmodel_eval_head(m, lora, b, &hk, &s, &n, err);
    if (!st && !h.ready) finish(&h);
    if (!st) {
        sums->loss += h.sums.loss;
        sums->acc += h.sums.acc;
        sums->margin += h.sums.margin;
        sums->chosen += h.sums.chosen;
        sums->rejected += h.sums.rejected;
        sums->n_pairs += h.sums.n_pairs;
    }
    nm_dpo_hook_deinit(&h);
    return st;
}
