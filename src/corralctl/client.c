/* client: control-socket connection and line framing; see client.h.
 *
 * The socket is non-blocking and every read and write waits in poll() for
 * what is left of the call's deadline, so a server that stalls can delay
 * corralctl by at most the timeout. Reply bytes are buffered until a
 * newline; a reply line longer than CLIENT_REPLY_MAX bytes ends the call
 * with -EMSGSIZE. Bytes that arrive after a result stay buffered for
 * the next call on the same connection. */
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "fd-util.h"
#include "util.h"

struct Client {
        int fd;
        char *buf;              /* cap bytes; grows to CLIENT_REPLY_MAX + 1 for a long reply line */
        size_t len, cap;
        volatile sig_atomic_t *interrupt;
};

Client *client_free(Client *c) {
        if (!c)
                return NULL;
        safe_close(c->fd);
        free(c->buf);
        free(c);
        return NULL;
}

void client_set_interrupt(Client *c, volatile sig_atomic_t *flag) {
        c->interrupt = flag;
}

static void sleep_usec(uint64_t usec) {
        struct timespec ts = { .tv_sec = (time_t) (usec / USEC_PER_SEC),
                               .tv_nsec = (long) (usec % USEC_PER_SEC) * 1000 };
        (void) nanosleep(&ts, NULL);
}

/* Whether only root and the directory's owner can change what is in st's
 * directory: writable by nobody else (a sticky /tmp does not count: anyone
 * may create a socket there), and owned by root unless any_owner. */
static bool dir_trusted(const struct stat *st, bool any_owner) {
        return S_ISDIR(st->st_mode) && (any_owner || st->st_uid == 0) && !(st->st_mode & (S_IWGRP | S_IWOTH));
}

/* A server running as root or as ourselves is trusted. Root also trusts an
 * instance running as another user (DynamicUser=, User=) when only root
 * and the owner of the socket's directory could have put the socket there
 * — as with RuntimeDirectory=: every directory above it is root's and
 * writable by nobody else, the directory itself is writable by its owner
 * only, and every symlink on the way is root's. corrald refuses any other
 * place for itself (control.c), and another user cannot make such a
 * directory where root's corralctl looks (/run/corral), so they cannot
 * pass off a server of theirs as an instance. */
static bool server_trusted(const char *path, uid_t uid) {
        char buf[PATH_MAX], real[PATH_MAX];
        struct stat st;

        if (uid == 0 || uid == geteuid())
                return true;
        if (geteuid() != 0)
                return false;
        if (lstat(path, &st) == -1 || !S_ISSOCK(st.st_mode))
                return false;
        /* Symlinks on the path as given: root's only. */
        if (snprintf(buf, sizeof(buf), "%s", path) >= (int) sizeof(buf))
                return false;
        for (char *p = buf + 1; (p = strchr(p, '/')); p++) {
                *p = 0;
                if (lstat(buf, &st) == -1 || (S_ISLNK(st.st_mode) && st.st_uid != 0)) {
                        *p = '/';
                        return false;
                }
                *p = '/';
        }
        /* Every directory of the resolved path. */
        char *slash = strrchr(buf, '/');
        if (slash)
                *slash = 0;
        else
                strcpy(buf, ".");
        if (!realpath(buf[0] ? buf : "/", real))
                return false;
        size_t n = strlen(real);
        if (stat("/", &st) == -1 || !dir_trusted(&st, n == 1))
                return false;
        for (size_t i = 1; i <= n && n > 1; i++) {
                if (i < n && real[i] != '/')
                        continue;
                char c = real[i];
                real[i] = 0;
                bool ok = stat(real, &st) == 0 && dir_trusted(&st, i == n);
                real[i] = c;
                if (!ok)
                        return false;
        }
        return true;
}

int client_connect(const char *path, uint64_t timeout_usec, Client **ret) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        uint64_t deadline = now_usec() + timeout_usec;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);

        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        for (;;) {
                if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0)
                        break;
                /* A non-blocking AF_UNIX connect() fails with EAGAIN when the
                 * server's listen backlog is full (unix(7)); it never returns
                 * EINPROGRESS, so retry briefly until the deadline. */
                if (errno != EAGAIN)
                        return -errno;
                if (now_usec() >= deadline)
                        return -ETIMEDOUT;
                sleep_usec(10 * USEC_PER_MSEC);
        }

        /* Trust replies only from a server we have reason to believe is the
         * instance asked for: a fake corrald could report success for an
         * operation that never happened (SO_PEERCRED: the credentials at
         * the server's listen()). */
        struct ucred cred;
        socklen_t cl = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == -1)
                return -errno;
        if (!server_trusted(path, cred.uid))
                return -EREMOTEIO;

        Client *c = calloc(1, sizeof(Client));
        if (!c)
                return -ENOMEM;
        c->cap = CLIENT_LINE_MAX + 1;
        c->buf = malloc(c->cap);
        if (!c->buf) {
                free(c);
                return -ENOMEM;
        }
        c->fd = TAKE_FD(fd);
        *ret = c;
        return 0;
}

/* poll() for events until deadline. Returns 0 when ready, -ETIMEDOUT, -EINTR
 * (interrupt flag set) or -errno. */
static int wait_fd(Client *c, short events, uint64_t deadline) {
        for (;;) {
                if (c->interrupt && *c->interrupt)
                        return -EINTR;
                uint64_t now = now_usec();
                if (now >= deadline)
                        return -ETIMEDOUT;
                uint64_t ms = (deadline - now + 999) / 1000;
                struct pollfd p = { .fd = c->fd, .events = events };
                int n = poll(&p, 1, (int) MIN(ms, (uint64_t) 60000));
                if (n < 0 && errno != EINTR)
                        return -errno;
                if (n > 0)
                        return 0;
        }
}

