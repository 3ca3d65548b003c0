/* log: corrald's logging sink. See log.h.
 *
 * Journal mode sends one datagram per event in journald's native protocol
 * (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/), with
 * SYSLOG_IDENTIFIER=corrald so `journalctl -u app` shows master events next
 * to worker output. It does not use sd_journal_sendv(): libsystemd's socket
 * is blocking, and a datagram to a journald that does not read (stopped,
 * stuck on I/O) blocks the sender once journald's receive queue is full
 * (net.unix.max_dgram_qlen, 512 by default) — the master would stop
 * answering its workers and systemd's watchdog. Ours is non-blocking and
 * connected; what the journal cannot take now waits in a bounded FIFO that
 * a write-poll on the default loop drains, and what does not fit there is
 * dropped and counted, reported once the journal accepts again. The poll
 * is unreferenced so it never keeps the loop alive; at exit the FIFO gets a
 * last, bounded chance (EXIT_FLUSH_MS).
 *
 * Stderr mode (and worker output passed on by output.c) goes through one
 * FIFO of whole lines, written non-blocking: a reader of our stderr that
 * does not keep up (a pipe nobody reads) never blocks the master. What the
 * FIFO cannot hold (STDERR_QUEUE_MAX) is dropped whole and counted, and the
 * count is reported once stderr accepts again (SPEC §8). Since every line
 * of ours goes through the one FIFO, lines never interleave, even when a
 * write is partial. A pipe or terminal is reopened through /proc/self/fd/2
 * to get an open file description of our own with O_NONBLOCK (setting it
 * on the inherited one would change it for everyone sharing it, e.g. the
 * shell); a socket is written with MSG_DONTWAIT; a regular file is written
 * as it is (it never waits on a reader).
 *
 * Control characters in corrald's own messages (which quote worker data:
 * STATUS= text, IPC messages) are escaped on stderr, so a worker cannot
 * drive the terminal of whoever reads the log. */
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "fd-util.h"
#include "log.h"
#include "util.h"

static LogTarget target = LOG_TARGET_STDERR;
static char instance[80] = "corral";
static int max_priority = LOG_INFO;

static void journal_flush_at_exit(void);
static void stderr_setup(void);
static void stderr_flush_at_exit(void);
static void stderr_notice(const char *msg);

int log_target_from_string(const char *s) {
        if (streq_ptr(s, "auto"))
                return LOG_TARGET_AUTO;
        if (streq_ptr(s, "journal"))
                return LOG_TARGET_JOURNAL;
        if (streq_ptr(s, "stderr"))
                return LOG_TARGET_STDERR;
        return -EINVAL;
}

/* JOURNAL_STREAM is "DEVICE:INODE" of the stream systemd connected to our
 * stdout/stderr (systemd.exec(5)); it only counts if stderr is still it. */
static bool stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;
        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return false;
        if (fstat(STDERR_FILENO, &st) == -1)
                return false;
        return st.st_dev == dev && st.st_ino == ino;
}

void log_setup(LogTarget t, const char *inst) {
        static bool registered;

        if (t == LOG_TARGET_AUTO)
                t = stderr_is_journal() ? LOG_TARGET_JOURNAL : LOG_TARGET_STDERR;
        target = t;
        if (inst)
                log_set_instance(inst);
        if (!registered) {
                stderr_setup();
                /* atexit handlers run in reverse: the journal's first. */
                registered = atexit(stderr_flush_at_exit) == 0 && atexit(journal_flush_at_exit) == 0;
        }
        if (getenv("CORRAL_DEBUG"))
                max_priority = LOG_DEBUG;
}

void log_set_instance(const char *inst) {
        snprintf(instance, sizeof(instance), "%s", inst);
}

LogTarget log_get_target(void) {
        return target;
}

void log_set_max_priority(int prio) {
        max_priority = prio;
}

/* ---- journal: non-blocking native-protocol sender ---------------------- */

#define JOURNAL_SOCKET "/run/systemd/journal/socket"
#define QUEUE_MAX_MSGS 4096
#define QUEUE_MAX_BYTES (4 * 1024 * 1024)
#define EXIT_FLUSH_MS 1000
/* Our messages are far smaller: MESSAGE is cut at 2 KiB. */
#define DATAGRAM_MAX 8192

