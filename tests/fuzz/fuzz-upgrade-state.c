/* fuzz-upgrade-state: libFuzzer harness for the upgrade state reader
 * (src/corrald/upgrade-state.c): what a new corrald reads from
 * CORRALD_UPGRADE_STATE_FD, which whoever starts corrald controls.
 *
 * Properties, from upgrade-state.h: a refusal is -EBADMSG with a message,
 * -EPROTONOSUPPORT or -ENOMEM, and leaves nothing allocated; a state that
 * is read has every field in range (no pid <= 1, known enums, fds -1 or
 * >= 3, slot ids below the slot count) and survives a write and a second
 * read unchanged; the envelope of anything never yields a pid <= 1 or an
 * fd below 3. */
#include <errno.h>

#include "fuzz.h"
#include "upgrade-state.h"

static void check_fd(int fd, const char *what) {
        FUZZ_CHECK(fd == -1 || fd >= 3, "%s fd %d", what, fd);
}

static void check_state(const UpgradeState *s) {
        FUZZ_CHECK(s->version >= 1 && s->version <= UPGRADE_STATE_VERSION, "version %d", s->version);
        FUZZ_CHECK(s->generation >= 1, "generation %u", s->generation);
        FUZZ_CHECK((unsigned) s->balance < _BALANCE_MAX, "balance %d", s->balance);
        FUZZ_CHECK(s->n_slots >= 1 && s->n_slots <= CORRAL_WORKERS_MAX, "%u slots", s->n_slots);
        FUZZ_CHECK(s->recycle_next < s->n_slots, "recycle_next %u", s->recycle_next);
        check_fd(s->notify_fd, "notify");
        check_fd(s->control_fd, "control");
        check_fd(s->reply_fd, "reply");
        for (unsigned i = 0; i < s->n_waiter_fds; i++)
                FUZZ_CHECK(s->waiter_fds[i] >= 3, "waiter fd %d", s->waiter_fds[i]);
        for (unsigned i = 0; i < s->n_clients; i++)
                FUZZ_CHECK(s->clients[i].fd >= 3, "client fd %d", s->clients[i].fd);
        for (unsigned i = 0; i < s->n_listeners; i++)
                FUZZ_CHECK(s->listeners[i].fd >= 3 && s->listeners[i].name && s->listeners[i].display, "listener %u",
                           i);
        for (unsigned i = 0; i < s->n_slots; i++) {
                FUZZ_CHECK(s->slots[i].id < s->n_slots, "slot id %u", s->slots[i].id);
                FUZZ_CHECK((unsigned) s->slots[i].state < _SLOT_STATE_MAX && s->slots[i].state != SLOT_REMOVED,
                           "slot state %d", s->slots[i].state);
        }
        for (unsigned i = 0; i < s->n_workers; i++) {
                const UpgradeWorker *w = &s->workers[i];
                FUZZ_CHECK(w->pid >= 2, "worker pid %d", w->pid);
                FUZZ_CHECK(w->slot < s->n_slots, "worker slot %u", w->slot);
                FUZZ_CHECK((unsigned) w->state < WORKER_EXITED, "worker state %d", w->state);
                FUZZ_CHECK((unsigned) w->role <= WORKER_LEAVING, "worker role %d", w->role);
                FUZZ_CHECK(w->generation >= 1 && w->generation <= s->generation, "worker generation %u",
                           w->generation);
                FUZZ_CHECK(w->status, "worker status");
                check_fd(w->ipc_fd, "ipc");
                check_fd(w->output_fd, "output");
        }
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
        char *text = fuzz_memdup(data, size);
        UpgradeState s, again, env;
        char error[300];

        int r = upgrade_state_parse(text, size, &s, error, sizeof(error));
        if (r < 0) {
                FUZZ_CHECK(r == -EBADMSG || r == -EPROTONOSUPPORT || r == -ENOMEM, "r=%d", r);
                FUZZ_CHECK(r != -EBADMSG || error[0], "-EBADMSG without a message");
                FUZZ_CHECK(!s.workers && !s.slots && !s.listeners, "a refused state keeps records");
        } else {
                check_state(&s);
                /* What a corrald writes of it, another reads the same. */
                char *out = upgrade_state_format(&s);
                FUZZ_CHECK(out, "cannot write a state it read");
                r = upgrade_state_parse(out, strlen(out), &again, error, sizeof(error));
                FUZZ_CHECK(r == 0, "its own output refused: %s", error);
                char *out2 = upgrade_state_format(&again);
                FUZZ_CHECK(out2 && strcmp(out, out2) == 0, "a second round trip differs");
                free(out);
                free(out2);
                upgrade_state_done(&again);
                upgrade_state_done(&s);
        }

        if (upgrade_state_parse_envelope(text, size, &env) >= 0) {
                for (unsigned i = 0; i < env.n_workers; i++) {
                        FUZZ_CHECK(env.workers[i].pid == 0 || env.workers[i].pid >= 2, "envelope pid %d",
                                   env.workers[i].pid);
                        check_fd(env.workers[i].ipc_fd, "envelope ipc");
                        check_fd(env.workers[i].output_fd, "envelope output");
                }
                for (unsigned i = 0; i < env.n_listeners; i++)
                        check_fd(env.listeners[i].fd, "envelope listener");
                check_fd(env.notify_fd, "envelope notify");
                check_fd(env.control_fd, "envelope control");
                upgrade_state_done(&env);
        }
        free(text);
        return 0;
}
