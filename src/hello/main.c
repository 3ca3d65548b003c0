/* corral-hello: the example corral worker, an HTTP/1.1 keep-alive hello
 * world on libuv and libcorral. Copy it: everything a worker needs is here,
 * and nothing else.
 *
 * Where connections come from (SPEC §5), decided by what the master gave:
 *   - "shared" balance: listening sockets in LISTEN_FDS (corral_listen_fds(),
 *     exactly as systemd socket activation passes them). Every worker polls
 *     the same sockets and accepts ONE connection per wakeup, then yields
 *     the CPU and goes back to the loop, so that a busy worker does not
 *     drain the whole backlog while its siblings wait (see
 *     on_listener_readable() and bench/fairness.sh).
 *   - "round-robin" / "least-conn": no LISTEN_FDS, but CORRAL_IPC_FD; the
 *     master accepts and hands each connection over that channel, which
 *     <corral-uv.h> turns into accepted libuv handles. Every such connection
 *     is reported with corral_closed() when it ends, so least-conn knows our
 *     load. Messages from the master or other workers arrive on the same
 *     channel, in both modes, and are logged.
 *   - neither (run by hand): --listen ADDRESS binds its own sockets.
 *
 * Lifecycle: READY=1 and STATUS= once serving, WATCHDOG=1 at half of
 * WATCHDOG_USEC, and on SIGTERM/SIGINT STOPPING=1 then a graceful stop:
 * stop accepting, close idle keep-alive connections, let requests in flight
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
#include <sched.h>
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
#include <corral.h>
#include <systemd/sd-daemon.h>
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
/* On EMFILE and friends, stop accepting for a moment instead of spinning on
 * a level-triggered listener we cannot drain. */
#define ACCEPT_PAUSE_MS 100
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

typedef struct Listener {
        uv_poll_t poll;
        Server *server;
        int fd;
        bool is_unix;
        bool polling;           /* poll handle initialised and not closed */
        char *unlink_path;      /* a unix socket we bound ourselves */
} Listener;

