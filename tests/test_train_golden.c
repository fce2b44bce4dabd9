/* test_train_golden.c - whole-model LoRA and full fine-tuning gradients of
 * stories260K against the float64 PyTorch reference
 * (../shared/golden/grads-stories260K.json, made by
 * ../shared/peers/torch_reference.py): inputs tokens[0:64], targets
 * tokens[1:65], LoRA rank 4, alpha 8 (scale 2) on all seven projections of
 * all five layers with the reference's own A and B values.
 *
 * Bar: per tensor, ||got - ref|| / ||ref|| < 1e-4 and the largest element
 * error below 1e-4 of the tensor's largest magnitude.  Our forward and
 * backward run in float32 (~6e-8 per operation); through 5 layers and a
 * 512-way softmax the accumulated relative error is ~1e-6, so 1e-4 is met
 * with margin, while any wrong convention (RoPE pairing, GQA head mapping,
 * the LoRA scale, the mean over masked positions) is off by O(1). */
#include "testlib.h"
#include "train/model.h"
#include "base/base.h"

#include <jansson.h>
#include <math.h>
#include <string.h>

#define REL_TOL 1e-4

static json_t *GOLD;

static json_t *golden(nm_test *t) {
    if (GOLD) return GOLD;
    json_error_t je;
    GOLD = json_load_file(nm_test_shared("golden/grads-stories260K.json"), 0, &je);
    CHECKF(t, GOLD != NULL, "golden file: %s (line %d)", je.text, je.line);
    return GOLD;
}

/* Reads a JSON array of numbers into floats; false if its length differs. */
static bool json_floats(const json_t *arr, float *dst, size_t n) {
    if (!json_is_array(arr) || json_array_size(arr) != n) return false;
    for (size_t i = 0; i < n; i++) dst[i] = (float)json_number_value(json_array_get(arr, i));
    return true;
}

static double worst_rel; /* the largest relative error seen, for the log line */

static void compare(nm_test *t, const char *what, const float *got, const json_t *ref, int64_t n) {
    if (!CHECKF(t, json_is_array(ref) && (int64_t)json_array_size(ref) == n, "%s: reference has %zu values, want %lld",
                what, json_array_size(ref), (long long)n))
        return;
    double num = 0, den = 0, maxerr = 0, maxref = 0;
    for (int64_t i = 0; i < n; i++) {
        double r = json_number_value(json_array_get(ref, (size_t)i)), e = (double)got[i] - r;
        num += e * e;
        den += r * r;
        if (fabs(e) > maxerr) maxerr = fabs(e);
        if (fabs(r) > maxref) maxref = fabs(r);
    }
    double rel = sqrt(num) / sqrt(den);
    if (rel > worst_rel) worst_rel = rel;
    CHECKF(t, den > 0, "%s: zero reference", what);
    CHECKF(t, rel < REL_TOL, "%s: relative error %.3g", what, rel);
    CHECKF(t, maxerr < REL_TOL * maxref, "%s: max abs error %.3g (max |ref| %.3g)", what, maxerr, maxref);
}

typedef struct batch_buf {
    int32_t tokens[64], targets[64];
} batch_buf;

static bool make_batch(nm_test *t, batch_buf *bb, int first_target) {
    json_t *toks = json_object_get(golden(t), "tokens");
    if (!CHECK(t, json_is_array(toks) && json_array_size(toks) == 65)) return false;
    for (int i = 0; i < 64; i++) {
        bb->tokens[i] = (int32_t)json_integer_value(json_array_get(toks, (size_t)i));
        bb->targets[i] = i >= first_target ? (int32_t)json_integer_value(json_array_get(toks, (size_t)i + 1)) : -1;
    }
    return true;
}

static nm_tmodel *open_model(nm_test *t, const char *file, bool full, nm_pool *pool) {
    nm_tmodel *m = NULL;
    nm_err err = {0};
    CHECK_OK(t, nm_tmodel_open(nm_test_shared(file), full, pool, &m, &err), err);
    return m;
}

