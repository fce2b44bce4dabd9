/* test_train_run.c - the trainer end to end on stories260K: bit-identical
 * runs, exact resume (after a stop, a SIGKILL or a SIGINT, with another
 * thread count), lower validation loss on the model's own kind of text,
 * full fine-tuning, the PEFT adapter round trip. */
#include "testlib.h"
#include "train/adapter.h"
#include "train/data.h"
#include "base/base.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Short stories in the style of TinyStories (written for this test). */
static const char *const STORIES[] = {
    "Once upon a time, there was a little girl named Lily. She loved to play in the garden with her red ball. One "
    "day, the ball rolled under a big tree. Lily looked and looked. Then her dog Max ran to the tree and found the "
    "ball. Lily was very happy and gave Max a big hug.",
    "Tom was a small boy who liked to build with blocks. He made a tall tower in his room. His little sister Sue "
    "wanted to help. Tom was scared she would knock it down, but he said yes. Together they made the tallest tower "
    "ever. Mom took a picture and they all smiled.",
    "One sunny day, a little bird sat on a branch. The bird was sad because it could not fly high. A kind owl came "
    "and said, \"Flap your wings and do not be afraid.\" The little bird tried again and again. At last it flew up "
    "to the sky. The bird was proud and happy.",
    "Anna had a pretty doll with a pink dress. She took the doll to the park every day. One day, she lost the doll "
    "near the pond. Anna cried. A nice old man found the doll and gave it back to her. Anna said, \"Thank you!\" "
    "and ran home with a big smile.",
    "Ben and his mom went to the store. Ben saw a big box of candy. He wanted it very much. Mom said, \"We can buy "
    "apples today.\" Ben was sad at first, but the apples were sweet and red. He ate one in the car and said it was "
    "the best apple ever.",
    "There was a cat named Fluffy who liked to sleep in the sun. One day, a loud noise woke her up. It was a little "
    "mouse with a drum. Fluffy wanted to be angry, but the song was fun. She danced with the mouse until the sun "
    "went down.",
    "Sam had a blue boat. He liked to play with it in the bath. One day he took the boat to the lake. The wind was "
    "strong and the boat went far away. Sam was worried. His dad swam out and brought the boat back. Sam learned to "
    "hold the string.",
    "Mia found a small seed in the yard. She put it in a pot with dirt and gave it water. Every day she looked at "
    "the pot. One morning, a tiny green plant was there. Mia was so happy. She told her friends that the seed grew "
    "into a flower.",
    "A little dog named Spot wanted to play with the big kids. The kids were playing ball. Spot ran and got the "
    "ball. The kids laughed and said, \"Good dog!\" They played together all day. Spot was tired but very happy.",
    "Lucy and Jack went to the beach with their mom. They made a big sand castle with a flag on top. A wave came "
    "and washed part of it away. Jack was sad, but Lucy said, \"Let's build it again!\" They made it even better "
    "than before.",
    "Once there was a bunny who liked carrots. One day, he could not find any carrots. He asked the cow, the pig "
    "and the duck. The duck showed him a garden full of carrots. The bunny said thank you and shared the carrots "
    "with his friends.",
    "Max had a red kite. He ran fast in the park and the kite went up high. Then the string broke and the kite flew "
    "away. Max was sad. A girl named Zoe saw the kite in a tree. She helped Max get it down, and they became good "
    "friends.",
};
#define N_TRAIN 9 /* the rest is validation */

static char *join_stories(int from, int to) {
    nm_buf b;
    nm_buf_init(&b);
    for (int i = from; i < to; i++) {
        nm_buf_push(&b, STORIES[i], strlen(STORIES[i]));
        nm_buf_push(&b, "\n", 1);
    }
    nm_buf_push(&b, "", 1);
    return (char *)b.data;
}

static const char *tmp_path(const char *name) {
    static char buf[8][512];
    static int slot;
    char *p = buf[slot++ & 7];
    snprintf(p, 512, "%s/%s", nm_test_tmpdir(), name);
    return p;
}

