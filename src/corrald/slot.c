/* slot: the worker lifecycle (SPEC §4) as one state machine.
 *
 * Worker states: STARTING → READY → STOPPING → (exited). A slot's state is
 * its current worker's, or BACKOFF (waiting to respawn) or FAILED (given
 * up). Every transition happens in this file; each state has at most one
 * deadline, kept in the worker's single timer:
 *
 *   STARTING  ready.timeout_ms  → SIGKILL, counts as a failure
 *   READY     watchdog_ms       → SIGABRT, then STOPPING's deadline
 *   STOPPING  stop.timeout_ms   → SIGKILL to the worker's process group
 *
 * Whether an exit is a failure is decided in one place, worker_on_exit():
 * it is expected when we asked the worker to stop, or when it announced
 * STOPPING=1 and then exited 0; anything else — including a worker we
 * killed for a timeout — is a failure, which goes through the instance's
 * rate limit and the slot's backoff. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "fd-util.h"
#include "log.h"
#include "manager.h"
#include "rollout.h"
#include "spawn.h"
#include "util.h"

static const char * const worker_state_table[_WORKER_STATE_MAX] = {
        [WORKER_STARTING] = "starting",
        [WORKER_READY] = "ready",
        [WORKER_STOPPING] = "stopping",
};

static const char * const slot_state_table[_SLOT_STATE_MAX] = {
        [SLOT_STARTING] = "starting",
        [SLOT_READY] = "ready",
        [SLOT_STOPPING] = "stopping",
        [SLOT_BACKOFF] = "backoff",
        [SLOT_FAILED] = "failed",
};

const char *worker_state_to_string(WorkerState s) {
        return s < _WORKER_STATE_MAX ? worker_state_table[s] : "?";
}

const char *slot_state_to_string(SlotState s) {
        return s < _SLOT_STATE_MAX ? slot_state_table[s] : "?";
}

SlotState slot_state(const Slot *s) {
        if (s->current)
                return (SlotState) s->current->state;   /* the first three states coincide */
        return s->failed ? SLOT_FAILED : SLOT_BACKOFF;
}

static LogFields worker_fields(const Worker *w, const char *event) {
        return (LogFields) {
                .event = event,
                .worker_id = (int) w->id,
                .pid = w->pid,
                .generation = w->generation,
                .exit_status = -1,
        };
}

/* ---- worker object ------------------------------------------------------ */

static void worker_unlink_and_free(Worker *w) {
        Manager *m = w->manager;
        if (w->prev)
                w->prev->next = w->next;
        else
                m->workers = w->next;
        if (w->next)
                w->next->prev = w->prev;
        m->n_workers--;
        config_unref(w->config);
        free(w);
        manager_update(m);
}

static void on_handle_closed(uv_handle_t *h) {
        Worker *w = h->data;
        if (--w->n_handles == 0)
                worker_unlink_and_free(w);
}

static void on_ipc_closed(Ipc *ipc) {
        Worker *w = ipc->userdata;
        if (--w->n_handles == 0)
                worker_unlink_and_free(w);
}

static void on_output_closed(Output *o) {
        Worker *w = o->userdata;
        if (--w->n_handles == 0)
                worker_unlink_and_free(w);
}

/* Close the worker's handles; it is freed when the last close completes. */
static void worker_release(Worker *w) {
        uv_timer_stop(&w->timer);
        uv_close((uv_handle_t *) &w->timer, on_handle_closed);
        ipc_close(&w->ipc);
        output_close(&w->output);
}

static void on_ipc_line(Ipc *ipc, const char *json) {
        Worker *w = ipc->userdata;
        LogFields f = worker_fields(w, NULL);
        log_emit(LOG_INFO, &f, "%s message: %s", w->who, json);
}

static void worker_arm(Worker *w, uint64_t ms, uv_timer_cb cb) {
        uv_timer_stop(&w->timer);
        if (ms > 0)
                uv_timer_start(&w->timer, cb, ms, 0);
}

static void detach(Worker *w) {
        if (w->slot && w->slot->current == w)
                w->slot->current = NULL;
        if (w->slot && w->slot->incoming == w)
                w->slot->incoming = NULL;
        w->slot = NULL;
}

static bool is_incoming(const Worker *w) {
        return w->slot && w->slot->incoming == w;
}

/* ---- deadlines ---------------------------------------------------------- */

static void on_stop_timeout(uv_timer_t *t) {
        Worker *w = t->data;
        LogFields f = worker_fields(w, NULL);
        log_emit(LOG_WARNING, &f, "%s did not exit within %llu ms; sending SIGKILL", w->who,
                 (unsigned long long) w->config->stop_timeout_ms);
        /* The whole group: a worker that is a shell wrapper must not leave
         * its children behind. */
        (void) kill(-w->pid, SIGKILL);
        (void) kill(w->pid, SIGKILL);
}

