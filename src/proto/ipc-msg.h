/* ipc-msg: the lines of the CORRAL_IPC_FD channel (SPEC §5, §6), parsed
 * and formatted. Shared by corrald and libcorral.
 *
 * The channel carries newline-delimited JSON objects of at most
 * IPC_LINE_MAX bytes (newline excluded), interleaved at line boundaries
 * with hand-offs (one byte that is not '{', with an fd attached):
 *
 *   worker -> master  {"type":"message","to":"master"|"all"|"others"|SLOT,"data":DATA}
 *                     {"type":"closed","n":N}
 *                     {"type":"fd-limit","n":N}
 *                     {"type":"notify","text":"READY=1\nSTATUS=..."}
 *                     {"cmd":"NODE_...",...}   (Node's own, ipc "node")
 *   master -> worker  {"type":"message","from":"ctl"|SLOT,"data":DATA}
 *
 * Decisions where SPEC.md is silent:
 *   - "to" absent means "master", "from" absent means "ctl"; "data"
 *     absent means null.
 *   - SLOT is a JSON integer 0..IPC_SLOT_MAX written without sign,
 *     fraction or exponent; whether that slot exists is the caller's
 *     business.
 *   - "closed" reports N >= 1 (at most IPC_CLOSED_MAX) connections closed
 *     since the previous report; a worker may coalesce.
 *   - "fd-limit" reports N >= 1 (at most IPC_CLOSED_MAX) hand-offs whose
 *     fd the kernel could not give the worker (MSG_CTRUNC: it is at its
 *     fd limit) since the previous such report: those connections are lost.
 *   - "notify" carries sd_notify assignments (SPEC §3), at most
 *     IPC_NOTIFY_TEXT_MAX bytes once unescaped, as a datagram may.
 *   - A line whose "cmd" starts with NODE_ is one of Node's internal
 *     messages (NODE_HANDLE_ACK, NODE_HANDLE_NACK, NODE_CLUSTER...), as
 *     Node itself decides (isInternal() in lib/internal/child_process.js),
 *     whatever its other keys; which of them mean anything is the
 *     caller's business. Any other "cmd" is an unknown key.
 *   - Unknown keys are ignored (room to grow); a repeated known key is an
 *     error; unknown "type" values are errors.
 *   - DATA is any JSON value and is handed on as its raw text, so that the
 *     master forwards it without re-serialising it. In a worker's line it
 *     is at most IPC_DATA_MAX bytes, so that it can always be forwarded.
 *
 * The validator is a strict RFC 8259 scanner (no trailing commas, no
 * comments, no control characters in strings, nesting at most
 * IPC_JSON_DEPTH_MAX) that also refuses lone surrogates in \u escapes
 * (RFC 7493), as cJSON does. It does not validate UTF-8, as cJSON does not.
 * Pure: no I/O, no allocation, no logging. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define IPC_LINE_MAX (64 * 1024)
/* The longest "data" (compact text) a message may carry, so that the
 * master can always forward it with a "from" of any slot within
 * IPC_LINE_MAX: 64 bytes less than a line. */
#define IPC_DATA_MAX (IPC_LINE_MAX - 64)
#define IPC_SLOT_MAX 65535u
#define IPC_CLOSED_MAX 0x7fffffffu
#define IPC_JSON_DEPTH_MAX 128
/* The longest sd_notify text a "notify" line may carry, unescaped: what
 * the notify socket takes in one datagram. */
#define IPC_NOTIFY_TEXT_MAX 4096

/* The channel's dialect, the instance's "ipc" key (SPEC §6): corral's own,
 * or Node.js's IPC channel as well. */
typedef enum IpcDialect {
        IPC_DIALECT_CORRAL,
        IPC_DIALECT_NODE,
        _IPC_DIALECT_MAX,
} IpcDialect;

typedef enum IpcMsgType {
        IPC_MSG_MESSAGE,
        IPC_MSG_CLOSED,
        IPC_MSG_FD_LIMIT,
        IPC_MSG_NOTIFY,
        IPC_MSG_NODE,
} IpcMsgType;

