/* test_distill.c - distillation (issue 10): the loss and its gradient
 * against a float64 computation and its finite differences, the teacher
 * cache against the teacher's own logits, the cache reader on hostile
 * input, the mismatch errors (data, tokenizer, teacher), exact resume on a
 * stack, students derived from the teacher's layers, the command line. */
#include "testlib.h"
#include "distill/distill.h"
#include "train/adapter.h"
#include "train/model.h"
#include "base/base.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================== */
/* the loss against float64                                                 */
/* ======================================================================== */

/* The loss written out from its definition (docs/DISTILL.md), in float64:
 * student softmax over V, the (k+1) buckets, both coarse distributions
 * softened by tau, the KL, the mix with cross-entropy. */
static double ref_loss(const double *z, int V, const int32_t *ids, const float *lq, int k, int target, double tau,
                       double alpha, bool reverse) {
    double m = z[0];
    for (int v = 1; v < V; v++) m = fmax(m, z[v]);
    double S = 0;
    for (int v = 0; v < V; v++) S += exp(z[v] - m);
    double P[1100], Q[1100];
    double top = 0;
    for (int b = 0; b < k; b++) {
        P[b] = exp(z[ids[b]] - m) / S;
        top += P[b];
    }
    int nb = k < V ? k + 1 : k;
    if (k < V) {
        double rest = 0;
        for (int v = 0; v < V; v++) {
            bool in = false;
            for (int b = 0; b < k; b++) in |= ids[b] == v;
            if (!in) rest += exp(z[v] - m) / S;
        }
        P[k] = rest;
    }
    (void)top;
    double zs = 0, zt = 0;
    for (int b = 0; b < nb; b++) {
        P[b] = pow(P[b], 1.0 / tau);
        Q[b] = exp((double)lq[b] / tau);
        zs += P[b];
        zt += Q[b];
    }
    double kl = 0;
    for (int b = 0; b < nb; b++) {
        double s = P[b] / zs, q = Q[b] / zt;
        kl += reverse ? s * log(s / q) : q * log(q / s);
    }
    double ce = log(S) + m - z[target];
    return (1 - alpha) * tau * tau * kl + alpha * ce;
}

typedef struct kd_case {
    int V, k;
    double tau, alpha;
    bool reverse;
} kd_case;

static void test_loss_vs_float64(nm_test *t) {
    static const kd_case cases[] = {
        {50, 5, 1, 0, false},  {50, 5, 2, 0, false},   {50, 5, 0.5, 0, false}, {50, 1, 1, 0, false},
        {50, 50, 1, 0, false}, {50, 50, 3, 0, false},  {50, 5, 1, 0, true},    {50, 5, 2, 0.3, true},
        {50, 8, 2, 0.5, false}, {50, 8, 1, 1, false},  {300, 32, 1.5, 0.2, false},
    };
    nm_rng rng;
    nm_rng_seed(&rng, 11);
    uint32_t *stamp = nm_calloc(512, sizeof *stamp);
    uint32_t mark = 0;
    double worst_l = 0, worst_g = 0;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const kd_case *c = &cases[ci];
        for (int rep = 0; rep < 4; rep++) {
            int V = c->V, k = c->k;
            double z[300];
            float zf[300], lq[1100];
            int32_t ids[300];
            for (int v = 0; v < V; v++) z[v] = 2.5 * nm_rng_normal(&rng), zf[v] = (float)z[v], z[v] = zf[v];
            /* the teacher: a random distribution, its top-k and the rest */
            double tz[300], ts = 0;
            for (int v = 0; v < V; v++) ts += exp(tz[v] = 2.5 * nm_rng_normal(&rng));
            int order[300];
            for (int v = 0; v < V; v++) order[v] = v;
            for (int a = 0; a < V; a++)
                for (int b = a + 1; b < V; b++)
                    if (tz[order[b]] > tz[order[a]]) {
                        int x = order[a];
                        order[a] = order[b];
                        order[b] = x;
                    }
            double rest = 0;
            for (int b = 0; b < V; b++) {
                if (b < k) {
                    ids[b] = order[b];
                    lq[b] = (float)(tz[order[b]] - log(ts));
                } else {
                    rest += exp(tz[order[b]]) / ts;
                }
            }
            lq[k] = k < V ? (float)log(rest) : -INFINITY;
            int target = (int)(nm_rng_u64(&rng) % (uint64_t)V);
            nm_kd_cfg cfg = {(float)c->tau, (float)c->alpha, c->reverse};
            float g[300];
            memcpy(g, zf, sizeof zf);
            double l = nm_kd_position(g, V, ids, lq, k, target, &cfg, 1.0f, true, stamp, ++mark);
            double r = ref_loss(z, V, ids, lq, k, target, c->tau, c->alpha, c->reverse);
            double el = fabs(l - r) / fmax(1e-3, fabs(r));
            worst_l = fmax(worst_l, el);
            CHECKF(t, el < 1e-5, "case %zu: loss %.9g vs float64 %.9g", ci, l, r);
            /* the loss alone (no gradient) is the same number */
            float z2[300];
            memcpy(z2, zf, sizeof zf);
            CHECK(t, nm_kd_position(z2, V, ids, lq, k, target, &cfg, 1.0f, false, stamp, ++mark) == l);
            /* central differences of the float64 loss */
            double num = 0, den = 0;
            for (int v = 0; v < V; v++) {
                double h = 1e-5, zp[300];
                memcpy(zp, z, sizeof(double) * (size_t)V);
                zp[v] = z[v] + h;
                double lp = ref_loss(zp, V, ids, lq, k, target, c->tau, c->alpha, c->reverse);
                zp[v] = z[v] - h;
                double lm = ref_loss(zp, V, ids, lq, k, target, c->tau, c->alpha, c->reverse);
                double fd = (lp - lm) / (2 * h);
                num += (g[v] - fd) * (g[v] - fd);
                den += fd * fd;
            }
            double eg = sqrt(num / fmax(den, 1e-30));
            worst_g = fmax(worst_g, eg);
            CHECKF(t, eg < 1e-4, "case %zu (V %d k %d tau %g alpha %g %s): gradient vs finite differences %.3g", ci,
                   V, k, c->tau, c->alpha, c->reverse ? "reverse" : "forward", eg);
            /* scale multiplies the gradient */
            float g2[300];
            memcpy(g2, zf, sizeof zf);
            nm_kd_position(g2, V, ids, lq, k, target, &cfg, 0.25f, true, stamp, ++mark);
            for (int v = 0; v < V; v++) CHECK(t, fabsf(g2[v] - 0.25f * g[v]) <= 1e-6f * (1 + fabsf(g[v])));
        }
    }
    /* a repeated id is refused */
    float z[8] = {0};
    int32_t ids[2] = {3, 3};
    float lq[3] = {-1, -1, -2};
    nm_kd_cfg cfg = {1, 0, false};
    CHECK(t, isnan(nm_kd_position(z, 8, ids, lq, 2, 0, &cfg, 1, true, stamp, ++mark)));
    printf("  loss: worst relative error %.2g; gradient vs finite differences: %.2g\n", worst_l, worst_g);
    free(stamp);
}

