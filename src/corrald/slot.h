/* slot: the worker lifecycle (SPEC §4) as one state machine per slot.
 *
 * A slot is a position in the pool (CORRAL_WORKER_ID); it outlives the
 * processes that fill it. Its state is stored, changed only by
 * slot_dispatch() over the table in slot.c (docs/internals/lifecycle.md
 * shows the same table), and its deadlines are absolute times that the
 * caller turns into one timer.
 *
 * Slots never call their owner. What the owner must act on (a replacement
 * is ready or failed, the instance gave up, a removed slot is empty) is
 * queued as an Outcome on the Pool and drained by the owner once per loop
 * iteration. Processes are started and signalled through SlotOps, so the
 * whole machine runs in unit tests with a fake host and a fake clock.
 *
 * Pure: no libuv, no I/O of its own beyond log_emit(). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "list.h"
#include "notify-msg.h"
#include "policy.h"
#include "worker.h"

typedef enum SlotState {
        SLOT_EMPTY,                /* no worker; waits to be given one (new slot, or queued by a plan) */
        SLOT_STARTING,             /* its worker is starting */
        SLOT_READY,                /* its worker is ready */
        SLOT_REPLACING,            /* a replacement is starting beside the current worker (if any) */
        SLOT_BACKOFF,              /* no worker; respawns at its deadline */
        SLOT_FAILED,               /* given up on (restart.on_giveup = stay) */
        SLOT_REMOVED,              /* scaled away or stopping: its workers drain, then it is freed */
        _SLOT_STATE_MAX,
} SlotState;

typedef enum SlotEvent {
        /* Commands from the owner. */
        SLOT_EV_START,             /* give the slot a worker now */
        SLOT_EV_REPLACE,           /* start a replacement; swap when it is ready */
        SLOT_EV_CANCEL,            /* stop the replacement, keep (or refill) the slot */
        SLOT_EV_REMOVE,            /* stop every worker; free the slot once they exited */
        SLOT_EV_HOLD,              /* drop a pending respawn: a plan will give the slot a worker */
        /* Things that happened. */
        SLOT_EV_BACKOFF_DONE,      /* its respawn deadline passed */
        SLOT_EV_READY,             /* the worker sent READY=1 */
        SLOT_EV_STOPPING,          /* the worker sent STOPPING=1 */
        SLOT_EV_EXIT,              /* the worker was reaped */
        SLOT_EV_WATCHDOG,          /* the worker's watchdog fired (w->failure says how): any role */
        _SLOT_EVENT_MAX,
} SlotEvent;

typedef enum OutcomeKind {
        OUTCOME_REPLACED,          /* a replacement became the slot's worker */
        OUTCOME_REPLACE_FAILED,    /* a replacement exited, left or could not start */
        OUTCOME_GAVE_UP,           /* more than restart.limit failures within restart.window_ms */
        OUTCOME_EXEC_FAILED,       /* the worker binary cannot be executed: a configuration error */
        OUTCOME_EMPTIED,           /* a removed slot's last worker is gone: free it */
} OutcomeKind;

typedef struct Outcome {
        OutcomeKind kind;
        Slot *slot;
        unsigned slot_id;
        pid_t old_pid, pid;        /* REPLACED: 0 for "there was none"; else the worker concerned */
        unsigned generation;
        unsigned plan;             /* REPLACED/REPLACE_FAILED: Pool.plan when the replacement started */
        char what[200];            /* what happened, for the log and replies */
        struct Outcome *next;
} Outcome;

/* How the slots start and signal processes. */
typedef struct SlotOps {
        /* Start w's process (w->config, id, generation and who are set).
         * Returns its pid, or a negative errno with *ret_stage naming what
         * failed ("fork", "exec", ...). Does not log. */
        pid_t (*start)(void *userdata, Worker *w, const char **ret_stage);
        /* Send sig to the worker, or to its whole process group. */
        void (*kill)(void *userdata, Worker *w, int sig, bool group);
        /* Ask the worker to stop gracefully: its stop signal (and SIGCONT,
         * as systemd does), or what its dialect has instead. Returns what
         * was sent, for the log. NULL: the stop signal, through kill. */
        const char *(*stop)(void *userdata, Worker *w);
        /* The lifecycle is done with w (it exited): release its resources,
         * then call worker_free(w), now or later. */
        void (*release)(void *userdata, Worker *w);
} SlotOps;

/* What the slots share: the host, the clock, the generation that new
 * workers get, the instance-wide failure window and the outcome queue. */
