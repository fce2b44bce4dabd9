/* test_model_batch.c - nm_decode_batch, the multi-context forward pass.
 *
 *  - external truth: the golden prompts of llama.cpp (stories260K.jsonl),
 *    all decoded together in one batch and continued greedily in lock-step,
 *    give llama.cpp's prompt logits and greedy ids;
 *  - the contract: every context of a batch ends bit-identical (logits,
 *    n_past, and so its KV cache: later steps depend on it) to the same
 *    context decoded alone with nm_decode on one thread, whatever the mix:
 *    prompt chunks and single tokens, contexts at different positions,
 *    F16 and F32 KV caches, different n_ctx, logits_all, a quantized model
 *    with a 32000-token vocabulary, passes split by the first context's
 *    n_batch and by the 64-context limit, contexts joining and leaving;
 *  - shared thread pools, and errors that change nothing. */
#include "testlib.h"

#include <jansson.h>
#include <math.h>
#include <string.h>

static nm_model *load(nm_test *t, const char *file) {
    char rel[128];
    snprintf(rel, sizeof rel, "models/%s", file);
    nm_err err = {0};
    nm_model *m = NULL;
    CHECK_OK(t, nm_model_load(nm_test_shared(rel), NULL, &m, &err), err);
    return m;
}

typedef struct ctx_spec {
    int32_t n_ctx, n_batch;
    nm_type kv;
    bool logits_all;
} ctx_spec;

/* pool == NULL: the context gets its own pool of one thread (the reference). */
static nm_context *make_ctx(nm_test *t, const nm_model *m, const ctx_spec *s, nm_pool *pool) {
    nm_context_params p = nm_context_default_params();
    p.n_ctx = s->n_ctx;
    p.n_batch = s->n_batch;
    p.kv_type = s->kv;
    p.logits_all = s->logits_all;
    p.n_threads = 1;
    p.pool = pool;
    nm_err err = {0};
    nm_context *c = NULL;
    CHECK_OK(t, nm_context_new(m, &p, &c, &err), err);
    return c;
}

/* Same n_past and bit-identical logits (every row kept by the context). */
static bool same_state(nm_test *t, const nm_context *a, const nm_context *b, int32_t n_vocab, bool logits_all,
                       int32_t n_rows, const char *what, int idx) {
    if (!CHECKF(t, nm_context_n_past(a) == nm_context_n_past(b), "%s, context %d: n_past %d, alone %d", what, idx,
                nm_context_n_past(a), nm_context_n_past(b)))
        return false;
    const size_t bytes = sizeof(float) * (size_t)n_vocab;
    const float *la = nm_get_logits(a), *lb = nm_get_logits(b);
    if (!CHECKF(t, la && lb && memcmp(la, lb, bytes) == 0, "%s, context %d: last logits differ from decoding alone",
                what, idx))
        return false;
    for (int32_t r = 0; logits_all && r < n_rows; r++) {
        la = nm_get_logits_ith(a, r);
        lb = nm_get_logits_ith(b, r);
        if (!CHECKF(t, la && lb && memcmp(la, lb, bytes) == 0, "%s, context %d: logits row %d differs", what, idx, r))
            return false;
    }
    return true;
}

/* ---- the golden prompts, batched together ---- */

static int32_t *json_ids(json_t *a, size_t *n) {
    *n = json_array_size(a);
    int32_t *v = calloc(*n + 1, sizeof *v);
    for (size_t i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return v;
}

enum { MAX_GOLDEN = 16 };

typedef struct golden {
    int32_t *tokens, *greedy;
    size_t n_tokens, n_greedy;
    float *logits;
    size_t n_logits;
} golden;

static size_t golden_load(nm_test *t, golden *g) {
    size_t len;
    char *text = nm_test_read(nm_test_shared("golden/stories260K.jsonl"), &len);
    if (!CHECKF(t, text != NULL, "cannot read golden/stories260K.jsonl")) return 0;
    size_t n = 0;
    for (char *line = strtok(text, "\n"); line && n < MAX_GOLDEN; line = strtok(NULL, "\n")) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        if (!CHECKF(t, o != NULL, "golden: bad json: %s", je.text)) continue;
        golden *e = &g[n++];
        e->tokens = json_ids(json_object_get(o, "tokens"), &e->n_tokens);
        e->greedy = json_ids(json_object_get(o, "greedy"), &e->n_greedy);
        json_t *lg = json_object_get(o, "last_logits");
        e->n_logits = json_array_size(lg);
        e->logits = calloc(e->n_logits + 1, sizeof *e->logits);
        for (size_t i = 0; i < e->n_logits; i++) e->logits[i] = (float)json_number_value(json_array_get(lg, i));
        json_decref(o);
    }
    free(text);
    return n;
}

