/* docs.c - documents for cleaning: lines, paragraphs or JSON records of one
 * or several files, each with its position for reports and its raw bytes to
 * write back.
 *
 * Files are read whole and kept: a line or paragraph document points into
 * its file's buffer, so a million short documents cost their text once plus
 * one nm_doc each.  JSON records need their strings extracted, which go to
 * an arena. */
#include "curate/curate.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct doc_file {
    char *path;
    char *buf; /* the file, NUL-terminated */
    size_t len;
    nm_doc_split split;
} doc_file;

struct nm_docset {
    nm_doc *docs;
    size_t n, cap;
    doc_file *files;
    int32_t n_files, cap_files;
    nm_arena arena;
};

nm_docset *nm_docset_new(void) { return nm_calloc(1, sizeof(nm_docset)); }

void nm_docset_free(nm_docset *s) {
    if (!s) return;
    for (int32_t i = 0; i < s->n_files; i++) {
        free(s->files[i].path);
        free(s->files[i].buf);
    }
    free(s->files);
    free(s->docs);
    nm_arena_free(&s->arena);
    free(s);
}

size_t nm_docset_size(const nm_docset *s) { return s->n; }
const nm_doc *nm_docset_doc(const nm_docset *s, size_t i) { return i < s->n ? &s->docs[i] : NULL; }
int32_t nm_docset_n_files(const nm_docset *s) { return s->n_files; }
const char *nm_docset_file(const nm_docset *s, int32_t f) {
    return f >= 0 && f < s->n_files ? s->files[f].path : "(text)";
}
nm_doc_split nm_docset_file_split(const nm_docset *s, int32_t f) {
    return f >= 0 && f < s->n_files ? s->files[f].split : NM_DOC_AUTO;
}

size_t nm_docset_bytes(const nm_docset *s) {
    size_t b = s->cap * sizeof *s->docs + s->arena.used_bytes;
    for (int32_t i = 0; i < s->n_files; i++) b += s->files[i].len + 1;
    return b;
}

static bool push_doc(nm_docset *s, const nm_doc *d) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        nm_doc *v = realloc(s->docs, cap * sizeof *v);
        if (!v) return false;
        s->docs = v;
        s->cap = cap;
    }
    s->docs[s->n++] = *d;
    return true;
}

nm_status nm_docset_add_text(nm_docset *s, const char *text, size_t len, nm_err *err) {
    char *t = nm_arena_strndup(&s->arena, text, len);
    nm_doc d = {t, len, t, len, -1, 0, (int64_t)s->n + 1};
    if (!t || !push_doc(s, &d)) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for documents");
    return NM_OK;
}

/* ---- lines and paragraphs ---- */

static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return false;
    return true;
}

static nm_status split_lines(nm_docset *s, int32_t f, bool paragraphs, nm_err *err) {
    const doc_file *df = &s->files[f];
    const char *t = df->buf;
    size_t n = df->len, i = 0;
    if (n >= 3 && !memcmp(t, "\xef\xbb\xbf", 3)) i = 3;
    int64_t line = 0, rec = 0;
    /* the paragraph in progress: [p0, p1) starting at line pl */
    size_t p0 = 0, p1 = 0;
    int64_t pl = 0;
    bool in_par = false;
    while (i < n) {
        const char *nl = memchr(t + i, '\n', n - i);
        size_t e = nl ? (size_t)(nl - t) : n;
        size_t te = e > i && t[e - 1] == '\r' ? e - 1 : e;
        line++;
        bool is_blank = blank(t + i, te - i);
        if (!paragraphs && !is_blank) {
            nm_doc d = {t + i, te - i, t + i, te - i, f, line, ++rec};
            if (!push_doc(s, &d)) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for documents");
        } else if (paragraphs && !is_blank) {
            if (!in_par) {
                in_par = true;
                p0 = i;
                pl = line;
            }
            p1 = te;
        } else if (paragraphs && in_par) {
            in_par = false;
            nm_doc d = {t + p0, p1 - p0, t + p0, p1 - p0, f, pl, ++rec};
            if (!push_doc(s, &d)) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for documents");
        }
        i = e + 1;
    }
    if (in_par) {
        nm_doc d = {t + p0, p1 - p0, t + p0, p1 - p0, f, pl, ++rec};
        if (!push_doc(s, &d)) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for documents");
    }
    return NM_OK;
}

/* ---- JSON records ---- */

static bool skipped_key(const char *k) {
    static const char *const skip[] = {"role", "from", "id", "label", "answerKey", "meta", "scores", "seed", "dropped_by"};
    for (size_t i = 0; i < sizeof skip / sizeof skip[0]; i++)
        if (!strcmp(k, skip[i])) return true;
    return false;
}

/* Every string under v, in order, joined by newlines. */
static void collect_strings(json_t *v, nm_buf *b, int depth) {
    if (depth > 64) return; /* jansson limits nesting too; belt and braces */
    if (json_is_string(v)) {
        if (b->len) nm_buf_push(b, "\n", 1);
        nm_buf_push(b, json_string_value(v), json_string_length(v));
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) collect_strings(e, b, depth + 1);
    } else if (json_is_object(v)) {
        const char *k;
        json_t *e;
        json_object_foreach(v, k, e) {
            if (!skipped_key(k)) collect_strings(e, b, depth + 1);
        }
    }
}

