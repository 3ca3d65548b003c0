/* daemon: see daemon.h. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon.h"
#include "fd-util.h"
#include "macros.h"
#include "util.h"

int daemon_notify(const char *state) {
        const char *path = getenv("NOTIFY_SOCKET");
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        size_t len;

        if (!state)
                return -EINVAL;
        if (!path || !*path)
                return 0;
        len = strlen(path);
        if ((path[0] != '/' && path[0] != '@') || len > sizeof(sa.sun_path))
                return -EAFNOSUPPORT;
        if (path[0] == '/' && len == sizeof(sa.sun_path))
                return -EINVAL;         /* no room for the terminating NUL */
        memcpy(sa.sun_path, path, len);
        if (path[0] == '@')
                sa.sun_path[0] = '\0';
        socklen_t salen = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len + (path[0] == '/'));

        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *) &sa, salen) < 0)
                return -errno;
        return 1;
}

/* Is s a decimal number in [min, max]? */
static bool parse_in(const char *s, uint64_t min, uint64_t max, uint64_t *ret) {
        return parse_u64(s, ret) == 0 && *ret >= min && *ret <= max;
}

/* n names from "a:b:c", or n times "unknown" when s is NULL. */
static int split_names(const char *s, uint64_t n, char ***ret) {
        char **names = calloc((size_t) n + 1, sizeof(char *));
        if (!names)
                return -ENOMEM;
        for (uint64_t i = 0; i < n; i++) {
                const char *end = s ? strchrnul(s, ':') : NULL;
                names[i] = s ? strndup(s, (size_t) (end - s)) : strdup("unknown");
                if (!names[i]) {
                        strv_free(names);
                        return -ENOMEM;
                }
                if (s && !*end && i + 1 < n) {
                        strv_free(names);
                        return -EINVAL;         /* fewer names than fds */
                }
                if (s)
                        s = *end ? end + 1 : end;
        }
        if (s && *s) {
                strv_free(names);
                return -EINVAL;                 /* more names than fds */
        }
        *ret = names;
        return 0;
}

int daemon_listen_fds(char ***ret_names) {
        const char *e = getenv("LISTEN_PID");
        uint64_t pid, n;

        if (ret_names)
                *ret_names = NULL;
        if (!e)
                return 0;
        if (!parse_in(e, 1, INT_MAX, &pid))
                return -EINVAL;
        if ((pid_t) pid != getpid())
                return 0;               /* meant for another process */
        if (!parse_in(getenv("LISTEN_FDS"), 0, INT_MAX - 3, &n))
                return -EINVAL;
        for (uint64_t i = 0; i < n; i++)
                if (fcntl(3 + (int) i, F_SETFD, FD_CLOEXEC) < 0)
                        return -errno;
        if (ret_names && n > 0) {
                int r = split_names(getenv("LISTEN_FDNAMES"), n, ret_names);
                if (r < 0)
                        return r;
        }
        return (int) n;
}

bool daemon_is_listening_stream(int fd) {
        struct stat st;
        int type = 0, listening = 0;
        socklen_t len = sizeof(int);

        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode))
                return false;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM)
                return false;
        len = sizeof(int);
        return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening;
}

unsigned long long daemon_watchdog_usec(void) {
        const char *e = getenv("WATCHDOG_PID");
        uint64_t pid, usec;

        if (e && (!parse_in(e, 1, INT_MAX, &pid) || (pid_t) pid != getpid()))
                return 0;
        if (!parse_in(getenv("WATCHDOG_USEC"), 1, LONG_MAX, &usec))
                return 0;
        return usec;
}
