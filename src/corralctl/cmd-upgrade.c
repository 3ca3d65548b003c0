/* cmd-upgrade: "upgrade", re-executing corrald in place (SPEC §4 Upgrade,
 * docs/internals/upgrade.md).
 *
 * One request, one result: the old corrald carries this connection across
 * its execve() and the new one answers on it once it has taken over, so
 * the result says which corrald now runs. A refusal or an exec failure
 * comes back from the old one. */
#include <stdio.h>

#include "ctl.h"
#include "util.h"

int cmd_upgrade(Ctl *ctl, char **args) {
        _cleanup_json_ cJSON *res = NULL;
        int64_t pid, upgrades;

        int r = ctl_request_plain(ctl, "upgrade", args, &res);
        if (r != 0)
                return r;
        if (ctl->json)
                ctl_print_json(res);
        else if (ctl_json_int(res, "pid", &pid) && ctl_json_int(res, "upgrades", &upgrades))
                printf("Upgraded in place: corrald %s (%s), pid %lld, upgrade %lld.\n",
                       ctl_json_str(res, "version") ?: "?", ctl_json_str(res, "binary") ?: "?", (long long) pid,
                       (long long) upgrades);
        else
                printf("Upgraded in place.\n");
        return CTL_EXIT_OK;
}
