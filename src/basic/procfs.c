/* procfs: see procfs.h. Reads /proc/PID/stat and /proc/PID/statm, which
 * stay visible with ProtectProc=invisible and ProcSubset=pid for our own
 * children. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "procfs.h"

/* The fields of /proc/PID/stat after the command name, which may contain
 * spaces and ')': they start after the last ')' with state(3) ppid(4). */
static int read_stat_tail(pid_t pid, char *buf, size_t size, const char **ret) {
        char path[64];
        FILE *f;

        if (pid <= 0)
                return -ESRCH;
        snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        if (!(f = fopen(path, "re")))
                return -errno;
        size_t n = fread(buf, 1, size - 1, f);
        fclose(f);
        buf[n] = 0;
        const char *p = strrchr(buf, ')');
        if (!p)
                return -EIO;
        *ret = p + 1;
        return 0;
}

int procfs_read_ppid(pid_t pid, pid_t *ret) {
        char buf[1024];
        const char *p;
        int ppid;
        int r = read_stat_tail(pid, buf, sizeof(buf), &p);
        if (r < 0)
                return r;
        if (sscanf(p, " %*c %d", &ppid) != 1)
                return -EIO;
        *ret = ppid;
        return 0;
}

int procfs_read_stats(pid_t pid, ProcStats *ret) {
        char path[64], buf[1024];
        unsigned long long ut, st, size, resident;
        const char *p;
        FILE *f;

        int r = read_stat_tail(pid, buf, sizeof(buf), &p);
        if (r < 0)
                return r;
        /* utime(14) stime(15). */
        if (sscanf(p, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
                return -EIO;

        snprintf(path, sizeof(path), "/proc/%d/statm", (int) pid);
        if (!(f = fopen(path, "re")))
                return -errno;
        int k = fscanf(f, "%llu %llu", &size, &resident);
        fclose(f);
        if (k != 2)
                return -EIO;

        long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
        ret->cpu_ms = tck > 0 ? (uint64_t) (ut + st) * 1000 / (uint64_t) tck : 0;
        ret->rss_kb = (uint64_t) resident * (uint64_t) (page > 0 ? page : 4096) / 1024;
        return 0;
}
