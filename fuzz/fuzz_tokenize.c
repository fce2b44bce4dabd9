/* fuzz_tokenize.c - libFuzzer target for the tokenizers.  The first byte
 * picks a vocabulary (SentencePiece: LLaMA 32k, stories260K; byte-level BPE:
 * GPT-2, deepseek-coder, falcon) and whether special tokens are parsed; the
 * rest is the text.  Every id must be in range, and for byte-level BPE,
 * where every byte has a token, decode(encode(text)) must give the text back
 * exactly, whatever the bytes (invalid UTF-8 included). */
#include "nomoat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define N_VOCABS 5
static const char *const VOCAB_FILES[N_VOCABS] = {
    "vocab/ggml-vocab-llama-spm.gguf", "models/stories260K.gguf", "vocab/ggml-vocab-gpt-2.gguf",
    "vocab/ggml-vocab-deepseek-coder.gguf", "vocab/ggml-vocab-falcon.gguf",
};
/* Vocabularies where every byte has its own normal token, so that any bytes
 * round-trip exactly.  deepseek-coder is byte-level BPE too, but 13 of its
 * byte characters ("\xc3\xbf" for byte 0xff, ...) exist only as user-defined
 * tokens, which decode as their literal text (as in llama.cpp); falcon has
 * no token for some control bytes. */
static const bool EXACT_BYTES[N_VOCABS] = {false, false, true, false, false};

/* Loaded once per fuzzing process: a fuzz target's only state. */
static nm_vocab *vocabs[N_VOCABS];

static nm_vocab *load(int i) {
    if (vocabs[i]) return vocabs[i];
    const char *shared = getenv("NOMOAT_SHARED");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", shared && *shared ? shared : "../shared", VOCAB_FILES[i]);
    nm_gguf *g;
    nm_err err;
    if (nm_gguf_open(path, &g, &err) != NM_OK) {
        fprintf(stderr, "fuzz_tokenize: %s\n", err.msg);
        abort();
    }
    if (nm_vocab_from_gguf(g, &vocabs[i], NULL, &err) != NM_OK) {
        fprintf(stderr, "fuzz_tokenize: %s\n", err.msg);
        abort();
    }
    nm_gguf_free(g);
    return vocabs[i];
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF). */
static bool valid_utf8(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xe0) == 0xc0) { k = 1; cp = c & 0x1f; }
        else if ((c & 0xf0) == 0xe0) { k = 2; cp = c & 0x0f; }
        else if ((c & 0xf8) == 0xf0) { k = 3; cp = c & 0x07; }
        else return false;
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (p[i + j] & 0xc0) != 0x80) return false;
            cp = cp << 6 | (p[i + j] & 0x3f);
        }
        static const uint32_t min[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += k + 1;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int which = data[0] % N_VOCABS;
    bool parse_special = (data[0] / N_VOCABS) & 1;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    nm_vocab *v = load(which);
    int32_t *ids = NULL;
    size_t n = 0;
    nm_err err;
    if (nm_tokenize(v, text, len, false, parse_special, &ids, &n, &err) != NM_OK) abort();
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= nm_vocab_n_tokens(v)) abort();
    char *out = NULL;
    size_t out_len = 0;
    if (nm_detokenize(v, ids, n, true, parse_special, &out, &out_len, &err) != NM_OK) abort();
    if (EXACT_BYTES[which] && !parse_special && (out_len != len || memcmp(out, text, len) != 0)) {
        fprintf(stderr, "fuzz_tokenize: BPE round trip changed the text (%zu -> %zu bytes)\n", len, out_len);
        abort();
    }
    /* streaming must produce the same bytes as the one-shot decode */
    nm_detok_stream s;
    nm_detok_stream_init(&s, v, parse_special);
    char *acc = malloc(out_len + 64 + n * 8);
    size_t acc_len = 0;
    for (size_t i = 0; i < n && acc; i++) {
        int32_t k = nm_detok_stream_push(&s, ids[i], acc + acc_len, out_len + 64 + n * 8 - acc_len);
        if (k < 0) abort();
        acc_len += (size_t)k;
    }
    if (acc) {
        int32_t k = nm_detok_stream_flush(&s, acc + acc_len, out_len + 64 + n * 8 - acc_len);
        if (k < 0) abort();
        acc_len += (size_t)k;
        /* The stream prints U+FFFD for invalid bytes (documented); for valid
         * text it must give exactly the one-shot result. */
        if (EXACT_BYTES[which] && !parse_special && valid_utf8(data + 1, len) &&
            (acc_len != out_len || memcmp(acc, out, out_len) != 0)) {
            fprintf(stderr, "fuzz_tokenize: streamed text differs from one-shot decode\n");
            abort();
        }
    }
    free(acc);
    free(out);
    free(ids);
    return 0;
}
