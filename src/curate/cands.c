/* cands.c - prompts and candidate responses: reading them from text lines,
 * training-format files or our candidates JSONL, and writing them in the
 * training formats with their scores as metadata.
 *
 * The conversation readers follow src/train/data.c's reading of the same
 * formats (field names, speaker names, Alpaca's instruction + "\n" + input)
 * but keep text, not tokens: prompts must be rendered for a model chosen
 * later, and written back out. */
#include "curate/curate.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct prompt_rec {
    nm_chat_msg *msgs;
    size_t n;
    bool raw;
} prompt_rec;

struct nm_cands {
    nm_cand *c;
    size_t n, cap;
    nm_arena arena;
    nm_hmap ids;        /* prompt id -> index in prompts */
    prompt_rec *prompts;
    size_t n_prompts, cap_prompts;
    char **scorer_names;
    size_t n_scorers;
};

nm_cands *nm_cands_new(void) {
    nm_cands *c = nm_calloc(1, sizeof *c);
    if (c && !nm_hmap_init(&c->ids, 64)) {
        free(c);
        return NULL;
    }
    return c;
}

void nm_cands_free(nm_cands *c) {
    if (!c) return;
    free(c->c);
    free(c->prompts);
    nm_hmap_deinit(&c->ids);
    for (size_t i = 0; i < c->n_scorers; i++) free(c->scorer_names[i]);
    free(c->scorer_names);
    nm_arena_free(&c->arena);
    free(c);
}

size_t nm_cands_size(const nm_cands *c) { return c->n; }
const nm_cand *nm_cands_at(const nm_cands *c, size_t i) { return i < c->n ? &c->c[i] : NULL; }
int64_t nm_cands_n_prompts(const nm_cands *c) { return (int64_t)c->n_prompts; }
size_t nm_cands_n_scorers(const nm_cands *c) { return c->n_scorers; }
const char *nm_cands_scorer_name(const nm_cands *c, size_t k) { return k < c->n_scorers ? c->scorer_names[k] : NULL; }

nm_cand *nm_cands_mut(nm_cands *c, size_t i) { return i < c->n ? &c->c[i] : NULL; }

nm_status nm_cands_set_scorers(nm_cands *c, const char *const *names, size_t n, nm_err *err) {
    for (size_t i = 0; i < c->n_scorers; i++) free(c->scorer_names[i]);
    free(c->scorer_names);
    c->n_scorers = 0;
    c->scorer_names = nm_calloc(n ? n : 1, sizeof *c->scorer_names);
    if (!c->scorer_names) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        if (!(c->scorer_names[c->n_scorers++] = nm_strdup(names[i]))) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    double *all = nm_arena_alloc(&c->arena, (c->n ? c->n : 1) * (n ? n : 1) * sizeof *all);
    if (!all) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < c->n; i++) {
        c->c[i].scores = n ? all + i * n : NULL;
        for (size_t k = 0; k < n; k++) all[i * n + k] = NAN;
    }
    return NM_OK;
}

