/* rollout: a plan that replaces workers slot by slot — reload, restart and
 * recycle (SPEC §4).
 *
 * A plan is a queue of slot ids, a surge limit and counters. It starts
 * replacements with SLOT_EV_REPLACE (the slot's `incoming` worker) and
 * learns what became of them from the Pool's outcomes, which the manager
 * passes on; it never calls the manager, and the manager acts on what it
 * returns (finish, fail). At most reload.max_surge replacements start at
 * once, so there are never fewer ready workers than before. A recycle is a
 * one-slot plan; one plan runs at a time. Logs its progress and reports it
 * to the control client that asked, if any. */
#pragma once

#include <stdint.h>

#include "config.h"
#include "control.h"
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
        ControlConn *client;       /* reference, or NULL */
        uint64_t start_usec;
        char note[160];            /* said in the reply when done, e.g. a listen change that waits for a restart */
        char error[512];
} Rollout;

/* A plan over up to `capacity` slots. Returns NULL when out of memory. */
Rollout *rollout_new(RolloutKind kind, unsigned serial, unsigned capacity, ControlConn *client, uint64_t now);
Rollout *rollout_free(Rollout *r);

/* Queue slot s: the plan alone gives it its next worker, so a pending
 * respawn is dropped (SLOT_EV_HOLD). */
void rollout_enqueue(Rollout *r, Slot *s);

/* Start replacements up to max_surge, in queue order. */
RolloutResult rollout_step(Rollout *r, Slot * const *slots, unsigned n_slots, unsigned max_surge);

/* An outcome of the Pool; those of other plans are ignored. */
RolloutResult rollout_on_outcome(Rollout *r, const Outcome *o, Slot * const *slots, unsigned n_slots,
                                 unsigned max_surge);

const char *rollout_kind_to_string(RolloutKind k);
/* "Reloading: 1/4 replaced". */
const char *rollout_describe(const Rollout *r, char *buf, size_t n);
/* Log a progress line and send it to the client, if any. */
_printf_(2, 3) void rollout_progress(Rollout *r, const char *fmt, ...);
