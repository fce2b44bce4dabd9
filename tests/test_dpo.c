/* test_dpo.c - DPO (issue 11): the pair loss against its closed form and
 * float64 finite differences (sigmoid, IPO, conservative DPO), the loss
 * hook's logits gradient against float64 finite differences of a float64
 * re-implementation, the gradient through stories260K against the chain
 * rule composed from the (torch-checked) cross-entropy path and against a
 * directional finite difference, and the reference being the model with
 * the adapter off. */
#include "testlib.h"
#include "train/dpo.h"
#include "train/model.h"
#include "train/optim.h"
#include "base/base.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const nm_dpo_cfg VARIANTS[] = {
    {NM_DPO_SIGMOID, 0.1, 0.0},
    {NM_DPO_SIGMOID, 0.5, 0.2}, /* conservative DPO */
    {NM_DPO_IPO, 0.1, 0.0},
    {NM_DPO_IPO, 2.0, 0.0},
};
#define N_VARIANTS 4

/* ---- the pair loss ---- */

static double sig(double x) { return 1.0 / (1.0 + exp(-x)); }

/* Closed forms derived by hand for h = (pc - rc) - (pr - rr):
 *   sigmoid: L = log(1 + exp(-beta h)),       dL/dh = -beta sigmoid(-beta h)
 *   cDPO:    L = -(1-e) log s(bh) - e log s(-bh), dL/dh = -beta (1-e) s(-bh) + beta e s(bh)
 *   IPO:     L = (h - 1/(2 beta))^2,          dL/dh = 2 h - 1/beta
 * and dL/dpc = dL/dh, dL/dpr = -dL/dh. */
static void test_pair_closed_form(nm_test *t) {
    const double hs[] = {-30, -3, -0.7, 0, 0.25, 2, 40};
    for (int v = 0; v < N_VARIANTS; v++) {
        const nm_dpo_cfg *c = &VARIANTS[v];
        double b = c->beta, e = c->label_smoothing;
        for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++) {
            double h = hs[i], pc = -10 + 0.5 * h, pr = -12 - 0.5 * h, rc = -11, rr = -13; /* h as given */
            double dc, dr, L = nm_dpo_pair(c, pc, pr, rc, rr, &dc, &dr), Le, de;
            if (c->loss == NM_DPO_IPO) {
                Le = (h - 1 / (2 * b)) * (h - 1 / (2 * b));
                de = 2 * h - 1 / b;
            } else {
                Le = -(1 - e) * log(sig(b * h)) - e * log(sig(-b * h));
                de = -b * (1 - e) * sig(-b * h) + b * e * sig(b * h);
            }
            /* log(sig) underflows in the naive form for large |bh|: compare where it is finite */
            if (isfinite(Le)) CHECKF(t, fabs(L - Le) <= 1e-12 * (1 + fabs(Le)), "variant %d h %g: L %.17g vs %.17g", v, h, L, Le);
            CHECKF(t, fabs(dc - de) <= 1e-12 * (1 + fabs(de)) && dr == -dc, "variant %d h %g: dL/dpc %.17g vs %.17g", v,
                   h, dc, de);
        }
    }
    /* at h = 0 exactly: L = log 2, dL/dh = -beta/2 (sigmoid), -beta(1-2e)/2 (cDPO) */
    double dc;
    CHECK(t, nm_dpo_pair(&VARIANTS[0], -5, -7, -5, -7, &dc, NULL) == log(2.0) && dc == -0.05);
    CHECK(t, fabs(nm_dpo_pair(&VARIANTS[1], -5, -7, -5, -7, &dc, NULL) - log(2.0)) < 1e-15 &&
                 fabs(dc - (-0.5 * 0.6 / 2)) < 1e-15);
    /* far in the tails the stable form neither overflows nor loses the slope */
    CHECK(t, isfinite(nm_dpo_pair(&VARIANTS[0], 0, 1e5, 0, 0, &dc, NULL)) && fabs(dc + 0.1) < 1e-12);
}

