/* test-config: config_build() — the JSON schema of SPEC §2, its defaults,
 * every error path with its message, and command-line overrides.
 *
 * Each test gets its own temporary directory (setup/teardown) holding the
 * config files it writes; the default file is DIR/app.json. JSON given to
 * build() is written with ' for " to stay readable; build_raw() writes bytes
 * unchanged, for the syntax-error tests. Tests marked "Regression" cover bugs
 * these tests found, fixed since. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "test-helpers.h"

#include "config.h"
#include "util.h"

typedef struct T {
        char dir[64];
        char path[128];   /* DIR/app.json */
        Config *c;
        char *err;
} T;

static int setup(void **state) {
        T *t = calloc(1, sizeof(T));
        if (!t)
                return -1;
        strcpy(t->dir, "/tmp/corral-test-config.XXXXXX");
        if (!mkdtemp(t->dir)) {
                free(t);
                return -1;
        }
        snprintf(t->path, sizeof(t->path), "%s/app.json", t->dir);
        *state = t;
        return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static int teardown(void **state) {
        T *t = *state;
        config_unref(t->c);
        free(t->err);
        int r = nftw(t->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        free(t);
        return r;
}

static void write_file(const char *path, const char *data, size_t len) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                fail_msg("open(%s): %m", path);
        assert_int_eq(write(fd, data, len), len);
        assert_int_eq(close(fd), 0);
}

/* Build from overrides *o; json, if not NULL, is written (as is) to DIR/app.json
 * and becomes o->path. Keeps the result in t. */
static int build_with_raw(T *t, const char *json, size_t len, ConfigOverrides *o) {
        t->c = config_unref(t->c);
        free(t->err);
        t->err = NULL;
        if (json) {
                write_file(t->path, json, len);
                o->path = t->path;
        }
        int r = config_build(o, &t->c, &t->err);
        if (r >= 0) {
                assert_int_eq(r, 0);
                assert_non_null(t->c);
                assert_null(t->err);
        } else
                assert_null(t->c);
        return r;
}

static int build_with(T *t, const char *json, ConfigOverrides *o) {
        if (!json)
                return build_with_raw(t, NULL, 0, o);
        char *s = strdup(json);
        assert_non_null(s);
        for (char *p = s; *p; p++)
                if (*p == '\'')
                        *p = '"';
        int r = build_with_raw(t, s, strlen(s), o);
        free(s);
        return r;
}

static int build(T *t, const char *json) {
        ConfigOverrides o = {};
        return build_with(t, json, &o);
}

static int build_raw(T *t, const char *json, size_t len) {
        ConfigOverrides o = {};
        return build_with_raw(t, json, len, &o);
}

#define EXEC "'exec': ['/bin/true']"
#define MINIMAL "{\"exec\": [\"/bin/true\"]}"

#define assert_ok(r, t)                                                                     \
        do {                                                                                \
                if ((r) < 0)                                                                \
                        fail_msg("config_build() == %d: %s", (r), (t)->err ? (t)->err : "(null)"); \
        } while (0)

#define assert_build_ok(t, json)                    \
        do {                                        \
                int _r = build((t), (json));        \
                assert_ok(_r, (t));                 \
        } while (0)

/* The message must be exactly "FILE: " + msg. */
#define assert_error_is(t, msg)                                                   \
        do {                                                                      \
                char _exp[1024];                                                  \
                snprintf(_exp, sizeof(_exp), "%s: %s", (t)->path, (msg));         \
                assert_non_null((t)->err);                                        \
                assert_string_equal((t)->err, _exp);                              \
        } while (0)

/* The message must start with "FILE: " and contain msg. */
#define assert_error_has(t, msg)                                                            \
        do {                                                                                \
                assert_non_null((t)->err);                                                  \
                if (strncmp((t)->err, (t)->path, strlen((t)->path)) != 0 ||                 \
                    strncmp((t)->err + strlen((t)->path), ": ", 2) != 0)                    \
                        fail_msg("\"%s\" does not start with \"%s: \"", (t)->err, (t)->path); \
                assert_str_contains((t)->err, (msg));                                       \
        } while (0)

#define assert_build_error(t, json, msg)                  \
        do {                                              \
                assert_int_eq(build((t), (json)), -EINVAL); \
                assert_error_is((t), (msg));              \
        } while (0)

#define assert_build_error_has(t, json, msg)              \
        do {                                              \
                assert_int_eq(build((t), (json)), -EINVAL); \
                assert_error_has((t), (msg));             \
        } while (0)

/* ---- every key accepted -------------------------------------------------- */

static void test_all_keys(void **state) {
        T *t = *state;
        assert_build_ok(t, "{ 'name': 'web-api_1.x@eu',"
                           "  'exec': ['/usr/bin/app', '--port', '8080'],"
                           "  'cwd': '/srv/app',"
                           "  'env': { 'A': '1', 'B': 'x=y', 'EMPTY': '', 'CORRAL': 'not reserved' },"
                           "  'workers': 7,"
                           "  'listen': ['127.0.0.1:8080', 'admin=[::1]:9090', 'unix:/run/app.sock', '8081'],"
                           "  'balance': 'least-conn',"
                           "  'ready': { 'mode': 'spawn', 'timeout_ms': 1234 },"
                           "  'stop': { 'signal': 'SIGINT', 'timeout_ms': 2500 },"
                           "  'restart': { 'limit': 3, 'window_ms': 5000, 'backoff_ms': [50, 800], 'on_giveup': 'stay' },"
                           "  'watchdog_ms': 3000,"
                           "  'recycle': { 'max_requests': 1000, 'max_rss_mb': 512, 'max_age_ms': 3600000 },"
                           "  'reload': { 'max_surge': 2 },"
                           "  'control': '/run/corral/web.sock' }");
        Config *c = t->c;
        assert_int_eq(c->n_ref, 1);
        assert_string_equal(c->path, t->path);
        assert_string_equal(c->name, "web-api_1.x@eu");
        assert_int_eq(strv_length(c->exec), 3);
        assert_string_equal(c->exec[0], "/usr/bin/app");
        assert_string_equal(c->exec[1], "--port");
        assert_string_equal(c->exec[2], "8080");
        assert_null(c->exec[3]);
        assert_string_equal(c->cwd, "/srv/app");
        assert_int_eq(strv_length(c->env), 4);
        assert_string_equal(c->env[0], "A=1");
        assert_string_equal(c->env[1], "B=x=y");
        assert_string_equal(c->env[2], "EMPTY=");
        assert_string_equal(c->env[3], "CORRAL=not reserved");
        assert_int_eq(c->workers, 7);
        assert_int_eq(config_worker_count(c), 7);
        assert_int_eq(c->n_listen, 4);
        assert_string_equal(c->listen[0].name, "");
        assert_string_equal(c->listen[0].display, "127.0.0.1:8080");
        assert_int_eq(c->listen[0].addr.ss_family, AF_INET);
        assert_string_equal(c->listen[1].name, "admin");
        assert_string_equal(c->listen[1].display, "[::1]:9090");
        assert_int_eq(c->listen[1].addr.ss_family, AF_INET6);
        assert_string_equal(c->listen[2].name, "");
        assert_string_equal(c->listen[2].display, "unix:/run/app.sock");
        assert_int_eq(c->listen[2].addr.ss_family, AF_UNIX);
        assert_string_equal(c->listen[3].display, "0.0.0.0:8081");
        assert_int_eq(c->balance, BALANCE_LEAST_CONN);
        assert_int_eq(c->ready_mode, READY_SPAWN);
        assert_u64_eq(c->ready_timeout_ms, 1234);
        assert_int_eq(c->stop_signal, SIGINT);
        assert_u64_eq(c->stop_timeout_ms, 2500);
        assert_int_eq(c->restart_limit, 3);
        assert_u64_eq(c->restart_window_ms, 5000);
        assert_u64_eq(c->backoff_min_ms, 50);
        assert_u64_eq(c->backoff_max_ms, 800);
        assert_int_eq(c->on_giveup, GIVEUP_STAY);
        assert_u64_eq(c->watchdog_ms, 3000);
        assert_u64_eq(c->recycle_max_requests, 1000);
        assert_u64_eq(c->recycle_max_rss_mb, 512);
        assert_u64_eq(c->recycle_max_age_ms, 3600000);
        assert_int_eq(c->reload_max_surge, 2);
        assert_string_equal(c->control, "/run/corral/web.sock");
}

static void test_alternative_values(void **state) {
        T *t = *state;

        assert_build_ok(t, "{" EXEC ", 'workers': 'auto', 'balance': 'round-robin', 'ready': {'mode': 'notify'},"
                           " 'restart': {'on_giveup': 'exit'}, 'stop': {'signal': 'TERM'}}");
        assert_int_eq(t->c->workers, 0);
        assert_int_eq(t->c->balance, BALANCE_ROUND_ROBIN);
        assert_int_eq(t->c->ready_mode, READY_NOTIFY);
        assert_int_eq(t->c->on_giveup, GIVEUP_EXIT);
        assert_int_eq(t->c->stop_signal, SIGTERM);

        assert_build_ok(t, "{" EXEC ", 'balance': 'shared', 'stop': {'signal': '9'}, 'ipc': 'node'}");
        assert_int_eq(t->c->balance, BALANCE_SHARED);
        assert_int_eq(t->c->ipc, IPC_DIALECT_NODE);
        assert_int_eq(t->c->stop_signal, SIGKILL);

        assert_build_ok(t, "{" EXEC ", 'balance': 'ip-hash'}");
        assert_int_eq(t->c->balance, BALANCE_IP_HASH);

        assert_build_ok(t, "{" EXEC ", 'stop': {'signal': 'SIGUSR2'}}");
        assert_int_eq(t->c->stop_signal, SIGUSR2);

        /* Empty nested objects, an empty env and an empty listen list are fine. */
        assert_build_ok(t, "{" EXEC ", 'env': {}, 'listen': [], 'ready': {}, 'stop': {}, 'restart': {},"
                           " 'recycle': {}, 'reload': {}}");
        assert_int_eq(strv_length(t->c->env), 0);
        assert_int_eq(t->c->n_listen, 0);
        assert_int_eq(t->c->restart_limit, 10);

        /* A relative cwd is the user's business (resolved from corrald's cwd). */
        assert_build_ok(t, "{" EXEC ", 'cwd': 'relative/dir'}");
        assert_string_equal(t->c->cwd, "relative/dir");
}

static void test_range_limits_accepted(void **state) {
        T *t = *state;
        assert_build_ok(t, "{" EXEC ", 'workers': 1, 'restart': {'limit': 1, 'window_ms': 1, 'backoff_ms': [0, 0]},"
                           " 'ready': {'timeout_ms': 0}, 'stop': {'timeout_ms': 1}, 'watchdog_ms': 0,"
                           " 'recycle': {'max_requests': 0, 'max_rss_mb': 0, 'max_age_ms': 0}, 'reload': {'max_surge': 1}}");
        assert_u64_eq(t->c->recycle_max_age_ms, 0);
        assert_int_eq(t->c->workers, 1);
        assert_int_eq(t->c->restart_limit, 1);
        assert_u64_eq(t->c->restart_window_ms, 1);
        assert_u64_eq(t->c->backoff_min_ms, 0);
        assert_u64_eq(t->c->backoff_max_ms, 0);
        assert_u64_eq(t->c->ready_timeout_ms, 0);
        assert_u64_eq(t->c->stop_timeout_ms, 1);

        assert_build_ok(t, "{" EXEC ", 'workers': 4096, 'restart': {'limit': 10000, 'backoff_ms': [7, 7]},"
                           " 'recycle': {'max_rss_mb': 4294967296}, 'reload': {'max_surge': 4096},"
                           " 'watchdog_ms': 4503599627370496}");
        assert_int_eq(t->c->workers, 4096);
        assert_int_eq(t->c->restart_limit, 10000);
        assert_u64_eq(t->c->backoff_min_ms, 7);
        assert_u64_eq(t->c->backoff_max_ms, 7);
        assert_u64_eq(t->c->recycle_max_rss_mb, 4294967296ULL);
        assert_int_eq(t->c->reload_max_surge, 4096);
        assert_u64_eq(t->c->watchdog_ms, 4503599627370496ULL);

        /* 1.0 is an integer in JSON's number model. */
        assert_build_ok(t, "{" EXEC ", 'workers': 2.0}");
        assert_int_eq(t->c->workers, 2);
}

/* ---- defaults (SPEC §2 table) ---------------------------------------------- */

static void test_defaults(void **state) {
        T *t = *state;
        assert_build_ok(t, "{" EXEC "}");
        Config *c = t->c;
        assert_string_equal(c->name, "app");
        assert_null(c->cwd);
        assert_int_eq(strv_length(c->env), 0);
        assert_int_eq(c->workers, 0);
        assert_int_eq(c->n_listen, 0);
        assert_int_eq(c->balance, BALANCE_SHARED);
        assert_int_eq(c->ipc, IPC_DIALECT_CORRAL);
        assert_int_eq(c->ready_mode, READY_NOTIFY);
        assert_u64_eq(c->ready_timeout_ms, 30000);
        assert_int_eq(c->stop_signal, SIGTERM);
        assert_u64_eq(c->stop_timeout_ms, 10000);
        assert_int_eq(c->restart_limit, 10);
        assert_u64_eq(c->restart_window_ms, 60000);
        assert_u64_eq(c->backoff_min_ms, 100);
        assert_u64_eq(c->backoff_max_ms, 10000);
        assert_int_eq(c->on_giveup, GIVEUP_EXIT);
        assert_u64_eq(c->watchdog_ms, 0);
        assert_u64_eq(c->recycle_max_requests, 0);
        assert_u64_eq(c->recycle_max_rss_mb, 0);
        assert_u64_eq(c->recycle_max_age_ms, 0);
        assert_int_eq(c->reload_max_surge, 1);
        assert_null(c->control);
}

static void test_default_name(void **state) {
        T *t = *state;
        static const struct {
                const char *file, *name;
        } cases[] = {
                { "web-api.json", "web-api" },
                { "app.conf.json", "app.conf" },
                { "noext", "noext" },
                { "x.json", "x" },
                { "app.JSON", "app.JSON" },   /* the suffix is case-sensitive */
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char path[256];
                snprintf(path, sizeof(path), "%s/%s", t->dir, cases[i].file);
                write_file(path, MINIMAL, strlen(MINIMAL));
                ConfigOverrides o = { .path = path };
                int r = build_with(t, NULL, &o);
                assert_ok(r, t);
                assert_string_equal(t->c->name, cases[i].name);
                assert_string_equal(t->c->path, path);
        }

        /* No file at all: "corral". */
        char *exec[] = { (char *) "/bin/true", NULL };
        ConfigOverrides o = { .exec = exec };
        int r = build_with(t, NULL, &o);
        assert_ok(r, t);
        assert_string_equal(t->c->name, "corral");
        assert_null(t->c->path);

        /* An explicit name wins over the file name. */
        assert_build_ok(t, "{" EXEC ", 'name': 'other'}");
        assert_string_equal(t->c->name, "other");
}

/* Regression (was a bug): a file called ".json" has an empty basename without ".json", so SPEC §2
 * says the name falls back to "corral"; default_name() only strips the suffix
 * when something precedes it (n > 5) and returns ".json" — a name p_name()
 * itself would refuse (it starts with '.'). */
static void test_default_name_dot_json_bug(void **state) {
        T *t = *state;
        char path[256];
        snprintf(path, sizeof(path), "%s/.json", t->dir);
        write_file(path, MINIMAL, strlen(MINIMAL));
        ConfigOverrides o = { .path = path };
        int r = build_with(t, NULL, &o);
        assert_ok(r, t);
        assert_string_equal(t->c->name, "corral");
}

/* ---- type and range errors ------------------------------------------------- */

/* The SPEC §2 example, verbatim. */
static void test_restart_limit_ten(void **state) {
        T *t = *state;
        /* Regression (was a bug): config.c prints "expected an integer between 1 and 10000, got
         * \"ten\"" because get_int() mentions the upper bound whenever it is
         * below 2^53; SPEC §2 fixes this exact message for a non-integer. */
        assert_build_error(t, "{" EXEC ", 'restart': {'limit': 'ten'}}",
                           "restart.limit: expected an integer >= 1, got \"ten\"");
}

static void test_restart_limit_range(void **state) {
        T *t = *state;
        assert_build_error_has(t, "{" EXEC ", 'restart': {'limit': 0}}", "restart.limit: expected an integer ");
        assert_str_contains(t->err, ", got 0");
        assert_build_error(t, "{" EXEC ", 'restart': {'limit': 10001}}",
                           "restart.limit: expected an integer between 1 and 10000, got 10001");
        assert_build_error_has(t, "{" EXEC ", 'restart': {'limit': 2.5}}", "restart.limit: expected an integer ");
        assert_str_contains(t->err, "got 2.5");
        assert_build_error_has(t, "{" EXEC ", 'restart': {'limit': null}}", "restart.limit: expected an integer ");
        assert_str_contains(t->err, "got null");
        assert_build_error_has(t, "{" EXEC ", 'restart': {'limit': true}}", "got true");
        assert_build_error_has(t, "{" EXEC ", 'restart': {'limit': [1]}}", "got [1]");
}

static void test_workers_errors(void **state) {
        T *t = *state;
        /* The upper bound is named only when it is what was crossed. */
        assert_build_error(t, "{" EXEC ", 'workers': 0}", "workers: expected an integer >= 1, got 0");
        assert_build_error(t, "{" EXEC ", 'workers': 4097}", "workers: expected an integer between 1 and 4096, got 4097");
        assert_build_error(t, "{" EXEC ", 'workers': -1}", "workers: expected an integer >= 1, got -1");
        assert_build_error(t, "{" EXEC ", 'workers': 1.5}", "workers: expected an integer >= 1, got 1.5");
        assert_build_error(t, "{" EXEC ", 'workers': '4'}", "workers: expected an integer >= 1 or \"auto\", got \"4\"");
        assert_build_error(t, "{" EXEC ", 'workers': 'Auto'}", "workers: expected an integer >= 1 or \"auto\", got \"Auto\"");
        assert_build_error(t, "{" EXEC ", 'workers': true}", "workers: expected an integer >= 1 or \"auto\", got true");
        assert_build_error(t, "{" EXEC ", 'workers': null}", "workers: expected an integer >= 1 or \"auto\", got null");
        /* Was reported as "got null": cJSON keeps it as an infinity. */
        assert_build_error(t, "{" EXEC ", 'workers': 1e400}", "workers: expected an integer >= 1, got a number out of range");
        assert_build_error(t, "{" EXEC ", 'workers': -1e400}", "workers: expected an integer >= 1, got a number out of range");
        assert_build_error(t, "{" EXEC ", 'stop': {'timeout_ms': 1e999}}",
                           "stop.timeout_ms: expected an integer >= 1, got a number out of range");
}

static void test_integer_key_errors(void **state) {
        T *t = *state;
        static const struct {
                const char *json, *msg;
        } cases[] = {
                { "'ready': {'timeout_ms': -1}", "ready.timeout_ms: expected an integer" },
                { "'ready': {'timeout_ms': '5s'}", "ready.timeout_ms: expected an integer" },
                { "'stop': {'timeout_ms': 0}", "stop.timeout_ms: expected an integer" },
                { "'stop': {'timeout_ms': 0.5}", "stop.timeout_ms: expected an integer" },
                { "'restart': {'window_ms': 0}", "restart.window_ms: expected an integer" },
                { "'restart': {'window_ms': '1m'}", "restart.window_ms: expected an integer" },
                { "'watchdog_ms': -1", "watchdog_ms: expected an integer" },
                { "'watchdog_ms': 1e400", "watchdog_ms: expected an integer" },
                { "'watchdog_ms': 4503599627370497", "watchdog_ms: expected an integer" },
                { "'watchdog_ms': false", "watchdog_ms: expected an integer" },
                { "'recycle': {'max_requests': -5}", "recycle.max_requests: expected an integer" },
                { "'recycle': {'max_requests': '1000'}", "recycle.max_requests: expected an integer" },
                { "'reload': {'max_surge': 0}", "reload.max_surge: expected an integer" },
                { "'reload': {'max_surge': 'all'}", "reload.max_surge: expected an integer" },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char json[256];
                snprintf(json, sizeof(json), "{" EXEC ", %s}", cases[i].json);
                assert_build_error_has(t, json, cases[i].msg);
        }

        /* A representative set, exactly. */
        assert_build_error(t, "{" EXEC ", 'recycle': {'max_rss_mb': 4294967297}}",
                           "recycle.max_rss_mb: expected an integer between 0 and 4294967296, got 4294967297");
        /* recycle.max_age_ms: 0 is off; below a second is a restart loop. */
        assert_build_ok(t, "{" EXEC ", 'recycle': {'max_age_ms': 1000}}");
        assert_u64_eq(t->c->recycle_max_age_ms, 1000);
        assert_build_error(t, "{" EXEC ", 'recycle': {'max_age_ms': 999}}",
                           "recycle.max_age_ms: expected 0 (off) or an integer >= 1000 (milliseconds), got 999");
        assert_build_error(t, "{" EXEC ", 'recycle': {'max_age_ms': 1}}",
                           "recycle.max_age_ms: expected 0 (off) or an integer >= 1000 (milliseconds), got 1");
        assert_build_error(t, "{" EXEC ", 'recycle': {'max_age_ms': -1000}}",
                           "recycle.max_age_ms: expected an integer >= 0, got -1000");
        assert_build_error(t, "{" EXEC ", 'recycle': {'max_age_ms': '1h'}}",
                           "recycle.max_age_ms: expected an integer >= 0, got \"1h\"");
        assert_build_error(t, "{" EXEC ", 'reload': {'max_surge': 4097}}",
                           "reload.max_surge: expected an integer between 1 and 4096, got 4097");
        assert_build_error_has(t, "{" EXEC ", 'stop': {'timeout_ms': 0}}", ", got 0");
        assert_build_error_has(t, "{" EXEC ", 'ready': {'timeout_ms': '5s'}}", ", got \"5s\"");
}

static void test_string_key_errors(void **state) {
        T *t = *state;
        assert_build_error(t, "{" EXEC ", 'balance': 'random'}",
                           "balance: expected \"shared\", \"round-robin\", \"least-conn\" or \"ip-hash\", got \"random\"");
        assert_build_error(t, "{" EXEC ", 'balance': 1}",
                           "balance: expected \"shared\", \"round-robin\", \"least-conn\" or \"ip-hash\", got 1");
        assert_build_error(t, "{" EXEC ", 'ipc': 'json'}", "ipc: expected \"corral\" or \"node\", got \"json\"");
        assert_build_error(t, "{" EXEC ", 'ready': {'mode': 'fork'}}",
                           "ready.mode: expected \"notify\" or \"spawn\", got \"fork\"");
        assert_build_error(t, "{" EXEC ", 'ready': {'mode': true}}",
                           "ready.mode: expected \"notify\" or \"spawn\", got true");
        assert_build_error(t, "{" EXEC ", 'restart': {'on_giveup': 'die'}}",
                           "restart.on_giveup: expected \"exit\" or \"stay\", got \"die\"");
        assert_build_error(t, "{" EXEC ", 'stop': {'signal': 'SIGBOGUS'}}",
                           "stop.signal: expected a signal name such as \"SIGTERM\", got \"SIGBOGUS\"");
        assert_build_error(t, "{" EXEC ", 'stop': {'signal': 15}}",
                           "stop.signal: expected a signal name such as \"SIGTERM\", got 15");
        assert_build_error_has(t, "{" EXEC ", 'stop': {'signal': 'sigterm'}}", "stop.signal: expected a signal name");
        assert_build_error_has(t, "{" EXEC ", 'stop': {'signal': ''}}", "stop.signal: expected a signal name");
        assert_build_error_has(t, "{" EXEC ", 'stop': {'signal': '0'}}", "stop.signal: expected a signal name");
        assert_build_error(t, "{" EXEC ", 'cwd': ''}", "cwd: expected a directory path, got \"\"");
        assert_build_error(t, "{" EXEC ", 'cwd': 5}", "cwd: expected a string, got 5");
}

static void test_name_errors(void **state) {
        T *t = *state;
        static const char *const bad[] = { "''", "'.hidden'", "'a/b'", "'a b'", "'caf\xc3\xa9'", "'tab\\t'", "5",
                                            "null" };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                char json[256];
                snprintf(json, sizeof(json), "{" EXEC ", 'name': %s}", bad[i]);
                if (strcmp(bad[i], "5") == 0 || strcmp(bad[i], "null") == 0)
                        assert_build_error_has(t, json, "name: expected a string, got ");
                else
                        assert_build_error_has(t, json,
                                               "name: expected 1-64 characters of [A-Za-z0-9-_.@] not starting with '.', got ");
        }
        assert_build_error(t, "{" EXEC ", 'name': '.x'}",
                           "name: expected 1-64 characters of [A-Za-z0-9-_.@] not starting with '.', got \".x\"");

        /* 64 characters are fine, 65 are not; the long value is shortened with "..." */
        char name[66], json[256];
        memset(name, 'n', 65);
        name[64] = 0;
        snprintf(json, sizeof(json), "{" EXEC ", 'name': '%s'}", name);
        assert_build_ok(t, json);
        assert_string_equal(t->c->name, name);
        name[64] = 'n';
        name[65] = 0;
        snprintf(json, sizeof(json), "{" EXEC ", 'name': '%s'}", name);
        assert_int_eq(build(t, json), -EINVAL);
        assert_error_has(t, "name: expected 1-64 characters");
        /* "got " + the first 60 bytes of the JSON rendering + "..." */
        char tail[80];
        snprintf(tail, sizeof(tail), "got \"%.59s...", name);
        assert_str_contains(t->err, tail);
        assert_int_eq(strcmp(t->err + strlen(t->err) - strlen(tail), tail), 0);
}

