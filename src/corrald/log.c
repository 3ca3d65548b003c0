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
 * Stderr mode writes whole lines with a single write(2) so they never
 * interleave with worker output on the same pipe. */
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
        if (t == LOG_TARGET_JOURNAL && !registered)
                registered = atexit(journal_flush_at_exit) == 0;
        if (inst)
                log_set_instance(inst);
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
                if (journal_connect() < 0)
                        return 0;       /* no journald: like sd_journal_sendv(), drop silently */
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

        if (target == LOG_TARGET_STDERR) {
                char line[2200];
                int n = snprintf(line, sizeof(line), "corrald[%s]: %s\n", instance, msg);
                if (n > (int) sizeof(line) - 1) {
                        n = (int) sizeof(line) - 1;
                        line[n - 1] = '\n';
                }
                (void) !write(STDERR_FILENO, line, (size_t) n);
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
