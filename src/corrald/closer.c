/* closer: see closer.h.
 *
 * The loop's side: closer_close() writes fd numbers into the pipe
 * (non-blocking write end, only ever written by the loop's thread),
 * closer_ready() polls that end for POLLOUT, and a uv_poll_t on it wakes
 * the waiters. Only the loop writes and the thread only takes out, so once
 * poll() said there is room, there still is until the loop writes again:
 * readers of channels that never send fds ask poll() only once. The thread's side: closer_main() reads numbers (blocking
 * read end) and closes them.
 *
 * Why POLLOUT means "room for CLOSER_MSG_FDS_MAX": a pipe reports
 * writable while at least one of its buffers (a page) is free
 * (pipe_poll(), fs/pipe.c), i.e. at least PIPE_BUF bytes. The numbers of
 * one message are written with one write() of at most 253 * 4 = 1012
 * bytes, which is atomic (pipe(7)) and so, given that room, cannot fail;
 * nothing else writes in between, as the loop is the only writer. */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "closer.h"
#include "fd-util.h"
#include "log.h"
#include "macros.h"

/* Lone fds that found the pipe full (see closer_close()). */
#define OVERFLOW_MAX 1024
/* The pipe: at most this many bytes (the default size of a pipe), fewer
 * with a low RLIMIT_NOFILE so that queued fds cannot use up the table. */
#define PIPE_BYTES_MAX (64 * 1024)
#define PIPE_BYTES_MIN (8 * 1024)

static struct {
        bool started;
        int rfd, wfd;
        uv_poll_t poll;
        bool poll_ready, poll_active;
        CloserWaiter *waiters;
        int overflow[OVERFLOW_MAX];
        unsigned n_overflow;
        bool room;                      /* poll said POLLOUT, and nothing was written since */
        uint64_t queued, closed_on_loop;
} c = { .rfd = -EBADF, .wfd = -EBADF };

/* The thread: read numbers, close them. Nothing else, so that it can be
 * inside a close() for as long as the kernel likes without holding
 * anything another thread (or a forked child) could need. A read that
 * ends inside a number (it cannot, as every write is a whole number of
 * ints and pipe reads never split a write that fitted a page, but the
 * cost of not relying on it is two lines) keeps the partial bytes. */
static void *closer_main(void *arg) {
        union {
                int fds[256];
                char bytes[256 * sizeof(int)];
        } buf;
        size_t have = 0;

        for (;;) {
                ssize_t n = read(c.rfd, buf.bytes + have, sizeof(buf) - have);
                if (n == -1 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return NULL;    /* the write end is gone: nothing more will come */
                have += (size_t) n;
                size_t whole = have / sizeof(int);
                for (size_t i = 0; i < whole; i++)
                        (void) close(buf.fds[i]);
                have -= whole * sizeof(int);
                if (have > 0)
                        memmove(buf.bytes, buf.bytes + whole * sizeof(int), have);
        }
}

static size_t pipe_bytes(void) {
        struct rlimit rl;
        size_t want = PIPE_BYTES_MAX;
        /* At most an eighth of the fd table may wait in the pipe. */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
            rl.rlim_cur / 8 * sizeof(int) < want)
                want = MAX((size_t) (rl.rlim_cur / 8 * sizeof(int)), (size_t) PIPE_BYTES_MIN);
        return want;
}

int closer_start(uv_loop_t *loop) {
        _cleanup_close_ int rfd = -EBADF, wfd = -EBADF;
        int p[2], r;

        if (c.started)
                return 0;
        if (pipe2(p, O_CLOEXEC) == -1)
                return -errno;
        rfd = p[0];
        wfd = p[1];
        if ((r = fd_nonblock(wfd, true)) < 0)
                return r;
        /* Shrinking a pipe below its contents fails; it is empty. Growing
         * is never asked for. Not fatal: the default is the maximum. */
        (void) fcntl(wfd, F_SETPIPE_SZ, (int) pipe_bytes());

        /* The thread starts with every signal blocked (it inherits our
         * mask), so that each signal is delivered to the loop's thread. */
        sigset_t all, saved;
        pthread_attr_t attr;
        pthread_t thread;
        sigfillset(&all);
        if ((r = pthread_attr_init(&attr)) != 0)
                return -r;
        /* read() and close() need little stack; sanitizers want more. */
        (void) pthread_attr_setstacksize(&attr, 256 * 1024);
        (void) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        c.rfd = rfd;
        pthread_sigmask(SIG_SETMASK, &all, &saved);
        r = pthread_create(&thread, &attr, closer_main, NULL);
        pthread_sigmask(SIG_SETMASK, &saved, NULL);
        pthread_attr_destroy(&attr);
        if (r != 0) {
                c.rfd = -EBADF;
                return -r;
        }
        (void) pthread_setname_np(thread, "corrald-closer");
        /* The thread owns the read end from here on, for the life of the
         * process. */
        TAKE_FD(rfd);
        c.wfd = TAKE_FD(wfd);
        c.started = true;

        if (uv_poll_init(loop, &c.poll, c.wfd) == 0) {
                c.poll_ready = true;
                uv_unref((uv_handle_t *) &c.poll);      /* see update_poll() */
        }
        return 0;
}

