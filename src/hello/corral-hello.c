/* corral-hello: the example worker, a libuv HTTP/1.1 keep-alive hello world.
 *
 * It owns nothing but its own process: the listening sockets it serves come
 * from its parent exactly as from systemd socket activation (LISTEN_FDS,
 * fds 3..), or, when LISTEN_FDS is absent, from --listen. When corrald
 * balances in round-robin / least-conn mode, connections arrive instead as
 * SCM_RIGHTS fds over CORRAL_IPC_FD (SPEC §5), which libuv reads as an IPC
 * pipe. It reports READY=1 and WATCHDOG=1 with sd_notify().
 *
 * Fair accepting (SPEC §5, "shared" balance): every worker polls the same
 * listening socket. A worker that accepts until EAGAIN (what uv_listen does)
 * drains the whole backlog on each wakeup, so the first worker to run gets
 * nearly every connection of a burst. We poll the listener ourselves and
 * accept ONE connection per wakeup, then go back to the loop (epoll is
 * level-triggered, so we are woken again while connections are queued).
 * That alone is not enough when CPUs are busy: a sibling that was woken but
 * is waiting for a CPU cannot race, and the running worker takes its share
 * (measured on 2 CPUs under wrk -c50: 50/1 split in bad runs). So siblings
 * also publish their open-connection counts in a shared table (peers.h),
 * and a worker holding more than the least loaded sibling + BALANCE_SLACK
 * leaves the connection queued for a short while. bench/fairness.sh
 * measures both (CORRAL_HELLO_PEERS=0 turns the table off).
 *
 * Per connection: one malloc'ed Conn holding the stream handle, a timer
 * (used for /delay/<ms>, the stop grace period and the lingering close), and
 * fixed input and output buffers. Requests are parsed in place; responses
 * are copied from templates rebuilt once per second (the Date header), so
 * serving a request allocates nothing. Output is sent with uv_try_write and
 * falls back to uv_write only when the socket is full; while a write is in
 * flight nothing else is parsed, which keeps responses in request order and
 * bounds memory against a client that pipelines without reading.
 *
 * Graceful stop on SIGTERM/SIGINT: stop polling and close our copies of the
 * listeners (other workers still own theirs), close idle keep-alive
 * connections, let requests in flight finish with "Connection: close", and
 * return from main once the last connection is gone. Every wait during the
 * stop has a deadline, so a silent client cannot keep us alive. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

/* Our headers first: macros.h defines MIN/MAX without a guard, and
 * <uv.h> pulls in <sys/param.h>, whose (equivalent) definitions may then
 * replace ours silently, being a system header. */
#include "fd-util.h"
#include "listen-addr.h"
#include "macros.h"
#include "peers.h"
#include "util.h"

#include <systemd/sd-daemon.h>
#include <uv.h>

#ifndef CORRAL_VERSION
#define CORRAL_VERSION "0.1.0"
#endif

/* The input buffer is also the limit on a request's line plus headers. */
#define IN_CAP 8192
/* Room for ~25 pipelined responses before we must flush. */
#define OUT_CAP 4096
/* Every response we send fits in this. */
#define RESP_MAX 256
#define DELAY_MAX_MS 3600000ULL
/* After a final response we shut down our side and wait this long for the
 * client's FIN, so unread request bytes do not turn our close into an RST
 * that could destroy the response in flight (RFC 9112 §9.6). */
#define LINGER_MS 1000
/* During a stop, how long a connection that has a request arriving (or
 * responses stuck in its socket) may take before we close it. */
#define STOP_GRACE_MS 3000
/* On EMFILE and friends, stop accepting for a moment instead of spinning on
 * a level-triggered listener we cannot drain. */
#define ACCEPT_PAUSE_USEC (100 * USEC_PER_MSEC)
/* Balancing with siblings (peers.h): we leave a connection to a sibling
 * when we hold more than BALANCE_SLACK connections above the least loaded
 * one, looking again after BALANCE_DEFER_USEC; but never for longer than
 * BALANCE_DEFER_MAX_MS in a row, so a sibling that is starved of CPU or
 * hung delays connections a little and never strands them. The look-again
 * interval is below libuv's 1 ms timer resolution on purpose: with 1 ms,
 * connection-per-request load lost about 40% of its rate to deferrals;
 * with 200 us (a timerfd) it is as fast as not balancing at all. */
#define BALANCE_SLACK 1
#define BALANCE_DEFER_USEC 200ULL
#define BALANCE_DEFER_MAX_MS 10

static const char hello_body[] = "Hello World\n";
static const char bad_body[] = "Bad Request\n";

/* Which Connection header a 200 carries. */
typedef enum RespKind {
        RESP_KEEP,      /* HTTP/1.1 persistent: no header needed */
        RESP_KEEP_10,   /* HTTP/1.0 client that asked for keep-alive */
        RESP_CLOSE,
        _RESP_MAX,
} RespKind;

/* What we need to know about one parsed request. */
typedef struct Request {
        bool keep_alive;
        bool http10;
        bool head;
        bool has_delay;
        uint64_t delay_ms;
        uint64_t content_length;
} Request;

typedef struct Server Server;

typedef struct Listener {
        uv_poll_t poll;
        Server *server;
        int fd;
        bool is_unix;
        bool active;            /* poll handle initialised and not closed */
        char *unlink_path;      /* a unix socket we bound ourselves */
        char display[128];
} Listener;

