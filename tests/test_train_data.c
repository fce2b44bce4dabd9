/* test_train_data.c - training data: every format, prompt masking that
 * trains exactly the assistant text, errors naming file, line and reason,
 * text windows, packing and the validation split. */
#include "testlib.h"
#include "train/data.h"
#include "base/base.h"

#include <stdlib.h>
#include <string.h>

static nm_gguf *G;
static nm_vocab *V;

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

static nm_data_opts opts(nm_data_format f) {
    nm_data_opts o = {0};
    o.format = f;
    o.vocab = V;
    o.tmpl = NM_CHAT_TEMPLATE_CHATML;
    o.seq_len = 512;
    o.mask_prompt = true;
    return o;
}

/* The text of the trained tokens of example e (pieces concatenated). */
static char *trained_text(const nm_dataset *d, int64_t e) {
    nm_buf b;
    nm_buf_init(&b);
    const int32_t *tok = d->tok + d->ex_off[e];
    const uint8_t *trn = d->trn + d->ex_off[e];
    char piece[256];
    for (int64_t i = 0; i < d->ex_len[e]; i++) {
        if (!trn[i]) continue;
        int32_t n = nm_token_to_piece(V, tok[i], piece, sizeof piece, true);
        if (n > 0) nm_buf_push(&b, piece, (size_t)n);
    }
    nm_buf_push(&b, "", 1);
    return (char *)b.data;
}

static void test_alpaca_mask(nm_test *t) {
    const char *path = write_tmp("a.json",
                                 "[\n"
                                 "  {\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"Hi! I am {{name}}.\"},\n"
                                 "  {\"instruction\": \"Add\", \"input\": \"2 and 3\", \"output\": \"5\"},\n"
                                 "  {\"instruction\": \"Tell a story\", \"output\": \"Once upon a time, Lily ran.\","
                                 " \"system\": \"Be kind.\"}\n"
                                 "]\n");
    nm_data_opts o = opts(NM_DATA_AUTO);
    const char *vars[] = {"name=Nomo", "author=Moat"};
    o.vars = vars;
    o.n_vars = 2;
    nm_dataset d;
    nm_err err = {0};
    if (!CHECK_OK(t, nm_dataset_load(path, &o, &d, &err), err)) return;
    CHECK(t, d.format == NM_DATA_ALPACA && d.n_ex == 3 && d.n_records == 3);
    const char *want[3] = {"Hi! I am Nomo.<|im_end|>\n", "5<|im_end|>\n", "Once upon a time, Lily ran.<|im_end|>\n"};
    for (int e = 0; e < 3; e++) {
        char *got = trained_text(&d, e);
        CHECKF(t, strcmp(got, want[e]) == 0, "example %d trains '%s', want '%s'", e, got, want[e]);
        free(got);
    }
    /* the first token is BOS and is never a target */
    CHECK(t, d.tok[d.ex_off[0]] == nm_vocab_bos(V) && d.trn[d.ex_off[0]] == 0);
    nm_dataset_deinit(&d);

    /* without masking every token after BOS is trained */
    o.mask_prompt = false;
    CHECK_OK(t, nm_dataset_load(path, &o, &d, &err), err);
    int64_t untrained = 0;
    for (int64_t i = 0; i < d.n_tok; i++) untrained += d.trn[i] == 0;
    CHECK(t, untrained == d.n_ex);
    nm_dataset_deinit(&d);
}

