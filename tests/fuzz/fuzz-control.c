/* fuzz-control: libFuzzer harness for the control socket's request lines:
 * control.c's framing (newline-delimited, CONTROL_LINE_MAX, pipelining,
 * batches, back-pressure), cJSON's parse of each line and commands.c's
 * checks of every argument, all real, on a real AF_UNIX connection and
 * libuv loop. Only the Manager behind commands.c is a stub (below): it
 * answers at once and never signals, spawns or re-executes anything.
 *
 * Each input is what one client writes on one connection, after which it
 * half-closes and reads until the master closes.
 *
 * Properties (docs/internals/control-protocol.md):
 *   - every reply line is one JSON object with a string "type", a result
 *     has a boolean "ok", and a failed one a string "error";
 *   - every non-empty complete request line gets exactly one result, in
 *     order, before the master closes (a half-closing client such as
 *     `printf ... | socat - UNIX:...` is a normal one);
 *   - the master answers within 5 s and closes after the client's EOF. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include "commands.h"
#include "control.h"
#include "fuzz.h"
#include "ipc-msg.h"
#include "ipc.h"
#include "log.h"
#include "manager.h"
#include "upgrade.h"

#define N_SLOTS 4
#define HANG_MS 5000

/* ---- the Manager, stubbed --------------------------------------------- */

static Manager manager;
static char fake_slots[N_SLOTS];
static Slot *slot_table[N_SLOTS];

unsigned manager_count_ready(const Manager *m) {
        return 0;
}
const char *slot_display_state(const Slot *s) {
        return "starting";
}
unsigned slot_id(const Slot *s) {
        return (unsigned) ((const char *) s - fake_slots);
}
unsigned slot_restarts(const Slot *s) {
        return 0;
}
Worker *slot_current(const Slot *s) {
        return NULL;    /* no process: nothing can be signalled */
}
const char *worker_state_to_string(WorkerState s) {
        return "stub";
}
/* commands.c shows a worker's unread hand-offs; there is no worker here. */
unsigned ipc_inflight(Ipc *ipc) {
        return 0;
}
void manager_reload(Manager *m, ControlConn *client) {
        control_reply_ok(client, NULL);
}
void manager_restart(Manager *m, int slot, ControlConn *client) {
        FUZZ_CHECK(slot >= -1 && slot < N_SLOTS, "restart of slot %d", slot);
        control_reply_ok(client, NULL);
}
int manager_scale(Manager *m, unsigned n) {
        FUZZ_CHECK(n >= 1 && n <= CORRAL_WORKERS_MAX, "scale to %u", n);
        return 0;
}
unsigned manager_fds_per_worker(const Manager *m) {
        return 3;
}
int manager_fd_room(const Manager *m, unsigned n, unsigned *ret_max, unsigned *ret_open) {
        *ret_max = 1024;
        *ret_open = 10;
        return 0;
}
unsigned messages_send(Messages *ms, int slot, const char *data, size_t len, pid_t *ret_pids) {
        FUZZ_CHECK(slot >= -1 && slot < N_SLOTS, "send to slot %d", slot);
        FUZZ_CHECK(len <= IPC_DATA_MAX, "send of %zu bytes", len);
        return 0;
}
int messages_follow(Messages *ms, ControlConn *c) {
        return -EBUSY;
}
const char *messages_kept(const Messages *ms, unsigned k) {
        return "{}";   /* never asked: nothing is kept here */
}
void upgrade_request(Manager *m, ControlConn *client) {
        control_reply_error(client, "no upgrade in a fuzzer");
}

/* ---- the client -------------------------------------------------------- */

static char socket_path[108];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
        static char dir[] = "/tmp/corral-fuzz-control-XXXXXX";
        char *error = NULL;
        Config *config = NULL;

        log_setup(LOG_TARGET_STDERR, "fuzz");
        log_set_max_priority(LOG_CRIT);    /* evictions, refusals: not findings */
        if (!mkdtemp(dir) ||
            config_build(&(ConfigOverrides) { .path = "fuzz.json", .text = "{\"exec\":[\"/bin/true\"]}" }, &config,
                         &error) < 0)
                abort();
        manager.pool.config = config;
        manager.start_config = config;
        manager.loop = uv_default_loop();
        for (unsigned i = 0; i < N_SLOTS; i++)
                slot_table[i] = (Slot *) &fake_slots[i];
        manager.slots = slot_table;
        manager.n_slots = N_SLOTS;
        snprintf(manager.status, sizeof(manager.status), "fuzzing");
        snprintf(socket_path, sizeof(socket_path), "%s/control", dir);
        if (control_server_start(&manager.control, manager.loop, socket_path, commands_dispatch, &manager) < 0)
                abort();
        return 0;
}

