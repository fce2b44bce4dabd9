/*
 * detok.c - from ids back to text: the piece of each token (precomputed at
 * load), whole-sequence detokenization and the streaming detokenizer.
 *
 * Pieces follow llama.cpp's token_to_piece: SentencePiece tokens have their
 * U+2581 marks turned into spaces and byte tokens <0xNN> give their byte;
 * byte-level BPE tokens are mapped back through the GPT-2 byte alphabet;
 * control and unknown tokens are empty unless `special` is asked for.
 *
 * nm_detokenize returns the exact bytes (invalid UTF-8 included), so that
 * decode(encode(s)) == s.  Unlike llama.cpp it never applies the "clean up
 * tokenization spaces" rewrite (" ," -> ","), which would break that.
 * The stream instead guarantees printable output: it holds back a character
 * split across tokens until it is complete and writes U+FFFD for bytes that
 * can never become valid UTF-8.
 */
#include "text/text.h"

#include <stdlib.h>
#include <string.h>

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The byte of a "<0xNN>" token text, or -1 if the text is not of that form. */
static int byte_token_value(const char *s, size_t n) {
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    int hi = hexval(s[3]), lo = hexval(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* Writes the special=true piece of token id to b. */
static void build_piece(const nm_vocab *v, int32_t id, nm_buf *b) {
    const char *s = v->text + v->text_off[id];
    size_t n = v->text_len[id];
    uint16_t a = v->attr[id];
    if (a & (NM_TOK_UNKNOWN | NM_TOK_CONTROL | NM_TOK_USER_DEFINED)) {
        nm_buf_push(b, s, n);
        return;
    }
    if (a & NM_TOK_NORMAL) {
        if (v->kind == NM_VOCAB_SPM) {
            size_t start = 0;
            for (size_t i = 0; i + 2 < n; i++) {
                if ((uint8_t)s[i] == 0xe2 && (uint8_t)s[i + 1] == 0x96 && (uint8_t)s[i + 2] == 0x81) {
                    nm_buf_push(b, s + start, i - start);
                    nm_buf_push(b, " ", 1);
                    start = i + 3;
                    i += 2;
                }
            }
            nm_buf_push(b, s + start, n - start);
        } else {
            /* characters outside the byte alphabet (or invalid UTF-8 in the
             * token text) are kept as they are rather than dropped */
            for (size_t i = 0; i < n;) {
                uint32_t cp;
                int l = nm_utf8_decode((const uint8_t *)s + i, n - i, &cp);
                int byte = l > 0 ? nm_bpe_cp_to_byte(cp) : -1;
                if (byte >= 0) {
                    uint8_t c = (uint8_t)byte;
                    nm_buf_push(b, &c, 1);
                } else {
                    nm_buf_push(b, s + i, l > 0 ? (size_t)l : 1);
                }
                i += l > 0 ? (size_t)l : 1;
            }
        }
        return;
    }
    if (a & NM_TOK_BYTE) {
        int x = byte_token_value(s, n);
        if (x >= 0) {
            uint8_t c = (uint8_t)x;
            nm_buf_push(b, &c, 1);
        } else {
            nm_buf_push(b, s, n);
        }
    }
    /* unused / undefined tokens: empty, as in llama.cpp */
}

nm_status nm_vocab_build_pieces(nm_vocab *v, nm_err *err) {
    nm_buf b;
    nm_buf_init(&b);
    v->piece_off = nm_calloc((size_t)v->n_tokens, sizeof(uint32_t));
    v->piece_len = nm_calloc((size_t)v->n_tokens, sizeof(uint32_t));
    if (!v->piece_off || !v->piece_len) return nm_err_set(err, NM_ERR_NOMEM, "vocab: out of memory for pieces");
    for (int32_t id = 0; id < v->n_tokens; id++) {
        size_t start = b.len;
        build_piece(v, id, &b);
        if (b.oom || b.len > UINT32_MAX) {
            nm_buf_deinit(&b);
            return nm_err_set(err, NM_ERR_NOMEM, "vocab: out of memory for pieces");
        }
        v->piece_off[id] = (uint32_t)start;
        v->piece_len[id] = (uint32_t)(b.len - start);
    }
    nm_buf_push(&b, "", 1);
    if (b.oom) {
        nm_buf_deinit(&b);
        return nm_err_set(err, NM_ERR_NOMEM, "vocab: out of memory for pieces");
    }
    v->piece = (char *)b.data; /* ownership moves to the vocab */
    return NM_OK;
}

/* The piece of id for the given `special`; empty for ids out of range. */
static const char *piece_of(const nm_vocab *v, int32_t id, bool special, size_t *n) {
    *n = 0;
    if (id < 0 || id >= v->n_tokens) return "";
    if (!special && (v->attr[id] & (NM_TOK_UNKNOWN | NM_TOK_CONTROL))) return "";
    *n = v->piece_len[id];
    return v->piece + v->piece_off[id];
}

/* Tokens after which SentencePiece tokenization added a space: those cut
 * out of the text as special tokens.  Not the unknown token: it mostly comes
 * from characters without a token, where no space was added. */
static bool is_special_attr(const nm_vocab *v, int32_t id) {
    return id >= 0 && id < v->n_tokens && (v->attr[id] & (NM_TOK_CONTROL | NM_TOK_USER_DEFINED));
}

int32_t nm_token_to_piece(const nm_vocab *v, int32_t id, char *buf, size_t cap, bool special) {
    size_t n;
    const char *p = piece_of(v, id, special, &n);
    if (n > cap) return -(int32_t)n;
    if (n) memcpy(buf, p, n);
    return (int32_t)n;
}

nm_status nm_detokenize(const nm_vocab *v, const int32_t *ids, size_t n, bool remove_leading_space, bool special,
                        char **out, size_t *out_len, nm_err *err) {
    if (out) *out = NULL;
    if (out_len) *out_len = 0;
    if (!v || !out || (!ids && n > 0)) return nm_err_set(err, NM_ERR_ARG, "nm_detokenize: invalid arguments");
    /* SentencePiece adds a space at the text start and after every special
     * token (tokenize.c); the same places lose one here */
    bool strip_rule = remove_leading_space && v->kind == NM_VOCAB_SPM && v->add_space_prefix;
    bool strip = strip_rule;
    nm_buf b;
    nm_buf_init(&b);
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *p = piece_of(v, ids[i], special, &len);
        if (is_special_attr(v, ids[i])) {
            nm_buf_push(&b, p, len);
            strip = strip_rule;
            continue;
        }
        if (len == 0) continue;
        if (strip && p[0] == ' ') {
            p++;
            len--;
        }
        strip = false;
        nm_buf_push(&b, p, len);
    }
    nm_buf_push(&b, "", 1);
    if (b.oom) {
        nm_buf_deinit(&b);
        return nm_err_set(err, NM_ERR_NOMEM, "detokenize: out of memory");
    }
    *out = (char *)b.data;
    if (out_len) *out_len = b.len - 1;
    return NM_OK;
}

/* ---- streaming ---- */

void nm_detok_stream_init(nm_detok_stream *s, const nm_vocab *v, bool special) {
    memset(s, 0, sizeof *s);
    s->vocab = v;
    s->special = special;
    s->first = true;
}

static const char REPLACEMENT[3] = {'\xef', '\xbf', '\xbd'};

/* Validates a[0..n): copies valid characters, U+FFFD for each invalid byte,
 * up to `end` (the rest is an incomplete character to hold back).  With
 * out == NULL only counts. */
static size_t sanitize(const uint8_t *a, size_t end, char *out) {
    size_t w = 0;
    for (size_t i = 0; i < end;) {
        uint32_t cp;
        int l = nm_utf8_decode(a + i, end - i, &cp);
        if (l > 0) {
            if (out) memcpy(out + w, a + i, (size_t)l);
            w += (size_t)l;
            i += (size_t)l;
        } else {
            if (out) memcpy(out + w, REPLACEMENT, 3);
            w += 3;
            i++;
        }
    }
    return w;
}

int32_t nm_detok_stream_push(nm_detok_stream *s, int32_t id, char *buf, size_t cap) {
    const nm_vocab *v = s->vocab;
    size_t len;
    const char *p = piece_of(v, id, s->special, &len);
    bool special_tok = is_special_attr(v, id);
    bool spm_prefix = v->kind == NM_VOCAB_SPM && v->add_space_prefix;
    bool has_text = len > 0; /* even if the space below was all of it */
    if (!special_tok && len > 0 && s->first && spm_prefix && p[0] == ' ') {
        p++;
        len--;
    }
    if (len > (size_t)INT32_MAX / 4) return INT32_MIN;

    /* pending (< 4 bytes) + piece, then split off an incomplete tail */
    size_t total = s->n_pending + len;
    uint8_t small[64];
    uint8_t *a = total <= sizeof small ? small : malloc(total);
    if (!a) return INT32_MIN;
    memcpy(a, s->pending, s->n_pending);
    if (len) memcpy(a + s->n_pending, p, len);
    size_t end = nm_utf8_complete_prefix(a, total);
    size_t need = sanitize(a, end, NULL);
    if (need > cap) {
        if (a != small) free(a);
        return -(int32_t)need;
    }
    sanitize(a, end, buf);
    s->n_pending = total - end;
    memcpy(s->pending, a + end, s->n_pending);
    if (a != small) free(a);
    if (special_tok) s->first = spm_prefix ? true : s->first;
    else if (has_text) s->first = false;
    return (int32_t)need;
}

int32_t nm_detok_stream_flush(nm_detok_stream *s, char *buf, size_t cap) {
    if (s->n_pending == 0) return 0;
    if (cap < 3) return -3;
    memcpy(buf, REPLACEMENT, 3);
    s->n_pending = 0;
    return 3;
}
