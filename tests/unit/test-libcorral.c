/* test-libcorral: the worker library without corrald. The test plays the
 * master on a socketpair: it hands off fds with the 1-byte payload,
 * interleaves message lines, sends 64 KiB lines and garbage, and checks
 * what the library returns and that no fd leaks. */
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "test-helpers.h"

#include "corral-internal.h"
#include "corral.h"
#include "fd-util.h"
#include "ipc-msg.h"

typedef struct Fixture {
        int master;             /* the test's end */
        int worker;             /* CORRAL_IPC_FD */
        int pipefd[2];          /* something to hand off */
        unsigned fds_before;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        int sv[2];
        char num[16];
        assert_non_null(f);
        f->fds_before = count_fds();
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        f->master = sv[0];
        f->worker = sv[1];
        snprintf(num, sizeof(num), "%d", f->worker);
        assert_int_eq(setenv("CORRAL_IPC_FD", num, 1), 0);
        assert_int_eq(pipe2(f->pipefd, O_CLOEXEC), 0);
        libcorral_reset_for_tests();
        *state = f;
        return 0;
}

/* RLIMIT_NOFILE as it was before a test lowered it. */
static struct rlimit nofile_saved;
static bool nofile_lowered;

/* Fill the fd table: from now on no fd can be opened, as in a worker at
 * its limit. */
static void lower_fd_limit(void) {
        int lowest = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 0);
        assert_true(lowest >= 0);
        close(lowest);
        assert_int_eq(getrlimit(RLIMIT_NOFILE, &nofile_saved), 0);
        struct rlimit low = { .rlim_cur = (rlim_t) lowest, .rlim_max = nofile_saved.rlim_max };
        assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
        nofile_lowered = true;
}

static void restore_fd_limit(void) {
        if (!nofile_lowered)
                return;
        assert_int_eq(setrlimit(RLIMIT_NOFILE, &nofile_saved), 0);
        nofile_lowered = false;
}

static int teardown(void **state) {
        Fixture *f = *state;
        restore_fd_limit();
        libcorral_reset_for_tests();
        safe_close(f->master);
        safe_close(f->worker);
        safe_close(f->pipefd[0]);
        safe_close(f->pipefd[1]);
        /* Nothing the library received stays open. */
        assert_int_eq(count_fds(), f->fds_before);
        unsetenv("CORRAL_IPC_FD");
        free(f);
        return 0;
}

static void sendmsg_fds(int sock, const void *data, size_t len, const int *fds, unsigned n_fds) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * 8)];
        } control = {};
        struct iovec iov = { (void *) data, len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        if (n_fds > 0) {
                mh.msg_control = &control;
                mh.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
                struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
                memcpy(CMSG_DATA(c), fds, sizeof(int) * n_fds);
        }
        assert_int_eq(sendmsg(sock, &mh, MSG_NOSIGNAL), (ssize_t) len);
}

static void master_handoff(Fixture *f, unsigned char index) {
        sendmsg_fds(f->master, &index, 1, &f->pipefd[0], 1);
}

static void master_line(Fixture *f, const char *line) {
        assert_int_eq(loop_write(f->master, line, strlen(line)), 0);
        assert_int_eq(loop_write(f->master, "\n", 1), 0);
}

static void assert_is_pipe(Fixture *f, int fd) {
        struct stat a, b;
        assert_true(fd >= 0);
        assert_int_eq(fstat(fd, &a), 0);
        assert_int_eq(fstat(f->pipefd[0], &b), 0);
        assert_int_eq(a.st_ino, b.st_ino);
        assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
}

static void accept_expect(Fixture *f, unsigned index) {
        unsigned got = 999;
        int fd = corral_accept_nonblock(&got);
        if (fd < 0)
                fail_msg("corral_accept_nonblock() == %d, expected a hand-off of listener %u", fd, index);
        assert_is_pipe(f, fd);
        assert_int_eq(got, index);
        assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
        close(fd);
}

static void recv_expect(int from, const char *data) {
        CorralMessage m;
        int r = corral_recv_message(&m);
        if (r < 0)
                fail_msg("corral_recv_message() == %d, expected %s", r, data);
        assert_int_eq(m.from, from);
        assert_string_equal(m.data, data);
        assert_int_eq(m.data_len, strlen(data));
}

static void test_environment(void **state) {
        unsetenv("CORRAL_WORKER_ID");
        assert_int_eq(corral_worker_id(), -ENOENT);
        setenv("CORRAL_WORKER_ID", "3", 1);
        assert_int_eq(corral_worker_id(), 3);
        setenv("CORRAL_WORKER_ID", "3x", 1);
        assert_int_eq(corral_worker_id(), -EINVAL);
        setenv("CORRAL_WORKER_ID", "-1", 1);
        assert_int_eq(corral_worker_id(), -EINVAL);
        setenv("CORRAL_WORKER_ID", "99999999999", 1);
        assert_int_eq(corral_worker_id(), -EINVAL);
        setenv("CORRAL_GENERATION", "12", 1);
        assert_int_eq(corral_generation(), 12);
        unsetenv("CORRAL_WORKER_ID");
        unsetenv("CORRAL_GENERATION");

        /* Not under corrald or systemd: notify is a no-op, no listeners. */
        unsetenv("NOTIFY_SOCKET");
        unsetenv("LISTEN_FDS");
        assert_int_eq(corral_ready(), 0);
        assert_int_eq(corral_status("%d/%d", 1, 2), 0);
        assert_int_eq(corral_listen_fds(NULL), 0);
}