/* With k = V and tau = 1 the loss is the full KL(teacher || student). */
static void test_full_kl(nm_test *t) {
    int V = 40;
    nm_rng rng;
    nm_rng_seed(&rng, 5);
    float z[40], lq[41];
    int32_t ids[40];
    double tz[40], ts = 0, sz = 0;
    for (int v = 0; v < V; v++) {
        z[v] = (float)nm_rng_normal(&rng);
        ts += exp(tz[v] = nm_rng_normal(&rng));
        sz += exp((double)z[v]);
        ids[v] = (v * 7) % V; /* any order */
    }
    for (int b = 0; b < V; b++) lq[b] = (float)(tz[ids[b]] - log(ts));
    lq[V] = -INFINITY;
    double kl = 0;
    for (int v = 0; v < V; v++) {
        double q = exp(tz[v]) / ts, p = exp((double)z[v]) / sz;
        kl += q * log(q / p);
    }
    uint32_t stamp[40] = {0};
    nm_kd_cfg cfg = {1, 0, false};
    double l = nm_kd_position(z, V, ids, lq, V, 0, &cfg, 1, false, stamp, 1);
    CHECKF(t, fabs(l - kl) < 1e-6 * (1 + kl), "k = V: %.9g vs full KL %.9g", l, kl);
}

/* ======================================================================== */
/* the teacher cache                                                        */
/* ======================================================================== */

static const char *tmp(const char *name) {
    static char buf[8][4096];
    static int slot;
    char *b = buf[slot++ % 8];
    snprintf(b, 4096, "%s/%s", nm_test_tmpdir(), name);
    return b;
}

static const char *MODEL;
static char GEN[4096], OTHER[4096];

/* Text the teacher generated (the cache's intended data), and other text. */
static bool setup_data(nm_test *t) {
    static bool done, ok;
    if (done) return ok;
    done = true;
    MODEL = nm_test_shared("models/stories260K.gguf");
    MODEL = nm_strdup(MODEL);
    snprintf(GEN, sizeof GEN, "%s", tmp("gen.txt"));
    snprintf(OTHER, sizeof OTHER, "%s", tmp("other.txt"));
    char cmd[20480];
    snprintf(cmd, sizeof cmd,
             "for s in 1 2 3 4 5 6 7 8 9 10 11 12; do %s run -m %s -p '' -n 120 --seed $s --temp 1 --top-k 0 "
             "--top-p 1 --min-p 0 -t 1 2>/dev/null; echo; done > %s && "
             "for s in 101 102 103 104; do %s run -m %s -p 'Tom had a dog' -n 80 --seed $s -t 1 2>/dev/null; "
             "echo; done > %s",
             nm_test_bin(), MODEL, GEN, nm_test_bin(), MODEL, OTHER);
    char *out = NULL;
    int rc = nm_test_sh(cmd, &out);
    free(out);
    ok = CHECKF(t, rc == 0, "generating the data failed (%d)", rc);
    return ok;
}

static nm_status make_cache(const char *teacher, const char *const *loras, size_t n_loras, const char *data, int k,
                            const char *out, nm_distill_cache_info *info, nm_err *err) {
    nm_distill_cache_params p;
    nm_distill_cache_params_default(&p);
    p.teacher = teacher;
    p.loras = loras;
    p.n_loras = n_loras;
    p.data = data;
    p.seq_len = 64;
    p.top_k = k;
    p.threads = 2;
    p.out = out;
    return nm_distill_cache_write(&p, info, NULL, err);
}

/* Entries against the teacher's logits at those positions (float64
 * log-softmax of nm_tmodel_logits over the prefix). */
