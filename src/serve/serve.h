/*
 * serve.h - `nomoat serve`: an OpenAI-compatible HTTP server (src/serve).
 *
 * One process holds one base model (weights memory-mapped once) and a
 * library of LoRA adapters; each request picks its own adapter stack.
 * Requests run in --parallel slots (one KV cache each) that a single
 * scheduler thread advances together, one token per slot per step, so a new
 * request starts as soon as a slot frees instead of waiting for the others
 * (continuous batching); requests beyond the slots wait in a bounded queue.
 *
 * This header is what tools/serve.c and the tests use; docs/SERVE.md
 * describes the HTTP API.
 */
#ifndef NM_SERVE_H
#define NM_SERVE_H

#include "nomoat.h"

/* --lora NAME=PATH */
typedef struct nm_serve_lora {
    const char *name;
    const char *path;
} nm_serve_lora;

/* --stack NAME=SPEC, SPEC as in a request's model field without "base+":
 * "tone:0.5+facts" */
typedef struct nm_serve_stack {
    const char *name;
    const char *spec;
} nm_serve_stack;

typedef struct nm_serve_params {
    const char *model_path;
    const char *alias;        /* the model's id; NULL: file name without .gguf  */
    const char *host;         /* address to bind; default "127.0.0.1"            */
    int port;                 /* 0: any free port (nm_server_port tells which)   */
    const char *api_key;      /* NULL: no authentication                         */
    int n_threads;            /* compute threads per decode; 0: every CPU        */
    int n_threads_http;       /* HTTP worker threads; default 2                  */
    int n_parallel;           /* slots (KV caches); default 4                    */
    int n_queue;              /* requests that may wait for a slot; default 64   */
    int32_t n_ctx;            /* tokens per slot; 0: training context, <= 2048   */
    size_t max_body;          /* largest request body in bytes; default 1 MiB    */
    int timeout_s;            /* longest a request may take, queue included;
                                 default 600                                     */
    const char *cors_origin;  /* NULL: no CORS headers; "*" or an origin          */
    const char *chat_template;/* NULL: the model's (tokenizer.chat_template)      */
    bool no_prompt_cache;     /* do not reuse a slot's KV cache across requests   */
    const nm_serve_lora *loras;
    size_t n_loras;
    const nm_serve_stack *stacks;
    size_t n_stacks;
    nm_log log;               /* request log lines and warnings                  */
} nm_serve_params;

nm_serve_params nm_serve_params_default(void);

typedef struct nm_server nm_server;

/* Loads the model and the adapters, creates the slots, starts the scheduler
 * and binds the listening socket.  Serves until nm_server_free. */
nm_status nm_server_new(const nm_serve_params *p, nm_server **out, nm_err *err);
/* The port actually bound (useful with port 0). */
int nm_server_port(const nm_server *s);
/* Stops accepting, ends the requests in flight (streams are cut, waiting
 * clients get 503), joins every thread and frees everything. */
void nm_server_free(nm_server *s);

#endif
