/* test_mpi.c - data-parallel training (issue 12).
 *
 * Built by `make MPI=1` (NM_MPI defined; scripts/test-all.sh runs it in its
 * own phase), it starts real jobs with `mpirun -np 2 --oversubscribe` and
 * holds them against one process of the same tool on the same global
 * batch: the same loss at every step and the same adapter within float32
 * reduction-order tolerance, whole micro-batches per rank (dropout on) and
 * rows split inside one micro-batch; a rank that dies stops the job (no
 * hang) and leaves a checkpoint from which 1 -> 2 and 2 -> 1 ranks resume
 * to the uninterrupted adapter; a binary built without MPI refuses to run
 * under mpirun.
 *
 * Built by plain `make` it needs no MPI: it checks that the one-process
 * build recognises a launcher's environment and refuses, in the tool and
 * in the library, and the split of a step's rows between ranks. */
#include "testlib.h"
#include "train/dist.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char data_txt[600];

static const char *tmp_path(const char *name) {
    static char buf[4][600];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", nm_test_tmpdir(), name);
    return buf[k];
}

/* 40 kB of Shakespeare as plain-text training data (written to the
 * temporary directory, never into the repository). */
static bool make_data(nm_test *t) {
    if (data_txt[0]) return true;
    size_t len;
    char *s = nm_test_read(nm_test_shared("data/tinyshakespeare.txt"), &len);
    if (!CHECKF(t, s && len > 40000, "cannot read ../shared/data/tinyshakespeare.txt")) {
        free(s);
        return false;
    }
    snprintf(data_txt, sizeof data_txt, "%s", tmp_path("data.txt"));
    FILE *f = fopen(data_txt, "wb");
    bool ok = f && fwrite(s, 1, 40000, f) == 40000;
    if (f) fclose(f);
    free(s);
    return CHECKF(t, ok, "cannot write %s", data_txt);
}

/* ---- the split of a step's rows (both builds) ---- */

/* For every row count, micro-batch size and rank count: the ranks' ranges
 * tile [0, n) in rank order, they are whole micro-batches whenever there
 * are at least as many micro-batches as ranks (so each keeps its dropout
 * seed), and no rank gets more than its fair share plus one unit. */
static void test_share(nm_test *t) {
    for (int64_t R = 1; R <= 9; R++)
        for (int64_t mb = 1; mb <= 5; mb++)
            for (int64_t n = 0; n <= 40; n++) {
                int64_t nmb = (n + mb - 1) / mb, prev = 0;
                for (int64_t r = 0; r < R; r++) {
                    nm_dist d = {.rank = (int)r, .size = (int)R, .local_size = 1};
                    int64_t a, b;
                    nm_dist_share(&d, n, mb, &a, &b);
                    if (!CHECKF(t, a == prev && b >= a && b <= n, "n=%lld mb=%lld R=%lld r=%lld: [%lld,%lld)",
                                (long long)n, (long long)mb, (long long)R, (long long)r, (long long)a, (long long)b))
                        return;
                    if (nmb >= R) {
                        CHECKF(t, a % mb == 0 && (b % mb == 0 || b == n), "not whole micro-batches");
                        CHECKF(t, (b - a + mb - 1) / mb <= nmb / R + 1, "unfair share of micro-batches");
                    } else {
                        CHECKF(t, b - a <= n / R + 1, "unfair share of rows");
                    }
                    prev = b;
                }
                CHECKF(t, prev == n, "n=%lld mb=%lld R=%lld: rows up to %lld only", (long long)n, (long long)mb,
                       (long long)R, (long long)prev);
            }
}

#ifndef NM_MPI

/* ---- without MPI: started by a launcher, the tool and the library refuse ---- */