static void test_cache_vs_teacher(nm_test *t) {
    if (!setup_data(t)) return;
    nm_err err = {0};
    nm_distill_cache_info info;
    const char *path = tmp("c8.kd");
    if (!CHECK_OK(t, make_cache(MODEL, NULL, 0, GEN, 8, path, &info, &err), err)) return;
    nm_dcache *c;
    if (!CHECK_OK(t, nm_dcache_open(path, &c, &err), err)) return;
    CHECK(t, c->k == 8 && c->n_vocab == 512 && c->n_pos == (uint64_t)info.n_positions);
    CHECK(t, c->file_bytes == info.file_bytes);
    CHECK(t, info.teacher_loss > 0.5 && info.teacher_loss < 3); /* its own text: low loss */
    nm_tmodel *m;
    if (!CHECK_OK(t, nm_tmodel_open(MODEL, false, NULL, &m, &err), err)) return;
    float logits[512];
    int32_t ids[8];
    float lq[9];
    int checked = 0;
    double worst = 0;
    for (int64_t e = 0; e < c->data.n_ex && checked < 12; e += 3) {
        int64_t o = c->data.ex_off[e], n = c->data.ex_len[e];
        for (int64_t j = 0; j + 1 < n && checked < 12; j += 17) {
            int64_t en = c->entry_of[o + j];
            if (en < 0) continue;
            CHECK_OK(t, nm_tmodel_logits(m, NULL, c->data.tok + o, j + 1, logits, &err), err);
            double mx = logits[0], s = 0;
            for (int v = 1; v < 512; v++) mx = fmax(mx, logits[v]);
            for (int v = 0; v < 512; v++) s += exp(logits[v] - mx);
            double lse = mx + log(s);
            nm_dcache_entry(c, (uint64_t)en, ids, lq);
            /* the k largest: no token outside is above the smallest inside */
            double min_in = 1e30, rest = 0;
            for (int b = 0; b < 8; b++) {
                double lp = logits[ids[b]] - lse;
                min_in = fmin(min_in, lp);
                double d = fabs(lp - lq[b]);
                worst = fmax(worst, d / (1 + fabs(lp)));
                CHECKF(t, d <= 1e-3 * (1 + fabs(lp)), "entry %lld: log-prob %.6f vs %.6f", (long long)en, lq[b], lp);
            }
            for (int v = 0; v < 512; v++) {
                bool in = false;
                for (int b = 0; b < 8; b++) in |= ids[b] == v;
                if (in) continue;
                CHECKF(t, logits[v] - lse <= min_in + 1e-6, "token %d outside the top-k is more likely", v);
                rest += exp(logits[v] - lse);
            }
            CHECKF(t, fabs(log(rest) - lq[8]) <= 2e-3 * (1 + fabs(log(rest))), "remainder %.6f vs %.6f", lq[8],
                   log(rest));
            checked++;
        }
    }
    CHECK(t, checked >= 8);
    printf("  %d positions checked against the teacher's logits, worst relative error %.2g (F16 storage)\n", checked,
           worst);
    /* sizes: header + rows + n_pos entries of k ids (2 bytes) + k+1 F16 */
    CHECK(t, info.file_bytes > (uint64_t)info.n_positions * (8 * 2 + 9 * 2));
    nm_tmodel_free(m);
    nm_dcache_free(c);
}

static void fix_checksum(uint8_t *b, size_t n) {
    uint64_t h = nm_dcache_checksum(b, n - 8);
    for (int i = 0; i < 8; i++) b[n - 8 + (size_t)i] = (uint8_t)(h >> (8 * i));
}

static nm_status open_buf(const uint8_t *b, size_t n, nm_err *err) {
    nm_dcache *c = NULL;
    nm_status st = nm_dcache_open_buffer(b, n, "x.kd", &c, err);
    nm_dcache_free(c);
    return st;
}

