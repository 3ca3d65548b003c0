"""Helpers for corral's integration tests: find the binaries, own a notify
socket like systemd's (and a stand-in for journald's stdout socket), run
corrald, ask its control socket for its status (directly or through
corralctl, against a deadline) and watch its log lines.

Tests synchronise on state, not on the wording of log lines: the status
reply of the control socket (`status`, `wait_status`), the messages corrald
sends to its notify socket (`NotifySocket.wait`), processes in /proc and
files the test workers write. The log is asserted on only where what is
logged is the point, once the state says it has happened.

The binaries come from the environment meson sets for every test
(CORRALD, CORRAL_HELLO); running a test by hand from the source tree falls
back to ./build. Every wait has a deadline."""
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

from tap import eq, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("CORRAL_BUILD_DIR", os.path.join(SRC, "build"))
CORRALD = os.environ.get("CORRALD", os.path.join(BUILD, "src/corrald/corrald"))
HELLO = os.environ.get("CORRAL_HELLO", os.path.join(BUILD, "src/hello/corral-hello"))
CORRALCTL = os.environ.get("CORRALCTL", os.path.join(BUILD, "src/corralctl/corralctl"))
WORKERS = os.path.join(SRC, "tests/integration/workers")
PY = "/usr/bin/python3"
TWORKER = [PY, os.path.join(WORKERS, "tworker.py")]


def shipped_unit(name):
    """A unit file from units/ (e.g. "examples/app.service") with the
    installed paths of corral's binaries pointed at the build tree."""
    with open(os.path.join(SRC, "units", name)) as f:
        text = f.read()
    return (text.replace("/usr/bin/corralctl", CORRALCTL).replace("/usr/bin/corrald", CORRALD)
            .replace("/usr/libexec/corral/corral-hello", HELLO))


def workers_of(sb, unit):
    """The worker pids of a corral unit in a Sandbox: its cgroup less corrald."""
    main_pid = sb.main_pid(unit)
    return [p for p in sb.cgroup_pids(unit) if p != main_pid]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get(port, path="/", timeout=10, host="127.0.0.1", unix=None, source=None):
    """One request on a fresh connection to host:port (from address
    `source`, e.g. 127.0.0.2: all of 127/8 is loopback), or to the unix
    socket at `unix`; returns (status, headers, body)."""
    if unix:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(unix)
        except OSError:
            s.close()
            raise
    else:
        s = socket.create_connection((host, port), timeout=timeout,
                                     source_address=(source, 0) if source else None)
    try:
        s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            # A zombie still has a /proc entry; it is not alive for our purposes.
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        # Gone before the open, or reaped between the open and the read
        # (the read then fails with ESRCH).
        return False


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):     # ESRCH: reaped after the open
        return []


def rss_kb(pid):
    """The resident set size of pid in KiB (VmRSS in /proc/PID/status)."""
    with open("/proc/%d/status" % pid) as f:
        for l in f:
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
    return 0


def listening(port, udp=False):
    """Whether a socket is bound to 127.0.0.1:port (TCP: in LISTEN state),
    by /proc/net, so that probing does not itself connect."""
    want = "0100007F:%04X" % port
    state = "07" if udp else "0A"
    for name in (("udp",) if udp else ("tcp",)):
        try:
            with open("/proc/net/" + name) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            if cols[1] == want and cols[3] == state:
                return True
    return False


