/* curate.c - `nomoat curate generate | score | clean`: make a small, clean
 * dataset (see docs/CURATE.md). */
#include "cli.h"
#include "base/base.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void help(void) {
    printf(
        "usage: nomoat curate generate -m MODEL.gguf --prompts FILE -o CANDIDATES.jsonl [options]\n"
        "       nomoat curate score --in FILE -o OUT.jsonl [scorers] [--best-k K | --threshold T]\n"
        "       nomoat curate clean FILE... (-o OUT | --out-dir DIR) [filters] [--eval FILE]...\n\n"
        "generate: N candidate responses per prompt, in parallel over the prompts.\n"
        "  -m, --model FILE        the generator (GGUF with a tokenizer)\n"
        "  --prompts FILE          text lines (each a plain-text prompt, \\n escapes), or any training\n"
        "                          format (each record's conversation up to its last assistant turn)\n"
        "  --prompt-format F       auto (default), lines, alpaca, sharegpt, messages, candidates\n"
        "  -n, --candidates N      responses per prompt (4)\n"
        "  --max-tokens N          per response (256)\n"
        "  -c, --ctx N             context length (default: the model's, at most 4096)\n"
        "  --chat-template NAME    for conversation prompts (default: the model's)\n"
        "  -o, --out FILE          the candidates (JSONL, the input of 'score')\n"
        "  -t, --threads N         parallel prompts (default: every CPU)\n"
        "  --lora FILE / --lora-scaled FILE SCALE   an adapter on the generator (repeatable: a\n"
        "                          stack, bottom first; a PEFT directory or a GGUF LoRA)\n"
        "  sampling: --temp --top-k --top-p --min-p --seed ... as 'nomoat run' (see below); the seed\n"
        "  of candidate j of prompt i is derived from (--seed, i, j): the output does not depend on -t\n\n"
        "score: scorers combined with weights, then the best per prompt kept.  Total = sum of\n"
        "weight x score over the scorers; a candidate below a scorer's minimum is dropped.\n"
        "  --in FILE               candidates from 'generate', or any training format (each record's\n"
        "                          last assistant message is the response; identical prompts share an id)\n"
        "  --judge MODEL.gguf      mean log-probability of the response tokens given the prompt\n"
        "      --judge-weight W (1)  --judge-min V  --judge-template NAME\n"
        "      --judge-lora FILE / --judge-lora-scaled FILE SCALE: the judge's adapter stack\n"
        "  --min-words N / --max-words N / --min-chars N / --max-chars N\n"
        "                          length bounds: score 1 inside, 0 outside; a gate (minimum 1)\n"
        "      --length-weight W (0)\n"
        "  --repetition N          distinct word N-grams / all word N-grams of the response (0..1]\n"
        "      --repetition-weight W (1)  --repetition-min V\n"
        "  --must-match RE         PCRE2 pattern that must match (repeatable); score 1 / 0; a gate\n"
        "  --must-not-match RE     pattern that must not match (repeatable); a gate\n"
        "      --regex-weight W (0)\n"
        "  --soft                  length and regex scorers only add to the total: not gates\n"
        "  --command CMD           an external scorer: /bin/sh -c CMD reads {\"prompt\", \"messages\",\n"
        "                          \"response\", \"prompt_id\", \"candidate\"} on stdin, prints a number\n"
        "                          (or {\"score\": number}); non-zero exit or timeout stops the run\n"
        "      --command-weight W (1)  --command-min V  --command-timeout SECONDS (10)\n"
        "  --best-k K              keep the K best per prompt (default: every survivor)\n"
        "  --threshold T           keep only totals >= T\n"
        "  -o, --out FILE          the kept candidates\n"
        "  --format F              messages (default), sharegpt, alpaca, text, candidates\n"
        "  --all FILE              every candidate with its scores and verdict (candidates JSONL)\n"
        "  -t, --threads N         judge contexts / commands at once (default: every CPU)\n\n"
        "clean: filters, decontamination, exact and near de-duplication across all the files, in this\n"
        "order; among duplicates the first (in file order) stays.  Prints what each step removed.\n"
        "  --split S               lines, paragraphs, json, whole (default: json for .json/.jsonl,\n"
        "                          else lines)\n"
        "  --field NAME            JSON: the text is this field (default: every string in the record)\n"
        "  -o, --out FILE          every kept record      --out-dir DIR   one file per input, same name\n"
        "  --min-chars N --max-chars N --min-words N --max-words N\n"
        "  --max-nonletter F       at most this fraction of non-space characters are not letters\n"
        "  --max-digit F           at most this fraction are digits\n"
        "  --lang en               English only: >= 90%% of letters ASCII and >= 15%% of words English stop\n"
        "                          words (texts of 5+ words); --min-ascii F  --min-stopwords F\n"
        "  --forbid STR            drop texts containing STR (ASCII case-insensitive; repeatable)\n"
        "  --forbid-file FILE      one forbidden string per line\n"
        "  --eval FILE             evaluation data to decontaminate against (repeatable)\n"
        "  --ngram N (13)          shared word n-gram length; --ngram-min N (8): shorter evaluation\n"
        "                          texts with at least N words are matched whole\n"
        "  --no-exact  --no-near   skip a de-duplication step\n"
        "  --threshold J (0.8)     Jaccard similarity of near duplicates\n"
        "  --num-perm N (128)  --shingle N (5)  --char-shingles  --bands B --rows R  --seed S (1)\n"
        "  --report FILE  --report-json FILE  --examples N (5)  --quiet\n"
        "  -t, --threads N         (default: every CPU)\n\n");
    cli_sampling_help(stdout);
}

