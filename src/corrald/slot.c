/* slot: the worker lifecycle as one state machine per slot. See slot.h and
 * docs/internals/lifecycle.md, which shows the table below as a table.
 *
 * Each slot has a stored state and at most three kinds of workers: its
 * `current` one, an `incoming` replacement while a plan replaces it, and
 * `leaving` ones that drain until they exit. Every state change is a row of
 * `transitions` below, reached through slot_dispatch() and nothing else.
 *
 * Worker events are refined by the worker's role before the lookup: the
 * table has one column for the current worker's exit and another for the
 * replacement's, so "what happens when a starting replacement exits during
 * a reload" is one cell: REPLACING × INCOMING_EXIT → replace_failed.
 *
 * Each worker has one deadline for its state (ready.timeout_ms while
 * starting, watchdog_ms while ready, stop.timeout_ms while stopping); the
 * slot has one (its respawn). They are absolute times; the owner keeps one
 * timer for the earliest (Pool.earliest) and calls pool_on_time().
 *
 * Failures are decided here, in account_failure(): an exit we did not ask
 * for, a spawn that failed, a worker killed for a timeout, and a worker that
 * said STOPPING=1 too soon after it became ready (see leaves_healthy()).
 * They go through the instance-wide failure window (give up) and the slot's
 * backoff. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include "log.h"
#include "slot.h"
#include "util.h"

struct Slot {
        Pool *pool;
        unsigned id;
        SlotState state;
        Worker *current;
        Worker *incoming;
        Worker *leaving;           /* list */
        unsigned consecutive_failures;
        unsigned restarts;
        uint64_t last_failure;     /* when its last failure was, 0 = none yet */
        uint64_t deadline;         /* BACKOFF: when to respawn */
        bool emptied;              /* OUTCOME_EMPTIED was queued */
        LIST_FIELDS(Slot, all);
};

/* Refined events: the public ones about a worker become the column of
 * that worker's role. */
enum {
        EV_START = SLOT_EV_START,
        EV_REPLACE = SLOT_EV_REPLACE,
        EV_CANCEL = SLOT_EV_CANCEL,
        EV_REMOVE = SLOT_EV_REMOVE,
        EV_HOLD = SLOT_EV_HOLD,
        EV_BACKOFF_DONE = SLOT_EV_BACKOFF_DONE,
        EV_READY = SLOT_EV_READY,
        EV_STOPPING = SLOT_EV_STOPPING,
        EV_EXIT = SLOT_EV_EXIT,
        EV_WATCHDOG = SLOT_EV_WATCHDOG,
        EV_INCOMING_READY = _SLOT_EVENT_MAX,
        EV_INCOMING_STOPPING,
        EV_INCOMING_EXIT,
        EV_LEAVING_EXIT,
        _EV_MAX,
};

static const char * const slot_state_table[_SLOT_STATE_MAX] = {
        [SLOT_EMPTY] = "empty",       [SLOT_STARTING] = "starting", [SLOT_READY] = "ready",
        [SLOT_REPLACING] = "replacing", [SLOT_BACKOFF] = "backoff", [SLOT_FAILED] = "failed",
        [SLOT_REMOVED] = "removed",
};

static const char * const event_table[_EV_MAX] = {
        [EV_START] = "start",
        [EV_REPLACE] = "replace",
        [EV_CANCEL] = "cancel",
        [EV_REMOVE] = "remove",
        [EV_HOLD] = "hold",
        [EV_BACKOFF_DONE] = "backoff-done",
        [EV_READY] = "ready",
        [EV_STOPPING] = "stopping",
        [EV_EXIT] = "exit",
        [EV_WATCHDOG] = "watchdog",
        [EV_INCOMING_READY] = "incoming-ready",
        [EV_INCOMING_STOPPING] = "incoming-stopping",
        [EV_INCOMING_EXIT] = "incoming-exit",
        [EV_LEAVING_EXIT] = "leaving-exit",
};

static const char * const worker_state_table[_WORKER_STATE_MAX] = {
        [WORKER_STARTING] = "starting",
        [WORKER_READY] = "ready",
        [WORKER_STOPPING] = "stopping",
        [WORKER_EXITED] = "exited",
};

const char *worker_state_to_string(WorkerState s) {
        return s < _WORKER_STATE_MAX ? worker_state_table[s] : "?";
}

const char *slot_state_to_string(SlotState s) {
        return s < _SLOT_STATE_MAX ? slot_state_table[s] : "?";
}

SlotState slot_state(const Slot *s) {
        return s->state;
}

