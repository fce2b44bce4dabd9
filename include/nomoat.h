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

#ifdef __cplusplus
}
#endif
#endif /* NOMOAT_H */
