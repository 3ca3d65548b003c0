/* test-util: signal names, parse_u64, string vectors, format_duration,
 * the fd limit and budget, the CLOEXEC sweep before exec and the fds of
 * SCM_RIGHTS messages. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test-helpers.h"

#include "fd-util.h"
#include "util.h"

/* ---- signals ------------------------------------------------------------- */

static const struct {
        int sig;
        const char *name;
} known[] = {
        { SIGHUP, "SIGHUP" },   { SIGINT, "SIGINT" },     { SIGQUIT, "SIGQUIT" }, { SIGILL, "SIGILL" },
        { SIGTRAP, "SIGTRAP" }, { SIGABRT, "SIGABRT" },   { SIGBUS, "SIGBUS" },   { SIGFPE, "SIGFPE" },
        { SIGKILL, "SIGKILL" }, { SIGUSR1, "SIGUSR1" },   { SIGSEGV, "SIGSEGV" }, { SIGUSR2, "SIGUSR2" },
        { SIGPIPE, "SIGPIPE" }, { SIGALRM, "SIGALRM" },   { SIGTERM, "SIGTERM" }, { SIGSTKFLT, "SIGSTKFLT" },
        { SIGCHLD, "SIGCHLD" }, { SIGCONT, "SIGCONT" },   { SIGSTOP, "SIGSTOP" }, { SIGTSTP, "SIGTSTP" },
        { SIGTTIN, "SIGTTIN" }, { SIGTTOU, "SIGTTOU" },   { SIGURG, "SIGURG" },   { SIGXCPU, "SIGXCPU" },
        { SIGXFSZ, "SIGXFSZ" }, { SIGVTALRM, "SIGVTALRM" }, { SIGPROF, "SIGPROF" }, { SIGWINCH, "SIGWINCH" },
        { SIGIO, "SIGIO" },     { SIGPWR, "SIGPWR" },     { SIGSYS, "SIGSYS" },
};

static void test_parse_signal_names(void **state) {
        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
                /* "SIGTERM", "TERM" and "15" all name SIGTERM. */
                char num[16];
                snprintf(num, sizeof(num), "%d", known[i].sig);
                assert_int_eq(parse_signal(known[i].name), known[i].sig);
                assert_int_eq(parse_signal(known[i].name + 3), known[i].sig);
                assert_int_eq(parse_signal(num), known[i].sig);
                /* And back. */
                assert_string_equal(signal_to_string(known[i].sig), known[i].name);
        }
        /* Aliases (SIGIOT, SIGPOLL) are not in the table: canonical names only. */
        assert_int_eq(parse_signal("SIGIOT"), -EINVAL);
        assert_int_eq(parse_signal("POLL"), -EINVAL);
}

static void test_parse_signal_numbers(void **state) {
        char s[16];
        assert_int_eq(parse_signal("1"), 1);
        assert_int_eq(parse_signal("9"), SIGKILL);
        snprintf(s, sizeof(s), "%d", SIGRTMIN);
        assert_int_eq(parse_signal(s), SIGRTMIN);
        snprintf(s, sizeof(s), "%d", SIGRTMAX);
        assert_int_eq(parse_signal(s), SIGRTMAX);
        snprintf(s, sizeof(s), "%d", SIGRTMAX + 1);
        assert_int_eq(parse_signal(s), -EINVAL);
        assert_int_eq(parse_signal("0"), -EINVAL);
        assert_int_eq(parse_signal("015"), SIGTERM);
        assert_int_eq(parse_signal("99999999999999999999999"), -EINVAL);
        assert_int_eq(parse_signal("15x"), -EINVAL);
        assert_int_eq(parse_signal("1.5"), -EINVAL);
}

