/* dist.c - data parallelism over MPI: the only file that calls MPI (built
 * with it under `make MPI=1`, which defines NM_MPI), and its one-process
 * stand-in for the default build.  See dist.h.
 *
 * Why MPI_COMM_WORLD and no communicator of our own: the process is a
 * nomoat command; it runs one training job, and every rank of the job takes
 * part in it.  Errors come back as values (MPI_ERRORS_RETURN), but a rank
 * that dies is not an error its peers can see in MPI-3: the launcher
 * (mpirun) notices the death and ends the whole job, and the tool ends a job
 * with MPI_Abort when one rank fails, so that no rank waits forever in a
 * collective its peer never joins (nm_dist_finish). */
#include "train/dist.h"
#include "base/base.h"
#include "base/threads.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef NM_MPI
#include <mpi.h>
#endif

/* Each rank packs its gradients into a buffer of at most this many floats
 * per allreduce (16 MiB): a LoRA adapter fits in one, full fine-tuning goes
 * in pieces instead of doubling its gradient memory. */
#define STAGE_MAX (4 << 20)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static long env_long(const char *name) {
    const char *s = getenv(name);
    if (!s || !*s) return -1;
    char *e;
    long v = strtol(s, &e, 10);
    return *e || v < 0 ? -1 : v;
}

/* How many processes a launcher started, read from the variables that
 * Open MPI, MPICH/Hydra, Slurm and PMIx set in each one: 0 when none is
 * set (not started by a launcher). */
static long launcher_size(void) {
    static const char *const sizes[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"};
    static const char *const ranks[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"};
    long n = 0;
    bool seen = false;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        long v = env_long(sizes[i]);
        if (v >= 0) seen = true;
        if (v > n) n = v;
    }
    for (size_t i = 0; i < sizeof ranks / sizeof *ranks; i++) {
        long v = env_long(ranks[i]);
        if (v >= 0) seen = true;
        if (v > 0 && n < v + 1) n = v + 1; /* rank 3 exists: at least 4 */
    }
    return seen && n < 1 ? 1 : n;
}

#ifdef NM_MPI

static bool mpi_active(void) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return init && !fin;
}

static nm_status mpi_fail(nm_err *err, const char *what, int rc) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "error %d", rc);
    return nm_err_set(err, NM_ERR_IO, "%s failed: %s (another rank may have died)", what, msg);
}

nm_status nm_dist_start(nm_err *err) {
    if (launcher_size() == 0 || mpi_active()) return NM_OK; /* not under mpirun: one process, no MPI */
    int provided;
    /* only the main thread calls MPI (the thread pool never does) */
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return nm_err_set(err, NM_ERR_IO, "MPI_Init_thread failed (error %d)", rc);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    return NM_OK;
}

int nm_dist_finish(int code) {
    if (!mpi_active()) return code;
    int size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    /* A failed rank cannot tell its peers, which may be blocked in a
     * collective waiting for it: end the whole job. */
    if (code != 0 && size > 1) MPI_Abort(MPI_COMM_WORLD, code);
    MPI_Finalize();
    return code;
}

int nm_dist_rank(void) {
    int r = 0;
    if (mpi_active()) MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

int nm_dist_size(void) {
    int n = 1;
    if (mpi_active()) MPI_Comm_size(MPI_COMM_WORLD, &n);
    return n;
}

nm_status nm_dist_init(nm_dist *d, nm_err *err) {
    memset(d, 0, sizeof *d);
    d->size = d->local_size = 1;
    if (!mpi_active()) {
        long n = launcher_size();
        if (n > 1)
            return nm_err_set(err, NM_ERR_ARG,
                              "started by mpirun as one of %ld processes, but MPI was not initialised "
                              "(call nm_dist_start first)", n);
        return NM_OK;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    MPI_Comm local;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local) == MPI_SUCCESS) {
        MPI_Comm_size(local, &d->local_size);
        MPI_Comm_free(&local);
    }
    return NM_OK;
}

/* MPI counts are int: long arrays go in pieces. */
#define CHUNK (INT_MAX / 8)

