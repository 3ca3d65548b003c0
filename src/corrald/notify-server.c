/* notify-server: see notify-server.h. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "closer.h"
#include "fd-util.h"
#include "log.h"
#include "notify-server.h"
#include "util.h"

/* sd_notify() messages are small; systemd itself accepts up to its page
 * size. Anything larger than this is dropped as truncated. */
#define NOTIFY_BUFFER_MAX 4096
/* As many fds as one datagram can carry, so that the kernel never has to
 * release some itself (MSG_CTRUNC), in our task, on the loop. */
#define NOTIFY_FDS_MAX CLOSER_MSG_FDS_MAX

/* Dropped datagrams are logged at most once per second, with a count, so a
 * stranger spraying the socket cannot flood the journal through us. */
_printf_(2, 3) static void drop(NotifyServer *s, const char *fmt, ...) {
        char why[256];
        va_list ap;
        uint64_t now = now_usec();

        s->n_dropped++;
        if (now - s->last_warn_usec < USEC_PER_SEC && s->last_warn_usec != 0)
                return;
        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        log_notice("notify socket: dropped a datagram: %s (%llu dropped so far)", why,
                   (unsigned long long) s->n_dropped);
        s->last_warn_usec = now;
}

static void on_readable(uv_poll_t *h, int status, int events);

static void on_closer_ready(CloserWaiter *w) {
        NotifyServer *s = w->userdata;
        if (s->fd >= 0)
                (void) uv_poll_start(&s->poll, UV_READABLE, on_readable);
}

/* Returns 1 when a datagram was processed, 0 when none is pending or the
 * closer has no room for what it might carry (then reading stops until it
 * has). */
static int receive_one(NotifyServer *s) {
        char buf[NOTIFY_BUFFER_MAX + 1];
        union {
                struct cmsghdr align;
                char raw[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * NOTIFY_FDS_MAX)];
        } control;
        struct iovec iov = { buf, sizeof(buf) - 1 };
        struct msghdr mh = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = &control,
                .msg_controllen = sizeof(control),
        };
        struct ucred *cred = NULL;

        if (!closer_ready()) {
                uv_poll_stop(&s->poll);
                closer_wait(&s->closer_waiter);
                return 0;
        }

        /* MSG_CMSG_CLOEXEC: passed fds must not leak into a worker forked
         * before we get to close them. MSG_TRUNC reports the real length. */
        ssize_t n = recvmsg(s->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
        if (n == -1) {
                if (errno == EAGAIN || errno == EINTR)
                        return 0;
                log_warning("notify socket: recvmsg failed: %m");
                return 0;
        }

        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
                    c->cmsg_len == CMSG_LEN(sizeof(struct ucred)))
                        cred = (struct ucred *) CMSG_DATA(c);

        /* Whoever sent them, the fds go to the closer: even a worker's may
         * be a socket whose close lingers, and the last reference may be
         * ours. */
        bool had_fds = cmsg_close_all_with(&mh, closer_close) > 0;

        if (!cred || cred->pid <= 0)
                drop(s, "no sender credentials");
        else if ((mh.msg_flags & MSG_TRUNC) || (size_t) n > sizeof(buf) - 1)
                drop(s, "from pid %d: longer than %d bytes", (int) cred->pid, NOTIFY_BUFFER_MAX);
        else if (mh.msg_flags & MSG_CTRUNC)
                drop(s, "from pid %d: too much ancillary data", (int) cred->pid);
        else {
                NotifyMsg msg;
                if (notify_msg_parse(buf, (size_t) n, &msg) < 0)
                        drop(s, "from pid %d: not a valid sd_notify message (empty, NUL byte or no VAR=VALUE)",
                             (int) cred->pid);
                else {
                        if (had_fds)
                                log_debug("notify socket: refused file descriptors sent by pid %d", (int) cred->pid);
                        s->callback(s->userdata, cred->pid, &msg);
                }
        }
        return 1;
}

