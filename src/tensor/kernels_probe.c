/* kernels_probe.c - machine figures for roofline reports (see kernels.h):
 * the levels' probe loops (kernels_*.c) timed on every thread of a pool at
 * once.  The scalar level's probes are plain C loops here. */
#include "kernels.h"
#include "kernels_impl.h"
#include "base/base.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static volatile uint64_t sink;

/* 8 independent chains, one multiply-add each per round. */
static uint64_t fma_scalar(uint64_t iters) {
    float c[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    volatile float xv = 0.999f, yv = 0.001f;
    const float x = xv, y = yv;
    for (uint64_t i = 0; i < iters; i++)
        for (int k = 0; k < 8; k++) c[k] = c[k] * x + y;
    sink = (uint64_t)(c[0] + c[7]);
    return iters * 8;
}

/* (unsigned sums: they wrap around over a long run) */
static uint64_t int8_scalar(uint64_t iters) {
    uint32_t c[8] = {0};
    volatile int8_t av = 3, bv = 5;
    const int8_t a = av, b = bv;
    for (uint64_t i = 0; i < iters; i++)
        for (int k = 0; k < 8; k++) c[k] += (uint32_t)((int8_t)(a + k) * b);
    sink = (uint64_t)c[0] + c[7];
    return iters * 8;
}

static uint64_t read_scalar(const uint8_t *p, size_t n) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i < n; i += 32) {
        uint64_t v[4];
        memcpy(v, p + i, sizeof v);
        s0 += v[0];
        s1 += v[1];
        s2 += v[2];
        s3 += v[3];
    }
    return s0 + s1 + s2 + s3;
}

typedef uint64_t (*peak_fn)(uint64_t iters);

static peak_fn peak_of(nm_isa isa, bool int8) {
    switch (isa) {
    case NM_ISA_AVX512: return int8 ? nm_probe_int8_avx512 : nm_probe_fma_avx512;
    case NM_ISA_AVX2: return int8 ? nm_probe_int8_avx2 : nm_probe_fma_avx2;
    case NM_ISA_NEON: return int8 ? nm_probe_int8_neon : nm_probe_fma_neon;
    default: return int8 ? int8_scalar : fma_scalar;
    }
}

typedef struct probe_task {
    peak_fn peak;
    uint64_t iters;
    uint64_t (*read)(const uint8_t *, size_t);
    const uint8_t *buf;
    size_t bytes;
    uint64_t *done; /* per thread */
} probe_task;

static void peak_task(void *arg, int ith, int nth) {
    probe_task *t = arg;
    (void)nth;
    t->done[ith] = t->peak(t->iters);
}

static void read_task(void *arg, int ith, int nth) {
    probe_task *t = arg;
    int64_t lo, hi;
    /* whole 256-byte lines per thread */
    nm_split_range((int64_t)(t->bytes / 256), ith, nth, 1, &lo, &hi);
    t->done[ith] = t->read(t->buf + lo * 256, (size_t)(hi - lo) * 256);
}

/* Multiply-adds per second of a probe on every thread: calibrated to ~50
 * ms a run, best of 3. */
static double time_peak(nm_pool *pool, peak_fn peak, uint64_t *done) {
    const int nth = nm_pool_size(pool);
    uint64_t iters = 1 << 16;
    double t = 0;
    for (;;) { /* calibrate on one thread */
        const double t0 = now_s();
        peak(iters);
        t = now_s() - t0;
        if (t > 0.005 || iters > (1ull << 40)) break;
        iters *= 4;
    }
    probe_task pt = {.peak = peak, .iters = (uint64_t)((double)iters * 0.05 / (t > 0 ? t : 1e-3)) + 1, .done = done};
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        const double t0 = now_s();
        nm_pool_run(pool, peak_task, &pt);
        const double dt = now_s() - t0;
        uint64_t macs = 0;
        for (int i = 0; i < nth; i++) macs += done[i];
        if (dt > 0 && (double)macs / dt > best) best = (double)macs / dt;
    }
    return best;
}

static uint64_t (*read_of(nm_isa isa))(const uint8_t *, size_t) {
    return isa == NM_ISA_AVX512 ? nm_probe_read_avx512
           : isa == NM_ISA_AVX2 ? nm_probe_read_avx2
           : isa == NM_ISA_NEON ? nm_probe_read_neon
                                : read_scalar;
}

/* ---- thread-to-thread round trip ---- */
typedef struct rt_task {
    _Alignas(64) atomic_int flag; /* 2i + 1: thread 0's i-th hand-off; 2i + 2: the answer; -1: stop */
    _Alignas(64) atomic_int ready; /* thread 1 is running (a sleeping worker may take a while to wake) */
    int done;                     /* hand-offs completed (thread 0) */
    double seconds;
} rt_task;

enum { RT_ROUNDS = 20000 };

