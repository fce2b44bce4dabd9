/*
 * cli.h - what the subcommands of the nomoat tool share.  Each tools/X.c is
 * one subcommand: it parses its arguments and calls into the library; the
 * work itself lives under src/.  To add a command: write tools/NAME.c with
 * `int cmd_NAME(int argc, char **argv)`, declare it below and add one row to
 * the table in tools/main.c.
 */
#ifndef NM_CLI_H
#define NM_CLI_H

#include "nomoat.h"

#include <stdio.h>

/* argv[0] is the command name; return the process exit status:
 * 0 success, 1 failure, 2 usage error. */
int cmd_info(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_new(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_curate(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_adapter(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_distill(int argc, char **argv);

/* A logger that writes "nomoat: warning: ..." lines to stderr. */
nm_log cli_logger(bool verbose);
/* Prints "nomoat: error: <msg>" and returns 1. */
int cli_fail(const nm_err *err);
/* Prints "nomoat CMD: <msg>" and a hint to --help; returns 2. */
int cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool cli_is_help(const char *arg);
/* For options with a value: returns argv[++*i] or NULL (after printing a
 * usage error) when the value is missing. */
const char *cli_value(int argc, char **argv, int *i);
/* Strict number parsing: the whole string must be a number in range. */
bool cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);
bool cli_parse_u64(const char *s, uint64_t *out);
bool cli_parse_f64(const char *s, double *out);

/* Sampling options shared by the generating commands (tools/sampling_opts.c):
 * --temp --top-k --top-p --min-p --repeat-penalty --repeat-last-n
 * --frequency-penalty --presence-penalty --seed --logit-bias ID=BIAS --stop.
 * If argv[*i] is one of them, consumes it and its value (advancing *i),
 * sets *rc to 0, or to 2 after printing a usage error, and returns true;
 * otherwise returns false and touches nothing.  --repeat-last-n -1 is left
 * as -1 for the caller to replace with the context size.  The logit-bias
 * and stop arrays it builds in *p are released by cli_sampling_free. */
bool cli_sampling_opt(int argc, char **argv, int *i, nm_sampler_params *p, int *rc);
void cli_sampling_free(nm_sampler_params *p);
/* The help lines of those options (for a command's --help). */
void cli_sampling_help(FILE *f);

/* Adapter stacks of `curate` and `eval` (tools/eval.c): FLAG FILE and
 * FLAG-scaled FILE SCALE (as llama.cpp's --lora / --lora-scaled), repeated
 * from the bottom of the stack up.  cli_lora_opt works like
 * cli_sampling_opt; cli_loras_load loads them for model m. */
#define CLI_MAX_LORAS 16
typedef struct cli_loras {
    const char *path[CLI_MAX_LORAS];
    nm_lora *lora[CLI_MAX_LORAS];
    nm_lora_entry entry[CLI_MAX_LORAS];
    size_t n;
    bool force;   /* --force (tools/lora_opts.c): load adapters made on another base */
} cli_loras;
bool cli_lora_opt(int argc, char **argv, int *i, const char *flag, cli_loras *s, int *rc);
nm_status cli_loras_load(cli_loras *s, const nm_model *m, const nm_log *log, nm_err *err);
void cli_loras_free(cli_loras *s);
/* run, chat, perplexity, merge (tools/lora_opts.c): --lora, --lora-scaled
 * and --force; cli_loras_attach loads the stack for m (honouring --force),
 * warns about stacks that differ from the ones adapters were trained on,
 * and attaches it to c (c may be NULL). */
bool cli_lora_stack_opt(int argc, char **argv, int *i, cli_loras *s, int *rc);
nm_status cli_loras_attach(cli_loras *s, const nm_model *m, nm_context *c, const nm_log *log, nm_err *err);
void cli_lora_help(FILE *f);

#endif