typedef struct Pending {
        struct Pending *next;
        size_t len;
        char data[];
} Pending;

typedef enum PollState {
        POLL_NONE,               /* no handle */
        POLL_ACTIVE,             /* waiting for the socket to be writable */
        POLL_CLOSING,            /* uv_close() called, callback pending */
} PollState;

static struct {
        int fd;                  /* connected to JOURNAL_SOCKET, or -EBADF */
        Pending *head, **tail;
        size_t n, bytes;
        unsigned long long n_dropped;   /* since the last report */
        uv_poll_t poll;
        PollState poll_state;
        bool exiting;            /* in the atexit flush: no loop any more */
        bool unreachable;        /* no journald: our events go to stderr */
} journal = { .fd = -EBADF, .tail = &journal.head };

static int journal_connect(void) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX, .sun_path = JOURNAL_SOCKET };
        if (journal.fd >= 0)
                return 0;
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        /* Connected, so that poll(2) reports writable only when journald's
         * queue has room again (unix(7): a connected datagram socket waits
         * on its peer). */
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == -1) {
                int r = -errno;
                safe_close(fd);
                return r;
        }
        journal.fd = fd;
        return 0;
}

/* Send one datagram now. Returns 0 (sent, or dropped for good: no journal),
 * or -EAGAIN when journald cannot take it yet. */