const char *slot_display_state(const Slot *s) {
        if (s->current)
                return worker_state_to_string(s->current->state);
        if (s->incoming)
                return "starting";
        return s->state == SLOT_FAILED ? "failed" : "backoff";
}

unsigned slot_id(const Slot *s) {
        return s->id;
}

unsigned slot_restarts(const Slot *s) {
        return s->restarts;
}

Worker *slot_current(const Slot *s) {
        return s->current;
}

Worker *slot_incoming(const Slot *s) {
        return s->incoming;
}

bool slot_is_ready(const Slot *s) {
        return s->current && s->current->state == WORKER_READY;
}

Worker *slot_ready_worker(const Slot *s) {
        return slot_is_ready(s) ? s->current : NULL;
}

static LogFields worker_fields(const Worker *w, const char *event) {
        return (LogFields) {
                .event = event,
                .worker_id = (int) w->id,
                .pid = worker_pid(w),
                .generation = w->generation,
                .exit_status = -1,
        };
}

/* ---- the pool ----------------------------------------------------------- */

int pool_init(Pool *p, const SlotOps *ops, void *ops_data, uint64_t (*now)(void), Config *config) {
        *p = (Pool) { .ops = ops, .ops_data = ops_data, .now = now, .config = config_ref(config), .generation = 1,
                      .changed = true,
                      .errno_log = RATELIMIT_INIT(WORKER_NOTICE_INTERVAL_USEC, WORKER_NOTICE_BURST) };
        return failure_window_init(&p->failures, config->restart_limit, config->restart_window_ms * USEC_PER_MSEC);
}

void pool_done(Pool *p) {
        Outcome *o;
        while ((o = pool_pop_outcome(p)))
                free(o);
        failure_window_done(&p->failures);
        p->config = config_unref(p->config);
}

static int reset_failures(Pool *p) {
        FailureWindow fw;
        int r = failure_window_init(&fw, p->config->restart_limit, p->config->restart_window_ms * USEC_PER_MSEC);
        if (r < 0)
                return r;
        failure_window_done(&p->failures);
        p->failures = fw;
        p->gave_up = false;
        return 0;
}

int pool_set_config(Pool *p, Config *config, unsigned generation) {
        config_unref(p->config);
        p->config = config;
        p->generation = generation;
        return reset_failures(p);
}

Outcome *pool_pop_outcome(Pool *p) {
        Outcome *o = p->outcomes;
        if (o) {
                p->outcomes = o->next;
                if (!p->outcomes)
                        p->outcomes_tail = NULL;
        }
        return o;
}

Worker *pool_find_worker(Pool *p, pid_t pid) {
        if (pid <= 0)
                return NULL;
        LIST_FOREACH(all, w, p->workers)
                if (w->pid == pid)
                        return w;
        return NULL;
}

_printf_(4, 5) static Outcome *push(Slot *s, OutcomeKind kind, const Worker *w, const char *fmt, ...) {
        Pool *p = s->pool;
        Outcome *o = calloc(1, sizeof(Outcome));
        if (!o) {
                log_error("slot %u: out of memory; an outcome is lost", s->id);
                return NULL;
        }
        *o = (Outcome) { .kind = kind, .slot = s, .slot_id = s->id, .generation = p->generation };
        if (w) {
                o->pid = worker_pid(w);
                o->plan = w->plan;
                o->generation = w->generation;
        }
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(o->what, sizeof(o->what), fmt, ap);
        va_end(ap);
        if (p->outcomes_tail)
                p->outcomes_tail->next = o;
        else
                p->outcomes = o;
        p->outcomes_tail = o;
        return o;
}

static void set_deadline(Pool *p, uint64_t *field, uint64_t due) {
        *field = due;
        if (due && (!p->earliest || due < p->earliest))
                p->earliest = due;
}

/* ---- workers ------------------------------------------------------------ */

int worker_signal(Worker *w, int sig) {
        if (w->pid <= 0)
                return -ESRCH;
        w->slot->pool->ops->kill(w->slot->pool->ops_data, w, sig, false);
        return 0;
}

void worker_free(Worker *w) {
        if (!w)
                return;
        config_unref(w->config);
        free(w);
}

static void enter_stopping(Worker *w) {
        Pool *p = w->slot->pool;
        w->state = WORKER_STOPPING;
        uint64_t t = w->config->stop_timeout_ms;
        set_deadline(p, &w->deadline, t ? p->now() + t * USEC_PER_MSEC : 0);
}

