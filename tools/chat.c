/*
 * chat.c - `nomoat chat -m MODEL`: a conversation in the terminal.
 *
 * Each user line becomes a message; the whole conversation is rendered with
 * the model's chat template, but only what the KV cache does not hold yet is
 * decoded.  To know that, the cache is mirrored as text: the concatenation
 * of what was decoded, with the token count at each chunk boundary.  A new
 * prompt that extends that text decodes just the extension; one that departs
 * from it (a template that trims the answer, a stop string cut inside the
 * answer, a control token the answer text does not show) truncates the cache
 * to the last boundary before the first differing byte and decodes from
 * there.  Answers stream as they are sampled, holding back the bytes that
 * could still turn into a stop string or that end inside a UTF-8 character.
 */
#include "cli.h"
#include "base/base.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Set by SIGINT, read by the generation loop: the one thing a signal handler
 * may safely do. */
static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig) {
    (void)sig;
    g_interrupted = 1;
}

static void help(void) {
    printf("usage: nomoat chat -m MODEL.gguf [options]\n\n"
           "Talks with a model in the terminal: type a message, the answer streams back.\n"
           "Reads one message per line from standard input (a pipe works too; end a line\n"
           "with \\ to continue the message on the next). The conversation stays in the\n"
           "KV cache, so each turn only processes the new text. Ctrl-C during an answer\n"
           "stops it; Ctrl-C or Ctrl-D at the prompt leaves.\n\n"
           "  -m, --model FILE        the GGUF model (must contain a tokenizer)\n"
           "  --chat-template NAME    override the template found in the model (chatml,\n"
           "                          llama2, llama3, mistral, phi3, gemma, zephyr, ...;\n"
           "                          --chat-template list shows all); models without\n"
           "                          one use chatml\n"
           "  --system TEXT           a system message to start the conversation with\n"
           "  -n, --n-predict N       at most N tokens per answer (default -1: until the\n"
           "                          model ends its turn or the context is full)\n"
           "  -c, --ctx N             context length in tokens (default: the model's,\n"
           "                          at most 4096)\n"
           "  -t, --threads N         threads (default: all available CPUs)\n"
           "  -v, --verbose           print the template, seed and speed of each answer\n\n");
    cli_sampling_help(stdout);
    cli_lora_help(stdout);
}

typedef struct chat_opts {
    const char *model;
    const char *tmpl_name;
    const char *system;
    int64_t n_predict, n_ctx, n_threads;
    bool verbose;
    nm_sampler_params sp;
    cli_loras loras;
} chat_opts;

/* The conversation; every string is owned. */
typedef struct conv {
    nm_chat_msg *m;
    size_t n, cap;
} conv;

static bool conv_add(conv *c, const char *role, const char *content, size_t len) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        nm_chat_msg *nm = realloc(c->m, cap * sizeof *nm);
        if (!nm) return false;
        c->m = nm;
        c->cap = cap;
    }
    char *r = nm_strdup(role), *t = nm_strndup(content, len);
    if (!r || !t) {
        free(r);
        free(t);
        return false;
    }
    c->m[c->n].role = r;
    c->m[c->n].content = t;
    c->n++;
    return true;
}

static void conv_drop_from(conv *c, size_t from) {
    while (c->n > from) {
        c->n--;
        free((char *)c->m[c->n].role);
        free((char *)c->m[c->n].content);
    }
}

/* The text the KV cache stands for, with (tokens, bytes) at each boundary
 * where the cache may be cut. */
typedef struct cache_map {
    nm_buf text;
    int32_t *tok_at;
    size_t *text_at;
    size_t n, cap;
} cache_map;

static bool map_push(cache_map *mp, const char *text, size_t len, int32_t n_past) {
    if (mp->n == mp->cap) {
        size_t cap = mp->cap ? mp->cap * 2 : 64;
        int32_t *t = realloc(mp->tok_at, cap * sizeof *t);
        if (t) mp->tok_at = t;
        size_t *x = realloc(mp->text_at, cap * sizeof *x);
        if (x) mp->text_at = x;
        if (!t || !x) return false;
        mp->cap = cap;
    }
    nm_buf_push(&mp->text, text, len);
    if (mp->text.oom) return false;
    mp->tok_at[mp->n] = n_past;
    mp->text_at[mp->n] = mp->text.len;
    mp->n++;
    return true;
}

