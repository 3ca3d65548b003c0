/* ipc-msg: parser and formatter of the IPC channel's lines. See ipc-msg.h.
 *
 * A small strict JSON scanner finds the spans of the top-level members
 * instead of building a tree: the master needs "data" as the text the
 * worker wrote (to forward it unchanged), and the close report, the most
 * frequent line in least-conn, is recognised without any allocation. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ipc-msg.h"

typedef struct Scanner {
        const char *p, *end;
        const char *reason;
} Scanner;

typedef struct Span {
        const char *p;
        size_t len;
} Span;

static int fail(Scanner *s, const char *reason) {
        if (!s->reason)
                s->reason = reason;
        return -EINVAL;
}

static bool is_ws(char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool is_digit(char c) {
        return c >= '0' && c <= '9';
}

static void skip_ws(Scanner *s) {
        while (s->p < s->end && is_ws(*s->p))
                s->p++;
}

static bool at(const Scanner *s, char c) {
        return s->p < s->end && *s->p == c;
}

static bool is_hex(char c) {
        return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* The value of the 4 hex digits at p (p[0..4) readable), or -1. */
static int hex4(const char *p) {
        int v = 0;
        for (int i = 0; i < 4; i++) {
                char c = p[i];
                if (!is_hex(c))
                        return -1;
                v = v * 16 + (is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10);
        }
        return v;
}

/* A \u escape, s->p at its backslash: 1 with s->p past it (past both
 * halves of a surrogate pair), 0 when the text ends inside it, or -EINVAL.
 *
 * A lone surrogate (\uD800-\uDFFF not in a high-low pair) is refused:
 * RFC 8259 §8.2 leaves its meaning unpredictable, I-JSON (RFC 7493 §2.1)
 * forbids it, and cJSON, which the master and corralctl parse messages
 * with, rejects it. Accepting here made such a message vanish from
 * `corralctl messages` instead of being counted as malformed. The checks
 * are cJSON's (utf16_literal_to_utf8()). */
static int scan_u_escape(Scanner *s) {
        if (s->end - s->p < 6)
                return 0;
        int hi = hex4(s->p + 2);
        if (hi < 0)
                return fail(s, "invalid \\u escape in a string");
        if (hi >= 0xDC00 && hi <= 0xDFFF)
                return fail(s, "lone surrogate in a \\u escape (a low half without a high one)");
        if (hi < 0xD800 || hi > 0xDBFF) {
                s->p += 6;
                return 1;
        }
        const char *q = s->p + 6;
        int lo = s->end - q >= 6 && q[0] == '\\' && q[1] == 'u' ? hex4(q + 2) : -1;
        if (lo < 0xDC00 || lo > 0xDFFF)
                return fail(s, "lone surrogate in a \\u escape (a high half without a low one)");
        s->p += 12;
        return 1;
}

/* A string, s->p at its opening quote; the span excludes the quotes. */
static int scan_string(Scanner *s, Span *ret) {
        const char *start = ++s->p;
        while (s->p < s->end) {
                unsigned char c = (unsigned char) *s->p;
                if (c == '"') {
                        if (ret)
                                *ret = (Span) { start, (size_t) (s->p - start) };
                        s->p++;
                        return 0;
                }
                if (c < 0x20)
                        return fail(s, "control character in a string");
                if (c == '\\') {
                        if (s->end - s->p < 2)
                                break;
                        char e = s->p[1];
                        if (e == 'u') {
                                int r = scan_u_escape(s);
                                if (r <= 0)
                                        return r < 0 ? r : fail(s, "unterminated string");
                                continue;
                        }
                        if (!strchr("\"\\/bfnrt", e) || e == 0)
                                return fail(s, "invalid escape in a string");
                        s->p += 2;
                        continue;
                }
                s->p++;
        }
        return fail(s, "unterminated string");
}

