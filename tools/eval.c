/* eval.c - `nomoat eval ppl | choice | match | sbs` and `nomoat eval
 * --tally`: measure what a fine-tune changed (see docs/CURATE.md). */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void help(void) {
    printf(
        "usage: nomoat eval ppl -m MODEL.gguf --data FILE [options]\n"
        "       nomoat eval choice -m MODEL.gguf --data FILE.jsonl [options]\n"
        "       nomoat eval match -m MODEL.gguf --prompts FILE --regex RE [-n N] [sampling]\n"
        "       nomoat eval sbs -a A.gguf -b B.gguf --prompts FILE -o REPORT.html [options]\n"
        "       nomoat eval --tally CHOICES.json... [--confidence 0.95] [--json]\n\n"
        "ppl: perplexity over any training format (auto, text, alpaca, sharegpt, messages), scoring\n"
        "the tokens training would train on: assistant turns of conversations (--all-tokens: every\n"
        "token), every token but the first of each plain-text window.  Each example runs from an\n"
        "empty cache.  Standard errors: per token (as llama.cpp) and per example (cluster-robust).\n"
        "  --data FILE  --format F  --chat-template NAME  -c, --ctx N (training context, <= 2048)\n"
        "  --all-tokens  --max-examples N\n\n"
        "choice: multiple-choice accuracy by log-likelihood.  JSONL records {\"context\", \"choices\",\n"
        "\"label\"}, HellaSwag {\"ctx\", \"endings\", \"label\"} or ARC {\"question\": {\"stem\", \"choices\":\n"
        "[{\"text\", \"label\"}]}, \"answerKey\"}.  acc: highest total log-probability of the choice's tokens;\n"
        "acc_norm: highest per byte.\n"
        "  --data FILE  -c, --ctx N  --limit N  --details FILE (one JSON line per item)\n\n"
        "match: the share of sampled responses matching a regular expression (PCRE2), with a Wilson\n"
        "interval: how often the model does something.\n"
        "  --prompts FILE  --regex RE  -n, --candidates N (per prompt, 4)  --max-tokens N (256)\n"
        "  --samples FILE (write them)  --confidence C (0.95)\n\n"
        "sbs: the same prompts through two models (same sampling and seeds); writes a self-contained\n"
        "HTML page with the answers in random left/right order and a form whose choices export as\n"
        "JSON for --tally.\n"
        "  -a MODEL  -b MODEL  --name-a NAME  --name-b NAME  --prompts FILE  -o, --out REPORT.html\n"
        "  --jsonl FILE  --title TEXT  --order-seed N (1)  --max-tokens N (256)\n\n"
        "--tally FILE...: B's win rate among decisive choices with its Wilson interval; ties apart.\n\n"
        "adapters: --lora FILE / --lora-scaled FILE SCALE (repeatable, bottom of the stack first) on\n"
        "the model of ppl, choice and match and on sbs's -a; --lora-b FILE (--lora-b-scaled) on sbs's -b.\n"
        "A PEFT directory (the output of 'nomoat train') or a GGUF LoRA.\n\n"
        "common: -t, --threads N (default: every CPU)  --json  -v, --verbose\n\n");
    cli_sampling_help(stdout);
}

bool cli_lora_opt(int argc, char **argv, int *i, const char *flag, cli_loras *s, int *rc) {
    const char *a = argv[*i];
    size_t fl = strlen(flag);
    bool scaled = !strncmp(a, flag, fl) && !strcmp(a + fl, "-scaled");
    if (strcmp(a, flag) && !scaled) return false;
    *rc = 2;
    const char *path = cli_value(argc, argv, i), *v = NULL;
    if (!path || (scaled && !(v = cli_value(argc, argv, i)))) return true;
    double sc = 1.0;
    if (scaled && (!cli_parse_f64(v, &sc) || !isfinite(sc))) {
        cli_usage(argv[0], "%s needs FILE SCALE, got scale '%s'", a, v);
        return true;
    }
    if (s->n == CLI_MAX_LORAS) {
        cli_usage(argv[0], "at most %d adapters in a stack", CLI_MAX_LORAS);
        return true;
    }
    s->path[s->n] = path;
    s->entry[s->n].scale = (float)sc;
    s->n++;
    *rc = 0;
    return true;
}