/* All golden prompts in one batch (prompts of 1 to 11 tokens), then every
 * greedy continuation in lock-step, one token per context per call: the
 * ids llama.cpp chose, and its last prompt logits within the 0.02 of its
 * own F16 noise (as tests/test_model.c).  A context whose continuation
 * ends leaves the batch. */
static void golden_batched(nm_test *t, const char *file, nm_type kv) {
    golden g[MAX_GOLDEN];
    size_t n = golden_load(t, g);
    nm_model *m = load(t, file);
    nm_pool *pool = NULL;
    nm_err err = {0};
    CHECK_OK(t, nm_pool_new(2, &pool, &err), err);
    nm_context *ctx[MAX_GOLDEN] = {0};
    const ctx_spec spec = {128, 0, kv, false};
    bool ok = m && pool && n >= 2;
    for (size_t i = 0; ok && i < n; i++) ok = (ctx[i] = make_ctx(t, m, &spec, pool)) != NULL;
    if (ok) {
        nm_model_info info;
        nm_model_get_info(m, &info);
        const int32_t *toks[MAX_GOLDEN];
        int32_t ns[MAX_GOLDEN], next[MAX_GOLDEN];
        for (size_t i = 0; i < n; i++) {
            toks[i] = g[i].tokens;
            ns[i] = (int32_t)g[i].n_tokens;
        }
        CHECK_OK(t, nm_decode_batch(ctx, toks, ns, (int32_t)n, &err), err);
        for (size_t i = 0; i < n; i++) {
            double worst = 0;
            const float *l = nm_get_logits(ctx[i]);
            for (size_t k = 0; l && k < g[i].n_logits && k < (size_t)info.n_vocab; k++)
                worst = fmax(worst, fabs((double)l[k] - g[i].logits[k]));
            CHECKF(t, l && g[i].n_logits == (size_t)info.n_vocab && worst <= 0.02,
                   "%s case %zu: batched prompt logits differ from llama.cpp's by %.4f", file, i, worst);
        }
        /* lock-step greedy generation; live[] are the contexts still going */
        size_t done[MAX_GOLDEN] = {0};
        bool diverged = false;
        for (int step = 0; !diverged; step++) {
            nm_context *live[MAX_GOLDEN];
            const int32_t *lt[MAX_GOLDEN];
            int32_t ln[MAX_GOLDEN];
            int32_t n_live = 0;
            for (size_t i = 0; i < n; i++) {
                if (done[i] == g[i].n_greedy) continue;
                int32_t id = nm_logits_argmax(nm_get_logits(ctx[i]), info.n_vocab);
                if (!CHECKF(t, id == g[i].greedy[done[i]], "%s case %zu: greedy id %zu is %d, llama.cpp %d", file, i,
                            done[i], id, g[i].greedy[done[i]])) {
                    diverged = true;
                    break;
                }
                if (++done[i] == g[i].n_greedy) continue;
                next[i] = id;
                live[n_live] = ctx[i];
                lt[n_live] = &next[i];
                ln[n_live++] = 1;
            }
            if (n_live == 0 || diverged) break;
            if (!CHECK_OK(t, nm_decode_batch(live, lt, ln, n_live, &err), err)) break;
        }
        for (size_t i = 0; i < n; i++)
            CHECKF(t, diverged || done[i] == g[i].n_greedy, "%s case %zu: %zu of %zu greedy ids", file, i, done[i],
                   g[i].n_greedy);
    }
    for (size_t i = 0; i < n; i++) {
        nm_context_free(ctx[i]);
        free(g[i].tokens);
        free(g[i].greedy);
        free(g[i].logits);
    }
    nm_pool_free(pool);
    nm_model_free(m);
}

static void test_golden_batched_f16(nm_test *t) { golden_batched(t, "stories260K.gguf", NM_TYPE_F16); }
static void test_golden_batched_f32kv(nm_test *t) { golden_batched(t, "stories260K-f16.gguf", NM_TYPE_F32); }

/* ---- batched == alone ---- */

enum { N_MIX = 5 };

