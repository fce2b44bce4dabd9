/*
 * server.c - the HTTP side of `nomoat serve`, on libmicrohttpd.
 *
 * libmicrohttpd calls on_access() several times per request: once with the
 * headers (routing, authentication, the size limit are decided there), once
 * per piece of body, and once more when the body is complete.  Generation
 * requests then become a job for the scheduler and the connection is
 * suspended: it costs no thread while it waits.  The scheduler resumes it
 * when the answer is complete (non-streaming) or when stream bytes are
 * ready; a streaming response is a callback (sse_read) that suspends the
 * connection again whenever it has caught up with the generation.
 */
#include "serve/internal.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef enum srv_route {
    R_PAGE,
    R_HEALTH,
    R_METRICS,
    R_MODELS,
    R_CHAT,
    R_COMPLETION,
    R_OTHER,
    R_COUNT
} srv_route;

static const char *const ROUTE_NAMES[R_COUNT] = {"page", "health", "metrics", "models", "chat", "completions",
                                                 "other"};

/* One HTTP request (libmicrohttpd's per-request pointer). */
typedef struct srv_conn {
    nm_server *s;
    struct MHD_Connection *conn;
    srv_route route;
    char *model_arg;      /* the id of GET /v1/models/{id} */
    nm_buf body;
    bool too_big;         /* over --max-body: the rest is read and dropped */
    uint64_t dropped;
    bool responded;       /* a response is queued */
    unsigned status;
    srv_job *job;
    double t0;
    char method[8];
    char path[64];
} srv_conn;

/* ------------------------------------------------------------------------ */
/* responses                                                                */
/* ------------------------------------------------------------------------ */

static void add_common_headers(nm_server *s, struct MHD_Response *r) {
    if (s->cors_origin) {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", s->cors_origin);
        MHD_add_response_header(r, "Access-Control-Allow-Headers", "Authorization, Content-Type");
        MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        MHD_add_response_header(r, "Access-Control-Max-Age", "600");
        if (strcmp(s->cors_origin, "*") != 0) MHD_add_response_header(r, "Vary", "Origin");
    }
}

static void count_response(nm_server *s, unsigned status) {
    pthread_mutex_lock(&s->mu);
    if (status < 300) s->m.responses_2xx++;
    else if (status < 500) s->m.responses_4xx++;
    else s->m.responses_5xx++;
    pthread_mutex_unlock(&s->mu);
}

/* Queues body (taken over: free()d by libmicrohttpd) with status. */
static enum MHD_Result respond(srv_conn *rc, unsigned status, const char *ctype, char *body, size_t len) {
    nm_server *s = rc->s;
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    if (ctype) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    add_common_headers(s, r);
    if (status == 401) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (status == 503) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    enum MHD_Result ret = MHD_queue_response(rc->conn, status, r);
    MHD_destroy_response(r);
    rc->responded = true;
    rc->status = status;
    count_response(s, status);
    return ret;
}

static enum MHD_Result respond_json(srv_conn *rc, unsigned status, char *json) {
    if (!json) return MHD_NO;
    return respond(rc, status, "application/json", json, strlen(json));
}

static enum MHD_Result respond_error(srv_conn *rc, const srv_error *e) {
    return respond_json(rc, (unsigned)e->http, srv_error_json(e));
}

