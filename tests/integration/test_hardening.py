#!/usr/bin/python3
"""Regression tests for the security review (issue 11) and the stderr/log
items of issue 12: what a local user, a worker, a stuck journald or a slow
stderr reader can do to corrald. Each case names the finding it covers."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq, Skip  # noqa: E402
from corral import (Corrald, NotifySocket, CORRALD, CORRALCTL, HELLO, TWORKER, free_port,  # noqa: E402
                    pid_alive, proc_environ)

TMP = tempfile.mkdtemp(prefix="corral-hard-")


def run(args, exec_=None, **kw):
    n = NotifySocket()
    c = Corrald(args, exec_, notify=n, env=dict(kw.pop("env", {}), CORRAL_TEST_DIR=TMP), **kw)
    return c, n


def finish(c, n, expect=0):
    try:
        rc = c.stop()
        eq(rc, expect, "corrald exit status\n" + c.output())
    finally:
        c.kill()
        n.close()


def ctl(c, *args, timeout=10):
    return subprocess.run([CORRALCTL, "-s", c.control] + list(args), capture_output=True, text=True,
                          timeout=timeout)


def wait_control(c):
    wait_for(lambda: os.path.exists(c.control), 10, "the control socket")


def timed_status(c, limit=2.0):
    """`corralctl status --json` must answer, and within `limit` seconds."""
    wait_control(c)
    t0 = time.monotonic()
    p = ctl(c, "--json", "status", timeout=limit + 10)
    dt = time.monotonic() - t0
    eq(p.returncode, 0, "corralctl status: %s%s" % (p.stdout, p.stderr))
    assert dt < limit, "corralctl status took %.2fs (limit %.1fs)" % (dt, limit)
    return json.loads(p.stdout), dt


@case
def notify_socket_name_cannot_be_squatted():
    """#11.1: the notify socket used to be @corral/NAME/PID/notify; a user
    who bound it for the next pids kept corrald from starting."""
    held = []
    nxt = int(open("/proc/sys/kernel/ns_last_pid").read()) if os.path.exists("/proc/sys/kernel/ns_last_pid") else os.getpid()
    for pid in range(nxt + 1, nxt + 300):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind("\0corral/squat/%d/notify" % pid)
        held.append(s)
    try:
        c, n = run(["-n", "squat", "-w", "1"], TWORKER + ["pysystemd"])
        try:
            n.wait("READY", "1")
            assert c.master_pid() in range(nxt + 1, nxt + 300), "corrald's pid %d was squatted" % c.master_pid()
            env = proc_environ(c.workers()[0])
            assert re.fullmatch(r"@[0-9a-f]{5}", env["NOTIFY_SOCKET"]), env["NOTIFY_SOCKET"]
        finally:
            finish(c, n)
    finally:
        for s in held:
            s.close()


def config(name, **keys):
    path = os.path.join(TMP, name + ".json")
    with open(path, "w") as f:
        json.dump(keys, f)
    return path


class FakeJournal:
    """A stream socket standing in for journald's /run/systemd/journal/stdout
    (corrald is pointed at it with CORRAL_TEST_JOURNAL_STDOUT). Stuck: its
    backlog is full and it never accepts. Else it accepts and records what
    each stream sends."""

    def __init__(self, stuck):
        self.path = os.path.join(tempfile.mkdtemp(dir=TMP), "stdout")
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
            import threading
            self.lock = threading.Lock()
            threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
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


@case
def stuck_journald_does_not_freeze_spawning():
    """#11.3: a journald that never accepts used to block the child in
    connect(2) and the master in its read of the exec status."""
    j = FakeJournal(stuck=True)
    c, n = run(["-w", "3"], ["/bin/sh", "-c", "exec sleep 3600"], log="journal",
               env={"CORRAL_TEST_JOURNAL_STDOUT": j.path})
    try:
        st, _ = timed_status(c)
        wait_for(lambda: len(c.workers()) == 3, 5, "3 workers spawned")
        ctl(c, "scale", "6")
        st, dt = timed_status(c)
        wait_for(lambda: len(c.workers()) == 6, 5, "6 workers spawned")
        timed_status(c)
    finally:
        finish(c, n)
        j.close()


@case
def journal_stream_names_the_workers_own_stream():
    """#12.2: JOURNAL_STREAM is the worker's own stderr stream in journal
    mode, and unset in stderr mode; never corrald's."""
    j = FakeJournal(stuck=False)
    sh = 'echo "js=$JOURNAL_STREAM" >&2; echo "st=$(stat -L -c %d:%i /proc/self/fd/2)" >&2; exec sleep 3600'
    path = config("jstream", workers=1, ready={"mode": "spawn"}, exec=["/bin/sh", "-c", sh])
    c, n = run(["-c", path], log="journal",
               env={"CORRAL_TEST_JOURNAL_STDOUT": j.path, "JOURNAL_STREAM": "1:2"})
    try:
        def both():
            for t in j.texts():
                m1, m2 = re.search(r"js=(\S*)\n", t), re.search(r"st=(\S*)\n", t)
                if m1 and m2:
                    return t, m1.group(1), m2.group(1)
            return None
        t, js, st = wait_for(both, 10, "the worker's lines on its stderr stream")
        assert t.startswith("jstream\n\n4\n1\n0\n0\n0\n"), "stream header: %r" % t[:40]
        eq(js, st, "JOURNAL_STREAM is DEVICE:INODE of the worker's stderr")
    finally:
        finish(c, n)
        j.close()
    c, n = run(["-w", "1", "-n", "jstream2"], ["/bin/sh", "-c", "exec sleep 3600"],
               env={"JOURNAL_STREAM": "1:2"})
    try:
        w = c.wait_workers(1)[0]
        assert "JOURNAL_STREAM" not in proc_environ(w), "JOURNAL_STREAM leaked in stderr mode"
    finally:
        finish(c, n)


