/* test-upgrade-state: the upgrade state's JSON form (upgrade-state.c).
 * Every record round-trips field by field; every field, removed or given
 * a value of the wrong type or range, is refused with its path; what ties
 * records together is checked; a version 1 state (enums as numbers) is
 * still read; the envelope keeps what checks out. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-helpers.h"

#include "macros.h"
#include "upgrade-state.h"

static char *dup(const char *s) {
        char *d = strdup(s);
        assert_non_null(d);
        return d;
}

/* A state with every field set to something other than its default. */
static void sample(UpgradeState *s) {
        *s = (UpgradeState) {
                .version = UPGRADE_STATE_VERSION,
                .written_by = dup("0.1.0"),
                .request_usec = 123456789,
                .balance = BALANCE_LEAST_CONN,
                .hash_key = dup("000102030405060708090a0b0c0d0e0f"),
                .config = dup("{\"exec\": [\"/bin/true\"], \"workers\": 2}\n"),
                .reply_fd = 7,
                .upgrades = 3,
                .start_usec = 1000,
                .generation = 4,
                .rollout_serial = 9,
                .recycle_pause_until = 55,
                .recycle_next = 1,
                .messages = 11,
                .undeliverable = 12,
                .notify_dropped = 13,
                .status = dup("2/2 workers ready, generation 4"),
                .gave_up = true,
                .giveup_reason = dup("too many restarts"),
                .draining = true,
                .notify_fd = 3,
                .control_fd = 4,
                .control_path = dup("/run/corral/app.sock"),
        };
        s->waiter_fds = calloc(2, sizeof(int));
        s->waiter_fds[0] = 8;
        s->waiter_fds[1] = 9;
        s->n_waiter_fds = 2;
        s->clients = calloc(2, sizeof(UpgradeClient));
        s->clients[0] = (UpgradeClient) { .fd = 15, .unread = dup("{\"command\":\"sta") };
        s->clients[1] = (UpgradeClient) { .fd = 16 };
        s->n_clients = 2;
        s->failures = calloc(3, sizeof(uint64_t));
        s->failures[0] = 100;
        s->failures[1] = 200;
        s->failures[2] = 300;
        s->n_failures = 3;
        s->listeners = calloc(2, sizeof(UpgradeListener));
        s->listeners[0] = (UpgradeListener) { .fd = 5, .name = dup("web"), .display = dup("127.0.0.1:8080"),
                                              .activated = true };
        s->listeners[1] = (UpgradeListener) { .fd = 6, .name = dup("admin"), .display = dup("unix:/run/a.sock"),
                                              .unlink_path = dup("/run/a.sock"), .activated = true };
        s->n_listeners = 2;
        s->slots = calloc(2, sizeof(UpgradeSlot));
        s->slots[0] = (UpgradeSlot) { .id = 1, .state = SLOT_REPLACING, .restarts = 2, .consecutive_failures = 1 };
        s->slots[1] = (UpgradeSlot) { .id = 0, .state = SLOT_READY, .restarts = 5, .deadline = 77 };
        s->n_slots = 2;
        s->workers = calloc(3, sizeof(UpgradeWorker));
        s->workers[0] = (UpgradeWorker) { .slot = 0, .pid = 100, .generation = 4, .state = WORKER_READY,
                                          .role = WORKER_CURRENT, .start_usec = 10, .ready_usec = 20,
                                          .status = dup("serving"), .handed = 1000, .closed = 998,
                                          .reports_closes = true, .fd_limit_reports = 3, .fd_limit_lost = 7,
                                          .ipc_fd = 10, .output_fd = 11, .peer_fd = 17,
                                          .ipc_tail = dup("a half\"sent line}\n") };
        s->workers[1] = (UpgradeWorker) { .slot = 1, .pid = 101, .generation = 3, .state = WORKER_STOPPING,
                                          .role = WORKER_LEAVING, .stop_sent = true, .said_stopping = true,
                                          .counted = true, .failure = dup("did not become ready in time"),
                                          .deadline = 999, .status = dup(""), .ipc_fd = 12, .output_fd = -1,
                                          .peer_fd = -1 };
        s->workers[2] = (UpgradeWorker) { .slot = 1, .pid = 102, .generation = 4, .state = WORKER_STARTING,
                                          .role = WORKER_INCOMING, .start_usec = 30, .status = dup(""),
                                          .ipc_fd = 13, .output_fd = 14, .peer_fd = 18 };
        s->n_workers = 3;
}

