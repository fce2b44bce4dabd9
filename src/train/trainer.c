/* trainer.c - the training loop: data, AdamW steps, validation,
 * checkpoints that survive any crash, exact resume (see nomoat.h).
 *
 * Determinism.  Everything a step does is a function of the configuration,
 * the step number and the state saved in the checkpoint: the data order of
 * epoch e is a permutation drawn from (seed, e), the dropout masks of
 * micro-batch k of step s come from (seed, s, k), and every parallel sum is
 * split by output element so the thread count does not change any bit.  A
 * checkpoint holds the parameters, both AdamW moments, the step and the data
 * position (epoch, row), so a resumed run repeats an uninterrupted one.
 *
 * Crash safety.  Each file is replaced atomically (temporary file, fsync,
 * rename).  The trainer state is written last and is self-contained (it
 * holds the trained parameters), so whatever instant a crash hits, resuming
 * from the directory is consistent. */
#include "train/adapter.h"
#include "train/data.h"
#include "train/dist.h"
#include "train/dpo.h"
#include "distill/distill.h"
#include "train/optim.h"
#include "train/pref.h"
#include "base/base.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#define STATE_FILE "trainer_state.safetensors"
#define STATE_KEY "nomoat.trainer"
#define STATE_VERSION 1
#define AUTO_CKPT_BYTES (1ull << 30)

void nm_train_params_default(nm_train_params *p) {
    memset(p, 0, sizeof *p);
    p->format = "auto";
    p->rank = 8;
    p->alpha = 16.0f;
    p->targets = "all";
    p->lr = 2e-4;
    p->schedule = "cosine";
    p->beta1 = 0.9;
    p->beta2 = 0.999;
    p->adam_eps = 1e-8;
    p->clip = 1.0;
    p->epochs = 1;
    p->batch = 4;
    p->seq_len = 256;
    p->grad_accum = 1;
    p->pack = true;
    p->shuffle = true;
    p->mask_prompt = true;
    p->act_checkpointing = -1;
    p->eval_every = 100;
    p->val_max_rows = 256;
    p->checkpoint_every = 100;
    p->seed = 42;
    p->dpo_loss = "sigmoid";
    p->dpo_beta = 0.1;
    p->distill_tau = 1.0f;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t peak_rss(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (uint64_t)ru.ru_maxrss * 1024u; /* Linux: KiB */
}

static uint64_t mix(uint64_t a, uint64_t b) {
    uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ULL + (a << 6) + (a >> 2));
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* ======================================================================== */
/* the trainer                                                              */
/* ======================================================================== */

typedef struct trainer {
    nm_train_params p; /* effective configuration */
    json_t *saved;     /* resume: the saved state (owns the strings p points to) */
    const char *out;
    const nm_log *log;
    nm_pool *pool;
    nm_tmodel *m;
    nm_vocab *vocab;
    nm_tm_lora *lora;
    /* training on a stack: the frozen adapters, their provenance records,
     * and (resume) the saved paths and scales */
    nm_lora **frozen_l;
    nm_lora_entry *frozen;
    nm_lora_prov *under;
    size_t n_frozen;
    const char **saved_lora_paths;
    float *saved_lora_scales;
    nm_tparam *params;
    int64_t n_params, n_elems;
    unsigned targets;
    nm_adamw opt;
    nm_adamw_cfg acfg;
    nm_sched sched;
    nm_dataset train, val;
    nm_rows rows, vrows;
    int64_t rows_epoch;
    uint64_t data_hash, val_hash;
    char fp[17];
    int64_t step, total, epoch, row, tokens;
    double elapsed_before; /* seconds trained by earlier runs (saved) */
    double elapsed_at_start, run_start;
    bool resumed;
    double last_val;
    int32_t *btok, *btgt, *bpos, *bdoc; /* one step's rows */
    FILE *metrics;
    char metrics_path[4096];
    /* data parallelism (dist.h): one rank of size ranks; ranks other than
     * 0 log warnings and errors only */
    nm_dist dist;
    nm_log rank_log;
    /* preference tuning: reference values of every sequence of the train
     * and validation pairs (2 per pair, computed once), the pair of each
     * row pair of the current rows, and the last step's / validation sums */
    nm_dpo_cfg dcfg;
    double *dref, *dvref, *dref_rows;
    int64_t *row_pair, *vrow_pair;
    nm_dpo_sums dsums, dvsums;
    nm_kd *kd; /* distillation: the teacher cache (NULL: cross-entropy) */
} trainer;

static void trainer_free(trainer *t) {
    if (t->metrics) fclose(t->metrics);
    free(t->dref);
    free(t->dvref);
    free(t->dref_rows);
    free(t->row_pair);
    free(t->vrow_pair);
    nm_kd_free(t->kd);
    free(t->btok);
    free(t->btgt);
    free(t->bpos);
    free(t->bdoc);
    nm_rows_deinit(&t->rows);
    nm_rows_deinit(&t->vrows);
    nm_dataset_deinit(&t->train);
    nm_dataset_deinit(&t->val);
    nm_adamw_deinit(&t->opt);
    nm_tm_lora_free(t->lora);
    for (size_t i = 0; i < t->n_frozen; i++) nm_lora_free(t->frozen_l[i]);
    free(t->frozen_l);
    free(t->frozen);
    free(t->under);
    free(t->saved_lora_paths);
    free(t->saved_lora_scales);
    nm_vocab_free(t->vocab);
    nm_tmodel_free(t->m);
    nm_pool_free(t->pool);
    json_decref(t->saved);
    nm_dist_deinit(&t->dist);
}

/* ---- the configuration as JSON (saved with every checkpoint) ---- */

static json_t *str_or_null(const char *s) { return s ? json_string(s) : json_null(); }

static json_t *config_json(const nm_train_params *p) {
    json_t *c = json_object();
    json_object_set_new(c, "model", str_or_null(p->model));
    json_object_set_new(c, "data", str_or_null(p->data));
    json_object_set_new(c, "val_data", str_or_null(p->val_data));
    json_object_set_new(c, "format", str_or_null(p->format));
    json_object_set_new(c, "chat_template", str_or_null(p->chat_template));
    json_t *vars = json_array();
    for (size_t i = 0; i < p->n_vars; i++) json_array_append_new(vars, json_string(p->vars[i]));
    json_object_set_new(c, "vars", vars);
    json_object_set_new(c, "full", json_boolean(p->full));
    json_object_set_new(c, "rank", json_integer(p->rank));
    json_object_set_new(c, "alpha", json_real(p->alpha));
    json_object_set_new(c, "rslora", json_boolean(p->rslora));
    json_object_set_new(c, "dropout", json_real(p->dropout));
    json_object_set_new(c, "targets", str_or_null(p->targets));
    json_object_set_new(c, "lr", json_real(p->lr));
    json_object_set_new(c, "min_lr", json_real(p->min_lr));
    json_object_set_new(c, "schedule", str_or_null(p->schedule));
    json_object_set_new(c, "warmup", json_integer(p->warmup));
    json_object_set_new(c, "weight_decay", json_real(p->weight_decay));
    json_object_set_new(c, "beta1", json_real(p->beta1));
    json_object_set_new(c, "beta2", json_real(p->beta2));
    json_object_set_new(c, "adam_eps", json_real(p->adam_eps));
    json_object_set_new(c, "clip", json_real(p->clip));
    json_object_set_new(c, "epochs", json_integer(p->epochs));
    json_object_set_new(c, "steps", json_integer(p->steps));
    json_object_set_new(c, "batch", json_integer(p->batch));
    json_object_set_new(c, "seq_len", json_integer(p->seq_len));
    json_object_set_new(c, "grad_accum", json_integer(p->grad_accum));
    json_object_set_new(c, "pack", json_boolean(p->pack));
    json_object_set_new(c, "shuffle", json_boolean(p->shuffle));
    json_object_set_new(c, "mask_prompt", json_boolean(p->mask_prompt));
    json_object_set_new(c, "skip_bad", json_boolean(p->skip_bad));
    json_object_set_new(c, "act_checkpointing", json_integer(p->act_checkpointing));
    json_object_set_new(c, "val_split", json_real(p->val_split));
    json_object_set_new(c, "eval_every", json_integer(p->eval_every));
    json_object_set_new(c, "val_max_rows", json_integer(p->val_max_rows));
    json_object_set_new(c, "checkpoint_every", json_integer(p->checkpoint_every));
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)p->seed);
    json_object_set_new(c, "seed", json_string(seed));
    if (p->dpo) { /* absent in runs without DPO (and in older states) */
        json_object_set_new(c, "dpo", json_true());
        json_object_set_new(c, "dpo_loss", str_or_null(p->dpo_loss));
        json_object_set_new(c, "dpo_beta", json_real(p->dpo_beta));
        json_object_set_new(c, "dpo_label_smoothing", json_real(p->dpo_label_smoothing));
    }
    /* distillation */
    json_object_set_new(c, "distill_cache", str_or_null(p->distill_cache));
    json_object_set_new(c, "distill_tau", json_real(p->distill_tau));
    json_object_set_new(c, "distill_alpha", json_real(p->distill_alpha));
    json_object_set_new(c, "distill_reverse", json_boolean(p->distill_reverse));
    return c;
}

