/* corral-uv.h: corral's connections and messages on a libuv loop.
 *
 * Two ways, for two kinds of worker; use one or the other, not both (each
 * reads the channel its own way):
 *
 * CorralUvTake, for a worker in any balance mode: it watches the fds of
 * corral_poll_fds() and gives each connection corral_next_nonblock()
 * returns, accepted fairly from the shared listeners or handed off by the
 * master, to on_fd as an fd:
 *
 *     static void on_fd(CorralUvTake *t, int fd, unsigned listener) {
 *             uv_stream_t *client;
 *             if (corral_uv_stream_open(t->loop, fd, &client) < 0) {
 *                     close(fd);
 *                     corral_closed(1);
 *                     return;
 *             }
 *             uv_read_start(client, alloc_cb, read_cb);
 *     }
 *     corral_set_message_handler(on_message, NULL);   // messages, as usual
 *     CorralUvTake take;
 *     corral_uv_take_start(&take, loop, on_fd, NULL);
 *     ...
 *     corral_uv_take_drain(&take);                     // on SIGTERM
 *
 * It does what every such loop would otherwise write itself: the
 * listeners left alone for a moment at the fd limit, the sources
 * libcorral drops no longer watched, the CPU given up after a turn that
 * took connections in shared balance, and corral_flush() once per loop
 * turn, so that the close reports of a turn go out as one line. See
 * corral_uv_take_start() below; src/hello/main.c is a complete worker.
 *
 * CorralUv, for a worker that only takes hand-offs and wants them as
 * libuv handles:
 *
 *     static void on_conn(CorralUv *cu, uv_stream_t *client, unsigned listener) {
 *             uv_read_start(client, alloc_cb, read_cb);   // a uv_tcp_t or uv_pipe_t
 *     }
 *     CorralUv cu;
 *     corral_uv_start(&cu, loop, on_conn, on_message);   // on_message may be NULL
 *
 * The channel (CORRAL_IPC_FD) is read as a libuv IPC pipe: every
 * connection the master hands off arrives as a uv_tcp_t (TCP listeners)
 * or a uv_pipe_t (unix listeners), already accepted, allocated with
 * malloc(): uv_close() it and free() it in the close callback (the
 * corral_uv_free_on_close() callback does both). Message lines go to
 * on_message. Close reports and sending use <corral.h> as usual
 * (corral_closed(), corral_send()): they write to the same socket, which
 * libuv only reads.
 *
 * Header-only, on purpose: it needs libuv, which the core library does
 * not; as inline code it adds no second shared library, no ABI to keep,
 * and links against whatever libuv the application uses. It relies only
 * on the stable libuv 1.x API and on <corral.h>.
 *
 * The fds a read returns belong to the last byte of that read (see
 * docs/protocol.md): libuv calls the read callback once per recvmsg(), so
 * a hand-off byte at a line boundary is matched with the pending handle
 * libuv received in the same read.
 *
 * At the fd limit the kernel drops the fd and the hand-off byte arrives
 * alone (MSG_CTRUNC, which libuv does not pass on): a hand-off byte that
 * ends a read without a pending handle, while this process cannot open
 * an fd, is such a lost connection. It is counted in `lost` and reported
 * to the master with corral_fd_limit(), which sends it elsewhere for a
 * while. (CorralUvTake leaves all of this to libcorral.) */
#ifndef CORRAL_UV_H
#define CORRAL_UV_H

#include <corral.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CORRAL_UV_LINE_MAX (64 * 1024)

typedef struct CorralUv CorralUv;
typedef void (*corral_uv_connection_cb)(CorralUv *cu, uv_stream_t *client, unsigned listener_index);
typedef void (*corral_uv_message_cb)(CorralUv *cu, const CorralMessage *msg);
typedef void (*corral_uv_stopped_cb)(CorralUv *cu);

struct CorralUv {
        uv_pipe_t pipe;
        corral_uv_connection_cb on_connection;
        corral_uv_message_cb on_message;
        corral_uv_stopped_cb on_stopped;
        void *data;                   /* for the caller */
        char *line;                   /* partial message line */
        size_t len;
        int discarding;               /* inside an oversize line */
        int status;                   /* 0, or the error that ended reading (UV_EOF: master gone) */
        unsigned long dropped;        /* stray bytes, malformed or oversize lines */
        unsigned long lost;           /* hand-offs whose fd the kernel dropped (fd limit) */
        char chunk[65536];
};

