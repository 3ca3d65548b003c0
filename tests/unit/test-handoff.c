/* test-handoff: handoff.c's choice of worker (handoff_deliver()) with fake
 * slots and channels: round-robin turns, least-conn's loads and ties, a
 * silent worker taking turns, ip-hash's home slot and its fallback. The
 * connections are real sockets (ip-hash reads the peer address); no loop
 * runs, no worker process exists. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test-helpers.h"

#include "handoff.h"
#include "ipc.h"
#include "log.h"

#define N_SLOTS 4

/* ---- fake slots and channels -------------------------------------------- */

static char fake_slots[N_SLOTS];
static Slot *slots[N_SLOTS];
static Worker workers[N_SLOTS];
static bool is_ready[N_SLOTS];
static int refuse[N_SLOTS];        /* errno ipc_send_fd() returns, 0: takes it */
static int fake_ipc[N_SLOTS];
static int last_slot;              /* the slot that took the last connection, -1: none */

Worker *slot_ready_worker(const Slot *s) {
        unsigned i = (unsigned) ((const char *) s - fake_slots);
        return is_ready[i] ? &workers[i] : NULL;
}

int ipc_send_fd(Ipc *ipc, int fd, uint8_t listener_index) {
        unsigned i = (unsigned) ((int *) ipc - fake_ipc);
        assert_true(i < N_SLOTS);
        if (refuse[i])
                return -refuse[i];
        last_slot = (int) i;
        return 0;
}

unsigned ipc_inflight(Ipc *ipc) {
        return 0;
}

unsigned ipc_take_back(Ipc *ipc, IpcTakeBackCallback cb, void *userdata) {
        return 0;
}

void log_emit(int prio, const LogFields *f, const char *fmt, ...) {
}

/* ---- helpers ------------------------------------------------------------ */

static Handoff h;

static void setup_mode(Balance balance) {
        h = (Handoff) { .slots = slots, .n_slots = N_SLOTS, .balance = balance };
        for (unsigned i = 0; i < N_SLOTS; i++) {
                slots[i] = (Slot *) &fake_slots[i];
                workers[i] = (Worker) { .id = i, .pid = 100 + (pid_t) i, .ipc = (struct Ipc *) &fake_ipc[i] };
                is_ready[i] = true;
                refuse[i] = 0;
        }
}

/* Hand a connection over: returns the slot that took it, or -1 (then the
 * fd is still ours, and closed here). */
static int hand(int fd) {
        last_slot = -1;
        bool taken = handoff_deliver(&h, fd, 0);
        if (!taken)
                close(fd);
        assert_int_eq(taken, last_slot >= 0);
        return last_slot;
}

/* A connection without an IP peer (a unix socket): takes turns in every mode. */
static int unix_conn(void) {
        int sv[2];
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        close(sv[1]);
        return sv[0];
}

/* A TCP connection from 127.0.0.1, as accepted by a listener. */
static int listener_fd = -1;
static int tcp_conn(void) {
        if (listener_fd < 0) {
                struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
                listener_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                assert_true(listener_fd >= 0);
                assert_int_eq(bind(listener_fd, (struct sockaddr *) &a, sizeof(a)), 0);
                assert_int_eq(listen(listener_fd, 16), 0);
        }
        struct sockaddr_in a;
        socklen_t len = sizeof(a);
        assert_int_eq(getsockname(listener_fd, (struct sockaddr *) &a, &len), 0);
        int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_int_eq(connect(c, (struct sockaddr *) &a, len), 0);
        int s = accept4(listener_fd, NULL, NULL, SOCK_CLOEXEC);
        assert_true(s >= 0);
        close(c);   /* the peer's address stays readable after it closed */
        return s;
}

/* ---- tests -------------------------------------------------------------- */

static void test_round_robin_turns(void **state) {
        setup_mode(BALANCE_ROUND_ROBIN);
        for (unsigned k = 0; k < 2 * N_SLOTS; k++)
                assert_int_eq(hand(unix_conn()), k % N_SLOTS);
        /* A slot without a ready worker is passed over... */
        is_ready[1] = false;
        assert_int_eq(hand(unix_conn()), 0);
        assert_int_eq(hand(unix_conn()), 2);
        /* ... and so is one that cannot take it (at the bound), counted. */
        refuse[3] = EBUSY;
        uint64_t retried = h.n_retried;
        assert_int_eq(hand(unix_conn()), 0);
        assert_u64_eq(h.n_retried, retried + 1);
        assert_int_eq(hand(unix_conn()), 2);
        /* None can: the caller keeps it. */
        is_ready[0] = is_ready[2] = false;
        assert_int_eq(hand(unix_conn()), -1);
        assert_u64_eq(h.n_handed, 12);
}

