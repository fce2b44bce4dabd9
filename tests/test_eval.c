/* test_eval.c - evaluation against outside truth: log-likelihoods against
 * llama.cpp's logits (../shared/golden), perplexity against the training
 * code's independent forward pass, Wilson intervals against Newcombe's
 * published table, the win-rate tally against hand counts, and the files
 * curation writes read back by the trainer's own data reader. */
#include "testlib.h"
#include "eval/eval.h"
#include "train/data.h"
#include "train/model.h"
#include "train/adapter.h"
#include "base/base.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static nm_model *M;

static const char *write_tmp(const char *name, const char *text) {
    static char path[8][512];
    static int slot;
    char *p = path[slot++ & 7];
    snprintf(p, 512, "%s/%s", nm_test_tmpdir(), name);
    FILE *f = fopen(p, "wb");
    fputs(text, f);
    fclose(f);
    return p;
}

/* ---- Wilson intervals: Newcombe (1998), "Two-sided confidence intervals
 * for the single proportion", Statistics in Medicine 17, table II, method 3
 * (score interval without continuity correction). ---- */
static void test_wilson(nm_test *t) {
    static const struct {
        int64_t k, n;
        double lo, hi;
    } rows[] = {{81, 263, 0.2553, 0.3662}, {15, 148, 0.0624, 0.1605}, {0, 20, 0.0, 0.1611}, {1, 29, 0.0061, 0.1718}};
    for (size_t i = 0; i < 4; i++) {
        double lo, hi;
        nm_wilson_interval(rows[i].k, rows[i].n, 1.959964, &lo, &hi);
        CHECKF(t, fabs(lo - rows[i].lo) < 6e-5 && fabs(hi - rows[i].hi) < 6e-5, "%lld/%lld: %.4f .. %.4f, want %.4f .. %.4f",
               (long long)rows[i].k, (long long)rows[i].n, lo, hi, rows[i].lo, rows[i].hi);
    }
}

static void test_tally(nm_test *t) {
    /* as the page exports them: "left" says which configuration was on the
     * left; 3 wins for B (two on the left, one on the right), 1 for A, 1 tie,
     * 1 unanswered */
    const char *f1 = write_tmp("c1.json",
                               "{\"nomoat_side_by_side\": 1, \"report\": \"x\", \"a\": \"base\", \"b\": \"tuned\", \"choices\": ["
                               "{\"id\": 0, \"left\": \"b\", \"choice\": \"left\"},"
                               "{\"id\": 1, \"left\": \"a\", \"choice\": \"right\"},"
                               "{\"id\": 2, \"left\": \"b\", \"choice\": \"left\"},"
                               "{\"id\": 3, \"left\": \"b\", \"choice\": \"right\"},"
                               "{\"id\": 4, \"left\": \"a\", \"choice\": \"tie\"},"
                               "{\"id\": 5, \"left\": \"a\", \"choice\": null}]}");
    /* a second rater in a/b terms */
    const char *f2 = write_tmp("c2.json", "{\"choices\": [{\"winner\": \"b\"}, {\"winner\": \"b\"}, {\"winner\": \"a\"}]}");
    const char *paths[2] = {f1, f2};
    nm_tally r;
    nm_err err = {0};
    if (!CHECK_OK(t, nm_eval_tally(paths, 2, 0.95, &r, &err), err)) return;
    CHECK(t, r.b_wins == 5 && r.a_wins == 2 && r.ties == 1 && r.unanswered == 1);
    CHECK(t, !strcmp(r.name_a, "base") && !strcmp(r.name_b, "tuned"));
    double lo, hi;
    nm_wilson_interval(5, 7, 1.959964, &lo, &hi);
    CHECK(t, fabs(r.b_rate - 5.0 / 7) < 1e-12 && fabs(r.lo - lo) < 1e-6 && fabs(r.hi - hi) < 1e-6);
    CHECK(t, fabs(r.b_rate_ties - 5.5 / 8) < 1e-12);
    /* hostile */
    const char *bad = write_tmp("c3.json", "{\"choices\": [{\"left\": \"c\", \"choice\": \"left\"}]}");
    CHECK(t, nm_eval_tally(&bad, 1, 0.95, &r, &err) == NM_ERR_FORMAT);
    CHECKF(t, strstr(err.msg, "c3.json") && strstr(err.msg, "choices[0]"), "%s", err.msg);
    bad = write_tmp("c4.json", "[1, 2");
    CHECK(t, nm_eval_tally(&bad, 1, 0.95, &r, &err) == NM_ERR_FORMAT);
    CHECK(t, nm_eval_tally(&bad, 1, 1.5, &r, &err) == NM_ERR_ARG);
}

