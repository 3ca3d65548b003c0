/* Small language helpers shared by every corral component.
 *
 * Kept deliberately short: cleanup attributes for the handful of resource
 * types we own, TAKE_PTR/TAKE_FD to hand ownership on, and array sizing.
 * Nothing here depends on libuv or libsystemd. */
#pragma once

#include <errno.h>
#include <stdlib.h>

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _noreturn_ __attribute__((noreturn))

/* Move ownership out of a variable that has a cleanup attribute. */
#define TAKE_PTR(p)                     \
        ({                              \
                __typeof__(p) _p = (p); \
                (p) = NULL;             \
                _p;                     \
        })
#define TAKE_FD(fd)                  \
        ({                           \
                int _fd = (fd);      \
                (fd) = -EBADF;       \
                _fd;                 \
        })

static inline void freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(freep)

/* Token for token glibc's <sys/param.h> definitions (uv.h pulls that
 * header in), so either may come first without a redefinition warning. */
#define MIN(a,b) (((a)<(b))?(a):(b))
#define MAX(a,b) (((a)>(b))?(a):(b))

#define USEC_PER_MSEC 1000ULL
#define USEC_PER_SEC 1000000ULL
