/*
 * pretok.c - the pre-tokenizers of byte-level BPE vocabularies: the regular
 * expressions that cut text into words before merging, chosen by
 * tokenizer.ggml.pre, matched with PCRE2 (Unicode properties, look-aheads,
 * JIT when available).
 *
 * A type is a list of patterns applied in turn, as llama.cpp's
 * unicode_regex_split does: each pattern splits every current piece into
 * its matches and the text between them (both kept), and the next pattern
 * works on those pieces.  A pattern sees only its piece, so look-aheads
 * stop at the piece's end.
 *
 * The patterns are llama.cpp's (llama-vocab.cpp), which are the
 * tokenizer.json patterns of the models adapted to std::regex.  Where
 * llama.cpp had to rewrite a pattern because std::regex lacks Unicode
 * classes (tekken, gpt-4o) we use the original from tokenizer.json, which
 * PCRE2 can run as written.
 *
 * Invalid UTF-8 (PCRE2_MATCH_INVALID_UTF) never matches a pattern: such
 * bytes end up in the pieces between matches, and the BPE step turns them
 * into their byte tokens.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "text/text.h"

#include <stdlib.h>
#include <string.h>

#define MAX_PATTERNS 6

struct nm_pretok {
    int n;
    pcre2_code *re[MAX_PATTERNS];
};

/* ---- the patterns ---- */

#define P_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define P_CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define P_LLAMA3                                                                                                      \
    P_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define P_QWEN2                                                                                                       \
    P_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define P_CJK "[\xe4\xb8\x80-\xe9\xbe\xa5\xe0\xa0\x80-\xe4\xb8\x80\xea\xb0\x80-\xed\x9f\xbf]+" /* [一-龥ࠀ-一가-퟿]+ */
#define P_PORO " ?[^(\\s|.,!?\xe2\x80\xa6\xe3\x80\x82\xef\xbc\x8c\xe3\x80\x81\xe0\xa5\xa4\xdb\x94\xd8\x8c)]+"
#define P_UPPER "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]"
#define P_LOWER "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]"
#define P_TEKKEN                                                                                                      \
    "[^\\r\\n\\p{L}\\p{N}]?" P_UPPER "*" P_LOWER "+|[^\\r\\n\\p{L}\\p{N}]?" P_UPPER "+" P_LOWER                        \
    "*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define P_GPT4O                                                                                                       \
    "[^\\r\\n\\p{L}\\p{N}]?" P_UPPER "*" P_LOWER "+" P_CONTRACTIONS "?|[^\\r\\n\\p{L}\\p{N}]?" P_UPPER "+" P_LOWER     \
    "*" P_CONTRACTIONS "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

