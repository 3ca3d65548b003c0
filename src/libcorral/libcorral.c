/* libcorral: the worker side of corral. See corral.h for the API and
 * docs/protocol.md for the wire protocol it speaks.
 *
 * The state is the IPC channel reader (`ch`) and, for corral_next() and
 * its kin, the listening sockets (`ls`) with the readiness of the current
 * turn. The channel is one
 * stream carrying, at every line boundary, either a message line (starts
 * with '{', ends with '\n') or a hand-off: one byte, the listener index,
 * with the connection's fd in SCM_RIGHTS.
 *
 * Which byte an fd belongs to: on Linux, a recvmsg() on a stream socket
 * that collects an skb carrying fds stops right after it
 * (unix_stream_read_generic(): "if (scm.fp) break"), and the master sends
 * each hand-off as its own 1-byte sendmsg(). So the fds a read returns
 * belong to the LAST byte it returned. We record them against that byte's
 * absolute stream offset and consume them when the parser reaches it. We
 * never use MSG_PEEK: peeking at an skb with fds installs duplicates of
 * them in this process.
 *
 * At the fd limit (RLIMIT_NOFILE), the kernel cannot install the fd: the
 * read returns the hand-off byte without it and sets MSG_CTRUNC
 * (scm_detach_fds() in net/core/scm.c), and the connection is closed.
 * That byte is recorded as a lost hand-off, not a stray byte, and the
 * master is told with an fd-limit line (docs/protocol.md), at most once
 * per FD_LIMIT_REPORT_USEC, so that it sends connections elsewhere.
 *
 * corral_next() hides the balance mode: one poll(2) over the channel and
 * the listeners begins a turn; a turn reads the channel until it is empty
 * (hand-offs returned, messages dispatched) and accepts at most one
 * connection from each listener that was readable, in turn (SPEC §5: never
 * until EAGAIN). Close reports are counted and sent once per turn, before
 * the wait, instead of one line per connection: each line is a read and a
 * parse in the master (issue 18). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "corral-internal.h"
#include "corral.h"
#include "daemon.h"
#include "fd-util.h"
#include "ipc-msg.h"
#include "macros.h"

/* Bytes the reader buffers: a whole line plus room for a read. */
#define READ_CHUNK (64 * 1024)
#define BUF_SIZE (IPC_LINE_MAX + 1 + READ_CHUNK)
/* Hand-offs read while looking for a message, kept for corral_accept(). */
#define PENDING_MAX 256
/* Messages read while looking for a hand-off, kept for corral_recv_message(). */
#define KEPT_MAX 256
/* fds recorded against bytes not yet parsed; one per read at most. */
#define ATTACH_MAX 8
#define FDS_PER_READ 8
/* An attachment whose fd the kernel could not install (MSG_CTRUNC). */
#define FD_LOST (-EMFILE)
/* At most one fd-limit report per second: the master pauses a worker that
 * sends one for as long (HANDOFF_FD_LIMIT_PAUSE_MS), so a worker that
 * stays at its limit tells it again as soon as it gets another hand-off,
 * and a worker that loses many at once costs one line. */
#define FD_LIMIT_REPORT_USEC 1000000ULL
/* A listener whose accept failed for want of fds or memory is left alone
 * this long by corral_next(), as corral-hello always did: the connection
 * stays queued for a sibling, and a level-triggered poll would spin. */
#define ACCEPT_PAUSE_USEC 100000ULL

typedef struct Attachment {
        uint64_t pos;           /* absolute stream offset of the byte */
        int fd;                 /* or FD_LOST */
} Attachment;

typedef struct Kept {
        int from;
        char *data;
        size_t len;
} Kept;

static struct Channel {
        bool looked_up;
        int fd;                 /* or a negative errno from the lookup */

        char *buf;
        size_t start, end;      /* unparsed bytes buf[start..end) */
        uint64_t base;          /* absolute stream offset of buf[0] */
        bool discarding;        /* inside an oversize line */
        bool eof;
        Attachment att[ATTACH_MAX];
        unsigned n_att;

        int pending_fd[PENDING_MAX];
        unsigned char pending_index[PENDING_MAX];
        unsigned pending_head, n_pending;

        Kept kept[KEPT_MAX];
        unsigned kept_head, n_kept;
        char *returned;         /* data of the last kept message returned */

        corral_message_handler_t handler;
        void *userdata;
        unsigned long dropped;
        unsigned closed_pending;
        bool batching;                  /* corral_closed() counts, a wait point sends */
        bool draining;                  /* corral_drain() was called */
        unsigned fd_limit_pending;      /* hand-offs lost, not reported yet */
        uint64_t fd_limit_sent_usec;    /* when the last report went out */
} ch;

