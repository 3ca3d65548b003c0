/* test-ipc-msg: the IPC channel's lines (SPEC §5, §6), parsed and formatted.
 *
 * The scanner is checked against cJSON on a corpus of valid and invalid
 * JSON, so that "what the master accepts" and "what a JSON library
 * accepts" do not drift apart. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-helpers.h"

#include "ipc-msg.h"
#include "macros.h"

static IpcMessage worker_ok(const char *line) {
        IpcMessage m;
        const char *reason = NULL;
        int r = ipc_msg_parse_worker_line(line, strlen(line), &m, &reason);
        if (r != 0)
                fail_msg("parse_worker_line(%s) == %d (%s), expected 0", line, r, reason ? reason : "?");
        return m;
}

static IpcMessage master_ok(const char *line) {
        IpcMessage m;
        const char *reason = NULL;
        int r = ipc_msg_parse_master_line(line, strlen(line), &m, &reason);
        if (r != 0)
                fail_msg("parse_master_line(%s) == %d (%s), expected 0", line, r, reason ? reason : "?");
        return m;
}

/* Rejected with a reason containing `why`, and *ret untouched. */
static void worker_bad_len(const char *line, size_t len, const char *why) {
        IpcMessage m;
        memset(&m, 0x5a, sizeof(m));
        const char *reason = NULL;
        int r = ipc_msg_parse_worker_line(line, len, &m, &reason);
        if (r >= 0)
                fail_msg("parse_worker_line(%.*s) == %d, expected an error", (int) MIN(len, 200), line, r);
        if (!reason)
                fail_msg("parse_worker_line(%.*s): no reason", (int) MIN(len, 200), line);
        assert_str_contains(reason, why);
        assert_int_eq(((unsigned char *) &m)[0], 0x5a);
        assert_int_eq(((unsigned char *) &m)[sizeof(m) - 1], 0x5a);
}

static void worker_bad(const char *line, const char *why) {
        worker_bad_len(line, strlen(line), why);
}

static void master_bad(const char *line, const char *why) {
        IpcMessage m;
        const char *reason = NULL;
        int r = ipc_msg_parse_master_line(line, strlen(line), &m, &reason);
        if (r >= 0)
                fail_msg("parse_master_line(%s) == %d, expected an error", line, r);
        assert_str_contains(reason, why);
}

static void assert_data(const IpcMessage *m, const char *expected) {
        if (m->data_len != strlen(expected) || memcmp(m->data, expected, m->data_len) != 0)
                fail_msg("data == \"%.*s\", expected \"%s\"", (int) m->data_len, m->data, expected);
}

static void test_worker_targets(void **state) {
        IpcMessage m = worker_ok("{\"type\":\"message\",\"to\":\"master\",\"data\":{\"a\":1}}");
        assert_int_eq(m.type, IPC_MSG_MESSAGE);
        assert_int_eq(m.peer, IPC_PEER_MASTER);
        assert_data(&m, "{\"a\":1}");

        m = worker_ok("{\"type\":\"message\",\"to\":\"all\",\"data\":1}");
        assert_int_eq(m.peer, IPC_PEER_ALL);
        m = worker_ok("{\"type\":\"message\",\"to\":\"others\",\"data\":\"x\"}");
        assert_int_eq(m.peer, IPC_PEER_OTHERS);
        assert_data(&m, "\"x\"");
        m = worker_ok("{\"type\":\"message\",\"to\":0,\"data\":[]}");
        assert_int_eq(m.peer, IPC_PEER_SLOT);
        assert_int_eq(m.slot, 0);
        m = worker_ok("{\"type\":\"message\",\"to\":65535,\"data\":[]}");
        assert_int_eq(m.slot, 65535);
        /* Key order does not matter; whitespace is allowed around tokens. */
        m = worker_ok(" { \"data\" : [1, 2] , \"to\" : 7 , \"type\" : \"message\" } ");
        assert_int_eq(m.slot, 7);
        assert_data(&m, "[1, 2]");
}

