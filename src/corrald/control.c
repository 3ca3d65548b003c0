/* control: see control.h.
 *
 * Connections use libuv pipes; reads are line-framed into a per-connection
 * buffer of CONTROL_LINE_MAX. Back-pressure: while a request is in progress
 * further input is not read (requests are strictly sequential), and while
 * more than CONTROL_WRITE_HIGH of replies wait for the client to read them,
 * no further request is taken either (its input stays in the kernel, and
 * SO_SNDBUF keeps what the kernel holds of unread replies small, but for
 * room for one large reply while it is written), so a
 * client that sends and never reads costs at most one line buffer, that
 * much output and one reply. At most CONTROL_BATCH pipelined requests of
 * one client are taken per loop iteration, so the others never wait long. Streamed output (progress, followed
 * messages) past CONTROL_WRITE_MAX closes the connection.
 *
 * Time-outs (CONTROL_IDLE_MS, CONTROL_PARTIAL_MS): a connection with no
 * request in progress that neither sends a request nor reads its replies
 * for 10 s is closed, and so is one that has sent part of a line and not
 * finished it within 5 s. One server-wide timer checks every second. When
 * the table is full, a new client evicts the connection that has been idle
 * longest (no request in progress) instead of being refused; only when
 * every connection has a request in progress is the new one refused. Both
 * are logged, rate-limited. */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"
#include "fd-util.h"
#include "log.h"
#include "util.h"

#define CONTROL_WRITE_MAX (4 * 1024 * 1024)
#define CONTROL_WRITE_HIGH (4 * 1024)
/* SO_SNDBUF of a connection: what the kernel holds of unread replies. */
#define CONTROL_SNDBUF (4 * 1024)
/* ... raised, while one reply larger than that is being written, to fit
 * it, up to this (and net.core.wmem_max): libuv writes a stream once per
 * loop iteration, so a 540 KB status (4096 workers) written 8 KiB at a
 * time took 67 iterations, seconds while the loop was busy spawning. */
#define CONTROL_SNDBUF_MAX (1024 * 1024)
#define CONTROL_CONNS_MAX 64
#define CONTROL_IDLE_MS 10000
#define CONTROL_PARTIAL_MS 5000
#define CONTROL_SWEEP_MS 1000
/* Requests taken from one connection before the others get their turn;
 * the rest wait for the next loop iteration (an idle handle). */
#define CONTROL_BATCH 8

struct ControlConn {
        uv_pipe_t pipe;
        ControlServer *server;
        unsigned n_ref;
        bool closed;          /* uv_close() called */
        bool busy;            /* a request is in progress */
        bool dispatching;     /* inside conn_dispatch() */
        bool starved;         /* has buffered requests, waits for the next iteration */
        bool eof;             /* the client half-closed: close once its replies are written */
        char *buf;
        size_t len;
        uid_t uid;
        pid_t pid;
        uint64_t active_usec;       /* last request read or reply taken by the client */
        uint64_t partial_usec;      /* when the unfinished line in buf began, or 0 */
        int sndbuf;                 /* the SO_SNDBUF we set last */
        ControlConn *prev, *next;   /* the server's list of open connections */
};

typedef struct WriteReq {
        uv_write_t req;
        ControlConn *conn;
        char data[];
} WriteReq;

char *control_socket_path(const char *explicit_path, const char *name) {
        char *p = NULL;
        const char *rd = getenv("RUNTIME_DIRECTORY");
        const char *xdg = getenv("XDG_RUNTIME_DIR");

        if (explicit_path)
                return strdup(explicit_path);
        /* RuntimeDirectory= may list several directories, separated by ':'. */
        if (rd && rd[0] == '/') {
                size_t n = strcspn(rd, ":");
                if (asprintf(&p, "%.*s/%s.sock", (int) n, rd, name) < 0)
                        return NULL;
        } else if (geteuid() == 0) {
                if (asprintf(&p, "/run/corral/%s.sock", name) < 0)
                        return NULL;
        } else if (xdg && xdg[0] == '/') {
                if (asprintf(&p, "%s/corral/%s.sock", xdg, name) < 0)
                        return NULL;
        }
        return p;
}

