/* test_curate_cli.c - `nomoat curate` and `nomoat eval` as a user meets
 * them: the steps chained on stories260K, determinism whatever the thread
 * count, the external scorer's contract (JSON in, a number out, timeouts and
 * failures as clear errors), usage errors (exit 2) and failures (exit 1
 * naming the file), and the side-by-side page driven in headless Chromium. */
#include "testlib.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *MODEL;

static int run(const char *args, char **out) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", nm_test_bin(), args);
    return nm_test_sh(cmd, out);
}

static const char *tmp(const char *name) {
    static char path[16][512];
    static int slot;
    char *p = path[slot++ & 15];
    snprintf(p, 512, "%s/%s", nm_test_tmpdir(), name);
    return p;
}

static const char *write_tmp(const char *name, const char *text) {
    const char *p = tmp(name);
    FILE *f = fopen(p, "wb");
    fputs(text, f);
    fclose(f);
    return p;
}

static json_t *load_lines(const char *path, size_t *n) {
    char *text = nm_test_read(path, NULL);
    json_t *arr = json_array();
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        json_t *o = json_loads(line, 0, NULL);
        if (o) json_array_append_new(arr, o);
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    *n = json_array_size(arr);
    return arr;
}

static void test_generate_deterministic(nm_test *t) {
    const char *prompts = write_tmp("p.txt", "Once upon a time\n\nTom and his dog\nOnce upon a time\n");
    char args[2048], *out;
    snprintf(args, sizeof args, "curate generate -m %s --prompts %s -n 3 --max-tokens 24 --seed 5 -t 1 -o %s", MODEL,
             prompts, tmp("g1.jsonl"));
    if (!CHECKF(t, run(args, &out) == 0, "%s", out)) return;
    free(out);
    snprintf(args, sizeof args, "curate generate -m %s --prompts %s -n 3 --max-tokens 24 --seed 5 -t 2 -o %s", MODEL,
             prompts, tmp("g2.jsonl"));
    CHECK(t, run(args, &out) == 0);
    free(out);
    char *a = nm_test_read(tmp("g1.jsonl"), NULL), *b = nm_test_read(tmp("g2.jsonl"), NULL);
    CHECK(t, a && b && strcmp(a, b) == 0);
    free(a);
    free(b);
    size_t n;
    json_t *c = load_lines(tmp("g1.jsonl"), &n);
    /* the repeated prompt is the same prompt: 2 prompts x 3 candidates */
    CHECKF(t, n == 6, "%zu candidates", n);
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(c, i);
        CHECK(t, json_integer_value(json_object_get(x, "prompt_id")) == (json_int_t)(i / 3) &&
                     json_integer_value(json_object_get(x, "candidate")) == (json_int_t)(i % 3) &&
                     json_is_string(json_object_get(x, "response")));
    }
    /* different seeds per candidate: different stories */
    const char *r0 = json_string_value(json_object_get(json_array_get(c, 0), "response"));
    const char *r1 = json_string_value(json_object_get(json_array_get(c, 1), "response"));
    CHECK(t, r0 && r1 && strcmp(r0, r1) != 0);
    json_decref(c);
}

