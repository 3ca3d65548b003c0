/* ctl: what every corralctl command shares: the parsed global options,
 * finding the instance, calling it, and turning failures into the exit
 * codes of SPEC §7 with one message on stderr.
 *
 * Functions returning an exit code have already printed the reason. */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "client.h"
#include "macros.h"

enum {
        CTL_EXIT_OK = 0,
        CTL_EXIT_FAILED = 1,      /* the operation failed (result ok: false) */
        CTL_EXIT_USAGE = 2,       /* bad command line */
        CTL_EXIT_UNREACHABLE = 3, /* cannot reach or understand the instance */
};

#define CTL_TIMEOUT_USEC (30 * USEC_PER_SEC)          /* any ordinary request */
#define CTL_ROLLOUT_TIMEOUT_USEC (600 * USEC_PER_SEC) /* reload, restart: rollouts can be slow */
#define CTL_LIST_TIMEOUT_USEC (2 * USEC_PER_SEC)      /* per instance in list */
/* Per instance in metrics of every instance: a scrape storm queues them
 * (each is a full status), and Prometheus waits 10 s by default. */
#define CTL_METRICS_TIMEOUT_USEC (5 * USEC_PER_SEC)

static inline void json_deletep(cJSON **j) {
        cJSON_Delete(*j);
}
#define _cleanup_json_ _cleanup_(json_deletep)

typedef struct Ctl {
        /* Global options. */
        const char *instance;   /* -i NAME */
        const char *socket;     /* -s PATH */
        bool json;
        /* logs options. */
        bool follow;
        const char *worker;     /* -w ID */
        const char *lines;      /* -n N */

        /* Filled by ctl_resolve(): the socket to use and, when known, the
         * instance's name for messages. */
        char *path;
        char *name;
} Ctl;

void ctl_done(Ctl *ctl);

/* Print "corralctl: MESSAGE" and the --help hint; returns CTL_EXIT_USAGE. */
int ctl_usage_error(const char *fmt, ...) _printf_(1, 2);
/* Print "corralctl: MESSAGE"; returns code. */
int ctl_error(int code, const char *fmt, ...) _printf_(2, 3);

/* Decide which socket to talk to: -s, else -i NAME, else the only instance
 * found. Returns 0 or an exit code. */
int ctl_resolve(Ctl *ctl);

/* Print why path could not be reached or understood (r is a -errno from
 * client.h) and return CTL_EXIT_UNREACHABLE. */
int ctl_client_error(const char *path, const char *name, int r);

/* ctl_resolve() + client_connect(). Returns 0 or an exit code. */
int ctl_connect(Ctl *ctl, Client **ret);

/* Connect and send one request (client_request(): a "busy" corrald is
 * asked again), the common shape of most commands. Returns CTL_EXIT_OK with
 * the ok:true result in *ret_result (caller frees), CTL_EXIT_FAILED after
 * printing the server's error for ok:false (and, with --json, the result
 * itself), or CTL_EXIT_UNREACHABLE. */
int ctl_request(Ctl *ctl, const cJSON *request, uint64_t timeout_usec, client_progress_t progress,
                void *userdata, cJSON **ret_result);
/* ctl_request() of a command that takes no arguments ({"command": ...}),
 * after refusing any in args with a usage error. */
int ctl_request_plain(Ctl *ctl, const char *command, char **args, cJSON **ret_result);

/* {"command": name}; NULL on ENOMEM. */
cJSON *ctl_new_request(const char *command);

/* Parse a slot number or "all" into a JSON value for "target". Returns 0
 * or -EINVAL / -ENOMEM. */
int ctl_parse_target(const char *s, cJSON **ret);

/* Print o as one line of JSON on stdout. */
void ctl_print_json(const cJSON *o);

/* Lenient accessors for server replies: they never trust the shape. */
bool ctl_json_int(const cJSON *o, const char *key, int64_t *ret);
const char *ctl_json_str(const cJSON *o, const char *key);

/* The commands, one file per group. Each returns an exit code. */
int cmd_status(Ctl *ctl, char **args);
int cmd_top(Ctl *ctl, char **args);
int cmd_reload(Ctl *ctl, char **args);
int cmd_restart(Ctl *ctl, char **args);
int cmd_scale(Ctl *ctl, char **args);
int cmd_signal(Ctl *ctl, char **args);
int cmd_send(Ctl *ctl, char **args);
int cmd_messages(Ctl *ctl, char **args);
int cmd_logs(Ctl *ctl, char **args);
int cmd_list(Ctl *ctl, char **args);
int cmd_upgrade(Ctl *ctl, char **args);
int cmd_metrics(Ctl *ctl, char **args);

/* Ask the instance on socket path for its status, within timeout_usec
 * (CTL_LIST_TIMEOUT_USEC for `list`). Returns 0 with the result (caller
 * frees), or -errno. Does not print. */
int ctl_status_of(const char *path, uint64_t timeout_usec, cJSON **ret);
/* The same for any request. */
int ctl_call_path(const char *path, const cJSON *req, uint64_t timeout_usec, cJSON **ret);
/* The metrics of the instances on these sockets (cmd-metrics.c); each
 * asked with ctl_status_of() within timeout_usec, one that does not answer
 * as corral_up 0. Returns how many answered. */
size_t metrics_write(FILE *f, char * const *paths, uint64_t timeout_usec);
int cmd_serve_http(Ctl *ctl, char **args);
int cmd_health(Ctl *ctl, char **args);
int cmd_drain(Ctl *ctl, char **args);
int cmd_undrain(Ctl *ctl, char **args);