static void test_pair_fd(nm_test *t) {
    for (int v = 0; v < N_VARIANTS; v++) {
        const nm_dpo_cfg *c = &VARIANTS[v];
        const double pts[][4] = {{-20.5, -22.25, -21, -20}, {-3, -9, -4, -4.5}, {-40, -31, -35, -33}};
        for (int i = 0; i < 3; i++) {
            const double *x = pts[i];
            double dc, dr, eps = 1e-5;
            nm_dpo_pair(c, x[0], x[1], x[2], x[3], &dc, &dr);
            double fc = (nm_dpo_pair(c, x[0] + eps, x[1], x[2], x[3], NULL, NULL) -
                         nm_dpo_pair(c, x[0] - eps, x[1], x[2], x[3], NULL, NULL)) / (2 * eps);
            double fr = (nm_dpo_pair(c, x[0], x[1] + eps, x[2], x[3], NULL, NULL) -
                         nm_dpo_pair(c, x[0], x[1] - eps, x[2], x[3], NULL, NULL)) / (2 * eps);
            CHECKF(t, fabs(dc - fc) < 1e-7 * (1 + fabs(fc)) && fabs(dr - fr) < 1e-7 * (1 + fabs(fr)),
                   "variant %d point %d: analytic (%.10g, %.10g) vs finite differences (%.10g, %.10g)", v, i, dc, dr,
                   fc, fr);
        }
    }
    nm_err err = {0};
    nm_dpo_cfg bad = {NM_DPO_SIGMOID, 0, 0};
    CHECK(t, nm_dpo_cfg_check(&bad, &err) == NM_ERR_ARG);
    bad = (nm_dpo_cfg){NM_DPO_SIGMOID, 0.1, 0.5};
    CHECK(t, nm_dpo_cfg_check(&bad, &err) == NM_ERR_ARG);
    bad = (nm_dpo_cfg){NM_DPO_IPO, 0.1, 0.1};
    CHECK(t, nm_dpo_cfg_check(&bad, &err) == NM_ERR_ARG);
    CHECK(t, nm_dpo_loss_parse("ipo") == NM_DPO_IPO && nm_dpo_loss_parse("sigmoid") == NM_DPO_SIGMOID &&
                 nm_dpo_loss_parse("hinge") < 0);
}

/* ---- the hook on logits given directly ---- */

#define HV 7
#define HS 4 /* sequences: 2 pairs */
#define HL 5
#define HT (HS * HL)

/* The objective in float64 straight from the definition. */
static double objective64(const nm_dpo_cfg *c, const double *logits, const int32_t *tgt, const double *ref,
                          double weight) {
    double lp[HS];
    for (int s = 0; s < HS; s++) {
        double sum = 0;
        int n = 0;
        for (int p = 0; p < HL; p++) {
            int t = s * HL + p;
            if (tgt[t] < 0) continue;
            double m = -INFINITY, z = 0;
            for (int v = 0; v < HV; v++) m = fmax(m, logits[t * HV + v]);
            for (int v = 0; v < HV; v++) z += exp(logits[t * HV + v] - m);
            sum += logits[t * HV + tgt[t]] - m - log(z);
            n++;
        }
        lp[s] = c->loss == NM_DPO_IPO ? sum / n : sum;
    }
    double L = 0;
    for (int k = 0; k < HS / 2; k++) {
        double h = (lp[2 * k] - ref[2 * k]) - (lp[2 * k + 1] - ref[2 * k + 1]);
        if (c->loss == NM_DPO_IPO)
            L += (h - 1 / (2 * c->beta)) * (h - 1 / (2 * c->beta));
        else
            L += -(1 - c->label_smoothing) * log(sig(c->beta * h)) - c->label_smoothing * log(sig(-c->beta * h));
    }
    return weight * L;
}

