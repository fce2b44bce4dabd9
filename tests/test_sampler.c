/*
 * test_sampler.c - the sampler against the semantics it claims (llama.cpp's
 * chain): each expectation is computed here from the definition (softmax of
 * logits / T, the smallest top-p set, the min-p threshold, the penalty
 * formula), never read back from the sampler.
 */
#include "testlib.h"
#include "base/base.h" /* nm_rng for test data */

#include <math.h>
#include <string.h>

static nm_sampler_params plain(float temp) {
    nm_sampler_params p = nm_sampler_params_default();
    p.temperature = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 1234;
    return p;
}

static nm_sampler *mk(nm_test *t, const nm_sampler_params *p, int32_t n_vocab) {
    nm_err err = {0};
    nm_sampler *s = NULL;
    nm_status st = nm_sampler_new(p, n_vocab, &s, &err);
    CHECK_OK(t, st, err);
    return s;
}

static int32_t ref_argmax(const float *l, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[b]) b = i;
    return b;
}

/* Wilson-Hilferty: the chi-square quantile with df degrees of freedom that
 * a correct sampler exceeds with probability about Phi(-z) (z = 5: 3e-7). */
static double chi2_bound(int df, double z) {
    double a = 2.0 / (9.0 * df);
    double c = 1.0 - a + z * sqrt(a);
    return df * c * c * c;
}

/* Draws n times and checks the frequencies against want[] (a distribution
 * over n_vocab tokens; zero entries must never appear). */
static void check_distribution(nm_test *t, nm_sampler *s, const float *logits, const double *want, int32_t nv,
                               int n, const char *what) {
    int counts[64] = {0};
    for (int i = 0; i < n; i++) {
        int32_t id = nm_sampler_sample(s, logits);
        if (!CHECKF(t, id >= 0 && id < nv, "%s: sampled id %d", what, (int)id)) return;
        counts[id]++;
    }
    double chi2 = 0;
    int df = -1;
    for (int32_t k = 0; k < nv; k++) {
        if (want[k] == 0) {
            CHECKF(t, counts[k] == 0, "%s: token %d has probability 0 but appeared %d times", what, (int)k, counts[k]);
            continue;
        }
        double e = want[k] * n, d = counts[k] - e;
        chi2 += d * d / e;
        df++;
        /* Each frequency within 5 standard deviations of its binomial. */
        double f = (double)counts[k] / n, sd = sqrt(want[k] * (1 - want[k]) / n);
        CHECKF(t, fabs(f - want[k]) <= 5 * sd, "%s: token %d frequency %.5f, expected %.5f (sd %.5f)", what, (int)k, f,
               want[k], sd);
    }
    if (df > 0) CHECKF(t, chi2 < chi2_bound(df, 5.0), "%s: chi-square %.2f over bound %.2f (df %d)", what, chi2,
                       chi2_bound(df, 5.0), df);
}

static void softmax_t(const float *l, int32_t n, double temp, double *out) {
    double m = -INFINITY, s = 0;
    for (int32_t i = 0; i < n; i++)
        if (l[i] > m) m = l[i];
    for (int32_t i = 0; i < n; i++) s += out[i] = exp((l[i] - m) / temp);
    for (int32_t i = 0; i < n; i++) out[i] /= s;
}

static void test_greedy_is_argmax(nm_test *t) {
    nm_rng r;
    nm_rng_seed(&r, 7);
    enum { NV = 300 };
    float l[NV];
    float temps[] = {0.0f, -1.0f};
    for (int ti = 0; ti < 2; ti++) {
        nm_sampler_params p = nm_sampler_params_default(); /* top-k/p/min-p on: greedy ignores them */
        p.temperature = temps[ti];
        nm_sampler *s = mk(t, &p, NV);
        if (!s) return;
        for (int trial = 0; trial < 50; trial++) {
            for (int i = 0; i < NV; i++) l[i] = (float)(nm_rng_normal(&r) * 3.0);
            int32_t id = nm_sampler_sample(s, l);
            CHECKF(t, id == ref_argmax(l, NV), "T=%g: got %d, argmax %d", (double)temps[ti], (int)id,
                   (int)ref_argmax(l, NV));
        }
        nm_sampler_free(s);
    }
}

