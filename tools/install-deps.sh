#!/bin/sh
# Install what corral needs on Debian 12, from Debian's archive only.
#   tools/install-deps.sh          build dependencies
#   tools/install-deps.sh --test   plus what the test suite drives
set -eu
pkgs="gcc meson ninja-build pkg-config libsystemd-dev libuv1-dev libcjson-dev"
if [ "${1:-}" = "--test" ]; then
        pkgs="$pkgs libcmocka-dev python3 python3-systemd systemd curl wrk nodejs util-linux iproute2 valgrind debhelper dpkg-dev build-essential lintian scdoc prometheus haproxy"
        # The fuzz build: clang, libFuzzer (libclang-rt, only recommended by
        # clang, and we install no recommends), llvm-symbolizer for stacks.
        pkgs="$pkgs clang libclang-rt-14-dev llvm"
fi
missing=""
for p in $pkgs; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
