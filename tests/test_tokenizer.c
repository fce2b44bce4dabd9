/*
 * test_tokenizer.c - the tokenizers against external truth: llama.cpp's
 * conformance vectors (shared/vocab: every string of each .inp/.out pair, exact ids),
 * the prompts of the golden llama.cpp runs (shared/golden, jsonl), the CLI
 * on the same prompts; then properties: decode(encode(s)) == s on random
 * UTF-8 and random bytes, the streaming detokenizer, special tokens, long
 * inputs (timed, printed), and hostile vocabulary metadata written with the
 * GGUF writer.
 */
#include "testlib.h"
#include "base/base.h"
#include "text/text.h"

#include <dirent.h>
#include <jansson.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Collects warnings so tests can look at what the library said. */
typedef struct logbuf {
    char text[8192];
    size_t len;
} logbuf;

static void log_collect(void *user, nm_log_level level, const char *msg) {
    logbuf *b = user;
    int n = snprintf(b->text + b->len, sizeof b->text - b->len, "%d:%s\n", (int)level, msg);
    if (n > 0 && b->len + (size_t)n < sizeof b->text) b->len += (size_t)n;
}

static nm_vocab *load_vocab(nm_test *t, const char *path, logbuf *lb) {
    nm_err err = {0};
    nm_gguf *g;
    if (!CHECK_OK(t, nm_gguf_open(path, &g, &err), err)) return NULL;
    nm_log log = {log_collect, lb, NM_LOG_DEBUG};
    static logbuf dummy;
    if (!lb) log.user = &dummy;
    nm_vocab *v = NULL;
    nm_status st = nm_vocab_from_gguf(g, &v, &log, &err);
    nm_gguf_free(g);
    if (!CHECK_OK(t, st, err)) return NULL;
    return v;
}

static bool tokenize(nm_test *t, const nm_vocab *v, const char *s, size_t n, bool add_special, bool parse_special,
                     int32_t **ids, size_t *n_ids) {
    nm_err err = {0};
    return CHECK_OK(t, nm_tokenize(v, s, n, add_special, parse_special, ids, n_ids, &err), err);
}

/* ======================================================================== */
/* llama.cpp's conformance vectors                                          */
/* ======================================================================== */

/* The .inp file is split like llama.cpp's test-tokenizer-0 does: every
 * string is followed by "\n__ggml_vocab_test__\n" (so a string never
 * includes the newline before the separator). */
static int run_vectors(nm_test *t, const char *gguf) {
    char inp_path[2100], out_path[2100];
    snprintf(inp_path, sizeof inp_path, "%s.inp", gguf);
    snprintf(out_path, sizeof out_path, "%s.out", gguf);
    size_t li, lo;
    char *inp = nm_test_read(inp_path, &li), *out = nm_test_read(out_path, &lo);
    if (!CHECKF(t, inp && out, "cannot read %s / %s", inp_path, out_path)) {
        free(inp);
        free(out);
        return 0;
    }
    nm_vocab *v = load_vocab(t, gguf, NULL);
    int n_cases = 0, n_bad = 0;
    const char *sep = "\n__ggml_vocab_test__\n";
    size_t sl = strlen(sep), pos = 0;
    char *line = out;
    while (v) {
        char *next = memmem(inp + pos, li - pos, sep, sl);
        if (!next) break;
        size_t len = (size_t)(next - (inp + pos));
        char *eol = strchr(line, '\n');
        if (!CHECKF(t, eol != NULL, "%s: fewer .out lines than strings", gguf)) break;
        *eol = 0;
        int32_t expect[4096];
        size_t ne = 0;
        for (char *p = line; *p;) {
            char *end;
            long x = strtol(p, &end, 10);
            if (end == p) break;
            if (ne < 4096) expect[ne++] = (int32_t)x;
            p = end;
        }
        int32_t *ids;
        size_t n;
        if (tokenize(t, v, inp + pos, len, false, false, &ids, &n)) {
            bool same = n == ne && memcmp(ids, expect, n * sizeof(int32_t)) == 0;
            if (!same) {
                n_bad++;
                char got[2048] = "";
                size_t gl = 0;
                for (size_t i = 0; i < n && gl < sizeof got - 16; i++)
                    gl += (size_t)snprintf(got + gl, sizeof got - gl, " %d", ids[i]);
                CHECKF(t, false, "%s case %d %.40s...: got%s, want %s", strrchr(gguf, '/') + 1, n_cases, inp + pos, got,
                       line);
            }
            free(ids);
        }
        n_cases++;
        line = eol + 1;
        pos = (size_t)(next - inp) + sl;
    }
    CHECKF(t, n_cases > 0 && n_bad == 0, "%s: %d of %d cases differ", gguf, n_bad, n_cases);
    nm_vocab_free(v);
    free(inp);
    free(out);
    return n_cases;
}

static void test_vocab_vectors(nm_test *t) {
    const char *dir = nm_test_shared("vocab");
    char dirbuf[1024];
    snprintf(dirbuf, sizeof dirbuf, "%s", dir);
    DIR *d = opendir(dirbuf);
    if (!CHECKF(t, d != NULL, "cannot open %s", dirbuf)) return;
    int files = 0, cases = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 5, ".gguf") != 0) continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dirbuf, e->d_name);
        cases += run_vectors(t, path);
        files++;
    }
    closedir(d);
    CHECKF(t, files >= 6, "only %d vocabularies found in %s", files, dirbuf);
    printf("  vectors: %d vocabularies, %d strings\n", files, cases);
}


/* ======================================================================== */
/* Golden prompts of llama.cpp runs                                         */
/* ======================================================================== */

typedef struct golden {
    char model[256];
    char *prompt;
    bool add_bos;
    int32_t tokens[512];
    size_t n;
} golden;

