/* loglik.c - log-likelihoods of token sequences and the parallel worker
 * runner used by evaluation, scoring and generation (see eval.h).
 *
 * Parallelism is over items (documents, prompts, candidates), not inside
 * one forward pass: for the small models curation and evaluation run most
 * (and for the many short sequences they process) one single-threaded
 * context per core keeps every core busy without the per-operation
 * hand-offs that split matrix products need.  With fewer items than
 * threads, each worker gets several threads. */
#include "eval/eval.h"
#include "base/base.h"
#include "base/threads.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

nm_status nm_ev_tokens(const nm_vocab *v, const char *prefix, const char *cont, bool parse_special, int32_t **ids,
                       size_t *n, size_t *n_prefix, nm_err *err) {
    *ids = NULL;
    int32_t *a = NULL, *w = NULL;
    size_t na = 0, nw = 0, lp = strlen(prefix), lc = strlen(cont);
    nm_status st = nm_tokenize(v, prefix, lp, true, parse_special, &a, &na, err);
    if (st) return st;
    char *whole = malloc(lp + lc + 1);
    if (!whole) {
        free(a);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    memcpy(whole, prefix, lp);
    memcpy(whole + lp, cont, lc);
    whole[lp + lc] = 0;
    st = nm_tokenize(v, whole, lp + lc, true, parse_special, &w, &nw, err);
    free(whole);
    if (st) {
        free(a);
        return st;
    }
    if (nw >= na && memcmp(w, a, na * sizeof *a) == 0) {
        free(a);
        *ids = w;
        *n = nw;
        *n_prefix = na;
        return NM_OK;
    }
    free(w);
    int32_t *c = NULL;
    size_t nc = 0;
    if ((st = nm_tokenize(v, cont, lc, false, parse_special, &c, &nc, err))) {
        free(a);
        return st;
    }
    int32_t *all = realloc(a, (na + nc + 1) * sizeof *all);
    if (!all) {
        free(a);
        free(c);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    if (nc) memcpy(all + na, c, nc * sizeof *c);
    free(c);
    *ids = all;
    *n = na + nc;
    *n_prefix = na;
    return NM_OK;
}

nm_status nm_ev_nll(nm_context *c, int32_t n_vocab, const int32_t *ids, size_t n, const uint8_t *mask, size_t from,
                    double *sum, double *sum2, int64_t *count, nm_err *err) {
    const int32_t n_ctx = nm_context_n_ctx(c);
    if (n > (size_t)n_ctx) return nm_err_set(err, NM_ERR_RANGE, "%zu tokens do not fit the context of %d", n, n_ctx);
    nm_status st = nm_context_truncate(c, 0, err);
    if (st) return st;
    /* the scoring contexts have n_batch = n_ctx: one decode call */
    if ((st = nm_decode(c, ids, (int32_t)n, err))) return st;
    for (size_t k = 0; k + 1 < n; k++) {
        size_t t = k + 1; /* the logits of position k predict token k + 1 */
        if (!(mask ? mask[t] != 0 : t >= from)) continue;
        const float *lg = nm_get_logits_ith(c, (int32_t)k);
        if (!lg) return nm_err_set(err, NM_ERR_INTERNAL, "scoring context without logits for every token");
        /* -log softmax in double: the sum runs over the whole vocabulary */
        float mx = lg[0];
        for (int32_t i = 1; i < n_vocab; i++) mx = lg[i] > mx ? lg[i] : mx;
        double z = 0.0;
        for (int32_t i = 0; i < n_vocab; i++) z += exp((double)lg[i] - mx);
        double nll = log(z) - ((double)lg[ids[t]] - mx);
        *sum += nll;
        if (sum2) *sum2 += nll * nll;
        if (count) (*count)++;
    }
    return NM_OK;
}

int nm_ev_workers(int32_t threads, int64_t n_items) {
    int nth = threads > 0 ? threads : nm_cpu_count();
    if (n_items < nth) nth = (int)(n_items > 0 ? n_items : 1);
    return nth;
}

typedef struct par_job {
    const nm_model *m;
    nm_context_params cp;
    const nm_lora_entry *loras;
    size_t n_loras;
    int64_t n_items;
    nm_ev_item_fn fn;
    void *user;
    nm_progress_fn progress;
    void *puser;
    const char *what;
    atomic_llong next, done;
    atomic_int failed; /* 0, or 1 + the worker whose error is kept */
    nm_err *errs;      /* one per worker */
    nm_status *st;
} par_job;

static void par_task(void *arg, int ith, int nth) {
    (void)nth;
    par_job *j = arg;
    nm_context *c = NULL;
    nm_err *err = &j->errs[ith];
    nm_status st = nm_context_new(j->m, &j->cp, &c, err);
    if (!st && j->n_loras) st = nm_context_set_loras(c, j->loras, j->n_loras, err);
    while (!st && !atomic_load(&j->failed)) {
        long long i = atomic_fetch_add(&j->next, 1);
        if (i >= j->n_items) break;
        st = j->fn(j->user, ith, c, (int64_t)i, err);
        long long d = atomic_fetch_add(&j->done, 1) + 1;
        if (!st && ith == 0 && j->progress && j->progress(j->puser, (uint64_t)d, (uint64_t)j->n_items, j->what))
            st = nm_err_set(err, NM_ERR_CANCELLED, "%s cancelled after %lld of %lld", j->what, d, (long long)j->n_items);
    }
    if (st) {
        int expect = 0;
        atomic_compare_exchange_strong(&j->failed, &expect, 1 + ith);
    }
    j->st[ith] = st;
    nm_context_free(c);
}

nm_status nm_ev_parallel(const nm_model *m, const nm_context_params *cp, const nm_lora_entry *loras, size_t n_loras,
                         int32_t threads, int64_t n_items, nm_ev_item_fn fn, void *user, nm_progress_fn progress,
                         void *puser, const char *what, int *n_workers, nm_err *err) {
    int all = threads > 0 ? threads : nm_cpu_count();
    int nw = nm_ev_workers(threads, n_items);
    if (n_workers) *n_workers = nw;
    if (n_items <= 0) return NM_OK;
    par_job j;
    memset(&j, 0, sizeof j);
    j.m = m;
    j.cp = *cp;
    j.cp.n_threads = all / nw > 0 ? all / nw : 1;
    j.loras = loras;
    j.n_loras = n_loras;
    j.n_items = n_items;
    j.fn = fn;
    j.user = user;
    j.progress = progress;
    j.puser = puser;
    j.what = what;
    atomic_init(&j.next, 0);
    atomic_init(&j.done, 0);
    atomic_init(&j.failed, 0);
    j.errs = nm_calloc((size_t)nw, sizeof *j.errs);
    j.st = nm_calloc((size_t)nw, sizeof *j.st);
    nm_pool *pool = NULL;
    nm_status st = NM_OK;
    if (!j.errs || !j.st) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    } else if (nw > 1) {
        if (!(st = nm_pool_new(nw, &pool, err))) nm_pool_run(pool, par_task, &j);
    } else {
        par_task(&j, 0, 1);
    }
    if (!st) {
        int f = atomic_load(&j.failed);
        if (f) {
            st = j.st[f - 1];
            if (err) *err = j.errs[f - 1];
        }
    }
    if (!st && progress) progress(puser, (uint64_t)n_items, (uint64_t)n_items, what);
    nm_pool_free(pool);
    free(j.errs);
    free(j.st);
    return st;
}

nm_status nm_ev_template(const nm_model *m, const char *name, nm_chat_template *out, nm_err *err) {
    if (name) {
        *out = nm_chat_template_from_name(name);
        if (*out == NM_CHAT_TEMPLATE_UNKNOWN)
            return nm_err_set(err, NM_ERR_ARG, "unknown chat template '%s'", name);
        return NM_OK;
    }
    *out = nm_chat_template_of_gguf(nm_model_gguf(m));
    if (*out == NM_CHAT_TEMPLATE_UNKNOWN)
        return nm_err_set(err, NM_ERR_UNSUPPORTED,
                          "the model's chat template is not one nomoat knows: name one (--chat-template)");
    return NM_OK;
}
