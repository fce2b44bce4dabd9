/* test_distill_demo.c - the two demonstrations of issue 10 (README,
 * docs/DISTILL.md), at a size that runs in well under a minute:
 *  (a) stories260K (5 layers) distilled into a 3-layer student made of its
 *      layers 0, 2, 4, against the same student trained with cross-entropy
 *      on the same data for the same number of tokens: perplexity on
 *      held-out text the teacher generated;
 *  (b) stories260K + two stacked adapters distilled into one adapter of
 *      rank 8 on the same base: mean KL to the stack and greedy agreement
 *      on held-out text, next to the base without adapters. */
#include "testlib.h"
#include "distill/distill.h"
#include "train/adapter.h"
#include "train/model.h"
#include "base/base.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *MODEL;

static const char *tmp(const char *name) {
    static char buf[8][4096];
    static int slot;
    char *b = buf[slot++ % 8];
    snprintf(b, 4096, "%s/%s", nm_test_tmpdir(), name);
    return b;
}

/* Stories the teacher writes: seeds [s0, s1), n tokens each, sampled from
 * its full distribution (temperature 1, no truncation).  lora: optional
 * adapter flags for nomoat run. */
static bool generate(nm_test *t, const char *out, int s0, int s1, int n, const char *lora) {
    size_t cap = 8192;
    char *cmd = malloc(cap);
    snprintf(cmd, cap,
             "for s in $(seq %d %d); do %s run -m %s %s -p '' -n %d --seed $s --temp 1 --top-k 0 --top-p 1 "
             "--min-p 0 -t 1 2>/dev/null || exit 1; echo; done > %s",
             s0, s1 - 1, nm_test_bin(), MODEL, lora ? lora : "", n, out);
    char *o = NULL;
    int rc = nm_test_sh(cmd, &o);
    free(o);
    free(cmd);
    return CHECKF(t, rc == 0, "generating %s failed", out);
}

typedef struct run_rec {
    double val_loss, tokens_per_s;
    int64_t tokens;
} run_rec;

static int rec_step(void *user, const nm_train_stats *s) {
    run_rec *r = user;
    if (s->evaluated) r->val_loss = s->val_loss;
    r->tokens_per_s = s->tokens_per_s;
    r->tokens = s->tokens;
    return 0;
}

/* ---- (a) ---------------------------------------------------------------- */

static nm_train_params student_params(const char *model, const char *data, const char *val, const char *out,
                                      run_rec *r, uint64_t seed) {
    nm_train_params p;
    nm_train_params_default(&p);
    p.model = model;
    p.data = data;
    p.val_data = val;
    p.out_dir = out;
    p.full = true;
    p.seq_len = 64;
    p.batch = 8;
    p.steps = 160;
    p.lr = 3e-3;
    p.eval_every = 0;
    p.checkpoint_every = 0;
    p.metrics = "";
    p.threads = 2;
    p.seed = seed;
    p.on_step = rec_step;
    p.user = r;
    return p;
}