static void test_defaults(void **state) {
        /* "to" absent = master; "data" absent = null. */
        IpcMessage m = worker_ok("{\"type\":\"message\"}");
        assert_int_eq(m.peer, IPC_PEER_MASTER);
        assert_data(&m, "null");
        m = master_ok("{\"type\":\"message\"}");
        assert_int_eq(m.peer, IPC_PEER_CTL);
        assert_data(&m, "null");
        /* An explicit null stays the worker's text. */
        m = worker_ok("{\"type\":\"message\",\"data\":null}");
        assert_data(&m, "null");
}

static void test_nested_data_is_raw(void **state) {
        const char *line = "{\"type\":\"message\",\"data\":{\"k\":[1,{\"x\":\"}\\\"]\"},-2.5e+3,true,false,null],"
                           "\"s\":\"\\u00e9\\n\"}}";
        IpcMessage m = worker_ok(line);
        assert_data(&m, "{\"k\":[1,{\"x\":\"}\\\"]\"},-2.5e+3,true,false,null],\"s\":\"\\u00e9\\n\"}");
        /* data points into the line: no copy. */
        assert_true(m.data > line && m.data < line + strlen(line));
}

static void test_unknown_keys_ignored(void **state) {
        IpcMessage m = worker_ok("{\"type\":\"message\",\"x\":{\"deep\":[1]},\"data\":2,\"from\":3}");
        assert_int_eq(m.peer, IPC_PEER_MASTER);
        assert_data(&m, "2");
        /* A worker-direction key in a master line is ignored too. */
        m = master_ok("{\"type\":\"message\",\"from\":4,\"to\":\"all\",\"data\":2}");
        assert_int_eq(m.peer, IPC_PEER_SLOT);
        assert_int_eq(m.slot, 4);
        /* But unknown keys must still be valid JSON. */
        worker_bad("{\"type\":\"message\",\"x\":[1,}", "");
}

static void test_closed(void **state) {
        IpcMessage m = worker_ok("{\"type\":\"closed\",\"n\":1}");
        assert_int_eq(m.type, IPC_MSG_CLOSED);
        assert_int_eq(m.n_closed, 1);
        m = worker_ok("{\"type\":\"closed\",\"n\":2147483647}");
        assert_u64_eq(m.n_closed, 2147483647u);
        /* Off the fast path: spaces, other key order, extra keys. */
        m = worker_ok("{ \"n\": 12, \"type\": \"closed\", \"z\": null }");
        assert_int_eq(m.n_closed, 12);
        m = worker_ok("{\"type\":\"closed\",\"n\":3,\"to\":\"all\",\"data\":[1]}");
        assert_int_eq(m.n_closed, 3);
        assert_int_eq(m.peer, IPC_PEER_MASTER);
        assert_data(&m, "null");

        worker_bad("{\"type\":\"closed\",\"n\":0}", "\"n\": expected an integer >= 1");
        worker_bad("{\"type\":\"closed\",\"n\":-1}", "\"n\": expected an integer >= 1");
        worker_bad("{\"type\":\"closed\",\"n\":1.5}", "\"n\": expected an integer >= 1");
        worker_bad("{\"type\":\"closed\",\"n\":1e3}", "\"n\": expected an integer >= 1");
        worker_bad("{\"type\":\"closed\",\"n\":01}", "");
        worker_bad("{\"type\":\"closed\",\"n\":\"1\"}", "\"n\": expected an integer >= 1");
        worker_bad("{\"type\":\"closed\",\"n\":2147483648}", "\"n\": number too large");
        worker_bad("{\"type\":\"closed\",\"n\":99999999999999999999999999999}", "too large");
        worker_bad("{\"type\":\"closed\"}", "missing \"n\"");
        worker_bad("{\"type\":\"closed\",\"n\":1x}", "");
        worker_bad("{\"type\":\"closed\",\"n\":1", "");
        /* The fast path must not accept what the full parser refuses. */
        worker_bad("{\"type\":\"closed\",\"n\":}", "");
        worker_bad("{\"type\":\"closed\",\"n\":1}}", "trailing");
        /* A master line never is a close report. */
        master_bad("{\"type\":\"closed\",\"n\":1}", "unknown \"type\"");
}

