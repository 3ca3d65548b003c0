/* corral-hello: the example corral worker, an HTTP/1.1 keep-alive hello
 * world on libuv and libcorral. Copy it: everything a worker needs is here,
 * and nothing else.
 *
 * Where connections come from (SPEC §5) is libcorral's business:
 * corral_poll_fds() gives the fds to watch and corral_next_nonblock() the
 * next connection, in any balance mode: accepted from the LISTEN_FDS
 * sockets in "shared" balance (one connection per listener per wakeup, the
 * fair way: a busy worker does not drain the backlog while its siblings
 * wait; see bench/fairness.sh), handed off by the master over
 * CORRAL_IPC_FD in "round-robin", "least-conn" and "ip-hash", or, run by
 * hand, accepted from the sockets --listen ADDRESS binds. <corral-uv.h>'s
 * CorralUvTake drives both on our libuv loop and gives us each connection
 * as an fd (on_connection_fd()). Every connection is reported with
 * corral_closed() when it ends (the library reports only the handed-off
 * ones, so least-conn knows our load), once per loop turn (the take calls
 * corral_flush() before the loop waits). Messages from the master or other
 * workers arrive on the channel in any mode and are logged.
 *
 * Lifecycle: READY=1 and STATUS= once serving, WATCHDOG=1 at half of
 * WATCHDOG_USEC, and on SIGTERM/SIGINT a graceful stop: corral_drain()
 * (STOPPING=1, nothing new taken, the hand-offs already sent kept and
 * served), close idle keep-alive connections, let requests in flight
 * finish with "Connection: close", give a connection accepted just before
 * the stop STOP_GRACE_MS to send its request, and exit 0 once the last
 * connection is gone.
 *
 * Timeouts, so that clients that hold connections without using them
 * (slow-loris) cannot take all of our fds: a request head must be complete
 * within --header-timeout of the connection's start, of the previous
 * request, or of its first byte after an idle keep-alive pause; a
 * keep-alive connection idle for --idle-timeout is closed. One periodic
 * sweep over the connection list checks both (on_sweep()), no timer per
 * connection. A request that is answered (or delayed) is ours to finish
 * and has no timeout.
 *
 * Requests: any path answers "Hello World"; GET /delay/<ms> answers after
 * that many milliseconds (for tests of in-flight requests and slow
 * workers). Every response carries X-Worker-Pid and X-Worker (the slot).
 * Parsing and formatting are in http.c, pure and unit-tested. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <corral-uv.h>
#include <uv.h>

#include "http.h"
#include "listen-addr.h"

#ifndef CORRAL_VERSION
#define CORRAL_VERSION "0.1.0"
#endif

/* The input buffer is also the limit on a request's line plus headers. */
#define IN_CAP 8192
/* Room for ~25 pipelined responses before we must flush. */
#define OUT_CAP 4096
/* Every response we send fits in this. */
#define RESP_MAX 256
/* After a final response we shut down our side and wait this long for the
 * client's FIN, so unread request bytes do not turn our close into an RST
 * that could destroy the response in flight (RFC 9112 §9.6). */
#define LINGER_MS 1000
/* During a stop, how long a connection that has a request arriving (or
 * responses stuck in its socket) may take before we close it. */
#define STOP_GRACE_MS 3000
/* Defaults of --header-timeout and --idle-timeout. A real client sends a
 * request head in milliseconds, and 10 s leaves room for a slow mobile
 * link; a keep-alive pause of 15 s outlasts most clients' own idle
 * timeouts, so that the client, not we, usually closes an idle connection
 * (no race with a request it sends just as we close). */
#define HEADER_TIMEOUT_MS 10000
#define IDLE_TIMEOUT_MS 15000
/* The sweep runs every quarter of the shorter timeout, at most every
 * second and at least every 50 ms: a connection is closed within a
 * quarter of its timeout after it expired. */
#define SWEEP_MAX_MS 1000
#define SWEEP_MIN_MS 50

static const char hello_body[] = "Hello World\n";
static const char bad_body[] = "Bad Request\n";

typedef struct Server Server;

/* A socket --listen bound (run by hand): ours to close, and to unlink. */
typedef struct Bound {
        int fd;
        char *unlink_path;
} Bound;

