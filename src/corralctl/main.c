/* corralctl: command line parsing and dispatch (SPEC §7).
 *
 * Options may come before or after the command ("corralctl status -i app"
 * works like "corralctl -i app status"), so argv is scanned by hand
 * rather than with getopt: a bare "-N" is a negative number for "scale",
 * not an option, and "--" ends the options. Exit codes: 0 ok, 1 the
 * operation failed, 2 usage, 3 cannot reach the instance. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"
#include "util.h"

static void help(void) {
        printf("Usage: corralctl [-i NAME | -s SOCKET] [--json] COMMAND [ARGS...]\n"
               "\n"
               "Control a running corral instance through its control socket.\n"
               "\n"
               "Commands:\n"
               "  status, ls            workers, pids, states, uptime, restarts, CPU, memory\n"
               "  top [-n N]            the same, refreshed every second until q or Ctrl-C;\n"
               "                        N frames with -n; not on a terminal, one by default\n"
               "  reload                rolling reload with the re-read configuration; prints\n"
               "                        progress, fails with the reason if the rollout fails\n"
               "  restart ID|all        graceful replacement of one slot or all (rolling)\n"
               "  scale N|+N|-N         set, raise or lower the number of workers\n"
               "  signal SIG ID|all     send a signal (TERM, SIGTERM or 15) to workers\n"
               "  send ID|all JSON      deliver {\"type\":\"message\",\"data\":JSON} to workers\n"
               "  messages [-f]         the last messages workers sent to the master; -f follows\n"
               "  logs [-f] [-w ID] [-n N]\n"
               "                        the instance's journal: master events and worker\n"
               "                        output; -w: one slot across its restarts (with -f,\n"
               "                        only the slot's workers known at start are followed)\n"
               "  upgrade               re-execute corrald in place from the binary on disk,\n"
               "                        keeping every worker, socket and counter\n"
               "  list                  every instance in the runtime directories\n"
               "  health                healthy (exit 0), degraded (1: fewer ready workers than\n"
               "                        wanted, given up, the last reload failed), or draining\n"
               "                        or down (2), in one line; for load balancers and probes\n"
               "  drain, undrain        make health say draining while every worker keeps\n"
               "                        serving (kept across reloads and upgrades), or stop\n"
               "  metrics               the Prometheus text format, for this instance (-i, -s)\n"
               "                        or every instance list finds\n"
               "  serve-http            answer one HTTP request on stdin (GET /metrics,\n"
               "                        GET /health/NAME): corral-metrics.socket runs it\n"
               "\n"
               "Options:\n"
               "  -i, --instance NAME   the instance (default: the only one running)\n"
               "  -s, --socket PATH     the control socket, instead of -i\n"
               "      --json            print the reply as one line of JSON\n"
               "  -f, --follow          logs, messages: keep printing new entries\n"
               "  -w, --worker ID       logs: only this slot\n"
               "  -n, --lines N         logs: show the last N entries (default 50, or \"all\");\n"
               "                        top: print N frames, one per second, then exit\n"
               "  -h, --help            print this help and exit\n"
               "      --version         print the version and exit\n"
               "\n"
               "ID is a slot number (CORRAL_WORKER_ID). The socket of instance NAME is\n"
               "$RUNTIME_DIRECTORY/NAME.sock if set, else /run/corral/NAME.sock for root,\n"
               "else $XDG_RUNTIME_DIR/corral/NAME.sock.\n"
               "\n"
               "Exit status: 0 ok, 1 the operation failed, 2 usage error, 3 cannot reach\n"
               "the instance.\n");
}

typedef struct Command {
        const char *name;
        int (*run)(Ctl *ctl, char **args);
} Command;

static const Command commands[] = {
        { "status", cmd_status },   { "ls", cmd_status },         { "top", cmd_top },
        { "reload", cmd_reload },   { "restart", cmd_restart },   { "scale", cmd_scale },
        { "signal", cmd_signal },   { "send", cmd_send },         { "logs", cmd_logs },
        { "list", cmd_list },       { "messages", cmd_messages }, { "upgrade", cmd_upgrade },
        { "health", cmd_health },   { "drain", cmd_drain },       { "undrain", cmd_undrain },
        { "metrics", cmd_metrics }, { "serve-http", cmd_serve_http },
};

enum {
        ARG_JSON = 0x100,
        ARG_VERSION,
};

typedef struct Option {
        int id;                 /* the short option's character, or ARG_* */
        const char *long_name;
        bool has_arg;
} Option;

static const Option options[] = {
        { 'i', "instance", true }, { 's', "socket", true },  { ARG_JSON, "json", false },
        { 'f', "follow", false },  { 'w', "worker", true },  { 'n', "lines", true },
        { 'h', "help", false },    { ARG_VERSION, "version", false },
};

typedef struct Args {
        Ctl *ctl;
        bool help, version;
        bool logs_option;       /* -w seen */
        bool follow_option;     /* -f seen */
        bool lines_option;      /* -n seen */
} Args;