nm_status nm_cands_add(nm_cands *c, int64_t prompt_id, int32_t index, const nm_chat_msg *msgs, size_t n_msgs,
                       bool raw, const char *response, uint64_t seed, nm_err *err) {
    if (prompt_id < 0 || prompt_id > UINT32_MAX - 2)
        return nm_err_set(err, NM_ERR_RANGE, "prompt id %lld out of range", (long long)prompt_id);
    uint32_t pi;
    if (!nm_hmap_get(&c->ids, (uint64_t)prompt_id + 2, &pi)) {
        if (n_msgs == 0) return nm_err_set(err, NM_ERR_ARG, "prompt %lld has no message", (long long)prompt_id);
        if (raw && n_msgs != 1)
            return nm_err_set(err, NM_ERR_ARG, "a plain-text prompt is one message, got %zu", n_msgs);
        if (c->n_prompts == c->cap_prompts) {
            size_t cap = c->cap_prompts ? c->cap_prompts * 2 : 64;
            prompt_rec *v = realloc(c->prompts, cap * sizeof *v);
            if (!v) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
            c->prompts = v;
            c->cap_prompts = cap;
        }
        nm_chat_msg *m = nm_arena_alloc(&c->arena, n_msgs * sizeof *m);
        if (!m) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < n_msgs; i++) {
            m[i].role = nm_arena_strndup(&c->arena, msgs[i].role, strlen(msgs[i].role));
            m[i].content = nm_arena_strndup(&c->arena, msgs[i].content, strlen(msgs[i].content));
            if (!m[i].role || !m[i].content) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        }
        pi = (uint32_t)c->n_prompts;
        c->prompts[c->n_prompts++] = (prompt_rec){m, n_msgs, raw};
        if (!nm_hmap_put(&c->ids, (uint64_t)prompt_id + 2, pi, NULL, NULL))
            return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        nm_cand *v = realloc(c->c, cap * sizeof *v);
        if (!v) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        c->c = v;
        c->cap = cap;
    }
    const prompt_rec *p = &c->prompts[pi];
    /* an id names one prompt: a different one under a known id is a mistake
     * (e.g. candidates files of two runs loaded together) */
    bool same = p->n == n_msgs && p->raw == raw;
    for (size_t i = 0; same && i < n_msgs; i++)
        same = !strcmp(p->msgs[i].role, msgs[i].role) && !strcmp(p->msgs[i].content, msgs[i].content);
    if (!same)
        return nm_err_set(err, NM_ERR_ARG, "prompt id %lld already names another prompt", (long long)prompt_id);
    char *resp = NULL;
    if (response && !(resp = nm_arena_strndup(&c->arena, response, strlen(response))))
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    c->c[c->n++] = (nm_cand){prompt_id, index, p->msgs, p->n, p->raw, resp, seed, NULL, 0.0, false, -1};
    return NM_OK;
}

/* ======================================================================== */
/* reading                                                                  */
/* ======================================================================== */

typedef struct conv {
    nm_chat_msg m[256];
    char *owned[256];
    size_t n;
} conv;

static void conv_clear(conv *c) {
    for (size_t i = 0; i < c->n; i++) free(c->owned[i]);
    c->n = 0;
}

static bool conv_add(conv *c, const char *role, const char *content, size_t len, char *why, size_t cap) {
    if (c->n == 256) {
        snprintf(why, cap, "more than 256 messages");
        return false;
    }
    char *s = nm_strndup(content, len);
    if (!s) {
        snprintf(why, cap, "out of memory");
        return false;
    }
    c->owned[c->n] = s;
    c->m[c->n].role = role;
    c->m[c->n].content = s;
    c->n++;
    return true;
}

#define BAD(...) (snprintf(why, cap, __VA_ARGS__), false)

