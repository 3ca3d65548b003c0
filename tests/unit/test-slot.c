/* test-slot: the lifecycle state machine (slot.c) and plans (rollout.c)
 * without processes: a fake host records spawns and signals, a fake clock
 * drives every deadline, and each test asserts the slot's state, the
 * outcomes queued and the deadlines after each event (issue 9). */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test-helpers.h"

#include "log.h"
#include "rollout.h"
#include "slot.h"

#define MS 1000ULL

/* ---- stubs for what slot.c and rollout.c log ----------------------------- */

/* What was logged about ERRNO= reports: the log budget's test looks. */
static unsigned n_errno_logged;
static char last_suppressed[256];

void log_emit(int prio, const LogFields *f, const char *fmt, ...) {
        char line[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        if (strstr(line, "reports ERRNO="))
                n_errno_logged++;
        else if (strstr(line, "suppressed"))
                snprintf(last_suppressed, sizeof(last_suppressed), "%s", line);
}

/* ---- a fake control client for plans ------------------------------------ */

typedef struct Client {
        unsigned refs, n_progress, n_results;
        bool ok;
        char error[800];
        double generation, replaced;
} Client;

static void *client_ref(void *c) {
        ((Client *) c)->refs++;
        return c;
}
static void client_unref(void *c) {
        ((Client *) c)->refs--;
}
static void client_progress(void *c, const char *line) {
        ((Client *) c)->n_progress++;
}
static void client_result(void *c, bool ok, cJSON *fields, const char *error) {
        Client *cl = c;
        cl->n_results++;
        cl->ok = ok;
        snprintf(cl->error, sizeof(cl->error), "%s", error ? error : "");
        cJSON *g = cJSON_GetObjectItemCaseSensitive(fields, "generation");
        cJSON *n = cJSON_GetObjectItemCaseSensitive(fields, "replaced");
        cl->generation = cJSON_IsNumber(g) ? g->valuedouble : -1;
        cl->replaced = cJSON_IsNumber(n) ? n->valuedouble : -1;
        cJSON_Delete(fields);
}
static const ReplyOps client_ops = {
        .ref = client_ref, .unref = client_unref, .progress = client_progress, .result = client_result,
};

/* ---- fake host and clock ------------------------------------------------ */

static uint64_t fake_now;

static uint64_t clock_now(void) {
        return fake_now;
}

typedef struct Kill {
        pid_t pid;
        int sig;
        bool group;
} Kill;

typedef struct Host {
        pid_t next_pid;
        int fail_next;             /* errno for the next start, 0: succeed */
        unsigned n_spawned, n_released;
        Kill kills[64];
        unsigned n_kills;
} Host;

static pid_t host_start(void *userdata, Worker *w, const char **ret_stage) {
        Host *h = userdata;
        if (h->fail_next) {
                int e = h->fail_next;
                h->fail_next = 0;
                *ret_stage = "exec";
                return -e;
        }
        h->n_spawned++;
        return h->next_pid++;
}

static void host_kill(void *userdata, Worker *w, int sig, bool group) {
        Host *h = userdata;
        assert_true(h->n_kills < ELEMENTSOF(h->kills));
        h->kills[h->n_kills++] = (Kill) { w->pid, sig, group };
}

static void host_release(void *userdata, Worker *w) {
        Host *h = userdata;
        h->n_released++;
        worker_free(w);
}

static const SlotOps ops = { .start = host_start, .kill = host_kill, .release = host_release };

typedef struct Fixture {
        Host host;
        Pool pool;
        Slot *slots[4];
} Fixture;

static Config *make_config(const char *json) {
        char path[] = "/tmp/test-slot-XXXXXX.json";
        int fd = mkstemps(path, 5);
        assert_true(fd >= 0);
        assert_int_eq(write(fd, json, strlen(json)), (long long) strlen(json));
        close(fd);
        ConfigOverrides o = { .path = path };
        Config *c = NULL;
        char *error = NULL;
        int r = config_build(&o, &c, &error);
        unlink(path);
        if (r < 0)
                fail_msg("config: %s", error ? error : "?");
        return c;
}

#define BASE_CONFIG \
        "\"exec\":[\"w\"],\"ready\":{\"timeout_ms\":1000},\"stop\":{\"timeout_ms\":500}," \
        "\"restart\":{\"limit\":3,\"window_ms\":10000,\"backoff_ms\":[100,1000]}"

static Fixture *setup_with(const char *json, unsigned n_slots) {
        Fixture *f = calloc(1, sizeof(Fixture));
        assert_non_null(f);
        f->host.next_pid = 100;
        fake_now = 1000 * MS;
        Config *c = make_config(json);
        assert_int_eq(pool_init(&f->pool, &ops, &f->host, clock_now, c), 0);
        config_unref(c);
        for (unsigned i = 0; i < n_slots; i++)
                f->slots[i] = slot_new(&f->pool, i);
        return f;
}

static int setup(void **state) {
        *state = setup_with("{" BASE_CONFIG "}", 1);
        return 0;
}

static int setup3(void **state) {
        *state = setup_with("{" BASE_CONFIG ",\"reload\":{\"max_surge\":1}}", 3);
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        LIST_FOREACH(all, w, f->pool.workers) {
                LIST_REMOVE(all, f->pool.workers, w);
                worker_free(w);
        }
        while (f->pool.slots)
                slot_free(f->pool.slots);
        pool_done(&f->pool);
        free(f);
        return 0;
}

/* Outcomes queued since the last call, as a string of kind letters:
 * R replaced, F replace failed, G gave up, X exec failed, E emptied. */
static const char *outcomes(Fixture *f, Outcome *ret_last) {
        static char buf[32];
        size_t n = 0;
        Outcome *o;
        while ((o = pool_pop_outcome(&f->pool))) {
                buf[n++] = "RFGXE"[o->kind];
                if (ret_last)
                        *ret_last = *o;
                free(o);
        }
        buf[n] = 0;
        return buf;
}

static void ready(Slot *s, Worker *w) {
        NotifyMsg msg = { .ready = true, .errno_value = -1 };
        slot_on_notify(w, &msg);
        (void) s;
}

static void exits(Worker *w, int code) {
        slot_dispatch(w->slot, SLOT_EV_EXIT, w, W_EXITCODE(code, 0));
}

static const Kill *last_kill(Fixture *f) {
        return f->host.n_kills ? &f->host.kills[f->host.n_kills - 1] : NULL;
}

#define assert_pool_find(f, pid, w) assert_true(pool_find_worker(&(f)->pool, (pid)) == (w))
#define assert_state(s, st) assert_string_equal(slot_state_to_string(slot_state(s)), slot_state_to_string(st))

/* ---- start, ready, crash, backoff --------------------------------------- */

static void test_start_ready(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        assert_state(s, SLOT_EMPTY);
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        assert_state(s, SLOT_STARTING);
        Worker *w = slot_current(s);
        assert_non_null(w);
        assert_int_eq(w->pid, 100);
        /* ready.timeout_ms is the starting worker's deadline. */
        assert_u64_eq(w->deadline, fake_now + 1000 * MS);
        assert_u64_eq(f->pool.earliest, fake_now + 1000 * MS);
        ready(s, w);
        assert_state(s, SLOT_READY);
        assert_true(slot_is_ready(s));
        assert_u64_eq(w->deadline, 0);   /* no watchdog configured */
        /* A second START changes nothing. */
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        assert_int_eq(f->host.n_spawned, 1);
        assert_string_equal(outcomes(f, NULL), "");
}

static void test_crash_backs_off_then_doubles(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        static const uint64_t delays[] = { 100, 200, 400 };

        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        /* The first crash after READY=1 is replaced at once (SPEC §2)... */
        ready(s, slot_current(s));
        fake_now += 1 * MS;
        exits(slot_current(s), 1);
        assert_state(s, SLOT_STARTING);
        assert_int_eq(f->host.n_spawned, 2);
        fake_now += 4000 * MS;
        /* ...the next ones within restart.window_ms of the last back off. */
        for (unsigned i = 0; i < ELEMENTSOF(delays); i++) {
                Worker *w = slot_current(s);
                ready(s, w);
                fake_now += 1 * MS;
                exits(w, 1);
                assert_state(s, SLOT_BACKOFF);
                assert_null(slot_current(s));
                assert_int_eq(slot_restarts(s), i + 2);
                /* Not yet: one microsecond before the backoff ends. */
                uint64_t due = fake_now + delays[i] * MS;
                assert_u64_eq(pool_on_time(&f->pool, due - 1), due);
                assert_state(s, SLOT_BACKOFF);
                fake_now = due;
                (void) pool_on_time(&f->pool, fake_now);
                assert_state(s, SLOT_STARTING);
                /* Within the window of the last failure, but never more
                 * than restart.limit (3) in one: the instance goes on. */
                fake_now += 4000 * MS;
        }
        assert_int_eq(f->host.n_spawned, 5);
        assert_int_eq(f->host.n_released, 4);
        assert_string_equal(outcomes(f, NULL), "");
}

static void test_crash_after_a_healthy_run_respawns_at_once(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        ready(s, slot_current(s));
        fake_now += 3000 * MS;   /* any time after READY=1: no other failure of the slot yet */
        exits(slot_current(s), 1);
        /* No backoff: the replacement is spawned in the same event. */
        assert_state(s, SLOT_STARTING);
        assert_int_eq(f->host.n_spawned, 2);
        assert_int_eq(slot_current(s)->pid, 101);
        /* Its next failure within the window backs off from min, even
         * after READY=1. */
        ready(s, slot_current(s));
        fake_now += 1 * MS;
        exits(slot_current(s), 1);
        assert_state(s, SLOT_BACKOFF);
        assert_u64_eq(pool_on_time(&f->pool, fake_now), fake_now + 100 * MS);
        fake_now += 100 * MS;
        (void) pool_on_time(&f->pool, fake_now);
        assert_state(s, SLOT_STARTING);
        /* A failure before READY=1 always waits min at least, even once
         * the window since the last one has passed. */
        fake_now += 10001 * MS;
        exits(slot_current(s), 1);
        assert_state(s, SLOT_BACKOFF);
        /* And a crash after serving, a window after the last failure, is
         * replaced at once again. */
        fake_now += 10000 * MS;
        (void) pool_on_time(&f->pool, fake_now);
        ready(s, slot_current(s));
        fake_now += 10001 * MS;
        exits(slot_current(s), 1);
        assert_state(s, SLOT_STARTING);
}

static void test_ready_timeout_kills_and_counts(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        Worker *w = slot_current(s);
        fake_now += 1000 * MS;
        (void) pool_on_time(&f->pool, fake_now);
        assert_non_null(last_kill(f));
        assert_int_eq(last_kill(f)->sig, SIGKILL);
        assert_int_eq(last_kill(f)->pid, 100);
        assert_non_null(w->failure);
        slot_dispatch(s, SLOT_EV_EXIT, w, W_EXITCODE(0, SIGKILL));
        assert_state(s, SLOT_BACKOFF);
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 1);
}