typedef struct session {
    chat_opts *o;
    nm_model *model;
    const nm_vocab *vocab;
    nm_context *ctx;
    nm_sampler *sampler;
    nm_chat_template tmpl;
    cache_map map;
    conv conv;
    int32_t n_ctx;
    int32_t prompt_reused, prompt_new; /* tokens of the last prompt: kept in the cache, decoded */
} session;

/* Cuts the cache back to the longest boundary at which its text is still a
 * prefix of prompt. */
static nm_status map_sync(session *s, const char *prompt, nm_err *err) {
    cache_map *mp = &s->map;
    size_t lcp = 0, plen = strlen(prompt);
    while (lcp < mp->text.len && lcp < plen && mp->text.data[lcp] == (uint8_t)prompt[lcp]) lcp++;
    if (lcp == mp->text.len) return NM_OK;
    while (mp->n > 0 && mp->text_at[mp->n - 1] > lcp) mp->n--;
    int32_t keep = mp->n ? mp->tok_at[mp->n - 1] : 0;
    mp->text.len = mp->n ? mp->text_at[mp->n - 1] : 0;
    return nm_context_truncate(s->ctx, keep, err);
}

static void map_clear(session *s) {
    s->map.n = 0;
    s->map.text.len = 0;
    nm_context_truncate(s->ctx, 0, NULL);
}

/* Tokenizes and decodes text after what the cache holds.  NM_ERR_RANGE
 * (nothing decoded) when it does not fit in the context. */
static nm_status feed(session *s, const char *text, size_t len, nm_err *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    nm_status st = nm_tokenize(s->vocab, text, len, false, true, &ids, &n, err);
    if (st) return st;
    int32_t n_past = nm_context_n_past(s->ctx);
    bool bos = n_past == 0 && nm_vocab_add_bos(s->vocab) && nm_vocab_bos(s->vocab) >= 0;
    size_t total = n + (bos ? 1 : 0);
    if (total == 0) {
        free(ids);
        return NM_OK;
    }
    if ((uint64_t)n_past + total > (uint64_t)s->n_ctx) {
        free(ids);
        return nm_err_set(err, NM_ERR_RANGE, "%zu tokens do not fit after %d in a context of %d", total, (int)n_past,
                          (int)s->n_ctx);
    }
    if (bos) {
        int32_t b = nm_vocab_bos(s->vocab);
        st = nm_decode(s->ctx, &b, 1, err);
        if (!st) nm_sampler_accept(s->sampler, b);
    }
    if (!st && n) st = nm_decode(s->ctx, ids, (int32_t)n, err);
    for (size_t i = 0; !st && i < n; i++) nm_sampler_accept(s->sampler, ids[i]);
    free(ids);
    if (st) {
        /* a failed decode leaves the cache undefined for us: start over */
        map_clear(s);
        return st;
    }
    if (!map_push(&s->map, text, len, nm_context_n_past(s->ctx)))
        return nm_err_set(err, NM_ERR_NOMEM, "chat: out of memory");
    return NM_OK;
}

/* Length of the longest prefix of s[0..n) that ends on a whole UTF-8
 * character (a character split across tokens is printed once complete). */
static size_t utf8_whole(const char *s, size_t n) {
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = (unsigned char)s[n - back];
        if ((c & 0xc0) == 0x80) continue; /* continuation byte */
        size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        return need > back ? n - back : n;
    }
    return n;
}

typedef struct printer {
    size_t printed;
    bool started; /* whether any non-space byte was printed */
} printer;

/* Prints text[p->printed..upto), without the single space SentencePiece puts
 * before the first word of the answer. */
static void print_upto(printer *p, const char *text, size_t upto) {
    if (upto <= p->printed) return;
    const char *s = text + p->printed;
    size_t n = upto - p->printed;
    if (!p->started && p->printed == 0 && s[0] == ' ') {
        s++;
        n--;
    }
    if (n) {
        fwrite(s, 1, n, stdout);
        p->started = true;
    }
    fflush(stdout);
    p->printed = upto;
}

/* Samples and streams one answer; *out receives its text (after any stop
 * string is cut off). */
