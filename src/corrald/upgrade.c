/* upgrade: see upgrade.h and docs/internals/upgrade.md.
 *
 * Owns the hand-over state: its format (one JSON object, "format" and
 * "version" first), writing it to a memfd before execve(), and reading it
 * back in the new process. It changes slots and workers only through
 * slot.c's restore entry points (slot_restore, slot_adopt_worker,
 * pool_restore), and their I/O through workers.c (worker_io_adopt). */
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "fd-util.h"
#include "ipc.h"
#include "log.h"
#include "manager.h"
#include "upgrade.h"
#include "util.h"

extern char **environ;

#define STATE_MAX (64 * 1024 * 1024)

static char **saved_argv;
static char binary[4096];
static cJSON *state;          /* the state handed to us, until restored */
static char state_error[256]; /* why a given state cannot be read */
static bool state_given;
static int fallback_reply = -EBADF; /* the client of an upgrade that fell back */
static char fallback_why[200];
static pid_t *orphans;
static uv_timer_t orphan_timer;   /* SIGKILL for orphans still there after stop.timeout_ms */
static unsigned n_orphans;

/* The signals the manager handles: blocked across execve() so that none
 * arrives while no handler is installed (their default actions would end
 * the instance); the new corrald unblocks them once its handlers run. */
static void handled_signals(sigset_t *set) {
        sigemptyset(set);
        int sigs[] = { SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGTTIN, SIGTTOU, SIGUSR2 };
        for (size_t i = 0; i < ELEMENTSOF(sigs); i++)
                sigaddset(set, sigs[i]);
}

static int read_all(int fd, char **ret) {
        size_t len = 0, cap = 0;
        char *buf = NULL;
        for (;;) {
                if (cap - len < 4096) {
                        if (cap >= STATE_MAX) {
                                free(buf);
                                return -EFBIG;
                        }
                        cap = cap ? cap * 2 : 65536;
                        char *b = realloc(buf, cap + 1);
                        if (!b) {
                                free(buf);
                                return -ENOMEM;
                        }
                        buf = b;
                }
                ssize_t n = read(fd, buf + len, cap - len);
                if (n == -1 && errno == EINTR)
                        continue;
                if (n == -1) {
                        int r = -errno;
                        free(buf);
                        return r;
                }
                if (n == 0)
                        break;
                len += (size_t) n;
        }
        buf[len] = 0;
        *ret = buf;
        return 0;
}

void upgrade_init(int argc, char **argv) {
        saved_argv = argv;
        ssize_t n = readlink("/proc/self/exe", binary, sizeof(binary) - 1);
        binary[n > 0 ? n : 0] = 0;
        /* Started from a binary that was replaced meanwhile. */
        const char *deleted = " (deleted)";
        size_t bl = strlen(binary), dl = strlen(deleted);
        if (bl > dl && strcmp(binary + bl - dl, deleted) == 0)
                binary[bl - dl] = 0;

        const char *e = getenv(UPGRADE_ENV_STATE_FD);
        if (!e)
                return;
        state_given = true;
        uint64_t fd64;
        int r = parse_u64(e, &fd64);
        (void) unsetenv(UPGRADE_ENV_STATE_FD);
        if (r < 0 || fd64 < 3 || fd64 > INT32_MAX) {
                snprintf(state_error, sizeof(state_error), "%s=%s is not a file descriptor", UPGRADE_ENV_STATE_FD, e);
                return;
        }
        int fd = (int) fd64;
        char *text = NULL;
        if (lseek(fd, 0, SEEK_SET) == -1 || (r = read_all(fd, &text)) < 0) {
                snprintf(state_error, sizeof(state_error), "cannot read the state (fd %d): %s", fd,
                         strerror(errno));
                safe_close(fd);
                return;
        }
        safe_close(fd);
        state = cJSON_Parse(text);
        free(text);
        if (!state)
                snprintf(state_error, sizeof(state_error), "the state is not valid JSON");
}

bool upgrade_pending(void) {
        return state_given;
}

/* ---- reading the state -------------------------------------------------- */