static bool opt_i64(int argc, char **argv, int *i, const char *cmd, int64_t lo, int64_t hi, int64_t *out, int *rc) {
    const char *v = cli_value(argc, argv, i);
    if (!v) {
        *rc = 2;
        return false;
    }
    if (!cli_parse_i64(v, lo, hi, out)) {
        *rc = cli_usage(cmd, "%s needs a whole number from %lld to %lld, got '%s'", argv[*i - 1], (long long)lo,
                        (long long)hi, v);
        return false;
    }
    return true;
}

static bool opt_f64(int argc, char **argv, int *i, const char *cmd, double lo, double hi, double *out, int *rc) {
    const char *v = cli_value(argc, argv, i);
    if (!v) {
        *rc = 2;
        return false;
    }
    if (!cli_parse_f64(v, out) || !(*out >= lo && *out <= hi)) {
        *rc = cli_usage(cmd, "%s needs a number from %g to %g, got '%s'", argv[*i - 1], lo, hi, v);
        return false;
    }
    return true;
}

static int on_progress(void *user, uint64_t done, uint64_t total, const char *what) {
    const bool *verbose = user;
    if (*verbose) fprintf(stderr, "nomoat: %s %llu/%llu\n", what, (unsigned long long)done, (unsigned long long)total);
    return 0;
}

/* ======================================================================== */