static void test_plain_refuses_launcher(nm_test *t) {
    if (!make_data(t)) return;
    static const char *const envs[] = {
        "OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=0", /* Open MPI */
        "PMI_SIZE=4 PMI_RANK=3",                         /* MPICH / Hydra, Slurm */
        "PMIX_RANK=1",                                   /* PMIx: a rank 1 means at least two */
    };
    for (size_t i = 0; i < sizeof envs / sizeof *envs; i++) {
        char cmd[2048], *out = NULL;
        snprintf(cmd, sizeof cmd,
                 "env %s %s train -m %s --data %s --format text --seq 32 --batch 1 --steps 1 --out %s --quiet 2>&1",
                 envs[i], nm_test_bin(), nm_test_shared("models/stories260K.gguf"), data_txt, tmp_path("refused"));
        int rc = nm_test_sh(cmd, &out);
        CHECKF(t, rc == 1 && out && strstr(out, "built without MPI") && strstr(out, "make MPI=1") &&
                      !strchr(strchr(out, '\n') ? strchr(out, '\n') + 1 : "", '\n'),
               "%s: rc %d, output: %s", envs[i], rc, out ? out : "");
        free(out);
        struct stat sb;
        CHECKF(t, stat(tmp_path("refused"), &sb) != 0, "%s: the refused run wrote its output directory", envs[i]);
    }
    /* a launcher that started one process: an ordinary run */
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd,
             "env OMPI_COMM_WORLD_SIZE=1 OMPI_COMM_WORLD_RANK=0 %s train -m %s --data %s --format text --seq 32 "
             "--batch 1 --steps 1 --out %s --quiet 2>&1",
             nm_test_bin(), nm_test_shared("models/stories260K.gguf"), data_txt, tmp_path("single"));
    int rc = nm_test_sh(cmd, &out);
    CHECKF(t, rc == 0, "one process under a launcher: rc %d: %s", rc, out ? out : "");
    free(out);
}

static void test_library_refuses_launcher(nm_test *t) {
    if (!make_data(t)) return;
    nm_train_params p;
    nm_train_params_default(&p);
    p.model = nm_test_shared("models/stories260K.gguf");
    p.data = data_txt;
    p.format = "text";
    p.seq_len = 32;
    p.batch = 1;
    p.steps = 1;
    p.threads = 1;
    p.out_dir = tmp_path("lib-refused");
    nm_err err = {0};
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    CHECK(t, nm_dist_start(&err) == NM_ERR_UNSUPPORTED && strstr(err.msg, "make MPI=1"));
    nm_status st = nm_train_run(&p, NULL, &err);
    CHECKF(t, st == NM_ERR_UNSUPPORTED && strstr(err.msg, "built without MPI"), "status %d: %s", st, err.msg);
    unsetenv("OMPI_COMM_WORLD_SIZE");
    CHECK(t, nm_dist_rank() == 0 && nm_dist_size() == 1 && nm_dist_finish(5) == 5);
    CHECK_OK(t, nm_dist_start(&err), err);
}

int main(void) {
    nm_test_run("share", test_share);
    nm_test_run("plain_refuses_launcher", test_plain_refuses_launcher);
    nm_test_run("library_refuses_launcher", test_library_refuses_launcher);
    return nm_test_finish();
}

#else /* NM_MPI: real jobs under mpirun */

/* mpirun as root (CI containers) on a machine with fewer cores than ranks;
 * timeout turns a hung job into exit status 124. */
#define MPIRUN                                                                                       \
    "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_base_warn_component_unused=0 " \
    "timeout 120 mpirun --oversubscribe --bind-to none"

typedef struct run_cfg {
    const char *args; /* training options after the data */
} run_cfg;

/* Whole micro-batches per rank (2 ranks, 4 micro-batches a step), with
 * dropout: each micro-batch keeps its index and so its dropout masks. */
static const char *const CFG_MB =
    "--seq 64 --batch 2 --grad-accum 4 --steps 8 --rank 4 --alpha 8 --dropout 0.1 --lr 1e-3 --checkpoint-every 2";
/* One micro-batch of 4 rows a step, split 2 + 2 between the ranks, with a
 * validation split evaluated by both ranks (each half the batches). */
static const char *const CFG_ROWS =
    "--seq 64 --batch 4 --grad-accum 1 --steps 6 --rank 4 --alpha 8 --lr 1e-3 --checkpoint-every 3 "
    "--val-split 0.05 --eval-every 3";

