/* train.c - `nomoat train`: LoRA or full fine-tuning (nm_train_run), and
 * `nomoat train --bench` (nm_train_bench). */
#include "cli.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void help(void) {
    printf(
        "usage: nomoat train -m BASE.gguf --data FILE --out DIR [options]\n"
        "       nomoat train --resume DIR [--threads N] [--steps N]\n"
        "       nomoat train --bench -m MODEL.gguf [--rank R --seq L --batch B --threads N --steps N]\n\n"
        "Fine-tunes a LoRA adapter on a frozen base model (any weight type: F32, F16, BF16, Q8_0, Q4_0,\n"
        "Q4_K, Q6_K...) or, with --full, every weight.  DIR receives the adapter in PEFT layout\n"
        "(adapter_model.safetensors, adapter_config.json; model.gguf with --full), the trainer state\n"
        "used by --resume and metrics.jsonl.  Checkpoints are atomic; Ctrl-C saves one and stops.\n\n"
        "data:\n"
        "  --data FILE            training data\n"
        "  --format F             auto (default), text, alpaca, sharegpt, messages\n"
        "  --val-file FILE        validation data        --val-split F   hold out a fraction (0)\n"
        "  --eval-every N         validate every N steps (100; 0: at the end)\n"
        "  --chat-template NAME   instead of the model's (chatml, llama2, llama3, zephyr, ...)\n"
        "  --var KEY=VALUE        replace {{KEY}} in the data (repeatable)\n"
        "  --no-mask-prompt       train on prompt tokens too (default: assistant tokens only)\n"
        "  --no-pack              one example per sequence (default: packed, kept apart)\n"
        "  --no-shuffle           keep the data order     --skip-bad   skip malformed records\n"
        "adapter:\n"
        "  --rank R (8)  --alpha A (16)  --rslora  --dropout P (0)\n"
        "  --targets LIST         all (default) or q,k,v,o,gate,up,down\n"
        "  --full                 full fine-tuning of every weight (float32)\n"
        "  --lora A, --lora-scaled A S   train on top of adapter A (frozen, scale S; repeatable,\n"
        "                         bottom of the stack first): the new adapter records the stack\n"
        "  --force                accept stack adapters trained on another base\n"
        "distillation (docs/DISTILL.md; `nomoat distill` makes the cache):\n"
        "  --distill CACHE        loss: KL to the teacher in CACHE instead of cross-entropy\n"
        "  --distill-tau T (1)  --distill-alpha A (0: weight of cross-entropy)  --distill-reverse\n"
        "optimisation:\n"
        "  --lr LR (2e-4)  --min-lr LR (0)  --schedule cosine|linear|constant  --warmup N (0)\n"
        "  --weight-decay W (0)  --beta1 B (0.9)  --beta2 B (0.999)  --adam-eps E (1e-8)\n"
        "  --clip N               clip the global gradient norm (1.0; 0: off)\n"
        "  --epochs N (1) | --steps N\n"
        "  --batch B (4)          sequences per micro-batch\n"
        "  --seq L (256)          tokens per sequence\n"
        "  --grad-accum K (1)     micro-batches per step\n"
        "  --grad-checkpoint on|off|auto   recompute layers in the backward (auto: above 1 GiB)\n"
        "run:\n"
        "  -o, --out DIR          output directory        --resume DIR   continue a run\n"
        "  --checkpoint-every N   (100; 0: at the end)     --metrics FILE (DIR/metrics.jsonl)\n"
        "  --threads N (all)  --seed S (42)  --quiet  --verbose\n"
        "  mpirun -np N nomoat train ...   data parallel over N processes / machines (a build with\n"
        "                         make MPI=1): the same run, each rank a share of every batch\n"
        "preference tuning (DPO, docs/DPO.md):\n"
        "  --dpo                  the data are preference pairs (ShareGPT conversations/chosen/rejected,\n"
        "                         prompt/chosen/rejected, or HH-RLHF transcripts); --batch counts pairs\n"
        "  --dpo-loss sigmoid|ipo (sigmoid)   --beta B (0.1)\n"
        "  --label-smoothing E    conservative DPO: assume a fraction E of the labels are flipped (0)\n");
}

/* ---- SIGINT: the first asks for a checkpoint and a clean stop, the second
 * exits at once ---- */
static volatile sig_atomic_t g_stop;

static void on_sigint(int sig) {
    (void)sig;
    if (g_stop) _exit(130);
    g_stop = 1;
}

static bool should_stop(void *user) {
    (void)user;
    return g_stop != 0;
}

typedef struct progress {
    bool tty, quiet;
    int64_t log_every;
} progress;

static void fmt_time(double s, char *buf, size_t cap) {
    if (!(s >= 0) || s > 1e8) {
        snprintf(buf, cap, "?");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60)
        snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(buf, cap, "%lds", t);
}

