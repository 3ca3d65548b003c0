/* bench/hello-server.c: the plain C servers the benchmarks compare against.
 * Not part of corral; bench/handoff and bench/respawn compile it with
 *   cc -O2 -o hello-server bench/hello-server.c
 *
 * Every mode answers any GET with "Hello World\n" and an X-Worker-Pid
 * header, keeps the connection open unless the request says
 * "Connection: close", and for GET /cpu/MS first burns MS milliseconds of
 * CPU (the skewed workload). One epoll loop per process, no threads.
 *
 *   hello-server ref PORT N
 *       The raw reference: a master forks N children; each child binds its
 *       own SO_REUSEPORT listener on 127.0.0.1:PORT (the kernel spreads
 *       connections by hash) and accepts until EAGAIN. The master respawns
 *       a child at once on SIGCHLD. A child prints "ready PID" on stdout
 *       once it listens. SIGTERM/SIGINT stop everything.
 *
 *   hello-server floor PORT N
 *       The syscall floor of a hand-off: a master binds 127.0.0.1:PORT,
 *       forks N children that each get one end of a socketpair as their
 *       channel (they serve as "worker" does, without close reports), and
 *       then does nothing but what a hand-off needs: on each wakeup,
 *       accept4() until EAGAIN, and per connection one sendmsg() of one
 *       byte with the fd to the next child in turn, then close(). Nothing
 *       is read back. What corrald's master costs above this is corral.
 *
 *   hello-server worker [--greedy]
 *       A corral worker written the plain way (docs/protocol.md, no
 *       libcorral): in balance "shared" it accepts from the LISTEN_FDS
 *       listeners, one connection per wakeup, or with --greedy until EAGAIN
 *       as most servers do; in round-robin/least-conn it takes the
 *       connections handed off over CORRAL_IPC_FD and sends close reports.
 *       Sends READY=1 to NOTIFY_SOCKET.
 *
 * On SIGTERM a process exits at once (no graceful drain: this is a bench)
 * after printing "stats: pid P accepted C connections, served R requests"
 * on stderr, the same line corral-hello prints with CORRAL_HELLO_STATS. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BUF_CAP 8192
#define MAX_LISTENERS 16
#define TAG_LISTENER 1u
#define TAG_IPC 2u

typedef struct Conn {
        int fd;
        bool handed_off;
        size_t len;
        char buf[BUF_CAP];
} Conn;

static volatile sig_atomic_t stop_requested;
static unsigned long long n_accepted, n_requests;
static bool greedy;
static int epfd = -1;
static int ipc_fd = -1;
static unsigned long pending_closed;            /* close reports not sent yet */
static bool no_reports;                         /* floor children: nobody reads them */
static char report[64];
static size_t report_len, report_off;
static char ipc_buf[65536 + 8];                 /* unparsed channel bytes */
static size_t ipc_len;

static void on_stop(int sig) {
        (void) sig;
        stop_requested = 1;
}

static void die(const char *what) {
        fprintf(stderr, "hello-server: %s: %s\n", what, strerror(errno));
        exit(1);
}

static void burn_cpu_ms(long ms) {
        struct timespec a, b;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
        for (;;) {
                for (volatile int i = 0; i < 10000; i++)
                        ;
                clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
                if ((b.tv_sec - a.tv_sec) * 1000L + (b.tv_nsec - a.tv_nsec) / 1000000L >= ms)
                        return;
        }
}

static void conn_add(int fd, bool handed_off) {
        Conn *c = malloc(sizeof(Conn));
        if (!c) {
                close(fd);
                return;
        }
        c->fd = fd;
        c->handed_off = handed_off;
        c->len = 0;
        int one = 1;
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        (void) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
                close(fd);
                free(c);
                return;
        }
        n_accepted++;
}

static void flush_report(void) {
        if (ipc_fd < 0)
                return;
        for (;;) {
                if (report_off == report_len) {
                        if (pending_closed == 0)
                                return;
                        report_len = (size_t) snprintf(report, sizeof(report), "{\"type\":\"closed\",\"n\":%lu}\n",
                                                       pending_closed);
                        report_off = 0;
                        pending_closed = 0;
                }
                ssize_t n = send(ipc_fd, report + report_off, report_len - report_off, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n <= 0)
                        return;         /* full: keep the rest for later */
                report_off += (size_t) n;
        }
}

static void conn_close(Conn *c) {
        (void) epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        if (c->handed_off && !no_reports)
                pending_closed++;
        free(c);
}

