/* host: see host.h.
 *
 * When the lifecycle is done with a worker (release), its handles close;
 * the Worker is freed when the last close has completed, as libuv
 * requires. */
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>

#include "fd-util.h"
#include "host.h"
#include "ipc.h"
#include "log.h"
#include "node-cluster.h"
#include "output.h"
#include "spawn.h"
#include "util.h"

typedef struct WorkerIo {
        Host *host;
        Worker *worker;
        Ipc ipc;
        NodeCluster node;          /* ipc "node": its side of Node's cluster protocol */
        Output output;
        unsigned n_handles;        /* open handles + the lifecycle's hold; freed at 0 */
} WorkerIo;

static void io_handle_closed(WorkerIo *io) {
        if (--io->n_handles > 0)
                return;
        node_cluster_done(&io->node);
        worker_free(io->worker);
        free(io);
}

static void on_ipc_closed(Ipc *ipc) {
        io_handle_closed(ipc->userdata);
}

static void on_output_closed(Output *o) {
        io_handle_closed(o->userdata);
}

static void on_ipc_message(Ipc *ipc, const IpcMessage *msg) {
        WorkerIo *io = ipc->userdata;
        messages_on_message(io->host->messages, io->worker, msg);
}

/* least-conn and recycle.max_requests: the worker closed n connections. */
static void on_closed_report(Ipc *ipc, unsigned n) {
        WorkerIo *io = ipc->userdata;
        Worker *w = io->worker;
        /* It cannot have closed more than it was handed: a report that says
         * so is counted as malformed, and least-conn keeps its count. */
        if (n > w->handed - w->closed) {
                ipc->malformed++;
                ipc_warn(ipc, "reported %u connections closed, with %llu open: ignored", n,
                         (unsigned long long) (w->handed - w->closed));
                n = (unsigned) (w->handed - w->closed);
        }
        w->closed += n;
        w->reports_closes = true;
}

/* It could not receive n hand-offs: at its fd limit (handoff.c decides). */
static void on_fd_limit(Ipc *ipc, unsigned n) {
        WorkerIo *io = ipc->userdata;
        handoff_fd_limit(io->host->handoff, io->worker, n);
}

/* A "notify" line: as a datagram from w on the notify socket (SPEC §3). */
static void on_ipc_notify(Ipc *ipc, const char *text, size_t len) {
        WorkerIo *io = ipc->userdata;
        NotifyMsg msg;
        if (notify_msg_parse(text, len, &msg) < 0) {
                ipc->malformed++;
                ipc_warn(ipc, "a notify line that is not an sd_notify message (empty, NUL byte or no VAR=VALUE): "
                         "dropped");
                return;
        }
        slot_on_notify(io->worker, &msg);
}

/* ipc "node": each hand-off as Node takes it (node-cluster.h). */
static size_t node_handoff_line(Ipc *ipc, uint8_t listener, char *buf, size_t size) {
        WorkerIo *io = ipc->userdata;
        return node_cluster_handoff_line(&io->node, io->host->listeners, listener, buf, size);
}

/* ipc "node": the master's copy of each newconn until the worker answers. */
static bool node_keep_handoff(Ipc *ipc, int fd, uint8_t listener) {
        WorkerIo *io = ipc->userdata;
        return node_cluster_keep(&io->node, fd, listener);
}

static void on_taken_back(Ipc *ipc, unsigned n) {
        WorkerIo *io = ipc->userdata;
        node_cluster_taken_back(&io->node, n);
}

/* ipc "node": Node's cluster protocol (an unchanged listen(PORT) app),
 * turned into the slot's events. */
static void on_node(Ipc *ipc, const IpcMessage *msg, const char *line, size_t len) {
        WorkerIo *io = ipc->userdata;
        Host *h = io->host;
        NotifyMsg n = { .errno_value = -1 };
        switch (node_cluster_handle(&io->node, ipc, h->listeners, !h->handoff->started, io->worker->who, msg->cmd,
                                    msg->cmd_len, line, len)) {
        case NODE_CLUSTER_READY:
                n.ready = true;
                slot_on_notify(io->worker, &n);
                break;
        case NODE_CLUSTER_LEAVING:
                n.stopping = true;
                slot_on_notify(io->worker, &n);
                break;
        case NODE_CLUSTER_REFUSED:
                handoff_refused(h->handoff, io->worker, io->node.refused_fd, io->node.refused_listener);
                break;
        case NODE_CLUSTER_NONE:
                break;
        }
}

/* Give w its I/O: io (taken) watches the IPC channel and, when there is
 * one, the output pipe; with hand-off, the master keeps the worker's end
 * of the channel too (peer_fd). Every fd is taken, even on failure. */
static void io_attach(Host *h, Worker *w, WorkerIo *io, int ipc_fd, int peer_fd, int output_fd, pid_t pid) {
        *io = (WorkerIo) {
                .host = h,
                .worker = w,
                .n_handles = 1,   /* the lifecycle's hold, dropped by host_release() */
                .ipc = { .on_message = on_ipc_message, .on_closed_report = on_closed_report,
                         .on_fd_limit = on_fd_limit, .on_notify = on_ipc_notify, .on_close = on_ipc_closed,
                         .who = w->who, .userdata = io, .dialect = w->config->ipc,
                         .handoff_line = node_handoff_line, .on_node = on_node,
                         .keep_handoff = node_keep_handoff, .on_taken_back = on_taken_back },
                .output = { .on_close = on_output_closed, .userdata = io },
        };
        w->host = io;
        w->ipc = &io->ipc;
        if (ipc_fd >= 0) {
                if (ipc_start(&io->ipc, h->loop, ipc_fd) >= 0) {
                        io->n_handles++;
                        ipc_keep_peer(&io->ipc, TAKE_FD(peer_fd));
                } else
                        log_warning("worker %u (pid %d): cannot watch its IPC channel", w->id, (int) pid);
        }
        safe_close(peer_fd);
        if (output_fd >= 0) {
                if (output_start(&io->output, h->loop, output_fd, w->config->name, w->id, pid) >= 0)
                        io->n_handles++;
                else
                        log_warning("worker %u (pid %d): cannot read its output", w->id, (int) pid);
        }
}

