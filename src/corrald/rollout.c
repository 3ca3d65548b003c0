/* rollout: see rollout.h. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "log.h"
#include "rollout.h"
#include "util.h"

typedef enum RolloutKind {
        ROLLOUT_RELOAD,
        ROLLOUT_RESTART,
} RolloutKind;

struct Rollout {
        Manager *manager;
        RolloutKind kind;
        Config *old_config;        /* reload: restored if it fails */
        unsigned old_generation;
        unsigned *queue;           /* slot ids still to replace, in order */
        unsigned n_queue, next;
        unsigned in_flight;        /* replacements started, not yet ready */
        unsigned replaced;
        unsigned old_workers;      /* the worker count before the rollout */
        unsigned target_workers;   /* reload: the new worker count */
        ControlConn *client;
        uint64_t start_usec;
};

static const char *kind_name(const Rollout *r) {
        return r->kind == ROLLOUT_RELOAD ? "reload" : "restart";
}

const char *rollout_describe(const Manager *m, char *buf, size_t n) {
        const Rollout *r = m->rollout;
        if (!r)
                return NULL;
        snprintf(buf, n, "%s: %u/%u replaced", r->kind == ROLLOUT_RELOAD ? "Reloading" : "Restarting", r->replaced,
                 r->n_queue);
        return buf;
}

static void rollout_free(Rollout *r) {
        if (r->client)
                control_conn_unref(r->client);
        config_unref(r->old_config);
        free(r->queue);
        free(r);
}

_printf_(2, 3) static void progress(Rollout *r, const char *fmt, ...) {
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        log_info("%s: %s", kind_name(r), msg);
        if (r->client)
                control_reply_progress(r->client, "%s", msg);
}

static LogFields event(const Manager *m, const char *name) {
        LogFields f = LOG_FIELDS_NONE;
        f.event = name;
        f.generation = m->generation;
        return f;
}

/* Tell systemd we are back to normal (after RELOADING=1). */
static void notify_ready(Manager *m, const char *status_prefix) {
        manager_update(m);
        (void) sd_notifyf(0, "READY=1\nSTATUS=%s%s", status_prefix ? status_prefix : "", m->status);
}

static void finish(Rollout *r) {
        Manager *m = r->manager;
        uint64_t ms = (now_usec() - r->start_usec) / USEC_PER_MSEC;

        m->rollout = NULL;
        if (r->kind == ROLLOUT_RELOAD && r->target_workers < m->n_slots)
                manager_scale(m, r->target_workers);
        if (r->kind == ROLLOUT_RELOAD) {
                LogFields f = event(m, "reload_done");
                log_emit(LOG_INFO, &f, "reload done: generation %u, %u workers replaced in %llu ms", m->generation,
                         r->replaced, (unsigned long long) ms);
                notify_ready(m, NULL);
        } else
                log_info("restart done: %u workers replaced in %llu ms", r->replaced, (unsigned long long) ms);
        if (r->client) {
                cJSON *o = cJSON_CreateObject();
                if (o) {
                        cJSON_AddNumberToObject(o, "generation", m->generation);
                        cJSON_AddNumberToObject(o, "replaced", r->replaced);
                        cJSON_AddNumberToObject(o, "duration_ms", (double) ms);
                }
                control_reply_ok(r->client, o);
        }
        rollout_free(r);
        manager_arm_recycle(m);
        manager_update(m);
}

/* End the rollout unsuccessfully: stop every replacement still starting,
 * restore the old configuration, refill any slot left empty. */