/* ---- log-likelihoods against llama.cpp's logits ---- */

typedef struct mc_seen {
    double ll[8];
    size_t n;
    int calls;
} mc_seen;

static void on_item(void *user, const nm_mc_item *it) {
    mc_seen *s = user;
    s->n = it->n_choices;
    for (size_t i = 0; i < it->n_choices && i < 8; i++) s->ll[i] = it->loglik[i];
    s->calls++;
}

static double log_softmax_at(json_t *logits, int32_t id) {
    size_t n = json_array_size(logits);
    double mx = -INFINITY;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, json_number_value(json_array_get(logits, i)));
    double z = 0;
    for (size_t i = 0; i < n; i++) z += exp(json_number_value(json_array_get(logits, i)) - mx);
    return json_number_value(json_array_get(logits, (size_t)id)) - mx - log(z);
}

static void test_loglik_golden(nm_test *t) {
    const nm_vocab *v = nm_model_vocab(M);
    char *gold = nm_test_read(nm_test_shared("golden/stories260K.jsonl"), NULL);
    if (!CHECK(t, gold != NULL)) return;
    int checked = 0;
    for (char *line = gold; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        json_t *r = json_loads(line, 0, NULL);
        line = nl ? nl + 1 : NULL;
        const char *prompt = json_string_value(json_object_get(r, "prompt"));
        json_t *greedy = json_object_get(r, "greedy"), *logits = json_object_get(r, "last_logits");
        if (!prompt || !*prompt || !json_is_array(greedy)) {
            json_decref(r);
            continue;
        }
        /* choice 0: the greedy token; choice 1: the token 'the' would be */
        int32_t ids[2] = {(int32_t)json_integer_value(json_array_get(greedy, 0)), -1};
        char piece[2][64];
        int32_t k = nm_token_to_piece(v, ids[0], piece[0], 63, false);
        piece[0][k > 0 ? k : 0] = 0;
        snprintf(piece[1], sizeof piece[1], " the");
        /* the token whose text is " the", found in the vocabulary itself */
        for (int32_t id = 0; id < nm_vocab_n_tokens(v) && ids[1] < 0; id++) {
            char b[16];
            int32_t m = nm_token_to_piece(v, id, b, sizeof b, false);
            if (m == 4 && !memcmp(b, " the", 4)) ids[1] = id;
        }
        nm_err err = {0};
        if (piece[0][0] != ' ' || ids[1] < 0 || ids[1] == ids[0]) { /* a continuation that starts a word */
            json_decref(r);
            continue;
        }
        json_t *item = json_pack("{s:s, s:[s,s], s:i}", "context", prompt, "choices", piece[0], piece[1], "label", 0);
        char *js = json_dumps(item, 0);
        const char *path = write_tmp("mc-gold.jsonl", js);
        free(js);
        json_decref(item);
        mc_seen seen = {{0}, 0, 0};
        nm_mc_params p = {.threads = 1, .on_item = on_item, .user = &seen};
        nm_mc_result res;
        if (CHECK_OK(t, nm_eval_choice(M, path, &p, &res, NULL, &err), err) && CHECK(t, seen.calls == 1 && seen.n == 2)) {
            for (int c = 0; c < 2; c++) {
                double want = log_softmax_at(logits, ids[c]);
                /* llama.cpp's logits carry about 1e-2 of F16 noise */
                CHECKF(t, fabs(seen.ll[c] - want) < 0.02, "'%s' + '%s': %.4f, llama.cpp %.4f", prompt, piece[c],
                       seen.ll[c], want);
            }
            CHECK(t, res.correct == 1); /* the greedy token is the more likely */
            checked++;
        }
        json_decref(r);
    }
    free(gold);
    CHECKF(t, checked >= 3, "only %d golden prompts checked", checked);
}