typedef struct Pool {
        const SlotOps *ops;
        void *ops_data;
        uint64_t (*now)(void);
        Config *config;            /* the generation new workers start in */
        unsigned generation;
        FailureWindow failures;
        bool gave_up;
        bool told_ready_hint;      /* the "how to send READY=1" hint was logged */
        bool stopping;             /* the instance is stopping: no more spawns */
        bool changed;              /* set by every slot event: what a status summary shows may differ */
        char giveup_reason[160];
        Worker *workers;           /* every worker not yet released */
        unsigned n_workers;
        Outcome *outcomes, *outcomes_tail; /* FIFO */
        unsigned plan;             /* tags the replacements started now (the owner's rollout serial) */
        Slot *slots;               /* every slot, removed ones included */
        uint64_t earliest;         /* lowered whenever a deadline is set: the owner re-arms its timer */
        RateLimit errno_log;       /* every worker's ERRNO= reports in the log */
} Pool;

/* Takes a reference to config. Returns 0 or -ENOMEM. */
int pool_init(Pool *p, const SlotOps *ops, void *ops_data, uint64_t (*now)(void), Config *config);
void pool_done(Pool *p);
/* Make config (taken) the configuration new workers start in, as
 * `generation`: a reload, or a failed one going back. The restart
 * policy's failure window starts afresh (a reload is a fresh start after
 * giving up). Returns 0, or -ENOMEM when the old window had to stay. */
int pool_set_config(Pool *p, Config *config, unsigned generation);
/* Take the oldest outcome; the caller frees it with free(). NULL when empty. */
Outcome *pool_pop_outcome(Pool *p);
Worker *pool_find_worker(Pool *p, pid_t pid);

Slot *slot_new(Pool *p, unsigned id);
/* Free a slot in SLOT_REMOVED that has no workers left (OUTCOME_EMPTIED),
 * or one that never had any. */
void slot_free(Slot *s);

/* The one entry point that changes a slot's state. w is the worker the
 * event is about (READY, STOPPING, EXIT), else NULL; wait_status is for
 * EXIT. Logs the lifecycle events (spawn, ready, exit, stop). */
void slot_dispatch(Slot *s, SlotEvent ev, Worker *w, int wait_status);

/* Worker events that do not change the slot's state by themselves. */
void slot_on_notify(Worker *w, const NotifyMsg *msg);
/* Act on every deadline <= now in every slot; returns the earliest
 * deadline left (0 = none) and sets Pool.earliest to it. */
uint64_t pool_on_time(Pool *p, uint64_t now);

SlotState slot_state(const Slot *s);
const char *slot_state_to_string(SlotState s);
/* What `corralctl status` shows: the state of the slot's worker, or
 * backoff/failed when it has none. */
const char *slot_display_state(const Slot *s);
unsigned slot_id(const Slot *s);
unsigned slot_restarts(const Slot *s);
Worker *slot_current(const Slot *s);
Worker *slot_incoming(const Slot *s);
/* Upgrade (upgrade.c): what the previous corrald's slot looked like, and
 * putting it back without spawning. These and slot_dispatch() are the only
 * writers of slot and worker lifecycle fields. */
unsigned slot_consecutive_failures(const Slot *s);
uint64_t slot_last_failure(const Slot *s);
uint64_t slot_deadline(const Slot *s);
/* Set a restored slot's state, counters, last failure time and respawn
 * deadline (BACKOFF). */
void slot_restore(Slot *s, SlotState state, unsigned restarts, unsigned consecutive_failures, uint64_t last_failure,
                  uint64_t deadline);
/* Adopt a running process as a worker of s: copies pid, generation, state,
 * role, stop_sent/said_stopping/counted, failure (a copy of one of the
 * lifecycle's own reasons, or a generic one), start/ready times, deadline,
 * status and the hand-off counters from `from`. Takes a reference to config.
 * Nothing is spawned or logged. Returns the worker, or NULL (out of memory). */
Worker *slot_adopt_worker(Slot *s, const Worker *from, Config *config);
/* Restore the generation, give-up state and the failure window's stamps
 * (oldest first). */
void pool_restore(Pool *p, unsigned generation, bool gave_up, const char *giveup_reason, const uint64_t *stamps,
                  unsigned n_stamps);

/* Whether the slot has a ready worker. */
bool slot_is_ready(const Slot *s);
/* The current worker if it is ready and not leaving: one that may take new work. */
Worker *slot_ready_worker(const Slot *s);
