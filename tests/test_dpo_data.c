/* test_dpo_data.c - the preference-pair reader (issue 11): the demo file,
 * the same pair in every layout giving the same tokens, answer-only masks,
 * truncation, bad records named by file and line (or skipped and counted),
 * hostile input (every truncation, random corruption), pair-preserving
 * split and rows. */
#include "testlib.h"
#include "train/pref.h"
#include "base/base.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static nm_gguf *g_gguf;
static nm_vocab *g_vocab;

static nm_data_opts opts(int64_t seq_len, bool skip_bad) {
    nm_data_opts o = {0};
    o.vocab = g_vocab;
    o.tmpl = nm_chat_template_from_name("llama2");
    o.seq_len = seq_len;
    o.skip_bad = skip_bad;
    return o;
}

static nm_status load(const char *text, int64_t seq_len, bool skip_bad, nm_dataset *d, nm_err *err) {
    nm_data_opts o = opts(seq_len, skip_bad);
    return nm_pref_load_text("pairs.jsonl", text, strlen(text), &o, d, err);
}

/* Text of the answer (trained) tokens of example e. */
static char *answer_text(const nm_dataset *d, int64_t e) {
    nm_buf b;
    nm_buf_init(&b);
    for (int64_t i = 1; i < d->ex_len[e]; i++) {
        if (!d->trn[d->ex_off[e] + i]) continue;
        char piece[128];
        int32_t n = nm_token_to_piece(g_vocab, d->tok[d->ex_off[e] + i], piece, sizeof piece, false);
        if (n > 0) nm_buf_push(&b, piece, (size_t)n);
    }
    nm_buf_push(&b, "", 1);
    return (char *)b.data;
}

static int64_t first_trained(const nm_dataset *d, int64_t e) {
    for (int64_t i = 0; i < d->ex_len[e]; i++)
        if (d->trn[d->ex_off[e] + i]) return i;
    return -1;
}

static void test_demo_file(nm_test *t) {
    const char *path = nm_test_shared("data/dpo_en_demo.json");
    nm_data_opts o = opts(4096, false);
    nm_dataset d;
    nm_err err = {0};
    if (!CHECK_OK(t, nm_pref_load(path, &o, &d, &err), err)) return;
    CHECKF(t, d.n_records == 300 && d.n_ex == 600 && d.n_bad == 0 && d.n_empty == 0, "records %lld examples %lld",
           (long long)d.n_records, (long long)d.n_ex);
    /* each pair: one prompt (identical tokens up to the answer), then the
     * answers; only answer tokens trained */
    int64_t same_prompt = 0;
    for (int64_t k = 0; k < d.n_ex / 2; k++) {
        int64_t a = first_trained(&d, 2 * k), b = first_trained(&d, 2 * k + 1);
        same_prompt += a > 0 && a == b && !memcmp(d.tok + d.ex_off[2 * k], d.tok + d.ex_off[2 * k + 1], (size_t)a * 4);
    }
    CHECKF(t, same_prompt == 300, "%lld of 300 pairs share their prompt tokens", (long long)same_prompt);
    /* the answers are the file's chosen / rejected texts (read here with jansson) */
    json_t *j = json_load_file(path, 0, NULL);
    int good = 0;
    for (int k = 0; k < 300; k++) {
        json_t *r = json_array_get(j, (size_t)k);
        const char *ch = json_string_value(json_object_get(json_object_get(r, "chosen"), "value"));
        const char *rj = json_string_value(json_object_get(json_object_get(r, "rejected"), "value"));
        char *ac = answer_text(&d, 2 * k), *ar = answer_text(&d, 2 * k + 1);
        const char *pc = ac, *pr = ar;
        while (*pc == ' ') pc++;
        while (*pr == ' ') pr++;
        size_t n1 = strlen(ch) < 30 ? strlen(ch) : 30, n2 = strlen(rj) < 30 ? strlen(rj) : 30;
        good += ch && rj && !strncmp(pc, ch, n1) && !strncmp(pr, rj, n2);
        free(ac);
        free(ar);
    }
    CHECKF(t, good == 300, "%d of 300 answers read back as the file's text", good);
    json_decref(j);
    nm_dataset_deinit(&d);
}

