/* generate.c - N candidate responses per prompt, in parallel over prompts.
 *
 * A worker takes a prompt, decodes it once, keeps the logits of its last
 * token, and for each candidate cuts the cache back to the prompt and
 * samples from those logits on: the prompt is processed once however many
 * candidates it gets.  Candidate j of prompt i samples with a seed derived
 * from (seed, i, j) alone, and results land in per-prompt slots appended in
 * order at the end, so the output is the same for any thread count. */
#include "curate/curate.h"
#include "eval/eval.h"

#include <stdlib.h>
#include <string.h>

void nm_gen_params_default(nm_gen_params *p) {
    memset(p, 0, sizeof *p);
    p->n = 4;
    p->max_tokens = 256;
    p->sampling = nm_sampler_params_default();
}

typedef struct gen_slot {
    char **resp; /* [n] */
    uint64_t *seed;
} gen_slot;

typedef struct gen_job {
    const nm_model *m;
    const nm_vocab *v;
    const nm_gen_params *p;
    const nm_cand **prompts; /* first candidate of each prompt */
    nm_chat_template tmpl;
    int32_t n_vocab;
    uint64_t base_seed;
    gen_slot *slots;
    float **saved; /* per worker: logits after the prompt */
} gen_job;

static uint64_t cand_seed(uint64_t base, int64_t prompt_id, int32_t j) {
    uint64_t s = nm_cu_mix(base ^ nm_cu_mix((uint64_t)prompt_id * 2 + 1) ^ ((uint64_t)j + 1) * 0x9e3779b97f4a7c15ULL);
    return s == NM_SEED_RANDOM ? 0 : s;
}

/* The prompt's tokens: plain text as it is (BOS first), a conversation
 * through the chat template with the assistant's turn opened. */
static nm_status prompt_tokens(const gen_job *j, const nm_cand *x, int32_t **ids, size_t *n, nm_err *err) {
    if (x->raw) return nm_tokenize(j->v, x->msgs[0].content, strlen(x->msgs[0].content), true, false, ids, n, err);
    char *text = NULL;
    nm_status st = nm_chat_render(j->tmpl, x->msgs, x->n_msgs, true, &text, err);
    if (st) return st;
    st = nm_tokenize(j->v, text, strlen(text), true, true, ids, n, err);
    free(text);
    return st;
}

static nm_status gen_item(void *user, int worker, nm_context *c, int64_t item, nm_err *err) {
    gen_job *j = user;
    const nm_gen_params *p = j->p;
    const nm_cand *x = j->prompts[item];
    int32_t *ids = NULL;
    size_t n_ids = 0;
    nm_status st = prompt_tokens(j, x, &ids, &n_ids, err);
    if (st) return st;
    const int32_t n_ctx = nm_context_n_ctx(c);
    if (n_ids == 0 || n_ids + 1 > (size_t)n_ctx) {
        free(ids);
        return nm_err_set(err, NM_ERR_RANGE, "prompt %lld has %zu tokens: no room to answer in a context of %d",
                          (long long)x->prompt_id, n_ids, n_ctx);
    }
    float *saved = j->saved[worker];
    if ((st = nm_context_truncate(c, 0, err))) goto out;
    /* the prompt in batches the context accepts */
    for (size_t s = 0; s < n_ids && !st; s += 512) {
        size_t e = s + 512 < n_ids ? s + 512 : n_ids;
        st = nm_decode(c, ids + s, (int32_t)(e - s), err);
    }
    if (st) goto out;
    memcpy(saved, nm_get_logits(c), (size_t)j->n_vocab * sizeof *saved);
    nm_buf text;
    nm_buf_init(&text);
    for (int32_t k = 0; k < p->n && !st; k++) {
        nm_sampler_params sp = p->sampling;
        sp.seed = cand_seed(j->base_seed, x->prompt_id, k);
        nm_sampler *smp = NULL;
        if ((st = nm_sampler_new(&sp, j->n_vocab, &smp, err))) break;
        for (size_t i = 0; i < n_ids; i++) nm_sampler_accept(smp, ids[i]);
        if ((st = nm_context_truncate(c, (int32_t)n_ids, err))) {
            nm_sampler_free(smp);
            break;
        }
        nm_detok_stream ds;
        nm_detok_stream_init(&ds, j->v, false);
        ds.first = !x->raw; /* a plain-text prompt is continued: keep the space */
        text.len = 0;
        const float *logits = saved;
        char piece[256];
        for (int32_t t = 0; t < p->max_tokens; t++) {
            int32_t id = nm_sampler_sample(smp, logits);
            if (id < 0 || nm_vocab_is_eog(j->v, id)) break;
            nm_sampler_accept(smp, id);
            int32_t w = nm_detok_stream_push(&ds, id, piece, sizeof piece);
            if (w > 0) nm_buf_push(&text, piece, (size_t)w);
            size_t stop_at;
            if (sp.n_stop && nm_stop_find((const char *)text.data, text.len, sp.stop, sp.n_stop, &stop_at, NULL)) {
                text.len = stop_at;
                break;
            }
            if (nm_context_n_past(c) >= n_ctx) break; /* full: the answer ends here */
            if ((st = nm_decode(c, &id, 1, err))) break;
            logits = nm_get_logits(c);
        }
        int32_t w = nm_detok_stream_flush(&ds, piece, sizeof piece);
        if (w > 0) nm_buf_push(&text, piece, (size_t)w);
        nm_sampler_free(smp);
        if (st) break;
        if (text.oom || !(j->slots[item].resp[k] = nm_strndup(text.len ? (const char *)text.data : "", text.len)))
            st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        j->slots[item].seed[k] = sp.seed;
    }
    nm_buf_deinit(&text);
out:
    free(ids);
    return st;
}

