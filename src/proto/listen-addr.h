/* listen-addr: parsing of `listen` entries (SPEC §2).
 *
 *   [NAME=]HOST:PORT     IPv4 literal or "localhost"
 *   [NAME=][V6]:PORT     IPv6 literal in brackets
 *   [NAME=]PORT          all IPv4 interfaces
 *   [NAME=]unix:/path    AF_UNIX stream socket at an absolute path
 *
 * Pure: no I/O, no name resolution (the master never blocks on DNS). */
#pragma once

#include <stdbool.h>
#include <sys/socket.h>

#define LISTEN_NAME_MAX 255

typedef struct ListenAddr {
        char name[LISTEN_NAME_MAX + 1];  /* "" when the entry had no NAME= */
        struct sockaddr_storage addr;
        socklen_t addrlen;
        char display[128];               /* canonical text, e.g. "127.0.0.1:8080" */
} ListenAddr;

/* Parse s into *ret. On failure returns -EINVAL and points *ret_reason at a
 * static explanation of what was expected. */
int listen_addr_parse(const char *s, ListenAddr *ret, const char **ret_reason);

/* Whether s is acceptable as an fd name (LISTEN_FDNAMES): 1..255 printable
 * ASCII characters, no ':' (the separator) and no whitespace. */
bool fdname_is_valid(const char *s);
