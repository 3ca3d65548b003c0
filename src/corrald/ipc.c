/* ipc: see ipc.h. */
#include <cjson/cJSON.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fd-util.h"
#include "ipc.h"
#include "log.h"

static void handle_line(Ipc *ipc, char *line, size_t n) {
        line[n] = 0;
        if (n == 0)
                return;
        cJSON *j = cJSON_ParseWithLengthOpts(line, n + 1, NULL, true);
        if (!j || !cJSON_IsObject(j)) {
                log_warning("%s sent a malformed IPC line (not a JSON object); dropped", ipc->who);
                cJSON_Delete(j);
                return;
        }
        cJSON_Delete(j);
        ipc->on_line(ipc, line);
}

static void on_readable(uv_poll_t *h, int status, int events) {
        Ipc *ipc = h->data;
        char chunk[16384];

        ssize_t n = recv(ipc->fd, chunk, sizeof(chunk), MSG_DONTWAIT);
        if (n == -1 && (errno == EAGAIN || errno == EINTR))
                return;
        if (n <= 0) {
                /* EOF or error: the worker closed its end or is gone. */
                ipc_close(ipc);
                return;
        }

        for (char *p = chunk, *end = chunk + n; p < end;) {
                char *nl = memchr(p, '\n', (size_t) (end - p));
                size_t take = nl ? (size_t) (nl - p) : (size_t) (end - p);

                if (ipc->discarding) {
                        if (nl)
                                ipc->discarding = false;
                } else if (ipc->len + take > IPC_LINE_MAX) {
                        log_warning("%s sent an IPC line longer than %d bytes; dropped", ipc->who, IPC_LINE_MAX);
                        ipc->len = 0;
                        ipc->discarding = !nl;
                } else {
                        memcpy(ipc->buf + ipc->len, p, take);
                        ipc->len += take;
                        if (nl) {
                                handle_line(ipc, ipc->buf, ipc->len);
                                ipc->len = 0;
                        }
                }
                p += take + (nl ? 1 : 0);
                if (!ipc->open)
                        return;
        }
}

int ipc_start(Ipc *ipc, uv_loop_t *loop, int fd) {
        int r;
        ipc->fd = fd;
        ipc->len = 0;
        ipc->discarding = false;
        if ((r = fd_nonblock(fd, true)) < 0)
                goto fail;
        ipc->buf = malloc(IPC_LINE_MAX + 1);
        if (!ipc->buf) {
                r = -ENOMEM;
                goto fail;
        }
        if ((r = uv_poll_init(loop, &ipc->poll, fd)) < 0)
                goto fail;
        ipc->poll.data = ipc;
        ipc->open = true;
        return uv_poll_start(&ipc->poll, UV_READABLE, on_readable);
fail:
        free(ipc->buf);
        ipc->buf = NULL;
        ipc->fd = safe_close(fd);
        return r;
}

int ipc_send_line(Ipc *ipc, const char *line) {
        size_t n = strlen(line);
        if (!ipc->open)
                return -ENOTCONN;
        struct iovec iov[2] = { { (void *) line, n }, { (void *) "\n", 1 } };
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
        ssize_t w = sendmsg(ipc->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w == -1)
                return -errno;
        if ((size_t) w != n + 1) {
                /* Half a line is in the stream now and the next message
                 * would be glued onto it: a worker that does not read its
                 * channel loses it rather than getting corrupt messages. */
                log_warning("%s does not read its IPC channel; closing it", ipc->who);
                ipc_close(ipc);
                return -EAGAIN;
        }
        return 0;
}

static void on_closed(uv_handle_t *h) {
        Ipc *ipc = h->data;
        ipc->fd = safe_close(ipc->fd);
        free(ipc->buf);
        ipc->buf = NULL;
        if (ipc->on_close)
                ipc->on_close(ipc);
}

void ipc_close(Ipc *ipc) {
        if (!ipc->open)
                return;
        ipc->open = false;
        uv_poll_stop(&ipc->poll);
        uv_close((uv_handle_t *) &ipc->poll, on_closed);
}