void notify_server_drain(NotifyServer *s) {
        /* Bounded, so a flood cannot starve the rest of the loop; what is
         * left keeps the fd readable and comes back next iteration. */
        for (unsigned i = 0; i < 256 && s->fd >= 0; i++)
                if (receive_one(s) == 0)
                        break;
}

static void on_readable(uv_poll_t *h, int status, int events) {
        NotifyServer *s = h->data;
        notify_server_drain(s);
}

/* The path of the fallback: a directory of our own, made by mkdtemp()
 * (mode 0700), under $TMPDIR or /tmp. */
#define FALLBACK_PREFIX "corral-notify."
#define FALLBACK_NAME "notify"

static int fallback_path(char *buf, size_t size) {
        const char *tmp = getenv("TMPDIR");
        if (!tmp || tmp[0] != '/' || strlen(tmp) + sizeof("/" FALLBACK_PREFIX "XXXXXX/" FALLBACK_NAME) > size)
                tmp = "/tmp";
        snprintf(buf, size, "%s/" FALLBACK_PREFIX "XXXXXX", tmp);
        if (!mkdtemp(buf))
                return -errno;
        strcat(buf, "/" FALLBACK_NAME);
        return 0;
}

int notify_socket_path(const char *control, char *buf, size_t size) {
        struct sockaddr_un sa;
        if (control) {
                size_t n = strlen(control);
                if (n > 5 && strcmp(control + n - 5, ".sock") == 0)
                        n -= 5;
                if (n + strlen(".notify") < MIN(size, sizeof(sa.sun_path))) {
                        snprintf(buf, size, "%.*s.notify", (int) n, control);
                        return 0;
                }
                log_notice("notify socket: %.*s.notify would be longer than the %zu bytes a socket path may "
                           "have; using a directory of our own instead", (int) n, control,
                           sizeof(sa.sun_path) - 1);
        }
        return fallback_path(buf, MIN(size, sizeof(sa.sun_path)));
}

/* Remove a stale socket at path (one a dead corrald left): only a socket,
 * and only if nobody receives on it. Returns 0 when path is free, or a
 * negative errno after logging why not. */
static int clear_path(const char *path, const struct sockaddr_un *sa) {
        struct stat st;
        if (lstat(path, &st) == -1)
                return errno == ENOENT ? 0 : log_error_errno(-errno, "notify socket %s: %m", path);
        if (!S_ISSOCK(st.st_mode))
                return log_error_errno(-EEXIST, "notify socket %s: a file that is not a socket is there; "
                                       "refusing to replace it", path);
        _cleanup_close_ int probe = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (probe >= 0 && connect(probe, (const struct sockaddr *) sa, sizeof(*sa)) == 0)
                return log_error_errno(-EADDRINUSE, "notify socket %s: another corrald receives on it", path);
        if (unlink(path) == -1 && errno != ENOENT)
                return log_error_errno(-errno, "cannot remove the stale notify socket %s: %m", path);
        return 0;
}

int notify_server_start(NotifyServer *s, uv_loop_t *loop, const char *control, NotifyCallback cb,
                        void *userdata) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int r;

        *s = (NotifyServer) { .fd = -EBADF, .callback = cb, .userdata = userdata };
        /* A filesystem socket, not an abstract one: anyone may send to an
         * abstract name (it is in /proc/net/unix for all to read), but
         * sending to a socket file takes write permission on it (unix(7)).
         * Mode 0600 leaves only our own uid (and root): a stranger gets
         * EACCES and can hand us neither datagrams nor fds (SPEC §3). Its
         * directory is the control socket's, which control.c has made and
         * checked already. */
        r = notify_socket_path(control, sa.sun_path, sizeof(sa.sun_path));
        if (r < 0)
                return log_error_errno(r, "cannot make a directory for the notify socket: %m");
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return log_error_errno(-errno, "notify socket: %m");
        if ((r = clear_path(sa.sun_path, &sa)) < 0)
                return r;
        /* 0600 from the start: the umask leaves no window in which the
         * socket is more open. We are single-threaded here (the closer
         * thread does not create files). */
        mode_t old = umask(0177);
        r = bind(fd, (struct sockaddr *) &sa, sizeof(sa)) == -1 ? -errno : 0;
        umask(old);
        if (r < 0)
                return log_error_errno(r, "cannot bind the notify socket %s: %m", sa.sun_path);
        r = notify_server_adopt(s, loop, TAKE_FD(fd), cb, userdata);
        if (r < 0) {
                (void) unlink(sa.sun_path);
                return log_error_errno(r, "notify socket %s: %m", sa.sun_path);
        }
        return 0;
}