/* least-conn: the fewest open connections, ties in turn from the cursor. */
static void test_least_conn_loads_and_ties(void **state) {
        setup_mode(BALANCE_LEAST_CONN);
        uint64_t open[N_SLOTS] = { 3, 1, 1, 2 };
        for (unsigned i = 0; i < N_SLOTS; i++)
                workers[i] = (Worker) { .id = i, .pid = 100 + (pid_t) i, .ipc = (struct Ipc *) &fake_ipc[i],
                                        .handed = 10 + open[i], .closed = 10, .reports_closes = true };
        assert_int_eq(hand(unix_conn()), 1);   /* tie of 1 and 2: 1 comes first */
        assert_int_eq(hand(unix_conn()), 2);   /* 1 has 2 open now */
        assert_int_eq(hand(unix_conn()), 3);   /* 1, 2, 3 tie at 2: from the cursor (3) */
        assert_int_eq(hand(unix_conn()), 1);
        /* The least loaded cannot take it: the next by load. */
        refuse[2] = EBUSY;
        assert_int_eq(hand(unix_conn()), 3);   /* 2 (2 open) refuses; 3, 0, 1 tie at 3: from the cursor */
}

/* A worker that never reports a close is, after HANDOFF_SILENT_AFTER
 * hand-offs, taken not to report, and takes its turn with the least loaded
 * instead of looking ever busier. */
static void test_least_conn_silent_worker_takes_turns(void **state) {
        setup_mode(BALANCE_LEAST_CONN);
        for (unsigned i = 0; i < N_SLOTS; i++)
                workers[i] = (Worker) { .id = i, .pid = 100 + (pid_t) i, .ipc = (struct Ipc *) &fake_ipc[i],
                                        .handed = 5, .closed = 5, .reports_closes = true };
        workers[0] = (Worker) { .id = 0, .pid = 100, .ipc = (struct Ipc *) &fake_ipc[0],
                                .handed = HANDOFF_SILENT_AFTER };
        unsigned got[N_SLOTS] = {};
        for (unsigned k = 0; k < 8; k++)
                got[hand(unix_conn())]++;
        assert_int_eq(got[0], 2);
        assert_int_eq(got[1] + got[2] + got[3], 6);
}

/* ip-hash: one client address always goes to its slot; while that slot
 * cannot take it, to the next one in slot order; home again after. */
static void test_ip_hash_home_and_fallback(void **state) {
        setup_mode(BALANCE_IP_HASH);
        int home = hand(tcp_conn());
        assert_true(home >= 0);
        for (unsigned k = 0; k < 5; k++)
                assert_int_eq(hand(tcp_conn()), home);
        is_ready[home] = false;
        int next = (home + 1) % N_SLOTS;
        assert_int_eq(hand(tcp_conn()), next);
        assert_int_eq(hand(tcp_conn()), next);
        /* At the bound is the same as not ready. */
        is_ready[home] = true;
        refuse[home] = EBUSY;
        assert_int_eq(hand(tcp_conn()), next);
        refuse[home] = 0;
        assert_int_eq(hand(tcp_conn()), home);
        /* No slot can: the caller keeps it. */
        for (unsigned i = 0; i < N_SLOTS; i++)
                is_ready[i] = false;
        assert_int_eq(hand(tcp_conn()), -1);
}

/* A peer without an IP address takes turns even in ip-hash. */
static void test_ip_hash_without_address_takes_turns(void **state) {
        setup_mode(BALANCE_IP_HASH);
        for (unsigned k = 0; k < N_SLOTS; k++)
                assert_int_eq(hand(unix_conn()), k);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_round_robin_turns),
                cmocka_unit_test(test_least_conn_loads_and_ties),
                cmocka_unit_test(test_least_conn_silent_worker_takes_turns),
                cmocka_unit_test(test_ip_hash_home_and_fallback),
                cmocka_unit_test(test_ip_hash_without_address_takes_turns),
        };
        int r = cmocka_run_group_tests(tests, NULL, NULL);
        if (listener_fd >= 0)
                close(listener_fd);
        return r;
}
