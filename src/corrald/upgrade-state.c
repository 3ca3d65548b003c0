/* upgrade-state: see upgrade-state.h.
 *
 * Each record (the instance, a listener, a slot, a worker) is a table of
 * Fields; write_record() and read_record() are the only code that knows
 * how a type travels. Adding a field is one line in a table. The wire
 * names of enum values are frozen here, independent of how the values are
 * ordered or displayed elsewhere: a state must mean the same to the next
 * corrald. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iphash.h"
#include "macros.h"
#include "upgrade-state.h"

typedef enum FieldType {
        FT_BOOL,        /* bool */
        FT_UINT,        /* unsigned, in [min, max] */
        FT_INT,         /* int, in [min, max] */
        FT_U64,         /* uint64_t, in [min, max] (exact up to 2^53 in JSON) */
        FT_FD,          /* int: -1 (none) or a descriptor >= 3 */
        FT_STRING,      /* char *, at most max bytes; NULL when absent */
        FT_ENUM,        /* an enum (int-sized), by name */
        FT_U64_ARRAY,   /* uint64_t * and an unsigned count at count_offset, at most max entries */
        FT_FD_ARRAY,    /* int * and an unsigned count, descriptors >= 3 */
        FT_RECORDS,     /* an array of records of `record`, and an unsigned count */
} FieldType;

enum {
        F_OPTIONAL = 1 << 0,   /* may be missing: then the default (0, false, NULL, -1 for fds) */
        F_SINCE_2 = 1 << 1,    /* written from version 2 on: optional in a version 1 state */
        F_ENVELOPE = 1 << 2,   /* read by upgrade_state_parse_envelope() */
};

typedef struct Record Record;

typedef struct Field {
        const char *name;
        FieldType type;
        size_t offset;
        unsigned flags;
        uint64_t min, max;                 /* range of numbers, length of strings, count of arrays */
        size_t count_offset;               /* arrays: where the count is */
        const char * const *names;         /* FT_ENUM: value -> wire name */
        unsigned n_names;
        const Record *record;              /* FT_RECORDS */
} Field;

struct Record {
        const Field *fields;
        size_t n_fields;
        size_t size;
};

#define JSON_INT_MAX (UINT64_C(1) << 53)

/* Wire names, in the order of each enum (a static assertion per table). */
static const char * const slot_state_names[] = {
        [SLOT_EMPTY] = "empty",     [SLOT_STARTING] = "starting", [SLOT_READY] = "ready",
        [SLOT_REPLACING] = "replacing", [SLOT_BACKOFF] = "backoff", [SLOT_FAILED] = "failed",
        [SLOT_REMOVED] = "removed",
};
_Static_assert(ELEMENTSOF(slot_state_names) == _SLOT_STATE_MAX, "a SlotState without a wire name");

/* A worker that exited is not carried: only the live states travel. */
static const char * const worker_state_names[] = {
        [WORKER_STARTING] = "starting", [WORKER_READY] = "ready", [WORKER_STOPPING] = "stopping",
};
_Static_assert(ELEMENTSOF(worker_state_names) == WORKER_EXITED, "a live WorkerState without a wire name");

static const char * const worker_role_names[] = {
        [WORKER_CURRENT] = "current", [WORKER_INCOMING] = "incoming", [WORKER_LEAVING] = "leaving",
};
_Static_assert(ELEMENTSOF(worker_role_names) == WORKER_LEAVING + 1, "a WorkerRole without a wire name");

static const char * const balance_names[] = {
        [BALANCE_SHARED] = "shared", [BALANCE_ROUND_ROBIN] = "round-robin", [BALANCE_LEAST_CONN] = "least-conn",
        [BALANCE_IP_HASH] = "ip-hash",
};
_Static_assert(ELEMENTSOF(balance_names) == _BALANCE_MAX, "a Balance without a wire name");

#define ENUM(n) .names = n, .n_names = ELEMENTSOF(n)
#define NUM(type, s, f, lo, hi, fl) { #f, type, offsetof(s, f), fl, lo, hi, 0, NULL, 0, NULL }
#define STR(s, f, maxlen, fl) { #f, FT_STRING, offsetof(s, f), fl, 0, maxlen, 0, NULL, 0, NULL }

