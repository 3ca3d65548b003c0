/* manager: the master's top level. See manager.h.
 *
 * The loop's callbacks here only translate: a reaped child, a notify
 * datagram or a passed deadline becomes a slot event. What the slots then
 * report comes back as outcomes, drained in on_prepare() once per loop
 * iteration, which is the one place that advances a plan, gives up, frees
 * slots, tells systemd (READY=1, STATUS=, STOPPING=1) and decides that the
 * master is done. Nothing the manager calls calls back into it. */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>

#include "closer.h"
#include "fd-util.h"
#include "log.h"
#include "manager.h"
#include "procfs.h"
#include "spawn.h"
#include "util.h"

unsigned manager_count_ready(const Manager *m) {
        unsigned n = 0;
        for (unsigned i = 0; i < m->n_slots; i++)
                n += slot_is_ready(m->slots[i]);
        return n;
}

static const char *plural(unsigned n) {
        return n == 1 ? "" : "s";
}

/* Recompute STATUS= (and READY=1 the first time every slot is ready) and
 * tell systemd if it changed. */
static void update_status(Manager *m) {
        char status[sizeof(m->status)], rolling[64];
        unsigned ready = manager_count_ready(m);
        unsigned gen = m->pool.generation;

        if (m->pool.stopping)
                snprintf(status, sizeof(status), "Stopping: %u worker%s left", m->pool.n_workers,
                         plural(m->pool.n_workers));
        else if (m->pool.gave_up)
                snprintf(status, sizeof(status), "Gave up: %s; %u/%u workers ready, generation %u",
                         m->pool.giveup_reason, ready, m->n_slots, gen);
        else if (m->rollout && m->rollout->kind != ROLLOUT_RECYCLE)
                snprintf(status, sizeof(status), "%s; %u/%u workers ready, generation %u",
                         rollout_describe(m->rollout, rolling, sizeof(rolling)), ready, m->n_slots, gen);
        else
                snprintf(status, sizeof(status), "%u/%u workers ready, generation %u", ready, m->n_slots, gen);

        if (!m->sent_ready && !m->pool.stopping && m->n_slots > 0 && ready == m->n_slots) {
                m->sent_ready = true;
                if (m->n_slots == 1)
                        log_info("the worker is ready");
                else
                        log_info("all %u workers ready", m->n_slots);
                (void) sd_notifyf(0, "READY=1\nSTATUS=%s", status);
                snprintf(m->status, sizeof(m->status), "%s", status);
        } else if (strcmp(status, m->status) != 0) {
                (void) sd_notifyf(0, "STATUS=%s", status);
                snprintf(m->status, sizeof(m->status), "%s", status);
        }
}

/* ---- slots -------------------------------------------------------------- */

/* The slot array or its length changed: tell those that route to slots. */
static void slots_changed(Manager *m) {
        handoff_set_slots(&m->handoff, m->slots, m->n_slots, manager_config(m));
        messages_set_slots(&m->messages, m->slots, m->n_slots);
}

/* Add empty slots up to n (nothing is spawned in them). Returns the new
 * slot count, smaller than n only when out of memory (logged). */
static unsigned grow_slots(Manager *m, unsigned n) {
        unsigned i = m->n_slots;
        if (n <= i)
                return i;
        Slot **l = realloc(m->slots, n * sizeof(Slot *));
        if (!l) {
                log_error("cannot grow to %u workers: out of memory", n);
                return i;
        }
        m->slots = l;
        for (; i < n; i++)
                if (!(m->slots[i] = slot_new(&m->pool, i)))
                        break;
        m->n_slots = i;
        slots_changed(m);
        return i;
}

/* Remove the slots from n on; their workers drain and each slot is freed
 * when its OUTCOME_EMPTIED comes back. */
static void shrink_slots(Manager *m, unsigned n) {
        for (unsigned i = n; i < m->n_slots; i++)
                slot_dispatch(m->slots[i], SLOT_EV_REMOVE, NULL, 0);
        m->n_slots = n;
        m->n_unstarted = MIN(m->n_unstarted, n);
        slots_changed(m);
}

static void set_slot_count(Manager *m, unsigned n) {
        unsigned old = m->n_slots;
        if (n == old)
                return;
        if (old > 0) {
                LogFields f = LOG_FIELDS_NONE;
                f.event = "scale";
                f.generation = m->pool.generation;
                log_emit(LOG_INFO, &f, "scaling from %u to %u worker%s", old, n, plural(n));
        }
        if (n < old)
                shrink_slots(m, n);
        else
                m->n_unstarted += grow_slots(m, n) - old;
}

