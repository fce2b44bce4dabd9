/*
 * dist.h - data-parallel training over MPI (docs/TRAINING.md, "Training
 * across machines").  Every MPI call of nomoat lives in dist.c; a build
 * without MPI (the default `make`) compiles the same interface for one
 * process, so the trainer calls these functions either way and a single
 * process pays nothing for them.
 *
 * The model: every rank holds the whole model, the whole dataset and the
 * same row order (both are functions of the seed), computes the gradient of
 * its share of each global batch, and the gradients are summed so that
 * every rank applies the same optimiser step to the same parameters.
 */
#ifndef NM_TRAIN_DIST_H
#define NM_TRAIN_DIST_H

#include "train/model.h"

typedef struct nm_dist {
    int rank, size;   /* 0 and 1 without MPI */
    int local_size;   /* ranks on this machine (they share its cores) */
    float *stage;     /* packing buffer for the gradient allreduce */
    int64_t stage_n;
    /* what the gradient allreduces cost (reported at the end of a run) */
    double grad_s;
    int64_t n_grad_reduce;
    uint64_t grad_bytes; /* per allreduce */
} nm_dist;

/* Rank and size of this process: MPI's world when nm_dist_start ran in an
 * MPI build, else one process.  Fails when the process was started as one
 * of several by a launcher (mpirun, srun) but cannot take part: a binary
 * built without MPI, or an MPI build whose caller never ran
 * nm_dist_start.  Each copy would otherwise train the whole run alone. */
nm_status nm_dist_init(nm_dist *d, nm_err *err);
void nm_dist_deinit(nm_dist *d);

/* The rows [*r0, *r1) of a step of n rows (micro-batches of mb rows) that
 * this rank computes.  Whole micro-batches when there are at least as many
 * as ranks (then each keeps its micro-batch index, hence its dropout
 * masks), else an even split of the rows. */
void nm_dist_share(const nm_dist *d, int64_t n, int64_t mb, int64_t *r0, int64_t *r1);

/* In-place sums over all ranks (no-ops for one process). */
nm_status nm_dist_sum_grads(nm_dist *d, nm_tparam *params, int64_t n_params, nm_err *err);
nm_status nm_dist_sum_f64(nm_dist *d, double *v, int n, nm_err *err);
nm_status nm_dist_sum_i64(nm_dist *d, int64_t *v, int n, nm_err *err);
/* *flag becomes true on every rank if it is true on any. */
nm_status nm_dist_any(nm_dist *d, bool *flag, nm_err *err);
/* Rank 0's n floats to every rank. */
nm_status nm_dist_bcast_f32(nm_dist *d, float *v, int64_t n, nm_err *err);
/* *same: every rank holds rank 0's n values. */
nm_status nm_dist_same_u64(nm_dist *d, const uint64_t *v, int n, bool *same, nm_err *err);
nm_status nm_dist_barrier(nm_dist *d, nm_err *err);

#endif