static int curate_generate(int argc, char **argv) {
    const char *cmd = "curate generate", *model = NULL, *prompts = NULL, *pfmt = "auto", *out = NULL;
    nm_gen_params g;
    nm_gen_params_default(&g);
    cli_loras loras = {0};
    bool verbose = false;
    int rc = 0;
    int64_t v64;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            help();
            cli_sampling_free(&g.sampling);
            return 0;
        } else if (cli_sampling_opt(argc, argv, &i, &g.sampling, &rc) || cli_lora_opt(argc, argv, &i, "--lora", &loras, &rc)) {
            if (rc) goto usage;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(model = cli_value(argc, argv, &i))) goto usage2;
        } else if (!strcmp(a, "--prompts")) {
            if (!(prompts = cli_value(argc, argv, &i))) goto usage2;
        } else if (!strcmp(a, "--prompt-format")) {
            if (!(pfmt = cli_value(argc, argv, &i))) goto usage2;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            if (!(out = cli_value(argc, argv, &i))) goto usage2;
        } else if (!strcmp(a, "--chat-template")) {
            if (!(g.chat_template = cli_value(argc, argv, &i))) goto usage2;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--candidates")) {
            if (!opt_i64(argc, argv, &i, cmd, 1, 100000, &v64, &rc)) goto usage;
            g.n = (int32_t)v64;
        } else if (!strcmp(a, "--max-tokens")) {
            if (!opt_i64(argc, argv, &i, cmd, 1, 1 << 20, &v64, &rc)) goto usage;
            g.max_tokens = (int32_t)v64;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
            if (!opt_i64(argc, argv, &i, cmd, 8, 1 << 20, &v64, &rc)) goto usage;
            g.n_ctx = (int32_t)v64;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!opt_i64(argc, argv, &i, cmd, 0, 1024, &v64, &rc)) goto usage;
            g.threads = (int32_t)v64;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = true;
        } else {
            rc = cli_usage(cmd, "unknown argument '%s'", a);
            goto usage;
        }
    }
    if (!model || !prompts || !out) {
        rc = cli_usage(cmd, "needs -m MODEL.gguf, --prompts FILE and -o FILE");
        goto usage;
    }
    nm_err err = {0};
    nm_log log = cli_logger(verbose);
    nm_model *m = NULL;
    nm_cands *pr = nm_cands_new(), *cands = nm_cands_new();
    rc = 1;
    g.progress = on_progress;
    g.user = &verbose;
    g.loras = loras.entry; /* filled in by cli_loras_load */
    g.n_loras = loras.n;
    if (!pr || !cands) {
        nm_err_set(&err, NM_ERR_NOMEM, "out of memory");
    } else if (!nm_cands_load(pr, prompts, pfmt, &err) && !nm_model_load(model, &log, &m, &err) &&
               !cli_loras_load(&loras, m, &log, &err) && !nm_cands_generate(m, pr, &g, cands, &log, &err) &&
               !nm_cands_write(cands, out, "candidates", false, &err)) {
        fprintf(stderr, "nomoat: %zu candidates for %lld prompts written to %s\n", nm_cands_size(cands),
                (long long)nm_cands_n_prompts(pr), out);
        rc = 0;
    }
    if (rc) cli_fail(&err);
    nm_cands_free(pr);
    nm_cands_free(cands);
    cli_loras_free(&loras);
    nm_model_free(m);
    cli_sampling_free(&g.sampling);
    return rc;
usage2:
    rc = 2;
usage:
    cli_sampling_free(&g.sampling);
    return rc;
}

/* ======================================================================== */

#define MAX_SCORERS 64

