/* info.c - `nomoat info FILE.gguf [--json]`. */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static void help(void) {
    printf("usage: nomoat info FILE.gguf [--json]\n\n"
           "Shows a GGUF file: architecture, hyper-parameters, tokenizer summary, all metadata\n"
           "(long arrays summarised) and every tensor (name, type, shape, bytes).\n\n"
           "  --json    print the same as one JSON object\n");
}

int cmd_info(int argc, char **argv) {
    const char *path = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            help();
            return 0;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_usage("info", "unknown option '%s'", argv[i]);
        } else if (!path) {
            path = argv[i];
        } else {
            return cli_usage("info", "one file at a time (got '%s' and '%s')", path, argv[i]);
        }
    }
    if (!path) return cli_usage("info", "missing FILE.gguf");
    nm_err err = {0};
    nm_gguf *g;
    if (nm_gguf_open(path, &g, &err)) return cli_fail(&err);
    char *text;
    nm_status st = nm_gguf_describe(g, json, &text, &err);
    nm_gguf_free(g);
    if (st) return cli_fail(&err);
    fputs(text, stdout);
    free(text);
    return 0;
}
