/*
 * sched.c - slots, the bounded queue and the scheduler thread.
 *
 * Each slot owns one nm_context (its KV cache) on the shared model; all the
 * contexts run on one thread pool.  The scheduler thread loops: admit
 * waiting jobs into free slots, then advance every active slot by one step
 * (a chunk of its prompt, or one generated token), then publish what the
 * step produced to the waiting connections.  A job that arrives while
 * others generate joins at the next step instead of waiting for them to
 * finish (continuous batching).
 *
 * A step is one nm_decode_batch over every active slot: the prompt chunks
 * and generated tokens of all the slots go through the model as one batch,
 * so each weight matrix is read once per step, not once per slot; attention
 * runs per slot against its own cache.  Each slot's results are exactly
 * those of decoding it alone, so a request gets the same text whatever it
 * shares the steps with.
 *
 * Locking: s->mu guards the queue, slot->job assignment and every field of
 * a job that the HTTP threads read (state, text, sse, cancel...).  The
 * forward passes and sampling run without it; only the scheduler thread
 * touches slot state and the request's sampler.
 */
#include "serve/internal.h"
#include "base/threads.h"

#include <math.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double srv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------ */
/* jobs                                                                     */
/* ------------------------------------------------------------------------ */

void srv_job_unref(srv_job *j) {
    if (--j->refs > 0) return;
    srv_request_deinit(&j->req);
    nm_buf_deinit(&j->text);
    nm_buf_deinit(&j->sse);
    free(j->lps);
    free(j);
}

void srv_job_wake(nm_server *s, srv_job *j) {
    if (!j->suspended || j->gone) return;
    j->suspended = false;
    if (s->n_wake < s->cap_wake) s->wake[s->n_wake++] = j->conn;
}

void srv_wake_flush(nm_server *s) {
    /* Only the scheduler thread fills s->wake, so reading it unlocked here
     * (on the same thread) is safe. */
    for (int i = 0; i < s->n_wake; i++) MHD_resume_connection(s->wake[i]);
    s->n_wake = 0;
}

static void check_hangups(nm_server *s);

/* Jobs in slots or queue whose client has left (mu held). */
static int count_cancelled(const nm_server *s) {
    int n = 0;
    for (int i = 0; i < s->n_slots; i++)
        if (s->slots[i].job && s->slots[i].job->cancel) n++;
    for (const srv_job *j = s->q_head; j; j = j->next)
        if (j->cancel) n++;
    return n;
}

bool srv_sched_submit(nm_server *s, srv_job *j) {
    if (s->stop) return false;
    const int cap = s->n_slots + s->p.n_queue, held = s->n_queued + s->n_busy;
    if (held >= cap) {
        /* A client that left keeps its place until the scheduler's next step
         * drops its job, and a client that gives up and asks again at once
         * would find its own old place taken.  So look for leavers now, and
         * count no place of a job already cancelled - up to twice the
         * capacity of live jobs, which the scheduler's arrays are sized
         * for. */
        check_hangups(s);
        if (held - count_cancelled(s) >= cap || held >= 2 * cap) return false;
    }
    j->next = NULL;
    if (s->q_tail) s->q_tail->next = j;
    else s->q_head = j;
    s->q_tail = j;
    s->n_queued++;
    j->refs++;
    j->state = SRV_JOB_QUEUED;
    pthread_cond_signal(&s->cv);
    return true;
}

void srv_metrics_tokens(nm_server *s, double now, uint64_t n) {
    int64_t sec = (int64_t)now;
    int b = (int)(sec % 16);
    if (s->m.bucket_sec[b] != sec) {
        s->m.bucket_sec[b] = sec;
        s->m.bucket_tok[b] = 0;
    }
    s->m.bucket_tok[b] += n;
}

/* Tokens per second over the last 10 whole seconds. */
double srv_metrics_rate(const nm_server *s, double now) {
    int64_t sec = (int64_t)now;
    uint64_t sum = 0;
    for (int k = 1; k <= 10; k++) {
        int64_t t = sec - k;
        int b = (int)(((t % 16) + 16) % 16);
        if (s->m.bucket_sec[b] == t) sum += s->m.bucket_tok[b];
    }
    return (double)sum / 10.0;
}

