/* corrald: command line, configuration, then the manager's event loop.
 *
 * Exit codes: 0 after a clean stop, 1 when the instance failed (bad config,
 * cannot listen, gave up on its workers), 2 for command-line usage errors. */
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <uv.h>

#include "closer.h"
#include "commands.h"
#include "config.h"
#include "fd-util.h"
#include "log.h"
#include "manager.h"
#include "upgrade.h"
#include "util.h"

static void help(void) {
        printf("Usage: corrald [OPTIONS] [-- COMMAND [ARGS...]]\n"
               "\n"
               "Pre-fork service manager: runs N copies of COMMAND on the listening\n"
               "sockets systemd passes (or that it binds itself), keeps them alive and\n"
               "reports to systemd with sd_notify.\n"
               "\n"
               "  -c, --config FILE       JSON configuration (see corral.json(5))\n"
               "  -w, --workers N|auto    number of workers (default: auto = online CPUs)\n"
               "  -l, --listen ADDR       HOST:PORT, [V6]:PORT, PORT or unix:/path, optionally\n"
               "                          NAME=ADDR; repeatable; ignored when socket-activated\n"
               "  -b, --balance MODE      shared, round-robin, least-conn or ip-hash (default: shared)\n"
               "      --ipc DIALECT       corral, or node: CORRAL_IPC_FD is also Node.js's IPC\n"
               "                          channel (NODE_CHANNEL_FD) (default: corral)\n"
               "  -n, --name NAME         instance name (default: config file name, or corral)\n"
               "      --control PATH      control socket path\n"
               "      --log TARGET        auto, journal or stderr (default: auto)\n"
               "      --subreaper         reap every orphan that ends up with corrald, as a\n"
               "                          container's PID 1 must (implied when corrald is PID 1)\n"
               "      --check-config FILE validate FILE and exit 0 if it is valid, 1 if not\n"
               "      --version           print the version and exit\n"
               "  -h, --help              print this help and exit\n"
               "\n"
               "Signals: TERM/INT stop gracefully, HUP reloads, TTIN/TTOU add/remove one worker,\n"
               "USR2 re-executes corrald in place (upgrade), keeping every worker.\n");
}

_printf_(1, 2) static int usage_error(const char *fmt, ...) {
        va_list ap;
        fprintf(stderr, "corrald: ");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\nTry 'corrald --help'.\n");
        return 2;
}

enum {
        ARG_CONTROL = 0x100,
        ARG_LOG,
        ARG_CHECK_CONFIG,
        ARG_VERSION,
        ARG_SUBREAPER,
        ARG_IPC,
};

/* The in-place upgrade sits above the manager: the manager hands it
 * SIGUSR2, its stop and SIGCHLD through these. */
static const ManagerUpgradeOps upgrade_ops = {
        .request = upgrade_request,
        .cancel = upgrade_cancel,
        .reap = upgrade_reap_strays,
};

/* After manager_init(): a corrald re-executed by an upgrade adopts what
 * the previous one held and restores its workers without spawning;
 * otherwise (or when the state cannot be used) the first generation
 * starts. Returns 0 or a negative errno after logging. */
