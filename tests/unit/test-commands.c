/* test-commands: the control requests' arguments as commands.c checks
 * them, against a stub Manager: bad targets, numbers and signals get one
 * error reply and never reach the manager; good ones reach it with the
 * right values. No loop, no process (every slot has no worker, so nothing
 * is ever signalled). fuzz-control.c checks the same code with a real
 * control socket and random input. */
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "test-helpers.h"

#include "commands.h"
#include "ipc.h"
#include "log.h"
#include "manager.h"
#include "upgrade.h"

#define N_SLOTS 4

/* ---- the replies --------------------------------------------------------- */

struct ControlConn {
        unsigned n_ok, n_error;
        char error[512];
        char fields[512];
};

void control_reply_ok(ControlConn *c, cJSON *fields) {
        char *t = fields ? cJSON_PrintUnformatted(fields) : NULL;
        snprintf(c->fields, sizeof(c->fields), "%s", t ? t : "");
        free(t);
        cJSON_Delete(fields);
        c->n_ok++;
}
void control_reply_error(ControlConn *c, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->error, sizeof(c->error), fmt, ap);
        va_end(ap);
        c->n_error++;
}

/* ---- the Manager, stubbed: what reached it ------------------------------ */

static Manager manager;
static char fake_slots[N_SLOTS];
static Slot *slot_table[N_SLOTS];
static int restarted, scaled, sent_to;
static unsigned n_calls;

void manager_reload(Manager *m, ControlConn *c) {
        n_calls++;
        control_reply_ok(c, NULL);
}
void manager_restart(Manager *m, int slot, ControlConn *c) {
        n_calls++;
        restarted = slot;
        control_reply_ok(c, NULL);
}
int manager_scale(Manager *m, unsigned n) {
        n_calls++;
        scaled = (int) n;
        return 0;
}
unsigned manager_fds_per_worker(const Manager *m) {
        return 3;
}
int manager_fd_room(const Manager *m, unsigned n, unsigned *ret_max, unsigned *ret_open) {
        *ret_max = 1024;
        *ret_open = 10;
        return 0;
}
unsigned manager_count_ready(const Manager *m) {
        return 0;
}
unsigned messages_send(Messages *ms, int slot, const char *data, size_t len, pid_t *ret_pids) {
        n_calls++;
        sent_to = slot;
        ret_pids[0] = 4242;
        return 1;
}
int messages_follow(Messages *ms, ControlConn *c) {
        return -EBUSY;
}
const char *messages_kept(const Messages *ms, unsigned k) {
        return "{}";
}
void upgrade_request(Manager *m, ControlConn *c) {
        control_reply_error(c, "no upgrade here");
}
const char *slot_display_state(const Slot *s) {
        return "starting";
}
unsigned slot_id(const Slot *s) {
        return (unsigned) ((const char *) s - fake_slots);
}
unsigned slot_restarts(const Slot *s) {
        return 0;
}
Worker *slot_current(const Slot *s) {
        return NULL;   /* no process: nothing is signalled */
}
const char *worker_state_to_string(WorkerState s) {
        return "stub";
}
unsigned ipc_inflight(Ipc *ipc) {
        return 0;
}
void log_emit(int prio, const LogFields *f, const char *fmt, ...) {
}
LogTarget log_get_target(void) {
        return LOG_TARGET_STDERR;
}

/* ---- helpers ------------------------------------------------------------ */

static int setup(void **state) {
        manager = (Manager) {};
        for (unsigned i = 0; i < N_SLOTS; i++)
                slot_table[i] = (Slot *) &fake_slots[i];
        manager.slots = slot_table;
        manager.n_slots = N_SLOTS;
        restarted = scaled = sent_to = -100;
        n_calls = 0;
        return 0;
}

/* Run one request; returns the connection with its reply. */
static ControlConn run(const char *json) {
        ControlConn c = {};
        cJSON *req = cJSON_Parse(json);
        assert_non_null(req);
        commands_dispatch(&manager, &c, req);
        cJSON_Delete(req);
        assert_int_eq(c.n_ok + c.n_error, 1);   /* exactly one result */
        return c;
}

static void assert_refused(const char *json, const char *why) {
        unsigned before = n_calls;
        ControlConn c = run(json);
        if (c.n_error != 1)
                fail_msg("%s was accepted (%s), expected \"%s\"", json, c.fields, why);
        assert_str_contains(c.error, why);
        assert_int_eq(n_calls, before);   /* it never reached the manager */
}

/* ---- tests -------------------------------------------------------------- */