/* Reads every line of every golden/MODEL.jsonl; returns the count. */
static int read_golden(nm_test *t, golden *out, int max) {
    char dirbuf[1024];
    snprintf(dirbuf, sizeof dirbuf, "%s", nm_test_shared("golden"));
    DIR *d = opendir(dirbuf);
    if (!CHECKF(t, d != NULL, "cannot open %s", dirbuf)) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        size_t l = strlen(e->d_name);
        if (l < 7 || strcmp(e->d_name + l - 6, ".jsonl") != 0) continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dirbuf, e->d_name);
        size_t len;
        char *text = nm_test_read(path, &len);
        if (!CHECKF(t, text != NULL, "cannot read %s", path)) continue;
        for (char *line = text; *line && n < max;) {
            char *eol = strchr(line, '\n');
            if (eol) *eol = 0;
            json_error_t je;
            json_t *j = json_loads(line, 0, &je);
            if (j) {
                golden *g = &out[n];
                snprintf(g->model, sizeof g->model, "models/%.*s.gguf", (int)(l - 6), e->d_name);
                const char *p = json_string_value(json_object_get(j, "prompt"));
                g->prompt = nm_strdup(p ? p : "");
                g->add_bos = json_is_true(json_object_get(j, "add_bos"));
                json_t *toks = json_object_get(j, "tokens");
                g->n = 0;
                for (size_t i = 0; i < json_array_size(toks) && i < 512; i++)
                    g->tokens[g->n++] = (int32_t)json_integer_value(json_array_get(toks, i));
                CHECKF(t, p && g->n > 0, "%s: a line without prompt/tokens", path);
                n++;
                json_decref(j);
            }
            if (!eol) break;
            line = eol + 1;
        }
        free(text);
    }
    closedir(d);
    return n;
}

static void test_golden_prompts(nm_test *t) {
    static golden gs[64];
    int n = read_golden(t, gs, 64);
    CHECKF(t, n >= 20, "only %d golden prompts", n);
    nm_vocab *v = NULL;
    for (int i = 0; i < n; i++) {
        if (i == 0 || strcmp(gs[i].model, gs[i - 1].model) != 0) { /* the files come model by model */
            nm_vocab_free(v);
            v = load_vocab(t, nm_test_shared(gs[i].model), NULL);
        }
        if (v) {
            int32_t *ids;
            size_t k;
            if (tokenize(t, v, gs[i].prompt, strlen(gs[i].prompt), gs[i].add_bos, false, &ids, &k)) {
                bool same = k == gs[i].n && memcmp(ids, gs[i].tokens, k * sizeof(int32_t)) == 0;
                CHECKF(t, same, "%s: '%s': %zu ids, want %zu (first %d vs %d)", gs[i].model, gs[i].prompt, k,
                       gs[i].n, k ? ids[0] : -1, gs[i].tokens[0]);
                free(ids);
            }
        }
        free(gs[i].prompt);
    }
    nm_vocab_free(v);
}

/* The CLI prints the same ids (BOS first), space separated, or as JSON. */
static void test_cli_tokenize(nm_test *t) {
    static golden gs[64];
    int n = read_golden(t, gs, 64);
    int checked = 0;
    for (int i = 0; i < n; i++) {
        bool use = strstr(gs[i].model, "stories260K.gguf") || strstr(gs[i].model, "t256-q8_0");
        if (use && !strchr(gs[i].prompt, '\'')) {
            char cmd[4096], want[4096] = "";
            size_t wl = 0;
            for (size_t k = 0; k < gs[i].n; k++)
                wl += (size_t)snprintf(want + wl, sizeof want - wl, "%s%d", k ? " " : "", gs[i].tokens[k]);
            snprintf(cmd, sizeof cmd, "%s tokenize -m %s -p '%s'", nm_test_bin(), nm_test_shared(gs[i].model),
                     gs[i].prompt);
            char *out = NULL;
            int rc = nm_test_sh(cmd, &out);
            CHECKF(t, rc == 0 && out && strncmp(out, want, wl) == 0 && strcmp(out + wl, "\n") == 0,
                   "%s\n  printed: %s  want: %s", cmd, out ? out : "(nothing)", want);
            free(out);
            checked++;
        }
        free(gs[i].prompt);
    }
    CHECK(t, checked >= 6);

    const char *m = nm_test_shared("models/stories260K.gguf");
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s tokenize -m %s -p 'Once upon a time' --json", nm_test_bin(), m);
    CHECK(t, nm_test_sh(cmd, &out) == 0 && out && strcmp(out, "[1, 403, 407, 261, 378]\n") == 0);
    free(out);
    snprintf(cmd, sizeof cmd, "%s tokenize -m %s -p 'Once upon a time' --no-bos", nm_test_bin(), m);
    CHECK(t, nm_test_sh(cmd, &out) == 0 && out && strcmp(out, "403 407 261 378\n") == 0);
    free(out);
    snprintf(cmd, sizeof cmd, "%s tokenize -m %s -p 'Once' --pieces", nm_test_bin(), m);
    CHECK(t, nm_test_sh(cmd, &out) == 0 && out && strcmp(out, "1 \"<s>\"\n403 \" Once\"\n") == 0);
    free(out);
    snprintf(cmd, sizeof cmd, "printf 'Once upon a time' > %s/p.txt && %s tokenize -m %s -f %s/p.txt", nm_test_tmpdir(),
             nm_test_bin(), m, nm_test_tmpdir());
    CHECK(t, nm_test_sh(cmd, &out) == 0 && out && strcmp(out, "1 403 407 261 378\n") == 0);
    free(out);
    /* usage errors exit 2, failures 1 */
    snprintf(cmd, sizeof cmd, "%s tokenize -m %s 2>/dev/null", nm_test_bin(), m);
    CHECK(t, nm_test_sh(cmd, NULL) == 2);
    snprintf(cmd, sizeof cmd, "%s tokenize -m /nonexistent.gguf -p x 2>&1", nm_test_bin());
    CHECK(t, nm_test_sh(cmd, &out) == 1 && out && strstr(out, "nomoat: error:"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s bench --tokenize -m %s -f %s --reps 1", nm_test_bin(), m,
             nm_test_shared("data/identity.json"));
    CHECK(t, nm_test_sh(cmd, &out) == 0 && out && strstr(out, "MB/s"));
    free(out);
}

/* ======================================================================== */
/* Round trips                                                              */
/* ======================================================================== */

static const char *const ROUNDTRIP_VOCABS[] = {
    "vocab/ggml-vocab-llama-spm.gguf", "vocab/ggml-vocab-phi-3.gguf",     "models/stories260K.gguf",
    "vocab/ggml-vocab-gpt-2.gguf",     "vocab/ggml-vocab-starcoder.gguf", "vocab/ggml-vocab-falcon.gguf",
    "vocab/ggml-vocab-deepseek-coder.gguf"};
#define N_RT (sizeof ROUNDTRIP_VOCABS / sizeof ROUNDTRIP_VOCABS[0])

/* Random text: ASCII words, spaces, newlines, tabs, digits, punctuation and
 * characters of every UTF-8 length (never U+2581, see test_spm_marker). */
static size_t random_utf8(nm_rng *r, char *buf, size_t max) {
    static const char *const pool[] = {"the", " ", "  ", "\n", "\t", "Hello", "3", "1234", ",", "!", "'s", "\xc3\xa9",
                                       "\xd0\xbd\xd0\xb5", "\xe4\xb8\x96\xe7\x95\x8c", "\xf0\x9f\xa6\x99", "\r\n",
                                       "<", ">", "s", "(", ")", "..."};
    size_t n = 0;
    int parts = (int)(nm_rng_u64(r) % 24);
    for (int i = 0; i < parts; i++) {
        char tmp[8];
        const char *p;
        size_t l;
        if (nm_rng_u64(r) % 3 == 0) {
            /* any scalar value except U+2581, surrogates and NUL */
            uint32_t cp;
            do {
                uint64_t k = nm_rng_u64(r) % 4;
                cp = k == 0 ? 1 + (uint32_t)(nm_rng_u64(r) % 0x7f)
                     : k == 1 ? 0x80 + (uint32_t)(nm_rng_u64(r) % 0x780)
                     : k == 2 ? 0x800 + (uint32_t)(nm_rng_u64(r) % 0xf800)
                              : 0x10000 + (uint32_t)(nm_rng_u64(r) % 0x100000);
            } while ((cp >= 0xd800 && cp <= 0xdfff) || cp == 0x2581);
            l = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
            if (l == 1) tmp[0] = (char)cp;
            else if (l == 2) { tmp[0] = (char)(0xc0 | cp >> 6); tmp[1] = (char)(0x80 | (cp & 0x3f)); }
            else if (l == 3) { tmp[0] = (char)(0xe0 | cp >> 12); tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3f)); tmp[2] = (char)(0x80 | (cp & 0x3f)); }
            else { tmp[0] = (char)(0xf0 | cp >> 18); tmp[1] = (char)(0x80 | ((cp >> 12) & 0x3f)); tmp[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); tmp[3] = (char)(0x80 | (cp & 0x3f)); }
            p = tmp;
        } else {
            p = pool[nm_rng_u64(r) % (sizeof pool / sizeof pool[0])];
            l = strlen(p);
        }
        if (n + l >= max) break;
        memcpy(buf + n, p, l);
        n += l;
    }
    return n;
}