static void test_watchdog_then_stop_timeout(void **state) {
        Fixture *f = *state;
        Config *c = make_config("{" BASE_CONFIG ",\"watchdog_ms\":200}");
        config_unref(f->pool.config);
        f->pool.config = c;
        Slot *s = f->slots[0];
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        Worker *w = slot_current(s);
        ready(s, w);
        assert_u64_eq(w->deadline, fake_now + 200 * MS);
        /* A ping moves the deadline. */
        fake_now += 150 * MS;
        NotifyMsg ping = { .watchdog = true, .errno_value = -1 };
        slot_on_notify(w, &ping);
        assert_u64_eq(w->deadline, fake_now + 200 * MS);
        fake_now += 200 * MS;
        (void) pool_on_time(&f->pool, fake_now);
        assert_int_eq(last_kill(f)->sig, SIGABRT);
        assert_int_eq(w->state, WORKER_STOPPING);
        /* It ignores SIGABRT: SIGKILL to its group after stop.timeout_ms. */
        fake_now += 500 * MS;
        (void) pool_on_time(&f->pool, fake_now);
        assert_int_eq(last_kill(f)->sig, SIGKILL);
        assert_true(last_kill(f)->group);
        slot_dispatch(s, SLOT_EV_EXIT, w, W_EXITCODE(0, SIGKILL));
        /* A failure, the slot's first after READY=1: replaced at once. */
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 1);
        assert_state(s, SLOT_STARTING);
        assert_int_eq(f->host.n_spawned, 2);
}

