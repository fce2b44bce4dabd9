/* test_curate.c - cleaning: the normalised form, filters, decontamination,
 * exact duplicates, and MinHash + LSH measured against the mathematics it
 * claims (estimates against exact Jaccard similarities, the candidate rate
 * against 1 - (1 - s^r)^b), reports and hostile input. */
#include "testlib.h"
#include "curate/curate.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

static char *norm(const char *s) {
    char *out = NULL;
    nm_err err = {0};
    if (nm_text_normalize(s, strlen(s), &out, NULL, &err)) return NULL;
    return out;
}

static void test_normalize(nm_test *t) {
    static const char *const cases[][2] = {
        {"Hello, World!", "hello world"},
        {"  HELLO \t\n  world.  ", "hello world"},
        {"don't stop-me now...", "dont stopme now"},
        {"\xc3\x89" "COLE \xc3\xa9" "cole", "\xc3\xa9" "cole \xc3\xa9" "cole"},       /* É -> é */
        {"\xce\x91\xce\x98\xce\x97\xce\x9d\xce\x91", "\xce\xb1\xce\xb8\xce\xb7\xce\xbd\xce\xb1"}, /* ΑΘΗΝΑ */
        {"\xd0\x9c\xd0\x9e\xd0\xa1\xd0\x9a\xd0\x92\xd0\x90", "\xd0\xbc\xd0\xbe\xd1\x81\xd0\xba\xd0\xb2\xd0\xb0"},
        {"\xe2\x80\x9cquoted\xe2\x80\x9d \xe2\x80\x94 dash\xe2\x80\xa6", "quoted dash"}, /* “ ” — … */
        {"a\xc2\xa0" "b\xe2\x80\x83" "c\xe3\x80\x80" "d", "a b c d"},                 /* NBSP, em space, ideographic */
        {"zero\xe2\x80\x8bwidth\xc2\xad" "soft", "zerowidthsoft"},
        {"\xef\xbc\xa1\xef\xbc\xa2 price: 12\xe2\x82\xac", "\xef\xbd\x81\xef\xbd\x82 price 12"}, /* ＡＢ, € */
        {"...!!!", ""},
        {"\xff" "bad", "\xff" "bad"}, /* an invalid byte is kept */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = norm(cases[i][0]);
        CHECKF(t, got && strcmp(got, cases[i][1]) == 0, "case %zu: got '%s', want '%s'", i, got ? got : "(null)",
               cases[i][1]);
        free(got);
    }
}

static void test_stopwords(nm_test *t) {
    const char *yes[] = {"the", "a", "and", "was", "yourself", "didnt", "through", "she"};
    const char *no[] = {"dog", "le", "und", "", "thee", "yourselves", "zzz"};
    for (size_t i = 0; i < 8; i++) CHECKF(t, nm_cu_is_en_stopword(yes[i], strlen(yes[i])), "%s", yes[i]);
    for (size_t i = 0; i < 7; i++) CHECKF(t, !nm_cu_is_en_stopword(no[i], strlen(no[i])), "%s", no[i]);
}

static nm_docset *docs_of(const char *const *texts, size_t n) {
    nm_docset *s = nm_docset_new();
    nm_err err = {0};
    for (size_t i = 0; i < n; i++) nm_docset_add_text(s, texts[i], strlen(texts[i]), &err);
    return s;
}