static bool valid_utf8(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t l = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (!l || i + l > n) return false;
        for (size_t k = 1; k < l; k++)
            if (((unsigned char)s[i + k] & 0xc0) != 0x80) return false;
        if (l == 3 && ((c == 0xe0 && (unsigned char)s[i + 1] < 0xa0) || (c == 0xed && (unsigned char)s[i + 1] > 0x9f)))
            return false;
        if (l == 4 && ((c == 0xf0 && (unsigned char)s[i + 1] < 0x90) || (c == 0xf4 && (unsigned char)s[i + 1] > 0x8f)))
            return false;
        i += l;
    }
    return true;
}

/* encode -> decode must give the input back; the stream must give the same
 * text (valid input) or valid UTF-8 (invalid input). */
static bool roundtrip_one(nm_test *t, const nm_vocab *v, const char *name, const char *s, size_t n, bool valid,
                          const char *expect, size_t en) {
    int32_t *ids;
    size_t k;
    if (!tokenize(t, v, s, n, true, false, &ids, &k)) return false;
    char *back;
    size_t bl;
    nm_err err = {0};
    bool ok = CHECK_OK(t, nm_detokenize(v, ids, k, true, false, &back, &bl, &err), err);
    if (ok) {
        ok = CHECKF(t, bl == en && memcmp(back, expect, en) == 0,
                    "%s: round trip of %zu bytes gave %zu bytes, want %zu ('%.30s' -> '%.30s')", name, n, bl, en, s, back);
        free(back);
    }
    nm_detok_stream ds;
    nm_detok_stream_init(&ds, v, false);
    char *st = malloc(4 * n + 64);
    size_t sl = 0;
    for (size_t i = 0; i < k && st; i++) {
        int32_t w = nm_detok_stream_push(&ds, ids[i], st + sl, 4 * n + 64 - sl);
        if (!CHECKF(t, w >= 0, "%s: stream push failed (%d)", name, w)) break;
        if (!CHECKF(t, valid_utf8(st + sl, (size_t)w), "%s: the stream printed invalid UTF-8", name)) break;
        sl += (size_t)w;
    }
    if (st) {
        int32_t w = nm_detok_stream_flush(&ds, st + sl, 4 * n + 64 - sl);
        CHECK(t, w >= 0);
        sl += (size_t)(w > 0 ? w : 0);
        if (valid) ok &= CHECKF(t, sl == n && memcmp(st, s, n) == 0, "%s: stream text differs ('%.30s')", name, s);
        else ok &= CHECKF(t, valid_utf8(st, sl), "%s: stream text is not valid UTF-8", name);
    }
    free(st);
    free(ids);
    return ok;
}

/* What the lone byte b becomes after encode -> decode: 1 itself (the
 * vocabulary has a token for it: SPM <0xNN>, BPE the byte's mapped
 * character), 0 nothing (unknown token or dropped), -1 something else
 * (deepseek-coder has user-defined tokens such as "\xc3\xb6" that are also
 * the mapped character of the invalid byte 0xF6). */
static int byte_fate(nm_test *t, const nm_vocab *v, uint8_t b) {
    int32_t *ids;
    size_t n;
    char c = (char)b, *back;
    size_t bl;
    nm_err err = {0};
    if (!tokenize(t, v, &c, 1, false, false, &ids, &n)) return -1;
    int fate = -1;
    if (nm_detokenize(v, ids, n, true, false, &back, &bl, &err) == NM_OK) {
        fate = bl == 1 && back[0] == c ? 1 : bl == 0 ? 0 : -1;
        free(back);
    }
    free(ids);
    return fate;
}

/* Fills rep[b] (byte b comes back); returns how many of 1..255 do, or -1
 * if some byte turns into other text. */
static int representable_bytes(nm_test *t, const nm_vocab *v, bool rep[256]) {
    int n = 0;
    bool other = false;
    rep[0] = false;
    for (int b = 1; b < 256; b++) {
        int f = byte_fate(t, v, (uint8_t)b);
        rep[b] = f == 1;
        n += f == 1;
        other |= f < 0;
    }
    return other ? -1 : n;
}

/* The text the tokenizer can give back: s without unrepresentable bytes. */
static size_t filter_bytes(const bool rep[256], const char *s, size_t n, char *out) {
    size_t en = 0;
    for (size_t k = 0; k < n; k++)
        if (rep[(uint8_t)s[k]]) out[en++] = s[k];
    return en;
}

