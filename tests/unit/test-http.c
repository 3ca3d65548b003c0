/* test-http: corral-hello's HTTP module (src/hello/http.c): finding the end
 * of a request head, parsing it (keep-alive rules, /delay/<ms>, bodies,
 * what must be refused), and the responses it formats. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "test-helpers.h"

#include "http.h"

static HttpRequest parse_ok(const char *head) {
        HttpRequest r;
        memset(&r, 0x5a, sizeof(r));
        int k = http_parse_request(head, strlen(head), &r);
        if (k != 0)
                fail_msg("http_parse_request(\"%s\") == %d, expected 0", head, k);
        return r;
}

#define assert_bad(head)                                                                          \
        do {                                                                                      \
                HttpRequest _r;                                                                   \
                int _k = http_parse_request((head), strlen(head), &_r);                           \
                if (_k != -EBADMSG)                                                               \
                        fail_msg("http_parse_request(\"%s\") == %d, expected -EBADMSG", (head), _k); \
        } while (0)

static void test_head_length(void **state) {
        const char *two = "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n";

        assert_int_eq(http_head_length("", 0), 0);
        assert_int_eq(http_head_length("GET / HTTP/1.1\r\n", 16), 0);
        assert_int_eq(http_head_length("GET / HTTP/1.1\r\n\r", 17), 0);
        assert_int_eq(http_head_length("GET / HTTP/1.1\r\n\r\n", 18), 18);
        /* Pipelined: only the first head. */
        assert_int_eq(http_head_length(two, strlen(two)), 27);
        assert_int_eq(http_head_length(two + 27, strlen(two + 27)), 19);
}

