/* upgrade: re-executing corrald in place, keeping every worker, socket and
 * counter (SPEC §4 Upgrade, docs/internals/upgrade.md).
 *
 * The old corrald writes its state as one JSON object into a memfd, clears
 * FD_CLOEXEC on exactly the fds the state names, and execve()s its binary
 * on disk with the original argv and CORRALD_UPGRADE_STATE_FD in the
 * environment. The new one reads the state before anything else
 * (upgrade_init() from main), and manager_start() adopts the fds and the
 * workers through upgrade_adopt_fds() and upgrade_restore(). */
#pragma once

#include <stdbool.h>

#include "control.h"

struct Manager;

/* The state format's version: bumped by any change a previous corrald
 * would misread. */
#define UPGRADE_STATE_VERSION 1
/* The environment variable that names the state fd, and the test-only
 * override of the binary to execute. */
#define UPGRADE_ENV_STATE_FD "CORRALD_UPGRADE_STATE_FD"
#define UPGRADE_ENV_BINARY "CORRALD_UPGRADE_BINARY"

/* Called first thing in main(): remember argv and the binary's path, and
 * read (then unset) a hand-over state if there is one. Logs nothing: the
 * log is not set up yet; problems are reported by upgrade_adopt_fds(). */
void upgrade_init(int argc, char **argv);

/* Whether this corrald was started by an upgrade (a state fd was given). */
bool upgrade_pending(void);

/* Restart-free start, part 1: adopt the listeners of the state, and say
 * which fds are the notify socket and the control socket (for the caller
 * to adopt; -EBADF when none). Returns 1 when the state is usable (then
 * call upgrade_restore() instead of starting workers), 0 when the state
 * cannot be used and the manager must start clean (what could be adopted
 * — the listeners — was, and the orphaned workers are noted for
 * upgrade_stop_orphans()), or a negative errno after logging. */
int upgrade_adopt_fds(struct Manager *m, int *ret_notify_fd, int *ret_control_fd);

/* Part 2: restore slots and workers, reap those that exited meanwhile,
 * tell systemd READY=1 and answer the client that asked. Returns 0 or a
 * negative errno after logging. */
int upgrade_restore(struct Manager *m);

/* After a clean start that followed an unusable state: ask the workers of
 * the previous corrald to stop (they are still our children). */
void upgrade_stop_orphans(struct Manager *m);
/* Reap orphans that exited (from the SIGCHLD handler). */
void upgrade_reap_orphans(void);

/* Do the upgrade: refuse (-EBUSY) while a plan runs, while stopping or
 * before the first READY=1; else hand over and execve(). Returns only on
 * failure, a negative errno with the reason in *ret_error (malloc'd); the
 * old corrald keeps running. Logs. client may be NULL (the signal). */
int upgrade_exec(struct Manager *m, ControlConn *client, char **ret_error);
