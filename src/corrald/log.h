/* log: corrald's own events, to the journal or to stderr (SPEC §8).
 *
 * One entry point, log_emit(), takes a priority, optional structured fields
 * and a message. In journal mode the fields become CORRAL_* journal fields;
 * in stderr mode the message is written as one readable line. Never fails
 * visibly; a message that cannot be written is dropped. Never blocks on the
 * journal: what journald cannot take now waits in a bounded queue, drained
 * from the default loop (log.c). Never blocks on stderr either: lines go
 * through a bounded non-blocking FIFO, dropped and counted when it is full.
 * With the journal chosen but not reachable at all, says so once on stderr
 * and logs there instead. Control characters in messages are escaped on
 * stderr. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <syslog.h>

#include "macros.h"

typedef enum LogTarget {
        LOG_TARGET_AUTO,
        LOG_TARGET_JOURNAL,
        LOG_TARGET_STDERR,
} LogTarget;

/* Parse "auto" / "journal" / "stderr". Returns the target or -EINVAL. */
int log_target_from_string(const char *s);

/* Resolve AUTO (journal when stderr is the stream JOURNAL_STREAM names) and
 * remember the instance name used in CORRAL_INSTANCE and line prefixes. */
void log_setup(LogTarget t, const char *instance);
void log_set_instance(const char *instance);
LogTarget log_get_target(void);
/* Messages above this priority are dropped; LOG_INFO by default,
 * LOG_DEBUG when CORRAL_DEBUG is set in the environment. */
void log_set_max_priority(int prio);

/* Queue one or more whole lines (each ending in "\n") for corrald's
 * stderr, in order with corrald's own stderr lines; written without ever
 * blocking. Dropped (and counted, reported later) when the bounded queue
 * cannot hold them. For output.c; does not escape anything. */
void log_stderr_write(const char *data, size_t len);
/* Whether the stderr queue is so full that bulk output (workers' lines)
 * should wait; cb is called from the loop whenever the queue has drained. */
bool log_stderr_congested(void);
void log_stderr_set_drained_callback(void (*cb)(void));

typedef struct LogFields {
        const char *event;      /* CORRAL_EVENT, or NULL */
        int worker_id;          /* CORRAL_WORKER_ID, or -1 */
        pid_t pid;              /* CORRAL_WORKER_PID, or 0 */
        unsigned generation;    /* CORRAL_GENERATION, or 0 */
        int exit_status;        /* CORRAL_EXIT_STATUS, or -1 */
        int signal;             /* CORRAL_SIGNAL (name), or 0 */
} LogFields;

#define LOG_FIELDS_NONE ((LogFields) { .worker_id = -1, .exit_status = -1 })

_printf_(3, 4) void log_emit(int prio, const LogFields *f, const char *fmt, ...);

#define log_error(...) log_emit(LOG_ERR, NULL, __VA_ARGS__)
#define log_warning(...) log_emit(LOG_WARNING, NULL, __VA_ARGS__)
#define log_notice(...) log_emit(LOG_NOTICE, NULL, __VA_ARGS__)
#define log_info(...) log_emit(LOG_INFO, NULL, __VA_ARGS__)
#define log_debug(...) log_emit(LOG_DEBUG, NULL, __VA_ARGS__)

/* Log at LOG_ERR and return r (a negative errno), systemd style; %m in fmt
 * expands to strerror(-r). */
#define log_error_errno(r, ...) (errno = -(r), log_error(__VA_ARGS__), (r))
