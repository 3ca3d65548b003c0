/* upgrade-state: the hand-over state of an in-place upgrade (SPEC §4,
 * docs/internals/upgrade.md) as plain records, and its JSON form.
 *
 * One field table per record (name, type, offset, enum names, range)
 * drives both directions: upgrade_state_format() writes every field of
 * the table, upgrade_state_parse() reads and range-checks every field of
 * the table, then checks what relates records to each other (slot ids,
 * one current worker per slot, no fd named twice). Enums travel by name,
 * so reordering an enum cannot change what a state means.
 *
 * Pure: no I/O, no logging, no globals. What only the running process can
 * check (is that pid our child, is that fd an open socket) is upgrade.c's. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "slot.h"
#include "worker.h"

/* The state format's version: bumped by any change a previous corrald
 * would misread. Version 1 (enums as numbers, no configuration) is still
 * read, so an upgrade from a corrald that wrote it keeps every worker. */
#define UPGRADE_STATE_VERSION 2
#define UPGRADE_STATE_FORMAT "corrald-state"

/* Limits of what a state may hold; a state beyond them is refused. */
#define UPGRADE_STATE_MAX (64 * 1024 * 1024)
#define UPGRADE_LISTENERS_MAX 1024
#define UPGRADE_WAITERS_MAX 64
#define UPGRADE_CLIENTS_MAX 64

typedef struct UpgradeListener {
        int fd;
        char *name;
        char *display;
        char *unlink_path;       /* NULL: none */
        bool activated;
} UpgradeListener;

/* A control client with no request in progress: the new corrald goes on
 * reading it, from what the old one had read and not yet taken. */
typedef struct UpgradeClient {
        int fd;
        char *unread;            /* NULL: nothing */
} UpgradeClient;

typedef struct UpgradeSlot {
        unsigned id;
        SlotState state;
        unsigned restarts;
        unsigned consecutive_failures;
        uint64_t last_failure;   /* 0: none (or a version 1 state) */
        uint64_t deadline;
} UpgradeSlot;

typedef struct UpgradeWorker {
        unsigned slot;
        int pid;
        unsigned generation;
        WorkerState state;
        WorkerRole role;
        bool stop_sent, said_stopping, counted;
        char *failure;           /* NULL: none */
        uint64_t start_usec, ready_usec, deadline;
        char *status;
        uint64_t handed, closed;
        uint64_t fd_limit_reports, fd_limit_lost;  /* optional: absent in older states */
        bool reports_closes;
        int ipc_fd, output_fd;   /* -1: none */
        int peer_fd;             /* the worker's end of its channel, kept with hand-off; -1: none */
        char *ipc_tail;          /* the rest of a line half sent to the worker, or NULL */
} UpgradeWorker;

typedef struct UpgradeState {
        int version;
        char *written_by;
        uint64_t request_usec;
        Balance balance;
        char *hash_key;          /* ip-hash's key, 32 hex digits; NULL: none (absent in older states) */
        char *config;            /* the running configuration's file text; NULL: re-read the file (version 1) */
        int reply_fd;            /* the client that asked, or -1 */
        int *waiter_fds;         /* other clients that asked while it was prepared */
        unsigned n_waiter_fds;
        UpgradeClient *clients;  /* the other control clients */
        unsigned n_clients;
        unsigned upgrades;
        uint64_t start_usec;
        unsigned generation;
        unsigned rollout_serial;
        uint64_t recycle_pause_until;
        unsigned recycle_next;
        uint64_t messages, undeliverable, notify_dropped;
        char *status;
        bool gave_up;
        char *giveup_reason;
        bool draining;           /* `corralctl drain` holds across an upgrade */
        bool reload_failed;
        uint64_t reloads_done, reloads_failed;
        unsigned scaled, scaled_file_workers;   /* a runtime scale that holds (0: none) */
        uint64_t *failures;      /* the failure window's stamps, oldest first */
        unsigned n_failures;
        int notify_fd, control_fd;
        char *control_path;      /* NULL: none */
        UpgradeListener *listeners;
        unsigned n_listeners;
        UpgradeSlot *slots;
        unsigned n_slots;
        UpgradeWorker *workers;
        unsigned n_workers;
} UpgradeState;

/* Free what the state owns and zero it. Accepts a zeroed state. */
void upgrade_state_done(UpgradeState *s);
static inline void upgrade_state_donep(UpgradeState *s) {
        upgrade_state_done(s);
}

/* The JSON text of s (malloc'd, NUL-terminated), or NULL when out of memory. */
char *upgrade_state_format(const UpgradeState *s);

/* Parse and check a state (text need not be NUL-terminated). Returns 0
 * with *ret filled, or -EBADMSG with what is wrong in ret_error (e.g.
 * "workers[2].pid: expected an integer from 2 to 2147483647, got 1"), or
 * -EPROTONOSUPPORT for another format version (the envelope can still be
 * read), or -ENOMEM. *ret is zeroed on failure. */
int upgrade_state_parse(const char *text, size_t len, UpgradeState *ret, char *ret_error, size_t error_size);

/* What any version's state says about the fds and processes it carries
 * (the "envelope": listeners, the notify, control and reply fds, each
 * worker's pid and fds), for a clean start that adopts the listeners and
 * stops the previous workers. Entries that do not check out are left out.
 * Returns 0, -EBADMSG when the text is not a corrald state at all, or
 * -ENOMEM. */
int upgrade_state_parse_envelope(const char *text, size_t len, UpgradeState *ret);
