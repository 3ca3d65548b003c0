/* commands: see commands.h. Each handler validates its arguments, acts
 * through the manager/slot/rollout APIs and sends exactly one result. */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "ipc.h"
#include "log.h"
#include "manager.h"
#include "procfs.h"
#include "upgrade.h"
#include "util.h"

/* A whole number, as a raw item: cJSON prints a number with
 * sprintf("%1.15g") and checks it with sscanf(), which with 2,000 workers
 * (14 numbers each) was most of what status cost. */
static void add_uint(cJSON *o, const char *key, uint64_t v) {
        char buf[24];
        snprintf(buf, sizeof(buf), "%" PRIu64, v);
        cJSON_AddRawToObject(o, key, buf);
}

static void add_number_or_null(cJSON *o, const char *key, uint64_t v, bool valid) {
        if (valid)
                add_uint(o, key, v);
        else
                cJSON_AddNullToObject(o, key);
}

static cJSON *describe_worker(const Worker *w, const Slot *s, const char *state, uint64_t now, bool handoff) {
        cJSON *o = cJSON_CreateObject();
        if (!o)
                return NULL;
        ProcStats ps;
        bool alive = w && w->pid > 0;
        bool stats = alive && procfs_read_stats(w->pid, &ps) >= 0;
        add_uint(o, "id", s ? slot_id(s) : w->id);
        cJSON_AddStringToObject(o, "state", state);
        add_number_or_null(o, "pid", alive ? w->pid : 0, alive);
        add_number_or_null(o, "generation", w ? w->generation : 0, w != NULL);
        add_number_or_null(o, "uptime_ms", w ? ((now - w->start_usec) / USEC_PER_MSEC) : 0, w != NULL);
        add_uint(o, "restarts", s ? slot_restarts(s) : 0);
        add_number_or_null(o, "cpu_ms", stats ? ps.cpu_ms : 0, stats);
        add_number_or_null(o, "rss_kb", stats ? ps.rss_kb : 0, stats);
        bool handing = w && handoff;
        add_number_or_null(o, "connections", handing ? handoff_open(w) : 0, handing && w->reports_closes);
        add_number_or_null(o, "handed", handing ? w->handed : 0, handing);
        /* Hand-offs it has not read (SPEC §5: at most IPC_INFLIGHT_MAX), and
         * whether it gets none for now, having left them unread. */
        add_number_or_null(o, "unread", handing && w->ipc ? ipc_inflight(w->ipc) : 0, handing && w->ipc);
        if (handing) {
                cJSON_AddBoolToObject(o, "stalled", w->stalled_until && now_usec() < w->stalled_until);
                /* docs/protocol.md, "At your fd limit". */
                add_uint(o, "fd_limit_reports", w->fd_limit_reports);
                add_uint(o, "fd_limit_lost", w->fd_limit_lost);
        }
        if (w && w->host) {
                /* Its channel hit EOF (it closed CORRAL_IPC_FD): it gets no
                 * hand-off and no message any more. */
                cJSON_AddBoolToObject(o, "channel", w->ipc && w->ipc->open);
                add_uint(o, "messages_dropped", w->ipc ? w->ipc->dropped : 0);
                /* SPEC §6: malformed lines are counted; this is where the count shows. */
                add_uint(o, "messages_malformed", w->ipc ? w->ipc->malformed : 0);
        }
        if (w && w->status[0])
                cJSON_AddStringToObject(o, "status", w->status);
        else
                cJSON_AddNullToObject(o, "status");
        return o;
}