static void test_no_channel(void **state) {
        Fixture *f = *state;
        unsetenv("CORRAL_IPC_FD");
        libcorral_reset_for_tests();
        assert_int_eq(corral_ipc_fd(), -ENOENT);
        assert_int_eq(corral_accept(NULL), -ENOENT);
        assert_int_eq(corral_send(CORRAL_MASTER, "1"), -ENOENT);

        /* Not a socket. */
        char num[16];
        snprintf(num, sizeof(num), "%d", f->pipefd[1]);
        setenv("CORRAL_IPC_FD", num, 1);
        libcorral_reset_for_tests();
        assert_int_eq(corral_ipc_fd(), -EBADF);

        setenv("CORRAL_IPC_FD", "9999", 1);
        libcorral_reset_for_tests();
        assert_int_eq(corral_ipc_fd(), -EBADF);

        snprintf(num, sizeof(num), "%d", f->worker);
        setenv("CORRAL_IPC_FD", num, 1);
        libcorral_reset_for_tests();
        assert_int_eq(corral_ipc_fd(), f->worker);
        assert_true(fcntl(f->worker, F_GETFD) & FD_CLOEXEC);
}

static void test_interleaved(void **state) {
        Fixture *f = *state;
        /* Written before the worker reads anything, so one read may glue
         * lines and a hand-off byte together. */
        master_line(f, "{\"type\":\"message\",\"from\":\"ctl\",\"data\":{\"n\":1}}");
        master_handoff(f, 1);
        master_line(f, "{\"type\":\"message\",\"from\":2,\"data\":\"two\"}");
        master_handoff(f, 0);
        master_handoff(f, '\n');       /* a newline byte as index is still a hand-off */
        master_line(f, "{\"type\":\"message\",\"data\":[3]}");

        accept_expect(f, 1);
        accept_expect(f, 0);
        accept_expect(f, '\n');
        assert_int_eq(corral_accept_nonblock(NULL), -EAGAIN);
        recv_expect(CORRAL_CTL, "{\"n\":1}");
        recv_expect(2, "\"two\"");
        recv_expect(CORRAL_CTL, "[3]");
        CorralMessage m;
        assert_int_eq(corral_recv_message(&m), -EAGAIN);
        assert_int_eq(corral_messages_dropped(), 0);

        /* Now the other way round: messages first, hand-offs kept. */
        master_handoff(f, 5);
        master_line(f, "{\"type\":\"message\",\"from\":1,\"data\":1}");
        master_handoff(f, 6);
        recv_expect(1, "1");
        assert_int_eq(corral_recv_message(&m), -EAGAIN);
        accept_expect(f, 5);
        accept_expect(f, 6);
}

static unsigned handler_calls;
static char handler_last[64];

static void handler(const CorralMessage *msg, void *userdata) {
        handler_calls++;
        snprintf(handler_last, sizeof(handler_last), "%d:%s", msg->from, msg->data);
        assert_ptr_equal(userdata, &handler_calls);
}

static void test_handler(void **state) {
        Fixture *f = *state;
        handler_calls = 0;
        master_line(f, "{\"type\":\"message\",\"from\":4,\"data\":\"kept\"}");
        master_handoff(f, 2);
        master_line(f, "{\"type\":\"message\",\"from\":\"ctl\",\"data\":\"live\"}");
        accept_expect(f, 2);
        /* Kept before the handler existed: delivered when it is set. */
        corral_set_message_handler(handler, &handler_calls);
        assert_int_eq(handler_calls, 1);
        assert_string_equal(handler_last, "4:\"kept\"");
        assert_int_eq(corral_accept_nonblock(NULL), -EAGAIN);
        assert_int_eq(handler_calls, 2);
        assert_string_equal(handler_last, "-4:\"live\"");
        corral_set_message_handler(NULL, NULL);
}

/* A line without "data" means data = null (docs/protocol.md). The
 * library used to terminate data in place, writing into the parser's
 * string literal "null": a segfault. */
static void test_message_without_data(void **state) {
        Fixture *f = *state;
        master_line(f, "{\"type\":\"message\",\"from\":\"ctl\"}");
        master_handoff(f, 1);
        master_line(f, "{\"type\":\"message\",\"from\":7}");
        master_line(f, "{\"type\":\"message\"}");
        /* Read while looking for a hand-off: kept, copied. */
        accept_expect(f, 1);
        recv_expect(CORRAL_CTL, "null");
        recv_expect(7, "null");
        recv_expect(CORRAL_CTL, "null");

        /* Read by corral_recv_message() itself, and handed to a handler. */
        master_line(f, "{\"type\":\"message\",\"from\":3}");
        recv_expect(3, "null");
        handler_calls = 0;
        corral_set_message_handler(handler, &handler_calls);
        master_line(f, "{\"from\":5,\"type\":\"message\"}");
        assert_int_eq(corral_accept_nonblock(NULL), -EAGAIN);
        assert_int_eq(handler_calls, 1);
        assert_string_equal(handler_last, "5:null");
        corral_set_message_handler(NULL, NULL);
        assert_int_eq(corral_messages_dropped(), 0);

        /* corral_parse_message() on a line in read-only memory. */
        static const char line[] = "{\"type\":\"message\",\"from\":2}";
        CorralMessage m;
        assert_int_eq(corral_parse_message(line, strlen(line), &m), 0);
        assert_int_eq(m.from, 2);
        assert_int_eq(m.data_len, 4);
        assert_string_equal(m.data, "null");
        /* With data, it points into the line. */
        static const char with[] = "{\"type\":\"message\",\"data\":null}";
        assert_int_eq(corral_parse_message(with, strlen(with), &m), 0);
        assert_ptr_equal(m.data, with + strlen(with) - 5);
        assert_int_eq(m.data_len, 4);
}