typedef struct Conn {
        uv_stream_t *stream;    /* a malloc'ed uv_tcp_t or uv_pipe_t */
        uv_timer_t timer;       /* /delay/<ms>, the stop grace period, lingering */
        uv_write_t write_req;
        uv_shutdown_t shutdown_req;
        Server *server;
        struct Conn *prev, *next;
        unsigned pending_closes;

        bool reading;           /* uv_read_start() is in effect */
        bool writing;           /* a uv_write() of out[] is in flight */
        bool delayed;           /* the response to `pending` waits on timer */
        bool close_after;       /* the last response said Connection: close */
        bool lingering;         /* shut down our side, discarding input */
        bool eof;               /* the peer will send nothing more */
        bool closing;           /* uv_close() called, waiting for callbacks */
        unsigned n_requests;    /* requests read on this connection */
        uint64_t since;         /* loop time (ms) its current wait for the client began */

        HttpRequest pending;    /* the /delay/<ms> request being delayed */
        uint64_t body_left;     /* request body bytes still to skip */
        size_t in_len, out_len;
        char in[IN_CAP];
        char out[OUT_CAP];
} Conn;

struct Server {
        uv_loop_t loop;
        CorralUvTake take;      /* our connections, in any balance mode */
        Bound *bound;
        size_t n_bound;
        uv_signal_t sigterm, sigint;
        uv_timer_t watchdog;
        uv_timer_t sweep;       /* header and idle timeouts */
        uint64_t header_timeout_ms, idle_timeout_ms;    /* 0: none */
        Conn *conns;            /* connections not yet closing */
        size_t n_conns;         /* allocated, including closing ones */
        bool stopping;
        pid_t pid;
        int slot;               /* CORRAL_WORKER_ID, or -1 */
        uint64_t n_accepted, n_requests, n_timed_out;

        /* Responses are the same but for the Date header: built once a
         * second, copied per request. */
        time_t resp_time;
        char resp[_HTTP_CONNECTION_MAX][RESP_MAX];
        size_t resp_len[_HTTP_CONNECTION_MAX];
        char bad[RESP_MAX];
        size_t bad_len;
};

/* ---- logging ------------------------------------------------------------- */

/* One line on stderr, with the sd-daemon(3) "<N>" priority prefix when
 * corrald or journald reads it (SPEC §8). */
static bool log_prefix;