static void test_parse_signal_bad(void **state) {
        static const char *const bad[] = {
                "", "SIG", "sigterm", "term", "SIGterm", "SIGBOGUS", "BOGUS", " SIGTERM", "SIGTERM ", "SIG TERM",
                "SIGSIGTERM", "-15", "+15", " 15", "SIG15", "SIGRTMIN", "RTMIN+1", "TERM\n",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                if (parse_signal(bad[i]) != -EINVAL)
                        fail_msg("parse_signal(\"%s\") == %d, expected -EINVAL", bad[i], parse_signal(bad[i]));
        assert_int_eq(parse_signal(NULL), -EINVAL);
}

static void test_signal_to_string_unknown(void **state) {
        assert_string_equal(signal_to_string(0), "SIG?");
        assert_string_equal(signal_to_string(-1), "SIG?");
        assert_string_equal(signal_to_string(SIGRTMAX + 1), "SIG?");
        assert_string_equal(signal_to_string(100000), "SIG?");
        assert_string_equal(signal_to_string(SIGRTMIN), "SIGRT");
        assert_string_equal(signal_to_string(SIGRTMAX), "SIGRT");
}

/* ---- parse_u64 ----------------------------------------------------------- */

static void test_parse_u64(void **state) {
        uint64_t v = 7;
        assert_int_eq(parse_u64("0", &v), 0);
        assert_u64_eq(v, 0);
        assert_int_eq(parse_u64("42", &v), 0);
        assert_u64_eq(v, 42);
        assert_int_eq(parse_u64("0042", &v), 0);
        assert_u64_eq(v, 42);
        assert_int_eq(parse_u64("18446744073709551615", &v), 0);
        assert_u64_eq(v, UINT64_MAX);
        assert_int_eq(parse_u64("18446744073709551614", &v), 0);
        assert_u64_eq(v, UINT64_MAX - 1);
        assert_int_eq(parse_u64("000000000000000000000000000001", &v), 0);
        assert_u64_eq(v, 1);
}

static void test_parse_u64_errors(void **state) {
        uint64_t v = 1234;
        assert_int_eq(parse_u64("18446744073709551616", &v), -ERANGE);
        assert_int_eq(parse_u64("18446744073709551620", &v), -ERANGE);
        assert_int_eq(parse_u64("99999999999999999999", &v), -ERANGE);
        assert_int_eq(parse_u64("184467440737095516150", &v), -ERANGE);
        static const char *const bad[] = { "", "-1", "+1", " 1", "1 ", "0x10", "1e3", "1.0", "abc", "1_000", "\t1",
                                            "1\n" };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                int r = parse_u64(bad[i], &v);
                if (r != -EINVAL)
                        fail_msg("parse_u64(\"%s\") == %d, expected -EINVAL", bad[i], r);
        }
        assert_int_eq(parse_u64(NULL, &v), -EINVAL);
        /* *ret is untouched on failure. */
        assert_u64_eq(v, 1234);
}

/* ---- string vectors ------------------------------------------------------ */

static void test_strv(void **state) {
        char **l = NULL;
        assert_int_eq(strv_length(NULL), 0);
        assert_null(strv_free(NULL));

        assert_int_eq(strv_extend(&l, "a"), 0);
        assert_int_eq(strv_extend(&l, ""), 0);
        assert_int_eq(strv_extend(&l, "ccc"), 0);
        assert_int_eq(strv_length(l), 3);
        assert_string_equal(l[0], "a");
        assert_string_equal(l[1], "");
        assert_string_equal(l[2], "ccc");
        assert_null(l[3]);

        char *own = strdup("owned");
        assert_non_null(own);
        assert_int_eq(strv_push(&l, own), 0);
        assert_ptr_equal(l[3], own);      /* taken, not copied */
        assert_null(l[4]);
        assert_int_eq(strv_length(l), 4);

        char **c = strv_copy(l);
        assert_non_null(c);
        assert_int_eq(strv_length(c), 4);
        for (size_t i = 0; i < 4; i++) {
                assert_string_equal(c[i], l[i]);
                assert_true(c[i] != l[i]);   /* deep copy */
        }
        assert_null(c[4]);
        assert_null(strv_free(c));
        assert_null(strv_free(l));

        /* Copying NULL or an empty vector gives an empty, non-NULL vector. */
        c = strv_copy(NULL);
        assert_non_null(c);
        assert_null(c[0]);
        assert_int_eq(strv_length(c), 0);
        char **e = strv_copy(c);
        assert_non_null(e);
        assert_null(e[0]);
        strv_free(e);
        strv_free(c);

        /* The cleanup helper frees. */
        {
                _cleanup_strv_free_ char **x = NULL;
                assert_int_eq(strv_extend(&x, "freed by cleanup"), 0);
                assert_int_eq(strv_length(x), 1);
        }
        {
                _cleanup_strv_free_ char **x = NULL;   /* NULL is fine */
                assert_null(x);
        }
}

