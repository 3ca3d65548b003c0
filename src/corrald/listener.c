/* listener: acquiring listening sockets. See listener.h. */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "fd-util.h"
#include "listener.h"
#include "util.h"

static int set_error(char **ret_error, int r, const char *fmt, ...) _printf_(3, 4);
static int set_error(char **ret_error, int r, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(ret_error, fmt, ap) < 0)
                *ret_error = NULL;
        va_end(ap);
        return r;
}

static int add(ListenerSet *s, int fd, const char *name, const char *display) {
        Listener *l = realloc(s->items, (s->n + 1) * sizeof(Listener));
        if (!l)
                return -ENOMEM;
        s->items = l;
        l = &s->items[s->n++];
        *l = (Listener) { .fd = fd };
        snprintf(l->name, sizeof(l->name), "%s", name);
        snprintf(l->display, sizeof(l->display), "%s", display);
        return 0;
}

/* Describe a socket we were given, for status output. */
static void describe_fd(int fd, char *buf, size_t n) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        char host[64];
        if (getsockname(fd, (struct sockaddr *) &ss, &len) == -1) {
                snprintf(buf, n, "fd %d", fd);
                return;
        }
        if (ss.ss_family == AF_INET) {
                struct sockaddr_in *in = (struct sockaddr_in *) &ss;
                inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
                snprintf(buf, n, "%s:%u", host, ntohs(in->sin_port));
        } else if (ss.ss_family == AF_INET6) {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &ss;
                inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
                snprintf(buf, n, "[%s]:%u", host, ntohs(in6->sin6_port));
        } else if (ss.ss_family == AF_UNIX) {
                struct sockaddr_un *un = (struct sockaddr_un *) &ss;
                if (len > offsetof(struct sockaddr_un, sun_path) && un->sun_path[0])
                        snprintf(buf, n, "unix:%.100s", un->sun_path);
                else
                        snprintf(buf, n, "unix:@%.100s", un->sun_path + 1);
        } else
                snprintf(buf, n, "fd %d", fd);
}

static int acquire_activated(ListenerSet *s, int n, char **names, char **ret_error) {
        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i, acc = 0;
                socklen_t len = sizeof(acc);
                char display[128];

                /* We hand these to workers as listening sockets and never
                 * call listen() on them ourselves: a datagram socket or an
                 * Accept=yes connection would break every worker. */
                if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) == -1 || !acc)
                        return set_error(ret_error, -ENOTSOCK,
                                         "inherited fd %d (%s) is not a listening socket; "
                                         "use ListenStream= with Accept=no in the .socket unit",
                                         fd, names && names[i] ? names[i] : "unnamed");
                describe_fd(fd, display, sizeof(display));
                if (add(s, fd, names && names[i] ? names[i] : "unknown", display) < 0)
                        return -ENOMEM;
        }
        s->activated = true;
        return 0;
}

static int bind_one(ListenerSet *s, const ListenAddr *a, unsigned idx, char **ret_error) {
        int family = a->addr.ss_family, one = 1;
        _cleanup_close_ int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        char name[LISTEN_NAME_MAX + 1];

        if (fd < 0)
                return set_error(ret_error, -errno, "%s: cannot create socket: %m", a->display);

        if (family == AF_UNIX) {
                const char *path = ((const struct sockaddr_un *) &a->addr)->sun_path;
                struct stat st;
                /* A socket file left by a previous run is removed only when
                 * nobody answers on it; a live one means another instance. */
                if (lstat(path, &st) == 0) {
                        if (!S_ISSOCK(st.st_mode))
                                return set_error(ret_error, -EEXIST, "%s: exists and is not a socket", a->display);
                        _cleanup_close_ int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                        if (probe >= 0 && connect(probe, (const struct sockaddr *) &a->addr, a->addrlen) == 0)
                                return set_error(ret_error, -EADDRINUSE, "%s: another process is listening there",
                                                 a->display);
                        (void) unlink(path);
                }
        } else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1)
                return set_error(ret_error, -errno, "%s: cannot set SO_REUSEADDR: %m", a->display);

        if (bind(fd, (const struct sockaddr *) &a->addr, a->addrlen) == -1)
                return set_error(ret_error, -errno, "%s: cannot bind: %m", a->display);
        if (listen(fd, SOMAXCONN) == -1)
                return set_error(ret_error, -errno, "%s: cannot listen: %m", a->display);

        if (a->name[0])
                snprintf(name, sizeof(name), "%s", a->name);
        else
                snprintf(name, sizeof(name), "listen%u", idx);
        if (add(s, fd, name, a->display) < 0)
                return -ENOMEM;
        TAKE_FD(fd);
        if (family == AF_UNIX &&
            !(s->items[s->n - 1].unlink_path = strdup(((const struct sockaddr_un *) &a->addr)->sun_path)))
                return -ENOMEM;
        return 0;
}

