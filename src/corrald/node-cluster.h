/* node-cluster: the primary's side of Node.js's cluster protocol, for a
 * worker in the node dialect (SPEC §6, docs/protocol.md).
 *
 * corrald starts every node-dialect worker with NODE_UNIQUE_ID (slot + 1),
 * so Node's cluster module makes it a cluster worker, and an unchanged app
 * that calls server.listen(PORT) asks its primary for the socket over the
 * channel. corrald answers as Node's primary would (lib/internal/cluster/
 * primary.js, the same in Node 18, 20 and 22):
 *
 *   worker -> master                     master -> worker
 *   act "queryServer" (seq S)            shared: the listening socket, as
 *                                          NODE_HANDLE net.Native, ack S
 *                                        otherwise: key and sockname, ack S;
 *                                          then one act "newconn" (a
 *                                          NODE_HANDLE net.Native line with
 *                                          the connection) per hand-off
 *                                        no listener on that port: errno
 *                                          -EADDRNOTAVAIL, logged here
 *   act "listening"                      (READY=1 for the slot)
 *   act "close" (key)                    (no more connections for it)
 *   act "exitedAfterDisconnect" (seq S)  ack S (STOPPING=1 for the slot)
 *   ack N, accepted true|false           false: the connection goes to
 *                                          another worker (the master kept
 *                                          its copy until this answer)
 *   act "online"                         (nothing)
 *                                        act "disconnect": a graceful stop
 *
 * A worker that has asked for a server takes connections only for the
 * listeners it asked for; one that never did (a plain process.on('message')
 * worker) gets every connection as a net.Socket NODE_HANDLE line.
 *
 * One NodeCluster per worker, in its host (host.c). Lines come parsed
 * with cJSON: they are rare (a few per worker life), but for the
 * newconn answers, which are recognised without parsing. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ipc.h"
#include "listener.h"

/* A newconn the worker has not answered yet: the master's copy of the
 * connection. Node's primary keeps its handle the same way, so that a
 * refused connection (its server closed, or at server.maxConnections)
 * goes to another worker instead of being lost. */
typedef struct NodePending {
        uint64_t seq;              /* of the newconn message */
        int fd;
        uint8_t listener;
} NodePending;

/* At most this many unanswered newconns are kept per worker; past it, the
 * oldest copy is closed (its connection is then lost if refused). The
 * worker answers each as it reads it, so what is unanswered is what it
 * has not read yet (IPC_INFLIGHT_MAX) and the few in the read in progress. */
#define NODE_PENDING_MAX (2 * IPC_INFLIGHT_MAX)

typedef struct NodeCluster {
        char **keys;               /* per listener: the key the worker listens with, or NULL */
        unsigned n_keys;           /* entries in keys (the listener count) */
        bool cluster;              /* it asked for a server: it takes only its keys' connections */
        bool disconnecting;        /* "disconnect" sent */
        uint64_t seq;              /* of the master's messages to it */
        uint64_t line_seq;         /* the seq of the last newconn line made, 0: none */
        NodePending *pending;      /* a ring of NODE_PENDING_MAX, allocated at the first newconn */
        unsigned pending_head, n_pending;
        int refused_fd;            /* with NODE_CLUSTER_REFUSED: the connection, or -1 */
        uint8_t refused_listener;
} NodeCluster;

/* What a line means for the worker's slot. */
typedef enum NodeClusterEvent {
        NODE_CLUSTER_NONE,
        NODE_CLUSTER_READY,        /* it listens: READY=1 */
        NODE_CLUSTER_LEAVING,      /* cluster.worker.disconnect(): STOPPING=1 */
        NODE_CLUSTER_REFUSED,      /* it refused a connection (accepted: false): refused_fd */
} NodeClusterEvent;

/* Handle one NODE_CLUSTER or NODE_HANDLE line of worker `who` (line is
 * NUL-terminated, len bytes), answering on ipc. ls: the instance's
 * listeners; shared: whether workers get the listening sockets (balance
 * shared) or hand-offs. Logs what it refuses, at the rate of ipc's log
 * limit. */
NodeClusterEvent node_cluster_handle(NodeCluster *nc, Ipc *ipc, ListenerSet *ls, bool shared, const char *who,
                                     const char *cmd, size_t cmd_len, const char *line, size_t len);

/* The hand-off line for listener (IpcHandoffLine): a newconn for its key
 * when the worker asked for a server, else the plain net.Socket line; 0
 * when it cannot take that listener's connections. */
size_t node_cluster_handoff_line(NodeCluster *nc, const ListenerSet *ls, uint8_t listener, char *buf, size_t size);

/* Ask a cluster worker to stop as Node's primary does (worker.disconnect():
 * it closes its servers, lets its connections finish, and exits). Returns
 * true when sent; false when the worker is not a cluster worker or the
 * line could not be queued (then signal it instead). */
/* After a newconn line went with fd: keep the master's copy until the
 * worker answers. Returns true when fd was taken (not to be closed by the
 * caller), false when it is not a newconn (the caller closes fd). */
bool node_cluster_keep(NodeCluster *nc, int fd, uint8_t listener);

/* n hand-offs were taken back unread (the newest n sent): their copies are
 * closed; the connections themselves go on from the channel. */
void node_cluster_taken_back(NodeCluster *nc, unsigned n);

bool node_cluster_disconnect(NodeCluster *nc, Ipc *ipc);

void node_cluster_done(NodeCluster *nc);
