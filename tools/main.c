/* main.c - the nomoat command: dispatches to one subcommand per file. */
#include "cli.h"

#include <string.h>

typedef struct command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} command;

static const command COMMANDS[] = {
    {"info", "show a GGUF file: architecture, hyper-parameters, tokenizer, tensors", cmd_info},
    {"convert", "rewrite a GGUF (optionally changing weight types) or import a llama2.c checkpoint", cmd_convert},
    {"new", "write a LLaMA model with random weights (benchmarks, training from scratch)", cmd_new},
    {"run", "generate text from a prompt (streams to stdout; --json for ids and logits)", cmd_run},
    {"perplexity", "perplexity of a model over a text file", cmd_perplexity},
    {"tokenize", "print the token ids (or pieces) of a text with a model's tokenizer", cmd_tokenize},
    {"chat", "talk with a model in the terminal (chat template, streaming, KV cache kept)", cmd_chat},
    {"serve", "OpenAI-compatible HTTP server with per-request adapter stacks and a chat page", cmd_serve},
    {"train", "fine-tune a LoRA adapter (or every weight) on text, Alpaca, ShareGPT or chat data", cmd_train},
    {"curate", "make a small clean dataset: generate candidates, score and keep the best, de-duplicate, filter", cmd_curate},
    {"eval", "perplexity, multiple-choice accuracy, regex match rates, side-by-side reports and win rates", cmd_eval},
    {"adapter", "LoRA adapters: info, convert PEFT <-> GGUF, merge a stack into one adapter", cmd_adapter},
    {"merge", "fold a stack of LoRA adapters into a model's weights (a complete GGUF)", cmd_merge},
    {"distill", "distillation: a teacher's top-k cache, then a student (LoRA, smaller model) trained on it", cmd_distill},
    {"quantize", "quantize a model's weights: q8_0, q4_0, q4_k, q5_k, q6_k or llama.cpp's q4_k_m / q5_k_m mixes", cmd_quantize},
    {"bench", "measure speed: inference tokens/s (-m MODEL), tokenizer throughput (--tokenize)", cmd_bench},
};
#define N_COMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

static void usage(FILE *f) {
    fprintf(f,
            "nomoat %s - run, fine-tune, stack, merge, distil and serve LLaMA-family models on a CPU\n\n"
            "usage: nomoat <command> [options]    (nomoat <command> --help for its options)\n\n"
            "commands:\n",
            nm_version());
    for (size_t i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-12s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(f, "  %-12s %s\n", "help", "this list, or 'nomoat help COMMAND' for one command");
    fprintf(f, "\noptions: --version, --help\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *name = argv[1];
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0 || strcmp(name, "version") == 0) {
        printf("nomoat %s\n", nm_version());
        return 0;
    }
    if (cli_is_help(name) || strcmp(name, "help") == 0) {
        if (strcmp(name, "help") == 0 && argc >= 3) {
            for (size_t i = 0; i < N_COMMANDS; i++)
                if (strcmp(COMMANDS[i].name, argv[2]) == 0) {
                    char *hargv[] = {argv[2], "--help", NULL};
                    return COMMANDS[i].run(2, hargv);
                }
            fprintf(stderr, "nomoat: unknown command '%s'\n", argv[2]);
            return 2;
        }
        usage(stdout);
        return 0;
    }
    /* under mpirun: join the job (or, built without MPI, refuse to run N
     * copies that would each train alone); a failed rank ends the job */
    nm_err derr = {0};
    if (nm_dist_start(&derr)) {
        fprintf(stderr, "nomoat: %s\n", derr.msg);
        return 1;
    }
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(COMMANDS[i].name, name) == 0) return nm_dist_finish(COMMANDS[i].run(argc - 1, argv + 1));
    nm_dist_finish(0);
    fprintf(stderr, "nomoat: unknown command '%s' (see 'nomoat help')\n", name);
    return 2;
}