/* ERRNO= reports are logged within one budget for the instance (issue 19):
 * three workers reporting 1000 each used to log 3000 lines. */
static void test_errno_log_budget_is_the_instances(void **state) {
        Fixture *f = *state;
        NotifyMsg report = { .errno_value = 5 };
        n_errno_logged = 0;
        last_suppressed[0] = 0;
        for (unsigned i = 0; i < 3; i++)
                slot_dispatch(f->slots[i], SLOT_EV_START, NULL, 0);
        for (unsigned k = 0; k < WORKER_NOTICE_BURST; k++)
                for (unsigned i = 0; i < 3; i++)
                        slot_on_notify(slot_current(f->slots[i]), &report);
        assert_int_eq(n_errno_logged, WORKER_NOTICE_BURST);
        assert_string_equal(last_suppressed, "");
        /* The next interval says how many were left out, once. */
        fake_now += WORKER_NOTICE_INTERVAL_USEC;
        slot_on_notify(slot_current(f->slots[1]), &report);
        assert_int_eq(n_errno_logged, WORKER_NOTICE_BURST + 1);
        assert_string_equal(last_suppressed, "suppressed 2000 ERRNO= reports of workers (log rate limit)");
}

static void test_give_up(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        Outcome last;
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        for (unsigned i = 0; i < 3; i++) {
                exits(slot_current(s), 1);
                assert_state(s, SLOT_BACKOFF);
                fake_now += 2000 * MS;   /* past any backoff, inside the window */
                (void) pool_on_time(&f->pool, fake_now);
        }
        assert_string_equal(outcomes(f, NULL), "");
        exits(slot_current(s), 1);   /* the 4th failure: more than limit 3 */
        assert_state(s, SLOT_FAILED);
        assert_true(f->pool.gave_up);
        assert_string_equal(outcomes(f, &last), "G");
        assert_str_contains(last.what, "exited with status 1");
        assert_str_contains(f->pool.giveup_reason, "more than 3 failures");
        assert_u64_eq(pool_on_time(&f->pool, fake_now + 60000 * MS), 0);   /* no respawn */
        /* A plan gives a failed slot another chance... */
        slot_dispatch(s, SLOT_EV_HOLD, NULL, 0);
        assert_state(s, SLOT_EMPTY);
        /* ...but if the plan fails, a given-up instance does not refill it. */
        slot_dispatch(s, SLOT_EV_CANCEL, NULL, 0);
        assert_state(s, SLOT_FAILED);
        assert_int_eq(f->host.n_spawned, 4);
}

