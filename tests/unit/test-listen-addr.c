/* test-listen-addr: listen_addr_parse() and fdname_is_valid() (SPEC §2). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "test-helpers.h"

#include "listen-addr.h"

#define R_GENERIC "expected HOST:PORT, [V6]:PORT, PORT or unix:/path, optionally prefixed NAME="
#define R_HOST "HOST must be an IPv4 address, \"localhost\" or \"*\" (IPv6 goes in brackets; names are not resolved)"
#define R_UNIX_REL "a unix: listener needs an absolute path"
#define R_UNIX_LONG "the unix socket path is longer than 107 bytes"
#define R_NAME_LEN "the NAME= prefix must be 1-255 characters"
#define R_NAME_CHARS "the NAME= prefix must be printable ASCII without ':' or spaces"

static ListenAddr parse_ok(const char *s) {
        ListenAddr a;
        const char *reason = "unset";
        memset(&a, 0x5a, sizeof(a));
        int r = listen_addr_parse(s, &a, &reason);
        if (r != 0)
                fail_msg("listen_addr_parse(\"%s\") == %d (%s), expected 0", s, r, reason ? reason : "(null)");
        assert_null(reason);
        return a;
}

#define assert_parse_fails(s, expected_reason)                                                    \
        do {                                                                                      \
                ListenAddr _x;                                                                    \
                const char *_reason = NULL;                                                       \
                memset(&_x, 0x5a, sizeof(_x));                                                    \
                int _r = listen_addr_parse((s), &_x, &_reason);                                   \
                if (_r != -EINVAL)                                                                \
                        fail_msg("listen_addr_parse(\"%s\") == %d, expected -EINVAL", (s), _r);  \
                assert_non_null(_reason);                                                         \
                assert_string_equal(_reason, (expected_reason));                                  \
                /* *ret is untouched on failure. */                                               \
                assert_int_eq(((unsigned char *) &_x)[0], 0x5a);                                  \
                assert_int_eq(((unsigned char *) &_x)[sizeof(_x) - 1], 0x5a);                     \
        } while (0)

static void assert_in4(const ListenAddr *a, const char *ip, unsigned port) {
        const struct sockaddr_in *in = (const struct sockaddr_in *) &a->addr;
        char txt[INET_ADDRSTRLEN];
        assert_int_eq(in->sin_family, AF_INET);
        assert_int_eq(a->addrlen, sizeof(struct sockaddr_in));
        assert_int_eq(ntohs(in->sin_port), port);
        assert_non_null(inet_ntop(AF_INET, &in->sin_addr, txt, sizeof(txt)));
        assert_string_equal(txt, ip);
}

static void assert_in6(const ListenAddr *a, const char *ip, unsigned port) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) &a->addr;
        char txt[INET6_ADDRSTRLEN];
        assert_int_eq(in6->sin6_family, AF_INET6);
        assert_int_eq(a->addrlen, sizeof(struct sockaddr_in6));
        assert_int_eq(ntohs(in6->sin6_port), port);
        assert_non_null(inet_ntop(AF_INET6, &in6->sin6_addr, txt, sizeof(txt)));
        assert_string_equal(txt, ip);
        assert_int_eq(in6->sin6_flowinfo, 0);
        assert_int_eq(in6->sin6_scope_id, 0);
}