def proc_environ(pid):
    with open("/proc/%d/environ" % pid, "rb") as f:
        items = f.read().split(b"\0")
    return dict(i.decode().split("=", 1) for i in items if b"=" in i)


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET. Records
    every message with the sender's pid."""

    def __init__(self, path=None):
        self.dir = tempfile.mkdtemp(prefix="corral-notify-")
        self.path = path or os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.messages = []      # list of (pid, dict, raw)
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.closed:
            try:
                data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(12))
            except socket.timeout:
                continue
            except OSError:
                return
            pid = 0
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", cdata[:12])[0]
            fields = {}
            for line in data.decode(errors="replace").split("\n"):
                if "=" in line:
                    k, v = line.split("=", 1)
                    fields[k] = v
            with self.lock:
                self.messages.append((pid, fields, data))

    def all(self):
        with self.lock:
            return list(self.messages)

    def mark(self):
        """The index of the next message: pass it as wait(after=) to wait
        for what corrald says from now on."""
        with self.lock:
            return len(self.messages)

    def wait(self, key, value=None, timeout=20, after=0):
        """Wait for a message (index >= after) carrying key (=value if given)."""
        def find():
            for i, (_, f, _) in enumerate(self.all()):
                if i >= after and key in f and (value is None or f[key] == value or
                                                 (hasattr(value, "search") and value.search(f[key]))):
                    return (i, f)
            return None
        return wait_for(find, timeout, "notify %s=%s" % (key, getattr(value, "pattern", value)))

    def keys_in_order(self):
        out = []
        for _, f, _ in self.all():
            out.extend(f.keys())
        return out

    def close(self):
        self.closed = True
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.rmdir(self.dir)


class FakeJournal:
    """A stream socket standing in for journald's /run/systemd/journal/stdout
    (corrald is pointed at it with CORRAL_TEST_JOURNAL_STDOUT). Stuck: its
    backlog is full and it never accepts. Else it accepts and records what
    each stream sends."""

    def __init__(self, stuck):
        self.dir = tempfile.mkdtemp(prefix="corral-journal-")
        self.path = os.path.join(self.dir, "stdout")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.fillers = []
        self.streams = []
        if stuck:
            self.sock.listen(0)
            while True:
                f = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                f.setblocking(False)
                try:
                    f.connect(self.path)
                except BlockingIOError:
                    f.close()
                    break
                self.fillers.append(f)
        else:
            self.sock.listen(64)
            self.sock.settimeout(0.2)
            self.closed = False
            self.lock = threading.Lock()
            threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            buf = bytearray()
            with self.lock:
                self.streams.append(buf)
            threading.Thread(target=self._read, args=(conn, buf), daemon=True).start()

    def _read(self, conn, buf):
        while True:
            try:
                d = conn.recv(65536)
            except OSError:
                return
            if not d:
                return
            with self.lock:
                buf.extend(d)

    def texts(self):
        with self.lock:
            return [bytes(b).decode(errors="replace") for b in self.streams]

    def close(self):
        self.closed = True
        for f in self.fillers:
            f.close()
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Ctl:
    """One connection to corrald's control socket
    (docs/internals/control-protocol.md); every read has a deadline."""

    def __init__(self, path, timeout=10):
        wait_for(lambda: os.path.exists(path), timeout, "control socket %s" % path)
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.s.connect(path)
        except OSError:
            self.s.close()
            raise
        self.s.settimeout(0.5)
        self.buf = b""

    def send(self, obj):
        self.s.sendall((json.dumps(obj) + "\n").encode())

    def result(self, timeout=20):
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                o = json.loads(line)
                seen.append(o)
                if o.get("type") == "result":
                    return o
            if time.monotonic() >= deadline:
                raise AssertionError("no result within %ss; got %r" % (timeout, seen))
            try:
                d = self.s.recv(65536)
            except socket.timeout:
                continue
            if not d:
                raise AssertionError("control connection closed; got %r" % seen)
            self.buf += d

    def req(self, obj, timeout=20):
        self.send(obj)
        return self.result(timeout)

    def close(self):
        self.s.close()


def status(c, timeout=10):
    """corrald's status reply (`corralctl status --json`): ready, workers,
    generation, state, slots[] (id, pid, state, restarts, generation,
    status), leaving[], incoming[]."""
    k = Ctl(c.control, timeout)
    try:
        r = k.req({"command": "status"}, timeout)
    finally:
        k.close()
    assert r.get("ok"), "status failed: %r" % r
    return r


