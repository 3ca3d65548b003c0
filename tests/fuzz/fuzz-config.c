/* fuzz-config: libFuzzer harness for config_build() (src/corrald/config.c)
 * on a file's text, given through ConfigOverrides.text: what `corrald
 * --config`, `--check-config`, a reload and an upgrade all parse.
 *
 * Properties, from config.h: a failure is -EINVAL with one message that
 * names the file, or -ENOMEM, which may come without one. A success is a Config with
 * a command, a worker count in range, terminated listen addresses and
 * the text it was built from; config_check_supported() and
 * config_worker_count() accept whatever config_build() built. */
#include <errno.h>

#include "config.h"
#include "fuzz.h"

#define FUZZ_PATH "fuzz.json"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
        char *text = fuzz_strndup(data, size);
        ConfigOverrides o = { .path = FUZZ_PATH, .text = text };
        Config *c = NULL;
        char *error = NULL;

        int r = config_build(&o, &c, &error);
        if (r < 0) {
                FUZZ_CHECK(!c, "a Config on failure");
                FUZZ_CHECK(r == -ENOMEM || error, "r=%d without a message", r);
                FUZZ_CHECK(!error || strncmp(error, FUZZ_PATH ": ", strlen(FUZZ_PATH ": ")) == 0,
                           "message \"%s\" does not name the file", error);
                FUZZ_CHECK(r == -EINVAL || r == -ENOMEM, "r=%d (%s)", r, error);
                free(error);
                free(text);
                return 0;
        }
        FUZZ_CHECK(r == 0 && c && !error, "r=%d", r);
        FUZZ_CHECK(c->exec && c->exec[0], "no command");
        FUZZ_CHECK(c->workers <= CORRAL_WORKERS_MAX, "workers %u", c->workers);
        FUZZ_CHECK(c->name && c->source && strcmp(c->source, text) == 0, "name or source missing");
        for (unsigned i = 0; i < c->n_listen; i++)
                FUZZ_CHECK(memchr(c->listen[i].display, 0, sizeof(c->listen[i].display)), "listen %u", i);
        unsigned n = config_worker_count(c);
        FUZZ_CHECK(n >= 1, "worker count %u", n);

        r = config_check_supported(c, &error);
        FUZZ_CHECK(r == 0 || (r == -EOPNOTSUPP && error), "check_supported: %d", r);
        free(error);
        config_unref(c);
        free(text);
        return 0;
}