static char *sample_text(void) {
        UpgradeState s;
        sample(&s);
        char *text = upgrade_state_format(&s);
        assert_non_null(text);
        upgrade_state_done(&s);
        return text;
}

static int parse(const char *text, UpgradeState *ret, char *error) {
        return upgrade_state_parse(text, strlen(text), ret, error, 300);
}

static void test_round_trip(void **state) {
        UpgradeState a, b;
        char error[300];
        sample(&a);
        _cleanup_free_ char *text = upgrade_state_format(&a);
        assert_non_null(text);
        int r = parse(text, &b, error);
        if (r < 0)
                fail_msg("parse: %d: %s", r, error);

        assert_int_eq(b.version, UPGRADE_STATE_VERSION);
        assert_string_equal(b.written_by, a.written_by);
        assert_u64_eq(b.request_usec, a.request_usec);
        assert_int_eq(b.balance, a.balance);
        assert_string_equal(b.hash_key, a.hash_key);
        assert_string_equal(b.config, a.config);
        assert_int_eq(b.reply_fd, a.reply_fd);
        assert_int_eq(b.n_waiter_fds, 2);
        assert_int_eq(b.waiter_fds[1], 9);
        assert_int_eq(b.n_clients, 2);
        assert_int_eq(b.clients[0].fd, 15);
        assert_string_equal(b.clients[0].unread, a.clients[0].unread);
        assert_int_eq(b.clients[1].fd, 16);
        assert_null(b.clients[1].unread);
        assert_int_eq(b.upgrades, a.upgrades);
        assert_u64_eq(b.start_usec, a.start_usec);
        assert_int_eq(b.generation, a.generation);
        assert_int_eq(b.rollout_serial, a.rollout_serial);
        assert_u64_eq(b.recycle_pause_until, a.recycle_pause_until);
        assert_int_eq(b.recycle_next, a.recycle_next);
        assert_u64_eq(b.messages, a.messages);
        assert_u64_eq(b.undeliverable, a.undeliverable);
        assert_u64_eq(b.notify_dropped, a.notify_dropped);
        assert_string_equal(b.status, a.status);
        assert_true(b.gave_up);
        assert_true(b.draining);
        assert_false(b.reload_failed);
        assert_string_equal(b.giveup_reason, a.giveup_reason);
        assert_int_eq(b.n_failures, 3);
        assert_memory_equal(b.failures, a.failures, 3 * sizeof(uint64_t));
        assert_int_eq(b.notify_fd, 3);
        assert_int_eq(b.control_fd, 4);
        assert_string_equal(b.control_path, a.control_path);

        assert_int_eq(b.n_listeners, 2);
        for (unsigned i = 0; i < 2; i++) {
                assert_int_eq(b.listeners[i].fd, a.listeners[i].fd);
                assert_string_equal(b.listeners[i].name, a.listeners[i].name);
                assert_string_equal(b.listeners[i].display, a.listeners[i].display);
                assert_int_eq(b.listeners[i].activated, a.listeners[i].activated);
        }
        assert_null(b.listeners[0].unlink_path);
        assert_string_equal(b.listeners[1].unlink_path, "/run/a.sock");

        assert_int_eq(b.n_slots, 2);
        for (unsigned i = 0; i < 2; i++)
                assert_memory_equal(&b.slots[i], &a.slots[i], sizeof(UpgradeSlot));

        assert_int_eq(b.n_workers, 3);
        for (unsigned i = 0; i < 3; i++) {
                const UpgradeWorker *x = &a.workers[i], *y = &b.workers[i];
                assert_int_eq(y->slot, x->slot);
                assert_int_eq(y->pid, x->pid);
                assert_int_eq(y->generation, x->generation);
                assert_int_eq(y->state, x->state);
                assert_int_eq(y->role, x->role);
                assert_int_eq(y->stop_sent, x->stop_sent);
                assert_int_eq(y->said_stopping, x->said_stopping);
                assert_int_eq(y->counted, x->counted);
                if (x->failure)
                        assert_string_equal(y->failure, x->failure);
                else
                        assert_null(y->failure);
                assert_u64_eq(y->start_usec, x->start_usec);
                assert_u64_eq(y->ready_usec, x->ready_usec);
                assert_u64_eq(y->deadline, x->deadline);
                assert_string_equal(y->status, x->status);
                assert_u64_eq(y->handed, x->handed);
                assert_u64_eq(y->closed, x->closed);
                assert_int_eq(y->reports_closes, x->reports_closes);
                assert_u64_eq(y->fd_limit_reports, x->fd_limit_reports);
                assert_u64_eq(y->fd_limit_lost, x->fd_limit_lost);
                assert_int_eq(y->ipc_fd, x->ipc_fd);
                assert_int_eq(y->output_fd, x->output_fd);
                assert_int_eq(y->peer_fd, x->peer_fd);
                if (x->ipc_tail)
                        assert_string_equal(y->ipc_tail, x->ipc_tail);
                else
                        assert_null(y->ipc_tail);
        }

        /* Enums travel by name. */
        assert_str_contains(text, "\"balance\":\"least-conn\"");
        assert_str_contains(text, "\"role\":\"incoming\"");
        assert_str_contains(text, "\"state\":\"replacing\"");
        assert_true(strncmp(text, "{\"format\":\"corrald-state\",\"version\":2,", 38) == 0);
        a.balance = BALANCE_IP_HASH;
        _cleanup_free_ char *hashed = upgrade_state_format(&a);
        assert_non_null(hashed);
        assert_str_contains(hashed, "\"balance\":\"ip-hash\"");
        upgrade_state_done(&a);
        upgrade_state_done(&b);
}