static int scan_number(Scanner *s) {
        if (at(s, '-'))
                s->p++;
        if (at(s, '0'))
                s->p++;
        else if (s->p < s->end && is_digit(*s->p))
                while (s->p < s->end && is_digit(*s->p))
                        s->p++;
        else
                return fail(s, "invalid number");
        if (at(s, '.')) {
                s->p++;
                if (!(s->p < s->end && is_digit(*s->p)))
                        return fail(s, "invalid number");
                while (s->p < s->end && is_digit(*s->p))
                        s->p++;
        }
        if (at(s, 'e') || at(s, 'E')) {
                s->p++;
                if (at(s, '+') || at(s, '-'))
                        s->p++;
                if (!(s->p < s->end && is_digit(*s->p)))
                        return fail(s, "invalid number");
                while (s->p < s->end && is_digit(*s->p))
                        s->p++;
        }
        /* "12abc": the caller reports what follows as unexpected. */
        return 0;
}

static int scan_literal(Scanner *s, const char *lit) {
        size_t n = strlen(lit);
        if ((size_t) (s->end - s->p) < n || memcmp(s->p, lit, n) != 0)
                return fail(s, "invalid JSON value");
        s->p += n;
        return 0;
}

static int scan_value(Scanner *s, unsigned depth);

/* An array or object, s->p at its opening bracket. */
static int scan_container(Scanner *s, unsigned depth) {
        char close = *s->p == '{' ? '}' : ']';
        bool object = close == '}';

        if (depth >= IPC_JSON_DEPTH_MAX)
                return fail(s, "JSON nested too deeply");
        s->p++;
        skip_ws(s);
        if (at(s, close)) {
                s->p++;
                return 0;
        }
        for (;;) {
                if (object) {
                        if (!at(s, '"'))
                                return fail(s, "expected a string key");
                        if (scan_string(s, NULL) < 0)
                                return -EINVAL;
                        skip_ws(s);
                        if (!at(s, ':'))
                                return fail(s, "expected ':' after a key");
                        s->p++;
                }
                if (scan_value(s, depth + 1) < 0)
                        return -EINVAL;
                skip_ws(s);
                if (at(s, ',')) {
                        s->p++;
                        skip_ws(s);
                        continue;
                }
                if (at(s, close)) {
                        s->p++;
                        return 0;
                }
                return fail(s, s->p < s->end ? "expected ',' or a closing bracket" : "truncated JSON");
        }
}

/* Skips leading whitespace, then one value; s->p ends just after it. */
static int scan_value(Scanner *s, unsigned depth) {
        skip_ws(s);
        if (s->p >= s->end)
                return fail(s, "truncated JSON");
        switch (*s->p) {
        case '{':
        case '[':
                return scan_container(s, depth);
        case '"':
                return scan_string(s, NULL);
        case 't':
                return scan_literal(s, "true");
        case 'f':
                return scan_literal(s, "false");
        case 'n':
                return scan_literal(s, "null");
        default:
                if (*s->p == '-' || is_digit(*s->p))
                        return scan_number(s);
                return fail(s, "invalid JSON value");
        }
}

int ipc_json_validate(const char *text, size_t len, const char **ret_reason) {
        Scanner s = { text, text + len, NULL };
        if (scan_value(&s, 0) >= 0) {
                skip_ws(&s);
                if (s.p == s.end)
                        return 0;
                fail(&s, "trailing characters after the JSON value");
        }
        if (ret_reason)
                *ret_reason = s.reason;
        return -EINVAL;
}

static bool span_is(Span sp, const char *lit) {
        size_t n = strlen(lit);
        return sp.len == n && memcmp(sp.p, lit, n) == 0;
}

/* A decimal integer without sign, fraction, exponent or leading zero, at
 * most max. Returns 0, -EINVAL (not such an integer) or -ERANGE. */
static int span_to_uint(Span sp, unsigned max, unsigned *ret) {
        uint64_t v = 0;
        if (sp.len == 0 || (sp.len > 1 && sp.p[0] == '0'))
                return -EINVAL;
        for (size_t i = 0; i < sp.len; i++) {
                if (!is_digit(sp.p[i]))
                        return -EINVAL;
                v = v * 10 + (uint64_t) (sp.p[i] - '0');
                if (v > max)
                        return -ERANGE;
        }
        *ret = (unsigned) v;
        return 0;
}