static enum MHD_Result fail(srv_conn *rc, int http, const char *type, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static enum MHD_Result fail(srv_conn *rc, int http, const char *type, const char *code, const char *fmt, ...) {
    srv_error e;
    srv_error_set(&e, http, type, code, NULL, "%s", "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof e.msg, fmt, ap);
    va_end(ap);
    return respond_error(rc, &e);
}

/* ------------------------------------------------------------------------ */
/* GET endpoints                                                            */
/* ------------------------------------------------------------------------ */

static enum MHD_Result serve_page(srv_conn *rc) {
    size_t n = nm_serve_page_len();
    char *copy = malloc(n ? n : 1);
    if (!copy) return MHD_NO;
    memcpy(copy, nm_serve_page, n);
    return respond(rc, 200, "text/html; charset=utf-8", copy, n);
}

static enum MHD_Result serve_health(srv_conn *rc) {
    nm_server *s = rc->s;
    pthread_mutex_lock(&s->mu);
    int idle = s->n_slots - s->n_busy, queued = s->n_queued;
    bool stopping = s->stop;
    pthread_mutex_unlock(&s->mu);
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string(stopping ? "stopping" : "ok"));
    json_object_set_new(o, "model", json_string(s->model_id));
    json_object_set_new(o, "slots_idle", json_integer(idle));
    json_object_set_new(o, "slots_total", json_integer(s->n_slots));
    json_object_set_new(o, "queue", json_integer(queued));
    char *txt = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return respond_json(rc, stopping ? 503 : 200, txt);
}

static enum MHD_Result serve_metrics(srv_conn *rc) {
    nm_server *s = rc->s;
    nm_buf b;
    nm_buf_init(&b);
    double now = srv_now();
    pthread_mutex_lock(&s->mu);
    srv_metrics m = s->m;
    int busy = s->n_busy, queued = s->n_queued;
    int32_t kv_used = s->kv_used;
    double rate = srv_metrics_rate(s, now);
    pthread_mutex_unlock(&s->mu);
    int64_t kv_cap = (int64_t)s->n_slots * s->env.n_ctx;
    size_t kv_bytes = 0;
    for (int i = 0; i < s->n_slots; i++) kv_bytes += nm_context_kv_bytes(s->slots[i].ctx);

    nm_buf_printf(&b, "# HELP nomoat_requests_total HTTP requests received, by endpoint.\n"
                      "# TYPE nomoat_requests_total counter\n");
    for (int r = 0; r < R_COUNT; r++)
        nm_buf_printf(&b, "nomoat_requests_total{endpoint=\"%s\"} %llu\n", ROUTE_NAMES[r],
                      (unsigned long long)m.requests[r]);
    nm_buf_printf(&b,
                  "# HELP nomoat_responses_total HTTP responses sent, by status class.\n"
                  "# TYPE nomoat_responses_total counter\n"
                  "nomoat_responses_total{class=\"2xx\"} %llu\n"
                  "nomoat_responses_total{class=\"4xx\"} %llu\n"
                  "nomoat_responses_total{class=\"5xx\"} %llu\n",
                  (unsigned long long)m.responses_2xx, (unsigned long long)m.responses_4xx,
                  (unsigned long long)m.responses_5xx);
    nm_buf_printf(&b,
                  "# HELP nomoat_generations_total Generation requests that ended, by outcome.\n"
                  "# TYPE nomoat_generations_total counter\n"
                  "nomoat_generations_total{outcome=\"completed\"} %llu\n"
                  "nomoat_generations_total{outcome=\"cancelled\"} %llu\n"
                  "nomoat_generations_total{outcome=\"rejected\"} %llu\n"
                  "nomoat_generations_total{outcome=\"timeout\"} %llu\n"
                  "nomoat_generations_total{outcome=\"failed\"} %llu\n",
                  (unsigned long long)m.completed, (unsigned long long)m.cancelled, (unsigned long long)m.rejected,
                  (unsigned long long)m.timeouts, (unsigned long long)m.failed);
    nm_buf_printf(&b,
                  "# HELP nomoat_prompt_tokens_total Prompt tokens of completed requests.\n"
                  "# TYPE nomoat_prompt_tokens_total counter\n"
                  "nomoat_prompt_tokens_total %llu\n"
                  "# HELP nomoat_prompt_tokens_evaluated_total Of those, the ones computed (not reused from a slot's "
                  "cache).\n"
                  "# TYPE nomoat_prompt_tokens_evaluated_total counter\n"
                  "nomoat_prompt_tokens_evaluated_total %llu\n"
                  "# HELP nomoat_generated_tokens_total Tokens generated.\n"
                  "# TYPE nomoat_generated_tokens_total counter\n"
                  "nomoat_generated_tokens_total %llu\n"
                  "# HELP nomoat_tokens_per_second Tokens generated per second over the last 10 seconds.\n"
                  "# TYPE nomoat_tokens_per_second gauge\n"
                  "nomoat_tokens_per_second %.3f\n",
                  (unsigned long long)m.prompt_tokens, (unsigned long long)m.prompt_tokens_evaluated,
                  (unsigned long long)m.generated_tokens, rate);
    nm_buf_printf(&b,
                  "# HELP nomoat_time_to_first_token_seconds From a request's arrival to its first token.\n"
                  "# TYPE nomoat_time_to_first_token_seconds summary\n"
                  "nomoat_time_to_first_token_seconds_sum %.6f\n"
                  "nomoat_time_to_first_token_seconds_count %llu\n"
                  "# HELP nomoat_decode_seconds_total Time the scheduler spent in forward passes.\n"
                  "# TYPE nomoat_decode_seconds_total counter\n"
                  "nomoat_decode_seconds_total %.6f\n"
                  "# HELP nomoat_scheduler_steps_total Scheduler steps (one token or prompt chunk per active slot).\n"
                  "# TYPE nomoat_scheduler_steps_total counter\n"
                  "nomoat_scheduler_steps_total %llu\n",
                  m.ttft_sum, (unsigned long long)m.ttft_n, m.decode_seconds, (unsigned long long)m.steps);
    nm_buf_printf(&b,
                  "# HELP nomoat_queue_depth Requests waiting for a slot.\n"
                  "# TYPE nomoat_queue_depth gauge\n"
                  "nomoat_queue_depth %d\n"
                  "# HELP nomoat_queue_capacity Requests that may wait before new ones get 503.\n"
                  "# TYPE nomoat_queue_capacity gauge\n"
                  "nomoat_queue_capacity %d\n"
                  "# HELP nomoat_slots_busy Slots generating for a request.\n"
                  "# TYPE nomoat_slots_busy gauge\n"
                  "nomoat_slots_busy %d\n"
                  "# HELP nomoat_slots_total Slots (--parallel).\n"
                  "# TYPE nomoat_slots_total gauge\n"
                  "nomoat_slots_total %d\n",
                  queued, s->p.n_queue, busy, s->n_slots);
    nm_buf_printf(&b,
                  "# HELP nomoat_kv_cache_tokens Tokens held in the slots' KV caches (kept for prompt reuse).\n"
                  "# TYPE nomoat_kv_cache_tokens gauge\n"
                  "nomoat_kv_cache_tokens %d\n"
                  "# HELP nomoat_kv_cache_capacity_tokens Tokens the KV caches can hold (slots x context).\n"
                  "# TYPE nomoat_kv_cache_capacity_tokens gauge\n"
                  "nomoat_kv_cache_capacity_tokens %lld\n"
                  "# HELP nomoat_kv_cache_usage_ratio kv_cache_tokens / kv_cache_capacity_tokens.\n"
                  "# TYPE nomoat_kv_cache_usage_ratio gauge\n"
                  "nomoat_kv_cache_usage_ratio %.6f\n"
                  "# HELP nomoat_kv_cache_bytes Memory of the KV caches.\n"
                  "# TYPE nomoat_kv_cache_bytes gauge\n"
                  "nomoat_kv_cache_bytes %zu\n"
                  "# HELP nomoat_uptime_seconds Seconds since the server started.\n"
                  "# TYPE nomoat_uptime_seconds gauge\n"
                  "nomoat_uptime_seconds %.3f\n",
                  kv_used, (long long)kv_cap, kv_cap ? (double)kv_used / (double)kv_cap : 0.0, kv_bytes,
                  now - s->t_start);
    if (b.oom) {
        nm_buf_deinit(&b);
        return MHD_NO;
    }
    return respond(rc, 200, "text/plain; version=0.0.4; charset=utf-8", (char *)b.data, b.len);
}

static json_t *model_obj(nm_server *s, const char *id, const char *kind, const srv_stack *st) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "object", json_string("model"));
    json_object_set_new(o, "created", json_integer((json_int_t)time(NULL)));
    json_object_set_new(o, "owned_by", json_string("nomoat"));
    json_t *meta = json_object();
    json_object_set_new(meta, "kind", json_string(kind));
    char buf[512];
    srv_stack_str(&s->lib, st, buf, sizeof buf);
    json_object_set_new(meta, "stack", json_string(buf));
    if (strcmp(kind, "adapter") == 0)
        json_object_set_new(meta, "format", json_string(s->lib.adapters[st->item[0].adapter].format));
    if (strcmp(kind, "base") == 0) {
        json_object_set_new(meta, "arch", json_string(s->info.arch ? s->info.arch : ""));
        json_object_set_new(meta, "n_ctx", json_integer(s->env.n_ctx));
        json_object_set_new(meta, "n_vocab", json_integer(s->info.n_vocab));
        json_object_set_new(meta, "n_params", json_integer((json_int_t)s->info.n_params));
        json_object_set_new(meta, "chat_template", json_string(nm_chat_template_name(s->env.tmpl)));
    }
    json_object_set_new(o, "nomoat", meta);
    return o;
}