/* Deterministic pseudo-random token ids. */
static int32_t tok_at(int32_t ctx, int32_t i, int32_t n_vocab) {
    uint32_t x = (uint32_t)(ctx * 7919 + i * 104729 + 17);
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    x ^= x >> 15;
    return (int32_t)(x % (uint32_t)(n_vocab - 3)) + 3;
}

/* Five contexts of different kinds go through a schedule of steps like a
 * server's: prompt chunks, single generated tokens (the argmax of the
 * context's own logits, so a wrong cache shows up in later steps), a
 * context joining late, one leaving, one truncated and reused.  Each is
 * mirrored by a reference context decoded alone with nm_decode on a
 * one-thread pool; after every step both must agree bit for bit. */
static void mixed_schedule(nm_test *t, const char *file, int pool_threads, int32_t host_batch) {
    nm_model *m = load(t, file);
    nm_pool *pool = NULL;
    nm_err err = {0};
    CHECK_OK(t, nm_pool_new(pool_threads, &pool, &err), err);
    if (!m || !pool) {
        nm_pool_free(pool);
        nm_model_free(m);
        return;
    }
    nm_model_info info;
    nm_model_get_info(m, &info);
    const ctx_spec spec[N_MIX] = {
        {64, host_batch, NM_TYPE_F16, false}, /* the host: its n_batch bounds a pass  */
        {48, 0, NM_TYPE_F32, false},
        {96, 0, NM_TYPE_F16, false},          /* starts 20 tokens in                  */
        {40, 16, NM_TYPE_F32, true},          /* every row's logits                   */
        {64, 0, NM_TYPE_F32, false},          /* joins at step 2, leaves after step 5 */
    };
    nm_context *bat[N_MIX] = {0}, *ref[N_MIX] = {0};
    bool ok = true;
    for (int i = 0; i < N_MIX; i++) {
        bat[i] = make_ctx(t, m, &spec[i], pool);
        ref[i] = make_ctx(t, m, &spec[i], NULL);
        ok = ok && bat[i] && ref[i];
    }
    /* context 2's earlier history, decoded alone in both */
    int32_t hist[20];
    for (int i = 0; i < 20; i++) hist[i] = tok_at(2, 100 + i, info.n_vocab);
    if (ok) {
        CHECK_OK(t, nm_decode(bat[2], hist, 20, &err), err);
        CHECK_OK(t, nm_decode(ref[2], hist, 20, &err), err);
    }
    /* per step, tokens per context: > 0 a prompt chunk of that many, -1 one
     * generated token, 0 not in this step */
    static const int32_t plan[][N_MIX] = {
        {11, 3, 4, 5, 0},  {-1, 2, -1, -1, 0}, {-1, -1, 1, 7, 9},  {6, -1, -1, -1, -1},
        {-1, -1, 5, 2, -1}, {-1, 1, -1, -1, -1}, {-1, -1, -1, 3, 0}, {2, -1, -1, -1, 0},
    };
    const int n_steps = (int)(sizeof plan / sizeof plan[0]);
    int32_t buf[N_MIX][16];
    int32_t fed[N_MIX] = {0};
    for (int st = 0; ok && st < n_steps; st++) {
        nm_context *cs[N_MIX];
        const int32_t *ts[N_MIX];
        int32_t ns[N_MIX], n = 0;
        for (int i = 0; i < N_MIX; i++) {
            int32_t k = plan[st][i];
            if (k == 0) continue;
            if (k > 0) {
                for (int32_t j = 0; j < k; j++) buf[i][j] = tok_at(i, fed[i] + j, info.n_vocab);
            } else {
                k = 1;
                buf[i][0] = nm_logits_argmax(nm_get_logits(ref[i]), info.n_vocab);
            }
            fed[i] += k;
            /* the reference, alone */
            CHECK_OK(t, nm_decode(ref[i], buf[i], k, &err), err);
            cs[n] = bat[i];
            ts[n] = buf[i];
            ns[n++] = k;
        }
        if (!CHECK_OK(t, nm_decode_batch(cs, ts, ns, n, &err), err)) break;
        char what[160];
        snprintf(what, sizeof what, "%s, %d threads, host batch %d, step %d", file, pool_threads, host_batch, st);
        for (int i = 0, j = 0; i < N_MIX; i++) {
            if (plan[st][i] == 0) continue;
            if (!same_state(t, bat[i], ref[i], info.n_vocab, spec[i].logits_all, ns[j], what, i)) ok = false;
            j++;
        }
        /* after step 4, context 1 forgets its last 3 tokens in both and
         * goes on from there (a server reusing a cached prefix) */
        if (st == 4) {
            int32_t keep = nm_context_n_past(ref[1]) - 3;
            CHECK_OK(t, nm_context_truncate(ref[1], keep, &err), err);
            CHECK_OK(t, nm_context_truncate(bat[1], keep, &err), err);
        }
    }
    for (int i = 0; i < N_MIX; i++) {
        nm_context_free(bat[i]);
        nm_context_free(ref[i]);
    }
    nm_pool_free(pool);
    nm_model_free(m);
}

