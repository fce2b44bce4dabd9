/* score.c - scorers, their weighted total, and keeping the best candidates
 * (see nomoat.h "scoring and selection").
 *
 * The cheap scorers (length, repetition, regex) run in the calling thread;
 * the judge runs one inference context per worker over the candidates; the
 * external command runs one child process per candidate, several at once. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "curate/curate.h"
#include "eval/eval.h"

#include <jansson.h>
#include <math.h>
#include <pcre2.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static const char *const KIND_NAMES[] = {"judge", "length", "repetition", "regex", "command"};

/* ---- the cheap scorers ---- */

static double score_length(const nm_scorer *s, const char *r) {
    int64_t n = 0;
    size_t len = strlen(r);
    bool in_word = false;
    for (size_t i = 0; i < len;) {
        uint32_t c = nm_cu_next(r, len, &i);
        if (s->chars) {
            n++;
        } else if (nm_cu_is_space(c)) {
            in_word = false;
        } else {
            n += !in_word;
            in_word = true;
        }
    }
    return n >= s->min_len && (s->max_len <= 0 || n <= s->max_len) ? 1.0 : 0.0;
}

/* Distinct word n-grams over all word n-grams of the normalised response;
 * 1 when there are fewer than n words (nothing can repeat). */
static double score_repetition(const nm_scorer *s, const char *r, nm_buf *norm, nm_u64vec *w, bool *oom) {
    norm->len = 0;
    nm_cu_normalize(r, strlen(r), norm);
    if (norm->oom || !nm_cu_word_hashes((const char *)norm->data, norm->len, w)) {
        *oom = true;
        return NAN;
    }
    int64_t n = s->n > 0 ? s->n : 3, m = (int64_t)w->n;
    if (m < n) return 1.0;
    nm_hmap set;
    if (!nm_hmap_init(&set, (size_t)(m - n + 1))) {
        *oom = true;
        return NAN;
    }
    for (int64_t i = 0; i + n <= m; i++) {
        uint64_t h = 0;
        for (int64_t k = 0; k < n; k++) h = nm_cu_mix(h * 0x100000001b3ULL + w->v[i + k]);
        if (!nm_hmap_put(&set, h, 0, NULL, NULL)) {
            *oom = true;
            break;
        }
    }
    double ratio = (double)set.n / (double)(m - n + 1);
    nm_hmap_deinit(&set);
    return ratio;
}

/* ---- the judge ---- */

typedef struct judge_job {
    nm_cands *c;
    size_t k;             /* scorer index */
    int32_t n_vocab;
    int32_t **ids;        /* per candidate: prompt + response tokens */
    size_t *n_ids, *n_prompt;
    size_t *items;        /* candidate index of each item */
} judge_job;

static nm_status judge_item(void *user, int worker, nm_context *ctx, int64_t item, nm_err *err) {
    (void)worker;
    judge_job *j = user;
    size_t i = j->items[item];
    nm_cand *x = nm_cands_mut(j->c, i);
    double sum = 0;
    int64_t count = 0;
    nm_status st = nm_ev_nll(ctx, j->n_vocab, j->ids[i], j->n_ids[i], NULL, j->n_prompt[i], &sum, NULL, &count, err);
    if (st) return st;
    ((double *)x->scores)[j->k] = count ? -sum / (double)count : NAN;
    return NM_OK;
}