/* Parse text with obj edited: expect a refusal naming `path`. */
static void expect_refused(cJSON *root, const char *path, const char *what) {
        _cleanup_free_ char *text = cJSON_PrintUnformatted(root);
        UpgradeState s;
        char error[300];
        int r = parse(text, &s, error);
        if (r >= 0)
                fail_msg("%s: accepted", what);
        assert_int_eq(r, -EBADMSG);
        if (!strstr(error, path))
                fail_msg("%s: the error \"%s\" does not name %s", what, error, path);
        assert_null(s.workers);
}

static bool optional(const char *record, const char *key) {
        static const char * const keys[] = { "config", "control_path", "listeners.unlink", "workers.failure",
                                             "workers.ipc_tail", "workers.peer_fd", "workers.fd_limit_reports",
                                             "workers.fd_limit_lost", "clients.unread", "slots.last_failure",
                                             "draining", "reload_failed", "reloads_done", "reloads_failed",
                                             "scaled", "scaled_file_workers", "hash_key" };
        char k[160];
        snprintf(k, sizeof(k), "%.60s%s%.60s", record, record[0] ? "." : "", key);
        for (size_t i = 0; i < ELEMENTSOF(keys); i++)
                if (strcmp(k, keys[i]) == 0)
                        return true;
        return false;
}

/* Every key of every record: missing, or an object instead of its value. */
static void test_every_field_refused(void **state) {
        _cleanup_free_ char *text = sample_text();
        const char *records[] = { "", "listeners", "slots", "workers", "clients" };

        for (size_t k = 0; k < ELEMENTSOF(records); k++) {
                cJSON *root = cJSON_Parse(text);
                const cJSON *rec = records[k][0] ? cJSON_GetArrayItem(cJSON_GetObjectItem(root, records[k]), 0)
                                                 : root;
                unsigned n = (unsigned) cJSON_GetArraySize(rec);
                cJSON_Delete(root);
                for (unsigned i = 0; i < n; i++) {
                        char path[80], what[120];
                        for (int mode = 0; mode < 2; mode++) {
                                root = cJSON_Parse(text);
                                cJSON *o = records[k][0]
                                                   ? cJSON_GetArrayItem(cJSON_GetObjectItem(root, records[k]), 0)
                                                   : root;
                                char key[64];
                                snprintf(key, sizeof(key), "%s", cJSON_GetArrayItem(o, (int) i)->string);
                                if (!records[k][0] && (!strcmp(key, "format") || !strcmp(key, "version"))) {
                                        cJSON_Delete(root);
                                        continue;
                                }
                                snprintf(path, sizeof(path), "%s%s%s", records[k],
                                         records[k][0] ? "[0]." : "", key);
                                snprintf(what, sizeof(what), "%s %s", path, mode ? "an object" : "missing");
                                if (mode == 0) {
                                        cJSON_DeleteItemFromObject(o, key);
                                        if (optional(records[k], key)) {
                                                _cleanup_free_ char *t = cJSON_PrintUnformatted(root);
                                                UpgradeState s;
                                                char error[300];
                                                if (parse(t, &s, error) < 0)
                                                        fail_msg("%s: refused: %s", what, error);
                                                upgrade_state_done(&s);
                                                cJSON_Delete(root);
                                                continue;
                                        }
                                } else
                                        cJSON_ReplaceItemInObject(o, key, cJSON_CreateObject());
                                expect_refused(root, path, what);
                                cJSON_Delete(root);
                        }
                }
        }
}

