/* config: JSON + flags → validated Config. See config.h.
 *
 * The JSON document is walked by a schema of tables (one per object), so
 * unknown keys, duplicates and wrong types are caught in one place and every
 * message carries the full key path. cJSON is used only with its
 * case-sensitive lookups, on a NUL-terminated copy of the file; corrald never
 * calls setlocale(), so number parsing stays in the "C" locale. */
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "policy.h"
#include "fd-util.h"
#include "util.h"
#include "worker-env.h"

#define CONFIG_FILE_MAX (1024 * 1024)
#define NAME_MAX_LEN 64
#define ENV_MAX 4096
#define LISTEN_MAX 256

static const char * const balance_table[_BALANCE_MAX] = {
        [BALANCE_SHARED] = "shared",
        [BALANCE_ROUND_ROBIN] = "round-robin",
        [BALANCE_LEAST_CONN] = "least-conn",
        [BALANCE_IP_HASH] = "ip-hash",
};

const char *balance_to_string(Balance b) {
        return b >= 0 && b < _BALANCE_MAX ? balance_table[b] : "?";
}

int balance_from_string(const char *s) {
        for (int i = 0; i < _BALANCE_MAX; i++)
                if (streq_ptr(s, balance_table[i]))
                        return i;
        return -EINVAL;
}

static const char * const ipc_dialect_table[_IPC_DIALECT_MAX] = {
        [IPC_DIALECT_CORRAL] = "corral",
        [IPC_DIALECT_NODE] = "node",
};

const char *ipc_dialect_to_string(IpcDialect d) {
        return d >= 0 && d < _IPC_DIALECT_MAX ? ipc_dialect_table[d] : "?";
}

int ipc_dialect_from_string(const char *s) {
        for (int i = 0; i < _IPC_DIALECT_MAX; i++)
                if (streq_ptr(s, ipc_dialect_table[i]))
                        return i;
        return -EINVAL;
}

/* ---- error reporting ---------------------------------------------------- */

typedef struct Ctx {
        const char *file;   /* shown as the first part of every message */
        char *error;
} Ctx;

_printf_(3, 4) static int fail(Ctx *ctx, const char *key, const char *fmt, ...) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        free(ctx->error);
        /* Key names come from the file: escape them, so an error is always
         * one plain line (no newlines, no terminal escapes). The value in
         * msg went through cJSON's printer, which escapes already. */
        char k[300];
        str_escape(key ? key : "", k, sizeof(k));
        if (asprintf(&ctx->error, "%s: %s%s%s", ctx->file, k, key ? ": " : "", msg) < 0) {
                ctx->error = NULL;
                return -ENOMEM;
        }
        return -EINVAL;
}

/* A short rendering of a JSON value for "got ..." in messages. */
static const char *describe(const cJSON *v, char *buf, size_t n) {
        char *s = cJSON_PrintUnformatted(v);
        if (!s)
                return "?";
        if (strlen(s) >= n && n > 4) {
                memcpy(buf, s, n - 4);
                strcpy(buf + n - 4, "...");
        } else
                snprintf(buf, n, "%s", s);
        free(s);
        return buf;
}

#define GOT(v) describe((v), (char[64]){}, 64)

/* ---- typed getters ------------------------------------------------------ */

static int get_int(Ctx *ctx, const char *key, const cJSON *v, uint64_t min, uint64_t max, uint64_t *ret) {
        double d = v->valuedouble;
        /* Integers above 2^53 are not exact in a double; none of our keys
         * needs them, so the ranges below stay far from that. */
        /* cJSON turns a number beyond a double's range (1e400) into an
         * infinity, which it prints as null: say what it is instead. */
        if (cJSON_IsNumber(v) && !isfinite(d))
                return fail(ctx, key, "expected an integer >= %llu, got a number out of range",
                            (unsigned long long) min);
        if (!cJSON_IsNumber(v) || d != floor(d) || d < (double) min || d > (double) max) {
                /* Name the upper bound only when it is what was crossed. */
                if (!cJSON_IsNumber(v) || d <= (double) max || max >= (1ULL << 52))
                        return fail(ctx, key, "expected an integer >= %llu, got %s", (unsigned long long) min,
                                    GOT(v));
                return fail(ctx, key, "expected an integer between %llu and %llu, got %s",
                            (unsigned long long) min, (unsigned long long) max, GOT(v));
        }
        *ret = (uint64_t) d;
        return 0;
}