/* Spins until flag holds want (true) or `deadline` passes (false). */
static bool rt_wait(atomic_int *flag, int want, double deadline) {
    for (unsigned spin = 1; atomic_load_explicit(flag, memory_order_acquire) != want; spin++)
        if ((spin & 1023) == 0 && now_s() > deadline) return false;
    return true;
}

static void rt_run(void *arg, int ith, int nth) {
    rt_task *t = arg;
    (void)nth;
    if (ith == 1) { /* answer every odd value until told to stop */
        atomic_store_explicit(&t->ready, 1, memory_order_release);
        for (;;) {
            int v = atomic_load_explicit(&t->flag, memory_order_acquire);
            if (v < 0) return;
            /* not a plain store: it could overwrite a stop that came after the load */
            if (v & 1)
                atomic_compare_exchange_strong_explicit(&t->flag, &v, v + 1, memory_order_acq_rel, memory_order_acquire);
        }
    }
    if (ith != 0) return;
    int i = 0;
    double t0 = now_s();
    /* timed from when the partner runs; a preempted partner (more threads
     * than cores) must not hold us: 1 s to start and for the first round
     * trip (on a loaded machine the partner can wait a few scheduler time
     * slices; 100 ms and 5 ms once gave no round trip at all), 5 ms in all
     * after that */
    if (rt_wait(&t->ready, 1, t0 + 1.0)) {
        t0 = now_s();
        for (; i < RT_ROUNDS; i++) {
            atomic_store_explicit(&t->flag, 2 * i + 1, memory_order_release);
            if (!rt_wait(&t->flag, 2 * i + 2, t0 + (i == 0 ? 1.0 : 0.005))) break;
        }
    }
    t->seconds = now_s() - t0;
    t->done = i;
    atomic_store_explicit(&t->flag, -1, memory_order_release);
}

double nm_measure_round_trip(nm_pool *pool) {
    if (nm_pool_size(pool) < 2) return 0;
    rt_task t = {.done = 0};
    atomic_init(&t.flag, 0);
    atomic_init(&t.ready, 0);
    nm_pool_run(pool, rt_run, &t);
    return t.done > 0 ? t.seconds / t.done * 1e9 : 0;
}

struct nm_read_probe {
    uint8_t *buf;
    size_t bytes;
};

nm_status nm_read_probe_new(size_t read_bytes, nm_read_probe **out, nm_err *err) {
    *out = NULL;
    read_bytes = read_bytes / 256 * 256;
    nm_read_probe *p = nm_calloc(1, sizeof *p);
    uint8_t *buf = read_bytes ? aligned_alloc(64, read_bytes) : NULL;
    if (!p || !buf) {
        free(p);
        free(buf);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory for a %zu-byte bandwidth buffer", read_bytes);
    }
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i + 8 <= read_bytes; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(buf + i, &x, 8);
    }
    p->buf = buf;
    p->bytes = read_bytes;
    *out = p;
    return NM_OK;
}

void nm_read_probe_free(nm_read_probe *p) {
    if (!p) return;
    free(p->buf);
    free(p);
}

/* Best of `passes` reads of the probe on every thread. */
static double time_read(nm_pool *pool, nm_isa isa, const nm_read_probe *p, int passes, uint64_t *done) {
    probe_task rt = {.buf = p->buf, .bytes = p->bytes, .done = done, .read = read_of(isa)};
    double best = 0;
    for (int rep = 0; rep < passes; rep++) {
        const double t0 = now_s();
        nm_pool_run(pool, read_task, &rt);
        const double dt = now_s() - t0;
        if (dt > 0 && (double)p->bytes / dt > best) best = (double)p->bytes / dt;
    }
    sink = done[0];
    return best;
}

nm_status nm_measure_read(nm_pool *pool, nm_isa isa, const nm_read_probe *probe, int passes, double *bytes_s,
                          nm_err *err) {
    if (!nm_isa_available(isa))
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "instruction-set level %s is not available here", nm_isa_name(isa));
    uint64_t *done = nm_calloc((size_t)nm_pool_size(pool), sizeof *done);
    if (!done) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    *bytes_s = time_read(pool, isa, probe, passes < 1 ? 1 : passes, done);
    free(done);
    return NM_OK;
}

nm_status nm_measure_machine(nm_pool *pool, nm_isa isa, const nm_read_probe *probe, nm_machine_peaks *out,
                             nm_err *err) {
    if (!nm_isa_available(isa))
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "instruction-set level %s is not available here", nm_isa_name(isa));
    const int nth = nm_pool_size(pool);
    uint64_t *done = nm_calloc((size_t)nth, sizeof *done);
    if (!done) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    out->isa = isa;
    out->threads = nth;
    out->fma_s = time_peak(pool, peak_of(isa, false), done);
    out->int8_s = time_peak(pool, peak_of(isa, true), done);
    free(done);
    return nm_measure_read(pool, isa, probe, 4, &out->read_bytes_s, err);
}
