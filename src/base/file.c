/* file.c - read-only mappings and atomic writes.
 *
 * Why atomic writes everywhere: a model, adapter or checkpoint that is half
 * written when the laptop sleeps or the job is killed is worse than none, so
 * every file nomoat writes goes to "<path>.tmp.<pid>" first, is fsync()ed,
 * then renamed over the target, and the directory is fsync()ed so the rename
 * itself survives a crash. */
#include "base.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Opens a non-empty regular file for reading: *fd and its *size. */
static nm_status open_nonempty(const char *path, int *fd, size_t *size, nm_err *err) {
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0) return nm_err_set(err, NM_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    nm_status bad = NM_OK;
    if (fstat(*fd, &st) != 0) bad = nm_err_set(err, NM_ERR_IO, "%s: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode)) bad = nm_err_set(err, NM_ERR_IO, "%s: not a regular file", path);
    else if (st.st_size == 0) bad = nm_err_set(err, NM_ERR_FORMAT, "%s: empty file", path);
    if (bad) {
        close(*fd);
        *fd = -1;
        return bad;
    }
    *size = (size_t)st.st_size;
    return NM_OK;
}

nm_status nm_map_open(nm_map *m, const char *path, nm_err *err) {
    memset(m, 0, sizeof *m);
    int fd;
    size_t n;
    nm_status st = open_nonempty(path, &fd, &n, err);
    if (st) return st;
    void *p = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return nm_err_set(err, NM_ERR_IO, "%s: mmap: %s", path, strerror(e));
    m->data = p;
    m->size = n;
    return NM_OK;
}

nm_status nm_map_read(nm_map *m, const char *path, nm_err *err) {
    memset(m, 0, sizeof *m);
    int fd;
    size_t n;
    nm_status st = open_nonempty(path, &fd, &n, err);
    if (st) return st;
    /* huge pages need 2 MiB-aligned virtual addresses, which mmap does not
     * promise (Linux aligns large anonymous maps itself only since 6.7) */
    const size_t huge = (size_t)2 << 20, total = n + huge;
    uint8_t *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        close(fd);
        return nm_err_set(err, NM_ERR_NOMEM, "%s: no memory for its %zu bytes", path, n);
    }
    uint8_t *p = base + ((huge - (uintptr_t)base % huge) % huge);
#ifdef MADV_HUGEPAGE
    (void)madvise(p, n, MADV_HUGEPAGE); /* advice: fine if refused */
#endif
    for (size_t done = 0; done < n;) {
        const ssize_t r = read(fd, p + done, n - done > ((size_t)1 << 30) ? (size_t)1 << 30 : n - done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            const int e = r < 0 ? errno : 0;
            close(fd);
            munmap(base, total);
            return nm_err_set(err, NM_ERR_IO, "%s: %s", path, e ? strerror(e) : "file shrank while being read");
        }
        done += (size_t)r;
    }
    close(fd);
    (void)mprotect(base, total, PROT_READ); /* as read-only as a file map */
    m->data = p;
    m->size = n;
    m->base = base;
    m->base_size = total;
    return NM_OK;
}

nm_status nm_map_set_writable(nm_map *m, bool writable, nm_err *err) {
    if (!m->base) return nm_err_set(err, NM_ERR_UNSUPPORTED, "a file map cannot be written to");
    if (mprotect(m->base, m->base_size, writable ? PROT_READ | PROT_WRITE : PROT_READ) != 0)
        return nm_err_set(err, NM_ERR_IO, "mprotect: %s", strerror(errno));
    return NM_OK;
}

void nm_map_close(nm_map *m) {
    if (m->base) munmap(m->base, m->base_size);
    else if (m->data) munmap(m->data, m->size);
    memset(m, 0, sizeof *m);
}

uint64_t nm_mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (uint64_t)kb * 1024;
}

nm_status nm_read_file(const char *path, char **out, size_t *len, nm_err *err) {
    *out = NULL;
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return nm_err_set(err, NM_ERR_IO, "%s: %s", path, strerror(errno));
    nm_buf b;
    nm_buf_init(&b);
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) nm_buf_push(&b, tmp, n);
    int bad = ferror(f);
    fclose(f);
    nm_buf_push(&b, "", 1);
    if (bad) {
        nm_buf_deinit(&b);
        return nm_err_set(err, NM_ERR_IO, "%s: read error", path);
    }
    if (b.oom) {
        nm_buf_deinit(&b);
        return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory reading file", path);
    }
    *out = (char *)b.data;
    if (len) *len = b.len - 1;
    return NM_OK;
}

nm_status nm_atomic_open(nm_atomic_file *af, const char *path, nm_err *err) {
    memset(af, 0, sizeof *af);
    size_t n = strlen(path) + 64;
    af->path = nm_strdup(path);
    af->tmp_path = malloc(n);
    if (!af->path || !af->tmp_path) {
        free(af->path);
        free(af->tmp_path);
        return nm_err_set(err, NM_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(af->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    af->f = fopen(af->tmp_path, "wb");
    if (!af->f) {
        int e = errno;
        free(af->path);
        free(af->tmp_path);
        memset(af, 0, sizeof *af);
        return nm_err_set(err, NM_ERR_IO, "%s: cannot create: %s", path, strerror(e));
    }
    return NM_OK;
}

nm_status nm_atomic_write(nm_atomic_file *af, const void *p, size_t n, nm_err *err) {
    if (af->failed) return nm_err_set(err, NM_ERR_IO, "%s: earlier write failed", af->path);
    if (n && fwrite(p, 1, n, af->f) != n) {
        af->failed = true;
        return nm_err_set(err, NM_ERR_IO, "%s: write failed: %s", af->path, strerror(errno));
    }
    return NM_OK;
}

static void free_af(nm_atomic_file *af) {
    free(af->path);
    free(af->tmp_path);
    memset(af, 0, sizeof *af);
}

void nm_atomic_abort(nm_atomic_file *af) {
    if (af->f) fclose(af->f);
    if (af->tmp_path) unlink(af->tmp_path);
    free_af(af);
}

nm_status nm_atomic_commit(nm_atomic_file *af, nm_err *err) {
    if (af->failed) {
        nm_err_set(err, NM_ERR_IO, "%s: write failed", af->path);
        nm_atomic_abort(af);
        return NM_ERR_IO;
    }
    if (fflush(af->f) != 0 || fsync(fileno(af->f)) != 0) {
        nm_err_set(err, NM_ERR_IO, "%s: flush: %s", af->path, strerror(errno));
        nm_atomic_abort(af);
        return NM_ERR_IO;
    }
    if (fclose(af->f) != 0) {
        af->f = NULL;
        nm_err_set(err, NM_ERR_IO, "%s: close: %s", af->path, strerror(errno));
        nm_atomic_abort(af);
        return NM_ERR_IO;
    }
    af->f = NULL;
    if (rename(af->tmp_path, af->path) != 0) {
        nm_err_set(err, NM_ERR_IO, "%s: rename: %s", af->path, strerror(errno));
        nm_atomic_abort(af);
        return NM_ERR_IO;
    }
    /* Make the rename durable. */
    char *dcopy = nm_strdup(af->path);
    if (dcopy) {
        int dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
        free(dcopy);
    }
    free_af(af);
    return NM_OK;
}

nm_status nm_write_file_atomic(const char *path, const void *p, size_t n, nm_err *err) {
    nm_atomic_file af;
    nm_status st = nm_atomic_open(&af, path, err);
    if (st) return st;
    st = nm_atomic_write(&af, p, n, err);
    if (st) {
        nm_atomic_abort(&af);
        return st;
    }
    return nm_atomic_commit(&af, err);
}
