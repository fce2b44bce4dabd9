/*
 * vocab.c - builds an nm_vocab from the tokenizer.ggml.* keys of a GGUF
 * file and answers questions about it (special ids, flags, token texts).
 *
 * Everything the tokenizer needs is copied out of the file, so the nm_gguf
 * may be closed afterwards.  The metadata is hostile input: array types and
 * lengths are checked, special ids outside the vocabulary are ignored with
 * a warning (as llama.cpp does), missing merges are an error.
 *
 * Defaults and the auto-detection of end-of-turn tokens follow llama.cpp's
 * llama_vocab::impl::load, so a model behaves the same in both.
 */
#include "text/text.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_PRE "tokenizer.ggml.pre"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_MERGES "tokenizer.ggml.merges"

/* tokenizer.ggml.token_type values (llama.cpp's llama_token_type) */
enum { TT_UNDEFINED = 0, TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5, TT_BYTE = 6 };

static uint16_t attr_from_type(int32_t t) {
    switch (t) {
    case TT_NORMAL: return NM_TOK_NORMAL;
    case TT_UNKNOWN: return NM_TOK_UNKNOWN;
    case TT_CONTROL: return NM_TOK_CONTROL;
    case TT_USER_DEFINED: return NM_TOK_USER_DEFINED;
    case TT_UNUSED: return NM_TOK_UNUSED;
    case TT_BYTE: return NM_TOK_BYTE;
    default: return NM_TOK_UNDEFINED;
    }
}

void nm_vocab_free(nm_vocab *v) {
    if (!v) return;
    free(v->text);
    free(v->text_off);
    free(v->text_len);
    free(v->score);
    free(v->prio);
    free(v->attr);
    nm_strtab_deinit(&v->tok_tab);
    free(v->piece);
    free(v->piece_off);
    free(v->piece_len);
    free(v->eog);
    free(v->special);
    nm_symtab_free(v);
    nm_pretok_free(v->pretok);
    free(v);
}

static const char *src_name(const nm_gguf *g) {
    const char *p = nm_gguf_path(g);
    return p ? p : "gguf";
}

/* Finds an array key of the wanted element type; -1 if absent. */
static nm_status find_array(const nm_gguf *g, const char *key, nm_gguf_vtype et1, nm_gguf_vtype et2, int64_t *idx,
                            nm_err *err) {
    *idx = nm_gguf_find_key(g, key);
    if (*idx < 0) return NM_OK;
    if (nm_gguf_kv_type(g, *idx) != NM_GGUF_ARRAY ||
        (nm_gguf_arr_type(g, *idx) != et1 && nm_gguf_arr_type(g, *idx) != et2))
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %s has the wrong type (expected an array of %s)", src_name(g), key,
                          et1 == NM_GGUF_STRING ? "strings" : et1 == NM_GGUF_INT32 ? "int32" : "float32");
    return NM_OK;
}