static void test_exec_failure(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        f->host.fail_next = ENOENT;
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        assert_state(s, SLOT_BACKOFF);
        assert_string_equal(outcomes(f, NULL), "X");
        assert_int_eq(f->pool.n_workers, 0);
}

/* ---- STOPPING=1 --------------------------------------------------------- */

static void test_stopping_after_serving_replaces_at_once(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        Worker *old = slot_current(s);
        ready(s, old);
        fake_now += 10000 * MS / 3;   /* window / limit */
        NotifyMsg bye = { .stopping = true, .errno_value = -1 };
        slot_on_notify(old, &bye);
        assert_state(s, SLOT_STARTING);
        assert_true(slot_current(s) != old);
        assert_int_eq(old->role, WORKER_LEAVING);
        assert_int_eq(old->state, WORKER_STOPPING);
        assert_int_eq(f->host.n_kills, 0);   /* it leaves on its own */
        exits(old, 0);
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 0);
        assert_state(s, SLOT_STARTING);
}

static void test_stopping_too_soon_counts(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        Worker *old = slot_current(s);
        ready(s, old);
        fake_now += 10 * MS;
        NotifyMsg bye = { .stopping = true, .errno_value = -1 };
        slot_on_notify(old, &bye);
        /* A failure; the slot's first after READY=1, so its replacement
         * starts at once (SPEC §2). */
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 1);
        assert_state(s, SLOT_STARTING);
        assert_int_eq(f->host.n_spawned, 2);
        /* Its exit 1 afterwards is not counted twice. */
        exits(old, 1);
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 1);
        /* The replacement leaves too soon as well: within the window of
         * the last failure, it waits out the backoff. */
        ready(s, slot_current(s));
        fake_now += 10 * MS;
        slot_on_notify(slot_current(s), &bye);
        assert_state(s, SLOT_BACKOFF);
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 2);
        /* Never ready at all: a failure, and the backoff. */
        fake_now += 200 * MS;
        (void) pool_on_time(&f->pool, fake_now);
        assert_state(s, SLOT_STARTING);
        slot_on_notify(slot_current(s), &bye);
        assert_state(s, SLOT_BACKOFF);
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 3);
}

/* ---- replacement --------------------------------------------------------- */

static Worker *start_ready(Fixture *f, Slot *s) {
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        ready(s, slot_current(s));
        return slot_current(s);
}

static void test_replace_swaps_when_ready(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        Outcome last;
        Worker *old = start_ready(f, s);
        f->pool.plan = 7;
        slot_dispatch(s, SLOT_EV_REPLACE, NULL, 0);
        assert_state(s, SLOT_REPLACING);
        Worker *inc = slot_incoming(s);
        assert_non_null(inc);
        assert_true(slot_current(s) == old);
        assert_true(slot_is_ready(s));   /* the old one serves meanwhile */
        ready(s, inc);
        assert_state(s, SLOT_READY);
        assert_true(slot_current(s) == inc);
        assert_string_equal(outcomes(f, &last), "R");
        assert_int_eq(last.old_pid, old->pid);
        assert_int_eq(last.pid, inc->pid);
        assert_int_eq(last.plan, 7);
        assert_int_eq(last_kill(f)->pid, old->pid);   /* SIGTERM, then SIGCONT */
        assert_int_eq(f->host.kills[0].sig, SIGTERM);
        assert_u64_eq(old->deadline, fake_now + 500 * MS);
        exits(old, 0);
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 0);
}

static void test_replacement_failure_is_the_plans(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        Outcome last;
        Worker *old = start_ready(f, s);
        slot_dispatch(s, SLOT_EV_REPLACE, NULL, 0);
        exits(slot_incoming(s), 3);
        assert_state(s, SLOT_READY);
        assert_true(slot_current(s) == old);
        assert_string_equal(outcomes(f, &last), "F");
        assert_str_contains(last.what, "exited with status 3");
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 0);
        /* A replacement that says STOPPING=1 before it is ready, too. */
        slot_dispatch(s, SLOT_EV_REPLACE, NULL, 0);
        Worker *inc = slot_incoming(s);
        NotifyMsg bye = { .stopping = true, .errno_value = -1 };
        slot_on_notify(inc, &bye);
        assert_state(s, SLOT_READY);
        assert_string_equal(outcomes(f, &last), "F");
        assert_str_contains(last.what, "STOPPING=1");
        exits(inc, 1);
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 0);
}

static void test_cancel_stops_the_replacement(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        start_ready(f, s);
        slot_dispatch(s, SLOT_EV_REPLACE, NULL, 0);
        Worker *inc = slot_incoming(s);
        slot_dispatch(s, SLOT_EV_CANCEL, NULL, 0);
        assert_state(s, SLOT_READY);
        assert_null(slot_incoming(s));
        assert_int_eq(f->host.kills[0].pid, inc->pid);
        assert_int_eq(f->host.kills[0].sig, SIGTERM);
}