/* Every valid UTF-8 string round-trips exactly, except that a vocabulary
 * without a token for some byte (starcoder has no 0xF1, so no character in
 * U+40000..U+7FFFF) loses that byte. */
static void test_roundtrip_random_utf8(nm_test *t) {
    nm_rng r;
    nm_rng_seed(&r, 20250217);
    char buf[512], expect[512];
    for (size_t vi = 0; vi < N_RT; vi++) {
        nm_vocab *v = load_vocab(t, nm_test_shared(ROUNDTRIP_VOCABS[vi]), NULL);
        if (!v) continue;
        bool rep[256];
        representable_bytes(t, v, rep);
        int bad = 0;
        for (int i = 0; i < 300 && bad < 3; i++) {
            size_t n = random_utf8(&r, buf, sizeof buf);
            size_t en = filter_bytes(rep, buf, n, expect);
            if (!roundtrip_one(t, v, ROUNDTRIP_VOCABS[vi], buf, n, en == n, expect, en)) bad++;
        }
        nm_vocab_free(v);
    }
}

/* Random bytes (mostly invalid UTF-8): no crash, the stream prints valid
 * UTF-8, and decode(encode(s)) is s without the bytes the vocabulary has no
 * token for (they become the unknown token, empty when decoded, or nothing).
 * llama-spm and gpt-2 have all 256 bytes, starcoder and falcon lack some
 * (0xFF...), so both cases are exercised; for deepseek-coder, whose invalid
 * bytes decode as other text, only the absence of crashes is checked. */
static void test_roundtrip_random_bytes(nm_test *t) {
    nm_rng r;
    nm_rng_seed(&r, 7);
    char buf[256], expect[256];
    for (size_t vi = 0; vi < N_RT; vi++) {
        nm_vocab *v = load_vocab(t, nm_test_shared(ROUNDTRIP_VOCABS[vi]), NULL);
        if (!v) continue;
        bool rep[256];
        int n_rep = representable_bytes(t, v, rep);
        if (strstr(ROUNDTRIP_VOCABS[vi], "llama-spm") || strstr(ROUNDTRIP_VOCABS[vi], "gpt-2"))
            CHECKF(t, n_rep == 255, "%s: %d of 255 bytes representable", ROUNDTRIP_VOCABS[vi], n_rep);
        CHECK(t, n_rep != -1 || strstr(ROUNDTRIP_VOCABS[vi], "deepseek-coder"));
        int bad = 0;
        for (int i = 0; i < 200 && bad < 3; i++) {
            size_t n = (size_t)(nm_rng_u64(&r) % sizeof buf);
            for (size_t k = 0; k < n; k++) {
                uint64_t x = nm_rng_u64(&r);
                /* bias towards bytes that interact with UTF-8 and spaces */
                buf[k] = (char)(x % 4 == 0 ? ' ' : x % 4 == 1 ? 0x80 + (x >> 8) % 64 : (x >> 8) & 0xff);
                if (buf[k] == 0) buf[k] = 'z';
            }
            size_t en = filter_bytes(rep, buf, n, expect);
            if (n_rep < 0) {
                int32_t *ids;
                size_t k;
                if (tokenize(t, v, buf, n, true, false, &ids, &k)) free(ids);
            } else if (!roundtrip_one(t, v, ROUNDTRIP_VOCABS[vi], buf, n, false, expect, en)) {
                bad++;
            }
        }
        nm_vocab_free(v);
    }
}

/* SentencePiece writes spaces as U+2581: an input U+2581 therefore comes
 * back as a space (the documented normalisation of SPM vocabularies). */
static void test_spm_marker(nm_test *t) {
    nm_vocab *v = load_vocab(t, nm_test_shared("vocab/ggml-vocab-llama-spm.gguf"), NULL);
    if (!v) return;
    const char *s = "a\xe2\x96\x81" "b";
    int32_t *ids, *ids2;
    size_t n, n2;
    if (tokenize(t, v, s, strlen(s), false, false, &ids, &n) && tokenize(t, v, "a b", 3, false, false, &ids2, &n2)) {
        CHECK(t, n == n2 && memcmp(ids, ids2, n * sizeof(int32_t)) == 0);
        char *back;
        size_t bl;
        nm_err err = {0};
        if (CHECK_OK(t, nm_detokenize(v, ids, n, true, false, &back, &bl, &err), err)) {
            CHECK(t, strcmp(back, "a b") == 0);
            free(back);
        }
        free(ids);
        free(ids2);
    }
    nm_vocab_free(v);
}

/* ======================================================================== */
/* Pieces, special tokens, streaming                                        */
/* ======================================================================== */

