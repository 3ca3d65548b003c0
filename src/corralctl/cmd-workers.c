/* cmd-workers: "scale", "signal" and "send", the commands that act on
 * workers without a rollout.
 *
 * Arguments are checked here only as far as their syntax goes (a usage
 * error, exit 2, before anything is sent); whether a signal name exists
 * or a slot is in range is corrald's to say, so that the answer is the
 * same for every client. */
#include <stdio.h>
#include <string.h>

#include "ctl.h"
#include "corral-limits.h"
#include "util.h"


/* Print "VERB N worker(s): PID PID ..." from a result's "pids". */
static void print_pids(const cJSON *res, const char *verb) {
        const cJSON *pids = cJSON_GetObjectItemCaseSensitive(res, "pids"), *p;
        int n = cJSON_IsArray(pids) ? cJSON_GetArraySize(pids) : 0;
        printf("%s %d worker%s%s", verb, n, n == 1 ? "" : "s", n > 0 ? ":" : ".");
        const cJSON *array = n > 0 ? pids : NULL;
        cJSON_ArrayForEach(p, array)
                if (cJSON_IsNumber(p))
                        printf(" %.0f", p->valuedouble);
        putchar('\n');
}

static int simple(Ctl *ctl, cJSON *req, void (*print)(const cJSON *res, const char *arg), const char *arg) {
        _cleanup_json_ cJSON *res = NULL;
        int r = ctl_request(ctl, req, CTL_TIMEOUT_USEC, NULL, NULL, &res);
        if (r != 0)
                return r;
        if (ctl->json)
                ctl_print_json(res);
        else
                print(res, arg);
        return CTL_EXIT_OK;
}

static void print_scaled(const cJSON *res, const char *arg) {
        int64_t n;
        if (ctl_json_int(res, "workers", &n))
                printf("Scaled to %lld worker%s.\n", (long long) n, n == 1 ? "" : "s");
        else
                printf("Scaled.\n");
}

int cmd_scale(Ctl *ctl, char **args) {
        uint64_t n;

        if (!args[0])
                return ctl_usage_error("scale: expected N, +N or -N");
        if (args[1])
                return ctl_usage_error("scale: unexpected argument \"%s\"", args[1]);
        const char *a = args[0];
        bool relative = a[0] == '+' || a[0] == '-';
        if (parse_u64(a + relative, &n) < 0 || n < 1 || n > CORRAL_WORKERS_MAX)
                return ctl_usage_error("scale: expected N, +N or -N with N between 1 and %d, got \"%s\"",
                                       CORRAL_WORKERS_MAX, a);

        _cleanup_json_ cJSON *req = ctl_new_request("scale");
        if (!req || !cJSON_AddNumberToObject(req, relative ? "delta" : "workers",
                                             a[0] == '-' ? -(double) n : (double) n))
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        return simple(ctl, req, print_scaled, NULL);
}

static void print_signalled(const cJSON *res, const char *sig) {
        char verb[64];
        snprintf(verb, sizeof(verb), "Sent %s%s to", sig[0] >= '0' && sig[0] <= '9' ? "signal " : "", sig);
        print_pids(res, verb);
}

int cmd_signal(Ctl *ctl, char **args) {
        cJSON *target = NULL, *sig;
        uint64_t num;

        if (!args[0] || !args[1])
                return ctl_usage_error("signal: expected SIGNAL and a slot number or \"all\"");
        if (args[2])
                return ctl_usage_error("signal: unexpected argument \"%s\"", args[2]);
        if (!*args[0])
                return ctl_usage_error("signal: empty signal name");
        int r = ctl_parse_target(args[1], &target);
        if (r == -EINVAL)
                return ctl_usage_error("signal: expected a slot number or \"all\", got \"%s\"", args[1]);
        _cleanup_json_ cJSON *req = ctl_new_request("signal");
        if (r < 0 || !req) {
                cJSON_Delete(target);
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        }
        cJSON_AddItemToObject(req, "target", target);
        /* As given: a number goes as a JSON number, a name as a string;
         * corrald decides whether it is a signal it will send. */
        if (parse_u64(args[0], &num) == 0 && num <= 1024)
                sig = cJSON_CreateNumber((double) num);
        else
                sig = cJSON_CreateString(args[0]);
        if (!sig)
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        cJSON_AddItemToObject(req, "signal", sig);
        return simple(ctl, req, print_signalled, args[0]);
}

static void print_delivered(const cJSON *res, const char *arg) {
        print_pids(res, "Delivered to");
}

int cmd_send(Ctl *ctl, char **args) {
        cJSON *target = NULL;
        const char *end = NULL;

        if (!args[0] || !args[1])
                return ctl_usage_error("send: expected a slot number or \"all\" and a JSON value");
        if (args[2])
                return ctl_usage_error("send: unexpected argument \"%s\" (quote the JSON as one argument)", args[2]);
        int r = ctl_parse_target(args[0], &target);
        if (r == -EINVAL)
                return ctl_usage_error("send: expected a slot number or \"all\", got \"%s\"", args[0]);
        if (r < 0)
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        cJSON *data = cJSON_ParseWithOpts(args[1], &end, true);
        if (!data) {
                cJSON_Delete(target);
                size_t off = end ? (size_t) (end - args[1]) : 0;
                if (off > strlen(args[1]))
                        off = strlen(args[1]);
                return ctl_usage_error("send: invalid JSON at offset %zu: \"%s\"", off, args[1]);
        }
        _cleanup_json_ cJSON *req = ctl_new_request("send");
        if (!req) {
                cJSON_Delete(target);
                cJSON_Delete(data);
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        }
        cJSON_AddItemToObject(req, "target", target);
        cJSON_AddItemToObject(req, "data", data);
        /* The request travels as one line of at most 64 KiB. */
        _cleanup_free_ char *line = cJSON_PrintUnformatted(req);
        if (line && strlen(line) > CLIENT_LINE_MAX)
                return ctl_usage_error("send: message too large (%zu bytes; the limit is 64 KiB per request)",
                                       strlen(line));
        return simple(ctl, req, print_delivered, NULL);
}