static void test_control_errors(void **state) {
        T *t = *state;
        assert_build_error(t, "{" EXEC ", 'control': 'run/app.sock'}",
                           "control: expected an absolute socket path shorter than 108 bytes, got \"run/app.sock\"");
        assert_build_error(t, "{" EXEC ", 'control': ''}",
                           "control: expected an absolute socket path shorter than 108 bytes, got \"\"");
        assert_build_error(t, "{" EXEC ", 'control': 1}", "control: expected a string, got 1");

        char p[120], json[256];
        memset(p, 'c', sizeof(p));
        p[0] = '/';
        p[107] = 0;   /* 107 bytes + NUL fit sun_path */
        snprintf(json, sizeof(json), "{" EXEC ", 'control': '%s'}", p);
        assert_build_ok(t, json);
        assert_string_equal(t->c->control, p);
        p[107] = 'c';
        p[108] = 0;
        snprintf(json, sizeof(json), "{" EXEC ", 'control': '%s'}", p);
        assert_build_error_has(t, json, "control: expected an absolute socket path shorter than 108 bytes, got ");
}

static void test_exec_errors(void **state) {
        T *t = *state;
        assert_build_error(t, "{'exec': []}",
                           "exec: expected a non-empty array whose first element names a program, got []");
        assert_build_error(t, "{'exec': ['', 'x']}",
                           "exec: expected a non-empty array whose first element names a program, got [\"\",\"x\"]");
        assert_build_error(t, "{'exec': '/bin/true'}", "exec: expected an array of strings, got \"/bin/true\"");
        assert_build_error(t, "{'exec': ['/bin/echo', 1]}", "exec: expected an array of strings, got element 1");
        assert_build_error(t, "{'exec': ['/bin/echo', null]}", "exec: expected an array of strings, got element null");
        assert_build_error(t, "{'exec': {'a': 'b'}}", "exec: expected an array of strings, got {\"a\":\"b\"}");
        assert_build_error(t, "{'workers': 2}", "exec: is required (or give the command after --)");
        assert_build_error(t, "{}", "exec: is required (or give the command after --)");
}

