/* run.c - `nomoat run -m MODEL -p PROMPT`: generate text from a prompt.
 *
 * The prompt is decoded as one batch, then tokens are sampled and decoded
 * one at a time.  The text streams to stdout; logs, timings and peak memory
 * go to stderr.  --json prints one object instead (prompt ids, generated
 * ids, text, and with --dump-logits the logits at the last prompt
 * position), which is what the golden tests compare. */
#include "cli.h"
#include "base/base.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static void help(void) {
    printf("usage: nomoat run -m MODEL.gguf -p PROMPT [options]\n\n"
           "Generates a continuation of PROMPT and streams it to standard output (the\n"
           "prompt is printed first).  Logs, timings and peak memory go to standard error.\n"
           "An empty prompt generates from the BOS token alone.\n\n"
           "  -m, --model FILE        the GGUF model (with a tokenizer)\n"
           "  -p, --prompt TEXT       the prompt (special-token texts are recognised)\n"
           "  -f, --file FILE         read the prompt from FILE instead\n"
           "  -n, --n-predict N       generate at most N tokens (default -1: until an end\n"
           "                          token or a full context)\n"
           "  -c, --ctx N             context (KV cache) length in tokens (default: the\n"
           "                          model's, at most 4096)\n"
           "  -b, --batch N           most prompt tokens per forward pass (default 512)\n"
           "  -t, --threads N         threads (default: all available CPUs)\n"
           "  --kv-type f16|f32       KV cache precision (default f16, as llama.cpp)\n"
           "  --ignore-eos            do not stop at end-of-generation tokens (they are\n"
           "                          banned, as llama.cpp does)\n"
           "  --json                  print {\"tokens\", \"generated\", \"text\"} instead of\n"
           "                          streaming\n"
           "  --dump-logits           with --json: add \"last_logits\", the logits at the last\n"
           "                          prompt position\n"
           "  -v, --verbose           more logging (model, seed, settings)\n\n");
    cli_sampling_help(stdout);
    cli_lora_help(stdout);
}

typedef struct run_opts {
    const char *model, *prompt, *prompt_file;
    int64_t n_predict, n_ctx, n_batch, n_threads;
    nm_type kv_type;
    bool ignore_eos, json, dump_logits, verbose;
    nm_sampler_params sp;
    cli_loras loras;
} run_opts;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Returns -1 when the arguments are fine, otherwise the exit status. */
static int parse_args(int argc, char **argv, run_opts *o) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int rc;
        if (cli_is_help(a)) {
            help();
            return 0;
        } else if (cli_sampling_opt(argc, argv, &i, &o->sp, &rc)) {
            if (rc) return rc;
        } else if (cli_lora_stack_opt(argc, argv, &i, &o->loras, &rc)) {
            if (rc) return rc;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(o->model = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            if (!(o->prompt = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
            if (!(o->prompt_file = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, -1, INT32_MAX, &o->n_predict))
                return cli_usage("run", "-n needs -1 or a token count, got '%s'", v);
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, 1, 1 << 22, &o->n_ctx))
                return cli_usage("run", "--ctx needs a token count from 1 to 4194304, got '%s'", v);
        } else if (!strcmp(a, "-b") || !strcmp(a, "--batch")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, 1, 1 << 22, &o->n_batch))
                return cli_usage("run", "--batch needs a token count, got '%s'", v);
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, 0, 1024, &o->n_threads))
                return cli_usage("run", "--threads needs a count from 0 (all) to 1024, got '%s'", v);
        } else if (!strcmp(a, "--kv-type")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!strcmp(v, "f16")) o->kv_type = NM_TYPE_F16;
            else if (!strcmp(v, "f32")) o->kv_type = NM_TYPE_F32;
            else return cli_usage("run", "--kv-type is f16 or f32, got '%s'", v);
        } else if (!strcmp(a, "--ignore-eos")) {
            o->ignore_eos = true;
        } else if (!strcmp(a, "--json")) {
            o->json = true;
        } else if (!strcmp(a, "--dump-logits")) {
            o->dump_logits = o->json = true;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            o->verbose = true;
        } else {
            return cli_usage("run", "unknown argument '%s'", a);
        }
    }
    if (!o->model) return cli_usage("run", "missing -m MODEL.gguf");
    if (!o->prompt && !o->prompt_file) return cli_usage("run", "missing -p PROMPT (or -f FILE)");
    if (o->prompt && o->prompt_file) return cli_usage("run", "give -p or -f, not both");
    return -1;
}