def request(c, obj, timeout=10):
    """One control request on a fresh connection; its result object."""
    k = Ctl(c.control, timeout)
    try:
        return k.req(obj, timeout)
    finally:
        k.close()


def ctl(c, *args, timeout=10):
    """corralctl -s CONTROL ARGS against corrald c; the completed process
    (text)."""
    return subprocess.run([CORRALCTL, "-s", c.control] + list(args), capture_output=True, text=True,
                          timeout=timeout)


def wait_control(c):
    wait_for(lambda: os.path.exists(c.control), 10, "the control socket")


def timed_status(c, limit=2.0):
    """`corralctl status --json` must answer, and within `limit` seconds:
    (the reply, how long it took)."""
    wait_control(c)
    t0 = time.monotonic()
    p = ctl(c, "--json", "status", timeout=limit + 10)
    dt = time.monotonic() - t0
    eq(p.returncode, 0, "corralctl status: %s%s" % (p.stdout, p.stderr))
    assert dt < limit, "corralctl status took %.2fs (limit %.1fs)" % (dt, limit)
    return json.loads(p.stdout), dt


def sanitizer_report(c):
    """The first ASan/LSan/UBSan report in corrald's output, or None."""
    out = c.output()
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        i = out.find(marker)
        if i >= 0:
            return out[i:i + 2000]
    return None


def assert_clean(c):
    rep = sanitizer_report(c)
    assert rep is None, "sanitizer report:\n" + rep


def finish(c, n, expect=0):
    """Stop corrald; check its exit status and that no sanitizer spoke;
    always clean up (control directory, notify socket)."""
    try:
        rc = c.stop()
        assert_clean(c)
        eq(rc, expect, "corrald exit status\n" + c.output())
    finally:
        c.kill()
        if n:
            n.close()


def try_status(c):
    """The status reply, or None while the control socket does not answer
    (not created yet, corrald gone)."""
    if not c.control or not os.path.exists(c.control):
        return None
    try:
        return status(c, 5)
    except (OSError, AssertionError, ValueError):
        return None


def wait_status(c, pred, timeout=20, what="a status"):
    """Poll the status reply until pred(reply) is true; return that reply.
    Fails at once if corrald exits, and shows the last reply and the log
    on a timeout."""
    last = [None]

    def probe():
        if c.proc.poll() is not None:
            return "exited"
        s = try_status(c)
        if s is None:
            return None
        last[0] = s
        return s if pred(s) else None
    try:
        s = wait_for(probe, timeout, what, interval=0.05)
    except AssertionError as e:
        raise AssertionError("%s\nlast status: %s\n--- corrald output:\n%s"
                             % (e, json.dumps(last[0]), c.output()))
    if s == "exited":
        c.drain()
        raise AssertionError("corrald exited (status %s) while waiting for %s\n--- corrald output:\n%s"
                             % (c.proc.returncode, what, c.output()))
    return s


def slot(s, i):
    """Slot i of a status reply."""
    return next(x for x in s["slots"] if x["id"] == i)


def workers_pids(entries):
    """The pids of a status list (slots, leaving or incoming)."""
    return [w["pid"] for w in entries if w["pid"] is not None]