static void apply(Args *a, const Option *o, const char *value) {
        Ctl *ctl = a->ctl;
        switch (o->id) {
        case 'i':
                ctl->instance = value;
                break;
        case 's':
                ctl->socket = value;
                break;
        case ARG_JSON:
                ctl->json = true;
                break;
        case 'f':
                ctl->follow = a->follow_option = true;
                break;
        case 'w':
                ctl->worker = value;
                a->logs_option = true;
                break;
        case 'n':
                ctl->lines = value;
                a->lines_option = true;
                break;
        case 'h':
                a->help = true;
                break;
        case ARG_VERSION:
                a->version = true;
                break;
        }
}

/* "-5" is an argument (scale -5), not an option. */
static bool is_negative_number(const char *s) {
        uint64_t v;
        return s[0] == '-' && parse_u64(s + 1, &v) == 0;
}

/* Split argv into options (applied to a) and positional arguments. Returns
 * 0 or an exit code after printing the usage error. */
static int parse_argv(int argc, char *argv[], Args *a, char ***ret_positional) {
        _cleanup_strv_free_ char **pos = NULL;
        bool only_positional = false;

        for (int i = 1; i < argc; i++) {
                const char *arg = argv[i];
                if (only_positional || arg[0] != '-' || arg[1] == '\0' || is_negative_number(arg)) {
                        if (strv_extend(&pos, arg) < 0)
                                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
                        continue;
                }
                if (strcmp(arg, "--") == 0) {
                        only_positional = true;
                        continue;
                }
                if (arg[1] == '-') {
                        const char *name = arg + 2, *eq = strchr(name, '=');
                        size_t n = eq ? (size_t) (eq - name) : strlen(name);
                        const Option *o = NULL;
                        for (size_t k = 0; k < ELEMENTSOF(options); k++)
                                if (strlen(options[k].long_name) == n && strncmp(options[k].long_name, name, n) == 0)
                                        o = &options[k];
                        if (!o)
                                return ctl_usage_error("unknown option \"%s\"", arg);
                        const char *value = NULL;
                        if (o->has_arg) {
                                value = eq ? eq + 1 : i + 1 < argc ? argv[++i] : NULL;
                                if (!value)
                                        return ctl_usage_error("option --%s needs an argument", o->long_name);
                        } else if (eq)
                                return ctl_usage_error("option --%s takes no argument", o->long_name);
                        apply(a, o, value);
                        continue;
                }
                /* A cluster of short options: -fn 20, -iapp. */
                for (const char *p = arg + 1; *p; p++) {
                        const Option *o = NULL;
                        for (size_t k = 0; k < ELEMENTSOF(options); k++)
                                if (options[k].id == *p)
                                        o = &options[k];
                        if (!o)
                                return ctl_usage_error("unknown option \"-%c\"", *p);
                        if (!o->has_arg) {
                                apply(a, o, NULL);
                                continue;
                        }
                        const char *value = p[1] ? p + 1 : i + 1 < argc ? argv[++i] : NULL;
                        if (!value)
                                return ctl_usage_error("option -%c needs an argument", *p);
                        apply(a, o, value);
                        break;
                }
        }
        if (!pos && !(pos = calloc(1, sizeof(char *))))
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        *ret_positional = TAKE_PTR(pos);
        return 0;
}

int main(int argc, char *argv[]) {
        _cleanup_strv_free_ char **pos = NULL;
        Ctl ctl = {};
        Args a = { .ctl = &ctl };

        /* A server that goes away mid-write gives EPIPE (client.c also uses
         * MSG_NOSIGNAL); so does a closed stdout, e.g. "| head -1". */
        signal(SIGPIPE, SIG_IGN);

        int r = parse_argv(argc, argv, &a, &pos);
        if (r != 0)
                return r;
        if (a.help) {
                help();
                return CTL_EXIT_OK;
        }
        if (a.version) {
                printf("corralctl %s\n", CORRAL_VERSION);
                return CTL_EXIT_OK;
        }
        if (!pos[0])
                return ctl_usage_error("missing command");

        const Command *cmd = NULL;
        for (size_t i = 0; i < ELEMENTSOF(commands); i++)
                if (strcmp(commands[i].name, pos[0]) == 0)
                        cmd = &commands[i];
        if (!cmd)
                return ctl_usage_error("unknown command \"%s\"", pos[0]);
        if (a.logs_option && cmd->run != cmd_logs)
                return ctl_usage_error("-w is an option of the logs command");
        if (a.follow_option && cmd->run != cmd_logs && cmd->run != cmd_messages)
                return ctl_usage_error("-f is an option of the logs and messages commands");
        if (a.lines_option && cmd->run != cmd_logs && cmd->run != cmd_top)
                return ctl_usage_error("-n is an option of the logs and top commands");
        if (ctl.instance && !*ctl.instance)
                return ctl_usage_error("-i: empty instance name");
        if (ctl.socket && !*ctl.socket)
                return ctl_usage_error("-s: empty socket path");

        r = cmd->run(&ctl, pos + 1);
        ctl_done(&ctl);
        fflush(stdout);
        return r;
}