typedef struct Listener {
        int fd;                 /* -EBADF once dropped after an error */
        unsigned index;
        bool readable;          /* in this turn, not accepted from yet */
        uint64_t paused_until;  /* CLOCK_MONOTONIC µs; 0: not paused */
} Listener;

static struct Listeners {
        bool looked_up;
        Listener *l;
        unsigned n;
        unsigned next;          /* where the next turn's search starts */
        bool in_turn;           /* a poll() began a turn not yet used up */
        bool channel_readable;  /* in this turn, not read empty yet */
        unsigned long own_open; /* self-accepted connections returned, not reported closed */
} ls;

/* The data of a message line without "data": null. Callers of
 * corral_parse_message() terminate data in place; older copies of
 * <corral-uv.h>, compiled into applications, do so unconditionally and
 * used to write that NUL into a string literal (a crash). A writable
 * array that already holds the NUL keeps such binaries alive. */
static char absent_data[] = "null";

static uint64_t now_usec(void) {
        struct timespec ts;
        if (clock_gettime(CLOCK_MONOTONIC, &ts) == -1)
                return 0;
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000;
}

/* ---- environment and notify -------------------------------------------- */

static int env_uint(const char *name) {
        const char *s = getenv(name);
        char *end;
        if (!s)
                return -ENOENT;
        if (*s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno != 0 || *end || v > INT_MAX)
                return -EINVAL;
        return (int) v;
}

int corral_worker_id(void) {
        return env_uint("CORRAL_WORKER_ID");
}

int corral_generation(void) {
        return env_uint("CORRAL_GENERATION");
}

int corral_listen_fds(char ***ret_names) {
        return daemon_listen_fds(ret_names);
}

int corral_ready(void) {
        return daemon_notify("READY=1");
}

int corral_stopping(void) {
        return daemon_notify("STOPPING=1");
}

int corral_watchdog(void) {
        return daemon_notify("WATCHDOG=1");
}

unsigned long long corral_watchdog_usec(void) {
        return daemon_watchdog_usec();
}

int corral_status(const char *format, ...) {
        char *status = NULL;
        va_list ap;
        va_start(ap, format);
        int k = vasprintf(&status, format, ap);
        va_end(ap);
        if (k < 0)
                return -ENOMEM;
        char *line = NULL;
        int r = asprintf(&line, "STATUS=%s", status) < 0 ? -ENOMEM : daemon_notify(line);
        free(line);
        free(status);
        return r;
}

int corral_ipc_fd(void) {
        if (ch.looked_up)
                return ch.fd;
        int fd = env_uint("CORRAL_IPC_FD");
        struct stat st;
        if (fd >= 0 && (fstat(fd, &st) == -1 || !S_ISSOCK(st.st_mode)))
                fd = -EBADF;
        /* Like sd_listen_fds(): a child the worker execs does not inherit
         * the channel and cannot steal its hand-offs. */
        if (fd >= 0 && fcntl(fd, F_SETFD, FD_CLOEXEC) == -1)
                fd = -errno;
        ch.fd = fd;
        ch.looked_up = true;
        return fd;
}

/* ---- reading ------------------------------------------------------------- */

static int channel_init(void) {
        int fd = corral_ipc_fd();
        if (fd < 0)
                return fd;
        if (!ch.buf) {
                ch.buf = malloc(BUF_SIZE);
                if (!ch.buf)
                        return -ENOMEM;
        }
        return fd;
}

static void drop_attachments(uint64_t from, uint64_t to);
static int flush_fd_limit(int fd);
static int flush_closed(int fd, bool block);

/* Read once. Returns 1 when bytes were added, 0 at EOF (ch.eof set),
 * -EAGAIN when nothing is there and !block, or a negative errno. */