static void test_choice_formats(nm_test *t) {
    /* the obvious answer must win whatever the format */
    const char *generic =
        "{\"context\": \"Once upon a time, there was a little girl named Lily. She liked to\", "
        "\"choices\": [\"xq zzv bkq jjw\", \"play with her toys.\"], \"label\": 1}\n"
        "{\"ctx\": \"Tom and his mom went to the\", \"endings\": [\" park.\", \" qzx vvk.\"], \"label\": \"A\"}\n"
        "{\"question\": {\"stem\": \"What did Lily like to do?\", \"choices\": [{\"text\": \"play\", \"label\": \"A\"}, "
        "{\"text\": \"zzqx\", \"label\": \"B\"}]}, \"answerKey\": \"A\"}\n";
    const char *path = write_tmp("mc.jsonl", generic);
    nm_mc_params p = {0};
    nm_mc_result r;
    nm_err err = {0};
    if (!CHECK_OK(t, nm_eval_choice(M, path, &p, &r, NULL, &err), err)) return;
    CHECKF(t, r.n == 3 && r.correct == 3 && r.correct_norm == 3, "n %lld acc %lld norm %lld", (long long)r.n,
           (long long)r.correct, (long long)r.correct_norm);
    CHECK(t, r.acc == 1.0 && r.acc_se == 0.0);
    /* hostile records name the line and the reason */
    const char *bad = write_tmp("mcbad.jsonl", "{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"label\": 0}\n"
                                               "{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"label\": 5}\n");
    CHECK(t, nm_eval_choice(M, bad, &p, &r, NULL, &err) == NM_ERR_FORMAT);
    CHECKF(t, strstr(err.msg, "mcbad.jsonl:2:") && strstr(err.msg, "label"), "%s", err.msg);
    bad = write_tmp("mcbad2.jsonl", "{\"context\": \"a\", \"choices\": [\"x\"], \"label\": 0}\n");
    CHECK(t, nm_eval_choice(M, bad, &p, &r, NULL, &err) == NM_ERR_FORMAT);
    bad = write_tmp("mcbad3.jsonl", "{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"label\": 0\n");
    CHECK(t, nm_eval_choice(M, bad, &p, &r, NULL, &err) == NM_ERR_FORMAT);
    CHECKF(t, strstr(err.msg, "mcbad3.jsonl:1: invalid JSON"), "%s", err.msg);
}

/* ---- perplexity against the training code's forward pass ---- */