/* ---- connections -------------------------------------------------------- */

static void on_conn_closed(uv_handle_t *h) {
        ControlConn *c = h->data;
        control_conn_unref(c);
}

static void conn_close(ControlConn *c) {
        ControlServer *s = c->server;
        if (c->closed)
                return;
        c->closed = true;
        s->n_conns--;
        if (c->prev)
                c->prev->next = c->next;
        else
                s->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        uv_close((uv_handle_t *) &c->pipe, on_conn_closed);
}

ControlConn *control_conn_ref(ControlConn *c) {
        c->n_ref++;
        return c;
}

ControlConn *control_conn_unref(ControlConn *c) {
        if (!c || --c->n_ref > 0)
                return NULL;
        free(c->buf);
        free(c);
        return NULL;
}

bool control_conn_alive(const ControlConn *c) {
        return c && !c->closed;
}

static size_t conn_queued(ControlConn *c) {
        return uv_stream_get_write_queue_size((uv_stream_t *) &c->pipe);
}

static void conn_dispatch(ControlConn *c);

/* Give every starved connection its next batch. */
static void on_idle(uv_idle_t *h) {
        ControlServer *s = h->data;
        bool more = false;
        for (ControlConn *c = s->conns, *next; c; c = next) {
                next = c->next;
                if (!c->starved || c->closed)
                        continue;
                if (!c->dispatching)
                        conn_dispatch(c);
                more = more || c->starved;
        }
        if (!more && s->idle_active) {
                uv_idle_stop(&s->idle);
                s->idle_active = false;
        }
}

static void server_wake(ControlServer *s) {
        if (s->idle_ready)
                (void) uv_idle_start(&s->idle, on_idle);
        s->idle_active = s->idle_ready;
}

static void conn_set_sndbuf(ControlConn *c, int sndbuf) {
        uv_os_fd_t fd;
        if (sndbuf == c->sndbuf || uv_fileno((uv_handle_t *) &c->pipe, &fd) < 0)
                return;
        /* Best effort: the kernel caps it at net.core.wmem_max, and doubles it. */
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
        c->sndbuf = sndbuf;
}

static void on_write_done(uv_write_t *req, int status) {
        WriteReq *w = (WriteReq *) req;
        ControlConn *c = w->conn;
        free(w);
        if (c->closed)
                return;
        /* A client that closed without reading (EPIPE), or a half-closed
         * one that has read every reply: nothing else will close it. */
        if (status < 0 || (c->eof && conn_queued(c) == 0)) {
                conn_close(c);
                return;
        }
        if (c->eof)
                return;
        c->active_usec = now_usec();
        /* The kernel took every reply: small again, so that a client that
         * stops reading holds little there (a raised buffer's bytes still
         * in flight stay; nothing more is written until they drain). */
        if (conn_queued(c) == 0)
                conn_set_sndbuf(c, CONTROL_SNDBUF);
        /* The client read enough of its replies: take its next request. */
        if (!c->busy && !c->dispatching && conn_queued(c) <= CONTROL_WRITE_HIGH)
                conn_dispatch(c);
}

/* Queue one JSON object as a line. */
static void conn_send(ControlConn *c, cJSON *obj) {
        if (c->closed)
                return;
        char *text = cJSON_PrintUnformatted(obj);
        if (!text) {
                conn_close(c);
                return;
        }
        size_t n = strlen(text);

        if (conn_queued(c) + n > CONTROL_WRITE_MAX) {
                log_warning("control: client pid %d does not read its replies; disconnecting", (int) c->pid);
                free(text);
                conn_close(c);
                return;
        }
        WriteReq *w = malloc(sizeof(WriteReq) + n + 1);
        if (!w) {
                free(text);
                conn_close(c);
                return;
        }
        memcpy(w->data, text, n);
        w->data[n] = '\n';
        free(text);
        w->conn = c;
        /* A large reply goes out in one or two loop iterations, not one per
         * CONTROL_SNDBUF: see CONTROL_SNDBUF_MAX. */
        if (n + 1 > CONTROL_SNDBUF)
                conn_set_sndbuf(c, (int) MAX(MIN(n + 1, (size_t) CONTROL_SNDBUF_MAX), (size_t) c->sndbuf));
        uv_buf_t b = uv_buf_init(w->data, (unsigned) n + 1);
        if (uv_write(&w->req, (uv_stream_t *) &c->pipe, &b, 1, on_write_done) < 0) {
                free(w);
                conn_close(c);
        }
}