static pid_t host_start(void *userdata, Worker *w, const char **ret_stage) {
        Host *h = userdata;
        Config *c = w->config;
        /* With hand-off the master accepts: workers get no listening fds. */
        unsigned n_listen = h->handoff->started ? 0 : h->listeners->n;
        int fds[n_listen + 1];
        int pair[2];
        int out_r = -EBADF, out_w = -EBADF;

        for (unsigned i = 0; i < n_listen; i++)
                fds[i] = h->listeners->items[i].fd;

        WorkerIo *io = calloc(1, sizeof(WorkerIo));
        if (!io) {
                *ret_stage = "setup";
                return -ENOMEM;
        }
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == -1) {
                *ret_stage = "socketpair";
                free(io);
                return -errno;
        }
        /* Worker output (SPEC §8): journald streams the child opens itself,
         * or in stderr mode a pipe we read; without one, it inherits ours. */
        bool piped = log_get_target() == LOG_TARGET_STDERR && output_pipe(&out_r, &out_w) >= 0;

        SpawnParams p = {
                .argv = c->exec,
                .cwd = c->cwd,
                .extra_env = c->env,
                .listen_fds = fds,
                .n_listen = n_listen,
                .fdnames = h->listeners->fdnames,
                .notify_socket = h->notify->path,
                .ipc_fd = pair[1],
                .node_channel = c->ipc == IPC_DIALECT_NODE,
                .instance = c->name,
                .worker_id = w->id,
                .generation = w->generation,
                .watchdog_usec = c->watchdog_ms * USEC_PER_MSEC,
                .output = piped ? SPAWN_OUTPUT_FD
                          : log_get_target() == LOG_TARGET_JOURNAL ? SPAWN_OUTPUT_JOURNAL : SPAWN_OUTPUT_INHERIT,
                .syslog_identifier = c->name,
                .output_fd = out_w,
        };
        pid_t pid = spawn_worker(&p, ret_stage);
        safe_close(out_w);
        if (pid < 0) {
                safe_close(pair[0]);
                safe_close(pair[1]);
                safe_close(out_r);
                free(io);
                return pid;
        }
        /* With hand-off, its end stays open here too: what it has not read
         * can be counted, and taken back when it dies (SPEC §5). */
        if (!h->handoff->started)
                pair[1] = safe_close(pair[1]);
        io_attach(h, w, io, pair[0], pair[1], piped ? out_r : -EBADF, pid);
        return pid;
}

void host_worker_fds(const Worker *w, int *ret_ipc, int *ret_peer, int *ret_output) {
        WorkerIo *io = w->host;
        *ret_ipc = io && io->ipc.open ? io->ipc.fd : -EBADF;
        *ret_peer = io && io->ipc.open ? io->ipc.peer_fd : -EBADF;
        *ret_output = io && io->output.open ? io->output.fd : -EBADF;
}

int host_adopt_worker(Host *h, Worker *w, int ipc_fd, int peer_fd, int output_fd) {
        WorkerIo *io = calloc(1, sizeof(WorkerIo));
        if (!io) {
                safe_close(ipc_fd);
                safe_close(peer_fd);
                safe_close(output_fd);
                return -ENOMEM;
        }
        /* They were opened up for execve(): no worker may inherit them. */
        (void) fd_cloexec(ipc_fd, true);
        (void) fd_cloexec(peer_fd, true);
        (void) fd_cloexec(output_fd, true);
        io_attach(h, w, io, ipc_fd, peer_fd, output_fd, worker_pid(w));
        return 0;
}

static void host_kill(void *userdata, Worker *w, int sig, bool group) {
        (void) kill_process(w->pid, sig, group);
}

/* A Node cluster worker stops as Node's primary stops it: "disconnect"
 * closes its servers and lets its connections finish, where the stop
 * signal would end it at once (an unchanged app has no handler). */
static const char *host_stop(void *userdata, Worker *w) {
        WorkerIo *io = w->host;
        if (io && io->ipc.open && node_cluster_disconnect(&io->node, &io->ipc))
                return "Node's cluster disconnect";
        (void) kill_process(w->pid, w->config->stop_signal, false);
        (void) kill_process(w->pid, SIGCONT, false);
        return signal_to_string(w->config->stop_signal);
}

static void host_release(void *userdata, Worker *w) {
        WorkerIo *io = w->host;
        if (!io) {
                worker_free(w);
                return;
        }
        /* It is gone: what it never read of its channel is still there, and
         * goes to another worker (SPEC §5). */
        unsigned n = handoff_take_back(io->host->handoff, w);
        if (n > 0) {
                LogFields f = LOG_FIELDS_NONE;
                f.worker_id = (int) w->id;
                f.pid = worker_pid(w);
                log_emit(LOG_INFO, &f, "%s had not read %u connection%s: they go to another worker", w->who, n,
                         n == 1 ? "" : "s");
        }
        ipc_close(&io->ipc);
        output_close(&io->output);
        io_handle_closed(io);
}

const SlotOps host_slot_ops = {
        .start = host_start,
        .kill = host_kill,
        .stop = host_stop,
        .release = host_release,
};
