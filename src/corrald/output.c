/* output: see output.h.
 *
 * Invariant: buf[0..prefix_len) is the line prefix and buf[prefix_len..len)
 * the bytes of the current line received so far; len <= prefix_len +
 * OUTPUT_LINE_MAX and len < cap, so the newline always fits. Lines go
 * to log_stderr_write(), the one non-blocking FIFO for corrald's stderr, so
 * they stay whole and never interleave with other lines of ours. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fd-util.h"
#include "log.h"
#include "output.h"

/* Bytes read per readable event. The poll is level-triggered: the loop
 * comes back while more is pending, and other workers get their turn in
 * between. */
#define READ_CHUNK (64 * 1024)
/* The most output_close() passes on before closing. A pipe holds 64 KiB by
 * default (pipe(7)); a child of the worker that still holds the pipe and
 * keeps writing must not keep the master here. */
#define DRAIN_MAX (1024 * 1024)
/* Longest "NAME[SLOT/PID]: " we write; a longer name is cut. */
#define PREFIX_MAX 256
/* Line bytes a worker's buffer holds at first. */
#define OUTPUT_BUF_START 1024

int output_pipe(int *ret_read, int *ret_write) {
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) == -1)
                return -errno;
        *ret_read = fds[0];
        *ret_write = fds[1];
        return 0;
}

/* A "<N>" priority prefix (sd-daemon(3)) at the start of a line, N = 0..7:
 * the journal takes it as PRIORITY; on stderr it is consumed, not printed. */
static size_t priority_prefix_len(const char *p, size_t n) {
        return n >= 3 && p[0] == '<' && p[1] >= '0' && p[1] <= '7' && p[2] == '>' ? 3 : 0;
}

static void emit_line(Output *o) {
        size_t skip = o->continued ? 0 : priority_prefix_len(o->buf + o->prefix_len, o->len - o->prefix_len);
        if (skip > 0)
                memmove(o->buf + o->prefix_len, o->buf + o->prefix_len + skip, o->len - o->prefix_len - skip);
        o->len -= skip;
        o->buf[o->len++] = '\n';
        log_stderr_write(o->buf, o->len);
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

/* Make room for `want` more bytes of the current line (and the newline),
 * growing buf up to its full size; most lines are short, so a worker's
 * buffer starts small. Returns the room there is, which may be less when
 * memory is short (the line is then split earlier). */
static size_t make_room(Output *o, size_t want) {
        size_t limit = o->prefix_len + OUTPUT_LINE_MAX;
        size_t need = MIN(o->len + want, limit) + 1;
        if (need > o->cap) {
                size_t cap = MAX(need, MIN(o->cap * 2, limit + 1));
                char *b = realloc(o->buf, cap);
                if (b) {
                        o->buf = b;
                        o->cap = cap;
                }
        }
        return MIN(o->cap - 1, limit) - o->len;
}

static void feed(Output *o, const char *p, size_t n) {
        while (n > 0) {
                const char *nl = memchr(p, '\n', n);
                size_t take = nl ? (size_t) (nl - p) : n;
                size_t room = make_room(o, take);

                if (take > room) {
                        /* Longer than journald's LineMax=: pass on what we
                         * have as one part, and the rest behind a prefix of
                         * its own, as journald splits it. */
                        size_t cut = cut_at(p, room);
                        memcpy(o->buf + o->len, p, cut);
                        o->len += cut;
                        emit_line(o);
                        o->continued = true;
                        p += cut;
                        n -= cut;
                        continue;
                }
                memcpy(o->buf + o->len, p, take);
                o->len += take;
                if (nl) {
                        emit_line(o);
                        o->continued = false;
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

/* Outputs whose reading waits for corrald's stderr queue to drain: the
 * worker then blocks on its own pipe, the master never does. */
static Output *paused;

static void on_readable(uv_poll_t *h, int status, int events);

static void unpause(Output *o) {
        if (!o->paused)
                return;
        for (Output **p = &paused; *p; p = &(*p)->next_paused)
                if (*p == o) {
                        *p = o->next_paused;
                        break;
                }
        o->paused = false;
        o->next_paused = NULL;
}

static void on_stderr_drained(void) {
        while (paused) {
                Output *o = paused;
                unpause(o);
                (void) uv_poll_start(&o->poll, UV_READABLE, on_readable);
        }
}

static void on_readable(uv_poll_t *h, int status, int events) {
        Output *o = h->data;
        if (status >= 0 && log_stderr_congested()) {
                uv_poll_stop(&o->poll);
                o->paused = true;
                o->next_paused = paused;
                paused = o;
                return;
        }
        ssize_t n = status < 0 ? -EIO : read_some(o);
        if (n == -EAGAIN)
                return;
        if (n <= 0)
                /* EOF: the worker and everything it started closed the pipe. */
                output_close(o);
}

int output_start(Output *o, uv_loop_t *loop, int fd, const char *name, unsigned slot, pid_t pid) {
        int r, l;

        o->fd = fd;
        if ((r = fd_nonblock(fd, true)) < 0)
                goto fail;
        /* The prefix and a short line; grown as lines need (make_room()). */
        o->cap = PREFIX_MAX + OUTPUT_BUF_START;
        o->buf = malloc(o->cap);
        if (!o->buf) {
                r = -ENOMEM;
                goto fail;
        }
        l = snprintf(o->buf, PREFIX_MAX, "%s[%u/%d]: ", name, slot, (int) pid);
        o->prefix_len = o->len = (size_t) MIN(l, PREFIX_MAX - 1);
        if ((r = uv_poll_init(loop, &o->poll, fd)) < 0)
                goto fail;
        o->poll.data = o;
        o->open = true;
        log_stderr_set_drained_callback(on_stderr_drained);
        /* Only fails for a closing handle (libuv registers the fd with epoll
         * later, in the loop); once initialised, the handle is ours to close. */
        (void) uv_poll_start(&o->poll, UV_READABLE, on_readable);
        return 0;
fail:
        o->fd = safe_close(fd);
        free(o->buf);
        o->buf = NULL;
        return r;
}

static void on_closed(uv_handle_t *h) {
        Output *o = h->data;
        o->fd = safe_close(o->fd);
        free(o->buf);
        o->buf = NULL;
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
        unpause(o);
        o->open = false;
        uv_poll_stop(&o->poll);
        uv_close((uv_handle_t *) &o->poll, on_closed);
}