static void send_simple(ControlConn *c, const char *type, bool result_ok, const char *key, const char *msg) {
        cJSON *o = cJSON_CreateObject();
        if (!o)
                return;
        cJSON_AddStringToObject(o, "type", type);
        if (strcmp(type, "result") == 0)
                cJSON_AddBoolToObject(o, "ok", result_ok);
        cJSON_AddStringToObject(o, key, msg);
        conn_send(c, o);
        cJSON_Delete(o);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf);

/* The current request got its result: take the next one, if buffered,
 * and read again. From a handler's synchronous reply, conn_dispatch()'s
 * loop goes on by itself. A later result (a rollout's, sent from deep
 * inside the manager) only schedules the next request for the idle
 * handle: a reply never starts another request from inside the first. */
static void request_done(ControlConn *c) {
        c->busy = false;
        if (c->dispatching || c->closed)
                return;
        c->starved = true;
        server_wake(c->server);
}

void control_send_event(ControlConn *c, cJSON *obj) {
        if (control_conn_alive(c))
                conn_send(c, obj);
}

void control_reply_progress(ControlConn *c, const char *fmt, ...) {
        char msg[512];
        va_list ap;
        if (!control_conn_alive(c))
                return;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        send_simple(c, "progress", false, "message", msg);
}

static void *reply_ref(void *client) {
        return control_conn_ref(client);
}
static void reply_unref(void *client) {
        control_conn_unref(client);
}
static void reply_progress(void *client, const char *line) {
        control_reply_progress(client, "%s", line);
}
static void reply_result(void *client, bool ok, cJSON *fields, const char *error) {
        if (ok)
                control_reply_ok(client, fields);
        else
                control_reply_error(client, "%s", error);
}

const ReplyOps control_reply_ops = {
        .ref = reply_ref,
        .unref = reply_unref,
        .progress = reply_progress,
        .result = reply_result,
};

void control_reply_error(ControlConn *c, const char *fmt, ...) {
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        send_simple(c, "result", false, "error", msg);
        request_done(c);
}

void control_reply_ok(ControlConn *c, cJSON *fields) {
        cJSON *o = cJSON_CreateObject();
        if (o) {
                cJSON_AddStringToObject(o, "type", "result");
                cJSON_AddBoolToObject(o, "ok", true);
                if (fields) {
                        /* Move the fields over rather than copying them. */
                        while (fields->child) {
                                cJSON *item = cJSON_DetachItemViaPointer(fields, fields->child);
                                cJSON_AddItemToObject(o, item->string, item);
                        }
                }
                conn_send(c, o);
                cJSON_Delete(o);
        }
        cJSON_Delete(fields);
        request_done(c);
}

/* Handle every complete buffered line, one request at a time, then read
 * more unless a request is still in progress. */