static const char *write_file(const char *name, const char *text) {
    const char *p = tmp_path(name);
    FILE *f = fopen(p, "wb");
    fputs(text, f);
    fclose(f);
    return p;
}

static char train_txt[512], val_txt[512];

static void setup_data(void) {
    char *tr = join_stories(0, N_TRAIN), *va = join_stories(N_TRAIN, (int)(sizeof STORIES / sizeof STORIES[0]));
    snprintf(train_txt, sizeof train_txt, "%s", write_file("train.txt", tr));
    snprintf(val_txt, sizeof val_txt, "%s", write_file("val.txt", va));
    free(tr);
    free(va);
}

/* ---- losses recorded through on_step, optional stop ---- */
typedef struct rec {
    double loss[256];
    double val[256];
    int64_t n;
    int64_t stop_at;     /* on_step returns 1 at this step */
    int polls, stop_poll; /* should_stop returns true at this poll */
} rec;

static int rec_step(void *user, const nm_train_stats *s) {
    rec *r = user;
    if (s->step < 256) {
        r->loss[s->step] = s->loss;
        r->val[s->step] = s->val_loss;
    }
    r->n = s->step;
    return s->step == r->stop_at;
}

static bool rec_stop(void *user) {
    rec *r = user;
    return ++r->polls == r->stop_poll;
}

