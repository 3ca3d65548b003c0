/* fd-util: the few fd operations every module needs. Async-signal-safe
 * where noted, because spawn.c uses them between fork() and exec(). */
#include <fcntl.h>
#include <unistd.h>

#include "fd-util.h"

int safe_close(int fd) {
        if (fd >= 0) {
                int saved = errno;
                /* Linux always releases the fd, even on EINTR; never retry. */
                (void) close(fd);
                errno = saved;
        }
        return -EBADF;
}

int fd_cloexec(int fd, bool cloexec) {
        int flags = fcntl(fd, F_GETFD);
        if (flags == -1)
                return -errno;
        int nflags = cloexec ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
        if (nflags != flags && fcntl(fd, F_SETFD, nflags) == -1)
                return -errno;
        return 0;
}

int fd_nonblock(int fd, bool nonblock) {
        int flags = fcntl(fd, F_GETFL);
        if (flags == -1)
                return -errno;
        int nflags = nonblock ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
        if (nflags != flags && fcntl(fd, F_SETFL, nflags) == -1)
                return -errno;
        return 0;
}

int fd_move_to(int fd, int target) {
        if (fd == target)
                return fd_cloexec(fd, false);
        /* dup2() never sets FD_CLOEXEC on the new descriptor. */
        if (dup2(fd, target) == -1)
                return -errno;
        return 0;
}

int loop_write(int fd, const void *buf, size_t len) {
        const char *p = buf;
        while (len > 0) {
                ssize_t n = write(fd, p, len);
                if (n == -1) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += n;
                len -= (size_t) n;
        }
        return 0;
}