/* The DPO fields of a saved configuration: absent means no DPO. */
static nm_status dpo_config_from_json(json_t *c, nm_train_params *p, const char *path, nm_err *err) {
    p->dpo = json_is_true(json_object_get(c, "dpo"));
    if (!p->dpo) return NM_OK;
    json_t *l = json_object_get(c, "dpo_loss"), *b = json_object_get(c, "dpo_beta"),
           *e = json_object_get(c, "dpo_label_smoothing");
    if (!json_is_string(l) || !json_is_number(b) || !json_is_number(e))
        return nm_err_set(err, NM_ERR_FORMAT, "%s: saved configuration has bad DPO fields", path);
    p->dpo_loss = json_string_value(l);
    p->dpo_beta = json_number_value(b);
    p->dpo_label_smoothing = json_number_value(e);
    return NM_OK;
}

/* Reads the saved configuration into p; strings point into c (kept alive
 * by the trainer).  Fails on any missing or mistyped field. */
static nm_status config_from_json(json_t *c, nm_train_params *p, const char *path, const char ***vars_out,
                                  nm_err *err) {
    const char *bad = NULL;
#define GET_STR(f)                                                              \
    do {                                                                        \
        json_t *v_ = json_object_get(c, #f);                                    \
        if (json_is_string(v_)) p->f = json_string_value(v_);                   \
        else if (json_is_null(v_)) p->f = NULL;                                 \
        else if (!bad) bad = #f;                                                \
    } while (0)
#define GET_INT(f)                                                                \
    do {                                                                          \
        json_t *v_ = json_object_get(c, #f);                                      \
        if (json_is_integer(v_)) p->f = (__typeof__(p->f))json_integer_value(v_); \
        else if (!bad) bad = #f;                                                  \
    } while (0)
#define GET_REAL(f)                                                               \
    do {                                                                          \
        json_t *v_ = json_object_get(c, #f);                                      \
        if (json_is_number(v_)) p->f = (__typeof__(p->f))json_number_value(v_);   \
        else if (!bad) bad = #f;                                                  \
    } while (0)
#define GET_BOOL(f)                                             \
    do {                                                        \
        json_t *v_ = json_object_get(c, #f);                    \
        if (json_is_boolean(v_)) p->f = json_is_true(v_);       \
        else if (!bad) bad = #f;                                \
    } while (0)
    GET_STR(model);
    GET_STR(data);
    GET_STR(val_data);
    GET_STR(format);
    GET_STR(chat_template);
    GET_BOOL(full);
    GET_INT(rank);
    GET_REAL(alpha);
    GET_BOOL(rslora);
    GET_REAL(dropout);
    GET_STR(targets);
    GET_REAL(lr);
    GET_REAL(min_lr);
    GET_STR(schedule);
    GET_INT(warmup);
    GET_REAL(weight_decay);
    GET_REAL(beta1);
    GET_REAL(beta2);
    GET_REAL(adam_eps);
    GET_REAL(clip);
    GET_INT(epochs);
    GET_INT(steps);
    GET_INT(batch);
    GET_INT(seq_len);
    GET_INT(grad_accum);
    GET_BOOL(pack);
    GET_BOOL(shuffle);
    GET_BOOL(mask_prompt);
    GET_BOOL(skip_bad);
    GET_INT(act_checkpointing);
    GET_REAL(val_split);
    GET_INT(eval_every);
    GET_INT(val_max_rows);
    GET_INT(checkpoint_every);
    if (json_object_get(c, "distill_cache")) { /* states saved before distillation have none */
        GET_STR(distill_cache);
        GET_REAL(distill_tau);
        GET_REAL(distill_alpha);
        GET_BOOL(distill_reverse);
    }
#undef GET_STR
#undef GET_INT
#undef GET_REAL
#undef GET_BOOL
    json_t *seed = json_object_get(c, "seed"), *vars = json_object_get(c, "vars");
    if (!json_is_string(seed) && !bad) bad = "seed";
    if (!json_is_array(vars) && !bad) bad = "vars";
    if (bad) return nm_err_set(err, NM_ERR_FORMAT, "%s: saved configuration lacks a valid \"%s\"", path, bad);
    p->seed = strtoull(json_string_value(seed), NULL, 10);
    size_t n = json_array_size(vars);
    const char **v = nm_calloc(n + 1, sizeof *v);
    if (!v) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        v[i] = json_string_value(json_array_get(vars, i));
        if (!v[i]) {
            free(v);
            return nm_err_set(err, NM_ERR_FORMAT, "%s: saved configuration: vars[%zu] is not a string", path, i);
        }
    }
    p->vars = v;
    p->n_vars = n;
    *vars_out = v;
    return NM_OK;
}

static nm_status check_params(const nm_train_params *p, nm_err *err) {
    if (!p->model) return nm_err_set(err, NM_ERR_ARG, "no base model given");
    if (!p->data) return nm_err_set(err, NM_ERR_ARG, "no training data given");
    if (p->seq_len < 2 || p->seq_len > (1 << 20)) return nm_err_set(err, NM_ERR_ARG, "sequence length %d is out of range", p->seq_len);
    if (p->batch < 1 || p->batch > 4096) return nm_err_set(err, NM_ERR_ARG, "batch %d is out of range", p->batch);
    if (p->grad_accum < 1 || p->grad_accum > 1 << 16) return nm_err_set(err, NM_ERR_ARG, "gradient accumulation %d is out of range", p->grad_accum);
    if (!(p->lr > 0) || !isfinite(p->lr)) return nm_err_set(err, NM_ERR_ARG, "learning rate must be positive");
    if (!(p->min_lr >= 0) || p->min_lr > p->lr) return nm_err_set(err, NM_ERR_ARG, "minimum learning rate must be in [0, lr]");
    if (!(p->beta1 >= 0 && p->beta1 < 1 && p->beta2 >= 0 && p->beta2 < 1)) return nm_err_set(err, NM_ERR_ARG, "AdamW betas must be in [0, 1)");
    if (!(p->adam_eps > 0)) return nm_err_set(err, NM_ERR_ARG, "AdamW epsilon must be positive");
    if (!(p->weight_decay >= 0) || !(p->clip >= 0)) return nm_err_set(err, NM_ERR_ARG, "weight decay and clip must be >= 0");
    if (p->epochs < 1 && p->steps < 1) return nm_err_set(err, NM_ERR_ARG, "nothing to do: epochs and steps are 0");
    if (p->warmup < 0) return nm_err_set(err, NM_ERR_ARG, "warm-up must be >= 0");
    if (!(p->val_split >= 0 && p->val_split < 1)) return nm_err_set(err, NM_ERR_ARG, "validation split must be in [0, 1)");
    if (p->val_split > 0 && p->val_data) return nm_err_set(err, NM_ERR_ARG, "give a validation file or a split, not both");
    if (nm_sched_parse(p->schedule ? p->schedule : "") < 0) return nm_err_set(err, NM_ERR_ARG, "unknown schedule '%s' (cosine, linear, constant)", p->schedule ? p->schedule : "");
    if (nm_data_format_parse(p->format ? p->format : "") < 0) return nm_err_set(err, NM_ERR_ARG, "unknown data format '%s'", p->format ? p->format : "");
    if (p->checkpoint_every < 0 || p->eval_every < 0 || p->val_max_rows < 0) return nm_err_set(err, NM_ERR_ARG, "negative interval");
    if (p->dpo && p->distill_cache)
        return nm_err_set(err, NM_ERR_ARG, "DPO and distillation are separate objectives: give --dpo or --distill");
    if (p->dpo) {
        if (p->full)
            return nm_err_set(err, NM_ERR_UNSUPPORTED,
                              "DPO trains a LoRA adapter (its reference is the model with the adapter off): drop --full");
        int l = nm_dpo_loss_parse(p->dpo_loss ? p->dpo_loss : "");
        if (l < 0) return nm_err_set(err, NM_ERR_ARG, "unknown DPO loss '%s' (sigmoid, ipo)", p->dpo_loss ? p->dpo_loss : "");
        nm_dpo_cfg c = {(nm_dpo_loss)l, p->dpo_beta, p->dpo_label_smoothing};
        return nm_dpo_cfg_check(&c, err);
    }
    return NM_OK;
}

/* ---- setup ---- */

static void base_name_of(const char *path, char *out, size_t cap) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--; /* "dir/" names dir */
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    snprintf(out, cap, "%.*s", (int)(n - b), path + b);
}

/* The frozen adapters of training on a stack: each opened, fitted to the
 * model (q/k rows in GGUF order) and checked against the base. */
static nm_status setup_stack(trainer *t, nm_err *err) {
    const nm_train_params *p = &t->p;
    if (!p->n_loras) return NM_OK;
    if (p->full)
        return nm_err_set(err, NM_ERR_UNSUPPORTED,
                          "full fine-tuning on top of adapters: merge them into the model first (nomoat merge)");
    t->frozen_l = nm_calloc(p->n_loras, sizeof *t->frozen_l);
    t->frozen = nm_calloc(p->n_loras, sizeof *t->frozen);
    t->under = nm_calloc(p->n_loras, sizeof *t->under);
    if (!t->frozen_l || !t->frozen || !t->under) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    nm_lora_layout lay;
    nm_tm_layout(t->m, &lay);
    for (size_t i = 0; i < p->n_loras; i++) {
        nm_lora *l;
        nm_status st = nm_lora_open(p->loras[i], NULL, &l, err);
        if (st) return st;
        t->frozen_l[t->n_frozen++] = l;
        if ((st = nm_lora_fit(l, &lay, err)) || (st = nm_lora_check_base(l, t->m->gguf, p->force, t->log, NULL, err)))
            return st;
        float sc = p->lora_scales ? p->lora_scales[i] : 1.0f;
        if (!isfinite(sc)) return nm_err_set(err, NM_ERR_ARG, "%s: the scale is not finite", p->loras[i]);
        t->frozen[i] = (nm_lora_entry){l, sc};
        memcpy(t->under[i].fp, l->fp, NM_FP_HEX);
        t->under[i].scale = sc;
        base_name_of(p->loras[i], t->under[i].name, sizeof t->under[i].name);
    }
    nm_lora_check_stack_gguf(t->m->gguf, t->frozen, t->n_frozen, t->log);
    /* a resumed run continues on exactly the adapters it started on */
    json_t *saved = t->saved ? json_object_get(json_object_get(t->saved, "config"), "loras") : NULL;
    for (size_t i = 0; saved && i < t->n_frozen; i++) {
        const char *fp = json_string_value(json_object_get(json_array_get(saved, i), "fingerprint"));
        if (!fp || strcmp(fp, t->frozen_l[i]->fp))
            return nm_err_set(err, NM_ERR_ARG, "%s: adapter %zu of the stack (%s) is not the one this run was trained on",
                              p->resume_dir, i, p->loras[i]);
    }
    nm_logf(t->log, NM_LOG_INFO, "training on top of %zu frozen adapter%s", t->n_frozen, t->n_frozen == 1 ? "" : "s");
    return nm_tmodel_set_frozen(t->m, t->frozen, t->n_frozen, err);
}

static nm_status setup_model(trainer *t, nm_err *err) {
    const nm_train_params *p = &t->p;
    int nth = p->threads > 0 ? p->threads : nm_cpu_count();
    if (p->threads <= 0 && t->dist.local_size > 1) /* ranks on one machine share its cores */
        nth = nth / t->dist.local_size > 0 ? nth / t->dist.local_size : 1;
    nm_status st = nm_pool_new(nth, &t->pool, err);
    if (st) return st;
    if ((st = nm_tmodel_open(p->model, p->full, t->pool, &t->m, err))) return st;
    if ((st = nm_vocab_from_gguf(t->m->gguf, &t->vocab, t->log, err))) return st;
    nm_base_fingerprint(t->m->gguf, t->fp);
    if ((st = setup_stack(t, err))) return st;
    if (p->distill_cache) {
        nm_kd_cfg kc = {p->distill_tau, p->distill_alpha, p->distill_reverse};
        if ((st = nm_kd_open(p->distill_cache, t->vocab, t->m->hp.n_vocab, &kc, &t->kd, err))) return st;
    }
    if (p->full) {
        t->params = t->m->params;
        t->n_params = t->m->n_params;
    } else {
        if ((st = nm_tmod_parse(p->targets ? p->targets : "all", &t->targets, err))) return st;
        if ((st = nm_tm_lora_new(t->m, p->rank, p->alpha, p->rslora, p->dropout, t->targets, &t->lora, err)))
            return st;
        nm_tm_lora_init_peft(t->lora, mix(p->seed, 0x6c6f7261ULL));
        t->params = t->lora->params;
        t->n_params = t->lora->n_params;
    }
    t->n_elems = 0;
    for (int64_t i = 0; i < t->n_params; i++) t->n_elems += t->params[i].n;
    if ((st = nm_adamw_init(&t->opt, t->params, t->n_params, err))) return st;
    t->acfg = (nm_adamw_cfg){p->beta1, p->beta2, p->adam_eps, p->weight_decay};
    int64_t T = (int64_t)p->batch * p->seq_len;
    if (p->act_checkpointing >= 0) {
        t->m->checkpointing = p->act_checkpointing > 0;
    } else {
        t->m->checkpointing = false; /* measure what storing everything would take */
        t->m->checkpointing = nm_tmodel_act_bytes(t->m, t->lora, T) > AUTO_CKPT_BYTES;
    }
    return NM_OK;
}

static nm_status setup_dpo(trainer *t, const nm_data_opts *o, nm_err *err);

static nm_status setup_data(trainer *t, nm_err *err) {
    const nm_train_params *p = &t->p;
    nm_data_opts o = {0};
    o.format = (nm_data_format)nm_data_format_parse(p->format ? p->format : "auto");
    o.vocab = t->vocab;
    if (p->chat_template) {
        o.tmpl = nm_chat_template_from_name(p->chat_template);
        if (o.tmpl == NM_CHAT_TEMPLATE_UNKNOWN)
            return nm_err_set(err, NM_ERR_ARG, "unknown chat template '%s'", p->chat_template);
    } else {
        o.tmpl = nm_chat_template_of_gguf(t->m->gguf);
        if (o.tmpl == NM_CHAT_TEMPLATE_UNKNOWN) {
            nm_logf(t->log, NM_LOG_WARN, "%s: chat template not recognised, using %s (override with --chat-template)",
                    p->model, nm_chat_template_name(NM_CHAT_TEMPLATE_DEFAULT));
            o.tmpl = NM_CHAT_TEMPLATE_DEFAULT;
        }
    }
    o.seq_len = p->seq_len;
    o.mask_prompt = p->mask_prompt;
    o.skip_bad = p->skip_bad;
    o.vars = p->vars;
    o.n_vars = p->n_vars;
    o.log = t->log;
    if (p->dpo) return setup_dpo(t, &o, err);
    nm_status st = nm_dataset_load(p->data, &o, &t->train, err);
    if (st) return st;
    if (t->kd && (st = nm_kd_check_data(t->kd, &t->train, p->data, err))) return st;
    if (t->train.n_bad)
        nm_logf(t->log, NM_LOG_WARN, "%s: %lld malformed records skipped", p->data, (long long)t->train.n_bad);
    if (t->train.n_truncated)
        nm_logf(t->log, NM_LOG_WARN, "%s: %lld examples longer than %d tokens were cut", p->data,
                (long long)t->train.n_truncated, p->seq_len);
    if (p->val_data) {
        if ((st = nm_dataset_load(p->val_data, &o, &t->val, err))) return st;
    } else if (p->val_split > 0) {
        if ((st = nm_dataset_split(&t->train, &t->val, p->val_split, p->seed, err))) return st;
    }
    t->data_hash = nm_dataset_hash(&t->train);
    t->val_hash = t->val.n_ex ? nm_dataset_hash(&t->val) : 0;
    if (t->val.n_ex) {
        if ((st = nm_rows_build(&t->val, p->seq_len, p->pack, false, 0, &t->vrows, err))) return st;
        if (p->val_max_rows > 0 && t->vrows.n_rows > p->val_max_rows) t->vrows.n_rows = p->val_max_rows;
    }
    size_t cells = (size_t)p->grad_accum * (size_t)p->batch * (size_t)p->seq_len;
    t->btok = malloc(cells * sizeof(int32_t));
    t->btgt = malloc(cells * sizeof(int32_t));
    t->bpos = malloc(cells * sizeof(int32_t));
    t->bdoc = malloc(cells * sizeof(int32_t));
    if (!t->btok || !t->btgt || !t->bpos || !t->bdoc) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    return NM_OK;
}

static nm_status ensure_rows(trainer *t, nm_err *err) {
    if (t->rows.tokens && t->rows_epoch == t->epoch) return NM_OK;
    nm_rows_deinit(&t->rows);
    free(t->row_pair);
    t->row_pair = NULL;
    nm_status st = t->p.dpo ? nm_pref_rows(&t->train, t->p.seq_len, t->p.shuffle,
                                           mix(t->p.seed, 0x65706f6368ULL + (uint64_t)t->epoch), &t->rows,
                                           &t->row_pair, err)
                            : nm_rows_build(&t->train, t->p.seq_len, t->p.pack, t->p.shuffle,
                                 mix(t->p.seed, 0x65706f6368ULL + (uint64_t)t->epoch), &t->rows, err);
    if (st) return st;
    if (t->kd && (st = nm_kd_rows(t->kd, &t->train, t->p.seq_len, t->p.pack, t->p.shuffle,
                                  mix(t->p.seed, 0x65706f6368ULL + (uint64_t)t->epoch), &t->rows, err)))
        return st;
    t->rows_epoch = t->epoch;
    return NM_OK;
}

/* ---- checkpoints ---- */

static nm_status make_dir(const char *dir, nm_err *err) {
    if (mkdir(dir, 0777) == 0 || errno == EEXIST) {
        struct stat sb;
        if (stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode)) return NM_OK;
        return nm_err_set(err, NM_ERR_IO, "%s: exists and is not a directory", dir);
    }
    return nm_err_set(err, NM_ERR_IO, "%s: cannot create directory: %s", dir, strerror(errno));
}

static nm_status save_full_model(trainer *t, nm_err *err) {
    const nm_gguf *g = t->m->gguf;
    nm_gguf_writer *w = nm_gguf_writer_new(3);
    if (!w) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    nm_status st = NM_OK;
    for (int64_t i = 0; i < nm_gguf_n_kv(g) && !st; i++) st = nm_gguf_writer_copy_kv(w, g, i);
    if (!st && nm_gguf_find_key(g, "general.file_type") >= 0) st = nm_gguf_writer_set_u32(w, "general.file_type", 0);
    if (st) st = nm_err_set(err, st, "out of memory");
    for (int64_t i = 0; i < nm_gguf_n_tensors(g) && !st; i++) {
        const nm_gguf_tensor *gt = nm_gguf_tensor_at(g, i);
        const nm_tparam *pp = NULL;
        for (int64_t k = 0; k < t->n_params; k++)
            if (!strcmp(t->params[k].name, gt->name)) pp = &t->params[k];
        if (pp)
            st = nm_gguf_writer_add_tensor(w, gt->name, NM_TYPE_F32, gt->n_dims, gt->ne, pp->data,
                                           (uint64_t)pp->n * 4, err);
        else /* not a trained tensor (e.g. rope frequencies): as it was */
            st = nm_gguf_writer_add_tensor(w, gt->name, (nm_type)gt->type, gt->n_dims, gt->ne, gt->data, gt->nbytes,
                                           err);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.gguf", t->out);
    if (!st) st = nm_gguf_writer_write(w, path, err);
    nm_gguf_writer_free(w);
    return st;
}

static nm_status save_checkpoint(trainer *t, nm_err *err) {
    if (t->dist.rank != 0) return NM_OK; /* every rank holds the same state: one writes it */
    nm_status st = make_dir(t->out, err);
    if (st) return st;
    if (t->p.full)
        st = save_full_model(t, err);
    else {
        const char *base = strrchr(t->p.model, '/');
        st = nm_adapter_save_ex(t->lora, t->m, t->out, base ? base + 1 : t->p.model, t->under, t->n_frozen, err);
    }
    if (st) return st;
    /* trainer state: parameters, moments, position, configuration */
    json_t *s = json_object();
    json_object_set_new(s, "version", json_integer(STATE_VERSION));
    json_object_set_new(s, "step", json_integer(t->step));
    json_object_set_new(s, "total_steps", json_integer(t->total));
    json_object_set_new(s, "epoch", json_integer(t->epoch));
    json_object_set_new(s, "row", json_integer(t->row));
    json_object_set_new(s, "tokens", json_integer(t->tokens));
    json_object_set_new(s, "adam_t", json_integer(t->opt.t));
    json_object_set_new(s, "elapsed_s", json_real(t->elapsed_at_start + (t->run_start > 0 ? now_s() - t->run_start : 0)));
    json_object_set_new(s, "last_val_loss", isnan(t->last_val) ? json_null() : json_real(t->last_val));
    char h[32];
    snprintf(h, sizeof h, "%016llx", (unsigned long long)t->data_hash);
    json_object_set_new(s, "data_hash", json_string(h));
    snprintf(h, sizeof h, "%016llx", (unsigned long long)t->val_hash);
    json_object_set_new(s, "val_hash", json_string(h));
    json_object_set_new(s, "base_fingerprint", json_string(t->fp));
    /* the epoch's shuffle RNG is derived from (seed, epoch): recorded for
     * inspection, recomputed on resume */
    snprintf(h, sizeof h, "%016llx", (unsigned long long)mix(t->p.seed, 0x65706f6368ULL + (uint64_t)t->epoch));
    json_object_set_new(s, "epoch_rng_seed", json_string(h));
    json_t *cfg = config_json(&t->p);
    json_t *stack = json_array();
    for (size_t i = 0; i < t->n_frozen; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "path", json_string(t->p.loras[i]));
        json_object_set_new(e, "scale", json_real(t->frozen[i].scale));
        json_object_set_new(e, "fingerprint", json_string(t->frozen_l[i]->fp));
        json_array_append_new(stack, e);
    }
    json_object_set_new(cfg, "loras", stack);
    json_object_set_new(cfg, "force", json_boolean(t->p.force));
    if (t->kd) {
        nm_hash_hex(nm_kd_teacher_id(t->kd), h);
        json_object_set_new(cfg, "distill_teacher", json_string(h));
    }
    json_object_set_new(s, "config", cfg);
    char *text = json_dumps(s, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(s);
    if (!text) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    nm_st_writer *w = nm_st_writer_new();
    if (!w) {
        free(text);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    st = nm_st_writer_meta(w, STATE_KEY, text, err);
    free(text);
    uint64_t off = 0;
    char name[160];
    for (int64_t i = 0; i < t->n_params && !st; i++) {
        const nm_tparam *pp = &t->params[i];
        int64_t shape[2] = {pp->shape[0], pp->shape[1]};
        uint32_t nd = pp->ndim == 2 ? 2 : 1;
        snprintf(name, sizeof name, "param.%s", pp->name);
        st = nm_st_writer_add(w, name, "F32", nd, shape, pp->data, (uint64_t)pp->n * 4, err);
        snprintf(name, sizeof name, "adam_m.%s", pp->name);
        if (!st) st = nm_st_writer_add(w, name, "F32", nd, shape, t->opt.m + off, (uint64_t)pp->n * 4, err);
        snprintf(name, sizeof name, "adam_v.%s", pp->name);
        if (!st) st = nm_st_writer_add(w, name, "F32", nd, shape, t->opt.v + off, (uint64_t)pp->n * 4, err);
        off += (uint64_t)pp->n;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", t->out, STATE_FILE);
    if (!st) st = nm_st_writer_write(w, path, err);
    nm_st_writer_free(w);
    return st;
}

static json_t *read_state_json(const char *dir, nm_st **out_st, nm_err *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, STATE_FILE);
    nm_st *s;
    if (nm_st_open(path, &s, err)) return NULL;
    const char *text = nm_st_meta(s, STATE_KEY);
    json_error_t je;
    json_t *j = text ? json_loads(text, JSON_REJECT_DUPLICATES, &je) : NULL;
    if (!j || !json_is_object(j) || json_integer_value(json_object_get(j, "version")) != STATE_VERSION ||
        !json_is_object(json_object_get(j, "config"))) {
        nm_err_set(err, NM_ERR_FORMAT, "%s: not a nomoat trainer state (missing or bad '%s' metadata)", path,
                   STATE_KEY);
        json_decref(j);
        nm_st_free(s);
        return NULL;
    }
    *out_st = s;
    return j;
}

static int64_t jint(json_t *o, const char *k, bool *ok) {
    json_t *v = json_object_get(o, k);
    if (!json_is_integer(v) || json_integer_value(v) < 0) *ok = false;
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

/* Restores parameters, moments and position from the state file. */
static nm_status restore(trainer *t, nm_st *s, nm_err *err) {
    json_t *j = t->saved;
    const char *path = t->p.resume_dir;
    bool ok = true;
    t->step = jint(j, "step", &ok);
    t->epoch = jint(j, "epoch", &ok);
    t->row = jint(j, "row", &ok);
    t->tokens = jint(j, "tokens", &ok);
    t->opt.t = jint(j, "adam_t", &ok);
    json_t *el = json_object_get(j, "elapsed_s"), *lv = json_object_get(j, "last_val_loss");
    t->elapsed_before = json_is_number(el) ? json_number_value(el) : 0;
    t->last_val = json_is_number(lv) ? json_number_value(lv) : NAN;
    if (!ok) return nm_err_set(err, NM_ERR_FORMAT, "%s: trainer state has a bad step or position", path);
    char h[32];
    const char *dh = json_string_value(json_object_get(j, "data_hash"));
    snprintf(h, sizeof h, "%016llx", (unsigned long long)t->data_hash);
    if (!dh || strcmp(dh, h))
        return nm_err_set(err, NM_ERR_ARG, "%s: the training data (%s) is not what this run was trained on", path,
                          t->p.data);
    const char *fp = json_string_value(json_object_get(j, "base_fingerprint"));
    if (!fp || strcmp(fp, t->fp))
        return nm_err_set(err, NM_ERR_ARG, "%s: the base model (%s) is not the one this run was trained on", path,
                          t->p.model);
    if (t->kd) { /* the cache may have been made again, by another teacher */
        nm_hash_hex(nm_kd_teacher_id(t->kd), h);
        const char *tid = json_string_value(json_object_get(json_object_get(j, "config"), "distill_teacher"));
        if (!tid || strcmp(tid, h))
            return nm_err_set(err, NM_ERR_ARG, "%s: the teacher cache %s comes from another teacher than this run's",
                              path, t->p.distill_cache);
    }
    uint64_t off = 0;
    char name[160];
    for (int64_t i = 0; i < t->n_params; i++) {
        nm_tparam *pp = &t->params[i];
        const char *pre[3] = {"param.", "adam_m.", "adam_v."};
        float *dst[3] = {pp->data, t->opt.m + off, t->opt.v + off};
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "%s%s", pre[k], pp->name);
            const nm_st_tensor *tt = nm_st_find(s, name);
            if (!tt || strcmp(tt->dtype, "F32") || tt->nbytes != (uint64_t)pp->n * 4)
                return nm_err_set(err, NM_ERR_FORMAT, "%s: trainer state lacks a matching tensor '%s'", path, name);
            memcpy(dst[k], tt->data, (size_t)tt->nbytes);
        }
        off += (uint64_t)pp->n;
    }
    return NM_OK;
}

/* Keeps the metrics lines of steps <= step (a crash after the last
 * checkpoint leaves lines that the resumed run writes again). */
static nm_status trim_metrics(const char *path, int64_t step, nm_err *err) {
    char *text;
    size_t len;
    if (nm_read_file(path, &text, &len, NULL)) return NM_OK; /* none yet */
    nm_buf b;
    nm_buf_init(&b);
    char *line = text;
    while (line < text + len) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        size_t n = nl ? (size_t)(nl - line) : (size_t)(text + len - line);
        json_t *j = json_loadb(line, n, 0, NULL);
        json_t *s = j ? json_object_get(j, "step") : NULL;
        if (json_is_integer(s) && json_integer_value(s) <= step) {
            nm_buf_push(&b, line, n);
            nm_buf_push(&b, "\n", 1);
        }
        json_decref(j);
        line += n + 1;
    }
    free(text);
    nm_status st = b.oom ? nm_err_set(err, NM_ERR_NOMEM, "out of memory") : nm_write_file_atomic(path, b.data, b.len, err);
    nm_buf_deinit(&b);
    return st;
}

/* ---- steps ---- */

static nm_status evaluate_dpo(trainer *t, double *loss, nm_err *err);

static nm_status evaluate(trainer *t, double *loss, nm_err *err) {
    if (t->p.dpo) return evaluate_dpo(t, loss, err);
    double sum = 0;
    int64_t n = 0, L = t->p.seq_len;
    /* batch j on rank j % size, the sums added over the ranks */
    for (int64_t r = (int64_t)t->dist.rank * t->p.batch; r < t->vrows.n_rows;
         r += (int64_t)t->dist.size * t->p.batch) {
        int64_t ns = t->vrows.n_rows - r < t->p.batch ? t->vrows.n_rows - r : t->p.batch;
        nm_tm_batch b = {ns, L, t->vrows.tokens + r * L, t->vrows.targets + r * L, t->vrows.pos + r * L,
                         t->vrows.doc + r * L};
        double s;
        int64_t k;
        nm_status st = nm_tmodel_eval(t->m, t->lora, &b, &s, &k, err);
        if (st) return st;
        sum += s;
        n += k;
    }
    double v[2] = {sum, (double)n};
    nm_status st = nm_dist_sum_f64(&t->dist, v, 2, err);
    if (st) return st;
    sum = v[0];
    n = (int64_t)v[1];
    *loss = n ? sum / (double)n : NAN;
    return NM_OK;
}

/* A JSON number, or null for NaN/inf (a diverged run still writes valid
 * JSON lines). */
static void json_num(FILE *f, const char *key, const char *fmt, double v) {
    fprintf(f, ",\"%s\":", key);
    if (isfinite(v))
        fprintf(f, fmt, v);
    else
        fputs("null", f);
}

static void write_metrics(trainer *t, const nm_train_stats *s) {
    if (!t->metrics) return;
    FILE *f = t->metrics;
    fprintf(f, "{\"step\":%lld,\"epoch\":%lld", (long long)s->step, (long long)s->epoch);
    json_num(f, "loss", "%.6f", s->loss);
    json_num(f, "lr", "%.6g", s->lr);
    json_num(f, "grad_norm", "%.6g", s->grad_norm);
    fprintf(f, ",\"tokens\":%lld", (long long)s->tokens);
    json_num(f, "tokens_per_s", "%.1f", s->tokens_per_s);
    json_num(f, "elapsed_s", "%.2f", s->elapsed_s);
    json_num(f, "peak_rss_mb", "%.1f", (double)s->peak_rss / 1048576.0);
    if (s->evaluated) json_num(f, "val_loss", "%.6f", s->val_loss);
    if (s->dpo) {
        json_num(f, "reward_acc", "%.4f", s->reward_acc);
        json_num(f, "reward_margin", "%.6g", s->reward_margin);
        json_num(f, "reward_chosen", "%.6g", s->reward_chosen);
        json_num(f, "reward_rejected", "%.6g", s->reward_rejected);
        if (s->evaluated) {
            json_num(f, "val_reward_acc", "%.4f", s->val_reward_acc);
            json_num(f, "val_reward_margin", "%.6g", s->val_reward_margin);
            json_num(f, "val_reward_chosen", "%.6g", s->val_reward_chosen);
            json_num(f, "val_reward_rejected", "%.6g", s->val_reward_rejected);
        }
    }
    fputs("}\n", f);
    fflush(f);
}

/* The end of every step, whatever its objective: clip the summed gradient,
 * the optimiser update (skipped when the gradient is not finite), and the
 * data position moved past the step's rows. */
static void apply_step(trainer *t, int64_t take, int64_t ntok, double *gnorm, double *lr) {
    *gnorm = nm_grad_clip(t->params, t->n_params, t->p.clip);
    *lr = nm_sched_lr(&t->sched, t->step);
    if (isfinite(*gnorm)) nm_adamw_step(&t->opt, &t->acfg, *lr);
    t->row += take;
    if (t->row >= t->rows.n_rows) {
        t->epoch++;
        t->row = 0;
    }
    t->step++;
    t->tokens += ntok;
}

/* 1: stopped by should_stop before the step finished (nothing changed). */
static int run_step_dpo(trainer *t, double *loss, double *gnorm, double *lr, int64_t *tok_step, nm_err *err,
                        nm_status *st);

static int run_step(trainer *t, double *loss, double *gnorm, double *lr, int64_t *tok_step, nm_err *err,
                    nm_status *st) {
    const nm_train_params *p = &t->p;
    if (p->dpo) return run_step_dpo(t, loss, gnorm, lr, tok_step, err, st);
    int64_t L = p->seq_len, B = p->batch, want = B * p->grad_accum;
    if ((*st = ensure_rows(t, err))) return 0;
    int64_t avail = t->rows.n_rows - t->row, take = want < avail ? want : avail;
    for (int64_t i = 0; i < take; i++) { /* the step's rows, in order */
        size_t src = (size_t)((t->row + i) * L), dst = (size_t)(i * L);
        memcpy(t->btok + dst, t->rows.tokens + src, (size_t)L * 4);
        memcpy(t->btgt + dst, t->rows.targets + src, (size_t)L * 4);
        memcpy(t->bpos + dst, t->rows.pos + src, (size_t)L * 4);
        memcpy(t->bdoc + dst, t->rows.doc + src, (size_t)L * 4);
    }
    /* data parallel: this rank computes rows [g0, g1) of the step (all of
     * them in one process), micro-batch k keeping its dropout seed */
    int64_t g0, g1;
    nm_dist_share(&t->dist, take, B, &g0, &g1);
    int64_t N = 0, ntok = 0;
    for (int64_t i = g0 * L; i < g1 * L; i++) {
        N += t->btgt[i] >= 0;
        ntok += t->bdoc[i] >= 0;
    }
    if (t->dist.size > 1) { /* the loss is a mean over the GLOBAL batch: its count first */
        int64_t c[3] = {N, ntok, p->should_stop && p->should_stop(p->user)};
        if ((*st = nm_dist_sum_i64(&t->dist, c, 3, err))) return 0;
        if (c[2]) return 1; /* any rank stopping stops all, before anything changed */
        N = c[0];
        ntok = c[1];
    }
    nm_grad_zero(t->params, t->n_params);
    double sum = 0;
    for (int64_t r0 = g0; r0 < g1;) {
        if (t->dist.size == 1 && p->should_stop && p->should_stop(p->user)) return 1;
        int64_t k = r0 / B, ns = (k + 1) * B < g1 ? (k + 1) * B - r0 : g1 - r0;
        nm_tm_batch b = {ns, L, t->btok + r0 * L, t->btgt + r0 * L, t->bpos + r0 * L, t->bdoc + r0 * L};
        double s;
        int64_t n;
        uint64_t drop = mix(mix(p->seed, (uint64_t)t->step), (uint64_t)k);
        if (r0 % B) drop = mix(drop, (uint64_t)(r0 % B)); /* a part of micro-batch k (more ranks than micro-batches) */
        if (t->kd)
            *st = nm_kd_fwd_bwd(t->kd, t->m, t->lora, &b, t->row + r0, N > 0 ? 1.0f / (float)N : 0.0f, drop, &s, &n,
                                err);
        else
            *st = nm_tmodel_fwd_bwd(t->m, t->lora, &b, N > 0 ? 1.0f / (float)N : 0.0f, drop, &s, &n, err);
        if (*st) return 0;
        sum += s;
        r0 += ns;
    }
    if ((*st = nm_dist_sum_grads(&t->dist, t->params, t->n_params, err))) return 0;
    if ((*st = nm_dist_sum_f64(&t->dist, &sum, 1, err))) return 0;
    apply_step(t, take, ntok, gnorm, lr);
    *loss = N > 0 ? sum / (double)N : NAN;
    *tok_step = ntok;
    return 0;
}

/* The stack a run was trained on, from its saved configuration (older
 * states have none).  Paths given again replace the saved ones (the files
 * moved); their fingerprints are checked when they are opened. */
static nm_status saved_stack(trainer *t, const nm_train_params *pin, const char *path, nm_err *err) {
    json_t *c = json_object_get(t->saved, "config"), *a = json_object_get(c, "loras");
    t->p.loras = NULL;
    t->p.lora_scales = NULL;
    t->p.n_loras = 0;
    t->p.force = json_is_true(json_object_get(c, "force"));
    if (!a) return pin->n_loras ? nm_err_set(err, NM_ERR_ARG, "%s: this run was trained without adapters below it", path)
                                : NM_OK;
    size_t n = json_array_size(a);
    if (!json_is_array(a) || n > 1024) return nm_err_set(err, NM_ERR_FORMAT, "%s: saved configuration: bad \"loras\"", path);
    if (pin->n_loras && pin->n_loras != n)
        return nm_err_set(err, NM_ERR_ARG, "%s: this run was trained on top of %zu adapters, %zu given", path, n,
                          pin->n_loras);
    if (n == 0) return NM_OK;
    t->saved_lora_paths = nm_calloc(n, sizeof *t->saved_lora_paths);
    t->saved_lora_scales = nm_calloc(n, sizeof *t->saved_lora_scales);
    if (!t->saved_lora_paths || !t->saved_lora_scales) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(a, i), *sc = json_object_get(e, "scale");
        const char *p = json_string_value(json_object_get(e, "path"));
        if (!p || !json_is_number(sc))
            return nm_err_set(err, NM_ERR_FORMAT, "%s: saved configuration: bad entry %zu of \"loras\"", path, i);
        t->saved_lora_paths[i] = pin->n_loras ? pin->loras[i] : p;
        t->saved_lora_scales[i] = (float)json_number_value(sc);
    }
    t->p.loras = t->saved_lora_paths;
    t->p.lora_scales = t->saved_lora_scales;
    t->p.n_loras = n;
    return NM_OK;
}

