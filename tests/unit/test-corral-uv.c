/* test-corral-uv: <corral-uv.h> on a real libuv loop, the test playing the
 * master: a TCP connection and a unix one handed off between message
 * lines arrive as an accepted uv_tcp_t and uv_pipe_t that read what the
 * clients wrote; stray fds and garbage are dropped. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "test-helpers.h"

#include "corral-internal.h"
#include "corral-uv.h"
#include "fd-util.h"
#include "util.h"

#define DEADLINE_USEC (10 * USEC_PER_SEC)

typedef struct Conn {
        uv_handle_type type;
        unsigned listener;
        char got[64];
        size_t len;
} Conn;

static Conn conns[4];
static unsigned n_conns, n_messages, n_stopped;
static char last_message[128];

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        static char b[256];
        *buf = uv_buf_init(b, sizeof(b));
}

static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
        Conn *c = s->data;
        if (nread > 0) {
                size_t k = MIN((size_t) nread, sizeof(c->got) - 1 - c->len);
                memcpy(c->got + c->len, buf->base, k);
                c->len += k;
        }
        if (nread < 0 || c->len >= 5)
                uv_close((uv_handle_t *) s, corral_uv_free_on_close);
}

static void on_connection(CorralUv *cu, uv_stream_t *client, unsigned listener) {
        assert_true(n_conns < ELEMENTSOF(conns));
        Conn *c = &conns[n_conns++];
        c->type = client->type;
        c->listener = listener;
        client->data = c;
        assert_int_eq(uv_read_start(client, alloc_cb, conn_read), 0);
}

static char no_data_message[128];

static void on_message(CorralUv *cu, const CorralMessage *msg) {
        n_messages++;
        snprintf(last_message, sizeof(last_message), "%d:%s", msg->from, msg->data);
        if (n_messages == 2)
                snprintf(no_data_message, sizeof(no_data_message), "%d:%.*s", msg->from, (int) msg->data_len,
                         msg->data);
}

static void on_stopped(CorralUv *cu) {
        n_stopped++;
}

static void handoff(int sock, int fd, unsigned char index) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int))];
        } control = {};
        struct iovec iov = { &index, 1 };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                             .msg_controllen = sizeof(control) };
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
        assert_int_eq(sendmsg(sock, &mh, 0), 1);
}

static void line(int sock, const char *s) {
        assert_int_eq(loop_write(sock, s, strlen(s)), 0);
}

/* A connected TCP pair on loopback: *ret_server is the accepted end. */
static void tcp_pair(int *ret_client, int *ret_server) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t alen = sizeof(a);
        int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(l >= 0);
        assert_int_eq(bind(l, (struct sockaddr *) &a, sizeof(a)), 0);
        assert_int_eq(listen(l, 1), 0);
        assert_int_eq(getsockname(l, (struct sockaddr *) &a, &alen), 0);
        *ret_client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_int_eq(connect(*ret_client, (struct sockaddr *) &a, sizeof(a)), 0);
        *ret_server = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        assert_true(*ret_server >= 0);
        close(l);
}

static void test_handoffs_and_messages(void **state) {
        uv_loop_t loop;
        CorralUv *cu = malloc(sizeof(CorralUv));
        int sv[2], unix_pair[2], tcp_client, tcp_server;
        char num[16];

        /* libuv keeps a process-wide signal pipe from the first loop on:
         * count after it exists. */
        assert_int_eq(uv_loop_init(&loop), 0);
        assert_int_eq(uv_loop_close(&loop), 0);
        unsigned fds_before = count_fds();
        assert_int_eq(uv_loop_init(&loop), 0);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        snprintf(num, sizeof(num), "%d", sv[1]);
        setenv("CORRAL_IPC_FD", num, 1);
        libcorral_reset_for_tests();
        assert_int_eq(corral_uv_start(cu, &loop, on_connection, on_message), 0);

        tcp_pair(&tcp_client, &tcp_server);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, unix_pair), 0);

        line(sv[0], "{\"type\":\"message\",\"from\":\"ctl\",\"data\":{\"hello\":1}}\n");
        handoff(sv[0], tcp_server, 0);
        /* No "data" means null: <corral-uv.h> used to write a NUL into the
         * library's string literal "null" for it (a segfault). */
        line(sv[0], "{\"type\":\"message\",\"from\":\"ctl\"}\n");
        line(sv[0], "garbage\n{\"type\":\"message\",\"from\":3,\"data\":\"x\"}\n");
        handoff(sv[0], unix_pair[1], 2);
        close(tcp_server);
        close(unix_pair[1]);
        assert_int_eq(loop_write(tcp_client, "hello", 5), 0);
        assert_int_eq(loop_write(unix_pair[0], "world", 5), 0);

        uint64_t deadline = now_usec() + DEADLINE_USEC;
        while (!(n_conns == 2 && conns[0].len >= 5 && conns[1].len >= 5 && n_messages == 3)) {
                if (now_usec() > deadline)
                        fail_msg("timed out: %u connections, %u messages", n_conns, n_messages);
                uv_run(&loop, UV_RUN_NOWAIT);
        }
        assert_int_eq(conns[0].type, UV_TCP);
        assert_int_eq(conns[0].listener, 0);
        assert_string_equal(conns[0].got, "hello");
        assert_int_eq(conns[1].type, UV_NAMED_PIPE);
        assert_int_eq(conns[1].listener, 2);
        assert_string_equal(conns[1].got, "world");
        assert_string_equal(no_data_message, "-4:null");
        assert_string_equal(last_message, "3:\"x\"");
        /* g,a,r,b,a,g,e: stray bytes. */
        assert_int_eq(cu->dropped, 7);

        /* Close reports go out through <corral.h> on the same socket. */
        assert_int_eq(corral_closed(2), 0);
        char buf[64];
        ssize_t n = recv(sv[0], buf, sizeof(buf), 0);
        assert_int_eq(n, (ssize_t) strlen("{\"type\":\"closed\",\"n\":2}\n"));

        corral_uv_stop(cu, on_stopped);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_eq(n_stopped, 1);
        assert_int_eq(uv_loop_close(&loop), 0);
        close(sv[0]);
        close(tcp_client);
        close(unix_pair[0]);
        libcorral_reset_for_tests();
        free(cu);
        /* The pipe handle closed the channel fd; nothing else is left. */
        assert_int_eq(count_fds(), fds_before);
        unsetenv("CORRAL_IPC_FD");
}