static nm_status load_tokens(nm_vocab *v, const nm_gguf *g, const nm_log *log, nm_err *err) {
    int64_t ti;
    nm_status st = find_array(g, KEY_TOKENS, NM_GGUF_STRING, NM_GGUF_STRING, &ti, err);
    if (st) return st;
    if (ti < 0) return nm_err_set(err, NM_ERR_FORMAT, "%s: no %s: the file has no vocabulary", src_name(g), KEY_TOKENS);
    uint64_t n = nm_gguf_arr_n(g, ti);
    if (n == 0) return nm_err_set(err, NM_ERR_FORMAT, "%s: %s is empty", src_name(g), KEY_TOKENS);
    if (n >= INT32_MAX) return nm_err_set(err, NM_ERR_RANGE, "%s: %llu tokens is too many", src_name(g), (unsigned long long)n);
    v->n_tokens = (int32_t)n;

    int64_t si, yi;
    if ((st = find_array(g, KEY_SCORES, NM_GGUF_FLOAT32, NM_GGUF_INT32, &si, err))) return st;
    if ((st = find_array(g, KEY_TYPES, NM_GGUF_INT32, NM_GGUF_INT32, &yi, err))) return st;
    if (si >= 0 && nm_gguf_arr_n(g, si) < n)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %s has %llu entries for %llu tokens", src_name(g), KEY_SCORES,
                          (unsigned long long)nm_gguf_arr_n(g, si), (unsigned long long)n);
    if (yi >= 0 && nm_gguf_arr_n(g, yi) < n)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %s has %llu entries for %llu tokens", src_name(g), KEY_TYPES,
                          (unsigned long long)nm_gguf_arr_n(g, yi), (unsigned long long)n);

    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        nm_str s = nm_gguf_arr_str(g, ti, i);
        if (!nm_add_ok(total, s.len + 1, &total) || total > UINT32_MAX)
            return nm_err_set(err, NM_ERR_RANGE, "%s: the token texts add up to more than 4 GiB", src_name(g));
    }
    v->text = malloc(total);
    v->text_off = nm_calloc(n, sizeof(uint32_t));
    v->text_len = nm_calloc(n, sizeof(uint32_t));
    v->score = nm_calloc(n, sizeof(float));
    v->attr = nm_calloc(n, sizeof(uint16_t));
    v->eog = nm_calloc(n, 1);
    if (!v->text || !v->text_off || !v->text_len || !v->score || !v->attr || !v->eog || !nm_strtab_init(&v->tok_tab, n))
        return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory for %llu tokens", src_name(g), (unsigned long long)n);

    const uint8_t *scores = si >= 0 ? nm_gguf_arr_data(g, si) : NULL;
    bool iscores = si >= 0 && nm_gguf_arr_type(g, si) == NM_GGUF_INT32;
    const uint8_t *types = yi >= 0 ? nm_gguf_arr_data(g, yi) : NULL;
    uint32_t off = 0;
    int64_t n_dup = 0, n_empty = 0, first_dup = -1;
    for (uint64_t i = 0; i < n; i++) {
        nm_str s = nm_gguf_arr_str(g, ti, i);
        memcpy(v->text + off, s.ptr, s.len);
        v->text[off + s.len] = 0;
        v->text_off[i] = off;
        v->text_len[i] = (uint32_t)s.len;
        off += (uint32_t)s.len + 1;
        if (scores) {
            uint32_t bits = nm_rd_u32(scores + 4 * i);
            if (iscores) {
                v->score[i] = (float)(int32_t)bits;
            } else {
                memcpy(&v->score[i], &bits, 4);
            }
        }
        v->attr[i] = types ? attr_from_type((int32_t)nm_rd_u32(types + 4 * i)) : NM_TOK_NORMAL;
        if (s.len == 0) {
            n_empty++; /* an empty token can never be produced from text */
            continue;
        }
        uint64_t h = nm_text_hash(s.ptr, s.len) & v->tok_tab.mask;
        bool dup = false;
        for (;;) {
            int32_t o = v->tok_tab.slots[h];
            if (o < 0) break;
            if (v->text_len[o] == s.len && memcmp(v->text + v->text_off[o], s.ptr, s.len) == 0) {
                dup = true;
                break;
            }
            h = (h + 1) & v->tok_tab.mask;
        }
        if (dup) {
            if (first_dup < 0) first_dup = (int64_t)i;
            n_dup++;
        } else {
            v->tok_tab.slots[h] = (int32_t)i;
        }
    }
    if (n_empty) nm_logf(log, NM_LOG_WARN, "%s: %lld empty token texts in the vocabulary", src_name(g), (long long)n_empty);
    if (n_dup)
        nm_logf(log, NM_LOG_WARN, "%s: %lld duplicate token texts (first at id %lld): text maps to the lowest id",
                src_name(g), (long long)n_dup, (long long)first_dup);
    return NM_OK;
}

/* Reads an optional bool key; a key of another type is an error. */
static nm_status opt_bool(const nm_gguf *g, const char *key, bool *v, nm_err *err) {
    if (nm_gguf_find_key(g, key) < 0) return NM_OK;
    nm_err e2 = {0};
    if (nm_gguf_get_bool(g, key, v, &e2))
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %s is not a bool", src_name(g), key);
    return NM_OK;
}

/* An optional special-token id.  -1 / 0xFFFFFFFF mean "none" (llama2.c
 * conversions write that); other values outside the vocabulary are ignored
 * with a warning, keeping the default, as llama.cpp does. */