static void test_current_crash_while_replacing(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        Worker *old = start_ready(f, s);
        slot_dispatch(s, SLOT_EV_REPLACE, NULL, 0);
        exits(old, 1);
        /* The replacement is coming: no respawn of its own. */
        assert_state(s, SLOT_REPLACING);
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 1);
        assert_u64_eq(pool_on_time(&f->pool, fake_now), fake_now + 1000 * MS);   /* the incoming's ready timeout */
        ready(s, slot_incoming(s));
        assert_state(s, SLOT_READY);
        Outcome last;
        assert_string_equal(outcomes(f, &last), "R");
        assert_int_eq(last.old_pid, 0);
}

/* The reproduced bug of issue 9: a slot added by a reload whose first
 * worker fails must not get a respawn armed (the plan decides), and
 * removing it must free it at once. */
static void test_new_slot_replacement_fails_no_respawn(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        slot_dispatch(s, SLOT_EV_REPLACE, NULL, 0);
        assert_state(s, SLOT_REPLACING);
        assert_null(slot_current(s));
        exits(slot_incoming(s), 1);
        assert_state(s, SLOT_EMPTY);
        assert_string_equal(outcomes(f, NULL), "F");
        assert_u64_eq(pool_on_time(&f->pool, fake_now + 60000 * MS), 0);
        assert_int_eq(f->host.n_spawned, 1);
        slot_dispatch(s, SLOT_EV_REMOVE, NULL, 0);
        assert_state(s, SLOT_REMOVED);
        assert_string_equal(outcomes(f, NULL), "E");
}

static void test_remove_drains_then_empties(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        Worker *w = start_ready(f, s);
        slot_dispatch(s, SLOT_EV_REPLACE, NULL, 0);
        Worker *inc = slot_incoming(s);
        slot_dispatch(s, SLOT_EV_REMOVE, NULL, 0);
        assert_state(s, SLOT_REMOVED);
        assert_string_equal(outcomes(f, NULL), "");
        /* Every event but the exits is ignored now. */
        ready(s, inc);
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        assert_state(s, SLOT_REMOVED);
        assert_int_eq(f->host.n_spawned, 2);
        exits(w, 0);
        assert_string_equal(outcomes(f, NULL), "");
        exits(inc, 0);
        assert_string_equal(outcomes(f, NULL), "E");
        assert_int_eq(f->pool.n_workers, 0);
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 0);
}

static void test_backoff_slot_held_by_a_plan(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        exits(slot_current(s), 1);   /* before READY=1: a backoff */
        assert_state(s, SLOT_BACKOFF);
        slot_dispatch(s, SLOT_EV_HOLD, NULL, 0);
        assert_state(s, SLOT_EMPTY);
        assert_u64_eq(pool_on_time(&f->pool, fake_now + 60000 * MS), 0);
        /* A failed plan refills a held slot with CANCEL. */
        slot_dispatch(s, SLOT_EV_CANCEL, NULL, 0);
        assert_state(s, SLOT_STARTING);
}

static void test_replace_while_starting(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        Worker *old = slot_current(s);
        slot_dispatch(s, SLOT_EV_REPLACE, NULL, 0);
        assert_state(s, SLOT_REPLACING);
        /* The current one becomes ready meanwhile: still replacing. */
        ready(s, old);
        assert_state(s, SLOT_REPLACING);
        assert_true(slot_is_ready(s));
        ready(s, slot_incoming(s));
        assert_state(s, SLOT_READY);
        assert_int_eq(old->role, WORKER_LEAVING);
}

static void test_current_leaves_while_replacing(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        Worker *old = start_ready(f, s);
        slot_dispatch(s, SLOT_EV_REPLACE, NULL, 0);
        NotifyMsg bye = { .stopping = true, .errno_value = -1 };
        slot_on_notify(old, &bye);
        /* Its replacement is already coming: nothing else is spawned. */
        assert_state(s, SLOT_REPLACING);
        assert_null(slot_current(s));
        assert_int_eq(f->host.n_spawned, 2);
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 0);
        ready(s, slot_incoming(s));
        assert_state(s, SLOT_READY);
}

static void test_start_or_replace_from_backoff_and_failed(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        exits(slot_current(s), 1);   /* before READY=1: a backoff */
        assert_state(s, SLOT_BACKOFF);
        /* A restart of a slot in backoff starts at once and drops the respawn. */
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        assert_state(s, SLOT_STARTING);
        assert_u64_eq(pool_on_time(&f->pool, fake_now), fake_now + 1000 * MS);   /* only the ready timeout */
        exits(slot_current(s), 1);
        assert_state(s, SLOT_BACKOFF);
        slot_dispatch(s, SLOT_EV_REPLACE, NULL, 0);
        assert_state(s, SLOT_REPLACING);
        assert_null(slot_current(s));
        ready(s, slot_incoming(s));
        assert_state(s, SLOT_READY);
        /* From failed: START gives it a worker again. */
        f->pool.gave_up = true;
        exits(slot_current(s), 1);
        assert_state(s, SLOT_FAILED);
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        assert_state(s, SLOT_STARTING);
}

