/* policy: the arithmetic of restarts — backoff delays and the instance-wide
 * failure rate limit (SPEC §4). Pure and deterministic: time is passed in. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#define RESTART_LIMIT_MAX 10000

/* Delay before respawning a slot after its n-th consecutive failure (n >= 1):
 * min, doubling per failure, capped at max. n == 0 gives 0. */
uint64_t backoff_delay_ms(uint64_t min_ms, uint64_t max_ms, unsigned n);

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
