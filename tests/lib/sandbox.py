"""Boot a real systemd as PID 1 in fresh namespaces for integration tests.

    from sandbox import Sandbox
    with Sandbox(units={"app.socket": SOCK, "app.service": SVC},
                 files={"/etc/corral/app.json": "{}"}) as sb:
        sb.systemctl("start", "app.socket")
        sb.run(["curl", "-sf", "http://127.0.0.1:8080/"])
        sb.wait_active("app.service")
        e = sb.wait_journal({"CORRAL_EVENT": "exit"}, timeout=10)

How it works (see also sandbox-init.sh):
  * `setpriv --pdeathsig KILL unshare --pid --fork --kill-child ...` runs
    sandbox-init.sh as PID 1 of new pid/mount/uts/ipc/net namespaces; it joins
    a private cgroup v2 directory and a new cgroup namespace rooted there.
  * Inside: / is remounted read-only (the host tree incl. the build dir stays
    visible), /etc /var /root /home /srv /opt become overlays backed by tmpfs,
    /run /tmp /dev /etc/systemd/system are fresh tmpfs, /sys is a fresh
    read-only sysfs with cgroup2 on /sys/fs/cgroup, /proc/sys is read-only
    except /proc/sys/net.  Units touching the kernel/host are masked and all
    generators disabled.  lo is brought up.  Then systemd boots only
    corral-test.target (sysinit.target + journald + `wants`).
  * Commands run via `nsenter -t <pid1> -m -u -i -n -p`.
  * stop() SIGKILLs PID 1 (the kernel kills the whole pid namespace), checks
    no process is left, removes the cgroup and temp dir.  If the test process
    dies, the parent-death signal chain kills the sandbox too; stale cgroup
    dirs of dead test processes are removed by the next Sandbox.start().

Requires root and a cgroup v2 hierarchy (pure or hybrid); Sandbox.usable()
tells whether this machine qualifies.  Set CORRAL_SANDBOX_KEEP=1 to keep the
temp dir (console.log: init script + systemd console output) after stop().
The sandbox is tied to the thread that called start() (parent-death signal):
start it from the main thread.
"""
import atexit
import errno
import io
import itertools
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import weakref

__all__ = ["Sandbox", "SandboxError", "CommandError", "MASKED_UNITS"]

HERE = os.path.dirname(os.path.abspath(__file__))
INIT_SCRIPT = os.path.join(HERE, "sandbox-init.sh")
TARGET = "corral-test.target"
CGROUP2_SUPER_MAGIC = 0x63677270
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Units that would touch the host (kernel state, devices, consoles, clocks,
# persistent files) or are useless here.  Each becomes a symlink to /dev/null
# in the sandbox's private /etc/systemd/system.  Everything that
# sysinit.target.wants on the host is masked too (see _masks()), except
# journald and a few harmless units in SYSINIT_KEEP.
MASKED_UNITS = (
    # udev / hardware / kernel modules
    "systemd-udevd.service", "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket", "systemd-udev-trigger.service",
    "systemd-udev-settle.service", "systemd-hwdb-update.service",
    "modprobe@.service", "kmod-static-nodes.service",
    "systemd-modules-load.service", "systemd-backlight@.service",
    "systemd-rfkill.service", "systemd-rfkill.socket",
    # global kernel tunables
    "systemd-sysctl.service", "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
    "sys-kernel-config.mount", "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount", "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount", "systemd-pstore.service",
    "systemd-timesyncd.service", "systemd-random-seed.service",
    # file systems / block devices / TPM
    "systemd-remount-fs.service", "systemd-fsck-root.service",
    "systemd-fsck@.service", "systemd-fsckd.service", "systemd-fsckd.socket",
    "systemd-growfs-root.service", "systemd-growfs@.service",
    "systemd-quotacheck.service", "quotaon.service", "systemd-repart.service",
    "systemd-pcrphase.service", "systemd-pcrphase-sysinit.service",
    "systemd-pcrphase-initrd.service", "systemd-pcrmachine.service",
    "systemd-pcrfs-root.service", "systemd-pcrfs@.service",
    "systemd-boot-update.service", "systemd-boot-system-token.service",
    "systemd-hibernate-resume@.service",
    # /etc, /var and first-boot style writes
    "systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-clean.service", "systemd-tmpfiles-clean.timer",
    "systemd-machine-id-commit.service", "systemd-firstboot.service",
    "systemd-sysusers.service", "systemd-update-done.service",
    "systemd-update-utmp.service", "systemd-update-utmp-runlevel.service",
    "ldconfig.service", "systemd-journal-flush.service",
    "systemd-journal-catalog-update.service",
    # consoles, ttys, logins
    "getty.target", "getty@.service", "serial-getty@.service",
    "console-getty.service", "container-getty@.service", "autovt@.service",
    "getty-static.service", "systemd-logind.service",
    "systemd-vconsole-setup.service", "keyboard-setup.service",
    "console-setup.service", "setvtrgb.service",
    "systemd-ask-password-console.path", "systemd-ask-password-console.service",
    "systemd-ask-password-wall.path", "systemd-ask-password-wall.service",
    "emergency.service", "rescue.service",
    "systemd-initctl.socket", "systemd-initctl.service",
    # kernel audit stream is host-global
    "systemd-journald-audit.socket",
)
SYSINIT_KEEP = ("systemd-journald.service", "dev-mqueue.mount")
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system",
             "/usr/local/lib/systemd/system", "/usr/lib/systemd/system",
             "/lib/systemd/system")