static enum MHD_Result serve_models(srv_conn *rc) {
    nm_server *s = rc->s;
    srv_stack base = {0};
    if (rc->model_arg) {
        srv_stack st;
        srv_error e;
        if (!srv_resolve_model(&s->lib, rc->model_arg, &st, &e)) {
            if (e.http == 400) e.http = 404, e.code = "model_not_found";
            return respond_error(rc, &e);
        }
        const char *kind = st.n == 0 ? "base" : "stack";
        json_t *o = model_obj(s, rc->model_arg, kind, &st);
        char *txt = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        return respond_json(rc, 200, txt);
    }
    json_t *data = json_array();
    json_array_append_new(data, model_obj(s, s->model_id, "base", &base));
    for (size_t i = 0; i < s->lib.n_adapters; i++) {
        srv_stack st = {.n = 1, .item = {{(int32_t)i, 1.0f}}};
        char id[128];
        snprintf(id, sizeof id, "base+%s", s->lib.adapters[i].name);
        json_array_append_new(data, model_obj(s, id, "adapter", &st));
    }
    for (size_t i = 0; i < s->lib.n_stacks; i++)
        json_array_append_new(data, model_obj(s, s->lib.stacks[i].name, "stack", &s->lib.stacks[i].stack));
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("list"));
    json_object_set_new(o, "data", data);
    char *txt = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return respond_json(rc, 200, txt);
}

/* ------------------------------------------------------------------------ */
/* generation                                                               */
/* ------------------------------------------------------------------------ */

/* Server-Sent Events: hands out what the scheduler produced; when caught
 * up, suspends the connection until the scheduler resumes it. */