/* Runs `[mpirun -np N] nomoat train ...` (N = 0: no mpirun); output in
 * *out (may be NULL). */
static int train(int np, const char *bin, const char *cfg, const char *out_dir, const char *env, char **out) {
    char cmd[4096], pre[512] = "";
    if (np > 0) snprintf(pre, sizeof pre, MPIRUN " -np %d", np);
    snprintf(cmd, sizeof cmd, "%s %s %s train -m %s --data %s --format text %s --threads 1 --out %s 2>&1",
             env ? env : "", pre, bin, nm_test_shared("models/stories260K.gguf"), data_txt, cfg, out_dir);
    char *o = NULL;
    int rc = nm_test_sh(cmd, &o);
    if (out)
        *out = o;
    else
        free(o);
    return rc;
}

static int resume(int np, const char *dir, const char *env, char **out) {
    char cmd[2048], pre[512] = "";
    if (np > 0) snprintf(pre, sizeof pre, MPIRUN " -np %d", np);
    snprintf(cmd, sizeof cmd, "%s %s %s train --resume %s --threads 1 2>&1", env ? env : "", pre, nm_test_bin(), dir);
    return nm_test_sh(cmd, out);
}

/* "loss" (or "val_loss") of every line of metrics.jsonl, NAN where absent. */
static int read_metric(const char *dir, const char *key, double *v, int cap) {
    char p[700], k[64];
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    snprintf(k, sizeof k, "\"%s\":", key);
    size_t len;
    char *s = nm_test_read(p, &len);
    if (!s) return -1;
    int n = 0;
    for (char *line = s; *line && n < cap;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        char *q = strstr(line, k);
        v[n++] = q ? strtod(q + strlen(k), NULL) : NAN;
        line = nl ? nl + 1 : line + strlen(line);
    }
    free(s);
    return n;
}

/* Losses (and gradient norms: AdamW and clipping hide a wrongly scaled
 * gradient from the losses, not from its norm) within float32
 * reduction-order noise: the ranks add the same terms in another order, so
 * the relative difference is ~1e-7 at the first step and grows slowly
 * through the updates. */
static void same_losses(nm_test *t, const char *ref, const char *got, const char *key, int want) {
    double tol = strcmp(key, "grad_norm") ? 2e-5 : 1e-4; /* metrics.jsonl prints norms to 6 digits */
    double a[64], b[64];
    int na = read_metric(ref, key, a, 64), nb = read_metric(got, key, b, 64);
    if (!CHECKF(t, na == want && nb == want, "%s: %d and %d metrics lines, want %d", key, na, nb, want)) return;
    int finite = 0;
    for (int i = 0; i < na; i++) {
        if (isnan(a[i]) && isnan(b[i])) continue;
        finite++;
        CHECKF(t, fabs(a[i] - b[i]) <= tol * fabs(a[i]), "%s of step %d: %.7f (one process) vs %.7f", key, i + 1,
               a[i], b[i]);
    }
    CHECKF(t, finite > 0, "%s: no values to compare", key);
}

/* The two adapters hold the same tensors with values within tolerance:
 * per tensor, |a - b| <= 1e-3 * max|a| + 1e-6 everywhere. */
