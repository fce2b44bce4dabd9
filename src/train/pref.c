/* pref.c - preference pairs (see pref.h).
 *
 * Every record is hostile input: anything that is not a pair in one of the
 * layouts is reported as "FILE:LINE: record N: reason", or skipped and
 * counted when the caller asked for that.  The record framing (JSON array
 * or lines, line numbers) is data.c's, so both readers agree on it. */
#include "train/pref.h"
#include "base/base.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Messages with owned contents (transcripts are cut out of a string). */
typedef struct msgs {
    nm_chat_msg *m;
    size_t n, cap;
} msgs;

static void msgs_clear(msgs *a) {
    for (size_t i = 0; i < a->n; i++) free((char *)a->m[i].content);
    a->n = 0;
}

/* role: a static string. */
static bool msgs_add(msgs *a, const char *role, const char *s, size_t len) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 8;
        nm_chat_msg *m = realloc(a->m, cap * sizeof *m);
        if (!m) return false;
        a->m = m;
        a->cap = cap;
    }
    char *c = malloc(len + 1);
    if (!c) return false;
    memcpy(c, s, len);
    c[len] = 0;
    a->m[a->n].role = role;
    a->m[a->n].content = c;
    a->n++;
    return true;
}

#define BAD(...) (snprintf(why, cap, __VA_ARGS__), 1)

static const char *map_role(const char *r) {
    if (!strcmp(r, "human") || !strcmp(r, "user")) return "user";
    if (!strcmp(r, "gpt") || !strcmp(r, "assistant") || !strcmp(r, "model") || !strcmp(r, "chatgpt"))
        return "assistant";
    if (!strcmp(r, "system") || !strcmp(r, "developer")) return "system";
    return NULL;
}

/* One message object: {"from", "value"} or {"role", "content"}.
 * 0 ok, 1 bad (why), -1 out of memory. */
static int add_msg_obj(json_t *m, const char *what, msgs *out, char *why, size_t cap) {
    if (!json_is_object(m)) return BAD("%s is not a message object", what);
    json_t *r = json_object_get(m, "from"), *v = json_object_get(m, "value");
    if (!r) r = json_object_get(m, "role");
    if (!v) v = json_object_get(m, "content");
    if (!json_is_string(r)) return BAD("%s has no string \"from\" or \"role\"", what);
    if (!json_is_string(v)) return BAD("%s has no string \"value\" or \"content\"", what);
    const char *role = map_role(json_string_value(r));
    if (!role) return BAD("%s: unsupported speaker \"%.40s\"", what, json_string_value(r));
    return msgs_add(out, role, json_string_value(v), json_string_length(v)) ? 0 : -1;
}

/* A string (as role) or a message object or an array of message objects. */
static int add_value(json_t *v, const char *key, const char *role, msgs *out, char *why, size_t cap) {
    char what[64];
    if (json_is_string(v)) return msgs_add(out, role, json_string_value(v), json_string_length(v)) ? 0 : -1;
    if (json_is_object(v)) {
        snprintf(what, sizeof what, "\"%s\"", key);
        return add_msg_obj(v, what, out, why, cap);
    }
    if (json_is_array(v)) {
        if (json_array_size(v) == 0) return BAD("\"%s\" is an empty list", key);
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m) {
            snprintf(what, sizeof what, "%s[%zu]", key, i);
            int r = add_msg_obj(m, what, out, why, cap);
            if (r) return r;
        }
        return 0;
    }
    return BAD("\"%s\" is not a string, a message or a list of messages", key);
}

static const char HH_USER[] = "\n\nHuman:", HH_ASSIST[] = "\n\nAssistant:";

static size_t trim_len(const char *s, size_t n) {
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\t' || s[n - 1] == '\r')) n--;
    return n;
}

/* "\n\nHuman: a\n\nAssistant: b..." -> user a, assistant b, ...; the text
 * before the first marker must be blank. */
static int hh_turns(const char *s, size_t n, msgs *out, char *why, size_t cap) {
    size_t p = 0;
    while (p < n && (s[p] == ' ' || s[p] == '\n' || s[p] == '\r' || s[p] == '\t')) p++;
    if (p >= 2 && s[p - 1] == '\n' && s[p - 2] == '\n') p -= 2;
    while (p < n) {
        const char *role;
        size_t ml;
        if (n - p >= sizeof HH_USER - 1 && !memcmp(s + p, HH_USER, sizeof HH_USER - 1))
            role = "user", ml = sizeof HH_USER - 1;
        else if (n - p >= sizeof HH_ASSIST - 1 && !memcmp(s + p, HH_ASSIST, sizeof HH_ASSIST - 1))
            role = "assistant", ml = sizeof HH_ASSIST - 1;
        else
            return BAD("transcript prompt does not start with \"\\n\\nHuman:\"");
        size_t a = p + ml, e = a;
        if (a < n && s[a] == ' ') a++;
        for (e = a; e < n; e++)
            if (s[e] == '\n' && e + 1 < n && s[e + 1] == '\n' &&
                ((n - e >= sizeof HH_USER - 1 && !memcmp(s + e, HH_USER, sizeof HH_USER - 1)) ||
                 (n - e >= sizeof HH_ASSIST - 1 && !memcmp(s + e, HH_ASSIST, sizeof HH_ASSIST - 1))))
                break;
        if (!msgs_add(out, role, s + a, trim_len(s + a, e - a))) return -1;
        p = e;
    }
    return 0;
}