typedef struct Mutation {
        const char *record;     /* "" or an array of records: its first entry, or the one at index */
        const char *key;
        const char *value;      /* JSON */
        const char *path;       /* what the error must name */
        int index;
} Mutation;

static void test_ranges_and_relations(void **state) {
        static const Mutation mutations[] = {
                { "workers", "pid", "1", "workers[0].pid" },
                { "workers", "pid", "0", "workers[0].pid" },
                { "workers", "pid", "-1", "workers[0].pid" },
                { "workers", "pid", "2147483648", "workers[0].pid" },
                { "workers", "pid", "100.5", "workers[0].pid" },
                { "workers", "pid", "101", "pid 101 is listed twice" },
                { "workers", "state", "\"bogus\"", "workers[0].state" },
                { "workers", "state", "\"exited\"", "workers[0].state" },
                { "workers", "state", "1", "workers[0].state" },      /* numbers only in version 1 */
                { "workers", "role", "\"leaving \"", "workers[0].role" },
                { "workers", "role", "\"incoming\"", "slot 1 has two incoming", 1 },
                { "workers", "role", "\"current\"", "slot 1 is replacing with a current and no incoming", 2 },
                { "workers", "slot", "2", "slot 2 does not exist" },
                { "workers", "slot", "4096", "workers[0].slot" },
                { "workers", "generation", "0", "workers[0].generation" },
                { "workers", "generation", "5", "newer than the instance" },
                { "workers", "ipc_fd", "2", "workers[0].ipc_fd" },
                { "workers", "ipc_fd", "-2", "workers[0].ipc_fd" },
                { "workers", "ipc_fd", "5", "file descriptor 5 is named twice" },
                { "workers", "peer_fd", "13", "file descriptor 13 is named twice" },
                { "workers", "peer_fd", "1", "workers[0].peer_fd" },
                { "workers", "start_usec", "1e300", "workers[0].start_usec" },
                { "workers", "handed", "-1", "workers[0].handed" },
                { "workers", "stop_sent", "1", "workers[0].stop_sent" },
                { "workers", "ipc_tail", "3", "workers[0].ipc_tail" },
                { "slots", "id", "2", "slots[0].id" },
                { "slots", "id", "0", "slot 0 is listed twice" },
                { "slots", "state", "\"removed\"", "slots[0].state" },
                { "slots", "state", "\"ready\"", "slots[0].state" },   /* has an incoming worker */
                { "slots", "state", "\"empty\"", "slots[0].state" },
                { "listeners", "fd", "-1", "listeners[0].fd" },
                { "", "generation", "0", "generation" },
                { "", "recycle_next", "2", "recycle_next" },
                { "", "notify_fd", "0", "notify_fd" },
                { "", "balance", "\"ip-hash \"", "balance" },
                { "", "hash_key", "\"000102030405060708090a0b0c0d0e0f0\"", "hash_key" },
                { "", "slots", "[]", "slots" },
                { "", "waiter_fds", "[-1]", "waiter_fds[0]" },
                { "clients", "fd", "16", "file descriptor 16 is named twice" },
                { "clients", "fd", "-1", "clients[0].fd" },
                { "", "upgrades", "4294967295", "upgrades" },
                { "", "format", "\"corrald-stat\"", "format" },
                { "", "version", "0", "version" },
        };
        _cleanup_free_ char *text = sample_text();
        for (size_t i = 0; i < ELEMENTSOF(mutations); i++) {
                const Mutation *mu = &mutations[i];
                cJSON *root = cJSON_Parse(text);
                cJSON *o = mu->record[0] ? cJSON_GetArrayItem(cJSON_GetObjectItem(root, mu->record), mu->index)
                                         : root;
                cJSON *v = cJSON_Parse(mu->value);
                assert_non_null(v);
                cJSON_ReplaceItemInObject(o, mu->key, v);
                char what[200];
                snprintf(what, sizeof(what), "%s[%d].%s = %s", mu->record, mu->index, mu->key, mu->value);
                expect_refused(root, mu->path, what);
                cJSON_Delete(root);
        }
}

