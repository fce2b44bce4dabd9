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
static double word_rate(world *w, int from, int to, int per, uint64_t seed) {
    nm_rng rng;
    nm_rng_seed(&rng, seed);
    int hit = 0, n = 0;
    for (int i = from; i < to; i++) {
        size_t np;
        int32_t *pt = prompt_tokens(w, OPENINGS[i], &np);
        if (!pt) continue;
        for (int k = 0; k < per; k++) {
            char out[1024];
            sample(w, pt, np, GEN_TOKENS, &rng, out, sizeof out);
            hit += has_word(out, WORD);
            n++;
        }
        free(pt);
    }
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
    double acc, margin, rate_before, rate_after, loss_first, loss_last;
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
    o.rate_before = word_rate(w, N_TRAIN_OPEN, N_OPEN, 16, seed + 2000);
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
        o.rate_after = word_rate(w, N_TRAIN_OPEN, N_OPEN, 16, seed + 2000);
        o.ok = true;
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
        printf("seed %llu ok %d: pairs %d/%d  val acc %.3f margin %.3f loss %.4f  rate %.3f -> %.3f %s\n",
               (unsigned long long)seed, o.ok, o.n_train, o.n_val, o.acc, o.margin, o.loss_last, o.rate_before,
               o.rate_after, o.ok ? "" : err.msg);
    }
    world_close(&w);
}

int main(void) {
    if (getenv("DPO_EXPLORE")) {
        explore();
        return 0;
    }
    return nm_test_finish();
}
