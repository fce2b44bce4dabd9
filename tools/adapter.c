/* adapter.c - `nomoat adapter info | convert | merge`: inspect LoRA
 * adapters, convert them between PEFT and llama.cpp's GGUF LoRA, fold a
 * stack into one adapter (see docs/ADAPTERS.md). */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void help(void) {
    printf("usage: nomoat adapter info PATH [-m BASE.gguf] [--json]\n"
           "       nomoat adapter convert IN OUT [--to peft|gguf] [--type f32|f16|bf16|q8_0] [-m BASE.gguf]\n"
           "       nomoat adapter merge --lora A [--lora B | --lora-scaled B S ...] -o OUT [--rank R] [options]\n\n"
           "An adapter is a PEFT directory (adapter_config.json + adapter_model.safetensors; the output\n"
           "directory of 'nomoat train' is one), its .safetensors file, or a GGUF LoRA file.\n\n"
           "info: format, rank, alpha, targets, size, fingerprint and provenance (the base model it was\n"
           "trained on, the adapters it was trained on top of).  With -m, also whether it fits BASE.\n\n"
           "convert: writes OUT as a GGUF LoRA if it ends in .gguf (llama.cpp's --lora loads it), else as\n"
           "a PEFT directory.  F32 conversions are lossless both ways.  Converting a PEFT adapter made\n"
           "outside nomoat to GGUF needs the base model (-m) for the head size: GGUF permutes the rows\n"
           "of q and k.\n\n"
           "merge: one adapter equal to the stack: exact (rank = the sum of the ranks), or the best\n"
           "rank-R approximation of each module (--rank R, truncated SVD; prints the relative error).\n\n"
           "options:\n"
           "  -m, --model FILE        the base model (checks the adapters fit it, gives the head size)\n"
           "  -o, --out PATH          merge: where to write\n"
           "  --to peft|gguf          output format (default: by the extension of OUT)\n"
           "  --type T                tensor type of the output: f32 (default), f16, bf16 (GGUF: also q8_0)\n"
           "  --rank R                merge: target rank (default 0: exact)\n"
           "  --force                 with -m: accept adapters trained on another base\n"
           "  --json                  info: one JSON object\n"
           "  -v, --verbose           more logging\n");
}

typedef struct adapter_opts {
    const char *sub, *model, *out, *pos[2];
    int n_pos;
    nm_lora_format to;
    nm_type type;
    int64_t rank;
    bool json, verbose;
    cli_loras loras;
} adapter_opts;

static int parse(int argc, char **argv, adapter_opts *o) {
    if (argc < 2 || cli_is_help(argv[1])) {
        help();
        return argc < 2 ? 2 : 0;
    }
    o->sub = argv[1];
    if (strcmp(o->sub, "info") && strcmp(o->sub, "convert") && strcmp(o->sub, "merge"))
        return cli_usage("adapter", "unknown subcommand '%s' (info, convert, merge)", o->sub);
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        int rc;
        if (cli_is_help(a)) {
            help();
            return 0;
        } else if (!strcmp(o->sub, "merge") && cli_lora_stack_opt(argc, argv, &i, &o->loras, &rc)) {
            if (rc) return rc;
        } else if (!strcmp(a, "--force")) {
            o->loras.force = true;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(o->model = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            if (!(o->out = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--to")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!strcmp(v, "peft"))
                o->to = NM_LORA_PEFT;
            else if (!strcmp(v, "gguf"))
                o->to = NM_LORA_GGUF;
            else
                return cli_usage("adapter", "--to is peft or gguf, got '%s'", v);
        } else if (!strcmp(a, "--type")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            int t = nm_type_from_name(v);
            if (t != NM_TYPE_F32 && t != NM_TYPE_F16 && t != NM_TYPE_BF16 && t != NM_TYPE_Q8_0)
                return cli_usage("adapter", "--type is f32, f16, bf16 or q8_0, got '%s'", v);
            o->type = (nm_type)t;
        } else if (!strcmp(a, "--rank")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, 0, 65536, &o->rank)) return cli_usage("adapter", "--rank needs 0 to 65536, got '%s'", v);
        } else if (!strcmp(a, "--json")) {
            o->json = true;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            o->verbose = true;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage("adapter", "unknown argument '%s'", a);
        } else if (o->n_pos < 2) {
            o->pos[o->n_pos++] = a;
        } else {
            return cli_usage("adapter", "too many paths ('%s')", a);
        }
    }
    if (!strcmp(o->sub, "info") && o->n_pos != 1) return cli_usage("adapter", "info needs one adapter PATH");
    if (!strcmp(o->sub, "convert") && o->n_pos != 2) return cli_usage("adapter", "convert needs IN and OUT");
    if (!strcmp(o->sub, "merge")) {
        if (o->n_pos) return cli_usage("adapter", "merge takes its adapters with --lora / --lora-scaled");
        if (!o->loras.n) return cli_usage("adapter", "merge needs at least one --lora");
        if (!o->out) return cli_usage("adapter", "merge needs -o OUT");
    }
    if (o->type == NM_TYPE_Q8_0 && o->to != NM_LORA_GGUF) {
        const char *dst = !strcmp(o->sub, "convert") ? o->pos[1] : o->out;
        size_t n = dst ? strlen(dst) : 0;
        if (o->to == NM_LORA_PEFT || n < 5 || strcmp(dst + n - 5, ".gguf"))
            return cli_usage("adapter", "q8_0 is only for GGUF output");
    }
    return -1;
}

