/* serve.c - `nomoat serve`: the OpenAI-compatible HTTP server (src/serve). */
#include "cli.h"
#include "serve/serve.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

static void help(void) {
    printf("usage: nomoat serve -m MODEL.gguf [options]\n\n"
           "Serves the model over HTTP with the OpenAI API (POST /v1/chat/completions,\n"
           "POST /v1/completions, GET /v1/models), plus GET /health, GET /metrics\n"
           "(Prometheus) and a chat page at /.  Each request picks its adapter stack with\n"
           "\"model\": \"base+NAME1+NAME2:0.5\" or \"adapters\": [{\"name\": ..., \"scale\": ...}].\n"
           "Stops cleanly on SIGINT / SIGTERM.  See docs/SERVE.md.\n\n"
           "  -m, --model FILE       the base model (GGUF with a tokenizer)\n"
           "  --alias NAME           the model's id in the API (default: file name without .gguf)\n"
           "  --lora NAME=FILE       load a LoRA adapter under NAME (repeatable)\n"
           "  --stack NAME=SPEC      name an adapter stack, e.g. --stack tutor=tone:0.5+facts (repeatable)\n"
           "  --host ADDR            address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)\n"
           "  --port N               port (default 8080; 0 picks a free one, printed at start)\n"
           "  --api-key KEY          require 'Authorization: Bearer KEY' (except / and /health);\n"
           "                         default: $NOMOAT_API_KEY if set\n"
           "  -np, --parallel N      slots generating at the same time (default 4)\n"
           "  --queue N              requests that may wait for a slot; beyond, 503 (default 64)\n"
           "  -c, --ctx-size N       context tokens per slot (default: the model's, at most 2048)\n"
           "  -t, --threads N        compute threads per forward pass (default: every CPU)\n"
           "  --threads-http N       HTTP worker threads (default 2)\n"
           "  --timeout SECONDS      longest a request may take, waiting included (default 600)\n"
           "  --max-body BYTES       largest request body; beyond, 413 (default 1048576)\n"
           "  --cors [ORIGIN]        send CORS headers allowing ORIGIN (default '*')\n"
           "  --chat-template NAME   override the model's chat template (chatml, llama2, llama3, ...)\n"
           "  --no-prompt-cache      do not reuse a slot's KV cache for a shared prompt prefix\n"
           "  -v, --verbose          log every request\n");
}

/* Splits "NAME=VALUE" in place. */
static bool split_eq(char *s, const char **name, const char **value) {
    char *eq = strchr(s, '=');
    if (!eq || eq == s || !eq[1]) return false;
    *eq = 0;
    *name = s;
    *value = eq + 1;
    return true;
}

int cmd_serve(int argc, char **argv) {
    nm_serve_params p = nm_serve_params_default();
    bool verbose = false;
    nm_serve_lora *loras = calloc((size_t)argc, sizeof *loras);
    nm_serve_stack *stacks = calloc((size_t)argc, sizeof *stacks);
    int rc = 2;
    if (!loras || !stacks) {
        fprintf(stderr, "nomoat: error: out of memory\n");
        rc = 1;
        goto out;
    }
    p.loras = loras;
    p.stacks = stacks;
    p.api_key = getenv("NOMOAT_API_KEY");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v;
        int64_t n;
        if (cli_is_help(a)) {
            help();
            rc = 0;
            goto out;
        } else if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            p.model_path = v;
        } else if (strcmp(a, "--alias") == 0) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            p.alias = v;
        } else if (strcmp(a, "--lora") == 0 || strcmp(a, "--stack") == 0) {
            if (i + 1 >= argc) {
                rc = cli_usage("serve", "option %s needs NAME=%s", a, a[2] == 'l' ? "FILE" : "SPEC");
                goto out;
            }
            const char *name, *value;
            if (!split_eq(argv[++i], &name, &value)) {
                rc = cli_usage("serve", "%s takes NAME=%s (got '%s')", a, a[2] == 'l' ? "FILE" : "SPEC", argv[i]);
                goto out;
            }
            if (a[2] == 'l') loras[p.n_loras++] = (nm_serve_lora){name, value};
            else stacks[p.n_stacks++] = (nm_serve_stack){name, value};
        } else if (strcmp(a, "--host") == 0) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            p.host = v;
        } else if (strcmp(a, "--port") == 0) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            if (!cli_parse_i64(v, 0, 65535, &n)) {
                rc = cli_usage("serve", "--port takes 0..65535 (got '%s')", v);
                goto out;
            }
            p.port = (int)n;
        } else if (strcmp(a, "--api-key") == 0) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            p.api_key = v;
        } else if (strcmp(a, "-np") == 0 || strcmp(a, "--parallel") == 0 || strcmp(a, "--queue") == 0 ||
                   strcmp(a, "-c") == 0 || strcmp(a, "--ctx-size") == 0 || strcmp(a, "-t") == 0 ||
                   strcmp(a, "--threads") == 0 || strcmp(a, "--threads-http") == 0 || strcmp(a, "--timeout") == 0 ||
                   strcmp(a, "--max-body") == 0) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            if (!cli_parse_i64(v, 0, INT32_MAX, &n)) {
                rc = cli_usage("serve", "%s takes a non-negative integer (got '%s')", a, v);
                goto out;
            }
            if (strcmp(a, "-np") == 0 || strcmp(a, "--parallel") == 0) p.n_parallel = (int)n;
            else if (strcmp(a, "--queue") == 0) p.n_queue = (int)n;
            else if (strcmp(a, "-c") == 0 || strcmp(a, "--ctx-size") == 0) p.n_ctx = (int32_t)n;
            else if (strcmp(a, "-t") == 0 || strcmp(a, "--threads") == 0) p.n_threads = (int)n;
            else if (strcmp(a, "--threads-http") == 0) p.n_threads_http = (int)n;
            else if (strcmp(a, "--timeout") == 0) p.timeout_s = (int)n;
            else p.max_body = (size_t)n;
        } else if (strcmp(a, "--cors") == 0) {
            p.cors_origin = "*";
            if (i + 1 < argc && argv[i + 1][0] != '-') p.cors_origin = argv[++i];
        } else if (strcmp(a, "--chat-template") == 0) {
            if (!(v = cli_value(argc, argv, &i))) goto out;
            p.chat_template = v;
        } else if (strcmp(a, "--no-prompt-cache") == 0) {
            p.no_prompt_cache = true;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
            verbose = true;
        } else {
            rc = cli_usage("serve", "unknown option '%s'", a);
            goto out;
        }
    }
    if (!p.model_path) {
        rc = cli_usage("serve", "missing -m MODEL.gguf");
        goto out;
    }
    if (p.api_key && !*p.api_key) p.api_key = NULL;
    p.log = cli_logger(verbose);

    /* The server's threads inherit this mask, so SIGINT/SIGTERM reach only
     * the sigwait below; a client gone mid-write must not kill us either. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    nm_err err = {0};
    nm_server *s;
    if (nm_server_new(&p, &s, &err) != NM_OK) {
        rc = cli_fail(&err);
        goto out;
    }
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "nomoat serve: %s, stopping\n", sig == SIGINT ? "interrupted" : "terminated");
    nm_server_free(s);
    rc = 0;
out:
    free(loras);
    free(stacks);
    return rc;
}
