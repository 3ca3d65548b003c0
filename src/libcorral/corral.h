/* corral.h: the worker side of corral, the pre-fork service manager.
 *
 * A corral worker is started like a socket-activated Type=notify systemd
 * service (see corral(3) and docs/protocol.md). This library wraps what a
 * worker in C needs:
 *
 *   - the next connection in ANY balance, and
 *     messages dispatched meanwhile:         corral_next(), corral_next_nonblock(),
 *                                             corral_poll_fds(), corral_add_listener()
 *   - a graceful stop in one call:           corral_drain()
 *   - listening sockets in "shared" balance:  corral_listen_fds()
 *   - state notifications to the master:      corral_ready(), corral_status(),
 *                                             corral_stopping(), corral_watchdog(),
 *                                             corral_watchdog_usec()
 *   - its identity:                           corral_worker_id(), corral_generation()
 *   - connections handed off by the master
 *     in "round-robin"/"least-conn":          corral_accept(), corral_accept_nonblock()
 *     and the close reports least-conn uses:  corral_closed(), corral_flush()
 *     and hand-offs lost at the fd limit:     corral_fd_limit()
 *   - messages between workers and master:    corral_send(), corral_send_to(),
 *                                             corral_recv_message(), corral_message_from(),
 *                                             corral_set_message_handler()
 *
 * Conventions: functions return >= 0 on success and a negative errno on
 * failure; the library never logs, never raises signals and is not
 * thread-safe (call it from one thread). It keeps no state besides the IPC
 * channel reader and, once corral_next() or its kin are called, the set of
 * listening sockets it accepts from.
 *
 * libuv users: see <corral-uv.h>, which drives corral_next_nonblock() on a
 * libuv loop (CorralUvTake), or yields hand-offs as uv_tcp_t / uv_pipe_t
 * handles (CorralUv). */
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

/* The watchdog interval in µs the master (or systemd) expects
 * corral_watchdog() within (WATCHDOG_USEC, for this process), or 0 when
 * there is no watchdog; as sd_watchdog_enabled(3). Send WATCHDOG=1 every
 * half of it. */
unsigned long long corral_watchdog_usec(void);

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
 * count is kept and sent with the next report (reports coalesce).
 *
 * With corral_next(), call it for every connection it returned, whatever
 * the balance: the library counts the connections it accepted itself from
 * listening sockets and reports only the rest (a close is taken from the
 * self-accepted ones first while any are open, so the reported sum is
 * exact even when a worker has both).
 *
 * Batching: once the worker called corral_next() (which waits) or
 * corral_flush(), a report is only counted here and goes out, one line for
 * all, when the worker next waits in corral_next() or calls corral_flush()
 * (an event loop does so once per turn, before it waits), or when the
 * library next reads the channel. Before that, and after corral_drain(),
 * each call sends at once, as it always did. Returns 0 or a negative
 * errno. */
int corral_closed(unsigned n);

/* Send the close reports counted so far (and a held fd-limit report whose
 * second has passed) now, and from here on let corral_closed() only count:
 * call it once per turn of an event loop, before the loop waits. Never
 * blocks; what the channel cannot take now stays counted. Returns 0 or a
 * negative errno (-ENOENT without a channel). */
int corral_flush(void);

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

/* The typed form of a sender or recipient, instead of the int with
 * negative magic values above (which keep working). A zero-initialised
 * CorralPeer is invalid, never the master by accident. */
typedef enum CorralPeerKind {
        CORRAL_PEER_MASTER = 1,   /* to: the master (logged, `corralctl messages`) */
        CORRAL_PEER_ALL,          /* to: every worker, this one included */
        CORRAL_PEER_OTHERS,       /* to: every other worker */
        CORRAL_PEER_CTL,          /* from: `corralctl send` */
        CORRAL_PEER_SLOT,         /* to or from: the worker in slot .slot */
} CorralPeerKind;

typedef struct CorralPeer {
        CorralPeerKind kind;
        unsigned slot;            /* with CORRAL_PEER_SLOT only */
} CorralPeer;

/* corral_send() with a typed recipient, e.g.
 * corral_send_to((CorralPeer) { CORRAL_PEER_SLOT, 2 }, "\"hi\""). Returns
 * the same as corral_send(); -EINVAL for CORRAL_PEER_CTL or an unknown
 * kind. */
int corral_send_to(CorralPeer to, const char *json);

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

