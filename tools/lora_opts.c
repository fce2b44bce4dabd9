/* lora_opts.c - the adapter options of run, chat, perplexity and merge:
 * --lora FILE, --lora-scaled FILE SCALE (repeatable, bottom of the stack
 * first, as llama.cpp's options) and --force (load adapters trained on
 * another base).  The stack itself is a cli_loras (cli.h), shared with the
 * curate and eval commands. */
#include "cli.h"

#include <string.h>

bool cli_lora_stack_opt(int argc, char **argv, int *i, cli_loras *s, int *rc) {
    if (strcmp(argv[*i], "--force") == 0) {
        s->force = true;
        *rc = 0;
        return true;
    }
    return cli_lora_opt(argc, argv, i, "--lora", s, rc);
}

nm_status cli_loras_attach(cli_loras *s, const nm_model *m, nm_context *c, const nm_log *log, nm_err *err) {
    for (size_t k = 0; k < s->n; k++) {
        if (s->lora[k]) continue;
        nm_status st = nm_lora_load(m, s->path[k], s->force, log, &s->lora[k], err);
        if (st) return st;
        s->entry[k].lora = s->lora[k];
    }
    if (s->n == 0) return NM_OK;
    nm_lora_check_stack(m, s->entry, s->n, log);
    return c ? nm_context_set_loras(c, s->entry, s->n, err) : NM_OK;
}

void cli_lora_help(FILE *f) {
    fprintf(f, "adapters (LoRA, applied on the fly; a PEFT directory such as the output of 'nomoat train', or\n"
               "a GGUF LoRA as llama.cpp's --lora loads it):\n"
               "  --lora FILE             add an adapter to the stack (scale 1; repeatable, bottom first)\n"
               "  --lora-scaled FILE S    add an adapter with scale S\n"
               "  --force                 load adapters whose recorded base model is another one\n\n");
}