static int curate_score(int argc, char **argv) {
    const char *cmd = "curate score", *in = NULL, *out = NULL, *format = "messages", *all = NULL;
    const char *judge_path = NULL, *judge_tmpl = NULL, *command = NULL;
    double judge_w = 1, judge_min = -INFINITY, len_w = 0, rep_w = 1, rep_min = -INFINITY, re_w = 0, cmd_w = 1,
           cmd_min = -INFINITY, cmd_timeout = 10, threshold = -INFINITY;
    int64_t min_words = 0, max_words = 0, min_chars = 0, max_chars = 0, rep_n = 0, best_k = 0, threads = 0;
    const char *patterns[MAX_SCORERS];
    bool negate[MAX_SCORERS], soft = false, verbose = false;
    cli_loras jl = {0};
    size_t n_patterns = 0;
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            help();
            return 0;
        } else if (cli_lora_opt(argc, argv, &i, "--judge-lora", &jl, &rc)) {
            if (rc) return rc;
        } else if (!strcmp(a, "--in") || !strcmp(a, "-i")) {
            if (!(in = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            if (!(out = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--format")) {
            if (!(format = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--all")) {
            if (!(all = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--judge")) {
            if (!(judge_path = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--judge-template")) {
            if (!(judge_tmpl = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--judge-weight")) {
            if (!opt_f64(argc, argv, &i, cmd, -1e9, 1e9, &judge_w, &rc)) return rc;
        } else if (!strcmp(a, "--judge-min")) {
            if (!opt_f64(argc, argv, &i, cmd, -1e9, 1e9, &judge_min, &rc)) return rc;
        } else if (!strcmp(a, "--min-words") || !strcmp(a, "--max-words") || !strcmp(a, "--min-chars") ||
                   !strcmp(a, "--max-chars")) {
            int64_t *dst = !strcmp(a, "--min-words") ? &min_words : !strcmp(a, "--max-words") ? &max_words
                           : !strcmp(a, "--min-chars") ? &min_chars : &max_chars;
            if (!opt_i64(argc, argv, &i, cmd, 0, INT64_MAX / 2, dst, &rc)) return rc;
        } else if (!strcmp(a, "--length-weight")) {
            if (!opt_f64(argc, argv, &i, cmd, -1e9, 1e9, &len_w, &rc)) return rc;
        } else if (!strcmp(a, "--repetition")) {
            if (!opt_i64(argc, argv, &i, cmd, 1, 64, &rep_n, &rc)) return rc;
        } else if (!strcmp(a, "--repetition-weight")) {
            if (!opt_f64(argc, argv, &i, cmd, -1e9, 1e9, &rep_w, &rc)) return rc;
        } else if (!strcmp(a, "--repetition-min")) {
            if (!opt_f64(argc, argv, &i, cmd, 0, 1, &rep_min, &rc)) return rc;
        } else if (!strcmp(a, "--must-match") || !strcmp(a, "--must-not-match")) {
            if (n_patterns == MAX_SCORERS - 4) return cli_usage(cmd, "too many patterns");
            negate[n_patterns] = !strcmp(a, "--must-not-match");
            if (!(patterns[n_patterns++] = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--regex-weight")) {
            if (!opt_f64(argc, argv, &i, cmd, -1e9, 1e9, &re_w, &rc)) return rc;
        } else if (!strcmp(a, "--soft")) {
            soft = true;
        } else if (!strcmp(a, "--command")) {
            if (!(command = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--command-weight")) {
            if (!opt_f64(argc, argv, &i, cmd, -1e9, 1e9, &cmd_w, &rc)) return rc;
        } else if (!strcmp(a, "--command-min")) {
            if (!opt_f64(argc, argv, &i, cmd, -1e300, 1e300, &cmd_min, &rc)) return rc;
        } else if (!strcmp(a, "--command-timeout")) {
            if (!opt_f64(argc, argv, &i, cmd, 0.001, 86400, &cmd_timeout, &rc)) return rc;
        } else if (!strcmp(a, "--best-k")) {
            if (!opt_i64(argc, argv, &i, cmd, 1, INT32_MAX, &best_k, &rc)) return rc;
        } else if (!strcmp(a, "--threshold")) {
            if (!opt_f64(argc, argv, &i, cmd, -1e300, 1e300, &threshold, &rc)) return rc;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!opt_i64(argc, argv, &i, cmd, 0, 1024, &threads, &rc)) return rc;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = true;
        } else {
            return cli_usage(cmd, "unknown argument '%s'", a);
        }
    }
    if (!in || !out) return cli_usage(cmd, "needs --in FILE and -o FILE");
    nm_scorer sc[MAX_SCORERS];
    size_t ns = 0;
    memset(sc, 0, sizeof sc);
    const double gate = soft ? -INFINITY : 1.0;
    if (judge_path)
        sc[ns++] = (nm_scorer){.kind = NM_SCORER_JUDGE, .weight = judge_w, .min = judge_min, .loras = jl.entry,
                               .n_loras = jl.n, .chat_template = judge_tmpl};
    if (min_words || max_words)
        sc[ns++] = (nm_scorer){.kind = NM_SCORER_LENGTH, .name = "words", .weight = len_w, .min = gate,
                               .min_len = min_words, .max_len = max_words};
    if (min_chars || max_chars)
        sc[ns++] = (nm_scorer){.kind = NM_SCORER_LENGTH, .name = "chars", .weight = len_w, .min = gate,
                               .min_len = min_chars, .max_len = max_chars, .chars = true};
    if (rep_n) sc[ns++] = (nm_scorer){.kind = NM_SCORER_REPETITION, .weight = rep_w, .min = rep_min, .n = (int32_t)rep_n};
    for (size_t k = 0; k < n_patterns; k++)
        sc[ns++] = (nm_scorer){.kind = NM_SCORER_REGEX, .weight = re_w, .min = gate, .pattern = patterns[k],
                               .negate = negate[k]};
    if (command)
        sc[ns++] = (nm_scorer){.kind = NM_SCORER_COMMAND, .weight = cmd_w, .min = cmd_min, .command = command,
                               .timeout_s = cmd_timeout};
    nm_err err = {0};
    nm_log log = cli_logger(verbose);
    nm_model *judge = NULL;
    nm_cands *c = nm_cands_new();
    rc = 1;
    if (!c) {
        nm_err_set(&err, NM_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (nm_cands_load(c, in, "auto", &err)) goto out;
    if (judge_path) {
        if (nm_model_load(judge_path, &log, &judge, &err) || cli_loras_load(&jl, judge, &log, &err)) goto out;
        sc[0].judge = judge;
    }
    nm_select_params sp = {sc, ns, (int32_t)best_k, threshold, (int32_t)threads, on_progress, &verbose};
    if (nm_cands_score(c, &sp, &log, &err)) goto out;
    if (nm_cands_write(c, out, format, true, &err)) goto out;
    if (all && nm_cands_write(c, all, "candidates", false, &err)) goto out;
    /* the summary: what each scorer did */
    size_t n = nm_cands_size(c), kept = 0, answered = 0, dropped[MAX_SCORERS] = {0};
    double mean_all[MAX_SCORERS] = {0}, mean_kept[MAX_SCORERS] = {0};
    size_t cnt_all[MAX_SCORERS] = {0}, cnt_kept[MAX_SCORERS] = {0};
    for (size_t i = 0; i < n; i++) {
        const nm_cand *x = nm_cands_at(c, i);
        if (!x->response) continue;
        answered++;
        kept += x->kept;
        if (x->dropped_by >= 0) dropped[x->dropped_by]++;
        for (size_t k = 0; k < ns; k++) {
            if (isnan(x->scores[k])) continue;
            mean_all[k] += x->scores[k];
            cnt_all[k]++;
            if (x->kept) {
                mean_kept[k] += x->scores[k];
                cnt_kept[k]++;
            }
        }
    }
    printf("scored %zu candidates of %lld prompts: %zu kept -> %s\n", answered, (long long)nm_cands_n_prompts(c), kept,
           out);
    printf("  %-12s %8s %8s %12s %12s\n", "scorer", "weight", "dropped", "mean (all)", "mean (kept)");
    for (size_t k = 0; k < ns; k++)
        printf("  %-12s %8g %8zu %12.4f %12.4f\n", nm_cands_scorer_name(c, k), sc[k].weight, dropped[k],
               cnt_all[k] ? mean_all[k] / (double)cnt_all[k] : NAN, cnt_kept[k] ? mean_kept[k] / (double)cnt_kept[k] : NAN);
    rc = 0;
out:
    if (rc) cli_fail(&err);
    nm_cands_free(c);
    cli_loras_free(&jl);
    nm_model_free(judge);
    return rc;
}

/* ======================================================================== */

#define MAX_FILES 4096

static int parse_split(const char *s) {
    static const char *const names[] = {"auto", "lines", "paragraphs", "json", "whole"};
    for (int i = 0; i < 5; i++)
        if (!strcmp(s, names[i])) return i;
    return -1;
}

static int curate_clean(int argc, char **argv) {
    const char *cmd = "curate clean", *out = NULL, *out_dir = NULL, *field = NULL, *report = NULL, *report_json = NULL;
    const char *files[MAX_FILES], *evals[MAX_FILES], *forbid[MAX_FILES], *forbid_file = NULL;
    size_t n_files = 0, n_evals = 0, n_forbid = 0;
    int split = NM_DOC_AUTO;
    int64_t examples = 5, v64;
    bool quiet = false, verbose = false;
    nm_clean_params p;
    nm_clean_params_default(&p);
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) {
            help();
            return 0;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            if (!(out = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--out-dir")) {
            if (!(out_dir = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--split")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if ((split = parse_split(v)) < 0)
                return cli_usage(cmd, "--split is lines, paragraphs, json or whole, got '%s'", v);
        } else if (!strcmp(a, "--field")) {
            if (!(field = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--min-chars") || !strcmp(a, "--max-chars") || !strcmp(a, "--min-words") ||
                   !strcmp(a, "--max-words")) {
            int64_t *dst = !strcmp(a, "--min-chars") ? &p.min_chars : !strcmp(a, "--max-chars") ? &p.max_chars
                           : !strcmp(a, "--min-words") ? &p.min_words : &p.max_words;
            if (!opt_i64(argc, argv, &i, cmd, 0, INT64_MAX / 2, dst, &rc)) return rc;
        } else if (!strcmp(a, "--max-nonletter")) {
            if (!opt_f64(argc, argv, &i, cmd, 0, 1, &p.max_nonletter, &rc)) return rc;
        } else if (!strcmp(a, "--max-digit")) {
            if (!opt_f64(argc, argv, &i, cmd, 0, 1, &p.max_digit, &rc)) return rc;
        } else if (!strcmp(a, "--lang")) {
            if (!(p.lang = cli_value(argc, argv, &i))) return 2;
            if (strcmp(p.lang, "en")) return cli_usage(cmd, "--lang: only 'en' has a test, got '%s'", p.lang);
        } else if (!strcmp(a, "--min-ascii")) {
            if (!opt_f64(argc, argv, &i, cmd, 0, 1, &p.en_min_ascii, &rc)) return rc;
        } else if (!strcmp(a, "--min-stopwords")) {
            if (!opt_f64(argc, argv, &i, cmd, 0, 1, &p.en_min_stopwords, &rc)) return rc;
        } else if (!strcmp(a, "--forbid")) {
            if (n_forbid == MAX_FILES) return cli_usage(cmd, "too many --forbid");
            if (!(forbid[n_forbid++] = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--forbid-file")) {
            if (!(forbid_file = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--eval")) {
            if (n_evals == MAX_FILES) return cli_usage(cmd, "too many --eval files");
            if (!(evals[n_evals++] = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--ngram")) {
            if (!opt_i64(argc, argv, &i, cmd, 1, 63, &v64, &rc)) return rc;
            p.ngram = (int32_t)v64;
        } else if (!strcmp(a, "--ngram-min")) {
            if (!opt_i64(argc, argv, &i, cmd, 1, 63, &v64, &rc)) return rc;
            p.ngram_min = (int32_t)v64;
        } else if (!strcmp(a, "--no-exact")) {
            p.exact = false;
        } else if (!strcmp(a, "--no-near")) {
            p.near = false;
        } else if (!strcmp(a, "--threshold")) {
            if (!opt_f64(argc, argv, &i, cmd, 0.01, 1, &p.threshold, &rc)) return rc;
        } else if (!strcmp(a, "--num-perm")) {
            if (!opt_i64(argc, argv, &i, cmd, 1, 4096, &v64, &rc)) return rc;
            p.num_perm = (int32_t)v64;
        } else if (!strcmp(a, "--shingle")) {
            if (!opt_i64(argc, argv, &i, cmd, 1, 64, &v64, &rc)) return rc;
            p.shingle = (int32_t)v64;
        } else if (!strcmp(a, "--char-shingles")) {
            p.char_shingles = true;
        } else if (!strcmp(a, "--bands") || !strcmp(a, "--rows")) {
            if (!opt_i64(argc, argv, &i, cmd, 1, 4096, &v64, &rc)) return rc;
            *(a[2] == 'b' ? &p.bands : &p.rows) = (int32_t)v64;
        } else if (!strcmp(a, "--seed")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_u64(v, &p.seed)) return cli_usage(cmd, "--seed needs a whole number, got '%s'", v);
        } else if (!strcmp(a, "--report")) {
            if (!(report = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--report-json")) {
            if (!(report_json = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--examples")) {
            if (!opt_i64(argc, argv, &i, cmd, 0, 1000000, &examples, &rc)) return rc;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!opt_i64(argc, argv, &i, cmd, 0, 1024, &v64, &rc)) return rc;
            p.threads = (int32_t)v64;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            quiet = true;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = true;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage(cmd, "unknown argument '%s'", a);
        } else {
            if (n_files == MAX_FILES) return cli_usage(cmd, "too many input files");
            files[n_files++] = a;
        }
    }
    if (!n_files) return cli_usage(cmd, "no input file");
    if (!out && !out_dir) return cli_usage(cmd, "needs -o FILE or --out-dir DIR");
    if ((p.bands > 0) != (p.rows > 0)) return cli_usage(cmd, "give both --bands and --rows, or neither");
    nm_err err = {0};
    nm_log log = cli_logger(verbose);
    if (!verbose) log.min_level = NM_LOG_WARN;
    nm_docset *docs = nm_docset_new(), *ev = n_evals ? nm_docset_new() : NULL;
    nm_clean_result r = {0};
    char *text = NULL, *ftext = NULL, **fl = NULL;
    rc = 1;
    if (!docs || (n_evals && !ev)) {
        nm_err_set(&err, NM_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t f = 0; f < n_files; f++)
        if (nm_docset_add_file(docs, files[f], (nm_doc_split)split, field, &err)) goto out;
    for (size_t f = 0; f < n_evals; f++)
        if (nm_docset_add_file(ev, evals[f], NM_DOC_AUTO, NULL, &err)) goto out;
    p.eval = ev;
    /* forbidden strings: the options, then the file's lines */
    size_t n_fl = n_forbid;
    if (forbid_file) {
        size_t len;
        if (nm_read_file(forbid_file, &ftext, &len, &err)) goto out;
        for (size_t k = 0; k < len; k++) n_fl += ftext[k] == '\n';
        n_fl++;
    }
    fl = calloc(n_fl ? n_fl : 1, sizeof *fl);
    if (!fl) {
        nm_err_set(&err, NM_ERR_NOMEM, "out of memory");
        goto out;
    }
    size_t k_fl = 0;
    for (size_t k = 0; k < n_forbid; k++) fl[k_fl++] = (char *)forbid[k];
    for (char *s = ftext; s && *s;) {
        char *nl = strchr(s, '\n');
        if (nl) *nl = 0;
        size_t l = strlen(s);
        if (l && s[l - 1] == '\r') s[--l] = 0;
        if (l) fl[k_fl++] = s;
        s = nl ? nl + 1 : s + l;
    }
    p.forbid = (const char *const *)fl;
    p.n_forbid = k_fl;
    p.progress = on_progress;
    p.user = &verbose;
    if (nm_clean_run(docs, &p, &r, &log, &err)) goto out;
    if (out && nm_clean_write(docs, &r, -1, out, &err)) goto out;
    if (out_dir) {
        for (int32_t f = 0; f < nm_docset_n_files(docs); f++) {
            const char *path = nm_docset_file(docs, f), *base = strrchr(path, '/');
            base = base ? base + 1 : path;
            size_t l = strlen(out_dir) + strlen(base) + 2;
            char *dst = malloc(l);
            if (!dst) {
                nm_err_set(&err, NM_ERR_NOMEM, "out of memory");
                goto out;
            }
            snprintf(dst, l, "%s/%s", out_dir, base);
            nm_status st = nm_clean_write(docs, &r, f, dst, &err);
            free(dst);
            if (st) goto out;
        }
    }
    if (!quiet || report) {
        if (nm_clean_report(docs, &p, &r, false, (int32_t)examples, &text, &err)) goto out;
        if (!quiet) fputs(text, stdout);
        if (report && nm_write_file_atomic(report, text, strlen(text), &err)) goto out;
        free(text);
        text = NULL;
    }
    if (report_json) {
        if (nm_clean_report(docs, &p, &r, true, (int32_t)examples, &text, &err)) goto out;
        if (nm_write_file_atomic(report_json, text, strlen(text), &err)) goto out;
    }
    rc = 0;
out:
    if (rc) cli_fail(&err);
    free(text);
    free(ftext);
    free(fl);
    nm_clean_result_deinit(&r);
    nm_docset_free(docs);
    nm_docset_free(ev);
    return rc;
}

int cmd_curate(int argc, char **argv) {
    if (argc < 2) return cli_usage("curate", "missing a step: generate, score or clean");
    if (cli_is_help(argv[1])) {
        help();
        return 0;
    }
    /* the step's own argv[0] names it in messages */
    static char gen[] = "curate generate", score[] = "curate score", clean[] = "curate clean";
    if (!strcmp(argv[1], "generate")) {
        argv[1] = gen;
        return curate_generate(argc - 1, argv + 1);
    }
    if (!strcmp(argv[1], "score")) {
        argv[1] = score;
        return curate_score(argc - 1, argv + 1);
    }
    if (!strcmp(argv[1], "clean")) {
        argv[1] = clean;
        return curate_clean(argc - 1, argv + 1);
    }
    return cli_usage("curate", "unknown step '%s' (generate, score or clean)", argv[1]);
}