static nm_status opt_id(nm_vocab *v, const nm_gguf *g, const char *key, int32_t *id, const nm_log *log, nm_err *err) {
    if (*id >= v->n_tokens) *id = -1;
    if (nm_gguf_find_key(g, key) < 0) return NM_OK;
    int64_t x;
    nm_err e2 = {0};
    if (nm_gguf_get_i64(g, key, &x, &e2)) return nm_err_set(err, NM_ERR_FORMAT, "%s: %s is not an integer", src_name(g), key);
    if (x == -1 || x == 0xffffffffLL) {
        *id = -1;
    } else if (x < 0 || x >= v->n_tokens) {
        nm_logf(log, NM_LOG_WARN, "%s: %s = %lld is outside the vocabulary (%d tokens): using %d", src_name(g), key,
                (long long)x, v->n_tokens, *id);
    } else {
        *id = (int32_t)x;
    }
    return NM_OK;
}

static bool text_is(const nm_vocab *v, int32_t id, const char *s) {
    size_t n = strlen(s);
    return v->text_len[id] == n && memcmp(v->text + v->text_off[id], s, n) == 0;
}

static bool text_in(const nm_vocab *v, int32_t id, const char *const *list) {
    for (; *list; list++)
        if (text_is(v, id, *list)) return true;
    return false;
}

