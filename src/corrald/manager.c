/* manager: the master's top level. See manager.h.
 *
 * Owns the event loop's long-lived handles: the signal watchers, systemd's
 * watchdog timer, the notify server and the slots. Talks to systemd with
 * sd_notify() only from here: READY=1 once every slot is ready, STATUS=
 * whenever the summary changes, STOPPING=1 on the way out. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>

#include "commands.h"
#include "log.h"
#include "manager.h"
#include "procfs.h"
#include "rollout.h"
#include "util.h"

Worker *manager_find_worker(Manager *m, pid_t pid) {
        for (Worker *w = m->workers; w; w = w->next)
                if (w->pid == pid)
                        return w;
        return NULL;
}

static unsigned count_ready(const Manager *m) {
        unsigned n = 0;
        for (unsigned i = 0; i < m->n_slots; i++)
                if (slot_state(m->slots[i]) == SLOT_READY)
                        n++;
        return n;
}


void manager_update(Manager *m) {
        char status[sizeof(m->status)], rolling[64];
        unsigned ready = count_ready(m);

        if (m->stopping)
                snprintf(status, sizeof(status), "Stopping: %u worker%s left", m->n_workers,
                         m->n_workers == 1 ? "" : "s");
        else if (m->gave_up)
                snprintf(status, sizeof(status), "Gave up: %s; %u/%u workers ready, generation %u",
                         m->giveup_reason, ready, m->n_slots, m->generation);
        else if (rollout_describe(m, rolling, sizeof(rolling)))
                snprintf(status, sizeof(status), "%s; %u/%u workers ready, generation %u", rolling, ready,
                         m->n_slots, m->generation);
        else
                snprintf(status, sizeof(status), "%u/%u workers ready, generation %u", ready, m->n_slots,
                         m->generation);

        if (!m->sent_ready && !m->stopping && m->n_slots > 0 && ready == m->n_slots) {
                m->sent_ready = true;
                log_info("all %u workers ready", m->n_slots);
                (void) sd_notifyf(0, "READY=1\nSTATUS=%s", status);
                snprintf(m->status, sizeof(m->status), "%s", status);
        } else if (strcmp(status, m->status) != 0) {
                (void) sd_notifyf(0, "STATUS=%s", status);
                snprintf(m->status, sizeof(m->status), "%s", status);
        }

        if (m->stopping && m->n_workers == 0)
                manager_close(m);
}

bool manager_record_failure(Manager *m, const Worker *w, const char *what) {
        if (m->gave_up)
                return true;
        if (!failure_window_record(&m->failures, now_usec()))
                return false;

        m->gave_up = true;
        snprintf(m->giveup_reason, sizeof(m->giveup_reason), "more than %u failures within %llu ms",
                 m->config->restart_limit, (unsigned long long) m->config->restart_window_ms);
        LogFields f = LOG_FIELDS_NONE;
        f.event = "giveup";
        if (w) {
                f.worker_id = (int) w->id;
                f.pid = w->pid > 0 ? w->pid : -w->pid;
                f.generation = w->generation;
        }
        log_emit(LOG_CRIT, &f, "giving up: %s (last: %s %s); restart.on_giveup is %s", m->giveup_reason,
                 w ? w->who : "a spawn", what, m->config->on_giveup == GIVEUP_EXIT ? "exit" : "stay");
        if (m->config->on_giveup == GIVEUP_EXIT)
                manager_stop(m, 1);
        manager_update(m);
        return true;
}

unsigned manager_grow_slots(Manager *m, unsigned n) {
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
                if (!(m->slots[i] = slot_new(m, i)))
                        break;
        m->n_slots = i;
        return i;
}

void manager_scale(Manager *m, unsigned n) {
        unsigned old = m->n_slots;
        if (n < 1 || n == old || m->stopping)
                return;

        if (n > old)
                n = manager_grow_slots(m, n);
        if (old > 0) {
                LogFields f = LOG_FIELDS_NONE;
                f.event = "scale";
                f.generation = m->generation;
                log_emit(LOG_INFO, &f, "scaling from %u to %u workers", old, n);
        }

        for (unsigned i = n; i < old; i++)
                slot_free(m->slots[i]);
        m->n_slots = n;
        for (unsigned i = old; i < n; i++)
                slot_spawn(m->slots[i]);
        manager_update(m);
}

void manager_stop(Manager *m, int exit_code) {
        if (m->stopping)
                return;
        m->stopping = true;
        m->exit_code = exit_code;
        rollout_abort(m, "corrald is stopping");
        LogFields f = LOG_FIELDS_NONE;
        f.event = "stop";
        f.generation = m->generation;
        log_emit(LOG_INFO, &f, "stopping %u worker%s", m->n_workers, m->n_workers == 1 ? "" : "s");
        (void) sd_notify(0, "STOPPING=1");

        for (unsigned i = 0; i < m->n_slots; i++)
                uv_timer_stop(&m->slots[i]->backoff);
        for (Worker *w = m->workers; w; w = w->next)
                if (w->pid > 0)
                        worker_stop(w);
        manager_update(m);
}

/* ---- signals ------------------------------------------------------------ */

