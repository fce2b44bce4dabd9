/* choice.c - multiple-choice accuracy by log-likelihood, as
 * lm-evaluation-harness scores HellaSwag and ARC: each choice is the
 * continuation of the context; the model picks the choice whose tokens it
 * finds most likely, in total (acc) or per byte of the continuation
 * (acc_norm, which removes the bias towards short choices). */
#include "eval/eval.h"
#include "base/base.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct mc_item {
    char *context;
    char **cont; /* the continuations as scored (with the joining space) */
    size_t n;
    int32_t label;
} mc_item;

#define BAD(...) (snprintf(why, cap, __VA_ARGS__), false)

/* A label: an index, a one-digit string (0-based), or a letter (A = 0).
 * ARC's choices carry their own labels, matched before this. */
static bool label_index(json_t *l, size_t n, int32_t *out) {
    if (json_is_integer(l)) {
        json_int_t v = json_integer_value(l);
        if (v < 0 || (size_t)v >= n) return false;
        *out = (int32_t)v;
        return true;
    }
    if (!json_is_string(l) || json_string_length(l) != 1) return false;
    char c = json_string_value(l)[0];
    int v = c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' : c >= '0' && c <= '9' ? c - '0' : -1;
    if (v < 0 || (size_t)v >= n) return false;
    *out = v;
    return true;
}

static char *join_cont(const char *ctx, const char *choice) {
    size_t lc = strlen(ctx), lh = strlen(choice);
    bool space = lc > 0 && lh > 0 && !strchr(" \n\t", ctx[lc - 1]) && !strchr(" \n\t", choice[0]);
    char *s = malloc(lh + 2);
    if (!s) return NULL;
    if (space) s[0] = ' ';
    memcpy(s + space, choice, lh + 1);
    return s;
}

static bool parse_item(json_t *r, mc_item *it, char *why, size_t cap) {
    memset(it, 0, sizeof *it);
    if (!json_is_object(r)) return BAD("not a JSON object");
    json_t *q = json_object_get(r, "question");
    const char *ctx = NULL;
    char *ctx_owned = NULL;
    json_t *choices = NULL, *label = NULL;
    bool arc = json_is_object(q);
    if (arc) { /* ARC: {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"} */
        json_t *stem = json_object_get(q, "stem");
        choices = json_object_get(q, "choices");
        label = json_object_get(r, "answerKey");
        if (!json_is_string(stem)) return BAD("question has no string \"stem\"");
        if (!json_is_array(choices) || json_array_size(choices) < 2) return BAD("question has no \"choices\" array of 2 or more");
        size_t ls = json_string_length(stem);
        ctx_owned = malloc(ls + 32);
        if (!ctx_owned) return BAD("out of memory");
        snprintf(ctx_owned, ls + 32, "Question: %s\nAnswer:", json_string_value(stem));
        ctx = ctx_owned;
    } else {
        static const char *const ctx_keys[] = {"context", "ctx", "query", "question", "prompt"};
        for (size_t k = 0; k < 5 && !ctx; k++) {
            json_t *c = json_object_get(r, ctx_keys[k]);
            if (json_is_string(c)) ctx = json_string_value(c);
        }
        choices = json_object_get(r, "choices");
        if (!choices) choices = json_object_get(r, "endings");
        label = json_object_get(r, "label");
        if (!label) label = json_object_get(r, "gold");
        if (!label) label = json_object_get(r, "answer");
        if (!ctx) return BAD("no string \"context\" (or \"ctx\", \"query\", \"question\", \"prompt\")");
        if (!json_is_array(choices) || json_array_size(choices) < 2)
            return BAD("no \"choices\" (or \"endings\") array of 2 or more");
    }
    size_t n = json_array_size(choices);
    it->cont = nm_calloc(n, sizeof *it->cont);
    it->context = nm_strdup(ctx);
    free(ctx_owned);
    if (!it->cont || !it->context) return BAD("out of memory");
    it->n = n;
    int32_t lab = -1;
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(choices, i);
        json_t *text = arc ? json_object_get(c, "text") : c;
        if (!json_is_string(text)) return BAD("choice %zu is not a string%s", i, arc ? " \"text\"" : "");
        if (!(it->cont[i] = join_cont(it->context, json_string_value(text)))) return BAD("out of memory");
        if (arc && json_is_string(label)) {
            json_t *cl = json_object_get(c, "label");
            if (json_is_string(cl) && !strcmp(json_string_value(cl), json_string_value(label))) lab = (int32_t)i;
        }
    }
    if (lab < 0 && !label_index(label, n, &lab)) return BAD("the label is missing or names no choice of the %zu", n);
    it->label = lab;
    return true;
}