/* HH-RLHF: the prompt is the longest common prefix ending at an
 * "\n\nAssistant:" marker; each answer is the rest of its transcript. */
static int hh_record(json_t *jc, json_t *jr, msgs *p, msgs *c, msgs *r, char *why, size_t cap) {
    const char *sc = json_string_value(jc), *sr = json_string_value(jr);
    size_t nc = json_string_length(jc), nr = json_string_length(jr), lcp = 0, ml = sizeof HH_ASSIST - 1;
    while (lcp < nc && lcp < nr && sc[lcp] == sr[lcp]) lcp++;
    size_t at = (size_t)-1;
    for (size_t i = 0; i + ml <= lcp; i++)
        if (!memcmp(sc + i, HH_ASSIST, ml)) at = i;
    if (at == (size_t)-1)
        return BAD("\"chosen\" and \"rejected\" share no prompt ending at an \"\\n\\nAssistant:\" turn");
    int rc = hh_turns(sc, at, p, why, cap);
    if (rc) return rc;
    if (p->n == 0) return BAD("transcript has no prompt before \"\\n\\nAssistant:\"");
    size_t a = at + ml;
    if (a < nc && sc[a] == ' ') a++;
    size_t b = at + ml;
    if (b < nr && sr[b] == ' ') b++;
    if (!msgs_add(c, "assistant", sc + a, trim_len(sc + a, nc - a)) ||
        !msgs_add(r, "assistant", sr + b, trim_len(sr + b, nr - b)))
        return -1;
    return 0;
}

/* The prompt and both answers of a record.  0 ok, 1 bad (why), -1 oom. */
static int parse_record(json_t *rec, msgs *p, msgs *c, msgs *r, char *why, size_t cap) {
    if (!json_is_object(rec)) return BAD("not a JSON object");
    json_t *jc = json_object_get(rec, "chosen"), *jr = json_object_get(rec, "rejected");
    if (!jc) return BAD("missing field \"chosen\"");
    if (!jr) return BAD("missing field \"rejected\"");
    json_t *conv = json_object_get(rec, "conversations"), *prompt = json_object_get(rec, "prompt");
    if (!conv) conv = json_object_get(rec, "messages");
    if (!conv && !prompt) {
        if (!json_is_string(jc) || !json_is_string(jr))
            return BAD("no \"prompt\" or \"conversations\", and \"chosen\"/\"rejected\" are not transcripts (strings)");
        return hh_record(jc, jr, p, c, r, why, cap);
    }
    json_t *sys = json_object_get(rec, "system");
    if (sys && !json_is_null(sys)) {
        if (!json_is_string(sys)) return BAD("field \"system\" is not a string");
        if (json_string_length(sys) && !msgs_add(p, "system", json_string_value(sys), json_string_length(sys)))
            return -1;
    }
    int rc;
    if (conv) {
        if (!json_is_array(conv)) return BAD("field \"conversations\" is not a list of messages");
        rc = add_value(conv, "conversations", "user", p, why, cap);
    } else {
        rc = add_value(prompt, "prompt", "user", p, why, cap);
    }
    if (rc) return rc;
    if ((rc = add_value(jc, "chosen", "assistant", c, why, cap))) return rc;
    if ((rc = add_value(jr, "rejected", "assistant", r, why, cap))) return rc;
    if (strcmp(c->m[c->n - 1].role, "assistant")) return BAD("\"chosen\" does not end with an assistant message");
    if (strcmp(r->m[r->n - 1].role, "assistant")) return BAD("\"rejected\" does not end with an assistant message");
    return 0;
}

static bool blank(const char *s) {
    return trim_len(s + strspn(s, " \t\r\n"), strlen(s + strspn(s, " \t\r\n"))) == 0;
}

/* ---- building the dataset ---- */

/* Prompt + answer tokens, the answer (the last assistant span) marked. */
typedef struct side {
    int32_t *tok;
    uint8_t *trn;
    int64_t n;
} side;