static int read_more(int fd, bool block) {
        if (ch.start > 0 && BUF_SIZE - ch.end < READ_CHUNK) {
                memmove(ch.buf, ch.buf + ch.start, ch.end - ch.start);
                ch.base += ch.start;
                ch.end -= ch.start;
                ch.start = 0;
        }
        /* We read only when the parser needs more bytes, so every fd still
         * recorded lies inside the partial line at ch.start, and will be
         * dropped with it. A master that attaches fds to many reads of one
         * line only gets them dropped earlier. */
        if (ch.n_att >= ATTACH_MAX)
                drop_attachments(0, UINT64_MAX);
        /* Lost hand-offs that waited for the report interval to pass, and
         * close reports counted since the last wait: we are talking to the
         * master anyway. */
        (void) flush_fd_limit(fd);
        (void) flush_closed(fd, false);
        for (;;) {
                union {
                        struct cmsghdr align;
                        char buf[CMSG_SPACE(sizeof(int) * FDS_PER_READ)];
                } control;
                struct iovec iov = { ch.buf + ch.end, BUF_SIZE - ch.end };
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                                     .msg_controllen = sizeof(control) };
                ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
                if (n == -1 && errno == EAGAIN) {
                        if (!block)
                                return -EAGAIN;
                        struct pollfd p = { .fd = fd, .events = POLLIN };
                        if (poll(&p, 1, -1) == -1)
                                return -errno;
                        continue;
                }
                if (n == -1)
                        return -errno;
                /* One fd per hand-off; extra ones are not ours to keep.
                 * A plain close() is right here: we are the worker, and
                 * our master sends only accepted connections. */
                int first = cmsg_take_first_fd(&mh);
                ch.dropped += cmsg_close_all(&mh);
                if (n == 0) {
                        if (first >= 0)
                                close(first);
                        ch.eof = true;
                        return 0;
                }
                if (first >= 0)
                        ch.att[ch.n_att++] = (Attachment) { ch.base + ch.end + (size_t) n - 1, first };
                else if (mh.msg_flags & MSG_CTRUNC) {
                        /* The last byte's fd was dropped: we are at our fd
                         * limit (our own control buffer has room for more
                         * than the master ever sends). */
                        ch.att[ch.n_att++] = (Attachment) { ch.base + ch.end + (size_t) n - 1, FD_LOST };
                        (void) corral_fd_limit(1);
                }
                ch.end += (size_t) n;
                return 1;
        }
}

/* The fd attached to the byte at absolute offset pos (or FD_LOST),
 * removed from the list, or -ENOENT. */
static int take_attachment(uint64_t pos) {
        for (unsigned i = 0; i < ch.n_att; i++)
                if (ch.att[i].pos == pos) {
                        int fd = ch.att[i].fd;
                        ch.att[i] = ch.att[--ch.n_att];
                        return fd;
                }
        return -ENOENT;
}

/* Close fds attached to bytes in [from, to): they arrived inside a line,
 * which the master never does. */
static void drop_attachments(uint64_t from, uint64_t to) {
        for (unsigned i = 0; i < ch.n_att;)
                if (ch.att[i].pos >= from && ch.att[i].pos < to) {
                        if (ch.att[i].fd >= 0)
                                close(ch.att[i].fd);
                        ch.att[i] = ch.att[--ch.n_att];
                        ch.dropped++;
                } else
                        i++;
}

typedef enum ItemKind {
        ITEM_NONE,
        ITEM_HANDOFF,
        ITEM_MESSAGE,
} ItemKind;

typedef struct Item {
        ItemKind kind;
        int fd;
        unsigned index;
        CorralMessage msg;      /* data NUL-terminated, points into ch.buf */
} Item;

/* Parse the next item out of the buffered bytes. Returns ITEM_NONE when
 * more bytes are needed. Garbage is skipped and counted. */
static ItemKind parse_one(Item *ret) {
        while (ch.start < ch.end) {
                char *p = ch.buf + ch.start;
                size_t avail = ch.end - ch.start;
                uint64_t pos = ch.base + ch.start;

                if (ch.discarding) {
                        char *nl = memchr(p, '\n', avail);
                        size_t n = nl ? (size_t) (nl - p) + 1 : avail;
                        drop_attachments(pos, pos + n);
                        ch.start += n;
                        if (nl)
                                ch.discarding = false;
                        continue;
                }

                if (*p != '{') {
                        int fd = take_attachment(pos);
                        ch.start++;
                        if (fd == FD_LOST)
                                continue;       /* a hand-off the kernel closed; reported */
                        if (fd < 0) {
                                /* A stray byte (or an empty line): not a hand-off. */
                                if (*p != '\n')
                                        ch.dropped++;
                                continue;
                        }
                        *ret = (Item) { .kind = ITEM_HANDOFF, .fd = fd, .index = (unsigned char) *p };
                        return ITEM_HANDOFF;
                }

                char *nl = memchr(p, '\n', MIN(avail, (size_t) IPC_LINE_MAX + 1));
                if (!nl) {
                        if (avail > IPC_LINE_MAX) {
                                ch.discarding = true;
                                ch.dropped++;
                                continue;
                        }
                        return ITEM_NONE;
                }
                size_t len = (size_t) (nl - p);
                drop_attachments(pos, pos + len + 1);
                ch.start += len + 1;

                if (corral_parse_message(p, len, &ret->msg) < 0) {
                        ch.dropped++;
                        continue;
                }
                /* Terminate data in place when it lies inside the line (the
                 * byte after it, a ',' or '}', is the line's own); an
                 * absent "data" is absent_data, already terminated. */
                if (ret->msg.data != absent_data)
                        ((char *) ret->msg.data)[ret->msg.data_len] = 0;
                ret->kind = ITEM_MESSAGE;
                return ITEM_MESSAGE;
        }
        return ITEM_NONE;
}

/* A message read while looking for something else: hand it to the
 * handler, or keep a copy. */