typedef struct Conn {
        uv_stream_t *stream;    /* a malloc'ed uv_tcp_t or uv_pipe_t */
        uv_timer_t timer;       /* /delay/<ms>, the stop grace period, lingering */
        uv_write_t write_req;
        uv_shutdown_t shutdown_req;
        Server *server;
        struct Conn *prev, *next;
        unsigned pending_closes;

        bool handed_off;        /* came from the master: report its close */
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
        Listener *listeners;
        size_t n_listeners;
        CorralUv channel;       /* CORRAL_IPC_FD: hand-offs and messages */
        bool channel_open, channel_reading;
        uv_check_t drain;       /* during a stop: until the channel is read empty */
        uv_signal_t sigterm, sigint;
        uv_timer_t watchdog, accept_pause;
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
        /* least-conn counts our open connections from these reports. */
        if (c->handed_off)
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
static void conn_start(Server *s, uv_stream_t *stream, bool handed_off) {
        Conn *c = malloc(sizeof(*c));

        if (!c) {
                uv_close((uv_handle_t *) stream, corral_uv_free_on_close);
                if (handed_off)
                        (void) corral_closed(1);
                return;
        }
        /* The buffers need no zeroing; skip 12 KiB of memset per accept. */
        memset(c, 0, offsetof(Conn, in));
        c->server = s;
        c->stream = stream;
        c->handed_off = handed_off;
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
        /* Handed off before our stop began, read from the channel after. */
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

/* ---- shared balance: accepting from listening sockets ------------------- */

static void on_listener_readable(uv_poll_t *p, int status, int events);

static void listener_release(Listener *l) {
        /* Our copy only: the socket stays open in the other workers. */
        close(l->fd);
        l->fd = -1;
        if (l->unlink_path)
                (void) unlink(l->unlink_path);
}

static void on_listener_closed(uv_handle_t *h) {
        listener_release(h->data);
}

static void listener_close(Listener *l) {
        if (!l->polling)
                return;
        l->polling = false;
        uv_close((uv_handle_t *) &l->poll, on_listener_closed);
}

static void listeners_poll(Server *s, bool on) {
        for (size_t i = 0; i < s->n_listeners; i++)
                if (s->listeners[i].polling) {
                        if (on)
                                (void) uv_poll_start(&s->listeners[i].poll, UV_READABLE, on_listener_readable);
                        else
                                (void) uv_poll_stop(&s->listeners[i].poll);
                }
}

static void on_accept_resume(uv_timer_t *t) {
        Server *s = t->data;

        if (!s->stopping)
                listeners_poll(s, true);
}

/* Wrap an accepted fd in a libuv stream and serve it; closes it on failure. */
static void serve_fd(Server *s, int fd, bool is_unix) {
        uv_stream_t *stream;
        int r;

        if (is_unix) {
                uv_pipe_t *p = malloc(sizeof(*p));
                r = p ? uv_pipe_init(&s->loop, p, 0) : UV_ENOMEM;
                if (r >= 0 && (r = uv_pipe_open(p, fd)) < 0)
                        uv_close((uv_handle_t *) p, corral_uv_free_on_close);
                else if (r < 0)
                        free(p);
                stream = (uv_stream_t *) p;
        } else {
                uv_tcp_t *t = malloc(sizeof(*t));
                r = t ? uv_tcp_init(&s->loop, t) : UV_ENOMEM;
                if (r >= 0 && (r = uv_tcp_open(t, fd)) < 0)
                        uv_close((uv_handle_t *) t, corral_uv_free_on_close);
                else if (r < 0)
                        free(t);
                stream = (uv_stream_t *) t;
        }
        if (r < 0) {
                close(fd);
                return;
        }
        conn_start(s, stream, false);
}

static void on_listener_readable(uv_poll_t *p, int status, int events) {
        Listener *l = p->data;
        Server *s = l->server;
        int fd;

        (void) events;
        if (status < 0) {
                log_msg(LOG_ERR, "Polling a listener failed, no longer serving it: %s", uv_strerror(status));
                listener_close(l);
                return;
        }
        /* Fairness in shared balance, two rules any worker can copy: one
         * accept per wakeup (back to the loop, where a sibling woken by the
         * same connections gets its chance at the next one), then give up
         * the CPU, so that a sibling that was woken but waits for a CPU
         * runs now rather than after we took the whole burst.
         * bench/fairness.sh, 2 workers, wrk -c50 keep-alive, on a busy
         * 2-CPU machine: busiest/idlest worker median 1.87 over 11 runs
         * with the first rule alone, 1.17 over 25 with both; it costs
         * about 20% of the connection-per-request rate there. For an exact
         * split, use round-robin or least-conn. */
        fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
                serve_fd(s, fd, l->is_unix);
                (void) sched_yield();
                return;
        }
        switch (errno) {
        case EAGAIN:            /* a sibling took it */
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
                return;
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
                /* The connection stays queued, and the level-triggered
                 * poll would spin: pause, and leave it to a sibling. */
                log_msg(LOG_WARNING, "accept: %m; pausing %d ms", ACCEPT_PAUSE_MS);
                listeners_poll(s, false);
                uv_timer_start(&s->accept_pause, on_accept_resume, ACCEPT_PAUSE_MS, 0);
                return;
        default:
                log_msg(LOG_ERR, "accept failed, no longer serving this listener: %m");
                listener_close(l);
                return;
        }
}

/* ---- round-robin / least-conn: the master's channel ---------------------- */

static void on_handoff(CorralUv *cu, uv_stream_t *client, unsigned listener_index) {
        (void) listener_index;
        conn_start(cu->data, client, true);
}

static void on_message(CorralUv *cu, const CorralMessage *msg) {
        (void) cu;
        if (msg->from == CORRAL_CTL)
                log_msg(LOG_INFO, "message from corralctl: %.*s", (int) (msg->data_len < 400 ? msg->data_len : 400), msg->data);
        else
                log_msg(LOG_INFO, "message from worker %d: %.*s", msg->from, (int) (msg->data_len < 400 ? msg->data_len : 400),
                        msg->data);
}

/* Stop taking hand-offs, but keep the socket open: close reports of the
 * connections still being served go out on it until we exit. */
static void channel_stop_reading(Server *s) {
        if (!s->channel_reading)
                return;
        s->channel_reading = false;
        uv_check_stop(&s->drain);
        uv_read_stop((uv_stream_t *) &s->channel.pipe);
}

/* Bytes the master wrote that we have not read yet. */
static int channel_unread(Server *s) {
        int n = 0;
        uv_os_fd_t fd;

        if (uv_fileno((uv_handle_t *) &s->channel.pipe, &fd) < 0 || ioctl(fd, FIONREAD, &n) == -1)
                return 0;
        return n;
}

/* During a stop: the master hands no connection to a stopping worker, but
 * those it handed off before our SIGTERM may still sit unread in the
 * channel. Keep reading until it is empty, then close it. */
static void on_drain_check(uv_check_t *h) {
        Server *s = h->data;

        if (s->channel.status < 0 || channel_unread(s) == 0)
                channel_stop_reading(s);
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
                channel_stop_reading(s);
                return;
        }
        s->stopping = true;
        (void) corral_stopping();
        log_msg(LOG_INFO, "%s: stopping, %zu connections open", strsignal(signum), s->n_conns);
        uv_timer_stop(&s->accept_pause);
        for (size_t i = 0; i < s->n_listeners; i++)
                listener_close(&s->listeners[i]);
        if (s->channel_reading) {
                uv_check_start(&s->drain, on_drain_check);
                on_drain_check(&s->drain);
        }
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

static int listeners_add(Server *s, int fd, bool is_unix, const char *unlink_path) {
        Listener *n = realloc(s->listeners, (s->n_listeners + 1) * sizeof(*n));

        if (!n)
                return -ENOMEM;
        s->listeners = n;
        n[s->n_listeners++] = (Listener) { .server = s, .fd = fd, .is_unix = is_unix,
                                           .unlink_path = unlink_path ? strdup(unlink_path) : NULL };
        return 0;
}

/* Take the sockets passed in LISTEN_FDS. Returns how many, or -errno. */
static int listeners_inherit(Server *s) {
        int n = corral_listen_fds(NULL);

        if (n < 0) {
                log_msg(LOG_ERR, "Invalid LISTEN_FDS/LISTEN_PID: %s", strerror(-n));
                return n;
        }
        for (int fd = CORRAL_LISTEN_FDS_START; fd < CORRAL_LISTEN_FDS_START + n; fd++) {
                int domain = 0, fl;
                socklen_t len = sizeof(domain);

                if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
                        log_msg(LOG_WARNING, "fd %d is not a listening stream socket, ignoring it", fd);
                        continue;
                }
                /* O_NONBLOCK is shared with every worker, which all need
                 * it: a sibling may take the connection between our wakeup
                 * and our accept. No listen(): it would reset the backlog. */
                if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == -1 ||
                    (fl = fcntl(fd, F_GETFL)) == -1 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1) {
                        log_msg(LOG_ERR, "Setting up listening fd %d: %m", fd);
                        return -errno;
                }
                if (listeners_add(s, fd, domain == AF_UNIX, NULL) < 0)
                        return -ENOMEM;
        }
        return n;
}