static void test_smaller_student(nm_test *t) {
    const char *train = tmp("a-train.txt"), *held = tmp("a-held.txt");
    if (!generate(t, train, 1, 101, 200, NULL) || !generate(t, held, 1001, 1031, 200, NULL)) return;
    nm_err err = {0};
    nm_distill_cache_params cp;
    nm_distill_cache_params_default(&cp);
    cp.teacher = MODEL;
    cp.data = train;
    cp.seq_len = 64;
    cp.top_k = 16;
    cp.threads = 2;
    char cache[4096], student[4096];
    snprintf(cache, sizeof cache, "%s", tmp("a.kd"));
    snprintf(student, sizeof student, "%s", tmp("a-student.gguf"));
    cp.out = cache;
    nm_distill_cache_info info;
    if (!CHECK_OK(t, nm_distill_cache_write(&cp, &info, NULL, &err), err)) return;
    if (!CHECK_OK(t, nm_distill_derive(MODEL, "0,2,4", student, NULL, &err), err)) return;
    /* one seed here; the margin below was measured over seeds 1-6 */
    run_rec kd = {NAN, 0, 0}, ce = {NAN, 0, 0};
    nm_train_params p = student_params(student, train, held, tmp("a-kd"), &kd, 1);
    p.distill_cache = cache;
    if (!CHECK_OK(t, nm_train_run(&p, NULL, &err), err)) return;
    p = student_params(student, train, held, tmp("a-ce"), &ce, 1);
    if (!CHECK_OK(t, nm_train_run(&p, NULL, &err), err)) return;
    double ppl_kd = exp(kd.val_loss), ppl_ce = exp(ce.val_loss);
    printf("  (a) teacher cache: %lld positions, top-16, %llu bytes; teacher loss on its data %.3f\n",
           (long long)info.n_positions, (unsigned long long)info.file_bytes, info.teacher_loss);
    printf("  (a) 3-layer student, %lld tokens each: held-out perplexity distilled %.3f, cross-entropy only %.3f "
           "(distillation loop %.0f tokens/s, cross-entropy loop %.0f tokens/s)\n",
           (long long)kd.tokens, ppl_kd, ppl_ce, kd.tokens_per_s, ce.tokens_per_s);
    CHECK(t, kd.tokens == ce.tokens);
    /* Measured with this set-up (seeds 1-6, the data generated as above):
     * held-out loss distilled 2.135-2.161, cross-entropy 2.245-2.268, a
     * gap of 0.090-0.134 nats on every seed, i.e. perplexity 8.6-12.5%
     * lower.  The bar: 5% lower. */
    CHECKF(t, ppl_kd * 1.05 < ppl_ce, "distilled %.3f vs cross-entropy %.3f: distillation must win by 5%%", ppl_kd,
           ppl_ce);
}

/* ---- (b) ---------------------------------------------------------------- */

/* Log-softmax of every trained position of rows under model + stack. */
typedef struct capture {
    const int32_t *targets;
    float *out;
    int64_t n, cap;
} capture;

static int64_t cap_loss(void *user, nm_ops_ctx *c, int64_t t0, int64_t ct, int64_t V, float *logits, float *loss,
                        bool backward) {
    (void)c, (void)backward;
    capture *k = user;
    for (int64_t i = 0; i < ct; i++) {
        loss[i] = 0;
        if (k->targets[t0 + i] < 0 || k->n == k->cap) continue;
        const float *z = logits + i * V;
        double m = z[0], s = 0;
        for (int64_t v = 1; v < V; v++) m = fmax(m, z[v]);
        for (int64_t v = 0; v < V; v++) s += exp(z[v] - m);
        double lse = m + log(s);
        float *o = k->out + k->n++ * V;
        for (int64_t v = 0; v < V; v++) o[v] = (float)(z[v] - lse);
    }
    return ct;
}

static float *log_probs(nm_test *t, const char *const *loras, size_t n, const nm_rows *rows, int64_t n_pos) {
    nm_err err = {0};
    nm_tmodel *m;
    if (!CHECK_OK(t, nm_tmodel_open(MODEL, false, NULL, &m, &err), err)) return NULL;
    nm_lora *l[4] = {0};
    nm_lora_entry e[4];
    nm_lora_layout lay;
    nm_tm_layout(m, &lay);
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        ok = CHECK_OK(t, nm_lora_open(loras[i], NULL, &l[i], &err), err) && CHECK_OK(t, nm_lora_fit(l[i], &lay, &err), err);
        e[i] = (nm_lora_entry){l[i], 1.0f};
    }
    if (ok) ok = CHECK_OK(t, nm_tmodel_set_frozen(m, e, n, &err), err);
    capture k = {NULL, malloc((size_t)(n_pos * m->hp.n_vocab) * sizeof(float)), 0, n_pos};
    nm_tm_head hook = {NULL, cap_loss, &k};
    int64_t L = rows->seq_len;
    for (int64_t r = 0; r < rows->n_rows && ok; r += 8) {
        int64_t ns = rows->n_rows - r < 8 ? rows->n_rows - r : 8;
        nm_tm_batch b = {ns, L, rows->tokens + r * L, rows->targets + r * L, rows->pos + r * L, rows->doc + r * L};
        k.targets = b.targets;
        double s;
        int64_t c;
        ok = CHECK_OK(t, nm_tmodel_eval_head(m, NULL, &b, &hook, &s, &c, &err), err);
    }
    if (ok) ok = CHECK(t, k.n == n_pos);
    for (size_t i = 0; i < n; i++) nm_lora_free(l[i]);
    nm_tmodel_free(m);
    if (!ok) {
        free(k.out);
        return NULL;
    }
    return k.out;
}