class Corrald:
    """corrald run as a child with its log on stderr (captured line by
    line). `activate` runs it under systemd-socket-activate."""

    def __init__(self, args, exec_=None, notify=None, env=None, activate=None, log="stderr",
                 user=None, own_control=True):
        self.notify = notify
        e = dict(os.environ)
        for k in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC",
                  "WATCHDOG_PID", "JOURNAL_STREAM"):
            e.pop(k, None)
        if notify:
            e["NOTIFY_SOCKET"] = notify.path
        if env:
            e.update(env)
        # Each instance gets its own control socket unless the test picks
        # one: tests run in parallel, and instance names repeat.
        self.control = self.control_dir = None
        if own_control and "--control" not in args:
            self.control_dir = tempfile.mkdtemp(prefix="corral-ctl-")
            os.chmod(self.control_dir, 0o1777)  # sticky: corrald refuses a directory others may write to otherwise
            self.control = os.path.join(self.control_dir, "ctl.sock")
            args = list(args) + ["--control", self.control]
        cmd = [CORRALD, "--log", log] + list(args)
        if exec_:
            cmd += ["--"] + list(exec_)
        if activate:
            pre = ["systemd-socket-activate"]
            for a in activate["listen"]:
                pre += ["-l", a]
            if activate.get("datagram"):
                pre += ["--datagram"]
            if activate.get("fdnames"):
                pre += ["--fdname=" + ":".join(activate["fdnames"])]
            for k in ("NOTIFY_SOCKET", "PATH", "CORRAL_TEST_DIR", "CORRAL_DEBUG") + tuple((env or {}).keys()):
                if k in e:
                    pre += ["-E", "%s=%s" % (k, e[k])]
            cmd = pre + cmd
        if user:
            cmd = ["setpriv", "--reuid", str(user), "--regid", str(user), "--clear-groups"] + cmd
        self.lines = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=e, start_new_session=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for raw in self.proc.stdout:
            with self.lock:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def pid(self):
        return self.proc.pid

    def output(self):
        with self.lock:
            return "\n".join(self.lines)

    def count(self, regex):
        r = re.compile(regex)
        with self.lock:
            return sum(1 for l in self.lines if r.search(l))

    def wait_line(self, regex, timeout=20, count=1):
        r = re.compile(regex)

        def find():
            with self.lock:
                hits = [m for m in (r.search(l) for l in self.lines) if m]
            return hits[count - 1] if len(hits) >= count else None
        try:
            return wait_for(find, timeout, "log line /%s/" % regex)
        except AssertionError as e:
            raise AssertionError("%s\n--- corrald output:\n%s" % (e, self.output()))

    def drain(self, timeout=5):
        """Once corrald has exited: wait for the reader to take in the rest
        of its output, so that output()/count() see all of it."""
        assert self.proc.poll() is not None, "drain() while corrald runs"
        self.thread.join(timeout)

    def assert_logged(self, regex, timeout=5):
        """Assert that a line matching regex was logged. Call it once the
        state says the event happened: the wait only covers the reader
        thread catching up with the pipe."""
        if self.proc.poll() is not None:
            self.drain()
        return self.wait_line(regex, timeout)

    def master_pid(self):
        """corrald's pid (under systemd-socket-activate it is exec'd in place)."""
        return self.proc.pid

    def workers(self):
        return sorted(children(self.master_pid()))

    def wait_workers(self, n, timeout=20):
        return wait_for(lambda: (lambda c: c if len(c) == n else None)(self.workers()), timeout,
                        "%d worker processes" % n)

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout=30):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("corrald did not exit within %ss\n%s" % (timeout, self.output()))

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        self.thread.join(5)
        return rc

    def kill(self):
        """End corrald if it still runs, and remove its control directory."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        if self.control_dir:
            shutil.rmtree(self.control_dir, ignore_errors=True)
            self.control_dir = None


def run(args, exec_=None, **kw):
    """corrald (Corrald's arguments) with a NotifySocket of its own; returns
    both, for finish(c, n)."""
    n = NotifySocket()
    c = Corrald(args, exec_, notify=n, **kw)
    return c, n


def exec_done(c, n, prog="sleep"):
    """The workers once they have exec'd prog: a child seen before its exec
    still has corrald's environment and limits."""
    def done():
        ws = c.workers()
        try:
            return ws if len(ws) == n and all(open("/proc/%d/comm" % w).read().strip() == prog for w in ws) else None
        except (FileNotFoundError, ProcessLookupError):     # ESRCH: reaped after the open
            return None
    return wait_for(done, 20, "%d workers running %s" % (n, prog))
