/*
 * sampler.c - the choice of the next token, with the semantics of
 * llama.cpp's default sampler chain: logit bias, repetition penalties,
 * top-k, top-p, min-p, temperature, then a seeded draw.
 *
 * Everything a call needs is allocated by nm_sampler_new: a generation loop
 * samples thousands of tokens and must not touch the allocator for each.
 * The candidates are (logit, id) pairs; each step narrows them in place,
 * and sorting happens only when a step needs the order (top-k sorts just
 * its k survivors, through a bounded heap).
 */
#include "base/base.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* The history the penalties look at is bounded: a window larger than any
 * context we run is a mistake in the caller, not a reason to allocate GBs. */
#define MAX_PENALTY_WINDOW (1 << 20)

typedef struct cand {
    float logit;
    int32_t id;
} cand;

struct nm_sampler {
    nm_sampler_params p; /* logit_bias points to bias below; stop cleared */
    int32_t n_vocab;
    nm_logit_bias *bias;
    cand *cand;      /* n_vocab */
    int32_t *count;  /* n_vocab: occurrences of each token in the window */
    int32_t *ring;   /* penalty_last_n most recent accepted tokens */
    int32_t ring_start, ring_len;
    uint64_t seed;
    nm_rng rng;
};

nm_sampler_params nm_sampler_params_default(void) {
    nm_sampler_params p;
    memset(&p, 0, sizeof p);
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.0f;
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.0f;
    p.penalty_last_n = 64;
    p.seed = NM_SEED_RANDOM;
    return p;
}

static uint64_t fresh_seed(void) {
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) != (ssize_t)sizeof s) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = (uint64_t)ts.tv_sec * 1000000007ULL ^ (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)&s;
    }
    /* A drawn seed must be reusable: passing it back must not mean "random". */
    if (s == NM_SEED_RANDOM) s = 0;
    return s;
}

