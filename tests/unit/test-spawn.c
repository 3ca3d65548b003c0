/* test-spawn: the worker's environment as spawn.c builds it before fork()
 * (SPEC §3): what is inherited, what is reserved for corrald, what the
 * config's env overrides, LISTEN_* only with listening fds (shared
 * balance), NODE_* only in the node dialect, and the placeholders the
 * child fills in. No process is started. */
#include <stdio.h>
#include <stdlib.h>

#include "test-helpers.h"

#include "spawn.h"
#include "util.h"

/* The value of name in env, or NULL; fails when it is there twice. */
static const char *get(char * const *env, const char *name) {
        size_t n = strlen(name);
        const char *found = NULL;
        for (; env && *env; env++)
                if (strncmp(*env, name, n) == 0 && (*env)[n] == '=') {
                        if (found)
                                fail_msg("%s is in the environment twice", name);
                        found = *env + n + 1;
                }
        return found;
}

static SpawnParams base(void) {
        static char *argv[] = { "w", NULL };
        return (SpawnParams) {
                .argv = argv,
                .notify_socket = "/run/corral/app.notify",
                .ipc_fd = -1,
                .instance = "app",
                .worker_id = 2,
                .generation = 7,
                .output = SPAWN_OUTPUT_INHERIT,
                .output_fd = -1,
        };
}

/* What corrald inherited from its own systemd unit never reaches a worker:
 * each gets its own values, or none. */
static int setup_env(void **state) {
        setenv("LISTEN_FDS", "9", 1);
        setenv("LISTEN_PID", "1", 1);
        setenv("LISTEN_FDNAMES", "theirs", 1);
        setenv("NOTIFY_SOCKET", "/run/systemd/notify", 1);
        setenv("WATCHDOG_USEC", "5", 1);
        setenv("WATCHDOG_PID", "1", 1);
        setenv("JOURNAL_STREAM", "8:9", 1);
        setenv("NODE_CHANNEL_FD", "4", 1);
        setenv("NODE_UNIQUE_ID", "99", 1);
        setenv("CORRAL_WORKER_ID", "5", 1);
        setenv("TEST_SPAWN_KEPT", "inherited", 1);
        setenv("TEST_SPAWN_OVERRIDDEN", "inherited", 1);
        return 0;
}

static void test_reserved_are_never_inherited(void **state) {
        SpawnParams p = base();
        char **env = NULL, *listen_pid, *watchdog_pid, **journal;
        assert_int_eq(spawn_build_env(&p, &env, &listen_pid, &watchdog_pid, &journal), 0);
        /* Hand-off (no listening fds): no LISTEN_* at all. */
        assert_null(get(env, "LISTEN_FDS"));
        assert_null(get(env, "LISTEN_PID"));
        assert_null(get(env, "LISTEN_FDNAMES"));
        assert_null(listen_pid);
        assert_string_equal(get(env, "NOTIFY_SOCKET"), "/run/corral/app.notify");
        assert_null(get(env, "WATCHDOG_USEC"));
        assert_null(get(env, "WATCHDOG_PID"));
        assert_null(watchdog_pid);
        assert_null(get(env, "JOURNAL_STREAM"));
        assert_null(journal);
        assert_null(get(env, "NODE_CHANNEL_FD"));
        assert_null(get(env, "NODE_UNIQUE_ID"));
        assert_string_equal(get(env, "CORRAL_INSTANCE"), "app");
        assert_string_equal(get(env, "CORRAL_WORKER_ID"), "2");
        assert_string_equal(get(env, "CORRAL_GENERATION"), "7");
        assert_string_equal(get(env, "CORRAL_IPC_FD"), "3");
        assert_string_equal(get(env, "TEST_SPAWN_KEPT"), "inherited");
        strv_free(env);
}

static void test_config_env_overrides_inherited(void **state) {
        char *extra[] = { "TEST_SPAWN_OVERRIDDEN=config", "TEST_SPAWN_NEW=1", NULL };
        SpawnParams p = base();
        p.extra_env = extra;
        char **env = NULL, *listen_pid, *watchdog_pid, **journal;
        assert_int_eq(spawn_build_env(&p, &env, &listen_pid, &watchdog_pid, &journal), 0);
        assert_string_equal(get(env, "TEST_SPAWN_OVERRIDDEN"), "config");
        assert_string_equal(get(env, "TEST_SPAWN_NEW"), "1");
        assert_string_equal(get(env, "TEST_SPAWN_KEPT"), "inherited");
        strv_free(env);
}

/* Shared balance: the listening fds come first, the IPC channel after. */
static void test_listen_only_with_fds(void **state) {
        int fds[] = { 10, 11 };
        SpawnParams p = base();
        p.listen_fds = fds;
        p.n_listen = 2;
        p.fdnames = "web:admin";
        char **env = NULL, *listen_pid, *watchdog_pid, **journal;
        assert_int_eq(spawn_build_env(&p, &env, &listen_pid, &watchdog_pid, &journal), 0);
        assert_string_equal(get(env, "LISTEN_FDS"), "2");
        assert_string_equal(get(env, "LISTEN_FDNAMES"), "web:admin");
        /* A placeholder as wide as any pid, which the child fills in. */
        assert_non_null(listen_pid);
        assert_int_eq(strlen(listen_pid), 10);
        assert_true(listen_pid == get(env, "LISTEN_PID"));
        assert_string_equal(get(env, "CORRAL_IPC_FD"), "5");
        strv_free(env);
}

static void test_watchdog_and_journal_placeholders(void **state) {
        SpawnParams p = base();
        p.watchdog_usec = 3000000;
        p.output = SPAWN_OUTPUT_JOURNAL;
        char **env = NULL, *listen_pid, *watchdog_pid, **journal;
        assert_int_eq(spawn_build_env(&p, &env, &listen_pid, &watchdog_pid, &journal), 0);
        assert_string_equal(get(env, "WATCHDOG_USEC"), "3000000");
        assert_non_null(watchdog_pid);
        assert_true(watchdog_pid == get(env, "WATCHDOG_PID"));
        /* JOURNAL_STREAM is last, so that the child can drop it by ending
         * the array there when its stderr did not become a stream. */
        assert_non_null(journal);
        assert_true(journal == &env[strv_length(env) - 1]);
        assert_str_contains(*journal, "JOURNAL_STREAM=");
        assert_int_eq(strlen(*journal), strlen("JOURNAL_STREAM=") + 41);
        strv_free(env);
}

/* The node dialect: the channel is Node's too, and cluster.worker.id is
 * the slot + 1. */
static void test_node_dialect(void **state) {
        SpawnParams p = base();
        p.node_channel = true;
        char **env = NULL, *listen_pid, *watchdog_pid, **journal;
        assert_int_eq(spawn_build_env(&p, &env, &listen_pid, &watchdog_pid, &journal), 0);
        assert_string_equal(get(env, "NODE_CHANNEL_FD"), "3");
        assert_string_equal(get(env, "NODE_CHANNEL_SERIALIZATION_MODE"), "json");
        assert_string_equal(get(env, "NODE_UNIQUE_ID"), "3");
        assert_string_equal(get(env, "CORRAL_IPC_FD"), "3");
        strv_free(env);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_reserved_are_never_inherited),
                cmocka_unit_test(test_config_env_overrides_inherited),
                cmocka_unit_test(test_listen_only_with_fds),
                cmocka_unit_test(test_watchdog_and_journal_placeholders),
                cmocka_unit_test(test_node_dialect),
        };
        return cmocka_run_group_tests(tests, setup_env, NULL);
}
