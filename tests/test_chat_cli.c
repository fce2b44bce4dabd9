/*
 * test_chat_cli.c - `nomoat chat` as a user meets it, on the real
 * stories260K model: answers through a pipe, the same answer as decoding
 * the rendered prompt by hand with the library, only the new turn decoded,
 * stop strings, Ctrl-C during an answer and at the prompt, usage errors.
 */
#include "testlib.h"

#include <string.h>

static const char *model(void) { return nm_test_shared("models/stories260K.gguf"); }

/* Runs `printf INPUT | nomoat chat -m stories260K ARGS`; stdout in *out,
 * stderr in the file *err_path (when given). */
static int chat(const char *input, const char *args, char **out, const char *err_path) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "printf '%s' | %s chat -m %s %s 2>%s", input, nm_test_bin(), model(), args,
             err_path ? err_path : "/dev/null");
    return nm_test_sh(cmd, out);
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static bool has_letters(const char *s) {
    int n = 0;
    for (; *s; s++) n += (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z');
    return n >= 5;
}

static void test_two_turns_through_a_pipe(nm_test *t) {
    char *out = NULL;
    int rc = chat("Hello\\nTell me a story\\n", "-n 20 --seed 1", &out, NULL);
    CHECKF(t, rc == 0, "exit %d", rc);
    if (!out) return;
    CHECKF(t, count_lines(out) >= 2, "want a line (at least) per answer, got: %s", out);
    CHECKF(t, has_letters(out), "no text in: %s", out);
    /* the same seed gives the same conversation */
    char *again = NULL;
    CHECK(t, chat("Hello\\nTell me a story\\n", "-n 20 --seed 1", &again, NULL) == 0);
    CHECKF(t, again && strcmp(out, again) == 0, "seed 1 twice: '%s' vs '%s'", out, again ? again : "");
    free(again);
    /* another seed, another story */
    CHECK(t, chat("Hello\\nTell me a story\\n", "-n 20 --seed 2", &again, NULL) == 0);
    CHECKF(t, again && strcmp(out, again) != 0, "seeds 1 and 2 gave the same text: %s", out);
    free(again);
    free(out);
    /* empty input: nothing to answer, clean exit; empty lines are skipped */
    CHECK(t, chat("", "-n 5", &out, NULL) == 0 && out && !*out);
    free(out);
    CHECK(t, chat("\\n\\nHi\\n", "-n 5 --seed 1", &out, NULL) == 0 && out && count_lines(out) >= 1);
    free(out);
    /* a last line without a newline still counts */
    CHECK(t, chat("Hi", "-n 5 --seed 1", &out, NULL) == 0 && out && count_lines(out) >= 1);
    free(out);
}

/* The first greedy answer equals what the library gives for the prompt the
 * documented default template (chatml) renders, with BOS in front. */
static void test_greedy_answer_matches_library(nm_test *t) {
    nm_err err = {0};
    nm_model *m = NULL;
    nm_context *c = NULL;
    char *prompt = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    if (!CHECK_OK(t, nm_model_load(model(), NULL, &m, &err), err)) return;
    const nm_vocab *v = nm_model_vocab(m);
    nm_chat_msg msg = {"user", "Hello"};
    nm_context_params cp = nm_context_default_params();
    cp.n_ctx = 256;
    if (!CHECK_OK(t, nm_context_new(m, &cp, &c, &err), err)) goto done;
    if (!CHECK_OK(t, nm_chat_render(NM_CHAT_TEMPLATE_CHATML, &msg, 1, true, &prompt, &err), err)) goto done;
    if (!CHECK_OK(t, nm_tokenize(v, prompt, strlen(prompt), false, true, &ids, &n, &err), err)) goto done;
    int32_t bos = nm_vocab_bos(v);
    if (!CHECK_OK(t, nm_decode(c, &bos, 1, &err), err)) goto done;
    if (!CHECK_OK(t, nm_decode(c, ids, (int32_t)n, &err), err)) goto done;
    char want[4096] = "";
    size_t wl = 0;
    for (int i = 0; i < 20; i++) {
        int32_t id = nm_logits_argmax(nm_get_logits(c), nm_vocab_n_tokens(v));
        if (nm_vocab_is_eog(v, id)) break;
        char piece[64];
        int32_t pl = nm_token_to_piece(v, id, piece, sizeof piece, false);
        if (pl > 0 && wl + (size_t)pl < sizeof want) {
            memcpy(want + wl, piece, (size_t)pl);
            wl += (size_t)pl;
            want[wl] = 0;
        }
        if (!CHECK_OK(t, nm_decode(c, &id, 1, &err), err)) goto done;
    }
    const char *w = want[0] == ' ' ? want + 1 : want; /* the answer's first space is not shown */
    char *out = NULL;
    CHECK(t, chat("Hello\\n", "-n 20 --temp 0", &out, NULL) == 0);
    CHECKF(t, out && strncmp(out, w, strlen(w)) == 0 && out[strlen(w)] == '\n', "chat said '%s', library '%s'",
           out ? out : "", w);
    free(out);
done:
    free(ids);
    free(prompt);
    nm_context_free(c);
    nm_model_free(m);
}

/* Reads the "[prompt: N new tokens, M from the cache; ...; context U/C]"
 * lines that -v prints after each answer. */
static int read_stats(const char *path, int *fresh, int *cached, int *used, int max) {
    char *s = nm_test_read(path, NULL);
    int k = 0;
    for (char *p = s; p && k < max && (p = strstr(p, "[prompt: ")); p++) {
        int ctx;
        if (sscanf(p, "[prompt: %d new tokens, %d from the cache", &fresh[k], &cached[k]) == 2) {
            char *q = strstr(p, "context ");
            if (q && sscanf(q, "context %d/%d", &used[k], &ctx) == 2) k++;
        }
    }
    free(s);
    return k;
}

/* Each turn decodes only its new text: the cache keeps everything before. */
static void test_only_new_turn_decoded(nm_test *t) {
    const char *tmpls[] = {"chatml", "llama3", "gemma"};
    for (int ti = 0; ti < 3; ti++) {
        char err_path[512], args[256], *out = NULL;
        snprintf(err_path, sizeof err_path, "%s/stats-%d.txt", nm_test_tmpdir(), ti);
        snprintf(args, sizeof args, "-n 12 --seed 4 -v --chat-template %s", tmpls[ti]);
        CHECK(t, chat("Hello\\nTell me a story\\nWhat next?\\n", args, &out, err_path) == 0);
        free(out);
        int fresh[3], cached[3], used[3];
        int k = read_stats(err_path, fresh, cached, used, 3);
        if (!CHECKF(t, k == 3, "%s: %d stats lines", tmpls[ti], k)) continue;
        CHECKF(t, cached[0] == 0, "%s: first turn reused %d", tmpls[ti], cached[0]);
        for (int i = 1; i < 3; i++) {
            /* at most the last answer token may be cut back */
            CHECKF(t, cached[i] >= used[i - 1] - 1 && cached[i] <= used[i - 1], "%s turn %d: %d cached of %d",
                   tmpls[ti], i, cached[i], used[i - 1]);
            /* a later turn costs about what the first did, not the whole history */
            CHECKF(t, fresh[i] > 0 && fresh[i] <= 2 * fresh[0], "%s turn %d: %d new tokens (first turn %d)",
                   tmpls[ti], i, fresh[i], fresh[0]);
        }
    }
}

static void test_stop_string(nm_test *t) {
    char *free_run = NULL, *stopped = NULL;
    CHECK(t, chat("Tell me a story\\n", "-n 40 --seed 7", &free_run, NULL) == 0);
    CHECK(t, chat("Tell me a story\\n", "-n 40 --seed 7 --stop the --stop The", &stopped, NULL) == 0);
    if (free_run && stopped) {
        CHECKF(t, !strstr(stopped, "the") && !strstr(stopped, "The"), "stop string printed: %s", stopped);
        /* what was printed is the free run up to the stop string */
        size_t n = strlen(stopped);
        CHECKF(t, n >= 1 && strncmp(free_run, stopped, n - 1) == 0, "'%s' is not a prefix of '%s'", stopped, free_run);
        const char *th = strstr(free_run, "the"), *Th = strstr(free_run, "The");
        const char *first = th && (!Th || th < Th) ? th : Th;
        if (first) CHECKF(t, (size_t)(first - free_run) == n - 1, "cut at %zu, stop at %zu", n - 1,
                          (size_t)(first - free_run));
    }
    free(free_run);
    free(stopped);
}

/* Ctrl-C during an answer stops it and the chat goes on; Ctrl-C at the
 * prompt ends it with exit 0. */
static void test_ctrl_c(nm_test *t) {
    char cmd[4096], *out = NULL, path[512], errp[512];
    snprintf(path, sizeof path, "%s/ctrlc-out.txt", nm_test_tmpdir());
    snprintf(errp, sizeof errp, "%s/ctrlc-err.txt", nm_test_tmpdir());
    /* EOS banned: the answer would run on to the end of the context */
    snprintf(cmd, sizeof cmd,
             "(printf 'Tell me a story\\n'; sleep 2) | %s chat -m %s -n -1 --logit-bias 2=-inf --seed 1 >%s 2>%s & "
             "pid=$!; sleep 0.8; kill -INT $pid; wait $pid; echo rc=$?",
             nm_test_bin(), model(), path, errp);
    CHECK(t, nm_test_sh(cmd, &out) == 0);
    CHECKF(t, out && strstr(out, "rc=0"), "exit: %s", out ? out : "");
    free(out);
    char *err = nm_test_read(errp, NULL), *txt = nm_test_read(path, NULL);
    CHECKF(t, err && strstr(err, "answer stopped"), "stderr: %s", err ? err : "");
    CHECKF(t, txt && has_letters(txt), "no text before the stop: %s", txt ? txt : "");
    free(err);
    free(txt);

    snprintf(cmd, sizeof cmd,
             "(sleep 2) | %s chat -m %s >/dev/null 2>&1 & pid=$!; sleep 0.7; kill -INT $pid; wait $pid; echo rc=$?",
             nm_test_bin(), model());
    CHECK(t, nm_test_sh(cmd, &out) == 0);
    CHECKF(t, out && strstr(out, "rc=0"), "Ctrl-C at the prompt: %s", out ? out : "");
    free(out);
}

static int run2(const char *args, char **out) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "printf 'hi\\n' | %s chat %s 2>&1", nm_test_bin(), args);
    return nm_test_sh(cmd, out);
}