static nm_status allreduce(void *v, int64_t n, MPI_Datatype ty, size_t esz, nm_err *err) {
    for (int64_t o = 0; o < n; o += CHUNK) {
        int c = (int)(n - o < CHUNK ? n - o : CHUNK);
        int rc = MPI_Allreduce(MPI_IN_PLACE, (char *)v + (size_t)o * esz, c, ty, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Allreduce", rc);
    }
    return NM_OK;
}

nm_status nm_dist_sum_f64(nm_dist *d, double *v, int n, nm_err *err) {
    return d->size > 1 ? allreduce(v, n, MPI_DOUBLE, sizeof *v, err) : NM_OK;
}

nm_status nm_dist_sum_i64(nm_dist *d, int64_t *v, int n, nm_err *err) {
    return d->size > 1 ? allreduce(v, n, MPI_INT64_T, sizeof *v, err) : NM_OK;
}

static nm_status sum_f32(float *v, int64_t n, nm_err *err) { return allreduce(v, n, MPI_FLOAT, sizeof *v, err); }

nm_status nm_dist_bcast_f32(nm_dist *d, float *v, int64_t n, nm_err *err) {
    if (d->size < 2) return NM_OK;
    for (int64_t o = 0; o < n; o += CHUNK) {
        int c = (int)(n - o < CHUNK ? n - o : CHUNK);
        int rc = MPI_Bcast(v + o, c, MPI_FLOAT, 0, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Bcast", rc);
    }
    return NM_OK;
}

nm_status nm_dist_same_u64(nm_dist *d, const uint64_t *v, int n, bool *same, nm_err *err) {
    *same = true;
    if (d->size < 2) return NM_OK;
    uint64_t *r0 = nm_calloc((size_t)n, sizeof *r0);
    if (!r0) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    memcpy(r0, v, (size_t)n * sizeof *v);
    int rc = MPI_Bcast(r0, n, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    int diff = rc == MPI_SUCCESS && memcmp(r0, v, (size_t)n * sizeof *v) != 0, any = 0;
    free(r0);
    if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Bcast", rc);
    rc = MPI_Allreduce(&diff, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Allreduce", rc);
    *same = !any;
    return NM_OK;
}

nm_status nm_dist_barrier(nm_dist *d, nm_err *err) {
    if (d->size < 2) return NM_OK;
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? NM_OK : mpi_fail(err, "MPI_Barrier", rc);
}

#else /* one process, no MPI */

nm_status nm_dist_start(nm_err *err) {
    long n = launcher_size();
    if (n > 1)
        return nm_err_set(err, NM_ERR_UNSUPPORTED,
                          "this nomoat was built without MPI, but mpirun started it as one of %ld processes "
                          "(each would train alone); rebuild with: make MPI=1", n);
    return NM_OK;
}

int nm_dist_finish(int code) { return code; }
int nm_dist_rank(void) { return 0; }
int nm_dist_size(void) { return 1; }

nm_status nm_dist_init(nm_dist *d, nm_err *err) {
    memset(d, 0, sizeof *d);
    d->size = d->local_size = 1;
    return nm_dist_start(err);
}

nm_status nm_dist_sum_f64(nm_dist *d, double *v, int n, nm_err *err) { return NM_OK; }
nm_status nm_dist_sum_i64(nm_dist *d, int64_t *v, int n, nm_err *err) { return NM_OK; }
static nm_status sum_f32(float *v, int64_t n, nm_err *err) { return NM_OK; }
nm_status nm_dist_bcast_f32(nm_dist *d, float *v, int64_t n, nm_err *err) { return NM_OK; }
nm_status nm_dist_same_u64(nm_dist *d, const uint64_t *v, int n, bool *same, nm_err *err) {
    *same = true;
    return NM_OK;
}
nm_status nm_dist_barrier(nm_dist *d, nm_err *err) { return NM_OK; }

#endif

void nm_dist_deinit(nm_dist *d) {
    free(d->stage);
    memset(d, 0, sizeof *d);
}

void nm_dist_share(const nm_dist *d, int64_t n, int64_t mb, int64_t *r0, int64_t *r1) {
    int64_t R = d->size, r = d->rank, nmb = (n + mb - 1) / mb;
    if (nmb >= R) {
        int64_t k0 = nmb * r / R, k1 = nmb * (r + 1) / R;
        *r0 = k0 * mb < n ? k0 * mb : n;
        *r1 = k1 * mb < n ? k1 * mb : n;
    } else {
        *r0 = n * r / R;
        *r1 = n * (r + 1) / R;
    }
}

nm_status nm_dist_any(nm_dist *d, bool *flag, nm_err *err) {
    if (d->size < 2) return NM_OK;
    int64_t v = *flag;
    nm_status st = nm_dist_sum_i64(d, &v, 1, err);
    *flag = v > 0;
    return st;
}

/* The trainable gradients live beside their parameters (LoRA's arena
 * interleaves A, dA, B, dB), so they are packed into one buffer and summed
 * with as few allreduces as fit STAGE_MAX: one for any LoRA adapter.  The
 * copies cost far less than the messages they save. */
nm_status nm_dist_sum_grads(nm_dist *d, nm_tparam *params, int64_t n_params, nm_err *err) {
    if (d->size < 2) return NM_OK;
    double t0 = now_s();
    int64_t total = 0;
    for (int64_t i = 0; i < n_params; i++) total += params[i].n;
    int64_t cap = total < STAGE_MAX ? total : STAGE_MAX;
    if (d->stage_n < cap) {
        free(d->stage);
        d->stage = nm_calloc((size_t)cap, sizeof(float));
        d->stage_n = d->stage ? cap : 0;
        if (!d->stage) return nm_err_set(err, NM_ERR_NOMEM, "out of memory for the gradient allreduce");
    }
    /* walk the parameters twice with the same cursor: pack, sum, unpack */
    int64_t pi = 0, po = 0;
    while (pi < n_params) {
        int64_t qi = pi, qo = po, fill = 0;
        while (qi < n_params && fill < cap) {
            int64_t c = params[qi].n - qo < cap - fill ? params[qi].n - qo : cap - fill;
            memcpy(d->stage + fill, params[qi].grad + qo, (size_t)c * sizeof(float));
            fill += c;
            qo += c;
            if (qo == params[qi].n) qi++, qo = 0;
        }
        nm_status st = sum_f32(d->stage, fill, err);
        if (st) return st;
        fill = 0;
        while (pi < qi || (pi == qi && po < qo)) {
            int64_t end = pi < qi ? params[pi].n : qo, c = end - po;
            memcpy(params[pi].grad + po, d->stage + fill, (size_t)c * sizeof(float));
            fill += c;
            po += c;
            if (po == params[pi].n) pi++, po = 0;
        }
    }
    d->grad_s += now_s() - t0;
    d->n_grad_reduce++;
    d->grad_bytes = (uint64_t)total * sizeof(float);
    return NM_OK;
}