static void test_top_k_1_is_argmax(nm_test *t) {
    float l[] = {0.3f, 1.2f, 1.19f, -2.0f, 0.0f, 1.0f};
    float temps[] = {0.1f, 1.0f, 5.0f, 1000.0f};
    for (int ti = 0; ti < 4; ti++) {
        nm_sampler_params p = plain(temps[ti]);
        p.top_k = 1;
        nm_sampler *s = mk(t, &p, 6);
        if (!s) return;
        for (int i = 0; i < 500; i++) {
            int32_t id = nm_sampler_sample(s, l);
            if (!CHECKF(t, id == 1, "T=%g top-k 1: drew %d", (double)temps[ti], (int)id)) break;
        }
        nm_sampler_free(s);
    }
}

static void test_distribution_matches_softmax(nm_test *t) {
    float l[] = {1.0f, 0.5f, 0.0f, -0.5f, 2.0f, -1.0f, 0.25f, 1.5f};
    double temps[] = {1.0, 0.7, 2.0};
    for (int ti = 0; ti < 3; ti++) {
        nm_sampler_params p = plain((float)temps[ti]);
        p.seed = 99 + (uint64_t)ti;
        nm_sampler *s = mk(t, &p, 8);
        if (!s) return;
        double want[8];
        softmax_t(l, 8, temps[ti], want);
        char what[64];
        snprintf(what, sizeof what, "softmax T=%g", temps[ti]);
        check_distribution(t, s, l, want, 8, 60000, what);
        nm_sampler_free(s);
    }
}

/* Probabilities 0.5, 0.3, 0.15, 0.05 placed at ids 3, 0, 2, 1 so that no
 * step can pass by relying on the ids being in order. */
static void probs_logits(float *l) {
    l[3] = logf(0.5f);
    l[0] = logf(0.3f);
    l[2] = logf(0.15f);
    l[1] = logf(0.05f);
}

static void test_top_p(nm_test *t) {
    float l[4];
    probs_logits(l);
    {
        /* p = 0.75: 0.5 < 0.75 <= 0.8, so the set is {0.5, 0.3} */
        nm_sampler_params p = plain(1.0f);
        p.top_p = 0.75f;
        nm_sampler *s = mk(t, &p, 4);
        if (!s) return;
        double want[4] = {0.3 / 0.8, 0, 0, 0.5 / 0.8};
        check_distribution(t, s, l, want, 4, 40000, "top-p 0.75");
        nm_sampler_free(s);
    }
    {
        /* p = 0.85: {0.5, 0.3, 0.15} */
        nm_sampler_params p = plain(1.0f);
        p.top_p = 0.85f;
        nm_sampler *s = mk(t, &p, 4);
        if (!s) return;
        double want[4] = {0.3 / 0.95, 0, 0.15 / 0.95, 0.5 / 0.95};
        check_distribution(t, s, l, want, 4, 40000, "top-p 0.85");
        nm_sampler_free(s);
    }
    {
        /* The set is chosen on the untempered probabilities (llama.cpp's
         * order): at T = 3 the tempered top two hold only 0.67, yet still
         * only they may appear; among them the draw follows T = 3. */
        nm_sampler_params p = plain(3.0f);
        p.top_p = 0.75f;
        nm_sampler *s = mk(t, &p, 4);
        if (!s) return;
        double a = pow(0.3, 1 / 3.0), b = pow(0.5, 1 / 3.0);
        double want[4] = {a / (a + b), 0, 0, b / (a + b)};
        check_distribution(t, s, l, want, 4, 40000, "top-p 0.75 at T=3");
        nm_sampler_free(s);
    }
    {
        /* top-p 0 keeps the single most likely token */
        nm_sampler_params p = plain(1.0f);
        p.top_p = 0.0f;
        nm_sampler *s = mk(t, &p, 4);
        if (!s) return;
        double want[4] = {0, 0, 0, 1};
        check_distribution(t, s, l, want, 4, 2000, "top-p 0");
        nm_sampler_free(s);
    }
}