/* Test hook of tests/test_mpi.c: NOMOAT_TEST_DIE_AT=RANK:STEP makes that rank
 * vanish after that step, as a crashed machine would (no MPI_Finalize). */
static void test_die_at(const nm_train_stats *s) {
    const char *e = getenv("NOMOAT_TEST_DIE_AT");
    long rank, step;
    if (e && sscanf(e, "%ld:%ld", &rank, &step) == 2 && rank == nm_dist_rank() && step == s->step) {
        fprintf(stderr, "nomoat: NOMOAT_TEST_DIE_AT: rank %ld dies after step %ld\n", rank, step);
        _exit(3);
    }
}

static int on_step(void *user, const nm_train_stats *s) {
    progress *p = user;
    test_die_at(s);
    if (p->quiet || nm_dist_rank() != 0) return 0; /* under mpirun: rank 0 reports */
    p->log_every = s->total_steps > 200 ? s->total_steps / 100 : 1;
    char eta[32], val[48] = "";
    fmt_time(s->eta_s, eta, sizeof eta);
    if (!isnan(s->val_loss)) snprintf(val, sizeof val, "  val %.4f", s->val_loss);
    char pref[96] = "";
    if (s->dpo) /* preference tuning: reward accuracy and margin (validation's when there is one) */
        snprintf(pref, sizeof pref, "  acc %.2f margin %.3f%s", isnan(s->val_reward_acc) ? s->reward_acc : s->val_reward_acc,
                 isnan(s->val_reward_acc) ? s->reward_margin : s->val_reward_margin, isnan(s->val_reward_acc) ? "" : " (val)");
    if (p->tty) {
        int width = 24, done = s->total_steps ? (int)(width * s->step / s->total_steps) : width;
        char bar[32];
        for (int i = 0; i < width; i++) bar[i] = i < done ? '#' : '.';
        bar[width] = 0;
        fprintf(stderr, "\r[%s] %lld/%lld  loss %.4f%s%s  lr %.2e  %.0f tok/s  ETA %s \033[K", bar, (long long)s->step,
                (long long)s->total_steps, s->loss, val, pref, s->lr, s->tokens_per_s, eta);
        if (s->step == s->total_steps) fputc('\n', stderr);
    } else if (s->step % p->log_every == 0 || s->step == 1 || s->evaluated || s->step == s->total_steps) {
        fprintf(stderr, "step %lld/%lld  epoch %lld  loss %.4f%s%s  lr %.3e  grad-norm %.3f  %.1f tok/s  ETA %s%s\n",
                (long long)s->step, (long long)s->total_steps, (long long)s->epoch, s->loss, val, pref, s->lr, s->grad_norm,
                s->tokens_per_s, eta, s->checkpointed ? "  [checkpoint]" : "");
    }
    return 0;
}

static int bench(const char *model, int64_t rank, int64_t seq, int64_t batch, int64_t threads, int64_t steps,
                 const char *targets, int ckpt, bool full) {
    nm_train_bench_params bp;
    nm_train_bench_default(&bp);
    bp.model = model;
    if (rank) bp.rank = (int32_t)rank;
    if (seq) bp.seq_len = (int32_t)seq;
    if (batch) bp.batch = (int32_t)batch;
    bp.threads = (int32_t)threads;
    if (steps) bp.steps = (int32_t)steps;
    if (targets) bp.targets = targets;
    bp.act_checkpointing = ckpt;
    bp.full = full;
    nm_train_bench_result r;
    nm_log lg = cli_logger(false);
    nm_err err = {0};
    if (nm_train_bench(&bp, &r, &lg, &err)) return cli_fail(&err);
    printf("model %s  %s rank %d targets %s  seq %d x batch %d  threads %d  checkpointing %s\n", model,
           full ? "full" : "LoRA", bp.rank, bp.targets, bp.seq_len, bp.batch, r.threads,
           r.act_checkpointing ? "on" : "off");
    printf("train: %.1f tokens/s  %.3f s/step  %.2f GFLOP/s (%.3g FLOP/token fwd+bwd)  peak RSS %.1f MiB  "
           "activations %.1f MiB\n",
           r.tokens_per_s, r.step_s, r.gflops_per_s, r.flops_per_token, (double)r.peak_rss / 1048576.0,
           (double)r.act_bytes / 1048576.0);
    return 0;
}

