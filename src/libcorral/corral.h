/* corral.h: the worker side of corral, the pre-fork service manager.
 *
 * A corral worker is started like a socket-activated Type=notify systemd
 * service (see corral(3) and docs/protocol.md). This library wraps what a
 * worker in C needs:
 *
 *   - listening sockets in "shared" balance:  corral_listen_fds()
 *   - state notifications to the master:      corral_ready(), corral_status(),
 *                                             corral_stopping(), corral_watchdog()
 *   - its identity:                           corral_worker_id(), corral_generation()
 *   - connections handed off by the master
 *     in "round-robin"/"least-conn":          corral_accept(), corral_accept_nonblock()
 *     and the close reports least-conn uses:  corral_closed()
 *     and hand-offs lost at the fd limit:     corral_fd_limit()
 *   - messages between workers and master:    corral_send(), corral_recv_message(),
 *                                             corral_set_message_handler()
 *
 * Conventions: functions return >= 0 on success and a negative errno on
 * failure; the library never logs, never raises signals and is not
 * thread-safe (call it from one thread). It keeps no state besides the IPC
 * channel reader.
 *
 * libuv users: see <corral-uv.h>, which yields uv_tcp_t / uv_pipe_t handles. */
#ifndef CORRAL_H
#define CORRAL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The first listening fd, as in sd_listen_fds(3). */
#define CORRAL_LISTEN_FDS_START 3

/* Number of listening sockets passed in shared balance (fds
 * CORRAL_LISTEN_FDS_START..), 0 when none (round-robin, least-conn, or
 * not started by corrald or systemd), or a negative errno. Checks
 * LISTEN_PID, marks the fds close-on-exec; does not unset the variables.
 * When ret_names is not NULL it gets a NULL-terminated array of the
 * LISTEN_FDNAMES names, which the caller frees (each string, then the
 * array). */
int corral_listen_fds(char ***ret_names);

/* sd_notify(3) one-liners. Return > 0 when the message was sent, 0 when
 * NOTIFY_SOCKET is unset (not under corrald or systemd), or a negative
 * errno. */
int corral_ready(void);
int corral_stopping(void);
int corral_watchdog(void);
int corral_status(const char *format, ...) __attribute__((format(printf, 1, 2)));

/* CORRAL_WORKER_ID (the slot, stable across restarts of that slot) and
 * CORRAL_GENERATION (bumped by every reload). Return the value (>= 0),
 * -ENOENT when the variable is unset, -EINVAL when it is not a number. */
int corral_worker_id(void);
int corral_generation(void);

/* The IPC channel to the master (CORRAL_IPC_FD), marked close-on-exec on
 * first use. Returns the fd, -ENOENT when unset, -EBADF when it is not
 * an open socket. Poll it for POLLIN to use the non-blocking calls below;
 * after each wakeup, call them until they return -EAGAIN, as the library
 * may have read several items at once. Do not read it yourself. */
int corral_ipc_fd(void);

/* Receive the next connection handed off by the master (round-robin and
 * least-conn). Blocks until one arrives. Returns the connection's fd,
 * close-on-exec and blocking, owned by the caller; *ret_listener_index
 * (may be NULL) gets the index of the listener it came from, in
 * LISTEN_FDS order. Messages that arrive meanwhile go to the message
 * handler, or are kept for corral_recv_message(). Returns -EINTR when a
 * signal interrupted the wait, -ECONNRESET when the master closed the
 * channel, or another negative errno. */
int corral_accept(unsigned *ret_listener_index);
/* The same without waiting: -EAGAIN when no connection is ready now. */
int corral_accept_nonblock(unsigned *ret_listener_index);

/* Report that n >= 1 handed-off connections were closed, for least-conn
 * and recycle.max_requests. Never blocks: when the channel is full the
 * count is kept and sent with the next report (reports coalesce). Returns
 * 0 or a negative errno. */
int corral_closed(unsigned n);

/* Report that n >= 1 hand-offs arrived without their connection: the
 * kernel could not give this process the fd (recvmsg() set MSG_CTRUNC:
 * it is at its RLIMIT_NOFILE), and closed it. The master then hands this
 * worker no connection for a while (docs/protocol.md). corral_accept()
 * and <corral-uv.h> call it themselves; only code that reads the channel
 * in some other way needs it. At most one report a second goes out: the
 * counts in between are added up and sent with the first call into the
 * library that reads or reports after that second (or with the next call
 * of this). Never blocks. Returns 0 or a negative errno. */
int corral_fd_limit(unsigned n);

/* Who a message is for (corral_send) or from (CorralMessage.from); slot
 * numbers are >= 0. */
#define CORRAL_MASTER (-1)   /* to: the master (logged, `corralctl messages`) */
#define CORRAL_ALL (-2)      /* to: every worker, this one included */
#define CORRAL_OTHERS (-3)   /* to: every other worker */
#define CORRAL_CTL (-4)      /* from: `corralctl send` */

/* Send a message: json is one JSON value (whitespace outside strings is
 * removed, so pretty-printed text is fine), at most 64 KiB as given and
 * 65472 bytes once compacted. `to` is
 * CORRAL_MASTER, CORRAL_ALL, CORRAL_OTHERS or a slot number. May wait
 * briefly while the master drains the channel (it always reads). Returns 0,
 * -EINVAL for invalid JSON or target, -EMSGSIZE when too long, or another
 * negative errno. Delivery to other workers is best effort (SPEC §6). */
int corral_send(int to, const char *json);

typedef struct CorralMessage {
        int from;          /* CORRAL_CTL or the sender's slot number */
        const char *data;  /* the JSON value, NUL-terminated */
        size_t data_len;
} CorralMessage;

/* Take the next message from the master, without waiting. Fills *ret,
 * whose data stays valid until the next call into the library. Returns 0,
 * -EAGAIN when none is ready, -ECONNRESET when the master closed the
 * channel, or another negative errno. Hand-offs that arrive meanwhile are
 * kept for corral_accept(). */
int corral_recv_message(CorralMessage *ret);

/* Have messages delivered to handler as they are read (by any call that
 * reads the channel) instead of kept for corral_recv_message(). NULL
 * restores keeping. msg->data is valid during the call only. */
typedef void (*corral_message_handler_t)(const CorralMessage *msg, void *userdata);
void corral_set_message_handler(corral_message_handler_t handler, void *userdata);

/* Messages lost by this worker: kept ones beyond the library's bound,
 * and malformed lines from the master (which should not happen). */
unsigned long corral_messages_dropped(void);

/* Parse one message line of the channel (without its newline) as the
 * master writes it, for code that reads the channel itself, such as
 * <corral-uv.h>. data points into line (not NUL-terminated; use
 * data_len), except for a line without "data": then it is a static,
 * NUL-terminated "null". Returns 0 or -EINVAL. */
int corral_parse_message(const char *line, size_t len, CorralMessage *ret);

#ifdef __cplusplus
}
#endif

#endif