#define INT_MAX_SANE (1ULL << 52)

static int get_string(Ctx *ctx, const char *key, const cJSON *v, char **ret) {
        if (!cJSON_IsString(v) || !v->valuestring)
                return fail(ctx, key, "expected a string, got %s", GOT(v));
        char *s = strdup(v->valuestring);
        if (!s)
                return -ENOMEM;
        free(*ret);
        *ret = s;
        return 0;
}

static int get_strv(Ctx *ctx, const char *key, const cJSON *v, char ***ret) {
        char **l = NULL;
        const cJSON *e;
        if (!cJSON_IsArray(v))
                return fail(ctx, key, "expected an array of strings, got %s", GOT(v));
        cJSON_ArrayForEach(e, v) {
                if (!cJSON_IsString(e) || !e->valuestring) {
                        strv_free(l);
                        return fail(ctx, key, "expected an array of strings, got element %s", GOT(e));
                }
                if (strv_extend(&l, e->valuestring) < 0) {
                        strv_free(l);
                        return -ENOMEM;
                }
        }
        if (!l && !(l = calloc(1, sizeof(char *))))
                return -ENOMEM;
        strv_free(*ret);
        *ret = l;
        return 0;
}

/* ---- schema ------------------------------------------------------------- */

typedef int (*KeyParser)(Ctx *ctx, const char *key, const cJSON *v, Config *c);

typedef struct Key {
        const char *name;
        KeyParser parse;
        const struct Key *children;  /* for nested objects */
} Key;

static int walk(Ctx *ctx, const char *prefix, const cJSON *obj, const Key *schema, Config *c);

static int p_name(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        int r = get_string(ctx, key, v, &c->name);
        if (r < 0)
                return r;
        size_t n = strlen(c->name);
        bool ok = n > 0 && n <= NAME_MAX_LEN;
        for (const char *p = c->name; ok && *p; p++)
                ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                     strchr("-_.@", *p);
        if (!ok || c->name[0] == '.')
                return fail(ctx, key, "expected 1-%d characters of [A-Za-z0-9-_.@] not starting with '.', got %s",
                            NAME_MAX_LEN, GOT(v));
        return 0;
}

static int p_exec(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        int r = get_strv(ctx, key, v, &c->exec);
        if (r < 0)
                return r;
        if (!c->exec[0] || !c->exec[0][0])
                return fail(ctx, key, "expected a non-empty array whose first element names a program, got %s",
                            GOT(v));
        return 0;
}

static int p_cwd(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        int r = get_string(ctx, key, v, &c->cwd);
        if (r < 0)
                return r;
        if (!c->cwd[0])
                return fail(ctx, key, "expected a directory path, got \"\"");
        return 0;
}

static int p_env(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        const cJSON *e;
        char path[300];
        if (!cJSON_IsObject(v))
                return fail(ctx, key, "expected an object of strings, got %s", GOT(v));
        /* Bounded, as the duplicate check below is quadratic. */
        if (cJSON_GetArraySize(v) > ENV_MAX)
                return fail(ctx, key, "more than %d variables", ENV_MAX);
        cJSON_ArrayForEach(e, v) {
                snprintf(path, sizeof(path), "%s.%s", key, e->string);
                for (const cJSON *d = v->child; d != e; d = d->next)
                        if (strcmp(d->string, e->string) == 0)
                                return fail(ctx, path, "duplicate key");
                if (!e->string[0] || strchr(e->string, '='))
                        return fail(ctx, path, "expected a variable name without '='");
                /* A control character (a newline above all) in a name makes
                 * an environment entry no reader parses as intended. */
                for (const char *q = e->string; *q; q++)
                        if ((unsigned char) *q < 0x20 || *q == 0x7f)
                                return fail(ctx, path, "expected a variable name without control characters "
                                            "(such as a newline)");
                if (worker_env_is_reserved(e->string, strlen(e->string)))
                        return fail(ctx, path, "is set by corrald for every worker and cannot be overridden");
                if (!cJSON_IsString(e) || !e->valuestring)
                        return fail(ctx, path, "expected a string, got %s", GOT(e));
                char *kv;
                if (asprintf(&kv, "%s=%s", e->string, e->valuestring) < 0)
                        return -ENOMEM;
                if (strv_push(&c->env, kv) < 0) {
                        free(kv);
                        return -ENOMEM;
                }
        }
        return 0;
}

