/*
 * base.h - internal helpers every module uses: checked arithmetic, files
 * (mmap, atomic writes), a growable byte buffer, a seeded RNG.
 */
#ifndef NM_BASE_H
#define NM_BASE_H

#include "nomoat.h"
#include <stdio.h>

/* ---- checked arithmetic: hostile files carry sizes that overflow ---- */
static inline bool nm_mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool nm_add_ok(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}
static inline uint64_t nm_align_up(uint64_t x, uint64_t a) {
    return (x + a - 1) / a * a;
}

/* ---- memory ---- */
/* calloc(n, size) that fails cleanly on overflow. */
void *nm_calloc(size_t n, size_t size);
char *nm_strdup(const char *s);
char *nm_strndup(const char *s, size_t n);

/* ---- growable byte buffer ---- */
typedef struct nm_buf {
    uint8_t *data;
    size_t len, cap;
    bool oom; /* sticky: set when a push failed; check once at the end */
} nm_buf;
void nm_buf_init(nm_buf *b);
void nm_buf_deinit(nm_buf *b);
void nm_buf_push(nm_buf *b, const void *p, size_t n);
void nm_buf_push_u32(nm_buf *b, uint32_t v);
void nm_buf_push_u64(nm_buf *b, uint64_t v);
void nm_buf_printf(nm_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal (quotes and escapes included). */
void nm_buf_json_str(nm_buf *b, const char *s, size_t n);

/* ---- read-only file mapping ---- */
typedef struct nm_map {
    void *data;
    size_t size;
    void *base;       /* nm_map_read: the whole anonymous mapping (data is */
    size_t base_size; /* inside it, 2 MiB aligned); NULL for a file map   */
} nm_map;
/* Maps a file read-only (pages come from the page cache on first touch). */
nm_status nm_map_open(nm_map *m, const char *path, nm_err *err);
/* Reads a whole file into read-only anonymous memory, 2 MiB aligned and
 * advised for transparent huge pages (MADV_HUGEPAGE): model weights read
 * this way stream faster through the kernels than from 4 KiB pages of a
 * file map (docs/KERNELS.md "Huge pages").  Same nm_map, nm_map_close. */
nm_status nm_map_read(nm_map *m, const char *path, nm_err *err);
void nm_map_close(nm_map *m);
/* An nm_map_read map made writable (true) or read-only again (false), for
 * a caller that rewrites its contents in place; a file map: an error. */
nm_status nm_map_set_writable(nm_map *m, bool writable, nm_err *err);
/* Bytes of memory the system can give without swapping (MemAvailable of
 * /proc/meminfo), 0 if unknown. */
uint64_t nm_mem_available(void);

/* Reads a whole file into a malloc()ed, NUL-terminated buffer. */
nm_status nm_read_file(const char *path, char **out, size_t *len, nm_err *err);

/* ---- atomic file writes: temp file beside the target, fsync, rename ----
 * Either the old file or the complete new one exists at path, never a torn
 * one, whatever happens (crash, SIGKILL, power loss after fsync). */
typedef struct nm_atomic_file {
    FILE *f;
    char *path;
    char *tmp_path;
    bool failed;
} nm_atomic_file;
nm_status nm_atomic_open(nm_atomic_file *af, const char *path, nm_err *err);
nm_status nm_atomic_write(nm_atomic_file *af, const void *p, size_t n, nm_err *err);
/* fsync + rename + fsync of the directory; frees af. */
nm_status nm_atomic_commit(nm_atomic_file *af, nm_err *err);
/* Removes the temporary file; frees af.  Safe after a failed write. */
void nm_atomic_abort(nm_atomic_file *af);
/* Convenience: whole buffer to path, atomically. */
nm_status nm_write_file_atomic(const char *path, const void *p, size_t n, nm_err *err);

/* ---- deterministic RNG (xoshiro256**, seeded by splitmix64) ---- */
typedef struct nm_rng {
    uint64_t s[4];
} nm_rng;
void nm_rng_seed(nm_rng *r, uint64_t seed);
uint64_t nm_rng_u64(nm_rng *r);
double nm_rng_uniform(nm_rng *r);  /* [0, 1) */
double nm_rng_normal(nm_rng *r);   /* standard normal (Box-Muller) */
/* Fisher-Yates shuffle of v[0..n) with a generator seeded by seed. */
void nm_shuffle_i64(int64_t *v, int64_t n, uint64_t seed);

/* Little-endian loads from possibly unaligned bytes. */
static inline uint32_t nm_rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t nm_rd_u64(const uint8_t *p) {
    return (uint64_t)nm_rd_u32(p) | (uint64_t)nm_rd_u32(p + 4) << 32;
}
static inline uint16_t nm_rd_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}

#endif
