/* ctl: shared command plumbing; see ctl.h.
 *
 * This is the only place that turns client errors into messages, so every
 * command words "cannot reach the instance" the same way. */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"
#include "instance.h"
#include "util.h"

void ctl_done(Ctl *ctl) {
        free(ctl->path);
        free(ctl->name);
        ctl->path = ctl->name = NULL;
}

int ctl_usage_error(const char *fmt, ...) {
        va_list ap;
        fputs("corralctl: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputs("\nTry 'corralctl --help'.\n", stderr);
        return CTL_EXIT_USAGE;
}

int ctl_error(int code, const char *fmt, ...) {
        va_list ap;
        fputs("corralctl: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        return code;
}

/* With several sockets around, prefer the only one that accepts a
 * connection: stale sockets of crashed instances should not make the
 * user type -i. Returns the index or -1. */
static int only_live(char **paths) {
        int live = -1;
        for (size_t i = 0; paths[i]; i++) {
                _cleanup_client_free_ Client *c = NULL;
                if (client_connect(paths[i], 500 * USEC_PER_MSEC, &c) < 0)
                        continue;
                if (live >= 0)
                        return -1;
                live = (int) i;
        }
        return live;
}

static int resolve_only_instance(Ctl *ctl) {
        _cleanup_strv_free_ char **paths = NULL;
        _cleanup_strv_free_ char **dirs = NULL;
        int r;

        if ((r = instance_discover(&paths)) < 0 || (r = instance_runtime_dirs(&dirs)) < 0)
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        size_t n = strv_length(paths);
        int pick = n == 1 ? 0 : n > 1 ? only_live(paths) : -1;
        if (pick >= 0) {
                ctl->path = strdup(paths[pick]);
                ctl->name = instance_name_from_path(paths[pick]);
                if (!ctl->path || !ctl->name)
                        return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
                return 0;
        }
        if (n == 0) {
                fputs("corralctl: no corral instance found (looked in", stderr);
                if (!dirs[0])
                        fputs(" /run/corral", stderr);
                for (char **d = dirs; *d; d++)
                        fprintf(stderr, "%s %s", d == dirs ? "" : ",", *d);
                fputs("); name one with -i NAME or -s SOCKET\n", stderr);
                return CTL_EXIT_UNREACHABLE;
        }
        fprintf(stderr, "corralctl: %zu instances found, choose one with -i NAME:\n", n);
        for (char **p = paths; *p; p++) {
                _cleanup_free_ char *name = instance_name_from_path(*p);
                fprintf(stderr, "  %s (%s)\n", name ? name : "?", *p);
        }
        fputs("Try 'corralctl --help'.\n", stderr);
        return CTL_EXIT_USAGE;
}

int ctl_resolve(Ctl *ctl) {
        int r;

        if (ctl->path)
                return 0;
        if (ctl->socket) {
                ctl->path = strdup(ctl->socket);
                if (!ctl->path || (ctl->instance && !(ctl->name = strdup(ctl->instance))))
                        return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
                return 0;
        }
        if (ctl->instance) {
                r = instance_socket_path(ctl->instance, &ctl->path);
                if (r == -EINVAL)
                        return ctl_usage_error("invalid instance name \"%s\"", ctl->instance);
                if (r < 0 || !(ctl->name = strdup(ctl->instance)))
                        return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
                return 0;
        }
        return resolve_only_instance(ctl);
}

int ctl_client_error(const char *path, const char *name, int r) {
        const char *why;
        switch (r) {
        case -ENOENT:
                why = "no such socket; is the instance running?";
                break;
        case -ECONNREFUSED:
                why = "connection refused; the socket is stale, corrald is not running";
                break;
        case -EACCES:
        case -EPERM:
                why = "permission denied; only root and corrald's own user may use the control socket";
                break;
        case -ENOTSOCK:
                why = "not a socket";
                break;
        case -EREMOTEIO:
                why = "served by another user's process from a place others control; not trusting it";
                break;
        case -ENAMETOOLONG:
                why = "socket path too long";
                break;
        case -ETIMEDOUT:
                why = "no reply in time";
                break;
        case -ECONNRESET:
        case -EPIPE:
                why = "the connection was closed before a result";
                break;
        case -EBADMSG:
                why = "malformed reply";
                break;
        case -EMSGSIZE:
                why = "reply line longer than 64 KiB";
                break;
        case -EINTR:
                why = "interrupted";
                break;
        default:
                why = strerror(-r);
        }
        if (r == -EBADMSG || r == -EMSGSIZE)
                fprintf(stderr, "corralctl: malformed reply from %s%s%s%s: %s\n", path, name ? " (instance \"" : "",
                        name ? name : "", name ? "\")" : "", why);
        else if (name)
                fprintf(stderr, "corralctl: cannot reach instance \"%s\" at %s: %s\n", name, path, why);
        else
                fprintf(stderr, "corralctl: cannot reach %s: %s\n", path, why);
        return CTL_EXIT_UNREACHABLE;
}

int ctl_connect(Ctl *ctl, Client **ret) {
        int r = ctl_resolve(ctl);
        if (r != 0)
                return r;
        r = client_connect(ctl->path, CTL_TIMEOUT_USEC, ret);
        if (r < 0)
                return ctl_client_error(ctl->path, ctl->name, r);
        return 0;
}

/* The result of a call (client_call(), client_request()): ok, or the
 * error printed, with the exit code it means. */
static int ctl_result(Ctl *ctl, int r, cJSON *result, cJSON **ret_result) {
        if (r == -ENOMEM)
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        if (r < 0)
                return ctl_client_error(ctl->path, ctl->name, r);
        if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "ok"))) {
                const char *e = ctl_json_str(result, "error");
                /* A refused peer never reached the instance: exit 3. */
                bool refused = streq_ptr(ctl_json_str(result, "code"), "permission-denied");
                if (ctl->json)
                        ctl_print_json(result);
                r = ctl_error(refused ? CTL_EXIT_UNREACHABLE : CTL_EXIT_FAILED, "%s%s%s", e ? e : "operation failed (no reason given)",
                              refused ? ": " : "", refused ? ctl->path : "");
                cJSON_Delete(result);
                return r;
        }
        *ret_result = result;
        return CTL_EXIT_OK;
}