static void test_keep_alive_rules(void **state) {
        HttpRequest r = parse_ok("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_true(r.keep_alive);
        assert_false(r.http10);
        assert_false(r.head);
        assert_false(r.has_delay);
        assert_u64_eq(r.content_length, 0);
        assert_int_eq(http_connection_for(&r, false), HTTP_KEEP);
        /* A stopping worker closes every connection it answers. */
        assert_int_eq(http_connection_for(&r, true), HTTP_CLOSE);

        r = parse_ok("GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_false(r.keep_alive);
        assert_int_eq(http_connection_for(&r, false), HTTP_CLOSE);

        /* Options are a case-insensitive list (RFC 9110 §7.6.1). */
        r = parse_ok("GET / HTTP/1.1\r\nconnection:  Upgrade ,\tCLOSE \r\n\r\n");
        assert_false(r.keep_alive);

        r = parse_ok("GET / HTTP/1.0\r\n\r\n");
        assert_true(r.http10);
        assert_false(r.keep_alive);

        r = parse_ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert_true(r.keep_alive);
        assert_int_eq(http_connection_for(&r, false), HTTP_KEEP_10);

        r = parse_ok("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n");
        assert_false(r.keep_alive);
}

static void test_methods(void **state) {
        assert_true(parse_ok("HEAD / HTTP/1.1\r\n\r\n").head);
        /* Methods are case-sensitive: "head" is some other method. */
        assert_false(parse_ok("head / HTTP/1.1\r\n\r\n").head);
        assert_false(parse_ok("POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\n").head);
}

static void test_delay(void **state) {
        HttpRequest r = parse_ok("GET /delay/1500 HTTP/1.1\r\n\r\n");
        assert_true(r.has_delay);
        assert_u64_eq(r.delay_ms, 1500);

        r = parse_ok("GET /delay/0?x=1 HTTP/1.1\r\n\r\n");
        assert_true(r.has_delay);
        assert_u64_eq(r.delay_ms, 0);

        /* Clamped, and no overflow on absurd values. */
        r = parse_ok("GET /delay/99999999999999999999999999 HTTP/1.1\r\n\r\n");
        assert_true(r.has_delay);
        assert_u64_eq(r.delay_ms, HTTP_DELAY_MAX_MS);

        assert_false(parse_ok("GET /delay/ HTTP/1.1\r\n\r\n").has_delay);
        assert_false(parse_ok("GET /delay/12x HTTP/1.1\r\n\r\n").has_delay);
        assert_false(parse_ok("GET /delay HTTP/1.1\r\n\r\n").has_delay);
        assert_false(parse_ok("GET /x/delay/5 HTTP/1.1\r\n\r\n").has_delay);
}

static void test_bodies(void **state) {
        HttpRequest r = parse_ok("POST / HTTP/1.1\r\nContent-Length: 42\r\n\r\n");
        assert_u64_eq(r.content_length, 42);
        assert_true(r.keep_alive);

        /* The same value twice is fine; different ones are smuggling. */
        r = parse_ok("POST / HTTP/1.1\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n");
        assert_u64_eq(r.content_length, 7);
        assert_bad("POST / HTTP/1.1\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n");
        assert_bad("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
        assert_bad("POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n");
        assert_bad("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n");
        assert_bad("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n");

        /* A chunked body cannot be skipped: answer, then close. */
        r = parse_ok("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
        assert_false(r.keep_alive);
        assert_u64_eq(r.content_length, 0);
}

static void test_malformed(void **state) {
        assert_bad("\r\n\r\n");
        assert_bad("GET / HTTP/1.1\r\n");                       /* no empty line */
        assert_bad("GET /\r\n\r\n");                            /* HTTP/0.9 */
        assert_bad("GET  / HTTP/1.1\r\n\r\n");
        assert_bad("GET / HTTP/2.0\r\n\r\n");
        assert_bad("GET / HTTP/1.x\r\n\r\n");
        assert_bad("GET / HTTP/1.1 \r\n\r\n");
        assert_bad("G(T / HTTP/1.1\r\n\r\n");
        assert_bad("GET /\x7f HTTP/1.1\r\n\r\n");
        assert_bad("GET / HTTP/1.1\nHost: x\r\n\r\n");          /* bare LF */
        assert_bad("GET / HTTP/1.1\r\nHost : x\r\n\r\n");       /* space before the colon */
        assert_bad("GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n");
        assert_bad("GET / HTTP/1.1\r\nNoColon\r\n\r\n");
        assert_bad("GET / HTTP/1.1\r\n: empty name\r\n\r\n");
        assert_bad("GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n");
        assert_bad("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n");
        /* Tabs and obs-text are allowed in values. */
        parse_ok("GET / HTTP/1.1\r\nX: a\tb \xc3\xa9\r\n\r\n");
}

static void test_format_response(void **state) {
        char buf[256], small[40];
        ssize_t n;

        n = http_format_response(buf, sizeof(buf), "200 OK", "Tue, 01 Dec 2026 14:00:00 GMT", 4242, 3, HTTP_KEEP,
                                 "Hello World\n");
        assert_int_eq(n, strlen(buf));
        assert_string_equal(buf, "HTTP/1.1 200 OK\r\n"
                                 "Content-Type: text/plain\r\n"
                                 "Content-Length: 12\r\n"
                                 "Date: Tue, 01 Dec 2026 14:00:00 GMT\r\n"
                                 "X-Worker-Pid: 4242\r\n"
                                 "X-Worker: 3\r\n"
                                 "\r\n"
                                 "Hello World\n");

        /* No slot outside corrald, no Date when it could not be formatted. */
        n = http_format_response(buf, sizeof(buf), "400 Bad Request", "", 7, -1, HTTP_CLOSE, "Bad Request\n");
        assert_int_eq(n, strlen(buf));
        assert_string_equal(buf, "HTTP/1.1 400 Bad Request\r\n"
                                 "Content-Type: text/plain\r\n"
                                 "Content-Length: 12\r\n"
                                 "X-Worker-Pid: 7\r\n"
                                 "Connection: close\r\n"
                                 "\r\n"
                                 "Bad Request\n");

        n = http_format_response(buf, sizeof(buf), "200 OK", "", 7, 0, HTTP_KEEP_10, "");
        assert_str_contains(buf, "X-Worker: 0\r\nConnection: keep-alive\r\n\r\n");
        assert_str_contains(buf, "Content-Length: 0\r\n");

        assert_int_eq(http_format_response(small, sizeof(small), "200 OK", "", 7, 0, HTTP_KEEP, "Hello World\n"),
                      -ENOBUFS);
}

static void test_format_date(void **state) {
        char buf[64];

        http_format_date(buf, sizeof(buf), 0);
        assert_string_equal(buf, "Thu, 01 Jan 1970 00:00:00 GMT");
        http_format_date(buf, sizeof(buf), 1795960800);
        assert_string_equal(buf, "Sun, 29 Nov 2026 14:00:00 GMT");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_head_length),
                cmocka_unit_test(test_keep_alive_rules),
                cmocka_unit_test(test_methods),
                cmocka_unit_test(test_delay),
                cmocka_unit_test(test_bodies),
                cmocka_unit_test(test_malformed),
                cmocka_unit_test(test_format_response),
                cmocka_unit_test(test_format_date),
        };
        return cmocka_run_group_tests_name("http", tests, NULL, NULL);
}