static void enter_stopping(Worker *w) {
        w->state = WORKER_STOPPING;
        worker_arm(w, w->config->stop_timeout_ms, on_stop_timeout);
}

static void on_ready_timeout(uv_timer_t *t) {
        Worker *w = t->data;
        LogFields f = worker_fields(w, "ready");
        w->failure = "did not become ready in time";
        log_emit(LOG_WARNING, &f, "%s did not send READY=1 within %llu ms; killing it", w->who,
                 (unsigned long long) w->config->ready_timeout_ms);
        (void) kill(w->pid, SIGKILL);
}

static void watchdog_fire(Worker *w, const char *why) {
        LogFields f = worker_fields(w, "watchdog");
        w->failure = why;
        log_emit(LOG_WARNING, &f, "%s %s; sending SIGABRT", w->who, why);
        (void) kill(w->pid, SIGABRT);
        enter_stopping(w);
}

static void on_watchdog_timeout(uv_timer_t *t) {
        watchdog_fire(t->data, "sent no WATCHDOG=1 within watchdog_ms");
}

/* ---- transitions -------------------------------------------------------- */

static void become_ready(Worker *w) {
        LogFields f = worker_fields(w, "ready");
        w->state = WORKER_READY;
        w->ready_usec = now_usec();
        worker_arm(w, w->config->watchdog_ms, on_watchdog_timeout);
        log_emit(LOG_INFO, &f, "%s is ready (%.1f ms after spawn)", w->who,
                 (double) (w->ready_usec - w->start_usec) / 1000.0);
        if (is_incoming(w))
                rollout_on_ready(w->manager, w);
        manager_update(w->manager);
}

static void schedule_respawn(Slot *s);

static Worker *worker_spawn(Slot *s) {
        Manager *m = s->manager;
        Config *c = m->config;
        int fds[m->listeners.n + 1];
        int pair[2];
        int out_r = -EBADF, out_w = -EBADF;
        const char *stage;

        for (unsigned i = 0; i < m->listeners.n; i++)
                fds[i] = m->listeners.items[i].fd;

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == -1) {
                log_error("slot %u: cannot create IPC socket pair: %m", s->id);
                return NULL;
        }
        /* Worker output (SPEC §8): journald streams the child opens itself,
         * or in stderr mode a pipe we read; without one, it inherits ours. */
        bool piped = log_get_target() == LOG_TARGET_STDERR && output_pipe(&out_r, &out_w) >= 0;

        SpawnParams p = {
                .argv = c->exec,
                .cwd = c->cwd,
                .extra_env = c->env,
                .listen_fds = fds,
                .n_listen = m->listeners.n,
                .fdnames = m->listeners.fdnames,
                .notify_socket = m->notify.path,
                .ipc_fd = pair[1],
                .instance = c->name,
                .worker_id = s->id,
                .generation = m->generation,
                .watchdog_usec = c->watchdog_ms * USEC_PER_MSEC,
                .output = piped ? SPAWN_OUTPUT_FD
                          : log_get_target() == LOG_TARGET_JOURNAL ? SPAWN_OUTPUT_JOURNAL : SPAWN_OUTPUT_INHERIT,
                .syslog_identifier = c->name,
                .output_fd = out_w,
        };
        pid_t pid = spawn_worker(&p, &stage);
        safe_close(pair[1]);
        safe_close(out_w);
        if (pid < 0) {
                LogFields f = { .event = "spawn", .worker_id = (int) s->id, .generation = m->generation,
                                .exit_status = -1 };
                errno = (int) -pid;
                log_emit(LOG_ERR, &f, "slot %u: cannot start %s: %s failed: %m", s->id, c->exec[0], stage);
                safe_close(pair[0]);
                safe_close(out_r);
                return NULL;
        }

        Worker *w = calloc(1, sizeof(Worker));
        if (!w) {
                /* Cannot track it: make sure it does not outlive us untracked. */
                (void) kill(pid, SIGKILL);
                safe_close(pair[0]);
                safe_close(out_r);
                log_error("slot %u: out of memory", s->id);
                return NULL;
        }
        *w = (Worker) {
                .manager = m,
                .slot = s,
                .config = config_ref(c),
                .id = s->id,
                .generation = m->generation,
                .pid = pid,
                .state = WORKER_STARTING,
                .start_usec = now_usec(),
                .next = m->workers,
        };
        snprintf(w->who, sizeof(w->who), "worker %u (pid %d)", s->id, (int) pid);
        if (m->workers)
                m->workers->prev = w;
        m->workers = w;
        m->n_workers++;

        uv_timer_init(m->loop, &w->timer);
        w->timer.data = w;
        w->n_handles = 1;
        w->ipc = (Ipc) { .on_line = on_ipc_line, .on_close = on_ipc_closed, .who = w->who, .userdata = w };
        if (ipc_start(&w->ipc, m->loop, pair[0]) >= 0)
                w->n_handles++;
        else
                log_warning("%s: cannot watch its IPC channel", w->who);
        w->output = (Output) { .on_close = on_output_closed, .userdata = w };
        if (piped) {
                if (output_start(&w->output, m->loop, out_r, c->name, s->id, pid) >= 0)
                        w->n_handles++;
                else
                        log_warning("%s: cannot read its output", w->who);
        }

        LogFields f = worker_fields(w, "spawn");
        log_emit(LOG_INFO, &f, "%s started, generation %u", w->who, w->generation);
        return w;
}