static void test_min_p(nm_test *t) {
    float l[4];
    probs_logits(l);
    {
        /* threshold 0.2 * 0.5 = 0.1: 0.05 goes */
        nm_sampler_params p = plain(1.0f);
        p.min_p = 0.2f;
        nm_sampler *s = mk(t, &p, 4);
        if (!s) return;
        double want[4] = {0.3 / 0.95, 0, 0.15 / 0.95, 0.5 / 0.95};
        check_distribution(t, s, l, want, 4, 40000, "min-p 0.2");
        nm_sampler_free(s);
    }
    {
        /* threshold 0.35 * 0.5 = 0.175: 0.15 goes too */
        nm_sampler_params p = plain(1.0f);
        p.min_p = 0.35f;
        nm_sampler *s = mk(t, &p, 4);
        if (!s) return;
        double want[4] = {0.3 / 0.8, 0, 0, 0.5 / 0.8};
        check_distribution(t, s, l, want, 4, 40000, "min-p 0.35");
        nm_sampler_free(s);
    }
    {
        /* top-k 3 then min-p 0.35 then top-p: the chain composes */
        nm_sampler_params p = plain(1.0f);
        p.top_k = 3;
        p.top_p = 0.99f;
        p.min_p = 0.35f;
        nm_sampler *s = mk(t, &p, 4);
        if (!s) return;
        double want[4] = {0.3 / 0.8, 0, 0, 0.5 / 0.8};
        check_distribution(t, s, l, want, 4, 50000, "top-k 3 + top-p + min-p");
        nm_sampler_free(s);
    }
}

static void test_top_k(nm_test *t) {
    /* top-k 2 of six: only the two largest appear, in softmax proportion */
    float l[6] = {0.1f, 2.0f, -1.0f, 1.4f, 1.3f, 0.0f};
    nm_sampler_params p = plain(1.0f);
    p.top_k = 2;
    nm_sampler *s = mk(t, &p, 6);
    if (!s) return;
    double a = exp(2.0), b = exp(1.4);
    double want[6] = {0, a / (a + b), 0, b / (a + b), 0, 0};
    check_distribution(t, s, l, want, 6, 40000, "top-k 2");
    nm_sampler_free(s);

    /* ties at the cut are broken by id, so results never depend on sort order */
    float tie[5] = {1.0f, 3.0f, 1.0f, 1.0f, 0.5f};
    p = plain(1.0f);
    p.top_k = 2;
    s = mk(t, &p, 5);
    if (!s) return;
    double e1 = exp(1.0), e3 = exp(3.0);
    double want2[5] = {e1 / (e1 + e3), e3 / (e1 + e3), 0, 0, 0};
    check_distribution(t, s, tie, want2, 5, 50000, "top-k 2 with ties");
    nm_sampler_free(s);
}

