/* fd-util: the few fd operations every module needs. Async-signal-safe
 * where noted, because spawn.c uses them between fork() and exec(). */
#include <dirent.h>
#include <limits.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <string.h>
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

int fd_cloexec_from_proc(int first) {
        /* Big enough for a few hundred entries per call; on the stack,
         * as malloc() is off limits between fork() and exec(). */
        char buf[4096] __attribute__((aligned(__alignof__(struct dirent64))));
        int dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd == -1)
                return -errno;
        for (;;) {
                ssize_t n = getdents64(dfd, buf, sizeof(buf));
                if (n == -1) {
                        int r = -errno;
                        safe_close(dfd);
                        return r;
                }
                if (n == 0)
                        break;
                for (ssize_t off = 0; off < n;) {
                        struct dirent64 *de = (struct dirent64 *) (buf + off);
                        off += de->d_reclen;
                        /* Parse by hand: strtol() is not on the
                         * async-signal-safe list. */
                        long fd = 0;
                        const char *p = de->d_name;
                        if (*p < '0' || *p > '9')
                                continue;       /* "." and ".." */
                        for (; *p >= '0' && *p <= '9' && fd <= INT_MAX / 10; p++)
                                fd = fd * 10 + (*p - '0');
                        if (*p || fd > INT_MAX || fd < first || fd == dfd)
                                continue;
                        (void) fd_cloexec((int) fd, true);
                }
        }
        safe_close(dfd);
        return 0;
}

int fd_cloexec_to_limit(int first) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
                return -errno;
        /* The kernel caps the fd table at fs.nr_open (at most INT_MAX). */
        int max = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > INT_MAX ? INT_MAX : (int) rl.rlim_cur;
        for (int fd = first; fd >= 0 && fd < max; fd++)
                (void) fd_cloexec(fd, true);    /* EBADF for the gaps */
        return 0;
}

int fd_cloexec_from(int first) {
        if (close_range((unsigned) first, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
                return 0;
        if (fd_cloexec_from_proc(first) == 0)
                return 0;
        return fd_cloexec_to_limit(first);
}

size_t cmsg_close_all_with(struct msghdr *mh, int (*close_fd)(int fd)) {
        size_t n = 0;
        if (!mh->msg_control || mh->msg_controllen == 0)
                return 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                        continue;
                size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < k; i++) {
                        int fd;
                        /* CMSG_DATA() need not be aligned for int. */
                        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                        if (fd < 0)
                                continue;
                        (close_fd ? close_fd : safe_close)(fd);
                        /* Marked, so that a second call cannot close a
                         * number that may have been reused meanwhile. */
                        int none = -EBADF;
                        memcpy(CMSG_DATA(c) + i * sizeof(int), &none, sizeof(int));
                        n++;
                }
        }
        return n;
}

int cmsg_take_first_fd(struct msghdr *mh) {
        if (!mh->msg_control || mh->msg_controllen == 0)
                return -EBADF;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                        continue;
                size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < k; i++) {
                        int fd, none = -EBADF;
                        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                        if (fd < 0)
                                continue;
                        memcpy(CMSG_DATA(c) + i * sizeof(int), &none, sizeof(int));
                        return fd;
                }
        }
        return -EBADF;
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