int cmd_train(int argc, char **argv) {
    nm_train_params p;
    nm_train_params_default(&p);
    const char **vars = calloc((size_t)argc + 1, sizeof *vars);
    if (!vars) return 1;
    size_t n_vars = 0;
    bool quiet = false, verbose = false, do_bench = false;
    bool rank_set = false, seq_set = false, batch_set = false;
    cli_loras stack = {0};
    float stack_scales[CLI_MAX_LORAS];
    int rc = 2;
#define VAL()                                   \
    const char *v = cli_value(argc, argv, &i);  \
    if (!v) goto out
#define INT(lo, hi, dst)                                                                      \
    do {                                                                                      \
        VAL();                                                                                \
        int64_t x_;                                                                           \
        if (!cli_parse_i64(v, lo, hi, &x_)) {                                                 \
            cli_usage("train", "%s needs an integer in [%lld, %lld], got '%s'", argv[i - 1],  \
                      (long long)(lo), (long long)(hi), v);                                   \
            goto out;                                                                         \
        }                                                                                     \
        dst = x_;                                                                             \
    } while (0)
#define REAL(dst)                                                                    \
    do {                                                                             \
        VAL();                                                                       \
        double x_;                                                                   \
        if (!cli_parse_f64(v, &x_) || !isfinite(x_)) {                               \
            cli_usage("train", "%s needs a number, got '%s'", argv[i - 1], v);      \
            goto out;                                                                \
        }                                                                            \
        dst = x_;                                                                    \
    } while (0)
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int lrc;
        if (cli_is_help(a)) {
            help();
            rc = 0;
            goto out;
        } else if (cli_lora_stack_opt(argc, argv, &i, &stack, &lrc)) {
            if (lrc) goto out;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            VAL();
            p.model = v;
        } else if (!strcmp(a, "--data")) {
            VAL();
            p.data = v;
        } else if (!strcmp(a, "--format")) {
            VAL();
            p.format = v;
        } else if (!strcmp(a, "--val-file")) {
            VAL();
            p.val_data = v;
        } else if (!strcmp(a, "--val-split")) {
            REAL(p.val_split);
        } else if (!strcmp(a, "--eval-every")) {
            INT(0, INT64_MAX, p.eval_every);
        } else if (!strcmp(a, "--val-max-rows")) {
            INT(0, INT64_MAX, p.val_max_rows);
        } else if (!strcmp(a, "--chat-template")) {
            VAL();
            p.chat_template = v;
        } else if (!strcmp(a, "--var")) {
            VAL();
            if (!strchr(v, '=')) {
                cli_usage("train", "--var needs KEY=VALUE, got '%s'", v);
                goto out;
            }
            vars[n_vars++] = v;
        } else if (!strcmp(a, "--no-mask-prompt")) {
            p.mask_prompt = false;
        } else if (!strcmp(a, "--no-pack")) {
            p.pack = false;
        } else if (!strcmp(a, "--no-shuffle")) {
            p.shuffle = false;
        } else if (!strcmp(a, "--skip-bad")) {
            p.skip_bad = true;
        } else if (!strcmp(a, "--rank")) {
            INT(1, 4096, p.rank);
            rank_set = true;
        } else if (!strcmp(a, "--alpha")) {
            REAL(p.alpha);
        } else if (!strcmp(a, "--rslora")) {
            p.rslora = true;
        } else if (!strcmp(a, "--dropout")) {
            REAL(p.dropout);
        } else if (!strcmp(a, "--targets")) {
            VAL();
            p.targets = v;
        } else if (!strcmp(a, "--full")) {
            p.full = true;
        } else if (!strcmp(a, "--lr")) {
            REAL(p.lr);
        } else if (!strcmp(a, "--min-lr")) {
            REAL(p.min_lr);
        } else if (!strcmp(a, "--schedule")) {
            VAL();
            p.schedule = v;
        } else if (!strcmp(a, "--warmup")) {
            INT(0, INT64_MAX, p.warmup);
        } else if (!strcmp(a, "--weight-decay")) {
            REAL(p.weight_decay);
        } else if (!strcmp(a, "--beta1")) {
            REAL(p.beta1);
        } else if (!strcmp(a, "--beta2")) {
            REAL(p.beta2);
        } else if (!strcmp(a, "--adam-eps")) {
            REAL(p.adam_eps);
        } else if (!strcmp(a, "--clip")) {
            REAL(p.clip);
        } else if (!strcmp(a, "--epochs")) {
            INT(1, 1000000, p.epochs);
        } else if (!strcmp(a, "--steps")) {
            INT(1, INT64_MAX, p.steps);
        } else if (!strcmp(a, "--batch")) {
            INT(1, 4096, p.batch);
            batch_set = true;
        } else if (!strcmp(a, "--seq")) {
            INT(2, 1 << 20, p.seq_len);
            seq_set = true;
        } else if (!strcmp(a, "--grad-accum")) {
            INT(1, 1 << 16, p.grad_accum);
        } else if (!strcmp(a, "--grad-checkpoint")) {
            VAL();
            if (!strcmp(v, "on"))
                p.act_checkpointing = 1;
            else if (!strcmp(v, "off"))
                p.act_checkpointing = 0;
            else if (!strcmp(v, "auto"))
                p.act_checkpointing = -1;
            else {
                cli_usage("train", "--grad-checkpoint takes on, off or auto, got '%s'", v);
                goto out;
            }
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            VAL();
            p.out_dir = v;
        } else if (!strcmp(a, "--resume")) {
            VAL();
            p.resume_dir = v;
        } else if (!strcmp(a, "--checkpoint-every")) {
            INT(0, INT64_MAX, p.checkpoint_every);
        } else if (!strcmp(a, "--metrics")) {
            VAL();
            p.metrics = v;
        } else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) {
            INT(0, 1024, p.threads);
        } else if (!strcmp(a, "--seed")) {
            VAL();
            if (!cli_parse_u64(v, &p.seed)) {
                cli_usage("train", "--seed needs a non-negative integer, got '%s'", v);
                goto out;
            }
        } else if (!strcmp(a, "--dpo")) {
            p.dpo = true;
        } else if (!strcmp(a, "--dpo-loss")) {
            VAL();
            p.dpo_loss = v;
        } else if (!strcmp(a, "--beta")) {
            REAL(p.dpo_beta);
        } else if (!strcmp(a, "--label-smoothing")) {
            REAL(p.dpo_label_smoothing);
        } else if (!strcmp(a, "--distill")) {
            VAL();
            p.distill_cache = v;
        } else if (!strcmp(a, "--distill-tau")) {
            REAL(p.distill_tau);
        } else if (!strcmp(a, "--distill-alpha")) {
            REAL(p.distill_alpha);
        } else if (!strcmp(a, "--distill-reverse")) {
            p.distill_reverse = true;
        } else if (!strcmp(a, "--bench")) {
            do_bench = true;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            quiet = true;
        } else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) {
            verbose = true;
        } else {
            cli_usage("train", "unknown option '%s'", a);
            goto out;
        }
    }