static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    srv_conn *rc = cls;
    nm_server *s = rc->s;
    srv_job *j = rc->job;
    pthread_mutex_lock(&s->mu);
    size_t avail = j->sse.len - j->sse_pos;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, j->sse.data + j->sse_pos, n);
        j->sse_pos += n;
        if (j->sse_pos == j->sse.len) j->sse.len = j->sse_pos = 0;
        pthread_mutex_unlock(&s->mu);
        return (ssize_t)n;
    }
    ssize_t ret;
    if (j->sse_done) {
        ret = MHD_CONTENT_READER_END_OF_STREAM;
    } else if (j->cancel && !j->failed) {
        ret = MHD_CONTENT_READER_END_WITH_ERROR;
    } else {
        j->suspended = true;
        MHD_suspend_connection(rc->conn);
        ret = 0;
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

/* Called when the body is complete and again after every resume: answers
 * if the job has something to answer with, else suspends. */
static enum MHD_Result job_answer(srv_conn *rc) {
    nm_server *s = rc->s;
    srv_job *j = rc->job;
    pthread_mutex_lock(&s->mu);
    if (j->cancel && !j->failed) {
        /* the client left: close */
        pthread_mutex_unlock(&s->mu);
        return MHD_NO;
    }
    bool done = j->state == SRV_JOB_DONE;
    bool ready = done || (j->req.stream && j->sse.len > j->sse_pos);
    if (!ready) {
        j->suspended = true;
        MHD_suspend_connection(rc->conn);
        pthread_mutex_unlock(&s->mu);
        return MHD_YES;
    }
    if (done && j->failed && j->sse.len == j->sse_pos) {
        srv_error e = j->err;
        pthread_mutex_unlock(&s->mu);
        return respond_error(rc, &e);
    }
    if (!j->req.stream) {
        pthread_mutex_unlock(&s->mu);
        /* A finished job is no longer written by the scheduler. */
        return respond_json(rc, 200, srv_response_json(j, nm_model_vocab(s->model)));
    }
    j->sse_started = true;
    pthread_mutex_unlock(&s->mu);
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, rc, NULL);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    add_common_headers(s, r);
    enum MHD_Result ret = MHD_queue_response(rc->conn, 200, r);
    MHD_destroy_response(r);
    rc->responded = true;
    rc->status = 200;
    count_response(s, 200);
    return ret;
}

static enum MHD_Result serve_generate(srv_conn *rc, srv_kind kind) {
    nm_server *s = rc->s;
    srv_error e;
    srv_request req;
    const char *body = rc->body.len ? (const char *)rc->body.data : "";
    if (!srv_parse_request(&s->env, kind, body, rc->body.len, &req, &e)) return respond_error(rc, &e);
    srv_job *j = nm_calloc(1, sizeof *j);
    if (!j) {
        srv_request_deinit(&req);
        return MHD_NO;
    }
    j->refs = 1;
    j->req = req;
    j->created = (int64_t)time(NULL);
    j->conn = rc->conn;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(rc->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    j->fd = ci ? ci->connect_fd : -1;
    j->t_arrive = rc->t0;
    j->deadline = rc->t0 + s->p.timeout_s;
    nm_buf_init(&j->text);
    nm_buf_init(&j->sse);
    pthread_mutex_lock(&s->mu);
    uint64_t id = ++s->next_id;
    snprintf(j->id, sizeof j->id, "%s-%llx%06llx", kind == SRV_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)(s->t_start * 1000) & 0xffffffffull, (unsigned long long)id);
    bool queued = srv_sched_submit(s, j);
    bool stopping = s->stop;
    if (!queued) srv_job_unref(j);
    pthread_mutex_unlock(&s->mu);
    if (!queued) {
        pthread_mutex_lock(&s->mu);
        s->m.rejected++;
        pthread_mutex_unlock(&s->mu);
        if (stopping) return fail(rc, 503, "server_error", "shutting_down", "the server is shutting down");
        return fail(rc, 503, "server_error", "overloaded",
                    "all %d slots are busy and %d requests are waiting already; retry shortly", s->n_slots,
                    s->p.n_queue);
    }
    rc->job = j;
    return job_answer(rc);
}

/* ------------------------------------------------------------------------ */
/* routing and libmicrohttpd callbacks                                      */
/* ------------------------------------------------------------------------ */

static bool is_get(const char *m) { return strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0; }

static srv_route route_of(const char *url, const char **model_arg) {
    *model_arg = NULL;
    if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0) return R_PAGE;
    if (strcmp(url, "/health") == 0) return R_HEALTH;
    if (strcmp(url, "/metrics") == 0) return R_METRICS;
    if (strcmp(url, "/v1/models") == 0 || strcmp(url, "/models") == 0) return R_MODELS;
    if (strncmp(url, "/v1/models/", 11) == 0 && url[11]) {
        *model_arg = url + 11;
        return R_MODELS;
    }
    if (strcmp(url, "/v1/chat/completions") == 0 || strcmp(url, "/chat/completions") == 0) return R_CHAT;
    if (strcmp(url, "/v1/completions") == 0 || strcmp(url, "/completions") == 0) return R_COMPLETION;
    return R_OTHER;
}

/* Constant-time comparison: how long a wrong key takes to reject must not
 * tell how much of it was right. */
static bool key_equal(const char *a, size_t na, const char *b, size_t nb) {
    unsigned char d = na != nb;
    for (size_t i = 0; i < na; i++) d |= (unsigned char)(a[i] ^ b[i % (nb ? nb : 1)]);
    return d == 0;
}

static bool authorized(nm_server *s, struct MHD_Connection *c) {
    if (!s->api_key) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return false;
    const char *tok = h + 7;
    while (*tok == ' ') tok++;
    return key_equal(tok, strlen(tok), s->api_key, strlen(s->api_key));
}

/* A body over the limit is still read (and dropped) up to this many bytes,
 * so that the client, still sending, gets to read the 413 instead of a reset
 * connection; beyond it the connection is cut. */