/* Serve every complete request in the buffer; false when c was closed. */
static bool conn_serve(Conn *c) {
        for (;;) {
                char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
                if (!end)
                        return true;
                size_t req_len = (size_t) (end - c->buf) + 4;
                *end = '\0';
                char *eol = strchr(c->buf, '\r');
                bool close_after = strcasestr(c->buf, "\nConnection: close") != NULL ||
                                   (eol && memmem(c->buf, (size_t) (eol - c->buf), "HTTP/1.0", 8));
                if (strncmp(c->buf, "GET /cpu/", 9) == 0)
                        burn_cpu_ms(strtol(c->buf + 9, NULL, 10));
                char resp[256];
                int n = snprintf(resp, sizeof(resp),
                                 "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
                                 "X-Worker-Pid: %d\r\n%s\r\nHello World\n", (int) getpid(),
                                 close_after ? "Connection: close\r\n" : "");
                n_requests++;
                /* Small answers on loopback: the socket buffer has room; if
                 * not, the client is not reading and loses the connection. */
                if (send(c->fd, resp, (size_t) n, MSG_NOSIGNAL) != n || close_after) {
                        conn_close(c);
                        return false;
                }
                memmove(c->buf, c->buf + req_len, c->len - req_len);
                c->len -= req_len;
        }
}

static void conn_readable(Conn *c) {
        ssize_t n = read(c->fd, c->buf + c->len, BUF_CAP - 1 - c->len);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return;
        if (n <= 0) {
                conn_close(c);
                return;
        }
        c->len += (size_t) n;
        if (conn_serve(c) && c->len >= BUF_CAP - 1)
                conn_close(c);          /* a request that does not fit */
}

static void accept_from(int lfd) {
        do {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0)
                        return;         /* EAGAIN: a sibling took it, or the queue is empty */
                conn_add(fd, false);
        } while (greedy);
}

/* The channel (docs/protocol.md §3): lines starting with '{' are messages
 * (ignored here), any other byte is a hand-off whose fd came with the last
 * byte of the recvmsg() that returned it. */
static void ipc_readable(void) {
        union {
                struct cmsghdr h;
                char space[CMSG_SPACE(sizeof(int) * 8)];
        } cbuf;
        struct iovec iov = { ipc_buf + ipc_len, sizeof(ipc_buf) - 8 - ipc_len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &cbuf,
                             .msg_controllen = sizeof(cbuf) };
        ssize_t n = recvmsg(ipc_fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return;
        if (n <= 0) {
                fprintf(stderr, "hello-server: the master closed the channel\n");
                stop_requested = 1;
                return;
        }
        int fds[8], n_fds = 0;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
                if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
                        for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int) && n_fds < 8; i++)
                                memcpy(&fds[n_fds++], CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
        ssize_t handoff_at = n_fds ? (ssize_t) (ipc_len + (size_t) n - 1) : -1;
        ipc_len += (size_t) n;
        size_t pos = 0;
        int used = 0;
        while (pos < ipc_len) {
                if (ipc_buf[pos] != '{') {
                        if ((ssize_t) pos == handoff_at && used < n_fds) {
                                conn_add(fds[used++], true);
                                handoff_at = -1;
                        }
                        pos++;
                        continue;
                }
                char *nl = memchr(ipc_buf + pos, '\n', ipc_len - pos);
                if (!nl) {
                        if (ipc_len - pos >= sizeof(ipc_buf) - 8)
                                pos = ipc_len;  /* oversize: drop it */
                        break;
                }
                if (handoff_at >= (ssize_t) pos && handoff_at <= nl - ipc_buf)
                        handoff_at = -1;        /* an fd inside a line: not ours */
                pos = (size_t) (nl - ipc_buf) + 1;
        }
        memmove(ipc_buf, ipc_buf + pos, ipc_len - pos);
        ipc_len -= pos;
        for (int i = used; i < n_fds; i++)
                close(fds[i]);
}

static void sd_notify_ready(void) {
        const char *p = getenv("NOTIFY_SOCKET");
        if (!p || !*p)
                return;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        size_t len = strlen(p);
        if (len >= sizeof(sa.sun_path))
                return;
        memcpy(sa.sun_path, p, len);
        if (sa.sun_path[0] == '@')
                sa.sun_path[0] = '\0';
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return;
        (void) sendto(fd, "READY=1", 7, 0, (struct sockaddr *) &sa,
                      (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len));
        close(fd);
}

static void loop(void) {
        struct epoll_event evs[64];
        while (!stop_requested) {
                int n = epoll_wait(epfd, evs, 64, -1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        die("epoll_wait");
                }
                for (int i = 0; i < n; i++) {
                        uint64_t tag = evs[i].data.u64;
                        if ((tag & 0xffu) == TAG_LISTENER && (tag >> 8) < 1024)
                                accept_from((int) (tag >> 8));
                        else if (tag == TAG_IPC)
                                ipc_readable();
                        else
                                conn_readable(evs[i].data.ptr);
                }
                flush_report();
        }
        fprintf(stderr, "stats: pid %d accepted %llu connections, served %llu requests\n", (int) getpid(),
                n_accepted, n_requests);
        exit(0);
}

static void watch_listener(int fd) {
        /* Tags below 1024 << 8 never collide with heap pointers. */
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = ((uint64_t) fd << 8) | TAG_LISTENER };
        (void) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
                die("epoll_ctl listener");
}

static void setup_signals(void) {
        struct sigaction sa = { .sa_handler = on_stop };    /* no SA_RESTART: epoll_wait returns EINTR */
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        epfd = epoll_create1(EPOLL_CLOEXEC);
        if (epfd < 0)
                die("epoll_create1");
}

