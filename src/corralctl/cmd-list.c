/* cmd-list: "list", every instance whose control socket is in one of the
 * runtime directories (instance.h), one line each.
 *
 * Each instance is asked for its status with a short timeout, so one
 * stuck instance delays the listing by at most CTL_LIST_TIMEOUT_USEC.
 * A socket nobody answers on is listed as "unreachable" (a stale socket
 * left by a corrald that was killed) and does not make the command fail. */
#include <stdio.h>
#include <string.h>

#include "ctl.h"
#include "instance.h"
#include "table.h"
#include "util.h"

int ctl_call_path(const char *path, const cJSON *req, uint64_t timeout_usec, cJSON **ret) {
        cJSON *res = NULL;
        int r = client_request(path, timeout_usec, req, NULL, NULL, &res);
        if (r < 0)
                return r;
        if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(res, "ok"))) {
                cJSON_Delete(res);
                return -EPROTO;
        }
        *ret = res;
        return 0;
}

int ctl_status_of(const char *path, uint64_t timeout_usec, cJSON **ret) {
        _cleanup_json_ cJSON *req = ctl_new_request("status");
        return req ? ctl_call_path(path, req, timeout_usec, ret) : -ENOMEM;
}

static const char *probe_state(int r) {
        switch (r) {
        case -EACCES:
        case -EPERM:
                return "denied";
        case -ETIMEDOUT:
                return "no-reply";
        default:
                return "unreachable";
        }
}

static int list_one(Table *t, cJSON *json_out, const char *path) {
        _cleanup_free_ char *name = instance_name_from_path(path);
        _cleanup_json_ cJSON *res = NULL;
        char pid[32] = "-", gen[32] = "-", ready[64] = "-";
        int64_t a, b;

        if (!name)
                return -ENOMEM;
        int r = ctl_status_of(path, CTL_LIST_TIMEOUT_USEC, &res);
        if (r == -ENOMEM)
                return r;
        if (json_out) {
                cJSON *o = cJSON_CreateObject();
                if (!o || !cJSON_AddItemToArray(json_out, o) || !cJSON_AddStringToObject(o, "name", name) ||
                    !cJSON_AddStringToObject(o, "socket", path))
                        return -ENOMEM;
                if (r >= 0) {
                        cJSON_AddItemToObject(o, "status", TAKE_PTR(res));
                } else if (!cJSON_AddStringToObject(o, "state", probe_state(r)))
                        return -ENOMEM;
                return 0;
        }
        if (r >= 0) {
                if (ctl_json_int(res, "pid", &a))
                        snprintf(pid, sizeof(pid), "%lld", (long long) a);
                if (ctl_json_int(res, "generation", &a))
                        snprintf(gen, sizeof(gen), "%lld", (long long) a);
                if (ctl_json_int(res, "ready", &a) && ctl_json_int(res, "workers", &b))
                        snprintf(ready, sizeof(ready), "%lld/%lld", (long long) a, (long long) b);
        }
        const char *state = r >= 0 ? ctl_json_str(res, "state") : probe_state(r);
        if ((r = table_add(t, name)) < 0 || (r = table_add(t, pid)) < 0 || (r = table_add(t, gen)) < 0 ||
            (r = table_add(t, ready)) < 0 || (r = table_add(t, state)) < 0 || (r = table_add(t, path)) < 0)
                return r;
        return 0;
}

int cmd_list(Ctl *ctl, char **args) {
        static const char *headers[] = { "NAME", "PID", "GEN", "READY", "STATE", "SOCKET" };
        _cleanup_strv_free_ char **paths = NULL;
        _cleanup_table_free_ Table *t = NULL;
        _cleanup_json_ cJSON *json_out = NULL;
        int r;

        if (args[0])
                return ctl_usage_error("list takes no arguments, got \"%s\"", args[0]);
        if (ctl->instance || ctl->socket)
                return ctl_usage_error("list shows every instance; it takes no -i or -s");

        t = table_new(ELEMENTSOF(headers), headers);
        if (!t || (ctl->json && !(json_out = cJSON_CreateArray())) || instance_discover(&paths) < 0)
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        table_set_right(t, 1, true);
        table_set_right(t, 2, true);
        table_set_right(t, 3, true);
        for (char **p = paths; *p; p++)
                if ((r = list_one(t, json_out, *p)) < 0)
                        return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        if (json_out)
                ctl_print_json(json_out);
        else if (table_rows(t) > 0)
                table_print(t, stdout);
        else
                fprintf(stderr, "No corral instances found.\n");
        return CTL_EXIT_OK;
}