/* A worker at its fd limit lost N hand-offs (MSG_CTRUNC): same grammar
 * as the close report, its own type, never confused with it. */
static void test_fd_limit(void **state) {
        char buf[64];
        IpcMessage m = worker_ok("{\"type\":\"fd-limit\",\"n\":1}");
        assert_int_eq(m.type, IPC_MSG_FD_LIMIT);
        assert_int_eq(m.n_lost, 1);
        assert_int_eq(m.n_closed, 0);
        assert_int_eq(m.peer, IPC_PEER_MASTER);
        assert_data(&m, "null");
        m = worker_ok("{ \"n\": 2147483647, \"type\": \"fd-limit\", \"data\": [1] }");
        assert_u64_eq(m.n_lost, 2147483647u);
        assert_data(&m, "null");

        worker_bad("{\"type\":\"fd-limit\"}", "missing \"n\"");
        worker_bad("{\"type\":\"fd-limit\",\"n\":0}", "\"n\": expected an integer >= 1");
        worker_bad("{\"type\":\"fd-limit\",\"n\":\"1\"}", "\"n\": expected an integer >= 1");
        worker_bad("{\"type\":\"fd-limit\",\"n\":2147483648}", "\"n\": number too large");
        worker_bad("{\"type\":\"fd-limit\",\"n\":1,\"n\":2}", "a key appears twice");
        worker_bad("{\"type\":\"fd-limit\",\"n\":1", "");
        worker_bad("{\"type\":\"fd-limits\",\"n\":1}", "unknown \"type\"");
        worker_bad("{\"type\":\"fd-limi\",\"n\":1}", "unknown \"type\"");
        /* A master never sends one. */
        master_bad("{\"type\":\"fd-limit\",\"n\":1}", "unknown \"type\"");

        assert_int_eq(ipc_msg_format_fd_limit(buf, sizeof(buf), 3), 25);
        assert_string_equal(buf, "{\"type\":\"fd-limit\",\"n\":3}");
        m = worker_ok(buf);
        assert_int_eq(m.type, IPC_MSG_FD_LIMIT);
        assert_int_eq(m.n_lost, 3);
        assert_int_eq(ipc_msg_format_fd_limit(buf, sizeof(buf), 0), -EINVAL);
        assert_int_eq(ipc_msg_format_fd_limit(buf, sizeof(buf), 2147483648u), -EINVAL);
        assert_int_eq(ipc_msg_format_fd_limit(buf, 10, 1), -ENOBUFS);
}

/* sd_notify over the channel (SPEC §3): the text as written, decoded by
 * ipc_json_unescape(), at most what a datagram may carry. */
static void test_notify(void **state) {
        char buf[IPC_NOTIFY_TEXT_MAX + 1];
        IpcMessage m = worker_ok("{\"type\":\"notify\",\"text\":\"READY=1\\nSTATUS=caf\\u00e9 \\ud83d\\ude00\"}");
        assert_int_eq(m.type, IPC_MSG_NOTIFY);
        assert_int_eq(m.peer, IPC_PEER_MASTER);
        assert_int_eq(ipc_json_unescape(m.text, m.text_len, buf, sizeof(buf)), 25);
        assert_string_equal(buf, "READY=1\nSTATUS=caf\xc3\xa9 \xf0\x9f\x98\x80");
        assert_int_eq(ipc_json_unescape(m.text, m.text_len, NULL, 0), 25);
        assert_int_eq(ipc_json_unescape(m.text, m.text_len, buf, 25), -ENOBUFS);
        assert_int_eq(ipc_json_unescape("a\\tb\\\"\\/\\\\", 10, buf, sizeof(buf)), 6);
        assert_string_equal(buf, "a\tb\"/\\");
        assert_int_eq(ipc_json_unescape("\\u0000", 6, buf, sizeof(buf)), 1);
        assert_int_eq(ipc_json_unescape("\\x", 2, buf, sizeof(buf)), -EINVAL);
        assert_int_eq(ipc_json_unescape("\\ud800", 6, buf, sizeof(buf)), -EINVAL);

        worker_bad("{\"type\":\"notify\"}", "missing \"text\"");
        worker_bad("{\"type\":\"notify\",\"text\":1}", "\"text\": expected a string");
        worker_bad("{\"type\":\"notify\",\"text\":\"a\",\"text\":\"b\"}", "a key appears twice");
        master_bad("{\"type\":\"notify\",\"text\":\"READY=1\"}", "unknown \"type\"");

        /* 4096 bytes once decoded, not as written. */
        static char line[IPC_NOTIFY_TEXT_MAX * 2 + 64];
        int n = snprintf(line, sizeof(line), "{\"type\":\"notify\",\"text\":\"");
        for (int i = 0; i < IPC_NOTIFY_TEXT_MAX; i++)
                n += snprintf(line + n, sizeof(line) - (size_t) n, "\\n");
        snprintf(line + n, sizeof(line) - (size_t) n, "\"}");
        assert_int_eq(worker_ok(line).type, IPC_MSG_NOTIFY);
        snprintf(line + n, sizeof(line) - (size_t) n, "\\n\"}");
        worker_bad(line, "\"text\" longer than 4096 bytes");
}

