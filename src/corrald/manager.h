/* manager: the master's state — slots, workers, listeners, the loop — and
 * the types the lifecycle modules share.
 *
 * Ownership: the Manager owns its Slots (array, one per worker position)
 * and every live Worker (a list). A Slot points at its current Worker; a
 * Worker that is leaving (STOPPING=1, scale-down, replacement) is detached
 * from its slot but stays in the list until it has exited and its handles
 * are closed. Each Worker holds a reference to the Config of its
 * generation. All state changes go through slot.c (state × event). */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "control.h"
#include "ipc.h"
#include "listener.h"
#include "notify-server.h"
#include "output.h"
#include "policy.h"

typedef struct Manager Manager;
typedef struct Slot Slot;
typedef struct Worker Worker;
typedef struct Rollout Rollout;

typedef enum WorkerState {
        WORKER_STARTING,
        WORKER_READY,
        WORKER_STOPPING,
        _WORKER_STATE_MAX,
} WorkerState;

typedef enum SlotState {
        SLOT_STARTING,
        SLOT_READY,
        SLOT_STOPPING,
        SLOT_BACKOFF,
        SLOT_FAILED,
        _SLOT_STATE_MAX,
} SlotState;

struct Worker {
        Manager *manager;
        Slot *slot;                /* NULL once detached (leaving) */
        Config *config;            /* reference to its generation's config */
        unsigned id;               /* CORRAL_WORKER_ID */
        unsigned generation;
        pid_t pid;
        WorkerState state;
        bool stop_sent;            /* we asked it to stop: its exit is expected */
        bool said_stopping;        /* it sent STOPPING=1 */
        const char *failure;       /* why we killed it (timeout, watchdog): its exit is a failure */
        uint64_t start_usec, ready_usec;
        char status[NOTIFY_STATUS_MAX];
        uv_timer_t timer;          /* the deadline of the current state */
        Ipc ipc;
        Output output;             /* its stdout/stderr pipe, in stderr log mode only */
        char who[32];              /* "worker 2 (pid 1234)" */
        unsigned n_handles;        /* open libuv handles; freed at 0 */
        Worker *prev, *next;
};

struct Slot {
        Manager *manager;
        unsigned id;
        Worker *current;
        Worker *incoming;          /* its replacement while a rollout runs */
        bool failed;               /* given up on (restart.on_giveup = stay) */
        unsigned consecutive_failures;
        unsigned restarts;
        uv_timer_t backoff;        /* armed while waiting to respawn */
        bool backoff_armed;
};

struct Manager {
        uv_loop_t *loop;
        Config *config;            /* the current generation's */
        const ConfigOverrides *overrides;
        unsigned generation;
        ListenerSet listeners;
        NotifyServer notify;

        Slot **slots;
        unsigned n_slots;
        Worker *workers;           /* every live worker, newest first */
        unsigned n_workers;

        FailureWindow failures;
        Rollout *rollout;          /* the reload/restart in progress, or NULL */
        ControlServer control;
        uint64_t start_usec;
        bool sent_ready;
        bool stopping;
        bool gave_up;
        char giveup_reason[160];
        int exit_code;
        char status[256];          /* last STATUS= sent */

        uv_signal_t sig_term, sig_int, sig_hup, sig_chld, sig_ttin, sig_ttou;
        uv_timer_t watchdog;       /* pings systemd's watchdog */
        uv_timer_t recycle;        /* checks RSS against recycle.max_rss_mb */
        uint64_t watchdog_usec;
};

/* Set up everything (listeners, notify socket, signals) and spawn the first
 * generation. Takes a reference to config. Returns 0 or a negative errno
 * after logging what failed. */
int manager_start(Manager *m, uv_loop_t *loop, Config *config, const ConfigOverrides *o);

/* Ask every worker to stop; the loop ends when the last one has exited and
 * every handle is closed. exit_code is what main() should return. */
void manager_stop(Manager *m, int exit_code);

/* Close every handle of the manager (idempotent); uv_run() then returns
 * once the closes complete. Used when the last worker is gone, and by
 * main() when manager_start() failed. */
void manager_close(Manager *m);

/* Release what manager_start() acquired, after uv_run() returned. */
void manager_done(Manager *m);

/* Recompute STATUS= (and READY=1 the first time every slot is ready) and
 * tell systemd if it changed; end the loop if stopping and nothing is left. */
void manager_update(Manager *m);

/* A failure of some worker happened now; decides about giving up. Returns
 * true if the instance has given up (this or an earlier failure). */
bool manager_record_failure(Manager *m, const Worker *w, const char *what);

/* (Re)start or stop the RSS check for the current config's
 * recycle.max_rss_mb. */
void manager_arm_recycle(Manager *m);

/* Add empty slots up to n (nothing is spawned in them). Returns the new
 * slot count, smaller than n only when out of memory (logged). */
unsigned manager_grow_slots(Manager *m, unsigned n);

/* Change the number of slots (>= 1). */
void manager_scale(Manager *m, unsigned n);

Worker *manager_find_worker(Manager *m, pid_t pid);

/* slot.c — the lifecycle state machine. */
Slot *slot_new(Manager *m, unsigned id);
/* Stop the slot's worker (if any) and free the slot once its timer closed. */
void slot_free(Slot *s);
SlotState slot_state(const Slot *s);
const char *slot_state_to_string(SlotState s);
const char *worker_state_to_string(WorkerState s);

/* Start a new worker of the current generation in the slot. */
void slot_spawn(Slot *s);
/* Start the slot's replacement during a rollout (s->incoming). Returns it,
 * or NULL if it could not be started (logged). */
Worker *slot_spawn_incoming(Slot *s);
/* Events. */
void worker_on_notify(Worker *w, const NotifyMsg *msg);
void worker_on_exit(Worker *w, int wait_status);
/* Ask a worker to leave gracefully: stop.signal, then SIGKILL after
 * stop.timeout_ms. Detaches it from its slot. */
void worker_stop(Worker *w);
