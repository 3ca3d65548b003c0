/* util: small pure helpers used across corral. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "util.h"

char **strv_free(char **l) {
        if (l) {
                for (char **i = l; *i; i++)
                        free(*i);
                free(l);
        }
        return NULL;
}

size_t strv_length(char * const *l) {
        size_t n = 0;
        if (l)
                while (l[n])
                        n++;
        return n;
}

int strv_push(char ***l, char *s) {
        size_t n = strv_length(*l);
        char **nl = realloc(*l, (n + 2) * sizeof(char *));
        if (!nl)
                return -ENOMEM;
        nl[n] = s;
        nl[n + 1] = NULL;
        *l = nl;
        return 0;
}

int strv_extend(char ***l, const char *s) {
        char *c = strdup(s);
        if (!c)
                return -ENOMEM;
        int r = strv_push(l, c);
        if (r < 0)
                free(c);
        return r;
}

int strv_extendf(char ***l, const char *fmt, ...) {
        char *s;
        va_list ap;
        va_start(ap, fmt);
        int k = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (k < 0)
                return -ENOMEM;
        int r = strv_push(l, s);
        if (r < 0)
                free(s);
        return r;
}

char **strv_copy(char * const *l) {
        char **c = calloc(strv_length(l) + 1, sizeof(char *));
        if (!c)
                return NULL;
        for (size_t i = 0; l && l[i]; i++) {
                c[i] = strdup(l[i]);
                if (!c[i])
                        return strv_free(c);
        }
        return c;
}

bool streq_ptr(const char *a, const char *b) {
        if (!a || !b)
                return a == b;
        return strcmp(a, b) == 0;
}

const char *str_escape(const char *s, char *buf, size_t n) {
        size_t o = 0;
        if (n == 0)
                return buf;
        for (const unsigned char *p = (const unsigned char *) s; *p && o + 1 < n; p++) {
                if (*p >= 0x20 && *p < 0x7f && *p != '\\')
                        buf[o++] = (char) *p;
                else if (o + 4 < n)
                        o += (size_t) snprintf(buf + o, n - o, "\\x%02x", *p);
                else
                        break;
        }
        buf[o] = 0;
        return buf;
}

static const struct {
        int sig;
        const char *name;
} signal_names[] = {
        { SIGHUP, "HUP" },   { SIGINT, "INT" },   { SIGQUIT, "QUIT" },   { SIGILL, "ILL" },
        { SIGTRAP, "TRAP" }, { SIGABRT, "ABRT" }, { SIGBUS, "BUS" },     { SIGFPE, "FPE" },
        { SIGKILL, "KILL" }, { SIGUSR1, "USR1" }, { SIGSEGV, "SEGV" },   { SIGUSR2, "USR2" },
        { SIGPIPE, "PIPE" }, { SIGALRM, "ALRM" }, { SIGTERM, "TERM" },   { SIGSTKFLT, "STKFLT" },
        { SIGCHLD, "CHLD" }, { SIGCONT, "CONT" }, { SIGSTOP, "STOP" },   { SIGTSTP, "TSTP" },
        { SIGTTIN, "TTIN" }, { SIGTTOU, "TTOU" }, { SIGURG, "URG" },     { SIGXCPU, "XCPU" },
        { SIGXFSZ, "XFSZ" }, { SIGVTALRM, "VTALRM" }, { SIGPROF, "PROF" }, { SIGWINCH, "WINCH" },
        { SIGIO, "IO" },     { SIGPWR, "PWR" },   { SIGSYS, "SYS" },
};

int parse_signal(const char *s) {
        if (!s || !*s)
                return -EINVAL;
        if (*s >= '0' && *s <= '9') {
                uint64_t v;
                if (parse_u64(s, &v) < 0 || v < 1 || v > (uint64_t) SIGRTMAX)
                        return -EINVAL;
                return (int) v;
        }
        if (startswith(s, "SIG"))
                s += 3;
        for (size_t i = 0; i < ELEMENTSOF(signal_names); i++)
                if (strcmp(s, signal_names[i].name) == 0)
                        return signal_names[i].sig;
        return -EINVAL;
}

int kill_process(pid_t pid, int sig, bool group) {
        if (pid <= 1)
                return -EINVAL;
        int r = 0;
        if (group && kill(-pid, sig) == -1)
                r = -errno;
        if (kill(pid, sig) == -1)
                r = -errno;
        return r;
}

const char *signal_to_string(int sig) {
        static const char *full[] = {
                [SIGHUP] = "SIGHUP",   [SIGINT] = "SIGINT",   [SIGQUIT] = "SIGQUIT", [SIGILL] = "SIGILL",
                [SIGTRAP] = "SIGTRAP", [SIGABRT] = "SIGABRT", [SIGBUS] = "SIGBUS",   [SIGFPE] = "SIGFPE",
                [SIGKILL] = "SIGKILL", [SIGUSR1] = "SIGUSR1", [SIGSEGV] = "SIGSEGV", [SIGUSR2] = "SIGUSR2",
                [SIGPIPE] = "SIGPIPE", [SIGALRM] = "SIGALRM", [SIGTERM] = "SIGTERM", [SIGSTKFLT] = "SIGSTKFLT",
                [SIGCHLD] = "SIGCHLD", [SIGCONT] = "SIGCONT", [SIGSTOP] = "SIGSTOP", [SIGTSTP] = "SIGTSTP",
                [SIGTTIN] = "SIGTTIN", [SIGTTOU] = "SIGTTOU", [SIGURG] = "SIGURG",   [SIGXCPU] = "SIGXCPU",
                [SIGXFSZ] = "SIGXFSZ", [SIGVTALRM] = "SIGVTALRM", [SIGPROF] = "SIGPROF", [SIGWINCH] = "SIGWINCH",
                [SIGIO] = "SIGIO",     [SIGPWR] = "SIGPWR",   [SIGSYS] = "SIGSYS",
        };
        if (sig > 0 && (size_t) sig < ELEMENTSOF(full) && full[sig])
                return full[sig];
        if (sig >= SIGRTMIN && sig <= SIGRTMAX)
                return "SIGRT";
        return "SIG?";
}

int parse_u64(const char *s, uint64_t *ret) {
        if (!s || !*s)
                return -EINVAL;
        uint64_t v = 0;
        for (const char *p = s; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                unsigned d = (unsigned) (*p - '0');
                if (v > (UINT64_MAX - d) / 10)
                        return -ERANGE;
                v = v * 10 + d;
        }
        *ret = v;
        return 0;
}

uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

const char *format_duration(char *buf, size_t n, uint64_t usec) {
        uint64_t s = usec / USEC_PER_SEC;
        if (s >= 86400)
                snprintf(buf, n, "%llud%02lluh", (unsigned long long) (s / 86400),
                         (unsigned long long) (s % 86400 / 3600));
        else if (s >= 3600)
                snprintf(buf, n, "%lluh%02llum", (unsigned long long) (s / 3600),
                         (unsigned long long) (s % 3600 / 60));
        else if (s >= 60)
                snprintf(buf, n, "%llum%02llus", (unsigned long long) (s / 60), (unsigned long long) (s % 60));
        else
                snprintf(buf, n, "%llus", (unsigned long long) s);
        return buf;
}