/* Node's own lines: whatever else they hold, as Node's isInternal() decides. */
static void test_node_internal(void **state) {
        IpcMessage m = worker_ok("{\"cmd\":\"NODE_HANDLE_ACK\"}");
        assert_int_eq(m.type, IPC_MSG_NODE);
        assert_int_eq(m.cmd_len, 15);
        assert_memory_equal(m.cmd, "NODE_HANDLE_ACK", 15);
        m = worker_ok("{\"cmd\":\"NODE_CLUSTER\",\"act\":\"online\",\"type\":\"whatever\"}");
        assert_int_eq(m.type, IPC_MSG_NODE);
        /* Any other cmd is an unknown key of an ordinary line. */
        m = worker_ok("{\"cmd\":\"deploy\",\"type\":\"message\",\"data\":1}");
        assert_int_eq(m.type, IPC_MSG_MESSAGE);
        worker_bad("{\"cmd\":\"NODE\"}", "missing \"type\"");
        worker_bad("{\"cmd\":7}", "\"cmd\": expected a string");
        worker_bad("{\"cmd\":\"NODE_HANDLE_ACK\"", "");
}

static void test_slot_numbers(void **state) {
        worker_bad("{\"type\":\"message\",\"to\":65536}", "\"to\": slot number too large");
        worker_bad("{\"type\":\"message\",\"to\":18446744073709551617}", "\"to\": slot number too large");
        worker_bad("{\"type\":\"message\",\"to\":-1}", "\"to\": expected a non-negative integer slot number");
        worker_bad("{\"type\":\"message\",\"to\":1.0}", "\"to\": expected a non-negative integer slot number");
        worker_bad("{\"type\":\"message\",\"to\":1e2}", "\"to\": expected a non-negative integer slot number");
        worker_bad("{\"type\":\"message\",\"to\":007}", "");
        worker_bad("{\"type\":\"message\",\"to\":true}", "\"to\": expected a non-negative integer slot number");
        worker_bad("{\"type\":\"message\",\"to\":[1]}", "\"to\": expected a non-negative integer slot number");
        worker_bad("{\"type\":\"message\",\"to\":\"1\"}", "\"to\": expected \"master\"");
        worker_bad("{\"type\":\"message\",\"to\":\"ctl\"}", "\"to\": expected \"master\"");
        worker_bad("{\"type\":\"message\",\"to\":\"ALL\"}", "\"to\": expected \"master\"");
        master_bad("{\"type\":\"message\",\"from\":\"all\"}", "\"from\": expected \"ctl\"");
        master_bad("{\"type\":\"message\",\"from\":99999}", "\"from\": slot number too large");
}