static uint64_t drop_limit(const nm_server *s) {
    uint64_t lim = (uint64_t)s->p.max_body * 4;
    return lim > ((uint64_t)16 << 20) ? lim : ((uint64_t)16 << 20);
}

static enum MHD_Result too_large(srv_conn *rc) {
    return fail(rc, 413, "invalid_request_error", "request_too_large",
                "the request body is larger than this server's limit of %zu bytes", rc->s->p.max_body);
}

/* The first call, with the headers. */
static enum MHD_Result on_headers(srv_conn *rc, const char *url, const char *method) {
    nm_server *s = rc->s;
    const char *model_arg;
    rc->route = route_of(url, &model_arg);
    snprintf(rc->method, sizeof rc->method, "%s", method);
    snprintf(rc->path, sizeof rc->path, "%s", url);
    pthread_mutex_lock(&s->mu);
    s->m.requests[rc->route]++;
    pthread_mutex_unlock(&s->mu);
    if (strcmp(method, "OPTIONS") == 0) {
        /* CORS preflight: the headers say what is allowed (nothing extra
         * when CORS is off, and browsers then refuse cross-origin calls). */
        char *empty = malloc(1);
        if (!empty) return MHD_NO;
        return respond(rc, 204, NULL, empty, 0);
    }
    if (rc->route == R_OTHER) return fail(rc, 404, "invalid_request_error", "not_found", "no such endpoint: %s %.200s", method, url);
    bool post = rc->route == R_CHAT || rc->route == R_COMPLETION;
    if (post ? strcmp(method, "POST") != 0 : !is_get(method))
        return fail(rc, 405, "invalid_request_error", "method_not_allowed", "%s takes %s, not %s", url,
                    post ? "POST" : "GET", method);
    if (model_arg) {
        rc->model_arg = nm_strdup(model_arg);
        if (!rc->model_arg) return MHD_NO;
    }
    bool open_route = rc->route == R_PAGE || rc->route == R_HEALTH;
    if (!open_route && !authorized(s, rc->conn))
        return fail(rc, 401, "invalid_request_error", "invalid_api_key",
                    "missing or wrong API key: send the header 'Authorization: Bearer <key>'");
    const char *cl = MHD_lookup_connection_value(rc->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno || *end || n > drop_limit(s))
            return too_large(rc);
        if (n > s->p.max_body) rc->too_big = true;
    }
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    nm_server *s = cls;
    srv_conn *rc = *con_cls;
    if (!rc) {
        rc = nm_calloc(1, sizeof *rc);
        if (!rc) return MHD_NO;
        rc->s = s;
        rc->conn = c;
        rc->t0 = srv_now();
        nm_buf_init(&rc->body);
        *con_cls = rc;
        pthread_mutex_lock(&s->mu);
        s->n_open++;
        pthread_mutex_unlock(&s->mu);
        return on_headers(rc, url, method);
    }
    if (rc->responded) {
        *upload_size = 0; /* a body after an early error is dropped */
        return MHD_YES;
    }
    if (rc->job) return job_answer(rc);
    if (*upload_size) {
        if (rc->too_big || rc->body.len + *upload_size > s->p.max_body) {
            rc->too_big = true;
            rc->dropped += *upload_size;
            *upload_size = 0;
            if (rc->dropped > drop_limit(s)) return too_large(rc);
            return MHD_YES;
        }
        nm_buf_push(&rc->body, upload, *upload_size);
        *upload_size = 0;
        if (rc->body.oom) return MHD_NO;
        return MHD_YES;
    }
    if (rc->too_big) return too_large(rc);
    switch (rc->route) {
    case R_PAGE: return serve_page(rc);
    case R_HEALTH: return serve_health(rc);
    case R_METRICS: return serve_metrics(rc);
    case R_MODELS: return serve_models(rc);
    case R_CHAT: return serve_generate(rc, SRV_CHAT);
    case R_COMPLETION: return serve_generate(rc, SRV_COMPLETION);
    default: return MHD_NO;
    }
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)c;
    nm_server *s = cls;
    srv_conn *rc = *con_cls;
    if (!rc) return;
    pthread_mutex_lock(&s->mu);
    s->n_open--;
    pthread_mutex_unlock(&s->mu);
    if (rc->job) {
        pthread_mutex_lock(&s->mu);
        srv_job *j = rc->job;
        j->gone = true;
        if (j->state != SRV_JOB_DONE) {
            j->cancel = true; /* the scheduler frees its slot at its next step */
            pthread_cond_signal(&s->cv);
        }
        srv_job_unref(j);
        pthread_mutex_unlock(&s->mu);
    }
    nm_logf(&s->log, NM_LOG_DEBUG, "%s %s %u %.1f ms%s", rc->method, rc->path, rc->status,
            (srv_now() - rc->t0) * 1e3, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection ended early)");
    nm_buf_deinit(&rc->body);
    free(rc->model_arg);
    free(rc);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    nm_server *s = cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
    nm_logf(&s->log, NM_LOG_DEBUG, "http: %s", msg);
}

/* ------------------------------------------------------------------------ */
/* set-up and shutdown                                                      */
/* ------------------------------------------------------------------------ */