static uint64_t get_u64(const cJSON *o, const char *key) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsNumber(v) && v->valuedouble > 0 ? (uint64_t) v->valuedouble : 0;
}

static int get_int(const cJSON *o, const char *key, int def) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsNumber(v) ? v->valueint : def;
}

static bool get_bool(const cJSON *o, const char *key) {
        return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, key));
}

static const char *get_str(const cJSON *o, const char *key) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int adopt_listeners(Manager *m) {
        const cJSON *l;
        cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(state, "listeners")) {
                int fd = get_int(l, "fd", -1);
                if (fd < 3)
                        continue;
                int r = listener_set_adopt(&m->listeners, fd, get_str(l, "name") ?: "unknown",
                                           get_str(l, "display") ?: "?", get_str(l, "unlink"),
                                           get_bool(l, "activated"));
                if (r < 0)
                        return log_error_errno(r, "cannot adopt the listeners: %m");
        }
        return 0;
}

/* Send obj (taken) as one line on the carried client connection. A
 * reply on an otherwise idle socket fits in its buffer; if it does not,
 * the client loses it (and reports the lost connection). */
static void send_line(int fd, cJSON *obj) {
        char *line = obj ? cJSON_PrintUnformatted(obj) : NULL;
        cJSON_Delete(obj);
        if (!line)
                return;
        size_t len = strlen(line);
        line[len] = '\n';   /* replaces the NUL; the write is bounded by len + 1 */
        (void) send(fd, line, len + 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        free(line);
}

static void close_carried(const char *key) {
        int fd = get_int(state, key, -1);
        if (fd >= 3)
                safe_close(fd);
}

/* The state cannot be restored: start clean with what can be trusted from
 * any version's envelope (listeners, worker pids, fds to close). */
static int fall_back(Manager *m, const char *why) {
        LogFields f = LOG_FIELDS_NONE;
        f.event = "upgrade_failed";
        log_emit(LOG_ERR, &f, "upgrade: %s; starting clean: the listeners are kept, the previous workers are stopped",
                 why);
        /* Without even the envelope there are no listeners to adopt, and a
         * start without them would serve nothing: exit 1, the workers die
         * with us (PR_SET_PDEATHSIG) and systemd's Restart= takes over. */
        if (!state)
                return log_error_errno(-EBADMSG, "upgrade: no listening sockets to adopt; exiting");
        int r = adopt_listeners(m);
        if (r < 0)
                return r;
        close_carried("notify_fd");
        close_carried("control_fd");
        /* Answered by upgrade_stop_orphans(), once the control socket is
         * bound again: a client that goes on to ask for the status must
         * not find it missing. */
        fallback_reply = get_int(state, "reply_fd", -EBADF);
        snprintf(fallback_why, sizeof(fallback_why), "%s", why);
        const cJSON *w;
        cJSON_ArrayForEach(w, cJSON_GetObjectItemCaseSensitive(state, "workers")) {
                int pid = get_int(w, "pid", 0);
                int ipc = get_int(w, "ipc_fd", -1), out = get_int(w, "output_fd", -1);
                if (ipc >= 3)
                        safe_close(ipc);
                if (out >= 3)
                        safe_close(out);
                pid_t *o = pid > 0 ? realloc(orphans, (n_orphans + 1) * sizeof(pid_t)) : NULL;
                if (o) {
                        orphans = o;
                        orphans[n_orphans++] = pid;
                }
        }
        state = (cJSON_Delete(state), NULL);
        return 0;
}

int upgrade_adopt_fds(Manager *m, int *ret_notify_fd, int *ret_control_fd) {
        *ret_notify_fd = *ret_control_fd = -EBADF;
        if (!state)
                return fall_back(m, state_error[0] ? state_error : "no state");
        if (!streq_ptr(get_str(state, "format"), "corrald-state"))
                return fall_back(m, "the state is not a corrald state");
        int version = get_int(state, "version", -1);
        if (version != UPGRADE_STATE_VERSION) {
                char why[160];
                snprintf(why, sizeof(why),
                         "cannot read the previous corrald's state: format version %d, this corrald reads version %d",
                         version, UPGRADE_STATE_VERSION);
                return fall_back(m, why);
        }
        /* The workers were started for this balance; a file edited since
         * to another one needs new workers (as a reload refuses it). */
        const char *balance = get_str(state, "balance");
        if (balance && !streq_ptr(balance, balance_to_string(manager_config(m)->balance))) {
                char why[160];
                snprintf(why, sizeof(why), "the configuration now says balance %s, the workers run with %s",
                         balance_to_string(manager_config(m)->balance), balance);
                return fall_back(m, why);
        }
        int r = adopt_listeners(m);
        if (r < 0)
                return r;
        *ret_notify_fd = get_int(state, "notify_fd", -EBADF);
        *ret_control_fd = get_int(state, "control_fd", -EBADF);
        return 1;
}

int upgrade_restore(Manager *m) {
        Config *config = manager_config(m);
        const cJSON *o;
        uint64_t stamps[RESTART_LIMIT_MAX + 1];
        unsigned n_stamps = 0;

        cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(state, "failures"))
                if (cJSON_IsNumber(o) && n_stamps < ELEMENTSOF(stamps))
                        stamps[n_stamps++] = (uint64_t) o->valuedouble;
        pool_restore(&m->pool, (unsigned) get_u64(state, "generation") ?: 1, get_bool(state, "gave_up"),
                     get_str(state, "giveup_reason"), stamps, n_stamps);
        m->start_usec = get_u64(state, "start_usec") ?: m->start_usec;
        m->upgrades = (unsigned) get_u64(state, "upgrades") + 1;
        m->sent_ready = true;
        m->rollout_serial = (unsigned) get_u64(state, "rollout_serial");
        m->recycle_pause_until = get_u64(state, "recycle_pause_until");
        m->recycle_next = (unsigned) get_u64(state, "recycle_next");
        m->n_messages = get_u64(state, "messages");
        m->n_undeliverable = get_u64(state, "undeliverable");
        m->notify.n_dropped = get_u64(state, "notify_dropped");
        snprintf(m->status, sizeof(m->status), "%s", get_str(state, "status") ?: "");

        /* Slots in id order: m->slots[i] has id i. */
        unsigned n = 0;
        cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(state, "slots"))
                n = MAX(n, (unsigned) get_u64(o, "id") + 1);
        if (n == 0 || n > CONFIG_WORKERS_MAX)
                return log_error_errno(-EBADMSG, "upgrade: the state has %u slots", n);
        m->slots = calloc(n, sizeof(Slot *));
        if (!m->slots)
                return log_error_errno(-ENOMEM, "upgrade: out of memory");
        for (unsigned i = 0; i < n; i++)
                if (!(m->slots[i] = slot_new(&m->pool, i)))
                        return log_error_errno(-ENOMEM, "upgrade: out of memory");
        m->n_slots = n;
        cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(state, "slots")) {
                Slot *s = m->slots[get_u64(o, "id")];
                slot_restore(s, (SlotState) get_int(o, "state", SLOT_EMPTY), (unsigned) get_u64(o, "restarts"),
                             (unsigned) get_u64(o, "consecutive_failures"), get_u64(o, "deadline"));
        }

        cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(state, "workers")) {
                unsigned id = (unsigned) get_u64(o, "slot");
                int ipc = get_int(o, "ipc_fd", -1), out = get_int(o, "output_fd", -1);
                Worker from = {
                        .generation = (unsigned) get_u64(o, "generation"),
                        .pid = get_int(o, "pid", 0),
                        .state = (WorkerState) get_int(o, "state", WORKER_READY),
                        .role = (WorkerRole) get_int(o, "role", WORKER_CURRENT),
                        .stop_sent = get_bool(o, "stop_sent"),
                        .said_stopping = get_bool(o, "said_stopping"),
                        .counted = get_bool(o, "counted"),
                        .failure = get_str(o, "failure"),
                        .start_usec = get_u64(o, "start_usec"),
                        .ready_usec = get_u64(o, "ready_usec"),
                        .deadline = get_u64(o, "deadline"),
                        .handed = get_u64(o, "handed"),
                        .closed = get_u64(o, "closed"),
                        .reports_closes = get_bool(o, "reports_closes"),
                };
                snprintf(from.status, sizeof(from.status), "%s", get_str(o, "status") ?: "");
                Worker *w = id < n && from.pid > 0 && from.state < WORKER_EXITED
                                    ? slot_adopt_worker(m->slots[id], &from, config)
                                    : NULL;
                if (!w) {
                        log_error("upgrade: cannot adopt worker pid %d of slot %u", (int) from.pid, id);
                        safe_close(ipc);
                        safe_close(out);
                        continue;
                }
                (void) worker_io_adopt(m, w, ipc >= 3 ? ipc : -EBADF, out >= 3 ? out : -EBADF);
        }
        handoff_set_slots(&m->handoff, m->slots, m->n_slots, config);

        /* Workers that exited while we were exec'ing are zombies waiting for
         * us; notifications they sent are still in the notify socket. */
        manager_reap(m);

        uint64_t now = now_usec(), asked = get_u64(state, "request_usec");
        double ms = asked && now >= asked ? (double) (now - asked) / 1000.0 : 0;
        LogFields f = LOG_FIELDS_NONE;
        f.event = "upgrade_done";
        f.generation = m->pool.generation;
        log_emit(LOG_INFO, &f, "upgraded in place to corrald %s (%s): %u worker%s kept, %.1f ms", CORRAL_VERSION,
                 binary, m->pool.n_workers, m->pool.n_workers == 1 ? "" : "s", ms);
        (void) sd_notifyf(0, "READY=1\nSTATUS=%s", m->status);

        /* The client that asked is still connected: its socket was carried. */
        int reply = get_int(state, "reply_fd", -1);
        if (reply >= 3) {
                cJSON *res = cJSON_CreateObject();
                cJSON_AddStringToObject(res, "type", "result");
                cJSON_AddTrueToObject(res, "ok");
                cJSON_AddNumberToObject(res, "pid", getpid());
                cJSON_AddStringToObject(res, "version", CORRAL_VERSION);
                cJSON_AddStringToObject(res, "binary", binary);
                cJSON_AddNumberToObject(res, "upgrades", m->upgrades);
                cJSON_AddNumberToObject(res, "workers", m->pool.n_workers);
                cJSON_AddNumberToObject(res, "duration_ms", ms);
                send_line(reply, res);
                safe_close(reply);
        }
        state = (cJSON_Delete(state), NULL);

        sigset_t set;
        handled_signals(&set);
        (void) sigprocmask(SIG_UNBLOCK, &set, NULL);
        return 0;
}

