/* distill.c - `nomoat distill`: the teacher cache (cache, info), students
 * made from the teacher's layers (derive), and training on the cache
 * (train: `nomoat train` with the distillation options). */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void help(void) {
    printf(
        "usage: nomoat distill cache -t TEACHER.gguf [--lora A ...] --data FILE -o CACHE [options]\n"
        "       nomoat distill train --cache CACHE -m STUDENT.gguf --data FILE --out DIR [options]\n"
        "       nomoat distill train --cache CACHE -t TEACHER.gguf --init-from-teacher LAYERS --data FILE --out DIR\n"
        "       nomoat distill derive -t TEACHER.gguf --layers LAYERS -o STUDENT.gguf\n"
        "       nomoat distill info CACHE\n\n"
        "Moves what a teacher (a model and its adapter stack) knows into a student.  'cache' runs the\n"
        "teacher once over the data and writes, for every trained position, its top-k next tokens with\n"
        "their log-probabilities and the probability of all the others; 'train' trains the student on\n"
        "it (nomoat train with a distillation loss: checkpoints, --resume, stacks all apply).\n\n"
        "cache:\n"
        "  -t, --teacher FILE     the teacher's GGUF\n"
        "  --lora A, --lora-scaled A S   the teacher's adapters (bottom first)   --force\n"
        "  --data FILE            any training format, or text the teacher generated (nomoat curate)\n"
        "  --format F  --chat-template NAME  --var KEY=VALUE  --no-mask-prompt  --skip-bad\n"
        "  --seq L (256)          tokens per sequence, as training will use them\n"
        "  --top-k K (16)         teacher tokens kept per position (1..1024)\n"
        "  --batch B (4)  --threads N (all)\n"
        "  -o, --out CACHE        the cache file\n"
        "train (every option of nomoat train, plus):\n"
        "  --cache CACHE          the teacher cache (--seq and prompt masking default to the cache's)\n"
        "  --tau T (1)            temperature: the loss is T^2 KL of the softened distributions\n"
        "  --kd-alpha A (0)       weight of cross-entropy on the data tokens: (1-A) KD + A CE\n"
        "  --reverse              KL(student || teacher) instead of KL(teacher || student)\n"
        "  -t, --teacher FILE     check that the cache comes from this teacher\n"
        "  --teacher-lora A       ... with this adapter stack (repeatable)\n"
        "  --init-from-teacher LAYERS   student = these layers of the teacher (every-2nd-layer,\n"
        "                         every-3rd-layer, or a list such as 0,2,4), fully trained; written\n"
        "                         to DIR/student-init.gguf\n"
        "derive:\n"
        "  -t, --teacher FILE  --layers LAYERS  -o, --out FILE\n");
}

static int do_info(int argc, char **argv) {
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            help();
            return 0;
        }
        if (argv[i][0] == '-') return cli_usage("distill", "unknown option '%s'", argv[i]);
        if (path) return cli_usage("distill", "info takes one cache file");
        path = argv[i];
    }
    if (!path) return cli_usage("distill", "info needs a cache file");
    nm_distill_cache_info in;
    char *meta = NULL;
    nm_err err = {0};
    if (nm_distill_cache_info_read(path, &in, &meta, &err)) return cli_fail(&err);
    printf("cache %s: %llu bytes\n", path, (unsigned long long)in.file_bytes);
    printf("teacher %s  data %s  vocabulary %s (%d tokens)\n", in.teacher_id, in.data_hash, in.vocab_hash, in.n_vocab);
    printf("top-k %d  seq %d  prompt masking %s\n", in.k, in.seq_len, in.mask_prompt ? "on" : "off");
    printf("%lld examples, %lld tokens, %lld trained positions (%.1f MB per million positions)\n",
           (long long)in.n_examples, (long long)in.n_tokens, (long long)in.n_positions,
           in.n_positions ? (double)in.file_bytes / (double)in.n_positions : 0.0);
    printf("metadata %s\n", meta ? meta : "{}");
    free(meta);
    return 0;
}