/* Data parallelism: the ranks must train the same run (same files, same
 * position) and start from the same parameters, bit for bit. */
static nm_status dist_setup(trainer *t, nm_err *err) {
    if (t->dist.size < 2) return NM_OK;
    uint64_t fp = 0;
    for (const char *c = t->fp; *c; c++) fp = mix(fp, (uint64_t)(unsigned char)*c);
    uint64_t v[8] = {t->data_hash, t->val_hash, fp, (uint64_t)t->step, (uint64_t)t->epoch, (uint64_t)t->row,
                     (uint64_t)t->total, (uint64_t)t->n_elems};
    bool same;
    nm_status st = nm_dist_same_u64(&t->dist, v, 8, &same, err);
    if (st) return st;
    if (!same)
        return nm_err_set(err, NM_ERR_ARG,
                          "the %d ranks do not train the same run (base model, data or resumed position differ "
                          "from rank 0's): every machine needs the same files at the same paths",
                          t->dist.size);
    for (int64_t i = 0; i < t->n_params && !st; i++)
        st = nm_dist_bcast_f32(&t->dist, t->params[i].data, t->params[i].n, err);
    if (!st) st = nm_dist_bcast_f32(&t->dist, t->opt.m, t->n_elems, err);
    if (!st) st = nm_dist_bcast_f32(&t->dist, t->opt.v, t->n_elems, err);
    if (!st)
        nm_logf(t->log, NM_LOG_INFO, "data parallel: %d ranks (%d on this machine), each about 1/%d of every step's rows",
                t->dist.size, t->dist.local_size, t->dist.size);
    return st;
}