static void test_ready_mode_spawn(void **state) {
        Fixture *f = *state;
        Config *c = make_config("{\"exec\":[\"w\"],\"ready\":{\"mode\":\"spawn\"}}");
        config_unref(f->pool.config);
        f->pool.config = c;
        Slot *s = f->slots[0];
        slot_dispatch(s, SLOT_EV_START, NULL, 0);
        assert_state(s, SLOT_READY);
        Worker *old = slot_current(s);
        /* A replacement is ready at once: swapped in the same event. */
        slot_dispatch(s, SLOT_EV_REPLACE, NULL, 0);
        assert_state(s, SLOT_READY);
        assert_true(slot_current(s) != old);
        assert_string_equal(outcomes(f, NULL), "R");
}

static void test_removed_ignores_everything_but_exits(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        Worker *w = start_ready(f, s);
        slot_dispatch(s, SLOT_EV_REMOVE, NULL, 0);
        static const SlotEvent evs[] = { SLOT_EV_START, SLOT_EV_REPLACE, SLOT_EV_CANCEL, SLOT_EV_REMOVE,
                                         SLOT_EV_HOLD, SLOT_EV_BACKOFF_DONE };
        for (unsigned i = 0; i < ELEMENTSOF(evs); i++) {
                slot_dispatch(s, evs[i], NULL, 0);
                assert_state(s, SLOT_REMOVED);
        }
        assert_int_eq(f->host.n_spawned, 1);
        /* A crash of a worker being removed is still a failure. */
        exits(w, 9);
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 0);   /* we asked it to stop */
        assert_string_equal(outcomes(f, NULL), "E");
}

/* ---- upgrade: restore without spawning ------------------------------------ */

static void test_restore_adopts_and_keeps_deadlines(void **state) {
        Fixture *f = *state;
        uint64_t stamps[] = { fake_now - 2 * MS, fake_now - 1 * MS };
        pool_restore(&f->pool, 7, false, NULL, stamps, 2);
        assert_int_eq(f->pool.generation, 7);
        assert_int_eq(failure_window_count(&f->pool.failures, fake_now), 2);

        /* Slot 0 was in backoff: its respawn deadline is kept. */
        Slot *s = f->slots[0];
        slot_restore(s, SLOT_BACKOFF, 4, 2, fake_now, fake_now + 300 * MS);
        assert_state(s, SLOT_BACKOFF);
        assert_int_eq(slot_restarts(s), 4);
        assert_int_eq(slot_consecutive_failures(s), 2);
        assert_u64_eq(f->pool.earliest, fake_now + 300 * MS);
        assert_u64_eq(pool_on_time(&f->pool, fake_now + 300 * MS - 1), fake_now + 300 * MS);
        assert_int_eq(f->host.n_spawned, 0);
        fake_now += 300 * MS;
        (void) pool_on_time(&f->pool, fake_now);
        assert_state(s, SLOT_STARTING);
        assert_int_eq(f->host.n_spawned, 1);
}

static void test_adopted_worker_lives_on(void **state) {
        Fixture *f = *state;
        Slot *s = f->slots[0];
        slot_restore(s, SLOT_READY, 1, 0, 0, 0);
        Worker from = { .pid = 4242, .generation = 3, .state = WORKER_READY, .role = WORKER_CURRENT,
                        .start_usec = fake_now - 5000 * MS, .ready_usec = fake_now - 4000 * MS,
                        .deadline = 0, .handed = 9, .closed = 7, .reports_closes = true,
                        .failure = "some reason of an older corrald" };
        snprintf(from.status, sizeof(from.status), "serving");
        Worker *w = slot_adopt_worker(s, &from, f->pool.config);
        assert_non_null(w);
        assert_true(slot_current(s) == w);
        assert_true(slot_is_ready(s));
        assert_int_eq(w->pid, 4242);
        assert_int_eq(w->handed, 9);
        assert_string_equal(w->status, "serving");
        /* An unknown reason maps to a generic one owned by slot.c. */
        assert_string_equal(w->failure, "was killed for a failure before the upgrade");
        assert_pool_find(f, 4242, w);
        assert_int_eq(f->host.n_spawned, 0);
        /* Its lifecycle goes on: a crash after a healthy run respawns at once. */
        fake_now += 10000 * MS;
        w->failure = NULL;
        exits(w, 1);
        assert_state(s, SLOT_STARTING);
        assert_int_eq(slot_restarts(s), 2);
}

/* ---- plans ---------------------------------------------------------------- */

static RolloutResult feed(Fixture *f, Rollout *r, unsigned surge) {
        RolloutResult res = ROLLOUT_RUNNING;
        Outcome *o;
        while (res == ROLLOUT_RUNNING && (o = pool_pop_outcome(&f->pool))) {
                res = rollout_on_outcome(r, o, f->slots, 3, surge);
                free(o);
        }
        return res;
}

static unsigned replacing(Fixture *f) {
        unsigned n = 0;
        for (unsigned i = 0; i < 3; i++)
                n += slot_state(f->slots[i]) == SLOT_REPLACING;
        return n;
}