/* code point cp as UTF-8 into u; returns its length. */
static size_t utf8_encode(unsigned cp, char u[static 4]) {
        if (cp < 0x80) {
                u[0] = (char) cp;
                return 1;
        }
        if (cp < 0x800) {
                u[0] = (char) (0xC0 | (cp >> 6));
                u[1] = (char) (0x80 | (cp & 0x3F));
                return 2;
        }
        if (cp < 0x10000) {
                u[0] = (char) (0xE0 | (cp >> 12));
                u[1] = (char) (0x80 | ((cp >> 6) & 0x3F));
                u[2] = (char) (0x80 | (cp & 0x3F));
                return 3;
        }
        u[0] = (char) (0xF0 | (cp >> 18));
        u[1] = (char) (0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char) (0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char) (0x80 | (cp & 0x3F));
        return 4;
}

ssize_t ipc_json_unescape(const char *raw, size_t len, char *buf, size_t size) {
        static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
        Scanner s = { raw, raw + len, NULL };
        size_t o = 0;

        while (s.p < s.end) {
                char u[4];
                size_t n = 1;
                if ((unsigned char) *s.p < 0x20 || *s.p == '"')
                        return -EINVAL;
                if (*s.p != '\\')
                        u[0] = *s.p++;
                else if (s.end - s.p >= 2 && s.p[1] == 'u') {
                        const char *start = s.p;
                        if (scan_u_escape(&s) <= 0)
                                return -EINVAL;
                        unsigned cp = (unsigned) hex4(start + 2);
                        if (s.p - start == 12)    /* a surrogate pair */
                                cp = 0x10000 + ((cp - 0xD800) << 10) + ((unsigned) hex4(start + 8) - 0xDC00);
                        n = utf8_encode(cp, u);
                } else {
                        const char *k = s.end - s.p >= 2 && s.p[1] ? strchr(from, s.p[1]) : NULL;
                        if (!k)
                                return -EINVAL;
                        u[0] = to[k - from];
                        s.p += 2;
                }
                if (buf) {
                        if (o + n >= size)
                                return -ENOBUFS;
                        memcpy(buf + o, u, n);
                }
                o += n;
        }
        if (buf) {
                if (o >= size)
                        return -ENOBUFS;
                buf[o] = 0;
        }
        return (ssize_t) o;
}

typedef enum Direction {
        FROM_WORKER,
        FROM_MASTER,
} Direction;

/* The close report as libcorral writes it, recognised without scanning
 * the general grammar. Returns true and sets *ret when the line is
 * exactly {"type":"closed","n":N} with a valid N. */
static bool parse_closed_fast(const char *line, size_t len, unsigned *ret) {
        static const char prefix[] = "{\"type\":\"closed\",\"n\":";
        const size_t np = sizeof(prefix) - 1;
        if (len < np + 2 || memcmp(line, prefix, np) != 0 || line[len - 1] != '}')
                return false;
        return span_to_uint((Span) { line + np, len - np - 1 }, IPC_CLOSED_MAX, ret) == 0 && *ret > 0;
}

static int parse_peer(Scanner *s, Span v, bool quoted, Direction dir, IpcMessage *m) {
        if (quoted) {
                if (dir == FROM_WORKER && span_is(v, "master"))
                        m->peer = IPC_PEER_MASTER;
                else if (dir == FROM_WORKER && span_is(v, "all"))
                        m->peer = IPC_PEER_ALL;
                else if (dir == FROM_WORKER && span_is(v, "others"))
                        m->peer = IPC_PEER_OTHERS;
                else if (dir == FROM_MASTER && span_is(v, "ctl"))
                        m->peer = IPC_PEER_CTL;
                else
                        return fail(s, dir == FROM_WORKER
                                        ? "\"to\": expected \"master\", \"all\", \"others\" or a slot number"
                                        : "\"from\": expected \"ctl\" or a slot number");
                return 0;
        }
        int r = span_to_uint(v, IPC_SLOT_MAX, &m->slot);
        if (r == -ERANGE)
                return fail(s, dir == FROM_WORKER ? "\"to\": slot number too large"
                                                  : "\"from\": slot number too large");
        if (r < 0)
                return fail(s, dir == FROM_WORKER ? "\"to\": expected a non-negative integer slot number"
                                                  : "\"from\": expected a non-negative integer slot number");
        m->peer = IPC_PEER_SLOT;
        return 0;
}