static int start(Manager *m) {
        int notify_fd = -EBADF, control_fd = -EBADF, restored = 0, r;

        if (upgrade_pending() && (restored = upgrade_adopt_fds(m, &notify_fd, &control_fd)) < 0)
                return restored;
        r = manager_start(m, commands_dispatch, restored > 0, notify_fd, control_fd);
        if (r < 0)
                return r;
        if (restored) {
                r = upgrade_restore(m);
                /* Workers that exited while we were exec'ing are zombies
                 * waiting for us; what they said first is still in the
                 * notify socket (manager_reap() reads it before). */
                if (r >= 0)
                        manager_reap(m);
                return r;
        }
        if (upgrade_pending())
                upgrade_stop_orphans(m);
        return manager_start_workers(m);
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "config", required_argument, NULL, 'c' },
                { "workers", required_argument, NULL, 'w' },
                { "listen", required_argument, NULL, 'l' },
                { "balance", required_argument, NULL, 'b' },
                { "name", required_argument, NULL, 'n' },
                { "control", required_argument, NULL, ARG_CONTROL },
                { "log", required_argument, NULL, ARG_LOG },
                { "check-config", required_argument, NULL, ARG_CHECK_CONFIG },
                { "version", no_argument, NULL, ARG_VERSION },
                { "subreaper", no_argument, NULL, ARG_SUBREAPER },
                { "ipc", required_argument, NULL, ARG_IPC },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_strv_free_ char **listen = NULL;
        ConfigOverrides o = {};
        LogTarget log_target = LOG_TARGET_AUTO;
        bool check_only = false;
        int c;

        /* Before anything opens an fd: the state of an upgrade. */
        upgrade_init(argc, argv);

        /* "+": stop at the first non-option, so the worker's own flags after
         * "--" (or after a bare command) are never taken as ours. */
        while ((c = getopt_long(argc, argv, "+c:w:l:b:n:h", options, NULL)) >= 0) {
                switch (c) {
                case 'c':
                        o.path = optarg;
                        break;
                case 'w': {
                        uint64_t n;
                        if (strcmp(optarg, "auto") == 0)
                                o.workers_auto = true;
                        else if (parse_u64(optarg, &n) < 0 || n < 1 || n > CORRAL_WORKERS_MAX)
                                return usage_error("--workers: expected an integer between 1 and %d or \"auto\", got \"%s\"",
                                                   CORRAL_WORKERS_MAX, optarg);
                        else {
                                o.workers = (unsigned) n;
                                o.workers_auto = false;
                        }
                        break;
                }
                case 'l':
                        if (strv_extend(&listen, optarg) < 0)
                                return 1;
                        break;
                case 'b': {
                        int b = balance_from_string(optarg);
                        if (b < 0)
                                return usage_error("--balance: expected shared, round-robin, least-conn or ip-hash, "
                                                   "got \"%s\"", optarg);
                        o.balance = (Balance) b;
                        o.balance_set = true;
                        break;
                }
                case ARG_IPC: {
                        int d = ipc_dialect_from_string(optarg);
                        if (d < 0)
                                return usage_error("--ipc: expected corral or node, got \"%s\"", optarg);
                        o.ipc = (IpcDialect) d;
                        o.ipc_set = true;
                        break;
                }
                case 'n':
                        o.name = optarg;
                        break;
                case ARG_CONTROL:
                        o.control = optarg;
                        break;
                case ARG_LOG: {
                        int t = log_target_from_string(optarg);
                        if (t < 0)
                                return usage_error("--log: expected auto, journal or stderr, got \"%s\"", optarg);
                        log_target = (LogTarget) t;
                        break;
                }
                case ARG_CHECK_CONFIG:
                        o.path = optarg;
                        check_only = true;
                        break;
                case ARG_SUBREAPER:
                        o.subreaper = true;
                        break;
                case ARG_VERSION:
                        printf("corrald %s\n", CORRAL_VERSION);
                        return 0;
                case 'h':
                        help();
                        return 0;
                default:
                        fprintf(stderr, "Try 'corrald --help'.\n");
                        return 2;
                }
        }
        o.listen = listen;
        if (optind < argc)
                o.exec = argv + optind;

        _cleanup_(config_unrefp) Config *config = NULL;
        char *error = NULL;
        /* A bad --name, --control or --listen is a usage error (exit 2, SPEC
         * §7), like a bad --workers; what comes from the file exits 1. */
        int r = config_check_overrides(&o, &error);
        if (r == -ENOMEM)
                return 1;
        if (r < 0) {
                const char *msg = error;
                if (strncmp(msg, "command line: ", strlen("command line: ")) == 0)
                        msg += strlen("command line: ");
                r = usage_error("%s", msg);
                free(error);
                return r;
        }
        /* An upgrade runs the configuration it carries (SPEC §4): a file
         * edited, or left invalid, since the last reload is not read. Later
         * reloads read the file again. */
        o.text = upgrade_config_text();
        r = config_build(&o, &config, &error);
        if (r >= 0)
                r = config_check_supported(config, &error);
        o.text = NULL;
        int probe = upgrade_probe_answer(r >= 0 ? config : NULL, r >= 0 ? NULL : error ? error : strerror(-r));
        if (probe >= 0) {
                free(error);
                return probe;
        }
        /* Not for the probe: an upgrade keeps the running workers, whatever
         * the program on disk is now. */
        if (r >= 0)
                r = manager_check_program(config, &error);
        if (check_only) {
                if (r < 0) {
                        fprintf(stderr, "corrald: %s\n", error ? error : strerror(-r));
                        free(error);
                        return 1;
                }
                printf("%s: valid\n", o.path);
                return 0;
        }

        /* Before the config is known (it failed), -n NAME still names us:
         * it passed config_check_overrides() above. */
        log_setup(log_target, config ? config->name : o.name ? o.name : "corral");
        if (r < 0) {
                log_error("%s", error ? error : strerror(-r));
                free(error);
                return 1;
        }

        /* Each worker costs the master fds (its IPC socket, its output
         * pipe in stderr mode, a few more while it is spawned): use the
         * whole hard limit, as systemd does for itself. Workers get the
         * original soft limit back (spawn.c). */
        r = rlimit_nofile_raise();
        if (r < 0)
                log_warning("cannot raise the file descriptor limit: %s", strerror(-r));

        /* PID 1 of a PID namespace (a container) inherits every orphan, and
         * --subreaper asks for the same below it: they are reaped with the
         * workers (manager_reap()), or they would stay zombies. */
        if (getpid() == 1)
                o.subreaper = true;
        if (o.subreaper && prctl(PR_SET_CHILD_SUBREAPER, 1) == -1)
                log_warning("cannot become a subreaper: %m");

        /* Writes to a worker's IPC socket after it died must fail with EPIPE,
         * not kill the master. Workers get SIG_DFL back in spawn.c. */
        signal(SIGPIPE, SIG_IGN);

        uv_loop_t *loop = uv_default_loop();
        /* Before any fd from a worker can arrive: fds others pass us are
         * closed by this thread, never on the loop (closer.h). Without it
         * any worker could freeze us, so it is not optional. */
        r = closer_start(loop);
        if (r < 0) {
                log_error("cannot start the thread that closes passed file descriptors: %s", strerror(-r));
                return 1;
        }
        Manager m;
        r = manager_init(&m, loop, config, &o, &upgrade_ops);
        if (r >= 0)
                r = start(&m);
        if (r < 0) {
                manager_close(&m);
                uv_run(loop, UV_RUN_DEFAULT);
                manager_done(&m);
                return 1;
        }
        uv_run(loop, UV_RUN_DEFAULT);
        int exit_code = m.exit_code;
        log_info("exiting with status %d", exit_code);
        manager_done(&m);
        (void) uv_loop_close(loop);
        return exit_code;
}
