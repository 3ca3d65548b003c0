/* test-policy: backoff_delay_ms() and the FailureWindow rate limit (SPEC §4).
 * Time is passed in, so every boundary is exact. */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "test-helpers.h"

#include "policy.h"

/* ---- backoff ------------------------------------------------------------- */

static void test_backoff_doubling_and_cap(void **state) {
        /* The defaults of SPEC §2: [100, 10000]. */
        static const uint64_t expected[] = { 0, 100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000 };
        for (unsigned n = 0; n < sizeof(expected) / sizeof(expected[0]); n++)
                assert_u64_eq(backoff_delay_ms(100, 10000, n), expected[n]);

        /* The cap is reached exactly when a doubling lands on it... */
        assert_u64_eq(backoff_delay_ms(100, 800, 4), 800);
        assert_u64_eq(backoff_delay_ms(100, 800, 5), 800);
        /* ...and never overshot when it does not. */
        assert_u64_eq(backoff_delay_ms(300, 1000, 2), 600);
        assert_u64_eq(backoff_delay_ms(300, 1000, 3), 1000);
        assert_u64_eq(backoff_delay_ms(1, 1000, 10), 512);
        assert_u64_eq(backoff_delay_ms(1, 1000, 11), 1000);
}

static void test_backoff_n_zero(void **state) {
        assert_u64_eq(backoff_delay_ms(100, 10000, 0), 0);
        assert_u64_eq(backoff_delay_ms(0, 0, 0), 0);
        assert_u64_eq(backoff_delay_ms(UINT64_MAX, UINT64_MAX, 0), 0);
}

static void test_backoff_min_equals_max(void **state) {
        for (unsigned n = 1; n < 70; n++)
                assert_u64_eq(backoff_delay_ms(250, 250, n), 250);
        assert_u64_eq(backoff_delay_ms(0, 0, 1), 0);
        assert_u64_eq(backoff_delay_ms(0, 0, 1000), 0);
}

static void test_backoff_min_zero(void **state) {
        /* A zero minimum never doubles: respawn at once, every time. */
        for (unsigned n = 1; n < 100; n++)
                assert_u64_eq(backoff_delay_ms(0, 10000, n), 0);
}

/* min > max cannot come from a validated Config, but the cap still wins. */
static void test_backoff_min_above_max(void **state) {
        assert_u64_eq(backoff_delay_ms(500, 100, 1), 100);
        assert_u64_eq(backoff_delay_ms(500, 100, 7), 100);
}

static void test_backoff_huge_n(void **state) {
        assert_u64_eq(backoff_delay_ms(100, 10000, UINT_MAX), 10000);
        assert_u64_eq(backoff_delay_ms(100, 10000, 1000000), 10000);
        /* Doubling must not overflow 64 bits on the way to a huge cap. */
        assert_u64_eq(backoff_delay_ms(1, UINT64_MAX, 63), 1ULL << 62);
        assert_u64_eq(backoff_delay_ms(1, UINT64_MAX, 64), 1ULL << 63);
        assert_u64_eq(backoff_delay_ms(1, UINT64_MAX, 65), UINT64_MAX);
        assert_u64_eq(backoff_delay_ms(1, UINT64_MAX, UINT_MAX), UINT64_MAX);
        assert_u64_eq(backoff_delay_ms(3, UINT64_MAX, UINT_MAX), UINT64_MAX);
        assert_u64_eq(backoff_delay_ms(UINT64_MAX / 2 + 1, UINT64_MAX, 2), UINT64_MAX);
        assert_u64_eq(backoff_delay_ms(UINT64_MAX, UINT64_MAX, UINT_MAX), UINT64_MAX);
}

static uint64_t mono_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

/* Regression (was a bug): with min == 0, d stays 0 < max, so the loop's "d < max_ms" exit never
 * fires and it runs n - 1 times: backoff_delay_ms(0, 10000, UINT_MAX) spins
 * ~4e9 iterations (seconds) in the single-threaded master. The answer (0) is
 * right; the cost should be O(1) like for any other min. */
static void test_backoff_huge_n_min_zero_bug(void **state) {
        uint64_t start = mono_usec();
        assert_u64_eq(backoff_delay_ms(0, 10000, UINT_MAX), 0);
        uint64_t took = mono_usec() - start;
        if (took > 100000)
                fail_msg("backoff_delay_ms(0, 10000, UINT_MAX) took %llu ms, expected well under 100 ms",
                         (unsigned long long) (took / 1000));
}