/* A close callback for handed-off handles: frees the handle. */
static inline void corral_uv_free_on_close(uv_handle_t *h) {
        free(h);
}

static inline void corral_uv__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        CorralUv *cu = (CorralUv *) h->data;
        (void) suggested;
        *buf = uv_buf_init(cu->chunk, sizeof(cu->chunk));
}

static inline void corral_uv__handoff(CorralUv *cu, unsigned index) {
        uv_loop_t *loop = cu->pipe.loop;
        uv_stream_t *client;
        uv_handle_type type = uv_pipe_pending_type(&cu->pipe);

        if (type == UV_TCP) {
                uv_tcp_t *t = (uv_tcp_t *) malloc(sizeof(*t));
                if (!t || uv_tcp_init(loop, t) < 0) {
                        free(t);
                        return;
                }
                client = (uv_stream_t *) t;
        } else {
                uv_pipe_t *p = (uv_pipe_t *) malloc(sizeof(*p));
                if (!p || uv_pipe_init(loop, p, 0) < 0) {
                        free(p);
                        return;
                }
                client = (uv_stream_t *) p;
        }
        if (uv_accept((uv_stream_t *) &cu->pipe, client) < 0 || (type != UV_TCP && type != UV_NAMED_PIPE)) {
                uv_close((uv_handle_t *) client, corral_uv_free_on_close);
                cu->dropped++;
                return;
        }
        cu->on_connection(cu, client, index);
}

/* Is this process out of fds (EMFILE, or ENFILE system-wide)? Asked only
 * when a hand-off byte came without its fd. */
static inline int corral_uv__at_fd_limit(CorralUv *cu) {
        uv_os_fd_t fd;
        if (uv_fileno((uv_handle_t *) &cu->pipe, &fd) < 0)
                return 0;
        int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (dup >= 0) {
                close(dup);
                return 0;
        }
        return errno == EMFILE || errno == ENFILE;
}

static inline void corral_uv__read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
        CorralUv *cu = (CorralUv *) s->data;
        if (nread < 0) {
                cu->status = (int) nread;
                uv_read_stop(s);
                return;
        }
        for (ssize_t i = 0; i < nread; i++) {
                char c = buf->base[i];
                if (cu->discarding) {
                        if (c == '\n')
                                cu->discarding = 0;
                        continue;
                }
                if (cu->len == 0 && c != '{') {
                        /* A hand-off byte: its fd is pending in this read. */
                        if (i == nread - 1 && uv_pipe_pending_count(&cu->pipe) > 0)
                                corral_uv__handoff(cu, (unsigned char) c);
                        else if (i == nread - 1 && c != '\n' && corral_uv__at_fd_limit(cu)) {
                                cu->lost++;
                                (void) corral_fd_limit(1);
                        } else if (c != '\n')
                                cu->dropped++;
                        continue;
                }
                if (c != '\n') {
                        if (cu->len == CORRAL_UV_LINE_MAX) {
                                cu->len = 0;
                                cu->discarding = 1;
                                cu->dropped++;
                                continue;
                        }
                        cu->line[cu->len++] = c;
                        continue;
                }
                CorralMessage msg;
                if (corral_parse_message(cu->line, cu->len, &msg) < 0) {
                        cu->dropped++;
                } else if (cu->on_message) {
                        /* Terminate data in place only when it lies in our
                         * line: a line without "data" gets the library's
                         * own "null", which is not ours to write. */
                        if ((uintptr_t) msg.data >= (uintptr_t) cu->line &&
                            (uintptr_t) msg.data < (uintptr_t) cu->line + cu->len)
                                ((char *) msg.data)[msg.data_len] = 0;
                        cu->on_message(cu, &msg);
                }
                cu->len = 0;
        }
        /* Fds libuv received with bytes that were not hand-offs: close them. */
        while (uv_pipe_pending_count(&cu->pipe) > 0) {
                uv_pipe_t *p = (uv_pipe_t *) malloc(sizeof(*p));
                if (!p || uv_pipe_init(cu->pipe.loop, p, 0) < 0) {
                        free(p);
                        break;
                }
                uv_accept((uv_stream_t *) &cu->pipe, (uv_stream_t *) p);
                uv_close((uv_handle_t *) p, corral_uv_free_on_close);
                cu->dropped++;
        }
}