static void test_hook_vs_fd(nm_test *t) {
    nm_rng rng;
    nm_rng_seed(&rng, 11);
    int32_t tgt[HT];
    float lf[HT * HV], g[HT * HV], lossv[HT];
    double ld[HT * HV];
    for (int i = 0; i < HT * HV; i++) {
        lf[i] = (float)(3.0 * nm_rng_normal(&rng));
        ld[i] = lf[i]; /* the float64 reference starts from the same values */
    }
    for (int i = 0; i < HT; i++) tgt[i] = i % HL < 2 ? -1 : (int32_t)(nm_rng_u64(&rng) % HV); /* prompt: 2 */
    const double ref[HS] = {-7.5, -8.25, -9.0, -6.5};
    const double weight = 0.5;
    for (int v = 0; v < N_VARIANTS; v++) {
        const nm_dpo_cfg *c = &VARIANTS[v];
        /* several reference offsets: a margin near 0 and far from it */
        for (int shift = 0; shift < 2; shift++) {
            double r[HS];
            for (int s = 0; s < HS; s++) r[s] = ref[s] + (shift ? 4.0 * (s % 2 ? 1 : -1) : 0);
            nm_dpo_hook h;
            nm_err err = {0};
            if (!CHECK_OK(t, nm_dpo_hook_init(&h, c, tgt, HS, HL, r, weight, HV, 1, &err), err)) return;
            nm_tm_head hk = nm_dpo_head(&h);
            memcpy(g, lf, sizeof g);
            const int64_t chunk = 6; /* chunks that cut sequences */
            for (int64_t t0 = 0; t0 < HT; t0 += chunk)
                hk.scan(hk.user, NULL, t0, HT - t0 < chunk ? HT - t0 : chunk, HV, g + t0 * HV);
            int64_t n = 0;
            for (int64_t t0 = 0; t0 < HT; t0 += chunk)
                n += hk.loss(hk.user, NULL, t0, HT - t0 < chunk ? HT - t0 : chunk, HV, g + t0 * HV, lossv + t0, true);
            double lsum = 0;
            for (int i = 0; i < HT; i++) lsum += lossv[i];
            double L64 = objective64(c, ld, tgt, r, 1.0);
            CHECKF(t, n == HS / 2 && fabs(lsum - L64) < 1e-5 * (1 + fabs(L64)), "variant %d: hook loss %.9g vs %.9g",
                   v, lsum, L64);
            double worst = 0;
            for (int i = 0; i < HT * HV; i++) {
                double e = 1e-6, x = ld[i];
                ld[i] = x + e;
                double up = objective64(c, ld, tgt, r, weight);
                ld[i] = x - e;
                double dn = objective64(c, ld, tgt, r, weight);
                ld[i] = x;
                double fd = (up - dn) / (2 * e), d = fabs(fd - (double)g[i]);
                worst = d > worst ? d : worst;
            }
            /* float32 gradient of float64-exact inputs: ~1e-7 relative; FD error ~1e-9 */
            CHECKF(t, worst < 2e-6, "variant %d shift %d: worst |hook - finite difference| %.3g", v, shift, worst);
            /* rows without a target get a zero gradient */
            bool zero = true;
            for (int i = 0; i < HT; i++)
                if (tgt[i] < 0)
                    for (int k = 0; k < HV; k++) zero &= g[i * HV + k] == 0.0f;
            CHECK(t, zero);
            nm_dpo_hook_deinit(&h);
        }
    }
    /* a micro-batch that splits a pair is refused */
    nm_dpo_hook h;
    nm_err err = {0};
    CHECK(t, nm_dpo_hook_init(&h, &VARIANTS[0], tgt, 3, HL, ref, 1, HV, 1, &err) == NM_ERR_ARG);
}

/* ---- through the model ---- */

typedef struct mb {
    int32_t tok[4 * 24], tgt[4 * 24];
} mb;

#define ML 24
/* 2 pairs of real story text: each row a story window, answer tokens from
 * position 8 on (the prompt before). */
