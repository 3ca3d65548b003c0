/* control: see control.h.
 *
 * Connections use libuv pipes; reads are line-framed into a per-connection
 * buffer of CONTROL_LINE_MAX. A client that does not read its replies
 * cannot make the master buffer without bound: past CONTROL_WRITE_MAX of
 * queued output the connection is closed. While a request is in progress
 * further input is not read (requests are strictly sequential). */
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
#define CONTROL_CONNS_MAX 64

struct ControlConn {
        uv_pipe_t pipe;
        ControlServer *server;
        unsigned n_ref;
        bool closed;          /* uv_close() called */
        bool busy;            /* a request is in progress */
        bool dispatching;     /* inside conn_dispatch() */
        char *buf;
        size_t len;
        uid_t uid;
        pid_t pid;
        ControlConn *prev, *next;   /* the server's list of open connections */
};

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

static void on_write_done(uv_write_t *req, int status) {
        free(req->data);
        free(req);
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
        char *line = realloc(text, n + 2);
        if (!line) {
                free(text);
                conn_close(c);
                return;
        }
        line[n] = '\n';
        line[n + 1] = 0;

        if (uv_stream_get_write_queue_size((uv_stream_t *) &c->pipe) + n > CONTROL_WRITE_MAX) {
                log_warning("control: client pid %d does not read its replies; disconnecting", (int) c->pid);
                free(line);
                conn_close(c);
                return;
        }
        uv_write_t *req = malloc(sizeof(uv_write_t));
        if (!req) {
                free(line);
                conn_close(c);
                return;
        }
        uv_buf_t b = uv_buf_init(line, (unsigned) n + 1);
        req->data = line;
        if (uv_write(req, (uv_stream_t *) &c->pipe, &b, 1, on_write_done) < 0) {
                free(line);
                free(req);
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

static void conn_dispatch(ControlConn *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf);

/* The current request got its result: take the next one, if buffered,
 * and read again. Called from a handler (synchronous reply) or later (a
 * rollout's result); conn_dispatch() never re-enters itself. */
static void request_done(ControlConn *c) {
        c->busy = false;
        if (!c->dispatching)
                conn_dispatch(c);
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
        c->dispatching = true;
        while (!c->busy && !c->closed) {
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
        if (c->busy)
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
                c->len += (size_t) n;
                conn_dispatch(c);
                /* A full buffer of queued requests waits for the one in
                 * progress (reading has stopped); only a full buffer
                 * without any newline is an oversize line. */
                if (c->closed || c->len <= CONTROL_LINE_MAX || memchr(c->buf, '\n', c->len))
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

static void on_connection(uv_stream_t *server, int status) {
        ControlServer *s = server->data;
        struct ucred cred;
        socklen_t len = sizeof(cred);
        uv_os_fd_t fd;

        if (status < 0)
                return;
        ControlConn *c = calloc(1, sizeof(ControlConn));
        if (c)
                c->buf = malloc(CONTROL_LINE_MAX + 1);
        if (!c || !c->buf) {
                /* Accept and drop, or the listener stays readable forever. */
                uv_pipe_t tmp;
                uv_pipe_init(server->loop, &tmp, 0);
                if (uv_accept(server, (uv_stream_t *) &tmp) == 0)
                        uv_close((uv_handle_t *) &tmp, NULL);
                if (c)
                        free(c);
                return;
        }
        c->server = s;
        c->n_ref = 1;
        uv_pipe_init(server->loop, &c->pipe, 0);
        c->pipe.data = c;
        s->n_conns++;
        c->next = s->conns;
        if (s->conns)
                s->conns->prev = c;
        s->conns = c;
        if (uv_accept(server, (uv_stream_t *) &c->pipe) < 0) {
                conn_close(c);
                return;
        }
        if (uv_fileno((uv_handle_t *) &c->pipe, &fd) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1) {
                conn_close(c);
                return;
        }
        c->uid = cred.uid;
        c->pid = cred.pid;
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
        if (s->n_conns > CONTROL_CONNS_MAX) {
                send_simple(c, "result", false, "error", "too many control connections");
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

int control_server_start(ControlServer *s, uv_loop_t *loop, const char *path, ControlHandler handler,
                         void *userdata) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int r;

        *s = (ControlServer) { .handler = handler, .userdata = userdata };
        if (strlen(path) >= sizeof(sa.sun_path))
                return log_error_errno(-ENAMETOOLONG, "control socket path %s is too long", path);
        strcpy(sa.sun_path, path);

        r = mkdir_parents(path, geteuid() == 0 ? 0755 : 0700);
        if (r < 0)
                return log_error_errno(r, "cannot create the directory of %s: %m", path);

        /* Another live instance of the same name answers there: refuse
         * rather than steal its socket. A dead one left a stale file. */
        _cleanup_close_ int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe >= 0 && connect(probe, (struct sockaddr *) &sa, sizeof(sa)) == 0)
                return log_error_errno(-EADDRINUSE, "control socket %s: another corrald is running there", path);
        (void) unlink(path);

        s->path = strdup(path);
        if (!s->path)
                return -ENOMEM;
        r = uv_pipe_init(loop, &s->pipe, 0);
        if (r < 0)
                return log_error_errno(r, "control socket: %m");
        s->pipe.data = s;
        s->active = true;

        /* Mode 0600 from the start: a umask around bind() leaves no window
         * in which the socket is more open than that. */
        mode_t old = umask(0177);
        r = uv_pipe_bind(&s->pipe, path);
        umask(old);
        if (r < 0)
                return log_error_errno(r, "cannot bind control socket %s: %m", path);
        r = uv_listen((uv_stream_t *) &s->pipe, 64, on_connection);
        if (r < 0)
                return log_error_errno(r, "cannot listen on control socket %s: %m", path);
        log_info("control socket: %s", path);
        return 0;
}

void control_server_stop(ControlServer *s) {
        if (!s->active)
                return;
        s->active = false;
        while (s->conns)
                conn_close(s->conns);
        uv_close((uv_handle_t *) &s->pipe, NULL);
        if (s->path)
                (void) unlink(s->path);
        free(s->path);
        s->path = NULL;
}
