/* upgrade: see upgrade.h and docs/internals/upgrade.md.
 *
 * Owns the in-place upgrade around the state (upgrade-state.c): taking it
 * from the manager and writing it to a memfd, having the new binary check
 * it (the probe) before anything is risked, the execve(), and in the new
 * process checking what only a live process can check (every named fd is
 * open and of its kind, every pid is our own child) before restoring. It
 * changes slots and workers only through slot.c's restore entry points
 * (slot_restore, slot_adopt_worker, pool_restore), and their I/O through
 * the host (host_adopt_worker()).
 *
 * Trust: the state arrives through the environment, which whoever starts
 * corrald controls. Nothing in it is signalled, closed or adopted before it
 * checked out; a pid <= 1 is never signalled (kill_process()). */
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "fd-util.h"
#include "ipc.h"
#include "iphash.h"
#include "log.h"
#include "manager.h"
#include "procfs.h"
#include "spawn.h"
#include "upgrade-state.h"
#include "upgrade.h"
#include "util.h"

extern char **environ;

/* How long the new binary may take to check the state before the upgrade
 * is refused; it needs milliseconds. */
#define PROBE_TIMEOUT_MS 5000
#define PROBE_ENV "CORRALD_UPGRADE_PROBE"

static char **saved_argv;
static char binary[4096];

/* The new process: the state handed to us. */
static bool state_given;
static bool state_ok;                /* `given` parsed and its fds checked out */
static UpgradeState given;
static char *given_text;             /* for the envelope when `given` cannot be used */
static size_t given_len;
static char state_error[300];        /* why `given` cannot be used */
static bool probing;                 /* started as the probe: check, answer, exit */

/* After a fall back: the client(s) to tell, once the control socket is
 * bound again (upgrade_stop_orphans()). */
static int fallback_fds[1 + UPGRADE_WAITERS_MAX];
static unsigned n_fallback_fds;
static char fallback_why[320];

/* Children that are not workers, reaped quietly: the previous corrald's
 * workers after a fall back (orphans, stopped) and finished probes. */
static pid_t *strays;
static unsigned n_strays, n_orphans;   /* the first n_orphans of strays are orphans */
static uv_timer_t orphan_timer;        /* SIGKILL for orphans still there after stop.timeout_ms */

/* The old process: the check in progress and who waits for the result. */
typedef struct Probe {
        uv_poll_t poll;
        uv_timer_t timer;
        Manager *manager;
        int fd;                      /* our end of the verdict socket */
        pid_t pid;
        char verdict[512];
        size_t len;
        unsigned n_open;             /* handles not closed yet; freed at 0 */
} Probe;
static Probe *probe;
static uint64_t request_usec;          /* when the upgrade in progress was asked for */
static ControlConn *waiters[UPGRADE_WAITERS_MAX];
static unsigned n_waiters;


/* ---- the new process: reading and checking ------------------------------ */

static int read_all(int fd, char **ret, size_t *ret_len) {
        size_t len = 0, cap = 0;
        _cleanup_free_ char *buf = NULL;
        for (;;) {
                if (cap - len < 4096) {
                        if (cap > UPGRADE_STATE_MAX)
                                return -EFBIG;
                        cap = cap ? cap * 2 : 65536;
                        char *b = realloc(buf, cap + 1);
                        if (!b)
                                return -ENOMEM;
                        buf = b;
                }
                ssize_t n = read(fd, buf + len, cap - len);
                if (n == -1 && errno == EINTR)
                        continue;
                if (n == -1)
                        return -errno;
                if (n == 0)
                        break;
                len += (size_t) n;
        }
        buf[len] = 0;
        *ret = TAKE_PTR(buf);
        *ret_len = len;
        return 0;
}

typedef enum FdKind {
        FD_LISTENER,      /* any socket */
        FD_DGRAM,         /* the notify socket */
        FD_STREAM,        /* a control client, an IPC channel */
        FD_LISTENING,     /* the control socket */
        FD_PIPE,          /* a worker's output */
} FdKind;

/* Whether fd is open in this process and of the kind the state says. */
static bool fd_is(int fd, FdKind kind) {
        struct stat st;
        int type = 0, acc = 0;
        socklen_t l = sizeof(int);

        if (fd < 3 || fstat(fd, &st) == -1)
                return false;
        if (kind == FD_PIPE)
                return S_ISFIFO(st.st_mode);
        if (!S_ISSOCK(st.st_mode) || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) == -1)
                return false;
        switch (kind) {
        case FD_DGRAM:
                return type == SOCK_DGRAM;
        case FD_STREAM:
                return type == SOCK_STREAM;
        case FD_LISTENING:
                l = sizeof(int);
                return type == SOCK_STREAM && getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &l) == 0 && acc;
        default:
                return true;
        }
}

/* Check every fd the state names against what this process has; in the
 * envelope (lenient), forget those that do not check out instead. Returns
 * 0, or -EBADMSG with the reason in state_error. */