static void test_score_chain(nm_test *t) {
    /* hand-made candidates, so what must be kept is known */
    const char *in = write_tmp(
        "c.jsonl",
        "{\"prompt_id\": 0, \"candidate\": 0, \"prompt\": \"Once upon a time\", \"response\": \", there was a dog named Max. "
        "Max liked to run in the park with his friend Tom.\"}\n"
        "{\"prompt_id\": 0, \"candidate\": 1, \"prompt\": \"Once upon a time\", \"response\": \", there was a cat.\"}\n"
        "{\"prompt_id\": 0, \"candidate\": 2, \"prompt\": \"Once upon a time\", \"response\": \" dog dog dog dog dog dog dog "
        "dog dog dog dog dog dog\"}\n"
        "{\"prompt_id\": 1, \"candidate\": 0, \"prompt\": \"Tom had a\", \"response\": \" big red ball and a little puppy.\"}\n"
        "{\"prompt_id\": 1, \"candidate\": 1, \"prompt\": \"Tom had a\", \"response\": \" zq xv dog kk.\"}\n");
    char args[4096], *out;
    /* regex gate + repetition minimum + judge ranking, best 1 per prompt */
    snprintf(args, sizeof args,
             "curate score --in %s --judge %s --must-match '\\b(dog|puppy)\\b' --repetition 2 --repetition-min 0.5 "
             "--repetition-weight 0 --best-k 1 -o %s --all %s",
             in, MODEL, tmp("kept.jsonl"), tmp("all.jsonl"));
    if (!CHECKF(t, run(args, &out) == 0, "%s", out)) return;
    CHECKF(t, strstr(out, "2 kept"), "%s", out);
    free(out);
    size_t n;
    json_t *all = load_lines(tmp("all.jsonl"), &n);
    CHECK(t, n == 5);
    const char *dropped[5] = {NULL, "regex", "repetition", NULL, NULL};
    bool kept[5] = {true, false, false, true, false};
    for (size_t i = 0; i < n && i < 5; i++) {
        json_t *x = json_array_get(all, i);
        const char *d = json_string_value(json_object_get(x, "dropped_by"));
        CHECKF(t, json_is_true(json_object_get(x, "kept")) == kept[i], "candidate %zu kept?", i);
        CHECKF(t, (d == NULL) == (dropped[i] == NULL) && (!d || !strcmp(d, dropped[i])), "candidate %zu dropped by %s", i,
               d ? d : "-");
    }
    /* the judge prefers the story to the gibberish for prompt 1 */
    double j3 = json_number_value(json_object_get(json_object_get(json_array_get(all, 3), "scores"), "judge"));
    double j4 = json_number_value(json_object_get(json_object_get(json_array_get(all, 4), "scores"), "judge"));
    CHECKF(t, j3 > j4 && j3 < 0, "judge %.3f vs %.3f", j3, j4);
    json_decref(all);
    json_t *k = load_lines(tmp("kept.jsonl"), &n);
    CHECK(t, n == 2);
    json_t *m = json_object_get(json_array_get(k, 0), "messages");
    CHECK(t, json_array_size(m) == 2 &&
                 !strcmp(json_string_value(json_object_get(json_array_get(m, 0), "role")), "user") &&
                 json_is_object(json_object_get(json_object_get(json_array_get(k, 0), "meta"), "scores")));
    json_decref(k);
}

static void test_command_scorer(nm_test *t) {
    const char *in = write_tmp("cc.jsonl",
                               "{\"prompt_id\": 0, \"prompt\": \"a\", \"response\": \"short\"}\n"
                               "{\"prompt_id\": 0, \"prompt\": \"a\", \"response\": \"a much longer response here\"}\n"
                               "{\"prompt_id\": 1, \"prompt\": \"b\", \"response\": \"x\"}\n");
    char args[4096], *out;
    /* the command sees the JSON: its byte count ranks the longer response first */
    snprintf(args, sizeof args, "curate score --in %s --command 'wc -c' --best-k 1 -o %s --all %s -t 2", in,
             tmp("cmd.jsonl"), tmp("cmdall.jsonl"));
    if (CHECKF(t, run(args, &out) == 0, "%s", out)) {
        size_t n;
        json_t *all = load_lines(tmp("cmdall.jsonl"), &n);
        CHECK(t, n == 3 && json_is_false(json_object_get(json_array_get(all, 0), "kept")) &&
                     json_is_true(json_object_get(json_array_get(all, 1), "kept")) &&
                     json_is_true(json_object_get(json_array_get(all, 2), "kept")));
        json_decref(all);
    }
    free(out);
    /* what it reads is the documented JSON */
    snprintf(args, sizeof args,
             "curate score --in %s --command 'grep -q \"\\\"response\\\": \\\"x\\\", \\\"prompt_id\\\": 1\" && echo 1 "
             "|| echo \"{\\\"score\\\": 0.5}\"' -o %s --all %s",
             in, tmp("cmd2.jsonl"), tmp("cmd2all.jsonl"));
    if (CHECKF(t, run(args, &out) == 0, "%s", out)) {
        size_t n;
        json_t *all = load_lines(tmp("cmd2all.jsonl"), &n);
        double s0 = json_number_value(json_object_get(json_object_get(json_array_get(all, 0), "scores"), "command"));
        double s2 = json_number_value(json_object_get(json_object_get(json_array_get(all, 2), "scores"), "command"));
        CHECKF(t, s0 == 0.5 && s2 == 1.0, "scores %g %g", s0, s2);
        json_decref(all);
    }
    free(out);
    /* failures: a timeout, a non-zero exit, something that is not a number */
    static const struct {
        const char *cmd, *want;
    } bad[] = {{"sleep 5", "timed out after 0.3 s"},
               {"exit 3", "exited with status 3"},
               {"echo hello", "printed 'hello'"}};
    for (int k = 0; k < 3; k++) {
        snprintf(args, sizeof args, "curate score --in %s --command '%s' --command-timeout 0.3 -o %s", in, bad[k].cmd,
                 tmp("x.jsonl"));
        int rc = run(args, &out);
        CHECKF(t, rc == 1 && strstr(out, "nomoat: error:") && strstr(out, bad[k].want), "'%s' -> %d: %s", bad[k].cmd, rc,
               out);
        free(out);
    }
}

