/* fuzz-libcorral: libFuzzer harness for libcorral's channel reader
 * (src/libcorral/libcorral.c): what a worker reads from CORRAL_IPC_FD,
 * message lines and hand-offs (one byte, one fd in SCM_RIGHTS), driven
 * through a real socketpair, since the reader's job is as much the
 * recvmsg() framing and fd bookkeeping as the lines.
 *
 * The input is a script of records; each starts with a byte h:
 *   h & 3 == 0  write the next h >> 2 bytes (0..63) as one sendmsg()
 *   h & 3 == 1  the same with one fd attached (a hand-off, or a stray fd)
 *   h & 3 == 2  the same with three fds attached (two too many)
 *   h & 3 == 3  call into the library, by (h >> 2) & 7: recv_message,
 *               accept_nonblock, set a handler, clear it, parse the next
 *               record's bytes with corral_parse_message(), or write a
 *               line longer than IPC_LINE_MAX (the discarding path)
 * Then the master hangs up, and everything left is read out.
 *
 * Properties: a message's data is one JSON value, NUL-terminated, from
 * ctl or a slot; an accepted connection is an fd we sent (our /dev/null),
 * close-on-exec; the reader ends with
 * -ECONNRESET after the hang-up, without a loop; and once the harness
 * closed what it accepted and reset the library, no fd is left open. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "corral-internal.h"
#include "corral.h"
#include "fuzz.h"
#include "ipc-msg.h"

/* fds above the ones the harness keeps, checked for leaks. */
#define LEAK_WINDOW 64

static int devnull = -1;
static dev_t devnull_rdev;
static int first_free_fd;
/* fds of the window open when this run began: inherited, or libFuzzer's
 * and the sanitizers' own (the symbolizer's pipes come and go between
 * runs). */
static bool open_at_start[LEAK_WINDOW];

static void check_message(const CorralMessage *m) {
        FUZZ_CHECK(m->from == CORRAL_CTL || (m->from >= 0 && m->from <= (int) IPC_SLOT_MAX), "from %d", m->from);
        FUZZ_CHECK(m->data && m->data[m->data_len] == 0, "data not NUL-terminated");
        FUZZ_CHECK(ipc_json_validate(m->data, m->data_len, NULL) == 0, "data \"%s\" is not one JSON value", m->data);
}

static void on_message(const CorralMessage *m, void *userdata) {
        check_message(m);
        ++*(unsigned *) userdata;
}

static void check_accepted(int fd) {
        struct stat st;
        FUZZ_CHECK(fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == devnull_rdev,
                   "accepted fd %d is not one we sent", fd);
        FUZZ_CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC, "accepted fd %d without FD_CLOEXEC", fd);
        close(fd);
}

/* One sendmsg() of up to len bytes with n_fds copies of /dev/null.
 * Returns the bytes sent, 0 when the socket is full. */
static size_t send_chunk(int fd, const unsigned char *p, size_t len, unsigned n_fds) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * 3)];
        } control = {};
        struct iovec iov = { (void *) p, len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        if (n_fds > 0) {
                mh.msg_control = &control;
                mh.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
                struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
                for (unsigned i = 0; i < n_fds; i++)
                        memcpy(CMSG_DATA(c) + i * sizeof(int), &devnull, sizeof(int));
        }
        ssize_t n = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n == -1 && errno == EAGAIN)
                return 0;
        FUZZ_CHECK(n > 0 || len == 0, "sendmsg: %zd (%m)", n);
        return n > 0 ? (size_t) n : 0;
}

/* Read something, as a worker would: a message, then a connection. */
static void read_some(void) {
        CorralMessage m;
        unsigned index;
        if (corral_recv_message(&m) == 0)
                check_message(&m);
        int fd = corral_accept_nonblock(&index);
        if (fd >= 0)
                check_accepted(fd);
}

/* Send, reading while the socket is full. A reader with 256 hand-offs
 * kept and nothing accepted would never take more: read_some() accepts
 * too. A partial send leaves the rest for the next ones, the fds having
 * gone with the first. */
