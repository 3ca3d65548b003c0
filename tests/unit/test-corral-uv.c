/* test-corral-uv: <corral-uv.h> on a real libuv loop, the test playing the
 * master. CorralUv: a TCP connection and a unix one handed off between
 * message lines arrive as an accepted uv_tcp_t and uv_pipe_t that read what
 * the clients wrote; stray fds and garbage are dropped. CorralUvTake: the
 * hand-offs arrive as fds in order, messages go to libcorral's handler and
 * a turn's close reports are one line; in shared balance the connections
 * of LISTEN_FDS arrive, and at the fd limit the listener pauses instead of
 * spinning; the drain gives the kept hand-offs; after the stop nothing
 * runs and the loop ends. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
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

/* ---- CorralUvTake ------------------------------------------------------- */

typedef struct Taken {
        int fd;
        ino_t ino;
        unsigned listener;
        bool nonblock;
} Taken;

static Taken taken[8];
static unsigned n_taken, n_take_errors, n_take_stopped, n_handled;
static int last_take_error, last_take_error_fd;
static bool stop_in_on_fd;
static char handled[128];

static void take_reset(void) {
        memset(taken, 0, sizeof(taken));
        n_taken = n_take_errors = n_take_stopped = n_handled = 0;
        last_take_error = last_take_error_fd = 0;
        stop_in_on_fd = false;
        handled[0] = 0;
}

static void take_on_stopped(CorralUvTake *t) {
        n_take_stopped++;
}

/* Note which connection came (its inode) and keep it for the test. */
static void take_on_fd(CorralUvTake *t, int fd, unsigned listener) {
        struct stat st;

        assert_true(n_taken < ELEMENTSOF(taken));
        assert_int_eq(fstat(fd, &st), 0);
        taken[n_taken++] = (Taken) { fd, st.st_ino, listener, fcntl(fd, F_GETFL) & O_NONBLOCK };
        if (stop_in_on_fd)
                corral_uv_take_stop(t, take_on_stopped);
}

/* Serve the connection as a libuv stream that reads what the client wrote. */
static void take_on_fd_stream(CorralUvTake *t, int fd, unsigned listener) {
        uv_stream_t *client = NULL;

        assert_int_eq(corral_uv_stream_open(t->loop, fd, &client), 0);
        on_connection(NULL, client, listener);
}

static void take_on_error(CorralUvTake *t, int error, int fd) {
        n_take_errors++;
        last_take_error = error;
        last_take_error_fd = fd;
}

static void take_on_message(const CorralMessage *msg, void *userdata) {
        n_handled++;
        snprintf(handled, sizeof(handled), "%d:%.*s", msg->from, (int) msg->data_len, msg->data);
        if (userdata)
                corral_uv_take_stop(userdata, take_on_stopped);
}

static ino_t inode_of(int fd) {
        struct stat st;
        assert_int_eq(fstat(fd, &st), 0);
        return st.st_ino;
}

/* The next line the worker wrote to the master, or "" when there is none. */
static const char *worker_line(int master) {
        static char buf[128];
        ssize_t n = recv(master, buf, sizeof(buf) - 1, MSG_DONTWAIT);
        buf[n > 0 ? n : 0] = 0;
        return buf;
}

static void take_channel_setup(uv_loop_t *loop, int sv[2]) {
        char num[16];

        take_reset();
        assert_int_eq(uv_loop_init(loop), 0);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        snprintf(num, sizeof(num), "%d", sv[1]);
        setenv("CORRAL_IPC_FD", num, 1);
        unsetenv("LISTEN_FDS");
        unsetenv("LISTEN_PID");
        libcorral_reset_for_tests();
        corral_set_message_handler(take_on_message, NULL);
}

static void close_pair(int pair[2]) {
        close(pair[0]);
        close(pair[1]);
}

static void take_channel_teardown(uv_loop_t *loop, int sv[2]) {
        assert_int_eq(uv_loop_close(loop), 0);
        libcorral_reset_for_tests();
        if (sv[0] >= 0)
                close(sv[0]);
        close(sv[1]);
        unsetenv("CORRAL_IPC_FD");
}

/* on_fd's i-th connection is the one handed off as fd (the same inode),
 * from listener, and non-blocking. */
