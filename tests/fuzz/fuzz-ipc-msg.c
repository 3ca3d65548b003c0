/* fuzz-ipc-msg: libFuzzer harness for the IPC line scanner
 * (src/proto/ipc-msg.c): every line a worker writes to CORRAL_IPC_FD is
 * parsed by ipc_msg_parse_worker_line() in the master, every line the
 * master writes is parsed by ipc_msg_parse_master_line() in libcorral.
 *
 * Properties, from ipc-msg.h:
 *   - reads stay inside the line (an exact-size copy, so ASan sees more);
 *   - a failure is -EINVAL or -E2BIG, with a reason;
 *   - an accepted message's data lies inside the line (or is "null"), is
 *     one valid JSON value, and a worker's is at most IPC_DATA_MAX;
 *   - a worker's message can always be forwarded: formatting it "from" its
 *     slot into data_len + IPC_MSG_OVERHEAD bytes succeeds (messages.c's
 *     route() relies on that), the result parses as a master line, and
 *     re-formatting that gives the same line (the compaction is stable);
 *   - a worker can always re-send it (ipc_msg_format_to, as corral_send()
 *     does), to the same peer;
 *   - a close report round-trips through ipc_msg_format_closed(), an
 *     fd-limit report through ipc_msg_format_fd_limit();
 *   - a notify line's text lies inside the line and decodes, measured and
 *     written alike, to at most IPC_NOTIFY_TEXT_MAX bytes;
 *   - a Node line's cmd lies inside the line and starts with NODE_. */
#include <errno.h>

#include "fuzz.h"
#include "ipc-msg.h"

static void check_message(const char *line, size_t len, const IpcMessage *m, bool worker) {
        FUZZ_CHECK(m->data, "no data");
        bool inside = m->data >= line && m->data + m->data_len <= line + len;
        bool null = m->data_len == 4 && memcmp(m->data, "null", 4) == 0;
        FUZZ_CHECK(inside || null, "data outside the line");
        FUZZ_CHECK(ipc_json_validate(m->data, m->data_len, NULL) == 0, "data is not one JSON value");
        FUZZ_CHECK(m->peer != IPC_PEER_SLOT || m->slot <= IPC_SLOT_MAX, "slot %u", m->slot);
        if (worker)
                FUZZ_CHECK(m->data_len <= IPC_DATA_MAX, "worker data of %zu bytes", m->data_len);
}

