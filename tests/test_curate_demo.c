/* test_curate_demo.c - the curation loop end to end (scripts/demo-curate.sh
 * at a small scale): generate stories with stories260K, keep those with a
 * dog, clean them, fine-tune, and check that (a) perplexity on held-out dog
 * stories fell and (b) the share of freshly sampled stories with a dog rose
 * several-fold.
 *
 * The margins come from the spread measured over seeds 1-6 at this scale
 * (docs/CURATE.md, "The demonstration"): the held-out dog NLL fell by
 * 0.071 +- 0.026 (sd) nats per token and the share of dog stories rose
 * x5.6 (log ratio 1.73 +- 0.30; x3.5 at worst).  Each check asks for the
 * mean minus four standard deviations, floored at what the claim means:
 * (a) the NLL fell (mean - 4 sd is below 0: the floor 0 sits 2.8 sd below
 * the mean); (b) at least twice the base share (x1.7 is mean - 4 sd: the
 * floor x2 sits 3.4 sd below), with non-overlapping 95% Wilson intervals.
 * Takes one to two minutes. */
#include "testlib.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* measured spread (seeds 1-6, the scale below) */
#define MEAN_DROP 0.0714
#define SD_DROP 0.0256
#define MEAN_LOGR 1.728
#define SD_LOGR 0.301

static double num(json_t *root, const char *a, const char *b, const char *c) {
    return json_number_value(json_object_get(json_object_get(json_object_get(root, a), b), c));
}

static void test_demo(nm_test *t) {
    /* the build folder is where the tool is */
    char build[1024];
    snprintf(build, sizeof build, "%s", nm_test_bin());
    char *slash = strrchr(build, '/');
    if (slash) *slash = 0; else snprintf(build, sizeof build, ".");
    char cmd[4096], *out;
    snprintf(cmd, sizeof cmd,
             "DEMO_SEED=7 DEMO_CANDIDATES=16 DEMO_HELDOUT=16 DEMO_MAX_TOKENS=160 DEMO_SAMPLES=50 "
             "scripts/demo-curate.sh %s %s/demo > %s/demo.log 2>&1",
             build, nm_test_tmpdir(), nm_test_tmpdir());
    int rc = nm_test_sh(cmd, &out);
    free(out);
    char path[1024];
    snprintf(path, sizeof path, "%s/demo.log", nm_test_tmpdir());
    if (!CHECK(t, rc == 0)) {
        char *log = nm_test_read(path, NULL);
        fprintf(stderr, "%s\n", log ? log : "(no log)");
        free(log);
        return;
    }
    snprintf(path, sizeof path, "%s/demo/summary.json", nm_test_tmpdir());
    json_error_t je;
    json_t *s = json_load_file(path, 0, &je);
    if (!CHECKF(t, s != NULL, "summary.json: %s", je.text)) return;
    double base = num(s, "ppl_dog", "base", "nll"), tuned = num(s, "ppl_dog", "tuned", "nll");
    double sb = num(s, "share", "base", "share"), st = num(s, "share", "tuned", "share");
    int64_t clean = json_integer_value(json_object_get(s, "clean"));
    printf("# kept %lld clean dog stories; held-out dog NLL %.4f -> %.4f; dog share %.3f -> %.3f\n", (long long)clean,
           base, tuned, sb, st);
    CHECKF(t, clean >= 5, "only %lld stories to train on", (long long)clean);
    /* (a) perplexity on held-out dog stories fell */
    double min_drop = fmax(MEAN_DROP - 4 * SD_DROP, 0.0);
    CHECKF(t, base - tuned > min_drop, "held-out dog NLL %.4f -> %.4f: drop %.4f, want > %.4f", base, tuned,
           base - tuned, min_drop);
    /* (b) the share of dog stories rose several-fold; a base share of 0 in
     * 100 samples counts as 1 in 100 */
    double ratio = st / fmax(sb, 0.01), min_logr = fmax(MEAN_LOGR - 4 * SD_LOGR, log(2.0));
    CHECKF(t, log(ratio) > min_logr, "dog share %.3f -> %.3f: x%.2f, want more than x%.2f", sb, st, ratio,
           exp(min_logr));
    double b_hi = num(s, "share", "base", "hi"), t_lo = num(s, "share", "tuned", "lo");
    CHECKF(t, t_lo > b_hi, "95%% intervals overlap: base up to %.3f, tuned from %.3f", b_hi, t_lo);
    json_decref(s);
}

int main(void) {
    nm_test_run("demo", test_demo);
    return nm_test_finish();
}