nm_serve_params nm_serve_params_default(void) {
    nm_serve_params p;
    memset(&p, 0, sizeof p);
    p.host = "127.0.0.1";
    p.port = 8080;
    p.n_threads_http = 2;
    p.n_parallel = 4;
    p.n_queue = 64;
    p.max_body = 1 << 20;
    p.timeout_s = 600;
    return p;
}

static char *dup_or_null(const char *s) { return s ? nm_strdup(s) : NULL; }

/* Checks that path is a LoRA adapter in one of the two formats the adapter
 * issue reads: a PEFT directory or a llama.cpp GGUF LoRA file. */
static nm_status check_adapter(const char *path, const char **format, nm_err *err) {
    struct stat sb;
    if (stat(path, &sb) != 0) return nm_err_set(err, NM_ERR_IO, "%s: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) {
        *format = "peft";
        char file[4096];
        snprintf(file, sizeof file, "%s/adapter_config.json", path);
        json_error_t je;
        json_t *cfg = json_load_file(file, JSON_REJECT_DUPLICATES, &je);
        if (!cfg) return nm_err_set(err, NM_ERR_FORMAT, "%s: not a PEFT adapter: %s", file, je.text);
        const json_t *type = json_object_get(cfg, "peft_type");
        const json_t *r = json_object_get(cfg, "r");
        bool ok = json_is_object(cfg) && (!type || (json_is_string(type) && strcmp(json_string_value(type), "LORA") == 0)) &&
                  json_is_integer(r) && json_integer_value(r) > 0;
        json_decref(cfg);
        if (!ok)
            return nm_err_set(err, NM_ERR_FORMAT, "%s: not a LoRA adapter config (needs peft_type LORA and r > 0)", file);
        snprintf(file, sizeof file, "%s/adapter_model.safetensors", path);
        nm_st *st;
        nm_status rc = nm_st_open(file, &st, err);
        if (rc != NM_OK) return rc;
        int64_t n = nm_st_n_tensors(st);
        nm_st_free(st);
        if (n == 0) return nm_err_set(err, NM_ERR_FORMAT, "%s: no tensors", file);
        return NM_OK;
    }
    *format = "gguf";
    nm_gguf *g;
    nm_status rc = nm_gguf_open(path, &g, err);
    if (rc != NM_OK) return rc;
    nm_str type = {0}, atype = {0};
    nm_err e2 = {0};
    bool ok = nm_gguf_get_str(g, "general.type", &type, &e2) == NM_OK && type.len == 7 &&
              memcmp(type.ptr, "adapter", 7) == 0 && nm_gguf_get_str(g, "adapter.type", &atype, &e2) == NM_OK &&
              atype.len == 4 && memcmp(atype.ptr, "lora", 4) == 0;
    nm_gguf_free(g);
    if (!ok)
        return nm_err_set(err, NM_ERR_FORMAT,
                          "%s: not a LoRA adapter (a GGUF adapter has general.type 'adapter' and adapter.type 'lora'; "
                          "a PEFT adapter is a directory)",
                          path);
    return NM_OK;
}

static nm_status load_library(nm_server *s, const nm_serve_params *p, nm_err *err) {
    srv_lib *lib = &s->lib;
    lib->model_id = s->model_id;
    lib->adapters = nm_calloc(p->n_loras ? p->n_loras : 1, sizeof *lib->adapters);
    lib->loras = nm_calloc(p->n_loras ? p->n_loras : 1, sizeof *lib->loras);
    lib->stacks = nm_calloc(p->n_stacks ? p->n_stacks : 1, sizeof *lib->stacks);
    if (!lib->adapters || !lib->loras || !lib->stacks) return nm_err_set(err, NM_ERR_NOMEM, "serve: out of memory");
    for (size_t i = 0; i < p->n_loras; i++) {
        const nm_serve_lora *l = &p->loras[i];
        if (!srv_valid_name(lib, l->name))
            return nm_err_set(err, NM_ERR_ARG,
                              "adapter name '%s': use 1-64 letters, digits, '_', '-' or '.' (not 'base' or the model's "
                              "id)",
                              l->name);
        for (size_t k = 0; k < lib->n_adapters; k++)
            if (strcmp(lib->adapters[k].name, l->name) == 0)
                return nm_err_set(err, NM_ERR_ARG, "adapter name '%s' is given twice", l->name);
        const char *format = NULL;
        nm_status st = check_adapter(l->path, &format, err);
        /* loaded once, shared read-only by every slot's context */
        if (st == NM_OK) st = nm_lora_load(s->model, l->path, false, &s->log, &lib->loras[lib->n_adapters], err);
        if (st != NM_OK) return st;
        srv_adapter *a = &lib->adapters[lib->n_adapters++];
        a->format = format;
        a->name = nm_strdup(l->name);
        a->path = nm_strdup(l->path);
        if (!a->name || !a->path) return nm_err_set(err, NM_ERR_NOMEM, "serve: out of memory");
    }
    for (size_t i = 0; i < p->n_stacks; i++) {
        const nm_serve_stack *ns = &p->stacks[i];
        if (!srv_valid_name(lib, ns->name))
            return nm_err_set(err, NM_ERR_ARG, "stack name '%s': use 1-64 letters, digits, '_', '-' or '.'", ns->name);
        for (size_t k = 0; k < lib->n_adapters; k++)
            if (strcmp(lib->adapters[k].name, ns->name) == 0)
                return nm_err_set(err, NM_ERR_ARG, "stack name '%s' is also an adapter's name", ns->name);
        for (size_t k = 0; k < lib->n_stacks; k++)
            if (strcmp(lib->stacks[k].name, ns->name) == 0)
                return nm_err_set(err, NM_ERR_ARG, "stack name '%s' is given twice", ns->name);
        srv_error e;
        srv_named_stack *dst = &lib->stacks[lib->n_stacks];
        if (!srv_parse_stack_spec(lib, ns->spec, &dst->stack, &e))
            return nm_err_set(err, NM_ERR_ARG, "--stack %s=%s: %s", ns->name, ns->spec, e.msg);
        dst->name = nm_strdup(ns->name);
        if (!dst->name) return nm_err_set(err, NM_ERR_NOMEM, "serve: out of memory");
        lib->n_stacks++;
    }
    return NM_OK;
}