/* At the fd limit libuv gets the hand-off byte without its fd (the kernel
 * set MSG_CTRUNC, which libuv does not pass on): counted as lost, not as
 * garbage, and reported to the master with one fd-limit line. */
static void test_handoff_at_fd_limit(void **state) {
        uv_loop_t loop;
        CorralUv *cu = malloc(sizeof(CorralUv));
        int sv[2], p[2];
        char num[16], buf[128];
        struct rlimit saved, low;

        n_conns = n_messages = 0;
        assert_int_eq(uv_loop_init(&loop), 0);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        snprintf(num, sizeof(num), "%d", sv[1]);
        setenv("CORRAL_IPC_FD", num, 1);
        libcorral_reset_for_tests();
        assert_int_eq(corral_uv_start(cu, &loop, on_connection, on_message), 0);

        handoff(sv[0], p[0], 1);
        line(sv[0], "{\"type\":\"message\",\"from\":\"ctl\",\"data\":7}\n");
        /* No fd can be opened from here: the lowest free one is the limit. */
        int lowest = fcntl(sv[0], F_DUPFD_CLOEXEC, 0);
        assert_true(lowest >= 0);
        close(lowest);
        assert_int_eq(getrlimit(RLIMIT_NOFILE, &saved), 0);
        low = (struct rlimit) { .rlim_cur = (rlim_t) lowest, .rlim_max = saved.rlim_max };
        assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
        uint64_t deadline = now_usec() + DEADLINE_USEC;
        while (!(cu->lost == 1 && n_messages == 1) && now_usec() < deadline)
                uv_run(&loop, UV_RUN_NOWAIT);
        assert_int_eq(setrlimit(RLIMIT_NOFILE, &saved), 0);
        assert_int_eq(cu->lost, 1);
        assert_int_eq(n_messages, 1);
        assert_int_eq(n_conns, 0);
        assert_int_eq(cu->dropped, 0);

        ssize_t n = recv(sv[0], buf, sizeof(buf) - 1, MSG_DONTWAIT);
        assert_true(n > 0);
        buf[n] = 0;
        assert_string_equal(buf, "{\"type\":\"fd-limit\",\"n\":1}\n");

        /* With fds again, the next hand-off arrives. */
        handoff(sv[0], p[0], 2);
        deadline = now_usec() + DEADLINE_USEC;
        while (n_conns == 0 && now_usec() < deadline)
                uv_run(&loop, UV_RUN_NOWAIT);
        assert_int_eq(n_conns, 1);
        assert_int_eq(conns[0].type, UV_NAMED_PIPE);
        assert_int_eq(conns[0].listener, 2);
        close(p[1]);            /* the connection reads EOF and closes */

        corral_uv_stop(cu, on_stopped);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_eq(uv_loop_close(&loop), 0);
        close(sv[0]);
        close(p[0]);
        libcorral_reset_for_tests();
        free(cu);
        unsetenv("CORRAL_IPC_FD");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_handoffs_and_messages),
                cmocka_unit_test(test_handoff_at_fd_limit),
        };
        return cmocka_run_group_tests_name("corral-uv", tests, NULL, NULL);
}