/* Tokens llama.cpp recognises by their text (it has no metadata for them). */
static const char *const EOT_TEXTS[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                        "<EOT>", "_<EOT>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                        NULL};
static const char *const EOG_TEXTS[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                        "<|eom_id|>", "<EOT>", "_<EOT>", NULL};
static const char *const FIM_EOG_TEXTS[] = {"<|fim_pad|>", "<fim-pad>", "<PAD>", "<|fim_repo|>", "<|repo_name|>",
                                            "<fim-repo>", "<REPO>", "<|file_sep|>", NULL};

/* Index of the token's text in list, or -1. */
static int text_rank(const nm_vocab *v, int32_t id, const char *const *list) {
    for (int i = 0; list[i]; i++)
        if (text_is(v, id, list[i])) return i;
    return -1;
}

static void find_eog(nm_vocab *v, const nm_log *log) {
    /* llama.cpp takes whichever EOT text its hash map yields first; nomoat
     * takes the earliest in EOT_TEXTS, so "<|im_end|>" or "<|end|>" wins over
     * "<|endoftext|>" when a vocabulary has both */
    int eot_rank = INT32_MAX;
    bool eot_given = v->eot >= 0;
    for (int32_t id = 0; id < v->n_tokens; id++) {
        int r = eot_given ? -1 : text_rank(v, id, EOT_TEXTS);
        bool is_eot = r >= 0;
        bool is_eom = v->eom < 0 && text_is(v, id, "<|eom_id|>");
        bool is_eog = text_in(v, id, EOG_TEXTS) || text_in(v, id, FIM_EOG_TEXTS);
        if (is_eot && r < eot_rank) {
            eot_rank = r;
            v->eot = id;
        }
        if (is_eom) v->eom = id;
        if ((is_eot || is_eom || is_eog) && !(v->attr[id] & NM_TOK_CONTROL)) {
            nm_logf(log, NM_LOG_DEBUG, "token %d '%s' looks like a control token: treated as one", id,
                    v->text + v->text_off[id]);
            v->attr[id] |= NM_TOK_CONTROL;
        }
        if (is_eog) v->eog[id] = 1;
    }
    if (v->eos >= 0) v->eog[v->eos] = 1;
    if (v->eot >= 0) v->eog[v->eot] = 1;
    if (v->eom >= 0) v->eog[v->eom] = 1;
}

static int cmp_special(const void *a, const void *b, void *vv) {
    const nm_vocab *v = vv;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (v->text_len[x] != v->text_len[y]) return v->text_len[x] > v->text_len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

static nm_status build_special(nm_vocab *v, const nm_gguf *g, nm_err *err) {
    int32_t n = 0;
    for (int32_t id = 0; id < v->n_tokens; id++)
        if ((v->attr[id] & (NM_TOK_CONTROL | NM_TOK_USER_DEFINED | NM_TOK_UNKNOWN)) && v->text_len[id] > 0) n++;
    v->special = nm_calloc((size_t)n, sizeof(int32_t));
    if (!v->special) return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory", src_name(g));
    v->n_special = 0;
    for (int32_t id = 0; id < v->n_tokens; id++)
        if ((v->attr[id] & (NM_TOK_CONTROL | NM_TOK_USER_DEFINED | NM_TOK_UNKNOWN)) && v->text_len[id] > 0)
            v->special[v->n_special++] = id;
    /* longest first, so "<|im_end|>" is split out before "<|im" could be;
     * ties by id to stay deterministic */
    qsort_r(v->special, (size_t)v->n_special, sizeof(int32_t), cmp_special, v);

    /* llama.cpp's Phi-3 rule: its special tokens eat the spaces that follow */
    nm_str name = {0};
    nm_err e2 = {0};
    if (nm_gguf_get_str(g, "general.name", &name, &e2) == NM_OK) {
        char low[128];
        size_t k = name.len < sizeof low - 1 ? (size_t)name.len : sizeof low - 1;
        for (size_t i = 0; i < k; i++) low[i] = (char)tolower((unsigned char)name.ptr[i]);
        low[k] = 0;
        if (strstr(low, "phi-3") || strstr(low, "phi3")) {
            for (int32_t i = 0; i < v->n_special; i++) v->attr[v->special[i]] |= NM_TOK_RSTRIP;
            for (int32_t id = 0; id < v->n_tokens; id++) {
                if (text_is(v, id, "</s>")) v->attr[id] |= NM_TOK_RSTRIP;
                if (text_is(v, id, "<unk>") || text_is(v, id, "<s>") || text_is(v, id, "<|endoftext|>"))
                    v->attr[id] &= (uint16_t)~NM_TOK_RSTRIP;
            }
        }
    }
    return NM_OK;
}

static int cmp_score_desc(const void *a, const void *b, void *vv) {
    const nm_vocab *v = vv;
    float x = v->score[*(const int32_t *)a], y = v->score[*(const int32_t *)b];
    /* NaN (hostile scores) sorts last, as the weakest score */
    if (x != x) return y != y ? 0 : 1;
    if (y != y) return -1;
    return x > y ? -1 : x < y;
}

/* Length of the character at s[0..n) as the tokenizers cut text: a valid
 * UTF-8 sequence, or one byte. */
static size_t char_len(const char *s, size_t n) {
    uint32_t cp;
    int l = nm_utf8_decode((const uint8_t *)s, n, &cp);
    return l > 0 ? (size_t)l : 1;
}

/* SPM pairs: a symbol is a single character or a token, and two symbols
 * merge when their concatenation is a token.  So every cut of every token
 * into (single character or token) + (single character or token) is a
 * pair, merging into that token with the token's score rank. */
static nm_status build_spm_pairs(nm_vocab *v, nm_err *err) {
    /* count the pairs first: a table sized for them (not for every cut)
     * is smaller, and lookups while tokenizing miss the cache less */
    uint64_t n_pairs = 0;
    for (int32_t id = 0; id < v->n_tokens; id++) {
        const char *t = v->text + v->text_off[id];
        size_t len = v->text_len[id];
        if (len == 0) continue;
        size_t first = char_len(t, len);
        for (size_t k = first; k < len; k += char_len(t + k, len - k)) {
            bool l_ok = k == first || nm_vocab_find(v, t, k) >= 0;
            bool r_ok = k + char_len(t + k, len - k) == len || nm_vocab_find(v, t + k, len - k) >= 0;
            n_pairs += l_ok && r_ok;
        }
    }
    if (!nm_pairs_init(v, n_pairs)) return nm_err_set(err, NM_ERR_NOMEM, "vocab: out of memory for %llu pairs",
                                                      (unsigned long long)n_pairs);
    for (int32_t id = 0; id < v->n_tokens; id++) {
        const char *t = v->text + v->text_off[id];
        size_t len = v->text_len[id];
        if (len == 0 || nm_vocab_find(v, t, len) != id) continue; /* empty, or a duplicate text */
        size_t first = char_len(t, len);
        for (size_t k = first; k < len; k += char_len(t + k, len - k)) {
            /* left part t[0..k), right part t[k..len) */
            int32_t l = k == first ? nm_sym_intern(v, t, k) : nm_vocab_find(v, t, k);
            size_t rc = char_len(t + k, len - k);
            int32_t r = k + rc == len ? nm_sym_intern(v, t + k, len - k) : nm_vocab_find(v, t + k, len - k);
            if ((k == first && l < 0) || (k + rc == len && r < 0))
                return nm_err_set(err, NM_ERR_NOMEM, "vocab: out of memory for symbols");
            if (l >= 0 && r >= 0) nm_pair_insert(v, l, r, id, v->prio[id]);
        }
    }
    for (int c = 0; c < 128; c++) {
        char ch = (char)c;
        v->ascii_sym[c] = nm_sym_find(v, &ch, 1);
    }
    return NM_OK;
}

/* SPM: the heap orders pairs by an integer rank of the score (0 = highest,
 * equal scores share a rank), and the word-by-word shortcut needs to know
 * that no token has U+2581 after another character. */
static nm_status build_spm_tables(nm_vocab *v, nm_err *err) {
    int32_t n = v->n_tokens;
    nm_status st;
    int32_t *order = nm_calloc((size_t)n, sizeof(int32_t));
    v->prio = nm_calloc((size_t)n, sizeof(uint32_t));
    if (!order || !v->prio) {
        free(order);
        return nm_err_set(err, NM_ERR_NOMEM, "vocab: out of memory");
    }
    for (int32_t i = 0; i < n; i++) order[i] = i;
    qsort_r(order, (size_t)n, sizeof(int32_t), cmp_score_desc, v);
    uint32_t rank = 0;
    for (int32_t i = 0; i < n; i++) {
        if (i > 0 && cmp_score_desc(&order[i - 1], &order[i], v) != 0) rank = (uint32_t)i;
        v->prio[order[i]] = rank;
    }
    free(order);

    if ((st = build_spm_pairs(v, err))) return st;

    v->spm_split = true;
    for (int32_t id = 0; id < n && v->spm_split; id++) {
        const uint8_t *t = (const uint8_t *)v->text + v->text_off[id];
        uint32_t len = v->text_len[id], i = 0;
        while (i + 3 <= len && t[i] == 0xe2 && t[i + 1] == 0x96 && t[i + 2] == 0x81) i += 3;
        for (; i + 3 <= len; i++)
            if (t[i] == 0xe2 && t[i + 1] == 0x96 && t[i + 2] == 0x81) v->spm_split = false;
    }
    return NM_OK;
}

static void build_byte_tokens(nm_vocab *v) {
    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        int32_t id = -1;
        if (v->kind == NM_VOCAB_SPM) {
            char buf[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
            id = nm_vocab_find(v, buf, 6);
            if (id < 0) {
                char c = (char)b;
                id = nm_vocab_find(v, &c, 1);
            }
        } else {
            id = nm_vocab_find(v, v->bpe_enc[b], v->bpe_enc_len[b]);
        }
        v->byte_tok[b] = id;
    }
}

static nm_status load_merges(nm_vocab *v, const nm_gguf *g, const nm_log *log, nm_err *err) {
    int64_t mi;
    nm_status st = find_array(g, KEY_MERGES, NM_GGUF_STRING, NM_GGUF_STRING, &mi, err);
    if (st) return st;
    if (mi < 0)
        return nm_err_set(err, NM_ERR_FORMAT, "%s: BPE vocabulary without %s: cannot tokenize", src_name(g), KEY_MERGES);
    uint64_t n = nm_gguf_arr_n(g, mi);
    if (n >= INT32_MAX) return nm_err_set(err, NM_ERR_RANGE, "%s: %llu merges is too many", src_name(g), (unsigned long long)n);
    if (!nm_pairs_init(v, n))
        return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory for %llu merges", src_name(g), (unsigned long long)n);
    nm_buf cat;
    nm_buf_init(&cat);
    int64_t bad = 0, first_bad = -1;
    for (uint64_t i = 0; i < n; i++) {
        nm_str s = nm_gguf_arr_str(g, mi, i);
        /* "left right": the first space after position 0 separates them
         * (a left part may itself be a lone space in some vocabularies) */
        const char *sp = s.len > 1 ? memchr(s.ptr + 1, ' ', s.len - 1) : NULL;
        if (!sp || sp == s.ptr + s.len - 1) {
            if (first_bad < 0) first_bad = (int64_t)i;
            bad++;
            continue;
        }
        size_t ll = (size_t)(sp - s.ptr), rl = s.len - ll - 1;
        cat.len = 0;
        nm_buf_push(&cat, s.ptr, ll);
        nm_buf_push(&cat, sp + 1, rl);
        int32_t l = nm_sym_intern(v, s.ptr, ll);
        int32_t r = l >= 0 ? nm_sym_intern(v, sp + 1, rl) : -1;
        int32_t m = r >= 0 && !cat.oom ? nm_sym_intern(v, (const char *)cat.data, cat.len) : -1;
        if (m < 0) {
            nm_buf_deinit(&cat);
            return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory for the merges", src_name(g));
        }
        /* the first (lowest-ranked) occurrence of a pair wins, as in llama.cpp */
        nm_pair_insert(v, l, r, m, (uint32_t)i);
        v->n_merges++;
    }
    nm_buf_deinit(&cat);
    if (bad)
        nm_logf(log, NM_LOG_WARN, "%s: %lld merges are not of the form 'left right' (first: #%lld): ignored", src_name(g),
                (long long)bad, (long long)first_bad);
    for (int b = 0; b < 256; b++) v->byte_sym[b] = nm_sym_find(v, v->bpe_enc[b], v->bpe_enc_len[b]);
    return NM_OK;
}

nm_status nm_vocab_from_gguf(const nm_gguf *g, nm_vocab **out, const nm_log *log, nm_err *err) {
    *out = NULL;
    if (!g) return nm_err_set(err, NM_ERR_ARG, "nm_vocab_from_gguf: no file");
    nm_str model = {0}, pre = {0};
    nm_err e2 = {0};
    if (nm_gguf_find_key(g, KEY_MODEL) < 0)
        return nm_err_set(err, NM_ERR_NOT_FOUND, "%s: no %s: the file has no tokenizer", src_name(g), KEY_MODEL);
    if (nm_gguf_get_str(g, KEY_MODEL, &model, &e2))
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %s is not a string", src_name(g), KEY_MODEL);
    bool has_pre = nm_gguf_find_key(g, KEY_PRE) >= 0;
    if (has_pre && nm_gguf_get_str(g, KEY_PRE, &pre, &e2))
        return nm_err_set(err, NM_ERR_FORMAT, "%s: %s is not a string", src_name(g), KEY_PRE);

    nm_vocab *v = calloc(1, sizeof *v);
    if (!v) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    nm_status st = NM_OK;
    if (model.len == 5 && memcmp(model.ptr, "llama", 5) == 0) {
        v->kind = NM_VOCAB_SPM;
        v->bos = 1;
        v->eos = 2;
        v->unk = 0;
        v->add_space_prefix = true;
        v->add_bos = true;
    } else if (model.len == 4 && memcmp(model.ptr, "gpt2", 4) == 0) {
        v->kind = NM_VOCAB_BPE;
        v->bos = 11; /* llama.cpp's defaults for BPE vocabularies */
        v->eos = 11;
        v->unk = -1;
        v->clean_spaces = true;
    } else {
        st = nm_err_set(err, NM_ERR_UNSUPPORTED,
                        "%s: tokenizer type '%.*s' is not supported (nomoat knows 'llama' and 'gpt2')", src_name(g),
                        (int)(model.len > 64 ? 64 : model.len), model.ptr);
        goto fail;
    }
    v->eot = v->eom = v->pad = v->sep = -1;

    if ((st = load_tokens(v, g, log, err))) goto fail;

    if (v->kind == NM_VOCAB_BPE) {
        for (int b = 0; b < 256; b++)
            v->bpe_enc_len[b] = (uint8_t)nm_utf8_encode(nm_bpe_byte_to_cp((uint8_t)b), v->bpe_enc[b]);
        if ((st = load_merges(v, g, log, err))) goto fail;
        char name[64];
        if (!has_pre) {
            nm_logf(log, NM_LOG_WARN, "%s: no %s: using the 'default' pre-tokenizer (tokens may differ from the model's)",
                    src_name(g), KEY_PRE);
            snprintf(name, sizeof name, "default");
        } else {
            snprintf(name, sizeof name, "%.*s", (int)(pre.len > 63 ? 63 : pre.len), pre.ptr);
            if (memchr(pre.ptr, 0, pre.len)) name[0] = 0; /* never matches a known type */
        }
        nm_pretok_flags fl;
        if ((st = nm_pretok_new(name, &v->pretok, &fl, log, err))) goto fail;
        snprintf(v->pre_name, sizeof v->pre_name, "%s", name);
        v->ignore_merges = fl.ignore_merges;
        v->clean_spaces = fl.clean_spaces;
        v->add_bos = fl.add_bos;
    } else {
        snprintf(v->pre_name, sizeof v->pre_name, "default");
        if ((st = build_spm_tables(v, err))) goto fail;
    }

    if ((st = opt_bool(g, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix, err))) goto fail;
    if ((st = opt_id(v, g, "tokenizer.ggml.bos_token_id", &v->bos, log, err))) goto fail;
    if ((st = opt_id(v, g, "tokenizer.ggml.eos_token_id", &v->eos, log, err))) goto fail;
    if ((st = opt_id(v, g, "tokenizer.ggml.eot_token_id", &v->eot, log, err))) goto fail;
    if ((st = opt_id(v, g, "tokenizer.ggml.eom_token_id", &v->eom, log, err))) goto fail;
    if ((st = opt_id(v, g, "tokenizer.ggml.unknown_token_id", &v->unk, log, err))) goto fail;
    if ((st = opt_id(v, g, "tokenizer.ggml.seperator_token_id", &v->sep, log, err))) goto fail;
    if ((st = opt_id(v, g, "tokenizer.ggml.padding_token_id", &v->pad, log, err))) goto fail;
    if ((st = opt_bool(g, "tokenizer.ggml.add_bos_token", &v->add_bos, err))) goto fail;
    if ((st = opt_bool(g, "tokenizer.ggml.add_eos_token", &v->add_eos, err))) goto fail;
    if (v->add_bos && v->bos < 0) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: tokenizer.ggml.add_bos_token is true but there is no BOS token",
                        src_name(g));
        goto fail;
    }
    if (v->add_eos && v->eos < 0) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: tokenizer.ggml.add_eos_token is true but there is no EOS token",
                        src_name(g));
        goto fail;
    }

    find_eog(v, log);
    if ((st = build_special(v, g, err))) goto fail;
    build_byte_tokens(v);
    if ((st = nm_vocab_build_pieces(v, err))) goto fail;
    *out = v;
    return NM_OK;
fail:
    nm_vocab_free(v);
    return st;
}

/* ---- accessors ---- */

int32_t nm_vocab_n_tokens(const nm_vocab *v) { return v->n_tokens; }
int32_t nm_vocab_bos(const nm_vocab *v) { return v->bos; }
int32_t nm_vocab_eos(const nm_vocab *v) { return v->eos; }
int32_t nm_vocab_eot(const nm_vocab *v) { return v->eot; }
int32_t nm_vocab_pad(const nm_vocab *v) { return v->pad; }
bool nm_vocab_add_bos(const nm_vocab *v) { return v->add_bos; }
bool nm_vocab_add_eos(const nm_vocab *v) { return v->add_eos; }

bool nm_vocab_is_eog(const nm_vocab *v, int32_t id) { return id >= 0 && id < v->n_tokens && v->eog[id]; }

bool nm_vocab_is_control(const nm_vocab *v, int32_t id) {
    return id >= 0 && id < v->n_tokens && (v->attr[id] & NM_TOK_CONTROL);
}

const char *nm_vocab_token_text(const nm_vocab *v, int32_t id) {
    if (id < 0 || id >= v->n_tokens) return "";
    return v->text + v->text_off[id];
}
