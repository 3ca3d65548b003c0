/* notify-server: corrald's private sd_notify socket for its workers.
 *
 * An abstract AF_UNIX datagram socket with SO_PASSCRED, its name picked by
 * the kernel (autobind), so nobody can take it before us. Each datagram is
 * checked (credentials present, not truncated, no NUL, parseable) and
 * handed to the callback with the sender's pid; the callback decides
 * whether that pid is a current worker. fds sent along are handed to the
 * closer thread (closer.h), never closed on the loop; while it has no
 * room, the socket is not read. */
#pragma once

#include <sys/types.h>
#include <uv.h>

#include "closer.h"
#include "notify-msg.h"

typedef void (*NotifyCallback)(void *userdata, pid_t pid, const NotifyMsg *msg);

typedef struct NotifyServer {
        uv_poll_t poll;
        int fd;
        char path[108];          /* NOTIFY_SOCKET value, "@" and the autobound name */
        NotifyCallback callback;
        void *userdata;
        uint64_t n_dropped;
        uint64_t last_warn_usec;
        CloserWaiter closer_waiter;   /* reading waits for the closer (closer.h) */
} NotifyServer;

/* Create, bind (autobind: s->path gets the kernel's name) and start
 * polling. `instance` is not part of the name any more; the parameter stays
 * for the caller's sake. Returns 0 or -errno. */
int notify_server_start(NotifyServer *s, uv_loop_t *loop, const char *instance, NotifyCallback cb,
                        void *userdata);

/* Upgrade: the same with the socket the previous corrald bound (takes fd):
 * workers keep the NOTIFY_SOCKET they were given. Returns 0 or -errno. */
int notify_server_adopt(NotifyServer *s, uv_loop_t *loop, int fd, NotifyCallback cb, void *userdata);

/* Read every pending datagram now. Called before reaping children, so a
 * READY=1 or STOPPING=1 sent just before exiting is seen before the exit. */
void notify_server_drain(NotifyServer *s);

/* Stop polling and close (the handle close completes on the loop). */
void notify_server_stop(NotifyServer *s);
