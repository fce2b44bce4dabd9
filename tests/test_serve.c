/*
 * test_serve.c - `nomoat serve`.
 *
 * In-process: request parsing (strict types, ranges, tokenization checked
 * against llama.cpp's token ids), adapter-stack resolution, UTF-8 repair,
 * error objects.  Through the tool: start-up errors.  Then the Node.js tests
 * in tests/serve (the official openai client, headless Chromium, a load
 * test) against the built tool; each node test counts as one test here.
 * The node tests read NOMOAT_BIN (the tool of this build: under the
 * sanitizer build they run the sanitized server) and the adapter fixtures
 * this program writes.
 */
#include "testlib.h"
#include "serve/internal.h"

#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static nm_model *g_model;
static srv_adapter g_adapters[2] = {{"tone", "tone.gguf", "gguf"}, {"facts", "facts", "peft"}};
static srv_named_stack g_stacks[1];
static srv_lib g_lib;
static srv_env g_env;

static bool setup(void) {
    if (g_model) return true;
    nm_err err = {0};
    if (nm_model_load(nm_test_shared("models/stories260K.gguf"), NULL, &g_model, &err) != NM_OK) {
        fprintf(stderr, "cannot load stories260K: %s\n", err.msg);
        return false;
    }
    g_lib.model_id = "stories260K";
    g_lib.adapters = g_adapters;
    g_lib.n_adapters = 2;
    g_stacks[0].name = "duo";
    g_stacks[0].stack = (srv_stack){.n = 2, .item = {{0, 0.5f}, {1, 1.0f}}};
    g_lib.stacks = g_stacks;
    g_lib.n_stacks = 1;
    g_env.vocab = nm_model_vocab(g_model);
    g_env.tmpl = NM_CHAT_TEMPLATE_CHATML;
    g_env.n_ctx = 128;
    g_env.n_vocab = 512;
    g_env.lib = &g_lib;
    return true;
}

/* Parses body; returns the HTTP status (200 when it parses). */
static int parse(srv_kind kind, const char *body, srv_request *r, srv_error *e) {
    memset(e, 0, sizeof *e);
    if (srv_parse_request(&g_env, kind, body, strlen(body), r, e)) return 200;
    return e->http;
}