static void conn_dispatch(ControlConn *c) {
        unsigned n = 0;
        c->dispatching = true;
        c->starved = false;
        while (!c->busy && !c->closed && conn_queued(c) <= CONTROL_WRITE_HIGH) {
                if (n++ >= CONTROL_BATCH && memchr(c->buf, '\n', c->len)) {
                        /* Fairness: one client's pipelined requests must not
                         * keep everyone else waiting. */
                        c->starved = true;
                        server_wake(c->server);
                        break;
                }
                char *nl = memchr(c->buf, '\n', c->len);
                if (!nl)
                        break;
                size_t line_len = (size_t) (nl - c->buf);
                *nl = 0;
                cJSON *req = line_len > 0 ? cJSON_ParseWithLengthOpts(c->buf, line_len + 1, NULL, true) : NULL;
                /* Consume the line before the handler runs: it may answer at
                 * once, and the next request must find a consistent buffer. */
                memmove(c->buf, nl + 1, c->len - line_len - 1);
                c->len -= line_len + 1;
                c->active_usec = now_usec();
                c->partial_usec = c->len > 0 && !memchr(c->buf, '\n', c->len) ? c->active_usec : 0;
                if (line_len == 0)
                        continue;

                c->busy = true;
                if (!req || !cJSON_IsObject(req))
                        control_reply_error(c, "malformed request: expected one JSON object per line");
                else if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(req, "command")))
                        control_reply_error(c, "malformed request: \"command\" must be a string");
                else
                        c->server->handler(c->server->userdata, c, req);
                cJSON_Delete(req);
        }
        c->dispatching = false;
        if (c->closed)
                return;
        /* Busy, replies pile up unread, or it had its turn: leave the input
         * in the kernel. */
        if (c->busy || c->starved || conn_queued(c) > CONTROL_WRITE_HIGH)
                uv_read_stop((uv_stream_t *) &c->pipe);
        else
                uv_read_start((uv_stream_t *) &c->pipe, on_alloc, on_read);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        ControlConn *c = h->data;
        size_t room = CONTROL_LINE_MAX + 1 - c->len;
        *buf = uv_buf_init(c->buf + c->len, (unsigned) room);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
        ControlConn *c = st->data;
        if (n >= 0) {
                if (n > 0 && c->len == 0)
                        c->partial_usec = now_usec();
                c->len += (size_t) n;
                conn_dispatch(c);
                /* A full buffer of queued requests waits for the one in
                 * progress (reading has stopped); only a full buffer
                 * without any newline is an oversize line. */
                if (c->closed || c->len <= CONTROL_LINE_MAX || memchr(c->buf, '\n', c->len))
                        return;
        } else if (n == UV_EOF && conn_queued(c) > 0) {
                /* A client that sends its requests and half-closes (`printf
                 * ... | socat - UNIX-CONNECT:...`) still reads: closing now
                 * would discard the replies libuv has queued. Reading only
                 * goes on once every complete line was handled, so nothing
                 * but a partial line is left unanswered. on_write_done()
                 * closes; the sweep closes one that never reads. */
                c->eof = true;
                uv_read_stop(st);
                return;
        } else if (n != UV_ENOBUFS) {
                conn_close(c);
                return;
        }
        /* The buffer (CONTROL_LINE_MAX + 1) is full with no newline, or
         * libuv found no room to read into: the request line is too long. */
        control_reply_error(c, "request line longer than %d bytes", CONTROL_LINE_MAX);
        conn_close(c);
}

/* Close the connection that has been idle longest, other than `keep`,
 * among those without a request in progress. Returns whether one was. */
/* A result with code "busy": the request (sent or about to be) was not
 * taken, and corralctl tries again shortly on a new connection (a scrape
 * storm: more clients at once than CONTROL_CONNS_MAX). */
static void send_busy(ControlConn *c, const char *why) {
        cJSON *o = cJSON_CreateObject();
        if (!o)
                return;
        cJSON_AddStringToObject(o, "type", "result");
        cJSON_AddBoolToObject(o, "ok", false);
        cJSON_AddStringToObject(o, "code", "busy");
        cJSON_AddStringToObject(o, "error", why);
        conn_send(c, o);
        cJSON_Delete(o);
}

static bool evict_one(ControlServer *s, ControlConn *keep) {
        ControlConn *victim = NULL;
        for (ControlConn *c = s->conns; c; c = c->next)
                if (c != keep && !c->busy && !c->closed && (!victim || c->active_usec < victim->active_usec))
                        victim = c;
        if (!victim)
                return false;
        unsigned suppressed = 0;
        if (ratelimit_below(&s->evict_log, now_usec(), &suppressed))
                log_notice("control: %u connections: closed the longest idle one (pid %d) for a new client%s",
                           s->n_conns - 1, (int) victim->pid, suppressed > 0 ? " (more evictions suppressed)" : "");
        /* It has no request in progress: one it sent and we have not read
         * yet was not taken, and may be sent again. */
        send_busy(victim, "closed to make room for another client");
        conn_close(victim);
        return true;
}