static int check_fds(UpgradeState *s, bool lenient) {
#define CHECK(fdp, kind, what, ...)                                                                     \
        do {                                                                                            \
                if (*(fdp) >= 0 && !fd_is(*(fdp), kind)) {                                              \
                        if (!lenient) {                                                                 \
                                snprintf(state_error, sizeof(state_error),                              \
                                         what ": file descriptor %d is not open or not " #kind,         \
                                         ##__VA_ARGS__, *(fdp));                                        \
                                return -EBADMSG;                                                        \
                        }                                                                               \
                        *(fdp) = -1;                                                                    \
                }                                                                                       \
        } while (0)

        CHECK(&s->notify_fd, FD_DGRAM, "notify_fd");
        CHECK(&s->control_fd, FD_LISTENING, "control_fd");
        CHECK(&s->reply_fd, FD_STREAM, "reply_fd");
        for (unsigned i = 0; i < s->n_waiter_fds; i++)
                CHECK(&s->waiter_fds[i], FD_STREAM, "waiter_fds[%u]", i);
        for (unsigned i = 0; i < s->n_clients; i++)
                CHECK(&s->clients[i].fd, FD_STREAM, "clients[%u].fd", i);
        for (unsigned i = 0; i < s->n_listeners; i++)
                CHECK(&s->listeners[i].fd, FD_LISTENER, "listeners[%u].fd", i);
        for (unsigned i = 0; i < s->n_workers; i++) {
                CHECK(&s->workers[i].ipc_fd, FD_STREAM, "workers[%u].ipc_fd", i);
                CHECK(&s->workers[i].peer_fd, FD_STREAM, "workers[%u].peer_fd", i);
                CHECK(&s->workers[i].output_fd, FD_PIPE, "workers[%u].output_fd", i);
        }
#undef CHECK
        return 0;
}

/* Whether pid is a child of parent (a zombie still is). */
static bool is_child_of(pid_t pid, pid_t parent) {
        pid_t ppid;
        return pid > 1 && procfs_read_ppid(pid, &ppid) >= 0 && ppid == parent;
}

/* Every worker of the state must be a child of parent: adopting, and later
 * signalling, a process that is not would reach a stranger. The probe
 * (gone_ok) runs beside the old corrald, which may reap a worker
 * meanwhile: a pid that no longer exists is fine there. In the new
 * corrald nothing has reaped since the state was written. */
static int check_pids(const UpgradeState *s, pid_t parent, bool gone_ok) {
        for (unsigned i = 0; i < s->n_workers; i++) {
                pid_t ppid;
                int r = procfs_read_ppid(s->workers[i].pid, &ppid);
                if (gone_ok && r == -ENOENT)
                        continue;
                if (r < 0 || ppid != parent) {
                        snprintf(state_error, sizeof(state_error),
                                 "workers[%u].pid: %d is not a child of this corrald", i, s->workers[i].pid);
                        return -EBADMSG;
                }
        }
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
        probing = getenv(PROBE_ENV) != NULL;
        (void) unsetenv(PROBE_ENV);
        uint64_t fd64;
        int r = parse_u64(e, &fd64);
        if (r < 0 || fd64 < 3 || fd64 > INT32_MAX) {
                snprintf(state_error, sizeof(state_error), "%s=%s is not a file descriptor", UPGRADE_ENV_STATE_FD, e);
                (void) unsetenv(UPGRADE_ENV_STATE_FD);
                return;
        }
        (void) unsetenv(UPGRADE_ENV_STATE_FD);
        int fd = (int) fd64;
        if (lseek(fd, 0, SEEK_SET) == -1 || (r = read_all(fd, &given_text, &given_len)) < 0) {
                snprintf(state_error, sizeof(state_error), "cannot read the state (fd %d): %s", fd,
                         strerror(errno));
                safe_close(fd);
                return;
        }
        safe_close(fd);
        r = upgrade_state_parse(given_text, given_len, &given, state_error, sizeof(state_error));
        if (r == -ENOMEM)
                snprintf(state_error, sizeof(state_error), "out of memory reading the state");
        /* The probe runs without the carried fds: the old corrald keeps
         * them until the probe said yes. */
        if (r >= 0 && !probing)
                r = check_fds(&given, false);
        state_ok = r >= 0;
}

bool upgrade_pending(void) {
        return state_given;
}

const char *upgrade_config_text(void) {
        return state_ok ? given.config : NULL;
}

/* ---- the probe: the new binary checks the state, the old one waits ------ */

int upgrade_probe_answer(const Config *config, const char *config_error) {
        char verdict[600];
        const char *ipc = getenv("CORRAL_IPC_FD");
        uint64_t fd64;

        if (!probing)
                return -1;
        if (!ipc || parse_u64(ipc, &fd64) < 0 || fd64 < 3 || fd64 > INT32_MAX) {
                fprintf(stderr, "corrald: %s is set, but CORRAL_IPC_FD is not\n", PROBE_ENV);
                return 2;
        }
        if (!state_ok)
                snprintf(verdict, sizeof(verdict), "its state cannot be read: %s", state_error);
        else if (config_error || !config)
                snprintf(verdict, sizeof(verdict), "the running configuration is refused: %s",
                         config_error ? config_error : "out of memory");
        else if (config->balance != given.balance)
                snprintf(verdict, sizeof(verdict), "the configuration says balance %s, the workers run with %s",
                         balance_to_string(config->balance), balance_to_string(given.balance));
        else if (check_pids(&given, getppid(), true) < 0)
                snprintf(verdict, sizeof(verdict), "%s", state_error);
        else
                snprintf(verdict, sizeof(verdict), "ok");
        bool ok = strcmp(verdict, "ok") == 0;
        (void) loop_write((int) fd64, verdict, strlen(verdict));
        return ok ? 0 : 1;
}

/* ---- the new process: restoring ---------------------------------------- */

static void adopt_listeners(Manager *m, const UpgradeState *s) {
        for (unsigned i = 0; i < s->n_listeners; i++) {
                const UpgradeListener *l = &s->listeners[i];
                if (l->fd < 0)
                        continue;
                int r = listener_set_adopt(&m->listeners, l->fd, l->name ? l->name : "unknown",
                                           l->display ? l->display : "?", l->unlink_path, l->activated);
                if (r < 0)
                        log_warning("upgrade: cannot adopt listener %u (fd %d): %s", i, l->fd, strerror(-r));
        }
}

/* Send obj (taken) as one line on a carried client connection, and close
 * it. A reply on an otherwise idle socket fits in its buffer; if it does
 * not, the client loses it (and reports the lost connection). */
static void answer(int fd, cJSON *obj) {
        char *line = obj ? cJSON_PrintUnformatted(obj) : NULL;
        cJSON_Delete(obj);
        if (line) {
                size_t len = strlen(line);
                line[len] = '\n';   /* replaces the NUL; the write is bounded by len + 1 */
                (void) send(fd, line, len + 1, MSG_DONTWAIT | MSG_NOSIGNAL);
                free(line);
        }
        safe_close(fd);
}

static void add_stray(pid_t pid, bool orphan) {
        pid_t *p = realloc(strays, (n_strays + 1) * sizeof(pid_t));
        if (!p) {
                log_warning("out of memory: pid %d will be reaped only when corrald exits", (int) pid);
                return;
        }
        strays = p;
        strays[n_strays++] = pid;
        if (orphan) {
                /* Keep the orphans first. */
                strays[n_strays - 1] = strays[n_orphans];
                strays[n_orphans++] = pid;
        }
}

/* The state cannot be restored: start clean with what checks out of any
 * version's envelope (listeners, fds to close, workers to stop). */
static int fall_back(Manager *m, const char *why) {
        _cleanup_(upgrade_state_donep) UpgradeState env = {};
        LogFields f = LOG_FIELDS_NONE;
        f.event = "upgrade_failed";
        log_emit(LOG_ERR, &f, "upgrade: %s; starting clean: the listeners are kept, the previous workers are stopped",
                 why);

        int r = given_text ? upgrade_state_parse_envelope(given_text, given_len, &env) : -EBADMSG;
        if (r == -ENOMEM)
                return log_error_errno(r, "upgrade: out of memory");
        if (r >= 0)
                (void) check_fds(&env, true);
        adopt_listeners(m, &env);
        /* Without listeners a start would serve nothing: exit 1, the
         * workers die with us (PR_SET_PDEATHSIG) and systemd's Restart=
         * takes over. */
        if (m->listeners.n == 0 && env.n_listeners > 0)
                return log_error_errno(-EBADMSG, "upgrade: no listening socket could be adopted; exiting");
        if (r < 0)
                return log_error_errno(-EBADMSG, "upgrade: not even the state's envelope can be read; exiting");
        safe_close(env.notify_fd);
        safe_close(env.control_fd);
        /* Answered by upgrade_stop_orphans(), once the control socket is
         * bound again: a client that goes on to ask for the status must
         * not find it missing. */
        n_fallback_fds = 0;
        if (env.reply_fd >= 0)
                fallback_fds[n_fallback_fds++] = env.reply_fd;
        for (unsigned i = 0; i < env.n_waiter_fds && n_fallback_fds < ELEMENTSOF(fallback_fds); i++)
                if (env.waiter_fds[i] >= 0)
                        fallback_fds[n_fallback_fds++] = env.waiter_fds[i];
        snprintf(fallback_why, sizeof(fallback_why), "%s", why);
        for (unsigned i = 0; i < env.n_clients; i++)
                safe_close(env.clients[i].fd);
        for (unsigned i = 0; i < env.n_workers; i++) {
                const UpgradeWorker *w = &env.workers[i];
                safe_close(w->ipc_fd);
                safe_close(w->peer_fd);
                safe_close(w->output_fd);
                /* Only our own children: a forged pid must stay untouched. */
                if (is_child_of(w->pid, getpid()))
                        add_stray(w->pid, true);
                else
                        log_warning("upgrade: pid %d is not a child of this corrald; leaving it alone", w->pid);
        }
        return 0;
}

int upgrade_adopt_fds(Manager *m, int *ret_notify_fd, int *ret_control_fd) {
        *ret_notify_fd = *ret_control_fd = -EBADF;
        if (!state_ok)
                return fall_back(m, state_error[0] ? state_error : "no state");
        /* A version 1 state carries no configuration: the file was read,
         * and one edited to another balance since needs new workers. */
        if (given.balance != manager_config(m)->balance) {
                char why[160];
                snprintf(why, sizeof(why), "the configuration now says balance %s, the workers run with %s",
                         balance_to_string(manager_config(m)->balance), balance_to_string(given.balance));
                return fall_back(m, why);
        }
        if (check_pids(&given, getpid(), false) < 0)
                return fall_back(m, state_error);
        adopt_listeners(m, &given);
        if (m->listeners.n != given.n_listeners)
                return log_error_errno(-EBADMSG, "upgrade: cannot adopt the listeners");
        *ret_notify_fd = TAKE_FD(given.notify_fd);
        *ret_control_fd = TAKE_FD(given.control_fd);
        return 1;
}

/* Worker.failure points at a static string: slot_adopt_worker() maps it
 * back to the lifecycle's own reasons. */
static void restore_worker(Manager *m, UpgradeWorker *uw) {
        Worker from = {
                .generation = uw->generation,
                .pid = uw->pid,
                .state = uw->state,
                .role = uw->role,
                .stop_sent = uw->stop_sent,
                .said_stopping = uw->said_stopping,
                .counted = uw->counted,
                .failure = uw->failure,
                .start_usec = uw->start_usec,
                .ready_usec = uw->ready_usec,
                .deadline = uw->deadline,
                .handed = uw->handed,
                .closed = uw->closed,
                .fd_limit_reports = uw->fd_limit_reports,
                .fd_limit_lost = uw->fd_limit_lost,
                .reports_closes = uw->reports_closes,
        };
        snprintf(from.status, sizeof(from.status), "%s", uw->status ? uw->status : "");
        Worker *w = slot_adopt_worker(m->slots[uw->slot], &from, manager_config(m));
        if (!w) {
                /* Out of memory: it stays our child, unsupervised; stop it. */
                log_error("upgrade: cannot adopt worker pid %d of slot %u: out of memory; stopping it", uw->pid,
                          uw->slot);
                (void) kill_process(uw->pid, SIGKILL, true);
                add_stray(uw->pid, false);
                safe_close(uw->ipc_fd);
                safe_close(uw->peer_fd);
                safe_close(uw->output_fd);
                return;
        }
        (void) host_adopt_worker(&m->host, w, TAKE_FD(uw->ipc_fd), TAKE_FD(uw->peer_fd), TAKE_FD(uw->output_fd));
        if (uw->ipc_tail && w->ipc) {
                int r = ipc_resume_line(w->ipc, uw->ipc_tail, strlen(uw->ipc_tail));
                if (r < 0)
                        log_warning("%s: cannot finish the message line the previous corrald half sent: %s",
                                    w->who, strerror(-r));
        }
}

int upgrade_restore(Manager *m) {
        UpgradeState *s = &given;

        pool_restore(&m->pool, s->generation, s->gave_up, s->giveup_reason, s->failures, s->n_failures);
        m->start_usec = s->start_usec ?: m->start_usec;
        m->upgrades = s->upgrades + 1;
        m->sent_ready = true;
        m->rollout_serial = s->rollout_serial;
        m->recycle_pause_until = s->recycle_pause_until;
        m->recycle_next = s->recycle_next;
        m->messages.n_messages = s->messages;
        m->draining = s->draining;
        m->reload_failed = s->reload_failed;
        m->reloads_done = s->reloads_done;
        m->scaled = s->scaled;
        m->scaled_file_workers = s->scaled_file_workers;
        m->reloads_failed = s->reloads_failed;
        m->messages.n_undeliverable = s->undeliverable;
        m->notify.n_dropped = s->notify_dropped;
        snprintf(m->status, sizeof(m->status), "%s", s->status ? s->status : "");
        /* ip-hash: the same key, so that every client keeps its slot. */
        if (s->hash_key && iphash_key_parse(s->hash_key, m->handoff.hash_key) < 0)
                log_warning("upgrade: the previous corrald's ip-hash key is not 32 hex digits: a new one maps "
                            "clients to other workers");

        /* Slots in id order: m->slots[i] has id i (upgrade-state.c checked
         * that the ids are 0..n-1). */
        m->slots = calloc(s->n_slots, sizeof(Slot *));
        if (!m->slots)
                return log_error_errno(-ENOMEM, "upgrade: out of memory");
        for (unsigned i = 0; i < s->n_slots; i++)
                if (!(m->slots[i] = slot_new(&m->pool, i)))
                        return log_error_errno(-ENOMEM, "upgrade: out of memory");
        m->n_slots = s->n_slots;
        for (unsigned i = 0; i < s->n_slots; i++) {
                const UpgradeSlot *sl = &s->slots[i];
                slot_restore(m->slots[sl->id], sl->state, sl->restarts, sl->consecutive_failures, sl->last_failure,
                             sl->deadline);
        }
        for (unsigned i = 0; i < s->n_workers; i++)
                restore_worker(m, &s->workers[i]);
        handoff_set_slots(&m->handoff, m->slots, m->n_slots, manager_config(m));
        messages_set_slots(&m->messages, m->slots, m->n_slots);

        uint64_t now = now_usec();
        double ms = s->request_usec && now >= s->request_usec ? (double) (now - s->request_usec) / 1000.0 : 0;
        LogFields f = LOG_FIELDS_NONE;
        f.event = "upgrade_done";
        f.generation = m->pool.generation;
        log_emit(LOG_INFO, &f, "upgraded in place to corrald %s (%s): %u worker%s kept, %.1f ms", CORRAL_VERSION,
                 binary, m->pool.n_workers, m->pool.n_workers == 1 ? "" : "s", ms);
        (void) sd_notifyf(0, "READY=1\nSTATUS=%s", m->status);

        /* The clients that asked are still connected: their sockets were
         * carried. Each gets the same result. */
        for (unsigned i = 0; i <= s->n_waiter_fds; i++) {
                int fd = i == 0 ? s->reply_fd : s->waiter_fds[i - 1];
                if (fd < 0)
                        continue;
                cJSON *res = cJSON_CreateObject();
                cJSON_AddStringToObject(res, "type", "result");
                cJSON_AddTrueToObject(res, "ok");
                cJSON_AddNumberToObject(res, "pid", getpid());
                cJSON_AddStringToObject(res, "version", CORRAL_VERSION);
                cJSON_AddStringToObject(res, "binary", binary);
                cJSON_AddNumberToObject(res, "upgrades", m->upgrades);
                cJSON_AddNumberToObject(res, "workers", m->pool.n_workers);
                cJSON_AddNumberToObject(res, "duration_ms", ms);
                answer(fd, res);
        }
        s->reply_fd = -1;
        s->n_waiter_fds = 0;
        /* The other clients go on where the previous corrald left them. */
        for (unsigned i = 0; i < s->n_clients; i++) {
                UpgradeClient *cl = &s->clients[i];
                int r = control_server_adopt_conn(&m->control, TAKE_FD(cl->fd), cl->unread ? cl->unread : "",
                                                  cl->unread ? strlen(cl->unread) : 0);
                if (r < 0)
                        log_warning("upgrade: cannot take over control client %u: %s", i, strerror(-r));
        }
        s->n_clients = 0;
        upgrade_state_done(s);
        free(given_text);
        given_text = NULL;

        (void) sigprocmask(SIG_UNBLOCK, &m->handled_signals, NULL);
        return 0;
}

static void on_orphans_overdue(uv_timer_t *t) {
        for (unsigned i = 0; i < n_orphans; i++) {
                log_warning("upgrade: pid %d, a worker of the previous corrald, did not exit in time; sending SIGKILL",
                            (int) strays[i]);
                /* The whole group, as for any worker (lifecycle.md). */
                (void) kill_process(strays[i], SIGKILL, true);
        }
        uv_close((uv_handle_t *) t, NULL);
}

void upgrade_stop_orphans(Manager *m) {
        int sig = manager_config(m)->stop_signal;
        for (unsigned i = 0; i < n_fallback_fds; i++) {
                cJSON *res = cJSON_CreateObject();
                char msg[400];
                snprintf(msg, sizeof(msg), "the new corrald %s started clean instead: %s", CORRAL_VERSION,
                         fallback_why);
                cJSON_AddStringToObject(res, "type", "result");
                cJSON_AddFalseToObject(res, "ok");
                cJSON_AddStringToObject(res, "error", msg);
                answer(fallback_fds[i], res);
        }
        n_fallback_fds = 0;
        for (unsigned i = 0; i < n_orphans; i++) {
                log_notice("upgrade: stopping pid %d, a worker of the previous corrald, with %s", (int) strays[i],
                           signal_to_string(sig));
                (void) kill_process(strays[i], sig, false);
                (void) kill_process(strays[i], SIGCONT, false);
        }
        uint64_t timeout = manager_config(m)->stop_timeout_ms;
        /* Unreferenced: it never keeps a stopping corrald's loop alive. */
        if (n_orphans > 0 && timeout > 0 && uv_timer_init(m->loop, &orphan_timer) == 0) {
                uv_unref((uv_handle_t *) &orphan_timer);
                (void) uv_timer_start(&orphan_timer, on_orphans_overdue, timeout, 0);
        }
        upgrade_state_done(&given);
        free(given_text);
        given_text = NULL;
        (void) sigprocmask(SIG_UNBLOCK, &m->handled_signals, NULL);
}

void upgrade_reap_strays(void) {
        for (unsigned i = 0; i < n_strays;) {
                pid_t r = waitpid(strays[i], NULL, WNOHANG);
                /* Still running (0), or interrupted: look again next time. */
                if (r == 0 || (r == -1 && errno == EINTR)) {
                        i++;
                        continue;
                }
                /* Reaped, or not ours to wait for (ECHILD): forget it,
                 * keeping the orphans first. */
                if (i < n_orphans) {
                        strays[i] = strays[--n_orphans];
                        strays[n_orphans] = strays[--n_strays];
                } else
                        strays[i] = strays[--n_strays];
        }
        if (n_strays == 0) {
                free(strays);
                strays = NULL;
        }
}

/* ---- the old process: the state ---------------------------------------- */

/* The fds carried across execve(): FD_CLOEXEC cleared on exactly these. */
typedef struct Carried {
        int fds[4 + UPGRADE_WAITERS_MAX + UPGRADE_CLIENTS_MAX];   /* notify, control, clients */
        unsigned n;
        int *more;                          /* listeners and workers' */
        unsigned n_more;
} Carried;

/* Record fd as carried; returns it (-1 for none). */
static int carry(Carried *c, int fd) {
        if (fd < 0)
                return -1;
        if (c->n < ELEMENTSOF(c->fds))
                c->fds[c->n++] = fd;
        else
                c->more[c->n_more++] = fd;
        return fd;
}

static void carried_cloexec(const Carried *c, bool on) {
        for (unsigned i = 0; i < c->n; i++)
                (void) fd_cloexec(c->fds[i], on);
        for (unsigned i = 0; i < c->n_more; i++)
                (void) fd_cloexec(c->more[i], on);
}

static char *dup_or(const char *s, bool *oom) {
        char *d = s ? strdup(s) : NULL;
        if (s && !d)
                *oom = true;
        return d;
}

/* The manager's state as records. Carried fds go into c (c->more has room
 * for the listeners and two per worker). Returns 0 or -ENOMEM. */
static int collect(Manager *m, Carried *c, UpgradeState *s) {
        const char *fake = getenv("CORRALD_UPGRADE_TEST_VERSION");   /* tests: an incompatible state */
        const Config *config = manager_config(m);
        bool oom = false;
        char hash_key[IPHASH_KEY_STRING_MAX];

        iphash_key_format(m->handoff.hash_key, hash_key);

        *s = (UpgradeState) {
                .version = fake ? atoi(fake) : UPGRADE_STATE_VERSION,
                .written_by = dup_or(CORRAL_VERSION, &oom),
                .request_usec = request_usec,
                .balance = config->balance,
                .hash_key = m->handoff.started ? dup_or(hash_key, &oom) : NULL,
                .config = dup_or(config->source, &oom),
                .reply_fd = -1,
                .upgrades = m->upgrades,
                .start_usec = m->start_usec,
                .generation = m->pool.generation,
                .rollout_serial = m->rollout_serial,
                .recycle_pause_until = m->recycle_pause_until,
                .recycle_next = m->recycle_next < m->n_slots ? m->recycle_next : 0,
                .messages = m->messages.n_messages,
                .undeliverable = m->messages.n_undeliverable,
                .notify_dropped = m->notify.n_dropped,
                .status = dup_or(m->status, &oom),
                .gave_up = m->pool.gave_up,
                .giveup_reason = dup_or(m->pool.giveup_reason, &oom),
                .draining = m->draining,
                .reload_failed = m->reload_failed,
                .reloads_done = m->reloads_done,
                .scaled = m->scaled,
                .scaled_file_workers = m->scaled_file_workers,
                .reloads_failed = m->reloads_failed,
                .notify_fd = carry(c, m->notify.fd),
                .control_fd = carry(c, control_server_fd(&m->control)),
                .control_path = dup_or(m->control.path, &oom),
        };
        /* Each client that asked, alive, gets the answer from the new corrald. */
        s->waiter_fds = calloc(UPGRADE_WAITERS_MAX, sizeof(int));
        s->failures = calloc(RESTART_LIMIT_MAX + 1, sizeof(uint64_t));
        s->listeners = calloc(m->listeners.n ?: 1, sizeof(UpgradeListener));
        s->slots = calloc(m->n_slots ?: 1, sizeof(UpgradeSlot));
        s->workers = calloc(m->pool.n_workers ?: 1, sizeof(UpgradeWorker));
        if (oom || !s->waiter_fds || !s->failures || !s->listeners || !s->slots || !s->workers)
                return -ENOMEM;
        for (unsigned i = 0; i < n_waiters; i++) {
                if (!control_conn_alive(waiters[i]))
                        continue;
                int fd = carry(c, control_conn_fd(waiters[i]));
                if (s->reply_fd < 0)
                        s->reply_fd = fd;
                else
                        s->waiter_fds[s->n_waiter_fds++] = fd;
        }
        ControlConn *idle[UPGRADE_CLIENTS_MAX];
        unsigned n_idle = control_server_idle_conns(&m->control, idle, UPGRADE_CLIENTS_MAX);
        s->clients = calloc(n_idle ?: 1, sizeof(UpgradeClient));
        if (!s->clients)
                return -ENOMEM;
        for (unsigned i = 0; i < n_idle; i++) {
                const char *unread;
                size_t len = control_conn_unread(idle[i], &unread);
                s->clients[s->n_clients++] = (UpgradeClient) {
                        .fd = carry(c, control_conn_fd(idle[i])),
                        .unread = len ? strndup(unread, len) : NULL,
                };
                if (len && !s->clients[s->n_clients - 1].unread)
                        oom = true;
        }
        s->n_failures = failure_window_export(&m->pool.failures, s->failures, RESTART_LIMIT_MAX + 1);

        for (unsigned i = 0; i < m->listeners.n; i++) {
                const Listener *l = &m->listeners.items[i];
                s->listeners[s->n_listeners++] = (UpgradeListener) {
                        .fd = carry(c, l->fd),
                        .name = dup_or(l->name, &oom),
                        .display = dup_or(l->display, &oom),
                        .unlink_path = dup_or(l->unlink_path, &oom),
                        .activated = m->listeners.activated,
                };
        }
        for (unsigned i = 0; i < m->n_slots; i++) {
                const Slot *sl = m->slots[i];
                s->slots[s->n_slots++] = (UpgradeSlot) {
                        .id = slot_id(sl),
                        .state = slot_state(sl),
                        .restarts = slot_restarts(sl),
                        .consecutive_failures = slot_consecutive_failures(sl),
                        .last_failure = slot_last_failure(sl),
                        .deadline = slot_deadline(sl),
                };
        }
        LIST_FOREACH(all, w, m->pool.workers) {
                if (w->pid <= 0)
                        continue;
                int ipc, peer, out;
                const char *tail = NULL;
                size_t tail_len = 0;
                host_worker_fds(w, &ipc, &peer, &out);
                if (ipc >= 0)
                        tail_len = ipc_unsent_tail(w->ipc, &tail);
                s->workers[s->n_workers++] = (UpgradeWorker) {
                        .slot = w->id,
                        .pid = w->pid,
                        .generation = w->generation,
                        .state = w->state,
                        .role = w->role,
                        .stop_sent = w->stop_sent,
                        .said_stopping = w->said_stopping,
                        .counted = w->counted,
                        .failure = dup_or(w->failure, &oom),
                        .start_usec = w->start_usec,
                        .ready_usec = w->ready_usec,
                        .deadline = w->deadline,
                        .status = dup_or(w->status, &oom),
                        .handed = w->handed,
                        .closed = w->closed,
                        .fd_limit_reports = w->fd_limit_reports,
                        .fd_limit_lost = w->fd_limit_lost,
                        .reports_closes = w->reports_closes,
                        .ipc_fd = carry(c, ipc),
                        .peer_fd = carry(c, peer),
                        .output_fd = carry(c, out),
                        .ipc_tail = tail_len ? strndup(tail, tail_len) : NULL,
                };
                if (tail_len && !s->workers[s->n_workers - 1].ipc_tail)
                        oom = true;
        }
        return oom ? -ENOMEM : 0;
}

/* The state of m, written to a new memfd (CLOEXEC). The fds it names are
 * listed in *c (c->more is allocated here; free it). Returns the memfd or
 * -errno. */
static int write_state(Manager *m, Carried *c) {
        _cleanup_(upgrade_state_donep) UpgradeState s = {};

        *c = (Carried) {};
        c->more = calloc(m->listeners.n + 3 * m->pool.n_workers + 1, sizeof(int));
        if (!c->more)
                return -ENOMEM;
        int r = collect(m, c, &s);
        if (r < 0)
                return r;
        _cleanup_free_ char *text = upgrade_state_format(&s);
        if (!text)
                return -ENOMEM;
        _cleanup_close_ int fd = memfd_create("corrald-state", MFD_CLOEXEC);
        if (fd < 0)
                return -errno;
        r = loop_write(fd, text, strlen(text));
        if (r < 0)
                return r;
        return TAKE_FD(fd);
}

/* ---- the old process: the request, the probe, the exec ----------------- */

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
        /* A connection accepted but not yet handed to a worker would be
         * closed by the exec; it is handed on in a moment. */
        if (m->handoff.started && handoff_held(&m->handoff) > 0)
                return "a connection is waiting for a worker; try again";
        /* Slots scaled away drain outside m->slots; their ids may repeat. */
        LIST_FOREACH(all, w, m->pool.workers)
                if (w->id >= m->n_slots || m->slots[w->id] != w->slot)
                        return "a scale-down is still draining";
        return NULL;
}

