/* cli.c - shared helpers of the subcommands (logging, errors, parsing). */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static void log_stderr(void *user, nm_log_level level, const char *msg) {
    (void)user;
    static const char *names[] = {"debug", "info", "warning", "error"};
    if (level == NM_LOG_INFO) fprintf(stderr, "%s\n", msg);
    else fprintf(stderr, "nomoat: %s: %s\n", names[level], msg);
}

nm_log cli_logger(bool verbose) {
    nm_log l = {log_stderr, NULL, verbose ? NM_LOG_DEBUG : NM_LOG_INFO};
    return l;
}

int cli_fail(const nm_err *err) {
    fprintf(stderr, "nomoat: error: %s\n", err->msg[0] ? err->msg : nm_status_str(err->code));
    return 1;
}

int cli_usage(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "nomoat %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(see 'nomoat %s --help')\n", cmd);
    return 2;
}

bool cli_is_help(const char *arg) { return strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0; }

const char *cli_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        cli_usage(argv[0], "option %s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

bool cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool cli_parse_u64(const char *s, uint64_t *out) {
    if (!s || !*s || *s == '-') return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return false;
    *out = v;
    return true;
}

bool cli_parse_f64(const char *s, double *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end) return false;
    *out = v;
    return true;
}
