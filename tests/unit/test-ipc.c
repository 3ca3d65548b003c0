/* test-ipc: the master's end of the IPC channel (src/corrald/ipc.c) on a
 * real socketpair and a real libuv loop. The test plays the worker on the
 * other end. Every wait runs the loop against a deadline. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "test-helpers.h"

#include "closer.h"
#include "fd-util.h"
#include "ipc.h"
#include "util.h"

#define DEADLINE_USEC (10 * USEC_PER_SEC)

typedef struct Fixture {
        uv_loop_t loop;
        Ipc ipc;
        int worker;             /* the worker's end */
        unsigned n_messages, n_closed_reports, closed_total, n_closed_cb;
        unsigned n_fd_limit_reports, fd_limit_lost;
        unsigned n_notify;
        char last_notify[128];
        IpcMessage last;
        char last_data[256];
} Fixture;

static void on_message(Ipc *ipc, const IpcMessage *msg) {
        Fixture *f = ipc->userdata;
        f->n_messages++;
        f->last = *msg;
        snprintf(f->last_data, sizeof(f->last_data), "%.*s", (int) MIN(msg->data_len, 255), msg->data);
        f->last.data = f->last_data;
}

static void on_closed_report(Ipc *ipc, unsigned n) {
        Fixture *f = ipc->userdata;
        f->n_closed_reports++;
        f->closed_total += n;
}

static void on_fd_limit(Ipc *ipc, unsigned n) {
        Fixture *f = ipc->userdata;
        f->n_fd_limit_reports++;
        f->fd_limit_lost += n;
}

static void on_notify(Ipc *ipc, const char *text, size_t len) {
        Fixture *f = ipc->userdata;
        f->n_notify++;
        snprintf(f->last_notify, sizeof(f->last_notify), "%.*s", (int) len, text);
}

