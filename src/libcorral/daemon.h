/* daemon: the sd-daemon(3) calls libcorral needs, written here so
 * that the library (and every worker linked with it) does not load
 * libsystemd and what it pulls in (libgcrypt, liblzma, libzstd, liblz4,
 * libcap): about 0.6 ms of dynamic linking at every worker start, which is
 * a third of a crash's replacement time (bench/respawn). The semantics are
 * sd-daemon's, as documented in sd_notify(3), sd_listen_fds(3) and
 * sd_is_socket(3); corrald speaks the same protocol (SPEC §3).
 * Internal: not installed, not exported. */
#pragma once

#include <stdbool.h>

/* Send state (VAR=VALUE lines) to $NOTIFY_SOCKET (a path, or "@name" for
 * an abstract socket). > 0 sent, 0 when NOTIFY_SOCKET is unset, or
 * -errno. */
int daemon_notify(const char *state);

/* The number of sockets passed in LISTEN_FDS for this process (LISTEN_PID
 * is ours), from fd 3 on, each made close-on-exec; 0 when none. With
 * ret_names, a NULL-terminated array of LISTEN_FDNAMES' names ("unknown"
 * for each when the variable is unset), malloc'ed: the caller frees each
 * string and the array. -EINVAL when a variable is malformed. */
int daemon_listen_fds(char ***ret_names);

/* WATCHDOG_USEC when WATCHDOG_PID is unset or ours (sd_watchdog_enabled(3)),
 * else 0. */
unsigned long long daemon_watchdog_usec(void);

/* Is fd a listening stream socket? */
bool daemon_is_listening_stream(int fd);
