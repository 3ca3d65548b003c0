/* handoff: the master on the data path (SPEC §5), with balance
 * round-robin, least-conn or ip-hash.
 *
 * Watches the listening sockets, accepts in bounded batches and passes
 * each connection to a ready worker over its IPC channel (ipc_send_fd):
 * the next one in turn (round-robin), or the one with the fewest open
 * handed-off connections, ties in turn (least-conn; until a worker sends
 * its first close report every connection handed to it counts as open,
 * and one that never reports takes turns), or the client address's slot
 * (ip-hash, iphash.h: the slot, not the worker, so a slot's replacement
 * after a crash, a restart or a reload gets the same clients; a peer
 * without an IP address, on a unix socket, takes turns). A hand-off that fails (channel
 * full, IPC_INFLIGHT_MAX hand-offs unread, worker gone) goes to the next
 * worker. When no worker can take a connection, it is held in the master
 * and accepting pauses, so further connections wait in the kernel's
 * backlog, not in the master; held ones are retried on a short timer and
 * whenever the owner calls handoff_kick(). Connections a worker never read
 * come back (handoff_take_back(), from the host when the worker is gone, or
 * from here when one stays unread for HANDOFF_STALL_MS or the worker
 * reports its fd limit) and are held first. EMFILE/ENFILE on accept pause accepting for a while instead of
 * spinning. Logs at a bounded rate. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "iphash.h"
#include "listener.h"
#include "policy.h"
#include "slot.h"

/* Most connections accepted per listener per loop iteration, so signals,
 * the control socket and the other listeners get their turn. */
#define HANDOFF_BATCH 64
/* Hand-offs without a single close report after which least-conn takes a
 * worker not to report at all (and lets it take turns). */
#define HANDOFF_SILENT_AFTER 64
/* A worker that leaves a hand-off unread this long is stalled (stopped,
 * blocked, or it closed its channel): its unread connections are taken
 * back and it gets none for a while, doubling. */
#define HANDOFF_STALL_MS 1000
#define HANDOFF_STALL_PAUSE_MAX_MS 30000
/* A worker that reports its fd limit gets no connection for this long.
 * libcorral reports at most once a second, so a worker that stays full is
 * tried, and loses a connection, about once per pause; one that freed
 * fds (its clients left, or timed out) is back within a second. */
#define HANDOFF_FD_LIMIT_PAUSE_MS 1000

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
        int *held_fd;              /* accepted or taken back, no worker took them yet, oldest first */
        uint8_t *held_index;
        unsigned n_held, cap_held;
        uv_timer_t retry;
        unsigned retry_ms;         /* the next retry's delay while holding */
        uv_timer_t stall;          /* looks at workers at the bound */
        unsigned cursor;           /* where the next round starts */
        bool recycle_due;          /* some worker reached max_requests: the owner checks */
        uint64_t n_handed, n_retried, n_accept_errors, n_taken_back, n_lost;
        RateLimit log_limit;
        /* ip-hash: the instance's SipHash key, drawn at start, carried
         * across an upgrade (upgrade.c) so that clients keep their slot. */
        uint8_t hash_key[IPHASH_KEY_SIZE];
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

/* The choice of worker: pass fd (accepted on listener `index`) to a ready
 * worker by the balance mode, trying the others when the first choice
 * cannot take it. Returns true when one took it (fd is then closed here),
 * false when none could (fd is the caller's still). Does not log. Called
 * for every accepted or held connection; tests/unit/test-handoff.c calls
 * it with fake slots. */
bool handoff_deliver(Handoff *h, int fd, uint8_t index);

/* Take back every connection w has not read from its channel (it is gone,
 * stalled or at its fd limit): each goes to another worker before any new
 * one (closed while stopping), and no longer counts as open for w.
 * Returns how many. Does not log. */
unsigned handoff_take_back(Handoff *h, Worker *w);

/* Worker w lost n_lost hand-offs at its fd limit (its fd-limit line): it
 * gets none for HANDOFF_FD_LIMIT_PAUSE_MS, what it has not read yet goes
 * to other workers, and the lost ones no longer count as open. Counted in
 * w, logged at a bounded rate. */
void handoff_fd_limit(Handoff *h, Worker *w, unsigned n_lost);

/* w refused the connection fd it had been handed (Node's cluster answer
 * accepted: false; the master kept fd, or -1 if it could not): fd goes to
 * another worker first, and w gets none for HANDOFF_FD_LIMIT_PAUSE_MS.
 * Takes fd. */
void handoff_refused(Handoff *h, Worker *w, int fd, uint8_t listener_index);

/* Connections held by the master now. */
static inline unsigned handoff_held(const Handoff *h) {
        return h->n_held;
}

/* The number of connections a worker has open, as far as we know. */
static inline uint64_t handoff_open(const Worker *w) {
        return w->handed > w->closed ? w->handed - w->closed : 0;
}