static void test_pieces_and_specials(nm_test *t) {
    nm_vocab *v = load_vocab(t, nm_test_shared("vocab/ggml-vocab-llama-spm.gguf"), NULL);
    if (!v) return;
    CHECK(t, nm_vocab_n_tokens(v) == 32000);
    CHECK(t, nm_vocab_bos(v) == 1 && nm_vocab_eos(v) == 2 && nm_vocab_add_bos(v) && !nm_vocab_add_eos(v));
    CHECK(t, nm_vocab_is_eog(v, 2) && !nm_vocab_is_eog(v, 1) && !nm_vocab_is_eog(v, -5) && !nm_vocab_is_eog(v, 99999));
    CHECK(t, nm_vocab_is_control(v, 1) && !nm_vocab_is_control(v, 450));
    CHECK(t, strcmp(nm_vocab_token_text(v, 450), "\xe2\x96\x81The") == 0);
    char buf[16];
    CHECK(t, nm_token_to_piece(v, 450, buf, sizeof buf, false) == 4 && memcmp(buf, " The", 4) == 0);
    CHECK(t, nm_token_to_piece(v, 450, buf, 2, false) == -4); /* too small: the size needed */
    CHECK(t, nm_token_to_piece(v, 1, buf, sizeof buf, false) == 0);
    CHECK(t, nm_token_to_piece(v, 1, buf, sizeof buf, true) == 3 && memcmp(buf, "<s>", 3) == 0);
    CHECK(t, nm_token_to_piece(v, 3 + 0x41, buf, sizeof buf, false) == 1 && buf[0] == 'A'); /* <0x41> */
    CHECK(t, nm_token_to_piece(v, -1, buf, sizeof buf, true) == 0 && nm_token_to_piece(v, 32000, buf, 16, true) == 0);

    /* control texts are split out only with parse_special */
    const char *s = "<s>Hi</s>";
    int32_t *ids;
    size_t n;
    if (tokenize(t, v, s, strlen(s), false, true, &ids, &n)) {
        CHECKF(t, n >= 3 && ids[0] == 1 && ids[n - 1] == 2, "parse_special: %zu ids", n);
        free(ids);
    }
    if (tokenize(t, v, s, strlen(s), false, false, &ids, &n)) {
        bool none = true;
        for (size_t i = 0; i < n; i++) none &= ids[i] != 1 && ids[i] != 2;
        CHECK(t, none && n > 3);
        free(ids);
    }
    /* empty text: nothing, or just BOS */
    if (tokenize(t, v, "", 0, true, false, &ids, &n)) {
        CHECK(t, n == 1 && ids[0] == 1);
        free(ids);
    }
    if (tokenize(t, v, NULL, 0, false, false, &ids, &n)) {
        CHECK(t, n == 0 && ids != NULL);
        free(ids);
    }
    nm_err err = {0};
    CHECK(t, nm_tokenize(v, NULL, 3, false, false, &ids, &n, &err) == NM_ERR_ARG);

    /* a character split over byte tokens is held back until complete */
    const char *llama = "\xf0\x9f\xa6\x99"; /* U+1F999, byte tokens 243 162 169 156 */
    if (tokenize(t, v, llama, 4, false, false, &ids, &n)) {
        CHECKF(t, n == 5 && ids[0] == 29871 && ids[1] == 243 && ids[4] == 156, "%zu ids", n);
        nm_detok_stream ds;
        nm_detok_stream_init(&ds, v, false);
        char out[64];
        int32_t w[5];
        for (size_t i = 0; i < n && i < 5; i++) w[i] = nm_detok_stream_push(&ds, ids[i], out, sizeof out);
        CHECK(t, w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == 0 && w[4] == 4 && memcmp(out, llama, 4) == 0);
        /* cut off: flush writes U+FFFD; a too small buffer consumes nothing */
        nm_detok_stream_init(&ds, v, false);
        nm_detok_stream_push(&ds, ids[1], out, sizeof out);
        nm_detok_stream_push(&ds, ids[2], out, sizeof out);
        CHECK(t, nm_detok_stream_flush(&ds, out, 2) == -3);
        CHECK(t, nm_detok_stream_flush(&ds, out, sizeof out) == 3 && memcmp(out, "\xef\xbf\xbd", 3) == 0);
        CHECK(t, nm_detok_stream_flush(&ds, out, sizeof out) == 0);
        nm_detok_stream_init(&ds, v, false);
        CHECK(t, nm_detok_stream_push(&ds, 450, out, 2) == -3); /* "The" after the leading space rule */
        CHECK(t, nm_detok_stream_push(&ds, 450, out, sizeof out) == 3 && memcmp(out, "The", 3) == 0);
        CHECK(t, nm_detok_stream_push(&ds, 450, out, sizeof out) == 4 && memcmp(out, " The", 4) == 0);
        free(ids);
    }
    nm_vocab_free(v);

    /* Phi-3: EOS and PAD from the metadata, EOT found by its text */
    v = load_vocab(t, nm_test_shared("vocab/ggml-vocab-phi-3.gguf"), NULL);
    if (!v) return;
    CHECK(t, nm_vocab_eos(v) == 32000 && nm_vocab_pad(v) == 32000 && nm_vocab_eot(v) == 32007);
    CHECK(t, nm_vocab_is_eog(v, 32000) && nm_vocab_is_eog(v, 32007) && !nm_vocab_is_eog(v, 32010));
    s = "<|user|>\nHi<|end|>";
    if (tokenize(t, v, s, strlen(s), true, true, &ids, &n)) {
        /* BOS, <|user|>, "Hi" with its SentencePiece space, <|end|>: Phi-3's
         * special tokens swallow the whitespace after them (llama.cpp's
         * rule), so the newline is gone */
        CHECKF(t, n == 4 && ids[0] == 1 && ids[1] == 32010 && ids[2] == 6324 && ids[3] == 32007, "%zu ids", n);
        char *back;
        size_t bl;
        if (CHECK_OK(t, nm_detokenize(v, ids, n, true, true, &back, &bl, &err), err)) {
            CHECKF(t, strcmp(back, "<s><|user|>Hi<|end|>") == 0, "'%s'", back);
            free(back);
        }
        free(ids);
    }
    nm_vocab_free(v);

    /* BPE: <|endoftext|> is EOS and end of generation; pieces unmap bytes */
    v = load_vocab(t, nm_test_shared("vocab/ggml-vocab-gpt-2.gguf"), NULL);
    if (!v) return;
    CHECK(t, nm_vocab_eos(v) == 50256 && nm_vocab_is_eog(v, 50256) && nm_vocab_eot(v) == 50256);
    CHECK(t, nm_vocab_is_control(v, 50256));
    CHECK(t, !nm_vocab_add_bos(v));
    int32_t the = -1;
    if (tokenize(t, v, " the", 4, false, false, &ids, &n)) {
        CHECK(t, n == 1);
        the = ids[0];
        free(ids);
    }
    CHECK(t, nm_token_to_piece(v, the, buf, sizeof buf, false) == 4 && memcmp(buf, " the", 4) == 0);
    CHECK(t, strcmp(nm_vocab_token_text(v, the), "\xc4\xa0the") == 0); /* Ġthe */
    s = "a<|endoftext|>b";
    if (tokenize(t, v, s, strlen(s), false, true, &ids, &n)) {
        CHECK(t, n == 3 && ids[1] == 50256);
        free(ids);
    }
    if (tokenize(t, v, s, strlen(s), false, false, &ids, &n)) {
        CHECK(t, n > 3);
        free(ids);
    }
    nm_vocab_free(v);
}

/* ======================================================================== */
/* Long inputs: correctness checked, time printed (not asserted)            */
/* ======================================================================== */

static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void long_case(nm_test *t, const nm_vocab *v, const char *what, const char *s, size_t n) {
    double t0 = now_s(), c0 = cpu_s();
    int32_t *ids;
    size_t k;
    if (!tokenize(t, v, s, n, false, false, &ids, &k)) return;
    double dt = now_s() - t0, dc = cpu_s() - c0;
    /* wall time grows when other processes share the cores; CPU time does not */
    printf("  %-44s %8zu bytes -> %7zu tokens in %6.1f ms (CPU %6.1f ms)\n", what, n, k, dt * 1e3, dc * 1e3);
    char *back;
    size_t bl;
    nm_err err = {0};
    if (CHECK_OK(t, nm_detokenize(v, ids, k, true, false, &back, &bl, &err), err)) {
        CHECKF(t, bl == n && memcmp(back, s, n) == 0, "%s: round trip differs", what);
        free(back);
    }
    CHECK(t, k > 0 && k <= n + 1);
    free(ids);
}

