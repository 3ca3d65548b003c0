/* ipc: see ipc.h.
 *
 * One uv_poll_t watches the socket: always readable, writable while the
 * outgoing queue is not empty. The queue is one byte buffer of whole lines
 * (each ending in '\n'), so "at a line boundary" means: the last byte
 * written was a newline (mid_line is false). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "closer.h"
#include "fd-util.h"
#include "ipc.h"
#include "log.h"
#include "macros.h"
#include "util.h"

/* At most this many log lines about one worker's bad input per interval;
 * the rest are counted and summed up in the next line that gets through. */
#define IPC_LOG_INTERVAL_USEC (10 * USEC_PER_SEC)
#define IPC_LOG_BURST 5

/* Reads per wakeup: bounded so one chatty worker cannot hold the loop. */
#define IPC_READS_PER_WAKEUP 8
#define IPC_CHUNK 16384
/* SCM_RIGHTS fds accepted per recvmsg(): as many as one sendmsg() can
 * attach. Any that did not fit would be released by the kernel in our
 * task, that is on the loop, where their close may block (closer.h). */
#define IPC_FDS_PER_READ CLOSER_MSG_FDS_MAX

void ipc_warn(Ipc *ipc, const char *fmt, ...) {
        unsigned suppressed = 0;
        char msg[512];
        va_list ap;

        if (!ratelimit_below(&ipc->log_limit, now_usec(), &suppressed))
                return;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        if (suppressed > 0)
                log_warning("%s: %s (%u similar messages suppressed)", ipc->who, msg, suppressed);
        else
                log_warning("%s: %s", ipc->who, msg);
}

static void on_poll(uv_poll_t *h, int status, int events);

static void update_events(Ipc *ipc) {
        int want = (ipc->read_paused ? 0 : UV_READABLE) | (ipc_queued(ipc) > 0 ? UV_WRITABLE : 0);
        if (!ipc->open || want == ipc->events)
                return;
        ipc->events = want;
        if (want == 0)
                uv_poll_stop(&ipc->poll);
        else
                uv_poll_start(&ipc->poll, want, on_poll);
}

static void on_closer_ready(CloserWaiter *w) {
        Ipc *ipc = w->userdata;
        ipc->read_paused = false;
        update_events(ipc);
}

size_t ipc_queued(const Ipc *ipc) {
        return ipc->out_len - ipc->out_head;
}

/* ---- incoming ---------------------------------------------------------- */

#define EXCERPT_MAX 48

/* The first EXCERPT_MAX bytes of what a worker sent, fit for one log line:
 * control characters (NUL included), backslashes and bytes >= 0x80 as \xNN.
 * buf holds EXCERPT_MAX * 4 + 1 bytes. */
static const char *escape_excerpt(const char *s, size_t n, char *buf) {
        static const char hex[] = "0123456789abcdef";
        size_t o = 0;
        for (size_t i = 0; i < MIN(n, (size_t) EXCERPT_MAX); i++) {
                unsigned char c = (unsigned char) s[i];
                if (c >= 0x20 && c < 0x7f && c != '\\')
                        buf[o++] = (char) c;
                else {
                        buf[o++] = '\\';
                        buf[o++] = 'x';
                        buf[o++] = hex[c >> 4];
                        buf[o++] = hex[c & 15];
                }
        }
        buf[o] = 0;
        return buf;
}

static void handle_notify(Ipc *ipc, const IpcMessage *msg) {
        char text[IPC_NOTIFY_TEXT_MAX + 1];
        ssize_t n = ipc_json_unescape(msg->text, msg->text_len, text, sizeof(text));
        if (n < 0) {    /* the parser measured it: cannot happen */
                ipc->malformed++;
                return;
        }
        if (ipc->on_notify)
                ipc->on_notify(ipc, text, (size_t) n);
}

