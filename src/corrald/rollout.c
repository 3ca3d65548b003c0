/* rollout: see rollout.h. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "rollout.h"
#include "util.h"

static const char * const kind_table[] = {
        [ROLLOUT_RELOAD] = "reload",
        [ROLLOUT_RESTART] = "restart",
        [ROLLOUT_RECYCLE] = "recycle",
};

const char *rollout_kind_to_string(RolloutKind k) {
        return kind_table[k];
}

const char *rollout_describe(const Rollout *r, char *buf, size_t n) {
        static const char * const verb[] = {
                [ROLLOUT_RELOAD] = "Reloading",
                [ROLLOUT_RESTART] = "Restarting",
                [ROLLOUT_RECYCLE] = "Recycling",
        };
        snprintf(buf, n, "%s: %u/%u replaced", verb[r->kind], r->replaced, r->n_queue);
        return buf;
}

Rollout *rollout_new(RolloutKind kind, unsigned serial, unsigned capacity, ControlConn *client, uint64_t now) {
        Rollout *r = calloc(1, sizeof(Rollout));
        if (!r)
                return NULL;
        r->queue = calloc(capacity + 1, sizeof(unsigned));
        if (!r->queue) {
                free(r);
                return NULL;
        }
        r->kind = kind;
        r->serial = serial;
        r->client = client ? control_conn_ref(client) : NULL;
        r->start_usec = now;
        return r;
}

Rollout *rollout_free(Rollout *r) {
        if (!r)
                return NULL;
        if (r->client)
                control_conn_unref(r->client);
        config_unref(r->old_config);
        free(r->queue);
        free(r);
        return NULL;
}

void rollout_progress(Rollout *r, const char *fmt, ...) {
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        log_info("%s: %s", kind_table[r->kind], msg);
        if (r->client)
                control_reply_progress(r->client, "%s", msg);
}

void rollout_enqueue(Rollout *r, Slot *s) {
        slot_dispatch(s, SLOT_EV_HOLD, NULL, 0);
        r->queue[r->n_queue++] = slot_id(s);
}

RolloutResult rollout_step(Rollout *r, Slot * const *slots, unsigned n_slots, unsigned max_surge) {
        while (r->in_flight < max_surge && r->next < r->n_queue) {
                unsigned id = r->queue[r->next++];
                if (id >= n_slots) {   /* scaled away meanwhile */
                        r->replaced++;
                        continue;
                }
                /* A slot without a worker (it crashed, or is a new one) gets
                 * its first worker the same way: as a replacement that must
                 * become ready, whose failure fails the plan rather than
                 * counting towards giving up. */
                Worker *had = slot_current(slots[id]);
                r->in_flight++;
                slot_dispatch(slots[id], SLOT_EV_REPLACE, NULL, 0);
                Worker *w = slot_incoming(slots[id]);
                if (w)
                        rollout_progress(r, "started %u/%u: slot %u, pid %d%s", r->next, r->n_queue, id,
                                         (int) worker_pid(w), had ? "" : " (new slot or was in backoff)");
        }
        return r->in_flight == 0 && r->next >= r->n_queue ? ROLLOUT_DONE : ROLLOUT_RUNNING;
}

RolloutResult rollout_on_outcome(Rollout *r, const Outcome *o, Slot * const *slots, unsigned n_slots,
                                 unsigned max_surge) {
        if ((o->kind != OUTCOME_REPLACED && o->kind != OUTCOME_REPLACE_FAILED) || o->plan != r->serial)
                return ROLLOUT_RUNNING;
        r->in_flight--;
        if (o->kind == OUTCOME_REPLACE_FAILED) {
                snprintf(r->error, sizeof(r->error), "%s", o->what);
                return ROLLOUT_FAILED;
        }
        r->replaced++;
        if (o->old_pid)
                rollout_progress(r, "replaced %u/%u: slot %u, pid %d -> %d", r->replaced, r->n_queue, o->slot_id,
                                 (int) o->old_pid, (int) o->pid);
        else
                rollout_progress(r, "replaced %u/%u: slot %u, new worker pid %d", r->replaced, r->n_queue,
                                 o->slot_id, (int) o->pid);
        return rollout_step(r, slots, n_slots, max_surge);
}