static void test_ppl_vs_training_forward(nm_test *t) {
    const char *text = "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. "
                       "One day, she saw a big dog in the park. The dog was brown and had a long tail. Lily wanted "
                       "to play with the dog, so she threw a ball. The dog ran after the ball and brought it back.";
    const char *path = write_tmp("ppl.txt", text);
    nm_eval_ppl_params p;
    nm_eval_ppl_params_default(&p);
    p.n_ctx = 256;
    nm_eval_ppl_result r;
    nm_err err = {0};
    if (!CHECK_OK(t, nm_eval_perplexity(M, path, &p, &r, NULL, &err), err)) return;
    /* the same tokens through src/train's forward pass (float32 throughout) */
    int32_t *ids;
    size_t n;
    CHECK_OK(t, nm_tokenize(nm_model_vocab(M), text, strlen(text), true, false, &ids, &n, &err), err);
    CHECK(t, r.n_tokens == (int64_t)n - 1 && r.n_examples == 1);
    nm_tmodel *tm = NULL;
    if (CHECK_OK(t, nm_tmodel_open(nm_test_shared("models/stories260K.gguf"), false, NULL, &tm, &err), err)) {
        nm_tm_batch b = {1, (int64_t)n - 1, ids, ids + 1, NULL, NULL};
        double loss = 0;
        int64_t cnt = 0;
        CHECK_OK(t, nm_tmodel_eval(tm, NULL, &b, &loss, &cnt, &err), err);
        CHECK(t, cnt == (int64_t)n - 1);
        /* inference keeps its KV cache in F16: agreement to ~1e-3 nats */
        CHECKF(t, fabs(r.nll - loss / (double)cnt) < 1e-3, "eval nll %.5f, training forward %.5f", r.nll,
               loss / (double)cnt);
        CHECK(t, fabs(r.ppl - exp(r.nll)) < 1e-9 && r.nll_se > 0 && fabs(r.ppl_se - r.ppl * r.nll_se) < 1e-9);
    }
    nm_tmodel_free(tm);
    free(ids);
}

/* With an adapter: inference (nm_lora on every worker's context) against
 * the training code's forward pass with the same LoRA weights. */
static void test_ppl_with_adapter(nm_test *t) {
    const char *text = "Tom had a big red ball. He liked to throw it to his dog. The dog ran fast and brought the "
                       "ball back every time. Tom was happy and gave the dog a hug.";
    const char *path = write_tmp("ppl-lora.txt", text);
    nm_err err = {0};
    nm_tmodel *tm = NULL;
    nm_tm_lora *l = NULL;
    nm_lora *lora = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    if (!CHECK_OK(t, nm_tmodel_open(nm_test_shared("models/stories260K.gguf"), false, NULL, &tm, &err), err)) return;
    if (!CHECK_OK(t, nm_tm_lora_new(tm, 4, 8.0f, false, 0.0f, NM_TM_ALL, &l, &err), err)) goto out;
    nm_tm_lora_init_peft(l, 3);
    /* B is zero after PEFT's initialisation: give it values so the adapter
     * changes something */
    nm_rng rng;
    nm_rng_seed(&rng, 11);
    for (int64_t layer = 0; layer < l->n_layer; layer++)
        for (int m = 0; m < NM_TM_COUNT; m++) {
            nm_tm_lora_mod *mod = nm_tm_lora_mod_at(l, layer, (nm_tmod)m);
            for (int64_t i = 0; mod->B && i < mod->out * l->rank; i++) mod->B[i] = (float)(0.05 * nm_rng_normal(&rng));
        }
    char dir[512];
    snprintf(dir, sizeof dir, "%s/adapter", nm_test_tmpdir());
    if (!CHECK_OK(t, nm_adapter_save(l, tm, dir, "stories260K", &err), err)) goto out;
    if (!CHECK_OK(t, nm_lora_load(M, dir, false, NULL, &lora, &err), err)) goto out;
    nm_lora_entry e = {lora, 1.0f};
    nm_eval_ppl_params p;
    nm_eval_ppl_params_default(&p);
    p.n_ctx = 256;
    nm_eval_ppl_result base, with;
    if (!CHECK_OK(t, nm_eval_perplexity(M, path, &p, &base, NULL, &err), err)) goto out;
    p.loras = &e;
    p.n_loras = 1;
    p.threads = 2;
    if (!CHECK_OK(t, nm_eval_perplexity(M, path, &p, &with, NULL, &err), err)) goto out;
    CHECK_OK(t, nm_tokenize(nm_model_vocab(M), text, strlen(text), true, false, &ids, &n, &err), err);
    nm_tm_batch b = {1, (int64_t)n - 1, ids, ids + 1, NULL, NULL};
    double loss = 0;
    int64_t cnt = 0;
    CHECK_OK(t, nm_tmodel_eval(tm, l, &b, &loss, &cnt, &err), err);
    CHECKF(t, fabs(with.nll - loss / (double)cnt) < 1e-3 && fabs(with.nll - base.nll) > 1e-2,
           "with the adapter %.5f, training forward %.5f, without %.5f", with.nll, loss / (double)cnt, base.nll);
out:
    free(ids);
    nm_lora_free(lora);
    nm_tm_lora_free(l);
    nm_tmodel_free(tm);
}