static void on_sweep(uv_timer_t *t) {
        ControlServer *s = t->data;
        uint64_t now = now_usec();
        for (ControlConn *c = s->conns, *next; c; c = next) {
                next = c->next;
                if (c->busy || c->closed)
                        continue;
                if (c->partial_usec > 0 && now - c->partial_usec > CONTROL_PARTIAL_MS * USEC_PER_MSEC)
                        log_debug("control: client pid %d sent part of a request and no more; closing", (int) c->pid);
                else if (now - c->active_usec > CONTROL_IDLE_MS * USEC_PER_MSEC)
                        log_debug("control: client pid %d idle for %d s; closing", (int) c->pid, CONTROL_IDLE_MS / 1000);
                else
                        continue;
                conn_close(c);
        }
}

/* A new connection in the server's list, its pipe initialised (not yet
 * connected to an fd), or NULL (out of memory). */
static ControlConn *conn_new(ControlServer *s, uv_loop_t *loop) {
        ControlConn *c = calloc(1, sizeof(ControlConn));
        if (c)
                c->buf = malloc(CONTROL_LINE_MAX + 1);
        if (!c || !c->buf) {
                if (c)
                        free(c);
                return NULL;
        }
        c->server = s;
        c->n_ref = 1;
        uv_pipe_init(loop, &c->pipe, 0);
        c->pipe.data = c;
        s->n_conns++;
        c->next = s->conns;
        if (s->conns)
                s->conns->prev = c;
        s->conns = c;
        return c;
}

static void conn_start(ControlConn *c);

static void drop_connection(ControlServer *s);

static void on_drop_closed(uv_handle_t *h) {
        ControlServer *s = h->data;
        s->drop_busy = false;
        if (s->drop_pending) {
                s->drop_pending = false;
                drop_connection(s);
        }
}

/* Out of memory for a client: accept it and close it at once, or libuv
 * stops watching the listener until something is accepted. The handle
 * lives in the server, as libuv uses it until its close callback (one on
 * the stack was used after its frame was gone); one at a time, and the
 * next waits for the close (uv_accept() then says EAGAIN when there is
 * nothing left). */
static void drop_connection(ControlServer *s) {
        if (s->drop_busy) {
                s->drop_pending = true;
                return;
        }
        s->drop_busy = true;
        uv_pipe_init(s->pipe.loop, &s->drop, 0);
        s->drop.data = s;
        (void) uv_accept((uv_stream_t *) &s->pipe, (uv_stream_t *) &s->drop);
        uv_close((uv_handle_t *) &s->drop, on_drop_closed);
}

static void on_connection(uv_stream_t *server, int status) {
        ControlServer *s = server->data;

        if (status < 0)
                return;
        ControlConn *c = conn_new(s, server->loop);
        if (!c) {
                drop_connection(s);
                return;
        }
        if (uv_accept(server, (uv_stream_t *) &c->pipe) < 0) {
                conn_close(c);
                return;
        }
        conn_start(c);
}

int control_server_adopt_conn(ControlServer *s, int fd, const char *unread, size_t len) {
        if (len > CONTROL_LINE_MAX) {
                safe_close(fd);
                return -EINVAL;
        }
        ControlConn *c = conn_new(s, s->pipe.loop);
        if (!c) {
                safe_close(fd);
                return -ENOMEM;
        }
        (void) fd_cloexec(fd, true);
        int r = uv_pipe_open(&c->pipe, fd);
        if (r < 0) {
                safe_close(fd);
                conn_close(c);
                return r;
        }
        memcpy(c->buf, unread, len);
        c->len = len;
        c->partial_usec = len > 0 && !memchr(c->buf, '\n', len) ? now_usec() : 0;
        conn_start(c);
        return 0;
}

unsigned control_server_idle_conns(ControlServer *s, ControlConn **ret, unsigned max) {
        unsigned n = 0;
        for (ControlConn *c = s->conns; c && n < max; c = c->next)
                if (!c->closed && !c->busy && conn_queued(c) == 0)
                        ret[n++] = c;
        return n;
}

