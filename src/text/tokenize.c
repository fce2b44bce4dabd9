/*
 * tokenize.c - nm_tokenize: splits special tokens out of the text, then
 * hands every remaining piece of raw text to the vocabulary's tokenizer
 * (spm.c or bpe.c), adding BOS/EOS as the vocabulary's flags say.
 *
 * Special tokens (llama.cpp's tokenizer_st_partition): user-defined tokens
 * are always cut out of the text; control and unknown tokens only when
 * parse_special is set, otherwise their texts are ordinary text.  Longer
 * tokens are cut first.  SentencePiece vocabularies then add the leading
 * space (add_space_prefix) to the text at the start and after every special
 * token, and write spaces as U+2581 before merging.
 */
#include "text/text.h"

#include <stdlib.h>
#include <string.h>

typedef struct frag {
    int32_t token; /* -1: raw text [off, off + len) */
    size_t off, len;
} frag;

typedef struct frags {
    frag *v;
    size_t n, cap;
    bool oom;
} frags;

static void frag_push(frags *f, int32_t token, size_t off, size_t len) {
    if (f->oom) return;
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        frag *p = cap > SIZE_MAX / sizeof(frag) ? NULL : realloc(f->v, cap * sizeof(frag));
        if (!p) {
            f->oom = true;
            return;
        }
        f->v = p;
        f->cap = cap;
    }
    f->v[f->n++] = (frag){token, off, len};
}

/* C-locale isspace, as llama.cpp uses for the LSTRIP/RSTRIP rules */
static bool is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* Cuts every occurrence of token id out of the raw fragments of *in. */
static void split_on(const nm_vocab *v, int32_t id, const char *text, const frags *in, frags *out) {
    const char *tok = v->text + v->text_off[id];
    size_t tlen = v->text_len[id];
    uint16_t attr = v->attr[id];
    out->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        frag f = in->v[i];
        if (f.token >= 0 || f.len < tlen) {
            frag_push(out, f.token, f.off, f.len);
            continue;
        }
        size_t off = f.off, len = f.len;
        while (len > 0) {
            const char *m = memmem(text + off, len, tok, tlen);
            if (!m) {
                frag_push(out, -1, off, len);
                break;
            }
            size_t at = (size_t)(m - text);
            size_t left = at - off;
            if (attr & NM_TOK_LSTRIP)
                while (left > 0 && is_space(text[off + left - 1])) left--;
            if (left > 0) frag_push(out, -1, off, left);
            frag_push(out, id, 0, 0);
            size_t end = off + len;
            off = at + tlen;
            if (attr & NM_TOK_RSTRIP)
                while (off < end && is_space(text[off])) off++;
            len = end - off;
        }
    }
}

/* Appends text with ' ' written as U+2581 (and one more in front if asked). */
static void escape_spaces(nm_buf *b, const char *text, size_t len, bool prefix) {
    static const char MARK[3] = {'\xe2', '\x96', '\x81'};
    b->len = 0;
    if (prefix) nm_buf_push(b, MARK, 3);
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] != ' ') continue;
        nm_buf_push(b, text + start, i - start);
        nm_buf_push(b, MARK, 3);
        start = i + 1;
    }
    nm_buf_push(b, text + start, len - start);
}

nm_status nm_tokenize(const nm_vocab *v, const char *text, size_t len, bool add_special, bool parse_special,
                      int32_t **ids, size_t *n_ids, nm_err *err) {
    if (ids) *ids = NULL;
    if (n_ids) *n_ids = 0;
    if (!v || !ids || !n_ids || (!text && len > 0)) return nm_err_set(err, NM_ERR_ARG, "nm_tokenize: invalid arguments");

    frags a = {0}, b = {0};
    nm_ids out = {0};
    nm_buf esc;
    nm_buf_init(&esc);
    nm_status st = NM_OK;

    if (len > 0) frag_push(&a, -1, 0, len);
    for (int32_t k = 0; k < v->n_special && a.n > 0; k++) {
        int32_t id = v->special[k];
        if (!parse_special && (v->attr[id] & (NM_TOK_CONTROL | NM_TOK_UNKNOWN))) continue;
        split_on(v, id, text, &a, &b);
        frags t = a;
        a = b;
        b = t;
        if (a.oom || b.oom) break;
    }
    if (a.oom || b.oom) {
        st = nm_err_set(err, NM_ERR_NOMEM, "tokenize: out of memory");
        goto done;
    }

    if (add_special && v->add_bos) nm_ids_push(&out, v->bos);
    bool prev_special = true; /* the text start counts as "after a special token" */
    for (size_t i = 0; i < a.n && st == NM_OK; i++) {
        frag f = a.v[i];
        if (f.token >= 0) {
            nm_ids_push(&out, f.token);
            prev_special = true;
            continue;
        }
        if (v->kind == NM_VOCAB_SPM) {
            escape_spaces(&esc, text + f.off, f.len, v->add_space_prefix && prev_special);
            if (esc.oom) {
                st = nm_err_set(err, NM_ERR_NOMEM, "tokenize: out of memory");
                break;
            }
            st = nm_spm_tokenize(v, (const char *)esc.data, esc.len, &out, err);
        } else {
            st = nm_bpe_tokenize(v, text + f.off, f.len, &out, err);
        }
        prev_special = false;
    }
    if (st == NM_OK && add_special && v->add_eos) nm_ids_push(&out, v->eos);
    if (st == NM_OK && out.oom) st = nm_err_set(err, NM_ERR_NOMEM, "tokenize: out of memory");
    if (st == NM_OK && !out.v) {
        out.v = malloc(sizeof(int32_t)); /* a valid pointer even for no ids */
        if (!out.v) st = nm_err_set(err, NM_ERR_NOMEM, "tokenize: out of memory");
    }
done:
    free(a.v);
    free(b.v);
    nm_buf_deinit(&esc);
    if (st != NM_OK) {
        free(out.v);
        return st;
    }
    *ids = out.v;
    *n_ids = out.n;
    return NM_OK;
}
