/* messages: worker messages (SPEC §6), routed by the master.
 *
 * A worker's line for "all", "others" or a slot goes to those slots'
 * current workers; one for the master is counted, logged at a bounded
 * rate, kept (the last MESSAGES_KEPT) for `corralctl messages` and
 * streamed to the clients that follow. The host (host.c) passes each line
 * a worker sent; commands.c sends from "ctl" and reads what is kept. */
#pragma once

#include <stdint.h>
#include <sys/types.h>

#include "control.h"
#include "ipc-msg.h"
#include "policy.h"
#include "slot.h"

/* How many worker messages to the master `corralctl messages` shows, and
 * how many clients may follow them at once. */
#define MESSAGES_KEPT 64
#define MESSAGES_FOLLOWERS_MAX 16

typedef struct Messages {
        Slot * const *slots;       /* the owner's slot array (messages_set_slots()) */
        unsigned n_slots;
        char *kept[MESSAGES_KEPT]; /* the last messages for the master, as JSON objects, oldest at kept_head */
        unsigned kept_head, n_kept;
        uint64_t n_messages;       /* messages for the master, ever (carried across upgrades) */
        uint64_t n_undeliverable;  /* worker messages for a slot that does not exist (carried too) */
        RateLimit log_limit;       /* messages for the master in the log, all workers together */
        ControlConn *followers[MESSAGES_FOLLOWERS_MAX]; /* `messages -f` clients (references) */
        unsigned n_followers;
} Messages;

void messages_init(Messages *ms);
/* End every follower's request and free what is kept. */
void messages_done(Messages *ms);

/* The slots to route to: called after every change of the slot array. */
void messages_set_slots(Messages *ms, Slot * const *slots, unsigned n_slots);

/* A line worker `from` sent (its "to" in msg->peer). Does not fail;
 * what cannot be delivered is counted or dropped by the channel. Logs
 * messages for the master at a bounded rate. */
void messages_on_message(Messages *ms, const Worker *from, const IpcMessage *msg);

/* Send data (one JSON value) from "ctl" to the worker of slot `slot`, or
 * to every slot's worker when slot < 0. Returns how many took it, their
 * pids in ret_pids (room for n_slots; may be NULL). */
unsigned messages_send(Messages *ms, int slot, const char *data, size_t len, pid_t *ret_pids);

/* The k-th kept message (k < n_kept, oldest first), as a JSON object. */
const char *messages_kept(const Messages *ms, unsigned k);

/* Stream every message for the master to c from now on (`messages -f`),
 * after the kept ones. Returns 0, or -EBUSY when too many follow. */
int messages_follow(Messages *ms, ControlConn *c);
/* End every follower's request: we are stopping. */
void messages_unfollow_all(Messages *ms);
