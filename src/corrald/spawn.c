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
 * connect(2) time (sd_journal_stream_fd(3)).
 *
 * Nothing outside corrald may hold a spawn up: the master waits for the
 * child's exec status, so the child must never block on anything but the
 * kernel. Its journald streams are therefore connected non-blocking: a
 * journald whose stream backlog is full (stopped, stuck) gets EAGAIN at once
 * (unix(7): a non-blocking connect to a full listen queue fails rather than
 * waits), and that worker's output then stays corrald's own. The header is
 * written while still non-blocking; it fits an empty socket buffer. */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <syslog.h>
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

/* The longest the master waits for a child to exec (see spawn_worker()). */
#define EXEC_WAIT_MS 1000

/* Placeholder width for a pid filled in by the child. */
#define PID_DIGITS 10

/* "DEVICE:INODE", two 64-bit decimals. */
#define JOURNAL_STREAM_DIGITS 41

int spawn_build_env(const SpawnParams *p, char ***ret, char **ret_listen_pid, char **ret_watchdog_pid,
                    char ***ret_journal_stream) {
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
        if (p->node_channel) {
                PUSHF("NODE_CHANNEL_FD=%u", 3 + p->n_listen);
                PUSHF("NODE_CHANNEL_SERIALIZATION_MODE=json");
                /* A cluster worker to Node: listen(PORT) asks us for the
                 * socket (node-cluster.h); cluster.worker.id is slot + 1,
                 * stable across restarts, as apps use it. */
                PUSHF("NODE_UNIQUE_ID=%u", p->worker_id + 1);
        }
        /* Last, so the child can drop it by ending the array there when its
         * stderr did not become a journal stream. */
        *ret_journal_stream = NULL;
        if (p->output == SPAWN_OUTPUT_JOURNAL) {
                PUSHF("JOURNAL_STREAM=%*s", JOURNAL_STREAM_DIGITS, "");
                *ret_journal_stream = &env[strv_length(env) - 1];
        }
#undef PUSHF

        *ret = TAKE_PTR(env);
        return 0;
}

/* Async-signal-safe: write v as decimal at field, NUL-terminated; returns
 * the number of digits. */
static size_t format_u64(char *field, uint64_t v) {
        char tmp[21];
        size_t n = 0;
        do
                tmp[n++] = (char) ('0' + v % 10);
        while ((v /= 10));
        for (size_t i = 0; i < n; i++)
                field[i] = tmp[n - 1 - i];
        field[n] = 0;
        return n;
}

/* Write pid into a PID_DIGITS-wide field, left-aligned, and cut the string
 * after it. */
static void fill_pid(char *field, pid_t pid) {
        (void) format_u64(field, (uint64_t) pid);
}

typedef struct SpawnJournal {
        char path[108];
        char header[2][256];     /* stdout's, stderr's */
        size_t header_len[2];
} SpawnJournal;

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

/* Child side, async-signal-safe: connect one journald stream without ever
 * waiting, and send its header (the protocol of sd_journal_stream_fd(3):
 * identifier, unit id, priority, level prefix, then no forwarding to
 * syslog, kmsg or console). Returns the fd, blocking again for the worker,
 * or -errno (EAGAIN: journald does not accept now). */
static int child_stream_connect(const char *path, const char *header, size_t header_len) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        size_t plen = strlen(path);
        int sndbuf = 8 * 1024 * 1024;   /* as sd_journal_stream_fd() asks */

        if (plen >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, plen);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *) &sa, (socklen_t) (offsetof(struct sockaddr_un, sun_path) + plen)) == -1 ||
            shutdown(fd, SHUT_RD) == -1) {
                int r = -errno;
                (void) close(fd);
                return r;
        }
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
        ssize_t n = write(fd, header, header_len);
        if (n != (ssize_t) header_len || fd_nonblock(fd, false) < 0) {
                (void) close(fd);
                return n == -1 ? -errno : -EIO;
        }
        return fd;
}

/* Child side, after every fd is in place: connect stdout and stderr to
 * journald streams of their own. Stdout lines default to info, stderr lines
 * to warning, and both honour the "<N>" prefix of sd-daemon(3) (level
 * prefix on), which is why there are two streams rather than one shared. A
 * stream that cannot be opened now (no journald, or one that does not
 * accept) leaves that fd as corrald's own. The stream socket is
 * SOCK_CLOEXEC; only its dup on 1 or 2 survives exec. socket(2) returns the
 * lowest free fd, so this cannot clobber fds 3.. that are already in place.
 * JOURNAL_STREAM (SPEC §3) then names the stderr stream, or is dropped. */
