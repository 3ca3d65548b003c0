/* ipc: the master's end of a worker's CORRAL_IPC_FD channel (SPEC §6).
 *
 * A connected AF_UNIX stream socket carrying newline-delimited JSON. This
 * module reads and frames lines; a line that is too long or not a JSON
 * object is dropped and logged, never fatal. Embedded in its Worker. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#define IPC_LINE_MAX (64 * 1024)

typedef struct Ipc Ipc;
/* Called for each complete line that parsed as a JSON object. `json` is the
 * raw line text (NUL-terminated, no newline). */
typedef void (*IpcLineCallback)(Ipc *ipc, const char *json);
/* Called once when the handle has been closed. */
typedef void (*IpcCloseCallback)(Ipc *ipc);

struct Ipc {
        uv_poll_t poll;
        int fd;
        bool open;               /* the poll handle is initialised and not closed */
        char *buf;               /* partial line */
        size_t len;
        bool discarding;         /* inside an oversize line, skip to its newline */
        IpcLineCallback on_line;
        IpcCloseCallback on_close;
        const char *who;         /* for log messages, e.g. "worker 2" */
        void *userdata;
};

/* Take ownership of fd and start reading. Returns 0 or a negative errno
 * (fd is closed on failure). */
int ipc_start(Ipc *ipc, uv_loop_t *loop, int fd);

/* Send one line (a newline is appended). Non-blocking: returns -EAGAIN if
 * the worker is not reading. Returns 0 or -errno. */
int ipc_send_line(Ipc *ipc, const char *line);

/* Stop reading and close; on_close runs from the loop afterwards (only if
 * the handle was open). Safe to call twice. */
void ipc_close(Ipc *ipc);