_printf_(2, 3) static void fail(Rollout *r, const char *fmt, ...) {
        Manager *m = r->manager;
        char why[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);

        m->rollout = NULL;
        for (unsigned i = 0; i < m->n_slots; i++)
                if (m->slots[i]->incoming)
                        worker_stop(m->slots[i]->incoming);
        if (r->kind == ROLLOUT_RELOAD) {
                /* New workers already promoted keep their generation; new
                 * spawns (respawns included) use the old configuration,
                 * restart policy and worker count. */
                config_unref(m->config);
                m->config = TAKE_PTR(r->old_config);
                m->generation = r->old_generation;
                FailureWindow fw;
                if (failure_window_init(&fw, m->config->restart_limit,
                                        m->config->restart_window_ms * USEC_PER_MSEC) >= 0) {
                        failure_window_done(&m->failures);
                        m->failures = fw;
                }
                if (m->n_slots > r->old_workers)
                        manager_scale(m, r->old_workers);
        }
        /* Slots the rollout took over (their backoff was cancelled) or
         * whose worker died meanwhile get one again. */
        for (unsigned i = 0; i < m->n_slots; i++) {
                Slot *s = m->slots[i];
                if (!s->current && !s->backoff_armed && !m->stopping)
                        slot_spawn(s);
        }

        LogFields f = event(m, r->kind == ROLLOUT_RELOAD ? "reload_failed" : NULL);
        log_emit(LOG_ERR, &f, "%s failed: %s%s", kind_name(r), why,
                 r->replaced ? "; slots already replaced keep their new workers" : "; the old workers keep serving");
        if (r->kind == ROLLOUT_RELOAD) {
                char prefix[300];
                snprintf(prefix, sizeof(prefix), "Reload failed: %.200s; ", why);
                notify_ready(m, prefix);
        }
        if (r->client)
                control_reply_error(r->client, "%s failed: %s", kind_name(r), why);
        rollout_free(r);
        manager_arm_recycle(m);
        manager_update(m);
}

static void step(Rollout *r) {
        Manager *m = r->manager;

        while (r->in_flight < m->config->reload_max_surge && r->next < r->n_queue) {
                unsigned id = r->queue[r->next++];
                Slot *s = id < m->n_slots ? m->slots[id] : NULL;
                if (!s) {
                        r->replaced++;
                        continue;
                }
                /* A slot without a worker (it crashed, or is a new one)
                 * gets its first worker the same way: as a replacement
                 * that must become ready, whose failure fails the rollout
                 * rather than counting towards giving up. */
                Worker *w = slot_spawn_incoming(s);
                if (!w) {
                        fail(r, "cannot start a new worker for slot %u", id);
                        return;
                }
                r->in_flight++;
                progress(r, "started %u/%u: slot %u, pid %d", r->next, r->n_queue, id, (int) w->pid);
        }
        if (r->in_flight == 0 && r->next >= r->n_queue)
                finish(r);
}

void rollout_on_ready(Manager *m, Worker *w) {
        Rollout *r = m->rollout;
        Slot *s = w->slot;
        Worker *old = s->current;

        s->current = w;
        s->incoming = NULL;
        if (old)
                worker_stop(old);
        if (!r)
                return;
        r->in_flight--;
        r->replaced++;
        progress(r, "replaced %u/%u: slot %u, pid %d -> %d", r->replaced, r->n_queue, s->id,
                 old ? (int) old->pid : 0, (int) w->pid);
        step(r);
}

void rollout_on_incoming_failed(Manager *m, Worker *w, const char *how) {
        pid_t pid = w->pid > 0 ? w->pid : -w->pid;
        Rollout *r = m->rollout;
        if (!r) {
                /* A recycle replacement: the old worker stays; a worker that
                 * cannot start is a failure like any other. */
                (void) manager_record_failure(m, w, how);
                return;
        }
        r->in_flight--;
        fail(r, "the new worker for slot %u (pid %d) %s%s%s", w->id, (int) pid, how, w->failure ? " after it " : "",
             w->failure ? w->failure : "");
}

void rollout_abort(Manager *m, const char *why) {
        Rollout *r = m->rollout;
        if (!r)
                return;
        m->rollout = NULL;
        if (r->client)
                control_reply_error(r->client, "%s aborted: %s", kind_name(r), why);
        rollout_free(r);
}

/* Prepare a rollout over up to `slots` slots. Replacements that are not the
 * rollout's own (recycle) yield to it; nothing is started yet. */
static Rollout *rollout_new(Manager *m, RolloutKind kind, unsigned slots, ControlConn *client) {
        Rollout *r = calloc(1, sizeof(Rollout));
        if (!r)
                return NULL;
        r->queue = calloc(MAX(slots, m->n_slots) + 1, sizeof(unsigned));
        if (!r->queue) {
                free(r);
                return NULL;
        }
        r->manager = m;
        r->kind = kind;
        r->client = client ? control_conn_ref(client) : NULL;
        r->start_usec = now_usec();
        r->old_workers = m->n_slots;
        for (unsigned i = 0; i < m->n_slots; i++)
                if (m->slots[i]->incoming)
                        worker_stop(m->slots[i]->incoming);
        return r;
}