static void test_resolve(nm_test *t) {
    if (!CHECK(t, setup())) return;
    srv_stack st;
    srv_error e;
    CHECK(t, srv_resolve_model(&g_lib, "base", &st, &e) && st.n == 0);
    CHECK(t, srv_resolve_model(&g_lib, "stories260K", &st, &e) && st.n == 0);
    CHECK(t, srv_resolve_model(&g_lib, "", &st, &e) && st.n == 0);
    CHECK(t, srv_resolve_model(&g_lib, "base+tone", &st, &e) && st.n == 1 && st.item[0].adapter == 0 &&
                 st.item[0].scale == 1.0f);
    CHECK(t, srv_resolve_model(&g_lib, "stories260K+facts:0.25+tone:-1.5", &st, &e) && st.n == 2 &&
                 st.item[0].adapter == 1 && st.item[0].scale == 0.25f && st.item[1].adapter == 0 &&
                 st.item[1].scale == -1.5f);
    CHECK(t, srv_resolve_model(&g_lib, "tone", &st, &e) && st.n == 1 && st.item[0].adapter == 0);
    CHECK(t, srv_resolve_model(&g_lib, "duo", &st, &e) && st.n == 2 && st.item[0].scale == 0.5f);
    CHECK(t, srv_resolve_model(&g_lib, "duo+tone", &st, &e) && st.n == 3 && st.item[2].adapter == 0);
    /* unknown names: 404 model_not_found */
    const char *unknown[] = {"nope", "base+nope", "duo+nope", "base+tone+nope", "Base", "base+tone:1+ton"};
    for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++)
        CHECKF(t, !srv_resolve_model(&g_lib, unknown[i], &st, &e) && e.http == 404 &&
                      strcmp(e.code, "model_not_found") == 0 && strcmp(e.param, "model") == 0,
               "%s: %d", unknown[i], e.http);
    /* malformed: 400 */
    const char *bad[] = {"base+", "+tone", "base++tone", "base+tone:", "base+tone:x", "base+tone:1e400",
                         "base+tone:nan", "base+tone:200", "base+tone+tone+tone+tone+tone+tone+tone+tone+tone"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECKF(t, !srv_resolve_model(&g_lib, bad[i], &st, &e) && e.http == 400, "%s: %d", bad[i], e.http);
    /* the adapters field */
    json_error_t je;
    json_t *a = json_loads("[{\"name\": \"facts\", \"scale\": 0.5}, {\"name\": \"tone\"}]", 0, &je);
    memset(&st, 0, sizeof st);
    CHECK(t, srv_resolve_adapters(&g_lib, a, &st, &e) && st.n == 2 && st.item[0].adapter == 1 &&
                 st.item[0].scale == 0.5f && st.item[1].scale == 1.0f);
    json_decref(a);
    const char *bad_arrays[] = {"{}", "[1]", "[{\"scale\": 1}]", "[{\"name\": 1}]", "[{\"name\": \"tone\", \"scale\": \"1\"}]",
                                "[{\"name\": \"tone\", \"scale\": 1000}]"};
    for (size_t i = 0; i < sizeof bad_arrays / sizeof *bad_arrays; i++) {
        a = json_loads(bad_arrays[i], JSON_DECODE_ANY, &je);
        memset(&st, 0, sizeof st);
        CHECKF(t, a && !srv_resolve_adapters(&g_lib, a, &st, &e) && e.http == 400, "%s", bad_arrays[i]);
        json_decref(a);
    }
    a = json_loads("[{\"name\": \"nope\"}]", 0, &je);
    CHECK(t, !srv_resolve_adapters(&g_lib, a, &st, &e) && e.http == 404 && strcmp(e.param, "adapters") == 0);
    json_decref(a);
    char buf[128];
    srv_stack s2 = {.n = 2, .item = {{1, 0.5f}, {0, 1.0f}}};
    srv_stack_str(&g_lib, &s2, buf, sizeof buf);
    CHECK(t, strcmp(buf, "base+facts:0.5+tone") == 0);
    CHECK(t, srv_valid_name(&g_lib, "my-adapter_1.v2"));
    CHECK(t, !srv_valid_name(&g_lib, "base") && !srv_valid_name(&g_lib, "stories260K") &&
                 !srv_valid_name(&g_lib, "a+b") && !srv_valid_name(&g_lib, "a:b") && !srv_valid_name(&g_lib, ""));
}

