/* fuzz.h: what every libFuzzer harness in tests/fuzz shares.
 *
 * A harness turns a property its parser promises into a crash, so that
 * libFuzzer keeps the input that broke it: FUZZ_CHECK prints which
 * property failed and abort()s. Sanitizer findings (ASan, UBSan with
 * -fno-sanitize-recover) crash by themselves. */
#pragma once

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond, ...)                                                                  \
        do {                                                                                   \
                if (!(cond)) {                                                                 \
                        fprintf(stderr, "%s:%d: property failed: %s: ", __FILE__, __LINE__, #cond); \
                        fprintf(stderr, __VA_ARGS__);                                          \
                        fputc('\n', stderr);                                                   \
                        abort();                                                               \
                }                                                                              \
        } while (0)

/* A NUL-terminated copy of the input in a buffer of exactly size + 1
 * bytes, so that ASan sees any read past the terminator. The caller
 * frees it. */
static inline char *fuzz_strndup(const unsigned char *data, size_t size) {
        char *s = malloc(size + 1);
        if (!s)
                abort();
        memcpy(s, data, size);
        s[size] = 0;
        return s;
}

/* An exact-size heap copy (not terminated): a parser that reads one byte
 * too far trips ASan instead of reading libFuzzer's own buffer. */
static inline char *fuzz_memdup(const unsigned char *data, size_t size) {
        char *s = malloc(size ? size : 1);
        if (!s)
                abort();
        memcpy(s, data, size);
        return s;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);
