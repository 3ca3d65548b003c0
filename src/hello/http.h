/* http: the little HTTP/1.1 corral-hello speaks, as pure functions (no
 * libuv, no I/O, no logging), so the parser can be unit-tested alone
 * (tests/unit/test-http.c).
 *
 * A request is parsed in place from the bytes a connection received: find
 * the end of its head with http_head_length(), parse it with
 * http_parse_request(), skip content_length body bytes. Responses are
 * formatted whole by http_format_response(). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* GET /delay/<ms> waits at most this long. */
#define HTTP_DELAY_MAX_MS 3600000ULL

/* What corral-hello needs to know about one request. */
typedef struct HttpRequest {
        bool keep_alive;        /* the connection may carry another request */
        bool http10;            /* HTTP/1.0: keep-alive must be said in the response */
        bool head;              /* HEAD: no body in the response */
        bool has_delay;         /* GET /delay/<ms> */
        uint64_t delay_ms;      /* clamped to HTTP_DELAY_MAX_MS */
        uint64_t content_length;
} HttpRequest;

/* Length of the request head at p[0..n), up to and including the empty
 * line that ends it ("\r\n\r\n"); 0 when it is not complete yet. */
size_t http_head_length(const char *p, size_t n);

/* Parse one request head (p[0..n), as measured by http_head_length()).
 * Returns 0 and fills *ret, or -EBADMSG when it is malformed: answer 400
 * and close. A chunked body cannot be skipped by this parser, so such a
 * request is answered and its connection closed (keep_alive false). */
int http_parse_request(const char *p, size_t n, HttpRequest *ret);

/* The Connection header a response carries. */
typedef enum HttpConnection {
        HTTP_KEEP,              /* HTTP/1.1 persistent: no header needed */
        HTTP_KEEP_10,           /* "Connection: keep-alive", for an HTTP/1.0 client that asked */
        HTTP_CLOSE,             /* "Connection: close" */
        _HTTP_CONNECTION_MAX,
} HttpConnection;

/* Which Connection header answers req; stopping forces a close. */
HttpConnection http_connection_for(const HttpRequest *req, bool stopping);

/* Format a whole response into buf: the status line ("200 OK"), Date
 * (an IMF-fixdate, or none when date is empty), X-Worker-Pid, X-Worker
 * (left out when slot < 0), the Connection header, then body. Returns the
 * length, or -ENOBUFS when it does not fit in size bytes. */
ssize_t http_format_response(char *buf, size_t size, const char *status, const char *date, pid_t pid, int slot,
                             HttpConnection conn, const char *body);

/* Write t's IMF-fixdate (RFC 9110 §5.6.7) into buf[size >= 30]; "" on failure. */
void http_format_date(char *buf, size_t size, time_t t);