static void test_parse_ok(nm_test *t) {
    if (!CHECK(t, setup())) return;
    srv_request r;
    srv_error e;
    /* The tokens of llama.cpp for this prompt (shared/golden/stories260K.jsonl). */
    CHECK(t, parse(SRV_COMPLETION, "{\"model\": \"base\", \"prompt\": \"Once upon a time\", \"max_tokens\": 8}", &r, &e) == 200);
    int32_t want[] = {1, 403, 407, 261, 378};
    CHECK(t, r.n_prompt == 5 && memcmp(r.prompt, want, sizeof want) == 0);
    CHECK(t, r.max_tokens == 8 && !r.stream && r.stack.n == 0 && strcmp(r.model, "base") == 0);
    srv_request_deinit(&r);
    /* defaults: the rest of the context; the model id echoed */
    CHECK(t, parse(SRV_COMPLETION, "{\"prompt\": [1, 403, 407]}", &r, &e) == 200);
    CHECK(t, r.max_tokens == 128 - 3 && strcmp(r.model, "stories260K") == 0);
    srv_request_deinit(&r);
    /* every option */
    const char *full = "{\"model\": \"duo+tone:2\", \"messages\": [{\"role\": \"developer\", \"content\": \"Be brief.\"},"
                       " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Hi\"}]}],"
                       " \"temperature\": 0.5, \"top_p\": 0.9, \"max_completion_tokens\": 7, \"seed\": -1,"
                       " \"stop\": [\"a\", \"\", \"bc\"], \"stream\": true, \"stream_options\": {\"include_usage\": true},"
                       " \"logit_bias\": {\"2\": -100, \"5\": 3.5}, \"logprobs\": true, \"top_logprobs\": 4,"
                       " \"presence_penalty\": 0.5, \"frequency_penalty\": -0.5, \"top_k\": 5, \"min_p\": 0.1,"
                       " \"repeat_penalty\": 1.1, \"user\": \"x\", \"n\": 1, \"tools\": [], \"response_format\": {\"type\": \"text\"},"
                       " \"adapters\": [{\"name\": \"facts\", \"scale\": 0.1}], \"unknown_field\": {\"x\": 1}}";
    CHECK(t, parse(SRV_CHAT, full, &r, &e) == 200);
    CHECKF(t, e.msg[0] == 0, "%s", e.msg);
    CHECK(t, r.stack.n == 4 && r.stack.item[2].scale == 2.0f && r.stack.item[3].adapter == 1);
    CHECK(t, r.stream && r.include_usage && r.max_tokens == 7 && r.logprobs && r.top_logprobs == 4);
    CHECK(t, r.n_stop == 2 && strcmp(r.stop[0], "a") == 0 && strcmp(r.stop[1], "bc") == 0);
    CHECK(t, r.n_bias == 2 && r.bias[0].token == 2 && isinf(r.bias[0].bias) && r.bias[0].bias < 0 &&
                 r.bias[1].bias == 3.5f);
    CHECK(t, r.sp.temperature == 0.5f && fabsf(r.sp.top_p - 0.9f) < 1e-6f && r.sp.top_k == 5 &&
                 r.sp.seed == UINT64_MAX && r.sp.presence_penalty == 0.5f && r.sp.frequency_penalty == -0.5f);
    CHECK(t, r.sampler != NULL);
    /* the prompt is the chatml rendering, tokenized with special tokens */
    char *text = NULL;
    nm_err err = {0};
    nm_chat_msg msgs[] = {{"system", "Be brief."}, {"user", "Hi"}};
    CHECK_OK(t, nm_chat_render(NM_CHAT_TEMPLATE_CHATML, msgs, 2, true, &text, &err), err);
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK_OK(t, nm_tokenize(g_env.vocab, text, strlen(text), true, true, &ids, &n, &err), err);
    CHECK(t, n == r.n_prompt && memcmp(ids, r.prompt, n * sizeof *ids) == 0);
    free(ids);
    free(text);
    srv_request_deinit(&r);
    /* null is "not given" */
    CHECK(t, parse(SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": null, "
                             "\"stop\": null, \"max_tokens\": null, \"model\": null, \"adapters\": null}", &r, &e) == 200);
    srv_request_deinit(&r);
    /* top_p 0: greedy */
    CHECK(t, parse(SRV_COMPLETION, "{\"prompt\": \"x\", \"top_p\": 0}", &r, &e) == 200 && r.sp.top_k == 1);
    srv_request_deinit(&r);
}

static void test_parse_errors(nm_test *t) {
    if (!CHECK(t, setup())) return;
    static const struct {
        srv_kind kind;
        const char *body;
        int http;
        const char *param;
    } cases[] = {
        {SRV_CHAT, "", 400, ""},
        {SRV_CHAT, "{", 400, ""},
        {SRV_CHAT, "[]", 400, ""},
        {SRV_CHAT, "\"x\"", 400, ""},
        {SRV_CHAT, "{\"messages\": 1, \"messages\": 2}", 400, ""},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]} trailing", 400, ""},
        {SRV_CHAT, "{}", 400, "messages"},
        {SRV_CHAT, "{\"messages\": {}}", 400, "messages"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\\u0000b\"}]}", 400, ""},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": {}}]}", 400, "messages"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}", 400, "messages"},
        {SRV_CHAT, "{\"messages\": [{\"role\": 1, \"content\": \"x\"}]}", 400, "messages"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stream\": 1}", 400, "stream"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": true}", 400, "temperature"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": -0.1}", 400, "temperature"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 2.0}", 400, "max_tokens"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": -1}", 400, "max_tokens"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 9999999999}", 400, "max_tokens"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 120}", 400, "max_tokens"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"n\": 3}", 400, "n"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"seed\": 1.5}", 400, "seed"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"seed\": 1e30}", 400, "seed"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stop\": {}}", 400, "stop"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logit_bias\": {\"-1\": 1}}", 400, "logit_bias"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logit_bias\": {\"512\": 1}}", 400, "logit_bias"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logit_bias\": {\"1x\": 1}}", 400, "logit_bias"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logit_bias\": {\"1\": 101}}", 400, "logit_bias"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_logprobs\": 21, \"logprobs\": true}", 400, "top_logprobs"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"response_format\": {\"type\": \"json_object\"}}", 400, "response_format"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"model\": \"base+nope\"}", 404, "model"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"adapters\": {}}", 400, "adapters"},
        {SRV_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"repeat_penalty\": 0}", 400, "repeat_penalty"},
        {SRV_COMPLETION, "{\"prompt\": 1}", 400, "prompt"},
        {SRV_COMPLETION, "{\"prompt\": [1.5]}", 400, "prompt"},
        {SRV_COMPLETION, "{\"prompt\": [512]}", 400, "prompt"},
        {SRV_COMPLETION, "{\"prompt\": [[1]]}", 400, "prompt"},
        {SRV_COMPLETION, "{\"prompt\": \"x\", \"logprobs\": 21}", 400, "logprobs"},
        {SRV_COMPLETION, "{\"prompt\": \"x\", \"suffix\": \"y\"}", 400, "suffix"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        srv_request r;
        srv_error e;
        int http = parse(cases[i].kind, cases[i].body, &r, &e);
        if (http == 200) srv_request_deinit(&r);
        CHECKF(t, http == cases[i].http && strcmp(e.param, cases[i].param) == 0 && e.msg[0] && e.type,
               "case %zu %s: got %d param '%s' (%s)", i, cases[i].body, http, e.param, e.msg);
    }
    /* 128 tokens of context: a prompt must leave room for one more */
    for (int n = 127; n <= 128; n++) {
        nm_buf b;
        nm_buf_init(&b);
        nm_buf_printf(&b, "{\"prompt\": [1");
        for (int i = 1; i < n; i++) nm_buf_printf(&b, ", 403");
        nm_buf_printf(&b, "]}");
        nm_buf_push(&b, "", 1);
        srv_request r;
        srv_error e;
        int http = parse(SRV_COMPLETION, (const char *)b.data, &r, &e);
        if (n == 127) CHECK(t, http == 200 && r.n_prompt == 127 && r.max_tokens == 1);
        else CHECK(t, http == 400 && strcmp(e.code, "context_length_exceeded") == 0 && strcmp(e.param, "prompt") == 0);
        if (http == 200) srv_request_deinit(&r);
        nm_buf_deinit(&b);
    }
}