/* Start reading the channel. cu is owned by the caller and must stay valid
 * until on_stopped ran (after corral_uv_stop()). Returns 0 or a negative
 * errno (from corral_ipc_fd() or libuv). */
static inline int corral_uv_start(CorralUv *cu, uv_loop_t *loop, corral_uv_connection_cb on_connection,
                                  corral_uv_message_cb on_message) {
        int fd = corral_ipc_fd(), r;
        if (fd < 0)
                return fd;
        memset(cu, 0, offsetof(CorralUv, chunk));
        cu->on_connection = on_connection;
        cu->on_message = on_message;
        cu->line = (char *) malloc(CORRAL_UV_LINE_MAX + 1);
        if (!cu->line)
                return -ENOMEM;
        if ((r = uv_pipe_init(loop, &cu->pipe, 1)) < 0) {
                free(cu->line);
                return r;
        }
        cu->pipe.data = cu;
        if ((r = uv_pipe_open(&cu->pipe, fd)) < 0 ||
            (r = uv_read_start((uv_stream_t *) &cu->pipe, corral_uv__alloc, corral_uv__read)) < 0) {
                /* The handle closes without touching cu->line. */
                uv_close((uv_handle_t *) &cu->pipe, NULL);
                free(cu->line);
                cu->line = NULL;
                return r;
        }
        return 0;
}

static inline void corral_uv__closed(uv_handle_t *h) {
        CorralUv *cu = (CorralUv *) h->data;
        free(cu->line);
        cu->line = NULL;
        if (cu->on_stopped)
                cu->on_stopped(cu);
}

/* Stop reading and close the pipe handle (not the connections handed
 * off so far); on_stopped (may be NULL) runs from the loop afterwards. */
static inline void corral_uv_stop(CorralUv *cu, corral_uv_stopped_cb on_stopped) {
        cu->on_stopped = on_stopped;
        uv_close((uv_handle_t *) &cu->pipe, corral_uv__closed);
}

/* ---- connections in any balance mode: CorralUvTake -----------------------
 *
 * The loop that corral.h describes for corral_next_nonblock(), on libuv.
 * Nothing here reads the channel: libcorral does, and messages go to the
 * handler of corral_set_message_handler() (or are kept for
 * corral_recv_message()), as with corral_next(). */

/* How long the listeners are left alone when accepting failed for want of
 * fds or memory, as corral_next() does: the connection stays queued for a
 * sibling, and a level-triggered poll of a listener we cannot drain would
 * spin. */
#define CORRAL_UV_TAKE_PAUSE_MS 100

typedef struct CorralUvTake CorralUvTake;
/* A connection, in any balance mode: a non-blocking, close-on-exec fd,
 * owned by the callee, who reports it with corral_closed(1) once it is
 * closed; listener_index as corral_next_nonblock() gives it. */
typedef void (*corral_uv_take_fd_cb)(CorralUvTake *t, int fd, unsigned listener_index);
/* An error the take dealt with itself, for the caller to log (error is a
 * negative errno; libuv's error codes are the same on Unix):
 *   -EMFILE, -ENFILE, -ENOBUFS, -ENOMEM: out of fds or memory; the
 *     listeners (not the channel) are left alone for
 *     CORRAL_UV_TAKE_PAUSE_MS, the connection stays queued for a sibling;
 *   -ECONNRESET: the master closed the channel (it is gone); nothing is
 *     watched any more, so the loop ends with the caller's last handle;
 *   another, fd -1: corral_next_nonblock() failed; what corral_poll_fds()
 *     no longer lists (a listener that failed) is no longer watched;
 *   another, fd >= 0: polling fd failed; it is no longer watched. */
typedef void (*corral_uv_take_error_cb)(CorralUvTake *t, int error, int fd);
typedef void (*corral_uv_take_stopped_cb)(CorralUvTake *t);

/* An fd of corral_poll_fds(): the channel or a listener. */
typedef struct CorralUvSource {
        uv_poll_t poll;
        CorralUvTake *take;
        int fd;                       /* libcorral's: never closed here */
        int listener;                 /* a listening socket, not the channel */
        int watched;                  /* poll handle initialised and not closed */
} CorralUvSource;