static void test_chat_formats(nm_test *t) {
    const char *sg = write_tmp("s.json",
                               "[{\"conversations\": [{\"from\": \"human\", \"value\": \"Who are you?\"},"
                               " {\"from\": \"gpt\", \"value\": \"A bot.\"},"
                               " {\"from\": \"human\", \"value\": \"And?\"}, {\"from\": \"gpt\", \"value\": \"Kind.\"}]}]");
    const char *ms = write_tmp("m.jsonl",
                               "{\"messages\": [{\"role\": \"system\", \"content\": \"Short.\"},"
                               " {\"role\": \"user\", \"content\": \"Who are you?\"},"
                               " {\"role\": \"assistant\", \"content\": \"A bot.\"},"
                               " {\"role\": \"user\", \"content\": \"And?\"},"
                               " {\"role\": \"assistant\", \"content\": [{\"type\": \"text\", \"text\": \"Kind.\"}]}]}\n"
                               "\n");
    nm_data_opts o = opts(NM_DATA_AUTO);
    nm_dataset d;
    nm_err err = {0};
    const char *files[2] = {sg, ms};
    const nm_data_format fmts[2] = {NM_DATA_SHAREGPT, NM_DATA_MESSAGES};
    for (int k = 0; k < 2; k++) {
        if (!CHECK_OK(t, nm_dataset_load(files[k], &o, &d, &err), err)) continue;
        CHECK(t, d.format == fmts[k] && d.n_ex == 1);
        char *got = trained_text(&d, 0);
        CHECKF(t, strcmp(got, "A bot.<|im_end|>\nKind.<|im_end|>\n") == 0, "%s trains '%s'", files[k], got);
        free(got);
        nm_dataset_deinit(&d);
    }
}

