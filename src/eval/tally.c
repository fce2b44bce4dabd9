/* tally.c - win rates from the choices exported by the side-by-side page,
 * with the Wilson score interval (which, unlike p +- z sqrt(p(1-p)/n),
 * stays inside [0, 1] and is honest for small n and rates near 0 or 1). */
#include "eval/eval.h"
#include "base/base.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void nm_wilson_interval(int64_t k, int64_t n, double z, double *lo, double *hi) {
    if (n <= 0) {
        *lo = 0;
        *hi = 1;
        return;
    }
    const double p = (double)k / (double)n, nn = (double)n, z2 = z * z;
    const double denom = 1 + z2 / nn;
    const double center = (p + z2 / (2 * nn)) / denom;
    const double half = z / denom * sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn));
    *lo = center - half < 0 ? 0 : center - half;
    *hi = center + half > 1 ? 1 : center + half;
}

/* The two-sided normal quantile of a confidence level: Phi(z) = (1 + c) / 2,
 * by bisection on erfc (exact to double precision in 80 steps). */
static double z_of(double confidence) {
    double target = (1 - confidence) / 2, lo = 0, hi = 40;
    for (int i = 0; i < 80; i++) {
        double mid = (lo + hi) / 2;
        if (0.5 * erfc(mid / sqrt(2.0)) > target)
            lo = mid;
        else
            hi = mid;
    }
    return (lo + hi) / 2;
}

nm_status nm_eval_tally(const char *const *paths, size_t n_paths, double confidence, nm_tally *out, nm_err *err) {
    memset(out, 0, sizeof *out);
    if (!(confidence > 0 && confidence < 1))
        return nm_err_set(err, NM_ERR_ARG, "confidence must be between 0 and 1, got %g", confidence);
    if (n_paths == 0) return nm_err_set(err, NM_ERR_ARG, "no choices file");
    for (size_t f = 0; f < n_paths; f++) {
        json_error_t je;
        json_t *root = json_load_file(paths[f], JSON_REJECT_DUPLICATES, &je);
        if (!root) {
            if (je.line <= 0) return nm_err_set(err, NM_ERR_IO, "%s: %s", paths[f], je.text);
            return nm_err_set(err, NM_ERR_FORMAT, "%s:%d: invalid JSON: %s", paths[f], je.line, je.text);
        }
        json_t *ch = json_object_get(root, "choices");
        if (!json_is_object(root) || !json_is_array(ch)) {
            json_decref(root);
            return nm_err_set(err, NM_ERR_FORMAT, "%s: not a choices file (no \"choices\" array)", paths[f]);
        }
        if (f == 0) {
            json_t *a = json_object_get(root, "a"), *b = json_object_get(root, "b");
            snprintf(out->name_a, sizeof out->name_a, "%s", json_is_string(a) ? json_string_value(a) : "A");
            snprintf(out->name_b, sizeof out->name_b, "%s", json_is_string(b) ? json_string_value(b) : "B");
        }
        size_t i;
        json_t *c;
        json_array_foreach(ch, i, c) {
            json_t *jc = json_object_get(c, "choice"), *jl = json_object_get(c, "left"), *jw = json_object_get(c, "winner");
            const char *winner = NULL; /* "a", "b" or "tie" */
            if (json_is_string(jw)) {
                winner = json_string_value(jw);
            } else if (json_is_null(jc) || (!jc && !jw)) {
                out->unanswered++;
                continue;
            } else if (json_is_string(jc)) {
                const char *choice = json_string_value(jc), *left = json_is_string(jl) ? json_string_value(jl) : NULL;
                if (!strcmp(choice, "tie")) {
                    winner = "tie";
                } else if (left && (!strcmp(left, "a") || !strcmp(left, "b")) &&
                           (!strcmp(choice, "left") || !strcmp(choice, "right"))) {
                    bool left_wins = !strcmp(choice, "left");
                    winner = (left_wins == !strcmp(left, "a")) ? "a" : "b";
                }
            }
            if (!winner || (strcmp(winner, "a") && strcmp(winner, "b") && strcmp(winner, "tie"))) {
                json_decref(root);
                return nm_err_set(err, NM_ERR_FORMAT,
                                  "%s: choices[%zu]: expected \"choice\": \"left\"|\"right\"|\"tie\"|null with \"left\": "
                                  "\"a\"|\"b\" (or \"winner\": \"a\"|\"b\"|\"tie\")",
                                  paths[f], i);
            }
            if (!strcmp(winner, "a"))
                out->a_wins++;
            else if (!strcmp(winner, "b"))
                out->b_wins++;
            else
                out->ties++;
        }
        json_decref(root);
    }
    const int64_t dec = out->a_wins + out->b_wins;
    out->b_rate = dec ? (double)out->b_wins / (double)dec : NAN;
    nm_wilson_interval(out->b_wins, dec, z_of(confidence), &out->lo, &out->hi);
    const int64_t all = dec + out->ties;
    out->b_rate_ties = all ? ((double)out->b_wins + 0.5 * (double)out->ties) / (double)all : NAN;
    return NM_OK;
}