static void json_ids(nm_buf *b, const char *key, const int32_t *ids, size_t n) {
    nm_buf_printf(b, "\"%s\": [", key);
    for (size_t i = 0; i < n; i++) nm_buf_printf(b, i ? ", %d" : "%d", ids[i]);
    nm_buf_printf(b, "]");
}

/* Bans end-of-generation tokens through the logit biases (--ignore-eos). */
static bool ban_eog(nm_sampler_params *sp, const nm_vocab *v) {
    int32_t ids[2] = {nm_vocab_eos(v), nm_vocab_eot(v)};
    for (int k = 0; k < 2; k++) {
        if (ids[k] < 0 || (k == 1 && ids[1] == ids[0])) continue;
        nm_logit_bias *nb = realloc((void *)sp->logit_bias, (sp->n_logit_bias + 1) * sizeof *nb);
        if (!nb) return false;
        nb[sp->n_logit_bias++] = (nm_logit_bias){ids[k], -INFINITY};
        sp->logit_bias = nb;
    }
    return true;
}

/* The generation session: everything run() allocates, freed in one place. */
typedef struct session {
    nm_model *model;
    nm_context *ctx;
    nm_sampler *sampler;
    char *prompt_text;
    int32_t *prompt;
    size_t n_prompt;
    int32_t *gen;
    size_t n_gen;
    float *last_logits;
    nm_buf text;       /* generated text (for stop strings and --json) */
} session;

static void session_free(session *s) {
    nm_sampler_free(s->sampler);
    nm_context_free(s->ctx);
    nm_model_free(s->model);
    free(s->prompt_text);
    free(s->prompt);
    free(s->gen);
    free(s->last_logits);
    nm_buf_deinit(&s->text);
}

/* Writes text[*printed..upto) to stdout. */
static void print_upto(const nm_buf *t, size_t *printed, size_t upto) {
    if (upto > *printed) {
        fwrite(t->data + *printed, 1, upto - *printed, stdout);
        fflush(stdout);
        *printed = upto;
    }
}