static void on_close(Ipc *ipc) {
        Fixture *f = ipc->userdata;
        f->n_closed_cb++;
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        int sv[2];
        assert_non_null(f);
        assert_int_eq(uv_loop_init(&f->loop), 0);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        f->worker = sv[1];
        f->ipc = (Ipc) { .on_message = on_message, .on_closed_report = on_closed_report,
                         .on_fd_limit = on_fd_limit, .on_notify = on_notify, .on_close = on_close,
                         .who = "worker 0", .userdata = f };
        assert_int_eq(ipc_start(&f->ipc, &f->loop, sv[0]), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        ipc_close(&f->ipc);
        uv_run(&f->loop, UV_RUN_DEFAULT);
        assert_int_eq(uv_loop_close(&f->loop), 0);
        safe_close(f->worker);
        free(f);
        return 0;
}

/* Run the loop without blocking until cond(f) or the deadline. */
#define RUN_UNTIL(f, cond)                                                                 \
        do {                                                                               \
                uint64_t _deadline = now_usec() + DEADLINE_USEC;                           \
                while (!(cond)) {                                                          \
                        if (now_usec() > _deadline)                                        \
                                fail_msg("timed out waiting for %s", #cond);               \
                        uv_run(&(f)->loop, UV_RUN_NOWAIT);                                 \
                }                                                                          \
        } while (0)

static void worker_write(Fixture *f, const char *s) {
        assert_int_eq(loop_write(f->worker, s, strlen(s)), 0);
}

static void test_messages_and_reports(void **state) {
        Fixture *f = *state;
        worker_write(f, "{\"type\":\"message\",\"to\":\"all\",\"data\":{\"k\":[1,2]}}\n");
        worker_write(f, "{\"type\":\"closed\",\"n\":3}\n{\"type\":\"closed\",\"n\":2}\n");
        RUN_UNTIL(f, f->n_messages == 1 && f->n_closed_reports == 2);
        assert_int_eq(f->last.peer, IPC_PEER_ALL);
        assert_string_equal(f->last_data, "{\"k\":[1,2]}");
        assert_int_eq(f->closed_total, 5);

        /* A line split over several writes is reassembled. */
        worker_write(f, "{\"type\":\"mes");
        uv_run(&f->loop, UV_RUN_NOWAIT);
        worker_write(f, "sage\",\"to\":4,\"data\":7}\n");
        RUN_UNTIL(f, f->n_messages == 2);
        assert_int_eq(f->last.peer, IPC_PEER_SLOT);
        assert_int_eq(f->last.slot, 4);
        assert_string_equal(f->last_data, "7");
        assert_int_eq(f->ipc.malformed, 0);

        /* A worker at its fd limit: its own callback, not a message. */
        worker_write(f, "{\"type\":\"fd-limit\",\"n\":4}\n{\"type\":\"closed\",\"n\":1}\n");
        RUN_UNTIL(f, f->n_fd_limit_reports == 1 && f->n_closed_reports == 3);
        assert_int_eq(f->fd_limit_lost, 4);
        assert_int_eq(f->n_messages, 2);
        assert_int_eq(f->ipc.malformed, 0);
}

static char compat_got[128];
static unsigned compat_n;

static void on_line(Ipc *ipc, const char *json) {
        snprintf(compat_got, sizeof(compat_got), "%s", json);
        compat_n++;
}

/* Without on_message, the line callback of the first version gets the raw line. */
static void test_line_callback_compat(void **state) {
        Fixture *f = *state;
        f->ipc.on_message = NULL;
        f->ipc.on_line = on_line;
        worker_write(f, "{\"type\":\"message\",\"data\":1}\n{\"type\":\"closed\",\"n\":1}\n");
        RUN_UNTIL(f, compat_n == 1 && f->n_closed_reports == 1);
        assert_string_equal(compat_got, "{\"type\":\"message\",\"data\":1}");
}

static void test_garbage(void **state) {
        Fixture *f = *state;
        static const char garbage[] = "hello\n[1]\n{\"type\":\"nope\"}\n{\x01\x02\xff\n\x00\x00\x00\n{\"type\":\"closed\",\"n\":0}\n"
                                      "\n\n{\"type\":\"message\",\"data\":\"ok\"}\n";
        int logpipe[2], saved_stderr = dup(STDERR_FILENO);
        assert_int_eq(pipe2(logpipe, O_CLOEXEC | O_NONBLOCK), 0);
        assert_int_eq(dup2(logpipe[1], STDERR_FILENO), STDERR_FILENO);

        assert_int_eq(loop_write(f->worker, garbage, sizeof(garbage) - 1), 0);
        RUN_UNTIL(f, f->n_messages == 1);

        assert_int_eq(dup2(saved_stderr, STDERR_FILENO), STDERR_FILENO);
        close(saved_stderr);
        char log[8192];
        ssize_t n = read(logpipe[0], log, sizeof(log) - 1);
        close(logpipe[0]);
        close(logpipe[1]);
        assert_true(n > 0);
        log[n] = 0;
        fprintf(stderr, "%s", log);

        assert_int_eq(f->ipc.malformed, 6);
        assert_string_equal(f->last_data, "\"ok\"");
        assert_true(f->ipc.open);
        /* Rate-limited: 5 log lines for 6 bad lines. */
        unsigned lines = 0;
        for (ssize_t i = 0; i < n; i++) {
                if (log[i] == '\n')
                        lines++;
                else if ((unsigned char) log[i] < 0x20 || (unsigned char) log[i] >= 0x7f)
                        fail_msg("unescaped byte 0x%02x in the log", (unsigned char) log[i]);
        }
        assert_int_eq(lines, 5);
        assert_str_contains(log, "(not a JSON object): \\x00\\x00\\x00");
        assert_str_contains(log, "{\\x01\\x02\\xff");
}

static void test_huge_line(void **state) {
        Fixture *f = *state;
        size_t n = 10 * 1024 * 1024;
        char *big = malloc(n);
        assert_non_null(big);
        memset(big, 'x', n);
        big[0] = '{';
        const char *after = "\n{\"type\":\"message\",\"data\":\"after\"}\n";
        size_t sent = 0;
        assert_int_eq(fd_nonblock(f->worker, true), 0);
        uint64_t deadline = now_usec() + DEADLINE_USEC;
        while (sent < n) {
                ssize_t w = send(f->worker, big + sent, n - sent, MSG_DONTWAIT);
                if (w > 0)
                        sent += (size_t) w;
                else
                        assert_int_eq(errno, EAGAIN);
                uv_run(&f->loop, UV_RUN_NOWAIT);
                if (now_usec() > deadline)
                        fail_msg("timed out writing the 10 MiB line (%zu sent)", sent);
        }
        assert_int_eq(fd_nonblock(f->worker, false), 0);
        worker_write(f, after);
        RUN_UNTIL(f, f->n_messages == 1);
        assert_string_equal(f->last_data, "\"after\"");
        assert_int_eq(f->ipc.malformed, 1);
        assert_true(f->ipc.open);

        /* Exactly IPC_LINE_MAX is not oversize. */
        const char *head = "{\"type\":\"message\",\"data\":7,\"pad\":\"";
        memset(big, 'a', IPC_LINE_MAX);
        memcpy(big, head, strlen(head));
        memcpy(big + IPC_LINE_MAX - 2, "\"}", 2);
        big[IPC_LINE_MAX] = '\n';
        assert_int_eq(loop_write(f->worker, big, IPC_LINE_MAX + 1), 0);
        RUN_UNTIL(f, f->n_messages == 2);
        assert_int_eq(f->ipc.malformed, 1);
        free(big);
}

static void send_with_fds(int sock, const char *data, size_t len, const int *fds, unsigned n_fds) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * 64)];
        } control = {};
        struct iovec iov = { (void *) data, len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                             .msg_controllen = CMSG_SPACE(sizeof(int) * n_fds) };
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * n_fds);
        assert_int_eq(sendmsg(sock, &mh, 0), (ssize_t) len);
}