GENERATOR_DIRS = ("/etc/systemd/system-generators",
                  "/usr/local/lib/systemd/system-generators",
                  "/usr/lib/systemd/system-generators",
                  "/lib/systemd/system-generators")
OVERLAYS = ("/etc", "/var", "/root", "/home", "/srv", "/opt")

JOURNALD_CONF = """\
[Journal]
Storage=volatile
RateLimitIntervalSec=0
RateLimitBurst=0
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
"""

# No core dumps from sandboxed services: core_pattern is host-global (files
# would land in the service's cwd, or a host pipe helper would run).
SYSTEM_CONF = """\
[Manager]
LogColor=no
ShowStatus=no
DefaultLimitCORE=0
"""

_counter = itertools.count()
_live = weakref.WeakSet()


class SandboxError(Exception):
    pass


class CommandError(subprocess.CalledProcessError):
    def __str__(self):
        def s(v):
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            return (v or "").rstrip()
        msg = "command %s exited with %s in the sandbox" % (
            shlex.join(map(str, self.cmd)), self.returncode)
        if s(self.stdout):
            msg += "\n--- stdout:\n" + s(self.stdout)
        if s(self.stderr):
            msg += "\n--- stderr:\n" + s(self.stderr)
        return msg


def _cgroup2_base():
    for p in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        try:
            if _statfs_type(p) == CGROUP2_SUPER_MAGIC:
                return p
        except OSError:
            pass
    raise SandboxError("no cgroup v2 hierarchy mounted on the host")