static void test_exact_across_files(nm_test *t) {
    const char *a = write_tmp("a.txt", "Hello, World!\nsomething else entirely\n\nhello world2\n");
    const char *b = write_tmp("b.jsonl", "{\"text\": \"HELLO   world.\"}\n{\"text\": \"Something else, entirely!\"}\n"
                                         "{\"text\": \"new one\"}\n");
    nm_docset *s = nm_docset_new();
    nm_err err = {0};
    CHECK_OK(t, nm_docset_add_file(s, a, NM_DOC_AUTO, NULL, &err), err);
    CHECK_OK(t, nm_docset_add_file(s, b, NM_DOC_AUTO, NULL, &err), err);
    CHECK(t, nm_docset_size(s) == 6);
    CHECK(t, nm_docset_doc(s, 2)->line == 4); /* the blank line is skipped but counted */
    nm_clean_params p;
    nm_clean_params_default(&p);
    p.near = false;
    nm_clean_result r;
    if (!CHECK_OK(t, nm_clean_run(s, &p, &r, NULL, &err), err)) return;
    const uint8_t want[6] = {NM_CLEAN_KEPT, NM_CLEAN_KEPT, NM_CLEAN_KEPT, NM_CLEAN_EXACT, NM_CLEAN_EXACT, NM_CLEAN_KEPT};
    for (int i = 0; i < 6; i++) CHECKF(t, r.step[i] == want[i], "doc %d: step %d, want %d", i, r.step[i], want[i]);
    CHECK(t, r.ref[3] == 0 && r.ref[4] == 1);
    CHECK(t, r.count[NM_CLEAN_KEPT] == 4 && r.count[NM_CLEAN_EXACT] == 2);
    char why[256];
    nm_clean_reason(s, &p, &r, 3, why, sizeof why);
    CHECKF(t, strstr(why, "a.txt:1") != NULL, "reason: %s", why);

    /* the kept records are written back as they were */
    char out[512];
    snprintf(out, sizeof out, "%s/kept.jsonl", nm_test_tmpdir());
    CHECK_OK(t, nm_clean_write(s, &r, 1, out, &err), err);
    char *got = nm_test_read(out, NULL);
    CHECKF(t, got && strcmp(got, "{\"text\": \"new one\"}\n") == 0, "wrote '%s'", got ? got : "");
    free(got);
    snprintf(out, sizeof out, "%s/kept.txt", nm_test_tmpdir());
    CHECK_OK(t, nm_clean_write(s, &r, 0, out, &err), err);
    got = nm_test_read(out, NULL);
    CHECKF(t, got && strcmp(got, "Hello, World!\nsomething else entirely\nhello world2\n") == 0, "wrote '%s'",
           got ? got : "");
    free(got);
    nm_clean_result_deinit(&r);
    nm_docset_free(s);
}

static void test_filters(nm_test *t) {
    const char *texts[] = {
        /* 0 */ "The little dog ran to the park and played with the ball all day long.",
        /* 1 */ "Hi.",
        /* 2 */ "12345 67890 1111 2222 3333 4444 and the",
        /* 3 */ "Le petit chien a couru dans le parc et il a joue avec la balle toute la journee.",
        /* 4 */ "Der kleine Hund lief in den Park und spielte den ganzen Tag mit dem Ball.",
        /* 5 */ "El perro corrio al parque y jugo con la pelota todo el dia con sus amigos.",
        /* 6 */ "\xd0\x9c\xd0\xb0\xd0\xbb\xd0\xb5\xd0\xbd\xd1\x8c\xd0\xba\xd0\xb0\xd1\x8f \xd1\x81\xd0\xbe\xd0\xb1"
                "\xd0\xb0\xd0\xba\xd0\xb0 \xd0\xb1\xd0\xb5\xd0\xb6\xd0\xb0\xd0\xbb\xd0\xb0 \xd0\xb2 \xd0\xbf\xd0\xb0"
                "\xd1\x80\xd0\xba and the dog",
        /* 7 */ "She said that the secret PassWord is swordfish, and then she left the room.",
        /* 8 */ "#### ==== **** ---- !!!! and the dog ????",
        /* 9 */ "It was a sunny day, so Tom and his mom went to the beach with their new red bucket.",
    };
    nm_docset *s = docs_of(texts, 10);
    nm_clean_params p;
    nm_clean_params_default(&p);
    p.exact = p.near = false;
    p.min_chars = 10;
    p.max_words = 40;
    p.max_digit = 0.3;
    p.max_nonletter = 0.4;
    p.lang = "en";
    const char *forbid[] = {"password"};
    p.forbid = forbid;
    p.n_forbid = 1;
    nm_clean_result r;
    nm_err err = {0};
    for (int th = 1; th <= 2; th++) {
        p.threads = th;
        if (!CHECK_OK(t, nm_clean_run(s, &p, &r, NULL, &err), err)) return;
        const uint8_t want[10] = {NM_CLEAN_KEPT, NM_CLEAN_LENGTH, NM_CLEAN_CHARS, NM_CLEAN_LANG, NM_CLEAN_LANG,
                                  NM_CLEAN_LANG, NM_CLEAN_LANG,   NM_CLEAN_FORBID, NM_CLEAN_CHARS, NM_CLEAN_KEPT};
        for (int i = 0; i < 10; i++) {
            char why[256];
            nm_clean_reason(s, &p, &r, (size_t)i, why, sizeof why);
            CHECKF(t, r.step[i] == want[i], "threads %d doc %d: %s (%s), want %s", th, i,
                   nm_clean_step_name(r.step[i]), why, nm_clean_step_name(want[i]));
        }
        CHECK(t, r.detail[2] == 2 && r.detail[8] == 1); /* digits; non-letters */
        CHECK(t, r.detail[6] == 1 && r.detail[3] == 2); /* Cyrillic: ASCII letters; French: stop words */
        nm_clean_result_deinit(&r);
    }
    nm_docset_free(s);
}

