/* cmd-health: "health", "drain" and "undrain" (SPEC §7): what a load
 * balancer or a probe asks, and how an operator takes a host out of a pool
 * while every worker keeps serving.
 *
 * health exits 0 when the instance serves at full strength, 1 when it is
 * degraded, 2 when it is draining or down (stopping, or not reachable at
 * all: for a probe, an instance that does not answer is down), and prints
 * one line saying which. */
#include <stdio.h>
#include <string.h>

#include "ctl.h"
#include "util.h"

int cmd_health(Ctl *ctl, char **args) {
        _cleanup_json_ cJSON *res = NULL;

        int r = ctl_request_plain(ctl, "health", args, &res);
        if (r == CTL_EXIT_UNREACHABLE) {
                if (ctl->json)
                        printf("{\"health\":\"down\",\"reason\":\"the instance does not answer\"}\n");
                else
                        printf("down: the instance does not answer\n");
                return 2;
        }
        if (r != 0)
                return r;
        const char *health = ctl_json_str(res, "health") ?: "unknown";
        if (ctl->json)
                ctl_print_json(res);
        else
                printf("%s: %s\n", health, ctl_json_str(res, "reason") ?: "");
        if (streq_ptr(health, "healthy"))
                return 0;
        if (streq_ptr(health, "degraded"))
                return 1;
        return 2;
}

static int set_drain(Ctl *ctl, char **args, const char *command) {
        _cleanup_json_ cJSON *res = NULL;

        int r = ctl_request_plain(ctl, command, args, &res);
        if (r != 0)
                return r;
        if (ctl->json)
                ctl_print_json(res);
        else if (strcmp(command, "drain") == 0)
                printf("Draining: health says so (exit 2); every worker keeps serving.\n");
        else
                printf("Not draining: health says what the workers say.\n");
        return CTL_EXIT_OK;
}

int cmd_drain(Ctl *ctl, char **args) {
        return set_drain(ctl, args, "drain");
}

int cmd_undrain(Ctl *ctl, char **args) {
        return set_drain(ctl, args, "undrain");
}
