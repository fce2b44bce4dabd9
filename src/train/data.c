/* data.c - training data files to token sequences and rows (see data.h).
 *
 * Every record is hostile input: a record that is not what its format says
 * is reported as "FILE:LINE: record N: reason", or skipped and counted when
 * the caller asked for that.  JSON arrays are scanned element by element
 * (strings and nesting tracked) so that each record is parsed on its own and
 * its line number is known; a broken array structure is fatal because no
 * later position can be trusted. */
#include "train/data.h"
#include "base/base.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const FORMAT_NAMES[] = {"auto", "text", "alpaca", "sharegpt", "messages"};

int nm_data_format_parse(const char *name) {
    for (int i = 0; i < 5; i++)
        if (strcasecmp(name, FORMAT_NAMES[i]) == 0) return i;
    return -1;
}

const char *nm_data_format_name(nm_data_format f) { return (unsigned)f < 5 ? FORMAT_NAMES[f] : "?"; }

void nm_dataset_deinit(nm_dataset *d) {
    free(d->tok);
    free(d->trn);
    free(d->ex_off);
    free(d->ex_len);
    memset(d, 0, sizeof *d);
}

bool nm_dataset_push(nm_dataset *d, const int32_t *tok, const uint8_t *trn, int64_t n) {
    if (d->n_tok + n > d->cap_tok) {
        int64_t cap = d->cap_tok ? d->cap_tok : 4096;
        while (cap < d->n_tok + n) cap *= 2;
        int32_t *t = realloc(d->tok, (size_t)cap * sizeof *t);
        if (!t) return false;
        d->tok = t;
        uint8_t *m = realloc(d->trn, (size_t)cap);
        if (!m) return false;
        d->trn = m;
        d->cap_tok = cap;
    }
    if (d->n_ex == d->cap_ex) {
        int64_t cap = d->cap_ex ? d->cap_ex * 2 : 256;
        int64_t *o = realloc(d->ex_off, (size_t)cap * sizeof *o);
        if (!o) return false;
        d->ex_off = o;
        int64_t *l = realloc(d->ex_len, (size_t)cap * sizeof *l);
        if (!l) return false;
        d->ex_len = l;
        d->cap_ex = cap;
    }
    memcpy(d->tok + d->n_tok, tok, (size_t)n * sizeof *tok);
    memcpy(d->trn + d->n_tok, trn, (size_t)n);
    d->ex_off[d->n_ex] = d->n_tok;
    d->ex_len[d->n_ex] = n;
    d->n_ex++;
    d->n_tok += n;
    for (int64_t i = 1; i < n; i++) d->n_trained += trn[i] != 0;
    return true;
}

/* Adds an example cut to seq_len + 1 tokens; dropped (counted) if nothing
 * in it is trained. */
static nm_status add_example(nm_dataset *d, const nm_data_opts *o, const int32_t *tok, const uint8_t *trn,
                             int64_t n, nm_err *err) {
    if (n > o->seq_len + 1) {
        n = o->seq_len + 1;
        d->n_truncated++;
    }
    int64_t trained = 0;
    for (int64_t i = 1; i < n; i++) trained += trn[i] != 0;
    if (trained == 0) {
        d->n_empty++;
        return NM_OK;
    }
    if (!nm_dataset_push(d, tok, trn, n)) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for training data");
    return NM_OK;
}

uint64_t nm_dataset_hash(const nm_dataset *d) {
    uint64_t h = 1469598103934665603ULL;
#define MIX(p, n)                                                   \
    do {                                                            \
        const uint8_t *q_ = (const uint8_t *)(p);                   \
        for (size_t i_ = 0; i_ < (size_t)(n); i_++) h = (h ^ q_[i_]) * 1099511628211ULL; \
    } while (0)
    MIX(&d->n_ex, sizeof d->n_ex);
    MIX(d->ex_len, (size_t)d->n_ex * sizeof *d->ex_len);
    MIX(d->tok, (size_t)d->n_tok * sizeof *d->tok);
    MIX(d->trn, (size_t)d->n_tok);
#undef MIX
    return h;
}

/* ======================================================================== */
/* text                                                                     */
/* ======================================================================== */