static int render_side(const msgs *p, const msgs *a, const nm_data_opts *o, side *s, char *why, size_t cap,
                       nm_err *err) {
    msgs all = {0};
    int rc = 0;
    all.m = nm_calloc(p->n + a->n, sizeof *all.m);
    if (!all.m) return nm_err_set(err, NM_ERR_NOMEM, "out of memory"), -1;
    memcpy(all.m, p->m, p->n * sizeof *all.m);
    memcpy(all.m + p->n, a->m, a->n * sizeof *all.m);
    nm_data_opts o2 = *o;
    o2.mask_prompt = true;
    rc = nm_data_render(all.m, p->n + a->n, &o2, &s->tok, &s->trn, &s->n, why, cap, err);
    free(all.m);
    if (rc) return rc;
    /* earlier assistant turns are prompt: keep the last trained run */
    int64_t e = s->n - 1;
    while (e >= 0 && !s->trn[e]) e--;
    if (e < 1) return BAD("the answer is empty");
    while (e >= 0 && s->trn[e]) e--;
    for (int64_t i = 0; i <= e; i++) s->trn[i] = 0;
    return 0;
}

typedef struct loader {
    const char *path;
    const nm_data_opts *o;
    nm_dataset *d;
    msgs p, c, r;
} loader;

/* Tokens a side must lose at its start so that its answer begins inside
 * the window of W tokens: none if it does; otherwise as few as keep the
 * whole tail, but at least enough to leave half the window to the answer
 * (TRL cuts long prompts at the start the same way). */
static int64_t cut_needed(const side *s, int64_t W) {
    int64_t a = 1;
    while (a < s->n && !s->trn[a]) a++;
    if (a < W || s->n <= W) return 0;
    int64_t keep = W / 2 > 0 ? W / 2 : 1, from = a - keep;
    return s->n - W < from ? s->n - W : from;
}

/* Both sides cut by the same number of prompt tokens (they share the
 * prompt), then at their end; false if a side has no answer token left. */
static bool fit_pair(const nm_data_opts *o, side *c, side *r, bool *cut) {
    int64_t W = o->seq_len + 1, fc = cut_needed(c, W), fr = cut_needed(r, W), from = fc > fr ? fc : fr;
    side *sd[2] = {c, r};
    bool ok = true;
    for (int k = 0; k < 2; k++) {
        side *s = sd[k];
        if (s->n > W) *cut = true;
        if (from > 0 && from < s->n) {
            memmove(s->tok, s->tok + from, (size_t)(s->n - from) * sizeof *s->tok);
            memmove(s->trn, s->trn + from, (size_t)(s->n - from));
            s->n -= from;
        }
        if (s->n > W) s->n = W;
        bool any = false;
        for (int64_t i = 1; i < s->n; i++) any |= s->trn[i] != 0;
        ok &= any;
    }
    return ok;
}

static nm_status on_record(void *user, const char *text, size_t len, int64_t line, int64_t rec_no, nm_err *err) {
    loader *L = user;
    nm_dataset *d = L->d;
    char why[320];
    json_error_t je;
    side sc = {0}, sr = {0};
    int rc;
    d->n_records++;
    msgs_clear(&L->p);
    msgs_clear(&L->c);
    msgs_clear(&L->r);
    json_t *rec = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!rec) {
        snprintf(why, sizeof why, "invalid JSON: %s", je.text);
        line += je.line > 1 ? je.line - 1 : 0;
        rc = 1;
    } else {
        rc = parse_record(rec, &L->p, &L->c, &L->r, why, sizeof why);
        json_decref(rec);
        if (rc == 0 && (blank(L->c.m[L->c.n - 1].content) || blank(L->r.m[L->r.n - 1].content)))
            rc = 1, snprintf(why, sizeof why, "an answer is empty");
    }
    if (rc < 0 && !(err && err->code)) nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    if (rc == 0) rc = render_side(&L->p, &L->c, L->o, &sc, why, sizeof why, err);
    if (rc == 0) rc = render_side(&L->p, &L->r, L->o, &sr, why, sizeof why, err);
    nm_status st = NM_OK;
    if (rc < 0) {
        st = err && err->code ? err->code : NM_ERR_NOMEM;
    } else if (rc > 0) {
        if (!L->o->skip_bad) {
            st = nm_err_set(err, NM_ERR_FORMAT, "%s:%lld: record %lld: %s", L->path, (long long)line,
                            (long long)rec_no, why);
        } else {
            d->n_bad++;
            if (d->n_bad <= 5)
                nm_logf(L->o->log, NM_LOG_WARN, "%s:%lld: record %lld skipped: %s", L->path, (long long)line,
                        (long long)rec_no, why);
        }
    } else {
        bool cut = false, ok = fit_pair(L->o, &sc, &sr, &cut);
        d->n_truncated += cut;
        if (!ok)
            d->n_empty++;
        else if (!nm_dataset_push(d, sc.tok, sc.trn, sc.n) || !nm_dataset_push(d, sr.tok, sr.trn, sr.n))
            st = nm_err_set(err, NM_ERR_NOMEM, "out of memory for preference pairs");
    }
    free(sc.tok);
    free(sc.trn);
    free(sr.tok);
    free(sr.trn);
    return st;
}