static void test_mixed_f32_model(nm_test *t) {
    mixed_schedule(t, "stories260K.gguf", 3, 0);
    /* a host batch of 8 tokens: the steps' 19-28 tokens take 3-4 passes,
     * contexts (logits_all one included) cut across passes */
    mixed_schedule(t, "stories260K.gguf", 2, 8);
    mixed_schedule(t, "stories260K-bf16.gguf", 1, 0);
}

/* Q4_K_M mixes Q4_K, Q6_K and F32 weights with 8-bit activations, and the
 * 32000-token vocabulary makes the output product run in vocabulary
 * slices when several contexts want logits (host batch 4: 4 * 768 floats
 * of scratch per slice). */
static void test_mixed_quantized(nm_test *t) {
    mixed_schedule(t, "t256-q4_k_m.gguf", 2, 0);
    mixed_schedule(t, "t256-q4_k_m.gguf", 3, 4);
    mixed_schedule(t, "t256-q8_0.gguf", 2, 5);
}

/* More contexts than one pass takes (64): 70 contexts at different
 * positions, one token each, in one call. */
static void test_many_contexts(nm_test *t) {
    enum { N = 70 };
    nm_model *m = load(t, "stories260K.gguf");
    nm_pool *pool = NULL;
    nm_err err = {0};
    CHECK_OK(t, nm_pool_new(2, &pool, &err), err);
    nm_context *bat[N] = {0}, *ref = NULL;
    const ctx_spec spec = {16, 0, NM_TYPE_F16, false};
    bool ok = m && pool && (ref = make_ctx(t, m, &spec, NULL)) != NULL;
    for (int i = 0; ok && i < N; i++) ok = (bat[i] = make_ctx(t, m, &spec, pool)) != NULL;
    if (ok) {
        nm_model_info info;
        nm_model_get_info(m, &info);
        int32_t toks[N][8], ns[N];
        const int32_t *tp[N];
        /* histories of 0..7 tokens, then one more token each in one batch */
        for (int i = 0; i < N; i++) {
            for (int j = 0; j < 8; j++) toks[i][j] = tok_at(i, j, info.n_vocab);
            int32_t h = i % 8;
            if (h) CHECK_OK(t, nm_decode(bat[i], toks[i], h, &err), err);
            tp[i] = toks[i] + h;
            ns[i] = 1;
        }
        CHECK_OK(t, nm_decode_batch(bat, tp, ns, N, &err), err);
        for (int i = 0; i < N; i++) {
            CHECK_OK(t, nm_context_truncate(ref, 0, &err), err);
            CHECK_OK(t, nm_decode(ref, toks[i], i % 8 + 1, &err), err);
            if (!same_state(t, bat[i], ref, info.n_vocab, false, 1, "70 contexts", i)) break;
        }
    }
    for (int i = 0; i < N; i++) nm_context_free(bat[i]);
    nm_context_free(ref);
    nm_pool_free(pool);
    nm_model_free(m);
}

/* A batch whose contexts have pools of different sizes runs on the first
 * one's; a context whose scratch is sized for fewer threads limits the
 * attention to those (under ASan, any overrun of its per-thread buffers
 * would show).  t256 (dim 256): big enough a model for passes to use every
 * thread of the pool (stories260K's small passes run on one). */