static nm_status run_judge(nm_cands *c, size_t k, const nm_scorer *s, const nm_select_params *p, const nm_log *log,
                           nm_err *err) {
    const nm_model *m = s->judge;
    if (!m) return nm_err_set(err, NM_ERR_ARG, "the judge scorer needs a model");
    const nm_vocab *v = nm_model_vocab(m);
    if (!v) return nm_err_set(err, NM_ERR_UNSUPPORTED, "the judge model has no tokenizer");
    nm_model_info info;
    nm_model_get_info(m, &info);
    const size_t n = nm_cands_size(c);
    judge_job j = {c, k, info.n_vocab, NULL, NULL, NULL, NULL};
    j.ids = nm_calloc(n ? n : 1, sizeof *j.ids);
    j.n_ids = nm_calloc(n ? n : 1, sizeof *j.n_ids);
    j.n_prompt = nm_calloc(n ? n : 1, sizeof *j.n_prompt);
    j.items = nm_calloc(n ? n : 1, sizeof *j.items);
    nm_status st = NM_OK;
    if (!j.ids || !j.n_ids || !j.n_prompt || !j.items) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    bool tmpl_known = false;
    nm_chat_template tmpl = NM_CHAT_TEMPLATE_UNKNOWN;
    size_t longest = 0, n_items = 0, n_cut = 0;
    const size_t limit = (size_t)(info.n_ctx_train > 0 ? info.n_ctx_train : 2048);
    /* tokenize first: the context is sized for the longest candidate */
    for (size_t i = 0; i < n && !st; i++) {
        const nm_cand *x = nm_cands_at(c, i);
        if (!x->response) continue;
        char *prefix = NULL, *full = NULL;
        const char *cont = x->response;
        bool special = false;
        if (x->raw) {
            prefix = nm_strdup(x->msgs[0].content);
            if (!prefix) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        } else {
            if (!tmpl_known && (st = nm_ev_template(m, s->chat_template, &tmpl, err))) break;
            tmpl_known = true;
            special = true;
            /* the assistant turn as the template writes it (its end marks
             * included): the full rendering minus the rendered prompt */
            nm_chat_msg *all = malloc((x->n_msgs + 1) * sizeof *all);
            if (!all) {
                st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
                break;
            }
            memcpy(all, x->msgs, x->n_msgs * sizeof *all);
            all[x->n_msgs] = (nm_chat_msg){"assistant", x->response};
            if (!(st = nm_chat_render(tmpl, x->msgs, x->n_msgs, true, &prefix, err)) &&
                !(st = nm_chat_render(tmpl, all, x->n_msgs + 1, false, &full, err))) {
                size_t lp = strlen(prefix);
                if (strlen(full) >= lp && !memcmp(full, prefix, lp)) cont = full + lp;
            }
            free(all);
        }
        if (!st) st = nm_ev_tokens(v, prefix, cont, special, &j.ids[i], &j.n_ids[i], &j.n_prompt[i], err);
        free(prefix);
        free(full);
        if (st) break;
        if (j.n_prompt[i] + 1 >= limit) {
            st = nm_err_set(err, NM_ERR_RANGE, "prompt %lld has %zu tokens: more than the judge's context of %zu",
                            (long long)x->prompt_id, j.n_prompt[i], limit);
            break;
        }
        if (j.n_ids[i] > limit) {
            j.n_ids[i] = limit; /* the response is judged on what fits */
            n_cut++;
        }
        if (j.n_ids[i] > longest) longest = j.n_ids[i];
        j.items[n_items++] = i;
    }
    if (!st && n_cut)
        nm_logf(log, NM_LOG_WARN, "judge: %zu responses longer than the judge's context of %zu tokens were cut", n_cut,
                limit);
    if (!st && n_items) {
        nm_context_params cp = nm_context_default_params();
        cp.n_ctx = (int32_t)(longest < 16 ? 16 : longest);
        cp.n_batch = cp.n_ctx;
        cp.logits_all = true;
        st = nm_ev_parallel(m, &cp, s->loras, s->n_loras, p->threads, (int64_t)n_items, judge_item, &j, p->progress, p->user, "judge", NULL,
                            err);
    }
    for (size_t i = 0; j.ids && i < n; i++) free(j.ids[i]);
    free(j.ids);
    free(j.n_ids);
    free(j.n_prompt);
    free(j.items);
    return st;
}

/* ---- the external command ---- */

typedef struct cmd_job {
    nm_cands *c;
    size_t k;
    const nm_scorer *s;
    atomic_llong next;
    atomic_int failed;
    nm_err *errs;
} cmd_job;