static const Field listener_fields[] = {
        { "fd", FT_FD, offsetof(UpgradeListener, fd), F_ENVELOPE },
        { "name", FT_STRING, offsetof(UpgradeListener, name), F_ENVELOPE, 0, LISTEN_NAME_MAX },
        { "display", FT_STRING, offsetof(UpgradeListener, display), F_ENVELOPE, 0, 127 },
        { "unlink", FT_STRING, offsetof(UpgradeListener, unlink_path), F_ENVELOPE | F_OPTIONAL, 0, PATH_MAX },
        { "activated", FT_BOOL, offsetof(UpgradeListener, activated), F_ENVELOPE },
};

static const Field client_fields[] = {
        { "fd", FT_FD, offsetof(UpgradeClient, fd), F_ENVELOPE },
        { "unread", FT_STRING, offsetof(UpgradeClient, unread), F_OPTIONAL, 0, 64 * 1024 },
};

static const Field slot_fields[] = {
        NUM(FT_UINT, UpgradeSlot, id, 0, CORRAL_WORKERS_MAX - 1, 0),
        { "state", FT_ENUM, offsetof(UpgradeSlot, state), 0, ENUM(slot_state_names) },
        NUM(FT_UINT, UpgradeSlot, restarts, 0, UINT_MAX, 0),
        NUM(FT_UINT, UpgradeSlot, consecutive_failures, 0, UINT_MAX, 0),
        NUM(FT_U64, UpgradeSlot, last_failure, 0, JSON_INT_MAX, F_OPTIONAL),
        NUM(FT_U64, UpgradeSlot, deadline, 0, JSON_INT_MAX, 0),
};

static const Field worker_fields[] = {
        NUM(FT_UINT, UpgradeWorker, slot, 0, CORRAL_WORKERS_MAX - 1, F_ENVELOPE),
        /* Never 1 or below: a pid <= 1 given to kill() is init or everyone. */
        NUM(FT_INT, UpgradeWorker, pid, 2, INT_MAX, F_ENVELOPE),
        NUM(FT_UINT, UpgradeWorker, generation, 1, UINT_MAX, 0),
        { "state", FT_ENUM, offsetof(UpgradeWorker, state), 0, ENUM(worker_state_names) },
        { "role", FT_ENUM, offsetof(UpgradeWorker, role), 0, ENUM(worker_role_names) },
        NUM(FT_BOOL, UpgradeWorker, stop_sent, 0, 0, 0),
        NUM(FT_BOOL, UpgradeWorker, said_stopping, 0, 0, 0),
        NUM(FT_BOOL, UpgradeWorker, counted, 0, 0, 0),
        STR(UpgradeWorker, failure, 200, F_OPTIONAL),
        NUM(FT_U64, UpgradeWorker, start_usec, 0, JSON_INT_MAX, 0),
        NUM(FT_U64, UpgradeWorker, ready_usec, 0, JSON_INT_MAX, 0),
        NUM(FT_U64, UpgradeWorker, deadline, 0, JSON_INT_MAX, 0),
        STR(UpgradeWorker, status, NOTIFY_STATUS_MAX - 1, 0),
        NUM(FT_U64, UpgradeWorker, handed, 0, JSON_INT_MAX, 0),
        NUM(FT_U64, UpgradeWorker, closed, 0, JSON_INT_MAX, 0),
        NUM(FT_BOOL, UpgradeWorker, reports_closes, 0, 0, 0),
        NUM(FT_U64, UpgradeWorker, fd_limit_reports, 0, JSON_INT_MAX, F_OPTIONAL),
        NUM(FT_U64, UpgradeWorker, fd_limit_lost, 0, JSON_INT_MAX, F_OPTIONAL),
        NUM(FT_FD, UpgradeWorker, ipc_fd, 0, 0, F_ENVELOPE),
        NUM(FT_FD, UpgradeWorker, output_fd, 0, 0, F_ENVELOPE),
        NUM(FT_FD, UpgradeWorker, peer_fd, 0, 0, F_ENVELOPE | F_OPTIONAL),
        STR(UpgradeWorker, ipc_tail, 64 * 1024, F_OPTIONAL),
};

