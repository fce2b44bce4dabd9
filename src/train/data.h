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
/* A fingerprint of the tokens, flags and example boundaries. */
uint64_t nm_dataset_hash(const nm_dataset *d);
/* Moves a seeded random fraction of the examples of d into val (at least
 * one when frac > 0; at least one stays).  The order of both is kept. */
nm_status nm_dataset_split(nm_dataset *d, nm_dataset *val, double frac, uint64_t seed, nm_err *err);

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

#endif
