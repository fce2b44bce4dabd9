/* ppl.c - perplexity over a file in any training format, read by the
 * trainer's own reader (src/train/data.c) so that "the tokens trained on"
 * and "the tokens scored" are the same tokens: with prompt masking, the
 * assistant turns of conversations; for plain text, every token of the
 * trainer's windows but the first. */
#include "eval/eval.h"
#include "base/base.h"
#include "train/data.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void nm_eval_ppl_params_default(nm_eval_ppl_params *p) {
    memset(p, 0, sizeof *p);
    p->format = "auto";
}

typedef struct ppl_job {
    const nm_dataset *d;
    int32_t n_vocab;
    double *sum, *sum2;
    int64_t *cnt;
} ppl_job;

static nm_status ppl_item(void *user, int worker, nm_context *c, int64_t e, nm_err *err) {
    (void)worker;
    ppl_job *j = user;
    const nm_dataset *d = j->d;
    const int64_t off = d->ex_off[e];
    return nm_ev_nll(c, j->n_vocab, d->tok + off, (size_t)d->ex_len[e], d->trn + off, 0, &j->sum[e], &j->sum2[e],
                     &j->cnt[e], err);
}

nm_status nm_eval_perplexity(const nm_model *m, const char *path, const nm_eval_ppl_params *p,
                             nm_eval_ppl_result *r, const nm_log *log, nm_err *err) {
    memset(r, 0, sizeof *r);
    const nm_vocab *v = nm_model_vocab(m);
    if (!v) return nm_err_set(err, NM_ERR_UNSUPPORTED, "the model has no tokenizer");
    nm_model_info info;
    nm_model_get_info(m, &info);
    int fmt = nm_data_format_parse(p->format ? p->format : "auto");
    if (fmt < 0)
        return nm_err_set(err, NM_ERR_ARG, "unknown data format '%s' (auto, text, alpaca, sharegpt, messages)",
                          p->format);
    int32_t n_ctx = p->n_ctx > 0 ? p->n_ctx : (info.n_ctx_train < 2048 ? info.n_ctx_train : 2048);
    if (n_ctx < 2) return nm_err_set(err, NM_ERR_ARG, "a context of %d tokens is too short to score anything", n_ctx);
    nm_chat_template tmpl = NM_CHAT_TEMPLATE_UNKNOWN;
    if (p->chat_template) {
        nm_status st = nm_ev_template(m, p->chat_template, &tmpl, err);
        if (st) return st;
    } else {
        tmpl = nm_chat_template_of_gguf(nm_model_gguf(m)); /* UNKNOWN: conversations fail with the reason */
    }
    nm_data_opts o = {0};
    o.format = (nm_data_format)fmt;
    o.vocab = v;
    o.tmpl = tmpl;
    o.seq_len = n_ctx - 1;
    o.mask_prompt = !p->all_tokens;
    o.log = log;
    nm_dataset d;
    nm_status st = nm_dataset_load(path, &o, &d, err);
    if (st) return st;
    int64_t n_ex = d.n_ex;
    if (p->max_examples > 0 && p->max_examples < n_ex) n_ex = p->max_examples;
    if (d.n_truncated)
        nm_logf(log, NM_LOG_WARN, "%s: %lld examples longer than the context of %d tokens were cut", path,
                (long long)d.n_truncated, n_ctx);
    ppl_job j = {&d, info.n_vocab, NULL, NULL, NULL};
    j.sum = nm_calloc((size_t)n_ex, sizeof *j.sum);
    j.sum2 = nm_calloc((size_t)n_ex, sizeof *j.sum2);
    j.cnt = nm_calloc((size_t)n_ex, sizeof *j.cnt);
    if (!j.sum || !j.sum2 || !j.cnt) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    int64_t longest = 0;
    for (int64_t e = 0; e < n_ex; e++) longest = d.ex_len[e] > longest ? d.ex_len[e] : longest;
    if (!st) {
        nm_context_params cp = nm_context_default_params();
        cp.n_ctx = (int32_t)(longest < 4 ? 4 : longest);
        cp.n_batch = cp.n_ctx;
        cp.logits_all = true;
        st = nm_ev_parallel(m, &cp, p->loras, p->n_loras, p->threads, n_ex, ppl_item, &j, p->progress, p->user, "perplexity", NULL, err);
    }
    if (!st) {
        double S = 0, S2 = 0;
        int64_t N = 0, E = 0;
        for (int64_t e = 0; e < n_ex; e++) {
            S += j.sum[e];
            S2 += j.sum2[e];
            N += j.cnt[e];
            E += j.cnt[e] > 0;
        }
        if (N == 0) {
            st = nm_err_set(err, NM_ERR_FORMAT, "%s: no token to score", path);
        } else {
            const double mean = S / (double)N;
            const double var = S2 / (double)N - mean * mean;
            r->nll = mean;
            r->nll_se = N > 1 && var > 0 ? sqrt(var / (double)(N - 1)) : 0.0;
            /* examples as the units: the ratio estimator's variance */
            double q = 0;
            for (int64_t e = 0; e < n_ex; e++) {
                double dev = j.sum[e] - mean * (double)j.cnt[e];
                q += dev * dev;
            }
            r->nll_se_ex = E > 1 ? sqrt((double)E / (double)(E - 1) * q) / (double)N : 0.0;
            r->ppl = exp(mean);
            r->ppl_se = r->ppl * r->nll_se;
            r->n_tokens = N;
            r->n_examples = E;
        }
    }
    free(j.sum);
    free(j.sum2);
    free(j.cnt);
    nm_dataset_deinit(&d);
    return st;
}
