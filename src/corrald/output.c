/* output: see output.h.
 *
 * Invariant: buf[0..prefix_len) is the line prefix and buf[prefix_len..len)
 * the bytes of the current line received so far; len < sizeof(buf), so the
 * newline always fits and a line is written as one write(2) of at most
 * PIPE_BUF bytes (pipe(7): such writes are atomic). */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "fd-util.h"
#include "output.h"

/* Bytes read per readable event. The poll is level-triggered: the loop
 * comes back while more is pending, and other workers get their turn in
 * between. */
#define READ_CHUNK (64 * 1024)
/* The most output_close() passes on before closing. A pipe holds 64 KiB by
 * default (pipe(7)); a child of the worker that still holds the pipe and
 * keeps writing must not keep the master here. */
#define DRAIN_MAX (1024 * 1024)
/* Longest "NAME[SLOT]: " we write; a longer name is cut. */
#define PREFIX_MAX 256

int output_pipe(int *ret_read, int *ret_write) {
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) == -1)
                return -errno;
        *ret_read = fds[0];
        *ret_write = fds[1];
        return 0;
}

static void emit_line(Output *o) {
        o->buf[o->len++] = '\n';
        /* Blocking, like any write to stderr; a failure (EPIPE: nobody
         * reads our stderr any more) loses the line, never the master. */
        (void) loop_write(STDERR_FILENO, o->buf, o->len);
        o->len = o->prefix_len;
}

/* Where to cut a line that does not fit: at `room`, moved back to the start
 * of a UTF-8 sequence if that would split one (at most 3 bytes back). */
static size_t cut_at(const char *p, size_t room) {
        size_t cut = room;
        while (cut > 0 && room - cut < 3 && ((unsigned char) p[cut] & 0xC0) == 0x80)
                cut--;
        return cut > 0 && ((unsigned char) p[cut] & 0xC0) != 0x80 ? cut : room;
}

static void feed(Output *o, const char *p, size_t n) {
        while (n > 0) {
                size_t room = sizeof(o->buf) - 1 - o->len;
                const char *nl = memchr(p, '\n', n);
                size_t take = nl ? (size_t) (nl - p) : n;

                if (take > room) {
                        /* Too long for one line: pass on a whole chunk now
                         * rather than hold it. */
                        size_t cut = cut_at(p, room);
                        memcpy(o->buf + o->len, p, cut);
                        o->len += cut;
                        emit_line(o);
                        p += cut;
                        n -= cut;
                        continue;
                }
                memcpy(o->buf + o->len, p, take);
                o->len += take;
                if (nl) {
                        emit_line(o);
                        take++;
                }
                p += take;
                n -= take;
        }
}

/* One read. Returns the bytes read, 0 at EOF, or -errno. */
static ssize_t read_some(Output *o) {
        char chunk[READ_CHUNK];
        ssize_t n;
        do
                n = read(o->fd, chunk, sizeof(chunk));
        while (n == -1 && errno == EINTR);
        if (n == -1)
                return -errno;
        feed(o, chunk, (size_t) n);
        return n;
}

static void on_readable(uv_poll_t *h, int status, int events) {
        Output *o = h->data;
        ssize_t n = status < 0 ? -EIO : read_some(o);
        if (n == -EAGAIN)
                return;
        if (n <= 0)
                /* EOF: the worker and everything it started closed the pipe. */
                output_close(o);
}

int output_start(Output *o, uv_loop_t *loop, int fd, const char *name, unsigned slot) {
        int r, l;

        o->fd = fd;
        if ((r = fd_nonblock(fd, true)) < 0)
                goto fail;
        l = snprintf(o->buf, PREFIX_MAX, "%s[%u]: ", name, slot);
        o->prefix_len = o->len = (size_t) MIN(l, PREFIX_MAX - 1);
        if ((r = uv_poll_init(loop, &o->poll, fd)) < 0)
                goto fail;
        o->poll.data = o;
        o->open = true;
        /* Only fails for a closing handle (libuv registers the fd with epoll
         * later, in the loop); once initialised, the handle is ours to close. */
        (void) uv_poll_start(&o->poll, UV_READABLE, on_readable);
        return 0;
fail:
        o->fd = safe_close(fd);
        return r;
}

static void on_closed(uv_handle_t *h) {
        Output *o = h->data;
        o->fd = safe_close(o->fd);
        if (o->on_close)
                o->on_close(o);
}

void output_close(Output *o) {
        if (!o->open)
                return;
        /* What the worker wrote before it exited is still in the pipe. */
        for (size_t total = 0; total < DRAIN_MAX;) {
                ssize_t n = read_some(o);
                if (n <= 0)
                        break;
                total += (size_t) n;
        }
        if (o->len > o->prefix_len)
                emit_line(o);
        o->open = false;
        uv_poll_stop(&o->poll);
        uv_close((uv_handle_t *) &o->poll, on_closed);
}
