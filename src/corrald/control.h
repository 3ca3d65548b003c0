/* control: the control socket's transport (docs/internals/control-protocol.md).
 *
 * Owns the listening AF_UNIX socket and one ControlConn per client: peer
 * credential check, newline framing with a size limit, bounded write
 * queues with back-pressure (a client that does not read its replies is
 * not read either), idle and half-sent-request time-outs, eviction of the
 * longest idle client when the table is full. A request that streams
 * (progress) keeps the connection busy until its result, and a busy
 * connection is never timed out or evicted. Requests are parsed to cJSON and handed to the manager's
 * dispatcher one at a time per connection; the dispatcher answers with
 * control_reply_*(), possibly later (a rollout), holding a reference. */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <uv.h>

#include "macros.h"
#include "policy.h"
#include "reply.h"

#define CONTROL_LINE_MAX (64 * 1024)

typedef struct ControlConn ControlConn;
typedef struct ControlServer ControlServer;

/* Handle one request. The handler must eventually send exactly one result
 * (control_reply_ok/control_reply_error) on c; it may keep a reference
 * (control_conn_ref) to answer later. It does not own req. */
typedef void (*ControlHandler)(void *userdata, ControlConn *c, const cJSON *req);

struct ControlServer {
        uv_pipe_t pipe;
        bool active;
        char *path;
        ControlHandler handler;
        void *userdata;
        unsigned n_conns;
        ControlConn *conns;
        uv_idle_t idle;            /* runs while a connection waits for its next batch */
        bool idle_ready, idle_active;
        uv_timer_t sweep;          /* closes idle and half-sent connections */
        bool sweep_active;
        RateLimit evict_log, refuse_log;
        uv_pipe_t drop;            /* accepts and closes a client we have no memory for */
        bool drop_busy, drop_pending;
};

/* Work out the socket path of SPEC §7 for instance `name`: explicit
 * (config/--control) wins, then $RUNTIME_DIRECTORY, /run/corral (root) or
 * $XDG_RUNTIME_DIR/corral. Returns a malloc'd path, or NULL when there is
 * nowhere to put it (non-root without XDG_RUNTIME_DIR). */
char *control_socket_path(const char *explicit_path, const char *name);

/* Create the directory if needed, refuse a path where another instance
 * answers, remove a stale socket, bind with mode 0600 and listen.
 * Returns 0 or -errno; logs what failed. */
int control_server_start(ControlServer *s, uv_loop_t *loop, const char *path, ControlHandler handler,
                         void *userdata);
/* Upgrade: the same with the listening socket the previous corrald bound
 * (takes fd; nothing is unlinked or bound). Returns 0 or -errno, logged. */
int control_server_adopt(ControlServer *s, uv_loop_t *loop, int fd, const char *path, ControlHandler handler,
                         void *userdata);
/* The listening socket's fd, or -EBADF; a client connection's fd, or -EBADF. */
int control_server_fd(const ControlServer *s);
int control_conn_fd(const ControlConn *c);
/* Close the listener and every connection; unlink the socket file. */
void control_server_stop(ControlServer *s);

/* Upgrade: the connections with no request in progress and no reply
 * waiting to be written (at most max, into ret), and what each has sent
 * that is not yet taken as a request (*ret points into its buffer). */
unsigned control_server_idle_conns(ControlServer *s, ControlConn **ret, unsigned max);
size_t control_conn_unread(const ControlConn *c, const char **ret);
/* Upgrade: take over such a connection from the previous corrald, with
 * what it had read of it, as if just accepted. Takes fd. Returns 0 or a
 * negative errno. */
int control_server_adopt_conn(ControlServer *s, int fd, const char *unread, size_t len);

ControlConn *control_conn_ref(ControlConn *c);
ControlConn *control_conn_unref(ControlConn *c);
/* Whether the client is still connected (replies to a gone client are dropped). */
bool control_conn_alive(const ControlConn *c);

/* Send obj (which has its own "type", e.g. "message") as one line while
 * a request is in progress: a streaming reply. Does not take obj. A client
 * that does not read is disconnected (bounded output). */
void control_send_event(ControlConn *c, cJSON *obj);
/* Send {"type":"progress","message":...}. */
_printf_(2, 3) void control_reply_progress(ControlConn *c, const char *fmt, ...);

/* The replies of work that outlives its request (a rollout) to the
 * connection that asked: client is a ControlConn. */
extern const ReplyOps control_reply_ops;
/* Send {"type":"result","ok":false,"error":...} and end the request. */
_printf_(2, 3) void control_reply_error(ControlConn *c, const char *fmt, ...);
/* Send {"type":"result","ok":true, ...fields} and end the request. Takes
 * ownership of fields (may be NULL). */
void control_reply_ok(ControlConn *c, cJSON *fields);