struct CorralUvTake {
        uv_loop_t *loop;
        void *data;                   /* for the caller; corral_uv_take_start() leaves it */
        corral_uv_take_fd_cb on_fd;
        corral_uv_take_error_cb on_error;
        corral_uv_take_stopped_cb on_stopped;
        CorralUvSource *sources;      /* what corral_poll_fds() gave at the start */
        size_t n_sources;
        int shared;                   /* listeners of our own: yield after a turn that took */
        int draining;                 /* corral_uv_take_drain() was called */
        int stopping;                 /* corral_uv_take_stop() was called, or the start failed */
        unsigned n_handles;           /* handles whose close callback has not run */
        uv_prepare_t flush;           /* corral_flush(), once per loop turn */
        uv_timer_t pause;             /* the listeners' pause at the fd limit */
};

/* Wrap fd, a connected stream socket such as on_fd gets, in a libuv
 * handle: a uv_pipe_t for a unix socket, else a uv_tcp_t, allocated with
 * malloc(): uv_close() it with corral_uv_free_on_close(). On success the
 * handle owns fd; on failure fd is left alone (close it, and report it
 * with corral_closed()). Returns 0 or a negative errno. */
static inline int corral_uv_stream_open(uv_loop_t *loop, int fd, uv_stream_t **ret_stream) {
        struct sockaddr_storage addr;
        socklen_t len = sizeof(addr);
        int r;

        *ret_stream = NULL;
        /* getsockname() rather than Linux's SO_DOMAIN: the same one call,
         * and POSIX, as the rest of this header. */
        addr.ss_family = AF_UNSPEC;
        (void) getsockname(fd, (struct sockaddr *) &addr, &len);
        if (addr.ss_family == AF_UNIX) {
                uv_pipe_t *p = (uv_pipe_t *) malloc(sizeof(*p));
                if (!p)
                        return -ENOMEM;
                if ((r = uv_pipe_init(loop, p, 0)) < 0) {
                        free(p);
                        return r;
                }
                /* A failed open leaves fd to us: the handle closes without it. */
                if ((r = uv_pipe_open(p, fd)) < 0) {
                        uv_close((uv_handle_t *) p, corral_uv_free_on_close);
                        return r;
                }
                *ret_stream = (uv_stream_t *) p;
                return 0;
        }
        uv_tcp_t *t = (uv_tcp_t *) malloc(sizeof(*t));
        if (!t)
                return -ENOMEM;
        if ((r = uv_tcp_init(loop, t)) < 0) {
                free(t);
                return r;
        }
        if ((r = uv_tcp_open(t, fd)) < 0) {
                uv_close((uv_handle_t *) t, corral_uv_free_on_close);
                return r;
        }
        *ret_stream = (uv_stream_t *) t;
        return 0;
}

/* The last close callback frees the sources and tells the caller. */
static inline void corral_uv_take__unref(CorralUvTake *t) {
        if (--t->n_handles > 0)
                return;
        free(t->sources);
        t->sources = NULL;
        t->n_sources = 0;
        if (t->on_stopped)
                t->on_stopped(t);
}

static inline void corral_uv_take__source_closed(uv_handle_t *h) {
        corral_uv_take__unref(((CorralUvSource *) h->data)->take);
}

static inline void corral_uv_take__handle_closed(uv_handle_t *h) {
        corral_uv_take__unref((CorralUvTake *) h->data);
}

static inline void corral_uv_take__unwatch(CorralUvSource *src) {
        if (!src->watched)
                return;
        src->watched = 0;
        /* The fd is libcorral's (a listener or the channel): not closed. */
        uv_close((uv_handle_t *) &src->poll, corral_uv_take__source_closed);
}

static inline void corral_uv_take__unwatch_all(CorralUvTake *t) {
        for (size_t i = 0; i < t->n_sources; i++)
                corral_uv_take__unwatch(&t->sources[i]);
}

/* After an error libcorral may have dropped a source (a listener that
 * failed, the channel the master closed): stop watching what it no longer
 * lists. It lists no more than it did at the start, unless the caller
 * added listeners since (those are not watched). */
static inline void corral_uv_take__unwatch_unlisted(CorralUvTake *t) {
        int *fds = (int *) malloc(t->n_sources * sizeof(int));
        int n = fds ? corral_poll_fds(fds, t->n_sources) : -ENOMEM;

        if (n >= 0)
                for (size_t i = 0; i < t->n_sources; i++) {
                        int listed = 0;
                        for (size_t k = 0; k < (size_t) n && k < t->n_sources; k++)
                                listed = listed || fds[k] == t->sources[i].fd;
                        if (!listed)
                                corral_uv_take__unwatch(&t->sources[i]);
                }
        free(fds);
}