nm_status nm_sampler_new(const nm_sampler_params *p, int32_t n_vocab, nm_sampler **out, nm_err *err) {
    *out = NULL;
    if (!p) return nm_err_set(err, NM_ERR_ARG, "sampler: no parameters");
    if (n_vocab <= 0) return nm_err_set(err, NM_ERR_ARG, "sampler: vocabulary size %d", (int)n_vocab);
    if (isnan(p->temperature) || isinf(p->temperature))
        return nm_err_set(err, NM_ERR_ARG, "sampler: temperature must be a finite number");
    if (!(p->top_p >= 0.0f) || isinf(p->top_p))
        return nm_err_set(err, NM_ERR_ARG, "sampler: top-p %g is not in [0, 1]", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return nm_err_set(err, NM_ERR_ARG, "sampler: min-p %g is not in [0, 1]", (double)p->min_p);
    if (!(p->repeat_penalty > 0.0f) || isinf(p->repeat_penalty))
        return nm_err_set(err, NM_ERR_ARG, "sampler: repeat penalty %g must be a positive number",
                          (double)p->repeat_penalty);
    if (!isfinite(p->frequency_penalty) || !isfinite(p->presence_penalty))
        return nm_err_set(err, NM_ERR_ARG, "sampler: frequency and presence penalties must be finite");
    if (p->penalty_last_n < 0 || p->penalty_last_n > MAX_PENALTY_WINDOW)
        return nm_err_set(err, NM_ERR_ARG, "sampler: penalty window %d is not in [0, %d]", (int)p->penalty_last_n,
                          MAX_PENALTY_WINDOW);
    if (p->n_logit_bias && !p->logit_bias) return nm_err_set(err, NM_ERR_ARG, "sampler: logit bias list is NULL");
    for (size_t i = 0; i < p->n_logit_bias; i++) {
        const nm_logit_bias *b = &p->logit_bias[i];
        if (b->token < 0 || b->token >= n_vocab)
            return nm_err_set(err, NM_ERR_ARG, "sampler: logit bias for token %d, outside the vocabulary (0..%d)",
                              (int)b->token, (int)n_vocab - 1);
        /* -INFINITY bans; +INFINITY or NaN would poison the softmax. */
        if (isnan(b->bias) || (isinf(b->bias) && b->bias > 0))
            return nm_err_set(err, NM_ERR_ARG, "sampler: logit bias for token %d must be finite or -inf",
                              (int)b->token);
    }

    nm_sampler *s = calloc(1, sizeof *s);
    if (!s) return nm_err_set(err, NM_ERR_NOMEM, "sampler: out of memory");
    s->p = *p;
    s->p.stop = NULL;
    s->p.n_stop = 0;
    s->n_vocab = n_vocab;
    s->cand = nm_calloc((size_t)n_vocab, sizeof *s->cand);
    s->count = nm_calloc((size_t)n_vocab, sizeof *s->count);
    s->ring = nm_calloc(p->penalty_last_n > 0 ? (size_t)p->penalty_last_n : 1, sizeof *s->ring);
    if (p->n_logit_bias) s->bias = nm_calloc(p->n_logit_bias, sizeof *s->bias);
    if (!s->cand || !s->count || !s->ring || (p->n_logit_bias && !s->bias)) {
        nm_sampler_free(s);
        return nm_err_set(err, NM_ERR_NOMEM, "sampler: out of memory for a vocabulary of %d", (int)n_vocab);
    }
    if (p->n_logit_bias) memcpy(s->bias, p->logit_bias, p->n_logit_bias * sizeof *s->bias);
    s->p.logit_bias = s->bias;
    s->seed = p->seed == NM_SEED_RANDOM ? fresh_seed() : p->seed;
    nm_rng_seed(&s->rng, s->seed);
    *out = s;
    return NM_OK;
}

void nm_sampler_free(nm_sampler *s) {
    if (!s) return;
    free(s->cand);
    free(s->count);
    free(s->ring);
    free(s->bias);
    free(s);
}

uint64_t nm_sampler_seed(const nm_sampler *s) { return s->seed; }

void nm_sampler_reset(nm_sampler *s) {
    for (int32_t i = 0; i < s->ring_len; i++) {
        int32_t t = s->ring[(s->ring_start + i) % s->p.penalty_last_n];
        s->count[t] = 0;
    }
    s->ring_start = 0;
    s->ring_len = 0;
    nm_rng_seed(&s->rng, s->seed);
}

void nm_sampler_accept(nm_sampler *s, int32_t id) {
    int32_t n = s->p.penalty_last_n;
    if (n <= 0 || id < 0 || id >= s->n_vocab) return;
    if (s->ring_len == n) { /* full: the oldest token leaves the window */
        s->count[s->ring[s->ring_start]]--;
        s->ring[s->ring_start] = id;
        s->ring_start = (s->ring_start + 1) % n;
    } else {
        s->ring[(s->ring_start + s->ring_len) % n] = id;
        s->ring_len++;
    }
    s->count[id]++;
}

/* Higher logit first; equal logits by id so results never depend on the
 * order a sort happens to leave ties in. */
static bool cand_before(const cand *a, const cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    if (cand_before(a, b)) return -1;
    if (cand_before(b, a)) return 1;
    return 0;
}

/* Min-heap on "before": the root is the weakest of the kept k. */
static void heap_sift_down(cand *h, int32_t n, int32_t i) {
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && cand_before(&h[m], &h[l])) m = l;
        if (r < n && cand_before(&h[m], &h[r])) m = r;
        if (m == i) return;
        cand t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* Moves the k best of c[0..n) to c[0..k), sorted best first. */
static void top_k_sorted(cand *c, int32_t n, int32_t k) {
    for (int32_t i = k / 2 - 1; i >= 0; i--) heap_sift_down(c, k, i);
    for (int32_t i = k; i < n; i++) {
        if (cand_before(&c[i], &c[0])) {
            cand t = c[0];
            c[0] = c[i];
            c[i] = t;
            heap_sift_down(c, k, 0);
        }
    }
    qsort(c, (size_t)k, sizeof *c, cand_cmp);
}

static int32_t argmax(const cand *c, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (cand_before(&c[i], &c[best])) best = i;
    return best;
}

int32_t nm_sampler_sample(nm_sampler *s, const float *logits) {
    const nm_sampler_params *p = &s->p;
    cand *c = s->cand;
    int32_t nv = s->n_vocab;

    /* Candidates indexed by id while bias and penalties apply. */
    for (int32_t i = 0; i < nv; i++) {
        float l = logits[i];
        if (isnan(l)) l = -INFINITY;
        else if (l > FLT_MAX) l = FLT_MAX; /* +inf would turn the softmax into NaN */
        c[i].logit = l;
        c[i].id = i;
    }
    for (size_t i = 0; i < p->n_logit_bias; i++) c[s->bias[i].token].logit += s->bias[i].bias;

    bool penalize = p->penalty_last_n > 0 && s->ring_len > 0 &&
                    (p->repeat_penalty != 1.0f || p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f);
    if (penalize) {
        for (int32_t i = 0; i < nv; i++) {
            int32_t k = s->count[i];
            if (k <= 0) continue;
            float l = c[i].logit;
            if (l <= 0) l *= p->repeat_penalty;
            else l /= p->repeat_penalty;
            l -= (float)k * p->frequency_penalty + p->presence_penalty;
            c[i].logit = l;
        }
    }

    if (p->temperature <= 0.0f) { /* greedy: the first largest, banned tokens excluded */
        int32_t best = -1;
        for (int32_t i = 0; i < nv; i++)
            if (c[i].logit > -INFINITY && (best < 0 || c[i].logit > c[best].logit)) best = i;
        return best;
    }

    /* Banned tokens (-inf) leave the candidate set for good (so would a
     * NaN, which the steps above cannot make from sanitized input). */
    int32_t n = 0;
    for (int32_t i = 0; i < nv; i++) {
        if (!(c[i].logit > -INFINITY)) continue;
        if (c[i].logit > FLT_MAX) c[i].logit = FLT_MAX;
        c[n++] = c[i];
    }
    if (n == 0) return -1;

    bool sorted = false;
    if (p->top_k > 0 && p->top_k < n) {
        top_k_sorted(c, n, p->top_k);
        n = p->top_k;
        sorted = true;
    }

    if (p->top_p < 1.0f && n > 1) {
        double max = sorted ? c[0].logit : c[argmax(c, n)].logit, sum = 0;
        for (int32_t i = 0; i < n; i++) sum += exp((double)c[i].logit - max);
        double target = (double)p->top_p * sum;
        /* The nucleus is usually a small head of the vocabulary: sort only
         * a head of growing size until it holds enough probability, rather
         * than sorting all of a 32k-128k vocabulary for every token.  Each
         * round sorts the best of what the previous rounds left, so the
         * work adds up to one partial sort of the nucleus. */
        int32_t done = 0, keep = -1;
        int32_t head = sorted || n <= 256 ? n : 256;
        double cum = 0;
        for (;;) {
            if (!sorted) {
                if (head == n) qsort(c + done, (size_t)(n - done), sizeof *c, cand_cmp);
                else top_k_sorted(c + done, n - done, head - done);
            }
            for (int32_t i = done; i < head; i++) {
                cum += exp((double)c[i].logit - max);
                if (cum >= target) {
                    keep = i + 1;
                    break;
                }
            }
            if (keep > 0 || head == n) break;
            done = head;
            head = head > n / 2 ? n : head * 2;
        }
        n = keep > 0 ? keep : n; /* rounding may leave cum a hair short of target */
        sorted = true;
    }

    if (p->min_p > 0.0f && n > 1) {
        /* prob_i >= min_p * prob_max  <=>  logit_i >= logit_max + log(min_p) */
        float max = sorted ? c[0].logit : c[argmax(c, n)].logit;
        double thresh = (double)max + log((double)p->min_p);
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++)
            if ((double)c[i].logit >= thresh) c[m++] = c[i];
        n = m; /* the max itself always passes, so m >= 1 */
    }

    /* Temperature, then the draw.  Work relative to the max so that
     * (logit - max) / T <= 0 and exp never overflows. */
    float max = sorted ? c[0].logit : c[argmax(c, n)].logit;
    double inv_t = 1.0 / (double)p->temperature, sum = 0;
    for (int32_t i = 0; i < n; i++) sum += exp(((double)c[i].logit - max) * inv_t);
    double u = nm_rng_uniform(&s->rng) * sum, cum = 0;
    int32_t last = 0;
    for (int32_t i = 0; i < n; i++) {
        double w = exp(((double)c[i].logit - max) * inv_t);
        if (w <= 0) continue;
        last = i;
        cum += w;
        if (u < cum) return c[i].id;
    }
    return c[last].id; /* rounding left u at the very end */
}