static nm_train_params base_params(const char *out, rec *r) {
    nm_train_params p;
    nm_train_params_default(&p);
    p.model = nm_test_shared("models/stories260K.gguf");
    p.data = train_txt;
    p.val_data = val_txt;
    p.out_dir = out;
    p.format = "text";
    p.rank = 4;
    p.alpha = 8;
    p.dropout = 0.1f;
    p.lr = 2e-3;
    p.warmup = 2;
    p.steps = 12;
    p.batch = 2;
    p.seq_len = 32;
    p.grad_accum = 2;
    p.eval_every = 4;
    p.checkpoint_every = 5;
    p.threads = 1;
    p.on_step = rec_step;
    p.should_stop = rec_stop;
    p.user = r;
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

static const char *adapter_of(const char *dir) {
    static char buf[4][600];
    static int slot;
    char *b = buf[slot++ & 3];
    snprintf(b, 600, "%s/%s", dir, NM_ADAPTER_WEIGHTS);
    return b;
}

static void test_deterministic_and_resume(nm_test *t) {
    nm_err err = {0};
    rec r1 = {.stop_at = -1}, r2 = {.stop_at = -1}, r3 = {.stop_at = 7}, r4 = {.stop_at = -1};
    const char *d1 = tmp_path("run1"), *d2 = tmp_path("run2"), *d3 = tmp_path("run3");
    nm_train_params p = base_params(d1, &r1);
    if (!CHECK_OK(t, nm_train_run(&p, NULL, &err), err)) return;
    CHECK(t, r1.n == 12 && isfinite(r1.loss[12]) && isfinite(r1.val[12]));
    /* the same configuration again: the same bits */
    p = base_params(d2, &r2);
    CHECK_OK(t, nm_train_run(&p, NULL, &err), err);
    CHECK(t, same_file(adapter_of(d1), adapter_of(d2)));
    CHECK(t, memcmp(r1.loss, r2.loss, sizeof r1.loss) == 0);
    /* stopped after step 7, resumed with two threads: the same losses and adapter */
    p = base_params(d3, &r3);
    CHECK(t, nm_train_run(&p, NULL, &err) == NM_ERR_CANCELLED);
    CHECK(t, r3.n == 7);
    nm_train_params q;
    nm_train_params_default(&q);
    q.resume_dir = d3;
    q.threads = 2;
    q.on_step = rec_step;
    q.user = &r4;
    CHECK_OK(t, nm_train_run(&q, NULL, &err), err);
    CHECK(t, r4.n == 12);
    bool same = true;
    for (int s = 8; s <= 12; s++) same &= r4.loss[s] == r1.loss[s] && (isnan(r1.val[s]) || r4.val[s] == r1.val[s]);
    CHECKF(t, same, "resumed losses differ (step 8: %.9f vs %.9f)", r4.loss[8], r1.loss[8]);
    CHECK(t, same_file(adapter_of(d1), adapter_of(d3)));
    /* metrics.jsonl of the resumed run has each step once */
    size_t len;
    char *m = nm_test_read(tmp_path("run3/metrics.jsonl"), &len);
    int lines = 0;
    for (size_t i = 0; m && i < len; i++) lines += m[i] == '\n';
    CHECK(t, lines == 12);
    free(m);
    /* a run never overwrites another */
    rec r5 = {.stop_at = -1};
    p = base_params(d1, &r5);
    CHECK(t, nm_train_run(&p, NULL, &err) == NM_ERR_ARG && strstr(err.msg, "--resume"));
}

/* should_stop inside a step: the step is discarded, the checkpoint holds the
 * state before it, and the resumed run still ends with the same bits. */
static void test_stop_inside_step(nm_test *t) {
    nm_err err = {0};
    rec r1 = {.stop_at = -1, .stop_poll = 9}, r2 = {.stop_at = -1};
    const char *d = tmp_path("run4");
    nm_train_params p = base_params(d, &r1); /* 2 polls per step: stops inside step 5 */
    CHECK(t, nm_train_run(&p, NULL, &err) == NM_ERR_CANCELLED);
    CHECK(t, r1.n == 4);
    nm_train_params q;
    nm_train_params_default(&q);
    q.resume_dir = d;
    q.on_step = rec_step;
    q.user = &r2;
    CHECK_OK(t, nm_train_run(&q, NULL, &err), err);
    CHECK(t, same_file(adapter_of(tmp_path("run1")), adapter_of(d)));
    /* resuming a finished run changes nothing */
    CHECK_OK(t, nm_train_run(&q, NULL, &err), err);
    CHECK(t, same_file(adapter_of(tmp_path("run1")), adapter_of(d)));
}

static void test_resume_guards(nm_test *t) {
    nm_err err = {0};
    nm_train_params q;
    nm_train_params_default(&q);
    q.resume_dir = tmp_path("run1");
    q.data = val_txt; /* other data than the run was trained on */
    CHECK(t, nm_train_run(&q, NULL, &err) == NM_ERR_ARG && strstr(err.msg, "not what this run was trained on"));
    q.data = NULL;
    q.model = nm_test_shared("models/stories260K-f16.gguf");
    CHECK(t, nm_train_run(&q, NULL, &err) == NM_ERR_ARG && strstr(err.msg, "base model"));
    q.model = NULL;
    q.resume_dir = tmp_path("nothing-here");
    CHECK(t, nm_train_run(&q, NULL, &err) == NM_ERR_IO);
    /* a damaged state file is a clean error */
    const char *d = tmp_path("run2");
    char sp[600];
    snprintf(sp, sizeof sp, "%s/trainer_state.safetensors", d);
    FILE *f = fopen(sp, "r+b");
    if (f) {
        fseek(f, 20, SEEK_SET);
        fputs("garbage", f);
        fclose(f);
    }
    q.resume_dir = d;
    CHECK(t, nm_train_run(&q, NULL, &err) == NM_ERR_FORMAT);
}

/* ---- the CLI: SIGKILL and SIGINT at a random point, then --resume ---- */

static int sh(const char *fmt, const char *a, const char *b, char **out) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    return nm_test_sh(cmd, out);
}

static char cli_args[2048];

static int64_t state_step(const char *dir) {
    char p[600];
    snprintf(p, sizeof p, "%s/trainer_state.safetensors", dir);
    nm_st *s;
    if (nm_st_open(p, &s, NULL)) return -1;
    const char *j = nm_st_meta(s, "nomoat.trainer");
    const char *k = j ? strstr(j, "\"step\":") : NULL;
    int64_t step = k ? atoll(k + 7) : -1;
    nm_st_free(s);
    return step;
}