static void cmd_status(Manager *m, ControlConn *c, const cJSON *req) {
        cJSON *o = cJSON_CreateObject(), *a;
        uint64_t now = now_usec();
        unsigned ready = manager_count_ready(m);
        const Config *config = manager_config(m);

        if (!o) {
                control_reply_error(c, "out of memory");
                return;
        }
        cJSON_AddStringToObject(o, "instance", config->name);
        cJSON_AddNumberToObject(o, "pid", getpid());
        cJSON_AddStringToObject(o, "version", CORRAL_VERSION);
        /* The mode in effect: the one corrald started with (a reload does not change it). */
        cJSON_AddStringToObject(o, "balance", balance_to_string(m->start_config->balance));
        cJSON_AddStringToObject(o, "ipc", ipc_dialect_to_string(config->ipc));
        cJSON_AddNumberToObject(o, "generation", m->pool.generation);
        cJSON_AddNumberToObject(o, "ready", ready);
        cJSON_AddNumberToObject(o, "workers", m->n_slots);
        /* What the file says, when a runtime scale holds instead (SPEC §4). */
        if (m->scaled)
                cJSON_AddNumberToObject(o, "workers_config", config_worker_count(config));
        bool rolling = m->rollout && m->rollout->kind != ROLLOUT_RECYCLE;
        cJSON_AddStringToObject(o, "state", m->pool.stopping       ? "stopping"
                                            : rolling         ? "reloading"
                                            : m->pool.gave_up ? "gave-up"
                                                              : "running");
        cJSON_AddStringToObject(o, "status", m->status);
        cJSON_AddStringToObject(o, "log", log_get_target() == LOG_TARGET_JOURNAL ? "journal" : "stderr");
        cJSON_AddNumberToObject(o, "uptime_ms", (double) ((now - m->start_usec) / USEC_PER_MSEC));
        cJSON_AddNumberToObject(o, "exec_uptime_ms", (double) ((now - m->exec_usec) / USEC_PER_MSEC));
        cJSON_AddNumberToObject(o, "upgrades", m->upgrades);
        cJSON_AddNumberToObject(o, "orphans_reaped", (double) m->orphans_reaped);
        cJSON_AddBoolToObject(o, "draining", m->draining);
        /* Counters for `corralctl metrics`: since the instance started,
         * or (those of the hand-off) since this corrald binary did. */
        cJSON *k = cJSON_AddObjectToObject(o, "counters");
        if (k) {
                cJSON_AddNumberToObject(k, "reloads_done", (double) m->reloads_done);
                cJSON_AddNumberToObject(k, "reloads_failed", (double) m->reloads_failed);
                cJSON_AddNumberToObject(k, "messages", (double) m->messages.n_messages);
                cJSON_AddNumberToObject(k, "messages_undeliverable", (double) m->messages.n_undeliverable);
                cJSON_AddNumberToObject(k, "notify_dropped", (double) m->notify.n_dropped);
                cJSON_AddNumberToObject(k, "handed", (double) m->handoff.n_handed);
                cJSON_AddNumberToObject(k, "handoffs_retried", (double) m->handoff.n_retried);
                cJSON_AddNumberToObject(k, "handoffs_taken_back", (double) m->handoff.n_taken_back);
                cJSON_AddNumberToObject(k, "handoffs_lost", (double) m->handoff.n_lost);
                cJSON_AddNumberToObject(k, "held", (double) handoff_held(&m->handoff));
                cJSON_AddNumberToObject(k, "accept_errors", (double) m->handoff.n_accept_errors);
        }

        a = cJSON_AddArrayToObject(o, "listeners");
        for (unsigned i = 0; a && i < m->listeners.n; i++) {
                cJSON *l = cJSON_CreateObject();
                if (!l)
                        continue;
                cJSON_AddStringToObject(l, "name", m->listeners.items[i].name);
                cJSON_AddStringToObject(l, "address", m->listeners.items[i].display);
                cJSON_AddItemToArray(a, l);
        }

        a = cJSON_AddArrayToObject(o, "slots");
        for (unsigned i = 0; a && i < m->n_slots; i++) {
                Slot *s = m->slots[i];
                cJSON *e = describe_worker(slot_current(s), s, slot_display_state(s), now, m->handoff.started);
                if (e)
                        cJSON_AddItemToArray(a, e);
        }
        cJSON *leaving = cJSON_AddArrayToObject(o, "leaving");
        cJSON *incoming = cJSON_AddArrayToObject(o, "incoming");
        LIST_FOREACH(all, w, m->pool.workers) {
                if (w->pid <= 0 || w->role == WORKER_CURRENT)
                        continue;
                bool inc = w->role == WORKER_INCOMING;
                cJSON *e = describe_worker(w, NULL, worker_state_to_string(w->state), now, m->handoff.started);
                if (e && (inc ? incoming : leaving))
                        cJSON_AddItemToArray(inc ? incoming : leaving, e);
                else
                        cJSON_Delete(e);
        }
        control_reply_ok(c, o);
}

