/* cmd-status: "status" (alias "ls") and "top".
 *
 * Both render the same status result (control-protocol.md, status): a few
 * header lines and a table with one row per slot, then the workers that
 * are starting or leaving outside the slots. The last column is each
 * worker's STATUS= text, cut to the terminal's width on a terminal (whole
 * otherwise). status computes CPU% over each worker's lifetime; top keeps
 * the previous sample and computes it over the last interval, matching
 * workers by pid. On a terminal top owns it while it runs: alternate
 * screen, no echo, no canonical mode, all restored before it returns. On
 * anything else (a pipe, a file) it prints plain frames, one unless -n
 * says how many, and dies of SIGPIPE like any filter when the reader goes. */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "ctl.h"
#include "table.h"
#include "util.h"

static const char *format_rss(char *buf, size_t n, int64_t kb) {
        if (kb < 1024)
                snprintf(buf, n, "%lldK", (long long) kb);
        else if (kb < 1024 * 1024)
                snprintf(buf, n, "%.1fM", (double) kb / 1024.0);
        else
                snprintf(buf, n, "%.1fG", (double) kb / (1024.0 * 1024.0));
        return buf;
}

/* The entry of prev's slots or leaving workers with this pid, or NULL. */
static const cJSON *find_pid(const cJSON *prev, int64_t pid) {
        static const char *lists[] = { "slots", "incoming", "leaving" };
        for (size_t l = 0; prev && l < ELEMENTSOF(lists); l++) {
                const cJSON *e;
                cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(prev, lists[l])) {
                        int64_t p;
                        if (ctl_json_int(e, "pid", &p) && p == pid)
                                return e;
                }
        }
        return NULL;
}

/* CPU% of worker w: over the interval since its entry in prev when there
 * is one, else over its lifetime. NULL cell ("-") when unknown. */
static const char *format_cpu(char *buf, size_t n, const cJSON *w, const cJSON *prev) {
        int64_t cpu, up, pid, cpu0, up0;
        if (!ctl_json_int(w, "cpu_ms", &cpu) || !ctl_json_int(w, "uptime_ms", &up))
                return NULL;
        const cJSON *p = ctl_json_int(w, "pid", &pid) ? find_pid(prev, pid) : NULL;
        if (p && ctl_json_int(p, "cpu_ms", &cpu0) && ctl_json_int(p, "uptime_ms", &up0) && up > up0 &&
            cpu >= cpu0) {
                cpu -= cpu0;
                up -= up0;
        }
        if (up <= 0 || cpu < 0)
                return NULL;
        snprintf(buf, n, "%.1f", (double) cpu * 100.0 / (double) up);
        return buf;
}

static const char *format_int(char *buf, size_t n, const cJSON *o, const char *key) {
        int64_t v;
        if (!ctl_json_int(o, key, &v))
                return NULL;
        snprintf(buf, n, "%lld", (long long) v);
        return buf;
}

