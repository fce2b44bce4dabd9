/* test_adapter_train.c - training on a stack of frozen adapters.
 *
 *  - the truth: training adapter T on base + frozen F must be training T on
 *    the model where F is merged into the weights (W + s B A, in double).
 *    Both the loss and every gradient of T agree within float rounding
 *    (1e-4 relative), for F on every projection, down to the first layer,
 *    whose gradients see the frozen terms of the layers above only through
 *    the input gradient of the backward pass: a backward without them would
 *    not match the merged model (the base without F is shown far off);
 *  - the same bits on 1 and 3 threads;
 *  - the training model's logits with the frozen stack equal the inference
 *    engine's with the same stack attached;
 *  - nm_train_run on a stack: the adapter records the stack (fingerprints,
 *    scales), a run stopped and resumed gives the same adapter as an
 *    uninterrupted one, resuming with another adapter in the stack fails;
 *  - the CLI: nomoat train --lora, then adapter info shows the stack. */
#include "testlib.h"
#include "base/base.h"
#include "model/lora.h"
#include "train/adapter.h"

#include <math.h>
#include <string.h>

static const char *tmp(const char *name) {
    static char buf[16][512];
    static int k;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], "%s/%s", nm_test_tmpdir(), name);
    return buf[k];
}

static const char *MODEL(void) { return nm_test_shared("models/stories260K.gguf"); }

/* A random adapter bound to inference model m (all 7 projections). */
static nm_lora *frozen_adapter(nm_test *t, const nm_model *m, uint64_t seed, int64_t r, float alpha, float amp) {
    nm_lora_layout lay;
    nm_lora_layout_of_model(m, &lay);
    nm_lora *l = nm_lora_create(lay.n_layer);
    nm_err err = {0};
    l->alpha = alpha;
    for (int ly = 0; ly < lay.n_layer; ly++)
        for (int p = 0; p < 7; p++) CHECK_OK(t, nm_lora_shape(l, ly, (nm_proj)p, r, lay.in[p], lay.out[p], &err), err);
    if (!CHECK_OK(t, nm_lora_alloc(l, &err), err)) {
        nm_lora_free(l);
        return NULL;
    }
    nm_rng rng;
    nm_rng_seed(&rng, seed);
    for (int64_t i = 0; i < l->n_layer * 7; i++) {
        nm_lora_mod *md = &l->mods[i];
        for (int64_t k = 0; k < md->r * md->in; k++) md->A[k] = (float)(nm_rng_normal(&rng) / sqrt((double)md->in));
        for (int64_t k = 0; k < md->r * md->out; k++) md->Bt[k] = (float)(amp * nm_rng_normal(&rng));
    }
    nm_lora_finish(l);
    nm_base_fingerprint(nm_model_gguf(m), l->base_fp);
    l->has_base_fp = true;
    CHECK_OK(t, nm_lora_bind(l, m, &err), err);
    return l;
}

/* The trainable adapter, identical in every call: A and B random. */
static nm_tm_lora *trainable(nm_test *t, const nm_tmodel *m) {
    nm_err err = {0};
    nm_tm_lora *l = NULL;
    if (!CHECK_OK(t, nm_tm_lora_new(m, 4, 8.0f, false, 0.0f, NM_TM_ALL, &l, &err), err)) return NULL;
    nm_rng rng;
    nm_rng_seed(&rng, 99);
    for (int64_t i = 0; i < l->n_params; i++)
        for (int64_t j = 0; j < l->params[i].n; j++) l->params[i].data[j] = (float)(0.1 * nm_rng_normal(&rng));
    return l;
}

static const int32_t TOKS[33] = {1,   274, 287, 269, 317, 263, 377, 267, 265, 282, 295, 433, 426, 342, 394, 261, 329,
                                 429, 412, 425, 372, 403, 407, 261, 378, 385, 328, 432, 261, 370, 274, 287, 269};