static void assert_taken(unsigned i, int fd, unsigned listener) {
        assert_u64_eq(taken[i].ino, inode_of(fd));
        assert_int_eq(taken[i].listener, listener);
        assert_true(taken[i].nonblock);
}

/* Close a connection on_fd got and report it, as a worker does from its
 * close callbacks. */
static void take_close(unsigned i) {
        close(taken[i].fd);
        assert_int_eq(corral_closed(1), 0);
}

/* Hand-off balance: three hand-offs and a message in the channel before
 * the loop runs make one turn; on_fd gets the connections in order, the
 * handler the message. Their three closes in one loop turn go out as one
 * line before the loop waits again; the next turn's close is the next
 * line. */
static void test_take_handoffs(void **state) {
        uv_loop_t loop;
        CorralUvTake take;
        int sv[2], a[2], b[2], c[2], d[2];

        take_channel_setup(&loop, sv);
        take.data = &loop;
        assert_int_eq(corral_uv_take_start(&take, &loop, take_on_fd, take_on_error), 0);
        assert_ptr_equal(take.data, &loop);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b), 0);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, c), 0);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, d), 0);

        handoff(sv[0], a[1], 5);
        line(sv[0], "{\"type\":\"message\",\"from\":2,\"data\":[1,2]}\n");
        handoff(sv[0], b[1], 0);
        handoff(sv[0], c[1], 3);
        uint64_t deadline = now_usec() + DEADLINE_USEC;
        while (n_taken < 3 && now_usec() < deadline)
                uv_run(&loop, UV_RUN_NOWAIT);
        assert_int_eq(n_taken, 3);
        assert_taken(0, a[1], 5);
        assert_taken(1, b[1], 0);
        assert_taken(2, c[1], 3);
        assert_int_eq(n_handled, 1);
        assert_string_equal(handled, "2:[1,2]");
        /* Counted during the turn, sent when the loop comes round. */
        for (unsigned i = 0; i < 3; i++)
                take_close(i);
        assert_string_equal(worker_line(sv[0]), "");
        uv_run(&loop, UV_RUN_NOWAIT);
        assert_string_equal(worker_line(sv[0]), "{\"type\":\"closed\",\"n\":3}\n");

        handoff(sv[0], d[1], 1);
        deadline = now_usec() + DEADLINE_USEC;
        while (n_taken < 4 && now_usec() < deadline)
                uv_run(&loop, UV_RUN_NOWAIT);
        assert_int_eq(n_taken, 4);
        assert_taken(3, d[1], 1);
        take_close(3);
        assert_string_equal(worker_line(sv[0]), "");
        uv_run(&loop, UV_RUN_NOWAIT);
        assert_string_equal(worker_line(sv[0]), "{\"type\":\"closed\",\"n\":1}\n");
        assert_int_eq(n_take_errors, 0);

        corral_uv_take_stop(&take, take_on_stopped);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_eq(n_take_stopped, 1);
        take_channel_teardown(&loop, sv);
        close_pair(a);
        close_pair(b);
        close_pair(c);
        close_pair(d);
}

/* A TCP listener as LISTEN_FDS passes it: at fd 3, LISTEN_PID ours. */
static int listen_fds_setup(struct sockaddr_in *ret_addr, int *ret_saved) {
        socklen_t alen = sizeof(*ret_addr);
        /* Whatever the runner had at fd 3 is put back afterwards. */
        int saved = fcntl(CORRAL_LISTEN_FDS_START, F_DUPFD_CLOEXEC, 100);
        int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        char pid[16];

        *ret_addr = (struct sockaddr_in) { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        assert_true(l >= 0);
        assert_int_eq(bind(l, (struct sockaddr *) ret_addr, sizeof(*ret_addr)), 0);
        assert_int_eq(listen(l, 16), 0);
        assert_int_eq(getsockname(l, (struct sockaddr *) ret_addr, &alen), 0);
        if (l != CORRAL_LISTEN_FDS_START) {
                assert_int_eq(dup2(l, CORRAL_LISTEN_FDS_START), CORRAL_LISTEN_FDS_START);
                close(l);
        }
        *ret_saved = saved;
        snprintf(pid, sizeof(pid), "%d", (int) getpid());
        setenv("LISTEN_PID", pid, 1);
        setenv("LISTEN_FDS", "1", 1);
        unsetenv("CORRAL_IPC_FD");
        libcorral_reset_for_tests();
        return CORRAL_LISTEN_FDS_START;
}

static void listen_fds_teardown(int saved) {
        unsetenv("LISTEN_PID");
        unsetenv("LISTEN_FDS");
        libcorral_reset_for_tests();
        if (saved >= 0) {
                assert_int_eq(dup2(saved, CORRAL_LISTEN_FDS_START), CORRAL_LISTEN_FDS_START);
                close(saved);
        } else
                close(CORRAL_LISTEN_FDS_START);
}

static int connect_to(const struct sockaddr_in *a) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        assert_int_eq(connect(fd, (const struct sockaddr *) a, sizeof(*a)), 0);
        return fd;
}