static int add_worker_row(Table *t, const cJSON *w, const cJSON *prev) {
        char b[9][64];
        int64_t v;
        const char *state = ctl_json_str(w, "state");
        const char *cells[] = {
                format_int(b[0], sizeof(b[0]), w, "id"),
                format_int(b[1], sizeof(b[1]), w, "pid"),
                format_int(b[2], sizeof(b[2]), w, "generation"),
                state,
                ctl_json_int(w, "uptime_ms", &v) && v >= 0 ?
                        format_duration(b[4], sizeof(b[4]), (uint64_t) v * USEC_PER_MSEC) : NULL,
                format_int(b[5], sizeof(b[5]), w, "restarts"),
                format_cpu(b[6], sizeof(b[6]), w, prev),
                ctl_json_int(w, "rss_kb", &v) && v >= 0 ? format_rss(b[7], sizeof(b[7]), v) : NULL,
                format_int(b[8], sizeof(b[8]), w, "connections"),
                ctl_json_str(w, "status"),
        };
        for (size_t i = 0; i < ELEMENTSOF(cells); i++) {
                int r = table_add(t, cells[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* The width of the terminal on fd, or 0 (no limit) when fd is not one. */
static size_t terminal_width(int fd) {
        struct winsize ws;
        if (!isatty(fd) || ioctl(fd, TIOCGWINSZ, &ws) == -1 || ws.ws_col == 0)
                return 0;
        return ws.ws_col;
}

static int print_workers(FILE *f, const cJSON *list, const cJSON *prev, size_t width) {
        static const char *headers[] = { "SLOT", "PID", "GEN", "STATE", "UPTIME", "RESTARTS", "CPU%", "RSS", "CONNS",
                                         "STATUS" };
        _cleanup_table_free_ Table *t = table_new(ELEMENTSOF(headers), headers);
        const cJSON *w;
        int r;

        if (!t)
                return -ENOMEM;
        for (size_t i = 0; i < ELEMENTSOF(headers); i++)
                table_set_right(t, i, i != 3 && i != 9);
        table_set_max_width(t, width);
        const cJSON *array = cJSON_IsArray(list) ? list : NULL;
        cJSON_ArrayForEach(w, array)
                if (cJSON_IsObject(w) && (r = add_worker_row(t, w, prev)) < 0)
                        return r;
        return table_print(t, f);
}

/* Print a header field, replacing control characters like table.c does. */
static void field(FILE *f, const char *label, const char *value) {
        fprintf(f, "%-12s", label);
        for (const char *p = value ? value : "-"; *p; p++)
                fputc((unsigned char) *p < 0x20 || *p == 0x7f ? '?' : *p, f);
        fputc('\n', f);
}

/* Render a status result; prev (or NULL) is the previous sample for top;
 * width (0: none) limits the tables' lines. */
static int render(FILE *f, const cJSON *res, const cJSON *prev, size_t width) {
        char b[128], d[32];
        int64_t pid, up, ready, workers;
        const cJSON *l;

        field(f, "Instance:", ctl_json_str(res, "instance"));
        if (ctl_json_int(res, "pid", &pid)) {
                const char *v = ctl_json_str(res, "version");
                snprintf(b, sizeof(b), "%lld (corrald %s%s%s)", (long long) pid, v ? v : "?",
                         ctl_json_int(res, "uptime_ms", &up) && up >= 0 ? ", up " : "",
                         ctl_json_int(res, "uptime_ms", &up) && up >= 0 ?
                                 format_duration(d, sizeof(d), (uint64_t) up * USEC_PER_MSEC) : "");
                field(f, "PID:", b);
        } else
                field(f, "PID:", NULL);
        /* The IPC dialect only when it is not corral's own. */
        const char *balance = ctl_json_str(res, "balance"), *ipc = ctl_json_str(res, "ipc");
        _cleanup_free_ char *bal = NULL;
        if (balance && ipc && strcmp(ipc, "corral") != 0 && asprintf(&bal, "%s (ipc %s)", balance, ipc) < 0)
                bal = NULL;
        field(f, "Balance:", bal ? bal : balance);

        _cleanup_free_ char *ls = NULL;
        size_t lsn = 0;
        FILE *m = open_memstream(&ls, &lsn);
        if (!m)
                return -ENOMEM;
        cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(res, "listeners")) {
                const char *name = ctl_json_str(l, "name"), *addr = ctl_json_str(l, "address");
                fprintf(m, "%s%s%s%s", ftell(m) > 0 ? ", " : "", name ? name : "", name ? "=" : "", addr ? addr : "?");
        }
        if (fclose(m) != 0)
                return -ENOMEM;
        field(f, "Listeners:", lsn > 0 ? ls : NULL);
        field(f, "Generation:", format_int(b, sizeof(b), res, "generation"));
        const cJSON *dr = cJSON_GetObjectItemCaseSensitive(res, "draining");
        if (cJSON_IsTrue(dr) && ctl_json_str(res, "state")) {
                snprintf(b, sizeof(b), "%s, draining (corralctl undrain ends it)", ctl_json_str(res, "state"));
                field(f, "State:", b);
        } else
                field(f, "State:", ctl_json_str(res, "state"));
        int64_t in_file;
        if (ctl_json_int(res, "ready", &ready) && ctl_json_int(res, "workers", &workers)) {
                if (ctl_json_int(res, "workers_config", &in_file))
                        snprintf(b, sizeof(b), "%lld/%lld ready (scaled; config: %lld)", (long long) ready,
                                 (long long) workers, (long long) in_file);
                else
                        snprintf(b, sizeof(b), "%lld/%lld ready", (long long) ready, (long long) workers);
                field(f, "Workers:", b);
        }
        field(f, "Status:", ctl_json_str(res, "status"));
        fputc('\n', f);

        int r = print_workers(f, cJSON_GetObjectItemCaseSensitive(res, "slots"), prev, width);
        if (r < 0)
                return r;
        /* Workers outside the slot table: a rollout's new workers not yet
         * ready ("incoming", reported by corrald beyond the protocol
         * document) and old ones on their way out. */
        static const char *extra[][2] = { { "incoming", "Starting" }, { "leaving", "Leaving" } };
        for (size_t i = 0; r >= 0 && i < ELEMENTSOF(extra); i++) {
                const cJSON *list = cJSON_GetObjectItemCaseSensitive(res, extra[i][0]);
                if (cJSON_IsArray(list) && cJSON_GetArraySize(list) > 0) {
                        fprintf(f, "\n%s:\n", extra[i][1]);
                        r = print_workers(f, list, prev, width);
                }
        }
        return r;
}

int cmd_status(Ctl *ctl, char **args) {
        if (args[0])
                return ctl_usage_error("status takes no arguments, got \"%s\"", args[0]);

        cJSON *req = ctl_new_request("status"), *res = NULL;
        if (!req)
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        int r = ctl_request(ctl, req, CTL_TIMEOUT_USEC, NULL, NULL, &res);
        cJSON_Delete(req);
        if (r != 0)
                return r;
        if (ctl->json)
                ctl_print_json(res);
        else if (render(stdout, res, NULL, terminal_width(STDOUT_FILENO)) < 0)
                r = ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        cJSON_Delete(res);
        return r;
}

/* top */

static volatile sig_atomic_t top_quit;

static void on_quit_signal(int sig) {
        top_quit = sig;
}

typedef struct TopTerm {
        bool screen;            /* stdout is a terminal: alternate screen in use */
        bool raw;               /* stdin's termios changed */
        struct termios saved;
} TopTerm;

static void top_term_restore(TopTerm *t) {
        if (t->raw)
                (void) tcsetattr(STDIN_FILENO, TCSAFLUSH, &t->saved);
        if (t->screen) {
                /* Show the cursor, leave the alternate screen. */
                fputs("\033[?25h\033[?1049l", stdout);
                fflush(stdout);
        }
        t->raw = t->screen = false;
}

static void top_term_setup(TopTerm *t) {
        if (!isatty(STDOUT_FILENO))
                return;
        t->screen = true;
        fputs("\033[?1049h\033[?25l", stdout);
        fflush(stdout);
        if (isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &t->saved) == 0) {
                struct termios raw = t->saved;
                /* Keep ISIG so Ctrl-C still raises SIGINT, which we catch. */
                raw.c_lflag &= ~(tcflag_t) (ICANON | ECHO);
                raw.c_cc[VMIN] = 0;
                raw.c_cc[VTIME] = 0;
                t->raw = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
        }
}

/* Wait until deadline for a key; true when the user asked to quit. */
static bool top_wait(const TopTerm *t, uint64_t deadline) {
        while (!top_quit) {
                uint64_t now = now_usec();
                if (now >= deadline)
                        return false;
                struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
                int n = poll(&p, t->raw ? 1 : 0, (int) ((deadline - now + 999) / 1000));
                if (n > 0) {
                        char c[16];
                        ssize_t k = read(STDIN_FILENO, c, sizeof(c));
                        if (k > 0 && (memchr(c, 'q', (size_t) k) || memchr(c, 'Q', (size_t) k)))
                                return true;
                        if (k == 0) /* the terminal went away */
                                return true;
                }
        }
        return true;
}

/* Write one frame. Returns 0, -ENOMEM, or -errno of a failed write. */
static int top_frame(Ctl *ctl, const TopTerm *t, const cJSON *res, const cJSON *prev) {
        _cleanup_free_ char *buf = NULL;
        size_t n = 0;
        FILE *f = open_memstream(&buf, &n);
        if (!f)
                return -ENOMEM;
        if (ctl->json) {
                _cleanup_free_ char *s = cJSON_PrintUnformatted(res);
                fprintf(f, "%s\n", s ? s : "{}");
        } else {
                if (t->screen)
                        fputs("\033[H\033[2J", f); /* home, clear */
                (void) render(f, res, prev, terminal_width(STDOUT_FILENO));
                if (t->screen)
                        fputs("\nPress q to quit.", f);
                else
                        fputc('\n', f);
        }
        if (fclose(f) != 0)
                return -ENOMEM;
        if (fwrite(buf, 1, n, stdout) != n || fflush(stdout) != 0)
                return errno > 0 ? -errno : -EIO;
        return 0;
}

int cmd_top(Ctl *ctl, char **args) {
        _cleanup_client_free_ Client *c = NULL;
        _cleanup_json_ cJSON *req = NULL, *prev = NULL, *failed = NULL;
        TopTerm term = {};
        uint64_t frames = 0; /* 0: until q or a signal */
        int r, w = 0;

        if (args[0])
                return ctl_usage_error("top takes no arguments, got \"%s\"", args[0]);
        if (ctl->lines && (parse_u64(ctl->lines, &frames) < 0 || frames == 0))
                return ctl_usage_error("top -n: expected a number of frames >= 1, got \"%s\"", ctl->lines);
        if (!isatty(STDOUT_FILENO)) {
                /* Not a screen to redraw: print frames like a filter, one
                 * unless -n asks for more, and stop when the reader is gone
                 * ("corralctl top | head"): main() ignores SIGPIPE for the
                 * control socket, whose writes use MSG_NOSIGNAL anyway. */
                if (frames == 0)
                        frames = 1;
                signal(SIGPIPE, SIG_DFL);
        }
        r = ctl_connect(ctl, &c);
        if (r != 0)
                return r;
        req = ctl_new_request("status");
        if (!req)
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");

        /* No SA_RESTART: a signal must interrupt poll() at once. */
        struct sigaction sa = { .sa_handler = on_quit_signal }, old[3];
        static const int sigs[] = { SIGINT, SIGTERM, SIGHUP };
        for (size_t i = 0; i < ELEMENTSOF(sigs); i++)
                sigaction(sigs[i], &sa, &old[i]);
        client_set_interrupt(c, &top_quit);
        top_term_setup(&term);

        for (uint64_t shown = 0;;) {
                uint64_t next = now_usec() + USEC_PER_SEC;
                cJSON *res = NULL;
                r = client_call(c, req, 5 * USEC_PER_SEC, NULL, NULL, &res);
                if (r < 0)
                        break;
                if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(res, "ok"))) {
                        failed = res;
                        break;
                }
                w = top_frame(ctl, &term, res, prev);
                cJSON_Delete(prev);
                prev = res;
                if (w < 0 || (frames > 0 && ++shown >= frames) || top_wait(&term, next))
                        break;
        }
        /* Report only after leaving the alternate screen, where a message
         * would vanish with it. */
        top_term_restore(&term);
        for (size_t i = 0; i < ELEMENTSOF(sigs); i++)
                sigaction(sigs[i], &old[i], NULL);
        if (top_quit)
                return CTL_EXIT_OK;
        if (failed) {
                const char *e = ctl_json_str(failed, "error");
                return ctl_error(CTL_EXIT_FAILED, "%s", e ? e : "operation failed (no reason given)");
        }
        if (r == -ENOMEM || w == -ENOMEM)
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        /* EPIPE only when SIGPIPE is blocked: it kills us otherwise. */
        if (w < 0)
                return ctl_error(CTL_EXIT_FAILED, "cannot write to standard output: %s", strerror(-w));
        if (r < 0)
                return ctl_client_error(ctl->path, ctl->name, r);
        return CTL_EXIT_OK;
}