/* "target": slot number or "all". Returns the slot, -1 for all, or -2 after
 * replying with an error. */
static int parse_target(Manager *m, ControlConn *c, const cJSON *req) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(req, "target");
        if (cJSON_IsString(t) && streq_ptr(t->valuestring, "all"))
                return -1;
        /* Range before the cast: converting an out-of-range double is undefined. */
        if (cJSON_IsNumber(t) && t->valuedouble >= 0 && t->valuedouble < CORRAL_WORKERS_MAX &&
            t->valuedouble == (double) (unsigned) t->valuedouble) {
                if ((unsigned) t->valuedouble >= m->n_slots) {
                        control_reply_error(c, "no worker %u: slots are 0-%u", (unsigned) t->valuedouble,
                                            m->n_slots - 1);
                        return -2;
                }
                return (int) t->valuedouble;
        }
        control_reply_error(c, "\"target\" must be a worker id (0-%u) or \"all\"", m->n_slots - 1);
        return -2;
}

static void cmd_reload(Manager *m, ControlConn *c, const cJSON *req) {
        manager_reload(m, c);
}

static void cmd_restart(Manager *m, ControlConn *c, const cJSON *req) {
        int t = parse_target(m, c, req);
        if (t >= -1)
                manager_restart(m, t, c);
}

static void cmd_scale(Manager *m, ControlConn *c, const cJSON *req) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(req, "workers");
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(req, "delta");
        double target;

        if (cJSON_IsNumber(n) && !d)
                target = n->valuedouble;
        else if (cJSON_IsNumber(d) && !n)
                target = (double) m->n_slots + d->valuedouble;
        else {
                control_reply_error(c, "scale needs a number in \"workers\" (absolute) or \"delta\" (relative)");
                return;
        }
        if (!(target >= 1 && target <= CORRAL_WORKERS_MAX) || target != (double) (long) target) {
                control_reply_error(c, "cannot scale to %g workers: the count must be between 1 and %u", target,
                                    CORRAL_WORKERS_MAX);
                return;
        }
        unsigned max = 0, open = 0;
        (void) manager_fd_room(m, (unsigned) target, &max, &open);
        int r = manager_scale(m, (unsigned) target);
        if (r == -EBUSY) {
                control_reply_error(c, "cannot scale while %s", m->pool.stopping ? "stopping" : "a rollout runs");
                return;
        }
        if (r == -EMFILE) {
                control_reply_error(c, "cannot scale to %g workers: the open-file limit is %u, %u are open, and "
                                    "each worker needs %u more (plus %d spare); raise LimitNOFILE=",
                                    target, max, open, manager_fds_per_worker(m), SCALE_FD_RESERVE);
                return;
        }
        cJSON *o = cJSON_CreateObject();
        if (o)
                cJSON_AddNumberToObject(o, "workers", m->n_slots);
        control_reply_ok(c, o);
}

/* Apply fn (0 or -errno) to the current worker of the target slot(s);
 * reply with the pids it succeeded for. For one target that failed, the
 * reply says why, in fn's own words (describe). */
static void for_targets(Manager *m, ControlConn *c, int target, int (*fn)(Worker *w, void *arg), void *arg,
                        const char *(*describe)(int r)) {
        cJSON *o = cJSON_CreateObject();
        cJSON *pids = o ? cJSON_AddArrayToObject(o, "pids") : NULL;
        int err = -ESRCH;
        unsigned n = 0;
        for (unsigned i = 0; i < m->n_slots; i++) {
                Worker *w = slot_current(m->slots[i]);
                if ((target >= 0 && i != (unsigned) target) || !w || w->pid <= 0)
                        continue;
                int r = fn(w, arg);
                if (r < 0) {
                        err = r;
                        continue;
                }
                n++;
                if (pids)
                        cJSON_AddItemToArray(pids, cJSON_CreateNumber(w->pid));
        }
        if (n == 0 && target >= 0) {
                cJSON_Delete(o);
                control_reply_error(c, "worker %d: %s", target, describe(err));
                return;
        }
        control_reply_ok(c, o);
}