/* Hostile bodies: mutations of valid requests (bytes flipped, cut,
 * duplicated, replaced by JSON punctuation) must parse or fail with a 4xx,
 * never crash (the sanitizer build runs this too). */
static void test_parse_mutations(nm_test *t) {
    if (!CHECK(t, setup())) return;
    static const char *seeds[] = {
        "{\"model\": \"duo+tone:0.5\", \"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", "
        "\"text\": \"Hi \\u00e9\"}]}], \"stop\": [\"a\"], \"logit_bias\": {\"2\": -100}, \"logprobs\": true, "
        "\"top_logprobs\": 2, \"stream\": true, \"stream_options\": {\"include_usage\": true}}",
        "{\"prompt\": [1, 403, 407], \"max_tokens\": 5, \"temperature\": 0.5, \"seed\": 3, \"adapters\": "
        "[{\"name\": \"facts\", \"scale\": 0.5}], \"logprobs\": 3, \"top_p\": 0.9, \"n\": 1}",
    };
    static const char punct[] = "{}[]\",:0-e.\\u ntf";
    uint64_t x = 0x9E3779B97F4A7C15ull;
    int ok = 0, bad = 0, other = 0;
    for (int iter = 0; iter < 20000; iter++) {
        const char *seed = seeds[iter % 2];
        size_t n = strlen(seed);
        char buf[1024];
        memcpy(buf, seed, n);
        int edits = 1 + iter % 4;
        for (int k = 0; k < edits; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t pos = (size_t)(x % n);
            switch ((x >> 32) % 4) {
            case 0: buf[pos] = (char)(x >> 40); break;                         /* any byte */
            case 1: buf[pos] = punct[(x >> 40) % (sizeof punct - 1)]; break;  /* JSON-ish */
            case 2: n = pos + 1; break;                                          /* cut */
            default:                                                            /* repeat a span */
                if (n + 16 < sizeof buf) {
                    memmove(buf + pos + 16, buf + pos, n - pos);
                    n += 16;
                }
            }
        }
        buf[n] = 0;
        srv_request r;
        srv_error e;
        memset(&e, 0, sizeof e);
        if (srv_parse_request(&g_env, iter % 2 ? SRV_COMPLETION : SRV_CHAT, buf, n, &r, &e)) {
            ok++;
            if (r.n_prompt == 0 || r.n_prompt >= (size_t)g_env.n_ctx || r.max_tokens < 1 ||
                r.n_prompt + (size_t)r.max_tokens > (size_t)g_env.n_ctx || !r.sampler)
                other++;
            srv_request_deinit(&r);
        } else if (e.http >= 400 && e.http < 500 && e.msg[0]) {
            bad++;
        } else {
            other++;
        }
    }
    CHECKF(t, other == 0 && ok > 0 && bad > 0, "%d accepted, %d rejected, %d inconsistent", ok, bad, other);
}

