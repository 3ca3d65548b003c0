/* cmd-rollout: "reload" and "restart ID|all", the commands that roll new
 * workers in (SPEC §4, Reload).
 *
 * Progress lines are printed as they arrive and flushed at once, so that
 * `systemctl reload` (ExecReload=corralctl -i %i reload) shows them in the
 * journal while the rollout runs. The wait for the result is bounded only
 * by CTL_ROLLOUT_TIMEOUT_USEC: a rollout waits for new workers to become
 * ready, which may legitimately take minutes. */
#include <stdio.h>

#include "ctl.h"
#include "util.h"

static void on_progress(const char *message, const cJSON *line, void *userdata) {
        const Ctl *ctl = userdata;
        if (!streq_ptr(ctl_json_str(line, "type"), "progress"))
                return;
        /* With --json stdout carries only the result object. */
        FILE *f = ctl->json ? stderr : stdout;
        fprintf(f, "%s\n", message);
        fflush(f);
}

static int rollout(Ctl *ctl, cJSON *req, const char *what) {
        _cleanup_json_ cJSON *res = NULL;
        int64_t gen;

        int r = ctl_request(ctl, req, CTL_ROLLOUT_TIMEOUT_USEC, on_progress, ctl, &res);
        if (r != 0)
                return r;
        const char *warning = ctl_json_str(res, "warning");
        if (warning && !ctl->json)
                fprintf(stderr, "corralctl: warning: %s\n", warning);
        if (ctl->json)
                ctl_print_json(res);
        else if (ctl_json_int(res, "generation", &gen))
                printf("%s done, generation %lld.\n", what, (long long) gen);
        else
                printf("%s done.\n", what);
        return CTL_EXIT_OK;
}

int cmd_reload(Ctl *ctl, char **args) {
        if (args[0])
                return ctl_usage_error("reload takes no arguments, got \"%s\"", args[0]);
        _cleanup_json_ cJSON *req = ctl_new_request("reload");
        if (!req)
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        return rollout(ctl, req, "Reload");
}

int cmd_restart(Ctl *ctl, char **args) {
        cJSON *target = NULL;

        if (!args[0])
                return ctl_usage_error("restart: expected a slot number or \"all\"");
        if (args[1])
                return ctl_usage_error("restart: unexpected argument \"%s\"", args[1]);
        int r = ctl_parse_target(args[0], &target);
        if (r == -EINVAL)
                return ctl_usage_error("restart: expected a slot number or \"all\", got \"%s\"", args[0]);
        _cleanup_json_ cJSON *req = ctl_new_request("restart");
        if (r < 0 || !req) {
                cJSON_Delete(target);
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        }
        cJSON_AddItemToObject(req, "target", target);
        return rollout(ctl, req, "Restart");
}