unsigned manager_fds_per_worker(const Manager *m) {
        /* Its IPC channel, the worker's end of it with hand-off, and its
         * output pipe in stderr log mode. */
        return 1 + m->handoff.started + (log_get_target() == LOG_TARGET_STDERR);
}

int manager_fd_room(const Manager *m, unsigned n, unsigned *ret_max, unsigned *ret_open) {
        unsigned max, open;
        int r = fd_budget(&max, &open);
        if (r < 0)
                return r;
        if (ret_max)
                *ret_max = max;
        if (ret_open)
                *ret_open = open;
        if (n <= m->n_slots || max == UINT_MAX)
                return 0;
        /* Each new worker holds its fds for its life; SCALE_FD_RESERVE more
         * are needed while one spawns, for replacements and for clients. */
        uint64_t need = (uint64_t) open + (uint64_t) (n - m->n_slots) * manager_fds_per_worker(m) + SCALE_FD_RESERVE;
        return need > max ? -EMFILE : 0;
}

int manager_scale(Manager *m, unsigned n) {
        if (m->pool.stopping || (m->rollout && m->rollout->kind != ROLLOUT_RECYCLE))
                return -EBUSY;
        if (n < 1)
                return -EINVAL;
        int r = manager_fd_room(m, n, NULL, NULL);
        if (r < 0)
                return r;
        /* Back to what the file says is no scale to hold. */
        m->scaled = n == config_worker_count(manager_config(m)) ? 0 : n;
        m->scaled_file_workers = manager_config(m)->workers;
        set_slot_count(m, n);
        return 0;
}

/* The idle handle only keeps the loop from blocking for one iteration. */
static void on_busy(uv_idle_t *h) {
        uv_idle_stop(h);
}

/* Start the first worker of up to SPAWN_BATCH new slots, for at most
 * SPAWN_BATCH_USEC (at least one). */
static void start_batch(Manager *m) {
        unsigned done = 0;
        uint64_t until = now_usec() + SPAWN_BATCH_USEC;
        while (m->n_unstarted > 0 && done < SPAWN_BATCH && !m->pool.stopping && (done == 0 || now_usec() < until)) {
                Slot *s = m->slots[m->n_slots - m->n_unstarted--];
                if (slot_state(s) == SLOT_EMPTY) {
                        slot_dispatch(s, SLOT_EV_START, NULL, 0);
                        done++;
                }
        }
        /* More to start: do not let the loop block before the next batch. */
        if (m->n_unstarted > 0 && !m->pool.stopping)
                uv_idle_start(&m->busy, on_busy);
}

/* ---- plans -------------------------------------------------------------- */

static LogFields event(const Manager *m, const char *name) {
        LogFields f = LOG_FIELDS_NONE;
        f.event = name;
        f.generation = m->pool.generation;
        return f;
}

static void notify_ready(Manager *m, const char *status_prefix) {
        update_status(m);
        (void) sd_notifyf(0, "READY=1\nSTATUS=%s%s", status_prefix ? status_prefix : "", m->status);
}

static void plan_result(Manager *m, RolloutResult res);
static void arm_recycle(Manager *m);

/* The Pool's configuration changed (a reload, or a failed one going
 * back): what depends on it follows. */
static void config_changed(Manager *m) {
        arm_recycle(m);      /* recycle.* may have been turned on or off */
        handoff_set_slots(&m->handoff, m->slots, m->n_slots, manager_config(m));
}

static void start_plan(Manager *m, Rollout *r) {
        m->pool.changed = true;   /* STATUS= shows the plan */
        m->rollout = r;
        m->pool.plan = r->serial;
        /* Done at once only when there was nothing to replace. */
        plan_result(m, rollout_step(r, m->slots, m->n_slots, manager_config(m)->reload_max_surge));
}

/* The plan ended: apply what it asks (rollout.h, RolloutEnd, in that
 * order), then it logs and replies. */
static void plan_end(Manager *m, RolloutResult res) {
        Rollout *r = TAKE_PTR(m->rollout);
        RolloutEnd e;

        m->pool.changed = true;   /* STATUS= shows the plan */
        m->pool.plan = 0;
        rollout_end(r, res, &e);
        if (e.config) {
                (void) pool_set_config(&m->pool, TAKE_PTR(e.config), e.generation);
                config_changed(m);
        }
        if (e.workers > 0 && e.workers < m->n_slots)
                set_slot_count(m, e.workers);
        if (e.cancel)
                rollout_cancel(r, m->slots, m->n_slots);
        if (e.pause_recycle)
                m->recycle_pause_until = now_usec() + manager_config(m)->restart_window_ms * USEC_PER_MSEC;
        if (e.kind == ROLLOUT_RELOAD) {
                m->reload_failed = !e.ok;
                if (e.ok)
                        m->reloads_done++;
                else
                        m->reloads_failed++;
        }
        if (e.tell_systemd)
                notify_ready(m, e.status_prefix);
        rollout_finish(r, &e, m->pool.generation, now_usec());
}