static void test_long_lines(void **state) {
        Fixture *f = *state;
        char *line = malloc(IPC_LINE_MAX + 2);
        const char *head = "{\"type\":\"message\",\"from\":\"ctl\",\"data\":\"";
        assert_non_null(line);

        /* Exactly 64 KiB: delivered. */
        memset(line, 'a', IPC_LINE_MAX);
        memcpy(line, head, strlen(head));
        memcpy(line + IPC_LINE_MAX - 2, "\"}", 2);
        line[IPC_LINE_MAX] = 0;
        master_line(f, line);
        master_handoff(f, 3);

        /* One byte more: dropped, counted, and the stream stays aligned. */
        memset(line, 'b', IPC_LINE_MAX + 1);
        memcpy(line, head, strlen(head));
        memcpy(line + IPC_LINE_MAX - 1, "\"}", 2);
        line[IPC_LINE_MAX + 1] = 0;
        master_line(f, line);
        master_handoff(f, 4);
        master_line(f, "{\"type\":\"message\",\"data\":\"after\"}");

        CorralMessage m;
        assert_int_eq(corral_recv_message(&m), 0);
        assert_int_eq(m.data_len, IPC_LINE_MAX - strlen(head) - 1 + 1);
        assert_int_eq(m.data[1], 'a');
        recv_expect(CORRAL_CTL, "\"after\"");
        assert_int_eq(corral_messages_dropped(), 1);
        accept_expect(f, 3);
        accept_expect(f, 4);
        free(line);
}

static void test_garbage(void **state) {
        Fixture *f = *state;
        /* Stray bytes without fds, non-JSON, wrong types, a worker-direction line. */
        master_line(f, "xyz");
        master_line(f, "{not json}");
        master_line(f, "{\"type\":\"closed\",\"n\":1}");
        master_line(f, "{\"type\":\"message\",\"from\":\"all\",\"data\":1}");
        master_line(f, "");
        /* An fd attached to a message line: closed, the message still read. */
        const char *line = "{\"type\":\"message\",\"data\":\"with fd\"}\n";
        int two[2] = { f->pipefd[0], f->pipefd[1] };
        sendmsg_fds(f->master, line, strlen(line), two, 2);
        /* A hand-off carrying two fds: the first is the connection. */
        unsigned char idx = 7;
        sendmsg_fds(f->master, &idx, 1, two, 2);
        master_handoff(f, 8);

        recv_expect(CORRAL_CTL, "\"with fd\"");
        accept_expect(f, 7);
        accept_expect(f, 8);
        /* x, y, z (3 stray bytes), 3 bad lines, 2 fds on the message line,
         * the second fd of the hand-off. */
        assert_int_eq(corral_messages_dropped(), 9);
}

/* A hostile master attaches an fd to each of many pieces of one line:
 * more fds than the reader records at once. All are closed (teardown
 * counts), the line is dropped, and the next hand-off still works. */
static void test_fds_inside_a_long_line(void **state) {
        Fixture *f = *state;
        sendmsg_fds(f->master, "{\"type\":\"message\",\"data\":\"", 26, &f->pipefd[1], 1);
        for (unsigned i = 0; i < 30; i++)
                sendmsg_fds(f->master, "abc", 3, &f->pipefd[1], 1);
        sendmsg_fds(f->master, "\"}\n", 3, &f->pipefd[1], 1);
        master_handoff(f, 1);
        accept_expect(f, 1);
        /* The line itself is valid: delivered, and its 32 fds counted as dropped. */
        CorralMessage m;
        assert_int_eq(corral_recv_message(&m), 0);
        assert_int_eq(m.data_len, 92);
        assert_int_eq(corral_messages_dropped(), 32);
}

static void test_eof(void **state) {
        Fixture *f = *state;
        master_handoff(f, 1);
        master_line(f, "{\"type\":\"message\",\"data\":1}");
        f->master = safe_close(f->master);
        accept_expect(f, 1);
        assert_int_eq(corral_accept(NULL), -ECONNRESET);
        recv_expect(CORRAL_CTL, "1");
        CorralMessage m;
        assert_int_eq(corral_recv_message(&m), -ECONNRESET);
}

static void *late_master(void *arg) {
        Fixture *f = arg;
        master_line(f, "{\"type\":\"message\",\"data\":\"late\"}");
        master_handoff(f, 9);
        return NULL;
}

static void test_blocking_accept(void **state) {
        Fixture *f = *state;
        pthread_t t;
        unsigned index = 0;
        assert_int_eq(pthread_create(&t, NULL, late_master, f), 0);
        int fd = corral_accept(&index);
        assert_int_eq(pthread_join(t, NULL), 0);
        assert_is_pipe(f, fd);
        assert_int_eq(index, 9);
        assert_false(fcntl(fd, F_GETFL) & O_NONBLOCK);
        close(fd);
        recv_expect(CORRAL_CTL, "\"late\"");
}

static void test_many_kept_handoffs(void **state) {
        Fixture *f = *state;
        for (unsigned i = 0; i < 100; i++)
                master_handoff(f, (unsigned char) (i % 100));
        master_line(f, "{\"type\":\"message\",\"data\":\"end\"}");
        recv_expect(CORRAL_CTL, "\"end\"");
        for (unsigned i = 0; i < 100; i++)
                accept_expect(f, i % 100);
        assert_int_eq(corral_accept_nonblock(NULL), -EAGAIN);
}

/* Read whole lines the worker wrote; returns how many were parsed into msgs. */
static unsigned master_read(Fixture *f, IpcMessage *msgs, unsigned max, char *storage, size_t size) {
        size_t len = 0;
        for (;;) {
                ssize_t n = recv(f->master, storage + len, size - len - 1, MSG_DONTWAIT);
                if (n <= 0)
                        break;
                len += (size_t) n;
        }
        unsigned k = 0;
        for (char *p = storage, *end = storage + len; p < end && k < max;) {
                char *nl = memchr(p, '\n', (size_t) (end - p));
                assert_non_null(nl);
                const char *reason = NULL;
                if (ipc_msg_parse_worker_line(p, (size_t) (nl - p), &msgs[k], &reason) < 0)
                        fail_msg("bad line from the library (%s): %.*s", reason, (int) (nl - p), p);
                k++;
                p = nl + 1;
        }
        return k;
}