/* One conversation in the four layouts: the same tokens and masks. */
static void test_layouts_agree(nm_test *t) {
    const char *forms[] = {
        /* ShareGPT */
        "{\"conversations\":[{\"from\":\"human\",\"value\":\"Hi\"},{\"from\":\"gpt\",\"value\":\"Hello!\"},"
        "{\"from\":\"human\",\"value\":\"Tell me a story.\"}],"
        "\"chosen\":{\"from\":\"gpt\",\"value\":\"Once upon a time there was a cat.\"},"
        "\"rejected\":{\"from\":\"gpt\",\"value\":\"No.\"}}",
        /* flat, message lists */
        "{\"prompt\":[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Hello!\"},"
        "{\"role\":\"user\",\"content\":\"Tell me a story.\"}],"
        "\"chosen\":[{\"role\":\"assistant\",\"content\":\"Once upon a time there was a cat.\"}],"
        "\"rejected\":[{\"role\":\"assistant\",\"content\":\"No.\"}]}",
        /* flat, answers as strings */
        "{\"prompt\":[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Hello!\"},"
        "{\"role\":\"user\",\"content\":\"Tell me a story.\"}],"
        "\"chosen\":\"Once upon a time there was a cat.\",\"rejected\":\"No.\"}",
        /* HH-RLHF transcripts */
        "{\"chosen\":\"\\n\\nHuman: Hi\\n\\nAssistant: Hello!\\n\\nHuman: Tell me a story.\\n\\nAssistant: Once upon a "
        "time there was a cat.\",\"rejected\":\"\\n\\nHuman: Hi\\n\\nAssistant: Hello!\\n\\nHuman: Tell me a story."
        "\\n\\nAssistant: No.\"}",
    };
    nm_dataset d[4];
    nm_err err = {0};
    for (int i = 0; i < 4; i++)
        if (!CHECK_OK(t, load(forms[i], 512, false, &d[i], &err), err)) return;
    for (int i = 1; i < 4; i++)
        CHECKF(t, nm_dataset_hash(&d[i]) == nm_dataset_hash(&d[0]) && d[i].n_ex == 2, "layout %d differs from ShareGPT",
               i);
    /* only the last answer is trained (not the earlier "Hello!") */
    char *a = answer_text(&d[0], 0), *b = answer_text(&d[0], 1);
    CHECKF(t, strstr(a, "Once upon a time there was a cat.") && !strstr(a, "Hello") && strstr(b, "No.") &&
                  !strstr(b, "Hello"),
           "answers '%s' / '%s'", a, b);
    free(a);
    free(b);
    /* a flat string prompt is one user turn; a system field comes first */
    nm_dataset e;
    if (CHECK_OK(t, load("{\"system\":\"Be kind.\",\"prompt\":\"Tell me a story.\",\"chosen\":\"Yes.\",\"rejected\":\"No.\"}",
                         512, false, &e, &err), err)) {
        CHECK(t, e.n_ex == 2 && first_trained(&e, 0) == first_trained(&e, 1));
        nm_dataset_deinit(&e);
    }
    /* JSON array and JSON lines: the same data */
    nm_dataset f, g;
    char arr[4096], lines[4096];
    snprintf(arr, sizeof arr, "[\n%s,\n%s\n]\n", forms[0], forms[3]);
    snprintf(lines, sizeof lines, "%s\n\n%s\n", forms[0], forms[3]);
    if (CHECK_OK(t, load(arr, 512, false, &f, &err), err) && CHECK_OK(t, load(lines, 512, false, &g, &err), err))
        CHECK(t, f.n_ex == 4 && nm_dataset_hash(&f) == nm_dataset_hash(&g));
    nm_dataset_deinit(&f);
    nm_dataset_deinit(&g);
    for (int i = 0; i < 4; i++) nm_dataset_deinit(&d[i]);
}