/* Opens every adapter, bound to m when there is one. */
static nm_status open_all(adapter_opts *o, const nm_model *m, const nm_log *log, nm_err *err) {
    for (size_t k = 0; k < o->loras.n; k++) {
        nm_status st = m ? nm_lora_load(m, o->loras.path[k], o->loras.force, log, &o->loras.lora[k], err)
                         : nm_lora_open(o->loras.path[k], NULL, &o->loras.lora[k], err);
        if (st) return st;
        o->loras.entry[k].lora = o->loras.lora[k];
    }
    return NM_OK;
}

static int run(adapter_opts *o) {
    nm_err err = {0};
    nm_log log = cli_logger(o->verbose);
    nm_model *m = NULL;
    nm_lora *l = NULL, *merged = NULL;
    char *text = NULL;
    int rc = 1;
    if (o->model && nm_model_load(o->model, &log, &m, &err)) goto out;
    if (!strcmp(o->sub, "info")) {
        if (nm_lora_open(o->pos[0], m, &l, &err)) goto out;
        if (nm_lora_describe(l, o->json, &text, &err)) goto out;
        fputs(text, stdout);
        if (m && !o->json) {
            nm_err e2 = {0};
            if (nm_lora_load(m, o->pos[0], false, NULL, &merged, &e2))
                printf("fits %s:  no: %s\n", o->model, e2.msg);
            else
                printf("fits %s:  yes (shapes and base fingerprint)\n", o->model);
        }
    } else if (!strcmp(o->sub, "convert")) {
        if (m ? nm_lora_load(m, o->pos[0], o->loras.force, &log, &l, &err) : nm_lora_open(o->pos[0], NULL, &l, &err))
            goto out;
        if (nm_lora_save(l, o->pos[1], o->to, o->type, &err)) goto out;
        nm_lora_info in;
        nm_lora_get_info(l, &in);
        fprintf(stderr, "%s -> %s: %s adapter, rank %d, %d modules, %llu parameters (%s), fingerprint %s\n", o->pos[0],
                o->pos[1], in.format, in.rank, in.n_modules, (unsigned long long)in.n_params, nm_type_name(o->type),
                in.fingerprint);
    } else {
        if (open_all(o, m, &log, &err)) goto out;
        if (m) nm_lora_check_stack(m, o->loras.entry, o->loras.n, &log);
        double rel = 0;
        if (nm_lora_merge(o->loras.entry, o->loras.n, (int32_t)o->rank, &merged, &rel, &err)) goto out;
        if (nm_lora_save(merged, o->out, o->to, o->type, &err)) goto out;
        nm_lora_info in;
        nm_lora_get_info(merged, &in);
        fprintf(stderr, "%zu adapter%s -> %s: rank %d%s, %d modules, %llu parameters", o->loras.n,
                o->loras.n == 1 ? "" : "s", o->out, in.rank, in.rank_min != in.rank ? " (largest)" : "", in.n_modules,
                (unsigned long long)in.n_params);
        if (o->rank > 0)
            fprintf(stderr, "; relative error %.3e (Frobenius norm of the dropped part over the whole)\n", rel);
        else
            fprintf(stderr, "; exact\n");
    }
    rc = 0;
out:
    if (rc) rc = cli_fail(&err);
    free(text);
    nm_lora_free(l);
    nm_lora_free(merged);
    cli_loras_free(&o->loras);
    nm_model_free(m);
    return rc;
}

int cmd_adapter(int argc, char **argv) {
    adapter_opts o = {.type = NM_TYPE_F32};
    int rc = parse(argc, argv, &o);
    return rc < 0 ? run(&o) : rc;
}
