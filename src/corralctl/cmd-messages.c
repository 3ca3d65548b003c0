/* cmd-messages: "messages [-f]", the messages workers sent to the master
 * (SPEC §6): the last ones kept by corrald, or with -f those and then each
 * new one as it arrives, until Ctrl-C or corrald stops. One line each:
 * "SLOT PID: DATA", or with --json the message object itself. */
#include <stdio.h>

#include "ctl.h"
#include "util.h"

/* Effectively no deadline: -f ends with the user or with corrald. */
#define FOLLOW_TIMEOUT_USEC (100ULL * 365 * 24 * 3600 * USEC_PER_SEC)

static void print_message(const cJSON *m, const Ctl *ctl) {
        int64_t from = -1, pid = 0;
        if (ctl->json) {
                cJSON *copy = cJSON_Duplicate(m, true);
                if (copy) {
                        cJSON_DeleteItemFromObjectCaseSensitive(copy, "type");
                        ctl_print_json(copy);
                        cJSON_Delete(copy);
                }
                return;
        }
        (void) ctl_json_int(m, "from", &from);
        (void) ctl_json_int(m, "pid", &pid);
        _cleanup_free_ char *data = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(m, "data"));
        printf("%lld %lld: %s\n", (long long) from, (long long) pid, data ? data : "null");
}

static void on_line(const char *message, const cJSON *line, void *userdata) {
        if (streq_ptr(ctl_json_str(line, "type"), "message")) {
                print_message(line, userdata);
                fflush(stdout);
        }
}

int cmd_messages(Ctl *ctl, char **args) {
        _cleanup_json_ cJSON *res = NULL;

        if (args[0])
                return ctl_usage_error("messages takes no arguments, got \"%s\"", args[0]);
        _cleanup_json_ cJSON *req = ctl_new_request("messages");
        if (!req || (ctl->follow && !cJSON_AddTrueToObject(req, "follow")))
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        int r = ctl_request(ctl, req, ctl->follow ? FOLLOW_TIMEOUT_USEC : CTL_TIMEOUT_USEC, on_line, ctl, &res);
        if (r != 0)
                return r;
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(res, "messages");
        const cJSON *m;
        cJSON_ArrayForEach(m, list)
                print_message(m, ctl);
        return CTL_EXIT_OK;
}