static void test_truncation(nm_test *t) {
    nm_buf b;
    nm_buf_init(&b);
    const char *head = "{\"prompt\":\"";
    nm_buf_push(&b, head, strlen(head));
    for (int i = 0; i < 60; i++) nm_buf_push(&b, "the big red dog ran ", 20); /* a prompt of ~300 tokens */
    const char *tail = "\",\"chosen\":\"A happy ending with a big smile.\",\"rejected\":\"Sad.\"}";
    nm_buf_push(&b, tail, strlen(tail) + 1);
    nm_dataset d;
    nm_err err = {0};
    if (!CHECK_OK(t, load((const char *)b.data, 32, false, &d, &err), err)) goto out;
    /* both sides fit seq_len + 1 tokens and keep their answer's start */
    /* the longer side fills the window, both lost the same prompt start */
    int64_t a0 = first_trained(&d, 0), a1 = first_trained(&d, 1);
    CHECK(t, a0 > 0 && a0 == a1 && !memcmp(d.tok + d.ex_off[0], d.tok + d.ex_off[1], (size_t)a0 * 4));
    CHECKF(t, d.n_ex == 2 && d.ex_len[0] == 33 && d.ex_len[1] < 33 && d.n_truncated == 1,
           "examples %lld, lengths %lld %lld, truncated %lld", (long long)d.n_ex, (long long)d.ex_len[0],
           (long long)d.ex_len[1], (long long)d.n_truncated);
    char *a = answer_text(&d, 0), *r = answer_text(&d, 1);
    CHECKF(t, strstr(a, "A happy ending") && strstr(r, "Sad."), "answers after truncation: '%s' / '%s'", a, r);
    free(a);
    free(r);
    nm_dataset_deinit(&d);
out:
    nm_buf_deinit(&b);
}

static void test_bad_records(nm_test *t) {
    static const struct {
        const char *rec, *why;
    } bad[] = {
        {"{\"prompt\":\"x\",\"rejected\":\"n\"}", "missing field \"chosen\""},
        {"{\"prompt\":\"x\",\"chosen\":\"y\"}", "missing field \"rejected\""},
        {"{\"prompt\":\"x\",\"chosen\":3,\"rejected\":\"n\"}", "\"chosen\" is not a string"},
        {"[1,2]", "not a JSON object"},
        {"{\"prompt\":\"x\",\"chosen\":\"y\",", "invalid JSON"},
        {"{\"conversations\":[{\"from\":\"alien\",\"value\":\"x\"}],\"chosen\":\"y\",\"rejected\":\"n\"}",
         "unsupported speaker"},
        {"{\"conversations\":{},\"chosen\":\"y\",\"rejected\":\"n\"}", "not a list of messages"},
        {"{\"prompt\":\"x\",\"chosen\":[{\"role\":\"user\",\"content\":\"y\"}],\"rejected\":\"n\"}",
         "does not end with an assistant message"},
        {"{\"prompt\":\"x\",\"chosen\":[],\"rejected\":\"n\"}", "empty list"},
        {"{\"prompt\":\"x\",\"chosen\":{\"from\":\"gpt\"},\"rejected\":\"n\"}", "no string \"value\""},
        {"{\"chosen\":\"\\n\\nHuman: a\\n\\nAssistant: b\",\"rejected\":\"\\n\\nHuman: c\\n\\nAssistant: d\"}",
         "share no prompt"},
        {"{\"chosen\":\"Human: a Assistant: b\",\"rejected\":\"Human: a Assistant: c\"}", "share no prompt"},
        {"{\"chosen\":\"hello\\n\\nAssistant: b\",\"rejected\":\"hello\\n\\nAssistant: c\"}", "does not start"},
        {"{\"prompt\":\"x\",\"chosen\":\"\",\"rejected\":\"n\"}", "empty"},
        {"{\"prompt\":\"x\",\"chosen\":\"y\",\"rejected\":\"n\",\"system\":5}", "\"system\" is not a string"},
        {"{\"chosen\":[\"y\"],\"rejected\":[\"n\"]}", "not transcripts"},
    };
    const char *good = "{\"prompt\":\"Tell me a story.\",\"chosen\":\"Yes.\",\"rejected\":\"No.\"}";
    int n = (int)(sizeof bad / sizeof bad[0]);
    nm_buf all;
    nm_buf_init(&all);
    for (int i = 0; i < n; i++) {
        /* two good records, then the bad one on line 3 */
        char text[1024];
        snprintf(text, sizeof text, "%s\n%s\n%s\n", good, good, bad[i].rec);
        nm_dataset d;
        nm_err err = {0};
        nm_status st = load(text, 512, false, &d, &err);
        CHECKF(t, st == NM_ERR_FORMAT && strstr(err.msg, "pairs.jsonl:3: record 3:") && strstr(err.msg, bad[i].why),
               "bad record %d: status %d, message '%s' (want '%s')", i, st, err.msg, bad[i].why);
        if (!st) nm_dataset_deinit(&d);
        nm_buf_push(&all, bad[i].rec, strlen(bad[i].rec));
        nm_buf_push(&all, "\n", 1);
        nm_buf_push(&all, good, strlen(good));
        nm_buf_push(&all, "\n", 1);
    }
    nm_buf_push(&all, "", 1);
    /* skipped and counted on request */
    nm_dataset d;
    nm_err err = {0};
    if (CHECK_OK(t, load((const char *)all.data, 512, true, &d, &err), err)) {
        CHECKF(t, d.n_bad == n && d.n_ex == 2 * n, "skipped %lld of %d, kept %lld examples", (long long)d.n_bad, n,
               (long long)d.n_ex);
        nm_dataset_deinit(&d);
    }
    nm_buf_deinit(&all);
    /* broken array structure: fatal with its line; nothing usable: an error */
    CHECK(t, load("[\n{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n{\"prompt\":\"a\"}]", 512, true, &d,
                  &err) == NM_ERR_FORMAT && strstr(err.msg, "pairs.jsonl:3:"));
    CHECK(t, load("[]", 512, false, &d, &err) == NM_ERR_FORMAT && strstr(err.msg, "no usable preference pair"));
    CHECK(t, load("", 512, false, &d, &err) == NM_ERR_FORMAT);
}