/* The upgrade did not happen: tell every client that waited, and the log
 * (a refusal is a warning, anything else an upgrade_failed error). */
_printf_(3, 4) static void finish(Manager *m, int prio, const char *fmt, ...) {
        char msg[700];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        LogFields f = LOG_FIELDS_NONE;
        f.event = prio <= LOG_ERR ? "upgrade_failed" : NULL;
        log_emit(prio, &f, "%s%s", msg, prio <= LOG_ERR ? "; corrald keeps running" : "");
        for (unsigned i = 0; i < n_waiters; i++) {
                control_reply_error(waiters[i], "%s", msg);
                control_conn_unref(waiters[i]);
        }
        n_waiters = 0;
}

static const char *binary_path(void) {
        return getenv(UPGRADE_ENV_BINARY) ?: binary;
}

/* The probe said yes: hand over. Returns only when it did not happen. */
static void exec_now(Manager *m) {
        const char *path = binary_path();
        const char *why = refusal(m);
        Carried c = {};

        if (why) {
                finish(m, LOG_WARNING, "upgrade refused: %s", why);
                return;
        }
        _cleanup_close_ int memfd = write_state(m, &c);
        if (memfd < 0) {
                free(c.more);
                finish(m, LOG_ERR, "upgrade: cannot write the state: %s", strerror(-memfd));
                return;
        }

        /* The environment of the new corrald: ours, and where the state is. */
        size_t n_env = strv_length(environ);
        _cleanup_free_ char **env = calloc(n_env + 2, sizeof(char *));
        _cleanup_free_ char *var = NULL;
        if (!env || asprintf(&var, "%s=%d", UPGRADE_ENV_STATE_FD, memfd) < 0) {
                free(c.more);
                finish(m, LOG_ERR, "upgrade: out of memory");
                return;
        }
        memcpy(env, environ, n_env * sizeof(char *));
        env[n_env] = var;

        LogFields f = LOG_FIELDS_NONE;
        f.event = "upgrade_begin";
        f.generation = m->pool.generation;
        log_emit(LOG_INFO, &f, "upgrading in place: executing %s with %u worker%s and %u file descriptors carried",
                 path, m->pool.n_workers, m->pool.n_workers == 1 ? "" : "s", c.n + c.n_more + 1);
        (void) sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=Upgrading: executing %s",
                          (unsigned long long) now_usec(), path);

        (void) fd_cloexec(memfd, false);
        carried_cloexec(&c, false);
        /* The signals the manager handles: blocked across execve() so that
         * none arrives while no handler is installed (their default
         * actions would end the instance); the new corrald unblocks them
         * once its handlers run. */
        sigset_t old;
        (void) sigprocmask(SIG_BLOCK, &m->handled_signals, &old);

        execve(path, saved_argv, env);

        /* Still here: the new binary could not be executed after all.
         * Nothing was lost; take back what we opened up and go on. */
        int r = -errno;
        (void) sigprocmask(SIG_SETMASK, &old, NULL);
        carried_cloexec(&c, true);
        free(c.more);
        finish(m, LOG_ERR, "upgrade: cannot execute %s: %s", path, strerror(-r));
        (void) sd_notifyf(0, "READY=1\nSTATUS=%s", m->status);
}