static void become_ready(Worker *w) {
        Pool *p = w->slot->pool;
        LogFields f = worker_fields(w, "ready");
        w->state = WORKER_READY;
        w->ready_usec = p->now();
        set_deadline(p, &w->deadline, w->config->watchdog_ms ? w->ready_usec + w->config->watchdog_ms * USEC_PER_MSEC : 0);
        log_emit(LOG_INFO, &f, "%s is ready (%.1f ms after spawn)", w->who,
                 (double) (w->ready_usec - w->start_usec) / 1000.0);
}

/* Move w to the slot's leaving list, asking it to stop unless it is
 * leaving on its own (STOPPING=1) — then it only gets its deadline. */
static void detach_to_leaving(Slot *s, Worker *w, bool ask) {
        if (s->current == w)
                s->current = NULL;
        if (s->incoming == w)
                s->incoming = NULL;
        if (w->role != WORKER_LEAVING)
                LIST_PREPEND(leaving, s->leaving, w);
        w->role = WORKER_LEAVING;
        if (!ask) {
                if (w->state != WORKER_STOPPING)
                        enter_stopping(w);
                return;
        }
        if (w->stop_sent || w->pid <= 0)
                return;
        w->stop_sent = true;
        LogFields f = worker_fields(w, "stop");
        const SlotOps *ops = w->slot->pool->ops;
        if (ops->stop) {
                const char *how = ops->stop(w->slot->pool->ops_data, w);
                log_emit(LOG_INFO, &f, "stopping %s with %s", w->who, how);
        } else {
                log_emit(LOG_INFO, &f, "stopping %s with %s", w->who, signal_to_string(w->config->stop_signal));
                (void) worker_signal(w, w->config->stop_signal);
                /* Like systemd: a stopped process cannot act on the signal. */
                (void) worker_signal(w, SIGCONT);
        }
        if (w->state != WORKER_STOPPING || !w->failure)
                enter_stopping(w);
}

static Worker *spawn(Slot *s, WorkerRole role) {
        Pool *p = s->pool;
        Config *c = p->config;
        const char *stage = "setup";

        Worker *w = calloc(1, sizeof(Worker));
        if (!w) {
                log_error("slot %u: out of memory", s->id);
                return NULL;
        }
        *w = (Worker) { .slot = s, .config = config_ref(c), .id = s->id, .generation = p->generation,
                        .state = WORKER_STARTING, .role = role, .plan = role == WORKER_INCOMING ? p->plan : 0 };
        snprintf(w->who, sizeof(w->who), "worker %u", s->id);

        pid_t pid = p->ops->start(p->ops_data, w, &stage);
        if (pid < 0) {
                LogFields f = { .event = "spawn", .worker_id = (int) s->id, .generation = p->generation,
                                .exit_status = -1 };
                errno = (int) -pid;
                log_emit(LOG_ERR, &f, "slot %u: cannot start %s: %s failed: %m", s->id, c->exec[0], stage);
                if (streq_ptr(stage, "exec") && (pid == -ENOENT || pid == -EACCES || pid == -ENOEXEC))
                        push(s, OUTCOME_EXEC_FAILED, NULL, "cannot execute %s: %s", c->exec[0], strerror((int) -pid));
                worker_free(w);
                return NULL;
        }
        w->pid = pid;
        w->start_usec = p->now();
        snprintf(w->who, sizeof(w->who), "worker %u (pid %d)", s->id, (int) pid);
        LIST_PREPEND(all, p->workers, w);
        p->n_workers++;

        LogFields f = worker_fields(w, "spawn");
        log_emit(LOG_INFO, &f, "%s started, generation %u", w->who, w->generation);
        if (c->ready_mode == READY_SPAWN)
                become_ready(w);
        else
                set_deadline(p, &w->deadline, c->ready_timeout_ms ? w->start_usec + c->ready_timeout_ms * USEC_PER_MSEC : 0);
        return w;
}

/* ---- failures ----------------------------------------------------------- */

/* Whether the failure of w is the first of a crash after serving (SPEC
 * §2): w had become ready, and the slot had no other failure within
 * restart.window_ms. It is replaced at once, as every peer does; the next
 * failure within the window waits backoff_ms[0], doubling from there. */
static bool first_failure_after_ready(const Slot *s, const Worker *w, uint64_t now) {
        return w && w->ready_usec &&
               (!s->last_failure || now - s->last_failure > s->pool->config->restart_window_ms * USEC_PER_MSEC);
}

/* The "suicide signal" (STOPPING=1) replaces a worker at once and is no
 * failure when the worker had served a while: ready for at least
 * restart.window_ms / restart.limit, the spacing at which failures would
 * reach the limit. A worker that leaves sooner would replace itself in a
 * loop, so it counts as a failure and waits out the backoff. */