void slot_spawn(Slot *s) {
        Manager *m = s->manager;

        s->backoff_armed = false;
        uv_timer_stop(&s->backoff);
        /* A slot whose replacement is starting gets it as its worker. */
        if (m->stopping || s->failed || s->current || s->incoming)
                return;

        Worker *w = worker_spawn(s);
        if (!w) {
                if (!manager_record_failure(m, NULL, "spawn failed"))
                        schedule_respawn(s);
                else
                        s->failed = true;
                manager_update(m);
                return;
        }
        s->current = w;
        if (w->config->ready_mode == READY_SPAWN)
                become_ready(w);
        else
                worker_arm(w, w->config->ready_timeout_ms, on_ready_timeout);
        manager_update(m);
}

static void on_spawn_ready(uv_timer_t *t) {
        become_ready(t->data);
}

Worker *slot_spawn_incoming(Slot *s) {
        Worker *w = worker_spawn(s);
        if (!w)
                return NULL;
        s->incoming = w;
        /* ready.mode=spawn: ready on the next loop iteration, so the
         * rollout never re-enters itself from its own spawn call. */
        if (w->config->ready_mode == READY_SPAWN)
                uv_timer_start(&w->timer, on_spawn_ready, 0, 0);
        else
                worker_arm(w, w->config->ready_timeout_ms, on_ready_timeout);
        manager_update(s->manager);
        return w;
}

static void on_backoff_done(uv_timer_t *t) {
        slot_spawn(t->data);
}

static void schedule_respawn(Slot *s) {
        const Config *c = s->manager->config;
        s->consecutive_failures++;
        uint64_t delay = backoff_delay_ms(c->backoff_min_ms, c->backoff_max_ms, s->consecutive_failures);
        log_debug("slot %u: respawning in %llu ms (failure %u in a row)", s->id, (unsigned long long) delay,
                  s->consecutive_failures);
        s->backoff_armed = true;
        uv_timer_start(&s->backoff, on_backoff_done, delay, 0);
}

/* A slot whose replacement went away: if nothing else will give it a
 * worker (no current one, no respawn pending, no rollout to refill it),
 * schedule one through the slot's backoff. */
static void refill(Slot *s) {
        Manager *m = s->manager;
        if (!s->current && !s->incoming && !s->backoff_armed && !s->failed && !m->stopping && !m->rollout)
                schedule_respawn(s);
}

void worker_stop(Worker *w) {
        detach(w);
        if (w->stop_sent)
                return;
        w->stop_sent = true;
        LogFields f = worker_fields(w, "stop");
        log_emit(LOG_INFO, &f, "stopping %s with %s", w->who, signal_to_string(w->config->stop_signal));
        (void) kill(w->pid, w->config->stop_signal);
        /* Like systemd: a stopped process cannot act on the signal. */
        (void) kill(w->pid, SIGCONT);
        if (w->state != WORKER_STOPPING || !w->failure)
                enter_stopping(w);
        manager_update(w->manager);
}

static void on_stopping_announced(Worker *w) {
        Manager *m = w->manager;
        Slot *s = w->slot;
        bool incoming = is_incoming(w), was_ready = w->state == WORKER_READY;
        LogFields f = worker_fields(w, "stop");

        if (w->said_stopping || w->stop_sent)
                return;
        w->said_stopping = true;
        log_emit(LOG_INFO, &f, "%s announced STOPPING=1; %s", w->who,
                 incoming ? "it was a replacement that never became ready" : "starting its replacement");
        detach(w);
        enter_stopping(w);
        if (incoming) {
                /* A replacement leaving before it is ready is a release that
                 * does not work: fail its rollout (or recycle). */
                rollout_on_incoming_failed(m, w, "sent STOPPING=1 before it was ready");
                if (s)
                        refill(s);
        } else if (s && was_ready)
                slot_spawn(s);
        else if (s)
                /* Leaving before it was ever ready: respawn through the
                 * slot's backoff, or such a worker would be restarted in a
                 * tight loop. Its exit is still not counted as a failure. */
                schedule_respawn(s);
        manager_update(m);
}