typedef struct Conn {
        union {
                uv_handle_t handle;
                uv_stream_t stream;
                uv_tcp_t tcp;
                uv_pipe_t pipe;
        } io;
        uv_timer_t timer;
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

        Request pending;        /* the /delay/<ms> request being delayed */
        uint64_t body_left;     /* request body bytes still to skip */
        size_t in_len;
        size_t scan_from;       /* where the search for \r\n\r\n resumes */
        size_t out_len;
        char in[IN_CAP];
        char out[OUT_CAP];
} Conn;

struct Server {
        uv_loop_t loop;
        Listener *listeners;
        size_t n_listeners;
        uv_pipe_t ipc;          /* CORRAL_IPC_FD, for handed-off connections */
        bool ipc_open;
        uv_signal_t sigterm, sigint;
        uv_timer_t watchdog, heartbeat;
        int pause_fd;           /* timerfd: accepting resumes when it fires */
        uv_poll_t pause_poll;   /* active only while accepting is paused */
        Peers *peers;           /* NULL: we balance by wakeups alone */
        bool deferring;         /* leaving connections to siblings since... */
        uint64_t defer_since, defer_last;       /* ...these loop times (ms) */
        Conn *conns;            /* list of connections not yet closing */
        size_t n_conns;         /* allocated, including closing ones */
        bool stopping;
        pid_t pid;

        uint64_t n_accepted, n_requests;

        time_t resp_time;
        char resp[_RESP_MAX][RESP_MAX];
        size_t resp_len[_RESP_MAX];
        char bad[RESP_MAX];
        size_t bad_len;
        char ipc_buf[256];
};

/* Logging: one line on stderr, with the sd-daemon(3) "<N>" priority prefix
 * when stderr is a journal stream (JOURNAL_STREAM names it) or when
 * corrald runs us, which honours the prefix on worker output (SPEC §8). */
static bool log_prefix;

