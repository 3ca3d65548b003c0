/* fuzz-listen-addr: libFuzzer harness for listen_addr_parse() and
 * fdname_is_valid() (src/proto/listen-addr.c), which read `listen`
 * entries from the config file and from --listen.
 *
 * Properties beyond "no sanitizer finding": a failure always says why; a
 * success gives a known family, an address length that fits, a valid or
 * empty name, and a terminated display text that parses back to the same
 * address (corralctl shows it, and an upgrade's state carries it). */
#include <errno.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "fuzz.h"
#include "listen-addr.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
        char *s = fuzz_strndup(data, size);
        ListenAddr a, b;
        const char *reason = NULL;

        (void) fdname_is_valid(s);
        int r = listen_addr_parse(s, &a, &reason);
        if (r < 0) {
                FUZZ_CHECK(r == -EINVAL, "r=%d", r);
                FUZZ_CHECK(reason && *reason, "a failure without a reason");
                free(s);
                return 0;
        }
        FUZZ_CHECK(r == 0, "r=%d", r);
        int family = a.addr.ss_family;
        FUZZ_CHECK(family == AF_INET || family == AF_INET6 || family == AF_UNIX, "family %d", family);
        FUZZ_CHECK(a.addrlen > 0 && a.addrlen <= sizeof(a.addr), "addrlen %u", (unsigned) a.addrlen);
        FUZZ_CHECK(memchr(a.name, 0, sizeof(a.name)), "name not terminated");
        FUZZ_CHECK(a.name[0] == 0 || fdname_is_valid(a.name), "invalid name \"%s\" accepted", a.name);
        FUZZ_CHECK(memchr(a.display, 0, sizeof(a.display)) && a.display[0], "display empty or not terminated");

        /* The display text is an address of the same syntax. */
        reason = NULL;
        r = listen_addr_parse(a.display, &b, &reason);
        FUZZ_CHECK(r == 0, "display \"%s\" of \"%s\" does not parse back: %s", a.display, s, reason);
        FUZZ_CHECK(b.addrlen == a.addrlen && memcmp(&b.addr, &a.addr, a.addrlen) == 0,
                   "display \"%s\" of \"%s\" parses to another address", a.display, s);
        free(s);
        return 0;
}
