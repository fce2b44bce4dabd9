/* perplexity.c - perplexity over a token sequence, the way llama.cpp's
 * perplexity tool computes it (so the numbers compare): chunks of n_ctx
 * tokens, BOS first, the second half of each chunk scored. */
#include "model.h"
#include "base/base.h"

#include <math.h>
#include <stdlib.h>

/* -log softmax(logits)[target], in double: the sum runs over the whole
 * vocabulary, and the per-token values are averaged over many tokens. */
static double token_nll(const float *logits, int64_t n_vocab, int32_t target) {
    float max = logits[0];
    for (int64_t i = 1; i < n_vocab; i++) max = logits[i] > max ? logits[i] : max;
    double sum = 0.0;
    for (int64_t i = 0; i < n_vocab; i++) sum += exp((double)logits[i] - max);
    return log(sum) - ((double)logits[target] - max);
}

nm_status nm_perplexity(nm_context *c, const int32_t *tokens, size_t n_tokens, int32_t bos,
                        nm_progress_fn progress, void *user, nm_perplexity_result *out, nm_err *err) {
    *out = (nm_perplexity_result){0};
    const int64_t n_ctx = c->n_ctx, n_vocab = c->m->hp.n_vocab;
    if (!c->logits_all || c->n_batch < n_ctx)
        return nm_err_set(err, NM_ERR_ARG, "perplexity needs a context with logits_all and n_batch = n_ctx");
    if (n_ctx < 4) return nm_err_set(err, NM_ERR_ARG, "perplexity needs a context of at least 4 tokens");
    const int64_t n_chunks = (int64_t)(n_tokens / (size_t)n_ctx);
    if (n_chunks < 1)
        return nm_err_set(err, NM_ERR_ARG, "%zu tokens are fewer than one chunk of %lld (the context size)", n_tokens,
                          (long long)n_ctx);
    int32_t *chunk = malloc((size_t)n_ctx * sizeof *chunk);
    if (!chunk) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    const int64_t first = n_ctx / 2;
    double sum = 0.0, sum2 = 0.0;
    int64_t count = 0;
    nm_status st = NM_OK;
    for (int64_t ch = 0; ch < n_chunks && !st; ch++) {
        const int32_t *src = tokens + ch * n_ctx;
        for (int64_t i = 0; i < n_ctx; i++) chunk[i] = src[i];
        if (bos >= 0) chunk[0] = bos;
        if ((st = nm_context_truncate(c, 0, err)) || (st = nm_decode(c, chunk, (int32_t)n_ctx, err))) break;
        /* logits at position j predict the original token j + 1 */
        for (int64_t j = first; j < n_ctx - 1; j++) {
            const double nll = token_nll(nm_get_logits_ith(c, (int32_t)j), n_vocab, src[j + 1]);
            sum += nll;
            sum2 += nll * nll;
            count++;
        }
        if (progress && progress(user, (uint64_t)(ch + 1), (uint64_t)n_chunks, "perplexity"))
            st = nm_err_set(err, NM_ERR_CANCELLED, "perplexity cancelled after %lld chunks", (long long)ch + 1);
    }
    free(chunk);
    if (st) return st;
    const double mean = sum / (double)count;
    double var = sum2 / (double)count - mean * mean;
    out->nll = mean;
    out->nll_se = var > 0.0 && count > 1 ? sqrt(var / (double)(count - 1)) : 0.0;
    out->ppl = exp(mean);
    out->ppl_se = out->nll_se * out->ppl;
    out->n_scored = count;
    out->n_chunks = (int32_t)n_chunks;
    return NM_OK;
}