static nm_status answer(session *s, nm_buf *out, nm_err *err) {
    const nm_sampler_params *sp = &s->o->sp;
    printer pr = {0, false};
    char small[256];
    int64_t n_gen = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    nm_status st = NM_OK;
    bool full = false;
    for (; s->o->n_predict < 0 || n_gen < s->o->n_predict; n_gen++) {
        if (g_interrupted) break;
        const float *logits = nm_get_logits(s->ctx);
        if (!logits) break;
        int32_t id = nm_sampler_sample(s->sampler, logits);
        if (id < 0 || nm_vocab_is_eog(s->vocab, id)) break;
        nm_sampler_accept(s->sampler, id);

        int32_t len = nm_token_to_piece(s->vocab, id, small, sizeof small, false);
        char *piece = small;
        if (len < 0) {
            piece = malloc((size_t)-len);
            if (!piece) return nm_err_set(err, NM_ERR_NOMEM, "chat: out of memory");
            len = nm_token_to_piece(s->vocab, id, piece, (size_t)-len, false);
        }
        size_t before = out->len;
        nm_buf_push(out, piece, (size_t)(len > 0 ? len : 0));

        size_t stop_at, safe;
        bool stop = nm_stop_find((const char *)out->data, out->len, sp->stop, sp->n_stop, &stop_at, &safe);
        print_upto(&pr, (const char *)out->data, stop ? stop_at : utf8_whole((const char *)out->data, safe));
        if (stop) {
            out->len = stop_at;
            if (piece != small) free(piece);
            break;
        }
        if (nm_context_n_past(s->ctx) >= s->n_ctx) {
            out->len = before; /* not decoded: not part of the answer */
            full = true;
            if (piece != small) free(piece);
            break;
        }
        st = nm_decode(s->ctx, &id, 1, err);
        if (st == NM_OK && !map_push(&s->map, piece, (size_t)(len > 0 ? len : 0), nm_context_n_past(s->ctx)))
            st = nm_err_set(err, NM_ERR_NOMEM, "chat: out of memory");
        if (piece != small) free(piece);
        if (st) {
            map_clear(s);
            break;
        }
    }
    print_upto(&pr, (const char *)out->data, out->len);
    fputs("\n", stdout);
    fflush(stdout);
    if (out->oom) return nm_err_set(err, NM_ERR_NOMEM, "chat: out of memory");
    if (full) fprintf(stderr, "nomoat chat: the context (%d tokens) is full; the next message starts over\n", (int)s->n_ctx);
    if (g_interrupted) {
        g_interrupted = 0;
        fprintf(stderr, "nomoat chat: answer stopped\n");
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (s->o->verbose && st == NM_OK)
        fprintf(stderr, "[prompt: %d new tokens, %d from the cache; answer: %lld tokens, %.1f tokens/s; context %d/%d]\n",
                (int)s->prompt_new, (int)s->prompt_reused, (long long)n_gen,
                secs > 0 ? (double)n_gen / secs : 0.0, (int)nm_context_n_past(s->ctx), (int)s->n_ctx);
    return st;
}

/* Renders the conversation and decodes what the cache lacks. */
static nm_status feed_conversation(session *s, nm_err *err) {
    char *prompt = NULL;
    nm_status st = nm_chat_render(s->tmpl, s->conv.m, s->conv.n, true, &prompt, err);
    if (st) return st;
    int32_t before = nm_context_n_past(s->ctx);
    st = map_sync(s, prompt, err);
    if (!st) {
        size_t have = s->map.text.len;
        int32_t kept = nm_context_n_past(s->ctx);
        st = feed(s, prompt + have, strlen(prompt) - have, err);
        s->prompt_reused = kept;
        s->prompt_new = nm_context_n_past(s->ctx) - kept;
        if (s->o->verbose && kept < before)
            fprintf(stderr, "[cache cut back from %d to %d tokens: the new prompt departs from it there]\n",
                    (int)before, (int)kept);
    }
    free(prompt);
    return st;
}

static int out_of_memory(void) {
    fprintf(stderr, "nomoat: error: chat: out of memory\n");
    return 1;
}

/* One user message: feed it (starting the conversation over if the context
 * is full), then answer it.  Returns 0 to go on, 1 on a failure. */
static int turn(session *s, const char *msg, size_t len) {
    nm_err err = {0};
    size_t n_before = s->conv.n;
    if (!conv_add(&s->conv, "user", msg, len)) return out_of_memory();
    nm_status st = feed_conversation(s, &err);
    if (st == NM_ERR_RANGE) {
        /* Keep the system message and this one, forget the rest. */
        size_t keep = s->o->system ? 1 : 0;
        char *last = nm_strdup(s->conv.m[s->conv.n - 1].content);
        if (!last) return out_of_memory();
        conv_drop_from(&s->conv, keep);
        bool ok = conv_add(&s->conv, "user", last, strlen(last));
        free(last);
        if (!ok) return out_of_memory();
        fprintf(stderr, "nomoat chat: the context (%d tokens) is full: starting the conversation over\n",
                (int)s->n_ctx);
        map_clear(s);
        nm_err_clear(&err);
        st = feed_conversation(s, &err);
        if (st == NM_ERR_RANGE) {
            fprintf(stderr, "nomoat chat: that message does not fit in the context (%s); try a shorter one\n",
                    err.msg);
            conv_drop_from(&s->conv, keep);
            return 0;
        }
        n_before = keep;
    }
    if (st) {
        conv_drop_from(&s->conv, n_before);
        return cli_fail(&err);
    }
    nm_buf ans;
    nm_buf_init(&ans);
    st = answer(s, &ans, &err);
    if (st) {
        nm_buf_deinit(&ans);
        return cli_fail(&err);
    }
    bool ok = conv_add(&s->conv, "assistant", ans.len ? (const char *)ans.data : "", ans.len);
    nm_buf_deinit(&ans);
    if (!ok) return out_of_memory();
    return 0;
}

/* Reads one message: a line, or several joined while lines end with '\'.
 * Returns false at end of input or on Ctrl-C. */
static bool read_message(nm_buf *msg, bool tty) {
    char *line = NULL;
    size_t cap = 0;
    msg->len = 0;
    if (tty) {
        fputs("> ", stdout);
        fflush(stdout);
    }
    for (;;) {
        errno = 0;
        ssize_t r = getline(&line, &cap, stdin);
        if (r < 0) {
            free(line);
            return msg->len > 0 && !g_interrupted; /* a last message without newline still counts */
        }
        size_t n = (size_t)r;
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
        bool more = n && line[n - 1] == '\\';
        if (more) n--;
        nm_buf_push(msg, line, n);
        if (!more) break;
        nm_buf_push(msg, "\n", 1);
        if (tty) {
            fputs(". ", stdout);
            fflush(stdout);
        }
    }
    free(line);
    return !msg->oom;
}

static void list_templates(void) {
    for (int t = 1; t < NM_CHAT_TEMPLATE_COUNT; t++) printf("%s\n", nm_chat_template_name((nm_chat_template)t));
    printf("aliases: llama-2 llama-3 phi-3 phi-4 mistral (= mistral-v1)\n");
}

static int parse(int argc, char **argv, chat_opts *o) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int rc;
        if (cli_is_help(a)) {
            help();
            return -1;
        } else if (cli_sampling_opt(argc, argv, &i, &o->sp, &rc)) {
            if (rc) return rc;
        } else if (cli_lora_stack_opt(argc, argv, &i, &o->loras, &rc)) {
            if (rc) return rc;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(o->model = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--chat-template")) {
            if (!(o->tmpl_name = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--system")) {
            if (!(o->system = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, -1, INT32_MAX, &o->n_predict))
                return cli_usage("chat", "%s needs -1 or a count, got '%s'", a, v);
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, 0, INT32_MAX, &o->n_ctx))
                return cli_usage("chat", "%s needs a token count (0: the model's), got '%s'", a, v);
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, 0, 4096, &o->n_threads))
                return cli_usage("chat", "%s needs a thread count (0: all), got '%s'", a, v);
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            o->verbose = true;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage("chat", "unknown option '%s'", a);
        } else {
            return cli_usage("chat", "unexpected argument '%s' (the model goes after -m)", a);
        }
    }
    if (o->tmpl_name && !strcmp(o->tmpl_name, "list")) {
        list_templates();
        return -1;
    }
    if (!o->model) return cli_usage("chat", "missing -m MODEL.gguf");
    if (o->tmpl_name && nm_chat_template_from_name(o->tmpl_name) == NM_CHAT_TEMPLATE_UNKNOWN)
        return cli_usage("chat", "unknown chat template '%s' (--chat-template list shows the names)", o->tmpl_name);
    return 0;
}