static const char *str_field(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool add_str(conv *c, const char *role, json_t *s, char *why, size_t cap) {
    return conv_add(c, role, json_string_value(s), json_string_length(s), why, cap);
}

static bool rec_alpaca(json_t *r, conv *c, char *why, size_t cap) {
    json_t *ins = json_object_get(r, "instruction"), *in = json_object_get(r, "input"),
           *out = json_object_get(r, "output"), *sys = json_object_get(r, "system"), *hist = json_object_get(r, "history");
    if (!json_is_string(ins)) return BAD("missing string field \"instruction\"");
    if (out && !json_is_string(out) && !json_is_null(out)) return BAD("field \"output\" is not a string");
    if (in && !json_is_string(in) && !json_is_null(in)) return BAD("field \"input\" is not a string");
    if (json_is_string(sys) && json_string_length(sys) && !add_str(c, "system", sys, why, cap)) return false;
    if (hist && !json_is_null(hist)) {
        if (!json_is_array(hist)) return BAD("field \"history\" is not an array");
        size_t i;
        json_t *pair;
        json_array_foreach(hist, i, pair) {
            if (!json_is_array(pair) || json_array_size(pair) != 2 || !json_is_string(json_array_get(pair, 0)) ||
                !json_is_string(json_array_get(pair, 1)))
                return BAD("history entry %zu is not a [user, assistant] pair of strings", i);
            if (!add_str(c, "user", json_array_get(pair, 0), why, cap) ||
                !add_str(c, "assistant", json_array_get(pair, 1), why, cap))
                return false;
        }
    }
    nm_buf q;
    nm_buf_init(&q);
    nm_buf_push(&q, json_string_value(ins), json_string_length(ins));
    if (json_is_string(in) && json_string_length(in)) {
        nm_buf_push(&q, "\n", 1);
        nm_buf_push(&q, json_string_value(in), json_string_length(in));
    }
    bool ok = !q.oom && conv_add(c, "user", q.len ? (const char *)q.data : "", q.len, why, cap);
    nm_buf_deinit(&q);
    if (!ok) return false;
    if (json_is_string(out) && !add_str(c, "assistant", out, why, cap)) return false;
    return true;
}

static const char *speaker_role(const char *from) {
    if (!strcmp(from, "human") || !strcmp(from, "user")) return "user";
    if (!strcmp(from, "gpt") || !strcmp(from, "assistant") || !strcmp(from, "model") || !strcmp(from, "chatgpt") ||
        !strcmp(from, "bard") || !strcmp(from, "bing"))
        return "assistant";
    if (!strcmp(from, "system") || !strcmp(from, "developer")) return "system";
    return NULL;
}

static bool rec_sharegpt(json_t *r, conv *c, char *why, size_t cap) {
    json_t *cv = json_object_get(r, "conversations"), *sys = json_object_get(r, "system");
    if (!json_is_array(cv)) return BAD("missing array field \"conversations\"");
    if (json_is_string(sys) && json_string_length(sys) && !add_str(c, "system", sys, why, cap)) return false;
    size_t i;
    json_t *m;
    json_array_foreach(cv, i, m) {
        if (!json_is_object(m)) return BAD("conversations[%zu] is not an object", i);
        const char *from = str_field(m, "from");
        json_t *val = json_object_get(m, "value");
        if (!from) from = str_field(m, "role");
        if (!val) val = json_object_get(m, "content");
        if (!from) return BAD("conversations[%zu] has no string \"from\"", i);
        if (!json_is_string(val)) return BAD("conversations[%zu] has no string \"value\"", i);
        const char *role = speaker_role(from);
        if (!role) return BAD("conversations[%zu]: unsupported speaker \"%.40s\"", i, from);
        if (!add_str(c, role, val, why, cap)) return false;
    }
    return true;
}

static bool rec_messages(json_t *r, conv *c, char *why, size_t cap) {
    json_t *ms = json_object_get(r, "messages");
    if (!json_is_array(ms)) return BAD("missing array field \"messages\"");
    size_t i;
    json_t *m;
    json_array_foreach(ms, i, m) {
        if (!json_is_object(m)) return BAD("messages[%zu] is not an object", i);
        const char *role = str_field(m, "role");
        if (!role) return BAD("messages[%zu] has no string \"role\"", i);
        const char *r2 = speaker_role(role);
        if (!r2) return BAD("messages[%zu]: unsupported role \"%.40s\"", i, role);
        json_t *content = json_object_get(m, "content");
        if (json_is_string(content)) {
            if (!add_str(c, r2, content, why, cap)) return false;
        } else if (json_is_array(content)) { /* content parts: text only */
            nm_buf b;
            nm_buf_init(&b);
            size_t k;
            json_t *part;
            json_array_foreach(content, k, part) {
                const char *type = str_field(part, "type");
                json_t *text = json_object_get(part, "text");
                if (!type || strcmp(type, "text") || !json_is_string(text)) {
                    nm_buf_deinit(&b);
                    return BAD("messages[%zu].content[%zu] is not a text part", i, k);
                }
                nm_buf_push(&b, json_string_value(text), json_string_length(text));
            }
            bool ok = !b.oom && conv_add(c, r2, b.len ? (const char *)b.data : "", b.len, why, cap);
            nm_buf_deinit(&b);
            if (!ok) return false;
        } else {
            return BAD("messages[%zu] has no string \"content\"", i);
        }
    }
    return true;
}

/* Our own candidates: {"prompt_id", "candidate", "seed", "prompt" | "messages", "response"}. */
static bool rec_candidate(json_t *r, conv *c, bool *raw, int64_t *pid, int32_t *index, uint64_t *seed,
                          const char **response, char *why, size_t cap) {
    json_t *jp = json_object_get(r, "prompt"), *jid = json_object_get(r, "prompt_id"),
           *jc = json_object_get(r, "candidate"), *js = json_object_get(r, "seed"), *jr = json_object_get(r, "response");
    if (!json_is_integer(jid) || json_integer_value(jid) < 0) return BAD("missing non-negative integer \"prompt_id\"");
    *pid = json_integer_value(jid);
    *index = json_is_integer(jc) ? (int32_t)json_integer_value(jc) : 0;
    /* seeds above 2^63 are written as strings: JSON integers are signed */
    if (json_is_integer(js)) *seed = (uint64_t)json_integer_value(js);
    else if (json_is_string(js)) *seed = strtoull(json_string_value(js), NULL, 10);
    else *seed = 0;
    *response = json_is_string(jr) ? json_string_value(jr) : NULL;
    if (jr && !json_is_string(jr) && !json_is_null(jr)) return BAD("field \"response\" is not a string");
    if (json_is_string(jp)) {
        *raw = true;
        return add_str(c, "user", jp, why, cap);
    }
    *raw = false;
    if (!json_object_get(r, "messages")) return BAD("neither a string \"prompt\" nor \"messages\"");
    return rec_messages(r, c, why, cap);
}

typedef enum cfmt { CF_LINES, CF_CANDIDATES, CF_ALPACA, CF_SHAREGPT, CF_MESSAGES } cfmt;

static int parse_format(const char *f) {
    static const char *const names[] = {"lines", "candidates", "alpaca", "sharegpt", "messages"};
    for (int i = 0; i < 5; i++)
        if (!strcasecmp(f, names[i])) return i;
    if (!strcasecmp(f, "text")) return CF_LINES;
    return -1;
}

/* The format of a JSON record by its keys. */
static int detect_record(json_t *r) {
    if (!json_is_object(r)) return -1;
    if (json_object_get(r, "prompt_id")) return CF_CANDIDATES;
    if (json_object_get(r, "messages")) return CF_MESSAGES;
    if (json_object_get(r, "conversations")) return CF_SHAREGPT;
    if (json_object_get(r, "instruction")) return CF_ALPACA;
    return -1;
}

/* Identical prompts share an id: the id of a prompt is the number of
 * distinct prompts before it. */
typedef struct id_map {
    nm_hmap seen;
    int64_t next;
} id_map;

static uint64_t prompt_hash(const nm_chat_msg *m, size_t n, bool raw) {
    uint64_t h = raw ? 0x1234 : 0x5678;
    for (size_t i = 0; i < n; i++) {
        h = nm_cu_hash(m[i].role, strlen(m[i].role), h);
        h = nm_cu_hash(m[i].content, strlen(m[i].content), h ^ 0x9e37);
    }
    return h;
}

static nm_status add_conv(nm_cands *c, id_map *ids, conv *cv, bool raw, const char *response, int32_t index,
                          uint64_t seed, nm_err *err) {
    uint64_t h = prompt_hash(cv->m, cv->n, raw);
    bool there;
    uint32_t id;
    if (!nm_hmap_put(&ids->seen, h, (uint32_t)ids->next, &there, &id)) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    if (!there) id = (uint32_t)ids->next++;
    /* the candidate number: how many of this prompt came before */
    if (index < 0) {
        index = 0;
        for (size_t i = 0; i < c->n; i++) index += c->c[i].prompt_id == (int64_t)id;
    }
    return nm_cands_add(c, (int64_t)id, index, cv->m, cv->n, raw, response, seed, err);
}

static nm_status load_record(nm_cands *c, id_map *ids, const char *path, int64_t line, int64_t recno, json_t *rec,
                             int fmt, nm_err *err) {
    conv cv = {0};
    char why[320];
    bool ok, raw = false;
    const char *response = NULL;
    int64_t pid = -1;
    int32_t index = -1;
    uint64_t seed = 0;
    nm_status st = NM_OK;
    if (!json_is_object(rec)) {
        ok = false;
        snprintf(why, sizeof why, "not a JSON object");
    } else if (fmt == CF_CANDIDATES) {
        ok = rec_candidate(rec, &cv, &raw, &pid, &index, &seed, &response, why, sizeof why);
    } else if (fmt == CF_ALPACA) {
        ok = rec_alpaca(rec, &cv, why, sizeof why);
    } else if (fmt == CF_SHAREGPT) {
        ok = rec_sharegpt(rec, &cv, why, sizeof why);
    } else {
        ok = rec_messages(rec, &cv, why, sizeof why);
    }
    if (ok && fmt != CF_CANDIDATES && cv.n > 0 && !strcmp(cv.m[cv.n - 1].role, "assistant")) {
        response = cv.m[cv.n - 1].content;
        cv.n--; /* the prompt is what comes before; the text is freed below */
    }
    if (ok && cv.n == 0) {
        ok = false;
        snprintf(why, sizeof why, "no prompt message");
    }
    if (!ok) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s:%lld: record %lld: %s", path, (long long)line, (long long)recno, why);
    } else if (fmt == CF_CANDIDATES) {
        st = nm_cands_add(c, pid, index, cv.m, cv.n, raw, response, seed, err);
    } else {
        st = add_conv(c, ids, &cv, false, response, -1, 0, err);
    }
    /* free every owned content, the response included */
    size_t total = cv.n + (response && fmt != CF_CANDIDATES ? 1 : 0);
    cv.n = total;
    conv_clear(&cv);
    return st;
}