static bool leaves_healthy(const Slot *s, const Worker *w, uint64_t now) {
        const Config *c = s->pool->config;
        return w->ready_usec && now - w->ready_usec >= c->restart_window_ms * USEC_PER_MSEC / c->restart_limit;
}

/* Count a failure of w (NULL: a spawn) in slot s. Returns the delay before
 * the slot's respawn in ms, or -1 once the instance has given up. */
static int64_t account_failure(Slot *s, const Worker *w, const char *what) {
        Pool *p = s->pool;
        uint64_t now = p->now();
        bool fresh = first_failure_after_ready(s, w, now);

        s->last_failure = now;
        if (!p->gave_up && failure_window_record(&p->failures, now)) {
                p->gave_up = true;
                snprintf(p->giveup_reason, sizeof(p->giveup_reason), "more than %u failure%s within %llu ms",
                         p->config->restart_limit, p->config->restart_limit == 1 ? "" : "s",
                         (unsigned long long) p->config->restart_window_ms);
                push(s, OUTCOME_GAVE_UP, w, "%s %s", w ? w->who : "a spawn of slot", what);
        }
        if (p->gave_up)
                return -1;
        if (fresh) {
                s->consecutive_failures = 0;
                return 0;
        }
        s->consecutive_failures++;
        return (int64_t) backoff_delay_ms(p->config->backoff_min_ms, p->config->backoff_max_ms,
                                          s->consecutive_failures);
}

static SlotState spawn_current(Slot *s);

/* The slot lost its worker to a failure: respawn (at once after a healthy
 * run), wait out the backoff, or stay failed once the instance gave up. */
static SlotState after_failure(Slot *s, const Worker *w, const char *what) {
        Pool *p = s->pool;
        int64_t delay = account_failure(s, w, what);
        if (delay < 0 || p->stopping)
                return delay < 0 ? SLOT_FAILED : SLOT_BACKOFF;
        if (delay == 0 && s->consecutive_failures == 0)
                return spawn_current(s);
        LogFields f = LOG_FIELDS_NONE;
        f.worker_id = (int) s->id;
        log_emit(LOG_INFO, &f, "slot %u: respawning in %lld ms (failure %u in a row)", s->id, (long long) delay,
                 s->consecutive_failures);
        set_deadline(p, &s->deadline, p->now() + (uint64_t) delay * USEC_PER_MSEC);
        return SLOT_BACKOFF;
}

static SlotState state_of_current(const Slot *s) {
        return s->current->state == WORKER_READY ? SLOT_READY : SLOT_STARTING;
}

/* ---- transitions -------------------------------------------------------- */

typedef SlotState (*Transition)(Slot *s, Worker *w);

static SlotState spawn_current(Slot *s) {
        s->deadline = 0;
        if (s->pool->stopping)
                return SLOT_EMPTY;
        Worker *w = spawn(s, WORKER_CURRENT);
        if (!w)
                return after_failure(s, NULL, "failed to spawn");
        s->current = w;
        return state_of_current(s);
}

static SlotState start(Slot *s, Worker *unused) {
        return spawn_current(s);
}

/* The replacement is ready: it becomes the slot's worker, the old one
 * (if any) is asked to stop. */
static SlotState promote(Slot *s, Worker *w) {
        Worker *old = s->current;
        if (w->state != WORKER_READY)
                become_ready(w);
        if (old)
                detach_to_leaving(s, old, true);
        s->current = w;
        s->incoming = NULL;
        w->role = WORKER_CURRENT;
        s->consecutive_failures = 0;
        Outcome *o = push(s, OUTCOME_REPLACED, w, "slot %u", s->id);
        if (o)
                o->old_pid = old ? worker_pid(old) : 0;
        return SLOT_READY;
}

static SlotState replace(Slot *s, Worker *unused) {
        s->deadline = 0;
        Worker *w = spawn(s, WORKER_INCOMING);
        if (!w) {
                Worker tmp = { .plan = s->pool->plan, .generation = s->pool->generation };
                push(s, OUTCOME_REPLACE_FAILED, &tmp, "cannot start a new worker for slot %u", s->id);
                return s->current ? state_of_current(s) : SLOT_EMPTY;
        }
        s->incoming = w;
        if (w->state == WORKER_READY)   /* ready.mode = spawn */
                return promote(s, w);
        return SLOT_REPLACING;
}


/* A broken release does not count towards giving up: the plan that
 * started the replacement fails instead. */
