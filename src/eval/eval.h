/*
 * eval.h - internals shared by evaluation (src/eval) and the scorers and
 * generator of curation (src/curate): log-likelihoods of token sequences
 * under a model, and running work items in parallel, each worker with its
 * own inference context over one shared model.
 */
#ifndef NM_EVAL_H
#define NM_EVAL_H

#include "nomoat.h"

/* The tokens of prefix followed by continuation: the prefix alone (BOS as
 * the vocabulary says) and the whole text are tokenized; when the whole
 * text's tokens start with the prefix's, they are used (the boundary
 * tokenizes as in the joined text), otherwise the continuation is
 * tokenized on its own and appended.  *n_prefix: how many tokens belong to
 * the prefix.  *ids is malloc()ed. */
nm_status nm_ev_tokens(const nm_vocab *v, const char *prefix, const char *cont, bool parse_special, int32_t **ids,
                       size_t *n, size_t *n_prefix, nm_err *err);

/* Runs ids[0..n) from an empty cache (c needs logits_all) and adds -log
 * p(ids[k] | ids[0..k)) over the scored k (k >= 1): those with mask[k] != 0
 * when mask is given, otherwise k >= from.  n must fit the context. */
nm_status nm_ev_nll(nm_context *c, int32_t n_vocab, const int32_t *ids, size_t n, const uint8_t *mask, size_t from,
                    double *sum, double *sum2, int64_t *count, nm_err *err);

/* Items 0..n_items-1 shared out to workers, each with its own context made
 * from cp (n_threads is replaced: the threads are split among the
 * workers) with the adapter stack loras[0..n_loras) attached.  fn runs once per item, from any worker; the first error stops
 * the run and is returned.  progress (may be NULL) is called from the
 * calling thread with the number of items done; non-zero cancels. */
typedef nm_status (*nm_ev_item_fn)(void *user, int worker, nm_context *c, int64_t item, nm_err *err);
nm_status nm_ev_parallel(const nm_model *m, const nm_context_params *cp, const nm_lora_entry *loras, size_t n_loras,
                         int32_t threads, int64_t n_items, nm_ev_item_fn fn, void *user, nm_progress_fn progress,
                         void *puser, const char *what, int *n_workers, nm_err *err);
/* How many workers nm_ev_parallel will use for n_items (so callers can size
 * per-worker scratch before the run). */
int nm_ev_workers(int32_t threads, int64_t n_items);

/* The chat template to use for model m: by name, or the model's own
 * (NM_CHAT_TEMPLATE_DEFAULT when it has none).  UNKNOWN fails. */
nm_status nm_ev_template(const nm_model *m, const char *name, nm_chat_template *out, nm_err *err);

#endif