/* Bind one --listen address (SPEC §2 syntax, as corrald parses it). */
static int listeners_bind(Server *s, const char *spec) {
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
        if (listeners_add(s, fd, is_unix, is_unix ? ((struct sockaddr_un *) &a.addr)->sun_path : NULL) < 0) {
                close(fd);
                return -ENOMEM;
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
        uint64_t watchdog_usec = 0;
        int opt, r, n_inherited, ret = EXIT_FAILURE;

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
        n_inherited = listeners_inherit(s);
        if (n_inherited < 0)
                goto out;
        /* Second pass over the options (optind = 0 restarts getopt): only
         * --listen is left. */
        for (optind = 0; (opt = getopt_long(argc, argv, "l:h", options, NULL)) >= 0;)
                if (opt != 'l')
                        continue;
                else if (n_inherited > 0)
                        log_msg(LOG_WARNING, "Sockets were passed in LISTEN_FDS; ignoring --listen %s", optarg);
                else if (listeners_bind(s, optarg) < 0)
                        goto out;

        /* The master's channel, when there is one: hand-offs (round-robin,
         * least-conn) and messages (any balance). */
        r = corral_uv_start(&s->channel, &s->loop, on_handoff, on_message);
        if (r >= 0) {
                s->channel.data = s;
                s->channel_open = s->channel_reading = true;
                (void) uv_check_init(&s->loop, &s->drain);
                s->drain.data = s;
        } else if (r != -ENOENT)
                log_msg(LOG_WARNING, "Cannot read CORRAL_IPC_FD: %s", strerror(-r));
        if (s->n_listeners == 0 && !s->channel_open) {
                log_msg(LOG_ERR, "Nothing to serve: no LISTEN_FDS, no CORRAL_IPC_FD, no --listen; see --help");
                goto out;
        }

        for (size_t i = 0; i < s->n_listeners; i++) {
                Listener *l = &s->listeners[i];

                if ((r = uv_poll_init(&s->loop, &l->poll, l->fd)) < 0) {
                        log_msg(LOG_ERR, "Cannot poll listening fd %d: %s", l->fd, uv_strerror(r));
                        goto out;
                }
                l->poll.data = l;
                l->polling = true;
        }
        listeners_poll(s, true);
        (void) uv_timer_init(&s->loop, &s->accept_pause);
        s->accept_pause.data = s;
        sweep_start(s);

        /* These never keep the loop alive by themselves: it runs as long
         * as listeners, the channel or connections do. */
        (void) uv_signal_init(&s->loop, &s->sigterm);
        (void) uv_signal_init(&s->loop, &s->sigint);
        s->sigterm.data = s->sigint.data = s;
        (void) uv_signal_start(&s->sigterm, on_stop_signal, SIGTERM);
        (void) uv_signal_start(&s->sigint, on_stop_signal, SIGINT);
        uv_unref((uv_handle_t *) &s->sigterm);
        uv_unref((uv_handle_t *) &s->sigint);
        (void) uv_timer_init(&s->loop, &s->watchdog);
        if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0) {
                uint64_t ms = watchdog_usec / 2 / 1000 > 0 ? watchdog_usec / 2 / 1000 : 1;
                uv_timer_start(&s->watchdog, on_watchdog, ms, ms);
                uv_unref((uv_handle_t *) &s->watchdog);
        }

        (void) corral_ready();
        if (s->n_listeners > 0)
                (void) corral_status("serving on %zu listener%s", s->n_listeners, s->n_listeners == 1 ? "" : "s");
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
        for (size_t i = 0; i < s->n_listeners; i++) {
                Listener *l = &s->listeners[i];
                if (l->polling)
                        listener_close(l);
                else if (l->fd >= 0)
                        listener_release(l);
        }
        if (s->channel_open)
                corral_uv_stop(&s->channel, NULL);
        uv_walk(&s->loop, on_walk_close, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        if ((r = uv_loop_close(&s->loop)) < 0)
                log_msg(LOG_WARNING, "uv_loop_close: %s", uv_strerror(r));
        for (size_t i = 0; i < s->n_listeners; i++)
                free(s->listeners[i].unlink_path);
        free(s->listeners);
        return ret;
}
