/*
 * pref.h - preference pairs for DPO: a prompt with a chosen and a rejected
 * answer, read from the common layouts and tokenized with the model's chat
 * template exactly as the chat training formats are.
 *
 * Layouts (JSON array or JSON lines; each record decides on its own):
 *   ShareGPT   {"conversations": [{"from", "value"}...], "chosen": {"from",
 *              "value"}, "rejected": {...}}  (LLaMA-Factory's dpo_en_demo)
 *   flat       {"prompt": STRING | MESSAGES, "chosen": STRING | MESSAGES,
 *              "rejected": ...}; MESSAGES are [{"role", "content"}] or
 *              [{"from", "value"}]; "system" optional
 *   transcript {"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected":
 *              ...} (Anthropic HH-RLHF): the prompt is the longest common
 *              prefix that ends at an "\n\nAssistant:" turn
 * A chosen or rejected given as several messages keeps only the last
 * assistant message as the answer (earlier ones belong to the prompt).
 *
 * The pairs are stored in an nm_dataset (data.h) two examples each:
 * example 2i is prompt + chosen answer, 2i+1 prompt + rejected answer, and
 * trn marks the answer tokens only (the last assistant turn, with the
 * template's end-of-turn marks).  Examples longer than seq_len + 1 tokens
 * are cut at the end (n_truncated); a pair that has no answer token left on
 * either side is dropped (n_empty).
 */
#ifndef NM_TRAIN_PREF_H
#define NM_TRAIN_PREF_H

#include "train/data.h"

/* o->format and o->mask_prompt are ignored (answers are always masked). */
nm_status nm_pref_load(const char *path, const nm_data_opts *o, nm_dataset *out, nm_err *err);
/* The same from a text in memory (path names it in messages). */
nm_status nm_pref_load_text(const char *path, const char *text, size_t len, const nm_data_opts *o, nm_dataset *out,
                            nm_err *err);
int64_t nm_pref_n_pairs(const nm_dataset *d);
/* Moves a seeded random fraction of the pairs into val (at least one when
 * frac > 0; at least one stays); both keep their order. */
nm_status nm_pref_split(nm_dataset *d, nm_dataset *val, double frac, uint64_t seed, nm_err *err);
/* Rows for the model, one sequence per row (padded, never packed): row 2k
 * is the chosen and row 2k+1 the rejected side of pair (*pair)[k], pairs in
 * a seeded random order (shuffle) or as stored.  *pair is malloc()ed. */
nm_status nm_pref_rows(const nm_dataset *d, int64_t seq_len, bool shuffle, uint64_t seed, nm_rows *out,
                       int64_t **pair, nm_err *err);

#endif