void worker_on_notify(Worker *w, const NotifyMsg *msg) {
        if (msg->has_status)
                snprintf(w->status, sizeof(w->status), "%s", msg->status);
        if (msg->errno_value >= 0) {
                LogFields f = worker_fields(w, NULL);
                errno = msg->errno_value;
                log_emit(LOG_NOTICE, &f, "%s reports ERRNO=%d (%m)", w->who, msg->errno_value);
        }
        if (msg->ready && w->state == WORKER_STARTING)
                become_ready(w);
        if (msg->watchdog && w->state == WORKER_READY && w->config->watchdog_ms > 0)
                worker_arm(w, w->config->watchdog_ms, on_watchdog_timeout);
        if (msg->watchdog_trigger && w->state != WORKER_STOPPING)
                watchdog_fire(w, "asked for its watchdog to fire (WATCHDOG=trigger)");
        if (msg->stopping)
                on_stopping_announced(w);
}

static void describe_exit(int st, char *buf, size_t n, int *ret_code, int *ret_sig) {
        *ret_code = -1;
        *ret_sig = 0;
        if (WIFEXITED(st)) {
                *ret_code = WEXITSTATUS(st);
                snprintf(buf, n, "exited with status %d", *ret_code);
        } else if (WIFSIGNALED(st)) {
                *ret_sig = WTERMSIG(st);
                snprintf(buf, n, "was killed by %s%s", signal_to_string(*ret_sig),
                         WCOREDUMP(st) ? " (core dumped)" : "");
        } else
                snprintf(buf, n, "ended with wait status 0x%x", st);
}

void worker_on_exit(Worker *w, int st) {
        Manager *m = w->manager;
        Slot *s = w->slot;
        char how[80];
        int code, sig;

        describe_exit(st, how, sizeof(how), &code, &sig);
        bool clean = code == 0;
        bool expected = !w->failure && (w->stop_sent || (w->said_stopping && clean));
        bool incoming = is_incoming(w);

        LogFields f = worker_fields(w, "exit");
        f.exit_status = code;
        f.signal = sig;
        if (expected)
                log_emit(LOG_INFO, &f, "%s %s", w->who, how);
        else if (w->failure)
                log_emit(LOG_WARNING, &f, "%s %s after it %s", w->who, how, w->failure);
        else
                log_emit(LOG_WARNING, &f, "%s %s unexpectedly", w->who, how);

        w->pid = -w->pid;   /* reaped: never signal this pid again */
        detach(w);

        if (incoming) {
                /* A replacement that dies before it is ready fails its
                 * rollout; the slot keeps its old worker, and a broken
                 * release does not count towards giving up. */
                if (!expected)
                        rollout_on_incoming_failed(m, w, how);
                if (s)
                        refill(s);
        } else if (!expected) {
                /* Backoff grows with consecutive failures, but a worker that
                 * served for a whole window earns its slot a fresh start. */
                if (s && w->ready_usec && now_usec() - w->ready_usec >= m->config->restart_window_ms * USEC_PER_MSEC)
                        s->consecutive_failures = 0;
                bool gave_up = manager_record_failure(m, w, how);
                if (s) {
                        s->restarts++;
                        if (gave_up)
                                s->failed = true;
                        else if (!m->stopping)
                                schedule_respawn(s);
                }
        } else if (s && !m->stopping)
                /* Expected but still attached cannot normally happen (stopping
                 * detaches); keep the slot filled all the same. */
                slot_spawn(s);

        worker_release(w);
        manager_update(m);
}

/* ---- slots -------------------------------------------------------------- */

Slot *slot_new(Manager *m, unsigned id) {
        Slot *s = calloc(1, sizeof(Slot));
        if (!s)
                return NULL;
        s->manager = m;
        s->id = id;
        uv_timer_init(m->loop, &s->backoff);
        s->backoff.data = s;
        return s;
}

static void on_slot_timer_closed(uv_handle_t *h) {
        free(h->data);
}

void slot_free(Slot *s) {
        if (!s)
                return;
        if (s->current)
                worker_stop(s->current);
        if (s->incoming)
                worker_stop(s->incoming);
        uv_timer_stop(&s->backoff);
        uv_close((uv_handle_t *) &s->backoff, on_slot_timer_closed);
}