static nm_status load_text(const char *path, const char *text, size_t len, const nm_data_opts *o, nm_dataset *d,
                           nm_err *err) {
    int32_t *ids;
    size_t n;
    nm_status st = nm_tokenize(o->vocab, text, len, true, false, &ids, &n, err);
    if (st) return st;
    if (n < 2) {
        free(ids);
        return nm_err_set(err, NM_ERR_FORMAT, "%s: not enough text to train on (%zu tokens)", path, n);
    }
    uint8_t *trn = malloc((size_t)o->seq_len + 1);
    if (!trn) {
        free(ids);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    memset(trn, 1, (size_t)o->seq_len + 1);
    /* windows of seq_len + 1 tokens starting every seq_len tokens, so every
     * token but the first is a target exactly once */
    for (size_t s = 0; s + 1 < n && !st; s += (size_t)o->seq_len) {
        size_t w = n - s < (size_t)o->seq_len + 1 ? n - s : (size_t)o->seq_len + 1;
        d->n_records++;
        st = add_example(d, o, ids + s, trn, (int64_t)w, err);
    }
    free(trn);
    free(ids);
    return st;
}

/* ======================================================================== */
/* records -> conversations                                                 */
/* ======================================================================== */

typedef struct conv {
    nm_chat_msg *m;
    size_t n, cap;
} conv;

static void conv_clear(conv *c) {
    for (size_t i = 0; i < c->n; i++) free((char *)c->m[i].content);
    c->n = 0;
}

/* "{{key}}" -> value for every var. */
static char *subst(const char *s, const nm_data_opts *o) {
    nm_buf b;
    nm_buf_init(&b);
    const char *p = s;
    while (*p) {
        bool done = false;
        if (p[0] == '{' && p[1] == '{') {
            for (size_t i = 0; i < o->n_vars && !done; i++) {
                const char *eq = strchr(o->vars[i], '=');
                if (!eq) continue;
                size_t kl = (size_t)(eq - o->vars[i]);
                if (strncmp(p + 2, o->vars[i], kl) == 0 && p[2 + kl] == '}' && p[3 + kl] == '}') {
                    nm_buf_push(&b, eq + 1, strlen(eq + 1));
                    p += 4 + kl;
                    done = true;
                }
            }
        }
        if (!done) nm_buf_push(&b, p++, 1);
    }
    nm_buf_push(&b, "", 1);
    if (b.oom) {
        nm_buf_deinit(&b);
        return NULL;
    }
    return (char *)b.data;
}

/* role must be a static string. */
static bool conv_add(conv *c, const char *role, const char *content, const nm_data_opts *o) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        nm_chat_msg *m = realloc(c->m, cap * sizeof *m);
        if (!m) return false;
        c->m = m;
        c->cap = cap;
    }
    char *s = subst(content, o);
    if (!s) return false;
    c->m[c->n].role = role;
    c->m[c->n].content = s;
    c->n++;
    return true;
}

/* Record parsers: false with a reason for a malformed record. */
#define BAD(...) (snprintf(why, cap, __VA_ARGS__), false)

