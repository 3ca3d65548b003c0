/* ipc: the master's end of a worker's CORRAL_IPC_FD channel (SPEC §5, §6).
 *
 * A connected AF_UNIX stream socket. Worker -> master: newline-delimited
 * JSON lines (messages, close reports and fd-limit reports,
 * src/proto/ipc-msg.h). Master ->
 * worker: message lines and hand-offs (one byte, the listener index, with
 * the connection's fd in SCM_RIGHTS), a hand-off always between whole lines.
 *
 * Dialects (the instance's "ipc" key): in "node" the channel is also
 * Node.js's own (NODE_CHANNEL_FD): a hand-off is Node's NODE_HANDLE line
 * with the fd attached to it, Node's NODE_HANDLE_ACK lines are consumed,
 * a NODE_HANDLE_NACK (Node got the line without its fd) reports one
 * hand-off lost, as an fd-limit report does. Both dialects take a
 * "notify" line (sd_notify assignments over the channel, SPEC §3).
 *
 * Invariants:
 *   - Never blocks and never closes the channel because the worker does not
 *     read: outgoing lines wait in a bounded queue (IPC_QUEUE_MAX bytes)
 *     drained by a writable watcher; a line that does not fit is dropped
 *     and counted in `dropped`. Hand-offs are not queued: ipc_send_fd()
 *     succeeds or fails at once, so the caller can try another worker.
 *   - A malformed or oversize incoming line is dropped, counted in
 *     `malformed` and logged at a bounded rate; fds a worker attaches to
 *     its writes are refused (counted in `fds_refused`) and closed by the
 *     closer thread, never on the loop (closer.h). While the closer has
 *     no room, the channel is not read.
 *   - The channel closes only on EOF or a socket error (the worker is
 *     gone), or when the owner calls ipc_close().
 *
 * Embedded in its Worker (manager.h). Logs (log.h) only about what the
 * worker sent, rate-limited; sending reports errors to the caller. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "closer.h"
#include "ipc-msg.h"
#include "macros.h"
#include "policy.h"

/* IPC_LINE_MAX (64 KiB) comes from ipc-msg.h. */
#define IPC_QUEUE_MAX (256 * 1024)

/* Listener indexes that a hand-off byte can carry: 0..122, as 123 is '{',
 * the first byte of every message line (SPEC §6). */
#define IPC_LISTENER_INDEX_MAX 122
/* The longest node-dialect hand-off line (a listener's name is at most 255
 * bytes, 6 once escaped). */
#define IPC_HANDOFF_LINE_MAX 2048

typedef struct Ipc Ipc;
/* Called for each message line when on_message is NULL (the callback of
 * the first version, kept for its callers). `json` is the raw line text,
 * NUL-terminated, no newline. */
typedef void (*IpcLineCallback)(Ipc *ipc, const char *json);
/* Called for each valid message line. msg->data points into the line
 * buffer, valid only during the call; msg->peer/slot is the target ("to"),
 * whose slot number the owner checks against its slots. */
typedef void (*IpcMessageCallback)(Ipc *ipc, const IpcMessage *msg);
/* Called for each valid close report: n >= 1 connections closed. */
typedef void (*IpcClosedReportCallback)(Ipc *ipc, unsigned n);
/* Called for each valid fd-limit report: the worker lost n >= 1 hand-offs
 * because it could not receive their fds. */
typedef void (*IpcFdLimitCallback)(Ipc *ipc, unsigned n);
/* The node dialect: the line (ending in '\n') that hands a connection for
 * listener to this worker, written into buf (size bytes); returns its
 * length, or 0 when the worker cannot take one for that listener now. */
typedef size_t (*IpcHandoffLine)(Ipc *ipc, uint8_t listener, char *buf, size_t size);
/* The node dialect: one of Node's own lines the channel does not handle
 * itself (all but NODE_HANDLE_ACK/NACK): line is NUL-terminated, msg->cmd
 * points into it. */