static void test_send_and_closed(void **state) {
        Fixture *f = *state;
        IpcMessage m[8];
        static char storage[1 << 20];

        assert_int_eq(corral_send(CORRAL_ALL, "{ \"a\" : [1, 2],\n \"b\" : \"x y\" }"), 0);
        assert_int_eq(corral_send(CORRAL_OTHERS, "null"), 0);
        assert_int_eq(corral_send(3, "\"to three\""), 0);
        assert_int_eq(corral_send(CORRAL_MASTER, "4"), 0);
        assert_int_eq(corral_closed(2), 0);
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 5);
        assert_int_eq(m[0].peer, IPC_PEER_ALL);
        assert_int_eq(m[0].data_len, strlen("{\"a\":[1,2],\"b\":\"x y\"}"));
        assert_int_eq(memcmp(m[0].data, "{\"a\":[1,2],\"b\":\"x y\"}", m[0].data_len), 0);
        assert_int_eq(m[1].peer, IPC_PEER_OTHERS);
        assert_int_eq(m[2].peer, IPC_PEER_SLOT);
        assert_int_eq(m[2].slot, 3);
        assert_int_eq(m[3].peer, IPC_PEER_MASTER);
        assert_int_eq(m[4].type, IPC_MSG_CLOSED);
        assert_int_eq(m[4].n_closed, 2);

        assert_int_eq(corral_send(CORRAL_ALL, "{"), -EINVAL);
        assert_int_eq(corral_send(CORRAL_ALL, "1 2"), -EINVAL);
        assert_int_eq(corral_send(CORRAL_CTL, "1"), -EINVAL);
        assert_int_eq(corral_send(-7, "1"), -EINVAL);
        assert_int_eq(corral_send(70000, "1"), -EINVAL);
        assert_int_eq(corral_send(CORRAL_ALL, NULL), -EINVAL);
        assert_int_eq(corral_closed(0), -EINVAL);
        char *big = malloc(IPC_LINE_MAX + 1);
        memset(big, ' ', IPC_LINE_MAX);
        big[0] = '1';
        big[IPC_LINE_MAX] = 0;
        /* 64 KiB of mostly whitespace compacts to a short line: fine. */
        assert_int_eq(corral_send(CORRAL_ALL, big), 0);
        memset(big, '1', IPC_LINE_MAX);
        assert_int_eq(corral_send(CORRAL_ALL, big), -EMSGSIZE);
        free(big);
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 1);
}

/* Sum the close reports in what the master can read now; junk lines of
 * spaces are skipped. Returns the number of report lines. */
static unsigned master_sum_closed(Fixture *f, unsigned *total) {
        static char storage[4 << 20];
        size_t len = 0;
        unsigned lines = 0;
        for (;;) {
                ssize_t n = recv(f->master, storage + len, sizeof(storage) - len, MSG_DONTWAIT);
                if (n <= 0)
                        break;
                len += (size_t) n;
        }
        for (char *p = storage, *end = storage + len; p < end;) {
                char *nl = memchr(p, '\n', (size_t) (end - p));
                assert_non_null(nl);
                if (*p == '{') {
                        IpcMessage m;
                        assert_int_eq(ipc_msg_parse_worker_line(p, (size_t) (nl - p), &m, NULL), 0);
                        assert_int_eq(m.type, IPC_MSG_CLOSED);
                        *total += m.n_closed;
                        lines++;
                }
                p = nl + 1;
        }
        return lines;
}

static void test_closed_coalesces(void **state) {
        Fixture *f = *state;
        int small = 4096;
        char junk[512];
        unsigned total = 0, lines = 0;

        assert_int_eq(setsockopt(f->worker, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
        assert_int_eq(setsockopt(f->master, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
        /* Fill the worker -> master direction while the master does not read. */
        memset(junk, ' ', sizeof(junk));
        junk[sizeof(junk) - 1] = '\n';
        while (send(f->worker, junk, sizeof(junk), MSG_DONTWAIT) > 0)
                ;
        for (unsigned i = 0; i < 1000; i++)
                assert_int_eq(corral_closed(1), 0);    /* never blocks */
        lines += master_sum_closed(f, &total);
        /* The channel has room again: the next report carries the rest. */
        assert_int_eq(corral_closed(1), 0);
        lines += master_sum_closed(f, &total);
        assert_int_eq(total, 1001);
        assert_true(lines < 100);
}

/* At the fd limit the kernel drops a hand-off's fd and the byte arrives
 * alone, with MSG_CTRUNC: not a protocol error, but a lost connection,
 * reported to the master at most once a second, the rest added up. */
static void test_fd_limit(void **state) {
        Fixture *f = *state;
        IpcMessage m[8];
        static char storage[4096];

        assert_int_eq(corral_accept_nonblock(NULL), -EAGAIN);  /* the reader's buffer, allocated */
        lower_fd_limit();
        master_handoff(f, 1);
        master_line(f, "{\"type\":\"message\",\"from\":\"ctl\",\"data\":1}");
        master_handoff(f, 2);
        assert_int_eq(corral_accept_nonblock(NULL), -EAGAIN);
        restore_fd_limit();

        /* The first loss is reported at once, the second is held back. */
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 1);
        assert_int_eq(m[0].type, IPC_MSG_FD_LIMIT);
        assert_int_eq(m[0].n_lost, 1);
        /* The line between them is intact, and nothing counts as garbage. */
        recv_expect(CORRAL_CTL, "1");
        assert_int_eq(corral_messages_dropped(), 0);

        /* Within the second, a report adds up and waits. */
        assert_int_eq(corral_fd_limit(2), 0);
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 0);
        /* A second later the next read sends the sum, and hand-offs work. */
        libcorral_fd_limit_rearm_for_tests();
        master_handoff(f, 3);
        accept_expect(f, 3);
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 1);
        assert_int_eq(m[0].type, IPC_MSG_FD_LIMIT);
        assert_int_eq(m[0].n_lost, 3);
        assert_int_eq(corral_fd_limit(0), -EINVAL);
}

/* ---- corral_next(): any balance mode --------------------------------------- */

/* A listening TCP socket on 127.0.0.1 (port chosen by the kernel), or an
 * abstract unix one (autobind); *addr gets its address. */
static int tcp_listener(struct sockaddr_storage *addr, socklen_t *len) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        assert_true(fd >= 0);
        assert_int_eq(bind(fd, (struct sockaddr *) &sin, sizeof(sin)), 0);
        assert_int_eq(listen(fd, 16), 0);
        *len = sizeof(*addr);
        assert_int_eq(getsockname(fd, (struct sockaddr *) addr, len), 0);
        return fd;
}