/* What the gradient allreduce cost, against the step time (the figures of
 * docs/TRAINING.md). */
static void dist_report(trainer *t, int64_t steps) {
    const nm_dist *d = &t->dist;
    if (d->size < 2 || !d->n_grad_reduce || steps < 1) return;
    double step_s = (now_s() - t->run_start) / (double)steps, ar = d->grad_s / (double)d->n_grad_reduce;
    nm_logf(t->log, NM_LOG_INFO,
            "data parallel: %d ranks, %.1f KiB of gradients per step, allreduce %.3f ms of a %.1f ms step (%.1f%%)",
            d->size, (double)d->grad_bytes / 1024.0, ar * 1e3, step_s * 1e3, 100.0 * ar / step_s);
}

/* ---- preference tuning (DPO) ---- */

/* The reference value of every sequence of d (the model without the
 * trained adapter, stack included), in stored order: out[2i] chosen and
 * out[2i+1] rejected of pair i.  Fixed micro-batches in a fixed order, so
 * a resumed run recomputes the same bits. */
static nm_status dpo_reference(trainer *t, const nm_rows *r, double **out, nm_err *err) {
    int64_t L = t->p.seq_len, B = 2 * (int64_t)t->p.batch;
    double *ref = nm_calloc((size_t)r->n_rows, sizeof *ref);
    if (!ref) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    for (int64_t r0 = 0; r0 < r->n_rows; r0 += B) {
        int64_t ns = r->n_rows - r0 < B ? r->n_rows - r0 : B;
        nm_tm_batch b = {ns, L, r->tokens + r0 * L, r->targets + r0 * L, r->pos + r0 * L, r->doc + r0 * L};
        nm_status st = nm_dpo_logps(t->m, NULL, &t->dcfg, &b, ref + r0, err);
        if (st) {
            free(ref);
            return st;
        }
    }
    *out = ref;
    return NM_OK;
}