static void plan_result(Manager *m, RolloutResult res) {
        if (res != ROLLOUT_RUNNING)
                plan_end(m, res);
}

/* A recycle yields to a reload or restart: its replacement is stopped. */
static void preempt_recycle(Manager *m) {
        if (!m->rollout || m->rollout->kind != ROLLOUT_RECYCLE)
                return;
        rollout_cancel(m->rollout, m->slots, m->n_slots);
        m->rollout = rollout_free(m->rollout);
        m->pool.plan = 0;
}

static bool refuse_busy(Manager *m, ControlConn *client, const char *what) {
        const char *why = m->pool.stopping                                             ? "corrald is stopping"
                          : m->rollout && m->rollout->kind != ROLLOUT_RECYCLE ? "another reload or restart is in progress"
                                                                                : NULL;
        if (!why)
                return false;
        log_warning("%s refused: %s", what, why);
        if (client)
                control_reply_error(client, "%s refused: %s", what, why);
        return true;
}

/* Whether c asks for other listeners than the ones bound at start. */
static bool listen_changed(const Manager *m, const Config *c) {
        const Config *old = m->start_config;
        return !m->listeners.activated &&
               (c->n_listen != old->n_listen ||
                (c->n_listen && memcmp(c->listen, old->listen, c->n_listen * sizeof(ListenAddr)) != 0));
}

int manager_check_program(const Config *c, char **ret_error) {
        _cleanup_free_ char *why = NULL;
        int r = spawn_check_program(c->exec, c->cwd, c->env, &why);
        if (r == -ENOEXEC && asprintf(ret_error, "%s: %s", c->path ? c->path : "command line", why) < 0)
                return -ENOMEM;
        return r;
}

void manager_reload(Manager *m, ControlConn *client) {
        _cleanup_(config_unrefp) Config *c = NULL;
        char *error = NULL;

        if (refuse_busy(m, client, "reload"))
                return;

        int r = config_build(m->overrides, &c, &error);
        if (r >= 0 && !streq_ptr(c->name, manager_config(m)->name)) {
                r = -EINVAL;
                if (asprintf(&error, "the instance name cannot change on reload (\"%s\" -> \"%s\"); restart instead",
                             manager_config(m)->name, c->name) < 0)
                        error = NULL;
        }
        if (r >= 0)
                r = config_check_supported(c, &error);
        if (r >= 0)
                r = manager_check_program(c, &error);
        if (r < 0) {
                LogFields f = event(m, "reload_failed");
                m->reload_failed = true;
                m->reloads_failed++;
                log_emit(LOG_ERR, &f, "reload failed, nothing changed: %s", error ? error : strerror(-r));
                if (client)
                        control_reply_error(client, "%s", error ? error : strerror(-r));
                free(error);
                return;
        }

        unsigned target = config_worker_count(c), max, open;
        /* A runtime scale holds while the file says what it said then. */
        if (m->scaled && c->workers == m->scaled_file_workers)
                target = m->scaled;
        else if (m->scaled) {
                log_notice("reload: the file's workers changed, so it wins over the runtime scale to %u", m->scaled);
                m->scaled = 0;
        }
        /* The new slots plus one replacement per max_surge, at worst. */
        if (manager_fd_room(m, target + c->reload_max_surge, &max, &open) < 0) {
                LogFields f = event(m, "reload_failed");
                m->reload_failed = true;
                m->reloads_failed++;
                log_emit(LOG_ERR, &f, "reload failed, nothing changed: %u workers do not fit in the open-file limit "
                         "of %u (%u open)", target, max, open);
                if (client)
                        control_reply_error(client, "%u workers do not fit in the open-file limit of %u (%u open); "
                                            "raise LimitNOFILE=", target, max, open);
                return;
        }
        Rollout *ro = rollout_new(ROLLOUT_RELOAD, ++m->rollout_serial, MAX(target, m->n_slots), &control_reply_ops,
                                  client, now_usec());
        if (!ro) {
                if (client)
                        control_reply_error(client, "out of memory");
                return;
        }
        preempt_recycle(m);
        if (listen_changed(m, c))
                snprintf(ro->note, sizeof(ro->note), "listen changes take effect only when corrald restarts");
        else if (c->balance != m->start_config->balance)
                snprintf(ro->note, sizeof(ro->note), "balance changes take effect only when corrald restarts");
        ro->old_config = config_ref(m->pool.config);
        ro->old_generation = m->pool.generation;
        ro->old_workers = m->n_slots;
        ro->target_workers = target;
        /* New restart policy, and a reload is a fresh start after giving up. */
        (void) pool_set_config(&m->pool, TAKE_PTR(c), m->pool.generation + 1);
        config_changed(m);

        (void) sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=Reloading: generation %u",
                          (unsigned long long) now_usec(), m->pool.generation);
        LogFields f = event(m, "reload_begin");
        log_emit(LOG_INFO, &f, "reload: generation %u, %u -> %u worker%s", m->pool.generation, m->n_slots, target,
                 plural(target));

        /* Slots that stay are replaced; new ones get their first worker
         * the same way, so a broken release that adds workers fails the
         * reload instead of crash-looping into a give-up. Surplus slots
         * go once the plan is done. */
        unsigned have = grow_slots(m, target);
        m->n_unstarted = 0;
        for (unsigned i = 0; i < MIN(have, target); i++)
                rollout_enqueue(ro, m->slots[i]);
        rollout_progress(ro, "generation %u: starting %u worker%s, at most %u at a time", m->pool.generation,
                         ro->n_queue, plural(ro->n_queue), manager_config(m)->reload_max_surge);
        start_plan(m, ro);
}

