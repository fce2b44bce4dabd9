/*
 * distill.h - knowledge distillation (issue 10, docs/DISTILL.md): the
 * teacher cache, the distillation loss on the output head, the trainer's
 * view of the cache, and students derived from the teacher's layers.
 *
 * The teacher runs once over the data and keeps, for every trained
 * position, its k most likely next tokens with their log-probabilities and
 * one remainder term: the log of the probability of every other token.  So
 * the teacher's distribution is known exactly on k + 1 buckets (the top-k
 * tokens, "the rest"), and the loss compares the student with it on the
 * same buckets: the student's rest bucket is the student's probability of
 * every token outside the teacher's top-k.  Temperature applies to the
 * (k+1)-bucket distributions of both sides alike:
 *   q_b = softmax(log Pt_b / tau),  s_b = softmax(log Ps_b / tau)
 *   forward:  L = tau^2 KL(q || s),  reverse:  L = tau^2 KL(s || q)
 *   mixed:    (1 - alpha) L + alpha CE(data token)
 * (With tau = 1 this is exactly the KL of the coarse distributions; for a
 * k as large as the vocabulary it is the full KL at any tau.)
 */
#ifndef NM_DISTILL_H
#define NM_DISTILL_H

#include "nomoat.h"
#include "base/base.h"
#include "train/data.h"

#include <stdio.h>

#define NM_DCACHE_MAGIC "NMKDCACH"
#define NM_DCACHE_VERSION 1
#define NM_DCACHE_HEADER 88 /* bytes before the metadata text */
#define NM_DCACHE_MAX_K 1024

/* A teacher cache in memory: the header, the rows (as a dataset: tokens,
 * trained-target flags, example boundaries) and the entries, still encoded
 * (they are decoded per position when used: decoded they would take twice
 * the memory). */
typedef struct nm_dcache {
    uint32_t k, n_vocab, id_bytes, seq_len, flags;
    uint64_t n_pos;
    uint64_t teacher_id, data_hash, vocab_hash;
    char *meta;                  /* JSON text (owned, NUL-terminated)       */
    nm_dataset data;             /* n_ex, ex_off, ex_len, tok, trn          */
    int64_t *entry_of;           /* [n_tok]: entry of the position whose input
                                    is token i (its target i+1 is trained), -1 */
    const uint8_t *entries;      /* n_pos x entry_bytes, inside the buffer   */
    size_t entry_bytes;          /* k * id_bytes + (k + 1) * 2              */
    /* storage */
    void *map_data;              /* the file mapping (NULL for a buffer)    */
    size_t map_size;
    uint64_t file_bytes;
} nm_dcache;

#define NM_DCACHE_MASK_PROMPT 1u

/* Opens and validates a cache: every count and size against the bytes
 * that exist, the checksum, every token and id inside the vocabulary, the
 * log-probabilities finite and <= 0, the data hash of the rows.  The buffer
 * form borrows buf (it must outlive the cache): for the fuzzer and tests. */
nm_status nm_dcache_open(const char *path, nm_dcache **out, nm_err *err);
nm_status nm_dcache_open_buffer(const void *buf, size_t size, const char *name, nm_dcache **out, nm_err *err);
void nm_dcache_free(nm_dcache *c);
/* Entry e decoded: ids[k], lq[k + 1] (lq[k]: the remainder, -inf when
 * k = n_vocab). */
void nm_dcache_entry(const nm_dcache *c, uint64_t e, int32_t *ids, float *lq);

/* Encoding (the writer and the fuzzer's seeds): a header and the rows. */
typedef struct nm_dcache_hdr {
    uint32_t k, n_vocab, seq_len, flags;
    uint64_t n_pos, teacher_id, data_hash, vocab_hash;
    const char *meta;
} nm_dcache_hdr;
size_t nm_dcache_id_bytes(uint32_t n_vocab);
/* Header + metadata + rows: everything before the entries, into b. */
void nm_dcache_encode_head(const nm_dcache_hdr *h, const nm_dataset *d, nm_buf *b);
/* One entry: ids[k] and lq[k+1] (log-probs, rounded to F16) into dst. */
void nm_dcache_encode_entry(uint32_t k, size_t id_bytes, const int32_t *ids, const float *lq, uint8_t *dst);
/* The checksum that ends the file: a hash of every byte before it. */
uint64_t nm_dcache_checksum(const void *p, size_t n);

/* A hash of a vocabulary: its size, every token's text and the special ids. */
uint64_t nm_vocab_hash(const nm_vocab *v);
/* The identity of a teacher: its base fingerprint and its adapter stack
 * (content fingerprints and scales, in order). */
uint64_t nm_teacher_id(const char *base_fp, const char *const *lora_fps, const float *scales, size_t n);

/* ---- the loss ---- */
typedef struct nm_kd_cfg {
    float tau, alpha;
    bool reverse;
} nm_kd_cfg;

/* The loss of one position and, when grad, its gradient times scale in
 * place of the logits z[V].  ids[k] and lq[k+1] are the teacher's entry;
 * target the data token (used when alpha > 0).  stamp is scratch of V
 * words, mark a value not yet in it (the top-k membership test).  Returns
 * the loss, or NAN when the entry repeats an id. */
double nm_kd_position(float *z, int64_t V, const int32_t *ids, const float *lq, int k, int32_t target,
                      const nm_kd_cfg *cfg, float scale, bool grad, uint32_t *stamp, uint32_t mark);

/* ---- the trainer's side (hooks in src/train/trainer.c) ---- */
typedef struct nm_kd nm_kd;
/* Opens the cache for a student with vocabulary v: the same tokenizer as
 * the teacher's, or an error saying so. */
nm_status nm_kd_open(const char *path, const nm_vocab *v, int64_t n_vocab, const nm_kd_cfg *cfg, nm_kd **out,
                     nm_err *err);
void nm_kd_free(nm_kd *kd);
uint64_t nm_kd_teacher_id(const nm_kd *kd);
/* The data as loaded (before any validation split) must be the data the
 * cache was made from. */
nm_status nm_kd_check_data(const nm_kd *kd, const nm_dataset *d, const char *path, nm_err *err);
/* After the rows of an epoch were built from train (the training examples,
 * in their order, a subsequence of the cache's): the same rows of cache
 * positions, to find each cell's teacher entry. */
nm_status nm_kd_rows(nm_kd *kd, const nm_dataset *train, int64_t seq_len, bool pack, bool shuffle, uint64_t seed,
                     const nm_rows *rows, nm_err *err);
/* nm_tmodel_fwd_bwd with the distillation loss for the micro-batch b whose
 * first sequence is row row0 of the epoch's rows. */
struct nm_tmodel;
struct nm_tm_lora;
struct nm_tm_batch;
nm_status nm_kd_fwd_bwd(nm_kd *kd, struct nm_tmodel *m, struct nm_tm_lora *lora, const struct nm_tm_batch *b,
                        int64_t row0, float dloss, uint64_t drop_seed, double *loss_sum, int64_t *n_tok, nm_err *err);
/* Forward only, same loss (tests, reports). */
nm_status nm_kd_eval(nm_kd *kd, struct nm_tmodel *m, struct nm_tm_lora *lora, const struct nm_tm_batch *b,
                     int64_t row0, double *loss_sum, int64_t *n_tok, nm_err *err);

#endif
