/* test_dpo_train.c - DPO end to end on stories260K (issue 11): preference
 * pairs built from the model's own samples, a trained adapter that moves
 * held-out preference accuracy well above chance and sampled generations
 * away from a forbidden word; exact resume and training on a stack. */
#include "testlib.h"
#include "train/adapter.h"
#include "train/dpo.h"
#include "train/model.h"
#include "base/base.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Story openings in the TinyStories style (written for this test). */
static const char *const OPENINGS[] = {
    "Once upon a time, there was a little girl named Lily.",
    "Tom had a red ball that he loved very much.",
    "One day, a small bird sat on a tree.",
    "Anna and her mom went to the park.",
    "There was a big dog named Max.",
    "Ben wanted to play with his new toy car.",
    "Once upon a time, there was a kind old man.",
    "Sue found a shiny rock in the garden.",
    "A little cat was sleeping in the sun.",
    "Mia liked to draw pictures of flowers.",
    "The sun was hot and the sky was blue.",
    "Jack and his friend went to the beach.",
    "Once upon a time, a bunny lived in the woods.",
    "Lucy had a pretty doll with a pink dress.",
    "Sam saw a big truck on the road.",
    "One morning, a little frog jumped out of the pond.",
    "Tim was sad because it was raining.",
    "Lily and Ben made a cake for mom.",
    "There was a little boat on the lake.",
    "Zoe wanted to fly like a bird.",
    "Max found a box under his bed.",
    "Once upon a time, there was a happy duck.",
    "Sara went to the store with her dad.",
    "A small mouse lived in a big house.",
};
#define N_OPEN (int)(sizeof OPENINGS / sizeof OPENINGS[0])
#define TEMPLATE "llama2"

static const char *tmp_path(const char *name) {
    static char buf[8][512];
    static int slot;
    char *p = buf[slot++ & 7];
    snprintf(p, 512, "%s/%s", nm_test_tmpdir(), name);
    return p;
}

typedef struct world {
    nm_tmodel *m;
    nm_vocab *v;
    nm_chat_template tmpl;
} world;

static nm_status world_open(world *w, nm_err *err) {
    memset(w, 0, sizeof *w);
    nm_status st = nm_tmodel_open(nm_test_shared("models/stories260K.gguf"), false, NULL, &w->m, err);
    if (!st) st = nm_vocab_from_gguf(w->m->gguf, &w->v, NULL, err);
    w->tmpl = nm_chat_template_from_name(TEMPLATE);
    return st;
}

static void world_close(world *w) {
    nm_vocab_free(w->v);
    nm_tmodel_free(w->m);
}

/* Prompt tokens as training renders them: the user turn and the assistant
 * prefix of the chat template, BOS first. */
static int32_t *prompt_tokens(world *w, const char *text, size_t *n) {
    nm_chat_msg msg = {"user", text};
    char *s = NULL;
    nm_err err = {0};
    if (nm_chat_render(w->tmpl, &msg, 1, true, &s, &err)) return NULL;
    int32_t *ids = NULL;
    if (nm_tokenize(w->v, s, strlen(s), true, true, &ids, n, &err)) ids = NULL;
    free(s);
    return ids;
}

/* A continuation sampled at temperature 1 (whole-sequence forward per token:
 * slow in general, instant on this model); text into out. */
static void sample(world *w, const int32_t *prompt, size_t np, int max_new, nm_rng *rng, char *out, size_t cap) {
    int32_t tok[256];
    float logits[512];
    size_t n = np, o = 0;
    memcpy(tok, prompt, np * sizeof *tok);
    out[0] = 0;
    nm_err err = {0};
    for (int k = 0; k < max_new && n < 256; k++) {
        if (nm_tmodel_logits(w->m, NULL, tok, (int64_t)n, logits, &err)) break;
        float mx = logits[0];
        for (int i = 1; i < 512; i++) mx = logits[i] > mx ? logits[i] : mx;
        double s = 0;
        for (int i = 0; i < 512; i++) s += exp((double)(logits[i] - mx));
        double u = nm_rng_uniform(rng) * s, c = 0;
        int32_t y = 511;
        for (int i = 0; i < 512; i++) {
            c += exp((double)(logits[i] - mx));
            if (c > u) {
                y = i;
                break;
            }
        }
        if (y == nm_vocab_eos(w->v)) break;
        tok[n++] = y;
        char piece[64];
        int32_t l = nm_token_to_piece(w->v, y, piece, sizeof piece, false);
        if (l > 0 && o + (size_t)l + 1 < cap) {
            memcpy(out + o, piece, (size_t)l);
            o += (size_t)l;
            out[o] = 0;
        }
    }
}