static void test_long_inputs(nm_test *t) {
    size_t big = 1u << 20;
    char *s = malloc(big);
    if (!CHECK(t, s != NULL)) return;
    nm_rng r;
    nm_rng_seed(&r, 3);
    const char *names[] = {"vocab/ggml-vocab-llama-spm.gguf", "vocab/ggml-vocab-gpt-2.gguf",
                           "vocab/ggml-vocab-starcoder.gguf", "vocab/ggml-vocab-deepseek-coder.gguf"};
    for (size_t vi = 0; vi < 4; vi++) {
        nm_vocab *v = load_vocab(t, nm_test_shared(names[vi]), NULL);
        if (!v) continue;
        char what[128];
        printf("  %s\n", names[vi]);
        /* the megabyte for one vocabulary of each kind; the others get the
         * 100 kB inputs (and test_pretok_adversarial) */
        size_t len = vi < 2 ? big : big / 10;
        for (size_t i = 0; i < len; i++) s[i] = (char)('a' + nm_rng_u64(&r) % 26);
        snprintf(what, sizeof what, "%s line of random letters, no space", vi < 2 ? "1 MiB" : "100 kB");
        long_case(t, v, what, s, len);
        memset(s, 'a', 100000);
        long_case(t, v, "100000 x 'a'", s, 100000);
        memset(s, ' ', 100000);
        s[99999] = 'x';
        long_case(t, v, "99999 spaces then 'x'", s, 100000);
        for (size_t i = 0; i < 100000; i++) s[i] = (char)('0' + i % 10);
        long_case(t, v, "100000 digits", s, 100000);
        for (size_t i = 0; i + 4 <= 100000; i += 4) memcpy(s + i, "\xf0\x9f\xa6\x99", 4);
        long_case(t, v, "25000 x U+1F999", s, 100000);
        nm_vocab_free(v);
    }
    free(s);
}


/* Every pre-tokenizer type on inputs built to make regexes backtrack (long
 * runs of spaces before a character no earlier pattern takes, of capitals,
 * of newlines...): the words must tile the text; the slowest time is
 * printed.  A quadratic pattern (deepseek-llm's "\s+$" as llama.cpp writes
 * it) would take minutes here. */
static void test_pretok_adversarial(nm_test *t) {
    static const char *const types[] = {"default", "gpt-2", "llama3", "qwen2", "starcoder", "falcon",
                                        "deepseek-coder", "deepseek-llm", "deepseek-v3", "tekken", "gpt-4o",
                                        "poro-chat", "viking", "bailingmoe", "seed-coder"};
    static const char *const units[] = {" ", "\t ", "\n", " \n", "A", "\r\n", "'", "!", "1", "\xc3\xa9", "\xe4\xb8\x96",
                                        "\xf0\x9f\xa6\x99", "\xff", "a ", " \xe2\x80\x83"};
    static const char *const ends[] = {"1", "x", "\xe4\xb8\x96", "\xf0\x9f\xa6\x99", "", "!"};
    size_t n = 50000; /* a quadratic pattern would need ~10^9 steps */
    char *s = malloc(n + 8);
    if (!CHECK(t, s != NULL)) return;
    double worst = 0;
    char worst_what[256] = "";
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        nm_pretok *p;
        nm_pretok_flags fl;
        nm_err err = {0};
        if (!CHECK_OK(t, nm_pretok_new(types[ti], &p, &fl, NULL, &err), err)) continue;
        CHECKF(t, fl.known, "%s unknown", types[ti]);
        for (size_t ui = 0; ui < sizeof units / sizeof units[0]; ui++) {
            for (size_t ei = 0; ei < sizeof ends / sizeof ends[0]; ei++) {
                size_t ul = strlen(units[ui]), len = 0;
                while (len + ul <= n) {
                    memcpy(s + len, units[ui], ul);
                    len += ul;
                }
                memcpy(s + len, ends[ei], strlen(ends[ei]));
                len += strlen(ends[ei]);
                size_t *words, nw;
                double t0 = now_s();
                if (!CHECK_OK(t, nm_pretok_split(p, s, len, &words, &nw, &err), err)) continue;
                double dt = now_s() - t0;
                size_t at = 0;
                bool tiled = true;
                for (size_t k = 0; k < nw; k++) {
                    tiled &= words[2 * k] == at && words[2 * k + 1] > 0;
                    at += words[2 * k + 1];
                }
                CHECKF(t, tiled && at == len, "%s: words do not tile the text (unit %zu, end %zu)", types[ti], ui, ei);
                free(words);
                if (dt > worst) {
                    worst = dt;
                    snprintf(worst_what, sizeof worst_what, "%s, unit #%zu, end #%zu", types[ti], ui, ei);
                }
            }
        }
        nm_pretok_free(p);
    }
    printf("  slowest split of 50 kB: %.1f ms (%s)\n", worst * 1e3, worst_what);
    free(s);
}

/* ======================================================================== */
/* Hostile and unusual metadata                                             */
/* ======================================================================== */

typedef struct meta {
    const char *model;      /* NULL: key absent */
    const char *pre;        /* NULL: key absent */
    const char *const *tokens;
    uint64_t n_tokens;
    int n_scores;           /* -1: absent */
    int n_types;            /* -1: absent */
    const int32_t *types;
    const char *const *merges;
    uint64_t n_merges;      /* with merges == NULL: absent */
    int64_t bos;            /* -2: absent */
    int add_bos;            /* -1: absent */
    bool tokens_as_ints;    /* tokenizer.ggml.tokens of the wrong type */
    int add_space_prefix;   /* -1: absent */
} meta;

