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
