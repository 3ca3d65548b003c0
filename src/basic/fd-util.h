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