typedef void (*IpcNodeCallback)(Ipc *ipc, const IpcMessage *msg, const char *line, size_t len);
/* The node dialect: a hand-off line went with fd. True when the callee
 * keeps fd (Node's cluster protocol answers each newconn, and a refused
 * connection must go elsewhere); the caller then must not close it. */
typedef bool (*IpcKeepHandoff)(Ipc *ipc, int fd, uint8_t listener);
/* n hand-offs, the newest sent, were taken back unread. */
typedef void (*IpcTakenBackCallback)(Ipc *ipc, unsigned n);
/* Called for each valid "notify" line: text (len bytes, NUL-terminated,
 * unescaped, may contain NUL bytes) as a datagram on NOTIFY_SOCKET would
 * carry it. */
typedef void (*IpcNotifyCallback)(Ipc *ipc, const char *text, size_t len);
/* Called once when the handle has been closed. */
typedef void (*IpcCloseCallback)(Ipc *ipc);

/* Hand-offs a worker may have in its channel unread (SPEC §5): at the
 * bound it is skipped, so a worker that stalls holds at most this many
 * connections, which come back when it dies (ipc_take_back()). */
#define IPC_INFLIGHT_MAX 16

/* A connection taken back from a channel: fd and its listener's index. */
typedef void (*IpcTakeBackCallback)(void *userdata, int fd, uint8_t listener_index);

struct Ipc {
        uv_poll_t poll;
        int fd;
        /* Hand-off accounting: the worker's end of the channel, kept by the
         * master (FIONREAD on it says how much the worker has not read; what
         * is still there when it dies can be read back), the bytes the
         * kernel took from us, and where each hand-off the worker may not
         * have read ends in that count (a ring, oldest first). */
        int peer_fd;             /* -EBADF: none (shared balance) */
        uint64_t sent;
        uint64_t inflight[IPC_INFLIGHT_MAX];
        uint64_t inflight_usec[IPC_INFLIGHT_MAX];   /* when each was sent (CLOCK_MONOTONIC) */
        uint8_t inflight_listener[IPC_INFLIGHT_MAX];
        uint16_t inflight_len[IPC_INFLIGHT_MAX];    /* bytes of each (the node dialect's are lines) */
        unsigned inflight_head, n_inflight;
        bool open;               /* the poll handle is initialised and not closed */
        int events;              /* what the poll handle watches now */
        bool read_paused;        /* waits for the closer to have room (closer_waiter) */
        CloserWaiter closer_waiter;

        char *buf;               /* partial incoming line, IPC_LINE_MAX + 1 */
        size_t len;
        bool discarding;         /* inside an oversize line, skip to its newline */

        char *out;               /* outgoing bytes out[out_head..out_len) */
        size_t out_head, out_len, out_cap;
        bool mid_line;           /* the bytes at out_head continue a partly written line */

        uint64_t dropped;        /* outgoing lines dropped: queue full */
        uint64_t malformed;      /* incoming lines dropped: malformed or oversize */
        uint64_t fds_refused;    /* fds the worker attached, closed unread */
        RateLimit log_limit;     /* for the log lines about malformed input */

        IpcLineCallback on_line;
        IpcMessageCallback on_message;
        IpcClosedReportCallback on_closed_report;
        IpcFdLimitCallback on_fd_limit;
        IpcNotifyCallback on_notify;
        IpcCloseCallback on_close;
        IpcDialect dialect;
        IpcHandoffLine handoff_line;     /* IPC_DIALECT_NODE: required for hand-offs */
        IpcNodeCallback on_node;         /* IPC_DIALECT_NODE: NULL counts them malformed */
        IpcKeepHandoff keep_handoff;     /* IPC_DIALECT_NODE: may be NULL */
        IpcTakenBackCallback on_taken_back;      /* may be NULL */
        const char *who;         /* for log messages, e.g. "worker 2" */
        void *userdata;
};

/* Take ownership of fd and start reading. The callbacks, who and userdata
 * are set by the caller beforehand; the rest of *ipc is initialised here.
 * Returns 0 or a negative errno (fd is closed on failure). */