nm_status cli_loras_load(cli_loras *s, const nm_model *m, const nm_log *log, nm_err *err) {
    for (size_t k = 0; k < s->n; k++) {
        if (s->lora[k]) continue;
        nm_status st = nm_lora_load(m, s->path[k], false, log, &s->lora[k], err);
        if (st) return st;
        s->entry[k].lora = s->lora[k];
    }
    if (s->n) nm_lora_check_stack(m, s->entry, s->n, log);
    return NM_OK;
}

void cli_loras_free(cli_loras *s) {
    for (size_t k = 0; k < s->n; k++) {
        nm_lora_free(s->lora[k]);
        s->lora[k] = NULL;
    }
}

static bool num_i(int argc, char **argv, int *i, int64_t lo, int64_t hi, int64_t *out, int *rc) {
    const char *v = cli_value(argc, argv, i);
    if (!v) {
        *rc = 2;
        return false;
    }
    if (!cli_parse_i64(v, lo, hi, out)) {
        *rc = cli_usage("eval", "%s needs a whole number from %lld to %lld, got '%s'", argv[*i - 1], (long long)lo,
                        (long long)hi, v);
        return false;
    }
    return true;
}

static int on_progress(void *user, uint64_t done, uint64_t total, const char *what) {
    const bool *verbose = user;
    if (*verbose) fprintf(stderr, "nomoat: %s %llu/%llu\n", what, (unsigned long long)done, (unsigned long long)total);
    return 0;
}

/* The normal quantile for a two-sided confidence, by bisection. */
static double z_of(double c) {
    double lo = 0, hi = 40;
    for (int i = 0; i < 80; i++) {
        double mid = (lo + hi) / 2;
        if (0.5 * erfc(mid / sqrt(2.0)) > (1 - c) / 2)
            lo = mid;
        else
            hi = mid;
    }
    return (lo + hi) / 2;
}

/* ---- options shared by the steps ---- */
typedef struct eval_opts {
    const char *model, *model_b, *data, *format, *tmpl, *prompts, *regex, *out, *jsonl, *title, *name_a, *name_b,
        *samples, *details;
    int64_t ctx, threads, max_examples, limit, n, max_tokens;
    uint64_t order_seed;
    double confidence;
    bool all_tokens, json, verbose;
    nm_sampler_params sp;
    cli_loras loras, loras_b; /* -a's (or -m's) stack and -b's */
} eval_opts;

