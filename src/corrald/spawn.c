/* spawn: see spawn.h.
 *
 * Modelled on libuv's src/unix/process.c: all signals are blocked across
 * fork() so no handler of ours (libuv's signal pipe writer in particular)
 * runs in the child; the child resets every disposition and its mask before
 * exec; exec failure travels back over a CLOEXEC pipe and the child leaves
 * with _exit(127). We fork ourselves rather than use uv_spawn() because
 * LISTEN_PID must be the child's own pid, which only the child knows —
 * and, for the same reason, a journald stream must be connected by the
 * child: journald takes _PID from the stream's SO_PEERCRED, fixed at
 * connect(2) time (sd_journal_stream_fd(3)). */
#include <fcntl.h>
#include <linux/close_range.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <syslog.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "fd-util.h"
#include "spawn.h"
#include "util.h"
#include "worker-env.h"

extern char **environ;

/* Variables that describe corrald's own relation to systemd, or that we set
 * per worker. They must never reach a worker with inherited values
 * (SPEC §3); each worker gets its own. */
static bool env_is_ours(const char *kv) {
        const char *eq = strchr(kv, '=');
        return worker_env_is_reserved(kv, eq ? (size_t) (eq - kv) : strlen(kv));
}

static bool env_overridden(const char *kv, char * const *extra) {
        const char *eq = strchr(kv, '=');
        size_t n = eq ? (size_t) (eq - kv) + 1 : strlen(kv);
        for (; extra && *extra; extra++)
                if (strncmp(*extra, kv, n) == 0)
                        return true;
        return false;
}

/* Placeholder width for a pid filled in by the child. */
#define PID_DIGITS 10

static int build_env(const SpawnParams *p, char ***ret, char **ret_listen_pid, char **ret_watchdog_pid) {
        _cleanup_strv_free_ char **env = NULL;
        char *s;

        for (char **e = environ; *e; e++)
                if (!env_is_ours(*e) && !env_overridden(*e, p->extra_env) && strv_extend(&env, *e) < 0)
                        return -ENOMEM;
        for (char * const *e = p->extra_env; e && *e; e++)
                if (strv_extend(&env, *e) < 0)
                        return -ENOMEM;

#define PUSHF(...)                                                   \
        do {                                                         \
                if (asprintf(&s, __VA_ARGS__) < 0)                   \
                        return -ENOMEM;                              \
                if (strv_push(&env, s) < 0) {                        \
                        free(s);                                     \
                        return -ENOMEM;                              \
                }                                                    \
        } while (0)

        *ret_listen_pid = *ret_watchdog_pid = NULL;
        if (p->n_listen > 0) {
                PUSHF("LISTEN_FDS=%u", p->n_listen);
                PUSHF("LISTEN_FDNAMES=%s", p->fdnames);
                PUSHF("LISTEN_PID=%*s", PID_DIGITS, "");
                *ret_listen_pid = s + strlen("LISTEN_PID=");
        }
        PUSHF("NOTIFY_SOCKET=%s", p->notify_socket);
        if (p->watchdog_usec > 0) {
                PUSHF("WATCHDOG_USEC=%llu", (unsigned long long) p->watchdog_usec);
                PUSHF("WATCHDOG_PID=%*s", PID_DIGITS, "");
                *ret_watchdog_pid = s + strlen("WATCHDOG_PID=");
        }
        PUSHF("CORRAL_INSTANCE=%s", p->instance);
        PUSHF("CORRAL_WORKER_ID=%u", p->worker_id);
        PUSHF("CORRAL_GENERATION=%u", p->generation);
        PUSHF("CORRAL_IPC_FD=%u", 3 + p->n_listen);
#undef PUSHF

        *ret = TAKE_PTR(env);
        return 0;
}

/* Async-signal-safe: write pid as decimal into a PID_DIGITS-wide field,
 * left-aligned, and cut the string after it. */
static void fill_pid(char *field, pid_t pid) {
        char tmp[PID_DIGITS + 1];
        int n = 0;
        unsigned long v = (unsigned long) pid;
        do
                tmp[n++] = (char) ('0' + v % 10);
        while ((v /= 10) && n < PID_DIGITS);
        for (int i = 0; i < n; i++)
                field[i] = tmp[n - 1 - i];
        field[n] = 0;
}

typedef struct ChildError {
        int err;
        char stage[8];
} ChildError;

_noreturn_ static void child_fail(int pipe_fd, const char *stage, int err) {
        ChildError ce = { .err = err };
        strncpy(ce.stage, stage, sizeof(ce.stage) - 1);
        (void) loop_write(pipe_fd, &ce, sizeof(ce));
        _exit(127);
}

/* Child side, after every fd is in place: connect stdout and stderr to
 * journald streams of their own. Stdout lines default to info, stderr lines
 * to warning, and both honour the "<N>" prefix of sd-daemon(3) (level_prefix
 * = 1), which is why there are two streams rather than one shared. A stream
 * that cannot be opened (no journald) leaves that fd as corrald's own. The
 * stream socket is SOCK_CLOEXEC; only its dup on 1 or 2 survives exec.
 * socket(2) returns the lowest free fd, so this cannot clobber fds 3.. that
 * are already in place. */
static void child_journal_streams(const SpawnParams *p) {
        static const struct { int fd, prio; } streams[] = {
                { STDOUT_FILENO, LOG_INFO },
                { STDERR_FILENO, LOG_WARNING },
        };
        for (size_t i = 0; i < ELEMENTSOF(streams); i++) {
                int s = sd_journal_stream_fd(p->syslog_identifier, streams[i].prio, 1);
                if (s < 0)
                        continue;
                if (fd_move_to(s, streams[i].fd) >= 0 && s != streams[i].fd)
                        (void) close(s);
        }
}