static int send_signal(Worker *w, void *arg) {
        int sig = *(int *) arg;
        LogFields f = LOG_FIELDS_NONE;
        f.worker_id = (int) w->id;
        f.pid = w->pid;
        f.generation = w->generation;
        log_emit(LOG_INFO, &f, "sending %s to %s (control request)", signal_to_string(sig), w->who);
        return kill_process(w->pid, sig, false);
}

static const char *describe_signal_error(int r) {
        return r == -ESRCH ? "no running process to signal" : "the signal could not be sent";
}

static void cmd_signal(Manager *m, ControlConn *c, const cJSON *req) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(req, "signal");
        int sig = -EINVAL;
        char num[16];

        if (cJSON_IsString(s))
                sig = parse_signal(s->valuestring);
        else if (cJSON_IsNumber(s) && s->valuedouble >= 1 && s->valuedouble <= 64 &&
                 s->valuedouble == (int) s->valuedouble) {
                /* A whole number only: 9.5 is no signal, and truncating it
                 * would send SIGKILL. */
                snprintf(num, sizeof(num), "%d", (int) s->valuedouble);
                sig = parse_signal(num);
        }
        if (sig < 0) {
                control_reply_error(c, "\"signal\" must be a signal name (TERM, SIGHUP, ...) or number");
                return;
        }
        int t = parse_target(m, c, req);
        if (t >= -1)
                for_targets(m, c, t, send_signal, &sig, describe_signal_error);
}

static void cmd_send(Manager *m, ControlConn *c, const cJSON *req) {
        const cJSON *data = cJSON_GetObjectItemCaseSensitive(req, "data");
        if (!data) {
                control_reply_error(c, "send needs \"data\": the JSON value to deliver");
                return;
        }
        int t = parse_target(m, c, req);
        if (t < -1)
                return;
        _cleanup_free_ char *text = cJSON_PrintUnformatted(data);
        if (!text) {
                control_reply_error(c, "out of memory");
                return;
        }
        size_t len = strlen(text);
        if (len > IPC_DATA_MAX) {
                control_reply_error(c, "the message is %zu bytes; at most %d fit in a line of the IPC channel", len,
                                    IPC_DATA_MAX);
                return;
        }
        _cleanup_free_ pid_t *pids = calloc(m->n_slots, sizeof(pid_t));
        if (!pids) {
                control_reply_error(c, "out of memory");
                return;
        }
        unsigned n = messages_send(&m->messages, t, text, len, pids);
        if (n == 0) {
                /* Nothing reached anyone: that is a failure (exit 1), not
                 * "delivered to 0 workers". */
                Worker *w = t >= 0 ? slot_current(m->slots[t]) : NULL;
                if (w && w->pid > 0)
                        control_reply_error(c, "worker %d: not delivered: it is not reading its IPC channel "
                                            "(CORRAL_IPC_FD) and its queue is full; dropped messages are counted "
                                            "in status", t);
                else if (t >= 0)
                        control_reply_error(c, "worker %d: not delivered: it has no running process", t);
                else
                        control_reply_error(c, "not delivered to any worker: none is running, or none is reading "
                                            "its IPC channel (CORRAL_IPC_FD)");
                return;
        }
        cJSON *o = cJSON_CreateObject();
        cJSON *a = o ? cJSON_AddArrayToObject(o, "pids") : NULL;
        for (unsigned i = 0; a && i < n; i++)
                cJSON_AddItemToArray(a, cJSON_CreateNumber(pids[i]));
        if (o)
                cJSON_AddNumberToObject(o, "delivered", n);
        control_reply_ok(c, o);
}

/* The last messages workers sent to the master (SPEC §6); with "follow",
 * a stream of {"type":"message"} lines that ends only when corrald stops
 * or the client goes. */