static void log_init(void) {
        const char *e = getenv("JOURNAL_STREAM");
        struct stat st;
        unsigned long dev, ino;

        if (getenv("CORRAL_INSTANCE"))
                log_prefix = true;
        else if (e && sscanf(e, "%lu:%lu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0)
                log_prefix = st.st_dev == (dev_t) dev && st.st_ino == (ino_t) ino;
}

__attribute__((format(printf, 2, 3))) static void log_msg(int prio, const char *fmt, ...) {
        char line[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        if (log_prefix)
                fprintf(stderr, "<%d>corral-hello: %s\n", prio, line);
        else
                fprintf(stderr, "corral-hello: %s\n", line);
}

/* ---- responses ------------------------------------------------------------ */

static void responses_update(Server *s) {
        time_t now = time(NULL);
        char date[64];
        ssize_t n;

        if (now == s->resp_time)
                return;
        s->resp_time = now;
        http_format_date(date, sizeof(date), now);
        for (int k = 0; k < _HTTP_CONNECTION_MAX; k++) {
                n = http_format_response(s->resp[k], RESP_MAX, "200 OK", date, s->pid, s->slot, k, hello_body);
                s->resp_len[k] = n > 0 ? (size_t) n : 0;
        }
        n = http_format_response(s->bad, RESP_MAX, "400 Bad Request", date, s->pid, s->slot, HTTP_CLOSE, bad_body);
        s->bad_len = n > 0 ? (size_t) n : 0;
}

/* Append the answer to req to c->out; the caller made sure RESP_MAX bytes
 * are free. During a stop every response closes its connection. */
static void conn_queue_hello(Conn *c, const HttpRequest *req) {
        Server *s = c->server;
        HttpConnection k = http_connection_for(req, s->stopping);
        size_t n;

        responses_update(s);
        c->close_after = k == HTTP_CLOSE;
        n = s->resp_len[k];
        if (req->head)
                n -= sizeof(hello_body) - 1;
        memcpy(c->out + c->out_len, s->resp[k], n);
        c->out_len += n;
}

static void conn_queue_bad_request(Conn *c) {
        Server *s = c->server;

        responses_update(s);
        memcpy(c->out + c->out_len, s->bad, s->bad_len);
        c->out_len += s->bad_len;
        c->close_after = true;
}

/* ---- connections ---------------------------------------------------------- */

static void conn_pump(Conn *c);
static void conn_begin_stop(Conn *c);

/* Both handles' close callbacks come here; the last one frees. */
static void conn_unref(Conn *c) {
        Server *s = c->server;

        if (--c->pending_closes > 0)
                return;
        s->n_conns--;
        /* least-conn counts our open connections from these reports; the
         * library drops those of connections it accepted itself. */
        (void) corral_closed(1);
        free(c);
}

static void on_stream_closed(uv_handle_t *h) {
        Conn *c = h->data;

        free(h);
        conn_unref(c);
}

static void on_timer_closed(uv_handle_t *h) {
        conn_unref(h->data);
}

/* Close the connection; idempotent, and safe from any of its callbacks. */
static void conn_close(Conn *c) {
        Server *s = c->server;

        if (c->closing)
                return;
        c->closing = true;
        if (c->prev)
                c->prev->next = c->next;
        else
                s->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        c->pending_closes = 2;
        uv_close((uv_handle_t *) c->stream, on_stream_closed);
        uv_close((uv_handle_t *) &c->timer, on_timer_closed);
}

static void on_conn_timeout(uv_timer_t *t) {
        conn_close(t->data);
}

/* Between requests of a keep-alive connection: answered, nothing read. */
static bool conn_idle(const Conn *c) {
        return c->n_requests > 0 && c->in_len == 0 && c->body_left == 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        Conn *c = h->data;

        (void) suggested;
        if (c->lingering)
                *buf = uv_buf_init(c->in, IN_CAP);      /* read and forget */
        else
                *buf = uv_buf_init(c->in + c->in_len, (unsigned) (IN_CAP - c->in_len));
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
        Conn *c = st->data;

        (void) buf;
        if (nread == 0)
                return;
        if (c->lingering) {
                if (nread < 0)
                        conn_close(c);
                return;
        }
        if (nread == UV_EOF) {
                c->eof = true;
                conn_pump(c);
                return;
        }
        if (nread < 0) {
                /* ECONNRESET and friends: nobody is left to answer. */
                conn_close(c);
                return;
        }
        /* The first byte after a keep-alive pause: the head's time starts. */
        if (conn_idle(c))
                c->since = uv_now(&c->server->loop);
        c->in_len += (size_t) nread;
        conn_pump(c);
}

static void conn_set_reading(Conn *c, bool on) {
        if (on == c->reading)
                return;
        if (on && uv_read_start(c->stream, on_alloc, on_read) < 0) {
                conn_close(c);
                return;
        }
        /* Waiting for the client again (a new connection, or one whose
         * answers are out): its time starts now. */
        if (on)
                c->since = uv_now(&c->server->loop);
        if (!on)
                uv_read_stop(c->stream);
        c->reading = on;
}

static void on_write_done(uv_write_t *req, int status) {
        Conn *c = req->data;

        c->writing = false;
        if (status < 0) {
                /* EPIPE / ECONNRESET, or ECANCELED because we are closing. */
                conn_close(c);
                return;
        }
        c->out_len = 0;
        conn_pump(c);
}

/* Send c->out: uv_try_write(), and uv_write() for what the socket did not
 * take. Returns 0 (sent, or c->writing) or a negative libuv error. */
static int conn_flush(Conn *c) {
        uv_buf_t b = uv_buf_init(c->out, (unsigned) c->out_len);
        int r;

        if (c->out_len == 0)
                return 0;
        r = uv_try_write(c->stream, &b, 1);
        if (r == UV_EAGAIN)
                r = 0;
        if (r < 0)
                return r;
        if ((size_t) r == c->out_len) {
                c->out_len = 0;
                return 0;
        }
        /* out[] stays untouched until on_write_done(). */
        b = uv_buf_init(c->out + r, (unsigned) (c->out_len - (size_t) r));
        c->write_req.data = c;
        r = uv_write(&c->write_req, c->stream, &b, 1, on_write_done);
        if (r < 0)
                return r;
        c->writing = true;
        return 0;
}

/* Make room for one response. Returns 1 if there is room, 0 if a write is
 * now in flight (come back from on_write_done), negative on error. */
static int conn_reserve(Conn *c) {
        int r;

        if (c->out_len + RESP_MAX <= OUT_CAP)
                return 1;
        r = conn_flush(c);
        if (r < 0)
                return r;
        return !c->writing;
}

static void on_delay_done(uv_timer_t *t) {
        Conn *c = t->data;

        c->delayed = false;
        conn_queue_hello(c, &c->pending);       /* room was reserved before */
        conn_pump(c);
}

/* Answer every complete request in c->in, until the input runs out or
 * something must be waited for (a write, a delay, the close). */
static void conn_process(Conn *c) {
        Server *s = c->server;
        size_t off = 0;

        while (!c->delayed && !c->close_after) {
                HttpRequest req;
                size_t avail, hlen;
                int r, room;

                if (c->body_left > 0) {
                        size_t n = c->body_left < c->in_len - off ? (size_t) c->body_left : c->in_len - off;
                        off += n;
                        c->body_left -= n;
                        if (c->body_left > 0)
                                break;
                }
                /* RFC 9112 §2.2: ignore empty lines before a request-line. */
                while (c->in_len - off >= 2 && c->in[off] == '\r' && c->in[off + 1] == '\n')
                        off += 2;
                avail = c->in_len - off;
                if (avail == 0)
                        break;
                hlen = http_head_length(c->in + off, avail);
                if (hlen == 0 && avail < IN_CAP)
                        break;          /* incomplete: wait for more */
                r = hlen > 0 ? http_parse_request(c->in + off, hlen, &req) : -EMSGSIZE;

                /* Room for the answer before consuming the request, so a
                 * full output buffer just pauses us here. */
                room = conn_reserve(c);
                if (room < 0) {
                        conn_close(c);
                        return;
                }
                if (room == 0)
                        break;
                if (r < 0) {
                        conn_queue_bad_request(c);
                        break;
                }

                off += hlen;
                /* A whole head is progress: the next one gets its own time. */
                c->since = uv_now(&s->loop);
                c->body_left = req.content_length;
                s->n_requests++;
                c->n_requests++;
                if (req.has_delay) {
                        c->delayed = true;
                        c->pending = req;
                        uv_timer_start(&c->timer, on_delay_done, req.delay_ms, 0);
                        break;
                }
                conn_queue_hello(c, &req);
        }

        if (off > 0) {
                memmove(c->in, c->in + off, c->in_len - off);
                c->in_len -= off;
        }
}

static void on_shutdown_done(uv_shutdown_t *req, int status) {
        Conn *c = req->data;

        if (c->closing)
                return;
        if (status < 0 || c->eof) {
                conn_close(c);
                return;
        }
        uv_timer_start(&c->timer, on_conn_timeout, LINGER_MS, 0);
        conn_set_reading(c, true);
}

/* The last response is written: half-close and drain (see LINGER_MS), or
 * just close when the peer already finished sending. */
static void conn_linger(Conn *c) {
        if (c->eof) {
                conn_close(c);
                return;
        }
        c->lingering = true;
        conn_set_reading(c, false);
        c->shutdown_req.data = c;
        if (uv_shutdown(&c->shutdown_req, c->stream, on_shutdown_done) < 0)
                conn_close(c);
}

/* The one place that decides what a connection does next; called after
 * every event on it. */
static void conn_pump(Conn *c) {
        if (c->closing || c->lingering)
                return;
        if (!c->writing)
                conn_process(c);
        if (c->closing)
                return;
        if (!c->writing && conn_flush(c) < 0) {
                conn_close(c);
                return;
        }
        if (!c->writing && !c->delayed) {
                if (c->close_after) {
                        conn_linger(c);
                        return;
                }
                /* Half-closed by the peer and everything answered, or
                 * stopping and this connection just became idle. */
                if (c->eof || (c->server->stopping && c->in_len == 0 && c->body_left == 0)) {
                        conn_close(c);
                        return;
                }
        }
        conn_set_reading(c, !c->writing && !c->delayed && !c->close_after && !c->eof);
}

/* Serve an accepted stream (initialised, open; owned by us from here). */
static void conn_start(Server *s, uv_stream_t *stream) {
        Conn *c = malloc(sizeof(*c));

        if (!c) {
                uv_close((uv_handle_t *) stream, corral_uv_free_on_close);
                (void) corral_closed(1);
                return;
        }
        /* The buffers need no zeroing; skip 12 KiB of memset per accept. */
        memset(c, 0, offsetof(Conn, in));
        c->server = s;
        c->stream = stream;
        stream->data = c;
        (void) uv_timer_init(&s->loop, &c->timer);
        c->timer.data = c;
        /* Responses are written whole, so Nagle only adds latency. */
        if (stream->type == UV_TCP)
                (void) uv_tcp_nodelay((uv_tcp_t *) stream, 1);

        c->next = s->conns;
        if (s->conns)
                s->conns->prev = c;
        s->conns = c;
        s->n_conns++;
        s->n_accepted++;
        conn_set_reading(c, true);
        /* Handed off before our stop began, kept by corral_drain(). */
        if (s->stopping && !c->closing)
                conn_begin_stop(c);
}

/* A stop began: close the connection if it is idle, else give it a
 * bounded time; its response will say Connection: close. */
static void conn_begin_stop(Conn *c) {
        uv_os_fd_t fd;
        int pending = 0;

        if (c->closing || c->lingering || c->delayed)
                return;         /* already leaving, or a request in flight */
        /* Only a connection answered before can be idle: a fresh one was
         * just accepted and its first request may still be on the wire. */
        if (c->n_requests > 0 && !c->writing && c->in_len == 0 && c->body_left == 0 &&
            (uv_fileno((uv_handle_t *) c->stream, &fd) < 0 || ioctl(fd, FIONREAD, &pending) == -1 || pending == 0)) {
                conn_close(c);
                return;
        }
        uv_timer_start(&c->timer, on_conn_timeout, STOP_GRACE_MS, 0);
}

/* Close the connections that waited too long for their client: a request
 * head (or the body after it) not complete within header_timeout_ms, or a
 * keep-alive pause longer than idle_timeout_ms. Only connections that read
 * count: one we are answering, delaying or lingering on is ours. O(open
 * connections) per run. */
static void on_sweep(uv_timer_t *t) {
        Server *s = t->data;
        uint64_t now = uv_now(&s->loop);

        for (Conn *c = s->conns, *next; c; c = next) {
                next = c->next;
                if (!c->reading || c->lingering)
                        continue;
                uint64_t limit = conn_idle(c) ? s->idle_timeout_ms : s->header_timeout_ms;
                if (limit > 0 && now - c->since >= limit) {
                        s->n_timed_out++;
                        conn_close(c);
                }
        }
}

static void sweep_start(Server *s) {
        uint64_t shortest = s->header_timeout_ms;
        if (shortest == 0 || (s->idle_timeout_ms > 0 && s->idle_timeout_ms < shortest))
                shortest = s->idle_timeout_ms;
        (void) uv_timer_init(&s->loop, &s->sweep);
        s->sweep.data = s;
        if (shortest == 0)
                return;
        uint64_t every = shortest / 4;
        every = every < SWEEP_MIN_MS ? SWEEP_MIN_MS : every > SWEEP_MAX_MS ? SWEEP_MAX_MS : every;
        uv_timer_start(&s->sweep, on_sweep, every, every);
        /* It never keeps the loop alive by itself. */
        uv_unref((uv_handle_t *) &s->sweep);
}

/* ---- taking connections, in any balance mode ------------------------------ */

/* A connection from the take: wrap it in a libuv stream and serve it. */
static void on_connection_fd(CorralUvTake *t, int fd, unsigned listener) {
        uv_stream_t *stream;

        (void) listener;
        if (corral_uv_stream_open(t->loop, fd, &stream) < 0) {
                close(fd);
                (void) corral_closed(1);
                return;
        }
        conn_start(t->data, stream);
}

/* The take dealt with the error; we only log it. */
static void on_take_error(CorralUvTake *t, int error, int fd) {
        (void) t;
        switch (error) {
        case -EMFILE:
        case -ENFILE:
        case -ENOBUFS:
        case -ENOMEM:
                log_msg(LOG_WARNING, "accept: %s; pausing %d ms", strerror(-error), CORRAL_UV_TAKE_PAUSE_MS);
                break;
        case -ECONNRESET:
                break;          /* the master is gone: we end with our last connection */
        default:
                if (fd >= 0)
                        log_msg(LOG_ERR, "Polling fd %d failed, no longer serving it: %s", fd, strerror(-error));
                else
                        log_msg(LOG_ERR, "Taking a connection failed, no longer serving that socket: %s",
                                strerror(-error));
                break;
        }
}

static void on_message(const CorralMessage *msg, void *userdata) {
        CorralPeer from;
        int len = (int) (msg->data_len < 400 ? msg->data_len : 400);

        (void) userdata;
        if (corral_message_from(msg, &from) < 0)
                return;
        if (from.kind == CORRAL_PEER_CTL)
                log_msg(LOG_INFO, "message from corralctl: %.*s", len, msg->data);
        else
                log_msg(LOG_INFO, "message from worker %u: %.*s", from.slot, len, msg->data);
}

/* Close the sockets --listen bound (our copies) and unlink their paths. */
static void bound_release(Server *s) {
        for (size_t i = 0; i < s->n_bound; i++) {
                Bound *b = &s->bound[i];
                if (b->fd >= 0)
                        close(b->fd);
                b->fd = -1;
                if (b->unlink_path) {
                        (void) unlink(b->unlink_path);
                        free(b->unlink_path);
                        b->unlink_path = NULL;
                }
        }
}

/* ---- lifecycle ------------------------------------------------------------- */

static void on_stop_signal(uv_signal_t *h, int signum) {
        Server *s = h->data;

        if (s->stopping) {
                log_msg(LOG_NOTICE, "%s again, closing %zu connections", strsignal(signum), s->n_conns);
                for (Conn *c = s->conns, *next; c; c = next) {
                        next = c->next;
                        conn_close(c);
                }
                return;
        }
        s->stopping = true;
        log_msg(LOG_INFO, "%s: stopping, %zu connections open", strsignal(signum), s->n_conns);
        /* STOPPING=1, nothing new taken, the hand-offs already sent kept
         * and served from here. */
        (void) corral_uv_take_drain(&s->take);
        bound_release(s);
        for (Conn *c = s->conns, *next; c; c = next) {
                next = c->next;
                conn_begin_stop(c);
        }
        /* From here the loop ends with the last connection: the signal
         * and watchdog handles are unreferenced. */
}

static void on_watchdog(uv_timer_t *t) {
        (void) t;
        (void) corral_watchdog();
}

/* ---- setup ----------------------------------------------------------------- */

/* Bind one --listen address (SPEC §2 syntax, as corrald parses it). */
static int listen_bind(Server *s, const char *spec) {
        ListenAddr a;
        const char *reason;
        int fd, one = 1;
        bool is_unix;

        if (listen_addr_parse(spec, &a, &reason) < 0) {
                log_msg(LOG_ERR, "--listen %s: %s", spec, reason);
                return -EINVAL;
        }
        is_unix = a.addr.ss_family == AF_UNIX;
        fd = socket(a.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1) {
                log_msg(LOG_ERR, "socket() for %s: %m", a.display);
                return -errno;
        }
        if (!is_unix)
                (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (a.addr.ss_family == AF_INET6)
                (void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *) &a.addr, a.addrlen) == -1 || listen(fd, SOMAXCONN) == -1) {
                int r = -errno;
                log_msg(LOG_ERR, "Cannot listen on %s: %m", a.display);
                close(fd);
                return r;
        }
        Bound *n = realloc(s->bound, (s->n_bound + 1) * sizeof(*n));
        if (!n) {
                close(fd);
                return -ENOMEM;
        }
        s->bound = n;
        n[s->n_bound++] = (Bound) { fd, is_unix ? strdup(((struct sockaddr_un *) &a.addr)->sun_path) : NULL };
        int r = corral_add_listener(fd);
        if (r < 0) {
                log_msg(LOG_ERR, "Cannot serve %s: %s", a.display, strerror(-r));
                return r;
        }
        return 0;
}

static void on_walk_close(uv_handle_t *h, void *arg) {
        (void) arg;
        if (!uv_is_closing(h))
                uv_close(h, NULL);
}

/* A number of seconds (fractions allowed) as milliseconds. */
static int parse_seconds(const char *arg, uint64_t *ret_ms) {
        char *end;
        errno = 0;
        double v = strtod(arg, &end);
        if (errno != 0 || end == arg || *end || !(v >= 0) || v > 86400)
                return -EINVAL;
        *ret_ms = (uint64_t) (v * 1000 + 0.5);
        return 0;
}

static void help(void) {
        printf("Usage: corral-hello [OPTION]...\n"
               "\n"
               "Example corral worker: an HTTP/1.1 keep-alive server answering every\n"
               "request with \"Hello World\" and the X-Worker-Pid and X-Worker (slot)\n"
               "headers. GET /delay/MS answers after MS milliseconds.\n"
               "\n"
               "Serves the sockets passed by systemd or corrald (LISTEN_FDS) and the\n"
               "connections corrald hands off over CORRAL_IPC_FD; without those, binds\n"
               "ADDRESS.\n"
               "\n"
               "  -l, --listen ADDRESS  HOST:PORT, [V6]:PORT, PORT or unix:/path\n"
               "                        (repeatable; only without LISTEN_FDS)\n"
               "      --header-timeout SECONDS\n"
               "                        close a connection whose request head (and body)\n"
               "                        is not complete this long after it began (default\n"
               "                        %g; 0: never)\n"
               "      --idle-timeout SECONDS\n"
               "                        close a keep-alive connection idle this long\n"
               "                        between requests (default %g; 0: never)\n"
               "  -h, --help            show this help\n"
               "      --version         show the version\n"
               "\n"
               "Environment: CORRAL_HELLO_STATS=1 prints connection and request\n"
               "counts on exit.\n",
               HEADER_TIMEOUT_MS / 1000.0, IDLE_TIMEOUT_MS / 1000.0);
}

int main(int argc, char *argv[]) {
        enum { ARG_VERSION = 0x100, ARG_HEADER_TIMEOUT, ARG_IDLE_TIMEOUT };
        static const struct option options[] = {
                { "listen",  required_argument, NULL, 'l' },
                { "header-timeout", required_argument, NULL, ARG_HEADER_TIMEOUT },
                { "idle-timeout", required_argument, NULL, ARG_IDLE_TIMEOUT },
                { "help",    no_argument,       NULL, 'h' },
                { "version", no_argument,       NULL, ARG_VERSION },
                {}
        };
        static Server server;
        Server *s = &server;
        uint64_t watchdog_usec = corral_watchdog_usec();
        int opt, r, n_inherited, n_listeners, ret = EXIT_FAILURE;
        bool channel;

        s->pid = getpid();
        s->slot = corral_worker_id();
        s->header_timeout_ms = HEADER_TIMEOUT_MS;
        s->idle_timeout_ms = IDLE_TIMEOUT_MS;
        if (uv_loop_init(&s->loop) < 0)
                return EXIT_FAILURE;
        log_init();
        /* libuv writes with write(2): a peer that resets must give us
         * EPIPE, not kill us. */
        signal(SIGPIPE, SIG_IGN);

        while ((opt = getopt_long(argc, argv, "l:h", options, NULL)) >= 0)
                switch (opt) {
                case 'l':
                        break;          /* bound below, unless LISTEN_FDS came */
                case 'h':
                        help();
                        ret = EXIT_SUCCESS;
                        goto out;
                case ARG_HEADER_TIMEOUT:
                case ARG_IDLE_TIMEOUT:
                        if (parse_seconds(optarg, opt == ARG_HEADER_TIMEOUT ? &s->header_timeout_ms
                                                                           : &s->idle_timeout_ms) < 0) {
                                log_msg(LOG_ERR, "--%s: expected seconds (0 to 86400), got '%s'",
                                        opt == ARG_HEADER_TIMEOUT ? "header-timeout" : "idle-timeout", optarg);
                                goto out;
                        }
                        break;
                case ARG_VERSION:
                        printf("corral-hello %s\n", CORRAL_VERSION);
                        ret = EXIT_SUCCESS;
                        goto out;
                default:
                        goto out;
                }
        if (optind < argc) {
                log_msg(LOG_ERR, "unexpected argument '%s'; see --help", argv[optind]);
                goto out;
        }
        /* LISTEN_FDS (shared balance), checked by the library. */
        n_inherited = corral_listen_fds(NULL);
        if (n_inherited < 0) {
                log_msg(LOG_ERR, "Invalid LISTEN_FDS/LISTEN_PID: %s", strerror(-n_inherited));
                goto out;
        }
        /* Second pass over the options (optind = 0 restarts getopt): only
         * --listen is left. */
        for (optind = 0; (opt = getopt_long(argc, argv, "l:h", options, NULL)) >= 0;)
                if (opt != 'l')
                        continue;
                else if (n_inherited > 0)
                        log_msg(LOG_WARNING, "Sockets were passed in LISTEN_FDS; ignoring --listen %s", optarg);
                else if (listen_bind(s, optarg) < 0)
                        goto out;

        r = corral_ipc_fd();
        if (r < 0 && r != -ENOENT)
                log_msg(LOG_WARNING, "Cannot read CORRAL_IPC_FD: %s", strerror(-r));
        channel = r >= 0;
        corral_set_message_handler(on_message, s);

        /* Watch the master's channel (hand-offs and messages) and the
         * listeners, whichever there are. */
        s->take.data = s;
        r = corral_uv_take_start(&s->take, &s->loop, on_connection_fd, on_take_error);
        if (r == -ENOENT) {
                log_msg(LOG_ERR, "Nothing to serve: no LISTEN_FDS, no CORRAL_IPC_FD, no --listen; see --help");
                goto out;
        }
        if (r < 0) {
                log_msg(LOG_ERR, "Cannot set up the listening sockets: %s", strerror(-r));
                goto out;
        }
        n_listeners = corral_poll_fds(NULL, 0) - channel;
        sweep_start(s);

        /* These never keep the loop alive by themselves: it runs as long
         * as the take watches something or connections are open. */
        (void) uv_signal_init(&s->loop, &s->sigterm);
        (void) uv_signal_init(&s->loop, &s->sigint);
        s->sigterm.data = s->sigint.data = s;
        (void) uv_signal_start(&s->sigterm, on_stop_signal, SIGTERM);
        (void) uv_signal_start(&s->sigint, on_stop_signal, SIGINT);
        uv_unref((uv_handle_t *) &s->sigterm);
        uv_unref((uv_handle_t *) &s->sigint);
        (void) uv_timer_init(&s->loop, &s->watchdog);
        if (watchdog_usec > 0) {
                uint64_t ms = watchdog_usec / 2 / 1000 > 0 ? watchdog_usec / 2 / 1000 : 1;
                uv_timer_start(&s->watchdog, on_watchdog, ms, ms);
                uv_unref((uv_handle_t *) &s->watchdog);
        }

        (void) corral_ready();
        if (n_listeners > 0)
                (void) corral_status("serving on %d listener%s", n_listeners, n_listeners == 1 ? "" : "s");
        else
                (void) corral_status("serving connections handed off by corrald");

        uv_run(&s->loop, UV_RUN_DEFAULT);

        if (s->stopping)
                ret = EXIT_SUCCESS;
        else    /* every listener failed, or the master closed the channel */
                log_msg(LOG_ERR, "Nothing left to serve (no listener, no CORRAL_IPC_FD), exiting");
        if (getenv("CORRAL_HELLO_STATS"))
                log_msg(LOG_INFO,
                        "stats: pid %d accepted %" PRIu64 " connections, served %" PRIu64 " requests, "
                        "closed %" PRIu64 " that timed out",
                        (int) s->pid, s->n_accepted, s->n_requests, s->n_timed_out);

out:
        /* Release everything, so that valgrind and ASan see no leak. */
        for (Conn *c = s->conns, *next; c; c = next) {
                next = c->next;
                conn_close(c);
        }
        corral_uv_take_stop(&s->take, NULL);
        bound_release(s);
        uv_walk(&s->loop, on_walk_close, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        if ((r = uv_loop_close(&s->loop)) < 0)
                log_msg(LOG_WARNING, "uv_loop_close: %s", uv_strerror(r));
        free(s->bound);
        return ret;
}