static void keep_message(const CorralMessage *msg) {
        if (ch.handler) {
                ch.handler(msg, ch.userdata);
                return;
        }
        char *copy = ch.n_kept < KEPT_MAX ? malloc(msg->data_len + 1) : NULL;
        if (!copy) {
                ch.dropped++;
                return;
        }
        memcpy(copy, msg->data, msg->data_len + 1);
        ch.kept[(ch.kept_head + ch.n_kept++) % KEPT_MAX] = (Kept) { msg->from, copy, msg->data_len };
}

static void keep_handoff(const Item *it) {
        /* Callers check for room before parsing. */
        unsigned i = (ch.pending_head + ch.n_pending++) % PENDING_MAX;
        ch.pending_fd[i] = it->fd;
        ch.pending_index[i] = (unsigned char) it->index;
}

/* Give a hand-off to the caller: the master's O_NONBLOCK came along with
 * the file, so set what the call promises (without a second syscall when
 * it is already so). */
static int handoff_return(int conn, unsigned index, bool block, unsigned *ret_listener_index) {
        int fl = fcntl(conn, F_GETFL);
        if (fl >= 0 && !!(fl & O_NONBLOCK) == block)
                (void) fcntl(conn, F_SETFL, block ? fl & ~O_NONBLOCK : fl | O_NONBLOCK);
        if (ret_listener_index)
                *ret_listener_index = index;
        return conn;
}

/* The next hand-off the library already holds: kept, or parsed out of the
 * buffered bytes (messages on the way are dispatched). No syscall besides
 * the fd's flags. Returns the fd or -EAGAIN. */
static int channel_take_buffered(unsigned *ret_listener_index, bool block) {
        if (ch.n_pending > 0) {
                int conn = ch.pending_fd[ch.pending_head];
                unsigned index = ch.pending_index[ch.pending_head];
                ch.pending_head = (ch.pending_head + 1) % PENDING_MAX;
                ch.n_pending--;
                return handoff_return(conn, index, block, ret_listener_index);
        }
        if (!ch.buf)
                return -EAGAIN;
        for (;;) {
                Item it;
                ItemKind k = parse_one(&it);
                if (k == ITEM_MESSAGE) {
                        keep_message(&it.msg);
                        continue;
                }
                if (k == ITEM_HANDOFF)
                        return handoff_return(it.fd, it.index, block, ret_listener_index);
                return -EAGAIN;
        }
}

static int accept_impl(unsigned *ret_listener_index, bool block) {
        int fd = channel_init(), r;
        if (fd < 0)
                return fd;
        for (;;) {
                Item it;
                int conn = -1;
                unsigned index = 0;

                if (ch.n_pending > 0) {
                        conn = ch.pending_fd[ch.pending_head];
                        index = ch.pending_index[ch.pending_head];
                        ch.pending_head = (ch.pending_head + 1) % PENDING_MAX;
                        ch.n_pending--;
                } else {
                        ItemKind k = parse_one(&it);
                        if (k == ITEM_MESSAGE) {
                                keep_message(&it.msg);
                                continue;
                        }
                        if (k == ITEM_HANDOFF) {
                                conn = it.fd;
                                index = it.index;
                        }
                }
                if (conn >= 0)
                        return handoff_return(conn, index, block, ret_listener_index);
                if (ch.eof)
                        return -ECONNRESET;
                if ((r = read_more(fd, block)) < 0)
                        return r;
        }
}

int corral_accept(unsigned *ret_listener_index) {
        return accept_impl(ret_listener_index, true);
}

int corral_accept_nonblock(unsigned *ret_listener_index) {
        return accept_impl(ret_listener_index, false);
}

/* ---- connections in any balance mode -------------------------------------- */

static int listener_add(int fd, unsigned index) {
        Listener *n = realloc(ls.l, (ls.n + 1) * sizeof(*n));
        if (!n)
                return -ENOMEM;
        ls.l = n;
        n[ls.n++] = (Listener) { .fd = fd, .index = index };
        return 0;
}

/* Take the listening sockets of LISTEN_FDS, once. fds that are not
 * listening stream sockets are skipped; their indexes stay unused, so that
 * an index always names the same LISTEN_FDS entry. */
static int listeners_init(void) {
        if (ls.looked_up)
                return 0;
        int n = corral_listen_fds(NULL), r;
        if (n < 0)
                return n;
        for (int i = 0; i < n; i++) {
                int fd = CORRAL_LISTEN_FDS_START + i;
                if (!daemon_is_listening_stream(fd))
                        continue;
                if ((r = fd_nonblock(fd, true)) < 0 || (r = listener_add(fd, (unsigned) i)) < 0) {
                        free(ls.l);
                        ls.l = NULL;
                        ls.n = 0;
                        return r;
                }
        }
        ls.looked_up = true;
        return 0;
}

