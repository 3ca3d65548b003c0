/* test-notify-msg: notify_msg_parse(), the sd_notify datagrams of SPEC §3. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "test-helpers.h"

#include "notify-msg.h"

/* Parse a C string (without its terminating NUL); the payload must be accepted. */
static NotifyMsg parse_ok_len(const char *buf, size_t len) {
        NotifyMsg m;
        memset(&m, 0x5a, sizeof(m));
        int r = notify_msg_parse(buf, len, &m);
        if (r != 0)
                fail_msg("notify_msg_parse(\"%.*s\") == %d, expected 0", (int) len, buf, r);
        return m;
}

static NotifyMsg parse_ok(const char *s) {
        return parse_ok_len(s, strlen(s));
}

static void assert_rejected_len(const char *buf, size_t len) {
        NotifyMsg m;
        memset(&m, 0x5a, sizeof(m));
        int r = notify_msg_parse(buf, len, &m);
        if (r != -EINVAL)
                fail_msg("notify_msg_parse(\"%.*s\", %zu) == %d, expected -EINVAL", (int) len, buf, len, r);
        /* *ret is untouched on failure. */
        assert_int_eq(((unsigned char *) &m)[0], 0x5a);
        assert_int_eq(((unsigned char *) &m)[sizeof(m) - 1], 0x5a);
}

static void assert_rejected(const char *s) {
        assert_rejected_len(s, strlen(s));
}

/* Only the listed flags set, nothing else. */
static void assert_only(const NotifyMsg *m, bool ready, bool stopping, bool reloading, bool watchdog,
                        bool trigger) {
        assert_int_eq(m->ready, ready);
        assert_int_eq(m->stopping, stopping);
        assert_int_eq(m->reloading, reloading);
        assert_int_eq(m->watchdog, watchdog);
        assert_int_eq(m->watchdog_trigger, trigger);
}

static void test_single_assignments(void **state) {
        NotifyMsg m = parse_ok("READY=1");
        assert_only(&m, true, false, false, false, false);
        assert_false(m.has_status);
        assert_int_eq(m.errno_value, -1);
        assert_int_eq(m.n_unknown, 0);

        m = parse_ok("STOPPING=1");
        assert_only(&m, false, true, false, false, false);
        m = parse_ok("RELOADING=1");
        assert_only(&m, false, false, true, false, false);
        m = parse_ok("WATCHDOG=1");
        assert_only(&m, false, false, false, true, false);
        m = parse_ok("WATCHDOG=trigger");
        assert_only(&m, false, false, false, false, true);
        assert_int_eq(m.n_unknown, 0);
}

static void test_values_must_match_exactly(void **state) {
        static const char *const near[] = {
                "READY=0", "READY=11", "READY=", "READY=1 ", " READY=1", "ready=1", "READY =1", "READY=1\r",
                "STOPPING=yes", "WATCHDOG=2", "WATCHDOG=Trigger", "WATCHDOG=trigger2", "RELOADING=0",
        };
        for (size_t i = 0; i < sizeof(near) / sizeof(near[0]); i++) {
                NotifyMsg m = parse_ok(near[i]);
                assert_only(&m, false, false, false, false, false);
                assert_int_eq(m.n_unknown, 1);
        }
}

static void test_status(void **state) {
        NotifyMsg m = parse_ok("STATUS=Serving 42 requests/s");
        assert_true(m.has_status);
        assert_string_equal(m.status, "Serving 42 requests/s");
        assert_int_eq(m.n_unknown, 0);

        m = parse_ok("STATUS=");
        assert_true(m.has_status);
        assert_string_equal(m.status, "");

        m = parse_ok("STATUS=a=b=c");
        assert_string_equal(m.status, "a=b=c");

        /* The last STATUS= wins, also when it is shorter. */
        m = parse_ok("STATUS=a long first status\nSTATUS=short");
        assert_string_equal(m.status, "short");
}

static void test_status_truncation(void **state) {
        char buf[7 + 2 * NOTIFY_STATUS_MAX + 1];
        char expected[NOTIFY_STATUS_MAX];

        memcpy(buf, "STATUS=", 7);
        for (size_t i = 0; i < 2 * NOTIFY_STATUS_MAX; i++)
                buf[7 + i] = (char) ('a' + i % 26);

        /* Exactly NOTIFY_STATUS_MAX - 1 bytes: kept whole. */
        NotifyMsg m = parse_ok_len(buf, 7 + NOTIFY_STATUS_MAX - 1);
        assert_int_eq(strlen(m.status), NOTIFY_STATUS_MAX - 1);
        memcpy(expected, buf + 7, NOTIFY_STATUS_MAX - 1);
        expected[NOTIFY_STATUS_MAX - 1] = 0;
        assert_string_equal(m.status, expected);

        /* One more, and much more: cut to NOTIFY_STATUS_MAX - 1, NUL-terminated. */
        m = parse_ok_len(buf, 7 + NOTIFY_STATUS_MAX);
        assert_true(m.has_status);
        assert_int_eq(strlen(m.status), NOTIFY_STATUS_MAX - 1);
        assert_string_equal(m.status, expected);

        m = parse_ok_len(buf, sizeof(buf) - 1);
        assert_string_equal(m.status, expected);

        /* A long STATUS followed by another line: the next line still parses. */
        buf[7 + NOTIFY_STATUS_MAX + 10] = '\n';
        memcpy(buf + 7 + NOTIFY_STATUS_MAX + 11, "READY=1", 7);
        m = parse_ok_len(buf, 7 + NOTIFY_STATUS_MAX + 18);
        assert_true(m.ready);
        assert_string_equal(m.status, expected);
}