static const Record listener_record = { listener_fields, ELEMENTSOF(listener_fields), sizeof(UpgradeListener) };
static const Record client_record = { client_fields, ELEMENTSOF(client_fields), sizeof(UpgradeClient) };
static const Record slot_record = { slot_fields, ELEMENTSOF(slot_fields), sizeof(UpgradeSlot) };
static const Record worker_record = { worker_fields, ELEMENTSOF(worker_fields), sizeof(UpgradeWorker) };

#define ARRAY(s, f, n, type, maxn, fl, rec) \
        { #f, type, offsetof(s, f), fl, 0, maxn, offsetof(s, n), NULL, 0, rec }

/* The instance; "format" and "version" come first and are read apart. */
static const Field state_fields[] = {
        STR(UpgradeState, written_by, 64, 0),
        NUM(FT_U64, UpgradeState, request_usec, 0, JSON_INT_MAX, 0),
        { "balance", FT_ENUM, offsetof(UpgradeState, balance), 0, ENUM(balance_names) },
        STR(UpgradeState, hash_key, IPHASH_KEY_STRING_MAX - 1, F_OPTIONAL),
        STR(UpgradeState, config, 1024 * 1024, F_OPTIONAL),   /* absent: no file */
        NUM(FT_FD, UpgradeState, reply_fd, 0, 0, F_ENVELOPE),
        ARRAY(UpgradeState, waiter_fds, n_waiter_fds, FT_FD_ARRAY, UPGRADE_WAITERS_MAX, F_SINCE_2 | F_ENVELOPE, NULL),
        ARRAY(UpgradeState, clients, n_clients, FT_RECORDS, UPGRADE_CLIENTS_MAX, F_SINCE_2 | F_ENVELOPE,
              &client_record),
        NUM(FT_UINT, UpgradeState, upgrades, 0, UINT_MAX - 1, 0),
        NUM(FT_U64, UpgradeState, start_usec, 0, JSON_INT_MAX, 0),
        NUM(FT_UINT, UpgradeState, generation, 1, UINT_MAX, 0),
        NUM(FT_UINT, UpgradeState, rollout_serial, 0, UINT_MAX, 0),
        NUM(FT_U64, UpgradeState, recycle_pause_until, 0, JSON_INT_MAX, 0),
        NUM(FT_UINT, UpgradeState, recycle_next, 0, CORRAL_WORKERS_MAX - 1, 0),
        NUM(FT_U64, UpgradeState, messages, 0, JSON_INT_MAX, 0),
        NUM(FT_U64, UpgradeState, undeliverable, 0, JSON_INT_MAX, 0),
        NUM(FT_U64, UpgradeState, notify_dropped, 0, JSON_INT_MAX, 0),
        STR(UpgradeState, status, 255, 0),
        NUM(FT_BOOL, UpgradeState, gave_up, 0, 0, 0),
        STR(UpgradeState, giveup_reason, 159, 0),
        NUM(FT_BOOL, UpgradeState, draining, 0, 0, F_OPTIONAL),
        NUM(FT_BOOL, UpgradeState, reload_failed, 0, 0, F_OPTIONAL),
        NUM(FT_U64, UpgradeState, reloads_done, 0, JSON_INT_MAX, F_OPTIONAL),
        NUM(FT_U64, UpgradeState, reloads_failed, 0, JSON_INT_MAX, F_OPTIONAL),
        NUM(FT_UINT, UpgradeState, scaled, 0, CORRAL_WORKERS_MAX, F_OPTIONAL),
        NUM(FT_UINT, UpgradeState, scaled_file_workers, 0, CORRAL_WORKERS_MAX, F_OPTIONAL),
        ARRAY(UpgradeState, failures, n_failures, FT_U64_ARRAY, RESTART_LIMIT_MAX + 1, 0, NULL),
        NUM(FT_FD, UpgradeState, notify_fd, 0, 0, F_ENVELOPE),
        NUM(FT_FD, UpgradeState, control_fd, 0, 0, F_ENVELOPE),
        STR(UpgradeState, control_path, 107, F_OPTIONAL),
        ARRAY(UpgradeState, listeners, n_listeners, FT_RECORDS, UPGRADE_LISTENERS_MAX, F_ENVELOPE, &listener_record),
        ARRAY(UpgradeState, slots, n_slots, FT_RECORDS, CORRAL_WORKERS_MAX, 0, &slot_record),
        /* Current, incoming and leaving: up to three per slot, plus slots
         * scaled away that still drain. */
        ARRAY(UpgradeState, workers, n_workers, FT_RECORDS, 4 * CORRAL_WORKERS_MAX, F_ENVELOPE, &worker_record),
};

static const Record state_record = { state_fields, ELEMENTSOF(state_fields), sizeof(UpgradeState) };

#define AT(base, off, type) ((type *) ((char *) (base) + (off)))
#define CAT(base, off, type) ((const type *) ((const char *) (base) + (off)))

/* ---- freeing ------------------------------------------------------------ */

static void free_record(const Record *rec, void *base) {
        for (size_t i = 0; i < rec->n_fields; i++) {
                const Field *f = &rec->fields[i];
                switch (f->type) {
                case FT_STRING:
                case FT_U64_ARRAY:
                case FT_FD_ARRAY:
                        free(*AT(base, f->offset, void *));
                        break;
                case FT_RECORDS: {
                        char *items = *AT(base, f->offset, char *);
                        unsigned n = *AT(base, f->count_offset, unsigned);
                        for (unsigned k = 0; items && k < n; k++)
                                free_record(f->record, items + k * f->record->size);
                        free(items);
                        break;
                }
                default:
                        break;
                }
        }
}

void upgrade_state_done(UpgradeState *s) {
        free_record(&state_record, s);
        *s = (UpgradeState) {};
}

/* ---- writing ------------------------------------------------------------ */

static cJSON *write_record(const Record *rec, const void *base);

static cJSON *write_field(const Field *f, const void *base) {
        switch (f->type) {
        case FT_BOOL:
                return cJSON_CreateBool(*CAT(base, f->offset, bool));
        case FT_UINT:
                return cJSON_CreateNumber(*CAT(base, f->offset, unsigned));
        case FT_INT:
        case FT_FD:
                return cJSON_CreateNumber(*CAT(base, f->offset, int));
        case FT_U64:
                return cJSON_CreateNumber((double) *CAT(base, f->offset, uint64_t));
        case FT_STRING: {
                const char *s = *CAT(base, f->offset, char *);
                return s ? cJSON_CreateString(s) : NULL;
        }
        case FT_ENUM: {
                int v = *CAT(base, f->offset, int);
                return v >= 0 && (unsigned) v < f->n_names ? cJSON_CreateString(f->names[v]) : NULL;
        }
        case FT_U64_ARRAY:
        case FT_FD_ARRAY:
        case FT_RECORDS: {
                const char *items = *CAT(base, f->offset, char *);
                unsigned n = *CAT(base, f->count_offset, unsigned);
                cJSON *a = cJSON_CreateArray();
                for (unsigned k = 0; a && k < n; k++) {
                        cJSON *e = f->type == FT_U64_ARRAY ? cJSON_CreateNumber((double) ((const uint64_t *) items)[k])
                                 : f->type == FT_FD_ARRAY  ? cJSON_CreateNumber(((const int *) items)[k])
                                                           : write_record(f->record, items + k * f->record->size);
                        if (!e || !cJSON_AddItemToArray(a, e)) {
                                cJSON_Delete(e);
                                a = (cJSON_Delete(a), NULL);
                        }
                }
                return a;
        }
        }
        return NULL;
}

/* Add every field of base to o. A field with no value (a NULL string) is
 * left out; readers default it. Returns false when out of memory. */
static bool write_fields(const Record *rec, const void *base, cJSON *o) {
        for (size_t i = 0; i < rec->n_fields; i++) {
                const Field *f = &rec->fields[i];
                if (f->type == FT_STRING && !*CAT(base, f->offset, char *))
                        continue;
                cJSON *v = write_field(f, base);
                if (!v || !cJSON_AddItemToObject(o, f->name, v)) {
                        cJSON_Delete(v);
                        return false;
                }
        }
        return true;
}

static cJSON *write_record(const Record *rec, const void *base) {
        cJSON *o = cJSON_CreateObject();
        if (o && !write_fields(rec, base, o))
                o = (cJSON_Delete(o), NULL);
        return o;
}

char *upgrade_state_format(const UpgradeState *s) {
        cJSON *o = cJSON_CreateObject();
        /* format and version first, so any reader finds them at once. */
        if (!o || !cJSON_AddStringToObject(o, "format", UPGRADE_STATE_FORMAT) ||
            !cJSON_AddNumberToObject(o, "version", s->version ? s->version : UPGRADE_STATE_VERSION) ||
            !write_fields(&state_record, s, o)) {
                cJSON_Delete(o);
                return NULL;
        }
        char *text = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        return text;
}

/* ---- reading ------------------------------------------------------------ */

typedef struct Reader {
        int version;
        bool envelope;           /* only F_ENVELOPE fields, skipping bad records */
        char *error;
        size_t error_size;
} Reader;

_printf_(3, 4) static int bad(Reader *r, const char *path, const char *fmt, ...) {
        if (r->error && r->error_size > 0) {
                int n = snprintf(r->error, r->error_size, "%s: ", path);
                va_list ap;
                va_start(ap, fmt);
                if (n >= 0 && (size_t) n < r->error_size)
                        vsnprintf(r->error + n, r->error_size - (size_t) n, fmt, ap);
                va_end(ap);
        }
        return -EBADMSG;
}

static const char *json_type(const cJSON *v) {
        return cJSON_IsString(v) ? "a string" : cJSON_IsNumber(v) ? "a number" : cJSON_IsBool(v) ? "a boolean"
             : cJSON_IsNull(v) ? "null" : cJSON_IsArray(v) ? "an array" : cJSON_IsObject(v) ? "an object" : "nothing";
}

/* An integral JSON number in [lo, hi] (hi <= 2^53). */
static int read_integer(Reader *r, const char *path, const cJSON *v, int64_t lo, uint64_t hi, int64_t *ret) {
        double d = cJSON_IsNumber(v) ? v->valuedouble : 0;
        if (!cJSON_IsNumber(v) || d != d || d < (double) lo || d > (double) hi || d != (double) (int64_t) d)
                return bad(r, path, "expected an integer from %lld to %llu, got %s", (long long) lo,
                           (unsigned long long) hi, cJSON_IsNumber(v) ? "another number" : json_type(v));
        *ret = (int64_t) d;
        return 0;
}

static int read_fd(Reader *r, const char *path, const cJSON *v, int *ret) {
        int64_t n;
        int k = read_integer(r, path, v, -1, INT_MAX, &n);
        if (k < 0)
                return k;
        if (n >= 0 && n < 3)
                return bad(r, path, "expected -1 or a file descriptor >= 3, got %lld", (long long) n);
        *ret = (int) n;
        return 0;
}

static int read_record(Reader *r, const char *path, const cJSON *o, const Record *rec, void *base);

static int read_array(Reader *r, const char *path, const cJSON *v, const Field *f, void *base) {
        if (!cJSON_IsArray(v))
                return bad(r, path, "expected an array, got %s", json_type(v));
        unsigned n = (unsigned) cJSON_GetArraySize(v);
        if (n > f->max)
                return bad(r, path, "expected at most %llu entries, got %u", (unsigned long long) f->max, n);
        size_t size = f->type == FT_U64_ARRAY ? sizeof(uint64_t) : f->type == FT_FD_ARRAY ? sizeof(int)
                                                                                         : f->record->size;
        char *items = n ? calloc(n, size) : NULL;
        if (n && !items)
                return -ENOMEM;
        *AT(base, f->offset, char *) = items;
        unsigned *count = AT(base, f->count_offset, unsigned);
        *count = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
                char p[256];
                snprintf(p, sizeof(p), "%.200s[%u]", path, *count);
                void *item = items + *count * size;
                int k;
                if (f->type == FT_U64_ARRAY) {
                        int64_t x;
                        k = read_integer(r, p, e, 0, JSON_INT_MAX, &x);
                        *(uint64_t *) item = (uint64_t) x;
                } else if (f->type == FT_FD_ARRAY) {
                        k = read_fd(r, p, e, item);
                        if (k >= 0 && *(int *) item < 0)
                                k = bad(r, p, "expected a file descriptor >= 3, got -1");
                } else
                        k = read_record(r, p, e, f->record, item);
                if (k < 0) {
                        /* Not counted: free what it holds here. */
                        if (f->type == FT_RECORDS)
                                free_record(f->record, item);
                        memset(item, 0, size);
                        /* The envelope skips what does not check out. */
                        if (k == -ENOMEM || !r->envelope)
                                return k;
                        continue;
                }
                (*count)++;
        }
        return 0;
}