static int send_line(Client *c, const char *s, size_t len, uint64_t deadline) {
        while (len > 0) {
                /* MSG_NOSIGNAL: a closed peer gives EPIPE, not SIGPIPE. */
                ssize_t n = send(c->fd, s, len, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN)
                                return -errno;
                        int r = wait_fd(c, POLLOUT, deadline);
                        if (r < 0)
                                return r;
                        continue;
                }
                s += n;
                len -= (size_t) n;
        }
        return 0;
}

/* Interpret one complete line (NUL-terminated in place, no newline).
 * Returns 1 and the result in *ret for a result line, 0 for a line that
 * was handled or skipped, or -EBADMSG / -ENOMEM. */
static int handle_line(char *line, size_t len, client_progress_t progress, void *userdata, cJSON **ret) {
        if (len == 0)
                return 0;
        if (memchr(line, '\0', len))
                return -EBADMSG;
        cJSON *j = cJSON_ParseWithOpts(line, NULL, true);
        if (!j)
                return -EBADMSG;
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "type");
        if (!cJSON_IsObject(j) || !cJSON_IsString(type)) {
                cJSON_Delete(j);
                return -EBADMSG;
        }
        if (strcmp(type->valuestring, "result") == 0) {
                if (!cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(j, "ok"))) {
                        cJSON_Delete(j);
                        return -EBADMSG;
                }
                *ret = j;
                return 1;
        }
        /* Other types are ignored, as the protocol asks of clients. */
        bool known = strcmp(type->valuestring, "progress") == 0 || strcmp(type->valuestring, "message") == 0;
        if (progress && known) {
                const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "message");
                progress(cJSON_IsString(m) ? m->valuestring : "", j, userdata);
        }
        cJSON_Delete(j);
        return 0;
}

/* Consume every complete line in the buffer. Returns like handle_line(). */
static int drain_lines(Client *c, client_progress_t progress, void *userdata, cJSON **ret) {
        int r = 0;
        size_t start = 0;
        while (start < c->len) {
                char *nl = memchr(c->buf + start, '\n', c->len - start);
                if (!nl)
                        break;
                *nl = '\0';
                size_t n = (size_t) (nl - (c->buf + start));
                r = handle_line(c->buf + start, n, progress, userdata, ret);
                start += n + 1;
                if (r != 0)
                        break;
        }
        memmove(c->buf, c->buf + start, c->len - start);
        c->len -= start;
        return r;
}

int client_call(Client *c, const cJSON *request, uint64_t timeout_usec, client_progress_t progress,
                void *userdata, cJSON **ret_result) {
        uint64_t deadline = now_usec() + timeout_usec;
        cJSON *result = NULL;
        int r;

        _cleanup_free_ char *s = cJSON_PrintUnformatted(request);
        if (!s)
                return -ENOMEM;
        size_t len = strlen(s);
        if (len > CLIENT_LINE_MAX)
                return -EMSGSIZE;
        s[len] = '\n'; /* replaces the NUL; we send exactly len + 1 bytes */
        int write_error = send_line(c, s, len + 1, deadline);
        if (write_error == -ETIMEDOUT || write_error == -EINTR)
                return write_error;
        /* On EPIPE/ECONNRESET keep reading: a server that refuses us writes
         * its one error result before closing, and that result is the
         * better explanation. */

        for (;;) {
                r = drain_lines(c, progress, userdata, &result);
                if (r < 0)
                        return r;
                if (r > 0) {
                        *ret_result = result;
                        return 0;
                }
                if (c->len == c->cap) {
                        /* A reply line may be long: the status of thousands
                         * of workers. Grow up to CLIENT_REPLY_MAX. */
                        if (c->cap >= CLIENT_REPLY_MAX + 1)
                                return -EMSGSIZE;
                        size_t cap = MIN(c->cap * 2, (size_t) CLIENT_REPLY_MAX + 1);
                        char *b = realloc(c->buf, cap);
                        if (!b)
                                return -ENOMEM;
                        c->buf = b;
                        c->cap = cap;
                }
                ssize_t n = read(c->fd, c->buf + c->len, c->cap - c->len);
                if (n > 0) {
                        c->len += (size_t) n;
                        continue;
                }
                if (n == 0)
                        return write_error < 0 ? write_error : -ECONNRESET;
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN)
                        return errno == EPIPE ? -ECONNRESET : -errno;
                r = wait_fd(c, POLLIN, deadline);
                if (r < 0)
                        return r;
        }
}

static bool is_busy(const cJSON *result) {
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(result, "code");
        return cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(result, "ok")) && cJSON_IsString(code) &&
               strcmp(code->valuestring, "busy") == 0;
}

int client_request(const char *path, uint64_t timeout_usec, const cJSON *request, client_progress_t progress,
                   void *userdata, cJSON **ret_result) {
        uint64_t deadline = now_usec() + timeout_usec;
        for (unsigned attempt = 0;; attempt++) {
                _cleanup_client_free_ Client *c = NULL;
                cJSON *result = NULL;
                uint64_t now = now_usec();
                if (now >= deadline)
                        return -ETIMEDOUT;
                int r = client_connect(path, deadline - now, &c);
                if (r < 0)
                        return r;
                r = client_call(c, request, deadline - now_usec(), progress, userdata, &result);
                if (r < 0)
                        return r;
                /* Spread the retries of many clients refused together. */
                uint64_t pause = (10 + (uint64_t) (getpid() + attempt * 7) % 30) * USEC_PER_MSEC;
                if (!is_busy(result) || now_usec() + pause >= deadline) {
                        *ret_result = result;
                        return 0;
                }
                cJSON_Delete(result);
                sleep_usec(pause);
        }
}
