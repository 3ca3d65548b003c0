/* node-cluster: see node-cluster.h. The wire, as Node 18, 20 and 22 speak
 * it (lib/internal/cluster/child.js, primary.js, utils.js): every message
 * is {"cmd":"NODE_CLUSTER",...,"seq":N}; an answer carries "ack" = the
 * asker's seq; a message with an fd is wrapped as {"cmd":"NODE_HANDLE",
 * "type":"net.Native","msg":MESSAGE}, the fd on that line. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "fd-util.h"
#include "log.h"
#include "macros.h"
#include "node-cluster.h"
#include "util.h"

static void answered(NodeCluster *nc, const char *line, size_t len, bool accepted);

static void json_freep(cJSON **j) {
        cJSON_Delete(*j);
}
#define _cleanup_json_ _cleanup_(json_freep)

static bool is(const char *s, size_t n, const char *lit) {
        return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

static int send_json(Ipc *ipc, const cJSON *j) {
        _cleanup_free_ char *s = cJSON_PrintUnformatted(j);
        return s ? ipc_send_line(ipc, s) : -ENOMEM;
}

/* The listener's own address, for matching and for "sockname". */
static int listener_address(const Listener *l, struct sockaddr_storage *ret) {
        socklen_t len = sizeof(*ret);
        return getsockname(l->fd, (struct sockaddr *) ret, &len) == 0 ? 0 : -errno;
}

static int sockaddr_port(const struct sockaddr_storage *sa) {
        if (sa->ss_family == AF_INET)
                return ntohs(((const struct sockaddr_in *) sa)->sin_port);
        if (sa->ss_family == AF_INET6)
                return ntohs(((const struct sockaddr_in6 *) sa)->sin6_port);
        return -1;
}

/* Which of our listeners a queryServer means: the fd it names (a
 * listen({fd: N}) of LISTEN_FDS), the unix path, or the TCP port (0: the
 * first TCP listener). Node asks the address too, but the socket is what
 * the operator configured: the port decides. Returns 0 and the index, or
 * a negative errno for Node (-EADDRNOTAVAIL: none; -EAFNOSUPPORT: UDP). */
static int match_listener(const ListenerSet *ls, const cJSON *q, unsigned *ret) {
        const cJSON *fd = cJSON_GetObjectItemCaseSensitive(q, "fd");
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(q, "addressType");
        const cJSON *port = cJSON_GetObjectItemCaseSensitive(q, "port");
        const cJSON *address = cJSON_GetObjectItemCaseSensitive(q, "address");

        if (cJSON_IsNumber(fd) && fd->valuedouble >= 3 && fd->valuedouble < 3.0 + ls->n) {
                *ret = (unsigned) fd->valuedouble - 3;
                return 0;
        }
        if (cJSON_IsString(type))
                return -EAFNOSUPPORT;   /* "udp4", "udp6": dgram sockets */
        bool unix_path = cJSON_IsNumber(type) && type->valuedouble == -1;
        for (unsigned i = 0; i < ls->n; i++) {
                struct sockaddr_storage sa;
                if (listener_address(&ls->items[i], &sa) < 0)
                        continue;
                if (unix_path) {
                        const struct sockaddr_un *un = (const struct sockaddr_un *) &sa;
                        if (sa.ss_family == AF_UNIX && cJSON_IsString(address) &&
                            strncmp(un->sun_path, address->valuestring, sizeof(un->sun_path)) == 0) {
                                *ret = i;
                                return 0;
                        }
                } else if (cJSON_IsNumber(port) && sockaddr_port(&sa) >= 0 &&
                           (port->valuedouble == 0 || port->valuedouble == sockaddr_port(&sa))) {
                        *ret = i;
                        return 0;
                }
        }
        return -EADDRNOTAVAIL;
}

/* What the worker asked for, for the log: "port 3000", "/run/x.sock". */
static void describe_query(const cJSON *q, char *buf, size_t size) {
        const cJSON *port = cJSON_GetObjectItemCaseSensitive(q, "port");
        const cJSON *address = cJSON_GetObjectItemCaseSensitive(q, "address");
        const cJSON *fd = cJSON_GetObjectItemCaseSensitive(q, "fd");
        if (cJSON_IsNumber(fd))
                snprintf(buf, size, "fd %.0f", fd->valuedouble);
        else if (cJSON_IsNumber(port) && port->valuedouble >= 0)
                snprintf(buf, size, "port %.0f", port->valuedouble);
        else if (cJSON_IsString(address))
                snprintf(buf, size, "%.200s", address->valuestring);
        else
                snprintf(buf, size, "an unknown address");
}