static void test_streq_startswith(void **state) {
        assert_true(streq_ptr(NULL, NULL));
        assert_false(streq_ptr(NULL, "a"));
        assert_false(streq_ptr("a", NULL));
        assert_true(streq_ptr("a", "a"));
        assert_true(streq_ptr("", ""));
        assert_false(streq_ptr("a", "ab"));
        assert_false(streq_ptr("a", "A"));

        assert_true(startswith("SIGTERM", "SIG"));
        assert_true(startswith("SIG", "SIG"));
        assert_true(startswith("anything", ""));
        assert_true(startswith("", ""));
        assert_false(startswith("SI", "SIG"));
        assert_false(startswith("", "a"));
        assert_false(startswith("sigterm", "SIG"));
}

/* ---- time ---------------------------------------------------------------- */

static void test_format_duration(void **state) {
        static const struct {
                uint64_t sec;
                const char *text;
        } cases[] = {
                { 0, "0s" },
                { 12, "12s" },
                { 59, "59s" },
                { 60, "1m00s" },
                { 4 * 60 + 7, "4m07s" },
                { 59 * 60 + 59, "59m59s" },
                { 3600, "1h00m" },
                { 2 * 3600 + 5 * 60 + 59, "2h05m" },   /* truncated, not rounded */
                { 23 * 3600 + 59 * 60 + 59, "23h59m" },
                { 86400, "1d00h" },
                /* util.h shows "3d4h" as the example, but days are followed by
                 * zero-padded hours like every other unit here ("2h05m",
                 * "4m07s"); the code prints "3d04h". Reported to the lead as a
                 * header/code mismatch; this asserts the code. */
                { 3 * 86400 + 4 * 3600, "3d04h" },
                { 3 * 86400 + 14 * 3600 + 59 * 60, "3d14h" },
                { 400 * 86400 + 23 * 3600, "400d23h" },
        };
        char buf[32];
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                const char *r = format_duration(buf, sizeof(buf), cases[i].sec * USEC_PER_SEC);
                assert_ptr_equal(r, buf);
                assert_string_equal(buf, cases[i].text);
        }
        /* Sub-second parts are dropped. */
        assert_string_equal(format_duration(buf, sizeof(buf), 999999), "0s");
        assert_string_equal(format_duration(buf, sizeof(buf), 59999999), "59s");
        assert_string_equal(format_duration(buf, sizeof(buf), 60000000), "1m00s");
        /* Huge values do not overflow the buffer. */
        assert_string_equal(format_duration(buf, sizeof(buf), UINT64_MAX), "213503982d08h");
        /* A short buffer is truncated and stays NUL-terminated. */
        char small[4];
        assert_string_equal(format_duration(small, sizeof(small), 4 * 60 * USEC_PER_SEC + 7 * USEC_PER_SEC), "4m0");
}

/* ---- fd limit and budget --------------------------------------------------- */