static const char *const PATS_DEFAULT[] = {"[\\p{P}\\$\\+<=>\\^~\\|]+", P_GPT2, "\\p{N}+", "[0-9][0-9][0-9]", NULL};
static const char *const PATS_GPT2[] = {P_GPT2, NULL};
static const char *const PATS_LLAMA3[] = {P_LLAMA3, NULL};
static const char *const PATS_QWEN2[] = {P_QWEN2, NULL};
static const char *const PATS_STARCODER[] = {"\\p{N}", P_GPT2, NULL};
static const char *const PATS_FALCON[] = {"[\\p{P}\\$\\+<=>\\^~\\|`]+", P_GPT2, "[0-9][0-9][0-9]", NULL};
static const char *const PATS_DEEPSEEK_CODER[] = {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", P_CJK, "\\p{N}", NULL};
static const char *const PATS_DEEPSEEK_LLM[] = {
    "[\\r\\n]",
    /* the Latin, Greek, Cyrillic, ... letter ranges of DeepSeek's tokenizer.json */
    "\\s?[A-Za-z\xc2\xb5\xc3\x80-\xc3\x96\xc3\x98-\xc3\xb6\xc3\xb8-\xc6\xba\xc6\xbc-\xc6\xbf\xc7\x84-\xca\x93"
    "\xca\x95-\xca\xaf\xcd\xb0-\xcd\xb3\xcd\xb6\xcd\xb7\xcd\xbb-\xcd\xbd\xcd\xbf\xce\x86\xce\x88-\xce\x8a\xce\x8c"
    "\xce\x8e-\xce\xa1\xce\xa3-\xcf\xb5\xcf\xb7-\xd2\x81\xd2\x8a-\xd4\xaf\xd4\xb1-\xd5\x96\xe1\x82\xa0-\xe1\x83\x85"
    "\xe1\x8e\xa0-\xe1\x8f\xb5\xe1\x8f\xb8-\xe1\x8f\xbd\xe1\xb2\x90-\xe1\xb2\xba\xe1\xb2\xbd-\xe1\xb2\xbf"
    "\xe1\xb4\x80-\xe1\xb4\xab\xe1\xb5\xab-\xe1\xb5\xb7\xe1\xb5\xb9-\xe1\xb6\x9a\xe1\xb8\x80-\xe1\xbc\x95"
    "\xe1\xbc\x98-\xe1\xbc\x9d\xe1\xbc\xa0-\xe1\xbd\x85\xe1\xbd\x88-\xe1\xbd\x8d\xe1\xbd\x90-\xe1\xbd\x97"
    "\xe1\xbd\x99\xe1\xbd\x9b\xe1\xbd\x9d\xe1\xbd\x9f-\xe1\xbd\xbd\xe1\xbe\x80-\xe1\xbe\xb4\xe1\xbe\xb6-\xe1\xbe\xbc"
    "\xe1\xbe\xbe\xe1\xbf\x82-\xe1\xbf\x84\xe1\xbf\x86-\xe1\xbf\x8c\xe1\xbf\x90-\xe1\xbf\x93\xe1\xbf\x96-\xe1\xbf\x9b"
    "\xe1\xbf\xa0-\xe1\xbf\xac\xe1\xbf\xb2-\xe1\xbf\xb4\xe1\xbf\xb6-\xe1\xbf\xbc\xe2\x84\x82\xe2\x84\x87"
    "\xe2\x84\x8a-\xe2\x84\x93\xe2\x84\x95\xe2\x84\x99-\xe2\x84\x9d\xe2\x84\xa4\xe2\x84\xa6\xe2\x84\xa8"
    "\xe2\x84\xaa-\xe2\x84\xad\xe2\x84\xaf-\xe2\x84\xb4\xe2\x84\xb9\xe2\x84\xbc-\xe2\x84\xbf\xe2\x85\x85-\xe2\x85\x89"
    "\xe2\x85\x8e\xe2\x86\x83\xe2\x86\x84\xe2\xb0\x80-\xe2\xb1\xbb\xe2\xb1\xbe-\xe2\xb3\xa4\xe2\xb3\xab-\xe2\xb3\xae"
    "\xe2\xb3\xb2\xe2\xb3\xb3\xea\x99\x80-\xea\x99\xad\xea\x9a\x80-\xea\x9a\x9b\xea\x9c\xa2-\xea\x9d\xaf"
    "\xea\x9d\xb1-\xea\x9e\x87\xea\x9e\x8b-\xea\x9e\x8e\xea\xad\xb0-\xea\xae\xbf\xef\xac\x80-\xef\xac\x86"
    "\xef\xac\x93-\xef\xac\x97\xef\xbc\xa1-\xef\xbc\xba\xef\xbd\x81-\xef\xbd\x9a\xf0\x90\x90\x80-\xf0\x90\x91\x8f"
    "\xf0\x90\x92\xb0-\xf0\x90\x93\x93\xf0\x90\x93\x98-\xf0\x90\x93\xbb\xf0\x90\xb2\x80-\xf0\x90\xb2\xb2"
    "\xf0\x90\xb3\x80-\xf0\x90\xb3\xb2\xf0\x91\xa2\xa0-\xf0\x91\xa3\x9f\xf0\x9e\xa4\x80-\xf0\x9e\xa5\x83]+",
    /* \s?[!-/:-~！-／：-～‘-‟　-。]+ */
    "\\s?[!-/:-~\xef\xbc\x81-\xef\xbc\x8f\xef\xbc\x9a-\xef\xbd\x9e\xe2\x80\x98-\xe2\x80\x9f\xe3\x80\x80-\xe3\x80\x82]+",
    /* "\\s+$" as written backtracks through a long run of spaces from every
     * position of the run when the run does not reach the end (quadratic);
     * starting only where a run starts and not giving back matches the same
     * text in linear time */
    "(?<!\\s)\\s++$",
    P_CJK,
    "\\p{N}+",
    NULL};
static const char *const PATS_DEEPSEEK3[] = {
    "\\p{N}{1,3}",
    "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+", /* [一-龥぀-ゟ゠-ヿ]+ */
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
    "?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    NULL};
static const char *const PATS_PORO[] = {P_PORO, NULL};
static const char *const PATS_VIKING[] = {P_PORO, "\\p{N}", NULL};
static const char *const PATS_TEKKEN[] = {P_TEKKEN, NULL};
static const char *const PATS_GPT4O[] = {P_GPT4O, NULL};
static const char *const PATS_BAILING[] = {"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
                                           "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
                                           NULL};
static const char *const PATS_SEED_CODER[] = {P_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| "
                                                             "?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
                                              NULL};

/* Flags llama.cpp attaches to a type (llama_vocab::impl::load). */
enum { F_IGNORE_MERGES = 1, F_NO_CLEAN = 2, F_ADD_BOS = 4 };

typedef struct pre_type {
    const char *name;
    const char *const *pats;
    int flags;
} pre_type;

static const pre_type TYPES[] = {
    {"default", PATS_DEFAULT, 0},
    {"llama3", PATS_LLAMA3, F_IGNORE_MERGES | F_ADD_BOS},
    {"llama-v3", PATS_LLAMA3, F_IGNORE_MERGES | F_ADD_BOS},
    {"llama-bpe", PATS_LLAMA3, F_IGNORE_MERGES | F_ADD_BOS},
    {"falcon3", PATS_LLAMA3, F_IGNORE_MERGES | F_ADD_BOS},
    {"pixtral", PATS_LLAMA3, F_IGNORE_MERGES | F_ADD_BOS},
    {"dbrx", PATS_LLAMA3, 0},
    {"smaug-bpe", PATS_LLAMA3, 0},
    {"chatglm-bpe", PATS_LLAMA3, 0},
    {"glm4", PATS_LLAMA3, 0},
    {"deepseek-llm", PATS_DEEPSEEK_LLM, F_NO_CLEAN},
    {"deepseek-coder", PATS_DEEPSEEK_CODER, F_NO_CLEAN},
    {"deepseek-v3", PATS_DEEPSEEK3, F_NO_CLEAN},
    {"falcon", PATS_FALCON, 0},
    {"gpt-2", PATS_GPT2, 0},
    {"phi-2", PATS_GPT2, 0},
    {"mpt", PATS_GPT2, 0},
    {"olmo", PATS_GPT2, 0},
    {"jais", PATS_GPT2, 0},
    {"jina-es", PATS_GPT2, 0},
    {"jina-de", PATS_GPT2, 0},
    {"jina-v1-en", PATS_GPT2, 0},
    {"jina-v2-es", PATS_GPT2, 0},
    {"jina-v2-de", PATS_GPT2, 0},
    {"jina-v2-code", PATS_GPT2, 0},
    {"roberta-bpe", PATS_GPT2, 0},
    {"gigachat", PATS_GPT2, 0},
    {"exaone4", PATS_GPT2, 0},
    {"trillion", PATS_GPT2, F_NO_CLEAN},
    {"granite-docling", PATS_GPT2, F_NO_CLEAN},
    {"starcoder", PATS_STARCODER, 0},
    {"refact", PATS_STARCODER, 0},
    {"codeshell", PATS_STARCODER, 0},
    {"exaone", PATS_STARCODER, 0},
    {"minerva-7b", PATS_STARCODER, 0},
    {"command-r", PATS_STARCODER, F_NO_CLEAN},
    {"smollm", PATS_STARCODER, F_NO_CLEAN},
    {"qwen2", PATS_QWEN2, F_NO_CLEAN},
    {"deepseek-r1-qwen", PATS_QWEN2, F_NO_CLEAN},
    {"hunyuan", PATS_QWEN2, F_NO_CLEAN},
    {"megrez", PATS_QWEN2, 0},
    {"stablelm2", PATS_QWEN2, 0},
    {"poro-chat", PATS_PORO, F_NO_CLEAN},
    {"bloom", PATS_PORO, 0},
    {"gpt3-finnish", PATS_PORO, 0},
    {"viking", PATS_VIKING, F_NO_CLEAN},
    {"tekken", PATS_TEKKEN, F_NO_CLEAN | F_IGNORE_MERGES | F_ADD_BOS},
    {"gpt-4o", PATS_GPT4O, F_NO_CLEAN},
    {"llama4", PATS_GPT4O, F_NO_CLEAN},
    {"bailingmoe", PATS_BAILING, F_NO_CLEAN},
    {"seed-coder", PATS_SEED_CODER, F_NO_CLEAN},
};
#define N_TYPES (sizeof TYPES / sizeof TYPES[0])

void nm_pretok_free(nm_pretok *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) pcre2_code_free(p->re[i]);
    free(p);
}

nm_status nm_pretok_new(const char *name, nm_pretok **out, nm_pretok_flags *flags, const nm_log *log, nm_err *err) {
    *out = NULL;
    const pre_type *t = NULL;
    for (size_t i = 0; i < N_TYPES; i++)
        if (strcmp(TYPES[i].name, name) == 0) t = &TYPES[i];
    memset(flags, 0, sizeof *flags);
    flags->known = t != NULL;
    if (!t) {
        nm_logf(log, NM_LOG_WARN, "unknown pre-tokenizer type '%s': using the GPT-2 pattern (tokens may differ from "
                                  "the model's own tokenizer)", name);
        for (size_t i = 0; i < N_TYPES; i++)
            if (strcmp(TYPES[i].name, "gpt-2") == 0) t = &TYPES[i];
    }
    flags->ignore_merges = (t->flags & F_IGNORE_MERGES) != 0;
    flags->clean_spaces = (t->flags & F_NO_CLEAN) == 0;
    flags->add_bos = (t->flags & F_ADD_BOS) != 0;

    nm_pretok *p = calloc(1, sizeof *p);
    if (!p) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    for (int i = 0; t->pats[i]; i++) {
        int ec;
        PCRE2_SIZE eo;
        /* DOLLAR_ENDONLY: '$' means the end of the piece, as in std::regex */
        uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_DOLLAR_ENDONLY;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)t->pats[i], PCRE2_ZERO_TERMINATED, opts, &ec, &eo, NULL);
        if (!re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(ec, msg, sizeof msg);
            nm_pretok_free(p);
            return nm_err_set(err, NM_ERR_INTERNAL, "pre-tokenizer '%s': pattern %d does not compile at %zu: %s",
                              t->name, i, (size_t)eo, (const char *)msg);
        }
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* the interpreter is the fallback */
        p->re[p->n++] = re;
    }
    *out = p;
    return NM_OK;
}