static void test_targets(void **state) {
        assert_int_eq(run("{\"command\":\"restart\",\"target\":\"all\"}").n_ok, 1);
        assert_int_eq(restarted, -1);
        assert_int_eq(run("{\"command\":\"restart\",\"target\":3}").n_ok, 1);
        assert_int_eq(restarted, 3);
        assert_refused("{\"command\":\"restart\",\"target\":4}", "no worker 4: slots are 0-3");
        assert_refused("{\"command\":\"restart\",\"target\":4096}", "must be a worker id (0-3) or \"all\"");
        assert_refused("{\"command\":\"restart\",\"target\":-1}", "must be a worker id");
        assert_refused("{\"command\":\"restart\",\"target\":1.5}", "must be a worker id");
        assert_refused("{\"command\":\"restart\",\"target\":1e300}", "must be a worker id");
        assert_refused("{\"command\":\"restart\",\"target\":\"1\"}", "must be a worker id");
        assert_refused("{\"command\":\"restart\",\"target\":\"ALL\"}", "must be a worker id");
        assert_refused("{\"command\":\"restart\"}", "must be a worker id");
        assert_refused("{\"command\":\"send\",\"target\":7,\"data\":1}", "no worker 7");
}

static void test_scale_numbers(void **state) {
        assert_int_eq(run("{\"command\":\"scale\",\"workers\":2}").n_ok, 1);
        assert_int_eq(scaled, 2);
        assert_int_eq(run("{\"command\":\"scale\",\"delta\":-3}").n_ok, 1);
        assert_int_eq(scaled, 1);
        assert_int_eq(run("{\"command\":\"scale\",\"workers\":4096}").n_ok, 1);
        assert_refused("{\"command\":\"scale\",\"workers\":4097}", "between 1 and 4096");
        assert_refused("{\"command\":\"scale\",\"workers\":0}", "between 1 and 4096");
        assert_refused("{\"command\":\"scale\",\"delta\":-4}", "cannot scale to 0 workers");
        assert_refused("{\"command\":\"scale\",\"workers\":2.5}", "between 1 and 4096");
        assert_refused("{\"command\":\"scale\",\"workers\":1e300}", "between 1 and 4096");
        assert_refused("{\"command\":\"scale\",\"workers\":\"2\"}", "needs a number");
        assert_refused("{\"command\":\"scale\",\"workers\":2,\"delta\":1}", "needs a number");
        assert_refused("{\"command\":\"scale\"}", "needs a number");
}

static void test_signals(void **state) {
        /* Accepted: by name with or without SIG, or by number; with no
         * running worker, one target says so and "all" signals nobody. */
        const char *good[] = { "\"TERM\"", "\"SIGTERM\"", "15", "\"HUP\"", "\"SIGUSR1\"", "64" };
        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                char req[128];
                snprintf(req, sizeof(req), "{\"command\":\"signal\",\"signal\":%s,\"target\":1}", good[i]);
                ControlConn c = run(req);
                assert_str_contains(c.error, "worker 1: no running process to signal");
                snprintf(req, sizeof(req), "{\"command\":\"signal\",\"signal\":%s,\"target\":\"all\"}", good[i]);
                c = run(req);
                assert_int_eq(c.n_ok, 1);
                assert_string_equal(c.fields, "{\"pids\":[]}");
        }
        /* A fraction is refused like a fractional target (it was
         * truncated: 9.5 sent SIGKILL). */
        const char *bad[] = { "\"FOO\"", "\"SIG\"", "\"\"", "0", "65", "-9", "null", "[15]", "9.5", "1e-3" };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                char req[128];
                snprintf(req, sizeof(req), "{\"command\":\"signal\",\"signal\":%s,\"target\":1}", bad[i]);
                assert_refused(req, "\"signal\" must be a signal name");
        }
        /* The signal is checked before the target. */
        assert_refused("{\"command\":\"signal\",\"signal\":\"TERM\",\"target\":9}", "no worker 9");
}

static void test_send_and_unknown(void **state) {
        ControlConn c = run("{\"command\":\"send\",\"target\":2,\"data\":{\"a\":[1,2]}}");
        assert_int_eq(c.n_ok, 1);
        assert_int_eq(sent_to, 2);
        assert_string_equal(c.fields, "{\"pids\":[4242],\"delivered\":1}");
        assert_refused("{\"command\":\"send\",\"target\":2}", "send needs \"data\"");
        assert_refused("{\"command\":\"frobnicate\"}", "unknown command \"frobnicate\"");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup(test_targets, setup),
                cmocka_unit_test_setup(test_scale_numbers, setup),
                cmocka_unit_test_setup(test_signals, setup),
                cmocka_unit_test_setup(test_send_and_unknown, setup),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