static void test_rlimit_nofile_raise_restore(void **state) {
        struct rlimit orig, rl;
        assert_int_equal(getrlimit(RLIMIT_NOFILE, &orig), 0);
        if (orig.rlim_max < 300 || orig.rlim_max == RLIM_INFINITY)
                skip();
        /* Start from a soft limit below the hard one, as under systemd
         * (1024:524288). */
        rl = (struct rlimit) { .rlim_cur = 256, .rlim_max = orig.rlim_max };
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);

        assert_int_equal(rlimit_nofile_raise(), 0);
        assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
        assert_int_equal(rl.rlim_cur, orig.rlim_max);
        assert_int_equal(rl.rlim_max, orig.rlim_max);

        unsigned max = 0;
        assert_int_equal(fd_budget(&max, NULL), 0);
        assert_int_equal(max, orig.rlim_max > UINT_MAX ? UINT_MAX : (unsigned) orig.rlim_max);

        assert_int_equal(rlimit_nofile_restore(), 0);
        assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
        assert_int_equal(rl.rlim_cur, 256);
        assert_int_equal(rl.rlim_max, orig.rlim_max);
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &orig), 0);
}

static void test_fd_budget_counts_open_fds(void **state) {
        unsigned before, after, max;
        assert_int_equal(fd_budget(&max, &before), 0);
        assert_true(before >= 3);
        assert_true(max >= before);
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(fd_budget(NULL, &after), 0);
        assert_int_equal(after, before + 1);
        safe_close(fd);
        assert_int_equal(fd_budget(NULL, &after), 0);
        assert_int_equal(after, before);
}

/* ---- the sweep before exec ----------------------------------------------- */

static bool is_cloexec(int fd) {
        int flags = fcntl(fd, F_GETFD);
        assert_true(flags >= 0);
        return flags & FD_CLOEXEC;
}

/* fds without FD_CLOEXEC at 40 (below the sweep), 100, 4100 (above the
 * 4096 where the old fallback stopped) and near the top of the limit. */
static void sweep_case(int (*sweep)(int first), const char *what) {
        struct rlimit orig, rl;
        assert_int_equal(getrlimit(RLIMIT_NOFILE, &orig), 0);
        if (orig.rlim_max < 8192)
                skip();
        rl = (struct rlimit) { .rlim_cur = orig.rlim_max > 200000 ? 200000 : orig.rlim_max, .rlim_max = orig.rlim_max };
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);

        int base = open("/dev/null", O_RDONLY | O_CLOEXEC);
        assert_true(base >= 0);
        int fds[] = { 40, 100, 4100, (int) rl.rlim_cur - 1 };
        for (size_t i = 0; i < ELEMENTSOF(fds); i++) {
                assert_int_eq(dup2(base, fds[i]), fds[i]);      /* dup2: not CLOEXEC */
                assert_false(is_cloexec(fds[i]));
        }
        assert_int_eq(sweep(50), 0);
        if (is_cloexec(fds[0]))
                fail_msg("%s: fd 40, below the sweep, was marked", what);
        for (size_t i = 1; i < ELEMENTSOF(fds); i++)
                if (!is_cloexec(fds[i]))
                        fail_msg("%s: fd %d was left without FD_CLOEXEC", what, fds[i]);
        /* Marked, not closed: the exec does the closing. */
        for (size_t i = 0; i < ELEMENTSOF(fds); i++)
                assert_int_eq(close(fds[i]), 0);
        safe_close(base);
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &orig), 0);
}

static void test_fd_cloexec_from_proc(void **state) {
        sweep_case(fd_cloexec_from_proc, "fd_cloexec_from_proc");
}

static void test_fd_cloexec_to_limit(void **state) {
        sweep_case(fd_cloexec_to_limit, "fd_cloexec_to_limit");
}

static void test_fd_cloexec_from(void **state) {
        sweep_case(fd_cloexec_from, "fd_cloexec_from");
}

/* ---- SCM_RIGHTS ---------------------------------------------------------- */

/* Send `n` copies of /dev/null in one SCM_RIGHTS message over a socketpair
 * and receive them into *mh (control in `control`). */