/* name as the body of a JSON string into buf (room for 6 bytes per byte
 * of name, plus one). */
static void json_escape(const char *name, char *buf) {
        static const char hex[] = "0123456789abcdef";
        for (const unsigned char *p = (const unsigned char *) name; *p; p++)
                if (*p == '"' || *p == '\\') {
                        *buf++ = '\\';
                        *buf++ = (char) *p;
                } else if (*p < 0x20) {
                        memcpy(buf, "\\u00", 4);
                        buf[4] = hex[*p >> 4];
                        buf[5] = hex[*p & 15];
                        buf += 6;
                } else
                        *buf++ = (char) *p;
        *buf = 0;
}

static void free_names(ListenerSet *s) {
        for (unsigned i = 0; i < s->n; i++) {
                free(s->node_handles ? s->node_handles[i] : NULL);
                free(s->node_data ? s->node_data[i] : NULL);
        }
        free(s->node_handles);
        free(s->node_data);
        s->node_data = NULL;
        free(s->fdnames);
        s->node_handles = NULL;
        s->fdnames = NULL;
}

/* LISTEN_FDNAMES and the NODE_HANDLE lines, from the listeners' names. */
static int build_names(ListenerSet *s) {
        size_t len = 1;
        free_names(s);
        for (unsigned i = 0; i < s->n; i++)
                len += strlen(s->items[i].name) + 1;
        s->fdnames = calloc(1, len);
        s->node_handles = calloc(s->n + 1, sizeof(char *));
        s->node_data = calloc(s->n + 1, sizeof(char *));
        if (!s->fdnames || !s->node_handles || !s->node_data)
                return -ENOMEM;
        for (unsigned i = 0; i < s->n; i++) {
                char name[LISTEN_NAME_MAX * 6 + 1];
                if (i > 0)
                        strcat(s->fdnames, ":");
                strcat(s->fdnames, s->items[i].name);
                json_escape(s->items[i].name, name);
                if (asprintf(&s->node_handles[i],
                             "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{\"type\":\"connection\","
                             "\"listener\":%u,\"name\":\"%s\"}}\n", i, name) < 0) {
                        s->node_handles[i] = NULL;
                        return -ENOMEM;
                }
        }
        return 0;
}

int listener_set_adopt(ListenerSet *s, int fd, const char *name, const char *display, const char *unlink_path,
                       bool activated) {
        (void) fd_cloexec(fd, true);
        if (add(s, fd, name, display) < 0) {
                safe_close(fd);
                return -ENOMEM;
        }
        s->activated = activated;
        if (unlink_path && !(s->items[s->n - 1].unlink_path = strdup(unlink_path)))
                return -ENOMEM;
        return build_names(s);
}

int listener_set_acquire(ListenerSet *s, const Config *c, char **ret_error) {
        char **names = NULL;
        int r;

        *s = (ListenerSet) {};
        *ret_error = NULL;

        /* unset_environment=1: these variables describe us, not our workers;
         * each worker gets its own set from spawn.c. */
        int n = sd_listen_fds_with_names(1, &names);
        if (n < 0)
                return set_error(ret_error, n, "cannot read LISTEN_FDS: %s", strerror(-n));
        if (n > 0)
                r = acquire_activated(s, n, names, ret_error);
        else {
                r = 0;
                for (unsigned i = 0; r >= 0 && i < c->n_listen; i++)
                        r = bind_one(s, &c->listen[i], i, ret_error);
        }
        strv_free(names);
        if (r >= 0)
                r = build_names(s);
        if (r < 0)
                listener_set_done(s);
        return r;
}

void listener_set_done(ListenerSet *s) {
        for (unsigned i = 0; i < s->n; i++) {
                safe_close(s->items[i].fd);
                if (s->items[i].unlink_path)
                        (void) unlink(s->items[i].unlink_path);
                free(s->items[i].unlink_path);
        }
        free_names(s);
        free(s->items);
        *s = (ListenerSet) {};
}