static void set_default(const Field *f, void *base) {
        if (f->type == FT_FD)
                *AT(base, f->offset, int) = -1;
}

static int read_field(Reader *r, const char *path, const cJSON *v, const Field *f, void *base) {
        int64_t n;
        int k;
        switch (f->type) {
        case FT_BOOL:
                if (!cJSON_IsBool(v))
                        return bad(r, path, "expected true or false, got %s", json_type(v));
                *AT(base, f->offset, bool) = cJSON_IsTrue(v);
                return 0;
        case FT_UINT:
        case FT_INT:
        case FT_U64:
                if ((k = read_integer(r, path, v, (int64_t) f->min, f->max, &n)) < 0)
                        return k;
                if (f->type == FT_UINT)
                        *AT(base, f->offset, unsigned) = (unsigned) n;
                else if (f->type == FT_INT)
                        *AT(base, f->offset, int) = (int) n;
                else
                        *AT(base, f->offset, uint64_t) = (uint64_t) n;
                return 0;
        case FT_FD:
                return read_fd(r, path, v, AT(base, f->offset, int));
        case FT_STRING: {
                if (!cJSON_IsString(v))
                        return bad(r, path, "expected a string, got %s", json_type(v));
                size_t len = strlen(v->valuestring);
                if (len > f->max)
                        return bad(r, path, "expected at most %llu bytes, got %zu", (unsigned long long) f->max, len);
                char *s = strdup(v->valuestring);
                if (!s)
                        return -ENOMEM;
                *AT(base, f->offset, char *) = s;
                return 0;
        }
        case FT_ENUM:
                /* Version 1 wrote enums as their numbers, in today's order. */
                if (r->version == 1 && cJSON_IsNumber(v)) {
                        if ((k = read_integer(r, path, v, 0, f->n_names - 1, &n)) < 0)
                                return k;
                        *AT(base, f->offset, int) = (int) n;
                        return 0;
                }
                if (cJSON_IsString(v))
                        for (unsigned i = 0; i < f->n_names; i++)
                                if (strcmp(v->valuestring, f->names[i]) == 0) {
                                        *AT(base, f->offset, int) = (int) i;
                                        return 0;
                                }
                return bad(r, path, "expected one of %s%s%s%s, got %s%s%s", f->names[0], f->n_names > 1 ? ", " : "",
                           f->n_names > 1 ? f->names[1] : "", f->n_names > 2 ? ", ..." : "",
                           cJSON_IsString(v) ? "\"" : "", cJSON_IsString(v) ? v->valuestring : json_type(v),
                           cJSON_IsString(v) ? "\"" : "");
        case FT_U64_ARRAY:
        case FT_FD_ARRAY:
        case FT_RECORDS:
                return read_array(r, path, v, f, base);
        }
        return -EINVAL;
}