static void test_penalties(nm_test *t) {
    nm_sampler_params p = plain(0.0f);
    p.penalty_last_n = 8;
    {
        /* positive logit divided: 2.0 / 1.1 = 1.818 < 1.9 */
        float l[3] = {2.0f, 1.9f, 0.0f};
        p.repeat_penalty = 1.1f;
        nm_sampler *s = mk(t, &p, 3);
        if (!s) return;
        CHECK(t, nm_sampler_sample(s, l) == 0);
        nm_sampler_accept(s, 0);
        CHECK(t, nm_sampler_sample(s, l) == 1);
        /* repeat penalty does not grow with the count */
        nm_sampler_accept(s, 0);
        nm_sampler_accept(s, 0);
        float l2[3] = {2.0f, 1.8f, 0.0f}; /* 1.818 > 1.8 */
        CHECK(t, nm_sampler_sample(s, l2) == 0);
        nm_sampler_free(s);
    }
    {
        /* negative logit multiplied: -1.0 * 1.1 = -1.1 < -1.05 */
        float l[3] = {-1.0f, -1.05f, -3.0f};
        p.repeat_penalty = 1.1f;
        nm_sampler *s = mk(t, &p, 3);
        if (!s) return;
        CHECK(t, nm_sampler_sample(s, l) == 0);
        nm_sampler_accept(s, 0);
        CHECK(t, nm_sampler_sample(s, l) == 1);
        nm_sampler_free(s);
    }
    {
        /* frequency: 3 occurrences * 0.05 = 0.15 -> 1.85 < 1.9, but 2 -> 1.9 is a tie
         * that the lower id wins, and 1 -> 1.95 keeps token 0 first */
        float l[3] = {2.0f, 1.9f, 0.0f};
        p.repeat_penalty = 1.0f;
        p.frequency_penalty = 0.05f;
        nm_sampler *s = mk(t, &p, 3);
        if (!s) return;
        nm_sampler_accept(s, 0);
        CHECK(t, nm_sampler_sample(s, l) == 0);
        nm_sampler_accept(s, 0);
        nm_sampler_accept(s, 0);
        CHECK(t, nm_sampler_sample(s, l) == 1);
        nm_sampler_free(s);
        p.frequency_penalty = 0.0f;
    }
    {
        /* presence: once is enough, count does not matter: 2.0 - 0.2 = 1.8 */
        float l[3] = {2.0f, 1.9f, 0.0f};
        p.presence_penalty = 0.2f;
        nm_sampler *s = mk(t, &p, 3);
        if (!s) return;
        CHECK(t, nm_sampler_sample(s, l) == 0);
        nm_sampler_accept(s, 0);
        CHECK(t, nm_sampler_sample(s, l) == 1);
        float l2[3] = {2.0f, 1.7f, 0.0f}; /* 1.8 > 1.7 even after 5 more */
        for (int i = 0; i < 5; i++) nm_sampler_accept(s, 0);
        CHECK(t, nm_sampler_sample(s, l2) == 0);
        /* the window: 8 other tokens push token 0 out of it */
        for (int i = 0; i < 8; i++) nm_sampler_accept(s, 2);
        CHECK(t, nm_sampler_sample(s, l) == 0);
        /* reset forgets the history */
        nm_sampler_accept(s, 0);
        CHECK(t, nm_sampler_sample(s, l) == 1);
        nm_sampler_reset(s);
        CHECK(t, nm_sampler_sample(s, l) == 0);
        nm_sampler_free(s);
        p.presence_penalty = 0.0f;
    }
    {
        /* all three together, as llama.cpp applies them:
         * 3.0 / 1.2 - 2 * 0.3 - 0.4 = 1.5 ; token 1 at 1.55 wins */
        float l[2] = {3.0f, 1.55f};
        p.repeat_penalty = 1.2f;
        p.frequency_penalty = 0.3f;
        p.presence_penalty = 0.4f;
        nm_sampler *s = mk(t, &p, 2);
        if (!s) return;
        nm_sampler_accept(s, 0);
        nm_sampler_accept(s, 0);
        CHECK(t, nm_sampler_sample(s, l) == 1);
        float l2[2] = {3.0f, 1.45f}; /* 1.5 > 1.45 */
        CHECK(t, nm_sampler_sample(s, l2) == 0);
        nm_sampler_free(s);
    }
    {
        /* penalty_last_n 0 switches them off */
        float l[2] = {2.0f, 1.9f};
        p.penalty_last_n = 0;
        p.repeat_penalty = 2.0f;
        nm_sampler *s = mk(t, &p, 2);
        if (!s) return;
        nm_sampler_accept(s, 0);
        CHECK(t, nm_sampler_sample(s, l) == 0);
        nm_sampler_free(s);
    }
}