static int do_cache(int argc, char **argv) {
    nm_distill_cache_params p;
    nm_distill_cache_params_default(&p);
    cli_loras stack = {0};
    float scales[CLI_MAX_LORAS];
    const char **vars = calloc((size_t)argc + 1, sizeof *vars);
    if (!vars) return 1;
    size_t n_vars = 0;
    bool verbose = false;
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int lrc;
        int64_t x;
        if (cli_is_help(a)) {
            help();
            rc = 0;
            goto out;
        } else if (cli_lora_stack_opt(argc, argv, &i, &stack, &lrc)) {
            if (lrc) goto out;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--teacher") || !strcmp(a, "-m")) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            p.teacher = v;
        } else if (!strcmp(a, "--data")) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            p.data = v;
        } else if (!strcmp(a, "--format")) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            p.format = v;
        } else if (!strcmp(a, "--chat-template")) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            p.chat_template = v;
        } else if (!strcmp(a, "--var")) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            if (!strchr(v, '=')) {
                cli_usage("distill", "--var needs KEY=VALUE, got '%s'", v);
                goto out;
            }
            vars[n_vars++] = v;
        } else if (!strcmp(a, "--no-mask-prompt")) {
            p.mask_prompt = false;
        } else if (!strcmp(a, "--skip-bad")) {
            p.skip_bad = true;
        } else if (!strcmp(a, "--seq") || !strcmp(a, "--top-k") || !strcmp(a, "--batch") || !strcmp(a, "--threads")) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            int64_t hi = !strcmp(a, "--seq") ? 1 << 20 : !strcmp(a, "--top-k") ? 1024 : 4096;
            int64_t lo = !strcmp(a, "--seq") ? 2 : !strcmp(a, "--threads") ? 0 : 1;
            if (!cli_parse_i64(v, lo, hi, &x)) {
                cli_usage("distill", "%s needs an integer in [%lld, %lld], got '%s'", a, (long long)lo, (long long)hi, v);
                goto out;
            }
            if (!strcmp(a, "--seq")) p.seq_len = (int32_t)x;
            else if (!strcmp(a, "--top-k")) p.top_k = (int32_t)x;
            else if (!strcmp(a, "--batch")) p.batch = (int32_t)x;
            else p.threads = (int32_t)x;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            p.out = v;
        } else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) {
            verbose = true;
        } else {
            cli_usage("distill", "unknown option '%s'", a);
            goto out;
        }
    }
    if (!p.teacher || !p.data || !p.out) {
        cli_usage("distill", "cache needs -t TEACHER.gguf, --data FILE and -o CACHE");
        goto out;
    }
    for (size_t k = 0; k < stack.n; k++) scales[k] = stack.entry[k].scale;
    p.loras = stack.path;
    p.lora_scales = scales;
    p.n_loras = stack.n;
    p.force = stack.force;
    p.vars = vars;
    p.n_vars = n_vars;
    nm_distill_cache_info in;
    nm_log lg = cli_logger(verbose);
    nm_err err = {0};
    if (nm_distill_cache_write(&p, &in, &lg, &err)) {
        rc = cli_fail(&err);
        goto out;
    }
    printf("teacher cache written to %s: %lld positions of %lld examples, top-%d, %llu bytes (%.1f MB per million "
           "positions), teacher loss %.4f, %.1f s (%.0f positions/s)\n",
           p.out, (long long)in.n_positions, (long long)in.n_examples, in.k, (unsigned long long)in.file_bytes,
           in.n_positions ? (double)in.file_bytes / (double)in.n_positions : 0.0, in.teacher_loss, in.seconds,
           in.seconds > 0 ? (double)in.n_positions / in.seconds : 0.0);
    rc = 0;
out:
    free(vars);
    return rc;
}

static int do_derive(int argc, char **argv) {
    const char *teacher = NULL, *layers = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) {
            help();
            return 0;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--teacher") || !strcmp(a, "-m")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            teacher = v;
        } else if (!strcmp(a, "--layers") || !strcmp(a, "--init-from-teacher")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            layers = v;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            out = v;
        } else {
            return cli_usage("distill", "unknown option '%s'", a);
        }
    }
    if (!teacher || !layers || !out) return cli_usage("distill", "derive needs -t TEACHER.gguf, --layers LAYERS and -o FILE");
    nm_log lg = cli_logger(false);
    nm_err err = {0};
    if (nm_distill_derive(teacher, layers, out, &lg, &err)) return cli_fail(&err);
    printf("student written to %s\n", out);
    return 0;
}

/* `distill train`: the distillation options become nomoat train's, the
 * rest passes through. */