static void test_cli_kill_and_resume(nm_test *t) {
    snprintf(cli_args, sizeof cli_args,
             "%s train -m %s --data %s --format text --rank 4 --alpha 8 --targets q,v,down --seq 32 --batch 1 "
             "--steps 150 --checkpoint-every 3 --lr 1e-3 --threads 1 --quiet",
             nm_test_bin(), nm_test_shared("models/stories260K.gguf"), train_txt);
    const char *ref = tmp_path("cli-ref"), *kill = tmp_path("cli-kill"), *intr = tmp_path("cli-int");
    char *out = NULL;
    int rc = sh("%s --out %s 2>&1", cli_args, ref, &out);
    CHECKF(t, rc == 0, "reference run failed (%d): %s", rc, out ? out : "");
    free(out);
    /* SIGKILL as soon as the first checkpoint is there */
    char script[4096];
    snprintf(script, sizeof script,
             "exec 2>/dev/null; %s --out %s >/dev/null & pid=$!; "
             "for i in $(seq 1 2000); do [ -f %s/trainer_state.safetensors ] && break; sleep 0.005; done; "
             "kill -9 $pid; wait $pid; echo rc=$?",
             cli_args, kill, kill);
    rc = nm_test_sh(script, &out);
    CHECKF(t, out && strstr(out, "rc=137"), "killed run: %s", out ? out : "");
    free(out);
    int64_t at = state_step(kill);
    CHECKF(t, at > 0 && at < 150, "checkpoint at step %lld: the kill did not land mid-run", (long long)at);
    rc = sh("%s train --resume %s --quiet 2>&1", nm_test_bin(), kill, &out);
    CHECKF(t, rc == 0, "resume after SIGKILL failed: %s", out ? out : "");
    free(out);
    char a[600], b[600];
    snprintf(a, sizeof a, "%s/%s", ref, NM_ADAPTER_WEIGHTS);
    snprintf(b, sizeof b, "%s/%s", kill, NM_ADAPTER_WEIGHTS);
    CHECK(t, same_file(a, b));
    /* SIGINT: a checkpoint, exit status 130, then the resume completes */
    snprintf(script, sizeof script,
             "%s --out %s >/dev/null 2>%s.err & pid=$!; "
             "for i in $(seq 1 2000); do [ -f %s/trainer_state.safetensors ] && break; sleep 0.005; done; "
             "kill -INT $pid; wait $pid; echo rc=$?",
             cli_args, intr, intr, intr);
    rc = nm_test_sh(script, &out);
    CHECKF(t, out && strstr(out, "rc=130"), "interrupted run: %s", out ? out : "");
    free(out);
    snprintf(a, sizeof a, "%s.err", intr);
    char *errtext = nm_test_read(a, NULL);
    CHECKF(t, errtext && strstr(errtext, "interrupted") && strstr(errtext, "--resume"), "stderr: %s",
           errtext ? errtext : "");
    free(errtext);
    at = state_step(intr);
    CHECKF(t, at > 0 && at < 150, "SIGINT checkpoint at step %lld", (long long)at);
    rc = sh("%s train --resume %s --quiet 2>&1", nm_test_bin(), intr, &out);
    CHECK(t, rc == 0);
    free(out);
    snprintf(a, sizeof a, "%s/%s", ref, NM_ADAPTER_WEIGHTS);
    snprintf(b, sizeof b, "%s/%s", intr, NM_ADAPTER_WEIGHTS);
    CHECK(t, same_file(a, b));
}

static void test_cli_usage(nm_test *t) {
    char *out = NULL;
    int rc = sh("%s train --rank x%s 2>&1", nm_test_bin(), "", &out);
    CHECK(t, rc == 2 && out && strstr(out, "--rank"));
    free(out);
    rc = sh("%s train -m %s 2>&1", nm_test_bin(), nm_test_shared("models/stories260K.gguf"), &out);
    CHECK(t, rc == 2 && out && strstr(out, "--data"));
    free(out);
    rc = sh("%s train --help%s", nm_test_bin(), "", &out);
    CHECK(t, rc == 0 && out && strstr(out, "--resume"));
    free(out);
    rc = sh("%s train -m %s --data /nonexistent.json --out /tmp/x 2>&1", nm_test_bin(),
            nm_test_shared("models/stories260K.gguf"), &out);
    CHECK(t, rc == 1 && out && strstr(out, "nomoat: error:") && strstr(out, "/nonexistent.json"));
    free(out);
}

