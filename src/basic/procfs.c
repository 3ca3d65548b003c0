/* procfs: see procfs.h. Reads /proc/PID/stat and /proc/PID/statm, which
 * stay visible with ProtectProc=invisible and ProcSubset=pid for our own
 * children. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "procfs.h"

int procfs_read_stats(pid_t pid, ProcStats *ret) {
        char path[64], buf[1024];
        unsigned long long ut, st, size, resident;
        FILE *f;

        snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        if (!(f = fopen(path, "re")))
                return -errno;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        /* The command name may contain spaces and ')'; the fields after the
         * last ')' are state(3) ppid ... utime(14) stime(15). */
        const char *p = strrchr(buf, ')');
        if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
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