static void on_orphan_timer_closed(uv_handle_t *h) {
}

static void on_orphans_overdue(uv_timer_t *t) {
        for (unsigned i = 0; i < n_orphans; i++) {
                log_warning("upgrade: pid %d, a worker of the previous corrald, did not exit in time; sending SIGKILL",
                            (int) orphans[i]);
                /* The whole group, as for any worker (lifecycle.md). */
                (void) kill(-orphans[i], SIGKILL);
                (void) kill(orphans[i], SIGKILL);
        }
        uv_close((uv_handle_t *) t, on_orphan_timer_closed);
}

void upgrade_stop_orphans(Manager *m) {
        int sig = manager_config(m)->stop_signal;
        if (fallback_reply >= 3) {
                cJSON *res = cJSON_CreateObject();
                char msg[400];
                snprintf(msg, sizeof(msg), "the new corrald %s started clean instead: %s", CORRAL_VERSION,
                         fallback_why);
                cJSON_AddStringToObject(res, "type", "result");
                cJSON_AddFalseToObject(res, "ok");
                cJSON_AddStringToObject(res, "error", msg);
                send_line(fallback_reply, res);
                fallback_reply = safe_close(fallback_reply);
        }
        for (unsigned i = 0; i < n_orphans; i++) {
                log_notice("upgrade: stopping pid %d, a worker of the previous corrald, with %s", (int) orphans[i],
                           signal_to_string(sig));
                (void) kill(orphans[i], sig);
                (void) kill(orphans[i], SIGCONT);
        }
        uint64_t timeout = manager_config(m)->stop_timeout_ms;
        /* Unreferenced: it never keeps a stopping corrald's loop alive. */
        if (n_orphans > 0 && timeout > 0 && uv_timer_init(m->loop, &orphan_timer) == 0) {
                uv_unref((uv_handle_t *) &orphan_timer);
                (void) uv_timer_start(&orphan_timer, on_orphans_overdue, timeout, 0);
        }
        sigset_t set;
        handled_signals(&set);
        (void) sigprocmask(SIG_UNBLOCK, &set, NULL);
}