/* 0: parsed; otherwise the exit status. */
static int parse(int argc, char **argv, eval_opts *o) {
    int rc = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) {
            help();
            return -1;
        } else if (cli_sampling_opt(argc, argv, &i, &o->sp, &rc) ||
                   cli_lora_opt(argc, argv, &i, "--lora", &o->loras, &rc) ||
                   cli_lora_opt(argc, argv, &i, "--lora-a", &o->loras, &rc) ||
                   cli_lora_opt(argc, argv, &i, "--lora-b", &o->loras_b, &rc)) {
            if (rc) return rc;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model") || !strcmp(a, "-a")) {
            if (!(o->model = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-b")) {
            if (!(o->model_b = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--data")) {
            if (!(o->data = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--format")) {
            if (!(o->format = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--chat-template")) {
            if (!(o->tmpl = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--prompts")) {
            if (!(o->prompts = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--regex")) {
            if (!(o->regex = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            if (!(o->out = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--jsonl")) {
            if (!(o->jsonl = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--title")) {
            if (!(o->title = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--name-a")) {
            if (!(o->name_a = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--name-b")) {
            if (!(o->name_b = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--samples")) {
            if (!(o->samples = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--details")) {
            if (!(o->details = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
            if (!num_i(argc, argv, &i, 4, 1 << 20, &o->ctx, &rc)) return rc;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!num_i(argc, argv, &i, 0, 1024, &o->threads, &rc)) return rc;
        } else if (!strcmp(a, "--max-examples")) {
            if (!num_i(argc, argv, &i, 1, INT64_MAX / 2, &o->max_examples, &rc)) return rc;
        } else if (!strcmp(a, "--limit")) {
            if (!num_i(argc, argv, &i, 1, INT64_MAX / 2, &o->limit, &rc)) return rc;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--candidates")) {
            if (!num_i(argc, argv, &i, 1, 100000, &o->n, &rc)) return rc;
        } else if (!strcmp(a, "--max-tokens")) {
            if (!num_i(argc, argv, &i, 1, 1 << 20, &o->max_tokens, &rc)) return rc;
        } else if (!strcmp(a, "--order-seed")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_u64(v, &o->order_seed)) return cli_usage("eval", "--order-seed needs a whole number, got '%s'", v);
        } else if (!strcmp(a, "--confidence")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_f64(v, &o->confidence) || !(o->confidence > 0 && o->confidence < 1))
                return cli_usage("eval", "--confidence needs a number between 0 and 1, got '%s'", v);
        } else if (!strcmp(a, "--all-tokens")) {
            o->all_tokens = true;
        } else if (!strcmp(a, "--json")) {
            o->json = true;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            o->verbose = true;
        } else {
            return cli_usage(argv[0], "unknown argument '%s'", a);
        }
    }
    return 0;
}

/* ---- ppl ---- */

static int eval_ppl(eval_opts *o) {
    if (!o->model || !o->data) return cli_usage("eval ppl", "needs -m MODEL.gguf and --data FILE");
    nm_err err = {0};
    nm_log log = cli_logger(o->verbose);
    nm_model *m = NULL;
    nm_eval_ppl_params p;
    nm_eval_ppl_params_default(&p);
    if (o->format) p.format = o->format;
    p.chat_template = o->tmpl;
    p.n_ctx = (int32_t)o->ctx;
    p.all_tokens = o->all_tokens;
    p.max_examples = o->max_examples;
    p.threads = (int32_t)o->threads;
    p.progress = on_progress;
    p.user = &o->verbose;
    p.loras = o->loras.entry; /* filled in by cli_loras_load */
    p.n_loras = o->loras.n;
    nm_eval_ppl_result r;
    int rc = 1;
    if (!nm_model_load(o->model, &log, &m, &err) && !cli_loras_load(&o->loras, m, &log, &err) &&
        !nm_eval_perplexity(m, o->data, &p, &r, &log, &err)) {
        if (o->json)
            printf("{\"perplexity\": %.6f, \"stderr\": %.6f, \"nll\": %.6f, \"nll_stderr\": %.6f, "
                   "\"nll_stderr_examples\": %.6f, \"tokens\": %lld, \"examples\": %lld}\n",
                   r.ppl, r.ppl_se, r.nll, r.nll_se, r.nll_se_ex, (long long)r.n_tokens, (long long)r.n_examples);
        else
            printf("perplexity: %.4f +/- %.4f (nll %.4f +/- %.4f per token, +/- %.4f by example; %lld tokens of %lld "
                   "examples)\n",
                   r.ppl, r.ppl_se, r.nll, r.nll_se, r.nll_se_ex, (long long)r.n_tokens, (long long)r.n_examples);
        rc = 0;
    }
    if (rc) cli_fail(&err);
    cli_loras_free(&o->loras);
    nm_model_free(m);
    return rc;
}

/* ---- choice ---- */

typedef struct details {
    FILE *f;
} details;

static void on_item(void *user, const nm_mc_item *it) {
    details *d = ((void **)user)[1];
    if (!d || !d->f) return;
    fprintf(d->f, "{\"index\": %lld, \"label\": %d, \"pred\": %d, \"pred_norm\": %d, \"loglik\": [", (long long)it->index,
            it->label, it->pred, it->pred_norm);
    for (size_t i = 0; i < it->n_choices; i++) fprintf(d->f, "%s%.6f", i ? ", " : "", it->loglik[i]);
    fprintf(d->f, "], \"bytes\": [");
    for (size_t i = 0; i < it->n_choices; i++) fprintf(d->f, "%s%zu", i ? ", " : "", it->bytes[i]);
    fprintf(d->f, "]}\n");
}

static int on_progress_mc(void *user, uint64_t done, uint64_t total, const char *what) {
    return on_progress(((void **)user)[0], done, total, what);
}

static int eval_choice(eval_opts *o) {
    if (!o->model || !o->data) return cli_usage("eval choice", "needs -m MODEL.gguf and --data FILE");
    nm_err err = {0};
    nm_log log = cli_logger(o->verbose);
    nm_model *m = NULL;
    details d = {NULL};
    void *user[2] = {&o->verbose, &d};
    nm_mc_params p = {.n_ctx = (int32_t)o->ctx, .max_items = o->limit, .threads = (int32_t)o->threads,
                      .loras = o->loras.entry, .n_loras = o->loras.n, .on_item = on_item,
                      .progress = on_progress_mc, .user = user};
    nm_mc_result r;
    int rc = 1;
    if (o->details && !(d.f = fopen(o->details, "w"))) {
        nm_err_set(&err, NM_ERR_IO, "%s: cannot create", o->details);
    } else if (!nm_model_load(o->model, &log, &m, &err) && !cli_loras_load(&o->loras, m, &log, &err) &&
               !nm_eval_choice(m, o->data, &p, &r, &log, &err)) {
        if (o->json)
            printf("{\"items\": %lld, \"acc\": %.6f, \"acc_stderr\": %.6f, \"acc_norm\": %.6f, \"acc_norm_stderr\": %.6f}\n",
                   (long long)r.n, r.acc, r.acc_se, r.acc_norm, r.acc_norm_se);
        else
            printf("accuracy: %.4f +/- %.4f, length-normalised %.4f +/- %.4f (%lld items)\n", r.acc, r.acc_se,
                   r.acc_norm, r.acc_norm_se, (long long)r.n);
        rc = 0;
    }
    if (d.f && fclose(d.f) && !rc) {
        nm_err_set(&err, NM_ERR_IO, "%s: write failed", o->details);
        rc = 1;
    }
    if (rc) cli_fail(&err);
    cli_loras_free(&o->loras);
    nm_model_free(m);
    return rc;
}

/* ---- match ---- */

static int eval_match(eval_opts *o) {
    if (!o->model || !o->prompts || !o->regex)
        return cli_usage("eval match", "needs -m MODEL.gguf, --prompts FILE and --regex RE");
    nm_err err = {0};
    nm_log log = cli_logger(o->verbose);
    if (!o->verbose) log.min_level = NM_LOG_WARN;
    nm_model *m = NULL;
    nm_cands *pr = nm_cands_new(), *c = nm_cands_new();
    nm_gen_params g;
    nm_gen_params_default(&g);
    g.sampling = o->sp;
    if (o->n) g.n = (int32_t)o->n;
    if (o->max_tokens) g.max_tokens = (int32_t)o->max_tokens;
    g.n_ctx = (int32_t)o->ctx;
    g.chat_template = o->tmpl;
    g.threads = (int32_t)o->threads;
    g.loras = o->loras.entry;
    g.n_loras = o->loras.n;
    g.progress = on_progress;
    g.user = &o->verbose;
    nm_scorer sc = {.kind = NM_SCORER_REGEX, .name = "match", .weight = 1, .min = -INFINITY, .pattern = o->regex};
    nm_select_params sp = {&sc, 1, 0, -INFINITY, (int32_t)o->threads, NULL, NULL};
    int rc = 1;
    if (!pr || !c) {
        nm_err_set(&err, NM_ERR_NOMEM, "out of memory");
    } else if (!nm_cands_load(pr, o->prompts, "auto", &err) && !nm_model_load(o->model, &log, &m, &err) &&
               !cli_loras_load(&o->loras, m, &log, &err) && !nm_cands_generate(m, pr, &g, c, &log, &err) &&
               !nm_cands_score(c, &sp, &log, &err) &&
               !(o->samples && nm_cands_write(c, o->samples, "candidates", false, &err))) {
        int64_t k = 0, n = (int64_t)nm_cands_size(c);
        for (int64_t i = 0; i < n; i++) k += nm_cands_at(c, (size_t)i)->scores[0] > 0.5;
        double lo, hi, conf = o->confidence > 0 ? o->confidence : 0.95;
        nm_wilson_interval(k, n, z_of(conf), &lo, &hi);
        if (o->json)
            printf("{\"matched\": %lld, \"samples\": %lld, \"share\": %.6f, \"lo\": %.6f, \"hi\": %.6f, "
                   "\"confidence\": %g}\n",
                   (long long)k, (long long)n, n ? (double)k / (double)n : 0.0, lo, hi, conf);
        else
            printf("matched: %lld of %lld samples = %.4f (%g%% Wilson interval %.4f .. %.4f)\n", (long long)k,
                   (long long)n, n ? (double)k / (double)n : 0.0, conf * 100, lo, hi);
        rc = 0;
    }
    if (rc) cli_fail(&err);
    nm_cands_free(pr);
    nm_cands_free(c);
    cli_loras_free(&o->loras);
    nm_model_free(m);
    return rc;
}

/* ---- sbs ---- */

static int eval_sbs(eval_opts *o) {
    if (!o->model || !o->model_b || !o->prompts || !o->out)
        return cli_usage("eval sbs", "needs -a MODEL, -b MODEL, --prompts FILE and -o REPORT.html");
    nm_err err = {0};
    nm_log log = cli_logger(o->verbose);
    if (!o->verbose) log.min_level = NM_LOG_WARN;
    nm_model *a = NULL, *b = NULL;
    nm_cands *pr = nm_cands_new();
    nm_sbs_params p;
    memset(&p, 0, sizeof p);
    nm_gen_params_default(&p.gen);
    p.gen.sampling = o->sp;
    if (o->max_tokens) p.gen.max_tokens = (int32_t)o->max_tokens;
    p.gen.n_ctx = (int32_t)o->ctx;
    p.gen.chat_template = o->tmpl;
    p.gen.threads = (int32_t)o->threads;
    p.name_a = o->name_a ? o->name_a : o->model;
    p.name_b = o->name_b ? o->name_b : o->model_b;
    p.order_seed = o->order_seed ? o->order_seed : 1;
    p.title = o->title;
    int rc = 1;
    if (!pr) {
        nm_err_set(&err, NM_ERR_NOMEM, "out of memory");
    } else if (!nm_cands_load(pr, o->prompts, "auto", &err) && !nm_model_load(o->model, &log, &a, &err) &&
               !nm_model_load(o->model_b, &log, &b, &err) && !cli_loras_load(&o->loras, a, &log, &err) &&
               !cli_loras_load(&o->loras_b, b, &log, &err)) {
        p.a = a;
        p.b = b;
        p.loras_a = o->loras.entry;
        p.n_loras_a = o->loras.n;
        p.loras_b = o->loras_b.entry;
        p.n_loras_b = o->loras_b.n;
        if (!nm_eval_side_by_side(pr, &p, o->out, o->jsonl, &log, &err)) {
            printf("side by side: %lld prompts -> %s%s%s\n", (long long)nm_cands_n_prompts(pr), o->out,
                   o->jsonl ? " and " : "", o->jsonl ? o->jsonl : "");
            rc = 0;
        }
    }
    if (rc) cli_fail(&err);
    nm_cands_free(pr);
    cli_loras_free(&o->loras);
    cli_loras_free(&o->loras_b);
    nm_model_free(a);
    nm_model_free(b);
    return rc;
}

/* ---- tally ---- */

static int eval_tally(int argc, char **argv) {
    const char *files[1024];
    size_t n = 0;
    double conf = 0.95;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) {
            help();
            return 0;
        } else if (!strcmp(a, "--tally")) {
            continue;
        } else if (!strcmp(a, "--confidence")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_f64(v, &conf) || !(conf > 0 && conf < 1))
                return cli_usage("eval", "--confidence needs a number between 0 and 1, got '%s'", v);
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage("eval", "unknown argument '%s' for --tally", a);
        } else {
            if (n == 1024) return cli_usage("eval", "too many files");
            files[n++] = a;
        }
    }
    if (!n) return cli_usage("eval", "--tally needs at least one choices file");
    nm_err err = {0};
    nm_tally t;
    if (nm_eval_tally(files, n, conf, &t, &err)) return cli_fail(&err);
    if (json) {
        printf("{\"a\": \"%s\", \"b\": \"%s\", \"a_wins\": %lld, \"b_wins\": %lld, \"ties\": %lld, \"unanswered\": %lld, ",
               t.name_a, t.name_b, (long long)t.a_wins, (long long)t.b_wins, (long long)t.ties, (long long)t.unanswered);
        if (isnan(t.b_rate))
            printf("\"b_win_rate\": null, ");
        else
            printf("\"b_win_rate\": %.6f, ", t.b_rate);
        printf("\"lo\": %.6f, \"hi\": %.6f, \"confidence\": %g}\n", t.lo, t.hi, conf);
    } else {
        printf("A = %s\nB = %s\n", t.name_a, t.name_b);
        printf("B wins %lld, A wins %lld, ties %lld, unanswered %lld\n", (long long)t.b_wins, (long long)t.a_wins,
               (long long)t.ties, (long long)t.unanswered);
        if (isnan(t.b_rate))
            printf("no decisive comparison yet\n");
        else
            printf("B's win rate: %.3f (%g%% Wilson interval %.3f .. %.3f; %.3f counting ties as half)\n", t.b_rate,
                   conf * 100, t.lo, t.hi, t.b_rate_ties);
    }
    return 0;
}

int cmd_eval(int argc, char **argv) {
    if (argc < 2) return cli_usage("eval", "missing a step: ppl, choice, match, sbs or --tally FILE");
    if (cli_is_help(argv[1])) {
        help();
        return 0;
    }
    if (!strcmp(argv[1], "--tally") || !strcmp(argv[1], "tally")) return eval_tally(argc - 1, argv + 1);
    static char n_ppl[] = "eval ppl", n_choice[] = "eval choice", n_match[] = "eval match", n_sbs[] = "eval sbs";
    char *step = !strcmp(argv[1], "ppl") ? n_ppl : !strcmp(argv[1], "choice") ? n_choice
               : !strcmp(argv[1], "match") ? n_match : !strcmp(argv[1], "sbs") ? n_sbs : NULL;
    /* --tally anywhere also means the tally */
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--tally")) return eval_tally(argc - 1, argv + 1);
    if (!step) return cli_usage("eval", "unknown step '%s' (ppl, choice, match, sbs or --tally)", argv[1]);
    argv[1] = step;
    eval_opts o;
    memset(&o, 0, sizeof o);
    o.sp = nm_sampler_params_default();
    int rc = parse(argc - 1, argv + 1, &o);
    if (rc == 0) {
        if (step == n_ppl) rc = eval_ppl(&o);
        else if (step == n_choice) rc = eval_choice(&o);
        else if (step == n_match) rc = eval_match(&o);
        else rc = eval_sbs(&o);
    } else if (rc < 0) {
        rc = 0;
    }
    cli_sampling_free(&o.sp);
    return rc;
}