static void on_sigchld(uv_signal_t *h, int signum) {
        Manager *m = h->data;

        /* Read what workers said before they died: READY=1 or STOPPING=1
         * sent just before exiting must be seen before the exit. */
        notify_server_drain(&m->notify);

        /* Reap only our own workers, by pid; never waitpid(-1). */
        for (Worker *w = m->workers, *next; w; w = next) {
                int st;
                next = w->next;
                if (w->pid <= 0)
                        continue;
                pid_t r = waitpid(w->pid, &st, WNOHANG);
                if (r == w->pid)
                        worker_on_exit(w, st);
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
        rollout_reload(m, NULL);
}

/* SIGTTIN adds a worker, SIGTTOU removes one (never the last). */
static void on_sigttin(uv_signal_t *h, int signum) {
        Manager *m = h->data;
        if (m->rollout) {
                log_warning("%s ignored: a reload or restart is in progress", signal_to_string(signum));
                return;
        }
        if (signum == SIGTTIN && m->n_slots >= 4096)
                log_warning("SIGTTIN ignored: already at the maximum of 4096 workers");
        else if (signum == SIGTTIN)
                manager_scale(m, m->n_slots + 1);
        else if (m->n_slots > 1)
                manager_scale(m, m->n_slots - 1);
}

/* recycle.max_rss_mb: a ready worker over the limit gets a replacement
 * started beside it and is stopped once that one is ready, like a
 * one-slot rollout; nothing happens while a rollout runs. */
static void on_recycle_check(uv_timer_t *t) {
        Manager *m = t->data;
        uint64_t limit_kb = m->config->recycle_max_rss_mb * 1024;

        if (!limit_kb || m->stopping || m->rollout)
                return;
        for (unsigned i = 0; i < m->n_slots; i++) {
                Slot *s = m->slots[i];
                Worker *w = s->current;
                ProcStats ps;
                if (!w || w->state != WORKER_READY || s->incoming || w->pid <= 0 ||
                    procfs_read_stats(w->pid, &ps) < 0 || ps.rss_kb <= limit_kb)
                        continue;
                LogFields f = LOG_FIELDS_NONE;
                f.worker_id = (int) w->id;
                f.pid = w->pid;
                f.generation = w->generation;
                log_emit(LOG_NOTICE, &f, "recycling %s: RSS %llu MiB exceeds recycle.max_rss_mb=%llu", w->who,
                         (unsigned long long) (ps.rss_kb / 1024), (unsigned long long) m->config->recycle_max_rss_mb);
                (void) slot_spawn_incoming(s);
        }
}

void manager_arm_recycle(Manager *m) {
        if (m->config->recycle_max_rss_mb > 0 && !m->stopping)
                uv_timer_start(&m->recycle, on_recycle_check, 1000, 1000);
        else
                uv_timer_stop(&m->recycle);
}

static void on_watchdog(uv_timer_t *t) {
        (void) sd_notify(0, "WATCHDOG=1");
}

/* The parent pid of a live process, or 0. */
static pid_t read_ppid(pid_t pid) {
        char path[64], buf[512];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        FILE *f = fopen(path, "re");
        if (!f)
                return 0;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        /* The command name may contain spaces and parentheses; the fields
         * after the last ')' are "state ppid ...". */
        const char *p = strrchr(buf, ')');
        int ppid = 0;
        if (!p || sscanf(p + 1, " %*c %d", &ppid) != 1)
                return 0;
        return ppid;
}

static void on_notify(void *userdata, pid_t pid, const NotifyMsg *msg) {
        Manager *m = userdata;
        Worker *w = manager_find_worker(m, pid);

        /* A direct child of a worker speaks for it: that is how
         * `systemd-notify --ready` in a shell worker reaches us (it waits on
         * BARRIER=1, so it is still alive while we look it up). */
        if (!w)
                w = manager_find_worker(m, read_ppid(pid));
        if (!w || w->pid <= 0) {
                log_debug("notify socket: ignored a message from pid %d, which is not a current worker", (int) pid);
                m->notify.n_dropped++;
                return;
        }
        worker_on_notify(w, msg);
}

/* ---- start and end ------------------------------------------------------ */

static void close_handle(uv_handle_t *h) {
        if (!uv_is_closing(h))
                uv_close(h, NULL);
}

void manager_close(Manager *m) {
        close_handle((uv_handle_t *) &m->sig_term);
        close_handle((uv_handle_t *) &m->sig_int);
        close_handle((uv_handle_t *) &m->sig_hup);
        close_handle((uv_handle_t *) &m->sig_chld);
        close_handle((uv_handle_t *) &m->sig_ttin);
        close_handle((uv_handle_t *) &m->sig_ttou);
        close_handle((uv_handle_t *) &m->watchdog);
        close_handle((uv_handle_t *) &m->recycle);
        notify_server_stop(&m->notify);
        control_server_stop(&m->control);
        for (unsigned i = 0; i < m->n_slots; i++)
                slot_free(m->slots[i]);
        m->n_slots = 0;
}

int manager_start(Manager *m, uv_loop_t *loop, Config *config, const ConfigOverrides *o) {
        char *error = NULL;
        int r;

        *m = (Manager) { .loop = loop, .config = config_ref(config), .overrides = o, .generation = 1,
                         .start_usec = now_usec(), .notify.fd = -EBADF };

        /* Every handle exists from here on, so manager_close() is safe
         * whatever fails below. */
        uv_signal_t *signals[] = { &m->sig_chld, &m->sig_term, &m->sig_int, &m->sig_hup, &m->sig_ttin, &m->sig_ttou };
        for (size_t i = 0; i < ELEMENTSOF(signals); i++) {
                uv_signal_init(loop, signals[i]);
                signals[i]->data = m;
        }
        uv_timer_init(loop, &m->watchdog);
        uv_timer_init(loop, &m->recycle);
        m->recycle.data = m;

        r = failure_window_init(&m->failures, config->restart_limit, config->restart_window_ms * USEC_PER_MSEC);
        if (r < 0)
                return log_error_errno(r, "cannot allocate the failure window: %m");

        r = listener_set_acquire(&m->listeners, config, &error);
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

        r = notify_server_start(&m->notify, loop, config->name, on_notify, m);
        if (r < 0)
                return log_error_errno(r, "cannot create the notify socket: %m");

        _cleanup_free_ char *control = control_socket_path(config->control, config->name);
        if (!control)
                log_notice("no control socket: set XDG_RUNTIME_DIR or --control to use corralctl");
        else if ((r = control_server_start(&m->control, loop, control, commands_dispatch, m)) < 0)
                return r;

        uv_signal_start(&m->sig_chld, on_sigchld, SIGCHLD);
        uv_signal_start(&m->sig_term, on_sigterm, SIGTERM);
        uv_signal_start(&m->sig_int, on_sigterm, SIGINT);
        uv_signal_start(&m->sig_hup, on_sighup, SIGHUP);
        uv_signal_start(&m->sig_ttin, on_sigttin, SIGTTIN);
        uv_signal_start(&m->sig_ttou, on_sigttin, SIGTTOU);

        if (sd_watchdog_enabled(0, &m->watchdog_usec) > 0 && m->watchdog_usec > 0) {
                uint64_t ms = MAX(m->watchdog_usec / 2 / USEC_PER_MSEC, 1);
                log_info("systemd watchdog enabled: pinging every %llu ms", (unsigned long long) ms);
                uv_timer_start(&m->watchdog, on_watchdog, ms, ms);
        }

        manager_arm_recycle(m);

        log_info("starting %u workers: %s", config_worker_count(config), config->exec[0]);
        manager_scale(m, config_worker_count(config));
        return 0;
}

void manager_done(Manager *m) {
        for (unsigned i = 0; i < m->n_slots; i++)
                free(m->slots[i]);
        free(m->slots);
        listener_set_done(&m->listeners);
        failure_window_done(&m->failures);
        config_unref(m->config);
}