/* ---- splitting ---- */

typedef struct spans {
    size_t *v; /* offset, length pairs */
    size_t n, cap;
    bool oom;
} spans;

static void span_push(spans *s, size_t off, size_t len) {
    if (s->oom || len == 0) return;
    if (s->n + 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        size_t *p = cap > SIZE_MAX / sizeof(size_t) ? NULL : realloc(s->v, cap * sizeof(size_t));
        if (!p) {
            s->oom = true;
            return;
        }
        s->v = p;
        s->cap = cap;
    }
    s->v[s->n++] = off;
    s->v[s->n++] = len;
}

typedef struct matcher {
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
} matcher;

static void matcher_deinit(matcher *m) {
    pcre2_match_data_free(m->md);
    pcre2_match_context_free(m->mc);
    pcre2_jit_stack_free(m->js);
}

/* Runs re on subject[0..len) from start; the JIT's default stack (32 KiB)
 * is replaced by a larger one the first time a long piece needs it. */
static int run(matcher *m, const pcre2_code *re, const char *subject, size_t len, size_t start) {
    int rc = pcre2_match(re, (PCRE2_SPTR)subject, len, start, 0, m->md, m->mc);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !m->js) {
        m->js = pcre2_jit_stack_create(64 * 1024, 256 * 1024 * 1024, NULL);
        if (!m->mc) m->mc = pcre2_match_context_create(NULL);
        if (!m->js || !m->mc) return PCRE2_ERROR_NOMEMORY;
        pcre2_jit_stack_assign(m->mc, NULL, m->js);
        rc = pcre2_match(re, (PCRE2_SPTR)subject, len, start, 0, m->md, m->mc);
    }
    return rc;
}

