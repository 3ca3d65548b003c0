/* rollout: rolling replacement of workers — reload and restart (SPEC §4).
 *
 * One rollout at a time. For each slot in its queue it starts a
 * replacement (the slot's `incoming` worker), waits for READY=1, then
 * stops the old worker gracefully; at most reload.max_surge replacements
 * start at once, so there are never fewer ready workers than before. A
 * replacement that exits or misses ready.timeout_ms fails the rollout: the
 * other replacements are stopped, a reload's old Config and generation are
 * restored, and the old workers keep serving. */
#pragma once

#include "control.h"
#include "manager.h"

/* Re-read the configuration and roll every slot onto a new generation.
 * Replies to client (may be NULL: SIGHUP) and logs reload_* events. */
void rollout_reload(Manager *m, ControlConn *client);

/* Gracefully replace slot `slot` (or every slot when slot < 0) with a new
 * worker of the current generation. Replies to client. */
void rollout_restart(Manager *m, int slot, ControlConn *client);

/* Events from slot.c about incoming workers. */
void rollout_on_ready(Manager *m, Worker *w);
void rollout_on_incoming_failed(Manager *m, Worker *w, const char *how);

/* The manager is stopping: end the rollout, telling its client. */
void rollout_abort(Manager *m, const char *why);

/* "Reloading: 1/4 replaced" while a rollout runs, else NULL. */
const char *rollout_describe(const Manager *m, char *buf, size_t n);