void upgrade_reap_orphans(void) {
        for (unsigned i = 0; i < n_orphans;) {
                int st;
                if (waitpid(orphans[i], &st, WNOHANG) == orphans[i] || errno == ECHILD)
                        orphans[i] = orphans[--n_orphans];
                else
                        i++;
        }
        if (n_orphans == 0) {
                free(orphans);
                orphans = NULL;
        }
}

/* ---- writing the state -------------------------------------------------- */

static void add_u64(cJSON *o, const char *key, uint64_t v) {
        cJSON_AddNumberToObject(o, key, (double) v);
}

/* The fds carried across execve(): FD_CLOEXEC cleared on exactly these. */
typedef struct Carried {
        int *fds;
        unsigned n;
} Carried;

static int carry(Carried *c, int fd) {
        if (fd < 0)
                return -1;
        int *l = realloc(c->fds, (c->n + 1) * sizeof(int));
        if (!l)
                return -ENOMEM;
        c->fds = l;
        c->fds[c->n++] = fd;
        return fd;
}

static cJSON *serialise(Manager *m, ControlConn *client, uint64_t request_usec, Carried *c) {
        cJSON *s = cJSON_CreateObject(), *a;
        const char *fake = getenv("CORRALD_UPGRADE_TEST_VERSION");   /* tests: an incompatible state */
        cJSON_AddStringToObject(s, "format", "corrald-state");
        cJSON_AddNumberToObject(s, "version", fake ? atoi(fake) : UPGRADE_STATE_VERSION);
        cJSON_AddStringToObject(s, "written_by", CORRAL_VERSION);
        add_u64(s, "request_usec", request_usec);
        cJSON_AddStringToObject(s, "balance", balance_to_string(manager_config(m)->balance));
        cJSON_AddNumberToObject(s, "reply_fd", client ? carry(c, control_conn_fd(client)) : -1);
        add_u64(s, "upgrades", m->upgrades);
        add_u64(s, "start_usec", m->start_usec);
        add_u64(s, "generation", m->pool.generation);
        add_u64(s, "rollout_serial", m->rollout_serial);
        add_u64(s, "recycle_pause_until", m->recycle_pause_until);
        add_u64(s, "recycle_next", m->recycle_next);
        add_u64(s, "messages", m->n_messages);
        add_u64(s, "undeliverable", m->n_undeliverable);
        add_u64(s, "notify_dropped", m->notify.n_dropped);
        cJSON_AddStringToObject(s, "status", m->status);
        cJSON_AddBoolToObject(s, "gave_up", m->pool.gave_up);
        cJSON_AddStringToObject(s, "giveup_reason", m->pool.giveup_reason);
        a = cJSON_AddArrayToObject(s, "failures");
        const FailureWindow *fw = &m->pool.failures;
        unsigned cap = fw->limit + 1;
        for (unsigned k = 0; a && k < fw->count; k++)
                cJSON_AddItemToArray(a, cJSON_CreateNumber((double) fw->stamps[(fw->head + cap - fw->count + k) % cap]));

        cJSON_AddNumberToObject(s, "notify_fd", carry(c, m->notify.fd));
        cJSON_AddNumberToObject(s, "control_fd", carry(c, control_server_fd(&m->control)));
        if (m->control.path)
                cJSON_AddStringToObject(s, "control_path", m->control.path);
        a = cJSON_AddArrayToObject(s, "listeners");
        for (unsigned i = 0; a && i < m->listeners.n; i++) {
                const Listener *l = &m->listeners.items[i];
                cJSON *e = cJSON_CreateObject();
                cJSON_AddNumberToObject(e, "fd", carry(c, l->fd));
                cJSON_AddStringToObject(e, "name", l->name);
                cJSON_AddStringToObject(e, "display", l->display);
                if (l->unlink_path)
                        cJSON_AddStringToObject(e, "unlink", l->unlink_path);
                cJSON_AddBoolToObject(e, "activated", m->listeners.activated);
                cJSON_AddItemToArray(a, e);
        }
        a = cJSON_AddArrayToObject(s, "slots");
        for (unsigned i = 0; a && i < m->n_slots; i++) {
                const Slot *sl = m->slots[i];
                cJSON *e = cJSON_CreateObject();
                add_u64(e, "id", slot_id(sl));
                cJSON_AddNumberToObject(e, "state", slot_state(sl));
                cJSON_AddStringToObject(e, "state_name", slot_state_to_string(slot_state(sl)));
                add_u64(e, "restarts", slot_restarts(sl));
                add_u64(e, "consecutive_failures", slot_consecutive_failures(sl));
                add_u64(e, "deadline", slot_deadline(sl));
                cJSON_AddItemToArray(a, e);
        }
        a = cJSON_AddArrayToObject(s, "workers");
        LIST_FOREACH(all, w, m->pool.workers) {
                if (!a || w->pid <= 0)
                        continue;
                int ipc, out;
                (void) worker_io_fds(w, &ipc, &out);
                cJSON *e = cJSON_CreateObject();
                add_u64(e, "slot", w->id);
                cJSON_AddNumberToObject(e, "pid", w->pid);
                add_u64(e, "generation", w->generation);
                cJSON_AddNumberToObject(e, "state", w->state);
                cJSON_AddNumberToObject(e, "role", w->role);
                cJSON_AddBoolToObject(e, "stop_sent", w->stop_sent);
                cJSON_AddBoolToObject(e, "said_stopping", w->said_stopping);
                cJSON_AddBoolToObject(e, "counted", w->counted);
                if (w->failure)
                        cJSON_AddStringToObject(e, "failure", w->failure);
                add_u64(e, "start_usec", w->start_usec);
                add_u64(e, "ready_usec", w->ready_usec);
                add_u64(e, "deadline", w->deadline);
                cJSON_AddStringToObject(e, "status", w->status);
                add_u64(e, "handed", w->handed);
                add_u64(e, "closed", w->closed);
                cJSON_AddBoolToObject(e, "reports_closes", w->reports_closes);
                cJSON_AddNumberToObject(e, "ipc_fd", carry(c, ipc));
                cJSON_AddNumberToObject(e, "output_fd", carry(c, out));
                cJSON_AddItemToArray(a, e);
        }
        return s;
}