int notify_server_adopt(NotifyServer *s, uv_loop_t *loop, int fd_, NotifyCallback cb, void *userdata) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int one = 1, bufsize = 1024 * 1024;
        _cleanup_close_ int fd = fd_;

        *s = (NotifyServer) { .fd = -EBADF, .callback = cb, .userdata = userdata,
                              .closer_waiter = { .resume = on_closer_ready, .userdata = s } };
        (void) fd_cloexec(fd, true);
        (void) fd_nonblock(fd, true);
        socklen_t salen = sizeof(sa);
        if (getsockname(fd, (struct sockaddr *) &sa, &salen) == -1)
                return -errno;
        size_t len = salen > offsetof(struct sockaddr_un, sun_path) ? salen - offsetof(struct sockaddr_un, sun_path) : 0;
        if (len >= 2 && sa.sun_path[0] == '/') {
                /* A socket file (ours): the kernel may or may not count the
                 * terminating NUL in salen. */
                size_t n = strnlen(sa.sun_path, len);
                if (n >= sizeof(s->path))
                        return -EADDRNOTAVAIL;
                memcpy(s->path, sa.sun_path, n);
                s->path[n] = 0;
        } else if (len >= 2 && sa.sun_path[0] == 0 && len < sizeof(s->path) && !memchr(sa.sun_path + 1, 0, len - 1)) {
                /* An abstract name: older corralds bound one, and an
                 * upgrade from such a corrald hands it over. Its workers
                 * know only that name, so it is kept until the next start. */
                s->path[0] = '@';
                memcpy(s->path + 1, sa.sun_path + 1, len - 1);
                s->path[len] = 0;
        } else
                return -EADDRNOTAVAIL;
        if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) == -1)
                return -errno;
        (void) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof(bufsize));

        int r = uv_poll_init(loop, &s->poll, fd);
        if (r < 0)
                return r;
        s->poll.data = s;
        s->fd = TAKE_FD(fd);
        return uv_poll_start(&s->poll, UV_READABLE, on_readable);
}

void notify_server_stop(NotifyServer *s) {
        if (s->fd < 0)
                return;
        closer_unwait(&s->closer_waiter);
        uv_poll_stop(&s->poll);
        uv_close((uv_handle_t *) &s->poll, NULL);
        /* Datagrams still queued may carry fds; closing the socket
         * releases them in the closing task. */
        s->fd = closer_close(s->fd);
        /* A clean exit. (An upgrade never gets here: it carries the socket
         * across execve() and the next corrald adopts it, path and all.) */
        if (s->path[0] == '/') {
                (void) unlink(s->path);
                /* The fallback directory was ours alone; rmdir() leaves it
                 * if anything else is in it. */
                char *slash = strrchr(s->path, '/');
                if (slash && strcmp(slash + 1, FALLBACK_NAME) == 0) {
                        *slash = 0;
                        const char *base = strrchr(s->path, '/');
                        if (base && strncmp(base + 1, FALLBACK_PREFIX, strlen(FALLBACK_PREFIX)) == 0)
                                (void) rmdir(s->path);
                }
                s->path[0] = 0;
        }
}