static bool make_mb(nm_test *t, nm_tmodel *m, mb *b) {
    static const char *text[4] = {
        "Once upon a time, there was a little girl named Lily. She loved to play in the garden with her red ball.",
        "Once upon a time, there was a little girl named Lily. She was sad because her ball was lost in the woods.",
        "Tom was a small boy who liked to build with blocks. He made a tall tower in his room and his sister smiled.",
        "Tom was a small boy who liked to build with blocks. One day the dog ran in and knocked the tower down.",
    };
    nm_vocab *v;
    nm_err err = {0};
    if (!CHECK_OK(t, nm_vocab_from_gguf(m->gguf, &v, NULL, &err), err)) return false;
    bool ok = true;
    for (int s = 0; s < 4 && ok; s++) {
        int32_t *ids;
        size_t n;
        ok = CHECK_OK(t, nm_tokenize(v, text[s], strlen(text[s]), true, false, &ids, &n, &err), err) &&
             CHECK(t, n > ML);
        for (int p = 0; ok && p < ML; p++) {
            b->tok[s * ML + p] = ids[p];
            b->tgt[s * ML + p] = p >= 8 ? ids[p + 1] : -1;
        }
        if (ok) free(ids);
    }
    nm_vocab_free(v);
    return ok;
}

static void grads_of(const nm_tm_lora *l, double *out) {
    int64_t k = 0;
    for (int64_t i = 0; i < l->n_params; i++)
        for (int64_t j = 0; j < l->params[i].n; j++) out[k++] = l->params[i].grad[j];
}

