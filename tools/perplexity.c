/* perplexity.c - `nomoat perplexity -m MODEL -f FILE`: perplexity over a
 * text, computed as llama.cpp's perplexity tool does (see nm_perplexity). */
#include "cli.h"
#include "base/base.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static void help(void) {
    printf("usage: nomoat perplexity -m MODEL.gguf -f FILE [options]\n\n"
           "Tokenizes FILE (BOS first), cuts it into chunks of --ctx tokens, runs each chunk\n"
           "from an empty cache with BOS as its first token, and scores the second half of\n"
           "every chunk (each scored token sees at least ctx/2 tokens).  Prints the\n"
           "perplexity and its standard error, like llama.cpp's perplexity tool.\n\n"
           "  -m, --model FILE        the GGUF model (with a tokenizer)\n"
           "  -f, --file FILE         the text\n"
           "  -c, --ctx N             chunk length in tokens (default 512, at most the\n"
           "                          model's training context)\n"
           "  --chunks N              score at most N chunks (default: all)\n"
           "  -t, --threads N         threads (default: all available CPUs)\n"
           "  --kv-type f16|f32       KV cache precision (default f16)\n"
           "  --json                  print one JSON object\n"
           "  -v, --verbose           print the running perplexity after each chunk\n\n");
    cli_lora_help(stdout);
}

typedef struct ppl_progress {
    bool verbose;
    double t0;
} ppl_progress;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int on_chunk(void *user, uint64_t done, uint64_t total, const char *what) {
    const ppl_progress *p = user;
    (void)what;
    if (p->verbose)
        fprintf(stderr, "nomoat: chunk %llu/%llu (%.1f s)\n", (unsigned long long)done, (unsigned long long)total,
                now_s() - p->t0);
    return 0;
}

int cmd_perplexity(int argc, char **argv) {
    const char *model = NULL, *file = NULL;
    int64_t n_ctx = 512, n_chunks = -1, n_threads = 0;
    nm_type kv_type = NM_TYPE_F16;
    bool json = false, verbose = false;
    cli_loras loras = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int lrc;
        if (cli_is_help(a)) {
            help();
            return 0;
        } else if (cli_lora_stack_opt(argc, argv, &i, &loras, &lrc)) {
            if (lrc) return lrc;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(model = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
            if (!(file = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, 4, 1 << 20, &n_ctx))
                return cli_usage("perplexity", "--ctx needs a token count from 4, got '%s'", v);
        } else if (!strcmp(a, "--chunks")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, 1, INT32_MAX, &n_chunks))
                return cli_usage("perplexity", "--chunks needs a count from 1, got '%s'", v);
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, 0, 1024, &n_threads))
                return cli_usage("perplexity", "--threads needs a count from 0 (all) to 1024, got '%s'", v);
        } else if (!strcmp(a, "--kv-type")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!strcmp(v, "f16")) kv_type = NM_TYPE_F16;
            else if (!strcmp(v, "f32")) kv_type = NM_TYPE_F32;
            else return cli_usage("perplexity", "--kv-type is f16 or f32, got '%s'", v);
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = true;
        } else {
            return cli_usage("perplexity", "unknown argument '%s'", a);
        }
    }
    if (!model) return cli_usage("perplexity", "missing -m MODEL.gguf");
    if (!file) return cli_usage("perplexity", "missing -f FILE");

    nm_err err = {0};
    nm_log log = cli_logger(verbose);
    nm_model *m = NULL;
    nm_context *c = NULL;
    char *text = NULL;
    int32_t *ids = NULL;
    size_t len = 0, n_ids = 0;
    int rc = 1;
    if (nm_read_file(file, &text, &len, &err) || nm_model_load(model, &log, &m, &err)) goto out;
    const nm_vocab *v = nm_model_vocab(m);
    if (!v) {
        nm_err_set(&err, NM_ERR_UNSUPPORTED, "%s has no tokenizer", model);
        goto out;
    }
    nm_model_info info;
    nm_model_get_info(m, &info);
    if (n_ctx > info.n_ctx_train) n_ctx = info.n_ctx_train;
    if (nm_tokenize(v, text, len, true, false, &ids, &n_ids, &err)) goto out;
    if (n_chunks > 0 && (size_t)(n_chunks * n_ctx) < n_ids) n_ids = (size_t)(n_chunks * n_ctx);
    if (n_ids < (size_t)n_ctx) {
        nm_err_set(&err, NM_ERR_ARG, "%s has %zu tokens, fewer than one chunk of %lld (lower --ctx)", file, n_ids,
                   (long long)n_ctx);
        goto out;
    }
    nm_context_params cp = nm_context_default_params();
    cp.n_ctx = (int32_t)n_ctx;
    cp.n_batch = (int32_t)n_ctx;
    cp.n_threads = (int32_t)n_threads;
    cp.logits_all = true;
    cp.kv_type = kv_type;
    if (nm_context_new(m, &cp, &c, &err) || cli_loras_attach(&loras, m, c, &log, &err)) goto out;
    ppl_progress pp = {verbose, now_s()};
    nm_perplexity_result r;
    if (nm_perplexity(c, ids, n_ids, nm_vocab_add_bos(v) ? nm_vocab_bos(v) : -1, on_chunk, &pp, &r, &err)) goto out;
    double secs = now_s() - pp.t0;
    if (json) {
        printf("{\"perplexity\": %.6f, \"stderr\": %.6f, \"nll\": %.6f, \"nll_stderr\": %.6f, \"tokens_scored\": %lld, "
               "\"chunks\": %d, \"ctx\": %lld, \"seconds\": %.3f}\n",
               r.ppl, r.ppl_se, r.nll, r.nll_se, (long long)r.n_scored, r.n_chunks, (long long)n_ctx, secs);
    } else {
        printf("perplexity: %.4f +/- %.4f (%lld tokens scored in %d chunks of %lld; %.1f s)\n", r.ppl, r.ppl_se,
               (long long)r.n_scored, r.n_chunks, (long long)n_ctx, secs);
    }
    rc = 0;
out:
    if (rc) cli_fail(&err);
    nm_context_free(c);
    cli_loras_free(&loras);
    nm_model_free(m);
    free(ids);
    free(text);
    return rc;
}