size_t control_conn_unread(const ControlConn *c, const char **ret) {
        *ret = c->buf;
        return c->len;
}

/* Check the peer and take its requests. */
static void conn_start(ControlConn *c) {
        ControlServer *s = c->server;
        struct ucred cred;
        socklen_t len = sizeof(cred);
        uv_os_fd_t fd;

        if (uv_fileno((uv_handle_t *) &c->pipe, &fd) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1) {
                conn_close(c);
                return;
        }
        c->uid = cred.uid;
        c->pid = cred.pid;
        /* Keep what the kernel buffers of unread replies small too, so a
         * client that sends many requests and never reads gets few answers
         * before we stop reading it (the kernel doubles the value). */
        int sndbuf = CONTROL_SNDBUF;
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
        c->sndbuf = sndbuf;
        if (cred.uid != 0 && cred.uid != geteuid()) {
                log_notice("control: refused a client with uid %u (pid %d)", (unsigned) cred.uid, (int) cred.pid);
                cJSON *o = cJSON_CreateObject();
                if (o) {
                        cJSON_AddStringToObject(o, "type", "result");
                        cJSON_AddBoolToObject(o, "ok", false);
                        cJSON_AddStringToObject(o, "code", "permission-denied");
                        cJSON_AddStringToObject(o, "error", "permission denied: only root or corrald's own user "
                                                            "may control this instance");
                        conn_send(c, o);
                        cJSON_Delete(o);
                }
                conn_close(c);
                return;
        }
        c->active_usec = now_usec();
        if (s->n_conns > CONTROL_CONNS_MAX && !evict_one(s, c)) {
                if (ratelimit_below(&s->refuse_log, now_usec(), NULL))
                        log_warning("control: refused a client (pid %d): %u connections, each with a request in progress",
                                    (int) c->pid, s->n_conns - 1);
                send_busy(c, "too many control connections");
                conn_close(c);
                return;
        }
        conn_dispatch(c);
}

/* ---- server ------------------------------------------------------------- */

static int mkdir_parents(const char *path, mode_t mode) {
        char buf[256];
        snprintf(buf, sizeof(buf), "%s", path);
        char *slash = strrchr(buf, '/');
        if (!slash || slash == buf)
                return 0;
        *slash = 0;
        for (char *p = buf + 1; *p; p++)
                if (*p == '/') {
                        *p = 0;
                        if (mkdir(buf, mode) == -1 && errno != EEXIST)
                                return -errno;
                        *p = '/';
                }
        if (mkdir(buf, mode) == -1 && errno != EEXIST)
                return -errno;
        return 0;
}

/* Whether dir (st: its stat) is one root made and handed to its owner, as
 * systemd does with RuntimeDirectory= for a DynamicUser= service (units
 * that share /run/corral leave it to the instance started last): writable
 * by its owner only, and every directory above it root's and writable by
 * nobody else, so no other user can have made or replaced it. */
static bool handed_out_by_root(const char *dir, const struct stat *st) {
        char real[PATH_MAX];
        struct stat up;

        if (st->st_mode & (S_IWGRP | S_IWOTH))
                return false;
        if (!realpath(dir, real))
                return false;
        char *slash = strrchr(real, '/');
        if (!slash)
                return false;
        *slash = 0;
        if (stat("/", &up) == -1 || up.st_uid != 0 || (up.st_mode & (S_IWGRP | S_IWOTH)))
                return false;
        size_t n = strlen(real);
        for (size_t i = 1; i <= n; i++) {
                if (i < n && real[i] != '/')
                        continue;
                char c = real[i];
                real[i] = 0;
                bool ok = stat(real, &up) == 0 && up.st_uid == 0 && !(up.st_mode & (S_IWGRP | S_IWOTH));
                real[i] = c;
                if (!ok)
                        return false;
        }
        return true;
}

/* The directory the socket goes in must be trusted (SPEC §7): owned by
 * root or by us (or, for root, handed by root to its owner), and writable
 * by nobody else — or, like /tmp, sticky, so
 * that nobody else can remove or rename what we put there — and not
 * reached through a symlink someone else owns (they could re-point it).
 * Returns 0, or a negative errno after logging why. */
