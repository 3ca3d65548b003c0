/* notify-msg: the sd_notify(3) datagram format, parsed.
 *
 * A datagram is a series of newline-separated VAR=VALUE assignments. We
 * understand the ones a worker may send to corrald (SPEC §3) and ignore
 * unknown ones, as systemd does. Pure: no I/O, no logging. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define NOTIFY_STATUS_MAX 256

typedef struct NotifyMsg {
        bool ready;
        bool stopping;
        bool reloading;
        bool watchdog;          /* WATCHDOG=1 */
        bool watchdog_trigger;  /* WATCHDOG=trigger */
        bool has_status;
        char status[NOTIFY_STATUS_MAX]; /* truncated copy of STATUS=, valid if has_status */
        int errno_value;                /* ERRNO=, -1 if absent or invalid */
        unsigned n_unknown;             /* assignments we ignored */
} NotifyMsg;

/* Parse a datagram payload of len bytes. Rejects (returns -EINVAL) an empty
 * payload, one containing a NUL byte, and one with no valid assignment at
 * all; otherwise fills *ret and returns 0. */
int notify_msg_parse(const char *buf, size_t len, NotifyMsg *ret);