static void test_usage_errors(nm_test *t) {
    char args[1024], *out = NULL;
    const char *bad[] = {"--temp abc",         "--top-p 2",        "--min-p -1",      "--top-k -3",
                         "--seed -1",          "--logit-bias x",   "--logit-bias 5",  "--repeat-last-n -2",
                         "-n abc",             "--ctx -5",         "--threads x",     "--no-such-option",
                         "--chat-template no", "--temp",           "--stop ''",       "extra-argument",
                         "--logit-bias 99999=1" /* outside the 512-token vocabulary: known after loading */};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, "-m %s %s", model(), bad[i]);
        int rc = run2(args, &out);
        CHECKF(t, rc == 2, "'%s' -> %d: %.200s", bad[i], rc, out ? out : "");
        CHECKF(t, out && strstr(out, "nomoat chat"), "'%s': %.200s", bad[i], out ? out : "");
        free(out);
    }
    CHECK(t, run2("", &out) == 2 && strstr(out, "missing -m"));
    free(out);
    /* a file that is not there: failure, not usage */
    CHECK(t, run2("-m /nonexistent/model.gguf", &out) == 1 && strstr(out, "nomoat: error:") &&
                 strstr(out, "/nonexistent/model.gguf"));
    free(out);
    CHECK(t, run2("--help", &out) == 0 && strstr(out, "usage: nomoat chat") && strstr(out, "--top-p"));
    free(out);
    CHECK(t, run2("--chat-template list", &out) == 0 && strstr(out, "chatml\n") && strstr(out, "llama3\n"));
    free(out);
    /* good options are accepted */
    snprintf(args, sizeof args,
             "-m %s -n 3 --temp 0.5 --top-k 10 --top-p 0.9 --min-p 0.1 --repeat-penalty 1.1 --repeat-last-n -1 "
             "--frequency-penalty 0.1 --presence-penalty 0.1 --seed 3 --logit-bias 13=-inf --logit-bias 14+0.5 "
             "--stop xyz --system 'Be brief.' --ctx 128 --threads 1 --chat-template zephyr",
             model());
    CHECK(t, run2(args, &out) == 0);
    free(out);
}

int main(void) {
    nm_test_run("two_turns_through_a_pipe", test_two_turns_through_a_pipe);
    nm_test_run("greedy_answer_matches_library", test_greedy_answer_matches_library);
    nm_test_run("only_new_turn_decoded", test_only_new_turn_decoded);
    nm_test_run("stop_string", test_stop_string);
    nm_test_run("ctrl_c", test_ctrl_c);
    nm_test_run("usage_errors", test_usage_errors);
    return nm_test_finish();
}
