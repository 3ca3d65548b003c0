/* libcorral: the worker side of corral. See corral.h for the API and
 * docs/protocol.md for the wire protocol it speaks.
 *
 * The only state is the IPC channel reader (`ch`). The channel is one
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
 * per FD_LIMIT_REPORT_USEC, so that it sends connections elsewhere. */
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
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "corral-internal.h"
#include "corral.h"
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
        unsigned fd_limit_pending;      /* hand-offs lost, not reported yet */
        uint64_t fd_limit_sent_usec;    /* when the last report went out */
} ch;

/* The data of a message line without "data": null. Callers of
 * corral_parse_message() terminate data in place; older copies of
 * <corral-uv.h>, compiled into applications, do so unconditionally and
 * used to write that NUL into a string literal (a crash). A writable
 * array that already holds the NUL keeps such binaries alive. */
static char absent_data[] = "null";

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
        if (ret_names)
                return sd_listen_fds_with_names(0, ret_names);
        return sd_listen_fds(0);
}

int corral_ready(void) {
        return sd_notify(0, "READY=1");
}

int corral_stopping(void) {
        return sd_notify(0, "STOPPING=1");
}

int corral_watchdog(void) {
        return sd_notify(0, "WATCHDOG=1");
}

int corral_status(const char *format, ...) {
        char *status = NULL;
        va_list ap;
        va_start(ap, format);
        int k = vasprintf(&status, format, ap);
        va_end(ap);
        if (k < 0)
                return -ENOMEM;
        int r = sd_notifyf(0, "STATUS=%s", status);
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
        /* Lost hand-offs that waited for the report interval to pass. */
        (void) flush_fd_limit(fd);
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
                if (conn >= 0) {
                        /* The master's O_NONBLOCK came along with the file: set
                         * what this call promises. */
                        int fl = fcntl(conn, F_GETFL);
                        if (fl >= 0)
                                fcntl(conn, F_SETFL, block ? fl & ~O_NONBLOCK : fl | O_NONBLOCK);
                        if (ret_listener_index)
                                *ret_listener_index = index;
                        return conn;
                }
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
        int fd = corral_ipc_fd();
        if (fd < 0)
                return fd;
        if (n == 0)
                return -EINVAL;
        uint64_t total = (uint64_t) ch.closed_pending + n;
        ch.closed_pending = (unsigned) MIN(total, (uint64_t) IPC_CLOSED_MAX);
        /* A close frees an fd: a good moment for a held fd-limit report. */
        (void) flush_fd_limit(fd);
        return flush_closed(fd, false);
}

/* Send the fd-limit report when there is one and the last went out at
 * least FD_LIMIT_REPORT_USEC ago; never waits for room, but never leaves
 * a line half written either. */
static int flush_fd_limit(int fd) {
        struct timespec ts;
        char line[64];

        if (ch.fd_limit_pending == 0 || clock_gettime(CLOCK_MONOTONIC, &ts) == -1)
                return 0;
        uint64_t now = (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000;
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
        IpcPeer peer;
        int fd = corral_ipc_fd(), r;
        if (fd < 0)
                return fd;
        if (!json)
                return -EINVAL;
        switch (to) {
        case CORRAL_MASTER:
                peer = IPC_PEER_MASTER;
                break;
        case CORRAL_ALL:
                peer = IPC_PEER_ALL;
                break;
        case CORRAL_OTHERS:
                peer = IPC_PEER_OTHERS;
                break;
        default:
                if (to < 0 || (unsigned) to > IPC_SLOT_MAX)
                        return -EINVAL;
                peer = IPC_PEER_SLOT;
        }
        size_t len = strlen(json);
        if (len > IPC_LINE_MAX)
                return -EMSGSIZE;
        char *line = malloc(len + IPC_MSG_OVERHEAD + 1);
        if (!line)
                return -ENOMEM;
        ssize_t k = ipc_msg_format_to(line, len + IPC_MSG_OVERHEAD, peer, peer == IPC_PEER_SLOT ? (unsigned) to : 0,
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
}

void libcorral_fd_limit_rearm_for_tests(void) {
        ch.fd_limit_sent_usec = 0;
}