static void add_sockname(cJSON *reply, const Listener *l) {
        struct sockaddr_storage sa;
        char host[INET6_ADDRSTRLEN] = "";
        if (listener_address(l, &sa) < 0 || (sa.ss_family != AF_INET && sa.ss_family != AF_INET6))
                return;   /* unix: Node sends none either */
        const void *a = sa.ss_family == AF_INET ? (const void *) &((struct sockaddr_in *) &sa)->sin_addr
                                                : (const void *) &((struct sockaddr_in6 *) &sa)->sin6_addr;
        (void) inet_ntop(sa.ss_family, a, host, sizeof(host));
        cJSON *s = cJSON_AddObjectToObject(reply, "sockname");
        cJSON_AddStringToObject(s, "address", host);
        cJSON_AddStringToObject(s, "family", sa.ss_family == AF_INET ? "IPv4" : "IPv6");
        cJSON_AddNumberToObject(s, "port", sockaddr_port(&sa));
}

/* The "data" every worker of a listener shares: the first one's (an
 * https server's TLS ticket keys; null otherwise), as Node's primary
 * keeps it (handle.data ||= message.data). */
static cJSON *shared_data(ListenerSet *ls, unsigned i, const cJSON *q) {
        const cJSON *data = cJSON_GetObjectItemCaseSensitive(q, "data");
        if (!ls->node_data[i] && data && !cJSON_IsNull(data))
                ls->node_data[i] = cJSON_PrintUnformatted(data);
        cJSON *d = ls->node_data[i] ? cJSON_Parse(ls->node_data[i]) : NULL;
        return d ? d : cJSON_CreateNull();
}

static void query_server(NodeCluster *nc, Ipc *ipc, ListenerSet *ls, bool shared, const cJSON *q, double seq) {
        char key[32] = "corral:none", what[256];
        unsigned i = 0;
        int err = match_listener(ls, q, &i);

        if (err == 0 && !nc->keys) {
                nc->keys = calloc(ls->n, sizeof(char *));
                nc->n_keys = nc->keys ? ls->n : 0;
                if (!nc->keys)
                        err = -ENOMEM;
        }
        if (err == 0 && nc->keys[i])
                err = -EADDRINUSE;   /* one server per listener and worker */
        if (err == 0)
                snprintf(key, sizeof(key), "corral:%u", i);

        _cleanup_json_ cJSON *reply = cJSON_CreateObject();
        if (!reply)
                return;
        cJSON_AddStringToObject(reply, "cmd", "NODE_CLUSTER");
        cJSON_AddStringToObject(reply, "key", key);
        cJSON_AddNumberToObject(reply, "ack", seq);
        cJSON_AddItemToObject(reply, "data", err == 0 ? shared_data(ls, i, q) : cJSON_CreateNull());
        cJSON_AddNumberToObject(reply, "seq", (double) ++nc->seq);

        if (err == 0 && shared) {
                /* The listening socket itself. Node's libuv expects it
                 * non-blocking (Node 18 hangs in accept() otherwise); the
                 * flag is the socket's, shared with every worker. */
                const Listener *l = &ls->items[i];
                (void) fd_nonblock(l->fd, true);
                cJSON_AddNumberToObject(reply, "errno", 0);
                _cleanup_json_ cJSON *wrap = cJSON_CreateObject();
                cJSON_AddStringToObject(wrap, "cmd", "NODE_HANDLE");
                cJSON_AddStringToObject(wrap, "type", "net.Native");
                cJSON_AddItemReferenceToObject(wrap, "msg", reply);
                _cleanup_free_ char *s = cJSON_PrintUnformatted(wrap);
                _cleanup_free_ char *line = NULL;
                err = s && asprintf(&line, "%s\n", s) >= 0 ? ipc_send_line_fd(ipc, line, l->fd) : -ENOMEM;
                if (err == 0) {
                        nc->keys[i] = strdup(key);
                        nc->cluster = true;
                        return;
                }
                cJSON_DeleteItemFromObject(reply, "errno");
                cJSON_ReplaceItemInObject(reply, "data", cJSON_CreateNull());
        } else if (err == 0) {
                /* Connections follow as newconn messages. */
                cJSON_AddNullToObject(reply, "errno");
                add_sockname(reply, &ls->items[i]);
                if (send_json(ipc, reply) == 0) {
                        nc->keys[i] = strdup(key);
                        nc->cluster = true;
                }
                return;
        }

        describe_query(q, what, sizeof(what));
        if (err == -EADDRNOTAVAIL)
                ipc_warn(ipc, "listen() on %s refused: this instance serves %s (Node reports EADDRNOTAVAIL); set "
                     "\"listen\" or the socket unit to the app's port, or the app's port to ours", what,
                     ls->fdnames && ls->n ? ls->items[0].display : "no socket");
        else if (err == -EADDRINUSE)
                ipc_warn(ipc, "listen() on %s refused: it already listens there (Node reports EADDRINUSE)", what);
        else if (err == -EAFNOSUPPORT)
                ipc_warn(ipc, "a UDP socket (dgram) on %s refused: corral passes only stream sockets", what);
        else
                ipc_warn(ipc, "listen() on %s failed: %s", what, strerror(-err));
        cJSON_AddNumberToObject(reply, "errno", err);
        (void) send_json(ipc, reply);
}