static int unix_listener(struct sockaddr_storage *addr, socklen_t *len) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sa_family_t family = AF_UNIX;
        assert_true(fd >= 0);
        assert_int_eq(bind(fd, (struct sockaddr *) &family, sizeof(family)), 0);     /* autobind */
        assert_int_eq(listen(fd, 16), 0);
        *len = sizeof(*addr);
        assert_int_eq(getsockname(fd, (struct sockaddr *) addr, len), 0);
        return fd;
}

/* A client connected to addr; for unix and loopback TCP the connection is
 * in the listener's backlog when connect() returns. */
static int client_of(const struct sockaddr_storage *addr, socklen_t len) {
        int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        assert_int_eq(connect(fd, (const struct sockaddr *) addr, len), 0);
        return fd;
}

static bool readable(int fd) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        return poll(&p, 1, 0) == 1;
}

static void assert_is_socket(int fd, bool nonblock) {
        assert_true(fd >= 0);
        int type = 0;
        socklen_t len = sizeof(type);
        assert_int_eq(getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len), 0);
        assert_int_eq(type, SOCK_STREAM);
        assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        assert_int_eq(!!(fcntl(fd, F_GETFL) & O_NONBLOCK), nonblock);
}

/* Shared balance: a connection and a message line arrive together. One
 * corral_next() returns the connection and has run the handler. */
static void test_next_shared_connection_and_message(void **state) {
        Fixture *f = *state;
        struct sockaddr_storage a;
        socklen_t alen;
        int l = tcp_listener(&a, &alen);
        unsigned index = 99;

        handler_calls = 0;
        corral_set_message_handler(handler, &handler_calls);
        assert_int_eq(corral_add_listener(l), 0);
        assert_true(fcntl(l, F_GETFL) & O_NONBLOCK);
        int fds[4];
        assert_int_eq(corral_poll_fds(fds, 4), 2);
        assert_int_eq(fds[0], f->worker);
        assert_int_eq(fds[1], l);

        int c = client_of(&a, alen);
        master_line(f, "{\"type\":\"message\",\"from\":\"ctl\",\"data\":\"together\"}");
        int conn = corral_next(&index);
        assert_is_socket(conn, false);
        assert_int_eq(index, 0);
        assert_int_eq(handler_calls, 1);
        assert_string_equal(handler_last, "-4:\"together\"");
        close(conn);
        /* Nothing more: the non-blocking call ends the turn. */
        assert_int_eq(corral_next_nonblock(NULL), -EAGAIN);
        /* Closing a connection the worker accepted itself reports nothing. */
        assert_int_eq(corral_closed(1), 0);
        char buf[64];
        assert_int_eq(recv(f->master, buf, sizeof(buf), MSG_DONTWAIT), -1);
        assert_int_eq(errno, EAGAIN);

        /* A message alone: dispatched by the non-blocking call. */
        master_line(f, "{\"type\":\"message\",\"from\":3,\"data\":4}");
        assert_int_eq(corral_next_nonblock(NULL), -EAGAIN);
        assert_int_eq(handler_calls, 2);
        assert_string_equal(handler_last, "3:4");
        corral_set_message_handler(NULL, NULL);
        close(c);
        close(l);
}

/* LISTEN_FDS as corrald and systemd pass it: fd 3, LISTEN_PID ours. */
static void test_next_listen_fds(void **state) {
        (void) state;
        struct sockaddr_storage a;
        socklen_t alen;
        int l = tcp_listener(&a, &alen);
        int saved = fcntl(CORRAL_LISTEN_FDS_START, F_DUPFD_CLOEXEC, 100);   /* whatever the runner had there */
        char pid[16];

        assert_int_eq(dup2(l, CORRAL_LISTEN_FDS_START), CORRAL_LISTEN_FDS_START);
        snprintf(pid, sizeof(pid), "%d", (int) getpid());
        setenv("LISTEN_PID", pid, 1);
        setenv("LISTEN_FDS", "1", 1);
        libcorral_reset_for_tests();

        int c = client_of(&a, alen);
        unsigned index = 99;
        int conn = corral_next_nonblock(&index);
        assert_is_socket(conn, true);
        assert_int_eq(index, 0);
        close(conn);
        close(c);
        assert_int_eq(corral_next_nonblock(NULL), -EAGAIN);

        unsetenv("LISTEN_PID");
        unsetenv("LISTEN_FDS");
        libcorral_reset_for_tests();
        if (saved >= 0)
                assert_int_eq(dup2(saved, CORRAL_LISTEN_FDS_START), CORRAL_LISTEN_FDS_START);
        else
                close(CORRAL_LISTEN_FDS_START);
        safe_close(saved);
        close(l);
}

/* SPEC §5 fairness: two listeners with three connections each. Each turn
 * takes one from each, never a listener's whole backlog; blocking calls
 * alternate. */
static void test_next_fair_across_listeners(void **state) {
        (void) state;
        struct sockaddr_storage a[2];
        socklen_t alen[2];
        int l[2], c[2][3];

        for (unsigned i = 0; i < 2; i++) {
                l[i] = unix_listener(&a[i], &alen[i]);
                assert_int_eq(corral_add_listener(l[i]), (int) i);
                for (unsigned k = 0; k < 3; k++)
                        c[i][k] = client_of(&a[i], alen[i]);
        }
        for (unsigned turn = 0; turn < 2; turn++) {
                unsigned seen[2] = {}, index;
                int conn;
                while ((conn = corral_next_nonblock(&index)) >= 0) {
                        assert_is_socket(conn, true);
                        assert_true(index < 2);
                        seen[index]++;
                        close(conn);
                }
                assert_int_eq(conn, -EAGAIN);
                assert_int_eq(seen[0], 1);
                assert_int_eq(seen[1], 1);
                /* The rest of each backlog stays there for the siblings. */
                assert_true(readable(l[0]));
                assert_true(readable(l[1]));
        }
        /* The last two, by blocking calls: one from each, in turn. */
        unsigned first = 99, second = 99;
        int conn = corral_next(&first);
        assert_is_socket(conn, false);
        close(conn);
        conn = corral_next(&second);
        assert_is_socket(conn, false);
        close(conn);
        assert_int_eq(first + second, 1);
        assert_false(readable(l[0]));
        assert_false(readable(l[1]));
        assert_int_eq(corral_next_nonblock(NULL), -EAGAIN);
        for (unsigned i = 0; i < 2; i++) {
                for (unsigned k = 0; k < 3; k++)
                        close(c[i][k]);
                close(l[i]);
        }
}

