/* messages: see messages.h.
 *
 * A worker's line for "all", "others" or a slot is forwarded to those
 * slots' current workers with "from" set to the sender's slot, its data
 * copied as the worker wrote it (ipc-msg.c checked it is one JSON value).
 * A line for the master is counted, logged (CORRAL_EVENT=message, at a rate
 * bounded for the instance as a whole, not per worker) and kept (the last
 * MESSAGES_KEPT) for `corralctl messages`.
 * Delivery never blocks: each channel queues a bounded amount and drops
 * (and counts) the rest (ipc.c). */
#include <stdio.h>
#include <string.h>

#include "ipc.h"
#include "log.h"
#include "messages.h"
#include "util.h"

/* Longest message kept whole for `corralctl messages`; a longer one is
 * kept with its data replaced by a note, so the buffer stays small. */
#define KEPT_DATA_MAX 4096

void messages_init(Messages *ms) {
        *ms = (Messages) { .log_limit = RATELIMIT_INIT(WORKER_NOTICE_INTERVAL_USEC, WORKER_NOTICE_BURST) };
}

void messages_set_slots(Messages *ms, Slot * const *slots, unsigned n_slots) {
        ms->slots = slots;
        ms->n_slots = n_slots;
}

const char *messages_kept(const Messages *ms, unsigned k) {
        return ms->kept[(ms->kept_head + k) % MESSAGES_KEPT];
}

static void keep(Messages *ms, const Worker *w, const IpcMessage *msg) {
        char *e = NULL;
        int r;
        if (msg->data_len <= KEPT_DATA_MAX)
                r = asprintf(&e, "{\"from\":%u,\"pid\":%d,\"generation\":%u,\"data\":%.*s}", w->id, (int) worker_pid(w),
                             w->generation, (int) msg->data_len, msg->data);
        else
                r = asprintf(&e, "{\"from\":%u,\"pid\":%d,\"generation\":%u,\"data\":null,\"truncated\":%zu}", w->id,
                             (int) worker_pid(w), w->generation, msg->data_len);
        if (r < 0)
                return;
        unsigned i = (ms->kept_head + ms->n_kept) % MESSAGES_KEPT;
        if (ms->n_kept == MESSAGES_KEPT) {
                free(ms->kept[ms->kept_head]);
                ms->kept_head = (ms->kept_head + 1) % MESSAGES_KEPT;
        } else
                ms->n_kept++;
        ms->kept[i] = e;
}

static void log_message(Messages *ms, const Worker *w, const IpcMessage *msg) {
        unsigned suppressed;
        bool ok = ratelimit_below(&ms->log_limit, now_usec(), &suppressed);
        LogFields f = { .event = "message", .worker_id = (int) w->id, .pid = worker_pid(w),
                        .generation = w->generation, .exit_status = -1 };
        if (suppressed) {
                /* The budget is the instance's: the notice is about every
                 * worker, so it carries no worker's fields. */
                LogFields n = { .event = "message", .worker_id = -1, .exit_status = -1 };
                log_emit(LOG_NOTICE, &n, "suppressed %u messages of workers to the master (log rate limit; "
                         "corralctl messages keeps the last ones)", suppressed);
        }
        if (!ok)
                return;
        char esc[512], raw[200];
        size_t n = MIN(msg->data_len, sizeof(raw) - 1);
        memcpy(raw, msg->data, n);
        raw[n] = 0;
        log_emit(LOG_INFO, &f, "%s message: %s%s", w->who, str_escape(raw, esc, sizeof(esc)),
                 n < msg->data_len ? "..." : "");
}

/* Send a formatted line to slot i's current worker; returns its pid, or 0. */
static pid_t deliver(Messages *ms, unsigned i, const char *line) {
        Worker *w = slot_current(ms->slots[i]);
        return w && w->pid > 0 && ipc_send_line(w->ipc, line) >= 0 ? w->pid : 0;
}

static unsigned route(Messages *ms, IpcPeer from, unsigned from_slot, IpcPeer to, unsigned to_slot, const char *data,
                      size_t len, pid_t *ret_pids) {
        size_t cap = len + IPC_MSG_OVERHEAD;
        _cleanup_free_ char *line = malloc(cap);
        if (!line || ipc_msg_format_from(line, cap, from, from_slot, data, len) < 0)
                return 0;
        unsigned n = 0;
        for (unsigned i = 0; i < ms->n_slots; i++) {
                bool target = to == IPC_PEER_ALL || (to == IPC_PEER_OTHERS && i != from_slot) ||
                              (to == IPC_PEER_SLOT && i == to_slot);
                pid_t pid = target ? deliver(ms, i, line) : 0;
                if (pid > 0 && ret_pids)
                        ret_pids[n] = pid;
                n += pid > 0;
        }
        return n;
}

/* Send a kept message (JSON text) to c as {"type":"message", ...}. */
static void send_kept(ControlConn *c, const char *text) {
        cJSON *o = text ? cJSON_Parse(text) : NULL;
        if (!o)
                return;
        cJSON_AddStringToObject(o, "type", "message");
        control_send_event(c, o);
        cJSON_Delete(o);
}

static void stream(Messages *ms, const char *text) {
        unsigned k = 0;
        for (unsigned i = 0; i < ms->n_followers; i++) {
                ControlConn *c = ms->followers[i];
                if (!control_conn_alive(c)) {
                        control_conn_unref(c);
                        continue;
                }
                send_kept(c, text);
                ms->followers[k++] = c;
        }
        ms->n_followers = k;
}

int messages_follow(Messages *ms, ControlConn *c) {
        /* Make room: followers that went away since the last message. */
        stream(ms, NULL);
        if (ms->n_followers >= MESSAGES_FOLLOWERS_MAX)
                return -EBUSY;
        for (unsigned k = 0; k < ms->n_kept; k++)
                send_kept(c, ms->kept[(ms->kept_head + k) % MESSAGES_KEPT]);
        ms->followers[ms->n_followers++] = control_conn_ref(c);
        return 0;
}

void messages_on_message(Messages *ms, const Worker *w, const IpcMessage *msg) {
        if (msg->peer == IPC_PEER_MASTER) {
                ms->n_messages++;
                log_message(ms, w, msg);
                keep(ms, w, msg);
                if (ms->n_followers)
                        stream(ms, ms->kept[(ms->kept_head + ms->n_kept - 1) % MESSAGES_KEPT]);
                return;
        }
        if (msg->peer == IPC_PEER_SLOT && msg->slot >= ms->n_slots) {
                ms->n_undeliverable++;
                return;
        }
        (void) route(ms, IPC_PEER_SLOT, w->id, msg->peer, msg->slot, msg->data, msg->data_len, NULL);
}

unsigned messages_send(Messages *ms, int slot, const char *data, size_t len, pid_t *ret_pids) {
        return route(ms, IPC_PEER_CTL, 0, slot < 0 ? IPC_PEER_ALL : IPC_PEER_SLOT, slot < 0 ? 0 : (unsigned) slot,
                     data, len, ret_pids);
}

void messages_unfollow_all(Messages *ms) {
        for (unsigned i = 0; i < ms->n_followers; i++) {
                /* The stream ends normally: there will be no more. */
                if (control_conn_alive(ms->followers[i]))
                        control_reply_ok(ms->followers[i], NULL);
                control_conn_unref(ms->followers[i]);
        }
        ms->n_followers = 0;
}

void messages_done(Messages *ms) {
        messages_unfollow_all(ms);
        for (unsigned k = 0; k < ms->n_kept; k++)
                free(ms->kept[(ms->kept_head + k) % MESSAGES_KEPT]);
        ms->n_kept = 0;
}