/* The sender of msg, typed: CORRAL_PEER_CTL, or CORRAL_PEER_SLOT with
 * the slot. Returns 0, or -EINVAL when msg->from is neither. */
int corral_message_from(const CorralMessage *msg, CorralPeer *ret_from);

/* ---- connections in any balance mode ----------------------------------
 *
 * A worker that takes its connections with these need not know the
 * balance: in "shared" they come from the listening sockets of LISTEN_FDS
 * (and any added with corral_add_listener()), accepted here; in
 * "round-robin", "least-conn" and "ip-hash" they are the master's
 * hand-offs on CORRAL_IPC_FD. Messages that arrive meanwhile, in any
 * balance, go to the message handler (corral_set_message_handler()) or
 * are kept for corral_recv_message().
 *
 * Fairness (SPEC §5): a listening socket is shared with the sibling
 * workers, so the library accepts one connection per readable listener
 * per turn, taking the listeners in turn, never until EAGAIN: a busy
 * worker leaves the rest of a burst to its siblings. The listeners are
 * made O_NONBLOCK (the flag is shared with the siblings, which need it
 * too: one may take a connection between our poll and our accept). */

/* Wait for the next connection and return its fd, blocking and
 * close-on-exec, owned by the caller; *ret_listener (may be NULL) gets
 * the index of the listener it came from (LISTEN_FDS order, then the
 * added ones; for a hand-off, the master's listener index). Before it
 * waits it sends the pending close reports (see corral_closed()). At the
 * fd limit (EMFILE and the like) a listener is left alone for 100 ms, the
 * connection to a sibling, and the wait goes on. Returns -EINTR when a
 * signal interrupted the wait (poll(2) is never restarted: check your
 * flags), -ECONNRESET once the master closed the channel (it is gone:
 * finish and exit), -ESHUTDOWN after corral_drain() once the connections
 * it kept are taken, -ENOENT when there is neither a channel nor a
 * listener, or another negative errno, after which the listener that
 * failed is no longer used. */
int corral_next(unsigned *ret_listener);

/* The same without waiting, for event loops: returns a non-blocking fd,
 * or -EAGAIN when this turn has nothing more. Watch the fds of
 * corral_poll_fds() for POLLIN and, after each wakeup, call this until it
 * returns -EAGAIN: it returns every hand-off the library read, and at
 * most one connection per listener that was readable when the turn began
 * (the first call after an -EAGAIN begins one). -EMFILE, -ENFILE,
 * -ENOBUFS or -ENOMEM: out of fds or memory, the connection stays queued
 * for a sibling; stop watching the listeners for a moment. Other errors
 * as corral_next(). Call corral_flush() before your loop waits. */
int corral_next_nonblock(unsigned *ret_listener);

/* The fds to watch for POLLIN with corral_next_nonblock(): the channel
 * (first, when there is one) and the listeners. Writes at most size of
 * them to ret_fds (may be NULL with size 0) and returns how many there
 * are, or a negative errno (e.g. from LISTEN_FDS). The set changes when
 * corral_next_nonblock() returns an error other than -EAGAIN (a listener
 * dropped, the channel closed) and after corral_drain() (it is empty):
 * ask again then, and stop watching the fds no longer listed. */
int corral_poll_fds(int *ret_fds, size_t size);

/* Accept from fd as well, a listening stream socket the worker opened
 * itself (e.g. when run by hand, without LISTEN_FDS). The library makes it
 * O_NONBLOCK and never closes it. Returns its listener index (after those
 * of LISTEN_FDS), -ENOTSOCK when fd is not a listening stream socket, or
 * another negative errno. */
int corral_add_listener(int fd);

/* Begin a graceful stop, for SIGTERM: says STOPPING=1 (so the master
 * hands this worker nothing new and starts its replacement), takes no new
 * connection from the listeners any more, reads what the channel holds
 * now (hand-offs sent before the master saw STOPPING=1, kept; messages
 * dispatched), and sends the pending close reports; from here on each
 * corral_closed() sends at once. Then stop watching the fds of
 * corral_poll_fds(), take the kept connections with corral_next() or
 * corral_next_nonblock() (neither waits any more) until they return
 * -ESHUTDOWN, serve what you have and exit. Idempotent (STOPPING=1 is said
 * once). Returns how many connections are kept (>= 0), or a negative
 * errno from sd_notify(). */
int corral_drain(void);

#ifdef __cplusplus
}
#endif

#endif
