/*
 * nomoat.h - the one public header of nomoat.
 *
 * nomoat runs, fine-tunes, stacks, merges, distils and serves LLaMA-family
 * models on a CPU.  Everything a program needs is declared here with the
 * prefix nm_; everything under src/ is internal.
 *
 * Conventions (the same everywhere):
 *  - Errors are values.  A function that can fail returns nm_status and, when
 *    given a non-NULL nm_err, fills it with a one-line message naming the
 *    file or object and what is wrong.  The library never exits and never
 *    prints; it reports through nm_err and, where given, an nm_log callback.
 *  - Ownership follows names: X_new/X_open return an object the caller frees
 *    with X_free; X_init/X_deinit work on caller-provided storage.
 *  - No global mutable state: every object carries what it needs.
 */
#ifndef NOMOAT_H
#define NOMOAT_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NM_VERSION_MAJOR 0
#define NM_VERSION_MINOR 1
#define NM_VERSION_PATCH 0
#define NM_VERSION_STRING "0.1.0"

/* ------------------------------------------------------------------------ */
/* Errors, logging, progress                                                */
/* ------------------------------------------------------------------------ */

typedef enum nm_status {
    NM_OK = 0,
    NM_ERR_IO,          /* open/read/write/mmap failed                  */
    NM_ERR_FORMAT,      /* the bytes of a file are not what they claim  */
    NM_ERR_NOMEM,       /* allocation failed                            */
    NM_ERR_ARG,         /* the caller passed something invalid          */
    NM_ERR_UNSUPPORTED, /* valid, but not something nomoat does (yet)   */
    NM_ERR_NOT_FOUND,   /* a key, tensor, token... is not there         */
    NM_ERR_RANGE,       /* a value or size outside what fits            */
    NM_ERR_CANCELLED,   /* a progress callback or signal asked to stop  */
    NM_ERR_INTERNAL
} nm_status;

#define NM_ERR_MSG_MAX 512

/* Filled by a failing call.  Stack-allocate one, pass its address, print
 * err.msg when the status is not NM_OK. */
typedef struct nm_err {
    nm_status code;
    char msg[NM_ERR_MSG_MAX];
} nm_err;

/* Sets err (if non-NULL) and returns code, so callers can write
 * `return nm_err_set(err, NM_ERR_IO, "%s: %s", path, strerror(errno));` */