static SlotState replace_failed(Slot *s, Worker *w) {
        w->counted = true;
        if (w->pid > 0)   /* it said STOPPING=1: let it go */
                detach_to_leaving(s, w, false);
        push(s, OUTCOME_REPLACE_FAILED, w, "the new worker for slot %u (pid %d) %s%s%s", s->id, (int) worker_pid(w),
             w->how[0] ? w->how : "sent STOPPING=1 before it was ready", w->failure ? " after it " : "",
             w->failure ? w->failure : "");
        return s->current ? state_of_current(s) : SLOT_EMPTY;
}

/* A slot that a failed plan leaves without a worker gets one again,
 * unless the instance has given up (restart.on_giveup = stay). */
static SlotState refill(Slot *s, Worker *unused) {
        return s->pool->gave_up ? SLOT_FAILED : spawn_current(s);
}

static SlotState cancel(Slot *s, Worker *unused) {
        if (s->incoming)
                detach_to_leaving(s, s->incoming, true);
        return s->current ? state_of_current(s) : refill(s, NULL);
}

static SlotState hold(Slot *s, Worker *unused) {
        s->deadline = 0;
        s->consecutive_failures = 0;
        return SLOT_EMPTY;
}

static SlotState current_ready(Slot *s, Worker *w) {
        become_ready(w);
        return SLOT_READY;
}

static SlotState current_ready_replacing(Slot *s, Worker *w) {
        become_ready(w);
        return SLOT_REPLACING;
}

static SlotState current_stopping(Slot *s, Worker *w) {
        Pool *p = s->pool;
        bool healthy = leaves_healthy(s, w, p->now());
        LogFields f = worker_fields(w, "stop");
        log_emit(LOG_INFO, &f, "%s announced STOPPING=1; %s", w->who,
                 healthy ? "starting its replacement" : "too soon after it became ready: it counts as a failure");
        detach_to_leaving(s, w, false);
        if (healthy)
                return spawn_current(s);
        w->counted = true;
        s->restarts++;
        return after_failure(s, w, "sent STOPPING=1 too soon");
}

/* Its replacement takes over when ready: just let it go. */
static SlotState current_leaves_replacing(Slot *s, Worker *w) {
        LogFields f = worker_fields(w, "stop");
        log_emit(LOG_INFO, &f, "%s announced STOPPING=1; its replacement is already starting", w->who);
        detach_to_leaving(s, w, false);
        return SLOT_REPLACING;
}

static SlotState current_exit(Slot *s, Worker *w) {
        s->restarts++;
        return after_failure(s, w, w->how);
}

static SlotState current_exit_replacing(Slot *s, Worker *w) {
        s->restarts++;
        (void) account_failure(s, w, w->how);
        return SLOT_REPLACING;
}

static SlotState leaving_exit(Slot *s, Worker *w) {
        if (!w->exit_expected && !w->counted)
                (void) account_failure(s, w, w->how);
        return s->state;
}

/* w's watchdog fired (w->failure says how): SIGABRT, and it is stopping;
 * its exit will be a failure. The slot's state changes only then. */
static SlotState watchdog(Slot *s, Worker *w) {
        LogFields f = worker_fields(w, "watchdog");
        log_emit(LOG_WARNING, &f, "%s %s; sending SIGABRT", w->who, w->failure);
        (void) worker_signal(w, SIGABRT);
        enter_stopping(w);
        return s->state;
}

static SlotState remove_slot(Slot *s, Worker *unused) {
        s->deadline = 0;
        if (s->incoming)
                detach_to_leaving(s, s->incoming, true);
        if (s->current)
                detach_to_leaving(s, s->current, true);
        LIST_FOREACH(leaving, w, s->leaving)
                detach_to_leaving(s, w, true);
        return SLOT_REMOVED;
}

/* The lifecycle, state × event. An empty cell: the event does not apply
 * in that state and is ignored (e.g. START for a slot that has a worker). */
