/* test-messages: worker messages as messages.c routes them (SPEC §6),
 * with fake slots and workers: who gets a line for "all", "others" or a
 * slot, its "from", what is undeliverable, what the master keeps and
 * streams to followers. The IPC channel and the control connection are
 * stubs that record what was sent; no loop, no process. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "test-helpers.h"

#include "ipc.h"
#include "log.h"
#include "messages.h"

#define N_SLOTS 4

/* ---- fake slots, workers and channels ----------------------------------- */

static char fake_slots[N_SLOTS];
static Slot *slots[N_SLOTS];
static Worker workers[N_SLOTS];
static Worker *current[N_SLOTS];   /* NULL: the slot has no worker */
static int fake_ipc[N_SLOTS];      /* each worker's channel: only its address matters */
static bool full[N_SLOTS];         /* its channel's queue is full */

typedef struct Sent {
        unsigned slot;
        char line[512];
} Sent;
static Sent sent[64];
static unsigned n_sent;

Worker *slot_current(const Slot *s) {
        return current[(const char *) s - fake_slots];
}

int ipc_send_line(Ipc *ipc, const char *line) {
        unsigned i = (unsigned) ((int *) ipc - fake_ipc);
        assert_true(i < N_SLOTS);
        if (full[i])
                return -ENOBUFS;
        assert_true(n_sent < ELEMENTSOF(sent));
        sent[n_sent].slot = i;
        snprintf(sent[n_sent].line, sizeof(sent[n_sent].line), "%s", line);
        n_sent++;
        return 0;
}

void log_emit(int prio, const LogFields *f, const char *fmt, ...) {
}

/* ---- a fake control connection ------------------------------------------ */

struct ControlConn {
        bool alive;
        unsigned refs, n_events, n_ok;
        char last[512];
};

bool control_conn_alive(const ControlConn *c) {
        return c->alive;
}
ControlConn *control_conn_ref(ControlConn *c) {
        c->refs++;
        return c;
}
ControlConn *control_conn_unref(ControlConn *c) {
        c->refs--;
        return NULL;
}
void control_send_event(ControlConn *c, cJSON *obj) {
        char *text = cJSON_PrintUnformatted(obj);
        snprintf(c->last, sizeof(c->last), "%s", text ? text : "");
        free(text);
        c->n_events++;
}
void control_reply_ok(ControlConn *c, cJSON *fields) {
        cJSON_Delete(fields);
        c->n_ok++;
}

/* ---- helpers ------------------------------------------------------------ */

static Messages ms;

static int setup(void **state) {
        messages_init(&ms);
        for (unsigned i = 0; i < N_SLOTS; i++) {
                slots[i] = (Slot *) &fake_slots[i];
                workers[i] = (Worker) { .id = i, .pid = 100 + (pid_t) i, .generation = 3,
                                        .ipc = (struct Ipc *) &fake_ipc[i] };
                snprintf(workers[i].who, sizeof(workers[i].who), "worker %u", i);
                current[i] = &workers[i];
                full[i] = false;
        }
        messages_set_slots(&ms, slots, N_SLOTS);
        n_sent = 0;
        return 0;
}

static int teardown(void **state) {
        messages_done(&ms);
        return 0;
}

static void from_worker(unsigned slot, IpcPeer to, unsigned to_slot, const char *data) {
        IpcMessage msg = { .type = IPC_MSG_MESSAGE, .peer = to, .slot = to_slot, .data = data,
                           .data_len = strlen(data) };
        messages_on_message(&ms, &workers[slot], &msg);
}

/* The slots that got a line, as a bit mask; each line's "from" is checked. */
static unsigned delivered_to(const char *from) {
        unsigned mask = 0;
        for (unsigned k = 0; k < n_sent; k++) {
                mask |= 1u << sent[k].slot;
                cJSON *o = cJSON_Parse(sent[k].line);
                assert_non_null(o);
                char *f = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(o, "from"));
                assert_string_equal(f, from);
                free(f);
                cJSON_Delete(o);
        }
        n_sent = 0;
        return mask;
}

/* ---- tests -------------------------------------------------------------- */

static void test_routing_between_workers(void **state) {
        from_worker(1, IPC_PEER_ALL, 0, "{\"a\":1}");
        assert_int_eq(delivered_to("1"), 0xf);     /* "all" includes the sender */
        from_worker(1, IPC_PEER_OTHERS, 0, "2");
        assert_int_eq(delivered_to("1"), 0xd);
        from_worker(3, IPC_PEER_SLOT, 2, "\"x\"");
        assert_int_eq(delivered_to("3"), 0x4);
        assert_str_contains(sent[0].line, "\"x\"");
        assert_u64_eq(ms.n_messages, 0);
        assert_u64_eq(ms.n_undeliverable, 0);
}

/* A slot without a running worker, or whose queue is full, gets nothing;
 * a slot that does not exist is counted as undeliverable. */
