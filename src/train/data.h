/*
 * data.h - training data: files in several formats become token sequences
 * with a per-token "train on this" flag, then rows of fixed length for the
 * model (packed or padded).
 *
 * Formats:
 *   text      plain text, tokenized whole (BOS first), cut into windows of
 *             seq_len + 1 tokens overlapping by one (every token trained)
 *   alpaca    JSON array or JSONL of {"instruction", "input"?, "output",
 *             "system"?, "history"?: [[user, assistant], ...]}
 *   sharegpt  {"conversations": [{"from": "human"|"gpt"|"system", "value"}],
 *             "system"?}
 *   messages  OpenAI chat: {"messages": [{"role", "content"}]}
 * Conversations are rendered with the model's chat template; with prompt
 * masking only the tokens of assistant turns (their text and the template's
 * end-of-turn marks) are trained.
 */
#ifndef NM_TRAIN_DATA_H
#define NM_TRAIN_DATA_H

#include "nomoat.h"

typedef enum nm_data_format {
    NM_DATA_AUTO = 0,
    NM_DATA_TEXT,
    NM_DATA_ALPACA,
    NM_DATA_SHAREGPT,
    NM_DATA_MESSAGES
} nm_data_format;

/* "auto", "text", "alpaca", "sharegpt", "messages" -> format; -1 if unknown. */
int nm_data_format_parse(const char *name);
const char *nm_data_format_name(nm_data_format f);

typedef struct nm_data_opts {
    nm_data_format format;
    const nm_vocab *vocab;
    nm_chat_template tmpl;
    int64_t seq_len;       /* rows hold seq_len input tokens */
    bool mask_prompt;      /* train on assistant tokens only */
    bool skip_bad;         /* skip malformed records (counted) instead of failing */
    const char *const *vars; /* "key=value": "{{key}}" in texts becomes value */
    size_t n_vars;
    const nm_log *log;
} nm_data_opts;

typedef struct nm_dataset {
    nm_data_format format;  /* as detected */
    int32_t *tok;           /* all examples back to back */
    uint8_t *trn;           /* trn[i]: tok[i] is a trained target */
    int64_t n_tok, cap_tok;
    int64_t *ex_off, *ex_len;
    int64_t n_ex, cap_ex;
    int64_t n_records;      /* records read (text: windows) */
    int64_t n_bad;          /* records skipped as malformed */
    int64_t n_truncated;    /* examples cut to seq_len + 1 tokens */
    int64_t n_empty;        /* examples dropped: nothing left to train */
    int64_t n_trained;      /* trained target tokens in all examples */
} nm_dataset;

nm_status nm_dataset_load(const char *path, const nm_data_opts *o, nm_dataset *out, nm_err *err);
void nm_dataset_deinit(nm_dataset *d);
/* Appends one example as it is (tokens and their trained flags, no cut,
 * no checks); false if out of memory.  For readers of other record kinds
 * (preference pairs) that build a dataset of their own. */
bool nm_dataset_push(nm_dataset *d, const int32_t *tok, const uint8_t *trn, int64_t n);
/* A fingerprint of the tokens, flags and example boundaries. */
uint64_t nm_dataset_hash(const nm_dataset *d);
/* Moves a seeded random fraction of the examples of d into val (at least
 * one when frac > 0; at least one stays).  The order of both is kept. */
nm_status nm_dataset_split(nm_dataset *d, nm_dataset *val, double frac, uint64_t seed, nm_err *err);
/* The same over units of `group` consecutive examples kept together (2: the
 * chosen and rejected sides of a preference pair); seed is used as given,
 * what names the units in the error message. */
nm_status nm_dataset_split_units(nm_dataset *d, nm_dataset *val, double frac, uint64_t seed, int64_t group,
                                 const char *what, nm_err *err);

/* Rows for the model: n_rows x seq_len tokens with targets (-1: no loss),
 * positions (restarting at each packed example) and document ids. */
typedef struct nm_rows {
    int64_t seq_len, n_rows;
    int32_t *tokens, *targets, *pos, *doc;
    int64_t n_targets; /* unmasked targets in all rows */
} nm_rows;

/* The rows of one epoch: examples in a seeded random order (shuffle) or
 * as stored, packed several per row (pack) or one per row (padded). */
nm_status nm_rows_build(const nm_dataset *d, int64_t seq_len, bool pack, bool shuffle, uint64_t seed,
                        nm_rows *out, nm_err *err);
void nm_rows_deinit(nm_rows *r);
/* Unmasked targets in rows [r0, r1). */
int64_t nm_rows_count_targets(const nm_rows *r, int64_t r0, int64_t r1);

/* For readers of other record layouts (preference pairs, pref.c): calls fn
 * for each record of a JSON array or JSON-lines text, with the line it
 * starts on and its 1-based number; a non-zero return from fn stops and is
 * returned.  A broken array structure fails with "PATH:LINE: why". */
typedef nm_status (*nm_data_rec_fn)(void *user, const char *rec, size_t len, int64_t line, int64_t rec_no,
                                    nm_err *err);
nm_status nm_data_each_record(const char *path, const char *text, size_t len, nm_data_rec_fn fn, void *user,
                              nm_err *err);
/* A conversation rendered with o->tmpl and tokenized exactly as the chat
 * formats are (vars substituted, BOS, assistant mask per o->mask_prompt).
 * msgs[].role must be "system", "user" or "assistant" (static strings).
 * 0: tok and trn malloc()ed with n_tok entries; 1: bad record (why); -1: err. */
int nm_data_render(const nm_chat_msg *msgs, size_t n, const nm_data_opts *o, int32_t **tok, uint8_t **trn,
                   int64_t *n_tok, char *why, size_t cap, nm_err *err);

#endif