/* Every truncation and random corruption of a valid file: an error or a
 * result, never a crash (ASan and UBSan check the memory). */
static void test_hostile(nm_test *t) {
    const char *text =
        "[{\"conversations\":[{\"from\":\"human\",\"value\":\"Hi \\u00e9\\\"q\\\"\"}],\"chosen\":{\"from\":\"gpt\","
        "\"value\":\"Yes.\"},\"rejected\":{\"from\":\"gpt\",\"value\":\"No.\"}},\n"
        "{\"prompt\":[{\"role\":\"user\",\"content\":\"a\"}],\"chosen\":\"b\",\"rejected\":[{\"from\":\"gpt\","
        "\"value\":\"c\"}],\"system\":\"s\"},\n"
        "{\"chosen\":\"\\n\\nHuman: x\\n\\nAssistant: y\",\"rejected\":\"\\n\\nHuman: x\\n\\nAssistant: z\"}]\n";
    size_t len = strlen(text);
    char *buf = malloc(len + 1);
    int ok = 0, failed = 0;
    for (int skip = 0; skip < 2; skip++)
        for (size_t n = 0; n <= len; n++) {
            memcpy(buf, text, n);
            nm_dataset d;
            nm_err err = {0};
            nm_data_opts o = opts(64, skip);
            nm_status st = nm_pref_load_text("h.json", buf, n, &o, &d, &err); /* not NUL-terminated */
            if (st == NM_OK) {
                ok++;
                CHECK(t, d.n_ex % 2 == 0);
                nm_dataset_deinit(&d);
            } else {
                failed++;
                CHECK(t, st == NM_ERR_FORMAT && strncmp(err.msg, "h.json", 6) == 0);
            }
        }
    CHECK(t, ok >= 2 && failed > 0);
    nm_rng rng;
    nm_rng_seed(&rng, 3);
    const char alphabet[] = "{}[]\",:\\ \nab0";
    for (int it = 0; it < 400; it++) {
        memcpy(buf, text, len);
        for (int k = 0; k < 3; k++) buf[nm_rng_u64(&rng) % len] = alphabet[nm_rng_u64(&rng) % (sizeof alphabet - 1)];
        nm_dataset d;
        nm_err err = {0};
        nm_data_opts o = opts(64, it & 1);
        if (nm_pref_load_text("h.json", buf, len, &o, &d, &err) == NM_OK) nm_dataset_deinit(&d);
    }
    free(buf);
}