/* One of Node's own lines (ipc "node"): NODE_HANDLE_ACK says a hand-off
 * arrived (the kernel already told us: nothing to do), NODE_HANDLE_NACK
 * that one arrived without its fd, which is lost: as an fd-limit report.
 * The rest go to the owner. */
static void handle_node(Ipc *ipc, const IpcMessage *msg, const char *line, size_t n) {
        char esc[EXCERPT_MAX * 4 + 1];
        bool node = ipc->dialect == IPC_DIALECT_NODE;
        if (node && msg->cmd_len == strlen("NODE_HANDLE_ACK") && memcmp(msg->cmd, "NODE_HANDLE_ACK", msg->cmd_len) == 0)
                return;
        if (node && msg->cmd_len == strlen("NODE_HANDLE_NACK") &&
            memcmp(msg->cmd, "NODE_HANDLE_NACK", msg->cmd_len) == 0) {
                if (ipc->on_fd_limit)
                        ipc->on_fd_limit(ipc, 1);
                return;
        }
        if (node && ipc->on_node) {
                ipc->on_node(ipc, msg, line, n);
                return;
        }
        ipc->malformed++;
        if (!node)
                ipc_warn(ipc, "a Node.js internal message, but this instance does not speak Node's IPC "
                              "(set \"ipc\": \"node\"): %s%s", escape_excerpt(line, n, esc),
                              n > EXCERPT_MAX ? "..." : "");
        else
                ipc_warn(ipc, "a Node.js internal message corral does not take: %s%s",
                              escape_excerpt(line, n, esc), n > EXCERPT_MAX ? "..." : "");
}

static void handle_line(Ipc *ipc, char *line, size_t n) {
        const char *reason = NULL;
        IpcMessage msg;

        line[n] = 0;
        if (n == 0)
                return;         /* an empty line carries nothing; not worth a warning */
        if (ipc_msg_parse_worker_line(line, n, &msg, &reason) < 0) {
                char esc[EXCERPT_MAX * 4 + 1];
                ipc->malformed++;
                ipc_warn(ipc, "malformed IPC line dropped (%s): %s%s", reason, escape_excerpt(line, n, esc),
                              n > EXCERPT_MAX ? "..." : "");
                return;
        }
        if (msg.type == IPC_MSG_CLOSED) {
                if (ipc->on_closed_report)
                        ipc->on_closed_report(ipc, msg.n_closed);
        } else if (msg.type == IPC_MSG_FD_LIMIT) {
                if (ipc->on_fd_limit)
                        ipc->on_fd_limit(ipc, msg.n_lost);
        } else if (msg.type == IPC_MSG_NOTIFY)
                handle_notify(ipc, &msg);
        else if (msg.type == IPC_MSG_NODE)
                handle_node(ipc, &msg, line, n);
        else if (ipc->on_message)
                ipc->on_message(ipc, &msg);
        else if (ipc->on_line)
                ipc->on_line(ipc, line);
}

/* The worker's fds go to the closer: the last reference may be ours, and
 * the close of, say, a lingering socket would block the loop. */
static void refuse_fds(Ipc *ipc, struct msghdr *mh) {
        size_t n = cmsg_close_all_with(mh, closer_close);
        if (mh->msg_flags & MSG_CTRUNC)
                n++;    /* at least one more, which the kernel closed for us (we ran out of fds) */
        if (n > 0) {
                ipc->fds_refused += n;
                ipc_warn(ipc, "sent file descriptors on its IPC channel; closed them");
        }
}