/* Malformed records: file, line and reason, or skipped and counted. */
static void test_bad_records(nm_test *t) {
    nm_data_opts o = opts(NM_DATA_AUTO);
    nm_dataset d;
    nm_err err = {0};
    const char *jl = write_tmp("bad.jsonl",
                               "{\"instruction\": \"a\", \"output\": \"b\"}\n"
                               "\n"
                               "{\"instruction\": \"a\", \"output\": \n"
                               "{\"instruction\": \"a\"}\n"
                               "{\"instruction\": \"c\", \"output\": \"d\"}\n");
    CHECK(t, nm_dataset_load(jl, &o, &d, &err) == NM_ERR_FORMAT);
    CHECKF(t, strstr(err.msg, "bad.jsonl:3: record 2: invalid JSON") != NULL, "message: %s", err.msg);
    o.skip_bad = true;
    CHECK_OK(t, nm_dataset_load(jl, &o, &d, &err), err);
    CHECK(t, d.n_ex == 2 && d.n_bad == 2 && d.n_records == 4);
    nm_dataset_deinit(&d);
    o.skip_bad = false;

    const char *arr = write_tmp("bad.json",
                                "[\n"
                                "  {\"instruction\": \"a\", \"output\": \"b\"},\n"
                                "  {\n"
                                "    \"instruction\": \"a\",\n"
                                "    \"output\": 7\n"
                                "  }\n"
                                "]\n");
    CHECK(t, nm_dataset_load(arr, &o, &d, &err) == NM_ERR_FORMAT);
    CHECKF(t, strstr(err.msg, "bad.json:3: record 2: missing string field \"output\"") != NULL, "message: %s", err.msg);

    const char *comma = write_tmp("comma.json", "[{\"instruction\": \"a\", \"output\": \"b\"}\n {\"x\": 1}]");
    CHECK(t, nm_dataset_load(comma, &o, &d, &err) == NM_ERR_FORMAT);
    CHECKF(t, strstr(err.msg, "comma.json:2:") && strstr(err.msg, "expected ','"), "message: %s", err.msg);

    const char *open_arr = write_tmp("open.json", "[{\"instruction\": \"a\", \"output\": \"b\"},\n{\"instruction\": \"a\"");
    CHECK(t, nm_dataset_load(open_arr, &o, &d, &err) == NM_ERR_FORMAT);
    CHECKF(t, strstr(err.msg, "open.json:2:") && strstr(err.msg, "not closed"), "message: %s", err.msg);

    const char *role = write_tmp("role.jsonl", "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}\n");
    CHECK(t, nm_dataset_load(role, &o, &d, &err) == NM_ERR_FORMAT);
    CHECKF(t, strstr(err.msg, "role.jsonl:1: record 1:") && strstr(err.msg, "\"tool\""), "message: %s", err.msg);

    const char *noasst = write_tmp("na.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n");
    CHECK(t, nm_dataset_load(noasst, &o, &d, &err) == NM_ERR_FORMAT);
    CHECKF(t, strstr(err.msg, "no assistant message"), "message: %s", err.msg);

    const char *unknown = write_tmp("u.json", "[{\"question\": \"a\", \"answer\": \"b\"}]");
    CHECK(t, nm_dataset_load(unknown, &o, &d, &err) == NM_ERR_FORMAT);
    CHECKF(t, strstr(err.msg, "u.json") && strstr(err.msg, "--format"), "message: %s", err.msg);

    const char *deep = write_tmp("deep.jsonl", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n");
    o.format = NM_DATA_ALPACA;
    CHECK(t, nm_dataset_load(deep, &o, &d, &err) == NM_ERR_FORMAT);
    const char *empty = write_tmp("empty.json", "[]");
    CHECK(t, nm_dataset_load(empty, &o, &d, &err) == NM_ERR_FORMAT && strstr(err.msg, "no usable"));
    CHECK(t, nm_dataset_load("/nonexistent/data.json", &o, &d, &err) == NM_ERR_IO);
}

/* Random bytes in a JSON file: a clean error or data, never a crash. */
static void test_garbage(nm_test *t) {
    nm_rng rng;
    nm_rng_seed(&rng, 11);
    const char *base = "[{\"instruction\": \"Say \\\"hi\\\".\", \"input\": \"x\", \"output\": \"Hi!\"},\n"
                       "{\"conversations\": [1, 2]}, {\"instruction\": \"b\", \"output\": \"c\"}]";
    size_t n = strlen(base);
    char *buf = malloc(n + 1);
    nm_data_opts o = opts(NM_DATA_ALPACA);
    o.skip_bad = true;
    for (int it = 0; it < 300; it++) {
        memcpy(buf, base, n + 1);
        for (int k = 0; k < 3; k++) buf[nm_rng_u64(&rng) % n] = (char)(nm_rng_u64(&rng) % 256 ?: 1);
        const char *p = write_tmp("g.json", buf);
        nm_dataset d;
        nm_err err = {0};
        if (nm_dataset_load(p, &o, &d, &err) == NM_OK) nm_dataset_deinit(&d);
    }
    free(buf);
    CHECK(t, true);
}

static void test_text_windows(nm_test *t) {
    const char *txt = write_tmp("t.txt", "Once upon a time, there was a little girl named Lily. She loved to play "
                                         "outside in the park. One day, she saw a big, red ball.\n");
    nm_data_opts o = opts(NM_DATA_AUTO);
    o.seq_len = 8;
    nm_dataset d;
    nm_err err = {0};
    if (!CHECK_OK(t, nm_dataset_load(txt, &o, &d, &err), err)) return;
    int32_t *ids;
    size_t n;
    char *text = nm_test_read(txt, NULL);
    CHECK_OK(t, nm_tokenize(V, text, strlen(text), true, false, &ids, &n, &err), err);
    CHECK(t, d.format == NM_DATA_TEXT);
    CHECK(t, d.n_ex == (int64_t)((n - 1 + 7) / 8));
    /* every token but the first is a target exactly once, in order */
    int64_t k = 1;
    bool ok = true;
    for (int64_t e = 0; e < d.n_ex; e++)
        for (int64_t i = 1; i < d.ex_len[e]; i++) ok &= d.tok[d.ex_off[e] + i] == ids[k++];
    CHECK(t, ok && k == (int64_t)n && d.n_trained == (int64_t)n - 1);
    free(ids);
    free(text);
    nm_dataset_deinit(&d);
}

static void test_rows_and_split(nm_test *t) {
    char big[8192] = "[";
    for (int i = 0; i < 20; i++) {
        char rec[256];
        snprintf(rec, sizeof rec, "%s{\"instruction\": \"Question %d?\", \"output\": \"Answer %d is %s.\"}", i ? "," : "",
                 i, i, i % 3 ? "short" : "a somewhat longer answer than the others");
        strcat(big, rec);
    }
    strcat(big, "]");
    const char *path = write_tmp("r.json", big);
    nm_data_opts o = opts(NM_DATA_AUTO);
    o.seq_len = 256;
    nm_dataset d, val;
    nm_err err = {0};
    if (!CHECK_OK(t, nm_dataset_load(path, &o, &d, &err), err)) return;
    CHECK(t, d.n_ex == 20);
    nm_rows packed, single;
    CHECK_OK(t, nm_rows_build(&d, 256, true, true, 5, &packed, &err), err);
    CHECK_OK(t, nm_rows_build(&d, 256, false, false, 0, &single, &err), err);
    CHECK(t, single.n_rows == 20 && packed.n_rows < 20);
    CHECK(t, packed.n_targets == single.n_targets && single.n_targets == d.n_trained);
    /* packed rows: positions restart with each document; padding has no target */
    bool ok = true;
    for (int64_t r = 0; r < packed.n_rows; r++)
        for (int64_t i = 0; i < 256; i++) {
            int64_t c = r * 256 + i;
            if (packed.doc[c] < 0) {
                ok &= packed.targets[c] < 0;
            } else if (i > 0 && packed.doc[c] == packed.doc[c - 1]) {
                ok &= packed.pos[c] == packed.pos[c - 1] + 1;
            } else {
                ok &= packed.pos[c] == 0;
            }
        }
    CHECK(t, ok);
    /* same seed, same rows; another seed, another order */
    nm_rows again, other;
    CHECK_OK(t, nm_rows_build(&d, 256, true, true, 5, &again, &err), err);
    CHECK_OK(t, nm_rows_build(&d, 256, true, true, 6, &other, &err), err);
    CHECK(t, again.n_rows == packed.n_rows &&
                 memcmp(again.tokens, packed.tokens, (size_t)(packed.n_rows * 256) * 4) == 0);
    CHECK(t, other.n_rows != packed.n_rows ||
                 memcmp(other.tokens, packed.tokens, (size_t)(packed.n_rows * 256) * 4) != 0);
    nm_rows_deinit(&again);
    nm_rows_deinit(&other);
    nm_rows_deinit(&packed);
    nm_rows_deinit(&single);
    uint64_t h = nm_dataset_hash(&d);
    CHECK_OK(t, nm_dataset_split(&d, &val, 0.25, 1, &err), err);
    CHECK(t, val.n_ex == 5 && d.n_ex == 15 && nm_dataset_hash(&d) != h);
    nm_dataset_deinit(&val);
    /* truncation: a 60-token limit cuts into the answers */
    nm_dataset_deinit(&d);
    o.seq_len = 60;
    CHECK_OK(t, nm_dataset_load(path, &o, &d, &err), err);
    CHECK(t, d.n_truncated > 0);
    for (int64_t e = 0; e < d.n_ex; e++) CHECK(t, d.ex_len[e] <= 61);
    nm_dataset_deinit(&d);
}

int main(void) {
    nm_err err = {0};
    if (nm_gguf_open(nm_test_shared("models/stories260K.gguf"), &G, &err) ||
        nm_vocab_from_gguf(G, &V, NULL, &err)) {
        printf("FAIL setup: %s\nRESULT passed=0 failed=1\n", err.msg);
        return 1;
    }
    nm_test_run("alpaca_mask", test_alpaca_mask);
    nm_test_run("sharegpt_and_messages", test_chat_formats);
    nm_test_run("bad_records", test_bad_records);
    nm_test_run("garbage_never_crashes", test_garbage);
    nm_test_run("text_windows", test_text_windows);
    nm_test_run("rows_and_split", test_rows_and_split);
    nm_vocab_free(V);
    nm_gguf_free(G);
    return nm_test_finish();
}