/* Ends j for good (mu held): final stream events or error, state DONE,
 * the waiting connection woken, metrics, the scheduler's reference dropped. */
static void job_end(nm_server *s, srv_job *j, double now) {
    j->t_end = now;
    j->state = SRV_JOB_DONE;
    if (j->req.stream && !j->gone) {
        if (j->failed) {
            /* Before any byte went out the HTTP side answers with the error's
             * status; once the stream has begun, an error event ends it. */
            if (j->sse_started || j->sse.len > 0) srv_sse_error(j, &j->err);
        } else if (!j->cancel) {
            if (j->n_streamed < j->text.len || j->n_lps_streamed < j->n_lps)
                srv_sse_delta(j, nm_model_vocab(s->model), (const char *)j->text.data + j->n_streamed,
                              j->text.len - j->n_streamed, j->n_lps_streamed, j->n_lps, NULL);
            j->n_streamed = j->text.len;
            j->n_lps_streamed = j->n_lps;
            srv_sse_delta(j, nm_model_vocab(s->model), NULL, 0, 0, 0, j->finish);
            if (j->req.include_usage) srv_sse_usage(j);
            srv_sse_done(j);
        }
    }
    j->sse_done = true;
    if (j->failed) {
        if (j->err.http == 504) s->m.timeouts++;
        else if (j->err.http == 503) s->m.rejected++;
        else s->m.failed++;
    } else if (j->cancel) {
        s->m.cancelled++;
    } else {
        s->m.completed++;
        s->m.prompt_tokens += j->req.n_prompt;
        s->m.prompt_tokens_evaluated += j->req.n_prompt - (size_t)j->n_cached;
    }
    srv_job_wake(s, j);
    srv_job_unref(j);
}

static void job_fail(srv_job *j, int http, const char *type, const char *code, const char *msg) {
    j->failed = true;
    srv_error_set(&j->err, http, type, code, NULL, "%s", msg);
}

/* ------------------------------------------------------------------------ */
/* the engine: what one step of one slot computes (no lock held)            */
/* ------------------------------------------------------------------------ */

/* What a slot's step produced, published under the lock afterwards. */
typedef struct step_out {
    bool began;               /* the job took the slot this step         */
    int32_t n_cached;
    bool token;               /* a token was sampled                     */
    srv_token_lp lp;
    char text[512];           /* its printable bytes                     */
    int32_t n_text;
    bool done;
    const char *finish;
    bool failed;
    srv_error err;
} step_out;