static void test_decontam(nm_test *t) {
    const char *eval_text =
        "{\"ctx\": \"The quick brown fox jumps over the lazy dog while the farmer sleeps under an old oak tree.\", "
        "\"endings\": [\"a\", \"b\"], \"label\": 0}\n"
        "{\"question\": \"Which planet has the most moons in our solar system today?\"}\n"
        "{\"question\": \"Too short to check.\"}\n";
    const char *ev_path = write_tmp("eval.jsonl", eval_text);
    nm_docset *ev = nm_docset_new();
    nm_err err = {0};
    CHECK_OK(t, nm_docset_add_file(ev, ev_path, NM_DOC_AUTO, NULL, &err), err);
    const char *texts[] = {
        /* 0: 13 consecutive words of the first eval text, other punctuation and case */
        "Story: THE QUICK brown fox -- jumps over the lazy dog, while the farmer sleeps. The end.",
        /* 1: only 12 of them */
        "quick brown fox jumps over the lazy dog while the farmer sleeps",
        /* 2: the whole short question (11 words >= ngram_min 8) */
        "Quiz time. Which planet has the most moons in our solar system today? Saturn!",
        /* 3: the 4-word question is too short to be checked */
        "too short to check",
        /* 4: unrelated */
        "A completely different story about cats and boats and the sea.",
    };
    nm_docset *s = docs_of(texts, 5);
    nm_clean_params p;
    nm_clean_params_default(&p);
    p.exact = p.near = false;
    p.eval = ev;
    nm_clean_result r;
    if (!CHECK_OK(t, nm_clean_run(s, &p, &r, NULL, &err), err)) return;
    const uint8_t want[5] = {NM_CLEAN_DECONTAM, NM_CLEAN_KEPT, NM_CLEAN_DECONTAM, NM_CLEAN_KEPT, NM_CLEAN_KEPT};
    for (int i = 0; i < 5; i++) CHECKF(t, r.step[i] == want[i], "doc %d: %s", i, nm_clean_step_name(r.step[i]));
    CHECKF(t, r.ref[0] == 0 && r.ref[2] == 1 && r.detail[0] == 13 && r.detail[2] == 11, "refs %lld %lld, lengths %d %d",
           (long long)r.ref[0], (long long)r.ref[2], r.detail[0], r.detail[2]);
    CHECK(t, r.eval_short_skipped == 1);
    char *rep = NULL;
    CHECK_OK(t, nm_clean_report(s, &p, &r, true, 5, &rep, &err), err);
    json_error_t je;
    json_t *j = rep ? json_loads(rep, 0, &je) : NULL;
    CHECKF(t, j != NULL, "report is not JSON: %s", rep ? je.text : "(none)");
    json_t *st = json_array_get(json_object_get(j, "steps"), NM_CLEAN_DECONTAM - 1);
    CHECK(t, json_integer_value(json_object_get(st, "removed")) == 2);
    const char *shared =
        json_string_value(json_object_get(json_array_get(json_object_get(st, "examples"), 0), "shared"));
    CHECKF(t, shared && !strcmp(shared, "the quick brown fox jumps over the lazy dog while the farmer sleeps"),
           "shared: %s", shared ? shared : "(null)");
    json_decref(j);
    free(rep);
    nm_clean_result_deinit(&r);
    nm_docset_free(s);
    nm_docset_free(ev);
}

