/* convert.c - `nomoat convert IN -o OUT [--type TYPE] [--tokenizer TOK.bin]`. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static void help(void) {
    printf("usage: nomoat convert IN.gguf -o OUT.gguf [--type TYPE]\n"
           "       nomoat convert MODEL.bin --tokenizer TOKENIZER.bin -o OUT.gguf\n\n"
           "Rewrites a GGUF file (byte-identical when nothing changes), optionally converting\n"
           "the 2-D weight matrices to TYPE (f32, f16, bf16, q8_0, q4_0); norms stay f32.\n"
           "A llama2.c checkpoint (version 0 header) is imported with its llama2.c tokenizer.\n\n"
           "  -o, --out FILE      output file (written atomically)\n"
           "  --type TYPE         type of the weight matrices in the output\n"
           "  --tokenizer FILE    llama2.c tokenizer (tokenizer.bin) for checkpoint import\n"
           "  -v, --verbose       more messages\n");
}

static bool is_gguf(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    char m[4] = {0};
    size_t n = fread(m, 1, 4, f);
    fclose(f);
    return n == 4 && memcmp(m, "GGUF", 4) == 0;
}

int cmd_convert(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *tok = NULL, *type_name = NULL;
    bool verbose = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            help();
            return 0;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            if (!(out = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--type")) {
            if (!(type_name = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--tokenizer")) {
            if (!(tok = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = true;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage("convert", "unknown option '%s'", a);
        } else if (!in) {
            in = a;
        } else {
            return cli_usage("convert", "one input at a time (got '%s' and '%s')", in, a);
        }
    }
    if (!in) return cli_usage("convert", "missing input file");
    if (!out) return cli_usage("convert", "missing -o OUT.gguf");
    int type = -1;
    if (type_name) {
        type = nm_type_from_name(type_name);
        if (type < 0 || !nm_type_can_quantize((nm_type)type))
            return cli_usage("convert", "unknown or unsupported --type '%s' (f32, f16, bf16, q8_0, q4_0)", type_name);
    }
    nm_log log = cli_logger(verbose);
    nm_err err = {0};
    nm_status st;
    if (is_gguf(in)) {
        if (tok) return cli_usage("convert", "--tokenizer is for llama2.c checkpoints; %s is already GGUF", in);
        st = nm_gguf_convert(in, out, type, &log, &err);
    } else {
        if (!tok) return cli_usage("convert", "%s is not GGUF; a llama2.c checkpoint needs --tokenizer FILE", in);
        if (type >= 0) return cli_usage("convert", "--type applies to GGUF input; convert the imported file again");
        st = nm_llama2c_to_gguf(in, tok, out, &log, &err);
    }
    if (st) return cli_fail(&err);
    return 0;
}