static nm_status setup_dpo(trainer *t, const nm_data_opts *o, nm_err *err) {
    const nm_train_params *p = &t->p;
    t->dcfg = (nm_dpo_cfg){(nm_dpo_loss)nm_dpo_loss_parse(p->dpo_loss), p->dpo_beta, p->dpo_label_smoothing};
    nm_status st = nm_pref_load(p->data, o, &t->train, err);
    if (st) return st;
    if (t->train.n_bad)
        nm_logf(t->log, NM_LOG_WARN, "%s: %lld malformed records skipped", p->data, (long long)t->train.n_bad);
    if (t->train.n_truncated)
        nm_logf(t->log, NM_LOG_WARN, "%s: %lld pairs had a side longer than %d tokens, cut to fit", p->data,
                (long long)t->train.n_truncated, p->seq_len);
    if (t->train.n_empty)
        nm_logf(t->log, NM_LOG_WARN, "%s: %lld pairs dropped: no answer token within %d tokens", p->data,
                (long long)t->train.n_empty, p->seq_len);
    if (p->val_data) {
        if ((st = nm_pref_load(p->val_data, o, &t->val, err))) return st;
    } else if (p->val_split > 0) {
        if ((st = nm_pref_split(&t->train, &t->val, p->val_split, p->seed, err))) return st;
    }
    t->data_hash = nm_dataset_hash(&t->train);
    t->val_hash = t->val.n_ex ? nm_dataset_hash(&t->val) : 0;
    double t0 = now_s();
    nm_rows r;
    int64_t *pair;
    if ((st = nm_pref_rows(&t->train, p->seq_len, false, 0, &r, &pair, err))) return st;
    free(pair);
    st = dpo_reference(t, &r, &t->dref, err);
    nm_rows_deinit(&r);
    if (st) return st;
    if (t->val.n_ex) {
        if ((st = nm_pref_rows(&t->val, p->seq_len, false, 0, &t->vrows, &t->vrow_pair, err))) return st;
        if (p->val_max_rows > 0 && t->vrows.n_rows > 2 * p->val_max_rows) t->vrows.n_rows = 2 * p->val_max_rows;
        if ((st = dpo_reference(t, &t->vrows, &t->dvref, err))) return st;
    }
    nm_logf(t->log, NM_LOG_INFO, "DPO (%s, beta %g%s): reference log-probabilities of %lld + %lld pairs in %.1f s",
            nm_dpo_loss_name(t->dcfg.loss), t->dcfg.beta, t->dcfg.label_smoothing > 0 ? ", conservative" : "",
            (long long)nm_pref_n_pairs(&t->train), (long long)(t->vrows.n_rows / 2), now_s() - t0);
    t->dref_rows = nm_calloc((size_t)(2 * (int64_t)p->batch * p->grad_accum), sizeof *t->dref_rows);
    if (!t->dref_rows) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    return NM_OK;
}