static nm_status load_lines(nm_cands *c, id_map *ids, const char *text, size_t len, nm_err *err) {
    size_t i = len >= 3 && !memcmp(text, "\xef\xbb\xbf", 3) ? 3 : 0;
    conv cv = {0};
    nm_buf b;
    nm_buf_init(&b);
    nm_status st = NM_OK;
    while (i < len && !st) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - text) : len, te = e > i && text[e - 1] == '\r' ? e - 1 : e;
        bool blank = true;
        for (size_t k = i; k < te && blank; k++) blank = text[k] == ' ' || text[k] == '\t';
        if (!blank) {
            b.len = 0;
            for (size_t k = i; k < te; k++) { /* \n, \t and \\ escapes */
                char ch = text[k];
                if (ch == '\\' && k + 1 < te && (text[k + 1] == 'n' || text[k + 1] == 't' || text[k + 1] == '\\')) {
                    k++;
                    ch = text[k] == 'n' ? '\n' : text[k] == 't' ? '\t' : '\\';
                }
                nm_buf_push(&b, &ch, 1);
            }
            char why[64];
            if (b.oom || !conv_add(&cv, "user", (const char *)b.data, b.len, why, sizeof why))
                st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
            else
                st = add_conv(c, ids, &cv, true, NULL, -1, 0, err);
            conv_clear(&cv);
        }
        i = e + 1;
    }
    nm_buf_deinit(&b);
    return st;
}