static void on_probe_handle_closed(uv_handle_t *h) {
        Probe *p = h->data;
        if (--p->n_open == 0)
                free(p);
}

/* Stop watching the probe (killed if still running) and leave it to be
 * reaped; p is freed once its handles are closed. */
static void probe_end(Probe *p, bool kill) {
        probe = NULL;
        uv_close((uv_handle_t *) &p->poll, on_probe_handle_closed);
        uv_close((uv_handle_t *) &p->timer, on_probe_handle_closed);
        p->fd = safe_close(p->fd);
        if (kill)
                (void) kill_process(p->pid, SIGKILL, true);
        add_stray(p->pid, false);
        upgrade_reap_strays();
        p->verdict[p->len] = 0;
}

/* The probe is over: its verdict is in p->verdict ("ok", or why not). */
static void probe_done(Probe *p, bool timed_out) {
        Manager *m = p->manager;

        probe_end(p, timed_out);
        if (timed_out)
                finish(m, LOG_ERR, "upgrade: %s did not check the state within %d ms", binary_path(),
                       PROBE_TIMEOUT_MS);
        else if (strcmp(p->verdict, "ok") != 0)
                finish(m, LOG_ERR, "upgrade: %s cannot take over: %s", binary_path(),
                       p->len ? p->verdict : "it exited without checking the state (not a corrald that can upgrade?)");
        else
                exec_now(m);
}