static void consume(Ipc *ipc, const char *chunk, size_t n) {
        for (const char *p = chunk, *end = chunk + n; p < end;) {
                const char *nl = memchr(p, '\n', (size_t) (end - p));
                size_t take = nl ? (size_t) (nl - p) : (size_t) (end - p);

                if (ipc->discarding) {
                        if (nl)
                                ipc->discarding = false;
                } else if (ipc->len + take > IPC_LINE_MAX) {
                        ipc->malformed++;
                        ipc_warn(ipc, "IPC line longer than %d bytes dropped", IPC_LINE_MAX);
                        ipc->len = 0;
                        ipc->discarding = !nl;
                } else {
                        memcpy(ipc->buf + ipc->len, p, take);
                        ipc->len += take;
                        if (nl) {
                                handle_line(ipc, ipc->buf, ipc->len);
                                ipc->len = 0;
                        }
                }
                p += take + (nl ? 1 : 0);
                if (!ipc->open)
                        return;
        }
}

static void on_readable(Ipc *ipc) {
        for (unsigned i = 0; i < IPC_READS_PER_WAKEUP && ipc->open; i++) {
                char chunk[IPC_CHUNK];
                union {
                        struct cmsghdr align;
                        char buf[CMSG_SPACE(sizeof(int) * IPC_FDS_PER_READ)];
                } control;
                struct iovec iov = { chunk, sizeof(chunk) };
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                                     .msg_control = &control, .msg_controllen = sizeof(control) };

                /* Any read may bring fds: read only while the closer can
                 * take as many as one read can bring. Otherwise the input
                 * waits in the kernel (and the worker's writes block or
                 * fail with EAGAIN) until the closer has caught up. */
                if (!closer_ready()) {
                        ipc->read_paused = true;
                        update_events(ipc);
                        closer_wait(&ipc->closer_waiter);
                        return;
                }

                /* MSG_CMSG_CLOEXEC: an fd the worker sends must not leak into
                 * a worker we fork before we close it (it is closed below,
                 * but the flag costs nothing and closes the window). */
                ssize_t n = recvmsg(ipc->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
                if (n == -1 && errno == EINTR)
                        continue;
                if (n == -1 && errno == EAGAIN)
                        return;
                if (n >= 0 && (mh.msg_controllen > 0 || (mh.msg_flags & MSG_CTRUNC)))
                        refuse_fds(ipc, &mh);
                if (n <= 0) {
                        /* EOF or error: the worker closed its end or is gone. */
                        ipc_close(ipc);
                        return;
                }
                consume(ipc, chunk, (size_t) n);
                /* A short read emptied the socket (fds end a read early,
                 * but workers send none): the poll says when there is
                 * more, which saves the recvmsg() that would only say
                 * EAGAIN, one in two reads of close reports and Node's
                 * acknowledgements. */
                if ((size_t) n < sizeof(chunk) && !(mh.msg_flags & MSG_CTRUNC) && mh.msg_controllen == 0)
                        return;
        }
}

/* ---- outgoing ---------------------------------------------------------- */

/* Write queued bytes, at most up to limit (an offset into out). Returns 0
 * (written or would block) or -errno for a dead peer, in which case the
 * queue is discarded: the reader will see the EOF and close. */