static void test_logit_bias(nm_test *t) {
    float l[5] = {0.0f, 3.0f, 2.5f, -1.0f, 1.0f};
    nm_logit_bias ban[] = {{1, -INFINITY}};
    nm_sampler_params p = plain(0.0f);
    p.logit_bias = ban;
    p.n_logit_bias = 1;
    nm_sampler *s = mk(t, &p, 5);
    if (!s) return;
    CHECK(t, nm_sampler_sample(s, l) == 2);
    nm_sampler_free(s);

    /* a banned token never appears in a hot draw either */
    p = plain(1.5f);
    p.logit_bias = ban;
    p.n_logit_bias = 1;
    s = mk(t, &p, 5);
    if (!s) return;
    double want[5];
    float lb[5];
    memcpy(lb, l, sizeof lb);
    lb[1] = -INFINITY;
    softmax_t(lb, 5, 1.5, want);
    check_distribution(t, s, l, want, 5, 40000, "bias -inf at T=1.5");
    nm_sampler_free(s);

    /* a positive bias makes a token the argmax */
    nm_logit_bias up[] = {{3, 4.5f}, {0, 0.25f}};
    p = plain(0.0f);
    p.logit_bias = up;
    p.n_logit_bias = 2;
    s = mk(t, &p, 5);
    if (!s) return;
    CHECK(t, nm_sampler_sample(s, l) == 3);
    nm_sampler_free(s);

    /* every token banned: no token */
    nm_logit_bias all[] = {{0, -INFINITY}, {1, -INFINITY}};
    float l2[2] = {1.0f, 2.0f};
    p = plain(1.0f);
    p.logit_bias = all;
    p.n_logit_bias = 2;
    s = mk(t, &p, 2);
    if (!s) return;
    CHECK(t, nm_sampler_sample(s, l2) == -1);
    nm_sampler_free(s);
    p.temperature = 0.0f; /* greedy has its own path */
    s = mk(t, &p, 2);
    if (!s) return;
    CHECK(t, nm_sampler_sample(s, l2) == -1);
    nm_sampler_free(s);

    /* NaN logits count as banned */
    float l3[3] = {NAN, 0.5f, NAN};
    p = plain(1.0f);
    s = mk(t, &p, 3);
    if (!s) return;
    for (int i = 0; i < 100; i++) CHECK(t, nm_sampler_sample(s, l3) == 1);
    nm_sampler_free(s);
    p = plain(0.0f);
    s = mk(t, &p, 3);
    if (!s) return;
    CHECK(t, nm_sampler_sample(s, l3) == 1);
    nm_sampler_free(s);
}

static void test_seeds(nm_test *t) {
    float l[16];
    for (int i = 0; i < 16; i++) l[i] = (float)((i * 7) % 5) * 0.3f;
    nm_sampler_params p = plain(1.0f);
    p.seed = 42;
    nm_sampler *a = mk(t, &p, 16), *b = mk(t, &p, 16);
    p.seed = 43;
    nm_sampler *c = mk(t, &p, 16);
    if (!a || !b || !c) return;
    int32_t sa[200], sc[200];
    int same_c = 0;
    for (int i = 0; i < 200; i++) {
        sa[i] = nm_sampler_sample(a, l);
        int32_t sb = nm_sampler_sample(b, l);
        sc[i] = nm_sampler_sample(c, l);
        CHECKF(t, sa[i] == sb, "draw %d: %d vs %d with the same seed", i, (int)sa[i], (int)sb);
        same_c += sa[i] == sc[i];
    }
    CHECKF(t, same_c < 100, "seeds 42 and 43 agree on %d of 200 draws", same_c);
    /* reset restarts the same sequence */
    nm_sampler_reset(a);
    for (int i = 0; i < 200; i++) CHECK(t, nm_sampler_sample(a, l) == sa[i]);
    CHECK(t, nm_sampler_seed(a) == 42);
    nm_sampler_free(a);
    nm_sampler_free(b);
    nm_sampler_free(c);

    /* a random seed is reported, and passing it back replays the draws */
    p.seed = NM_SEED_RANDOM;
    nm_sampler *r = mk(t, &p, 16);
    if (!r) return;
    CHECK(t, nm_sampler_seed(r) != NM_SEED_RANDOM);
    p.seed = nm_sampler_seed(r);
    nm_sampler *r2 = mk(t, &p, 16);
    if (!r2) return;
    for (int i = 0; i < 50; i++) CHECK(t, nm_sampler_sample(r, l) == nm_sampler_sample(r2, l));
    (void)sc;
    nm_sampler_free(r);
    nm_sampler_free(r2);
}