/* Mean KL(p || q) over positions and the share of positions whose argmax
 * agree. */
static void compare(const float *p, const float *q, int64_t n, int64_t V, double *kl, double *agree) {
    double s = 0;
    int64_t same = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *a = p + i * V, *b = q + i * V;
        int64_t ia = 0, ib = 0;
        for (int64_t v = 0; v < V; v++) {
            s += exp((double)a[v]) * ((double)a[v] - b[v]);
            if (a[v] > a[ia]) ia = v;
            if (b[v] > b[ib]) ib = v;
        }
        same += ia == ib;
    }
    *kl = s / (double)n;
    *agree = (double)same / (double)n;
}

static bool train_adapter(nm_test *t, const char *data, const char *out, uint64_t seed) {
    nm_train_params p;
    nm_train_params_default(&p);
    p.model = MODEL;
    p.data = data;
    p.out_dir = out;
    p.seq_len = 64;
    p.batch = 4;
    p.steps = 30;
    p.rank = 4;
    p.alpha = 8;
    p.lr = 1e-2;
    p.checkpoint_every = 0;
    p.metrics = "";
    p.threads = 2;
    p.seed = seed;
    nm_err err = {0};
    return CHECK_OK(t, nm_train_run(&p, NULL, &err), err);
}

/* The first bytes of a shared text file, as a data file of this test. */
static bool excerpt(nm_test *t, const char *shared, size_t n, const char *out) {
    size_t len;
    char *s = nm_test_read(nm_test_shared(shared), &len);
    if (!CHECKF(t, s != NULL, "%s missing", shared)) return false;
    nm_err err = {0};
    bool ok = CHECK_OK(t, nm_write_file_atomic(out, s, len < n ? len : n, &err), err);
    free(s);
    return ok;
}

