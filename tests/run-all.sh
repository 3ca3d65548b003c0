#!/bin/sh
# The whole test suite, as CI runs it: install test dependencies, build
# twice (plain and with AddressSanitizer + UBSan, both with -Werror), run
# every test in both, then the libFuzzer harnesses for a short fixed time
# from a third, clang build (docs/fuzzing.md), and print one closing line
# "N passed, N failed, N skipped" summed over every TAP case. Exits
# non-zero on any failure.
set -eu
cd "$(dirname "$0")/.."
tools/install-deps.sh --test

# A build directory left by the README's first command was configured
# without cmocka (tests=auto skipped the unit tests): reconfigure it, so
# that every run builds and counts the same tests, or fails without cmocka.
setup() {
        dir=$1; shift
        if [ -d "$dir" ]; then
                meson setup --reconfigure "$dir" -Dwerror=true -Dtests=enabled "$@" >/dev/null
        else
                meson setup "$dir" -Dwerror=true -Dtests=enabled "$@" >/dev/null
        fi
        ninja -C "$dir" >/dev/null
}
setup build
setup build-sanitize -Db_sanitize=address,undefined -Db_lundef=false

export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
status=0
meson test -C build --print-errorlogs --num-processes 2 || status=1
meson test -C build-sanitize --print-errorlogs --num-processes 2 || status=1

# The fuzz step: clang with libFuzzer, ASan and UBSan; only the harnesses'
# tests (suite fuzz), each a corpus replay and $CORRAL_FUZZ_SECONDS of
# fuzzing, two at a time: about 55 s for the nine.
fuzz_opts="-Dwerror=true -Dtests=disabled -Dman=disabled -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false"
if [ -d build-fuzz ]; then
        # shellcheck disable=SC2086
        meson setup --reconfigure build-fuzz $fuzz_opts >/dev/null
else
        # shellcheck disable=SC2086
        CC=clang meson setup build-fuzz $fuzz_opts >/dev/null
fi
ninja -C build-fuzz >/dev/null
CORRAL_FUZZ_SECONDS=${CORRAL_FUZZ_SECONDS:-10} meson test -C build-fuzz --suite fuzz --print-errorlogs --num-processes 2 || status=1

/usr/bin/python3 tests/summarize.py build/meson-logs/testlog.json build-sanitize/meson-logs/testlog.json \
        build-fuzz/meson-logs/testlog.json || status=1
exit $status
