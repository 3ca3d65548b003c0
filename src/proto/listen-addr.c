/* listen-addr: parser for listen entries. See listen-addr.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include "listen-addr.h"
#include "util.h"

bool fdname_is_valid(const char *s) {
        size_t n = strlen(s);
        if (n == 0 || n > LISTEN_NAME_MAX)
                return false;
        for (const char *p = s; *p; p++)
                if (*p <= ' ' || *p >= 127 || *p == ':')
                        return false;
        return true;
}

static int parse_port(const char *s, uint16_t *ret) {
        uint64_t v;
        if (parse_u64(s, &v) < 0 || v < 1 || v > 65535)
                return -EINVAL;
        *ret = (uint16_t) v;
        return 0;
}

int listen_addr_parse(const char *s, ListenAddr *ret, const char **ret_reason) {
        ListenAddr a = {};
        const char *eq = strchr(s, '=');
        uint16_t port;

        *ret_reason = "expected HOST:PORT, [V6]:PORT, PORT or unix:/path, optionally prefixed NAME=";

        /* A NAME= prefix is recognised only before the address proper, so an
         * '=' inside a unix path after "unix:" is part of the path. */
        const char *unix_at = strstr(s, "unix:");
        if (eq && (!unix_at || eq < unix_at)) {
                size_t n = (size_t) (eq - s);
                if (n == 0 || n > LISTEN_NAME_MAX) {
                        *ret_reason = "the NAME= prefix must be 1-255 characters";
                        return -EINVAL;
                }
                memcpy(a.name, s, n);
                a.name[n] = 0;
                if (!fdname_is_valid(a.name)) {
                        *ret_reason = "the NAME= prefix must be printable ASCII without ':' or spaces";
                        return -EINVAL;
                }
                s = eq + 1;
        }

        if (startswith(s, "unix:")) {
                struct sockaddr_un *un = (struct sockaddr_un *) &a.addr;
                const char *path = s + 5;
                size_t n = strlen(path);
                if (path[0] != '/') {
                        *ret_reason = "a unix: listener needs an absolute path";
                        return -EINVAL;
                }
                if (n >= sizeof(un->sun_path)) {
                        *ret_reason = "the unix socket path is longer than 107 bytes";
                        return -EINVAL;
                }
                un->sun_family = AF_UNIX;
                memcpy(un->sun_path, path, n + 1);
                a.addrlen = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + n + 1);
                snprintf(a.display, sizeof(a.display), "unix:%s", path);
        } else if (s[0] == '[') {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &a.addr;
                const char *close = strchr(s, ']');
                char host[INET6_ADDRSTRLEN];
                if (!close || close[1] != ':' || (size_t) (close - s - 1) >= sizeof(host))
                        return -EINVAL;
                memcpy(host, s + 1, (size_t) (close - s - 1));
                host[close - s - 1] = 0;
                if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1 || parse_port(close + 2, &port) < 0)
                        return -EINVAL;
                in6->sin6_family = AF_INET6;
                in6->sin6_port = htons(port);
                a.addrlen = sizeof(*in6);
                /* Canonical form, as for IPv4: [0:0:0:0:0:0:0:1] shows as [::1]. */
                inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
                snprintf(a.display, sizeof(a.display), "[%s]:%u", host, port);
        } else {
                struct sockaddr_in *in = (struct sockaddr_in *) &a.addr;
                const char *colon = strrchr(s, ':');
                char host[64];
                in->sin_family = AF_INET;
                a.addrlen = sizeof(*in);
                if (!colon) {
                        if (parse_port(s, &port) < 0)
                                return -EINVAL;
                        in->sin_addr.s_addr = htonl(INADDR_ANY);
                        snprintf(a.display, sizeof(a.display), "0.0.0.0:%u", port);
                } else {
                        size_t n = (size_t) (colon - s);
                        if (n == 0 || n >= sizeof(host) || parse_port(colon + 1, &port) < 0)
                                return -EINVAL;
                        memcpy(host, s, n);
                        host[n] = 0;
                        if (strcmp(host, "localhost") == 0)
                                in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                        else if (strcmp(host, "*") == 0)
                                in->sin_addr.s_addr = htonl(INADDR_ANY);
                        else if (inet_pton(AF_INET, host, &in->sin_addr) != 1) {
                                *ret_reason = "HOST must be an IPv4 address, \"localhost\" or \"*\" "
                                              "(IPv6 goes in brackets; names are not resolved)";
                                return -EINVAL;
                        }
                        char txt[INET_ADDRSTRLEN];
                        inet_ntop(AF_INET, &in->sin_addr, txt, sizeof(txt));
                        snprintf(a.display, sizeof(a.display), "%s:%u", txt, port);
                }
                in->sin_port = htons(port);
        }

        *ret = a;
        *ret_reason = NULL;
        return 0;
}