static void send_all(int fd, const unsigned char *p, size_t len, unsigned n_fds) {
        unsigned tries = 0;
        do {
                size_t n = send_chunk(fd, p, len, n_fds);
                if (n == 0 && len > 0) {
                        FUZZ_CHECK(++tries < 100000, "the reader takes nothing from a full socket");
                        read_some();
                        continue;
                }
                p += n;
                len -= n;
                n_fds = 0;
        } while (len > 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
        struct stat st;
        devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (devnull < 0 || fstat(devnull, &st) < 0)
                abort();
        devnull_rdev = st.st_rdev;
        first_free_fd = fcntl(0, F_DUPFD_CLOEXEC, 0);
        close(first_free_fd);
        return 0;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
        int sv[2];
        unsigned n_handled = 0;
        char env[16];

        for (int i = 0; i < LEAK_WINDOW; i++)
                open_at_start[i] = fcntl(first_free_fd + i, F_GETFD) != -1;
        FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair: %m");
        snprintf(env, sizeof(env), "%d", sv[0]);
        setenv("CORRAL_IPC_FD", env, 1);
        libcorral_reset_for_tests();

        for (size_t i = 0; i < size;) {
                unsigned h = data[i++];
                if ((h & 3) != 3) {
                        size_t len = h >> 2 < size - i ? h >> 2 : size - i;
                        static const unsigned fds_for[] = { 0, 1, 3 };
                        send_all(sv[1], data + i, len, fds_for[h & 3]);
                        i += len;
                        continue;
                }
                CorralMessage m;
                unsigned index;
                int fd;
                switch ((h >> 2) & 7) {
                case 0:
                        if (corral_recv_message(&m) == 0)
                                check_message(&m);
                        break;
                case 1:
                        fd = corral_accept_nonblock(&index);
                        if (fd >= 0)
                                check_accepted(fd);
                        break;
                case 2:
                        corral_set_message_handler(on_message, &n_handled);
                        break;
                case 3:
                        corral_set_message_handler(NULL, NULL);
                        break;
                case 4: {
                        /* The pure entry point, on the next record's bytes. */
                        size_t len = i < size ? data[i] >> 2 : 0;
                        i += i < size;
                        len = len < size - i ? len : size - i;
                        char *line = fuzz_memdup(data + i, len);
                        if (corral_parse_message(line, len, &m) == 0)
                                FUZZ_CHECK((m.data >= line && m.data + m.data_len <= line + len) ||
                                                   (m.data_len == 4 && memcmp(m.data, "null", 4) == 0),
                                           "data outside the line");
                        free(line);
                        i += len;
                        break;
                }
                case 5: {
                        /* A line longer than any the master writes: dropped whole. */
                        static unsigned char big[IPC_LINE_MAX + 2];
                        if (!big[0]) {
                                memset(big, 'x', sizeof(big));
                                big[0] = '{';
                        }
                        send_all(sv[1], big, sizeof(big), 0);
                        break;
                }
                default:
                        (void) corral_messages_dropped();
                        break;
                }
        }

        /* The master goes away: every kept hand-off and message comes out,
         * then -ECONNRESET, from both calls. */
        close(sv[1]);
        for (unsigned round = 0;; round++) {
                FUZZ_CHECK(round < 1000000, "the reader does not come to an end");
                CorralMessage m;
                unsigned index;
                int r = corral_recv_message(&m);
                if (r == 0)
                        check_message(&m);
                else
                        FUZZ_CHECK(r == -ECONNRESET || r == -EAGAIN, "recv_message: %d", r);
                int fd = corral_accept_nonblock(&index);
                if (fd >= 0)
                        check_accepted(fd);
                else
                        FUZZ_CHECK(fd == -ECONNRESET, "accept_nonblock: %d", fd);
                if (r == -ECONNRESET && fd == -ECONNRESET)
                        break;
        }

        libcorral_reset_for_tests();
        close(sv[0]);
        for (int fd = first_free_fd; fd < first_free_fd + LEAK_WINDOW; fd++) {
                if (open_at_start[fd - first_free_fd] || fcntl(fd, F_GETFD) == -1)
                        continue;
                char link[64], target[256] = "?";
                snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
                ssize_t k = readlink(link, target, sizeof(target) - 1);
                target[k > 0 ? k : 1] = 0;
                FUZZ_CHECK(false, "fd %d (%s) left open", fd, target);
        }
        return 0;
}
