/* testlib.c - see testlib.h. */
#include "testlib.h"

#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct runner_state {
    int passed, failed;
    char tmpdir[256];
} runner_state;

/* The runner is the single process-wide object of a test program; the
 * library itself keeps no globals. */
static runner_state R;

bool nm_test_check(nm_test *t, bool cond, const char *file, int line, const char *fmt, ...) {
    if (cond) return true;
    t->failures++;
    if (t->failures <= 5) {
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        printf("FAIL %s: %s:%d: %s\n", t->name, file, line, msg);
        fflush(stdout);
    }
    return false;
}

bool nm_test_check_ok(nm_test *t, nm_status st, const nm_err *err, const char *file, int line) {
    return nm_test_check(t, st == NM_OK, file, line, "status %d (%s): %s", (int)st, nm_status_str(st), err->msg);
}

void nm_test_run(const char *name, nm_test_fn fn) {
    nm_test t = {name, 0};
    fn(&t);
    if (t.failures) {
        R.failed++;
    } else {
        R.passed++;
        printf("ok %s\n", name);
    }
    fflush(stdout);
}

int nm_test_finish(void) {
    if (R.tmpdir[0]) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", R.tmpdir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", R.tmpdir);
    }
    printf("RESULT passed=%d failed=%d\n", R.passed, R.failed);
    return R.failed ? 1 : 0;
}

const char *nm_test_shared(const char *rel) {
    static char bufs[8][1024];
    static int slot;
    char *b = bufs[slot++ & 7];
    const char *root = getenv("NOMOAT_SHARED");
    snprintf(b, 1024, "%s/%s", root && *root ? root : "../shared", rel);
    return b;
}

bool nm_test_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

const char *nm_test_tmpdir(void) {
    if (!R.tmpdir[0]) {
        snprintf(R.tmpdir, sizeof R.tmpdir, "/tmp/nomoat-test-XXXXXX");
        if (!mkdtemp(R.tmpdir)) {
            perror("mkdtemp");
            exit(2);
        }
    }
    return R.tmpdir;
}

const char *nm_test_bin(void) {
    const char *b = getenv("NOMOAT_BIN");
    return b && *b ? b : "build/nomoat";
}

int nm_test_sh(const char *cmd, char **out) {
    if (out) *out = NULL;
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 2) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) break;
            buf = nb;
            cap *= 2;
        }
    }
    if (buf) buf[len] = 0;
    int st = pclose(p);
    if (out) *out = buf;
    else free(buf);
    if (st == -1) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

char *nm_test_read(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (n < 0) { fclose(f); return NULL; }
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    fclose(f);
    if (b) { b[n] = 0; if (len) *len = (size_t)n; }
    return b;
}