static nm_status load_meta(nm_test *t, const meta *m, const char *name, nm_vocab **v, nm_err *err, logbuf *lb) {
    nm_gguf_writer *w = nm_gguf_writer_new(3);
    if (m->model) nm_gguf_writer_set_str(w, "tokenizer.ggml.model", m->model);
    if (m->pre) nm_gguf_writer_set_str(w, "tokenizer.ggml.pre", m->pre);
    if (m->tokens_as_ints) {
        int32_t x[3] = {1, 2, 3};
        nm_gguf_writer_set_arr(w, "tokenizer.ggml.tokens", NM_GGUF_INT32, x, 3);
    } else if (m->tokens) {
        nm_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", m->tokens, m->n_tokens);
    }
    if (m->n_scores >= 0) {
        float sc[64] = {0};
        for (int i = 0; i < 64; i++) sc[i] = (float)-i;
        nm_gguf_writer_set_arr(w, "tokenizer.ggml.scores", NM_GGUF_FLOAT32, sc, (uint64_t)m->n_scores);
    }
    if (m->n_types >= 0) nm_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", NM_GGUF_INT32, m->types, (uint64_t)m->n_types);
    if (m->merges) nm_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", m->merges, m->n_merges);
    if (m->bos != -2) nm_gguf_writer_set_i64(w, "tokenizer.ggml.bos_token_id", m->bos);
    if (m->add_bos >= 0) nm_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", m->add_bos != 0);
    if (m->add_space_prefix >= 0)
        nm_gguf_writer_set_bool(w, "tokenizer.ggml.add_space_prefix", m->add_space_prefix != 0);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.gguf", nm_test_tmpdir(), name);
    nm_err werr = {0};
    nm_status st = nm_gguf_writer_write(w, path, &werr);
    nm_gguf_writer_free(w);
    if (!CHECK_OK(t, st, werr)) return st;
    nm_gguf *g;
    if (!CHECK_OK(t, nm_gguf_open(path, &g, &werr), werr)) return NM_ERR_IO;
    nm_log log = {log_collect, lb, NM_LOG_DEBUG};
    *v = NULL;
    st = nm_vocab_from_gguf(g, v, &log, err);
    nm_gguf_free(g);
    return st;
}

/* "xy" is a token although neither "x" nor "y" is: SentencePiece still
 * merges x + y (the merge tables give such characters ids of their own) */
static const char *const SPM_TOKENS[] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "b", "\xe2\x96\x81" "a", "ab",
                                         "<0x61>", "xy"};
static const int32_t SPM_TYPES[] = {2, 3, 3, 1, 1, 1, 1, 1, 6, 1};
/* likewise the merge "x y" of characters that are not tokens */
static const char *const BPE_TOKENS[] = {"a", "b", "c", "ab", "abc", "\xc4\xa0", "\xc4\xa0" "a", "<|endoftext|>", "xy"};
static const char *const BPE_MERGES[] = {"a b", "ab c", "\xc4\xa0 a", "nospace", "", "x y"};