/* Say why the upgrade did not happen: in *ret_error for the client, and in
 * the log (a refusal is a warning, anything else an upgrade_failed error). */
_printf_(3, 4) static int fail(int prio, char **ret_error, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(ret_error, fmt, ap) < 0)
                *ret_error = NULL;
        va_end(ap);
        LogFields f = LOG_FIELDS_NONE;
        f.event = prio <= LOG_ERR ? "upgrade_failed" : NULL;
        log_emit(prio, &f, "%s%s", *ret_error ? *ret_error : "upgrade failed: out of memory",
                 prio <= LOG_ERR ? "; corrald keeps running" : "");
        return -1;
}

static const char *refusal(const Manager *m) {
        if (m->pool.stopping)
                return "corrald is stopping";
        if (!m->sent_ready)
                return "corrald is still starting its workers";
        if (m->rollout)
                return m->rollout->kind == ROLLOUT_RECYCLE ? "a recycle is in progress"
                                                           : "a reload or restart is in progress";
        if (m->n_unstarted > 0)
                return "workers are still being started";
        /* A half-written line would reach the worker cut short, followed
         * by the new corrald's lines; that state passes in a moment. */
        LIST_FOREACH(all, w, m->pool.workers)
                if (w->pid > 0 && w->host && worker_ipc(w)->mid_line)
                        return "a message to a worker is half sent; try again";
        /* A connection accepted but not yet handed to a worker would be
         * closed by the exec; it is handed on in a moment. */
        if (m->handoff.started && m->handoff.pending_fd >= 0)
                return "a connection is waiting for a worker; try again";
        /* Slots scaled away drain outside m->slots; their ids may repeat. */
        LIST_FOREACH(all, w, m->pool.workers)
                if (w->id >= m->n_slots || m->slots[w->id] != w->slot)
                        return "a scale-down is still draining";
        return NULL;
}