static int parse_line(const char *line, size_t len, Direction dir, IpcMessage *ret, const char **ret_reason) {
        Scanner s = { line, line + len, NULL };
        IpcMessage m = { .peer = dir == FROM_WORKER ? IPC_PEER_MASTER : IPC_PEER_CTL,
                         .data = "null", .data_len = 4 };
        bool seen_type = false, seen_peer = false, seen_data = false, seen_n = false, seen_text = false,
             seen_cmd = false;
        Span type = {}, n = {}, text = {}, cmd = {};
        const char *peer_key = dir == FROM_WORKER ? "to" : "from";

        if (len > IPC_LINE_MAX) {
                if (ret_reason)
                        *ret_reason = "line longer than 64 KiB";
                return -E2BIG;
        }
        if (dir == FROM_WORKER && parse_closed_fast(line, len, &m.n_closed)) {
                m.type = IPC_MSG_CLOSED;
                *ret = m;
                return 0;
        }
        /* Node's answer to every hand-off (ipc "node"), as it writes it. */
        static const char ack[] = "{\"cmd\":\"NODE_HANDLE_ACK\"}";
        if (dir == FROM_WORKER && len == sizeof(ack) - 1 && memcmp(line, ack, len) == 0) {
                m.type = IPC_MSG_NODE;
                m.cmd = line + 8;
                m.cmd_len = strlen("NODE_HANDLE_ACK");
                *ret = m;
                return 0;
        }

        skip_ws(&s);
        if (!at(&s, '{')) {
                fail(&s, s.p < s.end ? "not a JSON object" : "empty line");
                goto fail;
        }
        s.p++;
        skip_ws(&s);
        if (at(&s, '}'))
                s.p++;
        else
                for (;;) {
                        Span key;
                        if (!at(&s, '"')) {
                                fail(&s, "expected a string key");
                                goto fail;
                        }
                        if (scan_string(&s, &key) < 0)
                                goto fail;
                        skip_ws(&s);
                        if (!at(&s, ':')) {
                                fail(&s, "expected ':' after a key");
                                goto fail;
                        }
                        s.p++;
                        skip_ws(&s);
                        const char *vstart = s.p;
                        bool quoted = at(&s, '"');
                        if (scan_value(&s, 1) < 0)
                                goto fail;
                        Span v = { vstart, (size_t) (s.p - vstart) };
                        Span inner = quoted ? (Span) { v.p + 1, v.len - 2 } : v;

                        bool *seen = NULL;
                        if (span_is(key, "type"))
                                seen = &seen_type;
                        else if (span_is(key, peer_key))
                                seen = &seen_peer;
                        else if (span_is(key, "data"))
                                seen = &seen_data;
                        else if (dir == FROM_WORKER && span_is(key, "n"))
                                seen = &seen_n;
                        else if (dir == FROM_WORKER && span_is(key, "text"))
                                seen = &seen_text;
                        else if (dir == FROM_WORKER && span_is(key, "cmd"))
                                seen = &seen_cmd;
                        if (seen) {
                                if (*seen) {
                                        fail(&s, "a key appears twice");
                                        goto fail;
                                }
                                *seen = true;
                        }
                        if (seen == &seen_type) {
                                if (!quoted) {
                                        fail(&s, "\"type\": expected a string");
                                        goto fail;
                                }
                                type = inner;
                        } else if (seen == &seen_peer) {
                                if (parse_peer(&s, inner, quoted, dir, &m) < 0)
                                        goto fail;
                        } else if (seen == &seen_data) {
                                if (dir == FROM_WORKER && v.len > IPC_DATA_MAX) {
                                        fail(&s, "\"data\" longer than 65472 bytes");
                                        goto fail;
                                }
                                m.data = v.p;
                                m.data_len = v.len;
                        } else if (seen == &seen_n) {
                                if (quoted) {
                                        fail(&s, "\"n\": expected an integer >= 1");
                                        goto fail;
                                }
                                n = v;
                        } else if (seen == &seen_text || seen == &seen_cmd) {
                                if (!quoted) {
                                        fail(&s, seen == &seen_text ? "\"text\": expected a string"
                                                                    : "\"cmd\": expected a string");
                                        goto fail;
                                }
                                *(seen == &seen_text ? &text : &cmd) = inner;
                        }

                        skip_ws(&s);
                        if (at(&s, ',')) {
                                s.p++;
                                skip_ws(&s);
                                continue;
                        }
                        if (at(&s, '}')) {
                                s.p++;
                                break;
                        }
                        fail(&s, s.p < s.end ? "expected ',' or '}'" : "truncated JSON");
                        goto fail;
                }
        skip_ws(&s);
        if (s.p != s.end) {
                fail(&s, "trailing characters after the object");
                goto fail;
        }

        /* Node's own messages (its isInternal(): a "cmd" that starts with
         * NODE_) whatever else they hold; any other "cmd" is an unknown
         * key, as Node itself treats it as a user message. */
        if (seen_cmd && cmd.len >= 5 && memcmp(cmd.p, "NODE_", 5) == 0) {
                m.type = IPC_MSG_NODE;
                m.peer = IPC_PEER_MASTER;
                m.data = "null";
                m.data_len = 4;
                m.cmd = cmd.p;
                m.cmd_len = cmd.len;
                *ret = m;
                return 0;
        }
        if (!seen_type) {
                fail(&s, "missing \"type\"");
                goto fail;
        }
        if (span_is(type, "message"))
                m.type = IPC_MSG_MESSAGE;
        else if (dir == FROM_WORKER && span_is(type, "notify")) {
                if (!seen_text) {
                        fail(&s, "missing \"text\"");
                        goto fail;
                }
                if (ipc_json_unescape(text.p, text.len, NULL, 0) > IPC_NOTIFY_TEXT_MAX) {
                        fail(&s, "\"text\" longer than 4096 bytes");
                        goto fail;
                }
                m.type = IPC_MSG_NOTIFY;
                m.peer = IPC_PEER_MASTER;
                m.data = "null";
                m.data_len = 4;
                m.text = text.p;
                m.text_len = text.len;
        }
        else if (dir == FROM_WORKER && (span_is(type, "closed") || span_is(type, "fd-limit"))) {
                unsigned count;
                m.type = span_is(type, "closed") ? IPC_MSG_CLOSED : IPC_MSG_FD_LIMIT;
                if (!seen_n) {
                        fail(&s, "missing \"n\"");
                        goto fail;
                }
                int r = span_to_uint(n, IPC_CLOSED_MAX, &count);
                if (r == -ERANGE) {
                        fail(&s, "\"n\": number too large");
                        goto fail;
                }
                if (r < 0 || count == 0) {
                        fail(&s, "\"n\": expected an integer >= 1");
                        goto fail;
                }
                if (m.type == IPC_MSG_CLOSED)
                        m.n_closed = count;
                else
                        m.n_lost = count;
                /* Only n matters in a report. */
                m.peer = IPC_PEER_MASTER;
                m.data = "null";
                m.data_len = 4;
        } else {
                fail(&s, "unknown \"type\"");
                goto fail;
        }
        *ret = m;
        return 0;

fail:
        if (ret_reason)
                *ret_reason = s.reason;
        return -EINVAL;
}