static int run(run_opts *o) {
    nm_err err = {0};
    nm_log log = cli_logger(o->verbose);
    session s = {0};
    nm_buf_init(&s.text);
    int rc = 1;
    double t_load = now_s();
    if (nm_model_load(o->model, &log, &s.model, &err)) goto fail;
    const nm_vocab *v = nm_model_vocab(s.model);
    if (!v) {
        nm_err_set(&err, NM_ERR_UNSUPPORTED, "%s has no tokenizer", o->model);
        goto fail;
    }
    nm_model_info info;
    nm_model_get_info(s.model, &info);

    size_t plen = 0;
    const char *ptext = o->prompt;
    if (o->prompt_file) {
        if (nm_read_file(o->prompt_file, &s.prompt_text, &plen, &err)) goto fail;
        ptext = s.prompt_text;
    } else {
        plen = strlen(ptext);
    }
    if (nm_tokenize(v, ptext, plen, true, true, &s.prompt, &s.n_prompt, &err)) goto fail;
    if (s.n_prompt == 0) {
        /* an empty prompt: generate from BOS alone */
        if (nm_vocab_bos(v) < 0) {
            nm_err_set(&err, NM_ERR_ARG, "the prompt is empty and %s has no BOS token to start from", o->model);
            goto fail;
        }
        free(s.prompt);
        s.prompt = malloc(sizeof *s.prompt);
        if (!s.prompt) goto oom;
        s.prompt[0] = nm_vocab_bos(v);
        s.n_prompt = 1;
    }

    nm_context_params cp = nm_context_default_params();
    cp.n_ctx = (int32_t)o->n_ctx;
    cp.n_batch = (int32_t)o->n_batch;
    cp.n_threads = (int32_t)o->n_threads;
    cp.kv_type = o->kv_type;
    if (nm_context_new(s.model, &cp, &s.ctx, &err)) goto fail;
    if (cli_loras_attach(&o->loras, s.model, s.ctx, &log, &err)) goto fail;
    const int32_t n_ctx = nm_context_n_ctx(s.ctx);
    if (s.n_prompt > (size_t)n_ctx) {
        nm_err_set(&err, NM_ERR_RANGE, "the prompt has %zu tokens but the context holds %d (raise --ctx)", s.n_prompt,
                   n_ctx);
        goto fail;
    }
    if (o->sp.penalty_last_n < 0) o->sp.penalty_last_n = n_ctx;
    if (o->ignore_eos && !ban_eog(&o->sp, v)) goto oom;
    if (nm_sampler_new(&o->sp, info.n_vocab, &s.sampler, &err)) goto fail;
    t_load = now_s() - t_load;
    nm_logf(&log, NM_LOG_DEBUG, "%s: %d layers, dim %d, vocab %d; context %d, %d threads, KV cache %.1f MiB; seed %llu",
            o->model, info.n_layer, info.n_embd, info.n_vocab, n_ctx, nm_context_n_threads(s.ctx),
            nm_context_kv_bytes(s.ctx) / 1048576.0, (unsigned long long)nm_sampler_seed(s.sampler));

    /* prompt: one batch (or --batch sized pieces) */
    double t_prompt = now_s();
    if (nm_decode(s.ctx, s.prompt, (int32_t)s.n_prompt, &err)) goto fail;
    t_prompt = now_s() - t_prompt;
    for (size_t i = 0; i < s.n_prompt; i++) nm_sampler_accept(s.sampler, s.prompt[i]);
    if (o->dump_logits) {
        s.last_logits = malloc(sizeof(float) * (size_t)info.n_vocab);
        if (!s.last_logits) goto oom;
        memcpy(s.last_logits, nm_get_logits(s.ctx), sizeof(float) * (size_t)info.n_vocab);
    }

    nm_detok_stream ds;
    nm_detok_stream_init(&ds, v, false);
    if (!o->json && plen > 0) {
        /* the prompt as given, then the continuation without the space
         * SentencePiece would drop at the start of a text */
        fwrite(ptext, 1, plen, stdout);
        fflush(stdout);
        ds.first = false;
    }
    size_t cap = o->n_predict < 0 ? (size_t)n_ctx : (size_t)o->n_predict;
    s.gen = malloc(sizeof *s.gen * (cap ? cap : 1));
    if (!s.gen) goto oom;
    size_t printed = 0;
    bool stopped = false, full = false;
    size_t n_decoded = 0; /* single-token forward passes, for the speed */
    double t_gen = now_s();
    char piece[256];
    while (s.n_gen < cap && !stopped) {
        int32_t id = nm_sampler_sample(s.sampler, nm_get_logits(s.ctx));
        if (id < 0 || (!o->ignore_eos && nm_vocab_is_eog(v, id))) break;
        nm_sampler_accept(s.sampler, id);
        s.gen[s.n_gen++] = id;
        int32_t k = nm_detok_stream_push(&ds, id, piece, sizeof piece);
        if (k > 0) nm_buf_push(&s.text, piece, (size_t)k);
        size_t stop_at = 0, safe = s.text.len;
        stopped = o->sp.n_stop && nm_stop_find((const char *)s.text.data, s.text.len, o->sp.stop, o->sp.n_stop,
                                               &stop_at, &safe);
        if (stopped) s.text.len = stop_at;
        if (!o->json) print_upto(&s.text, &printed, stopped ? stop_at : safe);
        if (stopped || s.n_gen == cap) break;
        /* the sampled token is out; feeding it back needs a cache row */
        if (nm_context_n_past(s.ctx) >= n_ctx) {
            full = true;
            break;
        }
        if (nm_decode(s.ctx, &id, 1, &err)) goto fail;
        n_decoded++;
    }
    t_gen = now_s() - t_gen;
    if (!stopped) {
        int32_t k = nm_detok_stream_flush(&ds, piece, sizeof piece);
        if (k > 0) nm_buf_push(&s.text, piece, (size_t)k);
    }
    if (s.text.oom) goto oom;

    if (o->json) {
        /* "text" is the continuation alone, token pieces concatenated */
        char *gtext = NULL;
        size_t glen = 0;
        if (nm_detokenize(v, s.gen, s.n_gen, false, false, &gtext, &glen, &err)) goto fail;
        nm_buf b;
        nm_buf_init(&b);
        nm_buf_printf(&b, "{");
        json_ids(&b, "tokens", s.prompt, s.n_prompt);
        nm_buf_printf(&b, ", ");
        json_ids(&b, "generated", s.gen, s.n_gen);
        nm_buf_printf(&b, ", \"text\": ");
        nm_buf_json_str(&b, stopped ? (const char *)s.text.data : gtext, stopped ? s.text.len : glen);
        if (s.last_logits) {
            nm_buf_printf(&b, ", \"last_logits\": [");
            for (int32_t i = 0; i < info.n_vocab; i++) nm_buf_printf(&b, i ? ", %.9g" : "%.9g", s.last_logits[i]);
            nm_buf_printf(&b, "]");
        }
        nm_buf_printf(&b, "}\n");
        free(gtext);
        if (b.oom) {
            nm_buf_deinit(&b);
            goto oom;
        }
        fwrite(b.data, 1, b.len, stdout);
        nm_buf_deinit(&b);
    } else {
        print_upto(&s.text, &printed, s.text.len);
        fputc('\n', stdout);
    }
    fflush(stdout);

    if (full) fprintf(stderr, "nomoat: the context of %d tokens is full (raise --ctx to generate more)\n", n_ctx);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    fprintf(stderr,
            "prompt: %zu tokens in %.1f ms (%.1f tokens/s); generation: %zu tokens in %.1f ms (%.1f tokens/s); "
            "load %.1f ms\n",
            s.n_prompt, t_prompt * 1e3, (double)s.n_prompt / (t_prompt > 0 ? t_prompt : 1e-9), s.n_gen, t_gen * 1e3,
            n_decoded ? (double)n_decoded / (t_gen > 0 ? t_gen : 1e-9) : 0.0, t_load * 1e3);
    fprintf(stderr, "memory: peak RSS %.1f MiB (weights %.1f MiB mapped, KV cache %.1f MiB, scratch %.1f MiB)\n",
            ru.ru_maxrss / 1024.0, info.weight_bytes / 1048576.0, nm_context_kv_bytes(s.ctx) / 1048576.0,
            (nm_context_bytes(s.ctx) - nm_context_kv_bytes(s.ctx)) / 1048576.0);
    rc = 0;
    goto out;
oom:
    nm_err_set(&err, NM_ERR_NOMEM, "out of memory");
fail:
    fflush(stdout);
    rc = cli_fail(&err);
out:
    session_free(&s);
    return rc;
}

int cmd_run(int argc, char **argv) {
    run_opts o = {.n_predict = -1, .kv_type = NM_TYPE_F16, .sp = nm_sampler_params_default()};
    int rc = parse_args(argc, argv, &o);
    if (rc < 0) rc = run(&o);
    cli_sampling_free(&o.sp);
    cli_loras_free(&o.loras);
    return rc;
}
