/*
 * threads.h - a persistent pool of worker threads.
 *
 * Inference runs a few hundred short parallel regions per token (one per
 * matrix product, one per attention step).  Creating threads or allocating
 * for each of them would cost more than the work, so the pool starts its
 * threads once; nm_pool_run() hands them a function and waits until every
 * thread (the caller included) has returned from it.  Idle workers spin for
 * a short while (the next region usually follows within microseconds) and
 * then sleep on a condition variable, so an idle pool costs no CPU.
 */
#ifndef NM_THREADS_H
#define NM_THREADS_H

#include "nomoat.h"

typedef struct nm_pool nm_pool;

/* fn runs once on each of the nth threads, ith = 0..nth-1 (the calling
 * thread is ith 0).  Each call decides its share of the work from ith/nth. */
typedef void (*nm_pool_fn)(void *arg, int ith, int nth);

/* n_threads counts the calling thread: 1 means no worker threads at all. */
nm_status nm_pool_new(int n_threads, nm_pool **out, nm_err *err);
void nm_pool_free(nm_pool *p);
int nm_pool_size(const nm_pool *p);
/* Runs fn on every thread of the pool and returns when all are done.
 * Not reentrant: one nm_pool_run at a time per pool. */
void nm_pool_run(nm_pool *p, nm_pool_fn fn, void *arg);

/* Region timing, for profiles (nm_context_set_profiling): while on, each
 * nm_pool_run adds its wall time on the calling thread to region_ns and,
 * of that, the time the caller spent waiting for the other threads after
 * its own share to wait_ns.  Only the caller touches these (a pool runs
 * one region at a time), so readers between regions see exact totals. */
typedef struct nm_pool_times {
    uint64_t regions, region_ns, wait_ns;
} nm_pool_times;
void nm_pool_set_timing(nm_pool *p, bool on);
nm_pool_times nm_pool_times_get(const nm_pool *p);

/* Monotonic clock in nanoseconds. */
uint64_t nm_now_ns(void);

/* CPUs this process may run on (affinity mask), at least 1. */
int nm_cpu_count(void);

/* The half-open share [*lo, *hi) of n items for thread ith of nth, in
 * contiguous chunks whose starts are multiples of align (align >= 1). */
static inline void nm_split_range(int64_t n, int ith, int nth, int64_t align, int64_t *lo, int64_t *hi) {
    int64_t units = (n + align - 1) / align;
    int64_t per = units / nth, extra = units % nth;
    int64_t u0 = ith * per + (ith < extra ? ith : extra);
    int64_t u1 = u0 + per + (ith < extra ? 1 : 0);
    *lo = u0 * align < n ? u0 * align : n;
    *hi = u1 * align < n ? u1 * align : n;
}

#endif