/* Shared balance: two clients of the LISTEN_FDS socket become two TCP
 * streams that read what each client wrote. */
static void test_take_shared(void **state) {
        uv_loop_t loop;
        CorralUvTake take;
        struct sockaddr_in a;
        int saved;

        take_reset();
        n_conns = 0;
        memset(conns, 0, sizeof(conns));
        listen_fds_setup(&a, &saved);
        assert_int_eq(uv_loop_init(&loop), 0);
        assert_int_eq(corral_uv_take_start(&take, &loop, take_on_fd_stream, take_on_error), 0);

        int c1 = connect_to(&a), c2 = connect_to(&a);
        assert_int_eq(loop_write(c1, "first", 5), 0);
        assert_int_eq(loop_write(c2, "again", 5), 0);
        uint64_t deadline = now_usec() + DEADLINE_USEC;
        while (!(n_conns == 2 && conns[0].len >= 5 && conns[1].len >= 5) && now_usec() < deadline)
                uv_run(&loop, UV_RUN_NOWAIT);
        assert_int_eq(n_conns, 2);
        assert_int_eq(conns[0].type, UV_TCP);
        assert_int_eq(conns[0].listener, 0);
        assert_string_equal(conns[0].got, "first");
        assert_int_eq(conns[1].type, UV_TCP);
        assert_string_equal(conns[1].got, "again");
        assert_int_eq(n_take_errors, 0);

        corral_uv_take_stop(&take, take_on_stopped);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_eq(n_take_stopped, 1);
        assert_int_eq(uv_loop_close(&loop), 0);
        /* The listener is libcorral's, not the take's: still open. */
        assert_true(fcntl(CORRAL_LISTEN_FDS_START, F_GETFD) != -1);
        close(c1);
        close(c2);
        listen_fds_teardown(saved);
}

/* At the fd limit the listener is left alone for CORRAL_UV_TAKE_PAUSE_MS:
 * one error, no spinning on the level-triggered listener, and the
 * connection is taken once the pause is over. */
