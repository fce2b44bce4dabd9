/*
 * dpo.h - Direct Preference Optimisation on the training model (issue 11).
 *
 * For a pair (prompt x, chosen y_w, rejected y_l), with log-probabilities
 * of the answer tokens summed per sequence, the policy pi (base + stack +
 * trained adapter) and the reference (the same model with the trained
 * adapter switched off: no second copy of any weight):
 *   h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))
 *   sigmoid  L = -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
 *            (eps = label smoothing > 0: conservative DPO)
 *   ipo      L = (h - 1/(2 beta))^2 with log-probs AVERAGED over the
 *            answer tokens (as TRL does for IPO)
 * Rewards: beta (log pi - log ref) of each side; accuracy: chosen reward >
 * rejected reward; margin: their difference.
 *
 * The gradient runs through the model's loss hook (model.h nm_tm_head): the
 * scan sweep computes every answer token's log-probability of the
 * micro-batch, the loss sweep turns them into each sequence's coefficient
 * dL/dlogp and writes coef * (onehot(target) - softmax) into the logits
 * rows.  A micro-batch holds whole pairs: row 2k chosen, row 2k+1 rejected.
 */
#ifndef NM_TRAIN_DPO_H
#define NM_TRAIN_DPO_H

#include "train/model.h"

typedef enum nm_dpo_loss { NM_DPO_SIGMOID = 0, NM_DPO_IPO } nm_dpo_loss;

typedef struct nm_dpo_cfg {
    nm_dpo_loss loss;
    double beta;            /* > 0 */
    double label_smoothing; /* sigmoid only, [0, 0.5) */
} nm_dpo_cfg;

/* "sigmoid" / "dpo", "ipo" -> loss; -1 if unknown. */
int nm_dpo_loss_parse(const char *name);
const char *nm_dpo_loss_name(nm_dpo_loss l);
nm_status nm_dpo_cfg_check(const nm_dpo_cfg *c, nm_err *err);

/* One pair: the loss and dL/d(policy chosen), dL/d(policy rejected) in
 * terms of the values given (for IPO the caller passes averaged log-probs). */
double nm_dpo_pair(const nm_dpo_cfg *c, double pol_c, double pol_r, double ref_c, double ref_r, double *d_c,
                   double *d_r);

/* Sums over the pairs of one or more micro-batches. */
typedef struct nm_dpo_sums {
    double loss, acc, margin, chosen, rejected;
    int64_t n_pairs;
} nm_dpo_sums;

/* Per-sequence log-probabilities of the answer tokens (the targets >= 0)
 * of a micro-batch under the model (lora NULL: the reference), as the loss
 * uses them (IPO: averaged).  out: [b->n_seq]. */
nm_status nm_dpo_logps(nm_tmodel *m, nm_tm_lora *lora, const nm_dpo_cfg *c, const nm_tm_batch *b, double *out,
                       nm_err *err);

/* One micro-batch of pairs (rows 2k, 2k+1).  ref: the reference values of
 * its rows [n_seq].  train: forward + backward, gradients ACCUMULATED with
 * weight per pair (1/N for the mean over the N pairs of a step); otherwise
 * forward only.  Adds the pairs' loss and rewards to *sums. */
nm_status nm_dpo_step(nm_tmodel *m, nm_tm_lora *lora, const nm_dpo_cfg *c, const nm_tm_batch *b, const double *ref,
                      bool train, double weight, uint64_t drop_seed, nm_dpo_sums *sums, nm_err *err);

/* The loss hook itself, exposed for tests of its arithmetic on logits given
 * directly (no model).  Set the inputs, call scan over every chunk, then
 * loss over every chunk, in order. */
typedef struct nm_dpo_hook {
    /* inputs */
    const nm_dpo_cfg *cfg;
    const int32_t *targets; /* [n_seq * seq_len], < 0: not an answer token */
    int64_t n_seq, seq_len;
    const double *ref;      /* [n_seq] or NULL: only the log-probs are wanted */
    double weight;          /* objective weight of each pair */
    /* work and results */
    double *lse;            /* [T] log-sum-exp of each row (scan) */
    double *tok_lp;         /* [T] log-probability of each target (scan) */
    double *logp;           /* [n_seq] per-sequence value as the loss uses it */
    double *coef;           /* [n_seq] weight * dL/dlogp (per token for IPO) */
    double *pair_loss;      /* [n_seq / 2] */
    nm_dpo_sums sums;
    bool ready;
    int64_t n_vocab;
    int nth;                /* threads the scan may use (one scratch row each) */
    float *scratch;         /* [nth * n_vocab] */
    bool one_sweep;         /* forward only: no scan sweep, the loss sweep
                               gathers and the caller finishes (half the
                               output-head products) */
} nm_dpo_hook;

/* n_vocab: the logits' width; nth: the ops context's thread count (1 for
 * a NULL context). */
nm_status nm_dpo_hook_init(nm_dpo_hook *h, const nm_dpo_cfg *cfg, const int32_t *targets, int64_t n_seq,
                           int64_t seq_len, const double *ref, double weight, int64_t n_vocab, int nth, nm_err *err);
void nm_dpo_hook_deinit(nm_dpo_hook *h);
nm_tm_head nm_dpo_head(nm_dpo_hook *h);

#endif