nm_status nm_pref_load_text(const char *path, const char *text, size_t len, const nm_data_opts *o, nm_dataset *d,
                            nm_err *err) {
    memset(d, 0, sizeof *d);
    if (!o->vocab) return nm_err_set(err, NM_ERR_ARG, "%s: no tokenizer to read preference pairs with", path);
    if (o->seq_len < 1) return nm_err_set(err, NM_ERR_ARG, "sequence length must be positive");
    d->format = NM_DATA_AUTO;
    loader L = {path, o, d, {0}, {0}, {0}};
    nm_status st = nm_data_each_record(path, text, len, on_record, &L, err);
    msgs_clear(&L.p);
    msgs_clear(&L.c);
    msgs_clear(&L.r);
    free(L.p.m);
    free(L.c.m);
    free(L.r.m);
    if (!st && d->n_ex == 0)
        st = nm_err_set(err, NM_ERR_FORMAT,
                        "%s: no usable preference pair (%lld records, %lld malformed, %lld too long for the sequence)",
                        path, (long long)d->n_records, (long long)d->n_bad, (long long)d->n_empty);
    if (st) nm_dataset_deinit(d);
    return st;
}

nm_status nm_pref_load(const char *path, const nm_data_opts *o, nm_dataset *d, nm_err *err) {
    memset(d, 0, sizeof *d);
    char *text;
    size_t len;
    nm_status st = nm_read_file(path, &text, &len, err);
    if (st) return st;
    st = nm_pref_load_text(path, text, len, o, d, err);
    free(text);
    return st;
}

int64_t nm_pref_n_pairs(const nm_dataset *d) { return d->n_ex / 2; }

nm_status nm_pref_split(nm_dataset *d, nm_dataset *val, double frac, uint64_t seed, nm_err *err) {
    return nm_dataset_split_units(d, val, frac, seed ^ 0x7072656673706c74ULL, 2, "preference pairs", err);
}

nm_status nm_pref_rows(const nm_dataset *d, int64_t L, bool shuffle, uint64_t seed, nm_rows *out, int64_t **pair,
                       nm_err *err) {
    memset(out, 0, sizeof *out);
    *pair = NULL;
    int64_t n = nm_pref_n_pairs(d);
    if (n < 1 || L < 1) return nm_err_set(err, NM_ERR_ARG, "no preference pairs to make rows of");
    int64_t *order = nm_calloc((size_t)n, sizeof *order);
    if (!order) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++) order[i] = i;
    if (shuffle) {
        nm_shuffle_i64(order, n, seed);
    }
    size_t cells = (size_t)(2 * n * L);
    out->seq_len = L;
    out->n_rows = 2 * n;
    out->tokens = malloc(cells * sizeof(int32_t));
    out->targets = malloc(cells * sizeof(int32_t));
    out->pos = malloc(cells * sizeof(int32_t));
    out->doc = malloc(cells * sizeof(int32_t));
    if (!out->tokens || !out->targets || !out->pos || !out->doc) {
        free(order);
        nm_rows_deinit(out);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory for %lld preference rows", (long long)(2 * n));
    }
    /* padding: a valid token, no target, its own document (as nm_rows_build) */
    for (size_t i = 0; i < cells; i++) out->tokens[i] = 0, out->targets[i] = -1, out->pos[i] = 0, out->doc[i] = -1;
    for (int64_t row = 0; row < 2 * n; row++) {
        int64_t e = 2 * order[row / 2] + (row & 1), n_in = d->ex_len[e] - 1;
        if (n_in > L) n_in = L;
        const int32_t *tok = d->tok + d->ex_off[e];
        const uint8_t *trn = d->trn + d->ex_off[e];
        for (int64_t j = 0; j < n_in; j++) {
            size_t c = (size_t)(row * L + j);
            out->tokens[c] = tok[j];
            out->targets[c] = trn[j + 1] ? tok[j + 1] : -1;
            out->pos[c] = (int32_t)j;
            out->doc[c] = 0;
        }
    }
    out->n_targets = nm_rows_count_targets(out, 0, out->n_rows);
    *pair = order;
    return NM_OK;
}