void manager_restart(Manager *m, int slot, ControlConn *client) {
        if (refuse_busy(m, client, "restart"))
                return;
        if (slot >= 0 && (unsigned) slot >= m->n_slots) {
                if (client)
                        control_reply_error(client, "no slot %d (there are %u workers)", slot, m->n_slots);
                return;
        }
        Rollout *r = rollout_new(ROLLOUT_RESTART, ++m->rollout_serial, m->n_slots, &control_reply_ops, client,
                                 now_usec());
        if (!r) {
                if (client)
                        control_reply_error(client, "out of memory");
                return;
        }
        preempt_recycle(m);
        for (unsigned i = 0; i < m->n_slots; i++)
                if (slot < 0 || i == (unsigned) slot)
                        rollout_enqueue(r, m->slots[i]);
        rollout_progress(r, "replacing %u worker%s, at most %u at a time", r->n_queue, plural(r->n_queue),
                         manager_config(m)->reload_max_surge);
        start_plan(m, r);
}

/* ---- outcomes ----------------------------------------------------------- */

static void on_gave_up(Manager *m, const Outcome *o) {
        const Config *c = manager_config(m);
        LogFields f = LOG_FIELDS_NONE;
        f.event = "giveup";
        f.worker_id = (int) o->slot_id;
        f.pid = o->pid;
        f.generation = o->generation;
        log_emit(LOG_CRIT, &f, "giving up: %s (last: %s); restart.on_giveup is %s", m->pool.giveup_reason, o->what,
                 c->on_giveup == GIVEUP_EXIT ? "exit" : "stay");
        if (c->on_giveup == GIVEUP_EXIT)
                manager_stop(m, 1);
}

static void on_outcome(Manager *m, Outcome *o) {
        switch (o->kind) {
        case OUTCOME_GAVE_UP:
                on_gave_up(m, o);
                break;
        case OUTCOME_EXEC_FAILED:
                /* Like systemd's 203/EXEC: a binary that cannot run is a
                 * configuration error, not a crash to retry. At start it
                 * ends the instance; in a plan it fails the plan (the
                 * REPLACE_FAILED outcome that follows). */
                if (!m->sent_ready && !m->rollout && !m->pool.stopping) {
                        log_error("%s; exiting", o->what);
                        manager_stop(m, 1);
                }
                break;
        case OUTCOME_EMPTIED:
                slot_free(o->slot);
                break;
        case OUTCOME_REPLACED:
        case OUTCOME_REPLACE_FAILED:
                if (m->rollout)
                        plan_result(m, rollout_on_outcome(m->rollout, o, m->slots, m->n_slots,
                                                          manager_config(m)->reload_max_surge));
                break;
        }
}

/* The pool's earliest deadline changed: fire the timer then. */
static void on_deadline(uv_timer_t *t);

static void arm_deadline(Manager *m) {
        uint64_t due = m->pool.earliest;
        if (m->closed || due == m->deadline_armed)
                return;
        m->deadline_armed = due;
        if (!due) {
                uv_timer_stop(&m->deadline);
                return;
        }
        uint64_t now = now_usec();
        uint64_t ms = due > now ? (due - now + USEC_PER_MSEC - 1) / USEC_PER_MSEC : 0;
        if (uv_timer_start(&m->deadline, on_deadline, ms, 0) < 0)
                log_error("cannot arm the deadline timer");
}