int ipc_start(Ipc *ipc, uv_loop_t *loop, int fd);

/* Queue one line (a newline is appended); never blocks. Returns 0 when
 * the line was written or queued, -ENOBUFS when the queue is full (the
 * line is dropped and counted in ipc->dropped), -EINVAL for a line that
 * contains a newline or is longer than IPC_LINE_MAX, -ENOTCONN when the
 * channel is closed. Does not log. */
int ipc_send_line(Ipc *ipc, const char *line);

/* Hand a connection over: one byte (listener_index) with fd attached, or
 * in the node dialect the line handoff_line() makes with fd attached to it
 * (-EBUSY when it makes none), written only at a line boundary. If a line is partly written, its rest
 * is written first; if that does not go through, the hand-off is not
 * attempted. Returns 0 when the kernel took the fd (the caller then closes
 * its own copy), 1 when it did and keep_handoff() kept the caller's copy
 * (not to be closed), -EAGAIN when the channel is full now and -EBUSY when the
 * worker has IPC_INFLIGHT_MAX hand-offs unread (try another worker), -EPIPE/-ECONNRESET/-ENOTCONN when the worker is gone, -EINVAL
 * for an index above IPC_LISTENER_INDEX_MAX. fd is never closed here.
 * Does not log. */
int ipc_send_fd(Ipc *ipc, int fd, uint8_t listener_index);

/* A line with an fd that is not a hand-off (Node's listening handle in
 * shared balance): whole, at once, at a line boundary; only on a channel
 * without hand-offs (no peer kept), so that it can never be taken back as
 * a connection. Returns 0, -EAGAIN (try later), -EINVAL, or the error of a
 * dead channel. fd is never closed here. Does not log. */
int ipc_send_line_fd(Ipc *ipc, const char *line, int fd);

/* Bytes waiting in the outgoing queue. */
size_t ipc_queued(const Ipc *ipc);

/* Keep the worker's end of the channel (takes fd; closed with the
 * channel), for the hand-off bound and ipc_take_back(). After ipc_start(). */
void ipc_keep_peer(Ipc *ipc, int fd);
/* Hand-offs the worker has not read yet, as the kernel says now (0
 * without the peer). */
unsigned ipc_inflight(Ipc *ipc);
/* When the oldest of them was sent (CLOCK_MONOTONIC µs), 0 when none; as
 * of the last ipc_inflight(). */
static inline uint64_t ipc_oldest_unread(const Ipc *ipc) {
        return ipc->n_inflight ? ipc->inflight_usec[ipc->inflight_head] : 0;
}
/* Read back everything the worker has not read (the worker is gone, or
 * stalled): each connection goes to cb with the listener it was handed
 * for, the lines are dropped (counted in dropped). Returns the number of
 * connections. Does not log. */
unsigned ipc_take_back(Ipc *ipc, IpcTakeBackCallback cb, void *userdata);

/* Upgrade: the rest of a line the worker has partly received (up to and
 * including its newline), which must reach it before anything else; its
 * length, 0 when no line is half sent. *ret points into the queue. */
size_t ipc_unsent_tail(const Ipc *ipc, const char **ret);
/* Upgrade, on a channel just started: queue that rest to go first.
 * Returns 0, -EINVAL (not one line's rest, or the queue is not empty) or
 * -ENOMEM. */
int ipc_resume_line(Ipc *ipc, const char *tail, size_t len);

/* Log a warning about what this worker sent, "WHO: MESSAGE", within the
 * channel's log budget (IPC_LOG_BURST per 10 s; the next line that gets
 * through says how many were suppressed). */
_printf_(2, 3) void ipc_warn(Ipc *ipc, const char *fmt, ...);

/* Stop reading and close; on_close runs from the loop afterwards (only if
 * the handle was open). Queued lines are discarded. Safe to call twice. */
void ipc_close(Ipc *ipc);