static void forget_key(NodeCluster *nc, const cJSON *key) {
        if (!cJSON_IsString(key))
                return;
        for (unsigned i = 0; i < nc->n_keys; i++)
                if (streq_ptr(nc->keys[i], key->valuestring)) {
                        free(nc->keys[i]);
                        nc->keys[i] = NULL;
                }
}

NodeClusterEvent node_cluster_handle(NodeCluster *nc, Ipc *ipc, ListenerSet *ls, bool shared, const char *who,
                                     const char *cmd, size_t cmd_len, const char *line, size_t len) {
        if (is(cmd, cmd_len, "NODE_HANDLE")) {
                /* The app sent a handle (process.send(m, socket)): its fd
                 * was refused, but Node waits for the ACK before it sends
                 * anything else. */
                (void) ipc_send_line(ipc, "{\"cmd\":\"NODE_HANDLE_ACK\"}");
                ipc_warn(ipc, "sent a handle to the master; corral takes none (closed it)");
                return NODE_CLUSTER_NONE;
        }
        if (!is(cmd, cmd_len, "NODE_CLUSTER")) {
                ipc->malformed++;
                ipc_warn(ipc, "a Node.js internal message corral does not take: %.*s", (int) MIN(cmd_len, 64u), cmd);
                return NODE_CLUSTER_NONE;
        }
        /* The answer to each newconn, the one frequent line: at once. */
        if (memmem(line, len, "\"accepted\":true", 15) && !memmem(line, len, "\"act\"", 5)) {
                answered(nc, line, len, true);
                return NODE_CLUSTER_NONE;
        }

        _cleanup_json_ cJSON *j = cJSON_ParseWithLength(line, len);
        const cJSON *act = cJSON_GetObjectItemCaseSensitive(j, "act");
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(j, "seq");
        if (!act) {
                const cJSON *accepted = cJSON_GetObjectItemCaseSensitive(j, "accepted");
                if (cJSON_IsFalse(accepted)) {
                        answered(nc, line, len, false);
                        ipc_warn(ipc, "refused a connection (its server is closed, or at server.maxConnections): "
                                 "%s", nc->refused_fd >= 0 ? "it goes to another worker" : "it is lost");
                        return NODE_CLUSTER_REFUSED;
                }
                return NODE_CLUSTER_NONE;
        }
        if (!cJSON_IsString(act) || !cJSON_IsNumber(seq)) {
                ipc->malformed++;
                ipc_warn(ipc, "a cluster message without \"act\" or \"seq\" dropped");
                return NODE_CLUSTER_NONE;
        }
        const char *a = act->valuestring;
        if (streq_ptr(a, "queryServer")) {
                query_server(nc, ipc, ls, shared, j, seq->valuedouble);
                return NODE_CLUSTER_NONE;
        }
        if (streq_ptr(a, "listening"))
                return NODE_CLUSTER_READY;
        if (streq_ptr(a, "close")) {
                forget_key(nc, cJSON_GetObjectItemCaseSensitive(j, "key"));
                return NODE_CLUSTER_NONE;
        }
        if (streq_ptr(a, "exitedAfterDisconnect")) {
                /* It waits for this answer before it disconnects and exits. */
                char reply[96];
                snprintf(reply, sizeof(reply), "{\"cmd\":\"NODE_CLUSTER\",\"ack\":%.0f,\"seq\":%llu}",
                         seq->valuedouble, (unsigned long long) ++nc->seq);
                (void) ipc_send_line(ipc, reply);
                return NODE_CLUSTER_LEAVING;
        }
        /* "online", and whatever later versions add. */
        log_debug("%s: cluster message \"%s\" (%s)", who, a, "nothing to do");
        return NODE_CLUSTER_NONE;
}