static void same_adapter(nm_test *t, const char *ref, const char *got) {
    char pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s/adapter_model.safetensors", ref);
    snprintf(pb, sizeof pb, "%s/adapter_model.safetensors", got);
    nm_st *a = NULL, *b = NULL;
    nm_err err = {0};
    if (CHECK_OK(t, nm_st_open(pa, &a, &err), err) && CHECK_OK(t, nm_st_open(pb, &b, &err), err)) {
        CHECK(t, nm_st_n_tensors(a) == nm_st_n_tensors(b) && nm_st_n_tensors(a) > 0);
        double worst = 0;
        int64_t nonzero_b = 0;
        for (int64_t i = 0; i < nm_st_n_tensors(a); i++) {
            const nm_st_tensor *x = nm_st_tensor_at(a, i), *y = nm_st_find(b, x->name);
            if (!CHECKF(t, y && !strcmp(x->dtype, "F32") && !strcmp(y->dtype, "F32") && x->nbytes == y->nbytes,
                        "tensor %s differs in type or size", x->name))
                continue;
            int64_t n = (int64_t)(x->nbytes / 4);
            double mx = 0, d = 0;
            for (int64_t j = 0; j < n; j++) {
                float u, v;
                memcpy(&u, (const char *)x->data + 4 * j, 4);
                memcpy(&v, (const char *)y->data + 4 * j, 4);
                if (fabs(u) > mx) mx = fabs(u);
                if (fabs((double)u - v) > d) d = fabs((double)u - v);
                nonzero_b += strstr(x->name, "lora_B") && v != 0;
            }
            if (d / (mx + 1e-30) > worst) worst = d / (mx + 1e-30);
            CHECKF(t, d <= 1e-3 * mx + 1e-6, "%s: max difference %.3g (max |value| %.3g)", x->name, d, mx);
        }
        CHECKF(t, nonzero_b > 0, "the adapter did not train (B is zero)");
        printf("    adapters agree: worst relative difference %.3g\n", worst);
    }
    nm_st_free(a);
    nm_st_free(b);
}

static int64_t state_step(const char *dir) {
    char p[700];
    snprintf(p, sizeof p, "%s/trainer_state.safetensors", dir);
    nm_st *s;
    if (nm_st_open(p, &s, NULL)) return -1;
    const char *j = nm_st_meta(s, "nomoat.trainer");
    const char *k = j ? strstr(j, "\"step\":") : NULL;
    int64_t step = k ? atoll(k + 7) : -1;
    nm_st_free(s);
    return step;
}

static bool ref_done[2];

/* The one-process reference of a configuration (the tool without mpirun). */
static const char *reference(nm_test *t, int which) {
    const char *dir = tmp_path(which ? "ref-rows" : "ref-mb");
    if (!ref_done[which]) {
        char *out = NULL;
        int rc = train(0, nm_test_bin(), which ? CFG_ROWS : CFG_MB, dir, NULL, &out);
        ref_done[which] = CHECKF(t, rc == 0, "one-process reference failed (%d): %s", rc, out ? out : "");
        free(out);
    }
    return dir;
}

static void two_ranks_vs_one(nm_test *t, int which) {
    if (!make_data(t)) return;
    const char *ref = reference(t, which), *dir = tmp_path(which ? "np2-rows" : "np2-mb");
    char *out = NULL;
    int rc = train(2, nm_test_bin(), which ? CFG_ROWS : CFG_MB, dir, NULL, &out);
    if (!CHECKF(t, rc == 0, "mpirun -np 2 failed (%d): %s", rc, out ? out : "")) {
        free(out);
        return;
    }
    /* rank 0 alone reports: one progress line per step, one summary */
    int steps = 0;
    for (const char *line = out; *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : line + strlen(line))
        steps += !strncmp(line, "step ", 5);
    CHECKF(t, strstr(out, "data parallel: 2 ranks") && strstr(out, "KiB of gradients per step"),
           "no data-parallel summary: %s", out);
    CHECKF(t, steps == (which ? 6 : 8), "%d progress lines: %s", steps, out);
    free(out);
    same_losses(t, ref, dir, "loss", which ? 6 : 8);
    same_losses(t, ref, dir, "grad_norm", which ? 6 : 8);
    if (which) same_losses(t, ref, dir, "val_loss", 6);
    same_adapter(t, ref, dir);
}

/* DPO through the same step path: whole pairs split between the ranks,
 * the reward sums added; the same losses, reward accuracies, validation
 * and adapter as one process. */