static void test_clean_cli(nm_test *t) {
    const char *a = write_tmp("docs.txt", "The cat sat on the mat.\nthe CAT sat on the mat!\n12345 67890\n"
                                          "A dog ran in the park with a ball.\n");
    const char *ev = write_tmp("eval.jsonl", "{\"question\": \"A dog ran in the park with a ball\"}\n");
    char args[4096], *out;
    snprintf(args, sizeof args,
             "curate clean %s --max-digit 0.5 --eval %s --ngram 13 --ngram-min 5 -o %s --report-json %s --examples 3", a,
             ev, tmp("clean.txt"), tmp("rep.json"));
    if (!CHECKF(t, run(args, &out) == 0, "%s", out)) return;
    CHECKF(t, strstr(out, "4 documents") && strstr(out, "-> 1 kept") && strstr(out, "FN="), "%s", out);
    free(out);
    char *kept = nm_test_read(tmp("clean.txt"), NULL);
    CHECKF(t, kept && !strcmp(kept, "The cat sat on the mat.\n"), "%s", kept ? kept : "");
    free(kept);
    json_t *rep = json_load_file(tmp("rep.json"), 0, NULL);
    CHECK(t, rep && json_integer_value(json_object_get(rep, "kept")) == 1);
    json_t *steps = json_object_get(rep, "steps");
    int removed[8] = {0};
    for (size_t i = 0; i < json_array_size(steps); i++)
        removed[i + 1] = (int)json_integer_value(json_object_get(json_array_get(steps, i), "removed"));
    CHECK(t, removed[2] == 1 && removed[5] == 1 && removed[6] == 1); /* chars, decontam, exact */
    json_decref(rep);
    /* usage errors exit 2; a missing file exits 1 naming it */
    CHECK(t, run("curate clean", &out) == 2);
    free(out);
    snprintf(args, sizeof args, "curate clean %s", a);
    CHECK(t, run(args, &out) == 2 && strstr(out, "-o FILE"));
    free(out);
    snprintf(args, sizeof args, "curate clean %s -o %s --threshold 7", a, tmp("x"));
    CHECK(t, run(args, &out) == 2);
    free(out);
    snprintf(args, sizeof args, "curate clean %s -o %s", tmp("missing.txt"), tmp("x"));
    CHECK(t, run(args, &out) == 1 && strstr(out, "missing.txt"));
    free(out);
    CHECK(t, run("curate frob", &out) == 2);
    free(out);
    CHECK(t, run("eval frob", &out) == 2);
    free(out);
}

