/* fd-util: the few fd operations every module needs. Async-signal-safe
 * where noted, because spawn.c uses them between fork() and exec(). */
#include <dirent.h>
#include <limits.h>
#include <fcntl.h>
#include <sys/resource.h>
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

/* The soft RLIMIT_NOFILE we started with, to give back to children. */
static struct rlimit saved_nofile;
static bool saved_nofile_valid;

int rlimit_nofile_raise(void) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
                return -errno;
        if (!saved_nofile_valid) {
                saved_nofile = rl;
                saved_nofile_valid = true;
        }
        if (rl.rlim_cur == rl.rlim_max)
                return 0;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == -1)
                return -errno;
        return 0;
}

int rlimit_nofile_restore(void) {
        struct rlimit rl;
        if (!saved_nofile_valid)
                return 0;
        if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
                return -errno;
        /* Keep the hard limit as it is now; only the soft one goes back. */
        rl.rlim_cur = saved_nofile.rlim_cur < rl.rlim_max ? saved_nofile.rlim_cur : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == -1)
                return -errno;
        return 0;
}

int fd_budget(unsigned *ret_max_fds, unsigned *ret_open_fds) {
        struct rlimit rl;
        unsigned n = 0;

        if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
                return -errno;
        if (ret_open_fds) {
                DIR *d = opendir("/proc/self/fd");
                if (!d)
                        return -errno;
                for (struct dirent *de; (de = readdir(d));)
                        if (de->d_name[0] != '.')
                                n++;
                closedir(d);
                /* Not counting the directory's own fd. */
                *ret_open_fds = n > 0 ? n - 1 : 0;
        }
        if (ret_max_fds)
                *ret_max_fds = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > UINT_MAX ? UINT_MAX : (unsigned) rl.rlim_cur;
        return 0;
}