static void on_deadline(uv_timer_t *t) {
        Manager *m = t->data;
        m->deadline_armed = 0;
        (void) pool_on_time(&m->pool, now_usec());
}

/* Start a one-slot recycle plan for slot i. */
static void recycle_slot(Manager *m, unsigned i) {
        Rollout *r = rollout_new(ROLLOUT_RECYCLE, ++m->rollout_serial, 1, &control_reply_ops, NULL, now_usec());
        if (!r)
                return;
        m->recycle_next = i + 1;
        rollout_enqueue(r, m->slots[i]);
        start_plan(m, r);
}

/* recycle.max_requests: a worker that was handed that many connections is
 * replaced gracefully, one slot at a time, like an RSS recycle. */
static void check_max_requests(Manager *m) {
        uint64_t max = manager_config(m)->recycle_max_requests;
        if (!m->handoff.recycle_due || m->rollout || m->pool.stopping)
                return;
        m->handoff.recycle_due = false;
        for (unsigned k = 0; k < m->n_slots; k++) {
                unsigned i = (m->recycle_next + k) % m->n_slots;
                Worker *w = slot_ready_worker(m->slots[i]);
                if (!w || !max || w->handed < max || slot_state(m->slots[i]) != SLOT_READY)
                        continue;
                LogFields f = LOG_FIELDS_NONE;
                f.worker_id = (int) w->id;
                f.pid = w->pid;
                f.generation = w->generation;
                log_emit(LOG_INFO, &f, "recycling %s: %llu connections handed to it (recycle.max_requests=%llu)",
                         w->who, (unsigned long long) w->handed, (unsigned long long) max);
                m->handoff.recycle_due = true;   /* look again for the others once this one is done */
                recycle_slot(m, i);
                return;
        }
}

/* Once per loop iteration, before the loop blocks. */
static void on_prepare(uv_prepare_t *h) {
        Manager *m = h->data;
        Outcome *o;

        if (m->closed)
                return;
        start_batch(m);
        while ((o = pool_pop_outcome(&m->pool))) {
                on_outcome(m, o);
                free(o);
        }
        if (m->handoff.started && !m->pool.stopping) {
                check_max_requests(m);
                /* Held connections go to a worker that became ready: only
                 * after a slot event (else the retry timer offers them). */
                if (m->pool.changed)
                        handoff_kick(&m->handoff);
        }
        if (m->pool.stopping && m->pool.n_workers == 0 && !m->pool.slots) {
                manager_close(m);
                return;
        }
        /* Only slot events change what STATUS= says; with hand-off the loop
         * turns once per batch of connections, so skip the recount then. */
        if (m->pool.changed) {
                m->pool.changed = false;
                update_status(m);
        }
        arm_deadline(m);
}

/* ---- stop --------------------------------------------------------------- */

void manager_stop(Manager *m, int exit_code) {
        if (m->pool.stopping)
                return;
        m->pool.stopping = true;
        m->exit_code = exit_code;
        if (m->rollout)
                m->rollout = rollout_abort(m->rollout, "corrald is stopping");
        LogFields f = event(m, "stop");
        log_emit(LOG_INFO, &f, "stopping %u worker%s", m->pool.n_workers, plural(m->pool.n_workers));
        (void) sd_notify(0, "STOPPING=1");
        if (m->upgrade && m->upgrade->cancel)
                m->upgrade->cancel(m);
        uv_timer_stop(&m->recycle);
        handoff_stop(&m->handoff);
        messages_unfollow_all(&m->messages);
        shrink_slots(m, 0);
}

/* ---- signals ------------------------------------------------------------ */

static void on_sigchld(uv_signal_t *h, int signum) {
        manager_reap(h->data);
}

void manager_reap(Manager *m) {
        /* Read what workers said before they died: READY=1 or STOPPING=1
         * sent just before exiting must be seen before the exit. */
        notify_server_drain(&m->notify);

        /* Reap only our own workers, by pid; never waitpid(-1). */
        LIST_FOREACH(all, w, m->pool.workers) {
                int st;
                if (w->pid <= 0)
                        continue;
                if (waitpid(w->pid, &st, WNOHANG) == w->pid)
                        slot_dispatch(w->slot, SLOT_EV_EXIT, w, st);
        }
        if (m->upgrade && m->upgrade->reap)
                m->upgrade->reap();

        /* As PID 1 or a subreaper, the orphans of workers' children are
         * ours too: reap them quietly. A worker that exited since the loop
         * above goes through the lifecycle as usual. */
        if (!m->overrides || !m->overrides->subreaper)
                return;
        for (;;) {
                int st;
                pid_t pid = waitpid(-1, &st, WNOHANG);
                if (pid <= 0)
                        break;
                Worker *w = pool_find_worker(&m->pool, pid);
                if (w)
                        slot_dispatch(w->slot, SLOT_EV_EXIT, w, st);
                else
                        m->orphans_reaped++;
        }
}

