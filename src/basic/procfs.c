/* procfs: see procfs.h. Reads /proc/PID/stat, which stays visible with
 * ProtectProc=invisible and ProcSubset=pid for our own children. `status`
 * reads it for every worker: one open/read/close each, no stdio, no
 * scanf (with 2,000 workers, stdio and scanf were most of its cost). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "procfs.h"

/* The fields of /proc/PID/stat after the command name, which may contain
 * spaces and ')': they start after the last ')' with state(3) ppid(4). */
static int read_stat_tail(pid_t pid, char *buf, size_t size, const char **ret) {
        char path[64];

        if (pid <= 0)
                return -ESRCH;
        snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        ssize_t n;
        do
                n = read(fd, buf, size - 1);
        while (n < 0 && errno == EINTR);
        int saved = errno;
        close(fd);
        if (n < 0)
                return -saved;
        buf[n] = 0;
        const char *p = strrchr(buf, ')');
        if (!p)
                return -EIO;
        *ret = p + 1;
        return 0;
}

/* Field `field` (1-based, as proc(5) numbers them; >= 3) of the tail
 * that read_stat_tail() found, as an unsigned number. */
static int stat_field(const char *tail, unsigned field, unsigned long long *ret) {
        const char *p = tail;
        for (unsigned f = 3;; f++) {
                while (*p == ' ')
                        p++;
                if (!*p)
                        return -EIO;
                if (f == field)
                        break;
                while (*p && *p != ' ')
                        p++;
        }
        unsigned long long v = 0;
        if (*p < '0' || *p > '9')
                return -EIO;
        for (; *p >= '0' && *p <= '9'; p++)
                v = v * 10 + (unsigned long long) (*p - '0');
        *ret = v;
        return 0;
}

int procfs_read_ppid(pid_t pid, pid_t *ret) {
        char buf[1024];
        unsigned long long ppid;
        const char *p;
        int r = read_stat_tail(pid, buf, sizeof(buf), &p);
        if (r < 0)
                return r;
        /* ppid(4). */
        if (stat_field(p, 4, &ppid) < 0 || ppid > INT32_MAX)
                return -EIO;
        *ret = (pid_t) ppid;
        return 0;
}

int procfs_read_stats(pid_t pid, ProcStats *ret) {
        char buf[1024];
        unsigned long long ut, st, resident;
        const char *p;
        static long tck, page;

        int r = read_stat_tail(pid, buf, sizeof(buf), &p);
        if (r < 0)
                return r;
        /* utime(14) stime(15) rss(24), in clock ticks and pages. */
        if (stat_field(p, 14, &ut) < 0 || stat_field(p, 15, &st) < 0 || stat_field(p, 24, &resident) < 0)
                return -EIO;
        if (!tck) {
                tck = sysconf(_SC_CLK_TCK);
                page = sysconf(_SC_PAGESIZE);
        }
        ret->cpu_ms = tck > 0 ? (uint64_t) (ut + st) * 1000 / (uint64_t) tck : 0;
        ret->rss_kb = (uint64_t) resident * (uint64_t) (page > 0 ? page : 4096) / 1024;
        return 0;
}