static void test_exec_missing_no_file(void **state) {
        T *t = *state;
        ConfigOverrides o = {};
        assert_int_eq(build_with(t, NULL, &o), -EINVAL);
        assert_string_equal(t->err, "command line: no worker command: give one after -- or \"exec\" in a config file");

        /* An empty "--" vector is no command either. */
        char *empty[] = { NULL };
        ConfigOverrides o2 = { .exec = empty };
        assert_int_eq(build_with(t, NULL, &o2), -EINVAL);
        assert_string_equal(t->err, "command line: no worker command: give one after -- or \"exec\" in a config file");
}

static void test_env_errors(void **state) {
        T *t = *state;
        static const char *const reserved[] = {
                "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                "CORRAL_INSTANCE", "CORRAL_WORKER_ID", "CORRAL_GENERATION", "CORRAL_IPC_FD", "JOURNAL_STREAM",
                "NODE_CHANNEL_FD", "NODE_CHANNEL_SERIALIZATION_MODE", "NODE_UNIQUE_ID",
        };
        for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
                char json[256], msg[256];
                snprintf(json, sizeof(json), "{" EXEC ", 'env': {'OK': 'x', '%s': '1'}}", reserved[i]);
                snprintf(msg, sizeof(msg), "env.%s: is set by corrald for every worker and cannot be overridden",
                         reserved[i]);
                assert_build_error(t, json, msg);
        }
        /* Only the names corrald sets are reserved, not the CORRAL_ prefix;
         * nor are other cases, prefixes or extensions of reserved names. */
        assert_build_ok(t, "{" EXEC ", 'env': {'CORRAL_MY_FLAG': '1', 'CORRAL_': '2', 'corral_instance': '3',"
                           " 'LISTEN_FDS_X': '4', 'MY_LISTEN_FDS': '5', 'LISTEN': '6', 'CORRAL_IPC': '7'}}");
        assert_int_eq(strv_length(t->c->env), 7);
        assert_string_equal(t->c->env[0], "CORRAL_MY_FLAG=1");

        assert_build_error(t, "{" EXEC ", 'env': {'A': 1}}", "env.A: expected a string, got 1");
        assert_build_error(t, "{" EXEC ", 'env': {'A': null}}", "env.A: expected a string, got null");
        assert_build_error(t, "{" EXEC ", 'env': {'A': ['x']}}", "env.A: expected a string, got [\"x\"]");
        assert_build_error(t, "{" EXEC ", 'env': {'A=B': 'x'}}", "env.A=B: expected a variable name without '='");
        assert_build_error(t, "{" EXEC ", 'env': {'': 'x'}}", "env.: expected a variable name without '='");
        /* The key is named, escaped, in the error. */
        assert_build_error(t, "{" EXEC ", 'env': {'A\\nB': 'x'}}",
                           "env.A\\x0aB: expected a variable name without control characters (such as a newline)");
        assert_build_error(t, "{" EXEC ", 'env': {'A\\u001bB': 'x'}}",
                           "env.A\\x1bB: expected a variable name without control characters (such as a newline)");
        /* A newline in a value is fine: the environment entry stays one. */
        assert_build_ok(t, "{" EXEC ", 'env': {'A': 'line1\\nline2'}}");
        assert_build_error(t, "{" EXEC ", 'env': ['A=1']}", "env: expected an object of strings, got [\"A=1\"]");
        assert_build_error(t, "{" EXEC ", 'env': 'A=1'}", "env: expected an object of strings, got \"A=1\"");
}

