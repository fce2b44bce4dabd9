/* threads.c - the persistent thread pool (see threads.h).
 *
 * Hand-off protocol: the caller publishes (fn, arg), sets `pending` to the
 * number of workers and bumps the generation counter `gen` (release).  A
 * worker that sees a new generation (acquire) runs fn and decrements
 * `pending`; the one that brings it to zero wakes the caller if it sleeps.
 * Spinning first and sleeping after SPIN_ITERS keeps back-to-back regions
 * cheap without burning a core while the pool is idle.
 *
 * The mutex and condition variables are touched only when someone sleeps:
 * a sleeper announces itself (n_asleep, caller_asleep) under the mutex and
 * re-checks its condition before waiting, and the other side, after its
 * store, looks at the announcement; both sides' accesses are sequentially
 * consistent, so at least one of them sees the other's and no wake-up is
 * lost.  Taking the mutex every region instead moved its cache line
 * between the two cores twice a region, on the critical path (about 0.3 us
 * each when the two vCPUs sit on different core complexes). */
#include "threads.h"
#include "base.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Waiting: PAUSE_ITERS busy polls (the next region usually comes within a
 * few microseconds), then polls that yield the CPU (when there are more
 * threads than cores, the thread we wait for may need ours), then sleep.
 * A PAUSE is ~25 ns on Zen 4 (~40 on recent Intel), so 1024 of them cover
 * the 5-20 us of single-threaded work between a token's regions (norms,
 * RoPE, sampling); with 256, a worker was often inside sched_yield (~0.5
 * us a call in a VM) when a region opened: it started 0.7-1.2 us late on
 * average against 0.3-0.7 (tl1b Q4_0 generation, 110 regions a token). */
enum { PAUSE_ITERS = 1024, SPIN_ITERS = 4096 };

typedef struct worker {
    struct nm_pool *pool;
    int ith;
    pthread_t thread;
} worker;

struct nm_pool {
    int n;            /* threads, the caller included */
    worker *workers;  /* n - 1 of them                */
    int n_started;

    pthread_mutex_t mu;
    pthread_cond_t cv_work; /* workers sleep here between regions   */
    pthread_cond_t cv_done; /* the caller sleeps here inside a run  */

    atomic_uint gen;
    atomic_int pending;
    atomic_int n_asleep;       /* workers in (or entering) cv_work waits */
    atomic_bool caller_asleep; /* the caller in (or entering) a cv_done wait */
    atomic_bool quit;
    nm_pool_fn fn;
    void *arg;

    bool timing;        /* nm_pool_set_timing; the caller's fields below */
    nm_pool_times times;
};

static inline void cpu_relax(int iter) {
    if (iter >= PAUSE_ITERS) {
        sched_yield();
        return;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void *worker_main(void *p_) {
    worker *w = p_;
    nm_pool *p = w->pool;
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
        for (int spins = 0; g == seen && spins < SPIN_ITERS; spins++) {
            cpu_relax(spins);
            g = atomic_load_explicit(&p->gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->n_asleep, 1);
            while ((g = atomic_load(&p->gen)) == seen) pthread_cond_wait(&p->cv_work, &p->mu);
            atomic_fetch_sub(&p->n_asleep, 1);
            pthread_mutex_unlock(&p->mu);
        }
        seen = g;
        if (atomic_load_explicit(&p->quit, memory_order_acquire)) return NULL;
        p->fn(p->arg, w->ith, p->n);
        if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->caller_asleep)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

int nm_cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void wake_all(nm_pool *p) {
    atomic_fetch_add(&p->gen, 1);
    if (atomic_load(&p->n_asleep) == 0) return;
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
}

nm_status nm_pool_new(int n_threads, nm_pool **out, nm_err *err) {
    *out = NULL;
    if (n_threads < 1 || n_threads > 1024)
        return nm_err_set(err, NM_ERR_ARG, "thread count %d is outside 1..1024", n_threads);
    nm_pool *p = nm_calloc(1, sizeof *p);
    if (!p) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for a thread pool");
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->quit, false);
    atomic_init(&p->n_asleep, 0);
    atomic_init(&p->caller_asleep, false);
    if (n_threads > 1) {
        p->workers = nm_calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            nm_pool_free(p);
            return nm_err_set(err, NM_ERR_NOMEM, "out of memory for a thread pool");
        }
        for (int i = 0; i < n_threads - 1; i++) {
            p->workers[i].pool = p;
            p->workers[i].ith = i + 1;
            int rc = pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]);
            if (rc != 0) {
                nm_pool_free(p);
                return nm_err_set(err, NM_ERR_INTERNAL, "cannot start thread %d of %d: %s", i + 2, n_threads,
                                  strerror(rc));
            }
            p->n_started++;
        }
    }
    *out = p;
    return NM_OK;
}

void nm_pool_free(nm_pool *p) {
    if (!p) return;
    if (p->n_started > 0) {
        atomic_store_explicit(&p->quit, true, memory_order_release);
        wake_all(p);
        for (int i = 0; i < p->n_started; i++) pthread_join(p->workers[i].thread, NULL);
    }
    pthread_cond_destroy(&p->cv_done);
    pthread_cond_destroy(&p->cv_work);
    pthread_mutex_destroy(&p->mu);
    free(p->workers);
    free(p);
}

int nm_pool_size(const nm_pool *p) { return p ? p->n : 1; }

/* The caller, done with its share: spins, then sleeps, until every worker
 * has finished its share. */
static void wait_workers(nm_pool *p) {
    int spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0) {
        if (++spins < SPIN_ITERS) {
            cpu_relax(spins);
            continue;
        }
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->caller_asleep, true);
        while (atomic_load(&p->pending) != 0) pthread_cond_wait(&p->cv_done, &p->mu);
        atomic_store(&p->caller_asleep, false);
        pthread_mutex_unlock(&p->mu);
    }
}

void nm_pool_run(nm_pool *p, nm_pool_fn fn, void *arg) {
    if (!p) {
        fn(arg, 0, 1);
        return;
    }
    const uint64_t t0 = p->timing ? nm_now_ns() : 0;
    uint64_t t1 = 0; /* the caller's own share done (timing, workers only) */
    if (p->n > 1) {
        p->fn = fn;
        p->arg = arg;
        atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
        wake_all(p);
    }
    fn(arg, 0, p->n);
    if (p->n > 1) {
        if (p->timing) t1 = nm_now_ns();
        wait_workers(p);
    }
    if (p->timing) {
        const uint64_t t2 = nm_now_ns();
        p->times.regions++;
        p->times.region_ns += t2 - t0;
        p->times.wait_ns += p->n > 1 ? t2 - t1 : 0;
    }
}

void nm_pool_set_timing(nm_pool *p, bool on) {
    if (p) p->timing = on;
}

nm_pool_times nm_pool_times_get(const nm_pool *p) {
    return p ? p->times : (nm_pool_times){0};
}

uint64_t nm_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