static const Transition transitions[_SLOT_STATE_MAX][_EV_MAX] = {
        [SLOT_EMPTY] = {
                [EV_START] = start,
                [EV_REPLACE] = replace,
                [EV_CANCEL] = refill,
                [EV_REMOVE] = remove_slot,
                [EV_WATCHDOG] = watchdog,
                [EV_LEAVING_EXIT] = leaving_exit,
        },
        [SLOT_STARTING] = {
                [EV_REPLACE] = replace,
                [EV_REMOVE] = remove_slot,
                [EV_READY] = current_ready,
                [EV_STOPPING] = current_stopping,
                [EV_EXIT] = current_exit,
                [EV_WATCHDOG] = watchdog,
                [EV_LEAVING_EXIT] = leaving_exit,
        },
        [SLOT_READY] = {
                [EV_REPLACE] = replace,
                [EV_REMOVE] = remove_slot,
                [EV_STOPPING] = current_stopping,
                [EV_EXIT] = current_exit,
                [EV_WATCHDOG] = watchdog,
                [EV_LEAVING_EXIT] = leaving_exit,
        },
        [SLOT_REPLACING] = {
                [EV_CANCEL] = cancel,
                [EV_REMOVE] = remove_slot,
                [EV_READY] = current_ready_replacing,
                [EV_STOPPING] = current_leaves_replacing,
                [EV_EXIT] = current_exit_replacing,
                [EV_INCOMING_READY] = promote,
                [EV_INCOMING_STOPPING] = replace_failed,
                [EV_INCOMING_EXIT] = replace_failed,
                [EV_WATCHDOG] = watchdog,
                [EV_LEAVING_EXIT] = leaving_exit,
        },
        [SLOT_BACKOFF] = {
                [EV_START] = start,
                [EV_REPLACE] = replace,
                [EV_REMOVE] = remove_slot,
                [EV_HOLD] = hold,
                [EV_BACKOFF_DONE] = start,
                [EV_WATCHDOG] = watchdog,
                [EV_LEAVING_EXIT] = leaving_exit,
        },
        [SLOT_FAILED] = {
                [EV_START] = start,
                [EV_REPLACE] = replace,
                [EV_REMOVE] = remove_slot,
                [EV_HOLD] = hold,
                [EV_WATCHDOG] = watchdog,
                [EV_LEAVING_EXIT] = leaving_exit,
        },
        [SLOT_REMOVED] = {
                [EV_WATCHDOG] = watchdog,
                [EV_LEAVING_EXIT] = leaving_exit,
        },
};

static void describe_exit(Worker *w, int st, LogFields *f) {
        if (WIFEXITED(st)) {
                f->exit_status = WEXITSTATUS(st);
                snprintf(w->how, sizeof(w->how), "exited with status %d", f->exit_status);
        } else if (WIFSIGNALED(st)) {
                f->signal = WTERMSIG(st);
                snprintf(w->how, sizeof(w->how), "was killed by %s%s", signal_to_string(f->signal),
                         WCOREDUMP(st) ? " (core dumped)" : "");
        } else
                snprintf(w->how, sizeof(w->how), "ended with wait status 0x%x", (unsigned) st);
}

/* The exit of w: log it, decide whether it was expected, and take it off
 * its slot. Returns the event's column. */
static int reap(Slot *s, Worker *w, int st) {
        LogFields f = worker_fields(w, "exit");
        describe_exit(w, st, &f);
        bool clean = f.exit_status == 0;
        w->exit_expected = !w->failure && (w->stop_sent || (w->said_stopping && clean));
        if (w->exit_expected)
                log_emit(LOG_INFO, &f, "%s %s", w->who, w->how);
        else if (w->failure)
                log_emit(LOG_WARNING, &f, "%s %s after it %s", w->who, w->how, w->failure);
        else
                log_emit(LOG_WARNING, &f, "%s %s unexpectedly", w->who, w->how);

        w->pid = -w->pid;   /* reaped: never signal this pid again */
        w->state = WORKER_EXITED;
        w->deadline = 0;
        WorkerRole role = w->role;
        if (role == WORKER_LEAVING)
                LIST_REMOVE(leaving, s->leaving, w);
        else if (s->current == w)
                s->current = NULL;
        else if (s->incoming == w)
                s->incoming = NULL;
        return role == WORKER_INCOMING ? EV_INCOMING_EXIT : role == WORKER_LEAVING ? EV_LEAVING_EXIT : EV_EXIT;
}

static void release(Slot *s, Worker *w) {
        Pool *p = s->pool;
        LIST_REMOVE(all, p->workers, w);
        p->n_workers--;
        p->ops->release(p->ops_data, w);
}