static int flush_until(Ipc *ipc, size_t limit) {
        while (ipc->out_head < limit) {
                ssize_t w = send(ipc->fd, ipc->out + ipc->out_head, limit - ipc->out_head, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (w == -1 && errno == EINTR)
                        continue;
                if (w == -1 && errno == EAGAIN)
                        break;
                if (w == -1) {
                        int r = -errno;
                        ipc->out_head = ipc->out_len = 0;
                        ipc->mid_line = false;
                        update_events(ipc);
                        return r;
                }
                ipc->out_head += (size_t) w;
                ipc->sent += (uint64_t) w;
                ipc->mid_line = ipc->out[ipc->out_head - 1] != '\n';
        }
        if (ipc->out_head == ipc->out_len)
                ipc->out_head = ipc->out_len = 0;
        update_events(ipc);
        return 0;
}

static void on_writable(Ipc *ipc) {
        (void) flush_until(ipc, ipc->out_len);
}

static void on_poll(uv_poll_t *h, int status, int events) {
        Ipc *ipc = h->data;
        if (status < 0) {
                ipc_close(ipc);
                return;
        }
        if (events & UV_WRITABLE)
                on_writable(ipc);
        if (ipc->open && (events & (UV_READABLE | UV_DISCONNECT)))
                on_readable(ipc);
}

/* Make room for n more bytes in the queue. */
static int queue_reserve(Ipc *ipc, size_t n) {
        if (ipc_queued(ipc) + n > IPC_QUEUE_MAX)
                return -ENOBUFS;
        if (ipc->out_len + n <= ipc->out_cap)
                return 0;
        if (ipc->out_head > 0) {
                memmove(ipc->out, ipc->out + ipc->out_head, ipc_queued(ipc));
                ipc->out_len -= ipc->out_head;
                ipc->out_head = 0;
                if (ipc->out_len + n <= ipc->out_cap)
                        return 0;
        }
        size_t cap = ipc->out_cap ? ipc->out_cap : 4096;
        while (cap < ipc->out_len + n)
                cap *= 2;
        cap = MIN(cap, (size_t) IPC_QUEUE_MAX);
        char *p = realloc(ipc->out, cap);
        if (!p)
                return -ENOMEM;
        ipc->out = p;
        ipc->out_cap = cap;
        return 0;
}

int ipc_send_line(Ipc *ipc, const char *line) {
        size_t n = strlen(line);
        int r;

        if (!ipc->open)
                return -ENOTCONN;
        if (n > IPC_LINE_MAX || memchr(line, '\n', n))
                return -EINVAL;

        if (ipc_queued(ipc) == 0) {
                /* The common case: the worker reads, write straight through. */
                struct iovec iov[2] = { { (void *) line, n }, { (void *) "\n", 1 } };
                struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
                ssize_t w;
                do
                        w = sendmsg(ipc->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
                while (w == -1 && errno == EINTR);
                if (w == -1 && errno != EAGAIN)
                        return -errno;
                if (w > 0)
                        ipc->sent += (uint64_t) w;
                if (w == (ssize_t) n + 1)
                        return 0;
                size_t done = w > 0 ? (size_t) w : 0;
                /* Queue the rest; it cannot exceed the cap of an empty queue. */
                if ((r = queue_reserve(ipc, n + 1 - done)) < 0) {
                        ipc->dropped++;
                        return r;
                }
                if (done < n)
                        memcpy(ipc->out + ipc->out_len, line + done, n - done);
                ipc->out_len += n - MIN(done, n);
                ipc->out[ipc->out_len++] = '\n';
                ipc->mid_line = done > 0;
                update_events(ipc);
                return 0;
        }

        if ((r = queue_reserve(ipc, n + 1)) < 0) {
                ipc->dropped++;
                return -ENOBUFS;
        }
        memcpy(ipc->out + ipc->out_len, line, n);
        ipc->out_len += n;
        ipc->out[ipc->out_len++] = '\n';
        update_events(ipc);
        return 0;
}

size_t ipc_unsent_tail(const Ipc *ipc, const char **ret) {
        *ret = NULL;
        if (!ipc->mid_line)
                return 0;
        /* A half-sent line always ends in the queue (ipc_send_line queues
         * its newline with it). */
        const char *nl = memchr(ipc->out + ipc->out_head, '\n', ipc_queued(ipc));
        if (!nl)
                return 0;
        *ret = ipc->out + ipc->out_head;
        return (size_t) (nl - *ret) + 1;
}

int ipc_resume_line(Ipc *ipc, const char *tail, size_t len) {
        if (!ipc->open || ipc_queued(ipc) > 0 || len == 0 || len > IPC_LINE_MAX + 1 || tail[len - 1] != '\n' ||
            memchr(tail, '\n', len - 1))
                return -EINVAL;
        int r = queue_reserve(ipc, len);
        if (r < 0)
                return r;
        memcpy(ipc->out + ipc->out_len, tail, len);
        ipc->out_len += len;
        ipc->mid_line = true;
        update_events(ipc);
        return 0;
}

void ipc_keep_peer(Ipc *ipc, int fd) {
        closer_close(ipc->peer_fd);
        ipc->peer_fd = fd;
        ipc->sent = 0;
        ipc->inflight_head = ipc->n_inflight = 0;
        /* What the worker has not read yet (a peer adopted across an
         * upgrade) counts as sent: its hand-offs are not known, so the
         * bound starts afresh. */
        int unread = 0;
        if (fd >= 0 && ioctl(fd, FIONREAD, &unread) == 0 && unread > 0)
                ipc->sent = (uint64_t) unread;
}

/* How many bytes of the channel the worker has read, as the kernel says
 * now; UINT64_MAX when it cannot say. */
static uint64_t peer_consumed(Ipc *ipc) {
        int unread;
        if (ipc->peer_fd < 0 || ioctl(ipc->peer_fd, FIONREAD, &unread) == -1)
                return UINT64_MAX;
        return ipc->sent - MIN((uint64_t) MAX(unread, 0), ipc->sent);
}

/* Forget the hand-offs that end at `consumed` or before: the worker has them. */
static void pop_read(Ipc *ipc, uint64_t consumed) {
        while (ipc->n_inflight > 0 && ipc->inflight[ipc->inflight_head] <= consumed) {
                ipc->inflight_head = (ipc->inflight_head + 1) % IPC_INFLIGHT_MAX;
                ipc->n_inflight--;
        }
}

unsigned ipc_inflight(Ipc *ipc) {
        uint64_t consumed;
        if (ipc->n_inflight > 0 && (consumed = peer_consumed(ipc)) != UINT64_MAX)
                pop_read(ipc, consumed);
        return ipc->n_inflight;
}

unsigned ipc_take_back(Ipc *ipc, IpcTakeBackCallback cb, void *userdata) {
        unsigned n = 0;
        if (ipc->peer_fd < 0)
                return 0;
        uint64_t consumed = peer_consumed(ipc);
        if (consumed != UINT64_MAX) {
                pop_read(ipc, consumed);
                /* A NODE_HANDLE line the worker has begun to read is its,
                 * fd and all: the kernel hands fds over with the first
                 * byte of their segment. */
                if (ipc->n_inflight > 0) {
                        unsigned head = ipc->inflight_head;
                        if (ipc->inflight[head] - ipc->inflight_len[head] < consumed)
                                pop_read(ipc, ipc->inflight[head]);
                }
        }
        for (;;) {
                char buf[4096];
                union {
                        struct cmsghdr align;
                        char buf[CMSG_SPACE(4 * sizeof(int))];
                } control;
                struct iovec iov = { buf, sizeof(buf) };
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                                     .msg_control = &control, .msg_controllen = sizeof(control) };
                ssize_t r = recvmsg(ipc->peer_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
                if (r == -1 && errno == EINTR)
                        continue;
                if (r <= 0)
                        break;
                /* Only hand-offs carry an fd, and the kernel ends a read
                 * with the segment that carries fds (unix(7): messages with
                 * ancillary data are not merged). They come back in the
                 * order they were sent: the oldest unread hand-off's
                 * listener is this one's. Past what we recorded (a channel
                 * adopted in an upgrade), the corral dialect's byte says
                 * it; Node's line is taken as listener 0. The rest are
                 * lines, dropped. */
                int fd = cmsg_take_first_fd(&mh);
                size_t lines = 0;
                (void) cmsg_close_all(&mh);
                for (const char *p = buf; (p = memchr(p, '\n', (size_t) (buf + r - p))); p++)
                        lines++;
                if (fd >= 0) {
                        bool node = ipc->dialect == IPC_DIALECT_NODE;
                        uint8_t listener = node ? 0 : (uint8_t) buf[r - 1];
                        if (!node && listener == '\n')
                                lines--;
                        if (node && buf[r - 1] == '\n')
                                lines--;
                        if (ipc->n_inflight > 0) {
                                listener = ipc->inflight_listener[ipc->inflight_head];
                                pop_read(ipc, ipc->inflight[ipc->inflight_head]);
                        }
                        cb(userdata, fd, listener);
                        n++;
                }
                ipc->dropped += lines;
        }
        ipc->inflight_head = ipc->n_inflight = 0;
        if (n > 0 && ipc->on_taken_back)
                ipc->on_taken_back(ipc, n);
        return n;
}

/* Put the rest of a partly written hand-off line in front of the queue:
 * it must reach the worker before anything else. */
static int queue_push_front(Ipc *ipc, const char *tail, size_t n) {
        int r = queue_reserve(ipc, n);
        if (r < 0)
                return r;
        memmove(ipc->out + ipc->out_head + n, ipc->out + ipc->out_head, ipc_queued(ipc));
        memcpy(ipc->out + ipc->out_head, tail, n);
        ipc->out_len += n;
        ipc->mid_line = true;
        update_events(ipc);
        return 0;
}

/* One sendmsg() of len bytes with fd attached. Returns what the kernel
 * took, or -errno (-EAGAIN when the channel is full). */
static ssize_t send_with_fd(int sock, const char *payload, size_t len, int fd) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int))];
        } control = {};
        struct iovec iov = { (void *) payload, len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = &control, .msg_controllen = sizeof(control) };
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));

        ssize_t w;
        do
                w = sendmsg(sock, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        while (w == -1 && errno == EINTR);
        if (w == -1)
                return errno == EWOULDBLOCK ? -EAGAIN : -errno;
        return w;
}