static void test_eval_cli(nm_test *t) {
    const char *text = write_tmp("e.txt", "Once upon a time, there was a little girl named Lily. She liked to play.\n");
    char args[4096], *out;
    snprintf(args, sizeof args, "eval ppl -m %s --data %s --json", MODEL, text);
    if (CHECKF(t, run(args, &out) == 0, "%s", out)) {
        json_t *j = json_loads(out, 0, NULL);
        CHECKF(t, j && json_number_value(json_object_get(j, "perplexity")) > 1 &&
                      json_integer_value(json_object_get(j, "tokens")) > 10,
               "%s", out);
        json_decref(j);
    }
    free(out);
    const char *prompts = write_tmp("m.txt", "Once upon a time\nTom and his dog\n");
    snprintf(args, sizeof args, "eval match -m %s --prompts %s -n 4 --max-tokens 16 --seed 3 --regex '.' --json", MODEL,
             prompts);
    if (CHECKF(t, run(args, &out) == 0, "%s", out)) {
        json_t *j = json_loads(out, 0, NULL);
        CHECKF(t, j && json_integer_value(json_object_get(j, "samples")) == 8 &&
                      json_integer_value(json_object_get(j, "matched")) == 8,
               "%s", out);
        json_decref(j);
    }
    free(out);
    snprintf(args, sizeof args, "eval match -m %s --prompts %s --regex '(' ", MODEL, prompts);
    CHECK(t, run(args, &out) == 1 && strstr(out, "regular expression"));
    free(out);
    /* adapter stacks: a one-step adapter changes the perplexity; the same
     * adapter scaled by 0 gives the base model's exactly */
    snprintf(args, sizeof args, "train -m %s --data %s --format text --rank 2 --steps 2 --lr 0.05 --seq 16 --batch 2 "
             "--out %s --quiet", MODEL, text, tmp("ad"));
    if (!CHECKF(t, run(args, &out) == 0, "%s", out)) {
        free(out);
        return;
    }
    free(out);
    double ppl[3] = {0};
    const char *extra[3] = {"", "--lora %s", "--lora-scaled %s 0"};
    for (int k = 0; k < 3; k++) {
        char lora[600];
        snprintf(lora, sizeof lora, extra[k], tmp("ad"));
        snprintf(args, sizeof args, "eval ppl -m %s --data %s %s --json", MODEL, text, lora);
        if (CHECKF(t, run(args, &out) == 0, "%s", out)) {
            json_t *j = json_loads(out, 0, NULL);
            ppl[k] = json_number_value(json_object_get(j, "perplexity"));
            json_decref(j);
        }
        free(out);
    }
    CHECKF(t, ppl[0] > 0 && ppl[1] != ppl[0] && ppl[2] == ppl[0], "base %.6f, adapter %.6f, scaled by 0 %.6f", ppl[0],
           ppl[1], ppl[2]);
    snprintf(args, sizeof args, "eval ppl -m %s --data %s --lora %s", MODEL, text, tmp("no-such-adapter"));
    CHECK(t, run(args, &out) == 1 && strstr(out, "no-such-adapter"));
    free(out);
    snprintf(args, sizeof args, "eval ppl -m %s --data %s --lora-scaled %s x", MODEL, text, tmp("ad"));
    CHECK(t, run(args, &out) == 2);
    free(out);
}

/* The side-by-side page: items, order, and the form in headless Chromium
 * (Debian's, driven by playwright-core as tests/serve does). */