_noreturn_ static void child(const SpawnParams *p, char **env, char *listen_pid, char *watchdog_pid,
                             int devnull, int err_pipe, pid_t parent) {
        struct sigaction sa = { .sa_handler = SIG_DFL };
        sigset_t none;
        unsigned n_fds = p->n_listen + 1;   /* listeners, then the IPC socket */
        int high = 3 + (int) n_fds;
        int moved[n_fds];
        int output = -EBADF;

        /* Our own process group, so a signal aimed at a worker group never
         * hits the master; and die with the master (PR_SET_PDEATHSIG). */
        (void) setpgid(0, 0);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) == -1)
                child_fail(err_pipe, "setup", errno);
        /* The master may have died between fork() and prctl(). */
        if (getppid() != parent)
                _exit(127);

        for (int sig = 1; sig < NSIG; sig++)
                if (sig != SIGKILL && sig != SIGSTOP)
                        (void) sigaction(sig, &sa, NULL);

        /* Lift every source fd above the target range first, so moving one
         * into place cannot clobber another that is still to be moved. */
        for (unsigned i = 0; i < n_fds; i++) {
                int src = i < p->n_listen ? p->listen_fds[i] : p->ipc_fd;
                moved[i] = fcntl(src, F_DUPFD_CLOEXEC, high);
                if (moved[i] < 0)
                        child_fail(err_pipe, "setup", errno);
        }
        if (p->output == SPAWN_OUTPUT_FD) {
                output = fcntl(p->output_fd, F_DUPFD_CLOEXEC, high);
                if (output < 0)
                        child_fail(err_pipe, "setup", errno);
        }
        if (err_pipe < high) {
                int e = fcntl(err_pipe, F_DUPFD_CLOEXEC, high);
                if (e < 0)
                        child_fail(err_pipe, "setup", errno);
                err_pipe = e;
        }
        if (dup2(devnull, STDIN_FILENO) == -1)
                child_fail(err_pipe, "setup", errno);
        for (unsigned i = 0; i < n_fds; i++)
                if (fd_move_to(moved[i], 3 + (int) i) < 0)
                        child_fail(err_pipe, "setup", errno);
        if (output >= 0 && (fd_move_to(output, STDOUT_FILENO) < 0 || fd_move_to(output, STDERR_FILENO) < 0))
                child_fail(err_pipe, "setup", errno);
        if (p->output == SPAWN_OUTPUT_JOURNAL)
                child_journal_streams(p);

        /* Anything above our set that is not CLOEXEC came from whoever
         * started corrald; mark it CLOEXEC so the worker sees exactly 0-2,
         * its listeners and the IPC socket (close_range(2), Linux 5.11). */
        if (close_range((unsigned) high, ~0U, CLOSE_RANGE_CLOEXEC) == -1)
                for (int fd = high; fd < 4096; fd++)
                        if (fd != err_pipe)
                                (void) fd_cloexec(fd, true);

        if (listen_pid)
                fill_pid(listen_pid, getpid());
        if (watchdog_pid)
                fill_pid(watchdog_pid, getpid());

        if (p->cwd && chdir(p->cwd) == -1)
                child_fail(err_pipe, "chdir", errno);

        sigemptyset(&none);
        (void) sigprocmask(SIG_SETMASK, &none, NULL);

        execvpe(p->argv[0], p->argv, env);
        child_fail(err_pipe, "exec", errno);
}

pid_t spawn_worker(const SpawnParams *p, const char **ret_stage) {
        _cleanup_strv_free_ char **env = NULL;
        _cleanup_close_ int devnull = -EBADF, rfd = -EBADF, wfd = -EBADF;
        char *listen_pid, *watchdog_pid;
        int pipefd[2];
        sigset_t all, saved;
        static char stage[8];

        *ret_stage = "setup";
        if (build_env(p, &env, &listen_pid, &watchdog_pid) < 0)
                return -ENOMEM;

        devnull = open("/dev/null", O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (devnull < 0)
                return -errno;
        if (pipe2(pipefd, O_CLOEXEC) == -1)
                return -errno;
        rfd = pipefd[0];
        wfd = pipefd[1];

        pid_t parent = getpid();
        sigfillset(&all);
        sigprocmask(SIG_SETMASK, &all, &saved);
        pid_t pid = fork();
        if (pid == 0)
                child(p, env, listen_pid, watchdog_pid, devnull, wfd, parent);
        int fork_errno = errno;
        sigprocmask(SIG_SETMASK, &saved, NULL);

        if (pid < 0) {
                *ret_stage = "fork";
                return -fork_errno;
        }

        wfd = safe_close(wfd);
        ChildError ce;
        ssize_t n;
        do
                n = read(rfd, &ce, sizeof(ce));
        while (n == -1 && errno == EINTR);
        if (n == 0)
                return pid;     /* exec succeeded: the pipe closed on exec */

        /* The child failed before or in exec and exits 127; reap it here so
         * the caller sees a plain error rather than a worker that died. */
        while (waitpid(pid, NULL, 0) == -1 && errno == EINTR)
                ;
        if (n != (ssize_t) sizeof(ce))
                return -EIO;
        memcpy(stage, ce.stage, sizeof(stage));
        stage[sizeof(stage) - 1] = 0;
        *ret_stage = stage;
        return -ce.err;
}