static void test_bad_params(nm_test *t) {
    nm_err err = {0};
    nm_sampler *s = NULL;
    nm_sampler_params p = nm_sampler_params_default();
    CHECK(t, nm_sampler_new(&p, 0, &s, &err) == NM_ERR_ARG && !s);
    nm_logit_bias b[] = {{10, 1.0f}};
    p.logit_bias = b;
    p.n_logit_bias = 1;
    CHECK(t, nm_sampler_new(&p, 10, &s, &err) == NM_ERR_ARG && !s);
    CHECKF(t, strstr(err.msg, "10") != NULL, "message: %s", err.msg);
    b[0].token = 3;
    b[0].bias = INFINITY;
    CHECK(t, nm_sampler_new(&p, 10, &s, &err) == NM_ERR_ARG);
    b[0].bias = NAN;
    CHECK(t, nm_sampler_new(&p, 10, &s, &err) == NM_ERR_ARG);
    p = nm_sampler_params_default();
    p.top_p = -0.1f;
    CHECK(t, nm_sampler_new(&p, 10, &s, &err) == NM_ERR_ARG);
    p = nm_sampler_params_default();
    p.min_p = 1.5f;
    CHECK(t, nm_sampler_new(&p, 10, &s, &err) == NM_ERR_ARG);
    p = nm_sampler_params_default();
    p.repeat_penalty = 0.0f;
    CHECK(t, nm_sampler_new(&p, 10, &s, &err) == NM_ERR_ARG);
    p = nm_sampler_params_default();
    p.penalty_last_n = -1;
    CHECK(t, nm_sampler_new(&p, 10, &s, &err) == NM_ERR_ARG);
    p = nm_sampler_params_default();
    p.temperature = NAN;
    CHECK(t, nm_sampler_new(&p, 10, &s, &err) == NM_ERR_ARG);
    p = nm_sampler_params_default();
    CHECK(t, nm_sampler_new(&p, 10, &s, &err) == NM_OK && s);
    /* out-of-range ids given to accept are ignored, not written */
    nm_sampler_accept(s, -1);
    nm_sampler_accept(s, 10);
    nm_sampler_free(s);
}

/* A large vocabulary through the default chain: results stay inside the
 * top-k and greedy agrees with a plain argmax. */
static void test_large_vocab(nm_test *t) {
    enum { NV = 32000 };
    static float l[NV];
    nm_rng r;
    nm_rng_seed(&r, 3);
    for (int i = 0; i < NV; i++) l[i] = (float)nm_rng_normal(&r);
    nm_sampler_params p = nm_sampler_params_default();
    p.seed = 5;
    p.min_p = 0.0f;
    p.top_p = 1.0f;
    nm_sampler *s = mk(t, &p, NV);
    if (!s) return;
    /* the 40th largest logit: every draw must be >= it */
    static float sorted[NV];
    memcpy(sorted, l, sizeof sorted);
    for (int k = 0; k < 40; k++) { /* partial selection sort, enough for 40 */
        int b = k;
        for (int i = k + 1; i < NV; i++)
            if (sorted[i] > sorted[b]) b = i;
        float x = sorted[k];
        sorted[k] = sorted[b];
        sorted[b] = x;
    }
    for (int i = 0; i < 300; i++) {
        int32_t id = nm_sampler_sample(s, l);
        if (!CHECKF(t, id >= 0 && l[id] >= sorted[39], "draw %d: token %d (logit %g) outside the top 40", i, (int)id,
                    id >= 0 ? (double)l[id] : 0.0))
            break;
    }
    nm_sampler_free(s);
}

/* Top-p over a vocabulary whose nucleus holds hundreds of tokens (the
 * sampler sorts a growing head there): exactly the reference nucleus may
 * appear, and its far end does appear. */