static void test_attached_fds_are_closed(void **state) {
        Fixture *f = *state;
        unsigned before = count_fds();
        int fds[40];
        for (unsigned i = 0; i < ELEMENTSOF(fds); i++)
                assert_true((fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0);

        const char *line = "{\"type\":\"message\",\"data\":1}\n";
        send_with_fds(f->worker, line, strlen(line), fds, 3);
        /* The master's control buffer takes as many as one sendmsg() can
         * attach, so the kernel never has to release any in our task. */
        send_with_fds(f->worker, line, strlen(line), fds, ELEMENTSOF(fds));
        for (unsigned i = 0; i < ELEMENTSOF(fds); i++)
                safe_close(fds[i]);
        RUN_UNTIL(f, f->n_messages == 2);
        assert_int_eq(f->ipc.fds_refused, 3 + ELEMENTSOF(fds));
        /* Every fd the master received is gone again. */
        assert_int_eq(count_fds(), before);
        assert_true(f->ipc.open);
}

/* The worker end's reader: whole lines and hand-off bytes. Asserts that
 * every line starts with '{' and parses, and that each fd is attached to
 * a byte at a line boundary. The last hand-off is kept in last_index and
 * last_fd. */
typedef struct Reader {
        char partial[IPC_LINE_MAX + 2];
        size_t len;
        unsigned lines, handoffs;
        int last_fd;
        int last_index;
} Reader;

static bool reader_step(Fixture *f, Reader *rd) {
        char buf[65536];
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * 4)];
        } control;
        struct iovec iov = { buf, sizeof(buf) };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                             .msg_controllen = sizeof(control) };
        ssize_t n = recvmsg(f->worker, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n == -1 && errno == EAGAIN)
                return false;
        assert_true(n > 0);
        int fd = -1;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
                assert_int_eq(c->cmsg_type, SCM_RIGHTS);
                assert_int_eq(c->cmsg_len, CMSG_LEN(sizeof(int)));
                memcpy(&fd, CMSG_DATA(c), sizeof(int));
        }
        for (ssize_t i = 0; i < n; i++) {
                char ch = buf[i];
                if (rd->len == 0 && ch != '{') {
                        /* A hand-off byte: the fd belongs to the last byte read. */
                        if (!(fd >= 0 && i == n - 1))
                                fail_msg("hand-off byte %d at offset %zd of %zd without its fd", ch, i, n);
                        rd->handoffs++;
                        rd->last_index = ch;
                        rd->last_fd = fd;
                        fd = -1;
                        continue;
                }
                if (ch == '\n') {
                        rd->partial[rd->len] = 0;
                        IpcMessage m;
                        const char *reason = NULL;
                        if (ipc_msg_parse_master_line(rd->partial, rd->len, &m, &reason) < 0)
                                fail_msg("worker got a bad line (%s): %.60s", reason, rd->partial);
                        rd->lines++;
                        rd->len = 0;
                        continue;
                }
                assert_true(rd->len < IPC_LINE_MAX);
                rd->partial[rd->len++] = ch;
        }
        if (fd >= 0)
                fail_msg("an fd arrived attached to a line byte");
        return true;
}

