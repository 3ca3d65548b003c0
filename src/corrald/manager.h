/* manager: the master's top level — the loop's long-lived handles, the
 * slots, the plan in progress, and everything said to systemd.
 *
 * Ownership: the Manager owns its Slots (array, one per worker position)
 * and the Pool they share (slot.h), which holds every live Worker. The
 * lifecycle is slot.c's; the manager turns loop events (SIGCHLD, notify
 * datagrams, its deadline timer) into slot events, and once per loop
 * iteration (a uv_prepare handle, before the loop blocks) drains the
 * Pool's outcomes: it advances the plan, acts on a give-up, frees emptied
 * slots, tells systemd, and exits once the last worker is gone. */
#pragma once

#include <stdbool.h>
#include <signal.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "control.h"
#include "handoff.h"
#include "host.h"
#include "listener.h"
#include "messages.h"
#include "notify-server.h"
#include "rollout.h"
#include "slot.h"

/* The signals the manager handles (manager.c's table). */
#define MANAGER_N_SIGNALS 7

typedef struct Manager Manager;
typedef struct ManagerUpgradeOps ManagerUpgradeOps;

struct Manager {
        uv_loop_t *loop;
        const ConfigOverrides *overrides;
        Config *start_config;      /* what the listeners and balance were set up from */
        Pool pool;                 /* config, generation, workers, failure window, outcomes */
        ListenerSet listeners;
        NotifyServer notify;
        ControlServer control;
        Handoff handoff;           /* balance round-robin/least-conn: started at start-up */
        Messages messages;         /* worker messages: routing, the last ones kept, followers */
        Host host;                 /* the Pool's host: its parts above, as host.c sees them */

        Slot **slots;
        unsigned n_slots;
        unsigned n_unstarted;      /* slots at the end of `slots` waiting for their first worker */

        Rollout *rollout;          /* the plan in progress, or NULL */
        unsigned rollout_serial;
        uint64_t recycle_pause_until; /* after a failed recycle */
        unsigned recycle_next;     /* the slot the next recycle check looks at first */
        uint64_t recycle_rss_usec; /* when RSS was last read for recycle.max_rss_mb */

        uint64_t start_usec;       /* of the instance: kept across upgrades */
        uint64_t orphans_reaped;   /* as PID 1 or --subreaper: children that were no worker */
        uint64_t exec_usec;        /* when this corrald binary started */
        unsigned upgrades;         /* in-place upgrades since start_usec (upgrade.c) */
        bool sent_ready;
        bool draining;             /* `corralctl drain`: health says so; kept across upgrades */
        bool reload_failed;        /* the last reload failed: health is degraded until one succeeds */
        uint64_t reloads_done, reloads_failed; /* since start_usec (carried across upgrades) */
        /* A runtime scale (corralctl scale, SIGTTIN/SIGTTOU) holds across
         * reloads and upgrades until the file's `workers` changes (SPEC §4):
         * the count it set (0: none) and the file's value then (0: auto). */
        unsigned scaled;
        unsigned scaled_file_workers;
        bool closed;
        int exit_code;
        char status[256];          /* last STATUS= sent */

        uv_signal_t signals[MANAGER_N_SIGNALS]; /* one per entry of manager.c's signal table */
        sigset_t handled_signals;  /* the same signals: an upgrade blocks them across execve() */
        uv_timer_t watchdog;       /* pings systemd's watchdog */
        uv_timer_t recycle;        /* checks recycle.max_age_ms and recycle.max_rss_mb */
        uv_timer_t deadline;       /* the Pool's earliest deadline */
        uint64_t deadline_armed;   /* when it fires, 0 = not armed */
        uv_prepare_t prepare;      /* drains outcomes once per iteration */
        uv_idle_t busy;            /* active while spawns wait for the next iteration */
        uint64_t watchdog_usec;
        const ManagerUpgradeOps *upgrade; /* may be NULL */

};