static int check_control_dir(const char *path) {
        char dir[PATH_MAX];
        struct stat st;
        uid_t me = geteuid();

        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (!slash)
                snprintf(dir, sizeof(dir), ".");
        else if (slash == dir)
                dir[1] = 0;
        else
                *slash = 0;

        if (lstat(dir, &st) == -1)
                return log_error_errno(-errno, "control socket directory %s: %m", dir);
        if (S_ISLNK(st.st_mode)) {
                if (st.st_uid != 0 && st.st_uid != me)
                        return log_error_errno(-EPERM, "control socket directory %s is a symlink owned by uid %u; "
                                               "refusing it (only root's or uid %u's are trusted)",
                                               dir, (unsigned) st.st_uid, (unsigned) me);
                if (stat(dir, &st) == -1)
                        return log_error_errno(-errno, "control socket directory %s: %m", dir);
        }
        if (!S_ISDIR(st.st_mode))
                return log_error_errno(-ENOTDIR, "control socket directory %s is not a directory", dir);
        if (st.st_uid != 0 && st.st_uid != me && !(me == 0 && handed_out_by_root(dir, &st)))
                return log_error_errno(-EPERM, "control socket directory %s is owned by uid %u; refusing it "
                                       "(only root's or uid %u's are trusted, or one root handed to its owner)",
                                       dir, (unsigned) st.st_uid, (unsigned) me);
        if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX))
                return log_error_errno(-EPERM, "control socket directory %s is writable by group or others "
                                       "(mode %04o); refusing it", dir, (unsigned) (st.st_mode & 07777));
        return 0;
}

/* Remove path if it is a socket (a stale one of ours); leave anything else
 * alone. Returns 0 when path is free now, or a negative errno. */
static int unlink_socket(const char *path) {
        struct stat st;
        if (lstat(path, &st) == -1)
                return errno == ENOENT ? 0 : -errno;
        if (!S_ISSOCK(st.st_mode))
                return -EEXIST;
        if (unlink(path) == -1 && errno != ENOENT)
                return -errno;
        return 0;
}

static int control_server_listen(ControlServer *s, uv_loop_t *loop);

int control_server_adopt(ControlServer *s, uv_loop_t *loop, int fd, const char *path, ControlHandler handler,
                         void *userdata) {
        *s = (ControlServer) {
                .handler = handler,
                .userdata = userdata,
                .evict_log = RATELIMIT_INIT(10 * USEC_PER_SEC, 5),
                .refuse_log = RATELIMIT_INIT(10 * USEC_PER_SEC, 5),
        };
        s->path = strdup(path);
        if (!s->path) {
                safe_close(fd);
                return -ENOMEM;
        }
        int r = uv_pipe_init(loop, &s->pipe, 0);
        if (r < 0) {
                safe_close(fd);
                return log_error_errno(r, "control socket: %m");
        }
        s->pipe.data = s;
        s->active = true;
        (void) fd_cloexec(fd, true);
        r = uv_pipe_open(&s->pipe, fd);
        if (r < 0) {
                safe_close(fd);
                return log_error_errno(r, "cannot adopt the control socket %s: %m", path);
        }
        return control_server_listen(s, loop);
}

int control_server_fd(const ControlServer *s) {
        uv_os_fd_t fd;
        if (!s->active || uv_fileno((const uv_handle_t *) &s->pipe, &fd) < 0)
                return -EBADF;
        return fd;
}

int control_conn_fd(const ControlConn *c) {
        uv_os_fd_t fd;
        if (c->closed || uv_fileno((const uv_handle_t *) &c->pipe, &fd) < 0)
                return -EBADF;
        return fd;
}