static void test_unshared_pools(nm_test *t) {
    nm_model *m = load(t, "t256-q8_0.gguf");
    if (!m) return;
    nm_model_info info;
    nm_model_get_info(m, &info);
    const int32_t nv = info.n_vocab;
    nm_context_params p = nm_context_default_params();
    p.n_ctx = 32;
    nm_err err = {0};
    nm_context *c4 = NULL, *c1 = NULL, *r1 = NULL, *r2 = NULL;
    p.n_threads = 4;
    CHECK_OK(t, nm_context_new(m, &p, &c4, &err), err);
    p.n_threads = 1;
    CHECK_OK(t, nm_context_new(m, &p, &c1, &err), err);
    CHECK_OK(t, nm_context_new(m, &p, &r1, &err), err);
    CHECK_OK(t, nm_context_new(m, &p, &r2, &err), err);
    if (c4 && c1 && r1 && r2) {
        CHECK(t, nm_context_n_threads(c4) == 4 && nm_context_n_threads(c1) == 1);
        const int32_t a[6] = {1, 403, 407, 261, 378, 274}, b[3] = {1, 300, 301};
        nm_context *cs[2] = {c4, c1};
        const int32_t *ts[2] = {a, b};
        const int32_t ns[2] = {6, 3};
        CHECK_OK(t, nm_decode_batch(cs, ts, ns, 2, &err), err);
        CHECK_OK(t, nm_decode(r1, a, 6, &err), err);
        CHECK_OK(t, nm_decode(r2, b, 3, &err), err);
        same_state(t, c4, r1, nv, false, 1, "pools of 4 and 1", 0);
        same_state(t, c1, r2, nv, false, 1, "pools of 4 and 1", 1);
        /* the other way round: the 1-thread context hosts */
        nm_context *cs2[2] = {c1, c4};
        const int32_t *ts2[2] = {a + 5, b};
        const int32_t ns2[2] = {1, 2};
        CHECK_OK(t, nm_decode_batch(cs2, ts2, ns2, 2, &err), err);
        CHECK_OK(t, nm_decode(r2, a + 5, 1, &err), err);
        CHECK_OK(t, nm_decode(r1, b, 2, &err), err);
        same_state(t, c1, r2, nv, false, 1, "1-thread host", 0);
        same_state(t, c4, r1, nv, false, 1, "1-thread host", 1);
    }
    nm_context_free(c4);
    nm_context_free(c1);
    nm_context_free(r1);
    nm_context_free(r2);
    nm_model_free(m);
}

/* A shared pool: borrowed by the contexts (freed after them, once: ASan
 * would see a double free), sized as given, and nm_decode on such a
 * context works as before. */
static void test_shared_pool(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf");
    nm_pool *pool = NULL;
    nm_err err = {0};
    CHECK_OK(t, nm_pool_new(3, &pool, &err), err);
    const ctx_spec spec = {32, 0, NM_TYPE_F16, false};
    nm_context *a = m && pool ? make_ctx(t, m, &spec, pool) : NULL;
    nm_context *b = m && pool ? make_ctx(t, m, &spec, pool) : NULL;
    nm_context *r = m ? make_ctx(t, m, &spec, NULL) : NULL;
    if (a && b && r) {
        CHECK(t, nm_context_n_threads(a) == 3 && nm_context_n_threads(b) == 3 && nm_context_n_threads(r) == 1);
        const int32_t ids[5] = {1, 403, 407, 261, 378};
        CHECK_OK(t, nm_decode(a, ids, 5, &err), err);
        CHECK_OK(t, nm_decode(b, ids, 2, &err), err);
        CHECK_OK(t, nm_decode(b, ids + 2, 3, &err), err);
        CHECK_OK(t, nm_decode(r, ids, 5, &err), err);
        same_state(t, a, r, 512, false, 1, "shared pool", 0);
        same_state(t, b, r, 512, false, 1, "shared pool", 1);
        /* llama.cpp's first greedy token after "Once upon a time" is ',' */
        CHECK(t, nm_logits_argmax(nm_get_logits(a), 512) == 432);
    }
    nm_context_free(a);
    nm_context_free(b);
    nm_context_free(r);
    nm_pool_free(pool);
    nm_model_free(m);
}