/* Regression (was a bug): walk() refuses duplicate keys ("the first would silently win"), but
 * the env object is parsed by p_env(), which never checks: {"A":"1","A":"2"}
 * is accepted and yields both "A=1" and "A=2" in the worker environment. */
static void test_env_duplicate_bug(void **state) {
        T *t = *state;
        assert_build_error(t, "{" EXEC ", 'env': {'A': '1', 'B': '2', 'A': '3'}}", "env.A: duplicate key");
}

/* Regression (was a bug): the file is refused when it holds a raw NUL byte, but cJSON decodes
 * the escape \u0000 into a NUL inside the C string, silently cutting the
 * value short: "exec": ["/bin/rm", "-rf", "/srv/data\u0000/cache"] runs
 * rm -rf /srv/data. Any string with an escaped NUL must be refused. */
static void test_escaped_nul_bug(void **state) {
        T *t = *state;
        static const char *const docs[] = {
                "{'exec': ['/bin/rm', '-rf', '/srv/data\\u0000/cache']}",
                "{" EXEC ", 'name': 'ab\\u0000cd'}",
                "{" EXEC ", 'env': {'A': 'x\\u0000y'}}",
                "{" EXEC ", 'cwd': '/srv\\u0000/app'}",
        };
        for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
                int r = build(t, docs[i]);
                if (r != -EINVAL)
                        fail_msg("config_build(%s) == %d, expected -EINVAL; got name=\"%s\" exec[%zu]=\"%s\"", docs[i],
                                 r, t->c ? t->c->name : "", t->c ? strv_length(t->c->exec) - 1 : 0,
                                 t->c ? t->c->exec[strv_length(t->c->exec) - 1] : "");
                assert_error_has(t, "NUL");
        }
        /* An escaped backslash followed by "u0000" is no NUL. */
        assert_build_ok(t, "{'exec': ['/bin/echo', 'a\\\\u0000']}");
        assert_string_equal(t->c->exec[1], "a\\u0000");
}

