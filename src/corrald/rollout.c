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

static const char *plural(unsigned n) {
        return n == 1 ? "" : "s";
}

Rollout *rollout_new(RolloutKind kind, unsigned serial, unsigned capacity, const ReplyOps *reply,
                     void *client, uint64_t now) {
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
        r->reply = reply;
        r->client = client ? reply->ref(client) : NULL;
        r->start_usec = now;
        return r;
}

Rollout *rollout_free(Rollout *r) {
        if (!r)
                return NULL;
        if (r->client)
                r->reply->unref(r->client);
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
                r->reply->progress(r->client, msg);
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

/* ---- the end of a plan --------------------------------------------------- */

void rollout_end(Rollout *r, RolloutResult res, RolloutEnd *ret) {
        *ret = (RolloutEnd) { .kind = r->kind, .ok = res == ROLLOUT_DONE };
        if (ret->ok) {
                /* Surplus slots go once their replacements are in. */
                if (r->kind == ROLLOUT_RELOAD)
                        ret->workers = r->target_workers;
        } else {
                ret->cancel = true;
                /* New workers already promoted keep their generation; new
                 * spawns (respawns included) use the old configuration,
                 * restart policy and worker count. */
                if (r->kind == ROLLOUT_RELOAD) {
                        ret->config = TAKE_PTR(r->old_config);
                        ret->generation = r->old_generation;
                        ret->workers = r->old_workers;
                }
                ret->pause_recycle = r->kind == ROLLOUT_RECYCLE;
        }
        if (r->kind == ROLLOUT_RELOAD) {
                ret->tell_systemd = true;
                if (!ret->ok)
                        snprintf(ret->status_prefix, sizeof(ret->status_prefix), "Reload failed: %.200s; ", r->error);
        }
}

void rollout_cancel(Rollout *r, Slot * const *slots, unsigned n_slots) {
        for (unsigned i = 0; i < n_slots; i++) {
                r->kept_old |= slot_current(slots[i]) != NULL;
                slot_dispatch(slots[i], SLOT_EV_CANCEL, NULL, 0);
        }
}

static void finish_done(Rollout *r, unsigned generation, uint64_t ms) {
        if (r->kind == ROLLOUT_RELOAD) {
                LogFields f = LOG_FIELDS_NONE;
                f.event = "reload_done";
                f.generation = generation;
                log_emit(LOG_INFO, &f, "reload done: generation %u, %u worker%s replaced in %llu ms", generation,
                         r->replaced, plural(r->replaced), (unsigned long long) ms);
                if (r->note[0])
                        log_warning("reload: %s", r->note);
        } else
                log_info("%s done: %u worker%s replaced in %llu ms", rollout_kind_to_string(r->kind), r->replaced,
                         plural(r->replaced), (unsigned long long) ms);
        if (!r->client)
                return;
        cJSON *o = cJSON_CreateObject();
        if (o) {
                cJSON_AddNumberToObject(o, "generation", generation);
                cJSON_AddNumberToObject(o, "replaced", r->replaced);
                cJSON_AddNumberToObject(o, "duration_ms", (double) ms);
                if (r->note[0])
                        cJSON_AddStringToObject(o, "warning", r->note);
        }
        r->reply->result(r->client, true, o, NULL);
}

static void finish_failed(Rollout *r, unsigned generation) {
        if (r->kind == ROLLOUT_RECYCLE) {
                log_warning("recycle failed: %s; the old worker keeps serving", r->error);
                return;
        }
        const char *rest = r->replaced ? "; slots already replaced keep their new workers"
                           : r->kept_old ? "; the old workers keep serving"
                                         : "";
        LogFields f = LOG_FIELDS_NONE;
        f.event = r->kind == ROLLOUT_RELOAD ? "reload_failed" : NULL;
        f.generation = generation;
        log_emit(LOG_ERR, &f, "%s failed: %s%s", rollout_kind_to_string(r->kind), r->error, rest);
        if (r->client) {
                char why[700];
                snprintf(why, sizeof(why), "%s failed: %s", rollout_kind_to_string(r->kind), r->error);
                r->reply->result(r->client, false, NULL, why);
        }
}

Rollout *rollout_finish(Rollout *r, const RolloutEnd *e, unsigned generation, uint64_t now) {
        if (e->ok)
                finish_done(r, generation, (now - r->start_usec) / USEC_PER_MSEC);
        else
                finish_failed(r, generation);
        return rollout_free(r);
}

Rollout *rollout_abort(Rollout *r, const char *why) {
        if (r->client) {
                char msg[300];
                snprintf(msg, sizeof(msg), "%s aborted: %s", rollout_kind_to_string(r->kind), why);
                r->reply->result(r->client, false, NULL, msg);
        }
        return rollout_free(r);
}
