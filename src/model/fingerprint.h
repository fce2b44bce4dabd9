/*
 * fingerprint.h - who is who among base models and adapters (provenance).
 *
 * Three kinds of identity, from strict to tolerant:
 *  - the base fingerprint: a hash of every tensor's name, type, shape and a
 *    sample of its bytes.  Two files have the same one when they hold the
 *    same weights stored the same way (training uses it to refuse resuming
 *    on another base);
 *  - the base signature: a hash of names and shapes plus 256 weight values
 *    sampled at fixed places and decoded to float.  The same weights stored
 *    as F32, F16, BF16 or quantized give strongly correlated samples, other
 *    weights do not: an adapter trained on a model still fits its F16 or
 *    Q8_0 copy, not another model of the same shape;
 *  - the content fingerprint of an adapter (lora.c): a hash of its rank,
 *    scale and values, the same whatever file format holds it.
 * Hashes print as 16 hex digits.
 */
#ifndef NM_MODEL_FINGERPRINT_H
#define NM_MODEL_FINGERPRINT_H

#include "nomoat.h"

#define NM_FP_HEX 17 /* 16 hex digits and the NUL */

/* A 64-bit hash that is fed in pieces (not cryptographic: it tells files
 * apart, it does not resist forgery). */
typedef struct nm_hash {
    uint64_t h;
} nm_hash;
void nm_hash_init(nm_hash *s);
void nm_hash_bytes(nm_hash *s, const void *p, size_t n);
void nm_hash_u64(nm_hash *s, uint64_t v);
uint64_t nm_hash_final(const nm_hash *s);
void nm_hash_hex(uint64_t h, char hex[NM_FP_HEX]);

/* The strict fingerprint of g's weights. */
void nm_base_fingerprint(const nm_gguf *g, char hex[NM_FP_HEX]);

/* The signature of g's weights as a malloc()ed string ("s1:" + 16 hex
 * digits of the shape hash + ":" + 256 samples as F16 hex), NULL when out of
 * memory or when g has no matrix that can be decoded. */
char *nm_base_signature(const nm_gguf *g);

/* Compares a stored signature with g: true when the names and shapes agree
 * and the samples correlate (Pearson r >= 0.9: storage types and small
 * fine-tunes keep r above 0.99, unrelated weights give r near 0).  *r gets
 * the correlation (NAN when the shapes differ or sig is malformed). */
bool nm_base_signature_match(const char *sig, const nm_gguf *g, double *r);
/* The same against a signature taken before (nm_base_signature), have. */
bool nm_base_signature_match_sig(const char *sig, const char *have, double *r);

/* A base's fingerprint and signature taken once: a model whose weights are
 * packed for its kernels (nm_mat_pack) no longer holds them as stored, so
 * it takes these first, and adapters are checked against them. */
typedef struct nm_base_ids {
    char fp[NM_FP_HEX];
    char *sig; /* nm_base_signature: malloc()ed, NULL when none */
} nm_base_ids;
void nm_base_ids_init(nm_base_ids *ids, const nm_gguf *g);
void nm_base_ids_deinit(nm_base_ids *ids);

/* What a merged model records about its origin (`nomoat merge`): the
 * fingerprint of the base it was made from and the adapters folded into it,
 * in order.  Keys in the GGUF metadata. */
#define NM_KEY_MERGE_BASE "nomoat.merge.base_fingerprint"
#define NM_KEY_MERGE_ADAPTERS "nomoat.merge.adapters" /* JSON array of {"fingerprint","scale","name"} */

#endif
