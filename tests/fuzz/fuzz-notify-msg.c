/* fuzz-notify-msg: libFuzzer harness for notify_msg_parse()
 * (src/proto/notify-msg.c): the payload of every datagram that reaches
 * corrald's notify socket, from a worker or (issue 19) anyone else.
 *
 * Properties: the input is read only within its length (an exact-size
 * copy, so ASan sees an overread); only 0 or -EINVAL; on success STATUS=
 * is kept terminated within its buffer, and ERRNO= is -1 or >= 0. */
#include <errno.h>

#include "fuzz.h"
#include "notify-msg.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
        char *buf = fuzz_memdup(data, size);
        NotifyMsg m;

        int r = notify_msg_parse(buf, size, &m);
        FUZZ_CHECK(r == 0 || r == -EINVAL, "r=%d", r);
        if (r == 0) {
                FUZZ_CHECK(!m.has_status || memchr(m.status, 0, sizeof(m.status)), "STATUS= not terminated");
                FUZZ_CHECK(m.errno_value >= -1, "errno_value %d", m.errno_value);
        }
        free(buf);
        return 0;
}