static void test_hostile_metadata(nm_test *t) {
    nm_err err;
    nm_vocab *v;
    logbuf lb;
    meta base = {"llama", NULL, SPM_TOKENS, 10, 10, 10, SPM_TYPES, NULL, 0, -2, -1, false, -1};

    /* a tiny valid SPM vocabulary works, byte fallback included */
    memset(&lb, 0, sizeof lb);
    err = (nm_err){0};
    if (CHECK_OK(t, load_meta(t, &base, "spm-ok", &v, &err, &lb), err)) {
        int32_t *ids;
        size_t n;
        if (tokenize(t, v, "ab a", 4, true, false, &ids, &n)) {
            /* "▁ab▁a": ▁a (-6) vs ab (-7): ▁a merges first, then ab is left */
            CHECKF(t, n == 4 && ids[0] == 1 && ids[1] == 6 && ids[2] == 5 && ids[3] == 6, "%zu ids", n);
            free(ids);
        }
        if (tokenize(t, v, "z", 1, false, false, &ids, &n)) {
            /* 'z' has no token and no <0x7A>: the unknown token */
            CHECKF(t, n == 2 && ids[0] == 3 && ids[1] == 0, "%zu ids", n);
            free(ids);
        }
        if (tokenize(t, v, "xyx", 3, false, false, &ids, &n)) {
            /* ▁ xy x: the lone x has no token: unknown */
            CHECKF(t, n == 3 && ids[0] == 3 && ids[1] == 9 && ids[2] == 0, "%zu ids", n);
            free(ids);
        }
        nm_vocab_free(v);
    }

    /* tokenizer.ggml.add_space_prefix = false: no space in front */
    meta m = base;
    m.add_space_prefix = 0;
    err = (nm_err){0};
    if (CHECK_OK(t, load_meta(t, &m, "spm-noprefix", &v, &err, &lb), err)) {
        int32_t *ids;
        size_t n;
        if (tokenize(t, v, "ab a", 4, false, false, &ids, &n)) {
            CHECKF(t, n == 2 && ids[0] == 7 && ids[1] == 6, "%zu ids", n); /* ab ▁a */
            free(ids);
        }
        char *back;
        size_t bl;
        int32_t two[2] = {6, 7}; /* ▁a ab: no space to remove */
        if (CHECK_OK(t, nm_detokenize(v, two, 2, true, false, &back, &bl, &err), err)) {
            CHECK(t, strcmp(back, " aab") == 0);
            free(back);
        }
        nm_vocab_free(v);
    }

    m = base;
    m.model = NULL;
    err = (nm_err){0};
    CHECK(t, load_meta(t, &m, "no-model", &v, &err, &lb) == NM_ERR_NOT_FOUND && strstr(err.msg, "tokenizer.ggml.model"));

    m = base;
    m.model = "bert";
    err = (nm_err){0};
    CHECK(t, load_meta(t, &m, "bert", &v, &err, &lb) == NM_ERR_UNSUPPORTED && strstr(err.msg, "bert"));

    m = base;
    m.tokens = NULL;
    err = (nm_err){0};
    CHECK(t, load_meta(t, &m, "no-tokens", &v, &err, &lb) == NM_ERR_FORMAT && strstr(err.msg, "tokenizer.ggml.tokens"));

    m = base;
    m.tokens_as_ints = true;
    err = (nm_err){0};
    CHECK(t, load_meta(t, &m, "int-tokens", &v, &err, &lb) == NM_ERR_FORMAT && strstr(err.msg, "wrong type"));

    m = base;
    m.n_scores = 4;
    err = (nm_err){0};
    CHECK(t, load_meta(t, &m, "short-scores", &v, &err, &lb) == NM_ERR_FORMAT && strstr(err.msg, "scores"));

    m = base;
    m.n_types = 2;
    err = (nm_err){0};
    CHECK(t, load_meta(t, &m, "short-types", &v, &err, &lb) == NM_ERR_FORMAT && strstr(err.msg, "token_type"));

    /* out-of-range BOS: a warning, the default (1) stays */
    m = base;
    m.bos = 9999;
    memset(&lb, 0, sizeof lb);
    err = (nm_err){0};
    if (CHECK_OK(t, load_meta(t, &m, "bad-bos", &v, &err, &lb), err)) {
        CHECK(t, nm_vocab_bos(v) == 1);
        CHECKF(t, strstr(lb.text, "bos_token_id = 9999") != NULL, "log: %s", lb.text);
        nm_vocab_free(v);
    }
    /* -1: no BOS; then add_bos cannot be honoured */
    m = base;
    m.bos = -1;
    m.add_bos = 1;
    err = (nm_err){0};
    CHECK(t, load_meta(t, &m, "add-bos-none", &v, &err, &lb) == NM_ERR_FORMAT && strstr(err.msg, "add_bos"));
    m.add_bos = 0;
    err = (nm_err){0};
    if (CHECK_OK(t, load_meta(t, &m, "no-bos", &v, &err, &lb), err)) {
        CHECK(t, nm_vocab_bos(v) == -1 && !nm_vocab_add_bos(v));
        nm_vocab_free(v);
    }

    /* token types outside the known range: undefined tokens, empty pieces */
    int32_t weird[10] = {2, 3, 3, 1, 1, 1, 1, 77, -5, 1};
    m = base;
    m.types = weird;
    err = (nm_err){0};
    if (CHECK_OK(t, load_meta(t, &m, "weird-types", &v, &err, &lb), err)) {
        char buf[8];
        CHECK(t, nm_token_to_piece(v, 7, buf, sizeof buf, true) == 0);
        int32_t *ids;
        size_t n;
        if (tokenize(t, v, "ab", 2, false, false, &ids, &n)) free(ids);
        nm_vocab_free(v);
    }

    /* BPE without merges: an error naming the key */
    meta bpe = {"gpt2", "gpt-2", BPE_TOKENS, 9, -1, -1, NULL, NULL, 0, -2, -1, false, -1};
    err = (nm_err){0};
    CHECK(t, load_meta(t, &bpe, "bpe-no-merges", &v, &err, &lb) == NM_ERR_FORMAT && strstr(err.msg, "merges"));

    /* malformed merges are skipped with a warning; an unknown pre-tokenizer
     * warns and uses the GPT-2 pattern */
    bpe.merges = BPE_MERGES;
    bpe.n_merges = 6;
    bpe.pre = "no-such-pre";
    memset(&lb, 0, sizeof lb);
    err = (nm_err){0};
    if (CHECK_OK(t, load_meta(t, &bpe, "bpe-odd", &v, &err, &lb), err)) {
        CHECKF(t, strstr(lb.text, "no-such-pre") && strstr(lb.text, "GPT-2"), "log: %s", lb.text);
        CHECKF(t, strstr(lb.text, "2 merges are not"), "log: %s", lb.text);
        int32_t *ids;
        size_t n;
        if (tokenize(t, v, "abc abx", 7, false, false, &ids, &n)) {
            /* abc | Ġ ab x: "a b" (rank 0) beats "Ġ a" (rank 2); no token
             * for x and no unknown token: x is dropped */
            CHECKF(t, n == 3 && ids[0] == 4 && ids[1] == 5 && ids[2] == 3, "%zu ids: %d %d %d", n, n ? ids[0] : -1,
                   n > 1 ? ids[1] : -1, n > 2 ? ids[2] : -1);
            free(ids);
        }
        if (tokenize(t, v, "xy", 2, false, false, &ids, &n)) {
            CHECKF(t, n == 1 && ids[0] == 8, "%zu ids", n);
            free(ids);
        }
        CHECK(t, nm_vocab_bos(v) == -1 || nm_vocab_bos(v) < 9);
        nm_vocab_free(v);
    }

    /* missing pre-tokenizer: warning, llama.cpp's 'default' patterns */
    bpe.pre = NULL;
    memset(&lb, 0, sizeof lb);
    err = (nm_err){0};
    if (CHECK_OK(t, load_meta(t, &bpe, "bpe-no-pre", &v, &err, &lb), err)) {
        CHECKF(t, strstr(lb.text, "tokenizer.ggml.pre"), "log: %s", lb.text);
        nm_vocab_free(v);
    }

    /* every known pre-tokenizer type compiles and splits text sanely */
    static const char *const pres[] = {"default", "llama3", "llama-bpe", "qwen2", "smollm", "starcoder", "refact",
                                       "mpt", "falcon", "deepseek-coder", "deepseek-llm", "tekken", "command-r",
                                       "olmo", "stablelm2", "gpt-2", "deepseek-v3", "poro-chat", "viking", "gpt-4o",
                                       "bailingmoe", "seed-coder", "chatglm-bpe", "dbrx"};
    bpe.bos = 7; /* llama3 and tekken add BOS by default */
    for (size_t i = 0; i < sizeof pres / sizeof pres[0]; i++) {
        bpe.pre = pres[i];
        memset(&lb, 0, sizeof lb);
        err = (nm_err){0};
        if (!CHECKF(t, load_meta(t, &bpe, "bpe-pre", &v, &err, &lb) == NM_OK, "%s: %s", pres[i], err.msg)) continue;
        CHECKF(t, !strstr(lb.text, "unknown pre-tokenizer"), "%s reported unknown", pres[i]);
        const char *s = "Hello, y'all! \xc3\xa9t\xc3\xa9 123456 \xe4\xb8\x96\xe7\x95\x8c  \n\n x\xff";
        int32_t *ids;
        size_t n;
        if (tokenize(t, v, s, strlen(s), false, false, &ids, &n)) free(ids);
        nm_vocab_free(v);
    }
}

int main(void) {
    nm_test_run("tokenizer_llamacpp_vectors", test_vocab_vectors);
    nm_test_run("tokenizer_golden_prompts", test_golden_prompts);
    nm_test_run("tokenizer_cli", test_cli_tokenize);
    nm_test_run("tokenizer_roundtrip_random_utf8", test_roundtrip_random_utf8);
    nm_test_run("tokenizer_roundtrip_random_bytes", test_roundtrip_random_bytes);
    nm_test_run("tokenizer_spm_space_marker", test_spm_marker);
    nm_test_run("tokenizer_pieces_specials_stream", test_pieces_and_specials);
    nm_test_run("tokenizer_long_inputs", test_long_inputs);
    nm_test_run("tokenizer_pretok_adversarial", test_pretok_adversarial);
    nm_test_run("tokenizer_hostile_metadata", test_hostile_metadata);
    return nm_test_finish();
}
