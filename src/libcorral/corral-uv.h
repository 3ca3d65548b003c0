/* corral-uv.h: corral's hand-offs and messages on a libuv loop.
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
 * on the stable libuv 1.x API and on corral_parse_message().
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
 * while. */
#ifndef CORRAL_UV_H
#define CORRAL_UV_H

#include <corral.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
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

#ifdef __cplusplus
}
#endif

#endif
