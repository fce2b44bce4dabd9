/*
 * internal.h - what the files of src/serve share.
 *
 *   server.c  HTTP (libmicrohttpd): routing, auth, CORS, bodies, responses,
 *             SSE streaming, suspend/resume of waiting connections
 *   api.c     the OpenAI request schema: strict parsing into srv_request,
 *             adapter-stack resolution, response and chunk JSON
 *   sched.c   slots, the bounded queue and the scheduler thread that
 *             advances every active slot in one batched forward pass a step
 *   page.c    the chat page, embedded from page.html
 *
 * Threads: libmicrohttpd's worker threads run server.c; one scheduler thread
 * runs sched.c.  They meet in srv_job, guarded by the server's one mutex
 * (held only for short bookkeeping, never during a forward pass).
 */
#ifndef NM_SERVE_INTERNAL_H
#define NM_SERVE_INTERNAL_H

#include "serve/serve.h"
#include "base/base.h"

#include <jansson.h>
#include <pthread.h>

struct MHD_Daemon;
struct MHD_Connection;
struct pollfd;

#define SRV_MAX_STACK 8         /* adapters in one stack                 */
#define SRV_MAX_STOP 4          /* stop strings, as OpenAI allows         */
#define SRV_MAX_TOP_LOGPROBS 20 /* top_logprobs, as OpenAI allows         */

/* ---- errors: what becomes {"error":{"message","type","param","code"}} ---- */
typedef struct srv_error {
    int http;              /* 400, 401, 404, ...                           */
    const char *type;      /* "invalid_request_error", "server_error", ... */
    const char *code;      /* NULL or "model_not_found", ...               */
    char param[64];        /* "" or the offending field                    */
    char msg[512];
} srv_error;

