/* test_train_optim.c - AdamW, gradient clipping and the learning-rate
 * schedule against float64 re-implementations of PyTorch's formulas
 * (torch.optim.AdamW, torch.nn.utils.clip_grad_norm_, and the cosine/linear
 * schedules of transformers.get_*_schedule_with_warmup, with our warm-up
 * counting the first step as 1/warmup instead of 0). */
#include "testlib.h"
#include "train/optim.h"
#include "base/base.h"

#include <math.h>
#include <string.h>

/* torch.optim.AdamW, one tensor, float64. */
static void ref_adamw(double *p, double *m, double *v, const double *g, int n, int t, double lr, double b1, double b2,
                      double eps, double wd, bool decay) {
    for (int i = 0; i < n; i++) {
        if (decay) p[i] *= 1 - lr * wd;
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        double mh = m[i] / (1 - pow(b1, t)), vh = v[i] / (1 - pow(b2, t));
        p[i] -= lr * mh / (sqrt(vh) + eps);
    }
}

static void test_adamw_matches_reference(nm_test *t) {
    enum { NA = 12, NB = 5 };
    float a[NA], b[NB], ga[NA], gb[NB];
    double pa[NA], pb[NB], ma[NA] = {0}, va[NA] = {0}, mb[NB] = {0}, vb[NB] = {0};
    nm_rng rng;
    nm_rng_seed(&rng, 3);
    for (int i = 0; i < NA; i++) pa[i] = a[i] = (float)(nm_rng_uniform(&rng) - 0.5);
    for (int i = 0; i < NB; i++) pb[i] = b[i] = (float)(nm_rng_uniform(&rng) + 0.5);
    nm_tparam params[2] = {{.name = "A", .data = a, .grad = ga, .n = NA, .shape = {3, 4}, .ndim = 2},
                           {.name = "norm", .data = b, .grad = gb, .n = NB, .shape = {NB, 1}, .ndim = 1}};
    nm_adamw o;
    nm_err err = {0};
    CHECK_OK(t, nm_adamw_init(&o, params, 2, &err), err);
    nm_adamw_cfg c = {0.9, 0.999, 1e-8, 0.1};
    for (int step = 1; step <= 5; step++) {
        double dga[NA], dgb[NB];
        for (int i = 0; i < NA; i++) dga[i] = ga[i] = (float)(nm_rng_normal(&rng) * 0.1);
        for (int i = 0; i < NB; i++) dgb[i] = gb[i] = (float)(nm_rng_normal(&rng) * 0.01);
        double lr = 1e-2 / step;
        nm_adamw_step(&o, &c, lr);
        ref_adamw(pa, ma, va, dga, NA, step, lr, 0.9, 0.999, 1e-8, 0.1, true);
        ref_adamw(pb, mb, vb, dgb, NB, step, lr, 0.9, 0.999, 1e-8, 0.1, false); /* 1-D: no decay */
    }
    double worst = 0;
    for (int i = 0; i < NA; i++) worst = fmax(worst, fabs(a[i] - pa[i]) / fabs(pa[i]));
    for (int i = 0; i < NB; i++) worst = fmax(worst, fabs(b[i] - pb[i]) / fabs(pb[i]));
    /* float32 state vs float64: a few ulps per step */
    CHECKF(t, worst < 1e-5, "AdamW differs from the float64 reference by %.3g relative", worst);
    CHECK(t, o.t == 5);
    nm_adamw_deinit(&o);
}

static void test_clip(nm_test *t) {
    float g1[2] = {3, 0}, g2[1] = {4}, d[3] = {0};
    nm_tparam p[2] = {{.data = d, .grad = g1, .n = 2}, {.data = d, .grad = g2, .n = 1}};
    double n = nm_grad_clip(p, 2, 1.0);
    CHECK(t, fabs(n - 5.0) < 1e-12);
    double after = nm_grad_norm(p, 2);
    CHECKF(t, fabs(after - 5.0 / (5.0 + 1e-6)) < 1e-6, "norm after clipping %.9f", after);
    CHECK(t, fabsf(g1[0] / g2[0] - 0.75f) < 1e-6f); /* direction kept */
    float g3[1] = {0.5f};
    nm_tparam q = {.data = d, .grad = g3, .n = 1};
    nm_grad_clip(&q, 1, 1.0);
    CHECK(t, g3[0] == 0.5f); /* below the limit: untouched */
    nm_grad_clip(&q, 1, 0.0);
    CHECK(t, g3[0] == 0.5f); /* 0: no clipping */
}

static void test_schedule(nm_test *t) {
    nm_sched s = {NM_SCHED_COSINE, 1e-3, 1e-4, 10, 110};
    CHECK(t, fabs(nm_sched_lr(&s, 0) - 1e-4) < 1e-15);   /* 1/10 of lr */
    CHECK(t, fabs(nm_sched_lr(&s, 9) - 1e-3) < 1e-15);   /* end of warm-up */
    CHECK(t, fabs(nm_sched_lr(&s, 10) - 1e-3) < 1e-15);  /* cosine starts at lr */
    CHECK(t, fabs(nm_sched_lr(&s, 60) - 5.5e-4) < 1e-12); /* half way: (lr + min) / 2 */
    CHECK(t, fabs(nm_sched_lr(&s, 110) - 1e-4) < 1e-15);
    CHECK(t, fabs(nm_sched_lr(&s, 500) - 1e-4) < 1e-15); /* past the end: stays at min */
    s.kind = NM_SCHED_LINEAR;
    CHECK(t, fabs(nm_sched_lr(&s, 35) - (1e-4 + 9e-4 * 0.75)) < 1e-12);
    s.kind = NM_SCHED_CONSTANT;
    CHECK(t, nm_sched_lr(&s, 100) == 1e-3);
    s.warmup = 0;
    s.kind = NM_SCHED_COSINE;
    CHECK(t, nm_sched_lr(&s, 0) == 1e-3);
    CHECK(t, nm_sched_parse("cosine") == NM_SCHED_COSINE && nm_sched_parse("linear") == NM_SCHED_LINEAR &&
             nm_sched_parse("constant") == NM_SCHED_CONSTANT && nm_sched_parse("step") == -1);
}

int main(void) {
    nm_test_run("adamw_matches_reference", test_adamw_matches_reference);
    nm_test_run("clip_global_norm", test_clip);
    nm_test_run("lr_schedule", test_schedule);
    return nm_test_finish();
}
