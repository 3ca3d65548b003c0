/* notify-msg: parser for sd_notify datagrams. See notify-msg.h. */
#include <errno.h>
#include <string.h>

#include "notify-msg.h"
#include "util.h"

static bool line_is(const char *line, size_t n, const char *lit) {
        size_t l = strlen(lit);
        return n == l && memcmp(line, lit, l) == 0;
}

int notify_msg_parse(const char *buf, size_t len, NotifyMsg *ret) {
        NotifyMsg m = { .errno_value = -1 };
        unsigned n_valid = 0;

        if (len == 0 || memchr(buf, 0, len))
                return -EINVAL;

        for (size_t pos = 0; pos < len;) {
                const char *line = buf + pos;
                const char *nl = memchr(line, '\n', len - pos);
                size_t n = nl ? (size_t) (nl - line) : len - pos;
                pos += n + 1;

                if (n == 0)
                        continue;
                const char *eq = memchr(line, '=', n);
                if (!eq || eq == line) {
                        /* Not an assignment; sd_notify senders never produce these. */
                        m.n_unknown++;
                        continue;
                }
                n_valid++;

                if (line_is(line, n, "READY=1"))
                        m.ready = true;
                else if (line_is(line, n, "STOPPING=1"))
                        m.stopping = true;
                else if (line_is(line, n, "RELOADING=1"))
                        m.reloading = true;
                else if (line_is(line, n, "WATCHDOG=1"))
                        m.watchdog = true;
                else if (line_is(line, n, "WATCHDOG=trigger"))
                        m.watchdog_trigger = true;
                else if (n >= 7 && memcmp(line, "STATUS=", 7) == 0) {
                        size_t vl = MIN(n - 7, (size_t) NOTIFY_STATUS_MAX - 1);
                        memcpy(m.status, line + 7, vl);
                        m.status[vl] = 0;
                        m.has_status = true;
                } else if (n >= 6 && memcmp(line, "ERRNO=", 6) == 0) {
                        char tmp[16];
                        uint64_t v;
                        size_t vl = n - 6;
                        if (vl > 0 && vl < sizeof(tmp)) {
                                memcpy(tmp, line + 6, vl);
                                tmp[vl] = 0;
                                if (parse_u64(tmp, &v) >= 0 && v < 4096)
                                        m.errno_value = (int) v;
                        }
                } else
                        m.n_unknown++;
        }

        if (n_valid == 0)
                return -EINVAL;
        *ret = m;
        return 0;
}
