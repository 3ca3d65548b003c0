/* http: request parsing and response formatting for corral-hello. Pure:
 * see http.h. Only what a hello-world server needs, but strict where
 * leniency is dangerous (RFC 9112 §5: no whitespace before the colon, no
 * line folding; conflicting Content-Length values rejected). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "http.h"

/* RFC 9110 §5.6.2 token characters. */
static bool is_tchar(unsigned char c) {
        if (c >= '0' && c <= '9')
                return true;
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
                return true;
        return c && strchr("!#$%&'*+-.^_`|~", c);
}

static bool token_eq(const char *p, size_t n, const char *lit) {
        return strlen(lit) == n && strncasecmp(p, lit, n) == 0;
}

size_t http_head_length(const char *p, size_t n) {
        const char *end = memmem(p, n, "\r\n\r\n", 4);
        return end ? (size_t) (end + 4 - p) : 0;
}

/* "/delay/<ms>", optionally followed by a query. */
static bool parse_delay(const char *t, size_t n, uint64_t *ret_ms) {
        static const char prefix[] = "/delay/";
        const size_t plen = sizeof(prefix) - 1;
        uint64_t ms = 0;
        size_t i;

        if (n <= plen || memcmp(t, prefix, plen) != 0)
                return false;
        for (i = plen; i < n && t[i] >= '0' && t[i] <= '9'; i++)
                if (ms <= HTTP_DELAY_MAX_MS)
                        ms = ms * 10 + (uint64_t) (t[i] - '0');
        if (i == plen || (i < n && t[i] != '?'))
                return false;
        *ret_ms = ms < HTTP_DELAY_MAX_MS ? ms : HTTP_DELAY_MAX_MS;
        return true;
}

/* The comma-separated Connection options (RFC 9110 §7.6.1). */
static void parse_connection(const char *v, size_t n, bool *close, bool *keep_alive) {
        size_t i = 0;

        while (i < n) {
                size_t start, end;

                while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
                        i++;
                start = i;
                while (i < n && v[i] != ',')
                        i++;
                end = i;
                while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
                        end--;
                if (token_eq(v + start, end - start, "close"))
                        *close = true;
                else if (token_eq(v + start, end - start, "keep-alive"))
                        *keep_alive = true;
        }
}

static int parse_content_length(const char *v, const char *vend, uint64_t *ret) {
        uint64_t cl = 0;

        if (v == vend)
                return -EBADMSG;
        for (const char *c = v; c < vend; c++) {
                if (*c < '0' || *c > '9' || cl > (UINT64_MAX - 9) / 10)
                        return -EBADMSG;
                cl = cl * 10 + (uint64_t) (*c - '0');
        }
        *ret = cl;
        return 0;
}