/* A rank-4 alpha-8 adapter on everything, with the reference's A and B. */
static nm_tm_lora *golden_lora(nm_test *t, nm_tmodel *m) {
    nm_tm_lora *l = NULL;
    nm_err err = {0};
    if (!CHECK_OK(t, nm_tm_lora_new(m, 4, 8.0f, false, 0.0f, NM_TM_ALL, &l, &err), err)) return NULL;
    CHECK(t, l->scale == 2.0f);
    json_t *lt = json_object_get(golden(t), "lora_tensors");
    int found = 0;
    for (int64_t ly = 0; ly < m->hp.n_layer; ly++)
        for (int k = 0; k < NM_TM_COUNT; k++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%lld.%s.weight", (long long)ly, nm_tmod_gguf((nm_tmod)k));
            json_t *e = json_object_get(lt, name);
            if (!CHECKF(t, e != NULL, "golden lacks %s", name)) continue;
            nm_tm_lora_mod *md = nm_tm_lora_mod_at(l, ly, (nm_tmod)k);
            CHECKF(t, json_floats(json_object_get(e, "A"), md->A, (size_t)(4 * md->in)), "%s A shape", name);
            CHECKF(t, json_floats(json_object_get(e, "B"), md->B, (size_t)(md->out * 4)), "%s B shape", name);
            found++;
        }
    CHECK(t, found == 35);
    return l;
}

static void zero_grads(nm_tparam *p, int64_t n) {
    for (int64_t i = 0; i < n; i++) memset(p[i].grad, 0, (size_t)p[i].n * sizeof(float));
}

/* Runs one golden LoRA comparison (all 64 positions or the last 32). */
static void lora_case(nm_test *t, nm_tmodel *m, bool last32) {
    nm_tm_lora *l = golden_lora(t, m);
    batch_buf bb;
    if (!l || !make_batch(t, &bb, last32 ? 32 : 0)) {
        nm_tm_lora_free(l);
        return;
    }
    nm_tm_batch b = {1, 64, bb.tokens, bb.targets, NULL, NULL};
    double sum;
    int64_t n;
    nm_err err = {0};
    zero_grads(l->params, l->n_params);
    CHECK_OK(t, nm_tmodel_fwd_bwd(m, l, &b, last32 ? 1.0f / 32 : 1.0f / 64, 0, &sum, &n, &err), err);
    CHECK(t, n == (last32 ? 32 : 64));
    double ref = json_number_value(json_object_get(golden(t), last32 ? "loss_last32" : "loss"));
    double loss = sum / (double)n;
    CHECKF(t, fabs(loss - ref) < REL_TOL * ref, "loss %.9f vs reference %.9f", loss, ref);
    json_t *lt = json_object_get(golden(t), "lora_tensors");
    for (int64_t ly = 0; ly < m->hp.n_layer; ly++)
        for (int k = 0; k < NM_TM_COUNT; k++) {
            char name[64], what[96];
            snprintf(name, sizeof name, "blk.%lld.%s.weight", (long long)ly, nm_tmod_gguf((nm_tmod)k));
            json_t *e = json_object_get(lt, name);
            nm_tm_lora_mod *md = nm_tm_lora_mod_at(l, ly, (nm_tmod)k);
            snprintf(what, sizeof what, "%s dA%s", name, last32 ? "_last32" : "");
            compare(t, what, md->dA, json_object_get(e, last32 ? "dA_last32" : "dA"), 4 * md->in);
            snprintf(what, sizeof what, "%s dB%s", name, last32 ? "_last32" : "");
            compare(t, what, md->dB, json_object_get(e, last32 ? "dB_last32" : "dB"), md->out * 4);
        }
    /* evaluation gives the same loss as the training forward */
    double esum;
    int64_t en;
    CHECK_OK(t, nm_tmodel_eval(m, l, &b, &esum, &en, &err), err);
    CHECK(t, en == n && esum == sum);
    nm_tm_lora_free(l);
}

/* A loss hook that reproduces cross-entropy on its own targets: the hook
 * path must give the reference gradients too, with the scan sweep seeing
 * every position before the first gradient is written. */
