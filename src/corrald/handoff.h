/* handoff: the master on the data path (SPEC §5), with balance
 * round-robin or least-conn.
 *
 * Watches the listening sockets, accepts in bounded batches and passes
 * each connection to a ready worker over its IPC channel (ipc_send_fd):
 * the next one in turn (round-robin), or the one with the fewest open
 * handed-off connections, ties in turn (least-conn; until a worker sends
 * its first close report every connection handed to it counts as open,
 * and one that never reports takes turns). A hand-off that
 * fails (channel full, worker gone) goes to the next worker. When no
 * worker can take a connection, the one accepted waits in the master (at
 * most one) and accepting pauses, so further connections wait in the
 * kernel's backlog, not in the master; it is retried on a short timer and
 * whenever the owner calls handoff_kick(). EMFILE/ENFILE on accept pause
 * accepting for a while instead of spinning. Logs at a bounded rate. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "listener.h"
#include "policy.h"
#include "slot.h"

/* Most connections accepted per listener per loop iteration, so signals,
 * the control socket and the other listeners get their turn. */
#define HANDOFF_BATCH 64
/* Hand-offs without a single close report after which least-conn takes a
 * worker not to report at all (and lets it take turns). */
#define HANDOFF_SILENT_AFTER 64

typedef struct Handoff Handoff;

typedef struct HandoffListener {
        uv_poll_t poll;
        Handoff *handoff;
        uint8_t index;             /* the byte sent with each connection */
        int fd;
} HandoffListener;

struct Handoff {
        uv_loop_t *loop;
        HandoffListener *listeners;
        unsigned n_listeners;
        Slot * const *slots;       /* the owner's slot array, read at each hand-off */
        unsigned n_slots;          /* kept up to date by the owner (handoff_set_slots) */
        Balance balance;
        uint64_t max_requests;     /* recycle.max_requests, 0 = off */
        bool active;               /* accepting (not paused, not stopped) */
        bool accept_paused;        /* after EMFILE/ENFILE, until the retry timer */
        bool started;
        int pending_fd;            /* accepted, no worker took it yet; -EBADF if none */
        uint8_t pending_index;
        uv_timer_t retry;
        unsigned cursor;           /* where the next round starts */
        bool recycle_due;          /* some worker reached max_requests: the owner checks */
        uint64_t n_handed, n_retried, n_accept_errors;
        RateLimit log_limit;
};

/* Start accepting on every listener. Returns 0 or -errno (logged). */
int handoff_start(Handoff *h, uv_loop_t *loop, const ListenerSet *ls);
/* Stop accepting; a pending connection is closed (we are stopping). The
 * handles close on the loop. */
void handoff_stop(Handoff *h);

/* The slots to hand to, the mode, and recycle.max_requests: called after
 * every change of the slot array or configuration. */
void handoff_set_slots(Handoff *h, Slot * const *slots, unsigned n_slots, const Config *c);

/* A worker may have become able to take connections: retry now. */
void handoff_kick(Handoff *h);

/* The number of connections a worker has open, as far as we know. */
static inline uint64_t handoff_open(const Worker *w) {
        return w->handed > w->closed ? w->handed - w->closed : 0;
}