static void test_what_cannot_be_delivered(void **state) {
        current[0] = NULL;
        workers[2].pid = -102;   /* reaped */
        full[3] = true;
        from_worker(1, IPC_PEER_ALL, 0, "1");
        assert_int_eq(delivered_to("1"), 0x2);
        from_worker(1, IPC_PEER_SLOT, N_SLOTS, "1");
        assert_int_eq(n_sent, 0);
        assert_u64_eq(ms.n_undeliverable, 1);
        /* Fewer slots now (a scale-down): the one beyond is undeliverable. */
        messages_set_slots(&ms, slots, 2);
        from_worker(1, IPC_PEER_SLOT, 3, "1");
        assert_u64_eq(ms.n_undeliverable, 2);
}

/* From "ctl" (corralctl send): to one slot or all, the pids that took it. */
static void test_send_from_ctl(void **state) {
        pid_t pids[N_SLOTS];
        full[1] = true;
        assert_int_eq(messages_send(&ms, -1, "{}", 2, pids), 3);
        assert_int_eq(pids[0], 100);
        assert_int_eq(pids[1], 102);
        assert_int_eq(pids[2], 103);
        assert_int_eq(delivered_to("\"ctl\""), 0xd);
        assert_int_eq(messages_send(&ms, 2, "[1]", 3, NULL), 1);
        assert_int_eq(delivered_to("\"ctl\""), 0x4);
        assert_int_eq(messages_send(&ms, 1, "[1]", 3, NULL), 0);
}

/* For the master: counted, kept with who sent it, never forwarded. */
static void test_for_the_master_is_kept(void **state) {
        from_worker(2, IPC_PEER_MASTER, 0, "{\"load\":0.5}");
        assert_int_eq(n_sent, 0);
        assert_u64_eq(ms.n_messages, 1);
        assert_int_eq(ms.n_kept, 1);
        assert_string_equal(messages_kept(&ms, 0), "{\"from\":2,\"pid\":102,\"generation\":3,\"data\":{\"load\":0.5}}");

        /* Only the last MESSAGES_KEPT, oldest first. */
        char data[16];
        for (unsigned k = 0; k < MESSAGES_KEPT + 5; k++) {
                snprintf(data, sizeof(data), "%u", k);
                from_worker(0, IPC_PEER_MASTER, 0, data);
        }
        assert_int_eq(ms.n_kept, MESSAGES_KEPT);
        assert_u64_eq(ms.n_messages, MESSAGES_KEPT + 6);
        assert_str_contains(messages_kept(&ms, 0), "\"data\":5}");
        assert_str_contains(messages_kept(&ms, MESSAGES_KEPT - 1), "\"data\":68}");

        /* A large one is kept without its data. */
        size_t n = 5000;
        char *big = malloc(n + 1);
        assert_non_null(big);
        memset(big, '1', n);
        big[n] = 0;
        from_worker(1, IPC_PEER_MASTER, 0, big);
        free(big);
        assert_str_contains(messages_kept(&ms, MESSAGES_KEPT - 1), "\"data\":null,\"truncated\":5000}");
}

/* Followers get what is kept, then each new one; a gone follower is
 * dropped; at most MESSAGES_FOLLOWERS_MAX; the end of the stream is a
 * result. */
static void test_followers(void **state) {
        ControlConn a = { .alive = true }, more[MESSAGES_FOLLOWERS_MAX] = {};
        from_worker(1, IPC_PEER_MASTER, 0, "\"old\"");
        assert_int_eq(messages_follow(&ms, &a), 0);
        assert_int_eq(a.n_events, 1);
        assert_str_contains(a.last, "\"type\":\"message\"");
        assert_str_contains(a.last, "\"old\"");
        from_worker(2, IPC_PEER_MASTER, 0, "\"new\"");
        assert_int_eq(a.n_events, 2);
        assert_str_contains(a.last, "\"new\"");

        for (unsigned i = 0; i < MESSAGES_FOLLOWERS_MAX - 1; i++) {
                more[i].alive = true;
                assert_int_eq(messages_follow(&ms, &more[i]), 0);
        }
        more[MESSAGES_FOLLOWERS_MAX - 1].alive = true;
        assert_int_eq(messages_follow(&ms, &more[MESSAGES_FOLLOWERS_MAX - 1]), -EBUSY);
        /* One went away: its place is free again. */
        more[0].alive = false;
        assert_int_eq(messages_follow(&ms, &more[MESSAGES_FOLLOWERS_MAX - 1]), 0);
        assert_int_eq(more[0].refs, 0);

        messages_unfollow_all(&ms);
        assert_int_eq(a.n_ok, 1);
        assert_int_eq(a.refs, 0);
        assert_int_eq(ms.n_followers, 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_routing_between_workers, setup, teardown),
                cmocka_unit_test_setup_teardown(test_what_cannot_be_delivered, setup, teardown),
                cmocka_unit_test_setup_teardown(test_send_from_ctl, setup, teardown),
                cmocka_unit_test_setup_teardown(test_for_the_master_is_kept, setup, teardown),
                cmocka_unit_test_setup_teardown(test_followers, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