static void run_plan(Fixture *f, unsigned surge) {
        for (unsigned i = 0; i < 3; i++)
                start_ready(f, f->slots[i]);
        Rollout *r = rollout_new(ROLLOUT_RESTART, 5, 3, NULL, NULL, fake_now);
        f->pool.plan = 5;
        for (unsigned i = 0; i < 3; i++)
                rollout_enqueue(r, f->slots[i]);
        assert_int_eq(rollout_step(r, f->slots, 3, surge), ROLLOUT_RUNNING);
        for (unsigned round = 0; round < 3; round++) {
                /* Never more replacements starting than the surge, and
                 * never fewer ready workers than before. */
                assert_true(replacing(f) <= surge && replacing(f) >= 1);
                for (unsigned i = 0; i < 3; i++)
                        assert_true(slot_is_ready(f->slots[i]));
                for (unsigned i = 0; i < 3; i++)
                        if (slot_incoming(f->slots[i])) {
                                ready(f->slots[i], slot_incoming(f->slots[i]));
                                break;
                        }
                RolloutResult res = feed(f, r, surge);
                if (res == ROLLOUT_DONE)
                        break;
                assert_int_eq(res, ROLLOUT_RUNNING);
        }
        while (replacing(f)) {
                for (unsigned i = 0; i < 3; i++)
                        if (slot_incoming(f->slots[i]))
                                ready(f->slots[i], slot_incoming(f->slots[i]));
                (void) feed(f, r, surge);
        }
        assert_int_eq(r->replaced, 3);
        assert_int_eq(r->in_flight, 0);
        assert_int_eq(f->host.n_spawned, 6);
        rollout_free(r);
}

static void test_plan_surge_1(void **state) {
        run_plan(*state, 1);
}

static void test_plan_surge_2(void **state) {
        run_plan(*state, 2);
}

static void test_plan_fails_and_ignores_other_plans(void **state) {
        Fixture *f = *state;
        for (unsigned i = 0; i < 3; i++)
                start_ready(f, f->slots[i]);
        Rollout *r = rollout_new(ROLLOUT_RELOAD, 9, 3, NULL, NULL, fake_now);
        f->pool.plan = 9;
        for (unsigned i = 0; i < 3; i++)
                rollout_enqueue(r, f->slots[i]);
        assert_int_eq(rollout_step(r, f->slots, 3, 1), ROLLOUT_RUNNING);
        /* An outcome of an earlier plan (serial 8) is not this plan's. */
        Outcome stale = { .kind = OUTCOME_REPLACE_FAILED, .plan = 8 };
        assert_int_eq(rollout_on_outcome(r, &stale, f->slots, 3, 1), ROLLOUT_RUNNING);
        exits(slot_incoming(f->slots[0]), 1);
        assert_int_eq(feed(f, r, 1), ROLLOUT_FAILED);
        assert_str_contains(r->error, "slot 0");
        for (unsigned i = 0; i < 3; i++)
                assert_true(slot_is_ready(f->slots[i]));
        rollout_free(r);
}

/* A plan owns its ending: a restart that is done asks for nothing and
 * tells its client the generation and how many it replaced. */
static void test_plan_done_replies(void **state) {
        Fixture *f = *state;
        Client cl = {};
        for (unsigned i = 0; i < 3; i++)
                start_ready(f, f->slots[i]);
        Rollout *r = rollout_new(ROLLOUT_RESTART, 4, 3, &client_ops, &cl, fake_now);
        assert_int_eq(cl.refs, 1);
        f->pool.plan = 4;
        rollout_enqueue(r, f->slots[1]);
        assert_int_eq(rollout_step(r, f->slots, 3, 1), ROLLOUT_RUNNING);
        ready(f->slots[1], slot_incoming(f->slots[1]));
        assert_int_eq(feed(f, r, 1), ROLLOUT_DONE);
        RolloutEnd e;
        rollout_end(r, ROLLOUT_DONE, &e);
        assert_true(e.ok);
        assert_true(!e.config && !e.cancel && !e.pause_recycle && !e.tell_systemd);
        assert_int_eq(e.workers, 0);
        assert_null(rollout_finish(r, &e, 1, fake_now + 5 * MS));
        assert_int_eq(cl.n_results, 1);
        assert_true(cl.ok);
        assert_int_eq((long long) cl.generation, 1);
        assert_int_eq((long long) cl.replaced, 1);
        assert_int_eq(cl.n_progress, 2);   /* started, replaced */
        assert_int_eq(cl.refs, 0);
}

/* A reload that fails gives back the old configuration, generation and
 * worker count, cancels its replacements and tells systemd and the client
 * why; a reload that succeeds shrinks to its target. */
