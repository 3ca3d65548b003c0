/* procfs: a process's parent, CPU time and resident memory, from /proc. */
#pragma once

#include <stdint.h>
#include <sys/types.h>

typedef struct ProcStats {
        uint64_t cpu_ms;   /* user + system time */
        uint64_t rss_kb;   /* resident set size */
} ProcStats;

/* Returns 0, or -errno when the process is gone or /proc unreadable. */
int procfs_read_stats(pid_t pid, ProcStats *ret);

/* The parent pid of a live process (a zombie still has one), or -errno. */
int procfs_read_ppid(pid_t pid, pid_t *ret);