static void test_listen_errors(void **state) {
        T *t = *state;
        assert_build_error(t, "{" EXEC ", 'listen': ['127.0.0.1:8080', 'unix:run/app.sock']}",
                           "listen[1]: a unix: listener needs an absolute path, got \"unix:run/app.sock\"");
        assert_build_error(t, "{" EXEC ", 'listen': ['example.com:80']}",
                           "listen[0]: HOST must be an IPv4 address, \"localhost\" or \"*\" "
                           "(IPv6 goes in brackets; names are not resolved), got \"example.com:80\"");
        assert_build_error(t, "{" EXEC ", 'listen': ['127.0.0.1:0']}",
                           "listen[0]: expected HOST:PORT, [V6]:PORT, PORT or unix:/path, optionally prefixed NAME=, "
                           "got \"127.0.0.1:0\"");
        assert_build_error(t, "{" EXEC ", 'listen': ['we b=8080']}",
                           "listen[0]: the NAME= prefix must be printable ASCII without ':' or spaces, got \"we b=8080\"");
        assert_build_error(t, "{" EXEC ", 'listen': ['=8080']}",
                           "listen[0]: the NAME= prefix must be 1-255 characters, got \"=8080\"");
        assert_build_error_has(t, "{" EXEC ", 'listen': ['65536']}", "listen[0]: expected HOST:PORT");
        assert_build_error(t, "{" EXEC ", 'listen': ['web=8080', 'api=8081', 'web=8082']}",
                           "listen[2]: listener name \"web\" is used twice");
        assert_build_error(t, "{" EXEC ", 'listen': [8080]}", "listen[0]: expected a string, got 8080");
        assert_build_error(t, "{" EXEC ", 'listen': '8080'}", "listen: expected an array of strings, got \"8080\"");
        assert_build_error(t, "{" EXEC ", 'listen': {'web': '8080'}}",
                           "listen: expected an array of strings, got {\"web\":\"8080\"}");

        /* Unnamed entries may repeat an address: binding decides. */
        assert_build_ok(t, "{" EXEC ", 'listen': ['8080', 'a=8081', 'b=8082']}");
        assert_int_eq(t->c->n_listen, 3);
        assert_string_equal(t->c->listen[1].name, "a");
        assert_string_equal(t->c->listen[2].name, "b");
}

static void test_backoff_errors(void **state) {
        T *t = *state;
        assert_build_error(t, "{" EXEC ", 'restart': {'backoff_ms': [500, 100]}}",
                           "restart.backoff_ms: expected min <= max, got [500,100]");
        assert_build_error(t, "{" EXEC ", 'restart': {'backoff_ms': [100]}}",
                           "restart.backoff_ms: expected [min, max] in milliseconds, got [100]");
        assert_build_error(t, "{" EXEC ", 'restart': {'backoff_ms': [1, 2, 3]}}",
                           "restart.backoff_ms: expected [min, max] in milliseconds, got [1,2,3]");
        assert_build_error(t, "{" EXEC ", 'restart': {'backoff_ms': []}}",
                           "restart.backoff_ms: expected [min, max] in milliseconds, got []");
        assert_build_error(t, "{" EXEC ", 'restart': {'backoff_ms': 100}}",
                           "restart.backoff_ms: expected [min, max] in milliseconds, got 100");
        assert_build_error(t, "{" EXEC ", 'restart': {'backoff_ms': {'min': 1, 'max': 2}}}",
                           "restart.backoff_ms: expected [min, max] in milliseconds, got {\"min\":1,\"max\":2}");
        assert_build_error_has(t, "{" EXEC ", 'restart': {'backoff_ms': [-1, 100]}}",
                               "restart.backoff_ms[0]: expected an integer ");
        assert_build_error_has(t, "{" EXEC ", 'restart': {'backoff_ms': [1, 'x']}}",
                               "restart.backoff_ms[1]: expected an integer ");
        assert_str_contains(t->err, ", got \"x\"");
}

