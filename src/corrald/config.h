/* config: an instance's configuration (SPEC §2), built from the JSON file
 * plus command-line overrides, fully validated.
 *
 * A Config is immutable once built. A reload builds a new one; the old one
 * lives until nothing refers to it (workers keep a pointer to the Config of
 * their generation). Pure: no event loop, no logging — every problem comes
 * back as one human-readable message naming the file, the key path and
 * what was expected. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "corral-limits.h"
#include "ipc-msg.h"
#include "listen-addr.h"


typedef enum Balance {
        BALANCE_SHARED,
        BALANCE_ROUND_ROBIN,
        BALANCE_LEAST_CONN,
        BALANCE_IP_HASH,
        _BALANCE_MAX,
} Balance;

typedef enum ReadyMode {
        READY_NOTIFY,
        READY_SPAWN,
} ReadyMode;

typedef enum GiveupAction {
        GIVEUP_EXIT,
        GIVEUP_STAY,
} GiveupAction;

typedef struct Config {
        unsigned n_ref;
        char *path;              /* the file it came from, or NULL */
        char *source;            /* that file's text as parsed (NUL-terminated), or NULL:
                                  * an upgrade carries it instead of re-reading the file */
        size_t source_len;
        char *name;
        char **exec;
        char *cwd;               /* NULL: unchanged */
        char **env;              /* "KEY=VALUE" strings */
        unsigned workers;        /* 0: auto (online CPUs) */
        ListenAddr *listen;
        unsigned n_listen;
        Balance balance;
        IpcDialect ipc;              /* the CORRAL_IPC_FD dialect (SPEC §6) */
        ReadyMode ready_mode;
        uint64_t ready_timeout_ms;   /* 0: no timeout */
        int stop_signal;
        uint64_t stop_timeout_ms;
        unsigned restart_limit;
        uint64_t restart_window_ms;
        uint64_t backoff_min_ms, backoff_max_ms;
        GiveupAction on_giveup;
        uint64_t watchdog_ms;        /* 0: off */
        uint64_t recycle_max_requests;
        uint64_t recycle_max_rss_mb;
        uint64_t recycle_max_age_ms; /* 0: off, else >= RECYCLE_MAX_AGE_MIN_MS */
        unsigned reload_max_surge;
        char *control;               /* NULL: the default path of SPEC §7 */
} Config;

/* Values given on the command line. They win over the file's keys, and are
 * re-applied on every reload. NULL / 0 members mean "not given". */
typedef struct ConfigOverrides {
        const char *path;
        const char *text;         /* the file's text, when already known (an upgrade, a
                                   * fuzzer): parsed instead of reading path, which
                                   * still names it in errors */
        unsigned workers;         /* 0 not given; see workers_auto */
        bool workers_auto;
        char **listen;            /* raw listen strings */
        bool balance_set;
        Balance balance;
        bool ipc_set;
        IpcDialect ipc;
        const char *name;
        const char *control;
        char **exec;              /* everything after "--" */
        bool subreaper;           /* --subreaper, or PID 1: reap every orphan */
} ConfigOverrides;

/* Build a validated Config. Returns 0 and a new reference in *ret, or a
 * negative errno and a malloc'd message in *ret_error ("FILE: KEY: expected
 * ..., got ..."); -ENOMEM leaves *ret_error NULL. */
int config_build(const ConfigOverrides *o, Config **ret, char **ret_error);

/* Validate only the command-line values of o (--name, --control,
 * --listen), as config_build() would, so that main() can tell a usage
 * error (exit 2) from a bad configuration (exit 1). Returns 0, or -EINVAL
 * with a malloc'd "command line: --KEY: ..." in *ret_error, or -ENOMEM. */
int config_check_overrides(const ConfigOverrides *o, char **ret_error);

/* Whether this version of corrald can run c: the place where a key that is
 * parsed but cannot run yet is refused. Every key of SPEC §2 runs today,
 * so it returns 0; else -EOPNOTSUPP with a malloc'd message in *ret_error
 * ("FILE: KEY: ..."). */
int config_check_supported(const Config *c, char **ret_error);

Config *config_ref(Config *c);
/* Drop a reference; frees on the last one. Accepts NULL, returns NULL. */
Config *config_unref(Config *c);
static inline void config_unrefp(Config **c) {
        config_unref(*c);
}

/* The worker count in effect: workers, or the number of online CPUs. */
unsigned config_worker_count(const Config *c);

const char *balance_to_string(Balance b);
int balance_from_string(const char *s);   /* Balance or -EINVAL */
const char *ipc_dialect_to_string(IpcDialect d);
int ipc_dialect_from_string(const char *s);   /* IpcDialect or -EINVAL */
