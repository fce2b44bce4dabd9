/* quantize.c - `nomoat quantize IN.gguf OUT.gguf TYPE [--pure] [--threads N]`. */
#include "cli.h"
#include "tensor/quantize_model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static void help(void) {
    printf("usage: nomoat quantize IN.gguf OUT.gguf TYPE [--pure] [--threads N] [--quiet]\n\n"
           "Writes a copy of a model with its weight matrices quantized, in a file llama.cpp loads.\n"
           "TYPE is a single type or one of llama.cpp's mixes:\n"
           "  q8_0, q4_0, q4_k, q5_k, q6_k  every weight matrix in TYPE, except output.weight (or\n"
           "                                token_embd.weight when tied), which gets q6_k unless TYPE\n"
           "                                is q8_0, as llama.cpp does\n"
           "  q4_k_m, q5_k_m                q4_k / q5_k, with q6_k for output.weight and for attn_v\n"
           "                                and ffn_down in llama.cpp's chosen layers (the first and\n"
           "                                last eighth, and every third between)\n"
           "Matrices whose rows do not fit the type's blocks fall back as in llama.cpp (q4_k->q5_0,\n"
           "q5_k->q5_1, q6_k->q8_0, else f16); norms and other 1-D tensors are copied.  One line per\n"
           "tensor reports the RMS quantization error, absolute and relative to the weights' RMS.\n\n"
           "  --pure           every weight matrix in TYPE's base type, output.weight included\n"
           "  -t, --threads N  quantization threads (default: all CPUs)\n"
           "  -q, --quiet      no per-tensor report\n");
}

typedef struct report {
    bool quiet;
    int64_t n_quant;
    double err2, w2, n; /* element-weighted totals over quantized tensors */
} report;

static void on_tensor(void *user, const nm_quant_tensor_info *t) {
    report *r = user;
    if (!t->copied) {
        const double n = (double)t->rows * (double)t->cols;
        r->err2 += t->rms_err * t->rms_err * n;
        r->w2 += t->rms_w * t->rms_w * n;
        r->n += n;
        r->n_quant++;
    }
    if (r->quiet) return;
    if (t->copied)
        printf("%-32s %6lld x %-6lld %-5s (copied)\n", t->name, (long long)t->cols, (long long)t->rows,
               nm_type_name(t->from));
    else
        printf("%-32s %6lld x %-6lld %-5s -> %-5s rms error %.4g (%.3f%% of rms %.4g)\n", t->name, (long long)t->cols,
               (long long)t->rows, nm_type_name(t->from), nm_type_name(t->to), t->rms_err,
               t->rms_w > 0 ? 100.0 * t->rms_err / t->rms_w : 0.0, t->rms_w);
    fflush(stdout);
}

int cmd_quantize(int argc, char **argv) {
    const char *pos[3] = {NULL, NULL, NULL};
    int n_pos = 0;
    int64_t threads = 0;
    bool pure = false;
    report r = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            help();
            return 0;
        } else if (!strcmp(a, "--pure")) {
            pure = true;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            r.quiet = true;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            const char *v = cli_value(argc, argv, &i);
            if (!v) return 2;
            if (!cli_parse_i64(v, 1, 1024, &threads)) return cli_usage("quantize", "--threads needs a count, got '%s'", v);
        } else if (a[0] == '-' && a[1]) {
            return cli_usage("quantize", "unknown option '%s'", a);
        } else if (n_pos < 3) {
            pos[n_pos++] = a;
        } else {
            return cli_usage("quantize", "unexpected argument '%s'", a);
        }
    }
    if (n_pos < 3) return cli_usage("quantize", "needs IN.gguf OUT.gguf TYPE");
    if (nm_quant_recipe_type(pos[2]) < 0)
        return cli_usage("quantize", "unknown TYPE '%s' (q8_0, q4_0, q4_k, q5_k, q6_k, q4_k_m, q5_k_m)", pos[2]);
    if (!strcmp(pos[0], pos[1])) return cli_usage("quantize", "the output must be another file than the input");
    nm_quantize_params p = {.recipe = pos[2], .pure = pure, .n_threads = (int)threads, .on_tensor = on_tensor, .user = &r};
    nm_log log = cli_logger(false);
    nm_err err = {0};
    if (nm_quantize_model(pos[0], pos[1], &p, &log, &err)) return cli_fail(&err);
    if (!r.quiet)
        printf("%s: %lld matrices quantized (%s%s), overall rms error %.3f%% of the weights' rms\n", pos[1],
               (long long)r.n_quant, pos[2], pure ? ", pure" : "", r.w2 > 0 ? 100.0 * sqrt(r.err2 / r.w2) : 0.0);
    return 0;
}