/* ---- MinHash and LSH against the mathematics ---- */

static void test_lsh_formula(nm_test *t) {
    /* P(s) = 1 - (1 - s^r)^b by hand */
    CHECK(t, fabs(nm_lsh_prob(0.6, 10, 5) - (1 - pow(1 - pow(0.6, 5), 10))) < 1e-12);
    CHECK(t, nm_lsh_prob(1.0, 3, 4) == 1.0 && nm_lsh_prob(0.0, 3, 4) == 0.0);
    int32_t b, r;
    /* datasketch's MinHashLSH(threshold=0.8, num_perm=128) with its default
     * equal weights picks 9 bands of 13 rows */
    nm_lsh_choose(0.8, 128, 0.5, &b, &r);
    CHECKF(t, b == 9 && r == 13, "got %d x %d", b, r);
    /* weighting false negatives more lowers the S-curve's midpoint */
    nm_lsh_choose(0.8, 128, 0.9, &b, &r);
    CHECKF(t, b * r <= 128 && pow(1.0 / b, 1.0 / r) < 0.8, "got %d x %d", b, r);
}

/* Text of pair member `side` of pair k: `common` shared words, `own` words
 * of its own: Jaccard similarity of the word sets = common / (common + 2 own). */
static char *pair_text(int k, int side, int common, int own) {
    nm_buf b;
    nm_buf_init(&b);
    for (int i = 0; i < common; i++) nm_buf_printf(&b, "p%dc%d ", k, i);
    for (int i = 0; i < own; i++) nm_buf_printf(&b, "p%ds%do%d ", k, side, i);
    nm_buf_push(&b, "", 1);
    return (char *)b.data;
}

static void test_minhash_estimates(nm_test *t) {
    nm_minhash mh;
    nm_err err = {0};
    const int P = 128;
    CHECK_OK(t, nm_minhash_init(&mh, P, 1, false, 7, &err), err);
    nm_mh_scratch s1 = {0}, s2 = {0};
    uint32_t a[128], b[128];
    double sum_err = 0, worst = 0;
    int n = 0;
    for (int k = 0; k < 60; k++) {
        int common = 10 + k * 3, own = 5 + (k * 7) % 40;
        char *x = pair_text(k, 0, common, own), *y = pair_text(k, 1, common, own);
        /* the exact Jaccard similarity of the shingle sets, computed here */
        nm_u64vec sx = {0}, sy = {0};
        nm_minhash_shingles(&mh, x, strlen(x), &s1, &sx);
        nm_minhash_shingles(&mh, y, strlen(y), &s2, &sy);
        size_t inter = 0;
        for (size_t i = 0; i < sx.n; i++)
            for (size_t j = 0; j < sy.n; j++) inter += sx.v[i] == sy.v[j];
        double J = (double)inter / (double)(sx.n + sy.n - inter);
        CHECK(t, fabs(J - (double)common / (common + 2 * own)) < 1e-12);
        nm_minhash_sig(&mh, x, strlen(x), &s1, a);
        nm_minhash_sig(&mh, y, strlen(y), &s2, b);
        int eq = 0;
        for (int i = 0; i < P; i++) eq += a[i] == b[i];
        double e = (double)eq / P - J, sd = sqrt(J * (1 - J) / P);
        sum_err += e;
        if (fabs(e) / (sd + 1e-9) > worst) worst = fabs(e) / (sd + 1e-9);
        n++;
        nm_u64vec_free(&sx);
        nm_u64vec_free(&sy);
        free(x);
        free(y);
    }
    /* unbiased: the mean error over 60 pairs is within a few standard errors
     * of zero (each error has sd <= 0.044); no estimate is off by > 4.5 sd */
    CHECKF(t, fabs(sum_err / n) < 0.02, "mean error %.4f", sum_err / n);
    CHECKF(t, worst < 4.5, "worst error %.2f standard deviations", worst);
    nm_mh_scratch_deinit(&s1);
    nm_mh_scratch_deinit(&s2);
    nm_minhash_deinit(&mh);
}