static int journal_send_one(const char *data, size_t len) {
        for (int attempt = 0; attempt < 2; attempt++) {
                int r = journal_connect();
                if (r < 0) {
                        /* No journald at all: say so once on stderr and
                         * send our events there from now on, rather than
                         * lose them silently. */
                        if (!journal.unreachable) {
                                char msg[200];
                                journal.unreachable = true;
                                errno = -r;
                                snprintf(msg, sizeof(msg),
                                         "the journal is not reachable (%s: %m); logging to stderr instead",
                                         JOURNAL_SOCKET);
                                stderr_notice(msg);
                        }
                        return 0;
                }
                if (send(journal.fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
                        return 0;
                if (errno == EAGAIN || errno == ENOBUFS)
                        return -EAGAIN;
                /* ECONNREFUSED and friends: journald's socket was replaced.
                 * Connect again, unless a poll handle still watches the fd
                 * (it must be closed before its fd). */
                if (journal.poll_state != POLL_NONE)
                        return 0;
                journal.fd = safe_close(journal.fd);
        }
        return 0;
}

static void on_poll_closed(uv_handle_t *h);
static void on_writable(uv_poll_t *h, int status, int events);

static void journal_arm_poll(void) {
        if (journal.poll_state != POLL_NONE || journal.fd < 0 || journal.exiting)
                return;
        /* corrald runs one loop, the default one (main.c). */
        if (uv_poll_init(uv_default_loop(), &journal.poll, journal.fd) < 0)
                return;
        uv_unref((uv_handle_t *) &journal.poll);
        (void) uv_poll_start(&journal.poll, UV_WRITABLE, on_writable);
        journal.poll_state = POLL_ACTIVE;
}

static void queue_pop(void) {
        Pending *p = journal.head;
        journal.head = p->next;
        if (!journal.head)
                journal.tail = &journal.head;
        journal.n--;
        journal.bytes -= p->len;
        free(p);
}

static void queue_push(const char *data, size_t len) {
        Pending *p;
        if (journal.n >= QUEUE_MAX_MSGS || journal.bytes + len > QUEUE_MAX_BYTES ||
            !(p = malloc(sizeof(Pending) + len))) {
                journal.n_dropped++;
                return;
        }
        p->next = NULL;
        p->len = len;
        memcpy(p->data, data, len);
        *journal.tail = p;
        journal.tail = &p->next;
        journal.n++;
        journal.bytes += len;
}

/* Send what is queued, in order. Returns true when the queue is empty. */
static bool journal_flush(void) {
        while (journal.head) {
                if (journal_send_one(journal.head->data, journal.head->len) == -EAGAIN)
                        return false;
                queue_pop();
        }
        if (journal.n_dropped > 0) {
                unsigned long long n = journal.n_dropped;
                journal.n_dropped = 0;
                log_warning("%llu log message%s dropped: the journal was not accepting them", n,
                            n == 1 ? "" : "s");
        }
        return !journal.head;
}

static void on_poll_closed(uv_handle_t *h) {
        journal.poll_state = POLL_NONE;
        if (journal.head)
                journal_arm_poll();
}

static void on_writable(uv_poll_t *h, int status, int events) {
        if (!journal_flush())
                return;
        /* Drained: close the handle, so that none is left open when the
         * loop ends (uv_loop_close(3) refuses a loop with open handles). */
        uv_poll_stop(&journal.poll);
        journal.poll_state = POLL_CLOSING;
        uv_close((uv_handle_t *) &journal.poll, on_poll_closed);
}

static void journal_send(const char *data, size_t len) {
        /* Behind a queue, a message waits its turn: order is kept. */
        if (journal.head || journal_send_one(data, len) == -EAGAIN) {
                queue_push(data, len);
                journal_arm_poll();
        }
}

static void journal_flush_at_exit(void) {
        journal.exiting = true;
        uint64_t deadline = now_usec() + EXIT_FLUSH_MS * USEC_PER_MSEC;
        while (!journal_flush()) {
                uint64_t now = now_usec();
                struct pollfd pfd = { .fd = journal.fd, .events = POLLOUT };
                if (now >= deadline || poll(&pfd, 1, (int) ((deadline - now) / USEC_PER_MSEC) + 1) <= 0)
                        break;
        }
        while (journal.head)
                queue_pop();
}

/* ---- stderr: non-blocking line FIFO ------------------------------------- */

#define STDERR_QUEUE_MAX (1024 * 1024)
/* Above this, worker output waits in the workers' pipes (output.c stops
 * reading them), so that it is not dropped while a reader keeps up only
 * slowly; what is left of the queue is for corrald's own events. */
#define STDERR_HIGH_WATER (256 * 1024)

static struct {
        int fd;                  /* what we write to: fd 2, or our reopened copy */
        bool is_socket;
        char *buf;               /* queued bytes: buf[off..len) */
        size_t off, len, cap;
        unsigned long long n_dropped;   /* lines, since the last report */
        uv_poll_t poll;
        PollState poll_state;
        bool exiting;
        void (*on_drained)(void);
} err = { .fd = STDERR_FILENO };

static void stderr_setup(void) {
        struct stat st;
        if (fstat(STDERR_FILENO, &st) == -1)
                return;
        if (S_ISSOCK(st.st_mode))
                err.is_socket = true;
        else if (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode)) {
                int fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
                if (fd >= 0)
                        err.fd = fd;
        }
}

/* One non-blocking write. Returns bytes written, or -errno. */
static ssize_t stderr_write_some(const char *p, size_t n) {
        ssize_t k;
        do
                k = err.is_socket ? send(err.fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL) : write(err.fd, p, n);
        while (k == -1 && errno == EINTR);
        return k == -1 ? -errno : k;
}

static void stderr_report_dropped(void);

/* Write what is queued. Returns true when the queue is empty. A write
 * error other than EAGAIN (EPIPE: nobody will ever read) discards the
 * queue: it can never be written. */
static bool stderr_flush(void) {
        while (err.off < err.len) {
                ssize_t k = stderr_write_some(err.buf + err.off, err.len - err.off);
                if (k == -EAGAIN)
                        return false;
                if (k <= 0) {
                        err.off = err.len;
                        break;
                }
                err.off += (size_t) k;
        }
        err.off = err.len = 0;
        stderr_report_dropped();
        return err.off == err.len;
}

static void on_stderr_closed(uv_handle_t *h);
static void on_stderr_writable(uv_poll_t *h, int status, int events) {
        if (status < 0) {
                err.off = err.len = 0;   /* the reader is gone: nothing more will be written */
        } else if (!stderr_flush())
                return;
        if (err.on_drained)
                err.on_drained();
        if (err.off < err.len)
                return;
        uv_poll_stop(&err.poll);
        err.poll_state = POLL_CLOSING;
        uv_close((uv_handle_t *) &err.poll, on_stderr_closed);
}

static void stderr_arm_poll(void) {
        if (err.poll_state != POLL_NONE || err.exiting)
                return;
        if (uv_poll_init(uv_default_loop(), &err.poll, err.fd) < 0)
                return;
        uv_unref((uv_handle_t *) &err.poll);
        (void) uv_poll_start(&err.poll, UV_WRITABLE, on_stderr_writable);
        err.poll_state = POLL_ACTIVE;
}

static void on_stderr_closed(uv_handle_t *h) {
        err.poll_state = POLL_NONE;
        if (err.off < err.len)
                stderr_arm_poll();
}

void log_stderr_write(const char *data, size_t len) {
        int saved = errno;
        if (err.off == err.len) {
                /* Nothing queued: write now, queue only the rest. */
                ssize_t k = stderr_write_some(data, len);
                if (k == (ssize_t) len || (k < 0 && k != -EAGAIN))
                        goto out;
                if (k > 0) {
                        data += k;
                        len -= (size_t) k;
                }
        }
        if (err.len - err.off + len > STDERR_QUEUE_MAX) {
                err.n_dropped++;
                goto out;
        }
        if (err.off > 0 && err.len + len > err.cap) {
                memmove(err.buf, err.buf + err.off, err.len - err.off);
                err.len -= err.off;
                err.off = 0;
        }
        if (err.len + len > err.cap) {
                size_t cap = MAX(err.cap * 2, MAX(err.len + len, (size_t) 64 * 1024));
                char *b = realloc(err.buf, MIN(cap, (size_t) STDERR_QUEUE_MAX));
                if (!b) {
                        err.n_dropped++;
                        goto out;
                }
                err.buf = b;
                err.cap = MIN(cap, (size_t) STDERR_QUEUE_MAX);
        }
        memcpy(err.buf + err.len, data, len);
        err.len += len;
        stderr_arm_poll();
out:
        errno = saved;
}

bool log_stderr_congested(void) {
        return err.len - err.off > STDERR_HIGH_WATER;
}

void log_stderr_set_drained_callback(void (*cb)(void)) {
        err.on_drained = cb;
}

static void stderr_report_dropped(void) {
        char line[300];
        if (err.n_dropped == 0)
                return;
        unsigned long long n = err.n_dropped;
        err.n_dropped = 0;
        int k = snprintf(line, sizeof(line), "corrald[%s]: %llu line%s dropped: stderr was not keeping up\n",
                         instance, n, n == 1 ? "" : "s");
        log_stderr_write(line, (size_t) MIN(k, (int) sizeof(line) - 1));
}

static void stderr_flush_at_exit(void) {
        err.exiting = true;
        uint64_t deadline = now_usec() + EXIT_FLUSH_MS * USEC_PER_MSEC;
        while (!stderr_flush()) {
                uint64_t now = now_usec();
                struct pollfd pfd = { .fd = err.fd, .events = POLLOUT };
                if (now >= deadline || poll(&pfd, 1, (int) ((deadline - now) / USEC_PER_MSEC) + 1) <= 0)
                        break;
        }
        free(err.buf);
        err.buf = NULL;
        err.off = err.len = err.cap = 0;
}

/* Copy src into dst (size > 0) with control characters escaped the way
 * journalctl and systemd's cescape() show them: \a \b \t \n \r \e, other
 * C0 bytes and DEL as \xHH; a backslash stays as it is. Cuts at size. */
static void escape_controls(char *dst, size_t size, const char *src) {
        static const char hex[] = "0123456789abcdef";
        size_t o = 0;
        for (const unsigned char *p = (const unsigned char *) src; *p; p++) {
                char e = 0;
                switch (*p) {
                case '\a': e = 'a'; break;
                case '\b': e = 'b'; break;
                case '\t': e = 't'; break;
                case '\n': e = 'n'; break;
                case '\r': e = 'r'; break;
                case 0x1b: e = 'e'; break;
                default: break;
                }
                if (e || *p < 0x20 || *p == 0x7f) {
                        if (o + 4 >= size)
                                break;
                        dst[o++] = '\\';
                        if (e)
                                dst[o++] = e;
                        else {
                                dst[o++] = 'x';
                                dst[o++] = hex[*p >> 4];
                                dst[o++] = hex[*p & 15];
                        }
                } else {
                        if (o + 1 >= size)
                                break;
                        dst[o++] = (char) *p;
                }
        }
        dst[o] = 0;
}

static void stderr_emit(const char *msg) {
        char esc[2048], line[2200];
        escape_controls(esc, sizeof(esc), msg);
        int n = snprintf(line, sizeof(line), "corrald[%s]: %s\n", instance, esc);
        if (n > (int) sizeof(line) - 1) {
                n = (int) sizeof(line) - 1;
                line[n - 1] = '\n';
        }
        log_stderr_write(line, (size_t) n);
}

static void stderr_notice(const char *msg) {
        stderr_emit(msg);
}

/* Serialise KEY=VALUE fields in the native protocol: "KEY=VALUE\n", or, for
 * a value containing a newline, "KEY\n", its length as 64-bit little
 * endian, the value and "\n". Returns the length, or 0 if buf is too small. */
static size_t format_native(const struct iovec *iov, unsigned n, char *buf, size_t size) {
        size_t l = 0;
        for (unsigned i = 0; i < n; i++) {
                const char *kv = iov[i].iov_base, *eq = memchr(kv, '=', iov[i].iov_len);
                size_t klen = (size_t) (eq - kv), vlen = iov[i].iov_len - klen - 1;

                if (!memchr(kv, '\n', iov[i].iov_len)) {
                        if (l + iov[i].iov_len + 1 > size)
                                return 0;
                        memcpy(buf + l, kv, iov[i].iov_len);
                        l += iov[i].iov_len;
                } else {
                        if (l + klen + 1 + 8 + vlen + 1 > size)
                                return 0;
                        memcpy(buf + l, kv, klen);
                        l += klen;
                        buf[l++] = '\n';
                        for (int b = 0; b < 8; b++)
                                buf[l++] = (char) (((uint64_t) vlen >> (8 * b)) & 0xff);
                        memcpy(buf + l, eq + 1, vlen);
                        l += vlen;
                }
                buf[l++] = '\n';
        }
        return l;
}

/* ---- entry point ---------------------------------------------------------- */

void log_emit(int prio, const LogFields *f, const char *fmt, ...) {
        char msg[2048];
        int saved = errno;
        va_list ap;

        if (prio > max_priority)
                return;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);

        if (target == LOG_TARGET_STDERR || journal.unreachable) {
                stderr_emit(msg);
                errno = saved;
                return;
        }

        char b_msg[2100], b_prio[16], b_inst[100], b_event[48], b_id[32], b_pid[40], b_gen[40], b_exit[40],
                b_sig[40];
        struct iovec iov[10];
        unsigned n = 0;

#define ADD(buf, ...)                                                        \
        do {                                                                 \
                int _l = snprintf(buf, sizeof(buf), __VA_ARGS__);            \
                iov[n++] = (struct iovec) { buf, (size_t) MIN(_l, (int) sizeof(buf) - 1) }; \
        } while (0)

        ADD(b_msg, "MESSAGE=%s", msg);
        ADD(b_prio, "PRIORITY=%d", prio);
        iov[n++] = (struct iovec) { (char *) "SYSLOG_IDENTIFIER=corrald", strlen("SYSLOG_IDENTIFIER=corrald") };
        ADD(b_inst, "CORRAL_INSTANCE=%s", instance);
        if (f) {
                if (f->event)
                        ADD(b_event, "CORRAL_EVENT=%s", f->event);
                if (f->worker_id >= 0)
                        ADD(b_id, "CORRAL_WORKER_ID=%d", f->worker_id);
                if (f->pid > 0)
                        ADD(b_pid, "CORRAL_WORKER_PID=%d", (int) f->pid);
                if (f->generation > 0)
                        ADD(b_gen, "CORRAL_GENERATION=%u", f->generation);
                if (f->exit_status >= 0)
                        ADD(b_exit, "CORRAL_EXIT_STATUS=%d", f->exit_status);
                if (f->signal > 0)
                        ADD(b_sig, "CORRAL_SIGNAL=%s", signal_to_string(f->signal));
        }
#undef ADD
        char dgram[DATAGRAM_MAX];
        size_t len = format_native(iov, n, dgram, sizeof(dgram));
        if (len > 0)
                journal_send(dgram, len);
        errno = saved;
}