static void test_strings_and_arrays_bounded(void **state) {
        _cleanup_free_ char *text = sample_text();
        cJSON *root = cJSON_Parse(text);
        char big[LISTEN_NAME_MAX + 2];
        memset(big, 'x', sizeof(big) - 1);
        big[NOTIFY_STATUS_MAX] = 0;
        cJSON_ReplaceItemInObject(cJSON_GetArrayItem(cJSON_GetObjectItem(root, "workers"), 0), "status",
                                  cJSON_CreateString(big));
        expect_refused(root, "workers[0].status", "a status too long");
        cJSON_Delete(root);

        root = cJSON_Parse(text);
        big[LISTEN_NAME_MAX + 1] = 0;
        cJSON_ReplaceItemInObject(cJSON_GetArrayItem(cJSON_GetObjectItem(root, "listeners"), 0), "name",
                                  cJSON_CreateString(big));
        expect_refused(root, "listeners[0].name", "a listener name too long");
        cJSON_Delete(root);

        root = cJSON_Parse(text);
        cJSON *a = cJSON_CreateArray();
        for (unsigned i = 0; i < RESTART_LIMIT_MAX + 2; i++)
                cJSON_AddItemToArray(a, cJSON_CreateNumber(i));
        cJSON_ReplaceItemInObject(root, "failures", a);
        expect_refused(root, "failures", "too many failure stamps");
        cJSON_Delete(root);
}

static void test_other_versions_and_garbage(void **state) {
        UpgradeState s;
        char error[300];
        assert_int_eq(parse("{\"format\":\"corrald-state\",\"version\":3}", &s, error), -EPROTONOSUPPORT);
        assert_str_contains(error, "format version 3, this corrald reads versions 1 to 2");
        assert_int_eq(parse("not json", &s, error), -EBADMSG);
        assert_str_contains(error, "not valid JSON");
        assert_int_eq(parse("[]", &s, error), -EBADMSG);
        assert_int_eq(parse("{\"format\":\"x\",\"version\":2}", &s, error), -EBADMSG);
        assert_str_contains(error, "not a corrald state");
        assert_int_eq(upgrade_state_parse("{}", 0, &s, error, sizeof(error)), -EBADMSG);
        /* Not NUL-terminated: the length is what counts. */
        _cleanup_free_ char *text = sample_text();
        size_t len = strlen(text);
        char *copy = malloc(len);
        memcpy(copy, text, len);
        assert_int_eq(upgrade_state_parse(copy, len, &s, error, sizeof(error)), 0);
        upgrade_state_done(&s);
        assert_int_eq(upgrade_state_parse(copy, len - 1, &s, error, sizeof(error)), -EBADMSG);
        free(copy);
}

/* What a corrald of version 1 wrote: enums as numbers, no configuration,
 * no waiter_fds. It is read, so an upgrade from it keeps the workers. */