/* Hand-off mode (no listener): corral_next() is corral_accept() with the
 * messages dispatched, and waits. */
static void test_next_handoff(void **state) {
        Fixture *f = *state;
        pthread_t t;
        unsigned index = 0;
        int fds[2];

        assert_int_eq(corral_poll_fds(fds, 2), 1);
        assert_int_eq(fds[0], f->worker);
        handler_calls = 0;
        corral_set_message_handler(handler, &handler_calls);
        master_line(f, "{\"type\":\"message\",\"from\":1,\"data\":\"a\"}");
        master_handoff(f, 4);
        master_handoff(f, 5);
        int fd = corral_next(&index);
        assert_is_pipe(f, fd);
        assert_int_eq(index, 4);
        assert_false(fcntl(fd, F_GETFL) & O_NONBLOCK);
        close(fd);
        assert_int_eq(handler_calls, 1);
        fd = corral_next_nonblock(&index);
        assert_is_pipe(f, fd);
        assert_int_eq(index, 5);
        assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
        close(fd);
        assert_int_eq(corral_next_nonblock(NULL), -EAGAIN);

        /* It waits, and what arrives meanwhile is dispatched. */
        assert_int_eq(pthread_create(&t, NULL, late_master, f), 0);
        fd = corral_next(&index);
        assert_int_eq(pthread_join(t, NULL), 0);
        assert_is_pipe(f, fd);
        assert_int_eq(index, 9);
        close(fd);
        assert_int_eq(handler_calls, 2);
        assert_string_equal(handler_last, "-4:\"late\"");
        corral_set_message_handler(NULL, NULL);

        /* The master gone. */
        f->master = safe_close(f->master);
        assert_int_eq(corral_next(NULL), -ECONNRESET);
        assert_int_eq(corral_next_nonblock(NULL), -ECONNRESET);
}

static void test_next_nothing_to_serve(void **state) {
        (void) state;
        unsetenv("CORRAL_IPC_FD");
        libcorral_reset_for_tests();
        assert_int_eq(corral_poll_fds(NULL, 0), 0);
        assert_int_eq(corral_next(NULL), -ENOENT);
        assert_int_eq(corral_next_nonblock(NULL), -ENOENT);
        int p[2];
        assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        assert_int_eq(corral_add_listener(p[0]), -ENOTSOCK);
        close(p[0]);
        close(p[1]);
}

/* corral_next() in shared mode also sees the master leave. */
static void test_next_shared_master_gone(void **state) {
        Fixture *f = *state;
        struct sockaddr_storage a;
        socklen_t alen;
        int l = unix_listener(&a, &alen);
        assert_int_eq(corral_add_listener(l), 0);
        f->master = safe_close(f->master);
        assert_int_eq(corral_next(NULL), -ECONNRESET);
        close(l);
}

/* Reads a datagram from the notify socket, NUL-terminated. */
static void notify_expect(int sock, const char *text) {
        char buf[256];
        ssize_t n = recv(sock, buf, sizeof(buf) - 1, MSG_DONTWAIT);
        if (n < 0)
                fail_msg("no notify datagram, expected %s", text);
        buf[n] = 0;
        assert_string_equal(buf, text);
}

static void test_drain(void **state) {
        Fixture *f = *state;
        IpcMessage m[8];
        static char storage[4096];
        struct sockaddr_storage a;
        socklen_t alen;
        int l = unix_listener(&a, &alen);

        /* NOTIFY_SOCKET: an abstract datagram socket of ours. */
        int nsock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sa_family_t family = AF_UNIX;
        struct sockaddr_un sun;
        socklen_t sunlen = sizeof(sun);
        assert_int_eq(bind(nsock, (struct sockaddr *) &family, sizeof(family)), 0);
        assert_int_eq(getsockname(nsock, (struct sockaddr *) &sun, &sunlen), 0);
        char name[64] = "@";
        memcpy(name + 1, sun.sun_path + 1, sunlen - offsetof(struct sockaddr_un, sun_path) - 1);
        setenv("NOTIFY_SOCKET", name, 1);

        assert_int_eq(corral_add_listener(l), 0);
        int c = client_of(&a, alen);
        int conn = corral_next_nonblock(NULL);
        assert_is_socket(conn, true);
        /* Three hand-offs and a message wait in the channel; a close
         * report is counted (batching). */
        assert_int_eq(corral_flush(), 0);
        master_handoff(f, 1);
        master_line(f, "{\"type\":\"message\",\"data\":\"bye\"}");
        master_handoff(f, 2);
        master_handoff(f, 3);
        assert_int_eq(corral_closed(2), 0);     /* one self-accepted, one handed off */
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 0);
        int c2 = client_of(&a, alen);   /* arrives after the stop began */

        assert_int_eq(corral_drain(), 3);
        notify_expect(nsock, "STOPPING=1");
        /* The report went out with the drain. */
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 1);
        assert_int_eq(m[0].type, IPC_MSG_CLOSED);
        assert_int_eq(m[0].n_closed, 1);
        /* Nothing to watch any more; the kept hand-offs, then -ESHUTDOWN,
         * without waiting and without accepting from the listener. */
        assert_int_eq(corral_poll_fds(NULL, 0), 0);
        for (unsigned i = 1; i <= 3; i++) {
                unsigned index = 0;
                int fd = i == 2 ? corral_next(&index) : corral_next_nonblock(&index);
                assert_is_pipe(f, fd);
                assert_int_eq(index, i);
                close(fd);
        }
        assert_int_eq(corral_next(NULL), -ESHUTDOWN);
        assert_int_eq(corral_next_nonblock(NULL), -ESHUTDOWN);
        assert_true(readable(l));
        recv_expect(CORRAL_CTL, "\"bye\"");
        /* From here each close is reported at once. */
        assert_int_eq(corral_closed(3), 0);
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 1);
        assert_int_eq(m[0].n_closed, 3);
        /* Idempotent: STOPPING=1 is said once. */
        assert_int_eq(corral_drain(), 0);
        char buf[64];
        assert_int_eq(recv(nsock, buf, sizeof(buf), MSG_DONTWAIT), -1);

        unsetenv("NOTIFY_SOCKET");
        close(conn);
        close(c);
        close(c2);
        close(l);
        close(nsock);
}

