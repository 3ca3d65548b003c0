/* fuzz-http: libFuzzer harness for corral-hello's HTTP parser
 * (src/hello/http.c), driven the way main.c's on_read() drives it: skip
 * the body of the previous request and empty lines, measure a head with
 * http_head_length(), parse it with http_parse_request(), answer it with
 * http_format_response(), and go on with the next pipelined request.
 *
 * Properties: a head length lies within the input and ends the head with
 * CRLF CRLF; parsing says 0 or -EBADMSG; a delay is clamped; the answer
 * to any parsed request fits the buffer main.c gives it. */
#include <errno.h>
#include <stdint.h>

#include "fuzz.h"
#include "http.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
        char *in = fuzz_memdup(data, size);
        size_t off = 0;
        uint64_t body_left = 0;

        for (;;) {
                size_t n = body_left < size - off ? (size_t) body_left : size - off;
                off += n;
                body_left -= n;
                while (size - off >= 2 && in[off] == '\r' && in[off + 1] == '\n')
                        off += 2;
                if (off == size)
                        break;
                size_t hlen = http_head_length(in + off, size - off);
                if (hlen == 0)
                        break;
                FUZZ_CHECK(hlen >= 4 && hlen <= size - off, "head length %zu of %zu bytes", hlen, size - off);
                FUZZ_CHECK(memcmp(in + off + hlen - 4, "\r\n\r\n", 4) == 0, "head does not end with CRLF CRLF");

                HttpRequest req;
                int r = http_parse_request(in + off, hlen, &req);
                FUZZ_CHECK(r == 0 || r == -EBADMSG, "r=%d", r);
                if (r < 0)
                        break;
                FUZZ_CHECK(!req.has_delay || req.delay_ms <= HTTP_DELAY_MAX_MS, "delay %llu",
                           (unsigned long long) req.delay_ms);
                HttpConnection conn = http_connection_for(&req, (data[0] & 1) != 0);
                FUZZ_CHECK(conn >= 0 && conn < _HTTP_CONNECTION_MAX, "connection %d", (int) conn);

                char date[32], out[512];
                http_format_date(date, sizeof(date), 0);
                ssize_t k = http_format_response(out, sizeof(out), "200 OK", date, 1234, 7, conn,
                                                 req.head ? "" : "Hello from corral\n");
                FUZZ_CHECK(k > 0 && (size_t) k < sizeof(out), "response %zd", k);
                off += hlen;
                body_left = req.content_length;
        }
        free(in);
        return 0;
}