static void item_free(mc_item *it) {
    for (size_t i = 0; it->cont && i < it->n; i++) free(it->cont[i]);
    free(it->cont);
    free(it->context);
}

typedef struct mc_job {
    const nm_vocab *v;
    int32_t n_vocab, n_ctx;
    mc_item *items;
    double **ll;
} mc_job;

static nm_status mc_run(void *user, int worker, nm_context *c, int64_t k, nm_err *err) {
    (void)worker;
    mc_job *j = user;
    mc_item *it = &j->items[k];
    for (size_t i = 0; i < it->n; i++) {
        int32_t *ids = NULL;
        size_t n = 0, np = 0;
        nm_status st = nm_ev_tokens(j->v, it->context, it->cont[i], false, &ids, &n, &np, err);
        if (st) return st;
        size_t skip = 0;
        if (n > (size_t)j->n_ctx) { /* keep the end: the continuation and the context nearest to it */
            skip = n - (size_t)j->n_ctx;
            if (skip >= np) {
                free(ids);
                return nm_err_set(err, NM_ERR_RANGE, "item %lld, choice %zu: the choice alone has %zu tokens, more than the context of %d",
                                  (long long)k + 1, i, n - np, j->n_ctx);
            }
        }
        double sum = 0;
        st = nm_ev_nll(c, j->n_vocab, ids + skip, n - skip, NULL, np - skip, &sum, NULL, NULL, err);
        free(ids);
        if (st) return st;
        j->ll[k][i] = -sum;
    }
    return NM_OK;
}