static void log_init(void) {
        const char *e = getenv("JOURNAL_STREAM");
        struct stat st;
        unsigned long dev, ino;

        if (getenv("CORRAL_INSTANCE")) {
                log_prefix = true;
                return;
        }
        if (e && sscanf(e, "%lu:%lu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0)
                log_prefix = st.st_dev == (dev_t) dev && st.st_ino == (ino_t) ino;
}

_printf_(2, 3) static void log_msg(int prio, const char *fmt, ...) {
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

/* ---- HTTP parsing (pure) ------------------------------------------------ */

/* RFC 9110 §5.6.2 token characters. */
static bool is_tchar(unsigned char c) {
        if (c >= '0' && c <= '9')
                return true;
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
                return true;
        return c && strchr("!#$%&'*+-.^_`|~", c);
}

static bool token_eq(const char *p, size_t n, const char *lit) {
        return strlen(lit) == n && strncasecmp(p, lit, n) == 0;
}

/* Parse "/delay/<ms>" (optionally followed by a query). Returns true and
 * the (clamped) delay when the target names one. */
static bool parse_delay(const char *t, size_t n, uint64_t *ret_ms) {
        static const char prefix[] = "/delay/";
        const size_t plen = sizeof(prefix) - 1;
        uint64_t ms = 0;
        size_t i;

        if (n <= plen || memcmp(t, prefix, plen) != 0)
                return false;
        for (i = plen; i < n && t[i] >= '0' && t[i] <= '9'; i++)
                if (ms <= DELAY_MAX_MS)
                        ms = ms * 10 + (uint64_t) (t[i] - '0');
        if (i == plen || (i < n && t[i] != '?'))
                return false;
        *ret_ms = MIN(ms, DELAY_MAX_MS);
        return true;
}

/* Walk the comma-separated Connection options (RFC 9110 §7.6.1). */
static void parse_connection(const char *v, size_t n, bool *close, bool *keep_alive) {
        size_t i = 0;

        while (i < n) {
                size_t start, end;

                while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
                        i++;
                start = i;
                while (i < n && v[i] != ',')
                        i++;
                end = i;
                while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
                        end--;
                if (token_eq(v + start, end - start, "close"))
                        *close = true;
                else if (token_eq(v + start, end - start, "keep-alive"))
                        *keep_alive = true;
        }
}

/* Parse one request head: p[0..n) is the request line and header fields,
 * ending in the empty line ("\r\n\r\n"). Returns 0 and fills *ret, or
 * -EBADMSG when the head is malformed (answer 400 and close). */
static int parse_request(const char *p, size_t n, Request *ret) {
        const char *end = p + n - 2;    /* the final empty line */
        const char *line_end, *sp, *target;
        bool opt_close = false, opt_keep_alive = false, have_cl = false;
        bool chunked = false;
        Request r = {};

        /* Request line: method SP request-target SP HTTP-version CRLF. */
        line_end = memchr(p, '\r', (size_t) (end - p));
        if (!line_end || line_end[1] != '\n')
                return -EBADMSG;
        for (sp = p; sp < line_end && is_tchar((unsigned char) *sp); sp++)
                ;
        if (sp == p || sp == line_end || *sp != ' ')
                return -EBADMSG;
        /* Methods are case-sensitive (RFC 9110 §9.1). */
        r.head = sp - p == 4 && memcmp(p, "HEAD", 4) == 0;
        target = sp + 1;
        for (sp = target; sp < line_end && (unsigned char) *sp > ' ' && *sp != 0x7f; sp++)
                ;
        if (sp == target || sp == line_end || *sp != ' ')
                return -EBADMSG;
        if (line_end - (sp + 1) != 8 || memcmp(sp + 1, "HTTP/1.", 7) != 0 ||
            sp[8] < '0' || sp[8] > '9')
                return -EBADMSG;
        r.http10 = sp[8] == '0';
        r.has_delay = parse_delay(target, (size_t) (sp - target), &r.delay_ms);

        /* Header fields: name ":" OWS value OWS CRLF. */
        for (p = line_end + 2; p < end; p = line_end + 2) {
                const char *name = p, *colon, *v, *vend;

                line_end = memchr(p, '\r', (size_t) (end - p));
                if (!line_end || line_end[1] != '\n')
                        return -EBADMSG;
                for (colon = name; colon < line_end && is_tchar((unsigned char) *colon); colon++)
                        ;
                /* Also rejects obsolete line folding and whitespace before
                 * the colon, both of which RFC 9112 §5 says to reject. */
                if (colon == name || colon == line_end || *colon != ':')
                        return -EBADMSG;
                for (v = colon + 1; v < line_end && (*v == ' ' || *v == '\t'); v++)
                        ;
                for (vend = line_end; vend > v && (vend[-1] == ' ' || vend[-1] == '\t'); vend--)
                        ;
                for (const char *c = v; c < vend; c++)
                        if (((unsigned char) *c < ' ' && *c != '\t') || *c == 0x7f)
                                return -EBADMSG;

                if (token_eq(name, (size_t) (colon - name), "connection"))
                        parse_connection(v, (size_t) (vend - v), &opt_close, &opt_keep_alive);
                else if (token_eq(name, (size_t) (colon - name), "content-length")) {
                        uint64_t cl = 0;

                        if (v == vend)
                                return -EBADMSG;
                        for (const char *c = v; c < vend; c++) {
                                if (*c < '0' || *c > '9' || cl > (UINT64_MAX - 9) / 10)
                                        return -EBADMSG;
                                cl = cl * 10 + (uint64_t) (*c - '0');
                        }
                        /* Differing duplicates are a smuggling vector. */
                        if (have_cl && cl != r.content_length)
                                return -EBADMSG;
                        have_cl = true;
                        r.content_length = cl;
                } else if (token_eq(name, (size_t) (colon - name), "transfer-encoding"))
                        chunked = true;
        }

        r.keep_alive = !opt_close && (!r.http10 || opt_keep_alive);
        /* We do not decode chunked bodies, so we cannot find where the next
         * request starts: answer this one and close (RFC 9112 §6.3). */
        if (chunked) {
                r.keep_alive = false;
                r.content_length = 0;
        }
        *ret = r;
        return 0;
}

/* ---- responses ---------------------------------------------------------- */

/* Rebuild the response templates when the second changes: they only differ
 * in the Date header, so building them per request would be wasted work. */
static void responses_update(Server *s) {
        static const char *const conn_hdr[_RESP_MAX] = {
                [RESP_KEEP] = "",
                [RESP_KEEP_10] = "Connection: keep-alive\r\n",
                [RESP_CLOSE] = "Connection: close\r\n",
        };
        time_t now = time(NULL);
        char date[64];
        struct tm tm;
        int n;

        if (now == s->resp_time)
                return;
        s->resp_time = now;
        /* We never call setlocale(), so %a and %b are the English names
         * IMF-fixdate requires (RFC 9110 §5.6.7). */
        if (!gmtime_r(&now, &tm) || strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm) == 0)
                date[0] = 0;

        for (int k = 0; k < _RESP_MAX; k++) {
                n = snprintf(s->resp[k], RESP_MAX,
                             "HTTP/1.1 200 OK\r\n"
                             "Content-Type: text/plain\r\n"
                             "Content-Length: %zu\r\n"
                             "Date: %s\r\n"
                             "X-Worker-Pid: %d\r\n"
                             "%s"
                             "\r\n"
                             "%s",
                             sizeof(hello_body) - 1, date, (int) s->pid, conn_hdr[k], hello_body);
                s->resp_len[k] = n > 0 && n < RESP_MAX ? (size_t) n : 0;
        }
        n = snprintf(s->bad, RESP_MAX,
                     "HTTP/1.1 400 Bad Request\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: %zu\r\n"
                     "Date: %s\r\n"
                     "X-Worker-Pid: %d\r\n"
                     "Connection: close\r\n"
                     "\r\n"
                     "%s",
                     sizeof(bad_body) - 1, date, (int) s->pid, bad_body);
        s->bad_len = n > 0 && n < RESP_MAX ? (size_t) n : 0;
}

/* Append a 200 to c->out; the caller made sure RESP_MAX bytes are free.
 * During a stop every response closes its connection. */
static void conn_queue_hello(Conn *c, const Request *req) {
        Server *s = c->server;
        RespKind k;
        size_t n;

        responses_update(s);
        if (!req->keep_alive || s->stopping) {
                k = RESP_CLOSE;
                c->close_after = true;
        } else
                k = req->http10 ? RESP_KEEP_10 : RESP_KEEP;
        n = s->resp_len[k];
        if (req->head)
                n -= sizeof(hello_body) - 1;
        memcpy(c->out + c->out_len, s->resp[k], n);
        c->out_len += n;
}

static void conn_queue_bad_request(Conn *c) {
        responses_update(c->server);
        memcpy(c->out + c->out_len, c->server->bad, c->server->bad_len);
        c->out_len += c->server->bad_len;
        c->close_after = true;
}

/* ---- connections -------------------------------------------------------- */

static void conn_pump(Conn *c);

static void on_conn_closed(uv_handle_t *h) {
        Conn *c = h->data;

        if (--c->pending_closes > 0)
                return;
        c->server->n_conns--;
        peers_set_load(c->server->peers, (uint32_t) c->server->n_conns);
        free(c);
}

/* Close both handles; the Conn is freed when both callbacks have run.
 * Idempotent, and safe from any callback of this connection. */
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
        uv_close(&c->io.handle, on_conn_closed);
        uv_close((uv_handle_t *) &c->timer, on_conn_closed);
}

static void on_conn_timeout(uv_timer_t *t) {
        conn_close(t->data);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        Conn *c = h->data;

        (void) suggested;
        if (c->lingering)
                *buf = uv_buf_init(c->in, IN_CAP);
        else
                *buf = uv_buf_init(c->in + c->in_len, (unsigned) (IN_CAP - c->in_len));
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
        Conn *c = st->data;

        (void) buf;
        if (nread == 0)
                return;
        if (c->lingering) {
                /* Waiting for the peer's FIN; anything it still sends is
                 * dropped. */
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
        c->in_len += (size_t) nread;
        conn_pump(c);
}

static void conn_set_reading(Conn *c, bool on) {
        if (on == c->reading)
                return;
        if (on) {
                if (uv_read_start(&c->io.stream, on_alloc, on_read) < 0) {
                        conn_close(c);
                        return;
                }
        } else
                uv_read_stop(&c->io.stream);
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

/* Send c->out. Returns 0 when it went out or a uv_write() now owns it
 * (c->writing), or a negative libuv error. */
static int conn_flush(Conn *c) {
        uv_buf_t b = uv_buf_init(c->out, (unsigned) c->out_len);
        int r;

        if (c->out_len == 0)
                return 0;
        r = uv_try_write(&c->io.stream, &b, 1);
        if (r == UV_EAGAIN)
                r = 0;
        if (r < 0)
                return r;
        if ((size_t) r == c->out_len) {
                c->out_len = 0;
                return 0;
        }
        /* The socket is full: let libuv finish the rest when it drains.
         * out[] stays untouched until on_write_done(). */
        b = uv_buf_init(c->out + r, (unsigned) (c->out_len - (size_t) r));
        c->write_req.data = c;
        r = uv_write(&c->write_req, &c->io.stream, &b, 1, on_write_done);
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
        /* Room was reserved before the delay started. */
        conn_queue_hello(c, &c->pending);
        conn_pump(c);
}

/* Parse and answer every complete request in c->in, until the input runs
 * out or something must be waited for (a write, a delay, the close). */
static void conn_process(Conn *c) {
        Server *s = c->server;
        size_t off = 0;

        while (!c->delayed && !c->close_after) {
                size_t avail, from, hlen = 0;
                const char *hdr_end;
                Request req = {};
                int r;

                if (c->body_left > 0) {
                        size_t n = (size_t) MIN(c->body_left, (uint64_t) (c->in_len - off));
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

                from = c->scan_from > off ? c->scan_from - off : 0;
                hdr_end = memmem(c->in + off + from, avail - from, "\r\n\r\n", 4);
                if (!hdr_end) {
                        if (avail < IN_CAP) {
                                /* Incomplete: rescan only the new bytes. */
                                c->scan_from = c->in_len >= 3 ? c->in_len - 3 : 0;
                                break;
                        }
                        r = -EMSGSIZE;
                } else {
                        hlen = (size_t) (hdr_end + 4 - (c->in + off));
                        r = parse_request(c->in + off, hlen, &req);
                }

                /* Room for the answer before consuming the request, so a
                 * full output buffer just pauses us here. */
                int room = conn_reserve(c);
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
                c->scan_from = 0;
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
                c->scan_from = c->scan_from > off ? c->scan_from - off : 0;
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

/* The last response has been written: half-close and drain (see
 * LINGER_MS), or just close when the peer already finished sending. */
static void conn_linger(Conn *c) {
        if (c->eof) {
                conn_close(c);
                return;
        }
        c->lingering = true;
        conn_set_reading(c, false);
        c->shutdown_req.data = c;
        if (uv_shutdown(&c->shutdown_req, &c->io.stream, on_shutdown_done) < 0)
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
                /* Half-closed by the peer and everything answered. */
                if (c->eof) {
                        conn_close(c);
                        return;
                }
                /* Stopping, and this connection just became idle. */
                if (c->server->stopping && c->in_len == 0 && c->body_left == 0) {
                        conn_close(c);
                        return;
                }
        }
        conn_set_reading(c, !c->writing && !c->delayed && !c->close_after && !c->eof);
}

/* Allocate a connection with both handles initialised but no fd yet. */
static Conn *conn_new(Server *s, bool is_unix) {
        Conn *c = malloc(sizeof(*c));

        if (!c)
                return NULL;
        /* The buffers need no zeroing; skip 12 KiB of memset per accept. */
        memset(c, 0, offsetof(Conn, in));
        c->server = s;
        if (is_unix)
                (void) uv_pipe_init(&s->loop, &c->io.pipe, 0);
        else
                (void) uv_tcp_init(&s->loop, &c->io.tcp);
        (void) uv_timer_init(&s->loop, &c->timer);
        c->io.handle.data = c;
        c->timer.data = c;
        s->n_conns++;
        peers_set_load(s->peers, (uint32_t) s->n_conns);
        return c;
}

/* The connection has its fd: link it and start reading. */
static void conn_start(Conn *c) {
        Server *s = c->server;

        c->next = s->conns;
        if (s->conns)
                s->conns->prev = c;
        s->conns = c;
        s->n_accepted++;
        conn_set_reading(c, true);
}

/* Take ownership of an accepted fd; closes it on failure. */
static void conn_adopt_fd(Server *s, int fd, bool is_unix) {
        Conn *c = conn_new(s, is_unix);
        int r;

        if (!c) {
                safe_close(fd);
                return;
        }
        if (is_unix)
                r = uv_pipe_open(&c->io.pipe, fd);
        else {
                r = uv_tcp_open(&c->io.tcp, fd);
                /* Responses are written whole, so Nagle only adds latency
                 * when a partial write leaves a tail behind. */
                if (r >= 0)
                        (void) uv_tcp_nodelay(&c->io.tcp, 1);
        }
        if (r < 0) {
                safe_close(fd);
                c->closing = true;      /* never linked */
                c->pending_closes = 2;
                uv_close(&c->io.handle, on_conn_closed);
                uv_close((uv_handle_t *) &c->timer, on_conn_closed);
                return;
        }
        conn_start(c);
}

/* Stop was requested: decide this connection's fate. */
static void conn_begin_stop(Conn *c) {
        uv_os_fd_t fd;
        int pending = 0;

        if (c->closing || c->lingering || c->delayed)
                return;         /* already leaving, or a request in flight */
        /* Only a connection that has been answered before is idle: a
         * fresh one was just accepted and its first request may still be
         * on the wire; closing it would fail a client that did nothing
         * wrong, so it gets the grace period below. */
        if (c->n_requests > 0 && !c->writing && c->in_len == 0 && c->body_left == 0 &&
            (uv_fileno(&c->io.handle, &fd) < 0 || ioctl(fd, FIONREAD, &pending) == -1 || pending == 0)) {
                /* Idle keep-alive connection. */
                conn_close(c);
                return;
        }
        /* A request is on its way in, or responses are still queued: give
         * it a bounded time; its response will say Connection: close. */
        uv_timer_start(&c->timer, on_conn_timeout, STOP_GRACE_MS, 0);
}

/* ---- listeners and hand-off --------------------------------------------- */

static void listener_release(Listener *l) {
        /* Closing our copy of an inherited fd leaves the socket open in
         * the other workers and the master. */
        l->fd = safe_close(l->fd);
        if (l->unlink_path) {
                (void) unlink(l->unlink_path);
                free(l->unlink_path);
                l->unlink_path = NULL;
        }
}

static void on_listener_closed(uv_handle_t *h) {
        listener_release(h->data);
}

static void listener_close(Listener *l) {
        if (!l->active)
                return;
        l->active = false;
        uv_close((uv_handle_t *) &l->poll, on_listener_closed);
}

static void on_listener_readable(uv_poll_t *p, int status, int events);

static void listeners_poll(Server *s, bool on) {
        for (size_t i = 0; i < s->n_listeners; i++) {
                Listener *l = &s->listeners[i];

                if (!l->active)
                        continue;
                if (on)
                        (void) uv_poll_start(&l->poll, UV_READABLE, on_listener_readable);
                else
                        (void) uv_poll_stop(&l->poll);
        }
}

static void on_accept_resume(uv_poll_t *p, int status, int events) {
        Server *s = p->data;
        uint64_t expirations;

        (void) status;
        (void) events;
        (void) !read(s->pause_fd, &expirations, sizeof(expirations));
        uv_poll_stop(p);
        if (!s->stopping)
                listeners_poll(s, true);
}

/* Stop accepting for usec. The listeners are level-triggered, so while a
 * connection is queued, polling them on would only spin. */
static void accept_pause(Server *s, uint64_t usec) {
        struct itimerspec its = {
                .it_value.tv_sec = (time_t) (usec / USEC_PER_SEC),
                .it_value.tv_nsec = (long) (usec % USEC_PER_SEC * 1000),
        };

        if (timerfd_settime(s->pause_fd, 0, &its, NULL) == -1)
                return;
        listeners_poll(s, false);
        (void) uv_poll_start(&s->pause_poll, UV_READABLE, on_accept_resume);
}

/* Whether to leave the pending connection to a less loaded sibling. */
static bool accept_should_defer(Server *s) {
        uint64_t now;

        if ((uint64_t) s->n_conns <= (uint64_t) peers_min_load(s->peers) + BALANCE_SLACK) {
                s->deferring = false;
                return false;
        }
        now = uv_now(&s->loop);
        /* A wakeup long after our last deferral starts a new streak. */
        if (!s->deferring || now - s->defer_last > 1) {
                s->deferring = true;
                s->defer_since = now;
        }
        s->defer_last = now;
        return now - s->defer_since < BALANCE_DEFER_MAX_MS;
}

static void on_listener_readable(uv_poll_t *p, int status, int events) {
        Listener *l = p->data;
        Server *s = l->server;
        int fd;

        (void) events;
        if (status < 0) {
                log_msg(LOG_ERR, "Polling %s failed, no longer serving it: %s", l->display, uv_strerror(status));
                listener_close(l);
                return;
        }

        if (accept_should_defer(s)) {
                accept_pause(s, BALANCE_DEFER_USEC);
                return;
        }
        s->deferring = false;

        /* Exactly one accept per wakeup; see the top of this file. */
        fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
                switch (errno) {
                case EAGAIN:
                        /* Another worker won this connection. */
                case EINTR:
                case ECONNABORTED:
                        /* accept(2): Linux passes pending network errors of
                         * the new connection on to accept; just retry. */
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
                        /* The connection stays queued for someone else, and
                         * the level-triggered poll would spin: pause. */
                        log_msg(LOG_WARNING, "accept on %s: %m; pausing %llu ms", l->display,
                                ACCEPT_PAUSE_USEC / USEC_PER_MSEC);
                        accept_pause(s, ACCEPT_PAUSE_USEC);
                        return;
                default:
                        log_msg(LOG_ERR, "accept on %s failed, no longer serving it: %m", l->display);
                        listener_close(l);
                        return;
                }
        }
        conn_adopt_fd(s, fd, l->is_unix);
}

static void on_ipc_closed(uv_handle_t *h) {
        (void) h;
}

static void ipc_close(Server *s) {
        if (!s->ipc_open)
                return;
        s->ipc_open = false;
        uv_close((uv_handle_t *) &s->ipc, on_ipc_closed);
}

static void on_ipc_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        Server *s = h->data;

        (void) suggested;
        *buf = uv_buf_init(s->ipc_buf, sizeof(s->ipc_buf));
}

/* Hand-off (SPEC §5): each connection is one byte (the listener index,
 * which we do not need) with the fd attached. The bytes, and any JSON
 * message lines (SPEC §6), are ignored; we only collect the fds. */
static void on_ipc_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
        Server *s = st->data;

        (void) buf;
        while (uv_pipe_pending_count(&s->ipc) > 0) {
                uv_handle_type t = uv_pipe_pending_type(&s->ipc);
                Conn *c;

                if (t != UV_TCP && t != UV_NAMED_PIPE) {
                        /* The master only hands over stream sockets; the
                         * channel is not speaking SPEC §5. */
                        log_msg(LOG_ERR, "CORRAL_IPC_FD passed a non-stream fd, closing it");
                        ipc_close(s);
                        return;
                }
                c = conn_new(s, t == UV_NAMED_PIPE);
                if (!c)
                        break;
                if (uv_accept(st, &c->io.stream) < 0) {
                        c->closing = true;
                        c->pending_closes = 2;
                        uv_close(&c->io.handle, on_conn_closed);
                        uv_close((uv_handle_t *) &c->timer, on_conn_closed);
                        continue;
                }
                if (t == UV_TCP)
                        (void) uv_tcp_nodelay(&c->io.tcp, 1);
                conn_start(c);
        }
        if (nread < 0) {
                /* The master went away or closed the channel: no more
                 * connections will come this way. */
                if (nread != UV_EOF)
                        log_msg(LOG_WARNING, "Reading CORRAL_IPC_FD failed: %s", uv_strerror((int) nread));
                ipc_close(s);
        }
}

/* ---- setup -------------------------------------------------------------- */

static int listeners_add(Server *s, int fd, bool is_unix, const char *display, const char *unlink_path) {
        Listener *n = realloc(s->listeners, (s->n_listeners + 1) * sizeof(*n));
        Listener *l;

        if (!n)
                return -ENOMEM;
        s->listeners = n;
        l = &s->listeners[s->n_listeners];
        *l = (Listener) { .server = s, .fd = fd, .is_unix = is_unix };
        snprintf(l->display, sizeof(l->display), "%s", display);
        if (unlink_path) {
                l->unlink_path = strdup(unlink_path);
                if (!l->unlink_path)
                        return -ENOMEM;
        }
        s->n_listeners++;
        return 0;
}

/* Take every socket passed with LISTEN_FDS. Returns how many, or -errno. */
static int listeners_inherit(Server *s) {
        int n = sd_listen_fds(1);

        if (n < 0) {
                log_msg(LOG_ERR, "Invalid LISTEN_FDS/LISTEN_PID: %s", strerror(-n));
                return n;
        }

        for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; fd++) {
                char display[64];
                int domain = 0, r;
                socklen_t len = sizeof(domain);

                if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
                        log_msg(LOG_WARNING, "fd %d is not a listening stream socket, ignoring it", fd);
                        continue;
                }
                if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == -1) {
                        r = -errno;
                        log_msg(LOG_ERR, "getsockopt(fd %d, SO_DOMAIN): %s", fd, strerror(-r));
                        return r;
                }
                /* O_NONBLOCK lives in the open file description shared with
                 * every worker; each of them needs it anyway, since a peer
                 * may take the connection between our wakeup and accept. */
                r = fd_nonblock(fd, true);
                if (r < 0)
                        return log_msg(LOG_ERR, "Making fd %d non-blocking: %s", fd, strerror(-r)), r;
                /* No listen() here: it would reset the backlog systemd set. */
                snprintf(display, sizeof(display), "fd %d", fd);
                r = listeners_add(s, fd, domain == AF_UNIX, display, NULL);
                if (r < 0)
                        return r;
        }
        return n;
}