/* ---- the master's copies of newconn connections ------------------------- */

static NodePending *pending_at(NodeCluster *nc, unsigned i) {
        return &nc->pending[(nc->pending_head + i) % NODE_PENDING_MAX];
}

static NodePending pending_take_front(NodeCluster *nc) {
        NodePending p = *pending_at(nc, 0);
        nc->pending_head = (nc->pending_head + 1) % NODE_PENDING_MAX;
        nc->n_pending--;
        return p;
}

static void pending_pop_front(NodeCluster *nc) {
        safe_close(pending_take_front(nc).fd);
}

bool node_cluster_keep(NodeCluster *nc, int fd, uint8_t listener) {
        if (!nc->line_seq)
                return false;
        uint64_t seq = nc->line_seq;
        nc->line_seq = 0;
        if (!nc->pending && !(nc->pending = calloc(NODE_PENDING_MAX, sizeof(NodePending))))
                return false;
        if (nc->n_pending == NODE_PENDING_MAX)
                pending_pop_front(nc);
        *pending_at(nc, nc->n_pending++) = (NodePending) { .seq = seq, .fd = fd, .listener = listener };
        return true;
}

void node_cluster_taken_back(NodeCluster *nc, unsigned n) {
        for (; n > 0 && nc->n_pending > 0; n--) {
                NodePending *p = pending_at(nc, nc->n_pending - 1);
                safe_close(p->fd);
                nc->n_pending--;
        }
}

/* The answer to newconn "ack": copies of older ones (never answered) and
 * of an accepted one are closed; a refused one's goes to refused_fd. */
static void answered(NodeCluster *nc, const char *line, size_t len, bool accepted) {
        const char *p = memmem(line, len, "\"ack\":", 6);
        char *end;
        nc->refused_fd = -EBADF;
        if (!p)
                return;
        errno = 0;
        unsigned long long ack = strtoull(p + 6, &end, 10);
        if (errno || end == p + 6)
                return;
        while (nc->n_pending > 0 && pending_at(nc, 0)->seq < ack)
                pending_pop_front(nc);
        if (nc->n_pending == 0 || pending_at(nc, 0)->seq != ack)
                return;
        if (accepted) {
                pending_pop_front(nc);
                return;
        }
        NodePending refused = pending_take_front(nc);
        nc->refused_fd = refused.fd;
        nc->refused_listener = refused.listener;
}

size_t node_cluster_handoff_line(NodeCluster *nc, const ListenerSet *ls, uint8_t listener, char *buf, size_t size) {
        int n;
        nc->line_seq = 0;
        if (nc->disconnecting || listener >= ls->n)
                return 0;
        if (nc->cluster) {
                if (listener >= nc->n_keys || !nc->keys[listener])
                        return 0;
                nc->line_seq = ++nc->seq;       /* seqs start at 1: 0 means "no newconn" */
                n = snprintf(buf, size,
                             "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":{\"cmd\":\"NODE_CLUSTER\","
                             "\"act\":\"newconn\",\"key\":\"%s\",\"seq\":%llu}}\n",
                             nc->keys[listener], (unsigned long long) nc->line_seq);
        } else
                n = snprintf(buf, size, "%s", ls->node_handles[listener]);
        return n > 0 && (size_t) n < size ? (size_t) n : 0;
}

bool node_cluster_disconnect(NodeCluster *nc, Ipc *ipc) {
        char line[80];
        if (!nc->cluster)
                return false;
        if (nc->disconnecting)
                return true;
        snprintf(line, sizeof(line), "{\"cmd\":\"NODE_CLUSTER\",\"act\":\"disconnect\",\"seq\":%llu}",
                 (unsigned long long) ++nc->seq);
        if (ipc_send_line(ipc, line) < 0)
                return false;
        nc->disconnecting = true;
        return true;
}

void node_cluster_done(NodeCluster *nc) {
        while (nc->n_pending > 0)
                pending_pop_front(nc);
        free(nc->pending);
        for (unsigned i = 0; i < nc->n_keys; i++)
                free(nc->keys[i]);
        free(nc->keys);
        *nc = (NodeCluster) {};
}