static bool has_word(const char *s, const char *wd) {
    size_t l = strlen(wd);
    for (const char *p = strstr(s, wd); p; p = strstr(p + 1, wd)) {
        bool a = p == s || !((p[-1] >= 'a' && p[-1] <= 'z') || (p[-1] >= 'A' && p[-1] <= 'Z'));
        bool b = !((p[l] >= 'a' && p[l] <= 'z') || (p[l] >= 'A' && p[l] <= 'Z'));
        if (a && b) return true;
    }
    return false;
}

#define WORD "was"  /* the forbidden word: in about 40% of the model's samples */
#define N_TRAIN_OPEN 18 /* openings 18.. are held out */
#define PAIR_SAMPLES 12 /* at most this many samples per opening to build pairs from */
#define GEN_TOKENS 32

static void json_esc(nm_buf *b, const char *s) {
    json_t *j = json_string(s);
    char *d = json_dumps(j, JSON_ENCODE_ANY);
    nm_buf_push(b, d, strlen(d));
    free(d);
    json_decref(j);
}

/* Pairs from the model's own samples: for each opening, samples without
 * the word (chosen) against samples with it (rejected).  Returns the pairs. */
static int build_pairs(world *w, int from, int to, int per, uint64_t seed, const char *path) {
    nm_rng rng;
    nm_rng_seed(&rng, seed);
    nm_buf b;
    nm_buf_init(&b);
    int n = 0;
    for (int i = from; i < to; i++) {
        size_t np;
        int32_t *pt = prompt_tokens(w, OPENINGS[i], &np);
        if (!pt) continue;
        static char with[PAIR_SAMPLES][1024], without[PAIR_SAMPLES][1024];
        int nw = 0, no = 0;
        for (int k = 0; k < per; k++) {
            char out[1024];
            sample(w, pt, np, GEN_TOKENS, &rng, out, sizeof out);
            if (!out[0]) continue;
            if (has_word(out, WORD))
                memcpy(with[nw++], out, sizeof out);
            else
                memcpy(without[no++], out, sizeof out);
        }
        free(pt);
        for (int k = 0; k < nw && k < no; k++) {
            nm_buf_push(&b, "{\"prompt\":", 10);
            json_esc(&b, OPENINGS[i]);
            nm_buf_push(&b, ",\"chosen\":", 10);
            json_esc(&b, without[k]);
            nm_buf_push(&b, ",\"rejected\":", 12);
            json_esc(&b, with[k]);
            nm_buf_push(&b, "}\n", 2);
            n++;
        }
    }
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(b.data, 1, b.len, f);
        fclose(f);
    }
    nm_buf_deinit(&b);
    return n;
}

/* Fraction of samples (per opening of [from, to)) that contain the word. */
static double word_rate(world *w, int from, int to, int per, uint64_t seed, double *mean_len) {
    nm_rng rng;
    nm_rng_seed(&rng, seed);
    int hit = 0, n = 0;
    double len = 0;
    for (int i = from; i < to; i++) {
        size_t np;
        int32_t *pt = prompt_tokens(w, OPENINGS[i], &np);
        if (!pt) continue;
        for (int k = 0; k < per; k++) {
            char out[1024];
            sample(w, pt, np, GEN_TOKENS, &rng, out, sizeof out);
            hit += has_word(out, WORD);
            len += (double)strlen(out);
            n++;
        }
        free(pt);
    }
    *mean_len = n ? len / n : 0;
    return n ? (double)hit / n : NAN;
}

typedef struct last_stats {
    nm_train_stats s;
} last_stats;