static inline void corral_uv_take__readable(uv_poll_t *p, int status, int events);

/* Watch the listeners (not the channel), or stop for a while. */
static inline void corral_uv_take__watch_listeners(CorralUvTake *t, int on) {
        for (size_t i = 0; i < t->n_sources; i++) {
                CorralUvSource *src = &t->sources[i];
                if (!src->watched || !src->listener)
                        continue;
                if (on)
                        (void) uv_poll_start(&src->poll, UV_READABLE, corral_uv_take__readable);
                else
                        (void) uv_poll_stop(&src->poll);
        }
}

static inline void corral_uv_take__resume(uv_timer_t *h) {
        CorralUvTake *t = (CorralUvTake *) h->data;

        if (!t->draining && !t->stopping)
                corral_uv_take__watch_listeners(t, 1);
}

/* Take what this wakeup has: every hand-off libcorral read, at most one
 * connection per readable listener (libcorral's turn, SPEC §5). */
static inline void corral_uv_take__turn(CorralUvTake *t) {
        unsigned taken = 0, listener = 0;

        while (!t->stopping) {
                int fd = corral_next_nonblock(&listener);

                if (fd >= 0 && t->stopping) {
                        /* The message handler stopped the take during this
                         * call: nobody is left to serve the connection. */
                        close(fd);
                        (void) corral_closed(1);
                        break;
                }
                if (fd >= 0) {
                        t->on_fd(t, fd, listener);
                        taken++;
                        continue;
                }
                switch (fd) {
                case -EAGAIN:           /* this turn is over */
                case -ESHUTDOWN:        /* draining: the kept hand-offs are taken */
                        break;
                case -EMFILE:
                case -ENFILE:
                case -ENOBUFS:
                case -ENOMEM:
                        /* The connection stays queued, and the level-triggered
                         * poll would spin: pause, and leave it to a sibling. */
                        if (!t->draining && !t->stopping) {
                                corral_uv_take__watch_listeners(t, 0);
                                (void) uv_timer_start(&t->pause, corral_uv_take__resume, CORRAL_UV_TAKE_PAUSE_MS, 0);
                        }
                        break;
                case -ECONNRESET:
                        /* The master is gone: no connection will come. */
                        corral_uv_take__unwatch_all(t);
                        break;
                default:
                        corral_uv_take__unwatch_unlisted(t);
                        break;
                }
                if (fd != -EAGAIN && fd != -ESHUTDOWN && t->on_error && !t->stopping)
                        t->on_error(t, fd, -1);
                break;
        }
        /* Fairness in shared balance, the second rule: give up the CPU
         * after taking connections, so that a sibling woken by the same
         * burst but waiting for a CPU runs now rather than after we took
         * it all. bench/fairness.sh, 2 workers, wrk -c50 keep-alive, on a
         * busy 2-CPU machine: busiest/idlest worker median 1.87 over 11
         * runs with one accept per wakeup alone, 1.17 over 25 with both;
         * it costs about 20% of the connection-per-request rate there. For
         * an exact split, use round-robin or least-conn. */
        if (taken > 0 && t->shared)
                (void) sched_yield();
}

static inline void corral_uv_take__readable(uv_poll_t *p, int status, int events) {
        CorralUvSource *src = (CorralUvSource *) p->data;
        CorralUvTake *t = src->take;

        (void) events;
        if (status < 0) {
                corral_uv_take__unwatch(src);
                if (t->on_error)
                        t->on_error(t, status, src->fd);
                return;
        }
        corral_uv_take__turn(t);
}

/* Before the loop waits: the close reports of this turn, as one line. */
static inline void corral_uv_take__flush(uv_prepare_t *h) {
        (void) h;
        (void) corral_flush();
}

/* Start taking connections on loop: watch the fds of corral_poll_fds()
 * (the channel and the listeners: those of LISTEN_FDS and any added with
 * corral_add_listener() before this call) and, after each wakeup, give
 * on_fd every connection corral_next_nonblock() returns. on_error (may be
 * NULL) hears of the errors it dealt with (see corral_uv_take_error_cb).
 * In shared balance (there are listeners) it yields the CPU after a turn
 * that took connections, for the siblings' sake. With a channel it calls
 * corral_flush() once per loop turn, before the loop waits, from a prepare
 * handle that does not keep the loop alive. t is owned by the caller and
 * must stay valid until the handles are closed: on_stopped ran (after
 * corral_uv_take_stop()), or after a failed start, the loop ran once more.
 * Returns 0, -ENOENT when there is neither a channel nor a listener, or
 * another negative errno (from corral_poll_fds() or libuv). */