static void on_probe_readable(uv_poll_t *h, int status, int events) {
        Probe *p = h->data;
        ssize_t n = 0;
        if (status >= 0) {
                n = read(p->fd, p->verdict + p->len, sizeof(p->verdict) - 1 - p->len);
                if (n == -1 && (errno == EAGAIN || errno == EINTR))
                        return;
        }
        if (n > 0) {
                p->len += (size_t) n;
                if (p->len < sizeof(p->verdict) - 1)
                        return;
        }
        /* EOF, an error, or a full verdict: it said what it had to say. */
        probe_done(p, false);
}

static void on_probe_timeout(uv_timer_t *t) {
        probe_done(t->data, true);
}

/* Run the binary on disk as a probe: it reads the state and the running
 * configuration exactly as the real upgrade will, checks them, writes "ok"
 * or why not on its CORRAL_IPC_FD and exits. It starts through
 * spawn_worker() (the fork discipline of every child) with the memfd as
 * its fd 3 and the verdict socket as fd 4; it holds none of our other fds. */
static int start_probe(Manager *m, const char *path, char **ret_error) {
        Carried c = {};
        _cleanup_close_ int memfd = write_state(m, &c);
        free(c.more);
        if (memfd < 0)
                return asprintf(ret_error, "cannot write the state: %s", strerror(-memfd)) < 0 ? -ENOMEM : memfd;

        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) == -1)
                return asprintf(ret_error, "cannot create a socket: %m") < 0 ? -ENOMEM : -errno;
        _cleanup_close_ int ours = sv[0], theirs = sv[1];

        size_t argc = strv_length(saved_argv);
        _cleanup_free_ char **argv = calloc(argc + 1, sizeof(char *));
        if (!argv)
                return -ENOMEM;
        memcpy(argv, saved_argv, argc * sizeof(char *));
        argv[0] = (char *) path;
        char *extra_env[] = { (char *) PROBE_ENV "=1", (char *) UPGRADE_ENV_STATE_FD "=3", NULL };
        SpawnParams sp = {
                .argv = argv,
                .extra_env = extra_env,
                .listen_fds = &memfd,
                .n_listen = 1,
                .fdnames = "state",
                .notify_socket = "",
                .ipc_fd = theirs,
                .instance = manager_config(m)->name,
                .generation = m->pool.generation,
                .output = SPAWN_OUTPUT_INHERIT,
        };
        const char *stage;
        pid_t pid = spawn_worker(&sp, &stage);
        if (pid < 0) {
                if (streq_ptr(stage, "exec"))
                        return asprintf(ret_error, "cannot execute %s: %s", path, strerror(-pid)) < 0 ? -ENOMEM
                                                                                                      : pid;
                return asprintf(ret_error, "cannot start %s (%s): %s", path, stage, strerror(-pid)) < 0 ? -ENOMEM
                                                                                                       : pid;
        }

        Probe *p = calloc(1, sizeof(Probe));
        if (!p) {
                (void) kill_process(pid, SIGKILL, true);
                add_stray(pid, false);
                return -ENOMEM;
        }
        *p = (Probe) { .manager = m, .fd = TAKE_FD(ours), .pid = pid, .n_open = 2 };
        p->poll.data = p->timer.data = p;
        uv_timer_init(m->loop, &p->timer);
        int r = uv_poll_init(m->loop, &p->poll, p->fd);
        if (r < 0) {
                /* The poll handle was never initialised: only the timer closes. */
                p->n_open = 1;
                uv_close((uv_handle_t *) &p->timer, on_probe_handle_closed);
                safe_close(p->fd);
                (void) kill_process(pid, SIGKILL, true);
                add_stray(pid, false);
                return asprintf(ret_error, "cannot watch the probe: %s", uv_strerror(r)) < 0 ? -ENOMEM : -EIO;
        }
        (void) uv_poll_start(&p->poll, UV_READABLE | UV_DISCONNECT, on_probe_readable);
        (void) uv_timer_start(&p->timer, on_probe_timeout, PROBE_TIMEOUT_MS, 0);
        probe = p;
        return 0;
}