/* Loss and gradients of the trainable adapter for TOKS (one sequence of 32). */
static bool grads(nm_test *t, const char *model, const nm_lora_entry *frozen, size_t n_frozen, int threads,
                  double *loss, float **g, int64_t *n_g) {
    nm_err err = {0};
    nm_pool *pool = NULL;
    nm_tmodel *m = NULL;
    nm_tm_lora *l = NULL;
    bool ok = false;
    if (threads > 1 && !CHECK_OK(t, nm_pool_new(threads, &pool, &err), err)) return false;
    if (!CHECK_OK(t, nm_tmodel_open(model, false, pool, &m, &err), err)) goto out;
    if (n_frozen && !CHECK_OK(t, nm_tmodel_set_frozen(m, frozen, n_frozen, &err), err)) goto out;
    if (!(l = trainable(t, m))) goto out;
    nm_tm_batch b = {1, 32, TOKS, TOKS + 1, NULL, NULL};
    int64_t ntok;
    if (!CHECK_OK(t, nm_tmodel_fwd_bwd(m, l, &b, 1.0f / 32, 0, loss, &ntok, &err), err)) goto out;
    *loss /= (double)ntok;
    *n_g = 0;
    for (int64_t i = 0; i < l->n_params; i++) *n_g += l->params[i].n;
    *g = malloc(sizeof(float) * (size_t)*n_g);
    int64_t o = 0;
    for (int64_t i = 0; i < l->n_params; i++) {
        memcpy(*g + o, l->params[i].grad, sizeof(float) * (size_t)l->params[i].n);
        o += l->params[i].n;
    }
    ok = true;
out:
    nm_tm_lora_free(l);
    nm_tmodel_free(m);
    nm_pool_free(pool);
    return ok;
}

static double rel_err(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / den);
}

static void test_grads_vs_merged(nm_test *t) {
    nm_err err = {0};
    nm_model *im = NULL;
    if (!CHECK_OK(t, nm_model_load(MODEL(), NULL, &im, &err), err)) return;
    nm_lora *f = frozen_adapter(t, im, 5, 4, 8.0f, 0.05f), *f2 = frozen_adapter(t, im, 6, 2, 2.0f, 0.05f);
    const char *merged = tmp("merged.gguf");
    nm_lora_entry st[2] = {{f, 1.0f}, {f2, -0.5f}};
    double l_stack = 0, l_merged = 0, l_base = 0, l_stack3 = 0;
    float *g_stack = NULL, *g_merged = NULL, *g_base = NULL, *g_stack3 = NULL;
    int64_t n = 0;
    if (!f || !f2 || !CHECK_OK(t, nm_model_merge_loras(im, st, 2, -1, merged, NULL, &err), err)) goto out;
    if (grads(t, MODEL(), st, 2, 1, &l_stack, &g_stack, &n) && grads(t, merged, NULL, 0, 1, &l_merged, &g_merged, &n) &&
        grads(t, MODEL(), NULL, 0, 1, &l_base, &g_base, &n) && grads(t, MODEL(), st, 2, 3, &l_stack3, &g_stack3, &n)) {
        double e = rel_err(g_stack, g_merged, n), eb = rel_err(g_base, g_merged, n);
        /* the first layer's gradients alone: they see the frozen terms of
         * every layer above only through the input gradient */
        double e0 = rel_err(g_stack, g_merged, 4 * 64 * 2), e0b = rel_err(g_base, g_merged, 4 * 64 * 2);
        printf("  loss: stack %.9f, merged %.9f, base alone %.9f\n", l_stack, l_merged, l_base);
        printf("  gradients vs merged: stack %.2e (layer 0 q: %.2e); base without the stack %.2e (layer 0 q: %.2e)\n", e,
               e0, eb, e0b);
        CHECK(t, fabs(l_stack - l_merged) <= 1e-5 * l_merged && fabs(l_base - l_merged) > 1e-2);
        CHECK(t, e < 1e-4 && e0 < 1e-4 && eb > 1e-2 && e0b > 1e-2);
        CHECK(t, l_stack3 == l_stack && memcmp(g_stack3, g_stack, sizeof(float) * (size_t)n) == 0);
    }
    /* the training model's logits with the stack = the inference engine's */
    nm_tmodel *tm = NULL;
    if (CHECK_OK(t, nm_tmodel_open(MODEL(), false, NULL, &tm, &err), err) &&
        CHECK_OK(t, nm_tmodel_set_frozen(tm, st, 2, &err), err)) {
        float got[512];
        nm_context_params cp = nm_context_default_params();
        cp.kv_type = NM_TYPE_F32;
        cp.n_threads = 1;
        nm_context *c = NULL;
        if (CHECK_OK(t, nm_tmodel_logits(tm, NULL, TOKS, 20, got, &err), err) &&
            CHECK_OK(t, nm_context_new(im, &cp, &c, &err), err) && CHECK_OK(t, nm_context_set_loras(c, st, 2, &err), err) &&
            CHECK_OK(t, nm_decode(c, TOKS, 20, &err), err)) {
            const float *want = nm_get_logits(c);
            double worst = 0, mx = 0;
            for (int i = 0; i < 512; i++) worst = fmax(worst, fabs(got[i] - want[i])), mx = fmax(mx, fabs(want[i]));
            printf("  training vs inference logits with the stack: max difference %.2e (max |logit| %.1f)\n", worst, mx);
            CHECK(t, worst <= 1e-4 * mx);
        }
        nm_context_free(c);
    }
    nm_tmodel_free(tm);
out:
    free(g_stack);
    free(g_merged);
    free(g_base);
    free(g_stack3);
    nm_lora_free(f);
    nm_lora_free(f2);
    nm_model_free(im);
}