static void test_np2_dpo(nm_test *t) {
    static const char *const cfg = "--dpo --seq 64 --batch 2 --grad-accum 2 --steps 4 --rank 4 --alpha 8 --lr 1e-3 "
                                   "--val-split 0.04 --eval-every 2 --checkpoint-every 2 --threads 1";
    const char *dirs[2] = {tmp_path("dpo-ref"), tmp_path("dpo-np2")};
    for (int np = 0; np < 2; np++) {
        char cmd[4096], pre[512] = "", *out = NULL;
        if (np) snprintf(pre, sizeof pre, MPIRUN " -np 2");
        snprintf(cmd, sizeof cmd, "%s %s train -m %s --data %s %s --out %s 2>&1", pre, nm_test_bin(),
                 nm_test_shared("models/stories260K.gguf"), nm_test_shared("data/dpo_en_demo.json"), cfg, dirs[np]);
        int rc = nm_test_sh(cmd, &out);
        bool ok = CHECKF(t, rc == 0, "%s failed (%d): %s", np ? "mpirun -np 2" : "one process", rc, out ? out : "");
        free(out);
        if (!ok) return;
    }
    same_losses(t, dirs[0], dirs[1], "loss", 4);
    same_losses(t, dirs[0], dirs[1], "grad_norm", 4);
    same_losses(t, dirs[0], dirs[1], "val_loss", 4);
    same_adapter(t, dirs[0], dirs[1]);
}

/* Distillation through the same step path: each rank reads its rows'
 * teacher entries from the cache by global row index; the same losses and
 * adapter as one process. */
static void test_np2_distill(nm_test *t) {
    if (!make_data(t)) return;
    const char *cache = tmp_path("kd.cache"), *dirs[2] = {tmp_path("kd-ref"), tmp_path("kd-np2")};
    char cmd[4096], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s distill cache -t %s --data %s --format text --seq 64 --top-k 8 --threads 1 -o %s 2>&1",
             nm_test_bin(), nm_test_shared("models/stories260K.gguf"), data_txt, cache);
    int rc = nm_test_sh(cmd, &out);
    bool ok = CHECKF(t, rc == 0, "distill cache failed (%d): %s", rc, out ? out : "");
    free(out);
    if (!ok) return;
    char cfg[1024];
    snprintf(cfg, sizeof cfg, "--distill %s --distill-tau 2 --distill-alpha 0.25 %s", cache, CFG_MB);
    for (int np = 0; np < 2; np++) {
        out = NULL;
        rc = train(np ? 2 : 0, nm_test_bin(), cfg, dirs[np], NULL, &out);
        ok = CHECKF(t, rc == 0, "%s failed (%d): %s", np ? "mpirun -np 2" : "one process", rc, out ? out : "");
        free(out);
        if (!ok) return;
    }
    same_losses(t, dirs[0], dirs[1], "loss", 8);
    same_losses(t, dirs[0], dirs[1], "grad_norm", 8);
    same_adapter(t, dirs[0], dirs[1]);
}

static void test_np2_microbatches(nm_test *t) { two_ranks_vs_one(t, 0); }
static void test_np2_rows(nm_test *t) { two_ranks_vs_one(t, 1); }

/* A rank dies after step 5 (checkpoints every 2 steps): the job ends by
 * itself with a non-zero status and mpirun's message, the checkpoint of
 * step 4 is intact, and resuming it with one process gives the
 * uninterrupted adapter. */
static void test_rank_dies_resume_2_to_1(nm_test *t) {
    if (!make_data(t)) return;
    const char *ref = reference(t, 0), *dir = tmp_path("die-2to1");
    char *out = NULL;
    int rc = train(2, nm_test_bin(), CFG_MB, dir, "NOMOAT_TEST_DIE_AT=1:5", &out);
    CHECKF(t, rc != 0 && rc != 124, "a job with a dead rank: exit status %d (124: it hung)", rc);
    CHECKF(t, out && strstr(out, "rank 1 dies after step 5") && strstr(out, "non-zero"),
           "no clear message: %s", out ? out : "");
    free(out);
    CHECKF(t, state_step(dir) == 4, "checkpoint at step %lld, want 4", (long long)state_step(dir));
    rc = resume(0, dir, NULL, &out);
    CHECKF(t, rc == 0 && out && strstr(out, "resuming") && strstr(out, "step 8/8"), "resume with 1 process (%d): %s",
           rc, out ? out : "");
    free(out);
    same_losses(t, ref, dir, "loss", 8);
    same_losses(t, ref, dir, "grad_norm", 8);
    same_adapter(t, ref, dir);
}