static void test_plan_reload_end(void **state) {
        Fixture *f = *state;
        Client cl = {};
        for (unsigned i = 0; i < 3; i++)
                start_ready(f, f->slots[i]);
        Config *old = f->pool.config;
        Rollout *r = rollout_new(ROLLOUT_RELOAD, 6, 3, &client_ops, &cl, fake_now);
        r->old_config = config_ref(old);
        r->old_generation = 1;
        r->old_workers = 2;
        r->target_workers = 3;
        f->pool.plan = 6;
        for (unsigned i = 0; i < 3; i++)
                rollout_enqueue(r, f->slots[i]);
        assert_int_eq(rollout_step(r, f->slots, 3, 2), ROLLOUT_RUNNING);
        exits(slot_incoming(f->slots[0]), 1);
        assert_int_eq(feed(f, r, 2), ROLLOUT_FAILED);
        RolloutEnd e;
        rollout_end(r, ROLLOUT_FAILED, &e);
        assert_false(e.ok);
        assert_true(e.config == old);
        assert_null(r->old_config);   /* handed over */
        assert_int_eq(e.generation, 1);
        assert_int_eq(e.workers, 2);
        assert_true(e.cancel && e.tell_systemd && !e.pause_recycle);
        assert_str_contains(e.status_prefix, "Reload failed: ");
        assert_true(slot_incoming(f->slots[1]) != NULL);
        rollout_cancel(r, f->slots, 3);
        assert_null(slot_incoming(f->slots[1]));
        for (unsigned i = 0; i < 3; i++)
                assert_true(slot_is_ready(f->slots[i]));
        assert_null(rollout_finish(r, &e, 1, fake_now));
        assert_int_eq(cl.n_results, 1);
        assert_false(cl.ok);
        assert_str_contains(cl.error, "reload failed: the new worker for slot 0");
        assert_int_eq(cl.refs, 0);
        config_unref(e.config);

        r = rollout_new(ROLLOUT_RELOAD, 7, 3, NULL, NULL, fake_now);
        r->target_workers = 2;
        rollout_end(r, ROLLOUT_DONE, &e);
        assert_true(e.ok && e.tell_systemd && !e.cancel && !e.config);
        assert_int_eq(e.workers, 2);
        assert_string_equal(e.status_prefix, "");
        rollout_free(r);
}

/* A failed recycle pauses recycling; a plan aborted by a stop tells its
 * client so. */
static void test_plan_recycle_fails_and_abort(void **state) {
        Client cl = {};
        RolloutEnd e;
        Rollout *r = rollout_new(ROLLOUT_RECYCLE, 2, 1, NULL, NULL, fake_now);
        snprintf(r->error, sizeof(r->error), "it exited");
        rollout_end(r, ROLLOUT_FAILED, &e);
        assert_true(e.pause_recycle && e.cancel && !e.tell_systemd && !e.config);
        assert_null(rollout_finish(r, &e, 1, fake_now));

        r = rollout_new(ROLLOUT_RESTART, 3, 1, &client_ops, &cl, fake_now);
        assert_null(rollout_abort(r, "corrald is stopping"));
        assert_false(cl.ok);
        assert_string_equal(cl.error, "restart aborted: corrald is stopping");
        assert_int_eq(cl.refs, 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_start_ready, setup, teardown),
                cmocka_unit_test_setup_teardown(test_plan_done_replies, setup3, teardown),
                cmocka_unit_test_setup_teardown(test_plan_reload_end, setup3, teardown),
                cmocka_unit_test_setup_teardown(test_plan_recycle_fails_and_abort, setup, teardown),
                cmocka_unit_test_setup_teardown(test_crash_backs_off_then_doubles, setup, teardown),
                cmocka_unit_test_setup_teardown(test_crash_after_a_healthy_run_respawns_at_once, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ready_timeout_kills_and_counts, setup, teardown),
                cmocka_unit_test_setup_teardown(test_watchdog_then_stop_timeout, setup, teardown),
                cmocka_unit_test_setup_teardown(test_give_up, setup, teardown),
                cmocka_unit_test_setup_teardown(test_exec_failure, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stopping_after_serving_replaces_at_once, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stopping_too_soon_counts, setup, teardown),
                cmocka_unit_test_setup_teardown(test_replace_swaps_when_ready, setup, teardown),
                cmocka_unit_test_setup_teardown(test_replacement_failure_is_the_plans, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cancel_stops_the_replacement, setup, teardown),
                cmocka_unit_test_setup_teardown(test_current_crash_while_replacing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_new_slot_replacement_fails_no_respawn, setup, teardown),
                cmocka_unit_test_setup_teardown(test_remove_drains_then_empties, setup, teardown),
                cmocka_unit_test_setup_teardown(test_backoff_slot_held_by_a_plan, setup, teardown),
                cmocka_unit_test_setup_teardown(test_replace_while_starting, setup, teardown),
                cmocka_unit_test_setup_teardown(test_current_leaves_while_replacing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_start_or_replace_from_backoff_and_failed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ready_mode_spawn, setup, teardown),
                cmocka_unit_test_setup_teardown(test_removed_ignores_everything_but_exits, setup, teardown),
                cmocka_unit_test_setup_teardown(test_restore_adopts_and_keeps_deadlines, setup, teardown),
                cmocka_unit_test_setup_teardown(test_adopted_worker_lives_on, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errno_log_budget_is_the_instances, setup3, teardown),
                cmocka_unit_test_setup_teardown(test_plan_surge_1, setup3, teardown),
                cmocka_unit_test_setup_teardown(test_plan_surge_2, setup3, teardown),
                cmocka_unit_test_setup_teardown(test_plan_fails_and_ignores_other_plans, setup3, teardown),
        };
        return cmocka_run_group_tests_name("slot", tests, NULL, NULL);
}
