/* log: corrald's logging sink. See log.h.
 *
 * Journal mode writes with sd_journal_sendv(), one datagram per event, with
 * SYSLOG_IDENTIFIER=corrald so `journalctl -u app` shows master events next
 * to worker output. Stderr mode writes whole lines with a single write(2)
 * so they never interleave with worker output on the same pipe. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

static LogTarget target = LOG_TARGET_STDERR;
static char instance[80] = "corral";
static int max_priority = LOG_INFO;

int log_target_from_string(const char *s) {
        if (streq_ptr(s, "auto"))
                return LOG_TARGET_AUTO;
        if (streq_ptr(s, "journal"))
                return LOG_TARGET_JOURNAL;
        if (streq_ptr(s, "stderr"))
                return LOG_TARGET_STDERR;
        return -EINVAL;
}

/* JOURNAL_STREAM is "DEVICE:INODE" of the stream systemd connected to our
 * stdout/stderr (systemd.exec(5)); it only counts if stderr is still it. */
static bool stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;
        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return false;
        if (fstat(STDERR_FILENO, &st) == -1)
                return false;
        return st.st_dev == dev && st.st_ino == ino;
}

void log_setup(LogTarget t, const char *inst) {
        if (t == LOG_TARGET_AUTO)
                t = stderr_is_journal() ? LOG_TARGET_JOURNAL : LOG_TARGET_STDERR;
        target = t;
        if (inst)
                log_set_instance(inst);
        if (getenv("CORRAL_DEBUG"))
                max_priority = LOG_DEBUG;
}

void log_set_instance(const char *inst) {
        snprintf(instance, sizeof(instance), "%s", inst);
}

LogTarget log_get_target(void) {
        return target;
}

void log_set_max_priority(int prio) {
        max_priority = prio;
}

void log_emit(int prio, const LogFields *f, const char *fmt, ...) {
        char msg[2048];
        int saved = errno;
        va_list ap;

        if (prio > max_priority)
                return;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);

        if (target == LOG_TARGET_STDERR) {
                char line[2200];
                int n = snprintf(line, sizeof(line), "corrald[%s]: %s\n", instance, msg);
                if (n > (int) sizeof(line) - 1) {
                        n = (int) sizeof(line) - 1;
                        line[n - 1] = '\n';
                }
                (void) !write(STDERR_FILENO, line, (size_t) n);
                errno = saved;
                return;
        }

        char b_msg[2100], b_prio[16], b_inst[100], b_event[48], b_id[32], b_pid[40], b_gen[40], b_exit[40],
                b_sig[40];
        struct iovec iov[10];
        unsigned n = 0;

#define ADD(buf, ...)                                                        \
        do {                                                                 \
                int _l = snprintf(buf, sizeof(buf), __VA_ARGS__);            \
                iov[n++] = (struct iovec) { buf, (size_t) MIN(_l, (int) sizeof(buf) - 1) }; \
        } while (0)

        ADD(b_msg, "MESSAGE=%s", msg);
        ADD(b_prio, "PRIORITY=%d", prio);
        iov[n++] = (struct iovec) { (char *) "SYSLOG_IDENTIFIER=corrald", strlen("SYSLOG_IDENTIFIER=corrald") };
        ADD(b_inst, "CORRAL_INSTANCE=%s", instance);
        if (f) {
                if (f->event)
                        ADD(b_event, "CORRAL_EVENT=%s", f->event);
                if (f->worker_id >= 0)
                        ADD(b_id, "CORRAL_WORKER_ID=%d", f->worker_id);
                if (f->pid > 0)
                        ADD(b_pid, "CORRAL_WORKER_PID=%d", (int) f->pid);
                if (f->generation > 0)
                        ADD(b_gen, "CORRAL_GENERATION=%u", f->generation);
                if (f->exit_status >= 0)
                        ADD(b_exit, "CORRAL_EXIT_STATUS=%d", f->exit_status);
                if (f->signal > 0)
                        ADD(b_sig, "CORRAL_SIGNAL=%s", signal_to_string(f->signal));
        }
#undef ADD
        (void) sd_journal_sendv(iov, (int) n);
        errno = saved;
}