static int read_record(Reader *r, const char *path, const cJSON *o, const Record *rec, void *base) {
        /* Defaults first: a record left half read still names no fd 0. */
        for (size_t i = 0; i < rec->n_fields; i++)
                set_default(&rec->fields[i], base);
        if (!cJSON_IsObject(o))
                return bad(r, path, "expected an object, got %s", json_type(o));
        for (size_t i = 0; i < rec->n_fields; i++) {
                const Field *f = &rec->fields[i];
                char p[256];
                snprintf(p, sizeof(p), "%.200s%s%.40s", path, path[0] ? "." : "", f->name);
                if (r->envelope && !(f->flags & F_ENVELOPE))
                        continue;
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, f->name);
                if (!v) {
                        if ((f->flags & F_OPTIONAL) || ((f->flags & F_SINCE_2) && r->version < 2) || r->envelope)
                                continue;
                        return bad(r, p, "missing");
                }
                int k = read_field(r, p, v, f, base);
                /* The envelope takes what checks out of the instance; a bad
                 * record in an array is skipped by read_array(). */
                if (k < 0 && k != -ENOMEM && r->envelope && !path[0]) {
                        /* An array that is none, or too long, was not
                         * allocated: it reads as empty. */
                        set_default(f, base);
                        continue;
                }
                if (k < 0)
                        return k;
        }
        return 0;
}