int corral_add_listener(int fd) {
        int r = listeners_init();
        if (r < 0)
                return r;
        if (!daemon_is_listening_stream(fd))
                return -ENOTSOCK;
        unsigned index = 0;
        int n = corral_listen_fds(NULL);
        if (n > 0)
                index = (unsigned) n;
        for (unsigned i = 0; i < ls.n; i++)
                index = MAX(index, ls.l[i].index + 1);
        if (index > INT_MAX)
                return -ERANGE;
        if ((r = fd_nonblock(fd, true)) < 0 || (r = listener_add(fd, index)) < 0)
                return r;
        return (int) index;
}

/* The channel, when there is one to read: its fd, or -ENOENT. A channel
 * that cannot be used (CORRAL_IPC_FD not a socket) is no source; its error
 * is returned by the calls that need it. */
static int channel_source(void) {
        if (ch.eof || ch.draining)
                return -ENOENT;
        int fd = channel_init();
        return fd < 0 ? -ENOENT : fd;
}

int corral_poll_fds(int *ret_fds, size_t size) {
        int r = listeners_init();
        if (r < 0)
                return r;
        if (ch.draining)
                return 0;
        size_t n = 0;
        int fd = channel_source();
        if (fd >= 0) {
                if (n < size)
                        ret_fds[n] = fd;
                n++;
        }
        for (unsigned i = 0; i < ls.n; i++)
                if (ls.l[i].fd >= 0) {
                        if (n < size)
                                ret_fds[n] = ls.l[i].fd;
                        n++;
                }
        return (int) MIN(n, (size_t) INT_MAX);
}

/* Begin a turn: poll the channel and the listeners not paused, waiting at
 * most timeout_ms (-1: forever, unless a listener is paused). Returns 0
 * with the readiness recorded (possibly none), -ENOENT when there is
 * nothing to poll, or -errno (-EINTR). */
static int turn_begin(int timeout_ms) {
        struct pollfd stack[16], *p = stack;
        uint64_t now = 0;
        int chfd = channel_source(), r;
        unsigned n = 0, live = 0;

        if (ls.n + 1 > ELEMENTSOF(stack)) {
                p = malloc((ls.n + 1) * sizeof(*p));
                if (!p)
                        return -ENOMEM;
        }
        if (chfd >= 0)
                p[n++] = (struct pollfd) { .fd = chfd, .events = POLLIN };
        for (unsigned i = 0; i < ls.n; i++) {
                Listener *l = &ls.l[i];
                l->readable = false;
                if (l->fd < 0)
                        continue;
                live++;
                if (l->paused_until != 0) {
                        if (now == 0)
                                now = now_usec();
                        if (now < l->paused_until) {
                                /* Wake up when the pause ends. */
                                int left = (int) ((l->paused_until - now + 999) / 1000);
                                if (timeout_ms < 0 || left < timeout_ms)
                                        timeout_ms = left;
                                p[n++] = (struct pollfd) { .fd = -1 };
                                continue;
                        }
                        l->paused_until = 0;
                }
                p[n++] = (struct pollfd) { .fd = l->fd, .events = POLLIN };
        }
        if (chfd < 0 && live == 0) {
                r = -ENOENT;
                goto out;
        }
        if (poll(p, n, timeout_ms) == -1) {
                r = -errno;
                goto out;
        }
        unsigned k = 0;
        ls.channel_readable = chfd >= 0 && p[k++].revents != 0;
        for (unsigned i = 0; i < ls.n; i++)
                if (ls.l[i].fd >= 0)
                        ls.l[i].readable = p[k++].revents != 0;
        ls.in_turn = true;
        r = 0;
out:
        if (p != stack)
                free(p);
        return r;
}

/* Accept one connection from l. Returns the fd, -EAGAIN when there was
 * none after all (a sibling was faster, or the connection failed before
 * we took it), -EMFILE and the like at a resource limit, or another
 * -errno, after which l is dropped. */
static int listener_accept(Listener *l, bool block) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | (block ? 0 : SOCK_NONBLOCK));
        if (fd >= 0)
                return fd;
        switch (errno) {
        case EAGAIN:
        case EINTR:
        case ECONNABORTED:      /* accept(2): network errors of the new connection */
        case EPROTO:
        case ENOPROTOOPT:
        case EHOSTDOWN:
        case ENONET:
        case EHOSTUNREACH:
        case ENETDOWN:
        case ENETUNREACH:
        case EOPNOTSUPP:
        case ETIMEDOUT:
                return -EAGAIN;
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
                return -errno;
        default: {
                /* EBADF, EINVAL (no longer listening), ENOTSOCK...: this
                 * listener is done for. Our copy only: not closed. */
                int e = errno;
                l->fd = -EBADF;
                return -e;
        }
        }
}