int ipc_send_line_fd(Ipc *ipc, const char *line, int fd) {
        size_t len = strlen(line);
        if (!ipc->open)
                return -ENOTCONN;
        if (ipc->peer_fd >= 0 || len == 0 || len > IPC_LINE_MAX || line[len - 1] != '\n' ||
            memchr(line, '\n', len - 1))
                return -EINVAL;
        if (ipc->mid_line)
                return -EAGAIN;
        if (queue_reserve(ipc, len) < 0)
                return -EAGAIN;
        ssize_t w = send_with_fd(ipc->fd, line, len, fd);
        if (w < 0)
                return (int) w;
        if ((size_t) w < len)
                (void) queue_push_front(ipc, line + w, len - (size_t) w);    /* room was made above */
        ipc->sent += (uint64_t) w;
        return 0;
}

int ipc_send_fd(Ipc *ipc, int fd, uint8_t listener_index) {
        if (!ipc->open)
                return -ENOTCONN;
        if (listener_index > IPC_LISTENER_INDEX_MAX)
                return -EINVAL;
        /* At the bound, ask the kernel how far the worker has read. */
        if (ipc->n_inflight >= IPC_INFLIGHT_MAX && ipc_inflight(ipc) >= IPC_INFLIGHT_MAX)
                return -EBUSY;

        if (ipc->mid_line) {
                /* Finish the partly written line first: a hand-off in the
                 * middle of a line would corrupt both. */
                const char *nl = memchr(ipc->out + ipc->out_head, '\n', ipc_queued(ipc));
                int r = flush_until(ipc, (size_t) (nl - ipc->out) + 1);
                if (r < 0)
                        return r;
                if (ipc->mid_line)
                        return -EAGAIN;
        }

        /* Queued whole lines, if any, stay queued: the hand-off may go
         * before them, as both are read at line boundaries. */
        char byte = (char) listener_index;
        char line[IPC_HANDOFF_LINE_MAX];
        const char *payload = &byte;
        size_t len = 1;
        if (ipc->dialect == IPC_DIALECT_NODE) {
                if (!ipc->handoff_line)
                        return -EINVAL;
                len = ipc->handoff_line(ipc, listener_index, line, sizeof(line));
                if (len == 0 || len > sizeof(line))
                        return -EBUSY;
                payload = line;
                /* Room for its rest, should the kernel take only part. */
                if (queue_reserve(ipc, len) < 0)
                        return -EAGAIN;
        }
        ssize_t w = send_with_fd(ipc->fd, payload, len, fd);
        if (w < 0)
                return (int) w;
        /* The fd went with the first byte. A short line is one segment,
         * all or nothing; should the kernel take only part of it, the rest
         * goes first from the queue. */
        if ((size_t) w < len)
                (void) queue_push_front(ipc, payload + w, len - (size_t) w);    /* room was made above */
        ipc->sent += (uint64_t) w;
        if (ipc->peer_fd >= 0) {
                unsigned at = (ipc->inflight_head + ipc->n_inflight) % IPC_INFLIGHT_MAX;
                ipc->inflight[at] = ipc->sent + (len - (size_t) w);
                ipc->inflight_usec[at] = now_usec();
                ipc->inflight_listener[at] = listener_index;
                ipc->inflight_len[at] = (uint16_t) len;
                ipc->n_inflight++;
        }
        if (ipc->dialect == IPC_DIALECT_NODE && ipc->keep_handoff && ipc->keep_handoff(ipc, fd, listener_index))
                return 1;
        return 0;
}

