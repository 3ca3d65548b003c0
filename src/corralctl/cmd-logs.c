/* cmd-logs: "logs [-f] [-w ID] [-n N]", a front end to journalctl.
 *
 * corrald logs its own events with CORRAL_INSTANCE=<name> and workers log
 * with SYSLOG_IDENTIFIER=<name> (SPEC §8), so the instance's whole log is
 * the disjunction of those two matches; journalctl ORs match groups
 * separated by "+" (journalctl(1)). One slot across its restarts (-w) is
 * its master events plus the output of every pid it has had: those pids
 * are read first from the slot's "spawn" events, so with -f only workers
 * known at start are followed. The final journalctl replaces corralctl
 * (execvp), keeping its pager, colours and exit status.
 *
 * An instance that logs to its standard error (embedded mode: not under
 * systemd, or --log stderr) has nothing in the journal; when it is
 * running and says so in its status reply ("log": "stderr"), logs tells
 * the user where the lines are and fails instead of printing journalctl's
 * "No journal files were found" or "-- No entries --" with status 0. */
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctl.h"
#include "fd-util.h"
#include "instance.h"
#include "util.h"

#define LOGS_DEFAULT_LINES "50"
#define LOGS_MAX_PIDS 4096 /* the most recent ones; bounds the command line */

/* The instance's name: -i, else the found socket's name, else (-s) ask
 * the instance itself. */
static int logs_name(Ctl *ctl, char **ret) {
        _cleanup_json_ cJSON *req = NULL, *res = NULL;
        int r;

        if (ctl->instance) {
                if (!instance_name_valid(ctl->instance))
                        return ctl_usage_error("invalid instance name \"%s\"", ctl->instance);
                *ret = strdup(ctl->instance);
                return *ret ? 0 : ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        }
        r = ctl_resolve(ctl);
        if (r != 0)
                return r;
        if (!ctl->socket) {
                *ret = strdup(ctl->name);
                return *ret ? 0 : ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        }
        req = ctl_new_request("status");
        if (!req)
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        r = ctl_request(ctl, req, CTL_TIMEOUT_USEC, NULL, NULL, &res);
        if (r != 0) {
                fprintf(stderr, "corralctl: cannot tell the instance's name from %s; use -i NAME\n", ctl->path);
                return r;
        }
        const char *name = ctl_json_str(res, "instance");
        if (!name || !instance_name_valid(name))
                return ctl_error(CTL_EXIT_UNREACHABLE, "malformed reply from %s: no instance name", ctl->path);
        *ret = strdup(name);
        return *ret ? 0 : ctl_error(CTL_EXIT_FAILED, "Out of memory.");
}

/* True when the instance at ctl->path is running and logs to its standard
 * error. Quiet and quick: an instance that cannot be asked (stopped, an
 * old corrald without "log") is looked up in the journal as before. */
static bool logs_on_stderr(Ctl *ctl) {
        _cleanup_client_free_ Client *c = NULL;
        _cleanup_json_ cJSON *req = NULL, *res = NULL;

        if (!ctl->path || client_connect(ctl->path, 500 * USEC_PER_MSEC, &c) < 0)
                return false;
        req = ctl_new_request("status");
        if (!req || client_call(c, req, CTL_LIST_TIMEOUT_USEC, NULL, NULL, &res) < 0)
                return false;
        const char *log = ctl_json_str(res, "log");
        return log && strcmp(log, "stderr") == 0;
}

/* Add one pid (a decimal string from the journal) unless already there. */
static int add_pid(char ***pids, const char *s) {
        uint64_t v;
        if (parse_u64(s, &v) < 0 || v == 0 || v > INT32_MAX)
                return 0;
        for (char **p = *pids; p && *p; p++)
                if (strcmp(*p, s) == 0)
                        return 0;
        return strv_extend(pids, s);
}

/* Run `journalctl -o json ... CORRAL_EVENT=spawn` for the slot and collect
 * the CORRAL_WORKER_PID of each event, oldest first. Returns 0 or -errno;
 * a journalctl that fails just yields fewer pids. */