static void child_journal_streams(const SpawnParams *p, const SpawnJournal *j, char **journal_stream) {
        bool stderr_is_stream = false;
        for (int i = 0; i < 2; i++) {
                int target = i == 0 ? STDOUT_FILENO : STDERR_FILENO;
                int s = child_stream_connect(j->path, j->header[i], j->header_len[i]);
                if (s < 0)
                        continue;
                if (fd_move_to(s, target) >= 0) {
                        if (target == STDERR_FILENO)
                                stderr_is_stream = true;
                }
                if (s != target)
                        (void) close(s);
        }
        if (!journal_stream)
                return;
        struct stat st;
        if (!stderr_is_stream || fstat(STDERR_FILENO, &st) == -1) {
                *journal_stream = NULL;    /* the last entry: the array ends here now */
                return;
        }
        char *v = *journal_stream + strlen("JOURNAL_STREAM=");
        v += format_u64(v, (uint64_t) st.st_dev);
        *v++ = ':';
        (void) format_u64(v, (uint64_t) st.st_ino);
}

_noreturn_ static void child(const SpawnParams *p, const SpawnJournal *journal, char **env, char *listen_pid,
                             char *watchdog_pid, char **journal_stream, int devnull, int err_pipe, pid_t parent) {
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
                child_journal_streams(p, journal, journal_stream);

        /* Anything above our set that is not CLOEXEC came from whoever
         * started corrald; mark it CLOEXEC so the worker sees exactly 0-2,
         * its listeners and the IPC socket. Without close_range(2) (Linux
         * 5.11) every open fd is visited, not just those below some
         * number: corrald raised RLIMIT_NOFILE to the hard limit, so its
         * fds go far above 4096. (err_pipe is CLOEXEC already; it stays
         * open until the exec.) */
        int r = fd_cloexec_from(high);
        if (r < 0)
                child_fail(err_pipe, "setup", -r);

        if (listen_pid)
                fill_pid(listen_pid, getpid());
        if (watchdog_pid)
                fill_pid(watchdog_pid, getpid());

        if (p->cwd && chdir(p->cwd) == -1)
                child_fail(err_pipe, "chdir", errno);

        /* corrald raised its own soft fd limit (main.c); the worker gets
         * the one corrald was started with, as systemd does for services. */
        if (rlimit_nofile_restore() < 0)
                child_fail(err_pipe, "setup", errno);

        sigemptyset(&none);
        (void) sigprocmask(SIG_SETMASK, &none, NULL);

        execvpe(p->argv[0], p->argv, env);
        child_fail(err_pipe, "exec", errno);
}

/* Parent side: everything the child needs for its journald streams, so that
 * it only has to connect and write. CORRAL_TEST_JOURNAL_STDOUT points the
 * streams at another socket; the tests use it to play a journald that does
 * not accept. */
static void spawn_journal_prepare(SpawnJournal *j, const char *identifier) {
        static const int prio[2] = { LOG_INFO, LOG_WARNING };
        const char *e = getenv("CORRAL_TEST_JOURNAL_STDOUT");

        snprintf(j->path, sizeof(j->path), "%s", e && e[0] == '/' ? e : "/run/systemd/journal/stdout");
        for (int i = 0; i < 2; i++) {
                int n = snprintf(j->header[i], sizeof(j->header[i]), "%.200s\n\n%d\n1\n0\n0\n0\n",
                                 identifier ? identifier : "", prio[i]);
                j->header_len[i] = (size_t) MAX(n, 0);
        }
}

/* Whether path is a file whose first bytes an exec can run. Returns 1
 * (runnable, or not ours to judge: missing, unreadable, not a regular
 * file, not executable), 0 (a file execve() refuses with ENOEXEC). */