static int next_impl(unsigned *ret_listener, bool block) {
        int r = listeners_init();
        if (r < 0)
                return r;
        int chfd = channel_init();
        if (chfd < 0 && chfd != -ENOENT && ls.n == 0)
                return chfd;    /* hand-off mode with an unusable channel */

        if (ch.draining) {
                /* Only what corral_drain() kept; never wait. */
                r = channel_take_buffered(ret_listener, block);
                return r == -EAGAIN ? -ESHUTDOWN : r;
        }
        /* corral_next() is a wait point: close reports can wait for it. */
        if (block)
                ch.batching = true;
        for (;;) {
                r = channel_take_buffered(ret_listener, block);
                if (r != -EAGAIN)
                        return r;
                if (ch.eof)
                        return -ECONNRESET;
                if (!ls.in_turn) {
                        if (block && chfd >= 0) {
                                (void) flush_fd_limit(chfd);
                                (void) flush_closed(chfd, false);
                        }
                        if ((r = turn_begin(block ? -1 : 0)) < 0)
                                return r;
                }
                if (ls.channel_readable) {
                        /* Read until empty, a hand-off at a time (a
                         * read stops after the bytes an fd came with). */
                        r = read_more(chfd, false);
                        if (r == -EAGAIN)
                                ls.channel_readable = false;
                        else if (r < 0)
                                return r;
                        continue;
                }
                /* One connection from the next readable listener, in turn. */
                for (unsigned k = 0; k < ls.n; k++) {
                        unsigned i = (ls.next + k) % ls.n;
                        Listener *l = &ls.l[i];
                        if (!l->readable || l->fd < 0)
                                continue;
                        l->readable = false;
                        r = listener_accept(l, block);
                        if (r >= 0) {
                                ls.next = (i + 1) % ls.n;
                                ls.own_open++;
                                if (ret_listener)
                                        *ret_listener = l->index;
                                return r;
                        }
                        if (r == -EAGAIN)
                                continue;
                        if (block && (r == -EMFILE || r == -ENFILE || r == -ENOBUFS || r == -ENOMEM)) {
                                l->paused_until = now_usec() + ACCEPT_PAUSE_USEC;
                                continue;
                        }
                        return r;
                }
                ls.in_turn = false;
                if (!block)
                        return -EAGAIN;
        }
}

int corral_next(unsigned *ret_listener) {
        return next_impl(ret_listener, true);
}

int corral_next_nonblock(unsigned *ret_listener) {
        return next_impl(ret_listener, false);
}

int corral_drain(void) {
        if (ch.draining)
                return (int) ch.n_pending;
        int r = corral_stopping();
        ch.draining = true;
        ch.batching = false;
        ls.in_turn = false;
        int fd = channel_init();
        if (fd >= 0) {
                /* What the channel holds now: hand-offs the master sent
                 * before it saw STOPPING=1 are kept for corral_next();
                 * later ones (it may have sent one just before) go back to
                 * it when we exit, and to another worker. */
                while (!ch.eof && ch.n_pending < PENDING_MAX) {
                        Item it;
                        ItemKind k = parse_one(&it);
                        if (k == ITEM_HANDOFF)
                                keep_handoff(&it);
                        else if (k == ITEM_MESSAGE)
                                keep_message(&it.msg);
                        else if (read_more(fd, false) < 0)
                                break;
                }
                (void) flush_fd_limit(fd);
                (void) flush_closed(fd, false);
        }
        return r < 0 ? r : (int) ch.n_pending;
}

int corral_recv_message(CorralMessage *ret) {
        int fd = channel_init(), r;
        if (fd < 0)
                return fd;
        free(ch.returned);
        ch.returned = NULL;
        for (;;) {
                if (ch.n_kept > 0 && !ch.handler) {
                        Kept *k = &ch.kept[ch.kept_head];
                        ch.kept_head = (ch.kept_head + 1) % KEPT_MAX;
                        ch.n_kept--;
                        ch.returned = k->data;
                        *ret = (CorralMessage) { k->from, k->data, k->len };
                        return 0;
                }
                if (ch.n_pending >= PENDING_MAX)
                        return -EAGAIN;         /* accept the kept connections first */
                Item it;
                ItemKind kind = parse_one(&it);
                if (kind == ITEM_HANDOFF) {
                        keep_handoff(&it);
                        continue;
                }
                if (kind == ITEM_MESSAGE) {
                        if (ch.handler) {
                                ch.handler(&it.msg, ch.userdata);
                                continue;
                        }
                        *ret = it.msg;
                        return 0;
                }
                if (ch.eof)
                        return -ECONNRESET;
                if ((r = read_more(fd, false)) < 0)
                        return r;
        }
}

