/* upgrade: re-executing corrald in place, keeping every worker, socket and
 * counter (SPEC §4 Upgrade, docs/internals/upgrade.md).
 *
 * The old corrald writes its state as one JSON object into a memfd, clears
 * FD_CLOEXEC on exactly the fds the state names, and execve()s its binary
 * on disk with the original argv and CORRALD_UPGRADE_STATE_FD in the
 * environment. The new one reads the state before anything else
 * (upgrade_init() from main), and main() adopts the fds and the workers
 * through upgrade_adopt_fds() and upgrade_restore() around
 * manager_start().
 *
 * It sits above the manager: it reads and restores the Manager's fields,
 * and the manager reaches it only through the ManagerUpgradeOps main()
 * gives it (SIGUSR2, stop, SIGCHLD). */
#pragma once

#include <stdbool.h>

#include "config.h"
#include "control.h"
#include "manager.h"

/* The environment variable that names the state fd, and the test-only
 * override of the binary to execute. */
#define UPGRADE_ENV_STATE_FD "CORRALD_UPGRADE_STATE_FD"
#define UPGRADE_ENV_BINARY "CORRALD_UPGRADE_BINARY"

/* Called first thing in main(): remember argv and the binary's path, and
 * read (then unset) a hand-over state if there is one, checking every field
 * and every fd it names. Logs nothing: the log is not set up yet; problems
 * are reported by upgrade_adopt_fds() or the probe. */
void upgrade_init(int argc, char **argv);

/* Whether this corrald was started by an upgrade (a state fd was given). */
bool upgrade_pending(void);

/* The configuration file's text the previous corrald ran with, to build
 * the Config from instead of reading the file (SPEC §4: an upgrade never
 * re-reads it), or NULL (no usable state, or a version 1 state). */
const char *upgrade_config_text(void);

/* When started as the probe of an upgrade (the old corrald runs the new
 * binary with the state before it execs it): answer on CORRAL_IPC_FD "ok"
 * or why this binary cannot take over (the state, the configuration
 * built from it — config_error when that failed — or a worker that is
 * not the old corrald's child), and return main()'s exit code. Returns -1
 * when this is no probe. */
int upgrade_probe_answer(const Config *config, const char *config_error);

/* Restart-free start, part 1: adopt the listeners of the state, and say
 * which fds are the notify socket and the control socket (for the caller
 * to adopt; -EBADF when none). Returns 1 when the state is usable (then
 * call upgrade_restore() instead of starting workers), 0 when the state
 * cannot be used and the manager must start clean (what could be adopted
 * — the listeners — was, and the orphaned workers are noted for
 * upgrade_stop_orphans()), or a negative errno after logging. */
int upgrade_adopt_fds(Manager *m, int *ret_notify_fd, int *ret_control_fd);

/* Part 2, after manager_start(): restore slots and workers, tell systemd
 * READY=1 and answer the client that asked. The caller then reaps those
 * that exited meanwhile (manager_reap()). Returns 0 or a negative errno
 * after logging. */
int upgrade_restore(Manager *m);

/* After a clean start that followed an unusable state: answer the clients
 * that asked, and ask the workers of the previous corrald to stop (those
 * that are our own children; nobody else is signalled). */
void upgrade_stop_orphans(Manager *m);
/* Reap the children that are not workers (those orphans, finished probes)
 * that exited; from the SIGCHLD handler. */
void upgrade_reap_strays(void);

/* Ask for an upgrade (client may be NULL: SIGUSR2). Refused at once while
 * a plan runs, while stopping or before the first READY=1. Else the new
 * binary first checks the state as a probe; only when it says yes does
 * corrald execve() it, and the new corrald answers every client that
 * asked meanwhile. Whatever fails, the old corrald keeps running and each
 * client gets the reason. Logs. */
void upgrade_request(Manager *m, ControlConn *client);
/* corrald is stopping: end a check in progress, refusing its clients. */
void upgrade_cancel(Manager *m);
