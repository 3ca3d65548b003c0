/* test-node-cluster: the master's side of Node's cluster protocol
 * (src/corrald/node-cluster.c) with a real Ipc on a socketpair: the test
 * plays the Node worker. Here: the copies the master keeps of newconn
 * connections until the worker answers. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "test-helpers.h"

#include "fd-util.h"
#include "ipc.h"
#include "listener.h"
#include "node-cluster.h"

typedef struct Fixture {
        uv_loop_t loop;
        Ipc ipc;
        int worker;             /* the Node worker's end */
        Listener listener;
        char *node_handle, *node_data;
        ListenerSet ls;
        NodeCluster nc;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        int sv[2];
        assert_non_null(f);
        assert_int_eq(uv_loop_init(&f->loop), 0);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        f->worker = sv[1];
        f->ipc = (Ipc) { .who = "worker 0", .userdata = f, .dialect = IPC_DIALECT_NODE };
        assert_int_eq(ipc_start(&f->ipc, &f->loop, sv[0]), 0);

        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        f->listener.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_int_eq(bind(f->listener.fd, (struct sockaddr *) &sin, sizeof(sin)), 0);
        assert_int_eq(listen(f->listener.fd, 8), 0);
        f->node_handle = (char *) "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{}}\n";
        f->ls = (ListenerSet) { .items = &f->listener, .n = 1, .node_handles = &f->node_handle,
                                .node_data = &f->node_data };
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        node_cluster_done(&f->nc);
        ipc_close(&f->ipc);
        uv_run(&f->loop, UV_RUN_DEFAULT);
        assert_int_eq(uv_loop_close(&f->loop), 0);
        safe_close(f->worker);
        safe_close(f->listener.fd);
        free(f);
        return 0;
}

static NodeClusterEvent worker_says(Fixture *f, const char *line) {
        return node_cluster_handle(&f->nc, &f->ipc, &f->ls, false, "worker 0", "NODE_CLUSTER", 12, line,
                                   strlen(line));
}

static bool is_open(int fd) {
        return fcntl(fd, F_GETFD) >= 0;
}

/* A connection fd to hand off (a pipe end serves: nobody reads it). */
static int new_conn(void) {
        int p[2];
        assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        close(p[1]);
        return p[0];
}

/* The newconn line for listener 0 and its seq. */
static unsigned long long newconn(Fixture *f) {
        char line[512];
        size_t n = node_cluster_handoff_line(&f->nc, &f->ls, 0, line, sizeof(line));
        assert_true(n > 0 && n < sizeof(line));
        line[n] = 0;
        assert_str_contains(line, "\"act\":\"newconn\",\"key\":\"corral:0\"");
        const char *seq = strstr(line, "\"seq\":");
        assert_non_null(seq);
        return strtoull(seq + 6, NULL, 10);
}

static void ask_for_the_server(Fixture *f) {
        struct sockaddr_in sin;
        socklen_t len = sizeof(sin);
        char q[256];
        assert_int_eq(getsockname(f->listener.fd, (struct sockaddr *) &sin, &len), 0);
        snprintf(q, sizeof(q), "{\"cmd\":\"NODE_CLUSTER\",\"act\":\"queryServer\",\"seq\":0,\"port\":%d,"
                 "\"addressType\":4,\"address\":\"127.0.0.1\"}", ntohs(sin.sin_port));
        assert_int_eq(worker_says(f, q), NODE_CLUSTER_NONE);
        assert_true(f->nc.cluster);
}

static void test_copies_until_the_answer(void **state) {
        Fixture *f = *state;
        char line[256];

        /* Before queryServer: net.Socket lines, nothing kept. */
        int plain = new_conn();
        assert_false(node_cluster_keep(&f->nc, plain, 0));
        close(plain);

        ask_for_the_server(f);
        int fd[4];
        unsigned long long seq[4];
        for (int i = 0; i < 4; i++) {
                seq[i] = newconn(f);
                fd[i] = new_conn();
                assert_true(node_cluster_keep(&f->nc, fd[i], 0));
                /* A keep without a newconn line in between is not one. */
                int stray = new_conn();
                assert_false(node_cluster_keep(&f->nc, stray, 0));
                close(stray);
        }
        assert_int_eq(f->nc.n_pending, 4);

        /* Accepted: the master's copy closes. */
        snprintf(line, sizeof(line), "{\"cmd\":\"NODE_CLUSTER\",\"ack\":%llu,\"accepted\":true,\"seq\":1}", seq[0]);
        assert_int_eq(worker_says(f, line), NODE_CLUSTER_NONE);
        assert_false(is_open(fd[0]));
        assert_true(is_open(fd[1]));

        /* Refused: the copy is the caller's, to hand on. */
        snprintf(line, sizeof(line), "{\"cmd\":\"NODE_CLUSTER\",\"ack\":%llu,\"accepted\":false,\"seq\":2}", seq[1]);
        assert_int_eq(worker_says(f, line), NODE_CLUSTER_REFUSED);
        assert_int_eq(f->nc.refused_fd, fd[1]);
        assert_int_eq(f->nc.refused_listener, 0);
        assert_true(is_open(fd[1]));
        close(fd[1]);

        /* The newest one was taken back unread: its copy closes. */
        node_cluster_taken_back(&f->nc, 1);
        assert_false(is_open(fd[3]));
        assert_true(is_open(fd[2]));
        assert_int_eq(f->nc.n_pending, 1);

        /* A refusal of what is no longer kept: nothing to hand on. */
        snprintf(line, sizeof(line), "{\"cmd\":\"NODE_CLUSTER\",\"ack\":%llu,\"accepted\":false,\"seq\":3}", seq[3]);
        assert_int_eq(worker_says(f, line), NODE_CLUSTER_REFUSED);
        assert_true(f->nc.refused_fd < 0);
        /* ... and an answer past a kept one closes the older copy. */
        assert_false(is_open(fd[2]));
        assert_int_eq(f->nc.n_pending, 0);
}

static void test_ring_is_bounded_and_done_closes(void **state) {
        Fixture *f = *state;
        int fd[NODE_PENDING_MAX + 2];

        ask_for_the_server(f);
        /* All opened first, so that no number is reused before the checks. */
        for (int i = 0; i < NODE_PENDING_MAX + 2; i++)
                fd[i] = new_conn();
        for (int i = 0; i < NODE_PENDING_MAX + 2; i++) {
                (void) newconn(f);
                assert_true(node_cluster_keep(&f->nc, fd[i], 0));
        }
        assert_int_eq(f->nc.n_pending, NODE_PENDING_MAX);
        assert_false(is_open(fd[0]));
        assert_false(is_open(fd[1]));
        assert_true(is_open(fd[2]));
        node_cluster_done(&f->nc);
        for (int i = 2; i < NODE_PENDING_MAX + 2; i++)
                assert_false(is_open(fd[i]));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_copies_until_the_answer, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ring_is_bounded_and_done_closes, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