static void cmd_messages(Manager *m, ControlConn *c, const cJSON *req) {
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "follow"))) {
                if (messages_follow(&m->messages, c) < 0)
                        control_reply_error(c, "too many clients follow messages (at most %d)",
                                            MESSAGES_FOLLOWERS_MAX);
                return;
        }
        cJSON *o = cJSON_CreateObject();
        cJSON *a = o ? cJSON_AddArrayToObject(o, "messages") : NULL;
        for (unsigned k = 0; a && k < m->messages.n_kept; k++) {
                cJSON *e = cJSON_Parse(messages_kept(&m->messages, k));
                if (e)
                        cJSON_AddItemToArray(a, e);
        }
        if (o)
                cJSON_AddNumberToObject(o, "total", (double) m->messages.n_messages);
        control_reply_ok(c, o);
}

/* Health for load balancers and probes (SPEC §7): healthy, degraded (fewer
 * ready workers than wanted, given up with "stay", the last reload
 * failed) or draining / down, with the reason in one line. */
static void cmd_health(Manager *m, ControlConn *c, const cJSON *req) {
        unsigned ready = manager_count_ready(m);
        const char *health = "healthy";
        char reason[200];

        snprintf(reason, sizeof(reason), "%u/%u workers ready", ready, m->n_slots);
        if (m->pool.stopping) {
                health = "down";
                snprintf(reason, sizeof(reason), "corrald is stopping");
        } else if (m->draining) {
                health = "draining";
                snprintf(reason, sizeof(reason), "drained by corralctl drain; %u/%u workers ready", ready, m->n_slots);
        } else if (m->pool.gave_up) {
                health = "degraded";
                snprintf(reason, sizeof(reason), "gave up: %.120s; %u/%u workers ready", m->pool.giveup_reason, ready,
                         m->n_slots);
        } else if (ready < m->n_slots) {
                health = "degraded";
        } else if (m->reload_failed) {
                health = "degraded";
                snprintf(reason, sizeof(reason), "the last reload failed; %u/%u workers ready", ready, m->n_slots);
        }
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "health", health);
        cJSON_AddStringToObject(o, "reason", reason);
        cJSON_AddNumberToObject(o, "ready", ready);
        cJSON_AddNumberToObject(o, "workers", m->n_slots);
        cJSON_AddBoolToObject(o, "draining", m->draining);
        control_reply_ok(c, o);
}

static void set_draining(Manager *m, ControlConn *c, bool on) {
        if (m->draining != on) {
                m->draining = on;
                log_notice(on ? "drained: health says draining; every worker keeps serving"
                              : "undrained: health says what the workers say again");
        }
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "draining", m->draining);
        control_reply_ok(c, o);
}

static void cmd_drain(Manager *m, ControlConn *c, const cJSON *req) {
        set_draining(m, c, true);
}

static void cmd_undrain(Manager *m, ControlConn *c, const cJSON *req) {
        set_draining(m, c, false);
}

static void cmd_upgrade(Manager *m, ControlConn *c, const cJSON *req) {
        upgrade_request(m, c);
}

static const struct {
        const char *name;
        void (*fn)(Manager *m, ControlConn *c, const cJSON *req);
} commands[] = {
        { "status", cmd_status }, { "reload", cmd_reload }, { "restart", cmd_restart },
        { "scale", cmd_scale },   { "signal", cmd_signal }, { "send", cmd_send },
        { "messages", cmd_messages }, { "upgrade", cmd_upgrade }, { "health", cmd_health },
        { "drain", cmd_drain },   { "undrain", cmd_undrain },
};

void commands_dispatch(void *userdata, ControlConn *c, const cJSON *req) {
        Manager *m = userdata;
        const char *name = cJSON_GetObjectItemCaseSensitive(req, "command")->valuestring;
        for (size_t i = 0; i < ELEMENTSOF(commands); i++)
                if (streq_ptr(name, commands[i].name)) {
                        commands[i].fn(m, c, req);
                        return;
                }
        char esc[80];
        control_reply_error(c, "unknown command \"%s\" (known: status, reload, restart, scale, signal, send, messages, upgrade, "
                            "health, drain, undrain)",
                            str_escape(name, esc, sizeof(esc)));
}
