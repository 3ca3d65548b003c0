/* client: one connection to corrald's control socket.
 *
 * Speaks docs/internals/control-protocol.md: one JSON request per line,
 * then reply lines until the one with "type": "result". Every wait is
 * bounded by a deadline computed from the caller's timeout. Never logs;
 * callers turn the -errno values below into messages (ctl.c). */
#pragma once

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdint.h>

#include "macros.h"

/* Longest line either side may send, newline excluded (protocol: 64 KiB). */
#define CLIENT_LINE_MAX (64U * 1024U)
/* A reply line may be longer: `status` of 4096 workers is about 1 MiB.
 * corrald sends at most 4 MiB unread to one client. */
#define CLIENT_REPLY_MAX (8U * 1024U * 1024U)

typedef struct Client Client;

/* Called for each line before the result ({"type":"progress"}, or the
 * {"type":"message"} lines of `messages -f`), in arrival order, with its
 * "message" ("" if none; never NULL) and the whole line. */
typedef void (*client_progress_t)(const char *message, const cJSON *line, void *userdata);

/* Connect to the socket at path, waiting at most timeout_usec while the
 * listen backlog is full. Returns 0, or -ENOENT (no such socket),
 * -ECONNREFUSED (nobody listening: a stale socket), -EACCES/-EPERM,
 * -ENOTSOCK, -ENAMETOOLONG, -ETIMEDOUT, -EREMOTEIO (the server is not
 * trusted: it runs as neither root nor our own uid, and — for root — the
 * socket is in a place others than root and its directory's owner
 * control) or another -errno. */
int client_connect(const char *path, uint64_t timeout_usec, Client **ret);

/* Accepts NULL; returns NULL. Closes the connection. */
Client *client_free(Client *c);
static inline void client_freep(Client **c) {
        client_free(*c);
}
#define _cleanup_client_free_ _cleanup_(client_freep)

/* When *flag becomes non-zero (set from a signal handler), a pending
 * client_call() returns -EINTR instead of waiting on. */
void client_set_interrupt(Client *c, volatile sig_atomic_t *flag);

/* Send request and read replies until the result, at most timeout_usec in
 * all. Lines of an unknown type are skipped (room for later protocol
 * additions). On success returns 0 and the result object (ok true or false,
 * "ok" guaranteed to be a boolean) in *ret_result, owned by the caller.
 * Errors: -ETIMEDOUT; -ECONNRESET (closed before a result); -EBADMSG (a
 * reply line that is not a JSON object with a string "type", or a result
 * without a boolean "ok"); -EMSGSIZE (a reply line, or the request, over
 * CLIENT_LINE_MAX); -EINTR (see client_set_interrupt); -ENOMEM; -errno. */
int client_call(Client *c, const cJSON *request, uint64_t timeout_usec, client_progress_t progress,
                void *userdata, cJSON **ret_result);

/* Connect to path and make one request, as client_connect() and
 * client_call(). When corrald answers "busy" (all its control connections
 * have a request in progress), try again on a new connection after
 * 10-40 ms, until the deadline; then that answer is the result. */
int client_request(const char *path, uint64_t timeout_usec, const cJSON *request, client_progress_t progress,
                   void *userdata, cJSON **ret_result);