/* The notify and LISTEN_FDS protocols, spoken without libsystemd
 * (daemon.c): what sd_notify(3), sd_listen_fds(3) and
 * sd_watchdog_enabled(3) do. */
static void test_daemon_protocols(void **state) {
        (void) state;
        char pid[32], dir[] = "/tmp/test-libcorral.XXXXXX", path[128];
        snprintf(pid, sizeof(pid), "%d", (int) getpid());

        /* Not under a manager: nothing sent, no error. */
        unsetenv("NOTIFY_SOCKET");
        assert_int_eq(corral_ready(), 0);
        /* A path socket. */
        assert_non_null(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/notify", dir);
        int nsock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        memcpy(sun.sun_path, path, strlen(path) + 1);
        assert_int_eq(bind(nsock, (struct sockaddr *) &sun, sizeof(sun)), 0);
        setenv("NOTIFY_SOCKET", path, 1);
        assert_int_eq(corral_ready(), 1);
        notify_expect(nsock, "READY=1");
        assert_int_eq(corral_status("%d of %s", 3, "4"), 1);
        notify_expect(nsock, "STATUS=3 of 4");
        assert_int_eq(corral_watchdog(), 1);
        notify_expect(nsock, "WATCHDOG=1");
        /* Not an address: refused, not sent somewhere else. */
        setenv("NOTIFY_SOCKET", "relative/path", 1);
        assert_true(corral_ready() < 0);
        snprintf(path, sizeof(path), "%s/nobody-listens", dir);
        setenv("NOTIFY_SOCKET", path, 1);
        assert_int_eq(corral_stopping(), -ENOENT);
        unsetenv("NOTIFY_SOCKET");
        close(nsock);
        snprintf(path, sizeof(path), "%s/notify", dir);
        unlink(path);
        rmdir(dir);

        /* LISTEN_FDS: only for the process LISTEN_PID names. */
        int l = socket(AF_INET, SOCK_STREAM, 0), moved = -1;
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        assert_int_eq(bind(l, (struct sockaddr *) &sin, sizeof(sin)), 0);
        assert_int_eq(listen(l, 4), 0);
        if (l != 3) {
                /* fd 3 may be taken by the test runner: keep it aside. */
                moved = fcntl(3, F_DUPFD_CLOEXEC, 100);
                assert_int_eq(dup2(l, 3), 3);
        }
        assert_int_eq(fcntl(3, F_SETFD, 0), 0);
        setenv("LISTEN_PID", "1", 1);
        setenv("LISTEN_FDS", "1", 1);
        assert_int_eq(corral_listen_fds(NULL), 0);
        setenv("LISTEN_PID", pid, 1);
        assert_int_eq(corral_listen_fds(NULL), 1);
        assert_int_eq(fcntl(3, F_GETFD), FD_CLOEXEC);
        char **names = NULL;
        unsetenv("LISTEN_FDNAMES");
        assert_int_eq(corral_listen_fds(&names), 1);
        assert_string_equal(names[0], "unknown");
        assert_null(names[1]);
        free(names[0]);
        free(names);
        setenv("LISTEN_FDNAMES", "web", 1);
        assert_int_eq(corral_listen_fds(&names), 1);
        assert_string_equal(names[0], "web");
        free(names[0]);
        free(names);
        setenv("LISTEN_FDNAMES", "web:extra", 1);
        assert_int_eq(corral_listen_fds(&names), -EINVAL);
        assert_null(names);
        setenv("LISTEN_FDS", "1x", 1);
        assert_int_eq(corral_listen_fds(NULL), -EINVAL);
        unsetenv("LISTEN_PID");
        unsetenv("LISTEN_FDS");
        unsetenv("LISTEN_FDNAMES");
        /* A listening stream socket is one; a connected or datagram one is not. */
        int dgram = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        assert_int_eq(corral_add_listener(dgram), -ENOTSOCK);
        close(dgram);
        if (moved >= 0) {
                assert_int_eq(dup2(moved, 3), 3);
                close(moved);
        } else
                close(3);
        if (l != 3)
                close(l);

        /* The watchdog interval, for this process only. */
        unsetenv("WATCHDOG_PID");
        unsetenv("WATCHDOG_USEC");
        assert_int_eq(corral_watchdog_usec(), 0);
        setenv("WATCHDOG_USEC", "3000000", 1);
        assert_int_eq(corral_watchdog_usec(), 3000000);
        setenv("WATCHDOG_PID", pid, 1);
        assert_int_eq(corral_watchdog_usec(), 3000000);
        setenv("WATCHDOG_PID", "1", 1);
        assert_int_eq(corral_watchdog_usec(), 0);
        unsetenv("WATCHDOG_PID");
        setenv("WATCHDOG_USEC", "soon", 1);
        assert_int_eq(corral_watchdog_usec(), 0);
        unsetenv("WATCHDOG_USEC");
}

/* Close reports: counted while the worker works, one line per turn. */
static void test_closed_once_per_turn(void **state) {
        Fixture *f = *state;
        IpcMessage m[8];
        static char storage[4096];
        pthread_t t;

        /* Not batching yet: every call sends, as before. */
        assert_int_eq(corral_closed(1), 0);
        assert_int_eq(corral_closed(1), 0);
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 2);

        /* An event loop: corral_flush() before each wait. */
        assert_int_eq(corral_flush(), 0);
        for (unsigned i = 0; i < 5; i++)
                assert_int_eq(corral_closed(1), 0);
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 0);
        assert_int_eq(corral_flush(), 0);
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 1);
        assert_int_eq(m[0].type, IPC_MSG_CLOSED);
        assert_int_eq(m[0].n_closed, 5);
        assert_int_eq(corral_flush(), 0);       /* nothing counted: no line */
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 0);

        /* A read of the channel sends them too, before it reads. */
        assert_int_eq(corral_closed(2), 0);
        master_handoff(f, 1);
        int fd = corral_next_nonblock(NULL);
        assert_is_pipe(f, fd);
        close(fd);
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 1);
        assert_int_eq(m[0].n_closed, 2);

        /* corral_next() sends them before it waits: the master sees the
         * report while the worker is still waiting. */
        assert_int_eq(corral_closed(3), 0);
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 0);
        assert_int_eq(pthread_create(&t, NULL, late_master, f), 0);
        fd = corral_next(NULL);
        assert_int_eq(pthread_join(t, NULL), 0);
        assert_is_pipe(f, fd);
        close(fd);
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 1);
        assert_int_eq(m[0].n_closed, 3);
        recv_expect(CORRAL_CTL, "\"late\"");
}

