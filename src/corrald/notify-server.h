/* notify-server: corrald's private sd_notify socket for its workers.
 *
 * A datagram socket file with SO_PASSCRED and mode 0600, next to the
 * control socket: <dir>/<name>.notify for <dir>/<name>.sock, or, without a
 * control socket (or when that path would not fit sun_path), "notify" in a
 * directory of our own made by mkdtemp() under $TMPDIR or /tmp. Only our
 * uid (and root) may send to it (SPEC §3); the abstract socket of before
 * could be reached by every local user. NOTIFY_SOCKET is that path.
 *
 * Each datagram is checked (credentials present, not truncated, no NUL,
 * parseable) and handed to the callback with the sender's pid; the callback
 * decides whether that pid is a current worker. fds sent along are handed to the
 * closer thread (closer.h), never closed on the loop; while it has no
 * room, the socket is not read.
 *
 * The file is removed on a clean stop; an upgrade carries the socket across
 * execve() and the new corrald adopts it (path read back by getsockname()),
 * so workers keep their NOTIFY_SOCKET. */
#pragma once

#include <sys/types.h>
#include <uv.h>

#include "closer.h"
#include "notify-msg.h"

typedef void (*NotifyCallback)(void *userdata, pid_t pid, const NotifyMsg *msg);

typedef struct NotifyServer {
        uv_poll_t poll;
        int fd;
        char path[108];          /* NOTIFY_SOCKET value: the socket file's path ("@name" if adopted abstract) */
        NotifyCallback callback;
        void *userdata;
        uint64_t n_dropped;
        uint64_t last_warn_usec;
        CloserWaiter closer_waiter;   /* reading waits for the closer (closer.h) */
} NotifyServer;

/* Work out the path for a control socket at `control` (NULL: none) into
 * buf (size bytes, at most sun_path's 108 are used); for the fallback the
 * directory is created. Returns 0 or -errno; logs (notice) when it falls
 * back for length. */
int notify_socket_path(const char *control, char *buf, size_t size);

/* Create and bind the socket (see above: a stale socket file there is
 * removed, a live one or any other file is an error), then start polling.
 * s->path gets the path. Returns 0 or -errno, logged. */
int notify_server_start(NotifyServer *s, uv_loop_t *loop, const char *control, NotifyCallback cb,
                        void *userdata);

/* Upgrade: the same with the socket the previous corrald bound (takes fd):
 * workers keep the NOTIFY_SOCKET they were given. Returns 0 or -errno. */
int notify_server_adopt(NotifyServer *s, uv_loop_t *loop, int fd, NotifyCallback cb, void *userdata);

/* Read every pending datagram now. Called before reaping children, so a
 * READY=1 or STOPPING=1 sent just before exiting is seen before the exit. */
void notify_server_drain(NotifyServer *s);

/* Stop polling and close (the handle close completes on the loop); remove
 * the socket file (and the fallback directory). */
void notify_server_stop(NotifyServer *s);