/* ---- schema errors --------------------------------------------------------- */

static void test_unknown_keys(void **state) {
        T *t = *state;
        assert_build_error(t, "{" EXEC ", 'wrokers': 4}", "wrokers: unknown key");
        /* PM2 habits: still refused, with corral's way of saying it. */
        assert_build_error(t, "{" EXEC ", 'instances': 4}",
                           "instances: unknown key (instances is PM2's name; corral calls it workers)");
        assert_build_error(t, "{" EXEC ", 'max_memory_restart': '300M'}",
                           "max_memory_restart: unknown key (PM2's max_memory_restart: corral says "
                           "recycle.max_rss_mb, in MiB)");
        assert_build_error(t, "{" EXEC ", 'kill_timeout': 3000}",
                           "kill_timeout: unknown key (PM2's kill_timeout: corral says stop.timeout_ms)");
        assert_build_error(t, "{" EXEC ", 'cron_restart': '0 3 * * *'}",
                           "cron_restart: unknown key (PM2's cron_restart: run `corralctl restart all` from a "
                           "systemd timer (corral.json(5)))");
        assert_build_error(t, "{" EXEC ", 'workers': 'max'}",
                           "workers: expected an integer >= 1 or \"auto\", got \"max\" (PM2's \"max\" is "
                           "corral's \"auto\": one worker per CPU)");
        /* Only at the top level: a nested key of that name is just unknown. */
        assert_build_error(t, "{" EXEC ", 'stop': {'kill_timeout': 1}}", "stop.kill_timeout: unknown key");
        assert_build_error(t, "{" EXEC ", 'Workers': 4}", "Workers: unknown key");
        assert_build_error(t, "{" EXEC ", 'stop': {'sginal': 'SIGINT'}}", "stop.sginal: unknown key");
        assert_build_error(t, "{" EXEC ", 'restart': {'limit': 3, 'backoff': [1, 2]}}", "restart.backoff: unknown key");
        assert_build_error(t, "{" EXEC ", 'reload': {'max_surge': 1, 'x': {}}}", "reload.x: unknown key");
        assert_build_error(t, "{" EXEC ", 'ready': {'timeout': 1}}", "ready.timeout: unknown key");
        assert_build_error(t, "{" EXEC ", 'recycle': {'max_rss': 1}}", "recycle.max_rss: unknown key");
        /* Dotted paths are not accepted as flat keys. */
        assert_build_error(t, "{" EXEC ", 'restart.limit': 3}", "restart.limit: unknown key");
        assert_build_error(t, "{" EXEC ", '': 3}", ": unknown key");
}

static void test_duplicate_keys(void **state) {
        T *t = *state;
        assert_build_error(t, "{" EXEC ", 'workers': 2, 'workers': 3}", "workers: duplicate key");
        assert_build_error(t, "{" EXEC ", " EXEC "}", "exec: duplicate key");
        assert_build_error(t, "{" EXEC ", 'restart': {'limit': 1, 'limit': 2}}", "restart.limit: duplicate key");
        assert_build_error(t, "{" EXEC ", 'ready': {'mode': 'spawn'}, 'ready': {'timeout_ms': 1}}",
                           "ready: duplicate key");
        assert_build_error(t, "{" EXEC ", 'listen': ['1'], 'listen': ['2']}", "listen: duplicate key");
}

static void test_nested_wrong_type(void **state) {
        T *t = *state;
        assert_build_error(t, "{" EXEC ", 'ready': 5}", "ready: expected an object, got 5");
        assert_build_error(t, "{" EXEC ", 'stop': 'SIGTERM'}", "stop: expected an object, got \"SIGTERM\"");
        assert_build_error(t, "{" EXEC ", 'restart': [10, 60000]}", "restart: expected an object, got [10,60000]");
        assert_build_error(t, "{" EXEC ", 'recycle': null}", "recycle: expected an object, got null");
        assert_build_error(t, "{" EXEC ", 'reload': true}", "reload: expected an object, got true");
}

/* ---- the file itself ------------------------------------------------------- */

static void test_syntax_errors(void **state) {
        T *t = *state;
        static const struct {
                const char *json, *msg;
        } cases[] = {
                { "{\"workers\": tru}", "JSON syntax error at line 1, column 13" },
                { "{\n\t\"workers\" 4}", "JSON syntax error at line 2, column 12" },
                { "{\n  \"workers\": 4\n  \"balance\": \"shared\"\n}", "JSON syntax error at line 3, column 3" },
                { "{\"a\":\n\n   }", "JSON syntax error at line 3, column 4" },
                { "{\"a\": [1 2]}", "JSON syntax error at line 1, column 10" },
                { "{\"a\": [1,]}", "JSON syntax error at line 1, column 10" },
                { "{\"a\": 1}}", "JSON syntax error at line 1, column 9" },
                { "{} x", "JSON syntax error at line 1, column 4" },
                { "{\"a\": 1} {}", "JSON syntax error at line 1, column 10" },
                { "{\n\n\n    \"a\": nul}", "JSON syntax error at line 4, column 10" },
                { "{\"exec\": [\"/bin/true\"], \"name\": \"a\\qb\"}", "JSON syntax error at line 1, column 35" },
                /* Unexpected end of input: the position is just past the last byte. */
                { "", "JSON syntax error at line 1, column 1: unexpected end of input" },
                { "   \n  ", "JSON syntax error at line 2, column 3: unexpected end of input" },
                { "{", "JSON syntax error at line 1, column 2: unexpected end of input" },
                { "{\"workers\": 4", "JSON syntax error at line 1, column 14: unexpected end of input" },
                { "{\n  \"exec\": [\"a\",\n", "JSON syntax error at line 3, column 1: unexpected end of input" },
                { "{\"a\":1,\"", "JSON syntax error at line 1, column 9: unexpected end of input" },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                assert_int_eq(build_raw(t, cases[i].json, strlen(cases[i].json)), -EINVAL);
                assert_error_is(t, cases[i].msg);
        }
}

/* Regression (was a bug): where cJSON expects an object key, its error pointer lands one byte
 * past the offending character (parse_string() reports input_pointer, which
 * starts after the expected opening quote). The column is then one too far,
 * and a trailing comma before the final '}' — the most common JSON mistake —
 * is reported as "unexpected end of input". */
static void test_syntax_error_key_position_bug(void **state) {
        T *t = *state;
        static const struct {
                const char *json, *msg;
        } cases[] = {
                { "{\n  \"workers\": 1,\n}", "JSON syntax error at line 3, column 1" },
                { "{\"workers\": 1,}", "JSON syntax error at line 1, column 15" },
                { "{x}", "JSON syntax error at line 1, column 2" },
                { "{'a': 1}", "JSON syntax error at line 1, column 2" },
                { "{\"a\": 1, x}", "JSON syntax error at line 1, column 10" },
        };
        /* Report every mismatching case, not just the first. */
        char report[2048] = "";
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                assert_int_eq(build_raw(t, cases[i].json, strlen(cases[i].json)), -EINVAL);
                const char *got = t->err + strlen(t->path) + 2;
                if (strcmp(got, cases[i].msg) != 0)
                        snprintf(report + strlen(report), sizeof(report) - strlen(report),
                                 "\n  input %-22s got \"%s\", expected \"%s\"", cases[i].json, got, cases[i].msg);
        }
        if (report[0])
                fail_msg("wrong syntax error positions:%s", report);
}

/* Regression (was a bug): same cause — an unterminated string at the end of the file is blamed
 * on the string's first byte instead of being an unexpected end of input. */
