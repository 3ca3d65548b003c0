/* closer: closes file descriptors that others gave corrald, off the event
 * loop (SPEC §3: the master never closes an untrusted fd on its event loop
 * in a way that can block).
 *
 * Why: close() of the last reference to a file runs its release in the
 * closing task (fput() defers it to the return to user space, still in
 * that task). For a TCP socket with SO_LINGER and unsent data that is a
 * wait of up to the linger time (tcp_close(), sk_stream_wait_close()); for
 * a FUSE file, a FLUSH answered whenever the server likes. An fd we never
 * take, because the control buffer of recvmsg() was too small (MSG_CTRUNC),
 * is released the same way by the receiver. So fds that arrive in
 * SCM_RIGHTS from workers (IPC lines, notify datagrams) are never closed
 * on the loop: their numbers go down a pipe to one dedicated thread that
 * does nothing but read() numbers and close() them.
 *
 * That thread is the one exception to "the master is single-threaded"
 * (STYLE.md). It stays fork-safe because it calls only read() and close(),
 * takes no lock and allocates nothing after it started: a child forked by
 * spawn.c inherits no lock it could hold. Its signals are all blocked, so
 * every signal still reaches the loop's thread.
 *
 * Bounded: the pipe holds a bounded number of fds (its size is chosen from
 * RLIMIT_NOFILE, at most 16384). Before every recvmsg() that may carry
 * fds, the caller asks closer_ready(): true when the pipe has room for
 * another CLOSER_MSG_FDS_MAX (the kernel's SCM_MAX_FD, the most one
 * recvmsg() returns). When it is not, the caller does not read: it stops
 * polling its socket and registers a CloserWaiter, resumed once the thread
 * has caught up. So a stuck closer delays the input of the channels that
 * carry fds (what was sent waits in the kernel, and its senders get
 * EAGAIN or block), but the loop never blocks and never holds more than
 * the pipe's worth of fds. Lone fds closed outside a receive (a worker's
 * channel socket) that find the pipe full wait in a small array until it
 * has room; only if that overflows too is one closed on the loop, counted
 * and logged.
 *
 * Not covered: if corrald is out of fds (EMFILE) when recvmsg() installs
 * them, the kernel releases the rest itself, on the loop. corrald raises
 * RLIMIT_NOFILE to the hard limit and checks its fd budget before it
 * scales, so that is a last-resort case. Across an upgrade's execve(),
 * the thread dies and fds still queued are closed by execve() (they are
 * CLOEXEC), in the exec'ing thread.
 *
 * Owned by main.c (start) and manager.c (stop); used by ipc.c and
 * notify-server.c. Without closer_start() (unit tests), closer_close()
 * closes at once and closer_ready() is always true. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "list.h"

/* SCM_MAX_FD (include/net/scm.h): the most fds one sendmsg() can attach,
 * so the most one recvmsg() can return. A control buffer of this size is
 * never truncated for lack of room. */
#define CLOSER_MSG_FDS_MAX 253

typedef struct CloserWaiter CloserWaiter;
struct CloserWaiter {
        void (*resume)(CloserWaiter *w);   /* called once when closer_ready() turns true */
        void *userdata;
        bool waiting;
        LIST_FIELDS(CloserWaiter, waiters);
};

/* Create the pipe and the thread, and a (not yet started) poll handle on
 * loop for the waiters. Returns 0 or -errno; logs nothing. */
int closer_start(uv_loop_t *loop);

/* Close the poll handle (the thread keeps running until the process ends:
 * it may be inside a close() that cannot be cut short). Safe to call twice
 * or without closer_start(). */
void closer_stop(void);

/* Hand fd over to be closed by the thread; never blocks. Returns -EBADF
 * (as safe_close(), so fd = closer_close(fd) works). Ignores fd < 0. */
int closer_close(int fd);

/* Whether a recvmsg() may take up to CLOSER_MSG_FDS_MAX fds now, all of
 * which closer_close() then queues without waiting. */
bool closer_ready(void);

/* Call w->resume() once closer_ready() is true again (from the loop).
 * resume() must not wait again itself: it restarts polling, and the next
 * read asks again. Waiting twice is a no-op. closer_unwait() forgets w (before freeing it). */
void closer_wait(CloserWaiter *w);
void closer_unwait(CloserWaiter *w);

/* Counters for status/metrics and the tests: fds handed to the thread,
 * and fds closed on the loop because even the overflow was full. */
uint64_t closer_queued(void);
uint64_t closer_closed_on_loop(void);