static void test_model_gradient(nm_test *t) {
    nm_err err = {0};
    nm_tmodel *m = NULL;
    nm_tm_lora *l = NULL;
    double *g1 = NULL, *g2 = NULL;
    mb b;
    if (!CHECK_OK(t, nm_tmodel_open(nm_test_shared("models/stories260K.gguf"), false, NULL, &m, &err), err)) return;
    if (!make_mb(t, m, &b)) goto out;
    if (!CHECK_OK(t, nm_tm_lora_new(m, 4, 8, false, 0, NM_TM_ALL, &l, &err), err)) goto out;
    nm_tm_lora_init_peft(l, 7);
    int64_t N = 0;
    for (int64_t i = 0; i < l->n_params; i++) N += l->params[i].n;
    g1 = malloc((size_t)N * sizeof *g1);
    g2 = malloc((size_t)N * sizeof *g2);
    nm_tm_batch bt = {4, ML, b.tok, b.tgt, NULL, NULL};
    /* with B = 0 the policy is the reference bit for bit: every pair's loss
     * is exactly log 2 and every reward 0 */
    double ref[4], lp[4];
    CHECK_OK(t, nm_dpo_logps(m, NULL, &VARIANTS[0], &bt, ref, &err), err);
    nm_dpo_sums s0 = {0};
    CHECK_OK(t, nm_dpo_step(m, l, &VARIANTS[0], &bt, ref, true, 0.5, 1, &s0, &err), err);
    CHECKF(t, s0.n_pairs == 2 && s0.loss == 2 * log(2.0) && s0.margin == 0 && s0.chosen == 0,
           "B = 0: loss %.17g (2 log 2 = %.17g), margin %g", s0.loss, 2 * log(2.0), s0.margin);
    /* a pair's value does not depend on the other rows of its micro-batch
     * (the reference computed in one batch serves any other batching) */
    double alone[2];
    nm_tm_batch b2 = {2, ML, b.tok + 2 * ML, b.tgt + 2 * ML, NULL, NULL};
    CHECK_OK(t, nm_dpo_logps(m, NULL, &VARIANTS[0], &b2, alone, &err), err);
    CHECK(t, alone[0] == ref[2] && alone[1] == ref[3]);
    /* a trained-looking adapter: B random */
    nm_rng rng;
    nm_rng_seed(&rng, 5);
    for (int64_t i = 0; i < l->n_params; i++)
        if (strstr(l->params[i].name, "lora_b") || strstr(l->params[i].name, "lora_B"))
            for (int64_t j = 0; j < l->params[i].n; j++) l->params[i].data[j] = (float)(0.05 * nm_rng_normal(&rng));
    bool moved = false;
    CHECK_OK(t, nm_dpo_logps(m, l, &VARIANTS[0], &bt, lp, &err), err);
    for (int s = 0; s < 4; s++) moved |= lp[s] != ref[s];
    CHECKF(t, moved, "the adapter's B matrices were not found by name (%s)", l->params[1].name);
    for (int v = 0; v < N_VARIANTS; v++) {
        const nm_dpo_cfg *c = &VARIANTS[v];
        const double w = 0.5;
        CHECK_OK(t, nm_dpo_logps(m, NULL, c, &bt, ref, &err), err);
        CHECK_OK(t, nm_dpo_logps(m, l, c, &bt, lp, &err), err);
        nm_grad_zero(l->params, l->n_params);
        nm_dpo_sums s = {0};
        CHECK_OK(t, nm_dpo_step(m, l, c, &bt, ref, true, w, 1, &s, &err), err);
        grads_of(l, g1);
        /* chain rule: sum over sequences of dObj/dlogp_s * grad logp_s, each
         * grad logp_s from the cross-entropy path on that row alone
         * (cross-entropy = -log p, so dloss = -dObj/dlogp_s) */
        nm_grad_zero(l->params, l->n_params);
        double L = 0;
        for (int k = 0; k < 2; k++) {
            double dc, dr;
            L += w * nm_dpo_pair(c, lp[2 * k], lp[2 * k + 1], ref[2 * k], ref[2 * k + 1], &dc, &dr);
            for (int side = 0; side < 2; side++) {
                int r = 2 * k + side;
                double coef = w * (side ? dr : dc) / (c->loss == NM_DPO_IPO ? ML - 8 : 1);
                nm_tm_batch one = {1, ML, b.tok + r * ML, b.tgt + r * ML, NULL, NULL};
                double ls;
                int64_t nt;
                CHECK_OK(t, nm_tmodel_fwd_bwd(m, l, &one, (float)-coef, 0, &ls, &nt, &err), err);
            }
        }
        grads_of(l, g2);
        double gmax = 0, dmax = 0, norm = 0;
        for (int64_t i = 0; i < N; i++) {
            gmax = fmax(gmax, fabs(g2[i]));
            dmax = fmax(dmax, fabs(g1[i] - g2[i]));
            norm += g1[i] * g1[i];
        }
        norm = sqrt(norm);
        CHECKF(t, gmax > 0 && dmax <= 1e-4 * gmax, "variant %d: hook gradient vs chain rule: %.3g of %.3g", v, dmax,
               gmax);
        CHECKF(t, fabs(w * s.loss - L) < 1e-6 * (1 + L), "variant %d: loss %.9g vs %.9g", v, w * s.loss, L);
        /* directional finite difference along the gradient: slope = |g| */
        const double eps = 1e-2;
        double f[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            int64_t k = 0;
            for (int64_t i = 0; i < l->n_params; i++)
                for (int64_t j = 0; j < l->params[i].n; j++)
                    l->params[i].data[j] += (float)((sgn ? -2 : 1) * eps * g1[k++] / norm);
            nm_dpo_sums se = {0};
            CHECK_OK(t, nm_dpo_step(m, l, c, &bt, ref, false, 0, 0, &se, &err), err);
            f[sgn] = w * se.loss;
        }
        {
            int64_t k = 0;
            for (int64_t i = 0; i < l->n_params; i++)
                for (int64_t j = 0; j < l->params[i].n; j++) l->params[i].data[j] += (float)(eps * g1[k++] / norm);
        }
        double slope = (f[0] - f[1]) / (2 * eps);
        CHECKF(t, fabs(slope - norm) < 0.02 * norm, "variant %d: finite-difference slope %.6g vs |grad| %.6g", v,
               slope, norm);
    }
out:
    free(g1);
    free(g2);
    nm_tm_lora_free(l);
    nm_tmodel_free(m);
}

int main(void) {
    nm_test_run("pair_closed_form", test_pair_closed_form);
    nm_test_run("pair_vs_finite_differences", test_pair_fd);
    nm_test_run("hook_vs_float64_finite_differences", test_hook_vs_fd);
    nm_test_run("model_gradient_chain_rule_and_fd", test_model_gradient);
    return nm_test_finish();
}