int ipc_msg_parse_worker_line(const char *line, size_t len, IpcMessage *ret, const char **ret_reason) {
        return parse_line(line, len, FROM_WORKER, ret, ret_reason);
}

int ipc_msg_parse_master_line(const char *line, size_t len, IpcMessage *ret, const char **ret_reason) {
        return parse_line(line, len, FROM_MASTER, ret, ret_reason);
}

/* Append data to buf at *pos without the whitespace outside strings. The
 * data was validated, so strings are well formed. */
static int append_compact(char *buf, size_t n, size_t *pos, const char *data, size_t len) {
        bool in_string = false, escaped = false;
        for (size_t i = 0; i < len; i++) {
                char c = data[i];
                if (in_string) {
                        if (escaped)
                                escaped = false;
                        else if (c == '\\')
                                escaped = true;
                        else if (c == '"')
                                in_string = false;
                } else if (is_ws(c))
                        continue;
                else if (c == '"')
                        in_string = true;
                if (*pos + 1 >= n)
                        return -ENOBUFS;
                buf[(*pos)++] = c;
        }
        return 0;
}

static ssize_t format_message(char *buf, size_t n, const char *key, IpcPeer peer, unsigned slot,
                              const char *data, size_t data_len) {
        char head[64];
        size_t pos;
        int k;

        if (data && ipc_json_validate(data, data_len, NULL) < 0)
                return -EINVAL;
        switch (peer) {
        case IPC_PEER_MASTER:
                k = snprintf(head, sizeof(head), "{\"type\":\"message\",\"%s\":\"master\",\"data\":", key);
                break;
        case IPC_PEER_ALL:
                k = snprintf(head, sizeof(head), "{\"type\":\"message\",\"%s\":\"all\",\"data\":", key);
                break;
        case IPC_PEER_OTHERS:
                k = snprintf(head, sizeof(head), "{\"type\":\"message\",\"%s\":\"others\",\"data\":", key);
                break;
        case IPC_PEER_CTL:
                k = snprintf(head, sizeof(head), "{\"type\":\"message\",\"%s\":\"ctl\",\"data\":", key);
                break;
        case IPC_PEER_SLOT:
                if (slot > IPC_SLOT_MAX)
                        return -EINVAL;
                k = snprintf(head, sizeof(head), "{\"type\":\"message\",\"%s\":%u,\"data\":", key, slot);
                break;
        default:
                return -EINVAL;
        }
        if ((size_t) k >= n)
                return -ENOBUFS;
        memcpy(buf, head, (size_t) k);
        pos = (size_t) k;
        if (!data) {
                data = "null";
                data_len = 4;
        }
        if (append_compact(buf, n, &pos, data, data_len) < 0 || pos - (size_t) k > IPC_DATA_MAX)
                return -ENOBUFS;
        if (pos + 2 > n)
                return -ENOBUFS;
        buf[pos++] = '}';
        buf[pos] = 0;
        if (pos > IPC_LINE_MAX)
                return -ENOBUFS;
        return (ssize_t) pos;
}