static const char *str_field(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool rec_alpaca(json_t *r, conv *c, const nm_data_opts *o, bool *oom, char *why, size_t cap) {
    if (!json_is_object(r)) return BAD("not a JSON object");
    const char *ins = str_field(r, "instruction"), *in = str_field(r, "input"), *out = str_field(r, "output");
    if (!ins) return BAD("missing string field \"instruction\"");
    if (!out) return BAD("missing string field \"output\"");
    json_t *jin = json_object_get(r, "input");
    if (jin && !json_is_string(jin) && !json_is_null(jin)) return BAD("field \"input\" is not a string");
    const char *sys = str_field(r, "system");
    if (sys && *sys && !conv_add(c, "system", sys, o)) return *oom = true, false;
    json_t *hist = json_object_get(r, "history");
    if (hist && !json_is_null(hist)) {
        if (!json_is_array(hist)) return BAD("field \"history\" is not an array");
        size_t i;
        json_t *pair;
        json_array_foreach(hist, i, pair) {
            if (!json_is_array(pair) || json_array_size(pair) != 2 || !json_is_string(json_array_get(pair, 0)) ||
                !json_is_string(json_array_get(pair, 1)))
                return BAD("history entry %zu is not a [user, assistant] pair of strings", i);
            if (!conv_add(c, "user", json_string_value(json_array_get(pair, 0)), o) ||
                !conv_add(c, "assistant", json_string_value(json_array_get(pair, 1)), o))
                return *oom = true, false;
        }
    }
    /* instruction and input joined by a newline (LLaMA-Factory's rendering) */
    nm_buf q;
    nm_buf_init(&q);
    nm_buf_push(&q, ins, strlen(ins));
    if (in && *in) {
        nm_buf_push(&q, "\n", 1);
        nm_buf_push(&q, in, strlen(in));
    }
    nm_buf_push(&q, "", 1);
    bool ok = !q.oom && conv_add(c, "user", (const char *)q.data, o) && conv_add(c, "assistant", out, o);
    nm_buf_deinit(&q);
    if (!ok) return *oom = true, false;
    return true;
}

static bool rec_sharegpt(json_t *r, conv *c, const nm_data_opts *o, bool *oom, char *why, size_t cap) {
    if (!json_is_object(r)) return BAD("not a JSON object");
    json_t *cv = json_object_get(r, "conversations");
    if (!json_is_array(cv)) return BAD("missing array field \"conversations\"");
    const char *sys = str_field(r, "system");
    if (sys && *sys && !conv_add(c, "system", sys, o)) return *oom = true, false;
    size_t i;
    json_t *m;
    json_array_foreach(cv, i, m) {
        if (!json_is_object(m)) return BAD("conversations[%zu] is not an object", i);
        const char *from = str_field(m, "from"), *val = str_field(m, "value");
        if (!from) from = str_field(m, "role");
        if (!val) val = str_field(m, "content");
        if (!from) return BAD("conversations[%zu] has no string \"from\"", i);
        if (!val) return BAD("conversations[%zu] has no string \"value\"", i);
        const char *role = NULL;
        if (!strcmp(from, "human") || !strcmp(from, "user"))
            role = "user";
        else if (!strcmp(from, "gpt") || !strcmp(from, "assistant") || !strcmp(from, "model") ||
                 !strcmp(from, "chatgpt") || !strcmp(from, "bard") || !strcmp(from, "bing"))
            role = "assistant";
        else if (!strcmp(from, "system"))
            role = "system";
        else
            return BAD("conversations[%zu]: unsupported speaker \"%.40s\"", i, from);
        if (!conv_add(c, role, val, o)) return *oom = true, false;
    }
    return true;
}

static bool rec_messages(json_t *r, conv *c, const nm_data_opts *o, bool *oom, char *why, size_t cap) {
    if (!json_is_object(r)) return BAD("not a JSON object");
    json_t *ms = json_object_get(r, "messages");
    if (!json_is_array(ms)) return BAD("missing array field \"messages\"");
    size_t i;
    json_t *m;
    json_array_foreach(ms, i, m) {
        if (!json_is_object(m)) return BAD("messages[%zu] is not an object", i);
        const char *role = str_field(m, "role");
        if (!role) return BAD("messages[%zu] has no string \"role\"", i);
        const char *r2 = !strcmp(role, "system") || !strcmp(role, "developer") ? "system"
                         : !strcmp(role, "user")                              ? "user"
                         : !strcmp(role, "assistant")                         ? "assistant"
                                                                              : NULL;
        if (!r2) return BAD("messages[%zu]: unsupported role \"%.40s\"", i, role);
        json_t *content = json_object_get(m, "content");
        if (json_is_string(content)) {
            if (!conv_add(c, r2, json_string_value(content), o)) return *oom = true, false;
        } else if (json_is_array(content)) { /* content parts: text only */
            nm_buf b;
            nm_buf_init(&b);
            size_t k;
            json_t *part;
            json_array_foreach(content, k, part) {
                const char *type = str_field(part, "type"), *text = str_field(part, "text");
                if (!type || strcmp(type, "text") || !text) {
                    nm_buf_deinit(&b);
                    return BAD("messages[%zu].content[%zu] is not a text part", i, k);
                }
                nm_buf_push(&b, text, strlen(text));
            }
            nm_buf_push(&b, "", 1);
            bool ok = !b.oom && conv_add(c, r2, (const char *)b.data, o);
            nm_buf_deinit(&b);
            if (!ok) return *oom = true, false;
        } else {
            return BAD("messages[%zu] has no string \"content\"", i);
        }
    }
    return true;
}

/* ======================================================================== */
/* conversation -> tokens with assistant mask                               */
/* ======================================================================== */

typedef struct tokbuf {
    int32_t *tok;
    uint8_t *trn;
    int64_t n, cap;
} tokbuf;

static bool tb_push(tokbuf *t, int32_t id, uint8_t trn) {
    if (t->n == t->cap) {
        int64_t cap = t->cap ? t->cap * 2 : 256;
        int32_t *a = realloc(t->tok, (size_t)cap * sizeof *a);
        if (!a) return false;
        t->tok = a;
        uint8_t *b = realloc(t->trn, (size_t)cap);
        if (!b) return false;
        t->trn = b;
        t->cap = cap;
    }
    t->tok[t->n] = id;
    t->trn[t->n] = trn;
    t->n++;
    return true;
}

/* Start offset in text of each token, from the token pieces: a piece either
 * matches the text at the cursor, or is the SentencePiece space prefix plus
 * the text.  False if the pieces do not spell the text (then the caller
 * tokenizes segment by segment). */
static bool align(const nm_vocab *v, const int32_t *ids, size_t n, size_t skip_first, const char *text, size_t len,
                  size_t *start) {
    size_t c = 0;
    char buf[512];
    for (size_t i = 0; i < n; i++) {
        if (i < skip_first) {
            start[i] = 0;
            continue;
        }
        int32_t lp = nm_token_to_piece(v, ids[i], buf, sizeof buf, true);
        if (lp < 0) return false;
        size_t l = (size_t)lp;
        start[i] = c;
        if (l <= len - c && memcmp(text + c, buf, l) == 0) {
            c += l;
        } else if (l >= 1 && buf[0] == ' ' && l - 1 <= len - c && memcmp(text + c, buf + 1, l - 1) == 0) {
            c += l - 1;
        } else {
            return false;
        }
    }
    return c == len;
}

typedef struct span {
    size_t a, b;
} span;

/* 0: ok; 1: bad record (why); -1: fatal (err). */
static int conv_tokens(const conv *c, const nm_data_opts *o, tokbuf *out, char *why, size_t cap, nm_err *err) {
    const nm_vocab *v = o->vocab;
    nm_err e2 = {0};
    char *full = NULL;
    span *sp = NULL;
    size_t n_sp = 0;
    int rc = 0;
    bool any_assistant = false;
    for (size_t i = 0; i < c->n; i++) any_assistant |= !strcmp(c->m[i].role, "assistant");
    if (!any_assistant) {
        snprintf(why, cap, "no assistant message to train on");
        return 1;
    }
    if (nm_chat_render(o->tmpl, c->m, c->n, false, &full, &e2)) {
        snprintf(why, cap, "chat template: %.250s", e2.msg);
        return 1;
    }
    size_t len = strlen(full);
    sp = nm_calloc(c->n + 1, sizeof *sp);
    if (!sp) goto oom;
    /* assistant spans: [render(before, with assistant prefix), render(through)) */
    for (size_t i = 0; i < c->n; i++) {
        if (strcmp(c->m[i].role, "assistant")) continue;
        char *pre = NULL, *upto = NULL;
        if (nm_chat_render(o->tmpl, c->m, i, true, &pre, &e2) ||
            nm_chat_render(o->tmpl, c->m, i + 1, false, &upto, &e2)) {
            free(pre);
            snprintf(why, cap, "chat template: %.250s", e2.msg);
            rc = 1;
            goto done;
        }
        size_t lp = strlen(pre), lu = strlen(upto);
        bool ok = lp <= lu && lu <= len && memcmp(pre, upto, lp) == 0 && memcmp(upto, full, lu) == 0;
        free(pre);
        free(upto);
        if (!ok) {
            snprintf(why, cap, "chat template '%s' does not render this conversation turn by turn",
                     nm_chat_template_name(o->tmpl) ? nm_chat_template_name(o->tmpl) : "?");
            rc = 1;
            goto done;
        }
        sp[n_sp++] = (span){lp, lu};
    }
    int32_t *ids = NULL;
    size_t n_ids;
    if (nm_tokenize(v, full, len, true, true, &ids, &n_ids, err)) {
        rc = -1;
        goto done;
    }
    size_t skip = n_ids > 0 && nm_vocab_add_bos(v) && ids[0] == nm_vocab_bos(v) ? 1 : 0;
    size_t *start = nm_calloc(n_ids + 1, sizeof *start);
    if (!start) {
        free(ids);
        goto oom;
    }
    if (align(v, ids, n_ids, skip, full, len, start)) {
        for (size_t i = 0; i < n_ids && rc == 0; i++) {
            bool in = false;
            for (size_t k = 0; k < n_sp; k++) in |= start[i] >= sp[k].a && start[i] < sp[k].b;
            if (!tb_push(out, ids[i], (uint8_t)(i >= skip && (in || !o->mask_prompt)))) rc = 2;
        }
    } else {
        /* segment by segment: prompt parts and assistant parts tokenized
         * separately (boundaries may tokenize differently than in one go,
         * but the mask is exact) */
        if (skip && !tb_push(out, ids[0], 0)) rc = 2;
        size_t at = 0;
        for (size_t k = 0; k <= n_sp && rc == 0; k++) {
            size_t a = k < n_sp ? sp[k].a : len;
            for (int part = 0; part < 2 && rc == 0; part++) {
                size_t s0 = part == 0 ? at : a, s1 = part == 0 ? a : (k < n_sp ? sp[k].b : len);
                if (s1 <= s0) continue;
                int32_t *seg;
                size_t n_seg;
                if (nm_tokenize(v, full + s0, s1 - s0, false, true, &seg, &n_seg, err)) {
                    rc = -1;
                    break;
                }
                for (size_t j = 0; j < n_seg && rc == 0; j++)
                    if (!tb_push(out, seg[j], (uint8_t)(part == 1 || !o->mask_prompt))) rc = 2;
                free(seg);
            }
            if (k < n_sp) at = sp[k].b;
        }
    }
    free(start);
    free(ids);
    if (rc == 2) goto oom;
done:
    free(full);
    free(sp);
    return rc;
oom:
    free(full);
    free(sp);
    nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    return -1;
}

/* ======================================================================== */
/* record iteration: JSON array or JSON lines                                */
/* ======================================================================== */

typedef struct rec_iter {
    const char *t;
    size_t len, pos;
    int64_t line;
    bool array, started;
} rec_iter;

static void skip_ws(rec_iter *it) {
    while (it->pos < it->len) {
        char ch = it->t[it->pos];
        if (ch == '\n')
            it->line++;
        else if (ch != ' ' && ch != '\t' && ch != '\r')
            break;
        it->pos++;
    }
}

/* End of the JSON value starting at it->pos (strings and nesting followed);
 * false if the text ends first.  Lines are counted. */
static bool value_end(rec_iter *it, size_t *end) {
    size_t p = it->pos;
    int64_t depth = 0;
    bool in_str = false;
    for (; p < it->len; p++) {
        char ch = it->t[p];
        if (ch == '\n') it->line++;
        if (in_str) {
            if (ch == '\\')
                p++;
            else if (ch == '"')
                in_str = false;
            if (depth == 0 && !in_str) {
                *end = p + 1;
                return true;
            }
            continue;
        }
        if (ch == '"') {
            in_str = true;
        } else if (ch == '{' || ch == '[') {
            depth++;
        } else if (ch == '}' || ch == ']') {
            if (depth == 0) break; /* a scalar ends at the array's bracket */
            if (--depth == 0) {
                *end = p + 1;
                return true;
            }
        } else if (depth == 0 && (ch == ',' || ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r')) {
            break;
        }
    }
    if (depth > 0 || in_str) return false;
    *end = p;
    return p > it->pos;
}

/* 1: a record in [*a, *b) starting at *line; 0: no more; -1: the file's
 * structure is broken (why). */
static int rec_next(rec_iter *it, size_t *a, size_t *b, int64_t *line, char *why, size_t cap) {
    if (!it->array) { /* JSON lines: each non-blank line */
        while (it->pos < it->len) {
            size_t s = it->pos;
            const char *nl = memchr(it->t + s, '\n', it->len - s);
            size_t e = nl ? (size_t)(nl - it->t) : it->len;
            it->pos = nl ? e + 1 : e;
            *line = it->line++;
            size_t k = s;
            while (k < e && (it->t[k] == ' ' || it->t[k] == '\t' || it->t[k] == '\r')) k++;
            if (k == e) continue;
            *a = s;
            *b = e;
            return 1;
        }
        return 0;
    }
    if (!it->started) {
        skip_ws(it);
        it->pos++; /* the '[' checked by the caller */
        it->started = true;
        skip_ws(it);
        if (it->pos < it->len && it->t[it->pos] == ']') {
            it->pos = it->len;
            return 0;
        }
    } else {
        skip_ws(it);
        if (it->pos >= it->len) return 0;
        if (it->t[it->pos] == ']') {
            it->pos++;
            skip_ws(it);
            if (it->pos < it->len) {
                snprintf(why, cap, "text after the closing ']' of the array");
                *line = it->line;
                return -1;
            }
            return 0;
        }
        if (it->t[it->pos] != ',') {
            snprintf(why, cap, "expected ',' or ']' between records");
            *line = it->line;
            return -1;
        }
        it->pos++;
        skip_ws(it);
    }
    *line = it->line;
    if (it->pos >= it->len) {
        snprintf(why, cap, "the array is not closed (missing ']')");
        return -1;
    }
    size_t e;
    if (!value_end(it, &e)) {
        snprintf(why, cap, "record is not closed before the end of the file");
        return -1;
    }
    *a = it->pos;
    *b = e;
    it->pos = e;
    return 1;
}

static nm_data_format detect(const char *path, const char *text, size_t len) {
    const char *dot = strrchr(path, '.');
    bool jsonish = dot && (!strcasecmp(dot, ".json") || !strcasecmp(dot, ".jsonl"));
    size_t p = 0;
    while (p < len && (text[p] == ' ' || text[p] == '\n' || text[p] == '\r' || text[p] == '\t')) p++;
    if (!jsonish && !(p < len && (text[p] == '[' || text[p] == '{'))) return NM_DATA_TEXT;
    if (!jsonish) return NM_DATA_TEXT;
    /* the first record's keys decide */
    const char *keys[] = {"\"messages\"", "\"conversations\"", "\"instruction\""};
    const nm_data_format fmts[] = {NM_DATA_MESSAGES, NM_DATA_SHAREGPT, NM_DATA_ALPACA};
    size_t first = (size_t)-1;
    nm_data_format best = NM_DATA_AUTO;
    size_t lim = len < 1 << 20 ? len : 1 << 20;
    for (int k = 0; k < 3; k++) {
        const char *hit = memmem(text, lim, keys[k], strlen(keys[k]));
        if (hit && (size_t)(hit - text) < first) {
            first = (size_t)(hit - text);
            best = fmts[k];
        }
    }
    return best;
}

nm_status nm_dataset_load(const char *path, const nm_data_opts *o, nm_dataset *d, nm_err *err) {
    memset(d, 0, sizeof *d);
    if (!o->vocab) return nm_err_set(err, NM_ERR_ARG, "%s: no tokenizer to read training data with", path);
    if (o->seq_len < 1) return nm_err_set(err, NM_ERR_ARG, "sequence length must be positive");
    char *text;
    size_t len;
    nm_status st = nm_read_file(path, &text, &len, err);
    if (st) return st;
    size_t bom = len >= 3 && !memcmp(text, "\xef\xbb\xbf", 3) ? 3 : 0;
    nm_data_format f = o->format == NM_DATA_AUTO ? detect(path, text + bom, len - bom) : o->format;
    d->format = f;
    if (f == NM_DATA_AUTO) {
        free(text);
        return nm_err_set(err, NM_ERR_FORMAT,
                          "%s: cannot tell the data format: the first record has no \"messages\", "
                          "\"conversations\" or \"instruction\" field (give --format)",
                          path);
    }
    if (f == NM_DATA_TEXT) {
        st = load_text(path, text + bom, len - bom, o, d, err);
        free(text);
        if (st) nm_dataset_deinit(d);
        return st;
    }
    rec_iter it = {text + bom, len - bom, 0, 1, false, false};
    skip_ws(&it);
    it.array = it.pos < it.len && it.t[it.pos] == '[';
    conv c = {0};
    tokbuf tb = {0};
    char why[320];
    int64_t rec_no = 0;
    for (;;) {
        size_t a, b;
        int64_t line;
        int r = rec_next(&it, &a, &b, &line, why, sizeof why);
        if (r == 0) break;
        if (r < 0) {
            st = nm_err_set(err, NM_ERR_FORMAT, "%s:%lld: %s", path, (long long)line, why);
            break;
        }
        rec_no++;
        d->n_records++;
        json_error_t je;
        json_t *rec = json_loadb(it.t + a, b - a, JSON_REJECT_DUPLICATES, &je);
        bool ok, oom = false;
        conv_clear(&c);
        if (!rec) {
            snprintf(why, sizeof why, "invalid JSON: %s", je.text);
            line += je.line > 1 ? je.line - 1 : 0;
            ok = false;
        } else if (f == NM_DATA_ALPACA) {
            ok = rec_alpaca(rec, &c, o, &oom, why, sizeof why);
        } else if (f == NM_DATA_SHAREGPT) {
            ok = rec_sharegpt(rec, &c, o, &oom, why, sizeof why);
        } else {
            ok = rec_messages(rec, &c, o, &oom, why, sizeof why);
        }
        json_decref(rec);
        if (oom) {
            st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
            break;
        }
        if (ok) {
            tb.n = 0;
            int r2 = conv_tokens(&c, o, &tb, why, sizeof why, err);
            if (r2 < 0) {
                st = err ? err->code : NM_ERR_INTERNAL;
                break;
            }
            ok = r2 == 0;
            if (ok && (st = add_example(d, o, tb.tok, tb.trn, tb.n, err))) break;
        }
        if (!ok) {
            if (!o->skip_bad) {
                st = nm_err_set(err, NM_ERR_FORMAT, "%s:%lld: record %lld: %s", path, (long long)line,
                                (long long)rec_no, why);
                break;
            }
            d->n_bad++;
            if (d->n_bad <= 5)
                nm_logf(o->log, NM_LOG_WARN, "%s:%lld: record %lld skipped: %s", path, (long long)line,
                        (long long)rec_no, why);
        }
    }
    conv_clear(&c);
    free(c.m);
    free(tb.tok);
    free(tb.trn);
    free(text);
    if (!st && d->n_ex == 0)
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: no usable training example (%lld records, %lld malformed, %lld empty)",
                        path, (long long)d->n_records, (long long)d->n_bad, (long long)d->n_empty);
    if (st) nm_dataset_deinit(d);
    return st;
}

nm_status nm_dataset_split_units(nm_dataset *d, nm_dataset *val, double frac, uint64_t seed, int64_t group,
                                 const char *what, nm_err *err) {
    memset(val, 0, sizeof *val);
    val->format = d->format;
    int64_t n = d->n_ex / group;
    if (!(frac > 0)) return NM_OK;
    if (frac >= 1 || n < 2)
        return nm_err_set(err, NM_ERR_ARG, "cannot hold out %.3g of %lld %s for validation", frac, (long long)n, what);
    int64_t n_val = (int64_t)(frac * (double)n + 0.5);
    if (n_val < 1) n_val = 1;
    if (n_val > n - 1) n_val = n - 1;
    int64_t *perm = nm_calloc((size_t)n, sizeof *perm);
    uint8_t *is_val = nm_calloc((size_t)n, 1);
    nm_dataset tr = {0};
    tr.format = d->format;
    nm_status st = NM_OK;
    if (!perm || !is_val) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    nm_shuffle_i64(perm, n, seed);
    for (int64_t i = 0; i < n_val; i++) is_val[perm[i]] = 1;
    for (int64_t i = 0; i < group * n; i++) {
        nm_dataset *dst = is_val[i / group] ? val : &tr;
        if (!nm_dataset_push(dst, d->tok + d->ex_off[i], d->trn + d->ex_off[i], d->ex_len[i])) {
            st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    tr.n_records = d->n_records;
    tr.n_bad = d->n_bad;
    tr.n_truncated = d->n_truncated;
    tr.n_empty = d->n_empty;
    nm_dataset_deinit(d);
    *d = tr;
    memset(&tr, 0, sizeof tr);
done:
    nm_dataset_deinit(&tr);
    if (st) nm_dataset_deinit(val);
    free(perm);
    free(is_val);
    return st;
}

nm_status nm_dataset_split(nm_dataset *d, nm_dataset *val, double frac, uint64_t seed, nm_err *err) {
    return nm_dataset_split_units(d, val, frac, seed ^ 0x76616c5f73706c74ULL, 1, "examples", err);
}

/* ======================================================================== */
/* rows                                                                     */
/* ======================================================================== */

void nm_rows_deinit(nm_rows *r) {
    free(r->tokens);
    free(r->targets);
    free(r->pos);
    free(r->doc);
    memset(r, 0, sizeof *r);
}

int64_t nm_rows_count_targets(const nm_rows *r, int64_t r0, int64_t r1) {
    int64_t n = 0;
    for (int64_t i = r0 * r->seq_len; i < r1 * r->seq_len; i++) n += r->targets[i] >= 0;
    return n;
}

nm_status nm_rows_build(const nm_dataset *d, int64_t L, bool pack, bool shuffle, uint64_t seed, nm_rows *out,
                        nm_err *err) {
    memset(out, 0, sizeof *out);
    if (d->n_ex < 1 || L < 1) return nm_err_set(err, NM_ERR_ARG, "no examples to make rows of");
    int64_t *order = nm_calloc((size_t)d->n_ex, sizeof *order);
    if (!order) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < d->n_ex; i++) order[i] = i;
    if (shuffle) {
        nm_shuffle_i64(order, d->n_ex, seed);
    }
    /* count rows: greedy packing in order */
    int64_t n_rows = 0, used = L;
    for (int64_t k = 0; k < d->n_ex; k++) {
        int64_t n_in = d->ex_len[order[k]] - 1; /* <= L: examples are cut at load */
        if (n_in > L) n_in = L;
        if (!pack || used + n_in > L) {
            n_rows++;
            used = 0;
        }
        used += n_in;
    }
    size_t cells = (size_t)(n_rows * L);
    out->seq_len = L;
    out->n_rows = n_rows;
    out->tokens = malloc(cells * sizeof(int32_t));
    out->targets = malloc(cells * sizeof(int32_t));
    out->pos = malloc(cells * sizeof(int32_t));
    out->doc = malloc(cells * sizeof(int32_t));
    if (!out->tokens || !out->targets || !out->pos || !out->doc) {
        free(order);
        nm_rows_deinit(out);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory for %lld training rows", (long long)n_rows);
    }
    /* padding: a valid token, no target, its own document */
    for (size_t i = 0; i < cells; i++) out->tokens[i] = 0, out->targets[i] = -1, out->pos[i] = 0, out->doc[i] = -1;
    int64_t row = -1, doc = 0;
    used = L;
    for (int64_t k = 0; k < d->n_ex; k++) {
        int64_t e = order[k], n_in = d->ex_len[e] - 1;
        if (n_in > L) n_in = L;
        if (!pack || used + n_in > L) {
            row++;
            used = 0;
            doc = 0;
        }
        const int32_t *tok = d->tok + d->ex_off[e];
        const uint8_t *trn = d->trn + d->ex_off[e];
        for (int64_t j = 0; j < n_in; j++) {
            size_t c = (size_t)(row * L + used + j);
            out->tokens[c] = tok[j];
            out->targets[c] = trn[j + 1] ? tok[j + 1] : -1;
            out->pos[c] = (int32_t)j;
            out->doc[c] = (int32_t)doc;
        }
        used += n_in;
        doc++;
    }
    free(order);
    out->n_targets = nm_rows_count_targets(out, 0, n_rows);
    return NM_OK;
}

/* ======================================================================== */
/* for other record readers (preference pairs, src/train/pref.c)            */
/* ======================================================================== */

nm_status nm_data_each_record(const char *path, const char *text, size_t len, nm_data_rec_fn fn, void *user,
                              nm_err *err) {
    size_t bom = len >= 3 && !memcmp(text, "\xef\xbb\xbf", 3) ? 3 : 0;
    rec_iter it = {text + bom, len - bom, 0, 1, false, false};
    skip_ws(&it);
    it.array = it.pos < it.len && it.t[it.pos] == '[';
    char why[160];
    for (int64_t rec_no = 1;; rec_no++) {
        size_t a, b;
        int64_t line;
        int r = rec_next(&it, &a, &b, &line, why, sizeof why);
        if (r == 0) return NM_OK;
        if (r < 0) return nm_err_set(err, NM_ERR_FORMAT, "%s:%lld: %s", path, (long long)line, why);
        nm_status st = fn(user, it.t + a, b - a, line, rec_no, err);
        if (st) return st;
    }
}

int nm_data_render(const nm_chat_msg *msgs, size_t n, const nm_data_opts *o, int32_t **tok, uint8_t **trn,
                   int64_t *n_tok, char *why, size_t cap, nm_err *err) {
    conv c = {0};
    tokbuf tb = {0};
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        if (!conv_add(&c, msgs[i].role, msgs[i].content, o)) rc = -1;
    if (rc) {
        nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    } else {
        rc = conv_tokens(&c, o, &tb, why, cap, err);
    }
    conv_clear(&c);
    free(c.m);
    if (rc) {
        free(tb.tok);
        free(tb.trn);
        return rc;
    }
    *tok = tb.tok;
    *trn = tb.trn;
    *n_tok = tb.n;
    return 0;
}