/* Bind one --listen address (SPEC §2 syntax, as corrald parses it). */
static int listeners_bind(Server *s, const char *spec) {
        ListenAddr a;
        const char *reason;
        int fd, r, one = 1;
        bool is_unix;

        if (listen_addr_parse(spec, &a, &reason) < 0) {
                log_msg(LOG_ERR, "--listen %s: %s", spec, reason);
                return -EINVAL;
        }
        is_unix = a.addr.ss_family == AF_UNIX;
        fd = socket(a.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1) {
                r = -errno;
                log_msg(LOG_ERR, "socket() for %s: %s", a.display, strerror(-r));
                return r;
        }
        if (!is_unix)
                (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (a.addr.ss_family == AF_INET6)
                (void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *) &a.addr, a.addrlen) == -1 || listen(fd, SOMAXCONN) == -1) {
                r = -errno;
                log_msg(LOG_ERR, "Cannot listen on %s: %s", a.display, strerror(-r));
                safe_close(fd);
                return r;
        }
        r = listeners_add(s, fd, is_unix, a.display,
                          is_unix ? ((struct sockaddr_un *) &a.addr)->sun_path : NULL);
        if (r < 0)
                safe_close(fd);
        return r;
}

/* Open CORRAL_IPC_FD, if the master gave us one. Returns 1 if open. */
static int ipc_open(Server *s) {
        const char *e = getenv("CORRAL_IPC_FD");
        uint64_t v;
        int r;

        if (!e)
                return 0;
        if (parse_u64(e, &v) < 0 || v < 3 || v > INT32_MAX || sd_is_socket((int) v, AF_UNIX, SOCK_STREAM, 0) <= 0) {
                log_msg(LOG_WARNING, "CORRAL_IPC_FD=%s is not a stream socket, ignoring it", e);
                return 0;
        }
        (void) fd_cloexec((int) v, true);
        (void) uv_pipe_init(&s->loop, &s->ipc, 1);
        s->ipc.data = s;
        r = uv_pipe_open(&s->ipc, (int) v);
        if (r >= 0)
                r = uv_read_start((uv_stream_t *) &s->ipc, on_ipc_alloc, on_ipc_read);
        if (r < 0) {
                log_msg(LOG_WARNING, "Cannot read CORRAL_IPC_FD: %s", uv_strerror(r));
                uv_close((uv_handle_t *) &s->ipc, on_ipc_closed);
                return 0;
        }
        s->ipc_open = true;
        return 1;
}