static void test_error_json(nm_test *t) {
    srv_error e;
    srv_error_set(&e, 404, "invalid_request_error", "model_not_found", "model", "bad \xff name \"q\"");
    char *s = srv_error_json(&e);
    json_error_t je;
    json_t *o = s ? json_loads(s, 0, &je) : NULL;
    json_t *err = json_object_get(o, "error");
    CHECK(t, json_is_object(err));
    CHECK(t, json_is_string(json_object_get(err, "message")) &&
                 strcmp(json_string_value(json_object_get(err, "message")), "bad \xef\xbf\xbd name \"q\"") == 0);
    CHECK(t, strcmp(json_string_value(json_object_get(err, "type")), "invalid_request_error") == 0);
    CHECK(t, strcmp(json_string_value(json_object_get(err, "param")), "model") == 0);
    CHECK(t, strcmp(json_string_value(json_object_get(err, "code")), "model_not_found") == 0);
    json_decref(o);
    free(s);
    srv_error_set(&e, 500, "server_error", NULL, NULL, "x");
    s = srv_error_json(&e);
    o = s ? json_loads(s, 0, &je) : NULL;
    err = json_object_get(o, "error");
    CHECK(t, json_is_null(json_object_get(err, "param")) && json_is_null(json_object_get(err, "code")));
    json_decref(o);
    free(s);
}