/* Queue slot i: the rollout alone gives it its next worker, so a pending
 * respawn is cancelled and a given-up slot gets another chance. */
static void enqueue(Rollout *r, unsigned i) {
        Slot *s = r->manager->slots[i];
        uv_timer_stop(&s->backoff);
        s->backoff_armed = false;
        s->failed = false;
        s->consecutive_failures = 0;
        r->queue[r->n_queue++] = i;
}

static bool refuse_busy(Manager *m, ControlConn *client, const char *what) {
        const char *why = m->stopping ? "corrald is stopping" : m->rollout ? "another reload or restart is in progress" : NULL;
        if (!why)
                return false;
        log_warning("%s refused: %s", what, why);
        if (client)
                control_reply_error(client, "%s refused: %s", what, why);
        return true;
}

void rollout_reload(Manager *m, ControlConn *client) {
        _cleanup_(config_unrefp) Config *c = NULL;
        char *error = NULL;

        if (refuse_busy(m, client, "reload"))
                return;

        int r = config_build(m->overrides, &c, &error);
        if (r >= 0 && !streq_ptr(c->name, m->config->name)) {
                r = -EINVAL;
                if (asprintf(&error, "the instance name cannot change on reload (\"%s\" -> \"%s\"); restart instead",
                             m->config->name, c->name) < 0)
                        error = NULL;
        }
        if (r >= 0)
                r = config_check_supported(c, &error);
        if (r < 0) {
                LogFields f = event(m, "reload_failed");
                log_emit(LOG_ERR, &f, "reload failed, nothing changed: %s", error ? error : strerror(-r));
                if (client)
                        control_reply_error(client, "%s", error ? error : strerror(-r));
                free(error);
                return;
        }
        if (!m->listeners.activated && (c->n_listen != m->config->n_listen ||
                                        (c->n_listen && memcmp(c->listen, m->config->listen,
                                                               c->n_listen * sizeof(ListenAddr)) != 0)))
                log_warning("reload: listen changes take effect only when corrald restarts");

        unsigned target = config_worker_count(c);
        Rollout *ro = rollout_new(m, ROLLOUT_RELOAD, target, client);
        if (!ro) {
                if (client)
                        control_reply_error(client, "out of memory");
                return;
        }
        m->rollout = ro;
        ro->old_config = m->config;
        ro->old_generation = m->generation;
        m->config = TAKE_PTR(c);
        m->generation++;
        ro->target_workers = target;

        /* New restart policy, and a reload is a fresh start after giving up. */
        FailureWindow fw;
        if (failure_window_init(&fw, m->config->restart_limit, m->config->restart_window_ms * USEC_PER_MSEC) >= 0) {
                failure_window_done(&m->failures);
                m->failures = fw;
        }
        m->gave_up = false;

        (void) sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=Reloading: generation %u",
                          (unsigned long long) now_usec(), m->generation);
        LogFields f = event(m, "reload_begin");
        log_emit(LOG_INFO, &f, "reload: generation %u, %u -> %u workers", m->generation, m->n_slots, target);

        /* Slots that stay are replaced; new ones get their first worker
         * the same way, so a broken release that adds workers fails the
         * reload instead of crash-looping into a give-up. Surplus slots
         * go once the rollout is done. */
        unsigned have = manager_grow_slots(m, target);
        for (unsigned i = 0; i < MIN(have, target); i++)
                enqueue(ro, i);
        progress(ro, "generation %u: starting %u workers, at most %u at a time", m->generation, ro->n_queue,
                 m->config->reload_max_surge);
        step(ro);
}

void rollout_restart(Manager *m, int slot, ControlConn *client) {
        if (refuse_busy(m, client, "restart"))
                return;
        if (slot >= 0 && (unsigned) slot >= m->n_slots) {
                if (client)
                        control_reply_error(client, "no slot %d (there are %u workers)", slot, m->n_slots);
                return;
        }
        Rollout *r = rollout_new(m, ROLLOUT_RESTART, m->n_slots, client);
        if (!r) {
                if (client)
                        control_reply_error(client, "out of memory");
                return;
        }
        m->rollout = r;
        for (unsigned i = 0; i < m->n_slots; i++)
                if (slot < 0 || i == (unsigned) slot)
                        enqueue(r, i);
        progress(r, "replacing %u workers, at most %u at a time", r->n_queue, m->config->reload_max_surge);
        step(r);
}
