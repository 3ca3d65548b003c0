/* spawn: fork + exec of one worker with the full worker contract (SPEC §3).
 *
 * Everything the child needs is prepared in the parent before fork(); the
 * child only moves fds into place, resets signals and execs, using
 * async-signal-safe calls. An exec (or chdir) failure is reported back over
 * a CLOEXEC pipe, so spawn_worker() knows whether the program started. */
#pragma once

#include <stdint.h>
#include <sys/types.h>

typedef struct SpawnParams {
        char * const *argv;
        const char *cwd;             /* NULL: inherit */
        char * const *extra_env;     /* config env, "K=V", override inherited */
        const int *listen_fds;
        unsigned n_listen;
        const char *fdnames;         /* LISTEN_FDNAMES value */
        const char *notify_socket;   /* NOTIFY_SOCKET value */
        int ipc_fd;                  /* child's end; becomes fd 3+n_listen */
        const char *instance;
        unsigned worker_id;
        unsigned generation;
        uint64_t watchdog_usec;      /* 0: no WATCHDOG_USEC */
} SpawnParams;

/* Start a worker. Returns its pid (> 0), or a negative errno; on failure
 * *ret_stage names what failed ("fork", "exec", "chdir", "setup") and any
 * child process has already been reaped. Does not log. */
pid_t spawn_worker(const SpawnParams *p, const char **ret_stage);
