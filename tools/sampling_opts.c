/* sampling_opts.c - the sampling options every generating command accepts,
 * parsed in one place so `run`, `chat` and `serve` spell them alike (the
 * names are llama.cpp's). */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void cli_sampling_help(FILE *f) {
    fprintf(f,
            "sampling (applied in this order; see docs/CHAT.md):\n"
            "  --logit-bias ID=BIAS    add BIAS to token ID's logit (repeatable; -inf bans the\n"
            "                          token; llama.cpp's ID+BIAS / ID-BIAS also accepted)\n"
            "  --repeat-penalty F      divide positive / multiply negative logits of tokens seen\n"
            "                          in the last --repeat-last-n tokens (default 1.0: off)\n"
            "  --frequency-penalty F   subtract F x (times seen) (default 0)\n"
            "  --presence-penalty F    subtract F once if seen (default 0)\n"
            "  --repeat-last-n N       tokens the penalties look back (default 64, 0 off,\n"
            "                          -1 the whole context)\n"
            "  --top-k N               keep the N most likely tokens (default 40, 0 off)\n"
            "  --top-p F               keep the smallest set reaching probability F\n"
            "                          (default 0.95, 1 off)\n"
            "  --min-p F               keep tokens at least F x the top probability\n"
            "                          (default 0.05, 0 off)\n"
            "  --temp F                temperature (default 0.8; 0 = greedy)\n"
            "  --seed N                random seed (default: a fresh one, printed with -v)\n"
            "  --stop STR              stop when the text contains STR (repeatable)\n");
}

void cli_sampling_free(nm_sampler_params *p) {
    /* The arrays were built by cli_sampling_opt (realloc), so they are ours
     * to release even though the params expose them as const. */
    free((void *)p->logit_bias);
    free((void *)p->stop);
    p->logit_bias = NULL;
    p->n_logit_bias = 0;
    p->stop = NULL;
    p->n_stop = 0;
}

static bool parse_float(const char *s, double lo, double hi, float *out) {
    double v;
    if (!cli_parse_f64(s, &v) || isnan(v) || v < lo || v > hi) return false;
    *out = (float)v;
    return true;
}

/* "ID=BIAS", or llama.cpp's "ID+BIAS" / "ID-BIAS".  BIAS may be -inf. */
static bool parse_bias(const char *s, nm_logit_bias *out) {
    char *end;
    errno = 0;
    long id = strtol(s, &end, 10);
    if (end == s || errno || id < 0 || id > INT32_MAX) return false;
    const char *b = end;
    if (*b == '=') b++;
    else if (*b != '+' && *b != '-') return false;
    double v;
    if (!cli_parse_f64(b, &v) || isnan(v) || (isinf(v) && v > 0)) return false;
    out->token = (int32_t)id;
    out->bias = (float)v;
    return true;
}

/* Prints the usage error and returns true: the option was ours, and bad. */
static bool bad_value(const char *cmd, const char *opt, const char *want, const char *v) {
    cli_usage(cmd, "%s needs %s, got '%s'", opt, want, v);
    return true;
}

bool cli_sampling_opt(int argc, char **argv, int *i, nm_sampler_params *p, int *rc) {
    static const char *const names[] = {"--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty",
                                        "--repeat-last-n", "--frequency-penalty", "--presence-penalty",
                                        "--seed", "--logit-bias", "--stop"};
    const char *opt = argv[*i];
    size_t k = 0, n_names = sizeof names / sizeof names[0];
    while (k < n_names && strcmp(opt, names[k]) != 0) k++;
    if (k == n_names) return false;

    *rc = 2;
    const char *cmd = argv[0];
    const char *v = cli_value(argc, argv, i);
    if (!v) return true;
    int64_t iv;
    uint64_t uv;
    switch (k) {
    case 0:
        if (!parse_float(v, -1e9, 1e9, &p->temperature)) return bad_value(cmd, "--temp", "a number", v);
        break;
    case 1:
        if (!cli_parse_i64(v, 0, INT32_MAX, &iv)) return bad_value(cmd, "--top-k", "a count >= 0", v);
        p->top_k = (int32_t)iv;
        break;
    case 2:
        if (!parse_float(v, 0, 1, &p->top_p)) return bad_value(cmd, "--top-p", "a number in [0, 1]", v);
        break;
    case 3:
        if (!parse_float(v, 0, 1, &p->min_p)) return bad_value(cmd, "--min-p", "a number in [0, 1]", v);
        break;
    case 4:
        if (!parse_float(v, 1e-6, 1e6, &p->repeat_penalty))
            return bad_value(cmd, "--repeat-penalty", "a positive number", v);
        break;
    case 5:
        if (!cli_parse_i64(v, -1, 1 << 20, &iv))
            return bad_value(cmd, "--repeat-last-n", "-1, 0 or a count", v);
        p->penalty_last_n = (int32_t)iv;
        break;
    case 6:
        if (!parse_float(v, -1e6, 1e6, &p->frequency_penalty))
            return bad_value(cmd, "--frequency-penalty", "a number", v);
        break;
    case 7:
        if (!parse_float(v, -1e6, 1e6, &p->presence_penalty))
            return bad_value(cmd, "--presence-penalty", "a number", v);
        break;
    case 8:
        if (!cli_parse_u64(v, &uv) || uv == NM_SEED_RANDOM)
            return bad_value(cmd, "--seed", "a whole number below 2^64-1", v);
        p->seed = uv;
        break;
    case 9: {
        nm_logit_bias b;
        if (!parse_bias(v, &b)) return bad_value(cmd, "--logit-bias", "ID=BIAS (e.g. 13=-inf)", v);
        nm_logit_bias *nb = realloc((void *)p->logit_bias, (p->n_logit_bias + 1) * sizeof *nb);
        if (!nb) return bad_value(cmd, opt, "memory to store it", v);
        nb[p->n_logit_bias++] = b;
        p->logit_bias = nb;
        break;
    }
    case 10: {
        if (!*v) return bad_value(cmd, "--stop", "a non-empty string", v);
        const char **ns = realloc((void *)p->stop, (p->n_stop + 1) * sizeof *ns);
        if (!ns) return bad_value(cmd, opt, "memory to store it", v);
        ns[p->n_stop++] = v; /* argv outlives the command */
        p->stop = ns;
        break;
    }
    }
    *rc = 0;
    return true;
}
