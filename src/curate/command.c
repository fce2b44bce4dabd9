/* command.c - an external scorer: one child process per candidate, JSON in,
 * a number out, with a deadline.
 *
 * The child is started with posix_spawn (safe in a threaded process) in its
 * own process group, so a timeout kills whatever the shell started too.
 * Its standard input is one end of a socket pair rather than a pipe: a
 * child that exits without reading everything would make a pipe write
 * raise SIGPIPE in this process, while send(MSG_NOSIGNAL) just fails. */
#include "curate/curate.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define OUT_MAX (1u << 20)

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void kill_group(pid_t pid) {
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
}

nm_status nm_cu_run_command(const char *command, const char *input, size_t in_len, double timeout_s, char **out,
                            nm_err *err) {
    *out = NULL;
    int sv[2] = {-1, -1}, op[2] = {-1, -1};
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) || pipe2(op, O_CLOEXEC)) {
        int e = errno;
        if (sv[0] >= 0) {
            close(sv[0]);
            close(sv[1]);
        }
        return nm_err_set(err, NM_ERR_IO, "scorer command '%.100s': cannot create pipes: %s", command, strerror(e));
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 0);
    posix_spawn_file_actions_adddup2(&fa, op[1], 1);
    posix_spawnattr_setpgroup(&at, 0);
    sigset_t def;
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    posix_spawnattr_setsigdefault(&at, &def);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF);
    char *argv[] = {"/bin/sh", "-c", (char *)command, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, "/bin/sh", &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(sv[1]);
    close(op[1]);
    if (rc) {
        close(sv[0]);
        close(op[0]);
        return nm_err_set(err, NM_ERR_IO, "scorer command '%.100s': cannot start /bin/sh: %s", command, strerror(rc));
    }
    int in_fd = sv[0], out_fd = op[0];
    nm_buf b;
    nm_buf_init(&b);
    size_t sent = 0;
    const double deadline = mono_s() + timeout_s;
    nm_status st = NM_OK;
    if (in_len == 0) {
        close(in_fd);
        in_fd = -1;
    }
    while (out_fd >= 0) {
        double left = deadline - mono_s();
        if (left <= 0) {
            st = nm_err_set(err, NM_ERR_CANCELLED, "scorer command '%.100s' timed out after %g s", command, timeout_s);
            break;
        }
        struct pollfd pf[2];
        int n = 0;
        pf[n++] = (struct pollfd){out_fd, POLLIN, 0};
        if (in_fd >= 0) pf[n++] = (struct pollfd){in_fd, POLLOUT, 0};
        int ms = left > 1000 ? 1000 : (int)(left * 1000) + 1;
        int r = poll(pf, (nfds_t)n, ms);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            st = nm_err_set(err, NM_ERR_IO, "scorer command '%.100s': poll: %s", command, strerror(errno));
            break;
        }
        if (n > 1 && pf[1].revents) {
            ssize_t w = send(in_fd, input + sent, in_len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) sent += (size_t)w;
            /* a child that stops reading early is its own business: its
             * answer (or exit status) is what counts */
            if (sent == in_len || (w < 0 && errno != EAGAIN && errno != EINTR)) {
                close(in_fd);
                in_fd = -1;
            }
        }
        if (pf[0].revents) {
            char buf[4096];
            ssize_t k = read(out_fd, buf, sizeof buf);
            if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (k <= 0) {
                close(out_fd);
                out_fd = -1;
                break;
            }
            if (b.len < OUT_MAX) nm_buf_push(&b, buf, (size_t)k);
        }
    }
    if (in_fd >= 0) close(in_fd);
    if (out_fd >= 0) close(out_fd);
    if (st) {
        kill_group(pid);
        nm_buf_deinit(&b);
        return st;
    }
    /* output closed: wait for the exit, still within the deadline */
    int status = 0;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) break;
        if (w < 0 && errno != EINTR) {
            st = nm_err_set(err, NM_ERR_IO, "scorer command '%.100s': waitpid: %s", command, strerror(errno));
            break;
        }
        if (mono_s() > deadline) {
            kill_group(pid);
            st = nm_err_set(err, NM_ERR_CANCELLED, "scorer command '%.100s' timed out after %g s", command, timeout_s);
            break;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    if (!st && WIFSIGNALED(status))
        st = nm_err_set(err, NM_ERR_IO, "scorer command '%.100s' was killed by signal %d", command, WTERMSIG(status));
    else if (!st && WIFEXITED(status) && WEXITSTATUS(status) != 0)
        st = nm_err_set(err, NM_ERR_IO, "scorer command '%.100s' exited with status %d", command, WEXITSTATUS(status));
    nm_buf_push(&b, "", 1);
    if (!st && b.oom) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    if (st) {
        nm_buf_deinit(&b);
        return st;
    }
    *out = (char *)b.data;
    return NM_OK;
}