static void on_stop_signal(uv_signal_t *h, int signum) {
        Server *s = h->data;

        if (s->stopping) {
                /* A second signal: the user wants out now. */
                log_msg(LOG_NOTICE, "%s again, closing %zu connections", strsignal(signum), s->n_conns);
                for (Conn *c = s->conns, *next; c; c = next) {
                        next = c->next;
                        conn_close(c);
                }
                return;
        }
        s->stopping = true;
        log_msg(LOG_INFO, "%s: stopping, %zu connections open", strsignal(signum), s->n_conns);
        uv_poll_stop(&s->pause_poll);
        /* Siblings must not leave connections to us any more. */
        uv_timer_stop(&s->heartbeat);
        s->peers = peers_close(s->peers);
        for (size_t i = 0; i < s->n_listeners; i++)
                listener_close(&s->listeners[i]);
        ipc_close(s);
        for (Conn *c = s->conns, *next; c; c = next) {
                next = c->next;
                conn_begin_stop(c);
        }
        /* From here, the loop ends when the last connection is closed: the
         * signal and watchdog handles are unreferenced. */
}

static void on_heartbeat(uv_timer_t *t) {
        Server *s = t->data;

        peers_heartbeat(s->peers);
}

static void on_watchdog(uv_timer_t *t) {
        (void) t;
        (void) sd_notify(0, "WATCHDOG=1");
}