static void test_types(void **state) {
        worker_bad("{\"to\":\"all\",\"data\":1}", "missing \"type\"");
        worker_bad("{}", "missing \"type\"");
        worker_bad("{\"type\":\"nope\"}", "unknown \"type\"");
        worker_bad("{\"type\":1}", "\"type\": expected a string");
        worker_bad("{\"type\":null}", "\"type\": expected a string");
        worker_bad("{\"type\":\"message\",\"type\":\"message\"}", "a key appears twice");
        worker_bad("{\"type\":\"message\",\"data\":1,\"data\":2}", "a key appears twice");
        worker_bad("{\"type\":\"message\",\"to\":1,\"to\":2}", "a key appears twice");
}

static void test_garbage(void **state) {
        worker_bad("", "empty line");
        worker_bad("   ", "empty line");
        worker_bad("[]", "not a JSON object");
        worker_bad("\"message\"", "not a JSON object");
        worker_bad("42", "not a JSON object");
        worker_bad("null", "not a JSON object");
        worker_bad("hello world", "not a JSON object");
        worker_bad("\x01\x02\xff", "not a JSON object");
        worker_bad("{", "");
        worker_bad("{\"type\"", "");
        worker_bad("{\"type\":", "truncated JSON");
        worker_bad("{\"type\":\"message\"", "truncated JSON");
        worker_bad("{\"type\":\"message\",}", "expected a string key");
        worker_bad("{type:\"message\"}", "expected a string key");
        worker_bad("{\"type\" \"message\"}", "expected ':'");
        worker_bad("{\"type\":\"message\"} {}", "trailing");
        worker_bad("{\"type\":\"mess\x01ge\"}", "control character in a string");
        worker_bad("{\"type\":\"message\",\"data\":\"\\x\"}", "invalid escape");
        worker_bad("{\"type\":\"message\",\"data\":\"\\u12g4\"}", "invalid \\u escape");
        worker_bad("{\"type\":\"message\",\"data\":\"\\u12\"}", "");
        worker_bad("{\"type\":\"message\",\"data\":\"abc}", "unterminated string");
        /* Lone surrogates (found by libFuzzer): cJSON refuses them, so the
         * master could not show such a message in `corralctl messages`. */
        worker_bad("{\"type\":\"message\",\"data\":\"\\uDFFF\"}", "lone surrogate");
        worker_bad("{\"type\":\"message\",\"data\":\"\\uD800\"}", "lone surrogate");
        worker_bad("{\"type\":\"message\",\"data\":[\"\\udbff\\u0041\"]}", "lone surrogate");
        worker_bad("{\"type\":\"message\",\"data\":{\"\\uDC00\":1}}", "lone surrogate");
        worker_bad("{\"type\":\"message\",\"data\":\"\\uD800\\\"}", "");
        master_bad("{\"type\":\"message\",\"data\":\"\\uDFFF\"}", "lone surrogate");
        IpcMessage pair = worker_ok("{\"type\":\"message\",\"data\":\"\\ud83d\\ude00!\"}");
        assert_data(&pair, "\"\\ud83d\\ude00!\"");
        worker_bad("{\"type\":\"message\",\"data\":tru}", "invalid JSON value");
        worker_bad("{\"type\":\"message\",\"data\":NaN}", "invalid JSON value");
        worker_bad("{\"type\":\"message\",\"data\":-}", "invalid number");
        worker_bad("{\"type\":\"message\",\"data\":1.}", "invalid number");
        worker_bad("{\"type\":\"message\",\"data\":1e}", "invalid number");
        worker_bad("{\"type\":\"message\",\"data\":+1}", "invalid JSON value");
        worker_bad("{\"type\":\"message\",\"data\":[1 2]}", "expected ','");
        worker_bad("{\"type\":\"message\",\"data\":[1,]}", "invalid JSON value");
        worker_bad("{\"type\":\"message\",\"data\":{\"a\"}}", "expected ':'");
        /* A NUL byte inside the line. */
        worker_bad_len("{\"type\":\"message\",\"data\":\"a\0b\"}", 31, "control character");
        worker_bad_len("{\"type\":\"message\"}\0", 19, "trailing");
}