int upgrade_exec(Manager *m, ControlConn *client, char **ret_error) {
        uint64_t request_usec = now_usec();
        const char *path = getenv(UPGRADE_ENV_BINARY) ?: binary;
        const char *why = refusal(m);
        Carried c = {};
        int r;

        *ret_error = NULL;
        if (why) {
                (void) fail(LOG_WARNING, ret_error, "upgrade refused: %s", why);
                return -EBUSY;
        }
        if (!path[0] || !saved_argv) {
                (void) fail(LOG_ERR, ret_error, "upgrade: the path of the corrald binary is unknown");
                return -ENOENT;
        }
        if (access(path, X_OK) == -1) {
                r = -errno;
                (void) fail(LOG_ERR, ret_error, "upgrade: cannot execute %s: %s", path, strerror(-r));
                return r;
        }

        cJSON *s = serialise(m, client, request_usec, &c);
        char *text = s ? cJSON_PrintUnformatted(s) : NULL;
        cJSON_Delete(s);
        _cleanup_close_ int memfd = memfd_create("corrald-state", MFD_CLOEXEC);
        if (!text || memfd < 0) {
                r = memfd < 0 ? -errno : -ENOMEM;
                free(text);
                free(c.fds);
                (void) fail(LOG_ERR, ret_error, "upgrade: cannot write the state: %s", strerror(-r));
                return r;
        }
        size_t len = strlen(text);
        for (size_t off = 0; off < len;) {
                ssize_t n = write(memfd, text + off, len - off);
                if (n == -1 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        r = n == -1 ? -errno : -EIO;
                        free(text);
                        free(c.fds);
                        (void) fail(LOG_ERR, ret_error, "upgrade: cannot write the state: %s", strerror(-r));
                        return r;
                }
                off += (size_t) n;
        }
        free(text);

        /* The environment of the new corrald: ours, and where the state is. */
        size_t n_env = 0;
        while (environ[n_env])
                n_env++;
        char **env = calloc(n_env + 2, sizeof(char *));
        char *var = NULL;
        if (!env || asprintf(&var, "%s=%d", UPGRADE_ENV_STATE_FD, memfd) < 0) {
                free(env);
                free(c.fds);
                (void) fail(LOG_ERR, ret_error, "upgrade: out of memory");
                return -ENOMEM;
        }
        memcpy(env, environ, n_env * sizeof(char *));
        env[n_env] = var;

        LogFields f = LOG_FIELDS_NONE;
        f.event = "upgrade_begin";
        f.generation = m->pool.generation;
        log_emit(LOG_INFO, &f, "upgrading in place: executing %s with %u worker%s and %u file descriptors carried",
                 path, m->pool.n_workers, m->pool.n_workers == 1 ? "" : "s", c.n + 1);
        (void) sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=Upgrading: executing %s",
                          (unsigned long long) now_usec(), path);

        (void) fd_cloexec(memfd, false);
        for (unsigned i = 0; i < c.n; i++)
                (void) fd_cloexec(c.fds[i], false);
        sigset_t set, old;
        handled_signals(&set);
        (void) sigprocmask(SIG_BLOCK, &set, &old);

        execve(path, saved_argv, env);

        /* Still here: the new binary could not be executed. Nothing was
         * lost; take back what we opened up and go on. */
        r = -errno;
        (void) sigprocmask(SIG_SETMASK, &old, NULL);
        for (unsigned i = 0; i < c.n; i++)
                (void) fd_cloexec(c.fds[i], true);
        free(c.fds);
        free(var);
        free(env);
        (void) fail(LOG_ERR, ret_error, "upgrade: cannot execute %s: %s", path, strerror(-r));
        (void) sd_notifyf(0, "READY=1\nSTATUS=%s", m->status);
        return r;
}