/* ---- learning: validation loss on held-out stories goes down ---- */

#define STEPS 6
#define LR 1e-3
static void test_val_loss_decreases(nm_test *t) {
    nm_err err = {0};
    rec r = {.stop_at = -1};
    nm_train_params p = base_params(tmp_path("learn"), &r);
    p.dropout = 0;
    p.steps = STEPS;
    p.eval_every = 1;
    p.seq_len = 64;
    p.batch = 4;
    p.grad_accum = 1;
    p.rank = 8;
    p.alpha = 16;
    p.lr = LR;
    p.checkpoint_every = 0;
    /* the base model's loss on the validation text (B = 0: the adapter is off) */
    nm_tmodel *m;
    nm_vocab *v;
    if (!CHECK_OK(t, nm_tmodel_open(p.model, false, NULL, &m, &err), err)) return;
    CHECK_OK(t, nm_vocab_from_gguf(m->gguf, &v, NULL, &err), err);
    nm_data_opts o = {.format = NM_DATA_TEXT, .vocab = v, .seq_len = 64};
    nm_dataset d;
    nm_rows rows;
    CHECK_OK(t, nm_dataset_load(val_txt, &o, &d, &err), err);
    CHECK_OK(t, nm_rows_build(&d, 64, true, false, 0, &rows, &err), err);
    nm_tm_batch b = {rows.n_rows, 64, rows.tokens, rows.targets, rows.pos, rows.doc};
    double sum;
    int64_t n;
    CHECK_OK(t, nm_tmodel_eval(m, NULL, &b, &sum, &n, &err), err);
    double base = sum / (double)n;
    nm_rows_deinit(&rows);
    nm_dataset_deinit(&d);
    nm_vocab_free(v);
    nm_tmodel_free(m);
    CHECK_OK(t, nm_train_run(&p, NULL, &err), err);
    double after = r.val[STEPS];
    printf("# validation loss: base %.4f ->", base);
    for (int i = 1; i <= STEPS; i++) printf(" %.4f", r.val[i]);
    printf("\n");
    /* a tiny corpus: the gain is small but certain (everything here is
     * deterministic); more steps start to overfit the nine stories */
    CHECKF(t, after < base - 0.01, "validation loss did not go down: %.4f -> %.4f", base, after);
}

/* ---- full fine-tuning writes a loadable model that fits the data better ---- */

static void test_full_finetune(nm_test *t) {
    nm_err err = {0};
    rec r = {.stop_at = -1};
    nm_train_params p = base_params(tmp_path("full"), &r);
    p.full = true;
    p.dropout = 0;
    p.steps = 6;
    p.lr = 1e-3;
    p.val_data = train_txt; /* a fixed measure of fit to the training text */
    p.eval_every = 1;
    if (!CHECK_OK(t, nm_train_run(&p, NULL, &err), err)) return;
    CHECKF(t, r.val[6] < r.val[1] - 0.05, "full fine-tuning: loss on the data %.4f -> %.4f", r.val[1], r.val[6]);
    char path[600];
    snprintf(path, sizeof path, "%s/model.gguf", tmp_path("full"));
    nm_tmodel *m;
    CHECK_OK(t, nm_tmodel_open(path, false, NULL, &m, &err), err);
    nm_tmodel_free(m);
    /* the saved weights are the trained ones: resuming at the end is a no-op
     * and a second identical run writes the same file */
    rec r2 = {.stop_at = -1};
    nm_train_params p2 = base_params(tmp_path("full2"), &r2);
    p2.full = true;
    p2.dropout = 0;
    p2.steps = 6;
    p2.lr = 1e-3;
    p2.val_data = train_txt;
    p2.eval_every = 1;
    CHECK_OK(t, nm_train_run(&p2, NULL, &err), err);
    char path2[600];
    snprintf(path2, sizeof path2, "%s/model.gguf", tmp_path("full2"));
    CHECK(t, same_file(path, path2));
}

/* ---- the PEFT files ---- */