void corral_set_message_handler(corral_message_handler_t handler, void *userdata) {
        ch.handler = handler;
        ch.userdata = userdata;
        /* Messages kept so far go to the new handler now, in order. */
        while (handler && ch.n_kept > 0) {
                Kept k = ch.kept[ch.kept_head];
                ch.kept_head = (ch.kept_head + 1) % KEPT_MAX;
                ch.n_kept--;
                handler(&(CorralMessage) { k.from, k.data, k.len }, userdata);
                free(k.data);
        }
}

unsigned long corral_messages_dropped(void) {
        return ch.dropped;
}

int corral_parse_message(const char *line, size_t len, CorralMessage *ret) {
        IpcMessage m;
        if (ipc_msg_parse_master_line(line, len, &m, NULL) < 0 || m.type != IPC_MSG_MESSAGE)
                return -EINVAL;
        /* A line without "data" (data = null, docs/protocol.md) gets the
         * parser's static "null", which is not inside the line. */
        bool inside = (uintptr_t) m.data >= (uintptr_t) line && (uintptr_t) m.data < (uintptr_t) line + len;
        *ret = (CorralMessage) { .from = m.peer == IPC_PEER_SLOT ? (int) m.slot : CORRAL_CTL,
                                 .data = inside ? m.data : absent_data, .data_len = inside ? m.data_len : 4 };
        return 0;
}

int corral_message_from(const CorralMessage *msg, CorralPeer *ret_from) {
        if (!msg || !ret_from)
                return -EINVAL;
        if (msg->from >= 0 && (unsigned) msg->from <= IPC_SLOT_MAX)
                *ret_from = (CorralPeer) { CORRAL_PEER_SLOT, (unsigned) msg->from };
        else if (msg->from == CORRAL_CTL)
                *ret_from = (CorralPeer) { CORRAL_PEER_CTL, 0 };
        else
                return -EINVAL;
        return 0;
}

/* ---- writing ------------------------------------------------------------- */

/* Write all of buf, waiting for room; a line must never be left half
 * written, or the master would glue the next one onto it. */
static int write_all(int fd, const char *buf, size_t len) {
        while (len > 0) {
                ssize_t w = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (w == -1 && errno == EINTR)
                        continue;
                if (w == -1 && errno == EAGAIN) {
                        struct pollfd p = { .fd = fd, .events = POLLOUT };
                        if (poll(&p, 1, -1) == -1 && errno != EINTR)
                                return -errno;
                        continue;
                }
                if (w == -1)
                        return -errno;
                buf += w;
                len -= (size_t) w;
        }
        return 0;
}

/* Send a report line (closed, fd-limit) whose count is *pending. When
 * nothing of it can be written now and !block, it is left for later (0,
 * *pending kept: the count goes on adding up). Once the kernel took any of
 * it, *pending is cleared and the rest is written, so that no line is ever
 * left half written. Returns 0 or -errno. */
