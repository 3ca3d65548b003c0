#!/bin/bash
# Runs inside the namespaces created by tests/lib/sandbox.py:
#   setpriv --pdeathsig KILL unshare --pid --fork --kill-child=SIGKILL --mount
#     --mount-proc --uts --ipc --net --propagation private sandbox-init.sh stage1
# It is PID 1 of a fresh pid namespace and turns the host's view of the
# filesystem into a sandbox where nothing the booted systemd does can change
# the host, then execs systemd.  Do not run it by hand.
#
# Environment (set by sandbox.py):
#   CORRAL_SB_CGROUP   host path of the empty cgroup v2 dir systemd will own
#   CORRAL_SB_HOSTNAME hostname for the uts namespace
#   CORRAL_SB_CONSOLE  host file bound onto /dev/console
#   CORRAL_SB_FILES    tar archive extracted into / before systemd starts
#   CORRAL_SB_BINDS    file with lines "rw|ro<TAB>host-src<TAB>sandbox-dst"
#   CORRAL_SB_TARGET   unit systemd boots (--unit=)
#   CORRAL_SB_OVERLAYS space separated dirs that get a tmpfs-backed overlay
#   CORRAL_SB_LOGLEVEL systemd --log-level
set -euo pipefail

log() { echo "corral-sandbox: $*" >&2; }
trap 'log "init failed at line $LINENO: $BASH_COMMAND"' ERR

if [ "${1:-}" = stage1 ]; then
    # Join the cgroup prepared for us (visible through the host's cgroup2
    # mount, still present in this copied mount namespace), then make it the
    # root of a new cgroup namespace so the cgroup2 mount below shows only it.
    echo 0 > "$CORRAL_SB_CGROUP/cgroup.procs"
    exec unshare --cgroup -- /bin/bash "$0" stage2
fi
[ "${1:-}" = stage2 ] || { log "usage: run by sandbox.py"; exit 2; }

# unshare already made everything private; be explicit, nothing we mount may
# propagate back to the host.
mount --make-rprivate /

# Open everything we need from the host before /tmp and /run get covered.
exec {files_fd}<"$CORRAL_SB_FILES"
exec {console_fd}<"$CORRAL_SB_CONSOLE"   # read-only: only a bind source
bind_fds=() bind_modes=() bind_dsts=()
if [ -s "$CORRAL_SB_BINDS" ]; then
    while IFS=$'\t' read -r mode src dst; do
        exec {fd}<"$src"
        bind_fds+=("$fd") bind_modes+=("$mode") bind_dsts+=("$dst")
    done < "$CORRAL_SB_BINDS"
fi

# The root filesystem (and with it the build tree) is read-only in here.
# (Fails with EBUSY if we held a file on it open for writing.)
mount -o remount,bind,ro /

# Writable copy-on-write views of the directories services expect to write.
# Upper/work dirs live on a tmpfs that is unmounted again afterwards
# (overlayfs keeps a private reference to it).
mount -t tmpfs -o mode=0700 corral-ovl /tmp
for d in $CORRAL_SB_OVERLAYS; do
    if [ ! -d "$d" ] || [ -L "$d" ]; then continue; fi
    o=/tmp/ovl$(echo "$d" | tr / _)
    mkdir -p "$o/u" "$o/w"
    mount -t overlay -o "lowerdir=$d,upperdir=$o/u,workdir=$o/w" corral-ovl "$d"
done
umount -l /tmp
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
# Hide the host's unit enablement; masks for this sandbox are put here.
mount -t tmpfs -o mode=0755 tmpfs /etc/systemd/system

# Private /dev (so e.g. the /dev/log symlink of journald stays in here).
mount -t tmpfs -o mode=0755,nosuid,size=4m corral-dev /dev
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/zero c 1 5
mknod -m 666 /dev/full c 1 7
mknod -m 666 /dev/random c 1 8
mknod -m 666 /dev/urandom c 1 9
mknod -m 666 /dev/tty c 5 0
mkdir -m 755 /dev/pts
mkdir -m 1777 /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
# /dev/console: systemd and services may write to it; make it our console
# log file (the same file stdout/stderr go to).
touch /dev/console
mount --no-canonicalize --bind "/proc/self/fd/$console_fd" /dev/console
mount -o remount,bind,rw,nosuid,noexec /dev/console
exec {console_fd}>&-

# Fresh sysfs (shows this net namespace's devices), read-only, with a cgroup2
# mount that, thanks to the cgroup namespace, has our private cgroup as root.
umount -R -l /sys
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup

# Kernel tunables are global: read-only, except the per-netns ones.
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro,nosuid,nodev,noexec /proc/sys
mount --bind /proc/sys/net /proc/sys/net
mount -o remount,bind,rw,nosuid,nodev,noexec /proc/sys/net
if [ -e /proc/sysrq-trigger ]; then
    mount --bind /proc/sysrq-trigger /proc/sysrq-trigger
    mount -o remount,bind,ro /proc/sysrq-trigger
fi

# Units, masks, config drop-ins and test files.
tar -C / -xpf - --no-overwrite-dir <&"$files_fd"
exec {files_fd}<&-

for i in "${!bind_fds[@]}"; do
    fd=${bind_fds[$i]} dst=${bind_dsts[$i]}
    if [ -d "/proc/self/fd/$fd" ]; then
        mkdir -p "$dst"
    else
        mkdir -p "$(dirname "$dst")"
        [ -e "$dst" ] || touch "$dst"
    fi
    # --no-canonicalize: mount(8) would otherwise resolve the magic link to
    # its path string, which under /tmp or /run now names the new tmpfs.
    mount --no-canonicalize --bind "/proc/self/fd/$fd" "$dst"
    # The clone inherits the read-only flag of the root mount; set it.
    mount -o "remount,bind,${bind_modes[$i]}" "$dst"
    exec {fd}<&-
done

ip link set lo up
hostname "$CORRAL_SB_HOSTNAME"

log "exec systemd --unit=$CORRAL_SB_TARGET"
trap - ERR
exec env -i container=corral-test \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    /usr/lib/systemd/systemd --system --unit="$CORRAL_SB_TARGET" \
    --log-level="${CORRAL_SB_LOGLEVEL:-info}" --log-target=journal-or-kmsg \
    --show-status=no </dev/null
