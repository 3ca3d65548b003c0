/* spawn: fork + exec of one worker with the full worker contract (SPEC §3).
 *
 * Everything the child needs is prepared in the parent before fork(); the
 * child only moves fds into place, resets signals and execs, using
 * async-signal-safe calls. An exec (or chdir) failure is reported back over
 * a CLOEXEC pipe, so spawn_worker() knows whether the program started.
 *
 * The worker's stdout and stderr (SPEC §8) are set up in the child too: in
 * journal mode it connects its own journald streams, so that journald
 * records the worker's pid, not ours, without ever waiting on journald (a
 * stream it does not accept now is left as corrald's own); in stderr mode
 * they become the write end of a pipe the master reads (output.c).
 * JOURNAL_STREAM names the worker's own stderr stream, or is unset. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef enum SpawnOutput {
        SPAWN_OUTPUT_INHERIT,        /* stdout and stderr are corrald's own */
        SPAWN_OUTPUT_JOURNAL,        /* a journald stream each, opened in the child */
        SPAWN_OUTPUT_FD,             /* output_fd becomes stdout and stderr */
} SpawnOutput;

typedef struct SpawnParams {
        char * const *argv;
        const char *cwd;             /* NULL: inherit */
        char * const *extra_env;     /* config env, "K=V", override inherited */
        const int *listen_fds;
        unsigned n_listen;
        const char *fdnames;         /* LISTEN_FDNAMES value */
        const char *notify_socket;   /* NOTIFY_SOCKET value */
        int ipc_fd;                  /* child's end; becomes fd 3+n_listen */
        bool node_channel;           /* ipc "node": it is NODE_CHANNEL_FD too */
        const char *instance;
        unsigned worker_id;
        unsigned generation;
        uint64_t watchdog_usec;      /* 0: no WATCHDOG_USEC */
        SpawnOutput output;
        const char *syslog_identifier; /* SPAWN_OUTPUT_JOURNAL: SYSLOG_IDENTIFIER of its lines */
        int output_fd;               /* SPAWN_OUTPUT_FD: the pipe's write end */
} SpawnParams;

/* Whether argv[0], found as execvp() would (a path with a '/' from cwd,
 * else along PATH from env or corrald's own), is a program exec can run
 * by itself: a binary or a script with a #! line. Anything else execvp()
 * would hand to /bin/sh (its ENOEXEC fallback), which runs a JavaScript or
 * Python file as shell and crash-loops; that is refused here with a hint
 * ("app.js has no #! line; use [\"node\", \"app.js\"]"). A program that
 * cannot be found or read passes: the exec itself says why. Returns 0 or
 * -ENOEXEC with a malloc'd message in *ret_error (or -ENOMEM). Reads the
 * file's first bytes; never blocks on a FIFO. Does not log. */
int spawn_check_program(char * const *argv, const char *cwd, char * const *env, char **ret_error);

/* Start a worker. Returns its pid (> 0), or a negative errno; on failure
 * *ret_stage names what failed ("fork", "exec", "chdir", "setup") and any
 * child process has already been reaped. Does not log. Waits at most about
 * a second for the child's exec; a child still not exec'd then is taken as
 * started. With
 * SPAWN_OUTPUT_JOURNAL, a stream that cannot be opened (no journald) is not
 * a failure: that fd stays corrald's own, as with SPAWN_OUTPUT_INHERIT.
 * output_fd is not closed; the caller closes its copy after the call. */
pid_t spawn_worker(const SpawnParams *p, const char **ret_stage);

/* The worker's environment (SPEC §3), built in the parent before fork():
 * corrald's environment without the variables reserved for corrald
 * (worker-env.h) and without those the config's env overrides, then the
 * config's env, then LISTEN_* (only with listening fds: shared balance),
 * NOTIFY_SOCKET, WATCHDOG_*, CORRAL_*, NODE_* (the node dialect) and
 * JOURNAL_STREAM last. The pids and the journal stream's device:inode are
 * placeholders the child fills in: *ret_listen_pid and *ret_watchdog_pid
 * point at their digits (NULL when absent), *ret_journal_stream at the
 * entry (NULL when absent). Returns 0 or -ENOMEM. Exposed for
 * tests/unit/test-spawn.c. */
int spawn_build_env(const SpawnParams *p, char ***ret, char **ret_listen_pid, char **ret_watchdog_pid,
                    char ***ret_journal_stream);