nm_status nm_err_set(nm_err *err, nm_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void nm_err_clear(nm_err *err);
/* Short, constant name of a status ("io error", "bad format", ...). */
const char *nm_status_str(nm_status s);

typedef enum nm_log_level {
    NM_LOG_DEBUG = 0,
    NM_LOG_INFO = 1,
    NM_LOG_WARN = 2,
    NM_LOG_ERROR = 3
} nm_log_level;

/* The only way the library speaks.  A NULL nm_log (or fn) means silence. */
typedef void (*nm_log_fn)(void *user, nm_log_level level, const char *msg);
typedef struct nm_log {
    nm_log_fn fn;
    void *user;
    nm_log_level min_level;
} nm_log;

void nm_logf(const nm_log *log, nm_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Long jobs report progress; returning non-zero cancels the job, which then
 * fails with NM_ERR_CANCELLED after leaving every file it wrote intact. */
typedef int (*nm_progress_fn)(void *user, uint64_t done, uint64_t total, const char *what);

const char *nm_version(void);

/* ------------------------------------------------------------------------ */
/* Tensor types (ggml/GGUF type ids and block layouts, bit for bit)         */
/* ------------------------------------------------------------------------ */

typedef enum nm_type {
    NM_TYPE_F32 = 0,
    NM_TYPE_F16 = 1,
    NM_TYPE_Q4_0 = 2,
    NM_TYPE_Q4_1 = 3,
    NM_TYPE_Q5_0 = 6,
    NM_TYPE_Q5_1 = 7,
    NM_TYPE_Q8_0 = 8,
    NM_TYPE_Q8_1 = 9,
    NM_TYPE_Q2_K = 10,
    NM_TYPE_Q3_K = 11,
    NM_TYPE_Q4_K = 12,
    NM_TYPE_Q5_K = 13,
    NM_TYPE_Q6_K = 14,
    NM_TYPE_Q8_K = 15,
    NM_TYPE_I8 = 24,
    NM_TYPE_I16 = 25,
    NM_TYPE_I32 = 26,
    NM_TYPE_I64 = 27,
    NM_TYPE_F64 = 28,
    NM_TYPE_BF16 = 30,
    NM_TYPE_COUNT = 40 /* one past the largest id the table may hold */
} nm_type;

/* True if nomoat knows the block layout of type id t (it can size, read and
 * write such tensors even if it cannot compute with them). */
bool nm_type_known(uint32_t t);
/* Lower-case name ("f32", "q4_k"...), or NULL for an unknown id. */
const char *nm_type_name(uint32_t t);
/* Parses a name as nm_type_name prints it (case-insensitive); -1 if unknown. */
int nm_type_from_name(const char *name);
int64_t nm_type_block_size(nm_type t);  /* elements per block */
size_t nm_type_block_bytes(nm_type t);  /* bytes per block    */
/* Bytes of a row of n elements; 0 if n is not a multiple of the block size
 * or the product overflows. */
size_t nm_type_row_bytes(nm_type t, int64_t n);
bool nm_type_can_dequantize(nm_type t);
bool nm_type_can_quantize(nm_type t);
/* n must be a multiple of the block size. */
nm_status nm_dequantize(nm_type t, const void *src, float *dst, int64_t n, nm_err *err);
nm_status nm_quantize(nm_type t, const float *src, void *dst, int64_t n, nm_err *err);

float nm_f16_to_f32(uint16_t h);
uint16_t nm_f32_to_f16(float f);
float nm_bf16_to_f32(uint16_t h);
uint16_t nm_f32_to_bf16(float f);

/* ------------------------------------------------------------------------ */
/* GGUF: reader (memory-mapped) and writer                                  */
/* ------------------------------------------------------------------------ */

typedef enum nm_gguf_vtype {
    NM_GGUF_UINT8 = 0,
    NM_GGUF_INT8 = 1,
    NM_GGUF_UINT16 = 2,
    NM_GGUF_INT16 = 3,
    NM_GGUF_UINT32 = 4,
    NM_GGUF_INT32 = 5,
    NM_GGUF_FLOAT32 = 6,
    NM_GGUF_BOOL = 7,
    NM_GGUF_STRING = 8,
    NM_GGUF_ARRAY = 9,
    NM_GGUF_UINT64 = 10,
    NM_GGUF_INT64 = 11,
    NM_GGUF_FLOAT64 = 12,
    NM_GGUF_VTYPE_COUNT
} nm_gguf_vtype;

#define NM_GGUF_MAX_DIMS 4
#define NM_GGUF_DEFAULT_ALIGNMENT 32

typedef struct nm_gguf nm_gguf;

/* A string inside a GGUF file: not NUL-terminated, points into the mapping. */
typedef struct nm_str {
    const char *ptr;
    uint64_t len;
} nm_str;

typedef struct nm_gguf_tensor {
    const char *name;     /* NUL-terminated copy owned by the nm_gguf  */
    uint32_t type;        /* nm_type id                                */
    uint32_t n_dims;
    int64_t ne[NM_GGUF_MAX_DIMS]; /* ggml order: ne[0] is the row length;
                                     unused dims are 1                  */
    uint64_t offset;      /* relative to the start of the data section */
    uint64_t nbytes;
    const void *data;     /* inside the mapping                        */
} nm_gguf_tensor;

/* Opens and validates a GGUF file (v2 or v3) through mmap.  Every count,
 * length, type id, dimension and offset is checked before use. */
nm_status nm_gguf_open(const char *path, nm_gguf **out, nm_err *err);
/* Same, the whole file read into memory instead of mapped (anonymous memory
 * advised for transparent huge pages, which the kernels stream faster);
 * nm_model_load uses it for models that fit in the memory available. */
nm_status nm_gguf_open_read(const char *path, nm_gguf **out, nm_err *err);
/* Opened with nm_gguf_open_read: its memory made writable (true) or
 * read-only again (false), for a caller that rewrites tensor data in place
 * (nm_model_load packs weights for its kernels).  Mapped or on a caller's
 * buffer: NM_ERR_UNSUPPORTED, nothing changed. */
nm_status nm_gguf_set_writable(nm_gguf *g, bool writable, nm_err *err);
/* Same, on a caller-owned buffer that must outlive the nm_gguf (used by the
 * fuzzer and tests).  name is used in error messages. */
nm_status nm_gguf_open_buffer(const void *buf, size_t size, const char *name,
                              nm_gguf **out, nm_err *err);
void nm_gguf_free(nm_gguf *g);

uint32_t nm_gguf_version(const nm_gguf *g);
uint32_t nm_gguf_alignment(const nm_gguf *g);
uint64_t nm_gguf_data_offset(const nm_gguf *g);  /* file offset of tensor data */
const char *nm_gguf_path(const nm_gguf *g);
size_t nm_gguf_file_size(const nm_gguf *g);

int64_t nm_gguf_n_kv(const nm_gguf *g);
int64_t nm_gguf_find_key(const nm_gguf *g, const char *key); /* -1 if absent */
nm_str nm_gguf_key(const nm_gguf *g, int64_t i);
nm_gguf_vtype nm_gguf_kv_type(const nm_gguf *g, int64_t i);
/* For arrays: element type and count (nested arrays report NM_GGUF_ARRAY). */
nm_gguf_vtype nm_gguf_arr_type(const nm_gguf *g, int64_t i);
uint64_t nm_gguf_arr_n(const nm_gguf *g, int64_t i);
/* Raw pointer to the elements of an array of fixed-size scalars (may be
 * unaligned: copy with memcpy), NULL for string/nested arrays. */
const void *nm_gguf_arr_data(const nm_gguf *g, int64_t i);
/* j-th string of an array of strings (index checked: empty if out of range). */
nm_str nm_gguf_arr_str(const nm_gguf *g, int64_t i, uint64_t j);
/* The encoded bytes of value i (after its type tag), as stored in the file. */
const void *nm_gguf_kv_raw(const nm_gguf *g, int64_t i, size_t *len);

/* Typed getters by key.  Integer getters accept any integer type whose value
 * fits; float getters accept float32/float64.  They fail with
 * NM_ERR_NOT_FOUND if the key is absent, NM_ERR_FORMAT if the type does not
 * fit. */
nm_status nm_gguf_get_u64(const nm_gguf *g, const char *key, uint64_t *v, nm_err *err);
nm_status nm_gguf_get_i64(const nm_gguf *g, const char *key, int64_t *v, nm_err *err);
nm_status nm_gguf_get_u32(const nm_gguf *g, const char *key, uint32_t *v, nm_err *err);
nm_status nm_gguf_get_f64(const nm_gguf *g, const char *key, double *v, nm_err *err);
nm_status nm_gguf_get_f32(const nm_gguf *g, const char *key, float *v, nm_err *err);
nm_status nm_gguf_get_bool(const nm_gguf *g, const char *key, bool *v, nm_err *err);
nm_status nm_gguf_get_str(const nm_gguf *g, const char *key, nm_str *v, nm_err *err);

int64_t nm_gguf_n_tensors(const nm_gguf *g);
const nm_gguf_tensor *nm_gguf_tensor_at(const nm_gguf *g, int64_t i);
const nm_gguf_tensor *nm_gguf_find_tensor(const nm_gguf *g, const char *name);

/* Writer: collect metadata and tensors, then write atomically (temporary
 * file, fsync, rename).  Tensor data is laid out in the order added, each
 * padded to the alignment, as ggml does, so reading a file and adding its
 * keys and tensors in order writes it back byte for byte. */
typedef struct nm_gguf_writer nm_gguf_writer;

nm_gguf_writer *nm_gguf_writer_new(uint32_t version);
void nm_gguf_writer_free(nm_gguf_writer *w);
/* Setting a key that exists replaces its value in place (order kept). */
nm_status nm_gguf_writer_set_u8(nm_gguf_writer *w, const char *key, uint8_t v);
nm_status nm_gguf_writer_set_i8(nm_gguf_writer *w, const char *key, int8_t v);
nm_status nm_gguf_writer_set_u16(nm_gguf_writer *w, const char *key, uint16_t v);
nm_status nm_gguf_writer_set_i16(nm_gguf_writer *w, const char *key, int16_t v);
nm_status nm_gguf_writer_set_u32(nm_gguf_writer *w, const char *key, uint32_t v);
nm_status nm_gguf_writer_set_i32(nm_gguf_writer *w, const char *key, int32_t v);
nm_status nm_gguf_writer_set_u64(nm_gguf_writer *w, const char *key, uint64_t v);
nm_status nm_gguf_writer_set_i64(nm_gguf_writer *w, const char *key, int64_t v);
nm_status nm_gguf_writer_set_f32(nm_gguf_writer *w, const char *key, float v);
nm_status nm_gguf_writer_set_f64(nm_gguf_writer *w, const char *key, double v);
nm_status nm_gguf_writer_set_bool(nm_gguf_writer *w, const char *key, bool v);
nm_status nm_gguf_writer_set_str(nm_gguf_writer *w, const char *key, const char *v);
nm_status nm_gguf_writer_set_strn(nm_gguf_writer *w, const char *key, const char *v, size_t len);
/* Array of n fixed-size scalars of type et (data in little-endian layout). */
nm_status nm_gguf_writer_set_arr(nm_gguf_writer *w, const char *key, nm_gguf_vtype et,
                                 const void *data, uint64_t n);
nm_status nm_gguf_writer_set_arr_str(nm_gguf_writer *w, const char *key,
                                     const char *const *strs, uint64_t n);
/* Copies key i of g with its value exactly as stored. */
nm_status nm_gguf_writer_copy_kv(nm_gguf_writer *w, const nm_gguf *g, int64_t i);
nm_status nm_gguf_writer_remove(nm_gguf_writer *w, const char *key);
/* data is borrowed until the write: it must stay valid until then.
 * nbytes must equal the size implied by type and dims. */
nm_status nm_gguf_writer_add_tensor(nm_gguf_writer *w, const char *name, nm_type type,
                                    uint32_t n_dims, const int64_t *ne,
                                    const void *data, uint64_t nbytes, nm_err *err);
/* Like add_tensor, but the writer takes ownership of data (free()d). */
nm_status nm_gguf_writer_add_tensor_owned(nm_gguf_writer *w, const char *name, nm_type type,
                                          uint32_t n_dims, const int64_t *ne,
                                          void *data, uint64_t nbytes, nm_err *err);
/* Produces a tensor's bytes when the file is written: fill(user, index,
 * buf, nbytes, err) must write exactly nbytes into buf.  index is the
 * tensor's position in the file.  Lets big files be written with memory for
 * one tensor at a time. */
typedef nm_status (*nm_gguf_fill_fn)(void *user, size_t index, void *buf, uint64_t nbytes, nm_err *err);
nm_status nm_gguf_writer_add_tensor_fn(nm_gguf_writer *w, const char *name, nm_type type, uint32_t n_dims,
                                       const int64_t *ne, uint64_t nbytes, nm_gguf_fill_fn fill, void *user,
                                       nm_err *err);
nm_status nm_gguf_writer_write(nm_gguf_writer *w, const char *path, nm_err *err);

/* Copies every key and tensor of g into a new writer (same version and key
 * order): the starting point for conversions that change a few things. */
nm_status nm_gguf_writer_from(const nm_gguf *g, nm_gguf_writer **out, nm_err *err);

/* What `nomoat info` prints: a summary (architecture, hyper-parameters,
 * tokenizer, metadata, tensors) as text or as one JSON object.  *out is
 * malloc()ed, NUL-terminated. */
nm_status nm_gguf_describe(const nm_gguf *g, bool json, char **out, nm_err *err);

/* ------------------------------------------------------------------------ */
/* Conversions and model files                                              */
/* ------------------------------------------------------------------------ */

/* Imports a llama2.c checkpoint (version 0 header, shared or separate
 * classifier) and its llama2.c tokenizer into a GGUF file. */
nm_status nm_llama2c_to_gguf(const char *ckpt_path, const char *tok_path,
                             const char *out_path, const nm_log *log, nm_err *err);

/* Rewrites a GGUF file; if type >= 0, converts the 2-D weight matrices
 * (not norms, not 1-D tensors) to that type. */
nm_status nm_gguf_convert(const char *in_path, const char *out_path, int type,
                          const nm_log *log, nm_err *err);

/* Random-weight LLaMA models for benchmarks and training from scratch. */
typedef struct nm_new_params {
    const char *preset; /* "t256", "m15", "m110", "tl1b" or NULL        */
    int64_t dim, layers, heads, kv_heads, ffn, ctx; /* 0: from preset     */
    const char *vocab_from; /* GGUF whose tokenizer.* keys are copied    */
    nm_type type;       /* type of the 2-D weight matrices               */
    uint64_t seed;
    float init_std;     /* standard deviation of weights (0: 0.02)       */
} nm_new_params;
nm_status nm_model_new_random(const nm_new_params *p, const char *out_path,
                              const nm_log *log, nm_err *err);

/* ------------------------------------------------------------------------ */
/* Tokenizer (src/text): SentencePiece-style and byte-level BPE, from the   */
/* tokenizer.ggml.* metadata of a GGUF file                                 */
/* ------------------------------------------------------------------------ */

typedef struct nm_vocab nm_vocab;

/* Builds the tokenizer described by g's tokenizer.ggml.* keys.  The vocab
 * copies what it needs: g may be freed afterwards.  log receives warnings
 * (e.g. an unknown pre-tokenizer type). */
nm_status nm_vocab_from_gguf(const nm_gguf *g, nm_vocab **out, const nm_log *log, nm_err *err);
void nm_vocab_free(nm_vocab *v);

int32_t nm_vocab_n_tokens(const nm_vocab *v);
int32_t nm_vocab_bos(const nm_vocab *v); /* -1 when the vocabulary has none */
int32_t nm_vocab_eos(const nm_vocab *v);
int32_t nm_vocab_eot(const nm_vocab *v);
int32_t nm_vocab_pad(const nm_vocab *v);
bool nm_vocab_add_bos(const nm_vocab *v); /* tokenizer.ggml.add_bos_token or the model default */
bool nm_vocab_add_eos(const nm_vocab *v);
/* End of generation: EOS, EOT and other end-of-turn control tokens. */
bool nm_vocab_is_eog(const nm_vocab *v, int32_t id);
bool nm_vocab_is_control(const nm_vocab *v, int32_t id);
/* The raw token text as stored in the vocabulary (e.g. "\xe2\x96\x81the"). */
const char *nm_vocab_token_text(const nm_vocab *v, int32_t id);

/* Tokenizes text[0..len).  add_special: add BOS/EOS as the vocabulary's
 * flags say.  parse_special: recognise special/control token texts in the
 * input (otherwise they are ordinary text).  *ids is malloc()ed. */
nm_status nm_tokenize(const nm_vocab *v, const char *text, size_t len, bool add_special, bool parse_special,
                      int32_t **ids, size_t *n_ids, nm_err *err);
/* The bytes of one token as they appear in text (SentencePiece space marks
 * become spaces, byte tokens their byte, BPE bytes are unmapped).  Control
 * tokens give "" unless special is true.  Returns the length written (not
 * NUL-terminated) or, if cap is too small, minus the length needed. */
int32_t nm_token_to_piece(const nm_vocab *v, int32_t id, char *buf, size_t cap, bool special);
/* Concatenated pieces of ids, with the leading space that SentencePiece adds
 * removed when remove_leading_space.  *out is malloc()ed, NUL-terminated. */
nm_status nm_detokenize(const nm_vocab *v, const int32_t *ids, size_t n, bool remove_leading_space, bool special,
                        char **out, size_t *out_len, nm_err *err);

/* Streaming detokenizer: feed ids one by one, get text that is safe to
 * print (a UTF-8 character split across tokens is held back until whole). */
typedef struct nm_detok_stream {
    const nm_vocab *vocab;
    char pending[16];
    size_t n_pending;
    bool first;        /* no text emitted yet (for the leading space rule) */
    bool special;
} nm_detok_stream;
/* Starts with first = true: like nm_detokenize(remove_leading_space), the
 * SentencePiece space before the first text (and after special tokens) is
 * dropped.  To stream a continuation of text already printed (generated
 * tokens after a prompt), set s->first = false after init. */
void nm_detok_stream_init(nm_detok_stream *s, const nm_vocab *v, bool special);
/* Appends the printable bytes for id to buf (cap bytes); returns the count
 * written, or a negative value if cap is too small (nothing consumed). */
int32_t nm_detok_stream_push(nm_detok_stream *s, int32_t id, char *buf, size_t cap);
/* Whatever remains (an incomplete character is emitted as U+FFFD). */
int32_t nm_detok_stream_flush(nm_detok_stream *s, char *buf, size_t cap);

/* ------------------------------------------------------------------------ */
/* Sampling (src/generate): next-token choice as llama.cpp's default chain  */
/* does it, and stop strings                                                */
/* ------------------------------------------------------------------------ */

/* Added to one token's logit before anything else (-INFINITY bans it). */
typedef struct nm_logit_bias {
    int32_t token;
    float bias;
} nm_logit_bias;

/* NM_SEED_RANDOM asks nm_sampler_new for a fresh seed (nm_sampler_seed
 * tells which one it took). */
#define NM_SEED_RANDOM UINT64_MAX

/* The steps run in this order, each one off at its neutral value:
 *   1. logit bias          logit[t] += bias
 *   2. penalties           over the last penalty_last_n accepted tokens, a
 *                          token seen count > 0 times gets: logit /= repeat
 *                          if logit > 0 else logit *= repeat; then
 *                          logit -= count * frequency + presence
 *   3. top-k               keep the k most likely (k <= 0: off)
 *   4. top-p               keep the smallest most-likely set whose
 *                          probability reaches p (p >= 1: off)
 *   5. min-p               keep tokens with prob >= min_p * max prob (<= 0: off)
 *   6. temperature         logits / T, then a seeded draw from their softmax;
 *                          T <= 0: greedy (the argmax after steps 1-2)
 * Probabilities in 4 and 5 are taken before the temperature, as llama.cpp's
 * chain does.  At least one token always survives 3-5. */
typedef struct nm_sampler_params {
    float temperature;       /* default 0.8 */
    int32_t top_k;           /* default 40 */
    float top_p;             /* default 0.95 */
    float min_p;             /* default 0.05 */
    float repeat_penalty;    /* default 1.0 (off) */
    float frequency_penalty; /* default 0.0 */
    float presence_penalty;  /* default 0.0 */
    int32_t penalty_last_n;  /* default 64; 0: penalties off */
    uint64_t seed;           /* default NM_SEED_RANDOM */
    /* Copied by nm_sampler_new; the caller keeps ownership. */
    const nm_logit_bias *logit_bias;
    size_t n_logit_bias;
    /* Stop strings: not used by the sampler itself, carried here so one
     * struct describes a generation (see nm_stop_find). */
    const char *const *stop;
    size_t n_stop;
} nm_sampler_params;

nm_sampler_params nm_sampler_params_default(void);

typedef struct nm_sampler nm_sampler;

/* Checks the parameters (NM_ERR_ARG names the bad one: a bias token outside
 * [0, n_vocab) or +inf/NaN, a negative top_p, min_p outside [0, 1], a
 * repeat penalty <= 0, a negative penalty_last_n...) and allocates every
 * buffer sampling needs, so sampling never allocates. */
nm_status nm_sampler_new(const nm_sampler_params *p, int32_t n_vocab, nm_sampler **out, nm_err *err);
void nm_sampler_free(nm_sampler *s);
/* Picks the next token from logits[0..n_vocab).  NaN logits count as
 * -INFINITY.  Returns -1 only when every token is banned (all -INFINITY). */
int32_t nm_sampler_sample(nm_sampler *s, const float *logits);
/* Records a token of the text (prompt or generated) for the penalties. */
void nm_sampler_accept(nm_sampler *s, int32_t id);
/* Forgets the history and restarts the random sequence from the seed. */
void nm_sampler_reset(nm_sampler *s);
/* The seed in use (the drawn one when the params said NM_SEED_RANDOM). */
uint64_t nm_sampler_seed(const nm_sampler *s);

/* Stop strings while streaming.  text[0..len) is everything generated so
 * far.  Returns true if some non-empty stop string occurs in it; then
 * *stop_at is where the earliest occurrence starts (the answer is
 * text[0..*stop_at)).  *safe_len (may be NULL) is how many bytes can be
 * printed now: up to the stop string if one was found, otherwise len minus
 * the longest tail that could still grow into a stop string. */
bool nm_stop_find(const char *text, size_t len, const char *const *stops, size_t n_stops,
                  size_t *stop_at, size_t *safe_len);

/* ------------------------------------------------------------------------ */
/* Chat templates (src/text/chat_template.c): a conversation rendered into  */
/* a prompt the way llama.cpp's llama_chat_apply_template renders it        */
/* ------------------------------------------------------------------------ */

typedef enum nm_chat_template {
    NM_CHAT_TEMPLATE_UNKNOWN = 0,
    NM_CHAT_TEMPLATE_CHATML,
    NM_CHAT_TEMPLATE_LLAMA2,           /* [INST] ... [/INST], system as plain text */
    NM_CHAT_TEMPLATE_LLAMA2_SYS,       /* with <<SYS>> */
    NM_CHAT_TEMPLATE_LLAMA2_SYS_BOS,   /* with <<SYS>> and <s> before later turns */
    NM_CHAT_TEMPLATE_LLAMA2_SYS_STRIP, /* with <<SYS>>, contents trimmed */
    NM_CHAT_TEMPLATE_MISTRAL_V1,
    NM_CHAT_TEMPLATE_MISTRAL_V3,
    NM_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN,
    NM_CHAT_TEMPLATE_MISTRAL_V7,
    NM_CHAT_TEMPLATE_MISTRAL_V7_TEKKEN,
    NM_CHAT_TEMPLATE_LLAMA3,
    NM_CHAT_TEMPLATE_LLAMA4,
    NM_CHAT_TEMPLATE_PHI3,
    NM_CHAT_TEMPLATE_PHI4,
    NM_CHAT_TEMPLATE_ZEPHYR,
    NM_CHAT_TEMPLATE_TINYLLAMA,        /* zephyr's format with </s> (TinyLlama-Chat, zephyr-7b-beta) */
    NM_CHAT_TEMPLATE_FALCON3,
    NM_CHAT_TEMPLATE_GEMMA,
    NM_CHAT_TEMPLATE_MONARCH,
    NM_CHAT_TEMPLATE_ORION,
    NM_CHAT_TEMPLATE_OPENCHAT,
    NM_CHAT_TEMPLATE_VICUNA,
    NM_CHAT_TEMPLATE_VICUNA_ORCA,
    NM_CHAT_TEMPLATE_DEEPSEEK,
    NM_CHAT_TEMPLATE_DEEPSEEK2,
    NM_CHAT_TEMPLATE_DEEPSEEK3,
    NM_CHAT_TEMPLATE_COMMAND_R,
    NM_CHAT_TEMPLATE_CHATGLM3,
    NM_CHAT_TEMPLATE_CHATGLM4,
    NM_CHAT_TEMPLATE_GLMEDGE,
    NM_CHAT_TEMPLATE_MINICPM,
    NM_CHAT_TEMPLATE_EXAONE3,
    NM_CHAT_TEMPLATE_GRANITE,
    NM_CHAT_TEMPLATE_MEGREZ,
    NM_CHAT_TEMPLATE_BAILING,
    NM_CHAT_TEMPLATE_COUNT
} nm_chat_template;

/* What a model without tokenizer.chat_template gets (docs/CHAT.md). */
#define NM_CHAT_TEMPLATE_DEFAULT NM_CHAT_TEMPLATE_CHATML

typedef struct nm_chat_msg {
    const char *role;    /* "system", "user", "assistant" (others pass through) */
    const char *content;
} nm_chat_msg;

/* By name: llama.cpp's names ("chatml", "llama2", "llama3", "phi3",
 * "gemma", "zephyr", "mistral-v7"...) and the aliases "llama-2", "llama-3",
 * "phi-3", "mistral" (= mistral-v1).  UNKNOWN if none. */
nm_chat_template nm_chat_template_from_name(const char *name);
/* The canonical name, or NULL for UNKNOWN / out of range. */
const char *nm_chat_template_name(nm_chat_template t);
/* From the Jinja text of tokenizer.chat_template: a known name is taken as
 * such, otherwise llama.cpp's substring heuristics ("<|im_start|>" ->
 * chatml, "[INST]" -> llama2/mistral variants, "<|start_header_id|>" ->
 * llama3, ...).  UNKNOWN if nothing matches (NULL gives UNKNOWN too). */
nm_chat_template nm_chat_template_detect(const char *jinja);
/* The template of a model file: detected from tokenizer.chat_template,
 * NM_CHAT_TEMPLATE_DEFAULT when the key is absent, UNKNOWN when it is there
 * but not recognised. */
nm_chat_template nm_chat_template_of_gguf(const nm_gguf *g);
/* Renders msgs[0..n) into *out (malloc()ed, NUL-terminated).  With
 * add_assistant_prefix the text ends with the opening of an assistant turn
 * (e.g. "<|im_start|>assistant\n") for templates that have one.  No BOS is
 * written: tokenize the prompt with add_special so the vocabulary adds it.
 * Special-token texts in the result (e.g. "<|im_end|>") are meant to be
 * tokenized with parse_special. */
nm_status nm_chat_render(nm_chat_template tmpl, const nm_chat_msg *msgs, size_t n, bool add_assistant_prefix,
                         char **out, nm_err *err);

/* ------------------------------------------------------------------------ */
/* Model and inference (src/model): the LLaMA family as GGUF describes it   */
/* ------------------------------------------------------------------------ */
/*
 * Supported: general.architecture "llama" (LLaMA 1/2/3, Mistral, SmolLM,
 * TinyLlama... - they differ only in metadata) and "qwen2" (q/k/v biases,
 * NeoX-style RoPE).  Weights stay memory-mapped in their stored type (F32,
 * F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K); matrix products
 * run on the stored blocks.  The KV cache is F16 (as llama.cpp) or F32.
 *
 * Typical use (see examples/simple.c):
 *   nm_model_load -> nm_context_new -> nm_tokenize(nm_model_vocab(m), ...)
 *   -> nm_decode(prompt) -> loop { nm_sampler_sample(nm_get_logits) ->
 *   nm_decode(1 token) } -> nm_context_free -> nm_model_free.
 * Several sequences at once (a server's slots): one context each, all on
 * one shared nm_pool, and one nm_decode_batch per step over all of them.
 */

typedef struct nm_model nm_model;
typedef struct nm_context nm_context;

typedef struct nm_model_info {
    const char *arch;         /* general.architecture, owned by the model */
    int32_t n_vocab;          /* rows of the token embedding              */
    int32_t n_ctx_train;      /* context length the model was trained for */
    int32_t n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    int32_t n_rot;            /* RoPE dimensions per head                 */
    float norm_eps, rope_freq_base, rope_freq_scale;
    bool tied_output;         /* no output.weight: the embedding is reused */
    uint64_t n_params;        /* elements of all tensors                  */
    uint64_t weight_bytes;    /* bytes of tensor data                     */
    bool in_memory;           /* the file was read into memory, not mapped */
    int32_t n_packed;         /* weight matrices packed for the kernels    */
} nm_model_info;

/* Loads a GGUF model and checks every tensor the architecture needs (name,
 * shape, type) before returning: an unsupported architecture, a missing
 * tensor or a type without a kernel fails with a message naming it.  When
 * the file has tokenizer.ggml.* keys the vocabulary is built too.  The file
 * is read into memory (huge pages) when it takes at most half of the memory
 * available, else mapped; NOMOAT_MMAP=1 in the environment always maps it
 * (pages shared between processes).  nm_model_info says which.  Read into
 * memory, the weight matrices whose kernels have a packed layout (AVX-512
 * and AVX2: Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) are rewritten in it, in place:
 * same results, faster generation; NOMOAT_PACK=0 keeps them as stored. */
nm_status nm_model_load(const char *path, const nm_log *log, nm_model **out, nm_err *err);
void nm_model_free(nm_model *m);
void nm_model_get_info(const nm_model *m, nm_model_info *info);
/* NULL when the file has no tokenizer. */
const nm_vocab *nm_model_vocab(const nm_model *m);
/* The model's file: metadata, and tensors as stored except the matrices
 * the model packed (nm_model_load); open the file again to read those. */
const nm_gguf *nm_model_gguf(const nm_model *m);

/* A pool of compute threads (src/base/threads.c).  Every context runs its
 * forward passes on one; by default each context starts its own, and
 * contexts that are decoded together (nm_decode_batch, a server's slots)
 * share one instead, so that idle pools do not compete for the CPUs.
 * n_threads counts the calling thread. */
typedef struct nm_pool nm_pool;
nm_status nm_pool_new(int n_threads, nm_pool **out, nm_err *err);
void nm_pool_free(nm_pool *p);

typedef struct nm_context_params {
    int32_t n_ctx;     /* KV cache length in tokens; 0: the training context
                          capped at 4096                                      */
    int32_t n_batch;   /* most tokens per forward pass (longer inputs are cut
                          in batches); 0: min(n_ctx, 512).  In nm_decode_batch
                          the first context's n_batch bounds the tokens of all
                          the contexts of one pass                            */
    int32_t n_threads; /* 0: every CPU this process may run on (ignored when
                          pool is set)                                        */
    nm_pool *pool;     /* NULL: the context starts its own pool of n_threads.
                          Else the context runs on this pool, which it borrows
                          (free it after the contexts): contexts that share a
                          pool must not decode at the same time             */
    bool logits_all;   /* keep the logits of every token of a decode call, not
                          just the last one (perplexity, training eval)       */
    nm_type kv_type;   /* KV cache element type: NM_TYPE_F16 (the default of
                          nm_context_default_params, as llama.cpp: half the
                          memory; queries and attention weights are rounded to
                          F16 as there) or NM_TYPE_F32 (= 0, exact attention) */
} nm_context_params;
nm_context_params nm_context_default_params(void);

/* Allocates the KV cache and all scratch and starts the thread pool (unless
 * params->pool lends one): after
 * this, decoding allocates nothing.  The model must outlive the context;
 * several contexts may share one model and decode concurrently (the model
 * is read-only), but one context serves one caller at a time. */
nm_status nm_context_new(const nm_model *m, const nm_context_params *p, nm_context **out, nm_err *err);
void nm_context_free(nm_context *c);

/* Runs the model on tokens[0..n) at positions n_past.. and advances n_past.
 * Fails without changing anything with NM_ERR_RANGE when n_past + n exceeds
 * n_ctx ("context full") and NM_ERR_ARG for a token id outside the
 * vocabulary or (logits_all) n > n_batch. */
nm_status nm_decode(nm_context *c, const int32_t *tokens, int32_t n, nm_err *err);
/* One forward pass over several contexts of the same model: context i gets
 * tokens[i][0..n_tokens[i]) at its own positions (its n_past), against its
 * own KV cache.  The tokens of all the contexts are stacked into one batch,
 * so each weight matrix is read once per pass (passes hold at most the
 * first context's n_batch tokens and 64 contexts; beyond that the call runs
 * several); attention runs per context.  Afterwards each context is exactly
 * as after nm_decode of its tokens (n_past, nm_get_logits, logits_all rows),
 * and its results are bit-identical to decoding it alone: no value of one
 * context depends on the others'.  Contexts may differ in n_ctx, KV type and
 * position.  It runs on the pool and in the scratch of ctxs[0]: while it
 * runs, no other call may use any of the contexts (or ctxs[0]'s pool).
 * Fails without changing any context when one of them would fail nm_decode
 * (the message names it as "context i"), when a context appears twice, or
 * when the contexts come from different models (NM_ERR_ARG). */
nm_status nm_decode_batch(nm_context *const *ctxs, const int32_t *const *tokens, const int32_t *n_tokens,
                          int32_t n_ctxs, nm_err *err);
/* n_vocab logits of the last token of the last successful decode call
 * (NULL before the first).  Valid until the next decode. */
const float *nm_get_logits(const nm_context *c);
/* With logits_all: the logits of token i of the last decode call (NULL if
 * out of range or logits_all is off). */
const float *nm_get_logits_ith(const nm_context *c, int32_t i);
int32_t nm_context_n_past(const nm_context *c);
int32_t nm_context_n_ctx(const nm_context *c);
int32_t nm_context_n_threads(const nm_context *c);
/* Forgets every position >= n_past (0 clears the cache): a prompt that
 * shares a prefix with the previous one only decodes the rest. */
nm_status nm_context_truncate(nm_context *c, int32_t n_past, nm_err *err);
/* Bytes the context allocated (KV cache + scratch + logits). */
size_t nm_context_bytes(const nm_context *c);
size_t nm_context_kv_bytes(const nm_context *c);

/* Where a context's forward passes spend their time (nomoat bench
 * --profile).  Each pass is cut into the phases below; a phase's wall time
 * on the calling thread is split into time inside parallel regions of the
 * pool (every thread working; of that, `waiting` is the caller done with its
 * share and waiting for the others) and the rest, which the calling thread
 * did alone while the other threads idled (activation conversions before
 * products, small steps, region start-up).  nm_decode_batch adds its
 * passes to the first context's profile. */
typedef enum nm_phase {
    NM_PHASE_EMBED,     /* token embeddings                                 */
    NM_PHASE_NORM,      /* RMSNorm before attention and FFN                 */
    NM_PHASE_QKV,       /* Q, K, V projections (with their adapters)        */
    NM_PHASE_ROPE_KV,   /* RoPE, storing keys and values in the cache       */
    NM_PHASE_ATTENTION, /* softmax(q k) v over the cache                    */
    NM_PHASE_ATTN_OUT,  /* output projection of attention                   */
    NM_PHASE_FFN_UP,    /* gate and up projections, SwiGLU                  */
    NM_PHASE_FFN_DOWN,  /* down projection                                  */
    NM_PHASE_RESIDUAL,  /* adding each block's output to the residual stream */
    NM_PHASE_LOGITS,    /* final norm and the output matrix                 */
    NM_PHASE_COUNT
} nm_phase;
typedef struct nm_profile {
    int64_t passes, rows;                  /* forward passes and their rows (tokens) */
    double seconds[NM_PHASE_COUNT];        /* wall time of each phase                */
    double in_regions[NM_PHASE_COUNT];     /* of which inside pool regions           */
    double waiting[NM_PHASE_COUNT];        /* of that, the caller waiting for others */
    int64_t regions[NM_PHASE_COUNT];       /* parallel regions run                   */
} nm_profile;
/* Starts (clearing the totals) or stops profiling the context's passes.
 * Timing costs two clock reads per phase and region (~0.1% of a token);
 * off, nothing.  The pool's region timer is switched with it, so contexts
 * that share a pool should profile one at a time.  Results never change. */
void nm_context_set_profiling(nm_context *c, bool on);
/* The totals since profiling started (zeros if it never did). */
void nm_context_profile(const nm_context *c, nm_profile *out);
/* Short name of a phase ("qkv", "attention"...), NULL if out of range. */
const char *nm_phase_name(nm_phase ph);

/* Index of the largest of n logits (the first one on ties; NaN never wins). */
int32_t nm_logits_argmax(const float *logits, int32_t n);

/* Perplexity as llama.cpp's perplexity tool measures it: the tokens are cut
 * into chunks of n_ctx (the context's size); each chunk starts with bos
 * (replacing its first token; bos < 0: kept as is) and only its second half
 * is scored, so every scored token sees at least n_ctx/2 tokens of context.
 * Needs at least one whole chunk and a context made with logits_all and
 * n_batch >= n_ctx (the cache is cleared).  progress (may be NULL) is
 * called after each chunk. */
typedef struct nm_perplexity_result {
    double ppl;       /* exp(mean negative log-likelihood)                */
    double ppl_se;    /* standard error of ppl (delta method)             */
    double nll;       /* mean negative log-likelihood, nats per token     */
    double nll_se;
    int64_t n_scored;
    int32_t n_chunks;
} nm_perplexity_result;
nm_status nm_perplexity(nm_context *c, const int32_t *tokens, size_t n_tokens, int32_t bos,
                        nm_progress_fn progress, void *user, nm_perplexity_result *out, nm_err *err);

/* ------------------------------------------------------------------------ */
/* Adapters (src/model/lora.c, src/formats/peft.c, src/formats/gguf_lora.c, */
/* src/adapters/merge.c; docs/ADAPTERS.md): LoRA adapters loaded once,      */
/* stacked per context, merged into a model or into one adapter            */
/* ------------------------------------------------------------------------ */
/*
 * An adapter adds to projection p of layer l:  y += s * B (A x), where
 * A is [r x in], B is [out x r] and s = user scale * alpha / r (alpha /
 * sqrt(r) with rsLoRA).  Files: a PEFT directory (adapter_config.json +
 * adapter_model.safetensors, F32/F16/BF16; the output directory of
 * `nomoat train` is one) or a GGUF LoRA as llama.cpp's --lora loads it
 * (general.type = adapter).  Adapters nomoat writes record the fingerprint
 * of their base model and of the adapters they were trained on top of.
 *
 * Typical use: nm_lora_load once per adapter and model, then
 * nm_context_set_loras on any number of contexts (each its own stack; an
 * adapter is read-only and shared), nm_decode as usual.
 */
typedef struct nm_lora nm_lora;

/* One layer of a stack: an adapter and its user scale (1: as trained). */
typedef struct nm_lora_entry {
    const nm_lora *lora;
    float scale;
} nm_lora_entry;

typedef enum nm_lora_format {
    NM_LORA_AUTO = 0, /* writers: GGUF if the path ends in .gguf, else PEFT */
    NM_LORA_PEFT,
    NM_LORA_GGUF
} nm_lora_format;

/* Reads an adapter file (format from its content).  With m, the adapter is
 * checked against m's projections (a layer it lacks, a shape that differs:
 * NM_ERR_ARG naming them) and bound to it: it can then go on m's contexts.
 * Without m it is only for inspection, conversion and merging.  Provenance
 * is not checked: see nm_lora_load. */
nm_status nm_lora_open(const char *path, const nm_model *m, nm_lora **out, nm_err *err);
/* nm_lora_open with m, then the provenance check: an adapter whose base
 * fingerprint is not m's fails with NM_ERR_ARG naming both, unless m is that
 * base stored in another type (its weight signature matches), a merge made
 * from it, or force (then a warning).  An adapter without a fingerprint
 * loads with a warning. */
nm_status nm_lora_load(const nm_model *m, const char *path, bool force, const nm_log *log, nm_lora **out,
                       nm_err *err);
void nm_lora_free(nm_lora *l);

/* Attaches a stack to a context (copied; the adapters must outlive the
 * context or the next call); n = 0 detaches.  Cheap: no weight is touched.
 * Each adapter must be bound to the context's model.  The stack applies to
 * the following decodes, alone or in nm_decode_batch (each context with its
 * own stack).  The KV cache is not cleared: positions cached under another
 * stack keep what that stack computed. */
nm_status nm_context_set_loras(nm_context *c, const nm_lora_entry *items, size_t n, nm_err *err);
size_t nm_context_n_loras(const nm_context *c);
/* Warns (through log) about each adapter of the stack that was trained on
 * top of other adapters (nomoat train --lora) and finds other adapters, or
 * other scales, below it here.  Adapters trained on the bare base stack
 * freely. */
void nm_lora_check_stack(const nm_model *m, const nm_lora_entry *items, size_t n, const nm_log *log);

typedef struct nm_lora_info {
    const char *path, *format, *arch; /* format: "peft" or "gguf"; arch may be "" */
    const char *base_name;     /* base_model_name_or_path, or NULL */
    int32_t rank, rank_min;    /* largest and smallest module rank */
    float alpha, scale;        /* scale = alpha / rank (or / sqrt(rank)) */
    bool rslora;
    uint32_t targets;          /* bit p: projection p (q,k,v,o,gate,up,down) is adapted */
    int32_t n_layer, n_layers_adapted, n_modules;
    uint64_t n_params;
    uint64_t file_bytes;       /* on disk (PEFT: both files), 0 if made in memory */
    const char *fingerprint;   /* of the content, the same in every format */
    const char *base_fingerprint; /* NULL: unknown */
    bool has_signature;        /* carries a base weight signature */
    size_t n_under;            /* adapters it was trained on top of */
    bool bound;                /* bound to a model */
    bool qk_rows_hf;           /* q/k rows still in Hugging Face order */
} nm_lora_info;
void nm_lora_get_info(const nm_lora *l, nm_lora_info *info);
/* The j-th adapter it was trained on top of (bottom first). */
bool nm_lora_under(const nm_lora *l, size_t j, const char **fingerprint, float *scale, const char **name);
/* What `nomoat adapter info` prints (text or one JSON object); *out is
 * malloc()ed. */
nm_status nm_lora_describe(const nm_lora *l, bool json, char **out, nm_err *err);

/* Writes an adapter: a PEFT directory (created if missing; q/k rows in
 * Hugging Face order) or a GGUF LoRA file for llama.cpp.  type: F32, F16
 * or BF16 (GGUF also Q8_0).  Atomic per file. */
nm_status nm_lora_save(const nm_lora *l, const char *path, nm_lora_format fmt, nm_type type, nm_err *err);

/* Folds a stack into one adapter.  rank 0: exact, by concatenation (each
 * module's rank is the sum of the ranks that adapt it; scales are folded
 * into B, alpha = rank so the scale is 1).  rank > 0: the best rank-`rank`
 * approximation of each module's sum (truncated SVD); *rel_err (may be
 * NULL) gets ||sum - approximation||_F / ||sum||_F over all modules.  The
 * adapters must be bound to the same model (or all unbound with the same
 * shapes); the result records the base of the first one. */
nm_status nm_lora_merge(const nm_lora_entry *items, size_t n, int32_t rank, nm_lora **out, double *rel_err,
                        nm_err *err);

/* Writes model m with the stack folded into its weights (W += s B A,
 * computed in double) as a complete GGUF: every key (tokenizer, chat
 * template...) and tensor of m's file, the adapted matrices in their stored
 * type or, with type >= 0, every weight matrix converted to that type (as
 * nm_gguf_convert).  Records the base fingerprint and the adapters in
 * nomoat.merge.* keys.  Writes one tensor at a time (memory: the largest). */
nm_status nm_model_merge_loras(const nm_model *m, const nm_lora_entry *items, size_t n, int type,
                               const char *out_path, const nm_log *log, nm_err *err);

/* ------------------------------------------------------------------------ */
/* Training (src/train, src/formats/safetensors.c): LoRA and full           */
/* fine-tuning, PEFT adapters, safetensors files                            */
/* ------------------------------------------------------------------------ */

/* ---- safetensors: 8-byte little-endian header length, a JSON header
 * {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {string: string}}, then the data.  The reader checks the
 * header length, JSON validity (no duplicate keys), every dtype, that
 * shape x dtype size equals each byte range, and that the ranges lie inside
 * the file, do not overlap and cover the data section without holes. */
#define NM_ST_MAX_DIMS 8

typedef struct nm_st nm_st;

typedef struct nm_st_tensor {
    const char *name;  /* NUL-terminated, owned by the nm_st */
    const char *dtype; /* "F32", "F16", "BF16", "F64", "I64", ... */
    uint32_t n_dims;
    int64_t shape[NM_ST_MAX_DIMS];
    uint64_t offset, nbytes; /* within the data section */
    const void *data;        /* inside the mapping (may be unaligned) */
} nm_st_tensor;

nm_status nm_st_open(const char *path, nm_st **out, nm_err *err);
/* On a caller-owned buffer that outlives the nm_st; name is for messages. */
nm_status nm_st_open_buffer(const void *buf, size_t size, const char *name, nm_st **out, nm_err *err);
void nm_st_free(nm_st *s);
/* Tensors in data order (by offset). */
int64_t nm_st_n_tensors(const nm_st *s);
const nm_st_tensor *nm_st_tensor_at(const nm_st *s, int64_t i);
const nm_st_tensor *nm_st_find(const nm_st *s, const char *name);
/* The __metadata__ value of key, or NULL. */
const char *nm_st_meta(const nm_st *s, const char *key);
int64_t nm_st_n_meta(const nm_st *s);
void nm_st_meta_at(const nm_st *s, int64_t i, const char **key, const char **value);
/* Bytes per element of a dtype name, 0 if unknown. */
size_t nm_st_dtype_size(const char *dtype);
/* Elements of t converted to float (F32, F16, BF16, F64); dst holds
 * n = product of the shape.  Fails for other dtypes. */
nm_status nm_st_read_f32(const nm_st *s, const nm_st_tensor *t, float *dst, nm_err *err);

typedef struct nm_st_writer nm_st_writer;
nm_st_writer *nm_st_writer_new(void);
void nm_st_writer_free(nm_st_writer *w);
/* A __metadata__ entry (copied; setting a key again replaces it). */
nm_status nm_st_writer_meta(nm_st_writer *w, const char *key, const char *value, nm_err *err);
/* data is borrowed until nm_st_writer_write; nbytes must equal the shape
 * times the dtype size.  Tensors are written in the order added. */
nm_status nm_st_writer_add(nm_st_writer *w, const char *name, const char *dtype, uint32_t n_dims,
                           const int64_t *shape, const void *data, uint64_t nbytes, nm_err *err);
/* Writes atomically (temporary file, fsync, rename). */
nm_status nm_st_writer_write(nm_st_writer *w, const char *path, nm_err *err);

/* ---- fine-tuning (docs/TRAINING.md) ----
 * nm_train_run trains a LoRA adapter on a frozen base model (any stored
 * weight type: the base stays mapped as it is) or, with full, every weight
 * of the model in float32.  The output directory is the adapter in PEFT
 * layout (adapter_model.safetensors + adapter_config.json; for full
 * fine-tuning model.gguf) beside trainer_state.safetensors (parameters,
 * AdamW moments, step, data position, the run's configuration) and
 * metrics.jsonl.  Every file is written atomically, every checkpoint_every
 * steps and at the end; resume_dir continues such a run exactly: the losses
 * of every later step are bit-identical to those of an uninterrupted run
 * (for any thread count: every sum is split the same way). */

typedef struct nm_train_stats {
    int64_t step, total_steps; /* optimiser steps done / planned            */
    int64_t epoch;             /* 0-based epoch the step's data came from    */
    double loss;               /* mean loss of the step just taken           */
    double val_loss;           /* latest validation loss (NAN: none yet)     */
    bool evaluated;            /* val_loss was computed at this step         */
    bool checkpointed;         /* a checkpoint was written at this step      */
    double lr, grad_norm;      /* learning rate used, norm before clipping   */
    int64_t tokens;            /* input tokens trained on (all runs)         */
    double tokens_per_s;       /* this run's average                         */
    double elapsed_s, eta_s;   /* this run                                   */
    uint64_t peak_rss;         /* bytes                                      */
    /* preference tuning (dpo): this step's pairs and the latest validation
     * (NAN: none yet); rewards are beta * (log pi - log ref) of each side */
    bool dpo;
    double reward_acc, reward_margin, reward_chosen, reward_rejected;
    double val_reward_acc, val_reward_margin, val_reward_chosen, val_reward_rejected;
} nm_train_stats;

/* Called after every step; a non-zero return stops the run: a checkpoint is
 * written and nm_train_run returns NM_ERR_CANCELLED. */
typedef int (*nm_train_step_fn)(void *user, const nm_train_stats *s);
/* Polled between micro-batches (e.g. a SIGINT flag): true stops the run
 * like a non-zero on_step, discarding the unfinished step. */
typedef bool (*nm_train_stop_fn)(void *user);

typedef struct nm_train_params {
    /* files */
    const char *model;         /* base GGUF (on resume: NULL = as saved)     */
    const char *data;          /* training data (on resume: NULL = as saved) */
    const char *val_data;      /* validation file, or NULL                   */
    const char *out_dir;       /* created if missing                         */
    const char *resume_dir;    /* continue the run saved there (then out_dir
                                  may be NULL: it is resume_dir)             */
    const char *format;        /* "auto", "text", "alpaca", "sharegpt", "messages" */
    const char *chat_template; /* NULL: the model's (see nm_chat_template_of_gguf) */
    const char *const *vars;   /* "key=value": {{key}} in data texts -> value */
    size_t n_vars;
    const char *metrics;       /* NULL: OUT/metrics.jsonl; "": none          */
    /* what is trained */
    bool full;                 /* all weights (float32) instead of LoRA      */
    int32_t rank;              /* 8  */
    float alpha;               /* 16 (scale alpha/rank, or alpha/sqrt(rank) with rslora) */
    bool rslora;
    float dropout;             /* 0 (PEFT's lora_dropout)                    */
    const char *targets;       /* "all" or a list of q,k,v,o,gate,up,down    */
    /* training on a stack (docs/ADAPTERS.md): these adapters are applied,
     * frozen, under the one being trained, in this order, in the forward and
     * the backward pass; the new adapter records them as its provenance.
     * Each must have been made for the base (force: accept another base).
     * On resume: as saved (given again: the same adapters, moved). */
    const char *const *loras;
    const float *lora_scales;  /* NULL: 1 for each */
    size_t n_loras;
    bool force;
    /* optimisation */
    double lr, min_lr;         /* 2e-4, 0 */
    const char *schedule;      /* "cosine" (default), "linear", "constant"   */
    int64_t warmup;            /* warm-up steps (0)                          */
    double weight_decay;       /* 0 */
    double beta1, beta2, adam_eps; /* 0.9, 0.999, 1e-8 */
    double clip;               /* global gradient norm limit, 1.0 (0: none)  */
    int64_t epochs;            /* 1 */
    int64_t steps;             /* > 0: this many optimiser steps instead     */
    int32_t batch;             /* sequences per micro-batch (4)              */
    int32_t seq_len;           /* tokens per sequence (256)                  */
    int32_t grad_accum;        /* micro-batches per optimiser step (1)       */
    bool pack;                 /* several examples per sequence (true)       */
    bool shuffle;              /* seeded new order every epoch (true)        */
    bool mask_prompt;          /* loss on assistant tokens only (true)       */
    bool skip_bad;             /* skip malformed records (false: fail)       */
    int32_t act_checkpointing; /* recompute layers in the backward: 1 on, 0 off, -1 auto (on above 1 GiB) */
    double val_split;          /* fraction of the data held out (0)          */
    int64_t eval_every;        /* steps between validations (100; 0: end only) */
    int64_t val_max_rows;      /* at most this many validation rows (256)    */
    int64_t checkpoint_every;  /* steps between checkpoints (100; 0: end only) */
    int32_t threads;           /* 0: every CPU                                */
    uint64_t seed;             /* 42 */
    /* preference tuning (DPO, docs/DPO.md): data and val_data are preference
     * pairs (prompt, chosen, rejected); the loss pulls the adapter toward
     * the chosen answers relative to the reference, which is the base (and
     * stack) with the trained adapter off.  batch counts PAIRS (each one a
     * chosen and a rejected row); rows are never packed; val_max_rows counts
     * pairs.  LoRA only.  format, mask_prompt and pack are not used. */
    bool dpo;
    const char *dpo_loss;      /* "sigmoid" (default) or "ipo"               */
    double dpo_beta;           /* 0.1 */
    double dpo_label_smoothing; /* 0; > 0: conservative DPO (sigmoid only)   */
    /* distillation (docs/DISTILL.md): the loss is the KL divergence to the
     * teacher's distributions read from a teacher cache
     * (nm_distill_cache_write) made from the same data, instead of
     * cross-entropy; validation stays cross-entropy on the data.  On resume:
     * as saved (given again: the same cache, moved). */
    const char *distill_cache; /* NULL: no distillation                      */
    float distill_tau;         /* temperature (1): tau^2 KL of softened distributions */
    float distill_alpha;       /* weight of cross-entropy on the data tokens (0) */
    bool distill_reverse;      /* KL(student || teacher) instead of KL(teacher || student) */
    /* feedback */
    nm_train_step_fn on_step;
    nm_train_stop_fn should_stop;
    void *user;
} nm_train_params;

void nm_train_params_default(nm_train_params *p);
nm_status nm_train_run(const nm_train_params *p, const nm_log *log, nm_err *err);

/* ---- training across machines (MPI; docs/TRAINING.md) ----
 * A library built with `make MPI=1` and started by mpirun trains data
 * parallel: nm_train_run on every rank, each computing its share of every
 * global batch, gradients summed over the ranks, the same optimiser step on
 * each; only rank 0 writes checkpoints and metrics.  on_step runs on every
 * rank (print from rank 0); a stop asked on any rank stops all of them.
 * nm_dist_start joins the job (MPI_Init) when a launcher started the
 * process and does nothing otherwise; call it once before nm_train_run.  A
 * build without MPI fails there (and in nm_train_run) when a launcher
 * started several copies.  nm_dist_finish(code) leaves the job and returns
 * code: MPI_Finalize, or with code != 0 in a job of several ranks
 * MPI_Abort (which does not return), because the peers of a failed rank
 * would otherwise wait for it forever. */
nm_status nm_dist_start(nm_err *err);
int nm_dist_finish(int code);
int nm_dist_rank(void); /* 0 without MPI */
int nm_dist_size(void); /* 1 without MPI */

/* Training speed on random tokens: tokens/s of forward + backward +
 * optimiser steps, peak memory, and the FLOP/s the loop reaches (2 FLOPs
 * per multiply-add of the forward and backward matrix products). */
typedef struct nm_train_bench_params {
    const char *model;
    int32_t rank, seq_len, batch, threads, steps; /* 8, 256, 1, 0 (all), 3 */
    const char *targets;                          /* "all" */
    int32_t act_checkpointing;                    /* -1 auto */
    bool full;
} nm_train_bench_params;
typedef struct nm_train_bench_result {
    double tokens_per_s, step_s, gflops_per_s;
    double flops_per_token; /* forward + backward                      */
    uint64_t peak_rss, act_bytes;
    int32_t threads;
    bool act_checkpointing;
} nm_train_bench_result;
void nm_train_bench_default(nm_train_bench_params *p);
nm_status nm_train_bench(const nm_train_bench_params *p, nm_train_bench_result *r, const nm_log *log,
                         nm_err *err);

/* ---- distillation (src/distill, docs/DISTILL.md) ----
 * The teacher (a model and an adapter stack) runs once over the data and
 * writes a teacher cache: for every trained position its top-k next tokens
 * with their log-probabilities and the log-probability of all the others,
 * with the rows themselves, the teacher's identity, the data hash and the
 * vocabulary hash.  nm_train_run with distill_cache then trains a student
 * (LoRA on a base with the same tokenizer, or a whole small model) on it. */
typedef struct nm_distill_cache_params {
    const char *teacher;             /* GGUF                                  */
    const char *const *loras;        /* the teacher's adapter stack, bottom first */
    const float *lora_scales;        /* NULL: 1 each                          */
    size_t n_loras;
    bool force;                      /* adapters made for another base        */
    const char *data;                /* any training format (docs/TRAINING.md) */
    const char *format;              /* "auto"                                */
    const char *chat_template;       /* NULL: the teacher's                   */
    const char *const *vars;
    size_t n_vars;
    int32_t seq_len;                 /* 256: examples are cut as training cuts them */
    bool mask_prompt;                /* true                                  */
    bool skip_bad;
    int32_t top_k;                   /* 16 (at most 1024)                     */
    int32_t batch;                   /* sequences per teacher pass (4)        */
    int32_t threads;                 /* 0: every CPU                          */
    const char *out;                 /* the cache file (written atomically)   */
} nm_distill_cache_params;
typedef struct nm_distill_cache_info {
    int32_t k, n_vocab, seq_len;
    bool mask_prompt;
    int64_t n_examples, n_tokens, n_positions; /* positions: trained targets */
    uint64_t file_bytes;
    char teacher_id[17], data_hash[17], vocab_hash[17];
    double teacher_loss;             /* writer: the teacher's mean cross-entropy
                                        on the trained positions; NAN otherwise */
    double seconds;                  /* writer: time of the pass             */
} nm_distill_cache_info;
void nm_distill_cache_params_default(nm_distill_cache_params *p);
nm_status nm_distill_cache_write(const nm_distill_cache_params *p, nm_distill_cache_info *info, const nm_log *log,
                                 nm_err *err);
/* Opens and validates a cache; *meta (optional) gets its metadata JSON
 * (malloc()ed). */
nm_status nm_distill_cache_info_read(const char *path, nm_distill_cache_info *info, char **meta, nm_err *err);
/* The identity (16 hex digits) of a teacher: compare with a cache's. */
nm_status nm_distill_teacher_id(const char *teacher, const char *const *loras, const float *scales, size_t n,
                                char hex[17], nm_err *err);
/* A student made of some of the teacher's layers ("every-2nd-layer",
 * "every-3rd-layer", or "0,2,4"), written as a GGUF; the layers the list
 * names are parsed by nm_distill_layers_parse (layers[] holds n_layer). */
nm_status nm_distill_layers_parse(const char *spec, int64_t n_layer, int32_t *layers, size_t *n, nm_err *err);
nm_status nm_distill_derive(const char *teacher, const char *layers, const char *out, const nm_log *log,
                            nm_err *err);

/* ------------------------------------------------------------------------ */
/* Curation and evaluation (src/curate, src/eval; docs/CURATE.md): make a   */
/* small clean dataset (generate, score and keep the best, de-duplicate,    */
/* filter, decontaminate) and measure what a fine-tune changed              */
/* ------------------------------------------------------------------------ */

/* The normalised form that exact de-duplication compares and that shingles
 * and n-grams are cut from: lower case (ASCII, Latin-1/Extended-A, Greek,
 * Cyrillic, Armenian, full-width), punctuation and symbols removed,
 * zero-width characters removed, every run of white space one space, none
 * at the ends (the exact rules: docs/CURATE.md).  *out is malloc()ed and
 * NUL-terminated. */
nm_status nm_text_normalize(const char *text, size_t len, char **out, size_t *out_len, nm_err *err);

/* ---- documents: what cleaning examines and writes back ---- */
typedef enum nm_doc_split {
    NM_DOC_AUTO = 0,   /* .json/.jsonl: JSON records; anything else: lines   */
    NM_DOC_LINES,      /* each non-blank line is a document                  */
    NM_DOC_PARAGRAPHS, /* blocks of lines separated by blank lines           */
    NM_DOC_JSON,       /* JSON lines, or one JSON array of records           */
    NM_DOC_WHOLE       /* the whole file is one document                     */
} nm_doc_split;

typedef struct nm_doc {
    const char *text; /* what the filters look at (len bytes, not always
                         NUL-terminated): the line or paragraph, or a JSON
                         record's strings (see nm_docset_add_file)           */
    size_t len;
    const char *raw;  /* the record as written back (a line, a paragraph, a
                         JSON record on one line)                            */
    size_t raw_len;
    int32_t file;     /* index of the file it came from (-1: added as text)  */
    int64_t line;     /* 1-based line where it starts (JSON arrays: 0)       */
    int64_t record;   /* 1-based record number within its file               */
} nm_doc;

typedef struct nm_docset nm_docset;
nm_docset *nm_docset_new(void); /* NULL if out of memory */
void nm_docset_free(nm_docset *s);
/* Appends the documents of a file.  A JSON record's text is, with field,
 * that key's strings; otherwise every string value in it (nested ones too,
 * in order) except those under "role", "from", "id", "label", "answerKey",
 * "meta", "scores", "seed" and "dropped_by", joined by newlines - so
 * messages, ShareGPT, Alpaca, {"text": ...} and evaluation records all
 * work.  A malformed record fails with FILE:LINE and the reason. */
nm_status nm_docset_add_file(nm_docset *s, const char *path, nm_doc_split split, const char *field, nm_err *err);
/* Appends one document (copied). */
nm_status nm_docset_add_text(nm_docset *s, const char *text, size_t len, nm_err *err);
size_t nm_docset_size(const nm_docset *s);
const nm_doc *nm_docset_doc(const nm_docset *s, size_t i);
int32_t nm_docset_n_files(const nm_docset *s);
const char *nm_docset_file(const nm_docset *s, int32_t file);
nm_doc_split nm_docset_file_split(const nm_docset *s, int32_t file); /* as used */
size_t nm_docset_bytes(const nm_docset *s); /* memory the set holds */

/* ---- cleaning: filters, decontamination, exact and near de-duplication ----
 * The steps run in this order and each document is charged to the first
 * step that removes it: length, character classes, language, forbidden
 * strings, decontamination, exact duplicates, near duplicates.  Among
 * duplicates the first document (in the order added) is kept. */
typedef enum nm_clean_step {
    NM_CLEAN_KEPT = 0,
    NM_CLEAN_LENGTH,
    NM_CLEAN_CHARS,
    NM_CLEAN_LANG,
    NM_CLEAN_FORBID,
    NM_CLEAN_DECONTAM,
    NM_CLEAN_EXACT,
    NM_CLEAN_NEAR,
    NM_CLEAN_N_STEPS
} nm_clean_step;
/* "kept", "length", "chars", "lang", "forbid", "decontam", "exact", "near" */
const char *nm_clean_step_name(nm_clean_step s);

typedef struct nm_clean_params {
    /* length of the text: characters (code points) and words (runs of
     * non-space); 0: no bound */
    int64_t min_chars, max_chars, min_words, max_words;
    /* character classes, as fractions of the non-space characters; >= 1:
     * off.  Letters, digits: docs/CURATE.md. */
    double max_nonletter, max_digit;
    /* language: NULL (off) or "en": at least en_min_ascii of the letters are
     * ASCII and, for texts of at least en_min_words words (with a letter),
     * at least en_min_stopwords of those words are English stop words */
    const char *lang;
    double en_min_ascii, en_min_stopwords;
    int64_t en_min_words;
    /* forbidden strings: a text containing one (ASCII case-insensitive) goes */
    const char *const *forbid;
    size_t n_forbid;
    /* decontamination: a text sharing a word n-gram of the normalised form
     * with an evaluation document goes (GPT-3 used n = 13).  Evaluation
     * documents shorter than ngram words are matched whole if they have at
     * least ngram_min words, ignored (and counted) otherwise. */
    const nm_docset *eval;
    int32_t ngram, ngram_min;
    /* exact de-duplication: equal normalised forms (64-bit hash) */
    bool exact;
    /* near de-duplication: MinHash over shingles of the normalised form
     * (shingle words, or shingle characters with char_shingles), num_perm
     * hash functions, LSH with bands x rows <= num_perm (0, 0: chosen from
     * threshold, see nm_lsh_choose); every LSH candidate pair is verified
     * (estimated Jaccard >= threshold) before it counts */
    bool near;
    double threshold;
    int32_t num_perm, shingle;
    bool char_shingles;
    int32_t bands, rows;
    double fn_weight;  /* nm_lsh_choose's weight of false negatives (0.9) */
    uint64_t seed;     /* of the hash functions */
    int32_t threads;   /* 0: every CPU */
    nm_progress_fn progress;
    void *user;
} nm_clean_params;
/* Every filter off, exact and near on (threshold 0.8, 128 permutations,
 * 5-word shingles), decontamination 13-grams (ngram_min 8), English test
 * 0.9 / 0.15 / 5 words, seed 1. */
void nm_clean_params_default(nm_clean_params *p);

typedef struct nm_clean_result {
    size_t n_docs;
    uint8_t *step;    /* [n_docs] nm_clean_step: KEPT or the step that removed it */
    uint8_t *detail;  /* [n_docs] which test of the step failed (see nm_clean_reason) */
    int64_t *ref;     /* [n_docs] exact/near: the document it duplicates; decontam:
                         the evaluation document; forbid: the string; else -1 */
    float *value;     /* [n_docs] the measured value: length, ratio, Jaccard estimate */
    size_t count[NM_CLEAN_N_STEPS]; /* count[NM_CLEAN_KEPT]: kept */
    double seconds[NM_CLEAN_N_STEPS];
    int32_t bands, rows;            /* the LSH parameters used */
    uint64_t lsh_pairs, lsh_verified; /* candidate pairs compared / found similar */
    uint64_t near_bytes;            /* memory of signatures and band keys */
    size_t eval_ngrams, eval_short_skipped;
} nm_clean_result;

nm_status nm_clean_run(const nm_docset *docs, const nm_clean_params *p, nm_clean_result *r, const nm_log *log,
                       nm_err *err);
void nm_clean_result_deinit(nm_clean_result *r);
/* Why document i was removed, in one line ("" if kept). */
void nm_clean_reason(const nm_docset *docs, const nm_clean_params *p, const nm_clean_result *r, size_t i,
                     char *buf, size_t cap);
/* What each step removed and why, with up to n_examples examples per step:
 * text for people or one JSON object.  *out is malloc()ed. */
nm_status nm_clean_report(const nm_docset *docs, const nm_clean_params *p, const nm_clean_result *r, bool json,
                          int32_t n_examples, char **out, nm_err *err);
/* Writes the raw records of the kept documents of file (-1: of every file),
 * in order: lines one per line, paragraphs separated by blank lines, JSON
 * records one per line.  Atomic. */
nm_status nm_clean_write(const nm_docset *docs, const nm_clean_result *r, int32_t file, const char *path,
                         nm_err *err);

/* LSH banding.  A pair of Jaccard similarity s becomes a candidate with
 * probability P(s) = 1 - (1 - s^rows)^bands; the false-negative rate is
 * 1 - P(s) = (1 - s^rows)^bands. */
double nm_lsh_prob(double s, int32_t bands, int32_t rows);
/* The (bands, rows) with bands x rows <= num_perm minimising
 * (1 - fn_weight) x (area of P(s) over s < threshold) + fn_weight x (area of
 * 1 - P(s) over s >= threshold), as datasketch does with its weights. */
void nm_lsh_choose(double threshold, int32_t num_perm, double fn_weight, int32_t *bands, int32_t *rows);

/* ---- candidates: prompts and the responses sampled for them ---- */
typedef struct nm_cand {
    int64_t prompt_id;       /* candidates of one prompt share it             */
    int32_t index;           /* candidate number within its prompt           */
    const nm_chat_msg *msgs; /* the prompt: a conversation, without the response */
    size_t n_msgs;
    bool raw;                /* a plain-text prompt: msgs[0].content is continued
                                as it is, no chat template                    */
    const char *response;    /* NULL: a prompt not answered yet              */
    uint64_t seed;           /* the sampler seed that produced the response  */
    const double *scores;    /* [nm_cands_n_scorers] after scoring, else NULL */
    double total;            /* sum of weight x score                        */
    bool kept;
    int32_t dropped_by;      /* the scorer whose minimum it missed, -1: none
                                (then it was not among the best / below the
                                threshold if not kept)                       */
} nm_cand;

typedef struct nm_cands nm_cands;
nm_cands *nm_cands_new(void);
void nm_cands_free(nm_cands *c);
/* Reads prompts or candidates.  format: "auto" (by extension and content),
 * "lines" (each non-blank line a plain-text prompt; "\n" and "\\" escapes
 * are decoded), "candidates" (the JSONL nm_cands_write writes: its
 * responses are kept), "alpaca", "sharegpt", "messages" (each record's
 * conversation up to its last assistant message is a prompt and that
 * message, when present, the response). */
nm_status nm_cands_load(nm_cands *c, const char *path, const char *format, nm_err *err);
/* Appends one candidate (copied; msgs of the same prompt_id are shared). */
nm_status nm_cands_add(nm_cands *c, int64_t prompt_id, int32_t index, const nm_chat_msg *msgs, size_t n_msgs,
                       bool raw, const char *response, uint64_t seed, nm_err *err);
size_t nm_cands_size(const nm_cands *c);
const nm_cand *nm_cands_at(const nm_cands *c, size_t i);
int64_t nm_cands_n_prompts(const nm_cands *c); /* distinct prompt ids */
size_t nm_cands_n_scorers(const nm_cands *c);
const char *nm_cands_scorer_name(const nm_cands *c, size_t k);
/* Writes the candidates (kept_only: the kept ones) as format: "candidates"
 * (everything, scores included: readable by nm_cands_load), "messages"
 * (default training format), "sharegpt", "alpaca" (JSONL with a "meta"
 * object: prompt id, candidate, seed, scores, total) or "text" (plain-text
 * prompt + response, entries separated by a blank line; blank lines inside
 * an entry become single newlines).  Atomic. */
nm_status nm_cands_write(const nm_cands *c, const char *path, const char *format, bool kept_only, nm_err *err);

/* ---- generation: N candidates per prompt ---- */
typedef struct nm_gen_params {
    int32_t n;                   /* candidates per prompt (4)                   */
    int32_t max_tokens;          /* per response (256)                         */
    nm_sampler_params sampling;  /* seed: the base seed (NM_SEED_RANDOM: drawn);
                                    candidate j of prompt i uses a seed derived
                                    from (seed, i, j), so the output does not
                                    depend on the thread count                 */
    const char *chat_template;   /* conversation prompts; NULL: the model's   */
    int32_t n_ctx;               /* 0: the model's training context (max 4096) */
    int32_t threads;             /* workers, each with its own context (0: every CPU) */
    const nm_lora_entry *loras;  /* adapter stack on every worker's context    */
    size_t n_loras;
    nm_progress_fn progress;     /* after each prompt                          */
    void *user;
} nm_gen_params;
void nm_gen_params_default(nm_gen_params *p);
/* For each distinct prompt of prompts, samples p->n responses with model m
 * and appends them to out. */
nm_status nm_cands_generate(const nm_model *m, const nm_cands *prompts, const nm_gen_params *p, nm_cands *out,
                            const nm_log *log, nm_err *err);

/* ---- scoring and selection ---- */
typedef enum nm_scorer_kind {
    NM_SCORER_JUDGE = 0, /* mean log-probability of the response tokens given
                            the prompt, under judge (<= 0; higher is better)   */
    NM_SCORER_LENGTH,    /* 1 if the length is in [min_len, max_len], else 0  */
    NM_SCORER_REPETITION,/* distinct word n-grams / all word n-grams (0..1]   */
    NM_SCORER_REGEX,     /* 1 if pattern (PCRE2) matches the response (negate:
                            does not match), else 0                           */
    NM_SCORER_COMMAND    /* a number printed by an external command that reads
                            {"prompt", "messages", "response", "prompt_id",
                            "candidate"} as JSON on its standard input       */
} nm_scorer_kind;

typedef struct nm_scorer {
    nm_scorer_kind kind;
    const char *name;        /* in metadata and reports; NULL: the kind's name */
    double weight;           /* contribution to the total: weight x score      */
    double min;              /* a candidate scoring below is dropped (-INFINITY: none) */
    const nm_model *judge;   /* JUDGE */
    const nm_lora_entry *loras; /* JUDGE: adapter stack on the judge */
    size_t n_loras;
    const char *chat_template; /* JUDGE, conversation prompts; NULL: the judge's */
    int64_t min_len, max_len;  /* LENGTH (max_len 0: no upper bound)          */
    bool chars;                /* LENGTH in characters (default: words)        */
    int32_t n;                 /* REPETITION n-gram size (3)                  */
    const char *pattern;       /* REGEX (UTF-8)                                */
    bool negate;
    const char *command;       /* COMMAND, run with /bin/sh -c                */
    double timeout_s;          /* COMMAND, per candidate (10)                 */
} nm_scorer;

typedef struct nm_select_params {
    const nm_scorer *scorers;
    size_t n_scorers;
    int32_t best_k;          /* > 0: keep at most the k best totals per prompt */
    double threshold;        /* keep only totals >= threshold (-INFINITY: off) */
    int32_t threads;         /* judge and command scorers run in parallel      */
    nm_progress_fn progress;
    void *user;
} nm_select_params;
/* Scores every candidate that has a response, then marks the kept ones. */
nm_status nm_cands_score(nm_cands *c, const nm_select_params *p, const nm_log *log, nm_err *err);

/* ---- evaluation ---- */
/* Perplexity over a file in any training format (nm_train_params.format):
 * with prompt masking (the default) only assistant tokens of conversations
 * are scored; plain text is cut as the trainer cuts it (windows of n_ctx
 * tokens, each token but the first scored once).  Each example is run from
 * an empty cache. */
typedef struct nm_eval_ppl_params {
    const char *format;        /* "auto" */
    const char *chat_template; /* NULL: the model's */
    int32_t n_ctx;             /* 0: the training context, at most 2048; longer
                                  examples are cut                              */
    bool all_tokens;           /* score prompt tokens too                        */
    int64_t max_examples;      /* 0: all                                         */
    int32_t threads;           /* 0: every CPU                                   */
    const nm_lora_entry *loras; /* adapter stack                                 */
    size_t n_loras;
    nm_progress_fn progress;
    void *user;
} nm_eval_ppl_params;
typedef struct nm_eval_ppl_result {
    double ppl, ppl_se;  /* exp(nll), and its standard error (delta method)    */
    double nll, nll_se;  /* mean negative log-likelihood per token, nats; its
                            standard error treating tokens as independent (as
                            llama.cpp does)                                    */
    double nll_se_ex;    /* the same with examples as the independent units
                            (cluster-robust: honest when tokens of one example
                            are correlated)                                   */
    int64_t n_tokens, n_examples;
} nm_eval_ppl_result;
void nm_eval_ppl_params_default(nm_eval_ppl_params *p);
nm_status nm_eval_perplexity(const nm_model *m, const char *path, const nm_eval_ppl_params *p,
                             nm_eval_ppl_result *r, const nm_log *log, nm_err *err);

/* Multiple choice by log-likelihood: JSONL records with a context, choices
 * and the index of the right one - {"context", "choices", "label"},
 * HellaSwag's {"ctx", "endings", "label"} or ARC's {"question": {"stem",
 * "choices": [{"text", "label"}]}, "answerKey"}.  Each choice is scored as
 * the sum of the log-probabilities of its tokens after the context (a space
 * between them unless one is there); the prediction is the argmax of the
 * sum (acc) and of the sum divided by the choice's length in bytes
 * (acc_norm, as lm-evaluation-harness). */
typedef struct nm_mc_item {
    int64_t index;           /* 0-based record number */
    size_t n_choices;
    const double *loglik;    /* [n_choices] */
    const size_t *bytes;     /* [n_choices] */
    int32_t label, pred, pred_norm;
} nm_mc_item;
typedef struct nm_mc_params {
    int32_t n_ctx;           /* 0: the training context, at most 2048 */
    int64_t max_items;       /* 0: all */
    int32_t threads;
    const nm_lora_entry *loras; /* adapter stack */
    size_t n_loras;
    void (*on_item)(void *user, const nm_mc_item *it); /* in record order; may be NULL */
    nm_progress_fn progress;
    void *user;
} nm_mc_params;
typedef struct nm_mc_result {
    int64_t n, correct, correct_norm;
    double acc, acc_se, acc_norm, acc_norm_se; /* se: sqrt(p (1 - p) / n) */
} nm_mc_result;
nm_status nm_eval_choice(const nm_model *m, const char *path, const nm_mc_params *p, nm_mc_result *r,
                         const nm_log *log, nm_err *err);

/* Side by side: the same prompts answered by two configurations (model +
 * adapter stack each; the same sampling and seeds), written as a self-contained HTML page
 * with the answers in a seeded random left/right order and a form that
 * exports the reader's choices as JSON, and as JSONL (one line per prompt:
 * prompt, a, b, left). */
typedef struct nm_sbs_params {
    const nm_model *a, *b;
    const nm_lora_entry *loras_a, *loras_b; /* each side's adapter stack      */
    size_t n_loras_a, n_loras_b;
    const char *name_a, *name_b; /* shown nowhere on the page, kept in the files */
    nm_gen_params gen;           /* n and loras are ignored: one answer per side,
                                    each side with its own stack               */
    uint64_t order_seed;         /* left/right order                            */
    const char *title;
} nm_sbs_params;
nm_status nm_eval_side_by_side(const nm_cands *prompts, const nm_sbs_params *p, const char *html_path,
                               const char *jsonl_path, const nm_log *log, nm_err *err);

/* Win rate from the choices files the page exports: B's share of the
 * decisive comparisons with its Wilson score interval at confidence (e.g.
 * 0.95); ties are counted apart.  Several files (raters) add up. */
typedef struct nm_tally {
    int64_t a_wins, b_wins, ties, unanswered;
    double b_rate, lo, hi;   /* b_wins / (a_wins + b_wins) and its interval */
    double b_rate_ties;      /* (b_wins + ties / 2) / (a_wins + b_wins + ties) */
    char name_a[64], name_b[64]; /* the configurations' names, from the first file */
} nm_tally;
nm_status nm_eval_tally(const char *const *paths, size_t n_paths, double confidence, nm_tally *out, nm_err *err);
/* Wilson score interval of k successes in n trials at normal quantile z. */
void nm_wilson_interval(int64_t k, int64_t n, double z, double *lo, double *hi);

#ifdef __cplusplus
}
#endif
#endif /* NOMOAT_H */