static void on_walk_close(uv_handle_t *h, void *arg) {
        (void) arg;
        if (!uv_is_closing(h))
                uv_close(h, NULL);
}

static void help(void) {
        printf("Usage: corral-hello [--listen ADDRESS]...\n"
               "\n"
               "Example corral worker: an HTTP/1.1 keep-alive server answering every\n"
               "request with \"Hello World\" and an X-Worker-Pid header. GET /delay/MS\n"
               "answers after MS milliseconds.\n"
               "\n"
               "Serves the sockets passed by systemd or corrald (LISTEN_FDS) and the\n"
               "connections handed over CORRAL_IPC_FD; without those, binds ADDRESS.\n"
               "\n"
               "  -l, --listen ADDRESS  HOST:PORT, [V6]:PORT, PORT or unix:/path\n"
               "                        (repeatable; only without LISTEN_FDS)\n"
               "  -h, --help            show this help\n"
               "      --version         show the version\n"
               "\n"
               "Environment: CORRAL_HELLO_STATS=1 prints connection and request\n"
               "counts on exit. CORRAL_HELLO_PEERS=0 turns off balancing through the\n"
               "load table shared with sibling workers (/dev/shm/corral-hello.*).\n");
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "listen",  required_argument, NULL, 'l' },
                { "help",    no_argument,       NULL, 'h' },
                { "version", no_argument,       NULL, 'V' },
                {}
        };
        _cleanup_strv_free_ char **listen_addrs = NULL;
        Server *s;
        uint64_t watchdog_usec = 0;
        int opt, r, n_inherited, ret = EXIT_SUCCESS;
        bool have_ipc;

        while ((opt = getopt_long(argc, argv, "l:h", options, NULL)) >= 0)
                switch (opt) {
                case 'l':
                        if (strv_extend(&listen_addrs, optarg) < 0)
                                return EXIT_FAILURE;
                        break;
                case 'h':
                        help();
                        return EXIT_SUCCESS;
                case 'V':
                        printf("corral-hello %s\n", CORRAL_VERSION);
                        return EXIT_SUCCESS;
                default:
                        return EXIT_FAILURE;
                }
        if (optind < argc) {
                fprintf(stderr, "corral-hello: unexpected argument '%s'; see --help\n", argv[optind]);
                return EXIT_FAILURE;
        }

        log_init();
        /* libuv writes with write(2), not send(MSG_NOSIGNAL): a peer that
         * resets must give us EPIPE, not kill us. */
        signal(SIGPIPE, SIG_IGN);

        /* Large (listeners array aside) and long-lived: one heap object. */
        s = calloc(1, sizeof(*s));
        if (!s)
                return EXIT_FAILURE;
        s->pid = getpid();
        s->pause_fd = -EBADF;
        r = uv_loop_init(&s->loop);
        if (r < 0) {
                log_msg(LOG_ERR, "uv_loop_init: %s", uv_strerror(r));
                free(s);
                return EXIT_FAILURE;
        }
        s->loop.data = s;

        n_inherited = listeners_inherit(s);
        if (n_inherited < 0)
                goto fail;
        if (n_inherited > 0 && listen_addrs)
                log_msg(LOG_WARNING, "Sockets were passed in LISTEN_FDS; ignoring --listen");
        if (n_inherited == 0)
                for (char **a = listen_addrs; a && *a; a++)
                        if (listeners_bind(s, *a) < 0)
                                goto fail;
        have_ipc = ipc_open(s) > 0;
        if (s->n_listeners == 0 && !have_ipc) {
                log_msg(LOG_ERR, "Nothing to serve: no usable LISTEN_FDS sockets and no --listen; see --help");
                goto fail;
        }

        s->pause_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (s->pause_fd < 0) {
                log_msg(LOG_ERR, "timerfd_create: %m");
                goto fail;
        }
        r = uv_poll_init(&s->loop, &s->pause_poll, s->pause_fd);
        if (r < 0) {
                log_msg(LOG_ERR, "Cannot poll a timerfd: %s", uv_strerror(r));
                goto fail;
        }
        s->pause_poll.data = s;
        for (size_t i = 0; i < s->n_listeners; i++) {
                Listener *l = &s->listeners[i];

                r = uv_poll_init(&s->loop, &l->poll, l->fd);
                if (r >= 0) {
                        l->poll.data = l;
                        l->active = true;
                        r = uv_poll_start(&l->poll, UV_READABLE, on_listener_readable);
                }
                if (r < 0) {
                        log_msg(LOG_ERR, "Cannot poll %s: %s", l->display, uv_strerror(r));
                        goto fail;
                }
        }

        /* The signal and watchdog handles never keep the loop alive by
         * themselves: it runs as long as listeners or connections exist. */
        (void) uv_signal_init(&s->loop, &s->sigterm);
        (void) uv_signal_init(&s->loop, &s->sigint);
        s->sigterm.data = s->sigint.data = s;
        (void) uv_signal_start(&s->sigterm, on_stop_signal, SIGTERM);
        (void) uv_signal_start(&s->sigint, on_stop_signal, SIGINT);
        uv_unref((uv_handle_t *) &s->sigterm);
        uv_unref((uv_handle_t *) &s->sigint);

        /* Inherited listeners may be shared with sibling workers: join
         * their load table (peers.h), unless told not to. */
        (void) uv_timer_init(&s->loop, &s->heartbeat);
        s->heartbeat.data = s;
        if (n_inherited > 0 && s->n_listeners > 0 && !streq_ptr(getenv("CORRAL_HELLO_PEERS"), "0")) {
                r = peers_open(s->listeners[0].fd, &s->peers);
                if (r < 0)
                        log_msg(LOG_INFO, "Balancing without a sibling load table: %s", strerror(-r));
                else {
                        uint64_t ms = PEERS_HEARTBEAT_USEC / USEC_PER_MSEC;
                        uv_timer_start(&s->heartbeat, on_heartbeat, ms, ms);
                        uv_unref((uv_handle_t *) &s->heartbeat);
                }
        }

        (void) uv_timer_init(&s->loop, &s->watchdog);
        if (sd_watchdog_enabled(1, &watchdog_usec) > 0 && watchdog_usec > 0) {
                uint64_t ms = MAX(watchdog_usec / 2 / USEC_PER_MSEC, 1ULL);
                uv_timer_start(&s->watchdog, on_watchdog, ms, ms);
                uv_unref((uv_handle_t *) &s->watchdog);
        }

        (void) sd_notifyf(0, "READY=1\nSTATUS=serving on %zu listeners%s",
                          s->n_listeners, have_ipc ? " and CORRAL_IPC_FD" : "");

        uv_run(&s->loop, UV_RUN_DEFAULT);

        if (!s->stopping) {
                /* Every listener failed, or the master closed the hand-off
                 * channel; the reasons were logged. */
                log_msg(LOG_ERR, "Nothing left to serve (no listener, no CORRAL_IPC_FD), exiting");
                ret = EXIT_FAILURE;
        }
        if (getenv("CORRAL_HELLO_STATS"))
                log_msg(LOG_INFO, "stats: pid %d accepted %" PRIu64 " connections, served %" PRIu64 " requests",
                        (int) s->pid, s->n_accepted, s->n_requests);
        goto out;

fail:
        ret = EXIT_FAILURE;
out:
        /* Release everything so that valgrind sees no leak: connections
         * (only after a hard stop can any be left), listeners whose poll
         * never started, then every remaining handle. */
        for (Conn *c = s->conns, *next; c; c = next) {
                next = c->next;
                conn_close(c);
        }
        for (size_t i = 0; i < s->n_listeners; i++) {
                Listener *l = &s->listeners[i];
                if (l->active)
                        listener_close(l);
                else if (l->fd >= 0)
                        listener_release(l);
        }
        s->peers = peers_close(s->peers);
        uv_walk(&s->loop, on_walk_close, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        r = uv_loop_close(&s->loop);
        safe_close(s->pause_fd);
        if (r < 0)
                log_msg(LOG_WARNING, "uv_loop_close: %s", uv_strerror(r));
        free(s->listeners);
        free(s);
        return ret;
}
