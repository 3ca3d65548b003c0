/* String, string-vector, signal-name and time helpers. Pure; no logging. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "macros.h"

/* NULL-terminated string vectors. strv_free() accepts NULL and returns NULL. */
char **strv_free(char **l);
static inline void strv_freep(char ***l) {
        strv_free(*l);
}
#define _cleanup_strv_free_ _cleanup_(strv_freep)
size_t strv_length(char * const *l);
/* Append a copy of s. Returns 0 or -ENOMEM; *l is unchanged on failure. */
int strv_extend(char ***l, const char *s);
/* Append s itself, taking ownership on success only. */
int strv_push(char ***l, char *s);
/* Append a formatted string. Returns 0 or -ENOMEM. */
_printf_(2, 3) int strv_extendf(char ***l, const char *fmt, ...);
char **strv_copy(char * const *l);

bool streq_ptr(const char *a, const char *b);

/* Copy s into buf (size n), escaping control characters and bytes >= 0x80
 * as \xNN, so text that came from outside can go into one line of a log,
 * a terminal or a JSON reply. Truncates to fit; returns buf. */
const char *str_escape(const char *s, char *buf, size_t n);
static inline bool startswith(const char *s, const char *prefix) {
        size_t n = 0;
        while (prefix[n]) n++;
        for (size_t i = 0; i < n; i++)
                if (s[i] != prefix[i])
                        return false;
        return true;
}

/* Signal names: "TERM", "SIGTERM" and "15" all parse to SIGTERM.
 * Returns the signal number or -EINVAL. */
int parse_signal(const char *s);
/* "SIGTERM" for SIGTERM; a static "SIG<n>" style string for unknown ones. */
const char *signal_to_string(int sig);

/* kill(2) a process, and its process group first when group is set; but
 * never a pid or group <= 1, which kill() takes as init, the caller's own
 * group or every process (-EINVAL then, nothing sent). Returns 0 or -errno
 * of the last kill. */
int kill_process(pid_t pid, int sig, bool group);

/* Parse a decimal unsigned integer, whole string, no sign, no spaces.
 * Returns 0 or -EINVAL / -ERANGE. */
int parse_u64(const char *s, uint64_t *ret);

/* CLOCK_MONOTONIC in microseconds. */
uint64_t now_usec(void);

/* Format a duration like "3d04h", "2h05m", "4m07s", "12s" into buf. */
const char *format_duration(char *buf, size_t n, uint64_t usec);