static void test_lsh_candidate_rate(nm_test *t) {
    /* 500 pairs of similarity 0.6 (60 shared words, 20 own each), one word
     * per shingle; 10 bands of 5 rows; verification at 0.05 lets every true
     * candidate through, so the fraction of pairs found is the LSH candidate
     * rate, which must match 1 - (1 - 0.6^5)^10 = 0.555 */
    const int pairs = 500;
    nm_docset *s = nm_docset_new();
    nm_err err = {0};
    for (int k = 0; k < pairs; k++)
        for (int side = 0; side < 2; side++) {
            char *x = pair_text(k, side, 60, 20);
            nm_docset_add_text(s, x, strlen(x), &err);
            free(x);
        }
    nm_clean_params p;
    nm_clean_params_default(&p);
    p.exact = false;
    p.shingle = 1;
    p.num_perm = 50;
    p.bands = 10;
    p.rows = 5;
    p.threshold = 0.05;
    p.seed = 12345;
    nm_clean_result r;
    if (!CHECK_OK(t, nm_clean_run(s, &p, &r, NULL, &err), err)) return;
    int found = 0, wrong = 0;
    for (int k = 0; k < pairs; k++) {
        found += r.step[2 * k + 1] == NM_CLEAN_NEAR;
        wrong += r.step[2 * k] != NM_CLEAN_KEPT || (r.step[2 * k + 1] == NM_CLEAN_NEAR && r.ref[2 * k + 1] != 2 * k);
    }
    double want = nm_lsh_prob(0.6, 10, 5), got = (double)found / pairs, sd = sqrt(want * (1 - want) / pairs);
    CHECKF(t, fabs(got - want) < 4 * sd, "candidate rate %.3f, formula %.3f (sd %.3f)", got, want, sd);
    CHECKF(t, wrong == 0, "%d pairs resolved wrongly", wrong);
    nm_clean_result_deinit(&r);

    /* with the verification at 0.8 the same pairs (estimates around 0.6) are
     * all kept */
    p.threshold = 0.8;
    if (!CHECK_OK(t, nm_clean_run(s, &p, &r, NULL, &err), err)) return;
    CHECKF(t, r.count[NM_CLEAN_NEAR] <= 2, "%zu removed", r.count[NM_CLEAN_NEAR]);
    nm_clean_result_deinit(&r);
    nm_docset_free(s);
}

static void test_near_clusters(nm_test *t) {
    /* near duplicates by edit: a story and variants with one or two words
     * changed, interleaved with unrelated stories; the first of each family
     * is kept whatever the thread count */
    const char *base = "once upon a time there was a little girl named lily who loved to play in the garden with "
                       "her small brown dog every sunny morning before breakfast and after lunch too";
    const char *texts[] = {
        base,
        "A story about a boat that sailed far away over the blue sea to find a treasure island full of gold and "
        "shiny shells that nobody had ever seen before in the whole wide world",
        "Once upon a time, there was a little girl named Lily who loved to play in the garden with her small brown "
        "dog every sunny morning before breakfast and after lunch, too!",
        "once upon a time there was a little girl named lucy who loved to play in the garden with her small brown "
        "dog every sunny morning before breakfast and after lunch too",
        "the robot counted numbers all night because it wanted to know how many stars were in the sky above the "
        "city and the quiet hills where the farmers slept",
    };
    nm_docset *s = docs_of(texts, 5);
    nm_clean_params p;
    nm_clean_params_default(&p);
    p.exact = false; /* text 2 is an exact duplicate of 0 after normalisation: let near find it */
    p.threshold = 0.7;
    nm_err err = {0};
    for (int th = 1; th <= 2; th++) {
        p.threads = th;
        nm_clean_result r;
        if (!CHECK_OK(t, nm_clean_run(s, &p, &r, NULL, &err), err)) return;
        const uint8_t want[5] = {NM_CLEAN_KEPT, NM_CLEAN_KEPT, NM_CLEAN_NEAR, NM_CLEAN_NEAR, NM_CLEAN_KEPT};
        for (int i = 0; i < 5; i++)
            CHECKF(t, r.step[i] == want[i], "threads %d doc %d: %s", th, i, nm_clean_step_name(r.step[i]));
        CHECK(t, r.ref[2] == 0 && r.ref[3] == 0 && r.value[2] > 0.99f);
        nm_clean_result_deinit(&r);
    }
    nm_docset_free(s);
}