static int slot_pids(const char *name, const char *id, char ***ret) {
        _cleanup_strv_free_ char **argv = NULL, **pids = NULL;
        _cleanup_close_ int rfd = -EBADF, wfd = -EBADF;
        int fds[2], r;

        if (strv_extend(&argv, "journalctl") < 0 || strv_extend(&argv, "-q") < 0 ||
            strv_extend(&argv, "--no-pager") < 0 || strv_extend(&argv, "-o") < 0 || strv_extend(&argv, "json") < 0 ||
            strv_extend(&argv, "--output-fields=CORRAL_WORKER_PID") < 0 ||
            strv_extendf(&argv, "CORRAL_INSTANCE=%s", name) < 0 || strv_extendf(&argv, "CORRAL_WORKER_ID=%s", id) < 0 ||
            strv_extend(&argv, "CORRAL_EVENT=spawn") < 0)
                return -ENOMEM;
        if (pipe2(fds, O_CLOEXEC) < 0)
                return -errno;
        rfd = fds[0];
        wfd = fds[1];
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                if (fd_move_to(wfd, STDOUT_FILENO) < 0)
                        _exit(127);
                signal(SIGPIPE, SIG_DFL);
                execvp(argv[0], argv);
                _exit(127);
        }
        wfd = safe_close(wfd);

        FILE *f = fdopen(rfd, "r");
        if (!f)
                r = -errno;
        else {
                rfd = -EBADF; /* owned by f now */
                _cleanup_free_ char *line = NULL;
                size_t n = 0;
                r = 0;
                while (r >= 0 && getline(&line, &n, f) >= 0) {
                        _cleanup_json_ cJSON *j = cJSON_Parse(line);
                        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "CORRAL_WORKER_PID"), *e;
                        /* A field logged more than once comes as an array. */
                        if (cJSON_IsString(v))
                                r = add_pid(&pids, v->valuestring);
                        else if (cJSON_IsArray(v))
                                cJSON_ArrayForEach(e, v)
                                        if (r >= 0 && cJSON_IsString(e))
                                                r = add_pid(&pids, e->valuestring);
                }
                fclose(f);
        }
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                ;
        if (r < 0)
                return r;
        if (!pids && !(pids = calloc(1, sizeof(char *))))
                return -ENOMEM;
        *ret = TAKE_PTR(pids);
        return 0;
}

int cmd_logs(Ctl *ctl, char **args) {
        _cleanup_strv_free_ char **argv = NULL, **pids = NULL;
        _cleanup_free_ char *name = NULL;
        uint64_t v;
        int r;

        if (args[0])
                return ctl_usage_error("logs: unexpected argument \"%s\"", args[0]);
        if (ctl->worker && parse_u64(ctl->worker, &v) < 0)
                return ctl_usage_error("logs -w: expected a slot number, got \"%s\"", ctl->worker);
        if (ctl->lines && strcmp(ctl->lines, "all") != 0 && parse_u64(ctl->lines, &v) < 0)
                return ctl_usage_error("logs -n: expected a number of lines or \"all\", got \"%s\"", ctl->lines);
        r = logs_name(ctl, &name);
        if (r != 0)
                return r;
        if (ctl_resolve(ctl) == 0 && logs_on_stderr(ctl))
                return ctl_error(CTL_EXIT_FAILED,
                                 "instance \"%s\" logs to corrald's standard error, not to the journal (embedded "
                                 "mode: not started by systemd, or --log stderr): its events and its workers' "
                                 "output are wherever corrald's standard error goes",
                                 name);
        if (ctl->worker) {
                r = slot_pids(name, ctl->worker, &pids);
                if (r < 0)
                        fprintf(stderr, "corralctl: could not list slot %s's workers: %s\n", ctl->worker, strerror(-r));
        }

        r = 0;
        if (strv_extend(&argv, "journalctl") < 0 || strv_extend(&argv, "-n") < 0 ||
            strv_extend(&argv, ctl->lines ? ctl->lines : LOGS_DEFAULT_LINES) < 0 ||
            (ctl->follow && strv_extend(&argv, "-f") < 0) ||
            (ctl->json && (strv_extend(&argv, "-o") < 0 || strv_extend(&argv, "json") < 0)) ||
            strv_extendf(&argv, "CORRAL_INSTANCE=%s", name) < 0)
                r = -ENOMEM;
        if (r == 0 && ctl->worker) {
                size_t n = strv_length(pids);
                if (n > LOGS_MAX_PIDS)
                        fprintf(stderr, "corralctl: slot %s had %zu workers; showing the output of the last %d\n",
                                ctl->worker, n, LOGS_MAX_PIDS);
                if (strv_extendf(&argv, "CORRAL_WORKER_ID=%s", ctl->worker) < 0)
                        r = -ENOMEM;
                for (size_t i = n > LOGS_MAX_PIDS ? n - LOGS_MAX_PIDS : 0; r == 0 && i < n; i++)
                        if (strv_extend(&argv, "+") < 0 || strv_extendf(&argv, "_PID=%s", pids[i]) < 0 ||
                            strv_extendf(&argv, "SYSLOG_IDENTIFIER=%s", name) < 0)
                                r = -ENOMEM;
        } else if (r == 0 && (strv_extend(&argv, "+") < 0 || strv_extendf(&argv, "SYSLOG_IDENTIFIER=%s", name) < 0))
                r = -ENOMEM;
        if (r < 0)
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");

        fflush(stdout);
        /* main() ignores SIGPIPE; journalctl should die of it like any
         * program writing to a closed pipe. */
        signal(SIGPIPE, SIG_DFL);
        execvp(argv[0], argv);
        r = -errno;
        signal(SIGPIPE, SIG_IGN);
        return ctl_error(CTL_EXIT_FAILED, "cannot run journalctl: %s", strerror(-r));
}