int http_parse_request(const char *p, size_t n, HttpRequest *ret) {
        const char *end, *line_end, *sp, *target;
        bool opt_close = false, opt_keep_alive = false, have_cl = false, chunked = false;
        HttpRequest r = {};

        if (n < 4 || memcmp(p + n - 4, "\r\n\r\n", 4) != 0)
                return -EBADMSG;
        end = p + n - 2;        /* the final empty line */

        /* Request line: method SP request-target SP HTTP-version CRLF. */
        line_end = memchr(p, '\r', (size_t) (end - p));
        if (!line_end || line_end[1] != '\n')
                return -EBADMSG;
        for (sp = p; sp < line_end && is_tchar((unsigned char) *sp); sp++)
                ;
        if (sp == p || sp == line_end || *sp != ' ')
                return -EBADMSG;
        /* Methods are case-sensitive (RFC 9110 §9.1). */
        r.head = sp - p == 4 && memcmp(p, "HEAD", 4) == 0;
        target = sp + 1;
        for (sp = target; sp < line_end && (unsigned char) *sp > ' ' && *sp != 0x7f; sp++)
                ;
        if (sp == target || sp == line_end || *sp != ' ')
                return -EBADMSG;
        if (line_end - (sp + 1) != 8 || memcmp(sp + 1, "HTTP/1.", 7) != 0 || sp[8] < '0' || sp[8] > '9')
                return -EBADMSG;
        r.http10 = sp[8] == '0';
        r.has_delay = parse_delay(target, (size_t) (sp - target), &r.delay_ms);

        /* Header fields: name ":" OWS value OWS CRLF. */
        for (p = line_end + 2; p < end; p = line_end + 2) {
                const char *name = p, *colon, *v, *vend;
                size_t name_len;

                line_end = memchr(p, '\r', (size_t) (end - p));
                if (!line_end || line_end[1] != '\n')
                        return -EBADMSG;
                for (colon = name; colon < line_end && is_tchar((unsigned char) *colon); colon++)
                        ;
                /* Also rejects obsolete line folding and whitespace before
                 * the colon, both of which RFC 9112 §5 says to reject. */
                if (colon == name || colon == line_end || *colon != ':')
                        return -EBADMSG;
                name_len = (size_t) (colon - name);
                for (v = colon + 1; v < line_end && (*v == ' ' || *v == '\t'); v++)
                        ;
                for (vend = line_end; vend > v && (vend[-1] == ' ' || vend[-1] == '\t'); vend--)
                        ;
                for (const char *c = v; c < vend; c++)
                        if (((unsigned char) *c < ' ' && *c != '\t') || *c == 0x7f)
                                return -EBADMSG;

                if (token_eq(name, name_len, "connection"))
                        parse_connection(v, (size_t) (vend - v), &opt_close, &opt_keep_alive);
                else if (token_eq(name, name_len, "content-length")) {
                        uint64_t cl;

                        if (parse_content_length(v, vend, &cl) < 0)
                                return -EBADMSG;
                        /* Differing duplicates are a smuggling vector. */
                        if (have_cl && cl != r.content_length)
                                return -EBADMSG;
                        have_cl = true;
                        r.content_length = cl;
                } else if (token_eq(name, name_len, "transfer-encoding"))
                        chunked = true;
        }

        r.keep_alive = !opt_close && (!r.http10 || opt_keep_alive);
        /* We do not decode chunked bodies, so we cannot find where the next
         * request starts: answer this one and close (RFC 9112 §6.3). */
        if (chunked) {
                r.keep_alive = false;
                r.content_length = 0;
        }
        *ret = r;
        return 0;
}

HttpConnection http_connection_for(const HttpRequest *req, bool stopping) {
        if (!req->keep_alive || stopping)
                return HTTP_CLOSE;
        return req->http10 ? HTTP_KEEP_10 : HTTP_KEEP;
}

ssize_t http_format_response(char *buf, size_t size, const char *status, const char *date, pid_t pid, int slot,
                             HttpConnection conn, const char *body) {
        static const char *const conn_hdr[_HTTP_CONNECTION_MAX] = {
                [HTTP_KEEP] = "",
                [HTTP_KEEP_10] = "Connection: keep-alive\r\n",
                [HTTP_CLOSE] = "Connection: close\r\n",
        };
        char worker[32] = "";
        int n;

        if (slot >= 0)
                snprintf(worker, sizeof(worker), "X-Worker: %d\r\n", slot);
        n = snprintf(buf, size,
                     "HTTP/1.1 %s\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: %zu\r\n"
                     "%s%s%s"
                     "X-Worker-Pid: %d\r\n"
                     "%s"
                     "%s"
                     "\r\n"
                     "%s",
                     status, strlen(body), date[0] ? "Date: " : "", date, date[0] ? "\r\n" : "", (int) pid, worker,
                     conn_hdr[conn], body);
        if (n < 0 || (size_t) n >= size)
                return -ENOBUFS;
        return n;
}

void http_format_date(char *buf, size_t size, time_t t) {
        struct tm tm;

        /* The C locale's %a and %b are the English names IMF-fixdate
         * requires; corral-hello never calls setlocale(). */
        if (!gmtime_r(&t, &tm) || strftime(buf, size, "%a, %d %b %Y %H:%M:%S GMT", &tm) == 0)
                buf[0] = 0;
}