static void on_sigterm(uv_signal_t *h, int signum) {
        Manager *m = h->data;
        log_info("received %s", signal_to_string(signum));
        manager_stop(m, 0);
}

/* SIGHUP and the control socket's "reload" share one code path. */
static void on_sighup(uv_signal_t *h, int signum) {
        Manager *m = h->data;
        log_info("received SIGHUP: reloading");
        manager_reload(m, NULL);
}

/* SIGTTIN adds a worker, SIGTTOU removes one (never the last). */
static void on_sigttin(uv_signal_t *h, int signum) {
        Manager *m = h->data;
        unsigned n = signum == SIGTTIN ? m->n_slots + 1 : m->n_slots - 1;
        if (signum == SIGTTIN && m->n_slots >= CORRAL_WORKERS_MAX)
                log_warning("SIGTTIN ignored: already at the maximum of %u workers", CORRAL_WORKERS_MAX);
        else if (signum == SIGTTOU && m->n_slots <= 1)
                log_warning("SIGTTOU ignored: the last worker stays");
        else {
                int r = manager_scale(m, n);
                if (r == -EBUSY)
                        log_warning("%s ignored: a reload or restart is in progress", signal_to_string(signum));
                else if (r == -EMFILE)
                        log_warning("%s ignored: another worker would not fit in the open-file limit",
                                    signal_to_string(signum));
        }
}

static void on_sigusr2(uv_signal_t *h, int signum) {
        Manager *m = h->data;
        if (!m->upgrade || !m->upgrade->request)
                return;
        log_info("received SIGUSR2: upgrading in place");
        m->upgrade->request(m, NULL);
}

/* Every signal the manager handles, once: m->handled_signals, which the
 * upgrade blocks across execve(), is built from it. */
static const struct {
        int signum;
        uv_signal_cb cb;
} signal_table[MANAGER_N_SIGNALS] = {
        { SIGCHLD, on_sigchld }, { SIGTERM, on_sigterm }, { SIGINT, on_sigterm },  { SIGHUP, on_sighup },
        { SIGTTIN, on_sigttin }, { SIGTTOU, on_sigttin }, { SIGUSR2, on_sigusr2 },
};


static void recycle_slot(Manager *m, unsigned i);

/* Whether the ready worker w is due for recycling under recycle.max_age_ms
 * or (when check_rss) recycle.max_rss_mb: the priority to log it at, with
 * the reason in why; or -1. */
static int recycle_reason(const Config *c, const Worker *w, uint64_t now, bool check_rss, char *why, size_t n) {
        if (c->recycle_max_age_ms > 0) {
                uint64_t max_usec = c->recycle_max_age_ms * USEC_PER_MSEC;
                /* The pid and the start time together, so that a pid the
                 * kernel reuses draws anew. */
                uint64_t seed = (uint64_t) w->pid ^ w->start_usec;
                if (now >= recycle_age_deadline(w->start_usec, max_usec, seed)) {
                        snprintf(why, n, "%llu ms old, recycle.max_age_ms=%llu",
                                 (unsigned long long) ((now - w->start_usec) / USEC_PER_MSEC),
                                 (unsigned long long) c->recycle_max_age_ms);
                        return LOG_INFO;
                }
        }
        ProcStats ps;
        if (check_rss && c->recycle_max_rss_mb > 0 && procfs_read_stats(w->pid, &ps) >= 0 &&
            ps.rss_kb > c->recycle_max_rss_mb * 1024) {
                snprintf(why, n, "RSS %llu MiB exceeds recycle.max_rss_mb=%llu",
                         (unsigned long long) (ps.rss_kb / 1024), (unsigned long long) c->recycle_max_rss_mb);
                return LOG_NOTICE;
        }
        return -1;
}

/* recycle.max_age_ms and recycle.max_rss_mb: a ready worker past either
 * limit gets a replacement started beside it and is stopped once that one
 * is ready — a one-slot plan; nothing happens while another plan runs, so
 * two slots are never recycled at once. (recycle.max_requests takes the
 * same path from check_max_requests().) */
