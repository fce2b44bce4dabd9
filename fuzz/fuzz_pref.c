/* fuzz_pref.c - libFuzzer target for the preference-pair reader (DPO data).
 * The first byte picks the sequence length and whether bad records are
 * skipped; the rest is the file.  Whatever the bytes, the reader returns an
 * error or whole pairs whose examples fit the sequence and carry at least
 * one answer token each. */
#include "train/pref.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Loaded once per fuzzing process: a fuzz target's only state. */
static nm_vocab *vocab;

static nm_vocab *load(void) {
    if (vocab) return vocab;
    const char *shared = getenv("NOMOAT_SHARED");
    char path[1024];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", shared && *shared ? shared : "../shared");
    nm_gguf *g;
    nm_err err;
    if (nm_gguf_open(path, &g, &err) != NM_OK || nm_vocab_from_gguf(g, &vocab, NULL, &err) != NM_OK) {
        fprintf(stderr, "fuzz_pref: %s\n", err.msg);
        abort();
    }
    nm_gguf_free(g);
    return vocab;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    nm_data_opts o = {0};
    o.vocab = load();
    o.tmpl = (data[0] & 0x80) ? NM_CHAT_TEMPLATE_CHATML : nm_chat_template_from_name("llama2");
    o.seq_len = 1 + (data[0] & 0x3f) * 4;
    o.skip_bad = data[0] & 0x40;
    nm_dataset d;
    nm_err err;
    if (nm_pref_load_text("fuzz.json", (const char *)data + 1, size - 1, &o, &d, &err) != NM_OK) return 0;
    if (d.n_ex % 2) abort();
    for (int64_t e = 0; e < d.n_ex; e++) {
        if (d.ex_len[e] < 2 || d.ex_len[e] > o.seq_len + 1) abort();
        int64_t trained = 0;
        for (int64_t i = 1; i < d.ex_len[e]; i++) trained += d.trn[d.ex_off[e] + i] != 0;
        if (!trained) abort();
    }
    nm_dataset_deinit(&d);
    return 0;
}