ssize_t ipc_msg_format_to(char *buf, size_t n, IpcPeer to, unsigned slot, const char *data, size_t data_len) {
        if (to == IPC_PEER_CTL)
                return -EINVAL;
        return format_message(buf, n, "to", to, slot, data, data_len);
}

ssize_t ipc_msg_format_from(char *buf, size_t n, IpcPeer from, unsigned slot, const char *data, size_t data_len) {
        if (from != IPC_PEER_CTL && from != IPC_PEER_SLOT)
                return -EINVAL;
        return format_message(buf, n, "from", from, slot, data, data_len);
}

/* {"type":TYPE,"n":COUNT}, the shape of both count reports. */
static ssize_t format_count(char *buf, size_t n, const char *type, unsigned count) {
        if (count == 0 || count > IPC_CLOSED_MAX)
                return -EINVAL;
        int k = snprintf(buf, n, "{\"type\":\"%s\",\"n\":%u}", type, count);
        if (k < 0 || (size_t) k >= n)
                return -ENOBUFS;
        return k;
}

ssize_t ipc_msg_format_closed(char *buf, size_t n, unsigned n_closed) {
        return format_count(buf, n, "closed", n_closed);
}

ssize_t ipc_msg_format_fd_limit(char *buf, size_t n, unsigned n_lost) {
        return format_count(buf, n, "fd-limit", n_lost);
}