nm_status nm_cands_load(nm_cands *c, const char *path, const char *format, nm_err *err) {
    int fmt = -2; /* auto */
    if (format && strcasecmp(format, "auto") != 0) {
        fmt = parse_format(format);
        if (fmt < 0)
            return nm_err_set(err, NM_ERR_ARG,
                              "unknown prompt format '%s' (auto, lines, candidates, alpaca, sharegpt, messages)", format);
    }
    char *text;
    size_t len;
    nm_status st = nm_read_file(path, &text, &len, err);
    if (st) return st;
    const char *dot = strrchr(path, '.');
    bool jsonish = dot && (!strcasecmp(dot, ".json") || !strcasecmp(dot, ".jsonl"));
    if (fmt == -2 && !jsonish) fmt = CF_LINES;
    id_map ids = {{0}, 0};
    if (!nm_hmap_init(&ids.seen, 64)) {
        free(text);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    /* prompt ids continue after those already in the set */
    for (size_t i = 0; i < c->n; i++)
        if (c->c[i].prompt_id + 1 > ids.next) ids.next = c->c[i].prompt_id + 1;
    size_t before = c->n;
    if (fmt == CF_LINES) {
        st = load_lines(c, &ids, text, len, err);
    } else {
        size_t p = len >= 3 && !memcmp(text, "\xef\xbb\xbf", 3) ? 3 : 0;
        while (p < len && (text[p] == ' ' || text[p] == '\n' || text[p] == '\r' || text[p] == '\t')) p++;
        if (p < len && text[p] == '[') {
            json_error_t je;
            json_t *arr = json_loadb(text + p, len - p, JSON_REJECT_DUPLICATES, &je);
            if (!arr) {
                st = nm_err_set(err, NM_ERR_FORMAT, "%s:%d: invalid JSON: %s", path, je.line, je.text);
            } else {
                size_t i;
                json_t *rec;
                json_array_foreach(arr, i, rec) {
                    int f = fmt == -2 ? detect_record(rec) : fmt;
                    if (f < 0) {
                        st = nm_err_set(err, NM_ERR_FORMAT,
                                        "%s: record %zu: cannot tell its format (no \"messages\", \"conversations\", "
                                        "\"instruction\" or \"prompt_id\")",
                                        path, i + 1);
                        break;
                    }
                    if ((st = load_record(c, &ids, path, 0, (int64_t)i + 1, rec, f, err))) break;
                }
                json_decref(arr);
            }
        } else {
            int64_t line = 0, recno = 0;
            size_t q = 0;
            while (q < len && !st) {
                const char *nl = memchr(text + q, '\n', len - q);
                size_t e = nl ? (size_t)(nl - text) : len;
                line++;
                bool blank = true;
                for (size_t k = q; k < e && blank; k++) blank = text[k] == ' ' || text[k] == '\t' || text[k] == '\r';
                if (!blank) {
                    recno++;
                    json_error_t je;
                    json_t *rec = json_loadb(text + q, e - q, JSON_REJECT_DUPLICATES, &je);
                    if (!rec) {
                        st = nm_err_set(err, NM_ERR_FORMAT, "%s:%lld: invalid JSON: %s", path, (long long)line, je.text);
                        break;
                    }
                    int f = fmt == -2 ? detect_record(rec) : fmt;
                    if (f < 0)
                        st = nm_err_set(err, NM_ERR_FORMAT,
                                        "%s:%lld: cannot tell the record's format (no \"messages\", \"conversations\", "
                                        "\"instruction\" or \"prompt_id\")",
                                        path, (long long)line);
                    else
                        st = load_record(c, &ids, path, line, recno, rec, f, err);
                    json_decref(rec);
                }
                q = e + 1;
            }
        }
    }
    if (!st && c->n == before) st = nm_err_set(err, NM_ERR_FORMAT, "%s: no prompt in the file", path);
    nm_hmap_deinit(&ids.seen);
    free(text);
    return st;
}

/* ======================================================================== */
/* writing                                                                  */
/* ======================================================================== */

static void json_s(nm_buf *b, const char *s) { nm_cu_json_str(b, s, strlen(s)); }

static void json_num(nm_buf *b, double v) {
    if (isfinite(v))
        nm_buf_printf(b, "%.6g", v);
    else
        nm_buf_printf(b, "null");
}

static void write_meta(const nm_cands *c, const nm_cand *x, nm_buf *b) {
    nm_buf_printf(b, "\"meta\": {\"prompt_id\": %lld, \"candidate\": %d, \"seed\": \"%llu\"", (long long)x->prompt_id,
                  x->index, (unsigned long long)x->seed);
    if (x->scores) {
        nm_buf_printf(b, ", \"scores\": {");
        for (size_t k = 0; k < c->n_scorers; k++) {
            if (k) nm_buf_push(b, ", ", 2);
            json_s(b, c->scorer_names[k]);
            nm_buf_push(b, ": ", 2);
            json_num(b, x->scores[k]);
        }
        nm_buf_printf(b, "}, \"total\": ");
        json_num(b, x->total);
    }
    nm_buf_push(b, "}", 1);
}

static void write_one(const nm_cands *c, const nm_cand *x, int fmt, nm_buf *b) {
    const char *resp = x->response ? x->response : "";
    if (fmt == CF_CANDIDATES) {
        nm_buf_printf(b, "{\"prompt_id\": %lld, \"candidate\": %d, \"seed\": \"%llu\", ", (long long)x->prompt_id,
                      x->index, (unsigned long long)x->seed);
        if (x->raw) {
            nm_buf_printf(b, "\"prompt\": ");
            json_s(b, x->msgs[0].content);
        } else {
            nm_buf_printf(b, "\"messages\": [");
            for (size_t i = 0; i < x->n_msgs; i++) {
                nm_buf_printf(b, "%s{\"role\": ", i ? ", " : "");
                json_s(b, x->msgs[i].role);
                nm_buf_printf(b, ", \"content\": ");
                json_s(b, x->msgs[i].content);
                nm_buf_push(b, "}", 1);
            }
            nm_buf_push(b, "]", 1);
        }
        nm_buf_printf(b, ", \"response\": ");
        if (x->response)
            json_s(b, x->response);
        else
            nm_buf_printf(b, "null");
        if (x->scores) {
            nm_buf_printf(b, ", \"scores\": {");
            for (size_t k = 0; k < c->n_scorers; k++) {
                if (k) nm_buf_push(b, ", ", 2);
                json_s(b, c->scorer_names[k]);
                nm_buf_push(b, ": ", 2);
                json_num(b, x->scores[k]);
            }
            nm_buf_printf(b, "}, \"total\": ");
            json_num(b, x->total);
            nm_buf_printf(b, ", \"kept\": %s", x->kept ? "true" : "false");
            if (x->dropped_by >= 0) {
                nm_buf_printf(b, ", \"dropped_by\": ");
                json_s(b, c->scorer_names[x->dropped_by]);
            }
        }
        nm_buf_printf(b, "}\n");
        return;
    }
    if (fmt == CF_LINES) { /* text: blank lines inside become single newlines */
        nm_buf t;
        nm_buf_init(&t);
        if (x->raw) {
            nm_buf_push(&t, x->msgs[0].content, strlen(x->msgs[0].content));
        } else {
            for (size_t i = 0; i < x->n_msgs; i++) {
                nm_buf_push(&t, x->msgs[i].content, strlen(x->msgs[i].content));
                nm_buf_push(&t, "\n", 1);
            }
        }
        nm_buf_push(&t, resp, strlen(resp));
        size_t n = t.len;
        while (n > 0 && (t.data[n - 1] == '\n' || t.data[n - 1] == ' ' || t.data[n - 1] == '\r' || t.data[n - 1] == '\t'))
            n--;
        size_t s = 0;
        while (s < n && (t.data[s] == '\n' || t.data[s] == '\r')) s++;
        bool prev_nl = false;
        for (size_t i = s; i < n; i++) {
            char ch = (char)t.data[i];
            if (ch == '\r') continue;
            if (ch == '\n') {
                if (prev_nl) continue;
                /* a line of only spaces counts as blank too */
                size_t k = i + 1;
                while (k < n && (t.data[k] == ' ' || t.data[k] == '\t' || t.data[k] == '\r')) k++;
                if (k < n && t.data[k] == '\n') {
                    prev_nl = true;
                    nm_buf_push(b, "\n", 1);
                    i = k - 1;
                    continue;
                }
                prev_nl = true;
            } else {
                prev_nl = false;
            }
            nm_buf_push(b, &ch, 1);
        }
        nm_buf_push(b, "\n\n", 2);
        nm_buf_deinit(&t);
        return;
    }
    /* the conversation, then the response as the assistant's turn */
    const nm_chat_msg user_raw = {"user", x->msgs[0].content};
    const nm_chat_msg *m = x->raw ? &user_raw : x->msgs;
    size_t n = x->raw ? 1 : x->n_msgs;
    if (fmt == CF_MESSAGES || fmt == CF_SHAREGPT) {
        bool sg = fmt == CF_SHAREGPT;
        nm_buf_printf(b, sg ? "{\"conversations\": [" : "{\"messages\": [");
        for (size_t i = 0; i <= n; i++) {
            const char *role = i < n ? m[i].role : "assistant", *content = i < n ? m[i].content : resp;
            if (sg) role = !strcmp(role, "user") ? "human" : !strcmp(role, "assistant") ? "gpt" : role;
            nm_buf_printf(b, "%s{\"%s\": ", i ? ", " : "", sg ? "from" : "role");
            json_s(b, role);
            nm_buf_printf(b, ", \"%s\": ", sg ? "value" : "content");
            json_s(b, content);
            nm_buf_push(b, "}", 1);
        }
        nm_buf_printf(b, "], ");
    } else { /* alpaca: the last user message is the instruction, earlier turns the history */
        size_t last_user = n;
        for (size_t i = 0; i < n; i++)
            if (!strcmp(m[i].role, "user")) last_user = i;
        nm_buf_printf(b, "{\"instruction\": ");
        json_s(b, last_user < n ? m[last_user].content : "");
        nm_buf_printf(b, ", \"input\": \"\", \"output\": ");
        json_s(b, resp);
        for (size_t i = 0; i < n; i++)
            if (!strcmp(m[i].role, "system")) {
                nm_buf_printf(b, ", \"system\": ");
                json_s(b, m[i].content);
                break;
            }
        bool any = false;
        for (size_t i = 0; i + 1 < last_user && i + 1 < n; i++) {
            if (strcmp(m[i].role, "user") || strcmp(m[i + 1].role, "assistant")) continue;
            nm_buf_printf(b, any ? ", [" : ", \"history\": [[");
            json_s(b, m[i].content);
            nm_buf_push(b, ", ", 2);
            json_s(b, m[i + 1].content);
            nm_buf_push(b, "]", 1);
            any = true;
        }
        if (any) nm_buf_push(b, "]", 1);
        nm_buf_printf(b, ", ");
    }
    write_meta(c, x, b);
    nm_buf_printf(b, "}\n");
}

nm_status nm_cands_write(const nm_cands *c, const char *path, const char *format, bool kept_only, nm_err *err) {
    int fmt = parse_format(format ? format : "messages");
    if (fmt < 0)
        return nm_err_set(err, NM_ERR_ARG, "unknown output format '%s' (messages, sharegpt, alpaca, text, candidates)",
                          format);
    nm_atomic_file af;
    nm_status st = nm_atomic_open(&af, path, err);
    if (st) return st;
    nm_buf b;
    nm_buf_init(&b);
    for (size_t i = 0; i < c->n && !st; i++) {
        const nm_cand *x = &c->c[i];
        if (kept_only && !x->kept) continue;
        if (!x->response && fmt != CF_CANDIDATES) continue;
        b.len = 0;
        write_one(c, x, fmt, &b);
        if (b.oom)
            st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        else
            st = nm_atomic_write(&af, b.data, b.len, err);
    }
    nm_buf_deinit(&b);
    if (st) {
        nm_atomic_abort(&af);
        return st;
    }
    return nm_atomic_commit(&af, err);
}