static void test_utf8(nm_test *t) {
    /* Unicode 15, section 3.9 (U+FFFD substitution of maximal subparts is
     * not required here: one U+FFFD per invalid byte). */
    static const struct {
        const char *in;
        size_t n;
        const char *out;
    } cases[] = {
        {"abc", 3, "abc"},
        {"\xc3\xa9", 2, "\xc3\xa9"},
        {"\xe2\x82\xac", 3, "\xe2\x82\xac"},
        {"\xf0\x9f\x98\x80", 4, "\xf0\x9f\x98\x80"},
        {"\xc3", 1, "\xef\xbf\xbd"},
        {"\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd"},         /* overlong '/' */
        {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate */
        {"\xf4\x90\x80\x80", 4, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* > U+10FFFF */
        {"a\xffz", 3, "a\xef\xbf\xbdz"},
        {"a\0b", 3, "a\0b"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        nm_buf b;
        nm_buf_init(&b);
        srv_utf8_sanitize(&b, cases[i].in, cases[i].n);
        size_t want = 0;
        while (cases[i].out[want] || (i == 9 && want < 3)) want++;
        CHECKF(t, b.len == want && memcmp(b.data, cases[i].out, want) == 0, "case %zu", i);
        nm_buf_deinit(&b);
    }
}

/* ---- fixtures: a llama.cpp GGUF LoRA file and a PEFT directory ---- */

static char g_gguf_adapter[512], g_peft_dir[512];

static bool write_adapters(nm_test *t) {
    nm_err err = {0};
    snprintf(g_gguf_adapter, sizeof g_gguf_adapter, "%s/tone.gguf", nm_test_tmpdir());
    snprintf(g_peft_dir, sizeof g_peft_dir, "%s/facts", nm_test_tmpdir());
    static float a[4 * 64], b[64 * 4];
    for (int i = 0; i < 256; i++) a[i] = (float)((i * 37) % 17 - 8) / 64.0f, b[i] = (float)((i * 11) % 13 - 6) / 64.0f;
    nm_gguf_writer *w = nm_gguf_writer_new(3);
    if (!CHECK(t, w != NULL)) return false;
    nm_gguf_writer_set_str(w, "general.architecture", "llama");
    nm_gguf_writer_set_str(w, "general.type", "adapter");
    nm_gguf_writer_set_str(w, "adapter.type", "lora");
    nm_gguf_writer_set_f32(w, "adapter.lora.alpha", 8.0f);
    int64_t ne_a[2] = {64, 4}, ne_b[2] = {4, 64};
    bool ok = CHECK_OK(t, nm_gguf_writer_add_tensor(w, "blk.0.attn_q.weight.lora_a", NM_TYPE_F32, 2, ne_a, a, sizeof a, &err), err) &&
              CHECK_OK(t, nm_gguf_writer_add_tensor(w, "blk.0.attn_q.weight.lora_b", NM_TYPE_F32, 2, ne_b, b, sizeof b, &err), err) &&
              CHECK_OK(t, nm_gguf_writer_write(w, g_gguf_adapter, &err), err);
    nm_gguf_writer_free(w);
    if (!ok) return false;
    mkdir(g_peft_dir, 0755);
    char path[600];
    snprintf(path, sizeof path, "%s/adapter_config.json", g_peft_dir);
    const char *cfg = "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"], "
                      "\"task_type\": \"CAUSAL_LM\"}";
    if (!CHECK_OK(t, nm_write_file_atomic(path, cfg, strlen(cfg), &err), err)) return false;
    nm_st_writer *sw = nm_st_writer_new();
    int64_t sa[2] = {4, 64}, sb[2] = {64, 4};
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", g_peft_dir);
    ok = CHECK_OK(t, nm_st_writer_add(sw, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "F32", 2, sa, a, sizeof a, &err), err) &&
         CHECK_OK(t, nm_st_writer_add(sw, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "F32", 2, sb, b, sizeof b, &err), err) &&
         CHECK_OK(t, nm_st_writer_write(sw, path, &err), err);
    nm_st_writer_free(sw);
    return ok;
}

static void test_cli_startup_errors(nm_test *t) {
    if (!write_adapters(t)) return;
    const char *model = nm_test_shared("models/stories260K.gguf");
    char cmd[2048];
    char *out = NULL;
    static const struct {
        const char *args;
        int rc;
        const char *msg;
    } cases[] = {
        {"", 2, "missing -m"},
        {"-m %s --lora", 2, "needs NAME=FILE"},
        {"-m %s --lora tone", 2, "NAME=FILE"},
        {"-m %s --lora =x", 2, "NAME=FILE"},
        {"-m %s --port 70000", 2, "--port"},
        {"-m %s --parallel x", 2, "--parallel"},
        {"-m %s --bogus", 2, "unknown option"},
        {"-m /nonexistent.gguf", 1, "nonexistent"},
        {"-m %s --lora x=/nonexistent", 1, "nonexistent"},
        {"-m %s --lora base=%s", 1, "adapter name 'base'"},
        {"-m %s --lora a+b=%s", 1, "adapter name 'a+b'"},
        {"-m %s --lora x=%s", 1, "not a LoRA adapter"}, /* the model itself */
        {"-m %s --stack s=nope", 1, "unknown adapter 'nope'"},
        {"-m %s --parallel 0", 1, "--parallel 0"},
        {"-m %s --chat-template nope", 1, "unknown chat template"},
        {"-m %s --host no.such.host.invalid", 1, "cannot resolve host"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char args[1024];
        const char *second = strstr(cases[i].args, "x=%s") ? model : g_gguf_adapter;
        snprintf(args, sizeof args, cases[i].args, model, second);
        snprintf(cmd, sizeof cmd, "%s serve %s 2>&1", nm_test_bin(), args);
        int rc = nm_test_sh(cmd, &out);
        CHECKF(t, rc == cases[i].rc && out && strstr(out, cases[i].msg), "'serve %s': exit %d, output: %s", args, rc,
               out ? out : "");
        free(out);
        out = NULL;
    }
}

/* ---- the Node.js tests ---- */

static bool g_node_ok;
static char g_node_why[2048];

static void node_result(nm_test *t) { CHECKF(t, g_node_ok, "%s", g_node_why); }

/* Runs one test file with node's TAP reporter and reports each test (not
 * the describe() suites around them) as one test of this program. */
static void run_node_file(const char *file) {
    char bin[4096];
    if (!realpath(nm_test_bin(), bin)) snprintf(bin, sizeof bin, "%s", nm_test_bin());
    char shared[4096];
    if (!realpath(nm_test_shared("."), shared)) snprintf(shared, sizeof shared, "%s", nm_test_shared("."));
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "cd tests/serve && NOMOAT_BIN='%s' NOMOAT_SHARED='%s' NOMOAT_TEST_ADAPTER='%s' NOMOAT_TEST_PEFT='%s' "
             "timeout -k 10 900 node --test --test-reporter=tap --test-concurrency=1 %s 2>&1",
             bin, shared, g_gguf_adapter, g_peft_dir, file);
    char *out = NULL;
    int rc = nm_test_sh(cmd, &out);
    int reported = 0, failed = 0;
    /* Lines: "ok N - name" / "not ok N - name" (indented by nesting), each
     * followed by an indented YAML block that says "type: 'suite'" for a
     * describe() and holds the error of a failure. */
    char **lines = NULL;
    size_t n = 0, cap = 0;
    char *save = NULL, *copy = out ? nm_strdup(out) : NULL;
    for (char *l = copy ? strtok_r(copy, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save)) {
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            char **nl = realloc(lines, cap * sizeof *nl);
            if (!nl) break;
            lines = nl;
        }
        lines[n++] = l;
    }
    for (size_t i = 0; i < n; i++) {
        char *p = lines[i];
        while (*p == ' ') p++;
        /* diagnostics the tests print for people (t.diagnostic) */
        if (strncmp(p, "# requests answered", 19) == 0) printf("   %s\n", p);
        bool ok = strncmp(p, "ok ", 3) == 0, nok = strncmp(p, "not ok ", 7) == 0;
        char *dash = (ok || nok) ? strstr(p, " - ") : NULL;
        if (!dash) continue;
        bool suite = false;
        size_t k = i + 1;
        g_node_why[0] = 0;
        for (; k < n; k++) {
            const char *q = lines[k];
            while (*q == ' ') q++;
            if (strncmp(q, "ok ", 3) == 0 || strncmp(q, "not ok ", 7) == 0 || strncmp(q, "# Subtest", 9) == 0) break;
            if (strstr(q, "type: 'suite'")) suite = true;
            size_t used = strlen(g_node_why), ql = strlen(q);
            if (used + ql + 4 < sizeof g_node_why) {
                memcpy(g_node_why + used, "\n  ", 3);
                memcpy(g_node_why + used + 3, q, ql + 1);
            }
        }
        if (suite) continue;
        char *name = dash + 3;
        char *hash = strstr(name, " # ");
        if (hash) *hash = 0;
        char full[600];
        snprintf(full, sizeof full, "node %s: %s", file, name);
        g_node_ok = ok;
        nm_test_run(full, node_result);
        reported++;
        failed += nok;
    }
    free(lines);
    free(copy);
    if (reported == 0 || (rc != 0 && failed == 0)) {
        /* node itself failed (no tests ran, a crash, a hook that threw) */
        g_node_ok = false;
        /* the end of the output says why (a hook that threw, a crash) */
        size_t len = out ? strlen(out) : 0;
        printf("---- node %s: the end of its output ----\n%s\n---- end ----\n", file,
               out ? out + (len > 4000 ? len - 4000 : 0) : "(no output)");
        snprintf(g_node_why, sizeof g_node_why, "node exited %d after %d results (its output is above)", rc, reported);
        char full[600];
        snprintf(full, sizeof full, "node %s: runs", file);
        nm_test_run(full, node_result);
    }
    free(out);
}

static void test_npm_install(nm_test *t) {
    char *out = NULL;
    int rc = nm_test_sh("cd tests/serve && if [ ! -d node_modules/openai ] || [ ! -d node_modules/playwright-core ]; "
                        "then npm ci --no-audit --no-fund 2>&1; fi",
                        &out);
    CHECKF(t, rc == 0, "npm ci failed in tests/serve: %s", out ? out : "");
    free(out);
}

int main(int argc, char **argv) {
    nm_test_run("serve: adapter stack resolution", test_resolve);
    nm_test_run("serve: request parsing", test_parse_ok);
    nm_test_run("serve: bad requests are 4xx naming the field", test_parse_errors);
    nm_test_run("serve: mutated request bodies parse or fail cleanly", test_parse_mutations);
    nm_test_run("serve: error objects", test_error_json);
    nm_test_run("serve: UTF-8 repair", test_utf8);
    nm_test_run("serve: start-up errors of the tool", test_cli_startup_errors);
    nm_model_free(g_model);
    nm_test_run("serve: npm packages", test_npm_install);
    /* A file name on the command line runs that node test file alone. */
    if (argc > 1) {
        for (int i = 1; i < argc; i++) run_node_file(argv[i]);
    } else {
        run_node_file("api.test.mjs");
        run_node_file("page.test.mjs");
        run_node_file("load.test.mjs");
    }
    return nm_test_finish();
}