/* ---- failure window ------------------------------------------------------ */

#define MS 1000ULL   /* the window is in microseconds */

static void test_window_init_done(void **state) {
        FailureWindow w;
        assert_int_eq(failure_window_init(&w, 3, 60000 * MS), 0);
        assert_non_null(w.stamps);
        assert_int_eq(w.limit, 3);
        assert_u64_eq(w.window_usec, 60000 * MS);
        assert_int_eq(w.count, 0);
        assert_int_eq(failure_window_count(&w, 0), 0);
        assert_int_eq(failure_window_count(&w, UINT64_MAX), 0);
        failure_window_done(&w);
        assert_null(w.stamps);
        failure_window_done(&w);   /* idempotent */
        assert_null(w.stamps);
}

/* Exactly `limit` failures within the window: keep going. One more: give up. */
static void test_window_limit_boundary(void **state) {
        FailureWindow w;
        assert_int_eq(failure_window_init(&w, 3, 1000 * MS), 0);
        uint64_t t0 = 5000000;
        assert_false(failure_window_record(&w, t0));
        assert_false(failure_window_record(&w, t0 + 1));
        assert_false(failure_window_record(&w, t0 + 2));
        assert_int_eq(failure_window_count(&w, t0 + 2), 3);
        assert_true(failure_window_record(&w, t0 + 3));
        assert_int_eq(failure_window_count(&w, t0 + 3), 4);
        /* Still over the limit on the next one. */
        assert_true(failure_window_record(&w, t0 + 4));
        failure_window_done(&w);
}

static void test_window_limit_one(void **state) {
        FailureWindow w;
        assert_int_eq(failure_window_init(&w, 1, 10 * MS), 0);
        assert_false(failure_window_record(&w, 100));
        assert_true(failure_window_record(&w, 100));   /* same instant */
        failure_window_done(&w);

        assert_int_eq(failure_window_init(&w, 1, 10 * MS), 0);
        assert_false(failure_window_record(&w, 0));
        assert_false(failure_window_record(&w, 10 * MS + 1));
        assert_true(failure_window_record(&w, 10 * MS + 2));
        failure_window_done(&w);
}

/* The window is inclusive: a failure exactly window_usec ago still counts,
 * one microsecond older does not. */
static void test_window_edge(void **state) {
        FailureWindow w;
        const uint64_t win = 1000 * MS;
        assert_int_eq(failure_window_init(&w, 2, win), 0);
        assert_false(failure_window_record(&w, 0));
        assert_false(failure_window_record(&w, 10));
        assert_int_eq(failure_window_count(&w, win), 2);
        assert_int_eq(failure_window_count(&w, win + 1), 1);
        assert_int_eq(failure_window_count(&w, win + 10), 1);
        assert_int_eq(failure_window_count(&w, win + 11), 0);
        /* Third failure at the very edge of the first: 3 > 2, give up. */
        assert_true(failure_window_record(&w, win));
        failure_window_done(&w);

        assert_int_eq(failure_window_init(&w, 2, win), 0);
        assert_false(failure_window_record(&w, 0));
        assert_false(failure_window_record(&w, 10));
        /* Third failure one microsecond after the first left the window. */
        assert_false(failure_window_record(&w, win + 1));
        assert_int_eq(failure_window_count(&w, win + 1), 2);
        failure_window_done(&w);
}

static void test_window_spaced_failures_never_give_up(void **state) {
        FailureWindow w;
        const uint64_t win = 60000 * MS;
        assert_int_eq(failure_window_init(&w, 1, win), 0);
        uint64_t t = 1;
        for (unsigned i = 0; i < 1000; i++, t += win + 1) {
                assert_false(failure_window_record(&w, t));
                assert_int_eq(failure_window_count(&w, t), 1);
        }
        failure_window_done(&w);

        /* limit failures in every window, forever: never more than limit. */
        assert_int_eq(failure_window_init(&w, 3, win), 0);
        t = 0;
        for (unsigned i = 0; i < 3000; i++) {
                /* 3 quick ones, then a pause longer than the window. */
                t += (i % 3 == 0) ? win + 1 : 1;
                assert_false(failure_window_record(&w, t));
        }
        failure_window_done(&w);
}