static void test_huge_and_deep(void **state) {
        /* Longer than IPC_LINE_MAX: refused before scanning. */
        size_t n = IPC_LINE_MAX + 1;
        char *big = malloc(n + 1);
        assert_non_null(big);
        memset(big, ' ', n);
        big[n] = 0;
        IpcMessage m;
        const char *reason = NULL;
        assert_int_eq(ipc_msg_parse_worker_line(big, n, &m, &reason), -E2BIG);
        assert_str_contains(reason, "longer than 64 KiB");

        /* Exactly IPC_LINE_MAX is allowed (padded with an unknown key). */
        const char *head = "{\"type\":\"message\",\"data\":1,\"pad\":\"";
        memset(big, 'a', IPC_LINE_MAX);
        memcpy(big, head, strlen(head));
        memcpy(big + IPC_LINE_MAX - 2, "\"}", 2);
        assert_int_eq(ipc_msg_parse_worker_line(big, IPC_LINE_MAX, &m, &reason), 0);
        assert_int_eq(m.data_len, 1);

        /* data up to IPC_DATA_MAX bytes, not one more: the master must be
         * able to forward it with any "from". */
        for (size_t len = IPC_DATA_MAX; len <= IPC_DATA_MAX + 1; len++) {
                static const char prefix[] = "{\"type\":\"message\",\"data\":\"";
                size_t k = sizeof(prefix) - 1;
                memcpy(big, prefix, k);
                for (size_t i = 0; i < len - 2; i++)
                        big[k++] = 'd';
                big[k++] = '"';
                big[k++] = '}';
                int r = ipc_msg_parse_worker_line(big, k, &m, &reason);
                if (len == IPC_DATA_MAX) {
                        assert_int_eq(r, 0);
                        assert_int_eq(m.data_len, IPC_DATA_MAX);
                        char *fwd = malloc(IPC_LINE_MAX + 1);
                        ssize_t f = ipc_msg_format_from(fwd, IPC_LINE_MAX + 1, IPC_PEER_SLOT, IPC_SLOT_MAX, m.data, m.data_len);
                        assert_true(f > 0 && f <= IPC_LINE_MAX);
                        free(fwd);
                } else {
                        assert_int_eq(r, -EINVAL);
                        assert_str_contains(reason, "\"data\" longer than 65472 bytes");
                        /* A master line may carry it (libcorral reads up to a whole line). */
                        assert_int_eq(ipc_msg_parse_master_line(big, k, &m, &reason), 0);
                }
        }

        /* A huge number is a valid JSON number in data. */
        m = worker_ok("{\"type\":\"message\",\"data\":123456789012345678901234567890e999999}");
        assert_data(&m, "123456789012345678901234567890e999999");

        /* Deep nesting: accepted up to the limit, refused beyond, no stack overflow. */
        char deep[IPC_LINE_MAX];
        for (unsigned depth = IPC_JSON_DEPTH_MAX - 2; depth <= IPC_JSON_DEPTH_MAX + 1; depth++) {
                size_t pos = (size_t) sprintf(deep, "{\"type\":\"message\",\"data\":");
                for (unsigned i = 0; i < depth; i++)
                        deep[pos++] = '[';
                for (unsigned i = 0; i < depth; i++)
                        deep[pos++] = ']';
                deep[pos++] = '}';
                int r = ipc_msg_parse_worker_line(deep, pos, &m, &reason);
                /* The object itself is depth 1. */
                if (depth + 1 <= IPC_JSON_DEPTH_MAX)
                        assert_int_eq(r, 0);
                else {
                        assert_int_eq(r, -EINVAL);
                        assert_str_contains(reason, "nested too deeply");
                }
        }
        /* 60000 open brackets: refused quickly. */
        size_t pos = (size_t) sprintf(deep, "{\"type\":\"message\",\"data\":");
        while (pos < 60000)
                deep[pos++] = '[';
        worker_bad_len(deep, pos, "nested too deeply");
        free(big);
}