typedef struct ce_hook {
    const int32_t *targets;
    float dloss;
    int64_t scanned, scanned_at_first_loss;
    bool loss_called;
} ce_hook;

static void ce_scan(void *user, nm_ops_ctx *c, int64_t t0, int64_t ct, int64_t V, const float *logits) {
    (void)c, (void)t0, (void)V, (void)logits;
    ((ce_hook *)user)->scanned += ct;
}

static int64_t ce_loss(void *user, nm_ops_ctx *c, int64_t t0, int64_t ct, int64_t V, float *logits, float *loss,
                       bool backward) {
    ce_hook *h = user;
    if (!h->loss_called) h->scanned_at_first_loss = h->scanned;
    h->loss_called = true;
    return nm_op_xent_fused(c, loss, logits, h->targets + t0, ct, V, backward ? h->dloss : 0.0f);
}

static void test_head_hook(nm_test *t) {
    nm_tmodel *m = open_model(t, "models/stories260K.gguf", false, NULL);
    nm_tm_lora *l = m ? golden_lora(t, m) : NULL;
    batch_buf bb;
    if (!l || !make_batch(t, &bb, 32)) goto out;
    nm_tm_batch b = {1, 64, bb.tokens, NULL, NULL, NULL}; /* the hook holds the targets */
    ce_hook h = {bb.targets, 1.0f / 32, 0, 0, false};
    nm_tm_head hook = {ce_scan, ce_loss, &h};
    double sum;
    int64_t n;
    nm_err err = {0};
    zero_grads(l->params, l->n_params);
    CHECK_OK(t, nm_tmodel_fwd_bwd_head(m, l, &b, &hook, 0.0f, 0, &sum, &n, &err), err);
    CHECK(t, n == 32 && h.scanned_at_first_loss == 64);
    double ref = json_number_value(json_object_get(golden(t), "loss_last32"));
    CHECKF(t, fabs(sum / 32 - ref) < REL_TOL * ref, "loss %.9f vs reference %.9f", sum / 32, ref);
    json_t *lt = json_object_get(golden(t), "lora_tensors");
    for (int64_t ly = 0; ly < m->hp.n_layer; ly++)
        for (int k = 0; k < NM_TM_COUNT; k++) {
            char name[64], what[96];
            snprintf(name, sizeof name, "blk.%lld.%s.weight", (long long)ly, nm_tmod_gguf((nm_tmod)k));
            json_t *e = json_object_get(lt, name);
            nm_tm_lora_mod *md = nm_tm_lora_mod_at(l, ly, (nm_tmod)k);
            snprintf(what, sizeof what, "%s dA_last32 (hook)", name);
            compare(t, what, md->dA, json_object_get(e, "dA_last32"), 4 * md->in);
            snprintf(what, sizeof what, "%s dB_last32 (hook)", name);
            compare(t, what, md->dB, json_object_get(e, "dB_last32"), md->out * 4);
        }
    /* evaluation through the hook: the same sum as plain evaluation */
    nm_tm_batch bt = {1, 64, bb.tokens, bb.targets, NULL, NULL};
    double esum, hsum;
    int64_t en, hn;
    CHECK_OK(t, nm_tmodel_eval(m, l, &bt, &esum, &en, &err), err);
    CHECK_OK(t, nm_tmodel_eval_head(m, l, &b, &hook, &hsum, &hn, &err), err);
    CHECK(t, en == hn && esum == hsum);
    /* a hook without a loss function is refused */
    nm_tm_head bad = {ce_scan, NULL, &h};
    CHECK(t, nm_tmodel_eval_head(m, l, &b, &bad, &hsum, &hn, &err) == NM_ERR_ARG);
out:
    nm_tm_lora_free(l);
    nm_tmodel_free(m);
}

static void test_lora_all(nm_test *t) {
    nm_tmodel *m = open_model(t, "models/stories260K.gguf", false, NULL);
    if (!m) return;
    worst_rel = 0;
    lora_case(t, m, false);
    printf("# lora: worst relative gradient error %.3g\n", worst_rel);
    nm_tmodel_free(m);
}