static size_t char_len(const char *s, size_t n) {
    uint32_t cp;
    int l = nm_utf8_decode((const uint8_t *)s, n, &cp);
    return l > 0 ? (size_t)l : 1;
}

nm_status nm_pretok_split(const nm_pretok *p, const char *text, size_t len, size_t **words, size_t *n_words,
                          nm_err *err) {
    *words = NULL;
    *n_words = 0;
    spans a = {0}, b = {0};
    matcher m = {0};
    nm_status st = NM_OK;
    span_push(&a, 0, len);
    if (p->n > 0) {
        m.md = pcre2_match_data_create(1, NULL);
        if (!m.md) a.oom = true;
    }
    for (int k = 0; k < p->n && !a.oom && st == NM_OK; k++) {
        b.n = 0;
        for (size_t i = 0; i < a.n && st == NM_OK; i += 2) {
            const char *sub = text + a.v[i];
            size_t sl = a.v[i + 1];
            size_t pos = 0, prev = 0;
            while (pos < sl) {
                int rc = run(&m, p->re[k], sub, sl, pos);
                if (rc == PCRE2_ERROR_NOMATCH) break;
                if (rc < 0) {
                    PCRE2_UCHAR msg[256];
                    pcre2_get_error_message(rc, msg, sizeof msg);
                    st = nm_err_set(err, rc == PCRE2_ERROR_NOMEMORY ? NM_ERR_NOMEM : NM_ERR_INTERNAL,
                                    "pre-tokenizer: matching a %zu-byte piece failed: %s", sl, (const char *)msg);
                    break;
                }
                PCRE2_SIZE *ov = pcre2_get_ovector_pointer(m.md);
                size_t ms = ov[0], me = ov[1];
                if (me <= ms) { /* empty match: it splits nothing, move on */
                    pos = ms + char_len(sub + ms, sl - ms);
                    continue;
                }
                if (ms > prev) span_push(&b, a.v[i] + prev, ms - prev);
                span_push(&b, a.v[i] + ms, me - ms);
                prev = pos = me;
            }
            if (prev < sl) span_push(&b, a.v[i] + prev, sl - prev);
        }
        spans t = a;
        a = b;
        b = t;
    }
    matcher_deinit(&m);
    free(b.v);
    if (st == NM_OK && a.oom) st = nm_err_set(err, NM_ERR_NOMEM, "pre-tokenizer: out of memory");
    if (st != NM_OK) {
        free(a.v);
        return st;
    }
    *words = a.v;
    *n_words = a.n / 2;
    return NM_OK;
}