static void test_length_is_respected(void **state) {
        /* Bytes past len are not read. */
        const char *line = "{\"type\":\"closed\",\"n\":12}garbage";
        IpcMessage m;
        assert_int_eq(ipc_msg_parse_worker_line(line, 24, &m, NULL), 0);
        assert_int_eq(m.n_closed, 12);
        assert_int_eq(ipc_msg_parse_worker_line(line, 23, &m, NULL), -EINVAL);
}

static void test_format(void **state) {
        char buf[256];
        assert_int_eq(ipc_msg_format_to(buf, sizeof(buf), IPC_PEER_ALL, 0, "{ \"a\" : [1, 2],\n \"b\": \"x y\\\" z\" }", 33),
                      (ssize_t) strlen("{\"type\":\"message\",\"to\":\"all\",\"data\":{\"a\":[1,2],\"b\":\"x y\\\" z\"}}"));
        assert_string_equal(buf, "{\"type\":\"message\",\"to\":\"all\",\"data\":{\"a\":[1,2],\"b\":\"x y\\\" z\"}}");

        ipc_msg_format_to(buf, sizeof(buf), IPC_PEER_SLOT, 3, "1", 1);
        assert_string_equal(buf, "{\"type\":\"message\",\"to\":3,\"data\":1}");
        ipc_msg_format_to(buf, sizeof(buf), IPC_PEER_MASTER, 0, NULL, 0);
        assert_string_equal(buf, "{\"type\":\"message\",\"to\":\"master\",\"data\":null}");
        ipc_msg_format_from(buf, sizeof(buf), IPC_PEER_CTL, 0, "\"hi\"", 4);
        assert_string_equal(buf, "{\"type\":\"message\",\"from\":\"ctl\",\"data\":\"hi\"}");
        ipc_msg_format_from(buf, sizeof(buf), IPC_PEER_SLOT, 12, "[]", 2);
        assert_string_equal(buf, "{\"type\":\"message\",\"from\":12,\"data\":[]}");
        assert_int_eq(ipc_msg_format_closed(buf, sizeof(buf), 5), 23);
        assert_string_equal(buf, "{\"type\":\"closed\",\"n\":5}");

        /* Refusals. */
        assert_int_eq(ipc_msg_format_to(buf, sizeof(buf), IPC_PEER_ALL, 0, "{", 1), -EINVAL);
        assert_int_eq(ipc_msg_format_to(buf, sizeof(buf), IPC_PEER_ALL, 0, "1 2", 3), -EINVAL);
        assert_int_eq(ipc_msg_format_to(buf, sizeof(buf), IPC_PEER_CTL, 0, "1", 1), -EINVAL);
        assert_int_eq(ipc_msg_format_to(buf, sizeof(buf), IPC_PEER_SLOT, 65536, "1", 1), -EINVAL);
        assert_int_eq(ipc_msg_format_from(buf, sizeof(buf), IPC_PEER_ALL, 0, "1", 1), -EINVAL);
        assert_int_eq(ipc_msg_format_closed(buf, sizeof(buf), 0), -EINVAL);
        assert_int_eq(ipc_msg_format_closed(buf, 5, 1), -ENOBUFS);
        assert_int_eq(ipc_msg_format_to(buf, 40, IPC_PEER_ALL, 0, "\"a long string that does not fit\"", 33), -ENOBUFS);

        /* A data value longer than IPC_DATA_MAX. */
        size_t n = IPC_DATA_MAX + 1;
        char *data = malloc(n + 1), *out = malloc(n + IPC_MSG_OVERHEAD);
        memset(data, 'a', n);
        data[0] = data[n - 1] = '"';
        assert_int_eq(ipc_msg_format_to(out, n + IPC_MSG_OVERHEAD, IPC_PEER_ALL, 0, data, n), -ENOBUFS);
        free(data);
        free(out);
}