static int do_train(int argc, char **argv) {
    const char **av = calloc((size_t)argc + 16, sizeof *av);
    if (!av) return 1;
    int n = 0, rc = 2;
    av[n++] = "train";
    const char *cache = NULL, *teacher = NULL, *init = NULL, *out = NULL, *model = NULL;
    const char *tl[CLI_MAX_LORAS];
    size_t n_tl = 0;
    bool seq_given = false, mask_given = false, resume = false;
    char seqbuf[32], initpath[4096];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) {
            help();
            rc = 0;
            goto out;
        } else if (!strcmp(a, "--cache")) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            cache = v;
            av[n++] = "--distill";
            av[n++] = v;
        } else if (!strcmp(a, "--tau") || !strcmp(a, "--kd-alpha")) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            av[n++] = !strcmp(a, "--tau") ? "--distill-tau" : "--distill-alpha";
            av[n++] = v;
        } else if (!strcmp(a, "--reverse")) {
            av[n++] = "--distill-reverse";
        } else if (!strcmp(a, "-t") || !strcmp(a, "--teacher")) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            teacher = v;
        } else if (!strcmp(a, "--teacher-lora")) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            if (n_tl == CLI_MAX_LORAS) {
                cli_usage("distill", "at most %d teacher adapters", CLI_MAX_LORAS);
                goto out;
            }
            tl[n_tl++] = v;
        } else if (!strcmp(a, "--init-from-teacher")) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            init = v;
        } else {
            /* nomoat train's own: pass through, noting what changes defaults */
            if (!strcmp(a, "--seq")) seq_given = true;
            if (!strcmp(a, "--no-mask-prompt")) mask_given = true;
            if (!strcmp(a, "--resume")) resume = true;
            if ((!strcmp(a, "-o") || !strcmp(a, "--out")) && i + 1 < argc) out = argv[i + 1];
            if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && i + 1 < argc) model = argv[i + 1];
            av[n++] = a; /* a value comes through as the next word: train checks it */
        }
    }
    if (resume) {
        rc = cmd_train(n, (char **)av);
        goto out;
    }
    if (!cache) {
        cli_usage("distill", "train needs --cache CACHE (make it with nomoat distill cache)");
        goto out;
    }
    nm_distill_cache_info in;
    nm_err err = {0};
    if (nm_distill_cache_info_read(cache, &in, NULL, &err)) {
        rc = cli_fail(&err);
        goto out;
    }
    if (teacher) {
        char id[17];
        if (nm_distill_teacher_id(teacher, tl, NULL, n_tl, id, &err)) {
            rc = cli_fail(&err);
            goto out;
        }
        if (strcmp(id, in.teacher_id)) {
            fprintf(stderr, "nomoat: error: %s was not made by this teacher (%s%s: %s, the cache: %s)\n", cache,
                    teacher, n_tl ? " and its adapters" : "", id, in.teacher_id);
            rc = 1;
            goto out;
        }
    } else if (n_tl) {
        cli_usage("distill", "--teacher-lora needs --teacher");
        goto out;
    }
    if (init) {
        if (!teacher) {
            cli_usage("distill", "--init-from-teacher needs --teacher TEACHER.gguf");
            goto out;
        }
        if (model) {
            cli_usage("distill", "--init-from-teacher makes the student: give no -m");
            goto out;
        }
        if (!out) {
            cli_usage("distill", "missing --out DIR");
            goto out;
        }
        if (mkdir(out, 0777) != 0 && errno != EEXIST) {
            fprintf(stderr, "nomoat: error: %s: cannot create directory: %s\n", out, strerror(errno));
            rc = 1;
            goto out;
        }
        snprintf(initpath, sizeof initpath, "%s/student-init.gguf", out);
        nm_log lg = cli_logger(false);
        if (nm_distill_derive(teacher, init, initpath, &lg, &err)) {
            rc = cli_fail(&err);
            goto out;
        }
        av[n++] = "-m";
        av[n++] = initpath;
        av[n++] = "--full";
    }
    if (!seq_given) {
        snprintf(seqbuf, sizeof seqbuf, "%d", in.seq_len);
        av[n++] = "--seq";
        av[n++] = seqbuf;
    }
    if (!mask_given && !in.mask_prompt) av[n++] = "--no-mask-prompt";
    rc = cmd_train(n, (char **)av);
out:
    free(av);
    return rc;
}

int cmd_distill(int argc, char **argv) {
    if (argc < 2 || cli_is_help(argv[1])) {
        help();
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "cache")) return do_cache(argc - 1, argv + 1);
    if (!strcmp(sub, "train")) return do_train(argc - 1, argv + 1);
    if (!strcmp(sub, "derive")) return do_derive(argc - 1, argv + 1);
    if (!strcmp(sub, "info")) return do_info(argc - 1, argv + 1);
    return cli_usage("distill", "unknown subcommand '%s' (cache, train, derive, info)", sub);
}