/* The ring holds limit+1 stamps; after many laps the count must still come
 * from the newest ones. */
/* An upgrade carries the window as its stamps, oldest first, and records
 * them again: the rebuilt window counts the same at every time. */
static void test_window_export_rebuilds(void **state) {
        for (unsigned n = 0; n < 12; n++) {
                FailureWindow a, b;
                uint64_t stamps[5];
                assert_int_eq(failure_window_init(&a, 4, 100), 0);
                assert_int_eq(failure_window_init(&b, 4, 100), 0);
                for (unsigned i = 0; i < n; i++)
                        (void) failure_window_record(&a, 1000 + 20 * i);
                unsigned k = failure_window_export(&a, stamps, 5);
                assert_int_eq(k, n < 5 ? n : 5);
                for (unsigned i = 1; i < k; i++)
                        assert_true(stamps[i - 1] < stamps[i]);
                if (k > 0)
                        assert_u64_eq(stamps[k - 1], 1000 + 20 * (n - 1));
                for (unsigned i = 0; i < k; i++)
                        (void) failure_window_record(&b, stamps[i]);
                for (uint64_t t = 1000; t < 1400; t += 7)
                        assert_int_eq(failure_window_count(&b, t + 20 * n), failure_window_count(&a, t + 20 * n));
                /* A smaller buffer takes the newest. */
                if (n >= 2) {
                        assert_int_eq(failure_window_export(&a, stamps, 1), 1);
                        assert_u64_eq(stamps[0], 1000 + 20 * (n - 1));
                }
                failure_window_done(&a);
                failure_window_done(&b);
        }
}

static void test_window_ring_wraparound(void **state) {
        FailureWindow w;
        const uint64_t win = 100;
        assert_int_eq(failure_window_init(&w, 4, win), 0);

        /* Fill well past capacity with failures spaced 30 apart: within a
         * 100 window ending at a failure there are 4 (t, t-30, t-60, t-90). */
        uint64_t t = 1000;
        for (unsigned i = 0; i < 57; i++, t += 30)
                assert_false(failure_window_record(&w, t));
        t -= 30;
        assert_int_eq(w.count, 5);
        assert_int_eq(failure_window_count(&w, t), 4);
        assert_int_eq(failure_window_count(&w, t + 9), 4);
        assert_int_eq(failure_window_count(&w, t + 11), 3);
        assert_int_eq(failure_window_count(&w, t + 100), 1);
        assert_int_eq(failure_window_count(&w, t + 101), 0);

        /* A burst now: 5 within the window > 4. */
        assert_true(failure_window_record(&w, t + 5));
        failure_window_done(&w);

        /* Every ring position as the head when the limit is crossed. */
        for (unsigned lap = 0; lap < 8; lap++) {
                assert_int_eq(failure_window_init(&w, 3, win), 0);
                uint64_t now = 0;
                for (unsigned i = 0; i < lap; i++, now += win + 1)
                        assert_false(failure_window_record(&w, now));
                now += win + 1;
                assert_false(failure_window_record(&w, now));
                assert_false(failure_window_record(&w, now + 1));
                assert_false(failure_window_record(&w, now + 2));
                assert_true(failure_window_record(&w, now + 3));
                assert_int_eq(failure_window_count(&w, now + 3), 4);
                failure_window_done(&w);
        }
}

static void test_window_large_limit(void **state) {
        FailureWindow w;
        assert_int_eq(failure_window_init(&w, RESTART_LIMIT_MAX, 60000 * MS), 0);
        for (unsigned i = 0; i < RESTART_LIMIT_MAX; i++)
                assert_false(failure_window_record(&w, i));
        assert_int_eq(failure_window_count(&w, RESTART_LIMIT_MAX), RESTART_LIMIT_MAX);
        assert_true(failure_window_record(&w, RESTART_LIMIT_MAX));
        failure_window_done(&w);
}

/* ---- log rate limit ------------------------------------------------------ */