static int p_workers(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        uint64_t n = 0;
        if (cJSON_IsString(v) && streq_ptr(v->valuestring, "auto")) {
                c->workers = 0;
                return 0;
        }
        if (cJSON_IsString(v) && (streq_ptr(v->valuestring, "max") || streq_ptr(v->valuestring, "-1")))
                return fail(ctx, key, "expected an integer >= 1 or \"auto\", got %s (PM2's \"max\" is corral's "
                            "\"auto\": one worker per CPU)", GOT(v));
        if (!cJSON_IsNumber(v))
                return fail(ctx, key, "expected an integer >= 1 or \"auto\", got %s", GOT(v));
        int r = get_int(ctx, key, v, 1, CORRAL_WORKERS_MAX, &n);
        if (r < 0)
                return r;
        c->workers = (unsigned) n;
        return 0;
}

static int listen_add(Ctx *ctx, const char *key, const char *s, Config *c) {
        ListenAddr a;
        const char *reason;
        if (listen_addr_parse(s, &a, &reason) < 0)
                return fail(ctx, key, "%s, got \"%s\"", reason, s);
        for (unsigned i = 0; i < c->n_listen; i++)
                if (a.name[0] && strcmp(a.name, c->listen[i].name) == 0)
                        return fail(ctx, key, "listener name \"%s\" is used twice", a.name);
        ListenAddr *l = realloc(c->listen, (c->n_listen + 1) * sizeof(ListenAddr));
        if (!l)
                return -ENOMEM;
        c->listen = l;
        c->listen[c->n_listen++] = a;
        return 0;
}