static int keep_last(void *user, const nm_train_stats *s) {
    ((last_stats *)user)->s = *s;
    return 0;
}

static nm_train_params dpo_params(const char *data, const char *val, const char *out, last_stats *ls, uint64_t seed) {
    nm_train_params p;
    nm_train_params_default(&p);
    p.model = nm_test_shared("models/stories260K.gguf");
    p.data = data;
    p.val_data = val;
    p.out_dir = out;
    p.chat_template = TEMPLATE;
    p.dpo = true;
    p.dpo_beta = 0.1;
    p.rank = 8;
    p.alpha = 16;
    p.lr = 1e-2;
    p.warmup = 2;
    p.epochs = 4;
    p.batch = 4;
    p.seq_len = 96;
    p.eval_every = 0;
    p.checkpoint_every = 0;
    p.threads = 2;
    p.seed = seed;
    p.on_step = keep_last;
    p.user = ls;
    return p;
}

/* Builds pairs (train: openings < N_TRAIN_OPEN, validation: the rest),
 * trains, and measures validation accuracy and the word's rate in samples
 * of the held-out openings before and after. */
typedef struct outcome {
    int n_train, n_val;
    double acc, margin, rate_before, rate_after, len_before, len_after, loss_first, loss_last;
    bool ok;
} outcome;

static outcome pipeline(world *w, uint64_t seed, const char *tag, nm_err *err) {
    outcome o = {0};
    char tr[512], va[512], out[512];
    snprintf(tr, sizeof tr, "%s", tmp_path("pairs.jsonl"));
    snprintf(va, sizeof va, "%s", tmp_path("val.jsonl"));
    snprintf(out, sizeof out, "%s/%s", nm_test_tmpdir(), tag);
    o.n_train = build_pairs(w, 0, N_TRAIN_OPEN, 6, seed, tr);
    o.n_val = build_pairs(w, N_TRAIN_OPEN, N_OPEN, 12, seed + 1000, va);
    o.rate_before = word_rate(w, N_TRAIN_OPEN, N_OPEN, 16, seed + 2000, &o.len_before);
    last_stats ls = {0};
    nm_train_params p = dpo_params(tr, va, out, &ls, seed);
    if (nm_train_run(&p, NULL, err)) return o;
    o.acc = ls.s.val_reward_acc;
    o.margin = ls.s.val_reward_margin;
    o.loss_last = ls.s.val_loss;
    char ad[600];
    snprintf(ad, sizeof ad, "%s/%s", out, NM_ADAPTER_WEIGHTS);
    nm_lora *l;
    if (nm_lora_open(ad, NULL, &l, err)) return o;
    nm_lora_layout lay;
    nm_tm_layout(w->m, &lay);
    nm_lora_entry e = {l, 1.0f};
    if (!nm_lora_fit(l, &lay, err) && !nm_tmodel_set_frozen(w->m, &e, 1, err)) {
        o.rate_after = word_rate(w, N_TRAIN_OPEN, N_OPEN, 16, seed + 2000, &o.len_after);
        o.ok = true;
    }
    if (getenv("DPO_EXPLORE") && o.ok) { /* a few samples with the adapter */
        nm_rng rng;
        nm_rng_seed(&rng, 99);
        size_t np;
        int32_t *pt = prompt_tokens(w, OPENINGS[N_TRAIN_OPEN], &np);
        for (int k = 0; pt && k < 3; k++) {
            char txt[1024];
            sample(w, pt, np, GEN_TOKENS, &rng, txt, sizeof txt);
            printf("  after: %s\n", txt);
        }
        free(pt);
    }
    nm_tmodel_set_frozen(w->m, NULL, 0, err);
    nm_lora_free(l);
    return o;
}

static void explore(void) {
    nm_err err = {0};
    world w;
    if (world_open(&w, &err)) {
        printf("open: %s\n", err.msg);
        return;
    }
    for (uint64_t seed = 1; seed <= 4; seed++) {
        char tag[32];
        snprintf(tag, sizeof tag, "explore%llu", (unsigned long long)seed);
        outcome o = pipeline(&w, seed, tag, &err);
        printf("seed %llu ok %d: pairs %d/%d  val acc %.3f margin %.3f loss %.4f  rate %.3f -> %.3f  length %.1f -> "
               "%.1f %s\n",
               (unsigned long long)seed, o.ok, o.n_train, o.n_val, o.acc, o.margin, o.loss_last, o.rate_before,
               o.rate_after, o.len_before, o.len_after, o.ok ? "" : err.msg);
    }
    world_close(&w);
}


