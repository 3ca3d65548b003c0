/* cmd-http: "serve-http", one HTTP request on standard input answered on
 * standard output: how corral-metrics.socket (Accept=yes) serves
 * Prometheus and load balancers without an HTTP server in the master.
 *
 *   GET /metrics        200, every instance's metrics (as "metrics")
 *   GET /health/NAME    200 "healthy: ..." or "degraded: ..." (it serves),
 *                       503 "draining: ..." or "down: ..." (take it out)
 *   anything else       404 or 405
 *
 * The request head is read with a deadline (a client that sends nothing
 * costs one short-lived process for at most HTTP_READ_TIMEOUT_MS), and is
 * at most HTTP_HEAD_MAX bytes. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "instance.h"
#include "util.h"

#define HTTP_HEAD_MAX 8192
#define HTTP_READ_TIMEOUT_MS 5000

/* Read up to the end of the request head. Returns its length, or -errno. */
static ssize_t read_head(char *buf, size_t size) {
        size_t len = 0;
        uint64_t deadline = now_usec() + HTTP_READ_TIMEOUT_MS * USEC_PER_MSEC;
        while (len < size - 1) {
                uint64_t now = now_usec();
                if (now >= deadline)
                        return -ETIMEDOUT;
                struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
                int k = poll(&p, 1, (int) ((deadline - now) / USEC_PER_MSEC) + 1);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return k < 0 ? -errno : -ETIMEDOUT;
                ssize_t n = read(STDIN_FILENO, buf + len, size - 1 - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return n < 0 ? -errno : -ECONNRESET;
                len += (size_t) n;
                buf[len] = 0;
                if (strstr(buf, "\r\n\r\n") || strstr(buf, "\n\n"))
                        return (ssize_t) len;
        }
        return -E2BIG;
}

static bool head_only;   /* a HEAD request: no body */

static void respond(int code, const char *reason, const char *type, const char *body, size_t len) {
        printf("HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n"
               "Cache-Control: no-store\r\n\r\n",
               code, reason, type, len);
        if (!head_only)
                fwrite(body, 1, len, stdout);
        fflush(stdout);
}

static void respond_text(int code, const char *reason, const char *line) {
        char body[600];
        int n = snprintf(body, sizeof(body), "%s\n", line);
        respond(code, reason, "text/plain; charset=utf-8", body, (size_t) MAX(n, 0));
}

/* The health of instance name, as `corralctl health` says it. */
static void health(const char *name) {
        _cleanup_free_ char *path = NULL;
        _cleanup_json_ cJSON *res = NULL;
        char line[400];

        if (!instance_name_valid(name)) {
                respond_text(404, "Not Found", "no such instance");
                return;
        }
        _cleanup_json_ cJSON *req = ctl_new_request("health");
        int r = req ? instance_socket_path(name, &path) : -ENOMEM;
        if (r >= 0)
                r = ctl_call_path(path, req, CTL_METRICS_TIMEOUT_USEC, &res);
        if (r < 0 || !res) {
                snprintf(line, sizeof(line), "down: %s does not answer", name);
                respond_text(503, "Service Unavailable", line);
                return;
        }
        const char *h = ctl_json_str(res, "health") ?: "unknown";
        snprintf(line, sizeof(line), "%s: %s", h, ctl_json_str(res, "reason") ?: "");
        if (streq_ptr(h, "healthy") || streq_ptr(h, "degraded"))
                respond_text(200, "OK", line);
        else
                respond_text(503, "Service Unavailable", line);
}

static void metrics(void) {
        _cleanup_strv_free_ char **paths = NULL;
        char *text = NULL;
        size_t len = 0;

        FILE *f = open_memstream(&text, &len);
        if (!f || instance_discover(&paths) < 0) {
                if (f)
                        fclose(f);
                free(text);
                respond_text(500, "Internal Server Error", "out of memory");
                return;
        }
        metrics_write(f, paths, CTL_METRICS_TIMEOUT_USEC);
        if (fclose(f) != 0) {
                free(text);
                respond_text(500, "Internal Server Error", "out of memory");
                return;
        }
        respond(200, "OK", "text/plain; version=0.0.4; charset=utf-8", text, len);
        free(text);
}

int cmd_serve_http(Ctl *ctl, char **args) {
        char head[HTTP_HEAD_MAX];
        char method[16], target[256];

        if (args[0])
                return ctl_usage_error("serve-http takes no arguments, got \"%s\"", args[0]);
        ssize_t n = read_head(head, sizeof(head));
        if (n == -E2BIG) {
                respond_text(431, "Request Header Fields Too Large", "request head too large");
                return CTL_EXIT_FAILED;
        }
        if (n < 0)
                return CTL_EXIT_FAILED;     /* nothing to answer: the client went or never spoke */
        if (sscanf(head, "%15s %255s HTTP/%*d.%*d", method, target) != 2) {
                respond_text(400, "Bad Request", "bad request line");
                return CTL_EXIT_FAILED;
        }
        if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
                respond_text(405, "Method Not Allowed", "only GET");
                return CTL_EXIT_FAILED;
        }
        head_only = strcmp(method, "HEAD") == 0;
        char *q = strchr(target, '?');
        if (q)
                *q = 0;
        if (strcmp(target, "/metrics") == 0)
                metrics();
        else if (startswith(target, "/health/"))
                health(target + strlen("/health/"));
        else
                respond_text(404, "Not Found", "try /metrics or /health/NAME");
        return CTL_EXIT_OK;
}
