/* output: a worker's stdout and stderr in stderr log mode (SPEC §8).
 *
 * In journal mode the master is off the data path: each worker writes to
 * journald streams of its own (spawn.c). In stderr mode the worker's fds 1
 * and 2 are the write end of a pipe, and this module, on the master's loop,
 * reads the other end and passes the output on to corrald's stderr as
 * "NAME[SLOT]: LINE", each line with a single write(2) of at most PIPE_BUF
 * bytes, so lines of different workers (and corrald's own events) never
 * interleave, even with other writers on the same pipe. A line longer than
 * that is passed on in whole chunks of that size rather than held; a partial
 * last line is passed on when the pipe ends or the worker is released.
 * Writing to stderr blocks: in stderr mode a reader of corrald's stderr
 * that does not keep up slows corrald down, as with any program writing
 * there. Embedded in its Worker. */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct Output Output;
/* Called once when the handle has been closed. */
typedef void (*OutputCloseCallback)(Output *o);

struct Output {
        uv_poll_t poll;
        int fd;
        bool open;                 /* the poll handle is initialised and not closed */
        size_t prefix_len;         /* buf starts with "NAME[SLOT]: " */
        size_t len;                /* prefix + pending bytes of the current line */
        char buf[PIPE_BUF];        /* one output line, newline included, fits */
        OutputCloseCallback on_close;
        void *userdata;
};

/* Create the pipe for a worker's output: *ret_read for output_start(),
 * *ret_write for the child (SpawnParams.output_fd). Both are CLOEXEC.
 * Returns 0 or -errno; does not log. */
int output_pipe(int *ret_read, int *ret_write);

/* Take ownership of fd (the pipe's read end) and start passing lines on
 * with the prefix "name[slot]: ". Returns 0 or a negative errno (fd is
 * closed on failure); does not log. */
int output_start(Output *o, uv_loop_t *loop, int fd, const char *name, unsigned slot);

/* Pass on what the pipe already holds (bounded), then the partial last
 * line, then close; on_close runs from the loop afterwards (only if the
 * handle was open). Safe to call twice. */
void output_close(Output *o);