static void test_hostile(nm_test *t) {
    nm_docset *s = nm_docset_new();
    nm_err err = {0};
    const char *bad = write_tmp("bad.jsonl", "{\"text\": \"ok\"}\n\n{\"text\": broken}\n");
    CHECK(t, nm_docset_add_file(s, bad, NM_DOC_AUTO, NULL, &err) == NM_ERR_FORMAT);
    CHECKF(t, strstr(err.msg, "bad.jsonl:3:") != NULL, "message: %s", err.msg);
    const char *nof = write_tmp("nofield.jsonl", "{\"text\": \"ok\"}\n{\"other\": 1}\n");
    CHECK(t, nm_docset_add_file(s, nof, NM_DOC_JSON, "text", &err) == NM_ERR_FORMAT);
    CHECKF(t, strstr(err.msg, "nofield.jsonl:2:") && strstr(err.msg, "\"text\""), "message: %s", err.msg);
    char missing[512];
    snprintf(missing, sizeof missing, "%s/none.txt", nm_test_tmpdir());
    CHECK(t, nm_docset_add_file(s, missing, NM_DOC_AUTO, NULL, &err) == NM_ERR_IO);
    const char *arr = write_tmp("arr.json", "[{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, "
                                           "{\"role\": \"assistant\", \"content\": \"Hello!\"}]}, {\"text\": \"x\"}]");
    size_t before = nm_docset_size(s);
    CHECK_OK(t, nm_docset_add_file(s, arr, NM_DOC_AUTO, NULL, &err), err);
    CHECK(t, nm_docset_size(s) == before + 2);
    const nm_doc *d = nm_docset_doc(s, before);
    CHECKF(t, d && d->len == 9 && !memcmp(d->text, "Hi\nHello!", 9), "text '%.*s'", d ? (int)d->len : 0,
           d ? d->text : "");
    /* paragraphs */
    const char *par = write_tmp("par.txt", "first para\nline two\n\n\n  \nsecond\r\n\r\nthird");
    before = nm_docset_size(s);
    CHECK_OK(t, nm_docset_add_file(s, par, NM_DOC_PARAGRAPHS, NULL, &err), err);
    CHECK(t, nm_docset_size(s) == before + 3);
    d = nm_docset_doc(s, before);
    CHECK(t, d->len == 19 && !memcmp(d->text, "first para\nline two", 19) && d->line == 1);
    d = nm_docset_doc(s, before + 1);
    CHECK(t, d->len == 6 && d->line == 6);
    d = nm_docset_doc(s, before + 2);
    CHECK(t, d->len == 5 && d->line == 8);
    nm_clean_params p;
    nm_clean_params_default(&p);
    p.lang = "fr";
    nm_clean_result r;
    CHECK(t, nm_clean_run(s, &p, &r, NULL, &err) == NM_ERR_UNSUPPORTED);
    nm_clean_params_default(&p);
    p.threshold = 1.5;
    CHECK(t, nm_clean_run(s, &p, &r, NULL, &err) == NM_ERR_ARG);
    nm_docset_free(s);
}

int main(void) {
    nm_test_run("normalize", test_normalize);
    nm_test_run("stopwords", test_stopwords);
    nm_test_run("exact_across_files", test_exact_across_files);
    nm_test_run("filters", test_filters);
    nm_test_run("decontam", test_decontam);
    nm_test_run("lsh_formula", test_lsh_formula);
    nm_test_run("minhash_estimates", test_minhash_estimates);
    nm_test_run("lsh_candidate_rate", test_lsh_candidate_rate);
    nm_test_run("near_clusters", test_near_clusters);
    nm_test_run("hostile", test_hostile);
    return nm_test_finish();
}