static int send_report(int fd, const char *line, size_t len, bool block, unsigned *pending) {
        ssize_t w;
        do
                w = send(fd, line, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        while (w == -1 && errno == EINTR);
        if (w == -1 && errno == EAGAIN && !block)
                return 0;
        if (w == -1 && errno != EAGAIN)
                return -errno;
        *pending = 0;
        size_t done = w > 0 ? (size_t) w : 0;
        return done == len ? 0 : write_all(fd, line + done, len - done);
}

/* Send the coalesced close report, without waiting when nothing of it
 * can be written now. */
static int flush_closed(int fd, bool block) {
        char line[64];
        if (ch.closed_pending == 0)
                return 0;
        ssize_t k = ipc_msg_format_closed(line, sizeof(line) - 1, ch.closed_pending);
        if (k < 0)
                return (int) k;
        line[k++] = '\n';
        return send_report(fd, line, (size_t) k, block, &ch.closed_pending);
}

int corral_closed(unsigned n) {
        if (n == 0)
                return -EINVAL;
        /* Connections corral_next() accepted itself were never the
         * master's: theirs are not reported (see corral.h). */
        unsigned long own = MIN((unsigned long) n, ls.own_open);
        ls.own_open -= own;
        n -= (unsigned) own;
        if (n == 0)
                return 0;
        int fd = corral_ipc_fd();
        if (fd < 0)
                return fd;
        uint64_t total = (uint64_t) ch.closed_pending + n;
        ch.closed_pending = (unsigned) MIN(total, (uint64_t) IPC_CLOSED_MAX);
        /* Batching: the worker comes back to a wait point, which sends. */
        if (ch.batching)
                return 0;
        /* A close frees an fd: a good moment for a held fd-limit report. */
        (void) flush_fd_limit(fd);
        return flush_closed(fd, false);
}

int corral_flush(void) {
        int fd = corral_ipc_fd();
        if (fd < 0)
                return fd;
        /* The caller promises to come back before it waits. */
        ch.batching = !ch.draining;
        (void) flush_fd_limit(fd);
        return flush_closed(fd, false);
}

/* Send the fd-limit report when there is one and the last went out at
 * least FD_LIMIT_REPORT_USEC ago; never waits for room, but never leaves
 * a line half written either. */
static int flush_fd_limit(int fd) {
        char line[64];

        if (ch.fd_limit_pending == 0)
                return 0;
        uint64_t now = now_usec();
        if (now == 0)
                return 0;
        if (ch.fd_limit_sent_usec != 0 && now - ch.fd_limit_sent_usec < FD_LIMIT_REPORT_USEC)
                return 0;
        ssize_t k = ipc_msg_format_fd_limit(line, sizeof(line) - 1, ch.fd_limit_pending);
        if (k < 0)
                return (int) k;
        line[k++] = '\n';
        int r = send_report(fd, line, (size_t) k, false, &ch.fd_limit_pending);
        if (ch.fd_limit_pending == 0)
                ch.fd_limit_sent_usec = now ? now : 1;     /* 0 would read as "never sent" */
        return r;
}

int corral_fd_limit(unsigned n) {
        int fd = corral_ipc_fd();
        if (fd < 0)
                return fd;
        if (n == 0)
                return -EINVAL;
        uint64_t total = (uint64_t) ch.fd_limit_pending + n;
        ch.fd_limit_pending = (unsigned) MIN(total, (uint64_t) IPC_CLOSED_MAX);
        return flush_fd_limit(fd);
}

int corral_send(int to, const char *json) {
        switch (to) {
        case CORRAL_MASTER:
                return corral_send_to((CorralPeer) { CORRAL_PEER_MASTER, 0 }, json);
        case CORRAL_ALL:
                return corral_send_to((CorralPeer) { CORRAL_PEER_ALL, 0 }, json);
        case CORRAL_OTHERS:
                return corral_send_to((CorralPeer) { CORRAL_PEER_OTHERS, 0 }, json);
        default:
                if (to < 0) {
                        /* Checked after the channel, as it always was. */
                        int fd = corral_ipc_fd();
                        return fd < 0 ? fd : -EINVAL;
                }
                return corral_send_to((CorralPeer) { CORRAL_PEER_SLOT, (unsigned) to }, json);
        }
}

int corral_send_to(CorralPeer to, const char *json) {
        IpcPeer peer;
        int fd = corral_ipc_fd(), r;
        if (fd < 0)
                return fd;
        if (!json)
                return -EINVAL;
        switch (to.kind) {
        case CORRAL_PEER_MASTER:
                peer = IPC_PEER_MASTER;
                break;
        case CORRAL_PEER_ALL:
                peer = IPC_PEER_ALL;
                break;
        case CORRAL_PEER_OTHERS:
                peer = IPC_PEER_OTHERS;
                break;
        case CORRAL_PEER_SLOT:
                if (to.slot > IPC_SLOT_MAX)
                        return -EINVAL;
                peer = IPC_PEER_SLOT;
                break;
        default:        /* CORRAL_PEER_CTL is a sender only */
                return -EINVAL;
        }
        size_t len = strlen(json);
        if (len > IPC_LINE_MAX)
                return -EMSGSIZE;
        char *line = malloc(len + IPC_MSG_OVERHEAD + 1);
        if (!line)
                return -ENOMEM;
        ssize_t k = ipc_msg_format_to(line, len + IPC_MSG_OVERHEAD, peer, peer == IPC_PEER_SLOT ? to.slot : 0,
                                      json, len);
        if (k < 0) {
                free(line);
                return k == -ENOBUFS ? -EMSGSIZE : (int) k;
        }
        line[k++] = '\n';
        /* A pending close report goes first, whole. */
        (void) flush_fd_limit(fd);
        r = flush_closed(fd, true);
        if (r >= 0)
                r = write_all(fd, line, (size_t) k);
        free(line);
        return r;
}

/* ---- tests --------------------------------------------------------------- */

void libcorral_reset_for_tests(void) {
        for (unsigned i = 0; i < ch.n_att; i++)
                if (ch.att[i].fd >= 0)
                        close(ch.att[i].fd);
        for (unsigned i = 0; i < ch.n_pending; i++)
                close(ch.pending_fd[(ch.pending_head + i) % PENDING_MAX]);
        for (unsigned i = 0; i < ch.n_kept; i++)
                free(ch.kept[(ch.kept_head + i) % KEPT_MAX].data);
        free(ch.returned);
        free(ch.buf);
        memset(&ch, 0, sizeof(ch));
        /* The listening sockets are the test's: forgotten, not closed. */
        free(ls.l);
        memset(&ls, 0, sizeof(ls));
}

void libcorral_fd_limit_rearm_for_tests(void) {
        ch.fd_limit_sent_usec = 0;
}