static void test_top_p_wide(nm_test *t) {
    enum { NV = 3000 };
    static float l[NV];
    static int rank_of[NV];
    for (int r = 0; r < NV; r++) {
        int id = (int)(((long)r * 7919) % NV); /* ranks scattered over ids */
        l[id] = -0.003f * (float)r;
        rank_of[id] = r;
    }
    /* reference nucleus: the smallest head of ranks reaching p */
    double sum = 0, cum = 0;
    for (int r = 0; r < NV; r++) sum += exp(-0.003 * r);
    int K = 0;
    while (cum < 0.6 * sum) cum += exp(-0.003 * K++);
    CHECKF(t, K > 256, "the case should need a nucleus wider than 256 (K = %d)", K);
    nm_sampler_params p = plain(1.0f);
    p.top_p = 0.6f;
    nm_sampler *s = mk(t, &p, NV);
    if (!s) return;
    int max_rank = -1, n = 5000;
    for (int i = 0; i < n; i++) {
        int32_t id = nm_sampler_sample(s, l);
        if (!CHECKF(t, id >= 0 && rank_of[id] < K, "drew rank %d, nucleus is %d", id >= 0 ? rank_of[id] : -1, K)) break;
        if (rank_of[id] > max_rank) max_rank = rank_of[id];
    }
    CHECKF(t, max_rank >= K - 5, "highest rank drawn %d, nucleus %d", max_rank, K);
    nm_sampler_free(s);
}

static void check_stop(nm_test *t, const char *text, const char *const *stops, size_t n, bool want_found,
                       size_t want_at, size_t want_safe) {
    size_t at = 12345, safe = 12345;
    bool found = nm_stop_find(text, strlen(text), stops, n, &at, &safe);
    CHECKF(t, found == want_found, "'%s': found %d", text, found);
    if (want_found) CHECKF(t, at == want_at, "'%s': stop at %zu, want %zu", text, at, want_at);
    CHECKF(t, safe == want_safe, "'%s': safe %zu, want %zu", text, safe, want_safe);
}

static void test_stop_strings(nm_test *t) {
    const char *st[] = {"User:", "\n\n", ""};
    check_stop(t, "Hello there", st, 3, false, 0, 11);
    check_stop(t, "Hello\nUs", st, 3, false, 0, 6);       /* "Us" may become "User:" */
    check_stop(t, "Hello\n", st, 3, false, 0, 5);         /* "\n" may become "\n\n" */
    check_stop(t, "Hello\nUser: hi", st, 3, true, 6, 6);  /* complete: cut before it */
    check_stop(t, "a\n\nUser:", st, 3, true, 1, 1);       /* earliest of two */
    check_stop(t, "User", st, 3, false, 0, 0);            /* the whole text is held */
    check_stop(t, "", st, 3, false, 0, 0);
    check_stop(t, "Us er", st, 3, false, 0, 5);           /* not a prefix any more */
    const char *st2[] = {"abcab"};
    check_stop(t, "xxabcabc", st2, 1, true, 2, 2);
    check_stop(t, "xxabca", st2, 1, false, 0, 2);         /* "abca" may still complete */
    check_stop(t, "xxabcb", st2, 1, false, 0, 6);
    check_stop(t, "hello", NULL, 0, false, 0, 5);         /* no stops: all safe */
    /* NULL outputs are allowed */
    CHECK(t, nm_stop_find("x User:", 7, st, 2, NULL, NULL));
}

int main(void) {
    nm_test_run("greedy_is_argmax", test_greedy_is_argmax);
    nm_test_run("top_k_1_is_argmax", test_top_k_1_is_argmax);
    nm_test_run("distribution_matches_softmax", test_distribution_matches_softmax);
    nm_test_run("top_k", test_top_k);
    nm_test_run("top_p", test_top_p);
    nm_test_run("min_p", test_min_p);
    nm_test_run("penalties", test_penalties);
    nm_test_run("logit_bias", test_logit_bias);
    nm_test_run("seeds", test_seeds);
    nm_test_run("bad_params", test_bad_params);
    nm_test_run("large_vocab", test_large_vocab);
    nm_test_run("top_p_wide", test_top_p_wide);
    nm_test_run("stop_strings", test_stop_strings);
    return nm_test_finish();
}