static inline int corral_uv_take_start(CorralUvTake *t, uv_loop_t *loop, corral_uv_take_fd_cb on_fd,
                                       corral_uv_take_error_cb on_error) {
        void *data = t->data;
        int channel = corral_ipc_fd(), n, r = 0, *fds;

        memset(t, 0, sizeof(*t));
        t->data = data;
        t->loop = loop;
        t->on_fd = on_fd;
        t->on_error = on_error;
        /* Until it succeeded: corral_uv_take_stop() has nothing to stop. */
        t->stopping = 1;
        if ((n = corral_poll_fds(NULL, 0)) <= 0)
                return n < 0 ? n : -ENOENT;
        fds = (int *) malloc((size_t) n * sizeof(int));
        t->sources = (CorralUvSource *) calloc((size_t) n, sizeof(CorralUvSource));
        if (!fds || !t->sources) {
                free(fds);
                free(t->sources);
                t->sources = NULL;
                return -ENOMEM;
        }
        t->n_sources = (size_t) corral_poll_fds(fds, (size_t) n);
        for (size_t i = 0; i < t->n_sources; i++) {
                CorralUvSource *src = &t->sources[i];

                src->take = t;
                src->fd = fds[i];
                src->listener = fds[i] != channel;
                t->shared = t->shared || src->listener;
                if ((r = uv_poll_init(loop, &src->poll, src->fd)) < 0)
                        break;
                src->poll.data = src;
                src->watched = 1;
                t->n_handles++;
                if ((r = uv_poll_start(&src->poll, UV_READABLE, corral_uv_take__readable)) < 0)
                        break;
        }
        free(fds);
        if (r < 0) {
                /* The sources are freed once the handles opened so far closed. */
                corral_uv_take__unwatch_all(t);
                if (t->n_handles == 0) {
                        free(t->sources);
                        t->sources = NULL;
                }
                return r;
        }
        (void) uv_prepare_init(loop, &t->flush);
        t->flush.data = t;
        t->n_handles++;
        if (channel >= 0) {
                (void) uv_prepare_start(&t->flush, corral_uv_take__flush);
                uv_unref((uv_handle_t *) &t->flush);
        }
        (void) uv_timer_init(loop, &t->pause);
        t->pause.data = t;
        t->n_handles++;
        t->stopping = 0;
        return 0;
}

/* The graceful stop, for SIGTERM: corral_drain() (STOPPING=1, nothing new
 * taken from the listeners, the hand-offs already sent kept), then stop
 * watching, and give on_fd the kept connections now. The flush handle
 * stays: from here each corral_closed() is sent at once, and what the
 * channel could not take then goes out before the loop waits. Serve what
 * you have and exit. Returns what corral_drain() returned. */
static inline int corral_uv_take_drain(CorralUvTake *t) {
        int r = corral_drain();

        if (!t->loop || t->stopping)
                return r;
        t->draining = 1;
        (void) uv_timer_stop(&t->pause);
        corral_uv_take__unwatch_all(t);
        corral_uv_take__turn(t);
        return r;
}

/* Stop taking and close the take's handles (not the connections on_fd
 * got, nor the fds of corral_poll_fds(), which stay libcorral's). No
 * callback of t runs after this one but on_stopped (may be NULL), from the
 * loop, once the handles are closed; then t may be freed. Close reports
 * counted from here go out with the next corral_flush(), which is the
 * caller's to call if the worker goes on. Does nothing on a zeroed take,
 * one whose start failed, or one already stopped. */
static inline void corral_uv_take_stop(CorralUvTake *t, corral_uv_take_stopped_cb on_stopped) {
        if (!t->loop || t->stopping)
                return;
        t->stopping = 1;
        t->on_stopped = on_stopped;
        corral_uv_take__unwatch_all(t);
        uv_close((uv_handle_t *) &t->flush, corral_uv_take__handle_closed);
        uv_close((uv_handle_t *) &t->pause, corral_uv_take__handle_closed);
}

#ifdef __cplusplus
}
#endif

#endif
