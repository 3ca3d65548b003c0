/* policy: the arithmetic of restarts — backoff delays and the instance-wide
 * failure rate limit (SPEC §4). Pure and deterministic: time is passed in. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#define RESTART_LIMIT_MAX 10000

/* Delay before respawning a slot after its n-th consecutive failure (n >= 1):
 * min, doubling per failure, capped at max. n == 0 gives 0. */
uint64_t backoff_delay_ms(uint64_t min_ms, uint64_t max_ms, unsigned n);

/* recycle.max_age_ms: the smallest value config.c accepts (besides 0). */
#define RECYCLE_MAX_AGE_MIN_MS 1000

/* When a worker started at start_usec is due for recycling under
 * recycle.max_age_ms = max_age_usec: in [start + max_age, start +
 * max_age * 1.1), the offset drawn from seed (the worker's pid, say).
 *
 * Why jitter: workers started together (at start-up, by a reload) would
 * otherwise all come due in the same instant and be replaced back to back,
 * every max_age, their warm-up costs (JIT, caches) landing together. A
 * fresh draw per worker spreads them over a tenth of max_age, and since
 * every replacement draws again, their phases drift further apart with
 * each round instead of staying locked. Why a hash rather than random():
 * the same worker gets the same deadline at every check, after a reload
 * and across an upgrade (its pid and start time are carried), with no
 * state to store; and tests can check the bounds exactly. */
uint64_t recycle_age_deadline(uint64_t start_usec, uint64_t max_age_usec, uint64_t seed);

/* Remembers the times of the last limit+1 failures. */
typedef struct FailureWindow {
        uint64_t *stamps;   /* ring of capacity limit+1 */
        unsigned limit;
        uint64_t window_usec;
        unsigned head, count;
} FailureWindow;

/* Returns 0 or -ENOMEM. limit >= 1. */
int failure_window_init(FailureWindow *w, unsigned limit, uint64_t window_usec);
void failure_window_done(FailureWindow *w);

/* Record a failure at now_usec. Returns true when more than `limit`
 * failures fall within the window ending now: time to give up. */
bool failure_window_record(FailureWindow *w, uint64_t now_usec);

/* Failures currently inside the window ending at now_usec. */
unsigned failure_window_count(const FailureWindow *w, uint64_t now_usec);

/* Copy the recorded failure times, oldest first, into ret (room for max);
 * returns how many. failure_window_record() each, in order, rebuilds the
 * window (an upgrade carries it so). */
unsigned failure_window_export(const FailureWindow *w, uint64_t *ret, unsigned max);

/* A log rate limit, as journald's: at most `burst` events per
 * `interval_usec`; the rest are counted. Zero-initialise the counters. */
typedef struct RateLimit {
        uint64_t interval_usec;
        unsigned burst;
        uint64_t begin;            /* start of the current interval */
        bool started;              /* begin is set */
        unsigned n;                /* events let through in it */
        unsigned suppressed;       /* events refused in it */
} RateLimit;

#define RATELIMIT_INIT(interval, b) ((RateLimit) { .interval_usec = (interval), .burst = (b) })

/* Should an event at now_usec be let through? When it starts a new interval
 * and the previous one refused events, *ret_suppressed (may be NULL) gets
 * how many, so the caller can say "suppressed N" once; else 0. */
bool ratelimit_below(RateLimit *rl, uint64_t now_usec, unsigned *ret_suppressed);