static void test_sbs(nm_test *t) {
    const char *prompts = write_tmp("s.txt", "Once upon a time\nTom and his dog\nThe sun was\nLily <b>said</b>\n");
    char args[4096], *out;
    snprintf(args, sizeof args,
             "eval sbs -a %s -b %s --name-a base --name-b other --prompts %s -o %s --jsonl %s --max-tokens 20 --seed 9 "
             "--order-seed 4",
             MODEL, MODEL, prompts, tmp("sbs.html"), tmp("sbs.jsonl"));
    if (!CHECKF(t, run(args, &out) == 0, "%s", out)) return;
    free(out);
    size_t n;
    json_t *lines = load_lines(tmp("sbs.jsonl"), &n);
    CHECK(t, n == 4);
    int left_a = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(lines, i);
        /* same model, same seed: both sides wrote the same story */
        CHECK(t, !strcmp(json_string_value(json_object_get(x, "a")), json_string_value(json_object_get(x, "b"))));
        left_a += !strcmp(json_string_value(json_object_get(x, "left")), "a");
    }
    CHECKF(t, left_a > 0 && left_a < 4, "%d of 4 on the left", left_a); /* seeded: this order mixes */
    char *html = nm_test_read(tmp("sbs.html"), NULL);
    CHECK(t, html && !strstr(html, "<b>said</b>") && strstr(html, "\\u003cb>said\\u003c/b>")); /* no markup injected */
    free(html);
    /* drive the form in Chromium if it is there */
    const char *pw = "tests/serve/node_modules/playwright-core/index.mjs";
    if (!nm_test_file_exists("/usr/bin/chromium") || !nm_test_file_exists(pw)) {
        CHECKF(t, false, "headless Chromium or playwright-core missing (scripts/setup.sh installs them)");
        json_decref(lines);
        return;
    }
    char cwd[1024];
    if (!getcwd(cwd, sizeof cwd)) cwd[0] = 0;
    char script[8192];
    snprintf(script, sizeof script,
             "import { chromium } from '%s/%s';\n"
             "const b = await chromium.launch({executablePath: '/usr/bin/chromium', headless: true,"
             " args: ['--no-sandbox', '--disable-gpu']});\n"
             "const p = await b.newPage();\n"
             "await p.goto('file://%s');\n"
             "await p.check('#item-0 input[value=left]');\n"
             "await p.check('#item-1 input[value=right]');\n"
             "await p.check('#item-2 input[value=tie]');\n"
             "const count = await p.textContent('#count');\n"
             "const dl = p.waitForEvent('download');\n"
             "await p.click('#export');\n"
             "const d = await dl;\n"
             "await d.saveAs('%s');\n"
             "console.log(count);\n"
             "await b.close();\n",
             cwd, pw, tmp("sbs.html"), tmp("choices.json"));
    write_tmp("drive.mjs", script);
    snprintf(args, sizeof args, "cd %s && node %s 2>&1", nm_test_tmpdir(), tmp("drive.mjs"));
    int rc = nm_test_sh(args, &out);
    if (CHECKF(t, rc == 0 && strstr(out, "3 of 4 answered"), "node: %d %s", rc, out)) {
        json_t *ch = json_load_file(tmp("choices.json"), 0, NULL);
        json_t *c = json_object_get(ch, "choices");
        CHECK(t, json_array_size(c) == 4 && !strcmp(json_string_value(json_object_get(ch, "a")), "base"));
        for (size_t i = 0; i < 4 && i < json_array_size(c); i++) {
            /* the page's "left" is the JSONL's */
            CHECK(t, !strcmp(json_string_value(json_object_get(json_array_get(c, i), "left")),
                             json_string_value(json_object_get(json_array_get(lines, i), "left"))));
        }
        json_decref(ch);
        /* the tally of those choices: item 0's left side won, item 1's right */
        const char *l0 = json_string_value(json_object_get(json_array_get(lines, 0), "left"));
        const char *l1 = json_string_value(json_object_get(json_array_get(lines, 1), "left"));
        int b_wins = (!strcmp(l0, "b")) + (!!strcmp(l1, "b"));
        char *o2;
        snprintf(args, sizeof args, "eval --tally %s --json", tmp("choices.json"));
        if (CHECK(t, run(args, &o2) == 0)) {
            json_t *j = json_loads(o2, 0, NULL);
            CHECKF(t, j && json_integer_value(json_object_get(j, "b_wins")) == b_wins &&
                          json_integer_value(json_object_get(j, "a_wins")) == 2 - b_wins &&
                          json_integer_value(json_object_get(j, "ties")) == 1 &&
                          json_integer_value(json_object_get(j, "unanswered")) == 1,
                   "%s", o2);
            json_decref(j);
        }
        free(o2);
    }
    free(out);
    json_decref(lines);
}

int main(void) {
    MODEL = nm_test_shared("models/stories260K.gguf");
    nm_test_run("generate_deterministic", test_generate_deterministic);
    nm_test_run("score_chain", test_score_chain);
    nm_test_run("command_scorer", test_command_scorer);
    nm_test_run("clean_cli", test_clean_cli);
    nm_test_run("eval_cli", test_eval_cli);
    nm_test_run("sbs", test_sbs);
    return nm_test_finish();
}