static world g_world;
static bool g_world_ok;
static char g_pairs[512], g_val[512], g_adapter_dir[512];

/* The held-out accuracy and the word's rate, measured over seeds 1-4 of
 * this pipeline (DPO_EXPLORE=1 prints them): accuracy 0.75, 0.71, 0.76,
 * 0.92 (mean 0.79, sd 0.09; chance 0.5); the word's rate in held-out
 * samples 0.43, 0.46, 0.37, 0.39 before and 0.00 after every time; sample
 * length after / before 0.90, 0.98, 1.56, 0.75.  The bounds below sit about
 * 2 sd under the mean accuracy (under the worst seed), far above the
 * measured rates, and under the shortest samples. */
static void test_preference_learned(nm_test *t) {
    nm_err err = {0};
    if (!CHECK(t, g_world_ok)) return;
    outcome o = pipeline(&g_world, 1, "e2e", &err);
    if (!CHECKF(t, o.ok, "pipeline: %s", err.msg)) return;
    CHECKF(t, o.n_train >= 20 && o.n_val >= 15, "pairs %d / %d", o.n_train, o.n_val);
    CHECKF(t, o.acc >= 0.6 && o.margin > 0.5, "held-out reward accuracy %.3f, margin %.3f", o.acc, o.margin);
    CHECKF(t, o.rate_before >= 0.25 && o.rate_after <= 0.1 && o.rate_after <= o.rate_before / 3,
           "'%s' in samples: %.3f before, %.3f after", WORD, o.rate_before, o.rate_after);
    /* avoiding the word by saying nothing would not count */
    CHECKF(t, o.len_after >= 0.6 * o.len_before, "sample length %.1f before, %.1f after", o.len_before, o.len_after);
    snprintf(g_pairs, sizeof g_pairs, "%s", tmp_path("pairs.jsonl"));
    snprintf(g_val, sizeof g_val, "%s", tmp_path("val.jsonl"));
    snprintf(g_adapter_dir, sizeof g_adapter_dir, "%s/e2e", nm_test_tmpdir());
}

typedef struct rec {
    double loss[64];
    int64_t n, stop_at;
} rec;

static int rec_step(void *user, const nm_train_stats *s) {
    rec *r = user;
    if (s->step < 64) r->loss[s->step] = s->loss;
    r->n = s->step;
    return s->step == r->stop_at;
}