/* Every refusal leaves every context as it was (n_past, logits). */
static void test_errors_change_nothing(nm_test *t) {
    nm_model *m = load(t, "stories260K.gguf");
    nm_model *m2 = load(t, "stories260K.gguf");
    nm_pool *pool = NULL;
    nm_err err = {0};
    CHECK_OK(t, nm_pool_new(2, &pool, &err), err);
    const ctx_spec small = {8, 0, NM_TYPE_F16, false}, all = {16, 4, NM_TYPE_F32, true};
    nm_context *a = NULL, *b = NULL, *c = NULL, *o = NULL;
    if (m && m2 && pool) {
        a = make_ctx(t, m, &small, pool);
        b = make_ctx(t, m, &small, pool);
        c = make_ctx(t, m, &all, pool);
        o = make_ctx(t, m2, &small, pool);
    }
    if (a && b && c && o) {
        const int32_t ids[8] = {1, 403, 407, 261, 378, 274, 287, 269};
        CHECK_OK(t, nm_decode(a, ids, 6, &err), err);
        CHECK_OK(t, nm_decode(b, ids, 2, &err), err);
        float la = nm_get_logits(a)[7], lb = nm_get_logits(b)[7];
        nm_context *cs[3] = {a, b, c};
        const int32_t *ts[3] = {ids, ids, ids};
        int32_t ns[3] = {3, 1, 2};
        /* a would overflow its 8 tokens */
        CHECK(t, nm_decode_batch(cs, ts, ns, 3, &err) == NM_ERR_RANGE);
        CHECKF(t, strstr(err.msg, "context 0") && strstr(err.msg, "context full"), "message: %s", err.msg);
        /* a bad token id in context 1 */
        ns[0] = 1;
        int32_t bad[2] = {5, 512};
        ts[1] = bad;
        ns[1] = 2;
        CHECK(t, nm_decode_batch(cs, ts, ns, 3, &err) == NM_ERR_ARG);
        CHECKF(t, strstr(err.msg, "context 1") && strstr(err.msg, "512"), "message: %s", err.msg);
        /* logits_all: more tokens than its n_batch */
        ts[1] = ids;
        ns[1] = 1;
        ns[2] = 5;
        CHECK(t, nm_decode_batch(cs, ts, ns, 3, &err) == NM_ERR_ARG);
        CHECKF(t, strstr(err.msg, "context 2") && strstr(err.msg, "batch size"), "message: %s", err.msg);
        /* nothing to decode for one context, or no contexts */
        ns[2] = 0;
        CHECK(t, nm_decode_batch(cs, ts, ns, 3, &err) == NM_ERR_ARG);
        CHECKF(t, strstr(err.msg, "context 2") != NULL, "message: %s", err.msg);
        CHECK(t, nm_decode_batch(cs, ts, ns, 0, &err) == NM_ERR_ARG);
        /* the same context twice; a context of another model */
        ns[2] = 1;
        nm_context *twice[3] = {a, b, a};
        CHECK(t, nm_decode_batch(twice, ts, ns, 3, &err) == NM_ERR_ARG);
        CHECKF(t, strstr(err.msg, "context 2") && strstr(err.msg, "context 0"), "message: %s", err.msg);
        nm_context *mixed[3] = {a, o, c};
        CHECK(t, nm_decode_batch(mixed, ts, ns, 3, &err) == NM_ERR_ARG);
        CHECKF(t, strstr(err.msg, "another model") != NULL, "message: %s", err.msg);
        nm_context *nul[3] = {a, NULL, c};
        CHECK(t, nm_decode_batch(nul, ts, ns, 3, &err) == NM_ERR_ARG);
        /* nothing moved */
        CHECK(t, nm_context_n_past(a) == 6 && nm_context_n_past(b) == 2 && nm_context_n_past(c) == 0);
        CHECK(t, nm_get_logits(a)[7] == la && nm_get_logits(b)[7] == lb && nm_get_logits(c) == NULL);
        CHECK(t, nm_context_n_past(o) == 0);
        /* and the valid call goes through */
        CHECK_OK(t, nm_decode_batch(cs, ts, ns, 3, &err), err);
        CHECK(t, nm_context_n_past(a) == 7 && nm_context_n_past(b) == 3 && nm_context_n_past(c) == 1);
    }
    nm_context_free(a);
    nm_context_free(b);
    nm_context_free(c);
    nm_context_free(o);
    nm_pool_free(pool);
    nm_model_free(m);
    nm_model_free(m2);
}

int main(void) {
    nm_test_run("golden_batched_stories260K", test_golden_batched_f16);
    nm_test_run("golden_batched_stories260K_f16_kv_f32", test_golden_batched_f32kv);
    nm_test_run("mixed_schedule_f32_bf16", test_mixed_f32_model);
    nm_test_run("mixed_schedule_quantized", test_mixed_quantized);
    nm_test_run("many_contexts", test_many_contexts);
    nm_test_run("unshared_pools", test_unshared_pools);
    nm_test_run("shared_pool", test_shared_pool);
    nm_test_run("errors_change_nothing", test_errors_change_nothing);
    return nm_test_finish();
}