static int compare_int(const void *a, const void *b) {
        int x = *(const int *) a, y = *(const int *) b;
        return (x > y) - (x < y);
}

/* What ties records together, which no single field can say. Linear or
 * n log n: a state may list thousands of workers. */
static int check_relations(Reader *r, const UpgradeState *s) {
        char p[64];

        if (s->n_slots == 0)
                return bad(r, "slots", "expected at least one slot");
        /* Slot ids are exactly 0..n-1, each once; per slot, which of its
         * workers are there. */
        _cleanup_free_ unsigned *by_id = malloc(s->n_slots * sizeof(unsigned));
        _cleanup_free_ uint8_t *roles = calloc(s->n_slots, 1);
        if (!by_id || !roles)
                return -ENOMEM;
        memset(by_id, 0xff, s->n_slots * sizeof(unsigned));
        for (unsigned i = 0; i < s->n_slots; i++) {
                unsigned id = s->slots[i].id;
                snprintf(p, sizeof(p), "slots[%u].id", i);
                if (id >= s->n_slots)
                        return bad(r, p, "expected a slot id below %u (the number of slots), got %u", s->n_slots, id);
                if (by_id[id] != UINT_MAX)
                        return bad(r, p, "slot %u is listed twice", id);
                by_id[id] = i;
        }
        if (s->recycle_next >= s->n_slots)
                return bad(r, "recycle_next", "expected a slot id below %u, got %u", s->n_slots, s->recycle_next);

        _cleanup_free_ int *pids = malloc((s->n_workers + 1) * sizeof(int));
        if (!pids)
                return -ENOMEM;
        for (unsigned i = 0; i < s->n_workers; i++) {
                const UpgradeWorker *w = &s->workers[i];
                snprintf(p, sizeof(p), "workers[%u]", i);
                /* Slots scaled away still draining are never carried (an
                 * upgrade waits for them), so every worker has its slot. */
                if (w->slot >= s->n_slots)
                        return bad(r, p, "slot %u does not exist", w->slot);
                if (w->generation > s->generation)
                        return bad(r, p, "generation %u is newer than the instance's %u", w->generation,
                                   s->generation);
                /* A slot has at most one current and one incoming worker;
                 * any number may be leaving. */
                uint8_t bit = w->role == WORKER_CURRENT ? 1 : w->role == WORKER_INCOMING ? 2 : 0;
                if (roles[w->slot] & bit)
                        return bad(r, p, "slot %u has two %s workers", w->slot, worker_role_names[w->role]);
                roles[w->slot] |= bit;
                pids[i] = w->pid;
        }
        qsort(pids, s->n_workers, sizeof(int), compare_int);
        for (unsigned i = 1; i < s->n_workers; i++)
                if (pids[i] == pids[i - 1])
                        return bad(r, "workers", "pid %d is listed twice", pids[i]);

        /* The slot's state says which workers it has (slot.c relies on it:
         * a ready slot has a current worker, a replacing one an incoming). */
        for (unsigned id = 0; id < s->n_slots; id++) {
                const UpgradeSlot *sl = &s->slots[by_id[id]];
                bool current = roles[id] & 1, incoming = roles[id] & 2, ok;
                switch (sl->state) {
                case SLOT_STARTING:
                case SLOT_READY:
                        ok = current && !incoming;
                        break;
                case SLOT_REPLACING:
                        ok = incoming;
                        break;
                case SLOT_EMPTY:
                case SLOT_BACKOFF:
                case SLOT_FAILED:
                        ok = !current && !incoming;
                        break;
                default:   /* removed: never carried, an upgrade waits for the drain */
                        ok = false;
                }
                if (!ok) {
                        snprintf(p, sizeof(p), "slots[%u].state", by_id[id]);
                        return bad(r, p, "slot %u is %s with %s current and %s incoming worker", id,
                                   slot_state_names[sl->state], current ? "a" : "no", incoming ? "an" : "no");
                }
        }

        /* No descriptor may be named twice: one fd adopted by two owners
         * would be closed under the other. */
        unsigned n_fds = 0, cap = 3 + s->n_waiter_fds + s->n_clients + s->n_listeners + 3 * s->n_workers;
        _cleanup_free_ int *fds = malloc(cap * sizeof(int));
        if (!fds)
                return -ENOMEM;
#define ADD(x) do { if ((x) >= 0) fds[n_fds++] = (x); } while (0)
        ADD(s->notify_fd);
        ADD(s->control_fd);
        ADD(s->reply_fd);
        for (unsigned i = 0; i < s->n_waiter_fds; i++)
                ADD(s->waiter_fds[i]);
        for (unsigned i = 0; i < s->n_clients; i++)
                ADD(s->clients[i].fd);
        for (unsigned i = 0; i < s->n_listeners; i++)
                ADD(s->listeners[i].fd);
        for (unsigned i = 0; i < s->n_workers; i++) {
                ADD(s->workers[i].ipc_fd);
                ADD(s->workers[i].peer_fd);
                ADD(s->workers[i].output_fd);
        }
#undef ADD
        qsort(fds, n_fds, sizeof(int), compare_int);
        for (unsigned i = 1; i < n_fds; i++)
                if (fds[i] == fds[i - 1])
                        return bad(r, "fds", "file descriptor %d is named twice", fds[i]);
        for (unsigned i = 0; i < s->n_listeners; i++)
                if (s->listeners[i].fd < 0) {
                        snprintf(p, sizeof(p), "listeners[%u].fd", i);
                        return bad(r, p, "expected a file descriptor >= 3, got -1");
                }
        for (unsigned i = 0; i < s->n_clients; i++)
                if (s->clients[i].fd < 0) {
                        snprintf(p, sizeof(p), "clients[%u].fd", i);
                        return bad(r, p, "expected a file descriptor >= 3, got -1");
                }
        return 0;
}