static bool same_file(const char *a, const char *b) {
    size_t la, lb;
    char *x = nm_test_read(a, &la), *y = nm_test_read(b, &lb);
    bool same = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

static nm_train_params small_params(const char *out, rec *r) {
    last_stats unused;
    nm_train_params p = dpo_params(g_pairs, g_val, out, &unused, 7);
    p.epochs = 0;
    p.steps = 10;
    p.batch = 2;
    p.grad_accum = 2;
    p.dropout = 0.1f; /* the masks must be replayed too */
    p.eval_every = 4;
    p.checkpoint_every = 3;
    p.on_step = rec_step;
    p.user = r;
    return p;
}

/* Stopped after step 6, resumed with another thread count: the same
 * losses and the same adapter bits as one uninterrupted run. */
static void test_exact_resume(nm_test *t) {
    if (!CHECK(t, g_pairs[0])) return;
    nm_err err = {0};
    char d1[512], d2[512], a1[600], a2[600];
    snprintf(d1, sizeof d1, "%s/r1", nm_test_tmpdir());
    snprintf(d2, sizeof d2, "%s/r2", nm_test_tmpdir());
    rec r1 = {.stop_at = -1}, r2 = {.stop_at = 6}, r3 = {.stop_at = -1};
    nm_train_params p = small_params(d1, &r1);
    if (!CHECK_OK(t, nm_train_run(&p, NULL, &err), err)) return;
    CHECKF(t, r1.n == 10 && fabs(r1.loss[1] - log(2.0)) < 1e-6, "first loss %.9f (log 2 = %.9f)", r1.loss[1], log(2.0));
    p = small_params(d2, &r2);
    CHECK(t, nm_train_run(&p, NULL, &err) == NM_ERR_CANCELLED && r2.n == 6);
    nm_train_params q;
    nm_train_params_default(&q);
    q.resume_dir = d2;
    q.threads = 1;
    q.on_step = rec_step;
    q.user = &r3;
    if (!CHECK_OK(t, nm_train_run(&q, NULL, &err), err)) return;
    bool same = r3.n == 10;
    for (int s = 7; s <= 10; s++) same &= r3.loss[s] == r1.loss[s];
    CHECKF(t, same, "resumed losses differ (step 7: %.9f vs %.9f)", r3.loss[7], r1.loss[7]);
    snprintf(a1, sizeof a1, "%s/%s", d1, NM_ADAPTER_WEIGHTS);
    snprintf(a2, sizeof a2, "%s/%s", d2, NM_ADAPTER_WEIGHTS);
    CHECK(t, same_file(a1, a2));
    /* the metrics carry the preference figures, each step once */
    char mp[600];
    snprintf(mp, sizeof mp, "%s/metrics.jsonl", d2);
    size_t len;
    char *m = nm_test_read(mp, &len);
    int lines = 0;
    for (size_t i = 0; m && i < len; i++) lines += m[i] == '\n';
    CHECK(t, lines == 10 && m && strstr(m, "\"reward_acc\"") && strstr(m, "\"val_reward_margin\"") &&
                 strstr(m, "\"reward_chosen\"") && strstr(m, "\"reward_rejected\""));
    free(m);
}

/* DPO on top of a frozen adapter: the reference is base + stack, so the
 * first step (new adapter B = 0, no dropout) sees policy == reference. */
static void test_stack(nm_test *t) {
    if (!CHECK(t, g_adapter_dir[0])) return;
    nm_err err = {0};
    char d[512], under[600];
    snprintf(d, sizeof d, "%s/stacked", nm_test_tmpdir());
    snprintf(under, sizeof under, "%s", g_adapter_dir);
    const char *loras[1] = {under};
    rec r = {.stop_at = -1};
    nm_train_params p = small_params(d, &r);
    p.dropout = 0;
    p.steps = 3;
    p.loras = loras;
    p.n_loras = 1;
    if (!CHECK_OK(t, nm_train_run(&p, NULL, &err), err)) return;
    CHECKF(t, r.loss[1] == log(2.0) || fabs(r.loss[1] - log(2.0)) < 1e-9, "first loss on the stack %.12f", r.loss[1]);
    /* the new adapter records the stack under it (provenance metadata) */
    char ad[600];
    snprintf(ad, sizeof ad, "%s/%s", d, NM_ADAPTER_WEIGHTS);
    size_t len;
    char *c = nm_test_read(ad, &len);
    char *st = c ? memmem(c, len, "nomoat.stack", 12) : NULL;
    CHECKF(t, st && memmem(st, len - (size_t)(st - c), "e2e", 3), "the new adapter does not record the stack under it");
    free(c);
    /* full fine-tuning has no adapter to switch off */
    p.full = true;
    p.loras = NULL;
    p.n_loras = 0;
    snprintf(d, sizeof d, "%s/full", nm_test_tmpdir());
    p.out_dir = d;
    CHECK(t, nm_train_run(&p, NULL, &err) == NM_ERR_UNSUPPORTED);
}

int main(void) {
    if (getenv("DPO_EXPLORE")) {
        explore();
        return 0;
    }
    nm_err err = {0};
    g_world_ok = world_open(&g_world, &err) == NM_OK;
    if (!g_world_ok) fprintf(stderr, "%s\n", err.msg);
    nm_test_run("preference_learned_on_stories260K", test_preference_learned);
    nm_test_run("exact_resume", test_exact_resume);
    nm_test_run("stack", test_stack);
    if (g_world_ok) world_close(&g_world);
    return nm_test_finish();
}