def stat_state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


@case
def blocked_stderr_never_blocks_the_master():
    """#11.8: with stderr on a pipe nobody reads, the master used to hang in
    write(2): the control socket went silent, a killed worker stayed a
    zombie. Two workers flood their stdout; nobody reads corrald's."""
    d = tempfile.mkdtemp(dir=TMP)
    ctl_path = os.path.join(d, "ctl.sock")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "LISTEN_FDS")}
    flood = "while :; do echo flood-line-of-some-length-$$-0123456789abcdef; done"
    p = subprocess.Popen([CORRALD, "--log", "stderr", "-n", "blk", "-w", "2", "--control", ctl_path, "--",
                          "/bin/sh", "-c", flood], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=env, start_new_session=True)

    class C:
        control = ctl_path
    try:
        wait_for(lambda: os.path.exists(ctl_path), 10, "control socket")
        # The pipe holds 64 KiB by default (pipe(7)); the floods fill it at once.
        wait_for(lambda: _pipe_full(p.stdout.fileno()), 10, "corrald's stderr pipe full")
        st, _ = timed_status(C)
        victim = [s["pid"] for s in st["slots"] if s["pid"]][0]
        os.kill(victim, signal.SIGKILL)

        def respawned():
            st, _ = timed_status(C)
            pids = [s["pid"] for s in st["slots"] if s["pid"]]
            return len(pids) == 2 and victim not in pids and stat_state(victim) is None
        wait_for(respawned, 10, "the killed worker reaped (no zombie) and replaced")
        timed_status(C)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(10)


def _pipe_full(fd):
    import fcntl
    import termios
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder) >= 60000


@case
def control_characters_from_workers_are_escaped_on_stderr():
    """#11.9: STATUS= text with ESC/BEL/CR reached the terminal raw."""
    w = ("import os,socket; s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM); p=os.environ['NOTIFY_SOCKET'];"
         "os.write(int(os.environ['CORRAL_IPC_FD']), b'{\"type\":\"message\",\"data\":\"evil\\x1b[2J\\x07\\rX\"}\\n');"
         "s.sendto(b'READY=1\\nSTATUS=evil\\x1b[2J\\x07\\rX', '\\0'+p[1:]);"
         "import time; time.sleep(3600)")
    c, n = run(["-w", "1", "-n", "esc"], [sys.executable, "-c", w], env={"CORRAL_DEBUG": "1"})
    try:
        n.wait("READY", "1")
        c.wait_line(r"message: .*evil")
        out = c.output()
        assert "\x1b" not in out and "\x07" not in out and "\r" not in out, "raw control bytes on stderr: %r" % out
    finally:
        finish(c, n)


@case
def journal_unreachable_is_said_once_and_falls_back():
    """#12.15: with --log journal and no journald, our events vanished."""
    if os.path.exists("/run/systemd/journal/socket"):
        raise Skip("a journald runs here")
    c, n = run(["-w", "1", "-n", "nojd"], ["/bin/sh", "-c", "exec sleep 3600"], log="journal")
    try:
        c.wait_line(r"^corrald\[nojd\]: worker 0 \(pid \d+\) started")
        eq(c.count(r"the journal is not reachable"), 1, "said once\n" + c.output())
    finally:
        finish(c, n)


def teardown(_):
    shutil.rmtree(TMP, ignore_errors=True)


main(teardown=teardown)