static int run(chat_opts *o) {
    nm_err err = {0};
    session s;
    memset(&s, 0, sizeof s);
    s.o = o;
    nm_buf_init(&s.map.text);
    nm_log log = cli_logger(o->verbose);
    int rc = 1;
    nm_buf msg;
    nm_buf_init(&msg);

    if (nm_model_load(o->model, &log, &s.model, &err)) goto out_fail;
    s.vocab = nm_model_vocab(s.model);
    if (!s.vocab) {
        nm_err_set(&err, NM_ERR_UNSUPPORTED, "%s: the model has no tokenizer to chat with", o->model);
        goto out_fail;
    }
    const char *why = "set with --chat-template";
    if (o->tmpl_name) {
        s.tmpl = nm_chat_template_from_name(o->tmpl_name);
    } else {
        const nm_gguf *g = nm_model_gguf(s.model);
        s.tmpl = nm_chat_template_of_gguf(g);
        why = nm_gguf_find_key(g, "tokenizer.chat_template") < 0 ? "default: the model has none"
                                                                  : "detected from the model";
        if (s.tmpl == NM_CHAT_TEMPLATE_UNKNOWN) {
            fprintf(stderr,
                    "nomoat chat: warning: %s: chat template not recognised, using %s (choose one with "
                    "--chat-template)\n",
                    o->model, nm_chat_template_name(NM_CHAT_TEMPLATE_DEFAULT));
            s.tmpl = NM_CHAT_TEMPLATE_DEFAULT;
            why = "default";
        }
    }

    nm_context_params cp = nm_context_default_params();
    cp.n_ctx = (int32_t)o->n_ctx;
    cp.n_threads = (int32_t)o->n_threads;
    if (nm_context_new(s.model, &cp, &s.ctx, &err)) goto out_fail;
    if (cli_loras_attach(&o->loras, s.model, s.ctx, &log, &err)) goto out_fail;
    s.n_ctx = nm_context_n_ctx(s.ctx);
    if (o->sp.penalty_last_n < 0) o->sp.penalty_last_n = s.n_ctx;

    nm_model_info info;
    nm_model_get_info(s.model, &info);
    nm_status st = nm_sampler_new(&o->sp, info.n_vocab, &s.sampler, &err);
    if (st == NM_ERR_ARG) {
        rc = cli_usage("chat", "%s", err.msg);
        goto out;
    }
    if (st) goto out_fail;
    if (o->verbose)
        fprintf(stderr, "nomoat chat: template %s (%s), context %d tokens, %d threads, seed %llu\n",
                nm_chat_template_name(s.tmpl), why, (int)s.n_ctx, (int)nm_context_n_threads(s.ctx),
                (unsigned long long)nm_sampler_seed(s.sampler));

    if (o->system && !conv_add(&s.conv, "system", o->system, strlen(o->system))) {
        nm_err_set(&err, NM_ERR_NOMEM, "chat: out of memory");
        goto out_fail;
    }

    /* No SA_RESTART: Ctrl-C must interrupt the read at the prompt. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);

    bool tty = isatty(STDIN_FILENO);
    rc = 0;
    while (read_message(&msg, tty)) {
        if (msg.len == 0) continue;
        rc = turn(&s, (const char *)msg.data, msg.len);
        if (rc) break;
    }
    if (tty && rc == 0) fputs("\n", stdout);
    goto out;

out_fail:
    rc = cli_fail(&err);
out:
    nm_buf_deinit(&msg);
    conv_drop_from(&s.conv, 0);
    free(s.conv.m);
    nm_buf_deinit(&s.map.text);
    free(s.map.tok_at);
    free(s.map.text_at);
    nm_sampler_free(s.sampler);
    nm_context_free(s.ctx);
    nm_model_free(s.model);
    return rc;
}

int cmd_chat(int argc, char **argv) {
    chat_opts o;
    memset(&o, 0, sizeof o);
    o.n_predict = -1;
    o.sp = nm_sampler_params_default();
    int rc = parse(argc, argv, &o);
    if (rc == 0) rc = run(&o);
    else if (rc < 0) rc = 0; /* --help, --chat-template list */
    cli_sampling_free(&o.sp);
    cli_loras_free(&o.loras);
    return rc;
}