/* A listening TCP socket on 127.0.0.1:port (one of several, with
 * reuseport); dies on failure. */
static int bind_loopback(int port, bool reuseport) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
        if (fd < 0)
                die("socket");
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (reuseport)
                setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t) port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(fd, 4096) < 0)
                die("bind/listen");
        return fd;
}

static void ref_child(int port) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        setup_signals();
        int fd = bind_loopback(port, true);
        greedy = true;
        watch_listener(fd);
        char line[32];
        int n = snprintf(line, sizeof(line), "ready %d\n", (int) getpid());
        (void) write(STDOUT_FILENO, line, (size_t) n);
        loop();
}

static int ref_master(int port, int n) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGCHLD);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        sigprocmask(SIG_BLOCK, &set, NULL);
        pid_t *kids = calloc((size_t) n, sizeof(pid_t));
        for (;;) {
                for (int i = 0; i < n; i++) {
                        if (kids[i] > 0)
                                continue;
                        pid_t p = fork();
                        if (p < 0)
                                die("fork");
                        if (p == 0)
                                ref_child(port);
                        kids[i] = p;
                }
                siginfo_t si;
                int sig = sigwaitinfo(&set, &si);
                if (sig == SIGTERM || sig == SIGINT)
                        break;
                pid_t p;
                while ((p = waitpid(-1, NULL, WNOHANG)) > 0)
                        for (int i = 0; i < n; i++)
                                if (kids[i] == p)
                                        kids[i] = 0;
        }
        for (int i = 0; i < n; i++)
                if (kids[i] > 0)
                        kill(kids[i], SIGTERM);
        while (wait(NULL) > 0)
                ;
        return 0;
}

static void floor_child(int channel) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        setup_signals();
        ipc_fd = channel;
        no_reports = true;
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_IPC };
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, ipc_fd, &ev) < 0)
                die("epoll_ctl channel");
        loop();
}

static void floor_handoff(int channel, int fd) {
        char byte = 'h';
        union {
                struct cmsghdr h;
                char space[CMSG_SPACE(sizeof(int))];
        } cbuf = { 0 };
        struct iovec iov = { &byte, 1 };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &cbuf,
                             .msg_controllen = sizeof(cbuf) };
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof(int));
        (void) sendmsg(channel, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static int floor_master(int port, int n) {
        if (n < 1 || n > 64) {
                fprintf(stderr, "hello-server: floor: N must be 1..64\n");
                return 2;
        }
        int channels[64];
        pid_t kids[64];
        for (int i = 0; i < n; i++) {
                int sv[2];
                if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                        die("socketpair");
                pid_t p = fork();
                if (p < 0)
                        die("fork");
                if (p == 0) {
                        close(sv[0]);
                        floor_child(sv[1]);
                }
                close(sv[1]);
                channels[i] = sv[0];
                kids[i] = p;
        }
        setup_signals();
        int lfd = bind_loopback(port, false);
        watch_listener(lfd);    /* the only fd watched: no need to look at events */
        struct epoll_event evs[8];
        int next = 0;
        while (!stop_requested) {
                if (epoll_wait(epfd, evs, 8, -1) <= 0)
                        continue;
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
                        floor_handoff(channels[next], fd);
                        next = (next + 1) % n;
                        close(fd);
                }
        }
        for (int i = 0; i < n; i++)
                kill(kids[i], SIGTERM);
        while (wait(NULL) > 0)
                ;
        return 0;
}

static int worker(void) {
        setup_signals();
        const char *e = getenv("LISTEN_FDS"), *pid = getenv("LISTEN_PID");
        int n_listeners = 0;
        if (e && pid && atoi(pid) == (int) getpid()) {
                n_listeners = atoi(e);
                for (int i = 0; i < n_listeners && i < MAX_LISTENERS; i++)
                        watch_listener(3 + i);
        }
        if ((e = getenv("CORRAL_IPC_FD"))) {
                ipc_fd = atoi(e);
                struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_IPC };
                if (epoll_ctl(epfd, EPOLL_CTL_ADD, ipc_fd, &ev) < 0)
                        die("epoll_ctl CORRAL_IPC_FD");
        }
        if (n_listeners == 0 && ipc_fd < 0) {
                fprintf(stderr, "hello-server: no LISTEN_FDS and no CORRAL_IPC_FD\n");
                return 2;
        }
        sd_notify_ready();
        loop();
        return 0;
}

int main(int argc, char **argv) {
        if (argc == 4 && strcmp(argv[1], "ref") == 0)
                return ref_master(atoi(argv[2]), atoi(argv[3]));
        if (argc == 4 && strcmp(argv[1], "floor") == 0)
                return floor_master(atoi(argv[2]), atoi(argv[3]));
        if (argc >= 2 && strcmp(argv[1], "worker") == 0) {
                greedy = argc == 3 && strcmp(argv[2], "--greedy") == 0;
                return worker();
        }
        fprintf(stderr, "usage: hello-server ref PORT N | hello-server floor PORT N | hello-server worker [--greedy]\n");
        return 2;
}