static void on_recycle_check(uv_timer_t *t) {
        Manager *m = t->data;
        const Config *c = manager_config(m);
        uint64_t now = now_usec();

        if (m->pool.stopping || m->rollout || now < m->recycle_pause_until)
                return;
        /* The timer may tick faster than once a second for a short
         * max_age_ms; RSS is read from /proc for every worker, so that
         * stays at once a second. */
        bool check_rss = now >= m->recycle_rss_usec + USEC_PER_SEC;
        if (check_rss)
                m->recycle_rss_usec = now;
        /* Round the slots from where the last recycle was, so one slot
         * that is always over the limit does not starve the others. */
        for (unsigned k = 0; k < m->n_slots; k++) {
                unsigned i = (m->recycle_next + k) % m->n_slots;
                Worker *w = slot_ready_worker(m->slots[i]);
                char why[128];
                int prio;
                if (!w || slot_state(m->slots[i]) != SLOT_READY ||
                    (prio = recycle_reason(c, w, now, check_rss, why, sizeof(why))) < 0)
                        continue;
                LogFields f = LOG_FIELDS_NONE;
                f.worker_id = (int) w->id;
                f.pid = w->pid;
                f.generation = w->generation;
                log_emit(prio, &f, "recycling %s: %s", w->who, why);
                recycle_slot(m, i);
                return;
        }
}

/* Called at start and whenever the configuration changes (a reload, and
 * its failure restoring the old one). The checks run once a second, or at
 * a tenth of recycle.max_age_ms when that is shorter, so that a worker is
 * replaced within its jitter window (recycle_age_deadline()). */
static void arm_recycle(Manager *m) {
        const Config *c = manager_config(m);
        uint64_t ms = c->recycle_max_age_ms > 0 ? MIN(1000, c->recycle_max_age_ms / 10) : 1000;
        if ((c->recycle_max_rss_mb > 0 || c->recycle_max_age_ms > 0) && !m->pool.stopping)
                uv_timer_start(&m->recycle, on_recycle_check, ms, ms);
        else
                uv_timer_stop(&m->recycle);
}

static void on_watchdog(uv_timer_t *t) {
        (void) sd_notify(0, "WATCHDOG=1");
}

static void on_notify(void *userdata, pid_t pid, const NotifyMsg *msg) {
        Manager *m = userdata;
        Worker *w = pool_find_worker(&m->pool, pid);

        /* A direct child of a worker speaks for it: that is how
         * `systemd-notify --ready` in a shell worker reaches us (it waits on
         * BARRIER=1, so it is still alive while we look it up). */
        pid_t ppid;
        if (!w && procfs_read_ppid(pid, &ppid) >= 0)
                w = pool_find_worker(&m->pool, ppid);
        if (!w) {
                log_debug("notify socket: ignored a message from pid %d, which is not a current worker", (int) pid);
                m->notify.n_dropped++;
                return;
        }
        slot_on_notify(w, msg);
}

/* ---- start and end ------------------------------------------------------ */

static void close_handle(uv_handle_t *h) {
        if (!uv_is_closing(h))
                uv_close(h, NULL);
}

void manager_close(Manager *m) {
        if (m->closed)
                return;
        m->closed = true;
        uv_handle_t *handles[] = {
                (uv_handle_t *) &m->watchdog, (uv_handle_t *) &m->recycle, (uv_handle_t *) &m->deadline,
                (uv_handle_t *) &m->prepare,  (uv_handle_t *) &m->busy,
        };
        for (size_t i = 0; i < ELEMENTSOF(m->signals); i++)
                close_handle((uv_handle_t *) &m->signals[i]);
        for (size_t i = 0; i < ELEMENTSOF(handles); i++)
                close_handle(handles[i]);
        notify_server_stop(&m->notify);
        control_server_stop(&m->control);
        handoff_stop(&m->handoff);
        closer_stop();
}