static void test_version_1(void **state) {
        static const char v1[] =
                "{\"format\":\"corrald-state\",\"version\":1,\"written_by\":\"0.1.0\",\"request_usec\":5,"
                "\"balance\":\"shared\",\"reply_fd\":9,\"upgrades\":0,\"start_usec\":1,\"generation\":1,"
                "\"rollout_serial\":0,\"recycle_pause_until\":0,\"recycle_next\":0,\"messages\":0,"
                "\"undeliverable\":0,\"notify_dropped\":0,\"status\":\"1/1\",\"gave_up\":false,"
                "\"giveup_reason\":\"\",\"failures\":[],\"notify_fd\":3,\"control_fd\":4,"
                "\"listeners\":[{\"fd\":5,\"name\":\"listen0\",\"display\":\"127.0.0.1:80\",\"activated\":false}],"
                "\"slots\":[{\"id\":0,\"state\":2,\"state_name\":\"ready\",\"restarts\":0,"
                "\"consecutive_failures\":0,\"deadline\":0}],"
                "\"workers\":[{\"slot\":0,\"pid\":42,\"generation\":1,\"state\":1,\"role\":0,\"stop_sent\":false,"
                "\"said_stopping\":false,\"counted\":false,\"start_usec\":1,\"ready_usec\":2,\"deadline\":0,"
                "\"status\":\"\",\"handed\":0,\"closed\":0,\"reports_closes\":false,\"ipc_fd\":6,\"output_fd\":-1}]}";
        UpgradeState s;
        char error[300];
        int r = parse(v1, &s, error);
        if (r < 0)
                fail_msg("version 1: %s", error);
        assert_int_eq(s.version, 1);
        assert_null(s.config);
        assert_int_eq(s.slots[0].state, SLOT_READY);
        assert_int_eq(s.workers[0].state, WORKER_READY);
        assert_int_eq(s.workers[0].role, WORKER_CURRENT);
        assert_int_eq(s.n_waiter_fds, 0);
        upgrade_state_done(&s);
}

static void test_envelope_keeps_what_checks_out(void **state) {
        _cleanup_free_ char *text = sample_text();
        cJSON *root = cJSON_Parse(text);
        cJSON *ws = cJSON_GetObjectItem(root, "workers");
        cJSON_ReplaceItemInObject(cJSON_GetArrayItem(ws, 0), "pid", cJSON_CreateNumber(1));
        cJSON_ReplaceItemInObject(cJSON_GetArrayItem(ws, 1), "state", cJSON_CreateString("bogus"));
        cJSON_ReplaceItemInObject(cJSON_GetArrayItem(cJSON_GetObjectItem(root, "listeners"), 1), "fd",
                                  cJSON_CreateNumber(1));
        cJSON_ReplaceItemInObject(root, "notify_fd", cJSON_CreateString("3"));
        cJSON_ReplaceItemInObject(root, "version", cJSON_CreateNumber(77));
        cJSON_DeleteItemFromObject(root, "slots");
        _cleanup_free_ char *t = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);

        UpgradeState s, full;
        char error[300];
        assert_int_eq(parse(t, &full, error), -EPROTONOSUPPORT);
        assert_int_eq(upgrade_state_parse_envelope(t, strlen(t), &s), 0);
        /* pid 1 is out; the worker with a bad state is not read beyond its envelope. */
        assert_int_eq(s.n_workers, 2);
        assert_int_eq(s.workers[0].pid, 101);
        assert_int_eq(s.workers[1].pid, 102);
        assert_int_eq(s.n_listeners, 1);
        assert_int_eq(s.listeners[0].fd, 5);
        assert_int_eq(s.notify_fd, -1);
        assert_int_eq(s.control_fd, 4);
        upgrade_state_done(&s);

        /* Found by fuzz-upgrade-state: an array that is none, early on,
         * left every fd after it at 0 (stdin, which a fall back closes). */
        static const char early[] = "{\"format\":\"corrald-state\",\"version\":2,\"clients\":0,\"notify_fd\":9}";
        assert_int_eq(upgrade_state_parse_envelope(early, strlen(early), &s), 0);
        assert_int_eq(s.notify_fd, 9);
        assert_int_eq(s.control_fd, -1);
        assert_int_eq(s.reply_fd, -1);
        assert_int_eq(s.n_clients, 0);
        upgrade_state_done(&s);

        assert_int_eq(upgrade_state_parse_envelope("{\"format\":\"other\"}", 18, &s), -EBADMSG);
        assert_int_eq(upgrade_state_parse_envelope("nope", 4, &s), -EBADMSG);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_round_trip),
                cmocka_unit_test(test_every_field_refused),
                cmocka_unit_test(test_ranges_and_relations),
                cmocka_unit_test(test_strings_and_arrays_bounded),
                cmocka_unit_test(test_other_versions_and_garbage),
                cmocka_unit_test(test_version_1),
                cmocka_unit_test(test_envelope_keeps_what_checks_out),
        };
        return cmocka_run_group_tests_name("upgrade-state", tests, NULL, NULL);
}