/* The sums of every rank's pairs (data parallel; nothing in one process). */
static nm_status dpo_sums_reduce(trainer *t, nm_dpo_sums *s, nm_err *err) {
    if (t->dist.size < 2) return NM_OK;
    double v[6] = {s->loss, s->acc, s->margin, s->chosen, s->rejected, (double)s->n_pairs};
    nm_status st = nm_dist_sum_f64(&t->dist, v, 6, err);
    if (st) return st;
    *s = (nm_dpo_sums){v[0], v[1], v[2], v[3], v[4], (int64_t)v[5]};
    return NM_OK;
}

/* A step of 2 * batch * grad_accum rows: whole pairs, since every row
 * position is even and so is every count of rows. */
static int run_step_dpo(trainer *t, double *loss, double *gnorm, double *lr, int64_t *tok_step, nm_err *err,
                        nm_status *st) {
    const nm_train_params *p = &t->p;
    int64_t L = p->seq_len, B = 2 * (int64_t)p->batch, want = B * p->grad_accum;
    *loss = *gnorm = *lr = NAN;
    *tok_step = 0;
    if ((*st = ensure_rows(t, err))) return 0;
    int64_t avail = t->rows.n_rows - t->row, take = want < avail ? want : avail, ntok = 0;
    for (int64_t i = 0; i < take; i++)
        t->dref_rows[i] = t->dref[2 * t->row_pair[(t->row + i) / 2] + ((t->row + i) & 1)];
    for (int64_t i = t->row * L; i < (t->row + take) * L; i++) ntok += t->rows.doc[i] >= 0;
    /* data parallel: this rank takes pairs [q0, q1) of the step (whole
     * pairs, so each pair's two sequences meet in one micro-batch); the
     * weight 2/take is already the global mean over the step's pairs */
    int64_t q0, q1;
    nm_dist_share(&t->dist, take / 2, B / 2, &q0, &q1);
    if (t->dist.size > 1) { /* any rank stopping stops all, before anything changed */
        bool stop = p->should_stop && p->should_stop(p->user);
        if ((*st = nm_dist_any(&t->dist, &stop, err))) return 0;
        if (stop) return 1;
    }
    nm_grad_zero(t->params, t->n_params);
    nm_dpo_sums sums = {0};
    for (int64_t r0 = 2 * q0; r0 < 2 * q1;) {
        if (t->dist.size == 1 && p->should_stop && p->should_stop(p->user)) return 1;
        int64_t k = r0 / B, ns = (k + 1) * B < 2 * q1 ? (k + 1) * B - r0 : 2 * q1 - r0, g = t->row + r0;
        nm_tm_batch b = {ns, L, t->rows.tokens + g * L, t->rows.targets + g * L, t->rows.pos + g * L,
                         t->rows.doc + g * L};
        uint64_t drop = mix(mix(p->seed, (uint64_t)t->step), (uint64_t)k);
        if (r0 % B) drop = mix(drop, (uint64_t)(r0 % B)); /* a part of micro-batch k (more ranks than micro-batches) */
        *st = nm_dpo_step(t->m, t->lora, &t->dcfg, &b, t->dref_rows + r0, true, 2.0 / (double)take, drop, &sums, err);
        if (*st) return 0;
        r0 += ns;
    }
    if ((*st = nm_dist_sum_grads(&t->dist, t->params, t->n_params, err))) return 0;
    if ((*st = dpo_sums_reduce(t, &sums, err))) return 0;
    apply_step(t, take, ntok, gnorm, lr);
    *loss = sums.n_pairs ? sums.loss / (double)sums.n_pairs : NAN;
    t->dsums = sums;
    *tok_step = ntok;
    return 0;
}