int manager_init(Manager *m, uv_loop_t *loop, Config *config, const ConfigOverrides *o,
                 const ManagerUpgradeOps *upgrade) {
        *m = (Manager) { .loop = loop, .overrides = o, .start_usec = now_usec(), .exec_usec = now_usec(),
                         .notify.fd = -EBADF, .start_config = config_ref(config), .upgrade = upgrade };
        messages_init(&m->messages);
        m->host = (Host) { .loop = loop, .listeners = &m->listeners, .notify = &m->notify,
                           .handoff = &m->handoff, .messages = &m->messages };

        /* Every handle exists from here on, so manager_close() is safe
         * whatever fails below. */
        sigemptyset(&m->handled_signals);
        for (size_t i = 0; i < ELEMENTSOF(m->signals); i++) {
                uv_signal_init(loop, &m->signals[i]);
                m->signals[i].data = m;
                sigaddset(&m->handled_signals, signal_table[i].signum);
        }
        uv_timer_t *timers[] = { &m->watchdog, &m->recycle, &m->deadline };
        for (size_t i = 0; i < ELEMENTSOF(timers); i++) {
                uv_timer_init(loop, timers[i]);
                timers[i]->data = m;
        }
        uv_prepare_init(loop, &m->prepare);
        m->prepare.data = m;
        uv_idle_init(loop, &m->busy);

        int r = pool_init(&m->pool, &host_slot_ops, &m->host, now_usec, config);
        if (r < 0)
                return log_error_errno(r, "cannot allocate the failure window: %m");
        return 0;
}

int manager_start(Manager *m, ControlHandler commands, bool adopted, int notify_fd, int control_fd) {
        const Config *config = manager_config(m);
        uv_loop_t *loop = m->loop;
        char *error = NULL;
        int r;

        r = adopted || m->listeners.n > 0 ? 0 : listener_set_acquire(&m->listeners, config, &error);
        if (r < 0) {
                log_error("%s", error ? error : "out of memory");
                free(error);
                return r;
        }
        for (unsigned i = 0; i < m->listeners.n; i++)
                log_info("listening on %s (%s)%s", m->listeners.items[i].display, m->listeners.items[i].name,
                         m->listeners.activated ? ", from systemd" : "");
        if (m->listeners.n == 0)
                log_info("no listening sockets: workers start without LISTEN_FDS");
        if (config->balance != BALANCE_SHARED) {
                handoff_set_slots(&m->handoff, m->slots, m->n_slots, config);
                r = handoff_start(&m->handoff, loop, &m->listeners);
                if (r < 0)
                        return r;
                log_info("balance %s: corrald accepts and hands each connection to a worker",
                         balance_to_string(config->balance));
        }

        _cleanup_free_ char *control = control_socket_path(config->control, config->name);
        if (!control)
                log_notice("no control socket: set XDG_RUNTIME_DIR or --control to use corralctl");
        else if (control_fd >= 0 && (r = control_server_adopt(&m->control, loop, control_fd, control,
                                                                commands, m)) < 0)
                return r;
        else if (control_fd < 0 && (r = control_server_start(&m->control, loop, control, commands, m)) < 0)
                return r;

        /* After the control socket: the notify socket goes in its
         * directory, which control_server_start() made and checked. */
        r = notify_fd >= 0 ? notify_server_adopt(&m->notify, loop, notify_fd, on_notify, m)
                           : notify_server_start(&m->notify, loop, control, on_notify, m);
        if (r < 0 && notify_fd >= 0)
                return log_error_errno(r, "cannot adopt the notify socket: %m");
        if (r < 0)
                return r;       /* logged */

        for (size_t i = 0; i < ELEMENTSOF(signal_table); i++)
                uv_signal_start(&m->signals[i], signal_table[i].cb, signal_table[i].signum);
        uv_prepare_start(&m->prepare, on_prepare);

        if (sd_watchdog_enabled(0, &m->watchdog_usec) > 0 && m->watchdog_usec > 0) {
                uint64_t ms = MAX(m->watchdog_usec / 2 / USEC_PER_MSEC, 1);
                log_info("systemd watchdog enabled: pinging every %llu ms", (unsigned long long) ms);
                uv_timer_start(&m->watchdog, on_watchdog, ms, ms);
        }
        arm_recycle(m);
        return 0;
}

int manager_start_workers(Manager *m) {
        const Config *config = manager_config(m);
        unsigned n = config_worker_count(config), max, open;
        if (manager_fd_room(m, n, &max, &open) < 0) {
                log_error("%u workers do not fit in the open-file limit of %u (%u open, %u per worker, %d spare); "
                          "raise LimitNOFILE= or lower workers", n, max, open, manager_fds_per_worker(m),
                          SCALE_FD_RESERVE);
                return -EMFILE;
        }
        log_info("starting %u worker%s: %s", n, plural(n), config->exec[0]);
        set_slot_count(m, n);
        return 0;
}

void manager_done(Manager *m) {
        /* Slots left after a failed start (nothing ran) or a close. */
        while (m->pool.slots)
                slot_free(m->pool.slots);
        free(m->slots);
        listener_set_done(&m->listeners);
        config_unref(m->start_config);
        messages_done(&m->messages);
        pool_done(&m->pool);
}