void srv_error_set(srv_error *e, int http, const char *type, const char *code, const char *param,
                   const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* A 400 invalid_request_error naming param. */
void srv_bad(srv_error *e, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The error object as JSON text (malloc()ed). */
char *srv_error_json(const srv_error *e);

/* ---- adapters and stacks ---- */
/* An adapter given with --lora NAME=PATH: a PEFT directory
 * (adapter_config.json + adapter_model.safetensors) or a llama.cpp GGUF LoRA
 * file, checked and loaded at start-up (srv_lib.loras), attached to the slot
 * of each request that names it (sched.c: slot_set_stack). */
typedef struct srv_adapter {
    char *name;
    char *path;
    const char *format;    /* "peft" or "gguf" */
} srv_adapter;

typedef struct srv_stack_item {
    int32_t adapter;       /* index into srv_lib.adapters */
    float scale;
} srv_stack_item;

/* An adapter stack: the adapters of one request with their scales, applied
 * in order on top of the base weights.  n == 0 is the base model. */
typedef struct srv_stack {
    int32_t n;
    srv_stack_item item[SRV_MAX_STACK];
} srv_stack;

typedef struct srv_named_stack {
    char *name;
    srv_stack stack;
} srv_named_stack;

typedef struct srv_lib {
    const char *model_id;  /* the base model's id (alias or file name) */
    srv_adapter *adapters;
    size_t n_adapters;
    nm_lora **loras;       /* [n_adapters]: adapter i loaded for the model (server.c) */
    srv_named_stack *stacks;
    size_t n_stacks;
} srv_lib;

/* Adapter names: letters, digits, '_', '-', '.'; not "base", not the model id. */
bool srv_valid_name(const srv_lib *lib, const char *name);
/* Resolves a request's model field: "base", the model id, a named stack or
 * an adapter name, followed by "+NAME" or "+NAME:SCALE" items.  Unknown
 * names are 404 model_not_found; a bad scale or too many items, 400. */
bool srv_resolve_model(const srv_lib *lib, const char *model, srv_stack *out, srv_error *e);
/* Appends the items of "adapters": [{"name": "...", "scale": 0.5}, ...]. */
bool srv_resolve_adapters(const srv_lib *lib, const json_t *arr, srv_stack *st, srv_error *e);
/* Parses a --stack SPEC ("a:0.5+b"). */
bool srv_parse_stack_spec(const srv_lib *lib, const char *spec, srv_stack *out, srv_error *e);
bool srv_stack_equal(const srv_stack *a, const srv_stack *b);
/* "base+a:0.5+b" into buf. */
void srv_stack_str(const srv_lib *lib, const srv_stack *st, char *buf, size_t cap);

/* ---- requests ---- */
typedef enum srv_kind { SRV_CHAT, SRV_COMPLETION } srv_kind;

/* What request parsing needs to know about the model. */
typedef struct srv_env {
    const nm_vocab *vocab;
    nm_chat_template tmpl;
    int32_t n_ctx;         /* tokens per slot */
    int32_t n_vocab;
    const srv_lib *lib;
} srv_env;

/* A validated generation request. */
typedef struct srv_request {
    srv_kind kind;
    char *model;           /* as the client named it; echoed back */
    srv_stack stack;
    bool stream;
    bool include_usage;    /* stream_options.include_usage */
    int32_t *prompt;       /* token ids, BOS included when the vocab adds it */
    size_t n_prompt;
    int32_t max_tokens;    /* resolved: 1 .. n_ctx - n_prompt */
    nm_sampler_params sp;  /* stop and logit_bias point into the fields below */
    char *stop[SRV_MAX_STOP];
    size_t n_stop;
    nm_logit_bias *bias;
    size_t n_bias;
    bool logprobs;
    int32_t top_logprobs;  /* 0..SRV_MAX_TOP_LOGPROBS */
    nm_sampler *sampler;   /* made from sp, so bad values fail as 400 */
} srv_request;

/* Parses and checks a request body for kind; tokenizes the prompt and
 * checks it against the context.  On failure fills e (4xx). */
bool srv_parse_request(const srv_env *env, srv_kind kind, const char *body, size_t len, srv_request *out,
                       srv_error *e);
void srv_request_deinit(srv_request *r);

/* Replaces every invalid UTF-8 sequence of s[0..n) by U+FFFD, appending to b. */
void srv_utf8_sanitize(nm_buf *b, const char *s, size_t n);

/* ---- jobs: one generation request in flight ---- */
typedef enum srv_job_state { SRV_JOB_QUEUED, SRV_JOB_RUNNING, SRV_JOB_DONE } srv_job_state;

/* Log-probabilities of one generated token (raw model distribution). */
typedef struct srv_token_lp {
    int32_t id;
    float lp;
    int32_t n_top;
    int32_t top_id[SRV_MAX_TOP_LOGPROBS];
    float top_lp[SRV_MAX_TOP_LOGPROBS];
} srv_token_lp;

typedef struct srv_job {
    struct srv_job *next;          /* queue link                                   */
    int refs;                      /* the HTTP side and the scheduler              */
    srv_request req;
    char id[48];
    int64_t created;               /* unix seconds                                 */
    struct MHD_Connection *conn;
    int fd;                        /* the client's socket, to notice it leaving    */
    bool suspended;                /* the connection waits for this job            */
    bool gone;                     /* the HTTP side let go of the connection       */
    bool cancel;                   /* stop: client left, timeout or shutdown       */
    srv_job_state state;
    double t_arrive, t_start, t_first, t_end, deadline; /* monotonic seconds       */

    /* results, written by the scheduler */
    nm_buf text;                   /* generated text so far (valid UTF-8)          */
    size_t n_streamed;             /* bytes of text already sent as deltas         */
    int32_t n_gen;                 /* generated tokens                             */
    int32_t n_cached;              /* prompt tokens reused from the slot's cache   */
    const char *finish;            /* "stop" / "length" once done                  */
    bool failed;
    srv_error err;
    srv_token_lp *lps;             /* one per generated token (when logprobs)      */
    int32_t n_lps, cap_lps;
    int32_t n_lps_streamed;

    /* streaming: Server-Sent Events bytes the client has not read yet */
    nm_buf sse;
    size_t sse_pos;
    bool sse_done;                 /* nothing more will be appended                */
    bool sse_started;              /* the HTTP side has sent the 200 and headers   */
} srv_job;

/* Streaming pieces, appended to job->sse (chat or completion chunk shape). */
void srv_sse_role(srv_job *j);
void srv_sse_delta(srv_job *j, const nm_vocab *v, const char *text, size_t n, int32_t lp_from, int32_t lp_to,
                   const char *finish);
void srv_sse_usage(srv_job *j);
void srv_sse_error(srv_job *j, const srv_error *e);
void srv_sse_done(srv_job *j);
/* Whole non-streaming response body (malloc()ed). */
char *srv_response_json(const srv_job *j, const nm_vocab *v);

/* ---- slots and the scheduler (sched.c) ---- */
typedef struct srv_slot {
    int id;
    nm_context *ctx;
    int32_t *cache;                /* tokens whose keys/values ctx holds           */
    int32_t n_cache;
    srv_stack cache_stack;         /* the adapters those were computed with        */
    srv_job *job;                  /* NULL when free                               */
    int32_t n_fed;                 /* prompt tokens of job in the cache            */
    int32_t last;                  /* last sampled token, decoded next step        */
    nm_detok_stream detok;
    double t_last_used;
} srv_slot;

typedef struct srv_metrics {
    uint64_t requests[8];          /* by srv_route                                 */
    uint64_t responses_2xx, responses_4xx, responses_5xx;
    uint64_t prompt_tokens;        /* prompt tokens of finished requests           */
    uint64_t prompt_tokens_evaluated; /* of those, not taken from a cache          */
    uint64_t generated_tokens;
    uint64_t completed, cancelled, rejected, timeouts, failed;
    double ttft_sum;               /* seconds from arrival to first token          */
    uint64_t ttft_n;
    double decode_seconds;         /* time the scheduler spent in forward passes   */
    uint64_t steps;
    /* generated tokens per second over the last seconds (ring of buckets) */
    int64_t bucket_sec[16];
    uint64_t bucket_tok[16];
} srv_metrics;

struct nm_server {
    nm_serve_params p;             /* string fields point into the copies below    */
    char *host, *api_key, *cors_origin, *model_id;
    nm_log log;
    nm_model *model;
    nm_model_info info;
    srv_lib lib;
    srv_env env;
    struct MHD_Daemon *daemon;
    int port;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    pthread_t sched;
    bool sched_started;
    nm_pool *pool;                 /* every slot's forward passes (one per step)  */
    srv_slot *slots;
    int n_slots;
    int n_busy;
    int32_t kv_used;               /* tokens cached over all slots (for /metrics)  */
    struct MHD_Connection **wake;  /* connections to resume (scheduler thread)    */
    int n_wake, cap_wake;          /* cap_wake: the most jobs alive, 2 (slots + queue) + 1 */
    struct pollfd *poll_fds;       /* check_clients' arrays, cap_wake each         */
    struct srv_job **poll_jobs;
    srv_job *q_head, *q_tail;
    int n_queued;
    int n_open;                    /* HTTP requests in flight                      */
    uint64_t next_id;
    srv_metrics m;
    double t_start;
};

double srv_now(void);              /* monotonic seconds */

/* Creates the slots' contexts. */
nm_status srv_sched_init(nm_server *s, nm_err *err);
nm_status srv_sched_start(nm_server *s, nm_err *err);
/* Ends every job (waiting clients get 503), joins the thread. */
void srv_sched_stop(nm_server *s);
void srv_sched_deinit(nm_server *s);
/* Queues a job (takes the scheduler's reference).  Caller holds mu.  False
 * when the queue is full (the job is not queued). */
bool srv_sched_submit(nm_server *s, srv_job *j);
/* Drops one reference; frees the job at zero.  Caller holds mu. */
void srv_job_unref(srv_job *j);
/* Marks the connection waiting for j to be resumed (scheduler thread, mu
 * held).  srv_wake_flush (mu not held) resumes them: a suspended connection
 * can neither close nor run callbacks, so it stays valid until then, and
 * libmicrohttpd is never entered with mu held from this side. */
void srv_job_wake(nm_server *s, srv_job *j);
void srv_wake_flush(nm_server *s);
void srv_metrics_tokens(nm_server *s, double now, uint64_t n);
double srv_metrics_rate(const nm_server *s, double now);

/* page.c */
extern const char nm_serve_page[] __attribute__((visibility("hidden")));
size_t nm_serve_page_len(void);

#endif