static void test_syntax_error_unterminated_string_bug(void **state) {
        T *t = *state;
        const char *json = "{\"name\": \"abc";
        assert_int_eq(build_raw(t, json, strlen(json)), -EINVAL);
        assert_error_is(t, "JSON syntax error at line 1, column 14: unexpected end of input");
}

static void test_top_level_not_object(void **state) {
        T *t = *state;
        static const char *const docs[] = { "[1]", "\"str\"", "null", "42", "true", "[]", " [ {\"exec\": [\"x\"]} ] " };
        for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
                assert_int_eq(build_raw(t, docs[i], strlen(docs[i])), -EINVAL);
                assert_error_is(t, "expected a JSON object at the top level");
        }
}

static void test_nul_byte(void **state) {
        T *t = *state;
        static const char doc[] = "{\"exec\": [\"/bin/true\"]}\0";
        assert_int_eq(build_raw(t, doc, sizeof(doc) - 1), -EINVAL);
        assert_error_is(t, "contains a NUL byte");
        static const char doc2[] = "{\"exec\": [\"/bin/\0true\"]}";
        assert_int_eq(build_raw(t, doc2, sizeof(doc2) - 1), -EINVAL);
        assert_error_is(t, "contains a NUL byte");
}

static void test_file_missing(void **state) {
        T *t = *state;
        char path[256];
        snprintf(path, sizeof(path), "%s/missing.json", t->dir);
        ConfigOverrides o = { .path = path };
        assert_int_eq(build_with(t, NULL, &o), -EINVAL);
        char exp[512];
        snprintf(exp, sizeof(exp), "%s: cannot open: No such file or directory", path);
        assert_string_equal(t->err, exp);
}

static void test_file_not_regular(void **state) {
        T *t = *state;
        char path[256];
        snprintf(path, sizeof(path), "%s/dir.json", t->dir);
        assert_int_eq(mkdir(path, 0700), 0);
        ConfigOverrides o = { .path = path };
        assert_int_eq(build_with(t, NULL, &o), -EINVAL);
        char exp[512];
        snprintf(exp, sizeof(exp), "%s: not a regular file", path);
        assert_string_equal(t->err, exp);
}

static void test_file_world_writable(void **state) {
        T *t = *state;
        assert_build_ok(t, MINIMAL);
        assert_int_eq(chmod(t->path, 0666), 0);
        ConfigOverrides o = { .path = t->path };
        assert_int_eq(build_with(t, NULL, &o), -EINVAL);
        assert_error_is(t, "writable by every user (mode 0666), so anyone could choose what corrald runs; "
                           "refusing it (chmod o-w)");
        /* Group-writable is the owner's business (a deploy group). */
        assert_int_eq(chmod(t->path, 0664), 0);
        assert_int_eq(build_with(t, NULL, &o), 0);
}

static void test_nesting_too_deep(void **state) {
        T *t = *state;
        size_t n = 1200, len = 0;
        char *json = malloc(2 * n + 64);
        assert_non_null(json);
        len += (size_t) sprintf(json, "{\"exec\": ");
        for (size_t i = 0; i < n; i++)
                json[len++] = '[';
        for (size_t i = 0; i < n; i++)
                json[len++] = ']';
        json[len++] = '}';
        assert_int_eq(build_raw(t, json, len), -EINVAL);
        assert_error_has(t, "JSON nested too deeply at line 1, column ");
        assert_error_has(t, "(more than 1000 levels)");
        /* Shallower but still wrong: an ordinary type error, not "too deep". */
        len = (size_t) sprintf(json, "{\"exec\": [[[1]]]}");
        assert_int_eq(build_raw(t, json, len), -EINVAL);
        assert_null(strstr(t->err, "nested too deeply"));
        /* A syntax error at a modest depth stays a syntax error. */
        len = (size_t) sprintf(json, "{\"exec\": [[[1,]]]}");
        assert_int_eq(build_raw(t, json, len), -EINVAL);
        assert_error_has(t, "JSON syntax error");
        free(json);
}

static void test_file_size_limit(void **state) {
        T *t = *state;
        const size_t max = 1024 * 1024;
        char *buf = malloc(max + 1);
        assert_non_null(buf);
        memset(buf, ' ', max + 1);
        memcpy(buf, MINIMAL, strlen(MINIMAL));

        /* Exactly the limit is accepted... */
        int r = build_raw(t, buf, max);
        if (r < 0)
                free(buf);
        assert_ok(r, t);
        /* ...one byte more is not. */
        r = build_raw(t, buf, max + 1);
        free(buf);
        assert_int_eq(r, -EINVAL);
        assert_error_is(t, "larger than 1048576 bytes");
}

/* ---- overrides ------------------------------------------------------------- */

static void test_overrides_win(void **state) {
        T *t = *state;
        const char *json = "{ 'exec': ['/bin/file-cmd', 'a'], 'workers': 8, 'name': 'filename',"
                           "  'listen': ['a=127.0.0.1:80', 'b=127.0.0.1:81'], 'balance': 'least-conn',"
                           "  'control': '/run/file.sock' }";
        char *listen[] = { (char *) "a=127.0.0.1:9000", (char *) "unix:/run/cli.sock", NULL };
        char *exec[] = { (char *) "/bin/cli-cmd", (char *) "x", (char *) "y", NULL };
        ConfigOverrides o = {
                .workers = 3,
                .listen = listen,
                .balance_set = true,
                .balance = BALANCE_SHARED,
                .name = "cliname",
                .control = "/run/cli-control.sock",
                .exec = exec,
        };
        int r = build_with(t, json, &o);
        assert_ok(r, t);
        Config *c = t->c;
        assert_int_eq(c->workers, 3);
        assert_int_eq(c->n_listen, 2);
        assert_string_equal(c->listen[0].name, "a");
        assert_string_equal(c->listen[0].display, "127.0.0.1:9000");
        assert_string_equal(c->listen[1].name, "");
        assert_string_equal(c->listen[1].display, "unix:/run/cli.sock");
        assert_int_eq(c->balance, BALANCE_SHARED);
        assert_string_equal(c->name, "cliname");
        assert_string_equal(c->control, "/run/cli-control.sock");
        assert_int_eq(strv_length(c->exec), 3);
        assert_string_equal(c->exec[0], "/bin/cli-cmd");
        assert_string_equal(c->exec[2], "y");
        /* The overrides' vectors are copied, not taken. */
        assert_true(c->exec != exec);
        assert_true(c->exec[0] != exec[0]);

        /* Not given: the file's values stay. */
        ConfigOverrides none = {};
        r = build_with(t, json, &none);
        assert_ok(r, t);
        assert_int_eq(t->c->workers, 8);
        assert_int_eq(t->c->n_listen, 2);
        assert_string_equal(t->c->listen[1].name, "b");
        assert_int_eq(t->c->balance, BALANCE_LEAST_CONN);
        assert_string_equal(t->c->name, "filename");
        assert_string_equal(t->c->control, "/run/file.sock");
        assert_string_equal(t->c->exec[0], "/bin/file-cmd");

        /* workers_auto beats a number in the file; an empty --listen list clears the file's. */
        char *no_listen[] = { NULL };
        ConfigOverrides o2 = { .workers_auto = true, .listen = no_listen, .balance_set = true,
                               .balance = BALANCE_ROUND_ROBIN };
        r = build_with(t, json, &o2);
        assert_ok(r, t);
        assert_int_eq(t->c->workers, 0);
        assert_int_eq(t->c->n_listen, 0);
        assert_int_eq(t->c->balance, BALANCE_ROUND_ROBIN);

        /* A --workers number beats "auto" in the file. */
        ConfigOverrides o3 = { .workers = 5 };
        r = build_with(t, "{" EXEC ", 'workers': 'auto'}", &o3);
        assert_ok(r, t);
        assert_int_eq(t->c->workers, 5);
}