int control_server_start(ControlServer *s, uv_loop_t *loop, const char *path, ControlHandler handler,
                         void *userdata) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int r;

        *s = (ControlServer) {
                .handler = handler,
                .userdata = userdata,
                .evict_log = RATELIMIT_INIT(10 * USEC_PER_SEC, 5),
                .refuse_log = RATELIMIT_INIT(10 * USEC_PER_SEC, 5),
        };
        if (strlen(path) >= sizeof(sa.sun_path))
                return log_error_errno(-ENAMETOOLONG, "control socket path %s is too long", path);
        strcpy(sa.sun_path, path);

        r = mkdir_parents(path, geteuid() == 0 ? 0755 : 0700);
        if (r < 0)
                return log_error_errno(r, "cannot create the directory of %s: %m", path);

        /* Another live instance of the same name answers there: refuse
         * rather than steal its socket. A dead one left a stale file. */
        _cleanup_close_ int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if ((r = check_control_dir(path)) < 0)
                return r;
        if (probe >= 0 && connect(probe, (struct sockaddr *) &sa, sizeof(sa)) == 0)
                return log_error_errno(-EADDRINUSE, "control socket %s: another corrald is running there", path);
        r = unlink_socket(path);
        if (r == -EEXIST)
                return log_error_errno(r, "control socket %s: a file that is not a socket is there; refusing to "
                                       "replace it", path);
        if (r < 0)
                return log_error_errno(r, "cannot remove the stale control socket %s: %m", path);

        s->path = strdup(path);
        if (!s->path)
                return -ENOMEM;
        r = uv_pipe_init(loop, &s->pipe, 0);
        if (r < 0)
                return log_error_errno(r, "control socket: %m");
        s->pipe.data = s;
        s->active = true;

        /* Bound under a temporary name, listening, then renamed into place:
         * a client that finds the path always finds it listening (bound
         * and not yet listening, connect() is refused and the socket looks
         * stale). Too long a path for the suffix binds in place. */
        char tmp[sizeof(sa.sun_path)];
        bool renamed = strlen(path) + strlen(".tmp") < sizeof(tmp);
        snprintf(tmp, sizeof(tmp), "%s%s", path, renamed ? ".tmp" : "");
        if (renamed)
                (void) unlink_socket(tmp);
        /* Mode 0600 from the start: a umask around bind() leaves no window
         * in which the socket is more open than that. */
        mode_t old = umask(0177);
        r = uv_pipe_bind(&s->pipe, tmp);
        umask(old);
        if (r < 0)
                return log_error_errno(r, "cannot bind control socket %s: %m", tmp);
        r = control_server_listen(s, loop);
        if (r >= 0 && renamed && rename(tmp, path) == -1) {
                r = log_error_errno(-errno, "cannot rename control socket %s to %s: %m", tmp, path);
                (void) unlink(tmp);
        }
        return r;
}

static int control_server_listen(ControlServer *s, uv_loop_t *loop) {
        const char *path = s->path;
        int r = uv_listen((uv_stream_t *) &s->pipe, 64, on_connection);
        if (r < 0)
                return log_error_errno(r, "cannot listen on control socket %s: %m", path);
        if (uv_idle_init(loop, &s->idle) == 0) {
                s->idle.data = s;
                s->idle_ready = true;
        }
        if (uv_timer_init(loop, &s->sweep) == 0) {
                s->sweep.data = s;
                s->sweep_active = true;
                uv_unref((uv_handle_t *) &s->sweep);
                (void) uv_timer_start(&s->sweep, on_sweep, CONTROL_SWEEP_MS, CONTROL_SWEEP_MS);
        }
        log_info("control socket: %s", path);
        return 0;
}

void control_server_stop(ControlServer *s) {
        if (!s->active)
                return;
        s->active = false;
        while (s->conns)
                conn_close(s->conns);
        if (s->idle_ready) {
                s->idle_ready = s->idle_active = false;
                uv_close((uv_handle_t *) &s->idle, NULL);
        }
        if (s->sweep_active) {
                s->sweep_active = false;
                uv_timer_stop(&s->sweep);
                uv_close((uv_handle_t *) &s->sweep, NULL);
        }
        uv_close((uv_handle_t *) &s->pipe, NULL);
        if (s->path)
                (void) unlink_socket(s->path);
        free(s->path);
        s->path = NULL;
}