/* ---- the trainer ---- */

static const char *STORY =
    "Once upon a time, there was a little girl named Lily. She loved to play in the garden with her red ball. One "
    "day, the ball rolled under a big tree. Lily looked and looked. Then her dog Max ran to the tree and found the "
    "ball. Lily was very happy and gave Max a big hug.\nTom was a small boy who liked to build with blocks. He made "
    "a tall tower in his room. His little sister Sue wanted to help. Tom was scared she would knock it down, but he "
    "said yes. Together they made the tallest tower ever. Mom took a picture and they all smiled.\n";

typedef struct stopper {
    int64_t stop_at;
} stopper;
static int on_step(void *user, const nm_train_stats *s) {
    const stopper *x = user;
    return x->stop_at > 0 && s->step == x->stop_at;
}

static nm_train_params params(const char *data, const char *out, const char *const *loras, const float *scales,
                              size_t n, stopper *sp) {
    nm_train_params p;
    nm_train_params_default(&p);
    p.model = MODEL();
    p.data = data;
    p.out_dir = out;
    p.format = "text";
    p.rank = 2;
    p.alpha = 4;
    p.lr = 5e-3;
    p.steps = 6;
    p.batch = 2;
    p.seq_len = 24;
    p.checkpoint_every = 0;
    p.threads = 1;
    p.loras = loras;
    p.lora_scales = scales;
    p.n_loras = n;
    p.on_step = on_step;
    p.user = sp;
    p.metrics = "";
    return p;
}