#undef VAL
#undef INT
#undef REAL
    p.vars = vars;
    p.n_vars = n_vars;
    for (size_t k = 0; k < stack.n; k++) stack_scales[k] = stack.entry[k].scale;
    p.loras = stack.path;
    p.lora_scales = stack_scales;
    p.n_loras = stack.n;
    p.force = stack.force;
    if (do_bench) {
        if (!p.model) {
            cli_usage("train", "--bench needs -m MODEL");
            goto out;
        }
        rc = bench(p.model, rank_set ? p.rank : 0, seq_set ? p.seq_len : 0, batch_set ? p.batch : 0, p.threads,
                   p.steps > INT32_MAX ? INT32_MAX : p.steps,
                   strcmp(p.targets, "all") ? p.targets : NULL, p.act_checkpointing, p.full);
        goto out;
    }
    if (p.resume_dir) {
        /* a resumed run takes its configuration from the checkpoint; only
         * where files are, threads and the number of steps may change */
        nm_train_params q;
        nm_train_params_default(&q);
        q.resume_dir = p.resume_dir;
        q.out_dir = p.out_dir;
        q.model = p.model;
        q.data = p.data;
        q.steps = p.steps;
        q.threads = p.threads;
        q.metrics = p.metrics;
        q.loras = p.loras; /* the saved stack, moved (scales as saved) */
        q.n_loras = p.n_loras;
        q.distill_cache = p.distill_cache; /* the saved cache, moved */
        p = q;
    } else {
        if (!p.model) {
            cli_usage("train", "missing -m BASE.gguf");
            goto out;
        }
        if (!p.data) {
            cli_usage("train", "missing --data FILE");
            goto out;
        }
        if (!p.out_dir) {
            cli_usage("train", "missing --out DIR");
            goto out;
        }
    }
    /* logs (not a terminal): every step of short runs, ~100 lines for long ones */
    progress pr = {isatty(STDERR_FILENO) != 0, quiet, 1};
    p.on_step = on_step;
    p.should_stop = should_stop;
    p.user = &pr;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    nm_log lg = cli_logger(verbose);
    if (quiet) lg.min_level = NM_LOG_WARN;
    nm_err err = {0};
    nm_status st = nm_train_run(&p, &lg, &err);
    if (pr.tty && !quiet) fputc('\n', stderr);
    if (st == NM_ERR_CANCELLED) {
        if (nm_dist_rank() == 0) /* under mpirun every rank stopped at the same step */
            fprintf(stderr, "nomoat: interrupted: %s (continue with: nomoat train --resume %s)\n", err.msg,
                    p.resume_dir ? p.resume_dir : p.out_dir);
        rc = 130;
    } else if (st) {
        rc = cli_fail(&err);
    } else {
        if (!quiet && nm_dist_rank() == 0) printf("adapter written to %s\n", p.resume_dir && !p.out_dir ? p.resume_dir : p.out_dir);
        rc = 0;
    }
out:
    free(vars);
    return rc;
}