static nm_status add_record(nm_docset *s, int32_t f, json_t *rec, const char *raw, size_t raw_len, bool dump,
                            const char *field, int64_t line, int64_t recno, nm_buf *tmp, nm_err *err) {
    const char *path = s->files[f].path;
    if (field) {
        json_t *v = json_is_object(rec) ? json_object_get(rec, field) : NULL;
        if (!v)
            return nm_err_set(err, NM_ERR_FORMAT, "%s:%lld: record %lld has no field \"%s\"", path, (long long)line,
                              (long long)recno, field);
        tmp->len = 0;
        collect_strings(v, tmp, 0);
    } else {
        tmp->len = 0;
        collect_strings(rec, tmp, 0);
    }
    if (tmp->oom) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for documents");
    char *text = nm_arena_strndup(&s->arena, tmp->len ? (const char *)tmp->data : "", tmp->len);
    char *rawc = NULL;
    if (dump) {
        char *j = json_dumps(rec, JSON_COMPACT | JSON_ENCODE_ANY);
        if (j) {
            raw_len = strlen(j);
            rawc = nm_arena_strndup(&s->arena, j, raw_len);
            free(j);
        }
        raw = rawc;
    }
    nm_doc d = {text, tmp->len, raw, raw_len, f, line, recno};
    if (!text || !raw || !push_doc(s, &d)) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for documents");
    return NM_OK;
}

static nm_status split_json(nm_docset *s, int32_t f, const char *field, nm_err *err) {
    const doc_file *df = &s->files[f];
    const char *t = df->buf;
    size_t n = df->len, p = 0;
    if (n >= 3 && !memcmp(t, "\xef\xbb\xbf", 3)) p = 3;
    size_t q = p;
    while (q < n && (t[q] == ' ' || t[q] == '\n' || t[q] == '\r' || t[q] == '\t')) q++;
    nm_buf tmp;
    nm_buf_init(&tmp);
    nm_status st = NM_OK;
    if (q < n && t[q] == '[') { /* one JSON array: parsed whole */
        json_error_t je;
        json_t *arr = json_loadb(t + p, n - p, JSON_REJECT_DUPLICATES, &je);
        if (!arr) {
            nm_buf_deinit(&tmp);
            return nm_err_set(err, NM_ERR_FORMAT, "%s:%d: invalid JSON: %s", df->path, je.line, je.text);
        }
        size_t i;
        json_t *rec;
        json_array_foreach(arr, i, rec) {
            if ((st = add_record(s, f, rec, NULL, 0, true, field, 0, (int64_t)i + 1, &tmp, err))) break;
        }
        json_decref(arr);
        nm_buf_deinit(&tmp);
        return st;
    }
    int64_t line = 0, recno = 0;
    while (p < n && !st) {
        const char *nl = memchr(t + p, '\n', n - p);
        size_t e = nl ? (size_t)(nl - t) : n;
        line++;
        size_t te = e;
        if (te > p && t[te - 1] == '\r') te--;
        if (!blank(t + p, te - p)) {
            recno++;
            json_error_t je;
            json_t *rec = json_loadb(t + p, te - p, JSON_REJECT_DUPLICATES, &je);
            if (!rec) {
                st = nm_err_set(err, NM_ERR_FORMAT, "%s:%lld: invalid JSON: %s", df->path, (long long)line, je.text);
                break;
            }
            st = add_record(s, f, rec, t + p, te - p, false, field, line, recno, &tmp, err);
            json_decref(rec);
        }
        p = e + 1;
    }
    nm_buf_deinit(&tmp);
    return st;
}

nm_status nm_docset_add_file(nm_docset *s, const char *path, nm_doc_split split, const char *field, nm_err *err) {
    if (s->n_files == INT32_MAX) return nm_err_set(err, NM_ERR_RANGE, "too many files");
    if (s->n_files == s->cap_files) {
        int32_t cap = s->cap_files ? s->cap_files * 2 : 8;
        doc_file *v = realloc(s->files, (size_t)cap * sizeof *v);
        if (!v) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        s->files = v;
        s->cap_files = cap;
    }
    doc_file df = {0};
    nm_status st = nm_read_file(path, &df.buf, &df.len, err);
    if (st) return st;
    df.path = nm_strdup(path);
    if (!df.path) {
        free(df.buf);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    if (split == NM_DOC_AUTO) {
        const char *dot = strrchr(path, '.');
        split = dot && (!strcasecmp(dot, ".json") || !strcasecmp(dot, ".jsonl")) ? NM_DOC_JSON : NM_DOC_LINES;
    }
    df.split = split;
    int32_t f = s->n_files++;
    s->files[f] = df;
    size_t before = s->n;
    switch (split) {
    case NM_DOC_LINES: st = split_lines(s, f, false, err); break;
    case NM_DOC_PARAGRAPHS: st = split_lines(s, f, true, err); break;
    case NM_DOC_JSON: st = split_json(s, f, field, err); break;
    default: {
        nm_doc d = {df.buf, df.len, df.buf, df.len, f, 1, 1};
        if (!push_doc(s, &d)) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory for documents");
    }
    }
    if (st) s->n = before; /* the file stays listed (its buffer is freed with the set) */
    return st;
}

nm_status nm_text_normalize(const char *text, size_t len, char **out, size_t *out_len, nm_err *err) {
    nm_buf b;
    nm_buf_init(&b);
    nm_cu_normalize(text, len, &b);
    nm_buf_push(&b, "", 1);
    if (b.oom) {
        nm_buf_deinit(&b);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    *out = (char *)b.data;
    if (out_len) *out_len = b.len - 1;
    return NM_OK;
}
