/* merge.c - `nomoat merge -m BASE --lora A --lora-scaled B 0.5 -o OUT.gguf`:
 * fold a stack of LoRA adapters into the model's weights and write a
 * complete GGUF (see docs/ADAPTERS.md). */
#include "cli.h"

#include <string.h>

static void help(void) {
    printf("usage: nomoat merge -m BASE.gguf --lora A [--lora B | --lora-scaled B S ...] -o OUT.gguf [options]\n\n"
           "Writes BASE with the adapters folded into its weights, W + sum of scale * B A (computed in\n"
           "double), as a complete GGUF: every metadata key (tokenizer, chat template...) and tensor of\n"
           "BASE, with the merge recorded in nomoat.merge.base_fingerprint and nomoat.merge.adapters.\n"
           "Adapters trained on BASE load onto OUT as they did onto BASE.\n\n"
           "  -m, --model FILE        the base model\n"
           "  -o, --out FILE          the merged model\n"
           "  --type T                convert every weight matrix to T (f32, f16, bf16, q8_0, q4_0, q4_1,\n"
           "                          q5_0, q5_1); default: each keeps its stored type (an adapted matrix\n"
           "                          of a type nomoat cannot encode becomes f32)\n"
           "  -v, --verbose           more logging\n\n");
    cli_lora_help(stdout);
}

int cmd_merge(int argc, char **argv) {
    const char *model = NULL, *out = NULL;
    int type = -1;
    bool verbose = false;
    cli_loras loras = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int rc;
        if (cli_is_help(a)) {
            help();
            return 0;
        } else if (cli_lora_stack_opt(argc, argv, &i, &loras, &rc)) {
            if (rc) return rc;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(model = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            if (!(out = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--type")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            type = nm_type_from_name(v);
            if (type < 0 || !nm_type_can_quantize((nm_type)type))
                return cli_usage("merge", "--type names a type nomoat can write (f32, f16, bf16, q8_0, q4_0...), got '%s'", v);
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = true;
        } else {
            return cli_usage("merge", "unknown argument '%s'", a);
        }
    }
    if (!model) return cli_usage("merge", "missing -m BASE.gguf");
    if (!out) return cli_usage("merge", "missing -o OUT.gguf");
    if (!loras.n) return cli_usage("merge", "nothing to merge: give --lora FILE (or --lora-scaled FILE SCALE)");
    nm_err err = {0};
    nm_log log = cli_logger(verbose);
    nm_model *m = NULL;
    int rc = 0;
    if (nm_model_load(model, &log, &m, &err) || cli_loras_attach(&loras, m, NULL, &log, &err) ||
        nm_model_merge_loras(m, loras.entry, loras.n, type, out, &log, &err))
        rc = cli_fail(&err);
    cli_loras_free(&loras);
    nm_model_free(m);
    return rc;
}