nm_status nm_cands_generate(const nm_model *m, const nm_cands *prompts, const nm_gen_params *p, nm_cands *out,
                            const nm_log *log, nm_err *err) {
    if (p->n < 1) return nm_err_set(err, NM_ERR_ARG, "candidates per prompt must be at least 1, got %d", p->n);
    if (p->max_tokens < 1) return nm_err_set(err, NM_ERR_ARG, "max tokens must be at least 1, got %d", p->max_tokens);
    const nm_vocab *v = nm_model_vocab(m);
    if (!v) return nm_err_set(err, NM_ERR_UNSUPPORTED, "the model has no tokenizer");
    nm_model_info info;
    nm_model_get_info(m, &info);
    gen_job j = {0};
    j.m = m;
    j.v = v;
    j.p = p;
    j.n_vocab = info.n_vocab;
    /* the distinct prompts, in order of first appearance */
    size_t n = nm_cands_size(prompts);
    j.prompts = malloc((n ? n : 1) * sizeof *j.prompts);
    nm_hmap seen;
    if (!j.prompts || !nm_hmap_init(&seen, n)) {
        free(j.prompts);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    int64_t n_prompts = 0;
    bool any_chat = false;
    for (size_t i = 0; i < n; i++) {
        const nm_cand *x = nm_cands_at(prompts, i);
        bool there;
        if (!nm_hmap_put(&seen, (uint64_t)x->prompt_id + 2, 0, &there, NULL)) {
            nm_hmap_deinit(&seen);
            free(j.prompts);
            return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        }
        if (!there) {
            j.prompts[n_prompts++] = x;
            any_chat |= !x->raw;
        }
    }
    nm_hmap_deinit(&seen);
    nm_status st = NM_OK;
    if (any_chat) st = nm_ev_template(m, p->chat_template, &j.tmpl, err);
    /* the base seed: drawn once when asked for a random one */
    j.base_seed = p->sampling.seed;
    if (!st && j.base_seed == NM_SEED_RANDOM) {
        nm_sampler_params sp = nm_sampler_params_default();
        nm_sampler *s = NULL;
        if (!(st = nm_sampler_new(&sp, info.n_vocab, &s, err))) j.base_seed = nm_sampler_seed(s);
        nm_sampler_free(s);
    }
    int nw = nm_ev_workers(p->threads, n_prompts);
    j.slots = nm_calloc((size_t)(n_prompts ? n_prompts : 1), sizeof *j.slots);
    j.saved = nm_calloc((size_t)nw, sizeof *j.saved);
    if (!st && (!j.slots || !j.saved)) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    for (int w = 0; !st && w < nw; w++)
        if (!(j.saved[w] = malloc((size_t)info.n_vocab * sizeof(float)))) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; !st && i < n_prompts; i++) {
        j.slots[i].resp = nm_calloc((size_t)p->n, sizeof(char *));
        j.slots[i].seed = nm_calloc((size_t)p->n, sizeof(uint64_t));
        if (!j.slots[i].resp || !j.slots[i].seed) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    if (!st) {
        nm_context_params cp = nm_context_default_params();
        int32_t ctx = p->n_ctx > 0 ? p->n_ctx : info.n_ctx_train;
        cp.n_ctx = ctx > 4096 && p->n_ctx <= 0 ? 4096 : ctx;
        cp.n_batch = cp.n_ctx < 512 ? cp.n_ctx : 512;
        nm_logf(log, NM_LOG_INFO, "generating %d candidate%s for each of %lld prompts (seed %llu, %d worker%s)", p->n,
                p->n == 1 ? "" : "s", (long long)n_prompts, (unsigned long long)j.base_seed, nw, nw == 1 ? "" : "s");
        st = nm_ev_parallel(m, &cp, p->loras, p->n_loras, p->threads, n_prompts, gen_item, &j, p->progress, p->user, "generation", NULL, err);
    }
    for (int64_t i = 0; !st && i < n_prompts; i++) {
        const nm_cand *x = j.prompts[i];
        for (int32_t k = 0; !st && k < p->n; k++)
            st = nm_cands_add(out, x->prompt_id, k, x->msgs, x->n_msgs, x->raw, j.slots[i].resp[k], j.slots[i].seed[k],
                              err);
    }
    for (int64_t i = 0; j.slots && i < n_prompts; i++) {
        if (j.slots[i].resp)
            for (int32_t k = 0; k < p->n; k++) free(j.slots[i].resp[k]);
        free(j.slots[i].resp);
        free(j.slots[i].seed);
    }
    for (int w = 0; j.saved && w < nw; w++) free(j.saved[w]);
    free(j.saved);
    free(j.slots);
    free(j.prompts);
    return st;
}