static void test_stack_into_one(nm_test *t) {
    char da[4096], db[4096], A[4096], B[4096];
    snprintf(da, sizeof da, "%s", tmp("b-shakespeare.txt"));
    snprintf(db, sizeof db, "%s", tmp("b-wiki.txt"));
    snprintf(A, sizeof A, "%s", tmp("b-adapter-A"));
    snprintf(B, sizeof B, "%s", tmp("b-adapter-B"));
    if (!excerpt(t, "data/tinyshakespeare.txt", 6000, da) || !excerpt(t, "data/wiki_demo.txt", 6000, db)) return;
    /* two adapters, each trained briefly on its own text */
    if (!train_adapter(t, da, A, 1) || !train_adapter(t, db, B, 2)) return;
    /* the stack writes the distillation data and the held-out text */
    char flags[9000];
    snprintf(flags, sizeof flags, "--lora %s --lora %s", A, B);
    const char *train = tmp("b-train.txt"), *held = tmp("b-held.txt");
    char trainp[4096], heldp[4096], cache[4096], S[4096];
    snprintf(trainp, sizeof trainp, "%s", train);
    snprintf(heldp, sizeof heldp, "%s", held);
    snprintf(cache, sizeof cache, "%s", tmp("b.kd"));
    snprintf(S, sizeof S, "%s", tmp("b-student"));
    if (!generate(t, trainp, 1, 61, 200, flags) || !generate(t, heldp, 2001, 2021, 200, flags)) return;
    const char *stack[2] = {A, B};
    nm_err err = {0};
    nm_distill_cache_params cp;
    nm_distill_cache_params_default(&cp);
    cp.teacher = MODEL;
    cp.loras = stack;
    cp.n_loras = 2;
    cp.data = trainp;
    cp.seq_len = 64;
    cp.top_k = 16;
    cp.threads = 2;
    cp.out = cache;
    nm_distill_cache_info info;
    if (!CHECK_OK(t, nm_distill_cache_write(&cp, &info, NULL, &err), err)) return;
    run_rec r = {NAN, 0, 0};
    nm_train_params p;
    nm_train_params_default(&p);
    p.model = MODEL;
    p.data = trainp;
    p.out_dir = S;
    p.distill_cache = cache;
    p.seq_len = 64;
    p.batch = 8;
    p.steps = 120;
    p.rank = 8;
    p.alpha = 16;
    p.lr = 1e-2;
    p.checkpoint_every = 0;
    p.eval_every = 0;
    p.metrics = "";
    p.threads = 2;
    p.on_step = rec_step;
    p.user = &r;
    if (!CHECK_OK(t, nm_train_run(&p, NULL, &err), err)) return;
    /* held-out positions under the stack, the student, the bare base */
    nm_tmodel *m;
    nm_vocab *v = NULL;
    nm_dataset d = {0};
    nm_rows rows = {0};
    if (!CHECK_OK(t, nm_tmodel_open(MODEL, false, NULL, &m, &err), err)) return;
    CHECK_OK(t, nm_vocab_from_gguf(m->gguf, &v, NULL, &err), err);
    nm_data_opts o = {NM_DATA_TEXT, v, NM_CHAT_TEMPLATE_DEFAULT, 64, true, false, NULL, 0, NULL};
    CHECK_OK(t, nm_dataset_load(heldp, &o, &d, &err), err);
    CHECK_OK(t, nm_rows_build(&d, 64, true, false, 0, &rows, &err), err);
    int64_t V = m->hp.n_vocab, n_pos = rows.n_targets;
    nm_tmodel_free(m);
    nm_vocab_free(v);
    const char *student[1] = {S};
    float *pt = log_probs(t, stack, 2, &rows, n_pos);
    float *ps = log_probs(t, student, 1, &rows, n_pos);
    float *pb = log_probs(t, NULL, 0, &rows, n_pos);
    if (pt && ps && pb) {
        double kl_s, ag_s, kl_b, ag_b;
        compare(pt, ps, n_pos, V, &kl_s, &ag_s);
        compare(pt, pb, n_pos, V, &kl_b, &ag_b);
        printf("  (b) %lld held-out positions: student (one rank-8 adapter) KL %.4f, greedy agreement %.1f%%; "
               "base without adapters KL %.4f, agreement %.1f%%; distillation %.0f tokens/s\n",
               (long long)n_pos, kl_s, 100 * ag_s, kl_b, 100 * ag_b, r.tokens_per_s);
        /* Measured: see docs/DISTILL.md.  The bars: the student is much
         * closer to the stack than the base is, and agrees more often. */
        CHECKF(t, kl_s < 0.25 * kl_b, "student KL %.4f vs base %.4f", kl_s, kl_b);
        CHECKF(t, ag_s > ag_b + 0.05, "agreement %.3f vs base %.3f", ag_s, ag_b);
    }
    free(pt);
    free(ps);
    free(pb);
    nm_rows_deinit(&rows);
    nm_dataset_deinit(&d);
}

int main(void) {
    MODEL = nm_strdup(nm_test_shared("models/stories260K.gguf"));
    nm_test_run("smaller_student_beats_cross_entropy", test_smaller_student);
    nm_test_run("stack_into_one_adapter", test_stack_into_one);
    return nm_test_finish();
}