/* Most workers spawned per loop iteration, and most time spent spawning in
 * one: a mass scale-up leaves the loop free for signals, the control
 * socket and the watchdog in between. The time bound is what keeps an
 * iteration short: a spawn waits for its child's exec (spawn.c), and that
 * grows with the fds the master holds, which the child closes: at 4000
 * workers 16 spawns took 60 ms, and a status reply of 540 KB, written a
 * socket buffer (8 KiB) per iteration, took 6.7 s to reach corralctl. */
#define SPAWN_BATCH 16
#define SPAWN_BATCH_USEC 2000

/* What the manager passes on to the in-place upgrade (upgrade.c). The
 * upgrade sits above the manager (it reads and restores the manager's
 * whole state), so the manager does not call it by name: main() fills
 * these in. Any may be NULL. */
struct ManagerUpgradeOps {
        /* SIGUSR2: upgrade in place (client is NULL). */
        void (*request)(Manager *m, ControlConn *client);
        /* manager_stop(): end a check in progress, refusing its clients. */
        void (*cancel)(Manager *m);
        /* SIGCHLD, after the workers and before any orphan (--subreaper):
         * reap the children that are no worker (probes, orphans). */
        void (*reap)(void);
};

/* Part 1 of the start: every loop handle (so that manager_close() is safe
 * from here on, whatever fails later) and the Pool with config's
 * generation. Takes a reference to config. Returns 0 or a negative errno
 * after logging. */
int manager_init(Manager *m, uv_loop_t *loop, Config *config, const ConfigOverrides *o,
                 const ManagerUpgradeOps *upgrade);

/* Part 2: the listeners (unless adopted: `adopted`, or m->listeners
 * already holds some), the hand-off, the control and notify sockets
 * (adopting notify_fd and control_fd when >= 0), signals and timers.
 * Control requests go to `commands` (commands.c's dispatcher, given by
 * main()). No worker is started yet. Returns 0 or a negative errno after
 * logging what failed. */
int manager_start(Manager *m, ControlHandler commands, bool adopted, int notify_fd, int control_fd);

/* Part 3 of a clean start: queue the first generation's spawns. Returns 0,
 * or -EMFILE (logged) when they do not fit in the open-file limit. */
int manager_start_workers(Manager *m);

/* Ask every worker to stop; the loop ends when the last one has exited and
 * every handle is closed. exit_code is what main() should return. */
void manager_stop(Manager *m, int exit_code);

/* Close every handle of the manager (idempotent); uv_run() then returns
 * once the closes complete. Used when the last worker is gone, and by
 * main() when manager_start() failed. */
void manager_close(Manager *m);

/* Release what manager_start() acquired, after uv_run() returned. */
void manager_done(Manager *m);

static inline Config *manager_config(const Manager *m) {
        return m->pool.config;
}

/* Change the number of slots (>= 1); new ones are started in batches.
 * Refused while stopping or while a plan runs (-EBUSY), and when the
 * workers would not fit in RLIMIT_NOFILE (-EMFILE). */
int manager_scale(Manager *m, unsigned n);

/* File descriptors the master keeps open per worker, and the headroom a
 * scale leaves for spawning, replacements and control clients. */
#define SCALE_FD_RESERVE 64
unsigned manager_fds_per_worker(const Manager *m);
/* Whether n workers fit in the fd budget: 0 or -EMFILE; the soft limit
 * and the fds open now in *ret_max and *ret_open (may be NULL). */
int manager_fd_room(const Manager *m, unsigned n, unsigned *ret_max, unsigned *ret_open);

/* Whether c's exec is a program that can run by itself, at start and at
 * reload (spawn_check_program()): 0, or -ENOEXEC with "FILE: exec: ..." in
 * *ret_error (malloc'd), or -ENOMEM. Does not log. */
int manager_check_program(const Config *c, char **ret_error);

/* Start a reload or restart (slot < 0: all). The result goes to client
 * (may be NULL: SIGHUP), now or when the plan ends. */
void manager_reload(Manager *m, ControlConn *client);
void manager_restart(Manager *m, int slot, ControlConn *client);

/* Reap every worker that exited (after reading what the notify socket
 * holds), by pid. */
void manager_reap(Manager *m);

/* The number of slots with a ready worker. */
unsigned manager_count_ready(const Manager *m);