static bool same_file(const char *a, const char *b) {
    size_t la, lb;
    char *x = nm_test_read(a, &la), *y = nm_test_read(b, &lb);
    bool same = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

static void test_trainer(nm_test *t) {
    nm_err err = {0};
    nm_model *im = NULL;
    if (!CHECK_OK(t, nm_model_load(MODEL(), NULL, &im, &err), err)) return;
    const char *data = tmp("story.txt");
    FILE *fp = fopen(data, "w");
    fputs(STORY, fp);
    fclose(fp);
    nm_lora *f = frozen_adapter(t, im, 7, 4, 8.0f, 0.05f), *g = frozen_adapter(t, im, 8, 2, 4.0f, 0.05f);
    const char *pf = tmp("F"), *pg = tmp("G.gguf"), *pg2 = tmp("G2.gguf");
    if (!f || !g || !CHECK_OK(t, nm_lora_save(f, pf, NM_LORA_PEFT, NM_TYPE_F32, &err), err) ||
        !CHECK_OK(t, nm_lora_save(g, pg, NM_LORA_GGUF, NM_TYPE_F32, &err), err))
        goto out;
    const char *loras[2] = {pf, pg};
    const float scales[2] = {1.0f, 0.5f};
    stopper none = {0}, at3 = {3};
    const char *d1 = tmp("run-full"), *d2 = tmp("run-stopped");
    nm_train_params p = params(data, d1, loras, scales, 2, &none);
    if (!CHECK_OK(t, nm_train_run(&p, NULL, &err), err)) goto out;
    /* the adapter records the stack */
    nm_lora *x = NULL;
    if (CHECK_OK(t, nm_lora_open(d1, im, &x, &err), err)) {
        CHECK(t, x->n_under == 2 && !strcmp(x->under[0].fp, f->fp) && x->under[0].scale == 1.0f &&
                     !strcmp(x->under[1].fp, g->fp) && x->under[1].scale == 0.5f && !strcmp(x->under[0].name, "F") &&
                     !strcmp(x->under[1].name, "G.gguf"));
        char fpb[NM_FP_HEX];
        nm_base_fingerprint(nm_model_gguf(im), fpb);
        CHECK(t, x->has_base_fp && !strcmp(x->base_fp, fpb));
    }
    nm_lora_free(x);
    /* stopped after step 3, resumed: the same adapter */
    p = params(data, d2, loras, scales, 2, &at3);
    CHECK(t, nm_train_run(&p, NULL, &err) == NM_ERR_CANCELLED);
    nm_train_params r;
    nm_train_params_default(&r);
    r.resume_dir = d2;
    r.threads = 2;
    r.metrics = "";
    if (CHECK_OK(t, nm_train_run(&r, NULL, &err), err)) {
        char a[600], b[600];
        snprintf(a, sizeof a, "%s/adapter_model.safetensors", d1);
        snprintf(b, sizeof b, "%s/adapter_model.safetensors", d2);
        CHECKF(t, same_file(a, b), "resumed run on a stack differs from the uninterrupted one");
    }
    /* resuming with another adapter at the place of G fails */
    nm_lora *g2 = frozen_adapter(t, im, 9, 2, 4.0f, 0.05f);
    const char *d3 = tmp("run-stopped-2");
    p = params(data, d3, loras, scales, 2, &at3);
    CHECK(t, nm_train_run(&p, NULL, &err) == NM_ERR_CANCELLED);
    if (g2 && CHECK_OK(t, nm_lora_save(g2, pg2, NM_LORA_GGUF, NM_TYPE_F32, &err), err)) {
        const char *other[2] = {pf, pg2};
        nm_train_params_default(&r);
        r.resume_dir = d3;
        r.loras = other;
        r.n_loras = 2;
        r.metrics = "";
        CHECKF(t, nm_train_run(&r, NULL, &err) == NM_ERR_ARG && strstr(err.msg, "not the one this run was trained on"),
               "%s", err.msg);
    }
    nm_lora_free(g2);
    /* full fine-tuning on a stack is refused */
    p = params(data, tmp("run-full-ft"), loras, scales, 2, &none);
    p.full = true;
    CHECK(t, nm_train_run(&p, NULL, &err) == NM_ERR_UNSUPPORTED && strstr(err.msg, "merge"));
    /* CLI */
    char cmd[4096], *out = NULL;
    const char *d4 = tmp("cli-run");
    snprintf(cmd, sizeof cmd,
             "%s train -m %s --data %s --format text --out %s --steps 2 --seq 24 --batch 2 --rank 2 --lora %s "
             "--lora-scaled %s 0.5 --quiet 2>&1 && %s adapter info %s",
             nm_test_bin(), MODEL(), data, d4, pf, pg, nm_test_bin(), d4);
    CHECK(t, nm_test_sh(cmd, &out) == 0 && strstr(out, "trained on:   the base + F (fingerprint") &&
                 strstr(out, "G.gguf (fingerprint") && strstr(out, "at 0.5"));
    free(out);
out:
    nm_lora_free(f);
    nm_lora_free(g);
    nm_model_free(im);
}

int main(void) {
    nm_test_run("grads_vs_merged", test_grads_vs_merged);
    nm_test_run("trainer", test_trainer);
    return nm_test_finish();
}