/* What is formatted parses back to the same thing. */
static void test_round_trip(void **state) {
        char buf[256];
        IpcMessage m;
        ssize_t k = ipc_msg_format_to(buf, sizeof(buf), IPC_PEER_SLOT, 9, "{\"x\": [true]}", 13);
        assert_true(k > 0);
        assert_int_eq(ipc_msg_parse_worker_line(buf, (size_t) k, &m, NULL), 0);
        assert_int_eq(m.peer, IPC_PEER_SLOT);
        assert_int_eq(m.slot, 9);
        assert_data(&m, "{\"x\":[true]}");

        char buf2[256];
        k = ipc_msg_format_from(buf2, sizeof(buf2), IPC_PEER_SLOT, 9, m.data, m.data_len);
        assert_int_eq(ipc_msg_parse_master_line(buf2, (size_t) k, &m, NULL), 0);
        assert_int_eq(m.slot, 9);
        assert_data(&m, "{\"x\":[true]}");

        for (unsigned i = 1; i < 100000; i = i * 3 + 1) {
                k = ipc_msg_format_closed(buf, sizeof(buf), i);
                assert_int_eq(ipc_msg_parse_worker_line(buf, (size_t) k, &m, NULL), 0);
                assert_int_eq(m.type, IPC_MSG_CLOSED);
                assert_int_eq(m.n_closed, i);
        }
}

/* The validator agrees with cJSON on what is valid JSON. */
static void test_validate_agrees_with_cjson(void **state) {
        static const char *corpus[] = {
                "0", "-0", "1.5", "-1.5e-3", "1E+2", "true", "false", "null", "\"\"", "\"a\\u00e9\\t\"",
                "[]", "{}", "[1,[2,[3]]]", "{\"a\":{\"b\":[]}}", " 1 ", "\"\\/\"",
                "", " ", "-", "tru", "nul", "[1,]", "{\"a\"}", "{,}", "[", "]",
                "\"abc", "\"\\q\"", "{\"a\":1,}", "1 2", "{} {}", "'a'", "[1 2]", "{\"a\" 1}", "{1:2}",
                /* Surrogates: a pair is one character; a lone half is refused by both. */
                "\"\\ud83d\\ude00\"", "\"\\uD800\\uDC00\"", "\"\\uDBFF\\uDFFF\"", "\"\\uDFFF\"", "\"\\uDC00\"",
                "\"\\uD800\"", "\"\\uDBFFx\"", "\"\\uD800\\u0041\"", "\"\\uD800\\uD800\"", "\"\\uD800\\n\"",
                "\"\\uD800\\uDC0\"", "\"\\ude00\\ud83d\"", "[\"\\uDFFF\"]", "{\"\\uD800\":1}", "\"\\uD7FF\\uE000\"",
        };
        for (size_t i = 0; i < ELEMENTSOF(corpus); i++) {
                const char *t = corpus[i];
                cJSON *j = cJSON_ParseWithOpts(t, NULL, true);
                bool ours = ipc_json_validate(t, strlen(t), NULL) == 0;
                if (ours != (j != NULL))
                        fail_msg("\"%s\": ipc_json_validate says %s, cJSON says %s", t, ours ? "valid" : "invalid",
                                 j ? "valid" : "invalid");
                cJSON_Delete(j);
        }
        /* Where cJSON's numbers (strtod) are lenient, we follow RFC 8259. */
        static const char *strict[] = { "01", "-01", "1.", ".5", "+1", "1e", "0x10" };
        for (size_t i = 0; i < ELEMENTSOF(strict); i++)
                assert_int_eq(ipc_json_validate(strict[i], strlen(strict[i]), NULL), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_worker_targets),
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_nested_data_is_raw),
                cmocka_unit_test(test_unknown_keys_ignored),
                cmocka_unit_test(test_closed),
                cmocka_unit_test(test_fd_limit),
                cmocka_unit_test(test_notify),
                cmocka_unit_test(test_node_internal),
                cmocka_unit_test(test_slot_numbers),
                cmocka_unit_test(test_types),
                cmocka_unit_test(test_garbage),
                cmocka_unit_test(test_huge_and_deep),
                cmocka_unit_test(test_length_is_respected),
                cmocka_unit_test(test_format),
                cmocka_unit_test(test_round_trip),
                cmocka_unit_test(test_validate_agrees_with_cjson),
        };
        return cmocka_run_group_tests_name("ipc-msg", tests, NULL, NULL);
}