static void test_lora_last32(nm_test *t) {
    nm_tmodel *m = open_model(t, "models/stories260K.gguf", false, NULL);
    if (!m) return;
    worst_rel = 0;
    lora_case(t, m, true);
    printf("# lora last32: worst relative gradient error %.3g\n", worst_rel);
    nm_tmodel_free(m);
}

/* Checkpointing recomputes each layer: gradients must be bit-identical. */
static void test_checkpointing_identical(nm_test *t) {
    nm_tmodel *m = open_model(t, "models/stories260K.gguf", false, NULL);
    if (!m) return;
    nm_tm_lora *l = golden_lora(t, m);
    batch_buf bb;
    if (!l || !make_batch(t, &bb, 0)) goto out;
    nm_tm_batch b = {1, 64, bb.tokens, bb.targets, NULL, NULL};
    nm_err err = {0};
    double s1, s2;
    int64_t n;
    float *g1 = malloc(sizeof(float) * 200000);
    int64_t off = 0;
    zero_grads(l->params, l->n_params);
    CHECK_OK(t, nm_tmodel_fwd_bwd(m, l, &b, 1.0f / 64, 0, &s1, &n, &err), err);
    for (int64_t i = 0; i < l->n_params; i++) {
        memcpy(g1 + off, l->params[i].grad, (size_t)l->params[i].n * sizeof(float));
        off += l->params[i].n;
    }
    m->checkpointing = true;
    zero_grads(l->params, l->n_params);
    CHECK_OK(t, nm_tmodel_fwd_bwd(m, l, &b, 1.0f / 64, 0, &s2, &n, &err), err);
    CHECK(t, s1 == s2);
    off = 0;
    bool same = true;
    for (int64_t i = 0; i < l->n_params; i++) {
        same &= memcmp(g1 + off, l->params[i].grad, (size_t)l->params[i].n * sizeof(float)) == 0;
        off += l->params[i].n;
    }
    CHECK(t, same);
    /* and with checkpointing, the memory for activations is smaller */
    uint64_t with = nm_tmodel_act_bytes(m, l, 256);
    m->checkpointing = false;
    CHECK(t, nm_tmodel_act_bytes(m, l, 256) > with);
    free(g1);
out:
    nm_tm_lora_free(l);
    nm_tmodel_free(m);
}

/* Two threads give the same bits as one, and still match the reference. */
static void test_threads_identical(nm_test *t) {
    nm_pool *pool;
    nm_err err = {0};
    if (!CHECK_OK(t, nm_pool_new(2, &pool, &err), err)) return;
    nm_tmodel *m1 = open_model(t, "models/stories260K.gguf", false, NULL);
    nm_tmodel *m2 = open_model(t, "models/stories260K.gguf", false, pool);
    if (m1 && m2) {
        nm_tm_lora *l1 = golden_lora(t, m1), *l2 = golden_lora(t, m2);
        batch_buf bb;
        make_batch(t, &bb, 20);
        nm_tm_batch b = {1, 64, bb.tokens, bb.targets, NULL, NULL};
        double s1, s2;
        int64_t n;
        zero_grads(l1->params, l1->n_params);
        zero_grads(l2->params, l2->n_params);
        CHECK_OK(t, nm_tmodel_fwd_bwd(m1, l1, &b, 1.0f / 44, 7, &s1, &n, &err), err);
        CHECK_OK(t, nm_tmodel_fwd_bwd(m2, l2, &b, 1.0f / 44, 7, &s2, &n, &err), err);
        CHECK(t, s1 == s2);
        bool same = true;
        for (int64_t i = 0; i < l1->n_params; i++)
            same &= memcmp(l1->params[i].grad, l2->params[i].grad, (size_t)l1->params[i].n * sizeof(float)) == 0;
        CHECK(t, same);
        nm_tm_lora_free(l1);
        nm_tm_lora_free(l2);
    }
    nm_tmodel_free(m1);
    nm_tmodel_free(m2);
    nm_pool_free(pool);
}

