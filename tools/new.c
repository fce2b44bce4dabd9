/* new.c - `nomoat new`: a LLaMA model with random weights. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static void help(void) {
    printf("usage: nomoat new --preset NAME --vocab-from MODEL.gguf -o OUT.gguf [options]\n"
           "       nomoat new --dim N --layers N --heads N --ffn N --vocab-from MODEL.gguf -o OUT.gguf [options]\n\n"
           "Writes a LLaMA-architecture GGUF with random weights and the vocabulary of an existing\n"
           "model: for speed and memory measurements at realistic sizes, or as the starting point\n"
           "of training from scratch.  Norms are 1 + 0.1 N(0,1) (f32), weight matrices STD N(0,1)\n"
           "stored as TYPE.  The same options and seed always give the same file.\n\n"
           "presets (dim, layers, heads/kv heads, ffn, context):\n"
           "  tl1b   2048, 22, 32/4,  5632, 2048   TinyLlama-1.1B shapes (2.2 GB in f16)\n"
           "  m110    768, 12, 12/12, 2048, 1024   stories110M shapes\n"
           "  m15     288,  6,  6/6,   768,  256   stories15M shapes\n"
           "  t256    256,  2,  4/2,   768,  512   small; widths fit every quantization type\n\n"
           "  --preset NAME       start from a preset; the options below override its values\n"
           "  --dim N             embedding width\n"
           "  --layers N          transformer blocks\n"
           "  --heads N           attention heads (must divide dim)\n"
           "  --kv-heads N        key/value heads (must divide heads; default: heads)\n"
           "  --ffn N             feed-forward width\n"
           "  --ctx N             context length (default 2048)\n"
           "  --vocab-from FILE   GGUF whose tokenizer.* keys are copied (required)\n"
           "  --type TYPE         weight matrix type: f32, f16 (default), bf16, q8_0, q4_0\n"
           "  --seed N            random seed (default 0)\n"
           "  --std X             standard deviation of the weights (default 0.02)\n"
           "  -o, --out FILE      output file (written atomically)\n"
           "  -v, --verbose       more messages\n");
}

int cmd_new(int argc, char **argv) {
    nm_new_params p;
    memset(&p, 0, sizeof p);
    p.type = NM_TYPE_F16;
    const char *out = NULL;
    bool verbose = false;
    /* Integer options: name, destination. */
    struct {
        const char *opt;
        int64_t *dst;
    } ints[] = {{"--dim", &p.dim},   {"--layers", &p.layers}, {"--heads", &p.heads},
                {"--kv-heads", &p.kv_heads}, {"--ffn", &p.ffn}, {"--ctx", &p.ctx}};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool matched = false;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
            if (!strcmp(a, ints[k].opt)) {
                const char *v = cli_value(argc, argv, &i);
                if (!v) return 2;
                if (!cli_parse_i64(v, 1, INT32_MAX, ints[k].dst))
                    return cli_usage("new", "%s needs a positive integer (got '%s')", a, v);
                matched = true;
            }
        if (matched) continue;
        if (cli_is_help(a)) {
            help();
            return 0;
        } else if (!strcmp(a, "--preset")) {
            if (!(p.preset = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--vocab-from")) {
            if (!(p.vocab_from = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--type")) {
            const char *v = cli_value(argc, argv, &i);
            if (!v) return 2;
            int t = nm_type_from_name(v);
            if (t != NM_TYPE_F32 && t != NM_TYPE_F16 && t != NM_TYPE_BF16 && t != NM_TYPE_Q8_0 && t != NM_TYPE_Q4_0)
                return cli_usage("new", "unknown or unsupported --type '%s' (f32, f16, bf16, q8_0, q4_0)", v);
            p.type = (nm_type)t;
        } else if (!strcmp(a, "--seed")) {
            const char *v = cli_value(argc, argv, &i);
            if (!v) return 2;
            if (!cli_parse_u64(v, &p.seed)) return cli_usage("new", "--seed needs a non-negative integer (got '%s')", v);
        } else if (!strcmp(a, "--std")) {
            const char *v = cli_value(argc, argv, &i);
            double d;
            if (!v) return 2;
            if (!cli_parse_f64(v, &d) || !(d > 0 && d < 1e6))
                return cli_usage("new", "--std needs a positive number (got '%s')", v);
            p.init_std = (float)d;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            if (!(out = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = true;
        } else {
            return cli_usage("new", "unexpected argument '%s'", a);
        }
    }
    if (!out) return cli_usage("new", "missing -o OUT.gguf");
    if (!p.vocab_from) return cli_usage("new", "missing --vocab-from MODEL.gguf (the vocabulary to copy)");
    if (!p.preset && !(p.dim && p.layers && p.heads && p.ffn))
        return cli_usage("new", "give --preset NAME or all of --dim, --layers, --heads, --ffn");
    nm_log log = cli_logger(verbose);
    nm_err err = {0};
    if (nm_model_new_random(&p, out, &log, &err)) return cli_fail(&err);
    return 0;
}