static void test_take_pause_at_fd_limit(void **state) {
        uv_loop_t loop;
        CorralUvTake take;
        struct sockaddr_in a;
        struct rlimit saved_limit, low;
        int saved;

        take_reset();
        listen_fds_setup(&a, &saved);
        assert_int_eq(uv_loop_init(&loop), 0);
        assert_int_eq(corral_uv_take_start(&take, &loop, take_on_fd, take_on_error), 0);
        int c = connect_to(&a);

        /* No fd can be opened from here: the lowest free one is the limit. */
        int lowest = fcntl(c, F_DUPFD_CLOEXEC, 0);
        assert_true(lowest >= 0);
        close(lowest);
        assert_int_eq(getrlimit(RLIMIT_NOFILE, &saved_limit), 0);
        low = (struct rlimit) { .rlim_cur = (rlim_t) lowest, .rlim_max = saved_limit.rlim_max };
        assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
        uint64_t paused_at = now_usec(), deadline = paused_at + 50 * 1000;
        while (now_usec() < deadline)
                uv_run(&loop, UV_RUN_NOWAIT);
        unsigned errors_while_limited = n_take_errors, taken_while_limited = n_taken;
        assert_int_eq(setrlimit(RLIMIT_NOFILE, &saved_limit), 0);
        assert_int_eq(errors_while_limited, 1);
        assert_int_eq(last_take_error, -EMFILE);
        assert_int_eq(last_take_error_fd, -1);
        assert_int_eq(taken_while_limited, 0);

        deadline = now_usec() + DEADLINE_USEC;
        while (n_taken == 0 && now_usec() < deadline)
                uv_run(&loop, UV_RUN_NOWAIT);
        assert_int_eq(n_taken, 1);
        close(taken[0].fd);
        /* Not before the pause ended (loop time is in whole ms: some slack). */
        assert_true(now_usec() - paused_at >= (CORRAL_UV_TAKE_PAUSE_MS - 5) * 1000);
        assert_int_eq(n_take_errors, 1);

        corral_uv_take_stop(&take, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_eq(uv_loop_close(&loop), 0);
        close(c);
        listen_fds_teardown(saved);
}

/* The drain gives the hand-off already in the channel at once; the loop
 * then watches nothing, and a close is reported at once. */
static void test_take_drain(void **state) {
        uv_loop_t loop;
        CorralUvTake take;
        int sv[2], a[2], b[2];

        take_channel_setup(&loop, sv);
        assert_int_eq(corral_uv_take_start(&take, &loop, take_on_fd, take_on_error), 0);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b), 0);
        uv_run(&loop, UV_RUN_NOWAIT);           /* a turn of the loop: close reports batch from here */

        handoff(sv[0], a[1], 2);
        assert_int_eq(corral_uv_take_drain(&take), 1);
        assert_int_eq(n_taken, 1);
        assert_taken(0, a[1], 2);
        take_close(0);
        assert_string_equal(worker_line(sv[0]), "{\"type\":\"closed\",\"n\":1}\n");

        /* Sent after the drain: not taken, and nothing keeps the loop alive. */
        handoff(sv[0], b[1], 0);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_eq(n_taken, 1);
        assert_int_eq(n_take_errors, 0);

        corral_uv_take_stop(&take, take_on_stopped);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_eq(n_take_stopped, 1);
        take_channel_teardown(&loop, sv);
        close_pair(a);
        close_pair(b);
}

/* A stop from on_fd: the second hand-off and the message behind it are
 * left to libcorral (not given, not closed), on_stopped runs once, the
 * loop ends and closes, a second stop does nothing, and the channel stays
 * open (it is libcorral's). */
static void test_take_stop(void **state) {
        uv_loop_t loop;
        CorralUvTake take;
        int sv[2], a[2], b[2];

        take_channel_setup(&loop, sv);
        assert_int_eq(corral_uv_take_start(&take, &loop, take_on_fd, take_on_error), 0);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b), 0);
        stop_in_on_fd = true;

        handoff(sv[0], a[1], 0);
        handoff(sv[0], b[1], 1);
        close(b[1]);            /* the hand-off holds the only copy: b[0] sees its close */
        line(sv[0], "{\"type\":\"message\",\"from\":\"ctl\",\"data\":1}\n");
        uint64_t deadline = now_usec() + DEADLINE_USEC;
        while (uv_loop_alive(&loop) && now_usec() < deadline)
                uv_run(&loop, UV_RUN_NOWAIT);
        assert_false(uv_loop_alive(&loop));
        assert_int_eq(n_taken, 1);
        assert_int_eq(n_take_stopped, 1);
        assert_int_eq(n_handled, 0);
        corral_uv_take_stop(&take, take_on_stopped);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_eq(n_take_stopped, 1);
        assert_true(fcntl(sv[1], F_GETFD) != -1);
        close(taken[0].fd);
        struct pollfd pfd = { .fd = b[0], .events = POLLIN };
        assert_int_eq(poll(&pfd, 1, 0), 0);
        /* libcorral's reset closes what it holds: now b[0] sees it. */
        take_channel_teardown(&loop, sv);
        assert_int_eq(poll(&pfd, 1, 0), 1);
        close(a[0]);
        close(a[1]);
        close(b[0]);
}

/* A stop from the message handler, called by libcorral during the call
 * that then returns the hand-off behind the message: the connection is
 * not given to on_fd any more, so it is closed and reported. */