/* Check one reply line; returns whether it is a result. */
static bool check_reply(const char *line, size_t len) {
        cJSON *j = cJSON_ParseWithLength(line, len);
        FUZZ_CHECK(cJSON_IsObject(j), "reply \"%.*s\" is not a JSON object", (int) len, line);
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "type");
        FUZZ_CHECK(cJSON_IsString(type), "reply \"%.*s\" without a \"type\"", (int) len, line);
        bool result = strcmp(type->valuestring, "result") == 0;
        if (result) {
                const cJSON *ok = cJSON_GetObjectItemCaseSensitive(j, "ok");
                FUZZ_CHECK(cJSON_IsBool(ok), "result without \"ok\"");
                FUZZ_CHECK(cJSON_IsTrue(ok) || cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "error")),
                           "failed result without \"error\"");
        }
        cJSON_Delete(j);
        return result;
}

static uint64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        size_t sent = 0, in_len = 0, in_cap = 4096;
        char *in = malloc(in_cap);
        bool eof = false, shut = false;
        unsigned results = 0, requests = 0;

        /* What the master must answer: every non-empty line ended by '\n'. */
        for (size_t i = 0, start = 0; i < size; i++)
                if (data[i] == '\n') {
                        requests += i > start;
                        start = i + 1;
                }

        memcpy(sa.sun_path, socket_path, strlen(socket_path));
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        FUZZ_CHECK(fd >= 0 && in, "socket: %m");
        FUZZ_CHECK(connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0, "connect: %m");

        uint64_t last_progress = now_ms();
        while (!eof) {
                bool progress = false;
                if (sent < size) {
                        ssize_t n = send(fd, data + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
                        if (n > 0) {
                                sent += (size_t) n;
                                progress = true;
                        } else
                                FUZZ_CHECK(n == -1 && (errno == EAGAIN || errno == EPIPE || errno == ECONNRESET),
                                           "send: %m");
                        if (n == -1 && errno != EAGAIN)
                                sent = size;    /* the master closed on us; read what it said */
                }
                if (sent == size && !shut) {
                        shutdown(fd, SHUT_WR);
                        shut = true;
                }
                uv_run(manager.loop, UV_RUN_NOWAIT);
                for (;;) {
                        if (in_cap - in_len < 4096) {
                                in_cap *= 2;
                                in = realloc(in, in_cap);
                                FUZZ_CHECK(in, "out of memory");
                        }
                        ssize_t n = recv(fd, in + in_len, in_cap - in_len, MSG_DONTWAIT);
                        if (n == 0 || (n == -1 && errno == ECONNRESET)) {
                                eof = true;
                                break;
                        }
                        if (n < 0) {
                                FUZZ_CHECK(errno == EAGAIN, "recv: %m");
                                break;
                        }
                        in_len += (size_t) n;
                        progress = true;
                }
                if (progress)
                        last_progress = now_ms();
                else {
                        FUZZ_CHECK(now_ms() - last_progress < HANG_MS,
                                   "no progress for %d ms: %zu of %zu bytes taken, %zu bytes of replies", HANG_MS,
                                   sent, size, in_len);
                        struct pollfd p[2] = { { fd, POLLIN | (sent < size ? POLLOUT : 0), 0 },
                                               { uv_backend_fd(manager.loop), POLLIN, 0 } };
                        int t = uv_backend_timeout(manager.loop);
                        poll(p, 2, t < 0 || t > 100 ? 100 : t);
                }
        }
        close(fd);
        /* Let the master finish closing its side. */
        for (int i = 0; i < 4; i++)
                uv_run(manager.loop, UV_RUN_NOWAIT);

        size_t start = 0;
        for (size_t i = 0; i < in_len; i++)
                if (in[i] == '\n') {
                        results += check_reply(in + start, i - start);
                        start = i + 1;
                }
        FUZZ_CHECK(start == in_len, "a reply line without its newline");
        FUZZ_CHECK(results == requests, "%u results for %u requests; the replies:\n%.*s", results, requests,
                   (int) (in_len < 4000 ? in_len : 4000), in);
        free(in);
        return 0;
}