static nm_status evaluate_dpo(trainer *t, double *loss, nm_err *err) {
    int64_t L = t->p.seq_len, B = 2 * (int64_t)t->p.batch;
    nm_dpo_sums s = {0};
    /* batch j on rank j % size, the sums added over the ranks */
    for (int64_t r0 = (int64_t)t->dist.rank * B; r0 < t->vrows.n_rows; r0 += (int64_t)t->dist.size * B) {
        int64_t ns = t->vrows.n_rows - r0 < B ? t->vrows.n_rows - r0 : B;
        nm_tm_batch b = {ns, L, t->vrows.tokens + r0 * L, t->vrows.targets + r0 * L, t->vrows.pos + r0 * L,
                         t->vrows.doc + r0 * L};
        nm_status st = nm_dpo_step(t->m, t->lora, &t->dcfg, &b, t->dvref + r0, false, 0, 0, &s, err);
        if (st) return st;
    }
    nm_status st = dpo_sums_reduce(t, &s, err);
    if (st) return st;
    t->dvsums = s;
    *loss = s.n_pairs ? s.loss / (double)s.n_pairs : NAN;
    return NM_OK;
}

static void dpo_stats(const trainer *t, nm_train_stats *s) {
    const nm_dpo_sums *a = &t->dsums, *v = &t->dvsums;
    double n = a->n_pairs ? (double)a->n_pairs : NAN, nv = v->n_pairs ? (double)v->n_pairs : NAN;
    s->dpo = true;
    s->reward_acc = a->acc / n;
    s->reward_margin = a->margin / n;
    s->reward_chosen = a->chosen / n;
    s->reward_rejected = a->rejected / n;
    s->val_reward_acc = v->acc / nv;
    s->val_reward_margin = v->margin / nv;
    s->val_reward_chosen = v->chosen / nv;
    s->val_reward_rejected = v->rejected / nv;
}

nm_status nm_train_run(const nm_train_params *pin, const nm_log *log, nm_err *err) {
    trainer t;
    memset(&t, 0, sizeof t);
    t.p = *pin;
    t.log = log;
    t.last_val = NAN;
    const char **saved_vars = NULL;
    nm_st *state = NULL;
    nm_status st = nm_dist_init(&t.dist, err);
    if (st) return st;
    if (t.dist.rank != 0 && log) { /* one copy of the story, from rank 0 */
        t.rank_log = *log;
        if (t.rank_log.min_level < NM_LOG_WARN) t.rank_log.min_level = NM_LOG_WARN;
        t.log = log = &t.rank_log;
    }
    if (pin->resume_dir) {
        t.saved = read_state_json(pin->resume_dir, &state, err);
        if (!t.saved) return err ? err->code : NM_ERR_FORMAT;
        char sp[4096];
        snprintf(sp, sizeof sp, "%s/%s", pin->resume_dir, STATE_FILE);
        if ((st = config_from_json(json_object_get(t.saved, "config"), &t.p, sp, &saved_vars, err))) goto done;
        if ((st = dpo_config_from_json(json_object_get(t.saved, "config"), &t.p, sp, err))) goto done;
        if ((st = saved_stack(&t, pin, sp, err))) goto done;
        /* what a resume may change: where things are, threads, feedback,
         * and the number of steps (which stretches the schedule) */
        if (pin->model) t.p.model = pin->model;
        if (pin->data) t.p.data = pin->data;
        if (pin->distill_cache && t.p.distill_cache) t.p.distill_cache = pin->distill_cache;
        if (pin->steps > 0) t.p.steps = pin->steps;
        t.p.resume_dir = pin->resume_dir;
        t.p.out_dir = pin->out_dir ? pin->out_dir : pin->resume_dir;
        t.p.threads = pin->threads;
        t.p.metrics = pin->metrics;
        t.p.on_step = pin->on_step;
        t.p.should_stop = pin->should_stop;
        t.p.user = pin->user;
    }
    t.out = t.p.out_dir;
    if (!t.out) {
        st = nm_err_set(err, NM_ERR_ARG, "no output directory given");
        goto done;
    }
    if ((st = check_params(&t.p, err))) goto done;
    if ((st = setup_model(&t, err))) goto done;
    if ((st = setup_data(&t, err))) goto done;
    if ((st = ensure_rows(&t, err))) goto done;
    {
        int64_t per_step = (int64_t)t.p.batch * t.p.grad_accum * (t.p.dpo ? 2 : 1); /* DPO: 2 rows a pair */
        int64_t spe = (t.rows.n_rows + per_step - 1) / per_step;
        t.total = t.p.steps > 0 ? t.p.steps : t.p.epochs * spe;
        t.sched = (nm_sched){(nm_sched_kind)nm_sched_parse(t.p.schedule), t.p.lr, t.p.min_lr, t.p.warmup, t.total};
    }
    if (state) {
        if ((st = restore(&t, state, err))) goto done;
        nm_st_free(state);
        state = NULL;
        t.resumed = true;
        if ((st = ensure_rows(&t, err))) goto done;
        if (t.row > t.rows.n_rows) {
            st = nm_err_set(err, NM_ERR_FORMAT, "%s: saved data position is past the data", t.p.resume_dir);
            goto done;
        }
        nm_logf(log, NM_LOG_INFO, "resuming %s at step %lld of %lld (epoch %lld, row %lld)", t.p.resume_dir,
                (long long)t.step, (long long)t.total, (long long)t.epoch, (long long)t.row);
    }
    if (!t.resumed) { /* never overwrite a run: it may be hours of work */
        char sp[4096];
        struct stat sb;
        snprintf(sp, sizeof sp, "%s/%s", t.out, STATE_FILE);
        if (stat(sp, &sb) == 0) {
            st = nm_err_set(err, NM_ERR_ARG, "%s already holds a training run (continue it with --resume %s, or "
                            "choose another output directory)", t.out, t.out);
            goto done;
        }
    }
    if ((st = dist_setup(&t, err))) goto done;
    if (t.dist.rank == 0 && (st = make_dir(t.out, err))) goto done;
    if (t.dist.rank == 0 && (!t.p.metrics || *t.p.metrics)) {
        if (t.p.metrics)
            snprintf(t.metrics_path, sizeof t.metrics_path, "%s", t.p.metrics);
        else
            snprintf(t.metrics_path, sizeof t.metrics_path, "%s/metrics.jsonl", t.out);
        if (t.resumed && (st = trim_metrics(t.metrics_path, t.step, err))) goto done;
        t.metrics = fopen(t.metrics_path, t.resumed ? "a" : "w");
        if (!t.metrics) {
            st = nm_err_set(err, NM_ERR_IO, "%s: %s", t.metrics_path, strerror(errno));
            goto done;
        }
    }
    nm_logf(log, NM_LOG_INFO,
            "%s: %lld trainable parameters (%s), %lld examples -> %lld rows of %d tokens, %lld target tokens; "
            "%lld steps of %d x %d sequences; %s activations %.1f MiB",
            t.p.model, (long long)t.n_elems, t.p.full ? "full" : "LoRA", (long long)t.train.n_ex,
            (long long)t.rows.n_rows, t.p.seq_len, (long long)t.train.n_trained, (long long)t.total, t.p.grad_accum,
            t.p.batch, t.m->checkpointing ? "checkpointed" : "stored",
            (double)nm_tmodel_act_bytes(t.m, t.lora, (int64_t)t.p.batch * t.p.seq_len) / 1048576.0);
    t.run_start = now_s();
    t.elapsed_at_start = t.elapsed_before;
    {
        int64_t tokens0 = t.tokens, start_step = t.step;
        bool stop = false;
        while (t.step < t.total && !stop) {
            double loss, gnorm, lr;
            int64_t ntok, epoch = t.epoch; /* the epoch this step's data comes from */
            int r = run_step(&t, &loss, &gnorm, &lr, &ntok, err, &st);
            if (st) goto done;
            if (r == 1) { /* interrupted inside a step: nothing was applied */
                stop = true;
                break;
            }
            nm_train_stats s = {0};
            double el = now_s() - t.run_start;
            s.step = t.step;
            s.total_steps = t.total;
            s.epoch = epoch;
            s.loss = loss;
            s.lr = lr;
            s.grad_norm = gnorm;
            s.tokens = t.tokens;
            s.elapsed_s = el;
            s.tokens_per_s = el > 0 ? (double)(t.tokens - tokens0) / el : 0;
            s.eta_s = el / (double)(t.step - start_step) * (double)(t.total - t.step);
            s.peak_rss = peak_rss();
            if (!isfinite(gnorm))
                nm_logf(log, NM_LOG_WARN, "step %lld: non-finite gradient, update skipped", (long long)t.step);
            bool last = t.step == t.total;
            if (t.vrows.n_rows && ((t.p.eval_every && t.step % t.p.eval_every == 0) || last)) {
                if ((st = evaluate(&t, &t.last_val, err))) goto done;
                s.evaluated = true;
            }
            s.val_loss = t.last_val;
            if (t.p.dpo) dpo_stats(&t, &s);
            /* metrics first: a crash before the checkpoint leaves a line
             * that the resumed run trims and writes again */
            s.checkpointed = (t.p.checkpoint_every && t.step % t.p.checkpoint_every == 0) || last;
            write_metrics(&t, &s);
            if (s.checkpointed && (st = save_checkpoint(&t, err))) goto done;
            if (t.p.on_step && t.p.on_step(t.p.user, &s) != 0) stop = true;
            if ((st = nm_dist_any(&t.dist, &stop, err))) goto done; /* the ranks stop together */
            if (stop && !s.checkpointed && (st = save_checkpoint(&t, err))) goto done;
        }
        if (stop) {
            if ((st = save_checkpoint(&t, err))) goto done;
            st = nm_err_set(err, NM_ERR_CANCELLED, "stopped at step %lld of %lld; checkpoint saved in %s",
                            (long long)t.step, (long long)t.total, t.out);
            goto done;
        }
        if (t.step == start_step)
            nm_logf(log, NM_LOG_INFO, "%s: already trained for %lld steps", t.out, (long long)t.total);
        else
            dist_report(&t, t.step - start_step);
    }
done:
    nm_st_free(state);
    free(saved_vars);
    trainer_free(&t);
    return st;
}