void slot_dispatch(Slot *s, SlotEvent ev, Worker *w, int wait_status) {
        int column = (int) ev;

        s->pool->changed = true;
        if (ev == SLOT_EV_EXIT)
                column = reap(s, w, wait_status);
        else if (ev == SLOT_EV_WATCHDOG)
                column = EV_WATCHDOG;   /* whatever its role: it stops, and its exit is a failure */
        else if (w && w->role == WORKER_INCOMING)
                column = ev == SLOT_EV_READY ? EV_INCOMING_READY : ev == SLOT_EV_STOPPING ? EV_INCOMING_STOPPING : -1;
        else if (w && w->role == WORKER_LEAVING)
                column = -1;   /* a leaving worker's READY or STOPPING changes nothing */

        Transition t = column >= 0 ? transitions[s->state][column] : NULL;
        if (t)
                s->state = t(s, w);
        else if (column >= 0)
                log_debug("slot %u: %s ignored in state %s", s->id, event_table[column], slot_state_table[s->state]);

        if (ev == SLOT_EV_EXIT)
                release(s, w);
        if (s->state == SLOT_REMOVED && !s->current && !s->incoming && !s->leaving && !s->emptied) {
                s->emptied = true;
                push(s, OUTCOME_EMPTIED, NULL, "slot %u is empty", s->id);
        }
}

/* ---- notify and deadlines ----------------------------------------------- */

void slot_on_notify(Worker *w, const NotifyMsg *msg) {
        Slot *s = w->slot;
        Pool *p = s->pool;

        if (msg->has_status)
                snprintf(w->status, sizeof(w->status), "%s", msg->status);
        if (msg->errno_value >= 0) {
                unsigned suppressed;
                bool ok = ratelimit_below(&p->errno_log, p->now(), &suppressed);
                LogFields f = worker_fields(w, NULL);
                if (suppressed)
                        /* The budget is the instance's: no worker's fields. */
                        log_emit(LOG_NOTICE, NULL, "suppressed %u ERRNO= reports of workers (log rate limit)",
                                 suppressed);
                if (ok) {
                        errno = msg->errno_value;
                        log_emit(LOG_NOTICE, &f, "%s reports ERRNO=%d (%m)", w->who, msg->errno_value);
                }
        }
        if (msg->ready && w->state == WORKER_STARTING && w->role != WORKER_LEAVING)
                slot_dispatch(s, SLOT_EV_READY, w, 0);
        if (msg->watchdog && w->state == WORKER_READY && w->config->watchdog_ms > 0)
                /* Only ever later: no need to lower Pool.earliest. */
                w->deadline = p->now() + w->config->watchdog_ms * USEC_PER_MSEC;
        if (msg->watchdog_trigger && w->state != WORKER_STOPPING && w->pid > 0) {
                w->failure = "asked for its watchdog to fire (WATCHDOG=trigger)";
                slot_dispatch(s, SLOT_EV_WATCHDOG, w, 0);
        }
        if (msg->stopping && !w->said_stopping && !w->stop_sent && w->pid > 0) {
                w->said_stopping = true;
                slot_dispatch(s, SLOT_EV_STOPPING, w, 0);
        }
}

static void worker_on_time(Worker *w, uint64_t now) {
        if (!w->deadline || w->deadline > now || w->pid <= 0)
                return;
        w->deadline = 0;
        LogFields f = worker_fields(w, NULL);
        switch (w->state) {
        case WORKER_STARTING:
                f.event = "ready";
                w->failure = "did not become ready in time";
                log_emit(LOG_WARNING, &f, "%s did not send READY=1 within %llu ms; killing it", w->who,
                         (unsigned long long) w->config->ready_timeout_ms);
                /* What a Node or Python author needs to know, once. */
                if (!w->slot->pool->told_ready_hint) {
                        w->slot->pool->told_ready_hint = true;
                        log_emit(LOG_NOTICE, &f, "a worker says it is ready by sending READY=1 to the datagram socket "
                                 "in $NOTIFY_SOCKET, as for systemd (sd_notify(3); python3-systemd's "
                                 "daemon.notify(\"READY=1\"); systemd-notify --ready from a shell), once it "
                                 "serves; a worker that cannot should run with ready.mode \"spawn\", which "
                                 "takes it as ready once started");
                }
                w->slot->pool->ops->kill(w->slot->pool->ops_data, w, SIGKILL, false);
                break;
        case WORKER_READY:
                w->failure = "sent no WATCHDOG=1 within watchdog_ms";
                slot_dispatch(w->slot, SLOT_EV_WATCHDOG, w, 0);
                break;
        case WORKER_STOPPING:
                log_emit(LOG_WARNING, &f, "%s did not exit within %llu ms; sending SIGKILL", w->who,
                         (unsigned long long) w->config->stop_timeout_ms);
                /* The whole group: a worker that is a shell wrapper must not
                 * leave its children behind. */
                w->slot->pool->ops->kill(w->slot->pool->ops_data, w, SIGKILL, true);
                break;
        default:
                break;
        }
}

static uint64_t min_deadline(uint64_t a, uint64_t b) {
        return !a ? b : !b ? a : MIN(a, b);
}

