/* rollout: a plan that replaces workers slot by slot — reload, restart and
 * recycle (SPEC §4).
 *
 * A plan is a queue of slot ids, a surge limit and counters. It starts
 * replacements with SLOT_EV_REPLACE (the slot's `incoming` worker) and
 * learns what became of them from the Pool's outcomes, which the manager
 * passes on; it never calls the manager. At most reload.max_surge
 * replacements start at once, so there are never fewer ready workers than
 * before. A recycle is a one-slot plan; one plan runs at a time.
 *
 * A plan also owns its ending: rollout_end() says what a plan that is done
 * or failed asks of the manager (a reload's old configuration back, the
 * slot count to shrink to, its replacements cancelled, recycling paused,
 * systemd told), the manager applies it, and rollout_finish() logs the end
 * and replies. Progress and the result go to the client that asked, if
 * any, through ReplyOps: the plan knows nothing of the control
 * socket. Pure: no libuv. */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "reply.h"
#include "slot.h"

typedef enum RolloutKind {
        ROLLOUT_RELOAD,
        ROLLOUT_RESTART,
        ROLLOUT_RECYCLE,
} RolloutKind;

typedef enum RolloutResult {
        ROLLOUT_RUNNING,
        ROLLOUT_DONE,
        ROLLOUT_FAILED,            /* Rollout.error says why */
} RolloutResult;

typedef struct Rollout {
        RolloutKind kind;
        unsigned serial;           /* the Pool.plan tag of its replacements */
        unsigned *queue;           /* slot ids still to replace, in order */
        unsigned n_queue, next;
        unsigned in_flight;        /* replacements started, not yet ready */
        unsigned replaced;
        unsigned old_workers;      /* the worker count before a reload */
        unsigned target_workers;   /* a reload's new worker count */
        Config *old_config;        /* a reload's: restored if it fails */
        unsigned old_generation;
        const ReplyOps *reply;
        void *client;              /* reference, or NULL */
        bool kept_old;             /* rollout_cancel() found a slot with its old worker */
        uint64_t start_usec;
        char note[160];            /* said in the reply when done, e.g. a listen change that waits for a restart */
        char error[512];
} Rollout;

/* A plan over up to `capacity` slots; client (may be NULL) gets its
 * progress and result through reply, and a reference is taken. Returns
 * NULL when out of memory. */
Rollout *rollout_new(RolloutKind kind, unsigned serial, unsigned capacity, const ReplyOps *reply,
                     void *client, uint64_t now);
Rollout *rollout_free(Rollout *r);

/* Queue slot s: the plan alone gives it its next worker, so a pending
 * respawn is dropped (SLOT_EV_HOLD). */
void rollout_enqueue(Rollout *r, Slot *s);

/* Start replacements up to max_surge, in queue order. */
RolloutResult rollout_step(Rollout *r, Slot * const *slots, unsigned n_slots, unsigned max_surge);

/* An outcome of the Pool; those of other plans are ignored. */
RolloutResult rollout_on_outcome(Rollout *r, const Outcome *o, Slot * const *slots, unsigned n_slots,
                                 unsigned max_surge);

/* What a plan that ended asks of the manager, which applies it in this
 * order before rollout_finish(). */
typedef struct RolloutEnd {
        RolloutKind kind;
        bool ok;
        Config *config;            /* a failed reload: the configuration to go back to (taken), else NULL */
        unsigned generation;       /* ... and its generation (pool_set_config()) */
        unsigned workers;          /* the slot count to shrink to, 0: none (a reload's surplus slots, or a
                                    * failed reload's new ones) */
        bool cancel;               /* failed: stop every replacement still starting (rollout_cancel()) */
        bool pause_recycle;        /* a failed recycle: no recycling for restart.window_ms */
        bool tell_systemd;         /* a reload: READY=1 again, with status_prefix before STATUS= */
        char status_prefix[300];
} RolloutEnd;

/* r ended (res is ROLLOUT_DONE or ROLLOUT_FAILED): what it asks of the
 * manager. Logs nothing. */
void rollout_end(Rollout *r, RolloutResult res, RolloutEnd *ret);

/* Cancel the replacement of every slot (SLOT_EV_CANCEL): a failed plan,
 * or a recycle that yields to a reload. Notes whether a slot still had
 * its old worker, for rollout_finish(). */
void rollout_cancel(Rollout *r, Slot * const *slots, unsigned n_slots);

/* Log how r ended and reply to its client, after the manager applied e;
 * `generation` is the pool's now. Frees r; returns NULL. */
Rollout *rollout_finish(Rollout *r, const RolloutEnd *e, unsigned generation, uint64_t now);

/* End r without an ending: corrald is stopping. Its client gets the
 * error. Frees r; returns NULL. */
Rollout *rollout_abort(Rollout *r, const char *why);

const char *rollout_kind_to_string(RolloutKind k);
/* "Reloading: 1/4 replaced". */
const char *rollout_describe(const Rollout *r, char *buf, size_t n);
/* Log a progress line and send it to the client, if any. */
_printf_(2, 3) void rollout_progress(Rollout *r, const char *fmt, ...);