static nm_status check_params(const nm_serve_params *p, nm_err *err) {
    if (!p->model_path) return nm_err_set(err, NM_ERR_ARG, "serve: no model");
    if (p->port < 0 || p->port > 65535) return nm_err_set(err, NM_ERR_ARG, "serve: port %d out of range", p->port);
    if (p->n_parallel < 1 || p->n_parallel > 256)
        return nm_err_set(err, NM_ERR_ARG, "serve: --parallel %d is not in [1, 256]", p->n_parallel);
    if (p->n_queue < 0 || p->n_queue > 100000)
        return nm_err_set(err, NM_ERR_ARG, "serve: --queue %d is not in [0, 100000]", p->n_queue);
    if (p->n_threads_http < 1 || p->n_threads_http > 64)
        return nm_err_set(err, NM_ERR_ARG, "serve: --threads-http %d is not in [1, 64]", p->n_threads_http);
    if (p->n_threads < 0 || p->n_threads > 1024)
        return nm_err_set(err, NM_ERR_ARG, "serve: --threads %d is not in [0, 1024]", p->n_threads);
    if (p->timeout_s < 1 || p->timeout_s > 86400)
        return nm_err_set(err, NM_ERR_ARG, "serve: --timeout %d is not in [1, 86400] seconds", p->timeout_s);
    if (p->max_body < 1024 || p->max_body > ((size_t)1 << 30))
        return nm_err_set(err, NM_ERR_ARG, "serve: --max-body %zu is not in [1 KiB, 1 GiB]", p->max_body);
    if (p->n_ctx < 0) return nm_err_set(err, NM_ERR_ARG, "serve: --ctx-size %d is negative", (int)p->n_ctx);
    if (p->api_key && !*p->api_key) return nm_err_set(err, NM_ERR_ARG, "serve: empty --api-key");
    return NM_OK;
}

static nm_status start_http(nm_server *s, nm_err *err) {
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char port[16];
    snprintf(port, sizeof port, "%d", s->p.port);
    int gai = getaddrinfo(s->host, port, &hints, &ai);
    if (gai != 0 || !ai) return nm_err_set(err, NM_ERR_ARG, "serve: cannot resolve host '%s': %s", s->host, gai_strerror(gai));
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    struct sockaddr_storage addr;
    memset(&addr, 0, sizeof addr);
    memcpy(&addr, ai->ai_addr, ai->ai_addrlen < sizeof addr ? ai->ai_addrlen : sizeof addr);
    freeaddrinfo(ai);
    /* The logger first, so that libmicrohttpd never prints by itself. */
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)mhd_log, s},
        {MHD_OPTION_SOCK_ADDR, 0, &addr},
        {MHD_OPTION_CONNECTION_TIMEOUT, s->p.timeout_s, NULL},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, s},
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT, 128 * 1024, NULL},
        {s->p.n_threads_http > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, s->p.n_threads_http, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    errno = 0;
    s->daemon = MHD_start_daemon(flags, (uint16_t)s->p.port, NULL, NULL, on_access, s, MHD_OPTION_ARRAY, opts,
                                 MHD_OPTION_END);
    if (!s->daemon)
        return nm_err_set(err, NM_ERR_IO, "serve: cannot listen on %s:%d: %s", s->host, s->p.port,
                          errno ? strerror(errno) : "libmicrohttpd could not start");
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : s->p.port;
    return NM_OK;
}

