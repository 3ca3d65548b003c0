/* listener: the listening sockets an instance serves (SPEC §2, §3).
 *
 * Either received from systemd (socket activation, names from
 * FileDescriptorName=) or bound by corrald itself from the `listen` entries.
 * They are acquired once at start-up and kept for the life of the master:
 * workers of every generation inherit the same sockets, which is what makes
 * replacement seamless. All fds are CLOEXEC in the master. */
#pragma once

#include <stdbool.h>

#include "config.h"

typedef struct Listener {
        int fd;
        char name[LISTEN_NAME_MAX + 1];
        char display[128];
        char *unlink_path;       /* unix socket we created; removed at exit */
} Listener;

typedef struct ListenerSet {
        Listener *items;
        unsigned n;
        bool activated;          /* came from systemd */
        char *fdnames;           /* "a:b:c", ready for LISTEN_FDNAMES */
        /* Per listener, the line that hands a connection to a Node.js
         * worker (ipc "node", SPEC §6), newline included:
         * {"cmd":"NODE_HANDLE","type":"net.Socket","msg":{"type":"connection","listener":N,"name":NAME}} */
        char **node_handles;
        /* Per listener, the "data" Node's cluster workers share (an https
         * server's TLS ticket keys): the first worker's, as JSON, or NULL
         * (node-cluster.c). */
        char **node_data;
} ListenerSet;

/* Take the sockets systemd passed us, if any; otherwise bind c->listen.
 * Returns 0, or a negative errno with a message in *ret_error. */
int listener_set_acquire(ListenerSet *s, const Config *c, char **ret_error);

/* Close every socket and unlink the unix socket files we created. */
void listener_set_done(ListenerSet *s);

/* Upgrade: add a socket the previous corrald held (takes fd; made CLOEXEC
 * again). unlink_path may be NULL. Returns 0 or -ENOMEM. */
int listener_set_adopt(ListenerSet *s, int fd, const char *name, const char *display, const char *unlink_path,
                       bool activated);