uint64_t pool_on_time(Pool *p, uint64_t now) {
        uint64_t next = 0;
        LIST_FOREACH(all, w, p->workers) {
                worker_on_time(w, now);
                next = min_deadline(next, w->deadline);
        }
        LIST_FOREACH(all, s, p->slots) {
                if (s->state == SLOT_BACKOFF && s->deadline && s->deadline <= now) {
                        s->deadline = 0;
                        slot_dispatch(s, SLOT_EV_BACKOFF_DONE, NULL, 0);
                }
        }
        /* Dispatching may have spawned workers and set new deadlines. */
        LIST_FOREACH(all, s, p->slots)
                next = min_deadline(next, s->deadline);
        LIST_FOREACH(all, w, p->workers)
                next = min_deadline(next, w->deadline);
        p->earliest = next;
        return next;
}

/* ---- slots -------------------------------------------------------------- */

Slot *slot_new(Pool *p, unsigned id) {
        Slot *s = calloc(1, sizeof(Slot));
        if (!s)
                return NULL;
        s->pool = p;
        s->id = id;
        s->state = SLOT_EMPTY;
        LIST_PREPEND(all, p->slots, s);
        return s;
}

void slot_free(Slot *s) {
        if (!s)
                return;
        LIST_REMOVE(all, s->pool->slots, s);
        free(s);
}

/* ---- upgrade ------------------------------------------------------------ */

unsigned slot_consecutive_failures(const Slot *s) {
        return s->consecutive_failures;
}

uint64_t slot_last_failure(const Slot *s) {
        return s->last_failure;
}

uint64_t slot_deadline(const Slot *s) {
        return s->deadline;
}

void slot_restore(Slot *s, SlotState state, unsigned restarts, unsigned consecutive_failures, uint64_t last_failure,
                  uint64_t deadline) {
        s->state = state < _SLOT_STATE_MAX ? state : SLOT_EMPTY;
        s->restarts = restarts;
        s->consecutive_failures = consecutive_failures;
        s->last_failure = last_failure;
        set_deadline(s->pool, &s->deadline, s->state == SLOT_BACKOFF ? deadline : 0);
}

/* Worker.failure points at a static string; a restored one maps back to
 * the lifecycle's own reasons. */
static const char *restore_failure(const char *f) {
        static const char * const known[] = {
                "did not become ready in time",
                "sent no WATCHDOG=1 within watchdog_ms",
                "asked for its watchdog to fire (WATCHDOG=trigger)",
        };
        if (!f)
                return NULL;
        for (size_t i = 0; i < ELEMENTSOF(known); i++)
                if (strcmp(f, known[i]) == 0)
                        return known[i];
        return "was killed for a failure before the upgrade";
}

Worker *slot_adopt_worker(Slot *s, const Worker *from, Config *config) {
        Pool *p = s->pool;
        Worker *w = calloc(1, sizeof(Worker));
        if (!w)
                return NULL;
        *w = (Worker) { .slot = s, .config = config_ref(config), .id = s->id, .generation = from->generation,
                        .pid = from->pid, .state = from->state, .role = from->role, .stop_sent = from->stop_sent,
                        .said_stopping = from->said_stopping, .counted = from->counted,
                        .failure = restore_failure(from->failure), .start_usec = from->start_usec,
                        .ready_usec = from->ready_usec, .handed = from->handed, .closed = from->closed,
                        .reports_closes = from->reports_closes, .fd_limit_reports = from->fd_limit_reports,
                        .fd_limit_lost = from->fd_limit_lost };
        snprintf(w->status, sizeof(w->status), "%s", from->status);
        snprintf(w->who, sizeof(w->who), "worker %u (pid %d)", s->id, (int) w->pid);
        set_deadline(p, &w->deadline, from->deadline);
        if (w->role == WORKER_LEAVING)
                LIST_PREPEND(leaving, s->leaving, w);
        else if (w->role == WORKER_INCOMING)
                s->incoming = w;
        else
                s->current = w;
        LIST_PREPEND(all, p->workers, w);
        p->n_workers++;
        return w;
}

void pool_restore(Pool *p, unsigned generation, bool gave_up, const char *giveup_reason, const uint64_t *stamps,
                  unsigned n_stamps) {
        p->generation = generation;
        p->gave_up = gave_up;
        p->changed = true;
        snprintf(p->giveup_reason, sizeof(p->giveup_reason), "%s", giveup_reason ? giveup_reason : "");
        for (unsigned i = 0; i < n_stamps; i++)
                (void) failure_window_record(&p->failures, stamps[i]);
}