/* One process dies after step 5; two ranks finish the run. */
static void test_resume_1_to_2(nm_test *t) {
    if (!make_data(t)) return;
    const char *ref = reference(t, 0), *dir = tmp_path("die-1to2");
    int rc = train(0, nm_test_bin(), CFG_MB, dir, "NOMOAT_TEST_DIE_AT=0:5", NULL);
    CHECKF(t, rc == 3 && state_step(dir) == 4, "the process did not die at step 5 (%d, checkpoint %lld)", rc,
           (long long)state_step(dir));
    char *out = NULL;
    rc = resume(2, dir, NULL, &out);
    CHECKF(t, rc == 0 && out && strstr(out, "data parallel: 2 ranks") && strstr(out, "step 8/8"),
           "resume with 2 ranks (%d): %s", rc, out ? out : "");
    free(out);
    same_losses(t, ref, dir, "loss", 8);
    same_losses(t, ref, dir, "grad_norm", 8);
    same_adapter(t, ref, dir);
}

/* Ranks that do not train the same run refuse together (no hang). */
static void test_ranks_disagree(nm_test *t) {
    if (!make_data(t)) return;
    char other[700], cmd[4096], *out = NULL;
    snprintf(other, sizeof other, "%s", tmp_path("other.txt"));
    snprintf(cmd, sizeof cmd, "head -c 30000 %s > %s", data_txt, other);
    CHECK(t, nm_test_sh(cmd, NULL) == 0);
    /* rank 1 reads other data at the same path, as a stale copy on another
     * machine would be */
    snprintf(cmd, sizeof cmd,
             MPIRUN " -np 1 %s train -m %s --data %s --format text --seq 32 --steps 2 --threads 1 --out %s : "
                    "-np 1 %s train -m %s --data %s --format text --seq 32 --steps 2 --threads 1 --out %s 2>&1",
             nm_test_bin(), nm_test_shared("models/stories260K.gguf"), data_txt, tmp_path("disagree"), nm_test_bin(),
             nm_test_shared("models/stories260K.gguf"), other, tmp_path("disagree"));
    int rc = nm_test_sh(cmd, &out);
    CHECKF(t, rc != 0 && rc != 124 && out && strstr(out, "do not train the same run"), "exit %d: %s", rc,
           out ? out : "");
    free(out);
    CHECKF(t, state_step(tmp_path("disagree")) < 0, "a checkpoint was written");
}

/* The default build under mpirun says it cannot take part and stops. */
static void test_plain_binary_under_mpirun(nm_test *t) {
    if (!make_data(t)) return;
    const char *plain = getenv("NOMOAT_PLAIN_BIN");
    if (!plain) plain = "build/nomoat";
    struct stat sb;
    if (!CHECKF(t, stat(plain, &sb) == 0, "%s: no binary built without MPI (make, or set NOMOAT_PLAIN_BIN)", plain))
        return;
    char *out = NULL;
    int rc = train(2, plain, "--seq 32 --batch 1 --steps 1", tmp_path("plain"), NULL, &out);
    CHECKF(t, rc != 0 && rc != 124 && out && strstr(out, "built without MPI") && strstr(out, "make MPI=1"),
           "exit %d: %s", rc, out ? out : "");
    free(out);
    CHECKF(t, stat(tmp_path("plain"), &sb) != 0, "the refused run wrote its output directory");
}

int main(void) {
    nm_test_run("share", test_share);
    nm_test_run("np2_microbatches", test_np2_microbatches);
    nm_test_run("np2_rows", test_np2_rows);
    nm_test_run("np2_dpo", test_np2_dpo);
    nm_test_run("np2_distill", test_np2_distill);
    nm_test_run("rank_dies_resume_2_to_1", test_rank_dies_resume_2_to_1);
    nm_test_run("resume_1_to_2", test_resume_1_to_2);
    nm_test_run("ranks_disagree", test_ranks_disagree);
    nm_test_run("plain_binary_under_mpirun", test_plain_binary_under_mpirun);
    return nm_test_finish();
}

#endif