static void check_forward(const IpcMessage *m) {
        size_t cap = m->data_len + IPC_MSG_OVERHEAD;
        char *a = malloc(cap), *b = malloc(cap);
        if (!a || !b)
                abort();

        /* The master forwards it, from the highest slot (the longest head). */
        ssize_t k = ipc_msg_format_from(a, cap, IPC_PEER_SLOT, IPC_SLOT_MAX, m->data, m->data_len);
        FUZZ_CHECK(k > 0 && (size_t) k < cap && (size_t) k <= IPC_LINE_MAX, "forwarding: %zd", k);
        IpcMessage f;
        const char *reason = NULL;
        FUZZ_CHECK(ipc_msg_parse_master_line(a, (size_t) k, &f, &reason) == 0,
                   "the master's own line \"%s\" is refused: %s", a, reason);
        FUZZ_CHECK(f.type == IPC_MSG_MESSAGE && f.peer == IPC_PEER_SLOT && f.slot == IPC_SLOT_MAX, "peer changed");
        ssize_t k2 = ipc_msg_format_from(b, cap, IPC_PEER_SLOT, IPC_SLOT_MAX, f.data, f.data_len);
        FUZZ_CHECK(k2 == k && memcmp(a, b, (size_t) k) == 0, "compaction not stable: \"%s\" vs \"%s\"", a, b);

        /* The worker sends it again, to the same peer. */
        k = ipc_msg_format_to(a, cap, m->peer, m->slot, m->data, m->data_len);
        FUZZ_CHECK(k > 0, "re-sending: %zd", k);
        FUZZ_CHECK(ipc_msg_parse_worker_line(a, (size_t) k, &f, &reason) == 0, "re-sent \"%s\" refused: %s", a,
                   reason);
        FUZZ_CHECK(f.type == IPC_MSG_MESSAGE && f.peer == m->peer && (f.peer != IPC_PEER_SLOT || f.slot == m->slot),
                   "re-sent to another peer");
        free(a);
        free(b);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
        char *line = fuzz_memdup(data, size);
        IpcMessage m;
        const char *reason;
        int r;

        (void) ipc_json_validate(line, size, NULL);

        reason = NULL;
        r = ipc_msg_parse_worker_line(line, size, &m, &reason);
        if (r < 0) {
                FUZZ_CHECK(r == -EINVAL || r == -E2BIG, "r=%d", r);
                FUZZ_CHECK(reason && *reason, "a failure without a reason");
        } else if (m.type == IPC_MSG_CLOSED) {
                FUZZ_CHECK(m.n_closed >= 1 && m.n_closed <= IPC_CLOSED_MAX, "n=%u", m.n_closed);
                char buf[64];
                ssize_t k = ipc_msg_format_closed(buf, sizeof(buf), m.n_closed);
                IpcMessage c;
                FUZZ_CHECK(k > 0 && ipc_msg_parse_worker_line(buf, (size_t) k, &c, NULL) == 0 &&
                                   c.type == IPC_MSG_CLOSED && c.n_closed == m.n_closed,
                           "close report of %u does not round-trip", m.n_closed);
        } else if (m.type == IPC_MSG_FD_LIMIT) {
                FUZZ_CHECK(m.n_lost >= 1 && m.n_lost <= IPC_CLOSED_MAX, "n=%u", m.n_lost);
                char buf[64];
                ssize_t k = ipc_msg_format_fd_limit(buf, sizeof(buf), m.n_lost);
                IpcMessage c;
                FUZZ_CHECK(k > 0 && ipc_msg_parse_worker_line(buf, (size_t) k, &c, NULL) == 0 &&
                                   c.type == IPC_MSG_FD_LIMIT && c.n_lost == m.n_lost,
                           "fd-limit report of %u does not round-trip", m.n_lost);
        } else if (m.type == IPC_MSG_NOTIFY) {
                static char text[IPC_NOTIFY_TEXT_MAX + 1];
                FUZZ_CHECK(m.text >= line && m.text + m.text_len <= line + size, "text outside the line");
                ssize_t measured = ipc_json_unescape(m.text, m.text_len, NULL, 0);
                ssize_t written = ipc_json_unescape(m.text, m.text_len, text, sizeof(text));
                FUZZ_CHECK(measured >= 0 && measured <= IPC_NOTIFY_TEXT_MAX && written == measured,
                           "notify text: measured %zd, written %zd", measured, written);
                FUZZ_CHECK(text[written] == 0, "notify text not NUL-terminated");
        } else if (m.type == IPC_MSG_NODE) {
                FUZZ_CHECK(m.cmd >= line && m.cmd + m.cmd_len <= line + size, "cmd outside the line");
                FUZZ_CHECK(m.cmd_len >= 5 && memcmp(m.cmd, "NODE_", 5) == 0, "cmd without NODE_");
        } else {
                FUZZ_CHECK(m.type == IPC_MSG_MESSAGE, "type %d", (int) m.type);
                FUZZ_CHECK(m.peer != IPC_PEER_CTL, "a worker line \"from\" ctl");
                check_message(line, size, &m, true);
                check_forward(&m);
        }

        reason = NULL;
        r = ipc_msg_parse_master_line(line, size, &m, &reason);
        if (r < 0) {
                FUZZ_CHECK(r == -EINVAL || r == -E2BIG, "r=%d", r);
                FUZZ_CHECK(reason && *reason, "a failure without a reason");
        } else {
                FUZZ_CHECK(m.type == IPC_MSG_MESSAGE, "a master line of type %d", (int) m.type);
                FUZZ_CHECK(m.peer == IPC_PEER_CTL || m.peer == IPC_PEER_SLOT, "peer %d", (int) m.peer);
                check_message(line, size, &m, false);
        }
        free(line);
        return 0;
}