int ctl_request(Ctl *ctl, const cJSON *request, uint64_t timeout_usec, client_progress_t progress,
                void *userdata, cJSON **ret_result) {
        cJSON *result = NULL;
        int r = ctl_resolve(ctl);
        if (r != 0)
                return r;
        r = client_request(ctl->path, timeout_usec, request, progress, userdata, &result);
        return ctl_result(ctl, r, result, ret_result);
}

int ctl_request_plain(Ctl *ctl, const char *command, char **args, cJSON **ret_result) {
        if (args[0])
                return ctl_usage_error("%s takes no arguments, got \"%s\"", command, args[0]);
        _cleanup_json_ cJSON *req = ctl_new_request(command);
        if (!req)
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        return ctl_request(ctl, req, CTL_TIMEOUT_USEC, NULL, NULL, ret_result);
}

cJSON *ctl_new_request(const char *command) {
        cJSON *o = cJSON_CreateObject();
        if (o && !cJSON_AddStringToObject(o, "command", command)) {
                cJSON_Delete(o);
                return NULL;
        }
        return o;
}

int ctl_parse_target(const char *s, cJSON **ret) {
        uint64_t v;
        cJSON *t;
        if (strcmp(s, "all") == 0)
                t = cJSON_CreateString("all");
        else if (parse_u64(s, &v) == 0 && v <= INT_MAX)
                t = cJSON_CreateNumber((double) v);
        else
                return -EINVAL;
        if (!t)
                return -ENOMEM;
        *ret = t;
        return 0;
}

void ctl_print_json(const cJSON *o) {
        _cleanup_free_ char *s = cJSON_PrintUnformatted(o);
        if (s)
                puts(s);
        fflush(stdout);
}

bool ctl_json_int(const cJSON *o, const char *key, int64_t *ret) {
        const cJSON *v = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || fabs(v->valuedouble) > 9e15)
                return false;
        *ret = (int64_t) v->valuedouble;
        return true;
}

const char *ctl_json_str(const cJSON *o, const char *key) {
        const cJSON *v = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
        return cJSON_IsString(v) ? v->valuestring : NULL;
}
