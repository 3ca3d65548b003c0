/* policy: backoff and failure rate limit. See policy.h. */
#include <errno.h>
#include <stdlib.h>

#include "macros.h"
#include "policy.h"

uint64_t backoff_delay_ms(uint64_t min_ms, uint64_t max_ms, unsigned n) {
        if (n == 0)
                return 0;
        uint64_t d = min_ms;
        for (unsigned i = 1; i < n && d > 0 && d < max_ms; i++)
                d = d > max_ms / 2 ? max_ms : d * 2;
        /* A zero minimum never doubles; the cap still applies. */
        return d < max_ms ? d : max_ms;
}

/* splitmix64's finaliser: every bit of x affects every bit of the result,
 * so neighbouring pids land far apart. */
static uint64_t mix64(uint64_t x) {
        x += 0x9e3779b97f4a7c15ULL;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
        return x ^ (x >> 31);
}

uint64_t recycle_age_deadline(uint64_t start_usec, uint64_t max_age_usec, uint64_t seed) {
        uint64_t spread = max_age_usec / 10;
        return start_usec + max_age_usec + (spread ? mix64(seed) % spread : 0);
}

int failure_window_init(FailureWindow *w, unsigned limit, uint64_t window_usec) {
        *w = (FailureWindow) { .limit = limit, .window_usec = window_usec };
        w->stamps = calloc((size_t) limit + 1, sizeof(uint64_t));
        return w->stamps ? 0 : -ENOMEM;
}

void failure_window_done(FailureWindow *w) {
        free(w->stamps);
        w->stamps = NULL;
}

unsigned failure_window_count(const FailureWindow *w, uint64_t now_usec) {
        unsigned cap = w->limit + 1, n = 0;
        for (unsigned i = 0; i < w->count; i++) {
                uint64_t t = w->stamps[(w->head + cap - 1 - i) % cap];
                if (now_usec - t > w->window_usec)
                        break;
                n++;
        }
        return n;
}

bool failure_window_record(FailureWindow *w, uint64_t now_usec) {
        unsigned cap = w->limit + 1;
        w->stamps[w->head] = now_usec;
        w->head = (w->head + 1) % cap;
        if (w->count < cap)
                w->count++;
        return failure_window_count(w, now_usec) > w->limit;
}

unsigned failure_window_export(const FailureWindow *w, uint64_t *ret, unsigned max) {
        unsigned cap = w->limit + 1, n = MIN(w->count, max);
        /* The newest is just before head; the n newest, oldest first. */
        for (unsigned k = 0; k < n; k++)
                ret[k] = w->stamps[(w->head + cap - n + k) % cap];
        return n;
}

bool ratelimit_below(RateLimit *rl, uint64_t now_usec, unsigned *ret_suppressed) {
        unsigned suppressed = 0;

        if (!rl->started || now_usec - rl->begin >= rl->interval_usec) {
                suppressed = rl->suppressed;
                rl->started = true;
                rl->begin = now_usec;
                rl->n = 0;
                rl->suppressed = 0;
        }
        if (ret_suppressed)
                *ret_suppressed = suppressed;
        if (rl->n < rl->burst) {
                rl->n++;
                return true;
        }
        rl->suppressed++;
        return false;
}