void upgrade_request(Manager *m, ControlConn *client) {
        if (client) {
                if (n_waiters >= UPGRADE_WAITERS_MAX) {
                        control_reply_error(client, "upgrade refused: %u requests are already waiting for it",
                                            n_waiters);
                        return;
                }
                waiters[n_waiters++] = control_conn_ref(client);
        }
        /* One upgrade at a time: a request during the check waits for its
         * result, and gets the same answer. */
        if (probe)
                return;

        const char *path = binary_path();
        const char *why = refusal(m);
        if (why) {
                finish(m, LOG_WARNING, "upgrade refused: %s", why);
                return;
        }
        if (!path[0] || !saved_argv) {
                finish(m, LOG_ERR, "upgrade: the path of the corrald binary is unknown");
                return;
        }
        if (access(path, X_OK) == -1) {
                finish(m, LOG_ERR, "upgrade: cannot execute %s: %m", path);
                return;
        }
        _cleanup_free_ char *error = NULL;
        request_usec = now_usec();
        int r = start_probe(m, path, &error);
        if (r < 0)
                finish(m, LOG_ERR, "upgrade: %s", error ? error : strerror(-r));
}

void upgrade_cancel(Manager *m) {
        if (probe)
                probe_end(probe, true);
        if (n_waiters > 0)
                finish(m, LOG_WARNING, "upgrade refused: corrald is stopping");
}