static void test_full(nm_test *t) {
    nm_tmodel *m = open_model(t, "models/stories260K.gguf", true, NULL);
    if (!m) return;
    batch_buf bb;
    if (!make_batch(t, &bb, 0)) goto out;
    nm_tm_batch b = {1, 64, bb.tokens, bb.targets, NULL, NULL};
    nm_err err = {0};
    double sum;
    int64_t n;
    zero_grads(m->params, m->n_params);
    CHECK_OK(t, nm_tmodel_fwd_bwd(m, NULL, &b, 1.0f / 64, 0, &sum, &n, &err), err);
    json_t *full = json_object_get(golden(t), "full");
    double ref = json_number_value(json_object_get(full, "loss"));
    CHECKF(t, fabs(sum / (double)n - ref) < REL_TOL * ref, "full loss %.9f vs %.9f", sum / (double)n, ref);
    json_t *grads = json_object_get(full, "grads");
    const char *key;
    json_t *val;
    int compared = 0;
    worst_rel = 0;
    json_object_foreach(grads, key, val) {
        nm_tparam *p = NULL;
        for (int64_t i = 0; i < m->n_params; i++)
            if (strcmp(m->params[i].name, key) == 0) p = &m->params[i];
        if (!CHECKF(t, p != NULL, "no parameter %s", key)) continue;
        json_t *shape = json_object_get(val, "shape");
        CHECKF(t, json_integer_value(json_array_get(shape, 0)) == p->shape[0], "%s shape", key);
        compare(t, key, p->grad, json_object_get(val, "grad"), p->n);
        compared++;
    }
    CHECK(t, compared == 7);
    printf("# full: worst relative gradient error %.3g\n", worst_rel);
out:
    nm_tmodel_free(m);
}

/* The same weights stored as F16 / BF16: the model is a slightly different
 * function (weights rounded), so only the loss is compared, with a bound
 * from the rounding: relative 1e-2 (F16: 2^-11 per weight, BF16: 2^-8). */
static void test_typed_weights_close(nm_test *t) {
    const char *files[] = {"models/stories260K-f16.gguf", "models/stories260K-bf16.gguf"};
    for (int f = 0; f < 2; f++) {
        nm_tmodel *m = open_model(t, files[f], false, NULL);
        if (!m) continue;
        nm_tm_lora *l = golden_lora(t, m);
        batch_buf bb;
        make_batch(t, &bb, 0);
        nm_tm_batch b = {1, 64, bb.tokens, bb.targets, NULL, NULL};
        nm_err err = {0};
        double sum;
        int64_t n;
        zero_grads(l->params, l->n_params);
        CHECK_OK(t, nm_tmodel_fwd_bwd(m, l, &b, 1.0f / 64, 0, &sum, &n, &err), err);
        double ref = json_number_value(json_object_get(golden(t), "loss"));
        CHECKF(t, fabs(sum / (double)n - ref) < 1e-2 * ref, "%s: loss %.6f vs %.6f", files[f], sum / (double)n, ref);
        nm_tm_lora_free(l);
        nm_tmodel_free(m);
    }
}

/* Packing: two documents side by side in one row (positions restarting,
 * attention kept apart) give the losses and gradients of the two run as
 * separate sequences. */
