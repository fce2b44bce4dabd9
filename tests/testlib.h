/*
 * testlib.h - nomoat's small test runner.  Each tests/test_*.c is its own
 * program: main() calls nm_test_run() for each test function and returns
 * nm_test_finish().  Output: "ok NAME" or "FAIL NAME: file:line: why" per
 * test, then "RESULT passed=N failed=M" (read by scripts/run-tests.sh).
 */
#ifndef NM_TESTLIB_H
#define NM_TESTLIB_H

#include "nomoat.h"
#include <stdio.h>
#include <stdlib.h>

typedef struct nm_test {
    const char *name;
    int failures;   /* CHECKs that failed in the current test */
} nm_test;

typedef void (*nm_test_fn)(nm_test *t);

void nm_test_run(const char *name, nm_test_fn fn);
int nm_test_finish(void);

/* Records a failure (first few printed); returns cond so callers can bail. */
bool nm_test_check(nm_test *t, bool cond, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* The assertion macros only add file and line to a function call. */
#define CHECK(t, cond) nm_test_check((t), (cond), __FILE__, __LINE__, "%s", #cond)
#define CHECKF(t, cond, ...) nm_test_check((t), (cond), __FILE__, __LINE__, __VA_ARGS__)
/* st is evaluated once (it is often the call under test). */
#define CHECK_OK(t, st, err) nm_test_check_ok((t), (st), &(err), __FILE__, __LINE__)
bool nm_test_check_ok(nm_test *t, nm_status st, const nm_err *err, const char *file, int line);

/* Path to a file under the shared fixtures folder ($NOMOAT_SHARED, default
 * ../shared).  Returns a static buffer per call slot (use it right away). */
const char *nm_test_shared(const char *rel);
/* True if the shared file exists (tests skip nothing silently: a missing
 * fixture is a failure). */
bool nm_test_file_exists(const char *path);
/* A fresh temporary directory for this test program (removed at exit). */
const char *nm_test_tmpdir(void);
/* Path of the built nomoat tool ($NOMOAT_BIN, default build/nomoat). */
const char *nm_test_bin(void);
/* Runs a shell command, captures stdout (+stderr if merge) into *out
 * (malloc()ed) and returns its exit status (-1 if it could not run). */
int nm_test_sh(const char *cmd, char **out);
/* Reads a whole file; NULL on error. */
char *nm_test_read(const char *path, size_t *len);

#endif
