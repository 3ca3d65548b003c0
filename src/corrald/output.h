/* output: a worker's stdout and stderr in stderr log mode (SPEC §8).
 *
 * In journal mode the master is off the data path: each worker writes to
 * journald streams of its own (spawn.c). In stderr mode the worker's fds 1
 * and 2 are the write end of a pipe, and this module, on the master's loop,
 * reads the other end and passes the output on to corrald's stderr as
 * "NAME[SLOT/PID]: LINE" (the pid tells an old and a new worker of a slot
 * apart while both run), through log.c's non-blocking FIFO, so lines of
 * different workers (and corrald's own events) never interleave and a
 * stderr nobody reads never blocks the master (lines are dropped and
 * counted then; while the queue is long, the pipes are not read, so a
 * slow reader slows the workers, not the master). Lines stay whole up to OUTPUT_LINE_MAX (journald's
 * default LineMax=); a longer one is passed on in parts of that size, each
 * behind its own prefix. A "<N>" priority prefix at the start of a line is
 * consumed. A partial last line is passed on when the pipe ends or the
 * worker is released. stdout and stderr share the pipe and are not told
 * apart, as with systemd's StandardOutput=journal (a shared stream).
 * Embedded in its Worker. */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <uv.h>

/* journald's default LineMax= (journald.conf(5)). */
#define OUTPUT_LINE_MAX (48 * 1024)

typedef struct Output Output;
/* Called once when the handle has been closed. */
typedef void (*OutputCloseCallback)(Output *o);

struct Output {
        uv_poll_t poll;
        int fd;
        bool open;                 /* the poll handle is initialised and not closed */
        bool paused;               /* waiting for corrald's stderr queue to drain */
        Output *next_paused;
        bool continued;            /* the current line is the rest of a split one */
        size_t prefix_len;         /* buf starts with "NAME[SLOT/PID]: " */
        size_t len;                /* prefix + pending bytes of the current line */
        char *buf;                 /* prefix, the current line, room for a newline */
        size_t cap;                /* allocated size of buf */
        OutputCloseCallback on_close;
        void *userdata;
};

/* Create the pipe for a worker's output: *ret_read for output_start(),
 * *ret_write for the child (SpawnParams.output_fd). Both are CLOEXEC.
 * Returns 0 or -errno; does not log. */
int output_pipe(int *ret_read, int *ret_write);

/* Take ownership of fd (the pipe's read end) and start passing lines on
 * with the prefix "name[slot/pid]: ". Returns 0 or a negative errno (fd is
 * closed on failure); does not log. */
int output_start(Output *o, uv_loop_t *loop, int fd, const char *name, unsigned slot, pid_t pid);

/* Pass on what the pipe already holds (bounded), then the partial last
 * line, then close; on_close runs from the loop afterwards (only if the
 * handle was open). Safe to call twice. */
void output_close(Output *o);