static void test_packing_equals_separate(nm_test *t) {
    nm_tmodel *m = open_model(t, "models/stories260K.gguf", false, NULL);
    if (!m) return;
    nm_tm_lora *l = golden_lora(t, m);
    batch_buf bb;
    make_batch(t, &bb, 0);
    /* separate: 2 sequences of 32 */
    nm_tm_batch sep = {2, 32, bb.tokens, bb.targets, NULL, NULL};
    /* packed: 1 row of 64 = doc 0 (32 tokens) + doc 1 (32 tokens) */
    int32_t pos[64], doc[64];
    for (int i = 0; i < 64; i++) pos[i] = i % 32, doc[i] = i / 32;
    nm_tm_batch pk = {1, 64, bb.tokens, bb.targets, pos, doc};
    nm_err err = {0};
    double s1, s2;
    int64_t n1, n2;
    int64_t total = 0;
    for (int64_t i = 0; i < l->n_params; i++) total += l->params[i].n;
    float *g1 = malloc((size_t)total * sizeof(float));
    zero_grads(l->params, l->n_params);
    CHECK_OK(t, nm_tmodel_fwd_bwd(m, l, &sep, 1.0f / 64, 0, &s1, &n1, &err), err);
    for (int64_t i = 0, off = 0; i < l->n_params; off += l->params[i].n, i++)
        memcpy(g1 + off, l->params[i].grad, (size_t)l->params[i].n * sizeof(float));
    zero_grads(l->params, l->n_params);
    CHECK_OK(t, nm_tmodel_fwd_bwd(m, l, &pk, 1.0f / 64, 0, &s2, &n2, &err), err);
    CHECK(t, n1 == n2);
    CHECKF(t, fabs(s1 - s2) < 1e-5 * fabs(s1), "loss sums %.9g vs %.9g", s1, s2);
    double num = 0, den = 0;
    for (int64_t i = 0, off = 0; i < l->n_params; off += l->params[i].n, i++)
        for (int64_t j = 0; j < l->params[i].n; j++) {
            double e = (double)g1[off + j] - l->params[i].grad[j];
            num += e * e;
            den += (double)g1[off + j] * g1[off + j];
        }
    CHECKF(t, sqrt(num / den) < 1e-5, "packed vs separate gradients differ: %.3g", sqrt(num / den));
    free(g1);
    nm_tm_lora_free(l);
    nm_tmodel_free(m);
}

static void test_bad_input(nm_test *t) {
    nm_tmodel *m = NULL;
    nm_err err = {0};
    CHECK(t, nm_tmodel_open("/nonexistent.gguf", false, NULL, &m, &err) != NM_OK && m == NULL);
    m = open_model(t, "models/stories260K.gguf", false, NULL);
    if (!m) return;
    nm_tm_lora *l = NULL;
    CHECK(t, nm_tm_lora_new(m, 0, 8, false, 0, NM_TM_ALL, &l, &err) == NM_ERR_ARG);
    CHECK(t, nm_tm_lora_new(m, 4, 8, false, 1.0f, NM_TM_ALL, &l, &err) == NM_ERR_ARG);
    CHECK_OK(t, nm_tm_lora_new(m, 4, 8, false, 0, NM_TM_ALL, &l, &err), err);
    int32_t tok[4] = {1, 2, 600, 3}, tgt[4] = {2, 3, 4, 5};
    nm_tm_batch b = {1, 4, tok, tgt, NULL, NULL};
    double s;
    int64_t n;
    CHECK(t, nm_tmodel_fwd_bwd(m, l, &b, 1, 0, &s, &n, &err) == NM_ERR_ARG);
    CHECK(t, strstr(err.msg, "600") != NULL);
    unsigned mask;
    CHECK_OK(t, nm_tmod_parse("q,k,v,o,gate,up,down", &mask, &err), err);
    CHECK(t, mask == NM_TM_ALL);
    CHECK_OK(t, nm_tmod_parse("q_proj,down", &mask, &err), err);
    CHECK(t, mask == ((1u << NM_TM_Q) | (1u << NM_TM_DOWN)));
    CHECK(t, nm_tmod_parse("q,bogus", &mask, &err) == NM_ERR_ARG && strstr(err.msg, "bogus"));
    nm_tm_lora_free(l);
    nm_tmodel_free(m);
}

int main(void) {
    nm_test_run("lora_grads_vs_torch", test_lora_all);
    nm_test_run("lora_grads_last32_vs_torch", test_lora_last32);
    nm_test_run("full_grads_vs_torch", test_full);
    nm_test_run("loss_hook_grads_vs_torch", test_head_hook);
    nm_test_run("checkpointing_bit_identical", test_checkpointing_identical);
    nm_test_run("threads_bit_identical", test_threads_identical);
    nm_test_run("f16_bf16_weights_close", test_typed_weights_close);
    nm_test_run("packing_equals_separate", test_packing_equals_separate);
    nm_test_run("bad_input", test_bad_input);
    json_decref(GOLD);
    return nm_test_finish();
}
