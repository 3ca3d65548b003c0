/* fuzz-node-cluster: libFuzzer harness for the master's side of Node's
 * cluster protocol (src/corrald/node-cluster.c): the NODE_CLUSTER lines a
 * worker in the "node" dialect sends, with a real Ipc on a socketpair (the
 * answers go out on it) and one real TCP listener.
 *
 * The input is lines. A line starting with one of these bytes is an
 * action instead:
 *   0x01  the master hands off a connection: node_cluster_handoff_line()
 *         and, if it made a line, node_cluster_keep() with a fresh fd
 *   0x02  the newest hand-off is taken back unread (node_cluster_taken_back)
 *   0x03  node_cluster_disconnect()
 * Any other line goes to node_cluster_handle() as the worker's, whatever
 * its cmd ("NODE_CLUSTER", or the first 16 bytes when it starts "@").
 *
 * Properties: no crash or sanitizer report; at most NODE_PENDING_MAX
 * copies kept; a refused connection is one the harness handed off (the
 * master's copy, still open), or none; the keys are "corral:N" for an
 * existing listener; a handoff line is one line ending in '\n'; and after
 * node_cluster_done() no fd is left open. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <syslog.h>
#include <unistd.h>
#include <uv.h>

#include "fd-util.h"
#include "fuzz.h"
#include "ipc.h"
#include "listener.h"
#include "log.h"
#include "node-cluster.h"

#define LEAK_WINDOW 64

static bool open_at_start[LEAK_WINDOW];
static int listener_fd = -1;

static bool is_open(int fd) {
        return fcntl(fd, F_GETFD) >= 0;
}

static void setup_once(void) {
        if (listener_fd >= 0)
                return;
        log_setup(LOG_TARGET_STDERR, "fuzz");
        log_set_max_priority(LOG_CRIT);         /* the warnings are expected, not findings */
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        listener_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (listener_fd < 0 || bind(listener_fd, (struct sockaddr *) &sin, sizeof(sin)) < 0 ||
            listen(listener_fd, 8) < 0)
                abort();
        /* libuv's process-wide fds (its signal pipe) come with the first
         * loop and stay: open them before the leak window is taken. */
        uv_loop_t loop;
        if (uv_loop_init(&loop) < 0 || uv_loop_close(&loop) < 0)
                abort();
}

/* Read what the master sent, so that its queue never fills. */
static void drain(int fd) {
        char buf[4096];
        while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
                ;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
        setup_once();
        for (int i = 0; i < LEAK_WINDOW; i++)
                open_at_start[i] = is_open(i);

        uv_loop_t loop;
        int sv[2];
        if (uv_loop_init(&loop) < 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                abort();
        Ipc ipc = { .who = "worker 0", .dialect = IPC_DIALECT_NODE };
        if (ipc_start(&ipc, &loop, sv[0]) < 0)
                abort();
        Listener l = { .fd = listener_fd };
        char *handle = (char *) "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{}}\n", *ndata = NULL;
        ListenerSet ls = { .items = &l, .n = 1, .node_handles = &handle, .node_data = &ndata };
        NodeCluster nc = {};
        int handed[NODE_PENDING_MAX * 4];
        unsigned n_handed = 0;

        char *text = fuzz_strndup(data, size);
        for (char *line = text, *next; line && *line; line = next) {
                char *nl = strchr(line, '\n');
                next = nl ? nl + 1 : NULL;
                if (nl)
                        *nl = 0;
                size_t len = strlen(line);
                if (line[0] == 0x01) {
                        char buf[512];
                        size_t n = node_cluster_handoff_line(&nc, &ls, 0, buf, sizeof(buf));
                        FUZZ_CHECK(n < sizeof(buf), "line of %zu bytes", n);
                        if (n > 0) {
                                FUZZ_CHECK(buf[n - 1] == '\n' && !memchr(buf, '\n', n - 1), "not one line");
                                int fd = fcntl(listener_fd, F_DUPFD_CLOEXEC, 3);
                                if (fd < 0)
                                        abort();
                                if (node_cluster_keep(&nc, fd, 0)) {
                                        if (n_handed < sizeof(handed) / sizeof(handed[0]))
                                                handed[n_handed++] = fd;
                                } else
                                        close(fd);
                        }
                } else if (line[0] == 0x02) {
                        node_cluster_taken_back(&nc, 1);
                } else if (line[0] == 0x03) {
                        (void) node_cluster_disconnect(&nc, &ipc);
                } else {
                        const char *cmd = "NODE_CLUSTER";
                        size_t cmd_len = 12;
                        if (line[0] == '@') {
                                cmd = line + 1;
                                cmd_len = len > 17 ? 16 : (len > 0 ? len - 1 : 0);
                        }
                        NodeClusterEvent e = node_cluster_handle(&nc, &ipc, &ls, false, "worker 0", cmd, cmd_len,
                                                                 line, len);
                        if (e == NODE_CLUSTER_REFUSED && nc.refused_fd >= 0) {
                                bool ours = false;
                                for (unsigned i = 0; i < n_handed; i++)
                                        ours = ours || handed[i] == nc.refused_fd;
                                FUZZ_CHECK(ours && is_open(nc.refused_fd), "refused fd %d is not a kept one",
                                           nc.refused_fd);
                                close(nc.refused_fd);
                        }
                }
                FUZZ_CHECK(nc.n_pending <= NODE_PENDING_MAX, "%u copies kept", nc.n_pending);
                for (unsigned i = 0; i < nc.n_keys; i++)
                        FUZZ_CHECK(!nc.keys[i] || strcmp(nc.keys[i], "corral:0") == 0, "key %s", nc.keys[i]);
                drain(sv[1]);
        }
        free(text);
        free(ndata);
        node_cluster_done(&nc);
        ipc_close(&ipc);
        uv_run(&loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&loop) < 0)
                abort();
        close(sv[1]);
        for (int i = 3; i < LEAK_WINDOW; i++)
                FUZZ_CHECK(i == listener_fd || open_at_start[i] || !is_open(i), "fd %d left open", i);
        return 0;
}
