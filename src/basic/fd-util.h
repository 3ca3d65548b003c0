/* File-descriptor helpers: closing that tolerates -EBADF, flag setters. */
#pragma once

#include <stdbool.h>
#include "macros.h"

/* Close fd if it is valid; always returns -EBADF so callers can write
 * fd = safe_close(fd). Preserves errno. */
int safe_close(int fd);

static inline void closep(int *fd) {
        safe_close(*fd);
}
#define _cleanup_close_ _cleanup_(closep)

/* Set or clear FD_CLOEXEC / O_NONBLOCK. Return 0 or -errno. */
int fd_cloexec(int fd, bool cloexec);
int fd_nonblock(int fd, bool nonblock);

/* Move fd to exactly `target` (dup2 when different) and clear CLOEXEC on
 * the result. For use between fork() and exec(); async-signal-safe.
 * Returns 0 or -errno. */
int fd_move_to(int fd, int target);

/* Write the whole buffer, retrying on EINTR; for blocking fds only.
 * Returns 0 or -errno. */
int loop_write(int fd, const void *buf, size_t len);

/* Raise the soft RLIMIT_NOFILE to the hard one, as systemd does for
 * itself, remembering the original soft limit (first call only). Returns 0
 * or -errno. */
int rlimit_nofile_raise(void);

/* Put the soft RLIMIT_NOFILE back to what rlimit_nofile_raise() found (a
 * no-op if it was never called), so a child sees the limit it would
 * normally get (select(2) users need <= FD_SETSIZE). Async-signal-safe:
 * for use between fork() and exec(). Returns 0 or -errno. */
int rlimit_nofile_restore(void);

/* The file-descriptor budget of this process: *ret_max_fds the soft
 * RLIMIT_NOFILE (UINT_MAX if unlimited), *ret_open_fds how many are open
 * now (from /proc/self/fd). Either may be NULL. Returns 0 or -errno. */
int fd_budget(unsigned *ret_max_fds, unsigned *ret_open_fds);