/* ---- lifecycle --------------------------------------------------------- */

int ipc_start(Ipc *ipc, uv_loop_t *loop, int fd) {
        int r;
        ipc->fd = fd;
        ipc->peer_fd = -EBADF;
        ipc->sent = 0;
        ipc->inflight_head = ipc->n_inflight = 0;
        ipc->len = 0;
        ipc->discarding = false;
        ipc->out = NULL;
        ipc->out_head = ipc->out_len = ipc->out_cap = 0;
        ipc->mid_line = false;
        ipc->dropped = ipc->malformed = ipc->fds_refused = 0;
        ipc->read_paused = false;
        ipc->closer_waiter = (CloserWaiter) { .resume = on_closer_ready, .userdata = ipc };
        ipc->log_limit = RATELIMIT_INIT(IPC_LOG_INTERVAL_USEC, IPC_LOG_BURST);
        if ((r = fd_nonblock(fd, true)) < 0)
                goto fail;
        ipc->buf = malloc(IPC_LINE_MAX + 1);
        if (!ipc->buf) {
                r = -ENOMEM;
                goto fail;
        }
        if ((r = uv_poll_init(loop, &ipc->poll, fd)) < 0)
                goto fail;
        ipc->poll.data = ipc;
        ipc->open = true;
        ipc->events = UV_READABLE;
        return uv_poll_start(&ipc->poll, UV_READABLE, on_poll);
fail:
        free(ipc->buf);
        ipc->buf = NULL;
        ipc->fd = safe_close(fd);
        return r;
}

static void on_closed(uv_handle_t *h) {
        Ipc *ipc = h->data;
        /* Our end may still hold lines with fds the worker attached and we
         * did not read: closing it releases them, so it is the closer's
         * to close too. */
        ipc->fd = closer_close(ipc->fd);
        /* The worker's end holds what it did not read: connections not
         * taken back first are closed with it. */
        ipc->peer_fd = closer_close(ipc->peer_fd);
        free(ipc->buf);
        ipc->buf = NULL;
        free(ipc->out);
        ipc->out = NULL;
        ipc->out_head = ipc->out_len = ipc->out_cap = 0;
        if (ipc->on_close)
                ipc->on_close(ipc);
}

void ipc_close(Ipc *ipc) {
        if (!ipc->open)
                return;
        ipc->open = false;
        closer_unwait(&ipc->closer_waiter);
        uv_poll_stop(&ipc->poll);
        uv_close((uv_handle_t *) &ipc->poll, on_closed);
}
