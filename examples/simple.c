/* simple.c - the smallest complete use of the nomoat C API: load a model,
 * tokenize a prompt, decode it, then sample and decode token by token,
 * printing the text as it comes.
 *
 *   build/examples/simple MODEL.gguf "Once upon a time" [N_TOKENS]
 *
 * Greedy sampling (temperature 0), so the output is reproducible. */
#include "nomoat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const nm_err *err) {
    fprintf(stderr, "simple: %s\n", err->msg);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT [N_TOKENS]\n", argv[0]);
        return 2;
    }
    const int n_predict = argc > 3 ? atoi(argv[3]) : 32;
    nm_err err = {0};

    /* 1. the model: weights stay memory-mapped; the tokenizer comes along */
    nm_model *model;
    if (nm_model_load(argv[1], NULL, &model, &err)) return fail(&err);
    const nm_vocab *vocab = nm_model_vocab(model);
    nm_model_info info;
    nm_model_get_info(model, &info);

    /* 2. a context: KV cache and scratch for up to 256 tokens */
    nm_context_params cp = nm_context_default_params();
    cp.n_ctx = 256;
    nm_context *ctx;
    if (nm_context_new(model, &cp, &ctx, &err)) {
        nm_model_free(model);
        return fail(&err);
    }

    /* 3. a sampler: temperature 0 picks the most likely token */
    nm_sampler_params sp = nm_sampler_params_default();
    sp.temperature = 0.0f;
    nm_sampler *sampler;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = 0;
    if (nm_sampler_new(&sp, info.n_vocab, &sampler, &err)) {
        rc = fail(&err);
        goto out_ctx;
    }

    /* 4. the prompt, BOS first, processed as one batch */
    if (nm_tokenize(vocab, argv[2], strlen(argv[2]), true, false, &ids, &n_ids, &err) ||
        nm_decode(ctx, ids, (int32_t)n_ids, &err)) {
        rc = fail(&err);
        goto out;
    }
    printf("%s", argv[2]);

    /* 5. generation: sample from the last logits, print, feed back */
    nm_detok_stream ds;
    nm_detok_stream_init(&ds, vocab, false);
    ds.first = n_ids <= 1; /* keep the space after a printed prompt */
    char piece[128];
    for (int i = 0; i < n_predict; i++) {
        int32_t id = nm_sampler_sample(sampler, nm_get_logits(ctx));
        if (id < 0 || nm_vocab_is_eog(vocab, id)) break;
        int32_t k = nm_detok_stream_push(&ds, id, piece, sizeof piece);
        if (k > 0) fwrite(piece, 1, (size_t)k, stdout);
        fflush(stdout);
        if (nm_decode(ctx, &id, 1, &err)) { /* e.g. the context is full */
            rc = fail(&err);
            break;
        }
    }
    int32_t k = nm_detok_stream_flush(&ds, piece, sizeof piece);
    if (k > 0) fwrite(piece, 1, (size_t)k, stdout);
    printf("\n");

out:
    free(ids);
    nm_sampler_free(sampler);
out_ctx:
    nm_context_free(ctx);
    nm_model_free(model);
    return rc;
}
