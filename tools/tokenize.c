/* tokenize.c - `nomoat tokenize -m MODEL.gguf [-p TEXT | -f FILE] [options]`:
 * prints the token ids of a text as the model's tokenizer makes them. */
#include "cli.h"
#include "base/base.h"

#include <stdlib.h>
#include <string.h>

static void help(void) {
    printf("usage: nomoat tokenize -m MODEL.gguf [-p TEXT | -f FILE] [options]\n\n"
           "Tokenizes a text with the tokenizer stored in a GGUF file and prints the ids,\n"
           "separated by single spaces, on one line.\n\n"
           "  -m, --model FILE     the GGUF file whose tokenizer.ggml.* keys to use\n"
           "  -p, --prompt TEXT    the text to tokenize\n"
           "  -f, --file FILE      tokenize the bytes of FILE ('-' for standard input)\n"
           "  --no-bos             do not add BOS/EOS, whatever the vocabulary says\n"
           "  --parse-special      recognise control-token texts such as <s> in the text\n"
           "  --json               print a JSON array (with --pieces: objects {id, piece})\n"
           "  --pieces             one token per line: the id and its text as a JSON string\n"
           "                       (bytes of a character split across tokens show as \\xNN)\n");
}

static nm_status read_stdin(char **out, size_t *len, nm_err *err) {
    nm_buf b;
    nm_buf_init(&b);
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, stdin)) > 0) nm_buf_push(&b, tmp, n);
    nm_buf_push(&b, "", 1);
    if (ferror(stdin) || b.oom) {
        nm_buf_deinit(&b);
        return nm_err_set(err, NM_ERR_IO, "standard input: read failed");
    }
    *out = (char *)b.data;
    *len = b.len - 1;
    return NM_OK;
}

/* The piece as a JSON string; bytes that are not valid UTF-8 (part of a
 * character split across tokens) are written as the text \xNN so the
 * output stays valid UTF-8. */
static void json_piece(nm_buf *b, const char *s, size_t n) {
    nm_buf_push(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t l = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        bool ok = l > 0 && i + l <= n;
        for (size_t k = 1; ok && k < l; k++) ok = ((unsigned char)s[i + k] & 0xc0) == 0x80;
        if (ok && l == 3) ok = !(c == 0xe0 && (unsigned char)s[i + 1] < 0xa0) && !(c == 0xed && (unsigned char)s[i + 1] > 0x9f);
        if (ok && l == 4) ok = !(c == 0xf0 && (unsigned char)s[i + 1] < 0x90) && !(c == 0xf4 && (unsigned char)s[i + 1] > 0x8f);
        if (!ok) {
            nm_buf_printf(b, "\\x%02x", c);
            i++;
        } else if (l == 1) {
            if (c == '"' || c == '\\') nm_buf_printf(b, "\\%c", c);
            else if (c == '\n') nm_buf_push(b, "\\n", 2);
            else if (c == '\t') nm_buf_push(b, "\\t", 2);
            else if (c < 0x20 || c == 0x7f) nm_buf_printf(b, "\\u%04x", c);
            else nm_buf_push(b, &s[i], 1);
            i++;
        } else {
            nm_buf_push(b, s + i, l);
            i += l;
        }
    }
    nm_buf_push(b, "\"", 1);
}

static void print_piece(const nm_vocab *v, int32_t id, nm_buf *b) {
    char small[256];
    int32_t n = nm_token_to_piece(v, id, small, sizeof small, true);
    if (n >= 0) {
        json_piece(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)-n);
    if (!big) return;
    n = nm_token_to_piece(v, id, big, (size_t)-n, true);
    json_piece(b, big, n > 0 ? (size_t)n : 0);
    free(big);
}

int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *file = NULL;
    bool no_bos = false, parse_special = false, json = false, pieces = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            help();
            return 0;
        } else if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) {
            if (!(model = cli_value(argc, argv, &i))) return 2;
        } else if (strcmp(a, "-p") == 0 || strcmp(a, "--prompt") == 0) {
            if (!(prompt = cli_value(argc, argv, &i))) return 2;
        } else if (strcmp(a, "-f") == 0 || strcmp(a, "--file") == 0) {
            if (!(file = cli_value(argc, argv, &i))) return 2;
        } else if (strcmp(a, "--no-bos") == 0) {
            no_bos = true;
        } else if (strcmp(a, "--parse-special") == 0) {
            parse_special = true;
        } else if (strcmp(a, "--json") == 0) {
            json = true;
        } else if (strcmp(a, "--pieces") == 0) {
            pieces = true;
        } else {
            return cli_usage("tokenize", "unknown argument '%s'", a);
        }
    }
    if (!model) return cli_usage("tokenize", "missing -m MODEL.gguf");
    if (!prompt == !file) return cli_usage("tokenize", "give exactly one of -p TEXT and -f FILE");

    nm_err err = {0};
    char *text = NULL;
    size_t len = 0;
    if (file) {
        nm_status st = strcmp(file, "-") == 0 ? read_stdin(&text, &len, &err) : nm_read_file(file, &text, &len, &err);
        if (st) return cli_fail(&err);
    }
    nm_log log = cli_logger(false);
    nm_gguf *g = NULL;
    nm_vocab *v = NULL;
    if (nm_gguf_open(model, &g, &err) || nm_vocab_from_gguf(g, &v, &log, &err)) {
        nm_gguf_free(g);
        free(text);
        return cli_fail(&err);
    }
    nm_gguf_free(g);

    int32_t *ids = NULL;
    size_t n = 0;
    nm_status st = nm_tokenize(v, file ? text : prompt, file ? len : strlen(prompt), !no_bos, parse_special, &ids, &n, &err);
    free(text);
    if (st) {
        nm_vocab_free(v);
        return cli_fail(&err);
    }

    nm_buf b;
    nm_buf_init(&b);
    if (json) nm_buf_push(&b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        if (pieces && json) {
            nm_buf_printf(&b, "%s{\"id\": %d, \"piece\": ", i ? ", " : "", ids[i]);
            print_piece(v, ids[i], &b);
            nm_buf_push(&b, "}", 1);
        } else if (pieces) {
            nm_buf_printf(&b, "%d ", ids[i]);
            print_piece(v, ids[i], &b);
            nm_buf_push(&b, "\n", 1);
        } else {
            nm_buf_printf(&b, "%s%d", i ? (json ? ", " : " ") : "", ids[i]);
        }
    }
    if (json) nm_buf_push(&b, "]", 1);
    if (json || !pieces) nm_buf_push(&b, "\n", 1);
    int rc = 0;
    if (b.oom) {
        fprintf(stderr, "nomoat: error: out of memory\n");
        rc = 1;
    } else if (fwrite(b.data, 1, b.len, stdout) != b.len || fflush(stdout) != 0) {
        fprintf(stderr, "nomoat: error: writing the output failed\n");
        rc = 1;
    }
    nm_buf_deinit(&b);
    free(ids);
    nm_vocab_free(v);
    return rc;
}