/* ======================================================================== */
/* benchmark                                                                */
/* ======================================================================== */

void nm_train_bench_default(nm_train_bench_params *p) {
    memset(p, 0, sizeof *p);
    p->rank = 8;
    p->seq_len = 256;
    p->batch = 1;
    p->steps = 3;
    p->targets = "all";
    p->act_checkpointing = -1;
}

/* Multiply-adds per token of forward + backward, as the algorithm needs
 * them (recomputation not counted). */
static double train_flops_per_token(const nm_tmodel *m, const nm_tm_lora *l, int64_t L) {
    const nm_tm_hparams *hp = &m->hp;
    double macs = 0;
    double ctx = (double)(L + 1) / 2.0; /* causal: keys per query on average */
    for (int64_t ly = 0; ly < hp->n_layer; ly++) {
        for (int k = 0; k < NM_TM_COUNT; k++) {
            const nm_wmat *w = &m->layers[ly].w[k];
            double wm = (double)w->rows * (double)w->cols;
            macs += wm * (m->full ? 3.0 : 2.0); /* forward, dx (, dW) */
            if (l && (l->targets & (1u << k)))
                macs += (double)l->rank * (double)(w->rows + w->cols) * 3.0; /* fwd; du+dB; dA+dx */
        }
        double hd = (double)hp->head_dim, H = (double)hp->n_head;
        macs += H * ctx * hd * (2.0 + 4.0); /* qk, pv; dp, dv, dq, dk */
    }
    macs += (double)hp->n_vocab * (double)hp->dim * (m->full ? 3.0 : 2.0);
    return 2.0 * macs;
}

nm_status nm_train_bench(const nm_train_bench_params *p, nm_train_bench_result *r, const nm_log *log,
                         nm_err *err) {
    memset(r, 0, sizeof *r);
    if (!p->model) return nm_err_set(err, NM_ERR_ARG, "no model given");
    if (p->seq_len < 2 || p->batch < 1 || p->steps < 1 || p->rank < 1)
        return nm_err_set(err, NM_ERR_ARG, "bench: seq, batch, steps and rank must be positive");
    int nth = p->threads > 0 ? p->threads : nm_cpu_count();
    nm_pool *pool = NULL;
    nm_tmodel *m = NULL;
    nm_tm_lora *l = NULL;
    nm_adamw opt = {0};
    int32_t *tok = NULL, *tgt = NULL;
    nm_status st = nm_pool_new(nth, &pool, err);
    if (st) return st;
    if ((st = nm_tmodel_open(p->model, p->full, pool, &m, err))) goto done;
    unsigned targets;
    if (!p->full) {
        if ((st = nm_tmod_parse(p->targets ? p->targets : "all", &targets, err))) goto done;
        if ((st = nm_tm_lora_new(m, p->rank, 2.0f * (float)p->rank, false, 0, targets, &l, err))) goto done;
        nm_tm_lora_init_peft(l, 1);
    }
    nm_tparam *params = p->full ? m->params : l->params;
    int64_t n_params = p->full ? m->n_params : l->n_params;
    if ((st = nm_adamw_init(&opt, params, n_params, err))) goto done;
    int64_t T = (int64_t)p->batch * p->seq_len;
    if (p->act_checkpointing >= 0)
        m->checkpointing = p->act_checkpointing > 0;
    else
        m->checkpointing = nm_tmodel_act_bytes(m, l, T) > AUTO_CKPT_BYTES;
    tok = malloc((size_t)(T + 1) * sizeof *tok);
    tgt = malloc((size_t)T * sizeof *tgt);
    if (!tok || !tgt) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    nm_rng rng;
    nm_rng_seed(&rng, 7);
    for (int64_t i = 0; i <= T; i++) tok[i] = (int32_t)(nm_rng_u64(&rng) % (uint64_t)m->hp.n_vocab);
    for (int64_t i = 0; i < T; i++) tgt[i] = tok[i + 1];
    nm_tm_batch b = {p->batch, p->seq_len, tok, tgt, NULL, NULL};
    nm_adamw_cfg ac = {0.9, 0.999, 1e-8, 0};
    double t0 = 0;
    for (int32_t s = 0; s <= p->steps; s++) { /* step 0 warms up (allocation, page-in) */
        if (s == 1) t0 = now_s();
        double sum;
        int64_t n;
        nm_grad_zero(params, n_params);
        if ((st = nm_tmodel_fwd_bwd(m, l, &b, 1.0f / (float)T, (uint64_t)s, &sum, &n, err))) goto done;
        nm_grad_clip(params, n_params, 1.0);
        nm_adamw_step(&opt, &ac, 1e-4);
    }
    double el = now_s() - t0;
    r->step_s = el / p->steps;
    r->tokens_per_s = (double)T * p->steps / el;
    r->flops_per_token = train_flops_per_token(m, l, p->seq_len);
    r->gflops_per_s = r->flops_per_token * r->tokens_per_s / 1e9;
    r->peak_rss = peak_rss();
    r->act_bytes = nm_tmodel_act_bytes(m, l, T);
    r->threads = nth;
    r->act_checkpointing = m->checkpointing;
    nm_logf(log, NM_LOG_DEBUG, "bench: %.3f s per step", r->step_s);
done:
    free(tok);
    free(tgt);
    nm_adamw_deinit(&opt);
    nm_tm_lora_free(l);
    nm_tmodel_free(m);
    nm_pool_free(pool);
    return st;
}
