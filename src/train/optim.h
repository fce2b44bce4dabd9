/*
 * optim.h - AdamW with decoupled weight decay, gradient clipping by global
 * norm, and the learning-rate schedule (warm-up, then cosine, linear or
 * constant).  Works on any list of nm_tparam (LoRA A/B or full weights).
 */
#ifndef NM_TRAIN_OPTIM_H
#define NM_TRAIN_OPTIM_H

#include "train/model.h"

typedef enum nm_sched_kind { NM_SCHED_COSINE = 0, NM_SCHED_LINEAR, NM_SCHED_CONSTANT } nm_sched_kind;

typedef struct nm_sched {
    nm_sched_kind kind;
    double lr, min_lr;
    int64_t warmup, total; /* optimiser steps */
} nm_sched;

/* "cosine", "linear", "constant" -> kind; -1 if unknown. */
int nm_sched_parse(const char *name);
const char *nm_sched_name(nm_sched_kind k);
/* Learning rate of optimiser step `step` (0-based):
 *   warm-up (step < warmup):  lr * (step + 1) / warmup
 *   then, with p = (step - warmup) / (total - warmup) in [0, 1]:
 *   cosine: min_lr + (lr - min_lr) * (1 + cos(pi p)) / 2
 *   linear: min_lr + (lr - min_lr) * (1 - p)
 *   constant: lr */
double nm_sched_lr(const nm_sched *s, int64_t step);

typedef struct nm_adamw_cfg {
    double beta1, beta2, eps, weight_decay;
} nm_adamw_cfg;

typedef struct nm_adamw {
    nm_tparam *params; /* borrowed */
    int64_t n_params;
    float *m, *v;      /* moments, params' elements back to back (owned) */
    uint64_t n_elems;
    int64_t t;         /* steps taken */
} nm_adamw;

nm_status nm_adamw_init(nm_adamw *o, nm_tparam *params, int64_t n_params, nm_err *err);
void nm_adamw_deinit(nm_adamw *o);
/* One step at learning rate lr (PyTorch's AdamW):
 *   p -= lr * wd * p            (decoupled decay; 1-D tensors - norm
 *                                weights - are not decayed)
 *   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
 *   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) */
void nm_adamw_step(nm_adamw *o, const nm_adamw_cfg *c, double lr);

/* sqrt(sum of squared gradients), summed in double in a fixed order. */
double nm_grad_norm(const nm_tparam *p, int64_t n);
void nm_grad_scale(nm_tparam *p, int64_t n, float s);
void nm_grad_zero(nm_tparam *p, int64_t n);
/* Scales the gradients so their global norm is at most max_norm (if
 * max_norm > 0); returns the norm before clipping. */
double nm_grad_clip(nm_tparam *p, int64_t n, double max_norm);

#endif
