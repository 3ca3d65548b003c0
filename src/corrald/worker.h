/* worker: one worker process, as the lifecycle sees it.
 *
 * A Worker belongs to exactly one Slot from spawn until it has exited and
 * been released. slot.c is the only writer of every field below except
 * `host` and `ipc`, which belong to the host that started the process (host.c in
 * corrald, a fake in the unit tests). Everyone else reads. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "list.h"
#include "notify-msg.h"
#include "policy.h"

/* What the workers of an instance, all together, may make the master log
 * per interval, for each kind of line (ERRNO= reports in Pool.errno_log,
 * messages to the master in Messages.log_limit), like journald's
 * RateLimitBurst=; the rest is counted and summarised. Per instance, not
 * per worker: N flooding workers must not buy N times the journal. */
#define WORKER_NOTICE_BURST 1000
#define WORKER_NOTICE_INTERVAL_USEC (10 * 1000000ULL)

typedef struct Slot Slot;
struct Ipc;
typedef struct Worker Worker;

typedef enum WorkerState {
        WORKER_STARTING,           /* spawned, READY=1 not seen yet */
        WORKER_READY,
        WORKER_STOPPING,           /* asked to stop, or said STOPPING=1 */
        WORKER_EXITED,             /* reaped; waiting to be released */
        _WORKER_STATE_MAX,
} WorkerState;

/* How a worker relates to its slot. */
typedef enum WorkerRole {
        WORKER_CURRENT,            /* the slot's worker */
        WORKER_INCOMING,           /* its replacement, not ready yet */
        WORKER_LEAVING,            /* detached: draining until it exits */
} WorkerRole;

struct Worker {
        Slot *slot;
        Config *config;            /* reference to its generation's config */
        unsigned id;               /* CORRAL_WORKER_ID = its slot's id */
        unsigned generation;
        pid_t pid;                 /* > 0 while it runs, negated once reaped */
        WorkerState state;
        WorkerRole role;
        bool stop_sent;            /* we asked it to stop: its exit is expected */
        bool said_stopping;        /* it sent STOPPING=1 */
        bool counted;              /* its leaving was already counted as a failure */
        bool exit_expected;        /* set when reaped: we asked for this exit */
        unsigned plan;             /* the Pool.plan it was started for, if a replacement */
        const char *failure;       /* why we killed it (timeout, watchdog): its exit is a failure */
        uint64_t start_usec, ready_usec;
        uint64_t deadline;         /* of its current state, 0 = none */
        char status[NOTIFY_STATUS_MAX];
        char who[32];              /* "worker 2 (pid 1234)" */
        char how[80];              /* set when reaped: "exited with status 1" */
        /* Hand-off (balance round-robin/least-conn): written by handoff.c
         * and by its close reports (host.c), not by slot.c. */
        uint64_t handed;           /* connections handed to it */
        uint64_t closed;           /* connections it reported closed */
        bool reports_closes;       /* it has sent a close report: least-conn can weigh it */
        uint64_t stalled_until;    /* it left hand-offs unread, or is at its fd limit: none for it
                                    * before then */
        unsigned stalls;           /* how often it left them unread; each doubles the pause */
        uint64_t fd_limit_reports; /* fd-limit lines it sent (handoff_fd_limit()) */
        uint64_t fd_limit_lost;    /* hand-offs it said it lost to its fd limit */
        void *host;                /* the host's per-worker data (I/O handles) */
        struct Ipc *ipc;           /* the host's channel to it (CORRAL_IPC_FD), or NULL: messages and
                                    * hand-offs are sent on it */
        LIST_FIELDS(Worker, all);  /* Pool.workers */
        LIST_FIELDS(Worker, leaving); /* Slot.leaving */
};

const char *worker_state_to_string(WorkerState s);

/* Send a signal to a running worker. Returns 0 or -ESRCH. (slot.c) */
int worker_signal(Worker *w, int sig);
/* For the host's release: free the lifecycle's part of w. (slot.c) */
void worker_free(Worker *w);

/* The pid of a worker, running or reaped. */
static inline pid_t worker_pid(const Worker *w) {
        return w->pid > 0 ? w->pid : -w->pid;
}