static void test_split_and_rows(nm_test *t) {
    nm_buf b;
    nm_buf_init(&b);
    for (int i = 0; i < 20; i++) {
        char rec[256];
        snprintf(rec, sizeof rec, "{\"prompt\":\"Story %d about a dog.\",\"chosen\":\"Good %d.\",\"rejected\":\"Bad.\"}\n",
                 i, i);
        nm_buf_push(&b, rec, strlen(rec));
    }
    nm_buf_push(&b, "", 1);
    nm_dataset d, v;
    nm_err err = {0};
    if (!CHECK_OK(t, load((const char *)b.data, 64, false, &d, &err), err)) goto out;
    if (!CHECK_OK(t, nm_pref_split(&d, &v, 0.25, 9, &err), err)) goto out2;
    CHECK(t, d.n_ex == 30 && v.n_ex == 10);
    /* pairs stay whole: both sides of each pair share the prompt */
    bool whole = true;
    for (int s = 0; s < 2; s++) {
        nm_dataset *x = s ? &v : &d;
        for (int64_t k = 0; k < x->n_ex / 2; k++) {
            int64_t a = first_trained(x, 2 * k);
            whole &= a == first_trained(x, 2 * k + 1) &&
                     !memcmp(x->tok + x->ex_off[2 * k], x->tok + x->ex_off[2 * k + 1], (size_t)a * 4);
        }
    }
    CHECK(t, whole);
    nm_rows r;
    int64_t *pair;
    if (CHECK_OK(t, nm_pref_rows(&d, 64, true, 5, &r, &pair, &err), err)) {
        CHECK(t, r.n_rows == 30);
        /* rows 2k, 2k+1 are pair[k]'s chosen and rejected; pair is a permutation */
        bool rows_ok = true, seen[15] = {0};
        for (int64_t k = 0; k < 15; k++) {
            rows_ok &= pair[k] >= 0 && pair[k] < 15 && !seen[pair[k]];
            if (!rows_ok) break;
            seen[pair[k]] = true;
            for (int s = 0; s < 2; s++) {
                int64_t e = 2 * pair[k] + s;
                for (int64_t j = 0; j + 1 < d.ex_len[e]; j++)
                    rows_ok &= r.tokens[(2 * k + s) * 64 + j] == d.tok[d.ex_off[e] + j] &&
                               r.targets[(2 * k + s) * 64 + j] == (d.trn[d.ex_off[e] + j + 1] ? d.tok[d.ex_off[e] + j + 1] : -1);
                rows_ok &= r.targets[(2 * k + s) * 64 + 63] == -1; /* padding */
            }
        }
        CHECK(t, rows_ok);
        free(pair);
        nm_rows_deinit(&r);
    }
    nm_dataset_deinit(&v);
out2:
    nm_dataset_deinit(&d);
out:
    nm_buf_deinit(&b);
}

int main(void) {
    nm_err err = {0};
    if (nm_gguf_open(nm_test_shared("models/stories260K.gguf"), &g_gguf, &err) ||
        nm_vocab_from_gguf(g_gguf, &g_vocab, NULL, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    nm_test_run("demo_file", test_demo_file);
    nm_test_run("layouts_agree", test_layouts_agree);
    nm_test_run("truncation", test_truncation);
    nm_test_run("bad_records_named", test_bad_records);
    nm_test_run("hostile_input", test_hostile);
    nm_test_run("split_and_rows", test_split_and_rows);
    nm_vocab_free(g_vocab);
    nm_gguf_free(g_gguf);
    return nm_test_finish();
}
