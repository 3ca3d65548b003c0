/* fuzz-ipc-json-diff: differential libFuzzer harness, the IPC scanner
 * (src/proto/ipc-msg.c) against cJSON, on the same bytes.
 *
 * Why: the master accepts a worker's line with its own scanner and hands
 * "data" on as raw text, but the `messages` command (commands.c) and
 * corralctl read it back with cJSON. Whatever the scanner lets through
 * and cJSON refuses silently disappears (issue 19, item 7: a lone
 * surrogate "\uDFFF"). So:
 *
 *   1. the scanner accepts a value  =>  cJSON accepts it;
 *   2. the scanner accepts a worker's message line  =>  cJSON accepts the
 *      whole line as an object, and "data" on its own. (Not that cJSON
 *      sees the same "type": the scanner matches keys byte for byte, so
 *      it ignores "typ\u0065" as an unknown key where cJSON decodes it;
 *      nothing reads a worker's line with cJSON, only its data.)
 *   3. cJSON accepts a value  =>  the scanner accepts what cJSON prints
 *      of it (the `send` command prints "data" so, for ipc_msg_format_from()), up to
 *      the scanner's documented depth limit;
 *   4. on the language both claim to speak the verdicts are equal, both
 *      ways. cJSON is knowingly more lenient than RFC 8259, which the
 *      scanner implements, in five places, and inputs that use them are
 *      left to 1-3: "\u" followed by anything but four hex digits
 *      (cJSON's parse_hex4() reads that as U+0000); bytes below 0x20
 *      (cJSON takes them raw inside strings, and as whitespace outside,
 *      where RFC 8259 has only TAB LF CR and space); numbers (cJSON takes
 *      what strtod() takes: "01", "1.", "-.5"); a UTF-8 byte order mark
 *      before the value (cJSON skips it); and nesting deeper than
 *      IPC_JSON_DEPTH_MAX.
 *
 * A finding prints both verdicts and the scanner's reason. */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>

#include "fuzz.h"
#include "ipc-msg.h"

static bool cjson_accepts(const char *text, size_t len) {
        /* As control.c and config.c call it: the length includes the
         * terminating NUL, which require_null_terminated then insists on. */
        char *copy = fuzz_strndup((const unsigned char *) text, len);
        cJSON *j = cJSON_ParseWithLengthOpts(copy, len + 1, NULL, true);
        free(copy);
        cJSON_Delete(j);
        return j != NULL;
}

static unsigned depth_of(const cJSON *j) {
        unsigned d = 0;
        for (const cJSON *c = j->child; c; c = c->next) {
                unsigned k = depth_of(c);
                if (k > d)
                        d = k;
        }
        return (cJSON_IsArray(j) || cJSON_IsObject(j)) ? d + 1 : 0;
}

/* Whether the input stays inside the language both parsers should agree
 * on (4 above). Lexical: strings are skipped with their escapes, and
 * brackets are counted outside them. */
static bool in_common_language(const unsigned char *p, size_t n) {
        bool in_string = false, escaped = false;
        unsigned depth = 0, max_depth = 0;

        if (n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
                return false;
        for (size_t i = 0; i < n; i++) {
                unsigned char c = p[i];
                if (c < 0x20 && (in_string || (c != '\t' && c != '\n' && c != '\r')))
                        return false;
                if (in_string) {
                        if (escaped) {
                                escaped = false;
                                if (c == 'u')
                                        for (size_t k = 1; k <= 4; k++)
                                                if (i + k >= n || !isxdigit(p[i + k]))
                                                        return false;
                        } else if (c == '\\')
                                escaped = true;
                        else if (c == '"')
                                in_string = false;
                        continue;
                }
                if (c == '"')
                        in_string = true;
                else if (c == '-' || c == '+' || c == '.' || (c >= '0' && c <= '9'))
                        return false;
                else if (c == '[' || c == '{') {
                        if (++depth > max_depth)
                                max_depth = depth;
                } else if ((c == ']' || c == '}') && depth > 0)
                        depth--;
        }
        return max_depth <= IPC_JSON_DEPTH_MAX;
}

static void check_value(const unsigned char *data, size_t size) {
        char *text = fuzz_memdup(data, size);
        const char *reason = NULL;
        bool scanner = ipc_json_validate(text, size, &reason) == 0;
        bool cjson = cjson_accepts(text, size);

        FUZZ_CHECK(!scanner || cjson, "the scanner accepts a value cJSON refuses");
        if (in_common_language(data, size))
                FUZZ_CHECK(scanner == cjson, "scanner %s (%s), cJSON %s", scanner ? "accepts" : "refuses",
                           reason ? reason : "-", cjson ? "accepts" : "refuses");

        if (cjson) {
                char *copy = fuzz_strndup(data, size);
                cJSON *j = cJSON_ParseWithLengthOpts(copy, size + 1, NULL, true);
                char *printed = j ? cJSON_PrintUnformatted(j) : NULL;
                if (printed && depth_of(j) <= IPC_JSON_DEPTH_MAX) {
                        reason = NULL;
                        FUZZ_CHECK(ipc_json_validate(printed, strlen(printed), &reason) == 0,
                                   "the scanner refuses cJSON's own output \"%.200s\": %s", printed, reason);
                }
                free(printed);
                cJSON_Delete(j);
                free(copy);
        }
        free(text);
}

static void check_line(const unsigned char *data, size_t size) {
        char *line = fuzz_memdup(data, size);
        IpcMessage m;
        if (ipc_msg_parse_worker_line(line, size, &m, NULL) == 0) {
                char *copy = fuzz_strndup(data, size);
                cJSON *j = cJSON_ParseWithLengthOpts(copy, size + 1, NULL, true);
                FUZZ_CHECK(cJSON_IsObject(j), "the scanner accepts a line cJSON refuses");
                FUZZ_CHECK(cjson_accepts(m.data, m.data_len), "cJSON refuses the data \"%.*s\"",
                           (int) (m.data_len < 200 ? m.data_len : 200), m.data);
                cJSON_Delete(j);
                free(copy);
        }
        free(line);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
        check_value(data, size);
        check_line(data, size);
        return 0;
}