void closer_stop(void) {
        if (!c.poll_ready)
                return;
        c.poll_ready = c.poll_active = false;
        uv_close((uv_handle_t *) &c.poll, NULL);
}

uint64_t closer_queued(void) {
        return c.queued;
}

uint64_t closer_closed_on_loop(void) {
        return c.closed_on_loop;
}

static bool pipe_has_room(void) {
        struct pollfd p = { .fd = c.wfd, .events = POLLOUT };
        return poll(&p, 1, 0) == 1 && (p.revents & POLLOUT);
}

/* Move what waits in the overflow array into the pipe, in order. */
static void flush_overflow(void) {
        while (c.n_overflow > 0) {
                size_t n = MIN((size_t) c.n_overflow, (size_t) (PIPE_BUF / sizeof(int)));
                c.room = false;
                ssize_t w = write(c.wfd, c.overflow, n * sizeof(int));
                if (w == -1 && errno == EINTR)
                        continue;
                if (w <= 0)
                        return;
                /* <= PIPE_BUF bytes: all or nothing (pipe(7)). */
                c.n_overflow -= (unsigned) n;
                memmove(c.overflow, c.overflow + n, c.n_overflow * sizeof(int));
        }
}

static void update_poll(void);

static void on_writable(uv_poll_t *h, int status, int events) {
        flush_overflow();
        /* One at a time from the head: a resume may end another waiter
         * (closer_unwait() then takes it off this same list). Resumes only
         * restart polling and never wait again from inside, so this ends. */
        CloserWaiter *w;
        while (closer_ready() && (w = c.waiters)) {
                LIST_REMOVE(waiters, c.waiters, w);
                w->waiting = false;
                w->resume(w);
        }
        update_poll();
}

static void update_poll(void) {
        bool want = c.poll_ready && (c.waiters || c.n_overflow > 0);
        if (!c.poll_ready)
                return;
        /* A reader waiting for us is work in progress and keeps the loop
         * alive (its own handle is stopped meanwhile); fds in the overflow
         * alone are not: at exit, the kernel closes them. */
        if (c.waiters)
                uv_ref((uv_handle_t *) &c.poll);
        else
                uv_unref((uv_handle_t *) &c.poll);
        if (want == c.poll_active)
                return;
        c.poll_active = want;
        if (want)
                (void) uv_poll_start(&c.poll, UV_WRITABLE, on_writable);
        else
                (void) uv_poll_stop(&c.poll);
}

int closer_close(int fd) {
        if (fd < 0)
                return -EBADF;
        if (!c.started)
                return safe_close(fd);
        /* Keep the order: nothing jumps the overflow. */
        if (c.n_overflow == 0) {
                ssize_t w;
                c.room = false;
                do
                        w = write(c.wfd, &fd, sizeof(fd));
                while (w == -1 && errno == EINTR);
                if (w == sizeof(fd)) {
                        c.queued++;
                        return -EBADF;
                }
        }
        if (c.n_overflow < OVERFLOW_MAX) {
                c.overflow[c.n_overflow++] = fd;
                c.queued++;
                update_poll();
                return -EBADF;
        }
        /* The thread has been stuck for a long while: the pipe is full and
         * so is the overflow. Closing here may block the loop, but holding
         * on to fds without bound would end in EMFILE, where the kernel
         * releases them on the loop anyway. Logged at the first and every
         * 1000th time. */
        if (c.closed_on_loop++ % 1000 == 0)
                log_warning("fd closer: stuck with %u fds waiting; closed one on the event loop (%llu so far)",
                            OVERFLOW_MAX, (unsigned long long) c.closed_on_loop);
        return safe_close(fd);
}

bool closer_ready(void) {
        if (!c.started)
                return true;
        if (c.n_overflow > 0) {
                flush_overflow();
                if (c.n_overflow > 0)
                        return false;
        }
        if (!c.room)
                c.room = pipe_has_room();
        return c.room;
}

void closer_wait(CloserWaiter *w) {
        if (w->waiting)
                return;
        w->waiting = true;
        LIST_PREPEND(waiters, c.waiters, w);
        update_poll();
}

void closer_unwait(CloserWaiter *w) {
        if (!w->waiting)
                return;
        w->waiting = false;
        LIST_REMOVE(waiters, c.waiters, w);
        update_poll();
}