static void test_ppl_masks_and_threads(nm_test *t) {
    /* conversations: only assistant tokens are scored unless all_tokens; the
     * count is the trainer's count of trained tokens */
    const char *msgs = "{\"messages\": [{\"role\": \"user\", \"content\": \"Tell me a story.\"}, "
                       "{\"role\": \"assistant\", \"content\": \"Once upon a time, there was a dog.\"}]}\n"
                       "{\"messages\": [{\"role\": \"user\", \"content\": \"Another one, please.\"}, "
                       "{\"role\": \"assistant\", \"content\": \"Tom had a red ball. He liked it.\"}]}\n"
                       "{\"messages\": [{\"role\": \"user\", \"content\": \"And a third.\"}, "
                       "{\"role\": \"assistant\", \"content\": \"The sun was hot and the cat slept.\"}]}\n";
    const char *path = write_tmp("ppl.jsonl", msgs);
    nm_eval_ppl_params p;
    nm_eval_ppl_params_default(&p);
    nm_eval_ppl_result r1, r2, rall;
    nm_err err = {0};
    p.threads = 1;
    if (!CHECK_OK(t, nm_eval_perplexity(M, path, &p, &r1, NULL, &err), err)) return;
    p.threads = 2;
    CHECK_OK(t, nm_eval_perplexity(M, path, &p, &r2, NULL, &err), err);
    CHECK(t, r1.nll == r2.nll && r1.n_tokens == r2.n_tokens && r1.nll_se_ex == r2.nll_se_ex);
    p.all_tokens = true;
    CHECK_OK(t, nm_eval_perplexity(M, path, &p, &rall, NULL, &err), err);
    nm_data_opts o = {0};
    o.vocab = nm_model_vocab(M);
    o.tmpl = nm_chat_template_of_gguf(nm_model_gguf(M));
    o.seq_len = 1000;
    o.mask_prompt = true;
    nm_dataset d;
    if (CHECK_OK(t, nm_dataset_load(path, &o, &d, &err), err)) {
        CHECKF(t, r1.n_tokens == d.n_trained && r1.n_examples == 3, "%lld scored, %lld trained", (long long)r1.n_tokens,
               (long long)d.n_trained);
        nm_dataset_deinit(&d);
    }
    CHECK(t, rall.n_tokens > r1.n_tokens);
    CHECK(t, r1.nll_se_ex > 0 && isfinite(r1.nll_se_ex));
    /* an unreadable file names itself */
    const char *bad = write_tmp("pplbad.jsonl", "{\"messages\": 3}\n");
    p.all_tokens = false;
    CHECK(t, nm_eval_perplexity(M, bad, &p, &r1, NULL, &err) == NM_ERR_FORMAT);
    CHECKF(t, strstr(err.msg, "pplbad.jsonl:1"), "%s", err.msg);
}

/* ---- the files curation writes are read back by the trainer ---- */