static void test_take_stop_from_message_handler(void **state) {
        uv_loop_t loop;
        CorralUvTake take;
        int sv[2], a[2];

        take_channel_setup(&loop, sv);
        assert_int_eq(corral_uv_take_start(&take, &loop, take_on_fd, take_on_error), 0);
        corral_set_message_handler(take_on_message, &take);
        uv_run(&loop, UV_RUN_NOWAIT);           /* a turn of the loop: close reports batch from here */
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);

        line(sv[0], "{\"type\":\"message\",\"from\":\"ctl\",\"data\":\"stop\"}\n");
        handoff(sv[0], a[1], 0);
        close(a[1]);
        uint64_t deadline = now_usec() + DEADLINE_USEC;
        while (uv_loop_alive(&loop) && now_usec() < deadline)
                uv_run(&loop, UV_RUN_NOWAIT);
        assert_false(uv_loop_alive(&loop));
        assert_int_eq(n_handled, 1);
        assert_int_eq(n_taken, 0);
        assert_int_eq(n_take_stopped, 1);
        char c;
        assert_int_eq(recv(a[0], &c, 1, MSG_DONTWAIT), 0);      /* EOF: closed */
        assert_int_eq(corral_flush(), 0);
        assert_string_equal(worker_line(sv[0]), "{\"type\":\"closed\",\"n\":1}\n");
        take_channel_teardown(&loop, sv);
        close(a[0]);
}

/* A listener that fails (no longer listening: accept4() says EINVAL) is
 * dropped by libcorral and no longer watched: said once, and with nothing
 * else to watch the loop ends by itself. */
static void test_take_listener_fails(void **state) {
        uv_loop_t loop;
        CorralUvTake take;
        struct sockaddr_in a;
        int saved;

        take_reset();
        listen_fds_setup(&a, &saved);
        assert_int_eq(uv_loop_init(&loop), 0);
        assert_int_eq(corral_uv_take_start(&take, &loop, take_on_fd, take_on_error), 0);
        /* Linux disconnects a listening socket shut down for reading. */
        assert_int_eq(shutdown(CORRAL_LISTEN_FDS_START, SHUT_RD), 0);
        uint64_t deadline = now_usec() + DEADLINE_USEC;
        while (uv_loop_alive(&loop) && now_usec() < deadline)
                uv_run(&loop, UV_RUN_NOWAIT);
        assert_false(uv_loop_alive(&loop));
        assert_int_eq(n_take_errors, 1);
        assert_int_eq(last_take_error, -EINVAL);
        assert_int_eq(last_take_error_fd, -1);
        assert_int_eq(corral_poll_fds(NULL, 0), 0);

        corral_uv_take_stop(&take, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_eq(uv_loop_close(&loop), 0);
        listen_fds_teardown(saved);
}

/* The master closes the channel: the take stops watching and says so
 * once, and the loop ends by itself. */
static void test_take_master_gone(void **state) {
        uv_loop_t loop;
        CorralUvTake take;
        int sv[2];

        take_channel_setup(&loop, sv);
        assert_int_eq(corral_uv_take_start(&take, &loop, take_on_fd, take_on_error), 0);
        close(sv[0]);
        uint64_t deadline = now_usec() + DEADLINE_USEC;
        while (uv_loop_alive(&loop) && now_usec() < deadline)
                uv_run(&loop, UV_RUN_NOWAIT);
        assert_false(uv_loop_alive(&loop));
        assert_int_eq(n_take_errors, 1);
        assert_int_eq(last_take_error, -ECONNRESET);
        assert_int_eq(n_taken, 0);

        corral_uv_take_stop(&take, take_on_stopped);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_eq(n_take_stopped, 1);
        sv[0] = -1;
        take_channel_teardown(&loop, sv);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_handoffs_and_messages),
                cmocka_unit_test(test_handoff_at_fd_limit),
                cmocka_unit_test(test_take_handoffs),
                cmocka_unit_test(test_take_shared),
                cmocka_unit_test(test_take_pause_at_fd_limit),
                cmocka_unit_test(test_take_drain),
                cmocka_unit_test(test_take_stop),
                cmocka_unit_test(test_take_stop_from_message_handler),
                cmocka_unit_test(test_take_master_gone),
                cmocka_unit_test(test_take_listener_fails),
        };
        return cmocka_run_group_tests_name("corral-uv", tests, NULL, NULL);
}