static void test_errno(void **state) {
        NotifyMsg m = parse_ok("ERRNO=2");
        assert_int_eq(m.errno_value, 2);
        assert_int_eq(m.n_unknown, 0);

        m = parse_ok("ERRNO=0");
        assert_int_eq(m.errno_value, 0);
        m = parse_ok("ERRNO=4095");
        assert_int_eq(m.errno_value, 4095);
        m = parse_ok("ERRNO=007");
        assert_int_eq(m.errno_value, 7);

        /* Invalid values are ignored (-1), but the line is still an assignment. */
        static const char *const bad[] = {
                "ERRNO=", "ERRNO=-1", "ERRNO=+5", "ERRNO=abc", "ERRNO=5x", "ERRNO= 5", "ERRNO=4096",
                "ERRNO=2147483648", "ERRNO=18446744073709551617", "ERRNO=99999999999999999999999999999",
                "ERRNO=000000000000000000002",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                m = parse_ok(bad[i]);
                assert_int_eq(m.errno_value, -1);
                assert_int_eq(m.n_unknown, 0);
        }
}

static void test_multiple_lines(void **state) {
        NotifyMsg m = parse_ok("READY=1\nSTATUS=Ready\nMAINPID=42\nWATCHDOG=1\nERRNO=11\nX_CUSTOM=1");
        assert_only(&m, true, false, false, true, false);
        assert_true(m.has_status);
        assert_string_equal(m.status, "Ready");
        assert_int_eq(m.errno_value, 11);
        assert_int_eq(m.n_unknown, 2);

        m = parse_ok("STOPPING=1\nRELOADING=1\nWATCHDOG=trigger\nREADY=1");
        assert_only(&m, true, true, true, false, true);
        assert_int_eq(m.n_unknown, 0);
}

static void test_empty_lines_and_trailing_newline(void **state) {
        NotifyMsg m = parse_ok("READY=1\n");
        assert_true(m.ready);
        assert_int_eq(m.n_unknown, 0);

        m = parse_ok("\n\nREADY=1\n\n\nSTATUS=x\n\n");
        assert_true(m.ready);
        assert_string_equal(m.status, "x");
        assert_int_eq(m.n_unknown, 0);

        /* The newline is a separator, never part of a value. */
        m = parse_ok("STATUS=abc\n");
        assert_string_equal(m.status, "abc");
}

static void test_unknown_assignments(void **state) {
        /* Unknown assignments are ignored but counted, and a datagram of
         * only unknown ones is still a valid datagram. */
        NotifyMsg m = parse_ok("MAINPID=1234");
        assert_only(&m, false, false, false, false, false);
        assert_false(m.has_status);
        assert_int_eq(m.errno_value, -1);
        assert_int_eq(m.n_unknown, 1);

        m = parse_ok("FDSTORE=1\nBARRIER=1\nEXTEND_TIMEOUT_USEC=5000000\nMONOTONIC_USEC=1");
        assert_int_eq(m.n_unknown, 4);

        /* Lines that are not assignments are counted too, next to valid ones. */
        m = parse_ok("garbage\nREADY=1\n=1");
        assert_true(m.ready);
        assert_int_eq(m.n_unknown, 2);
}

static void test_rejected(void **state) {
        assert_rejected_len("", 0);
        assert_rejected_len("READY=1", 0);
        assert_rejected("\n");
        assert_rejected("\n\n\n");
        /* No '=' anywhere, or only at the start of a line: no assignment. */
        assert_rejected("READY");
        assert_rejected("READY\nSTOPPING");
        assert_rejected("=1");
        assert_rejected("=");
        assert_rejected("\n=READY\n");
}

static void test_nul_inside(void **state) {
        static const char a[] = "READY=1\0STATUS=x";
        assert_rejected_len(a, sizeof(a) - 1);
        static const char b[] = "STATUS=a\0b";
        assert_rejected_len(b, sizeof(b) - 1);
        static const char c[] = "READY=1\0";
        assert_rejected_len(c, sizeof(c) - 1);
        static const char d[] = "\0";
        assert_rejected_len(d, 1);
}

static void test_length_is_respected(void **state) {
        /* Bytes past len are not read: the buffer need not be NUL-terminated. */
        static const char buf[] = { 'R', 'E', 'A', 'D', 'Y', '=', '1', 'X' };
        NotifyMsg m = parse_ok_len(buf, 7);
        assert_true(m.ready);
        assert_int_eq(m.n_unknown, 0);

        m = parse_ok_len("READY=1\nSTOPPING=1", 8);
        assert_true(m.ready);
        assert_false(m.stopping);

        m = parse_ok_len("STATUS=abcdef", 10);
        assert_string_equal(m.status, "abc");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_single_assignments),
                cmocka_unit_test(test_values_must_match_exactly),
                cmocka_unit_test(test_status),
                cmocka_unit_test(test_status_truncation),
                cmocka_unit_test(test_errno),
                cmocka_unit_test(test_multiple_lines),
                cmocka_unit_test(test_empty_lines_and_trailing_newline),
                cmocka_unit_test(test_unknown_assignments),
                cmocka_unit_test(test_rejected),
                cmocka_unit_test(test_nul_inside),
                cmocka_unit_test(test_length_is_respected),
        };
        return cmocka_run_group_tests_name("notify-msg", tests, NULL, NULL);
}