static int p_listen(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        const cJSON *e;
        char path[64];
        unsigned i = 0;
        if (!cJSON_IsArray(v))
                return fail(ctx, key, "expected an array of strings, got %s", GOT(v));
        if (cJSON_GetArraySize(v) > LISTEN_MAX)
                return fail(ctx, key, "more than %d listeners", LISTEN_MAX);
        c->n_listen = 0;
        cJSON_ArrayForEach(e, v) {
                snprintf(path, sizeof(path), "%s[%u]", key, i++);
                if (!cJSON_IsString(e) || !e->valuestring)
                        return fail(ctx, path, "expected a string, got %s", GOT(e));
                int r = listen_add(ctx, path, e->valuestring, c);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int p_balance(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        int b = cJSON_IsString(v) ? balance_from_string(v->valuestring) : -EINVAL;
        if (b < 0)
                return fail(ctx, key, "expected \"shared\", \"round-robin\", \"least-conn\" or \"ip-hash\", got %s",
                            GOT(v));
        c->balance = (Balance) b;
        return 0;
}

static int p_ipc(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        int d = cJSON_IsString(v) ? ipc_dialect_from_string(v->valuestring) : -EINVAL;
        if (d < 0)
                return fail(ctx, key, "expected \"corral\" or \"node\", got %s", GOT(v));
        c->ipc = (IpcDialect) d;
        return 0;
}

static int p_ready_mode(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        if (cJSON_IsString(v) && streq_ptr(v->valuestring, "notify"))
                c->ready_mode = READY_NOTIFY;
        else if (cJSON_IsString(v) && streq_ptr(v->valuestring, "spawn"))
                c->ready_mode = READY_SPAWN;
        else
                return fail(ctx, key, "expected \"notify\" or \"spawn\", got %s", GOT(v));
        return 0;
}

static int p_ready_timeout(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        return get_int(ctx, key, v, 0, INT_MAX_SANE, &c->ready_timeout_ms);
}

static int p_stop_signal(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        int sig = cJSON_IsString(v) ? parse_signal(v->valuestring) : -EINVAL;
        if (sig < 0)
                return fail(ctx, key, "expected a signal name such as \"SIGTERM\", got %s", GOT(v));
        c->stop_signal = sig;
        return 0;
}

static int p_stop_timeout(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        return get_int(ctx, key, v, 1, INT_MAX_SANE, &c->stop_timeout_ms);
}

static int p_restart_limit(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        uint64_t n = 0;
        int r = get_int(ctx, key, v, 1, RESTART_LIMIT_MAX, &n);
        if (r >= 0)
                c->restart_limit = (unsigned) n;
        return r;
}

static int p_restart_window(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        return get_int(ctx, key, v, 1, INT_MAX_SANE, &c->restart_window_ms);
}

static int p_backoff(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2)
                return fail(ctx, key, "expected [min, max] in milliseconds, got %s", GOT(v));
        char path[64];
        snprintf(path, sizeof(path), "%s[0]", key);
        int r = get_int(ctx, path, cJSON_GetArrayItem(v, 0), 0, INT_MAX_SANE, &c->backoff_min_ms);
        if (r < 0)
                return r;
        snprintf(path, sizeof(path), "%s[1]", key);
        r = get_int(ctx, path, cJSON_GetArrayItem(v, 1), 0, INT_MAX_SANE, &c->backoff_max_ms);
        if (r < 0)
                return r;
        if (c->backoff_min_ms > c->backoff_max_ms)
                return fail(ctx, key, "expected min <= max, got %s", GOT(v));
        return 0;
}

static int p_on_giveup(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        if (cJSON_IsString(v) && streq_ptr(v->valuestring, "exit"))
                c->on_giveup = GIVEUP_EXIT;
        else if (cJSON_IsString(v) && streq_ptr(v->valuestring, "stay"))
                c->on_giveup = GIVEUP_STAY;
        else
                return fail(ctx, key, "expected \"exit\" or \"stay\", got %s", GOT(v));
        return 0;
}

static int p_watchdog(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        return get_int(ctx, key, v, 0, INT_MAX_SANE, &c->watchdog_ms);
}

static int p_max_requests(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        return get_int(ctx, key, v, 0, INT_MAX_SANE, &c->recycle_max_requests);
}

static int p_max_rss(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        return get_int(ctx, key, v, 0, 1ULL << 32, &c->recycle_max_rss_mb);
}

/* Below a second a worker would be replaced about as fast as it can start,
 * which is a restart loop, not a lifetime. */
static int p_max_age(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        int r = get_int(ctx, key, v, 0, INT_MAX_SANE, &c->recycle_max_age_ms);
        if (r >= 0 && c->recycle_max_age_ms > 0 && c->recycle_max_age_ms < RECYCLE_MAX_AGE_MIN_MS)
                return fail(ctx, key, "expected 0 (off) or an integer >= %d (milliseconds), got %s",
                            RECYCLE_MAX_AGE_MIN_MS, GOT(v));
        return r;
}

static int p_max_surge(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        uint64_t n = 0;
        int r = get_int(ctx, key, v, 1, CORRAL_WORKERS_MAX, &n);
        if (r >= 0)
                c->reload_max_surge = (unsigned) n;
        return r;
}

static int p_control(Ctx *ctx, const char *key, const cJSON *v, Config *c) {
        int r = get_string(ctx, key, v, &c->control);
        if (r < 0)
                return r;
        if (c->control[0] != '/' || strlen(c->control) >= 108)
                return fail(ctx, key, "expected an absolute socket path shorter than 108 bytes, got %s", GOT(v));
        return 0;
}

static const Key ready_keys[] = {
        { "mode", p_ready_mode, NULL },
        { "timeout_ms", p_ready_timeout, NULL },
        {},
};
static const Key stop_keys[] = {
        { "signal", p_stop_signal, NULL },
        { "timeout_ms", p_stop_timeout, NULL },
        {},
};
static const Key restart_keys[] = {
        { "limit", p_restart_limit, NULL },
        { "window_ms", p_restart_window, NULL },
        { "backoff_ms", p_backoff, NULL },
        { "on_giveup", p_on_giveup, NULL },
        {},
};
static const Key recycle_keys[] = {
        { "max_requests", p_max_requests, NULL },
        { "max_rss_mb", p_max_rss, NULL },
        { "max_age_ms", p_max_age, NULL },
        {},
};
static const Key reload_keys[] = {
        { "max_surge", p_max_surge, NULL },
        {},
};
static const Key top_keys[] = {
        { "name", p_name, NULL },
        { "exec", p_exec, NULL },
        { "cwd", p_cwd, NULL },
        { "env", p_env, NULL },
        { "workers", p_workers, NULL },
        { "listen", p_listen, NULL },
        { "balance", p_balance, NULL },
        { "ipc", p_ipc, NULL },
        { "ready", NULL, ready_keys },
        { "stop", NULL, stop_keys },
        { "restart", NULL, restart_keys },
        { "watchdog_ms", p_watchdog, NULL },
        { "recycle", NULL, recycle_keys },
        { "reload", NULL, reload_keys },
        { "control", p_control, NULL },
        {},
};

/* Keys of a PM2 ecosystem file that people bring along (issue 21): still
 * refused, with the corral way of saying it. */
static const struct {
        const char *key;
        const char *hint;
} pm2_keys[] = {
        { "instances", "instances is PM2's name; corral calls it workers" },
        { "exec_mode", "PM2's exec_mode: every corral worker is a process; balance says how connections reach them" },
        { "max_memory_restart", "PM2's max_memory_restart: corral says recycle.max_rss_mb, in MiB" },
        { "kill_timeout", "PM2's kill_timeout: corral says stop.timeout_ms" },
        { "wait_ready", "PM2's wait_ready: corral waits for READY=1 by default (ready.mode \"notify\")" },
        { "listen_timeout", "PM2's listen_timeout: corral says ready.timeout_ms" },
        { "cron_restart", "PM2's cron_restart: run `corralctl restart all` from a systemd timer (corral.json(5))" },
        { "max_restarts", "PM2's max_restarts: corral says restart.limit (within restart.window_ms)" },
        { "restart_delay", "PM2's restart_delay: corral says restart.backoff_ms" },
        { "autorestart", "PM2's autorestart: corral always restarts, and restart.on_giveup says what happens at the limit" },
        { "script", "PM2's script: corral says exec, a command line as an array, e.g. [\"node\", \"app.js\"]" },
        { "args", "PM2's args: put them in exec, after the program" },
        { "interpreter", "PM2's interpreter: put it first in exec, e.g. [\"node\", \"app.js\"]" },
        { "env_production", "PM2's env_production: corral has one env; reload after changing it" },
        { "watch", "PM2's watch: a systemd .path unit can run `systemctl reload` when files change" },
};

static const char *pm2_hint(const char *prefix, const char *key) {
        if (prefix[0])
                return NULL;
        for (size_t i = 0; i < ELEMENTSOF(pm2_keys); i++)
                if (strcmp(pm2_keys[i].key, key) == 0)
                        return pm2_keys[i].hint;
        return NULL;
}

static int walk(Ctx *ctx, const char *prefix, const cJSON *obj, const Key *schema, Config *c) {
        const cJSON *e;
        char path[300];

        cJSON_ArrayForEach(e, obj) {
                const Key *k;

                snprintf(path, sizeof(path), "%s%s%s", prefix, prefix[0] ? "." : "", e->string);

                /* cJSON keeps duplicate keys; the first would silently win in
                 * a lookup, so refuse them outright. */
                for (const cJSON *d = obj->child; d != e; d = d->next)
                        if (strcmp(d->string, e->string) == 0)
                                return fail(ctx, path, "duplicate key");

                for (k = schema; k->name; k++)
                        if (strcmp(k->name, e->string) == 0)
                                break;
                if (!k->name) {
                        const char *hint = pm2_hint(prefix, e->string);
                        return hint ? fail(ctx, path, "unknown key (%s)", hint) : fail(ctx, path, "unknown key");
                }

                int r;
                if (k->children) {
                        if (!cJSON_IsObject(e))
                                return fail(ctx, path, "expected an object, got %s", GOT(e));
                        r = walk(ctx, path, e, k->children, c);
                } else
                        r = k->parse(ctx, path, e, c);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- file loading ------------------------------------------------------- */

static int read_file(Ctx *ctx, const char *path, char **ret, size_t *ret_len) {
        /* O_NONBLOCK: opening a FIFO must not wait for a writer (a reload
         * would hang the master); it is refused as not a regular file. */
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        struct stat st;
        if (fd < 0)
                return fail(ctx, NULL, "cannot open: %m");
        if (fstat(fd, &st) == -1)
                return fail(ctx, NULL, "cannot stat: %m");
        if (!S_ISREG(st.st_mode))
                return fail(ctx, NULL, "not a regular file");
        /* The file says what corrald runs (exec, env, cwd): one that every
         * user may write would let any of them run commands as corrald's
         * user — root, typically. Refused rather than warned about: a
         * warning in a log nobody reads does not stop that. */
        if (st.st_mode & S_IWOTH)
                return fail(ctx, NULL, "writable by every user (mode %04o), so anyone could choose what corrald runs; "
                            "refusing it (chmod o-w)", (unsigned) (st.st_mode & 07777));
        if (st.st_size > CONFIG_FILE_MAX)
                return fail(ctx, NULL, "larger than %d bytes", CONFIG_FILE_MAX);

        /* Read up to one byte past the limit so a file that grew since
         * fstat() is still caught; keep the buffer NUL-terminated for cJSON. */
        char *buf = malloc(CONFIG_FILE_MAX + 2);
        size_t len = 0;
        if (!buf)
                return -ENOMEM;
        for (;;) {
                ssize_t n = read(fd, buf + len, CONFIG_FILE_MAX + 1 - len);
                if (n == -1 && errno == EINTR)
                        continue;
                if (n == -1) {
                        free(buf);
                        return fail(ctx, NULL, "cannot read: %m");
                }
                if (n == 0)
                        break;
                len += (size_t) n;
                if (len > CONFIG_FILE_MAX) {
                        free(buf);
                        return fail(ctx, NULL, "larger than %d bytes", CONFIG_FILE_MAX);
                }
        }
        buf[len] = 0;
        *ret = buf;
        *ret_len = len;
        return 0;
}

/* Skip a JSON string starting at the opening quote p; returns the byte
 * after its closing quote, or end if it never closes. */
static const char *skip_string(const char *p, const char *end) {
        for (p++; p < end; p++) {
                if (*p == '\\')
                        p++;
                else if (*p == '"')
                        return p + 1;
        }
        return end;
}

/* cJSON's error pointer is one byte late where an object key was expected
 * (after '{' or ','), and an unterminated string is blamed on its start.
 * Move the pointer to where a reader would look. */
static const char *fix_error_position(const char *buf, size_t len, const char *at) {
        const char *end = buf + len;
        char innermost = 0, last = 0;
        unsigned depth = 0;
        char stack[64];

        /* A string that never closes: the problem is the end of input. */
        for (const char *p = buf; p < end;) {
                if (*p == '"') {
                        const char *q = skip_string(p, end);
                        if (q == end && (end[-1] != '"' || q - p < 2))
                                return end;
                        p = q;
                } else
                        p++;
        }

        if (at == buf)
                return at;
        const char *cand = at - 1;
        for (const char *p = buf; p < cand;) {
                if (*p == '"') {
                        p = skip_string(p, cand);
                        last = '"';
                        continue;
                }
                if (*p == '{' || *p == '[') {
                        if (depth < sizeof(stack))
                                stack[depth] = *p;
                        depth++;
                } else if ((*p == '}' || *p == ']') && depth > 0)
                        depth--;
                if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
                        last = *p;
                p++;
        }
        if (depth > 0 && depth <= sizeof(stack))
                innermost = stack[depth - 1];
        if (innermost == '{' && (last == '{' || last == ',') && *cand != '"')
                return cand;
        return at;
}

/* Whether cJSON stopped at `at` because the nesting there is deeper than
 * CJSON_NESTING_LIMIT (it reports that like any syntax error). */
static bool nested_too_deeply(const char *buf, const char *at) {
        unsigned depth = 0;
        for (const char *p = buf; p < at;) {
                if (*p == '"') {
                        p = skip_string(p, at);
                        continue;
                }
                if (*p == '{' || *p == '[')
                        depth++;
                else if ((*p == '}' || *p == ']') && depth > 0)
                        depth--;
                p++;
        }
        return depth >= CJSON_NESTING_LIMIT;
}

/* Parse the text of a configuration file (buf[len] is NUL) into c. */
static int parse_text(Ctx *ctx, const char *buf, size_t len, Config *c) {
        const char *end = NULL;
        int r;

        if (len > CONFIG_FILE_MAX)
                return fail(ctx, NULL, "larger than %d bytes", CONFIG_FILE_MAX);
        if (memchr(buf, 0, len))
                return fail(ctx, NULL, "contains a NUL byte");
        /* cJSON decodes \u0000 into a NUL that silently cuts the string
         * short ("/srv/data\u0000/cache" would become "/srv/data"). */
        for (size_t i = 0; i + 1 < len; i++)
                if (buf[i] == '\\') {
                        if (strncmp(buf + i + 1, "u0000", 5) == 0)
                                return fail(ctx, NULL, "a string contains an escaped NUL (\\u0000)");
                        i++;
                }

        cJSON *root = cJSON_ParseWithLengthOpts(buf, len + 1, &end, true);
        if (!root) {
                /* cJSON points at where parsing stopped; count lines up to it. */
                const char *at = end && end >= buf && end <= buf + len ? end : cJSON_GetErrorPtr();
                unsigned line = 1, col = 1;
                if (!at || at < buf || at > buf + len)
                        at = buf + len;
                at = fix_error_position(buf, len, at);
                for (const char *p = buf; p < at; p++) {
                        if (*p == '\n') {
                                line++;
                                col = 1;
                        } else
                                col++;
                }
                if (nested_too_deeply(buf, at))
                        return fail(ctx, NULL, "JSON nested too deeply at line %u, column %u (more than %d levels)",
                                    line, col, CJSON_NESTING_LIMIT);
                if (at == buf + len)
                        return fail(ctx, NULL, "JSON syntax error at line %u, column %u: unexpected end of input",
                                    line, col);
                return fail(ctx, NULL, "JSON syntax error at line %u, column %u", line, col);
        }

        if (!cJSON_IsObject(root))
                r = fail(ctx, NULL, "expected a JSON object at the top level");
        else
                r = walk(ctx, "", root, top_keys, c);
        cJSON_Delete(root);
        return r;
}

/* ---- building ----------------------------------------------------------- */

static Config *config_new_default(void) {
        Config *c = calloc(1, sizeof(Config));
        if (!c)
                return NULL;
        *c = (Config) {
                .n_ref = 1,
                .workers = 0,
                .balance = BALANCE_SHARED,
                .ready_mode = READY_NOTIFY,
                .ready_timeout_ms = 30000,
                .stop_signal = SIGTERM,
                .stop_timeout_ms = 10000,
                .restart_limit = 10,
                .restart_window_ms = 60000,
                .backoff_min_ms = 100,
                .backoff_max_ms = 10000,
                .on_giveup = GIVEUP_EXIT,
                .reload_max_surge = 1,
        };
        return c;
}

static char *default_name(const char *path) {
        if (!path)
                return strdup("corral");
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        size_t n = strlen(base);
        if (n >= 5 && strcmp(base + n - 5, ".json") == 0)
                n -= 5;
        return n > 0 ? strndup(base, n) : strdup("corral");
}

int config_check_overrides(const ConfigOverrides *o, char **ret_error) {
        _cleanup_(config_unrefp) Config *c = config_new_default();
        Ctx ctx = { .file = "command line" };
        int r = 0;

        *ret_error = NULL;
        if (!c)
                return -ENOMEM;
        if (o->name) {
                cJSON *v = cJSON_CreateString(o->name);
                if (!v)
                        return -ENOMEM;
                r = p_name(&ctx, "--name", v, c);
                cJSON_Delete(v);
        }
        if (r >= 0 && o->control) {
                cJSON *v = cJSON_CreateString(o->control);
                if (!v)
                        return -ENOMEM;
                r = p_control(&ctx, "--control", v, c);
                cJSON_Delete(v);
        }
        for (char **l = o->listen; r >= 0 && l && *l; l++)
                r = listen_add(&ctx, "--listen", *l, c);
        if (r == -ENOMEM) {
                free(ctx.error);
                return r;
        }
        if (r < 0)
                *ret_error = ctx.error;
        return r;
}

int config_build(const ConfigOverrides *o, Config **ret, char **ret_error) {
        _cleanup_(config_unrefp) Config *c = config_new_default();
        Ctx ctx = { .file = o->path ? o->path : "command line" };
        int r = 0;

        *ret_error = NULL;
        if (!c)
                return -ENOMEM;

        if (o->path) {
                c->path = strdup(o->path);
                if (!c->path)
                        return -ENOMEM;
                if (o->text) {
                        c->source_len = strlen(o->text);
                        c->source = strdup(o->text);
                        if (!c->source)
                                return -ENOMEM;
                } else {
                        r = read_file(&ctx, o->path, &c->source, &c->source_len);
                        if (r < 0)
                                goto error;
                }
                r = parse_text(&ctx, c->source, c->source_len, c);
                if (r < 0)
                        goto error;
        }

        /* Command-line overrides are validated by main(); here they only win. */
        ctx.file = "command line";
        if (o->workers_auto)
                c->workers = 0;
        else if (o->workers > 0)
                c->workers = o->workers;
        if (o->balance_set)
                c->balance = o->balance;
        if (o->ipc_set)
                c->ipc = o->ipc;
        if (o->name) {
                cJSON *v = cJSON_CreateString(o->name);
                if (!v)
                        return -ENOMEM;
                r = p_name(&ctx, "--name", v, c);
                cJSON_Delete(v);
                if (r < 0)
                        goto error;
        }
        if (o->control) {
                cJSON *v = cJSON_CreateString(o->control);
                if (!v)
                        return -ENOMEM;
                r = p_control(&ctx, "--control", v, c);
                cJSON_Delete(v);
                if (r < 0)
                        goto error;
        }
        if (o->listen) {
                c->n_listen = 0;
                for (char **l = o->listen; *l; l++)
                        if ((r = listen_add(&ctx, "--listen", *l, c)) < 0)
                                goto error;
        }
        if (o->exec && o->exec[0]) {
                strv_free(c->exec);
                if (!(c->exec = strv_copy(o->exec)))
                        return -ENOMEM;
        }

        if (!c->name) {
                _cleanup_free_ char *d = default_name(o->path);
                if (!d)
                        return -ENOMEM;
                /* The file name becomes the instance name, so it must pass
                 * the same check as an explicit one. */
                cJSON *v = cJSON_CreateString(d);
                if (!v)
                        return -ENOMEM;
                ctx.file = o->path ? o->path : "command line";
                r = p_name(&ctx, "name (from the file name)", v, c);
                cJSON_Delete(v);
                if (r < 0)
                        goto error;
        }
        if (!c->exec || !c->exec[0]) {
                ctx.file = o->path ? o->path : "command line";
                r = fail(&ctx, o->path ? "exec" : NULL,
                         o->path ? "is required (or give the command after --)"
                                 : "no worker command: give one after -- or \"exec\" in a config file");
                goto error;
        }

        *ret = TAKE_PTR(c);
        return 0;

error:
        if (r == -ENOMEM) {
                free(ctx.error);
                return r;
        }
        *ret_error = ctx.error;
        return r;
}

int config_check_supported(const Config *c, char **ret_error) {
        /* Every key of SPEC §2 is implemented now. */
        *ret_error = NULL;
        return 0;
}

Config *config_ref(Config *c) {
        if (c)
                c->n_ref++;
        return c;
}

Config *config_unref(Config *c) {
        if (!c || --c->n_ref > 0)
                return NULL;
        free(c->path);
        free(c->source);
        free(c->name);
        strv_free(c->exec);
        free(c->cwd);
        strv_free(c->env);
        free(c->listen);
        free(c->control);
        free(c);
        return NULL;
}

unsigned config_worker_count(const Config *c) {
        if (c->workers > 0)
                return c->workers;
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (unsigned) MIN(n, CORRAL_WORKERS_MAX) : 1;
}