static void assert_un(const ListenAddr *a, const char *path) {
        const struct sockaddr_un *un = (const struct sockaddr_un *) &a->addr;
        assert_int_eq(un->sun_family, AF_UNIX);
        assert_string_equal(un->sun_path, path);
        assert_int_eq(a->addrlen, offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
}

/* ---- IPv4 ----------------------------------------------------------------- */

static void test_ipv4(void **state) {
        ListenAddr a = parse_ok("127.0.0.1:8080");
        assert_in4(&a, "127.0.0.1", 8080);
        assert_string_equal(a.name, "");
        assert_string_equal(a.display, "127.0.0.1:8080");

        a = parse_ok("0.0.0.0:1");
        assert_in4(&a, "0.0.0.0", 1);
        assert_string_equal(a.display, "0.0.0.0:1");

        a = parse_ok("192.168.10.254:65535");
        assert_in4(&a, "192.168.10.254", 65535);
        assert_string_equal(a.display, "192.168.10.254:65535");

        /* Leading zeros in the port are just decimal. */
        a = parse_ok("10.0.0.1:0080");
        assert_in4(&a, "10.0.0.1", 80);
        assert_string_equal(a.display, "10.0.0.1:80");
}

static void test_localhost_and_star(void **state) {
        ListenAddr a = parse_ok("localhost:3000");
        assert_in4(&a, "127.0.0.1", 3000);
        assert_string_equal(a.display, "127.0.0.1:3000");

        a = parse_ok("*:3000");
        assert_in4(&a, "0.0.0.0", 3000);
        assert_string_equal(a.display, "0.0.0.0:3000");

        /* Names are never resolved; "localhost" is matched literally. */
        assert_parse_fails("LOCALHOST:3000", R_HOST);
        assert_parse_fails("example.com:80", R_HOST);
        assert_parse_fails("**:80", R_HOST);
}

static void test_bare_port(void **state) {
        ListenAddr a = parse_ok("8080");
        assert_in4(&a, "0.0.0.0", 8080);
        assert_string_equal(a.display, "0.0.0.0:8080");
        assert_string_equal(a.name, "");

        a = parse_ok("1");
        assert_in4(&a, "0.0.0.0", 1);
        a = parse_ok("65535");
        assert_in4(&a, "0.0.0.0", 65535);
}

static void test_bad_ports(void **state) {
        static const char *const bad[] = {
                "0", "65536", "99999999999999999999999", "http", "-1", "+80", " 80", "80 ", "8o", "",
                "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:-1", "127.0.0.1:+1",
                "127.0.0.1: 80", "127.0.0.1:80 ", "127.0.0.1:0x50", ":80", "[::1]:0", "[::1]:65536", "[::1]:",
                "[::1]:x",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                assert_parse_fails(bad[i], R_GENERIC);
}

static void test_bad_ipv4_hosts(void **state) {
        static const char *const bad[] = {
                "256.0.0.1:80", "1.2.3:80", "1.2.3.4.5:80", "127.1:80", " 127.0.0.1:80", "127.0.0.1:80:90",
                "::1:80", "fe80::1:80", "1.2.3.4/24:80",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                assert_parse_fails(bad[i], R_HOST);
        /* A host longer than the buffer is refused without overflowing it. */
        char longhost[200];
        memset(longhost, '1', sizeof(longhost));
        strcpy(longhost + 150, ":80");
        assert_parse_fails(longhost, R_GENERIC);
}

/* ---- IPv6 ----------------------------------------------------------------- */

static void test_ipv6(void **state) {
        ListenAddr a = parse_ok("[::1]:8080");
        assert_in6(&a, "::1", 8080);
        assert_string_equal(a.display, "[::1]:8080");
        assert_string_equal(a.name, "");

        a = parse_ok("[::]:443");
        assert_in6(&a, "::", 443);
        assert_string_equal(a.display, "[::]:443");

        a = parse_ok("[2001:db8::42]:65535");
        assert_in6(&a, "2001:db8::42", 65535);
        assert_string_equal(a.display, "[2001:db8::42]:65535");

        a = parse_ok("[::ffff:127.0.0.1]:80");
        assert_in6(&a, "::ffff:127.0.0.1", 80);

        /* The longest textual form fits, and displays canonically. */
        a = parse_ok("[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:1");
        assert_string_equal(a.display, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:1");
}

/* Regression (was a bug): display is documented as "canonical text", and the IPv4 branch does
 * render it with inet_ntop(), but the IPv6 branch copies the text as given:
 * "[0:0:0:0:0:0:0:1]:8080" is displayed as typed instead of "[::1]:8080".
 * Fix: inet_ntop(AF_INET6, &in6->sin6_addr, ...) as for IPv4. */
static void test_ipv6_display_canonical_bug(void **state) {
        ListenAddr a = parse_ok("[0:0:0:0:0:0:0:1]:8080");
        assert_in6(&a, "::1", 8080);
        assert_string_equal(a.display, "[::1]:8080");

        a = parse_ok("[2001:DB8:0::42]:80");
        assert_string_equal(a.display, "[2001:db8::42]:80");
}

static void test_ipv6_bad(void **state) {
        static const char *const bad[] = {
                "[::1]", "[::1]8080", "[::1:8080", "[]:80", "[1.2.3.4]:80", "[fe80::1%eth0]:80", "[::g]:80",
                "[[::1]]:80", "[::1]]:80",
                /* Longer than any IPv6 text (INET6_ADDRSTRLEN): refused before copying. */
                "[0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000]:80",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                assert_parse_fails(bad[i], R_GENERIC);
}

/* ---- AF_UNIX -------------------------------------------------------------- */

static void test_unix(void **state) {
        ListenAddr a = parse_ok("unix:/run/app.sock");
        assert_un(&a, "/run/app.sock");
        assert_string_equal(a.display, "unix:/run/app.sock");
        assert_string_equal(a.name, "");

        a = parse_ok("unix:/");
        assert_un(&a, "/");

        /* Colons and spaces are just path bytes. */
        a = parse_ok("unix:/run/a b:c.sock");
        assert_un(&a, "/run/a b:c.sock");
}

static void test_unix_relative_rejected(void **state) {
        assert_parse_fails("unix:run/app.sock", R_UNIX_REL);
        assert_parse_fails("unix:./app.sock", R_UNIX_REL);
        assert_parse_fails("unix:", R_UNIX_REL);
        assert_parse_fails("unix:@abstract", R_UNIX_REL);
        assert_parse_fails("web=unix:app.sock", R_UNIX_REL);
}

static void test_unix_length(void **state) {
        char s[5 + 200];
        struct sockaddr_un un;
        const size_t max = sizeof(un.sun_path) - 1;   /* 107 path bytes + NUL */

        strcpy(s, "unix:");
        memset(s + 5, 'p', max);
        s[5] = '/';
        s[5 + max] = 0;
        ListenAddr a = parse_ok(s);
        assert_un(&a, s + 5);
        assert_string_equal(a.display, s);

        s[5 + max] = 'p';
        s[5 + max + 1] = 0;
        assert_parse_fails(s, R_UNIX_LONG);

        memset(s + 5, 'p', 190);
        s[5] = '/';
        s[5 + 190] = 0;
        assert_parse_fails(s, R_UNIX_LONG);
}

/* ---- NAME= ---------------------------------------------------------------- */

static void test_name_prefix(void **state) {
        ListenAddr a = parse_ok("web=127.0.0.1:8080");
        assert_string_equal(a.name, "web");
        assert_in4(&a, "127.0.0.1", 8080);
        assert_string_equal(a.display, "127.0.0.1:8080");

        a = parse_ok("admin=[::1]:9090");
        assert_string_equal(a.name, "admin");
        assert_in6(&a, "::1", 9090);

        a = parse_ok("api.v2-x_y=8080");
        assert_string_equal(a.name, "api.v2-x_y");
        assert_in4(&a, "0.0.0.0", 8080);

        a = parse_ok("sock=unix:/run/app.sock");
        assert_string_equal(a.name, "sock");
        assert_un(&a, "/run/app.sock");
        assert_string_equal(a.display, "unix:/run/app.sock");

        /* Any printable ASCII but ':' and space; 255 characters at most. */
        a = parse_ok("!\"#$%&'()*+,-./;<>?@[\\]^_`{|}~=80");
        assert_string_equal(a.name, "!\"#$%&'()*+,-./;<>?@[\\]^_`{|}~");

        char s[300];
        memset(s, 'n', 255);
        strcpy(s + 255, "=80");
        a = parse_ok(s);
        assert_int_eq(strlen(a.name), 255);
        s[255] = 'n';
        strcpy(s + 256, "=80");
        assert_parse_fails(s, R_NAME_LEN);
}

static void test_name_prefix_invalid(void **state) {
        assert_parse_fails("=8080", R_NAME_LEN);
        assert_parse_fails("=unix:/run/a.sock", R_NAME_LEN);
        assert_parse_fails("we b=8080", R_NAME_CHARS);
        assert_parse_fails("we\tb=8080", R_NAME_CHARS);
        assert_parse_fails("a:b=8080", R_NAME_CHARS);
        assert_parse_fails("caf\xc3\xa9=8080", R_NAME_CHARS);
        assert_parse_fails("del\x7f=8080", R_NAME_CHARS);
        /* A valid name does not rescue a bad address. */
        assert_parse_fails("web=", R_GENERIC);
        assert_parse_fails("web=0", R_GENERIC);
        assert_parse_fails("web=example.com:80", R_HOST);
        /* Only the first '=' ends the name. */
        assert_parse_fails("a=b=8080", R_GENERIC);
        assert_parse_fails("a=b=1.2.3.4:80", R_HOST);
}

static void test_equals_inside_unix_path(void **state) {
        /* After "unix:" an '=' belongs to the path... */
        ListenAddr a = parse_ok("unix:/run/a=b.sock");
        assert_string_equal(a.name, "");
        assert_un(&a, "/run/a=b.sock");
        assert_string_equal(a.display, "unix:/run/a=b.sock");

        a = parse_ok("unix:/x=y=z");
        assert_string_equal(a.name, "");
        assert_un(&a, "/x=y=z");

        /* ...even with a NAME= prefix before it. */
        a = parse_ok("web=unix:/run/k=v.sock");
        assert_string_equal(a.name, "web");
        assert_un(&a, "/run/k=v.sock");
        assert_string_equal(a.display, "unix:/run/k=v.sock");

        /* A path that mentions "unix:" again is still just a path. */
        a = parse_ok("s=unix:/run/unix:=x");
        assert_string_equal(a.name, "s");
        assert_un(&a, "/run/unix:=x");
}

/* ---- fdname_is_valid() ---------------------------------------------------- */

static void test_fdname_is_valid(void **state) {
        assert_true(fdname_is_valid("web"));
        assert_true(fdname_is_valid("listen0"));
        assert_true(fdname_is_valid("a"));
        assert_true(fdname_is_valid("a=b"));
        assert_true(fdname_is_valid("~!@#$%^&*()_+-=[]{}|;'\",.<>/?`\\"));

        assert_false(fdname_is_valid(""));
        assert_false(fdname_is_valid("a:b"));
        assert_false(fdname_is_valid(":"));
        assert_false(fdname_is_valid("a b"));
        assert_false(fdname_is_valid(" a"));
        assert_false(fdname_is_valid("a\t"));
        assert_false(fdname_is_valid("a\n"));
        assert_false(fdname_is_valid("\x01"));
        assert_false(fdname_is_valid("\x7f"));
        assert_false(fdname_is_valid("\x80"));
        assert_false(fdname_is_valid("\xff"));
        assert_false(fdname_is_valid("caf\xc3\xa9"));

        char s[300];
        memset(s, 'x', sizeof(s));
        s[255] = 0;
        assert_true(fdname_is_valid(s));
        s[255] = 'x';
        s[256] = 0;
        assert_false(fdname_is_valid(s));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_ipv4),
                cmocka_unit_test(test_localhost_and_star),
                cmocka_unit_test(test_bare_port),
                cmocka_unit_test(test_bad_ports),
                cmocka_unit_test(test_bad_ipv4_hosts),
                cmocka_unit_test(test_ipv6),
                cmocka_unit_test(test_ipv6_display_canonical_bug),
                cmocka_unit_test(test_ipv6_bad),
                cmocka_unit_test(test_unix),
                cmocka_unit_test(test_unix_relative_rejected),
                cmocka_unit_test(test_unix_length),
                cmocka_unit_test(test_name_prefix),
                cmocka_unit_test(test_name_prefix_invalid),
                cmocka_unit_test(test_equals_inside_unix_path),
                cmocka_unit_test(test_fdname_is_valid),
        };
        return cmocka_run_group_tests_name("listen-addr", tests, NULL, NULL);
}
