/* test-helpers: a few cmocka assertions that print both values in decimal.
 *
 * cmocka 1.1's assert_int_equal() prints hexadecimal, which is hard to read
 * for negative errnos; these print "<expr> == <value>, expected <value>".
 * Include after <cmocka.h>. */
#pragma once

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>

#define assert_int_eq(a, b)                                                                       \
        do {                                                                                      \
                long long _a = (long long) (a), _b = (long long) (b);                             \
                if (_a != _b)                                                                     \
                        fail_msg("%s == %lld, expected %lld (%s)", #a, _a, _b, #b);               \
        } while (0)

#define assert_u64_eq(a, b)                                                                       \
        do {                                                                                      \
                unsigned long long _a = (unsigned long long) (a), _b = (unsigned long long) (b); \
                if (_a != _b)                                                                     \
                        fail_msg("%s == %llu, expected %llu (%s)", #a, _a, _b, #b);               \
        } while (0)

#define assert_str_contains(haystack, needle)                                                     \
        do {                                                                                      \
                const char *_h = (haystack), *_n = (needle);                                      \
                if (!_h || !strstr(_h, _n))                                                       \
                        fail_msg("%s == \"%s\", expected it to contain \"%s\"", #haystack,        \
                                 _h ? _h : "(null)", _n);                                         \
        } while (0)

/* Open fds of this process (/proc/self/fd less "." and ".."): tests that
 * check nothing leaks compare it before and after. The opendir() fd itself
 * is counted, the same each time. */
static inline unsigned count_fds(void) {
        unsigned n = 0;
        DIR *d = opendir("/proc/self/fd");
        assert_non_null(d);
        for (struct dirent *de; (de = readdir(d));)
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n;
}