static nm_status cmd_one(cmd_job *j, size_t i, nm_err *err) {
    nm_cand *x = nm_cands_mut(j->c, i);
    if (!x->response) return NM_OK;
    nm_buf in;
    nm_buf_init(&in);
    nm_buf_printf(&in, "{\"prompt\": ");
    const char *last_user = x->msgs[0].content;
    for (size_t m = 0; m < x->n_msgs; m++)
        if (!strcmp(x->msgs[m].role, "user")) last_user = x->msgs[m].content;
    nm_cu_json_str(&in, last_user, strlen(last_user));
    nm_buf_printf(&in, ", \"messages\": [");
    for (size_t m = 0; m < x->n_msgs; m++) {
        nm_buf_printf(&in, "%s{\"role\": ", m ? ", " : "");
        nm_cu_json_str(&in, x->msgs[m].role, strlen(x->msgs[m].role));
        nm_buf_printf(&in, ", \"content\": ");
        nm_cu_json_str(&in, x->msgs[m].content, strlen(x->msgs[m].content));
        nm_buf_push(&in, "}", 1);
    }
    nm_buf_printf(&in, "], \"response\": ");
    nm_cu_json_str(&in, x->response, strlen(x->response));
    nm_buf_printf(&in, ", \"prompt_id\": %lld, \"candidate\": %d}\n", (long long)x->prompt_id, x->index);
    if (in.oom) {
        nm_buf_deinit(&in);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    char *out = NULL;
    double t = j->s->timeout_s > 0 ? j->s->timeout_s : 10.0;
    nm_status st = nm_cu_run_command(j->s->command, (const char *)in.data, in.len, t, &out, err);
    nm_buf_deinit(&in);
    if (st) {
        /* say which candidate it was */
        char msg[NM_ERR_MSG_MAX];
        snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
        return nm_err_set(err, st, "%s (prompt %lld, candidate %d)", msg, (long long)x->prompt_id, x->index);
    }
    /* a number, or a JSON object with a numeric "score" */
    char *p = out, *end;
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
    size_t pl = strlen(p);
    while (pl > 0 && strchr(" \n\t\r", p[pl - 1])) p[--pl] = 0;
    double v = strtod(p, &end);
    bool ok = end != p;
    if (ok) {
        while (*end == ' ' || *end == '\n' || *end == '\t' || *end == '\r') end++;
        ok = *end == 0 && isfinite(v);
    }
    if (!ok) {
        json_t *o = json_loads(p, 0, NULL);
        json_t *sc = json_is_object(o) ? json_object_get(o, "score") : NULL;
        if (json_is_number(sc)) {
            v = json_number_value(sc);
            ok = isfinite(v);
        }
        json_decref(o);
    }
    if (!ok) {
        size_t l = strcspn(p, "\r\n");
        st = nm_err_set(err, NM_ERR_FORMAT,
                        "scorer command '%.100s' printed '%.*s%s' for prompt %lld, candidate %d: not a number or "
                        "{\"score\": number}",
                        j->s->command, (int)(l < 60 ? l : 60), p, l > 60 || p[l] ? "..." : "", (long long)x->prompt_id,
                        x->index);
    } else {
        ((double *)x->scores)[j->k] = v;
    }
    free(out);
    return st;
}

static void cmd_task(void *arg, int ith, int nth) {
    (void)nth;
    cmd_job *j = arg;
    const long long n = (long long)nm_cands_size(j->c);
    while (!atomic_load(&j->failed)) {
        long long i = atomic_fetch_add(&j->next, 1);
        if (i >= n) break;
        if (cmd_one(j, (size_t)i, &j->errs[ith])) {
            int expect = 0;
            atomic_compare_exchange_strong(&j->failed, &expect, 1 + ith);
        }
    }
}

static nm_status run_command(nm_cands *c, size_t k, const nm_scorer *s, const nm_select_params *p, nm_err *err) {
    if (!s->command || !*s->command) return nm_err_set(err, NM_ERR_ARG, "the command scorer needs a command");
    int nth = p->threads > 0 ? p->threads : nm_cpu_count();
    cmd_job j;
    memset(&j, 0, sizeof j);
    j.c = c;
    j.k = k;
    j.s = s;
    atomic_init(&j.next, 0);
    atomic_init(&j.failed, 0);
    j.errs = nm_calloc((size_t)nth, sizeof *j.errs);
    if (!j.errs) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    nm_pool *pool = NULL;
    nm_status st = NM_OK;
    if (nth > 1 && (st = nm_pool_new(nth, &pool, err))) {
        free(j.errs);
        return st;
    }
    if (pool)
        nm_pool_run(pool, cmd_task, &j);
    else
        cmd_task(&j, 0, 1);
    int f = atomic_load(&j.failed);
    if (f) {
        st = j.errs[f - 1].code ? j.errs[f - 1].code : NM_ERR_INTERNAL;
        if (err) *err = j.errs[f - 1];
    }
    nm_pool_free(pool);
    free(j.errs);
    return st;
}

/* ---- selection ---- */

typedef struct rank_ent {
    size_t i;
    int64_t prompt;
    double total;
} rank_ent;

/* By prompt, then best total first, then the earlier candidate. */
static int cmp_rank(const void *a, const void *b) {
    const rank_ent *x = a, *y = b;
    if (x->prompt != y->prompt) return x->prompt < y->prompt ? -1 : 1;
    if (x->total != y->total) return x->total > y->total ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

nm_status nm_cands_score(nm_cands *c, const nm_select_params *p, const nm_log *log, nm_err *err) {
    const size_t ns = p->n_scorers, n = nm_cands_size(c);
    if (ns > 64) return nm_err_set(err, NM_ERR_ARG, "at most 64 scorers, got %zu", ns);
    if (p->best_k < 0) return nm_err_set(err, NM_ERR_ARG, "best-k must not be negative, got %d", p->best_k);
    /* names: the kind's unless given; repeated ones numbered */
    char names[64][64];
    const char *np[64], *bases[64];
    for (size_t k = 0; k < ns; k++) {
        const nm_scorer *s = &p->scorers[k];
        if ((unsigned)s->kind > NM_SCORER_COMMAND) return nm_err_set(err, NM_ERR_ARG, "scorer %zu: unknown kind", k);
        bases[k] = s->name && *s->name ? s->name : KIND_NAMES[s->kind];
        int dup = 1; /* the second "regex" is "regex2" */
        for (size_t q = 0; q < k; q++) dup += !strcmp(bases[q], bases[k]);
        if (dup > 1)
            snprintf(names[k], sizeof names[k], "%.50s%d", bases[k], dup);
        else
            snprintf(names[k], sizeof names[k], "%.60s", bases[k]);
        np[k] = names[k];
        if (!isfinite(s->weight)) return nm_err_set(err, NM_ERR_ARG, "scorer %s: the weight must be a finite number", names[k]);
        if (s->kind == NM_SCORER_LENGTH && s->max_len > 0 && s->max_len < s->min_len)
            return nm_err_set(err, NM_ERR_ARG, "scorer %s: maximum length %lld below the minimum %lld", names[k],
                              (long long)s->max_len, (long long)s->min_len);
    }
    nm_status st = nm_cands_set_scorers(c, np, ns, err);
    if (st) return st;
    /* the regular expressions compile before any long job starts */
    pcre2_code *re[64] = {0};
    for (size_t k = 0; k < ns && !st; k++) {
        const nm_scorer *s = &p->scorers[k];
        if (s->kind != NM_SCORER_REGEX) continue;
        if (!s->pattern) {
            st = nm_err_set(err, NM_ERR_ARG, "scorer %s: no pattern", names[k]);
            break;
        }
        int ec;
        PCRE2_SIZE eo;
        re[k] = pcre2_compile((PCRE2_SPTR)s->pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &ec,
                              &eo, NULL);
        if (!re[k]) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(ec, msg, sizeof msg);
            st = nm_err_set(err, NM_ERR_ARG, "regular expression '%.100s': %s at offset %zu", s->pattern, (char *)msg,
                            (size_t)eo);
        }
    }
    nm_buf norm;
    nm_buf_init(&norm);
    nm_u64vec words = {0};
    bool oom = false;
    for (size_t k = 0; k < ns && !st; k++) {
        const nm_scorer *s = &p->scorers[k];
        if (s->kind == NM_SCORER_JUDGE) {
            st = run_judge(c, k, s, p, log, err);
            continue;
        }
        if (s->kind == NM_SCORER_COMMAND) {
            st = run_command(c, k, s, p, err);
            continue;
        }
        pcre2_match_data *md = re[k] ? pcre2_match_data_create_from_pattern(re[k], NULL) : NULL;
        if (re[k] && !md) oom = true;
        for (size_t i = 0; i < n && !oom; i++) {
            nm_cand *x = nm_cands_mut(c, i);
            if (!x->response) continue;
            double v;
            if (s->kind == NM_SCORER_LENGTH) {
                v = score_length(s, x->response);
            } else if (s->kind == NM_SCORER_REPETITION) {
                v = score_repetition(s, x->response, &norm, &words, &oom);
            } else {
                int r = pcre2_match(re[k], (PCRE2_SPTR)x->response, strlen(x->response), 0, 0, md, NULL);
                bool hit = r >= 0;
                v = hit != s->negate ? 1.0 : 0.0;
            }
            ((double *)x->scores)[k] = v;
        }
        pcre2_match_data_free(md);
    }
    if (!st && oom) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory while scoring");
    nm_buf_deinit(&norm);
    nm_u64vec_free(&words);
    for (size_t k = 0; k < ns; k++) pcre2_code_free(re[k]);
    if (st) return st;

    /* totals and minimums */
    for (size_t i = 0; i < n; i++) {
        nm_cand *x = nm_cands_mut(c, i);
        x->kept = false;
        x->dropped_by = -1;
        x->total = 0;
        if (!x->response) continue;
        for (size_t k = 0; k < ns; k++) {
            double v = x->scores[k];
            const double mn = p->scorers[k].min;
            if (isnan(v) || (!isnan(mn) && v < mn)) {
                if (x->dropped_by < 0) x->dropped_by = (int32_t)k;
                continue;
            }
            x->total += p->scorers[k].weight * v;
        }
        if (x->dropped_by >= 0) x->total = NAN;
    }
    /* per prompt: the survivors by total, best first */
    rank_ent *r = malloc((n ? n : 1) * sizeof *r);
    if (!r) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        const nm_cand *x = nm_cands_at(c, i);
        if (x->response && x->dropped_by < 0) r[m++] = (rank_ent){i, x->prompt_id, x->total};
    }
    qsort(r, m, sizeof *r, cmp_rank);
    for (size_t q = 0, rank = 0; q < m; q++) {
        rank = q > 0 && r[q].prompt == r[q - 1].prompt ? rank + 1 : 0;
        if (p->best_k > 0 && rank >= (size_t)p->best_k) continue;
        if (!isnan(p->threshold) && r[q].total < p->threshold) continue;
        nm_cands_mut(c, r[q].i)->kept = true;
    }
    free(r);
    return st;
}