def _statfs_type(path):
    import ctypes
    buf = ctypes.create_string_buffer(256)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(path.encode(), buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return int.from_bytes(buf.raw[:8], "little")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _cgroup_populated(path):
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k == "populated":
                    return v.strip() == "1"
    except FileNotFoundError:
        return False
    return False


def _rmdir_tree(path):
    """Remove a cgroup directory tree (children first)."""
    if not os.path.isdir(path):
        return
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            _rmdir_retry(os.path.join(root, d))
    _rmdir_retry(path)


def _rmdir_retry(path, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sweep_stale(base):
    """Remove empty cgroups and temp dirs left by sandboxes of test processes
    that died without stop() (their sandboxes died with them)."""
    for d, prefix in ((base, "corral-test-"),
                      (tempfile.gettempdir(), "corral-sandbox-")):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            if not n.startswith(prefix):
                continue
            try:
                owner = int(n[len(prefix):].split("-")[0])
            except ValueError:
                continue
            p = os.path.join(d, n)
            if _pid_alive(owner):
                continue
            try:
                if d == base:
                    if not _cgroup_populated(p):
                        _rmdir_tree(p)
                elif not os.environ.get("CORRAL_SANDBOX_KEEP"):
                    shutil.rmtree(p)
            except OSError:
                pass


def _flatten(entry):
    """journalctl -o json gives binary values as byte lists; make them str."""
    out = {}
    for k, v in entry.items():
        if isinstance(v, list) and v and all(isinstance(x, int) for x in v):
            v = bytes(v).decode("utf-8", "replace")
        elif isinstance(v, list):
            v = [bytes(x).decode("utf-8", "replace") if isinstance(x, list) else x
                 for x in v]
        out[k] = v
    return out


def pids_in_pidns(pidns):
    """Host pids of the processes in the pid namespace (st_dev, st_ino)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            s = os.stat("/proc/%s/ns/pid" % d)
        except OSError:
            continue
        if (s.st_dev, s.st_ino) == pidns:
            pids.append(int(d))
    return pids


def _seq(entry):
    """Order of a journal entry: the cursor's seqnum ("q=" field, hex), which
    grows with every entry journald writes, falling back to its time."""
    for part in entry.get("__CURSOR", "").split(";"):
        if part.startswith("q="):
            return (0, int(part[2:], 16))
    return (1, int(entry.get("__REALTIME_TIMESTAMP", "0")))


def _journal_pred(pred):
    if callable(pred):
        return pred
    if isinstance(pred, str):
        return lambda e: pred in str(e.get("MESSAGE", ""))
    if isinstance(pred, dict):
        want = {k: str(v) for k, v in pred.items()}

        def match(e):
            for k, v in want.items():
                got = e.get(k)
                if isinstance(got, list):
                    if v not in got:
                        return False
                elif got != v:
                    return False
            return True
        return match
    raise TypeError("pred must be a callable, a str or a dict")


class _GroupPopen(subprocess.Popen):
    def send_signal(self, sig):
        self.poll()
        if self.returncode is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass


class Sandbox:
    """A systemd 252 booted as PID 1 in private namespaces.

    units:  {"name.service": "unit file text"} -> /run/systemd/system/name
            (drop-ins: {"name.service.d/x.conf": "..."} work too)
    files:  {"/abs/path": "text" | bytes | (text_or_bytes, mode)} written
            before boot; anything under / that is writable in the sandbox
            (/etc /var /root /home /srv /opt overlays, /run, /tmp).
    binds:  {"/host/path": "/sandbox/path" | ("/sandbox/path", "ro")}, rw by
            default; the target must be creatable in a writable area (or
            already exist).
    wants:  units started as part of boot (start() returns once they are up).
    timeout: boot deadline in seconds.
    """

    def __init__(self, units=None, files=None, binds=None, wants=(),
                 timeout=30.0, log_level="info", overlays=OVERLAYS,
                 masks=(), unmask=(), name=None):
        self.units = dict(units or {})
        self.files = dict(files or {})
        self.binds = dict(binds or {})
        # The sandbox gets fresh tmpfs on /tmp and /run: a checkout or build
        # tree living there (a CI clone, say) must be bound in to be seen.
        # Services with PrivateTmp= (DynamicUser= implies it) get yet another
        # /tmp, so they get a drop-in binding the same trees back.
        seen = []
        for p in (os.path.dirname(os.path.dirname(HERE)), os.environ.get("CORRAL_BUILD_DIR")):
            p = os.path.realpath(p) if p else None
            if p and os.path.isdir(p) and p.startswith(("/tmp/", "/run/")) and \
                    not any(p == b or p.startswith(b.rstrip("/") + "/") for b in list(self.binds) + seen):
                self.binds[p] = (p, "ro")
                seen.append(p)
        if seen:
            for unit in [u for u in self.units if u.endswith(".service") and "/" not in u]:
                self.units[unit + ".d/zz-sandbox-binds.conf"] = \
                    "[Service]\nBindReadOnlyPaths=%s\nEnvironment=SANDBOX_BOUND=\"%s\"\n" % (
                        " ".join(seen), " ".join(seen))
        self.wants = tuple(wants)
        self.timeout = timeout
        self.log_level = log_level
        self.overlays = tuple(overlays)
        self.extra_masks = tuple(masks)
        self.unmask = set(unmask)
        self.id = "%d-%d-%s" % (os.getpid(), next(_counter), secrets.token_hex(3))
        self.name = name or ("corral-test-" + self.id)
        self.hostname = ("ct-" + self.id)[:63]
        self.pid = None            # host pid of the sandbox's PID 1 (systemd)
        self.pidns = None          # (st_dev, st_ino) of its pid namespace
        self.boot_time = None      # seconds from spawn to target active
        self.boot_phases = {}      # pid1/exec/target: seconds since spawn
        self.state_dir = None      # host temp dir (console.log lives here)
        self.cgroup = None         # host path of the sandbox's cgroup
        self._proc = None
        self._console = None
        self._stopped = False
        self._cursor_seq = {}      # cursors from journal_cursor() -> _seq()

    @staticmethod
    def usable():
        """None if sandboxes can run here, else the reason they cannot."""
        if os.geteuid() != 0:
            return "needs root"
        for tool in ("unshare", "nsenter", "setpriv", "ip"):
            if not shutil.which(tool, path=PATH):
                return "%s not found" % tool
        if not os.access("/usr/lib/systemd/systemd", os.X_OK):
            return "systemd not installed"
        try:
            _cgroup2_base()
        except SandboxError as e:
            return str(e)
        return None

    # ------------------------------------------------------------------ boot
    @property
    def console_log(self):
        return os.path.join(self.state_dir, "console.log") if self.state_dir else None

    def _masks(self):
        masks = set(MASKED_UNITS) | set(self.extra_masks)
        for d in UNIT_DIRS:
            try:
                for n in os.listdir(os.path.join(d, "sysinit.target.wants")):
                    if not n.endswith(".target") and n not in SYSINIT_KEEP:
                        masks.add(n)
            except OSError:
                pass
        masks -= set(self.units) | self.unmask
        return sorted(masks)

    def _generators(self):
        gens = set()
        for d in GENERATOR_DIRS:
            try:
                gens.update(os.listdir(d))
            except OSError:
                pass
        return sorted(gens)

    def _target_text(self):
        wants = ["sysinit.target", "systemd-journald.socket",
                 "systemd-journald-dev-log.socket", "systemd-journald.service"]
        wants += list(self.wants)
        return ("[Unit]\nDescription=corral integration test sandbox\n"
                "Wants=%s\nAfter=%s\nAllowIsolate=yes\n"
                % (" ".join(wants), " ".join(wants)))

    def _build_tar(self, path):
        with tarfile.open(path, "w") as tar:
            made = set()

            def add_dirs(p):
                parts = p.strip("/").split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i])
                    if d in made:
                        continue
                    made.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type = tarfile.DIRTYPE
                    ti.mode = 0o755
                    ti.mtime = time.time()
                    tar.addfile(ti)

            def add_file(p, data, mode=0o644):
                if isinstance(data, str):
                    data = data.encode()
                add_dirs(p)
                ti = tarfile.TarInfo(p.strip("/"))
                ti.size = len(data)
                ti.mode = mode
                ti.mtime = time.time()
                tar.addfile(ti, io.BytesIO(data))

            def add_link(p, target):
                add_dirs(p)
                ti = tarfile.TarInfo(p.strip("/"))
                ti.type = tarfile.SYMTYPE
                ti.linkname = target
                tar.addfile(ti)

            for u in self._masks():
                add_link("/etc/systemd/system/" + u, "/dev/null")
            for g in self._generators():
                add_link("/run/systemd/system-generators/" + g, "/dev/null")
            add_file("/run/systemd/journald.conf.d/50-corral-test.conf", JOURNALD_CONF)
            add_file("/run/systemd/system.conf.d/50-corral-test.conf", SYSTEM_CONF)
            add_file("/run/systemd/system/" + TARGET, self._target_text())
            if "/etc/hostname" not in self.files:
                add_file("/etc/hostname", self.hostname + "\n")
            for n, text in self.units.items():
                add_file("/run/systemd/system/" + n, text)
            for p, v in self.files.items():
                if not p.startswith("/"):
                    raise ValueError("files: path must be absolute: %r" % p)
                mode = 0o644
                if isinstance(v, tuple):
                    v, mode = v
                add_file(p, v, mode)

    def start(self):
        if self._proc is not None:
            raise SandboxError("sandbox already started")
        why = self.usable()
        if why:
            raise SandboxError("cannot start a systemd sandbox: " + why)
        base = _cgroup2_base()
        _sweep_stale(base)
        t0 = time.monotonic()
        try:
            self._spawn(base)
            self._wait_boot(t0)
        except BaseException as e:
            diag = self.diagnostics()
            try:
                self.stop()
            except Exception as e2:
                diag += "\n(stop after failed boot also failed: %s)" % e2
            if isinstance(e, SandboxError):
                raise SandboxError("%s\n%s" % (e, diag)) from None
            raise
        self.boot_time = time.monotonic() - t0
        _live.add(self)
        return self

    def _spawn(self, base):
        self.state_dir = tempfile.mkdtemp(prefix="corral-sandbox-%s-" % self.id)
        files = os.path.join(self.state_dir, "files.tar")
        self._build_tar(files)
        binds = os.path.join(self.state_dir, "binds")
        with open(binds, "w") as f:
            for src, dst in self.binds.items():
                mode = "rw"
                if isinstance(dst, tuple):
                    dst, mode = dst
                if mode not in ("rw", "ro"):
                    raise ValueError("binds: mode must be 'rw' or 'ro'")
                for p in (src, dst):
                    if not os.path.isabs(p) or any(c in p for c in "\t\n"):
                        raise ValueError("binds: bad path %r" % p)
                if not os.path.exists(src):
                    raise ValueError("binds: %s does not exist" % src)
                f.write("%s\t%s\t%s\n" % (mode, src, dst))

        self.cgroup = os.path.join(base, self.name)
        os.mkdir(self.cgroup)
        payload = os.path.join(self.cgroup, "payload")
        supervisor = os.path.join(self.cgroup, "supervisor")
        os.mkdir(payload)
        os.mkdir(supervisor)
        # Hand whatever v2 controllers the host offers down to systemd (none
        # on a hybrid host whose controllers are bound to v1; memory/pids/...
        # on a pure cgroup2 host), so MemoryMax= etc. work where possible.
        try:
            with open(os.path.join(self.cgroup, "cgroup.controllers")) as f:
                ctrls = f.read().split()
            for c in ctrls:
                try:
                    with open(os.path.join(self.cgroup, "cgroup.subtree_control"), "w") as f:
                        f.write("+" + c)
                except OSError:
                    pass
        except OSError:
            pass

        env = {
            "PATH": PATH, "LANG": "C.UTF-8",
            "CORRAL_SB_CGROUP": payload,
            "CORRAL_SB_HOSTNAME": self.hostname,
            "CORRAL_SB_FILES": files,
            "CORRAL_SB_CONSOLE": self.console_log,
            "CORRAL_SB_BINDS": binds,
            "CORRAL_SB_TARGET": TARGET,
            "CORRAL_SB_OVERLAYS": " ".join(self.overlays),
            "CORRAL_SB_LOGLEVEL": self.log_level,
        }
        # sh joins the supervisor cgroup, then becomes setpriv -> unshare; the
        # parent-death signal chain (test process -> unshare -> PID 1) makes
        # the sandbox die with the test process.
        script = ('echo $$ > "$1/cgroup.procs" && exec setpriv --pdeathsig KILL '
                  'unshare --pid --fork --kill-child=SIGKILL --mount --mount-proc '
                  '--uts --ipc --net --propagation private -- /bin/bash "$2" stage1')
        self._console = open(self.console_log, "ab", buffering=0)
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", script, "sh", supervisor, INIT_SCRIPT],
            stdin=subprocess.DEVNULL, stdout=self._console,
            stderr=subprocess.STDOUT, env=env, close_fds=True, cwd="/")

    def _find_pid1(self):
        ppid = self._proc.pid
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/status" % d) as f:
                    st = f.read()
            except OSError:
                continue
            fields = dict(l.split(":\t", 1) for l in st.splitlines() if ":\t" in l)
            if fields.get("PPid", "").strip() != str(ppid):
                continue
            nspid = fields.get("NSpid", "").split()
            if len(nspid) >= 2 and nspid[-1] == "1":
                try:
                    s = os.stat("/proc/%s/ns/pid" % d)
                except OSError:
                    continue
                return int(d), (s.st_dev, s.st_ino)
        return None

    def _wait_boot(self, t0):
        deadline = t0 + self.timeout
        while self.pid is None:
            if self._proc.poll() is not None:
                raise SandboxError("sandbox init exited with %s before systemd started"
                                   % self._proc.returncode)
            found = self._find_pid1()
            if found:
                self.pid, self.pidns = found
                self.boot_phases["pid1"] = time.monotonic() - t0
                break
            if time.monotonic() > deadline:
                raise SandboxError("timed out waiting for the sandbox PID 1 to appear")
            time.sleep(0.005)
        last = None
        while True:
            if self._proc.poll() is not None:
                raise SandboxError("sandbox PID 1 exited with %s during boot"
                                   % self._proc.returncode)
            # Until sandbox-init.sh has exec'd systemd, /proc/PID/exe is bash.
            try:
                exe = os.readlink("/proc/%d/exe" % self.pid)
            except OSError:
                exe = None
            if exe and os.path.basename(exe) == "systemd":
                self.boot_phases.setdefault("exec", time.monotonic() - t0)
                r = self.run(["systemctl", "is-active", TARGET], check=False,
                             timeout=10)
                last = (r.stdout.strip() or r.stderr.strip())
                if last == "active":
                    self.boot_phases.setdefault("target", time.monotonic() - t0)
                    # The job may be done while other boot jobs still run;
                    # wait for the initial transaction to finish too.
                    r = self.run(["systemctl", "list-jobs", "--no-legend"],
                                 check=False, timeout=10)
                    if r.returncode == 0 and not r.stdout.strip():
                        self._check_wants()
                        return
                elif last == "failed":
                    raise SandboxError("%s failed to start" % TARGET)
            if time.monotonic() > deadline:
                raise SandboxError("timed out after %.1fs waiting for %s (last: %s)"
                                   % (self.timeout, TARGET, last))
            time.sleep(0.02)

    def _check_wants(self):
        bad = []
        for u in self.wants:
            p = self.show(u, "ActiveState", "LoadState", "Result")
            if p["ActiveState"] == "failed" or p["LoadState"] != "loaded":
                bad.append(u)
        if bad:
            raise SandboxError("units wanted at boot failed: %s\n%s" % (
                " ".join(bad), "\n".join(self._unit_diag(u) for u in bad)))

    # -------------------------------------------------------------- commands
    def _nsenter(self, cwd):
        if self.pid is None or self._stopped:
            raise SandboxError("sandbox is not running")
        return ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p",
                "--wdns=" + cwd]

    def _env(self, env, inherit_env):
        e = dict(os.environ) if inherit_env else {}
        e.update({"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root",
                  "TERM": "dumb", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0",
                  "SYSTEMD_LOG_COLOR": "0"})
        if env:
            e.update(env)
        return e

    def run(self, cmd, check=True, timeout=30, input=None, env=None,
            inherit_env=False, cwd="/", text=True):
        """Run cmd (list, or str for `sh -c`) inside all sandbox namespaces.

        Returns CompletedProcess with captured stdout/stderr (str unless
        text=False).  check=True raises CommandError (with the output) on a
        non-zero exit.  env adds variables to a minimal environment;
        inherit_env=True starts from this process's environment instead.
        """
        if isinstance(cmd, str):
            cmd = ["/bin/sh", "-c", cmd]
        argv = self._nsenter(cwd) + ["--"] + [str(c) for c in cmd]
        if input is not None and text and isinstance(input, bytes):
            input = input.decode()
        # Own process group: on timeout the whole group (nsenter and the
        # command inside the sandbox) is killed, not just nsenter.
        p = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None
                             else subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=self._env(env, inherit_env),
                             text=text, cwd="/", start_new_session=True)
        try:
            out, err = p.communicate(input, timeout=timeout)
        except BaseException as e:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = p.communicate()
            if isinstance(e, subprocess.TimeoutExpired):
                raise SandboxError("command %s timed out after %ss in the sandbox\n"
                                   "stdout: %r\nstderr: %r"
                                   % (shlex.join(map(str, cmd)), timeout, out, err)
                                   ) from None
            raise
        r = subprocess.CompletedProcess(list(cmd), p.returncode, out, err)
        if check and r.returncode != 0:
            raise CommandError(r.returncode, list(cmd), r.stdout, r.stderr)
        return r

    def spawn(self, cmd, env=None, inherit_env=False, cwd="/", **popen_kw):
        """Start cmd in the sandbox without waiting; returns a Popen.

        stdin defaults to /dev/null; pass stdout=subprocess.PIPE etc. as for
        Popen.  It runs in its own process group and send_signal()/kill()/
        terminate() signal the whole group, i.e. also the process inside the
        sandbox (killing only nsenter would leave that running).  Anything
        left dies with the sandbox at stop().
        """
        if isinstance(cmd, str):
            cmd = ["/bin/sh", "-c", cmd]
        popen_kw.setdefault("stdin", subprocess.DEVNULL)
        return _GroupPopen(self._nsenter(cwd) + ["--"] + [str(c) for c in cmd],
                           env=self._env(env, inherit_env), cwd="/",
                           start_new_session=True, **popen_kw)

    def systemctl(self, *args, check=True, timeout=60):
        """systemctl ARGS in the sandbox.  With check=True a failure raises
        CommandError whose text includes status and journal of the units."""
        r = self.run(["systemctl", "--no-pager", "--no-ask-password"] + list(args),
                     check=False, timeout=timeout)
        if check and r.returncode != 0:
            words = [a for a in args if not a.startswith("-")]
            err = r.stderr
            if words and words[0] in ("start", "stop", "restart", "reload",
                                      "try-restart", "reload-or-restart",
                                      "try-reload-or-restart"):
                for u in words[1:]:
                    err += "\n" + self._unit_diag(u)
            raise CommandError(r.returncode, r.args, r.stdout, err)
        return r

    def daemon_reload(self):
        self.systemctl("daemon-reload")

    def show(self, unit, *props):
        """systemctl show UNIT [-p PROP...] -> {prop: value} (all if none)."""
        args = ["show", unit]
        for p in props:
            args += ["-p", p]
        out = self.systemctl(*args).stdout
        res = {}
        for line in out.splitlines():
            k, sep, v = line.partition("=")
            if sep:
                res[k] = v
        for p in props:
            res.setdefault(p, "")
        return res

    def prop(self, unit, name):
        return self.show(unit, name)[name]

    def is_active(self, unit):
        return self.prop(unit, "ActiveState")

    def main_pid(self, unit):
        """MainPID (sandbox pid numbering), 0 when none."""
        return int(self.prop(unit, "MainPID") or 0)

    def wait_active(self, unit, state="active", timeout=30):
        """Wait until ActiveState == state; fail fast if the unit fails."""
        deadline = time.monotonic() + timeout
        while True:
            p = self.show(unit, "ActiveState", "SubState", "Result", "LoadState")
            cur = p["ActiveState"]
            if cur == state:
                return p
            if p["LoadState"] in ("not-found", "masked", "bad-setting", "error"):
                raise SandboxError("%s: LoadState=%s\n%s" % (
                    unit, p["LoadState"], self._unit_diag(unit)))
            if cur == "failed" and state != "failed":
                raise SandboxError("%s failed (Result=%s) while waiting for %s\n%s"
                                   % (unit, p["Result"], state, self._unit_diag(unit)))
            if time.monotonic() > deadline:
                raise SandboxError("timed out after %.1fs waiting for %s to be %s "
                                   "(is %s/%s)\n%s" % (timeout, unit, state, cur,
                                                       p["SubState"],
                                                       self._unit_diag(unit)))
            time.sleep(0.02)

    def cgroup_pids(self, unit, recursive=True):
        """PIDs (sandbox numbering) in the unit's cgroup (and sub-cgroups)."""
        cg = self.prop(unit, "ControlGroup")
        if not cg:
            return []
        path = "/sys/fs/cgroup" + cg
        if recursive:
            cmd = ["sh", "-c", 'test -d "$1" || exit 0; '
                   'find "$1" -name cgroup.procs -exec cat {} +', "-", path]
        else:
            cmd = ["sh", "-c", 'test -d "$1" || exit 0; cat "$1/cgroup.procs"',
                   "-", path]
        out = self.run(cmd).stdout
        return sorted({int(x) for x in out.split()})

    def host_pid(self, pid):
        """Translate a sandbox pid to the host pid (None if not found)."""
        for hp in self.host_pids():
            try:
                with open("/proc/%d/status" % hp) as f:
                    for line in f:
                        if line.startswith("NSpid:"):
                            if int(line.split()[-1]) == pid:
                                return hp
                            break
            except OSError:
                pass
        return None

    def host_pids(self):
        """Host pids of all processes in the sandbox's pid namespace."""
        if self.pidns is None:
            return []
        return sorted(pids_in_pidns(self.pidns))

    # ---------------------------------------------------------------- files
    def write_file(self, path, text, mode=0o644):
        """Create/replace a file in the sandbox (parents are created)."""
        data = text.encode() if isinstance(text, str) else text
        self.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1.tmp.$$" && '
                  'chmod "$2" "$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"',
                  "-", path, "%o" % mode], input=data, text=False)

    def read_file(self, path):
        return self.run(["cat", path]).stdout

    def write_unit(self, name, text, reload=True):
        """Add/replace a unit in /run/systemd/system and daemon-reload."""
        self.write_file("/run/systemd/system/" + name, text)
        if reload:
            self.daemon_reload()

    # -------------------------------------------------------------- journal
    def journal(self, unit=None, matches=(), since_cursor=None, lines=None,
                extra_args=()):
        """All matching journal entries as dicts (journalctl -o json).

        unit: -u UNIT (also PID 1's messages about it); matches: journalctl
        field matches such as "CORRAL_EVENT=exit" (AND-ed; "+" for OR);
        since_cursor: only entries after that __CURSOR.
        """
        args = ["journalctl", "--no-pager", "-o", "json", "-q"]
        if unit:
            args += ["-u", unit]
        # journalctl 252 returns nothing for --after-cursor combined with a
        # match when the cursor's own entry does not match; so a cursor we
        # handed out is applied here, by the entry's sequence position.
        after_seq = None
        if since_cursor and since_cursor in self._cursor_seq:
            after_seq = self._cursor_seq[since_cursor]
        elif since_cursor:
            args += ["--after-cursor", since_cursor]
        if lines is not None:
            args += ["-n", str(lines)]
        args += list(extra_args) + list(matches)
        out = self.run(args, timeout=30).stdout
        res = []
        for line in out.splitlines():
            line = line.strip()
            if line:
                e = _flatten(json.loads(line))
                if after_seq is None or _seq(e) > after_seq:
                    res.append(e)
        return res

    def journal_cursor(self):
        """Cursor of the newest journal entry (pass as since_cursor)."""
        e = self.journal(lines=1)
        if not e:
            return None
        self._cursor_seq[e[-1]["__CURSOR"]] = _seq(e[-1])
        return e[-1]["__CURSOR"]

    def journal_text(self, unit=None, matches=(), since_cursor=None, lines=None):
        """Journal entries as 'UNIT[PID]: MESSAGE' lines (for diagnostics)."""
        out = []
        for e in self.journal(unit, matches, since_cursor, lines):
            who = e.get("_SYSTEMD_UNIT") or e.get("SYSLOG_IDENTIFIER", "?")
            out.append("%s[%s]: %s" % (who, e.get("_PID", ""), e.get("MESSAGE", "")))
        return "\n".join(out)

    def wait_journal(self, pred, timeout=30, what=None, unit=None, matches=(),
                     since_cursor=None):
        """Wait for a journal entry matching pred and return it.

        pred: callable(entry) -> bool, a str (substring of MESSAGE) or a
        dict of field -> value that must all match.
        """
        test = _journal_pred(pred)
        what = what or repr(pred)
        cursor = since_cursor
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            entries = self.journal(unit, matches, cursor)
            for e in entries:
                if test(e):
                    return e
            if entries:
                cursor = entries[-1]["__CURSOR"]
                seen = (seen + entries)[-20:]
            if time.monotonic() > deadline:
                raise SandboxError(
                    "timed out after %.1fs waiting for journal entry %s; last "
                    "entries:\n%s" % (timeout, what, "\n".join(
                        "  %s: %s" % (e.get("_SYSTEMD_UNIT") or e.get("SYSLOG_IDENTIFIER"),
                                      e.get("MESSAGE")) for e in seen)))
            time.sleep(0.05)

    # ---------------------------------------------------------- diagnostics
    def _unit_diag(self, unit):
        parts = []
        try:
            parts.append(self.systemctl("status", "--lines=0", unit, check=False).stdout)
            parts.append(self.journal_text(unit=unit, lines=30))
        except Exception as e:
            parts.append("(no unit diagnostics: %s)" % e)
        return "\n".join(parts)

    def diagnostics(self, lines=40):
        """Console log tail, failed units and journal tail, as text."""
        parts = ["--- sandbox %s (pid %s)" % (self.name, self.pid)]
        if self.console_log and os.path.exists(self.console_log):
            with open(self.console_log, errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
            parts.append("--- console log tail:\n" + "\n".join(tail))
        if self.pid and not self._stopped and self._proc and self._proc.poll() is None:
            try:
                parts.append("--- failed units:\n" + self.systemctl(
                    "list-units", "--failed", "--no-legend", check=False, timeout=5).stdout)
                parts.append("--- journal tail:\n" + self.journal_text(lines=lines))
            except Exception as e:
                parts.append("(journal unavailable: %s)" % e)
        return "\n".join(parts)

    # ------------------------------------------------------------- teardown
    def stop(self, timeout=15):
        """Kill the sandbox, check nothing is left, clean up.  Idempotent.

        Raises SandboxError if processes of the sandbox survived (they are
        SIGKILLed anyway) or the cgroup cannot be removed.
        """
        if self._stopped:
            return
        self._stopped = True
        _live.discard(self)
        problems = []
        deadline = time.monotonic() + timeout
        if self._proc is not None:
            if self.pid is not None:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self._proc.poll() is None and self.pid is None:
                self._proc.kill()       # unshare --kill-child takes PID 1 along
            try:
                self._proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                problems.append("unshare did not exit")
                self._proc.kill()
                self._proc.wait(timeout=5)
        if self._console:
            self._console.close()
        # Nothing of the pid namespace may survive.
        while self.pidns is not None:
            left = self.host_pids()
            if not left:
                break
            if time.monotonic() > deadline:
                problems.append("processes left in the sandbox pid namespace: %s" % left)
                for p in left:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                break
            time.sleep(0.01)
        if self.cgroup:
            while _cgroup_populated(self.cgroup):
                if time.monotonic() > deadline:
                    problems.append("cgroup %s still populated: %s" % (
                        self.cgroup, self._cgroup_tree_pids()))
                    break
                time.sleep(0.01)
            try:
                _rmdir_tree(self.cgroup)
            except OSError as e:
                problems.append("cannot remove cgroup %s: %s" % (self.cgroup, e))
        if self.state_dir and not os.environ.get("CORRAL_SANDBOX_KEEP"):
            shutil.rmtree(self.state_dir, ignore_errors=True)
        if problems:
            raise SandboxError("sandbox teardown: " + "; ".join(problems))

    def _cgroup_tree_pids(self):
        pids = []
        for root, _, files in os.walk(self.cgroup):
            if "cgroup.procs" in files:
                try:
                    with open(os.path.join(root, "cgroup.procs")) as f:
                        pids += [int(x) for x in f.read().split()]
                except OSError:
                    pass
        return pids

    def __enter__(self):
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def __repr__(self):
        return "<Sandbox %s pid=%s>" % (self.name, self.pid)


@atexit.register
def _stop_all():
    for sb in list(_live):
        try:
            sb.stop()
        except Exception:
            pass