nm_status nm_eval_choice(const nm_model *m, const char *path, const nm_mc_params *p, nm_mc_result *r,
                         const nm_log *log, nm_err *err) {
    (void)log;
    memset(r, 0, sizeof *r);
    const nm_vocab *v = nm_model_vocab(m);
    if (!v) return nm_err_set(err, NM_ERR_UNSUPPORTED, "the model has no tokenizer");
    nm_model_info info;
    nm_model_get_info(m, &info);
    char *text;
    size_t len;
    nm_status st = nm_read_file(path, &text, &len, err);
    if (st) return st;
    mc_item *items = NULL;
    size_t n_items = 0, cap = 0;
    char why[300];
    /* JSON lines, or one JSON array */
    size_t q = 0;
    while (q < len && strchr(" \t\r\n", text[q])) q++;
    json_t *arr = NULL;
    if (q < len && text[q] == '[') {
        json_error_t je;
        if (!(arr = json_loadb(text + q, len - q, JSON_REJECT_DUPLICATES, &je)))
            st = nm_err_set(err, NM_ERR_FORMAT, "%s:%d: invalid JSON: %s", path, je.line, je.text);
    }
    int64_t line = 0;
    size_t ai = 0;
    while (!st) {
        json_t *rec = NULL;
        int64_t at = 0;
        if (arr) {
            if (ai >= json_array_size(arr)) break;
            rec = json_incref(json_array_get(arr, ai++));
            at = (int64_t)ai;
        } else {
            if (q >= len) break;
            const char *nl = memchr(text + q, '\n', len - q);
            size_t e = nl ? (size_t)(nl - text) : len;
            line++;
            size_t b = q;
            q = e + 1;
            bool blank = true;
            for (size_t k = b; k < e && blank; k++) blank = strchr(" \t\r", text[k]) != NULL;
            if (blank) continue;
            json_error_t je;
            if (!(rec = json_loadb(text + b, e - b, JSON_REJECT_DUPLICATES, &je))) {
                st = nm_err_set(err, NM_ERR_FORMAT, "%s:%lld: invalid JSON: %s", path, (long long)line, je.text);
                break;
            }
            at = line;
        }
        if (n_items == cap) {
            cap = cap ? cap * 2 : 64;
            mc_item *nv = realloc(items, cap * sizeof *nv);
            if (!nv) {
                json_decref(rec);
                st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
                break;
            }
            items = nv;
        }
        bool ok = parse_item(rec, &items[n_items], why, sizeof why);
        n_items++;
        json_decref(rec);
        if (!ok) {
            st = nm_err_set(err, NM_ERR_FORMAT, arr ? "%s: record %lld: %s" : "%s:%lld: %s", path, (long long)at, why);
            break;
        }
        if (p->max_items > 0 && (int64_t)n_items >= p->max_items) break;
    }
    json_decref(arr);
    free(text);
    if (!st && n_items == 0) st = nm_err_set(err, NM_ERR_FORMAT, "%s: no item", path);
    mc_job j = {v, info.n_vocab, 0, items, NULL};
    j.n_ctx = p->n_ctx > 0 ? p->n_ctx : (info.n_ctx_train < 2048 ? info.n_ctx_train : 2048);
    if (!st) {
        j.ll = nm_calloc(n_items, sizeof *j.ll);
        if (!j.ll) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        for (size_t i = 0; !st && i < n_items; i++)
            if (!(j.ll[i] = nm_calloc(items[i].n, sizeof **j.ll))) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    if (!st) {
        nm_context_params cp = nm_context_default_params();
        cp.n_ctx = j.n_ctx;
        cp.n_batch = j.n_ctx;
        cp.logits_all = true;
        st = nm_ev_parallel(m, &cp, p->loras, p->n_loras, p->threads, (int64_t)n_items, mc_run, &j, p->progress, p->user, "choices", NULL, err);
    }
    if (!st) {
        size_t *bytes = NULL;
        for (size_t k = 0; k < n_items; k++) {
            const mc_item *it = &items[k];
            size_t *nb = realloc(bytes, it->n * sizeof *nb);
            if (!nb) {
                st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
                break;
            }
            bytes = nb;
            int32_t pred = 0, pred_norm = 0;
            for (size_t i = 0; i < it->n; i++) {
                bytes[i] = strlen(it->cont[i]);
                if (j.ll[k][i] > j.ll[k][pred]) pred = (int32_t)i;
                double a = j.ll[k][i] / (double)(bytes[i] ? bytes[i] : 1);
                double b = j.ll[k][pred_norm] / (double)(bytes[pred_norm] ? bytes[pred_norm] : 1);
                if (a > b) pred_norm = (int32_t)i;
            }
            r->n++;
            r->correct += pred == it->label;
            r->correct_norm += pred_norm == it->label;
            if (p->on_item) {
                nm_mc_item mi = {(int64_t)k, it->n, j.ll[k], bytes, it->label, pred, pred_norm};
                p->on_item(p->user, &mi);
            }
        }
        free(bytes);
        if (!st) {
            r->acc = (double)r->correct / (double)r->n;
            r->acc_norm = (double)r->correct_norm / (double)r->n;
            r->acc_se = sqrt(r->acc * (1 - r->acc) / (double)r->n);
            r->acc_norm_se = sqrt(r->acc_norm * (1 - r->acc_norm) / (double)r->n);
        }
    }
    for (size_t i = 0; i < n_items; i++) {
        item_free(&items[i]);
        if (j.ll) free(j.ll[i]);
    }
    free(j.ll);
    free(items);
    return st;
}
