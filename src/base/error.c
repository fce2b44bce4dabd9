/* error.c - errors as values: nm_err carries a code and a one-line message. */
#include "base.h"

#include <stdarg.h>
#include <string.h>

nm_status nm_err_set(nm_err *err, nm_status code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void nm_err_clear(nm_err *err) {
    if (err) {
        err->code = NM_OK;
        err->msg[0] = 0;
    }
}

const char *nm_status_str(nm_status s) {
    switch (s) {
    case NM_OK: return "ok";
    case NM_ERR_IO: return "i/o error";
    case NM_ERR_FORMAT: return "bad format";
    case NM_ERR_NOMEM: return "out of memory";
    case NM_ERR_ARG: return "invalid argument";
    case NM_ERR_UNSUPPORTED: return "unsupported";
    case NM_ERR_NOT_FOUND: return "not found";
    case NM_ERR_RANGE: return "out of range";
    case NM_ERR_CANCELLED: return "cancelled";
    case NM_ERR_INTERNAL: return "internal error";
    }
    return "unknown error";
}

void nm_logf(const nm_log *log, nm_log_level level, const char *fmt, ...) {
    if (!log || !log->fn || level < log->min_level) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log->fn(log->user, level, msg);
}

const char *nm_version(void) { return NM_VERSION_STRING; }