static void test_full_queue_drops_and_stays_open(void **state) {
        Fixture *f = *state;
        char line[1024];
        unsigned queued = 0, refused = 0;
        int sndbuf = 4096;
        /* Small kernel buffers so the queue fills fast. */
        assert_int_eq(setsockopt(f->ipc.fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
        assert_int_eq(setsockopt(f->worker, SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof(sndbuf)), 0);

        /* The worker does not read: the master's queue fills, then drops. */
        for (unsigned i = 0; i < 2000; i++) {
                int k = snprintf(line, sizeof(line), "{\"type\":\"message\",\"from\":\"ctl\",\"data\":\"%u %0900d\"}", i, 0);
                assert_true(k > 0);
                int r = ipc_send_line(&f->ipc, line);
                if (r == 0)
                        queued++;
                else {
                        assert_int_eq(r, -ENOBUFS);
                        refused++;
                }
                uv_run(&f->loop, UV_RUN_NOWAIT);
        }
        assert_true(refused > 0);
        assert_int_eq(f->ipc.dropped, refused);
        assert_true(ipc_queued(&f->ipc) <= IPC_QUEUE_MAX);
        assert_true(ipc_queued(&f->ipc) > IPC_QUEUE_MAX - 1024);
        assert_true(f->ipc.open);

        /* A hand-off now: the socket is full, so it must be refused cleanly
         * (-EAGAIN), not glued into a line. */
        int pipefd[2];
        assert_int_eq(pipe2(pipefd, O_CLOEXEC), 0);
        assert_int_eq(ipc_send_fd(&f->ipc, pipefd[0], 1), -EAGAIN);
        assert_true(f->ipc.open);

        /* The worker drains; every queued line arrives whole. Try hand-offs
         * along the way: each that succeeds must sit at a line boundary. */
        Reader *rd = calloc(1, sizeof(Reader));
        rd->last_fd = -1;
        unsigned handoffs_sent = 0;
        uint64_t deadline = now_usec() + DEADLINE_USEC;
        while (rd->lines < queued || ipc_queued(&f->ipc) > 0) {
                if (now_usec() > deadline)
                        fail_msg("timed out draining: %u of %u lines", rd->lines, queued);
                (void) reader_step(f, rd);
                uv_run(&f->loop, UV_RUN_NOWAIT);
                if (handoffs_sent < 50) {
                        int r = ipc_send_fd(&f->ipc, pipefd[0], (uint8_t) (handoffs_sent % 3));
                        if (r == 0)
                                handoffs_sent++;
                        else
                                assert_int_eq(r, -EAGAIN);
                }
                if (rd->last_fd >= 0)
                        rd->last_fd = safe_close(rd->last_fd);
        }
        while (reader_step(f, rd))
                if (rd->last_fd >= 0)
                        rd->last_fd = safe_close(rd->last_fd);
        assert_int_eq(rd->lines, queued);
        assert_int_eq(rd->handoffs, handoffs_sent);
        assert_true(handoffs_sent > 0);
        fprintf(stderr, "# queued %u refused %u hand-offs during the drain %u\n", queued, refused, handoffs_sent);

        /* Once drained, a hand-off goes through at once and arrives intact. */
        assert_int_eq(ipc_send_fd(&f->ipc, pipefd[0], 2), 0);
        assert_true(reader_step(f, rd));
        assert_int_eq(rd->last_index, 2);
        assert_true(rd->last_fd >= 0);
        /* It is the same pipe. */
        struct stat a, b;
        assert_int_eq(fstat(rd->last_fd, &a), 0);
        assert_int_eq(fstat(pipefd[0], &b), 0);
        assert_int_eq(a.st_ino, b.st_ino);
        safe_close(rd->last_fd);
        safe_close(pipefd[0]);
        safe_close(pipefd[1]);
        free(rd);

        /* The queue accepts lines again. */
        assert_int_eq(ipc_send_line(&f->ipc, "{\"type\":\"message\",\"from\":\"ctl\",\"data\":1}"), 0);
        assert_true(f->ipc.open);
}

/* A TCP connection whose close() lingers: unsent data, a peer (a listener
 * that never accepts, tiny receive buffer) with a zero window, SO_LINGER
 * {1, 30}. *ret_listener ends it: closing the listener resets it. */
static int lingering_socket(int *ret_listener) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t salen = sizeof(sa);
        int small = 4096;
        int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(l >= 0);
        assert_int_eq(setsockopt(l, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
        assert_int_eq(bind(l, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_eq(listen(l, 4), 0);
        assert_int_eq(getsockname(l, (struct sockaddr *) &sa, &salen), 0);

        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(s >= 0);
        assert_int_eq(setsockopt(s, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
        assert_int_eq(connect(s, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_eq(fd_nonblock(s, true), 0);
        static char junk[65536];
        while (send(s, junk, sizeof(junk), MSG_NOSIGNAL) > 0)
                ;
        assert_int_eq(errno, EAGAIN);
        struct linger lg = { .l_onoff = 1, .l_linger = 30 };
        assert_int_eq(setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
        int unsent = 0;
        assert_int_eq(ioctl(s, TIOCOUTQ, &unsent), 0);
        assert_true(unsent > 0);
        *ret_listener = l;
        return s;
}

/* The closer thread stuck in a lingering close: its pipe fills, the
 * channel stops being read (nothing is closed on the loop), and once the
 * close ends everything queued is closed and the channel is read again.
 * Runs last: the closer, once started, stays for the process. */
static void test_closer_backpressure(void **state) {
        Fixture *f = *state;
        unsigned max = 0;

        /* As corrald does: the pipe's size follows the fd limit. */
        assert_int_eq(rlimit_nofile_raise(), 0);
        assert_int_eq(fd_budget(&max, NULL), 0);
        unsigned before = count_fds();
        assert_int_eq(closer_start(&f->loop), 0);
        unsigned base = count_fds();    /* + the pipe: both ends stay open */

        int listener, ling = lingering_socket(&listener);
        uint64_t t0 = now_usec();
        closer_close(ling);             /* ours was the only reference: the thread now waits */
        assert_true(now_usec() - t0 < USEC_PER_SEC);

        unsigned queued = 0;
        while (closer_ready()) {
                if (queued + base + 64 >= max) {
                        /* The fd limit is lower than the pipe. */
                        safe_close(listener);
                        closer_stop();
                        skip();
                }
                int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                assert_true(fd >= 0);
                closer_close(fd);
                queued++;
        }
        assert_true(queued >= CLOSER_MSG_FDS_MAX);

        /* The worker's fds wait in the kernel: the channel is not read. */
        int fds[3];
        for (unsigned i = 0; i < ELEMENTSOF(fds); i++)
                assert_true((fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0);
        const char *line = "{\"type\":\"message\",\"data\":1}\n";
        send_with_fds(f->worker, line, strlen(line), fds, ELEMENTSOF(fds));
        for (unsigned i = 0; i < ELEMENTSOF(fds); i++)
                safe_close(fds[i]);
        RUN_UNTIL(f, f->ipc.read_paused);
        for (unsigned i = 0; i < 10; i++)
                uv_run(&f->loop, UV_RUN_NOWAIT);
        assert_int_eq(f->n_messages, 0);

        /* Lone fds past a full pipe wait in the overflow, not on the loop. */
        for (unsigned i = 0; i < 10; i++)
                closer_close(open("/dev/null", O_RDONLY | O_CLOEXEC));
        assert_int_eq(closer_closed_on_loop(), 0);

        /* End the linger: the listener's close resets the connection. */
        safe_close(listener);
        RUN_UNTIL(f, closer_ready());
        RUN_UNTIL(f, !f->ipc.read_paused);
        RUN_UNTIL(f, f->n_messages == 1);
        assert_int_eq(f->ipc.fds_refused, ELEMENTSOF(fds));
        assert_false(f->ipc.read_paused);
        RUN_UNTIL(f, count_fds() == base);
        assert_int_eq(closer_closed_on_loop(), 0);
        assert_true(closer_queued() >= queued + 1 + 10 + ELEMENTSOF(fds));
        closer_stop();
        assert_int_eq(base, before + 2);
}

static void test_send_errors(void **state) {
        Fixture *f = *state;
        char *big = malloc(IPC_LINE_MAX + 2);
        memset(big, 'a', IPC_LINE_MAX + 1);
        big[IPC_LINE_MAX + 1] = 0;
        assert_int_eq(ipc_send_line(&f->ipc, big), -EINVAL);
        free(big);
        assert_int_eq(ipc_send_line(&f->ipc, "{}\n{}"), -EINVAL);
        assert_int_eq(ipc_send_fd(&f->ipc, 0, '{'), -EINVAL);
        assert_int_eq(f->ipc.dropped, 0);
}

static void test_worker_gone(void **state) {
        Fixture *f = *state;
        f->worker = safe_close(f->worker);
        int r = ipc_send_fd(&f->ipc, 0, 0);
        assert_true(r == -EPIPE || r == -ECONNRESET);
        RUN_UNTIL(f, f->n_closed_cb == 1);
        assert_false(f->ipc.open);
        assert_int_eq(ipc_send_line(&f->ipc, "{}"), -ENOTCONN);
        assert_int_eq(ipc_send_fd(&f->ipc, 0, 0), -ENOTCONN);
}

/* sd_notify over the channel, in either dialect (SPEC §3). */
static void test_notify_line(void **state) {
        Fixture *f = *state;
        worker_write(f, "{\"type\":\"notify\",\"text\":\"READY=1\\nSTATUS=up \\u00e9\"}\n");
        RUN_UNTIL(f, f->n_notify == 1);
        assert_string_equal(f->last_notify, "READY=1\nSTATUS=up \xc3\xa9");
        assert_int_eq(f->n_messages, 0);
        assert_int_eq(f->ipc.malformed, 0);
        /* Node's own lines mean nothing in the corral dialect. */
        worker_write(f, "{\"cmd\":\"NODE_HANDLE_ACK\"}\n{\"type\":\"closed\",\"n\":1}\n");
        RUN_UNTIL(f, f->n_closed_reports == 1);
        assert_int_eq(f->ipc.malformed, 1);
}

static const char * const node_handles[] = {
        "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{\"type\":\"connection\",\"listener\":0,\"name\":\"a\"}}\n",
        "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{\"type\":\"connection\",\"listener\":1,\"name\":\"b\"}}\n",
        NULL,
};

static size_t test_handoff_line(Ipc *ipc, uint8_t listener, char *buf, size_t size) {
        return (size_t) snprintf(buf, size, "%s", node_handles[listener]);
}

/* Read one chunk as Node (libuv) would, with at most one fd. */
static ssize_t worker_recv(Fixture *f, char *buf, size_t size, int *ret_fd) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int))];
        } control;
        struct iovec iov = { buf, size };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                             .msg_controllen = sizeof(control) };
        ssize_t n = recvmsg(f->worker, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        *ret_fd = cmsg_take_first_fd(&mh);
        return n;
}

typedef struct TakenBack {
        int fd[8];
        uint8_t listener[8];
        unsigned n;
} TakenBack;

static void on_taken(void *userdata, int fd, uint8_t listener) {
        TakenBack *t = userdata;
        assert_true(t->n < 8);
        t->fd[t->n] = fd;
        t->listener[t->n++] = listener;
}

/* ipc "node": a hand-off is Node's NODE_HANDLE line with the fd on it; ACK
 * is consumed, NACK is a lost hand-off; unread ones come back with their
 * listeners, one the worker has begun to read does not. */
static void test_node_dialect(void **state) {
        Fixture *f = *state;
        char buf[512];
        int fd, sv[2];
        f->ipc.dialect = IPC_DIALECT_NODE;
        f->ipc.handoff_line = test_handoff_line;
        ipc_keep_peer(&f->ipc, fcntl(f->worker, F_DUPFD_CLOEXEC, 3));
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);

        assert_int_eq(ipc_send_fd(&f->ipc, sv[0], 1), 0);
        assert_int_eq(ipc_inflight(&f->ipc), 1);
        ssize_t n = worker_recv(f, buf, sizeof(buf), &fd);
        assert_int_eq(n, (ssize_t) strlen(node_handles[1]));
        assert_memory_equal(buf, node_handles[1], (size_t) n);
        assert_true(fd >= 0);
        safe_close(fd);
        assert_int_eq(ipc_inflight(&f->ipc), 0);

        worker_write(f, "{\"cmd\":\"NODE_HANDLE_ACK\"}\n{\"cmd\":\"NODE_HANDLE_NACK\"}\n");
        worker_write(f, "{\"cmd\":\"NODE_CLUSTER\",\"act\":\"online\"}\n{\"type\":\"notify\",\"text\":\"READY=1\"}\n");
        RUN_UNTIL(f, f->n_notify == 1);
        assert_int_eq(f->n_fd_limit_reports, 1);
        assert_int_eq(f->fd_limit_lost, 1);
        assert_int_eq(f->ipc.malformed, 1);    /* NODE_CLUSTER: not taken */
        assert_int_eq(f->n_messages, 0);

        /* Three unread, between lines: back in order, with their listeners. */
        assert_int_eq(ipc_send_line(&f->ipc, "{\"type\":\"message\",\"data\":1}"), 0);
        assert_int_eq(ipc_send_fd(&f->ipc, sv[0], 1), 0);
        assert_int_eq(ipc_send_fd(&f->ipc, sv[0], 0), 0);
        assert_int_eq(ipc_send_line(&f->ipc, "{\"type\":\"message\",\"data\":2}"), 0);
        assert_int_eq(ipc_send_fd(&f->ipc, sv[0], 1), 0);
        assert_int_eq(ipc_inflight(&f->ipc), 3);
        TakenBack t = {};
        assert_int_eq(ipc_take_back(&f->ipc, on_taken, &t), 3);
        assert_int_eq(t.n, 3);
        assert_int_eq(t.listener[0], 1);
        assert_int_eq(t.listener[1], 0);
        assert_int_eq(t.listener[2], 1);
        for (unsigned i = 0; i < t.n; i++)
                safe_close(t.fd[i]);
        assert_int_eq(f->ipc.dropped, 2);

        /* The worker read 10 bytes of the first: its fd came with them. */
        assert_int_eq(ipc_send_fd(&f->ipc, sv[0], 0), 0);
        assert_int_eq(ipc_send_fd(&f->ipc, sv[0], 1), 0);
        assert_int_eq(worker_recv(f, buf, 10, &fd), 10);
        assert_true(fd >= 0);
        safe_close(fd);
        t = (TakenBack) {};
        assert_int_eq(ipc_take_back(&f->ipc, on_taken, &t), 1);
        assert_int_eq(t.listener[0], 1);
        safe_close(t.fd[0]);
        safe_close(sv[0]);
        safe_close(sv[1]);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_messages_and_reports, setup, teardown),
                cmocka_unit_test_setup_teardown(test_line_callback_compat, setup, teardown),
                cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
                cmocka_unit_test_setup_teardown(test_huge_line, setup, teardown),
                cmocka_unit_test_setup_teardown(test_attached_fds_are_closed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_full_queue_drops_and_stays_open, setup, teardown),
                cmocka_unit_test_setup_teardown(test_send_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_worker_gone, setup, teardown),
                cmocka_unit_test_setup_teardown(test_closer_backpressure, setup, teardown),
                cmocka_unit_test_setup_teardown(test_notify_line, setup, teardown),
                cmocka_unit_test_setup_teardown(test_node_dialect, setup, teardown),
        };
        return cmocka_run_group_tests_name("ipc", tests, NULL, NULL);
}