static void test_overrides_without_file(void **state) {
        T *t = *state;
        char *exec[] = { (char *) "/bin/sleep", (char *) "1", NULL };
        char *listen[] = { (char *) "8080", NULL };
        ConfigOverrides o = { .exec = exec, .listen = listen, .workers = 2 };
        int r = build_with(t, NULL, &o);
        assert_ok(r, t);
        assert_null(t->c->path);
        assert_string_equal(t->c->name, "corral");
        assert_int_eq(t->c->workers, 2);
        assert_int_eq(t->c->n_listen, 1);
        assert_string_equal(t->c->listen[0].display, "0.0.0.0:8080");
        assert_string_equal(t->c->exec[1], "1");
        assert_u64_eq(t->c->ready_timeout_ms, 30000);
}

static void test_override_errors(void **state) {
        T *t = *state;
        char *exec[] = { (char *) "/bin/true", NULL };

        ConfigOverrides o1 = { .exec = exec, .name = ".bad" };
        assert_int_eq(build_with(t, NULL, &o1), -EINVAL);
        assert_string_equal(t->err, "command line: --name: expected 1-64 characters of [A-Za-z0-9-_.@] not starting "
                                    "with '.', got \".bad\"");

        ConfigOverrides o2 = { .exec = exec, .control = "rel.sock" };
        assert_int_eq(build_with(t, NULL, &o2), -EINVAL);
        assert_string_equal(t->err, "command line: --control: expected an absolute socket path shorter than 108 "
                                    "bytes, got \"rel.sock\"");

        char *bad_listen[] = { (char *) "8080", (char *) "unix:x.sock", NULL };
        ConfigOverrides o3 = { .exec = exec, .listen = bad_listen };
        assert_int_eq(build_with(t, NULL, &o3), -EINVAL);
        assert_string_equal(t->err, "command line: --listen: a unix: listener needs an absolute path, got \"unix:x.sock\"");

        char *dup_listen[] = { (char *) "w=8080", (char *) "w=8081", NULL };
        ConfigOverrides o4 = { .exec = exec, .listen = dup_listen };
        assert_int_eq(build_with(t, NULL, &o4), -EINVAL);
        assert_string_equal(t->err, "command line: --listen: listener name \"w\" is used twice");

        /* With a file, override errors still name the command line. */
        ConfigOverrides o5 = { .name = "a b" };
        assert_int_eq(build_with(t, "{" EXEC "}", &o5), -EINVAL);
        assert_str_contains(t->err, "command line: --name: expected 1-64 characters");

        /* A bad file fails first, whatever the overrides. */
        ConfigOverrides o6 = { .exec = exec, .workers = 2 };
        assert_int_eq(build_with(t, "{'workers': 0}", &o6), -EINVAL);
        assert_error_is(t, "workers: expected an integer >= 1, got 0");

        /* --exec given, but the file's exec is still validated. */
        ConfigOverrides o7 = { .exec = exec };
        assert_int_eq(build_with(t, "{'exec': []}", &o7), -EINVAL);
        assert_error_has(t, "exec: expected a non-empty array");

        /* The file may omit exec when it comes after --. */
        ConfigOverrides o8 = { .exec = exec };
        int r = build_with(t, "{'workers': 2}", &o8);
        assert_ok(r, t);
        assert_string_equal(t->c->exec[0], "/bin/true");
}

/* ---- the rest of the API --------------------------------------------------- */

static void test_worker_count(void **state) {
        T *t = *state;
        assert_build_ok(t, "{" EXEC ", 'workers': 5}");
        assert_int_eq(config_worker_count(t->c), 5);

        assert_build_ok(t, "{" EXEC "}");
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        unsigned expected = n > 0 ? (unsigned) (n > 4096 ? 4096 : n) : 1;
        assert_int_eq(config_worker_count(t->c), expected);
        assert_true(config_worker_count(t->c) >= 1);
}

static void test_ref_unref(void **state) {
        T *t = *state;
        assert_null(config_ref(NULL));
        assert_null(config_unref(NULL));

        assert_build_ok(t, "{" EXEC "}");
        Config *c = t->c;
        assert_ptr_equal(config_ref(c), c);
        assert_int_eq(c->n_ref, 2);
        assert_ptr_equal(config_ref(c), c);
        assert_int_eq(c->n_ref, 3);
        assert_null(config_unref(c));
        assert_null(config_unref(c));
        assert_int_eq(c->n_ref, 1);
        assert_string_equal(c->name, "app");   /* still alive */

        {
                _cleanup_(config_unrefp) Config *x = config_ref(c);
                assert_ptr_equal(x, c);
                assert_int_eq(c->n_ref, 2);
        }
        assert_int_eq(c->n_ref, 1);
        /* The last reference goes in teardown; valgrind checks it frees everything. */
}

static void test_balance_strings(void **state) {
        assert_string_equal(balance_to_string(BALANCE_SHARED), "shared");
        assert_string_equal(balance_to_string(BALANCE_ROUND_ROBIN), "round-robin");
        assert_string_equal(balance_to_string(BALANCE_LEAST_CONN), "least-conn");
        assert_string_equal(balance_to_string(BALANCE_IP_HASH), "ip-hash");
        assert_string_equal(balance_to_string(_BALANCE_MAX), "?");
        assert_string_equal(balance_to_string((Balance) -1), "?");
        for (int b = 0; b < _BALANCE_MAX; b++)
                assert_int_eq(balance_from_string(balance_to_string((Balance) b)), b);
        assert_int_eq(balance_from_string("Shared"), -EINVAL);
        assert_int_eq(balance_from_string(""), -EINVAL);
        assert_int_eq(balance_from_string("?"), -EINVAL);
        assert_int_eq(balance_from_string(NULL), -EINVAL);
}

#define T_(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T_(test_all_keys),
                T_(test_alternative_values),
                T_(test_range_limits_accepted),
                T_(test_defaults),
                T_(test_default_name),
                T_(test_default_name_dot_json_bug),
                T_(test_restart_limit_ten),
                T_(test_restart_limit_range),
                T_(test_workers_errors),
                T_(test_integer_key_errors),
                T_(test_string_key_errors),
                T_(test_name_errors),
                T_(test_control_errors),
                T_(test_exec_errors),
                T_(test_exec_missing_no_file),
                T_(test_env_errors),
                T_(test_env_duplicate_bug),
                T_(test_escaped_nul_bug),
                T_(test_listen_errors),
                T_(test_backoff_errors),
                T_(test_unknown_keys),
                T_(test_duplicate_keys),
                T_(test_nested_wrong_type),
                T_(test_syntax_errors),
                T_(test_syntax_error_key_position_bug),
                T_(test_syntax_error_unterminated_string_bug),
                T_(test_top_level_not_object),
                T_(test_nul_byte),
                T_(test_file_missing),
                T_(test_file_not_regular),
                T_(test_file_size_limit),
                T_(test_file_world_writable),
                T_(test_nesting_too_deep),
                T_(test_overrides_win),
                T_(test_overrides_without_file),
                T_(test_override_errors),
                T_(test_worker_count),
                T_(test_ref_unref),
                cmocka_unit_test(test_balance_strings),
        };
        return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