static void test_ratelimit_burst_then_summary(void **state) {
        RateLimit rl = RATELIMIT_INIT(1000 * MS, 3);
        unsigned sup = 99;
        for (unsigned i = 0; i < 3; i++) {
                assert_true(ratelimit_below(&rl, 5 * MS + i, &sup));
                assert_int_eq(sup, 0);
        }
        for (unsigned i = 0; i < 10; i++)
                assert_false(ratelimit_below(&rl, 500 * MS, &sup));
        /* The last microsecond of the interval is still inside it. */
        assert_false(ratelimit_below(&rl, 1005 * MS - 1, NULL));
        /* The next interval lets events through and reports the 11 refused. */
        assert_true(ratelimit_below(&rl, 1005 * MS, &sup));
        assert_int_eq(sup, 11);
        assert_true(ratelimit_below(&rl, 1006 * MS, &sup));
        assert_int_eq(sup, 0);
}

static void test_ratelimit_time_zero_and_zero_burst(void **state) {
        RateLimit rl = RATELIMIT_INIT(10, 1);
        assert_true(ratelimit_below(&rl, 0, NULL));
        assert_false(ratelimit_below(&rl, 0, NULL));
        RateLimit none = RATELIMIT_INIT(10, 0);
        unsigned sup;
        assert_false(ratelimit_below(&none, 100, &sup));
        assert_false(ratelimit_below(&none, 200, &sup));
        assert_int_eq(sup, 1);
}

/* ---- recycle.max_age_ms -------------------------------------------------- */

static void test_recycle_age_deadline_bounds_and_spread(void **state) {
        const uint64_t start = 5000000, age = 1500000;   /* 1.5 s, as the integration test */
        uint64_t lo = UINT64_MAX, hi = 0;
        unsigned buckets[10] = { 0 };

        /* Neighbouring pids: the draws must not cluster. */
        for (uint64_t pid = 1000; pid < 3000; pid++) {
                uint64_t d = recycle_age_deadline(start, age, pid);
                assert_true(d >= start + age);
                assert_true(d < start + age + age / 10);
                lo = d < lo ? d : lo;
                hi = d > hi ? d : hi;
                buckets[(d - start - age) * 10 / (age / 10)]++;
                /* The same worker, the same deadline, at every check. */
                assert_u64_eq(recycle_age_deadline(start, age, pid), d);
        }
        /* Nearly the whole window is used, and every tenth of it gets a
         * fair share (200 expected each). */
        assert_true(hi - lo > age / 10 * 9 / 10);
        for (unsigned i = 0; i < 10; i++)
                assert_true(buckets[i] > 100 && buckets[i] < 300);
}

static void test_recycle_age_deadline_small_and_large(void **state) {
        /* Under 10 us there is no room for jitter: exactly max_age. */
        assert_u64_eq(recycle_age_deadline(7, 9, 12345), 16);
        assert_u64_eq(recycle_age_deadline(0, 0, 1), 0);
        /* The largest value config.c accepts does not overflow. */
        uint64_t age = (1ULL << 52) * 1000, start = 1ULL << 40;
        uint64_t d = recycle_age_deadline(start, age, 99);
        assert_true(d >= start + age && d < start + age + age / 10);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_backoff_doubling_and_cap),
                cmocka_unit_test(test_recycle_age_deadline_bounds_and_spread),
                cmocka_unit_test(test_recycle_age_deadline_small_and_large),
                cmocka_unit_test(test_backoff_n_zero),
                cmocka_unit_test(test_backoff_min_equals_max),
                cmocka_unit_test(test_backoff_min_zero),
                cmocka_unit_test(test_backoff_min_above_max),
                cmocka_unit_test(test_backoff_huge_n),
                cmocka_unit_test(test_backoff_huge_n_min_zero_bug),
                cmocka_unit_test(test_window_init_done),
                cmocka_unit_test(test_window_limit_boundary),
                cmocka_unit_test(test_window_limit_one),
                cmocka_unit_test(test_window_edge),
                cmocka_unit_test(test_window_spaced_failures_never_give_up),
                cmocka_unit_test(test_window_ring_wraparound),
                cmocka_unit_test(test_window_export_rebuilds),
                cmocka_unit_test(test_window_large_limit),
                cmocka_unit_test(test_ratelimit_burst_then_summary),
                cmocka_unit_test(test_ratelimit_time_zero_and_zero_burst),
        };
        return cmocka_run_group_tests_name("policy", tests, NULL, NULL);
}