static const char *base_name(const char *path) {
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

nm_status nm_server_new(const nm_serve_params *p, nm_server **out, nm_err *err) {
    *out = NULL;
    nm_status st = check_params(p, err);
    if (st != NM_OK) return st;
    nm_server *s = nm_calloc(1, sizeof *s);
    if (!s) return nm_err_set(err, NM_ERR_NOMEM, "serve: out of memory");
    s->p = *p;
    s->log = p->log;
    s->t_start = srv_now();
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->host = nm_strdup(p->host ? p->host : "127.0.0.1");
    s->api_key = dup_or_null(p->api_key);
    s->cors_origin = dup_or_null(p->cors_origin);
    if (p->alias) {
        s->model_id = nm_strdup(p->alias);
    } else {
        const char *b = base_name(p->model_path);
        size_t n = strlen(b);
        if (n > 5 && strcmp(b + n - 5, ".gguf") == 0) n -= 5;
        s->model_id = nm_strndup(b, n);
    }
    /* The caller's strings need not outlive this call. */
    s->p.host = s->host;
    s->p.api_key = s->api_key;
    s->p.cors_origin = s->cors_origin;
    s->p.alias = s->model_id;
    s->p.model_path = NULL;
    s->p.chat_template = NULL;
    s->p.loras = NULL; /* load_library reads them from p */
    s->p.stacks = NULL;
    s->p.n_loras = s->p.n_stacks = 0;
    if (!s->host || !s->model_id || (p->api_key && !s->api_key) || (p->cors_origin && !s->cors_origin)) {
        st = nm_err_set(err, NM_ERR_NOMEM, "serve: out of memory");
        goto fail;
    }
    if (strlen(s->model_id) == 0 || strchr(s->model_id, '+')) {
        st = nm_err_set(err, NM_ERR_ARG, "serve: model id '%s' must be non-empty without '+' (see --alias)",
                        s->model_id);
        goto fail;
    }

    st = nm_model_load(p->model_path, &s->log, &s->model, err);
    if (st != NM_OK) goto fail;
    nm_model_get_info(s->model, &s->info);
    if (!nm_model_vocab(s->model)) {
        st = nm_err_set(err, NM_ERR_FORMAT, "%s: the model has no tokenizer (tokenizer.ggml.* keys)", p->model_path);
        goto fail;
    }
    nm_chat_template tmpl;
    if (p->chat_template) {
        tmpl = nm_chat_template_from_name(p->chat_template);
        if (tmpl == NM_CHAT_TEMPLATE_UNKNOWN) {
            st = nm_err_set(err, NM_ERR_ARG, "serve: unknown chat template '%s'", p->chat_template);
            goto fail;
        }
    } else {
        tmpl = nm_chat_template_of_gguf(nm_model_gguf(s->model));
        if (tmpl == NM_CHAT_TEMPLATE_UNKNOWN) {
            nm_logf(&s->log, NM_LOG_WARN,
                    "%s: chat template not recognised; using %s (choose one with --chat-template)", p->model_path,
                    nm_chat_template_name(NM_CHAT_TEMPLATE_DEFAULT));
            tmpl = NM_CHAT_TEMPLATE_DEFAULT;
        }
    }
    st = load_library(s, p, err);
    if (st != NM_OK) goto fail;
    s->env.vocab = nm_model_vocab(s->model);
    s->env.tmpl = tmpl;
    s->env.n_vocab = s->info.n_vocab;
    s->env.lib = &s->lib;
    st = srv_sched_init(s, err);
    if (st != NM_OK) goto fail;
    st = srv_sched_start(s, err);
    if (st != NM_OK) goto fail;
    st = start_http(s, err);
    if (st != NM_OK) goto fail;
    nm_logf(&s->log, NM_LOG_INFO,
            "nomoat serve: %s (%s, %d slots x %d tokens, %zu adapters) listening on http://%s%s%s:%d/", s->model_id,
            s->info.arch ? s->info.arch : "?", s->n_slots, s->env.n_ctx, s->lib.n_adapters,
            strchr(s->host, ':') ? "[" : "", s->host, strchr(s->host, ':') ? "]" : "", s->port);
    *out = s;
    return NM_OK;
fail:
    nm_server_free(s);
    return st;
}

int nm_server_port(const nm_server *s) { return s->port; }

void nm_server_free(nm_server *s) {
    if (!s) return;
    /* No new connections; the scheduler then ends every job (503 for the
     * waiting, an error event for streams) and resumes every waiting
     * connection, so none is suspended when libmicrohttpd stops (which it
     * requires).  The requests in flight get a moment to receive those
     * answers before the connections close. */
    MHD_socket listen_fd = s->daemon ? MHD_quiesce_daemon(s->daemon) : MHD_INVALID_SOCKET;
    srv_sched_stop(s);
    for (int i = 0; s->daemon && i < 200; i++) {
        pthread_mutex_lock(&s->mu);
        int open = s->n_open;
        pthread_mutex_unlock(&s->mu);
        if (open == 0) break;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (s->daemon) MHD_stop_daemon(s->daemon);
    if (listen_fd != MHD_INVALID_SOCKET) close(listen_fd);
    srv_sched_deinit(s);
    for (size_t i = 0; i < s->lib.n_adapters; i++) {
        free(s->lib.adapters[i].name);
        free(s->lib.adapters[i].path);
        nm_lora_free(s->lib.loras[i]); /* the slots' contexts are gone */
    }
    free(s->lib.loras);
    for (size_t i = 0; i < s->lib.n_stacks; i++) free(s->lib.stacks[i].name);
    free(s->lib.adapters);
    free(s->lib.stacks);
    nm_model_free(s->model);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->host);
    free(s->api_key);
    free(s->cors_origin);
    free(s->model_id);
    free(s);
}