static void test_adapter_roundtrip(nm_test *t) {
    nm_err err = {0};
    nm_tmodel *m;
    if (!CHECK_OK(t, nm_tmodel_open(nm_test_shared("models/stories260K.gguf"), false, NULL, &m, &err), err)) return;
    nm_tm_lora *l, *back = NULL;
    CHECK_OK(t, nm_tm_lora_new(m, 4, 8, true, 0.05f, (1u << NM_TM_Q) | (1u << NM_TM_K) | (1u << NM_TM_DOWN), &l, &err),
             err);
    nm_rng rng;
    nm_rng_seed(&rng, 9);
    for (int64_t i = 0; i < l->n_params; i++)
        for (int64_t j = 0; j < l->params[i].n; j++) l->params[i].data[j] = (float)nm_rng_normal(&rng);
    const char *dir = tmp_path("peft");
    mkdir(dir, 0777);
    CHECK_OK(t, nm_adapter_save(l, m, dir, "stories260K.gguf", &err), err);
    CHECK_OK(t, nm_adapter_load(m, dir, &back, &err), err);
    if (back) {
        CHECK(t, back->rank == 4 && back->alpha == 8 && back->rslora && back->targets == l->targets);
        CHECK(t, fabsf(back->scale - 4.0f) < 1e-6f); /* rsLoRA: 8 / sqrt(4) */
        bool same = back->n_params == l->n_params;
        for (int64_t i = 0; same && i < l->n_params; i++)
            same = memcmp(back->params[i].data, l->params[i].data, (size_t)l->params[i].n * 4) == 0;
        CHECK(t, same);
    }
    /* on disk: HF names and shapes, q rows in Hugging Face order */
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, NM_ADAPTER_WEIGHTS);
    nm_st *s;
    if (CHECK_OK(t, nm_st_open(path, &s, &err), err)) {
        const nm_st_tensor *a = nm_st_find(s, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
        const nm_st_tensor *b = nm_st_find(s, "base_model.model.model.layers.4.mlp.down_proj.lora_B.weight");
        const nm_st_tensor *qb = nm_st_find(s, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
        CHECK(t, a && a->shape[0] == 4 && a->shape[1] == 64);
        CHECK(t, b && b->shape[0] == 64 && b->shape[1] == 4);
        CHECK(t, nm_st_find(s, "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight") == NULL);
        CHECK(t, nm_st_meta(s, "nomoat.base_fingerprint") != NULL);
        if (qb) { /* GGUF row 1 of head 0 (pair 0, second half) is HF row hd/2 = 4 */
            nm_tm_lora_mod *md = nm_tm_lora_mod_at(l, 0, NM_TM_Q);
            const float *f = qb->data;
            CHECK(t, memcmp(f + 4 * 4, md->B + 1 * 4, 16) == 0 && memcmp(f + 1 * 4, md->B + 2 * 4, 16) == 0);
        }
        nm_st_free(s);
    }
    /* the row map is a permutation */
    int seen[64] = {0};
    for (int r = 0; r < 64; r++) seen[nm_adapter_hf_row(r, 8)]++;
    bool perm = true;
    for (int r = 0; r < 64; r++) perm &= seen[r] == 1;
    CHECK(t, perm);
    char *cfg = nm_test_read(tmp_path("peft/adapter_config.json"), NULL);
    CHECK(t, cfg && strstr(cfg, "\"peft_type\": \"LORA\"") && strstr(cfg, "\"use_rslora\": true") &&
                 strstr(cfg, "\"q_proj\"") && strstr(cfg, "\"down_proj\""));
    free(cfg);
    nm_tm_lora_free(back);
    nm_tm_lora_free(l);
    nm_tmodel_free(m);
}

/* ---- personalisation: identity.json makes the model answer from the data ----
 * stories260K's 512-token vocabulary spells Chinese byte by byte, and 75 of
 * the 91 records are Chinese; the 16 English ones are enough (and fast) to
 * show the model taking its name from the data. */
static void test_identity(nm_test *t) {
    json_error_t je;
    json_t *all = json_load_file(nm_test_shared("data/identity.json"), 0, &je), *en = json_array();
    if (!CHECKF(t, json_is_array(all), "identity.json: %s", je.text)) return;
    size_t i;
    json_t *r;
    json_array_foreach(all, i, r) {
        const char *texts[2] = {json_string_value(json_object_get(r, "instruction")),
                                json_string_value(json_object_get(r, "output"))};
        bool ascii = texts[0] && texts[1];
        for (int k = 0; k < 2 && ascii; k++)
            for (const char *c = texts[k]; *c; c++) ascii &= (unsigned char)*c < 0x80;
        if (ascii) json_array_append(en, r);
    }
    CHECK(t, json_array_size(en) == 16);
    const char *data = tmp_path("identity-en.json");
    json_dump_file(en, data, 0);
    json_decref(en);
    json_decref(all);
    nm_err err = {0};
    rec rc = {.stop_at = -1};
    nm_train_params p = base_params(tmp_path("identity"), &rc);
    p.data = data;
    p.val_data = NULL;
    p.format = "auto";
    const char *vars[] = {"name=Nomo", "author=Moat"};
    p.vars = vars;
    p.n_vars = 2;
    p.dropout = 0;
    p.rank = 16;
    p.alpha = 32;
    p.lr = 1e-2;
    p.warmup = 0;
    p.steps = 40;
    p.seq_len = 256;
    p.batch = 4;
    p.grad_accum = 1;
    p.checkpoint_every = 0;
    p.threads = 0;
    if (!CHECK_OK(t, nm_train_run(&p, NULL, &err), err)) return;
    /* greedy answer to a question in the data's style, with the saved adapter */
    nm_tmodel *m;
    nm_vocab *v;
    nm_tm_lora *l = NULL;
    CHECK_OK(t, nm_tmodel_open(p.model, false, NULL, &m, &err), err);
    CHECK_OK(t, nm_vocab_from_gguf(m->gguf, &v, NULL, &err), err);
    CHECK_OK(t, nm_adapter_load(m, tmp_path("identity"), &l, &err), err);
    const char *prompt = "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n";
    int32_t *ids;
    size_t n;
    CHECK_OK(t, nm_tokenize(v, prompt, strlen(prompt), true, true, &ids, &n, &err), err);
    int32_t *seq = malloc((n + 32) * sizeof *seq);
    memcpy(seq, ids, n * sizeof *seq);
    float *logits = malloc((size_t)m->hp.n_vocab * sizeof(float));
    char answer[512] = "";
    size_t alen = 0;
    for (int k = 0; k < 24 && l; k++) {
        if (!CHECK_OK(t, nm_tmodel_logits(m, l, seq, (int64_t)n, logits, &err), err)) break;
        int32_t best = 0;
        for (int32_t j = 1; j < m->hp.n_vocab; j++) best = logits[j] > logits[best] ? j : best;
        seq[n++] = best;
        char piece[64];
        int32_t pl = nm_token_to_piece(v, best, piece, sizeof piece, false);
        if (pl > 0 && alen + (size_t)pl < sizeof answer) memcpy(answer + alen, piece, (size_t)pl), alen += (size_t)pl;
        answer[alen] = 0;
    }
    printf("# after 40 steps on identity.json (English records): \"%s\"\n", answer);
    CHECKF(t, strstr(answer, "Nomo") != NULL, "the answer does not give the name from the data: %s", answer);
    free(logits);
    free(seq);
    free(ids);
    nm_tm_lora_free(l);
    nm_vocab_free(v);
    nm_tmodel_free(m);
}

int main(void) {
    setup_data();
    nm_test_run("deterministic_and_resume", test_deterministic_and_resume);
    nm_test_run("stop_inside_step", test_stop_inside_step);
    nm_test_run("resume_guards", test_resume_guards);
    nm_test_run("cli_kill_and_resume", test_cli_kill_and_resume);
    nm_test_run("cli_usage", test_cli_usage);
    nm_test_run("val_loss_decreases", test_val_loss_decreases);
    nm_test_run("full_finetune", test_full_finetune);
    nm_test_run("adapter_roundtrip", test_adapter_roundtrip);
    nm_test_run("identity_answers_from_data", test_identity);
    return nm_test_finish();
}