/* The envelope: "format" and "version". */
static int read_head(Reader *r, const cJSON *root, int *ret_version) {
        if (!cJSON_IsObject(root))
                return bad(r, "state", "expected a JSON object");
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "format");
        if (!cJSON_IsString(f) || strcmp(f->valuestring, UPGRADE_STATE_FORMAT) != 0)
                return bad(r, "format", "expected \"%s\": not a corrald state", UPGRADE_STATE_FORMAT);
        int64_t v;
        int k = read_integer(r, "version", cJSON_GetObjectItemCaseSensitive(root, "version"), 1, INT_MAX, &v);
        if (k < 0)
                return k;
        *ret_version = (int) v;
        return 0;
}

static cJSON *parse_json(const char *text, size_t len) {
        if (len > UPGRADE_STATE_MAX)
                return NULL;
        return cJSON_ParseWithLength(text, len);
}

int upgrade_state_parse(const char *text, size_t len, UpgradeState *ret, char *ret_error, size_t error_size) {
        Reader r = { .error = ret_error, .error_size = error_size };
        UpgradeState s = {};
        int k;

        *ret = (UpgradeState) {};
        if (ret_error && error_size)
                ret_error[0] = 0;
        cJSON *root = parse_json(text, len);
        if (!root && len > UPGRADE_STATE_MAX)
                return bad(&r, "state", "larger than %d bytes", UPGRADE_STATE_MAX);
        if (!root)
                return bad(&r, "state", "not valid JSON");
        k = read_head(&r, root, &r.version);
        if (k >= 0 && r.version > UPGRADE_STATE_VERSION) {
                bad(&r, "version", "format version %d, this corrald reads versions 1 to %d", r.version,
                    UPGRADE_STATE_VERSION);
                k = -EPROTONOSUPPORT;
        }
        if (k >= 0)
                k = read_record(&r, "", root, &state_record, &s);
        cJSON_Delete(root);
        s.version = r.version;
        if (k >= 0)
                k = check_relations(&r, &s);
        if (k < 0) {
                upgrade_state_done(&s);
                return k;
        }
        *ret = s;
        return 0;
}

int upgrade_state_parse_envelope(const char *text, size_t len, UpgradeState *ret) {
        Reader r = { .envelope = true };
        UpgradeState s = {};

        *ret = (UpgradeState) {};
        cJSON *root = parse_json(text, len);
        if (!root)
                return -EBADMSG;
        int k = read_head(&r, root, &r.version);
        if (k < 0) {
                cJSON_Delete(root);
                return k;
        }
        k = read_record(&r, "", root, &state_record, &s);
        cJSON_Delete(root);
        if (k == -ENOMEM) {
                upgrade_state_done(&s);
                return k;
        }
        /* A bad fd field of the instance (the only fields that can fail
         * here) leaves it at -1: nothing to close. */
        s.version = r.version;
        *ret = s;
        return 0;
}