static void receive_fds(int n, struct msghdr *mh, void *control, size_t control_len, int pair[2]) {
        static char byte = 'x', got;
        static struct iovec iov_out = { &byte, 1 }, iov_in = { &got, 1 };
        int fds[8];
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(fds))];
        } out = {};

        assert_true(n > 0 && n <= 8);
        assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
        for (int i = 0; i < n; i++)
                assert_true((fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0);
        struct msghdr m = { .msg_iov = &iov_out, .msg_iovlen = 1, .msg_control = &out,
                            .msg_controllen = CMSG_SPACE(sizeof(int) * n) };
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * n);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
        assert_int_eq(sendmsg(pair[0], &m, 0), 1);
        for (int i = 0; i < n; i++)
                safe_close(fds[i]);
        *mh = (struct msghdr) { .msg_iov = &iov_in, .msg_iovlen = 1, .msg_control = control,
                                .msg_controllen = control_len };
        assert_int_eq(recvmsg(pair[1], mh, MSG_CMSG_CLOEXEC), 1);
}

static unsigned closed_by_hook;
static int counting_close(int fd) {
        closed_by_hook++;
        return safe_close(fd);
}

static void test_cmsg_close_all(void **state) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * 8)];
        } control;
        struct msghdr mh;
        int pair[2];

        unsigned before = count_fds();
        receive_fds(3, &mh, &control, sizeof(control), pair);
        assert_int_eq(count_fds(), before + 2 + 3);
        assert_int_eq(cmsg_close_all(&mh), 3);
        assert_int_eq(count_fds(), before + 2);
        safe_close(pair[0]);
        safe_close(pair[1]);

        /* The hook gets each one; a message without fds closes nothing. */
        receive_fds(2, &mh, &control, sizeof(control), pair);
        closed_by_hook = 0;
        assert_int_eq(cmsg_close_all_with(&mh, counting_close), 2);
        assert_int_eq(closed_by_hook, 2);
        assert_int_eq(count_fds(), before + 2);
        mh.msg_controllen = 0;
        assert_int_eq(cmsg_close_all(&mh), 0);
        safe_close(pair[0]);
        safe_close(pair[1]);
        assert_int_eq(count_fds(), before);
}

static void test_cmsg_take_first_fd(void **state) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * 8)];
        } control;
        struct msghdr mh;
        int pair[2];

        unsigned before = count_fds();
        receive_fds(3, &mh, &control, sizeof(control), pair);
        int first = cmsg_take_first_fd(&mh);
        assert_true(first >= 0);
        assert_true(is_cloexec(first));         /* MSG_CMSG_CLOEXEC */
        assert_int_eq(cmsg_close_all(&mh), 2);  /* the others, not the one taken */
        assert_int_eq(fcntl(first, F_GETFD) >= 0, 1);
        assert_int_eq(cmsg_take_first_fd(&mh) < 0, 1);  /* still there, but taken */
        safe_close(first);
        safe_close(pair[0]);
        safe_close(pair[1]);
        assert_int_eq(count_fds(), before);
        mh.msg_control = NULL;
        mh.msg_controllen = 0;
        assert_int_eq(cmsg_take_first_fd(&mh), -EBADF);
}

static void test_now_usec(void **state) {
        uint64_t a = now_usec(), b = now_usec();
        assert_true(a > 0);
        assert_true(b >= a);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse_signal_names),
                cmocka_unit_test(test_parse_signal_numbers),
                cmocka_unit_test(test_parse_signal_bad),
                cmocka_unit_test(test_signal_to_string_unknown),
                cmocka_unit_test(test_parse_u64),
                cmocka_unit_test(test_parse_u64_errors),
                cmocka_unit_test(test_strv),
                cmocka_unit_test(test_streq_startswith),
                cmocka_unit_test(test_format_duration),
                cmocka_unit_test(test_now_usec),
                cmocka_unit_test(test_rlimit_nofile_raise_restore),
                cmocka_unit_test(test_fd_budget_counts_open_fds),
                cmocka_unit_test(test_fd_cloexec_from_proc),
                cmocka_unit_test(test_fd_cloexec_to_limit),
                cmocka_unit_test(test_fd_cloexec_from),
                cmocka_unit_test(test_cmsg_close_all),
                cmocka_unit_test(test_cmsg_take_first_fd),
        };
        return cmocka_run_group_tests_name("util", tests, NULL, NULL);
}