static int runnable(const char *dir, const char *path) {
        char full[PATH_MAX];
        if (dir && path[0] != '/')
                snprintf(full, sizeof(full), "%.2000s/%.2000s", dir, path);
        else
                snprintf(full, sizeof(full), "%.4000s", path);
        _cleanup_close_ int fd = open(full, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) == -1 || !S_ISREG(st.st_mode) || access(full, X_OK) == -1)
                return -1;
        unsigned char head[4] = {};
        ssize_t n = read(fd, head, sizeof(head));
        if (n >= 2 && head[0] == '#' && head[1] == '!')
                return 1;
        if (n == 4 && memcmp(head, "\x7f" "ELF", 4) == 0)
                return 1;
        return 0;
}

int spawn_check_program(char * const *argv, const char *cwd, char * const *env, char **ret_error) {
        const char *prog = argv && argv[0] ? argv[0] : NULL;
        int r = -1;

        *ret_error = NULL;
        if (!prog || !prog[0])
                return 0;
        if (strchr(prog, '/'))
                r = runnable(cwd, prog);
        else {
                const char *path = NULL;
                for (char * const *e = env; e && *e && !path; e++)
                        if (startswith(*e, "PATH="))
                                path = *e + 5;
                path = path ?: getenv("PATH") ?: "/usr/local/bin:/usr/bin:/bin";
                for (const char *p = path; r < 0 && *p;) {
                        size_t len = strcspn(p, ":");
                        char dir[PATH_MAX];
                        /* An empty entry is the working directory (execvp(3)). */
                        snprintf(dir, sizeof(dir), "%.*s", (int) MIN(len, sizeof(dir) - 1), len ? p : ".");
                        r = runnable(dir, prog);
                        p += len + (p[len] == ':');
                }
        }
        if (r != 0)
                return 0;
        /* The interpreter people mean, from the file name. */
        const char *dot = strrchr(prog, '.');
        const char *interp = !dot ? "INTERPRETER" : streq_ptr(dot, ".js") || streq_ptr(dot, ".mjs") ? "node"
                           : streq_ptr(dot, ".py") ? "python3" : streq_ptr(dot, ".rb") ? "ruby"
                           : streq_ptr(dot, ".pl") ? "perl" : streq_ptr(dot, ".sh") ? "sh" : "INTERPRETER";
        if (asprintf(ret_error, "exec: %s has no #! line and is no binary, so it would be run by /bin/sh; "
                     "add a #! line, or name its interpreter: [\"%s\", \"%s\"]", prog, interp, prog) < 0)
                return -ENOMEM;
        return -ENOEXEC;
}

pid_t spawn_worker(const SpawnParams *p, const char **ret_stage) {
        _cleanup_strv_free_ char **env = NULL;
        _cleanup_close_ int devnull = -EBADF, rfd = -EBADF, wfd = -EBADF;
        char *listen_pid, *watchdog_pid, **journal_stream;
        SpawnJournal journal = {};
        int pipefd[2];
        sigset_t all, saved;
        static char stage[8];

        *ret_stage = "setup";
        if (spawn_build_env(p, &env, &listen_pid, &watchdog_pid, &journal_stream) < 0)
                return -ENOMEM;
        if (p->output == SPAWN_OUTPUT_JOURNAL)
                spawn_journal_prepare(&journal, p->syslog_identifier);

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
                child(p, &journal, env, listen_pid, watchdog_pid, journal_stream, devnull, wfd, parent);
        int fork_errno = errno;
        sigprocmask(SIG_SETMASK, &saved, NULL);

        if (pid < 0) {
                *ret_stage = "fork";
                return -fork_errno;
        }

        wfd = safe_close(wfd);
        ChildError ce;
        ssize_t n;
        /* The child only does kernel work before exec, but exec itself may
         * hang on a stuck file system: wait at most EXEC_WAIT_MS, then take
         * the worker as started. If it fails after that, it just exits
         * (127, or SIGPIPE writing its status into the closed pipe) and
         * counts as a crash. */
        struct pollfd pfd = { .fd = rfd, .events = POLLIN };
        uint64_t deadline = now_usec() + EXEC_WAIT_MS * USEC_PER_MSEC;
        for (;;) {
                uint64_t now = now_usec();
                int k = poll(&pfd, 1, now >= deadline ? 0 : (int) ((deadline - now + USEC_PER_MSEC - 1) / USEC_PER_MSEC));
                if (k > 0)
                        break;
                if (k == 0)
                        return pid;
                if (errno != EINTR)
                        return pid;
        }
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