static void test_cands_formats_roundtrip(nm_test *t) {
    nm_cands *c = nm_cands_new();
    nm_err err = {0};
    const nm_chat_msg conv[] = {{"system", "Be kind."}, {"user", "Hi \"there\"\n<b>"}, {"assistant", "Hello!"},
                                {"user", "Tell me a story."}};
    const nm_chat_msg raw[] = {{"user", "Once upon a time"}};
    CHECK_OK(t, nm_cands_add(c, 0, 0, conv, 4, false, "Once, a dog.", 11, &err), err);
    CHECK_OK(t, nm_cands_add(c, 0, 1, conv, 4, false, "Twice, a cat.", 12, &err), err);
    CHECK_OK(t, nm_cands_add(c, 1, 0, raw, 1, true, ", there was a girl.\n\n\nThe end.", 13, &err), err);
    CHECK(t, nm_cands_size(c) == 3 && nm_cands_n_prompts(c) == 2);
    CHECK(t, nm_cands_at(c, 1)->msgs == nm_cands_at(c, 0)->msgs); /* shared */
    static const char *const fmts[] = {"messages", "sharegpt", "alpaca"};
    nm_data_opts o = {0};
    o.vocab = nm_model_vocab(M);
    o.tmpl = NM_CHAT_TEMPLATE_CHATML;
    o.seq_len = 1000;
    o.mask_prompt = true;
    for (int f = 0; f < 3; f++) {
        char path[512];
        snprintf(path, sizeof path, "%s/out-%s.jsonl", nm_test_tmpdir(), fmts[f]);
        CHECK_OK(t, nm_cands_write(c, path, fmts[f], false, &err), err);
        nm_dataset d;
        if (CHECKF(t, nm_dataset_load(path, &o, &d, &err) == NM_OK, "%s: %s", fmts[f], err.msg)) {
            CHECKF(t, d.n_ex == 3 && d.n_bad == 0, "%s: %lld examples", fmts[f], (long long)d.n_ex);
            nm_dataset_deinit(&d);
        }
        /* and by our own reader: the same prompts and responses */
        nm_cands *back = nm_cands_new();
        if (CHECK_OK(t, nm_cands_load(back, path, "auto", &err), err)) {
            CHECK(t, nm_cands_size(back) == 3 && nm_cands_n_prompts(back) == 2);
            const nm_cand *x = nm_cands_at(back, 1);
            CHECKF(t, x->n_msgs == 4 && !strcmp(x->msgs[1].content, conv[1].content) && !strcmp(x->response, "Twice, a cat."),
                   "%s: %zu messages", fmts[f], x->n_msgs);
        }
        nm_cands_free(back);
    }
    /* the candidates format keeps everything, seeds included */
    char path[512];
    snprintf(path, sizeof path, "%s/out.cands.jsonl", nm_test_tmpdir());
    CHECK_OK(t, nm_cands_write(c, path, "candidates", false, &err), err);
    nm_cands *back = nm_cands_new();
    if (CHECK_OK(t, nm_cands_load(back, path, "auto", &err), err)) {
        CHECK(t, nm_cands_size(back) == 3 && nm_cands_at(back, 2)->raw && nm_cands_at(back, 2)->seed == 13 &&
                     nm_cands_at(back, 1)->index == 1 && !strcmp(nm_cands_at(back, 2)->response, nm_cands_at(c, 2)->response));
    }
    nm_cands_free(back);
    /* text: blank lines inside an entry collapse, entries end with one */
    snprintf(path, sizeof path, "%s/out.txt", nm_test_tmpdir());
    CHECK_OK(t, nm_cands_write(c, path, "text", false, &err), err);
    char *txt = nm_test_read(path, NULL);
    CHECKF(t, txt && strstr(txt, "Once upon a time, there was a girl.\nThe end.\n\n") != NULL, "%s", txt ? txt : "");
    free(txt);
    nm_cands_free(c);
}

int main(void) {
    nm_err err = {0};
    if (nm_model_load(nm_test_shared("models/stories260K.gguf"), NULL, &M, &err)) {
        fprintf(stderr, "test_eval: %s\n", err.msg);
        return 1;
    }
    nm_test_run("wilson", test_wilson);
    nm_test_run("tally", test_tally);
    nm_test_run("loglik_golden", test_loglik_golden);
    nm_test_run("choice_formats", test_choice_formats);
    nm_test_run("ppl_vs_training_forward", test_ppl_vs_training_forward);
    nm_test_run("ppl_with_adapter", test_ppl_with_adapter);
    nm_test_run("ppl_masks_and_threads", test_ppl_masks_and_threads);
    nm_test_run("cands_formats_roundtrip", test_cands_formats_roundtrip);
    nm_model_free(M);
    return nm_test_finish();
}