static void test_hostile(nm_test *t) {
    if (!setup_data(t)) return;
    nm_err err = {0};
    const char *path = tmp("h.kd");
    /* a small cache: the OTHER text, k = 4 */
    if (!CHECK_OK(t, make_cache(MODEL, NULL, 0, OTHER, 4, path, NULL, &err), err)) return;
    size_t n;
    uint8_t *good = (uint8_t *)nm_test_read(path, &n);
    if (!CHECK(t, good && n > 200)) return;
    CHECK_OK(t, open_buf(good, n, &err), err);
    uint8_t *b = malloc(n);
    /* every truncation */
    int refused = 0, total = 0;
    for (size_t len = 0; len < n; len += len < 256 ? 1 : 13) {
        memcpy(b, good, len);
        total++;
        refused += open_buf(b, len, &err) == NM_ERR_FORMAT;
    }
    CHECKF(t, refused == total, "%d of %d truncations refused", refused, total);
    /* random byte damage: the checksum or a field check refuses it */
    nm_rng rng;
    nm_rng_seed(&rng, 3);
    refused = 0;
    for (int i = 0; i < 300; i++) {
        memcpy(b, good, n);
        size_t at = (size_t)(nm_rng_u64(&rng) % n);
        b[at] ^= (uint8_t)(1 + nm_rng_u64(&rng) % 255);
        refused += open_buf(b, n, &err) != NM_OK;
    }
    CHECKF(t, refused == 300, "%d of 300 damaged files refused", refused);
    /* damage with a valid checksum: the field checks alone */
    nm_dcache *c;
    CHECK_OK(t, nm_dcache_open_buffer(good, n, "x.kd", &c, &err), err);
    uint64_t meta_len = nm_rd_u64(good + 80);
    size_t rows = NM_DCACHE_HEADER + meta_len, toks = rows + 4 * (size_t)c->data.n_ex;
    size_t trn = toks + 2 * (size_t)c->data.n_tok, ent = trn + (size_t)c->data.n_tok;
    nm_dcache_free(c);
    struct {
        size_t at;
        uint8_t v;
        const char *want;
    } cases[] = {
        {8, 2, "version"},                 /* version 2 */
        {12, 0, "top-k"},                  /* k = 0 */
        {20, 4, "id width"},               /* 4-byte ids for 512 tokens */
        {28, 6, "flags"},                  /* unknown flag */
        {48, 0x7f, "sizes"},               /* n_pos */
        {80, 0xff, "sizes"},               /* meta_len */
        {NM_DCACHE_HEADER, '[', "metadata"},
        {rows, 1, "length"},               /* example of 1 token */
        {toks + 1, 0x7f, "outside the vocabulary"},
        {trn + 1, 7, "trained flag"},
        {ent + 1, 0x7f, "token id"},       /* entry id >= V */
        {ent + 4 * 2 + 1, 0x3c, "log-probability"}, /* +1.0 in F16 */
        {64, 0x55, "data hash"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        memcpy(b, good, n);
        b[cases[i].at] = cases[i].v;
        fix_checksum(b, n);
        nm_status st = open_buf(b, n, &err);
        CHECKF(t, st != NM_OK && strstr(err.msg, cases[i].want), "case %zu: %s", i, st ? err.msg : "accepted");
    }
    /* a repeated id in an entry */
    memcpy(b, good, n);
    memcpy(b + ent + 2, b + ent, 2);
    fix_checksum(b, n);
    CHECK(t, open_buf(b, n, &err) != NM_OK && strstr(err.msg, "repeated"));
    /* a remainder of -inf although k < vocabulary (the reverse KL would be infinite) */
    memcpy(b, good, n);
    b[ent + 4 * 2 + 4 * 2] = 0x00;
    b[ent + 4 * 2 + 4 * 2 + 1] = 0xfc;
    fix_checksum(b, n);
    CHECK(t, open_buf(b, n, &err) != NM_OK && strstr(err.msg, "remainder"));
    /* trained flags that no longer match the entry count */
    memcpy(b, good, n);
    for (size_t i = trn + 1; i < ent; i++)
        if (b[i] == 1) {
            b[i] = 0;
            break;
        }
    fix_checksum(b, n);
    CHECK(t, open_buf(b, n, &err) != NM_OK);
    /* an unchecksummed change */
    memcpy(b, good, n);
    b[n - 20] ^= 1;
    CHECK(t, open_buf(b, n, &err) == NM_ERR_FORMAT && strstr(err.msg, "checksum"));
    CHECK(t, nm_dcache_open(tmp("missing.kd"), &c, &err) != NM_OK && c == NULL);
    nm_dcache_free(c);
    free(b);
    free(good);
}

/* ======================================================================== */
/* training on the cache                                                    */
/* ======================================================================== */

typedef struct stopper {
    int64_t stop_at;
    double losses[64];
} stopper;

static int on_step(void *user, const nm_train_stats *s) {
    stopper *r = user;
    if (s->step < 64) r->losses[s->step] = s->loss;
    return r->stop_at && s->step == r->stop_at;
}

static nm_train_params kd_params(const char *out, const char *cache, stopper *r) {
    nm_train_params p;
    nm_train_params_default(&p);
    p.model = MODEL;
    p.data = GEN;
    p.out_dir = out;
    p.distill_cache = cache;
    p.distill_tau = 2;
    p.distill_alpha = 0.25f;
    p.seq_len = 64;
    p.batch = 2;
    p.rank = 4;
    p.alpha = 8;
    p.lr = 3e-3;
    p.steps = 6;
    p.checkpoint_every = 0;
    p.metrics = "";
    p.threads = 2;
    p.on_step = on_step;
    p.user = r;
    return p;
}

static bool same_file(const char *a, const char *b) {
    size_t na, nb;
    char *x = nm_test_read(a, &na), *y = nm_test_read(b, &nb);
    bool same = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

/* The teacher itself as the student: the loss is ~0 at the start (F16
 * rounding of the cache only), on every row of every shuffled epoch. */
static void test_self_distill_zero(nm_test *t) {
    if (!setup_data(t)) return;
    nm_err err = {0};
    const char *cache = tmp("self.kd");
    if (!CHECK_OK(t, make_cache(MODEL, NULL, 0, GEN, 16, cache, NULL, &err), err)) return;
    stopper r = {0};
    nm_train_params p = kd_params(tmp("self"), cache, &r);
    p.distill_alpha = 0;
    p.distill_tau = 1;
    p.lr = 1e-12; /* the adapter's B is 0: the student is the teacher */
    p.epochs = 2;
    p.steps = 0;
    p.batch = 8;
    CHECK_OK(t, nm_train_run(&p, NULL, &err), err);
    double worst = 0;
    for (int s = 1; s < 64 && r.losses[s] != 0; s++) worst = fmax(worst, r.losses[s]);
    CHECKF(t, worst < 2e-4, "teacher distilled into itself: loss %.3g", worst);
}

/* A distillation run on top of a frozen adapter, stopped at step 3 and
 * resumed, ends with the same bytes as one that was not stopped. */
static void test_resume_on_stack(nm_test *t) {
    if (!setup_data(t)) return;
    nm_err err = {0};
    const char *cache = tmp("r.kd");
    if (!CHECK_OK(t, make_cache(MODEL, NULL, 0, GEN, 8, cache, NULL, &err), err)) return;
    /* the frozen adapter under the student */
    stopper r0 = {0};
    nm_train_params q = kd_params(tmp("under"), NULL, &r0);
    q.distill_cache = NULL;
    q.data = OTHER;
    q.steps = 2;
    if (!CHECK_OK(t, nm_train_run(&q, NULL, &err), err)) return;
    const char *under[1] = {tmp("under")};
    stopper r1 = {0}, r2 = {.stop_at = 3}, r3 = {0};
    nm_train_params a = kd_params(tmp("straight"), cache, &r1);
    a.loras = under;
    a.n_loras = 1;
    CHECK_OK(t, nm_train_run(&a, NULL, &err), err);
    nm_train_params b = kd_params(tmp("stopped"), cache, &r2);
    b.loras = under;
    b.n_loras = 1;
    CHECK(t, nm_train_run(&b, NULL, &err) == NM_ERR_CANCELLED);
    nm_train_params c;
    nm_train_params_default(&c);
    c.resume_dir = tmp("stopped");
    c.metrics = "";
    c.threads = 1; /* another thread count: the same bits */
    c.on_step = on_step;
    c.user = &r3;
    CHECK_OK(t, nm_train_run(&c, NULL, &err), err);
    char x[4096], y[4096];
    snprintf(x, sizeof x, "%s/adapter_model.safetensors", tmp("straight"));
    snprintf(y, sizeof y, "%s/adapter_model.safetensors", tmp("stopped"));
    CHECK(t, same_file(x, y));
    for (int s = 4; s <= 6; s++) CHECKF(t, r1.losses[s] == r3.losses[s], "step %d: %.9g vs %.9g", s, r1.losses[s], r3.losses[s]);
    /* the distillation loss is not cross-entropy: a plain run differs */
    stopper r4 = {0};
    nm_train_params d = kd_params(tmp("plain"), NULL, &r4);
    d.loras = under;
    d.n_loras = 1;
    CHECK_OK(t, nm_train_run(&d, NULL, &err), err);
    CHECK(t, r4.losses[1] != r1.losses[1]);
}

static void test_mismatch(nm_test *t) {
    if (!setup_data(t)) return;
    nm_err err = {0};
    const char *cache = tmp("m.kd");
    if (!CHECK_OK(t, make_cache(MODEL, NULL, 0, GEN, 8, cache, NULL, &err), err)) return;
    stopper r = {0};
    /* other data */
    nm_train_params p = kd_params(tmp("m1"), cache, &r);
    p.data = OTHER;
    CHECK(t, nm_train_run(&p, NULL, &err) == NM_ERR_ARG && strstr(err.msg, "not what the teacher cache was made from"));
    /* the same data cut at another length */
    p = kd_params(tmp("m2"), cache, &r);
    p.seq_len = 32;
    CHECK(t, nm_train_run(&p, NULL, &err) == NM_ERR_ARG && strstr(err.msg, "not what the teacher cache"));
    /* a student with another tokenizer */
    p = kd_params(tmp("m3"), cache, &r);
    p.model = nm_test_shared("models/t256-q8_0.gguf");
    CHECK(t, nm_train_run(&p, NULL, &err) == NM_ERR_ARG && strstr(err.msg, "tokenizer"));
    printf("  %s\n", err.msg);
    /* bad settings */
    p = kd_params(tmp("m4"), cache, &r);
    p.distill_tau = 0;
    CHECK(t, nm_train_run(&p, NULL, &err) == NM_ERR_ARG && strstr(err.msg, "temperature"));
    p.distill_tau = 1;
    p.distill_alpha = 2;
    CHECK(t, nm_train_run(&p, NULL, &err) == NM_ERR_ARG && strstr(err.msg, "alpha"));
    /* another teacher: identities differ (base fingerprint, stack) */
    char a[17], b[17], c[17];
    CHECK_OK(t, nm_distill_teacher_id(MODEL, NULL, NULL, 0, a, &err), err);
    CHECK_OK(t, nm_distill_teacher_id(nm_test_shared("models/stories260K-f16.gguf"), NULL, NULL, 0, b, &err), err);
    nm_distill_cache_info info;
    CHECK_OK(t, nm_distill_cache_info_read(cache, &info, NULL, &err), err);
    CHECK(t, !strcmp(a, info.teacher_id) && strcmp(a, b));
    CHECK(t, nm_distill_teacher_id(MODEL, (const char *const[]){"/nonexistent"}, NULL, 1, c, &err) != NM_OK);
}

/* The whole model through the head hook: the LoRA gradients of
 * nm_kd_fwd_bwd against central differences of nm_kd_eval along random
 * directions (float32 forward: a directional difference keeps the noise
 * well below the bar). */
static void test_model_gradient(nm_test *t) {
    if (!setup_data(t)) return;
    nm_err err = {0};
    const char *cache = tmp("g.kd");
    if (!CHECK_OK(t, make_cache(MODEL, NULL, 0, GEN, 8, cache, NULL, &err), err)) return;
    nm_tmodel *m = NULL;
    nm_vocab *v = NULL;
    nm_dataset d = {0};
    nm_rows rows = {0};
    nm_kd *kd = NULL;
    nm_tm_lora *l = NULL;
    if (!CHECK_OK(t, nm_tmodel_open(MODEL, false, NULL, &m, &err), err)) return;
    CHECK_OK(t, nm_vocab_from_gguf(m->gguf, &v, NULL, &err), err);
    nm_data_opts o = {NM_DATA_TEXT, v, NM_CHAT_TEMPLATE_DEFAULT, 64, true, false, NULL, 0, NULL};
    for (int mode = 0; mode < 2 && v; mode++) {
        nm_kd_cfg cfg = {mode ? 2.0f : 1.0f, mode ? 0.3f : 0.0f, mode == 1};
        if (!CHECK_OK(t, nm_kd_open(cache, v, m->hp.n_vocab, &cfg, &kd, &err), err)) break;
        CHECK_OK(t, nm_dataset_load(GEN, &o, &d, &err), err);
        CHECK_OK(t, nm_kd_check_data(kd, &d, GEN, &err), err);
        CHECK_OK(t, nm_rows_build(&d, 64, true, true, 9, &rows, &err), err);
        CHECK_OK(t, nm_kd_rows(kd, &d, 64, true, true, 9, &rows, &err), err);
        CHECK_OK(t, nm_tm_lora_new(m, 4, 8, false, 0, NM_TM_ALL, &l, &err), err);
        if (!l || !rows.n_rows) break;
        nm_tm_lora_init_peft(l, 3);
        nm_rng rng;
        nm_rng_seed(&rng, 17 + (uint64_t)mode);
        for (int64_t i = 0; i < l->n_params; i++)
            if (strstr(l->params[i].name, "lora_B") || i % 2)
                for (int64_t j = 0; j < l->params[i].n; j++) l->params[i].data[j] = 0.05f * (float)nm_rng_normal(&rng);
        int64_t row0 = 1;
        nm_tm_batch b = {2, 64, rows.tokens + row0 * 64, rows.targets + row0 * 64, rows.pos + row0 * 64,
                         rows.doc + row0 * 64};
        int64_t N = nm_rows_count_targets(&rows, row0, row0 + 2);
        for (int64_t i = 0; i < l->n_params; i++) memset(l->params[i].grad, 0, (size_t)l->params[i].n * 4);
        double s0;
        int64_t n0;
        CHECK_OK(t, nm_kd_fwd_bwd(kd, m, l, &b, row0, 1.0f / (float)N, 0, &s0, &n0, &err), err);
        CHECK(t, n0 == N);
        double worst = 0, gnorm = 0;
        for (int64_t i = 0; i < l->n_params; i++)
            for (int64_t j = 0; j < l->params[i].n; j++) gnorm += (double)l->params[i].grad[j] * l->params[i].grad[j];
        gnorm = sqrt(gnorm);
        /* Direction 0 is the gradient itself (the derivative along it is
         * the gradient's norm: the check with the most signal); 1 and 2 are
         * random.  Along a random direction the derivative is only about
         * |g| / sqrt(n), comparable to the float32 noise of the finite
         * difference, so errors are measured against |g| (measured worst:
         * 3e-5 of |g| in both modes; the bar is 2e-3). */
        for (int dir = 0; dir < 3; dir++) {
            double norm = 0, gd = 0;
            int64_t total = 0;
            for (int64_t i = 0; i < l->n_params; i++) total += l->params[i].n;
            float *dv = malloc((size_t)total * sizeof *dv), *keep = malloc((size_t)total * sizeof *keep);
            for (int64_t i = 0, k = 0; i < l->n_params; i++)
                for (int64_t j = 0; j < l->params[i].n; j++, k++) {
                    dv[k] = dir == 0 ? l->params[i].grad[j] : (float)nm_rng_normal(&rng);
                    norm += (double)dv[k] * dv[k];
                    keep[k] = l->params[i].data[j];
                }
            norm = sqrt(norm);
            double eps = 2e-3, sp = 0, sm = 0;
            for (int sign = -1; sign <= 1; sign += 2) {
                for (int64_t i = 0, k = 0; i < l->n_params; i++)
                    for (int64_t j = 0; j < l->params[i].n; j++, k++)
                        l->params[i].data[j] = keep[k] + (float)(sign * eps * dv[k] / norm);
                double s;
                int64_t n;
                CHECK_OK(t, nm_kd_eval(kd, m, l, &b, row0, &s, &n, &err), err);
                if (sign < 0) sm = s;
                else sp = s;
            }
            for (int64_t i = 0, k = 0; i < l->n_params; i++)
                for (int64_t j = 0; j < l->params[i].n; j++, k++) {
                    l->params[i].data[j] = keep[k];
                    gd += (double)l->params[i].grad[j] * dv[k] / norm;
                }
            double fd = (sp - sm) / (2 * eps * (double)N);
            double e = fabs(fd - gd) / fmax(1e-12, gnorm);
            worst = fmax(worst, e);
            CHECKF(t, e < 2e-3, "%s, direction %d: directional derivative %.6g vs finite difference %.6g (|g| %.3g)",
                   mode ? "reverse, tau 2, alpha 0.3" : "forward", dir, gd, fd, gnorm);
            if (dir == 0) CHECKF(t, fabs(gd - gnorm) <= 1e-4 * gnorm, "gradient direction: %.6g vs |g| %.6g", gd, gnorm);
            free(dv);
            free(keep);
        }
        printf("  %s: gradient along itself and random directions vs finite differences: worst %.2g of |g|\n",
               mode ? "reverse KL, tau 2, alpha 0.3" : "forward KL, tau 1", worst);
        nm_tm_lora_free(l);
        l = NULL;
        nm_kd_free(kd);
        kd = NULL;
        nm_rows_deinit(&rows);
        nm_dataset_deinit(&d);
    }
    nm_tm_lora_free(l);
    nm_kd_free(kd);
    nm_rows_deinit(&rows);
    nm_dataset_deinit(&d);
    nm_vocab_free(v);
    nm_tmodel_free(m);
}

/* A chat format with prompt masking: entries only where the assistant's
 * tokens are trained, and training on them. */
static void test_alpaca_masked(nm_test *t) {
    if (!setup_data(t)) return;
    nm_err err = {0};
    const char *cache = tmp("id.kd");
    const char *vars[2] = {"name=Nomo", "author=Moat"};
    nm_distill_cache_params cp;
    nm_distill_cache_params_default(&cp);
    cp.teacher = MODEL;
    cp.data = nm_test_shared("data/identity.json");
    cp.vars = vars;
    cp.n_vars = 2;
    cp.seq_len = 128;
    cp.top_k = 8;
    cp.threads = 2;
    cp.out = cache;
    nm_distill_cache_info info;
    if (!CHECK_OK(t, nm_distill_cache_write(&cp, &info, NULL, &err), err)) return;
    /* the same data as training loads it: trained targets = entries */
    nm_tmodel *m;
    nm_vocab *v = NULL;
    nm_dataset d = {0};
    if (!CHECK_OK(t, nm_tmodel_open(MODEL, false, NULL, &m, &err), err)) return;
    CHECK_OK(t, nm_vocab_from_gguf(m->gguf, &v, NULL, &err), err);
    nm_data_opts o = {NM_DATA_AUTO, v, nm_chat_template_of_gguf(m->gguf), 128, true, false, vars, 2, NULL};
    if (o.tmpl == NM_CHAT_TEMPLATE_UNKNOWN) o.tmpl = NM_CHAT_TEMPLATE_DEFAULT;
    CHECK_OK(t, nm_dataset_load(cp.data, &o, &d, &err), err);
    CHECK(t, d.format == NM_DATA_ALPACA);
    CHECKF(t, info.n_positions == d.n_trained && info.n_positions < info.n_tokens / 2,
           "%lld entries, %lld trained targets, %lld tokens", (long long)info.n_positions, (long long)d.n_trained,
           (long long)info.n_tokens);
    CHECK(t, info.mask_prompt);
    nm_dataset_deinit(&d);
    nm_vocab_free(v);
    nm_tmodel_free(m);
    stopper r = {0};
    nm_train_params p = kd_params(tmp("id"), cache, &r);
    p.data = cp.data;
    p.vars = vars;
    p.n_vars = 2;
    p.seq_len = 128;
    p.steps = 2;
    p.val_split = 0.2; /* held-out examples leave the rows: the rest still find their entries */
    CHECK_OK(t, nm_train_run(&p, NULL, &err), err);
    CHECK(t, r.losses[1] > 0 && isfinite(r.losses[2]));
    /* without the vars the rows differ */
    p = kd_params(tmp("id2"), cache, &r);
    p.data = cp.data;
    p.seq_len = 128;
    CHECK(t, nm_train_run(&p, NULL, &err) == NM_ERR_ARG && strstr(err.msg, "not what the teacher cache"));
}

/* ======================================================================== */
/* students from the teacher's layers                                       */
/* ======================================================================== */

static void test_derive(nm_test *t) {
    nm_err err = {0};
    int32_t l[16];
    size_t n;
    CHECK_OK(t, nm_distill_layers_parse("every-2nd-layer", 5, l, &n, &err), err);
    CHECK(t, n == 3 && l[0] == 0 && l[1] == 2 && l[2] == 4);
    CHECK_OK(t, nm_distill_layers_parse("every-3rd-layer", 5, l, &n, &err), err);
    CHECK(t, n == 2 && l[0] == 1 && l[1] == 4);
    CHECK_OK(t, nm_distill_layers_parse("0,3", 5, l, &n, &err), err);
    CHECK(t, n == 2 && l[0] == 0 && l[1] == 3);
    const char *bad[] = {"", "every-0th-layer", "every-9th-layer", "5", "1,1", "1,", "a", "every-2nd-lair", "-1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECKF(t, nm_distill_layers_parse(bad[i], 5, l, &n, &err) == NM_ERR_ARG, "'%s' accepted", bad[i]);
    const char *model = nm_test_shared("models/stories260K.gguf");
    /* all layers: the same model, the same logits */
    const char *all = tmp("all.gguf"), *half = tmp("half.gguf");
    if (!CHECK_OK(t, nm_distill_derive(model, "0,1,2,3,4", all, NULL, &err), err)) return;
    if (!CHECK_OK(t, nm_distill_derive(model, "every-2nd-layer", half, NULL, &err), err)) return;
    nm_tmodel *a, *b, *h;
    CHECK_OK(t, nm_tmodel_open(model, false, NULL, &a, &err), err);
    CHECK_OK(t, nm_tmodel_open(all, false, NULL, &b, &err), err);
    CHECK_OK(t, nm_tmodel_open(half, false, NULL, &h, &err), err);
    if (!a || !b || !h) return;
    int32_t tok[6] = {1, 403, 407, 261, 378, 1000 % 512};
    float la[512], lb[512];
    CHECK_OK(t, nm_tmodel_logits(a, NULL, tok, 6, la, &err), err);
    CHECK_OK(t, nm_tmodel_logits(b, NULL, tok, 6, lb, &err), err);
    CHECK(t, !memcmp(la, lb, sizeof la));
    CHECK(t, h->hp.n_layer == 3 && h->hp.dim == a->hp.dim);
    /* block 1 of the student is block 2 of the teacher */
    const nm_gguf_tensor *x = nm_gguf_find_tensor(a->gguf, "blk.2.attn_q.weight");
    const nm_gguf_tensor *y = nm_gguf_find_tensor(h->gguf, "blk.1.attn_q.weight");
    CHECK(t, x && y && x->nbytes == y->nbytes && !memcmp(x->data, y->data, x->nbytes));
    CHECK(t, nm_gguf_find_tensor(h->gguf, "blk.3.attn_q.weight") == NULL);
    nm_tmodel_free(a);
    nm_tmodel_free(b);
    nm_tmodel_free(h);
    CHECK(t, nm_distill_derive(model, "7", tmp("x.gguf"), NULL, &err) == NM_ERR_ARG);
    CHECK(t, nm_distill_derive("/nonexistent.gguf", "0", tmp("x.gguf"), NULL, &err) != NM_OK);
}

/* ======================================================================== */
/* the command line                                                         */
/* ======================================================================== */

static int sh(const char *cmd, char **out) {
    size_t n = strlen(cmd) + 8;
    char *full = malloc(n);
    snprintf(full, n, "%s 2>&1", cmd);
    int rc = nm_test_sh(full, out);
    free(full);
    return rc;
}

static void test_cli(nm_test *t) {
    if (!setup_data(t)) return;
    const char *bin = nm_test_bin();
    char cmd[20480], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s distill --help", bin);
    CHECK(t, sh(cmd, &out) == 0 && strstr(out, "distill cache"));
    free(out);
    const char *bad[] = {"distill", "distill bogus", "distill cache --bogus", "distill cache -t x", "distill train",
                         "distill derive -t x", "distill info", "distill train --cache"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(cmd, sizeof cmd, "%s %s", bin, bad[i]);
        int rc = sh(cmd, &out);
        CHECKF(t, rc == 2, "'%s' exits %d", bad[i], rc);
        free(out);
    }
    /* a cache, checked against its teacher and another */
    const char *cache = tmp("cli.kd");
    snprintf(cmd, sizeof cmd, "%s distill cache -t %s --data %s --seq 64 --top-k 4 -o %s", bin, MODEL, OTHER, cache);
    CHECK(t, sh(cmd, &out) == 0 && strstr(out, "teacher cache written"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s distill info %s", bin, cache);
    CHECK(t, sh(cmd, &out) == 0 && strstr(out, "top-k 4"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s distill train --cache %s -t %s --data %s --out %s --steps 1 --quiet", bin, cache,
             nm_test_shared("models/stories260K-f16.gguf"), OTHER, tmp("cli-x"));
    CHECK(t, sh(cmd, &out) == 1 && strstr(out, "not made by this teacher"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s distill info %s", bin, GEN);
    CHECK(t, sh(cmd, &out) == 1 && strstr(out, "not a nomoat teacher cache"));
    free(out);
    /* the 3-layer student, trained fully, resumable */
    snprintf(cmd, sizeof cmd,
             "%s distill train --cache %s -t %s --init-from-teacher every-2nd-layer --data %s --out %s --steps 2 "
             "--batch 2 --lr 1e-3 --quiet",
             bin, cache, MODEL, OTHER, tmp("cli-s"));
    CHECK(t, sh(cmd, &out) == 0);
    free(out);
    snprintf(cmd, sizeof cmd, "%s distill train --resume %s --steps 3 --quiet && test -f %s/model.gguf", bin,
             tmp("cli-s"), tmp("cli-s"));
    CHECK(t, sh(cmd, &out) == 0);
    free(out);
    snprintf(cmd, sizeof cmd, "%s distill derive -t %s --layers 0,9 -o %s", bin, MODEL, tmp("y.gguf"));
    CHECK(t, sh(cmd, &out) == 1 && strstr(out, "outside"));
    free(out);
}

int main(void) {
    nm_test_run("loss_and_gradient_vs_float64", test_loss_vs_float64);
    nm_test_run("top_k_equal_vocab_is_full_kl", test_full_kl);
    nm_test_run("cache_vs_teacher_logits", test_cache_vs_teacher);
    nm_test_run("cache_hostile_input", test_hostile);
    nm_test_run("model_gradient_through_head_hook", test_model_gradient);
    nm_test_run("teacher_into_itself_zero_loss", test_self_distill_zero);
    nm_test_run("resume_exact_on_stack", test_resume_on_stack);
    nm_test_run("mismatch_errors", test_mismatch);
    nm_test_run("alpaca_masked_data", test_alpaca_masked);
    nm_test_run("derive_from_teacher_layers", test_derive);
    nm_test_run("cli", test_cli);
    return nm_test_finish();
}
