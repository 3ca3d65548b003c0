/* File-descriptor helpers: closing that tolerates -EBADF, flag setters,
 * the fds of SCM_RIGHTS messages, the sweep before exec. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
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

/* Mark every fd >= first FD_CLOEXEC, so that an exec() keeps only those
 * below it: close_range(CLOSE_RANGE_CLOEXEC) (Linux 5.11), else
 * fd_cloexec_from_proc(), else fd_cloexec_to_limit(). For use between
 * fork() and exec(): async-signal-safe, no malloc. Returns 0 or -errno. */
int fd_cloexec_from(int first);

/* The fallbacks, separately for the tests. _from_proc() reads
 * /proc/self/fd with getdents64() into a buffer on the stack (-ENOENT and
 * the like without /proc); _to_limit() tries every number up to the soft
 * RLIMIT_NOFILE, which no open fd can exceed while the limit only ever
 * grows (corrald raises it, never lowers it while running). */
int fd_cloexec_from_proc(int first);
int fd_cloexec_to_limit(int first);

/* Close every fd carried in mh's SCM_RIGHTS messages with close_fd
 * (safe_close when NULL) and mark their entries -EBADF; entries already
 * taken or closed (negative) are skipped. Returns how many were closed. Does not log. As systemd's cmsg_close_all(). */
size_t cmsg_close_all_with(struct msghdr *mh, int (*close_fd)(int fd));
static inline size_t cmsg_close_all(struct msghdr *mh) {
        return cmsg_close_all_with(mh, NULL);
}

/* Take the first fd of mh's SCM_RIGHTS messages out (its entry becomes
 * -EBADF, so that cmsg_close_all() then closes only the others). Returns
 * the fd, owned by the caller, or -EBADF when there is none. */
int cmsg_take_first_fd(struct msghdr *mh);

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