/* Who a worker's message is for, or who a master's message is from. */
typedef enum IpcPeer {
        IPC_PEER_MASTER,  /* "to":"master" (worker -> master only) */
        IPC_PEER_ALL,     /* "to":"all" */
        IPC_PEER_OTHERS,  /* "to":"others" */
        IPC_PEER_CTL,     /* "from":"ctl" (master -> worker only) */
        IPC_PEER_SLOT,    /* a slot number, in .slot */
} IpcPeer;

typedef struct IpcMessage {
        IpcMsgType type;
        IpcPeer peer;           /* "to" of a worker line, "from" of a master line */
        unsigned slot;          /* valid when peer == IPC_PEER_SLOT */
        const char *data;       /* raw JSON text of "data", pointing into the
                                 * parsed line (or a static "null"); not NUL-terminated */
        size_t data_len;
        unsigned n_closed;      /* IPC_MSG_CLOSED: N >= 1 */
        unsigned n_lost;        /* IPC_MSG_FD_LIMIT: N >= 1 */
        const char *text;       /* IPC_MSG_NOTIFY: "text" as written, still escaped */
        size_t text_len;        /*   (ipc_json_unescape() decodes it) */
        const char *cmd;        /* IPC_MSG_NODE: the "cmd" as written, e.g. NODE_HANDLE_ACK */
        size_t cmd_len;
} IpcMessage;

/* Parse one line a worker sent (no newline): a message with "to", a
 * close report or an fd-limit report. On success fills *ret (whose .data points into line) and
 * returns 0. On failure returns -EINVAL (-E2BIG for a line longer than
 * IPC_LINE_MAX) and sets *ret_reason (may be NULL) to a static phrase such
 * as "not a JSON object" or "\"to\": slot number too large". *ret is
 * untouched on failure. A master-direction key ("from") is ignored. */
int ipc_msg_parse_worker_line(const char *line, size_t len, IpcMessage *ret, const char **ret_reason);

/* Parse one line the master sent (no newline): a message with "from".
 * Same conventions. A worker-direction key ("to", "n") is ignored. */
int ipc_msg_parse_master_line(const char *line, size_t len, IpcMessage *ret, const char **ret_reason);

/* Is text[0..len) exactly one JSON value, with optional surrounding
 * whitespace? Returns 0 or -EINVAL with *ret_reason set (may be NULL). */
int ipc_json_validate(const char *text, size_t len, const char **ret_reason);

/* Decode the text of a JSON string (without its quotes) as the scanner
 * accepted it into buf (size bytes), NUL-terminated; with buf NULL, only
 * measure. Returns the decoded length, -EINVAL for text that is not a
 * valid string body, or -ENOBUFS when buf is too small. A \u0000 decodes
 * to a NUL byte: callers that want C strings check for it. */
ssize_t ipc_json_unescape(const char *raw, size_t len, char *buf, size_t size);

/* Format a line into buf (size n), NUL-terminated, without a newline.
 * `data` (len bytes, or NULL for null) must be one JSON value; it is
 * copied with the whitespace outside strings removed, so a pretty-printed
 * value cannot break the line framing. Returns the line's length, -EINVAL
 * for invalid data or a peer/slot that the direction does not allow, or
 * -ENOBUFS when buf is too small or the compacted data exceeds
 * IPC_DATA_MAX.
 * A buffer of data_len + IPC_MSG_OVERHEAD bytes is always large enough. */
#define IPC_MSG_OVERHEAD 64
ssize_t ipc_msg_format_to(char *buf, size_t n, IpcPeer to, unsigned slot, const char *data, size_t data_len);
ssize_t ipc_msg_format_from(char *buf, size_t n, IpcPeer from, unsigned slot, const char *data, size_t data_len);

/* {"type":"closed","n":N}; n in 1..IPC_CLOSED_MAX. Same return values. */
ssize_t ipc_msg_format_closed(char *buf, size_t n, unsigned n_closed);

/* {"type":"fd-limit","n":N}; n in 1..IPC_CLOSED_MAX. Same return values. */
ssize_t ipc_msg_format_fd_limit(char *buf, size_t n, unsigned n_lost);