static int32_t common_prefix(const int32_t *a, int32_t na, const int32_t *b, int32_t nb) {
    int32_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/*
 * Puts the adapter stack st on the slot's forward pass: the stack has been
 * resolved against the loaded adapters (names checked, scales parsed); the
 * slot's context gets it (n = 0: none), and the batched step applies each
 * context's own stack to its own rows (nm_model_proj).
 */
static nm_status slot_set_stack(nm_server *s, srv_slot *slot, const srv_stack *st, nm_err *err) {
    nm_lora_entry items[SRV_MAX_STACK];
    for (int32_t i = 0; i < st->n; i++)
        items[i] = (nm_lora_entry){s->lib.loras[st->item[i].adapter], st->item[i].scale};
    return nm_context_set_loras(slot->ctx, items, (size_t)st->n, err);
}

/* Log-probabilities of the raw distribution: the chosen token and the top
 * n (n <= SRV_MAX_TOP_LOGPROBS). */
static void compute_logprobs(const float *logits, int32_t nv, int32_t chosen, int32_t n_top, srv_token_lp *out) {
    float mx = -INFINITY;
    for (int32_t i = 0; i < nv; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int32_t i = 0; i < nv; i++) sum += exp((double)logits[i] - (double)mx);
    float lse = mx + (float)log(sum);
    out->id = chosen;
    out->lp = chosen >= 0 ? logits[chosen] - lse : -INFINITY;
    out->n_top = 0;
    for (int32_t i = 0; i < nv && n_top > 0; i++) {
        float l = logits[i];
        if (isnan(l)) continue;
        if (out->n_top == n_top && l <= out->top_lp[n_top - 1]) continue;
        int32_t k = out->n_top < n_top ? out->n_top++ : n_top - 1;
        while (k > 0 && out->top_lp[k - 1] < l) {
            out->top_lp[k] = out->top_lp[k - 1];
            out->top_id[k] = out->top_id[k - 1];
            k--;
        }
        out->top_lp[k] = l;
        out->top_id[k] = i;
    }
    for (int32_t k = 0; k < out->n_top; k++) out->top_lp[k] -= lse;
}

static void step_fail(step_out *o, int http, const char *type, const char *code, const char *msg) {
    o->failed = true;
    o->done = true;
    srv_error_set(&o->err, http, type, code, NULL, "%s", msg);
}

/* The first step of a job in a slot: reuse the cached prefix, set the
 * adapters, reset the stream state. */
static bool slot_begin(nm_server *s, srv_slot *slot, srv_job *j, step_out *o) {
    const srv_request *r = &j->req;
    nm_err err = {0};
    o->began = true;
    nm_status st = slot_set_stack(s, slot, &r->stack, &err);
    if (st != NM_OK) {
        step_fail(o, st == NM_ERR_UNSUPPORTED ? 501 : 500, "server_error",
                  st == NM_ERR_UNSUPPORTED ? "not_implemented" : NULL, err.msg);
        return false;
    }
    int32_t keep = 0;
    if (!s->p.no_prompt_cache && srv_stack_equal(&slot->cache_stack, &r->stack))
        keep = common_prefix(slot->cache, slot->n_cache, r->prompt, (int32_t)r->n_prompt);
    /* At least the last prompt token runs, for its logits. */
    if (keep >= (int32_t)r->n_prompt) keep = (int32_t)r->n_prompt - 1;
    if (nm_context_truncate(slot->ctx, keep, &err) != NM_OK) {
        step_fail(o, 500, "server_error", NULL, err.msg);
        slot->n_cache = 0;
        return false;
    }
    slot->n_cache = keep;
    slot->cache_stack = r->stack;
    slot->n_fed = keep;
    o->n_cached = keep;
    for (size_t i = 0; i < r->n_prompt; i++) nm_sampler_accept(r->sampler, r->prompt[i]);
    nm_detok_stream_init(&slot->detok, nm_model_vocab(s->model), false);
    /* A completion continues its prompt, so the first word keeps its space;
     * a chat answer starts a fresh text. */
    if (r->kind == SRV_COMPLETION) slot->detok.first = false;
    return true;
}

/* Prompt tokens one slot feeds per step: a long prompt delays the other
 * slots' next token by one chunk per step, not by the whole prompt. */
enum { PROMPT_CHUNK = 128 };

/* What the slot feeds the model this step: a chunk of the prompt, or the
 * token sampled last step.  False when the job failed to begin (o says
 * why) and takes no part in the step. */
static bool slot_prepare(nm_server *s, srv_slot *slot, srv_job *j, bool first, step_out *o, const int32_t **toks,
                         int32_t *n) {
    memset(o, 0, sizeof *o);
    const srv_request *r = &j->req;
    if (first && !slot_begin(s, slot, j, o)) return false;
    if (slot->n_fed < (int32_t)r->n_prompt) {
        int32_t left = (int32_t)r->n_prompt - slot->n_fed;
        *toks = r->prompt + slot->n_fed;
        *n = left < PROMPT_CHUNK ? left : PROMPT_CHUNK;
    } else {
        *toks = &slot->last;
        *n = 1;
    }
    return true;
}

/* After the slot's n tokens went through the model (st: how that went):
 * the cache bookkeeping, then, once the whole prompt is in, one token
 * sampled from the slot's logits and turned into text. */
static void slot_finish(nm_server *s, srv_slot *slot, srv_job *j, int32_t n, nm_status st, const nm_err *err,
                        step_out *o) {
    const srv_request *r = &j->req;
    const nm_vocab *v = nm_model_vocab(s->model);
    if (slot->n_fed < (int32_t)r->n_prompt) {
        if (st != NM_OK) {
            slot->n_cache = nm_context_n_past(slot->ctx);
            step_fail(o, 500, "server_error", NULL, err->msg);
            return;
        }
        memcpy(slot->cache + slot->n_cache, r->prompt + slot->n_fed, (size_t)n * sizeof(int32_t));
        slot->n_cache += n;
        slot->n_fed += n;
        if (slot->n_fed < (int32_t)r->n_prompt) return;
    } else {
        if (st != NM_OK) {
            step_fail(o, 500, "server_error", NULL, err->msg);
            return;
        }
        slot->cache[slot->n_cache++] = slot->last;
    }

    const float *logits = nm_get_logits(slot->ctx);
    int32_t tok = nm_sampler_sample(r->sampler, logits);
    o->token = tok >= 0;
    if (r->logprobs && tok >= 0) compute_logprobs(logits, s->info.n_vocab, tok, r->top_logprobs, &o->lp);
    if (tok < 0 || nm_vocab_is_eog(v, tok)) {
        /* Every token banned, or the model ended its turn. */
        o->done = true;
        o->finish = "stop";
        o->token = false;
    } else {
        nm_sampler_accept(r->sampler, tok);
        slot->last = tok;
        int32_t nt = nm_detok_stream_push(&slot->detok, tok, o->text, sizeof o->text);
        if (nt < 0) {
            step_fail(o, 500, "server_error", NULL, "a token's text is longer than the stream buffer");
            return;
        }
        o->n_text = nt;
        if (j->n_gen + 1 >= r->max_tokens || slot->n_cache >= nm_context_n_ctx(slot->ctx)) {
            o->done = true;
            o->finish = "length";
        }
    }
    if (o->done) {
        int32_t nt = nm_detok_stream_flush(&slot->detok, o->text + o->n_text, sizeof o->text - (size_t)o->n_text);
        if (nt > 0) o->n_text += nt;
    }
}

/* ------------------------------------------------------------------------ */
/* publishing a step (mu held)                                              */
/* ------------------------------------------------------------------------ */

static void release_slot(nm_server *s, srv_slot *slot, double now) {
    slot->job = NULL;
    slot->t_last_used = now;
    s->n_busy--;
}

static void publish(nm_server *s, srv_slot *slot, const step_out *o, double now) {
    srv_job *j = slot->job;
    const nm_vocab *v = nm_model_vocab(s->model);
    if (o->began) {
        j->n_cached = o->n_cached;
        if (j->req.stream && !o->failed) srv_sse_role(j);
    }
    if (o->failed) {
        j->failed = true;
        j->err = o->err;
        release_slot(s, slot, now);
        job_end(s, j, now);
        return;
    }
    if (o->token) {
        if (j->n_gen == 0) {
            j->t_first = now;
            s->m.ttft_sum += now - j->t_arrive;
            s->m.ttft_n++;
        }
        j->n_gen++;
        s->m.generated_tokens++;
        srv_metrics_tokens(s, now, 1);
        if (j->req.logprobs) {
            if (j->n_lps == j->cap_lps) {
                int32_t cap = j->cap_lps ? j->cap_lps * 2 : 16;
                srv_token_lp *p = realloc(j->lps, (size_t)cap * sizeof *p);
                if (p) {
                    j->lps = p;
                    j->cap_lps = cap;
                }
            }
            if (j->n_lps < j->cap_lps) j->lps[j->n_lps++] = o->lp;
        }
    }
    bool done = o->done;
    const char *finish = o->finish;
    if (o->n_text > 0) {
        nm_buf_push(&j->text, o->text, (size_t)o->n_text);
        if (j->text.oom) {
            job_fail(j, 500, "server_error", NULL, "out of memory");
            release_slot(s, slot, now);
            job_end(s, j, now);
            return;
        }
    }
    size_t safe = j->text.len;
    if (j->req.n_stop > 0) {
        size_t stop_at;
        if (nm_stop_find((const char *)j->text.data, j->text.len, (const char *const *)j->req.stop, j->req.n_stop,
                         &stop_at, &safe)) {
            j->text.len = stop_at;
            done = true;
            finish = "stop";
        }
    }
    if (done) {
        j->finish = finish;
        release_slot(s, slot, now);
        job_end(s, j, now);
        return;
    }
    if (j->req.stream && safe > j->n_streamed) {
        srv_sse_delta(j, v, (const char *)j->text.data + j->n_streamed, safe - j->n_streamed, j->n_lps_streamed,
                      j->n_lps, NULL);
        j->n_streamed = safe;
        j->n_lps_streamed = j->n_lps;
    }
    if (j->sse.len > j->sse_pos) srv_job_wake(s, j);
}

/* ------------------------------------------------------------------------ */
/* the scheduler loop                                                       */
/* ------------------------------------------------------------------------ */

/* The scheduler thread's arrays for one step, one entry per slot. */
typedef struct step_arrays {
    bool *fresh;             /* the slot's job begins this step          */
    step_out *outs;
    srv_job **jobs;          /* the slot's job, snapshot under mu        */
    nm_context **ctxs;       /* the step's batch ...                     */
    const int32_t **toks;
    int32_t *ns;
    int *slot_of;            /* ... and the slot of each batch entry     */
} step_arrays;

/* One step of every active slot (no lock held): one nm_decode_batch over
 * the slots that have tokens to feed, then sampling per slot.  Should the
 * batch be refused (a slot's context full: the request checks rule that
 * out), each slot runs alone so that only the slot at fault fails. */
static void run_step(nm_server *s, step_arrays *a) {
    int n = 0;
    for (int i = 0; i < s->n_slots; i++) {
        if (!a->jobs[i]) continue;
        srv_slot *slot = &s->slots[i];
        const int32_t *toks;
        int32_t k;
        bool go = slot_prepare(s, slot, a->jobs[i], a->fresh[i], &a->outs[i], &toks, &k);
        a->fresh[i] = false;
        if (!go) continue;
        a->ctxs[n] = slot->ctx;
        a->toks[n] = toks;
        a->ns[n] = k;
        a->slot_of[n++] = i;
    }
    if (n == 0) return;
    nm_err err = {0};
    nm_status st = nm_decode_batch(a->ctxs, a->toks, a->ns, n, &err);
    for (int b = 0; b < n; b++) {
        int i = a->slot_of[b];
        nm_status sb = st;
        nm_err eb = err;
        if (st != NM_OK) {
            eb = (nm_err){0};
            sb = nm_decode(a->ctxs[b], a->toks[b], a->ns[b], &eb);
        }
        slot_finish(s, &s->slots[i], a->jobs[i], a->ns[b], sb, &eb, &a->outs[i]);
    }
}

/* Clients that left while their connection waits (mu held). */
static void check_hangups(nm_server *s) {
    /* Only suspended connections: libmicrohttpd neither reads nor closes
     * them, so their sockets stay open and ours to look at. */
    struct pollfd *fds = s->poll_fds;
    srv_job **who = s->poll_jobs;
    int n = 0;
    for (int i = 0; i < s->n_slots; i++) {
        srv_job *j = s->slots[i].job;
        if (j && j->suspended && !j->gone && !j->cancel && j->fd >= 0 && n < s->cap_wake) {
            fds[n] = (struct pollfd){.fd = j->fd, .events = POLLRDHUP};
            who[n++] = j;
        }
    }
    for (srv_job *j = s->q_head; j; j = j->next)
        if (j->suspended && !j->gone && !j->cancel && j->fd >= 0 && n < s->cap_wake) {
            fds[n] = (struct pollfd){.fd = j->fd, .events = POLLRDHUP};
            who[n++] = j;
        }
    /* POLLRDHUP is the peer's FIN: the client closed (a client pipelining its
     * next request only makes the socket readable). */
    if (n > 0 && poll(fds, (nfds_t)n, 0) > 0)
        for (int i = 0; i < n; i++)
            if (fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) who[i]->cancel = true;
}

/* Clients that left, and deadlines (mu held). */
static void check_clients(nm_server *s, double now) {
    check_hangups(s);
    for (int i = 0; i < s->n_slots; i++) {
        srv_job *j = s->slots[i].job;
        if (j && !j->cancel && now > j->deadline) {
            j->cancel = true;
            job_fail(j, 504, "server_error", "timeout", "the request took longer than the server's --timeout");
        }
    }
    for (srv_job *j = s->q_head; j; j = j->next)
        if (!j->cancel && now > j->deadline) {
            j->cancel = true;
            job_fail(j, 503, "server_error", "overloaded", "no slot became free within the server's --timeout");
        }
}

/* Drops cancelled jobs from slots and queue, then fills free slots (mu held). */
static void admit(nm_server *s, double now, bool *fresh) {
    for (int i = 0; i < s->n_slots; i++) {
        srv_slot *slot = &s->slots[i];
        if (slot->job && slot->job->cancel) {
            srv_job *j = slot->job;
            release_slot(s, slot, now);
            job_end(s, j, now);
        }
    }
    srv_job **pp = &s->q_head;
    s->q_tail = NULL;
    while (*pp) {
        srv_job *j = *pp;
        if (j->cancel) {
            *pp = j->next;
            s->n_queued--;
            job_end(s, j, now);
        } else {
            s->q_tail = j;
            pp = &j->next;
        }
    }
    while (s->q_head && s->n_busy < s->n_slots) {
        srv_job *j = s->q_head;
        /* The free slot whose cache shares the longest prefix with the
         * prompt, else the one idle longest. */
        int best = -1;
        int32_t best_len = -1;
        for (int i = 0; i < s->n_slots; i++) {
            srv_slot *slot = &s->slots[i];
            if (slot->job) continue;
            int32_t l = srv_stack_equal(&slot->cache_stack, &j->req.stack)
                            ? common_prefix(slot->cache, slot->n_cache, j->req.prompt, (int32_t)j->req.n_prompt)
                            : 0;
            if (l > best_len || (l == best_len && slot->t_last_used < s->slots[best].t_last_used)) {
                best = i;
                best_len = l;
            }
        }
        s->q_head = j->next;
        if (!s->q_head) s->q_tail = NULL;
        s->n_queued--;
        j->next = NULL;
        j->state = SRV_JOB_RUNNING;
        j->t_start = now;
        s->slots[best].job = j;
        fresh[best] = true;
        s->n_busy++;
    }
}

static void *sched_main(void *arg) {
    nm_server *s = arg;
    const size_t ns = (size_t)s->n_slots;
    step_arrays a = {
        .fresh = nm_calloc(ns, sizeof *a.fresh), .outs = nm_calloc(ns, sizeof *a.outs),
        .jobs = nm_calloc(ns, sizeof *a.jobs), .ctxs = nm_calloc(ns, sizeof *a.ctxs),
        .toks = nm_calloc(ns, sizeof *a.toks), .ns = nm_calloc(ns, sizeof *a.ns),
        .slot_of = nm_calloc(ns, sizeof *a.slot_of),
    };
    bool ok = a.fresh && a.outs && a.jobs && a.ctxs && a.toks && a.ns && a.slot_of;
    pthread_mutex_lock(&s->mu);
    while (ok) {
        while (!s->stop && s->n_busy == 0 && !s->q_head) pthread_cond_wait(&s->cv, &s->mu);
        if (s->stop) break;
        double now = srv_now();
        check_clients(s, now);
        admit(s, now, a.fresh);
        int32_t kv = 0;
        bool any = false;
        for (int i = 0; i < s->n_slots; i++) {
            a.jobs[i] = s->slots[i].job;
            any = any || a.jobs[i];
            kv += s->slots[i].n_cache;
        }
        s->kv_used = kv;
        pthread_mutex_unlock(&s->mu);
        srv_wake_flush(s);

        double t0 = srv_now();
        if (any) run_step(s, &a);
        double t1 = srv_now();

        pthread_mutex_lock(&s->mu);
        if (any) {
            s->m.decode_seconds += t1 - t0;
            s->m.steps++;
        }
        for (int i = 0; i < s->n_slots; i++)
            if (a.jobs[i] && s->slots[i].job == a.jobs[i]) publish(s, &s->slots[i], &a.outs[i], t1);
        pthread_mutex_unlock(&s->mu);
        srv_wake_flush(s);
        pthread_mutex_lock(&s->mu);
    }
    /* Shutting down (or out of memory): end every job. */
    double now = srv_now();
    for (int i = 0; i < s->n_slots; i++) {
        srv_job *j = s->slots[i].job;
        if (!j) continue;
        if (!j->failed) job_fail(j, 503, "server_error", "shutting_down", "the server is shutting down");
        release_slot(s, &s->slots[i], now);
        job_end(s, j, now);
    }
    while (s->q_head) {
        srv_job *j = s->q_head;
        s->q_head = j->next;
        s->n_queued--;
        if (!j->failed) job_fail(j, 503, "server_error", "shutting_down", "the server is shutting down");
        job_end(s, j, now);
    }
    s->q_tail = NULL;
    s->stop = true; /* a scheduler out of memory refuses new jobs too */
    pthread_mutex_unlock(&s->mu);
    srv_wake_flush(s);
    free(a.fresh);
    free(a.outs);
    free(a.jobs);
    free(a.ctxs);
    free(a.toks);
    free(a.ns);
    free(a.slot_of);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* set-up                                                                   */
/* ------------------------------------------------------------------------ */

nm_status srv_sched_init(nm_server *s, nm_err *err) {
    s->n_slots = s->p.n_parallel;
    s->slots = nm_calloc((size_t)s->n_slots, sizeof *s->slots);
    s->cap_wake = 2 * (s->n_slots + s->p.n_queue) + 1; /* see srv_sched_submit */
    s->wake = nm_calloc((size_t)s->cap_wake, sizeof *s->wake);
    s->poll_fds = nm_calloc((size_t)s->cap_wake, sizeof *s->poll_fds);
    s->poll_jobs = nm_calloc((size_t)s->cap_wake, sizeof *s->poll_jobs);
    if (!s->slots || !s->wake || !s->poll_fds || !s->poll_jobs) return nm_err_set(err, NM_ERR_NOMEM, "serve: out of memory for %d slots", s->n_slots);
    /* One pool for every slot: a step is one forward pass over all of
     * them, so there is never more than one pass to run at a time. */
    nm_status pst = nm_pool_new(s->p.n_threads > 0 ? s->p.n_threads : nm_cpu_count(), &s->pool, err);
    if (pst != NM_OK) return pst;
    nm_context_params cp = nm_context_default_params();
    int32_t n_ctx = s->p.n_ctx;
    if (n_ctx <= 0) n_ctx = s->info.n_ctx_train > 0 && s->info.n_ctx_train < 2048 ? s->info.n_ctx_train : 2048;
    cp.n_ctx = n_ctx;
    cp.pool = s->pool;
    for (int i = 0; i < s->n_slots; i++) {
        srv_slot *slot = &s->slots[i];
        slot->id = i;
        nm_status st = nm_context_new(s->model, &cp, &slot->ctx, err);
        if (st != NM_OK) return st;
        slot->cache = nm_calloc((size_t)nm_context_n_ctx(slot->ctx), sizeof *slot->cache);
        if (!slot->cache) return nm_err_set(err, NM_ERR_NOMEM, "serve: out of memory for slot %d", i);
    }
    s->env.n_ctx = nm_context_n_ctx(s->slots[0].ctx);
    return NM_OK;
}

nm_status srv_sched_start(nm_server *s, nm_err *err) {
    int rc = pthread_create(&s->sched, NULL, sched_main, s);
    if (rc != 0) return nm_err_set(err, NM_ERR_INTERNAL, "serve: cannot start the scheduler thread (error %d)", rc);
    s->sched_started = true;
    return NM_OK;
}

void srv_sched_stop(nm_server *s) {
    if (!s->sched_started) return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->sched, NULL);
    s->sched_started = false;
}

void srv_sched_deinit(nm_server *s) {
    for (int i = 0; s->slots && i < s->n_slots; i++) {
        nm_context_free(s->slots[i].ctx);
        free(s->slots[i].cache);
    }
    free(s->slots);
    free(s->wake);
    free(s->poll_fds);
    free(s->poll_jobs);
    s->poll_fds = NULL;
    s->poll_jobs = NULL;
    nm_pool_free(s->pool); /* after the contexts that borrow it */
    s->pool = NULL;
    s->slots = NULL;
    s->wake = NULL;
}