static void test_typed_peers(void **state) {
        Fixture *f = *state;
        IpcMessage m[8];
        static char storage[4096];
        CorralPeer p;

        assert_int_eq(corral_send_to((CorralPeer) { CORRAL_PEER_MASTER, 0 }, "1"), 0);
        assert_int_eq(corral_send_to((CorralPeer) { CORRAL_PEER_ALL, 0 }, "2"), 0);
        assert_int_eq(corral_send_to((CorralPeer) { CORRAL_PEER_OTHERS, 0 }, "3"), 0);
        assert_int_eq(corral_send_to((CorralPeer) { CORRAL_PEER_SLOT, 65535 }, "4"), 0);
        assert_int_eq(master_read(f, m, 8, storage, sizeof(storage)), 4);
        assert_int_eq(m[0].peer, IPC_PEER_MASTER);
        assert_int_eq(m[1].peer, IPC_PEER_ALL);
        assert_int_eq(m[2].peer, IPC_PEER_OTHERS);
        assert_int_eq(m[3].peer, IPC_PEER_SLOT);
        assert_int_eq(m[3].slot, 65535);
        assert_int_eq(corral_send_to((CorralPeer) { CORRAL_PEER_SLOT, 65536 }, "1"), -EINVAL);
        assert_int_eq(corral_send_to((CorralPeer) { CORRAL_PEER_CTL, 0 }, "1"), -EINVAL);
        assert_int_eq(corral_send_to((CorralPeer) { 0 }, "1"), -EINVAL);
        assert_int_eq(corral_send_to((CorralPeer) { 99, 0 }, "1"), -EINVAL);

        master_line(f, "{\"type\":\"message\",\"from\":\"ctl\",\"data\":1}");
        master_line(f, "{\"type\":\"message\",\"from\":7,\"data\":2}");
        CorralMessage msg;
        assert_int_eq(corral_recv_message(&msg), 0);
        assert_int_eq(corral_message_from(&msg, &p), 0);
        assert_int_eq(p.kind, CORRAL_PEER_CTL);
        assert_int_eq(msg.from, CORRAL_CTL);    /* the old field, unchanged */
        assert_int_eq(corral_recv_message(&msg), 0);
        assert_int_eq(corral_message_from(&msg, &p), 0);
        assert_int_eq(p.kind, CORRAL_PEER_SLOT);
        assert_int_eq(p.slot, 7);
        assert_int_eq(msg.from, 7);
        msg.from = CORRAL_ALL;
        assert_int_eq(corral_message_from(&msg, &p), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_environment, setup, teardown),
                cmocka_unit_test_setup_teardown(test_daemon_protocols, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_channel, setup, teardown),
                cmocka_unit_test_setup_teardown(test_interleaved, setup, teardown),
                cmocka_unit_test_setup_teardown(test_handler, setup, teardown),
                cmocka_unit_test_setup_teardown(test_message_without_data, setup, teardown),
                cmocka_unit_test_setup_teardown(test_long_lines, setup, teardown),
                cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fds_inside_a_long_line, setup, teardown),
                cmocka_unit_test_setup_teardown(test_eof, setup, teardown),
                cmocka_unit_test_setup_teardown(test_blocking_accept, setup, teardown),
                cmocka_unit_test_setup_teardown(test_many_kept_handoffs, setup, teardown),
                cmocka_unit_test_setup_teardown(test_send_and_closed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_closed_coalesces, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fd_limit, setup, teardown),
                cmocka_unit_test_setup_teardown(test_next_shared_connection_and_message, setup, teardown),
                cmocka_unit_test_setup_teardown(test_next_listen_fds, setup, teardown),
                cmocka_unit_test_setup_teardown(test_next_fair_across_listeners, setup, teardown),
                cmocka_unit_test_setup_teardown(test_next_handoff, setup, teardown),
                cmocka_unit_test_setup_teardown(test_next_nothing_to_serve, setup, teardown),
                cmocka_unit_test_setup_teardown(test_next_shared_master_gone, setup, teardown),
                cmocka_unit_test_setup_teardown(test_drain, setup, teardown),
                cmocka_unit_test_setup_teardown(test_closed_once_per_turn, setup, teardown),
                cmocka_unit_test_setup_teardown(test_typed_peers, setup, teardown),
        };
        return cmocka_run_group_tests_name("libcorral", tests, NULL, NULL);
}
